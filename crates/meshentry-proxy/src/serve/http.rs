//! The hyper path of the explicit HTTP proxy (`HTTP_PROXY`/`HTTPS_PROXY`): absolute-form requests
//! (`GET http://host/path`), requests routed by their `Host` header, and `CONNECT` tunnels.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::base::flags::Flags;
use crate::net::body::ClientBody;
use crate::net::detect::{Detected, detect};
use crate::net::forward::{self, Original, Upstream};
use crate::obs::telemetry::{Routed, note};
use crate::route::{self, Decision, Resolution, TunnelSni, split_host_port};
use crate::rt::shared::Shared;
use crate::serve::ctx::*;
use crate::serve::record::{HttpStart, Metered, TcpConn};
use crate::serve::tunnel;

/// Serves one client connection with hyper until it closes. The fast path ([`crate::serve::h1`])
/// hands connections here, with the bytes it already read, when a request needs more than it
/// does (CONNECT, upgrades, chunked request bodies, `Expect`, HTTP/1.0).
pub async fn serve_io<I>(io: I, peer: SocketAddr, ctx: Arc<ConnCtx>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    serve_io_with(io, peer, ctx, None).await;
}

/// [`serve_io`] for the requests inside a CONNECT tunnel to `authority`: a request that
/// names no destination (no absolute URI, no `Host`) is for the tunnel's target.
pub(crate) async fn serve_io_with<I>(io: I, peer: SocketAddr, ctx: Arc<ConnCtx>, authority: Option<HeaderValue>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let shared = ctx.shared.clone();
    let limits = &shared.config.limits;
    let state = Arc::new(crate::serve::limits::ConnState::default());
    let io = crate::serve::limits::Guarded::new(io, shared.clone(), state.clone(), true);
    let service_state = state.clone();
    // Each request takes the context of the configuration in force when it arrives.
    let cell = arc_swap::ArcSwap::new(ctx);
    let service = service_fn(move |mut req: Request<Incoming>| {
        let ctx = ConnCtx::current(&cell);
        let in_flight = service_state.begin();
        if let Some(authority) = &authority
            && req.uri().authority().is_none()
            && !req.headers().contains_key(header::HOST)
        {
            req.headers_mut().insert(header::HOST, authority.clone());
        }
        let connect = req.method() == Method::CONNECT;
        async move {
            let resp = handle(req, &ctx).await;
            if (connect && resp.status().is_success()) || resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                in_flight.set_tunnel();
            }
            Ok::<_, Infallible>(resp.map(|b| crate::serve::limits::Tracked::new(b, in_flight)))
        }
    });
    let mut builder = http1::Builder::new();
    // The header timeout is `Guarded`'s: hyper's would also cut idle keep-alive connections.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(crate::serve::limits::hyper_buf_size(limits.max_head_bytes))
        .max_header_size(limits.max_head_bytes);
    if limits.max_headers != MAX_HEADERS {
        builder.max_headers(limits.max_headers);
    }
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    // Draining: an idle connection closes now, a busy one after its response (which `handle`
    // marks `Connection: close`).
    let result = run(
        conn.as_mut(),
        |c| c.graceful_shutdown(),
        &shared,
        std::future::pending(),
    )
    .await;
    if let Some(Err(e)) = result {
        if e.is_parse_too_large() {
            // hyper answered 431 itself; it reports a head too large and too many headers
            // alike, so the bytes read tell which.
            let counter = if state.head_bytes() > limits.max_head_bytes {
                &shared.stats.downstream_rq_headers_too_large
            } else {
                &shared.stats.downstream_rq_too_many_headers
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}

/// Streams reset by the client before hyper accepted them, read at once, that end the connection
/// (GOAWAY ENHANCE_YOUR_CALM); h2's default, named here because the budget in
/// [`crate::serve::h2_resets`] relies on it for resets that never reach the service.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// Streams the proxy's codec may reset for the client's protocol errors (or refuse past the
/// concurrency limit) before it ends the connection with GOAWAY ENHANCE_YOUR_CALM; hyper's
/// default (RUSTSEC-2024-0003), named so that it cannot silently become unlimited.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Serves one HTTP/2 prior-knowledge client connection until it closes; each request is
/// handled as on HTTP/1.1 ([`handle`]), with `:authority` in the role of `Host`. `io` yields the whole
/// connection from its first byte (the preface), including bytes a sniffer already read.
pub async fn serve_h2<I>(io: I, ctx: Arc<ConnCtx>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = ctx.peer;
    let shared = ctx.shared.clone();
    let limits = &shared.config.limits;
    // Idle connections (no stream open, no bytes either way) close after `--idle-timeout`;
    // HTTP/2 has no request heads to time. Each request takes the context of the
    // configuration in force when it arrives.
    let state = Arc::new(crate::serve::limits::ConnState::default());
    let budget = crate::serve::h2_resets::Budget::new(limits.http2_max_premature_resets);
    let io = crate::serve::limits::Guarded::new(io, shared.clone(), state.clone(), false);
    let io = crate::serve::h2_resets::Calm::new(io, budget.clone());
    let cell = arc_swap::ArcSwap::new(ctx);
    let streams = budget.clone();
    let service = service_fn(move |req| {
        let ctx = ConnCtx::current(&cell);
        let in_flight = state.begin();
        let mut watch = streams.stream(ctx.shared.clone());
        async move {
            // A stream its client already reset costs nothing upstream.
            crate::serve::h2_resets::cancellation_point().await;
            watch.routed();
            // `handle` keeps its future small (its work is boxed inside): hyper moves each
            // stream's future into the task it spawns for it, and tokio into the task's cell.
            let resp = handle(req, &ctx).await;
            watch.answered();
            Ok::<_, Infallible>(resp.map(|b| crate::serve::limits::Tracked::new(b, in_flight)))
        }
    });
    // The same bound on a request head as HTTP/1.1 (`handle` answers 431 past
    // `--max-request-headers-kb`; the margin lets it, rather than the codec, do so).
    let max_head = u32::try_from(crate::serve::limits::hyper_buf_size(limits.max_head_bytes)).unwrap_or(u32::MAX);
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(max_head)
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Draining: GOAWAY, then the streams already open finish. Overdrawn reset budget: the
    // connection ends now, its streams with it, and `Calm` sends the GOAWAY.
    let Some(result) = run(conn.as_mut(), |c| c.graceful_shutdown(), &shared, budget.exceeded()).await else {
        budget.abort();
        shared
            .stats
            .downstream_rq_too_many_premature_resets
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            %peer, max = limits.http2_max_premature_resets,
            "HTTP/2 client connection closed (GOAWAY ENHANCE_YOUR_CALM): too many streams reset prematurely (--http2-max-premature-resets)"
        );
        return;
    };
    if let Err(e) = result {
        if calmed_by_codec(&e) {
            shared
                .stats
                .downstream_rq_too_many_premature_resets
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, error = %e, "HTTP/2 client connection closed by the codec's reset limits");
        } else {
            tracing::debug!(%peer, error = %e, "HTTP/2 client connection ended with an error");
        }
    }
}

