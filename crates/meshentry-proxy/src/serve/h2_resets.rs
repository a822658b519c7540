//! Bounds on the work one HTTP/2 client connection can cause by opening streams and resetting
//! them at once (CVE-2023-44487, "rapid reset").
//!
//! A reset costs the client one frame; without a bound, each reset stream can cost the proxy a
//! task, routing and an upstream connection or request. h2 (under hyper) bounds only resets of
//! streams that were not yet accepted when their RST_STREAM was read (20 at a time, then GOAWAY
//! ENHANCE_YOUR_CALM); a client that paces its pairs so that each stream is accepted before its
//! reset is read never meets that limit. So:
//! - a stream is looked at twice for its client's reset before the proxy acts on it
//!   ([`cancellation_point`]): one reset read with or right after its HEADERS reaches nothing
//!   upstream;
//! - each connection has a [`Budget`] of premature resets, Envoy's notion (a stream the client
//!   reset within a second of opening it, before its response started): a token bucket of
//!   `--http2-max-premature-resets` that refills at a tenth of that per second. A connection
//!   that overdraws it is closed with GOAWAY ENHANCE_YOUR_CALM ([`Calm`] writes it).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::rt::shared::Shared;

/// Envoy's `overload.premature_reset_min_stream_lifetime_seconds` default: a reset this soon
/// after the stream opened is premature; a later one is an ordinary cancellation.
const PREMATURE: Duration = Duration::from_secs(1);

/// Gives hyper the chance to drop a stream's future for its client's RST_STREAM before the
/// proxy does anything for it. hyper looks for the reset only while the future is pending, and
/// polls the future before it looks: the first return catches a reset read in the same batch as
/// the stream's HEADERS; `yield_now` wakes the task only after the runtime polled its I/O
/// driver, so the connection task has read whatever arrived meanwhile by the second return.
pub(crate) async fn cancellation_point() {
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
}

/// A connection's allowance of premature resets (a token bucket), and the signal that it was
/// overdrawn.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Tokens left and when they were last topped up.
    bucket: Mutex<(f64, Instant)>,
    capacity: f64,
    per_second: f64,
    exceeded: Notify,
    /// The connection is being closed for overdrawing: [`Calm`] sends the GOAWAY.
    aborting: AtomicBool,
}

impl Budget {
    /// `max` premature resets at once, refilling at `max / 10` a second.
    pub fn new(max: u32) -> Arc<Self> {
        let capacity = f64::from(max.max(1));
        Arc::new(Self {
            bucket: Mutex::new((capacity, Instant::now())),
            capacity,
            per_second: capacity / 10.0,
            exceeded: Notify::new(),
            aborting: AtomicBool::new(false),
        })
    }

    /// Takes a token for one premature reset; false (and the connection told) when none is left.
    fn charge(&self) -> bool {
        self.charge_at(Instant::now())
    }

    fn charge_at(&self, now: Instant) -> bool {
        let mut bucket = crate::base::lock(&self.bucket);
        let (tokens, since) = &mut *bucket;
        let refill = now.saturating_duration_since(*since).as_secs_f64() * self.per_second;
        *tokens = (*tokens + refill).min(self.capacity);
        *since = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return true;
        }
        drop(bucket);
        self.exceeded.notify_one();
        false
    }

    /// Resolves once a premature reset found the budget empty.
    pub async fn exceeded(&self) {
        self.exceeded.notified().await;
    }

    /// The connection is closed for overdrawing: the GOAWAY goes out when its stream is dropped.
    pub fn abort(&self) {
        self.aborting.store(true, Ordering::Relaxed);
    }

    /// Watches one stream of this connection from its arrival.
    pub fn stream(self: &Arc<Self>, shared: Arc<Shared>) -> StreamWatch {
        StreamWatch {
            budget: self.clone(),
            shared,
            opened: Instant::now(),
            routed: false,
            answered: false,
        }
    }
}

