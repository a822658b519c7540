//! End-to-end tests of the loop guard and the admin listener's hardening (issue 13, items 4
//! and 5): a request addressed to the proxy itself in any form (the unspecified address,
//! IPv4-mapped IPv6, a STATIC endpoint or a DNS name that is the proxy) is refused with 508 and
//! never loops; a request that comes back through another proxy carries this proxy's `Via`
//! marker and is refused the same way; the admin pages are never served through the proxy; and
//! neither a flood of admin connections nor running out of file descriptors stops the data
//! plane or spins a core.
//!
//! Every test runs the real binary with `--workers 1` on loopback only: its own `127.x`
//! addresses from [`unique_loopback`], except the tests of `0.0.0.0`, which Linux delivers to
//! `127.0.0.1` and so need the proxy there (on free ports). Upstreams are STATIC endpoints or
//! IP literals on loopback; the DNS server, when there is one, is the test's own.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use meshentry_testutil::{HttpUpstream, TestDns, eventually, free_port, raw, unique_loopback};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");
const PATIENCE: Duration = Duration::from_secs(10);

/// The floods need some 700 descriptors in this process and a core to measure the proxy's CPU
/// on: one at a time.
static FLOOD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// Configuration

/// A STATIC ServiceEntry for `host:port` (HTTP) with one endpoint.
fn entry(name: &str, host: &str, port: u16, endpoint: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n\
         spec:\n  hosts: [{host}]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n\
         \x20 ports:\n  - {{number: {port}, name: http, protocol: HTTP}}\n\
         \x20 endpoints:\n  - {{address: \"{}\", ports: {{http: {}}}}}\n---\n",
        endpoint.ip(),
        endpoint.port()
    )
}

/// A VirtualService for `host` with a route timeout: not a "simple" rule, so its requests take
/// the general (hyper) path rather than the HTTP/1 fast path.
fn general_path(name: &str, host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n\
         spec:\n  hosts: [{host}]\n  http:\n  - timeout: 5s\n    route:\n    - destination: {{host: {host}}}\n---\n"
    )
}

/// Something for the configuration to hold when a test only needs the proxy's own listeners.
fn unrelated() -> String {
    entry("unrelated", "unrelated.test", 80, SocketAddr::from(([127, 0, 0, 1], 9)))
}

// ---------------------------------------------------------------------------------------------
// The proxy under test

struct Proxy {
    inner: meshentry_testutil::Proxy,
    http: SocketAddr,
    admin: SocketAddr,
    /// The configuration file, for reloads.
    config_file: std::path::PathBuf,
}

/// How to start one.
struct Launch<'a> {
    http: SocketAddr,
    admin: SocketAddr,
    yaml: &'a str,
    /// More flags; a `--dns-server` among them replaces the default (an address of the
    /// proxy's own where nothing answers, so no name can be looked up beyond loopback).
    extra: &'a [&'a str],
    /// Run under `ulimit -n` (soft and hard, so the proxy cannot raise it).
    fd_limit: Option<u32>,
}

impl Launch<'_> {
    async fn start(self) -> Proxy {
        let mut builder = meshentry_testutil::Proxy::builder(BIN)
            .http_proxy(self.http)
            .admin(self.admin)
            .outbound_off()
            .config(self.yaml)
            .args(["--workers", "1"]);
        if self.http.ip() == std::net::IpAddr::from(Ipv4Addr::LOCALHOST) {
            // 127.0.0.1:53 may be the machine's own resolver.
            builder = builder.dns(SocketAddr::from((unique_loopback(), 53)));
        } else {
            builder = builder.ip(self.http.ip());
        }
        let mut extra = self.extra.iter();
        while let Some(flag) = extra.next() {
            if *flag == "--dns-server" {
                let addr = extra.next().expect("--dns-server needs an address");
                builder = builder.dns(addr.parse().expect("--dns-server takes an address"));
            } else {
                builder = builder.arg(*flag);
            }
        }
        if let Some(n) = self.fd_limit {
            builder = builder.fd_limit(n);
        }
        let inner = builder.start().await;
        Proxy {
            http: self.http,
            admin: self.admin,
            config_file: inner.config_file(),
            inner,
        }
    }
}

impl Proxy {
    /// On `ip` at the usual ports.
    async fn start(ip: Ipv4Addr, yaml: &str, extra: &[&str]) -> Proxy {
        Launch {
            http: SocketAddr::from((ip, 15080)),
            admin: SocketAddr::from((ip, 15000)),
            yaml,
            extra,
            fd_limit: None,
        }
        .start()
        .await
    }

