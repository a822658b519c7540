//! Which cluster a destination goes to: pure decisions on a [`Snapshot`].
//!
//! A destination is what the application asked for: the host and port of an absolute-form
//! request, a `Host` header, or a `CONNECT` target. Names match service hosts as Istio's route
//! tables do (C3: exact host first, then the most specific wildcard) among the services that
//! declare the port; IPs match service addresses and CIDRs (C4, C5: longest prefix). Anything
//! else is unknown, and the outbound policy decides (C8).

use std::net::IpAddr;
use std::sync::Arc;

use meshentry_registry::{Port, Service, host};

use crate::cluster::Cluster;
use crate::config::OutboundPolicy;
use crate::snapshot::Snapshot;

/// Where a destination goes.
pub enum Decision<'s> {
    /// A service port of the registry.
    Cluster {
        cluster: &'s Arc<Cluster>,
        service: &'s Service,
        port: &'s Port,
    },
    /// Unknown, and ALLOW_ANY: to the destination itself (PassthroughCluster).
    Passthrough,
    /// Unknown, and REGISTRY_ONLY (BlackHoleCluster).
    Blocked,
}

impl Decision<'_> {
    /// The name access logs and metrics use (`outbound|80||host`, PassthroughCluster,
    /// BlackHoleCluster).
    pub fn cluster_name(&self) -> &str {
        match self {
            Decision::Cluster { cluster, .. } => &cluster.name,
            Decision::Passthrough => "PassthroughCluster",
            Decision::Blocked => "BlackHoleCluster",
        }
    }
}

/// Routes `host:port` (`host` a name or an IP literal, without brackets).
pub fn route<'s>(snap: &'s Snapshot, host: &str, port: u16) -> Decision<'s> {
    match find_service(snap, host, u32::from(port)) {
        Some((service, p)) => match snap.cluster(service, p.number) {
            Some(cluster) => Decision::Cluster {
                cluster,
                service,
                port: p,
            },
            None => unknown(snap),
        },
        None => unknown(snap),
    }
}

fn unknown(snap: &Snapshot) -> Decision<'_> {
    match snap.policy {
        OutboundPolicy::AllowAny => Decision::Passthrough,
        OutboundPolicy::RegistryOnly => Decision::Blocked,
    }
}

/// The service (and its port) this proxy uses for `host:port`.
pub fn find_service<'s>(snap: &'s Snapshot, host: &str, port: u32) -> Option<(&'s Service, &'s Port)> {
    let view = snap.view();
    if let Ok(ip) = host.parse::<IpAddr>() {
        let service = view.lookup_addr(ip, port)?;
        return service.port(port).map(|p| (service, p));
    }
    // The most specific host usually has the port; when it does not (a wildcard and a more
    // specific host declare different ports), look among the services on this port, as the
    // route table of that port holds only those.
    if let Some(service) = view.lookup_host(host)
        && let Some(p) = service.port(port)
    {
        return Some((service, p));
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let mut best: Option<(&Service, usize)> = None;
    for service in view.services_on_port(port) {
        if !host::matches(&service.host, &name) || (service.host.starts_with('*') && !covers(&service.host, &name)) {
            continue;
        }
        let specificity = if service.host.starts_with('*') {
            service.host.len()
        } else {
            usize::MAX
        };
        if best.is_none_or(|(_, s)| specificity > s) {
            best = Some((service, specificity));
        }
    }
    best.and_then(|(s, _)| s.port(port).map(|p| (s, p)))
}

/// B11: a wildcard service host covers a concrete name (`*.a.com` covers `b.a.com`, not
/// `a.com`).
fn covers(wildcard: &str, name: &str) -> bool {
    match wildcard.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
        None => wildcard == name,
    }
}

/// Splits `host[:port]` (IPv6 in brackets) with `default_port`.
pub fn split_host_port(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, port.parse().ok()?)),
        Some(_) => None,
        None => Some((authority, default_port)),
    }
    .filter(|(h, _)| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports() {
        assert_eq!(split_host_port("a.com", 80), Some(("a.com", 80)));
        assert_eq!(split_host_port("a.com:8080", 80), Some(("a.com", 8080)));
        assert_eq!(split_host_port("[::1]:443", 80), Some(("::1", 443)));
        assert_eq!(split_host_port("[::1]", 80), Some(("::1", 80)));
        assert_eq!(split_host_port("a.com:x", 80), None);
        assert_eq!(split_host_port(":80", 80), None);
        assert_eq!(split_host_port("::1", 80), None);
    }

    #[test]
    fn wildcard_cover() {
        assert!(covers("*.bar.com", "foo.bar.com"));
        assert!(!covers("*.bar.com", "bar.com"));
        assert!(covers("*", "x"));
    }
}
