//! From validated resources to services and endpoints: Istio's conversion (B1-B7), the merge of
//! one host defined by several ServiceEntries in a namespace (B8), Kubernetes Services
//! ([`kube`]), and the warnings for every conflict Istio settles without a word (B8, B10, C5).

mod kube;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use meshentry_api::model::{ObjectMeta, PodSpec, PodStatus, ServiceEntry, WorkloadEntry};
use meshentry_api::{ClusterDomain, Resource, Spec};

use crate::hash::FxHashMap as HashMap;
use crate::model::*;

/// The label Istio reads an endpoint's `tlsMode` from (B5).
const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// The topology labels Istio adds to an endpoint's labels (`AugmentLabels` in
/// `pilot/pkg/serviceregistry/util/label`), so that DestinationRule subsets and
/// `workloadSelector`s can select on locality and network.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
pub const NETWORK_LABEL: &str = "topology.istio.io/network";
/// Set on Pod endpoints from `spec.nodeName`.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// The labels a WorkloadEntry (or Pod) may carry its locality in when `locality` is unset,
/// first wins; `.` stands for `/` (label values cannot hold `/`).
const LOCALITY_LABELS: [&str; 2] = ["topology.istio.io/locality", "istio-locality"];

/// The label that opts a ServiceEntry out of IP auto-allocation.
const AUTOALLOCATE_LABEL: &str = "networking.istio.io/enable-autoallocate-ip";

/// What [`build`] hands to [`crate::Registry`].
pub(crate) struct Built {
    pub sources: Vec<Source>,
    /// Sorted by (host, namespace); within one host and namespace, the merge classes oldest
    /// first (the first is the one Istio's `HostnameAndNamespace` index keeps).
    pub services: Vec<Service>,
    /// The first service of each (host, namespace).
    pub listing: Vec<ServiceId>,
    pub warnings: Vec<Warning>,
    pub cluster_domain: ClusterDomain,
}

/// One copy of each label set and named-port map a build meets. Endpoints repeat them: a
/// ServiceEntry's `endpoints[]` usually share a few label sets, and thousands of WorkloadEntries
/// a handful; a copy each was most of the registry's memory at 10,000 ServiceEntries.
#[derive(Default)]
pub(crate) struct Interner {
    labels: std::cell::RefCell<std::collections::HashSet<Arc<Labels>>>,
    ports: std::cell::RefCell<std::collections::HashSet<Arc<BTreeMap<String, u32>>>>,
}

impl Interner {
    pub(crate) fn labels(&self, labels: Labels) -> Arc<Labels> {
        intern(&self.labels, labels)
    }

    pub(crate) fn ports(&self, ports: &BTreeMap<String, u32>) -> Arc<BTreeMap<String, u32>> {
        if let Some(found) = self.ports.borrow().get(ports) {
            return found.clone();
        }
        intern(&self.ports, ports.clone())
    }
}

fn intern<T: Eq + std::hash::Hash>(set: &std::cell::RefCell<std::collections::HashSet<Arc<T>>>, value: T) -> Arc<T> {
    let mut set = set.borrow_mut();
    if let Some(found) = set.get(&value) {
        return found.clone();
    }
    let value = Arc::new(value);
    set.insert(value.clone());
    value
}

/// How [`crate::Registry::build_with`] builds.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// The domain of Kubernetes Service hosts and expanded short names (`--cluster-domain`).
    pub cluster_domain: ClusterDomain,
    /// Allocate VIPs to the ServiceEntry hosts Istio would auto-allocate for
    /// ([`crate::allocate`]) when their `status.addresses` hold none.
    pub auto_allocate: bool,
    /// The proxy answers DNS (Istio's DNS capture): a service without `addresses` that has
    /// auto-allocated ones takes them as its addresses, as a sidecar with DNS capture listens
    /// on them, so that it is routed by them and no longer shares `0.0.0.0:<port>` (IST0134).
    pub dns_capture: bool,
}

/// A WorkloadEntry or ready Pod that a `workloadSelector` may pick.
struct Selectable {
    workload: Arc<Workload>,
    /// Hostname and unix addresses: only DNS and DNS_ROUND_ROBIN ServiceEntries select them (B7).
    dns_only: bool,
}

/// The selectable workloads of one namespace, with a label index so that a selector looks at
/// the workloads carrying one of its pairs instead of at the whole namespace.
#[derive(Default)]
struct NsWorkloads<'a> {
    list: Vec<Selectable>,
    /// (key, value) -> positions in `list`, ascending (so oldest first).
    by_label: HashMap<(&'a str, &'a str), Vec<u32>>,
}

