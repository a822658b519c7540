//! One immutable routing snapshot: the registry as this proxy's namespace sees it, a cluster
//! per visible service port, the DestinationRule policies that apply, and the outbound
//! policy. The proxy keeps the current snapshot in an `ArcSwap`; each request loads it when it
//! starts (a TCP or TLS connection, when it is routed) and keeps it until it ends, so a reload
//! never changes a request midway.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use std::path::PathBuf;

use meshentry_api::model::{
    ClientTlsMode, ClientTlsSettings, DestinationRule, LoadBalancerSettings, OutboundTrafficPolicyMode, SimpleLb,
    Subset, TrafficPolicy,
};
use meshentry_api::{Resource, Spec};
use meshentry_registry::hash::FxHashMap;
use meshentry_registry::scope::Selected;
use meshentry_registry::{Protocol, Registry, Resolution, Service, ServiceId, SidecarScope, View, select_sidecar};

use crate::base::config::{CredentialFiles, OutboundPolicy, ProxyConfig};
use crate::model::cluster::{Cluster, ClusterSpec};
use crate::model::gateway::Gateway;
use crate::model::key::ServiceKey;
use crate::model::lb::Policy;
use crate::model::names::NameTable;
use crate::model::tls::{Mode, Recipe, RecipeError, Sni};
use crate::model::vs::{CompileInput, MESH, RouteTables};

/// Everything the data path needs to route, frozen.
pub struct Snapshot {
    /// Increases by one on every successful reload.
    pub generation: u64,
    pub applied_at: SystemTime,
    /// What this proxy imports: the whole registry as its namespace sees it, or (under a
    /// Sidecar with egress hosts) only what the Sidecar imports ([`Registry::scoped`]).
    pub registry: Arc<Registry>,
    /// The Sidecar's scope (C9), when one applies to this sidecar proxy; `None` for a gateway,
    /// or when no Sidecar applies (Istio's default scope: everything the namespace sees).
    pub scope: Option<Arc<SidecarScope>>,
    pub namespace: Arc<str>,
    pub policy: OutboundPolicy,
    /// Where the policy came from: `--outbound-policy`, `Sidecar ns/name`, or the mesh default.
    pub policy_source: String,
    /// By the id of a service of `registry`: the slot of its first port's cluster (its
    /// other ports' follow in order), or `NO_SLOT` for a service no cluster is built for.
    /// A lookup is the service's id (from its address) and a scan of its few ports, where
    /// a hash table of every service port cost 3 MB at 10,000 ServiceEntries.
    first_slot: Box<[u32]>,
    /// A cluster per service port of `registry`. Most are built the first time a request is
    /// routed to them ([`Snapshot::cluster`]): at 10,000 ServiceEntries a sidecar holds 60,000
    /// service ports and uses a few, and building them all was half its memory. Those that
    /// carry more than their endpoints are built with the snapshot ([`Snapshot::eager`]).
    slots: Box<[Slot]>,
    /// DestinationRule subset clusters (D3, D4), keyed by service (its address), port and subset.
    /// Only VirtualService destinations name them, and those are resolved when the route
    /// tables are compiled, so the data path never looks here.
    subset_clusters: BTreeMap<(ServiceKey, u32, String), Arc<Cluster>>,
    /// The clusters built with the snapshot, by [`Cluster::id`] (0, 1, ...): those a
    /// DestinationRule or auto mTLS applies to (TLS, load balancer, subsets), and DNS ones
    /// (their names are resolved by the proxy, which keeps state for them). The others have
    /// ids from `eager.len()` on, by slot.
    eager: Vec<Arc<Cluster>>,
    /// The VirtualService routes (E1-E7) this proxy applies as a sidecar.
    pub routes: RouteTables,
    /// Gateway mode (`--gateway`): the Gateway this proxy runs as, with its listeners' routes
    /// (F1-F3); `None` for a sidecar, or when the Gateway does not exist.
    pub gateway: Option<Gateway>,
    /// What the transparent listener may find on each port (C3-C6).
    ports: FxHashMap<u32, PortInfo>,
    /// Configurations Istio would route wrongly, and what this proxy does instead.
    pub warnings: Vec<String>,
    /// What the DNS proxy answers itself (`--dns`); `None` when it is off.
    pub names: Option<Arc<NameTable>>,
}

/// The kinds of services a port number has, for the transparent listener: whether Istio would
/// build an HTTP route table, SNI filter chains or a catch-all TCP chain on `0.0.0.0:<port>`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PortInfo {
    /// An HTTP-family or unset-protocol service has this port (C3, C6).
    pub http: bool,
    /// A TLS or HTTPS service without a single-IP address has this port (C4, by SNI).
    pub sni: bool,
    /// How many services without addresses take TCP traffic to any destination on this port
    /// (C5): opaque TCP protocols and unset.
    pub tcp_wild: u32,
    /// The first of those declares its protocol (TCP, MONGO...), so no detection is needed.
    pub tcp_declared: bool,
}

/// Where one service port's cluster is, built or not.
struct Slot {
    service: ServiceId,
    port: u32,
    cluster: OnceLock<Arc<Cluster>>,
}

