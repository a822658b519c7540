//! The running proxy: shared state, listeners and their accept loops.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;

use crate::base::config::ProxyConfig;
use crate::net::detect::Detected;
use crate::net::dns::Dns;
use crate::rt::lifecycle::Lifecycle;
use crate::base::loop_guard::{PortFilter, SelfAddrs, Via};
use crate::model::snapshot::Snapshot;

/// What every connection shares: the current snapshot (swapped atomically on reload), DNS,
/// settings and counters.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub dns: Arc<Dns>,
    pub config: ProxyConfig,
    pub stats: Stats,
    /// Istio metrics and the access log.
    pub telemetry: crate::obs::telemetry::Telemetry,
    /// Every listening address of the proxy (admin included): a request addressed to one of
    /// them would loop. Replaced when a reload opens or closes Gateway ports.
    pub local_addrs: ArcSwap<SelfAddrs>,
    /// The ports of `local_addrs`, for the common case of a request to another port.
    local_ports: PortFilter,
    /// This process's `Via` marker, added to every request sent upstream: a request that
    /// arrives carrying it went round a loop.
    pub via: Via,
    /// Reload outcomes and the drain state.
    pub lifecycle: Lifecycle,
}

impl Shared {
    pub fn new(snapshot: Snapshot, dns: Arc<Dns>, config: ProxyConfig, local_addrs: Vec<SocketAddr>) -> Arc<Self> {
        let local_addrs = SelfAddrs::new(local_addrs);
        Arc::new(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            dns,
            telemetry: crate::obs::telemetry::Telemetry::new(&config),
            config,
            stats: Stats::default(),
            local_ports: PortFilter::new(&local_addrs),
            local_addrs: ArcSwap::from_pointee(local_addrs),
            via: Via::random(),
            lifecycle: Lifecycle::default(),
        })
    }

    /// Whether `host:port`, as a request names it, is this proxy itself: an IP literal in any
    /// form (unspecified, IPv4-mapped, any local address when a listener is on `0.0.0.0`) or
    /// `localhost`, on the port of one of its listeners. A name that resolves to the proxy is
    /// caught when dialled ([`Shared::is_self_addr`] in [`crate::net::forward::Failover`]).
    /// A request to a port no listener has costs one relaxed atomic load.
    pub fn is_self(&self, host: &str, port: u16) -> bool {
        self.local_ports.may_have(port) && self.local_addrs.load().contains_host(host, port)
    }

    /// Whether a connection to `addr` would reach one of this proxy's listeners
    /// ([`SelfAddrs::contains`]); as cheap as [`Shared::is_self`] for other ports.
    pub fn is_self_addr(&self, addr: SocketAddr) -> bool {
        self.local_ports.may_have(addr.port()) && self.local_addrs.load().contains(addr)
    }

    /// Replaces the proxy's listening addresses (all of them, admin included).
    pub fn set_local_addrs(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let addrs = SelfAddrs::new(addrs);
        // Both orders leave a moment where one is newer than the other; a request in that
        // moment is judged by either listener set, both of which were true a moment ago.
        self.local_ports.set(&addrs);
        self.local_addrs.store(Arc::new(addrs));
    }

    /// Whether one `Via` header value (as received, possibly a list) carries this process's
    /// own marker: the request has been here before and would loop. Answer 508.
    pub fn carries_own_via(&self, value: &[u8]) -> bool {
        self.via.is_in(value)
    }

    /// The header line (`via: 1.1 meshentry-<token>\r\n`) to write into every HTTP/1.1
    /// request head sent upstream, after the client's own `Via` lines.
    pub fn via_line(&self) -> &[u8] {
        self.via.line()
    }
}

