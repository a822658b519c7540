//! VirtualService validation (A28-A32), and the `Destination` check that Sidecar's egress proxy
//! reuses.

use std::collections::BTreeMap;

use super::Report;
use super::common::{
    field, fqdn_error, ip_or_cidr_error, is_dns1123_label_ci, validate_duration, validate_export_to, validate_labels,
    validate_port_number, wildcard_domain_error,
};
use super::destination_rule::{check_oneof, validate_subset_name};
use crate::model::{
    CorsPolicy, Destination, HeaderOperations, Headers, HttpDirectResponse, HttpFaultInjection, HttpMatchRequest,
    HttpRedirect, HttpRetry, HttpRewrite, HttpRoute, HttpRouteDestination, L4MatchAttributes, RouteDestination,
    StringMatch, TcpRoute, TlsMatchAttributes, TlsRoute, VirtualService,
};

/// Istio's `ValidateVirtualService`.
pub fn validate_virtual_service(vs: &VirtualService, namespace: &str, r: &mut Report) {
    let delegate = vs.hosts.is_empty();
    if delegate {
        if !vs.gateways.is_empty() {
            r.error(
                "spec.gateways",
                "delegate virtual service must have no gateways specified",
            );
        }
        if !vs.tls.is_empty() {
            r.error("spec.tls", "delegate virtual service must have no tls route specified");
        }
        if !vs.tcp.is_empty() {
            r.error("spec.tcp", "delegate virtual service must have no tcp route specified");
        }
    }
    let applies_to_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
    let applies_to_gateway = !applies_to_mesh;
    validate_gateway_names(r, "spec.gateways", &vs.gateways);

    // Claims are only known where a gateway has authenticated the request.
    if !applies_to_gateway {
        for (i, h) in vs.http.iter().enumerate() {
            for (j, m) in h.r#match.iter().enumerate() {
                for (what, map) in [("headers", &m.headers), ("withoutHeaders", &m.without_headers)] {
                    for key in map.keys().filter(|k| is_jwt_claim(k)) {
                        r.error(
                            field(&format!("spec.http[{i}].match[{j}].{what}"), key),
                            format!(
                                "JWT claim based routing (key: {key}) is only supported for gateway, found no gateways: [{}]",
                                vs.gateways.join(" ")
                            ),
                        );
                    }
                }
            }
        }
    }

    let sni_routed = vs.tls.iter().any(|t| t.r#match.iter().any(|m| !m.sni_hosts.is_empty()));
    let mut all_hosts_valid = true;
    for (i, h) in vs.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        let problem = if applies_to_gateway {
            gateway_bound_domain_error(sni_routed, h)
        } else {
            wildcard_domain_error(h)
        };
        match problem {
            Some(e) if h.parse::<std::net::IpAddr>().is_err() => {
                r.error(path, e);
                all_hosts_valid = false;
            }
            Some(_) => {}
            None if applies_to_mesh && h == "*" => {
                r.error(
                    path,
                    "wildcard host * is not allowed for virtual services bound to the mesh gateway",
                );
                all_hosts_valid = false;
            }
            None => {}
        }
    }
    // Overlaps are only meaningful between well-formed names.
    if all_hosts_valid {
        for i in 0..vs.hosts.len() {
            for j in i + 1..vs.hosts.len() {
                if host_matches(&vs.hosts[i], &vs.hosts[j]) {
                    r.error(
                        format!("spec.hosts[{j}]"),
                        format!("duplicate hosts in virtual service: {} & {}", vs.hosts[i], vs.hosts[j]),
                    );
                }
            }
        }
    }
    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        r.error("spec", "http, tcp or tls must be provided in virtual service");
    }
    for (i, route) in vs.http.iter().enumerate() {
        validate_http_route(r, &format!("spec.http[{i}]"), route, delegate);
    }
    for (i, route) in vs.tls.iter().enumerate() {
        validate_tls_route(r, &format!("spec.tls[{i}]"), route, &vs.hosts, applies_to_gateway);
    }
    for (i, route) in vs.tcp.iter().enumerate() {
        validate_tcp_route(r, &format!("spec.tcp[{i}]"), route);
    }
    validate_export_to(r, "spec.exportTo", namespace, &vs.export_to, false);
    analyze_unreachable(
        r,
        "spec.http",
        &vs.http,
        |h| &h.r#match,
        |h| h.name.as_str(),
        |m| m.name.as_str(),
        |m| HttpMatchRequest {
            name: String::new(),
            ..m.clone()
        },
    );
    analyze_overlapping_prefixes(r, &vs.http);
    analyze_unreachable(r, "spec.tcp", &vs.tcp, |t| &t.r#match, |_| "", |_| "", Clone::clone);
    analyze_unreachable(r, "spec.tls", &vs.tls, |t| &t.r#match, |_| "", |_| "", Clone::clone);
}

/// Istio's `host.Name.Matches`: symmetric, either side may be a `*`-prefixed wildcard.
fn host_matches(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => {
            if sa.len() < sb.len() {
                sb.ends_with(sa)
            } else {
                sa.ends_with(sb)
            }
        }
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// Istio's `host.Name.SubsetOf`: every name `a` covers is covered by `b`.
fn host_subset_of(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb),
        (Some(_), None) => false,
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// Istio's `ValidateWildcardDomainForVirtualServiceBoundToGateway`: with SNI routing, a
/// gateway-bound host may also be the name AUTO_PASSTHROUGH gateways route by,
/// `outbound_.<port>_.<subset>_.<host>`.
fn gateway_bound_domain_error(sni: bool, domain: &str) -> Option<String> {
    if domain.is_empty() || domain.len() > 255 || !sni || !domain.starts_with("outbound_") {
        return wildcard_domain_error(domain);
    }
    let parts: Vec<&str> = domain.split('_').collect();
    if parts.len() < 4 {
        return Some(format!(
            "domain name {domain} invalid, should follow 'outbound_.<port>_._.<hostname>' format"
        ));
    }
    let port = parts[1].trim_matches('.');
    let host = parts[3].trim_matches('.');
    // Istio's patterns are unanchored: a digit, and a letter, anywhere.
    if !port.bytes().any(|b| b.is_ascii_digit()) {
        return Some(format!(
            "domain name {domain:?} invalid (label {port:?} invalid). should follow 'outbound_.<port>_._.<hostname>' format"
        ));
    }
    if !host.bytes().any(|b| b.is_ascii_alphabetic()) {
        return Some(format!(
            "domain name {domain:?} invalid (label {host:?} invalid). should follow 'outbound_.<port>_._.<hostname>' format"
        ));
    }
    None
}

/// Istio's `jwt.ToRoutingClaim(name).Match`: `@request.auth.claims` (any case) followed by
/// `.claim[.nested]` or `[claim][nested]`.
fn is_jwt_claim(name: &str) -> bool {
    const PREFIX: &str = "@request.auth.claims";
    let Some(head) = name.get(..PREFIX.len()) else {
        return false;
    };
    if !head.eq_ignore_ascii_case(PREFIX) {
        return false;
    }
    let rest = &name[PREFIX.len()..];
    (rest.starts_with('.') && rest.len() > 1) || (rest.starts_with('[') && rest.ends_with(']') && rest.len() > 2)
}

/// A29, Istio's `validateGatewayNames`: `ns/name` (both DNS labels, so `./name` is refused),
/// `mesh`, a bare name, or the legacy `name.ns[.svc...]`. Like Istio, a bare name ends the
/// check: the names after it are not looked at.
fn validate_gateway_names(r: &mut Report, path: &str, gateways: &[String]) {
    for (i, gw) in gateways.iter().enumerate() {
        let p = format!("{path}[{i}]");
        match gw.split_once('/') {
            None => {
                if gw.contains('.') {
                    let parts: Vec<&str> = gw.split('.').collect();
                    let recommended = format!("{}/{}", parts[1], parts[0]);
                    r.warn(
                        &p,
                        format!(
                            "using legacy gatewayName format {gw:?}; prefer the <namespace>/<name> format: {recommended:?}"
                        ),
                    );
                }
                if let Some(e) = fqdn_error(gw) {
                    r.error(&p, e);
                }
                return;
            }
            Some((ns, name)) => {
                if ns.is_empty() || name.is_empty() {
                    r.error(&p, "config namespace and gateway name cannot be empty");
                }
                if !is_dns1123_label_ci(ns) {
                    r.error(&p, format!("invalid value for namespace: {ns:?}"));
                }
                if !is_dns1123_label_ci(name) {
                    r.error(&p, format!("invalid value for gateway name: {name:?}"));
                }
            }
        }
    }
}

/// A31: one `http` rule. `delegate_vs`: the VirtualService has no hosts.
fn validate_http_route(r: &mut Report, path: &str, h: &HttpRoute, delegate_vs: bool) {
    validate_http_route_conflicts(r, path, h, delegate_vs);
    for (j, m) in h.r#match.iter().enumerate() {
        validate_http_match(r, &format!("{path}.match[{j}]"), m);
    }
    if let Some(hd) = &h.headers {
        validate_headers(r, &format!("{path}.headers"), hd);
    }
    if let Some(c) = &h.cors_policy {
        validate_cors_policy(r, &format!("{path}.corsPolicy"), c);
    }
    if let Some(f) = &h.fault {
        validate_fault(r, &format!("{path}.fault"), f);
    }
    if let Some(p) = h.legacy_mirror_percent() {
        // One proto field under two names: the findings go where it is written.
        let name = if h.mirror_percent_proto_name.is_some() {
            "mirror_percent"
        } else {
            "mirrorPercent"
        };
        if p > 100 {
            r.error(
                format!("{path}.{name}"),
                format!("mirror_percent must have a max value of 100 (it has {p})"),
            );
        }
        r.warn(
            format!("{path}.{name}"),
            "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead",
        );
    }
    if let Some(p) = &h.mirror_percentage {
        validate_mirror_percentage(r, &format!("{path}.mirrorPercentage"), p.value, "mirror_percentage");
    }
    if let Some(m) = &h.mirror {
        validate_destination(r, &format!("{path}.mirror"), m);
    }
    for (k, m) in h.mirrors.iter().enumerate() {
        let p = format!("{path}.mirrors[{k}]");
        // Istio looks no further at a mirror without a destination.
        match &m.destination {
            None => {
                r.error(&p, "destination is required for mirrors");
                continue;
            }
            Some(d) => validate_destination(r, &format!("{p}.destination"), d),
        }
        if let Some(pc) = &m.percentage {
            validate_mirror_percentage(r, &format!("{p}.percentage"), pc.value, "mirror percentage");
        }
    }
    if let Some(rd) = &h.redirect {
        validate_redirect(r, &format!("{path}.redirect"), rd, &h.r#match);
    }
    if let Some(dr) = &h.direct_response {
        validate_direct_response(r, &format!("{path}.directResponse"), dr);
    }
    if let Some(rt) = &h.retries {
        validate_retry(r, &format!("{path}.retries"), rt);
    }
    if let Some(rw) = &h.rewrite {
        validate_rewrite(r, &format!("{path}.rewrite"), rw);
    }
    validate_authority_rewrite(r, path, h);
    validate_http_route_destinations(r, &format!("{path}.route"), &h.route);
    if let Some(t) = &h.timeout {
        validate_duration(r, &format!("{path}.timeout"), t);
    }
}

/// Istio's `validateHTTPRouteConflict`. A root rule (one with `delegate`, in a VirtualService
/// with hosts) may set neither `redirect` nor `route`, and nothing else is checked; a rule of
/// a delegate VirtualService may not delegate again.
fn validate_http_route_conflicts(r: &mut Report, path: &str, h: &HttpRoute, delegate_vs: bool) {
    if h.delegate.is_some() && !delegate_vs {
        if h.redirect.is_some() {
            r.error(path, format!("root HTTP route {} must not specify redirect", h.name));
        }
        if !h.route.is_empty() {
            r.error(path, format!("root HTTP route {} must not specify route", h.name));
        }
        return;
    }
    if delegate_vs && h.delegate.is_some() {
        r.error(
            format!("{path}.delegate"),
            "delegate HTTP route cannot contain delegate",
        );
    }
    if h.redirect.is_some() {
        if !h.route.is_empty() {
            r.error(path, "HTTP route cannot contain both route and redirect");
        }
        if h.fault.is_some() {
            r.error(path, "HTTP route cannot contain both fault and redirect");
        }
        if h.rewrite.is_some() {
            r.error(path, "HTTP route rule cannot contain both rewrite and redirect");
        }
        if h.direct_response.is_some() {
            r.error(path, "HTTP route rule cannot contain both direct_response and redirect");
        }
    } else if h.direct_response.is_some() {
        if !h.route.is_empty() {
            r.error(path, "HTTP route cannot contain both route and direct_response");
        }
        if h.fault.is_some() {
            r.error(path, "HTTP route cannot contain both fault and direct_response");
        }
        if h.rewrite.is_some() {
            r.error(path, "HTTP route rule cannot contain both rewrite and direct_response");
        }
    } else if h.route.is_empty() {
        r.error(path, "HTTP route, redirect or direct_response is required");
    }
    if h.mirror.is_some() && !h.mirrors.is_empty() {
        r.error(path, "HTTP route cannot contain both mirror and mirrors");
    }
}

fn validate_http_match(r: &mut Report, path: &str, m: &HttpMatchRequest) {
    for (name, sm) in &m.headers {
        let p = field(&format!("{path}.headers"), name);
        validate_header_name_or_claim(r, &p, name);
        validate_string_match(r, &p, sm, "headers");
    }
    for (name, sm) in &m.without_headers {
        let p = field(&format!("{path}.withoutHeaders"), name);
        validate_header_name_or_claim(r, &p, name);
        // `regex: "*"` is not a regex: Istio turns it into a presence match.
        if sm.regex.as_deref() != Some("*") {
            validate_string_match(r, &p, sm, "withoutHeaders");
        }
    }
    // Envoy accepts an empty path prefix but not an empty scheme, method or authority prefix.
    if let Some(sm) = &m.uri {
        validate_string_match_regexp(r, &format!("{path}.uri"), sm, "uri");
    }
    for (what, sm) in [
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            validate_string_match(r, &format!("{path}.{what}"), sm, what);
        }
    }
    for (name, sm) in &m.query_params {
        validate_string_match(r, &field(&format!("{path}.queryParams"), name), sm, "queryParams");
    }
    if m.port != 0 {
        validate_port_number(r, &format!("{path}.port"), m.port);
    }
    validate_labels(r, &format!("{path}.sourceLabels"), &m.source_labels);
    validate_gateway_names(r, &format!("{path}.gateways"), &m.gateways);
    if !m.source_namespace.is_empty() && !is_dns1123_label_ci(&m.source_namespace) {
        r.error(
            format!("{path}.sourceNamespace"),
            format!("sourceNamespace match {} is invalid", m.source_namespace),
        );
    }
}

fn string_match_oneof(r: &mut Report, path: &str, sm: &StringMatch) {
    check_oneof(
        r,
        path,
        &[
            ("exact", sm.exact.is_some()),
            ("prefix", sm.prefix.is_some()),
            ("regex", sm.regex.is_some()),
        ],
    );
}

/// Istio's `validateStringMatch`: an empty prefix is an error (non-`uri` fields).
fn validate_string_match(r: &mut Report, path: &str, sm: &StringMatch, what: &str) {
    string_match_oneof(r, path, sm);
    if sm.prefix.as_deref() == Some("") {
        r.error(path, format!("{what:?}: prefix string match should not be empty"));
    }
    validate_regex_of(r, path, sm, what);
}

/// Istio's `validateStringMatchRegexp`: only the regex is checked.
fn validate_string_match_regexp(r: &mut Report, path: &str, sm: &StringMatch, what: &str) {
    string_match_oneof(r, path, sm);
    validate_regex_of(r, path, sm, what);
}

fn validate_regex_of(r: &mut Report, path: &str, sm: &StringMatch, what: &str) {
    match sm.regex.as_deref() {
        None => {}
        Some("") => r.error(path, format!("{what:?}: regex string match should not be empty")),
        Some(re) => validate_regex(r, path, re, what),
    }
}

/// RE2 syntax, at most 1024 characters. Istio compiles with Go's `regexp` (RE2); the `regex`
/// crate accepts the same language, but its error wording differs from Go's.
fn validate_regex(r: &mut Report, path: &str, re: &str, what: &str) {
    if re.len() > 1024 {
        r.error(
            path,
            format!("{what:?}: regex is too large, max length allowed is 1024"),
        );
        return;
    }
    if let Err(e) = regex::Regex::new(re) {
        r.error(
            path,
            format!(
                "{what:?}: error parsing regexp: {}; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)",
                regex_error_summary(&e)
            ),
        );
    }
}

/// The last line of the `regex` crate's multi-line error ("error: unclosed group").
fn regex_error_summary(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(&text);
    last.trim().trim_start_matches("error: ").to_string()
}

/// RFC 7230 token characters, Istio's `validHeaderNameRegex`.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn validate_header_name(r: &mut Report, path: &str, name: &str) {
    if name.is_empty() {
        r.error(path, "header name cannot be empty");
    } else if !is_header_name(name) {
        r.error(path, format!("header name {name} is not a valid header name"));
    }
}

