//! What happened to each request and connection, gathered on the data path and handed to the
//! Istio metrics ([`crate::obs::metrics`]) and the access log ([`crate::obs::access_log`]) when it ends.
//!
//! An HTTP request's story is written by many hands (routing, VirtualService rules, failover,
//! the upstream exchange), so each request runs inside a task-local [`Outcome`] that any of
//! them can [`note`] into without new parameters or allocations; the request's entry point
//! takes it back when the handler returns. On the hyper path the response body is wrapped in
//! [`Metered`], which finishes the record when the last byte is sent (or the client goes away);
//! the fast path finishes it itself. TCP connections use a [`TcpConn`] that records when it is
//! dropped, so every early return is counted too.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Buf;
use http::header::{HeaderMap, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::{Body, Frame, SizeHint};

use crate::base::config::ProxyConfig;
use crate::base::flags::Flags;
use crate::model::cluster::{Cluster, HostAddr};
use crate::obs::access_log::{AccessLog, Entry};
use crate::obs::metrics::{DestId, Metrics, RequestKey, RequestProtocol, Source, TcpKey};
use crate::route::Decision;
use crate::rt::shared::Shared;
use crate::serve::http::ConnCtx;

/// A proxy's metrics and (once `--access-log` opened it) access log.
pub struct Telemetry {
    pub metrics: Metrics,
    access_log: OnceLock<AccessLog>,
}

impl Telemetry {
    pub fn new(config: &ProxyConfig) -> Telemetry {
        Telemetry {
            metrics: Metrics::new(Source::of(config)),
            access_log: OnceLock::new(),
        }
    }

    /// Turns the access log on; `Err` gives it back when one is already set.
    pub fn set_access_log(&self, log: AccessLog) -> Result<(), AccessLog> {
        self.access_log.set(log)
    }

    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.get()
    }

    /// Writes out buffered access log lines (at shutdown).
    pub fn flush(&self) {
        if let Some(log) = self.access_log.get() {
            log.flush();
        }
    }
}

pub use crate::model::dest::destination_of;

// === Where traffic went ===

/// The cluster a request or connection was routed to, as metrics and logs name it.
#[derive(Clone, Default)]
pub enum Routed {
    /// Not routed (refused first, or no virtual host).
    #[default]
    Unknown,
    Passthrough,
    BlackHole,
    Cluster(Arc<Cluster>),
}

impl Routed {
    pub fn of(decision: &Decision<'_>) -> Routed {
        match decision {
            Decision::Cluster { cluster, .. } => Routed::Cluster((*cluster).clone()),
            Decision::Passthrough => Routed::Passthrough,
            Decision::Blocked => Routed::BlackHole,
        }
    }

    pub fn dest(&self) -> DestId {
        match self {
            Routed::Unknown => DestId::UNKNOWN,
            Routed::Passthrough => DestId::PASSTHROUGH,
            Routed::BlackHole => DestId::BLACKHOLE,
            Routed::Cluster(c) => c.dest,
        }
    }

    /// `%UPSTREAM_CLUSTER%`.
    pub fn cluster_name(&self) -> &str {
        match self {
            Routed::Unknown => "",
            Routed::Passthrough => "PassthroughCluster",
            Routed::BlackHole => "BlackHoleCluster",
            Routed::Cluster(c) => &c.name,
        }
    }

    /// `%ROUTE_NAME%` when no VirtualService rule named the route: Istio's names for its
    /// built-in routes.
    fn default_route(&self) -> &'static str {
        match self {
            Routed::Unknown => "",
            Routed::Passthrough => "allow_any",
            Routed::BlackHole => "block_all",
            Routed::Cluster(_) => "default",
        }
    }
}

// === HTTP requests ===

/// What became of one request.
#[derive(Default)]
pub struct Outcome {
    pub routed: Routed,
    pub flags: Flags,
    /// The status the client got (the fast path sets it; the hyper path reads the response).
    pub code: u16,
    /// `%RESPONSE_CODE_DETAILS%`; empty means `via_upstream` when an upstream answered.
    pub details: &'static str,
    /// The endpoint the request went to (the last one tried). Noted only when the access log
    /// is on, the one reader of it and of the upstream time derived from it.
    pub upstream: Option<HostAddr>,
    /// Why the TLS this proxy originated failed.
    pub transport_failure: Option<String>,
    /// The VirtualService rule's name, when one routed the request and the log is on.
    pub route: Option<Box<str>>,
    /// A CONNECT that became a tunnel: counted as a TCP connection, not a request.
    pub tunnel: bool,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// How long the upstream took to send its response head.
    pub upstream_time: Option<Duration>,
    /// When the upstream's response head arrived (the fast path's way to say the above).
    pub head_at: Option<Instant>,
    /// The request is answered by the proxy itself (no upstream response).
    pub local: bool,
}