/// Whether h2 itself ended the connection with GOAWAY ENHANCE_YOUR_CALM: too many resets of
/// streams not yet accepted, or of its own resets for the client's errors.
fn calmed_by_codec(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .is_some_and(|e| e.is_go_away() && !e.is_remote() && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM))
}

/// Runs a hyper connection to its end; draining asks it to finish first (`finish`: the
/// `graceful_shutdown` that hyper's HTTP/1 and HTTP/2 connections have under no common trait).
/// `None` when `stop` came first; the caller then drops the connection.
async fn run<C: std::future::Future>(
    mut conn: std::pin::Pin<&mut C>,
    finish: fn(std::pin::Pin<&mut C>),
    shared: &Shared,
    stop: impl std::future::Future<Output = ()>,
) -> Option<C::Output> {
    tokio::select! {
        r = conn.as_mut() => Some(r),
        () = shared.lifecycle.drained() => {
            finish(conn.as_mut());
            Some(conn.await)
        }
        () = stop => None,
    }
}

/// Routes and answers one request; the HTTP/1.1 and HTTP/2 servers both use it. The
/// response is counted and logged when its body ends.
pub(crate) async fn handle(req: Request<Incoming>, ctx: &Arc<ConnCtx>) -> Response<Metered<ResponseBody>> {
    // HTTP/1 connections close after their response while draining (HTTP/2 gets GOAWAY), except
    // the ones that become tunnels.
    let closes = req.version() < Version::HTTP_2 && req.method() != Method::CONNECT;
    let grpc = crate::serve::h2::is_grpc(req.headers());
    // A client that goes away before the response drops this future; `run` still records
    // the request then (code 0, DC).
    let start = HttpStart::new(&req, ctx, grpc);
    // Boxed here, once: hyper and tokio move the service's future before polling it (three to
    // four times per HTTP/2 stream), and `run` keeps its argument beside the future it makes of
    // it, so an unboxed handler made this future 22 KB to copy, each time.
    let answer = Box::pin(async move {
        let resp = handle_any(req, ctx).await;
        let mut resp = match grpc {
            true => crate::serve::h2::grpc_reply(resp).await,
            false => resp,
        };
        if closes && ctx.shared.lifecycle.is_draining() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    });
    start.run(ctx, answer).await
}

