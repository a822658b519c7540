//! Sockets to upstreams and clients: connecting with TLS origination, pooling, failover, relaying bytes, DNS, protocol detection I/O, capture rules.

pub mod upstream;
pub mod relay;
pub mod detect;
pub mod dns;
pub mod tls;
pub mod capture;
pub mod forward;
