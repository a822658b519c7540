//! Getting a request or a byte stream to an upstream host: picking a host of the cluster (or the
//! original destination), connecting with failover, and sending over pooled HTTP/1.1
//! connections or a shared HTTP/2 connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::Request;
use hyper::Response;
use hyper::body::Incoming;

use meshentry_registry::Protocol;

use crate::live::dns::Dns;
use crate::live::{Live, NoHost};
use crate::model::cluster::{Cluster, HostAddr, HostSet};
use crate::model::lb::Tried;
use crate::net::upstream::{self, ConnectError, Dial, PooledBody, RequestBody, Stream, TlsDial};
use crate::route::Decision;
use crate::rt::shared::Shared;

/// Why a request or tunnel could not reach an upstream. Each maps to an HTTP status, an Envoy
/// response flag and a human reason.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no healthy upstream: {0}")]
    NoHost(#[from] NoHost),
    #[error("upstream connect error: {reason} (tried {tried} endpoint{s})", s = if *tried == 1 { "" } else { "s" })]
    Connect { reason: String, tried: u32 },
    #[error("upstream reset before response headers: {0}")]
    Reset(String),
    #[error("upstream request timeout: no response headers within {0:?}")]
    Timeout(std::time::Duration),
    #[error("DNS lookup failed: {0}")]
    Dns(String),
    /// The upstream refused the TLS session after the handshake (TLS 1.3 reports a rejected
    /// client certificate only then).
    #[error("upstream connect error: {0}")]
    Tls(String),
    /// A response that cannot be relayed safely (ambiguous or invalid framing): the
    /// connection it came on is closed, never reused.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// Every address to dial was one of this proxy's own listeners (a name that resolves to
    /// the proxy, an endpoint that is its own port): sending would loop.
    #[error("request loop: {0} is this proxy's own listener")]
    Loop(SocketAddr),
}

impl UpstreamError {
    /// The status a client gets: Envoy's choices (503 for connection failures and no hosts,
    /// 504 for timeouts), and 502 when the upstream broke the exchange.
    pub fn status(&self) -> u16 {
        match self {
            UpstreamError::NoHost(_)
            | UpstreamError::Connect { .. }
            | UpstreamError::Dns(_)
            | UpstreamError::Tls(_) => 503,
            UpstreamError::Reset(_) | UpstreamError::Protocol(_) => 502,
            UpstreamError::Timeout(_) => 504,
            UpstreamError::Loop(_) => 508,
        }
    }

