//! The admin server, in the spirit of Envoy's (port 15000): `/ready`, `/server_info`,
//! `/config_dump`, `/clusters` (text, or `?format=json`) and `/stats`. It reads the proxy's
//! current snapshot and counters; it never blocks the data path.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshentry_proxy::server::Shared;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves admin requests until `shutdown` turns true.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let started = Instant::now();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&req, &shared, started)) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

fn handle(req: &Request<Incoming>, shared: &Shared, started: Instant) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    let query = req.uri().query().unwrap_or("");
    match req.uri().path() {
        // Envoy's answer while draining, so that load balancers stop sending new work.
        "/ready" if shared.lifecycle.is_draining() => text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n".into()),
        "/ready" => text(StatusCode::OK, "LIVE\n".into()),
        "/server_info" => json_response(&json!({
            "version": env!("CARGO_PKG_VERSION"),
            "state": if shared.lifecycle.is_draining() { "DRAINING" } else { "LIVE" },
            "uptime_seconds": started.elapsed().as_secs(),
            "generation": shared.snapshot.load().generation,
        })),
        "/config_dump" => json_response(&config_dump(shared)),
        "/clusters" if query.contains("format=json") => json_response(&clusters_json(shared)),
        "/clusters" => text(StatusCode::OK, clusters_text(shared)),
        "/stats" => text(StatusCode::OK, stats_text(shared)),
        "/" => text(
            StatusCode::OK,
            "meshentry admin: /ready /server_info /config_dump /clusters[?format=json] /stats\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found; see /\n".into()),
    }
}

