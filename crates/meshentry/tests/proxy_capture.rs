//! Transparent capture end to end: an application with no proxy settings (real curl, openssl
//! s_client, tokio and rustls clients) runs as root in a network namespace of the test's own,
//! where `meshentry iptables install --proxy-uid 1337` redirects its connections to the real
//! `meshentry proxy` running as uid 1337 on `--outbound 127.0.0.1:15001` and `[::1]:15001`.
//!
//! The application resolves names itself (curl `--resolve`) to addresses that lead nowhere:
//! TEST-NET addresses (`198.51.100.x`, `203.0.113.x`, `2001:db8::x`) that the namespace routes
//! to a device that drops them, so only the proxy can make the connection work. Upstreams,
//! the DNS server the proxy uses, and the proxy itself live in the namespace; nothing leaves it.
//!
//! Covered: the seed ServiceEntry examples that need no VirtualService, Gateway or
//! DestinationRule TLS; ALLOW_ANY passthrough and REGISTRY_ONLY refusals in the client's own
//! protocol; that each application connection reaches the outbound listener exactly once (the
//! proxy's own connections are exempt); IPv6; and protocol detection (TLS SNI, also from a
//! ClientHello sent one byte per segment; HTTP/1 Host; h2c :authority; other bytes; server-first
//! protocols with and without a detection wait).
//!
//! Needs root, iproute2, iptables, setpriv, curl and openssl (scripts/test installs them).

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use meshentry_testutil::pki::{client_config, server_config};
use meshentry_testutil::raw::{RawClient, RawResponse};
use meshentry_testutil::{
    HttpUpstream, LeafSpec, Netns, PROXY_UID, PemDir, TcpBanner, TcpEcho, TestCa, TestDns, TlsUpstream, eventually,
    make_accessible, unique_loopback,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The outbound listeners, where REDIRECT sends captured connections (IPv4 ones to 127.0.0.1,
/// IPv6 ones to ::1).
const OUTBOUND_V4: &str = "127.0.0.1:15001";
const OUTBOUND_V6: &str = "[::1]:15001";
/// The proxy's other listeners are on 127.0.0.1, the one IPv4 address capture leaves alone, so
/// the test's own admin and readiness connections are not captured (nor counted).
const PROXY_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The detection counters of `/stats` (`outbound_sniffed_<name>_total`).
const SNIFFED: [&str; 5] = ["tls", "http1", "h2c", "tcp", "none"];

// ---------------------------------------------------------------------------------------------
// Helpers

/// The text of a seed example in `examples/seed/v1beta1`.
fn seed(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/seed/v1beta1")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Replaces `from` by `to`, insisting `from` is there: if the seed example changes, the test
/// must fail loudly rather than run with an address nothing listens on.
fn replace(yaml: &str, from: &str, to: &str) -> String {
    assert!(yaml.contains(from), "seed example no longer contains {from:?}:\n{yaml}");
    yaml.replace(from, to)
}

fn v4(ip: Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

/// An address in TEST-NET-2 (RFC 5737) that an application "resolved" a name to: routed out of
/// the namespace's dummy device, so only capture can get a connection to it anywhere.
fn nowhere(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, last)
}

/// A namespace whose outbound TCP is captured for the proxy uid, as in a pod.
fn captured_netns() -> Netns {
    let ns = Netns::new("me-cap");
    ns.run(&[BIN, "iptables", "install", "--proxy-uid", &PROXY_UID.to_string()]);
    ns
}

/// `meshentry proxy` running in a namespace as [`PROXY_UID`].
struct Proxy {
    inner: meshentry_testutil::Proxy,
}

impl Proxy {
    /// Writes `files` to a fresh directory the proxy uid can read and starts the proxy in `ns`
    /// on it, resolving through `dns`; returns once it is ready (every listener is bound).
    async fn start(ns: &Netns, files: &[(&str, String)], dns: &TestDns, extra: &[&str]) -> Proxy {
        Proxy::start_as(ns, PROXY_UID, files, dns, extra).await
    }

    /// [`Proxy::start`] as `uid`: any other uid than [`PROXY_UID`] has its own connections
    /// captured.
    async fn start_as(ns: &Netns, uid: u32, files: &[(&str, String)], dns: &TestDns, extra: &[&str]) -> Proxy {
        let inner = files
            .iter()
            .fold(meshentry_testutil::Proxy::builder(BIN), |b, (name, text)| {
                b.file(name, text)
            })
            .netns(ns, uid)
            .ip(PROXY_IP)
            .outbound([OUTBOUND_V4.parse().unwrap(), OUTBOUND_V6.parse().unwrap()])
            .dns(dns.addr())
            .args(extra.iter().copied())
            .start()
            .await;
        Proxy { inner }
    }

    /// Every counter of the admin `/stats` page (`meshentry.<name>: <value>`).
    async fn stats(&self) -> BTreeMap<String, u64> {
        self.inner.stats().await
    }

    /// [`Proxy::stats`], or why the admin server did not answer.
    async fn try_stats(&self) -> Result<BTreeMap<String, u64>, String> {
        self.inner.try_stats().await
    }

    /// One counter of `/stats`.
    async fn stat(&self, name: &str) -> u64 {
        let stats = self.stats().await;
        *stats
            .get(name)
            .unwrap_or_else(|| panic!("/stats has no {name}: {stats:?}"))
    }

    /// The detection counters, in [`SNIFFED`] order.
    async fn sniffed(&self) -> [u64; 5] {
        let stats = self.stats().await;
        SNIFFED.map(|n| {
            let key = format!("outbound_sniffed_{n}_total");
            *stats
                .get(&key)
                .unwrap_or_else(|| panic!("/stats has no {key}: {stats:?}"))
        })
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

/// Runs curl in the namespace as root (so it is captured), with no proxy from the environment.
async fn curl_output(ns: &Netns, args: &[&str]) -> std::process::Output {
    let mut cmd = ns.command("curl");
    // As root, so it is captured; isolated from ~/.curlrc and proxy variables.
    meshentry_testutil::isolate_curl(&mut cmd);
    cmd.args(["-sS", "--max-time", "10"]).args(args);
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run curl (apt-get install curl; scripts/test does): {e}"))
}

/// One transfer with curl.
async fn curl(ns: &Netns, args: &[&str]) -> CurlOut {
    let mark = format!("{STATUS_MARK}%{{http_code}}");
    let mut all = vec!["-w", &mark];
    all.extend_from_slice(args);
    let out = curl_output(ns, &all).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = stdout
        .rsplit_once(STATUS_MARK)
        .unwrap_or_else(|| panic!("curl output lacks the status marker: {out:?}"));
    CurlOut {
        code: out.status.code().unwrap_or(-1),
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `n` GETs of `url/1` .. `url/n` by one curl, which keeps one connection alive for them; each
/// answer's JSON (the upstreams answer one line of JSON each).
async fn curl_many(ns: &Netns, resolve: &str, url: &str, n: usize) -> Vec<serde_json::Value> {
    let glob = format!("{url}/[1-{n}]");
    let out = curl_output(ns, &["--fail", "--fail-early", "-w", "\n", "--resolve", resolve, &glob]).await;
    assert!(out.status.success(), "curl {glob}: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert_eq!(answers.len(), n, "{stdout}");
    answers
}

/// `openssl s_client` in the namespace: a handshake with `args`, then an HTTP/1.0 GET of `/`
/// with `Host: host`; returns (success, stdout and stderr).
async fn openssl_get(ns: &Netns, host: &str, args: &[&str]) -> (bool, String) {
    // timeout(1): s_client itself has no deadline.
    let mut cmd = ns.command("timeout");
    cmd.args(["10", "openssl", "s_client", "-quiet", "-verify_return_error"])
        .args(args);
    let request = format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n");
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install openssl): {e}"));
        // -quiet keeps reading after stdin's end, until the server closes.
        child.stdin.take().unwrap().write_all(request.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// How many of `answers` each upstream name gave.
fn by_upstream(answers: &[serde_json::Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in answers {
        *counts.entry(a["upstream"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    counts
}

/// Connects as an application would (root, so captured), with a bounded wait.
async fn connect(dst: SocketAddr) -> TcpStream {
    tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(dst))
        .await
        .unwrap_or_else(|_| panic!("connect to {dst} timed out"))
        .unwrap_or_else(|e| panic!("connect to {dst}: {e}"))
}

/// Sends `msg` and expects it echoed back.
async fn assert_echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, msg);
}

/// Expects the proxy to close `s` without a byte: a refused destination.
async fn assert_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(IO_TIMEOUT, s.read(&mut buf)).await.unwrap() {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection closed, got {other:?} {:?}", &buf[..]),
    }
}

/// Reads the response to a `Connection: close` GET strictly; nothing may follow it.
async fn read_response<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> RawResponse {
    let mut c = RawClient::new(s);
    let r = c.read_response("GET", IO_TIMEOUT).await.unwrap();
    assert!(c.buffered().is_empty(), "bytes after the response: {:?}", c.buffered());
    r
}

// ---------------------------------------------------------------------------------------------
// Seed examples

/// 01: three TLS APIs (resolution DNS) behind one address the application chose: the SNI alone
/// says which API, the proxy resolves it through its DNS.
#[test]
fn seed_01_tls_apis_routed_by_sni() {
    const FILE: &str = "01-serviceentry-external-svc-https.yaml";
    const HOSTS: [&str; 3] = ["api.dropboxapi.com", "www.googleapis.com", "api.facebook.com"];
    let ns = captured_netns();
    ns.block_on(|| async {
        let dns = TestDns::start(unique_loopback());
        let ca = TestCa::new("capture ca");
        let pem = PemDir::new();
        let ca_path = pem.ca(&ca).display().to_string();
        let upstreams: Vec<TlsUpstream> = HOSTS
            .iter()
            .map(|host| {
                let at = unique_loopback();
                dns.set(host, &[v4(at)], 30);
                let leaf = ca.issue(LeafSpec::server([*host]));
                TlsUpstream::start(SocketAddr::new(v4(at), 443), host, server_config(&leaf, None))
            })
            .collect();
        let proxy = Proxy::start(
            &ns,
            &[(FILE, seed(FILE))],
            &dns,
            &["--outbound-policy", "REGISTRY_ONLY"],
        )
        .await;

        for host in HOSTS {
            let resolve = format!("{host}:443:{}", nowhere(10));
            let url = format!("https://{host}/captured");
            let out = curl(&ns, &["--cacert", &ca_path, "--resolve", &resolve, &url]).await;
            assert_eq!((out.code, out.status), (0, 200), "{url}: {out:?}");
            let json = out.json();
            assert_eq!(json["upstream"], host, "{url} reached the wrong upstream: {out:?}");
            assert_eq!(json["tls"]["sni"], host, "{out:?}");
            assert_eq!(json["host"], host);
            assert_eq!(json["path"], "/captured");
        }
        for (host, up) in HOSTS.iter().zip(&upstreams) {
            assert_eq!(up.handshakes().len(), 1, "{host}: {:?}", up.handshakes());
            assert_eq!(up.requests(), 1, "{host}");
            assert!(dns.queries(host) > 0, "{host} must be resolved by the proxy");
        }
        let stats = proxy.stats().await;
        assert_eq!(stats["outbound_cx_total"], 3, "{stats:?}");
        assert_eq!(proxy.sniffed().await, [3, 0, 0, 0, 0], "{stats:?}");
        assert_eq!(stats["outbound_blocked_total"], 0, "{stats:?}");
    });
}

/// 02: MONGO on a /24 of VIPs with two STATIC endpoints. A declared TCP-family port on a
/// service address is relayed without reading first; other addresses and ports are unknown.
#[test]
fn seed_02_mongo_vip_cidr_relays_to_both_endpoints() {
    const FILE: &str = "02-serviceentry-external-svc-mongocluster.yaml";
    let ns = captured_netns();
    ns.block_on(|| async {
        let dns = TestDns::start(unique_loopback());
        let (ep1, ep2) = (unique_loopback(), unique_loopback());
        let echo1 = TcpEcho::start(SocketAddr::new(v4(ep1), 27018), "mongo-1");
        let echo2 = TcpEcho::start(SocketAddr::new(v4(ep2), 27018), "mongo-2");
        // The VIPs stay as in the seed: the namespace has no way out, so nothing answers there.
        let yaml = seed(FILE);
        let yaml = replace(&yaml, "2.2.2.2", &ep1.to_string());
        let yaml = replace(&yaml, "3.3.3.3", &ep2.to_string());
        let proxy = Proxy::start(&ns, &[(FILE, yaml)], &dns, &["--outbound-policy", "REGISTRY_ONLY"]).await;

        const N: usize = 20;
        let vips = [Ipv4Addr::new(192, 192, 192, 10), Ipv4Addr::new(192, 192, 192, 200)];
        for i in 0..N {
            let dst = SocketAddr::new(v4(vips[i % 2]), 27018);
            let mut s = connect(dst).await;
            assert_echo(&mut s, format!("mongo ping {i} via {dst}").as_bytes()).await;
        }
        // The pick is uniform random between idle hosts: the chance that one of two gets none
        // of 20 is 2 * 2^-20.
        let (c1, c2) = (echo1.connections(), echo2.connections());
        assert_eq!(c1 + c2, N, "connections {c1} + {c2}");
        assert!(c1 > 0 && c2 > 0, "both endpoints must get connections: {c1}, {c2}");
        assert_eq!(proxy.stat("outbound_cx_total").await, N as u64);
        assert_eq!(proxy.sniffed().await, [0; 5], "a declared MONGO VIP is relayed unread");
        assert_eq!(dns.queries("mymongodb.somedomain"), 0);

        // Outside the /24, or another port of a VIP: unknown, refused under REGISTRY_ONLY.
        for dst in ["192.192.193.1:27018", "192.192.192.10:27019"] {
            let mut s = connect(dst.parse().unwrap()).await;
            s.write_all(b"mongo ping").await.unwrap();
            assert_closed(&mut s).await;
        }
        assert_eq!(echo1.connections() + echo2.connections(), N);
        assert_eq!(proxy.stat("outbound_blocked_total").await, 2);
    });
}

/// 04: `wikipedia.org` and `*.wikipedia.org`, TLS with resolution NONE: the proxy dials where
/// the application was going (a 127.x address is captured like any other but 127.0.0.1).
#[test]
fn seed_04_wikipedia_none_tls_goes_to_the_original_destination() {
    const FILE: &str = "04-serviceentry-external-svc-redirect.yaml";
    let ns = captured_netns();
    ns.block_on(|| async {
        let dns = TestDns::start(unique_loopback());
        let ca = TestCa::new("capture ca");
        let pem = PemDir::new();
        let ca_path = pem.ca(&ca).display().to_string();
        let at = unique_loopback();
        let leaf = ca.issue(LeafSpec::server([
            "wikipedia.org",
            "en.wikipedia.org",
            "www.example.org",
        ]));
        let up = TlsUpstream::start(SocketAddr::new(v4(at), 443), "wikipedia", server_config(&leaf, None));
        let proxy = Proxy::start(
            &ns,
            &[(FILE, seed(FILE))],
            &dns,
            &["--outbound-policy", "REGISTRY_ONLY"],
        )
        .await;

        for host in ["en.wikipedia.org", "wikipedia.org"] {
            let resolve = format!("{host}:443:{at}");
            let url = format!("https://{host}/wiki/Capture");
            let out = curl(&ns, &["--cacert", &ca_path, "--resolve", &resolve, &url]).await;
            assert_eq!((out.code, out.status), (0, 200), "{url}: {out:?}");
            assert_eq!(out.json()["tls"]["sni"], host, "{out:?}");
            assert_eq!(up.last_sni().as_deref(), Some(host));
        }
        assert_eq!(up.requests(), 2);
        assert_eq!(dns.total_queries(), 0, "resolution NONE needs no DNS");

        // The same address under a name no service has: refused with a TLS alert, never
        // reaching the upstream.
        let resolve = format!("www.example.org:443:{at}");
        let out = curl(
            &ns,
            &["--cacert", &ca_path, "--resolve", &resolve, "https://www.example.org/"],
        )
        .await;
        assert_ne!(out.code, 0, "{out:?}");
        assert!(out.stderr.contains("alert access denied"), "{out:?}");
        assert_eq!(up.connections(), 2, "the refused handshake must not reach the upstream");
        assert_eq!(proxy.sniffed().await, [3, 0, 0, 0, 0]);
        assert_eq!(proxy.stat("outbound_blocked_total").await, 1);
    });
}

/// 05 on top of 04: the VirtualService `tls-routing` sends TLS for `wikipedia.org` and
/// `*.wikipedia.org` (by SNI, E7) to `internal-egress-firewall.ns1.svc.cluster.local`, whatever
/// address the application dialled. The firewall is a STATIC service here, on a 127.x address.
#[test]
fn seed_05_tls_routing_by_sni_to_the_egress_firewall() {
    const FILE04: &str = "04-serviceentry-external-svc-redirect.yaml";
    const FILE05: &str = "05-virtualservice-tls-routing.yaml";
    let ns = captured_netns();
    ns.block_on(|| async {
        let dns = TestDns::start(unique_loopback());
        let ca = TestCa::new("capture ca");
        let pem = PemDir::new();
        let ca_path = pem.ca(&ca).display().to_string();
        let fw_at = unique_loopback();
        let leaf = ca.issue(LeafSpec::server(["wikipedia.org", "en.wikipedia.org"]));
        let firewall = TlsUpstream::start(SocketAddr::new(v4(fw_at), 443), "firewall", server_config(&leaf, None));
        let elsewhere = unique_loopback();
        let direct = TlsUpstream::start(
            SocketAddr::new(v4(elsewhere), 443),
            "direct",
            server_config(&leaf, None),
        );
        let firewall_se = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: firewall, namespace: ns1}}\n\
             spec:\n  hosts: [internal-egress-firewall.ns1.svc.cluster.local]\n  location: MESH_INTERNAL\n\
             \x20 ports: [{{number: 443, name: tls, protocol: TLS}}]\n  resolution: STATIC\n\
             \x20 endpoints: [{{address: \"{fw_at}\"}}]\n"
        );
        let proxy = Proxy::start(
            &ns,
            &[
                (FILE04, seed(FILE04)),
                (FILE05, seed(FILE05)),
                ("firewall.yaml", firewall_se),
            ],
            &dns,
            &["--outbound-policy", "REGISTRY_ONLY"],
        )
        .await;
        for host in ["en.wikipedia.org", "wikipedia.org"] {
            // The application dials an address that is not the firewall's.
            let resolve = format!("{host}:443:{elsewhere}");
            let url = format!("https://{host}/wiki/Egress");
            let out = curl(&ns, &["--cacert", &ca_path, "--resolve", &resolve, &url]).await;
            assert_eq!((out.code, out.status), (0, 200), "{url}: {out:?}");
            assert_eq!(out.json()["upstream"], "firewall", "{out:?}");
            assert_eq!(out.json()["tls"]["sni"], host, "{out:?}");
        }
        assert_eq!(firewall.requests(), 2);
        assert_eq!(
            direct.connections(),
            0,
            "the VirtualService sends wikipedia to the firewall"
        );
        assert_eq!(proxy.sniffed().await, [2, 0, 0, 0, 0]);
    });
}

/// 06: httpbin.com, HTTP with resolution DNS, exported only to its namespace `egress`: a
/// workload there reaches it by Host; one in `default` is refused, with the reason.
#[test]
fn seed_06_httpbin_dns_http_by_host_in_its_namespace_only() {
    const FILE: &str = "06-serviceentry-external-svc-httpbin.yaml";
    let check = |namespace: &'static str, expect: u16| {
        let ns = captured_netns();
        ns.block_on(|| async {
            let dns = TestDns::start(unique_loopback());
            let at = unique_loopback();
            dns.set("httpbin.com", &[v4(at)], 30);
            let up = HttpUpstream::start(SocketAddr::new(v4(at), 80), "httpbin");
            let extra = ["--workload-namespace", namespace, "--outbound-policy", "REGISTRY_ONLY"];
            let proxy = Proxy::start(&ns, &[(FILE, seed(FILE))], &dns, &extra).await;
            let resolve = format!("httpbin.com:80:{}", nowhere(20));
            let out = curl(&ns, &["--resolve", &resolve, "http://httpbin.com/get?x=1"]).await;
            assert_eq!((out.code, out.status), (0, expect), "namespace {namespace}: {out:?}");
            if expect == 200 {
                assert_eq!(out.json()["upstream"], "httpbin");
                let seen = up.last().unwrap();
                assert_eq!(seen.uri, "/get?x=1");
                assert_eq!(seen.host.as_deref(), Some("httpbin.com"));
                assert_eq!(up.requests(), 1);
            } else {
                assert!(
                    out.body.contains("httpbin.com"),
                    "the refusal must name the host: {out:?}"
                );
                assert!(out.body.contains("REGISTRY_ONLY"), "{out:?}");
                assert_eq!(up.requests(), 0);
                assert_eq!(proxy.stat("outbound_blocked_total").await, 1);
            }
            assert_eq!(proxy.stat("outbound_cx_total").await, 1);
            assert_eq!(proxy.sniffed().await, [0, 1, 0, 0, 0]);
        });
    };
    check("egress", 200);
    check("default", 502);
}

/// 09: `*.bar.com`, HTTP with resolution NONE: each name goes where the application resolved
/// it; `bar.com` itself is not covered.
#[test]
fn seed_09_wildcard_none_http_goes_to_the_original_destination() {
    const FILE: &str = "09-serviceentry-external-svc-wildcard-example.yaml";
    let ns = captured_netns();
    ns.block_on(|| async {
        let dns = TestDns::start(unique_loopback());
        let (a_ip, b_ip) = (unique_loopback(), unique_loopback());
        let a = HttpUpstream::start(SocketAddr::new(v4(a_ip), 80), "a");
        let b = HttpUpstream::start(SocketAddr::new(v4(b_ip), 80), "b");
        let proxy = Proxy::start(
            &ns,
            &[(FILE, seed(FILE))],
            &dns,
            &["--outbound-policy", "REGISTRY_ONLY"],
        )
        .await;

        for (host, ip, up) in [("foo.bar.com", a_ip, &a), ("b.bar.com", b_ip, &b)] {
            let resolve = format!("{host}:80:{ip}");
            let out = curl(&ns, &["--resolve", &resolve, &format!("http://{host}/x")]).await;
            assert_eq!((out.code, out.status), (0, 200), "{host}: {out:?}");
            assert_eq!(out.json()["upstream"], up.name(), "{host}: {out:?}");
            assert_eq!(up.last().unwrap().host.as_deref(), Some(host));
        }
        assert_eq!((a.requests(), b.requests()), (1, 1));

        let resolve = format!("bar.com:80:{a_ip}");
        let out = curl(&ns, &["--resolve", &resolve, "http://bar.com/"]).await;
        assert_eq!(out.status, 502, "{out:?}");
        assert!(out.body.contains("bar.com"), "{out:?}");
        assert_eq!(a.requests(), 1, "a refused request reached the upstream");
        assert_eq!(dns.total_queries(), 0, "resolution NONE needs no DNS");
        assert_eq!(proxy.stat("outbound_blocked_total").await, 1);
    });
}

/// 10: an HTTP service whose endpoint is a unix socket.
#[test]
fn seed_10_unix_socket_endpoint() {
    const FILE: &str = "10-serviceentry-unix-domain-socket-example.yaml";
    let ns = captured_netns();
    ns.block_on(|| async {
        let dns = TestDns::start(unique_loopback());
        let sockets = tempfile::Builder::new().prefix("meshentry-uds-").tempdir().unwrap();
        let socket = sockets.path().join("socket");
        let up = HttpUpstream::start_unix(&socket, "unix-upstream");
        // The proxy uid must be able to reach and connect to the socket.
        make_accessible(sockets.path());
        let yaml = replace(
            &seed(FILE),
            "unix:///var/run/example/socket",
            &format!("unix://{}", socket.display()),
        );
        let _proxy = Proxy::start(&ns, &[(FILE, yaml)], &dns, &["--outbound-policy", "REGISTRY_ONLY"]).await;

        let resolve = format!("example.unix.local:80:{}", nowhere(30));
        let out = curl(&ns, &["--resolve", &resolve, "http://example.unix.local/over-uds"]).await;
        assert_eq!((out.code, out.status), (0, 200), "{out:?}");
        assert_eq!(out.json()["upstream"], "unix-upstream");
        let seen = up.last().unwrap();
        assert_eq!(seen.uri, "/over-uds");
        assert_eq!(seen.host.as_deref(), Some("example.unix.local"));
    });
}

/// 11: foo.bar.com spread over three DNS endpoints with ports of their own. One kept-alive
/// connection carries all the requests, and each request is balanced on its own.
#[test]
fn seed_11_dns_endpoints_share_the_requests_of_one_connection() {
    const FILE: &str = "11-serviceentry-external-svc-dns.yaml";
    let ns = captured_netns();
    ns.block_on(|| async {
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
                dns.set(name, &[v4(at)], 30);
                HttpUpstream::start(SocketAddr::new(v4(at), *port), name)
            })
            .collect();
        let proxy = Proxy::start(
            &ns,
            &[(FILE, seed(FILE))],
            &dns,
            &["--outbound-policy", "REGISTRY_ONLY"],
        )
        .await;

        const N: usize = 60;
        let resolve = format!("foo.bar.com:80:{}", nowhere(40));
        let answers = curl_many(&ns, &resolve, "http://foo.bar.com/baz", N).await;
        let counts = by_upstream(&answers);
        // LEAST_REQUEST between idle hosts is a uniform random pick: the chance that one of
        // three gets none of 60 requests is about 3 * (2/3)^60 < 1e-10.
        for (name, _) in &endpoints {
            assert!(counts.get(*name).is_some_and(|c| *c > 0), "{name} got none: {counts:?}");
        }
        for up in &upstreams {
            for seen in up.seen() {
                assert_eq!(seen.host.as_deref(), Some("foo.bar.com"), "{}: {seen:?}", up.name());
            }
        }
        assert_eq!(dns.queries("foo.bar.com"), 0, "the service host must not be resolved");
        assert_eq!(proxy.stat("outbound_cx_total").await, 1);
    });
}

/// `n` requests to `host` through capture must be shared by every upstream in `ups`.
async fn assert_spread(ns: &Netns, host: &str, ups: &[HttpUpstream]) {
    const N: usize = 30;
    let resolve = format!("{host}:80:{}", nowhere(50));
    let answers = curl_many(ns, &resolve, &format!("http://{host}/spread"), N).await;
    let counts = by_upstream(&answers);
    // Uniform picks between two idle hosts: one gets none of 30 with chance 2 * 2^-30.
    for up in ups {
        assert!(
            counts.get(up.name()).is_some_and(|c| *c > 0),
            "{} got none: {counts:?}",
            up.name()
        );
        assert!(up.seen().iter().all(|s| s.host.as_deref() == Some(host)));
    }
    assert_eq!(counts.values().sum::<usize>(), N);
}

/// 12: httpbin.com in httpbin-ns, MESH_INTERNAL with two STATIC endpoints (exported to all).
#[test]
fn seed_12_static_httpbin_uses_both_endpoints() {
    const FILE: &str = "12-serviceentry-httpbin.yaml";
    let ns = captured_netns();
    ns.block_on(|| async {
        let dns = TestDns::start(unique_loopback());
        let (ep1, ep2) = (unique_loopback(), unique_loopback());
        let ups = [
            HttpUpstream::start(SocketAddr::new(v4(ep1), 80), "httpbin-1"),
            HttpUpstream::start(SocketAddr::new(v4(ep2), 80), "httpbin-2"),
        ];
        let yaml = replace(&seed(FILE), "2.2.2.2", &ep1.to_string());
        let yaml = replace(&yaml, "3.3.3.3", &ep2.to_string());
        let _proxy = Proxy::start(&ns, &[(FILE, yaml)], &dns, &["--outbound-policy", "REGISTRY_ONLY"]).await;
        assert_spread(&ns, "httpbin.com", &ups).await;
        assert_eq!(dns.total_queries(), 0);
    });
}

/// 13 + 14: details.bookinfo.com selects two WorkloadEntries (VMs) by label.
#[test]
fn seed_13_14_details_workload_entries_serve_the_service() {
    const WORKLOADS: &str = "13-workloadentry-details-vm-1.yaml";
    const SERVICE: &str = "14-serviceentry-details-svc.yaml";
    let ns = captured_netns();
    ns.block_on(|| async {
        let dns = TestDns::start(unique_loopback());
        let (vm1, vm2) = (unique_loopback(), unique_loopback());
        let ups = [
            HttpUpstream::start(SocketAddr::new(v4(vm1), 80), "details-vm-1"),
            HttpUpstream::start(SocketAddr::new(v4(vm2), 80), "details-vm-2"),
        ];
        let workloads = replace(&seed(WORKLOADS), "2.2.2.2", &vm1.to_string());
        let workloads = replace(&workloads, "3.3.3.3", &vm2.to_string());
        let files = [(WORKLOADS, workloads), (SERVICE, seed(SERVICE))];
        let _proxy = Proxy::start(&ns, &files, &dns, &["--outbound-policy", "REGISTRY_ONLY"]).await;
        assert_spread(&ns, "details.bookinfo.com", &ups).await;
    });
}

// ---------------------------------------------------------------------------------------------
// Outbound policy, loops, IPv6

/// Under ALLOW_ANY (the default) a destination no service claims gets where the application was
/// going: on a port no service uses, and on ports with HTTP and TLS services.
#[test]
fn allow_any_passes_unknown_destinations_through() {
    let ns = captured_netns();
    ns.block_on(|| async {
        let dns = TestDns::start(unique_loopback());
        let ca = TestCa::new("capture ca");
        let pem = PemDir::new();
        let ca_path = pem.ca(&ca).display().to_string();
        let (http_ip, tls_ip, tcp_ip) = (unique_loopback(), unique_loopback(), unique_loopback());
        let http80 = HttpUpstream::start(SocketAddr::new(v4(http_ip), 80), "passthrough-80");
        let http8081 = HttpUpstream::start(SocketAddr::new(v4(http_ip), 8081), "passthrough-8081");
        let leaf = ca.issue(LeafSpec::server(["tls.unknown.example.test"]));
        let tls = TlsUpstream::start(
            SocketAddr::new(v4(tls_ip), 443),
            "passthrough-tls",
            server_config(&leaf, None),
        );
        let echo = TcpEcho::start(SocketAddr::new(v4(tcp_ip), 9000), "passthrough-tcp");
        // Port 80 has an HTTP service and 443 TLS ones, so those connections are read first.
        let files = [
            ("01.yaml", seed("01-serviceentry-external-svc-https.yaml")),
            ("11.yaml", seed("11-serviceentry-external-svc-dns.yaml")),
        ];
        let proxy = Proxy::start(&ns, &files, &dns, &[]).await;

        for (port, up) in [(80, &http80), (8081, &http8081)] {
            let resolve = format!("unknown.example.test:{port}:{http_ip}");
            let url = format!("http://unknown.example.test:{port}/through?q=1");
            let out = curl(&ns, &["--resolve", &resolve, &url]).await;
            assert_eq!((out.code, out.status), (0, 200), "{url}: {out:?}");
            assert_eq!(out.json()["upstream"], up.name(), "{out:?}");
            assert_eq!(up.last().unwrap().uri, "/through?q=1");
        }
        let resolve = format!("tls.unknown.example.test:443:{tls_ip}");
        let out = curl(
            &ns,
            &[
                "--cacert",
                &ca_path,
                "--resolve",
                &resolve,
                "https://tls.unknown.example.test/",
            ],
        )
        .await;
        assert_eq!((out.code, out.status), (0, 200), "{out:?}");
        assert_eq!(tls.last_sni().as_deref(), Some("tls.unknown.example.test"));
        let mut s = connect(SocketAddr::new(v4(tcp_ip), 9000)).await;
        assert_echo(&mut s, b"\x00opaque bytes").await;
        drop(s);

        assert_eq!(http80.requests() + http8081.requests() + tls.requests(), 3);
        assert_eq!(echo.connections(), 1);
        let stats = proxy.stats().await;
        assert_eq!(stats["outbound_cx_total"], 4, "{stats:?}");
        assert_eq!(stats["outbound_passthrough_total"], 4, "{stats:?}");
        assert_eq!(stats["outbound_blocked_total"], 0, "{stats:?}");
        // Ports 8081 and 9000 have no service, so those are relayed unread.
        assert_eq!(proxy.sniffed().await, [1, 1, 0, 0, 0], "{stats:?}");
        assert_eq!(dns.total_queries(), 0, "passing through needs no DNS");
    });
}

/// Under REGISTRY_ONLY an unknown destination is refused in the client's protocol: HTTP gets a
/// 502 naming the destination, TLS an access_denied alert, anything else a closed connection.
/// Nothing reaches the upstreams listening there.
#[test]
fn registry_only_refuses_unknown_destinations() {
    let ns = captured_netns();
    ns.block_on(|| async {
        let dns = TestDns::start(unique_loopback());
        let ca = TestCa::new("capture ca");
        let pem = PemDir::new();
        let ca_path = pem.ca(&ca).display().to_string();
        let trap_ip = unique_loopback();
        let http80 = HttpUpstream::start(SocketAddr::new(v4(trap_ip), 80), "trap-80");
        let http8081 = HttpUpstream::start(SocketAddr::new(v4(trap_ip), 8081), "trap-8081");
        let leaf = ca.issue(LeafSpec::server(["tls.unknown.example.test"]));
        let tls = TlsUpstream::start(
            SocketAddr::new(v4(trap_ip), 443),
            "trap-tls",
            server_config(&leaf, None),
        );
        let echo = TcpEcho::start(SocketAddr::new(v4(trap_ip), 9000), "trap-tcp");
        let files = [
            ("01.yaml", seed("01-serviceentry-external-svc-https.yaml")),
            ("11.yaml", seed("11-serviceentry-external-svc-dns.yaml")),
        ];
        let proxy = Proxy::start(&ns, &files, &dns, &["--outbound-policy", "REGISTRY_ONLY"]).await;

        for port in [80, 8081] {
            let resolve = format!("unknown.example.test:{port}:{trap_ip}");
            let url = format!("http://unknown.example.test:{port}/x");
            let out = curl(&ns, &["--resolve", &resolve, &url]).await;
            assert_eq!((out.code, out.status), (0, 502), "{url}: {out:?}");
            assert!(
                out.body.contains("unknown.example.test"),
                "{url}: the body must name it: {out:?}"
            );
            assert!(out.body.contains("REGISTRY_ONLY"), "{url}: {out:?}");
        }
        let resolve = format!("tls.unknown.example.test:443:{trap_ip}");
        let out = curl(
            &ns,
            &[
                "--cacert",
                &ca_path,
                "--resolve",
                &resolve,
                "https://tls.unknown.example.test/",
            ],
        )
        .await;
        assert_ne!(out.code, 0, "{out:?}");
        assert!(out.stderr.contains("alert access denied"), "{out:?}");
        let mut s = connect(SocketAddr::new(v4(trap_ip), 9000)).await;
        s.write_all(b"\x00opaque bytes").await.unwrap();
        assert_closed(&mut s).await;

        assert_eq!(http80.connections() + http8081.connections(), 0);
        assert_eq!(tls.connections() + echo.connections(), 0);
        let stats = proxy.stats().await;
        assert_eq!(stats["outbound_blocked_total"], 4, "{stats:?}");
        assert_eq!(stats["outbound_passthrough_total"], 0, "{stats:?}");
        assert_eq!(dns.total_queries(), 0, "refusing needs no DNS");
        // Each refusal is logged with what it refused: the Host (and port) of HTTP requests,
        // the original destination of connections. The log is read from a pipe, so it may lag.
        let http = [80, 8081].map(|p| vec!["host=\"unknown.example.test\"".to_owned(), format!("port={p} ")]);
        let conns = [443, 9000].map(|p| vec![format!("dst={trap_ip}:{p} ")]);
        for wanted in http.iter().chain(&conns) {
            eventually(Duration::from_secs(5), || async {
                let log = proxy.inner.stderr();
                let found = log
                    .lines()
                    .any(|l| l.contains("REGISTRY_ONLY") && wanted.iter().all(|w| l.contains(w.as_str())));
                found
                    .then_some(())
                    .ok_or_else(|| format!("no refusal with {wanted:?} logged:\n{log}"))
            })
            .await;
        }
    });
}

/// The proxy's own upstream connections (uid 1337) are not captured: each application
/// connection reaches the outbound listener exactly once, and each upstream sees exactly the
/// application's connections. A connection made to the outbound port directly (127.0.0.1 is
/// not captured) is refused as a loop rather than forwarded to itself.
#[test]
fn each_application_connection_is_captured_exactly_once() {
    let ns = captured_netns();
    ns.block_on(|| async {
        let dns = TestDns::start(unique_loopback());
        let (web_ip, db_ip, other_ip) = (unique_loopback(), unique_loopback(), unique_loopback());
        dns.set("web.capture.test", &[v4(web_ip)], 30);
        let web = HttpUpstream::start(SocketAddr::new(v4(web_ip), 80), "web");
        let db = TcpEcho::start(SocketAddr::new(v4(db_ip), 5432), "db");
        let other = HttpUpstream::start(SocketAddr::new(v4(other_ip), 8081), "other");
        let yaml = format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web}}
spec:
  hosts: [web.capture.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [db.capture.test]
  addresses: [203.0.113.5]
  ports: [{{number: 5432, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: {db_ip}}}]
"#
        );
        let proxy = Proxy::start(&ns, &[("services.yaml", yaml)], &dns, &[]).await;

        const EACH: usize = 5;
        for i in 0..EACH {
            let resolve = format!("web.capture.test:80:{}", nowhere(60));
            let out = curl(&ns, &["--resolve", &resolve, &format!("http://web.capture.test/{i}")]).await;
            assert_eq!((out.code, out.status), (0, 200), "{out:?}");
            let mut s = connect("203.0.113.5:5432".parse().unwrap()).await;
            assert_echo(&mut s, format!("\x00query {i}").as_bytes()).await;
            let url = format!("http://{other_ip}:8081/{i}");
            let out = curl(&ns, &[&url]).await;
            assert_eq!((out.code, out.status), (0, 200), "{out:?}");
        }
        // Connections to an HTTP service's endpoints are pooled, so web counts requests.
        assert_eq!(
            (web.requests(), db.connections(), other.requests()),
            (EACH, EACH, EACH),
            "each upstream must see exactly the application's traffic"
        );
        let stats = proxy.stats().await;
        assert_eq!(stats["outbound_cx_total"], 3 * EACH as u64, "{stats:?}");
        assert_eq!(stats["downstream_cx_total"], 3 * EACH as u64, "{stats:?}");
        assert_eq!(stats["outbound_loop_refused_total"], 0, "{stats:?}");

        // Not redirected: its original destination is the listener itself.
        let mut s = connect(OUTBOUND_V4.parse().unwrap()).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: web.capture.test\r\n\r\n")
            .await
            .unwrap();
        assert_closed(&mut s).await;
        assert_eq!(proxy.stat("outbound_loop_refused_total").await, 1);
        assert_eq!(web.requests(), EACH);
    });
}

/// IPv6: a connection to `[2001:db8::5]:80` carrying the Host of a known service is routed to
/// it, and an unknown IPv6 destination is passed through to where it was going.
#[test]
fn ipv6_connections_are_captured_and_routed() {
    let ns = captured_netns();
    let local6 = Ipv6Addr::new(0x2001, 0xdb8, 0x6d65, 0, 0, 0, 0, 5);
    ns.add_local_address(IpAddr::V6(local6));
    ns.block_on(|| async {
        let dns = TestDns::start(unique_loopback());
        let at = unique_loopback();
        dns.set("httpbin.com", &[v4(at)], 30);
        let up = HttpUpstream::start(SocketAddr::new(v4(at), 80), "httpbin");
        let passthrough = HttpUpstream::start(SocketAddr::new(IpAddr::V6(local6), 8081), "v6-passthrough");
        const FILE: &str = "06-serviceentry-external-svc-httpbin.yaml";
        // ALLOW_ANY: a routing mistake would pass the request through to 2001:db8::5, which
        // nothing answers; a short connect timeout makes that fail fast.
        let extra = ["--workload-namespace", "egress", "--connect-timeout", "2s"];
        let proxy = Proxy::start(&ns, &[(FILE, seed(FILE))], &dns, &extra).await;

        let out = curl(
            &ns,
            &["--resolve", "httpbin.com:80:[2001:db8::5]", "http://httpbin.com/v6"],
        )
        .await;
        assert_eq!((out.code, out.status), (0, 200), "{out:?}");
        assert_eq!(out.json()["upstream"], "httpbin");
        assert_eq!(up.last().unwrap().uri, "/v6");

        let out = curl(&ns, &["-g", &format!("http://[{local6}]:8081/through")]).await;
        assert_eq!((out.code, out.status), (0, 200), "{out:?}");
        assert_eq!(out.json()["upstream"], "v6-passthrough");
        assert_eq!(passthrough.requests(), 1);

        let stats = proxy.stats().await;
        assert_eq!(stats["outbound_cx_total"], 2, "{stats:?}");
        assert_eq!(stats["outbound_passthrough_total"], 1, "{stats:?}");
    });
}

/// A TLS service with an address is routed by the address, whatever the SNI (Istio's filter
/// chain for a service address matches the destination before any SNI), and is relayed unread.
#[test]
fn tls_to_a_service_address_is_routed_by_the_address() {
    let ns = captured_netns();
    ns.block_on(|| async {
        let dns = TestDns::start(unique_loopback());
        let ca = TestCa::new("capture ca");
        let pem = PemDir::new();
        let ca_path = pem.ca(&ca).display().to_string();
        let at = unique_loopback();
        let leaf = ca.issue(LeafSpec::server(["unlisted.example.test"]));
        let up = TlsUpstream::start(SocketAddr::new(v4(at), 443), "vip-tls", server_config(&leaf, None));
        let yaml = format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: vip-tls}}
spec:
  hosts: [vip-tls.example.test]
  addresses: [203.0.113.40]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: {at}}}]
"#
        );
        let proxy = Proxy::start(
            &ns,
            &[("vip.yaml", yaml)],
            &dns,
            &["--outbound-policy", "REGISTRY_ONLY"],
        )
        .await;
        let out = curl(
            &ns,
            &[
                "--cacert",
                &ca_path,
                "--resolve",
                "unlisted.example.test:443:203.0.113.40",
                "https://unlisted.example.test/vip",
            ],
        )
        .await;
        assert_eq!((out.code, out.status), (0, 200), "{out:?}");
        assert_eq!(out.json()["upstream"], "vip-tls");
        assert_eq!(up.last_sni().as_deref(), Some("unlisted.example.test"));
        assert_eq!(
            proxy.sniffed().await,
            [0; 5],
            "a declared TLS address is relayed unread"
        );
        assert_eq!(proxy.stat("outbound_blocked_total").await, 0);
    });
}