async fn handle_any(req: Request<Incoming>, ctx: &Arc<ConnCtx>) -> Response<ResponseBody> {
    ctx.shared.stats.http_requests.fetch_add(1, Ordering::Relaxed);
    // hyper enforces both limits on HTTP/1.1 heads; HTTP/2 header blocks are checked here.
    let limits = &ctx.shared.config.limits;
    let stats = &ctx.shared.stats;
    let refusal = if req.headers().len() > limits.max_headers {
        let reply = Reply::too_many_headers(limits.max_headers);
        Some((&stats.downstream_rq_too_many_headers, reply))
    } else if head_size(&req) > limits.max_head_bytes {
        let reply = Reply::head_too_large(limits.max_head_bytes);
        Some((&stats.downstream_rq_headers_too_large, reply))
    } else {
        None
    };
    let http1 = req.version() < Version::HTTP_2;
    if let Some((counter, reply)) = refusal {
        note(|o| o.fail(Flags::DPE, "request_headers_too_large"));
        counter.fetch_add(1, Ordering::Relaxed);
        stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        return reply.closing(http1).response();
    }
    if let Err(e) = check_framing(&req) {
        // The same checks as the fast path's, on what hyper parsed: one Host, a valid
        // authority. hyper read the body by its own framing; the connection closes anyway.
        note(|o| o.fail(Flags::DPE, "invalid_http_request"));
        stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        return Reply::new(StatusCode::BAD_REQUEST, e.reason())
            .closing(http1)
            .response();
    }
    // The hop limit: whatever address or name it came back through, a request carrying this
    // process's own `via` marker has been forwarded by it before.
    if ctx.shared.via.is_in_headers(req.headers()) {
        note(|o| o.fail(Flags::NONE, "request_loop"));
        ctx.shared.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %ctx.peer, uri = %req.uri(), via = %ctx.shared.via.token(), "request loop: the request carries this proxy's own Via marker");
        return Reply::via_loop(&ctx.shared.via).response();
    }
    if let Some(g) = &ctx.gateway {
        return crate::serve::vhost::forward(req, ctx, g).await;
    }
    if req.method() == Method::CONNECT {
        return connect(req, ctx).await;
    }
    forward_request(req, ctx).await
}

/// `meshentry_wire`'s request rules on a request hyper parsed (HTTP/1.x only; HTTP/2 has its
/// own framing and `:authority`).
fn check_framing<B>(req: &Request<B>) -> Result<(), meshentry_wire::h1::RequestError> {
    let minor = match req.version() {
        Version::HTTP_10 | Version::HTTP_09 => 0,
        Version::HTTP_11 => 1,
        _ => return Ok(()),
    };
    let fields = req.headers().iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    meshentry_wire::h1::request(minor, fields)?;
    match req.uri().authority() {
        Some(a) if !meshentry_wire::h1::valid_authority(a.as_str().as_bytes()) => {
            Err(meshentry_wire::h1::RequestError::InvalidHost)
        }
        _ => Ok(()),
    }
}

