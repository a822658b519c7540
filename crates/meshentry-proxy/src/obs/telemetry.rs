//! What happened to each request and connection, gathered on the data path and handed to the
//! Istio metrics ([`crate::obs::metrics`]) and the access log ([`crate::obs::access_log`]) when it ends.
//!
//! An HTTP request's story is written by many hands (routing, VirtualService rules, failover,
//! the upstream exchange), so each request runs inside a task-local [`Outcome`] that any of
//! them can [`note`] into without new parameters or allocations; the request's entry point
//! takes it back when the handler returns. On the hyper path the response body is wrapped in
//! [`Metered`], which finishes the record when the last byte is sent (or the client goes away);
//! the fast path finishes it itself. TCP connections use a [`TcpConn`] that records when it is
//! dropped, so every early return is counted too.

use std::cell::RefCell;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::Version;

use crate::base::config::ProxyConfig;
use crate::base::flags::Flags;
use crate::model::cluster::{Cluster, HostAddr};
use crate::obs::access_log::AccessLog;
use crate::obs::metrics::{DestId, Metrics, Source};
use crate::route::Decision;

/// A proxy's metrics and (once `--access-log` opened it) access log.
pub struct Telemetry {
    pub metrics: Metrics,
    access_log: OnceLock<AccessLog>,
}

impl Telemetry {
    pub fn new(config: &ProxyConfig) -> Telemetry {
        Telemetry {
            metrics: Metrics::new(Source::of(config)),
            access_log: OnceLock::new(),
        }
    }

    /// Turns the access log on; `Err` gives it back when one is already set.
    pub fn set_access_log(&self, log: AccessLog) -> Result<(), AccessLog> {
        self.access_log.set(log)
    }

    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.get()
    }

    /// Writes out buffered access log lines (at shutdown).
    pub fn flush(&self) {
        if let Some(log) = self.access_log.get() {
            log.flush();
        }
    }
}

// === Where traffic went ===

/// The cluster a request or connection was routed to, as metrics and logs name it.
#[derive(Clone, Default)]
pub enum Routed {
    /// Not routed (refused first, or no virtual host).
    #[default]
    Unknown,
    Passthrough,
    BlackHole,
    Cluster(Arc<Cluster>),
}

impl Routed {
    pub fn of(decision: &Decision<'_>) -> Routed {
        match decision {
            Decision::Cluster { cluster, .. } => Routed::Cluster((*cluster).clone()),
            Decision::Passthrough => Routed::Passthrough,
            Decision::Blocked => Routed::BlackHole,
        }
    }

    pub fn dest(&self) -> DestId {
        match self {
            Routed::Unknown => DestId::UNKNOWN,
            Routed::Passthrough => DestId::PASSTHROUGH,
            Routed::BlackHole => DestId::BLACKHOLE,
            Routed::Cluster(c) => c.dest,
        }
    }

    /// `%UPSTREAM_CLUSTER%`.
    pub fn cluster_name(&self) -> &str {
        match self {
            Routed::Unknown => "",
            Routed::Passthrough => "PassthroughCluster",
            Routed::BlackHole => "BlackHoleCluster",
            Routed::Cluster(c) => &c.name,
        }
    }

    /// `%ROUTE_NAME%` when no VirtualService rule named the route: Istio's names for its
    /// built-in routes.
    pub(crate) fn default_route(&self) -> &'static str {
        match self {
            Routed::Unknown => "",
            Routed::Passthrough => "allow_any",
            Routed::BlackHole => "block_all",
            Routed::Cluster(_) => "default",
        }
    }
}

// === HTTP requests ===

/// What became of one request.
#[derive(Default)]
pub struct Outcome {
    pub routed: Routed,
    pub flags: Flags,
    /// The status the client got (the fast path sets it; the hyper path reads the response).
    pub code: u16,
    /// `%RESPONSE_CODE_DETAILS%`; empty means `via_upstream` when an upstream answered.
    pub details: &'static str,
    /// The endpoint the request went to (the last one tried). Noted only when the access log
    /// is on, the one reader of it and of the upstream time derived from it.
    pub upstream: Option<HostAddr>,
    /// Why the TLS this proxy originated failed.
    pub transport_failure: Option<String>,
    /// The VirtualService rule's name, when one routed the request and the log is on.
    pub route: Option<Box<str>>,
    /// A CONNECT that became a tunnel: counted as a TCP connection, not a request.
    pub tunnel: bool,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// How long the upstream took to send its response head.
    pub upstream_time: Option<Duration>,
    /// When the upstream's response head arrived (the fast path's way to say the above).
    pub head_at: Option<Instant>,
    /// The request is answered by the proxy itself (no upstream response).
    pub local: bool,
}

