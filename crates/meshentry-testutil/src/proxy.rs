//! The one way end-to-end tests start `meshentry proxy`: [`Proxy::builder`] writes the
//! configuration files to a private directory, puts every listener on an address of the test's
//! own, points DNS at an address of the test's own, starts the binary (directly, under a
//! descriptor limit, or as another uid in a network namespace) and returns once the admin
//! server answers `GET /ready` with `200 LIVE`.
//!
//! Readiness is asked of the admin server, not probed on the data listeners: the proxy binds
//! every listener before it starts serving admin, and a probe connection to a data listener
//! would be counted (and, on the outbound listener, loop-checked) by the proxy under test.
//! Admin responses are read with the strict reader of [`crate::raw`], like every other
//! response in the tests.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::netns::{Netns, make_accessible};
use crate::process::ProxyProcess;
use crate::raw::{RawClient, RawResponse};

/// How long a proxy may take to become ready: a debug build on a loaded two-core machine
/// takes well under a second; the margin only matters when something is wrong.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags the builder owns: passing them through [`ProxyBuilder::arg`] as well would give the
/// proxy the flag twice (an error for single-valued ones) or a listener the test does not know.
const OWNED_FLAGS: [&str; 4] = ["--http-proxy", "--admin", "--dns-server", "--outbound"];

/// A listener flag's value: an address, or `off`.
#[derive(Debug, Clone, Copy)]
enum Listen {
    At(SocketAddr),
    Off,
}

/// How to start one proxy; see [`Proxy::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until .start()"]
pub struct ProxyBuilder<'a> {
    bin: PathBuf,
    ip: IpAddr,
    files: Vec<(String, Vec<u8>)>,
    config_flag: bool,
    http: Option<Listen>,
    admin: Option<SocketAddr>,
    outbound: Option<Vec<Listen>>,
    dns: Option<SocketAddr>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    netns: Option<(&'a Netns, u32)>,
    fd_limit: Option<u32>,
}

/// A running `meshentry proxy`, killed (SIGKILL) when dropped; its output is printed if the
/// test is failing then.
#[derive(Debug)]
pub struct Proxy {
    /// The child process: its output, signals, exit status.
    pub process: ProxyProcess,
    /// The address of the test's own that the listeners are on.
    pub ip: IpAddr,
    /// The admin server.
    pub admin: SocketAddr,
    http: Option<SocketAddr>,
    outbound: Vec<SocketAddr>,
    config_dir: PathBuf,
    // Last: the process is killed before its configuration goes.
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// A builder for `bin` (the test's `env!("CARGO_BIN_EXE_meshentry")`) with the defaults:
    /// an address from [`crate::unique_loopback`] with the explicit proxy on port 15080, admin
    /// on 15000 and the outbound listener on 15001; `--dns-server` on port 53 of that address,
    /// where nothing answers unless the test starts a [`crate::TestDns`] there (so a lookup made
    /// by mistake never leaves loopback nor depends on the machine's resolv.conf);
    /// `RUST_LOG=info` (it overrides `--log-level`, so an inherited value cannot flood the
    /// pipes); and `--config` naming a directory of the files given with
    /// [`ProxyBuilder::config`] and [`ProxyBuilder::file`].
    pub fn builder(bin: impl AsRef<Path>) -> ProxyBuilder<'static> {
        ProxyBuilder {
            bin: bin.as_ref().to_path_buf(),
            ip: IpAddr::V4(crate::unique_loopback()),
            files: Vec::new(),
            config_flag: true,
            http: None,
            admin: None,
            outbound: None,
            dns: None,
            args: Vec::new(),
            env: vec![("RUST_LOG".into(), "info".into())],
            netns: None,
            fd_limit: None,
        }
    }
}

impl<'a> ProxyBuilder<'a> {
    /// The address the default listeners and the default DNS server are on (instead of a new
    /// one from [`crate::unique_loopback`]), for flags or files that must name it.
    pub fn ip(mut self, ip: impl Into<IpAddr>) -> Self {
        self.ip = ip.into();
        self
    }

    /// `yaml` as the configuration file `config.yaml`.
    pub fn config(self, yaml: impl AsRef<str>) -> Self {
        self.file("config.yaml", yaml.as_ref())
    }

    /// One more file in the configuration directory.
    pub fn file(mut self, name: &str, contents: impl AsRef<[u8]>) -> Self {
        self.files.push((name.to_owned(), contents.as_ref().to_vec()));
        self
    }

    /// Passes no `--config` for the directory (the test gives its own with [`ProxyBuilder::arg`]).
    pub fn no_config_dir(mut self) -> Self {
        self.config_flag = false;
        self
    }