fn config_dump(shared: &Shared) -> Value {
    let snap = shared.snapshot.load();
    let applied = snap
        .applied_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let registry = serde_json::to_value(snap.registry.to_json(Some(&snap.namespace))).unwrap_or(Value::Null);
    let clusters: Vec<Value> = snap
        .clusters()
        .iter()
        .map(|c| json!({"name": c.name, "type": c.kind_name(), "lbPolicy": format!("{:?}", c.policy)}))
        .collect();
    json!({
        "generation": snap.generation,
        "appliedAt": applied,
        "namespace": &*snap.namespace,
        "outboundTrafficPolicy": {"mode": snap.policy.as_str(), "source": snap.policy_source},
        "registry": registry,
        "routes": routes(&snap),
        "outboundPorts": outbound_ports(&snap),
        "clusters": clusters,
        "warnings": &snap.warnings,
        "reloads": {
            "applied": shared.stats.config_reloads.load(Ordering::Relaxed),
            "rejected": shared.stats.config_reloads_rejected.load(Ordering::Relaxed),
        },
        "lastRejected": last_rejected(shared),
        "listeners": listeners(shared),
    })
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
fn outbound_ports(snap: &meshentry_proxy::snapshot::Snapshot) -> Value {
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
fn routes(snap: &meshentry_proxy::snapshot::Snapshot) -> Value {
    let mut by_port: std::collections::BTreeMap<u32, Vec<Value>> = std::collections::BTreeMap::new();
    for service in snap.view().services() {
        for port in &service.ports {
            let Some(cluster) = snap.cluster(service, port.number) else {
                continue;
            };
            let mut domains = vec![service.host.to_string()];
            domains.extend(service.addresses.iter().map(|a| a.text.to_string()));
            let mut vhost = json!({
                "domains": domains,
                "protocol": port.protocol.as_str(),
                "cluster": cluster.name,
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
fn vs_routes(routes: &meshentry_proxy::vs::HttpRoutes) -> Value {
    use meshentry_proxy::vs::HttpAction;
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

fn clusters_json(shared: &Shared) -> Value {
    let snap = shared.snapshot.load();
    let clusters: Vec<Value> = snap
        .clusters()
        .iter()
        .map(|c| {
            let hosts: Vec<Value> = c
                .known_hosts()
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
            json!({
                "name": c.name,
                "type": c.kind_name(),
                "requests": c.stats.requests.load(Ordering::Relaxed),
                "connect_failures": c.stats.connect_failures.load(Ordering::Relaxed),
                "dns_failures": c.stats.dns_failures.load(Ordering::Relaxed),
                "tls_failures": c.stats.tls_failures.load(Ordering::Relaxed),
                "hosts": hosts,
            })
        })
        .collect();
    json!({ "clusters": clusters })
}

/// A host's counters as `(JSON name, Envoy's /clusters name, value)`, so both forms of
/// `/clusters` report the same things.
fn host_counters(h: &meshentry_proxy::cluster::Host) -> [(&'static str, &'static str, u64); 4] {
    [
        ("active", "rq_active", u64::from(h.load.active.load(Ordering::Relaxed))),
        ("requests", "rq_total", h.stats.requests.load(Ordering::Relaxed)),
        ("connections", "cx_total", h.stats.connections.load(Ordering::Relaxed)),
        (
            "connect_failures",
            "cx_connect_fail",
            h.stats.connect_failures.load(Ordering::Relaxed),
        ),
    ]
}

/// Envoy's text format: `cluster::host:port::stat::value`.
fn clusters_text(shared: &Shared) -> String {
    let snap = shared.snapshot.load();
    let mut out = String::new();
    for c in snap.clusters() {
        let _ = writeln!(out, "{}::type::{}", c.name, c.kind_name());
        if let Some(set) = c.known_hosts() {
            for h in set.hosts.iter() {
                let a = &h.addr;
                let _ = writeln!(out, "{}::{a}::weight::{}", c.name, h.load.weight);
                for (_, envoy_name, value) in host_counters(h) {
                    let _ = writeln!(out, "{}::{a}::{envoy_name}::{value}", c.name);
                }
            }
        }
    }
    out
}

fn stats_text(shared: &Shared) -> String {
    let s = &shared.stats;
    let counters = [
        ("downstream_cx_total", s.downstream_connections.load(Ordering::Relaxed)),
        ("downstream_cx_active", s.downstream_active.load(Ordering::Relaxed)),
        ("http_requests_total", s.http_requests.load(Ordering::Relaxed)),
        ("tunnels_total", s.tunnels.load(Ordering::Relaxed)),
        ("outbound_blocked_total", s.blocked.load(Ordering::Relaxed)),
        ("outbound_passthrough_total", s.passthrough.load(Ordering::Relaxed)),
        ("tunnel_sni_mismatch_total", s.sni_mismatch.load(Ordering::Relaxed)),
        ("tunnel_bad_traffic_total", s.bad_tunnel_traffic.load(Ordering::Relaxed)),
        (
            "upstream_connect_errors_total",
            s.upstream_connect_errors.load(Ordering::Relaxed),
        ),
        ("upstream_errors_total", s.upstream_errors.load(Ordering::Relaxed)),
        (
            "upstream_tls_errors_total",
            s.upstream_tls_errors.load(Ordering::Relaxed),
        ),
        ("bad_requests_total", s.bad_requests.load(Ordering::Relaxed)),
        (
            "downstream_tls_errors_total",
            s.downstream_tls_errors.load(Ordering::Relaxed),
        ),
        ("upstream_retries_total", s.upstream_retries.load(Ordering::Relaxed)),
        ("outbound_cx_total", s.outbound_connections.load(Ordering::Relaxed)),
        ("outbound_loop_refused_total", s.outbound_loops.load(Ordering::Relaxed)),
        ("dns_queries_total", shared.dns.stats.queries.load(Ordering::Relaxed)),
        ("dns_failures_total", shared.dns.stats.failures.load(Ordering::Relaxed)),
        ("config_generation", shared.snapshot.load().generation),
        ("config_reloads_total", s.config_reloads.load(Ordering::Relaxed)),
        (
            "config_reloads_rejected_total",
            s.config_reloads_rejected.load(Ordering::Relaxed),
        ),
        ("listener_errors_total", s.listener_errors.load(Ordering::Relaxed)),
        (
            "downstream_tunnels_active",
            shared.lifecycle.tunnels_active.load(Ordering::Relaxed),
        ),
    ];
    let mut out = String::new();
    for (name, value) in counters {
        let _ = writeln!(out, "meshentry.{name}: {value}");
    }
    for (name, value) in meshentry_proxy::server::DETECTED_NAMES.iter().zip(&s.detected) {
        let _ = writeln!(
            out,
            "meshentry.outbound_sniffed_{name}_total: {}",
            value.load(Ordering::Relaxed)
        );
    }
    out
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
    let body = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}
