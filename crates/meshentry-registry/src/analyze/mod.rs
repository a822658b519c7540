//! Checks across resources, as `istioctl analyze` makes them, reported as warnings by
//! `meshentry validate`: references that lead nowhere (a VirtualService's gateway, host,
//! port or subset, a DestinationRule's host, a Sidecar's import), and configurations Istio
//! accepts but silently half-applies (IST0109, IST0132, IST0173), and endpoints that are the
//! proxy itself (they would loop through it). Messages start with Istio's
//! own text and code where Istio has one, then say why in meshentry's terms.
//!
//! Names are resolved as Istio resolves them: short names (E1, D1), gateway names (E2),
//! visibility (B9, exportTo), DestinationRule precedence (D1, D2). meshentry reads no
//! Kubernetes Services, so a host in the cluster domain (`*.svc.cluster.local`) that no
//! ServiceEntry defines is taken to be one and not reported, unless the reference is a short
//! name that a ServiceEntry defines literally (a likely mistake: ServiceEntry hosts are not
//! expanded, B1).
//!
//! Every index is built once, so the analysis is linear in the resources and the references
//! they make.

mod destination_rule;
mod hosts;
mod self_endpoint;
mod sidecar;
mod virtual_service;

use meshentry_api::model::{DestinationRule, Gateway, Sidecar, VirtualService};
use meshentry_api::{Finding, Loaded, Resource, Severity, Spec};

use self::hosts::{HostIndex, normalize};
use crate::Registry;
use crate::hash::FxHashMap as HashMap;
use crate::model::{ExportTo, Scope, Service};

/// Istio's default root namespace: DestinationRules there apply to every namespace (D1).
/// MeshConfig's `rootNamespace` (`--mesh-config`) moves it; the checks read it from
/// `Loaded::mesh`.
pub const ROOT_NAMESPACE: &str = meshentry_api::mesh_config::DEFAULT_ROOT_NAMESPACE;

/// The suffix E1 and D1 give short names, and the domain of Kubernetes Services.
pub const CLUSTER_SUFFIX: &str = ".svc.cluster.local";

/// Runs every check on the valid resources of `loaded`; builds the registry only when there
/// is something to check against it.
pub fn analyze(loaded: &Loaded) -> Vec<Finding> {
    let needed = loaded.valid().any(|r| {
        matches!(
            r.spec,
            Spec::VirtualService(_) | Spec::DestinationRule(_) | Spec::Sidecar(_) | Spec::ServiceEntry(_)
        )
    });
    if !needed {
        return Vec::new();
    }
    analyze_with(loaded, &Registry::build(&loaded.resources))
}

/// [`analyze`] with a registry built from the same resources.
pub fn analyze_with(loaded: &Loaded, registry: &Registry) -> Vec<Finding> {
    let cx = Context::new(loaded, registry);
    let mut out = Findings {
        loaded,
        list: Vec::new(),
    };
    virtual_service::check(&cx, &mut out);
    destination_rule::check(&cx, &mut out);
    sidecar::check(&cx, &mut out);
    self_endpoint::check(&cx, &mut out);
    out.list
}

/// The findings so far.
struct Findings<'a> {
    loaded: &'a Loaded,
    list: Vec<Finding>,
}

impl Findings<'_> {
    fn warn(&mut self, r: &Resource, path: &str, message: String) {
        self.list.push(self.loaded.finding(r, path, Severity::Warning, message));
    }
}

/// A valid Gateway and its server hosts as `(namespace, host)`: `*` for any namespace, `.`
/// resolved (F2).
struct Gw<'a> {
    r: &'a Resource,
    hosts: Vec<(String, String)>,
}

impl Gw<'_> {
    fn ns(&self) -> &str {
        &self.r.namespace
    }

    fn full_name(&self) -> String {
        format!("{}/{}", self.r.namespace, self.r.meta.name)
    }
}

/// A valid VirtualService with its hosts expanded (E1) and its exportTo resolved.
struct Vs<'a> {
    r: &'a Resource,
    spec: &'a VirtualService,
    hosts: Vec<String>,
    export: ExportTo,
}

/// A valid DestinationRule, its host expanded (D1).
struct Dr<'a> {
    r: &'a Resource,
    spec: &'a DestinationRule,
    host: String,
    export: ExportTo,
}