/// One host of one ServiceEntry, before B8's merge.
struct Raw {
    host: Arc<str>,
    namespace: Arc<str>,
    source: SourceId,
    ports: Arc<[Port]>,
    addresses: Arc<[Address]>,
    auto_addresses: Arc<[Address]>,
    auto: AutoAddresses,
    resolution: Resolution,
    location: Location,
    export_to: ExportTo,
    subject_alt_names: Arc<[String]>,
    labels: Arc<Labels>,
    selector: Option<Arc<Labels>>,
    /// Port-major, in `ports` order.
    endpoints: Vec<Endpoint>,
    provider: Provider,
}

/// Warnings with the age of each resource they name, so they can be sorted oldest first.
#[derive(Default)]
struct Warnings(Vec<(Vec<SourceId>, Warning)>);

impl Warnings {
    fn push(&mut self, sources: &[Source], ids: &[SourceId], message: String) {
        let mut unique: Vec<SourceId> = Vec::with_capacity(ids.len());
        for &id in ids {
            if !unique.contains(&id) {
                unique.push(id);
            }
        }
        let ids = &unique[..];
        let resources = ids.iter().map(|&i| {
            (
                sources[i as usize].display_name.clone(),
                sources[i as usize].origin.clone(),
            )
        });
        self.0.push((
            ids.to_vec(),
            Warning {
                message,
                resources: resources.collect(),
            },
        ));
    }
}

/// Builds the registry's services. Pure: the result depends only on the set of valid
/// resources and their ages ([`Resource::age_key`]), not on the order they are given in.
pub(crate) fn build<'a>(resources: impl IntoIterator<Item = &'a Resource>, opts: &BuildOptions) -> Built {
    let mut resources: Vec<&Resource> = resources
        .into_iter()
        .filter(|r| {
            r.valid
                && matches!(
                    r.spec,
                    Spec::ServiceEntry(_)
                        | Spec::WorkloadEntry(_)
                        | Spec::Pod { .. }
                        | Spec::Service(_)
                        | Spec::EndpointSlice(_)
                )
        })
        .collect();
    resources.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
    let sources: Vec<Source> = resources
        .iter()
        .map(|r| Source {
            display_name: r.display_name(),
            origin: r.origin.clone(),
        })
        .collect();

    let interner = Interner::default();
    let mut workloads: HashMap<&str, NsWorkloads<'_>> = HashMap::default();
    for (id, r) in resources.iter().enumerate() {
        let selectable = match &r.spec {
            Spec::WorkloadEntry(we) => workload_entry(we, &r.meta, id as SourceId, &interner),
            Spec::Pod { spec, status } => pod(spec, status, &r.meta, id as SourceId, &interner),
            _ => None,
        };
        if let Some(s) = selectable {
            let ns = workloads.entry(r.namespace.as_str()).or_default();
            let pos = ns.list.len() as u32;
            for kv in selectable_labels(r) {
                ns.by_label.entry(kv).or_default().push(pos);
            }
            ns.list.push(s);
        }
    }

    let mut warnings = Warnings::default();
    let kube_inputs = kube::Inputs::new(&resources);
    let kube_cx = kube::Cx {
        domain: &opts.cluster_domain,
        inputs: &kube_inputs,
        sources: &sources,
        interner: &interner,
    };
    let mut aliases = Vec::new();
    let mut raws: Vec<Raw> = Vec::new();
    let mut namespaces: HashMap<&str, Arc<str>> = HashMap::default();
    for (id, r) in resources.iter().enumerate() {
        let mut ns = || {
            namespaces
                .entry(r.namespace.as_str())
                .or_insert_with(|| r.namespace.as_str().into())
                .clone()
        };
        match &r.spec {
            Spec::ServiceEntry(se) => convert(
                se,
                r,
                id as SourceId,
                ns(),
                workloads.get(r.namespace.as_str()),
                &interner,
                &mut raws,
            ),
            Spec::Service(svc) => match kube::convert(svc, r, id as SourceId, ns(), &kube_cx, &mut warnings) {
                kube::Converted::Service(raw) => raws.push(raw),
                kube::Converted::Alias(alias) => aliases.push(alias),
            },
            _ => {}
        }
    }

    let mut groups: HashMap<(Arc<str>, Arc<str>), Vec<Raw>> = HashMap::default();
    for raw in raws {
        groups
            .entry((raw.host.clone(), raw.namespace.clone()))
            // Most hosts have one definition: a first push would reserve room for four, 24 MB
            // of the build's peak at 10,000 ServiceEntries.
            .or_insert_with(|| Vec::with_capacity(1))
            .push(raw);
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));

    let mut services = Vec::with_capacity(groups.len());
    let mut listing = Vec::with_capacity(groups.len());
    for (_, group) in groups {
        listing.push(services.len() as ServiceId);
        merge_group(group, &sources, &mut services, &mut warnings);
    }
    resolve_aliases(&aliases, &mut services);
    if opts.auto_allocate {
        crate::allocate::allocate(&mut services);
    }
    if opts.dns_capture {
        for s in services.iter_mut() {
            if s.addresses.is_empty() && !s.auto_addresses.is_empty() {
                s.addresses = s.auto_addresses.clone();
            }
        }
    }

    shadowed_hosts(&services, &listing, &sources, &mut warnings);
    shared_listeners(&services, &listing, &sources, &mut warnings);

    let mut warnings = warnings.0;
    warnings.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.message.cmp(&b.1.message)));
    Built {
        sources,
        services,
        listing,
        warnings: warnings.into_iter().map(|(_, w)| w).collect(),
        cluster_domain: opts.cluster_domain.clone(),
    }
}

