//! One test per check, valid and invalid, with the exact message and where it points.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use meshentry_api::{LoadOptions, load_str};

use super::analyze;

/// The analysis findings for `docs` (YAML documents joined with `---`), as printed. The
/// resources must be valid: the checks look at valid resources only.
fn warnings(docs: &[&str]) -> Vec<String> {
    let text = docs.join("---\n");
    let loaded = load_str("t.yaml", &text, &LoadOptions::default());
    assert!(!loaded.has_errors(), "{:#?}", loaded.errors().collect::<Vec<_>>());
    let mut found = analyze(&loaded);
    loaded.place(&mut found);
    found.iter().map(|f| f.to_string()).collect()
}

/// Line of the `n`th document's first line in the joined text, for expected positions.
fn w(line: u32, col: u32, rest: &str) -> String {
    format!("t.yaml:{line}:{col}: {rest}")
}

const HTTPBIN_EGRESS: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: egress}
spec:
  hosts: [httpbin.com]
  exportTo: [\".\"]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
";

const EGRESS_GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
";

/// The seed's gateway-routing VirtualService with `GW` as the gateway name.
fn gateway_routing(gw: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: gateway-routing, namespace: egress}}
spec:
  hosts: [httpbin.com]
  gateways:
  - mesh
  - {gw}
  http:
  - match: [{{port: 80, gateways: [mesh]}}]
    route: [{{destination: {{host: istio-egressgateway.istio-system.svc.cluster.local}}}}]
  - match: [{{port: 80, gateways: [{gw}]}}]
    route: [{{destination: {{host: httpbin.com}}}}]
"
    )
}

// Lines of the joined [HTTPBIN_EGRESS, EGRESS_GATEWAY, gateway_routing] stream: the
// VirtualService starts on line 19.

#[test]
fn bare_gateway_name_is_the_virtual_service_namespace() {
    let vs = gateway_routing("istio-egressgateway");
    let hint = "Referenced gateway not found: \"egress/istio-egressgateway\" (IST0101); a gateway name without a namespace means the VirtualService's namespace: did you mean \"istio-system/istio-egressgateway\"?";
    assert_eq!(
        warnings(&[HTTPBIN_EGRESS, EGRESS_GATEWAY, &vs]),
        [
            w(
                26,
                5,
                &format!("VirtualService egress/gateway-routing: spec.gateways[1]: warning: {hint}")
            ),
            w(
                30,
                35,
                &format!("VirtualService egress/gateway-routing: spec.http[1].match[0].gateways[0]: warning: {hint}")
            ),
        ]
    );
}

#[test]
fn corrected_gateway_name_needs_the_service_exported_to_the_gateway() {
    let vs = gateway_routing("istio-system/istio-egressgateway");
    assert_eq!(
        warnings(&[HTTPBIN_EGRESS, EGRESS_GATEWAY, &vs]),
        [w(
            31,
            34,
            "VirtualService egress/gateway-routing: spec.http[1].route[0].destination.host: warning: Referenced host not found: \"httpbin.com\" (IST0101); ServiceEntry egress/httpbin defines it but exports it to namespace egress, so proxies of Gateway istio-system/istio-egressgateway (namespace istio-system) do not see it"
        )]
    );
    let exported = HTTPBIN_EGRESS.replace("exportTo: [\".\"]", "exportTo: [\".\", istio-system]");
    assert_eq!(warnings(&[&exported, EGRESS_GATEWAY, &vs]), Vec::<String>::new());
}

#[test]
fn gateway_name_forms() {
    let vs = |gw: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: r, namespace: egress}}
spec:
  hosts: [httpbin.com]
  gateways: [{gw}]
  http: [{{route: [{{destination: {{host: httpbin.com}}}}]}}]
