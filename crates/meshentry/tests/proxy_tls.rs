//! Issue 6 end to end: TLS origination through the real `meshentry proxy` binary, driven by real
//! clients (curl for HTTP, raw CONNECT over tokio for TCP), against real TLS servers on 127.x
//! addresses: HTTP->HTTPS origination on pooled connections, server verification (chain, name,
//! expiry, subjectAltNames, insecureSkipVerify), MUTUAL with the rule's files, ISTIO_MUTUAL
//! with identities from `meshentry ca`, the seed's MongoDB pair over a TLS-terminating echo
//! server, and certificate reloads that leave open connections alone.
//!
//! Every test owns its loopback addresses, its PKI and its proxy process, so tests run in
//! parallel. Proxies run with REGISTRY_ONLY and STATIC endpoints on 127.x, so a routing bug is a
//! refusal rather than traffic to some other address.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use meshentry_proxy::tls::{load_certs, load_key};
use meshentry_testutil::pki::{LeafPaths, server_config};
use meshentry_testutil::{LeafSpec, PemDir, TestCa, TlsEcho, TlsUpstream, eventually, raw, unique_loopback};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The proxy

struct Proxy {
    inner: meshentry_testutil::Proxy,
}

impl Proxy {
    /// Starts the proxy on `yaml` with REGISTRY_ONLY, two workers (so pooling bounds are known),
    /// a DNS server on loopback that nothing needs, and `extra` flags.
    async fn start(yaml: &str, extra: &[&str]) -> Proxy {
        let inner = meshentry_testutil::Proxy::builder(BIN)
            .config(yaml)
            .args(["--outbound-policy", "REGISTRY_ONLY", "--workers", "2"])
            .args(extra.iter().copied())
            .start()
            .await;
        Proxy { inner }
    }

    fn url(&self) -> String {
        format!("http://{}", self.inner.http())
    }

    fn stderr(&self) -> String {
        self.inner.process.stderr()
    }

    /// `curl -x PROXY url...` in one curl run (one client connection, kept alive).
    async fn get(&self, urls: &[&str]) -> Vec<Reply> {
        let mut args = vec!["-x".to_string(), self.url()];
        args.extend(urls.iter().map(|u| u.to_string()));
        let replies = curl(args).await;
        assert_eq!(replies.len(), urls.len(), "{replies:?}");
        replies
    }

    /// One `GET url` through the proxy.
    async fn get1(&self, url: &str) -> Reply {
        self.get(&[url]).await.remove(0)
    }

    async fn admin(&self, path: &str) -> Reply {
        curl(vec![
            "--noproxy".into(),
            "*".into(),
            format!("http://{}{path}", self.inner.admin),
        ])
        .await
        .remove(0)
    }

