//! The data plane: listeners, sniffing, routing by SNI/Host/VIP/port, forwarding to static,
//! DNS-resolved or unix-socket endpoints, load balancing and the outbound policy.
//!
//! The modules are layers, each a folder, lowest first; a module uses only its own layer and
//! the ones below it (`tests/layers.rs` checks every `use crate::` line against this order).
//! The four lowest are the pure crate `meshentry-route` (no tokio, hyper or sockets), re-exported
//! here under the same paths; the proxy adds:
//!
//! 5. [`live`]: a snapshot in force with its runtime state per cluster id: DNS, TLS configurations;
//! 6. [`obs`]: counters, metrics, access log;
//! 7. [`rt`]: reload outcomes and draining;
//! 8. [`net`]: upstream connections, pooling, relaying, detection I/O, capture;
//! 9. [`serve`]: a client connection: HTTP/1 fast path, hyper, HTTP/2, tunnels, limits;
//! 10. [`listen`]: accept loops: explicit, transparent and Gateway listeners; reloads.

mod listen;
mod live;
mod net;
mod obs;
mod rt;
mod serve;

// The pure layers, under the paths the proxy's modules use (`crate::model::...`); other crates
// use `meshentry_route` itself.
pub(crate) use meshentry_route::{base, model, route, wire};

// What the binary, admin and tests use: the runtime state, the shared context, the reloader
// and workers, telemetry, capture rules, TLS files, and the refusal texts `explain` shows.
pub use listen::server::Acceptor;
pub use listen::{dns as dns_proxy, reload, workers};
pub use live::Live;
pub use live::dns::{Dns, DnsConfig};
pub use live::tls;
pub use net::capture;
pub use obs::dns_proxy::{DnsProxyStats, Outcome as DnsOutcome, encode as dns_proxy_metrics};
pub use obs::{access_log, metrics};
pub use rt::lifecycle::SourceState;
pub use rt::memory;
pub use rt::shared::{DETECTED_NAMES, Shared};
pub use serve::ctx::blocked_reason;
pub use serve::routed::{no_cluster, no_route};