    /// On 127.0.0.1 (free ports): where Linux delivers connections to the unspecified address.
    async fn start_on_localhost(yaml: &str, extra: &[&str]) -> Proxy {
        let ip = Ipv4Addr::LOCALHOST;
        Launch {
            http: SocketAddr::from((ip, free_port(ip))),
            admin: SocketAddr::from((ip, free_port(ip))),
            yaml,
            extra,
            fd_limit: None,
        }
        .start()
        .await
    }

    /// A counter of `/stats` (`meshentry.<name>: <value>`).
    async fn stat(&self, name: &str) -> u64 {
        self.inner.stat(name).await
    }

    /// Connections the data plane accepted so far.
    async fn connections(&self) -> u64 {
        self.stat("downstream_cx_total").await
    }

    fn assert_healthy(&mut self) {
        if let Some(status) = self.inner.process.try_wait() {
            panic!("the proxy exited ({status})\n{}", self.inner.process.output());
        }
        let stderr = self.inner.process.stderr();
        assert!(!stderr.contains("panicked"), "the proxy panicked:\n{stderr}");
    }
}

/// `curl -x proxy url` with extra args: (status, body). A curl failure (timeout, reset) is
/// status 0 with curl's message as the body.
fn curl(proxy: SocketAddr, url: &str, extra: &[&str]) -> (u16, String) {
    let out = meshentry_testutil::curl_command()
        .args([
            "-sS",
            "--max-time",
            "15",
            "-x",
            &format!("http://{proxy}"),
            "-w",
            "\n%{http_code}",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("these tests need curl (apt-get install curl; CI installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let code = code.parse().unwrap_or(0);
    if code == 0 {
        return (0, String::from_utf8_lossy(&out.stderr).into_owned());
    }
    (code, body.to_string())
}

/// Sends `head` on a new connection to `addr` and returns the status code of the answer,
/// read strictly.
async fn raw_status(addr: SocketAddr, head: &str) -> u16 {
    raw::exchange(addr, head.as_bytes(), PATIENCE).await.unwrap().status
}

/// Asserts that a request answered `status` 508 with the proxy's loop reason.
fn assert_loop(what: &str, (status, body): &(u16, String)) {
    assert_eq!(*status, 508, "{what}: expected 508 Loop Detected, got {status}: {body}");
    assert!(
        body.contains("this proxy") || body.contains("request loop"),
        "{what}: the 508 does not say why: {body}"
    );
}

/// Asserts that the data plane accepted at most `most` connections since `before` (the test's
/// own, and one per hop it expects): a loop would have opened one per round.
async fn assert_no_loop(proxy: &Proxy, before: u64, most: u64, what: &str) {
    let after = proxy.connections().await;
    assert!(
        after - before <= most,
        "{what}: {} connections for one request: it looped",
        after - before
    );
}

// ---------------------------------------------------------------------------------------------
// Item 4: the loop guard

#[tokio::test]
async fn the_unspecified_address_on_a_proxy_port_is_the_proxy() {
    let mut proxy = Proxy::start_on_localhost(
        &unrelated(),
        &["--outbound-policy", "ALLOW_ANY", "--max-connections", "40"],
    )
    .await;
    let port = proxy.http.port();
    for url in [format!("http://0.0.0.0:{port}/"), format!("http://[::]:{port}/x")] {
        let before = proxy.connections().await;
        // The HTTP/1 fast path, then the general path (HTTP/1.0 goes there).
        assert_loop(&url, &curl(proxy.http, &url, &[]));
        assert_loop(&url, &curl(proxy.http, &url, &["-0"]));
        assert_no_loop(&proxy, before, 2, &url).await;
    }
    // A tunnel to it would loop as well.
    let before = proxy.connections().await;
    let status = raw_status(
        proxy.http,
        &format!("CONNECT 0.0.0.0:{port} HTTP/1.1\r\nHost: 0.0.0.0:{port}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 508, "CONNECT 0.0.0.0:{port}");
    assert_no_loop(&proxy, before, 1, "CONNECT").await;
    assert!(proxy.stat("bad_requests_total").await >= 5);
    proxy.assert_healthy();
}

#[tokio::test]
async fn the_admin_pages_are_not_served_through_the_proxy() {
    let mut proxy = Proxy::start_on_localhost(
        &unrelated(),
        &["--outbound-policy", "ALLOW_ANY", "--max-connections", "40"],
    )
    .await;
    let admin = proxy.admin.port();
    for url in [
        format!("http://0.0.0.0:{admin}/stats"),
        format!("http://[::ffff:127.0.0.1]:{admin}/config_dump"),
        format!("http://127.0.0.1:{admin}/server_info"),
        format!("http://localhost:{admin}/stats"),
    ] {
        for extra in [&[][..], &["-0"][..]] {
            let answer = curl(proxy.http, &url, extra);
            assert!(
                !answer.1.contains("meshentry.")
                    && !answer.1.contains("uptime_seconds")
                    && !answer.1.contains("registry"),
                "{url}: the admin pages came through the proxy: {answer:?}"
            );
            assert_loop(&url, &answer);
        }
    }
    proxy.assert_healthy();
}

#[tokio::test]
async fn ipv4_mapped_forms_of_the_proxy_address_are_the_proxy() {
    let ip = unique_loopback();
    let mut proxy = Proxy::start(
        ip,
        &unrelated(),
        &["--outbound-policy", "ALLOW_ANY", "--max-connections", "40"],
    )
    .await;
    for url in [
        format!("http://[::ffff:{ip}]:15080/"),
        format!("http://[::ffff:{ip}]:15000/stats"),
        format!("http://{ip}:15000/stats"),
    ] {
        let before = proxy.connections().await;
        assert_loop(&url, &curl(proxy.http, &url, &[]));
        assert_loop(&url, &curl(proxy.http, &url, &["-0"]));
        assert_no_loop(&proxy, before, 2, &url).await;
    }
    // Another loopback address on the proxy's port is another service.
    let neighbour = unique_loopback();
    let up = HttpUpstream::start(SocketAddr::from((neighbour, 15080)), "neighbour");
    for extra in [&[][..], &["-0"][..]] {
        let (status, body) = curl(proxy.http, &format!("http://{neighbour}:15080/"), extra);
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(up.requests(), 2);
    proxy.assert_healthy();
}

#[tokio::test]
async fn a_static_endpoint_that_is_the_proxy_is_refused_when_dialled() {
    let ip = unique_loopback();
    let me = SocketAddr::from((ip, 15080));
    let yaml = entry("loop", "loop.test", 80, me) + &entry("mapped", "mapped.test", 80, SocketAddr::from((ip, 15000)));
    let mut proxy = Proxy::start(
        ip,
        &yaml,
        &["--outbound-policy", "REGISTRY_ONLY", "--max-connections", "40"],
    )
    .await;
    for url in ["http://loop.test/", "http://mapped.test/stats"] {
        let before = proxy.connections().await;
        let answer = curl(proxy.http, url, &[]);
        assert_loop(url, &answer);
        assert!(answer.1.contains("own listener"), "{url}: {answer:?}");
        assert_loop(url, &curl(proxy.http, url, &["-0"]));
        assert_no_loop(&proxy, before, 2, url).await;
    }
    // Counted as the request's problem, not the upstream's, once per request (both paths).
    assert_eq!(proxy.stat("upstream_errors_total").await, 0);
    assert_eq!(proxy.stat("bad_requests_total").await, 4);
    proxy.assert_healthy();
}

#[tokio::test]
async fn a_name_that_resolves_to_the_proxy_is_refused_when_dialled() {
    let ip = unique_loopback();
    let dns = TestDns::start(unique_loopback());
    dns.set("me.test", &[IpAddr::V4(ip)], 60);
    let dns_server = dns.addr().to_string();
    let mut proxy = Proxy::start(
        ip,
        &unrelated(),
        &[
            "--outbound-policy",
            "ALLOW_ANY",
            "--max-connections",
            "40",
            "--dns-server",
            &dns_server,
        ],
    )
    .await;
    let before = proxy.connections().await;
    let answer = curl(proxy.http, "http://me.test:15080/", &[]);
    assert_loop("me.test:15080", &answer);
    assert!(answer.1.contains("own listener"), "{answer:?}");
    assert_no_loop(&proxy, before, 1, "me.test").await;
    proxy.assert_healthy();
}

/// Two proxies each sending `svc.loop` to the other, A -> B -> A, and a request to A. Only the
/// `Via` marker can tell: every hop goes to a different address. Returns the answer and the
/// connections each proxy accepted for it.
async fn two_proxies_in_a_loop(yaml_extra: fn(&str) -> String) -> ((u16, String), u64, u64) {
    let (a_ip, b_ip) = (unique_loopback(), unique_loopback());
    let a_http = SocketAddr::from((a_ip, 15080));
    let b_http = SocketAddr::from((b_ip, 15080));
    let flags = ["--outbound-policy", "REGISTRY_ONLY", "--max-connections", "40"];
    let mut a = Proxy::start(
        a_ip,
        &(entry("svc", "svc.loop", 80, b_http) + &yaml_extra("svc.loop")),
        &flags,
    )
    .await;
    let mut b = Proxy::start(
        b_ip,
        &(entry("svc", "svc.loop", 80, a_http) + &yaml_extra("svc.loop")),
        &flags,
    )
    .await;
    let (a_before, b_before) = (a.connections().await, b.connections().await);
    let answer = curl(a.http, "http://svc.loop/", &[]);
    let (a_after, b_after) = (a.connections().await, b.connections().await);
    a.assert_healthy();
    b.assert_healthy();
    (answer, a_after - a_before, b_after - b_before)
}

#[tokio::test]
async fn a_request_that_comes_back_through_another_proxy_is_refused_by_its_via() {
    let (answer, a, b) = two_proxies_in_a_loop(|host| general_path("svc", host)).await;
    assert_loop("A -> B -> A", &answer);
    assert!(answer.1.contains("Via"), "{answer:?}");
    // A accepted the client and B's request, and refused that; B accepted A's. Nothing more.
    assert_eq!((a, b), (2, 1), "connections accepted by A and B");
}

#[tokio::test]
async fn a_request_that_comes_back_through_another_proxy_on_the_fast_path_is_refused_by_its_via() {
    let (answer, a, b) = two_proxies_in_a_loop(|_| String::new()).await;
    assert_loop("A -> B -> A", &answer);
    assert_eq!((a, b), (2, 1), "connections accepted by A and B");
}

/// The gateway `istio-system/gw` with an HTTP server on each of `ports`, routing `web.example`
/// to `backend`.
fn gateway(backend: SocketAddr, ports: &[u16]) -> String {
    let servers: String = ports
        .iter()
        .map(|p| format!("  - port: {{number: {p}, name: http-{p}, protocol: HTTP}}\n    hosts: ['*']\n"))
        .collect();
    entry("backend", "backend.internal", 80, backend)
        + &format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\n\
             spec:\n  selector: {{istio: gw}}\n  servers:\n{servers}---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: istio-system}}\n\
             spec:\n  hosts: [web.example]\n  gateways: [istio-system/gw]\n  http:\n\
             \x20 - route:\n    - destination: {{host: backend.internal, port: {{number: 80}}}}\n"
        )
}

#[tokio::test]
async fn a_gateway_port_opened_by_a_reload_is_the_proxy_too() {
    let ip = unique_loopback();
    let backend = HttpUpstream::start(SocketAddr::from((ip, 8080)), "backend");
    let p1 = free_port(ip);
    let p2 = loop {
        let p = free_port(ip);
        if p != p1 {
            break p;
        }
    };
    let ip_text = ip.to_string();
    let mut proxy = Launch {
        http: SocketAddr::from((ip, 15080)),
        admin: SocketAddr::from((ip, 15000)),
        yaml: &gateway(backend.addr(), &[p1]),
        extra: &[
            "--gateway",
            "istio-system/gw",
            "--labels",
            "istio=gw",
            "--gateway-bind",
            &ip_text,
            "--reload-debounce",
            "20ms",
            "--outbound-policy",
            "ALLOW_ANY",
            "--max-connections",
            "40",
        ],
        fd_limit: None,
    }
    .start()
    .await;
    let tmp = proxy.config_file.with_extension("tmp-write");
    std::fs::write(&tmp, gateway(backend.addr(), &[p1, p2])).unwrap();
    std::fs::rename(&tmp, &proxy.config_file).unwrap();
    eventually(PATIENCE, || async { proxy.stat("config_generation").await == 2 }).await;
    for port in [p1, p2] {
        for host in [ip_text.clone(), format!("[::ffff:{ip}]"), "0.0.0.0".to_string()] {
            let url = format!("http://{host}:{port}/");
            let before = proxy.connections().await;
            assert_loop(&url, &curl(proxy.http, &url, &[]));
            assert_no_loop(&proxy, before, 1, &url).await;
        }
    }
    proxy.assert_healthy();
}

// ---------------------------------------------------------------------------------------------
// Item 5: the admin listener and accept loops under descriptor pressure

/// This process's descriptor limit, raised to its hard limit: the floods hold ~700.
fn raise_own_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().ok())
        .unwrap_or(100);
    ticks as f64 / per_second as f64
}

/// The share of a core the proxy uses over `window`, and the log lines it wrote meanwhile.
async fn watch(proxy: &Proxy, window: Duration) -> (f64, Vec<String>) {
    let pid = proxy.inner.process.pid();
    let lines_before = proxy.inner.stderr().lines().count();
    let (cpu_before, started) = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(window).await;
    let share = (cpu_seconds(pid) - cpu_before) / started.elapsed().as_secs_f64();
    let lines = proxy
        .inner
        .stderr()
        .lines()
        .skip(lines_before)
        .map(str::to_string)
        .collect();
    (share, lines)
}

/// Opens `n` connections to `addr` and keeps them, idle.
async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    held
}

