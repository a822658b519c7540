//! ServiceEntry (A12-A22), WorkloadEntry (A20, A23) and WorkloadGroup.

use std::net::IpAddr;

use super::Report;
use super::common::*;
use crate::model::{Resolution, ServiceEntry, WorkloadEntry, WorkloadGroup};

/// Validates `ServiceEntry.spec` in `namespace`.
pub fn validate_service_entry(se: &ServiceEntry, namespace: &str, r: &mut Report) {
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
        if is_partial_wildcard(host) {
            r.warn(&p, format!("partial wildcard {host:?} not allowed"));
        }
    }

    let resolution = se.resolution.unwrap_or_default();

    // A14
    let mut has_cidr = false;
    for (i, addr) in se.addresses.iter().enumerate() {
        let p = format!("spec.addresses[{i}]");
        if let Some(e) = ip_or_cidr_error(addr) {
            r.error(&p, e);
        } else if is_cidr(addr) {
            has_cidr = true;
        }
    }
    if has_cidr && !matches!(resolution, Resolution::None | Resolution::Static) {
        r.error(
            "spec.addresses",
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }

    // A15
    let mut names: Vec<&str> = Vec::new();
    let mut numbers: Vec<u32> = Vec::new();
    let mut warned_tcp_addresses = false;
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
        // Auto-allocation of VIPs needs DNS capture, which is off here; NONE never gets one.
        let tcpish = port.protocol.is_empty() || port.protocol.eq_ignore_ascii_case("TCP");
        if se.addresses.is_empty() && tcpish && !warned_tcp_addresses {
            warned_tcp_addresses = true;
            r.warn(&p, "addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is not enabled");
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
        // A17
        Resolution::Static => {
            for (i, ep) in se.endpoints.iter().enumerate() {
                let p = format!("spec.endpoints[{i}]");
                if !ep.address.is_empty() && !ep.address.starts_with("unix://") && ep.address.parse::<IpAddr>().is_err()
                {
                    r.error(
                        format!("{p}.address"),
                        format!("endpoint address {:?} is not a valid IP address", ep.address),
                    );
                }
                validate_endpoint_body(r, &p, ep, Some(se));
            }
        }
        // A18
        Resolution::Dns | Resolution::DnsRoundRobin => {
            let mode = resolution.as_str();
            if se.endpoints.is_empty() {
                for (i, host) in se.hosts.iter().enumerate() {
                    if host == "*" {
                        continue;
                    }
                    if let Some(e) = fqdn_error(host) {
                        r.error(
                            format!("spec.hosts[{i}]"),
                            format!("hosts must be FQDN or contain only prefix wildcards if no endpoints are provided for resolution mode {mode}, {e}"),
                        );
                    }
                }
            }
            if resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
                r.error(
                    "spec.endpoints",
                    format!("there must only be 0 or 1 endpoint for resolution mode {mode}"),
                );
            }
            for (i, ep) in se.endpoints.iter().enumerate() {
                let p = format!("spec.endpoints[{i}]");
                if !ep.address.is_empty() && ep.address.parse::<IpAddr>().is_err() && fqdn_error(&ep.address).is_some()
                {
                    r.error(
                        format!("{p}.address"),
                        format!("endpoint address {:?} is not a valid FQDN or an IP address", ep.address),
                    );
                }
                validate_endpoint_body(r, &p, ep, Some(se));
            }
            let tcp_port = se.ports.iter().any(|p| !is_http_protocol(&p.protocol));
            if se.hosts.len() > 1 && !se.addresses.is_empty() && tcp_port {
                r.warn(
                    "spec.hosts",
                    "service entry can not have more than one host specified simultaneously with address and tcp port",
                );
            }
        }
        // A21: only meaningful with ambient waypoints; validated so configs written for them load.
        Resolution::DynamicDns => {
            for (i, host) in se.hosts.iter().enumerate() {
                if !host.starts_with("*.") {
                    r.error(
                        format!("spec.hosts[{i}]"),
                        "DYNAMIC_DNS resolution requires wildcard hosts",
                    );
                }
            }
            if !se.addresses.is_empty() {
                r.error("spec.addresses", "DYNAMIC_DNS resolution does not allow addresses");
            }
            if !se.endpoints.is_empty() {
                r.error("spec.endpoints", "DYNAMIC_DNS resolution does not allow endpoints");
            }
            for (i, port) in se.ports.iter().enumerate() {
                let ok = matches!(
                    parse_protocol(&port.protocol),
                    Some("HTTP" | "HTTPS" | "TLS" | "GRPC" | "HTTP2")
                );
                if !ok {
                    r.error(
                        format!("spec.ports[{i}].protocol"),
                        "DYNAMIC_DNS resolution only supports HTTP, HTTPS, TLS, GRPC and HTTP2 ports",
                    );
                }
            }
        }
    }

    validate_export_to(r, "spec.exportTo", namespace, &se.export_to, true);
}

