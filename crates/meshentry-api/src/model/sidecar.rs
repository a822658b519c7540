//! `Sidecar` (networking.istio.io): what a workload's proxy imports and listens on.

use serde::Deserialize;

use super::{ConnectionPoolSettings, Destination, ServerTlsSettings, WorkloadSelector};

/// `Sidecar.spec`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Sidecar {
    /// None = every workload of the namespace without a more specific Sidecar.
    pub workload_selector: Option<WorkloadSelector>,
    pub ingress: Vec<IstioIngressListener>,
    pub egress: Vec<IstioEgressListener>,
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// Istio `IstioIngressListener`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct IstioIngressListener {
    pub port: Option<SidecarPort>,
    pub bind: String,
    pub capture_mode: CaptureMode,
    /// `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT`, `[::]:PORT` or `unix://path`.
    pub default_endpoint: String,
    pub tls: Option<ServerTlsSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// Istio `IstioEgressListener`: with a `port`, a listener on that port only; without, the
/// catch-all that limits what the proxy imports.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct IstioEgressListener {
    pub port: Option<SidecarPort>,
    pub bind: String,
    pub capture_mode: CaptureMode,
    /// `namespace/dnsName`; namespace `*`, `.`, `~` or a name.
    pub hosts: Vec<String>,
}

/// Istio `SidecarPort`; protocol optional (auto-detect).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct SidecarPort {
    /// 0 only with a `unix://` bind.
    pub number: u32,
    pub protocol: String,
    pub name: String,
    /// Deprecated and ignored on sidecars.
    pub target_port: u32,
}

/// Istio `CaptureMode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
pub enum CaptureMode {
    #[default]
    #[serde(rename = "DEFAULT")]
    Default,
    #[serde(rename = "IPTABLES")]
    Iptables,
    #[serde(rename = "NONE")]
    None,
}

/// Istio `OutboundTrafficPolicy`: what happens to traffic for hosts the proxy does not know.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    pub mode: OutboundTrafficPolicyMode,
    /// Where ALLOW_ANY traffic goes instead of its original destination.
    pub egress_proxy: Option<Destination>,
}

/// Istio `OutboundTrafficPolicy.Mode`. `REGISTRY_ONLY` is the proto zero value, so
/// `outboundTrafficPolicy: {}` in a Sidecar means REGISTRY_ONLY (the mesh default differs).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
pub enum OutboundTrafficPolicyMode {
    #[default]
    #[serde(rename = "REGISTRY_ONLY")]
    RegistryOnly,
    #[serde(rename = "ALLOW_ANY")]
    AllowAny,
}
