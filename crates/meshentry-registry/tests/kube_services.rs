//! Kubernetes Services in the registry, as Istio's Kubernetes registry builds them
//! (`pilot/pkg/serviceregistry/kube/conversion.go`, `kube/controller/endpointslice.go`), and
//! in the analysis: the lookups the data plane does, the cluster domain, ExternalName aliases,
//! and what `validate` says once Services are known. The registry's JSON for the same kind of
//! input is the fixture `fixtures/kube-services.*`.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::IpAddr;

use meshentry_api::{ClusterDomain, LoadOptions, Loaded, ServicesKnown, load_str};
use meshentry_registry::{BuildOptions, Protocol, Provider, Registry, Resolution};

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default, labels: {app: reviews}}
spec:
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20, "fd00::20"]
  selector: {app: reviews}
  ports:
  - {name: http-web, port: 9080, targetPort: 9080}
  - {name: tls, port: 443, targetPort: 8443}
  - {name: whatever, port: 3306}
  - {name: custom, port: 7000, appProtocol: grpc}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: reviews-1, namespace: default, labels: {kubernetes.io/service-name: reviews}}
addressType: IPv4
endpoints:
- addresses: [10.1.0.1]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: reviews-v1, namespace: default}
- addresses: [10.1.0.2]
  conditions: {ready: false, terminating: true}
  targetRef: {kind: Pod, name: reviews-v2, namespace: default}
- addresses: [10.1.0.3]
  targetRef: {kind: Pod, name: reviews-v3, namespace: default}
ports:
- {name: http-web, port: 19080}
- {name: tls, port: 8443}
- {name: custom, port: 7000}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reviews-mcs
  namespace: default
  labels: {kubernetes.io/service-name: reviews, multicluster.kubernetes.io/service-name: reviews}
