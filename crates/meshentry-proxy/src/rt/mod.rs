//! Process lifetime: reload outcomes, draining at shutdown.

pub mod lifecycle;
pub mod memory;
pub mod shared;
