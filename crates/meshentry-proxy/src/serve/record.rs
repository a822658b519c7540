//! The records of requests and connections as they are served: an HTTP request from its
//! head to the end of its response body ([`HttpStart`], [`Metered`]), including one whose
//! client left first, and a TCP connection until it is dropped ([`TcpConn`]). They read the
//! request's [`Outcome`] that the data path noted (`crate::obs::telemetry`) and hand the
//! finished record to the metrics and the access log.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Buf;
use http::header::{HeaderMap, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::{Body, Frame, SizeHint};

use crate::base::flags::Flags;
use crate::model::cluster::HostAddr;
use crate::obs::access_log::Entry;
use crate::obs::metrics::{RequestKey, RequestProtocol, TcpKey};
use crate::obs::telemetry::{self, Outcome, RequestLine, Routed, version_name};
use crate::rt::shared::Shared;
use crate::serve::ctx::ConnCtx;

/// A request whose handler is running: if the handler is dropped before it answers (hyper
/// drops it when the client goes away), the request is still counted and logged.
struct Answering {
    slot: telemetry::Slot,
    rec: Option<(HttpStart, Arc<ConnCtx>)>,
}

impl Drop for Answering {
    fn drop(&mut self) {
        let outcome = telemetry::release_slot(self.slot);
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
    /// Runs `fut`, the request's handler, as this request (as [`telemetry::scoped`] does) and returns its
    /// response, counted and logged when the body ends (see [`HttpStart::respond`]). If `fut` is
    /// dropped before it answers, the request is recorded with response code 0 and DC (see
    /// [`abandoned`]).
    pub async fn run<F, B>(self, ctx: &Arc<ConnCtx>, fut: F) -> Response<Metered<B>>
    where
        F: Future<Output = Response<B>>,
        B: Body,
    {
        let Some(slot) = telemetry::take_slot() else {
            return self.respond(ctx, fut.await, Outcome::default());
        };
        let mut answering = Answering {
            slot,
            rec: Some((self, ctx.clone())),
        };
        let resp = telemetry::in_slot(slot, fut).await;
        let outcome = telemetry::release_slot(slot);
        match answering.rec.take() {
            Some((start, _)) => start.respond(ctx, resp, outcome),
            // Not reached: `rec` is taken only here and on drop.
            None => resp.map(|inner| Metered { inner, rec: None }),
        }
    }
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

    /// Opens the upstream stream to `to` for this connection, recording where it connected
    /// or why it could not.
    pub async fn connect(
        &mut self,
        to: &crate::net::forward::Upstream<'_>,
    ) -> Result<crate::net::upstream::Stream, crate::net::forward::UpstreamError> {
        match crate::net::forward::connect_stream(to).await {
            Ok((stream, addr)) => {
                self.connected(&addr, &stream);
                Ok(stream)
            }
            Err(e) => {
                self.failed(&e);
                Err(e)
            }
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