"
        )
    };
    let public = HTTPBIN_EGRESS.replace("exportTo: [\".\"]", "exportTo: ['*']");
    let found = |gw: &str| warnings(&[EGRESS_GATEWAY, &vs(gw), &public]);
    assert!(found("istio-system/istio-egressgateway").is_empty());
    assert!(found("istio-egressgateway.istio-system.svc.cluster.local").is_empty());
    // Istio's validation refuses `./name` in `gateways` (both sides must be DNS labels), so
    // the resource is invalid; the analysis still explains what `./` would mean.
    let dot = {
        let text = [EGRESS_GATEWAY, vs("./istio-egressgateway").as_str(), public.as_str()].join("---\n");
        let mut loaded = load_str("t.yaml", &text, &LoadOptions::default());
        assert_eq!(loaded.errors().count(), 1, "{:#?}", loaded.findings);
        for r in &mut loaded.resources {
            r.valid = true;
        }
        let mut found = analyze(&loaded);
        loaded.place(&mut found);
        found.iter().map(|f| f.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(
        dot,
        [w(
            15,
            14,
            "VirtualService egress/r: spec.gateways[0]: warning: Referenced gateway not found: \"egress/istio-egressgateway\" (IST0101); \"./\" means the VirtualService's namespace: did you mean \"istio-system/istio-egressgateway\"?"
        )]
    );
    let legacy = found("istio-egressgateway.egress");
    assert!(
        legacy[0].ends_with("Referenced gateway not found: \"egress/istio-egressgateway\" (IST0101); the legacy name \"istio-egressgateway.egress\" means \"egress/istio-egressgateway\": did you mean \"istio-system/istio-egressgateway\"?"),
        "{legacy:?}"
    );
    let typo = found("istio-system/istio-egresgateway");
    assert!(
        typo[0].ends_with("Referenced gateway not found: \"istio-system/istio-egresgateway\" (IST0101); did you mean \"istio-system/istio-egressgateway\"?"),
        "{typo:?}"
    );
    let nothing = found("other/gw");
    assert!(
        nothing[0].ends_with("warning: Referenced gateway not found: \"other/gw\" (IST0101)"),
        "{nothing:?}"
    );
}

#[test]
fn gateway_must_see_the_virtual_service_and_serve_its_hosts() {
    let gw = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"team/api.example.com\", \"*/www.example.com\"]
";
    let vs = |ns: &str, hosts: &str, export: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: r, namespace: {ns}}}
spec:
  hosts: {hosts}
  gateways: [istio-system/gw]
  exportTo: {export}
  http: [{{route: [{{destination: {{host: api.example.com}}}}]}}]
"
        )
    };
    let api = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: istio-system}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
";
    // Lines: gw 1-7, ---, api 9-15, ---, vs from 17.
    assert!(warnings(&[gw, api, &vs("team", "[api.example.com]", "['*']")]).is_empty());
    assert_eq!(
        warnings(&[gw, api, &vs("team", "[api.example.com]", "['.']")]),
        [w(
            22,
            14,
            "VirtualService team/r: spec.gateways[0]: warning: Gateway istio-system/gw is in namespace istio-system, to which this VirtualService is not exported (it is exported to namespace team): the gateway's proxies ignore it"
        )]
    );
    // Another namespace may not bind `team/api.example.com` (F2).
    assert_eq!(
        warnings(&[gw, api, &vs("shop", "[api.example.com]", "['*']")]),
        [w(
            22,
            14,
            "VirtualService shop/r: spec.gateways[0]: warning: one or more host [api.example.com] defined in VirtualService shop/r not found in Gateway istio-system/gw (IST0132); its server host \"team/api.example.com\" admits only VirtualServices of namespace team"
        )]
    );
    // One host served, one not: the other is dead.
    assert_eq!(
        warnings(&[gw, api, &vs("shop", "[www.example.com, old.example.com]", "['*']")]),
        [w(
            21,
            28,
            "VirtualService shop/r: spec.hosts[1]: warning: host \"old.example.com\" matches no server host of the VirtualService's gateways (istio-system/gw), so no gateway routes it"
        )]
    );
}

#[test]
fn match_gateways_must_be_bound_at_the_top() {
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: egress}
spec:
  hosts: [httpbin.com]
  gateways: [istio-system/istio-egressgateway]
  http:
  - match: [{gateways: [mesh]}, {gateways: [istio-system/istio-egressgateway]}]
    route: [{destination: {host: httpbin.com}}]
  tcp:
  - match: [{port: 80, gateways: [other/gw]}]
    route: [{destination: {host: httpbin.com}}]