/// Proxy-wide counters (per-cluster and per-host ones live in the clusters).
#[derive(Debug, Default)]
pub struct Stats {
    pub downstream_connections: AtomicU64,
    pub downstream_active: AtomicU64,
    pub http_requests: AtomicU64,
    pub tunnels: AtomicU64,
    /// Refused by REGISTRY_ONLY.
    pub blocked: AtomicU64,
    /// Tunnels whose ClientHello named another host than the CONNECT target.
    pub sni_mismatch: AtomicU64,
    /// Tunnels refused for traffic that was not what the port declares (e.g. not TLS).
    pub bad_tunnel_traffic: AtomicU64,
    pub passthrough: AtomicU64,
    pub upstream_connect_errors: AtomicU64,
    pub upstream_errors: AtomicU64,
    /// TLS handshakes this proxy originated that failed.
    pub upstream_tls_errors: AtomicU64,
    pub bad_requests: AtomicU64,
    /// Gateway listeners: TLS handshakes with clients that failed (or timed out).
    pub downstream_tls_errors: AtomicU64,
    /// Gateway TLS ports: connections no server on the port takes (no server lists the SNI,
    /// or there is none and no server takes every name; an AUTO_PASSTHROUGH SNI outside the
    /// server's hosts), closed as Envoy closes one that matches no filter chain.
    pub gateway_no_server: AtomicU64,
    /// Requests a VirtualService `retries` policy sent again.
    pub upstream_retries: AtomicU64,
    /// Connections accepted on the transparent listener.
    pub outbound_connections: AtomicU64,
    /// Transparent connections refused because they were addressed to the proxy itself.
    pub outbound_loops: AtomicU64,
    /// What detection found on transparent connections, by [`Detected::as_str`] (tls, http1,
    /// h2c, tcp, none; malformed TLS counts as tcp).
    pub detected: [AtomicU64; 5],
    /// Connections admitted under `--max-connections` and still open (all listeners).
    pub admitted: AtomicU64,
    /// Connections over `--max-connections`, closed at once (Envoy's `downstream_cx_overflow`).
    pub downstream_cx_overflow: AtomicU64,
    /// Client connections closed for sitting idle between HTTP requests (`--idle-timeout`).
    pub downstream_cx_idle_timeout: AtomicU64,
    /// Relayed TCP/TLS connections and tunnels closed for carrying nothing (`--tcp-idle-timeout`).
    pub tcp_idle_timeout: AtomicU64,
    /// Request heads that did not arrive within `--header-read-timeout` (408, or a close when
    /// nothing at all arrived on a new connection).
    pub downstream_rq_header_timeout: AtomicU64,
    /// Requests ended because their body (the client's request body, or the upstream's
    /// response body) went without a byte for `--stream-idle-timeout` (Envoy's
    /// `downstream_rq_idle_timeout`; 408, or a closed connection once the response started).
    pub downstream_rq_idle_timeout: AtomicU64,
    /// Request heads over `--max-request-headers-kb` (431).
    pub downstream_rq_headers_too_large: AtomicU64,
    /// Requests with more header fields than `--max-headers-count` (431).
    pub downstream_rq_too_many_headers: AtomicU64,
    /// HTTP/2 streams that ended before their response head: the client reset them (or the
    /// connection ended) first (Envoy's `downstream_rq_rx_reset`).
    pub downstream_rq_rx_reset: AtomicU64,
    /// Of those, the ones reset before the proxy acted on them: no routing, no upstream
    /// connection or request.
    pub downstream_rq_reset_before_routing: AtomicU64,
    /// HTTP/2 client connections closed with GOAWAY ENHANCE_YOUR_CALM for resetting too many
    /// streams: past `--http2-max-premature-resets`, or past h2's own limits (Envoy's
    /// `downstream_rq_too_many_premature_resets`).
    pub downstream_rq_too_many_premature_resets: AtomicU64,
    /// Upstream connection attempts that hit `--connect-timeout`.
    pub upstream_cx_connect_timeout: AtomicU64,
    /// Requests whose upstream did not answer in time (`--response-timeout` or a
    /// VirtualService `timeout`; 504).
    pub upstream_rq_timeout: AtomicU64,
    /// Pooled upstream connections dropped for idling past `--upstream-idle-timeout`.
    pub upstream_cx_idle_timeout: AtomicU64,
    /// Configuration reloads that were applied.
    pub config_reloads: AtomicU64,
    /// Configuration reloads refused (invalid configuration); the previous one stayed.
    pub config_reloads_rejected: AtomicU64,
    /// Listeners a reload could not open (a Gateway server port that would not bind).
    pub listener_errors: AtomicU64,
    /// Failed `accept` calls on any listener, admin included (out of file descriptors or
    /// memory: the listener backs off; or a connection that died in the queue).
    pub accept_errors: AtomicU64,
    /// Admin connections open now.
    pub admin_cx_active: AtomicU64,
    /// Admin connections closed at once because the admin cap was reached.
    pub admin_cx_overflow: AtomicU64,
}

/// The names of [`Stats::detected`]'s slots.
pub const DETECTED_NAMES: [&str; 5] = ["tls", "http1", "h2c", "tcp", "none"];