/// The labels a selector matches, borrowed from the resource (same as [`Workload::labels`]).
fn selectable_labels(r: &Resource) -> Vec<(&str, &str)> {
    let meta = &r.meta.labels;
    let spec = match &r.spec {
        Spec::WorkloadEntry(we) => Some(&we.labels),
        _ => None,
    };
    let from_spec = spec.into_iter().flatten().filter(|(k, _)| !meta.contains_key(*k));
    meta.iter()
        .chain(from_spec)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// B7: a WorkloadEntry's labels are `spec.labels` overlaid by `metadata.labels`. One without
/// an address (only a `network`, reached through that network's gateway) has nothing to dial
/// in a single-network registry and is left out.
fn workload_entry(we: &WorkloadEntry, meta: &ObjectMeta, source: SourceId, interner: &Interner) -> Option<Selectable> {
    let mut labels = we.labels.clone();
    labels.extend(meta.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let workload = inline_workload(we, labels, source, interner)?;
    let dns_only = workload.address.parse::<std::net::IpAddr>().is_err();
    Some(Selectable {
        workload: Arc::new(workload),
        dns_only,
    })
}

/// B7: ready Pods only; their ports are the named TCP container ports. The tlsMode comes from
/// the label the injector sets, else `disabled`.
fn pod(
    spec: &PodSpec,
    status: &PodStatus,
    meta: &ObjectMeta,
    source: SourceId,
    interner: &Interner,
) -> Option<Selectable> {
    if !status.is_ready() {
        return None;
    }
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter(|p| !p.name.is_empty() && (p.protocol.is_empty() || p.protocol.eq_ignore_ascii_case("TCP")))
        .map(|p| (p.name.clone(), p.container_port))
        .collect();
    let workload = Workload {
        ports: interner.ports(&ports),
        ..pod_workload(spec, meta, &status.pod_ip, source, interner)
    };
    Some(Selectable {
        workload: Arc::new(workload),
        dns_only: false,
    })
}

/// A Pod's endpoint at `address` (Istio's `EndpointBuilder`): the Pod's labels with the
/// topology labels, its service account, and the tlsMode of the label the injector sets,
/// else `disabled`; no named ports.
fn pod_workload(spec: &PodSpec, meta: &ObjectMeta, address: &str, source: SourceId, interner: &Interner) -> Workload {
    let tls_mode = match meta.labels.get(TLS_MODE_LABEL).map(String::as_str) {
        Some("istio") => TlsMode::Istio,
        _ => TlsMode::Disabled,
    };
    let sa = if spec.service_account_name.is_empty() {
        &spec.service_account
    } else {
        &spec.service_account_name
    };
    // Istio's Kubernetes registry takes a Pod's locality from its labels, else from its node's
    // (meshentry reads no Nodes), and names its node in a label.
    let locality = locality_from_labels(&meta.labels);
    let mut labels = meta.labels.clone();
    augment_labels(&mut labels, &locality, "");
    if !spec.node_name.is_empty() {
        labels.insert(HOSTNAME_LABEL.into(), spec.node_name.clone());
    }
    Workload {
        address: address.into(),
        ports: Arc::default(),
        labels: interner.labels(labels),
        network: "".into(),
        locality: locality.into(),
        weight: 0,
        service_account: sa.as_str().into(),
        tls_mode,
        source,
    }
}

/// B5, for `spec.endpoints[]` and WorkloadEntries. The locality is `locality`, else the one
/// a label gives; the labels gain Istio's topology labels.
fn inline_workload(we: &WorkloadEntry, mut labels: Labels, source: SourceId, interner: &Interner) -> Option<Workload> {
    if we.address.is_empty() {
        return None;
    }
    let tls_mode = match labels.get(TLS_MODE_LABEL).map(String::as_str) {
        Some("istio") => TlsMode::Istio,
        Some(_) => TlsMode::Disabled,
        None if !we.service_account.is_empty() => TlsMode::Istio,
        None => TlsMode::Disabled,
    };
    let locality = if we.locality.is_empty() {
        locality_from_labels(&labels)
    } else {
        we.locality.clone()
    };
    augment_labels(&mut labels, &locality, &we.network);
    Some(Workload {
        address: we.address.as_str().into(),
        ports: interner.ports(&we.ports),
        labels: interner.labels(labels),
        network: we.network.as_str().into(),
        locality: locality.into(),
        weight: we.weight,
        service_account: we.service_account.as_str().into(),
        tls_mode,
        source,
    })
}

/// The locality a workload's labels give (Istio's `GetLocalityLabel`, then
/// `SanitizeLocalityLabel`: a value without `/` uses `.` between its parts); empty if none.
fn locality_from_labels(labels: &Labels) -> String {
    let Some(value) = LOCALITY_LABELS.iter().find_map(|k| labels.get(*k)) else {
        return String::new();
    };
    if value.contains('/') {
        value.clone()
    } else {
        value.replace('.', "/")
    }
}

/// Istio's `AugmentLabels`: `region/zone/subzone` of the locality become the region, zone and
/// subzone labels (each only when non-empty), and the network the network label unless the
/// workload's own labels already set one.
fn augment_labels(labels: &mut Labels, locality: &str, network: &str) {
    let mut parts = locality.splitn(3, '/');
    for key in [REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL] {
        match parts.next() {
            Some(part) if !part.is_empty() => {
                labels.insert(key.into(), part.into());
            }
            _ => {}
        }
    }
    if !network.is_empty() && labels.get(NETWORK_LABEL).is_none_or(String::is_empty) {
        labels.insert(NETWORK_LABEL.into(), network.into());
    }
}

/// Whether a selector key is one [`augment_labels`] adds, which the label index (built from
/// the labels as written) does not hold.
fn is_topology_label(key: &str) -> bool {
    [REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL, NETWORK_LABEL, HOSTNAME_LABEL].contains(&key)
}

/// B7: the workloads of the ServiceEntry's own namespace whose labels contain every selector
/// pair, oldest first. An empty selector selects the whole namespace.
fn select(ns: Option<&NsWorkloads<'_>>, selector: &Labels, dns: bool) -> Vec<Arc<Workload>> {
    let Some(ns) = ns else { return Vec::new() };
    let usable = |s: &Selectable| dns || !s.dns_only;
    let contains_all = |s: &Selectable| selector.iter().all(|(k, v)| s.workload.labels.get(k) == Some(v));
    let mut narrowest: Option<&Vec<u32>> = None;
    for (k, v) in selector {
        match ns.by_label.get(&(k.as_str(), v.as_str())) {
            // Topology labels are checked on the workload's labels below.
            None if is_topology_label(k) => {}
            None => return Vec::new(),
            Some(list) if narrowest.is_none_or(|n| list.len() < n.len()) => narrowest = Some(list),
            Some(_) => {}
        }
    }
    match narrowest {
        Some(list) => list
            .iter()
            .map(|&i| &ns.list[i as usize])
            .filter(|s| usable(s) && contains_all(s))
            .map(|s| s.workload.clone())
            .collect(),
        None => ns
            .list
            .iter()
            .filter(|s| usable(s))
            .map(|s| s.workload.clone())
            .collect(),
    }
}

/// B4: unix sockets have port 0; else the workload's port of that name if > 0, else
/// `targetPort`, else the service port.
fn endpoint_port(w: &Workload, port: &Port) -> u32 {
    if w.is_unix() {
        return 0;
    }
    match w.ports.get(&*port.name) {
        Some(&p) if p > 0 => p,
        _ => port.target_port.unwrap_or(port.number),
    }
}

/// B1-B7 for one ServiceEntry: one [`Raw`] per host.
fn convert(
    se: &ServiceEntry,
    r: &Resource,
    source: SourceId,
    namespace: Arc<str>,
    ns: Option<&NsWorkloads<'_>>,
    interner: &Interner,
    out: &mut Vec<Raw>,
) {
    let ports: Arc<[Port]> = se
        .ports
        .iter()
        .map(|p| Port {
            name: p.name.as_str().into(),
            number: p.number,
            protocol: Protocol::parse(&p.protocol),
            target_port: (p.target_port > 0).then_some(p.target_port),
        })
        .collect();
    let addresses: Arc<[Address]> = se.addresses.iter().filter_map(|a| Address::parse(a)).collect();
    let resolution = se.resolution.unwrap_or_default();
    let auto_allocated = uses_auto_allocation(se, r);
    let location = se.location.unwrap_or_default();
    let export_to = ExportTo::new(&se.export_to, &r.namespace);
    let subject_alt_names: Arc<[String]> = se.subject_alt_names.as_slice().into();
    let labels = Arc::new(r.meta.labels.clone());
    let selector = se.workload_selector.as_ref().map(|s| Arc::new(s.labels.clone()));
    let dns = matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin);
    let workloads: Vec<Arc<Workload>> = match &selector {
        Some(sel) => select(ns, sel, dns),
        None => se
            .endpoints
            .iter()
            .filter_map(|e| inline_workload(e, e.labels.clone(), source, interner))
            .map(Arc::new)
            .collect(),
    };
    // B6: a DNS service with neither endpoints nor selector resolves its own host.
    let resolve_host = dns && se.endpoints.is_empty() && selector.is_none();
    for host in &se.hosts {
        let host: Arc<str> = host.as_str().into();
        let mut endpoints = Vec::with_capacity(ports.len() * workloads.len().max(1));
        let host_workload = resolve_host.then(|| {
            Arc::new(Workload {
                address: (*host).into(),
                ports: Arc::default(),
                labels: Arc::default(),
                network: "".into(),
                locality: "".into(),
                weight: 0,
                service_account: "".into(),
                tls_mode: TlsMode::Disabled,
                source,
            })
        });
        for port in ports.iter() {
            match &host_workload {
                Some(w) => endpoints.push(Endpoint {
                    workload: w.clone(),
                    port: port.target_port.unwrap_or(port.number),
                    port_name: port.name.clone(),
                }),
                None => endpoints.extend(workloads.iter().map(|w| Endpoint {
                    workload: w.clone(),
                    port: endpoint_port(w, port),
                    port_name: port.name.clone(),
                })),
            }
        }
        let auto_addresses = if auto_allocated {
            auto_addresses_of(se, &host)
        } else {
            Arc::default()
        };
        let auto = match (auto_allocated, auto_addresses.is_empty()) {
            (false, _) => AutoAddresses::NotUsed,
            (true, false) => AutoAddresses::Status,
            (true, true) => AutoAddresses::Wanted,
        };
        out.push(Raw {
            host,
            namespace: namespace.clone(),
            source,
            ports: ports.clone(),
            addresses: addresses.clone(),
            auto_addresses,
            auto,
            resolution,
            location,
            export_to: export_to.clone(),
            subject_alt_names: subject_alt_names.clone(),
            labels: labels.clone(),
            selector: selector.clone(),
            endpoints,
            provider: Provider::External,
        });
    }
}

/// Whether Istio uses a ServiceEntry's `status.addresses` (`shouldV2AutoAllocateIPFromPieces`):
/// not for resolution NONE (the dataplane could not honour the VIP), not when the
/// ServiceEntry opts out by label, and never when `spec.addresses` is given.
fn uses_auto_allocation(se: &ServiceEntry, r: &Resource) -> bool {
    se.resolution.unwrap_or_default() != Resolution::None
        && se.addresses.is_empty()
        && !r
            .meta
            .labels
            .get(AUTOALLOCATE_LABEL)
            .is_some_and(|v| v.eq_ignore_ascii_case("false"))
}

/// The auto-allocated VIPs of one host (`convertServices`): among the `status.addresses` for
/// that exact host that parse as IPs, the last IPv4 one and the last IPv6 one.
fn auto_addresses_of(se: &ServiceEntry, host: &str) -> Arc<[Address]> {
    let (mut v4, mut v6) = (None, None);
    for a in se.status.addresses.iter().filter(|a| a.host == host) {
        match a.value.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) => v4 = Some(ip),
            Ok(ip @ IpAddr::V6(_)) => v6 = Some(ip),
            Err(_) => {}
        }
    }
    [v4, v6]
        .into_iter()
        .flatten()
        .map(|ip| Address {
            text: ip.to_string().into(),
            net: IpNet::from(ip),
        })
        .collect()
}

