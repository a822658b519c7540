//! meshentry's routing decisions, with no I/O: what a configuration makes (clusters, route
//! tables, the Gateway model, the snapshot) and what it says about a connection or a request.
//! The proxy (`meshentry-proxy`), `explain` and the admin API call the same functions.
//!
//! Nothing here opens a socket, reads a file after the configuration is loaded, resolves a
//! name or waits: a decision that depends on what only the running proxy knows (DNS answers,
//! TLS files) takes it as an argument, or returns what it still needs
//! ([`route::Handling::TcpOwner`], [`route::TunnelDst::Resolve`]). The proxy keeps that
//! runtime state per cluster id ([`model::cluster::Cluster::id`]).
//!
//! The modules are layers, lowest first; a module uses only its own layer and the ones below
//! it (`meshentry-proxy/tests/layers.rs` checks every `use crate::` line against this order):
//!
//! 1. [`base`]: configuration, response flags, the proxy's own addresses;
//! 2. [`wire`]: byte-level rules (SNI, TLS alerts);
//! 3. [`model`]: clusters, load balancing, route tables, the Gateway model, the snapshot;
//! 4. [`route`]: which cluster a destination goes to.

pub mod base;
pub mod model;
pub mod route;
pub mod wire;
