//! The fast path for plain HTTP/1.1 requests on the explicit proxy listener.
//!
//! Profiling showed the proxy's user-space time going to building and re-encoding header maps
//! and to hyper's client handing each request to a connection task and back (see
//! BENCHMARKS.md). For the common case (a request with no body or a `Content-Length` body,
//! routed to an HTTP/1.1 upstream) none of that is needed: this module parses the head in place
//! with `httparse`, copies header bytes through (dropping hop-by-hop headers), and relays the
//! body by its framing: `Content-Length`, or chunked bytes passed through unchanged while
//! [`ChunkScanner`] finds the end. Upstream connections are raw streams in a per-thread pool.
//!
//! Anything else (CONNECT, `Upgrade`, `Expect`, chunked request bodies, HTTP/1.0, `https://`
//! targets, requests routed to HTTP/2 or gRPC ports) is handed, with the bytes already read, to
//! the general hyper path in [`crate::serve::http`], which then serves the rest of the
//! connection; an HTTP/2 prior-knowledge client goes to [`crate::serve::http::serve_h2`]. The
//! routing, refusals, counters and error responses are the same on both paths.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::StatusCode;
use meshentry_registry::Protocol;
use meshentry_wire::chunked::ChunkScanner;
use meshentry_wire::h1 as framing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::base::flags::Flags;
use crate::net::detect::H2_PREFACE;
use crate::net::forward::{Failover, Original, Upstream, UpstreamError, UpstreamProtocol};
use crate::net::pool::{self, Pool, Pooled};
use crate::net::upstream::{self, Dial, Stream};
use crate::obs::telemetry::{self, Routed, note};
use crate::route::{self, Decision, split_host_port};
use crate::rt::lifecycle::DrainWatch;
use crate::rt::shared::{ConnGuard, Shared};
use crate::serve::ctx::{ConnCtx, MAX_HEAD_BYTES, MAX_HEADERS, Reply, SnapshotCache, SnapshotCell, Transparent};

/// Serves one client connection: the fast path for as long as requests are plain, then hyper.
pub async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let stats_owner = shared.clone();
    let _guard = ConnGuard::new(&stats_owner.stats);
    serve(stream, peer, shared, BytesMut::with_capacity(8 * 1024), None).await;
}

/// Serves HTTP/1 on `stream`, starting with the bytes already read from it (`buf`). With
/// `transparent`, requests are routed as on a captured connection.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    buf: BytesMut,
    transparent: Option<Transparent>,
) {
    let _ = stream.set_nodelay(true);
    let mut ctx = Arc::new(ConnCtx {
        snapshot: shared.snapshot.load_full(),
        shared,
        peer,
        transparent,
        gateway: None,
    });
    let mut conn = Downstream {
        stream,
        buf,
        out: Vec::with_capacity(1024),
        up_head: Vec::with_capacity(1024),
        log_head: Vec::new(),
    };
    let mut head = Head::default();
    let mut first = true;
    // `ctx` may be replaced by a reload; the drain wake-up borrows the connection's own
    // handle on `Shared` for the connection's life.
    let lifecycle_owner = ctx.shared.clone();
    let mut drain = DrainWatch::new(&lifecycle_owner.lifecycle);
    let mut snapshots = SnapshotCache::new(SnapshotCell(ctx.shared.clone()));
    loop {
        match read_head(&mut conn, &mut head, &ctx.shared, &mut drain, first).await {
            Ok(true) => {}
            Ok(false) => return,
            // The HTTP/2 preface does not parse as HTTP/1.x; a prior-knowledge client sends it
            // first thing.
            Err(_) if first && is_h2_preface(&conn.buf) => {
                let io = Rewind::new(conn.buf, conn.stream);
                crate::serve::http::serve_h2(io, ctx).await;
                return;
            }
            Err(refusal) => {
                // Counted nowhere: like hyper, a head that does not parse never becomes a request.
                conn.out.clear();
                refusal.closing(true).write(&mut conn.out);
                let _ = conn.stream.write_all(&conn.out).await;
                return;
            }
        }
        first = false;
        ConnCtx::refresh_cached(&mut ctx, &mut snapshots);
        if !needs_general_path(&conn.buf, &head) {
            ctx.shared.stats.http_requests.fetch_add(1, Ordering::Relaxed);
            // The log prints the request head after `exchange` consumed it: keep a copy
            // (offsets in `head` stay valid in it).
            let logging = ctx.shared.telemetry.access_log().is_some();
            if logging {
                conn.log_head.clear();
                conn.log_head.extend_from_slice(&conn.buf[..head.len]);
            }
            let started = Instant::now();
            let start_time = logging.then(std::time::SystemTime::now);
            // Pinned here and handed over by reference: the exchange future is large, and
            // moving it into the task-local scope cost two copies of it per request.
            let (next, recorded) = {
                let exchange = std::pin::pin!(exchange(&mut conn, &head, &ctx));
                telemetry::scoped_in_place(exchange).await
            };
            if !matches!(next, Next::GeneralPath) {
                let line = logging.then_some((&conn.log_head[..], &head));
                recorded.with(|outcome| finish(&ctx, outcome, started, start_time, line));
            }
            match next {
                Next::KeepAlive => continue,
                Next::Close => {
                    let _ = conn.stream.shutdown().await;
                    return;
                }
                // The general path counts the request itself.
                Next::GeneralPath => ctx.shared.stats.http_requests.fetch_sub(1, Ordering::Relaxed),
            };
        }
        let io = Rewind::new(conn.buf, conn.stream);
        crate::serve::http::serve_io(io, peer, ctx).await;
        return;
    }
}

/// Whether the bytes that failed to parse as HTTP/1.x are (the start of) the HTTP/2 preface.
/// httparse rejects the version as soon as it reads `HTTP/2`, possibly before the whole
/// preface arrived; the HTTP/2 server reads and checks the rest.
fn is_h2_preface(buf: &[u8]) -> bool {
    let n = buf.len().min(H2_PREFACE.len());
    n > 0 && buf[..n] == H2_PREFACE[..n]
}

/// The client side: its stream, what has been read and not yet used, and a scratch buffer for
/// writes (reused, so a request allocates nothing once the connection is warm).
struct Downstream {
    stream: TcpStream,
    buf: BytesMut,
    /// Responses to the client.
    out: Vec<u8>,
    /// The request head for the upstream (kept while the response is written to `out`).
    up_head: Vec<u8>,
    /// A copy of the request head for the access log (only when it is on).
    log_head: Vec<u8>,
}

