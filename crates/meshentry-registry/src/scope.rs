//! Sidecar scoping (C9): what a sidecar proxy imports, as Istio's `SidecarScope` computes it
//! (`pilot/pkg/model/sidecar.go`, `virtualservice.go`, `push_context.go`).
//!
//! - [`select_sidecar`]: the Sidecar that applies to a workload: the oldest one of its
//!   namespace whose `workloadSelector` matches its labels, else the oldest selector-less one
//!   of its namespace, else the oldest selector-less one of the root namespace.
//! - [`SidecarScope::compute`]: per `spec.egress[]` listener, the services its `hosts` import
//!   (`ns/host`, `./host`, `*/host`, `~ns/host` exclusions, wildcards, cut to the listener's
//!   `port`), the VirtualServices they import, the services those route to, the union the
//!   proxy holds clusters for, and which ports of each its listeners route.
//! - [`Registry::scoped`]: the registry cut down to a scope, the only registry a scoped proxy
//!   keeps.
//!
//! Istio matches the imports against hosts as written, case and all (`host.Name.SubsetOf`), so
//! this module does too, unlike the data-path lookups (which follow Envoy's case-insensitive
//! domains).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use meshentry_api::model::{Destination, IstioEgressListener, Sidecar, VirtualService};
use meshentry_api::{Origin, Resource, Spec};

use crate::model::{Labels, Protocol, Resolution, Service, ServiceId};
use crate::{Registry, index};

/// Why a Sidecar applies to a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Its `workloadSelector` matches the workload's labels.
    WorkloadSelector,
    /// It is the workload's namespace's Sidecar without a selector.
    Namespace,
    /// It is the root namespace's Sidecar without a selector (the mesh-wide default).
    RootNamespace,
}

impl Selection {
    pub fn describe(self) -> &'static str {
        match self {
            Selection::WorkloadSelector => "its workloadSelector matches the workload's labels",
            Selection::Namespace => "the namespace's Sidecar without workloadSelector",
            Selection::RootNamespace => "the root namespace's Sidecar without workloadSelector (mesh-wide default)",
        }
    }
}

/// The Sidecar that applies to a workload.
#[derive(Clone, Copy, Debug)]
pub struct Selected<'a> {
    pub resource: &'a Resource,
    pub sidecar: &'a Sidecar,
    pub selection: Selection,
}

/// Istio's `getSidecarScope`: among the valid Sidecars of `namespace`, the oldest whose
/// `workloadSelector.labels` are all among `labels`, else the oldest without a selector; when
/// the namespace has neither, the oldest selector-less Sidecar of `root_namespace`.
pub fn select_sidecar<'a>(
    resources: &[&'a Resource],
    namespace: &str,
    labels: &Labels,
    root_namespace: &str,
) -> Option<Selected<'a>> {
    let mut sidecars: Vec<(&'a Resource, &'a Sidecar)> = resources
        .iter()
        .filter(|r| r.valid)
        .filter_map(|r| match &r.spec {
            Spec::Sidecar(s) => Some((*r, s)),
            _ => None,
        })
        .collect();
    sidecars.sort_by(|a, b| a.0.age_key().cmp(&b.0.age_key()));
    let pick = |ns: &str, selection: Selection| {
        sidecars.iter().find_map(|&(r, s)| {
            let fits = r.namespace == ns
                && match (&s.workload_selector, selection) {
                    (Some(sel), Selection::WorkloadSelector) => {
                        sel.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
                    }
                    (None, Selection::Namespace | Selection::RootNamespace) => true,
                    _ => false,
                };
            fits.then_some(Selected {
                resource: r,
                sidecar: s,
                selection,
            })
        })
    };
    pick(namespace, Selection::WorkloadSelector)
        .or_else(|| pick(namespace, Selection::Namespace))
        .or_else(|| pick(root_namespace, Selection::RootNamespace))
}

/// `namespace/name` and place of the Sidecar a scope comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarId {
    pub namespace: String,
    pub name: String,
    pub origin: Origin,
    pub selection: Selection,
}

impl fmt::Display for SidecarId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sidecar {}/{}", self.namespace, self.name)
    }
}

/// What one egress listener is to meshentry's listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `port` set: the listener of that port; its services are cut to that port, and it holds
    /// the port against the catch-all listener's services.
    Port(u32),
    /// No port: every port of its services that no `Port` listener holds.
    CatchAll,
    /// Protocol HTTP_PROXY: Istio's explicit proxy listener; its services keep all their ports
    /// and are routed on them (meshentry's `--http-proxy` listener plays its part).
    HttpProxy,
    /// A `unix://` bind: a socket meshentry does not open, so what it imports is held but
    /// routed by no listener.
    Unix,
}

