//! What every request on one client connection shares ([`ConnCtx`]), and the pieces every
//! HTTP path builds its answers from: local replies, upstream and body failures, hop-by-hop
//! header rules, upgrades.

use crate::base::flags::Flags;
use crate::live::Live;
use crate::model::snapshot::Snapshot;
use crate::model::vs::HttpRoutes;
use crate::net::body::{BodyFault, BodyWatch, ClientBody};
use crate::net::forward::{self, Original};
use crate::net::upstream::PooledBody;
use crate::obs::telemetry::note;
use crate::route::{Decision, Resolution};
use crate::rt::shared::Shared;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Responses are either an upstream's (streamed) or our own.
pub type ResponseBody = Either<PooledBody, Full<Bytes>>;

/// Upstream response heads larger than this are refused (502), bounding per-connection
/// memory. Request heads have their own, configurable bound (`--max-request-headers-kb`).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The header fields of an upstream response, and the default bound on a request's
/// (`--max-headers-count`). It is hyper's default, which parses into a stack array; setting
/// another one makes hyper allocate a buffer per request.
pub const MAX_HEADERS: usize = 100;

/// What one downstream connection carries: the snapshot its current request started with
/// (each new request takes the one in force, see [`ConnCtx::refresh`]).
pub struct ConnCtx {
    pub shared: Arc<Shared>,
    pub snapshot: Arc<Live>,
    pub peer: SocketAddr,
    /// Set for connections captured by the transparent listener.
    pub transparent: Option<Transparent>,
    /// Set for connections to a gateway server port (gateway mode).
    pub gateway: Option<crate::model::gateway::GatewayConn>,
}

/// The snapshot cell of a connection's [`Shared`], for the [`SnapshotCache`] it keeps.
pub(crate) struct SnapshotCell(pub Arc<Shared>);

impl std::ops::Deref for SnapshotCell {
    type Target = arc_swap::ArcSwap<Live>;

    fn deref(&self) -> &Self::Target {
        &self.0.snapshot
    }
}

/// A connection's view of the snapshot in force, checked with a pointer compare.
pub(crate) type SnapshotCache = arc_swap::Cache<SnapshotCell, Arc<Live>>;

impl ConnCtx {
    /// Makes `ctx` hold the snapshot in force before a new request: a reload applies from the
    /// next request on, while requests in flight keep the snapshot they hold. Costs one atomic
    /// load when nothing changed; when something did, `ctx` is updated in place if no request
    /// holds it, else replaced.
    pub fn refresh(ctx: &mut Arc<ConnCtx>) {
        let current = ctx.shared.snapshot.load();
        if Arc::ptr_eq(&current, &ctx.snapshot) {
            return;
        }
        ConnCtx::set_snapshot(ctx, arc_swap::Guard::into_inner(current));
    }

    /// [`ConnCtx::refresh`] for a loop that keeps a [`SnapshotCache`] for the connection: one
    /// relaxed load and a pointer compare when nothing changed, where `refresh`'s `load()`
    /// takes and returns a debt slot (some 80 instructions per request on the fast path).
    pub(crate) fn refresh_cached(ctx: &mut Arc<ConnCtx>, cache: &mut SnapshotCache) {
        let current = cache.load();
        if Arc::ptr_eq(current, &ctx.snapshot) {
            return;
        }
        ConnCtx::set_snapshot(ctx, current.clone());
    }

    fn set_snapshot(ctx: &mut Arc<ConnCtx>, snapshot: Arc<Live>) {
        match Arc::get_mut(ctx) {
            Some(c) => c.snapshot = snapshot,
            None => {
                *ctx = Arc::new(ConnCtx {
                    shared: ctx.shared.clone(),
                    snapshot,
                    peer: ctx.peer,
                    transparent: ctx.transparent.clone(),
                    gateway: ctx.gateway.clone(),
                })
            }
        }
    }

