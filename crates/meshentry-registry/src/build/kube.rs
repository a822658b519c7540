//! Kubernetes Services as Istio's Kubernetes registry builds them
//! (`pilot/pkg/serviceregistry/kube/conversion.go` `ConvertService`, `pkg/config/kube/
//! conversion.go` `ConvertProtocol`, `kube/controller/endpointslice.go`), one service per
//! Service:
//!
//! - host `NAME.NAMESPACE.svc.<cluster domain>`, location MESH_INTERNAL, exportTo from the
//!   annotation `networking.istio.io/exportTo`, subject alt names from
//!   `alpha.istio.io/canonical-serviceaccounts`;
//! - `clusterIP` is the VIP (every `clusterIPs` entry when there are several): the service is
//!   load balanced over its endpoints (Istio's ClientSideLB, an EDS cluster: STATIC here); a
//!   headless one (`clusterIP: None`) is Istio's Passthrough (ORIGINAL_DST: NONE here), with
//!   a listener on each endpoint's IP;
//! - an `ExternalName` Service is an alias of the service whose host is its `externalName`
//!   (Istio's `Alias` resolution, on by default since Istio 1.22: no cluster or listener of
//!   its own; wherever the concrete service is matched by host, so is the alias);
//! - a port's protocol comes from `appProtocol`, else its name's prefix, else it is detected
//!   (TCP on the well-known ports 25, 53, 3306, 27017); UDP ports are left out, as Istio
//!   builds no listener or cluster for them;
//! - endpoints come from the Service's EndpointSlices (label `kubernetes.io/service-name`,
//!   not FQDN, not multi-cluster): ready ones only (Istio sends not-ready endpoints as
//!   UNHEALTHY, which Envoy never picks with the panic threshold Istio then sets to 0, and
//!   never sends terminating ones), on the slice's port of the service port's name, labelled
//!   with the Pod `targetRef` names; an endpoint whose Pod is not known is skipped, as Istio
//!   skips it until the Pod arrives.

use std::collections::BTreeMap;
use std::sync::Arc;

use meshentry_api::model::{
    CLUSTER_IP_NONE, EndpointSlice, KubeServicePort, KubernetesService, MCS_SERVICE_NAME_LABEL, PodSpec, PodStatus,
    SERVICE_NAME_LABEL,
};
use meshentry_api::{ClusterDomain, Resource, Spec};

use super::{Interner, Raw, Warnings, pod_workload};
use crate::hash::FxHashMap as HashMap;
use crate::model::*;

/// Istio's `PILOT_DRAINING_LABEL`: an endpoint whose Pod carries it is DRAINING, which Istio
/// sends only to persistent-session services, for sessions already open.
const DRAINING_LABEL: &str = "istio.io/draining";
/// The annotation of SPIFFE identities a Service's endpoints run as.
const CANONICAL_SERVICE_ACCOUNTS: &str = "alpha.istio.io/canonical-serviceaccounts";
/// Ports where a name without a protocol means TCP, not detection (`wellKnownPorts`).
const WELL_KNOWN_PORTS: [u32; 4] = [25, 53, 3306, 27017];

/// A Pod an endpoint may name.
struct PodRef<'a> {
    spec: &'a PodSpec,
    meta: &'a meshentry_api::model::ObjectMeta,
}

/// One EndpointSlice of a Service: its name, source and body.
type SliceRef<'a> = (&'a str, SourceId, &'a EndpointSlice);

/// What the Services' endpoints are made from: Pods by name and IP, slices by Service.
#[derive(Default)]
pub(super) struct Inputs<'a> {
    pods: HashMap<(&'a str, &'a str), PodRef<'a>>,
    pods_by_ip: HashMap<(&'a str, &'a str), Vec<&'a str>>,
    /// (namespace, Service name) -> (slice name, its source, the slice), by slice name.
    slices: HashMap<(&'a str, &'a str), Vec<SliceRef<'a>>>,
}