/// One `spec.egress[]` entry and what it imports.
#[derive(Clone, Debug)]
pub struct EgressListener {
    /// Position in `spec.egress` (0 for the implicit `*/*` listener of the default scope).
    pub index: usize,
    pub role: Role,
    /// `port.number`, when set and not 0.
    pub port: Option<u32>,
    pub protocol: Protocol,
    pub bind: String,
    pub capture_none: bool,
    /// `hosts` as written.
    pub hosts: Vec<String>,
    classes: BTreeMap<String, HostClass>,
    /// The services its hosts import (Istio's `IstioEgressListenerWrapper.services`).
    services: Vec<ListenerImport>,
    /// The VirtualServices its hosts import, in Istio's order.
    virtual_services: Vec<ImportedVs>,
}

impl EgressListener {
    /// `egress[i]`, or `egress[i] (port P)`.
    pub fn label(&self) -> String {
        match self.port {
            Some(p) => format!("egress[{}] (port {p})", self.index),
            None => format!("egress[{}]", self.index),
        }
    }

    /// Istio's `needsPortMatch`: a port, unless the listener is an HTTP proxy.
    fn match_port(&self) -> Option<u32> {
        self.port.filter(|_| self.protocol != Protocol::HttpProxy)
    }
}

/// A service one listener imports.
#[derive(Clone, Debug)]
struct ListenerImport {
    service: ServiceId,
    ports: Vec<u32>,
    host: usize,
}

/// A VirtualService an egress listener imports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedVs {
    /// `namespace/name`.
    pub id: String,
    pub listener: usize,
    /// Index into the listener's `hosts`.
    pub host: usize,
}

/// How a service came into the scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// `hosts[host]` of listener `listener` names it.
    Host { listener: usize, host: usize },
    /// It is a destination of VirtualService `vs`, which listener `listener` imports (Istio
    /// then holds its cluster, though no listener routes to it by its own name).
    Destination { listener: usize, vs: String },
}

/// A service of the scope: Istio's `SidecarScope.services`, one per host name.
#[derive(Clone, Debug)]
pub struct Imported {
    /// In the registry the scope was computed on.
    pub service: ServiceId,
    pub host: Arc<str>,
    pub namespace: Arc<str>,
    /// The ports the proxy holds clusters for, in the service's order.
    pub ports: Vec<u32>,
    /// The ports its listeners route to it (a subset of `ports`).
    pub routable: Vec<u32>,
    /// The first import.
    pub via: Via,
}

/// What a sidecar proxy imports: Istio's `SidecarScope`.
#[derive(Clone, Debug)]
pub struct SidecarScope {
    /// `None`: no Sidecar applies, and the scope is Istio's default (`*/*`).
    pub sidecar: Option<SidecarId>,
    /// The proxy's namespace (`.` in hosts).
    pub namespace: String,
    pub listeners: Vec<EgressListener>,
    /// The union of the listeners' services, one per host, in Istio's order.
    pub services: Vec<Imported>,
}

/// `hosts` entries of one namespace (Istio's `hostClassification`).
#[derive(Clone, Debug, Default)]
struct HostClass {
    /// Exact names -> the first entry naming it.
    exact: HashMap<String, usize>,
    /// Every imported name, with its entry.
    all: Vec<(String, usize)>,
    /// `~`-prefixed names, with their entry.
    excluded: Vec<(String, usize)>,
}

impl HostClass {
    /// Istio's `Matches`: the entry that imports service host `h`.
    fn matches(&self, h: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(h) {
            return Some(i);
        }
        self.all
            .iter()
            .filter(|(imported, _)| is_wild(h) || is_wild(imported))
            .find(|(imported, _)| subset_of(h, imported))
            .map(|&(_, i)| i)
    }

    /// Istio's `VSMatches` for VirtualServices not converted from the Gateway API: either way
    /// round.
    fn vs_matches(&self, h: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(h) {
            return Some(i);
        }
        self.all
            .iter()
            .filter(|(imported, _)| is_wild(h) || is_wild(imported))
            .find(|(imported, _)| matches(h, imported))
            .map(|&(_, i)| i)
    }

    /// Istio's `Excluded`: the `~` entry that excludes `h`.
    fn excluded(&self, h: &str) -> Option<usize> {
        self.excluded.iter().find(|(e, _)| subset_of(h, e)).map(|&(_, i)| i)
    }
}

fn is_wild(h: &str) -> bool {
    h.starts_with('*')
}

/// `host.Name.SubsetOf`: every name `n` covers, `o` covers. Case-sensitive, as Istio's.
fn subset_of(n: &str, o: &str) -> bool {
    match (n.strip_prefix('*'), o.strip_prefix('*')) {
        (Some(ns), Some(os)) => ns.len() >= os.len() && ns.ends_with(os),
        (Some(_), None) => false,
        (None, Some(os)) => n.ends_with(os),
        (None, None) => n == o,
    }
}

