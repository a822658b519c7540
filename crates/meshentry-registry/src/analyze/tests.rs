//! One test per check, valid and invalid, with the exact message and where it points. Each
//! `istioctl analyze` verdict is Istio's for the same files, analysed offline
//! (`istioctl analyze --use-kube=false`): the code, the level and Istio's text come first,
//! then meshentry's note.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use meshentry_api::{LoadOptions, load_str};

use super::analyze;

/// The analysis findings for `docs` (YAML documents joined with `---`), as printed, in the
/// order of the text. The resources must be valid, so that a test's findings are the
/// analysis's alone.
fn warnings(docs: &[&str]) -> Vec<String> {
    let text = docs.join("---\n");
    let loaded = load_str("t.yaml", &text, &LoadOptions::default());
    assert!(!loaded.has_errors(), "{:#?}", loaded.errors().collect::<Vec<_>>());
    analysis(&loaded)
}

fn analysis(loaded: &meshentry_api::Loaded) -> Vec<String> {
    let mut found = analyze(loaded);
    loaded.place(&mut found);
    found.sort_by_key(|f| (f.line, f.column));
    found.iter().map(|f| f.to_string()).collect()
}

/// A finding at `line:col` of the joined text.
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

/// The seed's egress gateway, selecting istioctl's default ingress gateway Pod so that only
/// the references to it are analysed ([`gateway_selectors_need_pods_and_service_ports`] has
/// the seed's selector).
const EGRESS_GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
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

/// IST0101 for the egress gateway's Service, which istioctl does not know offline.
const EGRESS_SERVICE_UNKNOWN: &str = "VirtualService egress/gateway-routing: spec.http[0].route[0].destination.host: IST0101: Referenced host not found: \"istio-egressgateway.istio-system.svc.cluster.local\"; no ServiceEntry defines istio-egressgateway.istio-system.svc.cluster.local, and no Kubernetes Service was read (offline, istioctl knows none either): add the Service to the files, or read the cluster's with --kubernetes";

// Lines of the joined [HTTPBIN_EGRESS, EGRESS_GATEWAY, gateway_routing] stream: the
// VirtualService starts on line 19.

/// Istio's analyzer reads a gateway name without a namespace as one in the VirtualService's
/// namespace (virtualservice/gateways.go): IST0101 (error) and, as the Gateway it names has no
/// hosts, IST0132; the match-level reference is not Istio's to check.
#[test]
fn bare_gateway_name_is_the_virtual_service_namespace() {
    let vs = gateway_routing("istio-egressgateway");
    assert_eq!(
        warnings(&[HTTPBIN_EGRESS, EGRESS_GATEWAY, &vs]),
        [
            w(
                26,
                5,
                "VirtualService egress/gateway-routing: spec.gateways[1]: IST0101: Referenced gateway not found: \"istio-egressgateway\"; a gateway name without a namespace is in the VirtualService's namespace (egress/istio-egressgateway): did you mean \"istio-system/istio-egressgateway\"?"
            ),
            w(
                26,
                5,
                "VirtualService egress/gateway-routing: spec.gateways[1]: warning: IST0132: one or more host [httpbin.com] defined in VirtualService egress/gateway-routing not found in Gateway egress/istio-egressgateway."
            ),
            w(29, 34, EGRESS_SERVICE_UNKNOWN),
        ]
    );
}

/// With the gateway named as Istio needs it, the gateway's proxies still do not see the
/// ServiceEntry (exported to its own namespace): meshentry says so; Istio's analyzer, which
/// looks from the VirtualService's namespace, does not.
#[test]
fn corrected_gateway_name_needs_the_service_exported_to_the_gateway() {
    let vs = gateway_routing("istio-system/istio-egressgateway");
    assert_eq!(
        warnings(&[HTTPBIN_EGRESS, EGRESS_GATEWAY, &vs]),
        [
            w(29, 34, EGRESS_SERVICE_UNKNOWN),
            w(
                31,
                34,
                "VirtualService egress/gateway-routing: spec.http[1].route[0].destination.host: warning: \"httpbin.com\" is not visible to proxies of Gateway istio-system/istio-egressgateway (namespace istio-system): ServiceEntry egress/httpbin defines it but exports it to namespace egress"
            ),
        ]
    );
    let exported = HTTPBIN_EGRESS.replace("exportTo: [\".\"]", "exportTo: [\".\", istio-system]");
    assert_eq!(
        warnings(&[&exported, EGRESS_GATEWAY, &vs]),
        [w(29, 34, EGRESS_SERVICE_UNKNOWN)]
    );
}

