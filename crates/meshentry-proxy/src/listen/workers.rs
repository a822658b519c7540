//! One worker's listeners: the ones it starts with, and those a reload opens or closes.
//!
//! Every worker accepts on a socket of its own for each listener: a TCP address is bound once
//! per worker (`SO_REUSEPORT`), and a unix socket (a Gateway server's `bind: unix://...`),
//! which cannot be bound twice, is bound once and each worker accepts on its own descriptor of
//! it. The reloader makes one socket per worker for a new Gateway listener and hands each
//! worker its own. Closing a listener stops its accept loop and drops the socket, so new
//! connections are refused; connections it already accepted are tasks of their own and carry
//! on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::base::addr::ListenAddr;
use crate::listen::gateway::serve_gateway;
use crate::listen::outbound::serve_outbound;
use crate::listen::server::serve_http_proxy;
use crate::rt::shared::Shared;

/// Why a listener could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot listen on unix://{path}: the path exists and is not a socket")]
    NotASocket { path: String },
    #[error("cannot listen on unix://{path}: another process is listening there")]
    InUse { path: String },
    #[error("cannot replace the stale socket unix://{path}")]
    Stale { path: String, source: std::io::Error },
    #[error("cannot share {addr} with a worker")]
    Share { addr: String, source: std::io::Error },
    #[error("{addr}: its address")]
    Address { addr: String, source: std::io::Error },
}

/// A bound, listening socket of one worker.
pub enum Socket {
    Tcp(std::net::TcpListener),
    Unix(StdUnixListener),
}

impl Socket {
    /// Binds and listens on `addr`, for the first worker.
    pub fn bind(addr: &ListenAddr) -> Result<Socket, BindError> {
        match addr {
            ListenAddr::Tcp(a) => Ok(Socket::Tcp(reuse_port_socket(*a)?)),
            ListenAddr::Unix(path) => Ok(Socket::Unix(unix_socket(path)?)),
        }
    }

    /// The same listener for another worker: a TCP address bound again (the kernel spreads
    /// connections over the workers' sockets), or the unix socket shared.
    pub fn another(&self, addr: &ListenAddr) -> Result<Socket, BindError> {
        match self {
            Socket::Tcp(s) => {
                let local = s.local_addr().map_err(|source| BindError::Address {
                    addr: addr.to_string(),
                    source,
                })?;
                Ok(Socket::Tcp(reuse_port_socket(local)?))
            }
            Socket::Unix(s) => Ok(Socket::Unix(s.try_clone().map_err(|source| BindError::Share {
                addr: addr.to_string(),
                source,
            })?)),
        }
    }

    /// The address it listens on: `wanted`, its port filled in when it said 0.
    pub fn local(&self, wanted: &ListenAddr) -> Result<ListenAddr, BindError> {
        Ok(match self {
            Socket::Tcp(s) => ListenAddr::Tcp(s.local_addr().map_err(|source| BindError::Address {
                addr: wanted.to_string(),
                source,
            })?),
            Socket::Unix(_) => wanted.clone(),
        })
    }

    /// The TCP address, for the loop guard.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Socket::Tcp(s) => s.local_addr().ok(),
            Socket::Unix(_) => None,
        }
    }
}

/// Listens on the unix socket `path` (`@NAME`: NAME in Linux's abstract namespace). A socket
/// file left at `path` by a process that is gone is replaced, as Envoy does; one that a live
/// process still accepts on, or a file that is no socket, is left alone and is an error.
fn unix_socket(path: &str) -> Result<StdUnixListener, BindError> {
    let listen = |source| BindError::Listen {
        addr: format!("unix://{path}"),
        source,
    };
    let listener = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(listen)?;
            StdUnixListener::bind_addr(&addr)
        }
        None => {
            remove_stale_socket(path)?;
            StdUnixListener::bind(path)
        }
    }
    .map_err(listen)?;
    listener.set_nonblocking(true).map_err(listen)?;
    Ok(listener)
}