/// `host.Name.Matches`: the two name sets intersect. Case-sensitive, as Istio's.
fn matches(n: &str, o: &str) -> bool {
    match (n.strip_prefix('*'), o.strip_prefix('*')) {
        (Some(ns), Some(os)) if ns.len() < os.len() => os.ends_with(ns),
        (Some(ns), Some(os)) => ns.ends_with(os),
        (Some(ns), None) => o.ends_with(ns),
        (None, Some(os)) => n.ends_with(os),
        (None, None) => n == o,
    }
}

/// Istio's `convertIstioListenerToWrapper` host parsing: entries by namespace (`.` = the
/// proxy's, `~ns/` an exclusion, `~/` an exclusion in any namespace); whether every entry is
/// an exact name in a named namespace (Istio then looks them up instead of scanning).
fn classify(hosts: &[String], namespace: &str) -> (BTreeMap<String, HostClass>, bool) {
    let mut classes: BTreeMap<String, HostClass> = BTreeMap::new();
    let mut all_exact = true;
    for (i, h) in hosts.iter().enumerate() {
        // Validation rejects anything else; Istio skips it.
        if h.matches('/').count() != 1 {
            continue;
        }
        let Some((ns, name)) = h.split_once('/') else { continue };
        let (excluded, ns) = match ns.strip_prefix('~') {
            Some("") => (true, "*"),
            Some(rest) => (true, rest),
            None => (false, ns),
        };
        let ns = if ns == "." { namespace } else { ns };
        let class = classes.entry(ns.to_string()).or_default();
        if excluded {
            class.excluded.push((name.to_string(), i));
            continue;
        }
        if is_wild(name) {
            all_exact = false;
        } else {
            class.exact.entry(name.to_string()).or_insert(i);
        }
        if ns == "*" {
            all_exact = false;
        }
        class.all.push((name.to_string(), i));
    }
    (classes, all_exact)
}

/// A VirtualService bound to the mesh gateway and visible to the proxy's namespace, hosts
/// resolved as Istio resolves short names.
struct MeshVs<'a> {
    id: String,
    namespace: &'a str,
    /// The cluster domain short names expand in.
    domain: &'a meshentry_api::ClusterDomain,
    hosts: Vec<String>,
    spec: &'a VirtualService,
}

/// Istio's `ResolveShortnameToFQDN`: a name without a dot (not `*`, not an IP) is
/// `<name>.<namespace>.svc.<domain>`.
fn resolve_short(host: &str, namespace: &str, domain: &meshentry_api::ClusterDomain) -> String {
    if host.is_empty() || host == "*" || host.contains('.') || host.parse::<IpAddr>().is_ok() {
        host.to_string()
    } else {
        domain.service_host(host, namespace)
    }
}

/// The VirtualServices a sidecar in `namespace` may import, in Istio's order: those exported to
/// it (its own private ones and ones exported to it by name), then public ones, oldest first.
fn mesh_virtual_services<'a>(
    resources: &[&'a Resource],
    namespace: &str,
    domain: &'a meshentry_api::ClusterDomain,
) -> Vec<MeshVs<'a>> {
    let mut vss: Vec<(u8, &'a Resource, &'a VirtualService)> = resources
        .iter()
        .filter(|r| r.valid)
        .filter_map(|r| match &r.spec {
            Spec::VirtualService(vs) => Some((*r, vs)),
            _ => None,
        })
        .filter(|(_, vs)| !vs.hosts.is_empty())
        .filter(|(_, vs)| vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh"))
        .filter_map(|(r, vs)| {
            let e = &vs.export_to;
            let group = if e.is_empty() || e.iter().any(|x| x == "*") {
                1
            } else if e.iter().any(|x| x == "~") {
                return None;
            } else if e
                .iter()
                .any(|x| x == namespace || (x == "." && r.namespace == namespace))
            {
                0
            } else {
                return None;
            };
            Some((group, r, vs))
        })
        .collect();
    vss.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.age_key().cmp(&b.1.age_key())));
    vss.into_iter()
        .map(|(_, r, vs)| MeshVs {
            id: format!("{}/{}", r.namespace, r.name()),
            namespace: &r.namespace,
            domain,
            hosts: vs
                .hosts
                .iter()
                .map(|h| resolve_short(h, &r.namespace, domain))
                .collect(),
            spec: vs,
        })
        .collect()
}

/// Istio's `virtualServiceDestinationsFilteredBySourceNamespace`: destination host -> ports
/// (0 = a destination without a port). An HTTP rule is left out when one of its matches names
/// a `sourceNamespace` and none names the proxy's. Delegates' rules count as their root's
/// (Istio merges them into it).
fn destinations(
    vs: &MeshVs<'_>,
    namespace: &str,
    delegates: &HashMap<String, &VirtualService>,
) -> BTreeMap<String, Vec<u32>> {
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for id in http_destinations(&mut out, vs.spec, vs.namespace, namespace, vs.domain) {
        if let (Some(spec), Some((ns, _))) = (delegates.get(&id), id.split_once('/')) {
            // One level: a delegate cannot delegate again (validation).
            http_destinations(&mut out, spec, ns, namespace, vs.domain);
        }
    }
    for d in vs
        .spec
        .tcp
        .iter()
        .flat_map(|t| &t.route)
        .chain(vs.spec.tls.iter().flat_map(|t| &t.route))
        .filter_map(|r| r.destination.as_ref())
    {
        add_destination(&mut out, d, vs.namespace, vs.domain);
    }
    out
}

