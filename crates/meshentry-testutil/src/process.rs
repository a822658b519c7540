//! Runs a binary (the proxy) as a child process for end-to-end tests: captures its output,
//! waits for it to listen, and kills it when the test ends, printing its output if the test
//! failed.

use std::ffi::OsStr;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running child process whose stdout and stderr are captured. Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct ProxyProcess {
    child: Child,
    program: String,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

/// Copies a pipe into a buffer until EOF, on a thread so the child never blocks on a full pipe.
fn capture(mut pipe: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            buf.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&chunk[..n]);
        }
    })
}

fn text(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

impl ProxyProcess {
    /// Starts `bin` with `args` and the extra environment `env` (added to the inherited one),
    /// stdin closed. Panics if it cannot be started.
    pub fn spawn<I, S, E, K, V>(bin: impl AsRef<Path>, args: I, env: E) -> ProxyProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
        E: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let bin = bin.as_ref();
        let mut cmd = Command::new(bin);
        cmd.args(args).envs(env);
        ProxyProcess::spawn_command(cmd, &bin.display().to_string())
    }

    /// Starts a prepared command (for a binary run through a wrapper, such as `ip netns exec`
    /// and `setpriv`), stdin closed and the outputs captured; `label` names it in failure
    /// messages. Panics if it cannot be started.
    pub fn spawn_command(mut cmd: Command, label: &str) -> ProxyProcess {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(capture(out, stdout.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(capture(err, stderr.clone()));
        }
        ProxyProcess {
            child,
            program: label.to_owned(),
            stdout,
            stderr,
            readers,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        text(&self.stdout)
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        text(&self.stderr)
    }

    /// Both outputs, labelled, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.program,
            self.stdout(),
            self.program,
            self.stderr()
        )
    }

    /// The exit status if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until `addr` accepts TCP connections. Panics with the captured output if the
    /// child exits first or `timeout` passes.
    pub async fn wait_listening(&mut self, addr: SocketAddr, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                self.join_readers();
                panic!(
                    "{} exited with {status} before listening on {addr}\n{}",
                    self.program,
                    self.output()
                );
            }
            let attempt = tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr));
            if let Ok(Ok(_)) = attempt.await {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not listen on {addr} within {timeout:?}\n{}",
                    self.program,
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM (through `kill(1)`, as the crate forbids unsafe code), for graceful-shutdown
    /// tests; pair with [`ProxyProcess::wait_exit`].
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            panic!("kill -TERM {} failed: {status:?}", self.child.id());
        }
    }

    /// Sends SIGHUP (through `kill(1)`), for configuration reload tests.
    pub fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            panic!("kill -HUP {} failed: {status:?}", self.child.id());
        }
    }

    /// Waits up to `timeout` for the child to exit and returns its status; panics with the
    /// captured output on timeout.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                self.join_readers();
                return status;
            }
            if Instant::now() >= deadline {
                panic!("{} did not exit within {timeout:?}\n{}", self.program, self.output());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the child (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_readers();
    }

    /// After exit the pipes reach EOF; joining makes the captured output complete.
    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.kill();
        // A failing test's own message rarely explains a proxy problem; its logs usually do.
        if std::thread::panicking() {
            eprintln!("{}", self.output());
        }
    }
}
