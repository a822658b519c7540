//! One worker's listeners: the ones it starts with, and those a reload opens or closes.
//!
//! Every worker accepts on a socket of its own for each listener (`SO_REUSEPORT`), so the
//! reloader binds one socket per worker for a new Gateway port and hands each worker its own.
//! Closing a listener stops its accept loop and drops the socket, so new connections are
//! refused; connections it already accepted are tasks of their own and carry on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meshentry_proxy::server::Shared;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::Listen;

/// What the reloader asks of a worker.
pub enum Command {
    /// Start accepting on `socket` (already bound and listening).
    Open {
        kind: Listen,
        addr: SocketAddr,
        socket: std::net::TcpListener,
    },
    /// Stop accepting on `addr`; `done` is answered once the socket is closed.
    Close {
        addr: SocketAddr,
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
    initial: Vec<(Listen, SocketAddr, std::net::TcpListener)>,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut exit: watch::Receiver<bool>,
) {
    let mut open: HashMap<SocketAddr, Running> = HashMap::new();
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
    open: &mut HashMap<SocketAddr, Running>,
    kind: Listen,
    addr: SocketAddr,
    socket: std::net::TcpListener,
    shared: &Arc<Shared>,
) {
    let listener = match TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "worker cannot use its listener");
            return;
        }
    };
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(super::serve(kind, listener, shared.clone(), stopped));
    if let Some(old) = open.insert(addr, Running { stop, task }) {
        // Not expected (the reloader closes before it reopens), but never leave a loop behind.
        let _ = old.stop.send(true);
    }
}