impl Outcome {
    /// A refusal or failure: the flags, and details unless already set.
    pub fn fail(&mut self, flags: Flags, details: &'static str) {
        self.flags |= flags;
        self.local = true;
        if self.details.is_empty() {
            self.details = details;
        }
    }
}

// The outcomes of the requests a worker thread is handling live in a per-thread slab; the
// task-local holds only where this request's is. tokio swaps a task-local's value in and out
// of its slot on every poll, so a small value there instead of the whole `Outcome` (some 200
// bytes) saves several hundred instructions per request (callgrind), and the slab's slots are
// reused, so no request allocates one.
tokio::task_local! {
    static CURRENT: Slot;
}

/// Where a request's outcome is in its thread's slab; `token` tells a slot reused by another
/// request (or a task that moved to another thread's slab: only current-thread runtimes keep a
/// task on one thread) from this request's.
#[derive(Clone, Copy)]
struct Slot {
    index: usize,
    token: u64,
}

#[derive(Default)]
struct Slab {
    outcomes: Vec<(u64, Outcome)>,
    free: Vec<usize>,
    next_token: u64,
}

thread_local! {
    static SLAB: RefCell<Slab> = RefCell::new(Slab::default());
}

impl Slab {
    fn take(&mut self) -> Slot {
        self.next_token += 1;
        let token = self.next_token;
        let index = match self.free.pop() {
            Some(i) => {
                self.outcomes[i].0 = token;
                i
            }
            None => {
                self.outcomes.push((token, Outcome::default()));
                self.outcomes.len() - 1
            }
        };
        Slot { index, token }
    }

    fn get(&mut self, slot: Slot) -> Option<&mut Outcome> {
        match self.outcomes.get_mut(slot.index) {
            Some((token, outcome)) if *token == slot.token => Some(outcome),
            _ => None,
        }
    }

    /// Resets the outcome and frees the slot.
    fn clear(&mut self, slot: Slot) {
        if let Some(outcome) = self.get(slot) {
            *outcome = Outcome::default();
            self.outcomes[slot.index].0 = 0;
            self.free.push(slot.index);
        }
    }

    /// Takes the outcome out and frees the slot.
    fn release(&mut self, slot: Slot) -> Outcome {
        match self.get(slot).map(std::mem::take) {
            Some(outcome) => {
                self.outcomes[slot.index].0 = 0;
                self.free.push(slot.index);
                outcome
            }
            None => Outcome::default(),
        }
    }
}

/// Frees the slot when the request is done, or dropped half-way (a client that went away).
struct Held(Slot);

impl Drop for Held {
    fn drop(&mut self) {
        let _ = SLAB.try_with(|slab| {
            if let Ok(mut slab) = slab.try_borrow_mut() {
                slab.clear(self.0);
            }
        });
    }
}

/// Adds to the outcome of the request being handled; does nothing outside one (mirrors, TCP).
pub fn note(f: impl FnOnce(&mut Outcome)) {
    let _ = CURRENT.try_with(|slot| {
        let _ = SLAB.try_with(|slab| {
            if let Ok(mut slab) = slab.try_borrow_mut()
                && let Some(outcome) = slab.get(*slot)
            {
                f(outcome);
            }
        });
    });
}

/// Runs `fut` as one request, returning its output and its outcome.
pub async fn scoped<F: Future>(fut: F) -> (F::Output, Outcome) {
    let Ok(slot) = SLAB.try_with(|slab| slab.borrow_mut().take()) else {
        return (fut.await, Outcome::default());
    };
    let held = Held(slot);
    let out = CURRENT.scope(slot, fut).await;
    let outcome = SLAB
        .try_with(|slab| slab.borrow_mut().release(held.0))
        .unwrap_or_default();
    std::mem::forget(held);
    (out, outcome)
}

