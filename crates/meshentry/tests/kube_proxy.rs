//! `meshentry proxy --kubernetes` following a real API server (apiextensions-apiserver over etcd
//! with Istio's CRDs; `scripts/k8s-apiserver`): changes applied with `kubectl` served live, an
//! API server and etcd crash under load survived on the last good configuration, 410 Gone after
//! an etcd compaction answered by listing again, and an object the CRD schema accepts but
//! meshentry rejects skipped on its own. The proxy is a separate process; requests are real
//! HTTP/1.1 through its explicit proxy port to upstreams on 127.x.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshentry_testutil::raw::RawClient;
use meshentry_testutil::{HttpUpstream, KubeApi, Proxy, eventually, unique_loopback};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");

/// A ServiceEntry named `name` for host `NAME.internal` on port 80, to `upstream`.
fn entry(name: &str, upstream: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.internal]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {ip}, ports: {{http: {port}}}}}]
",
        ip = upstream.ip(),
        port = upstream.port()
    )
}

/// `GET http://HOST/` through the proxy on a connection of its own: the status, or why there
/// was none.
async fn get(proxy: SocketAddr, host: &str) -> Result<u16, String> {
    let mut c = RawClient::connect(proxy).await?;
    c.send(format!("GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    Ok(c.read_response("GET", Duration::from_secs(10)).await?.status)
}

async fn start_api() -> KubeApi {
    tokio::task::spawn_blocking(KubeApi::start).await.unwrap()
}

async fn start_proxy(kube: &KubeApi) -> Proxy {
    Proxy::builder(BIN)
        .no_config_dir()
        .args(["--kubernetes", "--kubeconfig"])
        .arg(kube.kubeconfig())
        .args(["--outbound-policy", "REGISTRY_ONLY"])
        .start()
        .await
}

fn source(dump: &Value) -> &Value {
    &dump["source"]
}

fn hosts(dump: &Value) -> Vec<String> {
    let mut hosts: Vec<String> = dump["registry"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["host"].as_str().unwrap().to_string())
        .collect();
    hosts.sort();
    hosts
}

/// Waits until `host` answers `want` through the proxy; returns how long that took.
async fn served(proxy: SocketAddr, host: &str, want: u16) -> Duration {
    let started = Instant::now();
    eventually(Duration::from_secs(10), || async {
        match get(proxy, host).await {
            Ok(s) if s == want => Ok(()),
            other => Err(format!("{host}: {other:?}, waiting for {want}")),
        }
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_applied_with_kubectl_are_served_live() {
    let kube = start_api().await;
    let a = HttpUpstream::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 8080), "a");
    let b = HttpUpstream::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 8080), "b");
    kube.apply_yaml(&entry("web", a.addr()), None);
    let proxy = start_proxy(&kube).await;
    let at = proxy.http();
    assert_eq!(get(at, "web.internal").await, Ok(200));
    assert_eq!(a.requests(), 1);
    let dump = proxy.config_dump().await;
    assert_eq!(source(&dump)["state"], "CURRENT", "{dump:#}");
    assert_eq!(source(&dump)["kind"], "kubernetes");

    // A new object, an edit and a delete, each timed from kubectl returning to the proxy
    // serving it (debounce included). The bound is loose: the figures are measured in the
    // benchmark (BENCHMARKS.md), not here.
    let mut took = Vec::new();
    kube.apply_yaml(&entry("api", b.addr()), None);
    took.push(("new", served(at, "api.internal", 200).await));
    let edited = entry("web", b.addr());
    kube.apply_yaml(&edited, None);
    let started = Instant::now();
    eventually(Duration::from_secs(10), || async {
        let before = b.requests();
        get(at, "web.internal").await?;
        (b.requests() > before)
            .then_some(())
            .ok_or_else(|| "web.internal still goes to a".to_string())
    })
    .await;
    took.push(("edit", started.elapsed()));
    kube.delete("serviceentry", "default", "api", None);
    took.push(("delete", served(at, "api.internal", 502).await));
    for (what, t) in &took {
        eprintln!("{what}: served {t:?} after kubectl returned");
        assert!(*t < Duration::from_secs(5), "{what} took {t:?}");
    }
    let dump = proxy.config_dump().await;
    assert_eq!(hosts(&dump), ["web.internal"]);
    assert_eq!(proxy.stat("config_reloads_total").await, 3, "one reload per change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_meshentry_rejects_is_skipped_alone_and_applies_once_fixed() {
    let kube = start_api().await;
    let up = HttpUpstream::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 8080), "up");
    kube.apply_yaml(&entry("good", up.addr()), None);
    // The CRD's schema takes any string as an address; Istio's validation (and meshentry's)
    // does not.
    let bad = entry("bad", up.addr()).replace("resolution: STATIC", "resolution: STATIC\n  addresses: [not-an-ip]");
    kube.apply_yaml(&bad, None);
    let proxy = start_proxy(&kube).await;
    let at = proxy.http();
    assert_eq!(get(at, "good.internal").await, Ok(200));
    assert_eq!(
        get(at, "bad.internal").await,
        Ok(502),
        "the invalid object is not served"
    );
    let dump = proxy.config_dump().await;
    assert_eq!(hosts(&dump), ["good.internal"]);
    let skipped = dump["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{dump:#}");
    assert_eq!(skipped[0]["object"], "kubernetes://default/ServiceEntry/bad");
    let error = skipped[0]["errors"][0].as_str().unwrap();
    assert!(
        error.contains("spec.addresses[0]") && error.contains("not-an-ip"),
        "{error}"
    );
    assert_eq!(proxy.stat("config_objects_skipped").await, 1);
    meshentry_testutil::schema::check("admin-config-dump", &dump);
    assert!(
        proxy
            .process
            .output()
            .contains("skipped: kubernetes://default/ServiceEntry/bad"),
        "{}",
        proxy.process.output()
    );

    kube.apply_yaml(&entry("bad", up.addr()), None);
    served(at, "bad.internal", 200).await;
    let dump = proxy.config_dump().await;
    assert_eq!(dump["skipped"], Value::Array(Vec::new()));
    assert_eq!(proxy.stat("config_objects_skipped").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_and_etcd_crash_under_load_fails_no_request() {
    let kube = start_api().await;
    let up = HttpUpstream::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 8080), "up");
    let later = HttpUpstream::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 8080), "later");
    kube.apply_yaml(&entry("web", up.addr()), None);
    let proxy = start_proxy(&kube).await;
    let at = proxy.http();
    assert_eq!(get(at, "web.internal").await, Ok(200));

    // Clients keep sending throughout: every request must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match get(at, "web.internal").await {
                    Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        failures.push(format!("{other:?}"));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| kube.kill());
    let down = Instant::now();
    let stale = eventually(Duration::from_secs(10), || async {
        let dump = proxy.config_dump().await;
        (source(&dump)["state"] == "STALE")
            .then_some(dump)
            .ok_or("not stale yet")
    })
    .await;
    assert_eq!(source(&stale)["connected"], false);
    assert!(source(&stale)["error"].is_string(), "{stale:#}");
    meshentry_testutil::schema::check("admin-config-dump", &stale);
    assert_eq!(hosts(&stale), ["web.internal"], "the last good configuration stays");
    assert_eq!(proxy.stat("config_source_connected").await, 0);
    let before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down.elapsed())).await;
    assert!(
        ok.load(Ordering::Relaxed) > before + 100,
        "requests kept flowing while the API server was down"
    );
    assert!(proxy.stat("config_source_stale_seconds").await >= 25);
    assert!(
        proxy
            .process
            .output()
            .contains("lost the API server: serving the last configuration read"),
        "{}",
        proxy.process.output()
    );

    tokio::task::block_in_place(|| kube.restart());
    let current = eventually(Duration::from_secs(30), || async {
        let dump = proxy.config_dump().await;
        (source(&dump)["state"] == "CURRENT")
            .then_some(dump)
            .ok_or("not reconnected yet")
    })
    .await;
    assert_eq!(hosts(&current), ["web.internal"]);
    assert_eq!(proxy.stat("config_source_connected").await, 1);
    // Resynced: a change made after the restart is served.
    kube.apply_yaml(&entry("later", later.addr()), None);
    served(at, "later.internal", 200).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:?}",
        failed.load(Ordering::Relaxed),
        ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed)
    );
    assert!(
        ok.load(Ordering::Relaxed) > 1000,
        "{} requests",
        ok.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_older_than_a_compaction_lists_again_without_losing_or_repeating_anything() {
    let kube = start_api().await;
    let up = HttpUpstream::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 8080), "up");
    for name in ["keep", "edit", "gone"] {
        kube.apply_yaml(&entry(name, up.addr()), None);
    }
    let proxy = start_proxy(&kube).await;
    let at = proxy.http();
    for name in ["keep", "edit", "gone"] {
        assert_eq!(get(at, &format!("{name}.internal")).await, Ok(200));
    }
    // The proxy's API server goes away; another one over the same etcd takes the changes, and
    // etcd's history is compacted past the proxy's resourceVersions.
    let other = meshentry_testutil::free_port(std::net::Ipv4Addr::LOCALHOST);
    tokio::task::block_in_place(|| {
        kube.serve(other);
        kube.kill_apiserver();
    });
    kube.delete("serviceentry", "default", "gone", Some(other));
    kube.apply_yaml(&entry("new", up.addr()), Some(other));
    let edited = entry("edit", up.addr()).replace("[edit.internal]", "[edited.internal]");
    kube.apply_yaml(&edited, Some(other));
    tokio::task::block_in_place(|| kube.compact());
    tokio::task::block_in_place(|| kube.serve(kube.port()));

    let dump = eventually(Duration::from_secs(30), || async {
        let dump = proxy.config_dump().await;
        (source(&dump)["state"] == "CURRENT" && hosts(&dump).contains(&"new.internal".to_string()))
            .then_some(dump)
            .ok_or("not resynced yet")
    })
    .await;
    assert!(
        source(&dump)["gone"].as_u64().unwrap() >= 1,
        "the watch was answered 410 Gone: {dump:#}"
    );
    assert!(source(&dump)["relists"].as_u64().unwrap() >= 1, "{dump:#}");
    // Exactly the cluster's objects: the deleted one gone, the new and edited ones once each.
    assert_eq!(
        hosts(&dump),
        ["edited.internal", "keep.internal", "new.internal"],
        "{dump:#}"
    );
    assert_eq!(source(&dump)["objects"], 3);
    assert_eq!(get(at, "gone.internal").await, Ok(502));
    assert_eq!(get(at, "edit.internal").await, Ok(502));
    for host in ["keep.internal", "new.internal", "edited.internal"] {
        assert_eq!(get(at, host).await, Ok(200), "{host}");
    }
    assert!(
        proxy.process.output().contains("410 Gone"),
        "{}",
        proxy.process.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_namespace_and_selector_narrow_what_a_proxy_reads() {
    let kube = start_api().await;
    let up = HttpUpstream::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 8080), "up");
    let labelled = |name: &str, ns: &str, label: &str| {
        entry(name, up.addr()).replace(
            "namespace: default}",
            &format!("namespace: {ns}, labels: {{meshentry.io/proxy: {label}}}}}"),
        )
    };
    kube.apply_yaml(&labelled("mine", "team-a", "egress"), None);
    kube.apply_yaml(&labelled("other-label", "team-a", "ingress"), None);
    kube.apply_yaml(&labelled("other-ns", "team-b", "egress"), None);
    let proxy = Proxy::builder(BIN)
        .no_config_dir()
        .args(["--kubernetes", "--kubeconfig"])
        .arg(kube.kubeconfig())
        .args([
            "--watch-namespace",
            "team-a",
            "--watch-selector",
            "meshentry.io/proxy=egress",
        ])
        .args(["--outbound-policy", "REGISTRY_ONLY"])
        .start()
        .await;
    let dump = proxy.config_dump().await;
    assert_eq!(hosts(&dump), ["mine.internal"], "{dump:#}");
    assert_eq!(source(&dump)["objects"], 1);
    assert_eq!(get(proxy.http(), "mine.internal").await, Ok(200));
    assert_eq!(get(proxy.http(), "other-ns.internal").await, Ok(502));
    // A new object in the namespace, with the label, is followed; one without is not.
    kube.apply_yaml(&labelled("later", "team-a", "egress"), None);
    kube.apply_yaml(&labelled("later-b", "team-b", "egress"), None);
    served(proxy.http(), "later.internal", 200).await;
    assert_eq!(get(proxy.http(), "later-b.internal").await, Ok(502));
}