/// resolution NONE dials the original destination, with the port replaced by `targetPort`.
#[test]
fn none_resolution_dials_the_original_address_at_the_target_port() {
    let ns = captured_netns();
    ns.block_on(|| async {
        let dns = TestDns::start(unique_loopback());
        let at = unique_loopback();
        let target = HttpUpstream::start(SocketAddr::new(v4(at), 9090), "target-port");
        let declared = HttpUpstream::start(SocketAddr::new(v4(at), 8080), "declared-port");
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [legacy.none.test]
  ports: [{number: 8080, name: http, protocol: HTTP, targetPort: 9090}]
  resolution: NONE
"#;
        let _proxy = Proxy::start(
            &ns,
            &[("legacy.yaml", yaml.to_owned())],
            &dns,
            &["--outbound-policy", "REGISTRY_ONLY"],
        )
        .await;
        let resolve = format!("legacy.none.test:8080:{at}");
        let out = curl(&ns, &["--resolve", &resolve, "http://legacy.none.test:8080/moved"]).await;
        assert_eq!((out.code, out.status), (0, 200), "{out:?}");
        assert_eq!(out.json()["upstream"], "target-port", "{out:?}");
        assert_eq!(target.last().unwrap().path, "/moved");
        assert_eq!(declared.connections(), 0);
    });
}

