use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ServiceEntryStatus, WorkloadSelector};

/// `ServiceEntry.spec`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceEntry {
    pub hosts: Vec<String>,
    pub addresses: Vec<String>,
    pub ports: Vec<ServicePort>,
    pub location: Option<Location>,
    pub resolution: Option<Resolution>,
    pub endpoints: Vec<WorkloadEntry>,
    pub workload_selector: Option<WorkloadSelector>,
    pub export_to: Vec<String>,
    pub subject_alt_names: Vec<String>,
    /// The resource's `status` (not part of `spec`): filled in by the loader, never decoded
    /// from `spec`.
    #[serde(skip)]
    pub status: ServiceEntryStatus,
}

/// `ServiceEntry.spec.ports[]` (`ServicePort`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct ServicePort {
    pub number: u32,
    pub protocol: String,
    pub name: String,
    /// 0 = unset.
    pub target_port: u32,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Location {
    #[default]
    #[serde(rename = "MESH_EXTERNAL")]
    MeshExternal,
    #[serde(rename = "MESH_INTERNAL")]
    MeshInternal,
}

impl Location {
    pub fn as_str(self) -> &'static str {
        match self {
            Location::MeshExternal => "MESH_EXTERNAL",
            Location::MeshInternal => "MESH_INTERNAL",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    #[default]
    #[serde(rename = "NONE")]
    None,
    #[serde(rename = "STATIC")]
    Static,
    #[serde(rename = "DNS")]
    Dns,
    #[serde(rename = "DNS_ROUND_ROBIN")]
    DnsRoundRobin,
    #[serde(rename = "DYNAMIC_DNS")]
    DynamicDns,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::None => "NONE",
            Resolution::Static => "STATIC",
            Resolution::Dns => "DNS",
            Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
            Resolution::DynamicDns => "DYNAMIC_DNS",
        }
    }
}

/// `WorkloadEntry.spec`, also the type of `ServiceEntry.spec.endpoints[]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadEntry {
    pub address: String,
    /// Service port name -> port on this workload.
    pub ports: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
    pub network: String,
    pub locality: String,
    /// 0 = unset (weight 1).
    pub weight: u32,
    pub service_account: String,
}

/// `WorkloadGroup.spec`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadGroup {
    pub metadata: WorkloadGroupMeta,
    pub template: WorkloadEntry,
    pub probe: Option<ReadinessProbe>,
}

/// `WorkloadGroup.spec.metadata`: labels and annotations for the generated WorkloadEntries.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadGroupMeta {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ReadinessProbe {
    pub initial_delay_seconds: i32,
    pub timeout_seconds: i32,
    pub period_seconds: i32,
    pub success_threshold: i32,
    pub failure_threshold: i32,
    pub http_get: Option<HttpHealthCheckConfig>,
    pub tcp_socket: Option<TcpHealthCheckConfig>,
    pub exec: Option<ExecHealthCheckConfig>,
    pub grpc: Option<GrpcHealthCheckConfig>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpHealthCheckConfig {
    pub path: String,
    pub port: u32,
    pub host: String,
    pub scheme: String,
    pub http_headers: Vec<HttpHeader>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct TcpHealthCheckConfig {
    pub host: String,
    pub port: u32,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct ExecHealthCheckConfig {
    pub command: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct GrpcHealthCheckConfig {
    pub port: u32,
    pub service: Option<String>,
}