    /// One more command-line argument, after the builder's own.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        let arg = arg.into();
        let flag = arg.to_string_lossy();
        if let Some(owned) = OWNED_FLAGS
            .iter()
            .find(|f| flag == **f || flag.starts_with(&format!("{f}=")))
        {
            panic!("ProxyBuilder: set {owned} with the builder's own method, not as an argument");
        }
        self.args.push(arg);
        self
    }

    /// More command-line arguments, after the builder's own.
    pub fn args<I, S>(self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        args.into_iter().fold(self, |b, a| b.arg(a))
    }

    /// An environment variable for the proxy (after the defaults, so it overrides them).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The explicit HTTP proxy listener at `addr` instead of port 15080 of the test's address.
    pub fn http_proxy(mut self, addr: SocketAddr) -> Self {
        self.http = Some(Listen::At(addr));
        self
    }

    /// `--http-proxy off`.
    pub fn http_proxy_off(mut self) -> Self {
        self.http = Some(Listen::Off);
        self
    }

    /// The admin server at `addr` instead of port 15000 of the test's address.
    pub fn admin(mut self, addr: SocketAddr) -> Self {
        self.admin = Some(addr);
        self
    }

    /// The outbound (transparent) listeners at `addrs` instead of port 15001 of the test's
    /// address.
    pub fn outbound(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.outbound = Some(addrs.into_iter().map(Listen::At).collect());
        self
    }

    /// `--outbound off`.
    pub fn outbound_off(mut self) -> Self {
        self.outbound = Some(vec![Listen::Off]);
        self
    }

    /// `--dns-server addr` (a [`crate::TestDns`]) instead of the test address's port 53.
    pub fn dns(mut self, addr: SocketAddr) -> Self {
        self.dns = Some(addr);
        self
    }

    /// Runs the proxy in `ns` as `uid` (`ip netns exec` and `setpriv`; see
    /// [`Netns::spawn_as`]), its configuration directory readable by that uid. Call
    /// [`ProxyBuilder::start`] inside [`Netns::block_on`], where the admin server is reachable.
    pub fn netns<'b>(self, ns: &'b Netns, uid: u32) -> ProxyBuilder<'b>
    where
        'a: 'b,
    {
        ProxyBuilder {
            netns: Some((ns, uid)),
            ..self
        }
    }

    /// Runs the proxy under `ulimit -n n`, soft and hard, so it cannot raise the limit.
    pub fn fd_limit(mut self, n: u32) -> Self {
        self.fd_limit = Some(n);
        self
    }

    /// Writes the configuration, starts the proxy and waits until `GET /ready` answers
    /// `200 LIVE`. Panics with the proxy's output if it exits first or is not ready in time.
    pub async fn start(self) -> Proxy {
        let ip = self.ip;
        // The proxy watches its config directory's parent too: a private one, so that other
        // processes' files in /tmp trigger no reloads.
        let dir = tempfile::Builder::new()
            .prefix("meshentry-proxy-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make a temp dir: {e}"));
        let config_dir = dir.path().join("config");
        std::fs::create_dir(&config_dir).unwrap_or_else(|e| panic!("{}: {e}", config_dir.display()));
        for (name, contents) in &self.files {
            let path = config_dir.join(name);
            std::fs::write(&path, contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        if self.netns.is_some() {
            make_accessible(dir.path());
        }
        let http = match self.http {
            None => Listen::At(SocketAddr::new(ip, 15080)),
            Some(l) => l,
        };
        let admin = self.admin.unwrap_or(SocketAddr::new(ip, 15000));
        let outbound = self
            .outbound
            .unwrap_or_else(|| vec![Listen::At(SocketAddr::new(ip, 15001))]);
        let dns = self.dns.unwrap_or(SocketAddr::new(ip, 53));
        let value = |l: &Listen| match l {
            Listen::At(a) => a.to_string(),
            Listen::Off => "off".to_owned(),
        };
        let mut args: Vec<OsString> = vec!["proxy".into()];
        if self.config_flag {
            args.extend(["--config".into(), config_dir.clone().into_os_string()]);
        }
        args.extend(["--http-proxy".into(), value(&http).into()]);
        args.extend(["--admin".into(), admin.to_string().into()]);
        for l in &outbound {
            args.extend(["--outbound".into(), value(l).into()]);
        }
        args.extend(["--dns-server".into(), dns.to_string().into()]);
        args.extend(self.args);
        let mut process = match (self.netns, self.fd_limit) {
            (None, None) => ProxyProcess::spawn(&self.bin, &args, self.env),
            (None, Some(n)) => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(&self.bin)
                    .args(&args)
                    .envs(self.env);
                ProxyProcess::spawn_command(cmd, &format!("meshentry (ulimit -n {n})"))
            }
            (Some((ns, uid)), None) => ns.spawn_as(uid, &self.bin, &args, self.env),
            (Some(_), Some(_)) => panic!("ProxyBuilder: fd_limit in a network namespace is not supported"),
        };
        wait_ready(&mut process, admin).await;
        let at = |l: &Listen| match l {
            Listen::At(a) => Some(*a),
            Listen::Off => None,
        };
        Proxy {
            process,
            ip,
            admin,
            http: at(&http),
            outbound: outbound.iter().filter_map(at).collect(),
            config_dir,
            _dir: dir,
        }
    }
}

