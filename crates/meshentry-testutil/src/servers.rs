//! Upstream servers for end-to-end tests: an HTTP/1.1 server (plain, unix-socket and TLS), TCP
//! echo servers (client-first, server-first, and behind TLS), and misbehaving upstreams (one that stalls, one
//! that resets, a port that refuses). Each binds before `start` returns, records what it saw, and
//! stops (listener and open connections) when dropped.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio_rustls::TlsAcceptor;

use crate::tasks::{TaskGuard, Tasks};

/// Locks a mutex whose holders never panic mid-update, so poisoning carries no broken state.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Binds `addr` (std sets SO_REUSEADDR, so a fixed port with connections in TIME_WAIT can be
/// bound again) and registers the listener with the server's runtime.
pub(crate) fn bind_tcp(addr: SocketAddr, what: &str, tasks: &Tasks) -> (TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("{what}: cannot bind {addr}: {e}"));
    let local = listener.local_addr().expect("a bound TCP listener has an address");
    listener.set_nonblocking(true).expect("setting a listener non-blocking");
    let _rt = tasks.enter();
    let listener = TcpListener::from_std(listener).expect("registering a listener with tokio");
    (listener, local)
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// One request an HTTP upstream received.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The request target as received: origin form (`/a?b`), or absolute form from a forward
    /// proxy that did not rewrite it.
    pub uri: String,
    /// The path alone.
    pub path: String,
    /// The Host header, or the URI authority when there is none (HTTP/2).
    pub host: Option<String>,
    /// Every header in arrival order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Bytes,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// The number of the connection it came on (1-based, per server), to tell keep-alive reuse
    /// from new connections.
    pub connection: usize,
}

impl SeenRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a TLS upstream saw in one successful handshake.
#[derive(Debug, Clone)]
pub struct TlsSeen {
    /// The SNI the client sent, if any.
    pub sni: Option<String>,
    /// Whether the client presented a certificate.
    pub client_cert: bool,
    /// The DNS and URI SANs of the client's certificate (e.g. its SPIFFE id), to tell which
    /// certificate was presented; empty without one.
    pub client_names: Vec<String>,
    /// The ALPN protocol agreed, if any.
    pub alpn: Option<String>,
}

impl TlsSeen {
    /// What the server side of `session` saw in its handshake.
    fn of(session: &rustls::ServerConnection) -> TlsSeen {
        let peer = session.peer_certificates().and_then(|c| c.first());
        TlsSeen {
            sni: session.server_name().map(str::to_owned),
            client_cert: peer.is_some(),
            client_names: peer.map(|c| cert_names(c)).unwrap_or_default(),
            alpn: session.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
        }
    }
}

/// The DNS and URI subject alternative names of a DER certificate, in order.
fn cert_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return vec!["<unparsable certificate>".into()];
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

#[derive(Default)]
struct HttpStats {
    requests: AtomicUsize,
    connections: AtomicUsize,
    seen: Mutex<Vec<SeenRequest>>,
    /// Requests seen per `/fail/<n>/...` path.
    failing: Mutex<std::collections::HashMap<String, usize>>,
}

/// The HTTP side common to [`HttpUpstream`] and [`TlsUpstream`].
struct HttpCore {
    name: Arc<str>,
    stats: Arc<HttpStats>,
}

impl HttpCore {
    fn new(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            stats: Arc::default(),
        }
    }
}

/// 16 KiB of `x`, the unit `/bytes/<n>` streams in.
static CHUNK: [u8; 16 * 1024] = [b'x'; 16 * 1024];

/// Response body: a complete buffer, or `n` generated bytes streamed in chunks without a
/// length (so HTTP/1.1 uses chunked encoding and a proxy must stream it, not buffer it).
struct RespBody(BodyKind);

enum BodyKind {
    Full(Option<Bytes>),
    Generated(u64),
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let frame = match &mut this.0 {
            BodyKind::Full(data) => data.take().map(Frame::data),
            BodyKind::Generated(0) => None,
            BodyKind::Generated(remaining) => {
                // Bounded by CHUNK.len(), so the cast cannot truncate.
                let n = (*remaining).min(CHUNK.len() as u64) as usize;
                *remaining -= n as u64;
                Some(Frame::data(Bytes::from_static(&CHUNK[..n])))
            }
        };
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.0, BodyKind::Full(None) | BodyKind::Generated(0))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyKind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            BodyKind::Full(None) => SizeHint::with_exact(0),
            BodyKind::Generated(_) => SizeHint::default(),
        }
    }
}