    /// [`ConnCtx::refresh`] for servers that hand each request a context of its own (hyper's):
    /// `cell` holds the connection's latest context, replaced only when a reload happened.
    pub(crate) fn current(cell: &arc_swap::ArcSwap<ConnCtx>) -> Arc<ConnCtx> {
        let mut ctx = cell.load_full();
        let before = Arc::as_ptr(&ctx);
        ConnCtx::refresh(&mut ctx);
        if Arc::as_ptr(&ctx) != before {
            cell.store(ctx.clone());
        }
        ctx
    }
}

/// Where a captured connection was going (SO_ORIGINAL_DST). Requests on it are routed by
/// their Host among the services on this port, and anything passed through (or sent to an
/// ORIGINAL_DST cluster) goes to this address, not to whatever the Host names.
#[derive(Clone)]
pub struct Transparent {
    pub dst: SocketAddr,
    /// `dst`'s IP as text, the form [`Original`] takes.
    pub dst_ip: String,
}

impl Transparent {
    pub fn new(dst: SocketAddr) -> Self {
        Self {
            dst,
            dst_ip: dst.ip().to_string(),
        }
    }

    pub fn original(&self) -> Original<'_> {
        Original {
            host: &self.dst_ip,
            port: self.dst.port(),
        }
    }
}

/// The client's response when its request body failed on the way upstream (hyper reports
/// that as the upstream exchange failing): its error, counted as such, never the upstream's.
pub(crate) fn body_failure(ctx: &ConnCtx, fault: BodyFault, version: Version) -> Response<ResponseBody> {
    let shared = &ctx.shared;
    let (status, reason) = match fault {
        BodyFault::Malformed => {
            note(|o| o.fail(Flags::DPE, "http1.codec_error"));
            shared.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::BAD_REQUEST,
                "meshentry: the request body is malformed (invalid chunked encoding)".to_string(),
            )
        }
        BodyFault::Idle => {
            // Counted where the timer fired: it may end a request whose response started.
            note(|o| o.fail(Flags::SI, "stream_idle_timeout"));
            let limit = shared.config.limits.stream_idle_timeout;
            (
                StatusCode::REQUEST_TIMEOUT,
                format!("meshentry: no byte of the request body arrived for {limit:?} (--stream-idle-timeout)"),
            )
        }
        BodyFault::Gone => {
            note(|o| o.fail(Flags::DC, "downstream_remote_disconnect"));
            (
                StatusCode::BAD_REQUEST,
                "meshentry: the request body broke off".to_string(),
            )
        }
    };
    tracing::info!(peer = %ctx.peer, ?fault, "request body failed");
    // The rest of the body will not be read, so the connection cannot carry another request.
    Reply::new(status, reason).closing(version < Version::HTTP_2).response()
}

/// The protocol switch `req` asks for, when the proxy relays it: the protocol, and the
/// client's side of the switch, taken out of the request.
pub(crate) fn take_upgrade<B>(req: &mut Request<B>) -> Option<(HeaderValue, hyper::upgrade::OnUpgrade)> {
    let protocol = upgrade_asked(req)?;
    let client = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>()?;
    Some((protocol, client))
}

/// The upstream's copy of a request that asks to switch to `protocol`: shaped as any request
/// is ([`to_upstream`]), then its `Upgrade` and `Connection: upgrade` put back.
pub(crate) fn upgrade_request(
    parts: http::request::Parts,
    body: Incoming,
    protocol: HeaderValue,
    host: HeaderValue,
    shared: &Arc<Shared>,
) -> (Request<crate::net::upstream::RequestBody>, BodyWatch) {
    let (body, watch) = ClientBody::new(body, shared);
    let mut req = to_upstream(Request::from_parts(parts, Either::Left(body)), host, &shared.via);
    let headers = req.headers_mut();
    headers.insert(header::UPGRADE, protocol);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    (req, watch)
}

/// The protocol an HTTP/1.1 request asks to switch to (`Upgrade`, with `upgrade` among the
/// `Connection` options), when the proxy relays the switch. `h2c` is not relayed (Envoy does
/// not either): the request goes on without it, and HTTP/2 to the upstream is the port's
/// protocol's business.
pub(crate) fn upgrade_asked<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let upgrade = req.headers().get(header::UPGRADE)?;
    let asked = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let h2c = upgrade
        .to_str()
        .is_ok_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")));
    (asked && !h2c).then(|| upgrade.clone())
}

