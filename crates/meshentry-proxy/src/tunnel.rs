//! A CONNECT tunnel after the 200: look at the client's first bytes (a TLS ClientHello's SNI
//! must agree with the CONNECT target), then relay bytes both ways.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::http::ConnCtx;
use crate::sni::{MAX_CLIENT_HELLO, Sniff, sniff};
use crate::upstream::Stream;

/// What the tunnel was opened for.
pub struct Target {
    pub host: String,
    pub port: u16,
    /// The service port is TLS or HTTPS: anything but a ClientHello is refused.
    pub expects_tls: bool,
    /// For logs.
    pub cluster: String,
}

/// What the client sent first.
enum First {
    Hello {
        sni: Option<String>,
    },
    /// Bytes that are not TLS.
    Other,
    /// Nothing before the sniff timeout, or the upstream spoke first (MySQL and friends).
    Nothing,
    /// Looked like TLS but is not a valid ClientHello (including one cut short).
    BadTls(&'static str),
    ClientClosed,
}

/// TLS alert descriptions we send when refusing (RFC 8446 6.2).
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_UNRECOGNIZED_NAME: u8 = 112;

/// Relays between `client` and `upstream` until both sides are done.
pub async fn run<C>(mut client: C, mut upstream: Stream, ctx: &ConnCtx, target: &Target)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let shared = &ctx.shared;
    let mut buf = Vec::with_capacity(2048);
    let first = sniff_client(&mut client, &upstream, &mut buf, shared.config.sniff_timeout).await;
    let refuse = match &first {
        First::ClientClosed => return,
        First::Hello { sni: Some(sni) }
            if target.host.parse::<std::net::IpAddr>().is_err() && !sni.eq_ignore_ascii_case(&target.host) =>
        {
            shared.stats.sni_mismatch.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                peer = %ctx.peer, connect = %target.host, port = target.port, sni = %sni,
                "tunnel refused: the TLS server name differs from the CONNECT target"
            );
            Some(Some(ALERT_UNRECOGNIZED_NAME))
        }
        First::Hello { .. } => None,
        First::BadTls(reason) => {
            shared.stats.bad_tunnel_traffic.fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer = %ctx.peer, host = %target.host, port = target.port, reason, "tunnel refused: malformed TLS ClientHello");
            Some(Some(ALERT_DECODE_ERROR))
        }
        First::Other | First::Nothing if target.expects_tls => {
            shared.stats.bad_tunnel_traffic.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                peer = %ctx.peer, host = %target.host, port = target.port, cluster = %target.cluster,
                "tunnel refused: the port is declared TLS but the client did not start a TLS handshake"
            );
            Some(None)
        }
        First::Other | First::Nothing => None,
    };
    if let Some(alert) = refuse {
        if let Some(desc) = alert {
            let _ = client.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, desc]).await;
        }
        let _ = client.shutdown().await;
        return;
    }
    if !buf.is_empty() && upstream.write_all(&buf).await.is_err() {
        return;
    }
    drop(buf);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(host = %target.host, port = target.port, up, down, "tunnel closed"),
        Err(e) => tracing::debug!(host = %target.host, port = target.port, error = %e, "tunnel ended with an error"),
    }
}

/// Reads the client's first bytes until they say what they are, the client stops, the
/// upstream speaks first, or `timeout` passes.
async fn sniff_client<C>(client: &mut C, upstream: &Stream, buf: &mut Vec<u8>, timeout: Duration) -> First
where
    C: AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = tokio::select! {
            r = client.read_buf(buf) => r,
            _ = upstream.readable(), if buf.is_empty() => return First::Nothing,
            _ = tokio::time::sleep_until(deadline) => {
                return if buf.is_empty() {
                    First::Nothing
                } else if buf[0] == 0x16 {
                    First::BadTls("ClientHello cut short")
                } else {
                    First::Other
                };
            }
        };
        match read {
            Ok(0) | Err(_) if buf.is_empty() => return First::ClientClosed,
            Ok(0) | Err(_) => {
                // The client half-closed after some bytes: judge what it sent.
                return match sniff(buf) {
                    Sniff::Hello(h) => First::Hello {
                        sni: h.server_name.map(|s| s.into_owned()),
                    },
                    Sniff::NotTls => First::Other,
                    Sniff::Invalid(r) => First::BadTls(r),
                    Sniff::Incomplete => First::BadTls("ClientHello cut short"),
                };
            }
            Ok(_) => {}
        }
        match sniff(buf) {
            Sniff::Hello(h) => {
                return First::Hello {
                    sni: h.server_name.map(|s| s.into_owned()),
                };
            }
            Sniff::NotTls => return First::Other,
            Sniff::Invalid(r) => return First::BadTls(r),
            Sniff::Incomplete if buf.len() > MAX_CLIENT_HELLO + 1024 => return First::BadTls("ClientHello too large"),
            Sniff::Incomplete => {}
        }
    }
}
