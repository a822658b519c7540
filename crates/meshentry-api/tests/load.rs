//! The loader end to end: text in, resources and placed findings out.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use meshentry_api::{Kind, LoadOptions, Loaded, Severity, Spec, load_str};

fn opts() -> LoadOptions {
    LoadOptions::default()
}

fn lines(text: &str) -> Vec<String> {
    load_str("f.yaml", text, &opts())
        .findings
        .iter()
        .map(|f| f.to_string())
        .collect()
}

const GOOD_SE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ok
spec:
  hosts: [a.example.com]
  ports:
  - number: 443
    name: https
    protocol: TLS
  resolution: DNS
";

#[test]
fn valid_resource_has_no_findings_and_default_namespace() {
    let loaded = load_str("f.yaml", GOOD_SE, &opts());
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    assert_eq!(loaded.resources.len(), 1);
    let r = &loaded.resources[0];
    assert!(r.valid);
    assert_eq!(r.namespace, "default");
    assert_eq!(r.kind(), Kind::ServiceEntry);
    assert_eq!((r.origin.pos.line, r.origin.pos.column), (1, 1));
    let custom = load_str(
        "f.yaml",
        GOOD_SE,
        &LoadOptions {
            default_namespace: "team-a".into(),
        },
    );
    assert_eq!(custom.resources[0].namespace, "team-a");
}

#[test]
fn every_problem_is_reported_at_once_with_position_resource_and_field() {
    let text = "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: bad
  namespace: ns1
spec:
  hsots: [a.com]
  ports:
  - number: 0
    name: http
  - number: 80
    name: http
    protocol: QUIC
  resolution: STATC
";
    assert_eq!(
        lines(text),
        vec![
            // A missing field is placed on the object that lacks it (a block map starts at its
            // first key).
            "f.yaml:7:3: ServiceEntry ns1/bad: spec.hsots: unknown field `hsots`, did you mean `hosts`?",
            "f.yaml:7:3: ServiceEntry ns1/bad: spec.hosts: service entry must have at least one host",
            "f.yaml:9:5: ServiceEntry ns1/bad: spec.ports[0]: warning: addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is not enabled",
            "f.yaml:9:13: ServiceEntry ns1/bad: spec.ports[0].number: port number 0 must be in the range 1..65535",
            "f.yaml:12:11: ServiceEntry ns1/bad: spec.ports[1].name: service entry port name \"http\" already defined",
            "f.yaml:13:15: ServiceEntry ns1/bad: spec.ports[1].protocol: unsupported protocol: QUIC",
            "f.yaml:14:15: ServiceEntry ns1/bad: spec.resolution: unknown value `STATC`, did you mean `STATIC`?",
        ]
    );
}

#[test]
fn a_type_error_is_reported_once_not_again_by_validation() {
    let text = GOOD_SE.replace("number: 443", "number: https");
    let got = lines(&text);
    assert_eq!(
        got,
        vec!["f.yaml:8:13: ServiceEntry default/ok: spec.ports[0].number: expected an integer, found a string"]
    );
}

#[test]
fn warnings_do_not_invalidate() {
    let text = GOOD_SE.replace("  resolution: DNS\n", "  resolution: DNS\n  workloadSelector: {}\n");
    let loaded = load_str("f.yaml", &text, &opts());
    assert_eq!(loaded.findings.len(), 1);
    assert_eq!(loaded.findings[0].severity, Severity::Warning);
    assert!(!loaded.has_errors());
    assert!(loaded.resources[0].valid);
}

#[test]
fn multi_document_streams_and_lists() {
    let list = format!(
        "---\n{GOOD_SE}---\n# comment only\n---\napiVersion: v1\nkind: List\nitems:\n- {}\n",
        GOOD_SE
            .replace("name: ok", "name: ok2")
            .replace('\n', "\n  ")
            .trim_end()
    );
    let loaded = load_str("f.yaml", &list, &opts());
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    let names: Vec<&str> = loaded.resources.iter().map(|r| r.name()).collect();
    assert_eq!(names, ["ok", "ok2"]);
    // Items keep their own positions.
    assert_eq!(loaded.resources[1].origin.pos.line, 19);
}

