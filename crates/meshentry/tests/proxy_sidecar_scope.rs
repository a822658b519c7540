//! A Sidecar's egress hosts scope what a proxy imports (C9), end to end: the real `meshentry`
//! binary, real curl (through `-x`, through `HTTP_PROXY`, and captured in a network namespace
//! with no proxy settings at all), upstreams on 127.x addresses, and a DNS server of each
//! test's own.
//!
//! What Istio does with the same configuration (`pilot/pkg/model/sidecar.go`): a host the
//! Sidecar's egress hosts do not import is not in the proxy's registry, so REGISTRY_ONLY
//! refuses it (502, BlackHoleCluster) and ALLOW_ANY passes it through to where the
//! application was going; a `workloadSelector` Sidecar replaces its namespace's for the
//! workloads it selects; an egress listener with a `port` decides alone what that port reaches.
//!
//! The capture test needs root, iproute2, iptables and setpriv (scripts/test installs them).

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Output};
use std::time::Duration;

use meshentry_testutil::{HttpUpstream, Netns, PROXY_UID, Proxy, TcpEcho, TestDns, unique_loopback};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn v4(ip: Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

/// Upstreams for one test: `mine` (namespace default, ports 80 and 8080), `theirs`
/// (namespace other, port 80 and 8080), `egress` (istio-system, resolution DNS through the
/// test's DNS server), and `outside`, where a passed-through request for `theirs` lands.
struct Mesh {
    mine: HttpUpstream,
    mine_alt: HttpUpstream,
    theirs: HttpUpstream,
    theirs_alt: HttpUpstream,
    egress: HttpUpstream,
    outside: HttpUpstream,
    dns: TestDns,
    yaml: String,
}

impl Mesh {
    fn start() -> Mesh {
        let (mine_ip, theirs_ip, egress_ip, outside_ip) = (
            unique_loopback(),
            unique_loopback(),
            unique_loopback(),
            unique_loopback(),
        );
        let mine = HttpUpstream::start(SocketAddr::new(v4(mine_ip), 80), "mine");
        let mine_alt = HttpUpstream::start(SocketAddr::new(v4(mine_ip), 8080), "mine-alt");
        let theirs = HttpUpstream::start(SocketAddr::new(v4(theirs_ip), 80), "theirs");
        let theirs_alt = HttpUpstream::start(SocketAddr::new(v4(theirs_ip), 8080), "theirs-alt");
        let egress = HttpUpstream::start(SocketAddr::new(v4(egress_ip), 80), "egress");
        let outside = HttpUpstream::start(SocketAddr::new(v4(outside_ip), 80), "outside");
        let dns = TestDns::start(unique_loopback());
        dns.set("egress.example.com", &[v4(egress_ip)], 30);
        // Where the application's own resolution of `theirs` leads: not the ServiceEntry's
        // endpoint, so a passed-through request is told apart from a routed one.
        dns.set("theirs.example.com", &[v4(outside_ip)], 30);
        let yaml = format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: mine, namespace: default}}
spec:
  hosts: [mine.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}, {{number: 8080, name: alt, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {mine_ip}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: theirs, namespace: other}}
spec:
  hosts: [theirs.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}, {{number: 8080, name: alt, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {theirs_ip}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: egress, namespace: istio-system}}
spec:
  hosts: [egress.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
"#
        );
        Mesh {
            mine,
            mine_alt,
            theirs,
            theirs_alt,
            egress,
            outside,
            dns,
            yaml,
        }
    }

    /// The mesh's ServiceEntries and `sidecars`.
    fn config(&self, sidecars: &str) -> String {
        format!("{}---\n{sidecars}", self.yaml)
    }

    /// The explicit proxy on the mesh's ServiceEntries and `sidecars`, resolving through the
    /// mesh's DNS server, with the `extra` flags.
    async fn proxy(&self, sidecars: &str, extra: &[&str]) -> Proxy {
        Proxy::builder(BIN)
            .config(self.config(sidecars))
            .dns(self.dns.addr())
            .args(extra.iter().copied())
            .start()
            .await
    }

    fn requests(&self) -> [usize; 6] {
        [
            self.mine.requests(),
            self.mine_alt.requests(),
            self.theirs.requests(),
            self.theirs_alt.requests(),
            self.egress.requests(),
            self.outside.requests(),
        ]
    }
}

