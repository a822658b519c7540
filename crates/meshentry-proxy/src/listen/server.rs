//! The accept loop every data-plane listener runs, with backoff and the connection limit.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;

use crate::base::addr::UNIX_PEER;
use crate::net::conn::Conn;
use crate::rt::shared::{Shared, Stats};

/// Accepts explicit-proxy connections until `shutdown` turns true.
pub async fn serve_http_proxy(listener: TcpListener, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    serve_listener(listener, shared, shutdown, crate::serve::h1::serve_connection).await;
}

/// A listening socket the accept loop takes connections from.
pub trait Listening: Send + 'static {
    type Stream: Conn;

    /// The next connection and its peer's address ([`UNIX_PEER`] for a unix socket).
    fn accept_conn(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;

    /// Its address, for logs.
    fn describe(&self) -> String;
}

impl Listening for TcpListener {
    type Stream = TcpStream;

    fn accept_conn(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        self.accept()
    }

    fn describe(&self) -> String {
        self.local_addr().map_or_else(|_| "?".to_string(), |a| a.to_string())
    }
}

impl Listening for UnixListener {
    type Stream = UnixStream;

    async fn accept_conn(&self) -> io::Result<(UnixStream, SocketAddr)> {
        let (stream, _) = self.accept().await?;
        Ok((stream, UNIX_PEER))
    }

    fn describe(&self) -> String {
        match self.local_addr() {
            Ok(a) => match a.as_pathname() {
                Some(p) => format!("unix://{}", p.display()),
                None => "unix socket".to_string(),
            },
            Err(_) => "?".to_string(),
        }
    }
}

/// The accept loop of every data-plane listener: each connection is admitted under
/// `--max-connections` (or closed at once) and served by `handle` on a task of its own, until
/// `shutdown` turns true. Accept failures back off ([`Acceptor`]).
pub async fn serve_listener<L, F, Fut>(listener: L, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>, handle: F)
where
    L: Listening,
    F: Fn(L::Stream, SocketAddr, Arc<Shared>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut acceptor = Acceptor::new(listener);
    loop {
        tokio::select! {
            (stream, peer) = acceptor.accept(&shared.stats) => {
                let Some(admitted) = shared.admit() else { continue };
                let conn = handle(stream, peer, shared.clone());
                tokio::spawn(async move {
                    conn.await;
                    drop(admitted);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// The first pause after an `accept` that failed for want of resources, doubled on each
/// failure in a row up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A listener's `accept` with backoff. When the process is out of file descriptors (EMFILE,
/// ENFILE) or kernel memory (ENOBUFS, ENOMEM), `accept` fails at once and the connection stays
/// queued, so retrying at once spins a core and logs a line per try; instead the listener
/// pauses (10 ms, doubling to 1 s) while connections wait in the kernel's queue, and resumes
/// as soon as an `accept` succeeds. One warning starts an episode and one line ends it.
pub struct Acceptor<L = TcpListener> {
    listener: L,
    /// The next pause, while an episode lasts.
    pause: Duration,
    /// Failures in the current episode, and when it began.
    failures: u64,
    since: Option<Instant>,
}

impl<L: Listening> Acceptor<L> {
    pub fn new(listener: L) -> Self {
        Self {
            listener,
            pause: BACKOFF_MIN,
            failures: 0,
            since: None,
        }
    }

    pub fn listener(&self) -> &L {
        &self.listener
    }

    /// The next connection; failures are counted in `stats.accept_errors` and waited out.
    /// Cancel-safe: a connection is only taken from the queue when it is returned.
    pub async fn accept(&mut self, stats: &Stats) -> (L::Stream, SocketAddr) {
        loop {
            match self.listener.accept_conn().await {
                Ok(conn) => {
                    if let Some(since) = self.since.take() {
                        tracing::info!(
                            listener = %self.local(), failures = self.failures, took_ms = since.elapsed().as_millis() as u64,
                            "accepting connections again"
                        );
                        self.failures = 0;
                        self.pause = BACKOFF_MIN;
                    }
                    return conn;
                }
                Err(e) => {
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(pause) = self.failed(&e) {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    /// How long to pause after `e`, if at all.
    fn failed(&mut self, e: &io::Error) -> Option<Duration> {
        if is_per_connection(e) {
            // That connection is gone; the next one may be fine.
            tracing::debug!(listener = %self.local(), error = %e, "accept failed for one connection");
            return None;
        }
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::warn!(
                listener = %self.local(), error = %e,
                "accept failed: backing off (10 ms, doubling to 1 s) until it succeeds; new connections wait in the listen queue"
            );
        }
        self.failures += 1;
        let pause = self.pause;
        self.pause = (self.pause * 2).min(BACKOFF_MAX);
        Some(pause)
    }

    fn local(&self) -> String {
        self.listener.describe()
    }
}

/// Errors `accept` returns about one connection that was already dead (Linux passes pending
/// network errors on, accept(2)); the listener itself is fine. Anything else, resource
/// exhaustion first of all, is waited out rather than retried at once.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::EPERM
                | libc::EINTR
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resource_errors_back_off_doubling_and_recover() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut a = Acceptor::new(listener);
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let pauses: Vec<_> = (0..9).map(|_| a.failed(&emfile).unwrap().as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        for errno in [libc::ENFILE, libc::ENOBUFS, libc::ENOMEM, libc::EINVAL] {
            assert!(a.failed(&io::Error::from_raw_os_error(errno)).is_some());
        }
        assert_eq!(a.failures, 13);
        assert!(a.failed(&io::Error::from_raw_os_error(libc::ECONNABORTED)).is_none());
        // A success ends the episode: the next failure starts from the shortest pause.
        let addr = a.listener().local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let stats = Stats::default();
        a.accept(&stats).await;
        assert_eq!((a.failures, a.since), (0, None));
        assert_eq!(a.failed(&emfile), Some(BACKOFF_MIN));
    }
}