/// A parsed request head, as offsets into [`Downstream::buf`].
#[derive(Default)]
struct Head {
    len: usize,
    method: Range<usize>,
    target: Range<usize>,
    minor_version: u8,
    headers: Vec<(Range<usize>, Range<usize>)>,
}

impl Head {
    /// Every header field, as `meshentry_wire` reads them.
    fn fields<'b>(&'b self, buf: &'b [u8]) -> impl Iterator<Item = framing::Field<'b>> + Clone + 'b {
        self.headers
            .iter()
            .map(move |(n, v)| (&buf[n.clone()], &buf[v.clone()]))
    }

    fn header<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &buf[v.clone()])
    }
}

/// A request head on the fast path, as VirtualService matching reads it.
struct H1View<'b> {
    buf: &'b [u8],
    head: &'b Head,
    path: &'b [u8],
    authority: &'b [u8],
}

impl crate::model::vs::RequestView for H1View<'_> {
    fn method(&self) -> &[u8] {
        &self.buf[self.head.method.clone()]
    }

    fn path(&self) -> &[u8] {
        self.path
    }

    fn scheme(&self) -> &[u8] {
        b"http"
    }

    fn authority(&self) -> &[u8] {
        self.authority
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.header(self.buf, name)
    }
}

fn offset(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// Reads and parses the next request head. `Ok(false)`: the client closed, went idle past
/// `--idle-timeout` between requests, or sent nothing within `--header-read-timeout` of
/// connecting. `Err`: a refusal to send before closing.
///
/// The timeouts follow HAProxy's `timeout http-request` / `http-keep-alive` split: the first
/// request of a connection must arrive whole within the header timeout of the accept, so
/// silent connections cannot hoard slots; later ones may wait up to the idle timeout, and
/// their head must then be complete within the header timeout of its first byte.
async fn read_head(
    conn: &mut Downstream,
    head: &mut Head,
    shared: &Shared,
    drain: &mut DrainWatch<'_>,
    first: bool,
) -> Result<bool, Reply<'static>> {
    let limits = &shared.config.limits;
    let stats = &shared.stats;
    let header_timeout = shared.config.header_read_timeout;
    let start = tokio::time::Instant::now();
    let mut idle = !first && conn.buf.is_empty();
    let mut deadline = start + if idle { limits.idle_timeout } else { header_timeout };
    loop {
        if !conn.buf.is_empty() {
            // httparse fills a slice of the given length; up to hyper's default of 100 it lives
            // on the stack, and only a larger configured count costs an allocation per head.
            let mut stack = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut heap;
            let headers: &mut [httparse::Header<'_>] = if limits.max_headers <= MAX_HEADERS {
                &mut stack[..limits.max_headers]
            } else {
                heap = vec![httparse::EMPTY_HEADER; limits.max_headers];
                &mut heap
            };
            let mut req = httparse::Request::new(headers);
            match req.parse(&conn.buf) {
                Ok(httparse::Status::Complete(len)) if len > limits.max_head_bytes => {
                    return Err(head_too_large(shared));
                }
                Ok(httparse::Status::Complete(len)) => {
                    let buf = &conn.buf[..];
                    head.len = len;
                    head.method = offset(buf, req.method.unwrap_or("").as_bytes());
                    head.target = offset(buf, req.path.unwrap_or("").as_bytes());
                    head.minor_version = req.version.unwrap_or(1);
                    head.headers.clear();
                    for h in req.headers.iter() {
                        head.headers
                            .push((offset(buf, h.name.as_bytes()), offset(buf, h.value)));
                    }
                    return Ok(true);
                }
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => {
                    stats.downstream_rq_too_many_headers.fetch_add(1, Ordering::Relaxed);
                    return Err(Reply::too_many_headers(limits.max_headers));
                }
                Err(_) => return Err(Reply::new(StatusCode::BAD_REQUEST, "meshentry: malformed request head")),
            }
            if conn.buf.len() >= limits.max_head_bytes {
                return Err(head_too_large(shared));
            }
        }
        conn.buf.reserve(4096);
        // Under load the bytes are usually there already: try before arming a timer.
        let (n, waited) = match conn.stream.try_read_buf(&mut conn.buf) {
            Ok(n) => (n, false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let between_requests = conn.buf.is_empty();
                let read = tokio::time::timeout_at(deadline, conn.stream.read_buf(&mut conn.buf));
                // Between requests, draining closes the connection; a request that has started
                // arriving is read and answered (with `connection: close`).
                let read = if between_requests {
                    let mut read = std::pin::pin!(read);
                    let first = std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
                        Poll::Ready(r) => Poll::Ready(Some(r)),
                        Poll::Pending => drain.poll_drained(cx).map(|()| None),
                    });
                    match first.await {
                        Some(r) => r,
                        None => return Ok(false),
                    }
                } else {
                    read.await
                };
                match read {
                    Ok(Ok(n)) => (n, true),
                    Ok(Err(_)) => return Ok(false),
                    Err(_) if idle => {
                        stats.downstream_cx_idle_timeout.fetch_add(1, Ordering::Relaxed);
                        return Ok(false);
                    }
                    Err(_) => {
                        stats.downstream_rq_header_timeout.fetch_add(1, Ordering::Relaxed);
                        if conn.buf.is_empty() {
                            return Ok(false);
                        }
                        return Err(Reply::head_timeout());
                    }
                }
            }
            Err(_) => return Ok(false),
        };
        if n == 0 {
            return Ok(false);
        }
        if idle {
            // The first byte of the next request: its head now has the header timeout.
            idle = false;
            deadline = if waited { tokio::time::Instant::now() } else { start } + header_timeout;
        }
    }
}

/// The 431 for a head over `--max-request-headers-kb`, counted.
fn head_too_large(shared: &Shared) -> Reply<'static> {
    shared
        .stats
        .downstream_rq_headers_too_large
        .fetch_add(1, Ordering::Relaxed);
    Reply::head_too_large(shared.config.limits.max_head_bytes)
}

