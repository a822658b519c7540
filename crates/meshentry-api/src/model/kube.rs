//! The parts of Kubernetes objects meshentry uses: `Pod` and `Namespace` for a ServiceEntry's
//! `workloadSelector`, `Service` and `EndpointSlice` for the Kubernetes Services of the
//! registry (as Istio's Kubernetes registry reads them,
//! `pilot/pkg/serviceregistry/kube/conversion.go` and `kube/controller/endpointslice.go`).
//! Decoded leniently: real manifests carry much more.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    pub service_account_name: String,
    /// Deprecated alias of `serviceAccountName`, still filled in by the API server.
    pub service_account: String,
    pub containers: Vec<Container>,
    pub host_network: bool,
    pub node_name: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: String,
    pub container_port: u32,
    pub protocol: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(rename = "podIP")]
    pub pod_ip: String,
    #[serde(rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
    pub phase: String,
    pub conditions: Vec<PodCondition>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PodIp {
    pub ip: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PodCondition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

impl PodStatus {
    /// Istio sends traffic only to ready pods: the `Ready` condition when reported, else a
    /// `Running` phase with an IP (a hand-written manifest rarely carries conditions).
    pub fn is_ready(&self) -> bool {
        if self.pod_ip.is_empty() {
            return false;
        }
        match self.conditions.iter().find(|c| c.kind == "Ready") {
            Some(c) => c.status == "True",
            None => self.phase.is_empty() || self.phase == "Running",
        }
    }
}

/// A Service's `spec` (core/v1): what Istio's `ConvertService` reads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP` (also when empty), `NodePort`, `LoadBalancer` or `ExternalName`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The VIP; `None` for a headless Service; empty before the API server allocates one.
    #[serde(rename = "clusterIP")]
    pub cluster_ip: String,
    /// Every VIP of a dual-stack Service, `clusterIP` first.
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    pub ports: Vec<KubeServicePort>,
    /// The Pods whose endpoints the Service has (the EndpointSlice controller reads it).
    pub selector: BTreeMap<String, String>,
    /// The DNS name an `ExternalName` Service stands for.
    pub external_name: String,
}

/// A Kubernetes Service as loaded: its spec, and what its metadata says to Istio.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubernetesService {
    pub spec: ServiceSpec,
    /// The annotation `networking.istio.io/exportTo`, split at commas and trimmed (Istio's
    /// `ConvertService`); MeshConfig's `defaultServiceExportTo` when it is absent, once
    /// [`crate::MeshConfig::apply`] ran.
    pub export_to: Vec<String>,
}

/// The annotation that gives a Kubernetes Service Istio's `exportTo`.
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

/// `ClusterIP: None`: a headless Service.
pub const CLUSTER_IP_NONE: &str = "None";

/// `spec.ports[]` of a Service.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct KubeServicePort {
    pub name: String,
    /// `TCP` (also when empty), `UDP` or `SCTP`.
    pub protocol: String,
    /// `appProtocol`, which Istio prefers to the port name for the protocol.
    pub app_protocol: Option<String>,
    pub port: u32,
    /// A number, or the name of a container port; unset means `port`. Kept as written (see
    /// [`KubeServicePort::target_port`]) so that a value of the wrong type is reported, not lost.
    pub target_port: Option<serde_json::Value>,
    pub node_port: u32,
}

/// Kubernetes' `IntOrString` (a Service's `targetPort`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

impl Default for IntOrString {
    fn default() -> Self {
        IntOrString::Int(0)
    }
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(n) => write!(f, "{n}"),
            IntOrString::String(s) => f.write_str(s),
        }
    }
}

impl KubeServicePort {
    /// `targetPort` as Kubernetes reads it: a number or a name; `None` when unset or of
    /// another type (validation reports that).
    pub fn target_port(&self) -> Option<IntOrString> {
        match self.target_port.as_ref()? {
            serde_json::Value::Number(n) => n.as_i64().map(IntOrString::Int),
            serde_json::Value::String(s) => Some(IntOrString::String(s.clone())),
            _ => None,
        }
    }
}

/// A `discovery.k8s.io/v1` EndpointSlice: the endpoints of one Service (its label
/// `kubernetes.io/service-name`), which Istio's Kubernetes registry reads (its `Endpoints`
/// objects are not read, by Istio either).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct EndpointSlice {
    /// `IPv4`, `IPv6` or `FQDN` (Istio skips FQDN slices).
    pub address_type: String,
    pub endpoints: Vec<SliceEndpoint>,
    pub ports: Vec<EndpointPort>,
}

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label of slices a multi-cluster (MCS) controller made, which Istio does not read.
pub const MCS_SERVICE_NAME_LABEL: &str = "multicluster.kubernetes.io/service-name";

/// `endpoints[]` of an EndpointSlice.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct SliceEndpoint {
    pub addresses: Vec<String>,
    pub conditions: EndpointConditions,
    /// The Pod (usually) behind the endpoint.
    pub target_ref: Option<ObjectReference>,
    pub node_name: String,
    pub zone: String,
}

/// `endpoints[].conditions`; unset means unknown, which Kubernetes (and Istio) read as ready
/// and not terminating.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct EndpointConditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

/// A reference to another object (an endpoint's `targetRef`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectReference {
    pub kind: String,
    pub name: String,
    pub namespace: String,
}

/// `ports[]` of an EndpointSlice: the port the endpoints serve the Service port of the same
/// name on.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct EndpointPort {
    pub name: String,
    pub port: u32,
    pub protocol: String,
    pub app_protocol: Option<String>,
}
