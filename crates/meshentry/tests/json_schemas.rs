//! Every JSON document meshentry prints or serves, produced by the real binary (and a running
//! proxy for the admin API and the access log) on a configuration that sets the optional
//! fields, and checked two ways (docs/json.md, `meshentry_testutil::schema`):
//!
//! - against its schema in `docs/schemas/` (JSON Schema draft 2020-12). Every object there is
//!   closed (`additionalProperties: false`), so a key added or renamed fails here until the
//!   schema, and the docs with it, say so;
//! - against the casing rule: meshentry's own documents in camelCase; documents that copy one
//!   of Envoy's or Istio's (`/server_info`, the access log) in that document's snake_case,
//!   what meshentry adds to them included. Maps keyed by data (label names, DNS names) are not
//!   keys of the document and are not checked.
//!
//! The schemas themselves are checked here too: valid, closed, in their document's casing.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::process::{Command, Output};
use std::time::Duration;

use meshentry_testutil::schema::{Casing, DOCUMENTS, check, problems, schema, schemas_dir, validator};
use meshentry_testutil::{HttpUpstream, Proxy, eventually, raw, unique_loopback};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");

/// Whether any of `docs` has a value other than null at `pointer`: for asserting that an
/// optional field was exercised.
fn present(docs: &[&Value], pointer: &str) -> bool {
    docs.iter().any(|d| d.pointer(pointer).is_some_and(|v| !v.is_null()))
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run meshentry")
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A configuration that sets what the documents show only when set: a service with a target
/// port, subjectAltNames, labelled endpoints and an ExternalName alias; DestinationRule
/// subsets with a field meshentry does not apply; VirtualService rules of every action; an
/// address-less TCP service (auto-allocated addresses); a Sidecar.
fn config(upstream: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: default}}
spec:
  hosts: [web.example.com]
  addresses: [240.0.0.10]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]
  subjectAltNames: [spiffe://cluster.local/ns/default/sa/web]
  endpoints:
  - {{address: {ip}, labels: {{version: v1}}}}
  - {{address: {ip}, labels: {{version: v2}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web-alias, namespace: default}}
spec: {{type: ExternalName, externalName: web.example.com}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: default}}
spec:
  hosts: [db.internal]
  ports: [{{number: 5432, name: tcp, protocol: TCP}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: default}}
spec:
  host: web.example.com
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 5}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: default}}
spec:
  hosts: [web.example.com]
  http:
  - name: canary
    match: [{{headers: {{x-canary: {{exact: "yes"}}}}}}]
    route: [{{destination: {{host: web.example.com, subset: v2}}}}]
  - name: api
    match: [{{uri: {{prefix: /api}}}}]
    route:
    - {{destination: {{host: web.example.com, subset: v1}}, weight: 90}}
    - {{destination: {{host: web.example.com, subset: v2}}, weight: 10}}
    timeout: 5s
    retries: {{attempts: 2}}
    mirror: {{host: web.example.com, subset: v2}}
    fault: {{abort: {{httpStatus: 503, percentage: {{value: 0.0}}}}}}
  - name: moved
    match: [{{uri: {{prefix: /old}}}}]
    redirect: {{uri: /new}}
  - name: gone
    match: [{{uri: {{prefix: /gone}}}}]
    directResponse: {{status: 410}}
  - route: [{{destination: {{host: web.example.com, subset: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: default}}
spec:
  egress: [{{hosts: ["./*"]}}]
"#,
        ip = upstream.rsplit_once(':').unwrap().0,
        port = upstream.rsplit_once(':').unwrap().1,
    )
}

fn temp_config(body: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, body).unwrap();
    let path = path.to_string_lossy().into_owned();
    (dir, path)
}

