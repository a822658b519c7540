//! Istio's standard metrics on `/stats/prometheus` and the access log, from the real
//! `meshentry proxy` binary after a known workload: requests answered by a service (200, 404),
//! refused by REGISTRY_ONLY, failed upstream (connection refused), a TLS tunnel carrying a
//! known number of bytes, and gRPC calls (OK and FAILED_PRECONDITION). The scrape is parsed by
//! a strict parser of the Prometheus text format and every series is checked for its exact
//! value and labels; the access log is checked line by line, as text and as JSON. A second
//! proxy takes one request per response flag (URX, UT, FI, DI, DC on both HTTP/1.1 paths,
//! UH, DF) and each must carry its flag, code, details and cluster in both.
//!
//! Clients: curl (`-x`), a raw socket for the CONNECT tunnel (so the bytes are exact), and
//! grpcio (Debian's python3-grpcio, see support/grpc_peer.py).

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use meshentry_testutil::{HttpUpstream, Proxy, ProxyProcess, TcpEcho, closed_port, eventually, raw, unique_loopback};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");

const PATIENCE: Duration = Duration::from_secs(20);

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// A STATIC ServiceEntry in namespace `shop` for `host:port` with `protocol`.
fn service(host: &str, port: u16, protocol: &str, endpoint: SocketAddr) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: p, protocol: {protocol}}}]
  resolution: STATIC
  endpoints: [{{address: {ip}, ports: {{p: {eport}}}}}]
",
        name = host.split('.').next().unwrap(),
        ip = endpoint.ip(),
        eport = endpoint.port(),
    )
}

// === Clients ===