/// The bytes the request head took on the wire, near enough: the target and every header.
fn head_size(req: &Request<Incoming>) -> usize {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len());
    req.headers()
        .iter()
        .fold(target, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// The destination of a plain request: the absolute-form URI's authority, else `Host`.
fn destination(req: &Request<Incoming>) -> Option<(String, u16, HeaderValue)> {
    if let Some(authority) = req.uri().authority() {
        let default = if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        };
        let (host, port) = split_host_port(authority.as_str(), default)?;
        let value = HeaderValue::from_str(authority.as_str()).ok()?;
        return Some((host.to_string(), port, value));
    }
    let value = req.headers().get(header::HOST)?;
    let (host, port) = split_host_port(value.to_str().ok()?, 80)?;
    Some((host.to_string(), port, value.clone()))
}

async fn forward_request(req: Request<Incoming>, ctx: &Arc<ConnCtx>) -> Response<ResponseBody> {
    let shared = &ctx.shared;
    let dest = destination(&req);
    let asked = match &ctx.transparent {
        // Captured: the Host picks among the services on the original port (C3).
        Some(t) => route::Asked::Captured {
            host: dest.as_ref().map(|(h, _, _)| h.as_str()),
            dst: t.dst,
            dst_ip: &t.dst_ip,
        },
        None => route::Asked::Explicit(dest.as_ref().map(|(h, p, _)| (h.as_str(), *p))),
    };
    let (decision, routes, host, port) = match route::resolve(&ctx.snapshot, asked, |h, p| shared.is_self(h, p)) {
        Resolution::NoDestination => {
            note(|o| o.fail(Flags::DPE, "missing_host_header"));
            shared.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return Reply::no_destination().response();
        }
        Resolution::Loop { host, port } => {
            note(|o| o.fail(Flags::NONE, "request_loop"));
            shared.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return Reply::is_self(host, port, "request").response();
        }
        Resolution::To {
            decision,
            routes,
            host,
            port,
        } => (decision, routes, host, port),
    };
    note(|o| o.routed = Routed::of(&decision));
    let host_header = match (&dest, &ctx.transparent) {
        (Some((_, _, value)), _) => value.clone(),
        // A captured request without Host goes by its original destination.
        (None, Some(t)) => HeaderValue::from_str(&t.dst.to_string()).unwrap_or(HeaderValue::from_static("localhost")),
        (None, None) => HeaderValue::from_static("localhost"),
    };
    let original = match &ctx.transparent {
        Some(t) => t.original(),
        None => Original { host, port },
    };
    if let Some(routes) = routes {
        return crate::serve::routed::handle(ctx, routes, req, host_header, &original, port).await;
    }
    let cluster = match &decision {
        Decision::Blocked => return blocked(ctx, host, port, StatusCode::BAD_GATEWAY).response(),
        Decision::Passthrough => {
            shared.stats.passthrough.fetch_add(1, Ordering::Relaxed);
            None
        }
        Decision::Cluster { cluster, .. } => Some(&***cluster),
    };
    relay_response(ctx, &decision, cluster, &original, req, host_header).await
}

