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

use anyhow::Context;
use meshentry_proxy::base::addr::ListenAddr;
use meshentry_proxy::rt::shared::Shared;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{Listen, reuse_port_socket};

/// A bound, listening socket of one worker.
pub enum Socket {
    Tcp(std::net::TcpListener),
    Unix(StdUnixListener),
}

impl Socket {
    /// Binds and listens on `addr`, for the first worker.
    pub fn bind(addr: &ListenAddr) -> anyhow::Result<Socket> {
        match addr {
            ListenAddr::Tcp(a) => Ok(Socket::Tcp(reuse_port_socket(*a)?)),
            ListenAddr::Unix(path) => Ok(Socket::Unix(unix_socket(path)?)),
        }
    }

    /// The same listener for another worker: a TCP address bound again (the kernel spreads
    /// connections over the workers' sockets), or the unix socket shared.
    pub fn another(&self, addr: &ListenAddr) -> anyhow::Result<Socket> {
        match self {
            Socket::Tcp(s) => Ok(Socket::Tcp(reuse_port_socket(s.local_addr()?)?)),
            Socket::Unix(s) => Ok(Socket::Unix(
                s.try_clone()
                    .with_context(|| format!("cannot share {addr} with a worker"))?,
            )),
        }
    }

    /// The address it listens on: `wanted`, its port filled in when it said 0.
    pub fn local(&self, wanted: &ListenAddr) -> anyhow::Result<ListenAddr> {
        Ok(match self {
            Socket::Tcp(s) => ListenAddr::Tcp(s.local_addr()?),
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
fn unix_socket(path: &str) -> anyhow::Result<StdUnixListener> {
    let listener = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            StdUnixListener::bind_addr(&addr)
        }
        None => {
            remove_stale_socket(path)?;
            StdUnixListener::bind(path)
        }
    }
    .with_context(|| format!("cannot listen on unix://{path}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn remove_stale_socket(path: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        anyhow::bail!("cannot listen on unix://{path}: the path exists and is not a socket");
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!("cannot listen on unix://{path}: another process is listening there");
    }
    std::fs::remove_file(path).with_context(|| format!("cannot replace the stale socket unix://{path}"))
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
        Socket::Tcp(s) => TcpListener::from_std(s).map(super::Bound::Tcp),
        Socket::Unix(s) => UnixListener::from_std(s).map(super::Bound::Unix),
    };
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "worker cannot use its listener");
            return;
        }
    };
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(super::serve(kind, addr.clone(), listener, shared.clone(), stopped));
    if let Some(old) = open.insert(addr, Running { stop, task }) {
        // Not expected (the reloader closes before it reopens), but never leave a loop behind.
        let _ = old.stop.send(true);
    }
}
