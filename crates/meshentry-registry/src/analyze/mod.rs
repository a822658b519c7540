//! Checks across resources, as `istioctl analyze` makes them, for `meshentry validate`.
//!
//! Each finding with an Istio code (`Finding::code`) is what `istioctl analyze
//! --use-kube=false` reports on the same files, at Istio's level (IST0101, IST0109, IST0110,
//! IST0111, IST0112, IST0145 and IST0173 are errors) and with Istio's text ([`msg`]), followed
//! by what meshentry knows about it: why, and the likely fix. Istio's analyzers decide the
//! verdict, including where they differ from what istiod does at run time (their service
//! lookup, [`lookup`], makes every host a FQDN and reads `exportTo` its own way); the note
//! says so when they do.
//!
//! Findings without a code are meshentry's own warnings, about configurations Istio accepts
//! but silently half-applies: a gateway that does not see its VirtualService, a destination
//! not visible where a rule applies, a subset hidden by DestinationRule precedence (D1, D2), a
//! Sidecar egress host that imports nothing (C9), an endpoint that is the proxy itself.
//!
//! Like istioctl, the analysis covers every resource Istio's reader keeps
//! ([`Loaded::analyzable`]), valid or not. The Kubernetes Services it knows are those read
//! (`kind: Service` in the files, or a cluster's), plus, unless the configuration is a live
//! cluster's, the ingress gateway Service istioctl adds by default. A `*.svc.<domain>` host
//! that no ServiceEntry or known Service defines is reported as Istio reports it (IST0101,
//! IST0174); meshentry's own warnings about hosts that match nothing say nothing about such a
//! host while the Services of its namespace are not known ([`Loaded::services_known`]): it may
//! be a Service not read.
//!
//! Every index is built once, so the analysis is linear in the resources and the references
//! they make.

mod destination_rule;
mod gateway;
mod hosts;
pub mod lookup;
pub mod msg;
mod self_endpoint;
mod service_entry;
mod sidecar;
mod virtual_service;

use std::collections::HashSet;

use meshentry_api::model::{DestinationRule, Gateway, Sidecar, VirtualService};
use meshentry_api::{Finding, Loaded, Origin, Resource, ServicesKnown, Severity, Spec};

use self::hosts::{HostIndex, normalize};
use self::lookup::{KubeService, PodInfo};
use self::msg::Msg;
use crate::hash::FxHashMap as HashMap;
use crate::model::{ExportTo, Labels, Scope, Service, SourceId};
use crate::{BuildOptions, Registry};

/// Istio's default root namespace: DestinationRules there apply to every namespace (D1).
/// MeshConfig's `rootNamespace` (`--mesh-config`) moves it; the checks read it from
/// `Loaded::mesh`.
pub const ROOT_NAMESPACE: &str = meshentry_api::mesh_config::DEFAULT_ROOT_NAMESPACE;

pub use crate::host::CLUSTER_SUFFIX;

/// Analyses every resource of `loaded` Istio's reader keeps, valid or not, against a
/// registry built from them.
pub fn analyze(loaded: &Loaded) -> Vec<Finding> {
    // The registry reads valid resources only; the invalid ones Istio still analyses are
    // given to it as if valid.
    let invalid: Vec<Resource> = loaded
        .analyzable()
        .filter(|r| !r.valid)
        .map(|r| Resource {
            valid: true,
            ..r.clone()
        })
        .collect();
    let opts = BuildOptions {
        cluster_domain: loaded.cluster_domain.clone(),
        // The checks look at declared and istiod-allocated addresses, as istioctl does.
        auto_allocate: false,
        dns_capture: false,
    };
    let registry = Registry::build_with(loaded.valid().chain(invalid.iter()), &opts);
    analyze_with(loaded, &registry)
}

/// [`analyze`] with a registry built from the same resources.
pub fn analyze_with(loaded: &Loaded, registry: &Registry) -> Vec<Finding> {
    let kube = kube_services(loaded);
    let pods = pods(loaded);
    let cx = Context::new(loaded, registry, &kube, &pods);
    let mut out = Findings {
        loaded,
        list: Vec::new(),
    };
    virtual_service::check(&cx, &mut out);
    destination_rule::check(&cx, &mut out);
    gateway::check(&cx, &mut out);
    sidecar::check(&cx, &mut out);
    service_entry::check(&cx, &mut out);
    self_endpoint::check(&cx, &mut out);
    out.finish()
}