/// A request whose handler is running: if the handler is dropped before it answers (hyper
/// drops it when the client goes away), the request is still counted and logged.
struct Answering {
    slot: Slot,
    rec: Option<(HttpStart, Arc<ConnCtx>)>,
}

impl Drop for Answering {
    fn drop(&mut self) {
        let outcome = SLAB
            .try_with(|slab| {
                slab.try_borrow_mut()
                    .map(|mut s| s.release(self.slot))
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        if let Some((start, ctx)) = self.rec.take() {
            abandoned(start, ctx, outcome);
        }
    }
}

/// Envoy logs a request whose client left before the response started with response code 0
/// and DC, whatever the upstream was doing: what was learnt so far (the cluster, the host
/// being tried) stays in the record.
fn abandoned(start: HttpStart, ctx: Arc<ConnCtx>, mut outcome: Outcome) {
    outcome.bytes_received = start.request_bytes;
    let rec = HttpRecord {
        ctx,
        start,
        grpc_status: None,
        outcome,
    };
    rec.finish(false);
}

impl HttpStart {
    /// Runs `fut`, the request's handler, as this request (as [`scoped`] does) and returns its
    /// response, counted and logged when the body ends (see [`HttpStart::respond`]). If `fut` is
    /// dropped before it answers, the request is recorded with response code 0 and DC (see
    /// [`abandoned`]).
    pub async fn run<F, B>(self, ctx: &Arc<ConnCtx>, fut: F) -> Response<Metered<B>>
    where
        F: Future<Output = Response<B>>,
        B: Body,
    {
        let Ok(slot) = SLAB.try_with(|slab| slab.borrow_mut().take()) else {
            return self.respond(ctx, fut.await, Outcome::default());
        };
        let mut answering = Answering {
            slot,
            rec: Some((self, ctx.clone())),
        };
        let resp = CURRENT.scope(slot, fut).await;
        let outcome = SLAB
            .try_with(|slab| slab.borrow_mut().release(slot))
            .unwrap_or_default();
        match answering.rec.take() {
            Some((start, _)) => start.respond(ctx, resp, outcome),
            // Not reached: `rec` is taken only here and on drop.
            None => resp.map(|inner| Metered { inner, rec: None }),
        }
    }
}

/// Runs `fut` as one request like [`scoped`], but leaves the outcome in its slot, to be read in
/// place through [`Recorded::with`]: the fast path's way, which saves copying the outcome (some
/// 200 bytes) out of the slab and on through its callers.
pub async fn scoped_in_place<F: Future>(fut: F) -> (F::Output, Recorded) {
    let Ok(slot) = SLAB.try_with(|slab| slab.borrow_mut().take()) else {
        return (fut.await, Recorded(None));
    };
    let held = Held(slot);
    let out = CURRENT.scope(slot, fut).await;
    (out, Recorded(Some(held)))
}

/// A finished request's outcome, still in its slab slot; the slot is freed when this is dropped.
pub struct Recorded(Option<Held>);

impl Recorded {
    /// Runs `f` on the outcome (a default one if the slab was unavailable). The slab is
    /// borrowed meanwhile: `f` must not [`note`] (it would do nothing).
    pub fn with(&self, f: impl FnOnce(&mut Outcome)) {
        let mut f = Some(f);
        if let Some(held) = &self.0 {
            let _ = SLAB.try_with(|slab| {
                if let Ok(mut slab) = slab.try_borrow_mut()
                    && let Some(outcome) = slab.get(held.0)
                    && let Some(f) = f.take()
                {
                    f(outcome);
                }
            });
        }
        if let Some(f) = f {
            f(&mut Outcome::default());
        }
    }
}

/// The request line and headers the access log prints, borrowed from wherever the request is.
#[derive(Default)]
pub struct RequestLine<'a> {
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub protocol: &'a str,
    pub authority: &'a [u8],
    pub user_agent: &'a [u8],
    pub forwarded_for: &'a [u8],
    pub request_id: &'a [u8],
}

/// Counts one finished request and logs it.
pub fn finish_request(
    ctx: &ConnCtx,
    outcome: &Outcome,
    protocol: RequestProtocol,
    grpc_status: Option<u16>,
    started: Instant,
    start_time: Option<SystemTime>,
    line: &RequestLine<'_>,
) {
    let duration = started.elapsed();
    let telemetry = &ctx.shared.telemetry;
    telemetry.metrics.request(
        RequestKey {
            dest: outcome.routed.dest(),
            protocol,
            code: outcome.code,
            grpc_status,
            flags: outcome.flags,
        },
        duration,
        outcome.bytes_received,
        outcome.bytes_sent,
    );
    let Some(log) = telemetry.access_log() else {
        return;
    };
    let details = match outcome.details {
        "" if outcome.upstream_time.is_some() => "via_upstream",
        d => d,
    };
    let route = match &outcome.route {
        Some(r) => r,
        None => outcome.routed.default_route(),
    };
    log.log(&Entry {
        start: start_time,
        method: line.method,
        path: line.path,
        protocol: line.protocol,
        code: outcome.code,
        flags: outcome.flags,
        details,
        termination: "",
        transport_failure: outcome.transport_failure.as_deref().unwrap_or(""),
        bytes_received: outcome.bytes_received,
        bytes_sent: outcome.bytes_sent,
        duration,
        upstream_time: outcome.upstream_time,
        forwarded_for: line.forwarded_for,
        user_agent: line.user_agent,
        request_id: line.request_id,
        authority: line.authority,
        upstream_host: outcome.upstream.as_ref(),
        cluster: outcome.routed.cluster_name(),
        upstream_local: None,
        downstream_local: ctx.transparent.as_ref().map(|t| t.dst),
        downstream_remote: Some(ctx.peer),
        server_name: "",
        route,
    });
}

/// `HTTP/1.1` and the like, as `%PROTOCOL%` prints the request's version.
pub fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// What the hyper path keeps of a request until its response ends: what the log prints
/// (only when the log is on) and when it started.
pub struct HttpStart {
    started: Instant,
    start_time: Option<SystemTime>,
    grpc: bool,
    request_bytes: u64,
    log: Option<LogFields>,
}

struct LogFields {
    method: Method,
    uri: Uri,
    version: Version,
    host: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    forwarded_for: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
}

impl HttpStart {
    pub fn new<B: Body>(req: &Request<B>, ctx: &ConnCtx, grpc: bool) -> HttpStart {
        let logging = ctx.shared.telemetry.access_log().is_some();
        let h = req.headers();
        let get = |name: &str| h.get(name).cloned();
        HttpStart {
            started: Instant::now(),
            start_time: logging.then(SystemTime::now),
            grpc,
            // What the client declared; a chunked request body counts as 0.
            request_bytes: req.body().size_hint().exact().unwrap_or(0),
            log: logging.then(|| LogFields {
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                host: get("host"),
                user_agent: get("user-agent"),
                forwarded_for: get("x-forwarded-for"),
                request_id: get("x-request-id"),
            }),
        }
    }

