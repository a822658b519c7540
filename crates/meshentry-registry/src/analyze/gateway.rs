//! Gateway checks (Istio's `pkg/config/analysis/analyzers/gateway/`): a selector no Pod
//! matches (IST0101) and server ports the gateway's Service does not expose (IST0162), two
//! Gateways on the same workloads and port claiming the same host (IST0145), and the same
//! certificate on servers of two Gateways (IST0138).

use std::collections::BTreeMap;

use meshentry_api::model::{Server, ServerTlsSettings};

use super::lookup::PodInfo;
use super::msg;
use super::*;

pub(super) fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    let gateways = cx.gateways_by_age();
    for gw in &gateways {
        selector_and_ports(cx, gw, out);
    }
    conflicting(cx, &gateways, out);
    duplicate_certificates(&gateways, out);
}

/// Kubernetes' `labels.SelectorFromSet(...).String()`: `k=v` pairs sorted by key, joined by
/// commas; empty for no labels.
fn selector_string(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn selects(selector: &Labels, pod: &PodInfo) -> bool {
    selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
}

/// Istio's `IngressGatewayPortAnalyzer`: the selector must match a Pod (in any namespace);
/// then every server port must be a TCP port (or target port) of a Service selecting one of
/// those Pods.
fn selector_and_ports(cx: &Context<'_>, gw: &Gw<'_>, out: &mut Findings<'_>) {
    let selector = &gw.spec.selector;
    let shown = selector_string(selector);
    let mut matched = 0usize;
    let mut ports: HashSet<u32> = HashSet::new();
    let mut mapped: HashSet<u32> = HashSet::new();
    for pod in cx.pods.iter().filter(|p| selects(selector, p)) {
        matched += 1;
        for svc in cx.kube_services.iter().filter(|s| s.namespace == pod.namespace) {
            if !selects(&svc.selector, pod) {
                continue;
            }
            for p in svc.ports.iter().filter(|p| p.protocol == "TCP") {
                if p.target_port != 0 {
                    ports.insert(p.target_port);
                    mapped.insert(p.port);
                } else {
                    ports.insert(p.port);
                }
            }
        }
    }
    if matched == 0 {
        out.report(
            gw.r,
            "spec.selector",
            msg::REFERENCED_RESOURCE_NOT_FOUND,
            msg::not_found("selector", &shown),
            Some(
                "istioctl analyzes files against the Pods in them and its default ingress gateway Pod (labels istio=ingressgateway, namespace istio-system); no Pod carries these labels, so no proxy would serve this Gateway"
                    .into(),
            ),
        );
        return;
    }
    for (i, server) in gw.spec.servers.iter().enumerate() {
        let Some(port) = &server.port else { continue };
        if !ports.contains(&port.number) && !mapped.contains(&port.number) {
            out.report(
                gw.r,
                &format!("spec.servers[{i}].port.number"),
                msg::GATEWAY_PORT_NOT_DEFINED_ON_SERVICE,
                format!(
                    "The gateway is listening on a target port (port {}) that is not defined in the Service associated with its workload instances (Pod selector {shown}). If you need to access the gateway port through the gateway Service, it will not be available.",
                    port.number
                ),
                None,
            );
        }
    }
}

/// Istio's `ConflictingGatewayAnalyzer` (IST0145): Gateways select the same workloads when
/// their selectors are written alike, or when one selector's text contains the other's and a
/// Pod matches both. On the same port, a server conflicts with another Gateway's server
/// when they share a host (as written) with the same `bind`. Per Gateway and port, Istio
/// compares against the last server of the other Gateway on that port.
fn conflicting(cx: &Context<'_>, gateways: &[&Gw<'_>], out: &mut Findings<'_>) {
    // (selector, port) -> Gateway full name -> hosts of its last server on that port -> bind.
    type Servers<'s> = BTreeMap<String, BTreeMap<&'s str, &'s str>>;
    let mut by_key: BTreeMap<(String, u32), Servers<'_>> = BTreeMap::new();
    for gw in gateways {
        let sel = selector_string(&gw.spec.selector);
        for server in &gw.spec.servers {
            let port = server.port.as_ref().map_or(0, |p| p.number);
            let hosts = server
                .hosts
                .iter()
                .map(|h| (h.as_str(), server.bind.as_str()))
                .collect();
            by_key
                .entry((sel.clone(), port))
                .or_default()
                .insert(gw.full_name(), hosts);
        }
    }
    let selectors: Vec<&String> = {
        let mut v: Vec<&String> = by_key.keys().map(|(s, _)| s).collect();
        v.dedup();
        v
    };
    for gw in gateways {
        let name = gw.full_name();
        let sel = selector_string(&gw.spec.selector);
        let same: Vec<&String> = selectors
            .iter()
            .copied()
            .filter(|x| {
                **x == sel
                    || ((x.contains(sel.as_str()) || sel.contains(x.as_str())) && {
                        let other = parse_selector(x);
                        cx.pods
                            .iter()
                            .any(|p| selects(&gw.spec.selector, p) && selects(&other, p))
                    })
            })
            .collect();
        for server in &gw.spec.servers {
            let port = server.port.as_ref().map_or(0, |p| p.number);
            let mut with: Vec<&str> = Vec::new();
            for x in &same {
                let Some(servers) = by_key.get(&((*x).clone(), port)) else {
                    continue;
                };
                for (other, hosts) in servers {
                    if *other != name && server_conflicts(server, hosts) {
                        with.push(other);
                    }
                }
            }
            if with.is_empty() {
                continue;
            }
            with.sort_unstable();
            out.report(
                gw.r,
                "metadata.name",
                msg::CONFLICTING_GATEWAYS,
                format!(
                    "Conflict with gateways {} (workload selector {sel}, port {port}, hosts {}).",
                    with.join(","),
                    server.hosts.join(",")
                ),
                Some(
                    "the workloads get one listener for the port, and only one of these servers serves the shared hosts"
                        .into(),
                ),
            );
        }
    }
}