/// Istio's analyzer resolves `ns/name` and bare names only (`resource.NewShortOrFullName`);
/// istiod also reads `./name` and the legacy `name.ns[.svc.cluster.local]`. The analyzer's
/// verdict stands, with a note when istiod would find the gateway.
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
    // Istio's validation refuses `./name` in `gateways` (both sides must be DNS labels); the
    // analysis runs on invalid resources too, as Istio's does, and says what `./` would mean.
    let invalid = |docs: &[&str]| {
        let loaded = load_str("t.yaml", &docs.join("---\n"), &LoadOptions::default());
        assert_eq!(loaded.errors().count(), 1, "{:#?}", loaded.findings);
        analysis(&loaded)
    };
    assert!(found("istio-system/istio-egressgateway").is_empty());
    let at = |msg: &str| w(15, 14, &format!("VirtualService egress/r: spec.gateways[0]: {msg}"));
    let not_served = |gw: &str| {
        at(&format!(
            "warning: IST0132: one or more host [httpbin.com] defined in VirtualService egress/r not found in Gateway {gw}."
        ))
    };
    assert_eq!(
        found("istio-egressgateway.istio-system.svc.cluster.local"),
        [
            at(
                "IST0101: Referenced gateway not found: \"istio-egressgateway.istio-system.svc.cluster.local\"; istiod resolves it to \"istio-system/istio-egressgateway\", which exists, but Istio's analyzer reads a name without \"/\" as one in the VirtualService's namespace and does not resolve \"./\" or the legacy form: write \"istio-system/istio-egressgateway\""
            ),
            not_served("egress/istio-egressgateway.istio-system.svc.cluster.local"),
        ]
    );
    assert_eq!(
        invalid(&[EGRESS_GATEWAY, &vs("./istio-egressgateway"), &public]),
        [
            at(
                "IST0101: Referenced gateway not found: \"./istio-egressgateway\"; \"./\" means the VirtualService's namespace (egress/istio-egressgateway): did you mean \"istio-system/istio-egressgateway\"?"
            ),
            not_served("./istio-egressgateway"),
        ]
    );
    let legacy = found("istio-egressgateway.egress");
    assert_eq!(
        legacy[0],
        at(
            "IST0101: Referenced gateway not found: \"istio-egressgateway.egress\"; the legacy name \"istio-egressgateway.egress\" means \"egress/istio-egressgateway\": did you mean \"istio-system/istio-egressgateway\"?"
        )
    );
    assert_eq!(
        found("istio-system/istio-egresgateway"),
        [
            at(
                "IST0101: Referenced gateway not found: \"istio-system/istio-egresgateway\"; did you mean \"istio-system/istio-egressgateway\"?"
            ),
            not_served("istio-system/istio-egresgateway"),
        ]
    );
    assert_eq!(
        found("other/gw")[0],
        at("IST0101: Referenced gateway not found: \"other/gw\"")
    );
    // `./name` for a Gateway of the VirtualService's own namespace: istiod binds it.
    let own = EGRESS_GATEWAY.replace("namespace: istio-system", "namespace: egress");
    let dot = invalid(&[&own, &vs("./istio-egressgateway"), &public]);
    assert_eq!(
        dot[0],
        at(
            "IST0101: Referenced gateway not found: \"./istio-egressgateway\"; istiod resolves it to \"egress/istio-egressgateway\", which exists, but Istio's analyzer reads a name without \"/\" as one in the VirtualService's namespace and does not resolve \"./\" or the legacy form: write \"egress/istio-egressgateway\""
        )
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
            "VirtualService shop/r: spec.gateways[0]: warning: IST0132: one or more host [api.example.com] defined in VirtualService shop/r not found in Gateway istio-system/gw. Its server host \"team/api.example.com\" admits only VirtualServices of namespace team."
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
    let other = EGRESS_GATEWAY
        .replace("istio-egressgateway, namespace: istio-system", "gw, namespace: other")
        .replace("[\"*\"]", "[other.example.com]");
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

/// IST0165: a reference to the Gateway istiod generates for a Gateway API listener.
#[test]
fn internal_gateway_references() {
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: egress}
spec:
  hosts: [httpbin.com]
  gateways: [istio-system/gw~istio-autogenerated-k8s-gateway~http]
  http: [{route: [{destination: {host: httpbin.com}}]}]
";
    // meshentry's validation rejects the name, Istio's analysis reports it all the same.
    let loaded = load_str("t.yaml", &[HTTPBIN_EGRESS, vs].join("---\n"), &LoadOptions::default());
    assert!(loaded.has_errors());
    assert_eq!(
        analysis(&loaded),
        [w(
            15,
            14,
            "VirtualService egress/r: spec.gateways[0]: warning: IST0165: Gateway reference in VirtualService egress/r is to an implementation-generated internal Gateway: istio-system/gw~istio-autogenerated-k8s-gateway~http."
        )]
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
        "{host: api.shop.example, port: {number: 80}}",
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
            // `reviews` may be a Kubernetes Service: Istio's analyzers do not check
            // VirtualService hosts, and neither does meshentry in the cluster domain.
        ]
    );
}