impl<'a> Inputs<'a> {
    /// From the resources (oldest first, `id` their source ids).
    pub fn new(resources: &[&'a Resource]) -> Inputs<'a> {
        let mut out = Inputs::default();
        for (id, r) in resources.iter().enumerate() {
            match &r.spec {
                // Istio's Pod informer drops Failed Pods (`status.phase!=Failed`).
                Spec::Pod { spec, status } if !is_failed(status) => {
                    out.pods.insert(
                        (r.namespace.as_str(), r.meta.name.as_str()),
                        PodRef { spec, meta: &r.meta },
                    );
                    let ips =
                        std::iter::once(status.pod_ip.as_str()).chain(status.pod_ips.iter().map(|p| p.ip.as_str()));
                    for ip in ips.filter(|ip| !ip.is_empty()) {
                        let names = out.pods_by_ip.entry((r.namespace.as_str(), ip)).or_default();
                        if !names.contains(&r.meta.name.as_str()) {
                            names.push(&r.meta.name);
                        }
                    }
                }
                Spec::EndpointSlice(slice) => {
                    let Some(service) = r.meta.labels.get(SERVICE_NAME_LABEL) else {
                        continue;
                    };
                    if r.meta.labels.contains_key(MCS_SERVICE_NAME_LABEL) || slice.address_type == "FQDN" {
                        continue;
                    }
                    out.slices
                        .entry((r.namespace.as_str(), service.as_str()))
                        .or_default()
                        .push((r.meta.name.as_str(), id as SourceId, slice));
                }
                _ => {}
            }
        }
        for list in out.slices.values_mut() {
            list.sort_by_key(|(name, _, _)| *name);
        }
        out
    }

    /// Istio's `getPod`: the Pod `targetRef` names, else (an endpoint managed by hand) a Pod
    /// of the slice's namespace with that IP. `Err` when the Pod named is not known.
    fn pod(
        &self,
        ns: &'a str,
        address: &str,
        e: &'a meshentry_api::model::SliceEndpoint,
    ) -> Result<Option<&PodRef<'a>>, String> {
        match &e.target_ref {
            Some(t) if t.kind == "Pod" => {
                let pod_ns = if t.namespace.is_empty() {
                    ns
                } else {
                    t.namespace.as_str()
                };
                self.pods
                    .get(&(pod_ns, t.name.as_str()))
                    .map(Some)
                    .ok_or_else(|| format!("{pod_ns}/{}", t.name))
            }
            _ => Ok(self
                .pods_by_ip
                .get(&(ns, address))
                .and_then(|names| names.first())
                .and_then(|name| self.pods.get(&(ns, *name)))),
        }
    }
}

fn is_failed(status: &PodStatus) -> bool {
    status.phase == "Failed"
}

/// An ExternalName Service: `host` stands for `target`.
#[derive(Clone, Debug)]
pub(super) struct Alias {
    pub host: Arc<str>,
    pub namespace: Arc<str>,
    pub target: String,
}

/// What one Service becomes.
pub(super) enum Converted {
    Service(Raw),
    Alias(Alias),
}

/// What every Service's conversion reads.
pub(super) struct Cx<'c, 'a> {
    pub domain: &'c ClusterDomain,
    pub inputs: &'c Inputs<'a>,
    pub sources: &'c [Source],
    pub interner: &'c Interner,
}

/// Istio's `ConvertService` and its endpoints, for Service `r`.
pub(super) fn convert(
    svc: &KubernetesService,
    r: &Resource,
    source: SourceId,
    namespace: Arc<str>,
    cx: &Cx<'_, '_>,
    warnings: &mut Warnings,
) -> Converted {
    let Cx {
        domain,
        inputs,
        sources,
        interner,
    } = *cx;
    let spec = &svc.spec;
    let host: Arc<str> = domain.service_host(&r.meta.name, &r.namespace).into();
    if spec.kind == "ExternalName" && !spec.external_name.is_empty() {
        let target = spec.external_name.strip_suffix('.').unwrap_or(&spec.external_name);
        return Converted::Alias(Alias {
            host,
            namespace,
            target: target.to_ascii_lowercase(),
        });
    }
    let headless = spec.cluster_ip == CLUSTER_IP_NONE;
    let addresses: Arc<[Address]> = if headless {
        Arc::default()
    } else if spec.cluster_ips.len() > 1 {
        spec.cluster_ips.iter().filter_map(|a| Address::parse(a)).collect()
    } else {
        Address::parse(&spec.cluster_ip).into_iter().collect()
    };
    let ports: Arc<[Port]> = spec
        .ports
        .iter()
        .filter_map(|p| {
            Some(Port {
                name: p.name.as_str().into(),
                number: p.port,
                protocol: protocol(p)?,
                // The slice's port is the endpoints' (B4 does not apply): none to remember.
                target_port: None,
            })
        })
        .collect();
    let subject_alt_names: Arc<[String]> = r
        .meta
        .annotations
        .get(CANONICAL_SERVICE_ACCOUNTS)
        .filter(|a| !a.is_empty())
        .map(|a| a.split(',').map(str::to_string).collect::<Vec<_>>())
        .unwrap_or_default()
        .into();
    let endpoints = endpoints(r, &ports, source, inputs, sources, interner, warnings);
    Converted::Service(Raw {
        host,
        namespace,
        source,
        ports,
        addresses,
        auto_addresses: Arc::default(),
        auto: AutoAddresses::NotUsed,
        resolution: if headless { Resolution::None } else { Resolution::Static },
        location: Location::MeshInternal,
        export_to: ExportTo::new(&svc.export_to, &r.namespace),
        subject_alt_names,
        labels: Arc::new(r.meta.labels.clone()),
        // Istio's `LabelSelectors`: with no address and original destination, a listener on
        // each endpoint's IP (headless Services), as for a ServiceEntry with a selector.
        selector: Some(Arc::new(spec.selector.clone())),
        endpoints,
        provider: Provider::Kubernetes,
    })
}

/// Istio's `ConvertProtocol`; `None` for UDP, which no listener or cluster serves.
pub(super) fn protocol(p: &KubeServicePort) -> Option<Protocol> {
    if p.protocol == "UDP" {
        return None;
    }
    let name = match &p.app_protocol {
        Some(app) => match app.as_str() {
            "kubernetes.io/h2c" => return Some(Protocol::Http2),
            "kubernetes.io/ws" => return Some(Protocol::Http),
            "kubernetes.io/wss" => return Some(Protocol::Https),
            app => app,
        },
        None => p.name.as_str(),
    };
    // `grpc-web` holds the separator, so it is looked for before the prefix is cut.
    if name.len() >= 8 && name.as_bytes()[..8].eq_ignore_ascii_case(b"grpc-web") {
        return Some(Protocol::GrpcWeb);
    }
    let prefix = name.split('-').next().unwrap_or(name);
    Some(match Protocol::parse(prefix) {
        Protocol::Unset if WELL_KNOWN_PORTS.contains(&p.port) => Protocol::Tcp,
        p => p,
    })
}

/// The endpoints of Service `r` from its EndpointSlices, port-major in `ports` order; within
/// a port, slices by name, endpoints and addresses as written, each (address, port) once.
fn endpoints(
    r: &Resource,
    ports: &[Port],
    service_source: SourceId,
    inputs: &Inputs<'_>,
    sources: &[Source],
    interner: &Interner,
    warnings: &mut Warnings,
) -> Vec<Endpoint> {
    let Some(slices) = inputs.slices.get(&(r.namespace.as_str(), r.meta.name.as_str())) else {
        return Vec::new();
    };
    // One workload per (slice, address), shared by its endpoints on every port.
    let mut workloads: HashMap<(SourceId, &str), Arc<Workload>> = HashMap::default();
    let mut missing: BTreeMap<String, Vec<SourceId>> = BTreeMap::new();
    for &(_, slice_id, slice) in slices {
        for e in slice.endpoints.iter().filter(|e| e.conditions.ready != Some(false)) {
            for a in &e.addresses {
                let pod = match inputs.pod(&r.namespace, a, e) {
                    Ok(pod) => pod,
                    Err(name) => {
                        missing.entry(format!("{a} (Pod {name})")).or_default().push(slice_id);
                        continue;
                    }
                };
                if pod.is_some_and(|p| p.meta.labels.get(DRAINING_LABEL).is_some_and(|v| !v.is_empty())) {
                    continue;
                }
                let workload = match pod {
                    Some(p) => pod_workload(p.spec, p.meta, a, slice_id, interner),
                    None => Workload {
                        address: a.as_str().into(),
                        ports: Arc::default(),
                        labels: Arc::default(),
                        network: "".into(),
                        locality: "".into(),
                        weight: 0,
                        service_account: "".into(),
                        tls_mode: TlsMode::Disabled,
                        source: slice_id,
                    },
                };
                workloads
                    .entry((slice_id, a.as_str()))
                    .or_insert_with(|| Arc::new(workload));
            }
        }
    }
    if !missing.is_empty() {
        let mut ids = vec![service_source];
        ids.extend(missing.values().flatten().copied());
        let list: Vec<&str> = missing.keys().map(String::as_str).collect();
        warnings.push(
            sources,
            &ids,
            format!(
                "Service {}/{}: endpoints whose Pod is not loaded are left out, as Istio leaves them out until it knows the Pod: {}",
                r.namespace,
                r.meta.name,
                list.join(", ")
            ),
        );
    }
    let mut out = Vec::new();
    for port in ports {
        let mut seen: Vec<&str> = Vec::new();
        for &(_, slice_id, slice) in slices {
            for sp in slice.ports.iter().filter(|sp| *sp.name == *port.name) {
                for e in &slice.endpoints {
                    for a in &e.addresses {
                        let Some(w) = workloads.get(&(slice_id, a.as_str())) else {
                            continue;
                        };
                        // Istio dedupes by (first address, port name) across slices.
                        if seen.contains(&a.as_str()) {
                            continue;
                        }
                        seen.push(a);
                        out.push(Endpoint {
                            workload: w.clone(),
                            // An unset slice port serves the port the client asked for.
                            port: if sp.port == 0 { port.number } else { sp.port },
                            port_name: port.name.clone(),
                        });
                    }
                }
            }
        }
    }
    out
}