/// The client's response when a request failed upstream: counted, logged, and answered with
/// the error's status, reason and Envoy response flag.
pub(crate) fn upstream_failure(
    ctx: &ConnCtx,
    host: &str,
    port: u16,
    cluster_name: &str,
    e: &forward::UpstreamError,
) -> Response<ResponseBody> {
    // The fast path's `refuse` counts every 508 it sends as a bad request itself.
    ctx.shared.stats.count_loop(e);
    upstream_failed(ctx, host, port, cluster_name, e).response()
}

/// [`upstream_failure`]'s reply, noted, counted (but for a loop) and logged.
pub(crate) fn upstream_failed(
    ctx: &ConnCtx,
    host: &str,
    port: u16,
    cluster_name: &str,
    e: &forward::UpstreamError,
) -> Reply<'static> {
    note(|o| {
        o.fail(e.flags(), e.details());
        if let forward::UpstreamError::Tls(cause) = e {
            o.transport_failure = Some(cause.clone());
        }
    });
    ctx.shared.stats.count_upstream_error(e);
    tracing::info!(
        peer = %ctx.peer, host = %host, port, cluster = cluster_name, flags = e.flag(), error = %e,
        "request failed upstream"
    );
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    Reply::new(status, format!("meshentry: {host}:{port} via {cluster_name}: {e}")).flagged(e.flag())
}

/// The request as the upstream should see it: origin-form, HTTP/1.1, no hop-by-hop headers,
/// `Host` from the absolute URI when there was one (RFC 9112 3.2.2), a body that may not be
/// empty sent chunked, with the trailer fields its `Trailer` header declares (hyper's client
/// sends only those; `Trailer` is end to end and kept by [`strip_hop_by_hop`]), and this
/// proxy's `via`.
pub(crate) fn to_upstream<B: hyper::body::Body>(
    req: Request<B>,
    host: HeaderValue,
    via: &crate::base::loop_guard::Via,
) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    let absolute = parts.uri.authority().is_some();
    parts.uri = match parts.uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    };
    strip_hop_by_hop(&mut parts.headers);
    // After stripping: `Connection: via` must not remove the hop marker.
    via.append(&mut parts.headers, parts.version);
    parts.version = Version::HTTP_11;
    if absolute || !parts.headers.contains_key(header::HOST) {
        parts.headers.insert(header::HOST, host);
    }
    // hyper's client sends a GET or HEAD whose body length it does not know with no body at
    // all unless the request says chunked: the client's body would be dropped, and its bytes
    // left for the upstream to misread. Any other method gets chunked from hyper anyway.
    if !body.is_end_stream()
        && body.size_hint().exact().is_none()
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        parts
            .headers
            .insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    Request::from_parts(parts, body)
}

/// Connection-specific headers (RFC 9110 7.6.1), in the order [`strip_hop_by_hop`] checks them;
/// the same set as `meshentry_wire::h1`'s (`Trailer` is end to end, so it stays).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// RFC 9110 7.6.1: connection-specific headers are not forwarded, nor any header that
/// `Connection` names, except the framing fields and `Host`, which no client may have removed
/// (`meshentry_wire::h1::may_be_nominated`). This runs twice per request, so it looks at each
/// name once and removes only what is there.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = [false; 8];
    let mut any = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    if present[0] {
        // Names listed in `Connection` beyond the standard ones (rare: only then allocate).
        let extra: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.eq_ignore_ascii_case("close")
                    && !HOP_BY_HOP.iter().any(|h| h.as_str().eq_ignore_ascii_case(t))
                    && meshentry_wire::h1::may_be_nominated(t.as_bytes())
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in extra {
            headers.remove(name);
        }
    }
    for (name, here) in HOP_BY_HOP.iter().zip(present) {
        if here {
            headers.remove(name);
        }
    }
}