/// The namespace's Sidecar: its own namespace and one host of istio-system, REGISTRY_ONLY;
/// and one for `app: web` importing namespace `other` only.
fn sidecars(mode: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: default}}
spec:
  egress:
  - hosts: ["./*", "istio-system/egress.example.com"]
  outboundTrafficPolicy: {{mode: {mode}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: web, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: web}}}}
  egress:
  - hosts: ["other/*"]
  outboundTrafficPolicy: {{mode: {mode}}}
"#
    )
}

/// What one curl run produced: (status, body).
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    /// The upstream that answered (the test upstreams answer JSON naming themselves).
    fn upstream(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["upstream"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

const STATUS_MARK: &str = "\n@@status@@";

fn reply(out: Output) -> Reply {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = stdout
        .rsplit_once(STATUS_MARK)
        .unwrap_or_else(|| panic!("curl output lacks the status marker: {out:?}"));
    Reply {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
    }
}

/// `curl -x http://PROXY URL`.
async fn curl_x(proxy: SocketAddr, url: &str) -> Reply {
    let mut cmd = meshentry_testutil::curl_command();
    cmd.args(["-sS", "--max-time", "10", "-w"])
        .arg(format!("{STATUS_MARK}%{{http_code}}"))
        .args(["-x", &format!("http://{proxy}"), url]);
    reply(run(cmd).await)
}

/// `HTTP_PROXY=http://PROXY curl URL`: the proxy from the environment, as applications get it.
async fn curl_env(proxy: SocketAddr, url: &str) -> Reply {
    let mut cmd = meshentry_testutil::curl_command();
    cmd.env("http_proxy", format!("http://{proxy}"))
        .env("HTTP_PROXY", format!("http://{proxy}"))
        .args(["-sS", "--max-time", "10", "-w"])
        .arg(format!("{STATUS_MARK}%{{http_code}}"))
        .arg(url);
    reply(run(cmd).await)
}

async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run curl (apt-get install curl; scripts/test does): {e}"))
}

/// Both ways an application uses the explicit proxy, which must agree.
async fn both(proxy: SocketAddr, url: &str) -> Reply {
    let x = curl_x(proxy, url).await;
    let env = curl_env(proxy, url).await;
    assert_eq!(
        (x.status, x.upstream()),
        (env.status, env.upstream()),
        "{url}: -x {x:?}, HTTP_PROXY {env:?}"
    );
    x
}

#[tokio::test]
async fn registry_only_refuses_what_the_sidecar_does_not_import() {
    let mesh = Mesh::start();
    let proxy = mesh.proxy(&sidecars("REGISTRY_ONLY"), &[]).await;

    let r = both(proxy.http(), "http://mine.example.com/").await;
    assert_eq!((r.status, r.upstream().as_str()), (200, "mine"), "{r:?}");
    // `istio-system/egress.example.com` names that one host of another namespace.
    let r = both(proxy.http(), "http://egress.example.com/").await;
    assert_eq!((r.status, r.upstream().as_str()), (200, "egress"), "{r:?}");
    // A ServiceEntry of namespace `other`, exported everywhere, but not imported: Istio's
    // proxy does not have it, and REGISTRY_ONLY refuses it.
    let r = both(proxy.http(), "http://theirs.example.com/").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.body.contains("theirs.example.com:80 is not a service in the registry seen by namespace default through Sidecar default/default's egress hosts")
            && r.body.contains("REGISTRY_ONLY (from Sidecar default/default)"),
        "{r:?}"
    );
    assert_eq!(mesh.requests(), [2, 0, 0, 0, 2, 0], "a refused request reaches nobody");
    // The proxy holds what it imports and nothing else.
    let dump = proxy.config_dump().await;
    let hosts: Vec<&str> = dump["registry"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["egress.example.com", "mine.example.com"], "{dump}");
    let clusters: Vec<&str> = dump["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(!clusters.iter().any(|c| c.contains("theirs")), "{clusters:?}");
    assert_eq!(proxy.stat("outbound_blocked_total").await, 2);
}

#[tokio::test]
async fn allow_any_passes_what_the_sidecar_does_not_import_through() {
    let mesh = Mesh::start();
    let proxy = mesh.proxy(&sidecars("ALLOW_ANY"), &[]).await;

    let r = both(proxy.http(), "http://mine.example.com/").await;
    assert_eq!((r.status, r.upstream().as_str()), (200, "mine"), "{r:?}");
    // Not imported: not the ServiceEntry's endpoint, but where the name resolves (Istio's
    // PassthroughCluster).
    let r = both(proxy.http(), "http://theirs.example.com/").await;
    assert_eq!((r.status, r.upstream().as_str()), (200, "outside"), "{r:?}");
    assert_eq!(mesh.theirs.requests(), 0);
    assert_eq!(proxy.stat("outbound_passthrough_total").await, 2);
}

#[tokio::test]
async fn a_workload_selector_sidecar_replaces_the_namespaces() {
    let mesh = Mesh::start();
    let proxy = mesh
        .proxy(&sidecars("REGISTRY_ONLY"), &["--labels", "app=web,version=v1"])
        .await;

    // default/web (`other/*`) applies, not default/default: the imports are swapped.
    let r = both(proxy.http(), "http://theirs.example.com/").await;
    assert_eq!((r.status, r.upstream().as_str()), (200, "theirs"), "{r:?}");
    for url in ["http://mine.example.com/", "http://egress.example.com/"] {
        let r = both(proxy.http(), url).await;
        assert_eq!(r.status, 502, "{url}: {r:?}");
        assert!(r.body.contains("through Sidecar default/web's egress hosts"), "{r:?}");
    }
    assert_eq!(mesh.requests(), [0, 0, 2, 0, 0, 0]);
}

#[tokio::test]
async fn a_port_egress_listener_decides_its_port_alone() {
    let mesh = Mesh::start();
    // Port 8080 reaches namespace `other` only; every other port, the proxy's own namespace.
    let sidecar = r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress:
  - port: {number: 8080, protocol: HTTP, name: alt}
    hosts: ["other/*"]
  - hosts: ["./*"]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#;
    let proxy = mesh.proxy(sidecar, &[]).await;

    let r = both(proxy.http(), "http://theirs.example.com:8080/").await;
    assert_eq!((r.status, r.upstream().as_str()), (200, "theirs-alt"), "{r:?}");
    let r = both(proxy.http(), "http://mine.example.com/").await;
    assert_eq!((r.status, r.upstream().as_str()), (200, "mine"), "{r:?}");
    // mine.example.com:8080 is imported by the catch-all, but port 8080 is egress[0]'s.
    let r = both(proxy.http(), "http://mine.example.com:8080/").await;
    assert_eq!(r.status, 502, "{r:?}");
    // theirs.example.com:80 is imported on port 8080 only.
    let r = both(proxy.http(), "http://theirs.example.com/").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(mesh.requests(), [2, 0, 0, 2, 0, 0]);
}

// ---------------------------------------------------------------------------------------------
// Transparent capture

/// The outbound listener of the captured proxy (its admin and explicit listeners are on
/// 127.0.0.1 too, which capture leaves alone).
const OUTBOUND_V4: &str = "127.0.0.1:15001";

/// An address in TEST-NET-2 that the application "resolved" a name to; only capture gets a
/// connection to it anywhere.
fn nowhere(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, last)
}

