//! DestinationRule validation (A24-A27), and the traffic-policy checks that Sidecar reuses for
//! its connection pools.

use std::collections::{BTreeMap, BTreeSet};

use super::Report;
use super::common::{
    field, fqdn_error, is_dns1123_label_ci, validate_duration, validate_export_to, validate_labels,
    validate_port_number, wildcard_domain_error,
};
use crate::model::{
    BackendUtilizationLb, ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb, DestinationRule,
    Duration, H2UpgradePolicy, LoadBalancerSettings, LocalityLoadBalancerSetting, OutlierDetection, PortTrafficPolicy,
    RetryBudget, TrafficPolicy, TunnelSettings, TypeWorkloadSelector, ZoneAwareLoadBalancerSetting,
};

/// Istio's `ValidateDestinationRule`. Findings accumulate; an empty `trafficPolicy` only
/// stops the checks of that policy (A0).
pub fn validate_destination_rule(dr: &DestinationRule, namespace: &str, r: &mut Report) {
    if let Some(e) = wildcard_domain_error(&dr.host) {
        r.error("spec.host", e);
    }
    if let Some(tp) = &dr.traffic_policy {
        validate_traffic_policy(r, "spec.trafficPolicy", tp, namespace);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in dr.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if !names.insert(subset.name.as_str()) {
            r.error(
                format!("{path}.name"),
                format!("duplicate subset names: {}", subset.name),
            );
        }
        validate_subset_name(r, &format!("{path}.name"), &subset.name);
        validate_labels(r, &format!("{path}.labels"), &subset.labels);
        if let Some(tp) = &subset.traffic_policy {
            validate_traffic_policy(r, &format!("{path}.trafficPolicy"), tp, namespace);
        }
    }
    validate_export_to(r, "spec.exportTo", namespace, &dr.export_to, false);
    if let Some(selector) = &dr.workload_selector {
        validate_selector_export_to(r, namespace, &dr.export_to);
        validate_match_labels(r, "spec.workloadSelector", selector);
    }
}

/// A27: a rule scoped to some workloads applies in its own namespace only.
fn validate_selector_export_to(r: &mut Report, namespace: &str, export_to: &[String]) {
    if export_to.is_empty() {
        return;
    }
    // Istio compares the set of valid entries with `.` read as the own namespace.
    let set: BTreeSet<&str> = export_to
        .iter()
        .map(|e| if e == "." { namespace } else { e.as_str() })
        .filter(|e| *e == "*" || is_dns1123_label_ci(e))
        .collect();
    if set.is_empty() {
        return;
    }
    if !set.contains(namespace) {
        r.error(
            "spec.exportTo",
            "destination rule with workload selector cannot have exportTo beyond current namespace",
        );
    } else if set.len() > 1 {
        r.error(
            "spec.exportTo",
            "destination rule with workload selector cannot have multiple entries in exportTo",
        );
    }
}

/// A11 for DestinationRule, whose selector is `matchLabels` (istio.type.v1beta1), so the shared
/// `validate_selector` (which reads `labels`) would report the wrong path.
fn validate_match_labels(r: &mut Report, path: &str, selector: &TypeWorkloadSelector) {
    // Istio's `validateWorkloadSelector` checks for empty keys and wildcards only; its CRD
    // caps values at 63 bytes.
    let lpath = format!("{path}.matchLabels");
    for (k, v) in &selector.match_labels {
        let pair = format!("{k}={v}");
        if k.is_empty() {
            r.error(&lpath, format!("empty key is not supported in selector: {pair:?}"));
        }
        if k.contains('*') || v.contains('*') {
            r.error(
                field(&lpath, k),
                format!("wildcard is not supported in selector: {pair:?}"),
            );
        }
        if v.len() > 63 {
            r.error(field(&lpath, k), "Too long: may not be more than 63 bytes");
        }
    }
    if selector.match_labels.is_empty() {
        r.warn(path, "workload selector specified without labels");
    }
}

/// A26, also used for `Destination.subset` in routes.
pub(super) fn validate_subset_name(r: &mut Report, path: &str, name: &str) {
    if name.is_empty() {
        r.error(path, "subset name cannot be empty");
    } else if !is_dns1123_label_ci(name) {
        r.error(path, format!("subset name is invalid: {name}"));
    }
}

/// Reports a proto oneof with more than one member set. Istio's decoder rejects such input
/// before validation, with a parser message; this names the fields instead.
pub(super) fn check_oneof(r: &mut Report, path: &str, members: &[(&str, bool)]) {
    let set: Vec<&str> = members.iter().filter(|(_, is_set)| *is_set).map(|(n, _)| *n).collect();
    if set.len() > 1 {
        let names: Vec<&str> = members.iter().map(|(n, _)| *n).collect();
        let (last, init) = names.split_last().unwrap_or((&"", &[]));
        r.error(
            path,
            format!(
                "only one of {} or {last} may be set, found {}",
                init.join(", "),
                set.join(" and ")
            ),
        );
    }
}

fn validate_traffic_policy(r: &mut Report, path: &str, tp: &TrafficPolicy, namespace: &str) {
    if tp.outlier_detection.is_none()
        && tp.connection_pool.is_none()
        && tp.load_balancer.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        r.error(path, "traffic policy must have at least one field");
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        r.error(path, "tunnel and proxyProtocol must not be set together");
        return;
    }
    if let Some(od) = &tp.outlier_detection {
        validate_outlier_detection(r, &format!("{path}.outlierDetection"), od);
    }
    if let Some(cp) = &tp.connection_pool {
        validate_connection_pool(r, &format!("{path}.connectionPool"), cp);
    }
    if let Some(lb) = &tp.load_balancer {
        validate_load_balancer(r, &format!("{path}.loadBalancer"), lb, tp.outlier_detection.is_some());
    }
    if let Some(tls) = &tp.tls {
        validate_client_tls(r, &format!("{path}.tls"), tls, namespace);
    }
    for (i, pls) in tp.port_level_settings.iter().enumerate() {
        validate_port_traffic_policy(r, &format!("{path}.portLevelSettings[{i}]"), pls, namespace);
    }
    if let Some(t) = &tp.tunnel {
        validate_tunnel(r, &format!("{path}.tunnel"), t);
    }
    if let Some(rb) = &tp.retry_budget {
        validate_retry_budget(r, &format!("{path}.retryBudget"), rb);
    }
}

fn validate_port_traffic_policy(r: &mut Report, path: &str, p: &PortTrafficPolicy, namespace: &str) {
    match &p.port {
        None => r.error(path, "portTrafficPolicy must have valid port"),
        // Istio accepts `port: {}` here, but a policy for port 0 can never apply.
        Some(port) => validate_port_number(r, &format!("{path}.port.number"), port.number),
    }
    if p.outlier_detection.is_none() && p.connection_pool.is_none() && p.load_balancer.is_none() && p.tls.is_none() {
        r.error(path, "port traffic policy must have at least one field");
        return;
    }
    if let Some(od) = &p.outlier_detection {
        validate_outlier_detection(r, &format!("{path}.outlierDetection"), od);
    }
    if let Some(cp) = &p.connection_pool {
        validate_connection_pool(r, &format!("{path}.connectionPool"), cp);
    }
    if let Some(lb) = &p.load_balancer {
        validate_load_balancer(r, &format!("{path}.loadBalancer"), lb, p.outlier_detection.is_some());
    }
    if let Some(tls) = &p.tls {
        validate_client_tls(r, &format!("{path}.tls"), tls, namespace);
    }
}

