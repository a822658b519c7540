//! What outlives one snapshot: the outcome of configuration reloads (the last configuration
//! refused, the listeners a Gateway change could not open) and draining at shutdown.
//!
//! Draining costs the data path one relaxed load per request and, for a connection idle between
//! requests, one wait on a [`Notify`] of its own worker thread: the wake-up list it registers in
//! is never shared with another worker, so no lock is contended across connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Notify;

/// More than any machine's worker count in practice; beyond it, threads share a slot.
const WAKE_SLOTS: usize = 64;

/// Reload outcomes and the drain state, shared by every connection through [`crate::server::Shared`].
pub struct Lifecycle {
    draining: AtomicBool,
    /// Woken when draining starts; a thread always waits on the same slot.
    wakers: Box<[Notify]>,
    /// The last configuration a reload refused (the one in force stayed); `None` when none was.
    pub last_rejected: ArcSwapOption<Rejection>,
    /// The listeners the proxy runs or failed to open, for `/config_dump`.
    pub listeners: ArcSwap<Vec<ListenerState>>,
    /// CONNECT tunnels still relaying after their HTTP connection handed them off; draining
    /// waits for them as for connections.
    pub tunnels_active: AtomicU64,
}

/// A configuration a reload refused.
#[derive(Debug)]
pub struct Rejection {
    pub at: SystemTime,
    /// The generation that stayed in force.
    pub kept: u64,
    /// One line saying why.
    pub reason: String,
    /// The validation errors, placed on their files as `meshentry validate` prints them.
    pub findings: Vec<meshentry_api::Finding>,
}

/// A listener the proxy opened, or tried to.
#[derive(Clone, Debug)]
pub struct ListenerState {
    /// `http_proxy`, `outbound` or `gateway`.
    pub kind: &'static str,
    pub address: SocketAddr,
    /// Why it could not be opened.
    pub error: Option<String>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            draining: AtomicBool::new(false),
            wakers: (0..WAKE_SLOTS).map(|_| Notify::new()).collect(),
            last_rejected: ArcSwapOption::empty(),
            listeners: ArcSwap::from_pointee(Vec::new()),
            tunnels_active: AtomicU64::new(0),
        }
    }
}

impl Lifecycle {
    /// Whether the proxy is shutting down: HTTP/1 responses then close their connection.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts draining and wakes every connection waiting in [`Lifecycle::drained`]. `false`
    /// when draining had already started.
    pub fn start_drain(&self) -> bool {
        if self.draining.swap(true, Ordering::SeqCst) {
            return false;
        }
        for w in self.wakers.iter() {
            w.notify_waiters();
        }
        true
    }

    /// Resolves once draining has started (at once if it has).
    pub async fn drained(&self) {
        let notified = self.wakers[thread_slot()].notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a drain starting in between is not missed.
        notified.as_mut().enable();
        if self.draining.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

/// This thread's slot among [`Lifecycle`]'s wakers, fixed for the thread's life.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % WAKE_SLOTS;
    }
    SLOT.with(|s| *s)
}

/// Counts a CONNECT tunnel for as long as it relays.
pub struct TunnelGuard<'a>(&'a Lifecycle);

impl<'a> TunnelGuard<'a> {
    pub fn new(lifecycle: &'a Lifecycle) -> Self {
        lifecycle.tunnels_active.fetch_add(1, Ordering::Relaxed);
        Self(lifecycle)
    }
}

impl Drop for TunnelGuard<'_> {
    fn drop(&mut self) {
        self.0.tunnels_active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn drained_wakes_waiters_and_later_callers() {
        let l = Arc::new(Lifecycle::default());
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.drained().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "nothing drains yet");
        assert!(l.start_drain());
        assert!(!l.start_drain(), "a second start is not a new drain");
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the waiter is woken")
            .expect("the waiter does not panic");
        // One that starts waiting after the drain began returns at once.
        tokio::time::timeout(Duration::from_secs(1), l.drained())
            .await
            .expect("returns at once");
        assert!(l.is_draining());
    }
}