/// The authority and path of a request target: absolute form names the destination; origin
/// form relies on `host`.
fn split_target<'b>(target: &'b [u8], host: Option<&'b [u8]>) -> (&'b [u8], &'b [u8]) {
    if starts_with_ignore_case(target, b"http://") {
        let rest = &target[7..];
        let end = rest.iter().position(|b| *b == b'/' || *b == b'?').unwrap_or(rest.len());
        let path: &[u8] = if end == rest.len() { b"/" } else { &rest[end..] };
        (&rest[..end], path)
    } else {
        (host.unwrap_or(b""), target)
    }
}

/// Counts and logs one request the fast path answered; `head` is the request head (a copy of
/// its bytes, and the offsets into them) when the access log is on.
fn finish(
    ctx: &ConnCtx,
    outcome: &mut telemetry::Outcome,
    started: Instant,
    start_time: Option<std::time::SystemTime>,
    head: Option<(&[u8], &Head)>,
) {
    if let Some(t) = outcome.head_at {
        outcome.upstream_time = Some(t.saturating_duration_since(started));
    }
    let line = match head {
        Some((buf, head)) => {
            let (authority, path) = split_target(&buf[head.target.clone()], head.header(buf, "host"));
            telemetry::RequestLine {
                method: &buf[head.method.clone()],
                path,
                protocol: "HTTP/1.1",
                authority,
                user_agent: head.header(buf, "user-agent").unwrap_or(b""),
                forwarded_for: head.header(buf, "x-forwarded-for").unwrap_or(b""),
                request_id: head.header(buf, "x-request-id").unwrap_or(b""),
            }
        }
        None => telemetry::RequestLine::default(),
    };
    let protocol = crate::obs::metrics::RequestProtocol::Http;
    crate::serve::record::finish_request(ctx, outcome, protocol, None, started, start_time, &line);
}

