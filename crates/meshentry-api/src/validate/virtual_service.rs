//! VirtualService validation (A28-A32), and the `Destination` check that Sidecar's egress proxy
//! reuses.

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
    validate_gateway_names(r, "spec.gateways", &vs.gateways);

    let mut all_hosts_valid = true;
    for (i, h) in vs.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        match wildcard_domain_error(h) {
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
        validate_tls_route(r, &format!("spec.tls[{i}]"), route, &vs.hosts);
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

/// A29: `ns/name`, `mesh`, a bare name, or the legacy `name.ns[.svc...]`.
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
            }
            Some((ns, name)) => {
                if ns.is_empty() || name.is_empty() {
                    r.error(&p, "config namespace and gateway name cannot be empty");
                }
                // `./name` is documented as "the VirtualService's namespace" (resolveGatewayName),
                // so it is accepted here too.
                if ns != "." && !is_dns1123_label_ci(ns) {
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
    if let Some(d) = &h.delegate {
        if delegate_vs {
            r.error(format!("{path}.delegate"), "delegate HTTPRoute cannot contain delegate");
        }
        // A root rule only selects traffic and hands it to the delegate, so what a delegate
        // decides itself is rejected here; the wording follows Istio's conflict messages.
        if !h.route.is_empty() {
            r.error(path, "HTTP route cannot contain both route and delegate");
        }
        if h.redirect.is_some() {
            r.error(path, "HTTP route cannot contain both redirect and delegate");
        }
        if h.direct_response.is_some() {
            r.error(path, "HTTP route cannot contain both direct_response and delegate");
        }
        if d.name.is_empty() {
            r.error(format!("{path}.delegate.name"), "delegate name is required");
        } else if !is_dns1123_subdomain(&d.name) {
            r.error(
                format!("{path}.delegate.name"),
                format!("invalid delegate name: {:?}", d.name),
            );
        }
        if !d.namespace.is_empty() && !is_dns1123_label_ci(&d.namespace) {
            r.error(
                format!("{path}.delegate.namespace"),
                format!("invalid delegate namespace: {:?}", d.namespace),
            );
        }
    } else {
        validate_http_route_conflicts(r, path, h);
    }

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
    if let Some(p) = h.mirror_percent {
        if p > 100 {
            r.error(
                format!("{path}.mirrorPercent"),
                format!("mirror_percent must have a max value of 100 (it has {p})"),
            );
        }
        r.warn(
            format!("{path}.mirrorPercent"),
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
        match &m.destination {
            None => r.error(&p, "destination is required for mirrors"),
            Some(d) => validate_destination(r, &format!("{p}.destination"), d),
        }
        if let Some(pc) = &m.percentage {
            validate_mirror_percentage(r, &format!("{p}.percentage"), pc.value, "mirror percentage");
        }
    }
    if let Some(rd) = &h.redirect {
        validate_redirect(r, &format!("{path}.redirect"), rd);
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

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label_ci)
}

fn validate_http_route_conflicts(r: &mut Report, path: &str, h: &HttpRoute) {
    if h.mirror.is_some() && !h.mirrors.is_empty() {
        r.error(path, "HTTP route cannot contain both mirror and mirrors");
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
            r.error(path, "HTTP route cannot contain both redirect and direct_response");
        }
    } else if h.route.is_empty() && h.direct_response.is_none() {
        r.error(path, "HTTP route, redirect or direct_response is required");
    }
    if h.direct_response.is_some() {
        if !h.route.is_empty() {
            r.error(path, "HTTP route cannot contain both route and direct_response");
        }
        if h.fault.is_some() {
            r.error(path, "HTTP route cannot contain both fault and direct_response");
        }
        if h.rewrite.is_some() {
            r.error(path, "HTTP route rule cannot contain both rewrite and direct_response");
        }
    }
}

fn validate_http_match(r: &mut Report, path: &str, m: &HttpMatchRequest) {
    for (name, sm) in &m.headers {
        let p = field(&format!("{path}.headers"), name);
        validate_header_name_or_claim(r, &p, name);
        validate_string_match_regexp(r, &p, sm, "headers");
    }
    for (name, sm) in &m.without_headers {
        let p = field(&format!("{path}.withoutHeaders"), name);
        validate_header_name_or_claim(r, &p, name);
        // `regex: "*"` is not a regex: Istio turns it into a presence match.
        if sm.regex.as_deref() != Some("*") {
            validate_string_match_regexp(r, &p, sm, "withoutHeaders");
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
        validate_string_match_regexp(r, &field(&format!("{path}.queryParams"), name), sm, "queryParams");
    }
    if m.port != 0 {
        validate_port_number(r, &format!("{path}.port"), m.port);
    }
    validate_labels(r, &format!("{path}.sourceLabels"), &m.source_labels);
    validate_gateway_names(r, &format!("{path}.gateways"), &m.gateways);
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

const HEADER_CHARS: fn(u8) -> bool = |b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';

fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(HEADER_CHARS)
}

fn validate_header_name(r: &mut Report, path: &str, name: &str) {
    if name.is_empty() {
        r.error(path, "header name cannot be empty");
    } else if !is_header_name(name) {
        r.error(path, format!("header name {name} is not a valid header name"));
    }
}

/// Header matches may also name a JWT claim (`@request.auth.claims.<name>`).
fn validate_header_name_or_claim(r: &mut Report, path: &str, name: &str) {
    match name.strip_prefix("@request.auth.claims.") {
        Some(claim) if !claim.is_empty() => {}
        _ => validate_header_name(r, path, name),
    }
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("host") || name == ":authority"
}

/// Istio's `ValidateHTTPHeaderOperationName`; `allow_authority`: request `set`/`add` may
/// rewrite the authority.
fn validate_header_operation_name(r: &mut Report, path: &str, name: &str, allow_authority: bool) {
    if name.is_empty() {
        r.error(path, "header name cannot be empty");
        return;
    }
    if allow_authority && is_authority_header(name) {
        return;
    }
    if name.starts_with(':') {
        r.error(
            path,
            format!("invalid header {name:?}: header cannot have \":\" prefix"),
        );
        return;
    }
    if name.eq_ignore_ascii_case("host") {
        r.error(path, format!("invalid header {name:?}: header cannot be host"));
        return;
    }
    validate_header_name(r, path, name);
}

fn validate_header_operations(r: &mut Report, path: &str, ops: &HeaderOperations, request: bool) {
    for (what, map) in [("set", &ops.set), ("add", &ops.add)] {
        for name in map.keys() {
            validate_header_operation_name(r, &field(&format!("{path}.{what}"), name), name, request);
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
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
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

fn validate_http_status(r: &mut Report, path: &str, status: i64) {
    if !(200..=599).contains(&status) {
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
                    "gRPC status {s:?} is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes"
                ),
            );
        }
        if a.http2_error.is_some() {
            r.error(
                format!("{p}.http2Error"),
                "HTTP/2 abort fault injection not supported yet",
            );
        }
    }
    if let Some(d) = &f.delay {
        let p = format!("{path}.delay");
        if let Some(pc) = &d.percentage {
            validate_percentage(r, &format!("{p}.percentage.value"), pc.value);
        }
        if !(0..=100).contains(&d.percent) {
            r.error(
                format!("{p}.percent"),
                format!("percentage {} is not in range 0..100", d.percent),
            );
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
fn validate_redirect(r: &mut Report, path: &str, rd: &HttpRedirect) {
    check_oneof(
        r,
        path,
        &[("port", rd.port.is_some()), ("derivePort", rd.derive_port.is_some())],
    );
    if rd.uri.is_empty()
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
fn validate_tls_route(r: &mut Report, path: &str, t: &TlsRoute, vs_hosts: &[String]) {
    if t.r#match.is_empty() {
        r.error(path, "TLS route must have at least one match condition");
    }
    for (j, m) in t.r#match.iter().enumerate() {
        validate_tls_match(r, &format!("{path}.match[{j}]"), m, vs_hosts);
    }
    if t.route.is_empty() {
        r.error(path, "TLS route is required");
    }
    validate_route_destinations(r, &format!("{path}.route"), &t.route);
}

fn validate_tls_match(r: &mut Report, path: &str, m: &TlsMatchAttributes, vs_hosts: &[String]) {
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
        if let Some(e) = wildcard_domain_error(sni) {
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
      "@request.auth.claims.group":
        exact: admin
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
    #[test_case("http: [{delegate: {name: b}}]", &["delegate HTTPRoute cannot contain delegate"]; "nested delegate")]
    fn delegates(yaml: &str, want: &[&str]) {
        assert_eq!(errors(yaml), want);
    }

    #[test_case("{match: [{uri: {prefix: /a}}], delegate: {name: reviews-v1, namespace: other}}", &[]; "root")]
    #[test_case("{delegate: {name: r}, route: [{destination: {host: a}}]}", &["HTTP route cannot contain both route and delegate"]; "route and delegate")]
    #[test_case("{delegate: {name: r}, redirect: {uri: /a}}", &["HTTP route cannot contain both redirect and delegate"]; "redirect and delegate")]
    #[test_case("{delegate: {namespace: ns}}", &["delegate name is required"]; "no name")]
    #[test_case("{delegate: {name: r, namespace: N_s}}", &["invalid delegate namespace: \"N_s\""]; "bad namespace")]
    fn root_rules(rule: &str, want: &[&str]) {
        assert_eq!(errors(&http(rule)), want);
    }

    // A29: gateways.
    #[test_case("[mesh]", &[]; "mesh")]
    #[test_case("[istio-system/gw, ./gw, gw]", &[]; "forms")]
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
    #[test_case("hosts: ['a..com']", &["domain name \"a..com\" invalid (label \"\" invalid)"]; "bad host")]
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
    #[test_case("{redirect: {uri: /b}, directResponse: {status: 200}}", &["HTTP route cannot contain both redirect and direct_response"]; "redirect direct")]
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
    #[test_case("[{destination: {host: 'a..b'}}]", &["domain name \"a..b\" invalid (label \"\" invalid)"]; "bad host")]
    #[test_case("[{destination: {host: a, subset: V_1}}]", &["subset name is invalid: V_1"]; "bad subset")]
    #[test_case("[{destination: {host: a, port: {number: 0}}}]", &["port number 0 must be in the range 1..65535"]; "bad port")]
    #[test_case("[{weight: 10}]", &["destination is required"]; "missing destination")]
    #[test_case("[{destination: {host: a}, weight: -1}]", &["weight -1 < 0"]; "negative weight")]
    #[test_case("[{destination: {host: a}}, {destination: {host: b}}]", &["total destination weight = 0"]; "zero total")]
    #[test_case("[{destination: {host: a}, weight: 0}, {destination: {host: b}, weight: 100}]", &[]; "weights")]
    #[test_case("[{destination: {host: a}, headers: {request: {set: {':path': x}}}}]", &["invalid header \":path\": header cannot have \":\" prefix"]; "pseudo header")]
    #[test_case("[{destination: {host: a}, headers: {response: {add: {host: x}}}}]", &["invalid header \"host\": header cannot be host"]; "host response header")]
    fn http_destinations(route: &str, want: &[&str]) {
        assert_eq!(errors(&http(&format!("{{route: {route}}}"))), want);
    }

    #[test_case("{redirect: {}}", &["redirect must specify URI, authority, scheme, or port"]; "empty redirect")]
    #[test_case("{redirect: {uri: /a, redirectCode: 200}}", &["200 is not a valid redirect code, must be 3xx"]; "bad code")]
    #[test_case("{redirect: {scheme: ftp}}", &["invalid redirect scheme, must be \"http\" or \"https\""]; "bad scheme")]
    #[test_case("{redirect: {port: 70000}}", &["port number 70000 must be in the range 1..65535"]; "bad port")]
    #[test_case("{redirect: {port: 8080}}", &[]; "port only")]
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
    #[test_case("{abort: {grpcStatus: NOPE}}", &["gRPC status \"NOPE\" is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes"]; "grpc")]
    #[test_case("{abort: {grpcStatus: UNAVAILABLE}}", &[]; "good grpc")]
    #[test_case("{abort: {http2Error: x}}", &["HTTP/2 abort fault injection not supported yet"]; "http2")]
    #[test_case("{abort: {httpStatus: 500, percentage: {value: 101}}}", &["percentage 101 is neither 0.0, nor in range [0.0001, 100.0]"]; "abort percentage")]
    #[test_case("{delay: {fixedDelay: 1s, percent: 120}}", &["percentage 120 is not in range 0..100"]; "delay percent")]
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
    fn mirrors(extra: &str, want: &[&str]) {
        assert_eq!(
            errors(&http(&format!("{{route: [{{destination: {{host: a}}}}], {extra}}}"))),
            want
        );
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
    #[test_case("[{match: [{sniHosts: ['a..com']}], route: [{destination: {host: a}}]}]", &["domain name \"a..com\" invalid (label \"\" invalid)"]; "bad sni")]
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

    #[test]
    fn paths_are_full() {
        let r = run(&http(
            "{match: [{uri: {exact: /a}}, {uri: {regex: '('}}], route: [{destination: {host: a}}]}",
        ));
        assert_eq!(r.problems[0].path, "spec.http[0].match[1].uri");
        let r = run(&http(
            "{match: [{headers: {'x.y': {exact: a}}}], route: [{destination: {host: a}}]}",
        ));
        assert_eq!(r.problems[0].path, "spec.http[0].match[0].headers[\"x.y\"]");
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