/// B8's merge condition (Istio's `canMergeServices`): same resolution, labels, selector and
/// exportTo (as written).
fn merge_differences(a: &Service, b: &Raw) -> Vec<&'static str> {
    let mut diffs = Vec::new();
    if a.provider != b.provider {
        diffs.push("registry (Kubernetes Service or ServiceEntry)");
    }
    if a.resolution != b.resolution {
        diffs.push("resolution");
    }
    if a.labels != b.labels {
        diffs.push("metadata.labels");
    }
    if a.selector != b.selector {
        diffs.push("workloadSelector");
    }
    fn sorted(e: &ExportTo) -> Vec<&str> {
        let mut v: Vec<&str> = e.written.iter().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
    if sorted(&a.export_to) != sorted(&b.export_to) {
        diffs.push("exportTo");
    }
    diffs
}

/// B8 for one host in one namespace (`group` is oldest first): the oldest service wins, later
/// ones merge their new port numbers into it when [`merge_differences`] is empty, and start a
/// service of their own otherwise (used only where the older one is invisible). Endpoints are
/// shared by the whole group, matched to ports by name as Istio's EDS does.
fn merge_group(mut group: Vec<Raw>, sources: &[Source], services: &mut Vec<Service>, warnings: &mut Warnings) {
    let first = services.len();
    let name = |id: SourceId| sources[id as usize].display_name.as_str();
    // A Kubernetes Service takes precedence over ServiceEntries of its host and namespace
    // (`initServiceRegistry`: no "domain squatting" before the Service exists): it is first,
    // as old as the oldest of them, and they are never merged into it.
    let group_age = group.iter().map(|r| r.source).min().unwrap_or_default();
    group.sort_by_key(|r| r.provider != Provider::Kubernetes);
    for raw in &group {
        let kube_first = services.get(first).filter(|s| s.provider == Provider::Kubernetes);
        if let Some(kube) = kube_first {
            warnings.push(
                sources,
                &[kube.source, raw.source],
                format!(
                    "host {:?} in namespace {}: {} defines the host of {}, which takes precedence (Istio prefers a Kubernetes Service to the ServiceEntries of its host and namespace)",
                    raw.host,
                    raw.namespace,
                    name(raw.source),
                    name(kube.source),
                ),
            );
        }
        // ServiceEntries merge among themselves only (B8).
        let start = first + usize::from(kube_first.is_some());
        let class = services[start..]
            .iter()
            .position(|s| merge_differences(s, raw).is_empty());
        match class {
            Some(c) => {
                let svc = &mut services[start + c];
                let (older, later) = (name(svc.source), name(raw.source));
                for port in raw.ports.iter() {
                    match svc.ports.iter().find(|p| p.number == port.number) {
                        None => svc.ports.push(port.clone()),
                        Some(p) if p != port => warnings.push(
                            sources,
                            &[svc.source, raw.source],
                            format!(
                                "host {:?} in namespace {}: port {} of {later} ({}) is ignored: {older} already defines it ({})",
                                raw.host,
                                raw.namespace,
                                port.number,
                                describe_port(port),
                                describe_port(p)
                            ),
                        ),
                        Some(_) => {}
                    }
                }
                let mut ignored = Vec::new();
                if svc.addresses != raw.addresses {
                    ignored.push("addresses");
                }
                if svc.location != raw.location {
                    ignored.push("location");
                }
                if svc.subject_alt_names != raw.subject_alt_names {
                    ignored.push("subjectAltNames");
                }
                if !ignored.is_empty() {
                    let fields = ignored.join(", ");
                    warnings.push(
                        sources,
                        &[svc.source, raw.source],
                        format!(
                            "host {:?} in namespace {}: {later} is merged into the older {older}, whose {fields} are kept; {later}'s {fields} are ignored",
                            raw.host, raw.namespace
                        ),
                    );
                }
                svc.merged.push(raw.source);
            }
            None => {
                if let Some(oldest) = services.get(start) {
                    let diffs = merge_differences(oldest, raw).join(", ");
                    warnings.push(
                        sources,
                        &[oldest.source, raw.source],
                        format!(
                            "host {:?} in namespace {}: {later} differs from the older {older} in {diffs}, so it is not merged: \
                             proxies that see both use {older}, and {later} adds only endpoints on ports named like {older}'s",
                            raw.host,
                            raw.namespace,
                            later = name(raw.source),
                            older = name(oldest.source),
                        ),
                    );
                }
                let age = if raw.provider == Provider::Kubernetes {
                    group_age
                } else {
                    raw.source
                };
                services.push(service_of(raw, age));
            }
        }
    }

    let single = group.len() == 1;
    let mut group = group;
    for svc in &mut services[first..] {
        if single {
            // One ServiceEntry: its endpoints are already port-major in its port order.
            svc.endpoints = std::mem::take(&mut group[0].endpoints);
        } else {
            for port in &svc.ports {
                // A Kubernetes Service's endpoints are its EndpointSlices', never a
                // ServiceEntry's (whose DNS host would be no endpoint of it), and theirs not its.
                for raw in group.iter().filter(|r| r.provider == svc.provider) {
                    svc.endpoints
                        .extend(raw.endpoints.iter().filter(|e| e.port_name == port.name).cloned());
                }
            }
        }
        if svc.resolution == Resolution::DnsRoundRobin {
            round_robin_first(svc, sources, warnings);
        }
    }
}

