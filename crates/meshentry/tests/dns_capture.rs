//! DNS capture end to end, as in a pod with Istio's DNS proxy: in a network namespace of the
//! test's own, `meshentry iptables install --capture-dns` sends the application's DNS to the
//! proxy's DNS listener and its TCP to the outbound listener, and applications that know
//! nothing of the proxy (python's and glibc's resolvers, curl) use their ordinary system
//! resolver: /etc/resolv.conf (the namespace's own, `ip netns exec` mounts it) names a
//! cluster-DNS-like server, with Kubernetes' search path and `ndots:5`. No `--resolve`, no
//! /etc/hosts.
//!
//! Shown: the seed's `mymongodb.somedomain` VIP example; a DNS-resolution ServiceEntry without
//! addresses (auto-allocated VIP, then resolved by the proxy through the real DNS server); two
//! address-less TCP services on one port, each reached by name (what IST0134 warns cannot
//! work without addresses); and a name nobody in the mesh knows, forwarded to that DNS server.
//!
//! Needs root, iproute2, iptables, setpriv, python3 and curl (scripts/test installs them).

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use meshentry_testutil::{HttpUpstream, Netns, PROXY_UID, TcpBanner, TestDns};

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");

/// Where the namespace's resolv.conf says DNS is, as kube-dns's ClusterIP would be.
const CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// /etc/netns/NAME/resolv.conf, removed on drop.
struct ResolvConf(PathBuf);