    /// A counter of `/stats` (`meshentry.<name>: <value>`).
    async fn stat(&self, name: &str) -> u64 {
        let r = self.admin("/stats").await;
        assert_eq!(r.status, 200, "/stats: {r:?}");
        let prefix = format!("meshentry.{name}: ");
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("/stats has no {name}:\n{}", r.body))
            .trim()
            .parse()
            .unwrap()
    }

    /// Cluster `name` of `/clusters?format=json`.
    async fn cluster(&self, name: &str) -> Value {
        let r = self.admin("/clusters?format=json").await;
        assert_eq!(r.status, 200, "/clusters: {r:?}");
        let all: Value = serde_json::from_str(&r.body).unwrap();
        all["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("/clusters has no {name}: {all:#}"))
            .clone()
    }

    /// Waits until the log has a line containing every one of `words`.
    async fn wait_log(&self, words: &[&str]) {
        eventually(WAIT, || async {
            let log = self.stderr();
            log.lines()
                .any(|l| words.iter().all(|w| l.contains(w)))
                .then_some(())
                .ok_or_else(|| format!("no log line with {words:?} in:\n{log}"))
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// curl

/// One response as curl reported it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// Connections curl opened for this transfer (0: it reused the previous one).
    connects: u32,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    /// A 503 for a failed upstream connection whose reason contains every one of `words`.
    fn assert_connect_failure(&self, words: &[&str]) {
        assert_eq!(self.status, 503, "{self:?}");
        assert_eq!(self.header("x-meshentry-response-flags"), Some("UF"), "{self:?}");
        assert!(self.body.contains("upstream connect error"), "{self:?}");
        for w in words {
            assert!(self.body.contains(w), "the reason lacks {w:?}: {}", self.body);
        }
    }
}

/// Ends each transfer's output, followed by its status and connection count.
const MARK: &str = "\n@@meshentry-end@@";

/// Runs curl (isolated from the environment: `-q` skips ~/.curlrc, proxy variables removed) on
/// `args`, off the async runtime; one [`Reply`] per transfer.
async fn curl(args: Vec<String>) -> Vec<Reply> {
    tokio::task::spawn_blocking(move || {
        let mut cmd = meshentry_testutil::curl_command();
        cmd.args(["-sS", "-i", "--max-time", "15", "-w"])
            .arg(format!("{MARK} %{{http_code}} %{{num_connects}}\n"))
            .args(&args);
        let out = match cmd.output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("these tests need curl as a real client: apt-get install curl (scripts/test does)")
            }
            Err(e) => panic!("cannot run curl: {e}"),
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl {args:?} failed ({}): {}{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut replies = Vec::new();
        let mut rest = stdout.as_str();
        while let Some((transfer, after)) = rest.split_once(MARK) {
            let (tail, next) = after.split_once('\n').unwrap();
            rest = next;
            let mut nums = tail.split_whitespace();
            let status = nums.next().unwrap().parse().unwrap();
            let connects = nums.next().unwrap().parse().unwrap();
            let (head, body) = transfer
                .split_once("\r\n\r\n")
                .unwrap_or_else(|| panic!("no response head in {transfer:?}"));
            let headers = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            replies.push(Reply {
                status,
                headers,
                body: body.to_string(),
                connects,
            });
        }
        replies
    })
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// A client that keeps its connection to the proxy

/// One client connection to the proxy, sending absolute-form requests on it in turn.
struct Client {
    sender: SendRequest<Empty<Bytes>>,
}

impl Client {
    async fn connect(proxy: SocketAddr) -> Client {
        let tcp = TcpStream::connect(proxy).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { sender }
    }

    /// `GET url` on this connection: the status and the body as JSON.
    async fn get(&mut self, url: &str) -> (u16, Value) {
        let uri: http::Uri = url.parse().unwrap();
        let host = uri.authority().unwrap().to_string();
        let req = Request::get(uri).header("host", host).body(Empty::new()).unwrap();
        self.sender
            .ready()
            .await
            .unwrap_or_else(|e| panic!("the proxy closed the kept-alive connection: {e}"));
        let resp = tokio::time::timeout(IO_TIMEOUT, self.sender.send_request(req))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("GET {url} on the kept-alive connection: {e}"));
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {}", String::from_utf8_lossy(&body)));
        (status, json)
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// A ServiceEntry in `default` for `host`, port 80 speaking HTTP to the application, whose
/// endpoints `eps` serve TLS on 443 (`targetPort`), the common Istio origination pattern.
/// `extra` is appended to the spec (e.g. `subjectAltNames`).
fn entry(host: &str, eps: &[Ipv4Addr], extra: &str) -> String {
    let eps: Vec<String> = eps.iter().map(|e| format!("{{address: {e}}}")).collect();
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 443}}]
  resolution: STATIC
  endpoints: [{eps}]
{extra}
"#,
        name = host.replace('.', "-"),
        eps = eps.join(", ")
    )
}

/// A DestinationRule for `host` whose port 80 settings originate TLS with `tls` (a YAML flow
/// mapping). `lb`, if any, is the port's load balancer.
fn rule(host: &str, tls: &str, lb: Option<&str>) -> String {
    let lb = lb.map_or(String::new(), |lb| format!("      loadBalancer: {{simple: {lb}}}\n"));
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: {host}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
{lb}      tls: {tls}
"#,
        name = host.replace('.', "-")
    )
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A DR `tls` mapping for SIMPLE verified against `ca`.
fn simple(ca: &Path) -> String {
    format!("{{mode: SIMPLE, caCertificates: {:?}}}", path(ca))
}

/// The text of a seed example, e.g. `seed("12-serviceentry-httpbin.yaml")` (v1beta1).
fn seed(file: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/seed/v1beta1")
        .join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Replaces `from` by `to`, insisting `from` is there: if the seed example changes, the test
/// fails loudly rather than running with a non-loopback address left in.
fn replace(yaml: &str, from: &str, to: &str) -> String {
    assert!(yaml.contains(from), "seed example no longer contains {from:?}:\n{yaml}");
    yaml.replace(from, to)
}

fn on(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

// ---------------------------------------------------------------------------------------------
// 1. HTTP from the application, HTTPS upstream

#[tokio::test]
async fn plain_http_is_originated_as_https_over_pooled_connections() {
    let ca = TestCa::new("origination CA");
    let pem = PemDir::new();
    let ca_file = pem.ca(&ca);
    let ep = unique_loopback();
    let leaf = ca.issue(LeafSpec::server(["api.example.com", "www.example.com"]));
    // The server would take h2 if offered: the proxy must offer only what it will speak.
    let mut config = (*server_config(&leaf, None)).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let up = TlsUpstream::start(on(ep, 443), "api", Arc::new(config));
    // www.example.com reaches the same server through the endpoint's port map instead.
    let www = format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: www, namespace: default}}
spec:
  hosts: [www.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {ep}, ports: {{http: 443}}}}]
"#
    );
    let yaml = [
        entry("api.example.com", &[ep], ""),
        rule("api.example.com", &simple(&ca_file), None),
        www,
        rule("www.example.com", &simple(&ca_file), None),
    ]
    .concat();
    let proxy = Proxy::start(&yaml, &[]).await;

    // Three requests on one client connection: HTTPS upstream, one TLS connection for all.
    let urls = [
        "http://api.example.com/one",
        "http://api.example.com/two",
        "http://api.example.com/three",
    ];
    let replies = proxy.get(&urls).await;
    for (r, url) in replies.iter().zip(urls) {
        assert_eq!(r.status, 200, "{url}: {r:?}");
        let json = r.json();
        assert_eq!(json["upstream"], "api");
        assert_eq!(json["path"], url.trim_start_matches("http://api.example.com"));
        assert_eq!(json["host"], "api.example.com");
        assert_eq!(json["version"], "HTTP/1.1");
        assert_eq!(json["tls"]["sni"], "api.example.com", "{json}");
        assert_eq!(json["tls"]["alpn"], "http/1.1", "{json}");
        assert_eq!(json["tls"]["client_cert"], false, "{json}");
        assert_eq!(
            json["connection"], 1,
            "every request on the first TLS connection: {json}"
        );
    }
    assert_eq!(
        replies.iter().map(|r| r.connects).collect::<Vec<_>>(),
        [1, 0, 0],
        "curl kept its connection to the proxy"
    );
    assert_eq!(up.connections(), 1);
    assert_eq!(up.requests(), 3);
    let seen = up.handshakes();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].sni.as_deref(), Some("api.example.com"));

    let cluster = proxy.cluster("outbound|80||api.example.com").await;
    let host = &cluster["hosts"][0];
    assert_eq!(host["address"], on(ep, 443).to_string(), "{cluster:#}");
    assert_eq!(host["requests"], 3, "{cluster:#}");
    assert_eq!(host["connections"], 1, "cx_total: one TLS connection: {cluster:#}");

    // Another client connection may land on the other worker, which has a pool of its own: at
    // most one more upstream connection, and the proxy's count agrees with the server's.
    for r in proxy
        .get(&["http://api.example.com/four", "http://api.example.com/five"])
        .await
    {
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert!(up.connections() <= 2, "{} upstream connections", up.connections());
    let cluster = proxy.cluster("outbound|80||api.example.com").await;
    assert_eq!(
        cluster["hosts"][0]["connections"],
        up.connections() as u64,
        "{cluster:#}"
    );
    assert_eq!(cluster["hosts"][0]["requests"], 5, "{cluster:#}");

    // The endpoint's port map works the same, with its own host name as SNI.
    let r = proxy.get1("http://www.example.com/w").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["tls"]["sni"], "www.example.com");
    assert_eq!(r.json()["host"], "www.example.com");
    assert_eq!(up.last_sni().as_deref(), Some("www.example.com"));
    assert_eq!(proxy.stat("upstream_tls_errors_total").await, 0);
}