/// A service of its own for `raw`, endpoints added later.
fn service_of(raw: &Raw, age: SourceId) -> Service {
    Service {
        host: raw.host.clone(),
        namespace: raw.namespace.clone(),
        addresses: raw.addresses.clone(),
        auto_addresses: raw.auto_addresses.clone(),
        auto: raw.auto,
        ports: raw.ports.to_vec(),
        resolution: raw.resolution,
        location: raw.location,
        export_to: raw.export_to.clone(),
        subject_alt_names: raw.subject_alt_names.clone(),
        labels: raw.labels.clone(),
        selector: raw.selector.clone(),
        endpoints: Vec::new(),
        source: raw.source,
        merged: Vec::new(),
        age,
        provider: raw.provider,
        aliases: Arc::default(),
    }
}

/// Istio's `resolveServiceAliases`: each ExternalName Service is an alias of the service its
/// `externalName` names, through other aliases if need be (a loop is no alias at all, as
/// Kubernetes' DNS answers it with NXDOMAIN); every service of that host gets the alias,
/// aliases sorted by namespace, then host.
fn resolve_aliases(aliases: &[kube::Alias], services: &mut [Service]) {
    if aliases.is_empty() {
        return;
    }
    // An ExternalName is not namespaced: of two aliases of one host, either may win.
    let raw: HashMap<&str, &str> = aliases.iter().map(|a| (&*a.host, a.target.as_str())).collect();
    let mut by_target: HashMap<&str, Vec<&kube::Alias>> = HashMap::default();
    for a in aliases {
        let mut target = a.target.as_str();
        let mut seen = vec![&*a.host, target];
        let resolved = loop {
            match raw.get(target) {
                None => break Some(target),
                Some(&next) if seen.contains(&next) => break None,
                Some(&next) => {
                    seen.push(next);
                    target = next;
                }
            }
        };
        if let Some(t) = resolved {
            by_target.entry(t).or_default().push(a);
        }
    }
    for list in by_target.values_mut() {
        list.sort_by(|a, b| (&a.namespace, &a.host).cmp(&(&b.namespace, &b.host)));
    }
    for s in services.iter_mut() {
        if let Some(list) = by_target.get(&*s.host) {
            s.aliases = list.iter().map(|a| a.host.clone()).collect();
        }
    }
}

