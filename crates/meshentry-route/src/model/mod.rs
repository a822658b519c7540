//! What a snapshot holds: clusters and load balancing, VirtualService route tables, the Gateway model, and the snapshot built from resources.

pub mod cluster;
pub mod dest;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod gateway;
pub mod key;
pub mod lb;
pub mod names;
pub mod snapshot;
pub mod tls;
pub mod vs;
