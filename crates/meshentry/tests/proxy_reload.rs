//! Hot reload end to end (issue 8 item 1): the configuration is rewritten under load, by file
//! watch and by SIGHUP; invalid configurations change nothing; a Gateway reload opens and
//! closes its server ports.
//!
//! The load is 50 keep-alive HTTP/1.1 connections through the explicit proxy, each sending
//! requests back to back to a service whose endpoint (or VirtualService route) alternates
//! between two upstreams that answer with their name. Every request is checked: none may fail,
//! and one that started after `/config_dump` showed a generation and finished before the next
//! configuration was written must have been answered by that generation's upstream.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use meshentry_testutil::{HttpUpstream, Proxy, RawClient, eventually, unique_loopback};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");
const PATIENCE: Duration = Duration::from_secs(10);
const RELOADS: u64 = 100;
const CONNECTIONS: usize = 50;

fn entry(name: &str, host: &str, upstream: SocketAddr) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {ip}, ports: {{http: {port}}}}}]
",
        ip = upstream.ip(),
        port = upstream.port()
    )
}

/// `web.internal` routed by a VirtualService to `a.internal` or `b.internal`.
fn routed(a: SocketAddr, b: SocketAddr, to: &str) -> String {
    format!(
        "{}{}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web}}
spec:
  hosts: [web.internal]
  http:
  - route:
    - destination: {{host: {to}.internal}}
",
        entry("a", "a.internal", a),
        entry("b", "b.internal", b),
        // The VirtualService's own host needs a service for the sidecar to route it.
        entry("web", "web.internal", a),
    )
}

/// Replaces the file the way editors and `kubectl cp` do: a new file renamed over the old,
/// so the proxy never reads a half-written one.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Which generation is in force, as the test driver knows it: the generation in the high bits,
/// and bit 0 set while the next configuration is being written (either may answer then).
struct Phase(AtomicU64);

impl Phase {
    fn stable(&self, generation: u64) {
        self.0.store(generation << 1, Ordering::SeqCst);
    }

    fn writing(&self, generation: u64) {
        self.0.store((generation << 1) | 1, Ordering::SeqCst);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    total: AtomicU64,
    failures: AtomicU64,
    /// Requests that had to be answered by one upstream and were answered by another.
    wrong: AtomicU64,
    /// Per generation, the requests checked strictly.
    strict: Vec<AtomicU64>,
    first_problem: std::sync::Mutex<Option<String>>,
}

impl Seen {
    fn new(generations: u64) -> Self {
        Self {
            strict: (0..=generations + 1).map(|_| AtomicU64::new(0)).collect(),
            ..Self::default()
        }
    }

