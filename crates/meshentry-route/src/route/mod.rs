//! Which cluster a destination goes to: pure decisions on a [`Snapshot`].
//!
//! A destination is what the application asked for: the host and port of an absolute-form
//! request, a `Host` header, or a `CONNECT` target. Names match service hosts as Istio's route
//! tables do (C3: exact host first, then the most specific wildcard) among the services that
//! declare the port; IPs match service addresses and CIDRs (C4, C5: longest prefix). Anything
//! else is unknown, and the outbound policy decides (C8).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use meshentry_registry::{Port, Protocol, Service, host};

use crate::base::config::OutboundPolicy;
use crate::model::cluster::{Cluster, HostAddr, HostSet};
use crate::model::snapshot::Snapshot;
use crate::model::vs::{HttpRoutes, Target};
pub use meshentry_wire::detect::Detected;

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
    /// The service and port number a request was routed to, if it was routed to one.
    pub fn service_port(&self) -> Option<(&Service, u32)> {
        match self {
            Decision::Cluster { service, port, .. } => Some((service, port.number)),
            _ => None,
        }
    }

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

impl<'s> Decision<'s> {
    /// Port `port` of `service`, when this snapshot has its cluster.
    fn to(snap: &'s Snapshot, service: &'s Service, port: u32) -> Option<Decision<'s>> {
        Some(Decision::Cluster {
            cluster: snap.cluster(service, port)?,
            service,
            port: service.port(port)?,
        })
    }
}

/// The decision for a VirtualService destination (E5); `Err` with the reason when it names
/// no cluster (503).
pub fn to_target<'s>(snap: &'s Snapshot, target: &'s Target) -> Result<Decision<'s>, &'s str> {
    match target {
        Target::Cluster { service, port, cluster } => {
            let service = snap.registry.service(*service).ok_or("the service is gone")?;
            let port = service.port(*port).ok_or("the service has no such port")?;
            Ok(Decision::Cluster { cluster, service, port })
        }
        Target::Missing(reason) => Err(reason),
    }
}

/// A rule of a VirtualService matched a connection but names a destination this proxy has
/// no cluster for.
#[derive(Debug)]
pub struct MissingDestination<'s> {
    /// `namespace/name` of the VirtualService.
    pub vs: &'s str,
    pub reason: &'s str,
}

/// E7: what the TLS (with `sni`) and TCP rules of a VirtualService do with a connection that
/// the registry gave to `decision`; `dst` is the address it was going to (`None`: unknown,
/// which no `destinationSubnets` match admits). The decision itself when no rule applies.
///
/// The one L4 routing decision: captured connections ([`l4_routed`]) and CONNECT tunnels
/// ([`tunnel_sni`], [`hello_sni`], [`tunnel_dst`] say what they match with) both take it.
pub fn l4_route<'s>(
    snap: &'s Snapshot,
    decision: Decision<'s>,
    dst: Option<IpAddr>,
    sni: Option<&str>,
) -> Result<Decision<'s>, MissingDestination<'s>> {
    let Decision::Cluster { service, port, .. } = &decision else {
        return Ok(decision);
    };
    let Some(hit) = snap.routes.l4_rule_at(service, port.number, dst, sni) else {
        return Ok(decision);
    };
    match hit.pick() {
        Some(dest) => to_target(snap, &dest.target).map_err(|reason| MissingDestination { vs: hit.vs, reason }),
        None => Ok(decision),
    }
}

/// [`l4_route`] for a captured connection to `dst`: a missing destination refuses it.
pub fn l4_routed<'s>(snap: &'s Snapshot, decision: Decision<'s>, dst: SocketAddr, sni: Option<&str>) -> Decision<'s> {
    l4_route(snap, decision, Some(dst.ip()), sni).unwrap_or_else(|missing| {
        // Under the proxy's target, so `--log-level meshentry_proxy=...` filters it as before.
        tracing::warn!(target: "meshentry_proxy::route", %dst, sni, vs = missing.vs, reason = missing.reason, "VirtualService destination does not exist: connection refused");
        Decision::Blocked
    })
}

/// The SNI a CONNECT tunnel to `host` is matched by, for E7's TLS rules.
#[derive(Debug, PartialEq, Eq)]
pub enum TunnelSni<'a> {
    /// Known from the request alone: the CONNECT host, for a port declared TLS (the tunnel
    /// then admits only a ClientHello, and only one whose SNI agrees with that host); or none,
    /// when the service port has no TLS rules an SNI could match.
    Known(Option<&'a str>),
    /// The service port has TLS rules but the CONNECT names an IP: only the ClientHello says
    /// which name the tunnel is for, so it is routed once its first bytes are read
    /// ([`hello_sni`]), as a captured connection to that IP is.
    FirstBytes,
}

