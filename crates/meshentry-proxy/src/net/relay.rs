//! Copying bytes both ways between two connections until both directions are done, for the
//! connections the proxy relays as they are (declared TCP and TLS, SNI passthrough).
//!
//! `tokio::io::copy_bidirectional` gives each direction a buffer of its own when the
//! connection starts. With buffers large enough for bulk transfers (64 KiB) that is 128 KiB
//! allocated and zeroed per connection, and freeing it makes malloc hand memory back to the
//! kernel and fault it in again: about 5% of the proxy's CPU per TLS passthrough connection
//! (perf), for connections that mostly carry a few kilobytes. Here a direction reads into
//! its worker thread's scratch buffer and writes that out at once. Only when the destination
//! does not take all of it does the direction get a buffer of its own for the rest, and it
//! keeps that buffer: a direction that met backpressure once (a bulk transfer) will again.
//!
//! Semantics are `copy_bidirectional`'s: end of stream on one side is passed on as a
//! shutdown of writing on the other once everything read has been written (half-close),
//! the other direction carries on, and the first error ends the relay.
//!
//! Two system calls per connection are saved where the sockets allow ([`Peer`]), as HAProxy
//! saves them: the read that would only return end of stream is skipped when the readiness
//! the kernel reported already says the peer closed and the read before took everything; and
//! the last direction to finish does not shut its destination down for writing when the
//! caller is about to drop it, since closing a drained TCP socket sends the same FIN.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Bytes moved per read: large enough that bulk transfers take few system calls.
pub const BUF: usize = 64 * 1024;

thread_local! {
    /// Where a direction without a buffer of its own reads. It is only borrowed inside one
    /// poll, never across an await, so every relay on the thread can share it.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; BUF].into_boxed_slice());
}

/// What a relay can learn about a connection without a system call.
pub trait Peer {
    /// Asked right after a read that left room in the buffer, in the same poll: whether the
    /// peer's end of stream is already known, so that the read that would only return it
    /// can be skipped. `false` when unknown. Not meaningful at any other time.
    fn eof_after_short_read(&self) -> bool {
        false
    }

    /// Whether dropping it once it has been read to its end tells the peer what a shutdown
    /// for writing would (a TCP socket closed with nothing left unread sends a FIN).
    fn closes_on_drop(&self) -> bool {
        false
    }
}

impl Peer for TcpStream {
    fn eof_after_short_read(&self) -> bool {
        // tokio keeps "read closed" once the kernel reported the peer's FIN (or reset). On a
        // current-thread runtime that report was taken in by the driver before this poll began,
        // so the FIN was in the socket before the read; TCP delivers in order, so a read that
        // left room took everything up to it. (With other threads running the driver, the
        // report could have come in after the read, with bytes behind it: don't guess there.)
        let current_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        if !current_thread {
            return false;
        }
        // One poll of the readiness future with a no-op waker reads tokio's cached readiness:
        // no system call.
        let ready = std::pin::pin!(self.ready(Interest::READABLE));
        match ready.poll(&mut Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(Ok(r)) => r.is_read_closed(),
            _ => false,
        }
    }

    fn closes_on_drop(&self) -> bool {
        true
    }
}

impl Peer for tokio::io::DuplexStream {}

impl Peer for tokio::net::UnixStream {}

/// A CONNECT tunnel's client side: hyper's upgraded connection, which may hold bytes
/// already read, so its readiness says nothing.
impl<T> Peer for hyper_util::rt::TokioIo<T> {}

/// Why a relay with an idle timeout ended: no byte moved either way for that long. Tell it
/// from other errors with [`is_idle_timeout`].
#[derive(Debug, thiserror::Error)]
#[error("no bytes either way for {0:?} (idle timeout)")]
pub struct IdleTimeout(pub Duration);

/// Whether a relay ended because of its idle timeout.
pub fn is_idle_timeout(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<IdleTimeout>())
}

