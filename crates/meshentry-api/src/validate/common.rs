//! Rules shared by several kinds (A1-A11): ports, protocols, host names, IPs and CIDRs, labels,
//! unix socket paths, exportTo, selectors, durations.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::Report;
use crate::model::Duration;

/// Protocols Istio knows (A3), upper case.
pub const PROTOCOLS: &[&str] = &[
    "TCP",
    "UDP",
    "GRPC",
    "GRPC-WEB",
    "HTTP",
    "HTTP_PROXY",
    "HTTP2",
    "HTTPS",
    "TLS",
    "MONGO",
    "REDIS",
    "MYSQL",
];

/// A1.
pub fn validate_port_number(r: &mut Report, path: &str, port: u32) {
    if !(1..=65535).contains(&port) {
        r.error(path, format!("port number {port} must be in the range 1..65535"));
    }
}

/// A2: a DNS-1123 label (Istio allows upper case here).
pub fn is_port_name(name: &str) -> bool {
    is_dns1123_label_ci(name)
}

pub fn validate_port_name(r: &mut Report, path: &str, name: &str) {
    if !is_port_name(name) {
        r.error(path, format!("invalid port name: {name}"));
    }
}

/// A3 for ServiceEntry and Sidecar ports: empty means "auto-detect".
pub fn validate_protocol(r: &mut Report, path: &str, protocol: &str) {
    if !protocol.is_empty() && parse_protocol(protocol).is_none() {
        r.error(path, format!("unsupported protocol: {protocol}"));
    }
}

/// The canonical (upper-case) name of a known protocol.
pub fn parse_protocol(protocol: &str) -> Option<&'static str> {
    PROTOCOLS.iter().copied().find(|p| p.eq_ignore_ascii_case(protocol))
}

pub fn is_http_protocol(protocol: &str) -> bool {
    matches!(
        parse_protocol(protocol),
        Some("HTTP" | "HTTP2" | "HTTP_PROXY" | "GRPC" | "GRPC-WEB")
    )
}

pub fn is_tls_protocol(protocol: &str) -> bool {
    matches!(parse_protocol(protocol), Some("HTTPS" | "TLS"))
}

pub fn is_tcp_protocol(protocol: &str) -> bool {
    matches!(
        parse_protocol(protocol),
        Some("TCP" | "HTTPS" | "TLS" | "MONGO" | "REDIS" | "MYSQL")
    )
}

/// Lower-case DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63.
pub fn is_dns1123_label(s: &str) -> bool {
    is_dns1123_label_ci(s) && !s.bytes().any(|b| b.is_ascii_uppercase())
}

/// DNS-1123 label allowing upper case, as Istio's domain and port-name checks do.
pub fn is_dns1123_label_ci(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// A4: the error message for a host that may carry a leading wildcard, or `None` when valid.
pub fn wildcard_domain_error(domain: &str) -> Option<String> {
    domain_error(domain, true)
}

/// A5: like A4 without any `*`.
pub fn fqdn_error(domain: &str) -> Option<String> {
    domain_error(domain, false)
}

fn domain_error(domain: &str, allow_wildcard: bool) -> Option<String> {
    if domain.is_empty() {
        return Some("empty domain name not allowed".into());
    }
    if domain.len() > 255 {
        return Some(format!("domain name {domain:?} too long (max 255)"));
    }
    let trimmed = domain.strip_suffix('.').unwrap_or(domain);
    let labels: Vec<&str> = trimmed.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        let ok = if i == 0 && allow_wildcard {
            *label == "*"
                || label
                    .strip_prefix('*')
                    .is_some_and(|rest| rest.is_empty() || is_wildcard_tail(rest))
                || is_dns1123_label_ci(label)
        } else {
            is_dns1123_label_ci(label)
        };
        if !ok {
            return Some(format!("domain name {domain:?} invalid (label {label:?} invalid)"));
        }
    }
    if labels.len() > 1
        && let Some(last) = labels.last()
        && last.bytes().all(|b| b.is_ascii_digit())
    {
        return Some(format!(
            "domain name {domain:?} invalid (top level domain {last:?} cannot be all-numeric)"
        ));
    }
    None
}

/// The part after a leading `*` in a first label: `*foo` or `*-foo`.
fn is_wildcard_tail(rest: &str) -> bool {
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    rest.is_empty() || is_dns1123_label_ci(rest)
}

/// A6: `*foo.com` style (a `*` that is not the whole host and not a `*.` prefix).
pub fn is_partial_wildcard(host: &str) -> bool {
    host.contains('*') && host != "*" && !host.starts_with("*.")
}

/// A7: an IP or a CIDR (host bits allowed).
pub fn ip_or_cidr_error(s: &str) -> Option<String> {
    match s.split_once('/') {
        Some((ip, bits)) => {
            let ok = match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
                (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32 && !bits.starts_with('+'),
                (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128 && !bits.starts_with('+'),
                _ => false,
            };
            (!ok).then(|| format!("{s} is not a valid CIDR block"))
        }
        None => s.parse::<IpAddr>().is_err().then(|| format!("{s} is not a valid IP")),
    }
}

pub fn is_cidr(s: &str) -> bool {
    s.contains('/')
}

/// A8: Kubernetes label keys and values.
pub fn validate_labels(r: &mut Report, path: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        let p = field(path, k);
        if !is_label_key(k) {
            r.error(&p, format!("invalid tag key: {k:?}"));
        }
        if !is_label_value(v) {
            r.error(&p, format!("invalid tag value: {v:?}"));
        }
    }
}