/// The body of a REGISTRY_ONLY refusal.
pub fn blocked_reason(snap: &Snapshot, host: &str, port: u16) -> String {
    format!(
        "meshentry: {host}:{port} is not a service in the registry seen by {} and the outbound traffic policy is REGISTRY_ONLY (from {}); add a ServiceEntry for it{}",
        snap.seen_by(),
        snap.policy_source,
        if snap.scope.is_some() {
            ", or import it in the Sidecar's egress hosts"
        } else {
            ""
        }
    )
}

/// The header a local reply names its response flags in (`NR`, `UF`...), so a client can
/// tell the proxy's answer from the upstream's.
pub const RESPONSE_FLAGS_HEADER: &str = "x-meshentry-response-flags";

/// A reply of the proxy's own: the one place its status line, headers and one-line body are
/// decided. The fast path writes it as bytes ([`Reply::write`]), the hyper path sends it as a
/// response ([`Reply::response`]); the constructors hold the reasons both paths give.
pub struct Reply<'a> {
    pub status: StatusCode,
    /// The body, without its final newline.
    pub reason: Cow<'a, str>,
    /// Envoy response flags, in [`RESPONSE_FLAGS_HEADER`].
    pub flags: Option<&'a str>,
    /// `connection: close` (HTTP/1 only).
    pub close: bool,
}

impl<'a> Reply<'a> {
    pub fn new(status: StatusCode, reason: impl Into<Cow<'a, str>>) -> Self {
        Self {
            status,
            reason: reason.into(),
            flags: None,
            close: false,
        }
    }

    pub fn flagged(self, flags: &'a str) -> Self {
        Self {
            flags: Some(flags),
            ..self
        }
    }

    pub fn closing(self, close: bool) -> Self {
        Self { close, ..self }
    }

    /// The reply as a whole HTTP/1.1 response, appended to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let (code, canonical) = (self.status.as_u16(), self.status.canonical_reason().unwrap_or(""));
        let _ = write!(
            out,
            "HTTP/1.1 {code} {canonical}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
            self.reason.len() + 1
        );
        if let Some(f) = self.flags {
            let _ = write!(out, "{RESPONSE_FLAGS_HEADER}: {f}\r\n");
        }
        if self.close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.reason.as_bytes());
        out.push(b'\n');
    }

    /// The reply as a response for hyper.
    pub fn response(&self) -> Response<ResponseBody> {
        let mut body = String::with_capacity(self.reason.len() + 1);
        body.push_str(&self.reason);
        body.push('\n');
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(v) = self.flags.and_then(|f| HeaderValue::from_str(f).ok()) {
            headers.insert(HeaderName::from_static(RESPONSE_FLAGS_HEADER), v);
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl Reply<'static> {
    /// 400: the explicit proxy was given no destination.
    pub fn no_destination() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "meshentry: the request names no destination (no absolute URI and no Host header)",
        )
    }

    /// 508: `host:port` is this proxy, so the `what` (request, tunnel) would loop.
    pub fn is_self(host: &str, port: u16, what: &str) -> Self {
        let reason = format!("meshentry: {host}:{port} is this proxy; the {what} would loop");
        Self::new(StatusCode::LOOP_DETECTED, reason)
    }

    /// 508: the request carries this proxy's own `via` marker.
    pub fn via_loop(via: &crate::base::loop_guard::Via) -> Self {
        let reason = format!(
            "meshentry: request loop: the request already passed through this proxy (Via: {})",
            via.token()
        );
        Self::new(StatusCode::LOOP_DETECTED, reason)
    }

    /// 408: the request head did not arrive within `--header-read-timeout`.
    pub fn head_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "meshentry: the request head did not arrive in time",
        )
    }

    /// 431: more header fields than `--max-headers-count`.
    pub fn too_many_headers(max: usize) -> Self {
        let reason = format!("meshentry: the request has more than {max} header fields (--max-headers-count)");
        Self::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, reason)
    }

    /// 431: a head larger than `--max-request-headers-kb`.
    pub fn head_too_large(max: usize) -> Self {
        let reason = format!("meshentry: the request head is larger than {max} bytes (--max-request-headers-kb)");
        Self::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, reason)
    }
}

