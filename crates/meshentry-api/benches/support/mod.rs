//! Generated configuration for benchmarks: realistic ServiceEntries (3 hosts, 2 ports, an
//! address, 4 endpoints with labels and port maps), about 500 bytes each.

use std::fmt::Write;

pub fn service_entries(n: usize) -> String {
    let mut out = String::with_capacity(n * 560);
    for i in 0..n {
        let (a, b) = (i / 250, i % 250);
        let _ = write!(
            out,
            "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: svc-{i}
  namespace: ns-{ns}
spec:
  hosts:
  - api-{i}.example.com
  - www-{i}.example.com
  - \"*.svc-{i}.example.org\"
  addresses:
  - 10.{a}.{b}.1
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - number: 443
    name: https
    protocol: TLS
  - number: 80
    name: http
    protocol: HTTP
    targetPort: 8080
  endpoints:
  - address: 172.16.{a}.{b}
    labels: {{version: v1, zone: a}}
  - address: 172.17.{a}.{b}
    labels: {{version: v1, zone: b}}
  - address: 172.18.{a}.{b}
    ports: {{http: 9080}}
    labels: {{version: v2, zone: a}}
  - address: 172.19.{a}.{b}
    weight: 3
    labels: {{version: v2, zone: b}}
",
            ns = i % 50
        );
    }
    out
}

/// Routing for [`service_entries`]: per ServiceEntry, a VirtualService (a subset route, a
/// weighted split with a mirror) and a DestinationRule with two subsets, in its namespace; and
/// one egress Gateway the VirtualServices of every tenth ServiceEntry are bound to. All of it
/// resolves, so `meshentry validate` finds nothing to warn about.
#[allow(dead_code)] // The validate bench reads ServiceEntries only; the example and the analysis bench use it.
pub fn routing(n: usize) -> String {
    let mut out = String::with_capacity(n * 900 + 400);
    out.push_str(
        "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: egress
  namespace: istio-system
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*/*.example.com\"]
---
# The gateway's Pod, so that the Gateway's selector selects something (IST0101 otherwise).
apiVersion: v1
kind: Pod
metadata:
  name: egressgateway-0
  namespace: istio-system
  labels: {istio: egressgateway}
spec:
  containers: [{name: istio-proxy, image: proxy}]
---
# And its Service, which exposes the port the Gateway listens on (IST0162 otherwise).
apiVersion: v1
kind: Service
metadata:
  name: istio-egressgateway
  namespace: istio-system
spec:
  selector: {istio: egressgateway}
  ports: [{name: http, port: 80, targetPort: 80}]
",
    );
    for i in 0..n {
        let gateways = if i % 10 == 0 {
            "\n  gateways: [mesh, istio-system/egress]"
        } else {
            ""
        };
        let _ = write!(
            out,
            "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: svc-{i}
  namespace: ns-{ns}
spec:
  hosts: [api-{i}.example.com]{gateways}
  http:
  - match: [{{uri: {{prefix: /v2}}}}]
    route: [{{destination: {{host: api-{i}.example.com, subset: v2, port: {{number: 80}}}}}}]
  - route:
    - {{destination: {{host: api-{i}.example.com, subset: v1, port: {{number: 80}}}}, weight: 90}}
    - {{destination: {{host: www-{i}.example.com, port: {{number: 80}}}}, weight: 10}}
    mirror: {{host: x.svc-{i}.example.org, port: {{number: 80}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: svc-{i}
  namespace: ns-{ns}
spec:
  host: api-{i}.example.com
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
",
            ns = i % 50
        );
    }
    out
}
