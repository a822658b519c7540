//! ServiceEntry (A12-A22), WorkloadEntry (A20, A23) and WorkloadGroup.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::Report;
use super::common::*;
use crate::model::{Location, Resolution, ServiceEntry, WorkloadEntry, WorkloadGroup};

/// The label that opts a ServiceEntry out of VIP auto-allocation (`"false"`, any case).
pub const AUTOALLOCATE_LABEL: &str = "networking.istio.io/enable-autoallocate-ip";

/// The label that puts a resource behind a waypoint (any value but `none`).
const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";

/// Whether Istio (1.25 and later, where `PILOT_ENABLE_IP_AUTOALLOCATE` is on by default) gives
/// this ServiceEntry VIPs of its own: not for resolution NONE, not when it has addresses, and
/// not when its [`AUTOALLOCATE_LABEL`] is `false`.
pub fn auto_allocates(se: &ServiceEntry, labels: &BTreeMap<String, String>) -> bool {
    se.resolution.unwrap_or_default() != Resolution::None
        && se.addresses.is_empty()
        && !labels
            .get(AUTOALLOCATE_LABEL)
            .is_some_and(|v| v.eq_ignore_ascii_case("false"))
}

/// Validates `ServiceEntry.spec` in `namespace`; `labels` are the resource's own
/// (`metadata.labels`), which switch VIP auto-allocation and waypoints.
pub fn validate_service_entry(se: &ServiceEntry, namespace: &str, labels: &BTreeMap<String, String>, r: &mut Report) {
    // A0/A11: a bad selector stops validation, as in Istio.
    if let Some(sel) = &se.workload_selector
        && !validate_selector(r, "spec.workloadSelector", &sel.labels, "service entry")
    {
        return;
    }
    if se.workload_selector.is_some() && !se.endpoints.is_empty() {
        r.error(
            "spec.workloadSelector",
            "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
        );
    }

    let resolution = se.resolution.unwrap_or_default();

    // A13
    if se.hosts.is_empty() {
        r.error("spec.hosts", "service entry must have at least one host");
    }
    for (i, host) in se.hosts.iter().enumerate() {
        let p = format!("spec.hosts[{i}]");
        if host == "*" {
            r.error(&p, "invalid host *");
            continue;
        }
        if let Some(e) = wildcard_domain_error(host) {
            r.error(&p, e);
        }
        // DYNAMIC_DNS resolves whatever name its wildcard matches, so any wildcard will do.
        if resolution != Resolution::DynamicDns && is_partial_wildcard(host) {
            r.warn(&p, format!("partial wildcard {host:?} not allowed"));
        }
    }

    // A14: Istio counts an entry as a CIDR by its `/`, valid or not.
    for (i, addr) in se.addresses.iter().enumerate() {
        if let Some(e) = ip_or_cidr_error(addr) {
            r.error(format!("spec.addresses[{i}]"), e);
        }
    }
    if se.addresses.iter().any(|a| is_cidr(a)) && !matches!(resolution, Resolution::None | Resolution::Static) {
        r.error(
            "spec.addresses",
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }

    // A15
    let auto_allocation = auto_allocates(se, labels);
    let mut names: Vec<&str> = Vec::new();
    let mut numbers: Vec<u32> = Vec::new();
    for (i, port) in se.ports.iter().enumerate() {
        let p = format!("spec.ports[{i}]");
        if names.contains(&port.name.as_str()) {
            r.error(
                format!("{p}.name"),
                format!("service entry port name {:?} already defined", port.name),
            );
        }
        names.push(&port.name);
        if numbers.contains(&port.number) {
            r.error(
                format!("{p}.number"),
                format!("service entry port {} already defined", port.number),
            );
        }
        numbers.push(port.number);
        validate_port_number(r, &format!("{p}.number"), port.number);
        if port.target_port != 0 {
            validate_port_number(r, &format!("{p}.targetPort"), port.target_port);
        }
        validate_port_name(r, &format!("{p}.name"), &port.name);
        validate_protocol(r, &format!("{p}.protocol"), &port.protocol);
        // Istio compares the protocol as written here: `tcp` does not warn.
        if se.addresses.is_empty() && !auto_allocation && (port.protocol.is_empty() || port.protocol == "TCP") {
            r.warn(&p, "addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is not enabled");
        }
    }

    match resolution {
        // A16
        Resolution::None => {
            if !se.endpoints.is_empty() {
                r.error(
                    "spec.endpoints",
                    "no endpoints should be provided for resolution type none",
                );
            }
            if se.workload_selector.is_some() {
                r.warn(
                    "spec.workloadSelector",
                    "workloadSelector should not be set when resolution mode is NONE",
                );
            }
            // Not Istio's: Istio accepts this silently, and forwards the same way.
            let unset = if se.resolution.is_none() { " (the default)" } else { "" };
            for (i, host) in se.hosts.iter().enumerate() {
                if host.starts_with('*') && host != "*" {
                    r.warn(
                        format!("spec.hosts[{i}]"),
                        format!(
                            "wildcard host {host:?} with resolution NONE{unset}: a connection whose Host or SNI matches it \
                             is forwarded to whatever address the client dialed, so even under REGISTRY_ONLY any IP is \
                             reachable by naming a matching host (Istio does the same); to reach only the service's own \
                             endpoints, use resolution DNS, or STATIC with endpoints (Istio's DYNAMIC_DNS also resolves \
                             the requested name; meshentry does not support it yet)"
                        ),
                    );
                }
            }
        }
        // A17: inline endpoints are WorkloadEntries whose ports must be the service's.
        Resolution::Static => {
            for (i, ep) in se.endpoints.iter().enumerate() {
                validate_endpoint(r, &format!("spec.endpoints[{i}]"), ep, Some(names.as_slice()), false);
            }
        }
        // A18
        Resolution::Dns | Resolution::DnsRoundRobin => {
            let mode = resolution.as_str();
            if se.endpoints.is_empty() {
                // Istio reports the first host that is not an FQDN only.
                if let Some((i, e)) = se
                    .hosts
                    .iter()
                    .enumerate()
                    .find_map(|(i, h)| fqdn_error(h).map(|e| (i, e)))
                {
                    r.error(
                        format!("spec.hosts[{i}]"),
                        format!("hosts must be FQDN or contain only prefix wildcards if no endpoints are provided for resolution mode {mode}, {e}"),
                    );
                }
            }
            if resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
                r.error(
                    "spec.endpoints",
                    format!("there must only be 0 or 1 endpoint for resolution mode {mode}"),
                );
            }
            // Istio checks DNS endpoints on their own: an address that is an IP or an FQDN
            // (an empty one is neither), labels and ports, nothing else.
            for (i, ep) in se.endpoints.iter().enumerate() {
                let p = format!("spec.endpoints[{i}]");
                if ep.address.parse::<IpAddr>().is_err() && fqdn_error(&ep.address).is_some() {
                    r.error(
                        format!("{p}.address"),
                        format!("endpoint address {:?} is not a valid FQDN or an IP address", ep.address),
                    );
                }
                validate_labels(r, &format!("{p}.labels"), &ep.labels);
                validate_endpoint_ports(r, &p, ep, Some(names.as_slice()));
            }
            // The first TCP-family port decides (Istio's `IsTCP`: TCP, HTTPS, TLS, MONGO,
            // REDIS, MYSQL; not an unset protocol).
            if !se.addresses.is_empty() && se.hosts.len() > 1 && se.ports.iter().any(|p| is_tcp_protocol(&p.protocol)) {
                r.warn(
                    "spec.hosts",
                    "service entry can not have more than one host specified simultaneously with address and tcp port",
                );
            }
        }
        // A21: only meaningful with ambient waypoints; validated so configs written for them load.
        Resolution::DynamicDns => {
            let mode = resolution.as_str();
            if se.hosts.is_empty() {
                r.error(
                    "spec.hosts",
                    format!("at least one wildcard host must be provided for resolution type {mode}"),
                );
            }
            for (i, host) in se.hosts.iter().enumerate() {
                if !host.starts_with('*') {
                    r.error(
                        format!("spec.hosts[{i}]"),
                        format!("host must be wildcarded for resolution mode {mode}"),
                    );
                }
            }
            // Istio's messages run two words together ("generatedfrom", "hostsfield").
            if !se.addresses.is_empty() {
                r.error(
                    "spec.addresses",
                    format!("addresses cannot be set for resolution type {mode}. HTTP route domains will only be generatedfrom the hosts field values"),
                );
            }
            if !se.endpoints.is_empty() {
                r.error(
                    "spec.endpoints",
                    format!("endpoints cannot be set for resolution type {mode}. Destination IP address determined from hostsfield values"),
                );
            }
            for (i, port) in se.ports.iter().enumerate() {
                if !matches!(parse_protocol(&port.protocol), Some("HTTP" | "TLS" | "GRPC" | "HTTP2")) {
                    r.error(
                        format!("spec.ports[{i}].protocol"),
                        format!("only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type {mode}"),
                    );
                }
            }
            let waypoint = labels
                .get(USE_WAYPOINT_LABEL)
                .is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case("none"));
            if se.location == Some(Location::MeshInternal) && waypoint {
                r.error(
                    "spec.location",
                    format!("location MESH_INTERNAL with resolution type {mode} is not supported when using waypoints"),
                );
            }
        }
    }

    // A19
    if resolution != Resolution::None && se.hosts.len() > 1 {
        let non_http_tls = se
            .ports
            .iter()
            .any(|p| !is_http_protocol(&p.protocol) && !is_tls_protocol(&p.protocol));
        if non_http_tls {
            r.error("spec.hosts", "multiple hosts provided with non-HTTP, non-TLS ports");
        }
    }

    validate_export_to(r, "spec.exportTo", namespace, &se.export_to, true);
}

