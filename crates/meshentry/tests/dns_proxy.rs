//! The DNS proxy (`proxy --dns`) as `dig` sees it: the mesh's names answered locally (VIPs,
//! auto-allocated addresses, search-domain CNAMEs) over UDP and TCP, NXDOMAIN and NODATA told
//! apart, truncation and the TCP retry, EDNS, malformed queries refused, every other name
//! forwarded to the test's own upstream DNS server and cached by its TTL, a silent upstream
//! answered with SERVFAIL, and a reload changing the answers.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use meshentry_testutil::dns::RecordType;
use meshentry_testutil::{Proxy, TestDns, eventually, unique_loopback};

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-svc-mongocluster, namespace: default}
spec:
  hosts: [mymongodb.somedomain]
  addresses: [192.192.192.192/24]
  ports: [{number: 27018, name: mongodb, protocol: MONGO}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{address: 2.2.2.2}, {address: 3.3.3.3}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db1, namespace: default}
spec:
  hosts: [db1.internal]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db2, namespace: default}
spec:
  hosts: [db2.internal]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: v6, namespace: default}
spec:
  hosts: [v6only.internal]
  addresses: ["2001:db8::66"]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: "2001:db8::1"}]
"#;

/// A ServiceEntry whose name has `n` addresses: too many for 512 or 1232 bytes.
fn big(n: u32) -> String {
    let addrs: Vec<String> = (0..n).map(|i| format!("10.77.{}.{}", i / 250, i % 250 + 1)).collect();
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: big, namespace: default}}
spec:
  hosts: [big.internal]
  addresses: [{}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.1}}]
",
        addrs.join(", ")
    )
}

struct Setup {
    proxy: Proxy,
    dns: SocketAddr,
    upstream: TestDns,
}

async fn start(config: &str, extra: &[&str]) -> Setup {
    let ip = unique_loopback();
    let upstream = TestDns::start(unique_loopback());
    let dns = SocketAddr::new(ip.into(), 15053);
    let mut args: Vec<String> = vec![
        "--dns".into(),
        dns.to_string(),
        "--dns-upstream".into(),
        upstream.addr().to_string(),
        "--dns-search".into(),
        "default.svc.cluster.local".into(),
        "--dns-search".into(),
        "svc.cluster.local".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let proxy = Proxy::builder(BIN)
        .ip(ip)
        .config(config)
        .http_proxy_off()
        .outbound_off()
        .args(args)
        .start()
        .await;
    Setup { proxy, dns, upstream }
}

/// `dig @server -p port args...` output.
async fn dig(server: SocketAddr, args: &[&str]) -> String {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=3", "+tries=1"])
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("dig is not installed: apt-get install bind9-dnsutils (scripts/test does this)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in {out}"))
}

fn flags(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(";; flags: "))
        .and_then(|l| l.split(';').next())
        .unwrap_or_else(|| panic!("no flags in {out}"))
        .to_string()
}

/// The ANSWER section's records as (owner, type, data).
fn answers(out: &str) -> Vec<(String, String, String)> {
    let mut section = false;
    let mut records = Vec::new();
    for line in out.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            section = true;
            continue;
        }
        if section {
            if line.trim().is_empty() || line.starts_with(";;") {
                break;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            records.push((f[0].to_string(), f[3].to_string(), f[4].to_string()));
        }
    }
    records
}