#[tokio::test]
async fn an_admin_flood_under_a_low_fd_limit_leaves_the_data_plane_working() {
    let _one = FLOOD.lock().await;
    raise_own_fd_limit();
    let ip = unique_loopback();
    let up = HttpUpstream::start(SocketAddr::from((ip, 8080)), "backend");
    let yaml = entry("backend", "backend.test", 80, up.addr());
    let mut proxy = Launch {
        http: SocketAddr::from((ip, 15080)),
        admin: SocketAddr::from((ip, 15000)),
        yaml: &yaml,
        extra: &["--outbound-policy", "REGISTRY_ONLY"],
        fd_limit: Some(600),
    }
    .start()
    .await;
    let (status, body) = curl(proxy.http, "http://backend.test/before", &[]);
    assert_eq!(status, 200, "{body}");

    let flood = idle_connections(proxy.admin, 650).await;
    // Proxied requests go on, on new connections, while the flood holds.
    for i in 0..5 {
        let (status, body) = curl(proxy.http, &format!("http://backend.test/during/{i}"), &[]);
        assert_eq!(status, 200, "request {i} during the admin flood: {body}");
    }
    let (cpu, lines) = watch(&proxy, Duration::from_secs(2)).await;
    assert!(
        cpu < 0.2,
        "the proxy used {:.0}% of a core while the flood held",
        cpu * 100.0
    );
    assert!(
        lines.len() <= 3,
        "the log is spammed: {} lines in 2 s:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert_eq!(up.requests(), 6);

    // Once the flood is gone the admin port answers again, and it counted what it refused.
    drop(flood);
    let stats = eventually(PATIENCE, || proxy.inner.try_stats()).await;
    let overflow = stats["admin_cx_overflow"];
    assert!(overflow >= 650 - 64, "admin_cx_overflow {overflow}");
    eventually(PATIENCE, || async { proxy.stat("admin_cx_active").await <= 1 }).await;
    proxy.assert_healthy();
}

#[tokio::test]
async fn accept_backs_off_quietly_when_out_of_descriptors_and_recovers() {
    let _one = FLOOD.lock().await;
    raise_own_fd_limit();
    let ip = unique_loopback();
    let up = HttpUpstream::start(SocketAddr::from((ip, 8080)), "backend");
    let yaml = entry("backend", "backend.test", 80, up.addr());
    // A connection limit the descriptors cannot carry (the proxy warns about it): accepts fail
    // with EMFILE once they run out.
    let mut proxy = Launch {
        http: SocketAddr::from((ip, 15080)),
        admin: SocketAddr::from((ip, 15000)),
        yaml: &yaml,
        extra: &[
            "--outbound-policy",
            "REGISTRY_ONLY",
            "--max-connections",
            "5000",
            "--header-read-timeout",
            "60s",
        ],
        fd_limit: Some(600),
    }
    .start()
    .await;
    assert!(
        proxy.inner.stderr().contains("do not fit the file descriptor limit"),
        "{}",
        proxy.inner.stderr()
    );
    let flood = idle_connections(proxy.http, 650).await;
    let (cpu, lines) = watch(&proxy, Duration::from_secs(2)).await;
    let accept_lines = lines.iter().filter(|l| l.contains("accept")).count();
    assert!(
        cpu < 0.2,
        "the proxy used {:.0}% of a core out of descriptors",
        cpu * 100.0
    );
    assert!(
        accept_lines <= 1 && lines.len() <= 3,
        "the log is spammed: {} lines in 2 s:\n{}",
        lines.len(),
        lines.join("\n")
    );

    // Descriptors come back when the idle clients leave; the listener resumes within its
    // longest pause and says so once.
    drop(flood);
    eventually(PATIENCE, || async {
        curl(proxy.http, "http://backend.test/after", &[]).0 == 200
    })
    .await;
    assert!(proxy.stat("accept_errors_total").await > 0);
    let stderr = proxy.inner.stderr();
    assert_eq!(stderr.matches("accepting connections again").count(), 1, "{stderr}");
    proxy.assert_healthy();
}