#[test]
fn duplicates_name_the_first_definition() {
    let text = format!("{GOOD_SE}---\n{GOOD_SE}");
    let got = lines(&text);
    assert_eq!(
        got,
        vec![
            "f.yaml:13:1: ServiceEntry default/ok: metadata.name: duplicate ServiceEntry default/ok: first defined at f.yaml:1:1"
        ]
    );
    // Same name in another namespace or kind is fine.
    let other = GOOD_SE.replace("name: ok", "name: ok\n  namespace: other");
    assert!(lines(&format!("{GOOD_SE}---\n{other}")).is_empty());
}

#[test]
fn kinds_and_api_versions() {
    let skipped = load_str(
        "f.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
        &opts(),
    );
    assert!(skipped.findings.is_empty());
    assert_eq!(
        skipped.notices,
        vec![
            "f.yaml:1:1: note: Deployment (apps): ignored: meshentry takes workload endpoints from Pods and WorkloadEntries, not from the controllers that create them"
        ]
    );

    assert_eq!(
        lines("apiVersion: networking.istio.io/v1\nkind: ServiceEntri\nmetadata: {name: x}\n"),
        vec!["f.yaml:2:7: kind: unknown kind `ServiceEntri`, did you mean `ServiceEntry`?"]
    );
    assert_eq!(
        lines("apiVersion: networking.istio.io/v2\nkind: ServiceEntry\nmetadata: {name: x}\n"),
        vec![
            "f.yaml:1:13: ServiceEntry default/x: apiVersion: unsupported apiVersion \"networking.istio.io/v2\" for ServiceEntry (expected one of networking.istio.io/v1alpha3, networking.istio.io/v1beta1, networking.istio.io/v1)"
        ]
    );
    assert_eq!(
        lines("metadata: {name: x}\n"),
        vec!["f.yaml:1:1: kind: kind is required"]
    );
    assert_eq!(
        lines("- a\n- b\n"),
        vec!["f.yaml:1:1: a resource must be an object, found a list"]
    );
    assert_eq!(
        lines("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspce: {}\n"),
        vec![
            // No spec at all: the finding goes on the document.
            "f.yaml:1:1: ServiceEntry default/x: spec.hosts: service entry must have at least one host",
            "f.yaml:4:1: ServiceEntry default/x: spce: unknown field `spce`, did you mean `spec`?",
        ]
    );
}

#[test]
fn metadata_is_checked() {
    assert_eq!(
        lines(&GOOD_SE.replace("name: ok", "name: Not_OK\n  namespace: Bad")),
        vec![
            "f.yaml:4:9: ServiceEntry Bad/Not_OK: metadata.name: invalid name \"Not_OK\": must be a lowercase RFC 1123 subdomain",
            "f.yaml:5:14: ServiceEntry Bad/Not_OK: metadata.namespace: invalid namespace \"Bad\": must be a lowercase RFC 1123 label",
        ]
    );
    assert_eq!(
        lines(&GOOD_SE.replace("  name: ok\n", "  labels: {a: b}\n  nmae: ok\n")),
        vec![
            "f.yaml:4:3: ServiceEntry default/: metadata.name: name is required",
            "f.yaml:5:3: ServiceEntry default/: metadata.nmae: unknown field `nmae`, did you mean `name`?",
        ]
    );
}

#[test]
fn yaml_syntax_errors_name_the_position() {
    let got = lines("apiVersion: v1\nkind: [unclosed\n");
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("f.yaml:"), "{got:?}");
    assert!(got[0].contains("invalid YAML"), "{got:?}");
}