/// B8/C1: a DNS_ROUND_ROBIN (LOGICAL_DNS) cluster uses one endpoint per port: the first.
fn round_robin_first(svc: &mut Service, sources: &[Source], warnings: &mut Warnings) {
    let mut kept: Vec<Endpoint> = Vec::with_capacity(svc.ports.len());
    for port in &svc.ports {
        let mut eps = svc.endpoints.iter().filter(|e| e.port_name == port.name);
        let Some(first) = eps.next() else { continue };
        let dropped: Vec<&Endpoint> = eps.collect();
        if !dropped.is_empty() {
            let mut ids = vec![svc.source, first.workload.source];
            ids.extend(dropped.iter().map(|e| e.workload.source));
            ids.sort_unstable();
            ids.dedup();
            let others: Vec<&str> = dropped.iter().map(|e| e.address()).collect();
            warnings.push(
                sources,
                &ids,
                format!(
                    "DNS_ROUND_ROBIN host {:?} in namespace {} has {} endpoints on port {}: Envoy's LOGICAL_DNS cluster uses only the first ({}); ignored: {}",
                    svc.host,
                    svc.namespace,
                    dropped.len() + 1,
                    port.name,
                    first.address(),
                    others.join(", ")
                ),
            );
        }
        kept.push(first.clone());
    }
    svc.endpoints = kept;
}

