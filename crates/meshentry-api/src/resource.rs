//! A loaded resource: its kind, metadata, typed spec and where it was written.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::model::*;
use crate::validate::Severity;
use crate::yaml::Pos;

/// The kinds meshentry reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    ServiceEntry,
    WorkloadEntry,
    WorkloadGroup,
    DestinationRule,
    VirtualService,
    Gateway,
    Sidecar,
    Pod,
    Namespace,
    Service,
    EndpointSlice,
}

impl Kind {
    /// The Kubernetes kinds meshentry reads, in the order the loader tries them.
    pub const KUBE: [Kind; 4] = [Kind::Pod, Kind::Namespace, Kind::Service, Kind::EndpointSlice];

    pub const ISTIO: [Kind; 7] = [
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::WorkloadGroup,
        Kind::DestinationRule,
        Kind::VirtualService,
        Kind::Gateway,
        Kind::Sidecar,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::WorkloadGroup => "WorkloadGroup",
            Kind::DestinationRule => "DestinationRule",
            Kind::VirtualService => "VirtualService",
            Kind::Gateway => "Gateway",
            Kind::Sidecar => "Sidecar",
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ISTIO.into_iter().chain(Kind::KUBE).find(|k| k.as_str() == s)
    }

    pub fn is_istio(self) -> bool {
        !Kind::KUBE.contains(&self)
    }

    /// The apiVersion of a Kubernetes kind (`v1`, `discovery.k8s.io/v1`); `None` for Istio's
    /// kinds, which have three.
    pub fn kube_api_version(self) -> Option<&'static str> {
        match self {
            Kind::Pod | Kind::Namespace | Kind::Service => Some("v1"),
            Kind::EndpointSlice => Some("discovery.k8s.io/v1"),
            _ => None,
        }
    }

    /// The API group of a Kubernetes kind (`""`: the core group).
    pub fn kube_group(self) -> Option<&'static str> {
        self.kube_api_version()
            .map(|v| v.rsplit_once('/').map_or("", |(group, _)| group))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The typed body of a resource.
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    ServiceEntry(ServiceEntry),
    WorkloadEntry(WorkloadEntry),
    WorkloadGroup(WorkloadGroup),
    DestinationRule(DestinationRule),
    VirtualService(VirtualService),
    Gateway(Gateway),
    Sidecar(Sidecar),
    Pod { spec: PodSpec, status: PodStatus },
    Namespace,
    Service(KubernetesService),
    EndpointSlice(EndpointSlice),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::ServiceEntry(_) => Kind::ServiceEntry,
            Spec::WorkloadEntry(_) => Kind::WorkloadEntry,
            Spec::WorkloadGroup(_) => Kind::WorkloadGroup,
            Spec::DestinationRule(_) => Kind::DestinationRule,
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::Gateway(_) => Kind::Gateway,
            Spec::Sidecar(_) => Kind::Sidecar,
            Spec::Pod { .. } => Kind::Pod,
            Spec::Namespace => Kind::Namespace,
            Spec::Service(_) => Kind::Service,
            Spec::EndpointSlice(_) => Kind::EndpointSlice,
        }
    }
}

/// Where a resource (or a finding) was written.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub file: Arc<str>,
    pub pos: Pos,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.pos.line, self.pos.column)
    }
}

/// One resource as loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub api_version: String,
    pub meta: ObjectMeta,
    /// `metadata.namespace`, or the loader's default namespace when absent.
    pub namespace: String,
    pub spec: Spec,
    pub origin: Origin,
    /// Position in load order. Istio orders same-host resources oldest first by
    /// `creationTimestamp`; files have none, so load order stands in for age (see
    /// [`Resource::age_key`]).
    pub order: usize,
    /// False when validation found errors in this resource.
    pub valid: bool,
}

impl Resource {
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// Sort key for "oldest first": `creationTimestamp` when given (RFC 3339 in UTC sorts as
    /// text), else load order, then namespace and name as Istio breaks ties.
    pub fn age_key(&self) -> (&str, usize, &str, &str) {
        (
            self.meta.creation_timestamp.as_deref().unwrap_or(""),
            self.order,
            &self.namespace,
            &self.meta.name,
        )
    }

