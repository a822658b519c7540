//! End-to-end robustness tests of `meshentry proxy` (issue 4): bad client traffic (malformed and
//! oversized request heads, slow clients, non-TLS bytes and bad ClientHellos in CONNECT tunnels),
//! misbehaving upstreams (refusing, resetting, stalling), load balancing, keep-alive and the admin
//! API.
//!
//! Every test runs the real binary on its own loopback addresses, with STATIC endpoints on
//! 127.x addresses and `--outbound-policy REGISTRY_ONLY` (or a REGISTRY_ONLY Sidecar), so a routing
//! bug cannot send traffic anywhere but loopback. Clients are real: curl, raw sockets for traffic
//! no well-behaved client would send, hyper and tokio-rustls where a test needs control over
//! connections or TLS.

#![allow(clippy::unwrap_used)]

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use meshentry_testutil::pki::{client_config, server_config};
use meshentry_testutil::raw::{self, RawClient, RawResponse};
use meshentry_testutil::{
    HttpUpstream, LeafSpec, Reset, Stall, TcpEcho, TestCa, TlsUpstream, closed_port, curl_command, eventually,
    unique_loopback,
};
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");

/// Generous bound for things that should take milliseconds, so a loaded CI machine does not
/// fail a test that is really about "does not hang".
const PATIENCE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Configuration

/// A STATIC ServiceEntry in `namespace` for `host` with one port; each endpoint is an address and
/// a weight (0 = unset).
fn static_entry_in(
    namespace: &str,
    name: &str,
    host: &str,
    port: u16,
    protocol: &str,
    eps: &[(SocketAddr, u32)],
) -> String {
    let port_name = protocol.to_ascii_lowercase();
    let mut y = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  hosts: [{host}]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n\
         \x20 ports:\n  - {{number: {port}, name: {port_name}, protocol: {protocol}}}\n  endpoints:\n"
    );
    for (addr, weight) in eps {
        let weight = if *weight > 0 {
            format!(", weight: {weight}")
        } else {
            String::new()
        };
        y.push_str(&format!(
            "  - {{address: \"{}\", ports: {{{port_name}: {}}}{weight}}}\n",
            addr.ip(),
            addr.port()
        ));
    }
    y.push_str("---\n");
    y
}

/// [`static_entry_in`] the `default` namespace, with unweighted endpoints.
fn static_entry(name: &str, host: &str, port: u16, protocol: &str, eps: &[SocketAddr]) -> String {
    let eps: Vec<(SocketAddr, u32)> = eps.iter().map(|a| (*a, 0)).collect();
    static_entry_in("default", name, host, port, protocol, &eps)
}

/// A DestinationRule in `namespace` setting `loadBalancer.simple` for `host`, with an optional
/// `exportTo`.
fn lb_rule(namespace: &str, name: &str, host: &str, simple: &str, export_to: Option<&str>) -> String {
    let export = export_to.map_or(String::new(), |e| format!("  exportTo: [\"{e}\"]\n"));
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  host: {host}\n{export}  trafficPolicy:\n    loadBalancer: {{simple: {simple}}}\n---\n"
    )
}

// ---------------------------------------------------------------------------------------------
// The proxy under test

struct Proxy {
    inner: meshentry_testutil::Proxy,
    /// The explicit HTTP proxy listener.
    http: SocketAddr,
    admin: SocketAddr,
}

impl Proxy {
    /// Starts the proxy on `yaml` with REGISTRY_ONLY and the `extra` flags.
    async fn start(yaml: &str, extra: &[&str]) -> Proxy {
        let mut args = vec!["--outbound-policy", "REGISTRY_ONLY"];
        args.extend_from_slice(extra);
        Self::start_with(yaml, &args).await
    }

    /// Starts the proxy on `yaml` with exactly the `extra` flags (no outbound policy flag).
    /// Its DNS server address answers nothing: STATIC services need no DNS, and a lookup made
    /// by mistake must not leave loopback.
    async fn start_with(yaml: &str, extra: &[&str]) -> Proxy {
        let inner = meshentry_testutil::Proxy::builder(BIN)
            .config(yaml)
            // Fixed, so connection-reuse bounds (one pooled connection per worker) are known.
            .args(["--workers", "2"])
            .args(extra.iter().copied())
            .start()
            .await;
        Proxy {
            http: inner.http(),
            admin: inner.admin,
            inner,
        }
    }

    fn proxy_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `GET url` through the proxy with curl.
    fn get(&self, url: &str) -> Reply {
        curl(&["-x", &self.proxy_url(), url])
    }

    /// `GET path` on the admin server with curl.
    fn admin(&self, path: &str) -> Reply {
        curl(&["--noproxy", "*", &format!("http://{}{path}", self.admin)])
    }