/// Several TCP services without addresses on one port: each connection goes to the service
/// whose endpoints include the address the application connected to (Istio would give the
/// oldest all of them). Service `b` has two endpoints, so connections to `b`'s first address
/// that reach its second one went through `b`, not straight through.
#[test]
fn catch_all_tcp_services_of_one_port_are_told_apart_by_destination() {
    let ns = captured_netns();
    ns.block_on(|| async {
        let dns = TestDns::start(unique_loopback());
        let [a_ip, b1_ip, b2_ip] = [(); 3].map(|_| unique_loopback());
        let a = TcpEcho::start(SocketAddr::new(v4(a_ip), 3310), "a");
        let b1 = TcpEcho::start(SocketAddr::new(v4(b1_ip), 3310), "b1");
        let b2 = TcpEcho::start(SocketAddr::new(v4(b2_ip), 3310), "b2");
        let yaml = format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: a, creationTimestamp: "2020-01-01T00:00:00Z"}}
spec:
  hosts: [a.tcp.test]
  ports: [{{number: 3310, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: {a_ip}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: b, creationTimestamp: "2021-01-01T00:00:00Z"}}
spec:
  hosts: [b.tcp.test]
  ports: [{{number: 3310, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: {b1_ip}}}, {{address: {b2_ip}}}]
"#
        );
        let proxy = Proxy::start(
            &ns,
            &[("tcp.yaml", yaml)],
            &dns,
            &["--outbound-policy", "REGISTRY_ONLY"],
        )
        .await;
        const N: usize = 20;
        for i in 0..N {
            let mut s = connect(SocketAddr::new(v4(b1_ip), 3310)).await;
            assert_echo(&mut s, format!("\x00to b {i}").as_bytes()).await;
        }
        let mut s = connect(SocketAddr::new(v4(a_ip), 3310)).await;
        assert_echo(&mut s, b"\x00to a").await;
        // Uniform picks between two idle endpoints: one gets none of 20 with chance 2 * 2^-20.
        assert_eq!(a.connections(), 1);
        assert_eq!(b1.connections() + b2.connections(), N);
        assert!(
            b2.connections() > 0,
            "b's second endpoint got nothing: went straight through?"
        );
        assert_eq!(proxy.stat("outbound_cx_total").await, N as u64 + 1);
    });
}

