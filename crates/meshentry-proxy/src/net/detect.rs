//! What a client speaks, from its first bytes: a TLS ClientHello (and its SNI), an HTTP/1.x
//! request line, the HTTP/2 prior-knowledge preface, something else, or nothing at all.
//!
//! Envoy does this with its tls_inspector and http_inspector listener filters. As there, the
//! bytes read are kept and replayed to whoever handles the connection next. Unlike Istio's
//! default (no detection timeout, so a server-first protocol on an auto-detected port waits
//! forever), the wait is bounded: a client that sends nothing is treated as TCP.
//!
//! The verdict on the bytes read is [`meshentry_wire::detect`]'s (pure, and fuzzed there);
//! this module reads them.

use std::time::Duration;

use bytes::BytesMut;
pub use meshentry_wire::detect::{Detected, H2_PREFACE, classify, give_up};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::net::upstream::Stream;

/// Reads from `client` into `buf` until its bytes say what they are, the client stops
/// sending, `upstream` (when given: the connection is already open) speaks first, or
/// `timeout` passes. Everything read stays in `buf`.
pub async fn detect<C>(client: &mut C, buf: &mut BytesMut, timeout: Duration, upstream: Option<&Stream>) -> Detected
where
    C: AsyncRead + Unpin,
{
    if let Some(d) = classify(buf) {
        return d;
    }
    // A timer is armed when first polled, and arming one wakes the runtime's driver (a system
    // call). Polling the read first means a client whose first bytes are already here (the
    // usual case: a ClientHello or a request sent right after connecting) never arms it.
    let mut deadline = std::pin::pin!(tokio::time::sleep(timeout));
    loop {
        buf.reserve(2048);
        let read = tokio::select! {
            biased;
            r = client.read_buf(buf) => r,
            _ = async { match upstream { Some(u) => u.readable().await, None => std::future::pending().await } },
                if buf.is_empty() => return Detected::Nothing,
            _ = &mut deadline => return give_up(buf),
        };
        match read {
            Ok(0) | Err(_) if buf.is_empty() => return Detected::Closed,
            // The client half-closed after some bytes: judge what it sent.
            Ok(0) | Err(_) => return classify(buf).unwrap_or_else(|| give_up(buf)),
            Ok(_) => {}
        }
        if let Some(d) = classify(buf) {
            return d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_client_is_nothing_after_the_timeout() {
        let (mut client, _server) = tokio::io::duplex(64);
        let mut buf = BytesMut::new();
        let started = std::time::Instant::now();
        let d = detect(&mut client, &mut buf, Duration::from_millis(50), None).await;
        assert_eq!(d, Detected::Nothing);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn bytes_arriving_in_pieces_are_joined() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for b in b"GET / HTTP/1.1\r\n\r\n" {
                server.write_all(&[*b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            server
        });
        let mut buf = BytesMut::new();
        let d = detect(&mut client, &mut buf, Duration::from_secs(5), None).await;
        assert_eq!(d, Detected::Http1);
        assert!(buf.starts_with(b"GET / HTTP/1.1\r\n"));
        drop(writer.await);
    }
}