    fn admin_json(&self, path: &str) -> Value {
        let r = self.admin(path);
        assert_eq!(r.status, 200, "admin {path}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"), "admin {path}");
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("admin {path} is not JSON ({e}): {}", r.body))
    }

    /// A counter of `/stats` (`meshentry.<name>: <value>`).
    fn stat(&self, name: &str) -> u64 {
        let r = self.admin("/stats");
        assert_eq!(r.status, 200, "/stats: {}", r.body);
        let prefix = format!("meshentry.{name}: ");
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("/stats has no {name}:\n{}", r.body))
            .parse()
            .unwrap()
    }

    /// The cluster `name` of `/clusters?format=json`.
    fn cluster(&self, name: &str) -> Value {
        let all = self.admin_json("/clusters?format=json");
        all["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("/clusters has no {name}: {all:#}"))
            .clone()
    }

    /// Requests each host of cluster `name` received, by address.
    fn host_requests(&self, name: &str) -> Vec<(String, u64)> {
        self.cluster(name)["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["address"].as_str().unwrap().to_string(),
                    h["requests"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// The load balancer `/config_dump` reports for cluster `name`.
    fn lb_policy(&self, name: &str) -> String {
        let dump = self.admin_json("/config_dump");
        dump["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("/config_dump has no cluster {name}: {dump:#}"))["lbPolicy"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Issue 4's "nothing panicked": the process is alive, `/ready` answers LIVE, and stderr
    /// shows no panic (a panicking connection task would be swallowed by tokio otherwise).
    fn assert_healthy(&mut self) {
        if let Some(status) = self.inner.process.try_wait() {
            panic!("the proxy exited ({status})\n{}", self.inner.process.output());
        }
        let r = self.admin("/ready");
        assert_eq!((r.status, r.body.as_str()), (200, "LIVE\n"), "/ready");
        let stderr = self.inner.process.stderr();
        assert!(!stderr.contains("panicked"), "the proxy panicked:\n{stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// curl

/// A response as curl reported it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn run_curl(args: &[&str]) -> std::process::Output {
    match curl_command().args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("these tests need curl, and it is not on PATH: install it (apt-get install curl; CI installs it)")
        }
        Err(e) => panic!("cannot run curl: {e}"),
    }
}

/// One request with curl (`-i`): status, headers and body.
fn curl(args: &[&str]) -> Reply {
    let mut all = vec!["-sS", "-i", "--max-time", "10"];
    all.extend_from_slice(args);
    let out = run_curl(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} failed ({}): {}{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (head, body) = stdout
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("curl {args:?}: no response head in {stdout:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("curl {args:?}: bad status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// hyper client

/// One client connection to the proxy, sending absolute-form requests on it in turn.
struct Client {
    sender: SendRequest<Empty<Bytes>>,
}

/// A response read to its end.
struct Got {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn upstream(&self) -> &str {
        self.header("x-upstream").unwrap_or("<none>")
    }
}

impl Client {
    async fn connect(proxy: SocketAddr) -> Client {
        let tcp = TcpStream::connect(proxy).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { sender }
    }

    /// `GET url` (absolute form, as HTTP_PROXY clients send it).
    async fn get(&mut self, url: &str) -> Got {
        let uri: http::Uri = url.parse().unwrap();
        let host = uri.authority().unwrap().to_string();
        let req = Request::get(uri).header("host", host).body(Empty::new()).unwrap();
        self.sender.ready().await.unwrap();
        let resp = self
            .sender
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Got {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }
}

/// `count` sequential requests for `url` over one client connection; every one must succeed.
/// Returns how many each upstream (by `x-upstream`) answered.
async fn spread(proxy: SocketAddr, url: &str, count: usize) -> std::collections::BTreeMap<String, usize> {
    let mut client = Client::connect(proxy).await;
    let mut by = std::collections::BTreeMap::new();
    for i in 0..count {
        let got = client.get(url).await;
        assert_eq!(got.status, 200, "request {i} for {url}: {:?}", got.body);
        *by.entry(got.upstream().to_string()).or_insert(0) += 1;
    }
    by
}

// ---------------------------------------------------------------------------------------------
// Raw sockets

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The peer closed (FIN).
    Eof,
    /// The peer reset the connection.
    Reset,
    /// Still open when the wait ended.
    Open,
}

/// Reads until the peer closes or `within` passes: what arrived, how it ended, and when.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, End, Duration) {
    let start = Instant::now();
    let deadline = start + within;
    let mut got = Vec::new();
    loop {
        let mut chunk = [0u8; 8192];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => return (got, End::Open, start.elapsed()),
            Ok(Ok(0)) => return (got, End::Eof, start.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => return (got, End::Reset, start.elapsed()),
        }
    }
}

/// Sends `CONNECT target` and checks the 200; the stream is then the tunnel.
async fn open_tunnel(proxy: SocketAddr, target: &str) -> TcpStream {
    raw::tunnel(proxy, target, PATIENCE).await.unwrap()
}

/// Whether the peer closes `c` within `within`, sending nothing more (a reset counts).
async fn closes(c: &mut RawClient, within: Duration) -> bool {
    let (rest, eof) = c.read_for(within).await;
    assert!(rest.is_empty(), "bytes after the response: {}", raw::show(&rest));
    eof
}

/// A real ClientHello (as rustls sends it) naming `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    let ca = TestCa::new("hello ca");
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(client_config(&ca, None), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    assert_eq!(out[0], 0x16, "a TLS handshake record");
    out
}

/// A fatal TLS alert record (RFC 8446 6): the way a TLS-aware proxy refuses a handshake.
fn is_fatal_alert(bytes: &[u8]) -> bool {
    bytes.len() == 7 && bytes[..6] == [0x15, 0x03, 0x03, 0x00, 0x02, 0x02]
}

/// A service `secure.test:443` declared TLS, with one endpoint.
fn tls_service(endpoint: SocketAddr) -> String {
    static_entry("secure", "secure.test", 443, "TLS", &[endpoint])
}

// ---------------------------------------------------------------------------------------------
// 1-3: bad traffic in CONNECT tunnels

#[tokio::test]
async fn garbage_instead_of_a_client_hello_closes_the_tunnel() {
    // An echo server stands in for the TLS upstream: any byte the proxy relays would come back.
    let echo = TcpEcho::start((unique_loopback(), 443).into(), "tls-port");
    let mut proxy = Proxy::start(&tls_service(echo.addr()), &[]).await;

    for (i, garbage) in [
        // Plain HTTP to a TLS port, the usual mistake.
        &b"GET / HTTP/1.1\r\nHost: secure.test\r\n\r\n"[..],
        // Binary junk.
        &[0x00, 0xff, 0x13, 0x37, 0x42, 0x00, 0x01][..],
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = open_tunnel(proxy.http, "secure.test:443").await;
        // The proxy connects upstream before its 200, so it can report a failure as a status.
        eventually(PATIENCE, || async { echo.connections() == i + 1 }).await;
        s.write_all(garbage).await.unwrap();
        let (got, end, elapsed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
        assert_ne!(
            end,
            End::Open,
            "garbage {i}: the tunnel is still open after {elapsed:?}"
        );
        assert!(
            got.is_empty() || is_fatal_alert(&got),
            "garbage {i}: expected a close (or a TLS alert), got {got:?}"
        );
        assert_eq!(echo.bytes_received(), 0, "garbage {i} reached the upstream");
        assert_eq!(proxy.stat("tunnel_bad_traffic_total"), i as u64 + 1);
    }
    assert_eq!(proxy.stat("tunnels_total"), 2);
    proxy.assert_healthy();
}

#[tokio::test]
async fn a_truncated_client_hello_is_refused_after_the_sniff_timeout() {
    let echo = TcpEcho::start((unique_loopback(), 443).into(), "tls-port");
    let mut proxy = Proxy::start(&tls_service(echo.addr()), &[]).await;
    let hello = client_hello("secure.test");

    let mut s = open_tunnel(proxy.http, "secure.test:443").await;
    let sent = Instant::now();
    s.write_all(&hello[..30]).await.unwrap();
    let (got, end, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    let elapsed = sent.elapsed();
    assert_ne!(
        end,
        End::Open,
        "a truncated ClientHello held the tunnel open for {elapsed:?}"
    );
    // The lower bound: a ClientHello split across segments must be given the sniff timeout
    // (300 ms) to complete, not refused at its first fragment.
    assert!(
        (Duration::from_millis(150)..Duration::from_secs(2)).contains(&elapsed),
        "refused after {elapsed:?}; the sniff timeout is 300 ms"
    );
    assert!(
        got.is_empty() || is_fatal_alert(&got),
        "expected a TLS alert or a close, got {got:?}"
    );
    assert_eq!(echo.bytes_received(), 0, "a truncated ClientHello reached the upstream");
    assert_eq!(proxy.stat("tunnel_bad_traffic_total"), 1);

    // Control: the same ClientHello in two pieces 50 ms apart is whole in time, and relayed
    // byte for byte (the echo server sends it back).
    let mut s = open_tunnel(proxy.http, "secure.test:443").await;
    s.write_all(&hello[..30]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&hello[30..]).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
        .await
        .expect("the relayed ClientHello echoed back in time")
        .expect("the tunnel stays open for a complete ClientHello");
    assert_eq!(back, hello);
    assert_eq!(proxy.stat("tunnel_bad_traffic_total"), 1);
    proxy.assert_healthy();
}

#[tokio::test]
async fn a_client_hello_naming_another_host_is_refused_and_a_matching_one_works() {
    let ca = TestCa::new("robustness ca");
    let leaf = ca.issue(LeafSpec::server(["secure.test"]));
    let up = TlsUpstream::start((unique_loopback(), 443).into(), "secure", server_config(&leaf, None));
    let mut proxy = Proxy::start(&tls_service(up.addr()), &[]).await;

    // CONNECT says secure.test, the ClientHello says evil.test: a client smuggling traffic for
    // a host the registry does not allow past the CONNECT check.
    let mut s = open_tunnel(proxy.http, "secure.test:443").await;
    s.write_all(&client_hello("evil.test")).await.unwrap();
    let (got, end, elapsed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert_eq!(
        got,
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70],
        "an unrecognized_name alert"
    );
    assert_ne!(end, End::Open, "the tunnel stays open {elapsed:?} after the alert");
    assert_eq!(proxy.stat("tunnel_sni_mismatch_total"), 1);
    assert!(
        up.handshakes().is_empty(),
        "the mismatching ClientHello reached the upstream"
    );

    // The matching name: a real handshake through the tunnel, then HTTP inside it.
    let s = open_tunnel(proxy.http, "secure.test:443").await;
    let name = ServerName::try_from("secure.test".to_owned()).unwrap();
    let tls = tokio::time::timeout(PATIENCE, TlsConnector::from(client_config(&ca, None)).connect(name, s))
        .await
        .expect("handshake in time")
        .expect("a TLS handshake through the tunnel");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("/through-the-tunnel")
        .header("host", "secure.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["upstream"], "secure");
    assert_eq!(body["path"], "/through-the-tunnel");
    assert_eq!(body["tls"]["sni"], "secure.test");
    assert_eq!(up.last_sni().as_deref(), Some("secure.test"));
    assert_eq!(proxy.stat("tunnel_sni_mismatch_total"), 1);
    assert_eq!(proxy.stat("tunnel_bad_traffic_total"), 0);
    proxy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// 4-5: bad request heads, slow clients

/// A plain HTTP service `web.test:80` on one endpoint.
fn web_service(endpoint: SocketAddr) -> String {
    static_entry("web", "web.test", 80, "HTTP", &[endpoint])
}

/// Sends `bytes` on a new connection (ignoring write errors: the proxy may refuse and close
/// before reading everything) and reads one response strictly.
async fn raw_exchange(proxy: SocketAddr, bytes: &[u8]) -> (RawResponse, RawClient) {
    let mut c = RawClient::connect(proxy).await.unwrap();
    let _ = c.send(bytes).await;
    let method = String::from_utf8_lossy(bytes.split(|b| *b == b' ').next().unwrap_or_default()).into_owned();
    let resp = c.read_response(&method, PATIENCE).await.unwrap();
    (resp, c)
}

#[tokio::test]
async fn malformed_request_heads_and_requests_without_a_destination_get_400() {
    let up = HttpUpstream::start((unique_loopback(), 80).into(), "web");
    let mut proxy = Proxy::start(&web_service(up.addr()), &[]).await;

    // Not HTTP at all.
    let (resp, mut s) = raw_exchange(proxy.http, b"GARBAGE\r\n\r\n").await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert!(
        closes(&mut s, PATIENCE).await,
        "the connection stays open after an unparsable head"
    );

    // Origin form and no Host: nothing says where to go.
    for req in [&b"GET / HTTP/1.1\r\n\r\n"[..], &b"GET /x HTTP/1.0\r\n\r\n"[..]] {
        let (resp, _) = raw_exchange(proxy.http, req).await;
        assert_eq!(resp.status, 400, "{resp:?}");
        assert!(
            resp.text().contains("names no destination"),
            "a 400 without a reason: {resp:?}"
        );
    }
    // Only requests that parsed reach the proxy's handler and its counter.
    assert_eq!(proxy.stat("bad_requests_total"), 2);
    assert_eq!(up.requests(), 0);
    proxy.assert_healthy();
}

/// `GET http://web.test/` with `count` filler headers of `size` bytes each.
fn padded_request(count: usize, size: usize) -> String {
    let mut req = String::from("GET http://web.test/ HTTP/1.1\r\nHost: web.test\r\n");
    for i in 0..count {
        req.push_str(&format!("x-filler-{i}: {}\r\n", "b".repeat(size)));
    }
    req.push_str("\r\n");
    req
}

#[tokio::test]
async fn request_heads_over_64_kib_are_refused_not_forwarded_nor_hung() {
    let up = HttpUpstream::start((unique_loopback(), 80).into(), "web");
    let mut proxy = Proxy::start(&web_service(up.addr()), &[]).await;

    // Control: 40 KiB of headers is under the limit and goes through, so the limit is not
    // smaller than the documented 64 KiB.
    let (resp, _) = raw_exchange(proxy.http, padded_request(40, 1000).as_bytes()).await;
    assert_eq!(resp.status, 200, "40 KiB of headers: {resp:?}");
    assert_eq!(up.requests(), 1);

    // A 100 KiB URI.
    let long_uri = format!(
        "GET http://web.test/{} HTTP/1.1\r\nHost: web.test\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let (resp, mut s) = raw_exchange(proxy.http, long_uri.as_bytes()).await;
    assert!(
        [400, 414, 431].contains(&resp.status),
        "100 KiB URI: expected 414 or 431, got {resp:?}"
    );
    assert!(
        closes(&mut s, PATIENCE).await,
        "the connection stays open after a refused head"
    );

    // 80 headers of 1 KiB each (80 KiB of head) sent in 8 KiB pieces, so the proxy reads it in
    // several reads...
    let big = padded_request(80, 1024);
    let mut s = RawClient::connect(proxy.http).await.unwrap();
    for piece in big.as_bytes().chunks(8 * 1024) {
        if s.send(piece).await.is_err() {
            break;
        }
        // Pacing, so each piece arrives as a read of its own.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let resp = s.read_response("GET", PATIENCE).await.unwrap();
    assert!(
        [400, 431].contains(&resp.status),
        "80 KiB of headers in pieces: expected 431, got {resp:?}"
    );
    assert_eq!(up.requests(), 1, "an oversized head reached the upstream");

    // ...and the same head in one write, which the proxy may take in one read.
    let (resp, _) = raw_exchange(proxy.http, padded_request(80, 1024).as_bytes()).await;
    assert!(
        [400, 431].contains(&resp.status),
        "80 KiB of headers: expected 431, got {resp:?}"
    );
    assert_eq!(up.requests(), 1, "an oversized head reached the upstream");
    proxy.assert_healthy();
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_cut_off_after_the_header_read_timeout() {
    let up = HttpUpstream::start((unique_loopback(), 80).into(), "web");
    let mut proxy = Proxy::start(&web_service(up.addr()), &["--header-read-timeout", "1s"]).await;

    // Stops mid-head.
    let mut s = TcpStream::connect(proxy.http).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET http://web.test/ HTTP/1.1\r\nHost: web.test\r\n")
        .await
        .unwrap();
    let (got, end, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    assert_ne!(end, End::Open, "still open after {elapsed:?}");
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&elapsed),
        "closed after {elapsed:?}; --header-read-timeout is 1s"
    );
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // Slowloris: one byte every 100 ms keeps the socket busy but the head never completes in
    // time; the timeout covers the whole head, not each read.
    let mut s = TcpStream::connect(proxy.http).await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = s.split();
    let dribble = async {
        for b in b"GET http://web.test/ HTTP/1.1\r\nHost: web.test\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let watch = async {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::select! {
            () = watch => {}
            () = dribble => {}
        }
    })
    .await;
    let elapsed = started.elapsed();
    assert!(closed.is_ok(), "a dribbling client was never cut off");
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&elapsed),
        "dribbling client closed after {elapsed:?}; --header-read-timeout is 1s"
    );
    assert_eq!(up.requests(), 0);
    proxy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// 6-8: misbehaving upstreams

#[tokio::test]
async fn refused_connections_fail_over_and_a_service_with_no_live_endpoint_gets_503_uf() {
    let dead_ip = unique_loopback();
    let refusing = closed_port(dead_ip);
    let good = HttpUpstream::start((unique_loopback(), 80).into(), "good");
    let down_a = closed_port(unique_loopback());
    let down_b = closed_port(unique_loopback());
    let down_c = closed_port(unique_loopback());
    // ROUND_ROBIN makes the refusing endpoint the first pick of some requests for certain
    // (with the default LEAST_REQUEST that would only be very likely).
    let yaml = static_entry("web", "web.test", 80, "HTTP", &[refusing, good.addr()])
        + &lb_rule("default", "web", "web.test", "ROUND_ROBIN", None)
        + &static_entry("down", "down.test", 80, "HTTP", &[down_a])
        + &static_entry("down2", "down2.test", 80, "HTTP", &[down_b, down_c]);
    let mut proxy = Proxy::start(&yaml, &[]).await;

    for i in 0..20 {
        let r = proxy.get("http://web.test/");
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.header("x-upstream"), Some("good"), "request {i}");
    }
    assert_eq!(good.requests(), 20);

    // Envoy's text format: `cluster::host::stat::value`.
    let clusters = proxy.admin("/clusters").body;
    let stat = |host: SocketAddr, name: &str| -> u64 {
        let prefix = format!("outbound|80||web.test::{host}::{name}::");
        clusters
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("/clusters has no {prefix}:\n{clusters}"))
            .parse()
            .unwrap()
    };
    let failed = stat(refusing, "cx_connect_fail");
    assert!(
        failed > 0,
        "no connect failure counted for the refusing host:\n{clusters}"
    );
    // Each refused request moved on to the good host: every one of them was served there.
    assert_eq!(stat(refusing, "rq_total"), failed, "{clusters}");
    assert_eq!(stat(good.addr(), "cx_connect_fail"), 0, "{clusters}");
    assert_eq!(stat(good.addr(), "rq_total"), 20, "{clusters}");

    // The only endpoint refuses.
    let r = proxy.get("http://down.test/");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-meshentry-response-flags"), Some("UF"), "{r:?}");
    assert!(r.body.contains("connection refused"), "{:?}", r.body);
    assert!(r.body.contains("tried 1 endpoint"), "{:?}", r.body);

    // Both endpoints refuse: each is tried exactly once, then 503.
    let r = proxy.get("http://down2.test/");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-meshentry-response-flags"), Some("UF"), "{r:?}");
    assert!(r.body.contains("connection refused"), "{:?}", r.body);
    assert!(r.body.contains("tried 2 endpoints"), "{:?}", r.body);
    let hosts = proxy.cluster("outbound|80||down2.test");
    for h in hosts["hosts"].as_array().unwrap() {
        assert_eq!(
            h["connectFailures"], 1,
            "each endpoint tried once per request: {hosts:#}"
        );
    }
    proxy.assert_healthy();
}

#[tokio::test]
async fn an_upstream_reset_gets_502_and_a_stalled_upstream_gets_504_after_the_response_timeout() {
    let reset_on_accept = Reset::start((unique_loopback(), 80).into());
    let reset_after_request = Reset::after_first_read((unique_loopback(), 80).into());
    let stall = Stall::start((unique_loopback(), 80).into());
    let yaml = static_entry("rst", "rst.test", 80, "HTTP", &[reset_on_accept.addr()])
        + &static_entry("rst2", "rst2.test", 80, "HTTP", &[reset_after_request.addr()])
        + &static_entry("slow", "slow.test", 80, "HTTP", &[stall.addr()]);
    let mut proxy = Proxy::start(&yaml, &["--response-timeout", "1s"]).await;

    // Reset after the request arrived: the exchange broke, 502 UC (not the 504 of the response
    // timeout).
    let r = proxy.get("http://rst2.test/");
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("x-meshentry-response-flags"), Some("UC"), "{r:?}");
    assert!(r.body.contains("reset"), "a 502 without a reason: {:?}", r.body);
    assert!(
        reset_after_request.bytes_received() > 0,
        "the request reached the upstream"
    );

    // Reset right at accept: the reset can overtake the connect, so either a connect failure
    // (503 UF) or a broken exchange (502 UC), not a response timeout, and with a reason.
    let r = proxy.get("http://rst.test/");
    match r.status {
        502 => assert_eq!(r.header("x-meshentry-response-flags"), Some("UC"), "{r:?}"),
        503 => assert_eq!(r.header("x-meshentry-response-flags"), Some("UF"), "{r:?}"),
        _ => panic!("expected 502 or 503: {r:?}"),
    }
    assert!(
        r.body.starts_with("meshentry: rst.test:80 via outbound|80||rst.test: "),
        "{:?}",
        r.body
    );

    // A stalled upstream: 504 UT once --response-timeout (1s) has passed, not before.
    let started = Instant::now();
    let r = proxy.get("http://slow.test/");
    let elapsed = started.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.header("x-meshentry-response-flags"), Some("UT"), "{r:?}");
    assert!(r.body.contains("timeout"), "{:?}", r.body);
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&elapsed),
        "504 after {elapsed:?}; --response-timeout is 1s"
    );
    assert!(stall.bytes_received() > 0, "the request reached the stalled upstream");
    assert_eq!(proxy.stat("upstream_errors_total"), 3);
    proxy.assert_healthy();
}

#[tokio::test]
async fn a_stalled_upstream_does_not_hold_up_other_clients() {
    let stall = Stall::start((unique_loopback(), 80).into());
    let up = HttpUpstream::start((unique_loopback(), 80).into(), "healthy");
    let yaml = static_entry("slow", "slow.test", 80, "HTTP", &[stall.addr()]) + &web_service(up.addr());
    let mut proxy = Proxy::start(&yaml, &["--response-timeout", "30s"]).await;

    // Four clients stuck waiting on the stalled upstream (more than the proxy's two workers)...
    let stuck: Vec<_> = (0..4)
        .map(|_| {
            let http = proxy.http;
            tokio::spawn(async move { Client::connect(http).await.get("http://slow.test/").await.status })
        })
        .collect();
    // ...and four that never finish their request head.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(proxy.http).await.unwrap();
        s.write_all(b"GET http://web.test/ HTTP/1.1\r\nHost: web")
            .await
            .unwrap();
        slow.push(s);
    }
    // Every stuck request reached the upstream: each took its own upstream connection, as none
    // could be reused.
    eventually(PATIENCE, || async { stall.connections() == 4 }).await;

    for i in 0..10 {
        let started = Instant::now();
        let got = Client::connect(proxy.http).await.get("http://web.test/").await;
        let elapsed = started.elapsed();
        assert_eq!(got.status, 200, "request {i}");
        assert_eq!(got.upstream(), "healthy");
        // Far below the 30 s a request held up behind the stalled ones would take.
        assert!(elapsed < PATIENCE, "request {i} took {elapsed:?}");
    }
    assert!(
        stuck.iter().all(|t| !t.is_finished()),
        "a stalled request finished early"
    );
    for t in &stuck {
        t.abort();
    }
    drop(slow);
    proxy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// 9: everything at once

#[tokio::test]
async fn the_proxy_survives_a_mix_of_bad_traffic() {
    let ip = unique_loopback();
    let echo = TcpEcho::start((ip, 443).into(), "tls-port");
    let reset = Reset::after_first_read((unique_loopback(), 80).into());
    let up = HttpUpstream::start((unique_loopback(), 80).into(), "web");
    let yaml = tls_service(echo.addr())
        + &web_service(up.addr())
        + &static_entry("rst", "rst.test", 80, "HTTP", &[reset.addr()])
        + &static_entry("down", "down.test", 80, "HTTP", &[closed_port(unique_loopback())]);
    let mut proxy = Proxy::start(&yaml, &["--header-read-timeout", "1s"]).await;
    let http = proxy.http;
    let hello = client_hello("secure.test");

    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..5u8 {
        let hello = hello.clone();
        tasks.spawn(async move {
            // Garbage in a TLS tunnel.
            let mut s = open_tunnel(http, "secure.test:443").await;
            s.write_all(b"\x00garbage").await.unwrap();
            read_until_closed(&mut s, PATIENCE).await;
            // A truncated ClientHello.
            let mut s = open_tunnel(http, "secure.test:443").await;
            s.write_all(&hello[..usize::from(10 + round)]).await.unwrap();
            read_until_closed(&mut s, PATIENCE).await;
            // An SNI mismatch.
            let mut s = open_tunnel(http, "secure.test:443").await;
            s.write_all(&client_hello("other.test")).await.unwrap();
            read_until_closed(&mut s, PATIENCE).await;
            // A tunnel the client abandons before sending anything.
            drop(open_tunnel(http, "secure.test:443").await);
            // CONNECT to something the registry does not know, and to a port that is no number.
            for target in ["unknown.test:443", "secure.test:https"] {
                let (resp, _) = raw::connect_request(http, target, PATIENCE).await.unwrap();
                assert!([400, 403].contains(&resp.status), "CONNECT {target}: {resp:?}");
            }
            // Malformed, oversized and truncated heads.
            for bad in [
                b"GARBAGE\r\n\r\n".to_vec(),
                b"\x16\x03\x01\x00\x05hello".to_vec(),
                format!("GET http://web.test/{} HTTP/1.1\r\n\r\n", "z".repeat(70_000)).into_bytes(),
                b"GET http://web.test/ HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
                b"GET http://web.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
                b"GET http://[::1/ HTTP/1.1\r\n\r\n".to_vec(),
                b"CONNECT :0 HTTP/1.1\r\n\r\n".to_vec(),
            ] {
                let mut s = TcpStream::connect(http).await.unwrap();
                let _ = s.write_all(&bad).await;
                let _ = s.shutdown().await;
                let (_, end, elapsed) = read_until_closed(&mut s, PATIENCE).await;
                assert_ne!(
                    end,
                    End::Open,
                    "still open {elapsed:?} after {:?}",
                    String::from_utf8_lossy(&bad[..bad.len().min(60)])
                );
            }
            // A request whose upstream resets, and one whose upstream refuses.
            for url in ["http://rst.test/", "http://down.test/"] {
                let got = Client::connect(http).await.get(url).await;
                assert!([502, 503].contains(&got.status), "{url}: {}", got.status);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(echo.bytes_received(), 0, "bad tunnel traffic reached the upstream");
    assert_eq!(proxy.stat("tunnel_sni_mismatch_total"), 5);
    // Per round: the garbage and the truncated ClientHello (an abandoned tunnel is no bad traffic).
    assert_eq!(proxy.stat("tunnel_bad_traffic_total"), 10);
    assert_eq!(
        proxy.stat("outbound_blocked_total"),
        5,
        "one CONNECT to unknown.test per round"
    );

    // And it still does its job.
    let r = proxy.get("http://web.test/after");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-upstream"), Some("web"));
    let mut s = open_tunnel(proxy.http, "secure.test:443").await;
    s.write_all(&hello).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(back, hello);
    proxy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// 10: load balancing

/// `n` HTTP upstreams `<prefix>0..`, each on its own address, port 80.
fn upstreams(prefix: &str, n: usize) -> Vec<HttpUpstream> {
    (0..n)
        .map(|i| HttpUpstream::start((unique_loopback(), 80).into(), &format!("{prefix}{i}")))
        .collect()
}

fn addrs(ups: &[HttpUpstream]) -> Vec<SocketAddr> {
    ups.iter().map(HttpUpstream::addr).collect()
}

#[tokio::test]
async fn round_robin_splits_requests_exactly_evenly() {
    let ups = upstreams("rr", 3);
    let yaml = static_entry("web", "web.test", 80, "HTTP", &addrs(&ups))
        + &lb_rule("default", "web", "web.test", "ROUND_ROBIN", None);
    let mut proxy = Proxy::start(&yaml, &[]).await;
    assert_eq!(proxy.lb_policy("outbound|80||web.test"), "RoundRobin");

    let by = spread(proxy.http, "http://web.test/", 30).await;
    assert_eq!(by.values().copied().collect::<Vec<_>>(), [10, 10, 10], "{by:?}");
    for up in &ups {
        assert_eq!(up.requests(), 10, "{}", up.name());
    }
    // The admin counters agree with what the upstreams saw.
    let hosts = proxy.host_requests("outbound|80||web.test");
    assert_eq!(hosts.len(), 3);
    assert!(hosts.iter().all(|(_, n)| *n == 10), "{hosts:?}");
    proxy.assert_healthy();
}

#[tokio::test]
async fn endpoint_weights_split_round_robin_three_to_one() {
    let ups = upstreams("w", 2);
    let eps = [(ups[0].addr(), 3), (ups[1].addr(), 1)];
    let yaml = static_entry_in("default", "web", "web.test", 80, "HTTP", &eps)
        + &lb_rule("default", "web", "web.test", "ROUND_ROBIN", None);
    let mut proxy = Proxy::start(&yaml, &[]).await;

    let cluster = proxy.cluster("outbound|80||web.test");
    let weights: Vec<u64> = cluster["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, [3, 1], "{cluster:#}");

    spread(proxy.http, "http://web.test/", 40).await;
    assert_eq!((ups[0].requests(), ups[1].requests()), (30, 10));
    proxy.assert_healthy();
}

#[tokio::test]
async fn the_default_least_request_balancer_uses_every_endpoint() {
    let ups = upstreams("lr", 3);
    let mut proxy = Proxy::start(&static_entry("web", "web.test", 80, "HTTP", &addrs(&ups)), &[]).await;
    assert_eq!(proxy.lb_policy("outbound|80||web.test"), "LeastRequest");

    spread(proxy.http, "http://web.test/", 60).await;
    // Sequential requests leave every host idle, so the two random choices decide: about 20
    // each. Fewer than 5 of 60 has a probability around 1e-5.
    for up in &ups {
        assert!(up.requests() >= 5, "{} got {} of 60", up.name(), up.requests());
    }
    assert_eq!(ups.iter().map(HttpUpstream::requests).sum::<usize>(), 60);
    proxy.assert_healthy();
}

#[tokio::test]
async fn port_level_settings_override_the_top_level_balancer_for_their_port() {
    // Three endpoints, each serving both ports on its own address.
    let ips: Vec<_> = (0..3).map(|_| unique_loopback()).collect();
    let on80: Vec<_> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| HttpUpstream::start((*ip, 80).into(), &format!("p80-{i}")))
        .collect();
    let on8080: Vec<_> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| HttpUpstream::start((*ip, 8080).into(), &format!("p8080-{i}")))
        .collect();
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: multi}\nspec:\n  hosts: [multi.test]\n\
         \x20 location: MESH_EXTERNAL\n  resolution: STATIC\n  ports:\n  - {number: 80, name: http, protocol: HTTP}\n\
         \x20 - {number: 8080, name: http-alt, protocol: HTTP}\n  endpoints:\n",
    );
    for ip in &ips {
        yaml.push_str(&format!(
            "  - {{address: \"{ip}\", ports: {{http: 80, http-alt: 8080}}}}\n"
        ));
    }
    yaml.push_str(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: multi}\nspec:\n  host: multi.test\n\
         \x20 trafficPolicy:\n    loadBalancer: {simple: RANDOM}\n    portLevelSettings:\n\
         \x20   - port: {number: 8080}\n      loadBalancer: {simple: ROUND_ROBIN}\n",
    );
    let mut proxy = Proxy::start(&yaml, &[]).await;
    assert_eq!(proxy.lb_policy("outbound|80||multi.test"), "Random");
    assert_eq!(proxy.lb_policy("outbound|8080||multi.test"), "RoundRobin");

    // Port 8080 round-robins exactly.
    spread(proxy.http, "http://multi.test:8080/", 30).await;
    for up in &on8080 {
        assert_eq!(up.requests(), 10, "{}", up.name());
    }
    // Port 80 keeps the top-level RANDOM: every request still lands on a port-80 endpoint.
    spread(proxy.http, "http://multi.test/", 30).await;
    assert_eq!(on80.iter().map(HttpUpstream::requests).sum::<usize>(), 30);
    assert_eq!(on8080.iter().map(HttpUpstream::requests).sum::<usize>(), 30);
    proxy.assert_healthy();
}

#[tokio::test]
async fn a_destination_rule_not_exported_to_the_proxy_namespace_does_not_apply() {
    let private = upstreams("private", 3);
    let public = upstreams("public", 3);
    // Services in `shop`, visible everywhere; the proxy runs in `client`.
    let yaml = static_entry_in("shop", "private", "private.test", 80, "HTTP", &weightless(&private))
        + &static_entry_in("shop", "public", "public.test", 80, "HTTP", &weightless(&public))
        + &lb_rule("shop", "private", "private.test", "ROUND_ROBIN", Some("."))
        + &lb_rule("shop", "public", "public.test", "ROUND_ROBIN", None);
    let mut proxy = Proxy::start(&yaml, &["--workload-namespace", "client"]).await;

    assert_eq!(proxy.lb_policy("outbound|80||private.test"), "LeastRequest");
    assert_eq!(proxy.lb_policy("outbound|80||public.test"), "RoundRobin");
    // The exported rule is in force: exact round robin.
    spread(proxy.http, "http://public.test/", 30).await;
    for up in &public {
        assert_eq!(up.requests(), 10, "{}", up.name());
    }
    let by = spread(proxy.http, "http://private.test/", 30).await;
    assert_eq!(by.values().sum::<usize>(), 30);
    proxy.assert_healthy();
}

fn weightless(ups: &[HttpUpstream]) -> Vec<(SocketAddr, u32)> {
    ups.iter().map(|u| (u.addr(), 0)).collect()
}

// ---------------------------------------------------------------------------------------------
// 11: keep-alive

#[tokio::test]
async fn one_client_connection_with_many_requests_reuses_upstream_connections() {
    let up = HttpUpstream::start((unique_loopback(), 80).into(), "web");
    let mut proxy = Proxy::start(&web_service(up.addr()), &[]).await;

    let by = spread(proxy.http, "http://web.test/", 100).await;
    assert_eq!(by.get("web"), Some(&100));
    assert_eq!(up.requests(), 100);
    // The pool is per worker thread and the proxy runs two workers: sequential requests need
    // at most one upstream connection on each.
    assert!(
        up.connections() <= 2,
        "100 requests took {} upstream connections",
        up.connections()
    );

    // curl, several URLs in one invocation: one connection to the proxy, reused.
    let urls: Vec<String> = (0..20).map(|i| format!("http://web.test/curl/{i}")).collect();
    let proxy_url = proxy.proxy_url();
    let mut args = vec![
        "-sS",
        "--max-time",
        "10",
        "-x",
        &proxy_url,
        "-w",
        "%{http_code} %{num_connects}\\n",
    ];
    for url in &urls {
        args.extend_from_slice(&["-o", "/dev/null", url.as_str()]);
    }
    let out = run_curl(&args);
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 20, "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("200 ")), "{lines:?}");
    let connects: u32 = lines.iter().map(|l| l[4..].parse::<u32>().unwrap()).sum();
    assert_eq!(
        connects, 1,
        "curl opened more than one connection to the proxy: {lines:?}"
    );
    assert_eq!(up.requests(), 120);
    assert!(
        up.connections() <= 2,
        "120 requests took {} upstream connections",
        up.connections()
    );
    proxy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// 12: admin

#[tokio::test]
async fn admin_reports_readiness_config_and_per_host_request_counts() {
    let up = HttpUpstream::start((unique_loopback(), 80).into(), "web");
    let other = HttpUpstream::start((unique_loopback(), 80).into(), "other");
    let yaml = web_service(up.addr()) + &static_entry("other", "other.test", 80, "HTTP", &[other.addr()]);
    let mut proxy = Proxy::start(&yaml, &[]).await;

    let r = proxy.admin("/ready");
    assert_eq!((r.status, r.body.as_str()), (200, "LIVE\n"));
    let info = proxy.admin_json("/server_info");
    assert_eq!(info["state"], "LIVE");
    assert_eq!(info["generation"], 1);

    let dump = proxy.admin_json("/config_dump");
    assert_eq!(dump["generation"], 1, "{dump:#}");
    assert_eq!(dump["namespace"], "default");
    assert_eq!(dump["outboundTrafficPolicy"]["mode"], "REGISTRY_ONLY");
    assert_eq!(dump["outboundTrafficPolicy"]["source"], "--outbound-policy");
    let services = dump["registry"]["services"].as_array().unwrap();
    let web = services
        .iter()
        .find(|s| s["host"] == "web.test")
        .unwrap_or_else(|| panic!("web.test is not in the registry: {dump:#}"));
    assert_eq!(web["namespace"], "default");
    assert_eq!(web["resolution"], "STATIC");
    assert_eq!(web["endpoints"][0]["address"], up.addr().ip().to_string());
    assert_eq!(web["endpoints"][0]["port"], up.addr().port());
    // Port 80 has HTTP services: a captured connection to it is read before it is routed.
    let port80 = dump["outboundPorts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == 80)
        .unwrap_or_else(|| panic!("no outbound port 80: {dump:#}"));
    assert_eq!(port80["http"], true, "{port80}");
    assert_eq!(port80["detection"], true, "{port80}");
    assert_eq!(dump["warnings"], serde_json::json!([]), "{dump:#}");

    for i in 0..7 {
        let r = proxy.get(&format!("http://web.test/{i}"));
        assert_eq!(r.status, 200, "{r:?}");
    }
    let cluster = proxy.cluster("outbound|80||web.test");
    assert_eq!(cluster["type"], "EDS");
    assert_eq!(cluster["requests"], 7, "{cluster:#}");
    assert_eq!(cluster["connectFailures"], 0);
    let hosts = cluster["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1, "{cluster:#}");
    assert_eq!(hosts[0]["address"], up.addr().to_string());
    assert_eq!(hosts[0]["requests"], 7);
    assert_eq!(hosts[0]["active"], 0, "nothing is in flight any more");
    assert_eq!(up.requests(), 7);
    assert_eq!(proxy.cluster("outbound|80||other.test")["requests"], 0);
    assert_eq!(proxy.stat("http_requests_total"), 7);
    assert_eq!(proxy.stat("config_generation"), 1);

    // The text form names the same host and count.
    let text = proxy.admin("/clusters").body;
    assert!(
        text.lines()
            .any(|l| l == format!("outbound|80||web.test::{}::rq_total::7", up.addr())),
        "{text}"
    );
    assert_eq!(proxy.admin("/nope").status, 404);
    proxy.assert_healthy();
}

#[tokio::test]
async fn admin_counts_the_upstream_connections_http_requests_open() {
    let up = HttpUpstream::start((unique_loopback(), 80).into(), "web");
    let mut proxy = Proxy::start(&web_service(up.addr()), &[]).await;
    // Three clients in parallel, each holding its request until all three are in flight, force
    // three upstream connections.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let http = proxy.http;
        tasks.spawn(async move {
            Client::connect(http)
                .await
                .get("http://web.test/delay/300")
                .await
                .status
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let opened = up.connections();
    assert!(opened >= 1);
    let hosts = proxy.cluster("outbound|80||web.test")["hosts"].clone();
    // Envoy's cx_total: connections opened to the host, whatever went over them.
    assert_eq!(
        hosts[0]["connections"].as_u64(),
        Some(opened as u64),
        "/clusters reports {} connections to {}, which accepted {opened}",
        hosts[0]["connections"],
        up.addr()
    );
    proxy.assert_healthy();
}

#[tokio::test]
async fn registry_only_from_a_sidecar_is_reported_with_its_source_and_blocks() {
    let up = HttpUpstream::start((unique_loopback(), 80).into(), "web");
    // Not in the registry: if the policy failed to block, the request would land here (still on
    // loopback), and the test would see it.
    let outside = HttpUpstream::start((unique_loopback(), 80).into(), "outside");
    let yaml = static_entry_in("apps", "web", "web.test", 80, "HTTP", &[(up.addr(), 0)])
        + "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: egress, namespace: apps}\n\
           spec:\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n";
    let mut proxy = Proxy::start_with(&yaml, &["--workload-namespace", "apps"]).await;

    let dump = proxy.admin_json("/config_dump");
    assert_eq!(dump["namespace"], "apps");
    assert_eq!(dump["outboundTrafficPolicy"]["mode"], "REGISTRY_ONLY", "{dump:#}");
    assert_eq!(
        dump["outboundTrafficPolicy"]["source"], "Sidecar apps/egress",
        "{dump:#}"
    );

    let r = proxy.get("http://web.test/");
    assert_eq!(r.status, 200, "a registry service still works: {r:?}");

    let r = proxy.get(&format!("http://{}/", outside.addr()));
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("REGISTRY_ONLY"), "{:?}", r.body);
    assert!(
        r.body.contains("Sidecar apps/egress"),
        "the refusal names its source: {:?}",
        r.body
    );

    let target = outside.addr().to_string();
    let (resp, _) = raw::connect_request(proxy.http, &target, PATIENCE).await.unwrap();
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(resp.text().contains("REGISTRY_ONLY"), "{resp:?}");

    assert_eq!(outside.requests(), 0);
    assert_eq!(outside.connections(), 0, "blocked traffic reached the destination");
    assert_eq!(proxy.stat("outbound_blocked_total"), 2);
    proxy.assert_healthy();
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// `/config_dump` of a big registry costs about its own size, once: it was built as a
/// `serde_json::Value` first, which took 14 times the answer's size (1.2 GB for the 89 MB dump
/// of 10,000 ServiceEntries), and the allocator kept it, so one admin request could get a
/// sidecar killed for its memory limit.
#[tokio::test]
async fn a_config_dump_costs_about_its_own_size() {
    let mut yaml = String::new();
    for i in 0..2000 {
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{i}, namespace: ns-{}}}\n\
             spec:\n  hosts: [api-{i}.example.com]\n  addresses: [10.{}.{}.1]\n  resolution: STATIC\n  \
             ports: [{{number: 443, name: https, protocol: TLS}}, {{number: 80, name: http, protocol: HTTP}}]\n  \
             endpoints: [{{address: 172.16.{}.{}}}, {{address: 172.17.{}.{}}}, {{address: 172.18.{}.{}}}]\n",
            i % 50,
            i / 256,
            i % 256,
            i / 256,
            i % 256,
            i / 256,
            i % 256,
            i / 256,
            i % 256,
        ));
    }
    let proxy = Proxy::start(&yaml, &[]).await.inner;
    let pid = proxy.process.pid();
    let before = rss_bytes(pid);
    let dump = proxy.admin_get("/config_dump").await;
    assert_eq!(dump.status, 200);
    let body = dump.body.len() as u64;
    let v: Value = serde_json::from_slice(&dump.body).unwrap();
    assert_eq!(v["registry"]["services"].as_array().map(Vec::len), Some(2000));
    let grown = rss_bytes(pid).saturating_sub(before);
    assert!(
        grown < 2 * body,
        "one /config_dump of {body} bytes grew the proxy by {grown} bytes (from {before})"
    );
}