/// `curl -x PROXY` with `extra` arguments: (status, body).
async fn curl(proxy: SocketAddr, url: &str, extra: &[&str]) -> (u16, String) {
    let mut args: Vec<String> = ["-sS", "--max-time", "20", "-w", "\n%{http_code}", "-x"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(format!("http://{proxy}"));
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(url.to_string());
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = meshentry_testutil::curl_command();
        cmd.args(&args);
        cmd.output().expect("curl is needed (scripts/test installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// `GET path` on the admin port, read strictly, which must be a 200: (content type, body).
async fn admin_get(proxy: &Proxy, path: &str) -> (String, String) {
    let r = proxy.admin_get(path).await;
    assert_eq!(r.status, 200, "{r:?}");
    (r.header("content-type").unwrap_or_default().to_string(), r.text())
}

/// A real ClientHello (as rustls sends it) naming `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(meshentry_testutil::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// A CONNECT tunnel to `target` that sends a ClientHello for `sni`, half-closes, and reads
/// until the upstream (an echo server) closes. Returns the bytes sent, which the echo server
/// sends back.
async fn tunnel_round_trip(proxy: SocketAddr, target: &str, sni: &str) -> usize {
    let mut s = raw::tunnel(proxy, target, PATIENCE).await.unwrap();
    let hello = client_hello(sni);
    s.write_all(&hello).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert!(back == hello, "the echo server returns the ClientHello");
    hello.len()
}

fn grpc_python() -> &'static str {
    static FOUND: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    FOUND.get_or_init(|| {
        ["/usr/bin/python3", "python3"]
            .into_iter()
            .find(|p| {
                Command::new(p)
                    .args(["-c", "import grpc"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("no python3 with grpcio: apt-get install python3-grpcio (scripts/test does this)")
    })
}

const GRPC_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/grpc_peer.py");

/// A grpcio server on `ip`, killed on drop, and its address.
async fn grpc_server(ip: Ipv4Addr) -> (ProxyProcess, SocketAddr) {
    let process = ProxyProcess::spawn(
        grpc_python(),
        [GRPC_PEER, "server", ip.to_string().as_str()],
        [("PYTHONUNBUFFERED", "1")],
    );
    let port = eventually(PATIENCE, || async {
        process
            .stdout()
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u16>().ok())
    })
    .await;
    (process, at(ip, port))
}

/// One unary call through the proxy listener with `:authority` `authority`.
async fn grpc_call(proxy: SocketAddr, authority: &str, arg: &str) -> Value {
    let out = tokio::process::Command::new(grpc_python())
        .args([GRPC_PEER, "client", &proxy.to_string(), authority, "unary", arg])
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("grpc_proxy")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "grpc client failed: {stdout}");
    serde_json::from_str(stdout.trim()).unwrap()
}

// === A strict reader of the Prometheus text format (0.0.4) ===

/// Series by metric name and sorted labels.
type Scrape = BTreeMap<(String, Vec<(String, String)>), f64>;

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses an exposition, panicking on anything Prometheus would refuse: malformed lines,
/// names, labels or values, samples of an undeclared family, a family declared twice,
/// duplicate series, histograms whose buckets are not cumulative or disagree with `_count`.
fn parse_prometheus(text: &str) -> Scrape {
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Scrape::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, value) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(valid_name(name), "bad name in {line:?}");
            if kind == "TYPE" {
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&value),
                    "{line:?}"
                );
                assert!(
                    types.insert(name.to_string(), value.to_string()).is_none(),
                    "declared twice: {name}"
                );
            } else {
                assert_eq!(kind, "HELP", "{line:?}");
            }
            continue;
        }
        assert!(!line.is_empty() && !line.starts_with('#'), "unexpected line {line:?}");
        let name_end = line.find(['{', ' ']).unwrap();
        let name = &line[..name_end];
        assert!(valid_name(name), "bad metric name in {line:?}");
        let mut labels = Vec::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut r = r;
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    r = after;
                    break;
                }
                let eq = r.find('=').unwrap_or_else(|| panic!("no = in {line:?}"));
                let key = &r[..eq];
                assert!(
                    valid_name(key) && !key.contains(':'),
                    "bad label name {key:?} in {line:?}"
                );
                r = r[eq + 1..]
                    .strip_prefix('"')
                    .unwrap_or_else(|| panic!("unquoted value in {line:?}"));
                let mut value = String::new();
                let mut chars = r.char_indices();
                let end = loop {
                    let (i, c) = chars.next().unwrap_or_else(|| panic!("unterminated value in {line:?}"));
                    match c {
                        '"' => break i,
                        '\\' => match chars.next().unwrap().1 {
                            'n' => value.push('\n'),
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            other => panic!("bad escape \\{other} in {line:?}"),
                        },
                        '\n' => panic!("raw newline in {line:?}"),
                        c => value.push(c),
                    }
                };
                assert!(
                    labels.iter().all(|(k, _): &(String, String)| k != key),
                    "label {key} twice in {line:?}"
                );
                labels.push((key.to_string(), value));
                r = &r[end + 1..];
                if let Some(after) = r.strip_prefix(',') {
                    r = after;
                }
            }
            rest = r;
        }
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample of an undeclared family: {line:?}");
        labels.sort();
        assert!(
            out.insert((name.to_string(), labels), value).is_none(),
            "duplicate series: {line:?}"
        );
    }
    // Histograms: cumulative buckets ending in +Inf, which equals _count.
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        let count_name = format!("{family}_count");
        for ((_, labels), count) in out.iter().filter(|((n, _), _)| *n == count_name) {
            let mut buckets: Vec<(f64, f64)> = out
                .iter()
                .filter(|((n, l), _)| {
                    *n == format!("{family}_bucket") && l.iter().filter(|(k, _)| k != "le").eq(labels.iter())
                })
                .map(|((_, l), v)| {
                    let le = &l.iter().find(|(k, _)| k == "le").unwrap().1;
                    (
                        if le == "+Inf" {
                            f64::INFINITY
                        } else {
                            le.parse().unwrap()
                        },
                        *v,
                    )
                })
                .collect();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family} buckets not cumulative"
            );
            assert_eq!(
                buckets.last().unwrap(),
                &(f64::INFINITY, *count),
                "{family}: +Inf != _count"
            );
        }
    }
    out
}

/// The value of `name` with exactly `labels` (the others in `base`).
fn value(scrape: &Scrape, name: &str, base: &[(&str, &str)], labels: &[(&str, &str)]) -> Option<f64> {
    let mut all: BTreeMap<String, String> = base.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for (k, v) in labels {
        all.insert(k.to_string(), v.to_string());
    }
    scrape.get(&(name.to_string(), all.into_iter().collect())).copied()
}