/// Istio's `CheckDuplicates` in reverse: a host written the same way, with the same bind.
fn server_conflicts(server: &Server, known: &BTreeMap<&str, &str>) -> bool {
    server
        .hosts
        .iter()
        .any(|h| known.get(h.as_str()).is_some_and(|bind| *bind == server.bind))
}

/// The inverse of [`selector_string`], as Istio's `parseSelectorFromString` reads it.
fn parse_selector(s: &str) -> Labels {
    s.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (!v.contains('=')).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Istio's `CertificateAnalyzer` (IST0138): a Gateway and another whose selector contains all
/// of its labels (any Gateway, when its selector is empty) have servers with the same
/// `credentialName`, or with the same `serverCertificate` and `privateKey` files.
fn duplicate_certificates(gateways: &[&Gw<'_>], out: &mut Findings<'_>) {
    for gw in gateways {
        let name = gw.full_name();
        for other in gateways {
            let other_name = other.full_name();
            if other_name == name || !selector_subset(&gw.spec.selector, &other.spec.selector) {
                continue;
            }
            for a in gw.spec.servers.iter().filter_map(|s| s.tls.as_ref()) {
                for b in other.spec.servers.iter().filter_map(|s| s.tls.as_ref()) {
                    if same_certificate(a, b) {
                        out.report(
                            gw.r,
                            "metadata.name",
                            msg::GATEWAY_DUPLICATE_CERTIFICATE,
                            format!(
                                "Duplicate certificate in multiple gateways {} may cause 404s if clients re-use HTTP2 connections.",
                                msg::list([name.as_str(), other_name.as_str()])
                            ),
                            None,
                        );
                    }
                }
            }
        }
    }
}

/// Istio's `selectorSubset`: every pair of `x` is in `y`.
fn selector_subset(x: &Labels, y: &Labels) -> bool {
    x.iter().all(|(k, v)| y.get(k) == Some(v))
}

/// Istio's `haveSameCertificate`.
fn same_certificate(a: &ServerTlsSettings, b: &ServerTlsSettings) -> bool {
    match (a.credential_name.is_empty(), b.credential_name.is_empty()) {
        (false, false) => a.credential_name == b.credential_name,
        (true, true) => {
            !a.server_certificate.is_empty()
                && a.server_certificate == b.server_certificate
                && !a.private_key.is_empty()
                && a.private_key == b.private_key
        }
        _ => false,
    }
}