/// Istio's `ValidateHTTPHeaderNameOrJwtClaimRoute`: a header, an HTTP/2 pseudo-header, or a
/// JWT claim.
fn validate_header_name_or_claim(r: &mut Report, path: &str, name: &str) {
    if is_jwt_claim(name) || [":method", ":scheme", ":authority", ":path", ":status"].contains(&name) {
        return;
    }
    validate_header_name(r, path, name);
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority")
}

/// Istio's `ValidateHTTPHeaderWithAuthorityOperationName` (`allow_authority`: request `set`
/// and `add`, which may rewrite the authority) and `ValidateHTTPHeaderOperationName`. Only
/// pseudo-headers and `Host` are refused: the name is not otherwise checked.
fn validate_header_operation_name(r: &mut Report, path: &str, name: &str, allow_authority: bool) {
    if name.is_empty() {
        r.error(path, "header name cannot be empty");
        return;
    }
    let internal = name.starts_with(':') || name.eq_ignore_ascii_case("host");
    if allow_authority {
        if internal && !is_authority_header(name) {
            r.error(
                path,
                format!("invalid header {name:?}: header cannot have \":\" prefix"),
            );
        }
        return;
    }
    if name.eq_ignore_ascii_case("host") {
        r.error(path, format!("invalid header {name:?}: cannot set Host header"));
    } else if internal {
        r.error(
            path,
            format!("invalid header {name:?}: header cannot have \":\" prefix"),
        );
    }
}

/// Istio's `ValidateHTTPHeaderValue`: no control characters but tab, and Envoy's
/// `%VARIABLE%` syntax well formed (its header parser, as Istio ports it).
fn header_value_error(value: &str) -> Option<String> {
    if value.chars().any(|c| (c as u32) < 0x20 && c != '\t' || c == '\u{7f}') {
        return Some(format!("header value configuration {value} is invalid"));
    }
    envoy_format_error(value).map(|e| format!("header value configuration: invalid header configuration. {e}"))
}