/// A20, Istio's `validateWorkloadEntry`: an inline STATIC endpoint (`service_ports` are the
/// names of the ServiceEntry's ports, `allow_fqdn` false) or a WorkloadEntry (`None`, true).
fn validate_endpoint(r: &mut Report, path: &str, ep: &WorkloadEntry, service_ports: Option<&[&str]>, allow_fqdn: bool) {
    let addr = &ep.address;
    if addr.is_empty() {
        if ep.network.is_empty() {
            // Istio stops at this one.
            r.error(format!("{path}.address"), "address is required");
            return;
        }
        r.warn(
            format!("{path}.address"),
            format!("address is unset with network {:?}", ep.network),
        );
    }
    let unix = addr.strip_prefix("unix://");
    if let Some(unix) = unix {
        if let Some(e) = unix_path_error(unix) {
            r.error(format!("{path}.address"), e);
        }
        if !ep.ports.is_empty() {
            r.error(
                format!("{path}.ports"),
                format!("unix endpoint {addr} must not include ports"),
            );
        }
    } else if !addr.is_empty() && addr.parse::<IpAddr>().is_err() {
        if !allow_fqdn {
            r.error(
                format!("{path}.address"),
                format!("endpoint address {addr:?} is not a valid IP address"),
            );
        } else if fqdn_error(addr).is_some() {
            r.error(
                format!("{path}.address"),
                format!("endpoint address {addr:?} is not a valid FQDN or an IP address"),
            );
        }
    }
    validate_endpoint_ports(r, path, ep, service_ports);
    validate_labels(r, &format!("{path}.labels"), &ep.labels);
    if let Some(ports) = service_ports
        && unix.is_some()
    {
        // Istio counts distinct port names.
        let mut distinct = ports.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != 1 {
            r.error(
                format!("{path}.address"),
                "exactly 1 service port required for unix endpoints",
            );
        }
    }
}