#[test]
fn json_documents() {
    let json = r#"{
  "apiVersion": "networking.istio.io/v1alpha3",
  "kind": "ServiceEntry",
  "metadata": {"name": "j", "namespace": "ns"},
  "spec": {"hosts": ["a.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}], "resolution": "DNS", "bogus": 1}
}"#;
    let got = lines(json);
    assert_eq!(
        got,
        vec![
            "f.yaml:5:116: ServiceEntry ns/j: spec.bogus: unknown field `bogus` (known fields: hosts, addresses, ports, location, resolution, endpoints, workloadSelector, exportTo, subjectAltNames)"
        ]
    );
}

#[test]
fn pods_and_namespaces_are_read_leniently() {
    let text = "apiVersion: v1
kind: Pod
metadata:
  name: details-abc
  namespace: bookinfo
  labels: {app: details}
spec:
  serviceAccountName: details
  containers:
  - name: app
    image: details:1
    ports:
    - {name: http, containerPort: 9080}
    resources: {limits: {cpu: 1}}
status:
  podIP: 10.1.0.7
  phase: Running
  conditions: [{type: Ready, status: \"True\"}]
  hostIP: 1.2.3.4
---
apiVersion: v1
kind: Namespace
metadata: {name: bookinfo, labels: {istio-injection: enabled}}
";
    let loaded = load_str("f.yaml", text, &opts());
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    match &loaded.resources[0].spec {
        Spec::Pod { spec, status } => {
            assert_eq!(spec.service_account_name, "details");
            assert_eq!(spec.containers[0].ports[0].container_port, 9080);
            assert_eq!(status.pod_ip, "10.1.0.7");
            assert!(status.is_ready());
        }
        other => panic!("not a pod: {other:?}"),
    }
    assert_eq!(loaded.resources[1].kind(), Kind::Namespace);
}

#[test]
fn findings_serialize_to_the_documented_json_shape() {
    let loaded = load_str("f.yaml", &GOOD_SE.replace("number: 443", "number: 0"), &opts());
    let v = serde_json::to_value(&loaded.findings).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{
            "file": "f.yaml", "line": 8, "column": 13, "kind": "ServiceEntry", "namespace": "default",
            "name": "ok", "field": "spec.ports[0].number", "severity": "error",
            "message": "port number 0 must be in the range 1..65535"
        }])
    );
}

#[test]
fn findings_of_later_checks_are_placed_on_fields_and_sorted_in() {
    let routing = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [a.example.com]
  gateways: [missing]
  http: [{route: [{destination: {host: a.example.com}}]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp}
spec:
  hosts: [db.example.com]
  ports: [{number: 5432, name: pg, protocol: TCP}]
  resolution: NONE
";
    let mut loaded = Loaded::default();
    loaded.add_str("f.yaml", routing, &opts());
    let se_only = routing
        .split("---\n")
        .nth(1)
        .unwrap()
        .replace("name: tcp", "name: other");
    loaded.add_str("g.yaml", &se_only, &opts());
    loaded.finish();
    // The ServiceEntries' own warnings (a TCP port without addresses, which resolution NONE
    // never gets allocated) are at 14:11.
    assert_eq!(loaded.findings.len(), 2, "{:?}", loaded.findings);
    let (vs, se) = (loaded.resources[0].clone(), loaded.resources[1].clone());
    // Made at the document, placed on the field in streams that hold a VirtualService,
    // DestinationRule, Gateway or Sidecar.
    let late = loaded.finding(&vs, "spec.gateways[0]", Severity::Warning, "late".into());
    assert_eq!((late.line, late.column), (1, 1));
    let doc = loaded.finding(&se, "spec.ports[0]", Severity::Warning, "doc".into());
    let other = loaded.finding(&loaded.resources[2], "spec.ports[0]", Severity::Warning, "other".into());
    let mut placed = [late.clone(), doc.clone(), other.clone()];
    loaded.place(&mut placed);
    assert_eq!(
        placed[0].to_string(),
        "f.yaml:6:14: VirtualService default/r: spec.gateways[0]: warning: late"
    );
    assert_eq!((placed[1].line, placed[1].column), (14, 11));
    // A stream of ServiceEntries only is not kept: its findings stay at their document.
    assert_eq!((placed[2].line, placed[2].column), (1, 1));
    loaded.add_findings([doc, late, other]);
    let order: Vec<(&str, u32, u32, &str)> = loaded
        .findings
        .iter()
        .map(|f| (f.file.as_str(), f.line, f.column, f.message.as_str()))
        .collect();
    let ist0134 =
        "addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is not enabled";
    assert_eq!(
        order,
        [
            ("f.yaml", 6, 14, "late"),
            ("f.yaml", 14, 11, ist0134),
            ("f.yaml", 14, 11, "doc"),
            ("g.yaml", 1, 1, "other"),
            ("g.yaml", 6, 11, ist0134)
        ]
    );
    assert!(!loaded.has_errors());
}

#[test]
fn findings_are_placed_in_list_items() {
    let text = "apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: a, namespace: x}
  spec: {host: a.example.com}
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: b, namespace: x}
  spec:
    host: b.example.com
";
    let mut loaded = load_str("list.yaml", text, &opts());
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    let found: Vec<_> = loaded
        .resources
        .clone()
        .iter()
        .map(|r| loaded.finding(r, "spec.host", Severity::Warning, r.meta.name.clone()))
        .collect();
    loaded.add_findings(found);
    let placed: Vec<String> = loaded.findings.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        placed,
        [
            "list.yaml:7:16: DestinationRule x/a: spec.host: warning: a",
            "list.yaml:12:11: DestinationRule x/b: spec.host: warning: b"
        ]
    );
}

