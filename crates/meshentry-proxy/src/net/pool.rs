//! The one idle-connection pool, for every kind of upstream connection (the fast path's raw
//! HTTP/1.1 streams, hyper's HTTP/1.1 senders), and the one sweeper that closes what has idled
//! too long or was closed by its upstream.
//!
//! Pools are per worker thread (`thread_local`), so taking a connection takes no lock shared
//! with other connections. Each kind of connection says what "still usable" means for it
//! ([`Pooled`]); the limits, the order (most recently used first), the idle timeout counting
//! and the sweeping are the same for all.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Idle connections kept per host per thread; beyond this, finished connections are closed.
pub const MAX_IDLE_PER_HOST: usize = 128;

/// How often idle pooled connections are looked at.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// An upstream connection that can wait in a [`Pool`].
pub trait Pooled: 'static {
    /// Whether it can take a request now (checked when it is taken out).
    fn ready(&mut self) -> bool;

    /// Whether it is still worth keeping (checked by the sweeper): its upstream has not
    /// closed it.
    fn open(&mut self) -> bool;
}

/// Sweeps one pool of this thread: closes what idled past the limit; returns how many are left.
pub type Sweep = fn(Instant, Duration) -> usize;

/// Idle connections by where they go (`K`: an upstream address and how it is dialled), most
/// recently checked in last.
pub struct Pool<K, C> {
    idle: RefCell<HashMap<K, Vec<(C, Instant)>>>,
}

impl<K, C: Pooled> Default for Pool<K, C> {
    fn default() -> Self {
        Self {
            idle: RefCell::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq, C: Pooled> Pool<K, C> {
    /// An idle connection to `addr` that can take a request now, if this thread has one.
    /// Those found idle past `max_idle` are closed and counted in `idle_closed`; ones no
    /// longer [`Pooled::ready`] are closed.
    pub fn checkout(&self, addr: &K, max_idle: Duration, idle_closed: &AtomicU64) -> Option<C> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(addr)?;
        while let Some((mut c, since)) = list.pop() {
            if since.elapsed() >= max_idle {
                idle_closed.fetch_add(1, Ordering::Relaxed);
            } else if c.ready() {
                return Some(c);
            }
        }
        None
    }

    /// Keeps `c` for the next request to `addr`, unless `addr` already has
    /// [`MAX_IDLE_PER_HOST`] waiting.
    pub fn checkin(&self, addr: K, c: C) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_HOST {
            list.push((c, Instant::now()));
        }
    }

    /// Closes the connections idle past `limit` or no longer [`Pooled::open`]; returns how
    /// many are left.
    pub fn sweep(&self, now: Instant, limit: Duration) -> usize {
        let mut idle = self.idle.borrow_mut();
        idle.retain(|_, list| {
            list.retain_mut(|(c, since)| now.duration_since(*since) < limit && c.open());
            !list.is_empty()
        });
        idle.values().map(Vec::len).sum()
    }
}

thread_local! {
    /// How long this thread's idle upstream connections are kept (`pool_idle_timeout`).
    static IDLE_LIMIT: Cell<Duration> = const { Cell::new(Duration::from_secs(60)) };
    /// The sweep of each pool this thread has checked a connection into.
    static SWEEPS: RefCell<Vec<Sweep>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread's sweeper is running.
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

/// Keeps this thread's pools swept while they hold connections: idle ones past `idle_limit`
/// are closed, and so are ones the upstream closed, instead of lingering (in CLOSE_WAIT,
/// holding a file descriptor) until a request happens to check them out. Called where
/// connections are used, with the sweep of the pool they go back to; the sweeper stops once
/// every pool is empty.
pub fn keep_swept(idle_limit: Duration, sweep: Sweep) {
    IDLE_LIMIT.with(|l| l.set(idle_limit));
    SWEEPS.with(|s| {
        let mut s = s.borrow_mut();
        if !s.contains(&sweep) {
            s.push(sweep);
        }
    });
    if SWEEPING.with(|s| s.replace(true)) {
        return;
    }
    tokio::spawn(async {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let limit = IDLE_LIMIT.with(Cell::get);
            let now = Instant::now();
            let sweeps: Vec<Sweep> = SWEEPS.with(|s| s.borrow().clone());
            let left: usize = sweeps.iter().map(|sweep| sweep(now, limit)).sum();
            if left == 0 {
                SWEEPING.with(|s| s.set(false));
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        ready: bool,
        open: bool,
    }

    impl Pooled for Fake {
        fn ready(&mut self) -> bool {
            self.ready
        }

        fn open(&mut self) -> bool {
            self.open
        }
    }

    fn fake(ready: bool, open: bool) -> Fake {
        Fake { ready, open }
    }

    fn dial(port: u16) -> u16 {
        port
    }

    #[test]
    fn checkout_takes_the_newest_ready_one_and_counts_the_expired() {
        let pool = Pool::<u16, Fake>::default();
        let closed = AtomicU64::new(0);
        pool.checkin(dial(1), fake(true, true));
        pool.checkin(dial(1), fake(false, true));
        assert!(pool.checkout(&dial(2), Duration::from_secs(60), &closed).is_none());
        // The newest is not ready: closed, and the older one is taken.
        assert!(pool.checkout(&dial(1), Duration::from_secs(60), &closed).is_some());
        assert!(pool.checkout(&dial(1), Duration::from_secs(60), &closed).is_none());
        pool.checkin(dial(1), fake(true, true));
        assert!(pool.checkout(&dial(1), Duration::ZERO, &closed).is_none());
        assert_eq!(closed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn at_most_max_idle_per_host_wait_and_the_sweep_drops_closed_and_old_ones() {
        let pool = Pool::<u16, Fake>::default();
        for _ in 0..MAX_IDLE_PER_HOST + 5 {
            pool.checkin(dial(1), fake(true, true));
        }
        pool.checkin(dial(2), fake(true, false));
        let now = Instant::now();
        assert_eq!(pool.sweep(now, Duration::from_secs(60)), MAX_IDLE_PER_HOST);
        assert_eq!(pool.sweep(now + Duration::from_secs(61), Duration::from_secs(60)), 0);
    }
}