fn ips(out: &str) -> Vec<IpAddr> {
    answers(out)
        .iter()
        .filter(|(_, t, _)| t == "A" || t == "AAAA")
        .map(|(_, _, d)| d.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn the_meshs_names_are_answered_locally_over_udp_and_tcp() {
    let s = start(CONFIG, &[]).await;
    // The seed's VIP example: the address its range was written with.
    let out = dig(s.dns, &["mymongodb.somedomain"]).await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(flags(&out).contains("aa"), "authoritative: {out}");
    assert_eq!(ips(&out), ["192.192.192.192".parse::<IpAddr>().unwrap()]);
    assert_eq!(answers(&out)[0].0, "mymongodb.somedomain.");
    // Two address-less TCP services: each its own allocated VIP, in Istio's ranges.
    let db1 = ips(&dig(s.dns, &["db1.internal"]).await);
    let db2 = ips(&dig(s.dns, &["+tcp", "db2.internal"]).await);
    assert_eq!(db1.len(), 1);
    assert_eq!(db2.len(), 1);
    assert_ne!(db1, db2);
    for ip in db1.iter().chain(&db2) {
        assert!(ip.to_string().starts_with("240.240."), "{ip}");
    }
    let v6 = ips(&dig(s.dns, &["db1.internal", "AAAA"]).await);
    assert!(v6[0].to_string().starts_with("2001:2:"), "{v6:?}");
    // Case is echoed as asked (0x20 randomisation), the answer found all the same.
    let out = dig(s.dns, &["DB1.Internal"]).await;
    assert_eq!(answers(&out)[0].0, "DB1.Internal.");
    assert_eq!(ips(&out), db1);
    // Every proxy allocates the same: `meshentry registry` computes the same addresses.
    let dir = s.proxy.config_dir().to_path_buf();
    let registry = Command::new(BIN)
        .arg("registry")
        .arg(&dir)
        .arg("-o")
        .arg("json")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&registry.stdout);
    assert!(text.contains(&db1[0].to_string()), "{text}");
    // The admin name table says the same, and where each came from.
    let table = s.proxy.admin_json("/debug/ndsz").await;
    let db1_entry = &table["table"]["db1.internal"];
    assert_eq!(db1_entry["origin"], "allocated by meshentry", "{table}");
    assert_eq!(db1_entry["ips"][0], db1[0].to_string());
    assert_eq!(table["table"]["mymongodb.somedomain"]["origin"], "addresses");
    assert_eq!(table["search"][0], "default.svc.cluster.local");
    // Nothing went upstream.
    assert_eq!(s.upstream.total_queries(), 0);
}

#[tokio::test]
async fn nodata_for_a_known_name_nxdomain_from_upstream_for_an_unknown_one() {
    let s = start(CONFIG, &[]).await;
    let out = dig(s.dns, &["mymongodb.somedomain", "AAAA"]).await;
    assert_eq!(status(&out), "NOERROR", "a known name without IPv6 is NODATA: {out}");
    assert!(answers(&out).is_empty());
    let out = dig(s.dns, &["v6only.internal", "AAAA"]).await;
    assert_eq!(ips(&out), ["2001:db8::66".parse::<IpAddr>().unwrap()]);
    let out = dig(s.dns, &["nobody.example"]).await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert_eq!(s.upstream.queries("nobody.example"), 1);
    // Other types than A and AAAA go upstream even for a mesh name, as in Istio: a real
    // domain's MX, TXT or HTTPS records are there.
    for t in [RecordType::MX, RecordType::ANY, RecordType::TXT] {
        dig(s.dns, &["db1.internal", &t.to_string()]).await;
        assert_eq!(s.upstream.queries_of("db1.internal", t), 1, "{t}");
    }
    assert_eq!(s.upstream.queries_of("db1.internal", RecordType::A), 0);
}

#[tokio::test]
async fn search_domain_expansions_are_cnames_to_the_mesh_name_and_never_go_upstream() {
    let s = start(CONFIG, &[]).await;
    let db1 = ips(&dig(s.dns, &["db1.internal"]).await);
    for name in [
        "db1.internal.default.svc.cluster.local",
        "db1.internal.svc.cluster.local",
    ] {
        let out = dig(s.dns, &[name]).await;
        assert_eq!(status(&out), "NOERROR", "{out}");
        let a = answers(&out);
        assert_eq!(
            a[0],
            (format!("{name}."), "CNAME".into(), "db1.internal.".into()),
            "{out}"
        );
        assert_eq!(a[1].0, "db1.internal.");
        assert_eq!(ips(&out), db1);
    }
    // A resolver with ndots:5 and these search domains, asking for the mesh name.
    let out = dig(
        s.dns,
        &[
            "+search",
            "+ndots=5",
            "+domain=default.svc.cluster.local",
            "db2.internal",
        ],
    )
    .await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert_eq!(s.upstream.total_queries(), 0);
}

#[tokio::test]
async fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let s = start(&format!("{CONFIG}{}", big(100)), &[]).await;
    // No EDNS: 512 bytes; dig +ignore shows the truncated answer instead of retrying.
    let out = dig(s.dns, &["+noedns", "+ignore", "big.internal"]).await;
    assert!(flags(&out).contains("tc"), "{out}");
    assert!(answers(&out).is_empty(), "{out}");
    // EDNS with 4096 bytes: we send at most 1232 (no fragmentation), so still truncated.
    let out = dig(s.dns, &["+bufsize=4096", "+ignore", "big.internal"]).await;
    assert!(flags(&out).contains("tc"), "{out}");
    assert!(out.contains("udp: 1232"), "our OPT advertises 1232: {out}");
    // dig retries over TCP on TC, as resolvers do; and +tcp directly.
    for args in [&["big.internal"][..], &["+tcp", "big.internal"][..]] {
        let out = dig(s.dns, args).await;
        assert!(!flags(&out).contains("tc"), "{out}");
        assert_eq!(ips(&out).len(), 100, "{out}");
    }
    // A smaller one fits in 512 without EDNS.
    let out = dig(s.dns, &["+noedns", "db1.internal"]).await;
    assert!(
        !out.contains("OPT PSEUDOSECTION"),
        "no OPT without EDNS in the query: {out}"
    );
    assert_eq!(ips(&out).len(), 1);
}

