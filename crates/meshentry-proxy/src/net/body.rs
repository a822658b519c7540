//! Bodies the hyper path relays for someone else, watched as Envoy's HTTP connection manager
//! watches them: a client's request body that breaks (a malformed chunk is the client's
//! error, not the upstream's) or stops arriving, and an upstream's response body that stops
//! arriving (`stream_idle_timeout`).
//!
//! A request body is read by the upstream connection's task, not by the request's handler, and
//! hyper reports its failure to the handler as the upstream exchange failing. [`ClientBody`]
//! leaves what went wrong in a [`BodyWatch`] the handler keeps, so the handler answers for the
//! client (400, 408) instead of blaming the upstream (502).

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::rt::shared::Shared;

/// Why a client's request body did not arrive whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFault {
    /// It broke HTTP/1.1 framing (a chunk size that is not hex, a chunk without its CRLF,
    /// trailers over hyper's limit): answered 400, DPE.
    Malformed,
    /// No byte of it arrived for `--stream-idle-timeout`: answered 408, SI.
    Idle,
    /// The client closed or reset the connection (or its HTTP/2 stream) part-way: DC.
    Gone,
}

impl BodyFault {
    fn code(self) -> u8 {
        match self {
            BodyFault::Malformed => 1,
            BodyFault::Idle => 2,
            BodyFault::Gone => 3,
        }
    }

    fn from_code(code: u8) -> Option<BodyFault> {
        match code {
            1 => Some(BodyFault::Malformed),
            2 => Some(BodyFault::Idle),
            3 => Some(BodyFault::Gone),
            _ => None,
        }
    }

    /// What a body error of hyper's says about the client: framing errors are `InvalidData`
    /// or `InvalidInput` from hyper's decoder; anything else (an early EOF, a reset, an HTTP/2
    /// stream error) means the client did not stay to send the rest.
    fn of(e: &hyper::Error) -> BodyFault {
        let mut cause = e.source();
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<io::Error>() {
                return match io.kind() {
                    io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => BodyFault::Malformed,
                    _ => BodyFault::Gone,
                };
            }
            cause = c.source();
        }
        BodyFault::Gone
    }
}

/// Where a [`ClientBody`] leaves its fault for the request's handler. Empty bodies (most
/// requests) cannot fail and share no state.
#[derive(Clone, Debug, Default)]
pub struct BodyWatch(Option<Arc<AtomicU8>>);

impl BodyWatch {
    /// What went wrong with the body, if anything did.
    pub fn fault(&self) -> Option<BodyFault> {
        BodyFault::from_code(self.0.as_ref()?.load(Ordering::Acquire))
    }

    fn set(&self, fault: BodyFault) {
        if let Some(cell) = &self.0 {
            cell.store(fault.code(), Ordering::Release);
        }
    }
}

/// The error a [`ClientBody`] ends with: hyper hands it to the upstream exchange, which fails.
#[derive(Debug)]
pub struct ClientBodyError {
    pub fault: BodyFault,
    source: Option<hyper::Error>,
}

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.fault {
            BodyFault::Malformed => f.write_str("the client's request body is malformed"),
            BodyFault::Idle => f.write_str("the client's request body stopped arriving (stream idle timeout)"),
            BodyFault::Gone => f.write_str("the client went away before its request body ended"),
        }
    }
}

impl StdError for ClientBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_ref().map(|e| e as &(dyn StdError + 'static))
    }
}

/// A response body that went without a byte for `--stream-idle-timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no byte of the response body for {0:?} (stream idle timeout)")]
pub struct StreamIdle(pub Duration);

/// Times a body's silences: armed when a poll finds nothing to read, disarmed by the next
/// frame. Only the wait for the sender counts: while the reader is not polling (its own peer
/// is slow to take bytes), no time runs.
pub(crate) struct IdleTimer {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl IdleTimer {
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            limit,
            sleep: None,
            waiting: false,
        }
    }

    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// A frame arrived.
    pub(crate) fn progressed(&mut self) {
        self.waiting = false;
    }

    /// The body had nothing to give: whether it has now been silent for the limit. Arms the
    /// timer (waking `cx` when it fires) on the first silent poll after progress.
    pub(crate) fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.waiting {
            self.waiting = true;
            let deadline = Instant::now() + self.limit;
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.sleep.as_mut().is_some_and(|s| s.as_mut().poll(cx).is_ready())
    }
}

/// A client's request body on its way upstream, with its faults recorded in a [`BodyWatch`]
/// and its silences timed (`--stream-idle-timeout`).
pub struct ClientBody {
    inner: Incoming,
    watch: BodyWatch,
    timer: IdleTimer,
    /// For counting an idle timeout where it happens: it may end the request after its
    /// response started, when no handler is left to count it.
    shared: Option<Arc<Shared>>,
    ended: bool,
}

impl ClientBody {
    /// Wraps `inner` and returns the watch its faults go to.
    pub fn new(inner: Incoming, shared: &Arc<Shared>) -> (ClientBody, BodyWatch) {
        let empty = inner.is_end_stream();
        let watch = if empty {
            BodyWatch::default()
        } else {
            BodyWatch(Some(Arc::default()))
        };
        let body = ClientBody {
            inner,
            watch: watch.clone(),
            timer: IdleTimer::new(shared.config.limits.stream_idle_timeout),
            shared: (!empty).then(|| shared.clone()),
            ended: false,
        };
        (body, watch)
    }

    fn fail(&mut self, fault: BodyFault, source: Option<hyper::Error>) -> ClientBodyError {
        self.ended = true;
        self.watch.set(fault);
        ClientBodyError { fault, source }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer.progressed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let fault = BodyFault::of(&e);
                Poll::Ready(Some(Err(this.fail(fault, Some(e)))))
            }
            Poll::Pending => {
                if !this.timer.expired(cx) {
                    return Poll::Pending;
                }
                if let Some(shared) = &this.shared {
                    shared.stats.downstream_rq_idle_timeout.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(limit = ?this.timer.limit, "request body idle: request ended");
                }
                Poll::Ready(Some(Err(this.fail(BodyFault::Idle, None))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_timer_runs_only_while_waiting_and_restarts_after_progress() {
        let ms = Duration::from_millis;
        let mut timer = IdleTimer::new(ms(300));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(!timer.expired(&mut cx));
        tokio::time::sleep(ms(200)).await;
        assert!(!timer.expired(&mut cx));
        timer.progressed();
        tokio::time::sleep(ms(200)).await;
        // Re-armed by this poll: 400 ms since the first wait began, but a new wait.
        assert!(!timer.expired(&mut cx));
        tokio::time::sleep(ms(400)).await;
        assert!(timer.expired(&mut cx));
    }

    #[test]
    fn faults_round_trip_through_the_watch() {
        let watch = BodyWatch(Some(Arc::default()));
        assert_eq!(watch.fault(), None);
        for f in [BodyFault::Malformed, BodyFault::Idle, BodyFault::Gone] {
            watch.set(f);
            assert_eq!(watch.fault(), Some(f));
        }
        let empty = BodyWatch::default();
        empty.set(BodyFault::Idle);
        assert_eq!(empty.fault(), None, "an empty body has no watch to fail");
    }
}