/// Requests the fast path leaves to hyper.
fn needs_general_path(buf: &[u8], head: &Head) -> bool {
    if head.minor_version != 1 || &buf[head.method.clone()] == b"CONNECT" {
        return true;
    }
    let target = &buf[head.target.clone()];
    if !(target.starts_with(b"/") || starts_with_ignore_case(target, b"http://")) {
        return true;
    }
    // `http://a?q` has an empty path, which the upstream's origin-form must spell `/?q`
    // (RFC 9112 3.2.1): hyper's URI does; the bytes copied here would not.
    if !split_target(target, None).1.starts_with(b"/") {
        return true;
    }
    head.headers.iter().any(|(n, v)| {
        let n = &buf[n.clone()];
        n.eq_ignore_ascii_case(b"transfer-encoding")
            || n.eq_ignore_ascii_case(b"upgrade")
            || n.eq_ignore_ascii_case(b"expect")
            || (n.eq_ignore_ascii_case(b"connection") && framing::has_token(&buf[v.clone()], b"upgrade"))
    })
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

enum Next {
    KeepAlive,
    Close,
    /// Not for the fast path after all (it is routed to an HTTP/2 or gRPC port): the request,
    /// still unread in the buffer, and the rest of the connection go to the general path.
    GeneralPath,
}

/// One request/response exchange on the fast path.
async fn exchange(conn: &mut Downstream, head: &Head, ctx: &ConnCtx) -> Next {
    let shared = &ctx.shared;
    let buf = &conn.buf[..];
    let target = &buf[head.target.clone()];
    let absolute = !target.starts_with(b"/");
    // One pass over the fields for what the fast path itself needs: the Connection fields
    // (for the hop-by-hop filter) and whether a `via` is this proxy's own marker.
    let mut connection: [&[u8]; MAX_CONNECTION_FIELDS] = [b""; MAX_CONNECTION_FIELDS];
    let mut connection_fields = 0;
    let mut own_via = false;
    for (n, v) in head.fields(buf) {
        if n.eq_ignore_ascii_case(b"connection") {
            if let Some(slot) = connection.get_mut(connection_fields) {
                *slot = v;
            }
            connection_fields += 1;
        } else if n.eq_ignore_ascii_case(b"via") {
            own_via |= shared.carries_own_via(v);
        }
    }
    // Framing, Host and the absolute-form authority are checked before anything is routed: a
    // request whose end or destination is in doubt is refused, and the connection closed,
    // since where the next request starts is in doubt too. More Connection fields than are
    // looked at would let one name a field to remove that the proxy then forwards: refused.
    let checked = framing::request(head.minor_version, head.fields(buf)).and_then(|f| {
        let (authority, path) = split_target(target, f.host);
        if absolute && !authority.is_empty() && !framing::valid_authority(authority) {
            return Err(framing::RequestError::InvalidHost);
        }
        if connection_fields > MAX_CONNECTION_FIELDS {
            return Err(framing::RequestError::InvalidConnection);
        }
        Ok((f, authority, path))
    });
    let (request, authority, path) = match checked {
        Ok(r) => r,
        Err(e) => {
            note(|o| o.fail(Flags::DPE, "invalid_http_request"));
            return refuse(
                conn,
                shared,
                Reply::new(status(e.status()), e.reason()).flagged("DPE"),
                Skip::Close,
            )
            .await;
        }
    };
    let connection = &connection[..connection_fields.min(MAX_CONNECTION_FIELDS)];
    let content_length = match request.body {
        framing::RequestBody::Empty => 0,
        framing::RequestBody::Length(n) => n,
        // Chunked requests take the general path (`needs_general_path`); never here.
        framing::RequestBody::Chunked => {
            let reply = Reply::new(StatusCode::BAD_REQUEST, "meshentry: unexpected chunked request");
            return refuse(conn, shared, reply.flagged("DPE"), Skip::Close).await;
        }
    };
    // `bytes_received` is noted with whatever is noted next (routing or a refusal): one
    // `note` fewer per request.
    // What a refusal must skip to reach the next request: the head and a body already read;
    // a body still on the wire means closing instead.
    let body_in_buf = (content_length as usize).min(buf.len() - head.len);
    let skip = if body_in_buf as u64 == content_length {
        Skip::Bytes(head.len + body_in_buf)
    } else {
        Skip::Close
    };
    // The hop limit: a request carrying this process's own `via` marker came back to it,
    // whatever address or name it took.
    if own_via {
        note(|o| {
            o.bytes_received = content_length;
            o.fail(Flags::NONE, "request_loop");
        });
        tracing::warn!(peer = %ctx.peer, via = %shared.via.token(), "request loop: the request carries this proxy's own Via marker");
        return refuse(conn, shared, Reply::via_loop(&shared.via), skip).await;
    }
    let parsed = std::str::from_utf8(authority).ok().and_then(|a| split_host_port(a, 80));
    let asked = match &ctx.transparent {
        Some(t) => route::Asked::Captured {
            host: parsed.map(|(h, _)| h),
            dst: t.dst,
            dst_ip: &t.dst_ip,
        },
        None => route::Asked::Explicit(parsed),
    };
    let resolution = route::resolve(&ctx.snapshot, asked, |h, p| shared.is_self(h, p));
    let (mut decision, routes, host, port) = match crate::serve::ctx::resolved(resolution, "request") {
        Ok(r) => r,
        Err(reply) => {
            note(|o| o.bytes_received = content_length);
            return refuse(conn, shared, reply, skip).await;
        }
    };
    // A VirtualService for the destination replaces its default route (E4, E5). Rules that
    // only pick a destination stay here; the hyper path does everything else.
    if let Some(routes) = routes {
        let view = H1View {
            buf,
            head,
            path,
            authority,
        };
        let failure = match routes.select(&view) {
            None => Some((
                StatusCode::NOT_FOUND,
                "NR",
                crate::serve::routed::no_route(routes, host, port),
            )),
            Some(sel) if !sel.rule.simple => return Next::GeneralPath,
            Some(sel) => match sel.rule.pick().map(|d| route::to_target(&ctx.snapshot, &d.target)) {
                Some(Ok(d)) => {
                    decision = d;
                    None
                }
                Some(Err(reason)) => Some((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "NC",
                    crate::serve::routed::no_cluster(routes, reason),
                )),
                None => Some((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "NC",
                    crate::serve::routed::no_cluster(routes, "the rule has no destination"),
                )),
            },
        };
        if let Some((status, flag, reason)) = failure {
            note(|o| {
                o.bytes_received = content_length;
                o.routed = Routed::of(&decision);
                o.details = if status == StatusCode::NOT_FOUND {
                    "route_not_found"
                } else {
                    "cluster_not_found"
                };
            });
            return refuse(conn, shared, Reply::new(status, reason).flagged(flag), skip).await;
        }
        if let Decision::Cluster { port, .. } = &decision
            && (UpstreamProtocol::of_port(port.protocol) == UpstreamProtocol::H2 || port.protocol == Protocol::GrpcWeb)
        {
            return Next::GeneralPath;
        }
    }
    note(|o| {
        o.bytes_received = content_length;
        o.routed = Routed::of(&decision);
    });
    let cluster = match &decision {
        Decision::Blocked => {
            let reply = crate::serve::ctx::blocked(ctx, host, port, StatusCode::BAD_GATEWAY);
            return refuse(conn, shared, reply, skip).await;
        }
        Decision::Passthrough => {
            shared.stats.passthrough.fetch_add(1, Ordering::Relaxed);
            None
        }
        // HTTP/2 upstreams (HTTP2, GRPC) are the general path's; so is gRPC-Web, whose errors
        // must be answered in gRPC terms.
        Decision::Cluster { port, .. }
            if UpstreamProtocol::of_port(port.protocol) == UpstreamProtocol::H2
                || port.protocol == Protocol::GrpcWeb =>
        {
            return Next::GeneralPath;
        }
        Decision::Cluster { cluster, .. } => Some(&***cluster),
    };
    let client_close = request.close;

    // The upstream request head, built once; reused if a pooled connection turns out dead.
    let mut up_head = std::mem::take(&mut conn.up_head);
    up_head.clear();
    up_head.extend_from_slice(&buf[head.method.clone()]);
    up_head.push(b' ');
    up_head.extend_from_slice(path);
    up_head.extend_from_slice(b" HTTP/1.1\r\n");
    if absolute {
        up_head.extend_from_slice(b"host: ");
        up_head.extend_from_slice(authority);
        up_head.extend_from_slice(b"\r\n");
    }
    {
        for (n, v) in &head.headers {
            let name = &buf[n.clone()];
            if framing::is_hop_by_hop(name, connection.iter().copied())
                || (absolute && name.eq_ignore_ascii_case(b"host"))
            {
                continue;
            }
            up_head.extend_from_slice(name);
            up_head.extend_from_slice(b": ");
            up_head.extend_from_slice(&buf[v.clone()]);
            up_head.extend_from_slice(b"\r\n");
        }
    }
    // After the client's own fields and the hop-by-hop filter: no `Connection` removes it.
    up_head.extend_from_slice(shared.via_line());
    up_head.extend_from_slice(b"\r\n");
    up_head.extend_from_slice(&buf[head.len..head.len + body_in_buf]);
    let body_rest = content_length - body_in_buf as u64;
    let method_is_head = &buf[head.method.clone()] == b"HEAD";
    let cluster_name = decision.cluster_name();
    // The original destination: the named host for an explicit proxy, the captured address
    // for a transparent one.
    let host_owned;
    let original = match &ctx.transparent {
        Some(t) => t.original(),
        None => Original {
            host: {
                host_owned = host.to_string();
                &host_owned
            },
            port,
        },
    };
    // TLS origination without a fixed SNI sends the request's host (D7).
    let sni_host = cluster.and_then(|c| ctx.snapshot.tls(c)).map(|_| host.to_string());
    conn.buf.advance(head.len + body_in_buf);

    let request = UpRequest {
        head: &up_head,
        body_rest,
        method_is_head,
        sni_host: sni_host.as_deref(),
    };
    let result = send(conn, shared, &ctx.snapshot, cluster, &original, &request).await;
    conn.up_head = up_head;
    match result {
        Ok(Sent { up_close }) => {
            if client_close || up_close {
                Next::Close
            } else {
                Next::KeepAlive
            }
        }
        Err(Failure::Answer(e)) => {
            let reply = crate::serve::ctx::upstream_failed(ctx, original.host, port, cluster_name, &e);
            // The request (and its body) was consumed; a body half sent means closing.
            let skip = if body_rest > 0 || client_close {
                Skip::Close
            } else {
                Skip::Bytes(0)
            };
            refuse(conn, shared, reply, skip).await
        }
        Err(Failure::BodyStalled) => {
            shared.stats.downstream_rq_idle_timeout.fetch_add(1, Ordering::Relaxed);
            note(|o| o.fail(Flags::SI, "stream_idle_timeout"));
            let reason = format!(
                "meshentry: the request body stalled for {:?} (--stream-idle-timeout)",
                shared.config.limits.stream_idle_timeout
            );
            let reply = Reply::new(StatusCode::REQUEST_TIMEOUT, reason).flagged("SI");
            refuse(conn, shared, reply, Skip::Close).await
        }
        Err(Failure::Broken) => Next::Close,
    }
}

/// The most `Connection` fields a request may carry on the fast path.
const MAX_CONNECTION_FIELDS: usize = 8;

/// What a refused request leaves behind in the client's buffer.
enum Skip {
    /// Drop this many bytes (the request) and carry on with the next request.
    Bytes(usize),
    /// Close after the response.
    Close,
}

/// Writes a local reply, consumes the refused request, and says what happens to the
/// connection.
async fn refuse(conn: &mut Downstream, shared: &Shared, reply: Reply<'_>, skip: Skip) -> Next {
    let status = reply.status.as_u16();
    if status == 400 || status == 508 {
        shared.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
    }
    note(|o| {
        o.code = status;
        o.fail(Flags::of(reply.flags), "");
    });
    let close = matches!(skip, Skip::Close) || shared.lifecycle.is_draining();
    if let Skip::Bytes(n) = skip {
        conn.buf.advance(n.min(conn.buf.len()));
    }
    let mut out = std::mem::take(&mut conn.out);
    out.clear();
    reply.closing(close).write(&mut out);
    let ok = conn.stream.write_all(&out).await.is_ok();
    conn.out = out;
    if ok && !close { Next::KeepAlive } else { Next::Close }
}

/// A status the wire layer gave as a number (always a valid one).
fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}

