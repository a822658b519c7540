//! HTTP/2 and gRPC through the real `meshentry proxy` binary: HTTP/2 prior-knowledge (h2c)
//! clients on the explicit proxy listener, `HTTP2` and `GRPC` service ports reached over HTTP/2
//! whatever the client spoke, one multiplexed upstream connection per host, failover and
//! timeouts on HTTP/2 upstreams, and real gRPC (Debian's python3-grpcio) calls with statuses,
//! messages and trailers passed through, and the proxy's own errors in gRPC terms.
//!
//! Clients: curl (`--http2-prior-knowledge` in origin form, `-x` for HTTP/1.1), hyper where a
//! test needs many concurrent streams on one connection, and grpcio. Upstreams: testutil's
//! HTTP/1.1 and h2c echo servers, which report the version they saw, and a grpcio server.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshentry_testutil::{HttpUpstream, Proxy, ProxyProcess, closed_port, eventually, settled, unique_loopback};
use serde_json::Value;
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");

const PATIENCE: Duration = Duration::from_secs(20);

/// A STATIC ServiceEntry for `host` on port `port` with `protocol`, one endpoint per address.
fn service(host: &str, port: u16, protocol: &str, endpoints: &[SocketAddr]) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{address: {}, ports: {{p: {}}}}}", a.ip(), a.port()))
        .collect();
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: p, protocol: {protocol}}}]
  resolution: STATIC
  endpoints: [{endpoints}]
",
        name = host.split('.').next().unwrap(),
        endpoints = endpoints.join(", "),
    )
}

/// The proxy with one worker, so "one upstream connection per host per worker" is one.
async fn start(config: &str, extra: &[&str]) -> Proxy {
    Proxy::builder(BIN)
        .config(config)
        .args(["--outbound-policy", "REGISTRY_ONLY", "--workers", "1"])
        .args(extra.iter().copied())
        .start()
        .await
}

/// How long upstream work must have stopped changing before it is counted: for claims that
/// some work never happens.
const QUIET: Duration = Duration::from_millis(300);

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

// ---------------------------------------------------------------------------------------------
// curl

#[derive(Debug)]
struct Curl {
    /// curl's exit code.
    code: i32,
    status: u16,
    /// `%{http_version}` of the exchange with the proxy: `1.1` or `2`.
    version: String,
    body: String,
    headers: String,
    stderr: String,
}

impl Curl {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }
}

const MARK: &str = "\n@@meshentry@@";

