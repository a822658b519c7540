//! HTTP/1.1 framing through the proxy's fast path, with raw sockets on both sides where the
//! test must control bytes exactly: HEAD and 204 responses without bodies, Content-Length
//! request bodies, pipelined requests, chunked request bodies (served by the general path),
//! close-delimited responses, and an idle pooled connection the upstream closed.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use meshentry_testutil::{HttpUpstream, Proxy, RawClient, RawResponse, eventually, unique_loopback};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");
const PATIENCE: Duration = Duration::from_secs(5);

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

async fn start(config: &str) -> Proxy {
    Proxy::builder(BIN)
        .config(config)
        .args(["--outbound-policy", "REGISTRY_ONLY"])
        .start()
        .await
}

/// A client connection to the proxy's explicit listener.
async fn client(proxy: &Proxy) -> RawClient {
    RawClient::connect(proxy.http()).await.unwrap()
}

/// Sends `request` and reads its response strictly (RFC 9112 framing, nothing ambiguous).
async fn exchange(c: &mut RawClient, request: &[u8]) -> RawResponse {
    c.send(request).await.unwrap();
    let method = String::from_utf8_lossy(request.split(|b| *b == b' ').next().unwrap()).into_owned();
    c.read_response(&method, PATIENCE).await.unwrap()
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn bodiless_responses_keep_the_connection_in_step() {
    let up = HttpUpstream::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 80), "web");
    let proxy = start(&service("web.example.com", up.addr())).await;
    let mut c = client(&proxy).await;

    let r = exchange(
        &mut c,
        b"HEAD http://web.example.com/ HTTP/1.1\r\nHost: web.example.com\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.is_empty());

    let r = exchange(
        &mut c,
        b"GET http://web.example.com/status/204 HTTP/1.1\r\nHost: web.example.com\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");

    // The same connection is still in step: a GET after them gets its own response.
    let r = exchange(
        &mut c,
        b"GET http://web.example.com/after HTTP/1.1\r\nHost: web.example.com\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(json(&r.body)["path"], "/after");
    assert!(
        c.buffered().is_empty(),
        "unexpected bytes after the last response: {:?}",
        String::from_utf8_lossy(c.buffered())
    );
}

#[tokio::test]
async fn content_length_bodies_and_pipelined_requests() {
    let up = HttpUpstream::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 80), "web");
    let proxy = start(&service("web.example.com", up.addr())).await;
    let mut c = client(&proxy).await;
    // Two requests in one write: a POST with a body, then a GET.
    c.send(
        b"POST http://web.example.com/one HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: 11\r\n\r\nhello world\
          GET http://web.example.com/two HTTP/1.1\r\nHost: web.example.com\r\n\r\n",
    )
    .await
    .unwrap();
    let r = c.read_response("POST", PATIENCE).await.unwrap();
    assert_eq!(r.status, 200);
    let v = json(&r.body);
    assert_eq!(
        (v["method"].as_str(), v["path"].as_str(), v["body"].as_str()),
        (Some("POST"), Some("/one"), Some("hello world"))
    );
    let r = c.read_response("GET", PATIENCE).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(json(&r.body)["path"], "/two");

    // A body sent in pieces, after the head, arrives whole.
    c.send(b"PUT http://web.example.com/three HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: 6\r\n\r\nab")
        .await
        .unwrap();
    // Two segments, not one: the proxy must wait for the rest of the body.
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"cdef").await.unwrap();
    let r = c.read_response("PUT", PATIENCE).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(json(&r.body)["body"], "abcdef");
}

#[tokio::test]
async fn chunked_request_bodies_are_forwarded() {
    let up = HttpUpstream::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 80), "web");
    let proxy = start(&service("web.example.com", up.addr())).await;
    let mut c = client(&proxy).await;
    let r = exchange(
        &mut c,
        b"POST http://web.example.com/chunks HTTP/1.1\r\nHost: web.example.com\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(json(&r.body)["body"], "hello world");
}

/// A raw upstream: for each connection, answers every request head with `response`, and
/// closes after `per_connection` responses. Counts connections accepted and closed.
async fn raw_upstream(
    response: &'static [u8],
    per_connection: usize,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(unique_loopback()), 8080))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (count, count_closed) = (connections.clone(), closed.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let count_closed = count_closed.clone();
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
                drop(s);
                count_closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, connections, closed)
}

#[tokio::test]
async fn close_delimited_responses_end_with_the_connection() {
    let (addr, _, _) = raw_upstream(b"HTTP/1.1 200 OK\r\nX-Raw: 1\r\n\r\nuntil close", 1).await;
    let proxy = start(&service("raw.example.com", addr)).await;
    let mut c = client(&proxy).await;
    let r = exchange(
        &mut c,
        b"GET http://raw.example.com/ HTTP/1.1\r\nHost: raw.example.com\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("connection").map(str::to_ascii_lowercase).as_deref(),
        Some("close"),
        "{r:?}"
    );
    assert_eq!(r.body, b"until close");
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced_transparently() {
    // Each upstream connection answers once, then closes without saying so.
    let (addr, connections, closed) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1).await;
    let proxy = start(&service("stale.example.com", addr)).await;
    let mut c = client(&proxy).await;
    for i in 0..5 {
        let r = exchange(
            &mut c,
            b"GET http://stale.example.com/ HTTP/1.1\r\nHost: stale.example.com\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.body, b"ok");
        // The upstream has closed the pooled connection before the next request is sent.
        eventually(PATIENCE, || async { closed.load(Ordering::SeqCst) == i + 1 }).await;
    }
    assert_eq!(connections.load(Ordering::SeqCst), 5);
}

/// RFC 9112 6.3 lets an intermediary forward such a response with its Content-Length
/// removed, but calls it a likely smuggling or splitting attempt; Envoy (Istio's proxy) refuses
/// it, and so do we: 502 with UPE, and the upstream connection it came on is never reused.
#[tokio::test]
async fn a_chunked_response_with_a_content_length_is_refused_and_its_connection_dropped() {
    let (addr, connections, _) = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        100,
    )
    .await;
    let proxy = start(&service("both.example.com", addr)).await;
    let mut c = client(&proxy).await;
    for i in 0..2 {
        let r = exchange(
            &mut c,
            b"GET http://both.example.com/ HTTP/1.1\r\nHost: both.example.com\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 502, "{r:?}");
        assert_eq!(r.header("x-meshentry-response-flags"), Some("UPE"), "{r:?}");
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
    let mut c = client(&proxy).await;
    let r = exchange(
        &mut c,
        b"GET http://idle.example.com/ HTTP/1.1\r\nHost: idle.example.com\r\n\r\n",
    )
    .await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    let (read, after) = closed_rx.await.unwrap();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the proxy must close its end of the pooled connection: {read:?}"
    );
    assert!(after < Duration::from_secs(3), "closed after {after:?}");
}