addressType: IPv4
endpoints: [{addresses: [10.9.9.9]}]
ports: [{name: http-web, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: default, labels: {app: reviews, version: v1}}
spec: {serviceAccountName: reviews}
status: {podIP: 10.1.0.1, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v3, namespace: default, labels: {app: reviews, version: v3, istio.io/draining: "true"}}
status: {podIP: 10.1.0.3, phase: Running}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: data}
spec:
  clusterIP: None
  ports: [{name: tcp, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: data, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints: [{addresses: [10.2.0.7]}]
ports: [{name: tcp, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: private, namespace: data, annotations: {networking.istio.io/exportTo: "."}}
spec: {clusterIP: 10.96.1.1, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: default}
spec: {type: ExternalName, externalName: reviews.default.svc.cluster.local}
---
apiVersion: v1
kind: Service
metadata: {name: hop, namespace: other}
spec: {type: ExternalName, externalName: legacy.default.svc.cluster.local}
---
apiVersion: v1
kind: Service
metadata: {name: loop-a, namespace: default}
spec: {type: ExternalName, externalName: loop-b.default.svc.cluster.local}
---
apiVersion: v1
kind: Service
metadata: {name: loop-b, namespace: default}
spec: {type: ExternalName, externalName: loop-a.default.svc.cluster.local}
"#;

fn load(text: &str) -> Loaded {
    let loaded = load_str("k.yaml", text, &LoadOptions::default());
    let errors: Vec<String> = loaded.errors().map(|f| f.to_string()).collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    loaded
}

fn registry(text: &str) -> Registry {
    Registry::build(&load(text).resources)
}

#[test]
fn a_cluster_ip_service_is_load_balanced_over_its_ready_endpoints() {
    let r = registry(SERVICES);
    let s = r
        .view("default")
        .lookup_host("reviews.default.svc.cluster.local")
        .unwrap();
    assert_eq!(s.provider, Provider::Kubernetes);
    assert_eq!(s.resolution, Resolution::Static);
    assert_eq!(s.location, meshentry_registry::Location::MeshInternal);
    // Dual stack: every clusterIP is a VIP.
    let vips: Vec<&str> = s.addresses.iter().map(|a| &*a.text).collect();
    assert_eq!(vips, ["10.96.0.20", "fd00::20"]);
    // Protocols: the name's prefix, the well-known MySQL port, appProtocol.
    let protocols: Vec<(u32, Protocol)> = s.ports.iter().map(|p| (p.number, p.protocol)).collect();
    assert_eq!(
        protocols,
        [
            (9080, Protocol::Http),
            (443, Protocol::Tls),
            (3306, Protocol::Tcp),
            (7000, Protocol::Grpc)
        ]
    );
    // Ready endpoints only (10.1.0.2 is terminating), not the draining Pod's (10.1.0.3), not
    // the multi-cluster slice's; on the slice's port of the service port's name.
    let http = s.port(9080).unwrap();
    let eps: Vec<(String, u32)> = s
        .endpoints_for(http)
        .map(|e| (e.address().to_string(), e.port))
        .collect();
    assert_eq!(eps, [("10.1.0.1".to_string(), 19080)]);
    let ep = s.endpoints_for(http).next().unwrap();
    assert_eq!(ep.workload.labels.get("version").map(String::as_str), Some("v1"));
    assert_eq!(&*ep.workload.service_account, "reviews");
    // No slice port named `whatever`: no endpoints on 3306.
    assert_eq!(s.endpoints_for(s.port(3306).unwrap()).count(), 0);
    // The VIP routes, on a declared port only.
    let view = r.view("x");
    let vip: IpAddr = "10.96.0.20".parse().unwrap();
    assert_eq!(
        &*view.lookup_addr(vip, 9080).unwrap().host,
        "reviews.default.svc.cluster.local"
    );
    assert!(view.lookup_addr(vip, 1234).is_none());
    assert_eq!(
        &*view.lookup_sni("reviews.default.svc.cluster.local", 443).unwrap().host,
        "reviews.default.svc.cluster.local"
    );
}

#[test]
fn a_headless_service_is_original_destination_with_a_listener_per_endpoint() {
    let r = registry(SERVICES);
    let view = r.view("default");
    let s = view.lookup_host("db.data.svc.cluster.local").unwrap();
    assert_eq!(s.resolution, Resolution::None);
    assert!(s.addresses.is_empty());
    let pod: IpAddr = "10.2.0.7".parse().unwrap();
    assert_eq!(&*view.lookup_addr(pod, 5432).unwrap().host, "db.data.svc.cluster.local");
    // No catch-all on the port: a headless service does not take every destination's TCP.
    assert!(view.lookup_port(5432).is_none());
}

#[test]
fn the_export_to_annotation_limits_who_sees_a_service() {
    let r = registry(SERVICES);
    assert!(r.view("data").lookup_host("private.data.svc.cluster.local").is_some());
    assert!(
        r.view("default")
            .lookup_host("private.data.svc.cluster.local")
            .is_none()
    );
}

#[test]
fn an_external_name_service_is_an_alias_of_the_service_it_names() {
    let r = registry(SERVICES);
    let view = r.view("default");
    // No service of its own: its host finds the concrete service, through another alias too.
    for alias in [
        "legacy.default.svc.cluster.local",
        "hop.other.svc.cluster.local",
        "LEGACY.default.svc.cluster.local.",
    ] {
        assert_eq!(
            &*view.lookup_host(alias).unwrap().host,
            "reviews.default.svc.cluster.local",
            "{alias}"
        );
    }
    assert_eq!(
        &*view.lookup_sni("legacy.default.svc.cluster.local", 443).unwrap().host,
        "reviews.default.svc.cluster.local"
    );
    assert!(
        r.services()
            .all(|s| !s.host.starts_with("legacy.") && !s.host.starts_with("loop-"))
    );
    // A loop is no alias at all (Kubernetes' DNS answers it with NXDOMAIN).
    assert!(view.lookup_host("loop-a.default.svc.cluster.local").is_none());
    let reviews = view.lookup_host("reviews.default.svc.cluster.local").unwrap();
    let aliases: Vec<&str> = reviews.aliases.iter().map(|a| &**a).collect();
    assert_eq!(
        aliases,
        ["legacy.default.svc.cluster.local", "hop.other.svc.cluster.local"]
    );
}

#[test]
fn the_cluster_domain_names_service_hosts_and_short_names() {
    let loaded = load(SERVICES);
    let opts = BuildOptions {
        cluster_domain: ClusterDomain::new("corp.example").unwrap(),
        ..BuildOptions::default()
    };
    let r = Registry::build_with(&loaded.resources, &opts);
    let view = r.view("default");
    assert!(view.lookup_host("reviews.default.svc.corp.example").is_some());
    assert!(view.lookup_host("reviews.default.svc.cluster.local").is_none());
    assert_eq!(r.expand_host("reviews", "default"), "reviews.default.svc.corp.example");
    assert_eq!(r.expand_host("a.b", "default"), "a.b");
    assert!(ClusterDomain::new("Not_A.domain").is_err());
    assert_eq!(ClusterDomain::new("cluster.local.").unwrap(), ClusterDomain::default());
}

#[test]
fn a_kubernetes_service_takes_precedence_over_a_service_entry_of_its_host() {
    // The ServiceEntry is older (first in the file), yet the Service wins in its namespace.
    let text = format!(
        "{}---\n{SERVICES}",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: squat, namespace: default}\nspec: {hosts: [reviews.default.svc.cluster.local], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}\n"
    );
    let r = registry(&text);
    let s = r
        .view("default")
        .lookup_host("reviews.default.svc.cluster.local")
        .unwrap();
    assert_eq!(s.provider, Provider::Kubernetes);
    assert!(
        r.warnings().iter().any(|w| w
            .message
            .contains("ServiceEntry default/squat defines the host of Service default/reviews")),
        "{:?}",
        r.warnings()
    );
}

// === The analysis ===

fn findings(text: &str) -> Vec<String> {
    let loaded = load(text);
    meshentry_registry::analyze::analyze(&loaded)
        .iter()
        .map(|f| format!("{}: {}: {}", f.field, f.code, f.message))
        .collect()
}

const VS: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: routes, namespace: default}
spec:
  hosts: [reviews, ghost]
  http:
  - route:
    - destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}}
      weight: 50
    - destination: {host: ghost.default.svc.cluster.local}
      weight: 50