/// Per-connection facts the handler echoes back.
struct ConnInfo {
    id: usize,
    tls: Option<TlsSeen>,
    /// Serve HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    h2c: bool,
}

async fn handle(
    req: Request<Incoming>,
    name: Arc<str>,
    stats: Arc<HttpStats>,
    conn: Arc<ConnInfo>,
) -> Result<Response<RespBody>, Infallible> {
    let (parts, body) = req.into_parts();
    // A body that fails to arrive is recorded as empty: the test then sees what did arrive.
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let seen = SeenRequest {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        path: parts.uri.path().to_owned(),
        host,
        headers,
        body,
        version: format!("{:?}", parts.version),
        connection: conn.id,
    };
    // Counted on arrival, before any delay, so tests can see a request reached a slow upstream.
    stats.requests.fetch_add(1, Ordering::SeqCst);
    lock(&stats.seen).push(seen.clone());

    let mut status = StatusCode::OK;
    let mut generated = None;
    let mut segments = seen.path.trim_start_matches('/').splitn(2, '/');
    match (segments.next(), segments.next()) {
        (Some("status"), Some(code)) => {
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|s| !s.is_informational())
                .unwrap_or(StatusCode::BAD_REQUEST);
        }
        // The first n requests for this exact path fail with 503, the rest succeed: an
        // upstream that fails on purpose, for retries.
        (Some("fail"), Some(rest)) => match rest.split('/').next().and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => {
                let mut failing = lock(&stats.failing);
                let seen = failing.entry(seen.path.clone()).or_insert(0);
                *seen += 1;
                if *seen <= n {
                    status = StatusCode::SERVICE_UNAVAILABLE;
                }
            }
            None => status = StatusCode::BAD_REQUEST,
        },
        (Some("delay"), Some(ms)) => match ms.parse::<u64>() {
            Ok(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Err(_) => status = StatusCode::BAD_REQUEST,
        },
        (Some("bytes"), Some(n)) => match n.parse::<u64>() {
            Ok(n) => generated = Some(n),
            Err(_) => status = StatusCode::BAD_REQUEST,
        },
        _ => {}
    }

    let mut builder = Response::builder()
        .status(status)
        .header("x-upstream", &*name)
        .header("x-upstream-connection", conn.id);
    let body = if let Some(n) = generated {
        builder = builder.header(header::CONTENT_TYPE, "application/octet-stream");
        BodyKind::Generated(n)
    } else if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        BodyKind::Full(None)
    } else {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
        BodyKind::Full(Some(echo_json(&name, &seen, conn.tls.as_ref())))
    };
    let response = builder
        .body(RespBody(body))
        .expect("static header names and a valid status build a response");
    Ok(response)
}

/// The JSON body that tells a test which upstream answered and what it received.
fn echo_json(name: &str, seen: &SeenRequest, tls: Option<&TlsSeen>) -> Bytes {
    let mut headers = BTreeMap::<&str, String>::new();
    for (n, v) in &seen.headers {
        headers
            .entry(n.as_str())
            .and_modify(|all| {
                all.push_str(", ");
                all.push_str(v);
            })
            .or_insert_with(|| v.clone());
    }
    let tls = tls.map(|t| {
        serde_json::json!({"sni": t.sni, "client_cert": t.client_cert, "client_names": t.client_names, "alpn": t.alpn})
    });
    let json = serde_json::json!({
        "upstream": name,
        "method": seen.method,
        "path": seen.path,
        "uri": seen.uri,
        "host": seen.host,
        "headers": headers,
        "body": String::from_utf8_lossy(&seen.body),
        "version": seen.version,
        "connection": seen.connection,
        "tls": tls,
    });
    Bytes::from(json.to_string())
}

/// Serves HTTP on one accepted connection: HTTP/2 when ALPN chose `h2` or the server is h2c,
/// HTTP/1.1 keep-alive otherwise.
async fn serve_http<IO>(io: IO, core: (Arc<str>, Arc<HttpStats>), conn: ConnInfo)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let h2 = conn.h2c || conn.tls.as_ref().and_then(|t| t.alpn.as_deref()) == Some("h2");
    let conn = Arc::new(conn);
    let (name, stats) = core;
    let service = service_fn(move |req| handle(req, name.clone(), stats.clone(), conn.clone()));
    let io = TokioIo::new(io);
    let result = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(io, service)
            .await
    };
    if let Err(e) = result {
        tracing::debug!("test upstream: connection ended with error: {e}");
    }
}