impl Outcome {
    /// A refusal or failure: the flags, and details unless already set.
    pub fn fail(&mut self, flags: Flags, details: &'static str) {
        self.flags |= flags;
        self.local = true;
        if self.details.is_empty() {
            self.details = details;
        }
    }
}

// The outcomes of the requests a worker thread is handling live in a per-thread slab; the
// task-local holds only where this request's is. tokio swaps a task-local's value in and out
// of its slot on every poll, so a small value there instead of the whole `Outcome` (some 200
// bytes) saves several hundred instructions per request (callgrind), and the slab's slots are
// reused, so no request allocates one.
tokio::task_local! {
    static CURRENT: Slot;
}

/// Where a request's outcome is in its thread's slab; `token` tells a slot reused by another
/// request (or a task that moved to another thread's slab: only current-thread runtimes keep a
/// task on one thread) from this request's.
#[derive(Clone, Copy)]
pub(crate) struct Slot {
    index: usize,
    token: u64,
}

#[derive(Default)]
struct Slab {
    outcomes: Vec<(u64, Outcome)>,
    free: Vec<usize>,
    next_token: u64,
}

thread_local! {
    static SLAB: RefCell<Slab> = RefCell::new(Slab::default());
}

impl Slab {
    fn take(&mut self) -> Slot {
        self.next_token += 1;
        let token = self.next_token;
        let index = match self.free.pop() {
            Some(i) => {
                self.outcomes[i].0 = token;
                i
            }
            None => {
                self.outcomes.push((token, Outcome::default()));
                self.outcomes.len() - 1
            }
        };
        Slot { index, token }
    }

    fn get(&mut self, slot: Slot) -> Option<&mut Outcome> {
        match self.outcomes.get_mut(slot.index) {
            Some((token, outcome)) if *token == slot.token => Some(outcome),
            _ => None,
        }
    }

    /// Resets the outcome and frees the slot.
    fn clear(&mut self, slot: Slot) {
        if let Some(outcome) = self.get(slot) {
            *outcome = Outcome::default();
            self.outcomes[slot.index].0 = 0;
            self.free.push(slot.index);
        }
    }

    /// Takes the outcome out and frees the slot.
    fn release(&mut self, slot: Slot) -> Outcome {
        match self.get(slot).map(std::mem::take) {
            Some(outcome) => {
                self.outcomes[slot.index].0 = 0;
                self.free.push(slot.index);
                outcome
            }
            None => Outcome::default(),
        }
    }
}

/// Frees the slot when the request is done, or dropped half-way (a client that went away).
struct Held(Slot);

impl Drop for Held {
    fn drop(&mut self) {
        let _ = SLAB.try_with(|slab| {
            if let Ok(mut slab) = slab.try_borrow_mut() {
                slab.clear(self.0);
            }
        });
    }
}

/// A slot of this thread's slab for a new request, if the slab can be reached (not during
/// thread teardown).
pub(crate) fn take_slot() -> Option<Slot> {
    SLAB.try_with(|slab| slab.borrow_mut().take()).ok()
}

/// Takes the outcome out of `slot` and frees it (a default outcome if the slot was reused or
/// the slab cannot be reached).
pub(crate) fn release_slot(slot: Slot) -> Outcome {
    SLAB.try_with(|slab| slab.try_borrow_mut().map(|mut s| s.release(slot)).unwrap_or_default())
        .unwrap_or_default()
}

/// Runs `fut` with `slot` as the outcome [`note`] writes to.
pub(crate) async fn in_slot<F: Future>(slot: Slot, fut: F) -> F::Output {
    CURRENT.scope(slot, fut).await
}

/// Adds to the outcome of the request being handled; does nothing outside one (mirrors, TCP).
pub fn note(f: impl FnOnce(&mut Outcome)) {
    let _ = CURRENT.try_with(|slot| {
        let _ = SLAB.try_with(|slab| {
            if let Ok(mut slab) = slab.try_borrow_mut()
                && let Some(outcome) = slab.get(*slot)
            {
                f(outcome);
            }
        });
    });
}

/// Runs `fut` as one request, and leaves its outcome in its slot, to be read in
/// place through [`Recorded::with`]: the fast path's way, which saves copying the outcome (some
/// 200 bytes) out of the slab and on through its callers.
pub async fn scoped_in_place<F: Future>(fut: F) -> (F::Output, Recorded) {
    let Ok(slot) = SLAB.try_with(|slab| slab.borrow_mut().take()) else {
        return (fut.await, Recorded(None));
    };
    let held = Held(slot);
    let out = CURRENT.scope(slot, fut).await;
    (out, Recorded(Some(held)))
}