    fn problem(&self, what: String) {
        let mut first = self.first_problem.lock().unwrap();
        if first.is_none() {
            *first = Some(what);
        }
    }
}

/// One keep-alive client connection sending requests until `stop`; a failed request counts and
/// the connection is made again.
async fn client(
    proxy: SocketAddr,
    phase: Arc<Phase>,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    expect: fn(u64) -> &'static str,
) {
    let mut sender = None;
    while !stop.load(Ordering::Relaxed) {
        if sender.is_none() {
            let stream = match TcpStream::connect(proxy).await {
                Ok(s) => s,
                Err(e) => {
                    seen.failures.fetch_add(1, Ordering::Relaxed);
                    seen.problem(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            sender = Some(s);
        }
        let Some(s) = sender.as_mut() else { continue };
        let before = phase.get();
        let req = http::Request::get("http://web.internal/reload")
            .header(http::header::HOST, "web.internal")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let sent = async {
            s.ready().await?;
            s.send_request(req).await
        };
        let outcome = match tokio::time::timeout(PATIENCE, sent).await {
            Ok(Ok(resp)) => {
                let status = resp.status();
                let upstream = resp
                    .headers()
                    .get("x-upstream")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                match resp.into_body().collect().await {
                    Ok(_) if status == 200 => Ok(upstream),
                    Ok(_) => Err(format!("status {status} from {upstream:?}")),
                    Err(e) => Err(format!("body: {e}")),
                }
            }
            Ok(Err(e)) => Err(format!("request: {e}")),
            Err(_) => Err("no response in time".into()),
        };
        let after = phase.get();
        seen.total.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(upstream) => {
                // Started after the generation was visible, finished before the next write.
                if before == after && before & 1 == 0 {
                    let generation = before >> 1;
                    seen.strict[generation as usize].fetch_add(1, Ordering::Relaxed);
                    if upstream != expect(generation) {
                        seen.wrong.fetch_add(1, Ordering::Relaxed);
                        seen.problem(format!(
                            "generation {generation}: answered by {upstream}, expected {}",
                            expect(generation)
                        ));
                    }
                }
            }
            Err(e) => {
                seen.failures.fetch_add(1, Ordering::Relaxed);
                seen.problem(e);
                sender = None;
            }
        }
    }
}

struct Load {
    phase: Arc<Phase>,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: SocketAddr, connections: usize, generations: u64, expect: fn(u64) -> &'static str) -> Load {
        let phase = Arc::new(Phase(AtomicU64::new(0)));
        phase.stable(1);
        let seen = Arc::new(Seen::new(generations));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..connections)
            .map(|_| tokio::spawn(client(proxy, phase.clone(), seen.clone(), stop.clone(), expect)))
            .collect();
        Load {
            phase,
            seen,
            stop,
            tasks,
        }
    }

    /// Waits until `n` more requests were checked strictly against `generation`.
    async fn checked(&self, generation: u64, n: u64) {
        let seen = self.seen.clone();
        eventually(PATIENCE, || {
            let seen = seen.clone();
            async move { seen.strict[generation as usize].load(Ordering::Relaxed) >= n }
        })
        .await;
    }

    async fn finish(self) -> Arc<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.seen
    }
}

async fn generation(proxy: &Proxy) -> u64 {
    proxy.stat("config_generation").await
}

async fn wait_generation(proxy: &Proxy, want: u64) {
    eventually(PATIENCE, || async move { generation(proxy).await == want }).await;
}

fn a_on_odd(generation: u64) -> &'static str {
    if generation % 2 == 1 { "a" } else { "b" }
}