/// The Kubernetes Services the analysis knows: every one Istio's reader keeps, and the default
/// ingress gateway's, which istioctl adds unless it analyses a live cluster.
fn kube_services(loaded: &Loaded) -> Vec<KubeService> {
    let mut out: Vec<KubeService> = loaded
        .analyzable()
        .filter_map(|r| match &r.spec {
            Spec::Service(svc) => Some(KubeService {
                namespace: r.namespace.clone(),
                name: r.meta.name.clone(),
                ports: svc
                    .spec
                    .ports
                    .iter()
                    .map(|p| lookup::KubePort {
                        port: p.port,
                        target_port: match p.target_port() {
                            Some(meshentry_api::model::IntOrString::Int(n)) => u32::try_from(n).unwrap_or(0),
                            _ => 0,
                        },
                        protocol: match p.protocol.as_str() {
                            "UDP" => "UDP",
                            "SCTP" => "SCTP",
                            _ => "TCP",
                        },
                    })
                    .collect(),
                selector: svc.spec.selector.clone(),
                export_to: svc.export_to.clone(),
                origin: r.display_name(),
            }),
            _ => None,
        })
        .collect();
    if !loaded.services_known.is_live() {
        out.push(lookup::default_ingress_service());
    }
    out
}

/// Every Pod Istio's reader keeps, and the default ingress gateway Pod istioctl adds (unless it
/// analyses a live cluster).
fn pods(loaded: &Loaded) -> Vec<PodInfo> {
    let mut out: Vec<PodInfo> = loaded
        .analyzable()
        .filter(|r| matches!(r.spec, Spec::Pod { .. }))
        .map(|r| PodInfo {
            namespace: r.namespace.clone(),
            name: r.meta.name.clone(),
            labels: r.meta.labels.clone(),
            annotations: r.meta.annotations.clone(),
        })
        .collect();
    if !loaded.services_known.is_live() {
        out.push(lookup::default_ingress_pod());
    }
    out
}

/// The findings so far.
struct Findings<'a> {
    loaded: &'a Loaded,
    list: Vec<Finding>,
}

impl Findings<'_> {
    /// An `istioctl analyze` message: its code and level, Istio's text, then meshentry's note.
    fn report(&mut self, r: &Resource, path: &str, m: Msg, text: String, note: Option<String>) {
        let mut f = self.loaded.finding(r, path, m.level, msg::with_note(text, note));
        f.code = m.code.to_string();
        self.list.push(f);
    }

    /// A warning of meshentry's own (no Istio code).
    fn warn(&mut self, r: &Resource, path: &str, message: String) {
        self.list.push(self.loaded.finding(r, path, Severity::Warning, message));
    }

    /// The findings, each once (istioctl dedupes its messages too).
    fn finish(self) -> Vec<Finding> {
        let mut seen = HashSet::new();
        self.list
            .into_iter()
            .filter(|f| {
                seen.insert((
                    f.file.clone(),
                    f.line,
                    f.column,
                    f.field.clone(),
                    f.code.clone(),
                    f.message.clone(),
                ))
            })
            .collect()
    }
}

/// A Gateway and its server hosts as `(namespace, host)`: `*` for any namespace, `.`
/// resolved (F2).
struct Gw<'a> {
    r: &'a Resource,
    spec: &'a Gateway,
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

/// A VirtualService with its hosts expanded (E1) and its exportTo resolved.
struct Vs<'a> {
    r: &'a Resource,
    spec: &'a VirtualService,
    hosts: Vec<String>,
    export: ExportTo,
}

/// A DestinationRule, its host expanded (D1).
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
    /// Every ServiceEntry, oldest first.
    entries: Vec<&'a Resource>,
    /// Istio's analyzer lookup of ServiceEntries and Kubernetes Services.
    istio: lookup::Services<'a>,
    pods: &'a [PodInfo],
    kube_services: &'a [KubeService],
    /// Namespace name -> its labels, for the namespaces given as resources.
    namespaces: HashMap<&'a str, &'a Labels>,
    /// `(namespace, name, subset)` of every DestinationRule subset, as Istio's analyzer keys
    /// them ([`lookup::resource_name`]).
    dr_subsets: HashSet<(String, String, String)>,
    /// The registry's source ids by where the resource is.
    source_ids: HashMap<&'a Origin, SourceId>,
    /// `.svc.<cluster domain>`: how Kubernetes Service hosts end.
    suffix: String,
    /// Whose Kubernetes Services were read.
    services_known: &'a ServicesKnown,
    domain: &'a meshentry_api::ClusterDomain,
    /// The services each source contributed to.
    by_source: HashMap<SourceId, Vec<&'a Service>>,
}

