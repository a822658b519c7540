//! The data plane: listeners, sniffing, routing by SNI/Host/VIP/port, forwarding to static,
//! DNS-resolved or unix-socket endpoints, load balancing and the outbound policy.
//!
//! - [`snapshot`]: the routing state, built from resources and swapped atomically;
//! - [`route`]: which cluster a destination goes to;
//! - [`vs`]: VirtualService route tables (HTTP, TLS, TCP), compiled per snapshot;
//! - [`routed`]: HTTP requests a VirtualService routes (faults, redirects, rewrites, retries...);
//! - [`cluster`], [`lb`], [`dns`]: the hosts of a cluster and how one is picked;
//! - [`forward`], [`upstream`]: connecting and sending, with failover and pooling;
//! - [`body`]: request and response bodies on the hyper path, their faults and idle timeouts;
//! - [`tls`]: originating TLS (DestinationRule `tls`): configurations, verification, reload;
//! - [`h1`]: the fast path for plain HTTP/1.1 requests (its framing rules are
//!   `meshentry_wire`'s, shared with the hyper path);
//! - [`http`], [`tunnel`], [`sni`]: the general (hyper) path, CONNECT tunnels, SNI;
//! - [`h2`]: HTTP/2 prior-knowledge clients, HTTP/2 upstream requests, gRPC error replies;
//!   `h2_resets` bounds what resetting streams can make it do (rapid reset);
//! - [`gateway`]: gateway mode (`--gateway`): servers, TLS termination, gateway routes;
//! - [`outbound`], [`detect`], [`relay`]: the transparent listener for iptables-captured
//!   connections, what a client speaks from its first bytes, and relaying bytes both ways;
//! - [`server`]: shared state, counters and the accept loop with backoff (and the connection
//!   limit);
//! - [`loop_guard`]: what is the proxy itself (its listeners' addresses in every form) and the
//!   `Via` hop marker, so that no request loops back through it;
//! - [`limits`]: idle and header timeouts on connections hyper serves;
//! - [`telemetry`], [`metrics`], [`access_log`], [`flags`]: what happened to each request and
//!   connection, as Istio's standard metrics and Envoy-format access log lines;
//! - [`lifecycle`]: reload outcomes and draining at shutdown;
//! - [`capture`]: the iptables rules for transparent capture (`meshentry iptables`).

pub mod access_log;
pub mod body;
pub mod capture;
pub mod cluster;
pub mod config;
pub mod detect;
pub mod dns;
pub mod flags;
pub mod forward;
pub mod gateway;
pub mod h1;
pub mod h2;
pub(crate) mod h2_resets;
pub mod http;
pub mod lb;
pub mod lifecycle;
pub mod limits;
pub mod loop_guard;
pub mod metrics;
pub mod outbound;
pub mod relay;
pub mod route;
pub mod routed;
pub mod server;
pub mod snapshot;
pub mod sni;
pub mod telemetry;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod vs;