impl Stats {
    /// A request or tunnel that failed upstream; TLS failures are also counted as such.
    pub fn count_upstream_error(&self, e: &crate::net::forward::UpstreamError) {
        // A loop is the request's or the configuration's doing, not the upstream's: the 508
        // that answers it counts it with the other loops (`bad_requests`, see
        // [`Stats::count_loop`]; the fast path's `refuse` counts every 508).
        if let crate::net::forward::UpstreamError::Loop(_) = e {
            return;
        }
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
        match e {
            crate::net::forward::UpstreamError::Tls(_) => {
                self.upstream_tls_errors.fetch_add(1, Ordering::Relaxed);
            }
            crate::net::forward::UpstreamError::Timeout(_) => {
                self.upstream_rq_timeout.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// A request answered 508 because of `e` on the hyper path (which, unlike the fast path's
    /// `refuse`, does not count its statuses).
    pub fn count_loop(&self, e: &crate::net::forward::UpstreamError) {
        if let crate::net::forward::UpstreamError::Loop(_) = e {
            self.bad_requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn count_detected(&self, d: &Detected) {
        let slot = match d {
            Detected::Tls { .. } => 0,
            Detected::Http1 => 1,
            Detected::H2c => 2,
            Detected::Other | Detected::BadTls(_) => 3,
            Detected::Nothing => 4,
            Detected::Closed => return,
        };
        self.detected[slot].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a downstream connection for as long as it lives.
pub struct ConnGuard<'a>(&'a Stats);

impl<'a> ConnGuard<'a> {
    pub fn new(stats: &'a Stats) -> Self {
        stats.downstream_connections.fetch_add(1, Ordering::Relaxed);
        stats.downstream_active.fetch_add(1, Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.0.downstream_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection admitted under `--max-connections`; the slot is freed when it drops.
pub struct Admitted(Arc<Shared>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.stats.admitted.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// Takes a connection slot, or counts an overflow and returns `None` (the caller closes
    /// the connection). Checked at accept, before the connection's task exists, so a burst
    /// of connections cannot overshoot the limit; the one shared atomic is touched once per
    /// connection, never per request.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let before = self.stats.admitted.fetch_add(1, Ordering::Relaxed);
        if before >= self.config.limits.max_connections {
            self.stats.admitted.fetch_sub(1, Ordering::Relaxed);
            let n = self.stats.downstream_cx_overflow.fetch_add(1, Ordering::Relaxed);
            // Logged on the first overflow and then every 1000th, so a flood does not also
            // flood the log.
            if n.is_multiple_of(1000) {
                tracing::warn!(
                    max_connections = self.config.limits.max_connections,
                    overflows = n + 1,
                    "connection limit reached: new connections are closed at once"
                );
            }
            return None;
        }
        Some(Admitted(self.clone()))
    }
}

/// Accepts explicit-proxy connections until `shutdown` turns true.
pub async fn serve_http_proxy(listener: TcpListener, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    serve_listener(listener, shared, shutdown, crate::serve::h1::serve_connection).await;
}

/// Where a listener listens: a TCP address, or a unix socket (a Gateway server's
/// `bind: unix://PATH`; a PATH of `@NAME` is NAME in Linux's abstract namespace).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(Arc<str>),
}

impl ListenAddr {
    /// The TCP address, for the loop guard (a unix socket is never dialled by a request).
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Unix(_) => None,
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => a.fmt(f),
            ListenAddr::Unix(path) => write!(f, "unix://{path}"),
        }
    }
}

/// What a unix socket client is logged as: it has no IP address.
pub const UNIX_PEER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// A listening socket the accept loop takes connections from.
pub trait Listening: Send + 'static {
    type Stream: Conn;

    /// The next connection and its peer's address ([`UNIX_PEER`] for a unix socket).
    fn accept_conn(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;

    /// Its address, for logs.
    fn describe(&self) -> String;
}

impl Listening for TcpListener {
    type Stream = TcpStream;

    fn accept_conn(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        self.accept()
    }

    fn describe(&self) -> String {
        self.local_addr().map_or_else(|_| "?".to_string(), |a| a.to_string())
    }
}

impl Listening for UnixListener {
    type Stream = UnixStream;

    async fn accept_conn(&self) -> io::Result<(UnixStream, SocketAddr)> {
        let (stream, _) = self.accept().await?;
        Ok((stream, UNIX_PEER))
    }

    fn describe(&self) -> String {
        match self.local_addr() {
            Ok(a) => match a.as_pathname() {
                Some(p) => format!("unix://{}", p.display()),
                None => "unix socket".to_string(),
            },
            Err(_) => "?".to_string(),
        }
    }
}

/// An accepted client connection, TCP or unix.
pub trait Conn: AsyncRead + AsyncWrite + crate::net::relay::Peer + Unpin + Send + 'static {
    /// The address it was accepted on; `None` for a unix socket.
    fn local(&self) -> Option<SocketAddr>;

    /// Sends small writes at once (TCP_NODELAY; nothing to do on a unix socket).
    fn no_delay(&self);
}

impl Conn for TcpStream {
    fn local(&self) -> Option<SocketAddr> {
        self.local_addr().ok()
    }

    fn no_delay(&self) {
        let _ = self.set_nodelay(true);
    }
}

impl Conn for UnixStream {
    fn local(&self) -> Option<SocketAddr> {
        None
    }

    fn no_delay(&self) {}
}

/// The accept loop of every data-plane listener: each connection is admitted under
/// `--max-connections` (or closed at once) and served by `handle` on a task of its own, until
/// `shutdown` turns true. Accept failures back off ([`Acceptor`]).
pub async fn serve_listener<L, F, Fut>(listener: L, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>, handle: F)
where
    L: Listening,
    F: Fn(L::Stream, SocketAddr, Arc<Shared>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut acceptor = Acceptor::new(listener);
    loop {
        tokio::select! {
            (stream, peer) = acceptor.accept(&shared.stats) => {
                let Some(admitted) = shared.admit() else { continue };
                let conn = handle(stream, peer, shared.clone());
                tokio::spawn(async move {
                    conn.await;
                    drop(admitted);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// The first pause after an `accept` that failed for want of resources, doubled on each
/// failure in a row up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A listener's `accept` with backoff. When the process is out of file descriptors (EMFILE,
/// ENFILE) or kernel memory (ENOBUFS, ENOMEM), `accept` fails at once and the connection stays
/// queued, so retrying at once spins a core and logs a line per try; instead the listener
/// pauses (10 ms, doubling to 1 s) while connections wait in the kernel's queue, and resumes
/// as soon as an `accept` succeeds. One warning starts an episode and one line ends it.
pub struct Acceptor<L = TcpListener> {
    listener: L,
    /// The next pause, while an episode lasts.
    pause: Duration,
    /// Failures in the current episode, and when it began.
    failures: u64,
    since: Option<Instant>,
}

impl<L: Listening> Acceptor<L> {
    pub fn new(listener: L) -> Self {
        Self {
            listener,
            pause: BACKOFF_MIN,
            failures: 0,
            since: None,
        }
    }

    pub fn listener(&self) -> &L {
        &self.listener
    }

    /// The next connection; failures are counted in `stats.accept_errors` and waited out.
    /// Cancel-safe: a connection is only taken from the queue when it is returned.
    pub async fn accept(&mut self, stats: &Stats) -> (L::Stream, SocketAddr) {
        loop {
            match self.listener.accept_conn().await {
                Ok(conn) => {
                    if let Some(since) = self.since.take() {
                        tracing::info!(
                            listener = %self.local(), failures = self.failures, took_ms = since.elapsed().as_millis() as u64,
                            "accepting connections again"
                        );
                        self.failures = 0;
                        self.pause = BACKOFF_MIN;
                    }
                    return conn;
                }
                Err(e) => {
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(pause) = self.failed(&e) {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    /// How long to pause after `e`, if at all.
    fn failed(&mut self, e: &io::Error) -> Option<Duration> {
        if is_per_connection(e) {
            // That connection is gone; the next one may be fine.
            tracing::debug!(listener = %self.local(), error = %e, "accept failed for one connection");
            return None;
        }
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::warn!(
                listener = %self.local(), error = %e,
                "accept failed: backing off (10 ms, doubling to 1 s) until it succeeds; new connections wait in the listen queue"
            );
        }
        self.failures += 1;
        let pause = self.pause;
        self.pause = (self.pause * 2).min(BACKOFF_MAX);
        Some(pause)
    }

    fn local(&self) -> String {
        self.listener.describe()
    }
}

/// Errors `accept` returns about one connection that was already dead (Linux passes pending
/// network errors on, accept(2)); the listener itself is fine. Anything else, resource
/// exhaustion first of all, is waited out rather than retried at once.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::EPERM
                | libc::EINTR
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resource_errors_back_off_doubling_and_recover() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut a = Acceptor::new(listener);
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let pauses: Vec<_> = (0..9).map(|_| a.failed(&emfile).unwrap().as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        for errno in [libc::ENFILE, libc::ENOBUFS, libc::ENOMEM, libc::EINVAL] {
            assert!(a.failed(&io::Error::from_raw_os_error(errno)).is_some());
        }
        assert_eq!(a.failures, 13);
        assert!(a.failed(&io::Error::from_raw_os_error(libc::ECONNABORTED)).is_none());
        // A success ends the episode: the next failure starts from the shortest pause.
        let addr = a.listener().local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let stats = Stats::default();
        a.accept(&stats).await;
        assert_eq!((a.failures, a.since), (0, None));
        assert_eq!(a.failed(&emfile), Some(BACKOFF_MIN));
    }
}
