//! Settings and identities every layer reads: the proxy configuration, response flags, the proxy's own addresses.

pub mod addr;
pub mod config;
pub mod flags;
pub mod loop_guard;
