//! The stable JSON form of services, as `meshentry registry --output json` prints it and tools
//! and tests read it:
//!
//! `{"services":[{"host","namespace","addresses","autoAllocatedAddresses"?,"autoAllocatedBy"?,
//! "resolution","location","ports":[{"name","number","protocol","targetPort"?}],"exportTo",
//! "subjectAltNames"?,"aliases"?,"endpoints":[{"address","port","portName","labels"}]}]}`
//!
//! Optional keys (`?`) appear only when set. Nothing else is added: the shape is a contract,
//! written down in `docs/schemas/registry.schema.json` (camelCase, as every meshentry document).

use serde::Serialize;

use crate::model::{Labels, Port, Service};

/// `{"services": [...]}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryJson<'a> {
    pub services: Vec<ServiceJson<'a>>,
}

/// One service.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceJson<'a> {
    pub host: &'a str,
    pub namespace: &'a str,
    /// B2: as converted; `["0.0.0.0"]` when the ServiceEntry gives none.
    pub addresses: Vec<&'a str>,
    /// The ServiceEntry's `status.addresses` for this host, where Istio uses them (see
    /// [`Service::auto_addresses`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub auto_allocated_addresses: Vec<&'a str>,
    /// Who allocated them: `istiod` (the ServiceEntry's `status.addresses`) or `meshentry`
    /// (computed, see [`crate::allocate`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_allocated_by: Option<&'static str>,
    pub resolution: &'static str,
    pub location: &'static str,
    pub ports: Vec<PortJson<'a>>,
    /// As written; `["*"]` when absent (the mesh default, B9).
    pub export_to: Vec<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub subject_alt_names: &'a [String],
    /// The hosts of the Kubernetes ExternalName Services that stand for this one (Istio's
    /// aliases), which are matched to it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<&'a str>,
    pub endpoints: Vec<EndpointJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortJson<'a> {
    pub name: &'a str,
    pub number: u32,
    /// Upper case; `""` when unset (auto-detect, B3).
    pub protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// One endpoint of one service port.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointJson<'a> {
    /// As written (`unix://` kept); the service host for B6.
    pub address: &'a str,
    /// B4; 0 for unix sockets.
    pub port: u32,
    pub port_name: &'a str,
    pub labels: &'a Labels,
}

impl<'a> RegistryJson<'a> {
    pub fn new(services: impl IntoIterator<Item = &'a Service>) -> RegistryJson<'a> {
        RegistryJson {
            services: services.into_iter().map(ServiceJson::new).collect(),
        }
    }
}

impl<'a> ServiceJson<'a> {
    pub fn new(s: &'a Service) -> ServiceJson<'a> {
        ServiceJson {
            host: &s.host,
            namespace: &s.namespace,
            addresses: if s.addresses.is_empty() {
                vec![s.default_address()]
            } else {
                s.addresses.iter().map(|a| &*a.text).collect()
            },
            auto_allocated_addresses: s.auto_addresses.iter().map(|a| &*a.text).collect(),
            auto_allocated_by: match s.auto {
                crate::model::AutoAddresses::Status => Some("istiod"),
                crate::model::AutoAddresses::Allocated => Some("meshentry"),
                _ => None,
            },
            resolution: s.resolution.as_str(),
            location: s.location.as_str(),
            ports: s.ports.iter().map(PortJson::new).collect(),
            export_to: if s.export_to.written.is_empty() {
                vec!["*"]
            } else {
                s.export_to.written.iter().map(String::as_str).collect()
            },
            subject_alt_names: &s.subject_alt_names,
            aliases: s.aliases.iter().map(|a| &**a).collect(),
            endpoints: s
                .endpoints
                .iter()
                .map(|e| EndpointJson {
                    address: e.address(),
                    port: e.port,
                    port_name: &e.port_name,
                    labels: &e.workload.labels,
                })
                .collect(),
        }
    }
}

impl<'a> PortJson<'a> {
    pub fn new(p: &'a Port) -> PortJson<'a> {
        PortJson {
            name: &p.name,
            number: p.number,
            protocol: p.protocol.as_str(),
            target_port: p.target_port,
        }
    }
}
