//! Network namespaces for transparent-capture tests: each test gets a namespace of its own, in
//! which it can install iptables rules, run the proxy as the capture-exempt uid and run
//! applications that know nothing about the proxy, without touching the host's network.
//!
//! A namespace starts with `lo` up and one more interface, `dummy0`, that holds TEST-NET
//! addresses ([`DUMMY_V4`], [`DUMMY_V6`]) and the default IPv4 and IPv6 routes. The routes make
//! connects to non-loopback addresses (`198.51.100.10`, `2001:db8::5`) go ahead, so iptables
//! can capture them, as it does in a pod; what is not captured reaches `dummy0`, which drops it.
//! The namespace has no link to the host, so nothing can leave it either way.
//!
//! Test code runs inside the namespace with [`Netns::block_on`]: a thread that enters the
//! namespace and runs a tokio runtime of its own. Everything created there (sockets, the
//! servers of this crate, their threads, `spawn_blocking` threads, child processes) lives in the
//! namespace. Addresses from [`crate::unique_loopback`] work there as anywhere (all of
//! `127.0.0.0/8` is local once `lo` is up); as the namespace is the test's own, they only need
//! to be distinct within the test.

use std::ffi::OsStr;
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::ProxyProcess;

/// The uid Istio runs its proxy as, and the one capture exempts in these tests.
pub const PROXY_UID: u32 = 1337;

/// `dummy0`'s IPv4 address, in TEST-NET-1 (RFC 5737): the source of captured connections to
/// non-loopback addresses.
pub const DUMMY_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// `dummy0`'s IPv6 address, in the documentation prefix (RFC 3849), outside `2001:db8::/64` so
/// that tests can use addresses such as `2001:db8::5` as destinations that are not local.
pub const DUMMY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);

/// Where `ip netns add` mounts a namespace: the handle [`Netns::block_on`] enters by.
const NETNS_DIR: &str = "/var/run/netns";

/// A network namespace that exists for the life of the value: `ip netns del` on drop, also when
/// the test panics.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