// ---------------------------------------------------------------------------------------------
// 2. SIMPLE: the server is verified

#[tokio::test]
async fn simple_tls_verifies_the_server() {
    let ca = TestCa::new("trusted CA");
    let other = TestCa::new("someone else");
    let pem = PemDir::new();
    let ca_file = pem.ca(&ca);
    let tls = simple(&ca_file);
    let start = |leaf: &meshentry_testutil::Leaf, name: &str| {
        let ip = unique_loopback();
        (ip, TlsUpstream::start(on(ip, 443), name, server_config(leaf, None)))
    };
    let (good_ip, good) = start(
        &ca.issue(LeafSpec::server(["good.example.com", "failover.example.com"])),
        "good",
    );
    let (untrusted_ip, untrusted) = start(&other.issue(LeafSpec::server(["untrusted.example.com"])), "untrusted");
    let (wrong_ip, wrong) = start(&ca.issue(LeafSpec::server(["other.example.com"])), "wrong-name");
    let expired_leaf = ca.issue(LeafSpec {
        not_after: Some(UNIX_EPOCH + Duration::from_secs(1_600_000_000)),
        ..LeafSpec::server(["expired.example.com"])
    });
    let (expired_ip, expired) = start(&expired_leaf, "expired");
    let (pinned_ip, pinned) = start(&ca.issue(LeafSpec::server(["backend.internal"])), "pinned");
    let se_id = "spiffe://cluster.local/ns/external/sa/api";
    let se_leaf = ca.issue(LeafSpec {
        uri_sans: vec![se_id.into()],
        ..LeafSpec::default()
    });
    let (se_ip, se_pinned) = start(&se_leaf, "se-pinned");
    let (skip_ip, skip) = start(&other.issue(LeafSpec::server(["nobody.invalid"])), "skip");

    let yaml = [
        entry("good.example.com", &[good_ip], ""),
        rule("good.example.com", &tls, None),
        entry("untrusted.example.com", &[untrusted_ip], ""),
        rule("untrusted.example.com", &tls, None),
        entry("wrongname.example.com", &[wrong_ip], ""),
        rule("wrongname.example.com", &tls, None),
        entry("expired.example.com", &[expired_ip], ""),
        rule("expired.example.com", &tls, None),
        // The DR's subjectAltNames replace the host name check.
        entry("pinned.example.com", &[pinned_ip], ""),
        rule(
            "pinned.example.com",
            &format!(
                "{{mode: SIMPLE, caCertificates: {:?}, subjectAltNames: [backend.internal]}}",
                path(&ca_file)
            ),
            None,
        ),
        entry("pinned-wrong.example.com", &[pinned_ip], ""),
        rule(
            "pinned-wrong.example.com",
            &format!(
                "{{mode: SIMPLE, caCertificates: {:?}, subjectAltNames: [db.internal]}}",
                path(&ca_file)
            ),
            None,
        ),
        // Without names in the DR, the ServiceEntry's are checked.
        entry(
            "se-pinned.example.com",
            &[se_ip],
            &format!("  subjectAltNames: [{se_id:?}]"),
        ),
        rule("se-pinned.example.com", &tls, None),
        entry("skip.example.com", &[skip_ip], ""),
        rule(
            "skip.example.com",
            // Istio refuses caCertificates or subjectAltNames next to insecureSkipVerify.
            "{mode: SIMPLE, insecureSkipVerify: true}",
            None,
        ),
        // A host that fails TLS is one refusal among the endpoints: the next one is tried.
        entry("failover.example.com", &[untrusted_ip, good_ip], ""),
        rule("failover.example.com", &tls, Some("ROUND_ROBIN")),
    ]
    .concat();
    let proxy = Proxy::start(&yaml, &[]).await;
    proxy
        .wait_log(&["outbound|80||skip.example.com", "insecureSkipVerify", "not checked"])
        .await;

    let r = proxy.get1("http://good.example.com/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["tls"]["sni"], "good.example.com");

    let r = proxy.get1("http://untrusted.example.com/").await;
    r.assert_connect_failure(&[
        "untrusted.example.com:80 via outbound|80||untrusted.example.com",
        "TLS error",
        "unknown CA",
        "(tried 1 endpoint)",
    ]);
    let r = proxy.get1("http://wrongname.example.com/").await;
    r.assert_connect_failure(&["TLS error", "SAN mismatch"]);
    let r = proxy.get1("http://expired.example.com/").await;
    r.assert_connect_failure(&["TLS error", "expired"]);
    for server in [&untrusted, &wrong, &expired] {
        assert_eq!(server.requests(), 0, "{} got a request", server.name());
        assert_eq!(server.handshakes().len(), 0, "{} completed a handshake", server.name());
    }
    assert_eq!(proxy.stat("upstream_tls_errors_total").await, 3);
    let cluster = proxy.cluster("outbound|80||expired.example.com").await;
    assert_eq!(cluster["connectFailures"], 1, "{cluster:#}");
    assert_eq!(cluster["hosts"][0]["connectFailures"], 1, "{cluster:#}");

    // subjectAltNames pin a name the certificate has; the request's host is the SNI.
    let r = proxy.get1("http://pinned.example.com/p").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["upstream"], "pinned");
    assert_eq!(r.json()["tls"]["sni"], "pinned.example.com");
    let r = proxy.get1("http://pinned-wrong.example.com/p").await;
    r.assert_connect_failure(&["SAN mismatch", "db.internal", "backend.internal"]);
    assert_eq!(pinned.requests(), 1);

    let r = proxy.get1("http://se-pinned.example.com/s").await;
    assert_eq!(r.status, 200, "the ServiceEntry's subjectAltNames apply: {r:?}");
    assert_eq!(se_pinned.requests(), 1);

    let r = proxy.get1("http://skip.example.com/k").await;
    assert_eq!(r.status, 200, "insecureSkipVerify accepts anything: {r:?}");
    assert_eq!(skip.requests(), 1);
    assert_eq!(proxy.stat("upstream_tls_errors_total").await, 4);

    // Round robin puts the untrusted endpoint first for at least one of four requests (each
    // from a new client); every one is still answered, by the good server.
    let before_good = good.requests();
    for i in 0..4 {
        let r = proxy.get1(&format!("http://failover.example.com/{i}")).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["upstream"], "good");
    }
    assert_eq!(good.requests(), before_good + 4);
    assert!(proxy.stat("upstream_tls_errors_total").await >= 5);
    assert_eq!(untrusted.requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// 3. MUTUAL: the rule's client certificate

/// A server demanding a client certificate from `ca`, for `hosts`, on an address of its own.
fn mtls_server(ca: &TestCa, hosts: &[&str]) -> (Ipv4Addr, TlsUpstream) {
    let ep = unique_loopback();
    let leaf = ca.issue(LeafSpec::server(hosts.iter().copied()));
    (
        ep,
        TlsUpstream::start(on(ep, 443), "mtls", server_config(&leaf, Some(ca))),
    )
}

/// A DR `tls` mapping for MUTUAL with `client`'s files, verifying the server against `ca`.
fn mutual(client: &LeafPaths, ca: &Path) -> String {
    format!(
        "{{mode: MUTUAL, clientCertificate: {:?}, privateKey: {:?}, caCertificates: {:?}}}",
        path(&client.cert),
        path(&client.key),
        path(ca)
    )
}

#[tokio::test]
async fn mutual_tls_presents_the_rules_client_certificate() {
    let ca = TestCa::new("db CA");
    let pem = PemDir::new();
    let ca_file = pem.ca(&ca);
    let (ep, up) = mtls_server(&ca, &["mtls.example.com"]);
    let app_id = "spiffe://cluster.local/ns/default/sa/app";
    let client = pem.leaf(&ca.issue(LeafSpec::client(app_id)), "client");
    let yaml = [
        entry("mtls.example.com", &[ep], ""),
        rule("mtls.example.com", &mutual(&client, &ca_file), None),
        entry("credential.example.com", &[ep], ""),
        rule(
            "credential.example.com",
            "{mode: SIMPLE, credentialName: credential-secret}",
            None,
        ),
    ]
    .concat();
    // The proxy starts despite credentialName, and says why that cluster cannot originate.
    let proxy = Proxy::start(&yaml, &[]).await;
    proxy
        .wait_log(&[
            "outbound|80||credential.example.com",
            "credentialName",
            "--kubernetes-secrets",
        ])
        .await;

    let r = proxy.get1("http://mtls.example.com/m").await;
    assert_eq!(r.status, 200, "{r:?}");
    let json = r.json();
    assert_eq!(json["tls"]["client_cert"], true, "{json}");
    assert_eq!(json["tls"]["client_names"], serde_json::json!([app_id]), "{json}");
    assert_eq!(json["tls"]["sni"], "mtls.example.com");
    let seen = up.handshakes();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].client_names, [app_id]);
    assert_eq!(up.requests(), 1);

    // credentialName: refused with the reason, and nothing is sent in plaintext.
    let r = proxy.get1("http://credential.example.com/c").await;
    r.assert_connect_failure(&["credentialName \"credential-secret\"", "--kubernetes-secrets"]);
    assert_eq!(up.connections(), 1, "nothing may reach the server");
    assert_eq!(proxy.stat("upstream_tls_errors_total").await, 0);
}