fn remove_stale_socket(path: &str) -> Result<(), BindError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket { path: path.to_string() });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(BindError::InUse { path: path.to_string() });
    }
    std::fs::remove_file(path).map_err(|source| BindError::Stale {
        path: path.to_string(),
        source,
    })
}

/// What the reloader asks of a worker.
pub enum Command {
    /// Start accepting on `socket` (already bound and listening).
    Open {
        kind: Listen,
        addr: ListenAddr,
        socket: Socket,
    },
    /// Stop accepting on `addr`; `done` is answered once the socket is closed.
    Close {
        addr: ListenAddr,
        done: oneshot::Sender<()>,
    },
}

/// An accept loop and the switch that ends it.
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    async fn close(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Runs a worker's listeners until `exit`: `initial` from the start, then as `commands` say.
/// When `stopped` turns (a drain began) every listener closes; connections go on until `exit`,
/// whose arrival ends the worker and, with its runtime, whatever connections are left.
pub async fn run(
    initial: Vec<(Listen, ListenAddr, Socket)>,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut exit: watch::Receiver<bool>,
) {
    let mut open: HashMap<ListenAddr, Running> = HashMap::new();
    for (kind, addr, socket) in initial {
        start(&mut open, kind, addr, socket, &shared);
    }
    let mut stopping = false;
    loop {
        tokio::select! {
            Some(cmd) = commands.recv() => match cmd {
                Command::Open { kind, addr, socket } => {
                    // A drain closes everything, including what a late reload opens.
                    if !stopping {
                        start(&mut open, kind, addr, socket, &shared);
                    }
                }
                Command::Close { addr, done } => {
                    if let Some(r) = open.remove(&addr) {
                        r.close().await;
                    }
                    let _ = done.send(());
                }
            },
            _ = stopped.changed(), if !stopping => {
                stopping = true;
                for (_, r) in open.drain() {
                    r.close().await;
                }
            }
            _ = exit.changed() => break,
        }
    }
}

fn start(
    open: &mut HashMap<ListenAddr, Running>,
    kind: Listen,
    addr: ListenAddr,
    socket: Socket,
    shared: &Arc<Shared>,
) {
    let listener = match socket {
        Socket::Tcp(s) => TcpListener::from_std(s).map(Bound::Tcp),
        Socket::Unix(s) => UnixListener::from_std(s).map(Bound::Unix),
    };
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "worker cannot use its listener");
            return;
        }
    };
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(serve(kind, addr.clone(), listener, shared.clone(), stopped));
    if let Some(old) = open.insert(addr, Running { stop, task }) {
        // Not expected (the reloader closes before it reopens), but never leave a loop behind.
        let _ = old.stop.send(true);
    }
}

/// The proxy's listeners, besides admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// The explicit HTTP proxy (`--http-proxy`).
    HttpProxy,
    /// Redirected connections (`--outbound`).
    Outbound,
    /// A listener (a port and bind) of the Gateway this proxy runs as (`--gateway`).
    Gateway,
}

impl Listen {
    /// As `/config_dump` names it.
    pub fn name(self) -> &'static str {
        match self {
            Listen::HttpProxy => "http_proxy",
            Listen::Outbound => "outbound",
            Listen::Gateway => "gateway",
        }
    }
}

/// A worker's listening socket, on its runtime.
enum Bound {
    Tcp(TcpListener),
    Unix(tokio::net::UnixListener),
}

async fn serve(kind: Listen, addr: ListenAddr, listener: Bound, shared: Arc<Shared>, stopped: watch::Receiver<bool>) {
    match (kind, listener) {
        (Listen::HttpProxy, Bound::Tcp(l)) => serve_http_proxy(l, shared, stopped).await,
        (Listen::Outbound, Bound::Tcp(l)) => serve_outbound(l, shared, stopped).await,
        (Listen::Gateway, Bound::Tcp(l)) => serve_gateway(l, addr, shared, stopped).await,
        (Listen::Gateway, Bound::Unix(l)) => serve_gateway(l, addr, shared, stopped).await,
        // Only a Gateway server's `bind` names a unix socket.
        (kind, Bound::Unix(_)) => {
            tracing::error!(%addr, kind = kind.name(), "a unix socket for a TCP-only listener: not served")
        }
    }
}

