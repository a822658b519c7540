//! Graceful shutdown end to end (issue 8 item 4): SIGTERM closes the listeners, lets requests
//! in flight finish (closing their HTTP/1 connections after the response), closes idle
//! keep-alive connections, sends HTTP/2 clients GOAWAY, keeps TCP relays going, answers 503 on
//! `/ready`, and exits 0 once nothing is left, or when `--drain-timeout` is up.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshentry_testutil::{HttpUpstream, Proxy, RawClient, TcpEcho, eventually, raw, unique_loopback};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");
const PATIENCE: Duration = Duration::from_secs(10);

/// The proxy checks every 20 ms whether the drain is over; five checks are enough to see one
/// that wrongly ends it.
const DRAIN_CHECKS: Duration = Duration::from_millis(100);

async fn start(web: SocketAddr, echo: SocketAddr, drain_timeout: &str) -> Proxy {
    Proxy::builder(BIN)
        .config(config(web, echo))
        .args(["--drain-timeout", drain_timeout])
        .start()
        .await
}

fn config(web: SocketAddr, echo: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web}}
spec:
  hosts: [web.internal]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {}, ports: {{http: {}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [echo.internal]
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: {}, ports: {{tcp: {}}}}}]
",
        web.ip(),
        web.port(),
        echo.ip(),
        echo.port()
    )
}

/// Sends a GET for `path` through the explicit proxy (keep-alive).
async fn send(c: &mut RawClient, path: &str) {
    let req = format!("GET http://web.internal{path} HTTP/1.1\r\nHost: web.internal\r\n\r\n");
    c.send(req.as_bytes()).await.unwrap();
}

async fn client(proxy: &Proxy) -> RawClient {
    RawClient::connect(proxy.http()).await.unwrap()
}

/// Whether the peer closed the connection within `within`, with no byte after the last
/// response (a reset counts as a close).
async fn closed<S: AsyncRead + AsyncWrite + Unpin>(c: &mut RawClient<S>, within: Duration) -> bool {
    let (rest, eof) = c.read_for(within).await;
    eof && rest.is_empty()
}

async fn open_tunnel(proxy: SocketAddr, target: &str) -> TcpStream {
    raw::tunnel(proxy, target, PATIENCE).await.unwrap()
}

async fn echo_through(tunnel: &mut TcpStream, text: &str) -> std::io::Result<String> {
    tunnel.write_all(text.as_bytes()).await?;
    let mut back = vec![0u8; text.len()];
    tokio::time::timeout(PATIENCE, tunnel.read_exact(&mut back)).await??;
    Ok(String::from_utf8_lossy(&back).into_owned())
}

