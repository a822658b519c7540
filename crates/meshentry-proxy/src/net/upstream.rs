//! Connections to upstream hosts: TCP or unix sockets, a pool of idle HTTP/1.1 connections
//! per host, and one shared HTTP/2 connection per host.
//!
//! The pools are per worker thread (a `thread_local`), so taking a connection takes no lock
//! shared with other connections. An HTTP/1.1 connection goes back to the pool only when the
//! response body has been read to its end, so a request never waits behind another's body.
//! An HTTP/2 connection carries every request of its thread to that host at once (Envoy's
//! `http2_protocol_options` clusters do the same per worker), so it stays in the pool while in
//! use and is replaced once it closes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use rustls::pki_types::ServerName;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::live::tls::Origination;
use crate::model::cluster::HostAddr;
use crate::net::body::{IdleTimer, StreamIdle};
use crate::net::capture::PROXY_MARK;
use crate::net::pool::{Pool, Pooled};

/// The body type sent upstream: the client's request body, streamed, or a body the proxy
/// holds (a buffered body a VirtualService retries or mirrors).
pub type RequestBody = http_body_util::Either<crate::net::body::ClientBody, http_body_util::Full<Bytes>>;

/// A connected upstream stream.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// TLS this proxy originated (DestinationRule `tls`).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// This proxy's end of the connection (`%UPSTREAM_LOCAL_ADDRESS%`); `None` for unix
    /// sockets.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Stream::Tcp(s) => s.local_addr().ok(),
            Stream::Unix(_) => None,
            Stream::Tls(s) => s.get_ref().0.local_addr().ok(),
        }
    }

    /// Waits until the upstream has sent something (or closed).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
            Stream::Tls(s) => s.get_ref().0.readable().await,
        }
    }
}

/// Where and how to connect: the endpoint, and the TLS to originate on top of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dial {
    pub addr: HostAddr,
    pub tls: Option<TlsDial>,
}

impl Dial {
    pub fn plain(addr: HostAddr) -> Dial {
        Dial { addr, tls: None }
    }
}

impl std::fmt::Display for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// TLS for one connection: the cluster's origination, the name to send and verify, and
/// whether the ClientHello carries it. Connections are pooled by all three, so a connection
/// made for one server name never carries another's requests.
#[derive(Clone, Debug)]
pub struct TlsDial {
    pub origination: Arc<Origination>,
    /// The name to send and verify; without one the connection is refused before it is made.
    pub name: Result<ServerName<'static>, crate::live::tls::Unverifiable>,
    pub sni: bool,
}

impl PartialEq for TlsDial {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.origination, &other.origination) && self.name == other.name && self.sni == other.sni
    }
}

impl Eq for TlsDial {}

impl std::hash::Hash for TlsDial {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.origination) as usize).hash(state);
        self.name.hash(state);
        self.sni.hash(state);
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
    /// The TLS handshake this proxy originated failed; the text says why.
    #[error("{0}")]
    Tls(String),
}

impl ConnectError {
    /// The same error for another request that waited on the same connection attempt
    /// (`io::Error` is not `Clone`; its kind and text are what anyone reads).
    fn duplicate(&self) -> ConnectError {
        match self {
            ConnectError::Refused => ConnectError::Refused,
            ConnectError::Timeout(d) => ConnectError::Timeout(*d),
            ConnectError::Other(e) => ConnectError::Other(io::Error::new(e.kind(), e.to_string())),
            ConnectError::Tls(s) => ConnectError::Tls(s.clone()),
        }
    }
}