/// A proxy that is not the exempt uid would have its own upstream connections captured again
/// and loop, one new connection per hop, until it ran out of file descriptors (it did, before
/// its sockets carried the mark the rules exempt). Running as root it can set the mark, so
/// its connections go straight out.
#[test]
fn a_root_proxy_does_not_capture_its_own_connections() {
    let ns = captured_netns();
    ns.block_on(|| async {
        let dns = TestDns::start(unique_loopback());
        let at = unique_loopback();
        let web = HttpUpstream::start(SocketAddr::new(v4(at), 80), "web");
        let yaml = format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web}}
spec:
  hosts: [web.capture.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {at}}}]
"#
        );
        // Root: not the uid capture exempts.
        let proxy = Proxy::start_as(&ns, 0, &[("web.yaml", yaml)], &dns, &[]).await;
        let resolve = format!("web.capture.test:80:{}", nowhere(90));
        let out = curl(
            &ns,
            &["--max-time", "3", "--resolve", &resolve, "http://web.capture.test/"],
        )
        .await;
        // A looping proxy soon has no file descriptor left, not even for its admin server.
        let stats = proxy.try_stats().await;
        let Ok(stats) = stats else {
            panic!("the proxy looped until its admin server failed ({stats:?}); the client got {out:?}");
        };
        assert_eq!(out.status, 200, "{out:?} {stats:?}");
        assert_eq!(
            stats["outbound_cx_total"], 1,
            "the connection looped: {out:?} {stats:?}"
        );
        assert_eq!(stats["outbound_loop_refused_total"], 0, "{stats:?}");
        assert_eq!(web.requests(), 1);
    });
}

