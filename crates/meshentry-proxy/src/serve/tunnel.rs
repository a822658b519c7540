//! A CONNECT tunnel after the 200: look at the client's first bytes (a TLS ClientHello must
//! come first, and its SNI agree with the CONNECT target), then relay bytes both ways. A
//! tunnel to an HTTP port is served as HTTP instead (by [`crate::serve::http`], which owns
//! serving connections), and an HTTP/1.1 `Upgrade` (WebSocket) is relayed and then bridged
//! like a tunnel ([`upgrade`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::base::flags::Flags;
use crate::model::cluster::Cluster;
use crate::net::body::BodyWatch;
use crate::net::detect::{Detected, detect};
use crate::net::forward::{self, Original, Upstream};
use crate::net::upstream::{PooledBody, RequestBody, Stream};
use crate::obs::telemetry::{Routed, note};
use crate::route::{self, Decision};
use crate::serve::ctx::{ConnCtx, ResponseBody};
use crate::serve::record::TcpConn;
use crate::wire::alert;

/// What the tunnel was opened for.
pub struct Target {
    pub host: String,
    pub port: u16,
    /// The service port is TLS or HTTPS: anything but a ClientHello is refused.
    pub expects_tls: bool,
    /// For logs.
    pub cluster: String,
}

/// Relays between `client` and `upstream` until both sides are done; `tcp` records it.
pub async fn run<C>(client: C, upstream: Stream, ctx: &ConnCtx, target: &Target, tcp: &mut TcpConn)
where
    C: AsyncRead + AsyncWrite + crate::net::relay::Peer + Unpin,
{
    let mut client = client;
    let mut buf = BytesMut::with_capacity(2048);
    let first = detect(&mut client, &mut buf, ctx.shared.config.sniff_timeout, Some(&upstream)).await;
    if let Detected::Tls { sni: Some(sni) } = &first {
        tcp.set_server_name(sni);
    }
    match screen(&first, ctx, target) {
        Screen::Closed => {}
        Screen::Refuse(flags, alert) => refuse(client, tcp, flags, alert).await,
        Screen::Relay => relay(client, upstream, ctx, target, tcp, buf).await,
    }
}

/// What a tunnel does with a client whose first bytes were `first`.
enum Screen {
    /// The client left before sending anything.
    Closed,
    /// Refused with this flag, and this TLS alert when the client spoke TLS.
    Refuse(Flags, Option<u8>),
    Relay,
}

/// The checks every tunnel makes on its first bytes: a ClientHello's SNI must agree with a
/// CONNECT to a name (a shared proxy must never let a client name one host and reach another:
/// the route and the policy were decided for the CONNECT host), a port declared TLS must get a
/// ClientHello, and a malformed one is refused.
fn screen(first: &Detected, ctx: &ConnCtx, target: &Target) -> Screen {
    let shared = &ctx.shared;
    match first {
        Detected::Closed => Screen::Closed,
        Detected::Tls { sni: Some(sni) }
            if target.host.parse::<std::net::IpAddr>().is_err() && !sni.eq_ignore_ascii_case(&target.host) =>
        {
            shared.stats.sni_mismatch.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                peer = %ctx.peer, connect = %target.host, port = target.port, sni = %sni,
                "tunnel refused: the TLS server name differs from the CONNECT target"
            );
            Screen::Refuse(Flags::NR, Some(alert::UNRECOGNIZED_NAME))
        }
        Detected::Tls { .. } => Screen::Relay,
        // Includes a TLS record other than a handshake first (a ChangeCipherSpec): it would hide
        // the ClientHello behind it from the SNI check, from a server that skips it.
        Detected::BadTls(reason) => {
            shared.stats.bad_tunnel_traffic.fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer = %ctx.peer, host = %target.host, port = target.port, reason, "tunnel refused: malformed TLS ClientHello");
            Screen::Refuse(Flags::DPE, Some(alert::DECODE_ERROR))
        }
        Detected::Http1 | Detected::H2c | Detected::Other | Detected::Nothing if target.expects_tls => {
            shared.stats.bad_tunnel_traffic.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                peer = %ctx.peer, host = %target.host, port = target.port, cluster = %target.cluster,
                "tunnel refused: the port is declared TLS but the client did not start a TLS handshake"
            );
            Screen::Refuse(Flags::DPE, None)
        }
        Detected::Http1 | Detected::H2c | Detected::Other | Detected::Nothing => Screen::Relay,
    }
}

/// Refuses a tunnel's client (`flags` for its access log line): the TLS alert `alert` when it
/// spoke TLS, then a close.
async fn refuse<C>(mut client: C, tcp: &mut TcpConn, flags: Flags, alert: Option<u8>)
where
    C: AsyncWrite + Unpin,
{
    tcp.refused(flags, "");
    if let Some(desc) = alert {
        let _ = client.write_all(&alert::fatal(desc)).await;
    }
    let _ = client.shutdown().await;
}