/// A finished request's outcome, still in its slab slot; the slot is freed when this is dropped.
pub struct Recorded(Option<Held>);

impl Recorded {
    /// Runs `f` on the outcome (a default one if the slab was unavailable). The slab is
    /// borrowed meanwhile: `f` must not [`note`] (it would do nothing).
    pub fn with(&self, f: impl FnOnce(&mut Outcome)) {
        let mut f = Some(f);
        if let Some(held) = &self.0 {
            let _ = SLAB.try_with(|slab| {
                if let Ok(mut slab) = slab.try_borrow_mut()
                    && let Some(outcome) = slab.get(held.0)
                    && let Some(f) = f.take()
                {
                    f(outcome);
                }
            });
        }
        if let Some(f) = f {
            f(&mut Outcome::default());
        }
    }
}

/// The request line and headers the access log prints, borrowed from wherever the request is.
#[derive(Default)]
pub struct RequestLine<'a> {
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub protocol: &'a str,
    pub authority: &'a [u8],
    pub user_agent: &'a [u8],
    pub forwarded_for: &'a [u8],
    pub request_id: &'a [u8],
}

/// `HTTP/1.1` and the like, as `%PROTOCOL%` prints the request's version.
pub fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The outcome copied out: what the tests compare.
    /// Runs `fut` as one request, returning its output and its outcome.
    async fn scoped<F: Future>(fut: F) -> (F::Output, Outcome) {
        let Ok(slot) = SLAB.try_with(|slab| slab.borrow_mut().take()) else {
            return (fut.await, Outcome::default());
        };
        let held = Held(slot);
        let out = CURRENT.scope(slot, fut).await;
        let outcome = SLAB
            .try_with(|slab| slab.borrow_mut().release(held.0))
            .unwrap_or_default();
        std::mem::forget(held);
        (out, outcome)
    }

    /// Requests interleaved on one thread each get their own outcome, and a request dropped
    /// half-way frees its slot for the next.
    #[tokio::test]
    async fn interleaved_requests_keep_their_own_outcomes() {
        let (tx_a, rx_a) = tokio::sync::oneshot::channel::<()>();
        let (tx_b, rx_b) = tokio::sync::oneshot::channel::<()>();
        let a = scoped(async {
            note(|o| o.code = 201);
            let _ = rx_a.await;
            note(|o| o.bytes_sent = 10);
        });
        let b = scoped(async {
            note(|o| o.code = 404);
            let _ = rx_b.await;
            note(|o| o.bytes_sent = 20);
        });
        let both = async {
            tokio::task::yield_now().await;
            let _ = tx_b.send(());
            let _ = tx_a.send(());
        };
        let (((), a), ((), b), ()) = tokio::join!(a, b, both);
        assert_eq!((a.code, a.bytes_sent), (201, 10));
        assert_eq!((b.code, b.bytes_sent), (404, 20));

        // Dropped before it finishes: its slot is freed, and a later request starts afresh.
        let (_never_tx, never) = tokio::sync::oneshot::channel::<()>();
        let dropped = scoped(async {
            note(|o| o.code = 500);
            let _ = never.await;
        });
        let _ = tokio::time::timeout(std::time::Duration::from_millis(10), dropped).await;
        let ((), c) = scoped(async {}).await;
        assert_eq!(c.code, 0, "a reused slot starts from a fresh outcome");
        let free = SLAB.with(|s| s.borrow().free.len());
        let used = SLAB.with(|s| s.borrow().outcomes.len());
        assert_eq!(free, used, "every slot is free again");

        // Outside a request, note does nothing.
        note(|o| o.code = 999);
    }

    /// The fast path's variant reads the outcome where it is, and frees the slot when done.
    #[tokio::test]
    async fn scoped_in_place_reads_the_outcome_in_its_slot() {
        let (out, recorded) = scoped_in_place(async {
            note(|o| o.code = 204);
            note(|o| o.bytes_sent += 7);
            5
        })
        .await;
        assert_eq!(out, 5);
        let mut seen = (0, 0);
        recorded.with(|o| seen = (o.code, o.bytes_sent));
        assert_eq!(seen, (204, 7));
        drop(recorded);
        let ((), next) = scoped(async {}).await;
        assert_eq!(next.code, 0, "the slot was reset before its reuse");
        let free = SLAB.with(|s| s.borrow().free.len());
        let used = SLAB.with(|s| s.borrow().outcomes.len());
        assert_eq!(free, used, "every slot is free again");
    }
}