#[tokio::test]
async fn edns_versions_we_do_not_speak_get_badvers() {
    let s = start(CONFIG, &[]).await;
    let out = dig(s.dns, &["+edns=1", "+noednsnegotiation", "db1.internal"]).await;
    assert_eq!(status(&out), "BADVERS", "{out}");
    assert!(answers(&out).is_empty());
}

#[tokio::test]
async fn forwarded_answers_are_cached_by_their_ttl() {
    let s = start(CONFIG, &[]).await;
    let ip: IpAddr = "127.9.9.9".parse().unwrap();
    s.upstream.set("api.dropboxapi.com", &[ip], 2);
    for _ in 0..3 {
        let out = dig(s.dns, &["api.dropboxapi.com"]).await;
        assert_eq!(ips(&out), [ip], "{out}");
    }
    assert_eq!(
        s.upstream.queries("api.dropboxapi.com"),
        1,
        "the cache answered the next two"
    );
    // Over TCP too, from the same cache.
    let out = dig(s.dns, &["+tcp", "api.dropboxapi.com"]).await;
    assert_eq!(ips(&out), [ip]);
    assert_eq!(s.upstream.queries("api.dropboxapi.com"), 1);
    // Past its TTL it is asked again, and the new address is answered.
    let new: IpAddr = "127.9.9.10".parse().unwrap();
    s.upstream.set("api.dropboxapi.com", &[new], 30);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let out = dig(s.dns, &["api.dropboxapi.com"]).await;
    assert_eq!(ips(&out), [new], "{out}");
    assert_eq!(s.upstream.queries("api.dropboxapi.com"), 2);
    let stats = s.proxy.admin_get("/stats/prometheus").await.text();
    assert!(
        stats.contains("meshentry_dns_proxy_queries_total{outcome=\"cached\"} 3"),
        "{stats}"
    );
    assert!(
        stats.contains("meshentry_dns_proxy_queries_total{outcome=\"forwarded\"} 2"),
        "{stats}"
    );
    assert!(stats.contains("istio_agent_dns_upstream_requests_total 2"), "{stats}");
    assert!(
        stats.contains("istio_agent_dns_upstream_request_duration_seconds_count 2"),
        "{stats}"
    );
}