#[test]
fn destinations_need_a_service_port_and_subset() {
    let at = |line, col, path: &str, msg: &str| w(line, col, &format!("VirtualService shop/r: {path}: {msg}"));
    let vs = |dest: &str| mesh_vs("[api.shop.example]", dest);
    let check = |dest: &str| warnings(&[SHOP, SECRET, &vs(dest)]);
    let host = "spec.http[0].route[0].destination.host";
    assert!(check("{host: x.cdn.example, port: {number: 80}}").is_empty());
    // The ingress gateway Service istioctl adds offline is known; other cluster names are not.
    assert!(check("{host: istio-ingressgateway.istio-system.svc.cluster.local, port: {number: 80}}").is_empty());
    assert_eq!(
        check("{host: reviews.prod.svc.cluster.local}"),
        [at(
            28,
            27,
            host,
            "IST0101: Referenced host not found: \"reviews.prod.svc.cluster.local\"; no ServiceEntry defines reviews.prod.svc.cluster.local, and no Kubernetes Service was read (offline, istioctl knows none either): add the Service to the files, or read the cluster's with --kubernetes"
        )]
    );
    assert_eq!(
        check("{host: api.shop.exmaple}"),
        [at(
            28,
            27,
            host,
            "IST0101: Referenced host not found: \"api.shop.exmaple\""
        )]
    );
    assert_eq!(
        check("{host: vault.example}"),
        [at(
            28,
            27,
            host,
            "IST0101: Referenced host not found: \"vault.example\"; ServiceEntry secret/vault defines it but exports it to namespace secret"
        )]
    );
    // IST0112: a service with several ports needs the destination's port.
    assert_eq!(
        check("{host: x.cdn.example}"),
        [at(
            28,
            27,
            host,
            "IST0112: This VirtualService routes to a service \"x.cdn.example\" that exposes multiple ports [80 443]. Specifying a port in the destination is required to disambiguate."
        )]
    );
    // Istio's analyzer makes a ServiceEntry's short host a FQDN too; istiod does not (B1).
    assert_eq!(
        check("{host: inventory, port: {number: 80}}"),
        [at(
            28,
            27,
            host,
            "warning: \"inventory\" routes nowhere at run time: a short name means \"inventory.shop.svc.cluster.local\" here, but ServiceEntry hosts are not expanded: ServiceEntry shop/shop has host \"inventory\""
        )]
    );
    assert_eq!(
        check("{host: api.shop.example, port: {number: 8080}}"),
        [at(
            28,
            60,
            "spec.http[0].route[0].destination.port.number",
            "IST0101: Referenced host:port not found: \"api.shop.example:8080\"; ServiceEntry shop/shop declares ports 80, 443"
        )]
    );
    assert_eq!(
        check("{host: api.shop.example, port: {number: 80}, subset: v1}"),
        [at(
            28,
            73,
            "spec.http[0].route[0].destination.subset",
            "IST0101: Referenced host+subset in destinationrule not found: \"api.shop.example+v1\"; no DestinationRule for api.shop.example applies to namespace shop"
        )]
    );
    let mirror = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: m, namespace: shop}
spec:
  hosts: [api.shop.example]
  http:
  - route: [{destination: {host: api.shop.example, port: {number: 80}}}]
    mirror: {host: copy.example}
";
    assert_eq!(
        warnings(&[SHOP, mirror]),
        [w(
            19,
            20,
            "VirtualService shop/m: spec.http[0].mirror.host: IST0101: Referenced mirror host not found: \"copy.example\""
        )]
    );
}

/// Istio's analyzer finds a subset by the destination's host and the VirtualService's
/// namespace (`GetResourceNameFromHost`): a rule for `api.shop.example` must be in the
/// VirtualService's namespace, one for `name.ns.svc.cluster.local` in `ns`. istiod applies
/// rules by precedence instead (D1): meshentry notes where the two disagree.
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
  http: [{{route: [{{destination: {{host: api.shop.example, port: {{number: 80}}, subset: {subset}}}}}]}}]
