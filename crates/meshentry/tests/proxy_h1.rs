//! HTTP/1.1 framing through the proxy's fast path, with raw sockets on both sides where the
//! test must control bytes exactly: HEAD and 204 responses without bodies, Content-Length
//! request bodies, pipelined requests, chunked request bodies (served by the general path),
//! close-delimited responses, and an idle pooled connection the upstream closed.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use meshentry_testutil::{HttpUpstream, unique_loopback};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PATIENCE: Duration = Duration::from_secs(5);

mod support;

fn service(host: &str, upstream: SocketAddr) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {ip}, ports: {{http: {port}}}}}]
",
        name = host.split('.').next().unwrap(),
        ip = upstream.ip(),
        port = upstream.port()
    )
}

async fn start(config: &str) -> support::Proxy {
    support::start_proxy(config, &["--outbound-policy", "REGISTRY_ONLY"]).await
}

/// Reads one response: head, then a body of `Content-Length`, or chunked up to the last chunk,
/// or (neither) until close. Returns (status, head, body).
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> (u16, String, Vec<u8>) {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before a response head; got {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap());
    let chunked = lower.contains("transfer-encoding: chunked");
    let mut body = Vec::new();
    if head_request || status == 204 || status == 304 {
        return (status, head, body);
    }
    loop {
        let complete = match (length, chunked) {
            (_, true) => buf.windows(5).any(|w| w == b"0\r\n\r\n"),
            (Some(n), false) => buf.len() >= n,
            (None, false) => false,
        };
        if complete {
            let n = if chunked {
                buf.windows(5).position(|w| w == b"0\r\n\r\n").unwrap() + 5
            } else {
                length.unwrap()
            };
            body.extend(buf.drain(..n));
            return (status, head, body);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            assert!(length.is_none() && !chunked, "closed mid-body");
            body.append(buf);
            return (status, head, body);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn bodiless_responses_keep_the_connection_in_step() {
    let up = HttpUpstream::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 80), "web");
    let proxy = start(&service("web.example.com", up.addr())).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();

    s.write_all(b"HEAD http://web.example.com/ HTTP/1.1\r\nHost: web.example.com\r\n\r\n")
        .await
        .unwrap();
    let (status, head, body) = read_response(&mut s, &mut buf, true).await;
    assert_eq!(status, 200, "{head}");
    assert!(body.is_empty());

    s.write_all(b"GET http://web.example.com/status/204 HTTP/1.1\r\nHost: web.example.com\r\n\r\n")
        .await
        .unwrap();
    let (status, head, _) = read_response(&mut s, &mut buf, false).await;
    assert_eq!(status, 204, "{head}");

    // The same connection is still in step: a GET after them gets its own response.
    s.write_all(b"GET http://web.example.com/after HTTP/1.1\r\nHost: web.example.com\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut s, &mut buf, false).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["path"], "/after");
    assert!(
        buf.is_empty(),
        "unexpected bytes after the last response: {:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test]
async fn content_length_bodies_and_pipelined_requests() {
    let up = HttpUpstream::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 80), "web");
    let proxy = start(&service("web.example.com", up.addr())).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    // Two requests in one write: a POST with a body, then a GET.
    s.write_all(
        b"POST http://web.example.com/one HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: 11\r\n\r\nhello world\
          GET http://web.example.com/two HTTP/1.1\r\nHost: web.example.com\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let (status, _, body) = read_response(&mut s, &mut buf, false).await;
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(
        (v["method"].as_str(), v["path"].as_str(), v["body"].as_str()),
        (Some("POST"), Some("/one"), Some("hello world"))
    );
    let (status, _, body) = read_response(&mut s, &mut buf, false).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["path"], "/two");

    // A body sent in pieces, after the head, arrives whole.
    s.write_all(b"PUT http://web.example.com/three HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: 6\r\n\r\nab")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"cdef").await.unwrap();
    let (status, _, body) = read_response(&mut s, &mut buf, false).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["body"], "abcdef");
}