";

#[test]
fn with_services_known_a_missing_cluster_host_is_reported_as_against_a_live_cluster() {
    let found = findings(&format!("{SERVICES}---\n{VS}"));
    // The Service exists: no IST0101 for it.
    assert!(
        !found
            .iter()
            .any(|f| f.contains("\"reviews.default.svc.cluster.local\"")),
        "{found:#?}"
    );
    // No Service `ghost`: IST0101, and the mesh host matches nothing.
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("spec.http[0].route[1].destination.host: ")
                && f.contains("IST0101")
                && f.contains("the files hold no such Kubernetes Service")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("spec.hosts[1]: ") && f.contains("\"ghost\" matches no service")),
        "{found:#?}"
    );
}

#[test]
fn with_no_service_known_a_cluster_host_may_exist() {
    let found = findings(VS);
    // Offline istioctl still reports both destinations (it knows no Service)...
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("spec.http[0].route[1].destination.host: ")
                && f.contains("no Kubernetes Service was read (offline, istioctl knows none either): add the Service to the files, or read the cluster's with --kubernetes")),
        "{found:#?}"
    );
    // ...but meshentry does not say that a cluster host matches nothing.
    assert!(!found.iter().any(|f| f.starts_with("spec.hosts[")), "{found:#?}");
}

#[test]
fn services_known_follow_what_was_read() {
    let mut loaded = load(VS);
    assert_eq!(loaded.services_known, ServicesKnown::Unknown);
    // A cluster that serves no Services (a bare apiextensions-apiserver) teaches nothing.
    loaded.read_from_cluster(false, None);
    assert_eq!(loaded.services_known, ServicesKnown::Unknown);
    loaded.read_from_cluster(true, Some("default"));
    assert!(loaded.services_known.known_in("default"));
    assert!(!loaded.services_known.known_in("other"));
    assert!(loaded.services_known.is_live());
    assert_eq!(load(SERVICES).services_known, ServicesKnown::Files);
    // Read from a live cluster: no default ingress gateway is assumed, and Services of the
    // namespace read are known.
    let mut live = load(&format!(
        "{VS}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec: {{selector: {{istio: ingressgateway}}, servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ['*']}}]}}\n"
    ));
    let offline = meshentry_registry::analyze::analyze(&live);
    assert!(!offline.iter().any(|f| f.field == "spec.selector"), "{offline:#?}");
    live.read_from_cluster(true, None);
    let found = meshentry_registry::analyze::analyze(&live);
    assert!(
        found.iter().any(|f| f.field == "spec.selector" && f.code == "IST0101"),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.message.contains("the cluster has no such Kubernetes Service")),
        "{found:#?}"
    );
}