fn reuse_port_socket(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let listen = |source| BindError::Listen {
        addr: addr.to_string(),
        source,
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(listen)?;
    socket.set_reuse_address(true).map_err(listen)?;
    socket.set_reuse_port(true).map_err(listen)?;
    socket.set_nonblocking(true).map_err(listen)?;
    socket.bind(&addr.into()).map_err(listen)?;
    socket.listen(4096).map_err(listen)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;
    use crate::base::config::ProxyConfig;
    use crate::live::dns::{Dns, DnsConfig};
    use crate::model::snapshot::Snapshot;

    fn connects(addr: &ListenAddr) -> bool {
        match addr {
            ListenAddr::Tcp(a) => TcpStream::connect(a).is_ok(),
            ListenAddr::Unix(path) => std::os::unix::net::UnixStream::connect(&**path).is_ok(),
        }
    }

    /// A worker opens and closes listeners as the reloader commands, in process: what `proxy`
    /// does on a reload that adds or removes a Gateway port.
    #[tokio::test]
    async fn a_worker_opens_and_closes_listeners_on_command() {
        let config = ProxyConfig::default();
        let snapshot = Snapshot::build(&[], &config, 1);
        // DNS points at a closed port: nothing here resolves a name.
        let dns = Dns::new(DnsConfig {
            server: Some(([127, 0, 0, 1], 9).into()),
            ..DnsConfig::default()
        })
        .expect("a DNS client for a fixed server builds");
        let shared = Shared::new(crate::live::Live::new(snapshot, &dns), dns, config, Vec::new());
        let first = Socket::bind(&ListenAddr::Tcp(([127, 0, 0, 1], 0).into())).unwrap();
        let first_addr = first.local(&ListenAddr::Tcp(([127, 0, 0, 1], 0).into())).unwrap();
        let (_stop, stopped) = watch::channel(false);
        let (exit_tx, exit) = watch::channel(false);
        let (commands, queue) = mpsc::unbounded_channel();
        let worker = tokio::spawn(run(
            vec![(Listen::HttpProxy, first_addr.clone(), first)],
            shared,
            stopped,
            queue,
            exit,
        ));
        let addr = first_addr.clone();
        assert!(tokio::task::spawn_blocking(move || connects(&addr)).await.unwrap());

        // A unix socket bound once, opened by command.
        let dir = tempfile::tempdir().unwrap();
        let path: std::sync::Arc<str> = dir.path().join("gw.sock").to_string_lossy().into();
        let unix = ListenAddr::Unix(path.clone());
        let socket = Socket::bind(&unix).unwrap();
        commands
            .send(Command::Open {
                kind: Listen::Gateway,
                addr: unix.clone(),
                socket,
            })
            .unwrap();
        let u = unix.clone();
        // The socket listens from bind on; the command gives it an accept loop.
        assert!(tokio::task::spawn_blocking(move || connects(&u)).await.unwrap());

        let (done, closed) = oneshot::channel();
        commands
            .send(Command::Close {
                addr: first_addr.clone(),
                done,
            })
            .unwrap();
        closed.await.unwrap();
        let addr = first_addr.clone();
        assert!(
            !tokio::task::spawn_blocking(move || connects(&addr)).await.unwrap(),
            "a closed listener refuses connections"
        );

        // The socket is live (this worker accepts on it): binding it again is refused.
        assert!(matches!(Socket::bind(&unix), Err(BindError::InUse { .. })));
        exit_tx.send(true).unwrap();
        worker.await.unwrap();
    }

    #[test]
    fn a_path_that_is_no_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        let addr = ListenAddr::Unix(file.to_string_lossy().into());
        let err = Socket::bind(&addr).err().unwrap();
        assert!(matches!(err, BindError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    }
}