impl Snapshot {
    /// Builds the snapshot for `config`'s workload from valid `resources`.
    pub fn build(resources: &[&Resource], config: &ProxyConfig, generation: u64) -> Snapshot {
        let registry = Registry::build_with(
            resources.iter().copied(),
            &meshentry_registry::BuildOptions {
                cluster_domain: config.cluster_domain.clone(),
                // Istio's sidecars use auto-allocated addresses only when they answer DNS
                // with them.
                auto_allocate: config.dns.is_some() && config.ip_autoallocate,
                dns_capture: config.dns.is_some(),
            },
        );
        // A gateway uses Istio's default scope whatever the Sidecars say.
        let sidecar = match config.gateway {
            None => sidecar_of(resources, config),
            Some(_) => None,
        };
        let (policy, policy_source) = outbound_policy(sidecar.as_ref(), config);
        // The scoped registry replaces the full one here, so the full one (and every service
        // the Sidecar does not import) is dropped before anything is built from it.
        let (registry, scope) = match &sidecar {
            // No egress listeners is Istio's `*/*`: the namespace's whole view, as unscoped.
            Some(selected) if !selected.sidecar.egress.is_empty() => {
                let scope = SidecarScope::compute(&registry, resources, Some(selected), &config.namespace);
                (Arc::new(registry.scoped(&scope)), Some(Arc::new(scope)))
            }
            _ => (Arc::new(registry), None),
        };
        // The VirtualServices the scope does not import are not compiled (hostless delegates
        // come in through their roots).
        let imported: Vec<&Resource>;
        let resources: &[&Resource] = match &scope {
            Some(scope) => {
                imported = resources
                    .iter()
                    .copied()
                    .filter(|r| match &r.spec {
                        Spec::VirtualService(vs) if !vs.hosts.is_empty() => {
                            scope.imports_virtual_service(&format!("{}/{}", r.namespace, r.name()))
                        }
                        _ => true,
                    })
                    .collect();
                &imported
            }
            None => resources,
        };
        let rules = DestinationRules::collect(resources.iter().copied(), config);
        let namespace: Arc<str> = Arc::from(config.namespace.as_str());
        let mut first_slot = Vec::new();
        let mut slots = Vec::new();
        let mut subset_clusters = BTreeMap::new();
        let mut eager = Vec::new();
        let view = registry.view(&namespace);
        // Clusters for every service held, including those only VirtualServices route to.
        let held = registry.cluster_view(&namespace);
        for service in held.services() {
            let key = ServiceKey::of(service);
            let Some(id) = registry.id_of(service) else { continue };
            let rule = rules.lookup(service, &config.namespace);
            let subsets = rule.map_or(&[][..], |r| r.spec.subsets.as_slice());
            let resolved = matches!(service.resolution, Resolution::Dns | Resolution::DnsRoundRobin);
            if first_slot.len() <= id as usize {
                first_slot.resize(id as usize + 1, NO_SLOT);
            }
            first_slot[id as usize] = slots.len() as u32;
            for port in &service.ports {
                let slot = Slot {
                    service: id,
                    port: port.number,
                    cluster: OnceLock::new(),
                };
                let spec = rules.cluster_spec(service, port.number, config, None);
                // Anything but a plain cluster (ClusterSpec::plain) is built now, so that its
                // warnings, TLS files and DNS names are known with the snapshot.
                if rule.is_some() || spec.tls.is_some() || resolved {
                    let cluster = Arc::new(Cluster::build(eager.len(), service, port.number, spec));
                    eager.push(cluster.clone());
                    let _ = slot.cluster.set(cluster);
                }
                slots.push(slot);
                for subset in subsets {
                    let spec = rules.cluster_spec(service, port.number, config, Some(subset));
                    let cluster = Arc::new(Cluster::build(eager.len(), service, port.number, spec));
                    eager.push(cluster.clone());
                    subset_clusters.insert((key, port.number, subset.name.clone()), cluster);
                }
            }
        }
        let lazy = Lazy {
            registry: &registry,
            first_slot: &first_slot,
            slots: &slots,
            first_id: eager.len(),
        };
        let cluster_of = |service: &Service, port: u32, subset: Option<&str>| match subset {
            None => lazy.cluster(service, port).cloned(),
            Some(s) => subset_clusters
                .get(&(ServiceKey::of(service), port, s.to_string()))
                .cloned(),
        };
        let input = CompileInput {
            registry: &registry,
            view: held,
            namespace: &namespace,
            labels: &config.labels,
            gateway: config.gateway.as_deref().unwrap_or(MESH),
            cluster: &cluster_of,
        };
        let mut gateway_warnings = Vec::new();
        // A gateway proxy is no sidecar: only the VirtualServices bound to its Gateway apply,
        // through its listeners (F3).
        let (routes, gateway) = match &config.gateway {
            None => (RouteTables::compile(resources, &input), None),
            Some(name) => (
                RouteTables::default(),
                Gateway::build(resources, &input, name, config, &mut gateway_warnings),
            ),
        };
        let (ports, mut warnings) = port_table(&view);
        warnings.extend(routes.warnings.iter().cloned());
        warnings.extend(gateway_warnings);
        for cluster in &eager {
            if let Some(Err(reason)) = &cluster.tls {
                warnings.push(format!(
                    "{}: TLS origination is off, its connections fail: {reason}",
                    cluster.name
                ));
            }
            if let Some(Ok(recipe)) = &cluster.tls
                && recipe.insecure_skip_verify
            {
                warnings.push(format!(
                    "{}: insecureSkipVerify: the server certificate is not checked at all",
                    cluster.name
                ));
            }
        }
        warnings.sort();
        let names = config.dns.as_ref().map(|dns| {
            Arc::new(NameTable::build(
                &registry,
                &config.namespace,
                &dns.search,
                config.cluster_domain.as_str(),
            ))
        });
        Snapshot {
            generation,
            applied_at: SystemTime::now(),
            registry,
            scope,
            namespace,
            policy,
            policy_source,
            first_slot: first_slot.into_boxed_slice(),
            slots: slots.into_boxed_slice(),
            subset_clusters,
            eager,
            routes,
            gateway,
            ports,
            warnings,
            names,
        }
    }

    /// What port `port` holds for the transparent listener; `None` when no service of this
    /// proxy listens on it for any destination.
    pub fn port_info(&self, port: u32) -> Option<&PortInfo> {
        self.ports.get(&port)
    }

    /// Every port of the transparent listener's table, sorted, for admin output.
    pub fn ports(&self) -> Vec<(u32, &PortInfo)> {
        let mut all: Vec<(u32, &PortInfo)> = self.ports.iter().map(|(p, i)| (*p, i)).collect();
        all.sort_by_key(|(p, _)| *p);
        all
    }

    /// Whose view of the registry this is, for refusals: `namespace NS`, and the Sidecar
    /// whose egress hosts scope it.
    pub fn seen_by(&self) -> String {
        match &self.scope {
            Some(scope) => format!("namespace {} through {}'s egress hosts", self.namespace, scope.source()),
            None => format!("namespace {}", self.namespace),
        }
    }

    /// The registry as this proxy sees it.
    pub fn view(&self) -> View<'_, '_> {
        self.registry.view(&self.namespace)
    }

    /// The cluster of `port` of `service`, a service of this snapshot's registry; built now if
    /// this is the first request routed to it (once: other threads asking meanwhile wait for
    /// it, and every later call is one atomic load).
    pub fn cluster(&self, service: &Service, port: u32) -> Option<&Arc<Cluster>> {
        self.lazy().cluster(service, port)
    }