fn validate_opt_duration(r: &mut Report, path: &str, d: &Option<Duration>) {
    if let Some(d) = d {
        validate_duration(r, path, d);
    }
}

/// A proto `Duration` that Istio only decodes: any well-formed value, zero included.
fn validate_duration_syntax(r: &mut Report, path: &str, d: &Option<Duration>) {
    if let Some(Err(e)) = d.as_ref().map(Duration::parse) {
        r.error(path, e);
    }
}

fn validate_percent(r: &mut Report, path: &str, value: i32) {
    if !(0..=100).contains(&value) {
        r.error(path, format!("percentage {value} is not in range 0..100"));
    }
}

fn validate_outlier_detection(r: &mut Report, path: &str, od: &OutlierDetection) {
    validate_opt_duration(r, &format!("{path}.baseEjectionTime"), &od.base_ejection_time);
    if od.consecutive_errors != 0 {
        r.warn(
            format!("{path}.consecutiveErrors"),
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
        );
    }
    if !od.split_external_local_origin_errors && od.consecutive_local_origin_failures.unwrap_or(0) > 0 {
        r.error(
            format!("{path}.consecutiveLocalOriginFailures"),
            "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
        );
    }
    validate_opt_duration(r, &format!("{path}.interval"), &od.interval);
    validate_percent(r, &format!("{path}.maxEjectionPercent"), od.max_ejection_percent);
    validate_percent(r, &format!("{path}.minHealthPercent"), od.min_health_percent);
    // Istio's CRD schema bounds each code; the wording is ours.
    for (i, code) in od.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            r.error(
                format!("{path}.outlierDetectionHttpErrorCodes[{i}]"),
                format!("{code} is not an HTTP status code (100..599)"),
            );
        }
    }
}

fn non_negative(r: &mut Report, path: &str, value: i32, what: &str) {
    if value < 0 {
        r.error(path, format!("{what} must be non-negative"));
    }
}

/// Istio's `validateConnectionPool`, for DestinationRule policies and Sidecar listeners.
pub(super) fn validate_connection_pool(r: &mut Report, path: &str, cp: &ConnectionPoolSettings) {
    if cp.http.is_none() && cp.tcp.is_none() {
        r.error(path, "connection pool must have at least one field");
        return;
    }
    if let Some(h) = &cp.http {
        let p = format!("{path}.http");
        non_negative(
            r,
            &format!("{p}.http1MaxPendingRequests"),
            h.http1_max_pending_requests,
            "http1 max pending requests",
        );
        non_negative(
            r,
            &format!("{p}.http2MaxRequests"),
            h.http2_max_requests,
            "http2 max requests",
        );
        non_negative(
            r,
            &format!("{p}.maxRequestsPerConnection"),
            h.max_requests_per_connection,
            "max requests per connection",
        );
        non_negative(r, &format!("{p}.maxRetries"), h.max_retries, "max retries");
        validate_opt_duration(r, &format!("{p}.idleTimeout"), &h.idle_timeout);
        if h.h2_upgrade_policy == H2UpgradePolicy::Upgrade && h.use_client_protocol {
            r.error(
                &p,
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            );
        }
        non_negative(
            r,
            &format!("{p}.maxConcurrentStreams"),
            h.max_concurrent_streams,
            "max concurrent streams",
        );
        if let Some(k) = &h.http2_keep_alive {
            let kp = format!("{p}.http2KeepAlive");
            match &k.interval {
                None => r.error(format!("{kp}.interval"), "http2 keepalive interval is required"),
                Some(d) => validate_duration(r, &format!("{kp}.interval"), d),
            }
            match &k.timeout {
                None => r.error(format!("{kp}.timeout"), "http2 keepalive timeout is required"),
                Some(d) => validate_duration(r, &format!("{kp}.timeout"), d),
            }
        }
    }
    if let Some(t) = &cp.tcp {
        let p = format!("{path}.tcp");
        non_negative(r, &format!("{p}.maxConnections"), t.max_connections, "max connections");
        validate_opt_duration(r, &format!("{p}.connectTimeout"), &t.connect_timeout);
        validate_opt_duration(r, &format!("{p}.maxConnectionDuration"), &t.max_connection_duration);
        // `0s` means "disabled"; Istio skips any value under a whole millisecond.
        if let Some(d) = &t.idle_timeout
            && d.parse().map_or(true, |v| v.as_millis() != 0)
        {
            validate_duration(r, &format!("{p}.idleTimeout"), d);
        }
        if let Some(k) = &t.tcp_keepalive {
            validate_opt_duration(r, &format!("{p}.tcpKeepalive.time"), &k.time);
            validate_opt_duration(r, &format!("{p}.tcpKeepalive.interval"), &k.interval);
        }
    }
}

fn validate_load_balancer(r: &mut Report, path: &str, lb: &LoadBalancerSettings, has_outlier: bool) {
    check_oneof(
        r,
        path,
        &[
            ("simple", lb.simple.is_some()),
            ("consistentHash", lb.consistent_hash.is_some()),
            ("backendUtilization", lb.backend_utilization.is_some()),
        ],
    );
    if let Some(ch) = &lb.consistent_hash {
        validate_consistent_hash(r, &format!("{path}.consistentHash"), ch);
    }
    if let Some(b) = &lb.backend_utilization {
        validate_backend_utilization(r, &format!("{path}.backendUtilization"), b);
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        r.error(path, "only one of localityLbSetting and zoneAwareLbSetting can be set");
    }
    if let Some(l) = &lb.locality_lb_setting {
        validate_locality_lb(r, &format!("{path}.localityLbSetting"), l, has_outlier);
    }
    if let Some(z) = &lb.zone_aware_lb_setting {
        validate_zone_aware_lb(r, &format!("{path}.zoneAwareLbSetting"), z, has_outlier);
    }
    // Only the CRD checks this one (a duration of at least 1ms).
    if let Some(d) = &lb.warmup_duration_secs
        && d.parse().map_or(true, |v| v < std::time::Duration::from_millis(1))
    {
        r.error(
            format!("{path}.warmupDurationSecs"),
            "must be a valid duration greater than 1ms",
        );
    }
    if let Some(w) = &lb.warmup {
        let p = format!("{path}.warmup");
        match &w.duration {
            None => r.error(format!("{p}.duration"), "duration is required"),
            Some(d) => validate_duration(r, &format!("{p}.duration"), d),
        }
        match w.minimum_percent {
            Some(m) if m > 100.0 => r.error(
                format!("{p}.minimumPercent"),
                "minimumPercent value should be less than or equal to 100",
            ),
            // The CRD's minimum; Kubernetes' wording.
            Some(m) if m < 0.0 => r.error(
                format!("{p}.minimumPercent"),
                format!("Invalid value: {m}: should be greater than or equal to 0"),
            ),
            _ => {}
        }
        if let Some(a) = w.aggression
            && a <= 0.0
        {
            r.error(format!("{p}.aggression"), "aggression should be greater than 0");
        }
    }
}