    /// The response for the client, counted and logged when its body ends.
    pub fn respond<B: Body>(self, ctx: &Arc<ConnCtx>, resp: Response<B>, mut outcome: Outcome) -> Response<Metered<B>> {
        if outcome.tunnel {
            return resp.map(|inner| Metered { inner, rec: None });
        }
        outcome.code = resp.status().as_u16();
        outcome.bytes_received = self.request_bytes;
        if !outcome.local && outcome.upstream.is_some() {
            outcome.upstream_time = Some(self.started.elapsed());
        }
        let grpc_status = if self.grpc { grpc_status(resp.headers()) } else { None };
        let rec = HttpRecord {
            ctx: ctx.clone(),
            start: self,
            grpc_status,
            outcome,
        };
        resp.map(|inner| Metered { inner, rec: Some(rec) })
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    std::str::from_utf8(headers.get("grpc-status")?.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()
}

struct HttpRecord {
    ctx: Arc<ConnCtx>,
    start: HttpStart,
    grpc_status: Option<u16>,
    outcome: Outcome,
}

impl HttpRecord {
    fn finish(mut self, complete: bool) {
        if !complete {
            self.outcome.fail(Flags::DC, "downstream_remote_disconnect");
        }
        let empty = HeaderValue::from_static("");
        let line = self.start.log.as_ref().map(|l| {
            let authority = match l.uri.authority() {
                Some(a) => a.as_str().as_bytes(),
                None => l.host.as_ref().map_or(&b""[..], HeaderValue::as_bytes),
            };
            let path = match l.uri.path_and_query() {
                Some(p) if l.method != Method::CONNECT => p.as_str().as_bytes(),
                _ => b"",
            };
            RequestLine {
                method: l.method.as_str().as_bytes(),
                path,
                protocol: version_name(l.version),
                authority,
                user_agent: l.user_agent.as_ref().unwrap_or(&empty).as_bytes(),
                forwarded_for: l.forwarded_for.as_ref().unwrap_or(&empty).as_bytes(),
                request_id: l.request_id.as_ref().unwrap_or(&empty).as_bytes(),
            }
        });
        let protocol = if self.start.grpc {
            RequestProtocol::Grpc
        } else {
            RequestProtocol::Http
        };
        finish_request(
            &self.ctx,
            &self.outcome,
            protocol,
            self.grpc_status,
            self.start.started,
            self.start.start_time,
            &line.unwrap_or_default(),
        );
    }
}

/// A response body that counts its bytes, reads gRPC's status from its trailers, and
/// finishes its request's record when it ends or is dropped.
pub struct Metered<B: Body> {
    inner: B,
    rec: Option<HttpRecord>,
}

impl<B> Body for Metered<B>
where
    B: Body + Unpin,
    B::Data: Buf,
    B::Error: AsRef<dyn std::error::Error + Send + Sync>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(rec) = &mut this.rec {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        rec.outcome.bytes_sent += data.remaining() as u64;
                    } else if let Some(trailers) = frame.trailers_ref()
                        && rec.start.grpc
                        && let Some(s) = grpc_status(trailers)
                    {
                        rec.grpc_status = Some(s);
                    }
                }
                Poll::Ready(Some(Err(e))) if e.as_ref().is::<crate::net::body::StreamIdle>() => {
                    rec.outcome.fail(Flags::SI, "stream_idle_timeout");
                    let stats = &rec.ctx.shared.stats;
                    stats
                        .downstream_rq_idle_timeout
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Poll::Ready(Some(Err(_))) => rec.outcome.fail(Flags::UC, "upstream_reset_after_response_started"),
                Poll::Ready(None) | Poll::Pending => {}
            }
        }
        let ended = match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if ended && let Some(rec) = this.rec.take() {
            rec.finish(true);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for Metered<B> {
    fn drop(&mut self) {
        if let Some(rec) = self.rec.take() {
            // hyper drops a body it never had to poll (an empty one) once the response is
            // out; anything else dropped before its end means the client went away.
            rec.finish(self.inner.is_end_stream());
        }
    }
}

// === TCP connections ===

/// One TCP connection (relay, tunnel, passthrough, gateway server) from its routing decision
/// to its end: counted as opened when made, as closed (with its bytes and flags) and logged
/// when dropped.
pub struct TcpConn {
    shared: Arc<Shared>,
    routed: Routed,
    started: Instant,
    start_time: Option<SystemTime>,
    pub flags: Flags,
    pub details: &'static str,
    /// From the client.
    pub received: u64,
    /// To the client.
    pub sent: u64,
    pub upstream: Option<HostAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub transport_failure: Option<String>,
    downstream_local: Option<SocketAddr>,
    downstream_remote: SocketAddr,
    server_name: Option<Box<str>>,
}

impl TcpConn {
    /// A connection from `peer` to `local` (the original destination when captured), routed
    /// to `routed`; `sni` is the ClientHello's server name.
    pub fn open(
        shared: &Arc<Shared>,
        routed: Routed,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        sni: Option<&str>,
    ) -> TcpConn {
        let logging = shared.telemetry.access_log().is_some();
        shared.telemetry.metrics.tcp_opened(TcpKey {
            dest: routed.dest(),
            flags: Flags::NONE,
        });
        TcpConn {
            shared: shared.clone(),
            routed,
            started: Instant::now(),
            start_time: logging.then(SystemTime::now),
            flags: Flags::NONE,
            details: "",
            received: 0,
            sent: 0,
            upstream: None,
            upstream_local: None,
            transport_failure: None,
            downstream_local: local,
            downstream_remote: peer,
            server_name: sni.filter(|_| logging).map(Box::from),
        }
    }

    /// Connected to `addr` over `stream`.
    pub fn connected(&mut self, addr: &HostAddr, stream: &crate::net::upstream::Stream) {
        if self.start_time.is_some() {
            self.upstream = Some(addr.clone());
            self.upstream_local = stream.local_addr();
        }
    }

    /// Could not connect upstream.
    pub fn failed(&mut self, e: &crate::net::forward::UpstreamError) {
        self.flags |= e.flags();
        self.details = e.details();
        if let crate::net::forward::UpstreamError::Tls(cause) = e {
            self.transport_failure = Some(cause.clone());
        }
    }

    /// Refused by policy or routing (REGISTRY_ONLY, no route, SNI mismatch).
    pub fn refused(&mut self, flags: Flags, details: &'static str) {
        self.flags |= flags;
        self.details = details;
    }

    /// The ClientHello's server name, learnt after the connection was routed (tunnels).
    pub fn set_server_name(&mut self, sni: &str) {
        if self.start_time.is_some() {
            self.server_name = Some(Box::from(sni));
        }
    }

    /// The relay's byte counts: from the client, to the client.
    pub fn relayed(&mut self, (received, sent): (u64, u64)) {
        self.received += received;
        self.sent += sent;
    }
}

impl Drop for TcpConn {
    fn drop(&mut self) {
        let telemetry = &self.shared.telemetry;
        telemetry.metrics.tcp_closed(
            TcpKey {
                dest: self.routed.dest(),
                flags: self.flags,
            },
            self.received,
            self.sent,
        );
        let Some(log) = telemetry.access_log() else {
            return;
        };
        log.log(&Entry {
            start: self.start_time,
            flags: self.flags,
            details: self.details,
            transport_failure: self.transport_failure.as_deref().unwrap_or(""),
            bytes_received: self.received,
            bytes_sent: self.sent,
            duration: self.started.elapsed(),
            upstream_host: self.upstream.as_ref(),
            cluster: self.routed.cluster_name(),
            upstream_local: self.upstream_local,
            downstream_local: self.downstream_local,
            downstream_remote: Some(self.downstream_remote),
            server_name: self.server_name.as_deref().unwrap_or(""),
            ..Entry::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests interleaved on one thread each get their own outcome, and a request dropped
    /// half-way frees its slot for the next.
    #[tokio::test]
    async fn interleaved_requests_keep_their_own_outcomes() {
        let (tx_a, rx_a) = tokio::sync::oneshot::channel::<()>();
        let (tx_b, rx_b) = tokio::sync::oneshot::channel::<()>();
        let a = scoped(async {
            note(|o| o.code = 201);
            let _ = rx_a.await;
            note(|o| o.bytes_sent = 10);
        });
        let b = scoped(async {
            note(|o| o.code = 404);
            let _ = rx_b.await;
            note(|o| o.bytes_sent = 20);
        });
        let both = async {
            tokio::task::yield_now().await;
            let _ = tx_b.send(());
            let _ = tx_a.send(());
        };
        let (((), a), ((), b), ()) = tokio::join!(a, b, both);
        assert_eq!((a.code, a.bytes_sent), (201, 10));
        assert_eq!((b.code, b.bytes_sent), (404, 20));

        // Dropped before it finishes: its slot is freed, and a later request starts afresh.
        let (_never_tx, never) = tokio::sync::oneshot::channel::<()>();
        let dropped = scoped(async {
            note(|o| o.code = 500);
            let _ = never.await;
        });
        let _ = tokio::time::timeout(std::time::Duration::from_millis(10), dropped).await;
        let ((), c) = scoped(async {}).await;
        assert_eq!(c.code, 0, "a reused slot starts from a fresh outcome");
        let free = SLAB.with(|s| s.borrow().free.len());
        let used = SLAB.with(|s| s.borrow().outcomes.len());
        assert_eq!(free, used, "every slot is free again");

        // Outside a request, note does nothing.
        note(|o| o.code = 999);
    }

    /// The fast path's variant reads the outcome where it is, and frees the slot when done.
    #[tokio::test]
    async fn scoped_in_place_reads_the_outcome_in_its_slot() {
        let (out, recorded) = scoped_in_place(async {
            note(|o| o.code = 204);
            note(|o| o.bytes_sent += 7);
            5
        })
        .await;
        assert_eq!(out, 5);
        let mut seen = (0, 0);
        recorded.with(|o| seen = (o.code, o.bytes_sent));
        assert_eq!(seen, (204, 7));
        drop(recorded);
        let ((), next) = scoped(async {}).await;
        assert_eq!(next.code, 0, "the slot was reset before its reuse");
        let free = SLAB.with(|s| s.borrow().free.len());
        let used = SLAB.with(|s| s.borrow().outcomes.len());
        assert_eq!(free, used, "every slot is free again");
    }
}