/// Shapes `req` for the cluster's HTTP version (`host` is its destination's `Host`), sends it
/// and turns the outcome into the client's response.
async fn relay_response(
    ctx: &Arc<ConnCtx>,
    decision: &Decision<'_>,
    cluster: Option<&crate::model::cluster::Cluster>,
    original: &Original<'_>,
    req: Request<Incoming>,
    host_header: HeaderValue,
) -> Response<ResponseBody> {
    let shared = &ctx.shared;
    let (host, port) = (original.host, original.port);
    let mut req = req;
    if let Some((protocol, client)) = take_upgrade(&mut req) {
        let version = req.version();
        let (parts, body) = req.into_parts();
        let (req, watch) = upgrade_request(parts, body, protocol, host_header, shared);
        let upgrade = tunnel::Upgrade {
            req,
            client,
            watch,
            version,
            routed: Routed::of(decision),
            cluster,
            original,
            host,
            port,
        };
        return tunnel::upgrade(ctx, upgrade).await;
    }
    let protocol = forward::UpstreamProtocol::of(decision);
    let version = req.version();
    let (parts, body) = req.into_parts();
    let (body, watch) = ClientBody::new(body, shared);
    let req = Request::from_parts(parts, Either::Left(body));
    let upstream_req = match protocol {
        forward::UpstreamProtocol::Http1 => to_upstream(req, host_header, &shared.via),
        forward::UpstreamProtocol::H2 => match crate::serve::h2::to_upstream(req, &host_header, &shared.via) {
            Some(r) => r,
            None => {
                note(|o| o.fail(Flags::DPE, "invalid_authority"));
                shared.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                return local(
                    StatusCode::BAD_REQUEST,
                    "meshentry: the request's authority is not valid",
                );
            }
        },
    };
    let to = Upstream {
        shared,
        live: &ctx.snapshot,
        cluster,
        original: *original,
    };
    match forward::send_request(&to, upstream_req, protocol).await {
        Ok((resp, _addr)) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Either::Left(body))
        }
        Err(e) => match watch.fault() {
            Some(fault) => body_failure(ctx, fault, version),
            None => upstream_failure(ctx, host, port, decision.cluster_name(), &e),
        },
    }
}

/// `CONNECT host:port`: route, connect upstream, then answer 200 and hand the connection to
/// the tunnel. Connecting first lets a failure be answered with a status and a reason.
async fn connect(req: Request<Incoming>, ctx: &Arc<ConnCtx>) -> Response<ResponseBody> {
    let shared = &ctx.shared;
    let snap = &ctx.snapshot;
    // The same resolution as any request's, by the CONNECT target alone (also on a captured
    // connection); the VirtualService's HTTP rules do not apply to a tunnel.
    let Some(target) = req.uri().authority().and_then(|a| split_host_port(a.as_str(), 443)) else {
        note(|o| o.fail(Flags::DPE, "invalid_connect_target"));
        shared.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        return local(StatusCode::BAD_REQUEST, "meshentry: CONNECT needs a host:port target");
    };
    let resolution = route::resolve(snap, route::Asked::Explicit(Some(target)), |h, p| shared.is_self(h, p));
    let (registry, host, port) = match resolved(resolution, "tunnel") {
        Ok((decision, _, host, port)) => (decision, host.to_string(), port),
        Err(reply) => {
            shared.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return reply.response();
        }
    };
    if matches!(registry, Decision::Blocked) {
        return blocked(ctx, &host, port, StatusCode::FORBIDDEN).response();
    }
    if serves_http(&registry) {
        note(|o| o.routed = Routed::of(&registry));
        return connect_http(req, ctx, host, port);
    }
    // What the client must send is the port's business (the one it named), wherever the
    // VirtualService sends it.
    let expects_tls = matches!(&registry, Decision::Cluster { port, .. } if port.protocol.is_tls());
    // E7, as for a captured connection: the TLS and TCP rules of the service port.
    let sni = match route::tunnel_sni(snap, &registry, &host) {
        TunnelSni::Known(sni) => sni,
        TunnelSni::FirstBytes => {
            note(|o| o.routed = Routed::of(&registry));
            return connect_first_bytes(req, ctx, host, port, expects_tls);
        }
    };
    let dst = snap.tunnel_dst(&shared.dns, &registry, &host).await;
    let decision = match route::l4_route(snap, registry, dst, sni) {
        Ok(d) => d,
        Err(missing) => {
            note(|o| o.fail(Flags::NC, "cluster_not_found"));
            tracing::warn!(peer = %ctx.peer, %host, port, vs = missing.vs, reason = missing.reason, "CONNECT refused: the VirtualService routes to a missing destination");
            return local(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "meshentry: VirtualService {} routes {host}:{port} to a missing destination: {}",
                    missing.vs, missing.reason
                ),
            );
        }
    };
    note(|o| o.routed = Routed::of(&decision));
    let cluster = match &decision {
        Decision::Blocked => return blocked(ctx, &host, port, StatusCode::FORBIDDEN).response(),
        Decision::Passthrough => {
            shared.stats.passthrough.fetch_add(1, Ordering::Relaxed);
            None
        }
        Decision::Cluster { cluster, .. } => Some(&***cluster),
    };
    let cluster_name = decision.cluster_name().to_string();
    let to = Upstream {
        shared,
        live: snap,
        cluster,
        original: Original { host: &host, port },
    };
    let upstream = match forward::connect_stream(&to).await {
        Ok((stream, addr)) => (stream, addr),
        Err(e) => {
            note(|o| {
                o.fail(e.flags(), e.details());
                if let forward::UpstreamError::Tls(cause) = &e {
                    o.transport_failure = Some(cause.clone());
                }
            });
            shared.stats.count_upstream_error(&e);
            shared.stats.count_loop(&e);
            tracing::info!(peer = %ctx.peer, %host, port, cluster = %cluster_name, flags = e.flag(), error = %e, "tunnel failed upstream");
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Reply::new(status, format!("meshentry: {host}:{port} via {cluster_name}: {e}")).response();
        }
    };
    shared.stats.tunnels.fetch_add(1, Ordering::Relaxed);
    note(|o| o.tunnel = true);
    let mut tcp = TcpConn::open(shared, Routed::of(&decision), ctx.peer, None, None);
    tcp.connected(&upstream.1, &upstream.0);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        // The HTTP connection ends once it hands the tunnel over; a drain waits for this.
        let _tunnel = crate::rt::lifecycle::TunnelGuard::new(&ctx.shared.lifecycle);
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let target = tunnel::Target {
                    host,
                    port,
                    expects_tls,
                    cluster: cluster_name,
                };
                tunnel::run(TokioIo::new(upgraded), upstream.0, &ctx, &target, &mut tcp).await;
            }
            Err(e) => {
                tcp.refused(Flags::DC, "");
                tracing::debug!(peer = %ctx.peer, error = %e, "CONNECT upgrade failed")
            }
        }
    });
    Response::new(Either::Right(Full::new(Bytes::new())))
}