/// Every series of `name`.
fn series<'a>(scrape: &'a Scrape, name: &str) -> Vec<(&'a Vec<(String, String)>, f64)> {
    scrape
        .iter()
        .filter(|((n, _), _)| n == name)
        .map(|((_, l), v)| (l, *v))
        .collect()
}

// === The workload ===

struct Workload {
    proxy: Proxy,
    log: std::path::PathBuf,
    _log_dir: tempfile::TempDir,
    a: HttpUpstream,
    down: SocketAddr,
    echo: TcpEcho,
    grpc: SocketAddr,
    _grpc_server: ProxyProcess,
    /// Bytes of the three 200 responses' bodies.
    ok_body_bytes: usize,
    /// Bytes through the tunnel, each way.
    tunnel_bytes: usize,
}

/// Starts the proxy (REGISTRY_ONLY, two workers, the access log in `format`) and runs the
/// workload once.
async fn run_workload(format: &str) -> Workload {
    let ip = unique_loopback();
    let a = HttpUpstream::start(at(ip, 0), "a");
    let down = closed_port(ip);
    let echo = TcpEcho::start(at(ip, 0), "tls-echo");
    let (grpc_server, grpc) = grpc_server(ip).await;
    let config = service("a.example.com", 80, "HTTP", a.addr())
        + &service("down.example.com", 80, "HTTP", down)
        + &service("tls.example.com", 443, "TLS", echo.addr())
        + &service("echo.example.com", 50051, "GRPC", grpc);
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("access.log");
    let log_arg = log.display().to_string();
    let proxy = Proxy::builder(BIN)
        .config(&config)
        .args(["--outbound-policy", "REGISTRY_ONLY", "--workers", "2"])
        .args(["--labels", "app=shop-client,version=v7"])
        .args(["--access-log", &log_arg, "--access-log-format", format])
        .start()
        .await;

    let mut ok_body_bytes = 0;
    for i in 0..3 {
        let rid = format!("req-{i}");
        let (status, body) = curl(
            proxy.http(),
            "http://a.example.com/",
            &["-H", &format!("x-request-id: {rid}"), "-A", "telemetry-test"],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        ok_body_bytes += body.len();
    }
    let (status, _) = curl(proxy.http(), "http://a.example.com/status/404", &[]).await;
    assert_eq!(status, 404);
    for _ in 0..2 {
        let (status, body) = curl(proxy.http(), "http://blocked.example.com/", &[]).await;
        assert_eq!(status, 502, "{body}");
    }
    let (status, body) = curl(proxy.http(), "http://down.example.com/", &[]).await;
    assert_eq!(status, 503, "{body}");
    let tunnel_bytes = tunnel_round_trip(proxy.http(), "tls.example.com:443", "tls.example.com").await;
    let v = grpc_call(proxy.http(), "echo.example.com:50051", "hello").await;
    assert_eq!(v["reply"]["echo"], "hello", "{v}");
    let v = grpc_call(proxy.http(), "echo.example.com:50051", "fail:no widget").await;
    assert_eq!(v["code"], "FAILED_PRECONDITION", "{v}");

    Workload {
        proxy,
        log,
        _log_dir: log_dir,
        a,
        down,
        echo,
        grpc,
        _grpc_server: grpc_server,
        ok_body_bytes,
        tunnel_bytes,
    }
}

/// The access log's lines once it has `n` (they are written within a moment of ending).
async fn log_lines(w: &Workload, n: usize) -> Vec<String> {
    let lines = eventually(PATIENCE, || async {
        let text = std::fs::read_to_string(&w.log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n { Ok(lines) } else { Err(text) }
    })
    .await;
    assert_eq!(lines.len(), n, "one line per request and per connection: {lines:#?}");
    lines
}

/// Splits a text access log line into its fields: `[...]` and `"..."` are one field each.
fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let (field, after) = match rest.as_bytes()[0] {
            b'[' => {
                let end = rest.find(']').unwrap();
                (&rest[1..end], &rest[end + 1..])
            }
            b'"' => {
                let end = rest[1..].find('"').unwrap() + 1;
                (&rest[1..end], &rest[end + 1..])
            }
            _ => {
                let end = rest.find(' ').unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            }
        };
        out.push(field.to_string());
        rest = after.trim_start_matches(' ');
    }
    out
}

