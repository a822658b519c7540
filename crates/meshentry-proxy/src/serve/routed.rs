//! Requests a VirtualService routes, on the general (hyper) path: rule selection (E4), fault
//! injection, redirects and direct responses, weighted destinations and subsets (E5),
//! rewrites, header edits, mirroring, retries and per-route timeouts.
//!
//! The HTTP/1.1 fast path carries rules that only pick a destination and hands every other
//! rule here, as it does requests for HTTP/2 upstreams; HTTP/2 clients always come here.
//!
//! Mirroring and retries need the request body more than once: a body already complete (no
//! body, or one whose length is known and at most [`MAX_REPLAY_BODY`]) is buffered; a longer
//! or streamed body gets a single try and is not mirrored.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Incoming};

use crate::base::flags::Flags;
use crate::model::cluster::Cluster;
use crate::model::vs::{
    HttpAction, HttpRoutes, HttpRule, MAX_REPLAY_BODY, Redirect, RedirectPort, RequestView, Rewrite, Target, retry_on,
    roll,
};
use crate::net::body::{BodyFault, ClientBody};
use crate::net::forward::{self, Original, Upstream, UpstreamError, UpstreamProtocol};
use crate::net::upstream::{PooledBody, RequestBody};
use crate::obs::telemetry::{Routed, note};
use crate::route::{self, Decision, split_host_port};
use crate::serve::ctx::{ConnCtx, Reply, ResponseBody, local};

/// A route timeout of `0s` means none; this bounds the wait anyway, far beyond any use.
const NO_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The 404 body when no rule matches (E4).
pub fn no_route(routes: &HttpRoutes, host: &str, port: u16) -> String {
    format!(
        "meshentry: no rule of VirtualService {} matches this request to {host}:{port}",
        routes.vs
    )
}

/// The 503 body when a rule's destination does not exist (E5).
pub fn no_cluster(routes: &HttpRoutes, reason: &str) -> String {
    format!(
        "meshentry: VirtualService {} routes to a missing destination: {reason}",
        routes.vs
    )
}

struct HyperView<'a> {
    parts: &'a Parts,
    authority: &'a [u8],
}

