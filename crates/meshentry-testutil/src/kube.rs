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
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/k8s-apiserver")
}

/// A port with the next two free too (etcd's client, peer and metrics ports).
fn three_free_ports() -> u16 {
    for _ in 0..200 {
        let base = 20_000 + fastrand_port() % 20_000;
        let held: Vec<_> = (0..3)
            .map_while(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, base + i)).ok())
            .collect();
        if held.len() == 3 {
            return base;
        }
    }
    panic!("no three consecutive free ports on 127.0.0.1");
}

fn fastrand_port() -> u16 {
    // Spread concurrent tests apart without a shared counter: the process id and the time.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (std::process::id().wrapping_mul(7919) ^ nanos) as u16
}

impl KubeApi {
    /// Starts one, with Istio's CRDs established. Panics with the script's output when it cannot
    /// (a missing binary or tool is a failure, not a skip: `scripts/test` installs them).
    pub fn start() -> KubeApi {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let api = crate::wait::free_port(Ipv4Addr::LOCALHOST);
        let etcd = three_free_ports();
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
        };
        assert!(
            out.status.success(),
            "scripts/k8s-apiserver start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        kube
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
