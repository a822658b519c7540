//! End-to-end VirtualService routing (issue 7, item 1) through the real binary with `curl -x`:
//! matches (uri, method, headers, query), weighted splits across DestinationRule subsets
//! (checked statistically), 404 when nothing matches, redirects, rewrites, header edits, faults,
//! retries against an upstream that fails on purpose, per-route timeouts and mirroring.
//!
//! Every upstream is on a 127.x address of the test's own and the proxy runs REGISTRY_ONLY with
//! a DNS server address where nothing listens, so nothing leaves loopback.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use meshentry_testutil::{HttpUpstream, Proxy, eventually, unique_loopback};

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");
use serde_json::Value;

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One request through the proxy with curl; the status, headers and body.
fn curl(proxy: SocketAddr, args: &[&str]) -> Reply {
    let proxy = format!("http://{proxy}");
    let out = meshentry_testutil::curl_command()
        .args(["-sS", "-i", "--max-time", "10", "-x", &proxy])
        .args(args)
        .output()
        .expect("these tests need curl on PATH");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?}: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (head, body) = stdout.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn admin(addr: SocketAddr, path: &str) -> String {
    let out = meshentry_testutil::curl_command()
        .args([
            "-sS",
            "--max-time",
            "10",
            "--noproxy",
            "*",
            &format!("http://{addr}{path}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stat(addr: SocketAddr, name: &str) -> u64 {
    let body = admin(addr, "/stats");
    let prefix = format!("meshentry.{name}: ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("/stats has no {name}:\n{body}"))
        .parse()
        .unwrap()
}

/// The configuration: `web.example.com` with endpoints labelled v1 and v2, `other.example.com`,
/// subsets v1/v2, and a VirtualService with one rule per feature.
fn config(v1: SocketAddr, v2: SocketAddr, other: SocketAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: default}}
spec:
  hosts: [web.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: "{v1ip}", ports: {{http: {v1port}}}, labels: {{version: v1}}}}
  - {{address: "{v2ip}", ports: {{http: {v2port}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: other, namespace: default}}
spec:
  hosts: [other.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: "{oip}", ports: {{http: {oport}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: default}}
spec:
  host: web.example.com
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}, trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: default}}
spec:
  hosts: [web.example.com]
  http:
  - name: jason
    match: [{{headers: {{x-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: other.example.com}}}}]
  - name: split
    match: [{{uri: {{prefix: /split}}}}]
    route:
    - {{destination: {{host: web.example.com, subset: v1}}, weight: 80}}
    - {{destination: {{host: web.example.com, subset: v2}}, weight: 20}}
  - name: v2
    match: [{{uri: {{exact: /v2}}}}]
    route: [{{destination: {{host: web.example.com, subset: v2}}}}]
  - name: post
    match: [{{method: {{exact: POST}}, uri: {{prefix: /post}}}}]
    route: [{{destination: {{host: other.example.com}}}}]
  - name: query
    match: [{{uri: {{prefix: /query}}, queryParams: {{to: {{exact: other}}}}}}]
    route: [{{destination: {{host: other.example.com}}}}]
  - name: regex
    match: [{{uri: {{regex: "/re/[0-9]+"}}}}]
    route: [{{destination: {{host: web.example.com, subset: v2}}}}]
  - name: redirect
    match: [{{uri: {{prefix: /old}}}}]
    redirect: {{uri: /new, authority: new.example.com}}
  - name: rewrite
    match: [{{uri: {{prefix: /rw/}}}}]
    rewrite: {{uri: /rewritten/}}
    headers:
      request: {{set: {{x-added: "yes"}}, remove: [x-drop]}}
      response: {{add: {{x-resp: r}}}}
    route: [{{destination: {{host: web.example.com, subset: v1}}}}]
  - name: abort
    match: [{{uri: {{prefix: /abort}}}}]
    fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: web.example.com, subset: v1}}}}]
  - name: delayed
    match: [{{uri: {{prefix: /delayed}}}}]
    fault: {{delay: {{fixedDelay: 400ms, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: web.example.com, subset: v1}}}}]
  - name: retry
    match: [{{uri: {{prefix: /fail/}}}}]
    retries: {{attempts: 3, retryOn: 5xx}}
    route: [{{destination: {{host: web.example.com, subset: v1}}}}]
  - name: timeout
    match: [{{uri: {{prefix: /delay/}}}}]
    timeout: 300ms
    route: [{{destination: {{host: web.example.com, subset: v1}}}}]
  - name: mirror
    match: [{{uri: {{prefix: /mirror}}}}]
    route: [{{destination: {{host: web.example.com, subset: v1}}}}]
    mirror: {{host: other.example.com}}
    mirrorPercentage: {{value: 100}}
  - name: missing
    match: [{{uri: {{prefix: /missing}}}}]
    route: [{{destination: {{host: web.example.com, subset: v9}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: unregistered, namespace: default}}
spec:
  hosts: [unregistered.example.com]
  http:
  - route: [{{destination: {{host: other.example.com}}}}]
"#,
        v1ip = v1.ip(),
        v1port = v1.port(),
        v2ip = v2.ip(),
        v2port = v2.port(),
        oip = other.ip(),
        oport = other.port(),
    )
}

