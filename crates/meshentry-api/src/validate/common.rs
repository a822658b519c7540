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
    if domain.len() > 255 {
        return Some(format!("domain name {domain:?} too long (max 255)"));
    }
    if domain.is_empty() {
        return Some("empty domain name not allowed".into());
    }
    if !allow_wildcard {
        return labels_error(domain);
    }
    // Istio checks the first label on its own and the rest as a domain of its own, which its
    // messages then name: `*.a..com` is `domain name "a..com" invalid (label "" invalid)`.
    let (first, rest) = match domain.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (domain, None),
    };
    if !is_wildcard_label(first) {
        return Some(format!("domain name {domain:?} invalid (label {first:?} invalid)"));
    }
    rest.and_then(labels_error)
}

/// Istio's `ValidateDNS1123Labels`: a numeric last label first (as Go's `strconv.Atoi` reads
/// one: a sign allowed, within 64 bits), then each label, the last one allowed to be empty
/// (`istio.io.`).
fn labels_error(domain: &str) -> Option<String> {
    let labels: Vec<&str> = domain.split('.').collect();
    let last = labels.last().copied().unwrap_or("");
    if last.parse::<i64>().is_ok() {
        return Some(format!(
            "domain name {domain:?} invalid (top level domain {last:?} cannot be all-numeric)"
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        if i == labels.len() - 1 && label.is_empty() {
            return None;
        }
        if !is_dns1123_label_ci(label) {
            return Some(format!("domain name {domain:?} invalid (label {label:?} invalid)"));
        }
    }
    None
}

/// Istio's `IsWildcardDNS1123Label`: `*`, or a label with an optional `*` or `*-` before it,
/// 63 characters in all.
fn is_wildcard_label(label: &str) -> bool {
    if label.len() > 63 {
        return false;
    }
    let rest = match label.strip_prefix('*') {
        None => return is_dns1123_label_ci(label),
        Some("") => return true,
        Some(rest) => rest,
    };
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    is_dns1123_label_ci(rest)
}

/// A6: `*foo.com` style (a `*` that is not the whole host and not a `*.` prefix).
pub fn is_partial_wildcard(host: &str) -> bool {
    host.contains('*') && host != "*" && !host.starts_with("*.")
}

/// A7: an IP or a CIDR (host bits allowed).
pub fn ip_or_cidr_error(s: &str) -> Option<String> {
    // Istio reads a prefix only when there is exactly one `/`; its prefix length is decimal
    // without a sign or leading zeros (Go's `netip.ParsePrefix`).
    match s.split_once('/') {
        Some((ip, bits)) if !bits.contains('/') => {
            let plain = bits == "0" || bits.starts_with(|c: char| ('1'..='9').contains(&c));
            let ok = match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
                (Ok(IpAddr::V4(_)), Ok(b)) => plain && b <= 32,
                (Ok(IpAddr::V6(_)), Ok(b)) => plain && b <= 128,
                _ => false,
            };
            (!ok).then(|| format!("{s} is not a valid CIDR block"))
        }
        _ => s.parse::<IpAddr>().is_err().then(|| format!("{s} is not a valid IP")),
    }
}

pub fn is_cidr(s: &str) -> bool {
    s.contains('/')
}

/// A8: label keys and values, as Istio's `labels.Instance.Validate` checks them (which is
/// looser than Kubernetes: upper case in the key's prefix, values of any length).
pub fn validate_labels(r: &mut Report, path: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        let p = field(path, k);
        if let Some(e) = label_key_error(k) {
            r.error(&p, e);
        }
        if !is_label_value(v) {
            r.error(&p, format!("invalid tag value: {v:?}"));
        }
    }
}

/// `[prefix/]name`: prefix dot-separated DNS-1123 labels (upper case allowed) of at most 253
/// characters, name a qualified name of at most 63.
pub fn is_label_key(k: &str) -> bool {
    label_key_error(k).is_none()
}

