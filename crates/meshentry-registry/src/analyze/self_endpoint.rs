//! Endpoints that are the proxy itself: a loopback or unspecified address (or `localhost`) on
//! a port where `meshentry proxy` listens by default. Traffic sent there comes back into the
//! proxy instead of reaching a service. The proxy refuses it at run time (it never dials its
//! own listeners: 508, or a closed connection); this says so before it is deployed.

use std::collections::HashSet;
use std::net::IpAddr;

use super::*;
use crate::model::Endpoint;

/// `meshentry proxy`'s default listeners: port, flag, what listens there.
const PROXY_PORTS: [(u32, &str, &str); 3] = [
    (15001, "--outbound", "the transparent listener"),
    (15080, "--http-proxy", "the explicit proxy listener"),
    (15000, "--admin", "the admin server"),
];

pub(super) fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    // The resources behind the registry's sources, by where they are.
    let resources: HashMap<&meshentry_api::Origin, &Resource> = out
        .loaded
        .analyzable()
        .filter(|r| {
            matches!(
                r.spec,
                Spec::ServiceEntry(_) | Spec::WorkloadEntry(_) | Spec::Pod { .. }
            )
        })
        .map(|r| (&r.origin, r))
        .collect();
    let sources = cx.registry.sources();
    // One warning per workload and port, whatever the hosts and service ports that reach it.
    let mut seen: HashSet<(u32, &str, u32)> = HashSet::new();
    for service in cx.registry.services() {
        for e in &service.endpoints {
            let Some(&(port, flag, listener)) = PROXY_PORTS.iter().find(|(p, ..)| *p == e.port) else {
                continue;
            };
            if !is_this_host(e.address()) || !seen.insert((e.workload.source, e.address(), e.port)) {
                continue;
            }
            let Some(&r) = sources
                .get(e.workload.source as usize)
                .and_then(|src| resources.get(&src.origin))
            else {
                continue;
            };
            let Some(path) = field(r, e) else {
                continue;
            };
            let via = if r.display_name() == cx.source_of(service) {
                String::new()
            } else {
                format!(" (selected by {})", cx.source_of(service))
            };
            out.warn(
                r,
                &path,
                format!(
                    "endpoint {addr} of {host} (port {name}){via} is this proxy itself: {port} is where meshentry proxy listens by default ({flag}, {listener}), so traffic to it would loop through the proxy (which refuses it: 508, or a closed connection); point the endpoint at the service's real address",
                    addr = host_port(e.address(), port),
                    host = service.host,
                    name = e.port_name,
                ),
            );
        }
    }
}

/// Whether `address` reaches this host whatever interface the proxy listens on: a loopback or
/// unspecified IP (IPv4-mapped forms included) or `localhost`.
fn is_this_host(address: &str) -> bool {
    let name = address.trim_end_matches('.');
    if name.eq_ignore_ascii_case("localhost") || name.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    let ip = match name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        Ok(ip) => ip,
        Err(_) => return false,
    };
    ip.is_loopback() || ip.is_unspecified()
}

/// `address:port`, an IPv6 address in brackets.
fn host_port(address: &str, port: u32) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// The field that put `e` in the registry: a WorkloadEntry's address, a ServiceEntry's inline
/// endpoint, or (no endpoints, DNS) the host that is dialled.
fn field(r: &Resource, e: &Endpoint) -> Option<String> {
    match &r.spec {
        Spec::WorkloadEntry(_) => Some("spec.address".into()),
        Spec::ServiceEntry(se) => {
            if let Some(i) = se.endpoints.iter().position(|w| w.address == e.address()) {
                return Some(format!("spec.endpoints[{i}].address"));
            }
            se.hosts
                .iter()
                .position(|h| h.eq_ignore_ascii_case(e.address()))
                .map(|i| format!("spec.hosts[{i}]"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod unit {
    use super::is_this_host;

    #[test]
    fn addresses_of_this_host() {
        for a in [
            "127.0.0.1",
            "127.3.4.5",
            "0.0.0.0",
            "::1",
            "::",
            "[::1]",
            "::ffff:127.0.0.1",
            "localhost",
            "LOCALHOST.",
            "a.localhost",
        ] {
            assert!(is_this_host(a), "{a}");
        }
        for a in [
            "10.0.0.1",
            "192.0.2.1",
            "::ffff:10.0.0.1",
            "example.com",
            "localhost.example.com",
            "unix:///tmp/s",
        ] {
            assert!(!is_this_host(a), "{a}");
        }
    }
}