fn envoy_format_error(value: &str) -> Option<String> {
    #[derive(PartialEq)]
    enum St {
        Literal,
        Name,
        ExpectArray,
        ExpectString,
        Str,
        ExpectDelimOrEnd,
        ExpectArgsEnd,
        ExpectVarEnd,
    }
    let b = value.as_bytes();
    let mut st = St::Literal;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let has_next = i + 1 < b.len();
        match st {
            St::Literal => {
                if c == b'%' {
                    if !has_next {
                        return Some("Un-escaped %".into());
                    }
                    if b[i + 1] == b'%' {
                        i += 1;
                    } else {
                        st = St::Name;
                    }
                }
            }
            St::Name => {
                if c == b'%' {
                    st = St::Literal;
                } else if c == b'(' {
                    st = St::ExpectArray;
                }
            }
            St::ExpectArray => {
                if c == b'[' {
                    st = St::ExpectString;
                } else if c != b' ' {
                    st = St::Str;
                }
            }
            St::ExpectDelimOrEnd => {
                if c == b',' {
                    st = St::ExpectString;
                } else if c == b']' {
                    st = St::ExpectArgsEnd;
                } else if c != b' ' {
                    return Some("Expecting ',', ']', or whitespace".into());
                }
            }
            St::ExpectString => {
                if c == b'"' {
                    st = St::Str;
                } else if c != b' ' {
                    return Some("Expecting '\"'".into());
                }
            }
            St::Str => {
                if c == b'\\' {
                    if !has_next {
                        return Some("Un-terminated backslash in JSON string".into());
                    }
                    i += 1;
                } else if c == b')' {
                    st = St::ExpectVarEnd;
                } else if c == b'"' {
                    st = St::ExpectDelimOrEnd;
                }
            }
            St::ExpectArgsEnd => {
                if c == b')' {
                    st = St::ExpectVarEnd;
                } else if c != b' ' {
                    // Istio's message keeps Envoy's unfilled placeholders.
                    return Some("Expecting ')' or whitespace after '{}', but found '{}'".into());
                }
            }
            St::ExpectVarEnd => {
                if c == b'%' {
                    st = St::Literal;
                } else if c != b' ' {
                    return Some("Expecting '%' or whitespace after".into());
                }
            }
        }
        i += 1;
    }
    (st != St::Literal).then(|| format!("Un-terminated variable expression '{value}'"))
}

fn validate_header_operations(r: &mut Report, path: &str, ops: &HeaderOperations, request: bool) {
    for (what, map) in [("set", &ops.set), ("add", &ops.add)] {
        for (name, value) in map {
            let p = field(&format!("{path}.{what}"), name);
            validate_header_operation_name(r, &p, name, request);
            if let Some(e) = header_value_error(value) {
                r.error(&p, e);
            }
        }
    }
    for (k, name) in ops.remove.iter().enumerate() {
        validate_header_operation_name(r, &format!("{path}.remove[{k}]"), name, false);
    }
}

fn validate_headers(r: &mut Report, path: &str, h: &Headers) {
    if let Some(ops) = &h.request {
        validate_header_operations(r, &format!("{path}.request"), ops, true);
    }
    if let Some(ops) = &h.response {
        validate_header_operations(r, &format!("{path}.response"), ops, false);
    }
}

/// The authority can be rewritten once: by `rewrite.authority` or one request header op.
fn validate_authority_rewrite(r: &mut Report, path: &str, h: &HttpRoute) {
    let mut current = h.rewrite.as_ref().map(|rw| rw.authority.clone()).unwrap_or_default();
    let Some(ops) = h.headers.as_ref().and_then(|hd| hd.request.as_ref()) else {
        return;
    };
    for (what, map) in [("set", &ops.set), ("add", &ops.add)] {
        for (k, v) in map.iter().filter(|(k, _)| is_authority_header(k)) {
            if !current.is_empty() {
                r.error(
                    field(&format!("{path}.headers.request.{what}"), k),
                    format!("authority header cannot be set multiple times: have {current:?}, attempting to set {v:?}"),
                );
                return;
            }
            current = v.clone();
        }
    }
}

const CORS_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "*",
];

fn validate_cors_policy(r: &mut Report, path: &str, c: &CorsPolicy) {
    for (k, origin) in c.allow_origins.iter().enumerate() {
        let p = format!("{path}.allowOrigins[{k}]");
        let value = origin
            .exact
            .as_deref()
            .or(origin.prefix.as_deref())
            .or(origin.regex.as_deref())
            .unwrap_or("");
        if value.is_empty() {
            r.error(
                &p,
                format!("'{value}' is not a valid match type for CORS allow origins"),
            );
        } else {
            validate_string_match_regexp(r, &p, origin, "corsPolicy.allowOrigins");
        }
    }
    for (k, m) in c.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&m.as_str()) {
            r.error(
                format!("{path}.allowMethods[{k}]"),
                format!("{m:?} is not a supported HTTP method"),
            );
        }
    }
    for (what, list) in [("allowHeaders", &c.allow_headers), ("exposeHeaders", &c.expose_headers)] {
        for (k, h) in list.iter().enumerate() {
            if h != "*" {
                validate_header_name(r, &format!("{path}.{what}[{k}]"), h);
            }
        }
    }
    if let Some(d) = &c.max_age {
        let p = format!("{path}.maxAge");
        validate_duration(r, &p, d);
        if d.parse().is_ok_and(|v| v.subsec_nanos() != 0) {
            r.error(&p, "max_age duration is accurate only to seconds precision");
        }
    }
}

fn validate_percentage(r: &mut Report, path: &str, value: f64) {
    if !(0.0..=100.0).contains(&value) || (value > 0.0 && value < 0.0001) {
        r.error(
            path,
            format!("percentage {value} is neither 0.0, nor in range [0.0001, 100.0]"),
        );
    }
}

fn validate_mirror_percentage(r: &mut Report, path: &str, value: f64, what: &str) {
    if value > 100.0 {
        r.error(path, format!("{what} must have a max value of 100 (it has {value:.6})"));
    }
    if value < 0.0 {
        r.error(path, format!("{what} must have a min value of 0 (it has {value:.6})"));
    }
}

/// gRPC status names Envoy can return for an abort.
const GRPC_STATUSES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Istio's bound is 200..=600, whatever its message says.
fn validate_http_status(r: &mut Report, path: &str, status: i64) {
    if !(200..=600).contains(&status) {
        r.error(path, format!("HTTP status {status} is not in range 200-599"));
    }
}

fn validate_fault(r: &mut Report, path: &str, f: &HttpFaultInjection) {
    if f.abort.is_none() && f.delay.is_none() {
        r.error(path, "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(a) = &f.abort {
        let p = format!("{path}.abort");
        if let Some(pc) = &a.percentage {
            validate_percentage(r, &format!("{p}.percentage.value"), pc.value);
        }
        check_oneof(
            r,
            &p,
            &[
                ("httpStatus", a.http_status.is_some()),
                ("grpcStatus", a.grpc_status.is_some()),
                ("http2Error", a.http2_error.is_some()),
            ],
        );
        if let Some(s) = a.http_status {
            validate_http_status(r, &format!("{p}.httpStatus"), i64::from(s));
        }
        if let Some(s) = &a.grpc_status
            && !GRPC_STATUSES.contains(&s.as_str())
        {
            r.error(
                format!("{p}.grpcStatus"),
                format!(
                    "gRPC status {s:?} is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes, for example 'NOT_FOUND'"
                ),
            );
        }
        if a.http2_error.is_some() {
            r.error(
                format!("{p}.http2Error"),
                "HTTP/2 abort fault injection not supported yet",
            );
        }
        if a.http_status.is_none() && a.grpc_status.is_none() && a.http2_error.is_none() {
            r.warn(&p, "abort configured, but error type not set");
        }
    }
    if let Some(d) = &f.delay {
        let p = format!("{path}.delay");
        if let Some(pc) = &d.percentage {
            validate_percentage(r, &format!("{p}.percentage.value"), pc.value);
        }
        check_oneof(
            r,
            &p,
            &[
                ("fixedDelay", d.fixed_delay.is_some()),
                ("exponentialDelay", d.exponential_delay.is_some()),
            ],
        );
        if let Some(fd) = &d.fixed_delay {
            validate_duration(r, &format!("{p}.fixedDelay"), fd);
        }
        if let Some(ed) = &d.exponential_delay {
            validate_duration(r, &format!("{p}.exponentialDelay"), ed);
            r.error(format!("{p}.exponentialDelay"), "exponentialDelay not supported yet");
        }
    }
}

/// Istio's `validateHTTPRedirect` stops at the first problem.
fn validate_redirect(r: &mut Report, path: &str, rd: &HttpRedirect, matches: &[HttpMatchRequest]) {
    check_oneof(
        r,
        path,
        &[("port", rd.port.is_some()), ("derivePort", rd.derive_port.is_some())],
    );
    if !rd.uri.is_empty() && !rd.prefix_rewrite.is_empty() {
        r.error(path, "redirect may only specify one of uri or prefix_rewrite");
        return;
    }
    // Only a matched prefix can be replaced.
    if !rd.prefix_rewrite.is_empty()
        && matches
            .iter()
            .any(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_none()))
    {
        r.error(
            format!("{path}.prefixRewrite"),
            "redirect prefix_rewrite requires all URI matches to use prefix match type",
        );
        return;
    }
    if rd.uri.is_empty()
        && rd.prefix_rewrite.is_empty()
        && rd.authority.is_empty()
        && rd.port.is_none()
        && rd.derive_port.is_none()
        && rd.scheme.is_empty()
    {
        r.error(path, "redirect must specify URI, authority, scheme, or port");
        return;
    }
    if rd.redirect_code != 0 && !(300..=399).contains(&rd.redirect_code) {
        r.error(
            format!("{path}.redirectCode"),
            format!("{} is not a valid redirect code, must be 3xx", rd.redirect_code),
        );
        return;
    }
    if !rd.scheme.is_empty() && rd.scheme != "http" && rd.scheme != "https" {
        r.error(
            format!("{path}.scheme"),
            "invalid redirect scheme, must be \"http\" or \"https\"",
        );
        return;
    }
    if let Some(p) = rd.port
        && p > 0
    {
        validate_port_number(r, &format!("{path}.port"), p);
    }
}

fn validate_direct_response(r: &mut Report, path: &str, d: &HttpDirectResponse) {
    if let Some(body) = &d.body {
        let p = format!("{path}.body");
        check_oneof(
            r,
            &p,
            &[("string", body.string.is_some()), ("bytes", body.bytes.is_some())],
        );
        // `bytes` is base64 in YAML; its decoded size is about three quarters of the text.
        let size = body
            .string
            .as_ref()
            .map(String::len)
            .or(body.bytes.as_ref().map(|b| b.len() / 4 * 3))
            .unwrap_or(0);
        if size > 1024 * 1024 {
            r.error(
                &p,
                "large direct_responses may impact control plane performance, must be less than 1MB",
            );
        } else if size > 100 * 1024 {
            r.warn(&p, "large direct_responses may impact control plane performance");
        }
    }
    validate_http_status(r, &format!("{path}.status"), i64::from(d.status));
}

/// Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` conditions.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Codes Go's `http.StatusText` knows: Istio accepts a bare status code as a retry condition
/// only if it is one of these.
fn is_known_http_status(code: u32) -> bool {
    matches!(code,
        100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451
        | 500..=508 | 510 | 511)
}

fn validate_retry(r: &mut Report, path: &str, rt: &HttpRetry) {
    if rt.attempts < 0 {
        r.error(format!("{path}.attempts"), "attempts cannot be negative");
    }
    if rt.attempts == 0
        && (rt.per_try_timeout.is_some() || !rt.retry_on.is_empty() || rt.retry_remote_localities.is_some())
    {
        r.error(
            path,
            "http retry policy configured when attempts are set to 0 (disabled)",
        );
    }
    if let Some(d) = &rt.per_try_timeout {
        validate_duration(r, &format!("{path}.perTryTimeout"), d);
    }
    if !rt.retry_on.is_empty() {
        for policy in rt.retry_on.split(',') {
            let status_ok = policy.parse::<u32>().is_ok_and(is_known_http_status);
            if !status_ok && !RETRY_ON.contains(&policy) {
                r.error(
                    format!("{path}.retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                );
            }
        }
    }
    if let Some(d) = &rt.backoff {
        validate_duration(r, &format!("{path}.backoff"), d);
    }
}

fn validate_rewrite(r: &mut Report, path: &str, rw: &HttpRewrite) {
    if !rw.uri.is_empty() && rw.uri_regex_rewrite.is_some() {
        r.error(path, "rewrite may only contain one of URI or UriRegexRewrite");
        return;
    }
    if rw.uri.is_empty() && rw.uri_regex_rewrite.is_none() && rw.authority.is_empty() {
        r.error(
            path,
            "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified",
        );
        return;
    }
    if let Some(rr) = &rw.uri_regex_rewrite {
        let p = format!("{path}.uriRegexRewrite");
        if rr.r#match.is_empty() || rr.rewrite.is_empty() {
            r.error(
                &p,
                "UriRegexRewrite requires both Rewrite and Match fields to be specified",
            );
            return;
        }
        validate_regex(
            r,
            &format!("{p}.match"),
            &rr.r#match,
            "HTTPRewrite.UriRegexRewrite.Match",
        );
    }
}

/// Istio's `validateDestination`, also for mirrors and Sidecar's egress proxy.
pub(super) fn validate_destination(r: &mut Report, path: &str, d: &Destination) {
    let hp = format!("{path}.host");
    if d.host == "*" {
        r.error(&hp, "invalid destination host *");
    } else if let Some(e) = wildcard_domain_error(&d.host) {
        r.error(&hp, e);
    }
    if !d.subset.is_empty() {
        validate_subset_name(r, &format!("{path}.subset"), &d.subset);
    }
    if let Some(p) = &d.port {
        validate_port_number(r, &format!("{path}.port.number"), p.number);
    }
}

fn validate_weight(r: &mut Report, path: &str, weight: i32) {
    if weight < 0 {
        r.error(path, format!("weight {weight} < 0"));
    }
}

fn validate_http_route_destinations(r: &mut Report, path: &str, routes: &[HttpRouteDestination]) {
    let mut total = 0i64;
    for (k, rd) in routes.iter().enumerate() {
        let p = format!("{path}[{k}]");
        match &rd.destination {
            None => r.error(&p, "destination is required"),
            Some(d) => validate_destination(r, &format!("{p}.destination"), d),
        }
        if let Some(h) = &rd.headers {
            validate_headers(r, &format!("{p}.headers"), h);
        }
        validate_weight(r, &format!("{p}.weight"), rd.weight);
        total += i64::from(rd.weight);
    }
    if routes.len() > 1 && total == 0 {
        r.error(path, "total destination weight = 0");
    }
}

fn validate_route_destinations(r: &mut Report, path: &str, routes: &[RouteDestination]) {
    let mut total = 0i64;
    for (k, rd) in routes.iter().enumerate() {
        let p = format!("{path}[{k}]");
        match &rd.destination {
            None => r.error(&p, "destination is required"),
            Some(d) => validate_destination(r, &format!("{p}.destination"), d),
        }
        validate_weight(r, &format!("{p}.weight"), rd.weight);
        total += i64::from(rd.weight);
    }
    if routes.len() > 1 && total == 0 {
        r.error(path, "total destination weight = 0");
    }
}

fn validate_subnets(r: &mut Report, path: &str, subnets: &[String]) {
    for (k, s) in subnets.iter().enumerate() {
        if let Some(e) = ip_or_cidr_error(s) {
            r.error(format!("{path}[{k}]"), e);
        }
    }
}

/// A32: TLS rules.
fn validate_tls_route(r: &mut Report, path: &str, t: &TlsRoute, vs_hosts: &[String], gateway: bool) {
    if t.r#match.is_empty() {
        r.error(path, "TLS route must have at least one match condition");
    }
    for (j, m) in t.r#match.iter().enumerate() {
        validate_tls_match(r, &format!("{path}.match[{j}]"), m, vs_hosts, gateway);
    }
    if t.route.is_empty() {
        r.error(path, "TLS route is required");
    }
    validate_route_destinations(r, &format!("{path}.route"), &t.route);
}

fn validate_tls_match(r: &mut Report, path: &str, m: &TlsMatchAttributes, vs_hosts: &[String], gateway: bool) {
    if m.sni_hosts.is_empty() {
        r.error(path, "TLS match must have at least one SNI host");
    }
    for (k, sni) in m.sni_hosts.iter().enumerate() {
        let p = format!("{path}.sniHosts[{k}]");
        if sni.parse::<std::net::IpAddr>().is_ok() {
            r.warn(
                &p,
                format!("using an IP address ({sni:?}) goes against SNI spec and most clients do not support this"),
            );
            continue;
        }
        let problem = if gateway {
            gateway_bound_domain_error(true, sni)
        } else {
            wildcard_domain_error(sni)
        };
        if let Some(e) = problem {
            r.error(&p, e);
            continue;
        }
        if !vs_hosts.iter().any(|h| host_subset_of(sni, h)) {
            r.error(
                &p,
                format!(
                    "SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]",
                    vs_hosts.join(", ")
                ),
            );
        }
    }
    validate_subnets(r, &format!("{path}.destinationSubnets"), &m.destination_subnets);
    if m.port != 0 {
        validate_port_number(r, &format!("{path}.port"), m.port);
    }
    validate_labels(r, &format!("{path}.sourceLabels"), &m.source_labels);
    validate_gateway_names(r, &format!("{path}.gateways"), &m.gateways);
}

fn validate_tcp_route(r: &mut Report, path: &str, t: &TcpRoute) {
    for (j, m) in t.r#match.iter().enumerate() {
        validate_l4_match(r, &format!("{path}.match[{j}]"), m);
    }
    if t.route.is_empty() {
        r.error(path, "TCP route is required");
    }
    validate_route_destinations(r, &format!("{path}.route"), &t.route);
}

fn validate_l4_match(r: &mut Report, path: &str, m: &L4MatchAttributes) {
    validate_subnets(r, &format!("{path}.destinationSubnets"), &m.destination_subnets);
    if m.port != 0 {
        validate_port_number(r, &format!("{path}.port"), m.port);
    }
    validate_labels(r, &format!("{path}.sourceLabels"), &m.source_labels);
    validate_gateway_names(r, &format!("{path}.gateways"), &m.gateways);
}

/// What Istio's `genMatchHTTPRoutes` keeps of an HTTP match with a `uri` prefix, to find one
/// that an earlier, shorter prefix covers.
struct PrefixMatch<'a> {
    rule: usize,
    index: usize,
    rule_name: String,
    match_name: String,
    prefix: &'a str,
    port: u32,
    method: String,
    authority: String,
    headers: BTreeMap<&'a str, String>,
    query_params: BTreeMap<&'a str, String>,
    without_headers: BTreeMap<&'a str, String>,
}

/// `exact:v`, `prefix:v`, or empty (a regex, or nothing).
fn exact_or_prefix(sm: Option<&StringMatch>) -> String {
    match sm {
        Some(StringMatch { exact: Some(e), .. }) if !e.is_empty() => format!("exact:{e}"),
        Some(StringMatch { prefix: Some(p), .. }) if !p.is_empty() => format!("prefix:{p}"),
        _ => String::new(),
    }
}

fn value_map(m: &BTreeMap<String, StringMatch>) -> BTreeMap<&str, String> {
    m.iter().map(|(k, v)| (k.as_str(), exact_or_prefix(Some(v)))).collect()
}

/// Istio's `coveredValidation`: whether `a` (earlier) takes every request `b` would, compared
/// as Istio compares them (a differing value covers when it starts with the other's).
fn covers(a: &PrefixMatch<'_>, b: &PrefixMatch<'_>) -> bool {
    let value_covers = |x: &str, y: &str| x == y || x.starts_with(y);
    let map_covers = |x: &BTreeMap<&str, String>, y: &BTreeMap<&str, String>| {
        x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| value_covers(v, w)))
    };
    b.prefix.starts_with(a.prefix)
        && a.port == b.port
        && value_covers(&a.method, &b.method)
        && value_covers(&a.authority, &b.authority)
        && map_covers(&a.headers, &b.headers)
        && map_covers(&a.query_params, &b.query_params)
        && map_covers(&a.without_headers, &b.without_headers)
}