/// Runs curl (no curlrc, no proxy from the environment) off the runtime.
async fn curl(args: &[&str]) -> Curl {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let headers = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = meshentry_testutil::curl_command();
        cmd.args(["-sS", "--max-time", "20", "-D"])
            .arg(headers.path())
            .arg("-w")
            .arg(format!("{MARK}%{{http_code}} %{{http_version}}"))
            .args(&args);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl (apt-get install curl; scripts/test does this): {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, tail) = stdout
            .rsplit_once(MARK)
            .unwrap_or_else(|| panic!("no marker: {stdout:?}"));
        let (status, version) = tail.trim().split_once(' ').unwrap();
        Curl {
            code: out.status.code().unwrap_or(-1),
            status: status.parse().unwrap_or(0),
            version: version.to_string(),
            body: body.to_string(),
            headers: std::fs::read_to_string(headers.path())
                .unwrap_or_default()
                .to_ascii_lowercase(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// curl speaking HTTP/2 with prior knowledge to the proxy listener, in origin form with
/// `:authority` set to `authority` (curl turns a `Host` header into `:authority`).
async fn curl_h2c(proxy: &Proxy, authority: &str, path: &str, extra: &[&str]) -> Curl {
    let url = format!("{}{path}", proxy.url());
    let host = format!("Host: {authority}");
    let mut args = vec!["--http2-prior-knowledge", "-H", host.as_str()];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = curl(&args).await;
    assert_eq!(out.code, 0, "curl --http2-prior-knowledge failed: {}", out.stderr);
    assert_eq!(out.version, "2", "{out:?}");
    out
}

/// `curl -x proxy url` (HTTP/1.1, absolute form).
async fn curl_via(proxy: &Proxy, urls: &[&str], extra: &[&str]) -> Curl {
    let p = proxy.url();
    let mut args = vec!["-x", p.as_str()];
    args.extend_from_slice(extra);
    args.extend_from_slice(urls);
    let out = curl(&args).await;
    assert_eq!(out.code, 0, "curl -x failed: {}", out.stderr);
    out
}

/// One counter of the admin `/stats` page.
async fn stat(proxy: &Proxy, name: &str) -> u64 {
    let out = curl(&["--noproxy", "*", &format!("http://{}/stats", proxy.admin)]).await;
    let key = format!("meshentry.{name}: ");
    out.body
        .lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .unwrap_or_else(|| panic!("/stats has no {name}: {out:?}"))
        .trim()
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// hyper clients

type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn h2_client(proxy: SocketAddr) -> H2Sender {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// `GET url` on `sender`: (status, body as JSON or Null).
async fn h2_get(mut sender: H2Sender, url: String) -> (u16, Value) {
    let req = Request::get(url.as_str()).body(Empty::new()).unwrap();
    let resp = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .unwrap_or_else(|_| panic!("GET {url}: no response"))
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

type H1Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn h1_client(proxy: SocketAddr) -> H1Sender {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// `GET path` in origin form with `Host: host`.
async fn h1_get(sender: &mut H1Sender, host: &str, path: &str) -> (u16, Value) {
    let req = Request::get(path).header("host", host).body(Empty::new()).unwrap();
    sender.ready().await.unwrap();
    let resp = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

// ---------------------------------------------------------------------------------------------
// h2c clients

#[tokio::test]
async fn h2c_clients_reach_http1_and_http2_upstreams() {
    let ip = unique_loopback();
    let h1 = HttpUpstream::start(at(ip, 8080), "h1-up");
    let h2 = HttpUpstream::start_h2c(at(ip, 8081), "h2-up");
    let config =
        service("web.example.com", 80, "HTTP", &[h1.addr()]) + &service("api.example.com", 80, "HTTP2", &[h2.addr()]);
    let proxy = start(&config, &[]).await;

    let out = curl_h2c(&proxy, "web.example.com", "/one?x=1", &[]).await;
    assert_eq!(out.status, 200, "{out:?}");
    let v = out.json();
    assert_eq!(v["upstream"], "h1-up");
    assert_eq!(v["version"], "HTTP/1.1", "an HTTP port is reached over HTTP/1.1");
    assert_eq!(v["host"], "web.example.com", ":authority becomes Host");
    assert_eq!(v["uri"], "/one?x=1");

    let out = curl_h2c(&proxy, "api.example.com", "/two", &["--data-binary", "hello h2"]).await;
    assert_eq!(out.status, 200, "{out:?}");
    let v = out.json();
    assert_eq!(v["upstream"], "h2-up");
    assert_eq!(v["version"], "HTTP/2.0", "an HTTP2 port is reached over HTTP/2");
    assert_eq!(v["host"], "api.example.com");
    assert_eq!((v["method"].as_str(), v["path"].as_str()), (Some("POST"), Some("/two")));
    assert_eq!(v["body"], "hello h2");
    assert_eq!(v["headers"]["host"], Value::Null, "no Host beside :authority");

    // A name the registry does not know is refused as on HTTP/1.1.
    let out = curl_h2c(&proxy, "unknown.example.com", "/", &[]).await;
    assert_eq!(out.status, 502, "{out:?}");
    assert!(out.body.contains("REGISTRY_ONLY"), "{out:?}");
}

#[tokio::test]
async fn te_trailers_reaches_http2_upstreams_only() {
    let ip = unique_loopback();
    let h1 = HttpUpstream::start(at(ip, 8080), "h1-up");
    let h2 = HttpUpstream::start_h2c(at(ip, 8081), "h2-up");
    let config =
        service("web.example.com", 80, "HTTP", &[h1.addr()]) + &service("api.example.com", 80, "HTTP2", &[h2.addr()]);
    let proxy = start(&config, &[]).await;

    let out = curl_h2c(&proxy, "api.example.com", "/", &["-H", "te: trailers"]).await;
    assert_eq!(out.json()["headers"]["te"], "trailers", "HTTP/2 allows te: trailers");
    // From an HTTP/1.1 client too, where `te` is hop-by-hop but means the same.
    let out = curl_via(&proxy, &["http://api.example.com/"], &["-H", "te: trailers"]).await;
    assert_eq!(out.json()["headers"]["te"], "trailers");
    let out = curl_h2c(&proxy, "web.example.com", "/", &["-H", "te: trailers"]).await;
    assert_eq!(out.json()["headers"]["te"], Value::Null, "hop-by-hop on HTTP/1.1");
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 clients to HTTP/2 ports

#[tokio::test]
async fn http1_clients_reach_http2_services_over_http2() {
    let ip = unique_loopback();
    let h1 = HttpUpstream::start(at(ip, 8080), "h1-up");
    let h2 = HttpUpstream::start_h2c(at(ip, 8081), "h2-up");
    let config =
        service("web.example.com", 80, "HTTP", &[h1.addr()]) + &service("api.example.com", 80, "HTTP2", &[h2.addr()]);
    let proxy = start(&config, &[]).await;

    // curl -x: absolute form on the fast path, which hands the request to the general path.
    let out = curl_via(&proxy, &["http://api.example.com/a"], &["--data-binary", "body bytes"]).await;
    assert_eq!((out.status, out.version.as_str()), (200, "1.1"), "{out:?}");
    let v = out.json();
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(v["host"], "api.example.com");
    assert_eq!(v["body"], "body bytes");
    assert!(!out.headers.contains("connection: close"), "{}", out.headers);

    // Origin form on one keep-alive connection: an HTTP2 port, then an HTTP port, then the
    // HTTP2 port again, all answered after the hand-off.
    let mut c = h1_client(proxy.http()).await;
    let (s1, v1) = h1_get(&mut c, "api.example.com", "/b").await;
    let (s2, v2) = h1_get(&mut c, "web.example.com", "/c").await;
    let (s3, v3) = h1_get(&mut c, "api.example.com", "/d").await;
    assert_eq!((s1, s2, s3), (200, 200, 200));
    assert_eq!(
        (v1["version"].as_str(), v1["path"].as_str()),
        (Some("HTTP/2.0"), Some("/b"))
    );
    assert_eq!(
        (v2["version"].as_str(), v2["upstream"].as_str()),
        (Some("HTTP/1.1"), Some("h1-up"))
    );
    assert_eq!(v3["version"], "HTTP/2.0");
    assert_eq!(h2.connections(), 1, "every request shared the one upstream connection");
    // Each request counted once, though the fast path routed the first before handing it off.
    assert_eq!(stat(&proxy, "http_requests_total").await, 4);
}

#[tokio::test]
async fn concurrent_requests_multiplex_over_one_upstream_connection() {
    let ip = unique_loopback();
    let h2 = HttpUpstream::start_h2c(at(ip, 8081), "h2-up");
    let proxy = start(&service("api.example.com", 80, "HTTP2", &[h2.addr()]), &[]).await;

    // 40 streams on one h2c client connection and 8 HTTP/1.1 client connections, all at once;
    // each request waits 300 ms upstream, so they overlap.
    let mut calls = tokio::task::JoinSet::new();
    let sender = h2_client(proxy.http()).await;
    for i in 0..40 {
        calls.spawn(h2_get(
            sender.clone(),
            format!("http://api.example.com/delay/300?h2={i}"),
        ));
    }
    for i in 0..8 {
        let addr = proxy.http();
        calls.spawn(async move {
            let mut c = h1_client(addr).await;
            h1_get(&mut c, "api.example.com", &format!("/delay/300?h1={i}")).await
        });
    }
    for (status, v) in calls.join_all().await {
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["version"], "HTTP/2.0");
        assert_eq!(v["connection"], 1, "{v}");
    }
    assert_eq!(h2.requests(), 48);
    assert_eq!(
        h2.connections(),
        1,
        "one HTTP/2 connection per upstream host per worker"
    );
    // The proxy counts them the same way (Envoy's rq_total and cx_total).
    let host = cluster_host(&proxy, "outbound|80||api.example.com").await;
    assert_eq!(
        (host["requests"].as_u64(), host["connections"].as_u64()),
        (Some(48), Some(1)),
        "{host}"
    );
}

/// The only host of `cluster` on the admin `/clusters?format=json` page.
async fn cluster_host(proxy: &Proxy, cluster: &str) -> Value {
    let out = curl(&[
        "--noproxy",
        "*",
        &format!("http://{}/clusters?format=json", proxy.admin),
    ])
    .await;
    let v = out.json();
    let c = v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster)
        .unwrap_or_else(|| panic!("no cluster {cluster}: {v}"));
    c["hosts"][0].clone()
}

#[tokio::test]
async fn http2_upstreams_fail_over_time_out_and_report_errors() {
    let ip = unique_loopback();
    let live = HttpUpstream::start_h2c(at(ip, 8081), "h2-up");
    let dead = closed_port(ip);
    let config = service("api.example.com", 80, "HTTP2", &[dead, live.addr()])
        + &service("down.example.com", 80, "GRPC", &[closed_port(ip)]);
    let proxy = start(&config, &["--response-timeout", "1s"]).await;

    // Whichever host the balancer picks first, a refused connection moves on to the next.
    for i in 0..4 {
        let out = curl_via(&proxy, &[&format!("http://api.example.com/f{i}")], &[]).await;
        assert_eq!(out.status, 200, "{out:?}");
        assert_eq!(out.json()["upstream"], "h2-up");
    }

    // No answer in time: 504 for this stream only; the connection carries the next request.
    let sender = h2_client(proxy.http()).await;
    let (status, _) = h2_get(sender.clone(), "http://api.example.com/delay/3000".into()).await;
    assert_eq!(status, 504);
    let (status, v) = h2_get(sender, "http://api.example.com/after".into()).await;
    assert_eq!((status, v["connection"].as_u64()), (200, Some(1)));
    assert_eq!(live.connections(), 1);

    // Nothing listening: a plain-HTTP client gets the usual 503, over either version.
    let out = curl_via(&proxy, &["http://down.example.com/"], &[]).await;
    assert_eq!(out.status, 503, "{out:?}");
    assert!(
        out.headers.contains("x-meshentry-response-flags: uf"),
        "{}",
        out.headers
    );
    assert!(out.body.contains("connection refused"), "{out:?}");
    let out = curl_h2c(&proxy, "down.example.com", "/", &[]).await;
    assert_eq!(out.status, 503, "{out:?}");
    assert!(!out.headers.contains("grpc-status"), "{}", out.headers);
}

// ---------------------------------------------------------------------------------------------
// gRPC

/// A python with grpcio: Debian's python3-grpcio installs into the system python, which a
/// python3 earlier on PATH (pyenv, a venv) may not see.
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

/// A grpcio server on `ip` (see grpc_peer.py), killed on drop.
struct GrpcServer {
    _process: ProxyProcess,
    addr: SocketAddr,
}

async fn grpc_server(ip: Ipv4Addr) -> GrpcServer {
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
    GrpcServer {
        _process: process,
        addr: at(ip, port),
    }
}

/// One call by a grpcio client through the proxy listener, with `:authority` `authority`.
async fn grpc_call(proxy: &Proxy, authority: &str, method: &str, arg: &str) -> Value {
    let out = tokio::process::Command::new(grpc_python())
        .args([GRPC_PEER, "client", &proxy.http().to_string(), authority, method, arg])
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("grpc_proxy")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpc client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[tokio::test]
async fn grpc_calls_pass_through_with_statuses_and_trailers() {
    let ip = unique_loopback();
    let server = grpc_server(ip).await;
    let config = service("echo.example.com", 50051, "GRPC", &[server.addr])
        + &service("down.example.com", 50051, "GRPC", &[closed_port(ip)]);
    let proxy = start(&config, &["--response-timeout", "2s"]).await;
    let echo = "echo.example.com:50051";

    // Unary: the reply and the trailing metadata (HTTP/2 trailers) arrive. grpcio servers
    // refuse requests without `te: trailers`, so this also shows it reached them.
    let v = grpc_call(&proxy, echo, "unary", "hello").await;
    assert_eq!(v["reply"]["echo"], "hello", "{v}");
    assert_eq!(v["trailers"]["x-trailer"], "t-hello", "{v}");

    // Server streaming: every message, in order.
    let v = grpc_call(&proxy, echo, "stream", "5").await;
    assert_eq!(
        v["replies"],
        serde_json::json!(["item-0", "item-1", "item-2", "item-3", "item-4"]),
        "{v}"
    );

    // A non-OK status and its message, as the server sent them.
    let v = grpc_call(&proxy, echo, "unary", "fail:no such widget (100% sure)").await;
    assert_eq!(v["code"], "FAILED_PRECONDITION", "{v}");
    assert_eq!(v["details"], "no such widget (100% sure)", "{v}");

    // The proxy's own errors in gRPC terms: nothing listening is UNAVAILABLE...
    let v = grpc_call(&proxy, "down.example.com:50051", "unary", "x").await;
    assert_eq!(v["code"], "UNAVAILABLE", "{v}");
    let details = v["details"].as_str().unwrap();
    assert!(details.contains("connection refused"), "{v}");
    // ...and an upstream slower than the response timeout is DEADLINE_EXCEEDED.
    let v = grpc_call(&proxy, echo, "unary", "sleep:4000").await;
    assert_eq!(v["code"], "DEADLINE_EXCEEDED", "{v}");
    assert!(
        v["details"].as_str().unwrap().contains("upstream request timeout"),
        "{v}"
    );

    // Still usable afterwards.
    let v = grpc_call(&proxy, echo, "unary", "again").await;
    assert_eq!(v["reply"]["echo"], "again", "{v}");
}

#[tokio::test]
async fn grpc_to_a_stopped_upstream_is_unavailable() {
    let ip = unique_loopback();
    let server = grpc_server(ip).await;
    let addr = server.addr;
    let proxy = start(&service("echo.example.com", 50051, "GRPC", &[addr]), &[]).await;
    let v = grpc_call(&proxy, "echo.example.com:50051", "unary", "before").await;
    assert_eq!(v["reply"]["echo"], "before", "{v}");

    // The pooled connection closes with the server; the next call finds nothing to connect to.
    drop(server);
    let v = grpc_call(&proxy, "echo.example.com:50051", "unary", "after").await;
    assert_eq!(v["code"], "UNAVAILABLE", "{v}");
}

// ---------------------------------------------------------------------------------------------
// Rapid reset (CVE-2023-44487): a raw HTTP/2 client that chooses every frame

/// Frame types and flags of RFC 9113 this client writes or reads.
mod frame {
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const CANCEL: u32 = 0x8;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    pub fn push(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).unwrap();
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// A GET of `path` on `authority` over http, in HPACK with no dynamic table and no Huffman
    /// coding: `:method GET` and `:scheme http` are static-table entries, `:authority` and
    /// `:path` literals with indexed names (RFC 7541 6.2.2).
    pub fn get(authority: &str, path: &str) -> Vec<u8> {
        let mut block = vec![0x82, 0x86];
        for (index, value) in [(0x01, authority), (0x04, path)] {
            block.extend_from_slice(&[index, u8::try_from(value.len()).unwrap()]);
            block.extend_from_slice(value.as_bytes());
        }
        block
    }
}

/// What the proxy told the raw client: the GOAWAY it sent (last stream id, error code, debug
/// data), if any, the last PING it acknowledged, and whether it closed the connection.
#[derive(Debug, Default)]
struct Heard {
    /// SETTINGS_MAX_CONCURRENT_STREAMS of the proxy's SETTINGS.
    max_streams: Option<u32>,
    goaway: Option<(u32, u32, String)>,
    pong: u64,
    closed: bool,
}

type Shared<T> = std::sync::Arc<std::sync::Mutex<T>>;

/// Reads the proxy's frames until the connection ends: answers SETTINGS and PING, records a
/// GOAWAY and PING acknowledgements in `heard` and wakes `changed` at each.
async fn read_frames(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    wr: std::sync::Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>,
    heard: Shared<Heard>,
    changed: std::sync::Arc<tokio::sync::Notify>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut head = [0u8; 9];
        if rd.read_exact(&mut head).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if rd.read_exact(&mut payload).await.is_err() {
            break;
        }
        let (kind, flags) = (head[3], head[4]);
        let reply = match kind {
            frame::SETTINGS if flags & frame::ACK == 0 => {
                for setting in payload.chunks_exact(6) {
                    if setting[..2] == [0, 0x3] {
                        heard.lock().unwrap().max_streams = Some(u32::from_be_bytes(setting[2..].try_into().unwrap()));
                    }
                }
                Some((frame::SETTINGS, &[][..]))
            }
            frame::PING if flags & frame::ACK == 0 => Some((frame::PING, &payload[..])),
            frame::PING if payload.len() == 8 => {
                heard.lock().unwrap().pong = u64::from_be_bytes(payload[..].try_into().unwrap());
                changed.notify_one();
                None
            }
            frame::GOAWAY if payload.len() >= 8 => {
                let last = u32::from_be_bytes(payload[0..4].try_into().unwrap()) & 0x7fff_ffff;
                let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                let debug = String::from_utf8_lossy(&payload[8..]).into_owned();
                heard.lock().unwrap().goaway.get_or_insert((last, code, debug));
                changed.notify_one();
                None
            }
            _ => None,
        };
        if let Some((kind, payload)) = reply {
            let mut out = Vec::new();
            frame::push(&mut out, kind, frame::ACK, 0, payload);
            // The writer may be gone (the proxy closed); the reader goes on to EOF.
            let _ = wr.lock().await.write_all(&out).await;
        }
    }
    heard.lock().unwrap().closed = true;
    changed.notify_one();
}

/// How a rapid-reset client sends its HEADERS + RST_STREAM pairs.
#[derive(Clone, Copy, Debug)]
struct Pacing {
    /// Pairs per write; a PING follows each write, and its acknowledgement is awaited before the
    /// next one, so the proxy never reads more than this many resets at once.
    batch: u32,
    /// Between a stream's HEADERS and its RST_STREAM: none (back to back, in one write), or
    /// long enough for the proxy to act on the stream first (then `batch` is 1).
    gap: Option<Duration>,
}

/// The CVE-2023-44487 pattern, paced as an attacker evading per-read limits would: on one h2c
/// connection, `pairs` HEADERS + RST_STREAM pairs for `GET path` on `authority`, paced by
/// `pacing`, so that no more than one stream is open at a time and the proxy reads fewer resets
/// of streams it has not accepted yet at once than h2's own limit on those (20). Stops at the
/// proxy's GOAWAY or close. Returns what the client heard and the pairs it wrote.
async fn rapid_reset(proxy: SocketAddr, authority: &str, path: &str, pairs: u32, pacing: Pacing) -> (Heard, u32) {
    use tokio::io::AsyncWriteExt;
    let tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (rd, wr) = tcp.into_split();
    let wr = std::sync::Arc::new(tokio::sync::Mutex::new(wr));
    let heard: Shared<Heard> = Default::default();
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let reader = tokio::spawn(read_frames(rd, wr.clone(), heard.clone(), changed.clone()));
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame::push(&mut hello, frame::SETTINGS, 0, 0, &[]);
    wr.lock().await.write_all(&hello).await.unwrap();

    let block = frame::get(authority, path);
    let batch = if pacing.gap.is_some() { 1 } else { pacing.batch };
    let (mut sent, mut ping) = (0, 0u64);
    'send: while sent < pairs {
        let mut out = Vec::new();
        for _ in 0..batch.min(pairs - sent) {
            let id = 2 * sent + 1;
            frame::push(
                &mut out,
                frame::HEADERS,
                frame::END_HEADERS | frame::END_STREAM,
                id,
                &block,
            );
            if let Some(gap) = pacing.gap {
                if wr.lock().await.write_all(&out).await.is_err() {
                    break 'send;
                }
                out.clear();
                tokio::time::sleep(gap).await;
            }
            frame::push(&mut out, frame::RST_STREAM, 0, id, &frame::CANCEL.to_be_bytes());
            sent += 1;
        }
        ping += 1;
        frame::push(&mut out, frame::PING, 0, 0, &ping.to_be_bytes());
        if wr.lock().await.write_all(&out).await.is_err() {
            break 'send;
        }
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                let notified = changed.notified();
                {
                    let h = heard.lock().unwrap();
                    if h.goaway.is_some() || h.closed {
                        return false;
                    }
                    if h.pong >= ping {
                        return true;
                    }
                }
                notified.await;
            }
        })
        .await;
        match waited {
            Ok(true) => {}
            Ok(false) => break 'send,
            Err(_) => panic!("no PING acknowledgement after {sent} pairs"),
        }
    }
    // After a GOAWAY the close follows; without one, the connection stays open.
    let ended = heard.lock().unwrap().goaway.is_some();
    let wait = if ended { PATIENCE } else { Duration::from_millis(200) };
    let _ = tokio::time::timeout(wait, reader).await;
    let heard = std::mem::take(&mut *heard.lock().unwrap());
    (heard, sent)
}

const BACK_TO_BACK: Pacing = Pacing { batch: 10, gap: None };

#[tokio::test]
async fn rapid_reset_gets_goaway_and_causes_bounded_upstream_work() {
    let ip = unique_loopback();
    let backend = HttpUpstream::start(at(ip, 8080), "rr-up");
    let proxy = start(&service("web.example.com", 80, "HTTP", &[backend.addr()]), &[]).await;

    let (heard, sent) = rapid_reset(proxy.http(), "web.example.com", "/", 8_000, BACK_TO_BACK).await;
    let (last, code, debug) = heard.goaway.unwrap_or_else(|| {
        panic!(
            "no GOAWAY after {sent} HEADERS+RST_STREAM pairs (closed: {}); the backend saw {} connections and {} requests",
            heard.closed,
            backend.connections(),
            backend.requests()
        )
    });
    assert_eq!(code, frame::ENHANCE_YOUR_CALM, "GOAWAY {last} {code} {debug:?}");
    // The last stream the proxy may have acted on: a bounded number of the client's streams,
    // whatever it kept sending meanwhile (the default budget is 100).
    assert!(
        last < 2 * 300,
        "GOAWAY came only after stream {last} ({sent} pairs sent)"
    );
    assert!(heard.closed, "the connection is closed after the GOAWAY");
    assert_eq!(heard.max_streams, Some(100), "--http2-max-concurrent-streams");

    // Streams reset before the proxy acted on them reach nothing upstream.
    let (conns, reqs) = settled(QUIET, PATIENCE, || async {
        (backend.connections(), backend.requests())
    })
    .await;
    assert!(
        conns <= 100 && reqs <= 100,
        "{sent} resets made {conns} upstream connections and {reqs} upstream requests"
    );
    assert_eq!(stat(&proxy, "downstream_rq_too_many_premature_resets").await, 1);
    let resets = stat(&proxy, "downstream_rq_rx_reset").await;
    assert!(resets >= 100, "{resets}");
    assert!(stat(&proxy, "downstream_rq_reset_before_routing").await >= resets - conns as u64);

    // A well-behaved client on another connection is still served, over HTTP/2 and HTTP/1.1.
    let out = curl_h2c(&proxy, "web.example.com", "/after", &[]).await;
    assert_eq!(out.status, 200, "{out:?}");
    let (status, v) = h2_get(h2_client(proxy.http()).await, "http://web.example.com/again".into()).await;
    assert_eq!(status, 200, "{v}");
    let out = curl_via(&proxy, &["http://web.example.com/h1"], &[]).await;
    assert_eq!(out.status, 200, "{out:?}");
}

#[tokio::test]
async fn streams_reset_with_their_headers_reach_nothing_upstream() {
    // With the reset budget out of the way, what is left is the check before routing: a stream
    // whose RST_STREAM arrived with its HEADERS is dropped before any upstream work.
    let ip = unique_loopback();
    let h1 = HttpUpstream::start(at(ip, 8080), "h1-up");
    let h2 = HttpUpstream::start_h2c(at(ip, 8081), "h2-up");
    let config =
        service("web.example.com", 80, "HTTP", &[h1.addr()]) + &service("api.example.com", 80, "HTTP2", &[h2.addr()]);
    let proxy = start(&config, &["--http2-max-premature-resets", "1000000"]).await;

    for authority in ["web.example.com", "api.example.com"] {
        let (heard, sent) = rapid_reset(proxy.http(), authority, "/", 2_000, BACK_TO_BACK).await;
        assert_eq!(sent, 2_000);
        assert!(heard.goaway.is_none(), "{heard:?}");
    }
    let work = settled(QUIET, PATIENCE, || async {
        [h1.connections(), h1.requests(), h2.connections(), h2.requests()]
    })
    .await;
    assert!(
        work.iter().all(|&n| n <= 2),
        "4000 early resets made upstream work: {work:?}"
    );
    assert!(stat(&proxy, "downstream_rq_reset_before_routing").await >= 3_990);

    // The connection limits are unchanged for well-behaved clients.
    let out = curl_h2c(&proxy, "api.example.com", "/ok", &[]).await;
    assert_eq!(
        (out.status, out.json()["upstream"].as_str()),
        (200, Some("h2-up")),
        "{out:?}"
    );
}

#[tokio::test]
async fn resets_after_the_proxy_acted_are_bounded_by_the_budget() {
    // Each stream is reset only after the proxy sent its request upstream (the backend answers
    // after a second): every reset costs an upstream request until the budget runs out.
    let ip = unique_loopback();
    let backend = HttpUpstream::start(at(ip, 8080), "slow-up");
    let config = service("web.example.com", 80, "HTTP", &[backend.addr()]);
    let proxy = start(&config, &["--http2-max-premature-resets", "20"]).await;

    let pacing = Pacing {
        batch: 1,
        gap: Some(Duration::from_millis(20)),
    };
    let (heard, sent) = rapid_reset(proxy.http(), "web.example.com", "/delay/1000", 1_000, pacing).await;
    let (_, code, _) = heard.goaway.unwrap_or_else(|| panic!("no GOAWAY after {sent} pairs"));
    assert_eq!(code, frame::ENHANCE_YOUR_CALM);
    let reqs = settled(QUIET, PATIENCE, || async { backend.requests() }).await;
    assert!(
        (10..=30).contains(&sent) && reqs <= 30,
        "GOAWAY after {sent} late resets; {reqs} upstream requests"
    );
}
