//! What every connection shares: the current snapshot, DNS, settings, proxy-wide counters and
//! the connection limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use meshentry_wire::detect::Detected;

use crate::base::config::ProxyConfig;
use crate::base::loop_guard::{PortFilter, SelfAddrs, Via};
use crate::live::Live;
use crate::live::dns::Dns;
use crate::rt::lifecycle::Lifecycle;

/// What every connection shares: the current snapshot (swapped atomically on reload), DNS,
/// settings and counters.
pub struct Shared {
    pub snapshot: ArcSwap<Live>,
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
    /// The DNS proxy's counters (`--dns`).
    pub dns_proxy: crate::obs::dns_proxy::DnsProxyStats,
}

impl Shared {
    pub fn new(snapshot: Live, dns: Arc<Dns>, config: ProxyConfig, local_addrs: Vec<SocketAddr>) -> Arc<Self> {
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
            dns_proxy: Default::default(),
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
