//! Issue 7 items 2 and 3 end to end: `meshentry proxy --gateway NS/NAME` as the seed's egress
//! gateway, and the seed's two-hop egress (sidecar -> gateway -> httpbin.com) with two real
//! proxy processes and curl as the client.
//!
//! Every test owns its loopback addresses, its DNS server and its proxies. The gateway binds its
//! servers' real ports (80, 443) on a 127.x address of its own (`--gateway-bind`), so tests run in
//! parallel. Sidecars run REGISTRY_ONLY, so a routing bug is a refusal, not a passthrough.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meshentry_testutil::pki::{Leaf, LeafPaths, client_config, server_config};
use meshentry_testutil::{HttpUpstream, LeafSpec, PemDir, TestCa, TestDns, TlsUpstream, unique_loopback};
use rustls::pki_types::CertificateDer;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");

fn seed(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/seed/v1beta1")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn replace(yaml: &str, from: &str, to: &str) -> String {
    assert!(yaml.contains(from), "seed example no longer contains {from:?}:\n{yaml}");
    yaml.replace(from, to)
}

fn ip(v4: Ipv4Addr) -> IpAddr {
    IpAddr::V4(v4)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

struct Proxy {
    inner: meshentry_testutil::Proxy,
    /// The explicit proxy (sidecars) or the address the gateway's ports are bound on.
    ip: Ipv4Addr,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Proxy {
    /// A sidecar in `namespace` with its explicit proxy on `<own ip>:15080`.
    async fn sidecar(yaml: &str, dns: &TestDns, namespace: &str, extra: &[&str]) -> Proxy {
        let own = unique_loopback();
        let inner = meshentry_testutil::Proxy::builder(BIN)
            .ip(own)
            .config(yaml)
            .dns(dns.addr())
            .outbound_off()
            .args(["--workload-namespace", namespace, "--outbound-policy", "REGISTRY_ONLY"])
            .args(extra.iter().copied())
            .start()
            .await;
        Proxy {
            ip: own,
            addr: inner.http(),
            admin: inner.admin,
            inner,
        }
    }

    /// The gateway `istio-system/istio-egressgateway` (as the seed names it), bound on `own`,
    /// serving `port` once it is ready. Neither the explicit proxy nor the transparent
    /// listener: a gateway has only its servers' ports.
    async fn gateway(yaml: &str, dns: &TestDns, own: Ipv4Addr, port: u16, extra: &[&str]) -> Proxy {
        let inner = meshentry_testutil::Proxy::builder(BIN)
            .ip(own)
            .config(yaml)
            .dns(dns.addr())
            .http_proxy_off()
            .outbound_off()
            .args(["--gateway", "istio-system/istio-egressgateway"])
            .args(["--labels", "istio=egressgateway,app=istio-egressgateway"])
            .arg("--gateway-bind")
            .arg(own.to_string())
            .args(extra.iter().copied())
            .start()
            .await;
        Proxy {
            ip: own,
            addr: SocketAddr::new(ip(own), port),
            admin: inner.admin,
            inner,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stat(&self, name: &str) -> u64 {
        let out = curl(&[&format!("http://{}/stats", self.admin)]).await;
        let key = format!("meshentry.{name}: ");
        out.body
            .lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .unwrap_or_else(|| panic!("/stats has no {name}:\n{}", out.body))
            .trim()
            .parse()
            .unwrap()
    }

    /// The `requests` counter of cluster `name` in `/clusters?format=json`.
    async fn cluster_requests(&self, name: &str) -> u64 {
        let out = curl(&[&format!("http://{}/clusters?format=json", self.admin)]).await;
        let json: serde_json::Value = serde_json::from_str(&out.body).unwrap();
        json["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no cluster {name} in {}", out.body))["requests"]
            .as_u64()
            .unwrap()
    }
}

#[derive(Debug)]
struct CurlOut {
    code: i32,
    status: u16,
    body: String,
    headers: String,
}

impl CurlOut {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }
}

const STATUS_MARK: &str = "\n@@meshentry-status@@";

/// Runs curl (never through a proxy from the environment) with `args`.
async fn curl(args: &[&str]) -> CurlOut {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let headers = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = meshentry_testutil::curl_command();
        cmd.args(["-sS", "--max-time", "20", "-D"])
            .arg(headers.path())
            .arg("-w")
            .arg(format!("{STATUS_MARK}%{{http_code}}"))
            .args(&args);
        let out = cmd
            .output()
            .expect("curl is needed for these tests (apt-get install curl)");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = stdout.rsplit_once(STATUS_MARK).unwrap();
        CurlOut {
            code: out.status.code().unwrap_or(-1),
            status: status.trim().parse().unwrap_or(0),
            body: body.to_owned(),
            headers: std::fs::read_to_string(headers.path()).unwrap_or_default(),
        }
    })
    .await
    .unwrap()
}

/// The ServiceEntry a Kubernetes Service would be for the gateway's pods: the gateway host on
/// `port`, its endpoint the gateway proxy's listener address.
fn gateway_service(gw: Ipv4Addr, port: u16, protocol: &str, extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: {port}, name: p{port}, protocol: {protocol}}}]
  resolution: STATIC
  endpoints: [{{address: {gw}}}]
{extra}"
    )
}

/// Seed 06 with an exportTo the istio-system gateway can see (the literal `.` hides it there).
fn httpbin_se_exported() -> String {
    replace(
        &seed("06-serviceentry-external-svc-httpbin.yaml"),
        "exportTo:\n  - \".\"",
        "exportTo:\n  - \".\"\n  - istio-system",
    )
}

/// Seed 08 bound to the Gateway where it lives (item 4's correction).
fn routing_corrected() -> String {
    replace(
        &seed("08-virtualservice-gateway-routing.yaml"),
        "- istio-egressgateway\n",
        "- istio-system/istio-egressgateway\n",
    )
}

fn join(docs: &[String]) -> String {
    docs.join("\n---\n")
}

/// httpbin.com resolving through a fresh TestDns to an HTTP upstream on port 80.
fn httpbin() -> (TestDns, HttpUpstream) {
    let dns = TestDns::start(unique_loopback());
    let at = unique_loopback();
    dns.set("httpbin.com", &[ip(at)], 30);
    (dns, HttpUpstream::start(SocketAddr::new(ip(at), 80), "httpbin"))
}

const GW_CLUSTER: &str = "outbound|80||istio-egressgateway.istio-system.svc.cluster.local";

// ---------------------------------------------------------------------------------------------
// The seed's gateway routing (06, 07, 08), corrected, through two proxies

