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

pub mod listen;
pub mod live;
pub mod net;
pub mod obs;
pub mod rt;
pub mod serve;

// The pure layers, under the paths the proxy's modules use (`crate::model::...`).
pub use meshentry_route::{base, model, route, wire};

// The paths the binary, admin and tests use.
pub use base::{config, flags, loop_guard};
pub use listen::{outbound, server};
pub use live::{dns, tls};
pub use model::{cluster, gateway, lb, snapshot, vs};
pub use net::{body, capture, detect, forward, relay, upstream};
pub use obs::{access_log, metrics, telemetry};
pub use rt::lifecycle;
pub use serve::{h1, h2, http, limits, routed, tunnel};
pub use wire::sni;
