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

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshentry_testutil::{HttpUpstream, TcpEcho, curl_command, eventually, unique_loopback};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
    inner: support::Proxy,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Proxy {
    /// REGISTRY_ONLY, one worker, a JSON access log, and the `extra` flags.
    async fn start(config: &str, extra: &[&str]) -> Proxy {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("access.log");
        let log_arg = log.display().to_string();
        let mut args = vec![
            "--outbound-policy",
            "REGISTRY_ONLY",
            "--workers",
            "1",
            "--access-log",
            &log_arg,
            "--access-log-format",
            "json",
        ];
        args.extend_from_slice(extra);
        let inner = support::start_proxy(config, &args).await;
        Proxy {
            inner,
            log,
            _log_dir: log_dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.inner.addr
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

/// Reads up to the end of a response head: the head and whatever followed it.
async fn read_head(s: &mut TcpStream, within: Duration) -> (String, Vec<u8>) {
    let deadline = Instant::now() + within;
    let mut buf = Vec::new();
    loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            return (String::from_utf8_lossy(&buf[..i]).into_owned(), buf[i + 4..].to_vec());
        }
        let mut chunk = [0u8; 8192];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => panic!(
                "no complete response head within {within:?}; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Err(e)) => panic!("reading a response head: {e}; got {:?}", String::from_utf8_lossy(&buf)),
            Ok(Ok(n)) => n,
        };
        assert!(
            n > 0,
            "connection closed before a complete response head; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn status(head: &str) -> u16 {
    head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Reads until the peer closes (`true`) or `within` passes (`false`): what arrived, and how.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    loop {
        let mut chunk = [0u8; 8192];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads exactly `n` bytes.
async fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut buf))
        .await
        .expect("the bytes did not arrive in time")
        .unwrap();
    buf
}

/// Opens a CONNECT tunnel to `target` through the proxy; panics unless it is answered 200.
async fn connect_tunnel(proxy: SocketAddr, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, rest) = read_head(&mut s, PATIENCE).await;
    assert_eq!(status(&head), 200, "CONNECT {target}: {head}");
    assert!(rest.is_empty(), "bytes after the CONNECT response: {rest:?}");
    s
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
// Backends that a test drives byte by byte

/// What a raw backend received: each complete request, as bytes.
type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

/// Where a complete HTTP/1.1 request that starts `buf` ends (head, then a chunked body with
/// its trailer section, or a Content-Length body), if it has all arrived.
fn request_end(buf: &[u8]) -> Option<usize> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut at = head_end;
        loop {
            let line_end = at + find(&buf[at..], b"\r\n")?;
            let line = String::from_utf8_lossy(&buf[at..line_end]).into_owned();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // The trailer section: fields, then an empty line.
                loop {
                    let end = at + find(&buf[at..], b"\r\n")?;
                    let empty = end == at;
                    at = end + 2;
                    if empty {
                        return Some(at);
                    }
                }
            }
            at += size + 2;
            if at > buf.len() {
                return None;
            }
        }
    }
    let length = header(&head, "content-length").map_or(0, |v| v.parse::<usize>().unwrap());
    (buf.len() >= head_end + length).then_some(head_end + length)
}

/// A TCP server on `ip` that hands each connection to `serve`, with the shared record.
async fn raw_server<F, Fut>(ip: Ipv4Addr, serve: F) -> (SocketAddr, Seen)
where
    F: Fn(TcpStream, Seen) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s, record.clone()));
        }
    });
    (addr, seen)
}

