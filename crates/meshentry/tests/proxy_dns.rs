//! DNS-resolved services through the real proxy and a real DNS server: answers are cached per
//! TTL, a slow or failing DNS server never blocks traffic to other services, a failed refresh
//! keeps serving the last good addresses, and DNS_ROUND_ROBIN uses the first address.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use meshentry_testutil::dns::ResponseCode;
use meshentry_testutil::{HttpUpstream, Proxy, TestDns, curl_command, eventually, unique_loopback};

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");

/// A DNS-resolved ServiceEntry for `host` on port 80.
fn dns_service(name: &str, host: &str, resolution: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: {resolution}
"
    )
}

async fn start(config: &str, dns: &TestDns) -> Proxy {
    // REGISTRY_ONLY: nothing unknown may leave, so a routing bug becomes a refusal, not egress.
    Proxy::builder(BIN)
        .config(config)
        .dns(dns.addr())
        .args(["--outbound-policy", "REGISTRY_ONLY", "--response-timeout", "5s"])
        .start()
        .await
}

/// `(status, response-flags header, body)` of `GET url` through the proxy, with curl.
async fn get(proxy: SocketAddr, url: &str) -> (u16, String, String) {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let out = curl_command()
            .args([
                "-s",
                "-D",
                "-",
                "-x",
                &format!("http://{proxy}"),
                "--max-time",
                "10",
                &url,
            ])
            .output()
            .expect("curl is not installed: install curl (apt-get install curl; scripts/test does this)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let flags = text
            .lines()
            .find_map(|l| l.strip_prefix("x-meshentry-response-flags: "))
            .unwrap_or("")
            .trim()
            .to_string();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, flags, body)
    })
    .await
    .unwrap()
}

fn upstream_name(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["upstream"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn answers_are_cached_for_their_ttl() {
    let dns = TestDns::start(unique_loopback());
    let ip = unique_loopback();
    let web = HttpUpstream::start(SocketAddr::new(IpAddr::V4(ip), 80), "web");
    dns.set("cached.example.com", &[IpAddr::V4(ip)], 300);
    let proxy = start(&dns_service("cached", "cached.example.com", "DNS"), &dns).await;

    for _ in 0..20 {
        let (status, _, body) = get(proxy.http(), "http://cached.example.com/").await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(web.requests(), 20);
    // One query per record type the resolver asks for (A and AAAA), not one per request.
    let queries = dns.queries("cached.example.com");
    assert!(
        (1..=2).contains(&queries),
        "{queries} queries for 20 requests within the TTL"
    );
}

#[tokio::test]
async fn a_slow_dns_server_does_not_block_other_services() {
    let dns = TestDns::start(unique_loopback());
    let (fast_ip, slow_ip) = (unique_loopback(), unique_loopback());
    let _fast = HttpUpstream::start(SocketAddr::new(IpAddr::V4(fast_ip), 80), "fast");
    let _slow = HttpUpstream::start(SocketAddr::new(IpAddr::V4(slow_ip), 80), "slow");
    dns.set("fast.example.com", &[IpAddr::V4(fast_ip)], 300);
    dns.set("slow.example.com", &[IpAddr::V4(slow_ip)], 300);
    dns.set_delay_for("slow.example.com", Duration::from_secs(3));
    let config = dns_service("fast", "fast.example.com", "DNS") + &dns_service("slow", "slow.example.com", "DNS");
    let proxy = start(&config, &dns).await;

    // A request to the slow name is waiting on DNS...
    let slow_started = Instant::now();
    let slow = tokio::spawn(get(proxy.http(), "http://slow.example.com/"));
    eventually(Duration::from_secs(10), || async {
        dns.queries("slow.example.com") > 0
    })
    .await;
    // ...while requests to another DNS service go through: the first is answered while the
    // slow one still waits, and none takes anywhere near the 3 s a request held up behind the
    // slow lookup would.
    for i in 0..5 {
        let t = Instant::now();
        let (status, _, body) = get(proxy.http(), "http://fast.example.com/").await;
        assert_eq!(status, 200, "{body}");
        if i == 0 {
            assert!(!slow.is_finished(), "the fast request waited for the slow one");
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "fast request took {:?}",
            t.elapsed()
        );
    }
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream_name(&body), "slow");
    assert!(
        slow_started.elapsed() >= Duration::from_secs(2),
        "the slow name did wait for DNS"
    );
}

#[tokio::test]
async fn a_failing_dns_server_gives_503_df() {
    let dns = TestDns::start(unique_loopback());
    dns.set_failure_for("broken.example.com", Some(ResponseCode::ServFail));
    let proxy = start(&dns_service("broken", "broken.example.com", "DNS"), &dns).await;
    let (status, flags, body) = get(proxy.http(), "http://broken.example.com/").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(flags, "DF", "{body}");
    assert!(body.contains("broken.example.com"), "{body}");
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_addresses() {
    let dns = TestDns::start(unique_loopback());
    let ip = unique_loopback();
    let web = HttpUpstream::start(SocketAddr::new(IpAddr::V4(ip), 80), "web");
    // A one-second TTL so the entry goes stale quickly.
    dns.set("flaky.example.com", &[IpAddr::V4(ip)], 1);
    let proxy = start(&dns_service("flaky", "flaky.example.com", "DNS"), &dns).await;
    let (status, _, body) = get(proxy.http(), "http://flaky.example.com/").await;
    assert_eq!(status, 200, "{body}");

    dns.set_failure_for("flaky.example.com", Some(ResponseCode::ServFail));
    let before = dns.queries("flaky.example.com");
    // Keep sending past the TTL until a refresh has been asked and has failed: traffic keeps
    // flowing to the old address all along.
    eventually(Duration::from_secs(15), || async {
        let (status, _, body) = get(proxy.http(), "http://flaky.example.com/").await;
        assert_eq!(status, 200, "{body}");
        dns.queries("flaky.example.com") > before && proxy.stat("dns_failures_total").await > 0 && web.requests() >= 10
    })
    .await;
    // And after it.
    for _ in 0..3 {
        let (status, _, body) = get(proxy.http(), "http://flaky.example.com/").await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn dns_round_robin_uses_the_first_address_only() {
    let dns = TestDns::start(unique_loopback());
    let (first, second) = (unique_loopback(), unique_loopback());
    let a = HttpUpstream::start(SocketAddr::new(IpAddr::V4(first), 80), "first");
    let b = HttpUpstream::start(SocketAddr::new(IpAddr::V4(second), 80), "second");
    dns.set("rr.example.com", &[IpAddr::V4(first), IpAddr::V4(second)], 300);
    let proxy = start(&dns_service("rr", "rr.example.com", "DNS_ROUND_ROBIN"), &dns).await;
    for _ in 0..10 {
        let (status, _, body) = get(proxy.http(), "http://rr.example.com/").await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!((a.requests(), b.requests()), (10, 0));

    // STRICT_DNS (resolution: DNS) uses every address.
    let dns2 = TestDns::start(unique_loopback());
    dns2.set("all.example.com", &[IpAddr::V4(first), IpAddr::V4(second)], 300);
    let proxy2 = start(&dns_service("all", "all.example.com", "DNS"), &dns2).await;
    for _ in 0..40 {
        let (status, _, body) = get(proxy2.http(), "http://all.example.com/").await;
        assert_eq!(status, 200, "{body}");
    }
    eventually(Duration::from_secs(1), || async { b.requests() > 0 }).await;
    assert_eq!(a.requests() + b.requests(), 50);
}
