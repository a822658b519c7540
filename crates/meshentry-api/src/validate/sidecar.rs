//! Sidecar validation (A36).

use std::collections::{BTreeMap, BTreeSet};

use super::Report;
use super::common::{
    fqdn_error, is_http_protocol, is_tls_protocol, unix_path_error, validate_port_name, validate_port_number,
    validate_protocol, validate_selector,
};
use super::destination_rule::validate_connection_pool;
use super::gateway::{validate_namespace_slash_host, validate_server_tls};
use super::virtual_service::validate_destination;
use crate::model::{
    CaptureMode, IstioEgressListener, IstioIngressListener, OutboundTrafficPolicy, OutboundTrafficPolicyMode,
    ServerTlsMode, Sidecar,
};

/// Istio's `ValidateSidecar`. A bad selector or an empty Sidecar stops validation (A0).
pub fn validate_sidecar(sc: &Sidecar, namespace: &str, r: &mut Report) {
    if let Some(sel) = &sc.workload_selector
        && !validate_selector(r, "spec.workloadSelector", &sel.labels, "sidecar")
    {
        return;
    }
    if sc.egress.is_empty()
        && sc.ingress.is_empty()
        && sc.outbound_traffic_policy.is_none()
        && sc.inbound_connection_pool.is_none()
    {
        r.error("spec", "sidecar: empty configuration provided");
        return;
    }
    let mut ports = BTreeSet::new();
    for (i, l) in sc.ingress.iter().enumerate() {
        validate_ingress(r, &format!("spec.ingress[{i}]"), l, &mut ports);
    }
    if let Some(cp) = &sc.inbound_connection_pool {
        validate_connection_pool(r, "spec.inboundConnectionPool", cp);
    }
    let mut ports = BTreeSet::new();
    let mut unix_binds = BTreeSet::new();
    for (i, l) in sc.egress.iter().enumerate() {
        let path = format!("spec.egress[{i}]");
        match &l.port {
            // The port-less (catch-all) listener must be the last one, hence also the only one.
            None if i + 1 == sc.egress.len() => {}
            None => r.error(
                &path,
                "sidecar: the egress listener with empty port should be the last listener in the list",
            ),
            Some(port) => {
                validate_egress_port(r, &path, l);
                if port.number == 0 {
                    if !unix_binds.insert(l.bind.as_str()) {
                        r.error(
                            format!("{path}.bind"),
                            "sidecar: unix domain socket values for listeners must be unique",
                        );
                    }
                } else if !ports.insert(port.number) {
                    r.error(
                        format!("{path}.port.number"),
                        "sidecar: ports on IP bound listeners must be unique",
                    );
                }
            }
        }
        validate_egress_hosts(r, &path, l, namespace);
    }
    if let Some(otp) = &sc.outbound_traffic_policy {
        validate_outbound_traffic_policy(r, "spec.outboundTrafficPolicy", otp);
    }
}

