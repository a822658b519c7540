//! VirtualService route matching (issue 7): 1,000 services, each with a VirtualService of 10
//! HTTP rules (URI prefixes, a header, a method, a query parameter, a weighted split across
//! two subsets). One iteration routes one request the way the data path does: the registry
//! lookup, the route table lookup, the rule walk, the weighted pick and the cluster decision.
//! The request matches the 10th rule, so every rule before it is tried.

use std::fmt::Write;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use meshentry_route::base::config::ProxyConfig;
use meshentry_route::model::snapshot::Snapshot;
use meshentry_route::model::vs::PlainRequest;
use meshentry_route::route;

const SERVICES: usize = 1_000;

fn config() -> String {
    let mut y = String::new();
    for i in 0..SERVICES {
        let _ = write!(
            y,
            r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-{i}}}
spec:
  hosts: [svc-{i}.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 10.0.{a}.{b}, labels: {{version: v1}}}}
  - {{address: 10.1.{a}.{b}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc-{i}}}
spec:
  host: svc-{i}.example.com
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc-{i}}}
spec:
  hosts: [svc-{i}.example.com]
  http:
"#,
            a = i / 250,
            b = i % 250 + 1,
        );
        for r in 0..9 {
            let _ = write!(
                y,
                r#"  - match: [{{uri: {{prefix: /r{r}/}}, headers: {{x-user: {{exact: u{r}}}}}}}, {{uri: {{regex: "/re{r}/[0-9]+"}}}}]
    route: [{{destination: {{host: svc-{i}.example.com, subset: v1}}}}]
"#
            );
        }
        let _ = write!(
            y,
            r#"  - match: [{{uri: {{prefix: /api/}}, method: {{exact: GET}}, queryParams: {{debug: {{exact: "1"}}}}}}]
    route:
    - {{destination: {{host: svc-{i}.example.com, subset: v1}}, weight: 80}}
    - {{destination: {{host: svc-{i}.example.com, subset: v2}}, weight: 20}}
"#
        );
    }
    y
}

fn matching(c: &mut Criterion) {
    let yaml = config();
    let loaded = meshentry_api::load_str("bench.yaml", &yaml, &meshentry_api::LoadOptions::default());
    assert!(!loaded.has_errors());
    let valid: Vec<_> = loaded.valid().collect();
    let snap = Snapshot::build(&valid, &ProxyConfig::default(), 1);
    let req = PlainRequest {
        method: "GET",
        path: "/api/items?debug=1",
        authority: "svc-777.example.com",
        headers: &[("x-user", "someone")],
    };
    let host = "svc-777.example.com";
    let decide = || {
        let decision = route::route(&snap, black_box(host), 80);
        let routes = snap
            .routes
            .http_for(decision.service_port(), host, 80)
            .expect("a route table");
        let sel = routes.select(black_box(&req)).expect("the last rule matches");
        let dest = sel.rule.pick().expect("a destination");
        route::to_target(&snap, &dest.target)
            .ok()
            .map(|d| d.cluster_name().len())
    };
    assert!(decide().is_some());
    let mut group = c.benchmark_group("virtual_service");
    group.bench_function("route_1000_vs_x_10_rules_last_rule", |b| b.iter(decide));
    group.bench_function("registry_route_only", |b| {
        b.iter(|| route::route(&snap, black_box(host), 80).cluster_name().len())
    });
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