#[tokio::test]
async fn a_silent_upstream_gets_servfail_and_a_dead_one_is_skipped() {
    let dead = UdpSocket::bind((unique_loopback(), 0)).unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    // The first upstream is unreachable (ICMP refused); the second is asked.
    let s = start(
        CONFIG,
        &[
            "--dns-upstream",
            &dead_addr.to_string(),
            "--dns-upstream-timeout",
            "500ms",
        ],
    )
    .await;
    let ip: IpAddr = "127.9.9.11".parse().unwrap();
    s.upstream.set("ok.example", &[ip], 30);
    for i in 0..2 {
        let out = dig(s.dns, &[&format!("ok{i}.example")]).await;
        assert_eq!(status(&out), "NXDOMAIN", "{out}");
    }
    let out = dig(s.dns, &["ok.example"]).await;
    assert_eq!(ips(&out), [ip], "{out}");
    s.upstream.set_delay(Duration::from_secs(2));
    let out = dig(s.dns, &["slow.example"]).await;
    assert_eq!(status(&out), "SERVFAIL", "{out}");
    let stats = s.proxy.admin_get("/stats/prometheus").await.text();
    assert!(
        stats.contains("meshentry_dns_proxy_queries_total{outcome=\"failed\"} 1"),
        "{stats}"
    );
}

#[tokio::test]
async fn malformed_queries_are_refused_or_dropped_and_the_server_goes_on() {
    let s = start(CONFIG, &[]).await;
    let sock = UdpSocket::bind((s.dns.ip(), 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    sock.connect(s.dns).unwrap();
    let mut buf = [0u8; 1500];
    // Too short for a header: dropped.
    sock.send(b"\x12\x34\x01").unwrap();
    assert!(sock.recv(&mut buf).is_err(), "no answer to 3 bytes");
    // Two questions: FORMERR with the id echoed.
    let two = b"\xab\xcd\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01\x01b\x00\x00\x01\x00\x01";
    sock.send(two).unwrap();
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..2], b"\xab\xcd");
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR: {:?}", &buf[..n]);
    // A response sent to us: dropped (no reflection loops).
    let mut response = two.to_vec();
    response[2] |= 0x80;
    sock.send(&response).unwrap();
    assert!(sock.recv(&mut buf).is_err());
    // An opcode we do not serve (NOTIFY): NOTIMP.
    let notify = b"\x00\x07\x20\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x06\x00\x01";
    sock.send(notify).unwrap();
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(buf[3] & 0x0f, 4, "NOTIMP: {:?}", &buf[..n]);
    // A length-prefixed garbage TCP message closes that connection only.
    let mut tcp = std::net::TcpStream::connect(s.dns).unwrap();
    std::io::Write::write_all(&mut tcp, b"\x00\x05\x81\x00\x00\x00\x00").unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut one = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut tcp, &mut one).unwrap_or(0), 0, "closed");
    // And the server still answers.
    let out = dig(s.dns, &["db1.internal"]).await;
    assert_eq!(status(&out), "NOERROR");
    assert_eq!(s.upstream.total_queries(), 0, "nothing malformed was forwarded");
}

#[tokio::test]
async fn a_reload_changes_the_answers_without_a_restart() {
    let s = start(CONFIG, &[]).await;
    let out = dig(s.dns, &["late.internal"]).await;
    assert_eq!(status(&out), "NXDOMAIN");
    std::fs::write(
        s.proxy.config_dir().join("late.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: late, namespace: default}\n\
         spec:\n  hosts: [late.internal]\n  addresses: [10.55.0.1]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1}]\n",
    )
    .unwrap();
    eventually(Duration::from_secs(10), || async {
        ips(&dig(s.dns, &["late.internal"]).await) == ["10.55.0.1".parse::<IpAddr>().unwrap()]
    })
    .await;
}

/// A stand-in for capture sending the proxy's own upstream queries back to it: whatever
/// arrives is sent on to `proxy` as a new query, unchanged, and its answer returned as the
/// upstream's.
fn reflector(proxy: SocketAddr) -> SocketAddr {
    let r = UdpSocket::bind((unique_loopback(), 0)).unwrap();
    let addr = r.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = r.recv_from(&mut buf) {
            let c = UdpSocket::bind((addr.ip(), 0)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.send_to(&buf[..n], proxy).unwrap();
            let mut answer = [0u8; 4096];
            if let Ok(m) = c.recv(&mut answer) {
                let _ = r.send_to(&answer[..m], from);
            }
        }
    });
    addr
}

