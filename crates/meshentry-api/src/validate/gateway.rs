//! Gateway validation (A33-A35), and the server TLS and `namespace/dnsName` host checks that
//! Sidecar shares.

use std::collections::BTreeSet;

use super::Report;
use super::common::{
    is_dns1123_label_ci, is_http_protocol, is_partial_wildcard, is_tls_protocol, parse_protocol, unix_path_error,
    validate_port_number, wildcard_domain_error,
};
use crate::model::{Gateway, GatewayPort, Server, ServerTlsMode, ServerTlsSettings, TlsProtocol};

/// Istio's `ValidateGateway`. `name` is `metadata.name`.
pub fn validate_gateway(gw: &Gateway, name: &str, r: &mut Report) {
    // An empty name is already reported by the loader's metadata checks.
    // Istio's label check allows upper case; the loader reports it in any metadata.name.
    if !name.is_empty() && !is_dns1123_label_ci(name) {
        r.error("metadata.name", format!("invalid gateway name: {name:?}"));
    }
    if gw.servers.is_empty() {
        r.error("spec.servers", "gateway must have at least one server");
    }
    for (i, s) in gw.servers.iter().enumerate() {
        validate_server(r, &format!("spec.servers[{i}]"), s);
    }
    let mut names = BTreeSet::new();
    for (i, s) in gw.servers.iter().enumerate() {
        let Some(port) = &s.port else { continue };
        if !names.insert(port.name.as_str()) {
            r.error(
                format!("spec.servers[{i}].port.name"),
                format!("port names in servers must be unique: duplicate name {}", port.name),
            );
        }
        if !is_http_protocol(&port.protocol) && s.tls.as_ref().is_some_and(|t| t.https_redirect) {
            r.warn(
                format!("spec.servers[{i}].tls.httpsRedirect"),
                "tls.httpsRedirect should only be used with http servers",
            );
        }
    }
}

fn validate_server(r: &mut Report, path: &str, s: &Server) {
    if s.hosts.is_empty() {
        r.error(format!("{path}.hosts"), "server config must contain at least one host");
    }
    for (k, h) in s.hosts.iter().enumerate() {
        validate_namespace_slash_host(r, &format!("{path}.hosts[{k}]"), h, true);
    }
    let before = r.problems.len();
    validate_server_port(r, path, s.port.as_ref(), &s.bind);
    let port_ok = r.problems.len() == before;
    validate_server_bind(r, &format!("{path}.bind"), s.port.as_ref(), &s.bind);
    if let Some(tls) = &s.tls {
        validate_server_tls(r, &format!("{path}.tls"), tls);
    }
    // Like Istio, only a server whose port passed its checks is checked against its TLS.
    if let (true, Some(port)) = (port_ok, &s.port) {
        let tls_path = format!("{path}.tls");
        match &s.tls {
            None if is_tls_protocol(&port.protocol) => {
                r.error(path, "server must have TLS settings for HTTPS/TLS protocols");
            }
            Some(tls) if !is_tls_protocol(&port.protocol) => {
                if is_http_protocol(&port.protocol) {
                    // An HTTP server may carry `tls` only to ask for an HTTPS redirect.
                    let passthrough = matches!(tls.mode, ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough);
                    if !passthrough
                        || !tls.ca_certificates.is_empty()
                        || !tls.private_key.is_empty()
                        || !tls.server_certificate.is_empty()
                    {
                        r.error(tls_path, "server cannot have TLS settings for plain text HTTP ports");
                    }
                } else {
                    r.error(tls_path, "server cannot have TLS settings for non HTTPS/TLS ports");
                }
            }
            _ => {}
        }
    }
}

/// Go's `%v` of an Istio `Port` message (prototext), for "port name must be set: %v".
fn port_text(p: &GatewayPort) -> String {
    let mut parts = Vec::new();
    if p.number != 0 {
        parts.push(format!("number:{}", p.number));
    }
    if !p.protocol.is_empty() {
        parts.push(format!("protocol:{:?}", p.protocol));
    }
    if p.target_port != 0 {
        parts.push(format!("target_port:{}", p.target_port));
    }
    parts.join(" ")
}