";
    let other = EGRESS_GATEWAY.replace("istio-egressgateway, namespace: istio-system", "gw, namespace: other");
    let exported = HTTPBIN_EGRESS.replace("exportTo: [\".\"]", "exportTo: ['*']");
    // Lines: se 1-8, ---, gw 10-17, ---, gw 19-26, ---, vs 28-.
    assert_eq!(
        warnings(&[&exported, EGRESS_GATEWAY, &other, vs]),
        [
            w(
                35,
                25,
                "VirtualService egress/r: spec.http[0].match[0].gateways[0]: warning: \"mesh\" is not in spec.gateways, so this match never applies"
            ),
            w(
                38,
                35,
                "VirtualService egress/r: spec.tcp[0].match[0].gateways[0]: warning: gateway \"other/gw\" is not in spec.gateways, so this match never applies"
            ),
        ]
    );
}

const SHOP: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shop, namespace: shop}
spec:
  hosts: [api.shop.example, \"*.cdn.example\", inventory]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: https, protocol: TLS}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
";

const SECRET: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vault, namespace: secret}
spec:
  hosts: [vault.example]
  exportTo: [\".\"]
  ports: [{number: 8200, name: http, protocol: HTTP}]
  resolution: DNS
";

/// A mesh VirtualService in namespace shop with `hosts` routing to `dest`; after [SHOP,
/// SECRET] it starts on line 21, its hosts on line 25 and its destination on line 28.
fn mesh_vs(hosts: &str, dest: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: r, namespace: shop}}
spec:
  hosts: {hosts}
  http:
  - route:
    - destination: {dest}
"
    )
}

#[test]
fn mesh_hosts_need_a_visible_service() {
    let ok = mesh_vs(
        "[img.cdn.example, \"*.shop.example\"]",
        "{host: api.shop.example, port: {number: 80}}",
    );
    assert_eq!(warnings(&[SHOP, SECRET, &ok]), Vec::<String>::new());
    let bad = mesh_vs(
        "[nothing.example, vault.example, inventory, reviews]",
        "{host: api.shop.example}",
    );
    let at = |col, k, msg: &str| {
        w(
            25,
            col,
            &format!("VirtualService shop/r: spec.hosts[{k}]: warning: {msg}"),
        )
    };
    assert_eq!(
        warnings(&[SHOP, SECRET, &bad]),
        [
            at(
                11,
                0,
                "host \"nothing.example\" matches no service visible to namespace shop; sidecars apply this VirtualService to it only for HTTP on port 80"
            ),
            at(
                28,
                1,
                "host \"vault.example\" matches no service visible to namespace shop (ServiceEntry secret/vault defines it but exports it to namespace secret); sidecars apply this VirtualService to it only for HTTP on port 80"
            ),
            at(
                43,
                2,
                "host \"inventory\" matches no service: a short name means \"inventory.shop.svc.cluster.local\" here, but ServiceEntry hosts are not expanded: ServiceEntry shop/shop has host \"inventory\"; sidecars apply this VirtualService to it only for HTTP on port 80"
            ),
            // `reviews` is taken to be a Kubernetes Service: not reported.
        ]
    );
}

#[test]
fn destinations_need_a_visible_service_port_and_subset() {
    let at = |line, col, path: &str, msg: &str| w(line, col, &format!("VirtualService shop/r: {path}: warning: {msg}"));
    let vs = |dest: &str| mesh_vs("[api.shop.example]", dest);
    let check = |dest: &str| warnings(&[SHOP, SECRET, &vs(dest)]);
    assert!(check("{host: x.cdn.example}").is_empty());
    assert!(check("{host: reviews.prod.svc.cluster.local}").is_empty());
    assert_eq!(
        check("{host: api.shop.exmaple}"),
        [at(
            28,
            27,
            "spec.http[0].route[0].destination.host",
            "Referenced host not found: \"api.shop.exmaple\" (IST0101)"
        )]
    );
    assert_eq!(
        check("{host: vault.example}"),
        [at(
            28,
            27,
            "spec.http[0].route[0].destination.host",
            "Referenced host not found: \"vault.example\" (IST0101); ServiceEntry secret/vault defines it but exports it to namespace secret, so sidecars in namespace shop do not see it"
        )]
    );
    assert_eq!(
        check("{host: inventory}"),
        [at(
            28,
            27,
            "spec.http[0].route[0].destination.host",
            "Referenced host not found: \"inventory\" (IST0101); a short name means \"inventory.shop.svc.cluster.local\" here, but ServiceEntry hosts are not expanded: ServiceEntry shop/shop has host \"inventory\""
        )]
    );
    assert_eq!(
        check("{host: api.shop.example, port: {number: 8080}}"),
        [at(
            28,
            60,
            "spec.http[0].route[0].destination.port.number",
            "Referenced host:port not found: \"api.shop.example:8080\" (IST0101); ServiceEntry shop/shop declares ports 80, 443"
        )]
    );
    assert_eq!(
        check("{host: api.shop.example, subset: v1}"),
        [at(
            28,
            53,
            "spec.http[0].route[0].destination.subset",
            "Referenced host+subset in destinationrule not found: \"api.shop.example+v1\" (IST0101); no DestinationRule for api.shop.example applies to namespace shop"
        )]
    );
    let mirror = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: m, namespace: shop}
