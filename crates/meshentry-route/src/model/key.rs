//! A service's identity within one snapshot.

use meshentry_registry::Service;

/// A service of a snapshot's registry, as the snapshot's tables key it: the address of its
/// entry, which no other service shares while the snapshot (which owns the registry) lives.
/// Hashing it costs one integer, where the host and namespace would cost two strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey(usize);

impl ServiceKey {
    pub fn of(service: &Service) -> ServiceKey {
        ServiceKey(std::ptr::from_ref(service) as usize)
    }
}
