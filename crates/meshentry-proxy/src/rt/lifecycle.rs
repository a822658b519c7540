//! What outlives one snapshot: the outcome of configuration reloads (the last configuration
//! refused, the listeners a Gateway change could not open) and draining at shutdown.
//!
//! Draining costs the data path one relaxed load per request and, for a connection idle between
//! requests, one wait on a [`Notify`] of its own worker thread: the wake-up list it registers in
//! is never shared with another worker, so no lock is contended across connections. The fast
//! path registers once per connection ([`DrainWatch`]), not once per wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// More than any machine's worker count in practice; beyond it, threads share a slot.
const WAKE_SLOTS: usize = 64;

/// Reload outcomes and the drain state, shared by every connection through [`crate::rt::shared::Shared`].
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
    /// How reading a live configuration source (a Kubernetes API server) goes; `None` when the
    /// configuration is files only.
    pub source: ArcSwapOption<SourceState>,
    /// The errors of the objects from the live source that the configuration in force skipped
    /// (each invalid object is left out on its own, as istiod leaves it out).
    pub skipped: ArcSwap<Vec<meshentry_api::Finding>>,
}

/// A live configuration source, as `/config_dump` and the metrics show it.
#[derive(Clone, Debug, Default)]
pub struct SourceState {
    /// `kubernetes`.
    pub kind: &'static str,
    /// The API server's address.
    pub server: String,
    /// The first full sync is done.
    pub synced: bool,
    /// Every watch is established; when `false` the configuration in force is the last one
    /// read (stale, not empty).
    pub connected: bool,
    /// The latest failure while not connected.
    pub error: Option<String>,
    pub failing_since: Option<SystemTime>,
    pub synced_at: Option<SystemTime>,
    /// Attempts that failed, lists after a kind's first, and 410 Gone answers, so far.
    pub failures: u64,
    pub relists: u64,
    pub gone: u64,
    /// The objects read, and the version of what was read (bumped per change).
    pub objects: usize,
    pub version: u64,
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
    pub address: crate::base::addr::ListenAddr,
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
            source: ArcSwapOption::empty(),
            skipped: ArcSwap::from_pointee(Vec::new()),
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

/// A connection's wake-up for draining while it is idle between requests, for a loop that
/// waits many times (the fast path waits once per keep-alive request).
///
/// [`Lifecycle::drained`] registers a new waiter each time it is called, which costs a lock,
/// a wake-up list insertion and removal per wait. This one registers once, the first time the
/// connection waits, and stays registered; a later wait by the same task only reads the flag
/// and compares wakers, and registers anew only if the task's waker changed.
pub struct DrainWatch<'a> {
    lifecycle: &'a Lifecycle,
    /// Made when the connection first waits (most connections of a busy client never do).
    notified: Option<Pin<Box<Notified<'a>>>>,
    /// The waker `notified` will wake.
    waker: Option<Waker>,
}

impl<'a> DrainWatch<'a> {
    pub fn new(lifecycle: &'a Lifecycle) -> Self {
        Self {
            lifecycle,
            notified: None,
            waker: None,
        }
    }

    /// Ready once draining has started; when pending, the task is woken when it starts.
    pub fn poll_drained(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.lifecycle.is_draining() {
            return Poll::Ready(());
        }
        if self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // Registered with this task's waker, and still waiting: `start_drain` sets the
            // flag before it wakes, so a woken task sees it above.
            return Poll::Pending;
        }
        let lifecycle = self.lifecycle;
        let notified = self.notified.get_or_insert_with(|| {
            let mut n = Box::pin(lifecycle.wakers[thread_slot()].notified());
            n.as_mut().enable();
            n
        });
        // Registered before the flag is read again, so a drain starting in between is not
        // missed.
        if lifecycle.draining.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        match notified.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
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

    /// A connection that waits many times registers once and is still woken, also after its
    /// task's waker changed.
    #[tokio::test]
    async fn drain_watch_wakes_a_connection_waiting_again_and_again() {
        let l = Arc::new(Lifecycle::default());
        let waiter = tokio::spawn({
            let l = l.clone();
            async move {
                let mut watch = DrainWatch::new(&l);
                // Several idle waits that end before draining (as between requests).
                for _ in 0..3 {
                    let mut polls = 0;
                    std::future::poll_fn(|cx| {
                        polls += 1;
                        if polls == 2 {
                            return Poll::Ready(());
                        }
                        assert!(watch.poll_drained(cx).is_pending());
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    })
                    .await;
                }
                // Polled once through another waker (a different task context), then waits for good.
                let other = Waker::noop();
                assert!(watch.poll_drained(&mut Context::from_waker(other)).is_pending());
                std::future::poll_fn(|cx| watch.poll_drained(cx)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "nothing drains yet");
        assert!(l.start_drain());
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the waiter is woken")
            .expect("the waiter does not panic");
        // A watch made after the drain began is ready at once.
        let mut late = DrainWatch::new(&l);
        assert!(late.poll_drained(&mut Context::from_waker(Waker::noop())).is_ready());
    }
}