/// An endpoint's `ports`: each a port name and number, and, inside a ServiceEntry, the name of
/// one of its ports (`service_ports`).
fn validate_endpoint_ports(r: &mut Report, path: &str, ep: &WorkloadEntry, service_ports: Option<&[&str]>) {
    for (name, port) in &ep.ports {
        let p = field(&format!("{path}.ports"), name);
        if let Some(ports) = service_ports
            && !ports.contains(&name.as_str())
        {
            r.error(&p, format!("endpoint port {port} is not defined by the service entry"));
        }
        validate_port_name(r, &p, name);
        validate_port_number(r, &p, *port);
    }
}

/// Validates `WorkloadEntry.spec` (A23: hostnames allowed as addresses).
pub fn validate_workload_entry(we: &WorkloadEntry, r: &mut Report) {
    validate_endpoint(r, "spec", we, None, true);
}

/// Validates `WorkloadGroup.spec`, as Istio's `ValidateWorkloadGroup` and its CRD schema do.
/// `template_given`: whether the spec has a `template` at all (`template: {}` counts), which
/// the typed spec cannot tell.
///
/// The template is not a WorkloadEntry to Istio: its address is filled in when a workload
/// registers, so any address (or none) is accepted, and neither are its labels checked; only
/// the schema's rules on its ports and unix addresses apply.
pub fn validate_workload_group(wg: &WorkloadGroup, template_given: bool, r: &mut Report) {
    if !template_given {
        r.error("spec.template", "template is required");
        return;
    }
    // Istio stops at bad metadata labels.
    let mut labels = Report::default();
    validate_labels(&mut labels, "spec.metadata.labels", &wg.metadata.labels);
    if labels.has_errors() {
        for p in labels.problems {
            r.error(p.path, format!("invalid labels: {}", p.message));
        }
        return;
    }
    let t = &wg.template;
    if let Some(unix) = t.address.strip_prefix("unix://") {
        // The CRD's rules, with its messages.
        if !unix.starts_with('/') && !unix.starts_with('@') {
            r.error(
                "spec.template.address",
                "UDS must be an absolute path or abstract socket",
            );
        }
        if unix.ends_with('/') {
            r.error("spec.template.address", "UDS may not be a dir");
        }
        if !t.ports.is_empty() {
            r.error("spec.template", "UDS may not include ports");
        }
    }
    for (name, port) in &t.ports {
        let p = field("spec.template.ports", name);
        validate_port_name(r, &p, name);
        validate_port_number(r, &p, *port);
    }
    if let Some(probe) = &wg.probe {
        validate_readiness_probe(r, "spec.probe", probe);
    }
}