fn validate_server_port(r: &mut Report, path: &str, port: Option<&GatewayPort>, bind: &str) {
    let Some(port) = port else {
        r.error(format!("{path}.port"), "port is required");
        return;
    };
    let p = format!("{path}.port");
    if parse_protocol(&port.protocol).is_none() {
        r.error(
            format!("{p}.protocol"),
            format!(
                "invalid protocol {:?}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP",
                port.protocol
            ),
        );
    }
    if port.number > 0 || !bind.starts_with("unix://") {
        validate_port_number(r, &format!("{p}.number"), port.number);
    }
    if port.target_port > 0 {
        r.error(format!("{p}.targetPort"), "targetPort has no impact on Gateways");
    }
    if port.name.is_empty() {
        r.error(
            format!("{p}.name"),
            format!("port name must be set: {}", port_text(port)),
        );
    }
}

fn validate_server_bind(r: &mut Report, path: &str, port: Option<&GatewayPort>, bind: &str) {
    if let Some(uds) = bind.strip_prefix("unix://") {
        if let Some(e) = unix_path_error(uds) {
            r.error(path, e);
        }
        if let Some(port) = port.filter(|p| p.number != 0) {
            r.error(
                path,
                format!("port number must be 0 for unix domain socket: {}", port_text(port)),
            );
        }
    } else if !bind.is_empty() && bind.parse::<std::net::IpAddr>().is_err() {
        r.error(path, format!("{bind} is not a valid IP"));
    }
}

/// A34 (gateway) and A36 (sidecar egress): `namespace/dnsName`; gateways may omit the
/// namespace (meaning `*`) and name an IP.
pub(super) fn validate_namespace_slash_host(r: &mut Report, path: &str, host: &str, gateway: bool) {
    let (ns, dns) = match host.split_once('/') {
        Some(parts) => parts,
        None if gateway => ("*", host),
        None => {
            r.error(path, "host must be of form namespace/dnsName");
            return;
        }
    };
    if ns.is_empty() || dns.is_empty() {
        r.error(path, "config namespace and dnsName in host entry cannot be empty");
    }
    let who = if gateway { "gateway" } else { "sidecar" };
    // A Sidecar egress namespace may carry `~`, which excludes it (`~/*`, `~ns/host`).
    let bare = if gateway {
        ns
    } else {
        ns.strip_prefix('~').unwrap_or(ns)
    };
    let special = bare == "*" || bare == "." || (!gateway && bare.is_empty());
    if !special && !is_dns1123_label_ci(bare) {
        r.error(path, format!("invalid namespace value {ns:?} in {who}"));
    }
    if dns != "*" && !dns.contains('.') {
        r.error(path, "short names (non FQDN) are not allowed");
    }
    if let Some(e) = wildcard_domain_error(dns)
        && !(gateway && dns.parse::<std::net::IpAddr>().is_ok())
    {
        r.error(path, e);
    }
    if is_partial_wildcard(dns) {
        r.error(path, format!("partial wildcard {dns:?} not allowed"));
    }
}

/// The cipher suites Istio accepts in `cipherSuites` (its `security.ValidCipherSuites`).
const CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
];

/// Istio's `IsValidCipherSuite`: a known suite, `ALL`, or an expression it does not parse
/// (one starting with neither a letter nor a digit, such as `-` or `+` operators).
fn is_valid_cipher_suite(cs: &str) -> bool {
    cs.is_empty() || cs == "ALL" || !cs.starts_with(|c: char| c.is_alphanumeric()) || CIPHER_SUITES.contains(&cs)
}