/// The DestinationRules of one namespace.
#[derive(Default)]
struct NsRules {
    /// Host -> indexes in [`Context::drs`], oldest first.
    by_host: HashMap<Box<str>, Vec<u32>>,
    /// The partial wildcard hosts (`*foo.a.com`) among them, longest first.
    partial: Vec<Box<str>>,
}

/// What every check looks things up in.
struct Context<'a> {
    registry: &'a Registry,
    /// MeshConfig's `rootNamespace` (D1).
    root_namespace: &'a str,
    /// Every service of the registry (one per host and namespace) by host.
    services: HostIndex<&'a Service>,
    /// Namespace -> name -> Gateway.
    gateways: HashMap<&'a str, HashMap<&'a str, Gw<'a>>>,
    /// Gateway name -> its namespaces, sorted.
    gateway_namespaces: HashMap<&'a str, Vec<&'a str>>,
    /// Oldest first.
    vss: Vec<Vs<'a>>,
    /// Every host of every VirtualService -> index in `vss`.
    vs_hosts: HostIndex<u32>,
    /// Oldest first.
    drs: Vec<Dr<'a>>,
    /// The rules of each namespace.
    drs_by_ns: HashMap<&'a str, NsRules>,
    /// Host -> indexes in `drs`, oldest first.
    drs_by_host: HashMap<Box<str>, Vec<u32>>,
    sidecars: Vec<(&'a Resource, &'a Sidecar)>,
}

impl<'a> Context<'a> {
    fn new(loaded: &'a Loaded, registry: &'a Registry) -> Self {
        let mut valid: Vec<&Resource> = loaded.valid().collect();
        valid.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
        let services = HostIndex::new(registry.services().map(|s| (s.host.clone(), s)));

        let mut gateways: HashMap<&str, HashMap<&str, Gw<'_>>> = HashMap::default();
        let mut gateway_namespaces: HashMap<&str, Vec<&str>> = HashMap::default();
        let mut vss = Vec::new();
        let mut drs = Vec::new();
        let mut sidecars = Vec::new();
        for &r in &valid {
            let ns = r.namespace.as_str();
            match &r.spec {
                Spec::Gateway(g) => {
                    gateways
                        .entry(ns)
                        .or_default()
                        .insert(r.meta.name.as_str(), gateway(r, g));
                    gateway_namespaces.entry(r.meta.name.as_str()).or_default().push(ns);
                }
                Spec::VirtualService(spec) => vss.push(Vs {
                    r,
                    spec,
                    hosts: spec.hosts.iter().map(|h| expand_host(h, ns)).collect(),
                    export: ExportTo::new(&spec.export_to, ns),
                }),
                Spec::DestinationRule(spec) => drs.push(Dr {
                    r,
                    spec,
                    host: expand_host(&spec.host, ns),
                    export: ExportTo::new(&spec.export_to, ns),
                }),
                Spec::Sidecar(spec) => sidecars.push((r, spec)),
                _ => {}
            }
        }
        for list in gateway_namespaces.values_mut() {
            list.sort_unstable();
        }
        let vs_hosts = HostIndex::new(
            vss.iter()
                .enumerate()
                .flat_map(|(i, vs)| vs.hosts.iter().map(move |h| (h.as_str(), i as u32))),
        );
        let mut drs_by_ns: HashMap<&str, NsRules> = HashMap::default();
        let mut drs_by_host: HashMap<Box<str>, Vec<u32>> = HashMap::default();
        for (i, dr) in drs.iter().enumerate() {
            let rules = drs_by_ns.entry(dr.r.namespace.as_str()).or_default();
            let ids = rules.by_host.entry(dr.host.as_str().into()).or_default();
            if ids.is_empty() && dr.host.starts_with('*') && !dr.host.starts_with("*.") && dr.host != "*" {
                rules.partial.push(dr.host.as_str().into());
            }
            ids.push(i as u32);
            drs_by_host.entry(dr.host.as_str().into()).or_default().push(i as u32);
        }
        for rules in drs_by_ns.values_mut() {
            rules.partial.sort_by_key(|h| std::cmp::Reverse(h.len()));
        }
        Context {
            registry,
            root_namespace: &loaded.mesh.root_namespace,
            services,
            gateways,
            gateway_namespaces,
            vss,
            vs_hosts,
            drs,
            drs_by_ns,
            drs_by_host,
            sidecars,
        }
    }