/// The overlap half of Istio's `analyzeUnreachableHTTPRules`: of the matches still in play
/// (before any catch-all rule, not repeating an earlier match), one whose `uri` prefix an
/// earlier, different prefix covers is never used.
fn analyze_overlapping_prefixes(r: &mut Report, rules: &[HttpRoute]) {
    let display = |name: &str, i: usize| {
        if name.is_empty() {
            format!("#{i}")
        } else {
            format!("{name:?}")
        }
    };
    let mut seen: Vec<HttpMatchRequest> = Vec::new();
    let mut candidates: Vec<PrefixMatch<'_>> = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        if rule.r#match.is_empty() {
            break;
        }
        for (j, m) in rule.r#match.iter().enumerate() {
            let key = HttpMatchRequest {
                name: String::new(),
                ..m.clone()
            };
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let Some(prefix) = m
                .uri
                .as_ref()
                .and_then(|u| u.prefix.as_deref())
                .filter(|p| !p.is_empty())
            else {
                continue;
            };
            let method = match exact_or_prefix(m.method.as_ref()) {
                none if none.is_empty() => "exact:GET".to_string(),
                method => method,
            };
            candidates.push(PrefixMatch {
                rule: i,
                index: j,
                rule_name: display(&rule.name, i),
                match_name: display(&m.name, j),
                prefix,
                port: m.port,
                method,
                authority: exact_or_prefix(m.authority.as_ref()),
                headers: value_map(&m.headers),
                query_params: value_map(&m.query_params),
                without_headers: value_map(&m.without_headers),
            });
        }
    }
    for (k, a) in candidates.iter().enumerate() {
        for b in &candidates[k + 1..] {
            if b.prefix != a.prefix && covers(a, b) {
                r.warn(
                    format!("spec.http[{}].match[{}]", b.rule, b.index),
                    format!(
                        "virtualService rule {} match {} of prefix {} is not used (duplicate/overlapping match in rule {} of prefix {} on {})",
                        b.rule_name, b.match_name, b.prefix, a.match_name, a.prefix, a.rule_name
                    ),
                );
            }
        }
    }
}

