//! Starting the real proxy binary for end-to-end tests: a configuration written to a temp dir,
//! the proxy and admin ports on an address of this test's own.

#![allow(dead_code, clippy::unwrap_used)] // Each test file uses part of this; test code.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use meshentry_testutil::{ProxyProcess, unique_loopback};

pub struct Proxy {
    pub process: ProxyProcess,
    /// The explicit proxy listener.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Starts `meshentry proxy` on `config` (one YAML stream) with `extra` flags, and waits until
/// it listens.
pub async fn start_proxy(config: &str, extra: &[&str]) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), config).unwrap();
    let ip = IpAddr::V4(unique_loopback());
    let addr = SocketAddr::new(ip, 15080);
    let admin = SocketAddr::new(ip, 15000);
    let mut args = vec![
        "proxy".to_string(),
        "--config".into(),
        dir.path().display().to_string(),
        "--http-proxy".into(),
        addr.to_string(),
        "--admin".into(),
        admin.to_string(),
        "--outbound".into(),
        SocketAddr::new(ip, 15001).to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut process = ProxyProcess::spawn(env!("CARGO_BIN_EXE_meshentry"), args, [("RUST_LOG", "info")]);
    process.wait_listening(addr, Duration::from_secs(15)).await;
    Proxy {
        process,
        addr,
        admin,
        _dir: dir,
    }
}