"
        )
    };
    let run = |docs: &[&str]| {
        let mut all = vec![SHOP];
        all.extend_from_slice(docs);
        warnings(&all)
            .into_iter()
            .filter(|f| f.contains(".subset: "))
            .collect::<Vec<_>>()
    };
    let istio = |subset: &str, note: &str| {
        format!("IST0101: Referenced host+subset in destinationrule not found: \"api.shop.example+{subset}\"; {note}")
    };
    let ends = |found: &[String], want: &str| {
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].ends_with(want), "{found:?}\nwant ...{want}");
    };
    // The proxy's own namespace: Istio's analyzer and istiod agree.
    assert!(run(&[&dr("a", "web", "api.shop.example", &["v1"], "['.']"), &vs("web", "v1")]).is_empty());
    // The service's namespace and the root namespace apply at run time (D1); the analyzer looks
    // in the VirtualService's namespace only.
    let why = "Istio's analyzer looks for subset \"v2\" in a DestinationRule of namespace web whose host is \"api.shop.example\"";
    ends(
        &run(&[
            &dr("a", "shop", "api.shop.example", &["v1", "v2"], "['*']"),
            &vs("web", "v2"),
        ]),
        &istio("v2", why),
    );
    ends(
        &run(&[
            &dr("a", "istio-system", "\"*.example\"", &["v2"], "['*']"),
            &vs("web", "v2"),
        ]),
        &istio("v2", why),
    );
    // Same-host rules of one namespace merge (D2).
    let found = run(&[
        &dr("a", "web", "api.shop.example", &["v1"], "['.']"),
        &dr("b", "web", "api.shop.example", &["v9"], "['.']"),
        &dr("wide", "web", "\"*.shop.example\"", &["v2"], "['.']"),
        &vs("web", "v9"),
    ]);
    assert!(found.is_empty(), "{found:?}");
    // A rule of the proxy's namespace shadows the service's (D1), even without the subset.
    let found = run(&[
        &dr("mine", "web", "api.shop.example", &["v1"], "['.']"),
        &dr("theirs", "shop", "api.shop.example", &["v1", "v2"], "['*']"),
        &vs("web", "v2"),
    ]);
    ends(
        &found,
        &istio(
            "v2",
            "DestinationRule web/mine for api.shop.example applies to namespace web and defines subsets v1; DestinationRule shop/theirs defines \"v2\" but does not apply there (a DestinationRule applies from the proxy's namespace, else the service's, else istio-system)",
        ),
    );
    // A rule of a third namespace never applies, whatever its exportTo.
    let found = run(&[
        &dr("a", "elsewhere", "api.shop.example", &["v1"], "['*']"),
        &vs("web", "v1"),
    ]);
    ends(
        &found,
        &istio(
            "v1",
            "no DestinationRule for api.shop.example applies to namespace web; DestinationRule elsewhere/a defines \"v1\" but does not apply there (a DestinationRule applies from the proxy's namespace, else the service's, else istio-system)",
        ),
    );
    // The most specific host wins within a namespace (D2): the analyzer's key matches, istiod
    // does not apply the rule that defines the subset.
    let found = run(&[
        &dr("wide", "web", "api.shop.example", &["v9"], "['*']"),
        &dr("narrow", "web", "api.shop.example", &["v1"], "['*']"),
        &vs("web", "v9"),
    ]);
    assert!(found.is_empty(), "same-host rules merge: {found:?}");
    let found = run(&[
        &dr("a", "web", "api.shop.example", &["v1"], "['.']"),
        &dr("wide", "web", "\"*.example\"", &["v9"], "['.']"),
        &vs("web", "v9"),
    ]);
    ends(
        &found,
        &istio(
            "v9",
            "DestinationRule web/a for api.shop.example applies to namespace web and defines subsets v1",
        ),
    );
    // Found by the analyzer (which ignores a rule's exportTo), yet not applied at run time: a
    // warning of meshentry's own.
    let found = run(&[&dr("a", "web", "api.shop.example", &["v1"], "[shop]"), &vs("web", "v1")]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].ends_with("spec.http[0].route[0].destination.subset: warning: no DestinationRule for api.shop.example applies to namespace web; DestinationRule web/a defines \"v1\" but does not apply there (a DestinationRule applies from the proxy's namespace, else the service's, else istio-system)"),
        "{found:?}"
    );
}

/// IST0174 follows Istio's lookup (`GetDestinationHost` with the rule's namespace and
/// exportTo); meshentry adds why, and warns where istiod applies the rule to nothing although
/// the analyzer finds a service.
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
        ("web", "\"*.cdn.example\""),
        ("secret", "vault.example"),
        ("web", "istio-ingressgateway.istio-system.svc.cluster.local"),
    ] {
        assert!(check(ns, host).is_empty(), "{ns} {host}: {:?}", check(ns, host));
    }
    let at = |ns: &str, msg: &str| w(25, 9, &format!("DestinationRule {ns}/d: spec.host: {msg}"));
    let ist0174 = |host: &str, note: &str| {
        let base = format!(
            "warning: IST0174: The host {host} defined in the DestinationRule does not match any services in the mesh."
        );
        if note.is_empty() {
            base
        } else {
            format!("{base} {note}")
        }
    };
    assert_eq!(
        check("web", "api.shop.exmaple"),
        [at("web", &ist0174("api.shop.exmaple", ""))]
    );
    assert_eq!(
        check("web", "vault.example"),
        [at(
            "web",
            &ist0174(
                "vault.example",
                "ServiceEntry secret/vault defines it but exports it to namespace secret, not to namespace web."
            )
        )]
    );
    assert_eq!(
        check("web", "reviews"),
        [at(
            "web",
            &ist0174(
                "reviews",
                "No ServiceEntry defines reviews.web.svc.cluster.local, and no Kubernetes Service was read (offline, istioctl knows none either): add the Service to the files, or read the cluster's with --kubernetes."
            )
        )]
    );
    // Istio's analyzer misses services istiod applies the rule to.
    assert_eq!(
        check("web", "\"*.shop.example\""),
        [at(
            "web",
            &ist0174(
                "*.shop.example",
                "At run time it applies to ServiceEntry shop/shop (host \"api.shop.example\"); Istio's analyzer finds a wildcard rule's service only when the service's host is a wildcard that the rule's host ends with."
            )
        )]
    );
    assert_eq!(
        check("istio-system", "vault.example"),
        [at(
            "istio-system",
            &ist0174(
                "vault.example",
                "At run time it applies to ServiceEntry secret/vault (host \"vault.example\"); Istio's analyzer looks only among the services exported to every namespace or to the rule's exportTo."
            )
        )]
    );
    // ... and finds services istiod does not apply the rule to: meshentry's warning.
    assert_eq!(
        check("web", "img.cdn.example"),
        [at(
            "web",
            "warning: the rule applies to no service at run time: ServiceEntry shop/shop has host \"*.cdn.example\", which covers it, but a DestinationRule applies only to the services whose host it names or covers: write host \"*.cdn.example\""
        )]
    );
    assert_eq!(
        check("web", "\"*.x.cdn.example\""),
        [at(
            "web",
            "warning: the rule applies to no service at run time: ServiceEntry shop/shop has host \"*.cdn.example\", which covers it, but a DestinationRule applies only to the services whose host it names or covers: write host \"*.cdn.example\""
        )]
    );
    assert_eq!(
        check("shop", "inventory"),
        [at(
            "shop",
            "warning: the rule applies to no service at run time: a short name means \"inventory.shop.svc.cluster.local\" here, but ServiceEntry hosts are not expanded: ServiceEntry shop/shop has host \"inventory\""
        )]
    );
}