/// The schemas themselves: valid draft 2020-12, every object closed, every key they declare in
/// their document's casing, and one schema for each document listed (no more, no fewer).
#[test]
fn schemas_are_closed_and_in_their_documents_casing() {
    let mut files: Vec<String> = std::fs::read_dir(schemas_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut listed: Vec<String> = DOCUMENTS.iter().map(|(n, _)| format!("{n}.schema.json")).collect();
    listed.sort();
    assert_eq!(files, listed, "docs/schemas and DOCUMENTS differ");

    for (name, casing) in DOCUMENTS {
        let s = schema(name);
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema", "{name}");
        if let Err(e) = jsonschema::meta::validate(&s) {
            panic!("{name}.schema.json is not a valid schema: {e}");
        }
        let mut found = Vec::new();
        closed_and_cased(&s, *casing, "#", &mut found);
        assert!(found.is_empty(), "{name}.schema.json:\n{}", found.join("\n"));
        validator(name);
    }
}

/// Every object schema says what else it allows (`false`, or a schema for a map's values), and
/// every property it declares is in `casing`.
fn closed_and_cased(s: &Value, casing: Casing, at: &str, out: &mut Vec<String>) {
    match s {
        Value::Object(m) => {
            let is_object = m.get("type") == Some(&json!("object"));
            if is_object && !m.contains_key("additionalProperties") {
                out.push(format!("{at}: an object schema without additionalProperties"));
            }
            if m.contains_key("properties") && m.get("additionalProperties") != Some(&json!(false)) {
                out.push(format!("{at}: properties without additionalProperties: false"));
            }
            if let Some(Value::Object(props)) = m.get("properties") {
                for k in props.keys().filter(|k| !casing.fits(k)) {
                    out.push(format!("{at}/properties: {k:?} is not {casing:?} case"));
                }
            }
            for (k, v) in m {
                match (k.as_str(), v) {
                    // Its keys are names, its values schemas.
                    ("properties", Value::Object(props)) => {
                        for (name, sub) in props {
                            closed_and_cased(sub, casing, &format!("{at}/properties/{name}"), out);
                        }
                    }
                    _ => closed_and_cased(v, casing, &format!("{at}/{k}"), out),
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                closed_and_cased(v, casing, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The checks themselves catch what they are for: a key the schema does not know, a key in the
/// other casing (even when the schema were to allow it), a wrong type; and leave data maps be.
#[test]
fn the_checks_catch_an_unknown_key_a_wrong_casing_and_a_wrong_type() {
    let ok = json!({"services": [{
        "host": "a.example.com", "namespace": "default", "addresses": ["0.0.0.0"],
        "resolution": "DNS", "location": "MESH_EXTERNAL",
        "ports": [{"name": "http", "number": 80, "protocol": "HTTP"}],
        "exportTo": ["*"],
        "endpoints": [{"address": "a.example.com", "port": 80, "portName": "http",
                       "labels": {"app.kubernetes.io/name": "a", "Snake_Case": "x"}}]
    }]});
    assert_eq!(problems("registry", &ok), Vec::<String>::new());

    let mut renamed = ok.clone();
    let service = renamed["services"][0].as_object_mut().unwrap();
    let export_to = service.remove("exportTo").unwrap();
    service.insert("export_to".into(), export_to);
    let found = problems("registry", &renamed);
    assert!(
        found
            .iter()
            .any(|p| p.contains("export_to") && p.starts_with("schema:")),
        "{found:?}"
    );
    assert!(found.iter().any(|p| p.contains("exportTo")), "required: {found:?}");
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("casing:") && p.contains("export_to")),
        "{found:?}"
    );

    let mut added = ok.clone();
    added["services"][0]["weight"] = json!(1);
    assert!(!problems("registry", &added).is_empty());

    let mut wrong = ok;
    wrong["services"][0]["ports"][0]["number"] = json!("80");
    assert!(!problems("registry", &wrong).is_empty());

    // A camelCase key in a snake_case document is caught as well.
    let info = json!({"version": "0", "build": {"version": "0", "commit": "c", "rustc": "r",
        "target": "t", "apis": ["networking.istio.io/v1"]}, "state": "LIVE", "uptimeSeconds": 1,
        "generation": 1});
    let found = problems("admin-server-info", &info);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("casing:") && p.contains("uptimeSeconds")),
        "{found:?}"
    );
}

/// `validate`, `registry`, `explain` (HTTP, TCP, refused, `dns://`) and `version` with
/// `--output json`.
#[test]
fn command_line_documents_match_their_schemas() {
    // Nothing listens there: the commands only read the configuration.
    let (_dir, file) = temp_config(&config("127.0.0.1:8080"));

    // validate: an error with Istio's code, a warning, an info.
    let bad = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reveiws.example.com
  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 5}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: shop}
spec:
  hosts: [reviews.example.com]
  gateways: [missing]
  http: [{route: [{destination: {host: reviews.example.com}}]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bad-port, namespace: shop}
spec:
  hosts: [bad.example.com]
  ports: [{number: 800000, name: http, protocol: HTTP}]
  resolution: DNS
";
    let (_bad_dir, bad_file) = temp_config(bad);
    let out = run(&["validate", "--output", "json", "--output-threshold", "info", &bad_file]);
    assert_eq!(out.status.code(), Some(1));
    let findings = stdout_json(&out);
    check("validate", &findings);
    let severities: Vec<&str> = findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["severity"].as_str().unwrap())
        .collect();
    for s in ["error", "warning", "info"] {
        assert!(severities.contains(&s), "no {s} finding: {findings:#}");
    }
    assert!(
        findings.as_array().unwrap().iter().any(|f| f.get("code").is_some()),
        "no finding with Istio's code: {findings:#}"
    );
    let out = run(&["validate", "--output", "json", &file]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check("validate", &stdout_json(&out));

    // registry
    let out = run(&["registry", "--output", "json", &file]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let registry = stdout_json(&out);
    check("registry", &registry);
    let services = registry["services"].as_array().unwrap();
    for key in [
        "autoAllocatedAddresses",
        "autoAllocatedBy",
        "subjectAltNames",
        "aliases",
    ] {
        assert!(
            services.iter().any(|s| s.get(key).is_some()),
            "no service with {key}: {registry:#}"
        );
    }
    assert!(
        services
            .iter()
            .flat_map(|s| s["ports"].as_array().unwrap())
            .any(|p| p.get("targetPort").is_some()),
        "{registry:#}"
    );

    // A service address-less but for the one allocated, routed by it with --dns.
    let db = services.iter().find(|s| s["host"] == "db.internal").unwrap();
    let allocated = format!("tcp://{}:5432", db["autoAllocatedAddresses"][0].as_str().unwrap());

    // explain: one of each outcome, with the optional fields between them.
    let explain = |args: &[&str]| {
        let mut all = vec!["explain", "--config", file.as_str(), "--output", "json"];
        all.extend_from_slice(args);
        run(&all)
    };
    let mut docs = Vec::new();
    for (args, exit) in [
        (&["--labels", "app=shop", "http://web.example.com/api"][..], 0),
        (&["-H", "x-canary: yes", "http://web.example.com/"][..], 0),
        (&["--via", "http-proxy", "http://web.example.com/gone"][..], 0),
        (&["http://web.example.com/old"][..], 0),
        (&["--dns", "tcp://240.0.0.10:80"][..], 0),
        (&["--outbound-policy", "REGISTRY_ONLY", "http://nope.example/"][..], 1),
        (&["--dns", &allocated][..], 0),
    ] {
        let out = explain(args);
        let doc = stdout_json(&out);
        assert_eq!(out.status.code(), Some(exit), "{args:?}: {doc:#}");
        check("explain", &doc);
        docs.push(doc);
    }
    let docs: Vec<&Value> = docs.iter().collect();
    for pointer in [
        "/request/path",
        "/request/method",
        "/request/originalDestination",
        "/proxy/sidecar",
        "/service/importedBy",
        "/virtualService/at",
        "/virtualService/rule/matched",
        "/destinations/0/subset",
        "/destinations/0/destinationRule",
        "/destinations/0/endpoints/0/labels/version",
        "/destinations/0/dnsNames/0",
        "/outcome/status",
        "/outcome/cluster",
        "/notes/0",
    ] {
        assert!(present(&docs, pointer), "no explain document sets {pointer}");
    }

    // explain dns://: answered locally, and forwarded.
    for (target, outcome) in [
        ("dns://web.example.com", "local"),
        ("dns://db.internal?type=AAAA", "local"),
        ("dns://elsewhere.example", "forwarded"),
    ] {
        let out = explain(&["--dns-search", "default.svc.cluster.local", target]);
        let doc = stdout_json(&out);
        assert_eq!(doc["outcome"], outcome, "{target}: {doc:#}");
        check("explain-dns", &doc);
    }

    // version
    let out = run(&["version", "--output", "json"]);
    assert!(out.status.success());
    check("version", &stdout_json(&out));
}

/// The admin API's JSON documents and the JSON access log of a running proxy that has served
/// requests, with DNS on, after a reload it refused.
#[tokio::test]
async fn admin_and_access_log_documents_match_their_schemas() {
    let ip = unique_loopback();
    let web = HttpUpstream::start(std::net::SocketAddr::new(ip.into(), 0), "web");
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("access.log");
    let log_arg = log.display().to_string();
    let proxy = Proxy::builder(BIN)
        .ip(ip)
        .config(config(&web.addr().to_string()))
        .args([
            "--dns",
            &format!("{ip}:15053"),
            "--dns-search",
            "default.svc.cluster.local",
        ])
        .args(["--access-log", &log_arg, "--access-log-format", "json"])
        .start()
        .await;
    for (path, status) in [("/api", 200), ("/", 200), ("/gone", 410), ("/old", 301)] {
        let request =
            format!("GET http://web.example.com{path} HTTP/1.1\r\nHost: web.example.com\r\nConnection: close\r\n\r\n");
        let r = raw::exchange(proxy.http(), request.as_bytes(), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(r.status, status, "{path}: {}", r.text());
    }

    let info = proxy.admin_json("/server_info").await;
    check("admin-server-info", &info);

    let clusters = proxy.admin_json("/clusters?format=json").await;
    check("admin-clusters", &clusters);
    assert!(
        clusters["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| !c["hosts"].as_array().unwrap().is_empty()),
        "no cluster with hosts: {clusters:#}"
    );

    let ndsz = proxy.admin_json("/debug/ndsz").await;
    check("admin-ndsz", &ndsz);
    assert!(ndsz["table"].get("db.internal").is_some(), "{ndsz:#}");

    let dump = proxy.config_dump().await;
    check("admin-config-dump", &dump);
    let vhosts: Vec<&Value> = dump["routes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["virtualHosts"].as_array().unwrap())
        .collect();
    let rules: Vec<&Value> = vhosts.iter().filter_map(|v| v["routes"].as_array()).flatten().collect();
    for key in ["route", "redirect", "directResponse", "timeout", "fault", "mirror"] {
        assert!(
            rules.iter().any(|r| r.get(key).is_some()),
            "no route rule with {key}: {dump:#}"
        );
    }

    // A reload refused: lastRejected with its findings.
    let file = proxy.config_file();
    let text = std::fs::read_to_string(&file).unwrap();
    // Renamed into place, so that the reload reads the whole file and refuses it for the port.
    let next = file.with_extension("next");
    std::fs::write(&next, text.replace("number: 5432", "number: 800000")).unwrap();
    std::fs::rename(&next, &file).unwrap();
    eventually(Duration::from_secs(10), || async {
        !proxy.config_dump().await["lastRejected"].is_null()
    })
    .await;
    let dump = proxy.config_dump().await;
    check("admin-config-dump", &dump);
    assert_eq!(
        dump["lastRejected"]["findings"][0]["field"], "spec.ports[0].number",
        "{dump:#}"
    );

    // The access log: every line, requests routed, redirected and answered among them.
    eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 4)
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    for line in text.lines() {
        let entry: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        check("access-log", &entry);
    }
}
