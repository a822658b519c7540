//! `Cluster::load_into` against recorded API responses, replayed to a real `kube::Client`
//! through a `tower::Service` that answers each request path with its file under
//! `tests/recorded/` (`/api/v1/services` is `api__v1__services.json`).
//!
//! Why recorded: the API server the other tests run (`scripts/k8s-apiserver`, the real
//! apiextensions-apiserver over etcd) serves only custom resources, and no full
//! kube-apiserver runs on the test machine, so Namespaces, Pods, Services and EndpointSlices
//! cannot be had live. What the files are:
//!
//! - `apis.json` and everything under `networking.istio.io` were recorded with `kubectl get
//!   --raw PATH` from that real apiextensions-apiserver with Istio's CRDs and a few objects
//!   applied (hence `managedFields`, resourceVersions, and items with their apiVersion and
//!   kind, as a CRD's list has them); `apis.json` then gained the `discovery.k8s.io` group
//!   every kube-apiserver serves;
//! - `api__v1.json` and `apis__discovery.k8s.io__v1.json` are kube-apiserver's
//!   discovery documents as Kubernetes publishes them (`api/discovery/` of kubernetes/kubernetes),
//!   cut down to the resources that matter here;
//! - the core lists (`NamespaceList`, `PodList`, `ServiceList`, `EndpointSliceList`) are in the
//!   exact shape kube-apiserver returns for a bookinfo-like namespace: `kind` and `apiVersion`
//!   on the list, `metadata.resourceVersion`, items without `apiVersion` and `kind`, server-set
//!   fields (uid, resourceVersion, clusterIPs, ownerReferences, conditions) filled in.
//!
//! A request for a path with no file gets the API server's 404 `Status`, and the test checks
//! which paths were asked for, so a change in what is read shows up here.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use meshentry_api::{LoadOptions, Loaded, ServicesKnown};
use meshentry_kube::Cluster;
use meshentry_registry::{Protocol, Registry, Resolution};

fn recorded_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recorded")
}

/// A client whose every request is answered from `tests/recorded/`; the paths asked for are
/// kept in the returned list.
fn replaying_client() -> (kube::Client, Arc<Mutex<BTreeSet<String>>>) {
    let asked = Arc::new(Mutex::new(BTreeSet::new()));
    let seen = asked.clone();
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let path = req.uri().path().to_string();
        seen.lock().unwrap().insert(path.clone());
        async move {
            let file = recorded_dir().join(format!("{}.json", path.trim_start_matches('/').replace('/', "__")));
            let (status, body) = match std::fs::read(&file) {
                Ok(bytes) => (http::StatusCode::OK, bytes),
                Err(_) => (
                    http::StatusCode::NOT_FOUND,
                    br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#.to_vec(),
                ),
            };
            http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
        }
    });
    (kube::Client::new(service, "default"), asked)
}

async fn load() -> (Loaded, usize, BTreeSet<String>) {
    let (client, asked) = replaying_client();
    let cluster = Cluster::from_client(client, "recorded");
    let mut loaded = Loaded::default();
    let added = cluster
        .load_into(&mut loaded, &LoadOptions::default(), None)
        .await
        .unwrap();
    loaded.finish();
    let asked = asked.lock().unwrap().clone();
    (loaded, added, asked)
}

#[tokio::test]
async fn a_clusters_services_and_istio_objects_make_the_registry() {
    let (loaded, added, asked) = load().await;
    // 4 Istio objects, 4 Namespaces, 5 Pods, 6 Services, 4 EndpointSlices.
    assert_eq!(added, 23);
    let errors: Vec<String> = loaded.errors().map(|f| f.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(loaded.services_known, ServicesKnown::Cluster { namespace: None });
    // Every file was read, and nothing else was asked for.
    let files: BTreeSet<String> = std::fs::read_dir(recorded_dir())
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            format!("/{}", name.trim_end_matches(".json").replace("__", "/"))
        })
        .collect();
    assert_eq!(asked, files);

    let registry = Registry::build(&loaded.resources);
    let view = registry.view("bookinfo");
    let reviews = view.lookup_host("reviews.bookinfo.svc.cluster.local").unwrap();
    assert_eq!(&*reviews.addresses[0].text, "10.96.12.7");
    assert_eq!(reviews.resolution, Resolution::Static);
    let http = reviews.port(9080).unwrap();
    assert_eq!(http.protocol, Protocol::Http);
    // v3's endpoint is not ready.
    let eps: Vec<(&str, u32, &str)> = reviews
        .endpoints_for(http)
        .map(|e| (e.address(), e.port, e.workload.labels["version"].as_str()))
        .collect();
    assert_eq!(eps, [("10.244.1.11", 9080, "v1"), ("10.244.1.12", 9080, "v2")]);
    assert_eq!(
        &*reviews.endpoints_for(http).next().unwrap().workload.service_account,
        "bookinfo-reviews"
    );
    // The VIP routes, the headless Service is original destination to its Pod, and the
    // ExternalName Service is an alias of the ServiceEntry of its external name.
    let vip: IpAddr = "10.96.12.7".parse().unwrap();
    assert_eq!(
        &*view.lookup_addr(vip, 9080).unwrap().host,
        "reviews.bookinfo.svc.cluster.local"
    );
    let mongo = view.lookup_host("mongodb.bookinfo.svc.cluster.local").unwrap();
    assert_eq!(mongo.resolution, Resolution::None);
    let pod: IpAddr = "10.244.1.21".parse().unwrap();
    assert_eq!(
        &*view.lookup_addr(pod, 27017).unwrap().host,
        "mongodb.bookinfo.svc.cluster.local"
    );
    assert_eq!(
        &*view.lookup_host("payments.bookinfo.svc.cluster.local").unwrap().host,
        "api.payments.example"
    );
    // Port protocols from names: `https`, `dns-tcp` on the DNS port; UDP left out.
    let api = view.lookup_host("kubernetes.default.svc.cluster.local").unwrap();
    assert_eq!(api.ports[0].protocol, Protocol::Https);
    let eps: Vec<(&str, u32)> = api.endpoints.iter().map(|e| (e.address(), e.port)).collect();
    assert_eq!(eps, [("172.18.0.2", 6443)]);
    let dns = view.lookup_host("kube-dns.kube-system.svc.cluster.local").unwrap();
    let ports: Vec<(u32, Protocol)> = dns.ports.iter().map(|p| (p.number, p.protocol)).collect();
    assert_eq!(ports, [(53, Protocol::Tcp), (9153, Protocol::Unset)]);

    // The analysis knows the cluster's Services: the VirtualServices' destinations exist.
    let findings = meshentry_registry::analyze::analyze(&loaded);
    assert!(
        !findings.iter().any(|f| f.code == "IST0101"),
        "{:#?}",
        findings.iter().map(|f| f.to_string()).collect::<Vec<_>>()
    );
}
