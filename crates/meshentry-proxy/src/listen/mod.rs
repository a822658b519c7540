//! Accept loops: the DNS proxy, the explicit proxy, the transparent (captured) listener and the Gateway listeners.

pub mod dns;
pub mod gateway;
pub mod outbound;
pub mod reload;
pub mod server;
pub mod workers;
