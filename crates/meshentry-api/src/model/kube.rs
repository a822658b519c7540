//! The parts of Kubernetes `Pod` and `Namespace` that matter to a ServiceEntry's
//! `workloadSelector`. Decoded leniently: real manifests carry much more.

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
