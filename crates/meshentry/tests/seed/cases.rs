//! End-to-end tests of the ServiceEntry examples of Istio's reference page (examples/seed)
//! through the real `meshentry proxy` binary, driven by real clients (curl, and raw CONNECT over
//! tokio where curl cannot express the traffic). They run twice: with the examples as the
//! proxy's files (`proxy_seed`), and applied with `kubectl` to a real API server that the proxy
//! follows with `--kubernetes` (`kube_seed`); the including test crate's `SOURCE` says which.
//!
//! Every test owns its loopback addresses, its DNS server and its proxy process, so tests run in
//! parallel without sharing anything. Every name a test uses resolves through its TestDns to a
//! 127.x address; most proxies run with REGISTRY_ONLY so that a routing bug shows up as a
//! refusal instead of silently passing traffic through to wherever the name resolves.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshentry_testutil::pki::server_config;
use meshentry_testutil::{
    HttpUpstream, LeafSpec, PemDir, TcpEcho, TestCa, TestDns, TlsUpstream, eventually, raw, unique_loopback,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");
const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers

/// The text of a seed example, e.g. `seed("v1beta1", "01-serviceentry-external-svc-https.yaml")`.
fn seed(version: &str, file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/seed")
        .join(version)
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Replaces `from` by `to`, insisting `from` is there: if the seed example changes, the test
/// must fail loudly rather than run with a non-loopback address left in.
fn replace(yaml: &str, from: &str, to: &str) -> String {
    assert!(yaml.contains(from), "seed example no longer contains {from:?}:\n{yaml}");
    yaml.replace(from, to)
}

fn ip(v4: Ipv4Addr) -> IpAddr {
    IpAddr::V4(v4)
}

/// Where the proxy reads the examples from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // Each including test crate names one.
pub enum Source {
    /// Its `--config` directory.
    Files,
    /// A real API server (`scripts/k8s-apiserver`) they were applied to with `kubectl`.
    Kubernetes,
}

/// A running `meshentry proxy`.
struct Proxy {
    inner: meshentry_testutil::Proxy,
    addr: SocketAddr,
    admin: SocketAddr,
    // Last: the proxy is killed before its API server stops.
    _kube: Option<meshentry_testutil::KubeApi>,
}

impl Proxy {
    /// Starts the proxy on `files`, on a loopback address of its own, resolving through `dns`;
    /// returns once it is ready. The files are its configuration directory, or with
    /// [`Source::Kubernetes`] applied to an API server of the proxy's own.
    async fn start(files: &[(&str, String)], dns: &TestDns, extra: &[&str]) -> Proxy {
        let builder = meshentry_testutil::Proxy::builder(BIN)
            .dns(dns.addr())
            .args(extra.iter().copied());
        let (builder, kube) = match crate::SOURCE {
            Source::Files => (files.iter().fold(builder, |b, (name, text)| b.file(name, text)), None),
            Source::Kubernetes => {
                let kube = tokio::task::spawn_blocking(meshentry_testutil::KubeApi::start)
                    .await
                    .unwrap();
                for (_, text) in files {
                    kube.apply_yaml(text, None);
                }
                let builder = builder.no_config_dir().args([
                    "--kubernetes".into(),
                    "--kubeconfig".into(),
                    kube.kubeconfig().as_os_str().to_os_string(),
                ]);
                (builder, Some(kube))
            }
        };
        let inner = builder.start().await;
        Proxy {
            addr: inner.http(),
            admin: inner.admin,
            inner,
            _kube: kube,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One counter of the admin `/stats` page (`meshentry.<name>: <value>`).
    async fn stat(&self, name: &str) -> u64 {
        let out = curl(&["--noproxy", "*", &format!("http://{}/stats", self.admin)]).await;
        assert_eq!(out.status, 200, "GET /stats: {out:?}");
        let key = format!("meshentry.{name}: ");
        out.body
            .lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .unwrap_or_else(|| panic!("/stats has no {name}:\n{}", out.body))
            .trim()
            .parse()
            .unwrap()
    }
}

/// What one curl run produced.
#[derive(Debug)]
struct CurlOut {
    /// curl's exit code (0 when the transfer worked, whatever the HTTP status).
    code: i32,
    /// The final HTTP status (0 when there was none).
    status: u16,
    body: String,
    stderr: String,
}

impl CurlOut {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }
}

/// Marks the end of the body in curl's output, followed by the status code.
const STATUS_MARK: &str = "\n@@meshentry-status@@";

fn curl_blocking(args: &[String], env: &[(String, String)]) -> CurlOut {
    let mut cmd = meshentry_testutil::curl_command();
    // Only the proxy a test names is used (the environment's, and NO_PROXY, cannot interfere).
    cmd.args(["-sS", "--max-time", "20", "-w"])
        .arg(format!("{STATUS_MARK}%{{http_code}}"))
        .args(args);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "curl is not installed, and these end-to-end tests need it as a real client: \
             install curl (apt-get install curl; scripts/test does this)"
        ),
        Err(e) => panic!("cannot run curl: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = stdout
        .rsplit_once(STATUS_MARK)
        .unwrap_or_else(|| panic!("curl output lacks the status marker: {stdout:?}"));
    CurlOut {
        code: out.status.code().unwrap_or(-1),
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs curl with `args` off the async runtime.
async fn curl(args: &[&str]) -> CurlOut {
    curl_env(args, &[]).await
}

/// Runs curl with `args` and the extra environment `env` (e.g. `HTTPS_PROXY`).
async fn curl_env(args: &[&str], env: &[(&str, &str)]) -> CurlOut {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::spawn_blocking(move || curl_blocking(&args, &env))
        .await
        .unwrap()
}

/// `curl -x PROXY url`, asserting the transfer itself worked.
async fn curl_via(proxy: &Proxy, url: &str) -> CurlOut {
    let out = curl(&["-x", &proxy.url(), url]).await;
    assert_eq!(out.code, 0, "curl -x {} {url} failed: {out:?}", proxy.url());
    out
}

/// Opens a CONNECT tunnel to `target` through the proxy and returns the stream after a 200.
async fn connect_tunnel(proxy: SocketAddr, target: &str) -> TcpStream {
    raw::tunnel(proxy, target, IO_TIMEOUT).await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. external-svc-https: three TLS APIs routed by SNI (resolution DNS)

const HTTPS_FILE: &str = "01-serviceentry-external-svc-https.yaml";
const HTTPS_HOSTS: [&str; 3] = ["api.dropboxapi.com", "www.googleapis.com", "api.facebook.com"];

async fn sni_routed_https_apis(version: &str) {
    let dns = TestDns::start(unique_loopback());
    let ca = TestCa::new("seed ca");
    let pem = PemDir::new();
    let ca_path = pem.ca(&ca);
    let upstreams: Vec<TlsUpstream> = HTTPS_HOSTS
        .iter()
        .map(|host| {
            let at = unique_loopback();
            dns.set(host, &[ip(at)], 30);
            let leaf = ca.issue(LeafSpec::server([*host]));
            TlsUpstream::start(SocketAddr::new(ip(at), 443), host, server_config(&leaf, None))
        })
        .collect();
    // The seed YAML as is: the hosts resolve through TestDns to the upstreams.
    let proxy = Proxy::start(
        &[(HTTPS_FILE, seed(version, HTTPS_FILE))],
        &dns,
        &["--outbound-policy", "REGISTRY_ONLY"],
    )
    .await;

    let ca_arg = ca_path.display().to_string();
    for (i, (host, up)) in HTTPS_HOSTS.iter().zip(&upstreams).enumerate() {
        let url = format!("https://{host}/{version}");
        // The last API goes through HTTPS_PROXY, as applications configured by environment do.
        let out = if i == HTTPS_HOSTS.len() - 1 {
            curl_env(&["--cacert", &ca_arg, &url], &[("HTTPS_PROXY", &proxy.url())]).await
        } else {
            curl(&["--cacert", &ca_arg, "-x", &proxy.url(), &url]).await
        };
        assert_eq!((out.code, out.status), (0, 200), "{url}: {out:?}");
        let json = out.json();
        assert_eq!(json["upstream"], *host, "{url} reached the wrong upstream: {out:?}");
        assert_eq!(json["tls"]["sni"], *host, "{url}: {out:?}");
        assert_eq!(json["path"], format!("/{version}"));
        assert_eq!(json["host"], *host);
        assert_eq!(up.last_sni().as_deref(), Some(*host));
    }
    // Each upstream saw exactly the one handshake and request meant for it.
    for (host, up) in HTTPS_HOSTS.iter().zip(&upstreams) {
        assert_eq!(up.handshakes().len(), 1, "{host}: {:?}", up.handshakes());
        assert_eq!(up.requests(), 1, "{host}");
        assert!(
            up.handshake_failures().is_empty(),
            "{host}: {:?}",
            up.handshake_failures()
        );
    }
    assert_eq!(proxy.stat("tunnels_total").await, 3);
    assert_eq!(proxy.stat("outbound_blocked_total").await, 0);
}

#[tokio::test]
async fn sni_routed_https_apis_v1alpha3() {
    sni_routed_https_apis("v1alpha3").await;
}

#[tokio::test]
async fn sni_routed_https_apis_v1beta1() {
    sni_routed_https_apis("v1beta1").await;
}

/// A tunnel opened for one API must not carry a TLS session for another: the proxy checks the
/// ClientHello's SNI against the CONNECT target (a client that could otherwise reach any
/// registry host by naming an allowed one in CONNECT).
#[tokio::test]
async fn sni_must_match_the_connect_target() {
    let dns = TestDns::start(unique_loopback());
    let ca = TestCa::new("seed ca");
    let pem = PemDir::new();
    let ca_path = pem.ca(&ca).display().to_string();
    let (dropbox_ip, google_ip) = (unique_loopback(), unique_loopback());
    dns.set("api.dropboxapi.com", &[ip(dropbox_ip)], 30);
    dns.set("www.googleapis.com", &[ip(google_ip)], 30);
    // Both upstreams hold certificates for both names, so only the proxy's check can fail the
    // request: the handshake itself would succeed wherever the tunnel led.
    let both = ca.issue(LeafSpec::server(["api.dropboxapi.com", "www.googleapis.com"]));
    let dropbox = TlsUpstream::start(
        SocketAddr::new(ip(dropbox_ip), 443),
        "dropbox",
        server_config(&both, None),
    );
    let google = TlsUpstream::start(
        SocketAddr::new(ip(google_ip), 443),
        "google",
        server_config(&both, None),
    );
    let proxy = Proxy::start(
        &[(HTTPS_FILE, seed("v1beta1", HTTPS_FILE))],
        &dns,
        &["--outbound-policy", "REGISTRY_ONLY"],
    )
    .await;

    // --connect-to makes curl send `CONNECT www.googleapis.com:443` while its ClientHello names
    // api.dropboxapi.com (the URL's host).
    let out = curl(&[
        "--cacert",
        &ca_path,
        "-x",
        &proxy.url(),
        "--connect-to",
        "api.dropboxapi.com:443:www.googleapis.com:443",
        "https://api.dropboxapi.com/",
    ])
    .await;
    assert_ne!(out.code, 0, "the mismatched tunnel must fail: {out:?}");
    assert_eq!(out.status, 0, "no HTTP response may come through: {out:?}");
    assert_eq!(proxy.stat("tunnel_sni_mismatch_total").await, 1);
    assert!(google.handshakes().is_empty(), "{:?}", google.handshakes());
    assert_eq!(google.requests() + dropbox.requests(), 0);
    eventually(Duration::from_secs(5), || async {
        proxy.inner.stderr().lines().any(|l| {
            l.contains("tunnel refused") && l.contains("api.dropboxapi.com") && l.contains("www.googleapis.com")
        })
    })
    .await;

    // The same client without the mismatch works, so the refusal above was the check's doing.
    let out = curl(&["--cacert", &ca_path, "-x", &proxy.url(), "https://api.dropboxapi.com/"]).await;
    assert_eq!((out.code, out.status), (0, 200), "{out:?}");
    assert_eq!(out.json()["upstream"], "dropbox");
}

// ---------------------------------------------------------------------------------------------
// 2. external-svc-dns: foo.bar.com spread over three DNS endpoints with their own ports

const DNS_FILE: &str = "11-serviceentry-external-svc-dns.yaml";

async fn dns_endpoints_spread(version: &str) {
    let dns = TestDns::start(unique_loopback());
    let endpoints = [
        ("us.foo.bar.com", 8080),
        ("uk.foo.bar.com", 9080),
        ("in.foo.bar.com", 7080),
    ];
    let upstreams: Vec<HttpUpstream> = endpoints
        .iter()
        .map(|(name, port)| {
            let at = unique_loopback();
            dns.set(name, &[ip(at)], 30);
            HttpUpstream::start(SocketAddr::new(ip(at), *port), name)
        })
        .collect();
    // foo.bar.com itself is deliberately not in DNS: the service's endpoints must be used, never
    // the service host.
    let proxy = Proxy::start(
        &[(DNS_FILE, seed(version, DNS_FILE))],
        &dns,
        &["--outbound-policy", "REGISTRY_ONLY"],
    )
    .await;

    const N: usize = 60;
    for i in 0..N {
        let out = curl_via(&proxy, "http://foo.bar.com/baz").await;
        assert_eq!(out.status, 200, "request {i}: {out:?}");
        let json = out.json();
        let name = json["upstream"].as_str().unwrap();
        assert!(endpoints.iter().any(|(n, _)| *n == name), "{out:?}");
    }
    let counts: Vec<usize> = upstreams.iter().map(HttpUpstream::requests).collect();
    assert_eq!(counts.iter().sum::<usize>(), N, "{counts:?}");
    // LEAST_REQUEST between idle hosts is a uniform random pick: the chance that one of three
    // gets none of 60 requests is about 3 * (2/3)^60 < 1e-10.
    for ((name, _), c) in endpoints.iter().zip(&counts) {
        assert!(*c > 0, "{name} got no requests: {counts:?}");
    }
    for up in &upstreams {
        for seen in up.seen() {
            assert_eq!(seen.method, "GET");
            assert_eq!(seen.uri, "/baz", "{}: {seen:?}", up.name());
            assert_eq!(seen.path, "/baz");
            assert_eq!(seen.host.as_deref(), Some("foo.bar.com"), "{}: {seen:?}", up.name());
        }
    }
    assert_eq!(dns.queries("foo.bar.com"), 0, "the service host must not be resolved");
    assert_eq!(proxy.stat("outbound_blocked_total").await, 0);
}

#[tokio::test]
async fn dns_endpoints_spread_v1alpha3() {
    dns_endpoints_spread("v1alpha3").await;
}

#[tokio::test]
async fn dns_endpoints_spread_v1beta1() {
    dns_endpoints_spread("v1beta1").await;
}

// ---------------------------------------------------------------------------------------------
// 3. external-svc-wildcard-example: *.bar.com with resolution NONE

#[tokio::test]
async fn wildcard_none_goes_where_the_name_resolves() {
    const FILE: &str = "09-serviceentry-external-svc-wildcard-example.yaml";
    let dns = TestDns::start(unique_loopback());
    let (a_ip, b_ip) = (unique_loopback(), unique_loopback());
    dns.set("a.bar.com", &[ip(a_ip)], 30);
    dns.set("b.bar.com", &[ip(b_ip)], 30);
    let a = HttpUpstream::start(SocketAddr::new(ip(a_ip), 80), "a");
    let b = HttpUpstream::start(SocketAddr::new(ip(b_ip), 80), "b");
    let proxy = Proxy::start(
        &[(FILE, seed("v1beta1", FILE))],
        &dns,
        &["--outbound-policy", "REGISTRY_ONLY"],
    )
    .await;

    for (host, up) in [("a.bar.com", &a), ("b.bar.com", &b)] {
        let out = curl_via(&proxy, &format!("http://{host}/")).await;
        assert_eq!(out.status, 200, "{host}: {out:?}");
        assert_eq!(out.json()["upstream"], up.name(), "{host}: {out:?}");
        let seen = up.last().unwrap();
        assert_eq!(seen.host.as_deref(), Some(host));
        assert_eq!(seen.uri, "/");
    }
    assert_eq!((a.requests(), b.requests()), (1, 1));

    // bar.com itself is not covered by *.bar.com, so REGISTRY_ONLY refuses it.
    let out = curl_via(&proxy, "http://bar.com/").await;
    assert_eq!(out.status, 502, "{out:?}");
    assert!(out.body.contains("bar.com:80"), "{out:?}");
    assert_eq!(proxy.stat("outbound_blocked_total").await, 1);
}

// ---------------------------------------------------------------------------------------------
// 4. unix-domain-socket-example: example.unix.local on a unix socket

#[tokio::test]
async fn unix_socket_endpoint() {
    const FILE: &str = "10-serviceentry-unix-domain-socket-example.yaml";
    let dns = TestDns::start(unique_loopback());
    let sockets = tempfile::Builder::new().prefix("meshentry-uds-").tempdir().unwrap();
    let socket: PathBuf = sockets.path().join("socket");
    let up = HttpUpstream::start_unix(&socket, "unix-upstream");
    let yaml = replace(
        &seed("v1beta1", FILE),
        "unix:///var/run/example/socket",
        &format!("unix://{}", socket.display()),
    );
    let proxy = Proxy::start(&[(FILE, yaml)], &dns, &["--outbound-policy", "REGISTRY_ONLY"]).await;

    let out = curl_via(&proxy, "http://example.unix.local/over-uds").await;
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(out.json()["upstream"], "unix-upstream", "{out:?}");
    assert_eq!(up.requests(), 1);
    let seen = up.last().unwrap();
    assert_eq!(seen.uri, "/over-uds");
    assert_eq!(seen.host.as_deref(), Some("example.unix.local"));
    assert_eq!(
        dns.queries("example.unix.local"),
        0,
        "a STATIC unix endpoint needs no DNS"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. external-svc-mongocluster: raw TCP through CONNECT to an address of the VIP CIDR

#[tokio::test]
async fn mongo_cluster_vip_cidr_tunnels() {
    const FILE: &str = "02-serviceentry-external-svc-mongocluster.yaml";
    let dns = TestDns::start(unique_loopback());
    // The VIP range is the /24 of an address only this test holds. Nothing listens on the VIPs:
    // traffic must go to the endpoints. `.1` of the block is never handed out by
    // unique_loopback, and `vip` is ours, so neither can be another test's listener.
    let vip = unique_loopback();
    let [_, x, y, _] = vip.octets();
    let cidr = format!("127.{x}.{y}.0/24");
    let vips = [Ipv4Addr::new(127, x, y, 1), vip];
    let (ep1, ep2) = (unique_loopback(), unique_loopback());
    let echo1 = TcpEcho::start(SocketAddr::new(ip(ep1), 27018), "mongo-1");
    let echo2 = TcpEcho::start(SocketAddr::new(ip(ep2), 27018), "mongo-2");
    let yaml = seed("v1beta1", FILE);
    let yaml = replace(&yaml, "192.192.192.192/24", &cidr);
    let yaml = replace(&yaml, "2.2.2.2", &ep1.to_string());
    let yaml = replace(&yaml, "3.3.3.3", &ep2.to_string());
    let proxy = Proxy::start(&[(FILE, yaml)], &dns, &["--outbound-policy", "REGISTRY_ONLY"]).await;

    const N: usize = 20;
    let mut tasks = Vec::new();
    for i in 0..N {
        let target = format!("{}:27018", vips[i % vips.len()]);
        let proxy_addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut s = connect_tunnel(proxy_addr, &target).await;
            // Not a TLS record, so the tunnel relays it as opaque TCP (protocol MONGO).
            let msg = format!("mongo ping {i} via {target}");
            s.write_all(msg.as_bytes()).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut back))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&back), msg);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Each tunnel is one upstream connection. The pick is uniform random between idle hosts: the
    // chance that one of two gets none of 20 is 2 * 2^-20.
    let (c1, c2) = (echo1.connections(), echo2.connections());
    assert_eq!(c1 + c2, N, "connections {c1} + {c2}");
    assert!(c1 > 0 && c2 > 0, "both endpoints must get connections: {c1}, {c2}");
    assert_eq!(proxy.stat("tunnels_total").await, N as u64);
    assert_eq!(proxy.stat("outbound_blocked_total").await, 0);
    assert_eq!(dns.queries("mymongodb.somedomain"), 0);

    // The CIDR covers only its /24 and only the declared port: a neighbouring /24 and another
    // port of a VIP are unknown destinations, refused under REGISTRY_ONLY.
    let outside = Ipv4Addr::new(127, x, y ^ 1, 1);
    for target in [format!("{outside}:27018"), format!("{}:27019", vips[0])] {
        let (r, _) = raw::connect_request(proxy.addr, &target, IO_TIMEOUT).await.unwrap();
        assert!(r.raw.starts_with(b"HTTP/1.1 403"), "CONNECT {target}: {r:?}");
    }
    assert_eq!(proxy.stat("outbound_blocked_total").await, 2);
    assert_eq!(echo1.connections() + echo2.connections(), N);
}

// ---------------------------------------------------------------------------------------------
// 6. external-svc-httpbin: exportTo "." in namespace egress

#[tokio::test]
async fn export_to_dot_is_visible_only_in_its_namespace() {
    const FILE: &str = "06-serviceentry-external-svc-httpbin.yaml";
    let dns = TestDns::start(unique_loopback());
    let at = unique_loopback();
    dns.set("httpbin.com", &[ip(at)], 30);
    let up = HttpUpstream::start(SocketAddr::new(ip(at), 80), "httpbin");
    let files = [(FILE, seed("v1beta1", FILE))];
    // REGISTRY_ONLY in egress too: it proves the request went through the service, not around it.
    let egress = Proxy::start(
        &files,
        &dns,
        &["--workload-namespace", "egress", "--outbound-policy", "REGISTRY_ONLY"],
    )
    .await;
    let default = Proxy::start(
        &files,
        &dns,
        &["--workload-namespace", "default", "--outbound-policy", "REGISTRY_ONLY"],
    )
    .await;

    let out = curl_via(&egress, "http://httpbin.com/get").await;
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(out.json()["upstream"], "httpbin");
    assert_eq!(up.requests(), 1);

    let out = curl_via(&default, "http://httpbin.com/get").await;
    assert_eq!(out.status, 502, "{out:?}");
    assert!(out.body.contains("httpbin.com:80"), "{out:?}");
    assert!(out.body.contains("REGISTRY_ONLY"), "{out:?}");
    assert_eq!(
        up.requests(),
        1,
        "the default namespace's request must not reach httpbin"
    );
    assert_eq!(default.stat("outbound_blocked_total").await, 1);
    assert_eq!(egress.stat("outbound_blocked_total").await, 0);
}

// ---------------------------------------------------------------------------------------------
// 7. REGISTRY_ONLY refusals, and ALLOW_ANY passthrough

#[tokio::test]
async fn registry_only_refuses_unknown_destinations() {
    let dns = TestDns::start(unique_loopback());
    // The unknown names resolve, so a refusal is the policy's doing, not a DNS failure.
    let trap_ip = unique_loopback();
    let trap = HttpUpstream::start(SocketAddr::new(ip(trap_ip), 80), "must-not-be-reached");
    for name in ["unknown.example.test", "tls.unknown.example.test"] {
        dns.set(name, &[ip(trap_ip)], 30);
    }
    let proxy = Proxy::start(
        &[(HTTPS_FILE, seed("v1beta1", HTTPS_FILE))],
        &dns,
        &["--outbound-policy", "REGISTRY_ONLY"],
    )
    .await;
    let before = proxy.stat("outbound_blocked_total").await;

    // Plain HTTP to unknown names and ports: 502 naming host:port and the policy.
    let http_cases = [
        ("http://unknown.example.test/x", "unknown.example.test:80"),
        ("http://unknown.example.test:8080/x", "unknown.example.test:8080"),
        // A registry host on a port its ServiceEntry does not declare is unknown too.
        ("http://api.dropboxapi.com/", "api.dropboxapi.com:80"),
    ];
    for (url, named) in http_cases {
        let out = curl_via(&proxy, url).await;
        assert_eq!(out.status, 502, "{url}: {out:?}");
        assert!(out.body.contains(named), "{url}: body must name {named}: {out:?}");
        assert!(out.body.contains("REGISTRY_ONLY"), "{url}: {out:?}");
    }

    // HTTPS through CONNECT: 403, which curl reports as a failed tunnel.
    let out = curl(&["-x", &proxy.url(), "https://tls.unknown.example.test/"]).await;
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("CONNECT tunnel failed, response 403"),
        "curl must see a 403 to CONNECT: {out:?}"
    );
    // A raw CONNECT, to read the body curl does not show.
    let (r, _) = raw::connect_request(proxy.addr, "tls.unknown.example.test:8443", IO_TIMEOUT)
        .await
        .unwrap();
    assert!(r.raw.starts_with(b"HTTP/1.1 403"), "{r:?}");
    assert!(r.text().contains("tls.unknown.example.test:8443"), "{r:?}");
    assert!(r.text().contains("REGISTRY_ONLY"), "{r:?}");

    let refusals = http_cases.len() as u64 + 2;
    assert_eq!(proxy.stat("outbound_blocked_total").await - before, refusals);
    assert_eq!(trap.requests(), 0, "a refused request reached the upstream");
    assert_eq!(trap.connections(), 0);
    // Refusing needs no DNS: nothing about an unknown name should leave the proxy.
    assert_eq!(dns.queries("unknown.example.test"), 0);
    assert_eq!(dns.queries("tls.unknown.example.test"), 0);

    // Each refusal is logged with the host and port it refused. tracing quotes string fields
    // (`host="a.b"`); the unquoted form is accepted too so a formatter change does not matter.
    let logged = [
        ("unknown.example.test", 80),
        ("unknown.example.test", 8080),
        ("api.dropboxapi.com", 80),
        ("tls.unknown.example.test", 443),
        ("tls.unknown.example.test", 8443),
    ];
    for (host, port) in logged {
        let forms = [format!("host=\"{host}\" "), format!("host={host} ")];
        let port = format!("port={port} ");
        eventually(Duration::from_secs(5), || async {
            proxy.inner.stderr().lines().any(|l| {
                l.contains("REGISTRY_ONLY") && forms.iter().any(|f| l.contains(f.as_str())) && l.contains(&port)
            })
        })
        .await;
    }
}

#[tokio::test]
async fn allow_any_passes_unknown_names_through() {
    let dns = TestDns::start(unique_loopback());
    let at = unique_loopback();
    dns.set("passthrough.example.test", &[ip(at)], 30);
    let up = HttpUpstream::start(SocketAddr::new(ip(at), 80), "passthrough");
    let proxy = Proxy::start(
        &[(HTTPS_FILE, seed("v1beta1", HTTPS_FILE))],
        &dns,
        &["--outbound-policy", "ALLOW_ANY"],
    )
    .await;

    let out = curl_via(&proxy, "http://passthrough.example.test/through?q=1").await;
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(out.json()["upstream"], "passthrough");
    let seen = up.last().unwrap();
    assert_eq!(seen.uri, "/through?q=1");
    assert_eq!(seen.host.as_deref(), Some("passthrough.example.test"));
    assert_eq!(up.requests(), 1);
    assert_eq!(proxy.stat("outbound_passthrough_total").await, 1);
    assert_eq!(proxy.stat("outbound_blocked_total").await, 0);
}