/// Copies `a` to `b` and `b` to `a` until both directions have reached end of stream, or
/// with an [`IdleTimeout`] error once no byte has moved either way for `idle` (Envoy's
/// `tcp_proxy` `idle_timeout`), leaving the bytes copied each way in `copied` however it
/// ends (metrics and access logs count the bytes of relays that end with an error too). The
/// clock is read only on wake-ups that moved bytes, and the one idle timer is pushed back
/// lazily when it fires, so a busy relay pays no timer work per read.
pub async fn copy_bidirectional_counted<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Option<Duration>,
    copied: &mut (u64, u64),
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Peer + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Peer + Unpin + ?Sized,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    let mut last = Instant::now();
    let timer = tokio::time::sleep(idle.unwrap_or(Duration::ZERO));
    tokio::pin!(timer);
    poll_fn(|cx| {
        let before = a_to_b.copied + b_to_a.copied;
        let a_result = match a_to_b.done {
            true => Ok(()),
            false => {
                let last = b_to_a.done;
                ready_or_pending(a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b), last))
            }
        };
        let b_result = match (b_to_a.done, &a_result) {
            (false, Ok(())) => {
                let last = a_to_b.done;
                ready_or_pending(b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a), last))
            }
            _ => Ok(()),
        };
        *copied = (a_to_b.copied, b_to_a.copied);
        a_result?;
        b_result?;
        if a_to_b.done && b_to_a.done {
            return Poll::Ready(Ok(()));
        }
        let Some(idle) = idle else {
            return Poll::Pending;
        };
        if a_to_b.copied + b_to_a.copied != before {
            last = Instant::now();
        }
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, IdleTimeout(idle))));
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

/// An error ends the relay; pending and done both let the other direction run.
fn ready_or_pending(p: Poll<io::Result<()>>) -> io::Result<()> {
    match p {
        Poll::Ready(Err(e)) => Err(e),
        Poll::Ready(Ok(())) | Poll::Pending => Ok(()),
    }
}

/// One direction of a relay.
#[derive(Default)]
struct Direction {
    /// This direction's own buffer, once the destination did not take a whole read.
    own: Option<Box<[u8]>>,
    /// Bytes read but not yet written: `own[pos..end]`.
    pos: usize,
    end: usize,
    /// The source reached end of stream.
    eof: bool,
    /// Bytes were written since the last flush.
    need_flush: bool,
    /// End of stream has been passed on (the destination is shut down for writing).
    done: bool,
    copied: u64,
}

/// What a read into the scratch buffer led to.
enum Step {
    /// Go round again (more to read, or something to write from `own`).
    Again,
    Pending,
    /// The scratch buffer is in use or gone (thread teardown): read into `own`.
    Busy,
}