// ---------------------------------------------------------------------------------------------
// Protocol detection

/// Services for the detection tests, on ports whose protocol is declared or left unset.
fn sniff_services(echo: Ipv4Addr, banner: Ipv4Addr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tls-sniff}}
spec:
  hosts: [tls.sniff.test]
  ports: [{{number: 9443, name: tls, protocol: TLS}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web-sniff}}
spec:
  hosts: [web.sniff.test]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: other-sniff}}
spec:
  hosts: [other.sniff.test]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: DNS
---
# Protocol unset: Istio detects it.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: opaque-auto}}
spec:
  hosts: [opaque.sniff.test]
  addresses: [203.0.113.10]
  ports: [{{number: 7000, name: opaque}}]
  resolution: STATIC
  endpoints: [{{address: {echo}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: banner-auto}}
spec:
  hosts: [banner-auto.sniff.test]
  addresses: [203.0.113.20]
  ports: [{{number: 3306, name: db}}]
  resolution: STATIC
  endpoints: [{{address: {banner}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: banner-tcp}}
spec:
  hosts: [banner-tcp.sniff.test]
  addresses: [203.0.113.30]
  ports: [{{number: 3306, name: db, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: {banner}}}]
---
# Declared TCP without addresses: the catch-all of its port.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: banner-wild}}
spec:
  hosts: [banner-wild.sniff.test]
  ports: [{{number: 3307, name: db, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: {banner}, ports: {{db: 3306}}}}]
"#
    )
}