spec:
  hosts: [api.shop.example]
  http:
  - route: [{destination: {host: api.shop.example}}]
    mirror: {host: copy.example}
";
    assert_eq!(
        warnings(&[SHOP, mirror]),
        [w(
            19,
            20,
            "VirtualService shop/m: spec.http[0].mirror.host: warning: Referenced mirror host not found: \"copy.example\" (IST0101)"
        )]
    );
}

#[test]
fn subsets_follow_destination_rule_precedence() {
    let dr = |name: &str, ns: &str, host: &str, subsets: &[&str], export: &str| {
        let subsets: Vec<String> = subsets
            .iter()
            .map(|s| format!("{{name: {s}, labels: {{version: {s}}}}}"))
            .collect();
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {ns}}}
spec:
  host: {host}
  exportTo: {export}
  subsets: [{}]
",
            subsets.join(", ")
        )
    };
    let vs = |ns: &str, subset: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: r, namespace: {ns}}}
spec:
  hosts: [api.shop.example]
  http: [{{route: [{{destination: {{host: api.shop.example, subset: {subset}}}}}]}}]
"
        )
    };
    let run = |docs: &[&str]| {
        let mut all = vec![SHOP];
        all.extend_from_slice(docs);
        warnings(&all)
    };
    // The service's namespace, the root namespace, and the proxy's own all work alone.
    assert!(
        run(&[
            &dr("a", "shop", "api.shop.example", &["v1", "v2"], "['*']"),
            &vs("web", "v2")
        ])
        .is_empty()
    );
    assert!(
        run(&[
            &dr("a", "istio-system", "\"*.example\"", &["v1"], "['*']"),
            &vs("web", "v1")
        ])
        .is_empty()
    );
    assert!(run(&[&dr("a", "web", "api.shop.example", &["v1"], "['.']"), &vs("web", "v1")]).is_empty());
    // A rule of the proxy's namespace shadows the service's (D1), even without the subset.
    let found = run(&[
        &dr("mine", "web", "api.shop.example", &["v1"], "['.']"),
        &dr("theirs", "shop", "api.shop.example", &["v1", "v2"], "['*']"),
        &vs("web", "v2"),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].ends_with("spec.http[0].route[0].destination.subset: warning: Referenced host+subset in destinationrule not found: \"api.shop.example+v2\" (IST0101); DestinationRule web/mine for api.shop.example applies to namespace web and defines subsets v1; DestinationRule shop/theirs defines \"v2\" but does not apply there (a DestinationRule applies from the proxy's namespace, else the service's, else istio-system)"),
        "{found:?}"
    );
    // A rule of a third namespace never applies, whatever its exportTo.
    let found = run(&[
        &dr("a", "elsewhere", "api.shop.example", &["v1"], "['*']"),
        &vs("web", "v1"),
    ]);
    assert!(
        found[0].ends_with("no DestinationRule for api.shop.example applies to namespace web; DestinationRule elsewhere/a defines \"v1\" but does not apply there (a DestinationRule applies from the proxy's namespace, else the service's, else istio-system)"),
        "{found:?}"
    );
    // The most specific host wins within a namespace, and same-host rules merge (D2).
    assert!(
        run(&[
            &dr("wide", "shop", "\"*.example\"", &["v9"], "['*']"),
            &dr("a", "shop", "api.shop.example", &["v1"], "['*']"),
            &dr("b", "shop", "api.shop.example", &["v2"], "['*']"),
            &vs("web", "v2"),
        ])
        .is_empty()
    );
    let found = run(&[
        &dr("wide", "shop", "\"*.example\"", &["v9"], "['*']"),
        &dr("a", "shop", "api.shop.example", &["v1"], "['*']"),
        &vs("web", "v9"),
    ]);
    assert!(
        found[0]
            .contains("DestinationRule shop/a for api.shop.example applies to namespace web and defines subsets v1"),
        "{found:?}"
    );
}