struct Sent {
    up_close: bool,
}

enum Failure {
    /// The request body stalled past `--stream-idle-timeout` before anything was answered:
    /// 408, then close.
    BodyStalled,
    /// Nothing was sent to the client yet: answer with this error.
    Answer(UpstreamError),
    /// The response had started (or the client went away): only closing is left.
    Broken,
}

/// A raw upstream connection with its read buffer.
struct UpConn {
    stream: Stream,
    buf: BytesMut,
}

thread_local! {
    /// This thread's idle upstream connections of the fast path.
    static RAW_POOL: Pool<Dial, UpConn> = Pool::default();
}

impl Pooled for UpConn {
    fn ready(&mut self) -> bool {
        // One the upstream closed would only fail the request and be sent again.
        upstream::idle_and_clean(&mut self.stream)
    }

    fn open(&mut self) -> bool {
        upstream::idle_and_clean(&mut self.stream)
    }
}

/// Sweeps this thread's fast-path pool ([`crate::net::pool::keep_swept`]).
fn sweep_pool(now: Instant, limit: Duration) -> usize {
    RAW_POOL.with(|p| p.sweep(now, limit))
}

/// An idle connection to `addr`; those found idle past `max_idle` are closed and counted.
fn checkout(addr: &Dial, max_idle: Duration, shared: &Shared) -> Option<UpConn> {
    RAW_POOL.with(|p| p.checkout(addr, max_idle, &shared.stats.upstream_cx_idle_timeout))
}

/// Pools `c` for the next request to `addr` if its response ended exactly at the end of what
/// was read. Whether anything arrived after that is checked when it is taken out again
/// ([`checkout`], [`upstream::idle_and_clean`]): that check sees everything the event loop
/// learned in between, which a check here, right after the last read, could not.
fn checkin(addr: Dial, c: UpConn) {
    if c.buf.is_empty() {
        RAW_POOL.with(|p| p.checkin(addr, c));
    }
}

/// Sends the request to a host (or the original destination) and relays the response,
/// failing over to the next host when a connection is refused.
/// The request as it goes upstream.
struct UpRequest<'a> {
    head: &'a [u8],
    /// Body bytes still to be read from the client.
    body_rest: u64,
    method_is_head: bool,
    /// The SNI for TLS origination without a fixed one.
    sni_host: Option<&'a str>,
}

async fn send(
    conn: &mut Downstream,
    shared: &Shared,
    live: &crate::live::Live,
    cluster: Option<&crate::model::cluster::Cluster>,
    original: &Original<'_>,
    req: &UpRequest<'_>,
) -> Result<Sent, Failure> {
    let (up_head, body_rest, method_is_head) = (req.head, req.body_rest, req.method_is_head);
    let timeout = shared.config.connect_timeout;
    let idle = shared.config.pool_idle_timeout;
    let to = Upstream {
        shared,
        live,
        cluster,
        original: *original,
    };
    let mut plan = Failover::new(&to).await.map_err(Failure::Answer)?;
    while let Some(i) = plan.next_target() {
        let addr = plan.dial(i, req.sni_host);
        match attempt(conn, shared, &addr, up_head, body_rest, method_is_head, idle, timeout).await {
            Attempt::Done(r) => return r,
            Attempt::Opened(r) => {
                plan.opened(i);
                return r;
            }
            Attempt::Refused(e) => plan.refused(i, &e),
        }
    }
    Err(Failure::Answer(plan.exhausted()))
}

enum Attempt {
    /// Finished over a pooled connection.
    Done(Result<Sent, Failure>),
    /// Finished over a connection opened for it.
    Opened(Result<Sent, Failure>),
    /// Could not connect: try the next host.
    Refused(upstream::ConnectError),
}

