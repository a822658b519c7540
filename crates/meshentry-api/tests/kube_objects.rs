//! Kubernetes Services and EndpointSlices as the loader reads them: leniently (real objects
//! carry far more than meshentry models), reporting only what would leave one unusable.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use meshentry_api::model::IntOrString;
use meshentry_api::{Kind, LoadOptions, ServicesKnown, Severity, Spec, load_str};

fn lines(text: &str) -> Vec<String> {
    load_str("k.yaml", text, &LoadOptions::default())
        .findings
        .iter()
        .map(|f| f.to_string())
        .collect()
}

/// As `kubectl get svc reviews -o json` prints it.
const SERVICE_JSON: &str = r#"{
  "apiVersion": "v1",
  "kind": "Service",
  "metadata": {
    "annotations": {"networking.istio.io/exportTo": " . , istio-system"},
    "creationTimestamp": "2026-01-05T10:00:00Z",
    "labels": {"app": "reviews"},
    "name": "reviews",
    "namespace": "bookinfo",
    "resourceVersion": "1042",
    "uid": "6f0c8f5e-51a1-4a43-9d0e-0d6b1f2c7d10"
  },
  "spec": {
    "clusterIP": "10.96.0.20",
    "clusterIPs": ["10.96.0.20"],
    "internalTrafficPolicy": "Cluster",
    "ipFamilies": ["IPv4"],
    "ipFamilyPolicy": "SingleStack",
    "ports": [
      {"name": "http", "port": 9080, "protocol": "TCP", "targetPort": 9080},
      {"name": "grpc", "port": 9090, "protocol": "TCP", "targetPort": "grpc-port", "appProtocol": "grpc"}
    ],
    "selector": {"app": "reviews"},
    "sessionAffinity": "None",
    "type": "ClusterIP"
  },
  "status": {"loadBalancer": {}}
}"#;

#[test]
fn a_service_is_read_leniently() {
    let loaded = load_str("k.json", SERVICE_JSON, &LoadOptions::default());
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    let r = &loaded.resources[0];
    assert_eq!(r.kind(), Kind::Service);
    assert_eq!(r.namespace, "bookinfo");
    let Spec::Service(svc) = &r.spec else {
        panic!("{:?}", r.spec)
    };
    assert_eq!(svc.export_to, [".", "istio-system"]);
    assert_eq!(svc.spec.cluster_ip, "10.96.0.20");
    assert_eq!(svc.spec.ports[0].target_port(), Some(IntOrString::Int(9080)));
    assert_eq!(
        svc.spec.ports[1].target_port(),
        Some(IntOrString::String("grpc-port".into()))
    );
    assert_eq!(svc.spec.ports[1].app_protocol.as_deref(), Some("grpc"));
    assert_eq!(loaded.services_known, ServicesKnown::Files);
}

#[test]
fn an_endpoint_slice_is_read_from_the_top_of_the_document() {
    let text = "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reviews-8fk2x
  namespace: bookinfo
  labels: {kubernetes.io/service-name: reviews, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io}
addressType: IPv4
endpoints:
- addresses: [10.1.0.1]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-1
  zone: zone-a
  targetRef: {kind: Pod, name: reviews-v1-abc, namespace: bookinfo, uid: 0d1c2b3a-0000-4000-8000-000000000001}
- addresses: [10.1.0.2]
ports:
- {name: http, port: 9080, protocol: TCP}
";
    let loaded = load_str("k.yaml", text, &LoadOptions::default());
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    let Spec::EndpointSlice(slice) = &loaded.resources[0].spec else {
        panic!()
    };
    assert_eq!(slice.address_type, "IPv4");
    assert_eq!(slice.endpoints[0].conditions.ready, Some(true));
    assert_eq!(slice.endpoints[1].conditions.ready, None);
    assert_eq!(slice.endpoints[0].target_ref.as_ref().unwrap().name, "reviews-v1-abc");
    assert_eq!(slice.ports[0].port, 9080);
    // A slice alone says nothing about which Services exist.
    assert_eq!(loaded.services_known, ServicesKnown::Unknown);
}

#[test]
fn what_makes_a_service_unusable_is_reported() {
    let got = lines(
        "apiVersion: v1
kind: Service
metadata: {name: bad}
spec:
  type: Cluster
  clusterIP: 10.96.0
  ports:
  - {name: http, port: 0, targetPort: 70000}
  - {name: http, port: 81, protocol: tcp, targetPort: [1]}
  - {port: 82}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName}
",
    );
    assert_eq!(
        got,
        [
            "k.yaml:5:9: Service default/bad: spec.type: unknown Service type \"Cluster\" (one of ClusterIP, NodePort, LoadBalancer, ExternalName)",
            "k.yaml:6:14: Service default/bad: spec.clusterIP: clusterIP \"10.96.0\" is neither an IP address nor None",
            "k.yaml:8:24: Service default/bad: spec.ports[0].port: port number 0 must be in the range 1..65535",
            "k.yaml:8:39: Service default/bad: spec.ports[0].targetPort: target port 70000 must be in the range 1..65535",
            "k.yaml:9:12: Service default/bad: spec.ports[1].name: port name \"http\" is also the name of spec.ports[0]: endpoints are matched to ports by name",
            "k.yaml:9:38: Service default/bad: spec.ports[1].protocol: unknown protocol \"tcp\" (one of TCP, UDP, SCTP)",
            "k.yaml:9:55: Service default/bad: spec.ports[1].targetPort: targetPort must be a port number or a port name, found [1]",
            "k.yaml:10:5: Service default/bad: spec.ports[2].name: a Service with several ports must name each (endpoints are matched to ports by name)",
            "k.yaml:15:7: Service default/ext: spec.externalName: warning: an ExternalName Service without externalName: Istio reads it as an ordinary Service with no address",
        ]
    );
}

#[test]
fn what_makes_a_slice_unusable_is_reported() {
    let loaded = load_str(
        "k.yaml",
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: orphan}
addressType: IPv4
endpoints:
- addresses: [10.1.0.1, \"fd00::1\", pod.example]
ports: [{name: http, port: 70000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: names, labels: {kubernetes.io/service-name: ext}}
addressType: FQDN
endpoints: [{addresses: [api.example.com]}]
---
apiVersion: v1
kind: EndpointSlice
metadata: {name: old}
",
        &LoadOptions::default(),
    );
    let got: Vec<String> = loaded.findings.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        got,
        [
            "k.yaml:3:11: EndpointSlice default/orphan: metadata.labels: warning: no label kubernetes.io/service-name: the slice belongs to no Service, and Istio does not read it",
            "k.yaml:6:25: EndpointSlice default/orphan: endpoints[0].addresses[1]: \"fd00::1\" is not an IPv4 address",
            "k.yaml:6:36: EndpointSlice default/orphan: endpoints[0].addresses[2]: \"pod.example\" is not an IPv4 address",
            "k.yaml:7:28: EndpointSlice default/orphan: ports[0].port: port number 70000 must be in the range 0..65535",
            "k.yaml:12:14: EndpointSlice default/names: addressType: warning: an FQDN slice: Istio does not read its endpoints (istio/istio#34995)",
        ]
    );
    // `v1 EndpointSlice` is not the discovery.k8s.io kind: noted, not read.
    assert!(
        loaded.notices.iter().any(|n| n.contains("EndpointSlice (core)")),
        "{:?}",
        loaded.notices
    );
    assert!(loaded.findings.iter().all(|f| f.severity != Severity::Info));
}