/// Istio's SIMPLE never presents a client certificate, even when the rule names one
/// (`constructUpstreamTLS` reads clientCertificate and privateKey only for MUTUAL). The server
/// asks for a certificate but accepts a connection without one, so it sees exactly what was
/// offered: nothing for SIMPLE, the rule's certificate for MUTUAL.
#[tokio::test]
async fn simple_tls_never_presents_the_rules_client_certificate() {
    let ca = TestCa::new("db CA");
    let pem = PemDir::new();
    let ca_file = pem.ca(&ca);
    let ep = unique_loopback();
    let leaf = ca.issue(LeafSpec::server(["simple.example.com", "mutual.example.com"]));
    let provider = meshentry_testutil::crypto_provider();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(ca.root_store()), provider.clone())
            .allow_unauthenticated()
            .build()
            .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![leaf.cert_der.clone()], leaf.key_der.clone_key())
        .unwrap();
    let up = TlsUpstream::start(on(ep, 443), "optional", Arc::new(config));
    let app_id = "spiffe://cluster.local/ns/default/sa/app";
    let client = pem.leaf(&ca.issue(LeafSpec::client(app_id)), "client");
    let simple_with_cert = format!(
        "{{mode: SIMPLE, clientCertificate: {:?}, privateKey: {:?}, caCertificates: {:?}}}",
        path(&client.cert),
        path(&client.key),
        path(&ca_file)
    );
    let yaml = [
        entry("simple.example.com", &[ep], ""),
        rule("simple.example.com", &simple_with_cert, None),
        entry("mutual.example.com", &[ep], ""),
        rule("mutual.example.com", &mutual(&client, &ca_file), None),
    ]
    .concat();
    let proxy = Proxy::start(&yaml, &[]).await;

    let r = proxy.get1("http://simple.example.com/s").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["tls"]["client_cert"], false, "SIMPLE: {}", r.json());
    let r = proxy.get1("http://mutual.example.com/m").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["tls"]["client_cert"], true, "MUTUAL: {}", r.json());
    assert_eq!(r.json()["tls"]["client_names"], serde_json::json!([app_id]));
    let seen: Vec<_> = up
        .handshakes()
        .into_iter()
        .map(|h| (h.sni.unwrap_or_default(), h.client_cert))
        .collect();
    assert_eq!(
        seen,
        [
            ("simple.example.com".to_string(), false),
            ("mutual.example.com".to_string(), true)
        ]
    );
    assert_eq!(up.handshake_failures(), Vec::<String>::new());
}