/// An HTTP/1.1 (or, with [`HttpUpstream::start_h2c`], HTTP/2) upstream. Every response carries `x-upstream: <name>` and
/// `x-upstream-connection: <n>`; the body is JSON with `upstream`, `method`, `path`, `uri`,
/// `host`, `headers`, `body`, `version`, `connection` and `tls`.
///
/// Special paths: `/status/<code>` answers that status, `/delay/<ms>` waits before answering,
/// `/fail/<n>/...` answers 503 to the first `n` requests for that path and 200 after,
/// `/bytes/<n>` streams `n` bytes of `x` with chunked encoding.
pub struct HttpUpstream {
    addr: Option<SocketAddr>,
    unix_path: Option<PathBuf>,
    core: HttpCore,
    _tasks: TaskGuard,
}

impl std::fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("name", &self.core.name)
            .field("addr", &self.addr)
            .field("unix_path", &self.unix_path)
            .finish_non_exhaustive()
    }
}

impl HttpUpstream {
    /// Starts serving on `addr` (port 0 picks one; see [`HttpUpstream::addr`]).
    pub fn start(addr: SocketAddr, name: &str) -> HttpUpstream {
        let guard = TaskGuard::new("HttpUpstream");
        let tasks = guard.tasks().clone();
        let (listener, local) = bind_tcp(addr, "HttpUpstream", &tasks);
        let core = HttpCore::new(name);
        let (n, stats, t) = (core.name.clone(), core.stats.clone(), tasks.clone());
        tasks.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let id = stats.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let conn = ConnInfo {
                    id,
                    tls: None,
                    h2c: false,
                };
                t.spawn(serve_http(stream, (n.clone(), stats.clone()), conn));
            }
        });
        HttpUpstream {
            addr: Some(local),
            unix_path: None,
            core,
            _tasks: guard,
        }
    }

    /// Starts serving HTTP/2 with prior knowledge (h2c, as gRPC servers and Envoy's
    /// `http2_protocol_options` clusters speak it) on `addr`: the same responses as
    /// [`HttpUpstream::start`], with `version` `HTTP/2.0` and `host` from `:authority`. An
    /// HTTP/1.1 client gets a connection error.
    pub fn start_h2c(addr: SocketAddr, name: &str) -> HttpUpstream {
        let guard = TaskGuard::new("HttpUpstream-h2c");
        let tasks = guard.tasks().clone();
        let (listener, local) = bind_tcp(addr, "HttpUpstream", &tasks);
        let core = HttpCore::new(name);
        let (n, stats, t) = (core.name.clone(), core.stats.clone(), tasks.clone());
        tasks.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let id = stats.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let conn = ConnInfo {
                    id,
                    tls: None,
                    h2c: true,
                };
                t.spawn(serve_http(stream, (n.clone(), stats.clone()), conn));
            }
        });
        HttpUpstream {
            addr: Some(local),
            unix_path: None,
            core,
            _tasks: guard,
        }
    }

    /// Starts serving on a unix socket at `path`, replacing a stale socket file there. The file
    /// is removed on drop.
    pub fn start_unix(path: impl AsRef<Path>, name: &str) -> HttpUpstream {
        let path = path.as_ref().to_path_buf();
        let _ = std::fs::remove_file(&path);
        let guard = TaskGuard::new("http-unix");
        let tasks = guard.tasks().clone();
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .unwrap_or_else(|e| panic!("HttpUpstream: cannot bind {}: {e}", path.display()));
        listener.set_nonblocking(true).expect("setting a listener non-blocking");
        let listener = {
            let _rt = tasks.enter();
            UnixListener::from_std(listener).expect("registering a listener with tokio")
        };
        let core = HttpCore::new(name);
        let (n, stats, t) = (core.name.clone(), core.stats.clone(), tasks.clone());
        tasks.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let id = stats.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let conn = ConnInfo {
                    id,
                    tls: None,
                    h2c: false,
                };
                t.spawn(serve_http(stream, (n.clone(), stats.clone()), conn));
            }
        });
        HttpUpstream {
            addr: None,
            unix_path: Some(path),
            core,
            _tasks: guard,
        }
    }

    /// The address it listens on. Panics for a unix-socket upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("HttpUpstream::addr called on a unix-socket upstream")
    }

    /// The socket path of a unix-socket upstream.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix_path.as_deref()
    }

    /// The name it reports in `x-upstream`.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// Requests received (counted on arrival).
    pub fn requests(&self) -> usize {
        self.core.stats.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted.
    pub fn connections(&self) -> usize {
        self.core.stats.connections.load(Ordering::SeqCst)
    }

    /// Every request received so far, oldest first.
    pub fn seen(&self) -> Vec<SeenRequest> {
        lock(&self.core.stats.seen).clone()
    }

    /// The latest request received.
    pub fn last(&self) -> Option<SeenRequest> {
        lock(&self.core.stats.seen).last().cloned()
    }
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// An HTTPS upstream: terminates TLS with the given config, then serves the same HTTP as
/// [`HttpUpstream`] (HTTP/2 if the config offers `h2` and the client picks it). Records each
/// handshake's SNI and client certificate, and why failed handshakes failed, for SNI routing
/// (TLS ServiceEntries), DestinationRule `tls.sni`, and mTLS tests.
pub struct TlsUpstream {
    addr: SocketAddr,
    core: HttpCore,
    handshakes: Arc<Mutex<Vec<TlsSeen>>>,
    failures: Arc<Mutex<Vec<String>>>,
    _tasks: TaskGuard,
}

impl std::fmt::Debug for TlsUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsUpstream")
            .field("name", &self.core.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TlsUpstream {
    /// Starts serving TLS on `addr`.
    pub fn start(addr: SocketAddr, name: &str, config: Arc<ServerConfig>) -> TlsUpstream {
        let guard = TaskGuard::new("TlsUpstream");
        let tasks = guard.tasks().clone();
        let (listener, local) = bind_tcp(addr, "TlsUpstream", &tasks);
        let core = HttpCore::new(name);
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let acceptor = TlsAcceptor::from(config);
        let (n, stats, t) = (core.name.clone(), core.stats.clone(), tasks.clone());
        let (hs, fs) = (handshakes.clone(), failures.clone());
        tasks.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let id = stats.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let (acceptor, n, stats) = (acceptor.clone(), n.clone(), stats.clone());
                let (hs, fs) = (hs.clone(), fs.clone());
                t.spawn(async move {
                    let tls = match acceptor.accept(stream).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            lock(&fs).push(e.to_string());
                            return;
                        }
                    };
                    let seen = TlsSeen::of(tls.get_ref().1);
                    lock(&hs).push(seen.clone());
                    let conn = ConnInfo {
                        id,
                        tls: Some(seen),
                        h2c: false,
                    };
                    serve_http(tls, (n, stats), conn).await;
                });
            }
        });
        TlsUpstream {
            addr: local,
            core,
            handshakes,
            failures,
            _tasks: guard,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name it reports in `x-upstream`.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// Successful handshakes, oldest first.
    pub fn handshakes(&self) -> Vec<TlsSeen> {
        lock(&self.handshakes).clone()
    }

    /// The SNI of the latest successful handshake (`None` if there was none, or it had no SNI).
    pub fn last_sni(&self) -> Option<String> {
        lock(&self.handshakes).last().and_then(|h| h.sni.clone())
    }

    /// The errors of failed handshakes, oldest first (e.g. a missing client certificate).
    pub fn handshake_failures(&self) -> Vec<String> {
        lock(&self.failures).clone()
    }

    /// HTTP requests received (counted on arrival).
    pub fn requests(&self) -> usize {
        self.core.stats.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted, including those whose handshake failed.
    pub fn connections(&self) -> usize {
        self.core.stats.connections.load(Ordering::SeqCst)
    }

    /// Every HTTP request received so far, oldest first.
    pub fn seen(&self) -> Vec<SeenRequest> {
        lock(&self.core.stats.seen).clone()
    }

    /// The latest HTTP request received.
    pub fn last(&self) -> Option<SeenRequest> {
        lock(&self.core.stats.seen).last().cloned()
    }
}

// ---------------------------------------------------------------------------------------------
// TCP

#[derive(Default)]
struct TcpStats {
    connections: AtomicUsize,
    bytes: AtomicUsize,
}

/// Accepts connections forever, running `per_conn` on each in the server's task group.
fn accept_loop<F, Fut>(listener: TcpListener, stats: Arc<TcpStats>, tasks: &Tasks, per_conn: F)
where
    F: Fn(TcpStream, Arc<TcpStats>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let t = tasks.clone();
    tasks.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            stats.connections.fetch_add(1, Ordering::SeqCst);
            t.spawn(per_conn(stream, stats.clone()));
        }
    });
}