fn validate_ingress(r: &mut Report, path: &str, l: &IstioIngressListener, ports: &mut BTreeSet<u32>) {
    let Some(port) = &l.port else {
        r.error(path, "sidecar: port is required for ingress listeners");
        return;
    };
    let pp = format!("{path}.port");
    if port.target_port > 0 {
        r.error(format!("{pp}.targetPort"), "targetPort has no impact on Sidecars");
    }
    if !port.name.is_empty() {
        validate_port_name(r, &format!("{pp}.name"), &port.name);
    }
    validate_protocol(r, &format!("{pp}.protocol"), &port.protocol);
    validate_port_number(r, &format!("{pp}.number"), port.number);
    validate_ip_bind(r, &format!("{path}.bind"), &l.bind);
    if !ports.insert(port.number) {
        r.error(
            format!("{pp}.number"),
            "sidecar: ports on IP bound listeners must be unique",
        );
    }
    if !l.default_endpoint.is_empty() {
        validate_default_endpoint(r, &format!("{path}.defaultEndpoint"), &l.default_endpoint);
    }
    if let Some(tls) = &l.tls {
        let tp = format!("{path}.tls");
        if !tls.subject_alt_names.is_empty() {
            r.error(
                format!("{tp}.subjectAltNames"),
                "sidecar: subjectAltNames is not supported in ingress tls",
            );
        }
        if tls.https_redirect {
            r.error(format!("{tp}.httpsRedirect"), "sidecar: httpsRedirect is not supported");
        }
        if !tls.credential_name.is_empty() {
            r.error(
                format!("{tp}.credentialName"),
                "sidecar: credentialName is not currently supported",
            );
        }
        if !tls.credential_names.is_empty() {
            r.error(
                format!("{tp}.credentialNames"),
                "sidecar: credentialNames is not currently supported",
            );
        }
        if !tls.tls_certificates.is_empty() {
            r.error(
                format!("{tp}.tlsCertificates"),
                "sidecar: tls_certificates is not currently supported",
            );
        }
        if matches!(tls.mode, ServerTlsMode::IstioMutual | ServerTlsMode::AutoPassthrough) {
            r.error(
                format!("{tp}.mode"),
                format!(
                    "configuration is invalid: cannot set mode to {} in sidecar ingress tls",
                    tls.mode.as_str()
                ),
            );
        }
        if !is_tls_protocol(&port.protocol) {
            r.error(&tp, "server cannot have TLS settings for non HTTPS/TLS ports");
        }
        validate_server_tls(r, &tp, tls);
    }
    if let Some(cp) = &l.connection_pool {
        let cpp = format!("{path}.connectionPool");
        validate_connection_pool(r, &cpp, cp);
        if cp.http.is_some() && !is_http_protocol(&port.protocol) {
            r.warn(
                format!("{cpp}.http"),
                format!(
                    "sidecar: HTTP connection pool settings are configured for port {} ({:?}) but its protocol is not HTTP ({}); only TCP settings will apply",
                    port.number, port.name, port.protocol
                ),
            );
        }
    }
}

fn validate_ip_bind(r: &mut Report, path: &str, bind: &str) {
    if !bind.is_empty() && bind.parse::<std::net::IpAddr>().is_err() {
        r.error(path, format!("{bind} is not a valid IP"));
    }
}

/// `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT`, `[::]:PORT`, `:PORT` or `unix://path`.
fn validate_default_endpoint(r: &mut Report, path: &str, endpoint: &str) {
    if let Some(uds) = endpoint.strip_prefix("unix://") {
        if let Some(e) = unix_path_error(uds) {
            r.error(path, e);
        }
        return;
    }
    // Istio goes on after a split error, with an empty host and port.
    let (host, port) = match split_host_port(endpoint) {
        Ok(hp) => hp,
        Err(e) => {
            r.error(path, e);
            ("", "")
        }
    };
    if !host.is_empty() && !matches!(host, "127.0.0.1" | "0.0.0.0" | "::1" | "::") {
        r.error(
            path,
            "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,[::1]:port,[::]:port,unix://filepath or unset",
        );
    }
    match port.parse::<i64>() {
        Ok(n) => {
            if !(1..=65535).contains(&n) {
                r.error(path, format!("port number {n} must be in the range 1..65535"));
            }
        }
        Err(_) => r.error(
            path,
            format!(
                "sidecar: defaultEndpoint port ({port}) is not a number: strconv.Atoi: parsing {port:?}: invalid syntax"
            ),
        ),
    }
}

/// Go's `net.SplitHostPort`, with its error wording.
fn split_host_port(addr: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = addr.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("address {addr}: missing ']' in address"));
        };
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, port)),
            None => Err(format!("address {addr}: missing port in address")),
        };
    }
    match addr.rsplit_once(':') {
        None => Err(format!("address {addr}: missing port in address")),
        Some((host, _)) if host.contains(':') => Err(format!("address {addr}: too many colons in address")),
        Some(hp) => Ok(hp),
    }
}