/// Polls `GET /ready` on `admin` until it answers `200 LIVE`.
async fn wait_ready(process: &mut ProxyProcess, admin: SocketAddr) {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no attempt yet");
    loop {
        if let Some(status) = process.try_wait() {
            panic!(
                "the proxy exited with {status} before it was ready ({last})\n{}",
                process.output()
            );
        }
        match admin_request(admin, "/ready", Duration::from_secs(2)).await {
            Ok(r) if r.status == 200 && r.body == b"LIVE\n" => return,
            Ok(r) => last = format!("/ready answered {} {:?}", r.status, r.text()),
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            panic!(
                "the proxy was not ready within {READY_TIMEOUT:?} ({last})\n{}",
                process.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One `GET path` on its own connection to the admin server, read strictly.
async fn admin_request(admin: SocketAddr, path: &str, within: Duration) -> Result<RawResponse, String> {
    let mut c = RawClient::connect(admin).await?;
    c.send(format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    c.read_response("GET", within).await
}

impl Proxy {
    /// The explicit HTTP proxy listener. Panics if it is off.
    pub fn http(&self) -> SocketAddr {
        self.http.expect("the proxy was started with --http-proxy off")
    }

    /// `http://` and [`Proxy::http`], for `curl -x` and `HTTP_PROXY`.
    pub fn url(&self) -> String {
        format!("http://{}", self.http())
    }

    /// The outbound (transparent) listeners.
    pub fn outbound(&self) -> &[SocketAddr] {
        &self.outbound
    }

    /// The configuration directory (`--config`).
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// `config.yaml` in the configuration directory.
    pub fn config_file(&self) -> PathBuf {
        self.config_dir.join("config.yaml")
    }

    /// Everything the proxy wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// Everything the proxy wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.process.stdout()
    }

    /// `GET path` on the admin server, read strictly; `Err` says why there is no well-framed
    /// response (also for a proxy that is draining or gone).
    pub async fn try_admin_get(&self, path: &str) -> Result<RawResponse, String> {
        admin_request(self.admin, path, ADMIN_TIMEOUT).await
    }

    /// `GET path` on the admin server, read strictly. Panics if there is no well-framed
    /// response.
    pub async fn admin_get(&self, path: &str) -> RawResponse {
        self.try_admin_get(path)
            .await
            .unwrap_or_else(|e| panic!("admin GET {path}: {e}\n{}", self.process.output()))
    }

    /// `GET path` on the admin server as JSON; panics unless it is a `200` with an
    /// `application/json` body.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let r = self.admin_get(path).await;
        assert_eq!(r.status, 200, "admin GET {path}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"), "admin GET {path}");
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("admin GET {path} is not JSON ({e}): {}", r.text()))
    }

    /// `/config_dump` as JSON.
    pub async fn config_dump(&self) -> serde_json::Value {
        self.admin_json("/config_dump").await
    }

    /// Every counter of `/stats` (`meshentry.NAME: VALUE` lines), or why there are none.
    pub async fn try_stats(&self) -> Result<BTreeMap<String, u64>, String> {
        let r = self.try_admin_get("/stats").await?;
        if r.status != 200 {
            return Err(format!("/stats answered {}: {}", r.status, r.text()));
        }
        parse_stats(&r.text())
    }

    /// Every counter of `/stats`. Panics if the admin server does not answer with them.
    pub async fn stats(&self) -> BTreeMap<String, u64> {
        self.try_stats()
            .await
            .unwrap_or_else(|e| panic!("GET /stats: {e}\n{}", self.process.output()))
    }

    /// One counter of `/stats` (`meshentry.NAME`). Panics if there is no such counter.
    pub async fn stat(&self, name: &str) -> u64 {
        let all = self.stats().await;
        *all.get(name)
            .unwrap_or_else(|| panic!("/stats has no {name}: {all:#?}"))
    }
}

/// The `meshentry.NAME: VALUE` lines of `/stats`; any other line is an error.
fn parse_stats(text: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let parsed = line
            .strip_prefix("meshentry.")
            .and_then(|l| l.split_once(": "))
            .and_then(|(n, v)| Some((n.to_owned(), v.parse::<u64>().ok()?)));
        let Some((name, value)) = parsed else {
            return Err(format!("a /stats line that is not `meshentry.NAME: NUMBER`: {line:?}"));
        };
        if out.insert(name, value).is_some() {
            return Err(format!("a counter twice in /stats: {line:?}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_lines_are_parsed_strictly() {
        let ok = parse_stats("meshentry.a_total: 1\nmeshentry.b: 20\n").unwrap_or_default();
        assert_eq!(ok.get("a_total"), Some(&1));
        assert_eq!(ok.get("b"), Some(&20));
        for bad in [
            "meshentry.a: x\n",
            "a: 1\n",
            "meshentry.a: 1\nmeshentry.a: 2\n",
            "meshentry.a:1\n",
        ] {
            assert!(parse_stats(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    #[should_panic(expected = "builder's own method")]
    fn owned_flags_are_refused_as_arguments() {
        let _ = Proxy::builder("/bin/true").arg("--dns-server");
    }
}