/// Istio's `analyzeUnreachable*Rules`: a rule after a catch-all, or whose every match block
/// repeats an earlier one (names aside), is never used. Istio names rules `"name"` when they
/// have a name (HTTP only), else `#index`.
fn analyze_unreachable<R, M: PartialEq>(
    r: &mut Report,
    path: &str,
    rules: &[R],
    matches: impl Fn(&R) -> &Vec<M>,
    rule_name: impl Fn(&R) -> &str,
    match_name: impl Fn(&M) -> &str,
    unnamed: impl Fn(&M) -> M,
) {
    let display = |name: &str, i: usize| {
        if name.is_empty() {
            format!("#{i}")
        } else {
            format!("{name:?}")
        }
    };
    let mut seen: Vec<(M, usize)> = Vec::new();
    let mut catch_all_seen = false;
    for (i, rule) in rules.iter().enumerate() {
        let ms = matches(rule);
        let name = display(rule_name(rule), i);
        if ms.is_empty() {
            if catch_all_seen {
                r.warn(
                    format!("{path}[{i}]"),
                    format!("virtualService rule {name} not used (only the last rule can have no matches)"),
                );
            }
            catch_all_seen = true;
            continue;
        }
        let mut duplicates = 0;
        for (j, m) in ms.iter().enumerate() {
            if catch_all_seen {
                r.warn(
                    format!("{path}[{i}].match[{j}]"),
                    format!("virtualService rule {name} not used (route without matches defined before)"),
                );
                continue;
            }
            let key = unnamed(m);
            if let Some((_, earlier)) = seen.iter().find(|(k, _)| *k == key) {
                let earlier_name = display(rule_name(&rules[*earlier]), *earlier);
                r.warn(
                    format!("{path}[{i}].match[{j}]"),
                    format!(
                        "virtualService rule {name} match {} is not used (duplicate/overlapping match in rule {earlier_name})",
                        display(match_name(m), j)
                    ),
                );
                duplicates += 1;
                continue;
            }
            seen.push((key, i));
        }
        if duplicates == ms.len() {
            r.warn(
                format!("{path}[{i}]"),
                format!("virtualService rule {name} not used (all matches used by prior rules)"),
            );
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

    fn parse(yaml: &str) -> VirtualService {
        decode_clean(yaml)
    }

    fn run(yaml: &str) -> Report {
        let mut r = Report::default();
        validate_virtual_service(&parse(yaml), "ns", &mut r);
        r
    }

    fn errors(yaml: &str) -> Vec<String> {
        run(yaml).messages_of(Severity::Error)
    }

    fn warnings(yaml: &str) -> Vec<String> {
        run(yaml).messages_of(Severity::Warning)
    }

    /// One HTTP rule for host a.com; `rule` is the body of the rule in flow style.
    fn http(rule: &str) -> String {
        format!("hosts: [a.com]\nhttp:\n- {rule}\n")
    }

    const FULL: &str = r#"
hosts:
- reviews.prod.svc.cluster.local
- "*.reviews.example.com"
gateways:
- mesh
- istio-system/public-gateway
http:
- name: reviews-v2-routes
  match:
  - name: v2-prefix
    uri:
      prefix: /wpcatalog
    headers:
      end-user:
        exact: jason
    queryParams:
      debug:
        regex: "^(1|true)$"
    method:
      exact: GET
    authority:
      prefix: reviews
    scheme:
      exact: https
    port: 9080
    sourceLabels:
      app: productpage
    gateways: [mesh]
    ignoreUriCase: true
    withoutHeaders:
      x-skip:
        regex: "*"
    sourceNamespace: default
    statPrefix: v2
  rewrite:
    uri: /newcatalog
  route:
  - destination:
      host: reviews.prod.svc.cluster.local
      subset: v2
      port:
        number: 9080
    weight: 75
    headers:
      request:
        set:
          x-route: v2
      response:
        remove: [x-internal]
  - destination:
      host: reviews.prod.svc.cluster.local
      subset: v1
    weight: 25
  timeout: 10s
  retries:
    attempts: 3
    perTryTimeout: 2s
    retryOn: gateway-error,connect-failure,refused-stream,503
    retryRemoteLocalities: true
  fault:
    delay:
      percentage:
        value: 0.1
      fixedDelay: 5s
    abort:
      percentage:
        value: 0.1
      httpStatus: 400
  mirror:
    host: reviews-mirror.prod.svc.cluster.local
  mirrorPercentage:
    value: 50.0
  corsPolicy:
    allowOrigins:
    - exact: https://example.com
    - regex: "https://.*\\.example\\.com"
    allowMethods: [POST, GET]
    allowCredentials: false
    allowHeaders: [X-Foo-Bar]
    exposeHeaders: ["*"]
    maxAge: 24h
    unmatchedPreflights: IGNORE
  headers:
    request:
      add:
        x-request-id-copy: "%REQ(x-request-id)%"
- name: redirect
  match:
  - uri:
      exact: /v1/getProductRatings
  redirect:
    uri: /v1/bookRatings
    authority: newratings.default.svc.cluster.local
    derivePort: FROM_REQUEST_PORT
    redirectCode: 302
- match:
  - uri:
      prefix: /health
  directResponse:
    status: 200
    body:
      string: ok
- match:
  - uri:
      regex: "^/api/v[0-9]+/.*"
  rewrite:
    uriRegexRewrite:
      match: "^/api/v[0-9]+/(.*)"
      rewrite: /\1
  mirrors:
  - destination:
      host: audit.prod.svc.cluster.local
    percentage:
      value: 10
  route:
  - destination:
      host: reviews.prod.svc.cluster.local
- route:
  - destination:
      host: reviews.prod.svc.cluster.local
      subset: v1
tls:
- match:
  - sniHosts: [shop.reviews.example.com]
    port: 443
    destinationSubnets: [10.0.0.0/8]
    sourceLabels: {app: frontend}
    gateways: [mesh]
    sourceNamespace: default
  route:
  - destination:
      host: shop.prod.svc.cluster.local
      port: {number: 443}
tcp:
- match:
  - port: 27017
    destinationSubnets: [10.1.0.0/16]
    sourceLabels: {app: backend}
    gateways: [mesh]
    sourceNamespace: default
  route:
  - destination:
      host: mongo.backup.svc.cluster.local
      port: {number: 5555}
    weight: 100
exportTo: ["."]
"#;

    #[test]
    fn full_example_decodes_and_validates_clean() {
        let vs = parse(FULL);
        assert_eq!(vs.http.len(), 5);
        assert_eq!(
            vs.http[0].r#match[0].uri.as_ref().unwrap().prefix.as_deref(),
            Some("/wpcatalog")
        );
        let r = run(FULL);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn seed_examples_are_clean() {
        for yaml in [
            "hosts: [wikipedia.org, '*.wikipedia.org']\ntls:\n- match:\n  - sniHosts: [wikipedia.org, '*.wikipedia.org']\n  route:\n  - destination: {host: internal-egress-firewall.ns1.svc.cluster.local}\n",
            "hosts: [httpbin.com]\nexportTo: ['*']\ngateways: [mesh, istio-egressgateway]\nhttp:\n- match: [{port: 80, gateways: [mesh]}]\n  route: [{destination: {host: istio-egressgateway.istio-system.svc.cluster.local}}]\n- match: [{port: 80, gateways: [istio-egressgateway]}]\n  route: [{destination: {host: httpbin.com}}]\n",
        ] {
            let r = run(yaml);
            assert!(r.problems.is_empty(), "{:?}", r.problems);
        }
    }

    #[test]
    fn typo_gets_did_you_mean() {
        let doc = parse_stream("hosts: [a]\nhttp:\n- rout: []\n").unwrap().remove(0);
        let cx = DecodeCx::new(true);
        let _ = decode::<VirtualService>(&doc, "spec", &cx);
        let issues = cx.into_issues();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path, "spec.http[0].rout");
        assert_eq!(issues[0].message, "unknown field `rout`, did you mean `route`?");
    }

    // A28: delegates.
    #[test_case("http: [{route: [{destination: {host: a}}]}]", &[]; "plain delegate")]
    #[test_case("gateways: [gw]\nhttp: [{route: [{destination: {host: a}}]}]", &["delegate virtual service must have no gateways specified"]; "gateways")]
    #[test_case("tls: [{match: [{sniHosts: [a.com]}], route: [{destination: {host: a}}]}]", &["delegate virtual service must have no tls route specified", "SNI host \"a.com\" is not a compatible subset of any of the virtual service hosts: []"]; "tls")]
    #[test_case("tcp: [{route: [{destination: {host: a}}]}]", &["delegate virtual service must have no tcp route specified"]; "tcp")]
    // Istio checks a delegate's rules as any other: one that delegates still needs a route.
    #[test_case("http: [{delegate: {name: b}}]", &["delegate HTTP route cannot contain delegate", "HTTP route, redirect or direct_response is required"]; "nested delegate")]
    fn delegates(yaml: &str, want: &[&str]) {
        assert_eq!(errors(yaml), want);
    }

    #[test_case("{match: [{uri: {prefix: /a}}], delegate: {name: reviews-v1, namespace: other}}", &[]; "root")]
    // Istio's validateHTTPRouteConflict for a root rule: neither route nor redirect (named by
    // the rule's name), and nothing else, not even the delegate's name.
    #[test_case("{delegate: {name: r}, route: [{destination: {host: a}}]}", &["root HTTP route  must not specify route"]; "route and delegate")]
    #[test_case("{name: root, delegate: {name: r}, redirect: {uri: /a}}", &["root HTTP route root must not specify redirect"]; "redirect and delegate")]
    #[test_case("{delegate: {namespace: ns}}", &[]; "no name")]
    #[test_case("{delegate: {name: r, namespace: N_s}, directResponse: {status: 200}}", &[]; "bad namespace")]
    fn root_rules(rule: &str, want: &[&str]) {
        assert_eq!(errors(&http(rule)), want);
    }

    // A29: gateways.
    #[test_case("[mesh]", &[]; "mesh")]
    #[test_case("[istio-system/gw, gw]", &[]; "forms")]
    // Istio's validateGatewayNames wants DNS labels on both sides of the `/`, and stops at the
    // first bare name.
    #[test_case("[./gw]", &["invalid value for namespace: \".\""]; "dot namespace")]
    #[test_case("[gw, ns/Bad_name]", &[]; "after a bare name")]
    #[test_case("[bad_ns/gw]", &["invalid value for namespace: \"bad_ns\""]; "bad ns")]
    #[test_case("[ns/gw.x]", &["invalid value for gateway name: \"gw.x\""]; "bad name")]
    #[test_case("[ns/]", &["config namespace and gateway name cannot be empty", "invalid value for gateway name: \"\""]; "empty name")]
    #[test_case("['gw_1']", &["domain name \"gw_1\" invalid (label \"gw_1\" invalid)"]; "bare bad")]
    fn gateways(gws: &str, want: &[&str]) {
        let yaml = format!("hosts: [a.com]\ngateways: {gws}\nhttp: [{{route: [{{destination: {{host: a}}}}]}}]\n");
        assert_eq!(errors(&yaml), want);
    }

    #[test]
    fn legacy_gateway_name_warns() {
        let yaml = "hosts: [a.com]\ngateways: [gw.ns.svc.cluster.local]\nhttp: [{route: [{destination: {host: a}}]}]";
        assert!(errors(yaml).is_empty());
        assert_eq!(
            warnings(yaml),
            [
                "using legacy gatewayName format \"gw.ns.svc.cluster.local\"; prefer the <namespace>/<name> format: \"ns/gw\""
            ]
        );
    }

    // A30: hosts.
    #[test_case("hosts: [a.com, '*.b.com', reviews, 10.0.0.1]", &[]; "good")]
    #[test_case("hosts: ['*']", &["wildcard host * is not allowed for virtual services bound to the mesh gateway"]; "star on mesh")]
    #[test_case("hosts: ['*']\ngateways: [ns/gw]", &[]; "star on gateway")]
    #[test_case("hosts: ['*']\ngateways: [ns/gw, mesh]", &["wildcard host * is not allowed for virtual services bound to the mesh gateway"]; "star on both")]
    #[test_case("hosts: ['a..com']", &["domain name \".com\" invalid (label \"\" invalid)"]; "bad host")]
    #[test_case("hosts: [a.com, a.com]", &["duplicate hosts in virtual service: a.com & a.com"]; "duplicate")]
    #[test_case("hosts: ['*.com', '*.a.com']", &["duplicate hosts in virtual service: *.com & *.a.com"]; "overlapping wildcards")]
    #[test_case("hosts: ['*.a.com', b.a.com]", &["duplicate hosts in virtual service: *.a.com & b.a.com"]; "wildcard covers")]
    #[test_case("hosts: ['*.a.com', a.com]", &[]; "wildcard does not cover apex")]
    fn hosts(hosts: &str, want: &[&str]) {
        let yaml = format!("{hosts}\nhttp: [{{route: [{{destination: {{host: a}}}}]}}]\n");
        assert_eq!(errors(&yaml), want);
    }

    #[test]
    fn some_route_is_required() {
        assert_eq!(
            errors("hosts: [a.com]"),
            ["http, tcp or tls must be provided in virtual service"]
        );
    }

    // A31: HTTP rules.
    #[test_case("{route: [{destination: {host: a}}]}", &[]; "route")]
    #[test_case("{name: x}", &["HTTP route, redirect or direct_response is required"]; "nothing")]
    #[test_case("{route: [{destination: {host: a}}], redirect: {uri: /b}}", &["HTTP route cannot contain both route and redirect"]; "route redirect")]
    #[test_case("{redirect: {uri: /b}, fault: {abort: {httpStatus: 500}}}", &["HTTP route cannot contain both fault and redirect"]; "fault redirect")]
    #[test_case("{redirect: {uri: /b}, rewrite: {uri: /c}}", &["HTTP route rule cannot contain both rewrite and redirect"]; "rewrite redirect")]
    #[test_case("{redirect: {uri: /b}, directResponse: {status: 200}}", &["HTTP route rule cannot contain both direct_response and redirect"]; "redirect direct")]
    #[test_case("{route: [{destination: {host: a}}], directResponse: {status: 200}}", &["HTTP route cannot contain both route and direct_response"]; "route direct")]
    #[test_case("{directResponse: {status: 200}, fault: {delay: {fixedDelay: 1s}}}", &["HTTP route cannot contain both fault and direct_response"]; "fault direct")]
    #[test_case("{route: [{destination: {host: a}}], mirror: {host: b}, mirrors: [{destination: {host: c}}]}", &["HTTP route cannot contain both mirror and mirrors"]; "mirror mirrors")]
    fn http_conflicts(rule: &str, want: &[&str]) {
        assert_eq!(errors(&http(rule)), want);
    }

    #[test_case("uri: {regex: '^/a(b'}", &["\"uri\": error parsing regexp: unclosed group; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)"]; "bad uri regex")]
    #[test_case("uri: {regex: '(a)\\1'}", &["\"uri\": error parsing regexp: backreferences are not supported; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)"]; "backreference")]
    #[test_case("uri: {regex: ''}", &["\"uri\": regex string match should not be empty"]; "empty regex")]
    #[test_case("uri: {prefix: ''}", &[]; "empty uri prefix ok")]
    #[test_case("method: {prefix: ''}", &["\"method\": prefix string match should not be empty"]; "empty method prefix")]
    #[test_case("authority: {prefix: ''}", &["\"authority\": prefix string match should not be empty"]; "empty authority prefix")]
    #[test_case("scheme: {regex: '['}", &["\"scheme\": error parsing regexp: unclosed character class; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)"]; "bad scheme regex")]
    #[test_case("uri: {exact: /a, prefix: /b}", &["only one of exact, prefix or regex may be set, found exact and prefix"]; "oneof")]
    #[test_case("headers: {'bad header': {exact: a}}", &["header name bad header is not a valid header name"]; "bad header name")]
    #[test_case("headers: {x-a: {regex: '('}}", &["\"headers\": error parsing regexp: unclosed group; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)"]; "bad header regex")]
    #[test_case("withoutHeaders: {x-a: {regex: '*'}}", &[]; "presence")]
    #[test_case("queryParams: {q: {regex: '('}}", &["\"queryParams\": error parsing regexp: unclosed group; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)"]; "bad query regex")]
    #[test_case("port: 70000", &["port number 70000 must be in the range 1..65535"]; "bad port")]
    #[test_case("sourceLabels: {'a b': c}", &["invalid tag key: \"a b\""]; "bad source label")]
    #[test_case("gateways: [a/b/c]", &["invalid value for gateway name: \"b/c\""]; "bad match gateway")]
    fn http_matches(m: &str, want: &[&str]) {
        assert_eq!(
            errors(&http(&format!(
                "{{match: [{{{m}}}], route: [{{destination: {{host: a}}}}]}}"
            ))),
            want
        );
    }

    #[test]
    fn regex_length_limit() {
        let re = "a".repeat(1025);
        assert_eq!(
            errors(&http(&format!(
                "{{match: [{{uri: {{regex: '{re}'}}}}], route: [{{destination: {{host: a}}}}]}}"
            ))),
            ["\"uri\": regex is too large, max length allowed is 1024"]
        );
    }

    #[test_case("[{destination: {host: '*'}}]", &["invalid destination host *"]; "star")]
    #[test_case("[{destination: {host: 'a..b'}}]", &["domain name \".b\" invalid (label \"\" invalid)"]; "bad host")]
    #[test_case("[{destination: {host: a, subset: V_1}}]", &["subset name is invalid: V_1"]; "bad subset")]
    #[test_case("[{destination: {host: a, port: {number: 0}}}]", &["port number 0 must be in the range 1..65535"]; "bad port")]
    #[test_case("[{weight: 10}]", &["destination is required"]; "missing destination")]
    #[test_case("[{destination: {host: a}, weight: -1}]", &["weight -1 < 0"]; "negative weight")]
    #[test_case("[{destination: {host: a}}, {destination: {host: b}}]", &["total destination weight = 0"]; "zero total")]
    #[test_case("[{destination: {host: a}, weight: 0}, {destination: {host: b}, weight: 100}]", &[]; "weights")]
    #[test_case("[{destination: {host: a}, headers: {request: {set: {':path': x}}}}]", &["invalid header \":path\": header cannot have \":\" prefix"]; "pseudo header")]
    #[test_case("[{destination: {host: a}, headers: {response: {add: {host: x}}}}]", &["invalid header \"host\": cannot set Host header"]; "host response header")]
    // Istio checks operation names for pseudo-headers and Host only, and values for control
    // characters and Envoy's %VARIABLE% syntax.
    #[test_case("[{destination: {host: a}, headers: {request: {set: {'x.custom@v1': a, ':Authority': b}}}}]", &[]; "operation names")]
    #[test_case("[{destination: {host: a}, headers: {request: {add: {x: '%HOSTNAME'}}}}]", &["header value configuration: invalid header configuration. Un-terminated variable expression '%HOSTNAME'"]; "unterminated variable")]
    #[test_case("[{destination: {host: a}, headers: {response: {set: {x: '100%%, %START_TIME%'}}}}]", &[]; "escaped and variable")]
    #[test_case("[{destination: {host: a}, headers: {response: {set: {x: '50%'}}}}]", &["header value configuration: invalid header configuration. Un-escaped %"]; "trailing percent")]
    fn http_destinations(route: &str, want: &[&str]) {
        assert_eq!(errors(&http(&format!("{{route: {route}}}"))), want);
    }

    #[test_case("{redirect: {}}", &["redirect must specify URI, authority, scheme, or port"]; "empty redirect")]
    #[test_case("{redirect: {uri: /a, redirectCode: 200}}", &["200 is not a valid redirect code, must be 3xx"]; "bad code")]
    #[test_case("{redirect: {scheme: ftp}}", &["invalid redirect scheme, must be \"http\" or \"https\""]; "bad scheme")]
    #[test_case("{redirect: {port: 70000}}", &["port number 70000 must be in the range 1..65535"]; "bad port")]
    #[test_case("{redirect: {port: 8080}}", &[]; "port only")]
    #[test_case("{redirect: {prefixRewrite: /v2/}}", &[]; "prefix rewrite only")]
    #[test_case("{match: [{uri: {prefix: /v1/}}, {headers: {a: {exact: b}}}], redirect: {prefixRewrite: /v2/}}", &[]; "prefix rewrite of prefix matches")]
    #[test_case("{redirect: {uri: /a, prefixRewrite: /b}}", &["redirect may only specify one of uri or prefix_rewrite"]; "uri and prefix rewrite")]
    #[test_case("{match: [{uri: {prefix: /v1/}}, {uri: {exact: /v1}}], redirect: {prefixRewrite: /v2/}}", &["redirect prefix_rewrite requires all URI matches to use prefix match type"]; "prefix rewrite of exact match")]
    #[test_case("{directResponse: {status: 700}}", &["HTTP status 700 is not in range 200-599"]; "bad status")]
    #[test_case("{directResponse: {status: 503, body: {string: down}}}", &[]; "direct")]
    #[test_case("{route: [{destination: {host: a}}], timeout: 0s}", &["duration must be greater than 1ms"]; "timeout")]
    #[test_case("{route: [{destination: {host: a}}], retries: {attempts: -1}}", &["attempts cannot be negative"]; "negative attempts")]
    #[test_case("{route: [{destination: {host: a}}], retries: {retryOn: 5xx}}", &["http retry policy configured when attempts are set to 0 (disabled)"]; "zero attempts")]
    #[test_case("{route: [{destination: {host: a}}], retries: {attempts: 2, retryOn: '5xx,teapot,418,999'}}", &["\"teapot\" is not a valid retryOn policy", "\"999\" is not a valid retryOn policy"]; "retry on")]
    #[test_case("{route: [{destination: {host: a}}], retries: {attempts: 2, perTryTimeout: 0.1ms}}", &["duration must be greater than 1ms"]; "per try")]
    #[test_case("{route: [{destination: {host: a}}], rewrite: {}}", &["rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified"]; "empty rewrite")]
    #[test_case("{route: [{destination: {host: a}}], rewrite: {uri: /a, uriRegexRewrite: {match: a, rewrite: b}}}", &["rewrite may only contain one of URI or UriRegexRewrite"]; "two rewrites")]
    #[test_case("{route: [{destination: {host: a}}], rewrite: {uriRegexRewrite: {match: a}}}", &["UriRegexRewrite requires both Rewrite and Match fields to be specified"]; "half regex rewrite")]
    #[test_case("{route: [{destination: {host: a}}], rewrite: {authority: b}, headers: {request: {set: {host: c}}}}", &["authority header cannot be set multiple times: have \"b\", attempting to set \"c\""]; "authority twice")]
    #[test_case("{route: [{destination: {host: a}}], headers: {request: {set: {':authority': c}}}}", &[]; "authority once")]
    #[test_case("{route: [{destination: {host: a}}], headers: {request: {remove: ['']}}}", &["header name cannot be empty"]; "empty header op")]
    fn http_actions(rule: &str, want: &[&str]) {
        assert_eq!(errors(&http(rule)), want);
    }

    #[test_case("{}", &["HTTP fault injection must have an abort and/or a delay"]; "empty")]
    #[test_case("{abort: {httpStatus: 100}}", &["HTTP status 100 is not in range 200-599"]; "abort status")]
    #[test_case("{abort: {grpcStatus: NOPE}}", &["gRPC status \"NOPE\" is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes, for example 'NOT_FOUND'"]; "grpc")]
    // Istio's bound on an abort status is 200..=600.
    #[test_case("{abort: {httpStatus: 600}}", &[]; "status 600")]
    #[test_case("{abort: {httpStatus: 601}}", &["HTTP status 601 is not in range 200-599"]; "status 601")]
    #[test_case("{abort: {grpcStatus: UNAVAILABLE}}", &[]; "good grpc")]
    #[test_case("{abort: {http2Error: x}}", &["HTTP/2 abort fault injection not supported yet"]; "http2")]
    #[test_case("{abort: {httpStatus: 500, percentage: {value: 101}}}", &["percentage 101 is neither 0.0, nor in range [0.0001, 100.0]"]; "abort percentage")]
    // Istio does not check the deprecated integer `percent`.
    #[test_case("{delay: {fixedDelay: 1s, percent: 120}}", &[]; "delay percent")]
    #[test_case("{delay: {fixedDelay: 0s}}", &["duration must be greater than 1ms"]; "delay duration")]
    #[test_case("{delay: {exponentialDelay: 1s}}", &["exponentialDelay not supported yet"]; "exponential")]
    fn faults(fault: &str, want: &[&str]) {
        assert_eq!(
            errors(&http(&format!(
                "{{route: [{{destination: {{host: a}}}}], fault: {fault}}}"
            ))),
            want
        );
    }

    #[test_case("mirrorPercentage: {value: 101}", &["mirror_percentage must have a max value of 100 (it has 101.000000)"]; "too big")]
    #[test_case("mirrorPercentage: {value: -1}", &["mirror_percentage must have a min value of 0 (it has -1.000000)"]; "negative")]
    #[test_case("mirror: {host: '*'}", &["invalid destination host *"]; "mirror host")]
    #[test_case("mirrors: [{percentage: {value: 5}}]", &["destination is required for mirrors"]; "mirrors destination")]
    #[test_case("mirrors: [{destination: {host: b}, percentage: {value: 200}}]", &["mirror percentage must have a max value of 100 (it has 200.000000)"]; "mirrors percentage")]
    #[test_case("mirrorPercent: 200", &["mirror_percent must have a max value of 100 (it has 200)"]; "mirror percent")]
    #[test_case("mirror_percent: 200", &["mirror_percent must have a max value of 100 (it has 200)"]; "mirror percent proto name")]
    #[test_case("mirror: {host: b}, mirror_percent: 50", &[]; "mirror percent proto name in range")]
    fn mirrors(extra: &str, want: &[&str]) {
        assert_eq!(
            errors(&http(&format!("{{route: [{{destination: {{host: a}}}}], {extra}}}"))),
            want
        );
    }

    #[test]
    fn mirror_percent_proto_name_is_deprecated_and_read_first() {
        let rule = "{route: [{destination: {host: a}}], mirror: {host: b}, mirror_percent: 10, mirrorPercent: 200}";
        let r = run(&http(rule));
        assert_eq!(
            r.messages_of(Severity::Warning),
            ["using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead"]
        );
        assert_eq!(r.problems[0].path, "spec.http[0].mirror_percent");
        // Istio's decoder takes the proto name, so 200 under the other name is not read.
        assert!(errors(&http(rule)).is_empty());
    }

    #[test]
    fn mirror_percent_is_deprecated() {
        assert_eq!(
            warnings(&http(
                "{route: [{destination: {host: a}}], mirror: {host: b}, mirrorPercent: 10}"
            )),
            ["using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead"]
        );
    }

    #[test_case("allowOrigins: [{exact: ''}]", &["'' is not a valid match type for CORS allow origins"]; "empty origin")]
    #[test_case("allowOrigins: [{regex: '('}]", &["\"corsPolicy.allowOrigins\": error parsing regexp: unclosed group; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)"]; "bad origin regex")]
    #[test_case("allowMethods: [FETCH]", &["\"FETCH\" is not a supported HTTP method"]; "method")]
    #[test_case("allowHeaders: ['a b']", &["header name a b is not a valid header name"]; "header")]
    #[test_case("maxAge: 1.5s", &["max_age duration is accurate only to seconds precision"]; "max age")]
    #[test_case("allowOrigin: [https://a.com]\nallowMethods: [GET]\nmaxAge: 10s", &[]; "good")]
    fn cors(policy: &str, want: &[&str]) {
        let policy = policy.replace('\n', ", ");
        assert_eq!(
            errors(&http(&format!(
                "{{route: [{{destination: {{host: a}}}}], corsPolicy: {{{policy}}}}}"
            ))),
            want
        );
    }

    #[test_case("http:\n- route: [{destination: {host: a}}]\n- route: [{destination: {host: b}}]", &["virtualService rule #1 not used (only the last rule can have no matches)"]; "two catch-alls")]
    #[test_case("http:\n- match: [{uri: {prefix: /a}}]\n  route: [{destination: {host: a}}]\n- name: second\n  match: [{name: again, uri: {prefix: /a}}]\n  route: [{destination: {host: b}}]", &["virtualService rule \"second\" match \"again\" is not used (duplicate/overlapping match in rule #0)", "virtualService rule \"second\" not used (all matches used by prior rules)"]; "duplicate match")]
    #[test_case("http:\n- match: [{uri: {prefix: /a}}]\n  route: [{destination: {host: a}}]\n- match: [{uri: {prefix: /a}}, {uri: {prefix: /b}}]\n  route: [{destination: {host: b}}]", &["virtualService rule #1 match #0 is not used (duplicate/overlapping match in rule #0)"]; "partly duplicate")]
    #[test_case("tcp:\n- match: [{port: 1}]\n  route: [{destination: {host: a}}]\n- match: [{port: 1}]\n  route: [{destination: {host: b}}]", &["virtualService rule #1 match #0 is not used (duplicate/overlapping match in rule #0)", "virtualService rule #1 not used (all matches used by prior rules)"]; "tcp")]
    // Istio also warns for each match after a catch-all rule, and for a prefix an earlier,
    // shorter prefix with the same conditions covers (no method means GET to Istio).
    #[test_case("http:\n- route: [{destination: {host: a}}]\n- match: [{uri: {prefix: /a}}, {port: 8080}]\n  route: [{destination: {host: b}}]", &["virtualService rule #1 not used (route without matches defined before)", "virtualService rule #1 not used (route without matches defined before)"]; "after a catch-all")]
    #[test_case("http:\n- name: api\n  match: [{uri: {prefix: /api}}]\n  route: [{destination: {host: a}}]\n- name: v1\n  match: [{name: m, uri: {prefix: /api/v1}, method: {exact: GET}}]\n  route: [{destination: {host: b}}]", &["virtualService rule \"v1\" match \"m\" of prefix /api/v1 is not used (duplicate/overlapping match in rule #0 of prefix /api on \"api\")"]; "covered prefix")]
    #[test_case("http:\n- match: [{uri: {prefix: /api}, headers: {x: {exact: a}}}]\n  route: [{destination: {host: a}}]\n- match: [{uri: {prefix: /api/v1}}]\n  route: [{destination: {host: b}}]", &[]; "narrower conditions")]
    #[test_case("http:\n- match: [{uri: {prefix: /a}}]\n  route: [{destination: {host: a}}]\n- route: [{destination: {host: b}}]", &[]; "reachable")]
    fn unreachable_rules(rules: &str, want: &[&str]) {
        let yaml = format!("hosts: [a.com]\n{rules}\n");
        assert!(errors(&yaml).is_empty(), "{:?}", errors(&yaml));
        assert_eq!(warnings(&yaml), want);
    }

    // A32: TLS and TCP rules.
    #[test_case("[{match: [{sniHosts: [a.com]}], route: [{destination: {host: a}}]}]", &[]; "good")]
    #[test_case("[{route: [{destination: {host: a}}]}]", &["TLS route must have at least one match condition"]; "no match")]
    #[test_case("[{match: [{port: 443}], route: [{destination: {host: a}}]}]", &["TLS match must have at least one SNI host"]; "no sni")]
    #[test_case("[{match: [{sniHosts: [a.com]}]}]", &["TLS route is required"]; "no route")]
    #[test_case("[{match: [{sniHosts: [b.com]}], route: [{destination: {host: a}}]}]", &["SNI host \"b.com\" is not a compatible subset of any of the virtual service hosts: [a.com, *.w.com]"]; "not subset")]
    #[test_case("[{match: [{sniHosts: [x.w.com, '*.y.w.com']}], route: [{destination: {host: a}}]}]", &[]; "subset of wildcard")]
    #[test_case("[{match: [{sniHosts: ['*.com']}], route: [{destination: {host: a}}]}]", &["SNI host \"*.com\" is not a compatible subset of any of the virtual service hosts: [a.com, *.w.com]"]; "wider wildcard")]
    #[test_case("[{match: [{sniHosts: ['a..com']}], route: [{destination: {host: a}}]}]", &["domain name \".com\" invalid (label \"\" invalid)"]; "bad sni")]
    #[test_case("[{match: [{sniHosts: [a.com], destinationSubnets: [10.0.0.0/33, 1.2.3]}], route: [{destination: {host: a}}]}]", &["10.0.0.0/33 is not a valid CIDR block", "1.2.3 is not a valid IP"]; "subnets")]
    #[test_case("[{match: [{sniHosts: [a.com], port: 70000}], route: [{destination: {host: a}}]}]", &["port number 70000 must be in the range 1..65535"]; "port")]
    fn tls_routes(tls: &str, want: &[&str]) {
        assert_eq!(errors(&format!("hosts: [a.com, '*.w.com']\ntls: {tls}\n")), want);
    }

    #[test]
    fn sni_ip_warns() {
        let yaml = "hosts: [a.com]\ntls: [{match: [{sniHosts: [1.2.3.4]}], route: [{destination: {host: a}}]}]";
        assert!(errors(yaml).is_empty());
        assert_eq!(
            warnings(yaml),
            ["using an IP address (\"1.2.3.4\") goes against SNI spec and most clients do not support this"]
        );
    }

    #[test_case("[{route: [{destination: {host: a}}]}]", &[]; "good")]
    #[test_case("[{match: [{port: 1}]}]", &["TCP route is required"]; "no route")]
    #[test_case("[{match: [{destinationSubnets: [x]}], route: [{destination: {host: a}}]}]", &["x is not a valid IP"]; "subnet")]
    #[test_case("[{match: [{port: 70000}], route: [{destination: {host: a}}]}]", &["port number 70000 must be in the range 1..65535"]; "port")]
    #[test_case("[{match: [{sourceLabels: {a: 'b c'}}], route: [{destination: {host: a}}]}]", &["invalid tag value: \"b c\""]; "labels")]
    #[test_case("[{route: [{destination: {host: a}}, {destination: {host: b}}]}]", &["total destination weight = 0"]; "weights")]
    #[test_case("[{route: [{destination: {host: a}, weight: -5}]}]", &["weight -5 < 0"]; "negative weight")]
    fn tcp_routes(tcp: &str, want: &[&str]) {
        assert_eq!(errors(&format!("hosts: [a.com]\ntcp: {tcp}\n")), want);
    }

    #[test_case("['*']", &[]; "public")]
    #[test_case("['~']", &["exportTo ~ (none) is not allowed for Istio configuration objects"]; "none")]
    #[test_case("['*', a]", &["cannot have both public (*) and non-public exportTo values for a resource"]; "mixed")]
    fn export_to(e: &str, want: &[&str]) {
        assert_eq!(
            errors(&format!(
                "hosts: [a.com]\nexportTo: {e}\nhttp: [{{route: [{{destination: {{host: a}}}}]}}]\n"
            )),
            want
        );
    }

    // Istio's ValidateVirtualService and validateHTTPRouteMatchRequest, rule by rule.
    #[test_case("hosts: [a.com]\nhttp: [{match: [{headers: {'@request.auth.claims.group': {exact: a}}}], route: [{destination: {host: a}}]}]",
        &["JWT claim based routing (key: @request.auth.claims.group) is only supported for gateway, found no gateways: []"]; "claims on the mesh")]
    #[test_case("hosts: [a.com]\ngateways: [ns/gw, mesh]\nhttp: [{match: [{withoutHeaders: {'@REQUEST.auth.claims[group][x]': {exact: a}}}], route: [{destination: {host: a}}]}]",
        &["JWT claim based routing (key: @REQUEST.auth.claims[group][x]) is only supported for gateway, found no gateways: [ns/gw mesh]"]; "claims on mesh and gateway")]
    #[test_case("hosts: [a.com]\ngateways: [ns/gw]\nhttp: [{match: [{headers: {'@request.auth.claims.group': {exact: a}, '@request.auth.claims[a][b]': {exact: b}}}], route: [{destination: {host: a}}]}]",
        &[]; "claims on a gateway")]
    #[test_case("hosts: [a.com]\nhttp: [{match: [{headers: {'x.custom!': {exact: a}, ':path': {prefix: /a}}}], route: [{destination: {host: a}}]}]",
        &[]; "token and pseudo header names")]
    #[test_case("hosts: [a.com]\nhttp: [{match: [{headers: {x: {prefix: ''}}, queryParams: {q: {prefix: ''}}}], route: [{destination: {host: a}}]}]",
        &["\"headers\": prefix string match should not be empty", "\"queryParams\": prefix string match should not be empty"]; "empty prefixes")]
    #[test_case("hosts: [a.com]\nhttp: [{match: [{sourceNamespace: Bad_ns}], route: [{destination: {host: a}}]}]",
        &["sourceNamespace match Bad_ns is invalid"]; "source namespace")]
    #[test_case("hosts: [outbound_.80_._.a.com]\ngateways: [ns/gw]\ntls: [{match: [{sniHosts: [outbound_.80_._.a.com]}], route: [{destination: {host: a.com}}]}]",
        &[]; "auto passthrough sni")]
    #[test_case("hosts: [outbound_.80_._.a.com]\ntls: [{match: [{sniHosts: [outbound_.80_._.a.com]}], route: [{destination: {host: a.com}}]}]",
        &["domain name \"outbound_.80_._.a.com\" invalid (label \"outbound_\" invalid)", "domain name \"outbound_.80_._.a.com\" invalid (label \"outbound_\" invalid)"]; "auto passthrough sni on the mesh")]
    #[test_case("hosts: [a.com]\nhttp: [{corsPolicy: {allowMethods: ['*'], allowHeaders: ['x.custom', '*'], exposeHeaders: [\"x'y\"]}, route: [{destination: {host: a}}]}]",
        &[]; "cors names")]
    fn istio_rules(yaml: &str, want: &[&str]) {
        assert_eq!(errors(yaml), want);
    }

    #[test]
    fn abort_without_error_type_warns() {
        let yaml = http("{fault: {abort: {percentage: {value: 10}}}, route: [{destination: {host: a}}]}");
        assert!(errors(&yaml).is_empty(), "{:?}", errors(&yaml));
        assert_eq!(warnings(&yaml), ["abort configured, but error type not set"]);
    }

    #[test]
    fn paths_are_full() {
        let r = run(&http(
            "{match: [{uri: {exact: /a}}, {uri: {regex: '('}}], route: [{destination: {host: a}}]}",
        ));
        assert_eq!(r.problems[0].path, "spec.http[0].match[1].uri");
        let r = run(&http(
            "{match: [{headers: {'x y': {exact: a}}}], route: [{destination: {host: a}}]}",
        ));
        assert_eq!(r.problems[0].path, "spec.http[0].match[0].headers[\"x y\"]");
    }

    #[test]
    fn host_matching() {
        assert!(host_matches("*", "a.com"));
        assert!(host_matches("a.com", "*.com"));
        assert!(!host_matches("a.com", "*.a.com"));
        assert!(host_subset_of("b.a.com", "*.a.com"));
        assert!(!host_subset_of("*.a.com", "b.a.com"));
        assert!(host_subset_of("*.b.a.com", "*.a.com"));
    }
}