/// A20: an inline endpoint or a WorkloadEntry's body. `se` is the ServiceEntry holding an
/// inline endpoint, for the checks that relate the endpoint to the service's ports.
fn validate_endpoint_body(r: &mut Report, path: &str, ep: &WorkloadEntry, se: Option<&ServiceEntry>) {
    if ep.address.is_empty() {
        if ep.network.is_empty() {
            r.error(format!("{path}.address"), "address is required");
        } else {
            r.warn(
                format!("{path}.address"),
                format!("address is unset with network {:?}", ep.network),
            );
        }
    }
    if let Some(unix) = ep.address.strip_prefix("unix://") {
        if let Some(e) = unix_path_error(unix) {
            r.error(format!("{path}.address"), e);
        }
        if !ep.ports.is_empty() {
            r.error(
                format!("{path}.ports"),
                format!("unix endpoint {} must not include ports", ep.address),
            );
        }
        if let Some(se) = se
            && se.ports.len() != 1
        {
            r.error(
                format!("{path}.address"),
                "exactly 1 service port required for unix endpoints",
            );
        }
    }
    for (name, port) in &ep.ports {
        let p = field(&format!("{path}.ports"), name);
        validate_port_name(r, &p, name);
        validate_port_number(r, &p, *port);
        if let Some(se) = se
            && matches!(
                se.resolution.unwrap_or_default(),
                Resolution::Dns | Resolution::DnsRoundRobin
            )
            && !se.ports.iter().any(|sp| &sp.name == name)
        {
            r.error(&p, format!("endpoint port {port} is not defined by the service entry"));
        }
    }
    validate_labels(r, &format!("{path}.labels"), &ep.labels);
}

/// Validates `WorkloadEntry.spec` (A23: hostnames allowed as addresses).
pub fn validate_workload_entry(we: &WorkloadEntry, r: &mut Report) {
    validate_workload_entry_at(we, "spec", r);
}

fn validate_workload_entry_at(we: &WorkloadEntry, path: &str, r: &mut Report) {
    let addr = &we.address;
    if !addr.is_empty() && !addr.starts_with("unix://") && addr.parse::<IpAddr>().is_err() && fqdn_error(addr).is_some()
    {
        r.error(
            format!("{path}.address"),
            format!("endpoint address {addr:?} is not a valid FQDN or an IP address"),
        );
    }
    validate_endpoint_body(r, path, we, None);
}