const SUBSETS: &str = "  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v3
    labels: {version: v3}
  - {name: all}
";

fn subset_rule(host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: d, namespace: shop}}
spec:
  host: {host}
{SUBSETS}"
    )
}

/// IST0173 (error): a subset none of the service's endpoints carries the labels of. Istio's
/// analyzer looks at Pods; meshentry at the endpoints the proxy picks from.
#[test]
fn subsets_must_select_endpoints() {
    let ist0173 = |line, col, i: usize, field: &str, name: &str, note: &str| {
        w(
            line,
            col,
            &format!(
                "DestinationRule shop/d: spec.subsets[{i}].{field}: IST0173: The Subset {name} defined in the DestinationRule does not select any pods. Which may lead to 503 UH (NoHealthyUpstream). {note}"
            ),
        )
    };
    assert_eq!(
        warnings(&[SHOP, &subset_rule("api.shop.example")]),
        [ist0173(
            20,
            13,
            1,
            "labels",
            "v3",
            "No endpoint of ServiceEntry shop/shop has the labels version=v3, so requests routed to subset v3 fail."
        )]
    );
    // A service without endpoints: no subset selects anything.
    let empty = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: empty, namespace: shop}
spec:
  hosts: [empty.example]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
";
    let none = "No endpoint of ServiceEntry shop/empty has the labels";
    let found = warnings(&[empty, &subset_rule("empty.example")]);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found[2].ends_with("spec.subsets[2].name: IST0173: The Subset all defined in the DestinationRule does not select any pods. Which may lead to 503 UH (NoHealthyUpstream). ServiceEntry shop/empty has no endpoints."),
        "{found:?} {none}"
    );
    // Original-destination services use no endpoints, so their subsets are not checked.
    let passthrough = empty
        .replace("name: empty,", "name: any,")
        .replace("empty.example", "any.example")
        .replace("STATIC", "NONE");
    assert!(warnings(&[&passthrough, &subset_rule("any.example")]).is_empty());
    // A DNS service without endpoints has its host as endpoint, without labels.
    let dns = passthrough.replace("NONE", "DNS");
    let found = warnings(&[&dns, &subset_rule("any.example")]);
    assert_eq!(found.len(), 2, "{found:?}");
}

/// Item 7: endpoints carry the topology labels Istio adds, so subsets select on them.
#[test]
fn subsets_select_on_topology_labels() {
    let se = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: multi, namespace: shop}
spec:
  hosts: [multi.example]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, locality: us-east1/zone-a, network: net-1}
  - {address: 10.0.0.2, labels: {istio-locality: eu-west1.zone-b}}
";
    let dr = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d, namespace: shop}
spec:
  host: multi.example
  subsets:
  - {name: east, labels: {topology.kubernetes.io/region: us-east1, topology.kubernetes.io/zone: zone-a}}
  - {name: net1, labels: {topology.istio.io/network: net-1}}
  - {name: west, labels: {topology.kubernetes.io/region: eu-west1}}
  - {name: asia, labels: {topology.kubernetes.io/region: ap-south1}}
";
    let found = warnings(&[se, dr]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("spec.subsets[3].labels: IST0173: The Subset asia defined"),
        "{found:?}"
    );
}

/// IST0109 (error): mesh VirtualServices keyed by (scope, FQDN), as Istio's
/// `ConflictingMeshGatewayHostsAnalyzer` does (its test data,
/// `virtualservice_conflictingmeshgatewayhosts*.yaml`).
#[test]
fn mesh_virtual_services_conflict_on_a_host() {
    let vs = |name: &str, ns: &str, host: &str, export: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{host}]
  exportTo: {export}
  http: [{{route: [{{destination: {{host: api.shop.example, port: {{number: 80}}}}}}]}}]