fn label_key_error(k: &str) -> Option<String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.is_empty() || !p.split('.').all(is_dns1123_label_chars))
    {
        return Some(format!("invalid tag key: {k:?}"));
    }
    if !is_qualified_name(name) {
        return Some(format!("invalid tag key: {k:?}"));
    }
    if prefix.is_some_and(|p| p.len() > 253) {
        return Some(format!("invalid tag key: {k:?} (DNS prefix is too long)"));
    }
    if name.len() > 63 {
        return Some(format!("invalid tag key: {k:?} (name is too long)"));
    }
    None
}

/// A DNS-1123 label's characters, upper case allowed, with no length limit (Istio's label-key
/// pattern has none per label).
fn is_dns1123_label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// Alphanumerics, `-`, `_` and `.`, starting and ending alphanumeric; any length.
fn is_qualified_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
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

/// A10, as Istio's `validateExportTo` walks the entries: `.` stands for `namespace`, an entry
/// already seen is a duplicate, an invalid one is not remembered. `allow_none`: `~` is
/// accepted (ServiceEntry only). Namespaces may have upper case here (Istio's DNS-1123 label
/// check allows it).
pub fn validate_export_to(r: &mut Report, path: &str, namespace: &str, export_to: &[String], allow_none: bool) {
    let mut seen: Vec<&str> = Vec::new();
    for (i, e) in export_to.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let key = if e == "." { namespace } else { e.as_str() };
        if seen.contains(&key) {
            if key != e {
                r.error(
                    path,
                    format!("duplicate entries in exportTo: . and current namespace {namespace}"),
                );
            } else {
                r.error(&p, format!("duplicate entries in exportTo for entry {e}"));
            }
        } else if allow_none && e == "~" {
            seen.push(key);
        } else if key == "~" {
            r.error(&p, "exportTo ~ (none) is not allowed for Istio configuration objects");
        } else if key != "." && key != "*" && !is_dns1123_label_ci(key) {
            r.error(&p, "only .,*, or a valid DNS 1123 label is allowed as exportTo entry");
        } else {
            seen.push(key);
        }
    }
    if seen.contains(&"*") && export_to.len() > 1 {
        r.error(
            path,
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
    if seen.contains(&"~") && export_to.len() > 1 {
        r.error(path, "cannot export service entry to no one (~) and someone");
    }
}

/// A11: a `workloadSelector`'s labels. `who` prefixes the warning ("service entry",
/// "sidecar"); returns false when Istio would stop validating the resource here (A0).
pub fn validate_selector(r: &mut Report, path: &str, labels: &BTreeMap<String, String>, who: &str) -> bool {
    let lpath = format!("{path}.labels");
    let before = r.problems.len();
    // Istio's `ValidateAlphaWorkloadSelector` checks for empty keys and wildcards only (a key
    // that is no label key just selects nothing); its CRD caps values at 63 bytes.
    for (k, v) in labels {
        if k.is_empty() {
            r.error(
                &lpath,
                format!("empty key is not supported in selector: {:?}", format!("{k}={v}")),
            );
        }
        if k.contains('*') || v.contains('*') {
            r.error(
                field(&lpath, k),
                format!("wildcard is not supported in selector: {:?}", format!("{k}={v}")),
            );
        }
        if v.len() > 63 {
            r.error(field(&lpath, k), "Too long: may not be more than 63 bytes");
        }
    }
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
        Some("domain name \"2.3.4\" invalid (top level domain \"4\" cannot be all-numeric)")
    )]
    // Istio names the part after the first label when that part is bad.
    #[test_case("a..com", Some("domain name \".com\" invalid (label \"\" invalid)"))]
    #[test_case("a.*.com", Some("domain name \"*.com\" invalid (label \"*\" invalid)"))]
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

    // Istio's labels.Instance.Validate: upper case in the key's prefix, values of any length;
    // its own messages for a long prefix or name.
    #[test_case("Example.COM/app", "v", &[]; "upper case prefix")]
    #[test_case("app", &"v".repeat(100), &[]; "long value")]
    #[test_case(&format!("{}/a", "p".repeat(254)), "v", &["invalid tag key: \"PREFIX\" (DNS prefix is too long)"]; "long prefix")]
    #[test_case(&"n".repeat(64), "v", &["invalid tag key: \"NAME\" (name is too long)"]; "long name")]
    #[test_case("a/b/c", "v", &["invalid tag key: \"a/b/c\""]; "two slashes")]
    #[test_case("app", "a b", &["invalid tag value: \"a b\""]; "bad value")]
    fn label_rules(key: &str, value: &str, want: &[&str]) {
        let mut r = Report::default();
        validate_labels(&mut r, "l", &[(key.to_string(), value.to_string())].into());
        let want: Vec<String> = want
            .iter()
            .map(|w| w.replace("PREFIX", &key.replace('"', "")).replace("NAME", key))
            .collect();
        assert_eq!(r.messages(), want);
    }

    // Go's netip.ParsePrefix: exactly one `/`, a decimal length without sign or leading zero.
    #[test_case("10.0.0.0/08", Some("10.0.0.0/08 is not a valid CIDR block"))]
    #[test_case("10.0.0.0/0", None)]
    #[test_case("10.0.0.0/+8", Some("10.0.0.0/+8 is not a valid CIDR block"))]
    #[test_case("10.0.0.0/8/8", Some("10.0.0.0/8/8 is not a valid IP"))]
    fn prefixes(s: &str, want: Option<&str>) {
        assert_eq!(ip_or_cidr_error(s).as_deref(), want);
    }

    // Istio's ValidateDNS1123Labels: a numeric last label (as strconv.Atoi reads it) is checked
    // first; an FQDN of one numeric label fails, a wildcard domain of one label does not.
    #[test_case(
        "ab.123",
        true,
        Some("domain name \"123\" invalid (top level domain \"123\" cannot be all-numeric)")
    )]
    #[test_case(
        "a_b.123",
        false,
        Some("domain name \"a_b.123\" invalid (top level domain \"123\" cannot be all-numeric)")
    )]
    #[test_case(
        "123",
        false,
        Some("domain name \"123\" invalid (top level domain \"123\" cannot be all-numeric)")
    )]
    #[test_case("123", true, None)]
    #[test_case(
        "a.-1",
        false,
        Some("domain name \"a.-1\" invalid (top level domain \"-1\" cannot be all-numeric)")
    )]
    fn numeric_labels(d: &str, wildcard: bool, want: Option<&str>) {
        let got = if wildcard {
            wildcard_domain_error(d)
        } else {
            fqdn_error(d)
        };
        assert_eq!(got.as_deref(), want);
    }

    #[test]
    fn wildcard_label_is_63_characters_in_all() {
        let d = format!("*{}.com", "a".repeat(63));
        assert!(wildcard_domain_error(&d).is_some());
        assert!(wildcard_domain_error(&format!("*{}.com", "a".repeat(62))).is_none());
    }

    #[test_case(&["*"], "ns", true, &[])]
    #[test_case(&[".", "other"], "ns", true, &[])]
    #[test_case(&["~"], "ns", true, &[])]
    #[test_case(&["~"], "ns", false, &["exportTo ~ (none) is not allowed for Istio configuration objects"])]
    #[test_case(&["Bad_ns"], "ns", true, &["only .,*, or a valid DNS 1123 label is allowed as exportTo entry"])]
    #[test_case(&["a", "a"], "ns", true, &["duplicate entries in exportTo for entry a"])]
    #[test_case(&[".", "ns"], "ns", true, &["duplicate entries in exportTo for entry ns"])]
    #[test_case(&["ns", "."], "ns", true, &["duplicate entries in exportTo: . and current namespace ns"])]
    // Istio's DNS-1123 label check allows upper case; an invalid entry is not remembered, so
    // it is never a duplicate.
    #[test_case(&["Team-A"], "ns", true, &[])]
    #[test_case(&["a_b", "a_b"], "ns", true, &["only .,*, or a valid DNS 1123 label is allowed as exportTo entry", "only .,*, or a valid DNS 1123 label is allowed as exportTo entry"])]
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
        assert_eq!(r.messages(), vec!["wildcard is not supported in selector: \"a*=b\""]);
        // Istio checks selector keys for emptiness and wildcards only.
        let mut r = Report::default();
        assert!(validate_selector(
            &mut r,
            "spec.workloadSelector",
            &[("not a key!".into(), "v".into())].into(),
            "sidecar"
        ));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
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