/// One try against `addr`: a pooled connection first (replaced by a fresh one if it turns out
/// closed before answering and the request can be resent), else a new connection.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    conn: &mut Downstream,
    shared: &Shared,
    addr: &Dial,
    up_head: &[u8],
    body_rest: u64,
    method_is_head: bool,
    idle: Duration,
    connect_timeout: Duration,
) -> Attempt {
    pool::keep_swept(idle, sweep_pool);
    if let Some(mut up) = checkout(addr, idle, shared) {
        match roundtrip(conn, shared, &mut up, up_head, body_rest, method_is_head).await {
            Outcome::Finished { reusable, close_client } => {
                if reusable {
                    checkin(addr.clone(), up);
                }
                return Attempt::Done(Ok(Sent { up_close: close_client }));
            }
            // A pooled connection the upstream had already closed: resend on a fresh one,
            // which is safe because nothing of the response arrived and the body (if any) is
            // still unread.
            Outcome::StaleBeforeResponse if body_rest == 0 => {}
            Outcome::StaleBeforeResponse => {
                return Attempt::Done(Err(Failure::Answer(UpstreamError::Reset(
                    "upstream closed the connection".into(),
                ))));
            }
            Outcome::Failed(f) => return Attempt::Done(Err(f)),
        }
    }
    let stream = match upstream::connect(addr, connect_timeout).await {
        Ok(s) => s,
        Err(e) => return Attempt::Refused(e),
    };
    let mut up = UpConn {
        stream,
        buf: BytesMut::with_capacity(8 * 1024),
    };
    match roundtrip(conn, shared, &mut up, up_head, body_rest, method_is_head).await {
        Outcome::Finished { reusable, close_client } => {
            if reusable {
                checkin(addr.clone(), up);
            }
            Attempt::Opened(Ok(Sent { up_close: close_client }))
        }
        Outcome::StaleBeforeResponse => Attempt::Opened(Err(Failure::Answer(UpstreamError::Reset(
            "upstream closed the connection before responding".into(),
        )))),
        // A TLS 1.3 server refuses a client certificate only after the handshake, at the first
        // read: that is a failed connection, tried on the next host like any other, as long as
        // the whole request can be sent again (the server processed none of it).
        Outcome::Failed(Failure::Answer(UpstreamError::Tls(cause))) if body_rest == 0 => {
            Attempt::Refused(upstream::ConnectError::Tls(cause))
        }
        Outcome::Failed(f) => Attempt::Opened(Err(f)),
    }
}

enum Outcome {
    /// The response was relayed in full.
    Finished {
        /// The upstream connection can carry another request.
        reusable: bool,
        /// The response was delimited by closing, so the client connection must close too.
        close_client: bool,
    },
    /// The upstream closed or reset before sending any response byte.
    StaleBeforeResponse,
    Failed(Failure),
}

/// What happened first while waiting for the response head.
enum Waited<T> {
    Upstream(T),
    /// The client sent more (a pipelined request), now in its buffer.
    ClientSent,
    /// The client closed its side or reset the connection.
    ClientGone,
}

/// Reads what the client sends while its request is in flight: `true` when it closed or broke
/// the connection. HTTP/1.1 has no half-close for requests (Envoy and hyper treat one as the
/// client leaving), so end of stream counts as gone.
async fn client_gone(stream: &mut TcpStream, buf: &mut BytesMut) -> bool {
    buf.reserve(4096);
    matches!(stream.read_buf(buf).await, Ok(0) | Err(_))
}

/// Why an upstream response head cannot be relayed (502, UPE).
#[derive(Debug, thiserror::Error)]
enum FramingError {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("{0}")]
    Framing(framing::ResponseError),
}

/// How the response body is delimited.
enum Framing {
    None,
    Length(u64),
    Chunked(ChunkScanner),
    UntilClose,
}

/// A final response head, parsed, with the client's copy of it written.
struct FinalHead {
    status: u16,
    len: usize,
    framing: framing::Response,
    /// The head for the client (the connection's reused write buffer).
    out: Vec<u8>,
    /// The proxy was draining when the head arrived: the client connection closes after it.
    draining: bool,
}