/// A detection test's world: the services above, their upstreams and a proxy.
struct SniffWorld {
    ca: TestCa,
    ca_path: String,
    web: HttpUpstream,
    other: HttpUpstream,
    tls: TlsUpstream,
    echo: TcpEcho,
    banner: TcpBanner,
    proxy: Proxy,
    _pem: PemDir,
    _dns: TestDns,
}

const BANNER: &[u8] = b"220 banner.sniff.test server speaks first\r\n";

impl SniffWorld {
    async fn start(ns: &Netns, extra: &[&str]) -> SniffWorld {
        let dns = TestDns::start(unique_loopback());
        let ca = TestCa::new("sniff ca");
        let pem = PemDir::new();
        let ca_path = pem.ca(&ca).display().to_string();
        let [web_ip, other_ip, tls_ip, echo_ip, banner_ip] = [(); 5].map(|_| unique_loopback());
        dns.set("web.sniff.test", &[v4(web_ip)], 30);
        dns.set("other.sniff.test", &[v4(other_ip)], 30);
        dns.set("tls.sniff.test", &[v4(tls_ip)], 30);
        let leaf = ca.issue(LeafSpec::server(["tls.sniff.test"]));
        let world_yaml = sniff_services(echo_ip, banner_ip);
        let mut args = vec!["--outbound-policy", "REGISTRY_ONLY"];
        args.extend_from_slice(extra);
        SniffWorld {
            web: HttpUpstream::start(SocketAddr::new(v4(web_ip), 8080), "web"),
            other: HttpUpstream::start(SocketAddr::new(v4(other_ip), 8080), "other"),
            tls: TlsUpstream::start(SocketAddr::new(v4(tls_ip), 9443), "tls", server_config(&leaf, None)),
            echo: TcpEcho::start(SocketAddr::new(v4(echo_ip), 7000), "opaque"),
            banner: TcpBanner::start(SocketAddr::new(v4(banner_ip), 3306), BANNER),
            proxy: Proxy::start(ns, &[("sniff.yaml", world_yaml)], &dns, &args).await,
            ca,
            ca_path,
            _pem: pem,
            _dns: dns,
        }
    }