impl ResolvConf {
    fn write(ns: &Netns, text: &str) -> ResolvConf {
        let dir = PathBuf::from("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), text).unwrap();
        // The proxy runs as another uid and reads it too.
        meshentry_testutil::make_accessible(&dir);
        ResolvConf(dir)
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `python3 -c` in the namespace (as root: an ordinary, captured application) and
/// returns its stdout, asserting success.
fn python(ns: &Netns, code: &str) -> String {
    let out = ns.exec(&["python3", "-c", code]);
    assert!(
        out.status.success(),
        "python3 failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What a TCP server at `name:port` greets with, reached through the system resolver.
fn banner(ns: &Netns, name: &str, port: u16) -> String {
    python(
        ns,
        &format!(
            "import socket\ns = socket.create_connection(('{name}', {port}), timeout=5)\ns.settimeout(5)\n\
             print(s.recv(64).decode())"
        ),
    )
}

/// The addresses the system resolver gives for `name` (getaddrinfo, as applications call it).
fn resolve(ns: &Netns, name: &str) -> Vec<IpAddr> {
    let text = python(
        ns,
        &format!(
            "import socket\nprint(' '.join(sorted({{a[4][0] for a in socket.getaddrinfo('{name}', 80, proto=socket.IPPROTO_TCP)}})))"
        ),
    );
    text.split_whitespace().map(|s| s.parse().unwrap()).collect()
}

fn config(mongo: SocketAddr, db1: SocketAddr, db2: SocketAddr, api: SocketAddr) -> String {
    format!(
        r#"# The seed's example, with endpoints on this namespace's loopback.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external-svc-mongocluster, namespace: default}}
spec:
  hosts: [mymongodb.somedomain]
  addresses: [192.192.192.192/24]
  ports: [{{number: 27018, name: mongodb, protocol: MONGO}}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{{address: {mongo_ip}, ports: {{mongodb: {mongo_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db1, namespace: default}}
spec:
  hosts: [db1.internal]
  ports: [{{number: 5432, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: {db1_ip}, ports: {{tcp: {db1_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db2, namespace: default}}
spec:
  hosts: [db2.internal]
  ports: [{{number: 5432, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: {db2_ip}, ports: {{tcp: {db2_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.dropboxapi.com]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {api_port}}}]
  resolution: DNS
"#,
        mongo_ip = mongo.ip(),
        mongo_port = mongo.port(),
        db1_ip = db1.ip(),
        db1_port = db1.port(),
        db2_ip = db2.ip(),
        db2_port = db2.port(),
        api_port = api.port(),
    )
}

#[test]
fn applications_resolve_mesh_names_with_their_system_resolver_and_reach_them() {
    let ns = Netns::new("me-dnscap");
    ns.add_local_address(IpAddr::V4(CLUSTER_DNS));
    let _resolv = ResolvConf::write(
        &ns,
        &format!(
            "nameserver {CLUSTER_DNS}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        ),
    );
    ns.run(&[
        BIN,
        "iptables",
        "install",
        "--proxy-uid",
        &PROXY_UID.to_string(),
        "--capture-dns",
    ]);
    ns.block_on(|| async {
        let dns = TestDns::start(CLUSTER_DNS);
        assert_eq!(dns.addr().port(), 53, "the cluster DNS must be on port 53");
        let mongo = TcpBanner::start("127.0.0.21:0".parse().unwrap(), "mongo\n");
        let db1 = TcpBanner::start("127.0.0.22:0".parse().unwrap(), "db1\n");
        let db2 = TcpBanner::start("127.0.0.23:0".parse().unwrap(), "db2\n");
        let api = HttpUpstream::start("127.0.0.24:0".parse().unwrap(), "dropbox");
        // The real name only the proxy resolves (through the cluster DNS, for its endpoint).
        dns.set("api.dropboxapi.com", &[api.addr().ip()], 30);
        dns.set("elsewhere.example", &["127.0.0.99".parse().unwrap()], 30);
        let proxy = meshentry_testutil::Proxy::builder(BIN)
            .file("mesh.yaml", config(mongo.addr(), db1.addr(), db2.addr(), api.addr()))
            .netns(&ns, PROXY_UID)
            .ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .outbound(["127.0.0.1:15001".parse().unwrap(), "[::1]:15001".parse().unwrap()])
            .http_proxy_off()
            .dns(dns.addr())
            .args(["--dns", "127.0.0.1:15053", "--outbound-policy", "REGISTRY_ONLY"])
            .start()
            .await;
        // The clients below block this thread: every server runs on threads of its own.
        // The seed's VIP example: the name resolves to the address its range was written
        // with, and the connection to it reaches the endpoint.
        let mongo_ips = resolve(&ns, "mymongodb.somedomain");
        assert_eq!(mongo_ips, [IpAddr::from([192, 192, 192, 192])]);
        assert_eq!(banner(&ns, "mymongodb.somedomain", 27018), "mongo");

        // Two address-less TCP services on one port: each its own allocated address, each
        // reached by name.
        let db1_ips = resolve(&ns, "db1.internal");
        let db2_ips = resolve(&ns, "db2.internal");
        for ip in db1_ips.iter().chain(&db2_ips) {
            let text = ip.to_string();
            assert!(text.starts_with("240.240.") || text.starts_with("2001:2:"), "{ip}");
        }
        assert_ne!(db1_ips, db2_ips);
        for _ in 0..3 {
            assert_eq!(banner(&ns, "db1.internal", 5432), "db1");
            assert_eq!(banner(&ns, "db2.internal", 5432), "db2");
        }

        // A DNS-resolution ServiceEntry without addresses: curl resolves it to its allocated
        // VIP, and the proxy resolves the real name for the endpoint.
        let api_ips = resolve(&ns, "api.dropboxapi.com");
        assert!(
            api_ips.iter().any(|ip| ip.to_string().starts_with("240.240.")),
            "{api_ips:?}"
        );
        let out = ns.exec(&["curl", "-s", "--max-time", "10", "http://api.dropboxapi.com/v1/x"]);
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(body.contains("\"upstream\":\"dropbox\""), "{body}");
        assert_eq!(api.requests(), 1);

        // A name nobody in the mesh knows: forwarded to the cluster DNS, answered from there.
        assert_eq!(resolve(&ns, "elsewhere.example"), [IpAddr::from([127, 0, 0, 99])]);
        assert!(dns.queries("elsewhere.example") >= 1);
        // The mesh's names and their search-domain expansions never went to the cluster DNS.
        for name in ["mymongodb.somedomain", "db1.internal", "db2.internal"] {
            assert_eq!(dns.queries(name), 0, "{name}");
            assert_eq!(dns.queries(&format!("{name}.default.svc.cluster.local")), 0, "{name}");
        }

        let stats = proxy.admin_get("/stats/prometheus").await.text();
        let local = stats
            .lines()
            .find_map(|l| l.strip_prefix("meshentry_dns_proxy_queries_total{outcome=\"local\"} "))
            .unwrap()
            .parse::<u64>()
            .unwrap();
        assert!(local >= 10, "{stats}");
        // With addresses allocated, db1 and db2 no longer share 0.0.0.0:5432, so the proxy
        // has no IST0134 situation to warn about (`explain_cli` shows the warning without
        // --dns).
        let log = proxy.stderr();
        assert!(!log.contains("0.0.0.0:5432"), "{log}");
        drop(proxy);
    });
    ns.run(&[BIN, "iptables", "remove"]);
}