#[tokio::test]
async fn a_known_workload_gives_exact_istio_metrics_and_text_access_log_lines() {
    let w = run_workload("text").await;

    // Wait for every request and connection to be recorded (they are, as they end), then
    // check each series exactly: a miscount cannot hide behind the wait.
    let scrape = eventually(PATIENCE, || async {
        let (content_type, body) = admin_get(&w.proxy, "/stats/prometheus").await;
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        let scrape = parse_prometheus(&body);
        let requests: f64 = series(&scrape, "istio_requests_total").iter().map(|(_, v)| v).sum();
        let closed: f64 = series(&scrape, "istio_tcp_connections_closed_total")
            .iter()
            .map(|(_, v)| v)
            .sum();
        if requests >= 9.0 && closed >= 1.0 {
            Ok(scrape)
        } else {
            Err(body)
        }
    })
    .await;

    let base: Vec<(&str, &str)> = vec![
        ("reporter", "source"),
        ("source_workload", "unknown"),
        ("source_workload_namespace", "default"),
        ("source_principal", "unknown"),
        ("source_app", "shop-client"),
        ("source_version", "v7"),
        ("source_cluster", "unknown"),
        ("destination_workload", "unknown"),
        ("destination_workload_namespace", "unknown"),
        ("destination_principal", "unknown"),
        ("destination_app", "unknown"),
        ("destination_version", "unknown"),
        ("destination_cluster", "unknown"),
        ("connection_security_policy", "none"),
    ];
    let dest = |host: &'static str| {
        vec![
            ("destination_service", host),
            ("destination_service_name", host),
            ("destination_service_namespace", "shop"),
        ]
    };
    let http = |code: &'static str, flags: &'static str| {
        vec![
            ("request_protocol", "http"),
            ("response_code", code),
            ("grpc_response_status", ""),
            ("response_flags", flags),
        ]
    };
    let req = |d: Vec<(&'static str, &'static str)>, h: Vec<(&'static str, &'static str)>| {
        let mut l = d;
        l.extend(h);
        l
    };
    let a_200 = req(dest("a.example.com"), http("200", "-"));
    let a_404 = req(dest("a.example.com"), http("404", "-"));
    let blocked = req(
        vec![
            ("destination_service", "unknown"),
            ("destination_service_name", "BlackHoleCluster"),
            ("destination_service_namespace", "unknown"),
        ],
        http("502", "NR"),
    );
    let down_503 = req(dest("down.example.com"), http("503", "UF"));
    let grpc = |status: &'static str| {
        req(
            dest("echo.example.com"),
            vec![
                ("request_protocol", "grpc"),
                ("response_code", "200"),
                ("grpc_response_status", status),
                ("response_flags", "-"),
            ],
        )
    };
    let expected: Vec<(&Vec<(&str, &str)>, f64)> =
        vec![(&a_200, 3.0), (&a_404, 1.0), (&blocked, 2.0), (&down_503, 1.0)];
    let grpc_ok = grpc("0");
    let grpc_failed = grpc("9");
    let mut expected = expected;
    expected.push((&grpc_ok, 1.0));
    expected.push((&grpc_failed, 1.0));
    for (labels, n) in &expected {
        assert_eq!(
            value(&scrape, "istio_requests_total", &base, labels),
            Some(*n),
            "istio_requests_total{labels:?}\n{:#?}",
            series(&scrape, "istio_requests_total")
        );
        assert_eq!(
            value(&scrape, "istio_request_duration_milliseconds_count", &base, labels),
            Some(*n),
            "{labels:?}"
        );
        assert_eq!(value(&scrape, "istio_request_bytes_count", &base, labels), Some(*n));
        assert_eq!(value(&scrape, "istio_response_bytes_count", &base, labels), Some(*n));
    }
    assert_eq!(
        series(&scrape, "istio_requests_total").len(),
        expected.len(),
        "no other request series"
    );
    // Bytes: the three 200 bodies exactly; the GETs had no body.
    assert_eq!(
        value(&scrape, "istio_response_bytes_sum", &base, &a_200),
        Some(w.ok_body_bytes as f64)
    );
    assert_eq!(value(&scrape, "istio_request_bytes_sum", &base, &a_200), Some(0.0));
    // A response is slower than 0 ms and faster than the test's patience.
    let le = |bound: &'static str| {
        let mut l = a_200.clone();
        l.push(("le", bound));
        l
    };
    assert_eq!(
        value(
            &scrape,
            "istio_request_duration_milliseconds_bucket",
            &base,
            &le("+Inf")
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &scrape,
            "istio_request_duration_milliseconds_bucket",
            &base,
            &le("30000")
        ),
        Some(3.0)
    );

    // The tunnel: one connection, the ClientHello each way.
    let tcp_ok = req(
        dest("tls.example.com"),
        vec![("request_protocol", "tcp"), ("response_flags", "-")],
    );
    let tunnel = w.tunnel_bytes as f64;
    for (name, v) in [
        ("istio_tcp_connections_opened_total", 1.0),
        ("istio_tcp_connections_closed_total", 1.0),
        ("istio_tcp_received_bytes_total", tunnel),
        ("istio_tcp_sent_bytes_total", tunnel),
    ] {
        assert_eq!(value(&scrape, name, &base, &tcp_ok), Some(v), "{name}");
        assert_eq!(series(&scrape, name).len(), 1, "{name}: one series");
    }
    // The proxy's own counters are in the same exposition.
    assert_eq!(value(&scrape, "meshentry_outbound_blocked_total", &[], &[]), Some(2.0));
    assert_eq!(value(&scrape, "meshentry_tunnels_total", &[], &[]), Some(1.0));
    assert_eq!(
        value(
            &scrape,
            "meshentry_cluster_upstream_cx_connect_fail_total",
            &[],
            &[("cluster_name", "outbound|80||down.example.com")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&scrape, "meshentry_access_log_dropped_total", &[], &[]),
        Some(0.0)
    );

    // The access log: a line per request and one for the tunnel.
    let lines = log_lines(&w, 10).await;
    let parsed: Vec<Vec<String>> = lines.iter().map(|l| fields(l)).collect();
    for (line, f) in lines.iter().zip(&parsed) {
        assert_eq!(f.len(), 22, "Istio's 22 fields: {line}");
        assert!(f[0].ends_with('Z') && f[0].len() == 24, "START_TIME: {line}");
    }
    let find =
        |pred: &dyn Fn(&Vec<String>) -> bool| -> Vec<&Vec<String>> { parsed.iter().filter(|f| pred(f)).collect() };
    let ok = find(&|f| f[1] == "GET / HTTP/1.1" && f[2] == "200");
    assert_eq!(ok.len(), 3, "{lines:#?}");
    // Workers flush their own buffers, so lines of different workers need not be in order.
    let mut ids: Vec<&str> = ok.iter().map(|f| f[13].as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["req-0", "req-1", "req-2"]);
    for f in &ok {
        assert_eq!(f[3..7], ["-", "via_upstream", "-", "-"], "{f:?}");
        assert_eq!(
            f[11..15],
            ["-", "telemetry-test", f[13].as_str(), "a.example.com"],
            "{f:?}"
        );
        assert_eq!(f[15], w.a.addr().to_string());
        assert_eq!(f[16], "outbound|80||a.example.com");
        assert_eq!(f[21], "default");
    }
    let not_found = find(&|f| f[1] == "GET /status/404 HTTP/1.1");
    assert_eq!(not_found.len(), 1);
    assert_eq!(not_found[0][2..5], ["404", "-", "via_upstream"]);
    let blocked_lines = find(&|f| f[14] == "blocked.example.com");
    assert_eq!(blocked_lines.len(), 2);
    for f in blocked_lines {
        assert_eq!(f[2..5], ["502", "NR", "direct_response"], "{f:?}");
        assert_eq!(
            (f[15].as_str(), f[16].as_str(), f[21].as_str()),
            ("-", "BlackHoleCluster", "block_all")
        );
    }
    let failed = find(&|f| f[14] == "down.example.com");
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0][2..5],
        [
            "503",
            "UF",
            "upstream_reset_before_response_started{connection_failure}"
        ]
    );
    assert_eq!(failed[0][15], w.down.to_string(), "the endpoint that refused");
    assert_eq!(failed[0][16], "outbound|80||down.example.com");
    let tunnel_line = find(&|f| f[1] == "- - -");
    assert_eq!(tunnel_line.len(), 1, "{lines:#?}");
    let t = tunnel_line[0];
    assert_eq!(t[2..4], ["0", "-"]);
    assert_eq!(t[7..9], [w.tunnel_bytes.to_string(), w.tunnel_bytes.to_string()]);
    assert_eq!(t[15], w.echo.addr().to_string());
    assert_eq!(t[16], "outbound|443||tls.example.com");
    assert_eq!(t[20], "tls.example.com", "REQUESTED_SERVER_NAME from the ClientHello");
    assert!(t[17].parse::<SocketAddr>().is_ok(), "UPSTREAM_LOCAL_ADDRESS: {t:?}");
    assert!(t[19].parse::<SocketAddr>().is_ok(), "DOWNSTREAM_REMOTE_ADDRESS: {t:?}");
    let grpc_lines = find(&|f| f[1] == "POST /test.Echo/Unary HTTP/2");
    assert_eq!(grpc_lines.len(), 2, "{lines:#?}");
    for f in grpc_lines {
        assert_eq!(f[2..5], ["200", "-", "via_upstream"], "{f:?}");
        assert_eq!(f[14], "echo.example.com:50051");
        assert_eq!(f[15], w.grpc.to_string());
        assert_eq!(f[16], "outbound|50051||echo.example.com");
    }
}

