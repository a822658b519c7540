//! HTTP/1.1 framing through the proxy's fast path, with raw sockets on both sides where the
//! test must control bytes exactly: HEAD and 204 responses without bodies, Content-Length
//! request bodies, pipelined requests, chunked request bodies (served by the general path),
//! close-delimited responses, and an idle pooled connection the upstream closed.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use meshentry_testutil::raw::{RawBackend, Reply};
use meshentry_testutil::{HttpUpstream, Proxy, RawClient, RawResponse, eventually, unique_loopback};

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

/// A raw upstream that parses each request strictly: on each connection it answers every
/// request with `response`, and closes after `per_connection` of them without having said so
/// (the proxy's pooled connection goes stale).
fn raw_upstream(response: &'static [u8], per_connection: usize) -> RawBackend {
    RawBackend::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 8080), move |r| {
        let reply = Reply::bytes(response);
        if r.seq >= per_connection {
            reply.then_close()
        } else {
            reply
        }
    })
}

/// Connections `backend` has closed itself.
fn closed_by(backend: &RawBackend) -> usize {
    backend.connections().iter().filter(|c| c.shut).count()
}

#[tokio::test]
async fn close_delimited_responses_end_with_the_connection() {
    let up = raw_upstream(b"HTTP/1.1 200 OK\r\nX-Raw: 1\r\n\r\nuntil close", 1);
    let proxy = start(&service("raw.example.com", up.addr())).await;
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
    let up = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1);
    let proxy = start(&service("stale.example.com", up.addr())).await;
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
        eventually(PATIENCE, || async { closed_by(&up) == i + 1 }).await;
    }
    assert_eq!(up.connections().len(), 5);
    assert!(up.errors().is_empty(), "{}", up.describe());
}

/// RFC 9112 6.3 lets an intermediary forward such a response with its Content-Length
/// removed, but calls it a likely smuggling or splitting attempt; Envoy (Istio's proxy) refuses
/// it, and so do we: 502 with UPE, and the upstream connection it came on is never reused.
#[tokio::test]
async fn a_chunked_response_with_a_content_length_is_refused_and_its_connection_dropped() {
    let up = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        100,
    );
    let proxy = start(&service("both.example.com", up.addr())).await;
    let mut c = client(&proxy).await;
    for i in 0..2 {
        let r = exchange(
            &mut c,
            b"GET http://both.example.com/ HTTP/1.1\r\nHost: both.example.com\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 502, "{r:?}");
        assert_eq!(r.header("x-meshentry-response-flags"), Some("UPE"), "{r:?}");
        assert_eq!(up.connections().len(), i + 1, "a new upstream connection per request");
    }
}

/// An idle pooled connection that the upstream closes is closed by the proxy too, without
/// waiting for a request to find it stale: otherwise it sits in CLOSE_WAIT holding a file
/// descriptor for as long as no request goes to that host (the soak benchmark found them).
#[tokio::test]
async fn an_idle_pooled_connection_the_upstream_closed_is_closed_promptly() {
    // One answer; idle for a moment (the connection is in the proxy's pool by then), then the
    // upstream's own idle timeout: it stops sending and waits for the proxy to close its end.
    let up = RawBackend::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 8080), |_| {
        Reply::bytes("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .then_sleep(Duration::from_millis(200))
            .then_close()
    });
    let proxy = start(&service("idle.example.com", up.addr())).await;
    let mut c = client(&proxy).await;
    let r = exchange(
        &mut c,
        b"GET http://idle.example.com/ HTTP/1.1\r\nHost: idle.example.com\r\n\r\n",
    )
    .await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    eventually(PATIENCE, || async { closed_by(&up) == 1 }).await;
    // Promptly: a pooled connection in CLOSE_WAIT is noticed by the pool's sweeper (every
    // second), not left until a request for that host happens to check it.
    let noticed = std::time::Instant::now();
    eventually(Duration::from_secs(3), || async {
        up.connection(1).is_some_and(|c| c.peer_closed)
    })
    .await;
    assert!(
        noticed.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        noticed.elapsed()
    );
    assert_eq!(up.connections().len(), 1);
    assert!(up.errors().is_empty(), "{}", up.describe());
}