#[tokio::test]
async fn seed_egress_through_the_gateway_is_counted_on_both_hops() {
    let (dns, up) = httpbin();
    let gw_ip = unique_loopback();
    let yaml = join(&[
        httpbin_se_exported(),
        seed("07-gateway-istio-egressgateway.yaml"),
        routing_corrected(),
        gateway_service(gw_ip, 80, "HTTP", ""),
    ]);
    let gateway = Proxy::gateway(&yaml, &dns, gw_ip, 80, &[]).await;
    let sidecar = Proxy::sidecar(&yaml, &dns, "egress", &[]).await;

    for i in 0..3 {
        let out = curl(&["-x", &sidecar.url(), &format!("http://httpbin.com/get?n={i}")]).await;
        assert_eq!(
            (out.code, out.status),
            (0, 200),
            "{out:?}\n{}",
            gateway.inner.process.output()
        );
        let json = out.json();
        assert_eq!(json["upstream"], "httpbin");
        // The Host is kept across both hops.
        assert_eq!(json["host"], "httpbin.com", "{json}");
    }
    assert_eq!(up.requests(), 3);
    // The sidecar's mesh rule sent them to the gateway service, not straight to httpbin.com.
    assert_eq!(sidecar.cluster_requests(GW_CLUSTER).await, 3);
    assert_eq!(sidecar.cluster_requests("outbound|80||httpbin.com").await, 0);
    // The gateway's rule sent them on to httpbin.com (DNS).
    assert_eq!(gateway.cluster_requests("outbound|80||httpbin.com").await, 3);
    assert_eq!(gateway.stat("http_requests_total").await, 3);
    assert_eq!(sidecar.stat("http_requests_total").await, 3);
    assert_eq!(sidecar.stat("outbound_blocked_total").await, 0);
    // The gateway also answers a client that talks to it directly (a Host it serves).
    let out = curl(&["-H", "Host: httpbin.com", &format!("http://{gw_ip}/direct")]).await;
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(up.requests(), 4);
}

/// Taken literally, seed 08 binds to `egress/istio-egressgateway` (a bare name is the
/// VirtualService's namespace), which is no Gateway: Istio's gateway gets no virtual host for
/// httpbin.com and answers 404, while the sidecar's mesh rule still sends the request there.
#[tokio::test]
async fn the_literal_seed_binds_to_no_gateway_and_the_gateway_answers_404() {
    let (dns, up) = httpbin();
    let gw_ip = unique_loopback();
    let yaml = join(&[
        httpbin_se_exported(),
        seed("07-gateway-istio-egressgateway.yaml"),
        seed("08-virtualservice-gateway-routing.yaml"),
        gateway_service(gw_ip, 80, "HTTP", ""),
    ]);
    let gateway = Proxy::gateway(&yaml, &dns, gw_ip, 80, &[]).await;
    let sidecar = Proxy::sidecar(&yaml, &dns, "egress", &[]).await;
    let out = curl(&["-x", &sidecar.url(), "http://httpbin.com/get"]).await;
    assert_eq!(out.status, 404, "{out:?}");
    assert!(
        out.body
            .contains("no VirtualService bound to it routes host httpbin.com"),
        "{out:?}"
    );
    assert_eq!(up.requests(), 0);
    assert_eq!(sidecar.cluster_requests(GW_CLUSTER).await, 1);
    assert_eq!(gateway.cluster_requests("outbound|80||httpbin.com").await, 0);
}