/// One stream, from its HEADERS until its response head: dropped before that, its client reset
/// it (hyper drops the future on RST_STREAM), or the connection ended.
pub(crate) struct StreamWatch {
    budget: Arc<Budget>,
    shared: Arc<Shared>,
    opened: Instant,
    routed: bool,
    answered: bool,
}

impl StreamWatch {
    /// The proxy starts acting on the stream (routing, then upstream).
    pub fn routed(&mut self) {
        self.routed = true;
    }

    /// The stream has its response head.
    pub fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let stats = &self.shared.stats;
        stats.downstream_rq_rx_reset.fetch_add(1, Ordering::Relaxed);
        if !self.routed {
            stats.downstream_rq_reset_before_routing.fetch_add(1, Ordering::Relaxed);
        }
        if self.opened.elapsed() < PREMATURE {
            self.budget.charge();
        }
    }
}

/// Where a byte stream of HTTP/2 frames is: inside a frame header, inside a payload, or between
/// frames. Only headers are looked at; payloads are skipped whole.
#[derive(Debug)]
struct Scan {
    /// Bytes still to skip: the rest of a payload, or of the client's connection preface.
    skip: usize,
    head: [u8; 9],
    have: usize,
}

/// The client connection preface (RFC 9113 3.4) before the client's first frame.
const PREFACE_LEN: usize = 24;
const HEADERS: u8 = 0x1;

impl Scan {
    fn new(skip: usize) -> Self {
        Self {
            skip,
            head: [0; 9],
            have: 0,
        }
    }

    /// Moves past `bytes`, calling `on_head` with each complete frame header.
    fn feed(&mut self, mut bytes: &[u8], mut on_head: impl FnMut(&[u8; 9])) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                self.have = 0;
                self.skip =
                    usize::from(self.head[0]) << 16 | usize::from(self.head[1]) << 8 | usize::from(self.head[2]);
                on_head(&self.head);
            }
        }
    }

    fn between_frames(&self) -> bool {
        self.skip == 0 && self.have == 0
    }
}

/// The client's stream of an HTTP/2 connection, watched frame by frame so that the proxy can end
/// the connection with a GOAWAY of its own: hyper can only send GOAWAY NO_ERROR (a graceful
/// shutdown), which would let the client keep its streams. When the connection is dropped
/// after [`Budget::abort`], and hyper's last write ended a frame, GOAWAY ENHANCE_YOUR_CALM is
/// written, naming the highest stream the client opened as the last one the proxy may have
/// acted on (RFC 9113 6.8), then the connection closes.
pub(crate) struct Calm<I: AsyncWrite + Unpin> {
    inner: I,
    budget: Arc<Budget>,
    read: Scan,
    written: Scan,
    last_stream: u32,
}

impl<I: AsyncWrite + Unpin> Calm<I> {
    /// `inner` starts with the client's connection preface.
    pub fn new(inner: I, budget: Arc<Budget>) -> Self {
        Self {
            inner,
            budget,
            read: Scan::new(PREFACE_LEN),
            written: Scan::new(0),
            last_stream: 0,
        }
    }
}

/// GOAWAY (RFC 9113 6.8) with ENHANCE_YOUR_CALM and a reason.
fn goaway(last_stream: u32) -> Vec<u8> {
    const DEBUG: &[u8] = b"too many premature resets";
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let mut frame = Vec::with_capacity(17 + DEBUG.len());
    let len = u32::try_from(8 + DEBUG.len()).unwrap_or(8);
    frame.extend_from_slice(&len.to_be_bytes()[1..]);
    frame.extend_from_slice(&[0x7, 0]);
    frame.extend_from_slice(&0u32.to_be_bytes());
    frame.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    frame.extend_from_slice(DEBUG);
    frame
}

