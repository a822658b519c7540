//! Sockets to upstreams and clients: connecting with TLS origination, pooling, failover, relaying bytes, DNS, protocol detection I/O, capture rules.

pub mod body;
pub mod capture;
pub mod conn;
pub mod detect;
pub mod forward;
pub mod pool;
pub mod relay;
pub mod upstream;