/// Whether a CONNECT tunnel to `decision` carries HTTP the proxy serves itself: the service
/// declares the port HTTP, HTTP2, GRPC or GRPC-WEB. Relaying those bytes opaquely would let
/// one tunnel carry requests for any Host to the target's endpoints, unrouted and unlogged.
/// HTTP_PROXY ports are left opaque: the upstream is a proxy, and what its requests name is
/// its business.
fn serves_http(decision: &Decision<'_>) -> bool {
    matches!(decision, Decision::Cluster { port, .. }
        if port.protocol.is_http() && port.protocol != meshentry_registry::Protocol::HttpProxy)
}

/// `CONNECT` to an HTTP port: answered 200 at once, and the tunnelled bytes served as HTTP,
/// each request routed, policy-checked, counted and logged as on the listener itself (see
/// [`serve_http`]). Nothing connects upstream until a request does.
fn connect_http(req: Request<Incoming>, ctx: &Arc<ConnCtx>, host: String, port: u16) -> Response<ResponseBody> {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let shared = ctx.shared.clone();
        let _tunnel = crate::rt::lifecycle::TunnelGuard::new(&shared.lifecycle);
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => serve_http(TokioIo::new(upgraded), ctx, host, port).await,
            Err(e) => tracing::debug!(peer = %ctx.peer, error = %e, "CONNECT upgrade failed"),
        }
    });
    Response::new(Either::Right(Full::new(Bytes::new())))
}