"
        )
    };
    let text = |names: &str, host: &str| {
        format!(
            "IST0109: The VirtualServices {names} associated with mesh gateway define the same host {host} which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource. A sidecar that sees several applies only one of them to the host (its own namespace's, else the oldest)."
        )
    };
    let found = warnings(&[
        SHOP,
        &vs("a", "shop", "api.shop.example", "['*']"),
        &vs("b", "web", "api.shop.example", "['*']"),
    ]);
    let both = text("shop/a,web/b", "*/api.shop.example");
    assert_eq!(
        found,
        [
            w(16, 11, &format!("VirtualService shop/a: spec.hosts[0]: {both}")),
            w(24, 11, &format!("VirtualService web/b: spec.hosts[0]: {both}")),
        ]
    );
    // Private to their own namespaces: no proxy sees both.
    assert!(
        warnings(&[
            SHOP,
            &vs("a", "shop", "api.shop.example", "['.']"),
            &vs("b", "web", "api.shop.example", "['.']")
        ])
        .is_empty()
    );
    // Short names are FQDNs of their namespace: `reviews` in shop is reviews.shop.svc...
    let found = warnings(&[
        SHOP,
        &vs("a", "shop", "reviews", "['*']"),
        &vs("b", "web", "reviews.shop.svc.cluster.local", "['*']"),
    ]);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].ends_with(&text("shop/a,web/b", "*/reviews.shop.svc.cluster.local")));
    // A scoped VirtualService conflicts with every public one whose host matches its own,
    // wildcards included; two public wildcards do not (their keys differ).
    let found: Vec<String> = warnings(&[
        SHOP,
        &vs("productpage-d", "foo", "\"*.productpage.d\"", "['.']"),
        &vs("productpage-d", "bar", "\"*.d\"", "['*']"),
    ])
    .into_iter()
    .filter(|f| f.contains("IST0109"))
    .collect();
    let wild = text("bar/productpage-d,foo/productpage-d", "foo/*.productpage.d");
    assert_eq!(
        found,
        [
            w(
                16,
                11,
                &format!("VirtualService foo/productpage-d: spec.hosts[0]: {wild}")
            ),
            w(
                24,
                11,
                &format!("VirtualService bar/productpage-d: spec.hosts[0]: {wild}")
            ),
        ]
    );
    assert!(
        warnings(&[
            SHOP,
            &vs("c", "foo", "\"*.productpage.d\"", "['*']"),
            &vs("d", "bar", "\"*.d\"", "['*']"),
        ])
        .iter()
        .all(|f| !f.contains("IST0109"))
    );
    // Bound to a gateway only: not the mesh's.
    let gw_only =
        vs("b", "web", "api.shop.example", "['*']").replace("  exportTo", "  gateways: [istio-system/gw]\n  exportTo");
    let found: Vec<String> = warnings(&[SHOP, &vs("a", "shop", "api.shop.example", "['*']"), &gw_only])
        .into_iter()
        .filter(|f| f.contains("IST0109"))
        .collect();
    assert!(found.is_empty(), "{found:?}");
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

fn sidecar(name: &str, ns: &str, selector: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {name}, namespace: {ns}}}
spec:
{selector}  egress: [{{hosts: [\"./*\"]}}]
"
    )
}

fn pod(name: &str, ns: &str, labels: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {labels}, annotations: {annotations}}}
spec: {{containers: [{{name: app}}]}}
"
    )
}

/// Istio's `sidecar.SelectorAnalyzer`: IST0101 for a selector no Pod of the namespace matches,
/// IST0110 for Pods several Sidecars select, IST0111 for several Sidecars without a selector
/// in one namespace, IST0167 where the workloads run in ambient mode (its test data,
/// `sidecar-selector.yaml`, `sidecar-default-selector.yaml`).
#[test]
fn sidecar_selectors() {
    let sel = |labels: &str| format!("  workloadSelector: {{labels: {labels}}}\n");
    let found = warnings(&[
        &pod("p1", "default", "{app: a, tier: x}", "{}"),
        &sidecar("maps-to-nothing", "default", &sel("{app: none}")),
        &sidecar("maps-to-other-ns", "other", &sel("{app: a}")),
        &sidecar("dupe-1", "default", &sel("{app: a}")),
        &sidecar("dupe-2", "default", &sel("{tier: x}")),
        &sidecar("ns-1", "ns2", ""),
        &sidecar("ns-2", "ns2", ""),
        &sidecar("alone", "ns1", ""),
    ]);
    let want = [
        "Sidecar default/maps-to-nothing: spec.workloadSelector: IST0101: Referenced selector not found: \"app=none\"; no Pod of namespace default in the files carries these labels, so this Sidecar applies to none",
        "Sidecar other/maps-to-other-ns: spec.workloadSelector: IST0101: Referenced selector not found: \"app=a\"; no Pod of namespace other in the files carries these labels, so this Sidecar applies to none",
        "Sidecar default/dupe-1: spec.workloadSelector: IST0110: The Sidecars [dupe-1 dupe-2] in namespace \"default\" select the same workload pod \"p1\", which can lead to undefined behavior. The pod's proxy uses only one of them (the oldest).",
        "Sidecar default/dupe-2: spec.workloadSelector: IST0110: The Sidecars [dupe-1 dupe-2] in namespace \"default\" select the same workload pod \"p1\", which can lead to undefined behavior. The pod's proxy uses only one of them (the oldest).",
        "Sidecar ns2/ns-1: metadata.name: IST0111: The Sidecars [ns-1 ns-2] in namespace \"ns2\" have no workload selector, which can lead to undefined behavior. The namespace's proxies use only one of them (the oldest).",
        "Sidecar ns2/ns-2: metadata.name: IST0111: The Sidecars [ns-1 ns-2] in namespace \"ns2\" have no workload selector, which can lead to undefined behavior. The namespace's proxies use only one of them (the oldest).",
    ];
    assert_eq!(found.len(), want.len(), "{found:#?}");
    for (f, want) in found.iter().zip(want) {
        assert!(f.ends_with(want), "{f}\nwant ...{want}");
    }

    let ambient_ns = "apiVersion: v1
kind: Namespace
metadata: {name: amb, labels: {istio.io/dataplane-mode: ambient}}
";
    let injected_ns = "apiVersion: v1
kind: Namespace
metadata: {name: inj, labels: {istio.io/dataplane-mode: ambient, istio-injection: enabled}}
";
    let found = warnings(&[
        ambient_ns,
        injected_ns,
        &pod("p", "amb", "{app: amb}", "{ambient.istio.io/redirection: enabled}"),
        &sidecar("namespace-scoped", "amb", ""),
        &sidecar("pod-scoped", "amb", &sel("{app: amb}")),
        &sidecar("not-ambient", "inj", ""),
    ]);
    let want = [
        "Sidecar amb/namespace-scoped: metadata.name: warning: IST0167: The policy has no impact: namespace is in ambient mode, the policy has no impact.",
        "Sidecar amb/pod-scoped: spec.workloadSelector: warning: IST0167: The policy has no impact: selected workload is in ambient mode, the policy has no impact.",
    ];
    assert_eq!(found.len(), want.len(), "{found:#?}");
    for (f, want) in found.iter().zip(want) {
        assert!(f.ends_with(want), "{f}\nwant ...{want}");
    }
}