impl RequestView for HyperView<'_> {
    fn method(&self) -> &[u8] {
        self.parts.method.as_str().as_bytes()
    }

    fn path(&self) -> &[u8] {
        self.parts.uri.path_and_query().map_or(b"/", |p| p.as_str().as_bytes())
    }

    fn scheme(&self) -> &[u8] {
        self.parts.uri.scheme_str().unwrap_or("http").as_bytes()
    }

    fn authority(&self) -> &[u8] {
        self.authority
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.parts.headers.get(name).map(HeaderValue::as_bytes)
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Answers a request that `routes` applies to. `host_header` is the destination as the
/// request named it; `original` where ORIGINAL_DST clusters dial; `port` the listener port.
pub(crate) async fn handle(
    ctx: &Arc<ConnCtx>,
    routes: &HttpRoutes,
    req: Request<Incoming>,
    host_header: HeaderValue,
    original: &Original<'_>,
    port: u16,
) -> Response<ResponseBody> {
    let mut req = req;
    let upgrade = crate::serve::ctx::take_upgrade(&mut req);
    let (parts, body) = req.into_parts();
    let host_text = String::from_utf8_lossy(host_header.as_bytes()).into_owned();
    let name = split_host_port(&host_text, port).map_or(host_text.as_str(), |(h, _)| h);
    let view = HyperView {
        parts: &parts,
        authority: host_header.as_bytes(),
    };
    let Some(sel) = routes.select(&view) else {
        note(|o| o.fail(Flags::NR, "route_not_found"));
        return Reply::new(StatusCode::NOT_FOUND, no_route(routes, name, port))
            .flagged("NR")
            .response();
    };
    let rule = sel.rule;
    if !rule.name.is_empty() && ctx.shared.telemetry.access_log().is_some() {
        note(|o| o.route = Some(rule.name.clone()));
    }
    if let Some(fault) = &rule.fault {
        if let Some((delay, pct)) = fault.delay
            && roll(pct)
        {
            note(|o| o.flags |= Flags::DI);
            tokio::time::sleep(delay).await;
        }
        if let Some((code, pct)) = fault.abort
            && roll(pct)
        {
            note(|o| o.fail(Flags::FI, "fault_filter_abort"));
            let reason = format!(
                "meshentry: fault injected by VirtualService {} (rule {})",
                routes.vs, rule.name
            );
            return Reply::new(status(code), reason).flagged("FI").response();
        }
    }
    match &rule.action {
        HttpAction::Redirect(r) => {
            note(|o| o.fail(Flags::NONE, "direct_response"));
            return redirect(r, &parts, &host_text, port);
        }
        HttpAction::Direct { status: code, body } => {
            note(|o| o.fail(Flags::NONE, "direct_response"));
            let mut resp = Response::new(Either::Right(Full::new(body.clone())));
            *resp.status_mut() = status(*code);
            return resp;
        }
        HttpAction::Route { .. } => {}
    }
    let Some(dest) = rule.pick() else {
        note(|o| o.fail(Flags::NC, "cluster_not_found"));
        let reason = no_cluster(routes, "the rule has no destination");
        return Reply::new(StatusCode::SERVICE_UNAVAILABLE, reason)
            .flagged("NC")
            .response();
    };
    let snap = &ctx.snapshot;
    let decision = match route::to_target(snap, &dest.target) {
        Ok(d) => d,
        Err(reason) => {
            note(|o| o.fail(Flags::NC, "cluster_not_found"));
            return Reply::new(StatusCode::SERVICE_UNAVAILABLE, no_cluster(routes, reason))
                .flagged("NC")
                .response();
        }
    };
    note(|o| o.routed = Routed::of(&decision));
    let Decision::Cluster { cluster, .. } = &decision else {
        note(|o| o.fail(Flags::NC, "cluster_not_found"));
        return Reply::new(StatusCode::SERVICE_UNAVAILABLE, no_cluster(routes, "not a cluster"))
            .flagged("NC")
            .response();
    };
    let cluster: &Cluster = cluster;

    let mut parts = parts;
    let mut host_header = host_header;
    if let Some(rw) = &rule.rewrite {
        rewrite(rw, sel.prefix_len, &mut parts, &mut host_header);
    }
    rule.headers.request.apply(&mut parts.headers);
    dest.headers.request.apply(&mut parts.headers);

    let version = parts.version;
    // A switch of protocols is relayed once, on a connection of its own: no retries, no
    // mirrors, no route timeout (the upstream has --response-timeout to answer).
    if let Some((protocol, client)) = upgrade {
        let (req, watch) = crate::serve::ctx::upgrade_request(parts, body, protocol, host_header, &ctx.shared);
        let upgrade = crate::serve::tunnel::Upgrade {
            req,
            client,
            watch,
            version,
            routed: Routed::of(&decision),
            cluster: Some(cluster),
            original,
            host: name,
            port,
        };
        return crate::serve::tunnel::upgrade(ctx, upgrade).await;
    }

    let wants_replay = (rule.retry.attempts > 0 && !rule.simple) || !rule.mirrors.is_empty();
    let (body, watch) = ClientBody::new(body, &ctx.shared);
    let mut body = Payload::Stream(Some(body));
    if wants_replay {
        body = match buffer(body).await {
            Ok(b) => b,
            Err(fault) => return crate::serve::ctx::body_failure(ctx, fault, version),
        };
    }
    if let Payload::Buffered(bytes) = &body {
        for m in &*rule.mirrors {
            if roll(m.percent) {
                mirror(ctx, &m.target, &parts, &host_header, bytes.clone());
            }
        }
    }

    let protocol = UpstreamProtocol::of(&decision);
    let route_timeout = match rule.timeout {
        Some(Duration::ZERO) => NO_TIMEOUT,
        Some(t) => t,
        None => ctx.shared.config.response_timeout,
    };
    let per_try = rule
        .retry
        .per_try_timeout
        .map_or(route_timeout, |t| t.min(route_timeout));
    let tries = match (&body, rule.simple) {
        // The rule asks only for what failover already does (each host once on connect
        // failures): one round.
        (_, true) | (Payload::Stream(_), _) => 1,
        (Payload::Buffered(_), false) => 1 + rule.retry.attempts,
    };
    let send = async {
        let mut n = 0;
        loop {
            n += 1;
            let Some(req) = build(&parts, &mut body, &host_header, protocol, &ctx.shared.via) else {
                return Err(Shaping);
            };
            let to = Upstream {
                shared: &ctx.shared,
                live: &ctx.snapshot,
                cluster: Some(cluster),
                original: *original,
            };
            let result = forward::send_request_within(&to, req, protocol, per_try).await;
            let retry_wanted = match &result {
                Ok((resp, _)) => rule.retry.on_status(resp.status().as_u16()),
                Err(e) => retriable(rule, e),
            };
            if n < tries && retry_wanted {
                ctx.shared.stats.upstream_retries.fetch_add(1, Ordering::Relaxed);
            } else {
                // Envoy's URX: retried, and the last try failed as the first did.
                if tries > 1 && n == tries && retry_wanted {
                    note(|o| o.flags |= Flags::URX);
                }
                return Ok(result);
            }
            // Envoy's default back-off: 25 ms base, doubling, fully jittered.
            let cap = 25u64 << (n - 1).min(4);
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=cap))).await;
        }
    };
    let result = match tokio::time::timeout(route_timeout, send).await {
        Ok(Ok(r)) => r,
        Ok(Err(Shaping)) => {
            note(|o| o.fail(Flags::DPE, "invalid_authority"));
            ctx.shared.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return local(
                StatusCode::BAD_REQUEST,
                "meshentry: the request's authority is not valid",
            );
        }
        Err(_) => Err(UpstreamError::Timeout(route_timeout)),
    };
    match result {
        Ok((resp, _)) => {
            let (mut parts, body) = resp.into_parts();
            crate::serve::ctx::strip_hop_by_hop(&mut parts.headers);
            rule.headers.response.apply(&mut parts.headers);
            dest.headers.response.apply(&mut parts.headers);
            Response::from_parts(parts, Either::Left(body))
        }
        Err(e) => match watch.fault() {
            Some(fault) => crate::serve::ctx::body_failure(ctx, fault, version),
            None => crate::serve::ctx::upstream_failure(ctx, name, port, decision.cluster_name(), &e),
        },
    }
}