/// A server that refuses the proxy's client certificate (none, or one from another CA) is a
/// TLS failure like any other: a 503 whose reason says the server refused and why. In TLS 1.3
/// the refusal arrives after the client has finished its side of the handshake, as an alert on
/// the first read.
#[tokio::test]
async fn a_server_refusing_the_client_certificate_is_reported_as_such() {
    let ca = TestCa::new("db CA");
    let other = TestCa::new("rogue CA");
    let pem = PemDir::new();
    let ca_file = pem.ca(&ca);
    let (ep, up) = mtls_server(&ca, &["nocert.example.com", "wrongca.example.com"]);
    let rogue = pem.leaf(
        &other.issue(LeafSpec::client("spiffe://cluster.local/ns/default/sa/app")),
        "rogue",
    );
    let yaml = [
        entry("nocert.example.com", &[ep], ""),
        rule("nocert.example.com", &simple(&ca_file), None),
        entry("wrongca.example.com", &[ep], ""),
        rule("wrongca.example.com", &mutual(&rogue, &ca_file), None),
    ]
    .concat();
    let proxy = Proxy::start(&yaml, &[]).await;

    // No client certificate; then a client certificate from another CA.
    let nocert = proxy.get1("http://nocert.example.com/n").await;
    let wrongca = proxy.get1("http://wrongca.example.com/w").await;
    assert_eq!(up.requests(), 0, "no request got through: {nocert:?} {wrongca:?}");
    eventually(WAIT, || async {
        let f = up.handshake_failures();
        (f.len() == 2 && (f[0].contains("NoCertificatesPresented") || f[0].contains("no certificates")))
            .then_some(())
            .ok_or(f)
    })
    .await;
    eprintln!("without a client certificate: {nocert:?}\nwith one from another CA: {wrongca:?}");
    nocert.assert_connect_failure(&["TLS error", "refused", "certificate"]);
    wrongca.assert_connect_failure(&["TLS error", "refused"]);
    assert_eq!(proxy.stat("upstream_tls_errors_total").await, 2);
}