    fn lazy(&self) -> Lazy<'_> {
        Lazy {
            registry: &self.registry,
            first_slot: &self.first_slot,
            slots: &self.slots,
            first_id: self.eager.len(),
        }
    }

    /// The cluster of DestinationRule subset `subset` of `port` of `service`.
    pub fn subset_cluster(&self, service: &Service, port: u32, subset: &str) -> Option<&Arc<Cluster>> {
        self.subset_clusters
            .get(&(ServiceKey::of(service), port, subset.to_string()))
    }

    /// The clusters built with the snapshot, in [`Cluster::id`] order: every one with TLS
    /// origination or DNS names (the rest are plain endpoint lists, built when first used).
    pub fn eager(&self) -> &[Arc<Cluster>] {
        &self.eager
    }

    /// Whether `port` of `service` has a cluster, without building it.
    pub fn has_cluster(&self, service: &Service, port: u32) -> bool {
        self.lazy().slot(service, port).is_some()
    }

    /// Every cluster (subsets included), sorted by name, for admin output. One that no request
    /// has used yet is built for `f` alone and dropped after, so listing them all never holds
    /// them all: `f` sees its configuration and zero counters.
    pub fn each_cluster(&self, mut f: impl FnMut(&Arc<Cluster>)) {
        enum Entry<'s> {
            Slot(usize),
            Built(&'s Arc<Cluster>),
        }
        let mut all: Vec<(String, Entry<'_>)> = Vec::with_capacity(self.slots.len() + self.subset_clusters.len());
        for (i, slot) in self.slots.iter().enumerate() {
            let name = match (slot.cluster.get(), self.registry.service(slot.service)) {
                (Some(c), _) => c.name.clone(),
                (None, Some(service)) => crate::model::cluster::name(slot.port, "", &service.host),
                (None, None) => continue,
            };
            all.push((name, Entry::Slot(i)));
        }
        all.extend(self.subset_clusters.values().map(|c| (c.name.clone(), Entry::Built(c))));
        all.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, entry) in all {
            match entry {
                Entry::Built(c) => f(c),
                Entry::Slot(i) => {
                    let slot = &self.slots[i];
                    match slot.cluster.get() {
                        Some(c) => f(c),
                        None => {
                            let Some(service) = self.registry.service(slot.service) else {
                                continue;
                            };
                            let id = self.eager.len() + i;
                            f(&Arc::new(Cluster::detached(
                                id,
                                service,
                                slot.port,
                                ClusterSpec::plain(),
                            )));
                        }
                    }
                }
            }
        }
    }

    /// Every cluster's name (subsets included), sorted, with the cluster when it is built
    /// (a cluster not built has served nothing: its counters are zero).
    pub fn cluster_names(&self) -> Vec<(String, Option<&Arc<Cluster>>)> {
        let mut all: Vec<(String, Option<&Arc<Cluster>>)> = self
            .slots
            .iter()
            .filter_map(|slot| match slot.cluster.get() {
                Some(c) => Some((c.name.clone(), Some(c))),
                None => {
                    let service = self.registry.service(slot.service)?;
                    Some((crate::model::cluster::name(slot.port, "", &service.host), None))
                }
            })
            .chain(self.subset_clusters.values().map(|c| (c.name.clone(), Some(c))))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Every cluster (subsets included), sorted by name ([`Snapshot::each_cluster`], collected).
    pub fn clusters(&self) -> Vec<Arc<Cluster>> {
        let mut all = Vec::new();
        self.each_cluster(|c| all.push(c.clone()));
        all
    }
}

/// The service-port clusters of a snapshot (or of one being built), and how to build one on
/// first use.
struct Lazy<'s> {
    registry: &'s Registry,
    first_slot: &'s [u32],
    slots: &'s [Slot],
    first_id: usize,
}

/// In `first_slot`: the service has no clusters in this snapshot.
const NO_SLOT: u32 = u32::MAX;

impl<'s> Lazy<'s> {
    /// The slot of `port` of `service`, if it has a cluster.
    fn slot(&self, service: &Service, port: u32) -> Option<u32> {
        let first = *self.first_slot.get(self.registry.id_of(service)? as usize)?;
        if first == NO_SLOT {
            return None;
        }
        // The last port of that number, as a table keyed by port number would keep.
        let at = service.ports.iter().rposition(|p| p.number == port)?;
        Some(first + at as u32)
    }

    fn cluster(&self, service: &Service, port: u32) -> Option<&'s Arc<Cluster>> {
        let i = self.slot(service, port)?;
        let slot = self.slots.get(i as usize)?;
        Some(slot.cluster.get_or_init(|| {
            Arc::new(Cluster::build(
                self.first_id + i as usize,
                service,
                port,
                ClusterSpec::plain(),
            ))
        }))
    }
}

/// The per-port table, and warnings for the two setups Istio routes wrongly on a shared port.
fn port_table(view: &View<'_, '_>) -> (FxHashMap<u32, PortInfo>, Vec<String>) {
    let mut ports: FxHashMap<u32, PortInfo> = FxHashMap::default();
    let mut wild: FxHashMap<u32, Vec<&Service>> = FxHashMap::default();
    let mut warnings = Vec::new();
    for service in view.services() {
        let no_ip = service
            .addresses
            .iter()
            .all(|a| a.is_cidr() || a.net.addr().is_unspecified());
        let no_address = service.addresses.iter().all(|a| a.net.addr().is_unspecified());
        for port in &service.ports {
            let info = ports.entry(port.number).or_default();
            let p = port.protocol;
            if p.is_http() || p == Protocol::Unset {
                info.http = true;
            }
            if p.is_tls() && no_ip {
                info.sni = true;
            }
            if p.is_opaque_tcp() && no_address {
                wild.entry(port.number).or_default().push(service);
            }
            if p.is_http() && port.number == 443 {
                warnings.push(format!(
                    "{} port 443 is declared {p}: clients usually speak TLS there, which Istio would fail; meshentry forwards a TLS client as TLS (routed by SNI)",
                    service.host
                ));
            }
        }
    }
    for (number, mut services) in wild {
        services.sort_by_key(|s| s.preference(view.namespace()));
        let info = ports.entry(number).or_default();
        info.tcp_wild = services.len() as u32;
        info.tcp_declared = services
            .first()
            .and_then(|s| s.port(number))
            .is_some_and(|p| p.protocol != Protocol::Unset);
        if services.len() > 1 {
            let names: Vec<&str> = services.iter().map(|s| &*s.host).collect();
            warnings.push(format!(
                "port {number}: {} services without addresses take TCP traffic to any destination ({}); Istio sends all of it to {}; meshentry sends each connection to the one whose endpoints include its destination IP, else to {}",
                services.len(),
                names.join(", "),
                names[0],
                names[0]
            ));
        }
    }
    ports.retain(|_, i| i.http || i.sni || i.tcp_wild > 0);
    warnings.sort();
    (ports, warnings)
}

/// D1/D2: the DestinationRule that applies to `service` for `config`'s workload, as
/// [`Snapshot::build`] finds it, for `meshentry explain`.
pub fn destination_rule<'a>(
    resources: &[&'a Resource],
    service: &Service,
    config: &ProxyConfig,
) -> Option<&'a Resource> {
    DestinationRules::collect(resources.iter().copied(), config)
        .lookup(service, &config.namespace)
        .map(|r| r.resource)
}

/// The Sidecar that applies to `config`'s workload (C9): the one selecting it by labels, else
/// its namespace's selector-less one, else the root namespace's.
pub fn sidecar_of<'a>(resources: &[&'a Resource], config: &ProxyConfig) -> Option<Selected<'a>> {
    select_sidecar(resources, &config.namespace, &config.labels, &config.root_namespace)
}

