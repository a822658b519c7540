//! End-to-end tests of message integrity on the general (hyper) HTTP/1 path and of tunnels
//! (issue 13, items 7-9): a malformed chunked request body is the client's error (400, DPE);
//! request and response bodies that stall are ended after `--stream-idle-timeout` (408, SI); a
//! GET's chunked body and its declared trailers reach the upstream; a WebSocket upgrade through
//! an absolute-form request is relayed and bridged; CONNECT to an HTTP port is served as HTTP
//! (each request routed, policy-checked and logged); a TLS tunnel must start with a ClientHello.
//!
//! Requests for A-C go through a VirtualService rule with a `headers` action, which only the
//! hyper path carries, so these tests exercise it whatever the fast path handles itself. The
//! proxy runs REGISTRY_ONLY with `--workers 1` on a loopback address of its own; every backend
//! is on loopback, and hostile bytes come from raw sockets.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshentry_testutil::raw::{self, Framing, RawBackend, RawClient, RawRequest, Reply};
use meshentry_testutil::{HttpUpstream, TcpEcho, curl_command, eventually, unique_loopback};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");

/// Bound for what should take milliseconds, generous for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Configuration

/// A STATIC ServiceEntry for `host` with one port, its endpoint at `endpoint`.
fn service(host: &str, port: u16, protocol: &str, endpoint: SocketAddr) -> String {
    let name = host.replace('.', "-");
    let port_name = protocol.to_ascii_lowercase();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  hosts: [{host}]\n  ports: [{{number: {port}, name: {port_name}, protocol: {protocol}}}]\n\
         \x20 resolution: STATIC\n  endpoints: [{{address: \"{}\", ports: {{{port_name}: {}}}}}]\n---\n",
        endpoint.ip(),
        endpoint.port()
    )
}

/// A VirtualService for `host` whose one rule sets a request header: a rule that does more
/// than pick a destination, which only the hyper path serves.
fn hyper_path_rule(host: &str) -> String {
    let name = host.replace('.', "-");
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  hosts: [{host}]\n  http:\n  - name: general\n    headers: {{request: {{set: {{x-hyper-path: \"1\"}}}}}}\n\
         \x20   route: [{{destination: {{host: {host}}}}}]\n---\n"
    )
}

// ---------------------------------------------------------------------------------------------
// The proxy under test

struct Proxy {
    inner: meshentry_testutil::Proxy,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Proxy {
    /// REGISTRY_ONLY, one worker, a JSON access log, and the `extra` flags.
    async fn start(config: &str, extra: &[&str]) -> Proxy {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("access.log");
        let inner = meshentry_testutil::Proxy::builder(BIN)
            .config(config)
            .args(["--outbound-policy", "REGISTRY_ONLY", "--workers", "1", "--access-log"])
            .arg(&log)
            .args(["--access-log-format", "json"])
            .args(extra.iter().copied())
            .start()
            .await;
        Proxy {
            inner,
            log,
            _log_dir: log_dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.inner.http()
    }

    /// A client connection to the explicit listener.
    async fn client(&self) -> RawClient {
        RawClient::connect(self.addr()).await.unwrap()
    }

    async fn stat(&self, name: &str) -> u64 {
        self.inner.stat(name).await
    }

    /// The first access log entry `pick` accepts, once it has been written.
    async fn log_entry(&self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        eventually(PATIENCE, || async {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .find(|v| pick(v))
                .ok_or_else(|| format!("no access log entry for {what} in:\n{text}"))
        })
        .await
    }

    /// Asserts the proxy is alive and did not panic.
    fn assert_healthy(&mut self) {
        if let Some(status) = self.inner.process.try_wait() {
            panic!("the proxy exited ({status})\n{}", self.inner.process.output());
        }
        let stderr = self.inner.process.stderr();
        assert!(!stderr.contains("panicked"), "the proxy panicked:\n{stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// Raw sockets

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether the peer closes the connection within `within` with nothing more sent (a reset
/// counts as a close).
async fn closes_clean<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(c: &mut RawClient<S>) -> bool {
    let (rest, eof) = c.read_for(PATIENCE).await;
    assert!(rest.is_empty(), "bytes after the last response: {}", raw::show(&rest));
    eof
}

/// Opens a CONNECT tunnel to `target` through the proxy; panics unless it is answered 200.
async fn connect_tunnel(proxy: SocketAddr, target: &str) -> RawClient {
    RawClient::new(raw::tunnel(proxy, target, PATIENCE).await.unwrap())
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

// ---------------------------------------------------------------------------------------------
// Backends (strict: each request must be framed exactly once, see `RawBackend`)

/// Answers each request `200 ok`.
fn recording(_: &RawRequest) -> Reply {
    Reply::bytes("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
}

/// Answers a request with the start of a 100-byte body, then sends nothing more and holds the
/// connection open until the proxy gives up on it.
fn stalling(_: &RawRequest) -> Reply {
    Reply::bytes("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello").then_sleep(Duration::from_secs(60))
}

/// A WebSocket-like server: a request with `Upgrade: websocket` gets a 101 and then every
/// byte back; any other request gets 426.
fn upgrading(r: &RawRequest) -> Reply {
    let upgrade = r.header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let connection = r
        .header_all("connection")
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if upgrade && connection {
        Reply::bytes("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n")
            .then_echo()
    } else {
        Reply::bytes("HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n").then_close()
    }
}

fn backend(ip: std::net::Ipv4Addr, respond: fn(&RawRequest) -> Reply) -> RawBackend {
    RawBackend::start(SocketAddr::new(IpAddr::V4(ip), 0), respond)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// A. A malformed chunked request body is the client's error

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_request_body_is_answered_400_dpe_not_502() {
    let ip = unique_loopback();
    let web = HttpUpstream::start(SocketAddr::new(IpAddr::V4(ip), 0), "web");
    let config = service("web.example.com", 80, "HTTP", web.addr()) + &hyper_path_rule("web.example.com");
    let mut proxy = Proxy::start(&config, &[]).await;

    let mut s = proxy.client().await;
    s.send(
        b"POST http://web.example.com/upload HTTP/1.1\r\nHost: web.example.com\r\n\
          Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let r = s.read_response("POST", PATIENCE).await.unwrap();
    assert_eq!(
        r.status, 400,
        "a chunk size that is not hex is the client's error: {r:?}"
    );
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert!(
        closes_clean(&mut s).await,
        "the body's extent is unknown, so the connection is closed"
    );

    let entry = proxy
        .log_entry("the POST", |v| v["method"] == "POST" && v["path"] == "/upload")
        .await;
    assert_eq!(entry["response_code"], 400, "{entry}");
    assert_eq!(entry["response_flags"], "DPE", "{entry}");
    assert_eq!(proxy.stat("bad_requests_total").await, 1);
    assert_eq!(proxy.stat("upstream_errors_total").await, 0, "not an upstream failure");
    proxy.assert_healthy();
}

/// A client that leaves part-way through its body is DC: neither its protocol error nor the
/// upstream's failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_cut_short_by_the_client_is_dc_not_an_upstream_error() {
    let ip = unique_loopback();
    let web = HttpUpstream::start(SocketAddr::new(IpAddr::V4(ip), 0), "web");
    let config = service("web.example.com", 80, "HTTP", web.addr()) + &hyper_path_rule("web.example.com");
    let mut proxy = Proxy::start(&config, &[]).await;

    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(
        b"POST http://web.example.com/cut HTTP/1.1\r\nHost: web.example.com\r\n\
          Transfer-Encoding: chunked\r\n\r\n10\r\nonly half",
    )
    .await
    .unwrap();
    eventually(PATIENCE, || async { web.connections() == 1 }).await;
    drop(s);

    let entry = proxy.log_entry("the POST", |v| v["path"] == "/cut").await;
    let flags = entry["response_flags"].as_str().unwrap();
    assert!(
        flags.contains("DC") && !flags.contains("DPE") && !flags.contains("UC"),
        "{entry}"
    );
    assert_eq!(proxy.stat("upstream_errors_total").await, 0);
    assert_eq!(proxy.stat("bad_requests_total").await, 0);
    proxy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// B. Bodies that stall are ended after --stream-idle-timeout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_is_answered_408_si() {
    let ip = unique_loopback();
    let web = HttpUpstream::start(SocketAddr::new(IpAddr::V4(ip), 0), "web");
    let config = service("web.example.com", 80, "HTTP", web.addr()) + &hyper_path_rule("web.example.com");
    let mut proxy = Proxy::start(&config, &["--stream-idle-timeout", "1s"]).await;

    let mut s = proxy.client().await;
    s.send(
        b"POST http://web.example.com/slow HTTP/1.1\r\nHost: web.example.com\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    let started = Instant::now();
    // The proxy's --response-timeout (60 s) would otherwise be the first to end it.
    let r = s.read_response("POST", Duration::from_secs(8)).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status, 408, "{r:?}");
    assert!(
        waited >= Duration::from_millis(900),
        "answered after {waited:?}, before the idle timeout"
    );
    assert!(
        closes_clean(&mut s).await,
        "the rest of the body will not be read: the connection closes"
    );

    let entry = proxy
        .log_entry("the POST", |v| v["method"] == "POST" && v["path"] == "/slow")
        .await;
    assert_eq!(entry["response_code"], 408, "{entry}");
    assert_eq!(entry["response_flags"], "SI", "{entry}");
    assert_eq!(proxy.stat("downstream_rq_idle_timeout").await, 1);
    assert_eq!(proxy.stat("upstream_errors_total").await, 0, "not an upstream failure");
    assert_eq!(proxy.stat("bad_requests_total").await, 0);

    // A body that keeps arriving, slower than the timeout in total but never idle that long,
    // is not cut.
    let mut s = proxy.client().await;
    s.send(
        b"POST http://web.example.com/steady HTTP/1.1\r\nHost: web.example.com\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    // 1.6 s in all, never idle for the 1 s timeout: the gaps are the scenario.
    for _ in 0..4 {
        s.send(b"1\r\nx\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    s.send(b"0\r\n\r\n").await.unwrap();
    let r = s.read_response("POST", PATIENCE).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(web.last().unwrap().body.as_ref(), b"xxxx");
    assert_eq!(proxy.stat("downstream_rq_idle_timeout").await, 1);
    proxy.assert_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_that_stalls_closes_the_connection() {
    let ip = unique_loopback();
    let stall = backend(ip, stalling);
    let config = service("stall.example.com", 80, "HTTP", stall.addr()) + &hyper_path_rule("stall.example.com");
    let mut proxy = Proxy::start(&config, &["--stream-idle-timeout", "1s"]).await;

    let mut s = proxy.client().await;
    s.send(b"GET http://stall.example.com/ HTTP/1.1\r\nHost: stall.example.com\r\n\r\n")
        .await
        .unwrap();
    let head = s.read_response_head("GET", PATIENCE).await.unwrap();
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(
        head.framing,
        Framing::Length(100),
        "the upstream's length, relayed: {head:?}"
    );
    let started = Instant::now();
    let (body, closed) = s.read_for(Duration::from_secs(8)).await;
    assert!(closed, "the proxy kept a stalled response open past the idle timeout");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(body, b"hello", "what the upstream sent, and nothing else");
    assert_eq!(stall.requests().len(), 1, "{}", stall.describe());

    let entry = proxy.log_entry("the GET", |v| v["method"] == "GET").await;
    assert_eq!(entry["response_flags"], "SI", "{entry}");
    assert_eq!(proxy.stat("downstream_rq_idle_timeout").await, 1);
    proxy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// C. A GET's chunked body and declared trailers reach the upstream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_chunked_body_and_declared_trailers_keeps_both() {
    let ip = unique_loopback();
    let raw = backend(ip, recording);
    let config = service("raw.example.com", 80, "HTTP", raw.addr()) + &hyper_path_rule("raw.example.com");
    let mut proxy = Proxy::start(&config, &[]).await;

    for method in ["GET", "POST"] {
        let mut s = proxy.client().await;
        let req = format!(
            "{method} http://raw.example.com/q HTTP/1.1\r\nHost: raw.example.com\r\nTransfer-Encoding: chunked\r\n\
             Trailer: x-sum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n"
        );
        s.send(req.as_bytes()).await.unwrap();
        let r = s.read_response(method, PATIENCE).await.unwrap();
        assert_eq!(r.status, 200, "{method}: {r:?}");
        let request = raw.requests().pop().unwrap();
        assert_eq!(
            (request.framing, request.body.as_slice(), request.trailer("x-sum")),
            (Framing::Chunked, &b"hello world"[..], Some("42")),
            "{method}: {}",
            raw.describe()
        );
        let got = text(&request.raw);
        let lower = got.to_ascii_lowercase();
        assert!(got.starts_with(&format!("{method} /q HTTP/1.1\r\n")), "{got}");
        assert!(lower.contains("\r\nx-hyper-path: 1\r\n"), "not the hyper path: {got}");
        assert!(lower.contains("\r\ntransfer-encoding: chunked\r\n"), "{method}: {got}");
        assert!(!lower.contains("content-length"), "{method}: {got}");
        let (_, body) = got.split_once("\r\n\r\n").unwrap();
        assert!(
            body.contains("hello") && body.contains(" world"),
            "{method}: the body is lost: {got}"
        );
        assert!(
            body.ends_with("0\r\nx-sum: 42\r\n\r\n"),
            "{method}: the trailer is lost: {got}"
        );
    }
    assert_eq!(raw.requests().len(), 2);

    // A GET that declares no body still has none.
    let mut s = proxy.client().await;
    s.send(b"GET http://raw.example.com/empty HTTP/1.1\r\nHost: raw.example.com\r\n\r\n")
        .await
        .unwrap();
    let r = s.read_response("GET", PATIENCE).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(raw.errors().is_empty(), "{}", raw.describe());
    let got = text(&raw.requests().pop().unwrap().raw).to_ascii_lowercase();
    assert!(got.starts_with("get /empty http/1.1\r\n"), "{got}");
    assert!(!got.contains("transfer-encoding"), "{got}");
    assert!(got.ends_with("\r\n\r\n"), "{got}");
    proxy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// D. WebSocket through an absolute-form request

/// Sends a WebSocket upgrade for `url` and returns the connection (holding whatever followed
/// the response) and the response.
async fn upgrade(proxy: SocketAddr, url: &str, host: &str) -> (RawClient, raw::RawResponse) {
    let mut s = RawClient::connect(proxy).await.unwrap();
    let req = format!(
        "GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.send(req.as_bytes()).await.unwrap();
    let r = s.read_response("GET", PATIENCE).await.unwrap();
    (s, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_through_an_absolute_form_request_is_bridged() {
    let ip = unique_loopback();
    let ws = backend(ip, upgrading);
    let config = service("ws.example.com", 80, "HTTP", ws.addr())
        + &service("wsvs.example.com", 80, "HTTP", ws.addr())
        + &hyper_path_rule("wsvs.example.com");
    let mut proxy = Proxy::start(&config, &[]).await;

    for host in ["ws.example.com", "wsvs.example.com"] {
        let (mut s, r) = upgrade(proxy.addr(), &format!("http://{host}/chat"), host).await;
        assert_eq!(r.status, 101, "{host}: {r:?}");
        assert!(
            s.buffered().is_empty(),
            "{host}: bytes after the 101: {:?}",
            s.buffered()
        );
        assert_eq!(r.header("upgrade"), Some("websocket"), "{r:?}");
        for message in [&b"first frame"[..], b"second, after the first came back"] {
            s.send(message).await.unwrap();
            assert_eq!(s.read_exact(message.len(), PATIENCE).await.unwrap(), message, "{host}");
        }
        s.stream().shutdown().await.unwrap();
        assert!(closes_clean(&mut s).await, "{host}: the upgraded connection stays open");
    }
    assert!(ws.errors().is_empty(), "{}", ws.describe());
    let heads: Vec<String> = ws
        .requests()
        .iter()
        .map(|r| text(&r.raw).to_ascii_lowercase())
        .collect();
    assert_eq!(heads.len(), 2, "{heads:?}");
    for head in &heads {
        assert!(
            head.starts_with("get /chat http/1.1\r\n"),
            "origin-form upstream: {head}"
        );
        assert!(
            head.contains("\r\nsec-websocket-key: dghlihnhbxbszsbub25jzq==\r\n"),
            "{head}"
        );
    }
    assert!(heads[1].contains("\r\nx-hyper-path: 1\r\n"), "{}", heads[1]);

    // Counted and logged as tunnels: one TCP entry each, with the bytes both ways.
    assert_eq!(proxy.stat("tunnels_total").await, 2);
    let entry = proxy
        .log_entry("the first tunnel", |v| {
            v["upstream_cluster"] == "outbound|80||ws.example.com" && v["bytes_received"].as_u64() > Some(0)
        })
        .await;
    assert_eq!(entry["bytes_sent"], entry["bytes_received"], "an echo: {entry}");

    // REGISTRY_ONLY still applies: an upgrade to a host outside the registry goes nowhere.
    let (_s, r) = upgrade(
        proxy.addr(),
        "http://elsewhere.example.com/chat",
        "elsewhere.example.com",
    )
    .await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(ws.requests().len(), 2);
    assert_eq!(proxy.stat("tunnels_total").await, 2);
    proxy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// E. CONNECT to an HTTP port is served as HTTP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_an_http_port_routes_and_logs_each_request() {
    let ip = unique_loopback();
    let web = HttpUpstream::start(SocketAddr::new(IpAddr::V4(ip), 0), "web");
    let config = service("web.example.com", 80, "HTTP", web.addr());
    let mut proxy = Proxy::start(&config, &[]).await;

    // curl's --proxytunnel: CONNECT web.example.com:80, then the request inside the tunnel.
    let proxy_url = format!("http://{}", proxy.addr());
    let out = tokio::task::spawn_blocking(move || {
        curl_command()
            .args(["-sS", "--max-time", "10", "-p", "-x", &proxy_url])
            .args(["-H", "x-request-id: via-tunnel", "http://web.example.com/curl"])
            .output()
            .expect("these tests need curl on PATH")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "curl: {}", text(&out.stderr));
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["path"], "/curl", "{body}");
    let entry = proxy.log_entry("the tunnelled request", |v| v["path"] == "/curl").await;
    assert_eq!(entry["method"], "GET", "{entry}");
    assert_eq!(entry["response_code"], 200, "{entry}");
    assert_eq!(entry["request_id"], "via-tunnel", "{entry}");
    assert_eq!(entry["upstream_cluster"], "outbound|80||web.example.com", "{entry}");

    // Raw: several requests on one tunnel, each routed on its own.
    let mut s = connect_tunnel(proxy.addr(), "web.example.com:80").await;
    s.send(b"GET /one HTTP/1.1\r\nHost: web.example.com\r\n\r\n")
        .await
        .unwrap();
    let r = s.read_response("GET", PATIENCE).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let seen = web.last().unwrap();
    assert_eq!(
        (seen.path.as_str(), seen.host.as_deref()),
        ("/one", Some("web.example.com"))
    );

    // A request that names no host goes to the CONNECT target.
    s.send(b"GET /two HTTP/1.1\r\n\r\n").await.unwrap();
    let r = s.read_response("GET", PATIENCE).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let seen = web.last().unwrap();
    assert_eq!(seen.path, "/two");
    assert!(
        seen.host.as_deref().is_some_and(|h| h.starts_with("web.example.com")),
        "{seen:?}"
    );

    // A request for a host outside the registry is refused, as on the listener itself.
    s.send(b"GET /three HTTP/1.1\r\nHost: blocked.example.com\r\n\r\n")
        .await
        .unwrap();
    let r = s.read_response("GET", PATIENCE).await.unwrap();
    assert_eq!(r.status, 502, "REGISTRY_ONLY applies inside the tunnel: {r:?}");
    assert_eq!(web.requests(), 3, "the refused request never reached the upstream");
    let entry = proxy.log_entry("the refused request", |v| v["path"] == "/three").await;
    assert_eq!(entry["response_flags"], "NR", "{entry}");
    assert_eq!(entry["upstream_cluster"], "BlackHoleCluster", "{entry}");
    for path in ["/one", "/two"] {
        let entry = proxy.log_entry(path, |v| v["path"] == path).await;
        assert_eq!(entry["response_code"], 200, "{entry}");
    }
    proxy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// F. A TLS tunnel must start with a ClientHello

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_that_starts_with_change_cipher_spec_is_refused() {
    let ip = unique_loopback();
    let echo = TcpEcho::start(SocketAddr::new(IpAddr::V4(ip), 0), "echo");
    let config = service("tcp.example.com", 9000, "TCP", echo.addr());
    let mut proxy = Proxy::start(&config, &[]).await;

    // A ClientHello first, naming the CONNECT target: relayed.
    let hello = client_hello("tcp.example.com");
    let mut s = connect_tunnel(proxy.addr(), "tcp.example.com:9000").await;
    s.send(&hello).await.unwrap();
    assert_eq!(s.read_exact(hello.len(), PATIENCE).await.unwrap(), hello);
    drop(s);

    // A ChangeCipherSpec record first hides the ClientHello (and its SNI, another host) from
    // the tunnel's check; a TLS server that skips it would take the hello.
    let mut attack = vec![0x14, 0x03, 0x03, 0x00, 0x01, 0x01];
    attack.extend_from_slice(&client_hello("evil.example.com"));
    let mut s = connect_tunnel(proxy.addr(), "tcp.example.com:9000").await;
    s.send(&attack).await.unwrap();
    let (back, closed) = s.read_for(PATIENCE).await;
    assert!(closed, "the tunnel stayed open");
    assert!(
        find(&back, &attack[6..]).is_none(),
        "the ClientHello reached the upstream: {back:?}"
    );
    assert_eq!(proxy.stat("tunnel_bad_traffic_total").await, 1);
    assert_eq!(proxy.stat("tunnel_sni_mismatch_total").await, 0);
    proxy.assert_healthy();
}