/// Opens a stream to `dial`: a connection to its address, then TLS when it says so.
pub async fn connect(dial: &Dial, timeout: Duration) -> Result<Stream, ConnectError> {
    let name = match dial.tls.as_ref().map(|t| &t.name) {
        Some(Err(unverifiable)) => return Err(ConnectError::Tls(unverifiable.to_string())),
        Some(Ok(name)) => Some(name.clone()),
        None => None,
    };
    let stream = connect_addr(&dial.addr, timeout).await?;
    let (Some(tls), Some(name)) = (&dial.tls, name) else {
        return Ok(stream);
    };
    let Stream::Tcp(tcp) = stream else {
        return Err(ConnectError::Tls(
            "TLS origination to unix socket endpoints is not supported".into(),
        ));
    };
    let connector = tokio_rustls::TlsConnector::from(tls.origination.config_for(tls.sni));
    match tokio::time::timeout(crate::live::tls::HANDSHAKE_TIMEOUT, connector.connect(name, tcp)).await {
        Err(_) => Err(ConnectError::Tls(format!(
            "TLS error: handshake timed out after {:?}",
            crate::live::tls::HANDSHAKE_TIMEOUT
        ))),
        Ok(Ok(s)) => Ok(Stream::Tls(Box::new(s))),
        Ok(Err(e)) => Err(ConnectError::Tls(crate::live::tls::describe(&e))),
    }
}

/// Whether setting [`PROXY_MARK`] works here (root or CAP_NET_ADMIN); learned on first use.
static MARK_WORKS: AtomicBool = AtomicBool::new(true);

/// Marks `socket` with [`PROXY_MARK`] when the process may, so that capture never takes the
/// proxy's own traffic back to it.
pub(crate) fn mark(socket: &socket2::Socket) {
    if MARK_WORKS.load(Ordering::Relaxed) && socket.set_mark(PROXY_MARK).is_err() {
        MARK_WORKS.store(false, Ordering::Relaxed);
    }
}

/// Connects to `to` with one `connect` and no `SO_ERROR` check: the socket is created
/// non-blocking (and marked with [`PROXY_MARK`] when the process may, so that a proxy
/// running as root, not as the exempted uid, does not capture its own connections again and
/// loop), and the outcome is read from the readiness the connect completes with: writable
/// alone means connected; an error or a hang-up means it failed, and only then is the reason
/// asked for. A captured TLS connection costs some 25 system calls in all, so the one saved
/// is measurable.
async fn connect_tcp(to: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    use tokio::io::Interest;
    let socket = Socket::new(Domain::for_address(to), Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    mark(&socket);
    // Requests are small and latency matters more than packet count.
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&SockAddr::from(to)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
    if ready.is_error() || ready.is_write_closed() {
        return Err(stream.take_error()?.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::ConnectionRefused, "connection closed while connecting")
        }));
    }
    Ok(stream)
}