/// Writes `banner` (if any), then echoes everything until the client closes, then closes.
async fn echo<S>(mut stream: S, banner: Option<Bytes>, stats: Arc<TcpStats>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(banner) = banner
        && stream.write_all(&banner).await.is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                stats.bytes.fetch_add(n, Ordering::SeqCst);
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}

macro_rules! tcp_server_common {
    ($t:ty) => {
        impl $t {
            /// The address it listens on.
            pub fn addr(&self) -> SocketAddr {
                self.addr
            }

            /// Connections accepted.
            pub fn connections(&self) -> usize {
                self.stats.connections.load(Ordering::SeqCst)
            }

            /// Bytes received from clients, over all connections.
            pub fn bytes_received(&self) -> usize {
                self.stats.bytes.load(Ordering::SeqCst)
            }
        }
    };
}

/// A client-first TCP echo server: it sends nothing until the client does, so protocol
/// sniffing (which waits for the client's first bytes) sees only the client's bytes.
pub struct TcpEcho {
    addr: SocketAddr,
    name: String,
    stats: Arc<TcpStats>,
    _tasks: TaskGuard,
}

impl std::fmt::Debug for TcpEcho {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpEcho")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TcpEcho {
    /// Starts echoing on `addr`. `name` only labels the server in debug output.
    pub fn start(addr: SocketAddr, name: &str) -> TcpEcho {
        let guard = TaskGuard::new("TcpEcho");
        let tasks = guard.tasks().clone();
        let (listener, local) = bind_tcp(addr, "TcpEcho", &tasks);
        let stats = Arc::new(TcpStats::default());
        accept_loop(listener, stats.clone(), &tasks, |s, st| echo(s, None, st));
        TcpEcho {
            addr: local,
            name: name.to_owned(),
            stats,
            _tasks: guard,
        }
    }