fn describe_port(p: &Port) -> String {
    let proto = if p.protocol == Protocol::Unset {
        "protocol unset"
    } else {
        p.protocol.as_str()
    };
    match p.target_port {
        Some(t) => format!("name {}, {proto}, targetPort {t}", p.name),
        None => format!("name {}, {proto}", p.name),
    }
}

/// Who sees both, and which of the two wins there (B10's order), for messages. When both are
/// public, the namespaces that see both include every third namespace, where the older wins.
fn contest<'s>(e: &'s Service, l: &'s Service) -> (String, &'s Service) {
    match e.export_to.common(&l.export_to) {
        Some(ns) => {
            let winner = if l.preference(ns) < e.preference(ns) { l } else { e };
            (format!("namespace {ns} sees both and uses"), winner)
        }
        None if e.namespace == l.namespace => ("every namespace sees both and uses".to_string(), e),
        None => (
            format!(
                "namespaces other than {} and {} see both and use",
                e.namespace, l.namespace
            ),
            e,
        ),
    }
}

/// B10: the same host in several namespaces. A proxy uses its own namespace's service, else
/// one exported to its namespace by name, else the oldest public one; where two are visible
/// together, one silently shadows the other.
fn shadowed_hosts(services: &[Service], listing: &[ServiceId], sources: &[Source], warnings: &mut Warnings) {
    let mut by_host: HashMap<std::borrow::Cow<'_, str>, Vec<&Service>> = HashMap::default();
    for &id in listing {
        let s = &services[id as usize];
        let key = if s.host.bytes().any(|b| b.is_ascii_uppercase()) {
            s.host.to_ascii_lowercase().into()
        } else {
            (*s.host).into()
        };
        by_host.entry(key).or_default().push(s);
    }
    let mut hosts: Vec<_> = by_host.into_values().filter(|v| v.len() > 1).collect();
    hosts.sort_by_key(|v| v[0].age);
    for mut list in hosts {
        list.sort_by_key(|s| s.age);
        for (e, l) in first_overlapping(&list) {
            let (e, l) = (list[e], list[l]);
            if e.namespace == l.namespace {
                continue;
            }
            let (who, winner) = contest(e, l);
            warnings.push(
                sources,
                &[e.source, l.source],
                format!(
                    "host {:?} is defined in namespace {} by {} and in namespace {} by {}: {who} {}'s",
                    e.host,
                    e.namespace,
                    sources[e.source as usize].display_name,
                    l.namespace,
                    sources[l.source as usize].display_name,
                    winner.namespace,
                ),
            );
        }
    }
}

