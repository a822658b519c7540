//! Connections to upstream hosts: TCP or unix sockets, and a pool of idle HTTP/1.1
//! connections per host.
//!
//! The pool is per worker thread (a `thread_local`), so checking a connection in or out takes
//! no lock shared with other connections. A connection goes back to the pool only when the
//! response body has been read to its end, so a request never waits behind another's body.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::cluster::HostAddr;

/// The body type sent upstream: the client's request body, streamed.
pub type RequestBody = Incoming;

/// A connected upstream stream.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Waits until the upstream has sent something (or closed).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
        }
    }
}

/// Why connecting failed, in the words access logs and 503 bodies use.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection refused")]
    Refused,
    #[error("connection timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Other(io::Error),
}

/// Opens a stream to `addr`.
pub async fn connect(addr: &HostAddr, timeout: Duration) -> Result<Stream, ConnectError> {
    let fut = async {
        match addr {
            HostAddr::Ip(sa) => {
                let s = TcpStream::connect(sa).await?;
                // Requests are small and latency matters more than packet count.
                s.set_nodelay(true)?;
                Ok::<_, io::Error>(Stream::Tcp(s))
            }
            HostAddr::Unix(path) => Ok(Stream::Unix(UnixStream::connect(&**path).await?)),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(ConnectError::Timeout(timeout)),
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused || e.kind() == io::ErrorKind::NotFound => {
            Err(ConnectError::Refused)
        }
        Ok(Err(e)) => Err(ConnectError::Other(e)),
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }
}

/// Idle connections kept per host per thread; beyond this, finished connections are closed.
const MAX_IDLE_PER_HOST: usize = 128;

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

thread_local! {
    static POOL: RefCell<HashMap<HostAddr, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// An idle connection to `addr` that can take a request now, if this thread has one.
pub fn checkout(addr: &HostAddr, max_idle: Duration) -> Option<SendRequest<RequestBody>> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let list = pool.get_mut(addr)?;
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < max_idle && idle.sender.is_ready() {
                return Some(idle.sender);
            }
        }
        None
    })
}

fn checkin(addr: HostAddr, sender: SendRequest<RequestBody>) {
    if sender.is_closed() {
        return;
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let list = pool.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_HOST {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    });
}

/// Performs the HTTP/1.1 handshake on a fresh stream; the connection runs in its own task.
pub async fn handshake(stream: Stream) -> Result<SendRequest<RequestBody>, hyper::Error> {
    let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Errors here are the upstream closing or resetting; the request that was using the
        // connection sees them through its response.
        let _ = conn.await;
    });
    Ok(sender)
}

/// A response body that returns its connection to the pool when read to the end.
pub struct PooledBody {
    inner: Incoming,
    release: Option<(HostAddr, SendRequest<RequestBody>)>,
}

impl PooledBody {
    /// `reusable`: the exchange allows the connection to carry another request (neither side
    /// said `Connection: close`).
    pub fn new(inner: Incoming, addr: HostAddr, sender: SendRequest<RequestBody>, reusable: bool) -> Self {
        let mut body = Self {
            inner,
            release: reusable.then_some((addr, sender)),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some((addr, sender)) = self.release.take() {
            checkin(addr, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.release = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