impl Direction {
    /// Moves bytes from `r` to `w` until one of them is not ready; `Ready(Ok)` once end of
    /// stream has been passed on. Sets `done` then. `last`: the other direction is done, so
    /// the relay ends with this one.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        last: bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Peer + ?Sized,
        W: AsyncWrite + Peer + ?Sized,
    {
        loop {
            // What the destination has not taken yet goes first.
            if let Some(own) = self.own.as_deref() {
                while self.pos < self.end {
                    let n = ready!(w.as_mut().poll_write(cx, &own[self.pos..self.end]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.pos += n;
                    self.copied += n as u64;
                    self.need_flush = true;
                }
            }
            self.pos = 0;
            self.end = 0;
            if self.eof {
                ready!(w.as_mut().poll_flush(cx))?;
                if !(last && w.as_ref().get_ref().closes_on_drop()) {
                    ready!(w.as_mut().poll_shutdown(cx))?;
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let step = match self.own.is_some() {
                true => Step::Busy,
                false => SCRATCH
                    .try_with(|scratch| match scratch.try_borrow_mut() {
                        Ok(mut scratch) => self.through_scratch(cx, &mut scratch, r.as_mut(), w.as_mut()),
                        Err(_) => Ok(Step::Busy),
                    })
                    .unwrap_or(Ok(Step::Busy))?,
            };
            match step {
                Step::Again => continue,
                Step::Pending => return self.poll_flush_pending(cx, w),
                Step::Busy => {}
            }
            let own = self.own.get_or_insert_with(|| vec![0; BUF].into_boxed_slice());
            let mut read = ReadBuf::new(own);
            match r.as_mut().poll_read(cx, &mut read) {
                Poll::Pending => return self.poll_flush_pending(cx, w),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => match read.filled().len() {
                    0 => self.eof = true,
                    n => {
                        self.end = n;
                        self.eof = n < BUF && r.as_ref().get_ref().eof_after_short_read();
                    }
                },
            }
        }
    }

    /// Reads into `scratch` and writes what was read; what `w` does not take moves to
    /// `own`.
    fn through_scratch<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        scratch: &mut [u8],
        mut r: Pin<&mut R>,
        w: Pin<&mut W>,
    ) -> io::Result<Step>
    where
        R: AsyncRead + Peer + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let mut read = ReadBuf::new(scratch);
        let n = match r.as_mut().poll_read(cx, &mut read) {
            Poll::Pending => return Ok(Step::Pending),
            Poll::Ready(r) => {
                r?;
                read.filled().len()
            }
        };
        if n == 0 {
            self.eof = true;
            return Ok(Step::Again);
        }
        self.eof = n < scratch.len() && r.as_ref().get_ref().eof_after_short_read();
        let written = match w.poll_write(cx, &scratch[..n]) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(r) => r?,
            // Woken when `w` can take more: the rest waits in `own` until then.
            Poll::Pending => 0,
        };
        self.copied += written as u64;
        self.need_flush |= written > 0;
        if written < n {
            let own = self.own.get_or_insert_with(|| vec![0; BUF].into_boxed_slice());
            own[..n - written].copy_from_slice(&scratch[written..n]);
            self.pos = 0;
            self.end = n - written;
        }
        Ok(Step::Again)
    }

    /// The source has nothing for now: flush what was written, as `copy_bidirectional`
    /// does (a no-op for sockets).
    fn poll_flush_pending<W>(&mut self, cx: &mut Context<'_>, w: Pin<&mut W>) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + ?Sized,
    {
        if self.need_flush {
            ready!(w.poll_flush(cx))?;
            self.need_flush = false;
        }
        Poll::Pending
    }
}

/// Sends what was read while detecting, then copies both ways until both sides are done.
/// `client` has TCP_NODELAY already (the outbound listener's, [`crate::listen::outbound::nodelay_for_accepted`], or
/// the gateway's; a unix socket has nothing to set); upstream connections set it when they
/// connect. A relay idle
/// for `--tcp-idle-timeout` is closed, and counted. Returns the bytes received from the
/// client (`first` included) and sent to it.
pub async fn relay<C, U>(mut client: C, mut upstream: U, first: &[u8], shared: &crate::rt::shared::Shared) -> (u64, u64)
where
    C: AsyncRead + AsyncWrite + Peer + Unpin,
    U: AsyncRead + AsyncWrite + Peer + Unpin,
{
    let first_len = first.len() as u64;
    if !first.is_empty() && upstream.write_all(first).await.is_err() {
        return (first_len, 0);
    }
    let mut copied = (0, 0);
    let idle = Some(shared.config.limits.tcp_idle_timeout);
    match copy_bidirectional_counted(&mut client, &mut upstream, idle, &mut copied).await {
        Ok(()) => tracing::debug!(up = copied.0, down = copied.1, "connection closed"),
        Err(e) if is_idle_timeout(&e) => {
            shared
                .stats
                .tcp_idle_timeout
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(error = %e, "connection closed: idle");
        }
        Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
    }
    (first_len + copied.0, copied.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The counted copy, returning the counts: what the tests assert on.
    /// Copies `a` to `b` and `b` to `a` until both directions have reached end of stream;
    /// returns the bytes copied each way (a to b, b to a). The caller drops both streams when it
    /// returns: the end of stream of the last direction to finish may be passed on by that drop
    /// ([`Peer::closes_on_drop`]) rather than by a shutdown.
    async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
    where
        A: AsyncRead + AsyncWrite + Peer + Unpin + ?Sized,
        B: AsyncRead + AsyncWrite + Peer + Unpin + ?Sized,
    {
        copy_bidirectional_idle(a, b, None).await
    }

    /// `copy_bidirectional`, ending with an [`IdleTimeout`] error once no byte has moved either
    /// way for `idle` (Envoy's `tcp_proxy` `idle_timeout`).
    async fn copy_bidirectional_idle<A, B>(a: &mut A, b: &mut B, idle: Option<Duration>) -> io::Result<(u64, u64)>
    where
        A: AsyncRead + AsyncWrite + Peer + Unpin + ?Sized,
        B: AsyncRead + AsyncWrite + Peer + Unpin + ?Sized,
    {
        let mut copied = (0, 0);
        copy_bidirectional_counted(a, b, idle, &mut copied)
            .await
            .map(|()| copied)
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// client <-> (a, relay, b) <-> server, each pipe holding at most `cap` bytes.
    fn pipes(
        cap: usize,
    ) -> (
        DuplexStream,
        DuplexStream,
        tokio::task::JoinHandle<io::Result<(u64, u64)>>,
    ) {
        let (client, mut a) = duplex(cap);
        let (mut b, server) = duplex(cap);
        let relay = tokio::spawn(async move { copy_bidirectional(&mut a, &mut b).await });
        (client, server, relay)
    }

    /// Sends `bytes` on `io` and closes its side, while reading what arrives to the end.
    fn send_and_read(io: DuplexStream, bytes: Vec<u8>) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(io);
            let w = tokio::spawn(async move {
                wr.write_all(&bytes).await.unwrap();
                wr.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            rd.read_to_end(&mut got).await.unwrap();
            w.await.unwrap();
            got
        })
    }

    #[tokio::test]
    async fn copies_both_ways_through_backpressure() {
        // Small pipes: most writes are partial, so both directions get buffers of their own.
        let (client, server, relay) = pipes(1000);
        let up = pattern(3 * BUF + 123, 1);
        let down = pattern(2 * BUF + 7, 2);
        let c = send_and_read(client, up.clone());
        let s = send_and_read(server, down.clone());
        assert!(c.await.unwrap() == down, "the client got the server's bytes, in order");
        assert!(s.await.unwrap() == up, "the server got the client's bytes, in order");
        assert_eq!(relay.await.unwrap().unwrap(), (up.len() as u64, down.len() as u64));
    }

    /// `first` sends `a` and closes its side; `second` reads it to the end, then answers `b`
    /// and closes; `first` still gets the answer.
    async fn half_close<A, B>(first: &mut A, second: &mut B, a: &[u8], b: &[u8])
    where
        A: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        first.write_all(a).await.unwrap();
        first.shutdown().await.unwrap();
        let mut got = Vec::new();
        second.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, a);
        second.write_all(b).await.unwrap();
        second.shutdown().await.unwrap();
        let mut got = Vec::new();
        first.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b);
    }