/// An endpoint that refuses the client certificate after the handshake is a connect failure
/// like a failed handshake: the request goes to the next endpoint (nothing of it reached the
/// refusing server's application), and the refusal is counted against that endpoint.
#[tokio::test]
async fn an_endpoint_refusing_the_client_certificate_is_failed_over() {
    let ca = TestCa::new("db CA");
    let theirs = TestCa::new("their clients' CA");
    let pem = PemDir::new();
    let ca_file = pem.ca(&ca);
    let client = pem.leaf(
        &ca.issue(LeafSpec::client("spiffe://cluster.local/ns/default/sa/app")),
        "client",
    );
    let leaf = ca.issue(LeafSpec::server(["pair.example.com"]));
    let (good_ip, picky_ip) = (unique_loopback(), unique_loopback());
    let good = TlsUpstream::start(on(good_ip, 443), "good", server_config(&leaf, Some(&ca)));
    // Trusts only its own clients' CA, so it refuses ours once it has seen it.
    let picky = TlsUpstream::start(on(picky_ip, 443), "picky", server_config(&leaf, Some(&theirs)));
    let yaml = [
        entry("pair.example.com", &[picky_ip, good_ip], ""),
        rule("pair.example.com", &mutual(&client, &ca_file), Some("ROUND_ROBIN")),
    ]
    .concat();
    let proxy = Proxy::start(&yaml, &[]).await;

    // Round robin sends at least one of four requests (each from a new client) to the picky
    // endpoint first.
    let mut replies = Vec::new();
    for i in 0..4 {
        replies.push(proxy.get1(&format!("http://pair.example.com/{i}")).await);
    }
    eventually(WAIT, || async { !picky.handshake_failures().is_empty() }).await;
    for r in &replies {
        assert_eq!(r.status, 200, "the next endpoint answers: {replies:#?}");
        assert_eq!(r.json()["upstream"], "good");
    }
    assert_eq!(good.requests(), 4);
    assert_eq!(picky.requests(), 0);
    let tls_errors = proxy.stat("upstream_tls_errors_total").await;
    assert!(tls_errors >= 1, "{tls_errors}");
    let cluster = proxy.cluster("outbound|80||pair.example.com").await;
    let picky_host = cluster["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["address"] == on(picky_ip, 443).to_string())
        .unwrap();
    assert_eq!(picky_host["connectFailures"], tls_errors, "{cluster:#}");
}

// ---------------------------------------------------------------------------------------------
// 4. ISTIO_MUTUAL with identities from `meshentry ca`

const HTTPBIN_ID: &str = "spiffe://cluster.local/ns/httpbin-ns/sa/httpbin-service-account";

fn meshentry(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "meshentry {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `meshentry ca issue` for `ns`/`sa` into `dir/<sa>`.
fn issue(ca: &Path, dir: &Path, ns: &str, sa: &str) -> std::path::PathBuf {
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

/// A server presenting the identity in `id_dir` that requires a client certificate from the
/// mesh CA (its root-cert.pem).
fn mesh_server(id_dir: &Path, addr: SocketAddr, name: &str) -> TlsUpstream {
    let provider = meshentry_testutil::crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs("root", &id_dir.join("root-cert.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_certs("chain", &id_dir.join("cert-chain.pem")).unwrap(),
            load_key(&id_dir.join("key.pem")).unwrap(),
        )
        .unwrap();
    TlsUpstream::start(addr, name, Arc::new(config))
}

#[tokio::test]
async fn istio_mutual_uses_the_mesh_identity_and_pins_the_spiffe_id() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    meshentry(&["ca", "init", "--dir", &path(&ca)]);
    let me = issue(&ca, tmp.path(), "default", "sleep");
    let httpbin = issue(&ca, tmp.path(), "httpbin-ns", "httpbin-service-account");
    let impostor = issue(&ca, tmp.path(), "httpbin-ns", "impostor");

    let (ep1, ep2, ep3) = (unique_loopback(), unique_loopback(), unique_loopback());
    let up1 = mesh_server(&httpbin, on(ep1, 80), "httpbin-1");
    let up2 = mesh_server(&httpbin, on(ep2, 80), "httpbin-2");
    let fake = mesh_server(&impostor, on(ep3, 80), "impostor");

    let se = seed("12-serviceentry-httpbin.yaml");
    assert!(se.contains(HTTPBIN_ID), "the seed pins {HTTPBIN_ID}:\n{se}");
    let se = replace(&se, "2.2.2.2", &ep1.to_string());
    let se = replace(&se, "3.3.3.3", &ep2.to_string());
    // The same entry once more for a host whose endpoint has another identity.
    let fake_se = replace(&se, "name: httpbin\n", "name: httpbin-impostor\n");
    let fake_se = replace(&fake_se, "- httpbin.com", "- impostor.httpbin.com");
    let fake_se = replace(&fake_se, &format!("  - address: {ep2}\n"), "");
    let fake_se = replace(&fake_se, &ep1.to_string(), &ep3.to_string());
    let dr = |host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {{name: {host}, namespace: httpbin-ns}}\nspec:\n  host: {host}\n  trafficPolicy:\n    tls: {{mode: ISTIO_MUTUAL}}\n"
        )
    };
    let yaml = format!(
        "{se}\n---\n{}---\n{fake_se}\n---\n{}",
        dr("httpbin.com"),
        dr("impostor.httpbin.com")
    );
    let flags = [
        "--cert".to_string(),
        path(&me.join("cert-chain.pem")),
        "--key".into(),
        path(&me.join("key.pem")),
        "--ca".into(),
        path(&me.join("root-cert.pem")),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let proxy = Proxy::start(&yaml, &flags).await;

    let urls = ["http://httpbin.com/a", "http://httpbin.com/b", "http://httpbin.com/c"];
    for r in proxy.get(&urls).await {
        assert_eq!(r.status, 200, "{r:?}");
        let json = r.json();
        assert_eq!(json["tls"]["sni"], "outbound_.80_._.httpbin.com", "{json}");
        assert_eq!(
            json["tls"]["client_names"],
            serde_json::json!(["spiffe://cluster.local/ns/default/sa/sleep"]),
            "the server saw the proxy's identity: {json}"
        );
        assert_eq!(json["host"], "httpbin.com");
    }
    for h in up1.handshakes().iter().chain(&up2.handshakes()) {
        assert_eq!(h.sni.as_deref(), Some("outbound_.80_._.httpbin.com"));
        assert_eq!(h.client_names, ["spiffe://cluster.local/ns/default/sa/sleep"]);
    }
    assert_eq!(up1.requests() + up2.requests(), 3);

    let r = proxy.get1("http://impostor.httpbin.com/x").await;
    r.assert_connect_failure(&[
        "SAN mismatch",
        HTTPBIN_ID,
        "spiffe://cluster.local/ns/httpbin-ns/sa/impostor",
    ]);
    assert_eq!(fake.requests(), 0);
    assert_eq!(proxy.stat("upstream_tls_errors_total").await, 1);

    // Without --cert the proxy starts, and ISTIO_MUTUAL clusters say what is missing.
    let bare = Proxy::start(&yaml, &[]).await;
    let r = bare.get1("http://httpbin.com/a").await;
    r.assert_connect_failure(&["ISTIO_MUTUAL", "--cert"]);
    assert_eq!(
        up1.requests() + up2.requests(),
        3,
        "nothing may reach the servers in plaintext"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. The seed's MongoDB pair: MUTUAL over TCP

#[tokio::test]
async fn seed_mongo_cluster_with_mutual_tls() {
    let ca = TestCa::new("mongo CA");
    let pem = PemDir::new();
    let ca_file = pem.ca(&ca);
    let client_id = "spiffe://cluster.local/ns/default/sa/mongo-client";
    let client = pem.leaf(&ca.issue(LeafSpec::client(client_id)), "myclientcert");
    // TCP has no Host: the certificate must name the service host, and no SNI is sent (D7).
    let server = ca.issue(LeafSpec::server(["mymongodb.somedomain"]));
    let (ep1, ep2) = (unique_loopback(), unique_loopback());
    let db1 = TlsEcho::start(on(ep1, 27018), server_config(&server, Some(&ca)));
    let db2 = TlsEcho::start(on(ep2, 27018), server_config(&server, Some(&ca)));

    // The VIP range is the /24 of an address only this test holds, so nothing leaves loopback
    // even if a tunnel were misrouted to the VIP itself (where nothing listens).
    let vip = unique_loopback();
    let [_, x, y, _] = vip.octets();
    let se = seed("02-serviceentry-external-svc-mongocluster.yaml");
    let se = replace(&se, "192.192.192.192/24", &format!("127.{x}.{y}.0/24"));
    let se = replace(&se, "2.2.2.2", &ep1.to_string());
    let se = replace(&se, "3.3.3.3", &ep2.to_string());
    let dr = seed("03-destinationrule-mtls-mongocluster.yaml");
    let dr = replace(&dr, "/etc/certs/myclientcert.pem", &path(&client.cert));
    let dr = replace(&dr, "/etc/certs/client_private_key.pem", &path(&client.key));
    let dr = replace(&dr, "/etc/certs/rootcacerts.pem", &path(&ca_file));
    let proxy = Proxy::start(&format!("{se}\n---\n{dr}"), &[]).await;

    const N: usize = 6;
    let mut tasks = Vec::new();
    for i in 0..N {
        let target = format!("{vip}:27018");
        let proxy_addr = proxy.inner.http();
        tasks.push(tokio::spawn(async move {
            let mut s = connect_tunnel(proxy_addr, &target).await;
            // Plaintext from the client (an OP_MSG-ish blob); TLS is the proxy's business.
            let msg = format!("\x3d\0\0\0mongo hello {i} via {target}");
            s.write_all(msg.as_bytes()).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut back))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&back), msg);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen: Vec<_> = db1.handshakes().into_iter().chain(db2.handshakes()).collect();
    assert_eq!(seen.len(), N, "one TLS connection per tunnel: {seen:?}");
    for h in &seen {
        assert_eq!(h.client_names, [client_id], "{h:?}");
        assert_eq!(h.sni, None, "TCP origination sends no SNI: {h:?}");
        assert_eq!(h.alpn, None, "{h:?}");
    }
    assert!(
        db1.connections() > 0 && db2.connections() > 0,
        "both endpoints serve: {} {}",
        db1.connections(),
        db2.connections()
    );
    assert!(db1.handshake_failures().is_empty() && db2.handshake_failures().is_empty());
    assert_eq!(proxy.stat("tunnels_total").await, N as u64);
    assert_eq!(proxy.stat("upstream_tls_errors_total").await, 0);
}

/// A TCP endpoint that refuses the client certificate after the handshake (TLS 1.3) closes
/// the tunnel; the proxy says why in its log and counts it, instead of closing silently.
#[tokio::test]
async fn a_tunnel_whose_upstream_refuses_the_client_certificate_is_reported() {
    let ca = TestCa::new("db CA");
    let other = TestCa::new("someone else");
    let pem = PemDir::new();
    let client = pem.leaf(
        &other.issue(LeafSpec::client("spiffe://cluster.local/ns/default/sa/x")),
        "c",
    );
    let server = ca.issue(LeafSpec::server(["db.internal"]));
    let ep = unique_loopback();
    let db = TlsEcho::start(on(ep, 5432), server_config(&server, Some(&ca)));
    let se = replace(
        &entry("db.internal", &[ep], ""),
        "protocol: HTTP, targetPort: 443",
        "protocol: TCP, targetPort: 5432",
    );
    let dr = rule("db.internal", &mutual(&client, &pem.ca(&ca)), None);
    let proxy = Proxy::start(&format!("{se}\n---\n{dr}"), &[]).await;

    let mut s = connect_tunnel(proxy.inner.http(), "db.internal:80").await;
    let _ = s.write_all(b"hello").await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(IO_TIMEOUT, s.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "the tunnel must close: {read:?}");
    proxy.wait_log(&["tunnel failed upstream", "UnknownCA"]).await;
    assert_eq!(proxy.stat("upstream_tls_errors_total").await, 1);
    assert!(!db.handshake_failures().is_empty());
}

/// Opens a CONNECT tunnel to `target` through the proxy and returns the stream after a 200.
async fn connect_tunnel(proxy: SocketAddr, target: &str) -> TcpStream {
    raw::tunnel(proxy, target, IO_TIMEOUT).await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// 6. Certificate reload

/// Sends `n` requests at once, each from a new curl, each held by the upstream for a while, so
/// that the proxy must open new upstream connections for those its pools cannot serve.
async fn concurrent(proxy: &Proxy, url: &str, n: usize) -> Vec<Reply> {
    let mut runs = Vec::new();
    for _ in 0..n {
        runs.push(curl(vec!["-x".into(), proxy.url(), url.to_string()]));
    }
    let mut replies = Vec::new();
    for r in futures_join(runs).await {
        replies.extend(r);
    }
    replies
}

/// Awaits all of `futs` concurrently.
async fn futures_join<F: std::future::Future + Send + 'static>(futs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Makes the proxy open at least two new upstream connections and checks that each presented
/// the client certificate of `id` and served its request.
async fn assert_new_connections_present(proxy: &Proxy, up: &TlsUpstream, id: &str) {
    let (handshakes, connections) = (up.handshakes().len(), up.connections());
    let replies = concurrent(proxy, "http://reload.example.com/delay/300", connections + 2).await;
    let mut fresh = 0;
    for r in &replies {
        assert_eq!(r.status, 200, "{r:?}");
        let json = r.json();
        if json["connection"].as_u64().unwrap() > connections as u64 {
            fresh += 1;
            assert_eq!(json["tls"]["client_names"], serde_json::json!([id]), "{json}");
        }
    }
    assert!(fresh >= 2, "new connections served requests: {replies:?}");
    let new = up.handshakes().split_off(handshakes);
    assert!(new.len() >= 2, "new connections were opened: {new:?}");
    assert!(new.iter().all(|h| h.client_names == [id]), "{new:?}");
}

#[tokio::test]
async fn client_certificates_reload_without_dropping_connections() {
    let ca = TestCa::new("reload CA");
    let pem = PemDir::new();
    let ca_file = pem.ca(&ca);
    let id_a = "spiffe://cluster.local/ns/default/sa/cert-a";
    let id_b = "spiffe://cluster.local/ns/default/sa/cert-b";
    let files = pem.leaf(&ca.issue(LeafSpec::client(id_a)), "client");
    let ep = unique_loopback();
    let leaf = ca.issue(LeafSpec::server(["reload.example.com"]));
    let up = TlsUpstream::start(on(ep, 443), "reload", server_config(&leaf, Some(&ca)));
    let tls = format!(
        "{{mode: MUTUAL, clientCertificate: {:?}, privateKey: {:?}, caCertificates: {:?}}}",
        path(&files.cert),
        path(&files.key),
        path(&ca_file)
    );
    let yaml = [
        entry("reload.example.com", &[ep], ""),
        rule("reload.example.com", &tls, None),
    ]
    .concat();
    let proxy = Proxy::start(&yaml, &["--cert-check-interval", "200ms"]).await;

    // A kept-alive client connection, and the upstream connection it made, with certificate A.
    let mut kept = Client::connect(proxy.inner.http()).await;
    let (status, json) = kept.get("http://reload.example.com/before").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["tls"]["client_names"], serde_json::json!([id_a]), "{json}");
    assert_eq!(json["connection"], 1);

    // Certificate B replaces A in the same files while a request is in flight on the upstream
    // connection made with A (the only one, so the kept client's worker reuses it).
    let b = ca.issue(LeafSpec::client(id_b));
    let in_flight = async {
        let got = kept.get("http://reload.example.com/delay/1500").await;
        (got, Instant::now())
    };
    let reload = async {
        let written = Instant::now();
        // Key first: the watcher may see the pair half written, which it refuses and retries.
        std::fs::write(&files.key, &b.key_pem).unwrap();
        std::fs::write(&files.cert, &b.cert_pem).unwrap();
        proxy
            .wait_log(&["outbound|80||reload.example.com", "TLS certificates reloaded"])
            .await;
        (written.elapsed(), Instant::now())
    };
    let (((status, json), answered), (took, reloaded)) = tokio::join!(in_flight, reload);
    assert!(
        took < Duration::from_secs(2),
        "reloaded {took:?} after the files changed, checking every 200ms"
    );
    assert!(reloaded < answered, "the request was in flight during the reload");
    assert_eq!(status, 200, "the connection in flight survives the reload: {json}");
    assert_eq!(json["connection"], 1, "{json}");
    assert_eq!(json["tls"]["client_names"], serde_json::json!([id_a]), "{json}");

    // New upstream connections present B (pooled ones made before keep A).
    assert_new_connections_present(&proxy, &up, id_b).await;
    // The kept-alive client connection goes on working.
    let (status, json) = kept.get("http://reload.example.com/after").await;
    assert_eq!(status, 200, "{json}");

    // A broken key file is refused with an error in the log; B stays in force.
    std::fs::write(&files.key, "not a key\n").unwrap();
    proxy
        .wait_log(&["outbound|80||reload.example.com", "not reloaded", "private key"])
        .await;
    assert_new_connections_present(&proxy, &up, id_b).await;
    let (status, _) = kept.get("http://reload.example.com/last").await;
    assert_eq!(status, 200);
    assert_eq!(proxy.stat("upstream_tls_errors_total").await, 0);
}

// ---------------------------------------------------------------------------------------------
// 7. No name, no verified connection; subjectAltNames matched by type (issue 14)

/// `CONNECT target` through the proxy: the refusal, read strictly (the proxy connects
/// upstream before it answers, and the refusal keeps the connection open).
async fn connect_refused(proxy: SocketAddr, target: &str) -> raw::RawResponse {
    raw::connect_request(proxy, target, IO_TIMEOUT).await.unwrap().0
}

#[tokio::test]
async fn origination_without_a_verifiable_name_fails_closed() {
    let ca = TestCa::new("w CA");
    let pem = PemDir::new();
    let ca_file = pem.ca(&ca);
    // Certificates that name only the endpoint's IP: what an unverified "fallback" would accept.
    let ep = unique_loopback();
    let ip_only = |ip: Ipv4Addr| {
        ca.issue(LeafSpec {
            ip_sans: vec![ip.into()],
            ..LeafSpec::default()
        })
    };
    let web = TlsUpstream::start(on(ep, 443), "ip-only", server_config(&ip_only(ep), None));
    let db = TlsEcho::start(on(ep, 5432), server_config(&ip_only(ep), None));

    let wildcard = |host: &str, port: &str| {
        format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: ["{host}"]
  location: MESH_EXTERNAL
  ports: [{port}]
  resolution: STATIC
  endpoints: [{{address: {ep}}}]
"#,
            name = host.trim_start_matches("*.").replace('.', "-"),
        )
    };
    let dr = |host: &str, port: u16, tls: &str| {
        format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: "{host}"
  trafficPolicy:
    portLevelSettings:
    - port: {{number: {port}}}
      tls: {tls}
"#,
            name = host.trim_start_matches("*.").replace('.', "-"),
        )
    };
    let http = "{number: 80, name: http, protocol: HTTP, targetPort: 443}";
    let tcp = "{number: 5432, name: tcp, protocol: TCP}";
    let pinned = format!(
        "{{mode: SIMPLE, caCertificates: {:?}, subjectAltNames: [\"{ep}\"]}}",
        path(&ca_file)
    );
    let yaml = [
        wildcard("*.w.test", http),
        dr("*.w.test", 80, &simple(&ca_file)),
        wildcard("*.wt.test", tcp),
        dr("*.wt.test", 5432, &simple(&ca_file)),
        // The same endpoints, with the name the certificate does have pinned.
        wildcard("*.p.test", http),
        dr("*.p.test", 80, &pinned),
    ]
    .concat();
    let proxy = Proxy::start(&yaml, &[]).await;

    // A Host that is not a valid DNS name: nothing to verify, so no connection at all.
    let r = proxy.get1("http://bad-.w.test/").await;
    r.assert_connect_failure(&[
        "bad-.w.test:80",
        "TLS origination has no server name to verify",
        "\"bad-.w.test\" is not a valid DNS name",
        "set sni or subjectAltNames",
    ]);
    // A valid name is verified as that name, which the IP-only certificate does not have.
    let r = proxy.get1("http://good.w.test/").await;
    r.assert_connect_failure(&["TLS error"]);
    // A TCP port of the wildcard service: the service's host `*.wt.test` is no name either.
    let refused = connect_refused(proxy.inner.http(), "x.wt.test:5432").await;
    assert!(refused.raw.starts_with(b"HTTP/1.1 503"), "{refused:?}");
    assert!(
        refused.text().contains("TLS origination has no server name to verify"),
        "{refused:?}"
    );
    assert!(
        web.handshakes().is_empty() && db.handshakes().is_empty(),
        "a backend completed a handshake: {:?} {:?}",
        web.handshakes(),
        db.handshakes()
    );
    assert_eq!(web.requests(), 0);

    // With subjectAltNames pinned, the same Host and the same certificate work.
    let r = proxy.get1("http://bad-.p.test/pinned").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["upstream"], "ip-only");
    assert_eq!(web.requests(), 1);
}

#[tokio::test]
async fn pinned_subject_alt_names_match_by_type_and_uris_exactly() {
    const ID: &str = "spiffe://cluster.local/ns/a/sa/b";
    let ca = TestCa::new("san CA");
    let pem = PemDir::new();
    let ca_file = pem.ca(&ca);
    let start = |spec: LeafSpec, name: &str| {
        let ip = unique_loopback();
        (
            ip,
            TlsUpstream::start(on(ip, 443), name, server_config(&ca.issue(spec), None)),
        )
    };
    // The SPIFFE id's text as a DNS SAN, the id with different case as a URI SAN, the id.
    let (dns_ip, dns) = start(
        LeafSpec {
            dns_names: vec![ID.into(), "dns.san.test".into()],
            ..LeafSpec::default()
        },
        "dns-text",
    );
    let (case_ip, case) = start(
        LeafSpec {
            uri_sans: vec!["spiffe://cluster.local/ns/A/sa/b".into()],
            dns_names: vec!["case.san.test".into()],
            ..LeafSpec::default()
        },
        "uri-case",
    );
    let (exact_ip, exact) = start(
        LeafSpec {
            uri_sans: vec![ID.into()],
            ..LeafSpec::default()
        },
        "uri-exact",
    );
    let tls = format!(
        "{{mode: SIMPLE, caCertificates: {:?}, subjectAltNames: [{ID:?}]}}",
        path(&ca_file)
    );
    let yaml = [
        entry("dns.san.test", &[dns_ip], ""),
        rule("dns.san.test", &tls, None),
        entry("case.san.test", &[case_ip], ""),
        rule("case.san.test", &tls, None),
        entry("exact.san.test", &[exact_ip], ""),
        rule("exact.san.test", &tls, None),
    ]
    .concat();
    let proxy = Proxy::start(&yaml, &[]).await;

    let r = proxy.get1("http://dns.san.test/").await;
    r.assert_connect_failure(&["TLS error", "SAN mismatch"]);
    let r = proxy.get1("http://case.san.test/").await;
    r.assert_connect_failure(&["TLS error", "SAN mismatch"]);
    assert_eq!((dns.requests(), case.requests()), (0, 0));

    let r = proxy.get1("http://exact.san.test/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["upstream"], "uri-exact");
    assert_eq!(exact.requests(), 1);
}