/// The destination [`crate::route::resolve`] gave a request, or the reply that refuses it,
/// noted (counting it is the caller's): 400 when it names none, 508 when it names this proxy
/// (`what` says what would loop: a request, a tunnel).
pub(crate) fn resolved<'s, 'a>(r: Resolution<'s, 'a>, what: &str) -> Result<Resolved<'s, 'a>, Reply<'static>> {
    match r {
        Resolution::NoDestination => {
            note(|o| o.fail(Flags::DPE, "missing_host_header"));
            Err(Reply::no_destination())
        }
        Resolution::Loop { host, port } => {
            note(|o| o.fail(Flags::NONE, "request_loop"));
            Err(Reply::is_self(host, port, what))
        }
        Resolution::To {
            decision,
            routes,
            host,
            port,
        } => Ok((decision, routes, host, port)),
    }
}

/// A request's registry decision, the VirtualService rules replacing it, and its host and port.
pub(crate) type Resolved<'s, 'a> = (Decision<'s>, Option<&'s HttpRoutes>, &'a str, u16);

/// A response of our own, with a one-line reason.
pub fn local(status: StatusCode, reason: &str) -> Response<ResponseBody> {
    Reply::new(status, reason).response()
}

/// The REGISTRY_ONLY refusal of a request to `host:port`, noted, counted and logged: Istio
/// blocks silently; we say what and why.
pub(crate) fn blocked(ctx: &ConnCtx, host: &str, port: u16, status: StatusCode) -> Reply<'static> {
    note(|o| {
        o.routed = crate::obs::telemetry::Routed::BlackHole;
        o.fail(Flags::NR, "direct_response");
    });
    ctx.shared.stats.blocked.fetch_add(1, Ordering::Relaxed);
    let snap = &ctx.snapshot;
    tracing::warn!(
        peer = %ctx.peer, host, port, dst = ?ctx.transparent.as_ref().map(|t| t.dst), namespace = %snap.namespace,
        policy_source = %snap.policy_source, "blocked by REGISTRY_ONLY: destination is not in the service registry"
    );
    Reply::new(status, blocked_reason(snap, host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn names(m: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = m.keys().map(HeaderName::as_str).collect();
        n.sort();
        n
    }

    #[test]
    fn a_reply_is_the_same_on_both_paths() {
        let mut out = Vec::new();
        Reply::head_timeout().closing(true).write(&mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 51\r\nconnection: close\r\n\r\nmeshentry: the request head did not arrive in time\n"
        );
        let reply = Reply::new(StatusCode::BAD_GATEWAY, "meshentry: x").flagged("UF");
        let mut out = Vec::new();
        reply.write(&mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 13\r\nx-meshentry-response-flags: UF\r\n\r\nmeshentry: x\n"
        );
        let resp = reply.closing(true).response();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        let headers: Vec<(&str, &str)> = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            headers,
            [
                ("content-type", "text/plain; charset=utf-8"),
                ("x-meshentry-response-flags", "UF"),
                ("connection", "close")
            ]
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed_and_the_rest_kept() {
        let mut m = map(&[
            ("host", "a.com"),
            ("connection", "keep-alive, X-Trace-Hop, close, content-length, Host"),
            ("content-length", "0"),
            ("keep-alive", "timeout=5"),
            ("x-trace-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("trailer", "x-sum"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("x-kept", "yes"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut m);
        // Connection may not remove the framing or Host; Trailer is end to end.
        assert_eq!(names(&m), ["accept", "content-length", "host", "trailer", "x-kept"]);
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_untouched() {
        let mut m = map(&[("host", "a.com"), ("x-a", "1"), ("x-a", "2")]);
        let before = m.clone();
        strip_hop_by_hop(&mut m);
        assert_eq!(m, before);
    }

    #[test]
    fn response_connection_keep_alive_is_removed() {
        let mut m = map(&[("content-length", "3"), ("connection", "keep-alive")]);
        strip_hop_by_hop(&mut m);
        assert_eq!(names(&m), ["content-length"]);
    }
}
