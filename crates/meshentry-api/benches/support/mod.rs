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