/// Gateway name corrected but the ServiceEntry left with exportTo `.`: the istio-system gateway
/// does not see httpbin.com, so its route names a missing cluster (503), as in Istio (F4).
#[tokio::test]
async fn a_service_entry_hidden_from_the_gateway_namespace_gives_503() {
    let (dns, up) = httpbin();
    let gw_ip = unique_loopback();
    let yaml = join(&[
        seed("06-serviceentry-external-svc-httpbin.yaml"),
        seed("07-gateway-istio-egressgateway.yaml"),
        routing_corrected(),
        gateway_service(gw_ip, 80, "HTTP", ""),
    ]);
    let _gateway = Proxy::gateway(&yaml, &dns, gw_ip, 80, &[]).await;
    let sidecar = Proxy::sidecar(&yaml, &dns, "egress", &[]).await;
    let out = curl(&["-x", &sidecar.url(), "http://httpbin.com/get"]).await;
    assert_eq!(out.status, 503, "{out:?}");
    assert!(out.body.contains("httpbin.com"), "{out:?}");
    assert_eq!(up.requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// Server hosts, httpsRedirect, and refusing to start

const ROUTE_ANY_HOST: &str = "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: through-gateway, namespace: egress}
spec:
  hosts: [httpbin.com, other.example.com]
  gateways: [istio-system/istio-egressgateway]
  http:
  - route:
    - destination: {host: httpbin.com, port: {number: 80}}
";

fn gateway_yaml(servers: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
{servers}"
    )
}

#[tokio::test]
async fn server_hosts_filter_virtual_hosts_and_https_redirect_answers_301() {
    let (dns, up) = httpbin();
    let gw_ip = unique_loopback();
    let servers = "  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [egress/httpbin.com]
  - port: {number: 8080, name: http-redirect, protocol: HTTP}
    hosts: ['*']
    tls: {httpsRedirect: true}
";
    let yaml = join(&[httpbin_se_exported(), gateway_yaml(servers), ROUTE_ANY_HOST.into()]);
    let gateway = Proxy::gateway(&yaml, &dns, gw_ip, 80, &[]).await;
    let base = format!("http://{gw_ip}");
    let out = curl(&["-H", "Host: httpbin.com", &format!("{base}/ok")]).await;
    assert_eq!(out.status, 200, "{out:?}");
    // The VirtualService names other.example.com, but the server's hosts do not: no vhost.
    let out = curl(&["-H", "Host: other.example.com", &format!("{base}/no")]).await;
    assert_eq!(out.status, 404, "{out:?}");
    let out = curl(&["-H", "Host: unknown.example.com", &format!("{base}/no")]).await;
    assert_eq!(out.status, 404, "{out:?}");
    assert_eq!(up.requests(), 1);
    // httpsRedirect: 301 to https, whatever the host.
    let out = curl(&["-H", "Host: httpbin.com", &format!("http://{gw_ip}:8080/a?b=c")]).await;
    assert_eq!(out.status, 301, "{out:?}");
    assert!(
        out.headers
            .to_ascii_lowercase()
            .contains("location: https://httpbin.com/a?b=c"),
        "{out:?}"
    );
    assert_eq!(up.requests(), 1);
    drop(gateway);
}

#[test]
fn a_gateway_that_does_not_exist_or_select_the_labels_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gw.yaml"), seed("07-gateway-istio-egressgateway.yaml")).unwrap();
    let run = |extra: &[&str]| {
        let own = unique_loopback();
        let out = Command::new(BIN)
            .args([
                "proxy",
                "--config",
                &path(dir.path()),
                "--admin",
                &format!("{own}:15000"),
            ])
            .args(["--gateway-bind", &own.to_string()])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[
        "--gateway",
        "egress/istio-egressgateway",
        "--labels",
        "istio=egressgateway",
    ]);
    assert!(
        err.contains("no such Gateway") && err.contains("istio-system/istio-egressgateway"),
        "{err}"
    );
    let err = run(&[
        "--gateway",
        "istio-system/istio-egressgateway",
        "--labels",
        "istio=ingressgateway",
    ]);
    assert!(
        err.contains("selector does not match") && err.contains("istio=egressgateway"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// TLS on the listening side: SIMPLE, MUTUAL, PASSTHROUGH, ISTIO_MUTUAL

#[tokio::test]
async fn simple_and_mutual_servers_terminate_tls_with_their_files() {
    let (dns, up) = httpbin();
    let gw_ip = unique_loopback();
    let ca = TestCa::new("gateway ca");
    let pem = PemDir::new();
    let ca_file = pem.ca(&ca);
    let server = pem.leaf(&ca.issue(LeafSpec::server(["httpbin.com"])), "server");
    let client = pem.leaf(&ca.issue(LeafSpec::client("spiffe://example.org/client")), "client");
    let (cert, key, cafile) = (path(&server.cert), path(&server.key), path(&ca_file));
    let servers = format!(
        "  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [httpbin.com]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
  - port: {{number: 8443, name: https-mutual, protocol: HTTPS}}
    hosts: [httpbin.com]
    tls: {{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {cafile}}}
"
    );
    let yaml = join(&[httpbin_se_exported(), gateway_yaml(&servers), ROUTE_ANY_HOST.into()]);
    let gateway = Proxy::gateway(&yaml, &dns, gw_ip, 443, &[]).await;
    let resolve = |port: u16| format!("httpbin.com:{port}:{gw_ip}");

    let out = curl(&[
        "--cacert",
        &cafile,
        "--resolve",
        &resolve(443),
        "https://httpbin.com/simple",
    ])
    .await;
    assert_eq!(
        (out.code, out.status),
        (0, 200),
        "{out:?}\n{}",
        gateway.inner.process.output()
    );
    assert_eq!(out.json()["path"], "/simple");
    assert_eq!(out.json()["host"], "httpbin.com");

    // MUTUAL: no client certificate, no handshake.
    let out = curl(&[
        "--cacert",
        &cafile,
        "--resolve",
        &resolve(8443),
        "https://httpbin.com:8443/mutual",
    ])
    .await;
    assert_ne!(out.code, 0, "{out:?}");
    assert_ne!(out.code, 6, "{out:?}");
    let out = curl(&[
        "--cacert",
        &cafile,
        "--cert",
        &path(&client.cert),
        "--key",
        &path(&client.key),
        "--resolve",
        &resolve(8443),
        "https://httpbin.com:8443/mutual",
    ])
    .await;
    assert_eq!((out.code, out.status), (0, 200), "{out:?}");
    assert_eq!(up.requests(), 2);
    assert!(gateway.stat("downstream_tls_errors_total").await >= 1);
}

#[test]
fn credential_name_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let servers = "  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [httpbin.com]
    tls: {mode: SIMPLE, credentialName: httpbin-cert}
";
    std::fs::write(dir.path().join("gw.yaml"), gateway_yaml(servers)).unwrap();
    let own = unique_loopback();
    let out = Command::new(BIN)
        .args([
            "proxy",
            "--config",
            &path(dir.path()),
            "--admin",
            &format!("{own}:15000"),
        ])
        .args([
            "--gateway",
            "istio-system/istio-egressgateway",
            "--labels",
            "istio=egressgateway",
        ])
        .args(["--gateway-bind", &own.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("credentialName") && err.contains("serverCertificate"),
        "{err}"
    );
}

#[tokio::test]
async fn passthrough_routes_by_sni_with_a_tls_rule() {
    let dns = TestDns::start(unique_loopback());
    let gw_ip = unique_loopback();
    let ca = TestCa::new("passthrough ca");
    let pem = PemDir::new();
    let ca_file = path(&pem.ca(&ca));
    let at = unique_loopback();
    dns.set("secure.example.com", &[ip(at)], 30);
    let up = TlsUpstream::start(
        SocketAddr::new(ip(at), 443),
        "secure",
        server_config(&ca.issue(LeafSpec::server(["secure.example.com"])), None),
    );
    let servers = "  - port: {number: 443, name: tls, protocol: TLS}
    hosts: [secure.example.com]
    tls: {mode: PASSTHROUGH}
";
    let se = "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: secure, namespace: istio-system}
spec:
  hosts: [secure.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
";
    let vs = "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: secure, namespace: istio-system}
spec:
  hosts: [secure.example.com]
  gateways: [istio-egressgateway]
  tls:
  - match: [{port: 443, sniHosts: [secure.example.com]}]
    route:
    - destination: {host: secure.example.com, port: {number: 443}}
";
    let yaml = join(&[se.into(), gateway_yaml(servers), vs.into()]);
    let gateway = Proxy::gateway(&yaml, &dns, gw_ip, 443, &[]).await;
    let out = curl(&[
        "--cacert",
        &ca_file,
        "--resolve",
        &format!("secure.example.com:443:{gw_ip}"),
        "https://secure.example.com/pass",
    ])
    .await;
    assert_eq!(
        (out.code, out.status),
        (0, 200),
        "{out:?}\n{}",
        gateway.inner.process.output()
    );
    assert_eq!(out.json()["tls"]["sni"], "secure.example.com");
    assert_eq!(up.last_sni().as_deref(), Some("secure.example.com"));
    // Another SNI is not among the server's hosts: the connection is closed.
    dns.set("other.example.com", &[ip(at)], 30);
    let out = curl(&[
        "--cacert",
        &ca_file,
        "--resolve",
        &format!("other.example.com:443:{gw_ip}"),
        "https://other.example.com/no",
    ])
    .await;
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(up.requests(), 1);
    assert_eq!(gateway.stat("tunnels_total").await, 1);
    // The relayed connection is counted on the cluster the tls rule picked.
    assert_eq!(gateway.cluster_requests("outbound|443||secure.example.com").await, 1);
}

// ---------------------------------------------------------------------------------------------
// The seed's TLS variant (F4): sidecar -> gateway over ISTIO_MUTUAL, with `meshentry ca`

fn meshentry(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "meshentry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn issue(ca: &Path, dir: &Path, ns: &str, sa: &str) -> PathBuf {
    let out = dir.join(sa);
    meshentry(&[
        "ca",
        "issue",
        "--dir",
        &path(ca),
        "--namespace",
        ns,
        "--service-account",
        sa,
        "--out",
        &path(&out),
    ]);
    out
}

fn identity_flags(dir: &Path) -> Vec<String> {
    vec![
        "--cert".into(),
        path(&dir.join("cert-chain.pem")),
        "--key".into(),
        path(&dir.join("key.pem")),
        "--ca".into(),
        path(&dir.join("root-cert.pem")),
    ]
}

#[tokio::test]
async fn istio_mutual_between_sidecar_and_gateway() {
    let (dns, up) = httpbin();
    let gw_ip = unique_loopback();
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    meshentry(&["ca", "init", "--dir", &path(&ca)]);
    let sleep = issue(&ca, tmp.path(), "egress", "sleep");
    let gw_id = issue(&ca, tmp.path(), "istio-system", "istio-egressgateway-service-account");
    let gw_spiffe = "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account";
    let servers = "  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [httpbin.com]
    tls: {mode: ISTIO_MUTUAL}
";
    let dr = "apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: egressgateway-for-httpbin, namespace: egress}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL, sni: httpbin.com}
";
    let vs = "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: gateway-routing, namespace: egress}
spec:
  hosts: [httpbin.com]
  gateways: [mesh, istio-system/istio-egressgateway]
  http:
  - match: [{port: 80, gateways: [mesh]}]
    route:
    - destination: {host: istio-egressgateway.istio-system.svc.cluster.local, port: {number: 443}}
  - match: [{port: 443, gateways: [istio-system/istio-egressgateway]}]
    route:
    - destination: {host: httpbin.com, port: {number: 80}}
";
    let yaml = join(&[
        httpbin_se_exported(),
        gateway_yaml(servers),
        vs.into(),
        dr.into(),
        gateway_service(gw_ip, 443, "HTTPS", &format!("  subjectAltNames: [{gw_spiffe}]\n")),
    ]);
    let gw_flags = identity_flags(&gw_id);
    let gw_flags: Vec<&str> = gw_flags.iter().map(String::as_str).collect();
    let gateway = Proxy::gateway(&yaml, &dns, gw_ip, 443, &gw_flags).await;
    let sc_flags = identity_flags(&sleep);
    let sc_flags: Vec<&str> = sc_flags.iter().map(String::as_str).collect();
    let sidecar = Proxy::sidecar(&yaml, &dns, "egress", &sc_flags).await;

    let out = curl(&["-x", &sidecar.url(), "http://httpbin.com/mtls"]).await;
    assert_eq!(
        (out.code, out.status),
        (0, 200),
        "{out:?}\nsidecar: {}\ngateway: {}",
        sidecar.inner.process.output(),
        gateway.inner.process.output()
    );
    assert_eq!(out.json()["host"], "httpbin.com");
    assert_eq!(up.requests(), 1);
    assert_eq!(
        sidecar
            .cluster_requests("outbound|443||istio-egressgateway.istio-system.svc.cluster.local")
            .await,
        1
    );
    assert_eq!(gateway.cluster_requests("outbound|80||httpbin.com").await, 1);

    // A client without a mesh certificate is refused by the gateway.
    let out = curl(&[
        "-k",
        "--resolve",
        &format!("httpbin.com:443:{gw_ip}"),
        "https://httpbin.com/no-cert",
    ])
    .await;
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(up.requests(), 1);
    let _ = (gateway.ip, sidecar.ip);
}

// ---------------------------------------------------------------------------------------------
// Gateway certificate rotation: the files change, the configuration does not

/// Replaces `dest` as cert managers do: the new bytes go to a temporary file in the same
/// directory, which is then renamed over `dest` (a reader never sees half a file).
fn write_atomically(dest: &Path, contents: &str) {
    let tmp = dest.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// A TLS handshake with the gateway at `addr` as `httpbin.com`, trusting `ca` and presenting
/// `client` if given (a fresh client configuration each time, so nothing is resumed).
async fn tls_connect(
    addr: SocketAddr,
    ca: &TestCa,
    client: Option<&Leaf>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(client_config(ca, client));
    let name = rustls::pki_types::ServerName::try_from("httpbin.com").unwrap();
    connector.connect(name, tcp).await
}

/// The certificate the gateway at `addr` presents to a new handshake.
async fn presented(addr: SocketAddr, ca: &TestCa) -> CertificateDer<'static> {
    let tls = tls_connect(addr, ca, None).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

/// An HTTP/1.1 client on one TLS connection: requests sent later reuse the same connection.
async fn http1_over(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn get(
    send: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    path: &str,
) -> u16 {
    let req = http::Request::get(path)
        .header("host", "httpbin.com")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
    status
}

/// How long a rotation may take to be seen with `--cert-check-interval 100ms`: a few intervals,
/// with room for a loaded test machine.
const ROTATION_DEADLINE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn rotated_server_certificates_are_used_by_new_handshakes_without_a_config_change() {
    let (dns, up) = httpbin();
    let gw_ip = unique_loopback();
    let ca = TestCa::new("rotation ca");
    let pem = PemDir::new();
    let a = ca.issue(LeafSpec::server(["httpbin.com"]));
    let b = ca.issue(LeafSpec::server(["httpbin.com"]));
    let files = pem.leaf(&a, "server");
    let (cert, key) = (path(&files.cert), path(&files.key));
    let servers = format!(
        "  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [httpbin.com]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
"
    );
    let yaml = join(&[httpbin_se_exported(), gateway_yaml(&servers), ROUTE_ANY_HOST.into()]);
    let gateway = Proxy::gateway(&yaml, &dns, gw_ip, 443, &["--cert-check-interval", "100ms"]).await;
    let addr = SocketAddr::new(ip(gw_ip), 443);
    assert_eq!(
        presented(addr, &ca).await,
        a.cert_der,
        "{}",
        gateway.inner.process.output()
    );

    // A connection opened before the rotation, with a request done on it.
    let mut before = http1_over(tls_connect(addr, &ca, None).await.unwrap()).await;
    assert_eq!(get(&mut before, "/before").await, 200);

    write_atomically(&files.cert, &b.cert_pem);
    write_atomically(&files.key, &b.key_pem);
    // A new handshake gets certificate B once the files are rotated.
    meshentry_testutil::eventually(ROTATION_DEADLINE, || async { presented(addr, &ca).await == b.cert_der }).await;
    assert!(
        gateway
            .inner
            .process
            .output()
            .contains("gateway TLS certificates reloaded"),
        "{}",
        gateway.inner.process.output()
    );
    // The connection from before carries on, on its own handshake.
    assert_eq!(get(&mut before, "/after").await, 200);
    assert_eq!(up.requests(), 2);
    // curl, as users do, sees B too.
    let out = curl(&[
        "--cacert",
        &path(&pem.ca(&ca)),
        "--resolve",
        &format!("httpbin.com:443:{gw_ip}"),
        "https://httpbin.com/curl",
    ])
    .await;
    assert_eq!((out.code, out.status), (0, 200), "{out:?}");

    // A broken key: logged, and B stays in force. (The certificate and key are renamed one at
    // a time, so a check between the two may already have logged a mismatch; count from here.)
    const NOT_RELOADED: &str = "gateway TLS certificates not reloaded";
    let errors = || gateway.inner.process.output().matches(NOT_RELOADED).count();
    let errors_before = errors();
    write_atomically(
        &files.key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    );
    meshentry_testutil::eventually(ROTATION_DEADLINE, || async { errors() > errors_before }).await;
    let log = gateway.inner.process.output();
    let line = log.lines().rfind(|l| l.contains(NOT_RELOADED)).unwrap();
    assert!(
        line.contains("private key") && line.contains(&key) && line.contains("443"),
        "the log should name the file and why: {line}"
    );
    for _ in 0..3 {
        assert_eq!(presented(addr, &ca).await, b.cert_der);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&mut before, "/still").await, 200);
    // Read again only when the files change: one error line, not one per interval (100 ms), so
    // the count stays put over five intervals.
    let settled =
        meshentry_testutil::settled(Duration::from_millis(500), ROTATION_DEADLINE, || async { errors() }).await;
    assert_eq!(settled, errors_before + 1, "{}", gateway.inner.process.output());
}

#[tokio::test]
async fn rotating_ca_certificates_changes_which_client_certificates_a_mutual_server_accepts() {
    let (dns, up) = httpbin();
    let gw_ip = unique_loopback();
    let server_ca = TestCa::new("server ca");
    let old_clients = TestCa::new("old client ca");
    let new_clients = TestCa::new("new client ca");
    let pem = PemDir::new();
    let server = pem.leaf(&server_ca.issue(LeafSpec::server(["httpbin.com"])), "server");
    let client_ca = pem.write("clients.crt", old_clients.cert_pem());
    let old_client = pem.leaf(&old_clients.issue(LeafSpec::client("spiffe://example.org/old")), "old");
    let new_client = pem.leaf(&new_clients.issue(LeafSpec::client("spiffe://example.org/new")), "new");
    let servers = format!(
        "  - port: {{number: 8443, name: https-mutual, protocol: HTTPS}}
    hosts: [httpbin.com]
    tls: {{mode: MUTUAL, serverCertificate: {}, privateKey: {}, caCertificates: {}}}
",
        path(&server.cert),
        path(&server.key),
        path(&client_ca)
    );
    let yaml = join(&[httpbin_se_exported(), gateway_yaml(&servers), ROUTE_ANY_HOST.into()]);
    let gateway = Proxy::gateway(&yaml, &dns, gw_ip, 8443, &["--cert-check-interval", "100ms"]).await;
    let server_ca_file = path(&pem.ca(&server_ca));
    let resolve = format!("httpbin.com:8443:{gw_ip}");
    let with = |client: &LeafPaths| {
        let (cert, key) = (path(&client.cert), path(&client.key));
        let (ca, resolve) = (server_ca_file.clone(), resolve.clone());
        async move {
            curl(&[
                "--cacert",
                &ca,
                "--cert",
                &cert,
                "--key",
                &key,
                "--resolve",
                &resolve,
                "https://httpbin.com:8443/mutual",
            ])
            .await
        }
    };
    let out = with(&old_client).await;
    assert_eq!(
        (out.code, out.status),
        (0, 200),
        "{out:?}\n{}",
        gateway.inner.process.output()
    );
    let out = with(&new_client).await;
    assert_ne!(out.code, 0, "a client of a CA not yet trusted got in: {out:?}");

    write_atomically(&client_ca, new_clients.cert_pem());
    meshentry_testutil::eventually(ROTATION_DEADLINE, || async { with(&new_client).await.status == 200 }).await;
    let out = with(&old_client).await;
    assert_ne!(out.code, 0, "a client of the CA rotated out still got in: {out:?}");
    assert_eq!(up.requests(), 2);
}

// ---------------------------------------------------------------------------------------------
// Servers sharing a port (issue 14, item 1): each server has its own TLS, chosen by SNI as
// Envoy chooses a filter chain, and its own routes: a request on a connection one server
// terminated reaches only that server's hosts.

/// What a client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Got {
    /// No TLS session: the gateway closed the connection (no server for the SNI) or the
    /// server refused the client certificate (or its absence).
    Refused,
    /// 200 from the upstream.
    Ok,
    /// 404 with the response flag NR: the server that terminated the TLS does not route the
    /// request's host.
    NotFound,
    /// curl refused the gateway's certificate: it was not the certificate of the server the
    /// SNI names. No table cell expects it.
    WrongCertificate,
}

use Got::{NotFound as NF, Ok as OK, Refused as X};

/// The client certificate curl presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientCert {
    None,
    Ca1,
    Ca2,
}

/// The SNIs of the table: a server's name, none at all (the URL is the gateway's IP) and a
/// name no server lists.
const SNI_NAMES: [&str; 5] = ["public", "admin", "partner", "none", "unknown"];
/// The `Host` headers of the table's columns.
const HOST_NAMES: [&str; 4] = ["public", "admin", "partner", "other"];

/// Port 443 with three servers and no default one:
///   public.gw.test   SIMPLE
///   admin.gw.test    MUTUAL, clients of CA1
///   partner.gw.test  MUTUAL, clients of CA2
/// `other.gw.test` has a VirtualService (in namespace public) but no server lists it.
/// Envoy's filter chain match: the SNI picks the server (exact name, then the longest
/// wildcard, then a server without names); no SNI or an unknown one finds none and the
/// connection is closed. The server's route configuration has only its own hosts: 404 NR.
#[rustfmt::skip]
const SHARED_PORT: [(&str, ClientCert, [Got; 4]); 15] = [
    // SNI        client cert         Host: public admin partner other
    ("public",  ClientCert::None,  [OK, NF, NF, NF]),
    ("public",  ClientCert::Ca1,   [OK, NF, NF, NF]),
    ("public",  ClientCert::Ca2,   [OK, NF, NF, NF]),
    ("admin",   ClientCert::None,  [X,  X,  X,  X ]),
    ("admin",   ClientCert::Ca1,   [NF, OK, NF, NF]),
    ("admin",   ClientCert::Ca2,   [X,  X,  X,  X ]),
    ("partner", ClientCert::None,  [X,  X,  X,  X ]),
    ("partner", ClientCert::Ca1,   [X,  X,  X,  X ]),
    ("partner", ClientCert::Ca2,   [NF, NF, OK, NF]),
    ("none",    ClientCert::None,  [X,  X,  X,  X ]),
    ("none",    ClientCert::Ca1,   [X,  X,  X,  X ]),
    ("none",    ClientCert::Ca2,   [X,  X,  X,  X ]),
    ("unknown", ClientCert::None,  [X,  X,  X,  X ]),
    ("unknown", ClientCert::Ca1,   [X,  X,  X,  X ]),
    ("unknown", ClientCert::Ca2,   [X,  X,  X,  X ]),
];

/// The same port with a fourth server, SIMPLE, `hosts: [public/*]`: a host of `*` gives its
/// filter chain no server names (Istio), so it takes the connections without an SNI or with
/// one no other server lists, and it routes only namespace public's VirtualServices
/// (public.gw.test and other.gw.test), never admin's or partner's.
#[rustfmt::skip]
const SHARED_PORT_WITH_DEFAULT: [(&str, ClientCert, [Got; 4]); 15] = [
    // SNI        client cert         Host: public admin partner other
    ("public",  ClientCert::None,  [OK, NF, NF, NF]),
    ("public",  ClientCert::Ca1,   [OK, NF, NF, NF]),
    ("public",  ClientCert::Ca2,   [OK, NF, NF, NF]),
    ("admin",   ClientCert::None,  [X,  X,  X,  X ]),
    ("admin",   ClientCert::Ca1,   [NF, OK, NF, NF]),
    ("admin",   ClientCert::Ca2,   [X,  X,  X,  X ]),
    ("partner", ClientCert::None,  [X,  X,  X,  X ]),
    ("partner", ClientCert::Ca1,   [X,  X,  X,  X ]),
    ("partner", ClientCert::Ca2,   [NF, NF, OK, NF]),
    ("none",    ClientCert::None,  [OK, NF, NF, OK]),
    ("none",    ClientCert::Ca1,   [OK, NF, NF, OK]),
    ("none",    ClientCert::Ca2,   [OK, NF, NF, OK]),
    ("unknown", ClientCert::None,  [OK, NF, NF, OK]),
    ("unknown", ClientCert::Ca1,   [OK, NF, NF, OK]),
    ("unknown", ClientCert::Ca2,   [OK, NF, NF, OK]),
];

/// Certificates for the shared-port tests, all made for this run.
struct SharedPortPki {
    /// Holds the files while the gateway runs.
    _pem: PemDir,
    ca: TestCa,
    server_ca: PathBuf,
    public: LeafPaths,
    admin: LeafPaths,
    partner: LeafPaths,
    default: LeafPaths,
    ca1: PathBuf,
    ca2: PathBuf,
    client1: LeafPaths,
    client2: LeafPaths,
}

impl SharedPortPki {
    fn new(gw_ip: Ipv4Addr) -> SharedPortPki {
        let server_ca = TestCa::new("gateway server ca");
        let ca1 = TestCa::new("client ca 1");
        let ca2 = TestCa::new("client ca 2");
        let pem = PemDir::new();
        let server = |name: &str| pem.leaf(&server_ca.issue(LeafSpec::server([format!("{name}.gw.test")])), name);
        let default = LeafSpec {
            dns_names: vec!["*.gw.test".into()],
            ip_sans: vec![ip(gw_ip)],
            ..LeafSpec::default()
        };
        SharedPortPki {
            server_ca: pem.ca(&server_ca),
            public: server("public"),
            admin: server("admin"),
            partner: server("partner"),
            default: pem.leaf(&server_ca.issue(default), "default"),
            ca1: pem.ca(&ca1),
            ca2: pem.ca(&ca2),
            client1: pem.leaf(
                &ca1.issue(LeafSpec::client("spiffe://example.org/ns/admin/sa/ops")),
                "client1",
            ),
            client2: pem.leaf(
                &ca2.issue(LeafSpec::client("spiffe://example.org/ns/partner/sa/app")),
                "client2",
            ),
            _pem: pem,
            ca: server_ca,
        }
    }

    fn client(&self, cert: ClientCert) -> Option<&LeafPaths> {
        match cert {
            ClientCert::None => None,
            ClientCert::Ca1 => Some(&self.client1),
            ClientCert::Ca2 => Some(&self.client2),
        }
    }
}

fn route_to_httpbin(name: &str, namespace: &str, hosts: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{hosts}]
  gateways: [istio-system/istio-egressgateway]
  http:
  - route:
    - destination: {{host: httpbin.com, port: {{number: 80}}}}
"
    )
}

const HTTPBIN_SE: &str = "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: httpbin, namespace: istio-system}
spec:
  hosts: [httpbin.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
";

fn shared_port_yaml(pki: &SharedPortPki, with_default: bool) -> String {
    let tls = |leaf: &LeafPaths, ca: Option<&Path>| match ca {
        Some(ca) => format!(
            "{{mode: MUTUAL, serverCertificate: {}, privateKey: {}, caCertificates: {}}}",
            path(&leaf.cert),
            path(&leaf.key),
            path(ca)
        ),
        None => format!(
            "{{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}",
            path(&leaf.cert),
            path(&leaf.key)
        ),
    };
    let mut servers = format!(
        "  - port: {{number: 443, name: https-public, protocol: HTTPS}}
    hosts: [public/public.gw.test]
    tls: {}
  - port: {{number: 443, name: https-admin, protocol: HTTPS}}
    hosts: [admin/admin.gw.test]
    tls: {}
  - port: {{number: 443, name: https-partner, protocol: HTTPS}}
    hosts: [partner/partner.gw.test]
    tls: {}
",
        tls(&pki.public, None),
        tls(&pki.admin, Some(&pki.ca1)),
        tls(&pki.partner, Some(&pki.ca2)),
    );
    if with_default {
        servers.push_str(&format!(
            "  - port: {{number: 443, name: https-default, protocol: HTTPS}}
    hosts: ['public/*']
    tls: {}
",
            tls(&pki.default, None)
        ));
    }
    join(&[
        HTTPBIN_SE.into(),
        gateway_yaml(&servers),
        route_to_httpbin("public", "public", "public.gw.test, other.gw.test"),
        route_to_httpbin("admin", "admin", "admin.gw.test"),
        route_to_httpbin("partner", "partner", "partner.gw.test"),
    ])
}

/// curl to the gateway on `gw_ip:443` with SNI `sni` (a [`SNI_NAMES`] entry), `Host: host`
/// and `cert`, verifying the gateway's certificate against the server CA; `extra` goes
/// before the URL.
async fn shared_port_curl(
    pki: &SharedPortPki,
    gw_ip: Ipv4Addr,
    sni: &str,
    host: &str,
    cert: ClientCert,
    extra: &[&str],
) -> CurlOut {
    let server_ca = path(&pki.server_ca);
    let mut args: Vec<String> = vec![
        "--cacert".into(),
        server_ca,
        "-H".into(),
        format!("Host: {host}.gw.test"),
    ];
    if let Some(client) = pki.client(cert) {
        args.extend(["--cert".into(), path(&client.cert), "--key".into(), path(&client.key)]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let url = if sni == "none" {
        // curl sends no SNI for an IP address.
        format!("https://{gw_ip}/{sni}/{host}")
    } else {
        args.extend(["--resolve".into(), format!("{sni}.gw.test:443:{gw_ip}")]);
        format!("https://{sni}.gw.test/{sni}/{host}")
    };
    args.push(url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&args).await
}

/// The outcome of one curl run; anything but a TLS refusal, a 200 or a 404 NR is a test bug.
fn got(out: &CurlOut) -> Got {
    match (out.code, out.status) {
        (0, 200) => OK,
        (0, 404) => {
            assert!(
                out.headers
                    .to_ascii_lowercase()
                    .contains("x-meshentry-response-flags: nr"),
                "a 404 without the flag NR: {out:?}"
            );
            NF
        }
        // 60: the certificate does not verify for the SNI's name.
        (60, 0) => Got::WrongCertificate,
        // 6, 7, 28: no name, no connection, a timeout: the test is broken, not the gateway.
        (code, 0) if code != 0 && ![6, 7, 28].contains(&code) => X,
        _ => panic!("unexpected curl outcome: {out:?}"),
    }
}

/// Runs every row of `table` against a gateway started with `with_default` and asserts each
/// cell exactly.
async fn shared_port_table(table: &[(&str, ClientCert, [Got; 4])], with_default: bool) {
    let (dns, up) = httpbin();
    let gw_ip = unique_loopback();
    let pki = SharedPortPki::new(gw_ip);
    let gateway = Proxy::gateway(&shared_port_yaml(&pki, with_default), &dns, gw_ip, 443, &[]).await;
    let mut wrong = Vec::new();
    let mut oks = 0;
    for (sni, cert, row) in table {
        assert!(SNI_NAMES.contains(sni));
        for (host, want) in HOST_NAMES.iter().zip(row) {
            let out = shared_port_curl(&pki, gw_ip, sni, host, *cert, &[]).await;
            let have = got(&out);
            if have != *want {
                wrong.push(format!(
                    "SNI {sni:8} cert {cert:?}\tHost {host:8} want {want:?}, got {have:?} (curl {} {})",
                    out.code, out.status
                ));
            }
            oks += usize::from(*want == OK);
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cells differ:\n{}\n\ngateway log:\n{}",
        wrong.len(),
        table.len() * HOST_NAMES.len(),
        wrong.join("\n"),
        gateway.inner.process.output()
    );
    // Only the 200s reached the upstream.
    assert_eq!(up.requests(), oks);
    // A connection no server takes is closed and counted, as Envoy counts a connection that
    // matches no filter chain.
    if !with_default {
        assert_eq!(gateway.stat("gateway_no_server_total").await, 6 * 4);
    }
    assert!(gateway.stat("downstream_tls_errors_total").await >= 4 * 4);
}

#[tokio::test]
async fn servers_sharing_a_port_each_terminate_with_their_own_tls_and_route_only_their_hosts() {
    shared_port_table(&SHARED_PORT, false).await;
}

#[tokio::test]
async fn a_default_server_on_a_shared_port_takes_no_sni_and_unknown_snis_but_only_its_hosts() {
    shared_port_table(&SHARED_PORT_WITH_DEFAULT, true).await;
}

#[tokio::test]
async fn an_absolute_form_request_cannot_reach_another_servers_host() {
    let (dns, up) = httpbin();
    let gw_ip = unique_loopback();
    let pki = SharedPortPki::new(gw_ip);
    let gateway = Proxy::gateway(&shared_port_yaml(&pki, false), &dns, gw_ip, 443, &[]).await;
    // The TLS is public's and so is the Host header; the request target names admin.
    for target in [
        "https://admin.gw.test/abs",
        "http://admin.gw.test/abs",
        "https://admin.gw.test:443/abs",
    ] {
        let out = shared_port_curl(
            &pki,
            gw_ip,
            "public",
            "public",
            ClientCert::None,
            &["--request-target", target],
        )
        .await;
        assert_eq!(got(&out), NF, "{target}: {out:?}\n{}", gateway.inner.process.output());
    }
    // The same with admin's TLS and client certificate reaches admin.
    let out = shared_port_curl(
        &pki,
        gw_ip,
        "admin",
        "admin",
        ClientCert::Ca1,
        &["--request-target", "https://admin.gw.test/abs"],
    )
    .await;
    assert_eq!(got(&out), OK, "{out:?}");
    // And an absolute-form request for public on admin's TLS does not reach public.
    let out = shared_port_curl(
        &pki,
        gw_ip,
        "admin",
        "admin",
        ClientCert::Ca1,
        &["--request-target", "https://public.gw.test/abs"],
    )
    .await;
    assert_eq!(got(&out), NF, "{out:?}");
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn every_request_on_a_kept_alive_connection_is_bound_to_the_server_that_terminated_it() {
    let (dns, up) = httpbin();
    let gw_ip = unique_loopback();
    let pki = SharedPortPki::new(gw_ip);
    let gateway = Proxy::gateway(&shared_port_yaml(&pki, false), &dns, gw_ip, 443, &[]).await;
    let tcp = tokio::net::TcpStream::connect((gw_ip, 443)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(&pki.ca, None));
    let name = rustls::pki_types::ServerName::try_from("public.gw.test").unwrap();
    let mut send = http1_over(connector.connect(name, tcp).await.unwrap()).await;
    let mut status = async |host: &str| {
        let req = http::Request::get("/keep-alive")
            .header("host", host)
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
        status
    };
    // One connection, public's TLS: admin's and partner's hosts are not found on it, however
    // many requests come first or after.
    assert_eq!(
        status("public.gw.test").await,
        200,
        "{}",
        gateway.inner.process.output()
    );
    assert_eq!(status("admin.gw.test").await, 404);
    assert_eq!(status("public.gw.test").await, 200);
    assert_eq!(status("partner.gw.test:443").await, 404);
    assert_eq!(status("ADMIN.gw.test.").await, 404);
    assert_eq!(up.requests(), 2);
}

#[tokio::test]
async fn each_server_on_a_shared_port_presents_its_own_certificate_and_rotates_alone() {
    let (dns, up) = httpbin();
    let gw_ip = unique_loopback();
    let pki = SharedPortPki::new(gw_ip);
    let gateway = Proxy::gateway(
        &shared_port_yaml(&pki, false),
        &dns,
        gw_ip,
        443,
        &["--cert-check-interval", "100ms"],
    )
    .await;
    // openssl s_client, as an operator checks it: each SNI gets its server's certificate.
    let subject = |sni: &str| {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("{gw_ip}:443"), "-servername", sni])
            .args(["-CAfile", &path(&pki.server_ca), "-verify_return_error", "-brief"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl is needed for these tests");
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
    };
    let seen = subject("public.gw.test");
    assert!(
        seen.contains("CN = public.gw.test") || seen.contains("CN=public.gw.test"),
        "{seen}"
    );
    // admin asks for a client certificate; the handshake (TLS 1.3) still shows its certificate.
    let seen = subject("admin.gw.test");
    assert!(seen.contains("admin.gw.test"), "{seen}");
    assert!(!seen.contains("public.gw.test"), "{seen}");

    // admin's client CA rotates to CA2: admin takes CA2 clients now, partner still takes them,
    // and public is untouched.
    write_atomically(&pki.ca1, &std::fs::read_to_string(&pki.ca2).unwrap());
    meshentry_testutil::eventually(ROTATION_DEADLINE, || async {
        got(&shared_port_curl(&pki, gw_ip, "admin", "admin", ClientCert::Ca2, &[]).await) == OK
    })
    .await;
    assert_eq!(
        got(&shared_port_curl(&pki, gw_ip, "admin", "admin", ClientCert::Ca1, &[]).await),
        X
    );
    assert_eq!(
        got(&shared_port_curl(&pki, gw_ip, "partner", "partner", ClientCert::Ca2, &[]).await),
        OK
    );
    assert_eq!(
        got(&shared_port_curl(&pki, gw_ip, "public", "public", ClientCert::None, &[]).await),
        OK
    );
    assert!(up.requests() >= 3);
    assert!(
        gateway
            .inner
            .process
            .output()
            .contains("gateway TLS certificates reloaded"),
        "{}",
        gateway.inner.process.output()
    );
}

// ---------------------------------------------------------------------------------------------
// AUTO_PASSTHROUGH (issue 14, item 2): the SNI's service must be among the server's hosts

/// A mesh-internal TLS service `hosts` on port 443 whose endpoint is `at:443`.
fn tls_service(name: &str, hosts: &str, at: Ipv4Addr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: {name}, namespace: istio-system}}
spec:
  hosts: [{hosts}]
  location: MESH_INTERNAL
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: {at}}}]
"
    )
}