/// Writes the response head for the client into `out` (cleared first): the status line and
/// every header but the hop-by-hop ones (Transfer-Encoding is kept: the body is relayed as it
/// is), and `connection: close` when `close`.
fn client_head(resp: &httparse::Response<'_, '_>, status: u16, close: bool, mut out: Vec<u8>) -> Vec<u8> {
    out.clear();
    let reason = resp.reason.unwrap_or("");
    use std::io::Write;
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    // The Connection fields, gathered once rather than looked for again for every header; past
    // MAX_CONNECTION_FIELDS of them, every field is looked at for each header.
    let mut connection: [&[u8]; MAX_CONNECTION_FIELDS] = [b""; MAX_CONNECTION_FIELDS];
    let mut connection_fields = 0;
    for h in resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
    {
        if let Some(slot) = connection.get_mut(connection_fields) {
            *slot = h.value;
        }
        connection_fields += 1;
    }
    let all_connection = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value);
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        // The body is relayed as it came, so its Transfer-Encoding stays with it
        // (`meshentry_wire` refused it beside a Content-Length).
        let te = name.eq_ignore_ascii_case(b"transfer-encoding");
        let hop_by_hop = || match connection.get(..connection_fields) {
            Some(fields) => framing::is_hop_by_hop(name, fields.iter().copied()),
            None => framing::is_hop_by_hop(name, all_connection.clone()),
        };
        if !te && hop_by_hop() {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Sends the request on `up` and relays the response to the client.
async fn roundtrip(
    conn: &mut Downstream,
    shared: &Shared,
    up: &mut UpConn,
    up_head: &[u8],
    body_rest: u64,
    method_is_head: bool,
) -> Outcome {
    if up.stream.write_all(up_head).await.is_err() {
        return Outcome::StaleBeforeResponse;
    }
    let stream_idle = shared.config.limits.stream_idle_timeout;
    // The rest of a Content-Length request body, streamed.
    if body_rest > 0 {
        let mut left = body_rest;
        let mut chunk = vec![0u8; 16 * 1024];
        while left > 0 {
            let want = (left as usize).min(chunk.len());
            let read = tokio::time::timeout(stream_idle, conn.stream.read(&mut chunk[..want]));
            let n = match read.await {
                Err(_) => return Outcome::Failed(Failure::BodyStalled),
                Ok(Ok(0) | Err(_)) => {
                    note(|o| o.fail(Flags::DC, "downstream_remote_disconnect"));
                    return Outcome::Failed(Failure::Broken);
                }
                Ok(Ok(n)) => n,
            };
            if up.stream.write_all(&chunk[..n]).await.is_err() {
                return Outcome::Failed(Failure::Answer(UpstreamError::Reset(
                    "upstream closed while the request body was sent".into(),
                )));
            }
            left -= n as u64;
        }
    }

    // The response head (skipping 1xx interim responses).
    let response_timeout = shared.config.response_timeout;
    let deadline = tokio::time::Instant::now() + response_timeout;
    let (status, head_len, framing, up_close, head_at, mut out, draining) = loop {
        let parsed = {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&up.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    if (100..200).contains(&status) && status != 101 {
                        Some(Ok(Err(len)))
                    } else {
                        let answering = framing::Answering {
                            head: method_is_head,
                            upgrade: false,
                        };
                        let fields = resp.headers.iter().map(|h| (h.name.as_bytes(), h.value));
                        let minor = resp.version.unwrap_or(0);
                        Some(
                            framing::response(status, minor, answering, fields)
                                .map(|f| {
                                    // The client's head is written from this parse, while `resp`
                                    // still borrows the bytes (parsing once more cost ~1,400
                                    // instructions per request).
                                    let draining = shared.lifecycle.is_draining();
                                    let close = f.body == framing::ResponseBody::UntilClose || draining;
                                    let out = client_head(&resp, status, close, std::mem::take(&mut conn.out));
                                    Ok(FinalHead {
                                        status,
                                        len,
                                        framing: f,
                                        out,
                                        draining,
                                    })
                                })
                                .map_err(FramingError::Framing),
                        )
                    }
                }
                Ok(httparse::Status::Partial) => None,
                Err(e) => Some(Err(FramingError::Head(e))),
            }
        };
        match parsed {
            // An interim response (100 Continue, 103 Early Hints): skipped, the final one follows.
            Some(Ok(Err(len))) => {
                up.buf.advance(len);
                continue;
            }
            Some(Ok(Ok(FinalHead {
                status,
                len,
                framing: f,
                out,
                draining,
            }))) => {
                let framing = match f.body {
                    framing::ResponseBody::None => Framing::None,
                    framing::ResponseBody::Length(n) => Framing::Length(n),
                    framing::ResponseBody::Chunked => Framing::Chunked(ChunkScanner::default()),
                    framing::ResponseBody::UntilClose => Framing::UntilClose,
                };
                // Only the access log prints the upstream time: without it, no clock read.
                // Noted with the first write to the client (one `note` fewer per request).
                let head_at = shared.telemetry.access_log().is_some().then(Instant::now);
                break (
                    status,
                    len,
                    framing,
                    f.close || f.announced_body,
                    head_at,
                    out,
                    draining,
                );
            }
            Some(Err(e)) => {
                return Outcome::Failed(Failure::Answer(UpstreamError::Protocol(e.to_string())));
            }
            None => {
                if up.buf.len() > MAX_HEAD_BYTES {
                    return Outcome::Failed(Failure::Answer(UpstreamError::Protocol(
                        "response head too large".into(),
                    )));
                }
            }
        }
        up.buf.reserve(4096);
        let got_nothing = up.buf.is_empty();
        let read = tokio::time::timeout_at(deadline, up.stream.read_buf(&mut up.buf));
        tokio::pin!(read);
        // Envoy's DC: a client that goes away while the upstream thinks is noticed now, not
        // when the answer is written to a dead socket (which succeeds, and would log a plain
        // 200). Only watched while nothing is buffered from the client: bytes it pipelines
        // are kept for the next request, and after the first, the wait is on the upstream
        // alone, so a pipelining client cannot make this buffer grow.
        let waited = if conn.buf.is_empty() {
            tokio::select! {
                biased;
                r = &mut read => Waited::Upstream(r),
                gone = client_gone(&mut conn.stream, &mut conn.buf) => {
                    if gone { Waited::ClientGone } else { Waited::ClientSent }
                }
            }
        } else {
            Waited::ClientSent
        };
        let result = match waited {
            Waited::Upstream(r) => r,
            Waited::ClientSent => read.await,
            Waited::ClientGone => {
                // The response code stays 0, as Envoy logs it: no response was sent. The
                // upstream connection is dropped (never pooled) with its unanswered request.
                note(|o| o.fail(Flags::DC, "downstream_remote_disconnect"));
                return Outcome::Failed(Failure::Broken);
            }
        };
        match result {
            Err(_) => return Outcome::Failed(Failure::Answer(UpstreamError::Timeout(response_timeout))),
            // A TLS alert instead of a response (a TLS 1.3 server refusing our client
            // certificate says so only now) is the answer, not a stale connection.
            Ok(Err(e)) if let Some(cause) = crate::live::tls::find_cause(&e) => {
                return Outcome::Failed(Failure::Answer(UpstreamError::Tls(cause)));
            }
            Ok(Ok(0)) | Ok(Err(_)) if got_nothing => return Outcome::StaleBeforeResponse,
            Ok(Ok(0)) => {
                return Outcome::Failed(Failure::Answer(UpstreamError::Reset("upstream closed mid-head".into())));
            }
            Ok(Err(e)) => return Outcome::Failed(Failure::Answer(UpstreamError::Reset(e.to_string()))),
            Ok(Ok(_)) => {}
        }
    };

    let head_out = out.len();
    up.buf.advance(head_len);

    // The body: whatever came with the head goes out in the same write.
    let mut framing = framing;
    let done = take_body(&mut framing, &mut up.buf, &mut out);
    let done = match done {
        Ok(d) => d,
        Err(()) => {
            conn.out = out;
            note(|o| {
                o.code = status;
                o.head_at = head_at;
            });
            return Outcome::Failed(Failure::Answer(UpstreamError::Protocol(
                "malformed chunked response".into(),
            )));
        }
    };
    let body_bytes = (out.len() - head_out) as u64;
    let wrote = conn.stream.write_all(&out).await;
    conn.out = out;
    if wrote.is_err() {
        note(|o| {
            o.code = status;
            o.head_at = head_at;
            o.fail(Flags::DC, "downstream_remote_disconnect");
        });
        return Outcome::Failed(Failure::Broken);
    }
    note(|o| {
        o.code = status;
        o.head_at = head_at;
        o.bytes_sent += body_bytes;
    });
    if !done {
        loop {
            up.buf.reserve(16 * 1024);
            let n = match tokio::time::timeout(stream_idle, up.stream.read_buf(&mut up.buf)).await {
                Ok(Ok(n)) => n,
                Err(_) => {
                    shared.stats.downstream_rq_idle_timeout.fetch_add(1, Ordering::Relaxed);
                    note(|o| o.fail(Flags::SI, "stream_idle_timeout"));
                    return Outcome::Failed(Failure::Broken);
                }
                Ok(Err(_)) => {
                    note(|o| o.fail(Flags::UC, "upstream_reset_after_response_started"));
                    return Outcome::Failed(Failure::Broken);
                }
            };
            if n == 0 {
                if matches!(framing, Framing::UntilClose) {
                    return Outcome::Finished {
                        reusable: false,
                        close_client: true,
                    };
                }
                note(|o| o.fail(Flags::UC, "upstream_reset_after_response_started"));
                return Outcome::Failed(Failure::Broken);
            }
            let mut out = std::mem::take(&mut conn.out);
            out.clear();
            let finished = take_body(&mut framing, &mut up.buf, &mut out);
            let body_bytes = out.len() as u64;
            let wrote = conn.stream.write_all(&out).await;
            conn.out = out;
            if wrote.is_err() {
                note(|o| o.fail(Flags::DC, "downstream_remote_disconnect"));
                return Outcome::Failed(Failure::Broken);
            }
            note(|o| o.bytes_sent += body_bytes);
            match finished {
                Ok(true) => break,
                Ok(false) => {}
                Err(()) => {
                    note(|o| o.fail(Flags::UC, "upstream_reset_after_response_started"));
                    return Outcome::Failed(Failure::Broken);
                }
            }
        }
    }
    // Bytes after the end of the response mean the upstream is confused: do not reuse it.
    Outcome::Finished {
        reusable: !up_close && up.buf.is_empty(),
        close_client: draining,
    }
}