/// The HTTP destinations of `spec` (in `vs_ns`) into `out`; returns the delegates named.
fn http_destinations(
    out: &mut BTreeMap<String, Vec<u32>>,
    spec: &VirtualService,
    vs_ns: &str,
    namespace: &str,
    domain: &meshentry_api::ClusterDomain,
) -> Vec<String> {
    let mut delegates = Vec::new();
    for rule in &spec.http {
        let named: Vec<&str> = rule
            .r#match
            .iter()
            .map(|m| m.source_namespace.as_str())
            .filter(|s| !s.is_empty())
            .collect();
        if !named.is_empty() && !named.contains(&namespace) {
            continue;
        }
        for r in &rule.route {
            if let Some(d) = &r.destination {
                add_destination(out, d, vs_ns, domain);
            }
        }
        if let Some(d) = &rule.mirror {
            add_destination(out, d, vs_ns, domain);
        }
        for m in &rule.mirrors {
            if let Some(d) = &m.destination {
                add_destination(out, d, vs_ns, domain);
            }
        }
        if let Some(del) = &rule.delegate {
            let ns = if del.namespace.is_empty() {
                vs_ns
            } else {
                &del.namespace
            };
            delegates.push(format!("{ns}/{}", del.name));
        }
    }
    delegates
}

fn add_destination(
    out: &mut BTreeMap<String, Vec<u32>>,
    d: &Destination,
    vs_ns: &str,
    domain: &meshentry_api::ClusterDomain,
) {
    let ports = out.entry(resolve_short(&d.host, vs_ns, domain)).or_default();
    let port = d.port.as_ref().map_or(0, |p| p.number);
    if !ports.contains(&port) {
        ports.push(port);
    }
}

/// A listener address Envoy would key an outbound listener by: the wildcard, or IPs.
enum ListenerKey {
    Wildcard,
    Ips(Vec<IpAddr>),
}

/// The single-IP address a TCP listener of `s` binds, if any (C4/C5: a CIDR or no address
/// means `0.0.0.0`).
fn vip(s: &Service) -> Option<IpAddr> {
    let a = s.addresses.first()?;
    (!a.is_cidr() && !a.net.addr().is_unspecified()).then(|| a.net.addr())
}

/// Where Istio's catch-all egress listener puts a non-HTTP port of `s` (C5: NONE without
/// address but with a selector gets one listener per endpoint IP).
fn catch_all_key(s: &Service) -> ListenerKey {
    if s.addresses.is_empty() && s.resolution == Resolution::None && s.selector.is_some() {
        let ips = s
            .endpoints
            .iter()
            .filter_map(|e| e.address().parse::<IpAddr>().ok())
            .collect();
        return ListenerKey::Ips(ips);
    }
    match vip(s) {
        Some(ip) => ListenerKey::Ips(vec![ip]),
        None => ListenerKey::Wildcard,
    }
}

/// The listener addresses a port listener's services take on its port: the listener's
/// protocol (not the services') decides between HTTP (`0.0.0.0`) and TCP (by VIP).
#[derive(Default)]
struct Claim {
    listener: usize,
    wildcard: bool,
    ips: Vec<IpAddr>,
}