/// An HTTP/2 prior-knowledge request through the explicit proxy.
async fn h2_get(proxy: SocketAddr, path: &str) -> (u16, usize) {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://web.internal{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish_and_refuses_new_connections() {
    let ip = IpAddr::V4(unique_loopback());
    let web = HttpUpstream::start(SocketAddr::new(ip, 0), "web");
    let echo = TcpEcho::start(SocketAddr::new(ip, 0), "echo");
    let mut proxy = start(web.addr(), echo.addr(), "20s").await;

    // An idle keep-alive connection, its first request answered.
    let mut idle = client(&proxy).await;
    send(&mut idle, "/first").await;
    let first = idle.read_response("GET", PATIENCE).await.unwrap();
    assert_eq!(first.status, 200);
    assert!(!first.has_token("connection", "close"), "{first:?}");
    // A TCP relay (a CONNECT tunnel to an echo service).
    let mut tunnel = open_tunnel(proxy.http(), "echo.internal:9000").await;
    assert_eq!(echo_through(&mut tunnel, "before").await.unwrap(), "before");
    // Requests in flight: five HTTP/1.1 on connections of their own, one HTTP/2.
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut s = client(&proxy).await;
        send(&mut s, "/delay/1000").await;
        slow.push(s);
    }
    let h2 = tokio::spawn(h2_get(proxy.http(), "/delay/1000"));
    eventually(PATIENCE, || async { web.requests() == 7 }).await;

    let sent = Instant::now();
    proxy.process.terminate();

    // The admin server keeps answering, and says so.
    eventually(PATIENCE, || async {
        proxy.try_admin_get("/ready").await.is_ok_and(|r| r.status == 503)
    })
    .await;
    let info = proxy.admin_json("/server_info").await;
    assert_eq!(info["state"], "DRAINING");
    // New connections are refused.
    eventually(Duration::from_secs(2), || async {
        TcpStream::connect(proxy.http())
            .await
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .await;
    // The idle keep-alive connection is closed.
    assert!(
        closed(&mut idle, Duration::from_secs(2)).await,
        "the idle connection stays open"
    );
    // The tunnel still relays.
    assert_eq!(echo_through(&mut tunnel, "during").await.unwrap(), "during");

    // Each request in flight gets its whole response, marked as the last on its connection,
    // and then the connection closes.
    for mut s in slow {
        let r = s
            .read_response("GET", PATIENCE)
            .await
            .expect("a full response to a request in flight");
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.has_token("connection", "close"), "{r:?}");
        assert!(r.text().contains("\"upstream\":\"web\""));
        assert!(
            closed(&mut s, Duration::from_secs(2)).await,
            "kept open after the last response"
        );
    }
    let (status, len) = h2.await.unwrap();
    assert_eq!(status, 200);
    assert!(len > 0);

    // The tunnel is what keeps the proxy up now; once it closes the proxy exits, long before
    // the drain timeout.
    eventually(PATIENCE, || async {
        // The drain counts both: only the tunnel is left.
        let stats = proxy.try_stats().await?;
        let left = (stats["downstream_cx_active"], stats["downstream_tunnels_active"]);
        if left == (0, 1) {
            Ok(())
        } else {
            Err(format!("active connections, tunnels: {left:?}"))
        }
    })
    .await;
    tokio::time::sleep(DRAIN_CHECKS).await;
    assert!(proxy.process.try_wait().is_none(), "exited with a tunnel still open");
    assert_eq!(echo_through(&mut tunnel, "last").await.unwrap(), "last");
    drop(tunnel);
    let status = proxy.process.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}\n{}", proxy.process.output());
    assert!(sent.elapsed() < Duration::from_secs(10), "took {:?}", sent.elapsed());
    assert!(proxy.process.stderr().contains("drained: every connection finished"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_outlive_the_drain_timeout_are_closed() {
    let ip = IpAddr::V4(unique_loopback());
    let web = HttpUpstream::start(SocketAddr::new(ip, 0), "web");
    let echo = TcpEcho::start(SocketAddr::new(ip, 0), "echo");
    let mut proxy = start(web.addr(), echo.addr(), "1s").await;
    let mut tunnel = open_tunnel(proxy.http(), "echo.internal:9000").await;
    assert_eq!(echo_through(&mut tunnel, "hello").await.unwrap(), "hello");
    let mut slow = client(&proxy).await;
    send(&mut slow, "/delay/8000").await;
    eventually(PATIENCE, || async { web.requests() == 1 }).await;

    let sent = Instant::now();
    proxy.process.terminate();
    let status = proxy.process.wait_exit(Duration::from_secs(5)).await;
    let took = sent.elapsed();
    assert!(status.success(), "{status}\n{}", proxy.process.output());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "exited after {took:?}, the drain timeout is 1s"
    );
    assert!(
        closed(&mut RawClient::new(&mut tunnel), Duration::from_secs(2)).await,
        "the tunnel outlived the proxy"
    );
    let after = slow.read_response("GET", PATIENCE).await;
    assert!(
        after.is_err() && slow.closed() && slow.buffered().is_empty(),
        "the connection closed with no response byte: {after:?}"
    );
    assert!(
        proxy
            .process
            .stderr()
            .contains("drain timeout: closing the connections left")
    );
}

#[tokio::test]
async fn an_idle_proxy_exits_at_once() {
    let ip = IpAddr::V4(unique_loopback());
    let web = HttpUpstream::start(SocketAddr::new(ip, 0), "web");
    let echo = TcpEcho::start(SocketAddr::new(ip, 0), "echo");
    let mut proxy = start(web.addr(), echo.addr(), "20s").await;
    let sent = Instant::now();
    proxy.process.terminate();
    let status = proxy.process.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}");
    assert!(sent.elapsed() < Duration::from_secs(2), "took {:?}", sent.elapsed());
}
