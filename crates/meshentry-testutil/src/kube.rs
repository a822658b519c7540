//! A real Kubernetes API server for one test: `k8s.io/apiextensions-apiserver` over etcd, with
//! Istio's networking CRDs installed, started by `scripts/k8s-apiserver` in a directory of its
//! own on free ports of 127.0.0.1 and stopped when dropped. Real schema validation,
//! resourceVersions and watches; no core resources (Pods, Services, Secrets).

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running API server and its kubeconfig.
pub struct KubeApi {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    port: u16,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/k8s-apiserver")
}

/// Four consecutive free ports on 127.0.0.1 (the API server's, then etcd's client, peer and
/// metrics ports), below the kernel's ephemeral range: a port in that range that is free when
/// checked can be taken a moment later by any outgoing connection (kubectl's, a proxy's), and
/// etcd then fails to bind it.
fn four_free_ports() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Concurrent tests of one process step apart; processes start apart by their id.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let (low, high) = (10_000u16, ephemeral_low().saturating_sub(8).max(10_100));
    let span = high - low;
    let seed = (std::process::id() as u16).wrapping_mul(7919) % span;
    for _ in 0..400 {
        let step = NEXT.fetch_add(4, Ordering::Relaxed);
        let base = low + (seed.wrapping_add(step)) % span;
        let held: Vec<_> = (0..4)
            .map_while(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, base + i)).ok())
            .collect();
        if held.len() == 4 {
            return base;
        }
    }
    panic!("no four consecutive free ports on 127.0.0.1 below the ephemeral range");
}

/// The first port of the kernel's ephemeral range (Linux: 32768 by default).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

impl KubeApi {
    /// Starts one, with Istio's CRDs established. Panics with the script's output when it cannot
    /// (a missing binary or tool is a failure, not a skip: `scripts/test` installs them).
    pub fn start() -> KubeApi {
        let mut last = String::new();
        // Another process can still take a port between the check and etcd's bind: try again
        // on other ports then, and only then.
        for _ in 0..4 {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let base = four_free_ports();
            let (api, etcd) = (base, base + 1);
            let out = Command::new(script())
                .arg("start")
                .arg(dir.path())
                .env("API_PORT", api.to_string())
                .env("ETCD_PORT", etcd.to_string())
                .output()
                .expect("scripts/k8s-apiserver runs");
            let kube = KubeApi {
                kubeconfig: dir.path().join("kubeconfig"),
                dir,
                port: api,
            };
            if out.status.success() {
                return kube;
            }
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !last.contains("address already in use") {
                break;
            }
            // Dropping `kube` stops whatever did start.
        }
        panic!("scripts/k8s-apiserver start failed: {last}");
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs kubectl against this server.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("kubectl runs (scripts/test installs it)")
    }

    /// Its directory: `pki/` (CA, server and admin client certificates), logs, etcd's data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The API server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs the script's `action` on this server's directory (and `more` arguments), which
    /// must succeed; returns its standard output.
    fn script(&self, action: &str, more: &[&str]) -> String {
        let out = Command::new(script())
            .arg(action)
            .arg(self.dir.path())
            .args(more)
            .output()
            .expect("scripts/k8s-apiserver runs");
        assert!(
            out.status.success(),
            "scripts/k8s-apiserver {action} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the API server and etcd (SIGKILL, as a crash: watches break mid-stream).
    pub fn kill(&self) {
        self.script("kill", &[]);
    }

    /// Starts them again after [`KubeApi::kill`], on the same data, certificates and ports.
    pub fn restart(&self) {
        self.script("start", &[]);
    }

    /// Kills only the API server (etcd keeps running), as a crash.
    pub fn kill_apiserver(&self) {
        let pid_file = self.dir.path().join("crd-apiserver.pid");
        let pid = std::fs::read_to_string(&pid_file).expect("the API server's pid file");
        let out = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .output()
            .expect("kill runs");
        assert!(out.status.success(), "kill -KILL {pid}: {out:?}");
        let _ = std::fs::remove_file(pid_file);
        // Until the process is gone and its port free for the restart.
        for _ in 0..200 {
            if TcpListener::bind((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("the API server's port {} is still taken after kill", self.port);
    }

    /// Starts an API server on `port` over this server's etcd (a second one, or this one again
    /// after [`KubeApi::kill_apiserver`] with `port` = [`KubeApi::port`]).
    pub fn serve(&self, port: u16) {
        self.script("serve", &[&port.to_string()]);
    }

    /// Compacts etcd's history to its current revision; returns that revision. A watch from an
    /// older resourceVersion then gets 410 Gone.
    pub fn compact(&self) -> u64 {
        let out = self.script("compact", &[]);
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("compact printed {out:?}: {e}"))
    }

    /// `kubectl apply -f -` with `yaml`, which must succeed; `server` overrides the kubeconfig's
    /// (another API server over the same etcd).
    pub fn apply_yaml(&self, yaml: &str, server: Option<u16>) {
        use std::io::Write;
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", &self.kubeconfig);
        if let Some(port) = server {
            cmd.arg(format!("--server=https://127.0.0.1:{port}"));
        }
        let mut child = cmd
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl runs (scripts/test installs it)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write to kubectl");
        let out = child.wait_with_output().expect("kubectl ends");
        assert!(
            out.status.success(),
            "kubectl apply -f - failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl delete KIND NAME -n NAMESPACE`, which must succeed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str, server: Option<u16>) {
        let server = server.map(|p| format!("--server=https://127.0.0.1:{p}"));
        let mut args = vec!["delete", kind, name, "-n", namespace];
        if let Some(s) = &server {
            args.insert(0, s);
        }
        let out = self.kubectl(&args);
        assert!(
            out.status.success(),
            "kubectl delete {kind} {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl apply -f PATH`, which must succeed.
    pub fn apply(&self, path: &Path) {
        let out = self.kubectl(&["apply", "-f", &path.to_string_lossy()]);
        assert!(
            out.status.success(),
            "kubectl apply -f {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(self.dir.path()).output();
    }
}