fn validate_consistent_hash(r: &mut Report, path: &str, ch: &ConsistentHashLb) {
    check_oneof(
        r,
        path,
        &[
            ("httpHeaderName", !ch.http_header_name.is_empty()),
            ("httpCookie", ch.http_cookie.is_some()),
            ("useSourceIp", ch.use_source_ip),
            ("httpQueryParameterName", !ch.http_query_parameter_name.is_empty()),
        ],
    );
    check_oneof(
        r,
        path,
        &[("ringHash", ch.ring_hash.is_some()), ("maglev", ch.maglev.is_some())],
    );
    if let Some(c) = &ch.http_cookie {
        let p = format!("{path}.httpCookie");
        if c.name.is_empty() {
            r.error(format!("{p}.name"), "name required for HttpCookie");
        }
        // Istio requires no ttl (none is a session cookie), and 0s is meaningful, so only the
        // syntax is checked.
        if let Some(d) = &c.ttl
            && let Err(e) = d.parse()
        {
            r.error(format!("{p}.ttl"), e);
        }
        let mut names = BTreeSet::new();
        for (k, a) in c.attributes.iter().enumerate() {
            let ap = format!("{p}.attributes[{k}].name");
            if a.name.is_empty() {
                r.error(ap, "cookie attribute name cannot be empty");
            } else if !names.insert(a.name.as_str()) {
                r.error(ap, format!("duplicate cookie attribute name: {}", a.name));
            }
        }
    }
    if ch.minimum_ring_size != 0 {
        r.warn(
            format!("{path}.minimumRingSize"),
            "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
        );
        if ch.ring_hash.is_some() || ch.maglev.is_some() {
            r.error(path, "only one of MinimumRingSize or Maglev/Ringhash can be specified");
        }
    }
    if let Some(m) = &ch.maglev {
        let p = format!("{path}.maglev.tableSize");
        if m.table_size == 0 {
            r.error(&p, "tableSize must be set for maglev");
        }
        if m.table_size >= 5_000_011 {
            r.error(&p, "tableSize must be less than 5000011 for maglev");
        }
        if !is_prime(m.table_size) {
            r.error(&p, "tableSize must be a prime number for maglev");
        }
    }
}

/// Envoy's (and so Istio's) primality test, which counts 1 as prime.
fn is_prime(n: u64) -> bool {
    if n != 0 && n < 4 {
        return true;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut d = 3u64;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Topology labels that `failoverPriority` cannot combine with `failover`.
const TOPOLOGY_LABELS: &[&str] = &[
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

/// Istio's `ValidateLocalityLbSetting`, in its order, stopping where it stops.
fn validate_locality_lb(r: &mut Report, path: &str, l: &LocalityLoadBalancerSetting, has_outlier: bool) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        r.error(path, "can not simultaneously specify 'distribute' and 'failover'");
        return;
    }
    if !l.failover.is_empty()
        && let Some((i, label)) = l
            .failover_priority
            .iter()
            .enumerate()
            .find(|(_, label)| TOPOLOGY_LABELS.contains(&label.as_str()))
    {
        r.error(
            format!("{path}.failoverPriority[{i}]"),
            format!("can not simultaneously set 'failover' and topology label '{label}' in 'failover_priority'"),
        );
        return;
    }
    let mut sources = Vec::new();
    for (i, d) in l.distribute.iter().enumerate() {
        let p = format!("{path}.distribute[{i}]");
        sources.push(d.from.as_str());
        let mut total = 0u64;
        for (loc, weight) in &d.to {
            if !(1..=100).contains(weight) {
                r.error(
                    field(&format!("{p}.to"), loc),
                    "locality weight must be in range [1, 100]",
                );
                return;
            }
            total += u64::from(*weight);
        }
        if total != 100 {
            r.error(format!("{p}.to"), format!("total locality weight {total} != 100"));
            return;
        }
        validate_localities(r, &format!("{p}.to"), d.to.keys().map(String::as_str));
    }
    validate_localities(r, &format!("{path}.distribute"), sources.into_iter());
    if (!l.failover.is_empty() || !l.failover_priority.is_empty()) && !has_outlier {
        r.warn(
            format!("{path}.failover"),
            "outlier detection policy must be provided for failover",
        );
    }
    for (i, f) in l.failover.iter().enumerate() {
        let p = format!("{path}.failover[{i}]");
        if f.from == f.to {
            r.error(&p, "locality lb failover settings must specify different regions");
        }
        if f.from.contains('/') || f.to.contains('/') {
            r.error(&p, "locality lb failover only specify region");
        }
        if f.from.contains('*') || f.to.contains('*') {
            r.error(&p, "locality lb failover region should not contain '*' wildcard");
        }
    }
}

/// Istio's `ValidateZoneAwareLbSetting`: failover orders regions only, and zone-aware routing
/// already partitions by region, zone and subzone, so those labels cannot be priorities.
fn validate_zone_aware_lb(r: &mut Report, path: &str, z: &ZoneAwareLoadBalancerSetting, has_outlier: bool) {
    for (i, label) in z.failover_priority.iter().enumerate() {
        if matches!(
            label.as_str(),
            "topology.kubernetes.io/region" | "topology.kubernetes.io/zone" | "topology.istio.io/subzone"
        ) {
            r.error(
                format!("{path}.failoverPriority[{i}]"),
                format!(
                    "'failover_priority' for zone aware lb must not use topology label '{label}'; region- and zone-level routing are handled automatically"
                ),
            );
        }
    }
    if (!z.failover.is_empty() || !z.failover_priority.is_empty()) && !has_outlier {
        r.warn(path, "outlier detection policy must be provided for failover");
    }
    for (i, f) in z.failover.iter().enumerate() {
        let p = format!("{path}.failover[{i}]");
        if f.from == f.to {
            r.error(&p, "zone aware lb failover settings must specify different regions");
        }
        if f.from.contains('/') || f.to.contains('/') {
            r.error(
                &p,
                "zone aware lb failover only specifies region; zone and subzone failover are handled automatically",
            );
        }
        if f.from.contains('*') || f.to.contains('*') {
            r.error(&p, "zone aware lb failover region should not contain '*' wildcard");
        }
    }
    // The CRD schema's bound (`minimum: 1`); the wording is ours.
    if z.min_cluster_size == Some(0) {
        r.error(format!("{path}.minClusterSize"), "minClusterSize must be at least 1");
    }
}

/// Istio checks nothing here beyond decoding: the periods need only be durations.
fn validate_backend_utilization(r: &mut Report, path: &str, b: &BackendUtilizationLb) {
    validate_duration_syntax(r, &format!("{path}.weightUpdatePeriod"), &b.weight_update_period);
    validate_duration_syntax(
        r,
        &format!("{path}.weightExpirationPeriod"),
        &b.weight_expiration_period,
    );
    validate_duration_syntax(
        r,
        &format!("{path}.weightStabilizationPeriod"),
        &b.weight_stabilization_period,
    );
}

/// Istio's `validateLocalities`: `region[/zone[/subzone]]` (the subzone is the rest, slashes
/// and all), at most one `*`, at the end, and none covering one given before it. Like Istio's,
/// the overlap check depends on the order (`a/b` then `a/*` passes).
fn validate_localities<'a>(r: &mut Report, path: &str, localities: impl Iterator<Item = &'a str>) {
    // region -> zone -> subzones; `*` marks "all".
    let mut seen: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    let overlap = |loc: &str| format!("locality {loc} overlap with previous specified ones");
    for loc in localities {
        let stars = loc.matches('*').count();
        if stars > 1 || (stars == 1 && !loc.ends_with('*')) {
            r.error(
                path,
                format!("locality {loc} wildcard '*' number can not exceed 1 and must be in the end"),
            );
            return;
        }
        if seen.contains_key("*") {
            r.error(path, overlap(loc));
            return;
        }
        let parts: Vec<&str> = loc.splitn(3, '/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            r.error(
                path,
                format!("locality {loc} must not contain empty region/zone/subzone info"),
            );
            return;
        }
        match parts.as_slice() {
            [region] => {
                if seen.contains_key(region) {
                    r.error(path, overlap(loc));
                    return;
                }
                seen.insert(region, BTreeMap::from([("*", BTreeSet::from(["*"]))]));
            }
            [region, zone] => {
                let zones = seen.entry(region).or_default();
                if zones.contains_key("*") || zones.contains_key(zone) {
                    r.error(path, overlap(loc));
                    return;
                }
                zones.insert(zone, BTreeSet::from(["*"]));
            }
            [region, zone, subzone] => {
                let zones = seen.entry(region).or_default();
                if zones.contains_key("*") {
                    r.error(path, overlap(loc));
                    return;
                }
                let subzones = zones.entry(zone).or_default();
                if subzones.contains("*") || !subzones.insert(subzone) {
                    r.error(path, overlap(loc));
                    return;
                }
            }
            _ => {}
        }
    }
}