#[tokio::test]
async fn json_access_log_lines_parse_and_carry_the_same_fields() {
    let w = run_workload("json").await;
    let lines = log_lines(&w, 10).await;
    let entries: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for e in &entries {
        assert_eq!(e.as_object().unwrap().len(), 24, "{e}");
        assert!(e["start_time"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    let by = |f: &dyn Fn(&Value) -> bool| -> Vec<&Value> { entries.iter().filter(|e| f(e)).collect() };
    let ok = by(&|e| e["authority"] == "a.example.com" && e["response_code"] == 200);
    assert_eq!(ok.len(), 3);
    for e in ok {
        assert_eq!(e["method"], "GET");
        assert_eq!(e["path"], "/");
        assert_eq!(e["protocol"], "HTTP/1.1");
        assert_eq!(e["response_flags"], "-");
        assert_eq!(e["response_code_details"], "via_upstream");
        assert_eq!(e["user_agent"], "telemetry-test");
        assert_eq!(e["upstream_cluster"], "outbound|80||a.example.com");
        assert_eq!(e["upstream_host"], w.a.addr().to_string());
        assert_eq!(e["route_name"], "default");
        assert_eq!(e["x_forwarded_for"], Value::Null);
        assert!(e["duration"].is_u64() && e["bytes_sent"].as_u64().unwrap() > 0, "{e}");
    }
    let blocked = by(&|e| e["authority"] == "blocked.example.com");
    assert_eq!(blocked.len(), 2);
    for e in blocked {
        assert_eq!(e["response_code"], 502);
        assert_eq!(e["response_flags"], "NR");
        assert_eq!(e["upstream_cluster"], "BlackHoleCluster");
        assert_eq!(e["upstream_host"], Value::Null);
    }
    let failed = by(&|e| e["authority"] == "down.example.com");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["response_code"], 503);
    assert_eq!(failed[0]["response_flags"], "UF");
    assert_eq!(failed[0]["upstream_cluster"], "outbound|80||down.example.com");
    let tunnel = by(&|e| e["method"] == Value::Null);
    assert_eq!(tunnel.len(), 1, "{lines:#?}");
    assert_eq!(tunnel[0]["bytes_received"], w.tunnel_bytes);
    assert_eq!(tunnel[0]["bytes_sent"], w.tunnel_bytes);
    assert_eq!(tunnel[0]["requested_server_name"], "tls.example.com");
    assert_eq!(tunnel[0]["upstream_cluster"], "outbound|443||tls.example.com");
    let grpc = by(&|e| e["protocol"] == "HTTP/2");
    assert_eq!(grpc.len(), 2);
    assert!(
        grpc.iter()
            .all(|e| e["path"] == "/test.Echo/Unary" && e["response_code"] == 200)
    );
}

// === Response flags, one failure each ===

/// Waits until `n` lines are logged and returns them split into fields, by `x-request-id`.
async fn lines_by_id(log: &std::path::Path, n: usize) -> BTreeMap<String, Vec<String>> {
    let lines = eventually(PATIENCE, || async {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n { Ok(lines) } else { Err(text) }
    })
    .await;
    assert_eq!(lines.len(), n, "one line per request: {lines:#?}");
    let mut out = BTreeMap::new();
    for line in &lines {
        let f = fields(line);
        assert_eq!(f.len(), 22, "Istio's 22 fields: {line}");
        assert!(out.insert(f[13].clone(), f).is_none(), "request id twice: {lines:#?}");
    }
    out
}

/// A TCP server that accepts connections, reads what comes, and never answers.
async fn silent_upstream(ip: Ipv4Addr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(at(ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, task)
}

/// Each response flag the proxy sets on a request of its own (URX, UT, FI, DI, DC, UH, DF),
/// driven through the real binary: the access log line's code, flags, details and upstream
/// cluster, and the exact `istio_requests_total` series, for every one.
#[tokio::test]
async fn each_failure_gets_its_envoy_response_flag_in_the_log_and_the_metrics() {
    let ip = unique_loopback();
    let a = HttpUpstream::start(at(ip, 0), "a");
    let (silent, _silent_task) = silent_upstream(ip).await;
    // The test's own DNS server, which knows no name: `gone.example.com` gets NXDOMAIN.
    let dns = meshentry_testutil::TestDns::start(ip);
    let config = service("a.example.com", 80, "HTTP", a.addr())
        + &service("flaky.example.com", 80, "HTTP", a.addr())
        + &service("hang.example.com", 80, "HTTP", silent)
        + &service("fault.example.com", 80, "HTTP", a.addr())
        + &service("slow.example.com", 80, "HTTP", a.addr())
        + &service("slowvs.example.com", 80, "HTTP", a.addr())
        + "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: gone, namespace: shop}
spec:
  hosts: [gone.example.com]
  ports: [{number: 80, name: p, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a, namespace: shop}
spec:
  host: a.example.com
  subsets: [{name: v9, labels: {version: v9}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: shop}
spec:
  hosts: [a.example.com]
  http:
  - name: nobody
    route: [{destination: {host: a.example.com, subset: v9}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky, namespace: shop}
spec:
  hosts: [flaky.example.com]
  http:
  - name: retry
    retries: {attempts: 2, retryOn: 5xx}
    route: [{destination: {host: flaky.example.com}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hang, namespace: shop}
spec:
  hosts: [hang.example.com]
  http:
  - name: short
    timeout: 200ms
    route: [{destination: {host: hang.example.com}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: fault, namespace: shop}
spec:
  hosts: [fault.example.com]
  http:
  - name: abort
    match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: fault.example.com}}]
  - name: delay
    match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 100ms, percentage: {value: 100}}}
    route: [{destination: {host: fault.example.com}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slowvs, namespace: shop}
spec:
  hosts: [slowvs.example.com]
  http:
  - name: patient
    timeout: 5s
    route: [{destination: {host: slowvs.example.com}}]
";
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("access.log");
    let log_arg = log.display().to_string();
    let proxy = Proxy::builder(BIN)
        .config(config)
        .dns(dns.addr())
        .args(["--outbound-policy", "REGISTRY_ONLY", "--access-log", &log_arg])
        .start()
        .await;

    let get = |url: &'static str, id: &'static str| {
        let proxy = proxy.http();
        async move { curl(proxy, url, &["-H", &format!("x-request-id: {id}")]).await.0 }
    };
    // URX: the route retries 5xx twice; the upstream answers 503 every time.
    let before = a.requests();
    assert_eq!(get("http://flaky.example.com/status/503", "urx").await, 503);
    assert_eq!(a.requests() - before, 3, "the first try and two retries");
    // UT: no response head within the route's 200 ms.
    let started = std::time::Instant::now();
    assert_eq!(get("http://hang.example.com/", "ut").await, 504);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // FI and DI.
    let before = a.requests();
    assert_eq!(get("http://fault.example.com/abort", "fi").await, 418);
    assert_eq!(a.requests(), before, "an aborted request never leaves");
    let started = std::time::Instant::now();
    assert_eq!(get("http://fault.example.com/delay", "di").await, 200);
    assert!(started.elapsed() >= Duration::from_millis(100));
    // UH: the subset's endpoints are none of the service's.
    assert_eq!(get("http://a.example.com/", "uh").await, 503);
    // DF: the DNS service's name does not resolve.
    assert_eq!(get("http://gone.example.com/", "df").await, 503);
    // DC: the client sends its request and goes away while the upstream takes 300 ms; once
    // on the HTTP/1.1 fast path, once on the general path a VirtualService timeout takes.
    for (host, id) in [("slow.example.com", "dc"), ("slowvs.example.com", "dc-routed")] {
        let before = a.requests();
        let mut s = TcpStream::connect(proxy.http()).await.unwrap();
        let req = format!("GET http://{host}/delay/300 HTTP/1.1\r\nHost: {host}\r\nx-request-id: {id}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        eventually(PATIENCE, || async {
            if a.requests() > before {
                Ok(())
            } else {
                Err("the upstream has not seen it yet")
            }
        })
        .await;
        drop(s);
    }

    let lines = lines_by_id(&log, 8).await;
    let line = |id: &str| -> &Vec<String> { lines.get(id).unwrap_or_else(|| panic!("no line for {id}: {lines:#?}")) };
    // (code, flags, details, upstream host, upstream cluster) as Envoy's access log has them.
    let a_addr = a.addr().to_string();
    let silent_addr = silent.to_string();
    let expected: [(&str, [&str; 5]); 8] = [
        (
            "urx",
            ["503", "URX", "via_upstream", &a_addr, "outbound|80||flaky.example.com"],
        ),
        (
            "ut",
            [
                "504",
                "UT",
                "response_timeout",
                &silent_addr,
                "outbound|80||hang.example.com",
            ],
        ),
        (
            "fi",
            ["418", "FI", "fault_filter_abort", "-", "outbound|80||fault.example.com"],
        ),
        (
            "di",
            ["200", "DI", "via_upstream", &a_addr, "outbound|80||fault.example.com"],
        ),
        (
            "uh",
            ["503", "UH", "no_healthy_upstream", "-", "outbound|80|v9|a.example.com"],
        ),
        (
            "df",
            [
                "503",
                "DF",
                "dns_resolution_failure",
                "-",
                "outbound|80||gone.example.com",
            ],
        ),
        (
            "dc",
            [
                "0",
                "DC",
                "downstream_remote_disconnect",
                &a_addr,
                "outbound|80||slow.example.com",
            ],
        ),
        (
            "dc-routed",
            [
                "0",
                "DC",
                "downstream_remote_disconnect",
                &a_addr,
                "outbound|80||slowvs.example.com",
            ],
        ),
    ];
    for (id, want) in &expected {
        let f = line(id);
        assert_eq!([f[2].as_str(), &f[3], &f[4], &f[15], &f[16]], *want, "{id}: {f:?}");
    }

    let scrape = eventually(PATIENCE, || async {
        let (_, body) = admin_get(&proxy, "/stats/prometheus").await;
        let scrape = parse_prometheus(&body);
        let n: f64 = series(&scrape, "istio_requests_total").iter().map(|(_, v)| v).sum();
        if n >= 8.0 { Ok(scrape) } else { Err(body) }
    })
    .await;
    let mut got: Vec<(String, String, String, f64)> = series(&scrape, "istio_requests_total")
        .into_iter()
        .map(|(labels, v)| {
            let get = |k: &str| labels.iter().find(|(n, _)| n == k).unwrap().1.clone();
            (
                get("destination_service"),
                get("response_code"),
                get("response_flags"),
                v,
            )
        })
        .collect();
    got.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let want = |d: &str, c: &str, f: &str| (d.to_string(), c.to_string(), f.to_string(), 1.0);
    let mut expected = vec![
        want("flaky.example.com", "503", "URX"),
        want("hang.example.com", "504", "UT"),
        want("fault.example.com", "418", "FI"),
        want("fault.example.com", "200", "DI"),
        want("a.example.com", "503", "UH"),
        want("gone.example.com", "503", "DF"),
        want("slow.example.com", "0", "DC"),
        want("slowvs.example.com", "0", "DC"),
    ];
    expected.sort_by(|x, y| x.partial_cmp(y).unwrap());
    assert_eq!(got, expected, "{:#?}", series(&scrape, "istio_requests_total"));
}