    fn gateway(&self, ns: &str, name: &str) -> Option<&Gw<'a>> {
        self.gateways.get(ns)?.get(name)
    }

    /// `Kind namespace/name` of the resource a service comes from.
    fn source_of(&self, s: &Service) -> &str {
        self.registry
            .sources()
            .get(s.source as usize)
            .map_or("a ServiceEntry", |src| src.display_name.as_str())
    }

    /// "ServiceEntry ns/name", with the service's host when it differs from `host`.
    fn describe_service(&self, s: &Service, host: &str) -> String {
        if s.host.eq_ignore_ascii_case(host) {
            self.source_of(s).to_string()
        } else {
            format!("{} (host {:?})", self.source_of(s), &*s.host)
        }
    }

    /// "ServiceEntry ns/x defines it but exports it to namespace ns only", for a service
    /// that exists but is not visible where it is needed.
    fn invisible_service(&self, s: &Service, host: &str) -> String {
        format!(
            "{} defines it but exports it to {}",
            self.describe_service(s, host),
            describe_scope(&s.export_to)
        )
    }

    /// The short-name trap (likely mistake 1): `written` has no dot, so it was expanded, yet a
    /// ServiceEntry has exactly that host. The hint to give, if so.
    fn short_name_trap(&self, written: &str, expanded: &str) -> Option<String> {
        if written.contains('.') || written == "*" {
            return None;
        }
        let s = self.services.find_exact(written, |_| true)?;
        Some(format!(
            "a short name means {expanded:?} here, but ServiceEntry hosts are not expanded: {} has host {:?}",
            self.source_of(s),
            &*s.host
        ))
    }
}

fn gateway<'a>(r: &'a Resource, g: &'a Gateway) -> Gw<'a> {
    let mut hosts = Vec::new();
    for server in &g.servers {
        for h in &server.hosts {
            let (ns, host) = match h.split_once('/') {
                Some((".", host)) => (r.namespace.as_str(), host),
                Some((ns, host)) => (ns, host),
                None => ("*", h.as_str()),
            };
            hosts.push((ns.to_string(), normalize(host).into_owned()));
        }
    }
    Gw { r, hosts }
}

/// E1/D1: a host without a dot is short for `<host>.<namespace>.svc.cluster.local`. Lower
/// case, one trailing dot dropped; `*` and IP addresses stay as they are.
pub fn expand_host(host: &str, namespace: &str) -> String {
    let host = normalize(host);
    if host.contains('.') || *host == *"*" || host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        host.into_owned()
    } else {
        format!("{host}.{namespace}{CLUSTER_SUFFIX}")
    }
}

/// Whether `host` (normalized) is in the cluster domain, where Kubernetes Services live.
fn is_cluster_local(host: &str) -> bool {
    host.ends_with(CLUSTER_SUFFIX)
}

/// The namespace of a Kubernetes Service host: `name.ns.svc.cluster.local` -> `ns`.
fn cluster_namespace(host: &str) -> Option<&str> {
    let rest = host.strip_suffix(CLUSTER_SUFFIX)?;
    let (_, ns) = rest.rsplit_once('.')?;
    Some(ns)
}

/// The namespaces whose proxies see a VirtualService or DestinationRule, as Istio's analyzers
/// check references from it: its own namespace when it is public (public services are seen
/// from there too), else the namespaces it is exported to.
fn scope_namespaces<'a>(export: &'a ExportTo, own: &'a str) -> Vec<&'a str> {
    match &export.scope {
        Scope::Public | Scope::Nobody => vec![own],
        Scope::Namespaces(names) => names.iter().map(|n| &**n).collect(),
    }
}

/// "namespace a", "namespaces a, b", "every namespace", "no namespace".
fn describe_scope(export: &ExportTo) -> String {
    match &export.scope {
        Scope::Public => "every namespace".into(),
        Scope::Nobody => "no namespace (~)".into(),
        Scope::Namespaces(names) => list_namespaces(names.iter().map(|n| &**n)),
    }
}

fn list_namespaces<'s>(names: impl IntoIterator<Item = &'s str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    match names.as_slice() {
        [one] => format!("namespace {one}"),
        many => format!("namespaces {}", many.join(", ")),
    }
}

#[cfg(test)]
mod tests;