/// A25: Istio's `ValidateTLS` for `ClientTLSSettings` in `namespace`.
fn validate_client_tls(r: &mut Report, path: &str, tls: &ClientTlsSettings, namespace: &str) {
    // A `configmap://ns/name` credential is read from the config cluster, and only from the
    // rule's own namespace.
    if let Some(rest) = tls.credential_name.strip_prefix("configmap://") {
        let name = &tls.credential_name;
        let problem = match rest.split('/').collect::<Vec<_>>().as_slice() {
            [_] => Some(format!("invalid resource name {name:?}. Expected namespace and name")),
            ["", ..] => Some(format!("invalid resource name {name:?}. Expected namespace")),
            [_, "", ..] => Some(format!("invalid resource name {name:?}. Expected name")),
            [ns, ..] if *ns != namespace || namespace.is_empty() => Some(format!(
                "namespace must match the configuration namespace {namespace:?}"
            )),
            _ => None,
        };
        if let Some(p) = problem {
            r.error(
                format!("{path}.credentialName"),
                format!("invalid configmap:// credentialName: {p}"),
            );
        }
    }
    if tls.insecure_skip_verify == Some(true) {
        if tls.mode == ClientTlsMode::Simple
            && (!tls.ca_certificates.is_empty() || !tls.credential_name.is_empty() || !tls.subject_alt_names.is_empty())
        {
            r.error(path, "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true");
        }
        if tls.mode == ClientTlsMode::Mutual && (!tls.ca_certificates.is_empty() || !tls.subject_alt_names.is_empty()) {
            r.error(
                path,
                "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true",
            );
        }
    }
    // Ours, not Istio's (its webhook accepts them silently): SIMPLE never presents a client
    // certificate (`constructUpstreamTLS` reads these files only for MUTUAL), so a rule that
    // names one most likely meant MUTUAL. With credentialName the error below already says it.
    if tls.mode == ClientTlsMode::Simple && tls.credential_name.is_empty() {
        for (set, field) in [
            (!tls.client_certificate.is_empty(), "clientCertificate"),
            (!tls.private_key.is_empty(), "privateKey"),
        ] {
            if set {
                r.warn(
                    format!("{path}.{field}"),
                    format!("{field} is ignored in SIMPLE mode: no client certificate is sent; use mode MUTUAL to present one"),
                );
            }
        }
    }
    let simple_or_mutual = matches!(tls.mode, ClientTlsMode::Simple | ClientTlsMode::Mutual);
    if simple_or_mutual && !tls.credential_name.is_empty() {
        if !tls.client_certificate.is_empty()
            || !tls.ca_certificates.is_empty()
            || !tls.private_key.is_empty()
            || !tls.ca_crl.is_empty()
        {
            r.error(
                path,
                "cannot specify client certificates or CA certificate or CA CRL If credentialName is set",
            );
        }
        return;
    }
    if tls.mode == ClientTlsMode::Mutual {
        if tls.client_certificate.is_empty() {
            r.error(
                format!("{path}.clientCertificate"),
                "client certificate required for mutual tls",
            );
        }
        if tls.private_key.is_empty() {
            r.error(format!("{path}.privateKey"), "private key required for mutual tls");
        }
    }
}

fn validate_tunnel(r: &mut Report, path: &str, t: &TunnelSettings) {
    if !t.protocol.is_empty() && t.protocol != "CONNECT" && t.protocol != "POST" {
        r.error(
            format!("{path}.protocol"),
            "tunnel protocol must be \"CONNECT\" or \"POST\"",
        );
    }
    if let Some(fqdn) = fqdn_error(&t.target_host)
        && t.target_host.parse::<std::net::IpAddr>().is_err()
    {
        let ip = format!("{} is not a valid IP", t.target_host);
        r.error(
            format!("{path}.targetHost"),
            format!("tunnel target host must be valid FQDN or IP address: {fqdn}; {ip}"),
        );
    }
    if !(1..=65535).contains(&t.target_port) {
        r.error(
            format!("{path}.targetPort"),
            format!(
                "tunnel target port is invalid: port number {} must be in the range 1..65535",
                t.target_port
            ),
        );
    }
}

fn validate_retry_budget(r: &mut Report, path: &str, rb: &RetryBudget) {
    // Istio leaves the bound to its CRD schema; the wording is ours.
    if let Some(p) = rb.percent
        && !(0.0..=100.0).contains(&p)
    {
        r.error(
            format!("{path}.percent"),
            format!("retry budget percent {p} must be in range 0..100"),
        );
    }
    validate_duration_syntax(r, &format!("{path}.budgetInterval"), &rb.budget_interval);
}