#[test]
fn destination_rule_host_must_match_a_service() {
    let dr = |ns: &str, host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: d, namespace: {ns}}}
spec:
  host: {host}
  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
"
        )
    };
    let check = |ns: &str, host: &str| warnings(&[SHOP, SECRET, &dr(ns, host)]);
    for (ns, host) in [
        ("web", "api.shop.example"),
        ("web", "\"*.shop.example\""),
        ("web", "\"*.cdn.example\""),
        ("web", "\"*\""),
        ("istio-system", "vault.example"),
        ("secret", "vault.example"),
        ("web", "reviews"),
    ] {
        assert!(check(ns, host).is_empty(), "{ns} {host}: {:?}", check(ns, host));
    }
    let at = |ns: &str, msg: &str| w(25, 9, &format!("DestinationRule {ns}/d: spec.host: warning: {msg}"));
    assert_eq!(
        check("web", "api.shop.exmaple"),
        [at(
            "web",
            "The host api.shop.exmaple defined in the DestinationRule does not match any services in the mesh (IST0174)"
        )]
    );
    assert_eq!(
        check("web", "vault.example"),
        [at(
            "web",
            "The host vault.example defined in the DestinationRule does not match any services in the mesh (IST0174); ServiceEntry secret/vault defines it but exports it to namespace secret, not to namespace web"
        )]
    );
    assert_eq!(
        check("web", "img.cdn.example"),
        [at(
            "web",
            "The host img.cdn.example defined in the DestinationRule does not match any services in the mesh (IST0174); ServiceEntry shop/shop has host \"*.cdn.example\", which covers it, but a DestinationRule applies only to the services whose host it names or covers: write host \"*.cdn.example\""
        )]
    );
    assert_eq!(
        check("shop", "inventory"),
        [at(
            "shop",
            "The host inventory defined in the DestinationRule does not match any services in the mesh (IST0174); a short name means \"inventory.shop.svc.cluster.local\" here, but ServiceEntry hosts are not expanded: ServiceEntry shop/shop has host \"inventory\""
        )]
    );
}

#[test]
fn subsets_must_select_endpoints() {
    let dr = |host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: d, namespace: shop}}
spec:
  host: {host}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - name: v3
    labels: {{version: v3}}
  - {{name: all}}
"
        )
    };
    assert_eq!(
        warnings(&[SHOP, &dr("api.shop.example")]),
        [w(
            20,
            13,
            "DestinationRule shop/d: spec.subsets[1].labels: warning: The Subset v3 defined in the DestinationRule does not select any pods (IST0173); no endpoint of ServiceEntry shop/shop has the labels version=v3, so requests routed to subset v3 fail with 503 (no healthy upstream)"
        )]
    );
    // Original-destination services use no endpoints, so their subsets are not checked.
    let none = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: any, namespace: shop}
spec:
  hosts: [any.example]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
";
    assert!(warnings(&[none, &dr("any.example")]).is_empty());
}

#[test]
fn mesh_virtual_services_conflict_on_a_host() {
    let vs = |name: &str, ns: &str, export: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [api.shop.example]
  exportTo: {export}
  http: [{{route: [{{destination: {{host: api.shop.example}}}}]}}]
"
        )
    };
    let found = warnings(&[SHOP, &vs("a", "shop", "['*']"), &vs("b", "web", "['*']")]);
    let msg = "warning: The VirtualServices shop/a,web/b associated with mesh gateway define the same host api.shop.example which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource (IST0109); a sidecar applies only the first of them it sees (its own namespace's, else the oldest)";
    assert_eq!(
        found,
        [
            w(16, 11, &format!("VirtualService shop/a: spec.hosts[0]: {msg}")),
            w(24, 11, &format!("VirtualService web/b: spec.hosts[0]: {msg}")),
        ]
    );
    // Private to their own namespaces: no proxy sees both.
    assert!(warnings(&[SHOP, &vs("a", "shop", "['.']"), &vs("b", "web", "['.']")]).is_empty());
}

#[test]
fn sidecar_egress_hosts_must_import_something() {
    let sidecar = |hosts: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: web}}
spec:
  egress:
  - hosts: {hosts}
