//! One client connection once it is accepted: the HTTP/1 fast path, the hyper path (HTTP/1 and HTTP/2), CONNECT tunnels, VirtualService actions, bodies and limits.

pub mod ctx;
pub mod gateway;
pub mod h1;
pub mod h2;
pub(crate) mod h2_resets;
pub mod http;
pub mod limits;
pub mod record;
pub mod routed;
pub mod tunnel;
pub mod vhost;