/// curl run as root in the namespace (so it is captured), with no proxy settings.
async fn curl_captured(ns: &Netns, resolve: &str, url: &str) -> Reply {
    let mut cmd = ns.command("curl");
    meshentry_testutil::isolate_curl(&mut cmd);
    cmd.args(["-sS", "--max-time", "10", "-w"])
        .arg(format!("{STATUS_MARK}%{{http_code}}"))
        .args(["--resolve", resolve, url]);
    reply(run(cmd).await)
}

#[test]
fn captured_connections_are_scoped_like_explicit_ones() {
    let ns = Netns::new("me-scope");
    ns.run(&[BIN, "iptables", "install", "--proxy-uid", &PROXY_UID.to_string()]);
    ns.block_on(|| async {
        let mesh = Mesh::start();
        // Opaque TCP: `db` (other, no address: owns 0.0.0.0:5432 for any destination when
        // imported) and `cache` (default, a VIP).
        let (db_ip, cache_ip) = (unique_loopback(), unique_loopback());
        let db = TcpEcho::start(SocketAddr::new(v4(db_ip), 5432), "db");
        let cache = TcpEcho::start(SocketAddr::new(v4(cache_ip), 6379), "cache");
        let tcp = format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: other}}
spec:
  hosts: [db.example.com]
  ports: [{{number: 5432, name: pg, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: {db_ip}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cache, namespace: default}}
spec:
  hosts: [cache.example.com]
  addresses: [240.0.0.7]
  ports: [{{number: 6379, name: redis, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: {cache_ip}}}]
"#
        );
        let config = format!("{}{tcp}---\n{}", mesh.yaml, sidecars("REGISTRY_ONLY"));
        let proxy = Proxy::builder(BIN)
            .netns(&ns, PROXY_UID)
            .ip(Ipv4Addr::LOCALHOST)
            .outbound([OUTBOUND_V4.parse().unwrap()])
            .dns(mesh.dns.addr())
            .file("mesh.yaml", config)
            .start()
            .await;

        // HTTP, routed by Host: imported -> its endpoint; not imported -> 502, although the
        // ServiceEntry exists and the destination port has an HTTP route table.
        let r = curl_captured(
            &ns,
            &format!("mine.example.com:80:{}", nowhere(1)),
            "http://mine.example.com/",
        )
        .await;
        assert_eq!((r.status, r.upstream().as_str()), (200, "mine"), "{r:?}");
        let r = curl_captured(
            &ns,
            &format!("egress.example.com:80:{}", nowhere(2)),
            "http://egress.example.com/",
        )
        .await;
        assert_eq!((r.status, r.upstream().as_str()), (200, "egress"), "{r:?}");
        let r = curl_captured(
            &ns,
            &format!("theirs.example.com:80:{}", nowhere(3)),
            "http://theirs.example.com/",
        )
        .await;
        assert_eq!(r.status, 502, "{r:?}");
        assert!(
            r.body.contains("through Sidecar default/default's egress hosts"),
            "{r:?}"
        );
        assert_eq!(mesh.requests(), [1, 0, 0, 0, 1, 0]);

        // TCP by VIP: imported -> relayed.
        let mut s = connect(SocketAddr::new(v4(Ipv4Addr::new(240, 0, 0, 7)), 6379)).await;
        echo(&mut s, b"PING").await;
        // TCP to any destination on 5432: db.example.com would own 0.0.0.0:5432, but it is
        // not imported, so the port has no listener: refused under REGISTRY_ONLY.
        let mut s = connect(SocketAddr::new(v4(nowhere(4)), 5432)).await;
        let _ = s.write_all(b"hello").await;
        closed(&mut s).await;
        assert_eq!(db.connections(), 0);
        assert_eq!(cache.connections(), 1);
        proxy.process.terminate();
    });
}

