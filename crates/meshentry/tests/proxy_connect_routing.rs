//! Issue 15 item 8, first half, end to end: a CONNECT tunnel (`HTTPS_PROXY`, `curl -x`) is
//! routed by the VirtualService `tls` and `tcp` rules of the service port it names, exactly as
//! a captured connection to that destination is (proxy_capture.rs has the captured side of the
//! seed's tls-routing example).
//!
//! For a CONNECT to a name the SNI the `tls` rules match is the CONNECT host, and the tunnel
//! refuses a ClientHello that names another host; for a CONNECT to an IP, the ClientHello's own
//! SNI, read before the tunnel is routed. `destinationSubnets` match the CONNECT IP, or the
//! first address a name resolves to.
//!
//! Every test owns its loopback addresses, its DNS server (every name resolves to a 127.x
//! address) and its `meshentry proxy` process; the clients are real curl over CONNECT with real
//! TLS, or raw CONNECT over tokio for plain TCP.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use meshentry_testutil::pki::server_config;
use meshentry_testutil::{
    LeafSpec, PemDir, Proxy, TcpEcho, TestCa, TestDns, TlsUpstream, eventually, raw, unique_loopback,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const FIREWALL: &str = "outbound|443||internal-egress-firewall.ns1.svc.cluster.local";

// ---------------------------------------------------------------------------------------------
// Helpers

/// The text of a seed example, e.g. `seed("v1beta1", "05-virtualservice-tls-routing.yaml")`.
fn seed(version: &str, file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/seed")
        .join(version)
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn ip(v4: std::net::Ipv4Addr) -> IpAddr {
    IpAddr::V4(v4)
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

const STATUS_MARK: &str = "\n@@meshentry-status@@";

/// Runs curl with `args` and the extra environment `env` (e.g. `HTTPS_PROXY`) off the runtime.
async fn curl(args: &[&str], env: &[(&str, &str)]) -> CurlOut {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = meshentry_testutil::curl_command();
        cmd.args(["-sS", "--max-time", "20", "-w"])
            .arg(format!("{STATUS_MARK}%{{http_code}}"))
            .args(&args)
            .envs(env);
        let out = cmd.output().unwrap_or_else(|e| {
            panic!("cannot run curl ({e}); these tests need it as a real client (scripts/test installs it)")
        });
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
    })
    .await
    .unwrap()
}

/// The proxy on `yaml`, REGISTRY_ONLY, resolving through `dns`.
async fn start_proxy(yaml: &str, dns: &TestDns) -> Proxy {
    Proxy::builder(BIN)
        .config(yaml)
        .dns(dns.addr())
        .args(["--outbound-policy", "REGISTRY_ONLY"])
        .start()
        .await
}

fn proxy_url(proxy: &Proxy) -> String {
    proxy.url()
}

/// Requests `https://host/path` through the proxy, the way `how` says, trusting `ca`.
async fn https_via(proxy: &Proxy, how: Via, ca: &str, host: &str, extra: &[&str]) -> CurlOut {
    let url = format!("https://{host}/wiki/Egress");
    let mut args = vec!["--cacert", ca];
    args.extend_from_slice(extra);
    let proxy = proxy_url(proxy);
    match how {
        Via::Env => {
            args.push(&url);
            curl(&args, &[("HTTPS_PROXY", &proxy)]).await
        }
        Via::Flag => {
            args.extend_from_slice(&["-x", &proxy, &url]);
            curl(&args, &[]).await
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Via {
    /// `HTTPS_PROXY` in the environment, as applications configured by environment use it.
    Env,
    /// `curl -x`.
    Flag,
}

/// The ServiceEntry for the firewall the seed's VirtualService names, on `at`.
fn firewall_se(at: std::net::Ipv4Addr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: firewall, namespace: ns1}}\n\
         spec:\n  hosts: [internal-egress-firewall.ns1.svc.cluster.local]\n  location: MESH_INTERNAL\n\
         \x20 ports: [{{number: 443, name: tls, protocol: TLS}}]\n  resolution: STATIC\n\
         \x20 endpoints: [{{address: \"{at}\"}}]\n"
    )
}

/// Opens a CONNECT tunnel to `target` and returns the stream after the 200 head.
async fn connect_tunnel(proxy: SocketAddr, target: &str) -> TcpStream {
    raw::tunnel(proxy, target, IO_TIMEOUT).await.unwrap()
}

/// Sends `msg` through a tunnel to an echo server and reads it back.
async fn echo_through(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, msg);
}

/// The connections (requests, for the admin page) the proxy sent to `cluster`.
async fn cluster_connections(proxy: &Proxy, cluster: &str) -> u64 {
    let json = proxy.admin_json("/clusters?format=json").await;
    json["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster)
        .unwrap_or_else(|| panic!("no cluster {cluster} in {json}"))["requests"]
        .as_u64()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The seed's tls-routing example (04, 05) through HTTPS_PROXY

/// 04 + 05: TLS to `wikipedia.org` and `*.wikipedia.org`, asked for through the explicit proxy,
/// goes to `internal-egress-firewall.ns1.svc.cluster.local` (the VirtualService's `tls` rule,
/// matched by the CONNECT host), not to where the name resolves. Without 05 the same requests
/// reach wikipedia itself, so the difference is the VirtualService's doing.
async fn seed_tls_routing_reaches_the_firewall(version: &str) {
    let dns = TestDns::start(unique_loopback());
    let ca = TestCa::new("connect routing ca");
    let pem = PemDir::new();
    let ca_path = pem.ca(&ca).display().to_string();
    let leaf = ca.issue(LeafSpec::server(["wikipedia.org", "en.wikipedia.org"]));
    let fw_at = unique_loopback();
    let firewall = TlsUpstream::start(SocketAddr::new(ip(fw_at), 443), "firewall", server_config(&leaf, None));
    let direct_at = unique_loopback();
    let direct = TlsUpstream::start(
        SocketAddr::new(ip(direct_at), 443),
        "direct",
        server_config(&leaf, None),
    );
    for host in ["wikipedia.org", "en.wikipedia.org"] {
        dns.set(host, &[ip(direct_at)], 30);
    }
    let se = seed(version, "04-serviceentry-external-svc-redirect.yaml");
    let vs = seed(version, "05-virtualservice-tls-routing.yaml");
    let yaml = format!("{se}\n---\n{vs}\n---\n{}", firewall_se(fw_at));
    let proxy = start_proxy(&yaml, &dns).await;

    for (host, how) in [
        ("en.wikipedia.org", Via::Env),
        ("wikipedia.org", Via::Env),
        ("en.wikipedia.org", Via::Flag),
    ] {
        let out = https_via(&proxy, how, &ca_path, host, &[]).await;
        assert_eq!((out.code, out.status), (0, 200), "{host} via {how:?}: {out:?}");
        let json = out.json();
        assert_eq!(json["upstream"], "firewall", "{host} via {how:?}: {out:?}");
        assert_eq!(json["tls"]["sni"], host, "{out:?}");
        assert_eq!(json["host"], host, "{out:?}");
    }
    assert_eq!(firewall.requests(), 3);
    assert_eq!(
        direct.connections(),
        0,
        "the VirtualService sends wikipedia to the firewall"
    );
    assert_eq!(cluster_connections(&proxy, FIREWALL).await, 3);
    // The rule matches by name alone: nothing needed the names' addresses.
    assert_eq!(dns.queries("en.wikipedia.org") + dns.queries("wikipedia.org"), 0);
    assert_eq!(proxy.stat("tunnels_total").await, 3);

    // The control: the same requests without the VirtualService reach wikipedia.
    let yaml = format!("{se}\n---\n{}", firewall_se(fw_at));
    let plain = start_proxy(&yaml, &dns).await;
    let out = https_via(&plain, Via::Env, &ca_path, "en.wikipedia.org", &[]).await;
    assert_eq!((out.code, out.status), (0, 200), "{out:?}");
    assert_eq!(out.json()["upstream"], "direct", "{out:?}");
    assert_eq!(firewall.requests(), 3);
}

#[tokio::test]
async fn seed_tls_routing_through_https_proxy_reaches_the_firewall_v1alpha3() {
    seed_tls_routing_reaches_the_firewall("v1alpha3").await;
}

#[tokio::test]
async fn seed_tls_routing_through_https_proxy_reaches_the_firewall_v1beta1() {
    seed_tls_routing_reaches_the_firewall("v1beta1").await;
}

/// A tunnel routed by its CONNECT host must carry TLS for that host: a ClientHello naming
/// another (here `www.example.org` through `CONNECT en.wikipedia.org:443`) is refused with an
/// alert before any upstream sees it, as a shared proxy must never let a client name one host
/// and reach another's destination.
#[tokio::test]
async fn a_client_hello_that_names_another_host_is_refused() {
    let dns = TestDns::start(unique_loopback());
    let ca = TestCa::new("connect routing ca");
    let pem = PemDir::new();
    let ca_path = pem.ca(&ca).display().to_string();
    // The firewall would accept either name, so only the proxy's check can fail the request.
    let leaf = ca.issue(LeafSpec::server(["en.wikipedia.org", "www.example.org"]));
    let fw_at = unique_loopback();
    let firewall = TlsUpstream::start(SocketAddr::new(ip(fw_at), 443), "firewall", server_config(&leaf, None));
    let se = seed("v1beta1", "04-serviceentry-external-svc-redirect.yaml");
    let vs = seed("v1beta1", "05-virtualservice-tls-routing.yaml");
    let yaml = format!("{se}\n---\n{vs}\n---\n{}", firewall_se(fw_at));
    let proxy = start_proxy(&yaml, &dns).await;

    // --connect-to makes curl send `CONNECT en.wikipedia.org:443` with a ClientHello for the
    // URL's host.
    let out = https_via(
        &proxy,
        Via::Flag,
        &ca_path,
        "www.example.org",
        &["--connect-to", "www.example.org:443:en.wikipedia.org:443"],
    )
    .await;
    assert_ne!(out.code, 0, "the mismatched tunnel must fail: {out:?}");
    assert_eq!(out.status, 0, "no HTTP response may come through: {out:?}");
    assert!(out.stderr.contains("unrecognized name"), "{out:?}");
    assert!(firewall.handshakes().is_empty(), "{:?}", firewall.handshakes());
    assert_eq!(proxy.stat("tunnel_sni_mismatch_total").await, 1);
    eventually(Duration::from_secs(5), || async {
        proxy
            .process
            .stderr()
            .lines()
            .any(|l| l.contains("tunnel refused") && l.contains("en.wikipedia.org") && l.contains("www.example.org"))
    })
    .await;

    // The same client naming the host it tunnels to gets through.
    let out = https_via(&proxy, Via::Flag, &ca_path, "en.wikipedia.org", &[]).await;
    assert_eq!((out.code, out.status), (0, 200), "{out:?}");
    assert_eq!(out.json()["upstream"], "firewall");
}

/// A CONNECT to a service address (an IP) is routed by the ClientHello it carries, read
/// before the tunnel connects, as a captured connection to that address is: the SNI the
/// `tls` rule names goes to the firewall, another SNI takes the service's default route.
#[tokio::test]
async fn a_connect_to_a_service_address_is_routed_by_its_client_hello() {
    let dns = TestDns::start(unique_loopback());
    let ca = TestCa::new("connect routing ca");
    let pem = PemDir::new();
    let ca_path = pem.ca(&ca).display().to_string();
    let leaf = ca.issue(LeafSpec::server(["api.example.com", "other.example.com"]));
    let fw_at = unique_loopback();
    let firewall = TlsUpstream::start(SocketAddr::new(ip(fw_at), 443), "firewall", server_config(&leaf, None));
    let api_at = unique_loopback();
    let api = TlsUpstream::start(SocketAddr::new(ip(api_at), 443), "api", server_config(&leaf, None));
    let vip = unique_loopback();
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.example.com, other.example.com]
  addresses: [\"{vip}\"]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: \"{api_at}\"}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api-sni}}
spec:
  hosts: [api.example.com, other.example.com]
  tls:
  - match: [{{sniHosts: [api.example.com]}}]
    route: [{{destination: {{host: internal-egress-firewall.ns1.svc.cluster.local}}}}]
",
        firewall_se(fw_at)
    );
    let proxy = start_proxy(&yaml, &dns).await;
    for (host, upstream) in [("api.example.com", "firewall"), ("other.example.com", "api")] {
        let connect_to = format!("{host}:443:{vip}:443");
        let out = https_via(&proxy, Via::Flag, &ca_path, host, &["--connect-to", &connect_to]).await;
        assert_eq!((out.code, out.status), (0, 200), "{host}: {out:?}");
        assert_eq!(out.json()["upstream"], upstream, "{host}: {out:?}");
        assert_eq!(out.json()["tls"]["sni"], host, "{out:?}");
    }
    assert_eq!((firewall.requests(), api.requests()), (1, 1));
}

// ---------------------------------------------------------------------------------------------
// tcp rules

/// A VirtualService `tcp` rule with `destinationSubnets` applies to a CONNECT as to a captured
/// connection: `db.example.com` resolves into the subnet, so its tunnels go to the rule's
/// destination; `replica.db.example.com` resolves outside it and takes its default route.
#[tokio::test]
async fn tcp_rules_route_a_tunnel_by_its_destination_address() {
    let dns = TestDns::start(unique_loopback());
    let (db_at, replica_at, primary_at) = (unique_loopback(), unique_loopback(), unique_loopback());
    let db = TcpEcho::start(SocketAddr::new(ip(db_at), 5432), "db");
    let replica = TcpEcho::start(SocketAddr::new(ip(replica_at), 5432), "replica");
    let primary = TcpEcho::start(SocketAddr::new(ip(primary_at), 5432), "primary");
    dns.set("db.example.com", &[ip(db_at)], 30);
    dns.set("replica.db.example.com", &[ip(replica_at)], 30);
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [db.example.com]
  ports: [{{number: 5432, name: pg, protocol: TCP}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: replica}}
spec:
  hosts: [replica.db.example.com]
  ports: [{{number: 5432, name: pg, protocol: TCP}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: primary}}
spec:
  hosts: [primary.db.internal]
  ports: [{{number: 5432, name: pg, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: \"{primary_at}\"}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db-by-subnet}}
spec:
  hosts: [db.example.com, replica.db.example.com]
  tcp:
  - match: [{{destinationSubnets: [\"{db_at}/32\"]}}]
    route: [{{destination: {{host: primary.db.internal}}}}]
"
    );
    let proxy = start_proxy(&yaml, &dns).await;

    let mut s = connect_tunnel(proxy.http(), "db.example.com:5432").await;
    echo_through(&mut s, b"to the primary").await;
    drop(s);
    let mut s = connect_tunnel(proxy.http(), "replica.db.example.com:5432").await;
    echo_through(&mut s, b"to the replica").await;
    drop(s);
    assert_eq!(
        primary.connections(),
        1,
        "db.example.com resolves into the rule's subnet"
    );
    assert_eq!(replica.connections(), 1, "replica.db.example.com does not");
    assert_eq!(db.connections(), 0);
    assert_eq!(
        cluster_connections(&proxy, "outbound|5432||primary.db.internal").await,
        1
    );
}