/// E7 for a CONNECT tunnel to `host` that the registry gave to `decision`: which SNI its TLS
/// rules match, or that the first bytes must be read to know.
pub fn tunnel_sni<'a>(snap: &Snapshot, decision: &Decision<'_>, host: &'a str) -> TunnelSni<'a> {
    let Decision::Cluster { service, port, .. } = decision else {
        return TunnelSni::Known(None);
    };
    if !snap.routes.has_tls(service, port.number) {
        return TunnelSni::Known(None);
    }
    if host.parse::<IpAddr>().is_err() && port.protocol.is_tls() {
        return TunnelSni::Known(Some(host.strip_suffix('.').unwrap_or(host)));
    }
    TunnelSni::FirstBytes
}

/// The SNI E7 matches for a CONNECT tunnel to `host` whose first bytes were `first`: for a
/// name, the CONNECT host (the tunnel refuses a ClientHello that names another, so a client
/// cannot name one host and reach another's route); for an IP, the ClientHello's own, as for
/// a captured connection; none when the bytes are not TLS.
pub fn hello_sni<'a>(host: &'a str, first: &'a Detected) -> Option<&'a str> {
    match first {
        Detected::Tls { .. } if host.parse::<IpAddr>().is_err() => Some(host.strip_suffix('.').unwrap_or(host)),
        Detected::Tls { sni } => sni.as_deref(),
        _ => None,
    }
}

/// What `destinationSubnets` (E7) match for a CONNECT tunnel to `host`.
#[derive(Debug, PartialEq, Eq)]
pub enum TunnelDst<'a> {
    /// The IP the tunnel names.
    Ip(IpAddr),
    /// The first address this name resolves to (where a captured application that resolved
    /// the name would have connected); the proxy resolves it. A name that does not resolve
    /// has no address, and no subnet match admits the tunnel.
    Resolve(&'a str),
    /// Nothing to match: no rule of the service port matches on subnets, so the name is not
    /// looked up.
    None,
}

/// The address `destinationSubnets` (E7) match for a CONNECT tunnel to `host`.
pub fn tunnel_dst<'a>(snap: &Snapshot, decision: &Decision<'_>, host: &'a str) -> TunnelDst<'a> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return TunnelDst::Ip(ip);
    }
    match decision {
        Decision::Cluster { service, port, .. } if snap.routes.l4_needs_address(service, port.number) => {
            TunnelDst::Resolve(host)
        }
        _ => TunnelDst::None,
    }
}

/// Routes `host:port` (`host` a name or an IP literal, without brackets).
pub fn route<'s>(snap: &'s Snapshot, host: &str, port: u16) -> Decision<'s> {
    find_service(snap, host, u32::from(port))
        .and_then(|(service, p)| Decision::to(snap, service, p.number))
        .unwrap_or_else(|| unknown(snap))
}

/// Routes an HTTP request that arrived on the transparent listener for `dst`: its `Host`
/// names the service among those on the destination port (the Host's own port is ignored,
/// C3); a request whose Host names nothing known goes to the service whose address `dst` is,
/// where Istio would pass it through to that (virtual, unreachable) address.
pub fn route_transparent<'s>(snap: &'s Snapshot, host: Option<&str>, dst: SocketAddr) -> Decision<'s> {
    host.and_then(|h| find_service(snap, h, u32::from(dst.port())))
        .and_then(|(service, p)| Decision::to(snap, service, p.number))
        .or_else(|| by_address(snap, dst))
        .unwrap_or_else(|| unknown(snap))
}

/// The service whose address (a VIP, an endpoint IP of a selector-based NONE service, or a
/// CIDR) is `dst`'s IP, and that has `dst`'s port (C4, C5).
pub fn by_address(snap: &Snapshot, dst: SocketAddr) -> Option<Decision<'_>> {
    let port = u32::from(dst.port());
    Decision::to(snap, snap.view().lookup_addr(dst.ip(), port)?, port)
}

/// What the transparent listener does with a connection to `dst` before reading from it.
enum Plan<'s> {
    /// Relay the bytes as they are: declared TCP or TLS to a service address, or an unknown
    /// destination under ALLOW_ANY (no service could claim it, whatever it carries).
    Relay(Decision<'s>),
    /// The port's catch-all TCP service decides (see [`tcp_owner`]).
    TcpOwner,
    /// The first bytes decide: see [`after_detection`].
    Detect,
}

