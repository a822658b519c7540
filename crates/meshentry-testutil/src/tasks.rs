//! Each server runs on its own single-threaded tokio runtime on its own thread. Dropping the
//! server drops that runtime, which drops every task synchronously: when `drop` returns the
//! listener is closed (connections are refused, the fixed port can be bound again at once) and
//! so is every open connection. Aborting tasks on the test's runtime could not promise that,
//! because an aborted task is only dropped when its runtime next polls it.
//!
//! A separate runtime also keeps servers independent of the test's runtime flavour and of
//! `tokio::time::pause` in the test: a `/delay/` or a DNS delay is always real time.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// A handle for spawning onto a server's runtime.
#[derive(Clone)]
pub(crate) struct Tasks(Handle);

impl Tasks {
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.0.spawn(fut));
    }

    /// Enters the runtime, so sockets converted from std register with its I/O driver.
    pub(crate) fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.0.enter()
    }
}

/// Owns a server's runtime thread; dropping it shuts the runtime down and waits for that.
pub(crate) struct TaskGuard {
    tasks: Tasks,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TaskGuard {
    pub(crate) fn new(what: &str) -> TaskGuard {
        let runtime = Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a current-thread tokio runtime for a test server");
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("testutil-{what}"))
            .spawn(move || {
                // Ends when the guard sends or is dropped; then dropping the runtime drops
                // every task, closing listeners and connections.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                drop(runtime);
            })
            .expect("spawning a test server thread");
        TaskGuard {
            tasks: Tasks(handle),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub(crate) fn tasks(&self) -> &Tasks {
        &self.tasks
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic on the server thread was already reported there; don't panic in drop.
            let _ = thread.join();
        }
    }
}