    /// `Kind namespace/name`, as findings print it.
    pub fn display_name(&self) -> String {
        format!("{} {}/{}", self.kind(), self.namespace, self.meta.name)
    }
}

/// One validation finding, placed on the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// Empty for problems that precede knowing the resource (YAML syntax, missing kind).
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Field path from the resource root, e.g. `spec.ports[1].number`; empty for a whole
    /// document.
    pub field: String,
    pub severity: Severity,
    /// `istioctl analyze`'s message code (`IST0101`) when Istio has one for this finding;
    /// empty otherwise.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub code: String,
    pub message: String,
}

impl fmt::Display for Finding {
    /// `FILE:LINE:COL: Kind namespace/name: spec.field.path: message`, with `warning: ` before
    /// the message of a warning; parts that are unknown are left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.kind.is_empty() {
            write!(f, "{} {}/{}: ", self.kind, self.namespace, self.name)?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        match self.severity {
            Severity::Error => {}
            Severity::Warning => f.write_str("warning: ")?,
            Severity::Info => f.write_str("info: ")?,
        }
        if !self.code.is_empty() {
            write!(f, "{}: ", self.code)?;
        }
        f.write_str(&self.message)
    }
}

/// What meshentry does with a kind it recognises but does not load as a [`Resource`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Treatment {
    /// Read for one purpose, given here.
    Used(&'static str),
    /// Not read, for the reason given here.
    Ignored(&'static str),
}

impl fmt::Display for Treatment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Treatment::Used(why) => write!(f, "used: {why}"),
            Treatment::Ignored(why) => write!(f, "ignored: {why}"),
        }
    }
}

/// A kind that appears in Istio manifests beside the kinds meshentry reads: its API group
/// (`""` for the Kubernetes core group) and what meshentry does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OtherKind {
    pub group: &'static str,
    pub kind: &'static str,
    pub treatment: Treatment,
}

/// The Kubernetes Gateway API groups, standard and experimental.
pub const GATEWAY_API_GROUPS: [&str; 2] = ["gateway.networking.k8s.io", "gateway.networking.x-k8s.io"];

/// The versions Istio's CRDs serve for each kind of Istio's own API groups (from its
/// `customresourcedefinitions.gen.yaml`). Istio's API server refuses any other kind or version
/// in these groups (`no matches for kind`), so meshentry reports them as errors.
pub const ISTIO_SERVED: &[(&str, &str, &[&str])] = &[
    ("networking.istio.io", "ServiceEntry", &NETWORKING_VERSIONS),
    ("networking.istio.io", "WorkloadEntry", &NETWORKING_VERSIONS),
    ("networking.istio.io", "WorkloadGroup", &NETWORKING_VERSIONS),
    ("networking.istio.io", "DestinationRule", &NETWORKING_VERSIONS),
    ("networking.istio.io", "VirtualService", &NETWORKING_VERSIONS),
    ("networking.istio.io", "Gateway", &NETWORKING_VERSIONS),
    ("networking.istio.io", "Sidecar", &NETWORKING_VERSIONS),
    ("networking.istio.io", "EnvoyFilter", &["v1alpha3"]),
    ("networking.istio.io", "ProxyConfig", &["v1beta1"]),
    ("security.istio.io", "AuthorizationPolicy", &["v1", "v1beta1"]),
    ("security.istio.io", "PeerAuthentication", &["v1", "v1beta1"]),
    ("security.istio.io", "RequestAuthentication", &["v1", "v1beta1"]),
    ("telemetry.istio.io", "Telemetry", &["v1", "v1alpha1"]),
    ("extensions.istio.io", "WasmPlugin", &["v1alpha1"]),
    ("extensions.istio.io", "TrafficExtension", &["v1alpha1"]),
];

const NETWORKING_VERSIONS: [&str; 3] = ["v1alpha3", "v1beta1", "v1"];

/// Whether `group` is one of Istio's API groups ([`ISTIO_SERVED`]).
pub fn is_istio_group(group: &str) -> bool {
    ISTIO_SERVED.iter().any(|(g, _, _)| *g == group)
}