/// Moves body bytes of `framing` from `from` to `to`; `Ok(true)` when the body is complete.
fn take_body(framing: &mut Framing, from: &mut BytesMut, to: &mut Vec<u8>) -> Result<bool, ()> {
    match framing {
        Framing::None => Ok(true),
        Framing::Length(left) => {
            let n = (*left as usize).min(from.len());
            to.extend_from_slice(&from[..n]);
            from.advance(n);
            *left -= n as u64;
            Ok(*left == 0)
        }
        Framing::Chunked(scanner) => match scanner.feed(from).map_err(|_| ())? {
            Some(end) => {
                to.extend_from_slice(&from[..end]);
                from.advance(end);
                Ok(true)
            }
            None => {
                to.extend_from_slice(from);
                from.clear();
                Ok(false)
            }
        },
        Framing::UntilClose => {
            to.extend_from_slice(from);
            from.clear();
            Ok(false)
        }
    }
}

/// A client connection with the bytes already read from it in front, for handing it to hyper
/// or the HTTP/2 server.
pub type Rewind = crate::serve::tunnel::Prefixed<TcpStream>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_h2_preface_is_recognised_wherever_httparse_gives_up_on_it() {
        let mut refused = 0;
        for n in 1..=H2_PREFACE.len() {
            let mut headers = [httparse::EMPTY_HEADER; 4];
            let mut req = httparse::Request::new(&mut headers);
            if req.parse(&H2_PREFACE[..n]).is_err() {
                refused += 1;
                assert!(is_h2_preface(&H2_PREFACE[..n]), "{n} bytes");
            }
        }
        assert!(
            refused > 0,
            "httparse must refuse the preface for the hand-off to happen"
        );
        // The preface with the client's first SETTINGS frame behind it.
        assert!(is_h2_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00"));
        assert!(!is_h2_preface(b"GET / HTTP/2.0\r\n\r\n"));
        assert!(!is_h2_preface(b""));
    }

    fn client_head_of(response: &str, close: bool) -> String {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = resp.parse(response.as_bytes()) else {
            panic!("{response:?} does not parse");
        };
        let status = resp.code.unwrap_or(0);
        String::from_utf8(client_head(&resp, status, close, b"left over".to_vec())).unwrap()
    }

    #[test]
    fn the_client_head_drops_hop_by_hop_fields_and_those_connection_names_however_many_connection_fields() {
        let head = client_head_of(
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, x-secret\r\nX-Secret: 1\r\nkeep-alive: timeout=5\r\n\
             transfer-encoding: chunked\r\ncontent-type: text/plain\r\nx-kept: 2\r\n\r\n",
            false,
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\nx-kept: 2\r\n\r\n"
        );
        // More Connection fields than are gathered: the last one still nominates its field.
        let mut response = String::from("HTTP/1.1 404 Not Found\r\n");
        for i in 0..=MAX_CONNECTION_FIELDS {
            response.push_str(&format!("connection: x-drop-{i}\r\nx-drop-{i}: {i}\r\n"));
        }
        response.push_str("content-length: 0\r\n\r\n");
        assert_eq!(
            client_head_of(&response, true),
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
    }

    fn parsed(request: &[u8]) -> Head {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = req.parse(request) else {
            panic!("{request:?} does not parse");
        };
        Head {
            len,
            method: offset(request, req.method.unwrap().as_bytes()),
            target: offset(request, req.path.unwrap().as_bytes()),
            minor_version: req.version.unwrap(),
            headers: req
                .headers
                .iter()
                .map(|h| (offset(request, h.name.as_bytes()), offset(request, h.value)))
                .collect(),
        }
    }

    // Found by meshentry-wire's differential test: the fast path wrote `GET ?q HTTP/1.1`
    // upstream for `GET http://a?q`, which no server parses.
    #[test]
    fn an_absolute_target_with_no_path_goes_to_hyper() {
        let plain = b"GET http://a.example/x?q HTTP/1.1\r\n\r\n";
        assert!(!needs_general_path(plain, &parsed(plain)));
        let origin = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(!needs_general_path(origin, &parsed(origin)));
        let bare = b"GET http://a.example HTTP/1.1\r\n\r\n";
        assert!(
            !needs_general_path(bare, &parsed(bare)),
            "`/` is supplied for an empty target"
        );
        let query = b"GET http://a.example?q HTTP/1.1\r\n\r\n";
        assert!(needs_general_path(query, &parsed(query)));
    }

    #[test]
    fn body_framing() {
        let mut from = BytesMut::from(&b"hello world"[..]);
        let mut to = Vec::new();
        let mut f = Framing::Length(5);
        assert_eq!(take_body(&mut f, &mut from, &mut to), Ok(true));
        assert_eq!(to, b"hello");
        assert_eq!(&from[..], b" world");

        let mut from = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\nextra"[..]);
        let mut to = Vec::new();
        let mut f = Framing::Chunked(ChunkScanner::default());
        assert_eq!(take_body(&mut f, &mut from, &mut to), Ok(true));
        assert_eq!(to, b"3\r\nabc\r\n0\r\n\r\n");
        assert_eq!(&from[..], b"extra");
    }
}