/// The kinds that share manifests with ServiceEntries: one of each family, in one stream.
const MIXED: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: ingress}
spec:
  gatewayClassName: istio
  listeners:
  - {name: web, port: 80, protocol: HTTP, hostname: \"*.example.com\"}
  - {name: any, port: 8080, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r1}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r2}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: ef}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all}
spec: {}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: wasm}
---
apiVersion: v1
kind: Endpoints
metadata: {name: web}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
";

#[test]
fn other_kinds_are_noted_once_per_kind_and_never_fail_the_file() {
    let loaded = load_str("f.yaml", MIXED, &opts());
    assert!(loaded.findings.is_empty(), "{:?}", loaded.findings);
    assert_eq!(loaded.resources.len(), 1);
    assert_eq!(
        loaded.notices,
        vec![
            "f.yaml:9:1: note: Gateway (gateway.networking.k8s.io): used: a VirtualService's `gateways` may name it, as in Istio (its listeners and routes are not served)",
            "f.yaml:18:1: note: HTTPRoute (gateway.networking.k8s.io): ignored: meshentry does not implement the Kubernetes Gateway API; it serves Istio Gateways and VirtualServices (2 documents of this kind; this is the first)",
            "f.yaml:26:1: note: EnvoyFilter (networking.istio.io): ignored: meshentry is not Envoy, so Envoy configuration patches have nothing to apply to",
            "f.yaml:30:1: note: AuthorizationPolicy (security.istio.io): ignored: meshentry enforces no inbound policy",
            "f.yaml:35:1: note: Telemetry (telemetry.istio.io): ignored: meshentry's access log and metrics are set by its flags (--access-log, /stats/prometheus)",
            "f.yaml:39:1: note: WasmPlugin (extensions.istio.io): ignored: meshentry runs no proxy extensions (Wasm or Lua)",
            "f.yaml:43:1: note: Endpoints (core): ignored: meshentry reads a Kubernetes Service's endpoints from its EndpointSlices, as Istio does",
            "f.yaml:47:1: note: Deployment (apps): ignored: meshentry takes workload endpoints from Pods and WorkloadEntries, not from the controllers that create them",
            "f.yaml:51:1: note: Widget (example.com): ignored: not a kind meshentry knows",
        ]
    );
    // The Gateway API Gateway is kept for VirtualService references, with its listeners'
    // hostnames (none: every host).
    let gw = loaded.kube_gateway("ingress", "edge").unwrap();
    assert_eq!(gw.hostnames, vec![Some("*.example.com".to_string()), None]);
    assert_eq!(gw.origin.pos.line, 9);
    assert!(loaded.kube_gateway("default", "edge").is_none());
}