/// `openssl s_client -servername sni` to `addr`, sending one HTTP/1.1 request; stdout (the
/// response, if any) and whether the command succeeded.
async fn s_client_get(addr: SocketAddr, sni: &str) -> (bool, String) {
    let (addr, sni) = (addr.to_string(), sni.to_string());
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", &addr, "-servername", &sni])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl is needed for these tests");
        let mut stdin = child.stdin.take().unwrap();
        // A closed connection makes this write fail; the exit status says what happened.
        let _ = stdin.write_all(b"GET /auto HTTP/1.1\r\nHost: auto.test\r\nConnection: close\r\n\r\n");
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        (
            out.status.success() && !out.stdout.is_empty(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn auto_passthrough_relays_only_snis_whose_service_is_among_the_server_hosts() {
    let dns = TestDns::start(unique_loopback());
    let gw_ip = unique_loopback();
    let ca = TestCa::new("auto passthrough ca");
    let (api_ip, secret_ip) = (unique_loopback(), unique_loopback());
    let api = TlsUpstream::start(
        SocketAddr::new(ip(api_ip), 443),
        "api",
        server_config(&ca.issue(LeafSpec::server(["api.allowed.gw"])), None),
    );
    let secret = TlsUpstream::start(
        SocketAddr::new(ip(secret_ip), 443),
        "secret",
        server_config(&ca.issue(LeafSpec::server(["secret.internal"])), None),
    );
    let servers = "  - port: {number: 443, name: tls-auto, protocol: TLS}
    hosts: ['*.allowed.gw']
    tls: {mode: AUTO_PASSTHROUGH}
";
    let yaml = join(&[
        gateway_yaml(servers),
        tls_service("api", "api.allowed.gw", api_ip),
        // allowed.gw itself is not under *.allowed.gw.
        tls_service("secret", "secret.internal, allowed.gw", secret_ip),
    ]);
    let gateway = Proxy::gateway(&yaml, &dns, gw_ip, 443, &[]).await;
    let addr = SocketAddr::new(ip(gw_ip), 443);

    let (ok, out) = s_client_get(addr, "outbound_.443_._.api.allowed.gw").await;
    assert!(ok && out.contains("200"), "{out}\n{}", gateway.inner.process.output());
    assert_eq!(api.requests(), 1);
    assert_eq!(api.last_sni().as_deref(), Some("outbound_.443_._.api.allowed.gw"));
    assert_eq!(gateway.cluster_requests("outbound|443||api.allowed.gw").await, 1);

    for sni in ["outbound_.443_._.secret.internal", "outbound_.443_._.allowed.gw"] {
        let (ok, out) = s_client_get(addr, sni).await;
        assert!(!ok, "{sni} was relayed: {out}");
    }
    assert_eq!(secret.connections(), 0, "{}", gateway.inner.process.output());
    assert_eq!(gateway.stat("gateway_no_server_total").await, 2);
    assert_eq!(api.requests(), 1);
}