/// D1: the outbound policy of this workload: the flag, else the Sidecar that applies to it
/// ([`sidecar_of`]), else the mesh default (MeshConfig's, ALLOW_ANY unless set). A Sidecar's `outboundTrafficPolicy: {}`
/// means REGISTRY_ONLY (C8).
fn outbound_policy(sidecar: Option<&Selected<'_>>, config: &ProxyConfig) -> (OutboundPolicy, String) {
    if let Some(p) = config.policy_override {
        return (p, "--outbound-policy".into());
    }
    match sidecar.map(|s| (s.resource, s.sidecar)) {
        Some((r, s)) => match &s.outbound_traffic_policy {
            Some(p) => {
                let mode = match p.mode {
                    OutboundTrafficPolicyMode::RegistryOnly => OutboundPolicy::RegistryOnly,
                    OutboundTrafficPolicyMode::AllowAny => OutboundPolicy::AllowAny,
                };
                (mode, format!("Sidecar {}/{}", r.namespace, r.name()))
            }
            None => (config.mesh_policy, config.mesh_policy_source.clone()),
        },
        None => (config.mesh_policy, config.mesh_policy_source.clone()),
    }
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A DestinationRule, with its host expanded (D1).
struct Rule<'a> {
    resource: &'a Resource,
    host: String,
    spec: &'a DestinationRule,
}

/// The DestinationRules that can apply to this workload, by namespace.
struct DestinationRules<'a> {
    rules: Vec<Rule<'a>>,
    root_namespace: String,
}

impl<'a> DestinationRules<'a> {
    fn collect(resources: impl IntoIterator<Item = &'a Resource>, config: &ProxyConfig) -> Self {
        let mut rules: Vec<Rule<'a>> = resources
            .into_iter()
            .filter(|r| r.valid)
            .filter_map(|r| match &r.spec {
                Spec::DestinationRule(dr) => Some((r, dr)),
                _ => None,
            })
            // D2: a rule with a workload selector applies only to the workloads it selects.
            .filter(|(r, dr)| match &dr.workload_selector {
                Some(sel) => r.namespace == config.namespace && labels_match(&sel.match_labels, &config.labels),
                None => true,
            })
            .map(|(r, dr)| Rule {
                resource: r,
                host: meshentry_registry::host::expand_in(&dr.host, &r.namespace, &config.cluster_domain),
                spec: dr,
            })
            .collect();
        // D2: oldest first, so the first match in a namespace is the policy that is kept.
        rules.sort_by(|a, b| a.resource.age_key().cmp(&b.resource.age_key()));
        Self {
            rules,
            root_namespace: config.root_namespace.clone(),
        }
    }

    /// D1: the rule for `service` seen from `proxy_ns`: the proxy's namespace, then the
    /// service's (if exported to the proxy), then the root namespace's; the most specific host
    /// match within the first namespace that has one.
    fn lookup(&self, service: &Service, proxy_ns: &str) -> Option<&Rule<'a>> {
        let steps = [proxy_ns, &*service.namespace, self.root_namespace.as_str()];
        for (i, ns) in steps.iter().enumerate() {
            if i > 0 && steps[..i].contains(ns) {
                continue;
            }
            let mut best: Option<(&Rule<'a>, usize)> = None;
            for rule in self.rules.iter().filter(|r| r.resource.namespace == *ns) {
                if !exported_to(&rule.spec.export_to, &rule.resource.namespace, proxy_ns) {
                    continue;
                }
                let Some(specificity) = host_specificity(&rule.host, &service.host) else {
                    continue;
                };
                if best.is_none_or(|(_, s)| specificity > s) {
                    best = Some((rule, specificity));
                }
            }
            if let Some((rule, _)) = best {
                return Some(rule);
            }
        }
        None
    }

    /// D3/D5/D6: the load balancer and TLS of `port` (and `subset`): a portLevelSettings
    /// entry for the port replaces the top-level settings, and the subset's own policy then
    /// overrides them field by field.
    fn cluster_spec(&self, service: &Service, port: u32, config: &ProxyConfig, subset: Option<&Subset>) -> ClusterSpec {
        let rule = self.lookup(service, &config.namespace);
        let (mut lb, mut tls) = match rule.and_then(|r| r.spec.traffic_policy.as_ref()) {
            Some(tp) => port_policy(tp, port),
            None => (None, None),
        };
        if let Some(tp) = subset.and_then(|s| s.traffic_policy.as_ref()) {
            let (sub_lb, sub_tls) = port_policy(tp, port);
            lb = sub_lb.or(lb);
            tls = sub_tls.or(tls);
        }
        let subset_name = subset.map(|s| s.name.as_str());
        let (policy, passthrough) = match lb.and_then(|lb| lb.simple) {
            Some(SimpleLb::RoundRobin) => (Policy::RoundRobin, false),
            Some(SimpleLb::Random) => (Policy::Random, false),
            Some(SimpleLb::Passthrough) => (Policy::LeastRequest, true),
            Some(SimpleLb::LeastRequest | SimpleLb::LeastConn | SimpleLb::Unspecified) | None => {
                (Policy::LeastRequest, false)
            }
        };
        // C10: with no rule saying otherwise, a mesh-internal service whose endpoints all run
        // a sidecar (tlsMode istio) gets mutual TLS with the mesh identity, when this proxy has
        // one (Istio's auto mTLS).
        let auto = ClientTlsSettings {
            mode: ClientTlsMode::IstioMutual,
            ..ClientTlsSettings::default()
        };
        let tls = tls.or_else(|| auto_mtls(service, port, config).then_some(&auto));
        let tls = tls.and_then(|t| {
            let who = rule.map_or_else(
                || "auto mTLS".to_string(),
                |r| format!("DestinationRule {}/{}", r.resource.namespace, r.resource.name()),
            );
            tls_recipe(t, service, port, subset_name, config, &who)
                .map(|recipe| recipe.map(Ok))
                .unwrap_or_else(|reason| Some(Err(reason)))
        });
        ClusterSpec {
            policy,
            passthrough,
            tls,
            subset: subset.map(|s| (s.name.clone(), s.labels.clone())),
        }
    }
}

/// C10: Istio's auto mTLS applies to `port` of `service`: mesh-internal, every endpoint with a
/// sidecar (`tlsMode: istio`), and this proxy has a mesh identity to present.
fn auto_mtls(service: &Service, port: u32, config: &ProxyConfig) -> bool {
    let Some(p) = service.port(port) else { return false };
    let mut endpoints = service.endpoints_for(p).peekable();
    config.auto_mtls
        && config.identity.is_some()
        && service.location == meshentry_registry::Location::MeshInternal
        && endpoints.peek().is_some()
        && endpoints.all(|e| e.workload.tls_mode == meshentry_registry::model::TlsMode::Istio)
}

/// D3: a portLevelSettings entry for `port` replaces the top level's load balancer and TLS
/// (what it omits is unset, not inherited).
pub fn port_policy(tp: &TrafficPolicy, port: u32) -> (Option<&LoadBalancerSettings>, Option<&ClientTlsSettings>) {
    match tp
        .port_level_settings
        .iter()
        .find(|p| p.port.as_ref().is_some_and(|s| s.number == port))
    {
        Some(level) => (level.load_balancer.as_deref(), level.tls.as_ref()),
        None => (tp.load_balancer.as_deref(), tp.tls.as_ref()),
    }
}