#[tokio::test]
async fn chunked_request_bodies_are_forwarded() {
    let up = HttpUpstream::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 80), "web");
    let proxy = start(&service("web.example.com", up.addr())).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"POST http://web.example.com/chunks HTTP/1.1\r\nHost: web.example.com\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let (status, _, body) = read_response(&mut s, &mut buf, false).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["body"], "hello world");
}

/// A raw upstream: for each connection, answers every request head with `response`, and
/// closes after `per_connection` responses.
async fn raw_upstream(response: &'static [u8], per_connection: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(unique_loopback()), 8080))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for _ in 0..per_connection {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 1024];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    if s.write_all(response).await.is_err() {
                        return;
                    }
                }
                // Closing without having said so: the proxy's pooled connection goes stale.
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn close_delimited_responses_end_with_the_connection() {
    let (addr, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nX-Raw: 1\r\n\r\nuntil close", 1).await;
    let proxy = start(&service("raw.example.com", addr)).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET http://raw.example.com/ HTTP/1.1\r\nHost: raw.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut s, &mut buf, false).await;
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    assert_eq!(body, b"until close");
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced_transparently() {
    // Each upstream connection answers once, then closes without saying so.
    let (addr, connections) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1).await;
    let proxy = start(&service("stale.example.com", addr)).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..5 {
        s.write_all(b"GET http://stale.example.com/ HTTP/1.1\r\nHost: stale.example.com\r\n\r\n")
            .await
            .unwrap();
        let (status, head, body) = read_response(&mut s, &mut buf, false).await;
        assert_eq!(status, 200, "request {i}: {head}");
        assert_eq!(body, b"ok");
        // Let the upstream's close reach the proxy before the next request.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(connections.load(Ordering::SeqCst), 5);
}

/// RFC 9112 6.3 lets an intermediary forward such a response with its Content-Length
/// removed, but calls it a likely smuggling or splitting attempt; Envoy (Istio's proxy) refuses
/// it, and so do we: 502 with UPE, and the upstream connection it came on is never reused.
#[tokio::test]
async fn a_chunked_response_with_a_content_length_is_refused_and_its_connection_dropped() {
    let (addr, connections) = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        100,
    )
    .await;
    let proxy = start(&service("both.example.com", addr)).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..2 {
        s.write_all(b"GET http://both.example.com/ HTTP/1.1\r\nHost: both.example.com\r\n\r\n")
            .await
            .unwrap();
        let (status, head, _) = read_response(&mut s, &mut buf, false).await;
        assert_eq!(status, 502, "{head}");
        assert!(head.contains("x-meshentry-response-flags: UPE"), "{head}");
        assert_eq!(
            connections.load(Ordering::SeqCst),
            i + 1,
            "a new upstream connection per request"
        );
    }
}

/// An idle pooled connection that the upstream closes is closed by the proxy too, without
/// waiting for a request to find it stale: otherwise it sits in CLOSE_WAIT holding a file
/// descriptor for as long as no request goes to that host (the soak benchmark found them).
#[tokio::test]
async fn an_idle_pooled_connection_the_upstream_closed_is_closed_promptly() {
    let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(unique_loopback()), 8080))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the proxy closed before sending its request");
            buf.extend_from_slice(&chunk[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        // Idle for a moment (the connection is in the proxy's pool now), then the upstream's
        // own idle timeout: it stops sending and waits for the proxy to close its end.
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.shutdown().await.unwrap();
        let started = std::time::Instant::now();
        let mut chunk = [0u8; 64];
        let r = tokio::time::timeout(PATIENCE, s.read(&mut chunk)).await;
        let _ = closed_tx.send((r.map(|r| r.map_err(|e| e.kind())), started.elapsed()));
    });
    let proxy = start(&service("idle.example.com", addr)).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET http://idle.example.com/ HTTP/1.1\r\nHost: idle.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (status, _, body) = read_response(&mut s, &mut buf, false).await;
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
    let (read, after) = closed_rx.await.unwrap();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the proxy must close its end of the pooled connection: {read:?}"
    );
    assert!(after < Duration::from_secs(3), "closed after {after:?}");
}