/// Istio's `validateReadinessProbe`.
fn validate_readiness_probe(r: &mut Report, path: &str, probe: &crate::model::ReadinessProbe) {
    for (field_name, value) in [
        ("periodSeconds", probe.period_seconds),
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if value < 0 {
            r.error(
                format!("{path}.{field_name}"),
                format!("{field_name} must be non-negative"),
            );
        }
    }
    let methods = [
        probe.http_get.is_some(),
        probe.tcp_socket.is_some(),
        probe.exec.is_some(),
        probe.grpc.is_some(),
    ];
    if methods.iter().filter(|m| **m).count() > 1 {
        // A proto oneof: Istio's decoder refuses this before validation.
        r.error(path, "only one health check method may be set");
        return;
    }
    if let Some(h) = &probe.http_get {
        validate_port_number(r, &format!("{path}.httpGet.port"), h.port);
        if !matches!(h.scheme.as_str(), "" | "HTTPS" | "HTTP") {
            r.error(
                format!("{path}.httpGet.scheme"),
                "httpGet.scheme must be one of \"HTTPS\", \"HTTP\"",
            );
        }
        for (i, header) in h.http_headers.iter().enumerate() {
            let p = format!("{path}.httpGet.httpHeaders[{i}].name");
            if header.name.is_empty() {
                r.error(p, "header name cannot be empty");
            } else if !header.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                r.error(p, format!("header name {} is not a valid header name", header.name));
            }
        }
    } else if let Some(t) = &probe.tcp_socket {
        validate_port_number(r, &format!("{path}.tcpSocket.port"), t.port);
    } else if let Some(e) = &probe.exec {
        if e.command.is_empty() {
            r.error(format!("{path}.exec.command"), "exec.command is required");
        }
    } else if probe.grpc.is_some() {
        // The API has a grpc probe, but Istio's validation knows only the other three.
        r.error(
            format!("{path}.grpc"),
            "unknown health check method *v1alpha3.ReadinessProbe_Grpc",
        );
    } else {
        r.error(path, "unknown health check method <nil>");
    }
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;
    use crate::de::{DecodeCx, decode};
    use crate::yaml::parse_stream;

    fn se(yaml: &str) -> Vec<String> {
        se_labeled(yaml, &[])
    }

    /// [`se`] for a ServiceEntry with these `metadata.labels`.
    fn se_labeled(yaml: &str, labels: &[(&str, &str)]) -> Vec<String> {
        let doc = parse_stream(yaml).unwrap().remove(0);
        let cx = DecodeCx::new(true);
        let spec: ServiceEntry = decode(&doc, "spec", &cx);
        assert!(cx.into_issues().is_empty(), "fixture must decode cleanly");
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut r = Report::default();
        validate_service_entry(&spec, "ns", &labels, &mut r);
        r.problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect()
    }

    const BASE: &str =
        "hosts: [a.example.com]\naddresses: [10.0.0.1]\nports: [{number: 80, name: http, protocol: HTTP}]\n";

    #[test]
    fn valid_base() {
        assert!(se(BASE).is_empty());
        assert!(
            se(&format!(
                "{BASE}resolution: STATIC\nendpoints: [{{address: 1.1.1.1, ports: {{http: 8080}}}}]"
            ))
            .is_empty()
        );
    }

    // A12
    #[test_case("resolution: STATIC\nendpoints: [{address: 1.1.1.1}]\nworkloadSelector: {labels: {app: a}}",
        &["spec.workloadSelector: only one of WorkloadSelector or Endpoints is allowed in Service Entry"])]
    #[test_case("resolution: STATIC\nworkloadSelector: {labels: {app: a}}", &[])]
    // A11 via SE
    #[test_case("resolution: STATIC\nworkloadSelector: {}",
        &["spec.workloadSelector: service entry: workload selector specified without labels, will be applied to all services in namespace"])]
    #[test_case("resolution: STATIC\nworkloadSelector: {labels: {app: \"*\"}}",
        &["spec.workloadSelector.labels.app: wildcard is not supported in selector: \"app=*\""])]
    fn selector_rules(extra: &str, want: &[&str]) {
        assert_eq!(se(&format!("{BASE}{extra}")), want);
    }

    // A13
    #[test_case("hosts: []", &["spec.hosts: service entry must have at least one host"])]
    #[test_case("hosts: [\"*\"]", &["spec.hosts[0]: invalid host *"])]
    #[test_case("hosts: [\"a..com\"]", &["spec.hosts[0]: domain name \".com\" invalid (label \"\" invalid)"])]
    #[test_case("hosts: [\"*foo.com\"]\nresolution: STATIC", &["spec.hosts[0]: partial wildcard \"*foo.com\" not allowed"])]
    #[test_case("hosts: [\"*.foo.com\", short]\nresolution: STATIC", &[])]
    fn hosts(hosts: &str, want: &[&str]) {
        assert_eq!(se(&BASE.replace("hosts: [a.example.com]", hosts)), want);
    }

    // A14
    #[test_case("addresses: [1.2.3.4/24]\nresolution: STATIC", &[])]
    #[test_case("addresses: [1.2.3.4/24]\nresolution: DNS",
        &["spec.addresses: CIDR addresses are allowed only for NONE/STATIC resolution types"])]
    #[test_case("addresses: [1.2.3]", &["spec.addresses[0]: 1.2.3 is not a valid IP"])]
    #[test_case("addresses: [1.2.3.4/40]", &["spec.addresses[0]: 1.2.3.4/40 is not a valid CIDR block"])]
    // Istio takes any entry with a `/` for a CIDR, valid or not.
    #[test_case("addresses: [1.2.3.4/40]\nresolution: DNS", &["spec.addresses[0]: 1.2.3.4/40 is not a valid CIDR block", "spec.addresses: CIDR addresses are allowed only for NONE/STATIC resolution types"]; "bad cidr counts")]
    fn addresses(addr: &str, want: &[&str]) {
        let base = BASE.replace("addresses: [10.0.0.1]\n", "");
        assert_eq!(se(&format!("{base}{addr}")), want);
    }

    // A15
    #[test_case("[{number: 80, name: http}, {number: 81, name: http}]", &["spec.ports[1].name: service entry port name \"http\" already defined"])]
    #[test_case("[{number: 80, name: a}, {number: 80, name: b}]", &["spec.ports[1].number: service entry port 80 already defined"])]
    #[test_case("[{number: 0, name: a}]", &["spec.ports[0].number: port number 0 must be in the range 1..65535"])]
    #[test_case("[{number: 80, name: a, targetPort: 70000}]", &["spec.ports[0].targetPort: port number 70000 must be in the range 1..65535"])]
    #[test_case("[{number: 80, name: a_b}]", &["spec.ports[0].name: invalid port name: a_b"])]
    #[test_case("[{number: 80, name: a, protocol: QUIC}]", &["spec.ports[0].protocol: unsupported protocol: QUIC"])]
    #[test_case("[{number: 80, name: a, protocol: tcp}, {number: 81, name: b, protocol: http}]", &[])]
    fn ports(ports: &str, want: &[&str]) {
        assert_eq!(
            se(&BASE.replace("[{number: 80, name: http, protocol: HTTP}]", ports)),
            want
        );
    }

    // A15 as Istio 1.25+ has it: VIPs are auto-allocated (PILOT_ENABLE_IP_AUTOALLOCATE is on
    // by default) except for resolution NONE, or when the ServiceEntry's label opts out; only
    // then does each port whose protocol is written "" or "TCP" (not "tcp") warn.
    #[test_case("resolution: NONE", &[], &[0, 1]; "none warns per port")]
    #[test_case("", &[], &[0, 1]; "unset resolution is none")]
    #[test_case("resolution: DNS", &[], &[]; "dns gets a vip")]
    #[test_case("resolution: STATIC", &[], &[]; "static gets a vip")]
    #[test_case("resolution: DNS", &[(AUTOALLOCATE_LABEL, "False")], &[0, 1]; "opted out")]
    #[test_case("resolution: DNS", &[(AUTOALLOCATE_LABEL, "true")], &[]; "opted in")]
    fn tcp_without_addresses(resolution: &str, labels: &[(&str, &str)], warned: &[usize]) {
        let y = format!(
            "hosts: [a.com]\nports: [{{number: 27017, name: mongo, protocol: TCP}}, {{number: 27018, name: m2}}, \
             {{number: 27019, name: lower, protocol: tcp}}, {{number: 443, name: tls, protocol: TLS}}]\n{resolution}\n"
        );
        let want: Vec<String> = warned
            .iter()
            .map(|i| format!("spec.ports[{i}]: addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is not enabled"))
            .collect();
        assert_eq!(se_labeled(&y, labels), want);
        // Addresses of its own: nothing to allocate, nothing to warn about.
        assert!(se_labeled(&format!("{y}addresses: [10.0.0.1]\n"), labels).is_empty());
    }

    /// Not Istio's rule: a wildcard NONE service reaches any address (issue 13).
    #[test]
    fn wildcard_hosts_with_resolution_none_warn() {
        let got = se(
            "hosts: [\"*.foo.com\", a.foo.com]\nports: [{number: 443, name: tls, protocol: TLS}]\nresolution: NONE\n",
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("spec.hosts[0]: wildcard host \"*.foo.com\" with resolution NONE: a connection whose Host or SNI matches it is forwarded to whatever address the client dialed"),
            "{got:?}"
        );
        assert!(
            got[0].contains("use resolution DNS, or STATIC with endpoints"),
            "{got:?}"
        );
        let unset = se("hosts: [\"*.foo.com\"]\nports: [{number: 80, name: http, protocol: HTTP}]\n");
        assert!(unset[0].contains("resolution NONE (the default)"), "{unset:?}");
        for other in ["DNS", "STATIC"] {
            let y = format!(
                "hosts: [\"*.foo.com\"]\nports: [{{number: 80, name: http, protocol: HTTP}}]\nresolution: {other}\n"
            );
            assert!(
                se(&y).iter().all(|m| !m.contains("wildcard host")),
                "{other}: {:?}",
                se(&y)
            );
        }
    }

    // A16
    #[test]
    fn resolution_none() {
        assert_eq!(
            se(&format!("{BASE}endpoints: [{{address: 1.1.1.1}}]")),
            vec!["spec.endpoints: no endpoints should be provided for resolution type none"]
        );
        assert_eq!(
            se(&format!("{BASE}workloadSelector: {{labels: {{app: a}}}}")),
            vec!["spec.workloadSelector: workloadSelector should not be set when resolution mode is NONE"]
        );
    }

    // A17, A20
    #[test_case("[{address: 1.1.1.1}, {address: \"unix:///var/run/x.sock\"}]", &[])]
    #[test_case("[{address: a.com}]", &["spec.endpoints[0].address: endpoint address \"a.com\" is not a valid IP address"])]
    #[test_case("[{address: \"\"}]", &["spec.endpoints[0].address: address is required"])]
    #[test_case("[{network: n1}]", &["spec.endpoints[0].address: address is unset with network \"n1\""])]
    #[test_case("[{address: \"unix://rel\"}]", &["spec.endpoints[0].address: rel is not an absolute path to a file"])]
    #[test_case("[{address: \"unix:///x.sock\", ports: {http: 80}}]", &["spec.endpoints[0].ports: unix endpoint unix:///x.sock must not include ports"])]
    #[test_case("[{address: 1.1.1.1, ports: {http: 0}}]", &["spec.endpoints[0].ports.http: port number 0 must be in the range 1..65535"])]
    #[test_case("[{address: 1.1.1.1, labels: {\"a b\": c}}]", &["spec.endpoints[0].labels[\"a b\"]: invalid tag key: \"a b\""])]
    // A17/A20: Istio's validateWorkloadEntry with the service's port names: an endpoint port
    // must name a service port; a missing address is the only finding.
    #[test_case("[{address: 1.1.1.1, ports: {web: 8080}}]", &["spec.endpoints[0].ports.web: endpoint port 8080 is not defined by the service entry"]; "undeclared port")]
    #[test_case("[{ports: {bad_name: 0}}]", &["spec.endpoints[0].address: address is required"]; "address required stops")]
    fn static_endpoints(eps: &str, want: &[&str]) {
        assert_eq!(se(&format!("{BASE}resolution: STATIC\nendpoints: {eps}")), want);
    }

    #[test]
    fn unix_needs_exactly_one_port() {
        let y = "hosts: [u.local]\naddresses: [10.0.0.1]\nports: [{number: 80, name: a, protocol: HTTP}, {number: 81, name: b, protocol: HTTP}]\nresolution: STATIC\nendpoints: [{address: \"unix:///x.sock\"}]";
        assert_eq!(
            se(y),
            vec!["spec.endpoints[0].address: exactly 1 service port required for unix endpoints"]
        );
    }

    // A18
    #[test_case("hosts: [\"*.a.com\"]\nresolution: DNS", &["spec.hosts[0]: hosts must be FQDN or contain only prefix wildcards if no endpoints are provided for resolution mode DNS, domain name \"*.a.com\" invalid (label \"*\" invalid)"])]
    #[test_case("hosts: [\"*.a.com\"]\nresolution: DNS\nendpoints: [{address: b.com}]", &[])]
    #[test_case("resolution: DNS_ROUND_ROBIN\nendpoints: [{address: b.com}, {address: c.com}]", &["spec.endpoints: there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN"])]
    #[test_case("resolution: DNS\nendpoints: [{address: \"unix:///a.sock\"}]", &["spec.endpoints[0].address: endpoint address \"unix:///a.sock\" is not a valid FQDN or an IP address"])]
    #[test_case("resolution: DNS\nendpoints: [{address: us.a.com, ports: {http: 8080}}]", &[])]
    #[test_case("resolution: DNS\nendpoints: [{address: us.a.com, ports: {web: 8080}}]", &["spec.endpoints[0].ports.web: endpoint port 8080 is not defined by the service entry"])]
    // Istio reports the first host that is not an FQDN, and checks DNS endpoints by address
    // (an IP or an FQDN; an empty one is neither), labels and ports only.
    #[test_case("hosts: [\"*.a.com\", \"*.b.com\"]\nresolution: DNS", &["spec.hosts[0]: hosts must be FQDN or contain only prefix wildcards if no endpoints are provided for resolution mode DNS, domain name \"*.a.com\" invalid (label \"*\" invalid)"]; "first host only")]
    #[test_case("resolution: DNS\nendpoints: [{address: \"\"}]", &["spec.endpoints[0].address: endpoint address \"\" is not a valid FQDN or an IP address"]; "empty address")]
    #[test_case("resolution: DNS\nendpoints: [{network: n1}]", &["spec.endpoints[0].address: endpoint address \"\" is not a valid FQDN or an IP address"]; "network only")]
    fn dns(extra: &str, want: &[&str]) {
        let base = if extra.starts_with("hosts:") {
            BASE.replace("hosts: [a.example.com]\n", "")
        } else {
            BASE.to_string()
        };
        assert_eq!(se(&format!("{base}{extra}")), want);
    }

    #[test]
    fn dns_many_hosts_with_address_and_tcp_port_warns() {
        let y = "hosts: [a.com, b.com]\naddresses: [10.0.0.1]\nports: [{number: 443, name: tls, protocol: TLS}]\nresolution: DNS";
        assert_eq!(
            se(y),
            vec![
                "spec.hosts: service entry can not have more than one host specified simultaneously with address and tcp port"
            ]
        );
    }

    // A19
    #[test_case("resolution: DNS\nports: [{number: 27017, name: mongo, protocol: MONGO}]", &["spec.hosts: multiple hosts provided with non-HTTP, non-TLS ports"])]
    #[test_case("resolution: DNS\nports: [{number: 443, name: https, protocol: TLS}]", &[])]
    #[test_case("resolution: NONE\nports: [{number: 27017, name: mongo, protocol: MONGO}]", &[])]
    fn multiple_hosts(extra: &str, want: &[&str]) {
        assert_eq!(se(&format!("hosts: [a.com, b.com]\n{extra}")), want);
    }

    // A10 on SE: `~` allowed.
    #[test]
    fn export_to() {
        assert!(se(&format!("{BASE}exportTo: [\"~\"]")).is_empty());
        assert_eq!(
            se(&format!("{BASE}exportTo: [\"*\", a]")),
            vec!["spec.exportTo: cannot have both public (*) and non-public exportTo values for a resource"]
        );
    }

    // A21, Istio's DYNAMIC_DNS rules and messages (its two run-together words included).
    #[test_case("hosts: [\"*.a.com\"]\nports: [{number: 443, name: tls, protocol: TLS}]", &[], &[]; "valid")]
    #[test_case("hosts: [\"*a.com\"]\nports: [{number: 80, name: http, protocol: HTTP}]", &[], &[]; "partial wildcard is a wildcard, not warned")]
    #[test_case("hosts: [a.com]\nports: [{number: 1, name: t, protocol: TCP}]", &[],
        &["spec.hosts[0]: host must be wildcarded for resolution mode DYNAMIC_DNS",
          "spec.ports[0].protocol: only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type DYNAMIC_DNS"]; "not wildcard")]
    #[test_case("hosts: [\"*.a.com\"]\nports: [{number: 443, name: https, protocol: HTTPS}]", &[],
        &["spec.ports[0].protocol: only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type DYNAMIC_DNS"]; "https")]
    #[test_case("hosts: [\"*.a.com\"]\naddresses: [10.0.0.1]\nports: [{number: 80, name: http, protocol: HTTP}]", &[],
        &["spec.addresses: addresses cannot be set for resolution type DYNAMIC_DNS. HTTP route domains will only be generatedfrom the hosts field values"]; "addresses")]
    #[test_case("hosts: [\"*.a.com\"]\nendpoints: [{address: 1.1.1.1}]\nports: [{number: 80, name: http, protocol: HTTP}]", &[],
        &["spec.endpoints: endpoints cannot be set for resolution type DYNAMIC_DNS. Destination IP address determined from hostsfield values"]; "endpoints")]
    #[test_case("hosts: [\"*.a.com\"]\nlocation: MESH_INTERNAL\nports: [{number: 80, name: http, protocol: HTTP}]", &[("istio.io/use-waypoint", "waypoint")],
        &["spec.location: location MESH_INTERNAL with resolution type DYNAMIC_DNS is not supported when using waypoints"]; "internal behind a waypoint")]
    #[test_case("hosts: [\"*.a.com\"]\nlocation: MESH_INTERNAL\nports: [{number: 80, name: http, protocol: HTTP}]", &[("istio.io/use-waypoint", "None")], &[]; "no waypoint")]
    fn dynamic_dns(yaml: &str, labels: &[(&str, &str)], want: &[&str]) {
        assert_eq!(se_labeled(&format!("{yaml}\nresolution: DYNAMIC_DNS"), labels), want);
    }

    fn we(yaml: &str) -> Vec<String> {
        let doc = parse_stream(yaml).unwrap().remove(0);
        let cx = DecodeCx::new(true);
        let spec: WorkloadEntry = decode(&doc, "spec", &cx);
        let mut r = Report::default();
        validate_workload_entry(&spec, &mut r);
        r.problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect()
    }

    // A23
    #[test_case("address: 2.2.2.2\nserviceAccount: details\nlabels: {app: details}", &[])]
    #[test_case("address: vm1.example.com", &[])]
    #[test_case("address: \"unix:///var/run/a.sock\"", &[])]
    #[test_case("address: \"bad address\"", &["spec.address: endpoint address \"bad address\" is not a valid FQDN or an IP address"])]
    #[test_case("labels: {a: b}", &["spec.address: address is required"])]
    // Istio's validateWorkloadEntry stops at a missing address.
    #[test_case("labels: {\"a b\": c}\nports: {bad_name: 0}", &["spec.address: address is required"])]
    #[test_case("address: 1.1.1.1\nports: {\"bad_name\": 80}", &["spec.ports.bad_name: invalid port name: bad_name"])]
    fn workload_entries(yaml: &str, want: &[&str]) {
        assert_eq!(we(yaml), want);
    }

    fn wg(yaml: &str) -> Vec<String> {
        let doc = parse_stream(yaml).unwrap().remove(0);
        let cx = DecodeCx::new(true);
        let spec: WorkloadGroup = decode(&doc, "spec", &cx);
        assert!(cx.into_issues().is_empty());
        let template_given = doc.get("template").is_some_and(|t| t.value != crate::yaml::Value::Null);
        let mut r = Report::default();
        validate_workload_group(&spec, template_given, &mut r);
        r.messages()
    }

    #[test_case("metadata: {labels: {app: a}}\ntemplate: {serviceAccount: sa, ports: {http: 8080}}\nprobe: {httpGet: {path: /ready, port: 8080}, periodSeconds: 5}", &[])]
    // Istio's ValidateWorkloadGroup: the template is not a WorkloadEntry (its address is filled
    // in at registration, and is not checked; nor are its labels); it must be there.
    #[test_case("template: {address: 1.1.1.1}", &[]; "template address")]
    #[test_case("template: {labels: {\"a b\": c}}", &[]; "template labels")]
    #[test_case("template: {}", &[]; "empty template")]
    #[test_case("probe: {tcpSocket: {port: 0}}", &["template is required"]; "no template")]
    #[test_case("template: null", &["template is required"]; "null template")]
    #[test_case("metadata: {labels: {\"a b\": c}}\ntemplate: {}\nprobe: {tcpSocket: {port: 0}}", &["invalid labels: invalid tag key: \"a b\""]; "bad labels stop")]
    // The CRD's rules on a unix template address.
    #[test_case("template: {address: \"unix://rel\"}", &["UDS must be an absolute path or abstract socket"]; "uds relative")]
    #[test_case("template: {address: \"unix:///dir/\"}", &["UDS may not be a dir"]; "uds dir")]
    #[test_case("template: {address: \"unix:///a.sock\", ports: {http: 80}}", &["UDS may not include ports"]; "uds ports")]
    // validateReadinessProbe.
    #[test_case("template: {}\nprobe: {periodSeconds: 5}", &["unknown health check method <nil>"]; "no method")]
    #[test_case("template: {}\nprobe: {tcpSocket: {port: 0}}", &["port number 0 must be in the range 1..65535"]; "tcp port")]
    #[test_case("template: {}\nprobe: {periodSeconds: -1, failureThreshold: -2, tcpSocket: {port: 80}}",
        &["periodSeconds must be non-negative", "failureThreshold must be non-negative"]; "negative")]
    #[test_case("template: {}\nprobe: {httpGet: {port: 80, scheme: https}}", &["httpGet.scheme must be one of \"HTTPS\", \"HTTP\""]; "scheme")]
    #[test_case("template: {}\nprobe: {httpGet: {port: 80, httpHeaders: [{name: X-Ok, value: a}, {name: bad_name}, {name: \"\"}]}}",
        &["header name bad_name is not a valid header name", "header name cannot be empty"]; "probe headers")]
    #[test_case("template: {}\nprobe: {exec: {command: []}}", &["exec.command is required"]; "exec")]
    #[test_case("template: {}\nprobe: {grpc: {port: 80}}", &["unknown health check method *v1alpha3.ReadinessProbe_Grpc"]; "grpc")]
    fn workload_groups(yaml: &str, want: &[&str]) {
        assert_eq!(wg(yaml), want);
    }
}