/// D6-D8: how to originate TLS for `port` (and `subset`) of `service` under `settings`.
/// `Ok(None)`: plaintext. `Err`: TLS is asked for but cannot be done; the reason says why.
pub fn tls_recipe(
    settings: &ClientTlsSettings,
    service: &Service,
    port: u32,
    subset: Option<&str>,
    config: &ProxyConfig,
    who: &str,
) -> Result<Option<Recipe>, RecipeError> {
    let mode = match settings.mode {
        ClientTlsMode::Disable => return Ok(None),
        ClientTlsMode::Simple => Mode::Simple,
        ClientTlsMode::Mutual => Mode::Mutual,
        ClientTlsMode::IstioMutual => Mode::IstioMutual,
    };
    let path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
    let alpn = match service.port(port).map(|p| p.protocol) {
        Some(Protocol::Http2 | Protocol::Grpc) => vec![b"h2".to_vec()],
        Some(p) if p.is_http() => vec![b"http/1.1".to_vec()],
        _ => Vec::new(),
    };
    // D8: the rule's names, else the ServiceEntry's.
    let mut sans = if settings.subject_alt_names.is_empty() {
        service.subject_alt_names.to_vec()
    } else {
        settings.subject_alt_names.clone()
    };
    let sni = match settings.sni.as_str() {
        "" if mode == Mode::IstioMutual => {
            Sni::Fixed(format!("outbound_.{port}_.{}_.{}", subset.unwrap_or(""), service.host))
        }
        "" => Sni::Auto,
        s => Sni::Fixed(s.to_string()),
    };
    let insecure_skip_verify = settings.insecure_skip_verify == Some(true);
    let recipe = match mode {
        Mode::Simple | Mode::Mutual => {
            // Istio: the secret (in the proxy's namespace) holds the client certificate and
            // key for MUTUAL, and the CA the server must chain to (its own ca.crt, or the
            // NAME-cacert secret's, merged into ca.crt when the secrets are written).
            let credential = match (settings.credential_name.as_str(), &config.credentials) {
                ("", _) => None,
                (name, None) => {
                    return Err(RecipeError::CredentialName {
                        who: who.to_string(),
                        name: name.to_string(),
                    });
                }
                (name, Some(dir)) => {
                    Some(
                        CredentialFiles::of(dir, name).ok_or_else(|| RecipeError::BadCredentialName {
                            who: who.to_string(),
                            name: name.to_string(),
                        })?,
                    )
                }
            };
            // D6: only MUTUAL presents a client certificate. Istio's SIMPLE ignores
            // clientCertificate and privateKey (`constructUpstreamTLS` reads them only when
            // mutual), and `validate` warns that they are ignored.
            let client_cert = match (
                mode,
                &credential,
                path(&settings.client_certificate),
                path(&settings.private_key),
            ) {
                (Mode::Simple, ..) => None,
                (_, Some(c), _, _) => Some((c.cert.clone(), c.key.clone())),
                (_, None, Some(c), Some(k)) => Some((c, k)),
                _ => {
                    return Err(RecipeError::HalfClientCertificate { who: who.to_string() });
                }
            };
            let ca = match &credential {
                Some(c) => Some(c.ca.clone()),
                None => path(&settings.ca_certificates),
            };
            Recipe {
                source: who.to_string(),
                mode,
                client_cert,
                ca,
                subject_alt_names: sans,
                insecure_skip_verify,
                sni,
                alpn,
            }
        }
        Mode::IstioMutual => {
            let Some(id) = &config.identity else {
                return Err(RecipeError::NoIdentity { who: who.to_string() });
            };
            if settings.subject_alt_names.is_empty() {
                // D8: ISTIO_MUTUAL also accepts the endpoints' own identities.
                for ep in &service.endpoints {
                    if let Some(id) = ep.workload.spiffe_id(&config.trust_domain, &service.namespace)
                        && !sans.contains(&id)
                    {
                        sans.push(id);
                    }
                }
            }
            Recipe {
                source: who.to_string(),
                mode,
                client_cert: Some((id.cert.clone(), id.key.clone())),
                ca: Some(id.ca.clone()),
                subject_alt_names: sans,
                insecure_skip_verify,
                sni,
                alpn,
            }
        }
    };
    Ok(Some(recipe))
}

/// How specifically `rule_host` names `service_host`: `None` when it does not cover it; an
/// exact match beats every wildcard, and a longer wildcard beats a shorter one.
fn host_specificity(rule_host: &str, service_host: &str) -> Option<usize> {
    let service_host = service_host.to_ascii_lowercase();
    if rule_host == service_host {
        return Some(usize::MAX);
    }
    if rule_host == "*" {
        return Some(0);
    }
    let suffix = rule_host.strip_prefix('*')?;
    // `*.a.com` covers `b.a.com`; a wildcard service host is covered by a wider wildcard.
    let covered = match service_host.strip_prefix('*') {
        Some(svc_suffix) => svc_suffix.ends_with(suffix) && svc_suffix.len() >= suffix.len(),
        None => service_host.ends_with(suffix) && service_host.len() > suffix.len(),
    };
    covered.then_some(suffix.len())
}

/// B9 applied to DestinationRules: exportTo absent = `*`.
fn exported_to(export_to: &[String], own: &str, proxy_ns: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == proxy_ns || (e == "." && own == proxy_ns))
}