#[test]
fn istio_groups_refuse_what_istios_api_server_refuses() {
    // Istio's CRDs serve EnvoyFilter only as v1alpha3, AuthorizationPolicy as v1 and v1beta1.
    assert_eq!(
        lines("apiVersion: networking.istio.io/v1\nkind: EnvoyFilter\nmetadata: {name: x}\n"),
        vec![
            "f.yaml:1:13: EnvoyFilter default/x: apiVersion: unsupported apiVersion \"networking.istio.io/v1\" for EnvoyFilter (expected one of networking.istio.io/v1alpha3)"
        ]
    );
    assert_eq!(
        lines("apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: x}\n"),
        vec![
            "f.yaml:1:13: AuthorizationPolicy default/x: apiVersion: unsupported apiVersion \"security.istio.io/v2\" for AuthorizationPolicy (expected one of security.istio.io/v1, security.istio.io/v1beta1)"
        ]
    );
    // A kind no Istio group has.
    assert_eq!(
        lines("apiVersion: networking.istio.io/v1\nkind: Mesh\nmetadata: {name: x}\n"),
        vec![
            "f.yaml:2:7: kind: unknown kind `Mesh`: Istio's networking.istio.io API has no such kind (it has ServiceEntry, WorkloadEntry, WorkloadGroup, DestinationRule, VirtualService, Gateway, Sidecar, EnvoyFilter, ProxyConfig)"
        ]
    );
    assert_eq!(
        lines("apiVersion: security.istio.io/v1\nkind: AuthorisationPolicy\nmetadata: {name: x}\n"),
        vec!["f.yaml:2:7: kind: unknown kind `AuthorisationPolicy`, did you mean `AuthorizationPolicy`?"]
    );
}

#[test]
fn kinds_meshentry_reads_are_errors_only_without_their_group() {
    // No group, or one that looks like Istio's: a mistake in the apiVersion.
    for api in ["v1", "networking.isito.io/v1", "istio.io/v1"] {
        let got = lines(&format!(
            "apiVersion: {api}\nkind: ServiceEntry\nmetadata: {{name: x}}\n"
        ));
        assert_eq!(got.len(), 1, "{api}: {got:?}");
        assert!(got[0].contains("unsupported apiVersion"), "{api}: {got:?}");
    }
    // Another product's kind of the same name is that product's.
    let other = load_str(
        "f.yaml",
        "apiVersion: gateway.solo.io/v1\nkind: Gateway\nmetadata: {name: x}\n",
        &opts(),
    );
    assert!(other.findings.is_empty(), "{:?}", other.findings);
    assert_eq!(
        other.notices,
        vec!["f.yaml:1:1: note: Gateway (gateway.solo.io): ignored: not a kind meshentry knows"]
    );
    assert!(other.kube_gateways.is_empty());
}

/// `docs/compatibility.md` lists every kind meshentry recognises, with what it does with it,
/// as the loader says it.
#[test]
fn the_compatibility_doc_lists_every_recognised_kind() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/compatibility.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    for k in meshentry_api::resource::OTHER_KINDS {
        let group = if k.group.is_empty() { "core (`v1`)" } else { k.group };
        let row = format!("| {} | {} | {} |", k.kind, group, k.treatment);
        assert!(doc.contains(&row), "{} lacks the row {row}", path.display());
    }
    for kind in Kind::ISTIO.iter().chain(Kind::KUBE.iter()).map(|k| k.as_str()) {
        assert!(doc.contains(&format!("| {kind} | ")), "{} lacks {kind}", path.display());
    }
}
