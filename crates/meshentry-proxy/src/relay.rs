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

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes moved per read: large enough that bulk transfers take few system calls.
pub const BUF: usize = 64 * 1024;

thread_local! {
    /// Where a direction without a buffer of its own reads. It is only borrowed inside one
    /// poll, never across an await, so every relay on the thread can share it.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; BUF].into_boxed_slice());
}

/// Copies `a` to `b` and `b` to `a` until both directions have reached end of stream;
/// returns the bytes copied each way (a to b, b to a).
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut copied = (0, 0);
    copy_bidirectional_counted(a, b, &mut copied).await.map(|()| copied)
}

/// [`copy_bidirectional`] that leaves the bytes copied each way in `copied` however it ends
/// (metrics and access logs count the bytes of relays that end with an error too).
pub async fn copy_bidirectional_counted<A, B>(a: &mut A, b: &mut B, copied: &mut (u64, u64)) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    poll_fn(|cx| {
        let a_result = match a_to_b.done {
            true => Ok(()),
            false => ready_or_pending(a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))),
        };
        let b_result = match (b_to_a.done, &a_result) {
            (false, Ok(())) => ready_or_pending(b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))),
            _ => Ok(()),
        };
        *copied = (a_to_b.copied, b_to_a.copied);
        a_result?;
        b_result?;
        if a_to_b.done && b_to_a.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
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
    /// stream has been passed on. Sets `done` then.
    fn poll_copy<R, W>(&mut self, cx: &mut Context<'_>, mut r: Pin<&mut R>, mut w: Pin<&mut W>) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
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
                ready!(w.as_mut().poll_shutdown(cx))?;
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
                    n => self.end = n,
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
        r: Pin<&mut R>,
        w: Pin<&mut W>,
    ) -> io::Result<Step>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let mut read = ReadBuf::new(scratch);
        let n = match r.poll_read(cx, &mut read) {
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

#[cfg(test)]
mod tests {
    use super::*;
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

    #[tokio::test]
    async fn copies_both_ways_through_backpressure() {
        // Small pipes: most writes are partial, so both directions get buffers of their own.
        let (client, server, relay) = pipes(1000);
        let up = pattern(3 * BUF + 123, 1);
        let down = pattern(2 * BUF + 7, 2);
        let (up2, down2) = (up.clone(), down.clone());
        let c = tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(client);
            let w = tokio::spawn(async move {
                wr.write_all(&up2).await.unwrap();
                wr.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            rd.read_to_end(&mut got).await.unwrap();
            w.await.unwrap();
            got
        });
        let s = tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(server);
            let w = tokio::spawn(async move {
                wr.write_all(&down2).await.unwrap();
                wr.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            rd.read_to_end(&mut got).await.unwrap();
            w.await.unwrap();
            got
        });
        assert!(c.await.unwrap() == down, "the client got the server's bytes, in order");
        assert!(s.await.unwrap() == up, "the server got the client's bytes, in order");
        assert_eq!(relay.await.unwrap().unwrap(), (up.len() as u64, down.len() as u64));
    }

    #[tokio::test]
    async fn half_close_from_the_client_lets_the_server_answer() {
        let (mut client, mut server, relay) = pipes(64 * 1024);
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        // The server sees the request and then end of stream, and answers after it.
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        server.write_all(b"answer after EOF").await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"answer after EOF");
        assert_eq!(relay.await.unwrap().unwrap(), (7, 16));
    }

    #[tokio::test]
    async fn half_close_from_the_server_lets_the_client_go_on() {
        let (mut client, mut server, relay) = pipes(64 * 1024);
        server.write_all(b"banner").await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"banner");
        // The client still sends after the server stopped sending.
        client.write_all(b"upload").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"upload");
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

    #[tokio::test]
    async fn real_sockets_with_a_reset_and_a_half_close() {
        use tokio::net::{TcpListener, TcpStream};
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back_addr = back.local_addr().unwrap();
        let front_addr = front.local_addr().unwrap();
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
}
