//! A CONNECT tunnel after the 200: look at the client's first bytes (a TLS ClientHello's SNI
//! must agree with the CONNECT target), then relay bytes both ways.

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::detect::{Detected, detect};
use crate::flags::Flags;
use crate::http::ConnCtx;
use crate::telemetry::TcpConn;
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

/// TLS alert descriptions we send when refusing (RFC 8446 6.2).
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_UNRECOGNIZED_NAME: u8 = 112;

/// Relays between `client` and `upstream` until both sides are done; `tcp` records it.
pub async fn run<C>(mut client: C, mut upstream: Stream, ctx: &ConnCtx, target: &Target, tcp: &mut TcpConn)
where
    C: AsyncRead + AsyncWrite + crate::relay::Peer + Unpin,
{
    let shared = &ctx.shared;
    let mut buf = BytesMut::with_capacity(2048);
    let first = detect(&mut client, &mut buf, shared.config.sniff_timeout, Some(&upstream)).await;
    if let Detected::Tls { sni: Some(sni) } = &first {
        tcp.set_server_name(sni);
    }
    let refuse = match &first {
        Detected::Closed => return,
        Detected::Tls { sni: Some(sni) }
            if target.host.parse::<std::net::IpAddr>().is_err() && !sni.eq_ignore_ascii_case(&target.host) =>
        {
            shared.stats.sni_mismatch.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                peer = %ctx.peer, connect = %target.host, port = target.port, sni = %sni,
                "tunnel refused: the TLS server name differs from the CONNECT target"
            );
            Some(Some(ALERT_UNRECOGNIZED_NAME))
        }
        Detected::Tls { .. } => None,
        Detected::BadTls(reason) => {
            shared.stats.bad_tunnel_traffic.fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer = %ctx.peer, host = %target.host, port = target.port, reason, "tunnel refused: malformed TLS ClientHello");
            Some(Some(ALERT_DECODE_ERROR))
        }
        Detected::Http1 | Detected::H2c | Detected::Other | Detected::Nothing if target.expects_tls => {
            shared.stats.bad_tunnel_traffic.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                peer = %ctx.peer, host = %target.host, port = target.port, cluster = %target.cluster,
                "tunnel refused: the port is declared TLS but the client did not start a TLS handshake"
            );
            Some(None)
        }
        Detected::Http1 | Detected::H2c | Detected::Other | Detected::Nothing => None,
    };
    if let Some(alert) = refuse {
        let flags = match alert {
            Some(ALERT_UNRECOGNIZED_NAME) => Flags::NR,
            _ => Flags::DPE,
        };
        tcp.refused(flags, "");
        if let Some(desc) = alert {
            let _ = client.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, desc]).await;
        }
        let _ = client.shutdown().await;
        return;
    }
    tcp.relayed((buf.len() as u64, 0));
    if !buf.is_empty() && upstream.write_all(&buf).await.is_err() {
        return;
    }
    drop(buf);
    let mut copied = (0, 0);
    let idle = Some(shared.config.limits.tcp_idle_timeout);
    let relayed = crate::relay::copy_bidirectional_counted(&mut client, &mut upstream, idle, &mut copied).await;
    tcp.relayed(copied);
    match relayed {
        Ok(()) => {
            tracing::debug!(host = %target.host, port = target.port, up = copied.0, down = copied.1, "tunnel closed")
        }
        Err(e) if crate::relay::is_idle_timeout(&e) => {
            shared.stats.tcp_idle_timeout.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(host = %target.host, port = target.port, error = %e, "tunnel closed: idle");
        }
        // An upstream that refuses our client certificate does so only now (TLS 1.3): say so,
        // as a request would.
        Err(e) => match crate::tls::find_cause(&e) {
            Some(cause) => {
                tcp.refused(Flags::UF, "");
                tcp.transport_failure = Some(cause.clone());
                shared.stats.upstream_tls_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(host = %target.host, port = target.port, cluster = %target.cluster, error = %cause, "tunnel failed upstream");
            }
            None => tracing::debug!(host = %target.host, port = target.port, error = %e, "tunnel ended with an error"),
        },
    }
}