/// For tests in sibling modules: a label map from pairs.
#[cfg(test)]
pub(super) fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::super::test_support::decode_clean;
    use super::*;
    use crate::de::{DecodeCx, decode};
    use crate::yaml::parse_stream;

    fn parse(yaml: &str) -> DestinationRule {
        decode_clean(yaml)
    }

    fn run(yaml: &str) -> Report {
        let mut r = Report::default();
        validate_destination_rule(&parse(yaml), "ns", &mut r);
        r
    }

    fn errors(yaml: &str) -> Vec<String> {
        run(yaml).messages_of(super::super::Severity::Error)
    }

    fn warnings(yaml: &str) -> Vec<String> {
        run(yaml).messages_of(super::super::Severity::Warning)
    }

    /// A realistic rule using most of the API (istio.io examples combined).
    const FULL: &str = r#"
host: reviews.prod.svc.cluster.local
trafficPolicy:
  loadBalancer:
    consistentHash:
      httpCookie:
        name: user
        path: /
        ttl: 0s
      ringHash:
        minimumRingSize: 1024
    localityLbSetting:
      enabled: true
      failover:
      - from: us-east
        to: eu-west
    warmup:
      duration: 60s
      minimumPercent: 10
      aggression: 1.5
  connectionPool:
    tcp:
      maxConnections: 100
      connectTimeout: 30ms
      tcpKeepalive:
        probes: 3
        time: 7200s
        interval: 75s
      maxConnectionDuration: 1h
      idleTimeout: 0s
    http:
      http1MaxPendingRequests: 10
      http2MaxRequests: 1000
      maxRequestsPerConnection: 10
      maxRetries: 3
      idleTimeout: 30s
      h2UpgradePolicy: UPGRADE
      maxConcurrentStreams: 100
  outlierDetection:
    consecutive5xxErrors: 7
    consecutiveGatewayErrors: 5
    splitExternalLocalOriginErrors: true
    consecutiveLocalOriginFailures: 3
    interval: 5m
    baseEjectionTime: 15m
    maxEjectionPercent: 50
    minHealthPercent: 10
  tls:
    mode: SIMPLE
    sni: reviews.example.com
    subjectAltNames: [reviews.example.com]
    caCertificates: /etc/certs/ca.pem
    caCrl: /etc/certs/crl.pem
  portLevelSettings:
  - port:
      number: 9080
    loadBalancer:
      simple: LEAST_REQUEST
    tls:
      mode: ISTIO_MUTUAL
  retryBudget:
    percent: 20
    minRetryConcurrency: 3
subsets:
- name: v1
  labels:
    version: v1
- name: v2
  labels:
    version: v2
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    tunnel:
      protocol: CONNECT
      targetHost: 10.0.0.1
      targetPort: 8443
- name: v3
  labels: {version: v3}
  trafficPolicy:
    loadBalancer:
      consistentHash:
        maglev:
          tableSize: 65537
        useSourceIp: true
    proxyProtocol:
      version: V2
