//! Kubernetes Services through the real `meshentry proxy`: a Service, its EndpointSlice and
//! its Pods (as `kubectl get svc,endpointslices,pods -o yaml` exports them) make the service
//! `reviews.default.svc.cluster.local`, which a VirtualService routes by DestinationRule
//! subset (Pod labels), driven by curl through `--http-proxy`; and its ClusterIP routes a
//! CONNECT tunnel to the endpoints, as a captured connection to the VIP would be.
//!
//! Every address is a 127.x address the test owns; the VIP is one nobody listens on, so a
//! connection that reached it instead of an endpoint would fail. A not-ready endpoint runs a
//! real server too, which must never be used.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use meshentry_testutil::{HttpUpstream, Proxy, TestDns, raw, unique_loopback};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const HOST: &str = "reviews.default.svc.cluster.local";
const PORT: u16 = 9080;

/// The cluster's objects: the Service (ClusterIP `vip`), one EndpointSlice with a ready
/// endpoint per version and a not-ready one, the Pods, then the mesh's routing.
fn cluster(vip: Ipv4Addr, v1: Ipv4Addr, v2: Ipv4Addr, not_ready: Ipv4Addr) -> String {
    let pod = |name: &str, version: &str, at: Ipv4Addr| {
        format!(
            "- apiVersion: v1
  kind: Pod
  metadata:
    name: {name}
    namespace: default
    labels: {{app: reviews, version: {version}}}
  spec:
    serviceAccountName: bookinfo-reviews
    containers: [{{name: reviews, image: reviews, ports: [{{containerPort: {PORT}, protocol: TCP}}]}}]
  status:
    phase: Running
    podIP: {at}
    podIPs: [{{ip: {at}}}]
"
        )
    };
    format!(
        "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {{name: reviews, namespace: default, labels: {{app: reviews}}}}
  spec:
    type: ClusterIP
    clusterIP: {vip}
    clusterIPs: [{vip}]
    selector: {{app: reviews}}
    ports: [{{name: http, port: {PORT}, protocol: TCP, targetPort: {PORT}}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: reviews-x8k2p
    namespace: default
    labels: {{kubernetes.io/service-name: reviews, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io}}
  addressType: IPv4
  endpoints:
  - addresses: [{v1}]
    conditions: {{ready: true, serving: true, terminating: false}}
    targetRef: {{kind: Pod, name: reviews-v1-abc, namespace: default}}
  - addresses: [{v2}]
    conditions: {{ready: true, serving: true, terminating: false}}
    targetRef: {{kind: Pod, name: reviews-v2-def, namespace: default}}
  - addresses: [{not_ready}]
    conditions: {{ready: false, serving: false, terminating: false}}
    targetRef: {{kind: Pod, name: reviews-v3-ghi, namespace: default}}
  ports: [{{name: http, port: {PORT}, protocol: TCP}}]
{}{}{}",
        pod("reviews-v1-abc", "v1", v1),
        pod("reviews-v2-def", "v2", v2),
        pod("reviews-v3-ghi", "v3", not_ready),
    )
}

/// Requests from `jason` go to v2, the rest to v1, by subsets of Pod labels.
const ROUTING: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews.default.svc.cluster.local, subset: v2}}]
  - match: [{headers: {end-user: {exact: nobody}}}]
    route: [{destination: {host: reviews.default.svc.cluster.local, subset: v3}}]
  - route: [{destination: {host: reviews.default.svc.cluster.local, subset: v1}}]
";

struct Setup {
    proxy: Proxy,
    vip: Ipv4Addr,
    v1: HttpUpstream,
    v2: HttpUpstream,
    not_ready: HttpUpstream,
    _dns: TestDns,
}

async fn setup() -> Setup {
    let dns = TestDns::start(unique_loopback());
    let (vip, v1_at, v2_at, v3_at) = (
        unique_loopback(),
        unique_loopback(),
        unique_loopback(),
        unique_loopback(),
    );
    let up = |at: Ipv4Addr, name: &str| HttpUpstream::start(SocketAddr::new(IpAddr::V4(at), PORT), name);
    let (v1, v2, not_ready) = (
        up(v1_at, "reviews-v1"),
        up(v2_at, "reviews-v2"),
        up(v3_at, "reviews-v3"),
    );
    let proxy = Proxy::builder(BIN)
        .file("cluster.yaml", cluster(vip, v1_at, v2_at, v3_at))
        .file("routing.yaml", ROUTING)
        .dns(dns.addr())
        .args(["--outbound-policy", "REGISTRY_ONLY"])
        .start()
        .await;
    Setup {
        proxy,
        vip,
        v1,
        v2,
        not_ready,
        _dns: dns,
    }
}