fn gateway(name: &str, ns: &str, selector: &str, servers: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {selector}
  servers:
{servers}"
    )
}

const HTTP_ANY: &str = "  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
";

/// Istio's `IngressGatewayPortAnalyzer`: IST0101 for a selector no Pod matches (offline, only
/// istioctl's ingress gateway Pod and the files' Pods exist), IST0162 for a server port the
/// selected Pods' Services do not expose.
#[test]
fn gateway_selectors_need_pods_and_service_ports() {
    let found = warnings(&[&gateway(
        "istio-egressgateway",
        "istio-system",
        "{istio: egressgateway}",
        HTTP_ANY,
    )]);
    assert_eq!(
        found,
        [w(
            5,
            13,
            "Gateway istio-system/istio-egressgateway: spec.selector: IST0101: Referenced selector not found: \"istio=egressgateway\"; istioctl analyzes files against the Pods in them and its default ingress gateway Pod (labels istio=ingressgateway, namespace istio-system); no Pod carries these labels, so no proxy would serve this Gateway"
        )]
    );
    let ports = "  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [\"*\"]
    tls: {mode: SIMPLE, credentialName: c}
  - port: {number: 8080, name: alt, protocol: HTTP}
    hosts: [\"*\"]
";
    let found = warnings(&[&gateway("in", "default", "{istio: ingressgateway}", ports)]);
    assert_eq!(
        found,
        [w(
            10,
            20,
            "Gateway default/in: spec.servers[1].port.number: warning: IST0162: The gateway is listening on a target port (port 8080) that is not defined in the Service associated with its workload instances (Pod selector istio=ingressgateway). If you need to access the gateway port through the gateway Service, it will not be available."
        )]
    );
    // A Pod of the files selected, with no Service: every port is reported.
    let found = warnings(&[
        &pod("gw-pod", "edge", "{app: edge}", "{}"),
        &gateway("edge", "edge", "{app: edge}", HTTP_ANY),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("IST0162: The gateway is listening on a target port (port 80)"));
}

/// IST0145 (error): Gateways that select the same workloads, with a server on the same port
/// and a host in common (as written, with the same bind).
#[test]
fn conflicting_gateways() {
    let server = |host: &str, bind: &str| {
        format!("  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [{host}]\n    bind: \"{bind}\"\n")
    };
    let gw = |name: &str, selector: &str, host: &str, bind: &str| {
        gateway(name, "istio-system", selector, &server(host, bind))
    };
    let ing = "{istio: ingressgateway}";
    let found = warnings(&[
        &gw("a", ing, "a.example.com", ""),
        &gw("b", ing, "a.example.com", ""),
        &gw("c", ing, "c.example.com", ""),
    ]);
    let text = |other: &str| {
        format!(
            "IST0145: Conflict with gateways {other} (workload selector istio=ingressgateway, port 80, hosts a.example.com). The workloads get one listener for the port, and only one of these servers serves the shared hosts."
        )
    };
    assert_eq!(
        found,
        [
            w(
                3,
                18,
                &format!("Gateway istio-system/a: metadata.name: {}", text("istio-system/b"))
            ),
            w(
                13,
                18,
                &format!("Gateway istio-system/b: metadata.name: {}", text("istio-system/a"))
            ),
        ]
    );
    // Another bind, or another port: no conflict.
    assert!(
        warnings(&[
            &gw("a", ing, "a.example.com", ""),
            &gw("b", ing, "a.example.com", "127.0.0.1")
        ])
        .is_empty()
    );
    // Selectors that contain one another conflict where a Pod matches both.
    let wider = "{istio: ingressgateway, app: x}";
    assert!(
        warnings(&[&gw("a", ing, "a.example.com", ""), &gw("b", wider, "a.example.com", "")])
            .iter()
            .all(|f| !f.contains("IST0145"))
    );
    let found = warnings(&[
        &pod("p", "istio-system", "{istio: ingressgateway, app: x}", "{}"),
        &gw("a", ing, "a.example.com", ""),
        &gw("b", wider, "a.example.com", ""),
    ]);
    assert_eq!(found.iter().filter(|f| f.contains("IST0145")).count(), 2, "{found:#?}");
}

/// IST0138: servers of two Gateways on the same workloads with the same certificate.
#[test]
fn duplicate_certificates() {
    let tls = |host: &str, tls: &str| {
        format!("  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [{host}]\n    tls: {tls}\n")
    };
    let gw = |name: &str, t: &str| gateway(name, "istio-system", "{istio: ingressgateway}", t);
    let cred = "{mode: SIMPLE, credentialName: shared}";
    let found = warnings(&[
        &gw("a", &tls("a.example.com", cred)),
        &gw("b", &tls("b.example.com", cred)),
    ]);
    assert_eq!(
        found,
        [
            w(
                3,
                18,
                "Gateway istio-system/a: metadata.name: warning: IST0138: Duplicate certificate in multiple gateways [istio-system/a istio-system/b] may cause 404s if clients re-use HTTP2 connections."
            ),
            w(
                13,
                18,
                "Gateway istio-system/b: metadata.name: warning: IST0138: Duplicate certificate in multiple gateways [istio-system/b istio-system/a] may cause 404s if clients re-use HTTP2 connections."
            ),
        ]
    );
    let files = |cert: &str| format!("{{mode: SIMPLE, serverCertificate: {cert}, privateKey: /k.pem}}");
    assert_eq!(
        warnings(&[
            &gw("a", &tls("a.example.com", &files("/c.pem"))),
            &gw("b", &tls("b.example.com", &files("/c.pem")))
        ])
        .len(),
        2
    );
    assert!(
        warnings(&[
            &gw("a", &tls("a.example.com", &files("/c.pem"))),
            &gw("b", &tls("b.example.com", &files("/d.pem")))
        ])
        .is_empty()
    );
}

/// IST0177: one host and port, several ServiceEntries, different protocols, seen together.
#[test]
fn conflicting_service_entry_protocols() {
    let se = |name: &str, ns: &str, protocol: &str, export: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [db.example.com]
  exportTo: {export}
  addresses: [10.0.0.9]
  ports: [{{number: 5432, name: pg, protocol: {protocol}}}]
  resolution: DNS
"
        )
    };
    let text = "warning: IST0177: Multiple ServiceEntries (a/one, b/two) define the same host \"db.example.com\" and port 5432 with conflicting protocols (HTTP, TCP).";
    let found = warnings(&[&se("one", "a", "TCP", "['*']"), &se("two", "b", "http", "['*']")]);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        // ServiceEntry streams are not kept (the bulk of large configurations), so findings on
        // them stay at the document's start.
        found[0].starts_with(&w(1, 1, &format!("ServiceEntry a/one: metadata.name: {text}"))),
        "{found:#?}"
    );
    assert!(found[1].contains(&format!("ServiceEntry b/two: metadata.name: {text}")));
    // Scoped to its own namespace, it still meets the public one there.
    assert_eq!(
        warnings(&[&se("one", "a", "TCP", "['.']"), &se("two", "b", "HTTP", "['*']")]).len(),
        2
    );
    // Two private ones never meet; the same protocol is no conflict.
    assert!(warnings(&[&se("one", "a", "TCP", "['.']"), &se("two", "b", "HTTP", "['.']")]).is_empty());
    assert!(warnings(&[&se("one", "a", "TCP", "['*']"), &se("two", "b", "tcp", "['*']")]).is_empty());
}