    /// Its label.
    pub fn name(&self) -> &str {
        &self.name
    }
}
tcp_server_common!(TcpEcho);

/// A server-first TCP server, like MySQL or SMTP: it writes `banner` on accept, then echoes.
/// For testing that a proxy forwards server-first protocols without waiting for client bytes.
pub struct TcpBanner {
    addr: SocketAddr,
    stats: Arc<TcpStats>,
    _tasks: TaskGuard,
}

impl std::fmt::Debug for TcpBanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpBanner")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TcpBanner {
    /// Starts on `addr`, greeting every connection with `banner`.
    pub fn start(addr: SocketAddr, banner: impl Into<Bytes>) -> TcpBanner {
        let guard = TaskGuard::new("TcpBanner");
        let tasks = guard.tasks().clone();
        let (listener, local) = bind_tcp(addr, "TcpBanner", &tasks);
        let banner: Bytes = banner.into();
        let stats = Arc::new(TcpStats::default());
        accept_loop(listener, stats.clone(), &tasks, move |s, st| {
            echo(s, Some(banner.clone()), st)
        });
        TcpBanner {
            addr: local,
            stats,
            _tasks: guard,
        }
    }
}
tcp_server_common!(TcpBanner);

/// A client-first TCP echo server behind TLS, standing in for a database that terminates TLS
/// itself (MongoDB with `net.tls.mode: requireTLS`): it completes the handshake with the given
/// config (which may require a client certificate), then echoes the decrypted bytes. Records
/// each handshake like [`TlsUpstream`].
pub struct TlsEcho {
    addr: SocketAddr,
    stats: Arc<TcpStats>,
    handshakes: Arc<Mutex<Vec<TlsSeen>>>,
    failures: Arc<Mutex<Vec<String>>>,
    _tasks: TaskGuard,
}

impl std::fmt::Debug for TlsEcho {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsEcho")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TlsEcho {
    /// Starts serving TLS on `addr`; bytes received after the handshake are echoed.
    pub fn start(addr: SocketAddr, config: Arc<ServerConfig>) -> TlsEcho {
        let guard = TaskGuard::new("TlsEcho");
        let tasks = guard.tasks().clone();
        let (listener, local) = bind_tcp(addr, "TlsEcho", &tasks);
        let stats = Arc::new(TcpStats::default());
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let acceptor = TlsAcceptor::from(config);
        let (hs, fs) = (handshakes.clone(), failures.clone());
        accept_loop(listener, stats.clone(), &tasks, move |s, st| {
            let (acceptor, hs, fs) = (acceptor.clone(), hs.clone(), fs.clone());
            async move {
                match acceptor.accept(s).await {
                    Ok(tls) => {
                        lock(&hs).push(TlsSeen::of(tls.get_ref().1));
                        echo(tls, None, st).await;
                    }
                    Err(e) => lock(&fs).push(e.to_string()),
                }
            }
        });
        TlsEcho {
            addr: local,
            stats,
            handshakes,
            failures,
            _tasks: guard,
        }
    }