/// `alert` for a client that spoke TLS, which understands one; none for any other.
fn tls_alert(first: &Detected, alert: u8) -> Option<u8> {
    matches!(first, Detected::Tls { .. }).then_some(alert)
}

/// Relays a screened tunnel, `buf` (its first bytes) first.
async fn relay<C>(mut client: C, mut upstream: Stream, ctx: &ConnCtx, target: &Target, tcp: &mut TcpConn, buf: BytesMut)
where
    C: AsyncRead + AsyncWrite + crate::net::relay::Peer + Unpin,
{
    let shared = &ctx.shared;
    tcp.relayed((buf.len() as u64, 0));
    if !buf.is_empty() && upstream.write_all(&buf).await.is_err() {
        return;
    }
    drop(buf);
    let mut copied = (0, 0);
    let idle = Some(shared.config.limits.tcp_idle_timeout);
    let relayed = crate::net::relay::copy_bidirectional_counted(&mut client, &mut upstream, idle, &mut copied).await;
    tcp.relayed(copied);
    match relayed {
        Ok(()) => {
            tracing::debug!(host = %target.host, port = target.port, up = copied.0, down = copied.1, "tunnel closed")
        }
        Err(e) if crate::net::relay::is_idle_timeout(&e) => {
            shared.stats.tcp_idle_timeout.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(host = %target.host, port = target.port, error = %e, "tunnel closed: idle");
        }
        // An upstream that refuses our client certificate does so only now (TLS 1.3): say so,
        // as a request would.
        Err(e) => match crate::live::tls::find_cause(&e) {
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

/// A CONNECT tunnel to `host:port` routed by its first bytes (already answered 200): they
/// are read (`buf` may hold them already) and screened as any tunnel's ([`screen`]); then the
/// registry's decision goes through the service port's TLS and TCP rules with the SNI they
/// give ([`route::hello_sni`]), as a captured connection's does; then it connects and relays.
/// Used where the SNI is not known from the request ([`route::TunnelSni::FirstBytes`]), and
/// for TLS sent through a tunnel to a port declared HTTP. `expects_tls`: the port is declared
/// TLS, so anything but a ClientHello is refused.
pub(crate) async fn route_first_bytes<C>(
    mut client: C,
    ctx: &ConnCtx,
    host: String,
    port: u16,
    expects_tls: bool,
    buf: BytesMut,
) where
    C: AsyncRead + AsyncWrite + crate::net::relay::Peer + Unpin,
{
    let shared = &ctx.shared;
    let snap = &ctx.snapshot;
    let mut buf = buf;
    let first = detect(&mut client, &mut buf, shared.config.sniff_timeout, None).await;
    let registry = route::route(snap, &host, port);
    let mut target = Target {
        host,
        port,
        expects_tls,
        cluster: registry.cluster_name().to_string(),
    };
    let alert = match screen(&first, ctx, &target) {
        Screen::Closed => return,
        Screen::Refuse(flags, alert) => Some((flags, alert)),
        Screen::Relay => None,
    };
    let sni = route::hello_sni(&target.host, &first);
    let dst = snap.tunnel_dst(&shared.dns, &registry, &target.host).await;
    let routed = route::l4_route(snap, registry, dst, sni);
    let mut tcp = TcpConn::open(
        shared,
        routed.as_ref().map_or(Routed::Unknown, Routed::of),
        ctx.peer,
        None,
        None,
    );
    if let Detected::Tls { sni: Some(sni) } = &first {
        tcp.set_server_name(sni);
    }
    if let Some((flags, alert)) = alert {
        refuse(client, &mut tcp, flags, alert).await;
        return;
    }
    let decision = match routed {
        Ok(Decision::Blocked) => {
            shared.stats.blocked.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %ctx.peer, host = %target.host, port, "tunnel refused: blocked by REGISTRY_ONLY");
            refuse(client, &mut tcp, Flags::NR, tls_alert(&first, alert::ACCESS_DENIED)).await;
            return;
        }
        Ok(d) => d,
        Err(missing) => {
            tracing::warn!(
                peer = %ctx.peer, host = %target.host, port, sni, vs = missing.vs, reason = missing.reason,
                "tunnel refused: the VirtualService routes to a missing destination"
            );
            refuse(client, &mut tcp, Flags::NR, tls_alert(&first, alert::ACCESS_DENIED)).await;
            return;
        }
    };
    let cluster = match &decision {
        Decision::Cluster { cluster, .. } => Some(&***cluster),
        Decision::Passthrough | Decision::Blocked => None,
    };
    target.cluster = decision.cluster_name().to_string();
    let to = Upstream {
        shared,
        live: snap,
        cluster,
        original: Original {
            host: &target.host,
            port,
        },
    };
    let upstream = match tcp.connect(&to).await {
        Ok(stream) => stream,
        Err(e) => {
            shared.stats.count_upstream_error(&e);
            tracing::info!(peer = %ctx.peer, host = %target.host, port, cluster = %target.cluster, flags = e.flag(), error = %e, "tunnel failed upstream");
            let _ = client.shutdown().await;
            return;
        }
    };
    shared.stats.tunnels.fetch_add(1, Ordering::Relaxed);
    relay(client, upstream, ctx, &target, &mut tcp, buf).await;
}

/// An HTTP/1.1 request that asks to switch protocols (`Upgrade`), and where it goes.
pub(crate) struct Upgrade<'a> {
    /// The request as the upstream gets it, with its `Upgrade` and `Connection: upgrade`.
    pub req: Request<RequestBody>,
    /// The client's side of the switch.
    pub client: hyper::upgrade::OnUpgrade,
    /// Where the client's request body (rarely one) reports its faults.
    pub watch: BodyWatch,
    pub version: Version,
    pub routed: Routed,
    pub cluster: Option<&'a Cluster>,
    pub original: &'a Original<'a>,
    /// The destination as the request named it, for logs and error responses.
    pub host: &'a str,
    pub port: u16,
}

/// Relays an `Upgrade` (a WebSocket handshake) on an upstream connection of its own: a 101
/// goes back to the client with the upstream's headers (its `Upgrade` and `Connection` kept),
/// and the two switched streams are then bridged, counted and logged as a tunnel. Any other
/// response is relayed as a response. Envoy does the same with `upgrade_configs`.
pub(crate) async fn upgrade(ctx: &Arc<ConnCtx>, up: Upgrade<'_>) -> Response<ResponseBody> {
    let shared = &ctx.shared;
    let cluster_name = up.routed.cluster_name().to_string();
    let (mut resp, addr, local) = match forward::send_upgrade(
        &Upstream {
            shared,
            live: &ctx.snapshot,
            cluster: up.cluster,
            original: *up.original,
        },
        up.req,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            return match up.watch.fault() {
                Some(fault) => crate::serve::ctx::body_failure(ctx, fault, up.version),
                None => crate::serve::ctx::upstream_failure(ctx, up.host, up.port, &cluster_name, &e),
            };
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        crate::serve::ctx::strip_hop_by_hop(&mut parts.headers);
        let body = PooledBody::shared(body, shared.config.limits.stream_idle_timeout);
        return Response::from_parts(parts, Either::Left(body));
    }
    let upstream_side = hyper::upgrade::on(&mut resp);
    let (parts, _) = resp.into_parts();
    let switched_to = parts.headers.get(header::UPGRADE).cloned();
    let mut headers = parts.headers;
    crate::serve::ctx::strip_hop_by_hop(&mut headers);
    if let Some(protocol) = switched_to {
        headers.insert(header::UPGRADE, protocol);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let mut switched = Response::new(Either::Right(Full::new(Bytes::new())));
    *switched.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *switched.headers_mut() = headers;

    shared.stats.tunnels.fetch_add(1, Ordering::Relaxed);
    note(|o| o.tunnel = true);
    let mut tcp = TcpConn::open(
        shared,
        up.routed,
        ctx.peer,
        ctx.transparent.as_ref().map(|t| t.dst),
        None,
    );
    if shared.telemetry.access_log().is_some() {
        tcp.upstream = Some(addr);
        tcp.upstream_local = local;
    }
    let client_side = up.client;
    let ctx = ctx.clone();
    tokio::spawn(async move {
        // The HTTP connection ends once it hands the stream over; a drain waits for this.
        let _tunnel = crate::rt::lifecycle::TunnelGuard::new(&ctx.shared.lifecycle);
        let (client, upstream) = tokio::join!(client_side, upstream_side);
        let (client, upstream) = match (client, upstream) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tcp.refused(Flags::DC, "");
                tracing::debug!(peer = %ctx.peer, client = ?c.err(), upstream = ?u.err(), "upgrade not completed");
                return;
            }
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        let mut copied = (0, 0);
        let idle = Some(ctx.shared.config.limits.tcp_idle_timeout);
        let relayed =
            crate::net::relay::copy_bidirectional_counted(&mut client, &mut upstream, idle, &mut copied).await;
        tcp.relayed(copied);
        match relayed {
            Ok(()) => tracing::debug!(up = copied.0, down = copied.1, "upgraded connection closed"),
            Err(e) if crate::net::relay::is_idle_timeout(&e) => {
                ctx.shared.stats.tcp_idle_timeout.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "upgraded connection closed: idle");
            }
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
        }
    });
    switched
}

/// A stream that first yields bytes already read from it.
pub struct Prefixed<I> {
    prefix: BytesMut,
    inner: I,
}

impl<I> Prefixed<I> {
    pub fn new(prefix: BytesMut, inner: I) -> Self {
        Self { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

write_through!(Prefixed);