/// C4/C5: outbound listeners are keyed by address and port. Services with no address on an
/// opaque TCP port share `0.0.0.0:<port>` (Istio's IST0134 situation), services with one VIP
/// and a non-HTTP port share `<VIP>:<port>` (no SNI check there); either way one of them gets
/// all the traffic.
fn shared_listeners(services: &[Service], listing: &[ServiceId], sources: &[Source], warnings: &mut Warnings) {
    let mut by_listener: BTreeMap<(u32, Option<IpNet>), Vec<&Service>> = BTreeMap::new();
    for &id in listing {
        let s = &services[id as usize];
        // C5: NONE with a selector listens on each selected endpoint's IP instead.
        let wildcard = s.addresses.is_empty() && !(s.resolution == Resolution::None && s.selector.is_some());
        for p in &s.ports {
            if wildcard && p.protocol.is_opaque_tcp() {
                by_listener.entry((p.number, None)).or_default().push(s);
            }
            if !p.protocol.is_http() {
                for a in s.addresses.iter() {
                    by_listener.entry((p.number, Some(a.net))).or_default().push(s);
                }
            }
        }
    }
    // One warning per pair and port, listing the shared addresses.
    type Pair<'s> = (&'s Service, &'s Service, Vec<Option<IpNet>>);
    let mut shared: BTreeMap<(u32, u32, u32), Pair<'_>> = BTreeMap::new();
    for ((port, net), mut list) in by_listener {
        if list.len() < 2 {
            continue;
        }
        list.sort_by_key(|s| s.age);
        for (e, l) in first_overlapping(&list) {
            let (e, l) = (list[e], list[l]);
            if e.host.eq_ignore_ascii_case(&l.host) {
                continue; // B10's warning covers it.
            }
            let key = (e.age.min(l.age), e.age.max(l.age), port);
            shared.entry(key).or_insert((e, l, Vec::new())).2.push(net);
        }
    }
    let mut ordered: Vec<_> = shared.into_iter().collect();
    ordered.sort_by_key(|((_, _, port), (e, l, _))| (e.age, l.age, *port));
    for ((_, _, port), (e, l, nets)) in ordered {
        let proto = |s: &Service| match s.port(port).map(|p| p.protocol) {
            Some(Protocol::Unset) | None => "unset protocol",
            Some(p) => p.as_str(),
        };
        let (who, winner) = contest(e, l);
        let name = |s: &Service| sources[s.source as usize].display_name.as_str();
        let wildcard = nets.iter().any(Option::is_none);
        let vips: Vec<String> = nets.iter().flatten().map(|n| n.to_string()).collect();
        let mut parts = Vec::new();
        if wildcard {
            parts.push(format!(
                "both serve port {port} ({} / {}) without addresses: {who} {:?} for all TCP traffic on 0.0.0.0:{port} \
                 (Istio IST0134: give them addresses)",
                proto(e),
                proto(l),
                winner.host,
            ));
        }
        if !vips.is_empty() {
            parts.push(format!(
                "both serve non-HTTP port {port} on {}: {who} {:?} for it",
                vips.join(", "),
                winner.host
            ));
        }
        warnings.push(
            sources,
            &[e.source, l.source],
            format!(
                "hosts {:?} ({}) and {:?} ({}) {}",
                e.host,
                name(e),
                l.host,
                name(l),
                parts.join("; ")
            ),
        );
    }
}

/// For each service of `list` (oldest first), the oldest earlier one that some namespace sees
/// together with it. Linear in the list for public services, so a port shared by thousands of
/// services stays cheap.
fn first_overlapping(list: &[&Service]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut first_any: Option<usize> = None;
    let mut first_public: Option<usize> = None;
    let mut first_in: HashMap<&str, usize> = HashMap::default();
    for (i, s) in list.iter().enumerate() {
        let earlier = match &s.export_to.scope {
            Scope::Nobody => continue,
            Scope::Public => first_any,
            Scope::Namespaces(names) => names
                .iter()
                .filter_map(|n| first_in.get(&**n).copied())
                .chain(first_public)
                .min(),
        };
        if let Some(e) = earlier {
            out.push((e, i));
        }
        first_any.get_or_insert(i);
        match &s.export_to.scope {
            Scope::Public => {
                first_public.get_or_insert(i);
            }
            Scope::Namespaces(names) => {
                for n in names.iter() {
                    first_in.entry(&**n).or_insert(i);
                }
            }
            Scope::Nobody => {}
        }
    }
    out
}