    #[tokio::test]
    async fn half_close_from_the_client_lets_the_server_answer() {
        let (mut client, mut server, relay) = pipes(64 * 1024);
        // The server sees the request and then end of stream, and answers after it.
        half_close(&mut client, &mut server, b"request", b"answer after EOF").await;
        assert_eq!(relay.await.unwrap().unwrap(), (7, 16));
    }

    #[tokio::test]
    async fn half_close_from_the_server_lets_the_client_go_on() {
        let (mut client, mut server, relay) = pipes(64 * 1024);
        // The client still sends after the server stopped sending.
        half_close(&mut server, &mut client, b"banner", b"upload").await;
        assert_eq!(relay.await.unwrap().unwrap(), (6, 6));
    }

    #[tokio::test]
    async fn a_destination_that_goes_away_ends_the_relay_with_an_error() {
        let (mut client, server, relay) = pipes(1024);
        drop(server);
        // Writing to a pipe whose reader is gone fails; the relay reports it.
        let _ = client.write_all(&pattern(4096, 3)).await;
        let r = relay.await.unwrap();
        assert!(r.is_err(), "{r:?}");
    }

    /// After a short read, the end of stream is known without reading only once the peer's
    /// FIN has been reported; and never on a runtime whose driver runs on other threads.
    #[tokio::test]
    async fn end_of_stream_is_known_after_a_short_read_once_the_fin_is_reported() {
        use tokio::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut ours, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; BUF];

        peer.write_all(b"no fin yet").await.unwrap();
        assert_eq!(ours.read(&mut buf).await.unwrap(), 10);
        assert!(!ours.eof_after_short_read(), "the peer has not closed");

        peer.write_all(b"last words").await.unwrap();
        peer.shutdown().await.unwrap();
        // Wait for both the bytes and the FIN to be reported.
        for _ in 0..200 {
            if ours.ready(Interest::READABLE).await.unwrap().is_read_closed() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(ours.read(&mut buf).await.unwrap(), 10);
        assert!(ours.eof_after_short_read(), "the FIN came before the short read");
        assert_eq!(ours.read(&mut buf).await.unwrap(), 0, "and a read would only say so");
    }