fn validate_egress_port(r: &mut Report, path: &str, l: &IstioEgressListener) {
    let Some(port) = &l.port else { return };
    let pp = format!("{path}.port");
    if port.target_port > 0 {
        r.error(format!("{pp}.targetPort"), "targetPort has no impact on Sidecars");
    }
    if !port.name.is_empty() {
        validate_port_name(r, &format!("{pp}.name"), &port.name);
    }
    if port.number == 0 {
        validate_protocol(r, &format!("{pp}.protocol"), &port.protocol);
        match l.bind.strip_prefix("unix://") {
            None => r.error(
                format!("{pp}.number"),
                "sidecar: ports with 0 value must have a unix domain socket bind address",
            ),
            Some(uds) => {
                if let Some(e) = unix_path_error(uds) {
                    r.error(format!("{path}.bind"), e);
                }
            }
        }
        if !matches!(l.capture_mode, CaptureMode::Default | CaptureMode::None) {
            r.error(
                format!("{path}.captureMode"),
                "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners",
            );
        }
    } else {
        validate_protocol(r, &format!("{pp}.protocol"), &port.protocol);
        validate_port_number(r, &format!("{pp}.number"), port.number);
        validate_ip_bind(r, &format!("{path}.bind"), &l.bind);
    }
}

fn validate_egress_hosts(r: &mut Report, path: &str, l: &IstioEgressListener, namespace: &str) {
    if l.hosts.is_empty() {
        r.error(
            format!("{path}.hosts"),
            "sidecar: egress listener must contain at least one host",
        );
        return;
    }
    // namespace -> names seen, to spot a host repeated or already covered by `ns/*`.
    let mut seen: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (k, host) in l.hosts.iter().enumerate() {
        let hp = format!("{path}.hosts[{k}]");
        // An excluded namespace (`~ns/host`) imports nothing: it cannot repeat an import, nor
        // sit beside `*/*`.
        if let Some((ns, name)) = host.split_once('/')
            && !ns.starts_with('~')
        {
            let ns = if ns == "." { namespace } else { ns };
            let names = seen.entry(ns).or_default();
            let duplicate = if name == "*" {
                !names.is_empty()
            } else {
                names.contains(name) || names.contains("*")
            };
            if duplicate {
                r.warn(&hp, format!("duplicated egress host: {host}"));
            }
            names.insert(name);
        }
        validate_namespace_slash_host(r, &hp, host, false);
    }
    if seen.get("*").is_some_and(|names| names.contains("*")) && seen.len() != 1 {
        r.warn(
            format!("{path}.hosts"),
            "`*/*` host select all resources, no other hosts can be added",
        );
    }
}

