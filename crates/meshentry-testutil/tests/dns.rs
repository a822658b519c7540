//! TestDns answers a real resolver (hickory) over UDP and TCP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::{Resolver, TokioResolver};
use meshentry_testutil::dns::{RecordType, ResponseCode};
use meshentry_testutil::{TestDns, eventually, unique_loopback};

fn resolver(config: ResolverConfig, strategy: LookupIpStrategy) -> TokioResolver {
    let mut opts = ResolverOpts::default();
    opts.ip_strategy = strategy;
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 1;
    Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .expect("resolver builds")
}

async fn ips(r: &TokioResolver, name: &str) -> Result<Vec<IpAddr>, NetError> {
    Ok(r.lookup_ip(name).await?.iter().collect())
}

const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));

#[tokio::test]
async fn answers_a_aaaa_wildcards_and_nxdomain() {
    let dns = TestDns::start(unique_loopback());
    // Tests run as root, so the real port 53 is used.
    if nix_root() {
        assert_eq!(dns.addr().port(), 53);
    }
    dns.set("api.example.com", &[V4, V6], 30);
    dns.set("*.bar.com", &[IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9))], 30);
    let r = resolver(dns.resolver_config(), LookupIpStrategy::Ipv4AndIpv6);

    let mut got = ips(&r, "api.example.com.").await.expect("lookup");
    got.sort();
    assert_eq!(got, vec![V4, V6]);
    assert_eq!(dns.queries_of("api.example.com", RecordType::A), 1);
    assert_eq!(dns.queries_of("api.example.com", RecordType::AAAA), 1);
    assert_eq!(dns.queries("API.example.com."), 2, "names are case-insensitive");

    let got = ips(&r, "a.b.bar.com.").await.expect("wildcard lookup");
    assert_eq!(got, vec![IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9))]);

    let err = ips(&r, "unknown.example.com.").await.expect_err("NXDOMAIN");
    assert!(err.is_nx_domain(), "{err:?}");

    dns.remove("api.example.com");
    r.clear_cache();
    let err = ips(&r, "api.example.com.").await.expect_err("removed");
    assert!(err.is_nx_domain(), "{err:?}");
}

fn nix_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

#[tokio::test]
async fn resolver_caches_for_the_ttl_then_asks_again() {
    let dns = TestDns::start(unique_loopback());
    dns.set("cached.example.com", &[V4], 1);
    let r = resolver(dns.resolver_config(), LookupIpStrategy::Ipv4Only);

    ips(&r, "cached.example.com.").await.expect("lookup");
    ips(&r, "cached.example.com.").await.expect("lookup");
    assert_eq!(
        dns.queries("cached.example.com"),
        1,
        "second lookup is served from cache"
    );

    // After the 1 s TTL the resolver must ask again.
    eventually(Duration::from_secs(5), || async {
        ips(&r, "cached.example.com.").await.expect("lookup");
        dns.queries("cached.example.com") == 2
    })
    .await;
}

#[tokio::test]
async fn servfail_is_returned_until_cleared() {
    let dns = TestDns::start(unique_loopback());
    dns.set("flaky.example.com", &[V4], 0);
    let r = resolver(dns.resolver_config(), LookupIpStrategy::Ipv4Only);
    dns.set_failure(Some(ResponseCode::ServFail));
    let err = ips(&r, "flaky.example.com.").await.expect_err("SERVFAIL");
    assert!(
        matches!(&err, NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)))
            || format!("{err:?}").contains("ServFail"),
        "{err:?}"
    );
    assert!(dns.queries("flaky.example.com") >= 1);
    dns.set_failure(None);
    r.clear_cache();
    assert_eq!(ips(&r, "flaky.example.com.").await.expect("recovered"), vec![V4]);

    dns.set_failure_for("flaky.example.com", Some(ResponseCode::Refused));
    r.clear_cache();
    ips(&r, "flaky.example.com.").await.expect_err("per-name failure");
}

