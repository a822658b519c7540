//! Settings and identities every layer reads: the proxy configuration, response flags, the proxy's own addresses.

pub mod addr;
pub mod config;
pub mod flags;
pub mod loop_guard;

use std::sync::{Mutex, MutexGuard};

/// A mutex's guard even if a holder panicked: the data it guards (counters, caches, queues)
/// stays usable, and one panicking task must not take the proxy's bookkeeping down with it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