"
        )
    };
    let check = |hosts: &str| warnings(&[SHOP, SECRET, &sidecar(hosts)]);
    assert!(check("[\"./*\", \"istio-system/*\", \"shop/api.shop.example\", \"*/x.cdn.example\", \"~/*\"]").is_empty());
    assert_eq!(
        check("[\"./api.shop.example\", \"*/vault.example\"]"),
        [
            w(
                26,
                13,
                "Sidecar web/default: spec.egress[0].hosts[0]: warning: egress host \"./api.shop.example\" imports nothing: no service or VirtualService for api.shop.example in namespace web is visible to namespace web; ServiceEntry shop/shop defines it in namespace shop: write \"shop/api.shop.example\" or \"*/api.shop.example\""
            ),
            w(
                26,
                35,
                "Sidecar web/default: spec.egress[0].hosts[1]: warning: egress host \"*/vault.example\" imports nothing: no service or VirtualService for vault.example in any namespace is visible to namespace web; ServiceEntry secret/vault defines it but exports it to namespace secret, not to namespace web"
            ),
        ]
    );
}

#[test]
fn invalid_resources_are_not_analyzed() {
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: shop}
spec:
  hosts: [api.shop.example]
  gateways: [missing]
  http: [{route: [{destination: {host: api.shop.example}}], timeout: bogus}]
";
    let loaded = load_str("t.yaml", vs, &LoadOptions::default());
    assert!(loaded.has_errors());
    assert!(analyze(&loaded).is_empty());
}

// Endpoints that are the proxy itself.

const LOOPING: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.example.com]
  ports: [{number: 15001, name: http, protocol: HTTP}, {number: 80, name: alt, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1}
  - {address: 0.0.0.0, ports: {alt: 15080}}
  - {address: 10.0.0.1}
  - {address: 127.0.0.2, ports: {http: 8080, alt: 8081}}
";

const SELECTED: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm, namespace: shop}
spec:
  hosts: [vm.example.com]
  ports: [{number: 15000, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: vm}}
";

const VM: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: shop}
spec:
  address: \"::1\"
  labels: {app: vm}
";

const LOCALHOST: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: local, namespace: shop}
spec:
  hosts: [localhost]
  ports: [{number: 15080, name: http, protocol: HTTP}]
  resolution: DNS
";

#[test]
fn endpoints_that_are_the_proxy_itself_are_warned() {
    let found = warnings(&[LOOPING, SELECTED, VM, LOCALHOST]);
    let tail = "so traffic to it would loop through the proxy (which refuses it: 508, or a closed connection); point the endpoint at the service's real address";
    let want = [
        "ServiceEntry shop/web: spec.endpoints[0].address: warning: endpoint 127.0.0.1:15001 of web.example.com (port http) is this proxy itself: 15001 is where meshentry proxy listens by default (--outbound, the transparent listener), ",
        "ServiceEntry shop/web: spec.endpoints[1].address: warning: endpoint 0.0.0.0:15080 of web.example.com (port alt) is this proxy itself: 15080 is where meshentry proxy listens by default (--http-proxy, the explicit proxy listener), ",
        "ServiceEntry shop/web: spec.endpoints[1].address: warning: endpoint 0.0.0.0:15001 of web.example.com (port http) is this proxy itself: 15001 is where meshentry proxy listens by default (--outbound, the transparent listener), ",
        "WorkloadEntry shop/vm-1: spec.address: warning: endpoint [::1]:15000 of vm.example.com (port http) (selected by ServiceEntry shop/vm) is this proxy itself: 15000 is where meshentry proxy listens by default (--admin, the admin server), ",
        "ServiceEntry shop/local: spec.hosts[0]: warning: endpoint localhost:15080 of localhost (port http) is this proxy itself: 15080 is where meshentry proxy listens by default (--http-proxy, the explicit proxy listener), ",
    ];
    assert_eq!(found.len(), want.len(), "{found:#?}");
    for w in want {
        assert!(
            found.iter().any(|f| f.contains(&format!("{w}{tail}"))),
            "missing {w:?} in {found:#?}"
        );
    }
}

#[test]
fn endpoints_elsewhere_or_on_other_ports_are_not_warned() {
    let other = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: fine, namespace: shop}
spec:
  hosts: [fine.example.com]
  ports: [{number: 15001, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}, {address: 127.0.0.1, ports: {http: 9000}}, {address: \"unix:///run/s.sock\"}]
";
    assert_eq!(warnings(&[other]), Vec::<String>::new());
}