/// Decides what can be decided from the destination alone, so that declared TCP (and
/// server-first protocols on it) never waits for detection.
fn plan(snap: &Snapshot, dst: SocketAddr) -> Plan<'_> {
    if let Some(d) = by_address(snap, dst) {
        if let Decision::Cluster { port, service, .. } = &d
            && (port.protocol.is_tls() || (port.protocol.is_opaque_tcp() && port.protocol != Protocol::Unset))
        {
            // TLS rules of a VirtualService need the SNI (E7).
            if port.protocol.is_tls() && snap.routes.has_tls(service, port.number) {
                return Plan::Detect;
            }
            return Plan::Relay(d);
        }
        return Plan::Detect;
    }
    match snap.port_info(u32::from(dst.port())) {
        Some(info) if !info.http && !info.sni && info.tcp_declared => Plan::TcpOwner,
        Some(_) => Plan::Detect,
        None => match snap.policy {
            OutboundPolicy::AllowAny => Plan::Relay(Decision::Passthrough),
            // Read the first bytes only to refuse in the client's own protocol.
            OutboundPolicy::RegistryOnly => Plan::Detect,
        },
    }
}

/// How a connection is handled once its first bytes are known.
pub enum Handling<'s> {
    /// Relay the bytes to this decision. `misdeclared`: the service's port is declared HTTP
    /// but the client speaks TLS to it (Istio would fail the connection).
    Relay { decision: Decision<'s>, misdeclared: bool },
    /// Serve HTTP, routing each request by its Host ([`route_transparent`]).
    Http,
}

/// What the first bytes decide on the transparent listener ([`after_detection`]).
enum Detection<'s> {
    Handled(Handling<'s>),
    TcpOwner(Owner),
}

/// The port's catch-all TCP service ([`tcp_owner`]) takes the bytes; when there is none,
/// [`unknown`] decides, except that `or_http` under REGISTRY_ONLY serves HTTP (so that each
/// request gets a 502 that says why).
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    or_http: bool,
}

impl Owner {
    /// The handling, given what [`tcp_owner`] found.
    pub fn with_owner<'s>(self, snap: &'s Snapshot, owner: Option<Decision<'s>>) -> Handling<'s> {
        let decision = match owner {
            Some(d) => d,
            None if self.or_http && snap.policy == OutboundPolicy::RegistryOnly => return Handling::Http,
            None => unknown(snap),
        };
        Handling::Relay {
            decision,
            misdeclared: false,
        }
    }
}

/// C3-C8 for the transparent listener: what `detected` on a connection to `dst` means.
fn after_detection<'s>(snap: &'s Snapshot, dst: SocketAddr, detected: &Detected) -> Detection<'s> {
    let port = u32::from(dst.port());
    let relay = |decision| {
        Detection::Handled(Handling::Relay {
            decision,
            misdeclared: false,
        })
    };
    let vip = by_address(snap, dst);
    let info = snap.port_info(port).copied().unwrap_or_default();
    match detected {
        Detected::Tls { sni } => {
            if let Some(d) = vip {
                let misdeclared = matches!(&d, Decision::Cluster { port, .. } if port.protocol.is_http());
                return Detection::Handled(Handling::Relay {
                    decision: d,
                    misdeclared,
                });
            }
            if let Some(sni) = sni {
                if let Some(d) = snap
                    .view()
                    .lookup_sni(sni, port)
                    .and_then(|service| Decision::to(snap, service, port))
                {
                    return relay(d);
                }
                // A service that declares the port HTTP (or unset) but gets TLS: forward it as
                // TLS to that service rather than fail it.
                if let Some((service, p)) = find_service(snap, sni, port)
                    && let Some(decision) = Decision::to(snap, service, port)
                {
                    return Detection::Handled(Handling::Relay {
                        decision,
                        misdeclared: p.protocol.is_http(),
                    });
                }
            }
            Detection::TcpOwner(Owner { or_http: false })
        }
        Detected::Http1 | Detected::H2c => {
            let vip_is_http = matches!(&vip, Some(Decision::Cluster { port, .. }) if port.protocol.is_http() || port.protocol == Protocol::Unset);
            if info.http || vip_is_http {
                return Detection::Handled(Handling::Http);
            }
            if let Some(d) = vip {
                return relay(d);
            }
            Detection::TcpOwner(Owner { or_http: true })
        }
        Detected::Other | Detected::Nothing | Detected::BadTls(_) | Detected::Closed => match vip {
            Some(d) => relay(d),
            None => Detection::TcpOwner(Owner { or_http: false }),
        },
    }
}

/// The next step of the transparent listener's sequence (C3-C8) for a connection to `dst`.
pub enum Step<'s> {
    /// Read the client's first bytes, then ask again with them.
    Read,
    /// The port's catch-all TCP owner decides ([`tcp_owner`], then [`Owner::with_owner`]).
    Owner(Owner),
    /// Decided.
    Done(Handling<'s>),
}