impl SidecarScope {
    /// Computes the scope of a sidecar proxy in `namespace` under `sidecar` (`None`: Istio's
    /// default scope, a single `*/*` listener) from `registry` and the VirtualServices among
    /// `resources`.
    pub fn compute(
        registry: &Registry,
        resources: &[&Resource],
        sidecar: Option<&Selected<'_>>,
        namespace: &str,
    ) -> SidecarScope {
        let implicit = [IstioEgressListener {
            hosts: vec!["*/*".into()],
            ..IstioEgressListener::default()
        }];
        let egress: &[IstioEgressListener] = match sidecar {
            Some(s) if !s.sidecar.egress.is_empty() => &s.sidecar.egress,
            _ => &implicit,
        };
        let services = &registry.services;
        // Istio's `servicesExportedToNamespace`: exported to the namespace (privately or by
        // name), then public, oldest first; every merge class counts.
        let mut visible: Vec<ServiceId> = (0..services.len() as ServiceId)
            .filter(|&id| services[id as usize].is_visible_to(namespace))
            .collect();
        visible.sort_by_key(|&id| {
            let s = &services[id as usize];
            let public = matches!(s.export_to.scope, crate::Scope::Public);
            (public, s.age, id)
        });
        // Istio's `HostnameAndNamespace`: the oldest service of each host and namespace.
        let mut by_host: HashMap<&str, Vec<(&str, ServiceId)>> = HashMap::new();
        for &id in &registry.listing {
            let s = &services[id as usize];
            by_host.entry(&s.host).or_default().push((&s.namespace, id));
        }
        let vss = mesh_virtual_services(resources, namespace, &registry.cluster_domain);
        let delegates: HashMap<String, &VirtualService> = resources
            .iter()
            .filter(|r| r.valid)
            .filter_map(|r| match &r.spec {
                Spec::VirtualService(vs) if vs.hosts.is_empty() => Some((format!("{}/{}", r.namespace, r.name()), vs)),
                _ => None,
            })
            .collect();

        let mut listeners = Vec::with_capacity(egress.len());
        for (index, e) in egress.iter().enumerate() {
            let (classes, all_exact) = classify(&e.hosts, namespace);
            let port = e.port.as_ref().map(|p| p.number).filter(|&n| n != 0);
            let protocol = e
                .port
                .as_ref()
                .map_or(Protocol::Unset, |p| Protocol::parse(&p.protocol));
            let role = if e.bind.starts_with(crate::model::UNIX_PREFIX) {
                Role::Unix
            } else {
                match port {
                    Some(_) if protocol == Protocol::HttpProxy => Role::HttpProxy,
                    Some(p) => Role::Port(p),
                    None => Role::CatchAll,
                }
            };
            let mut listener = EgressListener {
                index,
                role,
                port,
                protocol,
                bind: e.bind.clone(),
                capture_none: e.capture_mode == meshentry_api::model::CaptureMode::None,
                hosts: e.hosts.clone(),
                classes,
                services: Vec::new(),
                virtual_services: Vec::new(),
            };
            let candidates = if all_exact {
                let mut c: Vec<ServiceId> = Vec::new();
                for (ns, class) in &listener.classes {
                    for name in class.exact.keys() {
                        let found = by_host.get(name.as_str()).and_then(|l| l.iter().find(|(n, _)| n == ns));
                        if let Some(&(_, id)) = found
                            && services[id as usize].is_visible_to(namespace)
                        {
                            c.push(id);
                        }
                    }
                }
                c.sort_by_key(|&id| (services[id as usize].age, id));
                c.dedup();
                c
            } else {
                visible.clone()
            };
            listener.services = select_services(&listener, &candidates, services, namespace);
            listener.virtual_services = select_virtual_services(&listener, &vss);
            listeners.push(listener);
        }

        let mut scope = SidecarScope {
            sidecar: sidecar.map(|s| SidecarId {
                namespace: s.resource.namespace.clone(),
                name: s.resource.name().to_string(),
                origin: s.resource.origin.clone(),
                selection: s.selection,
            }),
            namespace: namespace.to_string(),
            listeners,
            services: Vec::new(),
        };
        scope.collect(services, &by_host, &vss, &delegates);
        scope.mark_routable(services);
        scope
    }