impl<I: AsyncWrite + Unpin> Drop for Calm<I> {
    fn drop(&mut self) {
        if !self.budget.aborting.load(Ordering::Relaxed) {
            return;
        }
        // Mid-frame, a GOAWAY would be read as part of hyper's frame: the close alone says it.
        if !self.written.between_frames() {
            tracing::debug!("HTTP/2 connection closed without GOAWAY: a frame was half written");
            return;
        }
        // One try without waiting: a client whose socket buffer is full gets the close only.
        let frame = goaway(self.last_stream);
        let mut cx = Context::from_waker(Waker::noop());
        let mut inner = Pin::new(&mut self.inner);
        if let Poll::Ready(Ok(n)) = inner.as_mut().poll_write(&mut cx, &frame)
            && n == frame.len()
        {
            let _ = inner.as_mut().poll_flush(&mut cx);
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Calm<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let last = &mut this.last_stream;
            this.read.feed(&buf.filled()[before..], |head| {
                let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                if head[3] == HEADERS && id % 2 == 1 && id > *last {
                    *last = id;
                }
            });
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Calm<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.written.feed(&buf[..n.min(buf.len())], |_| {});
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = r {
            for b in bufs {
                if n == 0 {
                    break;
                }
                let take = n.min(b.len());
                this.written.feed(&b[..take], |_| {});
                n -= take;
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, 0]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn scanning_finds_frame_heads_across_any_split() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, &[]));
        bytes.extend(frame(HEADERS, 1, b"abc"));
        bytes.extend(frame(0x0, 1, &[7; 300]));
        bytes.extend(frame(HEADERS, 7, b""));
        bytes.extend(frame(0x3, 7, &[0, 0, 0, 8]));
        for split in [1, 2, 5, 9, 10, 24, 33, 1000] {
            let mut scan = Scan::new(PREFACE_LEN);
            let mut heads = Vec::new();
            for chunk in bytes.chunks(split) {
                scan.feed(chunk, |h| {
                    heads.push((h[3], u32::from_be_bytes([h[5], h[6], h[7], h[8]])))
                });
            }
            assert_eq!(
                heads,
                [(0x4, 0), (HEADERS, 1), (0x0, 1), (HEADERS, 7), (0x3, 7)],
                "split {split}"
            );
            assert!(scan.between_frames());
        }
        let mut scan = Scan::new(0);
        scan.feed(&frame(0x0, 1, &[1; 10])[..12], |_| {});
        assert!(!scan.between_frames(), "inside a payload");
        let mut scan = Scan::new(0);
        scan.feed(&frame(0x0, 1, &[1; 10])[..4], |_| {});
        assert!(!scan.between_frames(), "inside a header");
    }

    #[test]
    fn the_goaway_frame() {
        let f = goaway(4001);
        assert_eq!(&f[3..9], &[0x7, 0, 0, 0, 0, 0]);
        assert_eq!(u32::from_be_bytes([0, f[0], f[1], f[2]]) as usize, f.len() - 9);
        assert_eq!(u32::from_be_bytes(f[9..13].try_into().unwrap()), 4001);
        assert_eq!(u32::from_be_bytes(f[13..17].try_into().unwrap()), 0xb);
    }

    #[tokio::test]
    async fn the_budget_allows_bursts_and_refills_over_time() {
        let budget = Budget::new(10);
        let start = Instant::now();
        for _ in 0..10 {
            assert!(budget.charge_at(start));
        }
        assert!(!budget.charge_at(start), "the burst is spent");
        tokio::time::timeout(Duration::from_millis(100), budget.exceeded())
            .await
            .expect("the connection is told");
        // A tenth of the budget a second, never more than the budget.
        let later = start + Duration::from_millis(1100);
        assert!(budget.charge_at(later));
        assert!(!budget.charge_at(later));
        let much_later = later + Duration::from_secs(3600);
        for _ in 0..10 {
            assert!(budget.charge_at(much_later));
        }
        assert!(!budget.charge_at(much_later));
    }
}