/// The transparent listener's sequence, one step at a time: `first` is `None` before anything
/// is read (the destination alone decides what it can, so declared TCP and server-first
/// protocols never wait for bytes), then the first bytes once [`Step::Read`] asked for them
/// (never asked for again). The listener and `explain` both drive it.
pub fn transparent<'s>(snap: &'s Snapshot, dst: SocketAddr, first: Option<&Detected>) -> Step<'s> {
    match first {
        None => match plan(snap, dst) {
            Plan::Relay(decision) => Step::Done(Handling::Relay {
                decision,
                misdeclared: false,
            }),
            Plan::TcpOwner => Step::Owner(Owner { or_http: false }),
            Plan::Detect => Step::Read,
        },
        Some(detected) => match after_detection(snap, dst, detected) {
            Detection::Handled(h) => Step::Done(h),
            Detection::TcpOwner(owner) => Step::Owner(owner),
        },
    }
}

/// C5: the service that takes TCP traffic to any destination on `dst`'s port. Istio gives it
/// all to the oldest of several such services; when there are several, the one whose
/// endpoints include the destination IP (the address the application resolved its host to)
/// gets the connection, and the oldest only when none does.
pub struct TcpOwner<'s> {
    dst: SocketAddr,
    first: &'s Service,
    /// The services to tell apart by their endpoints, most preferred first; empty when one
    /// service owns the port alone.
    candidates: Vec<(&'s Service, &'s Arc<Cluster>)>,
}

/// The port's catch-all TCP owner for `dst`, still to be told apart by endpoints; `None` when
/// no service takes TCP traffic to any destination on the port.
pub fn tcp_owner(snap: &Snapshot, dst: SocketAddr) -> Option<TcpOwner<'_>> {
    let port = u32::from(dst.port());
    let info = snap.port_info(port)?;
    let view = snap.view();
    let first = view.lookup_port(port)?;
    let mut candidates = Vec::new();
    if info.tcp_wild > 1 {
        let mut services: Vec<&Service> = view
            .services_on_port(port)
            .filter(|s| s.addresses.iter().all(|a| a.net.addr().is_unspecified()))
            .filter(|s| s.port(port).is_some_and(|p| p.protocol.is_opaque_tcp()))
            .collect();
        services.sort_by_key(|s| s.preference(view.namespace()));
        candidates = services
            .into_iter()
            .filter_map(|s| Some((s, snap.cluster(s, port)?)))
            .collect();
    }
    Some(TcpOwner { dst, first, candidates })
}

impl<'s> TcpOwner<'s> {
    /// The clusters whose hosts decide, in the order they are tried.
    pub fn clusters(&self) -> impl Iterator<Item = &'s Arc<Cluster>> + '_ {
        self.candidates.iter().map(|(_, c)| *c)
    }

    /// Whether `hosts` (a candidate cluster's, as known now) include the destination IP: the
    /// first candidate for which this holds takes the connection.
    pub fn serves(&self, hosts: &HostSet) -> bool {
        hosts
            .hosts
            .iter()
            .any(|h| matches!(h.addr, HostAddr::Ip(a) if a.ip() == self.dst.ip()))
    }

    /// The decision, given the first candidate (by index in [`TcpOwner::clusters`]) whose
    /// hosts include the destination IP, if any.
    pub fn decide(&self, snap: &'s Snapshot, serving: Option<usize>) -> Option<Decision<'s>> {
        let chosen = serving
            .and_then(|i| self.candidates.get(i))
            .map_or(self.first, |(s, _)| *s);
        Decision::to(snap, chosen, u32::from(self.dst.port()))
    }

    /// The decision from the hosts `known` gives (STATIC clusters' own, DNS answers cached):
    /// for callers that resolve nothing.
    pub fn decide_with(
        &self,
        snap: &'s Snapshot,
        known: impl Fn(&Cluster) -> Option<Arc<HostSet>>,
    ) -> Option<Decision<'s>> {
        let serving = self.clusters().position(|c| known(c).is_some_and(|h| self.serves(&h)));
        self.decide(snap, serving)
    }
}

