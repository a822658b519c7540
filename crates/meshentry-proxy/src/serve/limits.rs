//! Idle and header timeouts for client connections served by hyper (HTTP/1.1 past the fast
//! path, gateway listeners, HTTP/2), which has no notion of them that fits a proxy: its own
//! `header_read_timeout` starts as soon as the connection is idle, so it closes keep-alive
//! connections after the header timeout rather than the idle timeout, without a 408.
//!
//! [`Guarded`] wraps the client's stream and keeps the timers; the service tells it through
//! [`ConnState`] when a request is in flight (from its head until its response body has been
//! sent, see [`Tracked`]) and when the connection became a tunnel. The rules are the fast
//! path's ([`crate::serve::h1`]):
//! - a new connection must deliver its first request head within `--header-read-timeout`;
//! - between requests the connection may sit idle for `--idle-timeout`;
//! - a later head must be complete within `--header-read-timeout` of its first byte;
//! - nothing is timed while a request is in flight (upstream timeouts govern that) or once
//!   the connection is a tunnel (the relay's `--tcp-idle-timeout` governs that).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::rt::shared::Shared;
use crate::serve::ctx::Reply;

/// What the service knows about a connection and its stream wrapper needs.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Requests whose response has not been sent yet.
    in_flight: AtomicU32,
    /// Requests whose head has been read, so the wrapper sees a new head start.
    heads: AtomicU64,
    /// The connection was upgraded (CONNECT, 101): no HTTP timers any more.
    tunnel: AtomicBool,
    /// Bytes read since the current head started, to tell hyper's "head too large" from "too
    /// many headers" (it reports both alike).
    head_bytes: AtomicUsize,
    /// The connection task, to wake when its last request ends. The lock is this
    /// connection's alone.
    idle_waker: Mutex<Option<Waker>>,
}

impl ConnState {
    /// A request head has been read; the returned guard ends the request when dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.heads.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The connection carries a tunnel from now on.
    pub fn set_tunnel(&self) {
        self.tunnel.store(true, Ordering::Relaxed);
    }

    /// Bytes of the request head being read when hyper gave up on it.
    pub fn head_bytes(&self) -> usize {
        self.head_bytes.load(Ordering::Relaxed)
    }

    /// hyper reads again after a response only when the socket has bytes, so the idle timer
    /// would never be armed: the last request to end wakes the connection instead.
    fn wake_when_idle(&self, cx: &mut Context<'_>) {
        if self.tunnel.load(Ordering::Relaxed) {
            return;
        }
        let mut idle_waker = crate::base::lock(&self.idle_waker);
        if !idle_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *idle_waker = Some(cx.waker().clone());
        }
    }
}

/// A request in flight; dropped when its response body has been sent (or abandoned).
pub struct InFlight(Arc<ConnState>);

impl InFlight {
    /// The request's response made the connection a tunnel (CONNECT 2xx, 101).
    pub fn set_tunnel(&self) {
        self.0.set_tunnel();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            let waker = crate::base::lock(&self.0.idle_waker).take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// A response body that keeps its request in flight until hyper has sent (and dropped) it.
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Which timer is armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Armed {
    Header,
    Idle,
}

/// The client stream of a hyper-served connection, with the idle and header timers. A timer
/// that fires ends the connection with an error from `poll_read`; a header timeout first
/// writes a 408 when the client had started a head.
pub struct Guarded<I> {
    inner: I,
    shared: Arc<Shared>,
    state: Arc<ConnState>,
    /// HTTP/1 heads are timed; HTTP/2 connections only idle.
    time_heads: bool,
    /// When the head being awaited started (the accept for a first request, else its first
    /// byte); `None` while idle between requests.
    head_since: Option<Instant>,
    /// `ConnState::heads` when last looked at: a change means a head was completed.
    heads_seen: u64,
    /// The last time bytes moved either way.
    last: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<I> Guarded<I> {
    /// The connection wrote something: it is not idle.
    fn touched(&mut self) {
        self.last = Instant::now();
    }

    /// `time_heads`: HTTP/1 (a first head is awaited from now).
    pub fn new(inner: I, shared: Arc<Shared>, state: Arc<ConnState>, time_heads: bool) -> Self {
        let now = Instant::now();
        Self {
            inner,
            shared,
            state,
            time_heads,
            head_since: time_heads.then_some(now),
            heads_seen: 0,
            last: now,
            timer: None,
        }
    }

    /// What the timers should be after a read that returned `read` bytes.
    fn observe(&mut self, read: usize) {
        let heads = self.state.heads.load(Ordering::Relaxed);
        if heads != self.heads_seen {
            self.heads_seen = heads;
            self.head_since = None;
            self.state.head_bytes.store(0, Ordering::Relaxed);
        }
        if read == 0 {
            return;
        }
        self.last = Instant::now();
        if !self.time_heads || self.state.in_flight.load(Ordering::Relaxed) > 0 {
            return;
        }
        if self.head_since.is_none() {
            self.head_since = Some(self.last);
        }
        self.state.head_bytes.fetch_add(read, Ordering::Relaxed);
    }

    /// The armed timer and its deadline, if any should run.
    fn deadline(&self) -> Option<(Armed, Instant)> {
        if self.state.tunnel.load(Ordering::Relaxed) || self.state.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        match self.head_since {
            Some(since) if self.time_heads => Some((Armed::Header, since + self.shared.config.header_read_timeout)),
            _ => Some((Armed::Idle, self.last + self.shared.config.limits.idle_timeout)),
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let read = buf.filled().len() - before;
                this.observe(read);
                return Poll::Ready(r);
            }
            Poll::Pending => this.observe(0),
        }
        let Some((armed, deadline)) = this.deadline() else {
            this.state.wake_when_idle(cx);
            return Poll::Pending;
        };
        // Activity moves the deadline later without touching the timer; a timer that fires
        // early is pushed back then, so a busy connection pays no timer work per read.
        let timer = match &mut this.timer {
            Some(t) => {
                if t.deadline() > deadline {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => this.timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= deadline {
                break;
            }
            timer.as_mut().reset(deadline);
        }
        let stats = &this.shared.stats;
        let why = match armed {
            Armed::Idle => {
                stats.downstream_cx_idle_timeout.fetch_add(1, Ordering::Relaxed);
                "idle timeout"
            }
            Armed::Header => {
                stats.downstream_rq_header_timeout.fetch_add(1, Ordering::Relaxed);
                // Nothing is being written while a head is awaited, so the 408 cannot cut into
                // a response. One try: a client that cannot take a few bytes gets a close.
                let mut reply = Vec::new();
                Reply::head_timeout().closing(true).write(&mut reply);
                if this.state.head_bytes() > 0
                    && let Poll::Ready(Ok(n)) = Pin::new(&mut this.inner).poll_write(cx, &reply)
                    && n == reply.len()
                {
                    let _ = Pin::new(&mut this.inner).poll_flush(cx);
                }
                "request header timeout"
            }
        };
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
    }
}

write_through!(Guarded, touched);

/// Hyper's smallest allowed read buffer (`max_buf_size` panics below it).
const HYPER_MIN_BUF: usize = 8192;

/// hyper's read buffer bound for a head limit: room for the head plus the start of a body.
pub fn hyper_buf_size(max_head_bytes: usize) -> usize {
    (max_head_bytes + 16 * 1024).max(HYPER_MIN_BUF)
}