    #[test]
    fn no_guess_when_other_threads_run_the_driver() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::net::{TcpListener, TcpStream};
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (mut ours, _) = listener.accept().await.unwrap();
            peer.write_all(b"bye").await.unwrap();
            peer.shutdown().await.unwrap();
            while !ours.ready(Interest::READABLE).await.unwrap().is_read_closed() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let mut buf = [0u8; 64];
            assert_eq!(ours.read(&mut buf).await.unwrap(), 3);
            assert!(!ours.eof_after_short_read());
        });
    }

    /// Two listeners on loopback: the relay's front (clients) and back (servers).
    async fn front_and_back() -> (
        tokio::net::TcpListener,
        std::net::SocketAddr,
        tokio::net::TcpListener,
        std::net::SocketAddr,
    ) {
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (front_addr, back_addr) = (front.local_addr().unwrap(), back.local_addr().unwrap());
        (front, front_addr, back, back_addr)
    }

    /// A server that sends its answer and closes at once (the bytes and the FIN arrive
    /// together), through a relay over real sockets: everything arrives, then end of stream.
    #[tokio::test]
    async fn answer_and_close_together_arrive_whole() {
        use tokio::net::TcpStream;
        let (front, front_addr, back, back_addr) = front_and_back().await;
        let relays = tokio::spawn(async move {
            let mut results = Vec::new();
            for _ in 0..20 {
                let (mut c, _) = front.accept().await.unwrap();
                let mut u = TcpStream::connect(back_addr).await.unwrap();
                results.push(tokio::spawn(async move { copy_bidirectional(&mut c, &mut u).await }));
            }
            results
        });
        let servers = tokio::spawn(async move {
            for i in 0..20u8 {
                let (mut s, _) = back.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut req = [0u8; 5];
                    s.read_exact(&mut req).await.unwrap();
                    s.write_all(&pattern(1000 + usize::from(i), i)).await.unwrap();
                    // Dropped at once: the answer and the FIN go out together.
                });
            }
        });
        for i in 0..20u8 {
            let mut client = TcpStream::connect(front_addr).await.unwrap();
            client.write_all(b"hello").await.unwrap();
            let mut got = Vec::new();
            tokio::time::timeout(std::time::Duration::from_secs(5), client.read_to_end(&mut got))
                .await
                .expect("end of stream arrives")
                .unwrap();
            assert!(got == pattern(1000 + usize::from(i), i), "answer {i} whole");
        }
        servers.await.unwrap();
        for r in relays.await.unwrap() {
            let (up, down) = r.await.unwrap().unwrap();
            assert_eq!(up, 5);
            assert!(down >= 1000);
        }
    }

    #[tokio::test]
    async fn real_sockets_with_a_reset_and_a_half_close() {
        use tokio::net::TcpStream;
        let (front, front_addr, back, back_addr) = front_and_back().await;
        tokio::spawn(async move {
            loop {
                let (mut c, _) = front.accept().await.unwrap();
                let mut u = TcpStream::connect(back_addr).await.unwrap();
                tokio::spawn(async move {
                    let _ = copy_bidirectional(&mut c, &mut u).await;
                });
            }
        });
        // Half-close: an echo server that answers with everything it got, after EOF.
        let mut client = TcpStream::connect(front_addr).await.unwrap();
        let (mut s, _) = back.accept().await.unwrap();
        let big = pattern(5 * BUF, 4);
        let big2 = big.clone();
        let w = tokio::spawn(async move {
            client.write_all(&big2).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert!(got == big);
        s.write_all(&got).await.unwrap();
        drop(s);
        assert!(w.await.unwrap() == big);

        // A reset from the server reaches the client as a reset or an end of stream, promptly.
        let mut client = TcpStream::connect(front_addr).await.unwrap();
        let (s, _) = back.accept().await.unwrap();
        client.write_all(b"x").await.unwrap();
        s.set_zero_linger().unwrap();
        drop(s);
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
    }

    #[tokio::test]
    async fn an_idle_relay_ends_at_its_idle_timeout_and_a_busy_one_runs_on() {
        let idle = Duration::from_millis(200);
        let (mut client, mut a) = duplex(1024);
        let (mut b, mut server) = duplex(1024);
        let relay = tokio::spawn(async move { copy_bidirectional_idle(&mut a, &mut b, Some(idle)).await });
        // Busy for three idle periods, a byte each 80 ms, alternating directions.
        let mut byte = [0u8; 1];
        let mut last = Instant::now();
        for i in 0..8 {
            if i % 2 == 0 {
                client.write_all(b"c").await.unwrap();
                server.read_exact(&mut byte).await.unwrap();
            } else {
                server.write_all(b"s").await.unwrap();
                client.read_exact(&mut byte).await.unwrap();
            }
            last = Instant::now();
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
        assert!(!relay.is_finished(), "a busy relay was ended");
        let e = relay.await.unwrap().unwrap_err();
        let waited = last.elapsed();
        assert!(is_idle_timeout(&e), "{e}");
        assert!(
            (Duration::from_millis(190)..Duration::from_secs(2)).contains(&waited),
            "ended {waited:?} after the last byte; the idle timeout is 200ms"
        );
        // Without an idle timeout nothing ends it.
        let (_client, mut a) = duplex(64);
        let (mut b, _server) = duplex(64);
        let relay = tokio::spawn(async move { copy_bidirectional_idle(&mut a, &mut b, None).await });
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!relay.is_finished());
        relay.abort();
    }
}