fn stdout_and_stderr(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Netns {
    /// Creates a namespace named `<prefix>-<pid>-<n>`, with `lo` up, `dummy0` and the default
    /// routes. Panics (with the reason) when not root or iproute2 is missing.
    pub fn new(prefix: &str) -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        static SWEPT: Mutex<Vec<String>> = Mutex::new(Vec::new());
        {
            let mut swept = SWEPT.lock().unwrap_or_else(|e| e.into_inner());
            if !swept.iter().any(|p| p == prefix) {
                remove_orphans(prefix);
                swept.push(prefix.to_owned());
            }
        }
        let name = format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip (install iproute2): {e}"));
        assert!(
            out.status.success(),
            "ip netns add {name} (needs root): {}",
            stdout_and_stderr(&out)
        );
        // Owned from here on, so a failure below still deletes the namespace.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        // Kernels built without the dummy driver (some VM kernels) have ifb, which likewise
        // takes no ARP and drops every locally sent packet.
        if !ns.try_ip(&["link", "add", "dummy0", "type", "dummy"]) {
            ns.ip(&["link", "add", "dummy0", "type", "ifb"]);
        }
        ns.ip(&["link", "set", "dummy0", "up"]);
        ns.ip(&["addr", "add", &format!("{DUMMY_V4}/24"), "dev", "dummy0"]);
        // nodad: the address is usable at once instead of after duplicate address detection.
        ns.ip(&["-6", "addr", "add", &format!("{DUMMY_V6}/64"), "dev", "dummy0", "nodad"]);
        ns.ip(&["route", "add", "default", "dev", "dummy0"]);
        ns.ip(&["-6", "route", "add", "default", "dev", "dummy0"]);
        ns
    }

    /// The namespace's name, for `ip netns exec` and `ip -n`.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn try_ip(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Runs `ip -n <name> args...`, asserting success.
    pub fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
        assert!(
            out.status.success(),
            "ip -n {} {args:?}: {}",
            self.name,
            stdout_and_stderr(&out)
        );
    }

    /// Adds `ip` to `lo` (as a /32 or /128), usable at once, for servers on addresses that are
    /// neither 127.0.0.0/8 nor ::1, e.g. an IPv6 upstream the proxy dials.
    pub fn add_local_address(&self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.ip(&["addr", "add", &format!("{v4}/32"), "dev", "lo"]),
            // Without nodad the address stays tentative (binding it fails) until duplicate
            // address detection is over, even on lo.
            IpAddr::V6(v6) => self.ip(&["-6", "addr", "add", &format!("{v6}/128"), "dev", "lo", "nodad"]),
        }
    }

    /// A command that runs `program` in the namespace (`ip netns exec <name> program`), as root
    /// unless the program changes that.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `cmd` (program and arguments) in the namespace and returns its output.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let (program, args) = cmd.split_first().expect("exec needs a program");
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?} in {}: {e}", self.name))
    }

    /// Runs `cmd` in the namespace, asserting success; returns its stdout.
    pub fn run(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        assert!(
            out.status.success(),
            "{cmd:?} in {}: {}",
            self.name,
            stdout_and_stderr(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether a TCP socket in the namespace listens on exactly `addr`. Asks `ss` rather than
    /// connecting, for listeners a probe connection would disturb (the outbound listener counts
    /// and loop-checks every connection).
    pub fn listening(&self, addr: SocketAddr) -> bool {
        !self.run(&["ss", "-Hltn", "src", &addr.to_string()]).trim().is_empty()
    }

    /// Waits until `process` listens on every one of `addrs` (by [`Netns::listening`]); panics
    /// with its output if it exits first or `timeout` passes.
    pub async fn wait_listening(&self, process: &mut ProxyProcess, addrs: &[SocketAddr], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = process.try_wait() {
                panic!(
                    "the process exited with {status} before listening on {addrs:?}\n{}",
                    process.output()
                );
            }
            if addrs.iter().all(|a| self.listening(*a)) {
                return;
            }
            if Instant::now() >= deadline {
                panic!("not listening on {addrs:?} within {timeout:?}\n{}", process.output());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts `bin` in the namespace as `uid` (group `uid`, no supplementary groups), through
    /// `ip netns exec` and `setpriv`, both of which exec: the process's pid is the binary's.
    /// Whatever it reads (its binary, a config directory) must be accessible to that uid; see
    /// [`make_accessible`].
    pub fn spawn_as<I, S, E, K, V>(&self, uid: u32, bin: impl AsRef<Path>, args: I, env: E) -> ProxyProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
        E: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let bin = bin.as_ref();
        let id = uid.to_string();
        let mut cmd = self.command("setpriv");
        cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups"])
            .arg(bin)
            .args(args)
            .envs(env);
        let label = format!("{} (uid {uid}, netns {})", bin.display(), self.name);
        ProxyProcess::spawn_command(cmd, &label)
    }

    /// Moves the calling thread into the namespace. Only this thread moves; threads and
    /// processes it starts afterwards are created in the namespace too.
    fn enter(&self) -> std::io::Result<()> {
        let handle = File::open(self.path())?;
        rustix::thread::move_into_link_name_space(handle.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))?;
        Ok(())
    }

    /// The namespace's mount point (`/var/run/netns/<name>`).
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs the future `f` makes to completion on a new thread inside the namespace, with a
    /// current-thread tokio runtime of its own, and returns its output. A panic in it is
    /// re-raised here with its original payload (so `#[should_panic(expected)]` works), after
    /// everything it owned was dropped.
    pub fn block_on<'a, F, Fut>(&'a self, f: F) -> Fut::Output
    where
        F: FnOnce() -> Fut + Send + 'a,
        Fut: Future,
        Fut::Output: Send + 'a,
    {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(scope, move || {
                    self.enter()
                        .unwrap_or_else(|e| panic!("cannot enter network namespace {}: {e}", self.name));
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("building a tokio runtime in the namespace thread");
                    runtime.block_on(f())
                })
                .expect("spawning the namespace thread");
            match thread.join() {
                Ok(out) => out,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Sockets still open in the namespace keep it alive until they close; the name goes now.
        let out = Command::new("ip").args(["netns", "del", &self.name]).output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) && !std::thread::panicking() {
            eprintln!("ip netns del {} failed: {out:?}", self.name);
        }
    }
}

/// Deletes namespaces named `<prefix>-<pid>-<n>` whose process is gone: a test process that
/// was killed (a CI timeout, ^C) never ran its drops. A pid in use again only delays that.
fn remove_orphans(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, n)| n.parse::<usize>().ok().and(pid.parse::<u32>().ok()))
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// Makes `path` and everything under it usable by any uid: directories searchable and listable,
/// files readable, unix sockets connectable. The proxy in a capture test runs as
/// [`PROXY_UID`] while tests create its config and sockets as root, in temporary directories
/// that are private (0700) by default.
pub fn make_accessible(path: &Path) {
    let meta = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let kind = meta.file_type();
    let mode = if kind.is_dir() {
        0o755
    } else if kind.is_socket() {
        0o777
    } else if kind.is_symlink() {
        return;
    } else {
        0o644 | (meta.permissions().mode() & 0o111)
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
    if kind.is_dir() {
        for entry in std::fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
            make_accessible(&entry.unwrap_or_else(|e| panic!("{}: {e}", path.display())).path());
        }
    }
}
