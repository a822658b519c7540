//! End-to-end tests of the limits that protect the host (issue 8): the connection limit,
//! request header size and count, the header, idle, TCP idle, connect and response timeouts,
//! and the upstream pool's idle timeout. Each limit is hit on real sockets and both what the
//! client sees and the exact `/stats` counter are checked.
//!
//! Every test runs the real binary on its own loopback addresses, with STATIC endpoints and
//! `--outbound-policy REGISTRY_ONLY`, so nothing can leave loopback. Timeouts are set to a few
//! hundred milliseconds so the file runs in seconds.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshentry_testutil::raw::{self, RawClient};
use meshentry_testutil::{HttpUpstream, Stall, TcpEcho, eventually, unique_loopback};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");
const PATIENCE: Duration = Duration::from_secs(5);

/// A STATIC ServiceEntry for `host:port` with one endpoint.
fn entry(name: &str, host: &str, port: u16, protocol: &str, endpoint: SocketAddr) -> String {
    let port_name = protocol.to_ascii_lowercase();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n\
         spec:\n  hosts: [{host}]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n\
         \x20 ports:\n  - {{number: {port}, name: {port_name}, protocol: {protocol}}}\n\
         \x20 endpoints:\n  - {{address: \"{}\", ports: {{{port_name}: {}}}}}\n---\n",
        endpoint.ip(),
        endpoint.port()
    )
}

struct Proxy {
    inner: meshentry_testutil::Proxy,
    http: SocketAddr,
    outbound: SocketAddr,
}

impl Proxy {
    async fn start(yaml: &str, extra: &[&str]) -> Proxy {
        // Two workers unless the test says otherwise: limits must hold across them.
        let workers: &[&str] = if extra.contains(&"--workers") {
            &[]
        } else {
            &["--workers", "2"]
        };
        let inner = meshentry_testutil::Proxy::builder(BIN)
            .config(yaml)
            .args(["--outbound-policy", "REGISTRY_ONLY"])
            .args(workers.iter().copied())
            .args(extra.iter().copied())
            .start()
            .await;
        Proxy {
            http: inner.http(),
            outbound: inner.outbound()[0],
            inner,
        }
    }

    /// A counter of `/stats` (`meshentry.<name>: <value>`).
    async fn stat(&self, name: &str) -> u64 {
        self.inner.stat(name).await
    }

    fn assert_healthy(&mut self) {
        if let Some(status) = self.inner.process.try_wait() {
            panic!("the proxy exited ({status})\n{}", self.inner.process.output());
        }
        let stderr = self.inner.process.stderr();
        assert!(!stderr.contains("panicked"), "the proxy panicked:\n{stderr}");
    }
}

/// curl isolated from the environment (no ~/.curlrc, no proxy variables).
fn curl(args: &[&str]) -> std::process::Output {
    let mut c = meshentry_testutil::curl_command();
    c.args(["-sS", "--max-time", "10"]).args(args);
    c.output()
        .expect("these tests need curl (apt-get install curl; CI installs it)")
}

/// `curl -x proxy url` with extra args: (status, body), or panics if curl failed.
fn curl_status(proxy: SocketAddr, url: &str, extra: &[&str]) -> (u16, String) {
    let proxy_url = format!("http://{proxy}");
    let mut args = vec!["-x", &proxy_url, "-w", "\n%{http_code}", url];
    args.extend_from_slice(extra);
    let out = curl(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {url}: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// A client connection to `proxy`.
async fn client(proxy: SocketAddr) -> RawClient {
    RawClient::connect(proxy).await.unwrap()
}

/// Reads one response to a GET or POST strictly: (status, body).
async fn read_response(c: &mut RawClient) -> (u16, String) {
    let r = c.read_response("GET", PATIENCE).await.unwrap();
    (r.status, r.text())
}

/// Waits for the peer to close: what arrived after the last response read, and how long it
/// took. Panics if it is still open after `within`.
async fn until_closed(c: &mut RawClient, within: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let (got, closed) = c.read_for(within).await;
    assert!(closed, "still open after {within:?}; got {}", raw::show(&got));
    (got, start.elapsed())
}

/// Reads a `408` strictly and then the close: how long both took.
async fn timed_out_408(c: &mut RawClient) -> Duration {
    let start = Instant::now();
    let r = c.read_response("GET", PATIENCE).await.unwrap();
    assert_eq!(r.status, 408, "{r:?}");
    let (rest, _) = until_closed(c, PATIENCE).await;
    assert!(rest.is_empty(), "bytes after the 408: {}", raw::show(&rest));
    start.elapsed()
}

const GET: &[u8] = b"GET http://web.test/ HTTP/1.1\r\nHost: web.test\r\n\r\n";
/// A chunked request body sends the connection to the hyper path.
const CHUNKED_POST: &[u8] =
    b"POST http://web.test/ HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";

/// `GET http://web.test/` with `count` headers (besides Host) of `size` bytes each.
fn padded(count: usize, size: usize) -> Vec<u8> {
    let mut req = String::from("GET http://web.test/ HTTP/1.1\r\nHost: web.test\r\n");
    for i in 0..count {
        req.push_str(&format!("x-pad-{i:03}: {}\r\n", "p".repeat(size)));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// A connection on the hyper path: its first request (chunked) answered 200.
async fn hyper_path_connection(proxy: SocketAddr) -> RawClient {
    let mut s = client(proxy).await;
    s.send(CHUNKED_POST).await.unwrap();
    let (status, body) = read_response(&mut s).await;
    assert_eq!(status, 200, "{body}");
    s
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connections_over_max_connections_are_closed_at_once_and_counted_across_listeners() {
    let up = HttpUpstream::start((unique_loopback(), 80).into(), "web");
    let yaml = entry("web", "web.test", 80, "HTTP", up.addr());
    // Two workers, one limit: the count is shared.
    let mut proxy = Proxy::start(&yaml, &["--max-connections", "2"]).await;
    assert!(
        proxy
            .inner
            .stderr()
            .contains("connection limit (from --max-connections)"),
        "the limit is logged at startup:\n{}",
        proxy.inner.stderr()
    );

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = client(proxy.http).await;
        s.send(GET).await.unwrap();
        assert_eq!(read_response(&mut s).await.0, 200);
        held.push(s);
    }
    assert_eq!(proxy.stat("downstream_cx_overflow").await, 0);

    // A third client: accepted and closed without a byte of response (not held until some
    // timeout: `until_closed` gives it PATIENCE).
    let mut third = client(proxy.http).await;
    let _ = third.send(GET).await;
    let (got, _) = until_closed(&mut third, PATIENCE).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(proxy.stat("downstream_cx_overflow").await, 1);

    // curl sees an empty reply, and the transparent listener shares the limit.
    let out = curl(&["-x", &format!("http://{}", proxy.http), "http://web.test/"]);
    assert!(!out.status.success(), "curl got through: {:?}", out);
    let mut captured = client(proxy.outbound).await;
    let (got, _) = until_closed(&mut captured, PATIENCE).await;
    assert!(got.is_empty());
    assert_eq!(proxy.stat("downstream_cx_overflow").await, 3);
    assert_eq!(
        proxy.stat("outbound_cx_total").await,
        0,
        "an overflow never reaches the listener's handler"
    );

    // A slot freed is a slot taken: the held connections still work, and once one closes a
    // new client gets through.
    held[0].send(GET).await.unwrap();
    assert_eq!(read_response(&mut held[0]).await.0, 200);
    drop(held.remove(0));
    eventually(PATIENCE, || async { proxy.stat("downstream_cx_active").await == 1 }).await;
    assert_eq!(curl_status(proxy.http, "http://web.test/", &[]).0, 200);
    assert_eq!(proxy.stat("downstream_cx_overflow").await, 3);
    proxy.assert_healthy();
}

#[tokio::test]
async fn request_heads_over_the_configured_size_or_count_get_431_on_every_path() {
    let up = HttpUpstream::start((unique_loopback(), 80).into(), "web");
    let yaml = entry("web", "web.test", 80, "HTTP", up.addr());
    let mut proxy = Proxy::start(&yaml, &["--max-request-headers-kb", "4", "--max-headers-count", "10"]).await;

    // At the limits (10 fields with Host, under 4 KiB) everything goes through, by curl too.
    let mut s = client(proxy.http).await;
    s.send(&padded(9, 300)).await.unwrap();
    assert_eq!(read_response(&mut s).await.0, 200);
    let mut extra = Vec::new();
    for i in 0..5 {
        extra.push("-H".to_string());
        extra.push(format!("x-curl-{i}: {}", "c".repeat(100)));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    assert_eq!(curl_status(proxy.http, "http://web.test/", &extra).0, 200);
    let passed = up.requests();

    // The fast path: one field too many, then a head too large.
    let mut s = client(proxy.http).await;
    s.send(&padded(10, 10)).await.unwrap();
    let (status, body) = read_response(&mut s).await;
    assert_eq!(status, 431, "{body}");
    assert!(body.contains("more than 10 header fields"), "{body}");
    assert_eq!(proxy.stat("downstream_rq_too_many_headers").await, 1);
    let mut s = client(proxy.http).await;
    s.send(&padded(2, 3000)).await.unwrap();
    let (status, body) = read_response(&mut s).await;
    assert_eq!(status, 431, "{body}");
    assert!(body.contains("larger than 4096 bytes"), "{body}");
    assert_eq!(proxy.stat("downstream_rq_headers_too_large").await, 1);

    // The hyper path (a connection whose first request was chunked): hyper answers 431 itself,
    // and the proxy counts it when hyper hands the connection back, just after the answer.
    let mut s = hyper_path_connection(proxy.http).await;
    s.send(&padded(10, 10)).await.unwrap();
    assert_eq!(read_response(&mut s).await.0, 431);
    eventually(PATIENCE, || async {
        proxy.stat("downstream_rq_too_many_headers").await == 2
    })
    .await;
    let mut s = hyper_path_connection(proxy.http).await;
    s.send(&padded(2, 3000)).await.unwrap();
    assert_eq!(read_response(&mut s).await.0, 431);
    eventually(PATIENCE, || async {
        proxy.stat("downstream_rq_headers_too_large").await == 2
    })
    .await;
    assert_eq!(proxy.stat("downstream_rq_too_many_headers").await, 2);

    // HTTP/2 with prior knowledge.
    let tcp = TcpStream::connect(proxy.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let h2_request = |count: usize, size: usize| {
        let mut b = http::Request::get("http://web.test/");
        for i in 0..count {
            b = b.header(format!("x-pad-{i}"), "p".repeat(size));
        }
        b.body(Empty::<Bytes>::new()).unwrap()
    };
    let ok = sender.send_request(h2_request(5, 10)).await.unwrap();
    assert_eq!(ok.status(), 200);
    let many = sender.send_request(h2_request(11, 10)).await.unwrap();
    assert_eq!(many.status(), 431);
    assert_eq!(proxy.stat("downstream_rq_too_many_headers").await, 3);
    let large = sender.send_request(h2_request(2, 3000)).await.unwrap();
    assert_eq!(large.status(), 431);
    assert_eq!(proxy.stat("downstream_rq_headers_too_large").await, 3);

    // Besides those: the two chunked requests that opened hyper-path connections, and the
    // HTTP/2 request within the limits.
    assert_eq!(up.requests(), passed + 3, "a refused request went upstream");
    proxy.assert_healthy();
}

#[tokio::test]
async fn slow_heads_get_408_and_idle_keep_alive_connections_close_on_the_fast_path() {
    let up = HttpUpstream::start((unique_loopback(), 80).into(), "web");
    let yaml = entry("web", "web.test", 80, "HTTP", up.addr());
    let mut proxy = Proxy::start(&yaml, &["--header-read-timeout", "300ms", "--idle-timeout", "800ms"]).await;

    // Half a head: 408 once the header timeout has passed.
    let mut s = client(proxy.http).await;
    s.send(b"GET http://web.test/ HTTP/1.1\r\nHost: web").await.unwrap();
    let elapsed = timed_out_408(&mut s).await;
    assert!(elapsed >= Duration::from_millis(250), "408 after {elapsed:?}");
    assert_eq!(proxy.stat("downstream_rq_header_timeout").await, 1);

    // A new connection that says nothing is closed at the header timeout too, silently: the
    // header timeout's counter says which timer closed it, not the idle timeout's.
    let mut s = client(proxy.http).await;
    let (got, elapsed) = until_closed(&mut s, PATIENCE).await;
    assert!(got.is_empty());
    assert!(elapsed >= Duration::from_millis(250), "closed after {elapsed:?}");
    assert_eq!(proxy.stat("downstream_rq_header_timeout").await, 2);
    assert_eq!(proxy.stat("downstream_cx_idle_timeout").await, 0);

    // After a request, the connection may idle for the idle timeout (longer than the header
    // timeout), then it is closed.
    let mut s = client(proxy.http).await;
    s.send(GET).await.unwrap();
    assert_eq!(read_response(&mut s).await.0, 200);
    let (got, elapsed) = until_closed(&mut s, PATIENCE).await;
    assert!(got.is_empty());
    assert!(
        (Duration::from_millis(700)..Duration::from_secs(3)).contains(&elapsed),
        "idle connection closed after {elapsed:?}; --idle-timeout is 800ms"
    );
    assert_eq!(proxy.stat("downstream_cx_idle_timeout").await, 1);

    // Idle time does not eat into the next head's time: a request after 500 ms of idling
    // (more than the header timeout) is served.
    let mut s = client(proxy.http).await;
    s.send(GET).await.unwrap();
    assert_eq!(read_response(&mut s).await.0, 200);
    // The idling is the scenario: longer than the header timeout, shorter than the idle one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.send(GET).await.unwrap();
    assert_eq!(read_response(&mut s).await.0, 200);
    assert_eq!(proxy.stat("downstream_rq_header_timeout").await, 2);
    assert_eq!(proxy.stat("downstream_cx_idle_timeout").await, 1);
    proxy.assert_healthy();
}

#[tokio::test]
async fn slow_heads_get_408_and_idle_connections_close_on_the_hyper_and_http2_paths() {
    let up = HttpUpstream::start((unique_loopback(), 80).into(), "web");
    let yaml = entry("web", "web.test", 80, "HTTP", up.addr());
    let mut proxy = Proxy::start(&yaml, &["--header-read-timeout", "300ms", "--idle-timeout", "800ms"]).await;

    // A second head that stops halfway: 408.
    let mut s = hyper_path_connection(proxy.http).await;
    s.send(b"GET http://web.test/ HTTP/1.1\r\nHo").await.unwrap();
    let elapsed = timed_out_408(&mut s).await;
    assert!(elapsed >= Duration::from_millis(250), "408 after {elapsed:?}");
    // The header timeout's counter, not the idle timeout's: the right timer fired.
    assert_eq!(proxy.stat("downstream_rq_header_timeout").await, 1);
    assert_eq!(proxy.stat("downstream_cx_idle_timeout").await, 0);

    // Idle after a response: kept past the header timeout, closed at the idle timeout.
    let mut s = hyper_path_connection(proxy.http).await;
    // The idling is the scenario: longer than the header timeout, shorter than the idle one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.send(CHUNKED_POST).await.unwrap();
    assert_eq!(
        read_response(&mut s).await.0,
        200,
        "idle 500 ms is within --idle-timeout"
    );
    let (got, elapsed) = until_closed(&mut s, PATIENCE).await;
    assert!(got.is_empty());
    assert!(
        (Duration::from_millis(700)..Duration::from_secs(3)).contains(&elapsed),
        "closed after {elapsed:?}; --idle-timeout is 800ms"
    );
    assert_eq!(proxy.stat("downstream_cx_idle_timeout").await, 1);

    // HTTP/2: no stream open for the idle timeout closes the connection.
    let tcp = TcpStream::connect(proxy.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(
            http::Request::get("http://web.test/")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    let started = Instant::now();
    let _ = tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("the HTTP/2 connection stays open");
    let elapsed = started.elapsed();
    assert!(
        (Duration::from_millis(700)..Duration::from_secs(3)).contains(&elapsed),
        "HTTP/2 connection closed after {elapsed:?}; --idle-timeout is 800ms"
    );
    assert_eq!(proxy.stat("downstream_cx_idle_timeout").await, 2);
    assert_eq!(proxy.stat("downstream_rq_header_timeout").await, 1);
    proxy.assert_healthy();
}

#[tokio::test]
async fn a_silent_tunnel_is_closed_after_the_tcp_idle_timeout_and_a_busy_one_is_not() {
    let echo = TcpEcho::start((unique_loopback(), 9000).into(), "echo");
    let yaml = entry("echo", "echo.test", 9000, "TCP", echo.addr());
    let mut proxy = Proxy::start(&yaml, &["--tcp-idle-timeout", "400ms"]).await;

    let mut s = RawClient::new(raw::tunnel(proxy.http, "echo.test:9000", PATIENCE).await.unwrap());
    // Busy for twice the idle timeout: a byte each 100 ms, each echoed.
    for i in 0..8u8 {
        s.send(&[b'0' + i]).await.unwrap();
        assert_eq!(s.read_exact(1, PATIENCE).await.unwrap(), [b'0' + i]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(proxy.stat("tcp_idle_timeout").await, 0);
    // Then silent.
    let (got, elapsed) = until_closed(&mut s, PATIENCE).await;
    assert!(got.is_empty());
    assert!(
        (Duration::from_millis(250)..Duration::from_secs(3)).contains(&elapsed),
        "closed after {elapsed:?}; --tcp-idle-timeout is 400ms"
    );
    assert_eq!(proxy.stat("tcp_idle_timeout").await, 1);
    proxy.assert_healthy();
}

/// An address whose accept queue is full, so a connection attempt gets no answer at all (the
/// SYN is dropped) until it times out. The returned sockets keep the queue full.
fn unanswering() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&SocketAddr::new(unique_loopback().into(), 0).into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fill.push(s),
            Err(_) => return (listener, fill, addr),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

#[tokio::test]
async fn connect_and_response_timeouts_are_answered_503_and_504_and_counted() {
    let (_listener, _fill, silent) = unanswering();
    let stall = Stall::start((unique_loopback(), 80).into());
    let up = HttpUpstream::start((unique_loopback(), 80).into(), "web");
    let yaml = entry("silent", "silent.test", 80, "HTTP", silent)
        + &entry("stall", "stall.test", 80, "HTTP", stall.addr())
        + &entry("web", "web.test", 80, "HTTP", up.addr());
    let mut proxy = Proxy::start(
        &yaml,
        &[
            "--connect-timeout",
            "200ms",
            "--response-timeout",
            "300ms",
            "--upstream-idle-timeout",
            "200ms",
            "--workers",
            "1",
        ],
    )
    .await;

    // The 200 ms connect timeout, not the kernel's SYN retries (a minute and more).
    let started = Instant::now();
    let (status, body) = curl_status(proxy.http, "http://silent.test/", &[]);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("timed out"), "{body}");
    assert!(started.elapsed() < PATIENCE, "took {:?}", started.elapsed());
    assert_eq!(proxy.stat("upstream_cx_connect_timeout").await, 1);

    let started = Instant::now();
    let (status, body) = curl_status(proxy.http, "http://stall.test/", &[]);
    assert_eq!(status, 504, "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "504 after {:?}",
        started.elapsed()
    );
    assert_eq!(proxy.stat("upstream_rq_timeout").await, 1);
    assert_eq!(proxy.stat("upstream_cx_connect_timeout").await, 1);

    // An idle pooled connection past --upstream-idle-timeout is closed, not reused. One
    // worker, so both requests see the same pool.
    assert_eq!(curl_status(proxy.http, "http://web.test/", &[]).0, 200);
    // The idling is the scenario: past the 200 ms idle timeout, and before the pool's sweeper
    // (every second) closes the connection itself, so that the next request finds it expired.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(curl_status(proxy.http, "http://web.test/", &[]).0, 200);
    assert_eq!(
        up.connections(),
        2,
        "the pooled connection was reused after its idle timeout"
    );
    assert_eq!(proxy.stat("upstream_cx_idle_timeout").await, 1);
    proxy.assert_healthy();
}