    /// Istio's `collectImportedServices` and `appendSidecarServices`: each listener's services,
    /// then the destinations of its VirtualServices; one service per host, the first one
    /// added, later imports of the same service adding their ports.
    fn collect(
        &mut self,
        services: &[Service],
        by_host: &HashMap<&str, Vec<(&str, ServiceId)>>,
        vss: &[MeshVs<'_>],
        delegates: &HashMap<String, &VirtualService>,
    ) {
        let mut union: Vec<Imported> = Vec::new();
        let mut position: HashMap<Arc<str>, usize> = HashMap::new();
        let mut append = |id: ServiceId, ports: Vec<u32>, via: Via| {
            let s = &services[id as usize];
            match position.get(&s.host) {
                None => {
                    position.insert(s.host.clone(), union.len());
                    union.push(Imported {
                        service: id,
                        host: s.host.clone(),
                        namespace: s.namespace.clone(),
                        ports,
                        routable: Vec::new(),
                        via,
                    });
                }
                // Another namespace's (or merge class's) service of the same host cannot merge.
                Some(&i) if union[i].service != id => {}
                Some(&i) => {
                    let have = &mut union[i].ports;
                    for p in ports {
                        if !have.contains(&p) {
                            have.push(p);
                        }
                    }
                }
            }
        };
        for (li, l) in self.listeners.iter().enumerate() {
            for imp in &l.services {
                append(
                    imp.service,
                    imp.ports.clone(),
                    Via::Host {
                        listener: li,
                        host: imp.host,
                    },
                );
            }
            for ivs in &l.virtual_services {
                let Some(vs) = vss.iter().find(|v| v.id == ivs.id) else {
                    continue;
                };
                for (host, ports) in destinations(vs, &self.namespace, delegates) {
                    let Some(by_ns) = by_host.get(host.as_str()) else {
                        continue;
                    };
                    // The proxy's namespace's service, else (Istio's
                    // `pickBestVisibleNamespace`) the oldest visible one.
                    let id = match by_ns.iter().find(|(ns, _)| *ns == self.namespace) {
                        Some(&(_, id)) => id,
                        None => match by_ns
                            .iter()
                            .filter(|(_, id)| services[*id as usize].is_visible_to(&self.namespace))
                            .min_by_key(|(_, id)| services[*id as usize].age)
                        {
                            Some(&(_, id)) => id,
                            None => continue,
                        },
                    };
                    let s = &services[id as usize];
                    let kept = match l.match_port() {
                        Some(p) => s.port(p).map(|_| vec![p]),
                        None => destination_ports(s, &ports),
                    };
                    if let Some(kept) = kept {
                        append(
                            id,
                            kept,
                            Via::Destination {
                                listener: li,
                                vs: ivs.id.clone(),
                            },
                        );
                    }
                }
            }
        }
        for imp in &mut union {
            let s = &services[imp.service as usize];
            imp.ports = s
                .ports
                .iter()
                .map(|p| p.number)
                .filter(|n| imp.ports.contains(n))
                .collect();
        }
        self.services = union;
    }

    /// Which ports of each imported service meshentry's listeners route: a `Port` listener's
    /// own services on its port; a catch-all listener's services on every port no `Port`
    /// listener holds for them (Istio locks the listeners a port listener built: an HTTP port,
    /// or a TCP one on the same address, stays the port listener's); an HTTP_PROXY listener's
    /// services on all their ports; a `unix://` listener's on none.
    fn mark_routable(&mut self, services: &[Service]) {
        let mut claims: HashMap<u32, Claim> = HashMap::new();
        for (li, l) in self.listeners.iter().enumerate() {
            let Role::Port(p) = l.role else { continue };
            if claims.contains_key(&p) {
                continue; // Istio routes a port by its first listener.
            }
            let mut claim = Claim {
                listener: li,
                ..Claim::default()
            };
            for imp in &l.services {
                let s = &services[imp.service as usize];
                match vip(s) {
                    Some(ip) if !l.protocol.is_http() => claim.ips.push(ip),
                    _ => claim.wildcard = true,
                }
            }
            claims.insert(p, claim);
        }
        let mut routable: HashMap<&str, Vec<u32>> = HashMap::new();
        for (li, l) in self.listeners.iter().enumerate() {
            for imp in &l.services {
                let s = &services[imp.service as usize];
                let ports: Vec<u32> = match l.role {
                    Role::Unix => Vec::new(),
                    Role::Port(p) if claims.get(&p).is_some_and(|c| c.listener == li) => vec![p],
                    Role::Port(_) => Vec::new(),
                    Role::HttpProxy => imp.ports.clone(),
                    Role::CatchAll => imp
                        .ports
                        .iter()
                        .copied()
                        .filter(|&q| match claims.get(&q) {
                            None => true,
                            Some(claim) => {
                                let protocol = s.port(q).map_or(Protocol::Unset, |p| p.protocol);
                                // The port's HTTP route table is the port listener's.
                                !protocol.is_http()
                                    && match catch_all_key(s) {
                                        ListenerKey::Wildcard => !claim.wildcard,
                                        ListenerKey::Ips(ips) => !ips.iter().any(|ip| claim.ips.contains(ip)),
                                    }
                            }
                        })
                        .collect(),
                };
                let entry = routable.entry(&s.host).or_default();
                for p in ports {
                    if !entry.contains(&p) {
                        entry.push(p);
                    }
                }
            }
        }
        for imp in &mut self.services {
            if let Some(r) = routable.get(&*imp.host) {
                imp.routable = imp.ports.iter().copied().filter(|p| r.contains(p)).collect();
            }
        }
    }

    /// The imported service of `host` in `namespace`.
    pub fn imported(&self, host: &str, namespace: &str) -> Option<&Imported> {
        self.services
            .iter()
            .find(|i| &*i.host == host && &*i.namespace == namespace)
    }

    /// Every VirtualService some listener imports, `namespace/name`, each once.
    pub fn virtual_services(&self) -> Vec<&ImportedVs> {
        let mut out: Vec<&ImportedVs> = Vec::new();
        for l in &self.listeners {
            for v in &l.virtual_services {
                if !out.iter().any(|o| o.id == v.id) {
                    out.push(v);
                }
            }
        }
        out
    }

    /// Whether VirtualService `namespace/name` is imported.
    pub fn imports_virtual_service(&self, id: &str) -> bool {
        self.listeners
            .iter()
            .any(|l| l.virtual_services.iter().any(|v| v.id == id))
    }

    /// `Sidecar ns/name`, or Istio's default scope.
    pub fn source(&self) -> String {
        match &self.sidecar {
            Some(s) => s.to_string(),
            None => "the default scope (no Sidecar: egress hosts */*)".to_string(),
        }
    }

    /// `egress[i].hosts[j] "ns/host"` for `via`.
    pub fn describe_via(&self, via: &Via) -> String {
        match via {
            Via::Host { listener, host } => self.describe_host(*listener, *host),
            Via::Destination { listener, vs } => {
                let imported = self
                    .listeners
                    .get(*listener)
                    .and_then(|l| l.virtual_services.iter().find(|v| v.id == *vs))
                    .map(|v| self.describe_host(v.listener, v.host))
                    .unwrap_or_default();
                format!(
                    "as a destination of VirtualService {vs} (itself imported by {imported}): the proxy holds its cluster, but routes nothing to it by its own name"
                )
            }
        }
    }

    /// `Sidecar ns/name egress[i].hosts[j] "text"`.
    pub fn describe_host(&self, listener: usize, host: usize) -> String {
        let Some(l) = self.listeners.get(listener) else {
            return String::new();
        };
        let text = l.hosts.get(host).map_or("", String::as_str);
        match &self.sidecar {
            Some(s) => format!("{s} {}.hosts[{host}] {text:?}", l.label()),
            None => format!("the default scope's egress host {text:?}"),
        }
    }

    /// Why `service` (of the registry the scope was computed on) is not routed on `port`:
    /// not imported at all (excluded, or no host covers it), imported from another namespace,
    /// or imported without `port` being routed.
    pub fn why_not(&self, registry: &Registry, s: &Service, port: u32) -> Vec<String> {
        let Some(id) = registry
            .services
            .iter()
            .position(|x| std::ptr::eq(x, s))
            .map(|i| i as ServiceId)
        else {
            return Vec::new();
        };
        let who = self.source();
        if !s.is_visible_to(&self.namespace) {
            return vec![format!(
                "{} in namespace {} is not exported to namespace {}, so no egress host can import it",
                s.host, s.namespace, self.namespace
            )];
        }
        if let Some(other) = self.services.iter().find(|i| i.host == s.host && i.service != id) {
            return vec![format!(
                "{who} imports {} from namespace {} ({}), not from namespace {}: a proxy holds one service per host",
                s.host,
                other.namespace,
                self.describe_via(&other.via),
                s.namespace
            )];
        }
        if let Some(imp) = self.services.iter().find(|i| i.service == id) {
            if !imp.ports.contains(&port) {
                return vec![format!(
                    "{who} imports {} ({}) on port{} {} only, not {port}",
                    s.host,
                    self.describe_via(&imp.via),
                    if imp.ports.len() == 1 { "" } else { "s" },
                    join(&imp.ports)
                )];
            }
            let mut out = Vec::new();
            if let Via::Destination { .. } = imp.via {
                out.push(format!("{who} imports {} {}", s.host, self.describe_via(&imp.via)));
            }
            for l in &self.listeners {
                match l.role {
                    Role::Port(p) if p == port => out.push(format!(
                        "{who} {} holds port {port}, and its hosts do not import {} on it",
                        l.label(),
                        s.host
                    )),
                    Role::Unix => out.push(format!(
                        "{who} {} is bound to {}, a socket meshentry does not open",
                        l.label(),
                        l.bind
                    )),
                    _ => {}
                }
            }
            return out;
        }
        let mut out = Vec::new();
        for l in &self.listeners {
            let own = l.classes.get(&*s.namespace);
            let wild = l.classes.get("*");
            let excluded = own
                .and_then(|c| c.excluded(&s.host))
                .or_else(|| wild.and_then(|c| c.excluded(&s.host)));
            let label = match &self.sidecar {
                Some(_) => format!("{who} {}", l.label()),
                None => who.clone(),
            };
            if let Some(i) = excluded {
                out.push(format!(
                    "{label}: {}/{} is excluded by hosts[{i}] {:?}",
                    s.namespace, s.host, l.hosts[i]
                ));
                continue;
            }
            let matched = own
                .and_then(|c| c.matches(&s.host))
                .or_else(|| wild.and_then(|c| c.matches(&s.host)));
            match (matched, l.match_port()) {
                (Some(i), Some(p)) if s.port(p).is_none() => out.push(format!(
                    "{label}: hosts[{i}] {:?} names {}, which has no port {p}",
                    l.hosts[i], s.host
                )),
                (Some(_), _) => {}
                (None, _) => out.push(format!(
                    "{label}: no host of [{}] covers {}/{}",
                    l.hosts.iter().map(|h| format!("{h:?}")).collect::<Vec<_>>().join(", "),
                    s.namespace,
                    s.host
                )),
            }
        }
        out
    }
}

fn join(ports: &[u32]) -> String {
    ports.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// Istio's `serviceMatchingVirtualServicePorts`: every port when a destination has none; else
/// the named ports the service has; `None` when it has none of them.
fn destination_ports(s: &Service, ports: &[u32]) -> Option<Vec<u32>> {
    if ports.is_empty() || ports.contains(&0) {
        return Some(s.ports.iter().map(|p| p.number).collect());
    }
    let found: Vec<u32> = s.ports.iter().map(|p| p.number).filter(|n| ports.contains(n)).collect();
    (!found.is_empty()).then_some(found)
}

/// Istio's `selectServices`: the candidates a listener's hosts import (an exclusion first, then
/// an entry of the service's namespace, then a `*/` entry), cut to the listener's port; then
/// one namespace per host: the proxy's own, else the first imported.
fn select_services(
    l: &EgressListener,
    candidates: &[ServiceId],
    services: &[Service],
    namespace: &str,
) -> Vec<ListenerImport> {
    let wild = l.classes.get("*");
    let port = l.match_port();
    let cut = |s: &Service| match port {
        Some(p) => s.port(p).map(|_| vec![p]),
        None => Some(s.ports.iter().map(|p| p.number).collect()),
    };
    let mut imported: Vec<ListenerImport> = Vec::new();
    for &id in candidates {
        let s = &services[id as usize];
        let own = l.classes.get(&*s.namespace);
        if own.and_then(|c| c.excluded(&s.host)).is_some() || wild.and_then(|c| c.excluded(&s.host)).is_some() {
            continue;
        }
        let by_own = own.and_then(|c| c.matches(&s.host)).and_then(|h| Some((h, cut(s)?)));
        let by_any = || wild.and_then(|c| c.matches(&s.host)).and_then(|h| Some((h, cut(s)?)));
        if let Some((host, ports)) = by_own.or_else(by_any) {
            imported.push(ListenerImport {
                service: id,
                ports,
                host,
            });
        }
    }
    let mut chosen: HashMap<&str, &str> = HashMap::new();
    for imp in &imported {
        let s = &services[imp.service as usize];
        let first = !chosen.contains_key(&*s.host);
        if first || *s.namespace == *namespace {
            chosen.insert(&s.host, &s.namespace);
        }
    }
    imported.retain(|imp| {
        let s = &services[imp.service as usize];
        chosen.get(&*s.host) == Some(&&*s.namespace)
    });
    imported
}

/// Istio's `SelectVirtualServices`: a VirtualService is imported when one of its hosts meets an
/// entry of its own namespace or a `*/` entry, and no `~` entry excludes that host.
fn select_virtual_services(l: &EgressListener, vss: &[MeshVs<'_>]) -> Vec<ImportedVs> {
    let wild = l.classes.get("*");
    let mut out: Vec<ImportedVs> = Vec::new();
    for vs in vss {
        let own = l.classes.get(vs.namespace);
        for class in [own, wild].into_iter().flatten() {
            if out.iter().any(|o| o.id == vs.id) {
                break;
            }
            let hit = vs.hosts.iter().find_map(|h| {
                let entry = class.vs_matches(h)?;
                let excluded = own.and_then(|c| c.excluded(h)).is_some() || wild.and_then(|c| c.excluded(h)).is_some();
                (!excluded).then_some(entry)
            });
            if let Some(host) = hit {
                out.push(ImportedVs {
                    id: vs.id.clone(),
                    listener: l.index,
                    host,
                });
            }
        }
    }
    out
}

impl Registry {
    /// The registry a sidecar proxy under `scope` holds (C9): a copy of each imported service
    /// with only the ports the proxy holds (the routed ones, when its listeners route any; a
    /// service imported only as a VirtualService destination keeps its cluster ports but is
    /// left out of the lookups, so only VirtualService routes reach it). Everything else is
    /// dropped, so a scoped proxy's memory follows what it imports, not the mesh.
    pub fn scoped(&self, scope: &SidecarScope) -> Registry {
        let mut routed: Vec<Service> = Vec::new();
        let mut held: Vec<Service> = Vec::new();
        for imp in &scope.services {
            let Some(original) = self.services.get(imp.service as usize) else {
                continue;
            };
            let keep: &[u32] = if imp.routable.is_empty() {
                &imp.ports
            } else {
                &imp.routable
            };
            let mut s = original.clone();
            s.ports.retain(|p| keep.contains(&p.number));
            let names: Vec<Arc<str>> = s.ports.iter().map(|p| p.name.clone()).collect();
            s.endpoints.retain(|e| names.contains(&e.port_name));
            if imp.routable.is_empty() {
                held.push(s);
            } else {
                routed.push(s);
            }
        }
        let order = |a: &Service, b: &Service| (&a.host, &a.namespace, a.age).cmp(&(&b.host, &b.namespace, b.age));
        routed.sort_by(order);
        held.sort_by(order);
        let routable = routed.len();
        let mut services = routed;
        services.extend(held);
        let index = index::Index::new(&services[..routable]);
        let cluster_index = index::Index::new(&services);
        let mut listing: Vec<ServiceId> = (0..services.len() as ServiceId).collect();
        listing.sort_by(|&a, &b| order(&services[a as usize], &services[b as usize]));
        Registry {
            sources: self.sources.clone(),
            services,
            listing,
            warnings: self.warnings.clone(),
            index,
            routable,
            cluster_index: Some(cluster_index),
            cluster_domain: self.cluster_domain.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