    /// Successful handshakes, oldest first.
    pub fn handshakes(&self) -> Vec<TlsSeen> {
        lock(&self.handshakes).clone()
    }

    /// The errors of failed handshakes, oldest first.
    pub fn handshake_failures(&self) -> Vec<String> {
        lock(&self.failures).clone()
    }
}
tcp_server_common!(TlsEcho);

/// An upstream that accepts and reads but never answers nor closes: for connect, idle and
/// request timeouts.
pub struct Stall {
    addr: SocketAddr,
    stats: Arc<TcpStats>,
    _tasks: TaskGuard,
}

impl std::fmt::Debug for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stall")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Stall {
    /// Starts on `addr`.
    pub fn start(addr: SocketAddr) -> Stall {
        let guard = TaskGuard::new("Stall");
        let tasks = guard.tasks().clone();
        let (listener, local) = bind_tcp(addr, "Stall", &tasks);
        let stats = Arc::new(TcpStats::default());
        accept_loop(listener, stats.clone(), &tasks, |mut s, st| async move {
            let mut buf = vec![0u8; 16 * 1024];
            // Reading keeps the client's writes from blocking; after the client closes, hold
            // the socket open until the server is dropped, so it never looks like an answer.
            while let Ok(n @ 1..) = s.read(&mut buf).await {
                st.bytes.fetch_add(n, Ordering::SeqCst);
            }
            std::future::pending::<()>().await;
            drop(s);
        });
        Stall {
            addr: local,
            stats,
            _tasks: guard,
        }
    }
}
tcp_server_common!(Stall);

/// An upstream that resets connections (TCP RST via `SO_LINGER` 0), so clients see
/// `ECONNRESET`: for outlier detection, retries (`retryOn: reset`) and error mapping.
///
/// With [`Reset::start`] the reset can overtake the client's connect: the client may see
/// `ECONNRESET` from `connect` itself rather than from its first read or write.
pub struct Reset {
    addr: SocketAddr,
    stats: Arc<TcpStats>,
    _tasks: TaskGuard,
}

impl std::fmt::Debug for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reset")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn reset(stream: TcpStream) {
    // With a zero linger time, close() discards unsent data and sends RST instead of FIN.
    if let Err(e) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
        tracing::warn!("Reset: cannot set SO_LINGER 0: {e}");
    }
    drop(stream);
}

impl Reset {
    /// Starts on `addr`; resets each connection right after accepting it.
    pub fn start(addr: SocketAddr) -> Reset {
        Self::start_inner(addr, false)
    }

    /// Starts on `addr`; resets each connection once the client's first bytes arrive, i.e. the
    /// request reached the upstream (the case where a retry is not always safe).
    pub fn after_first_read(addr: SocketAddr) -> Reset {
        Self::start_inner(addr, true)
    }

    fn start_inner(addr: SocketAddr, wait_for_data: bool) -> Reset {
        let guard = TaskGuard::new("Reset");
        let tasks = guard.tasks().clone();
        let (listener, local) = bind_tcp(addr, "Reset", &tasks);
        let stats = Arc::new(TcpStats::default());
        accept_loop(listener, stats.clone(), &tasks, move |mut s, st| async move {
            if wait_for_data {
                let mut buf = vec![0u8; 16 * 1024];
                if let Ok(n) = s.read(&mut buf).await {
                    st.bytes.fetch_add(n, Ordering::SeqCst);
                }
            }
            reset(s);
        });
        Reset {
            addr: local,
            stats,
            _tasks: guard,
        }
    }
}
tcp_server_common!(Reset);

/// A TCP address on `ip` where nothing listens, so connecting is refused (`ECONNREFUSED`).
///
/// On an address from [`crate::unique_loopback`] nothing else binds it, and the port lies outside
/// the ephemeral range, so a wildcard bind to port 0 elsewhere on the machine cannot start
/// accepting there either: it keeps refusing.
pub fn closed_port(ip: impl Into<IpAddr>) -> SocketAddr {
    let ip = ip.into();
    SocketAddr::new(ip, crate::wait::pick_port(ip))
}