fn validate_outbound_traffic_policy(r: &mut Report, path: &str, otp: &OutboundTrafficPolicy) {
    let Some(proxy) = &otp.egress_proxy else { return };
    let pp = format!("{path}.egressProxy");
    if otp.mode != OutboundTrafficPolicyMode::AllowAny {
        r.error(
            &pp,
            "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode",
        );
        return;
    }
    if let Some(e) = fqdn_error(&proxy.host) {
        r.error(format!("{pp}.host"), e);
    }
    if proxy.port.is_none() {
        r.error(format!("{pp}.port"), "sidecar: egress_proxy port must be non-nil");
        return;
    }
    validate_destination(r, &pp, proxy);
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::super::Severity;
    use super::super::test_support::decode_clean;
    use super::*;
    use crate::de::{DecodeCx, decode};
    use crate::yaml::parse_stream;

    fn parse(yaml: &str) -> Sidecar {
        decode_clean(yaml)
    }

    fn run(yaml: &str) -> Report {
        let mut r = Report::default();
        validate_sidecar(&parse(yaml), "ns", &mut r);
        r
    }

    fn errors(yaml: &str) -> Vec<String> {
        run(yaml).messages_of(Severity::Error)
    }

    fn warnings(yaml: &str) -> Vec<String> {
        run(yaml).messages_of(Severity::Warning)
    }

    const FULL: &str = r#"
workloadSelector:
  labels:
    app: ratings
ingress:
- port:
    number: 9080
    protocol: HTTP
    name: somename
  defaultEndpoint: unix:///var/run/someuds.sock
  captureMode: IPTABLES
  connectionPool:
    http:
      http1MaxPendingRequests: 100
      idleTimeout: 30s
- port:
    number: 9443
    protocol: HTTPS
    name: https
  bind: 0.0.0.0
  defaultEndpoint: "[::1]:8443"
  tls:
    mode: SIMPLE
    privateKey: /etc/certs/key.pem
    serverCertificate: /etc/certs/cert.pem
- port:
    number: 8080
    name: tcp
  defaultEndpoint: 127.0.0.1:8080
inboundConnectionPool:
  tcp:
    maxConnections: 1000
egress:
- port:
    number: 9080
    protocol: HTTP
    name: egresshttp
  hosts:
  - "prod-us1/*"
- port:
    number: 0
  bind: unix:///var/run/mysql.sock
  captureMode: NONE
  hosts:
  - "*/mysql.foo.com"
- hosts:
  - "./*"
  - "istio-system/*"
  - "~/*.internal.example.com"
outboundTrafficPolicy:
  mode: ALLOW_ANY
  egressProxy:
    host: foo.bar.com
    subset: v1
    port:
      number: 443
"#;

    #[test]
    fn full_example_decodes_and_validates_clean() {
        let sc = parse(FULL);
        assert_eq!(sc.ingress[0].capture_mode, CaptureMode::Iptables);
        assert_eq!(
            sc.outbound_traffic_policy.as_ref().unwrap().mode,
            OutboundTrafficPolicyMode::AllowAny
        );
        let r = run(FULL);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn empty_outbound_policy_is_registry_only() {
        let sc = parse("outboundTrafficPolicy: {}");
        assert_eq!(
            sc.outbound_traffic_policy.unwrap().mode,
            OutboundTrafficPolicyMode::RegistryOnly
        );
    }

    #[test]
    fn typo_gets_did_you_mean() {
        let doc = parse_stream("egress:\n- hots: ['*/*']\n").unwrap().remove(0);
        let cx = DecodeCx::new(true);
        let _ = decode::<Sidecar>(&doc, "spec", &cx);
        let issues = cx.into_issues();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path, "spec.egress[0].hots");
        assert_eq!(issues[0].message, "unknown field `hots`, did you mean `hosts`?");
    }

    // A0 / A11.
    #[test_case("{}", &["sidecar: empty configuration provided"]; "empty")]
    #[test_case("outboundTrafficPolicy: {}", &[]; "only policy")]
    #[test_case("workloadSelector: {labels: {'a*': b}}\negress: []", &["wildcard is not supported in selector: \"a*=b\""]; "bad selector stops")]
    #[test_case("workloadSelector: {labels: {'': b}}\negress: [{}]", &["empty key is not supported in selector: \"=b\""]; "empty key stops")]
    fn top_level(yaml: &str, want: &[&str]) {
        assert_eq!(errors(yaml), want);
    }

    #[test]
    fn selector_without_labels_warns() {
        let yaml = "workloadSelector: {}\negress: [{hosts: ['*/*']}]";
        assert!(errors(yaml).is_empty());
        assert_eq!(
            warnings(yaml),
            ["sidecar: workload selector specified without labels, will be applied to all services in namespace"]
        );
    }

    // A36: egress listeners.
    #[test_case("[{port: {number: 80}, hosts: ['*/*']}, {hosts: ['*/*']}]", &[]; "catch-all last")]
    #[test_case("[{hosts: ['*/*']}, {port: {number: 80}, hosts: ['*/*']}]", &["sidecar: the egress listener with empty port should be the last listener in the list"]; "catch-all first")]
    #[test_case("[{hosts: ['*/*']}, {hosts: ['*/*']}]", &["sidecar: the egress listener with empty port should be the last listener in the list"]; "two catch-alls")]
    #[test_case("[{port: {number: 80}, hosts: ['*/*']}, {port: {number: 80}, hosts: ['*/*']}]", &["sidecar: ports on IP bound listeners must be unique"]; "duplicate port")]
    #[test_case("[{port: {number: 80}}]", &["sidecar: egress listener must contain at least one host"]; "no hosts")]
    #[test_case("[{port: {number: 80, name: 'a_b', protocol: QUIC}, hosts: ['*/*']}]", &["invalid port name: a_b", "unsupported protocol: QUIC"]; "bad port")]
    #[test_case("[{port: {number: 70000}, hosts: ['*/*']}]", &["port number 70000 must be in the range 1..65535"]; "bad number")]
    #[test_case("[{port: {number: 80}, bind: x, hosts: ['*/*']}]", &["x is not a valid IP"]; "bad bind")]
    #[test_case("[{port: {number: 0}, hosts: ['*/*']}]", &["sidecar: ports with 0 value must have a unix domain socket bind address"]; "port zero")]
    #[test_case("[{port: {number: 0}, bind: 'unix:///a', captureMode: IPTABLES, hosts: ['*/*']}]", &["sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners"]; "uds capture")]
    #[test_case("[{port: {number: 0, protocol: QUIC}, bind: 'unix:///a', hosts: ['*/*']}]", &["unsupported protocol: QUIC"]; "uds protocol")]
    #[test_case("[{port: {number: 80, targetPort: 8080}, hosts: ['*/*']}]", &["targetPort has no impact on Sidecars"]; "egress target port")]
    #[test_case("[{port: {}, bind: 'unix:///a', hosts: ['*/*']}, {port: {}, bind: 'unix:///a', hosts: ['*/*']}]", &["sidecar: unix domain socket values for listeners must be unique"]; "uds twice")]
    fn egress(egress: &str, want: &[&str]) {
        assert_eq!(errors(&format!("egress: {egress}\n")), want);
    }

    #[test]
    fn three_catch_alls() {
        assert_eq!(
            errors("egress: [{hosts: ['*/*']}, {hosts: ['*/*']}, {hosts: ['*/*']}]"),
            [
                "sidecar: the egress listener with empty port should be the last listener in the list",
                "sidecar: the egress listener with empty port should be the last listener in the list",
            ]
        );
    }

    // A36: egress hosts.
    #[test_case("['*/*', './a.com', 'ns/*.a.com', '~/*', 'istio-system/*']", &[]; "good")]
    // `~` excludes a namespace: `~ns/host`, `~*/...` and `~./...` are accepted.
    #[test_case("['~ns/a.com', '~*/b.com', '~./c.com', '~/*']", &[]; "excluded namespaces")]
    #[test_case("['~Bad_ns/a.com']", &["invalid namespace value \"~Bad_ns\" in sidecar"]; "bad excluded namespace")]
    #[test_case("[a.com]", &["host must be of form namespace/dnsName"]; "no namespace")]
    #[test_case("['Bad_ns/a.com']", &["invalid namespace value \"Bad_ns\" in sidecar"]; "bad namespace")]
    #[test_case("['ns/a']", &["short names (non FQDN) are not allowed"]; "short")]
    #[test_case("['ns/*a.com']", &["partial wildcard \"*a.com\" not allowed"]; "partial wildcard")]
    #[test_case("['ns/10.0.0.1']", &["domain name \"0.0.1\" invalid (top level domain \"1\" cannot be all-numeric)"]; "ip")]
    fn egress_hosts(hosts: &str, want: &[&str]) {
        assert_eq!(errors(&format!("egress: [{{hosts: {hosts}}}]\n")), want);
    }

    #[test_case("['ns/a.com', 'ns/a.com']", &["duplicated egress host: ns/a.com"]; "same")]
    #[test_case("['ns/*', 'ns/a.com']", &["duplicated egress host: ns/a.com"]; "covered")]
    #[test_case("['ns/a.com', 'ns/*']", &["duplicated egress host: ns/*"]; "covering")]
    #[test_case("['./a.com', 'ns/a.com']", &["duplicated egress host: ns/a.com"]; "dot is own namespace")]
    #[test_case("['*/*', 'ns/a.com']", &["`*/*` host select all resources, no other hosts can be added"]; "star star")]
    #[test_case("['ns/a.com', 'ns/b.com', 'other/a.com']", &[]; "distinct")]
    // Excluded namespaces import nothing, so they neither repeat nor widen `*/*`.
    #[test_case("['*/*', '~ns/*', '~/*']", &[]; "star star with exclusions")]
    #[test_case("['ns/*', '~ns/a.com']", &[]; "exclusion is no duplicate")]
    fn duplicate_egress_hosts(hosts: &str, want: &[&str]) {
        let yaml = format!("egress: [{{hosts: {hosts}}}]\n");
        assert!(errors(&yaml).is_empty());
        assert_eq!(warnings(&yaml), want);
    }

    // A36: ingress listeners.
    #[test_case("[{port: {number: 80}, defaultEndpoint: '127.0.0.1:8080'}]", &[]; "good")]
    #[test_case("[{defaultEndpoint: '127.0.0.1:8080'}]", &["sidecar: port is required for ingress listeners"]; "no port")]
    #[test_case("[{port: {number: 80, targetPort: 81}}]", &["targetPort has no impact on Sidecars"]; "target port")]
    #[test_case("[{port: {number: 80, protocol: QUIC, name: 'a.b'}}]", &["invalid port name: a.b", "unsupported protocol: QUIC"]; "bad port")]
    #[test_case("[{port: {number: 80}}, {port: {number: 80}}]", &["sidecar: ports on IP bound listeners must be unique"]; "duplicate")]
    #[test_case("[{port: {number: 80}, bind: '::g'}]", &["::g is not a valid IP"]; "bind")]
    #[test_case("[{port: {number: 80}, defaultEndpoint: '10.0.0.1:8080'}]", &["sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,[::1]:port,[::]:port,unix://filepath or unset"]; "other host")]
    #[test_case("[{port: {number: 80}, defaultEndpoint: '[::]:8080'}]", &[]; "ipv6 any")]
    #[test_case("[{port: {number: 80}, defaultEndpoint: ':8080'}]", &[]; "port only")]
    // Istio goes on with an empty port after the split error.
    #[test_case("[{port: {number: 80}, defaultEndpoint: '127.0.0.1'}]", &["address 127.0.0.1: missing port in address", "sidecar: defaultEndpoint port () is not a number: strconv.Atoi: parsing \"\": invalid syntax"]; "no port in endpoint")]
    #[test_case("[{port: {number: 80}, defaultEndpoint: '127.0.0.1:http'}]", &["sidecar: defaultEndpoint port (http) is not a number: strconv.Atoi: parsing \"http\": invalid syntax"]; "named port")]
    #[test_case("[{port: {number: 80}, defaultEndpoint: '127.0.0.1:0'}]", &["port number 0 must be in the range 1..65535"]; "port zero")]
    #[test_case("[{port: {number: 80}, defaultEndpoint: 'unix://'}]", &["unix address must not be empty"]; "empty uds")]
    fn ingress(ingress: &str, want: &[&str]) {
        assert_eq!(errors(&format!("ingress: {ingress}\n")), want);
    }

    #[test_case("HTTPS", "{mode: SIMPLE, serverCertificate: c, privateKey: k}", &[]; "good")]
    #[test_case("HTTP", "{mode: SIMPLE, serverCertificate: c, privateKey: k}", &["server cannot have TLS settings for non HTTPS/TLS ports"]; "not tls port")]
    #[test_case("HTTPS", "{mode: SIMPLE}", &["SIMPLE TLS requires a server certificate", "SIMPLE TLS requires a private key"]; "no certs")]
    #[test_case("HTTPS", "{mode: ISTIO_MUTUAL}", &["configuration is invalid: cannot set mode to ISTIO_MUTUAL in sidecar ingress tls"]; "istio mutual")]
    #[test_case("HTTPS", "{mode: SIMPLE, credentialName: s}", &["sidecar: credentialName is not currently supported"]; "credential")]
    #[test_case("HTTPS", "{mode: SIMPLE, credentialNames: [a, b]}", &["sidecar: credentialNames is not currently supported"]; "credentials")]
    #[test_case("HTTPS", "{mode: SIMPLE, tlsCertificates: [{serverCertificate: c, privateKey: k}]}", &["sidecar: tls_certificates is not currently supported"]; "tls certificates")]
    #[test_case("HTTPS", "{mode: SIMPLE, serverCertificate: c, privateKey: k, subjectAltNames: [a], httpsRedirect: true}", &["sidecar: subjectAltNames is not supported in ingress tls", "sidecar: httpsRedirect is not supported"]; "unsupported")]
    fn ingress_tls(protocol: &str, tls: &str, want: &[&str]) {
        assert_eq!(
            errors(&format!(
                "ingress: [{{port: {{number: 443, protocol: {protocol}}}, tls: {tls}}}]\n"
            )),
            want
        );
    }

    #[test_case("ingress: [{port: {number: 80}, connectionPool: {}}]", &["connection pool must have at least one field"]; "empty ingress pool")]
    #[test_case("inboundConnectionPool: {tcp: {maxConnections: -1}}", &["max connections must be non-negative"]; "negative")]
    #[test_case("inboundConnectionPool: {http: {idleTimeout: 0s}}", &["duration must be greater than 1ms"]; "duration")]
    fn connection_pools(yaml: &str, want: &[&str]) {
        assert_eq!(errors(yaml), want);
    }

    #[test]
    fn http_pool_on_tcp_port_warns() {
        let yaml = "ingress: [{port: {number: 80, name: db, protocol: TCP}, connectionPool: {http: {maxRetries: 1}}}]";
        assert!(errors(yaml).is_empty());
        assert_eq!(
            warnings(yaml),
            [
                "sidecar: HTTP connection pool settings are configured for port 80 (\"db\") but its protocol is not HTTP (TCP); only TCP settings will apply"
            ]
        );
    }

    // A36: outbound traffic policy.
    #[test_case("{mode: ALLOW_ANY, egressProxy: {host: proxy.com, port: {number: 3128}}}", &[]; "good")]
    #[test_case("{egressProxy: {host: proxy.com, port: {number: 3128}}}", &["sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode"]; "registry only")]
    #[test_case("{mode: ALLOW_ANY, egressProxy: {host: proxy.com}}", &["sidecar: egress_proxy port must be non-nil"]; "no port")]
    #[test_case("{mode: ALLOW_ANY, egressProxy: {host: '*.proxy.com', port: {number: 3128}}}", &["domain name \"*.proxy.com\" invalid (label \"*\" invalid)"]; "wildcard host")]
    #[test_case("{mode: ALLOW_ANY, egressProxy: {host: proxy.com, subset: V_1, port: {number: 0}}}", &["subset name is invalid: V_1", "port number 0 must be in the range 1..65535"]; "bad destination")]
    fn outbound(policy: &str, want: &[&str]) {
        assert_eq!(errors(&format!("outboundTrafficPolicy: {policy}\n")), want);
    }

    #[test]
    fn paths_are_full() {
        let r = run("egress: [{hosts: ['*/*']}, {port: {number: 80}, hosts: ['ns/a.com', a.com]}]");
        assert_eq!(r.problems[0].path, "spec.egress[0]");
        assert_eq!(r.problems[1].path, "spec.egress[1].hosts[1]");
    }
}
