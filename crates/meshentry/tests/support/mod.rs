//! Starting the real proxy binary for end-to-end tests: a configuration written to a temp dir,
//! the proxy and admin ports on an address of this test's own.

#![allow(dead_code, clippy::unwrap_used)] // Each test file uses part of this; test code.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
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
    start_proxy_at(IpAddr::V4(unique_loopback()), config, extra).await
}

/// [`start_proxy`] on `ip`, an address of the test's own (for flags that must name it, such
/// as `--gateway-bind`).
pub async fn start_proxy_at(ip: IpAddr, config: &str, extra: &[&str]) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), config).unwrap();
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

impl Proxy {
    /// The file the proxy's configuration is in (`config.yaml` in its `--config` directory).
    pub fn config_file(&self) -> PathBuf {
        self._dir.path().join("config.yaml")
    }

    /// GETs `path` from the admin server: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, body.to_string())
    }

    /// `/config_dump` as JSON.
    pub async fn config_dump(&self) -> serde_json::Value {
        let (status, body) = self.admin_get("/config_dump").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// One counter of `/stats` (`meshentry.NAME`).
    pub async fn stat(&self, name: &str) -> u64 {
        let (_, body) = self.admin_get("/stats").await;
        let key = format!("meshentry.{name}: ");
        body.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .unwrap_or_else(|| panic!("/stats has no {name}:\n{body}"))
            .trim()
            .parse()
            .unwrap()
    }
}
