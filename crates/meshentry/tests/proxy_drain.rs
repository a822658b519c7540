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
use meshentry_testutil::{HttpUpstream, TcpEcho, eventually, unique_loopback};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;

const PATIENCE: Duration = Duration::from_secs(10);

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

/// A response read off a raw connection: status, head (lowercase) and body.
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Sends a GET for `path` on `s` through the explicit proxy (keep-alive).
async fn send(s: &mut TcpStream, path: &str) {
    let req = format!("GET http://web.internal{path} HTTP/1.1\r\nHost: web.internal\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
}

/// Reads one Content-Length response; `None` if the connection closed first.
async fn read_response(s: &mut TcpStream) -> Option<Raw> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(PATIENCE, s.read(&mut chunk)).await.unwrap() {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(PATIENCE, s.read(&mut chunk)).await.unwrap() {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(Raw { status, head, body })
}

/// Whether the peer closed `s`: a read returns end of stream (or a reset) within `within`.
async fn closed(s: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, s.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn open_tunnel(proxy: SocketAddr, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(PATIENCE, s.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "closed during the CONNECT response: {head:?}");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    s
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
    let mut proxy = support::start_proxy(&config(web.addr(), echo.addr()), &["--drain-timeout", "20s"]).await;

    // An idle keep-alive connection, its first request answered.
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    send(&mut idle, "/first").await;
    let first = read_response(&mut idle).await.unwrap();
    assert_eq!(first.status, 200);
    assert!(!first.head.contains("connection: close"), "{}", first.head);
    // A TCP relay (a CONNECT tunnel to an echo service).
    let mut tunnel = open_tunnel(proxy.addr, "echo.internal:9000").await;
    assert_eq!(echo_through(&mut tunnel, "before").await.unwrap(), "before");
    // Requests in flight: five HTTP/1.1 on connections of their own, one HTTP/2.
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        send(&mut s, "/delay/1000").await;
        slow.push(s);
    }
    let h2 = tokio::spawn(h2_get(proxy.addr, "/delay/1000"));
    eventually(PATIENCE, || async { web.requests() == 7 }).await;

    let sent = Instant::now();
    proxy.process.terminate();

    // The admin server keeps answering, and says so.
    eventually(PATIENCE, || async { proxy.admin_get("/ready").await.0 == 503 }).await;
    let (_, info) = proxy.admin_get("/server_info").await;
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["state"], "DRAINING");
    // New connections are refused.
    eventually(Duration::from_secs(2), || async {
        TcpStream::connect(proxy.addr)
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
        let r = read_response(&mut s)
            .await
            .expect("a full response to a request in flight");
        assert_eq!(r.status, 200, "{}", r.head);
        assert!(r.head.contains("connection: close"), "{}", r.head);
        assert!(String::from_utf8_lossy(&r.body).contains("\"upstream\":\"web\""));
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
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    let mut proxy = support::start_proxy(&config(web.addr(), echo.addr()), &["--drain-timeout", "1s"]).await;
    let mut tunnel = open_tunnel(proxy.addr, "echo.internal:9000").await;
    assert_eq!(echo_through(&mut tunnel, "hello").await.unwrap(), "hello");
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
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
        closed(&mut tunnel, Duration::from_secs(2)).await,
        "the tunnel outlived the proxy"
    );
    assert!(read_response(&mut slow).await.is_none(), "a response arrived after all");
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
    let mut proxy = support::start_proxy(&config(web.addr(), echo.addr()), &["--drain-timeout", "20s"]).await;
    let sent = Instant::now();
    proxy.process.terminate();
    let status = proxy.process.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}");
    assert!(sent.elapsed() < Duration::from_secs(2), "took {:?}", sent.elapsed());
}