/// C8: where a destination no service claims goes.
pub fn unknown(snap: &Snapshot) -> Decision<'_> {
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
        if !host::matches(&service.host, &name)
            || (service.host.starts_with('*') && !meshentry_registry::host::covers(&service.host, &name))
        {
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

/// The destination a request names, as its listener gives it.
#[derive(Clone, Copy, Debug)]
pub enum Asked<'a> {
    /// The explicit proxy: the `host:port` of the absolute URI or the Host header, if any.
    Explicit(Option<(&'a str, u16)>),
    /// A captured connection: the Host's name, if any (its port does not matter, C3), and the
    /// original destination, with its address as text (`dst_ip`): the name a request without
    /// a Host goes by.
    Captured {
        host: Option<&'a str>,
        dst: SocketAddr,
        dst_ip: &'a str,
    },
}

/// Where an HTTP request goes, decided before anything is sent. The fast path and the hyper
/// path, explicit and captured, all take this one decision and only act on it differently.
pub enum Resolution<'s, 'a> {
    /// The explicit proxy was given no destination (400).
    NoDestination,
    /// The destination is this proxy itself: the request would loop (508).
    Loop { host: &'a str, port: u16 },
    /// The registry's decision for `host:port`, and the VirtualService rules that replace its
    /// default route, if any (E4, E5).
    To {
        decision: Decision<'s>,
        routes: Option<&'s HttpRoutes>,
        host: &'a str,
        port: u16,
    },
}

/// Resolves a request's destination: refused when it names none or names this proxy
/// (`is_self`; captured connections were checked when accepted), else routed.
pub fn resolve<'s, 'a>(
    snap: &'s Snapshot,
    asked: Asked<'a>,
    is_self: impl FnOnce(&str, u16) -> bool,
) -> Resolution<'s, 'a> {
    let (decision, host, port) = match asked {
        Asked::Captured { host, dst, dst_ip } => {
            (route_transparent(snap, host, dst), host.unwrap_or(dst_ip), dst.port())
        }
        Asked::Explicit(None) => return Resolution::NoDestination,
        Asked::Explicit(Some((host, port))) => {
            if is_self(host, port) {
                return Resolution::Loop { host, port };
            }
            (route(snap, host, port), host, port)
        }
    };
    let routes = snap.routes.http_for(decision.service_port(), host, port);
    Resolution::To {
        decision,
        routes,
        host,
        port,
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
    use crate::model::fixtures::{doc, doc_at, static_se};

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

    /// What a captured connection may meet: HTTP, a range of service addresses, TLS, TLS to a
    /// port declared HTTP, two catch-all TCP services on one port, and a protocol left unset.
    fn snapshot(policy: OutboundPolicy) -> Snapshot {
        let config = [
            static_se(
                "name: web",
                "hosts: [web.example.com], ports: [{number: 80, name: http, protocol: HTTP}]",
                "10.0.0.1",
            ),
            static_se(
                "name: mongo",
                "hosts: [mongo.internal], addresses: [192.192.192.192/24], ports: [{number: 27018, name: mongo, protocol: MONGO}]",
                "10.0.0.2",
            ),
            static_se(
                "name: api",
                "hosts: [api.example.com], ports: [{number: 443, name: tls, protocol: TLS}]",
                "10.0.0.3",
            ),
            static_se(
                "name: misdeclared",
                "hosts: [plain.example.com], ports: [{number: 443, name: http, protocol: HTTP}]",
                "10.0.0.4",
            ),
            static_se(
                r#"name: db-a, creationTimestamp: "2024-01-01T00:00:00Z""#,
                "hosts: [db-a.internal], ports: [{number: 5432, name: pg, protocol: TCP}]",
                "10.0.1.1",
            ),
            static_se(
                r#"name: db-b, creationTimestamp: "2024-02-01T00:00:00Z""#,
                "hosts: [db-b.internal], ports: [{number: 5432, name: pg, protocol: TCP}]",
                "10.0.2.1",
            ),
            static_se(
                "name: auto",
                "hosts: [auto.internal], addresses: [10.9.9.9], ports: [{number: 7000, name: auto}]",
                "10.0.3.1",
            ),
        ];
        snapshot_with(&config.concat(), policy)
    }

    fn snapshot_with(yaml: &str, policy: OutboundPolicy) -> Snapshot {
        let config = crate::base::config::ProxyConfig {
            policy_override: Some(policy),
            ..Default::default()
        };
        crate::model::fixtures::snapshot(yaml, &config)
    }

    fn dst(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// What the connection gets at a step: before reading (`first` None) or after.
    fn step(snap: &Snapshot, to: &str, first: Option<Detected>) -> String {
        match transparent(snap, dst(to), first.as_ref()) {
            Step::Read => "detect".into(),
            Step::Owner(_) => "tcp owner".into(),
            Step::Done(Handling::Http) => "http".into(),
            Step::Done(Handling::Relay { decision, misdeclared }) => format!(
                "relay {}{}",
                decision.cluster_name(),
                if misdeclared { " (misdeclared)" } else { "" }
            ),
        }
    }

    fn name(snap: &Snapshot, to: &str) -> String {
        step(snap, to, None)
    }

    /// What the connection gets after its first bytes, the catch-all owner told apart by
    /// STATIC endpoints.
    fn handled(snap: &Snapshot, to: &str, d: Detected) -> String {
        match transparent(snap, dst(to), Some(&d)) {
            Step::Owner(o) => {
                let owner = tcp_owner(snap, dst(to)).and_then(|o| o.decide_with(snap, |c| c.static_hosts().cloned()));
                match o.with_owner(snap, owner) {
                    Handling::Http => "http".into(),
                    Handling::Relay { decision, .. } => format!("relay {}", decision.cluster_name()),
                }
            }
            Step::Read => panic!("the first bytes are asked for once"),
            Step::Done(_) => step(snap, to, Some(d)),
        }
    }

    #[test]
    fn declared_tcp_and_unknown_destinations_are_decided_without_reading() {
        let snap = snapshot(OutboundPolicy::AllowAny);
        assert_eq!(
            name(&snap, "192.192.192.7:27018"),
            "relay outbound|27018||mongo.internal"
        );
        assert_eq!(name(&snap, "203.0.113.1:5432"), "tcp owner");
        assert_eq!(name(&snap, "203.0.113.1:9999"), "relay PassthroughCluster");
        // A port with HTTP or SNI services, and an address with an unset protocol, need bytes.
        assert_eq!(name(&snap, "203.0.113.1:80"), "detect");
        assert_eq!(name(&snap, "203.0.113.1:443"), "detect");
        assert_eq!(name(&snap, "10.9.9.9:7000"), "detect");
        // Outside the VIP range the mongo port is nobody's.
        assert_eq!(name(&snap, "192.192.193.7:27018"), "relay PassthroughCluster");
        let snap = snapshot(OutboundPolicy::RegistryOnly);
        // Refusals are made in the client's own protocol, so REGISTRY_ONLY reads first.
        assert_eq!(name(&snap, "203.0.113.1:9999"), "detect");
    }

    #[test]
    fn first_bytes_pick_the_service() {
        let snap = snapshot(OutboundPolicy::AllowAny);
        let tls = |sni: &str| Detected::Tls {
            sni: Some(sni.to_string()),
        };
        assert_eq!(
            handled(&snap, "203.0.113.1:443", tls("api.example.com")),
            "relay outbound|443||api.example.com"
        );
        // TLS to a service that declares the port HTTP goes to it as TLS, with a warning.
        assert_eq!(
            handled(&snap, "203.0.113.1:443", tls("plain.example.com")),
            "relay outbound|443||plain.example.com (misdeclared)"
        );
        assert_eq!(
            handled(&snap, "203.0.113.1:443", tls("other.example.com")),
            "relay PassthroughCluster"
        );
        assert_eq!(handled(&snap, "203.0.113.1:80", Detected::Http1), "http");
        assert_eq!(handled(&snap, "203.0.113.1:80", Detected::H2c), "http");
        // Unset protocol on a VIP: HTTP is served as HTTP, anything else relayed to it.
        assert_eq!(handled(&snap, "10.9.9.9:7000", Detected::Http1), "http");
        assert_eq!(
            handled(&snap, "10.9.9.9:7000", Detected::Nothing),
            "relay outbound|7000||auto.internal"
        );
        assert_eq!(
            handled(&snap, "10.9.9.9:7000", Detected::Other),
            "relay outbound|7000||auto.internal"
        );
    }

    #[test]
    fn several_catch_all_tcp_services_are_told_apart_by_their_endpoints() {
        let snap = snapshot(OutboundPolicy::AllowAny);
        let owner = |to: &'static str| {
            tcp_owner(&snap, dst(to))
                .and_then(|o| o.decide_with(&snap, |c| c.static_hosts().cloned()))
                .map(|d| d.cluster_name().to_string())
        };
        // Istio gives everything to the oldest; the destination IP says which one was meant.
        assert_eq!(owner("10.0.2.1:5432").as_deref(), Some("outbound|5432||db-b.internal"));
        assert_eq!(owner("10.0.1.1:5432").as_deref(), Some("outbound|5432||db-a.internal"));
        assert_eq!(
            owner("203.0.113.9:5432").as_deref(),
            Some("outbound|5432||db-a.internal")
        );
        assert!(
            snap.warnings
                .iter()
                .any(|w| w.contains("port 5432") && w.contains("db-a.internal"))
        );
        assert!(snap.warnings.iter().any(|w| w.contains("plain.example.com port 443")));
    }

    #[test]
    fn captured_http_routes_by_host_on_the_original_port() {
        let snap = snapshot(OutboundPolicy::RegistryOnly);
        let routed = |host: Option<&str>, to: &str| route_transparent(&snap, host, dst(to)).cluster_name().to_string();
        assert_eq!(
            routed(Some("web.example.com"), "203.0.113.1:80"),
            "outbound|80||web.example.com"
        );
        // The Host's port is not the listener's: the original destination port decides.
        let host = split_host_port("web.example.com:8080", 80).map(|(h, _)| h);
        assert_eq!(routed(host, "203.0.113.1:80"), "outbound|80||web.example.com");
        assert_eq!(routed(Some("web.example.com"), "203.0.113.1:8080"), "BlackHoleCluster");
        // A Host nobody claims, to a service address, goes to that service.
        assert_eq!(
            routed(Some("whatever"), "10.9.9.9:7000"),
            "outbound|7000||auto.internal"
        );
        assert_eq!(routed(None, "203.0.113.1:80"), "BlackHoleCluster");
    }

    /// The seed's tls-routing example (04 and 05), its firewall, and TCP rules by subnet.
    fn l4_snapshot() -> Snapshot {
        let config = [
            doc_at(
                "v1beta1",
                "ServiceEntry",
                "name: external-svc-redirect",
                r#"hosts: [wikipedia.org, "*.wikipedia.org"], location: MESH_EXTERNAL, ports: [{number: 443, name: https, protocol: TLS}], resolution: NONE"#,
            ),
            doc_at(
                "v1beta1",
                "VirtualService",
                "name: tls-routing",
                concat!(
                    r#"hosts: [wikipedia.org, "*.wikipedia.org"], tls: [{match: [{sniHosts: [wikipedia.org, "*.wikipedia.org"]}], "#,
                    "route: [{destination: {host: internal-egress-firewall.ns1.svc.cluster.local}}]}]",
                ),
            ),
            static_se(
                "name: firewall, namespace: ns1",
                "hosts: [internal-egress-firewall.ns1.svc.cluster.local], ports: [{number: 443, name: tls, protocol: TLS}]",
                "10.0.9.1",
            ),
            static_se(
                "name: vip",
                "hosts: [vip.example.com], addresses: [10.7.7.7], ports: [{number: 443, name: tls, protocol: TLS}]",
                "10.0.9.2",
            ),
            doc(
                "VirtualService",
                "name: vip-sni",
                concat!(
                    "hosts: [vip.example.com], tls: [{match: [{sniHosts: [vip.example.com]}], ",
                    "route: [{destination: {host: internal-egress-firewall.ns1.svc.cluster.local}}]}]",
                ),
            ),
            doc(
                "ServiceEntry",
                "name: db",
                "hosts: [db.example.com], ports: [{number: 5432, name: pg, protocol: TCP}], resolution: DNS",
            ),
            static_se(
                "name: db-primary",
                "hosts: [db-primary.internal], ports: [{number: 5432, name: pg, protocol: TCP}]",
                "10.0.8.1",
            ),
            doc(
                "VirtualService",
                "name: db-by-subnet",
                concat!(
                    "hosts: [db.example.com], tls: [{match: [{sniHosts: [db.example.com]}], ",
                    "route: [{destination: {host: internal-egress-firewall.ns1.svc.cluster.local, port: {number: 443}}}]}], ",
                    "tcp: [{match: [{destinationSubnets: [10.20.0.0/16]}], route: [{destination: {host: db-primary.internal}}]}]",
                ),
            ),
        ];
        snapshot_with(&config.concat(), OutboundPolicy::RegistryOnly)
    }

    fn l4(snap: &Snapshot, host: &str, port: u16, dst: Option<&str>, sni: Option<&str>) -> String {
        let dst = dst.map(|d| d.parse().unwrap());
        match l4_route(snap, route(snap, host, port), dst, sni) {
            Ok(d) => d.cluster_name().to_string(),
            Err(m) => format!("missing: {} {}", m.vs, m.reason),
        }
    }

    #[test]
    fn a_tunnel_to_a_name_on_a_tls_port_is_matched_by_the_connect_host() {
        let snap = l4_snapshot();
        let sni = |host: &'static str, port| tunnel_sni(&snap, &route(&snap, host, port), host);
        assert_eq!(sni("en.wikipedia.org", 443), TunnelSni::Known(Some("en.wikipedia.org")));
        assert_eq!(sni("wikipedia.org.", 443), TunnelSni::Known(Some("wikipedia.org")));
        // The service address of a port with TLS rules: only the ClientHello names the host.
        assert_eq!(sni("10.7.7.7", 443), TunnelSni::FirstBytes);
        // No TLS rules (a TCP port's `tls` rules are never applied, as in Istio), or no service.
        assert_eq!(sni("db.example.com", 5432), TunnelSni::Known(None));
        assert_eq!(sni("other.example.com", 443), TunnelSni::Known(None));
        // What that SNI routes to, by the rules a captured connection takes.
        let firewall = "outbound|443||internal-egress-firewall.ns1.svc.cluster.local";
        assert_eq!(
            l4(&snap, "en.wikipedia.org", 443, None, Some("en.wikipedia.org")),
            firewall
        );
        assert_eq!(l4(&snap, "wikipedia.org", 443, None, Some("wikipedia.org")), firewall);
        assert_eq!(
            l4(&snap, "10.7.7.7", 443, Some("10.7.7.7"), Some("vip.example.com")),
            firewall
        );
        assert_eq!(
            l4(&snap, "10.7.7.7", 443, Some("10.7.7.7"), Some("x.example.com")),
            "outbound|443||vip.example.com"
        );
    }

    #[test]
    fn the_first_bytes_give_the_sni_of_a_tunnel() {
        let tls = |sni: Option<&str>| Detected::Tls {
            sni: sni.map(str::to_string),
        };
        // To a name, the CONNECT host: the tunnel refuses a ClientHello naming another.
        assert_eq!(
            hello_sni("en.wikipedia.org", &tls(Some("en.wikipedia.org"))),
            Some("en.wikipedia.org")
        );
        assert_eq!(hello_sni("en.wikipedia.org", &tls(None)), Some("en.wikipedia.org"));
        // To an IP, the ClientHello's own, as for a captured connection.
        assert_eq!(
            hello_sni("10.7.7.7", &tls(Some("vip.example.com"))),
            Some("vip.example.com")
        );
        assert_eq!(hello_sni("10.7.7.7", &tls(None)), None);
        assert_eq!(hello_sni("en.wikipedia.org", &Detected::Other), None);
        assert_eq!(hello_sni("10.7.7.7", &Detected::Http1), None);
    }

    #[test]
    fn tcp_rules_match_the_tunnel_destination_address() {
        let snap = l4_snapshot();
        let db = |d: &Decision<'_>| snap_needs(&snap, d);
        assert!(db(&route(&snap, "db.example.com", 5432)));
        assert!(!db(&route(&snap, "en.wikipedia.org", 443)));
        assert_eq!(
            l4(&snap, "db.example.com", 5432, Some("10.20.3.4"), None),
            "outbound|5432||db-primary.internal"
        );
        assert_eq!(
            l4(&snap, "db.example.com", 5432, Some("10.21.3.4"), None),
            "outbound|5432||db.example.com"
        );
        // A name that did not resolve is in no subnet.
        assert_eq!(
            l4(&snap, "db.example.com", 5432, None, None),
            "outbound|5432||db.example.com"
        );
        // The same decision as for a captured connection to that address.
        let captured = l4_routed(&snap, route(&snap, "db.example.com", 5432), dst("10.20.3.4:5432"), None);
        assert_eq!(captured.cluster_name(), "outbound|5432||db-primary.internal");
    }

    fn snap_needs(snap: &Snapshot, d: &Decision<'_>) -> bool {
        match d {
            Decision::Cluster { service, port, .. } => snap.routes.l4_needs_address(service, port.number),
            _ => false,
        }
    }

    #[test]
    fn a_tunnel_to_a_name_is_resolved_only_for_subnet_rules() {
        let snap = l4_snapshot();
        let ip = tunnel_dst(&snap, &route(&snap, "10.7.7.7", 443), "10.7.7.7");
        assert_eq!(ip, TunnelDst::Ip("10.7.7.7".parse().unwrap()));
        // No rule of the port matches on subnets: the name is not looked up.
        let wiki = route(&snap, "en.wikipedia.org", 443);
        assert_eq!(tunnel_dst(&snap, &wiki, "en.wikipedia.org"), TunnelDst::None);
    }

    #[test]
    fn wildcard_cover() {
        assert!(meshentry_registry::host::covers("*.bar.com", "foo.bar.com"));
        assert!(!meshentry_registry::host::covers("*.bar.com", "bar.com"));
        assert!(meshentry_registry::host::covers("*", "x"));
    }

    #[test]
    fn every_http_path_resolves_a_request_the_same_way() {
        let snap = snapshot(OutboundPolicy::RegistryOnly);
        let never_self = |_: &str, _: u16| false;
        assert!(matches!(
            resolve(&snap, Asked::Explicit(None), never_self),
            Resolution::NoDestination
        ));
        assert!(matches!(
            resolve(&snap, Asked::Explicit(Some(("127.0.0.1", 15080))), |h, p| h
                == "127.0.0.1"
                && p == 15080),
            Resolution::Loop {
                host: "127.0.0.1",
                port: 15080
            }
        ));
        let Resolution::To {
            decision,
            routes,
            host,
            port,
        } = resolve(&snap, Asked::Explicit(Some(("web.example.com", 80))), never_self)
        else {
            panic!("routed")
        };
        assert_eq!(
            (decision.cluster_name(), host, port),
            ("outbound|80||web.example.com", "web.example.com", 80)
        );
        assert!(routes.is_none());
        // Captured without Host: the original destination's address is the name (for the
        // VirtualService host match and the refusal), and its port the port.
        let Resolution::To {
            decision, host, port, ..
        } = resolve(
            &snap,
            Asked::Captured {
                host: None,
                dst: dst("203.0.113.9:8080"),
                dst_ip: "203.0.113.9",
            },
            |_, _| panic!("captured connections are checked when accepted"),
        )
        else {
            panic!("routed")
        };
        assert_eq!(
            (decision.cluster_name(), host, port),
            ("BlackHoleCluster", "203.0.113.9", 8080)
        );
    }
}