/// Opens a plain stream to `addr`.
async fn connect_addr(addr: &HostAddr, timeout: Duration) -> Result<Stream, ConnectError> {
    let fut = async {
        match addr {
            HostAddr::Ip(sa) => Ok::<_, io::Error>(Stream::Tcp(connect_tcp(*sa).await?)),
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

impl crate::net::relay::Peer for Stream {
    fn eof_after_short_read(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.eof_after_short_read(),
            // TLS records buffered in rustls and unix sockets: unknown, so read.
            Stream::Unix(_) | Stream::Tls(_) => false,
        }
    }

    fn closes_on_drop(&self) -> bool {
        // A TLS stream ends with a close_notify, which only a shutdown sends.
        matches!(self, Stream::Tcp(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
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
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

thread_local! {
    /// This thread's idle HTTP/1.1 connections of the hyper path.
    static POOL: Pool<Dial, SendRequest<RequestBody>> = Pool::default();
}

impl Pooled for SendRequest<RequestBody> {
    fn ready(&mut self) -> bool {
        self.is_ready()
    }

    fn open(&mut self) -> bool {
        !self.is_closed()
    }
}

/// Sweeps this thread's hyper pool ([`crate::net::pool::keep_swept`]).
pub fn sweep_pool(now: Instant, limit: Duration) -> usize {
    POOL.with(|p| p.sweep(now, limit))
}

/// Whether an idle HTTP/1.1 stream may carry another request: its peer has neither closed it
/// nor sent anything since the last response ended. Bytes an upstream sends between responses
/// (a body after a HEAD answer, a second response) would otherwise be read as the next
/// client's response. Costs no system call while tokio's readiness says nothing arrived
/// (the usual case: the last read was short, which clears it); otherwise one non-blocking read.
pub(crate) fn idle_and_clean(stream: &mut Stream) -> bool {
    let mut noop = Context::from_waker(std::task::Waker::noop());
    let ready = match stream {
        Stream::Tcp(s) => std::pin::pin!(s.ready(tokio::io::Interest::READABLE)).poll(&mut noop),
        Stream::Unix(s) => std::pin::pin!(s.ready(tokio::io::Interest::READABLE)).poll(&mut noop),
        Stream::Tls(s) => std::pin::pin!(s.get_ref().0.ready(tokio::io::Interest::READABLE)).poll(&mut noop),
    };
    match ready {
        Poll::Pending => return true,
        Poll::Ready(Err(_)) => return false,
        Poll::Ready(Ok(r)) if r.is_read_closed() || r.is_error() => return false,
        Poll::Ready(Ok(_)) => {}
    }
    // Readable, or readiness left over from a read that filled its buffer: look. Any byte
    // read here condemns the connection, so consuming it is fine.
    let mut byte = [0u8; 1];
    match stream {
        Stream::Tcp(s) => matches!(s.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        Stream::Unix(s) => matches!(s.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        // TLS records that carry no application data (session tickets, key updates) are
        // consumed by the read and leave it pending: those connections stay clean.
        Stream::Tls(s) => {
            let mut buf = tokio::io::ReadBuf::new(&mut byte);
            matches!(
                tokio::io::AsyncRead::poll_read(std::pin::Pin::new(s), &mut noop, &mut buf),
                Poll::Pending
            )
        }
    }
}

/// An idle connection to `addr` that can take a request now, if this thread has one. Those
/// found idle past `max_idle` are closed and counted in `idle_closed`.
pub fn checkout(addr: &Dial, max_idle: Duration, idle_closed: &AtomicU64) -> Option<SendRequest<RequestBody>> {
    POOL.with(|p| p.checkout(addr, max_idle, idle_closed))
}

fn checkin(addr: Dial, sender: SendRequest<RequestBody>) {
    if sender.is_closed() {
        return;
    }
    POOL.with(|p| p.checkin(addr, sender));
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

/// A sender of requests on a shared HTTP/2 connection.
pub type H2Sender = http2::SendRequest<RequestBody>;

type H2Result = Result<H2Sender, ConnectError>;

enum H2Slot {
    Ready {
        sender: H2Sender,
        /// When a request last took it, for the idle timeout.
        used: Instant,
    },
    /// A task is opening the connection; others that need it queue a reply channel here
    /// instead of opening connections of their own. The queue is a channel rather than a list
    /// in the slot so the opener can answer everyone without finding the slot again.
    Connecting(mpsc::UnboundedSender<oneshot::Sender<H2Result>>),
}

thread_local! {
    static H2_POOL: RefCell<HashMap<Dial, H2Slot>> = RefCell::new(HashMap::new());
}

enum H2Take {
    Ready(H2Sender),
    Queued(oneshot::Receiver<H2Result>),
    /// Open it: the queue of waiters, and the slot's end of it (to recognise the slot).
    Open(
        mpsc::UnboundedReceiver<oneshot::Sender<H2Result>>,
        mpsc::UnboundedSender<oneshot::Sender<H2Result>>,
    ),
}

/// This thread's HTTP/2 connection to `addr`, opened (with the prior-knowledge preface) if
/// there is none, it closed, or it was idle for `max_idle`. `Ok((sender, true))` when this call
/// opened it. Requests that arrive while a connection is being opened wait for that one, so
/// a burst of requests opens one connection, not one each.
pub async fn h2_connection(
    addr: &Dial,
    connect_timeout: Duration,
    max_idle: Duration,
) -> Result<(H2Sender, bool), ConnectError> {
    loop {
        match h2_take(addr, max_idle) {
            H2Take::Ready(sender) => return Ok((sender, false)),
            H2Take::Queued(reply) => match reply.await {
                Ok(result) => return result.map(|s| (s, false)),
                // The opener was cancelled (its client went away) before it answered: look
                // again, and open the connection here if nobody else has.
                Err(_) => continue,
            },
            H2Take::Open(mut queue, slot_end) => {
                let result = h2_open(addr, connect_timeout).await;
                H2_POOL.with(|pool| {
                    let mut pool = pool.borrow_mut();
                    // The slot is still ours unless the thread changed under a multi-threaded
                    // runtime (the binary's workers are single-threaded).
                    let ours = matches!(pool.get(addr), Some(H2Slot::Connecting(q)) if q.same_channel(&slot_end));
                    if ours {
                        match &result {
                            Ok(sender) => {
                                let slot = H2Slot::Ready {
                                    sender: sender.clone(),
                                    used: Instant::now(),
                                };
                                pool.insert(addr.clone(), slot);
                            }
                            Err(_) => {
                                pool.remove(addr);
                            }
                        }
                    }
                });
                queue.close();
                while let Ok(waiter) = queue.try_recv() {
                    let _ = waiter.send(match &result {
                        Ok(sender) => Ok(sender.clone()),
                        Err(e) => Err(e.duplicate()),
                    });
                }
                return result.map(|s| (s, true));
            }
        }
    }
}

/// Looks in this thread's pool: a live connection, a connection being opened to wait for, or
/// nothing (the caller opens one; the slot says so to later callers).
fn h2_take(addr: &Dial, max_idle: Duration) -> H2Take {
    H2_POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        match pool.get_mut(addr) {
            Some(H2Slot::Ready { sender, used }) if !sender.is_closed() && used.elapsed() < max_idle => {
                *used = Instant::now();
                return H2Take::Ready(sender.clone());
            }
            Some(H2Slot::Connecting(queue)) => {
                let (tx, rx) = oneshot::channel();
                // Fails only when the opener is gone (cancelled): then replace the slot.
                if queue.send(tx).is_ok() {
                    return H2Take::Queued(rx);
                }
            }
            // Closed or idle too long: requests still running on it finish there; the
            // connection closes when they are done and the last sender is dropped.
            Some(H2Slot::Ready { .. }) | None => {}
        }
        let (tx, rx) = mpsc::unbounded_channel();
        pool.insert(addr.clone(), H2Slot::Connecting(tx.clone()));
        H2Take::Open(rx, tx)
    })
}

/// Connects and starts HTTP/2 on the stream; the connection runs in its own task.
async fn h2_open(addr: &Dial, connect_timeout: Duration) -> H2Result {
    let stream = connect(addr, connect_timeout).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        // Only writing the preface can fail here: the upstream closed on us, which is a
        // connection that did not work, so the next host is tried.
        .map_err(|e| ConnectError::Other(io::Error::new(io::ErrorKind::ConnectionAborted, e.to_string())))?;
    tokio::spawn(async move {
        // Errors end the requests in flight, which report them through their responses.
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}

/// A response body that returns its connection to the pool when read to the end, and ends
/// with [`StreamIdle`] when the upstream sends nothing of it for `--stream-idle-timeout`.
pub struct PooledBody {
    inner: Incoming,
    release: Option<(Dial, SendRequest<RequestBody>)>,
    idle: IdleTimer,
    failed: bool,
}

impl PooledBody {
    /// `reusable`: the exchange allows the connection to carry another request (neither side
    /// said `Connection: close`). `idle`: the stream idle timeout.
    pub fn new(inner: Incoming, addr: Dial, sender: SendRequest<RequestBody>, reusable: bool, idle: Duration) -> Self {
        let mut body = Self {
            inner,
            release: reusable.then_some((addr, sender)),
            idle: IdleTimer::new(idle),
            failed: false,
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    /// A body whose connection is not handed out per request (an HTTP/2 stream: the
    /// connection stays in the pool while it carries the stream).
    pub fn shared(inner: Incoming, idle: Duration) -> Self {
        Self {
            inner,
            release: None,
            idle: IdleTimer::new(idle),
            failed: false,
        }
    }

    fn release(&mut self) {
        if let Some((addr, sender)) = self.release.take() {
            checkin(addr, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    /// hyper's, or [`StreamIdle`].
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progressed();
                if this.inner.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.release = None;
                this.failed = true;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Pending => {
                if !this.idle.expired(cx) {
                    return Poll::Pending;
                }
                // Cut mid-body: the connection is closed with its sender, never pooled.
                this.release = None;
                this.failed = true;
                Poll::Ready(Some(Err(Box::new(StreamIdle(this.idle.limit())))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use meshentry_testutil::{HttpUpstream, closed_port, eventually, unique_loopback};

    use super::*;

    const CONNECT: Duration = Duration::from_secs(5);
    const IDLE: Duration = Duration::from_secs(60);

    /// Calls `h2_connection` `n` times at once on this thread.
    async fn at_once(addr: &Dial, n: usize, idle: Duration) -> Vec<Result<(H2Sender, bool), ConnectError>> {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..n {
            let addr = addr.clone();
            calls.spawn(async move { h2_connection(&addr, CONNECT, idle).await });
        }
        calls.join_all().await
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_h2_connection() {
        let up = HttpUpstream::start_h2c(SocketAddr::new(IpAddr::V4(unique_loopback()), 0), "h2");
        let addr = Dial::plain(HostAddr::Ip(up.addr()));
        let got = at_once(&addr, 10, IDLE).await;
        let fresh = got.iter().filter(|r| matches!(r, Ok((_, true)))).count();
        assert_eq!(fresh, 1, "one caller opens it, the others wait for it");
        assert!(got.iter().all(|r| r.as_ref().is_ok_and(|(s, _)| s.is_ready())));
        // Later callers take it as it is.
        let (_, fresh) = h2_connection(&addr, CONNECT, IDLE).await.unwrap();
        assert!(!fresh);
        eventually(CONNECT, || async { up.connections() == 1 }).await;
    }

    #[tokio::test]
    async fn a_closed_connection_is_replaced() {
        let at = SocketAddr::new(IpAddr::V4(unique_loopback()), 8081);
        let up = HttpUpstream::start_h2c(at, "first");
        let addr = Dial::plain(HostAddr::Ip(at));
        let (first, fresh) = h2_connection(&addr, CONNECT, IDLE).await.unwrap();
        assert!(fresh);
        drop(up);
        let up = HttpUpstream::start_h2c(at, "second");
        eventually(CONNECT, || async { first.is_closed() }).await;
        let (second, fresh) = h2_connection(&addr, CONNECT, IDLE).await.unwrap();
        assert!(fresh && second.is_ready());
        eventually(CONNECT, || async { up.connections() == 1 }).await;
    }

    #[tokio::test]
    async fn an_idle_connection_is_replaced() {
        let up = HttpUpstream::start_h2c(SocketAddr::new(IpAddr::V4(unique_loopback()), 0), "h2");
        let addr = Dial::plain(HostAddr::Ip(up.addr()));
        assert!(h2_connection(&addr, CONNECT, Duration::ZERO).await.unwrap().1);
        assert!(h2_connection(&addr, CONNECT, Duration::ZERO).await.unwrap().1);
        eventually(CONNECT, || async { up.connections() == 2 }).await;
    }

    #[tokio::test]
    async fn a_failed_connect_fails_every_caller_and_is_not_remembered() {
        let addr = Dial::plain(HostAddr::Ip(closed_port(unique_loopback())));
        for r in at_once(&addr, 5, IDLE).await {
            assert!(matches!(r, Err(ConnectError::Refused)), "{r:?}");
        }
        assert!(matches!(
            h2_connection(&addr, CONNECT, IDLE).await,
            Err(ConnectError::Refused)
        ));
    }
}