/// Like istioctl, the analysis covers every resource Istio's reader keeps: invalid ones too,
/// and ones with unknown fields; not one with a value Istio cannot decode.
#[test]
fn invalid_resources_are_analyzed_as_istio_reads_them() {
    let vs = |extra: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: r, namespace: shop}}
spec:
  hosts: [api.shop.example]
  gateways: [missing]
  http: [{{route: [{{destination: {{host: api.shop.example, port: {{number: 80}}}}}}], {extra}}}]
"
        )
    };
    let missing = |loaded: &meshentry_api::Loaded| {
        analysis(loaded)
            .iter()
            .filter(|f| f.contains("IST0101: Referenced gateway not found: \"missing\""))
            .count()
    };
    for extra in ["timeout: bogus", "colour: red"] {
        let text = [SHOP, &vs(extra)].join("---\n");
        let loaded = load_str("t.yaml", &text, &LoadOptions::default());
        assert!(loaded.has_errors(), "{extra}");
        assert_eq!(missing(&loaded), 1, "{extra}: {:?}", analysis(&loaded));
    }
    let text = [SHOP, &vs("retries: {attempts: many}")].join("---\n");
    let loaded = load_str("t.yaml", &text, &LoadOptions::default());
    assert!(loaded.has_errors());
    assert_eq!(missing(&loaded), 0, "{:?}", analysis(&loaded));
    // An invalid ServiceEntry is still a service, with its endpoints, to the analysis.
    let bad_se = SHOP.replace("protocol: TLS}", "protocol: TLS, targetPort: 99999}");
    assert_ne!(bad_se, SHOP);
    let dr = subset_rule("api.shop.example");
    let loaded = load_str("t.yaml", &[bad_se.as_str(), &dr].join("---\n"), &LoadOptions::default());
    assert!(loaded.has_errors());
    let found = analysis(&loaded);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("spec.subsets[1].labels: IST0173: The Subset v3"),
        "{found:?}"
    );
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
