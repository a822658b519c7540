//! The data plane: listeners, sniffing, routing by SNI/Host/VIP/port, forwarding to static,
//! DNS-resolved or unix-socket endpoints, load balancing and the outbound policy.
//!
//! The modules are layers, each a folder, lowest first; a module uses only its own layer and
//! the ones below it (`tests/layers.rs` checks every `use crate::` line against this order):
//!
//! 1. [`base`]: configuration, response flags, the proxy's own addresses;
//! 2. [`wire`]: byte-level rules (SNI);
//! 3. [`model`]: clusters, load balancing, route tables, the Gateway model, the snapshot;
//! 4. [`route`]: which cluster a destination goes to (pure decisions);
//! 5. [`obs`]: counters, metrics, access log;
//! 6. [`rt`]: reload outcomes and draining;
//! 7. [`net`]: upstream connections, pooling, relaying, DNS, detection I/O, capture;
//! 8. [`serve`]: a client connection: HTTP/1 fast path, hyper, HTTP/2, tunnels, limits;
//! 9. [`listen`]: accept loops: explicit, transparent and Gateway listeners.

pub mod base;
pub mod listen;
pub mod model;
pub mod net;
pub mod obs;
pub mod route;
pub mod rt;
pub mod serve;
pub mod wire;

// The paths the binary, admin and tests use.
pub use base::{config, flags, loop_guard};
pub use listen::{outbound, server};
pub use model::{cluster, dns, gateway, lb, snapshot, tls, vs};
pub use net::{body, capture, detect, forward, relay, upstream};
pub use obs::{access_log, metrics, telemetry};
pub use rt::lifecycle;
pub use serve::{h1, h2, http, limits, routed, tunnel};
pub use wire::sni;
