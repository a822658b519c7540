//! Polling instead of sleeping: tests wait for a condition with a deadline, never a fixed delay.

use std::fmt::Debug;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How often [`eventually`] re-checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A check's outcome for [`eventually`]: `true`, `Some(v)` or `Ok(v)` mean done.
pub trait Outcome {
    /// What [`eventually`] returns once the check passes.
    type Value;
    /// `Err` carries a description of why the check has not passed yet, for the failure message.
    fn into_result(self) -> Result<Self::Value, String>;
}

impl Outcome for bool {
    type Value = ();
    fn into_result(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("condition was false".into())
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(|| "condition was None".into())
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

/// Calls `check` every 20 ms until it passes (`true`, `Some`, `Ok`) and returns its value; panics
/// with the last failure if `timeout` of wall-clock time passes first.
///
/// The deadline is real time rather than tokio time on purpose: under `tokio::time::pause` the
/// clock jumps whenever the runtime is idle, which would expire a tokio deadline while real I/O
/// (a proxy reloading, a socket connecting) is still in flight.
pub async fn eventually<F, Fut, O>(timeout: Duration, mut check: F) -> O::Value
where
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
    O: Outcome,
{
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match check().await.into_result() {
            Ok(v) => return v,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("eventually: not true after {timeout:?} ({attempts} attempts): {last}");
                }
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Calls `read` every 20 ms until its value has stayed the same for `quiet` of wall-clock
/// time, and returns that value; panics if it is still changing after `timeout`.
///
/// For claims that something does *not* happen (no more upstream requests after the client
/// went away): the count is taken once work in flight has landed, however long that takes,
/// instead of after a fixed delay that a slow machine may not cover.
pub async fn settled<F, Fut, T>(quiet: Duration, timeout: Duration, mut read: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
    T: PartialEq + Debug,
{
    let deadline = Instant::now() + timeout;
    let mut last = read().await;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = read().await;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return last;
        }
        if Instant::now() >= deadline {
            panic!("settled: still changing after {timeout:?} (last {last:?})");
        }
    }
}

/// Ports [`free_port`] and [`crate::closed_port`] pick from: below Linux's ephemeral range
/// (32768-60999 by default), so a socket bound to port 0 anywhere on the machine (`0.0.0.0:0` in
/// another process's test) is never handed the port we just chose; and above the fixed ports
/// tests bind on purpose (80, 443, 8080, 15001, ...).
const PICK_RANGE: std::ops::Range<u32> = 20_000..32_000;

/// Returns a port in [`PICK_RANGE`] that `ip` can bind at the moment, trying ports in an order
/// that differs per call so concurrent callers rarely probe the same one.
pub(crate) fn pick_port(ip: IpAddr) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = PICK_RANGE.end - PICK_RANGE.start;
    let start = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729));
    for i in 0..span {
        // The range ends below 32000, so the port fits in a u16.
        let port = (PICK_RANGE.start + start.wrapping_add(i) % span) as u16;
        if TcpListener::bind(SocketAddr::new(ip, port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind(SocketAddr::new(ip, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
        .port()
}

/// A TCP port on `ip` that nothing listened on at the time of the call.
///
/// Meant for addresses from [`crate::unique_loopback`], which only the calling test uses, so the
/// port stays free until the test binds it. It is outside the ephemeral range, so no other
/// process's bind to port 0 takes it in the meantime.
pub fn free_port(ip: impl Into<IpAddr>) -> u16 {
    pick_port(ip.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_the_check_passes() {
        let calls = AtomicU32::new(0);
        let v = eventually(Duration::from_secs(5), || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            (n >= 3).then_some(n)
        })
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "not true after")]
    async fn panics_with_the_last_error_after_the_timeout() {
        eventually(Duration::from_millis(100), || async { Err::<(), _>("nope") }).await;
    }

    #[tokio::test]
    async fn settled_waits_for_the_value_to_stop_changing() {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let v = settled(Duration::from_millis(100), Duration::from_secs(5), || async {
            calls.fetch_add(1, Ordering::SeqCst).min(5)
        })
        .await;
        assert_eq!(v, 5);
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_real_time_even_when_tokio_time_is_paused() {
        let start = Instant::now();
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            f.store(true, Ordering::SeqCst);
        });
        eventually(Duration::from_secs(5), || async { flag.load(Ordering::SeqCst) }).await;
        assert!(start.elapsed() >= Duration::from_millis(200));
    }
}