/// `istio-system/gw` with one plain HTTP server for `web.internal` on `port`, a VirtualService
/// bound to it, and the ServiceEntry it routes to (`upstream`, port 80 there).
fn gateway_config(port: u16, upstream: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: gw}}
  servers:
  - {{port: {{number: {port}, name: http, protocol: HTTP}}, hosts: [web.internal]}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: istio-system}}
spec:
  hosts: [web.internal]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: web.internal}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: istio-system}}
spec:
  hosts: [web.internal]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {target}}}]
  resolution: STATIC
  endpoints: [{{address: {ip}}}]
",
        ip = upstream.ip(),
        target = upstream.port()
    )
}

/// `GET /` with `Host: web.internal` sent to a Gateway port.
async fn get_gateway(at: SocketAddr) -> Result<u16, String> {
    let mut c = RawClient::connect(at).await?;
    c.send(b"GET / HTTP/1.1\r\nHost: web.internal\r\nConnection: close\r\n\r\n")
        .await?;
    Ok(c.read_response("GET", Duration::from_secs(10)).await?.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_from_the_cluster_opens_and_moves_its_ports_with_the_gateway() {
    let kube = start_api().await;
    let own = unique_loopback();
    let up = HttpUpstream::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 8080), "up");
    let (first, second) = (meshentry_testutil::free_port(own), meshentry_testutil::free_port(own));
    kube.apply_yaml(&gateway_config(first, up.addr()), None);
    let proxy = Proxy::builder(BIN)
        .ip(own)
        .no_config_dir()
        .args(["--kubernetes", "--kubeconfig"])
        .arg(kube.kubeconfig())
        .args(["--gateway", "istio-system/gw", "--labels", "istio=gw", "--gateway-bind"])
        .arg(own.to_string())
        .start()
        .await;
    let (a, b) = (
        SocketAddr::new(IpAddr::V4(own), first),
        SocketAddr::new(IpAddr::V4(own), second),
    );
    assert_eq!(get_gateway(a).await, Ok(200));
    assert_eq!(up.requests(), 1);
    // The Gateway moves to another port: the proxy follows.
    kube.apply_yaml(&gateway_config(second, up.addr()), None);
    eventually(Duration::from_secs(10), || async {
        (get_gateway(b).await == Ok(200) && get_gateway(a).await.is_err())
            .then_some(())
            .ok_or("the listener has not moved yet")
    })
    .await;
    assert_eq!(
        proxy.config_dump().await["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["kind"] == "gateway")
            .map(|l| l["address"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        [b.to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_while_the_api_server_is_down_is_ready_once_it_has_synced() {
    let kube = start_api().await;
    let up = HttpUpstream::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 8080), "up");
    kube.apply_yaml(&entry("web", up.addr()), None);
    tokio::task::block_in_place(|| kube.kill());
    let kube = Arc::new(kube);
    let own = unique_loopback();
    let admin = SocketAddr::new(IpAddr::V4(own), 15000);
    // `start` returns when /ready answers 200.
    let starting = {
        let kube = kube.clone();
        tokio::spawn(async move {
            Proxy::builder(BIN)
                .ip(own)
                .no_config_dir()
                .args(["--kubernetes", "--kubeconfig"])
                .arg(kube.kubeconfig())
                .args(["--outbound-policy", "REGISTRY_ONLY"])
                .start()
                .await
        })
    };
    // Without its configuration the proxy serves nothing, and says nothing is ready: its
    // admin port (where /ready is) is not open yet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "the admin port opened before the first sync"
    );
    assert!(!starting.is_finished());
    tokio::task::block_in_place(|| kube.restart());
    let proxy = starting.await.unwrap();
    assert_eq!(get(proxy.http(), "web.internal").await, Ok(200));
    assert_eq!(proxy.config_dump().await["source"]["state"], "CURRENT");
}

/// The seed examples (Istio's ServiceEntry page), all of them, as a proxy builds them: from the
/// files, and from a cluster they were applied to with kubectl. Traffic through each is in
/// `kube_seed` (the `proxy_seed` cases against a cluster); this shows that every example, the
/// ones those cases do not send traffic through included, configures the proxy identically.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seed_example_configures_the_proxy_from_a_cluster_as_from_its_files() {
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed/v1beta1");
    let kube = start_api().await;
    tokio::task::block_in_place(|| kube.apply(&seed));
    for gateway in [None, Some("istio-system/istio-egressgateway")] {
        let with = |b: meshentry_testutil::ProxyBuilder<'static>| match gateway {
            Some(gw) => b.args(["--gateway", gw, "--labels", "istio=egressgateway", "--gateway-bind"]),
            None => b,
        };
        let own = unique_loopback();
        let files = with(Proxy::builder(BIN).ip(own).no_config_dir().arg("--config").arg(&seed));
        let files = match gateway {
            Some(_) => files.arg(own.to_string()),
            None => files,
        }
        .start()
        .await;
        let own = unique_loopback();
        let cluster = with(
            Proxy::builder(BIN)
                .ip(own)
                .no_config_dir()
                .args(["--kubernetes", "--kubeconfig"])
                .arg(kube.kubeconfig()),
        );
        let cluster = match gateway {
            Some(_) => cluster.arg(own.to_string()),
            None => cluster,
        }
        .start()
        .await;
        let (a, b) = (files.config_dump().await, cluster.config_dump().await);
        for part in [
            "registry",
            "routes",
            "outboundPorts",
            "clusters",
            "outboundTrafficPolicy",
        ] {
            assert_eq!(a[part], b[part], "{part} differs ({gateway:?})");
        }
        assert!(a["registry"]["services"].as_array().unwrap().len() >= 10, "{a:#}");
        assert_eq!(b["skipped"], Value::Array(Vec::new()));
        if gateway.is_some() {
            let ports = |d: &Value| -> Vec<String> {
                d["listeners"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|l| l["kind"] == "gateway")
                    .map(|l| l["address"].as_str().unwrap().rsplit(':').next().unwrap().to_string())
                    .collect()
            };
            assert!(!ports(&a).is_empty());
            assert_eq!(ports(&a), ports(&b), "the same Gateway ports");
        }
    }
}