#[tokio::test]
async fn a_slow_name_does_not_delay_other_answers() {
    let dns = TestDns::start(unique_loopback());
    dns.set("slow.example.com", &[V4], 30);
    dns.set("fast.example.com", &[V4], 30);
    dns.set_delay_for("slow.example.com", Duration::from_millis(1500));
    let r = resolver(dns.resolver_config(), LookupIpStrategy::Ipv4Only);

    let start = Instant::now();
    let slow = {
        let r = r.clone();
        tokio::spawn(async move { ips(&r, "slow.example.com.").await })
    };
    // Wait until the slow query is in flight, then a fast one must still answer promptly.
    eventually(Duration::from_secs(5), || async {
        dns.queries("slow.example.com") == 1
    })
    .await;
    ips(&r, "fast.example.com.").await.expect("fast lookup");
    // Answered while the slow one still waits: the order, not a duration, is the claim.
    assert!(
        !slow.is_finished(),
        "the fast answer came only after the slow one ({:?})",
        start.elapsed()
    );
    slow.await.expect("join").expect("slow lookup");
    assert!(start.elapsed() >= Duration::from_millis(1500));

    dns.set_delay(Duration::from_millis(200));
    let start = Instant::now();
    r.clear_cache();
    ips(&r, "fast.example.com.").await.expect("delayed lookup");
    assert!(start.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn serves_tcp_and_falls_back_to_tcp_for_large_answers() {
    let dns = TestDns::start(unique_loopback());
    dns.set("one.example.com", &[V4], 30);
    // TCP only.
    let mut tcp_only = NameServerConfig::tcp(dns.addr().ip());
    for c in &mut tcp_only.connections {
        c.port = dns.addr().port();
    }
    let r = resolver(
        ResolverConfig::from_name_servers(vec![tcp_only]),
        LookupIpStrategy::Ipv4Only,
    );
    assert_eq!(ips(&r, "one.example.com.").await.expect("tcp lookup"), vec![V4]);

    // 200 A records do not fit in a UDP answer: TC is set and the resolver retries over TCP.
    let many: Vec<IpAddr> = (0..200u8).map(|i| IpAddr::V4(Ipv4Addr::new(10, 0, 1, i))).collect();
    dns.set("many.example.com", &many, 30);
    let r = resolver(dns.resolver_config(), LookupIpStrategy::Ipv4Only);
    let got = ips(&r, "many.example.com.").await.expect("large lookup");
    assert_eq!(got.len(), 200);
    assert_eq!(
        dns.queries("many.example.com"),
        2,
        "one UDP (truncated) and one TCP query"
    );
}

#[tokio::test]
async fn a_name_with_only_ipv6_answers_a_queries_with_no_records() {
    let dns = TestDns::start(unique_loopback());
    dns.set("v6only.example.com", &[V6], 30);
    let r = resolver(dns.resolver_config(), LookupIpStrategy::Ipv4Only);
    let err = ips(&r, "v6only.example.com.").await.expect_err("no A records");
    assert!(!err.is_nx_domain() && err.is_no_records_found(), "{err:?}");
}

#[tokio::test]
async fn dig_queries_the_server() {
    let dns = TestDns::start(unique_loopback());
    dns.set("dig.example.com", &[V4], 30);
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", dns.addr().ip()))
        .args(["-p", &dns.addr().port().to_string()])
        .args(["+short", "dig.example.com", "A"])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run dig ({e}): apt-get install bind9-dnsutils (scripts/test does this)"));
    assert!(out.status.success(), "dig: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.1.2.3");
}

#[tokio::test]
async fn stops_on_drop() {
    let ip = unique_loopback();
    let dns = TestDns::start(ip);
    let addr = dns.addr();
    drop(dns);
    let err = tokio::net::TcpStream::connect(addr).await.expect_err("closed");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // The same address can host a new server at once.
    let again = TestDns::start(ip);
    assert_eq!(again.addr(), addr);
}

/// The system (glibc) resolver, pointed at TestDns through a private mount namespace in which
/// /etc/resolv.conf is replaced; the machine's own file is never touched. Needs root and
/// `unshare`, and port 53 (the system resolver cannot use another port).
#[tokio::test]
async fn the_system_resolver_queries_the_server() {
    let dns = TestDns::start(unique_loopback());
    assert_eq!(
        dns.addr().port(),
        53,
        "TestDns could not bind port 53: these tests run as root (scripts/test, CI)"
    );
    dns.set("system.example.com", &[V4], 30);
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("resolv.conf");
    std::fs::write(&conf, format!("nameserver {}\n", dns.addr().ip())).expect("write resolv.conf");
    let script = format!(
        "mount --bind {} /etc/resolv.conf && getent ahostsv4 system.example.com",
        conf.display()
    );
    let out = tokio::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run unshare ({e}): apt-get install util-linux (scripts/test does this)"));
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unshare failed") {
        // Root is not enough where a sandbox (a container's seccomp profile) forbids mount
        // namespaces; nothing to install makes them work.
        meshentry_testutil::skip!(
            "mount namespaces are not permitted here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.1.2.3"));
    assert!(dns.queries("system.example.com") >= 1);
}