impl<'a> Context<'a> {
    fn new(loaded: &'a Loaded, registry: &'a Registry, kube: &'a [KubeService], pods: &'a [PodInfo]) -> Self {
        let mut valid: Vec<&Resource> = loaded.analyzable().collect();
        valid.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
        let services = HostIndex::new(registry.services().map(|s| (s.host.clone(), s)));
        let entries: Vec<&Resource> = valid
            .iter()
            .copied()
            .filter(|r| matches!(r.spec, Spec::ServiceEntry(_)))
            .collect();
        let domain = &loaded.cluster_domain;
        let suffix = domain.service_suffix();
        let expand_host = |h: &str, ns: &str| crate::host::expand_in(h, ns, domain);
        let istio = lookup::Services::new(&entries, kube, &suffix);
        let mut namespaces: HashMap<&str, &Labels> = HashMap::default();
        let mut dr_subsets = HashSet::new();

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
                        .entry(r.meta.name.as_str())
                        .or_insert_with(|| gateway(r, g));
                    gateway_namespaces.entry(r.meta.name.as_str()).or_default().push(ns);
                }
                Spec::Namespace => {
                    namespaces.entry(r.meta.name.as_str()).or_insert(&r.meta.labels);
                }
                Spec::VirtualService(spec) => vss.push(Vs {
                    r,
                    spec,
                    hosts: spec.hosts.iter().map(|h| expand_host(h, ns)).collect(),
                    export: ExportTo::new(&spec.export_to, ns),
                }),
                Spec::DestinationRule(spec) => {
                    let (hns, hname) = lookup::resource_name(ns, &spec.host, &suffix);
                    for subset in &spec.subsets {
                        dr_subsets.insert((hns.clone(), hname.clone(), subset.name.clone()));
                    }
                    drs.push(Dr {
                        r,
                        spec,
                        host: expand_host(&spec.host, ns),
                        export: ExportTo::new(&spec.export_to, ns),
                    })
                }
                Spec::Sidecar(spec) => sidecars.push((r, spec)),
                _ => {}
            }
        }
        for list in gateway_namespaces.values_mut() {
            list.sort_unstable();
            list.dedup();
        }
        let source_ids = registry
            .sources()
            .iter()
            .enumerate()
            .map(|(i, s)| (&s.origin, i as SourceId))
            .collect();
        let mut by_source: HashMap<SourceId, Vec<&Service>> = HashMap::default();
        for s in registry.services() {
            for id in std::iter::once(s.source).chain(s.merged.iter().copied()) {
                by_source.entry(id).or_default().push(s);
            }
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
            entries,
            istio,
            pods,
            kube_services: kube,
            namespaces,
            dr_subsets,
            source_ids,
            by_source,
            suffix,
            services_known: &loaded.services_known,
            domain,
        }
    }

    /// E1/D1 in the cluster domain.
    fn expand(&self, host: &str, namespace: &str) -> String {
        crate::host::expand_in(host, namespace, self.domain)
    }

    /// Whether `host` (normalized) is in the cluster domain, where Kubernetes Services live.
    fn is_cluster_local(&self, host: &str) -> bool {
        host.ends_with(&self.suffix)
    }

    /// The namespace of a Kubernetes Service host: `name.ns.svc.<domain>` -> `ns`.
    fn cluster_namespace<'h>(&self, host: &'h str) -> Option<&'h str> {
        let rest = host.strip_suffix(self.suffix.as_str())?;
        let (_, ns) = rest.rsplit_once('.')?;
        Some(ns)
    }

    /// Whether `host` may be a Kubernetes Service that was not read: it is in the cluster
    /// domain, and the Services of its namespace are not known.
    fn may_be_unread_service(&self, host: &str) -> bool {
        self.is_cluster_local(host)
            && !self
                .cluster_namespace(host)
                .is_some_and(|ns| self.services_known.known_in(ns))
    }

    /// Why no service has cluster host `h`, for IST0101 and IST0174 notes.
    fn no_kube_service(&self, h: &str) -> String {
        let ns = self.cluster_namespace(h).unwrap_or_default();
        match self.services_known {
            ServicesKnown::Cluster { namespace: Some(read) } if read != ns => {
                format!("no ServiceEntry defines {h}, and only the Kubernetes Services of namespace {read} were read")
            }
            ServicesKnown::Cluster { .. } => {
                format!("no ServiceEntry defines {h}, and the cluster has no such Kubernetes Service")
            }
            ServicesKnown::Files => {
                format!("no ServiceEntry defines {h}, and the files hold no such Kubernetes Service")
            }
            // None was read, so offline istioctl knows none either.
            ServicesKnown::Unknown => format!(
                "no ServiceEntry defines {h}, and no Kubernetes Service was read (offline, istioctl knows none either): add the Service to the files, or read the cluster's with --kubernetes"
            ),
        }
    }

    /// Every Gateway, oldest first.
    fn gateways_by_age(&self) -> Vec<&Gw<'a>> {
        let mut list: Vec<&Gw<'a>> = self.gateways.values().flat_map(|m| m.values()).collect();
        list.sort_by(|a, b| a.r.age_key().cmp(&b.r.age_key()));
        list
    }

    /// The registry services a resource (a ServiceEntry) contributed to.
    fn services_of(&self, r: &Resource) -> Vec<&'a Service> {
        let Some(&id) = self.source_ids.get(&r.origin) else {
            return Vec::new();
        };
        self.by_source.get(&id).cloned().unwrap_or_default()
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
    Gw { r, spec: g, hosts }
}

pub use crate::host::expand as expand_host;

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