exportTo: [".", "other"]
"#;

    #[test]
    fn full_example_decodes_and_validates_clean() {
        let dr = parse(FULL);
        assert_eq!(dr.subsets.len(), 3);
        let tp = dr.traffic_policy.as_ref().unwrap();
        assert_eq!(tp.outlier_detection.as_ref().unwrap().consecutive_5xx_errors, Some(7));
        assert_eq!(
            tp.connection_pool
                .as_ref()
                .unwrap()
                .http
                .as_ref()
                .unwrap()
                .h2_upgrade_policy,
            H2UpgradePolicy::Upgrade
        );
        let r = run(FULL);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn typo_gets_did_you_mean() {
        let doc = parse_stream("host: a.com\ntrafficPolicy:\n  outlierDetecton: {}\n")
            .unwrap()
            .remove(0);
        let cx = DecodeCx::new(true);
        let _ = decode::<DestinationRule>(&doc, "spec", &cx);
        let issues = cx.into_issues();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path, "spec.trafficPolicy.outlierDetecton");
        assert_eq!(
            issues[0].message,
            "unknown field `outlierDetecton`, did you mean `outlierDetection`?"
        );
    }

    #[test]
    fn selector_uses_match_labels() {
        let dr = parse("host: a.com\nworkloadSelector:\n  matchLabels: {app: x}\n");
        assert_eq!(dr.workload_selector.unwrap().match_labels, labels(&[("app", "x")]));
    }

    // A24: host.
    #[test_case("host: reviews", &[]; "short name")]
    #[test_case("host: '*'", &[]; "star")]
    #[test_case("host: '*.a.com'", &[]; "wildcard")]
    #[test_case("{}", &["empty domain name not allowed"]; "missing")]
    #[test_case("host: a..com", &["domain name \".com\" invalid (label \"\" invalid)"]; "bad label")]
    fn host(yaml: &str, want: &[&str]) {
        assert_eq!(errors(yaml), want);
    }

    // A24: empty policies.
    #[test_case("trafficPolicy: {}", &["traffic policy must have at least one field"]; "empty policy")]
    #[test_case("trafficPolicy: {connectionPool: {}}", &["connection pool must have at least one field"]; "empty pool")]
    #[test_case("trafficPolicy: {connectionPool: {tcp: {}}}", &[]; "tcp pool")]
    #[test_case("trafficPolicy: {portLevelSettings: [{port: {number: 80}}]}", &["port traffic policy must have at least one field"]; "empty port policy")]
    #[test_case("trafficPolicy: {portLevelSettings: [{tls: {mode: SIMPLE}}]}", &["portTrafficPolicy must have valid port"]; "port policy without port")]
    #[test_case("trafficPolicy: {portLevelSettings: [{port: {number: 80}, tls: {mode: SIMPLE}}]}", &[]; "valid port policy")]
    #[test_case("subsets: [{name: a, trafficPolicy: {}}]", &["traffic policy must have at least one field"]; "empty subset policy")]
    #[test_case("trafficPolicy: {tunnel: {targetHost: a.com, targetPort: 1}, proxyProtocol: {}}", &["tunnel and proxyProtocol must not be set together"]; "tunnel and proxy protocol")]
    fn empty_policies(extra: &str, want: &[&str]) {
        assert_eq!(errors(&format!("host: a.com\n{extra}\n")), want);
    }

    // A24: negatives, durations, percents.
    #[test_case(
        "connectionPool: {tcp: {maxConnections: -1}}",
        "max connections must be non-negative"
    )]
    #[test_case(
        "connectionPool: {http: {http1MaxPendingRequests: -1}}",
        "http1 max pending requests must be non-negative"
    )]
    #[test_case(
        "connectionPool: {http: {http2MaxRequests: -1}}",
        "http2 max requests must be non-negative"
    )]
    #[test_case(
        "connectionPool: {http: {maxRequestsPerConnection: -1}}",
        "max requests per connection must be non-negative"
    )]
    #[test_case("connectionPool: {http: {maxRetries: -1}}", "max retries must be non-negative")]
    #[test_case(
        "connectionPool: {http: {maxConcurrentStreams: -1}}",
        "max concurrent streams must be non-negative"
    )]
    #[test_case(
        "connectionPool: {http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}}",
        "use client protocol must not be true when H2UpgradePolicy is UPGRADE"
    )]
    #[test_case(
        "connectionPool: {tcp: {connectTimeout: 0.5ms}}",
        "duration must be greater than 1ms"
    )]
    #[test_case(
        "connectionPool: {tcp: {connectTimeout: 1.5ms}}",
        "only durations to ms precision are supported"
    )]
    #[test_case("connectionPool: {http: {idleTimeout: 0s}}", "duration must be greater than 1ms")]
    #[test_case("outlierDetection: {interval: 0s}", "duration must be greater than 1ms")]
    #[test_case("outlierDetection: {baseEjectionTime: 0s}", "duration must be greater than 1ms")]
    #[test_case(
        "outlierDetection: {maxEjectionPercent: 101}",
        "percentage 101 is not in range 0..100"
    )]
    #[test_case("outlierDetection: {minHealthPercent: -1}", "percentage -1 is not in range 0..100")]
    #[test_case(
        "outlierDetection: {consecutiveLocalOriginFailures: 3}",
        "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false"
    )]
    // Only the CRD checks warmupDurationSecs.
    #[test_case(
        "loadBalancer: {warmupDurationSecs: 0s}",
        "must be a valid duration greater than 1ms"
    )]
    // Istio's validateLoadBalancer: warmup needs a duration, aggression need only be > 0.
    #[test_case("loadBalancer: {warmup: {aggression: 2}}", "duration is required")]
    #[test_case(
        "loadBalancer: {warmup: {duration: 10s, minimumPercent: 120}}",
        "minimumPercent value should be less than or equal to 100"
    )]
    #[test_case(
        "loadBalancer: {warmup: {duration: 10s, aggression: 0}}",
        "aggression should be greater than 0"
    )]
    #[test_case("loadBalancer: {warmup: {duration: 0s}}", "duration must be greater than 1ms")]
    #[test_case("retryBudget: {percent: 101}", "retry budget percent 101 must be in range 0..100")]
    #[test_case(
        "retryBudget: {budgetInterval: \"10\"}",
        "invalid duration \"10\" (expected e.g. 10s, 1.5s, 100ms, 1h30m)"
    )]
    #[test_case(
        "connectionPool: {http: {http2KeepAlive: {timeout: 5s}}}",
        "http2 keepalive interval is required"
    )]
    #[test_case(
        "connectionPool: {http: {http2KeepAlive: {interval: 30s}}}",
        "http2 keepalive timeout is required"
    )]
    #[test_case(
        "connectionPool: {http: {http2KeepAlive: {interval: 0s, timeout: 5s}}}",
        "duration must be greater than 1ms"
    )]
    #[test_case(
        "connectionPool: {http: {http2KeepAlive: {interval: 30s, timeout: 1.5ms}}}",
        "only durations to ms precision are supported"
    )]
    #[test_case(
        "outlierDetection: {outlierDetectionHttpErrorCodes: [503, 600]}",
        "600 is not an HTTP status code (100..599)"
    )]
    #[test_case(
        "outlierDetection: {outlierDetectionHttpErrorCodes: [99]}",
        "99 is not an HTTP status code (100..599)"
    )]
    #[test_case(
        "tunnel: {protocol: GET, targetHost: a.com, targetPort: 80}",
        "tunnel protocol must be \"CONNECT\" or \"POST\""
    )]
    #[test_case(
        "tunnel: {targetHost: 'a b', targetPort: 80}",
        "tunnel target host must be valid FQDN or IP address: domain name \"a b\" invalid (label \"a b\" invalid); a b is not a valid IP"
    )]
    #[test_case(
        "tunnel: {targetHost: a.com}",
        "tunnel target port is invalid: port number 0 must be in the range 1..65535"
    )]
    #[test_case(
        "portLevelSettings: [{port: {number: 0}, tls: {}}]",
        "port number 0 must be in the range 1..65535"
    )]
    fn policy_field_errors(policy: &str, want: &str) {
        assert_eq!(errors(&format!("host: a.com\ntrafficPolicy: {{{policy}}}\n")), [want]);
    }

    #[test]
    fn tcp_idle_timeout_zero_disables() {
        assert!(errors("host: a.com\ntrafficPolicy: {connectionPool: {tcp: {idleTimeout: 0s}}}").is_empty());
    }

    #[test]
    fn consecutive_errors_is_deprecated() {
        let yaml = "host: a.com\ntrafficPolicy: {outlierDetection: {consecutiveErrors: 5}}";
        assert!(errors(yaml).is_empty());
        assert_eq!(
            warnings(yaml),
            [
                "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead"
            ]
        );
    }

    // Load balancer.
    #[test_case("simple: ROUND_ROBIN", &[]; "simple")]
    #[test_case("simple: RANDOM\nconsistentHash: {useSourceIp: true}", &["only one of simple, consistentHash or backendUtilization may be set, found simple and consistentHash"]; "oneof")]
    #[test_case("simple: RANDOM\nbackendUtilization: {}", &["only one of simple, consistentHash or backendUtilization may be set, found simple and backendUtilization"]; "backend utilization oneof")]
    #[test_case("backendUtilization: {weightUpdatePeriod: 0s, weightExpirationPeriod: 3m, weightStabilizationPeriod: 10s, errorUtilizationPenaltyPercent: 150, metricNamesForComputingUtilization: [named_metrics.foo]}", &[]; "backend utilization")]
    #[test_case("backendUtilization: {weightUpdatePeriod: soon}", &["invalid duration \"soon\" (expected e.g. 10s, 1.5s, 100ms, 1h30m)"]; "backend utilization bad period")]
    #[test_case("localityLbSetting: {enabled: true}\nzoneAwareLbSetting: {enabled: true}", &["only one of localityLbSetting and zoneAwareLbSetting can be set"]; "locality and zone aware")]
    #[test_case("consistentHash: {httpHeaderName: x, useSourceIp: true}", &["only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName may be set, found httpHeaderName and useSourceIp"]; "hash key oneof")]
    // Istio requires a cookie name, not a ttl; attribute names must be set and distinct.
    #[test_case("consistentHash: {httpCookie: {}}", &["name required for HttpCookie"]; "cookie")]
    #[test_case("consistentHash: {httpCookie: {name: c, attributes: [{name: SameSite, value: Strict}, {value: x}, {name: SameSite}]}}", &["cookie attribute name cannot be empty", "duplicate cookie attribute name: SameSite"]; "cookie attributes")]
    // Envoy's primality test, which Istio copies, counts 1 as prime.
    #[test_case("consistentHash: {httpHeaderName: x, maglev: {tableSize: 1}}", &[]; "maglev one")]
    #[test_case("consistentHash: {httpCookie: {name: a, ttl: 10s}}", &[]; "good cookie")]
    #[test_case("consistentHash: {useSourceIp: true, maglev: {tableSize: 65536}}", &["tableSize must be a prime number for maglev"]; "maglev not prime")]
    #[test_case("consistentHash: {useSourceIp: true, maglev: {}}", &["tableSize must be set for maglev", "tableSize must be a prime number for maglev"]; "maglev unset")]
    #[test_case("consistentHash: {useSourceIp: true, maglev: {tableSize: 5000011}}", &["tableSize must be less than 5000011 for maglev"]; "maglev too big")]
    #[test_case("consistentHash: {useSourceIp: true, minimumRingSize: 10, ringHash: {minimumRingSize: 10}}", &["only one of MinimumRingSize or Maglev/Ringhash can be specified"]; "ring size twice")]
    fn load_balancer(lb: &str, want: &[&str]) {
        let lb = lb.replace('\n', "\n    ");
        assert_eq!(
            errors(&format!("host: a.com\ntrafficPolicy:\n  loadBalancer:\n    {lb}\n")),
            want
        );
    }

    #[test]
    fn minimum_ring_size_is_deprecated() {
        assert_eq!(
            warnings(
                "host: a.com\ntrafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 10}}}"
            ),
            ["consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead"]
        );
    }

    // Locality load balancing.
    #[test_case("failover: [{from: a, to: b}]\n    distribute: [{from: a, to: {b: 100}}]", &["can not simultaneously specify 'distribute' and 'failover'"]; "both")]
    #[test_case("failover: [{from: a, to: a}]", &["locality lb failover settings must specify different regions"]; "same region")]
    #[test_case("failover: [{from: a/b, to: c}]", &["locality lb failover only specify region"]; "zone")]
    #[test_case("failover: [{from: '*', to: c}]", &["locality lb failover region should not contain '*' wildcard"]; "wildcard")]
    #[test_case("distribute: [{from: 'us/*', to: {'us/z1/*': 80, 'us/z2/*': 20}}]", &[]; "good distribute")]
    #[test_case("distribute: [{from: a, to: {b: 0, c: 100}}]", &["locality weight must be in range [1, 100]"]; "zero weight")]
    #[test_case("distribute: [{from: a, to: {b: 50, c: 40}}]", &["total locality weight 90 != 100"]; "total")]
    #[test_case("distribute: [{from: 'a/*/b', to: {b: 100}}]", &["locality a/*/b wildcard '*' number can not exceed 1 and must be in the end"]; "inner star")]
    #[test_case("distribute: [{from: 'a//b', to: {b: 100}}]", &["locality a//b must not contain empty region/zone/subzone info"]; "empty zone")]
    #[test_case("distribute: [{from: 'a/*', to: {b: 100}}, {from: a/b, to: {b: 100}}]", &["locality a/b overlap with previous specified ones"]; "overlap")]
    // Istio's ValidateLocalityLbSetting: only region, zone and subzone clash with failover.
    #[test_case("failover: [{from: a, to: b}]\n    failoverPriority: [topology.istio.io/network]", &[]; "priority")]
    #[test_case("failover: [{from: a, to: a}]\n    failoverPriority: [topology.kubernetes.io/zone]", &["can not simultaneously set 'failover' and topology label 'topology.kubernetes.io/zone' in 'failover_priority'"]; "priority zone stops")]
    #[test_case("distribute: [{from: a, to: {b: 100}}]\n    failoverPriority: [topology.kubernetes.io/region]", &[]; "distribute with priority")]
    // The subzone is the rest of the name, slashes and all; the overlap check depends on order.
    #[test_case("distribute: [{from: 'a/b/c/d', to: {b: 100}}]", &[]; "subzone with slash")]
    #[test_case("distribute: [{from: a/b, to: {b: 100}}, {from: 'a/*', to: {b: 100}}]", &[]; "narrower first")]
    #[test_case("failoverPriority: [topology.istio.io/network]", &[]; "priority alone")]
    fn locality(settings: &str, want: &[&str]) {
        let yaml = format!(
            "host: a.com\ntrafficPolicy:\n  outlierDetection: {{consecutive5xxErrors: 1}}\n  loadBalancer:\n   localityLbSetting:\n    {settings}\n"
        );
        assert_eq!(errors(&yaml), want);
    }

    // Zone-aware load balancing (Istio's ValidateZoneAwareLbSetting).
    #[test_case("enabled: true\n    minClusterSize: 3\n    failover: [{from: us-east, to: eu-west}]\n    failoverPriority: [topology.istio.io/network]", &[]; "good")]
    #[test_case("failover: [{from: a, to: a}]", &["zone aware lb failover settings must specify different regions"]; "same region")]
    #[test_case("failover: [{from: a/b, to: c}]", &["zone aware lb failover only specifies region; zone and subzone failover are handled automatically"]; "zone")]
    #[test_case("failover: [{from: '*', to: c}]", &["zone aware lb failover region should not contain '*' wildcard"]; "wildcard")]
    #[test_case("failoverPriority: [topology.kubernetes.io/zone, topology.istio.io/network]", &["'failover_priority' for zone aware lb must not use topology label 'topology.kubernetes.io/zone'; region- and zone-level routing are handled automatically"]; "topology label")]
    #[test_case("minClusterSize: 0", &["minClusterSize must be at least 1"]; "min cluster size")]
    fn zone_aware(settings: &str, want: &[&str]) {
        let yaml = format!(
            "host: a.com\ntrafficPolicy:\n  outlierDetection: {{consecutive5xxErrors: 1}}\n  loadBalancer:\n   zoneAwareLbSetting:\n    {settings}\n"
        );
        assert_eq!(errors(&yaml), want);
    }

    #[test]
    fn zone_aware_failover_without_outlier_detection_warns() {
        let yaml = "host: a.com\ntrafficPolicy: {loadBalancer: {zoneAwareLbSetting: {failoverPriority: [topology.istio.io/network]}}}";
        assert!(errors(yaml).is_empty());
        assert_eq!(
            warnings(yaml),
            ["outlier detection policy must be provided for failover"]
        );
    }

    #[test]
    fn failover_without_outlier_detection_warns() {
        let yaml = "host: a.com\ntrafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: a, to: b}]}}}";
        assert!(errors(yaml).is_empty());
        assert_eq!(
            warnings(yaml),
            ["outlier detection policy must be provided for failover"]
        );
    }

    // A25: client TLS.
    #[test_case("mode: MUTUAL\nclientCertificate: c\nprivateKey: k", &[]; "mutual with files")]
    #[test_case("mode: MUTUAL\ncredentialName: s", &[]; "mutual with credential")]
    #[test_case("mode: MUTUAL", &["client certificate required for mutual tls", "private key required for mutual tls"]; "mutual without")]
    #[test_case("mode: SIMPLE\ncredentialName: s\ncaCertificates: ca", &["cannot specify client certificates or CA certificate or CA CRL If credentialName is set"]; "credential plus files")]
    #[test_case("mode: SIMPLE\ninsecureSkipVerify: true\nsubjectAltNames: [a]", &["cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true"]; "skip verify simple")]
    #[test_case("mode: MUTUAL\ninsecureSkipVerify: true\ncaCertificates: ca\nclientCertificate: c\nprivateKey: k", &["cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true"]; "skip verify mutual")]
    #[test_case("mode: SIMPLE\ninsecureSkipVerify: true", &[]; "skip verify alone")]
    #[test_case("mode: ISTIO_MUTUAL\nclientCertificate: c", &[]; "istio mutual unchecked")]
    #[test_case("mode: DISABLE", &[]; "disable")]
    // ValidateTLS: a configmap:// credential names the rule's own namespace (here `ns`).
    #[test_case("mode: SIMPLE\ncredentialName: configmap://ns/ca", &[]; "configmap own namespace")]
    #[test_case("mode: SIMPLE\ncredentialName: configmap://other/ca", &["invalid configmap:// credentialName: namespace must match the configuration namespace \"ns\""]; "configmap other namespace")]
    #[test_case("mode: SIMPLE\ncredentialName: configmap://ca", &["invalid configmap:// credentialName: invalid resource name \"configmap://ca\". Expected namespace and name"]; "configmap without namespace")]
    fn client_tls(tls: &str, want: &[&str]) {
        let tls = tls.replace('\n', "\n    ");
        assert_eq!(
            errors(&format!("host: a.com\ntrafficPolicy:\n  tls:\n    {tls}\n")),
            want
        );
    }

    // Ours: SIMPLE ignores clientCertificate and privateKey (Istio sends no client
    // certificate), a warning on each field that is set; MUTUAL and ISTIO_MUTUAL say nothing.
    #[test_case("mode: SIMPLE\nclientCertificate: /c.pem\nprivateKey: /k.pem", &["clientCertificate", "privateKey"]; "simple with both")]
    #[test_case("mode: SIMPLE\nprivateKey: /k.pem", &["privateKey"]; "simple with key")]
    #[test_case("mode: SIMPLE\ncaCertificates: /ca.pem", &[]; "simple with ca only")]
    #[test_case("mode: MUTUAL\nclientCertificate: /c.pem\nprivateKey: /k.pem", &[]; "mutual")]
    #[test_case("mode: ISTIO_MUTUAL\nclientCertificate: /c.pem", &[]; "istio mutual")]
    fn client_certificate_in_simple_mode_warns(tls: &str, fields: &[&str]) {
        let tls = tls.replace('\n', "\n      ");
        let r = run(&format!(
            "host: a.com\ntrafficPolicy:\n  portLevelSettings:\n  - port: {{number: 443}}\n    tls:\n      {tls}\n"
        ));
        let got: Vec<_> = r
            .problems
            .iter()
            .map(|p| (p.severity, p.path.clone(), p.message.clone()))
            .collect();
        let want: Vec<_> = fields
            .iter()
            .map(|f| {
                (
                    super::super::Severity::Warning,
                    format!("spec.trafficPolicy.portLevelSettings[0].tls.{f}"),
                    format!(
                        "{f} is ignored in SIMPLE mode: no client certificate is sent; use mode MUTUAL to present one"
                    ),
                )
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn client_certificate_with_credential_name_in_simple_mode_is_the_error_alone() {
        let r = run("host: a.com\ntrafficPolicy: {tls: {mode: SIMPLE, credentialName: c, clientCertificate: /c.pem}}");
        assert_eq!(
            r.messages(),
            ["cannot specify client certificates or CA certificate or CA CRL If credentialName is set"]
        );
    }

    // A26: subsets.
    #[test_case("[{name: v1, labels: {version: v1}}, {name: v2}]", &[]; "good")]
    #[test_case("[{name: v1}, {name: v1}]", &["duplicate subset names: v1"]; "duplicate")]
    #[test_case("[{labels: {a: b}}]", &["subset name cannot be empty"]; "empty name")]
    #[test_case("[{name: v1.0}]", &["subset name is invalid: v1.0"]; "dotted name")]
    #[test_case("[{name: v1, labels: {'a b': c}}]", &["invalid tag key: \"a b\""]; "bad label key")]
    #[test_case("[{name: v1, labels: {a: 'b c'}}]", &["invalid tag value: \"b c\""]; "bad label value")]
    fn subsets(subsets: &str, want: &[&str]) {
        assert_eq!(errors(&format!("host: a.com\nsubsets: {subsets}\n")), want);
    }

    #[test]
    fn subset_paths() {
        let r = run("host: a.com\nsubsets: [{name: v1}, {name: v1}]");
        assert_eq!(r.problems[0].path, "spec.subsets[1].name");
    }

    // A27: exportTo and workload selector.
    #[test_case("exportTo: ['*']", &[]; "public")]
    #[test_case("exportTo: ['~']", &["exportTo ~ (none) is not allowed for Istio configuration objects"]; "none")]
    // Istio reads `.` as the namespace, and names the second of the two it meets.
    #[test_case("exportTo: ['.', ns]", &["duplicate entries in exportTo for entry ns"]; "dup dot")]
    #[test_case("exportTo: [ns, '.']", &["duplicate entries in exportTo: . and current namespace ns"]; "dot dup")]
    #[test_case("workloadSelector: {matchLabels: {app: a}}\nexportTo: ['.']", &[]; "selector own ns")]
    #[test_case("workloadSelector: {matchLabels: {app: a}}\nexportTo: [ns]", &[]; "selector own ns by name")]
    #[test_case("workloadSelector: {matchLabels: {app: a}}\nexportTo: ['*']", &["destination rule with workload selector cannot have exportTo beyond current namespace"]; "selector public")]
    #[test_case("workloadSelector: {matchLabels: {app: a}}\nexportTo: [other]", &["destination rule with workload selector cannot have exportTo beyond current namespace"]; "selector other")]
    #[test_case("workloadSelector: {matchLabels: {app: a}}\nexportTo: ['.', other]", &["destination rule with workload selector cannot have multiple entries in exportTo"]; "selector multiple")]
    #[test_case("workloadSelector: {matchLabels: {'a*': b}}", &["wildcard is not supported in selector: \"a*=b\""]; "selector wildcard")]
    #[test_case("workloadSelector: {matchLabels: {'': b}}", &["empty key is not supported in selector: \"=b\""]; "selector empty key")]
    fn export_to_and_selector(extra: &str, want: &[&str]) {
        assert_eq!(errors(&format!("host: a.com\n{extra}\n")), want);
    }

    #[test]
    fn selector_without_labels_warns() {
        let r = run("host: a.com\nworkloadSelector: {}");
        assert_eq!(r.messages(), ["workload selector specified without labels"]);
        assert_eq!(r.problems[0].severity, super::super::Severity::Warning);
        assert_eq!(r.problems[0].path, "spec.workloadSelector");
    }

    #[test]
    fn paths_are_full() {
        let r = run(
            "host: a.com\ntrafficPolicy: {portLevelSettings: [{port: {number: 80}, connectionPool: {tcp: {maxConnections: -1}}}]}",
        );
        assert_eq!(
            r.problems[0].path,
            "spec.trafficPolicy.portLevelSettings[0].connectionPool.tcp.maxConnections"
        );
        let r = run("host: a.com\ntrafficPolicy: {tls: {mode: MUTUAL, privateKey: k}}");
        assert_eq!(r.problems[0].path, "spec.trafficPolicy.tls.clientCertificate");
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(is_prime(2));
        assert!(is_prime(1));
        assert!(!is_prime(0));
        assert!(!is_prime(65536));
    }
}