/// `CONNECT` to a service port whose TLS rules need the tunnel's first bytes
/// ([`TunnelSni::FirstBytes`]): answered 200 at once, then routed once they are read
/// ([`tunnel::route_first_bytes`]), as a captured connection is. A failure upstream can then
/// only close the tunnel.
fn connect_first_bytes(
    req: Request<Incoming>,
    ctx: &Arc<ConnCtx>,
    host: String,
    port: u16,
    expects_tls: bool,
) -> Response<ResponseBody> {
    note(|o| o.tunnel = true);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let _tunnel = crate::rt::lifecycle::TunnelGuard::new(&ctx.shared.lifecycle);
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let client = TokioIo::new(upgraded);
                tunnel::route_first_bytes(client, &ctx, host, port, expects_tls, BytesMut::new()).await;
            }
            Err(e) => tracing::debug!(peer = %ctx.peer, error = %e, "CONNECT upgrade failed"),
        }
    });
    Response::new(Either::Right(Full::new(Bytes::new())))
}

/// The tunnelled bytes of a CONNECT to an HTTP port (`host:port`), served as HTTP: HTTP/1.x
/// by hyper and HTTP/2 prior knowledge by [`serve_h2`], each request routed by its own
/// destination (one without, to the CONNECT target), policy-checked, counted and logged as on
/// the listener itself. TLS to the port is relayed to the target as any tunnel is (the port is
/// misdeclared; the SNI check applies); anything else is refused.
pub(crate) async fn serve_http<C>(mut client: C, ctx: Arc<ConnCtx>, host: String, port: u16)
where
    C: AsyncRead + AsyncWrite + crate::net::relay::Peer + Unpin + Send + 'static,
{
    let shared = ctx.shared.clone();
    let peer = ctx.peer;
    let mut buf = BytesMut::with_capacity(4096);
    // The client speaks first, and has the time it has for a request head.
    let first = detect(&mut client, &mut buf, shared.config.header_read_timeout, None).await;
    // Requests in the tunnel take the configuration in force, as each request does.
    let inner = || {
        Arc::new(ConnCtx {
            shared: shared.clone(),
            snapshot: shared.snapshot.load_full(),
            peer,
            transparent: None,
            gateway: None,
        })
    };
    match first {
        Detected::Http1 => {
            let authority = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let authority = HeaderValue::from_str(&authority).ok();
            serve_io_with(tunnel::Prefixed::new(buf, client), peer, inner(), authority).await;
        }
        Detected::H2c => serve_h2(tunnel::Prefixed::new(buf, client), inner()).await,
        Detected::Tls { .. } => {
            tracing::warn!(
                %peer, %host, port,
                "the service port is declared HTTP but the client speaks TLS through the tunnel: relaying it as TLS"
            );
            tunnel::route_first_bytes(client, &ctx, host, port, false, buf).await;
        }
        Detected::Closed => {}
        Detected::Nothing => {
            shared
                .stats
                .downstream_rq_header_timeout
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, %host, port, "tunnel to an HTTP port closed: no request arrived");
        }
        Detected::Other | Detected::BadTls(_) => {
            shared.stats.bad_tunnel_traffic.fetch_add(1, Ordering::Relaxed);
            let decision = route::route(&ctx.snapshot, &host, port);
            let mut tcp = TcpConn::open(&shared, Routed::of(&decision), peer, None, None);
            tcp.refused(Flags::DPE, "");
            tcp.relayed((buf.len() as u64, 0));
            tracing::info!(
                %peer, %host, port, detected = first.as_str(),
                "tunnel refused: the port is declared HTTP but the client did not send an HTTP request"
            );
            let _ = client.shutdown().await;
        }
    }
}

#[cfg(test)]
mod future_sizes {
    use super::*;

    /// The size of the future `f` returns (without making one: a request cannot be built here).
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: Fn(Request<Incoming>, &'static Arc<ConnCtx>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// hyper moves each request's future before it polls it (three to four times per HTTP/2
    /// stream): `handle`'s was 22,088 bytes, and copying it was 5% of the proxy's CPU per h2c
    /// request. Its work is boxed inside, once, so what moves stays small.
    #[test]
    fn the_future_hyper_moves_per_request_stays_small() {
        let handle = future_size(handle);
        assert!(handle <= 2048, "handle's future is {handle} bytes");
        // What the box holds, for scale: the work itself is several KB.
        assert!(future_size(handle_any) > handle);
    }
}