/// Records each request whole and answers it `200 ok`.
async fn recording(mut s: TcpStream, seen: Seen) {
    let mut buf = Vec::new();
    loop {
        while let Some(end) = request_end(&buf) {
            seen.lock().unwrap().push(buf.drain(..end).collect());
            if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .is_err()
            {
                return;
            }
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Answers a request with the start of a 100-byte body, then sends nothing more.
async fn stalling(mut s: TcpStream, seen: Seen) {
    let mut buf = Vec::new();
    while request_end(&buf).is_none() {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    seen.lock().unwrap().push(buf);
    let _ = s
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello")
        .await;
    // Holds the connection open without a byte more, until the proxy gives up on it.
    let mut rest = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(60), s.read(&mut rest)).await;
}

/// A WebSocket-like server: a request with `Upgrade: websocket` gets a 101 and then every
/// byte back; any other request gets 426.
async fn upgrading(mut s: TcpStream, seen: Seen) {
    let mut buf = Vec::new();
    while request_end(&buf).is_none() {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let end = request_end(&buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    seen.lock().unwrap().push(buf[..end].to_vec());
    let upgrade = header(&head, "upgrade") == Some("websocket")
        && header(&head, "connection").is_some_and(|c| c.contains("upgrade"));
    if !upgrade {
        let _ = s
            .write_all(b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    }
    let _ = s
        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n")
        .await;
    // The upgraded stream: echo, starting with anything sent right after the head.
    let _ = s.write_all(&buf[end..]).await;
    let (mut r, mut w) = s.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
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

    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(
        b"POST http://web.example.com/upload HTTP/1.1\r\nHost: web.example.com\r\n\
          Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, _) = read_head(&mut s, PATIENCE).await;
    assert_eq!(
        status(&head),
        400,
        "a chunk size that is not hex is the client's error: {head}"
    );
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
    let (_, closed) = read_until_closed(&mut s, PATIENCE).await;
    assert!(closed, "the body's extent is unknown, so the connection is closed");

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

    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(
        b"POST http://web.example.com/slow HTTP/1.1\r\nHost: web.example.com\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    let started = Instant::now();
    // The proxy's --response-timeout (60 s) would otherwise be the first to end it.
    let (head, _) = read_head(&mut s, Duration::from_secs(8)).await;
    let waited = started.elapsed();
    assert_eq!(status(&head), 408, "{head}");
    assert!(
        waited >= Duration::from_millis(900),
        "answered after {waited:?}, before the idle timeout"
    );
    let (_, closed) = read_until_closed(&mut s, PATIENCE).await;
    assert!(closed, "the rest of the body will not be read: the connection closes");

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
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(
        b"POST http://web.example.com/steady HTTP/1.1\r\nHost: web.example.com\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..4 {
        s.write_all(b"1\r\nx\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let (head, _) = read_head(&mut s, PATIENCE).await;
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(web.last().unwrap().body.as_ref(), b"xxxx");
    assert_eq!(proxy.stat("downstream_rq_idle_timeout").await, 1);
    proxy.assert_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_that_stalls_closes_the_connection() {
    let ip = unique_loopback();
    let (stall, seen) = raw_server(ip, stalling).await;
    let config = service("stall.example.com", 80, "HTTP", stall) + &hyper_path_rule("stall.example.com");
    let mut proxy = Proxy::start(&config, &["--stream-idle-timeout", "1s"]).await;

    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"GET http://stall.example.com/ HTTP/1.1\r\nHost: stall.example.com\r\n\r\n")
        .await
        .unwrap();
    let (head, mut body) = read_head(&mut s, PATIENCE).await;
    assert_eq!(status(&head), 200, "{head}");
    let started = Instant::now();
    let (more, closed) = read_until_closed(&mut s, Duration::from_secs(8)).await;
    body.extend_from_slice(&more);
    assert!(closed, "the proxy kept a stalled response open past the idle timeout");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(body, b"hello", "what the upstream sent, and nothing else");
    assert_eq!(seen.lock().unwrap().len(), 1);

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
    let (raw, seen) = raw_server(ip, recording).await;
    let config = service("raw.example.com", 80, "HTTP", raw) + &hyper_path_rule("raw.example.com");
    let mut proxy = Proxy::start(&config, &[]).await;

    for method in ["GET", "POST"] {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let req = format!(
            "{method} http://raw.example.com/q HTTP/1.1\r\nHost: raw.example.com\r\nTransfer-Encoding: chunked\r\n\
             Trailer: x-sum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, _) = read_head(&mut s, PATIENCE).await;
        assert_eq!(status(&head), 200, "{method}: {head}");
        let got = text(seen.lock().unwrap().last().unwrap());
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
    assert_eq!(seen.lock().unwrap().len(), 2);

    // A GET that declares no body still has none.
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"GET http://raw.example.com/empty HTTP/1.1\r\nHost: raw.example.com\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut s, PATIENCE).await;
    assert_eq!(status(&head), 200, "{head}");
    let got = text(seen.lock().unwrap().last().unwrap()).to_ascii_lowercase();
    assert!(got.starts_with("get /empty http/1.1\r\n"), "{got}");
    assert!(!got.contains("transfer-encoding"), "{got}");
    assert!(got.ends_with("\r\n\r\n"), "{got}");
    proxy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// D. WebSocket through an absolute-form request

/// Sends a WebSocket upgrade for `url` and returns the connection, the response head and
/// what followed it.
async fn upgrade(proxy: SocketAddr, url: &str, host: &str) -> (TcpStream, String, Vec<u8>) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let req = format!(
        "GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (head, rest) = read_head(&mut s, PATIENCE).await;
    (s, head, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_through_an_absolute_form_request_is_bridged() {
    let ip = unique_loopback();
    let (ws, seen) = raw_server(ip, upgrading).await;
    let config = service("ws.example.com", 80, "HTTP", ws)
        + &service("wsvs.example.com", 80, "HTTP", ws)
        + &hyper_path_rule("wsvs.example.com");
    let mut proxy = Proxy::start(&config, &[]).await;

    for host in ["ws.example.com", "wsvs.example.com"] {
        let (mut s, head, rest) = upgrade(proxy.addr(), &format!("http://{host}/chat"), host).await;
        assert_eq!(status(&head), 101, "{host}: {head}");
        assert!(rest.is_empty(), "{host}: bytes after the 101: {rest:?}");
        assert_eq!(header(&head, "upgrade"), Some("websocket"), "{head}");
        for message in [&b"first frame"[..], b"second, after the first came back"] {
            s.write_all(message).await.unwrap();
            assert_eq!(read_exact(&mut s, message.len()).await, message, "{host}");
        }
        s.shutdown().await.unwrap();
        let (rest, closed) = read_until_closed(&mut s, PATIENCE).await;
        assert!(closed && rest.is_empty(), "{host}: {rest:?}");
    }
    let heads: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| text(r).to_ascii_lowercase())
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
    let (_s, head, _) = upgrade(
        proxy.addr(),
        "http://elsewhere.example.com/chat",
        "elsewhere.example.com",
    )
    .await;
    assert_eq!(status(&head), 502, "{head}");
    assert_eq!(seen.lock().unwrap().len(), 2);
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
    s.write_all(b"GET /one HTTP/1.1\r\nHost: web.example.com\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut s, PATIENCE).await;
    assert_eq!(status(&head), 200, "{head}");
    let seen = web.last().unwrap();
    assert_eq!(
        (seen.path.as_str(), seen.host.as_deref()),
        ("/one", Some("web.example.com"))
    );

    // A request that names no host goes to the CONNECT target.
    s.write_all(b"GET /two HTTP/1.1\r\n\r\n").await.unwrap();
    let (head, _) = read_head(&mut s, PATIENCE).await;
    assert_eq!(status(&head), 200, "{head}");
    let seen = web.last().unwrap();
    assert_eq!(seen.path, "/two");
    assert!(
        seen.host.as_deref().is_some_and(|h| h.starts_with("web.example.com")),
        "{seen:?}"
    );

    // A request for a host outside the registry is refused, as on the listener itself.
    s.write_all(b"GET /three HTTP/1.1\r\nHost: blocked.example.com\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut s, PATIENCE).await;
    assert_eq!(status(&head), 502, "REGISTRY_ONLY applies inside the tunnel: {head}");
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
    s.write_all(&hello).await.unwrap();
    assert_eq!(read_exact(&mut s, hello.len()).await, hello);
    drop(s);

    // A ChangeCipherSpec record first hides the ClientHello (and its SNI, another host) from
    // the tunnel's check; a TLS server that skips it would take the hello.
    let mut attack = vec![0x14, 0x03, 0x03, 0x00, 0x01, 0x01];
    attack.extend_from_slice(&client_hello("evil.example.com"));
    let mut s = connect_tunnel(proxy.addr(), "tcp.example.com:9000").await;
    s.write_all(&attack).await.unwrap();
    let (back, closed) = read_until_closed(&mut s, PATIENCE).await;
    assert!(closed, "the tunnel stayed open");
    assert!(
        find(&back, &attack[6..]).is_none(),
        "the ClientHello reached the upstream: {back:?}"
    );
    assert_eq!(proxy.stat("tunnel_bad_traffic_total").await, 1);
    assert_eq!(proxy.stat("tunnel_sni_mismatch_total").await, 0);
    proxy.assert_healthy();
}
