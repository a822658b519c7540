//! The admin server, in the spirit of Envoy's (port 15000): `/ready`, `/server_info`,
//! `/config_dump`, `/clusters` (text, or `?format=json`), `/stats` and `/stats/prometheus`
//! (Istio's standard metrics and the proxy's own, in the Prometheus text format). It reads the
//! proxy's current snapshot and counters; it never blocks the data path.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use meshentry_proxy::Acceptor;
use meshentry_proxy::Shared;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod build_info;

/// What the admin server allows each client. The admin port must never be able to starve the
/// data plane: its connections are capped (the cap is part of the file descriptor reserve
/// that `--max-connections` leaves), a client must send its request head within
/// `header_timeout` (which also closes connections idle between requests: admin clients poll
/// seconds apart and reconnect cheaply), and no connection lives longer than `max_lifetime`
/// (a client that never reads its response cannot hold a slot forever).
#[derive(Clone, Copy, Debug)]
pub struct AdminLimits {
    pub max_connections: u64,
    pub header_timeout: Duration,
    pub max_lifetime: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: Duration::from_secs(10),
            max_lifetime: Duration::from_secs(60),
        }
    }
}

/// The admin connection cap unless the fd limit calls for less (`--admin-max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: u64 = 64;

/// Serves admin requests until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    limits: AdminLimits,
) {
    let started = Instant::now();
    let mut acceptor = Acceptor::new(listener);
    loop {
        tokio::select! {
            (stream, _) = acceptor.accept(&shared.stats) => {
                let Some(slot) = AdminSlot::take(&shared, limits.max_connections) else {
                    // Closed at once: holding it would spend a descriptor the data plane may need.
                    drop(stream);
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&req, &shared, started)) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(limits.header_timeout)
                        .serve_connection(TokioIo::new(stream), svc);
                    let _ = tokio::time::timeout(limits.max_lifetime, conn).await;
                    drop(slot);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// One of the admin server's connection slots, freed on drop.
struct AdminSlot(Arc<Shared>);

impl AdminSlot {
    fn take(shared: &Arc<Shared>, max: u64) -> Option<Self> {
        let stats = &shared.stats;
        if stats.admin_cx_active.fetch_add(1, Ordering::Relaxed) >= max {
            stats.admin_cx_active.fetch_sub(1, Ordering::Relaxed);
            let n = stats.admin_cx_overflow.fetch_add(1, Ordering::Relaxed);
            // The first overflow and every 1000th: a flood must not flood the log too.
            if n.is_multiple_of(1000) {
                tracing::warn!(
                    admin_max_connections = max,
                    overflows = n + 1,
                    "admin connection limit reached: new admin connections are closed at once"
                );
            }
            return None;
        }
        Some(Self(shared.clone()))
    }
}

impl Drop for AdminSlot {
    fn drop(&mut self) {
        self.0.stats.admin_cx_active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn handle(req: &Request<Incoming>, shared: &Shared, started: Instant) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    let path = req.uri().path();
    let resp = route(path, req.uri().query().unwrap_or(""), shared, started);
    // These documents grow with the configuration (at 10,000 ServiceEntries /config_dump
    // builds about 200 MB on the way); what they built is free now but still resident.
    if matches!(path, "/config_dump" | "/clusters" | "/stats" | "/stats/prometheus") {
        let took = meshentry_proxy::memory::trim();
        tracing::debug!(
            path,
            took_us = took.as_micros() as u64,
            "free heap returned after an admin document"
        );
    }
    resp
}

fn route(path: &str, query: &str, shared: &Shared, started: Instant) -> Response<Full<Bytes>> {
    match path {
        // Envoy's answer while draining, so that load balancers stop sending new work.
        "/ready" if shared.lifecycle.is_draining() => text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n".into()),
        "/ready" if !synced(shared) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT SYNCED: waiting for the first full sync of the cluster\n".into(),
        ),
        "/ready" => text(StatusCode::OK, "LIVE\n".into()),
        // Envoy's ServerInfo (`version`, `state`), so what it adds is in Envoy's snake_case too.
        "/server_info" => json_response(&json!({
            "version": build_info::VERSION,
            "build": build_info::json(),
            "state": if shared.lifecycle.is_draining() { "DRAINING" } else { "LIVE" },
            "uptime_seconds": started.elapsed().as_secs(),
            "generation": shared.snapshot.load().generation,
        })),
        "/config_dump" => config_dump(shared),
        "/clusters" if query.contains("format=json") => json_response(&clusters_json(shared)),
        "/clusters" => text(StatusCode::OK, clusters_text(shared)),
        "/stats" => text(StatusCode::OK, stats_text(shared)),
        "/stats/prometheus" => prometheus(shared),
        "/debug/ndsz" => json_response(&name_table(shared)),
        "/" => text(
            StatusCode::OK,
            "meshentry admin: /ready /server_info /config_dump /clusters[?format=json] /stats /stats/prometheus /debug/ndsz\n"
                .into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found; see /\n".into()),
    }
}

/// The DNS proxy's name table (`--dns`), as istiod's `/debug/ndsz` shows a proxy's: every name
/// answered locally with its addresses and where they come from; `null` without `--dns`.
fn name_table(shared: &Shared) -> Value {
    use meshentry_route::model::names::Origin;
    let snap = shared.snapshot.load();
    let Some(names) = &snap.names else {
        return Value::Null;
    };
    let table: serde_json::Map<String, Value> = names
        .names()
        .into_iter()
        .map(|(name, e)| {
            let ips: Vec<String> =
                e.v4.iter()
                    .map(|ip| ip.to_string())
                    .chain(e.v6.iter().map(|ip| ip.to_string()))
                    .collect();
            let origin = match e.origin {
                Origin::Addresses => "addresses",
                Origin::Allocated { by_istiod: true } => "allocated by istiod",
                Origin::Allocated { by_istiod: false } => "allocated by meshentry",
                Origin::Endpoints => "endpoints",
            };
            let v =
                json!({"ips": ips, "host": &*e.host, "namespace": &*e.namespace, "origin": origin, "alias": e.alias});
            (name, v)
        })
        .collect();
    json!({"search": names.search(), "table": table})
}

/// `/config_dump`. The registry part is most of it (tens of MB with 10,000 ServiceEntries), so
/// it is serialized straight from the registry: built as a `serde_json::Value` first, the
/// document took 14 times its own size at once (1.2 GB for an 89 MB answer), and the allocator
/// kept that memory after the answer was sent.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigDump<'a> {
    generation: u64,
    applied_at: u64,
    namespace: &'a str,
    outbound_traffic_policy: Value,
    registry: meshentry_registry::RegistryJson<'a>,
    routes: Value,
    outbound_ports: Value,
    clusters: Vec<Value>,
    warnings: &'a [String],
    reloads: Value,
    last_rejected: Value,
    listeners: Value,
    source: Value,
    skipped: Value,
}

fn config_dump(shared: &Shared) -> Response<Full<Bytes>> {
    let snap = shared.snapshot.load();
    let applied_at = snap
        .applied_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dump = ConfigDump {
        generation: snap.generation,
        applied_at,
        namespace: &snap.namespace,
        outbound_traffic_policy: json!({"mode": snap.policy.as_str(), "source": snap.policy_source}),
        registry: snap.registry.to_json(Some(&snap.namespace)),
        routes: routes(&snap),
        outbound_ports: outbound_ports(&snap),
        clusters: {
            let mut all = Vec::new();
            snap.each_cluster(|c| {
                all.push(json!({"name": c.name, "type": c.kind_name(), "lbPolicy": format!("{:?}", c.policy)}));
            });
            all
        },
        warnings: &snap.warnings,
        reloads: json!({
            "applied": shared.stats.config_reloads.load(Ordering::Relaxed),
            "rejected": shared.stats.config_reloads_rejected.load(Ordering::Relaxed),
        }),
        last_rejected: last_rejected(shared),
        listeners: listeners(shared),
        source: source(shared),
        skipped: skipped(shared),
    };
    json_bytes(serde_json::to_vec_pretty(&dump))
}

/// Whether the live source (if any) has been read whole once.
fn synced(shared: &Shared) -> bool {
    shared.lifecycle.source.load().as_ref().is_none_or(|s| s.synced)
}

fn seconds(t: Option<std::time::SystemTime>) -> Value {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(Value::Null, |d| json!(d.as_secs()))
}

/// The live source: whether the configuration in force is current or stale, and why.
fn source(shared: &Shared) -> Value {
    let Some(s) = shared.lifecycle.source.load_full() else {
        return json!({"kind": "files"});
    };
    json!({
        "kind": s.kind,
        "server": s.server,
        "state": match (s.synced, s.connected) {
            (false, _) => "SYNCING",
            (true, true) => "CURRENT",
            (true, false) => "STALE",
        },
        "synced": s.synced,
        "connected": s.connected,
        "error": s.error,
        "failingSince": seconds(s.failing_since),
        "syncedAt": seconds(s.synced_at),
        "failures": s.failures,
        "relists": s.relists,
        "gone": s.gone,
        "objects": s.objects,
        "version": s.version,
    })
}

/// The live source's objects left out as invalid, each with its errors.
fn skipped(shared: &Shared) -> Value {
    let skipped = shared.lifecycle.skipped.load();
    let mut by_object: Vec<(&str, Vec<String>)> = Vec::new();
    for f in skipped.iter() {
        match by_object.last_mut() {
            Some((object, errors)) if *object == f.file => errors.push(f.to_string()),
            _ => by_object.push((&f.file, vec![f.to_string()])),
        }
    }
    Value::Array(
        by_object
            .into_iter()
            .map(|(object, errors)| json!({"object": object, "errors": errors}))
            .collect(),
    )
}

/// How many objects the configuration in force left out.
fn skipped_objects(shared: &Shared) -> u64 {
    let skipped = shared.lifecycle.skipped.load();
    let mut objects: Vec<&str> = skipped.iter().map(|f| f.file.as_str()).collect();
    objects.dedup();
    objects.len() as u64
}

fn source_stat(shared: &Shared, read: fn(&meshentry_proxy::SourceState) -> u64) -> u64 {
    shared.lifecycle.source.load().as_ref().map_or(0, |s| read(s))
}

/// The last configuration a reload refused: when, why, and its errors both as `meshentry
/// validate` prints them and as fields.
fn last_rejected(shared: &Shared) -> Value {
    let Some(r) = shared.lifecycle.last_rejected.load_full() else {
        return Value::Null;
    };
    let at = r.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    json!({
        "at": at,
        "generationKept": r.kept,
        "reason": r.reason,
        "errors": r.findings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "findings": serde_json::to_value(&r.findings).unwrap_or(Value::Null),
    })
}

/// The listeners the proxy runs, and the ones it could not open.
fn listeners(shared: &Shared) -> Value {
    Value::Array(
        shared
            .lifecycle
            .listeners
            .load()
            .iter()
            .map(|l| {
                let mut v = json!({"kind": l.kind, "address": l.address.to_string(), "state": "open"});
                if let Some(e) = &l.error {
                    v["state"] = json!("error");
                    v["error"] = json!(e);
                }
                v
            })
            .collect(),
    )
}

/// What the transparent listener finds on each port: which of Istio's filter chains exist on
/// `0.0.0.0:<port>` (HTTP route table, SNI chains, a catch-all TCP service), and so whether a
/// connection's first bytes are read before it is routed. Service addresses (VIPs) are in
/// `registry`.
fn outbound_ports(snap: &meshentry_route::model::snapshot::Snapshot) -> Value {
    Value::Array(
        snap.ports()
            .into_iter()
            .map(|(port, info)| {
                json!({
                    "port": port,
                    "http": info.http,
                    "sni": info.sni,
                    "tcpCatchAll": info.tcp_wild,
                    "detection": info.http || info.sni || !info.tcp_declared,
                })
            })
            .collect(),
    )
}

/// Istio's route tables as this proxy applies them: per port, each service's domains (its
/// host and addresses) and the cluster they route to, in lookup order (exact hosts, then
/// wildcards).
fn routes(snap: &meshentry_route::model::snapshot::Snapshot) -> Value {
    let mut by_port: std::collections::BTreeMap<u32, Vec<Value>> = std::collections::BTreeMap::new();
    for service in snap.view().services() {
        for port in &service.ports {
            // Named, not built: listing the routes must not build every cluster.
            if !snap.has_cluster(service, port.number) {
                continue;
            }
            let cluster = meshentry_route::model::cluster::name(port.number, "", &service.host);
            let mut domains = vec![service.host.to_string()];
            domains.extend(service.addresses.iter().map(|a| a.text.to_string()));
            let mut vhost = json!({
                "domains": domains,
                "protocol": port.protocol.as_str(),
                "cluster": cluster,
            });
            if let Some(routes) = snap.routes.http_of(service, port.number) {
                vhost["virtualService"] = json!(routes.vs);
                vhost["routes"] = vs_routes(routes);
            }
            by_port.entry(port.number).or_default().push(vhost);
        }
    }
    for (host, routes) in snap.routes.http_by_name() {
        by_port.entry(80).or_default().push(json!({
            "domains": [host],
            "virtualService": routes.vs,
            "routes": vs_routes(routes),
        }));
    }
    for vhosts in by_port.values_mut() {
        vhosts.sort_by_key(|v| v["domains"][0].as_str().is_some_and(|h| h.starts_with('*')));
    }
    Value::Array(
        by_port
            .into_iter()
            .map(|(port, vhosts)| json!({"port": port, "virtualHosts": vhosts}))
            .collect(),
    )
}

/// The rules of a VirtualService's virtual host, in order, as `/config_dump` shows them.
fn vs_routes(routes: &meshentry_route::model::vs::HttpRoutes) -> Value {
    use meshentry_route::model::vs::HttpAction;
    let rules: Vec<Value> = routes
        .rules
        .iter()
        .map(|rule| {
            let mut v = json!({"name": rule.name, "match": rule.match_text});
            match &rule.action {
                HttpAction::Route { dests, .. } => {
                    v["route"] = dests
                        .iter()
                        .map(|d| json!({"cluster": d.target.name(), "weight": d.weight}))
                        .collect();
                }
                HttpAction::Redirect(r) => v["redirect"] = json!({"status": r.status}),
                HttpAction::Direct { status, .. } => v["directResponse"] = json!({"status": status}),
            }
            if let Some(t) = rule.timeout {
                v["timeout"] = json!(format!("{t:?}"));
            }
            v["retries"] = json!({"attempts": rule.retry.attempts});
            if rule.fault.is_some() {
                v["fault"] = json!(true);
            }
            if !rule.mirrors.is_empty() {
                v["mirror"] = rule.mirrors.iter().map(|m| json!(m.target.name())).collect();
            }
            v
        })
        .collect();
    Value::Array(rules)
}

/// meshentry's own document (not Envoy's `cluster_statuses`), so camelCase like the others;
/// the text form is Envoy's.
fn clusters_json(shared: &Shared) -> Value {
    let snap = shared.snapshot.load();
    let mut clusters: Vec<Value> = Vec::new();
    snap.each_cluster(|c| {
        let hosts: Vec<Value> = snap
            .known_hosts(c)
            .map(|set| {
                set.hosts
                    .iter()
                    .map(|h| {
                        let mut v = json!({"address": h.addr.to_string(), "weight": h.load.weight});
                        for (name, _, value) in host_counters(h) {
                            v[name] = json!(value);
                        }
                        v
                    })
                    .collect()
            })
            .unwrap_or_default();
        clusters.push(json!({
            "name": c.name,
            "type": c.kind_name(),
            "requests": c.stats.requests.load(Ordering::Relaxed),
            "connectFailures": c.stats.connect_failures.load(Ordering::Relaxed),
            "dnsFailures": c.stats.dns_failures.load(Ordering::Relaxed),
            "tlsFailures": c.stats.tls_failures.load(Ordering::Relaxed),
            "hosts": hosts,
        }));
    });
    json!({ "clusters": clusters })
}

/// A host's counters as `(JSON name, Envoy's /clusters name, value)`, so both forms of
/// `/clusters` report the same things.
fn host_counters(h: &meshentry_route::model::cluster::Host) -> [(&'static str, &'static str, u64); 4] {
    [
        ("active", "rq_active", u64::from(h.load.active.load(Ordering::Relaxed))),
        ("requests", "rq_total", h.stats.requests.load(Ordering::Relaxed)),
        ("connections", "cx_total", h.stats.connections.load(Ordering::Relaxed)),
        (
            "connectFailures",
            "cx_connect_fail",
            h.stats.connect_failures.load(Ordering::Relaxed),
        ),
    ]
}

/// Envoy's text format: `cluster::host:port::stat::value`.
fn clusters_text(shared: &Shared) -> String {
    let snap = shared.snapshot.load();
    let mut out = String::new();
    snap.each_cluster(|c| {
        let _ = writeln!(out, "{}::type::{}", c.name, c.kind_name());
        if let Some(set) = snap.known_hosts(c) {
            for h in set.hosts.iter() {
                let a = &h.addr;
                let _ = writeln!(out, "{}::{a}::weight::{}", c.name, h.load.weight);
                for (_, envoy_name, value) in host_counters(h) {
                    let _ = writeln!(out, "{}::{a}::{envoy_name}::{value}", c.name);
                }
            }
        }
    });
    out
}

/// One of the proxy's own counters: its name, what it counts, and how to read it.
type Stat = (&'static str, &'static str, fn(&Shared) -> u64);

/// The proxy's own counters, for both `/stats` (`meshentry.NAME: value`) and
/// `/stats/prometheus` (`meshentry_NAME`; a counter when NAME ends in `_total`, else a gauge).
/// Adding a counter is adding a line here.
const STATS: &[Stat] = &[
    ("downstream_cx_total", "Downstream connections accepted.", |s| {
        s.stats.downstream_connections.load(Ordering::Relaxed)
    }),
    ("downstream_cx_active", "Downstream connections open now.", |s| {
        s.stats.downstream_active.load(Ordering::Relaxed)
    }),
    ("http_requests_total", "HTTP requests received.", |s| {
        s.stats.http_requests.load(Ordering::Relaxed)
    }),
    (
        "tunnels_total",
        "Byte relays started (CONNECT tunnels, TCP and TLS relays).",
        |s| s.stats.tunnels.load(Ordering::Relaxed),
    ),
    (
        "outbound_blocked_total",
        "Requests and connections REGISTRY_ONLY refused.",
        |s| s.stats.blocked.load(Ordering::Relaxed),
    ),
    (
        "outbound_passthrough_total",
        "Requests and connections passed through (ALLOW_ANY).",
        |s| s.stats.passthrough.load(Ordering::Relaxed),
    ),
    (
        "tunnel_sni_mismatch_total",
        "Tunnels refused: the SNI differed from the CONNECT target.",
        |s| s.stats.sni_mismatch.load(Ordering::Relaxed),
    ),
    (
        "tunnel_bad_traffic_total",
        "Tunnels refused: not what the port declares.",
        |s| s.stats.bad_tunnel_traffic.load(Ordering::Relaxed),
    ),
    (
        "upstream_connect_errors_total",
        "Upstream connection attempts that failed.",
        |s| s.stats.upstream_connect_errors.load(Ordering::Relaxed),
    ),
    (
        "upstream_errors_total",
        "Requests and connections that failed upstream.",
        |s| s.stats.upstream_errors.load(Ordering::Relaxed),
    ),
    (
        "upstream_tls_errors_total",
        "TLS this proxy originated that failed.",
        |s| s.stats.upstream_tls_errors.load(Ordering::Relaxed),
    ),
    ("bad_requests_total", "Requests refused as malformed or looping.", |s| {
        s.stats.bad_requests.load(Ordering::Relaxed)
    }),
    (
        "downstream_tls_errors_total",
        "Gateway TLS handshakes with clients that failed.",
        |s| s.stats.downstream_tls_errors.load(Ordering::Relaxed),
    ),
    (
        "gateway_no_server_total",
        "Gateway TLS connections no server on the port takes (by SNI), closed.",
        |s| s.stats.gateway_no_server.load(Ordering::Relaxed),
    ),
    (
        "upstream_retries_total",
        "Requests a VirtualService retry policy sent again.",
        |s| s.stats.upstream_retries.load(Ordering::Relaxed),
    ),
    (
        "outbound_cx_total",
        "Connections accepted on the transparent listener.",
        |s| s.stats.outbound_connections.load(Ordering::Relaxed),
    ),
    (
        "outbound_loop_refused_total",
        "Transparent connections addressed to the proxy itself.",
        |s| s.stats.outbound_loops.load(Ordering::Relaxed),
    ),
    ("dns_queries_total", "DNS lookups sent.", |s| {
        s.dns.stats.queries.load(Ordering::Relaxed)
    }),
    ("dns_failures_total", "DNS lookups that failed.", |s| {
        s.dns.stats.failures.load(Ordering::Relaxed)
    }),
    (
        "config_generation",
        "The generation of the configuration in force.",
        |s| s.snapshot.load().generation,
    ),
    ("access_log_lines_total", "Access log lines written.", |s| {
        s.telemetry.access_log().map_or(0, |l| l.written())
    }),
    (
        "access_log_dropped_total",
        "Access log lines dropped because the sink could not keep up.",
        |s| s.telemetry.access_log().map_or(0, |l| l.dropped()),
    ),
    ("config_reloads_total", "Configuration reloads applied.", |s| {
        s.stats.config_reloads.load(Ordering::Relaxed)
    }),
    (
        "config_reloads_rejected_total",
        "Configuration reloads refused as invalid; the previous configuration stayed in force.",
        |s| s.stats.config_reloads_rejected.load(Ordering::Relaxed),
    ),
    (
        "config_source_connected",
        "1 while the live configuration source (--kubernetes) is connected and synced, or there is none; 0 while the proxy serves the last configuration it read.",
        |s| {
            u64::from(
                s.lifecycle
                    .source
                    .load()
                    .as_ref()
                    .is_none_or(|s| s.synced && s.connected),
            )
        },
    ),
    (
        "config_source_stale_seconds",
        "How long the live configuration source has been unreachable (0 while connected).",
        |s| {
            source_stat(s, |s| match (s.connected, s.failing_since) {
                (false, Some(t)) => t.elapsed().map_or(0, |d| d.as_secs()),
                _ => 0,
            })
        },
    ),
    (
        "config_source_failures_total",
        "Failed attempts to list, watch or discover the live configuration source.",
        |s| source_stat(s, |s| s.failures),
    ),
    (
        "config_source_relists_total",
        "Lists of a kind after its first: after a 410 Gone or an outage.",
        |s| source_stat(s, |s| s.relists),
    ),
    (
        "config_source_objects",
        "Objects read from the live configuration source.",
        |s| source_stat(s, |s| s.objects as u64),
    ),
    (
        "config_objects_skipped",
        "Objects from the live configuration source left out as invalid (listed on /config_dump).",
        skipped_objects,
    ),
    (
        "listener_errors_total",
        "Listeners a reload could not open (a Gateway server port that would not bind).",
        |s| s.stats.listener_errors.load(Ordering::Relaxed),
    ),
    (
        "downstream_tunnels_active",
        "CONNECT tunnels and relayed connections open now.",
        |s| s.lifecycle.tunnels_active.load(Ordering::Relaxed),
    ),
    // The limits (`meshentry proxy --max-connections` ...), by Envoy's names.
    (
        "downstream_cx_overflow",
        "Connections closed at once: --max-connections were open.",
        |s| s.stats.downstream_cx_overflow.load(Ordering::Relaxed),
    ),
    (
        "downstream_cx_idle_timeout",
        "Client HTTP connections closed after --idle-timeout without a request.",
        |s| s.stats.downstream_cx_idle_timeout.load(Ordering::Relaxed),
    ),
    (
        "tcp_idle_timeout",
        "Relayed connections and tunnels closed after --tcp-idle-timeout without a byte.",
        |s| s.stats.tcp_idle_timeout.load(Ordering::Relaxed),
    ),
    (
        "downstream_rq_header_timeout",
        "Clients too slow with a request head (--header-read-timeout).",
        |s| s.stats.downstream_rq_header_timeout.load(Ordering::Relaxed),
    ),
    (
        "downstream_rq_idle_timeout",
        "Requests ended: a request or response body went --stream-idle-timeout without a byte.",
        |s| s.stats.downstream_rq_idle_timeout.load(Ordering::Relaxed),
    ),
    (
        "downstream_rq_headers_too_large",
        "Requests refused 431: head over --max-request-headers-kb.",
        |s| s.stats.downstream_rq_headers_too_large.load(Ordering::Relaxed),
    ),
    (
        "downstream_rq_too_many_headers",
        "Requests refused 431: more than --max-headers-count fields.",
        |s| s.stats.downstream_rq_too_many_headers.load(Ordering::Relaxed),
    ),
    (
        "downstream_rq_rx_reset",
        "HTTP/2 streams the client reset (or abandoned) before their response started.",
        |s| s.stats.downstream_rq_rx_reset.load(Ordering::Relaxed),
    ),
    (
        "downstream_rq_reset_before_routing",
        "Of those, streams reset before the proxy acted on them: nothing was sent upstream.",
        |s| s.stats.downstream_rq_reset_before_routing.load(Ordering::Relaxed),
    ),
    (
        "downstream_rq_too_many_premature_resets",
        "HTTP/2 connections closed with GOAWAY ENHANCE_YOUR_CALM: too many streams reset (--http2-max-premature-resets).",
        |s| s.stats.downstream_rq_too_many_premature_resets.load(Ordering::Relaxed),
    ),
    (
        "upstream_cx_connect_timeout",
        "Upstream connects that took longer than --connect-timeout.",
        |s| s.stats.upstream_cx_connect_timeout.load(Ordering::Relaxed),
    ),
    (
        "upstream_rq_timeout",
        "Requests answered 504: no response within --response-timeout or a route timeout.",
        |s| s.stats.upstream_rq_timeout.load(Ordering::Relaxed),
    ),
    (
        "upstream_cx_idle_timeout",
        "Pooled upstream connections closed after --upstream-idle-timeout.",
        |s| s.stats.upstream_cx_idle_timeout.load(Ordering::Relaxed),
    ),
    (
        "accept_errors_total",
        "Failed accepts on any listener (out of file descriptors or memory: the listener backed off 10 ms to 1 s).",
        |s| s.stats.accept_errors.load(Ordering::Relaxed),
    ),
    ("admin_cx_active", "Admin connections open now.", |s| {
        s.stats.admin_cx_active.load(Ordering::Relaxed)
    }),
    (
        "admin_cx_overflow",
        "Admin connections closed at once: --admin-max-connections were open.",
        |s| s.stats.admin_cx_overflow.load(Ordering::Relaxed),
    ),
];

/// The entries of [`STATS`] that can go down as well as up.
const GAUGES: &[&str] = &[
    "downstream_cx_active",
    "config_generation",
    "downstream_tunnels_active",
    "admin_cx_active",
    "config_source_connected",
    "config_source_stale_seconds",
    "config_source_objects",
    "config_objects_skipped",
];

fn stats_text(shared: &Shared) -> String {
    let s = &shared.stats;
    let mut out = String::new();
    for (name, _, read) in STATS {
        let _ = writeln!(out, "meshentry.{name}: {}", read(shared));
    }
    for (name, value) in meshentry_proxy::DETECTED_NAMES.iter().zip(&s.detected) {
        let _ = writeln!(
            out,
            "meshentry.outbound_sniffed_{name}_total: {}",
            value.load(Ordering::Relaxed)
        );
    }
    out
}

/// `/stats/prometheus`: Istio's standard metrics, then the proxy's own (`meshentry_*`) and its
/// clusters' counters, in the Prometheus text format 0.0.4.
fn prometheus(shared: &Shared) -> Response<Full<Bytes>> {
    use meshentry_proxy::metrics::{family, push_label, sample};
    let mut out = String::with_capacity(64 * 1024);
    shared.telemetry.metrics.encode(&mut out);
    for (name, help, read) in STATS {
        // Prometheus counters end in `_total` (Envoy's own names, kept on /stats, do not).
        let (kind, full) = match (GAUGES.contains(name), name.ends_with("_total")) {
            (true, _) => ("gauge", format!("meshentry_{name}")),
            (false, true) => ("counter", format!("meshentry_{name}")),
            (false, false) => ("counter", format!("meshentry_{name}_total")),
        };
        family(&mut out, &full, kind, help);
        sample(&mut out, &full, "", None, &read(shared).to_string());
    }
    if shared.config.dns.is_some() {
        meshentry_proxy::dns_proxy_metrics(&mut out, &shared.dns_proxy);
    }
    let name = "meshentry_outbound_sniffed_total";
    family(
        &mut out,
        name,
        "counter",
        "What detection found on transparent connections.",
    );
    for (protocol, value) in meshentry_proxy::DETECTED_NAMES.iter().zip(&shared.stats.detected) {
        let mut labels = String::new();
        push_label(&mut labels, "protocol", protocol);
        sample(
            &mut out,
            name,
            &labels,
            None,
            &value.load(Ordering::Relaxed).to_string(),
        );
    }
    let snap = shared.snapshot.load();
    // Clusters no request has used are listed with zero counters, without being built.
    let clusters = snap.cluster_names();
    type ClusterStat = (
        &'static str,
        &'static str,
        fn(&meshentry_route::model::cluster::ClusterStats) -> u64,
    );
    let per_cluster: [ClusterStat; 4] = [
        (
            "meshentry_cluster_upstream_rq_total",
            "Requests and connections routed to the cluster (since the configuration in force was applied).",
            |c| c.requests.load(Ordering::Relaxed),
        ),
        (
            "meshentry_cluster_upstream_cx_connect_fail_total",
            "Connections to the cluster's endpoints that failed.",
            |c| c.connect_failures.load(Ordering::Relaxed),
        ),
        (
            "meshentry_cluster_dns_failures_total",
            "DNS lookups of the cluster's endpoints that failed.",
            |c| c.dns_failures.load(Ordering::Relaxed),
        ),
        (
            "meshentry_cluster_upstream_tls_failures_total",
            "TLS handshakes with the cluster's endpoints that failed.",
            |c| c.tls_failures.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, read) in per_cluster {
        family(&mut out, name, "counter", help);
        for (cluster, built) in &clusters {
            let mut labels = String::new();
            push_label(&mut labels, "cluster_name", cluster);
            let value = built.map_or(0, |c| read(&c.stats));
            sample(&mut out, name, &labels, None, &value.to_string());
        }
    }
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_response(v: &Value) -> Response<Full<Bytes>> {
    json_bytes(serde_json::to_vec_pretty(v))
}

fn json_bytes(body: serde_json::Result<Vec<u8>>) -> Response<Full<Bytes>> {
    let body = body.unwrap_or_else(|_| b"null".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshentry_proxy::{Dns, DnsConfig};
    use meshentry_route::base::config::ProxyConfig;
    use meshentry_route::model::snapshot::Snapshot;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn shared() -> Arc<Shared> {
        let config = ProxyConfig::default();
        // Never asked: the configuration is empty.
        let dns = Dns::new(DnsConfig {
            server: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9))),
            ..DnsConfig::default()
        })
        .unwrap();
        let snapshot = Snapshot::build(&[], &config, 1);
        Shared::new(meshentry_proxy::Live::new(snapshot, &dns), dns, config, Vec::new())
    }

    /// How long until the server closes `s` (reading whatever it sends first).
    async fn closed_after(s: &mut TcpStream) -> Duration {
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return started.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => panic!("not closed within 5 s"),
            }
        }
    }

    #[tokio::test]
    async fn connections_are_capped_and_idle_or_slow_ones_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = shared();
        let limits = AdminLimits {
            max_connections: 2,
            header_timeout: Duration::from_millis(300),
            max_lifetime: Duration::from_secs(2),
        };
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, shared.clone(), stopped, limits));

        // Two idle connections take both slots; a third is closed at once.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        let mut over = TcpStream::connect(addr).await.unwrap();
        assert!(closed_after(&mut over).await < Duration::from_millis(250));
        assert_eq!(shared.stats.admin_cx_overflow.load(Ordering::Relaxed), 1);

        // A head dribbled byte by byte does not keep its slot past the header timeout.
        let dribble = tokio::spawn(async move {
            for b in b"GET /stats HTTP/1.1\r\nHost: admin\r\n" {
                if slow.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            slow
        });
        let took = closed_after(&mut idle).await;
        assert!(took < Duration::from_secs(1), "idle connection open for {took:?}");
        let mut slow = dribble.await.unwrap();
        assert!(closed_after(&mut slow).await < Duration::from_secs(1));

        // The slots are free again: a request is answered.
        tokio::time::timeout(Duration::from_secs(2), async {
            while shared.stats.admin_cx_active.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn a_connection_lives_no_longer_than_its_lifetime() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = AdminLimits {
            max_connections: 2,
            header_timeout: Duration::from_secs(10),
            max_lifetime: Duration::from_millis(500),
        };
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, shared(), stopped, limits));
        // Keeps asking, never idle and never slow: only the lifetime ends it.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if s.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\n\r\n")
                .await
                .is_err()
            {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap()
            {
                Ok(0) | Err(_) => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
}