struct Setup {
    proxy: Proxy,
    v1: HttpUpstream,
    v2: HttpUpstream,
    other: HttpUpstream,
}

async fn setup() -> Setup {
    let at = |ip| SocketAddr::new(IpAddr::V4(ip), 0);
    let v1 = HttpUpstream::start(at(unique_loopback()), "v1");
    let v2 = HttpUpstream::start(at(unique_loopback()), "v2");
    let other = HttpUpstream::start(at(unique_loopback()), "other");
    let proxy = Proxy::builder(BIN)
        .config(config(v1.addr(), v2.addr(), other.addr()))
        .args(["--outbound-policy", "REGISTRY_ONLY", "--workers", "2"])
        .start()
        .await;
    Setup { proxy, v1, v2, other }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_pick_the_rule_and_nothing_matching_is_404() {
    let s = setup().await;
    let p = s.proxy.http();
    // Header match wins over the later rules.
    let r = curl(p, &["-H", "x-user: jason", "http://web.example.com/split/1"]);
    assert_eq!((r.status, r.header("x-upstream")), (200, Some("other")), "{}", r.body);
    // Exact URI to a subset.
    for _ in 0..5 {
        let r = curl(p, &["http://web.example.com/v2"]);
        assert_eq!(r.header("x-upstream"), Some("v2"));
    }
    // Exact does not match a longer path; nothing else does either.
    let r = curl(p, &["http://web.example.com/v2x"]);
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("VirtualService default/web"), "{}", r.body);
    assert_eq!(r.header("x-meshentry-response-flags"), Some("NR"));
    // Method: GET /post matches nothing, POST goes to other.
    assert_eq!(curl(p, &["http://web.example.com/post"]).status, 404);
    let r = curl(p, &["-X", "POST", "-d", "x=1", "http://web.example.com/post"]);
    assert_eq!(r.header("x-upstream"), Some("other"));
    // Query parameters.
    assert_eq!(curl(p, &["http://web.example.com/query?to=nobody"]).status, 404);
    let r = curl(p, &["http://web.example.com/query?a=1&to=other"]);
    assert_eq!(r.header("x-upstream"), Some("other"));
    // Regex.
    assert_eq!(
        curl(p, &["http://web.example.com/re/42"]).header("x-upstream"),
        Some("v2")
    );
    assert_eq!(curl(p, &["http://web.example.com/re/x"]).status, 404);
    // A subset no DestinationRule defines: 503.
    let r = curl(p, &["http://web.example.com/missing"]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("outbound|80|v9|web.example.com"), "{}", r.body);
    // E1: a VirtualService host that is no service still routes on port 80.
    let r = curl(p, &["http://unregistered.example.com/x"]);
    assert_eq!((r.status, r.header("x-upstream")), (200, Some("other")), "{}", r.body);

    // /config_dump shows the rules, and the subset clusters count their requests.
    let dump = admin(s.proxy.admin, "/config_dump");
    assert!(dump.contains("\"virtualService\": \"default/web\""), "{dump}");
    assert!(dump.contains("outbound|80|v2|web.example.com"), "{dump}");
    let clusters: Value = serde_json::from_str(&admin(s.proxy.admin, "/clusters?format=json")).unwrap();
    let v2 = clusters["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "outbound|80|v2|web.example.com")
        .unwrap()
        .clone();
    assert_eq!(v2["requests"], 6, "{v2:#}");
    assert_eq!(v2["hosts"].as_array().unwrap().len(), 1, "{v2:#}");
    assert_eq!(s.v1.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_over_a_thousand_requests() {
    let s = setup().await;
    const N: usize = 1000;
    // One curl, one keep-alive connection, N requests (URL globbing).
    let out = meshentry_testutil::curl_command()
        .args(["-sS", "--max-time", "120", "-o", "/dev/null", "-x"])
        .arg(format!("http://{}", s.proxy.http()))
        .arg(format!("http://web.example.com/split/[1-{N}]"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (s.v1.requests(), s.v2.requests());
    assert_eq!(a + b, N);
    // Binomial(1000, 0.8): mean 800, sd 12.65; 5 sd either side fails with probability
    // 5.7e-7 when the split is right.
    assert!((737..=863).contains(&a), "v1 got {a} of {N}, v2 {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_rewrite_and_header_edits() {
    let s = setup().await;
    let p = s.proxy.http();
    let r = curl(p, &["http://web.example.com/old/page?a=1"]);
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("http://new.example.com/new?a=1"));
    assert_eq!(s.v1.requests() + s.v2.requests(), 0);

    let r = curl(p, &["-H", "x-drop: 1", "http://web.example.com/rw/thing?q=2"]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-resp"), Some("r"));
    let seen = r.json();
    assert_eq!(seen["upstream"], "v1");
    assert_eq!(seen["uri"], "/rewritten/thing?q=2");
    assert_eq!(seen["headers"]["x-added"], "yes");
    assert!(seen["headers"].get("x-drop").is_none(), "{seen:#}");
    assert_eq!(seen["host"], "web.example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_abort_and_delay() {
    let s = setup().await;
    let p = s.proxy.http();
    let r = curl(p, &["http://web.example.com/abort"]);
    assert_eq!(r.status, 418);
    assert_eq!(r.header("x-meshentry-response-flags"), Some("FI"));
    assert_eq!(s.v1.requests(), 0, "an aborted request never reaches the upstream");
    let t = Instant::now();
    let r = curl(p, &["http://web.example.com/delayed"]);
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(400), "{:?}", t.elapsed());
    assert_eq!(s.v1.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_timeouts() {
    let s = setup().await;
    let p = s.proxy.http();
    // Fails twice, then succeeds: the third try answers.
    let r = curl(p, &["http://web.example.com/fail/2/a"]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.v1.requests(), 3);
    // Fails more often than 1 + 3 tries: the last 503 comes back.
    let r = curl(p, &["http://web.example.com/fail/9/b"]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(s.v1.requests(), 3 + 4);
    assert_eq!(stat(s.proxy.admin, "upstream_retries_total"), 2 + 3);

    // A 300 ms route timeout against an upstream that takes 2 s.
    let t = Instant::now();
    let r = curl(p, &["http://web.example.com/delay/2000"]);
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.header("x-meshentry-response-flags"), Some("UT"));
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
    // Under the timeout it answers.
    assert_eq!(curl(p, &["http://web.example.com/delay/10"]).status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_sends_a_copy_and_ignores_its_answer() {
    let s = setup().await;
    let r = curl(s.proxy.http(), &["http://web.example.com/mirror/1"]);
    assert_eq!((r.status, r.header("x-upstream")), (200, Some("v1")));
    eventually(Duration::from_secs(5), || async { s.other.requests() == 1 }).await;
    let copy = s.other.last().unwrap();
    assert_eq!(copy.path, "/mirror/1");
    assert_eq!(copy.host.as_deref(), Some("web.example.com-shadow"));
}

/// E6 and `uriRegexRewrite`: `a.example.com`'s root VirtualService hands `/api` to a host-less
/// VirtualService in another namespace, whose rules pick backend 1 or 2; `/old/...` is
/// rewritten by regex.
fn delegate_config(one: SocketAddr, two: SocketAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: a, namespace: default}}
spec:
  hosts: [a.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: "{one_ip}", ports: {{http: {one_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: two, namespace: default}}
spec:
  hosts: [two.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: "{two_ip}", ports: {{http: {two_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: root, namespace: default}}
spec:
  hosts: [a.example.com]
  http:
  - name: old
    match: [{{uri: {{prefix: /old/}}}}]
    rewrite: {{uriRegexRewrite: {{match: "^/old/(.*)$", rewrite: '/new/\1'}}}}
    route: [{{destination: {{host: two.example.com}}}}]
  - name: api
    match: [{{uri: {{prefix: /api}}}}]
    delegate: {{name: api, namespace: team}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: team}}
spec:
  http:
  - name: v1
    match: [{{uri: {{prefix: /api/v1}}}}]
    route: [{{destination: {{host: a.example.com}}}}]
  - name: v2
    match: [{{uri: {{prefix: /api/v2}}}}]
    route: [{{destination: {{host: two.example.com}}}}]
  - name: outside
    match: [{{uri: {{prefix: /other}}}}]
    route: [{{destination: {{host: two.example.com}}}}]
"#,
        one_ip = one.ip(),
        one_port = one.port(),
        two_ip = two.ip(),
        two_port = two.port(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_virtual_service_and_regex_rewrite() {
    let at = |ip| SocketAddr::new(IpAddr::V4(ip), 0);
    let one = HttpUpstream::start(at(unique_loopback()), "one");
    let two = HttpUpstream::start(at(unique_loopback()), "two");
    let proxy = Proxy::builder(BIN)
        .config(delegate_config(one.addr(), two.addr()))
        .args(["--outbound-policy", "REGISTRY_ONLY"])
        .start()
        .await;
    let p = proxy.http();
    let r = curl(p, &["http://a.example.com/api/v1/users"]);
    assert_eq!((r.status, r.header("x-upstream")), (200, Some("one")), "{}", r.body);
    assert_eq!(r.json()["uri"], "/api/v1/users");
    let r = curl(p, &["http://a.example.com/api/v2/users?x=1"]);
    assert_eq!((r.status, r.header("x-upstream")), (200, Some("two")), "{}", r.body);
    assert_eq!(r.json()["uri"], "/api/v2/users?x=1");
    // Under /api but in no delegate rule, and outside /api: no route. The delegate's
    // `/other` rule conflicts with the root's `/api` and is dropped, as in Istio.
    for path in ["/api/v3", "/other"] {
        let r = curl(p, &[&format!("http://a.example.com{path}")]);
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert_eq!(r.header("x-meshentry-response-flags"), Some("NR"));
    }
    assert_eq!((one.requests(), two.requests()), (1, 1));
    // uriRegexRewrite: the backend sees the rewritten path, the query kept.
    let r = curl(p, &["http://a.example.com/old/some/page?q=2"]);
    assert_eq!((r.status, r.header("x-upstream")), (200, Some("two")), "{}", r.body);
    assert_eq!(r.json()["uri"], "/new/some/page?q=2");
    let dump = admin(proxy.admin, "/config_dump");
    assert!(dump.contains("team/api: http[2]'s match is not within"), "{dump}");
}
