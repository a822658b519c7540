//! The checks on Kubernetes Services and EndpointSlices: only what would leave one unusable
//! to the registry (a port it cannot serve, an address it cannot dial), or what Istio quietly
//! passes over (a slice of no Service, an FQDN slice). The API server enforces the rest of
//! their schema; meshentry reads them leniently, as it reads Pods.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::Report;
use crate::model::{
    CLUSTER_IP_NONE, EndpointSlice, IntOrString, MCS_SERVICE_NAME_LABEL, SERVICE_NAME_LABEL, ServiceSpec,
};

const SERVICE_TYPES: [&str; 4] = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];

fn valid_port(n: u32) -> bool {
    (1..=65535).contains(&n)
}

/// A Service's `spec`.
pub fn validate_service(spec: &ServiceSpec, report: &mut Report) {
    if !spec.kind.is_empty() && !SERVICE_TYPES.contains(&spec.kind.as_str()) {
        report.error(
            "spec.type",
            format!(
                "unknown Service type {:?} (one of {})",
                spec.kind,
                SERVICE_TYPES.join(", ")
            ),
        );
    }
    if spec.kind == "ExternalName" && spec.external_name.is_empty() {
        report.warn(
            "spec.externalName",
            "an ExternalName Service without externalName: Istio reads it as an ordinary Service with no address",
        );
    }
    if !spec.cluster_ip.is_empty() && spec.cluster_ip != CLUSTER_IP_NONE && spec.cluster_ip.parse::<IpAddr>().is_err() {
        report.error(
            "spec.clusterIP",
            format!("clusterIP {:?} is neither an IP address nor None", spec.cluster_ip),
        );
    }
    for (i, ip) in spec.cluster_ips.iter().enumerate() {
        if ip != CLUSTER_IP_NONE && ip.parse::<IpAddr>().is_err() {
            report.error(
                format!("spec.clusterIPs[{i}]"),
                format!("{ip:?} is neither an IP address nor None"),
            );
        }
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        if !valid_port(p.port) {
            report.error(
                format!("{path}.port"),
                format!("port number {} must be in the range 1..65535", p.port),
            );
        }
        if !p.protocol.is_empty() && !PROTOCOLS.contains(&p.protocol.as_str()) {
            report.error(
                format!("{path}.protocol"),
                format!("unknown protocol {:?} (one of {})", p.protocol, PROTOCOLS.join(", ")),
            );
        }
        match (p.target_port.as_ref(), p.target_port()) {
            (None, _) => {}
            (Some(_), Some(IntOrString::Int(n))) if !(1..=65535).contains(&n) => report.error(
                format!("{path}.targetPort"),
                format!("target port {n} must be in the range 1..65535"),
            ),
            (Some(_), Some(IntOrString::String(s))) if s.is_empty() => {
                report.error(format!("{path}.targetPort"), "target port name is empty")
            }
            (Some(_), Some(_)) => {}
            (Some(v), None) => report.error(
                format!("{path}.targetPort"),
                format!("targetPort must be a port number or a port name, found {v}"),
            ),
        }
        // Istio matches endpoints to ports by name: two ports of one name get each other's.
        if let Some(first) = names.insert(p.name.as_str(), i) {
            report.error(
                format!("{path}.name"),
                format!(
                    "port name {:?} is also the name of spec.ports[{first}]: endpoints are matched to ports by name",
                    p.name
                ),
            );
        } else if p.name.is_empty() && spec.ports.len() > 1 {
            report.error(
                format!("{path}.name"),
                "a Service with several ports must name each (endpoints are matched to ports by name)",
            );
        }
    }
}

/// An EndpointSlice: `labels` are its `metadata.labels`.
pub fn validate_endpoint_slice(slice: &EndpointSlice, labels: &BTreeMap<String, String>, report: &mut Report) {
    match labels.get(SERVICE_NAME_LABEL) {
        None => report.warn(
            "metadata.labels",
            format!("no label {SERVICE_NAME_LABEL}: the slice belongs to no Service, and Istio does not read it"),
        ),
        Some(_) if labels.contains_key(MCS_SERVICE_NAME_LABEL) => report.warn(
            "metadata.labels",
            format!(
                "label {MCS_SERVICE_NAME_LABEL}: a multi-cluster slice, which Istio's Kubernetes registry does not read"
            ),
        ),
        Some(_) => {}
    }
    let ip_family = match slice.address_type.as_str() {
        "IPv4" => Some(true),
        "IPv6" => Some(false),
        "FQDN" => {
            report.warn(
                "addressType",
                "an FQDN slice: Istio does not read its endpoints (istio/istio#34995)",
            );
            None
        }
        other => {
            report.error(
                "addressType",
                format!("unknown addressType {other:?} (one of IPv4, IPv6, FQDN)"),
            );
            None
        }
    };
    if let Some(v4) = ip_family {
        for (i, e) in slice.endpoints.iter().enumerate() {
            for (j, a) in e.addresses.iter().enumerate() {
                let ok = match a.parse::<IpAddr>() {
                    Ok(IpAddr::V4(_)) => v4,
                    Ok(IpAddr::V6(_)) => !v4,
                    Err(_) => false,
                };
                if !ok {
                    report.error(
                        format!("endpoints[{i}].addresses[{j}]"),
                        format!("{a:?} is not an {} address", slice.address_type),
                    );
                }
            }
        }
    }
    for (i, p) in slice.ports.iter().enumerate() {
        if p.port > 65535 {
            report.error(
                format!("ports[{i}].port"),
                format!("port number {} must be in the range 0..65535", p.port),
            );
        }
    }
}