    /// An HTTPS GET to tls.sniff.test through capture over `io`, by rustls, read strictly.
    async fn https_get<IO>(&self, io: IO) -> RawResponse
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let connector = TlsConnector::from(client_config(&self.ca, None));
        let name = ServerName::try_from("tls.sniff.test").unwrap();
        let mut tls = tokio::time::timeout(IO_TIMEOUT, connector.connect(name, io))
            .await
            .unwrap()
            .unwrap();
        tls.write_all(b"GET /sniffed HTTP/1.1\r\nHost: tls.sniff.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut tls).await
    }
}

#[test]
fn detection_routes_tls_by_the_client_hello_sni() {
    let ns = captured_netns();
    ns.block_on(|| async {
        let w = SniffWorld::start(&ns, &[]).await;
        let s = connect(SocketAddr::new(v4(nowhere(70)), 9443)).await;
        let r = w.https_get(s).await;
        assert!(r.raw.starts_with(b"HTTP/1.1 200"), "{r:?}");
        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(json["upstream"], "tls");
        assert_eq!(json["tls"]["sni"], "tls.sniff.test");
        assert_eq!(w.tls.handshakes().len(), 1);
        assert_eq!(w.proxy.sniffed().await, [1, 0, 0, 0, 0]);

        // And by curl, to a port of a TLS service only (no address): the SNI is all there is.
        let resolve = format!("tls.sniff.test:9443:{}", nowhere(71));
        let out = curl(
            &ns,
            &[
                "--cacert",
                &w.ca_path,
                "--resolve",
                &resolve,
                "https://tls.sniff.test:9443/curl",
            ],
        )
        .await;
        assert_eq!((out.code, out.status), (0, 200), "{out:?}");
        assert_eq!(out.json()["tls"]["sni"], "tls.sniff.test");

        // And by openssl; then without SNI, which leaves nothing to route by: refused with an
        // alert, never reaching the upstream.
        let connect_to = format!("{}:9443", nowhere(71));
        let with_sni = [
            "-connect",
            &connect_to,
            "-CAfile",
            &w.ca_path,
            "-servername",
            "tls.sniff.test",
        ];
        let (ok, out) = openssl_get(&ns, "tls.sniff.test", &with_sni).await;
        assert!(
            ok && out.contains("HTTP/1.0 200") && out.contains("\"upstream\":\"tls\""),
            "{out}"
        );
        assert_eq!(w.tls.handshakes().len(), 3);
        let without_sni = ["-connect", &connect_to, "-CAfile", &w.ca_path, "-noservername"];
        let (ok, out) = openssl_get(&ns, "tls.sniff.test", &without_sni).await;
        assert!(!ok && out.contains("alert access denied"), "{out}");
        assert_eq!(w.tls.connections(), 3);
        assert_eq!(w.proxy.sniffed().await, [4, 0, 0, 0, 0]);
        assert_eq!(w.proxy.stat("outbound_blocked_total").await, 1);
    });
}

/// Writes everything one byte per TCP segment (nodelay, a pause after each byte) until the
/// server first answers, i.e. the whole ClientHello; then passes writes through.
struct Trickle {
    inner: TcpStream,
    trickling: bool,
    segments: usize,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Trickle {
    fn new(inner: TcpStream) -> Trickle {
        inner.set_nodelay(true).unwrap();
        Trickle {
            inner,
            trickling: true,
            segments: 0,
            pause: None,
        }
    }
}

impl AsyncRead for Trickle {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.trickling = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.trickling || buf.is_empty() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if let Some(pause) = this.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
            this.pause = None;
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..1]))?;
        this.segments += 1;
        this.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(1))));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A ClientHello that arrives one byte per segment is still read whole and routed by SNI. The
/// detection timeout is raised so that the test is about fragmentation, not about a slow client
/// (~250 segments with a pause each can take longer than the default 300 ms).
#[test]
fn detection_reassembles_a_client_hello_sent_one_byte_per_segment() {
    let ns = captured_netns();
    ns.block_on(|| async {
        let w = SniffWorld::start(&ns, &["--protocol-detection-timeout", "10s"]).await;
        let s = connect(SocketAddr::new(v4(nowhere(72)), 9443)).await;
        let mut trickle = Trickle::new(s);
        let r = w.https_get(&mut trickle).await;
        assert!(trickle.segments > 100, "only {} segments", trickle.segments);
        assert!(r.raw.starts_with(b"HTTP/1.1 200"), "{r:?}");
        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(json["tls"]["sni"], "tls.sniff.test");
        assert_eq!(w.tls.requests(), 1);
        assert_eq!(w.proxy.sniffed().await, [1, 0, 0, 0, 0]);
    });
}