// Reasons shared by several kinds.
const NOT_ENVOY: &str = "meshentry is not Envoy, so Envoy configuration patches have nothing to apply to";
const NO_INBOUND: &str = "meshentry enforces no inbound policy";
const NO_EXTENSIONS: &str = "meshentry runs no proxy extensions (Wasm or Lua)";
const GATEWAY_API: &str =
    "meshentry does not implement the Kubernetes Gateway API; it serves Istio Gateways and VirtualServices";
const NO_ENDPOINTS: &str = "meshentry reads a Kubernetes Service's endpoints from its EndpointSlices, as Istio does";
const WORKLOAD_CONTROLLER: &str =
    "meshentry takes workload endpoints from Pods and WorkloadEntries, not from the controllers that create them";
const NO_K8S_API: &str = "meshentry runs outside Kubernetes and does not use this cluster object";
const NO_SECRETS: &str = "meshentry reads certificates from files (serverCertificate, privateKey, caCertificates), not from Kubernetes Secrets";

/// Every kind meshentry recognises beside the ones it reads ([`Kind`]), with what it does
/// with each. `meshentry validate` says this once per kind; the same table is in
/// `docs/compatibility.md`.
pub const OTHER_KINDS: &[OtherKind] = &[
    // Istio's other kinds.
    OtherKind {
        group: "networking.istio.io",
        kind: "EnvoyFilter",
        treatment: Treatment::Ignored(NOT_ENVOY),
    },
    OtherKind {
        group: "networking.istio.io",
        kind: "ProxyConfig",
        treatment: Treatment::Ignored("meshentry takes its proxy settings from its command line"),
    },
    OtherKind {
        group: "security.istio.io",
        kind: "AuthorizationPolicy",
        treatment: Treatment::Ignored(NO_INBOUND),
    },
    OtherKind {
        group: "security.istio.io",
        kind: "PeerAuthentication",
        treatment: Treatment::Ignored(
            "meshentry enforces no inbound policy; its outbound TLS follows DestinationRules",
        ),
    },
    OtherKind {
        group: "security.istio.io",
        kind: "RequestAuthentication",
        treatment: Treatment::Ignored("meshentry enforces no inbound policy and validates no JWTs"),
    },
    OtherKind {
        group: "telemetry.istio.io",
        kind: "Telemetry",
        treatment: Treatment::Ignored(
            "meshentry's access log and metrics are set by its flags (--access-log, /stats/prometheus)",
        ),
    },
    OtherKind {
        group: "extensions.istio.io",
        kind: "WasmPlugin",
        treatment: Treatment::Ignored(NO_EXTENSIONS),
    },
    OtherKind {
        group: "extensions.istio.io",
        kind: "TrafficExtension",
        treatment: Treatment::Ignored(NO_EXTENSIONS),
    },
    // The Kubernetes Gateway API.
    OtherKind {
        group: "gateway.networking.k8s.io",
        kind: "Gateway",
        treatment: Treatment::Used(
            "a VirtualService's `gateways` may name it, as in Istio (its listeners and routes are not served)",
        ),
    },
    gateway_api("GatewayClass"),
    gateway_api("HTTPRoute"),
    gateway_api("GRPCRoute"),
    gateway_api("TLSRoute"),
    gateway_api("TCPRoute"),
    gateway_api("UDPRoute"),
    gateway_api("ReferenceGrant"),
    gateway_api("BackendTLSPolicy"),
    gateway_api("BackendLBPolicy"),
    gateway_api("ListenerSet"),
    gateway_api_x("XBackendTrafficPolicy"),
    gateway_api_x("XListenerSet"),
    gateway_api_x("XMesh"),
    gateway_api_x("XBackend"),
    OtherKind {
        group: "inference.networking.k8s.io",
        kind: "InferencePool",
        treatment: Treatment::Ignored(GATEWAY_API),
    },
    // Kubernetes.
    OtherKind {
        group: "",
        kind: "Endpoints",
        treatment: Treatment::Ignored(NO_ENDPOINTS),
    },
    OtherKind {
        group: "",
        kind: "Secret",
        treatment: Treatment::Ignored(NO_SECRETS),
    },
    OtherKind {
        group: "",
        kind: "ConfigMap",
        treatment: Treatment::Ignored(
            "meshentry reads no ConfigMaps (its mesh-wide settings come from its command line)",
        ),
    },
    OtherKind {
        group: "",
        kind: "ServiceAccount",
        treatment: Treatment::Ignored(
            "identities come from WorkloadEntry and Pod `serviceAccount` fields and the proxy's certificate",
        ),
    },
    k8s("", "Node"),
    k8s("", "PersistentVolume"),
    k8s("", "PersistentVolumeClaim"),
    k8s("", "LimitRange"),
    k8s("", "ResourceQuota"),
    workload("", "ReplicationController"),
    workload("apps", "Deployment"),
    workload("apps", "StatefulSet"),
    workload("apps", "DaemonSet"),
    workload("apps", "ReplicaSet"),
    workload("batch", "Job"),
    workload("batch", "CronJob"),
    k8s("autoscaling", "HorizontalPodAutoscaler"),
    k8s("policy", "PodDisruptionBudget"),
    k8s("rbac.authorization.k8s.io", "Role"),
    k8s("rbac.authorization.k8s.io", "RoleBinding"),
    k8s("rbac.authorization.k8s.io", "ClusterRole"),
    k8s("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    OtherKind {
        group: "networking.k8s.io",
        kind: "Ingress",
        treatment: Treatment::Ignored(GATEWAY_API_INGRESS),
    },
    OtherKind {
        group: "networking.k8s.io",
        kind: "IngressClass",
        treatment: Treatment::Ignored(GATEWAY_API_INGRESS),
    },
    OtherKind {
        group: "networking.k8s.io",
        kind: "NetworkPolicy",
        treatment: Treatment::Ignored(
            "a NetworkPolicy is enforced by the cluster's network plugin; meshentry's egress control is the outbound traffic policy",
        ),
    },
    k8s("apiextensions.k8s.io", "CustomResourceDefinition"),
    k8s("admissionregistration.k8s.io", "MutatingWebhookConfiguration"),
    k8s("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"),
    k8s("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    k8s("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding"),
    k8s("coordination.k8s.io", "Lease"),
    k8s("certificates.k8s.io", "CertificateSigningRequest"),
    k8s("certificates.k8s.io", "ClusterTrustBundle"),
    k8s("scheduling.k8s.io", "PriorityClass"),
    k8s("storage.k8s.io", "StorageClass"),
];

const GATEWAY_API_INGRESS: &str =
    "meshentry does not implement Kubernetes Ingress; it serves Istio Gateways and VirtualServices";

const fn gateway_api(kind: &'static str) -> OtherKind {
    OtherKind {
        group: "gateway.networking.k8s.io",
        kind,
        treatment: Treatment::Ignored(GATEWAY_API),
    }
}

const fn gateway_api_x(kind: &'static str) -> OtherKind {
    OtherKind {
        group: "gateway.networking.x-k8s.io",
        kind,
        treatment: Treatment::Ignored(GATEWAY_API),
    }
}

const fn workload(group: &'static str, kind: &'static str) -> OtherKind {
    OtherKind {
        group,
        kind,
        treatment: Treatment::Ignored(WORKLOAD_CONTROLLER),
    }
}

const fn k8s(group: &'static str, kind: &'static str) -> OtherKind {
    OtherKind {
        group,
        kind,
        treatment: Treatment::Ignored(NO_K8S_API),
    }
}

/// The entry of [`OTHER_KINDS`] for `kind` in `group`.
pub fn other_kind(group: &str, kind: &str) -> Option<&'static OtherKind> {
    OTHER_KINDS.iter().find(|k| k.group == group && k.kind == kind)
}

/// A Kubernetes Gateway API Gateway (`gateway.networking.k8s.io`), kept so that VirtualService
/// `gateways` references to it resolve, as Istio's analyzer resolves them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeGateway {
    /// `metadata.namespace`, or the loader's default namespace.
    pub namespace: String,
    pub name: String,
    /// Each listener's `hostname`; `None` for a listener without one (it serves every host).
    pub hostnames: Vec<Option<String>>,
    pub origin: Origin,
}
