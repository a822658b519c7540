//! Bodies are streamed through the proxy, never buffered whole; and a DestinationRule with
//! `loadBalancer.simple: PASSTHROUGH` sends traffic to the destination the client asked for.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, SocketAddr};

use meshentry_testutil::{HttpUpstream, Proxy, curl_command, unique_loopback};

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");

async fn start(config: &str) -> Proxy {
    Proxy::builder(BIN)
        .config(config)
        .args(["--outbound-policy", "REGISTRY_ONLY"])
        .start()
        .await
}

fn curl(args: &[&str]) -> String {
    let out = curl_command()
        .args(args)
        .output()
        .expect("curl is not installed: install curl (apt-get install curl; scripts/test does this)");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Peak resident memory of a process, from /proc (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn large_bodies_are_streamed_not_buffered() {
    let ip = unique_loopback();
    let web = HttpUpstream::start(SocketAddr::new(IpAddr::V4(ip), 80), "big");
    let config = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: big}}
spec:
  hosts: [big.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {ip}}}]
"
    );
    let proxy = start(&config).await;
    let before = peak_rss_kib(proxy.process.pid());
    let proxy_url = proxy.url();

    // 64 MiB down, counted by curl.
    const DOWN: u64 = 64 * 1024 * 1024;
    let url = format!("http://big.example.com/bytes/{DOWN}");
    let p = proxy_url.clone();
    let size =
        tokio::task::spawn_blocking(move || curl(&["-s", "-x", &p, "-o", "/dev/null", "-w", "%{size_download}", &url]))
            .await
            .unwrap();
    assert_eq!(size.trim().parse::<u64>().unwrap(), DOWN);

    // 5 MiB up (the test upstream keeps what it receives, so the check is on its side).
    const UP: usize = 5 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload.bin");
    std::fs::write(&file, vec![b'u'; UP]).unwrap();
    let data = format!("@{}", file.display());
    let p = proxy_url.clone();
    tokio::task::spawn_blocking(move || {
        curl(&[
            "-s",
            "-x",
            &p,
            "-o",
            "/dev/null",
            "--data-binary",
            &data,
            "http://big.example.com/upload",
        ])
    })
    .await
    .unwrap();
    let seen = web.last().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body.len(), UP);

    // Buffering either body whole would add at least its size to the proxy's peak.
    let grew_kib = peak_rss_kib(proxy.process.pid()).saturating_sub(before);
    assert!(
        grew_kib < 16 * 1024,
        "the proxy's peak RSS grew by {grew_kib} KiB while relaying 69 MiB"
    );
}

#[tokio::test]
async fn destination_rule_passthrough_dials_the_requested_address() {
    // The service's VIP is where the client sends traffic; its configured endpoint is a
    // different address where nothing listens. PASSTHROUGH must ignore the endpoint.
    let vip = unique_loopback();
    let endpoint = unique_loopback();
    let at_vip = HttpUpstream::start(SocketAddr::new(IpAddr::V4(vip), 8080), "original-destination");
    let config = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: legacy}}
spec:
  hosts: [legacy.example.com]
  addresses: [{vip}]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {endpoint}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: legacy}}
spec:
  host: legacy.example.com
  trafficPolicy:
    loadBalancer:
      simple: PASSTHROUGH
"
    );
    let proxy = start(&config).await;
    let p = proxy.url();
    let url = format!("http://{vip}:8080/direct");
    let body = tokio::task::spawn_blocking(move || curl(&["-s", "-x", &p, &url]))
        .await
        .unwrap();
    assert!(body.contains("\"upstream\":\"original-destination\""), "{body}");
    assert_eq!(at_vip.requests(), 1);
    assert_eq!(at_vip.last().unwrap().path, "/direct");
}