/// A35: Istio's `validateTLSOptions`, for Gateway servers and Sidecar ingress listeners.
pub(super) fn validate_server_tls(r: &mut Report, path: &str, tls: &ServerTlsSettings) {
    if matches!(tls.min_protocol_version, TlsProtocol::TlsV1_0 | TlsProtocol::TlsV1_1) && tls.cipher_suites.is_empty() {
        r.warn(
            format!("{path}.minProtocolVersion"),
            "TLS version below TLSV1_2 require setting compatible ciphers as by default they no longer include compatible ciphers.",
        );
    }
    let mut invalid = BTreeSet::new();
    let mut valid = BTreeSet::new();
    let mut duplicate = BTreeSet::new();
    for cs in &tls.cipher_suites {
        if !is_valid_cipher_suite(cs) {
            invalid.insert(cs.as_str());
        } else if !valid.insert(cs.as_str()) {
            duplicate.insert(cs.as_str());
        }
    }
    // Go's `%v` of a sorted list: `[a b]`.
    let list = |set: &BTreeSet<&str>| format!("[{}]", set.iter().copied().collect::<Vec<_>>().join(" "));
    if !invalid.is_empty() {
        r.warn(
            format!("{path}.cipherSuites"),
            format!("ignoring invalid cipher suites: {}", list(&invalid)),
        );
    }
    if !duplicate.is_empty() {
        r.warn(
            format!("{path}.cipherSuites"),
            format!("ignoring duplicate cipher suites: {}", list(&duplicate)),
        );
    }

    if tls.mode == ServerTlsMode::IstioMutual {
        // Istio's own certificates are used, so any other source is a mistake.
        for (set, what) in [
            (!tls.server_certificate.is_empty(), "server certificate"),
            (!tls.private_key.is_empty(), "private key"),
            (!tls.ca_certificates.is_empty(), "CA bundle"),
            (!tls.tls_certificates.is_empty(), "tlsCertificates"),
            (!tls.credential_name.is_empty(), "credentialName"),
            (!tls.credential_names.is_empty(), "credentialNames"),
        ] {
            if set {
                r.error(path, format!("ISTIO_MUTUAL TLS cannot have associated {what}"));
            }
        }
        return;
    }
    let passthrough = matches!(tls.mode, ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough);
    if passthrough
        && (!tls.ca_crl.is_empty()
            || !tls.server_certificate.is_empty()
            || !tls.private_key.is_empty()
            || !tls.ca_certificates.is_empty()
            || !tls.tls_certificates.is_empty()
            || !tls.credential_name.is_empty()
            || !tls.credential_names.is_empty())
    {
        r.warn(
            path,
            format!(
                "{} mode does not use certificates, they will be ignored",
                tls.mode.as_str()
            ),
        );
    }
    let sources = [
        !tls.server_certificate.is_empty() && !tls.private_key.is_empty(),
        !tls.credential_name.is_empty(),
        !tls.credential_names.is_empty(),
        !tls.tls_certificates.is_empty(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        r.error(
            path,
            "only one of credential_name, credential_names, server_certificate/private_key, tls_certificates should be specified",
        );
    }
    let terminates = matches!(
        tls.mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    // Secrets fetched by name carry the certificate, key and CA.
    if terminates && (!tls.credential_name.is_empty() || !tls.credential_names.is_empty()) {
        return;
    }
    if terminates {
        let prefix = if tls.mode == ServerTlsMode::Simple {
            "SIMPLE TLS"
        } else {
            "MUTUAL TLS"
        };
        // Istio wants the top-level bundle even when `tlsCertificates` carry their own.
        if prefix == "MUTUAL TLS" && tls.ca_certificates.is_empty() {
            r.error(
                format!("{path}.caCertificates"),
                format!("{prefix} requires a client CA bundle"),
            );
        }
        if tls.tls_certificates.len() > 2 {
            r.warn(
                format!("{path}.tlsCertificates"),
                format!("{prefix} can support up to 2 server certificates"),
            );
        }
        // `tlsCertificates` replaces the top-level pair, one entry per key type.
        let pairs: Vec<(String, &str, &str)> = if tls.tls_certificates.is_empty() {
            vec![(path.to_string(), &tls.server_certificate, &tls.private_key)]
        } else {
            tls.tls_certificates
                .iter()
                .enumerate()
                .map(|(k, c)| {
                    (
                        format!("{path}.tlsCertificates[{k}]"),
                        c.server_certificate.as_str(),
                        c.private_key.as_str(),
                    )
                })
                .collect()
        };
        for (p, cert, key) in pairs {
            if cert.is_empty() {
                r.error(
                    format!("{p}.serverCertificate"),
                    format!("{prefix} requires a server certificate"),
                );
            }
            if key.is_empty() {
                r.error(format!("{p}.privateKey"), format!("{prefix} requires a private key"));
            }
        }
    }
    if !tls.ca_crl.is_empty() {
        if !tls.credential_name.is_empty() {
            r.error(
                format!("{path}.caCrl"),
                "CRL is not supported with credentialName. CRL has to be specified in the credential",
            );
        }
        if tls.mode == ServerTlsMode::Simple {
            r.error(format!("{path}.caCrl"), "CRL is not supported with SIMPLE TLS");
        }
    }
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::super::Severity;
    use super::super::test_support::decode_clean;
    use super::*;
    use crate::de::{DecodeCx, decode};
    use crate::yaml::parse_stream;

    fn parse(yaml: &str) -> Gateway {
        decode_clean(yaml)
    }

    fn run(yaml: &str) -> Report {
        let mut r = Report::default();
        validate_gateway(&parse(yaml), "gw", &mut r);
        r
    }

    fn errors(yaml: &str) -> Vec<String> {
        run(yaml).messages_of(Severity::Error)
    }

    fn warnings(yaml: &str) -> Vec<String> {
        run(yaml).messages_of(Severity::Warning)
    }

    /// One server; `server` is its body in flow style without the braces.
    fn server(server: &str) -> String {
        format!("servers:\n- {{{server}}}\n")
    }

    const HTTP: &str = "port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']";

    const FULL: &str = r#"
selector:
  app: my-gateway-controller
servers:
- port:
    number: 80
    name: http
    protocol: HTTP
  hosts:
  - uk.bookinfo.com
  - eu.bookinfo.com
  tls:
    httpsRedirect: true
- port:
    number: 443
    name: https-443
    protocol: HTTPS
  hosts:
  - uk.bookinfo.com
  - eu.bookinfo.com
  tls:
    mode: SIMPLE
    serverCertificate: /etc/certs/servercert.pem
    privateKey: /etc/certs/privatekey.pem
    minProtocolVersion: TLSV1_2
    maxProtocolVersion: TLSV1_3
    cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]
- port:
    number: 9443
    name: https-9443
    protocol: HTTPS
  hosts:
  - "bookinfo-namespace/*.bookinfo.com"
  tls:
    mode: SIMPLE
    credentialName: bookinfo-secret
- port:
    number: 9080
    name: http-wildcard
    protocol: HTTP
  hosts:
  - "ns1/*"
  - "./*.example.com"
  name: wildcard
  bind: 0.0.0.0
- port:
    number: 2379
    name: mongo
    protocol: MONGO
  hosts:
  - "*"
- port:
    number: 8443
    name: mtls
    protocol: HTTPS
  hosts: ["*.example.com"]
  tls:
    mode: MUTUAL
    tlsCertificates:
    - serverCertificate: /etc/certs/rsa.pem
      privateKey: /etc/certs/rsa.key
    - serverCertificate: /etc/certs/ecdsa.pem
      privateKey: /etc/certs/ecdsa.key
    caCertificates: /etc/certs/ca.pem
    subjectAltNames: [spiffe://cluster.local/ns/a/sa/b]
    verifyCertificateSpki: [abc]
    verifyCertificateHash: [def]
    caCrl: /etc/certs/crl.pem
- port:
    number: 15443
    name: tls
    protocol: TLS
  hosts: ["*.local"]
  tls:
    mode: AUTO_PASSTHROUGH
- port:
    number: 16443
    name: tls-multi
    protocol: TLS
  hosts: ["a.example.com"]
  defaultEndpoint: 127.0.0.1:8080
  tls:
    mode: OPTIONAL_MUTUAL
    credentialNames: [rsa-secret, ecdsa-secret]
"#;

    #[test]
    fn full_example_decodes_and_validates_clean() {
        let gw = parse(FULL);
        assert_eq!(gw.servers.len(), 8);
        assert_eq!(gw.servers[1].tls.as_ref().unwrap().mode, ServerTlsMode::Simple);
        // `tls: {httpsRedirect: true}` leaves the mode at its proto zero value.
        assert_eq!(gw.servers[0].tls.as_ref().unwrap().mode, ServerTlsMode::Passthrough);
        let r = run(FULL);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn seed_example_is_clean() {
        let r = run(
            "selector: {istio: egressgateway}\nservers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['*']\n",
        );
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn typo_gets_did_you_mean() {
        let doc = parse_stream("servers:\n- port: {number: 80, name: http, protocl: HTTP}\n")
            .unwrap()
            .remove(0);
        let cx = DecodeCx::new(true);
        let _ = decode::<Gateway>(&doc, "spec", &cx);
        let issues = cx.into_issues();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path, "spec.servers[0].port.protocl");
        assert_eq!(issues[0].message, "unknown field `protocl`, did you mean `protocol`?");
    }

    // A33.
    #[test_case("gw", &[]; "good")]
    #[test_case("my.gw", &["invalid gateway name: \"my.gw\""]; "dotted")]
    fn gateway_name(name: &str, want: &[&str]) {
        let mut r = Report::default();
        validate_gateway(&parse(&server(HTTP)), name, &mut r);
        assert_eq!(r.messages(), want);
    }

    #[test_case("servers: []", &["gateway must have at least one server"]; "no servers")]
    #[test_case("servers: [{port: {number: 80, name: http, protocol: HTTP}}]", &["server config must contain at least one host"]; "no hosts")]
    #[test_case("servers: [{hosts: ['*']}]", &["port is required"]; "no port")]
    #[test_case("servers: [{hosts: ['*'], port: {number: 80, protocol: HTTP}}]", &["port name must be set: number:80 protocol:\"HTTP\""]; "no port name")]
    #[test_case("servers: [{hosts: ['*'], port: {number: 80, name: a, protocol: HTTP, targetPort: 8080}}]", &["targetPort has no impact on Gateways"]; "target port")]
    #[test_case("servers: [{hosts: ['*'], port: {number: 0, name: a, protocol: HTTP}}]", &["port number 0 must be in the range 1..65535"]; "port zero")]
    #[test_case("servers: [{hosts: ['*'], port: {name: a, protocol: HTTP}, bind: 'unix:///var/run/gw.sock'}]", &[]; "unix bind without number")]
    #[test_case("servers: [{hosts: ['*'], port: {number: 80, name: a, protocol: HTTP}, bind: 'unix://rel'}]", &["rel is not an absolute path to a file", "port number must be 0 for unix domain socket: number:80 protocol:\"HTTP\""]; "bad unix bind")]
    #[test_case("servers: [{hosts: ['*'], port: {number: 0, name: a, protocol: HTTP}, bind: 'unix:///a.sock'}]", &[]; "unix bind port zero")]
    #[test_case("servers: [{hosts: ['*'], port: {number: 80, name: a, protocol: HTTP}, bind: 'localhost'}]", &["localhost is not a valid IP"]; "bad bind")]
    #[test_case("servers: [{hosts: ['*'], port: {number: 80, name: a}}]", &["invalid protocol \"\", supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP"]; "no protocol")]
    #[test_case("servers: [{hosts: ['*'], port: {number: 80, name: a, protocol: QUIC}}]", &["invalid protocol \"QUIC\", supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP"]; "bad protocol")]
    #[test_case("servers: [{hosts: ['*'], port: {number: 80, name: a, protocol: http}}, {hosts: ['*'], port: {number: 81, name: a, protocol: HTTP}}]", &["port names in servers must be unique: duplicate name a"]; "duplicate names")]
    fn servers(yaml: &str, want: &[&str]) {
        assert_eq!(errors(yaml), want);
    }

    // A34: hosts.
    #[test_case("['*', a.com, '*.a.com', 'ns/a.com', './a.com', '*/a.com', 10.0.0.1]", &[]; "good")]
    #[test_case("[a]", &["short names (non FQDN) are not allowed"]; "short")]
    #[test_case("['Bad_NS/a.com']", &["invalid namespace value \"Bad_NS\" in gateway"]; "bad ns")]
    #[test_case("['~/a.com']", &["invalid namespace value \"~\" in gateway"]; "tilde")]
    #[test_case("['*a.com']", &["partial wildcard \"*a.com\" not allowed"]; "partial wildcard")]
    #[test_case("['ns/']", &["config namespace and dnsName in host entry cannot be empty", "short names (non FQDN) are not allowed", "empty domain name not allowed"]; "empty dns")]
    #[test_case("['a..com']", &["domain name \".com\" invalid (label \"\" invalid)"]; "bad dns")]
    fn hosts(hosts: &str, want: &[&str]) {
        assert_eq!(
            errors(&server(&format!(
                "port: {{number: 80, name: http, protocol: HTTP}}, hosts: {hosts}"
            ))),
            want
        );
    }

    // A35: TLS.
    #[test_case("HTTPS", "", &["server must have TLS settings for HTTPS/TLS protocols"]; "https without tls")]
    #[test_case("HTTP", "tls: {httpsRedirect: true}", &[]; "redirect")]
    #[test_case("HTTP", "tls: {mode: SIMPLE, credentialName: s}", &["server cannot have TLS settings for plain text HTTP ports"]; "http with tls")]
    #[test_case("HTTP", "tls: {serverCertificate: c}", &["server cannot have TLS settings for plain text HTTP ports"]; "http with cert")]
    #[test_case("TCP", "tls: {mode: SIMPLE, credentialName: s}", &["server cannot have TLS settings for non HTTPS/TLS ports"]; "tcp with tls")]
    #[test_case("HTTPS", "tls: {mode: ISTIO_MUTUAL}", &[]; "istio mutual")]
    #[test_case("HTTPS", "tls: {mode: ISTIO_MUTUAL, serverCertificate: c, privateKey: k, caCertificates: ca, credentialName: s}", &["ISTIO_MUTUAL TLS cannot have associated server certificate", "ISTIO_MUTUAL TLS cannot have associated private key", "ISTIO_MUTUAL TLS cannot have associated CA bundle", "ISTIO_MUTUAL TLS cannot have associated credentialName"]; "istio mutual with certs")]
    #[test_case("HTTPS", "tls: {mode: SIMPLE}", &["SIMPLE TLS requires a server certificate", "SIMPLE TLS requires a private key"]; "simple without certs")]
    #[test_case("HTTPS", "tls: {mode: SIMPLE, serverCertificate: c, privateKey: k}", &[]; "simple with files")]
    #[test_case("HTTPS", "tls: {mode: MUTUAL, serverCertificate: c, privateKey: k}", &["MUTUAL TLS requires a client CA bundle"]; "mutual without ca")]
    // Istio names the mode's family in each message.
    #[test_case("HTTPS", "tls: {mode: MUTUAL}", &["MUTUAL TLS requires a client CA bundle", "MUTUAL TLS requires a server certificate", "MUTUAL TLS requires a private key"]; "mutual without anything")]
    #[test_case("HTTPS", "tls: {mode: OPTIONAL_MUTUAL, caCertificates: ca}", &["MUTUAL TLS requires a server certificate", "MUTUAL TLS requires a private key"]; "optional mutual")]
    #[test_case("HTTPS", "tls: {mode: MUTUAL, tlsCertificates: [{serverCertificate: c, privateKey: k, caCertificates: ca}]}", &["MUTUAL TLS requires a client CA bundle"]; "mutual wants the top level bundle")]
    #[test_case("HTTPS", "tls: {mode: SIMPLE, serverCertificate: c, privateKey: k, credentialName: s}", &["only one of credential_name, credential_names, server_certificate/private_key, tls_certificates should be specified"]; "two sources")]
    #[test_case("HTTPS", "tls: {mode: ISTIO_MUTUAL, tlsCertificates: [{serverCertificate: c}], credentialNames: [a]}", &["ISTIO_MUTUAL TLS cannot have associated tlsCertificates", "ISTIO_MUTUAL TLS cannot have associated credentialNames"]; "istio mutual with sources")]
    #[test_case("HTTPS", "tls: {mode: SIMPLE, serverCertificate: c, privateKey: k, caCrl: crl}", &["CRL is not supported with SIMPLE TLS"]; "crl simple")]
    #[test_case("TLS", "tls: {mode: PASSTHROUGH, caCrl: crl, credentialName: s}", &["CRL is not supported with credentialName. CRL has to be specified in the credential"]; "crl credential")]
    #[test_case("HTTPS", "tls: {mode: MUTUAL, credentialName: s}", &[]; "mutual with credential")]
    #[test_case("HTTPS", "tls: {mode: SIMPLE, tlsCertificates: [{serverCertificate: c}]}", &["SIMPLE TLS requires a private key"]; "tls certificates")]
    #[test_case("TLS", "tls: {mode: PASSTHROUGH}", &[]; "passthrough")]
    fn tls(protocol: &str, tls: &str, want: &[&str]) {
        let sep = if tls.is_empty() { "" } else { ", " };
        let yaml = server(&format!(
            "port: {{number: 443, name: p, protocol: {protocol}}}, hosts: ['*']{sep}{tls}"
        ));
        assert_eq!(errors(&yaml), want);
    }

    #[test]
    fn passthrough_with_certs_warns() {
        let yaml = server("port: {number: 443, name: p, protocol: TLS}, hosts: ['*'], tls: {serverCertificate: c}");
        assert!(errors(&yaml).is_empty());
        assert_eq!(
            warnings(&yaml),
            ["PASSTHROUGH mode does not use certificates, they will be ignored"]
        );
    }

    // validateTLSOptions' warnings: old TLS without ciphers, unknown or repeated ciphers
    // (Go's `%v` of the sorted list), more than two certificates.
    #[test_case("minProtocolVersion: TLSV1_1", &["TLS version below TLSV1_2 require setting compatible ciphers as by default they no longer include compatible ciphers."]; "old tls")]
    #[test_case("minProtocolVersion: TLSV1_0, cipherSuites: [AES128-SHA]", &[]; "old tls with ciphers")]
    #[test_case("cipherSuites: [FOO, AES128-SHA, BAR, AES128-SHA, '-ALL', ALL]", &["ignoring invalid cipher suites: [BAR FOO]", "ignoring duplicate cipher suites: [AES128-SHA]"]; "ciphers")]
    #[test_case("tlsCertificates: [{serverCertificate: a, privateKey: a}, {serverCertificate: b, privateKey: b}, {serverCertificate: c, privateKey: c}]", &["SIMPLE TLS can support up to 2 server certificates"]; "three certificates")]
    fn tls_warnings(extra: &str, want: &[&str]) {
        let yaml = server(&format!(
            "port: {{number: 443, name: p, protocol: HTTPS}}, hosts: ['*'], tls: {{mode: SIMPLE, credentialName: s, {extra}}}"
        ));
        let yaml = if extra.starts_with("tlsCertificates") {
            yaml.replace("credentialName: s, ", "")
        } else {
            yaml
        };
        assert!(errors(&yaml).is_empty(), "{:?}", errors(&yaml));
        assert_eq!(warnings(&yaml), want);
    }

    #[test]
    fn https_redirect_on_non_http_warns() {
        let yaml = server(
            "port: {number: 443, name: p, protocol: HTTPS}, hosts: ['*'], tls: {httpsRedirect: true, mode: SIMPLE, credentialName: s}",
        );
        assert!(errors(&yaml).is_empty());
        assert_eq!(
            warnings(&yaml),
            ["tls.httpsRedirect should only be used with http servers"]
        );
        assert!(warnings(&server(&format!("{HTTP}, tls: {{httpsRedirect: true}}"))).is_empty());
    }

    #[test]
    fn paths_are_full() {
        let r = run("servers: [{hosts: ['*'], port: {number: 0, name: a, protocol: HTTP}}]");
        assert_eq!(r.problems[0].path, "spec.servers[0].port.number");
        let r = run(&server(
            "port: {number: 443, name: p, protocol: HTTPS}, hosts: [a], tls: {mode: SIMPLE, credentialName: s}",
        ));
        assert_eq!(r.problems[0].path, "spec.servers[0].hosts[0]");
    }
}