/// A snapshot of `yaml` (which must be valid) for unit tests.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{doc, snapshot as build, static_se};

    #[test]
    fn destination_rule_hosts() {
        assert_eq!(
            meshentry_registry::host::expand("reviews", "bookinfo"),
            "reviews.bookinfo.svc.cluster.local"
        );
        assert_eq!(host_specificity("a.com", "a.com"), Some(usize::MAX));
        assert_eq!(host_specificity("*.a.com", "b.a.com"), Some(6));
        assert_eq!(host_specificity("*.a.com", "a.com"), None);
        assert_eq!(host_specificity("*", "x.y"), Some(0));
        assert_eq!(host_specificity("*.com", "*.a.com"), Some(4));
        assert!(host_specificity("*.a.com", "b.a.com") > host_specificity("*.com", "b.a.com"));
    }

    /// A configuration with a mesh identity (ISTIO_MUTUAL, auto mTLS); the files live as long
    /// as the returned directory.
    fn with_identity() -> (ProxyConfig, meshentry_testutil::PemDir) {
        let ca = meshentry_testutil::TestCa::new("mesh");
        let leaf = ca.issue(meshentry_testutil::LeafSpec::client(
            "spiffe://cluster.local/ns/default/sa/me",
        ));
        let pem = meshentry_testutil::PemDir::new();
        let paths = pem.leaf(&leaf, "me");
        let config = ProxyConfig {
            identity: Some(crate::base::config::IdentityFiles {
                cert: paths.cert,
                key: paths.key,
                ca: pem.ca(&ca),
            }),
            ..ProxyConfig::default()
        };
        (config, pem)
    }

    /// What a cluster is, for comparing one built on first use with one built with the
    /// snapshot: its name, discovery, policy, TLS and hosts with their weights.
    fn describe(c: &Cluster) -> String {
        let hosts: Vec<String> = c
            .static_hosts()
            .map(|set| {
                set.hosts
                    .iter()
                    .map(|h| format!("{}*{}", h.addr, h.load.weight))
                    .collect()
            })
            .unwrap_or_default();
        format!(
            "{} {} {:?} tls={} {}",
            c.name,
            c.kind_name(),
            c.policy,
            c.tls.is_some(),
            hosts.join(",")
        )
    }

    #[test]
    fn plain_clusters_are_built_on_first_use_as_they_would_have_been_with_the_snapshot() {
        let yaml = [
            // Plain: built on first use.
            doc(
                "ServiceEntry",
                "name: plain, namespace: default",
                "hosts: [plain.test], ports: [{number: 80, name: http, protocol: HTTP}, {number: 9000, name: tcp, protocol: TCP, targetPort: 9100}], \
                 resolution: STATIC, endpoints: [{address: 10.0.0.1, weight: 2}, {address: 10.0.0.2, ports: {http: 8080}}]",
            ),
            static_se("name: passthrough, namespace: default", "hosts: [none.test], ports: [{number: 81, name: http, protocol: HTTP}]", "10.0.0.3")
                .replace("resolution: STATIC, endpoints: [{address: 10.0.0.3}]", "resolution: NONE"),
            // A DestinationRule, and DNS: built with the snapshot.
            static_se("name: ruled, namespace: default", "hosts: [ruled.test], ports: [{number: 80, name: http, protocol: HTTP}]", "10.0.0.4"),
            doc("DestinationRule", "name: ruled, namespace: default", "host: ruled.test, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}"),
            doc(
                "ServiceEntry",
                "name: dns, namespace: default",
                "hosts: [dns.test], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS",
            ),
        ]
        .concat();
        let snap = build(&yaml, &ProxyConfig::default());
        let eager: Vec<&str> = snap.eager().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(eager, ["outbound|80||dns.test", "outbound|80||ruled.test"]);
        let built = |snap: &Snapshot| snap.cluster_names().iter().filter(|(_, c)| c.is_some()).count();
        assert_eq!(built(&snap), 2);
        // Listing every cluster for admin builds none of the others.
        let listed: Vec<String> = snap.clusters().iter().map(|c| describe(c)).collect();
        assert_eq!(listed.len(), 5);
        assert_eq!(built(&snap), 2);

        let mut ids = std::collections::BTreeSet::new();
        for service in snap.registry.services() {
            for port in &service.ports {
                let lazy = snap.cluster(service, port.number).unwrap();
                // The same Arc every time: built once.
                assert!(Arc::ptr_eq(lazy, snap.cluster(service, port.number).unwrap()));
                assert!(ids.insert(lazy.id), "cluster ids are unique: {}", lazy.name);
                // As the admin listing showed it before it was built, and as a snapshot
                // building every cluster up front would (the rules' own spec for the port).
                assert!(listed.contains(&describe(lazy)), "{} not in {listed:?}", describe(lazy));
                let loaded = meshentry_api::load_str("t.yaml", &yaml, &meshentry_api::LoadOptions::default());
                let valid: Vec<_> = loaded.valid().collect();
                let rules = DestinationRules::collect(valid.iter().copied(), &ProxyConfig::default());
                let spec = rules.cluster_spec(service, port.number, &ProxyConfig::default(), None);
                assert_eq!(
                    describe(lazy),
                    describe(&Cluster::detached(0, service, port.number, spec))
                );
            }
        }
        assert_eq!(built(&snap), 5);
        assert_eq!(ids.len(), 5);
        // A built cluster's traffic has its service's labels; a listed-only one is never counted.
        let plain = snap
            .clusters()
            .into_iter()
            .find(|c| c.name == "outbound|80||plain.test")
            .unwrap();
        assert_ne!(plain.dest, crate::model::dest::DestId::UNKNOWN);
    }

    fn tls_of(snap: &Snapshot, name: &str) -> Result<Option<Recipe>, String> {
        let c = snap.clusters().into_iter().find(|c| c.name == name).unwrap();
        match &c.tls {
            None => Ok(None),
            Some(Ok(r)) => Ok(Some(r.clone())),
            Some(Err(e)) => Err(e.to_string()),
        }
    }

    fn se() -> String {
        doc(
            "ServiceEntry",
            "name: db, namespace: default",
            concat!(
                "hosts: [db.example.com], ports: [{number: 80, name: http, protocol: HTTP}, {number: 5432, name: pg, protocol: TCP}], ",
                r#"resolution: STATIC, subjectAltNames: ["spiffe://cluster.local/ns/db/sa/db"], "#,
                "endpoints: [{address: 10.0.0.1, serviceAccount: pg}]",
            ),
        )
    }

    /// The DestinationRule `default/db` for db.example.com with `policy`.
    fn db_rule(policy: &str) -> String {
        doc(
            "DestinationRule",
            "name: db, namespace: default",
            &format!("host: db.example.com, trafficPolicy: {{{policy}}}"),
        )
    }

    #[test]
    fn destination_rule_tls_per_port() {
        let dr = db_rule(
            "tls: {mode: SIMPLE, caCertificates: /etc/ca.pem}, \
             portLevelSettings: [{port: {number: 5432}, loadBalancer: {simple: ROUND_ROBIN}}]",
        );
        let snap = build(&(se() + &dr), &ProxyConfig::default());
        // The files are the proxy's to load (a missing one is its error: `live` tests it).
        let http = tls_of(&snap, "outbound|80||db.example.com").unwrap().unwrap();
        assert_eq!(http.source, "DestinationRule default/db");
        assert_eq!(http.ca.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
        // The port-level entry replaces the top level: no TLS on 5432.
        assert_eq!(tls_of(&snap, "outbound|5432||db.example.com"), Ok(None));
    }

    #[test]
    fn istio_mutual_sni_and_names() {
        let yaml = se() + &db_rule("tls: {mode: ISTIO_MUTUAL}");
        let snap = build(&yaml, &ProxyConfig::default());
        let err = tls_of(&snap, "outbound|80||db.example.com").unwrap_err();
        assert!(err.contains("--cert"), "{err}");

        let (config, _pem) = with_identity();
        let snap = build(&yaml, &config);
        let r = tls_of(&snap, "outbound|5432||db.example.com").unwrap().unwrap();
        assert_eq!(r.mode, Mode::IstioMutual);
        assert_eq!(r.sni, Sni::Fixed("outbound_.5432_._.db.example.com".into()));
        // The ServiceEntry's names, then the endpoints' own identities (D8).
        assert_eq!(
            r.subject_alt_names,
            [
                "spiffe://cluster.local/ns/db/sa/db",
                "spiffe://cluster.local/ns/default/sa/pg"
            ]
        );
        assert!(r.alpn.is_empty());
        let r = tls_of(&snap, "outbound|80||db.example.com").unwrap().unwrap();
        assert_eq!(r.alpn, [b"http/1.1".to_vec()]);
    }

    #[test]
    fn mesh_internal_sidecar_endpoints_get_auto_mtls() {
        let (with_id, _pem) = with_identity();
        let internal = se().replace("resolution: STATIC", "resolution: STATIC, location: MESH_INTERNAL");
        let snap = build(&internal, &with_id);
        let r = tls_of(&snap, "outbound|5432||db.example.com").unwrap().unwrap();
        assert_eq!(r.mode, Mode::IstioMutual);
        // No identity to present, or an external service: plaintext, as Istio's auto mTLS.
        assert_eq!(
            tls_of(
                &build(&internal, &ProxyConfig::default()),
                "outbound|5432||db.example.com"
            ),
            Ok(None)
        );
        assert_eq!(
            tls_of(&build(&se(), &with_id), "outbound|5432||db.example.com"),
            Ok(None)
        );
        // An endpoint without a sidecar turns it off for the port.
        let mixed = internal.replace(
            "endpoints: [{address: 10.0.0.1, serviceAccount: pg}]",
            "endpoints: [{address: 10.0.0.1, serviceAccount: pg}, {address: 10.0.0.2}]",
        );
        assert_ne!(mixed, internal);
        assert_eq!(
            tls_of(&build(&mixed, &with_id), "outbound|5432||db.example.com"),
            Ok(None)
        );
        // A rule that says DISABLE wins.
        let dr = db_rule("tls: {mode: DISABLE}");
        assert_eq!(
            tls_of(&build(&(internal + &dr), &with_id), "outbound|5432||db.example.com"),
            Ok(None)
        );
    }

    #[test]
    fn subsets_filter_endpoints_and_override_the_policy_per_field() {
        let yaml = [
            doc(
                "ServiceEntry",
                "name: web, namespace: default",
                concat!(
                    "hosts: [web.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC, ",
                    "endpoints: [{address: 10.0.0.1, labels: {version: v1}}, {address: 10.0.0.2, labels: {version: v2}}, ",
                    "{address: 10.0.0.3, labels: {version: v2, zone: a}}]",
                ),
            ),
            doc(
                "DestinationRule",
                "name: web, namespace: default",
                concat!(
                    "host: web.example.com, trafficPolicy: {loadBalancer: {simple: RANDOM}, tls: {mode: ISTIO_MUTUAL}}, ",
                    "subsets: [{name: v1, labels: {version: v1}}, ",
                    "{name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}]",
                ),
            ),
        ];
        let (config, _pem) = with_identity();
        let snap = build(&yaml.concat(), &config);
        let cluster = |name: &str| snap.clusters().into_iter().find(|c| c.name == name).unwrap().clone();
        let hosts = |name: &str| {
            let mut h: Vec<String> = cluster(name)
                .static_hosts()
                .unwrap()
                .hosts
                .iter()
                .map(|h| h.addr.to_string())
                .collect();
            h.sort();
            h
        };
        assert_eq!(hosts("outbound|80||web.example.com").len(), 3);
        assert_eq!(hosts("outbound|80|v1|web.example.com"), ["10.0.0.1:80"]);
        assert_eq!(hosts("outbound|80|v2|web.example.com"), ["10.0.0.2:80", "10.0.0.3:80"]);
        // D3: the subset's load balancer replaces the top level's; its TLS is inherited, and
        // ISTIO_MUTUAL names the subset in the SNI (D7).
        assert_eq!(cluster("outbound|80|v1|web.example.com").policy, Policy::Random);
        assert_eq!(cluster("outbound|80|v2|web.example.com").policy, Policy::RoundRobin);
        let r = tls_of(&snap, "outbound|80|v2|web.example.com").unwrap().unwrap();
        assert_eq!(r.sni, Sni::Fixed("outbound_.80_.v2_.web.example.com".into()));
    }

    /// D6: Istio's SIMPLE never presents a client certificate, whatever clientCertificate and
    /// privateKey say (even one without the other); MUTUAL presents them.
    #[test]
    fn only_mutual_presents_the_rules_client_certificate() {
        let p = std::path::Path::new;
        let recipe = |tls: &str| {
            let snap = build(&(se() + &db_rule(&format!("tls: {{{tls}}}"))), &ProxyConfig::default());
            tls_of(&snap, "outbound|80||db.example.com")
        };
        for tls in [
            "mode: SIMPLE, clientCertificate: /c.pem, privateKey: /k.pem",
            "mode: SIMPLE, clientCertificate: /c.pem",
            "mode: SIMPLE, privateKey: /k.pem",
        ] {
            let r = recipe(tls).unwrap().unwrap();
            assert_eq!((r.mode, r.client_cert), (Mode::Simple, None), "{tls}");
        }
        let r = recipe("mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem")
            .unwrap()
            .unwrap();
        assert_eq!(r.client_cert, Some((p("/c.pem").into(), p("/k.pem").into())));
    }

    #[test]
    fn credential_name_is_refused_clearly() {
        let dr = db_rule("tls: {mode: SIMPLE, credentialName: db-secret}");
        let snap = build(&(se() + &dr), &ProxyConfig::default());
        let err = tls_of(&snap, "outbound|80||db.example.com").unwrap_err();
        assert!(
            err.contains("credentialName \"db-secret\"") && err.contains("--kubernetes-secrets"),
            "{err}"
        );
    }

    #[test]
    fn credential_name_reads_the_secrets_files_when_the_proxy_keeps_secrets() {
        let config = ProxyConfig {
            credentials: Some("/run/s".into()),
            ..ProxyConfig::default()
        };
        let p = std::path::Path::new;
        let snap = build(
            &(se() + &db_rule("tls: {mode: SIMPLE, credentialName: db-secret}")),
            &config,
        );
        let r = tls_of(&snap, "outbound|80||db.example.com").unwrap().unwrap();
        assert_eq!(r.client_cert, None, "SIMPLE sends no client certificate");
        assert_eq!(r.ca.as_deref(), Some(p("/run/s/db-secret/ca.crt")));
        let snap = build(
            &(se() + &db_rule("tls: {mode: MUTUAL, credentialName: db-secret}")),
            &config,
        );
        let r = tls_of(&snap, "outbound|80||db.example.com").unwrap().unwrap();
        assert_eq!(
            r.client_cert,
            Some((
                p("/run/s/db-secret/tls.crt").into(),
                p("/run/s/db-secret/tls.key").into()
            ))
        );
        assert_eq!(r.ca.as_deref(), Some(p("/run/s/db-secret/ca.crt")));
        let snap = build(
            &(se() + &db_rule("tls: {mode: MUTUAL, credentialName: ../../etc}")),
            &config,
        );
        let err = tls_of(&snap, "outbound|80||db.example.com").unwrap_err();
        assert!(err.contains("not a Kubernetes Secret name"), "{err}");
    }

    /// ServiceEntries in two namespaces, a namespace-wide Sidecar in `default` importing its
    /// own namespace, and one for `app: web` importing `other`.
    fn scoped() -> String {
        [
            static_se(
                "name: mine, namespace: default",
                "hosts: [mine.example.com], ports: [{number: 80, name: http, protocol: HTTP}, {number: 9080, name: alt, protocol: HTTP}]",
                "127.0.0.1",
            ),
            static_se(
                "name: theirs, namespace: other",
                "hosts: [theirs.example.com], ports: [{number: 80, name: http, protocol: HTTP}, {number: 5432, name: pg, protocol: TCP}]",
                "127.0.0.2",
            ),
            doc(
                "Sidecar",
                "name: ns-wide, namespace: default",
                r#"egress: [{hosts: ["./*"]}], outboundTrafficPolicy: {mode: REGISTRY_ONLY}"#,
            ),
            doc(
                "Sidecar",
                "name: web, namespace: default",
                r#"workloadSelector: {labels: {app: web}}, egress: [{hosts: ["other/*"]}], outboundTrafficPolicy: {mode: REGISTRY_ONLY}"#,
            ),
        ]
        .concat()
    }

    fn routed(snap: &Snapshot, host: &str, port: u16) -> String {
        crate::route::route(snap, host, port).cluster_name().to_string()
    }

    #[test]
    fn a_sidecar_scopes_routing_and_what_the_snapshot_holds() {
        let snap = build(&scoped(), &ProxyConfig::default());
        assert_eq!(routed(&snap, "mine.example.com", 80), "outbound|80||mine.example.com");
        assert_eq!(routed(&snap, "theirs.example.com", 80), "BlackHoleCluster");
        assert_eq!(snap.policy_source, "Sidecar default/ns-wide");
        // Only what is imported is held: one service, a cluster per port, a port table
        // without 5432.
        assert_eq!(snap.registry.services().len(), 1);
        assert_eq!(snap.clusters().len(), 2);
        assert!(snap.port_info(5432).is_none());
        assert!(
            snap.seen_by().contains("through Sidecar default/ns-wide"),
            "{}",
            snap.seen_by()
        );

        // The workloadSelector Sidecar wins over the namespace's for `app: web`.
        let web = ProxyConfig {
            labels: [("app".to_string(), "web".to_string())].into(),
            ..ProxyConfig::default()
        };
        let snap = build(&scoped(), &web);
        assert_eq!(routed(&snap, "mine.example.com", 80), "BlackHoleCluster");
        assert_eq!(
            routed(&snap, "theirs.example.com", 80),
            "outbound|80||theirs.example.com"
        );
        assert!(snap.port_info(5432).is_some_and(|i| i.tcp_wild == 1));

        // A gateway ignores Sidecars.
        let gw = ProxyConfig {
            gateway: Some("default/gw".into()),
            ..ProxyConfig::default()
        };
        let snap = build(&scoped(), &gw);
        assert!(snap.scope.is_none());
        assert_eq!(snap.registry.services().len(), 2);
    }

    #[test]
    fn a_port_listener_routes_its_port_only() {
        let yaml = scoped().replace(
            r#"egress: [{hosts: ["./*"]}]"#,
            r#"egress: [{port: {number: 9080, protocol: HTTP, name: alt}, hosts: ["./*"]}, {hosts: ["other/*"]}]"#,
        );
        let snap = build(&yaml, &ProxyConfig::default());
        assert_eq!(
            routed(&snap, "mine.example.com", 9080),
            "outbound|9080||mine.example.com"
        );
        // Port 80 of mine.example.com is not imported: only port 9080 is, by egress[0].
        assert_eq!(routed(&snap, "mine.example.com", 80), "BlackHoleCluster");
        assert_eq!(
            routed(&snap, "theirs.example.com", 80),
            "outbound|80||theirs.example.com"
        );
    }

    #[test]
    fn virtual_services_outside_the_scope_do_not_apply() {
        let yaml = [
            scoped(),
            doc(
                "VirtualService",
                "name: to-theirs, namespace: default",
                "hosts: [mine.example.com], http: [{route: [{destination: {host: theirs.example.com, port: {number: 80}}}]}]",
            ),
            doc(
                "VirtualService",
                "name: elsewhere, namespace: other",
                "hosts: [mine.example.com], http: [{route: [{destination: {host: mine.example.com, port: {number: 9080}}}]}]",
            ),
        ];
        let snap = build(&yaml.concat(), &ProxyConfig::default());
        // default/to-theirs is imported by `./*`; its destination, in another namespace,
        // comes with it as a cluster, but is not routed by its own name.
        let mine = snap.view().lookup_host("mine.example.com").unwrap();
        assert_eq!(snap.routes.http_of(mine, 80).map(|r| &*r.vs), Some("default/to-theirs"));
        assert!(
            snap.clusters()
                .iter()
                .any(|c| c.name == "outbound|80||theirs.example.com")
        );
        assert_eq!(routed(&snap, "theirs.example.com", 80), "BlackHoleCluster");
    }

    #[test]
    fn a_virtual_service_destination_held_by_the_scope_is_that_service() {
        // The destination (held, not routed) sorts before the routed host, so ids and the
        // listing order differ in the scoped registry.
        let yaml = [
            static_se(
                "name: web, namespace: default",
                "hosts: [web.example.com], ports: [{number: 80, name: http, protocol: HTTP}]",
                "127.0.0.1",
            ),
            static_se(
                "name: gw, namespace: istio-system",
                "hosts: [a-gateway.example.com], ports: [{number: 80, name: http, protocol: HTTP}]",
                "127.0.0.2",
            ),
            doc(
                "VirtualService",
                "name: web, namespace: default",
                "hosts: [web.example.com], http: [{route: [{destination: {host: a-gateway.example.com, port: {number: 80}}}]}]",
            ),
            doc(
                "Sidecar",
                "name: default, namespace: default",
                r#"egress: [{hosts: ["./*"]}]"#,
            ),
        ];
        let snap = build(&yaml.concat(), &ProxyConfig::default());
        let web = snap.view().lookup_host("web.example.com").unwrap();
        let routes = snap.routes.http_of(web, 80).unwrap();
        let crate::model::vs::HttpAction::Route { dests, .. } = &routes.rules[0].action else {
            panic!("a route action");
        };
        match crate::route::to_target(&snap, &dests[0].target) {
            Ok(crate::route::Decision::Cluster { service, cluster, .. }) => {
                assert_eq!(&*service.host, "a-gateway.example.com");
                assert_eq!(cluster.name, "outbound|80||a-gateway.example.com");
            }
            _ => panic!("the destination resolves to its cluster"),
        }
        // Held, not routed by its own name.
        assert!(snap.view().lookup_host("a-gateway.example.com").is_none());
    }

    #[test]
    fn export() {
        assert!(exported_to(&[], "a", "b"));
        assert!(exported_to(&[".".into()], "a", "a"));
        assert!(!exported_to(&[".".into()], "a", "b"));
        assert!(exported_to(&["b".into()], "a", "b"));
    }
}