/// `curl -x PROXY http://reviews...:9080/ [-H header]`: (status, the upstream that answered).
async fn curl_reviews(proxy: &Proxy, header: Option<&str>) -> (u16, String) {
    let mut args = vec![
        "-sS".to_string(),
        "--max-time".into(),
        "20".into(),
        "-x".into(),
        format!("http://{}", proxy.http()),
        "-o".into(),
        "/dev/null".into(),
        "-D".into(),
        "-".into(),
        format!("http://{HOST}:{PORT}/reviews/0"),
    ];
    if let Some(h) = header {
        args.extend(["-H".to_string(), h.to_string()]);
    }
    let out = tokio::task::spawn_blocking(move || meshentry_testutil::curl_command().args(&args).output())
        .await
        .unwrap()
        .expect("curl runs (apt-get install curl; scripts/test does this)");
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl failed: {head} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let upstream = head
        .lines()
        .find_map(|l| l.strip_prefix("x-upstream: "))
        .unwrap_or("-")
        .trim()
        .to_string();
    (status, upstream)
}

#[tokio::test]
async fn a_virtual_service_routes_a_kubernetes_service_by_pod_label_subsets() {
    let s = setup().await;
    for _ in 0..4 {
        assert_eq!(curl_reviews(&s.proxy, None).await, (200, "reviews-v1".to_string()));
        assert_eq!(
            curl_reviews(&s.proxy, Some("end-user: jason")).await,
            (200, "reviews-v2".to_string())
        );
    }
    // The v3 Pod's endpoint is not ready: its subset has no endpoint, as in Istio.
    let (status, upstream) = curl_reviews(&s.proxy, Some("end-user: nobody")).await;
    assert_eq!((status, upstream.as_str()), (503, "-"));
    assert_eq!((s.v1.requests(), s.v2.requests(), s.not_ready.requests()), (4, 4, 0));
}

#[tokio::test]
async fn the_cluster_ip_routes_a_tunnel_to_the_endpoints() {
    let s = setup().await;
    for (user, upstream) in [
        ("", "reviews-v1"),
        ("end-user: jason\r\n", "reviews-v2"),
        ("", "reviews-v1"),
    ] {
        // A CONNECT to the VIP, as a captured connection to it: the service is found by its
        // address, and the request inside by its Host, which the VirtualService routes.
        let target = format!("{}:{PORT}", s.vip);
        let mut tunnel = raw::tunnel(s.proxy.http(), &target, IO_TIMEOUT).await.unwrap();
        let request = format!("GET /by-vip HTTP/1.1\r\nHost: {HOST}:{PORT}\r\n{user}Connection: close\r\n\r\n");
        tunnel.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(IO_TIMEOUT, tunnel.read_to_end(&mut response))
            .await
            .unwrap()
            .unwrap();
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains(&format!("x-upstream: {upstream}")), "{response}");
    }
    assert_eq!((s.v1.requests(), s.v2.requests(), s.not_ready.requests()), (2, 1, 0));
}

#[tokio::test]
async fn cluster_domain_names_the_services_and_expands_short_names() {
    let dns = TestDns::start(unique_loopback());
    let (vip, v1_at, v2_at, v3_at) = (
        unique_loopback(),
        unique_loopback(),
        unique_loopback(),
        unique_loopback(),
    );
    let up = |at: Ipv4Addr, name: &str| HttpUpstream::start(SocketAddr::new(IpAddr::V4(at), PORT), name);
    let (v1, v2) = (up(v1_at, "reviews-v1"), up(v2_at, "reviews-v2"));
    // The routing names the service by its short name: `reviews` in `default` is
    // reviews.default.svc.corp.internal under --cluster-domain corp.internal.
    let routing = ROUTING.replace(HOST, "reviews");
    let proxy = Proxy::builder(BIN)
        .file("cluster.yaml", cluster(vip, v1_at, v2_at, v3_at))
        .file("routing.yaml", routing)
        .dns(dns.addr())
        .args([
            "--outbound-policy",
            "REGISTRY_ONLY",
            "--cluster-domain",
            "corp.internal",
        ])
        .start()
        .await;
    let hosts: Vec<String> = proxy.config_dump().await["registry"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["host"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hosts, ["reviews.default.svc.corp.internal"]);
    let get = |header: &'static str| {
        let url = format!("http://reviews.default.svc.corp.internal:{PORT}/");
        let proxy_url = format!("http://{}", proxy.http());
        async move {
            let out = tokio::task::spawn_blocking(move || {
                meshentry_testutil::curl_command()
                    .args(["-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}", "-x"])
                    .args([&proxy_url, &url, "-H", header])
                    .output()
            })
            .await
            .unwrap()
            .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    assert_eq!(get("end-user: jason").await, "200");
    assert_eq!(get("end-user: someone").await, "200");
    assert_eq!((v1.requests(), v2.requests()), (1, 1), "jason to v2, the rest to v1");
}