    /// Envoy's response flag, as metrics and the access log carry it.
    pub fn flags(&self) -> crate::base::flags::Flags {
        use crate::base::flags::Flags;
        match self {
            UpstreamError::NoHost(NoHost::Dns(_)) | UpstreamError::Dns(_) => Flags::DF,
            UpstreamError::NoHost(_) => Flags::UH,
            UpstreamError::Connect { .. } | UpstreamError::Tls(_) => Flags::UF,
            UpstreamError::Reset(_) => Flags::UC,
            UpstreamError::Protocol(_) => Flags::UPE,
            UpstreamError::Timeout(_) => Flags::UT,
            UpstreamError::Loop(_) => Flags::NONE,
        }
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` for this failure.
    pub fn details(&self) -> &'static str {
        match self {
            UpstreamError::NoHost(NoHost::Dns(_)) | UpstreamError::Dns(_) => "dns_resolution_failure",
            UpstreamError::NoHost(_) => "no_healthy_upstream",
            UpstreamError::Connect { .. } | UpstreamError::Tls(_) => {
                "upstream_reset_before_response_started{connection_failure}"
            }
            UpstreamError::Reset(_) => "upstream_reset_before_response_started{connection_termination}",
            UpstreamError::Protocol(_) => "upstream_reset_before_response_started{protocol_error}",
            UpstreamError::Timeout(_) => "response_timeout",
            UpstreamError::Loop(_) => "request_loop",
        }
    }

    /// Envoy's response flag.
    pub fn flag(&self) -> &'static str {
        match self {
            UpstreamError::NoHost(NoHost::Dns(_)) | UpstreamError::Dns(_) => "DF",
            UpstreamError::NoHost(_) => "UH",
            UpstreamError::Connect { .. } | UpstreamError::Tls(_) => "UF",
            UpstreamError::Reset(_) => "UC",
            UpstreamError::Protocol(_) => "UPE",
            UpstreamError::Timeout(_) => "UT",
            UpstreamError::Loop(_) => "-",
        }
    }
}

/// The HTTP version requests travel upstream in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c), one connection per host per worker.
    H2,
}

impl UpstreamProtocol {
    /// Istio gives the clusters of `HTTP2` and `GRPC` service ports `http2_protocol_options`,
    /// so their requests go upstream over HTTP/2 whatever the client spoke; everything else
    /// (HTTP, unset, HTTP_PROXY, GRPC-WEB, passthrough) goes over HTTP/1.1.
    pub fn of_port(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Http2 | Protocol::Grpc => UpstreamProtocol::H2,
            _ => UpstreamProtocol::Http1,
        }
    }

    /// The protocol for a routed request.
    pub fn of(decision: &Decision<'_>) -> Self {
        match decision {
            Decision::Cluster { port, .. } => Self::of_port(port.protocol),
            Decision::Passthrough | Decision::Blocked => UpstreamProtocol::Http1,
        }
    }
}

/// Where the application was going, for ORIGINAL_DST and passthrough.
#[derive(Clone, Copy, Debug)]
pub struct Original<'a> {
    pub host: &'a str,
    pub port: u16,
}

/// Where a request or tunnel goes: the cluster the routing chose (`None`: passthrough), the
/// snapshot it belongs to, and where the application was going.
pub struct Upstream<'s> {
    pub shared: &'s Shared,
    pub live: &'s Live,
    pub cluster: Option<&'s Cluster>,
    pub original: Original<'s>,
}

/// The addresses to try for an original destination: the IP itself, or the name's addresses.
async fn original_addrs(dns: &Arc<Dns>, dest: &Original<'_>) -> Result<Vec<SocketAddr>, UpstreamError> {
    if let Ok(ip) = dest.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, dest.port)]);
    }
    let entry = dns.dynamic_entry(dest.host);
    let answer = dns
        .resolve(&entry)
        .await
        .map_err(|e| UpstreamError::Dns(e.to_string()))?;
    Ok(answer.addrs.iter().map(|ip| SocketAddr::new(*ip, dest.port)).collect())
}

/// The hosts one request may try, in order: the hosts of a cluster, balanced, each at most
/// once, or the addresses of the original destination (ORIGINAL_DST clusters and
/// passthrough). It keeps the tried set, the in-flight count of the host being tried, and the
/// counters, so every caller fails over the same way:
///
/// ```text
/// let mut plan = Failover::new(to).await?;
/// while let Some(i) = plan.next_target() {
///     match try_host(plan.addr(i)).await { Ok(t) => return Ok(t), Err(e) => plan.refused(i, &e) }
/// }
/// Err(plan.exhausted())
/// ```
pub struct Failover<'s> {
    shared: &'s Shared,
    /// The snapshot `cluster` belongs to, with the cluster's runtime state.
    live: &'s Live,
    cluster: Option<&'s Cluster>,
    targets: Targets,
    tried: Tried,
    count: u32,
    last: String,
    /// The cluster host whose in-flight count this plan holds.
    active: Option<usize>,
    /// Targets skipped because they are this proxy's own listeners, and the last of them.
    looped: u32,
    looped_addr: Option<SocketAddr>,
}

enum Targets {
    Hosts(Arc<HostSet>),
    Addrs(Vec<HostAddr>),
}

impl<'s> Failover<'s> {
    pub async fn new(to: &Upstream<'s>) -> Result<Failover<'s>, UpstreamError> {
        let Upstream {
            shared,
            live,
            cluster,
            ref original,
        } = *to;
        // A cluster whose TLS could not be set up fails its connections rather than send
        // plaintext where the rule asked for TLS.
        if let Some(Some(Err(reason))) = cluster.map(|c| live.tls(c)) {
            return Err(UpstreamError::Connect {
                reason: reason.to_string(),
                tried: 0,
            });
        }
        let targets = match cluster {
            Some(c) if c.original_dst_port().is_none() => {
                c.stats.requests.fetch_add(1, Ordering::Relaxed);
                Targets::Hosts(live.hosts(c, &shared.dns).await?)
            }
            _ => {
                let port = cluster
                    .and_then(|c| c.original_dst_port())
                    .flatten()
                    .unwrap_or(original.port);
                let dest = Original {
                    host: original.host,
                    port,
                };
                Targets::Addrs(
                    original_addrs(&shared.dns, &dest)
                        .await?
                        .into_iter()
                        .map(HostAddr::Ip)
                        .collect(),
                )
            }
        };
        Ok(Failover {
            shared,
            live,
            cluster,
            targets,
            tried: Tried::default(),
            count: 0,
            last: String::new(),
            active: None,
            looped: 0,
            looped_addr: None,
        })
    }

    /// The next target to try, if any is left. A target that is this proxy itself (the
    /// address actually dialled, after DNS) is skipped: connecting would loop.
    pub fn next_target(&mut self) -> Option<usize> {
        loop {
            let i = self.pick()?;
            if let &HostAddr::Ip(addr) = self.addr(i)
                && self.shared.is_self_addr(addr)
            {
                self.looped += 1;
                self.looped_addr = Some(addr);
                tracing::debug!(%addr, cluster = self.cluster.map_or("", |c| &c.name), "upstream address is this proxy: skipped");
                continue;
            }
            // Only the access log prints the endpoint: without it, no note per request.
            if self.shared.telemetry.access_log().is_some() {
                crate::obs::telemetry::note(|o| o.upstream = Some(self.addr(i).clone()));
            }
            return Some(i);
        }
    }

    fn pick(&mut self) -> Option<usize> {
        self.release();
        let i = match &self.targets {
            Targets::Hosts(set) => {
                if self.count as usize >= set.hosts.len() {
                    return None;
                }
                let i = set.balancer.pick(&set.hosts, self.tried)?;
                let host = &set.hosts[i];
                host.stats.requests.fetch_add(1, Ordering::Relaxed);
                host.load.active.fetch_add(1, Ordering::Relaxed);
                self.active = Some(i);
                i
            }
            Targets::Addrs(addrs) => {
                let i = self.count as usize;
                if i >= addrs.len() {
                    return None;
                }
                i
            }
        };
        self.tried.add(i);
        self.count += 1;
        Some(i)
    }

    pub fn addr(&self, i: usize) -> &HostAddr {
        match &self.targets {
            Targets::Hosts(set) => &set.hosts[i].addr,
            Targets::Addrs(addrs) => &addrs[i],
        }
    }

    /// How to connect to target `i`: its address, with the cluster's TLS (D6, D7). `http_host`
    /// is the request's host name (without port) for HTTP, the SNI when the rule sets none;
    /// TCP sends no SNI then and the service host is what the certificate must name.
    pub fn dial(&self, i: usize, http_host: Option<&str>) -> Dial {
        let addr = self.addr(i).clone();
        let Some(Some(Ok(o))) = self.cluster.map(|c| self.live.tls(c)) else {
            return Dial::plain(addr);
        };
        let ip = match &addr {
            HostAddr::Ip(a) => a.ip(),
            HostAddr::Unix(_) => IpAddr::from([0, 0, 0, 0]),
        };
        let host = http_host.or(self.cluster.map(|c| &*c.host));
        let tls = TlsDial {
            origination: o.clone(),
            name: o.server_name(host, ip),
            sni: o.sends_sni(http_host.is_some()),
        };
        Dial { addr, tls: Some(tls) }
    }

    /// Counts a connection opened to target `i` (Envoy's `cx_total`).
    pub fn opened(&self, i: usize) {
        if let Targets::Hosts(set) = &self.targets {
            set.hosts[i].stats.connections.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Target `i` refused the connection (or its TLS handshake failed).
    pub fn refused(&mut self, i: usize, e: &ConnectError) {
        self.shared
            .stats
            .upstream_connect_errors
            .fetch_add(1, Ordering::Relaxed);
        if let ConnectError::Timeout(_) = e {
            self.shared
                .stats
                .upstream_cx_connect_timeout
                .fetch_add(1, Ordering::Relaxed);
        }
        if let ConnectError::Tls(cause) = e {
            crate::obs::telemetry::note(|o| o.transport_failure = Some(cause.clone()));
            self.shared.stats.upstream_tls_errors.fetch_add(1, Ordering::Relaxed);
            if let Some(cluster) = self.cluster {
                cluster.stats.tls_failures.fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(cluster = self.cluster.map_or("", |c| &c.name), host = %self.addr(i), error = %e, "upstream TLS handshake failed");
        }
        if let (Targets::Hosts(set), Some(cluster)) = (&self.targets, self.cluster) {
            let host = &set.hosts[i];
            host.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            cluster.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(cluster = %cluster.name, host = %host.addr, error = %e, "upstream connect failed");
        }
        self.last = e.to_string();
    }

    /// The error when every target refused; a loop when every one was the proxy itself.
    pub fn exhausted(&self) -> UpstreamError {
        if let Some(addr) = self.looped_addr
            && self.looped == self.count
        {
            return UpstreamError::Loop(addr);
        }
        let reason = if self.count == 0 {
            "no addresses".to_string()
        } else {
            self.last.clone()
        };
        UpstreamError::Connect {
            reason,
            tried: self.count,
        }
    }

    fn release(&mut self) {
        if let (Some(i), Targets::Hosts(set)) = (self.active.take(), &self.targets) {
            set.hosts[i].load.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Failover<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Opens a stream for a tunnel.
pub async fn connect_stream(to: &Upstream<'_>) -> Result<(Stream, HostAddr), UpstreamError> {
    let timeout = to.shared.config.connect_timeout;
    let mut plan = Failover::new(to).await?;
    while let Some(i) = plan.next_target() {
        match upstream::connect(&plan.dial(i, None), timeout).await {
            Ok(s) => {
                plan.opened(i);
                return Ok((s, plan.addr(i).clone()));
            }
            Err(e) => plan.refused(i, &e),
        }
    }
    Err(plan.exhausted())
}

/// The failover plan for a request, and the name its TLS origination sends and checks when
/// the rule fixes none (D7: the request's host).
async fn plan_for<'s>(
    to: &Upstream<'s>,
    req: &Request<RequestBody>,
) -> Result<(Failover<'s>, Option<String>), UpstreamError> {
    let plan = Failover::new(to).await?;
    let sni_host = to.cluster.and_then(|c| to.live.tls(c)).and_then(|_| request_host(req));
    Ok((plan, sni_host))
}

/// Sends a request that asks to switch protocols (`Upgrade`) on an HTTP/1.1 connection of its
/// own, never pooled: after a 101 the connection carries the new protocol, and after any other
/// response it closes. Returns the response (whose upgrade, after a 101, the caller takes),
/// the endpoint, and this proxy's end of the connection.
pub async fn send_upgrade(
    to: &Upstream<'_>,
    req: Request<RequestBody>,
) -> Result<(Response<Incoming>, HostAddr, Option<SocketAddr>), UpstreamError> {
    let (timeout, response_timeout) = (to.shared.config.connect_timeout, to.shared.config.response_timeout);
    let (mut plan, sni_host) = plan_for(to, &req).await?;
    while let Some(i) = plan.next_target() {
        let dial = plan.dial(i, sni_host.as_deref());
        let stream = match upstream::connect(&dial, timeout).await {
            Ok(s) => s,
            Err(e) => {
                plan.refused(i, &e);
                continue;
            }
        };
        plan.opened(i);
        let local = stream.local_addr();
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, RequestBody>(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(reset)?;
        tokio::spawn(async move {
            // Ends after the response, or hands the stream to `hyper::upgrade::on` after a 101.
            let _ = conn.with_upgrades().await;
        });
        let answering = meshentry_wire::h1::Answering {
            head: req.method() == http::Method::HEAD,
            upgrade: true,
        };
        return match tokio::time::timeout(response_timeout, sender.send_request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(response_timeout)),
            Ok(Err(e)) => Err(reset(e)),
            Ok(Ok(resp)) => {
                // The fast path's response rules, as for any response (the connection is never
                // reused, but an ambiguous response is still not relayed).
                let minor = u8::from(resp.version() != http::Version::HTTP_10);
                let fields = resp
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
                meshentry_wire::h1::response(resp.status().as_u16(), minor, answering, fields)
                    .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                Ok((resp, dial.addr, local))
            }
        };
    }
    Err(plan.exhausted())
}

/// Sends an HTTP request on the general (hyper) path, over a pooled connection when one is
/// idle (HTTP/1.1) or this thread's connection to the host (HTTP/2). `req` must already be in
/// the form `protocol` sends.
pub async fn send_request(
    to: &Upstream<'_>,
    req: Request<RequestBody>,
    protocol: UpstreamProtocol,
) -> Result<(Response<PooledBody>, HostAddr), UpstreamError> {
    send_request_within(to, req, protocol, to.shared.config.response_timeout).await
}

/// [`send_request`] with `response_timeout` for the response head instead of the proxy's
/// (a VirtualService `timeout` or `perTryTimeout`).
pub async fn send_request_within(
    to: &Upstream<'_>,
    req: Request<RequestBody>,
    protocol: UpstreamProtocol,
    response_timeout: std::time::Duration,
) -> Result<(Response<PooledBody>, HostAddr), UpstreamError> {
    let shared = to.shared;
    let timeout = shared.config.connect_timeout;
    let idle = shared.config.pool_idle_timeout;
    let stream_idle = shared.config.limits.stream_idle_timeout;
    let mut req = req;
    let (mut plan, sni_host) = plan_for(to, &req).await?;
    // What the response may be, by the fast path's rules (`meshentry_wire`): hyper re-frames
    // what it relays, but a connection whose response was ambiguous is still not reused, and
    // a 101 nobody asked for is not passed on.
    let answering = meshentry_wire::h1::Answering {
        head: req.method() == http::Method::HEAD,
        upgrade: req.headers().contains_key(http::header::UPGRADE),
    };
    while let Some(i) = plan.next_target() {
        let addr = plan.dial(i, sni_host.as_deref());
        let sent = match protocol {
            UpstreamProtocol::Http1 => exchange(
                &addr,
                req,
                (idle, &shared.stats.upstream_cx_idle_timeout),
                timeout,
                response_timeout,
                || plan.opened(i),
            )
            .await
            .and_then(|(resp, sender)| {
                let minor = u8::from(resp.version() != http::Version::HTTP_10);
                let fields = resp
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
                // Refused: the response (and with it the connection) is dropped, never pooled.
                let framing = meshentry_wire::h1::response(resp.status().as_u16(), minor, answering, fields)
                    .map_err(|e| Exchange::Failed(UpstreamError::Protocol(e.to_string())))?;
                let reusable = !wants_close(resp.headers()) && !framing.close && !framing.announced_body;
                let (parts, body) = resp.into_parts();
                Ok(Response::from_parts(
                    parts,
                    PooledBody::new(body, addr.clone(), sender, reusable, stream_idle),
                ))
            }),
            UpstreamProtocol::H2 => exchange_h2(&addr, req, idle, timeout, response_timeout, || plan.opened(i))
                .await
                .map(|resp| resp.map(|b| PooledBody::shared(b, stream_idle))),
        };
        match sent {
            Ok(resp) => return Ok((resp, addr.addr)),
            Err(Exchange::ConnectFailed(e, back)) => {
                plan.refused(i, &e);
                req = *back;
            }
            Err(Exchange::Failed(e)) => return Err(e),
        }
    }
    Err(plan.exhausted())
}

enum Exchange {
    /// Connecting failed; the request was not sent and comes back for the next host.
    ConnectFailed(ConnectError, Box<Request<RequestBody>>),
    Failed(UpstreamError),
}

type Sender = hyper::client::conn::http1::SendRequest<RequestBody>;

/// One request/response exchange with `addr`. A pooled connection that turns out to be closed
/// (the upstream timed it out) is replaced by a fresh one without the client noticing.
/// `opened` is called when a new connection is made.
async fn exchange(
    addr: &Dial,
    req: Request<RequestBody>,
    (idle, idle_closed): (std::time::Duration, &std::sync::atomic::AtomicU64),
    connect_timeout: std::time::Duration,
    response_timeout: std::time::Duration,
    opened: impl FnOnce(),
) -> Result<(Response<Incoming>, Sender), Exchange> {
    let mut req = req;
    crate::net::pool::keep_swept(idle, upstream::sweep_pool);
    if let Some(mut sender) = upstream::checkout(addr, idle, idle_closed) {
        match tokio::time::timeout(response_timeout, sender.try_send_request(req)).await {
            Err(_) => return Err(Exchange::Failed(UpstreamError::Timeout(response_timeout))),
            Ok(Ok(resp)) => return Ok((resp, sender)),
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) => req = back,
                None => return Err(Exchange::Failed(reset(e.into_error()))),
            },
        }
    }
    let stream = match upstream::connect(addr, connect_timeout).await {
        Ok(s) => s,
        Err(e) => return Err(Exchange::ConnectFailed(e, Box::new(req))),
    };
    opened();
    let mut sender = upstream::handshake(stream)
        .await
        .map_err(|e| Exchange::Failed(reset(e)))?;
    match tokio::time::timeout(response_timeout, sender.try_send_request(req)).await {
        Err(_) => Err(Exchange::Failed(UpstreamError::Timeout(response_timeout))),
        Ok(Ok(resp)) => Ok((resp, sender)),
        Ok(Err(e)) => Err(Exchange::Failed(reset(e.into_error()))),
    }
}

/// One request on this thread's HTTP/2 connection to `addr`. `opened` is called when the
/// connection was opened for this request.
async fn exchange_h2(
    addr: &Dial,
    req: Request<RequestBody>,
    idle: std::time::Duration,
    connect_timeout: std::time::Duration,
    response_timeout: std::time::Duration,
    opened: impl FnOnce(),
) -> Result<Response<Incoming>, Exchange> {
    let mut req = req;
    let mut opened = Some(opened);
    // A second round only when the connection closed (GOAWAY, upstream idle timeout) between
    // taking it and sending: hyper hands the request back unsent, and it goes on a new one.
    for round in 0..2 {
        let (mut sender, fresh) = match upstream::h2_connection(addr, connect_timeout, idle).await {
            Ok(c) => c,
            Err(e) => return Err(Exchange::ConnectFailed(e, Box::new(req))),
        };
        if fresh && let Some(opened) = opened.take() {
            opened();
        }
        match tokio::time::timeout(response_timeout, sender.try_send_request(req)).await {
            // Dropping the request future resets the stream (RST_STREAM CANCEL); the
            // connection carries on for the other requests.
            Err(_) => return Err(Exchange::Failed(UpstreamError::Timeout(response_timeout))),
            Ok(Ok(resp)) => return Ok(resp),
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) if round == 0 => req = back,
                _ => return Err(Exchange::Failed(reset(e.into_error()))),
            },
        }
    }
    Err(Exchange::Failed(UpstreamError::Reset(
        "upstream HTTP/2 connection closed before the request was sent".into(),
    )))
}

/// An upstream that broke the exchange: a TLS failure when that is the cause (a TLS 1.3
/// server refuses a client certificate after the handshake), else hyper's words.
fn reset(e: hyper::Error) -> UpstreamError {
    match crate::live::tls::find_cause(&e) {
        Some(cause) => UpstreamError::Tls(cause),
        // A response hyper could not parse is the upstream's protocol error (Envoy's UPE), as
        // on the fast path; hyper closes that connection.
        None if e.is_parse() || e.is_parse_status() => UpstreamError::Protocol(e.to_string()),
        None => UpstreamError::Reset(e.to_string()),
    }
}

/// The host name a request is for (its authority, else its Host), without the port: the SNI
/// of TLS origination without a fixed `sni` (D7).
fn request_host(req: &Request<RequestBody>) -> Option<String> {
    let authority = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(http::header::HOST)?.to_str().ok()?,
    };
    crate::route::split_host_port(authority, 0).map(|(h, _)| h.to_string())
}

fn wants_close(headers: &http::HeaderMap) -> bool {
    headers.get_all(http::header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    })
}

impl crate::rt::shared::Stats {
    /// A request or tunnel that failed upstream; TLS failures are also counted as such.
    pub fn count_upstream_error(&self, e: &UpstreamError) {
        // A loop is the request's or the configuration's doing, not the upstream's: the 508
        // that answers it counts it with the other loops (`bad_requests`, see
        // [`Stats::count_loop`]; the fast path's `refuse` counts every 508).
        if let UpstreamError::Loop(_) = e {
            return;
        }
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
        match e {
            UpstreamError::Tls(_) => {
                self.upstream_tls_errors.fetch_add(1, Ordering::Relaxed);
            }
            UpstreamError::Timeout(_) => {
                self.upstream_rq_timeout.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// A request answered 508 because of `e` on the hyper path (which, unlike the fast path's
    /// `refuse`, does not count its statuses).
    pub fn count_loop(&self, e: &UpstreamError) {
        if let UpstreamError::Loop(_) = e {
            self.bad_requests.fetch_add(1, Ordering::Relaxed);
        }
    }
}
