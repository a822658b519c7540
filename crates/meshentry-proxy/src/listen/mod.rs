//! Accept loops: the explicit proxy, the transparent (captured) listener and the Gateway listeners.

pub mod server;
pub mod outbound;
pub mod gateway;