/// Validates `WorkloadGroup.spec`: the template is a WorkloadEntry without an address (the
/// address comes from the registering workload), labels valid, probe well-formed.
pub fn validate_workload_group(wg: &WorkloadGroup, r: &mut Report) {
    validate_labels(r, "spec.metadata.labels", &wg.metadata.labels);
    if !wg.template.address.is_empty() {
        r.error(
            "spec.template.address",
            "address is not allowed in a WorkloadGroup template",
        );
    }
    for (name, port) in &wg.template.ports {
        let p = field("spec.template.ports", name);
        validate_port_name(r, &p, name);
        validate_port_number(r, &p, *port);
    }
    validate_labels(r, "spec.template.labels", &wg.template.labels);
    if let Some(probe) = &wg.probe {
        for (name, value) in [
            ("periodSeconds", probe.period_seconds),
            ("initialDelaySeconds", probe.initial_delay_seconds),
            ("timeoutSeconds", probe.timeout_seconds),
            ("successThreshold", probe.success_threshold),
            ("failureThreshold", probe.failure_threshold),
        ] {
            if value < 0 {
                r.error(format!("spec.probe.{name}"), format!("{name} must be non-negative"));
            }
        }
        let kinds = [
            probe.http_get.is_some(),
            probe.tcp_socket.is_some(),
            probe.exec.is_some(),
            probe.grpc.is_some(),
        ];
        match kinds.iter().filter(|k| **k).count() {
            0 => r.error(
                "spec.probe",
                "must define a health check method (httpGet, tcpSocket, exec or grpc)",
            ),
            1 => {}
            _ => r.error("spec.probe", "only one health check method may be set"),
        }
        if let Some(h) = &probe.http_get {
            validate_port_number(r, "spec.probe.httpGet.port", h.port);
        }
        if let Some(t) = &probe.tcp_socket {
            validate_port_number(r, "spec.probe.tcpSocket.port", t.port);
        }
        if let Some(e) = &probe.exec
            && e.command.is_empty()
        {
            r.error("spec.probe.exec.command", "exec health check must have a command");
        }
    }
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;
    use crate::de::{DecodeCx, decode};
    use crate::yaml::parse_stream;

    fn se(yaml: &str) -> Vec<String> {
        let doc = parse_stream(yaml).unwrap().remove(0);
        let cx = DecodeCx::new(true);
        let spec: ServiceEntry = decode(&doc, "spec", &cx);
        assert!(cx.into_issues().is_empty(), "fixture must decode cleanly");
        let mut r = Report::default();
        validate_service_entry(&spec, "ns", &mut r);
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
        &["spec.workloadSelector.labels.app: wildcard is not supported in selector: \"app\"", "spec.workloadSelector.labels.app: invalid tag value: \"*\""])]
    fn selector_rules(extra: &str, want: &[&str]) {
        assert_eq!(se(&format!("{BASE}{extra}")), want);
    }

    // A13
    #[test_case("hosts: []", &["spec.hosts: service entry must have at least one host"])]
    #[test_case("hosts: [\"*\"]", &["spec.hosts[0]: invalid host *"])]
    #[test_case("hosts: [\"a..com\"]", &["spec.hosts[0]: domain name \"a..com\" invalid (label \"\" invalid)"])]
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

    #[test]
    fn tcp_without_addresses_warns_once() {
        let got =
            se("hosts: [a.com]\nports: [{number: 27017, name: mongo, protocol: TCP}, {number: 27018, name: m2}]\n");
        assert_eq!(
            got,
            vec![
                "spec.ports[0]: addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is not enabled"
            ]
        );
        assert!(se("hosts: [a.com]\nports: [{number: 443, name: tls, protocol: TLS}]\n").is_empty());
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

    // A21
    #[test]
    fn dynamic_dns() {
        assert!(
            se("hosts: [\"*.a.com\"]\nports: [{number: 443, name: tls, protocol: TLS}]\nresolution: DYNAMIC_DNS")
                .is_empty()
        );
        assert_eq!(
            se("hosts: [a.com]\nports: [{number: 1, name: t, protocol: TCP}]\nresolution: DYNAMIC_DNS"),
            vec![
                "spec.ports[0]: addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is not enabled",
                "spec.hosts[0]: DYNAMIC_DNS resolution requires wildcard hosts",
                "spec.ports[0].protocol: DYNAMIC_DNS resolution only supports HTTP, HTTPS, TLS, GRPC and HTTP2 ports",
            ]
        );
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
    #[test_case("address: 1.1.1.1\nports: {\"bad_name\": 80}", &["spec.ports.bad_name: invalid port name: bad_name"])]
    fn workload_entries(yaml: &str, want: &[&str]) {
        assert_eq!(we(yaml), want);
    }

    fn wg(yaml: &str) -> Vec<String> {
        let doc = parse_stream(yaml).unwrap().remove(0);
        let cx = DecodeCx::new(true);
        let spec: WorkloadGroup = decode(&doc, "spec", &cx);
        assert!(cx.into_issues().is_empty());
        let mut r = Report::default();
        validate_workload_group(&spec, &mut r);
        r.messages()
    }

    #[test_case("metadata: {labels: {app: a}}\ntemplate: {serviceAccount: sa, ports: {http: 8080}}\nprobe: {httpGet: {path: /ready, port: 8080}, periodSeconds: 5}", &[])]
    #[test_case("template: {address: 1.1.1.1}", &["address is not allowed in a WorkloadGroup template"])]
    #[test_case("template: {}\nprobe: {periodSeconds: 5}", &["must define a health check method (httpGet, tcpSocket, exec or grpc)"])]
    #[test_case("template: {}\nprobe: {tcpSocket: {port: 80}, periodSeconds: -1, timeoutSeconds: -2}", &["periodSeconds must be non-negative", "timeoutSeconds must be non-negative"])]
    #[test_case("template: {}\nprobe: {tcpSocket: {port: 80}, initialDelaySeconds: -1, successThreshold: -1, failureThreshold: -1}", &["initialDelaySeconds must be non-negative", "successThreshold must be non-negative", "failureThreshold must be non-negative"])]
    #[test_case("template: {}\nprobe: {tcpSocket: {port: 0}}", &["port number 0 must be in the range 1..65535"])]
    fn workload_groups(yaml: &str, want: &[&str]) {
        assert_eq!(wg(yaml), want);
    }
}