/// The request could not be shaped for its upstream (an invalid authority for HTTP/2).
struct Shaping;

/// A request body that may be sent once (streamed) or many times (buffered).
enum Payload {
    Stream(Option<ClientBody>),
    Buffered(Bytes),
}

/// Buffers a body that is complete and small enough to send again; leaves others streaming.
async fn buffer(body: Payload) -> Result<Payload, BodyFault> {
    let Payload::Stream(Some(incoming)) = body else {
        return Ok(body);
    };
    let small = incoming.is_end_stream() || incoming.size_hint().exact().is_some_and(|n| n <= MAX_REPLAY_BODY);
    if !small {
        return Ok(Payload::Stream(Some(incoming)));
    }
    match incoming.collect().await {
        Ok(c) => Ok(Payload::Buffered(c.to_bytes())),
        Err(e) => Err(e.fault),
    }
}

/// The next try's request, shaped for `protocol` and marked with this proxy's `via`; `None`
/// when it cannot be (or a streamed body was already sent).
fn build(
    parts: &Parts,
    body: &mut Payload,
    host_header: &HeaderValue,
    protocol: UpstreamProtocol,
    via: &crate::base::loop_guard::Via,
) -> Option<Request<RequestBody>> {
    let body: RequestBody = match body {
        Payload::Stream(b) => Either::Left(b.take()?),
        Payload::Buffered(bytes) => Either::Right(Full::new(bytes.clone())),
    };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    match protocol {
        UpstreamProtocol::Http1 => Some(crate::serve::ctx::to_upstream(req, host_header.clone(), via)),
        UpstreamProtocol::H2 => crate::serve::h2::to_upstream(req, host_header, via),
    }
}

/// Envoy's `retryOn` for a request that failed without a response.
fn retriable(rule: &HttpRule, e: &UpstreamError) -> bool {
    use retry_on::*;
    let on = rule.retry.on;
    match e {
        UpstreamError::Connect { .. } | UpstreamError::Tls(_) => on & (CONNECT_FAILURE | FIVE_XX | GATEWAY_ERROR) != 0,
        UpstreamError::Reset(_) => on & (RESET | FIVE_XX | GATEWAY_ERROR | REFUSED_STREAM) != 0,
        // Envoy retries a protocol error as a reset.
        UpstreamError::Protocol(_) => on & (RESET | FIVE_XX | GATEWAY_ERROR) != 0,
        UpstreamError::Timeout(_) => on & (FIVE_XX | GATEWAY_ERROR) != 0,
        UpstreamError::NoHost(_) | UpstreamError::Dns(_) | UpstreamError::Loop(_) => false,
    }
}