async fn connect(dst: SocketAddr) -> TcpStream {
    tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(dst))
        .await
        .unwrap_or_else(|_| panic!("connect to {dst} timed out"))
        .unwrap_or_else(|e| panic!("connect to {dst}: {e}"))
}

async fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, msg);
}

async fn closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(IO_TIMEOUT, s.read(&mut buf)).await.unwrap() {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// explain and registry

fn meshentry(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn explain_names_the_sidecar_and_the_egress_host() {
    let mesh = Mesh::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, mesh.config(&sidecars("REGISTRY_ONLY"))).unwrap();
    let file = file.to_str().unwrap();

    let out = meshentry(&["explain", "-c", file, "http://egress.example.com/"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Sidecar default/default at ")
            && text.contains("applies: the namespace's Sidecar without workloadSelector"),
        "{text}"
    );
    assert!(
        text.contains("imported by Sidecar default/default egress[0].hosts[1] \"istio-system/egress.example.com\""),
        "{text}"
    );

    let out = meshentry(&["explain", "-c", file, "http://theirs.example.com/"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "theirs.example.com port 80 in namespace other exists, but Sidecar default/default does not route it"
        ) && text.contains(
            "egress[0]: no host of [\"./*\", \"istio-system/egress.example.com\"] covers other/theirs.example.com"
        ),
        "{text}"
    );
    assert!(text.contains("outcome: REFUSED 502"), "{text}");

    // The workload's labels pick the Sidecar; JSON names it.
    let out = meshentry(&[
        "explain",
        "-c",
        file,
        "--labels",
        "app=web",
        "-o",
        "json",
        "http://theirs.example.com/",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["proxy"]["sidecar"], "Sidecar default/web");
    assert_eq!(
        v["service"]["importedBy"],
        "Sidecar default/web egress[0].hosts[0] \"other/*\""
    );
    assert_eq!(v["outcome"]["routed"], true);

    // registry --workload-namespace shows what the proxy imports.
    let out = meshentry(&["registry", "--workload-namespace", "default", file]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mine.example.com") && text.contains("egress.example.com"),
        "{text}"
    );
    assert!(!text.contains("theirs.example.com"), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("namespace default sees only what Sidecar default/default imports")
    );
    let out = meshentry(&[
        "registry",
        "--workload-namespace",
        "default",
        "--labels",
        "app=web",
        file,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("theirs.example.com") && !text.contains("mine.example.com"),
        "{text}"
    );
}

/// `-n` puts the resources that set no namespace in it, at start and at every reload, and the
/// proxy's own namespace is the same unless `--workload-namespace` names another: an
/// `exportTo: ["."]` service is then reached from its namespace and refused from any other.
#[tokio::test]
async fn namespace_places_the_resources_and_workload_namespace_is_the_viewer() {
    let ip = unique_loopback();
    let _up = HttpUpstream::start(SocketAddr::new(v4(ip), 80), "team-only");
    let entry = |host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: only}}\nspec:\n  \
             hosts: [{host}]\n  exportTo: [\".\"]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  \
             resolution: STATIC\n  endpoints: [{{address: {ip}}}]\n"
        )
    };
    let start = |args: &'static [&'static str]| {
        Proxy::builder(BIN)
            .config(entry("team.example.com"))
            .args(["--outbound-policy", "REGISTRY_ONLY"])
            .args(args.iter().copied())
            .start()
    };

    for (args, reached) in [
        (&[][..], true),
        (&["-n", "team"][..], true),
        (&["--namespace", "team", "--workload-namespace", "team"][..], true),
        (&["-n", "team", "--workload-namespace", "other"][..], false),
        (&["--workload-namespace", "team"][..], false),
    ] {
        let proxy = start(args).await;
        let r = curl_x(proxy.http(), "http://team.example.com/").await;
        match reached {
            true => assert_eq!((r.status, r.upstream().as_str()), (200, "team-only"), "{args:?}: {r:?}"),
            false => {
                assert_eq!(r.status, 502, "{args:?}: {r:?}");
                assert!(
                    r.body.contains("not a service in the registry seen by namespace"),
                    "{args:?}: {r:?}"
                );
            }
        }
    }

    // A reload reads the files into the same namespace.
    let proxy = start(&["-n", "team"]).await;
    std::fs::write(proxy.config_file(), entry("renamed.example.com")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = curl_x(proxy.http(), "http://renamed.example.com/").await;
        if r.status == 200 {
            assert_eq!(r.upstream(), "team-only");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reload never applied: {r:?}\n{}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = curl_x(proxy.http(), "http://team.example.com/").await;
    assert_eq!(r.status, 502, "{r:?}");
}
