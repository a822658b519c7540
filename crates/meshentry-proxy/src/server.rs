//! The running proxy: shared state, listeners and their accept loops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ProxyConfig;
use crate::detect::Detected;
use crate::dns::Dns;
use crate::lifecycle::Lifecycle;
use crate::snapshot::Snapshot;

/// What every connection shares: the current snapshot (swapped atomically on reload), DNS,
/// settings and counters.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub dns: Arc<Dns>,
    pub config: ProxyConfig,
    pub stats: Stats,
    /// Istio metrics and the access log.
    pub telemetry: crate::telemetry::Telemetry,
    /// The proxy's own listening addresses: a request addressed to one of them would loop.
    pub local_addrs: Vec<SocketAddr>,
    /// Reload outcomes and the drain state.
    pub lifecycle: Lifecycle,
}

impl Shared {
    pub fn new(snapshot: Snapshot, dns: Arc<Dns>, config: ProxyConfig, local_addrs: Vec<SocketAddr>) -> Arc<Self> {
        Arc::new(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            dns,
            telemetry: crate::telemetry::Telemetry::new(&config),
            config,
            stats: Stats::default(),
            local_addrs,
            lifecycle: Lifecycle::default(),
        })
    }

    /// Whether `host:port` is this proxy itself.
    pub fn is_self(&self, host: &str, port: u16) -> bool {
        let Ok(ip) = host.parse::<std::net::IpAddr>() else {
            return host.eq_ignore_ascii_case("localhost") && self.local_addrs.iter().any(|a| a.port() == port);
        };
        self.is_self_addr(SocketAddr::new(ip, port))
    }

    /// Whether `addr` is one of this proxy's listening addresses.
    pub fn is_self_addr(&self, addr: SocketAddr) -> bool {
        self.local_addrs
            .iter()
            .any(|a| a.port() == addr.port() && (a.ip() == addr.ip() || a.ip().is_unspecified()))
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
}

/// The names of [`Stats::detected`]'s slots.
pub const DETECTED_NAMES: [&str; 5] = ["tls", "http1", "h2c", "tcp", "none"];

impl Stats {
    /// A request or tunnel that failed upstream; TLS failures are also counted as such.
    pub fn count_upstream_error(&self, e: &crate::forward::UpstreamError) {
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
        match e {
            crate::forward::UpstreamError::Tls(_) => {
                self.upstream_tls_errors.fetch_add(1, Ordering::Relaxed);
            }
            crate::forward::UpstreamError::Timeout(_) => {
                self.upstream_rq_timeout.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
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
pub async fn serve_http_proxy(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(admitted) = shared.admit() else { continue };
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        crate::h1::serve_connection(stream, peer, shared).await;
                        drop(admitted);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}