/// `rewrite`: the matched URI prefix (or the regex matches) replaced, the authority replaced.
fn rewrite(rw: &Rewrite, prefix_len: usize, parts: &mut Parts, host_header: &mut HeaderValue) {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let new_pq = if let Some((re, with)) = &rw.uri_regex {
        let (path, query) = pq.split_once('?').map_or((pq, None), |(p, q)| (p, Some(q)));
        let replaced = re.replace_all(path.as_bytes(), with.as_bytes());
        let mut out = String::from_utf8_lossy(&replaced).into_owned();
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    } else {
        rw.uri.as_ref().map(|prefix| {
            let rest = pq.get(prefix_len.min(pq.len())..).unwrap_or("");
            format!("{prefix}{rest}")
        })
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    if let Some(pq) = new_pq
        && let Ok(pq) = pq.parse()
    {
        uri.path_and_query = Some(pq);
    }
    if let Some(authority) = &rw.authority {
        if uri.authority.is_some()
            && let Ok(a) = authority.to_str().unwrap_or("").parse()
        {
            uri.authority = Some(a);
        }
        parts.headers.insert(header::HOST, authority.clone());
        *host_header = authority.clone();
    }
    parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
}

/// `redirect`: a response with `Location` built from the request and the rule.
fn redirect(r: &Redirect, parts: &Parts, host: &str, port: u16) -> Response<ResponseBody> {
    let scheme = r.scheme.as_deref().unwrap_or(parts.uri.scheme_str().unwrap_or("http"));
    let mut authority = match &r.authority {
        Some(a) => a.to_string(),
        None => match r.port {
            RedirectPort::Unchanged => host.to_string(),
            _ => split_host_port(host, port).map_or(host, |(h, _)| h).to_string(),
        },
    };
    match r.port {
        RedirectPort::Fixed(p) => authority = format!("{authority}:{p}"),
        RedirectPort::FromRequest => authority = format!("{authority}:{port}"),
        RedirectPort::Unchanged => {}
    }
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let path = match &r.uri {
        // Envoy keeps the request's query unless the new path brings its own.
        Some(uri) if !uri.contains('?') => match pq.split_once('?') {
            Some((_, q)) => format!("{uri}?{q}"),
            None => uri.to_string(),
        },
        Some(uri) => uri.to_string(),
        None => pq.to_string(),
    };
    let location = format!("{scheme}://{authority}{path}");
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    *resp.status_mut() = status(r.status);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Sends a copy of the request to `target` and forgets it (Envoy's shadowing: the Host gets
/// `-shadow`, the response is dropped, failures are only logged).
fn mirror(ctx: &Arc<ConnCtx>, target: &Target, parts: &Parts, host_header: &HeaderValue, body: Bytes) {
    let Target::Cluster { cluster, port, .. } = target else {
        return;
    };
    let snap = &ctx.snapshot;
    let protocol = match route::to_target(snap, target) {
        Ok(d) => UpstreamProtocol::of(&d),
        Err(_) => return,
    };
    let host = host_header.to_str().unwrap_or("");
    let shadow = match split_host_port(host, 0) {
        Some((h, p)) if p != 0 => format!("{h}-shadow:{p}"),
        _ => format!("{host}-shadow"),
    };
    let Ok(shadow) = HeaderValue::from_str(&shadow) else {
        return;
    };
    let mut copy = Payload::Buffered(body);
    let mut shaped_parts = Request::new(());
    *shaped_parts.method_mut() = parts.method.clone();
    *shaped_parts.uri_mut() = parts.uri.clone();
    *shaped_parts.version_mut() = parts.version;
    *shaped_parts.headers_mut() = parts.headers.clone();
    shaped_parts.headers_mut().insert(header::HOST, shadow.clone());
    let (p, ()) = shaped_parts.into_parts();
    let Some(req) = build(&p, &mut copy, &shadow, protocol, &ctx.shared.via) else {
        return;
    };
    let shared = ctx.shared.clone();
    let live = ctx.snapshot.clone();
    let cluster = cluster.clone();
    let port = u16::try_from(*port).unwrap_or(0);
    tokio::spawn(async move {
        let to = Upstream {
            shared: &shared,
            live: &live,
            cluster: Some(&cluster),
            original: Original {
                host: &cluster.host,
                port,
            },
        };
        match forward::send_request(&to, req, protocol).await {
            // Read to the end so the connection can be pooled again.
            Ok((resp, _)) => drain(resp).await,
            Err(e) => tracing::debug!(cluster = %cluster.name, error = %e, "mirrored request failed"),
        }
    });
}

async fn drain(resp: Response<PooledBody>) {
    let _ = resp.into_body().collect().await;
}