fn assert_clean(seen: &Seen, generations: u64) {
    let total = seen.total.load(Ordering::Relaxed);
    let failures = seen.failures.load(Ordering::Relaxed);
    let wrong = seen.wrong.load(Ordering::Relaxed);
    let strict: u64 = seen.strict.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    let problem = seen.first_problem.lock().unwrap().clone();
    assert_eq!(
        failures, 0,
        "{failures} of {total} requests failed; first problem: {problem:?}"
    );
    assert_eq!(wrong, 0, "{wrong} requests went to the old route; first: {problem:?}");
    // Every generation was checked, and the load was real.
    for g in 1..=generations {
        assert!(
            seen.strict[g as usize].load(Ordering::Relaxed) > 0,
            "generation {g} saw no request"
        );
    }
    assert!(strict >= 20 * generations, "only {strict} of {total} requests checked");
    assert!(total >= 3000, "only {total} requests in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_reloads_by_file_watch_under_load_fail_no_request() {
    let ip = IpAddr::V4(unique_loopback());
    let a = HttpUpstream::start(SocketAddr::new(ip, 0), "a");
    let b = HttpUpstream::start(SocketAddr::new(ip, 0), "b");
    let config = |g: u64| {
        entry(
            "web",
            "web.internal",
            if a_on_odd(g) == "a" { a.addr() } else { b.addr() },
        )
    };
    let proxy = Proxy::builder(BIN)
        .config(config(1))
        .args(["--outbound-policy", "REGISTRY_ONLY", "--reload-debounce", "20ms"])
        .start()
        .await;
    let load = Load::start(proxy.http(), CONNECTIONS, RELOADS + 1, a_on_odd);
    load.checked(1, 50).await;
    let started = Instant::now();
    for g in 2..=RELOADS + 1 {
        load.phase.writing(g - 1);
        write_atomically(&proxy.config_file(), &config(g));
        wait_generation(&proxy, g).await;
        load.phase.stable(g);
        load.checked(g, 20).await;
    }
    let took = started.elapsed();
    let seen = load.finish().await;
    assert_clean(&seen, RELOADS + 1);
    let dump = proxy.config_dump().await;
    assert_eq!(dump["generation"], RELOADS + 1);
    assert_eq!(dump["reloads"]["applied"], RELOADS);
    assert_eq!(dump["reloads"]["rejected"], 0);
    assert!(a.requests() > 0 && b.requests() > 0);
    // The load kept its connections: reloads do not close them.
    let connections = proxy.stat("downstream_cx_total").await;
    assert!(
        connections < CONNECTIONS as u64 + 10,
        "{connections} client connections for {CONNECTIONS} clients"
    );
    eprintln!(
        "{RELOADS} reloads in {took:?}, {} requests",
        seen.total.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_reloads_by_sighup_move_a_virtual_service_route_under_load() {
    let ip = IpAddr::V4(unique_loopback());
    let a = HttpUpstream::start(SocketAddr::new(ip, 0), "a");
    let b = HttpUpstream::start(SocketAddr::new(ip, 0), "b");
    let config = |g: u64| routed(a.addr(), b.addr(), a_on_odd(g));
    // File changes alone would wait an hour: only SIGHUP reloads here.
    let proxy = Proxy::builder(BIN)
        .config(config(1))
        .args(["--outbound-policy", "REGISTRY_ONLY", "--reload-debounce", "1h"])
        .start()
        .await;
    let load = Load::start(proxy.http(), CONNECTIONS, RELOADS + 1, a_on_odd);
    load.checked(1, 50).await;
    for g in 2..=RELOADS + 1 {
        load.phase.writing(g - 1);
        // Written in place: with SIGHUP, the proxy reads once the writer is done.
        std::fs::write(proxy.config_file(), config(g)).unwrap();
        proxy.process.hangup();
        wait_generation(&proxy, g).await;
        load.phase.stable(g);
        load.checked(g, 20).await;
    }
    let seen = load.finish().await;
    assert_clean(&seen, RELOADS + 1);
    let dump = proxy.config_dump().await;
    assert_eq!(dump["reloads"]["applied"], RELOADS);
    let vhost = dump["routes"][0]["virtualHosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["virtualService"] == "default/web")
        .cloned()
        .unwrap_or_else(|| panic!("no VirtualService route in {}", dump["routes"]));
    let expected = format!("outbound|80||{}.internal", a_on_odd(RELOADS + 1));
    assert_eq!(vhost["routes"][0]["route"][0]["cluster"], expected.as_str());
    assert!(proxy.process.stderr().contains("trigger=\"SIGHUP\""));
    assert!(!proxy.process.stderr().contains("trigger=\"file change\""));
}

#[tokio::test]
async fn the_same_bytes_again_do_not_rebuild() {
    let ip = IpAddr::V4(unique_loopback());
    let a = HttpUpstream::start(SocketAddr::new(ip, 0), "a");
    let text = entry("web", "web.internal", a.addr());
    let proxy = Proxy::builder(BIN)
        .config(&text)
        .args(["--reload-debounce", "20ms"])
        .start()
        .await;
    // Rewritten with the same bytes (a file event), then asked by signal.
    write_atomically(&proxy.config_file(), &text);
    proxy.process.hangup();
    let stderr = eventually(PATIENCE, || async {
        let err = proxy.process.stderr();
        err.contains("configuration unchanged: not reloaded").then_some(err)
    })
    .await;
    assert!(!stderr.contains("configuration reloaded"), "{stderr}");
    assert_eq!(generation(&proxy).await, 1);
    assert_eq!(proxy.stat("config_reloads_total").await, 0);
    // A real change still applies.
    std::fs::write(proxy.config_file(), format!("{text}# a comment\n")).unwrap();
    wait_generation(&proxy, 2).await;
}

/// Issue 20: a reload logs the warnings the new configuration adds, not again every one the
/// configuration in force was already warned about (at 10,000 ServiceEntries that was 30,000
/// lines per reload).
#[tokio::test]
async fn a_reload_repeats_no_warning_already_given() {
    let ip = IpAddr::V4(unique_loopback());
    let a = HttpUpstream::start(SocketAddr::new(ip, 0), "a");
    // HTTP declared on port 443 is a snapshot warning; one per service.
    let https = |name: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\n\
             spec: {{hosts: [{name}.test], ports: [{{number: 443, name: http, protocol: HTTP}}], resolution: STATIC, \
             endpoints: [{{address: {ip}}}]}}\n"
        )
    };
    let first = format!("{}{}", entry("web", "web.internal", a.addr()), https("old"));
    let proxy = Proxy::builder(BIN)
        .config(&first)
        .args(["--reload-debounce", "20ms"])
        .start()
        .await;
    let old = "old.test port 443 is declared HTTP";
    let new = "new.test port 443 is declared HTTP";
    eventually(PATIENCE, || async {
        proxy.process.stderr().contains(old).then_some(())
    })
    .await;
    std::fs::write(proxy.config_file(), format!("{first}{}", https("new"))).unwrap();
    wait_generation(&proxy, 2).await;
    let stderr = eventually(PATIENCE, || async {
        let err = proxy.process.stderr();
        err.contains("not repeated").then_some(err)
    })
    .await;
    assert_eq!(stderr.matches(old).count(), 1, "{stderr}");
    assert_eq!(stderr.matches(new).count(), 1, "{stderr}");
    assert!(
        stderr.lines().any(|l| l.ends_with("(not repeated) warnings=1")),
        "{stderr}"
    );
}

/// A client that checks each answer comes from `upstream`.
async fn expect_upstream(proxy: &Proxy, upstream: &str, n: usize) {
    let stream = TcpStream::connect(proxy.http()).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..n {
        let req = http::Request::get("http://web.internal/")
            .header(http::header::HOST, "web.internal")
            .body(Empty::<Bytes>::new())
            .unwrap();
        s.ready().await.unwrap();
        let resp = s.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-upstream"], upstream);
        resp.into_body().collect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configurations_change_nothing_until_fixed() {
    let ip = IpAddr::V4(unique_loopback());
    let a = HttpUpstream::start(SocketAddr::new(ip, 0), "a");
    let b = HttpUpstream::start(SocketAddr::new(ip, 0), "b");
    let good = entry("web", "web.internal", a.addr());
    let proxy = Proxy::builder(BIN)
        .config(&good)
        .args(["--outbound-policy", "REGISTRY_ONLY", "--reload-debounce", "20ms"])
        .start()
        .await;
    let file = proxy.config_file();
    let file_name = file.display().to_string();
    // Traffic all along: every answer must stay a's, generation 1's.
    let load = Load::start(proxy.http(), 8, 1, |_| "a");
    load.checked(1, 20).await;

    let fixed = entry("web", "web.internal", b.addr());
    // Cut inside the endpoints' flow mapping.
    let cut = fixed.find("endpoints:").unwrap() + 15;
    let bad: [(&str, String, u32); 3] = [
        (
            "YAML syntax error",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: web\nspec: [\n".into(),
            4,
        ),
        (
            "a field failing validation",
            good.replace("number: 80", "number: 800000"),
            7,
        ),
        // What a reader sees of a file written in place, caught half-way.
        ("a file cut half-way", fixed[..cut].to_string(), 10),
    ];
    for (i, (what, text, line)) in bad.iter().enumerate() {
        let line = *line;
        write_atomically(&file, text);
        let rejected = i as u64 + 1;
        eventually(PATIENCE, || async {
            proxy.stat("config_reloads_rejected_total").await == rejected
        })
        .await;
        let dump = proxy.config_dump().await;
        assert_eq!(dump["generation"], 1, "{what}: the generation in force changed");
        let last = &dump["lastRejected"];
        assert_eq!(last["generationKept"], 1, "{what}: {last}");
        let errors: Vec<&str> = last["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(!errors.is_empty(), "{what}: no errors shown: {last}");
        assert!(
            errors[0].starts_with(&format!("{file_name}:{line}:")),
            "{what}: the first error does not name {file_name} line {line}: {errors:?}"
        );
        assert_eq!(last["findings"][0]["file"], file_name.as_str(), "{what}");
        assert_eq!(last["findings"][0]["line"], line, "{what}");
        expect_upstream(&proxy, "a", 5).await;
        assert!(
            proxy.process.stderr().contains(errors[0]),
            "{what}: the error is not logged"
        );
    }
    // The field's error names the resource and field as `validate` does.
    let dump = proxy.config_dump().await;
    assert!(
        proxy
            .process
            .stderr()
            .contains("ServiceEntry default/web: spec.ports[0].number: port number 800000"),
        "{dump}"
    );

    // A file that cannot be read at all (a dangling symlink among the configuration files).
    let dangling = file.with_file_name("extra.yaml");
    std::os::unix::fs::symlink(file.with_file_name("missing-target.yaml"), &dangling).unwrap();
    eventually(PATIENCE, || async {
        proxy.stat("config_reloads_rejected_total").await == 4
    })
    .await;
    let dump = proxy.config_dump().await;
    assert_eq!(dump["generation"], 1);
    let reason = dump["lastRejected"]["reason"].as_str().unwrap();
    assert!(reason.contains("extra.yaml"), "{reason}");
    expect_upstream(&proxy, "a", 5).await;
    // Without the dangling link the half-written file is readable again, and refused again
    // (the last refusal had no fingerprint to compare with). Awaited, so that it cannot fall
    // in one debounce window with the fix below or not, depending on the machine's speed.
    std::fs::remove_file(&dangling).unwrap();
    eventually(PATIENCE, || async {
        proxy.stat("config_reloads_rejected_total").await == 5
    })
    .await;
    assert_eq!(generation(&proxy).await, 1);
    expect_upstream(&proxy, "a", 5).await;

    let seen = load.finish().await;
    assert_eq!(seen.failures.load(Ordering::Relaxed), 0, "{:?}", seen.first_problem);
    assert_eq!(seen.wrong.load(Ordering::Relaxed), 0, "{:?}", seen.first_problem);
    assert!(seen.strict[1].load(Ordering::Relaxed) >= 100);

    // Fixed: accepted, and the traffic moves.
    write_atomically(&file, &fixed);
    wait_generation(&proxy, 2).await;
    expect_upstream(&proxy, "b", 5).await;
    assert_eq!(proxy.stat("config_reloads_rejected_total").await, 5);
    assert_eq!(proxy.stat("config_reloads_total").await, 1);
}

#[tokio::test]
async fn a_configmap_style_symlink_swap_is_reloaded() {
    let ip = IpAddr::V4(unique_loopback());
    let a = HttpUpstream::start(SocketAddr::new(ip, 0), "a");
    let b = HttpUpstream::start(SocketAddr::new(ip, 0), "b");
    // Kubernetes mounts a ConfigMap as `file -> ..data/file`, `..data -> ..<timestamp>`, and
    // updates it by swapping `..data`.
    let mount = tempfile::tempdir().unwrap();
    let m = mount.path();
    std::fs::create_dir(m.join("..v1")).unwrap();
    std::fs::write(m.join("..v1/web.yaml"), entry("web", "web.internal", a.addr())).unwrap();
    std::os::unix::fs::symlink("..v1", m.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/web.yaml", m.join("web.yaml")).unwrap();
    let proxy = Proxy::builder(BIN)
        .no_config_dir()
        .arg("--config")
        .arg(m)
        .args(["--reload-debounce", "20ms"])
        .start()
        .await;
    expect_upstream(&proxy, "a", 2).await;
    std::fs::create_dir(m.join("..v2")).unwrap();
    std::fs::write(m.join("..v2/web.yaml"), entry("web", "web.internal", b.addr())).unwrap();
    std::os::unix::fs::symlink("..v2", m.join("..data_tmp")).unwrap();
    std::fs::rename(m.join("..data_tmp"), m.join("..data")).unwrap();
    wait_generation(&proxy, 2).await;
    expect_upstream(&proxy, "b", 2).await;
}

/// The egress gateway `istio-system/gw` (selecting `istio=<selector>`) with an HTTP server on
/// each of `ports`, routing `web.example` to `backend`; without the Gateway when `ports` is
/// `None`.
fn gateway_config(backend: SocketAddr, ports: Option<&[u16]>, selector: &str) -> String {
    let mut out = entry("backend", "backend.internal", backend);
    if let Some(ports) = ports {
        let servers: String = ports
            .iter()
            .map(|p| format!("  - port: {{number: {p}, name: http-{p}, protocol: HTTP}}\n    hosts: ['*']\n"))
            .collect();
        out.push_str(&format!(
            "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: {selector}}}
  servers:
{servers}"
        ));
    }
    out.push_str(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: istio-system}
spec:
  hosts: [web.example]
  gateways: [istio-system/gw]
  http:
  - route:
    - destination: {host: backend.internal, port: {number: 80}}
",
    );
    out
}

/// One request to a gateway port on a connection of its own: (status, the upstream that
/// answered), or the error connecting. The response is read strictly.
async fn gateway_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut c = RawClient::new(TcpStream::connect(addr).await?);
    let req = format!("GET {path} HTTP/1.1\r\nHost: web.example\r\nConnection: close\r\n\r\n");
    c.send(req.as_bytes()).await.map_err(std::io::Error::other)?;
    let r = c
        .read_response("GET", PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("GET {path} at {addr}: {e}"));
    Ok((r.status, r.header("x-upstream").unwrap_or("").to_string()))
}

fn listener_state(dump: &serde_json::Value, addr: SocketAddr) -> Option<serde_json::Value> {
    dump["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["address"] == addr.to_string().as_str())
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_reloads_open_and_close_server_ports() {
    let ip = IpAddr::V4(unique_loopback());
    let backend = HttpUpstream::start(SocketAddr::new(ip, 0), "a");
    let p1 = meshentry_testutil::free_port(ip);
    let p2 = loop {
        let p = meshentry_testutil::free_port(ip);
        if p != p1 {
            break p;
        }
    };
    // Held by another socket (without SO_REUSEPORT), so the proxy cannot bind it.
    let busy = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    let p3 = busy.local_addr().unwrap().port();
    let (a1, a2, a3) = (
        SocketAddr::new(ip, p1),
        SocketAddr::new(ip, p2),
        SocketAddr::new(ip, p3),
    );
    let proxy = Proxy::builder(BIN)
        .ip(ip)
        .config(gateway_config(backend.addr(), Some(&[p1]), "gw"))
        .args(["--gateway", "istio-system/gw", "--labels", "istio=gw", "--gateway-bind"])
        .arg(ip.to_string())
        .args(["--reload-debounce", "20ms", "--workers", "2"])
        .start()
        .await;
    let file = proxy.config_file();
    assert_eq!(gateway_get(a1, "/").await.unwrap(), (200, "a".to_string()));
    assert!(
        gateway_get(a2, "/").await.is_err(),
        "{a2} serves before the Gateway has it"
    );

    // Added: served as soon as the new generation is in force.
    write_atomically(&file, &gateway_config(backend.addr(), Some(&[p1, p2]), "gw"));
    wait_generation(&proxy, 2).await;
    for _ in 0..10 {
        assert_eq!(gateway_get(a2, "/").await.unwrap(), (200, "a".to_string()));
    }
    let dump = proxy.config_dump().await;
    assert_eq!(
        listener_state(&dump, a2).unwrap()["state"],
        "open",
        "{}",
        dump["listeners"]
    );

    // Removed: refused once the generation without it is in force, while a request it had
    // accepted finishes.
    let seen = backend.requests();
    let slow = tokio::spawn(gateway_get(a2, "/delay/800"));
    eventually(PATIENCE, || async { backend.requests() > seen }).await;
    write_atomically(&file, &gateway_config(backend.addr(), Some(&[p1]), "gw"));
    wait_generation(&proxy, 3).await;
    let refused = gateway_get(a2, "/").await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");
    assert_eq!(slow.await.unwrap().unwrap(), (200, "a".to_string()));
    assert_eq!(gateway_get(a1, "/").await.unwrap(), (200, "a".to_string()));
    let dump = proxy.config_dump().await;
    assert!(listener_state(&dump, a2).is_none(), "{}", dump["listeners"]);

    // A port that cannot be bound is an error shown, not a crash; the rest applies.
    write_atomically(&file, &gateway_config(backend.addr(), Some(&[p1, p3]), "gw"));
    wait_generation(&proxy, 4).await;
    assert_eq!(proxy.stat("listener_errors_total").await, 1);
    let dump = proxy.config_dump().await;
    let state = listener_state(&dump, a3).unwrap();
    assert_eq!(state["state"], "error", "{state}");
    assert!(state["error"].as_str().unwrap().contains(&a3.to_string()), "{state}");
    meshentry_testutil::schema::check("admin-config-dump", &dump);
    assert_eq!(gateway_get(a1, "/").await.unwrap(), (200, "a".to_string()));
    drop(busy);

    // Reloads that would stop this proxy being its Gateway are refused, with the reason.
    for (config, reason) in [
        (
            gateway_config(backend.addr(), Some(&[p1]), "other"),
            "selector does not match",
        ),
        (gateway_config(backend.addr(), None, "gw"), "no such Gateway"),
    ] {
        let rejected = proxy.stat("config_reloads_rejected_total").await;
        write_atomically(&file, &config);
        eventually(PATIENCE, || async {
            proxy.stat("config_reloads_rejected_total").await == rejected + 1
        })
        .await;
        let dump = proxy.config_dump().await;
        assert_eq!(dump["generation"], 4);
        let why = dump["lastRejected"]["reason"].as_str().unwrap();
        assert!(
            why.contains(reason) && why.contains("--gateway istio-system/gw"),
            "{why}"
        );
        assert_eq!(gateway_get(a1, "/").await.unwrap(), (200, "a".to_string()));
    }
    assert!(proxy.process.stderr().contains("Gateway server port not served"));
}

#[tokio::test]
async fn files_written_beside_the_configuration_do_not_wake_the_reloader() {
    let ip = unique_loopback();
    let up = HttpUpstream::start(SocketAddr::new(IpAddr::V4(ip), 0), "a");
    let proxy = Proxy::builder(BIN)
        .ip(ip)
        .config(entry("a", "a.internal", up.addr()))
        .env("RUST_LOG", "info,meshentry_proxy::listen::reload=debug")
        .start()
        .await;
    // The configuration directory's parent is watched (to see the directory replaced); a
    // log or a benchmark's output written there is not the configuration.
    let parent = proxy.config_dir().parent().unwrap().to_path_buf();
    for i in 0..20 {
        std::fs::write(parent.join(format!("neighbour-{i}.log")), "x").unwrap();
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !proxy.stderr().contains("configuration unchanged"),
        "a neighbour's writes woke the reloader:\n{}",
        proxy.stderr()
    );
    // The configuration rewritten with the same bytes is looked at (and found unchanged).
    let file = proxy.config_file();
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text).unwrap();
    eventually(PATIENCE, || async {
        proxy.stderr().contains("configuration unchanged")
    })
    .await;
}