/// `[prefix/]name`: prefix a DNS-1123 subdomain (<= 253), name a qualified name (<= 63).
pub fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || !p.split('.').all(is_dns1123_label))
    {
        return false;
    }
    is_qualified_name(name)
}

fn is_qualified_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

pub fn is_label_value(v: &str) -> bool {
    v.is_empty() || is_qualified_name(v)
}

/// A9: the part after `unix://`.
pub fn unix_path_error(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("unix address must not be empty".into());
    }
    if path.starts_with('@') {
        return None;
    }
    if !path.starts_with('/') || path.ends_with('/') {
        return Some(format!("{path} is not an absolute path to a file"));
    }
    None
}

/// A10. `allow_none`: `~` is accepted (ServiceEntry only).
pub fn validate_export_to(r: &mut Report, path: &str, namespace: &str, export_to: &[String], allow_none: bool) {
    let mut seen: Vec<&str> = Vec::new();
    for (i, e) in export_to.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if e == "~" {
            if !allow_none {
                r.error(&p, "exportTo ~ (none) is not allowed for Istio configuration objects");
            }
        } else if e != "." && e != "*" && !is_dns1123_label(e) {
            r.error(&p, "only .,*, or a valid DNS 1123 label is allowed as exportTo entry");
        }
        if seen.contains(&e.as_str()) {
            r.error(&p, format!("duplicate entries in exportTo for entry {e}"));
        }
        seen.push(e);
    }
    if seen.contains(&".") && seen.contains(&namespace) {
        r.error(
            path,
            format!("duplicate entries in exportTo: . and current namespace {namespace}"),
        );
    }
    if seen.contains(&"*") && seen.len() > 1 {
        r.error(
            path,
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
    if allow_none && seen.contains(&"~") && seen.len() > 1 {
        r.error(path, "cannot export service entry to no one (~) and someone");
    }
}

/// A11: a `workloadSelector`'s labels. `who` prefixes the warning ("service entry",
/// "sidecar"); returns false when Istio would stop validating the resource here (A0).
pub fn validate_selector(r: &mut Report, path: &str, labels: &BTreeMap<String, String>, who: &str) -> bool {
    let lpath = format!("{path}.labels");
    let before = r.problems.len();
    for (k, v) in labels {
        if k.is_empty() {
            r.error(&lpath, format!("empty key is not supported in selector: {k:?}"));
        }
        if k.contains('*') || v.contains('*') {
            r.error(
                field(&lpath, k),
                format!("wildcard is not supported in selector: {k:?}"),
            );
        }
    }
    validate_labels(r, &lpath, labels);
    if labels.is_empty() {
        let msg = if who.is_empty() {
            "workload selector specified without labels".to_string()
        } else {
            format!("{who}: workload selector specified without labels, will be applied to all services in namespace")
        };
        r.warn(path, msg);
    }
    !r.problems[before..]
        .iter()
        .any(|p| p.severity == super::Severity::Error)
}

/// Durations: valid syntax, at least 1ms, millisecond precision.
pub fn validate_duration(r: &mut Report, path: &str, d: &Duration) {
    match d.parse() {
        Err(e) => r.error(path, e),
        Ok(v) if v < std::time::Duration::from_millis(1) => r.error(path, "duration must be greater than 1ms"),
        Ok(v) if v.subsec_nanos() % 1_000_000 != 0 => r.error(path, "only durations to ms precision are supported"),
        Ok(_) => {}
    }
}

/// `path.key` or `path["key"]` for keys that are not plain identifiers.
pub fn field(path: &str, key: &str) -> String {
    if crate::de::is_plain_key(key) {
        format!("{path}.{key}")
    } else {
        format!("{path}[\"{key}\"]")
    }
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;

    #[test_case("a.com", None)]
    #[test_case("*.a.com", None)]
    #[test_case("*", None)]
    #[test_case("*foo.a.com", None)]
    #[test_case("*-foo.a.com", None)]
    #[test_case("localhost", None)]
    #[test_case("a.com.", None)]
    #[test_case("", Some("empty domain name not allowed"))]
    #[test_case(
        "1.2.3.4",
        Some("domain name \"1.2.3.4\" invalid (top level domain \"4\" cannot be all-numeric)")
    )]
    #[test_case("a..com", Some("domain name \"a..com\" invalid (label \"\" invalid)"))]
    #[test_case("a.*.com", Some("domain name \"a.*.com\" invalid (label \"*\" invalid)"))]
    #[test_case("-a.com", Some("domain name \"-a.com\" invalid (label \"-a\" invalid)"))]
    fn wildcard_domains(d: &str, want: Option<&str>) {
        assert_eq!(wildcard_domain_error(d).as_deref(), want);
    }

    #[test]
    fn long_domain() {
        let d = format!("{}.com", "a".repeat(252));
        assert!(wildcard_domain_error(&d).unwrap().contains("too long (max 255)"));
    }

    #[test]
    fn fqdn_rejects_wildcards() {
        assert!(fqdn_error("*.a.com").is_some());
        assert!(fqdn_error("a.com").is_none());
    }

    #[test_case("1.2.3.4", None)]
    #[test_case("::1", None)]
    #[test_case("192.192.192.192/24", None)]
    #[test_case("10.0.0.0/33", Some("10.0.0.0/33 is not a valid CIDR block"))]
    #[test_case("1.2.3", Some("1.2.3 is not a valid IP"))]
    #[test_case("a.com", Some("a.com is not a valid IP"))]
    fn ips(s: &str, want: Option<&str>) {
        assert_eq!(ip_or_cidr_error(s).as_deref(), want);
    }

    #[test_case("@abstract", None)]
    #[test_case("/var/run/x.sock", None)]
    #[test_case("", Some("unix address must not be empty"))]
    #[test_case("relative/x", Some("relative/x is not an absolute path to a file"))]
    #[test_case("/var/run/", Some("/var/run/ is not an absolute path to a file"))]
    fn unix_paths(p: &str, want: Option<&str>) {
        assert_eq!(unix_path_error(p).as_deref(), want);
    }

    #[test]
    fn labels() {
        assert!(is_label_key("app"));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(!is_label_key("-app"));
        assert!(!is_label_key("a/b/c"));
        assert!(is_label_value(""));
        assert!(!is_label_value("a b"));
        let mut r = Report::default();
        validate_labels(
            &mut r,
            "spec.labels",
            &[("bad key".to_string(), "ok".to_string())].into(),
        );
        assert_eq!(r.messages(), vec!["invalid tag key: \"bad key\""]);
        assert_eq!(r.problems[0].path, "spec.labels[\"bad key\"]");
    }

    #[test_case(&["*"], "ns", true, &[])]
    #[test_case(&[".", "other"], "ns", true, &[])]
    #[test_case(&["~"], "ns", true, &[])]
    #[test_case(&["~"], "ns", false, &["exportTo ~ (none) is not allowed for Istio configuration objects"])]
    #[test_case(&["Bad_ns"], "ns", true, &["only .,*, or a valid DNS 1123 label is allowed as exportTo entry"])]
    #[test_case(&["a", "a"], "ns", true, &["duplicate entries in exportTo for entry a"])]
    #[test_case(&[".", "ns"], "ns", true, &["duplicate entries in exportTo: . and current namespace ns"])]
    #[test_case(&["*", "a"], "ns", true, &["cannot have both public (*) and non-public exportTo values for a resource"])]
    #[test_case(&["~", "a"], "ns", true, &["cannot export service entry to no one (~) and someone"])]
    fn export_to(entries: &[&str], ns: &str, se: bool, want: &[&str]) {
        let mut r = Report::default();
        let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        validate_export_to(&mut r, "spec.exportTo", ns, &entries, se);
        assert_eq!(r.messages(), want);
    }

    #[test]
    fn selectors() {
        let mut r = Report::default();
        assert!(validate_selector(
            &mut r,
            "spec.workloadSelector",
            &BTreeMap::new(),
            "service entry"
        ));
        assert_eq!(
            r.messages(),
            vec![
                "service entry: workload selector specified without labels, will be applied to all services in namespace"
            ]
        );
        let mut r = Report::default();
        assert!(!validate_selector(
            &mut r,
            "spec.workloadSelector",
            &[("a*".into(), "b".into())].into(),
            "sidecar"
        ));
        assert_eq!(r.messages()[0], "wildcard is not supported in selector: \"a*\"");
    }

    #[test]
    fn ports_and_protocols() {
        let mut r = Report::default();
        validate_port_number(&mut r, "p", 0);
        validate_port_number(&mut r, "p", 65536);
        validate_port_number(&mut r, "p", 443);
        validate_port_name(&mut r, "p", "http-web");
        validate_port_name(&mut r, "p", "http_web");
        validate_protocol(&mut r, "p", "tcp");
        validate_protocol(&mut r, "p", "");
        validate_protocol(&mut r, "p", "QUIC");
        assert_eq!(
            r.messages(),
            vec![
                "port number 0 must be in the range 1..65535",
                "port number 65536 must be in the range 1..65535",
                "invalid port name: http_web",
                "unsupported protocol: QUIC",
            ]
        );
    }

    #[test]
    fn durations() {
        let mut r = Report::default();
        validate_duration(&mut r, "d", &Duration("10s".into()));
        validate_duration(&mut r, "d", &Duration("0.5ms".into()));
        validate_duration(&mut r, "d", &Duration("1.0005s".into()));
        validate_duration(&mut r, "d", &Duration("ten".into()));
        assert_eq!(r.problems.len(), 3);
        assert_eq!(r.messages()[0], "duration must be greater than 1ms");
    }
}
