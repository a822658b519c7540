//! A destination's metric labels, interned once per process when clusters are built: the
//! service and how this proxy secures traffic to it. Ids keep their meaning across reloads,
//! so series survive them (`meshentry_proxy::obs::metrics` counts by id).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use crate::base::lock;

/// What Istio prints for a label it cannot fill.
pub const UNKNOWN: &str = "unknown";

/// The labels that depend on where traffic went: the service and how it was secured.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    /// `destination_service`: the service host.
    pub service: Arc<str>,
    /// `destination_service_name`: for a ServiceEntry, the host (as Istio reports it);
    /// `PassthroughCluster` or `BlackHoleCluster` for traffic outside the registry.
    pub name: Arc<str>,
    /// `destination_service_namespace`.
    pub namespace: Arc<str>,
    /// `destination_principal`: the identity an ISTIO_MUTUAL upstream must present.
    pub principal: Option<Arc<str>>,
    /// The connection is Istio mutual TLS this proxy originated (`connection_security_policy`
    /// `mutual_tls`, and `source_principal` is this proxy's identity).
    pub mtls: bool,
}

/// An interned [`Destination`]: the same labels always get the same id in this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestId(u32);

impl DestId {
    /// Its place in the table of all destinations, in order of interning.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// No service is known (a request refused before routing, a gateway Host with no
    /// virtual host).
    pub const UNKNOWN: DestId = DestId(0);
    /// ALLOW_ANY traffic to a destination outside the registry.
    pub const PASSTHROUGH: DestId = DestId(1);
    /// Traffic REGISTRY_ONLY refused.
    pub const BLACKHOLE: DestId = DestId(2);
}

struct Interner {
    ids: HashMap<Destination, DestId>,
    all: Vec<Destination>,
}

static DESTINATIONS: LazyLock<Mutex<Interner>> = LazyLock::new(|| {
    let unknown: Arc<str> = Arc::from(UNKNOWN);
    let special = |name: &str| Destination {
        service: unknown.clone(),
        name: Arc::from(name),
        namespace: unknown.clone(),
        principal: None,
        mtls: false,
    };
    let all = vec![
        special(UNKNOWN),
        special("PassthroughCluster"),
        special("BlackHoleCluster"),
    ];
    let ids = all
        .iter()
        .enumerate()
        .map(|(i, d)| (d.clone(), DestId(i as u32)))
        .collect();
    Mutex::new(Interner { ids, all })
});

/// The id of `d`. Called when clusters are built (never per request).
pub fn intern(d: Destination) -> DestId {
    let mut interner = lock(&DESTINATIONS);
    if let Some(id) = interner.ids.get(&d) {
        return *id;
    }
    let id = DestId(u32::try_from(interner.all.len()).unwrap_or(u32::MAX));
    interner.all.push(d.clone());
    interner.ids.insert(d, id);
    id
}

pub fn destinations() -> Vec<Destination> {
    lock(&DESTINATIONS).all.clone()
}

/// The labels of a cluster's traffic: its service, and whether this proxy originates Istio
/// mutual TLS to it (then `destination_principal` is the identity the upstream must present,
/// the first of the names it is verified against).
pub fn destination_of(
    cluster_host: &Arc<str>,
    namespace: &Arc<str>,
    tls: Option<&crate::model::tls::Recipe>,
) -> Destination {
    let mtls = tls.is_some_and(|r| r.mode == crate::model::tls::Mode::IstioMutual);
    let principal = tls
        .filter(|_| mtls)
        .and_then(|r| r.subject_alt_names.first())
        .map(|s| Arc::from(s.as_str()));
    Destination {
        service: cluster_host.clone(),
        name: cluster_host.clone(),
        namespace: namespace.clone(),
        principal,
        mtls,
    }
}