#[tokio::test]
async fn its_own_query_coming_back_is_a_loop_answered_with_servfail_not_forwarded_again() {
    let ip = unique_loopback();
    let dns = SocketAddr::new(ip.into(), 15053);
    let upstream = reflector(dns);
    let proxy = Proxy::builder(BIN)
        .ip(ip)
        .config(CONFIG)
        .http_proxy_off()
        .outbound_off()
        .args(["--dns", &dns.to_string(), "--dns-upstream", &upstream.to_string()])
        .start()
        .await;
    let started = std::time::Instant::now();
    let out = dig(dns, &["loop.example"]).await;
    assert_eq!(status(&out), "SERVFAIL", "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "ended at once, not by a timeout"
    );
    let stats = proxy.admin_get("/stats/prometheus").await.text();
    assert!(
        stats.contains("istio_agent_dns_upstream_requests_total 1\n"),
        "one hop, not a storm: {stats}"
    );
    assert!(
        proxy.stderr().contains("its own upstream query came back"),
        "{}",
        proxy.stderr()
    );
    // Mesh names still answer.
    assert_eq!(status(&dig(dns, &["db1.internal"]).await), "NOERROR");
}

/// `meshentry proxy` on [`CONFIG`] with only its admin listener and `extra`, expected to
/// refuse to start: its exit code and stderr.
fn refused(extra: &[&str]) -> (Option<i32>, String) {
    let ip = unique_loopback();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("se.yaml"), CONFIG).unwrap();
    let admin = format!("{ip}:15000");
    let extra: Vec<String> = extra.iter().map(|a| a.replace("IP", &ip.to_string())).collect();
    let out = Command::new(BIN)
        .args(["proxy", "--config"])
        .arg(dir.path())
        .args(["--http-proxy", "off", "--outbound", "off", "--admin", &admin])
        .args(&extra)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn an_upstream_that_is_the_listener_itself_is_refused_at_startup() {
    let (code, err) = refused(&["--dns", "IP:15053", "--dns-upstream", "IP:15053"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("would forward to itself"), "{err}");
    // An unspecified address would answer UDP from whichever address routing picks, which
    // clients reject: refused too, with the way out.
    let (code, err) = refused(&["--dns", "0.0.0.0:15053"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("a specific address"), "{err}");
}

#[test]
fn a_proxy_with_no_listener_at_all_refuses_to_start() {
    let (code, err) = refused(&[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("nothing to listen on"), "{err}");
}

#[test]
fn a_zero_timeout_or_interval_is_refused_not_a_504_for_every_request() {
    for flag in [
        "--response-timeout",
        "--connect-timeout",
        "--header-read-timeout",
        "--cert-check-interval",
        "--dns-upstream-timeout",
    ] {
        let out = Command::new(BIN)
            .args(["proxy", "--config", "/nonexistent", flag, "0s"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("must be longer than 0"), "{flag}: {err}");
    }
}

#[tokio::test]
async fn concurrent_clients_each_get_the_answer_to_their_own_question() {
    let s = start(CONFIG, &[]).await;
    // Every query waits upstream, so all 30 are in flight at once, each on its own upstream
    // socket, and answers come back in any order.
    s.upstream.set_delay(Duration::from_millis(300));
    let n = 30u8;
    for i in 0..n {
        s.upstream
            .set(&format!("c{i}.example"), &[IpAddr::from([127, 66, 0, i])], 30);
    }
    let children: Vec<_> = (0..n)
        .map(|i| {
            let mut cmd = Command::new("dig");
            cmd.arg(format!("@{}", s.dns.ip()))
                .args(["-p", &s.dns.port().to_string(), "+time=5", "+tries=1"])
                .arg(format!("c{i}.example"));
            if i % 2 == 1 {
                cmd.arg("+tcp");
            }
            cmd.stdout(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(ips(&text), [IpAddr::from([127, 66, 0, i as u8])], "client {i}: {text}");
        assert_eq!(answers(&text)[0].0, format!("c{i}.example."), "{text}");
    }
    for i in 0..n {
        assert_eq!(s.upstream.queries(&format!("c{i}.example")), 1, "c{i}");
    }
}