/// HTTP/1.1 is routed by Host among the services on the original port; the Host's own port is
/// ignored (Istio's route tables hold `host` and `host:port` alike).
#[test]
fn detection_routes_http1_by_host_on_the_original_port() {
    let ns = captured_netns();
    ns.block_on(|| async {
        let w = SniffWorld::start(&ns, &[]).await;
        for (host, up) in [("other.sniff.test:9999", &w.other), ("web.sniff.test", &w.web)] {
            let mut s = connect(SocketAddr::new(v4(nowhere(73)), 8080)).await;
            let req = format!("GET /sniffed HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let r = read_response(&mut s).await;
            assert!(r.raw.starts_with(b"HTTP/1.1 200"), "{host}: {r:?}");
            let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(json["upstream"], up.name(), "{host}: {r:?}");
            assert_eq!(up.last().unwrap().path, "/sniffed");
        }
        // A request line that arrives one byte per segment is still HTTP.
        let mut s = Trickle::new(connect(SocketAddr::new(v4(nowhere(73)), 8080)).await);
        s.write_all(b"GET /trickled HTTP/1.1\r\nHost: web.sniff.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s).await;
        assert!(r.raw.starts_with(b"HTTP/1.1 200"), "{r:?}");
        assert!(s.segments > 50, "only {} segments", s.segments);
        assert_eq!(w.web.last().unwrap().path, "/trickled");
        // A long request line (8 KiB of target) is still HTTP.
        let long = format!("/{}", "x".repeat(8 * 1024));
        let resolve = format!("web.sniff.test:8080:{}", nowhere(73));
        let out = curl(
            &ns,
            &["--resolve", &resolve, &format!("http://web.sniff.test:8080{long}")],
        )
        .await;
        assert_eq!((out.code, out.status), (0, 200), "{}", out.stderr);
        assert!(
            w.web.last().unwrap().path == long,
            "the long target did not arrive whole"
        );
        assert_eq!((w.web.requests(), w.other.requests()), (3, 1));
        assert_eq!(w.proxy.sniffed().await, [0, 4, 0, 0, 0]);
    });
}

/// Requests on one captured connection are routed one by one: a kept-alive connection that
/// changes Host changes upstream, as Envoy's HTTP connection manager does.
#[test]
fn detection_routes_each_request_of_a_connection_by_its_own_host() {
    let ns = captured_netns();
    ns.block_on(|| async {
        let w = SniffWorld::start(&ns, &[]).await;
        let mut s = RawClient::new(connect(SocketAddr::new(v4(nowhere(76)), 8080)).await);
        for (i, (host, up)) in [
            ("web.sniff.test", &w.web),
            ("other.sniff.test", &w.other),
            ("web.sniff.test", &w.web),
        ]
        .into_iter()
        .enumerate()
        {
            let req = format!("GET /keepalive/{i} HTTP/1.1\r\nHost: {host}\r\n\r\n");
            s.send(req.as_bytes()).await.unwrap();
            let r = s.read_response("GET", IO_TIMEOUT).await.unwrap();
            assert!(r.raw.starts_with(b"HTTP/1.1 200"), "request {i} to {host}: {r:?}");
            assert!(s.buffered().is_empty(), "more than one response arrived: {r:?}");
            let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(json["upstream"], up.name(), "request {i} to {host}: {r:?}");
            assert_eq!(json["path"], format!("/keepalive/{i}"));
        }
        assert_eq!((w.web.requests(), w.other.requests()), (2, 1));
        assert_eq!(w.proxy.stat("outbound_cx_total").await, 1);
        assert_eq!(w.proxy.sniffed().await, [0, 1, 0, 0, 0]);
    });
}

/// HTTP/2 with prior knowledge (h2c) is routed by `:authority`; the upstream speaks HTTP/1.1.
#[test]
fn detection_routes_h2c_by_authority() {
    let ns = captured_netns();
    ns.block_on(|| async {
        let w = SniffWorld::start(&ns, &[]).await;
        let resolve = format!("web.sniff.test:8080:{}", nowhere(74));
        let out = curl(
            &ns,
            &[
                "--http2-prior-knowledge",
                "--resolve",
                &resolve,
                "http://web.sniff.test:8080/h2c",
            ],
        )
        .await;
        assert_eq!((out.code, out.status), (0, 200), "{out:?}");
        assert_eq!(out.json()["upstream"], "web", "{out:?}");
        let seen = w.web.last().unwrap();
        assert_eq!((seen.path.as_str(), seen.version.as_str()), ("/h2c", "HTTP/1.1"));

        // An authority no service has is refused over HTTP/2 too, with the reason.
        let resolve = format!("unknown.example.test:8080:{}", nowhere(74));
        let out = curl(
            &ns,
            &[
                "--http2-prior-knowledge",
                "--resolve",
                &resolve,
                "http://unknown.example.test:8080/h2c",
            ],
        )
        .await;
        assert_eq!((out.code, out.status), (0, 502), "{out:?}");
        assert!(out.body.contains("unknown.example.test"), "{out:?}");
        assert!(out.body.contains("REGISTRY_ONLY"), "{out:?}");
        assert_eq!(w.web.requests() + w.other.requests(), 1);
        assert_eq!(w.proxy.sniffed().await, [0, 0, 2, 0, 0]);
    });
}

/// Bytes that are neither TLS nor HTTP go to the service of the destination address.
#[test]
fn detection_sends_other_bytes_by_destination() {
    let ns = captured_netns();
    ns.block_on(|| async {
        let w = SniffWorld::start(&ns, &[]).await;
        // xorshift: reproducible noise; a leading 0 is not the start of TLS nor of a method.
        let mut x: u32 = 0x9e37_79b9;
        let mut noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x.to_le_bytes()[0]
            })
            .collect();
        noise[0] = 0;
        let mut s = connect("203.0.113.10:7000".parse().unwrap()).await;
        assert_echo(&mut s, &noise).await;
        // A half-close reaches the upstream, whose close comes back.
        s.shutdown().await.unwrap();
        assert_closed(&mut s).await;
        assert_eq!(w.echo.connections(), 1);
        assert_eq!(w.echo.bytes_received(), noise.len());
        assert_eq!(w.proxy.sniffed().await, [0, 0, 0, 1, 0]);
    });
}

/// Reads a server-first greeting without sending anything; returns how long it took.
async fn await_banner(dst: SocketAddr) -> (TcpStream, Duration) {
    let started = Instant::now();
    let mut s = connect(dst).await;
    let mut got = vec![0u8; BANNER.len()];
    tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("no banner from {dst}"))
        .unwrap();
    assert_eq!(got, BANNER);
    (s, started.elapsed())
}

/// A server-first protocol on a port whose protocol is unset: the client sends nothing, the
/// proxy gives up waiting after the detection timeout and relays by destination, so the
/// client gets the greeting (Istio would wait forever).
#[test]
fn detection_lets_a_server_first_protocol_through_after_the_timeout() {
    let ns = captured_netns();
    ns.block_on(|| async {
        let w = SniffWorld::start(&ns, &["--protocol-detection-timeout", "300ms"]).await;
        let (mut s, took) = await_banner("203.0.113.20:3306".parse().unwrap()).await;
        // The timeout, plus slack for a loaded machine.
        assert!(took < Duration::from_millis(300 + 1500), "{took:?}");
        assert_echo(&mut s, b"client speaks second").await;
        assert_eq!(w.banner.connections(), 1);
        assert_eq!(w.proxy.sniffed().await, [0, 0, 0, 0, 1]);
    });
}

/// A server-first protocol on a port declared TCP (on a service address, and as the port's
/// catch-all) is relayed at once: with a 10 s detection timeout, any wait would show.
#[test]
fn declared_tcp_is_relayed_without_a_detection_wait() {
    let ns = captured_netns();
    ns.block_on(|| async {
        let w = SniffWorld::start(&ns, &["--protocol-detection-timeout", "10s"]).await;
        let catch_all = SocketAddr::new(v4(nowhere(75)), 3307);
        for dst in ["203.0.113.30:3306".parse().unwrap(), catch_all] {
            let (mut s, took) = await_banner(dst).await;
            assert!(took < Duration::from_secs(3), "{dst}: {took:?}");
            assert_echo(&mut s, b"client speaks second").await;
        }
        assert_eq!(w.banner.connections(), 2);
        assert_eq!(
            w.proxy.sniffed().await,
            [0; 5],
            "nothing is read before relaying declared TCP"
        );
    });
}
