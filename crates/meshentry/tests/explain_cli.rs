//! `meshentry explain` as a user runs it: the real binary on the seed examples, key lines of
//! the step-by-step output, exit codes and the JSON shape.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn seed(file: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed/v1beta1");
    if file.is_empty() {
        dir.to_string_lossy().into_owned()
    } else {
        dir.join(file).to_string_lossy().into_owned()
    }
}

fn explain(config: &[String], extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshentry"));
    cmd.arg("explain");
    for c in config {
        cmd.args(["--config", c]);
    }
    cmd.args(extra).output().expect("run meshentry")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn temp_file(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshentry-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

struct Case {
    name: &'static str,
    /// Seed files ("" = the whole directory).
    files: &'static [&'static str],
    args: &'static [&'static str],
    exit: i32,
    /// Lines (substrings) the output must contain, in this order.
    expect: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "01 TLS by SNI to a DNS service",
        files: &["01-serviceentry-external-svc-https.yaml"],
        args: &["tls://api.dropboxapi.com:443"],
        exit: 0,
        expect: &[
            "port 443: TLS filter chains (connections routed by SNI)",
            "a TLS ClientHello with SNI api.dropboxapi.com",
            "matched by exact host api.dropboxapi.com",
            "from ServiceEntry default/external-svc-https at ",
            "01-serviceentry-external-svc-https.yaml:1:1",
            "no VirtualService TLS/TCP rule for api.dropboxapi.com:443",
            "cluster outbound|443||api.dropboxapi.com",
            "discovery STRICT_DNS (resolution DNS)",
            "name api.dropboxapi.com:443 weight 1",
            "outcome: ROUTED: routed to outbound|443||api.dropboxapi.com",
        ],
    },
    Case {
        name: "02 TCP to a CIDR",
        files: &["02-serviceentry-external-svc-mongocluster.yaml"],
        args: &["tcp://192.192.192.5:27018"],
        exit: 0,
        expect: &[
            "decided from the destination alone, without reading: relay to outbound|27018||mymongodb.somedomain",
            "matched by CIDR 192.192.192.192/24 containing 192.192.192.5",
            "cluster outbound|27018||mymongodb.somedomain",
            "no DestinationRule applies",
            "endpoint 2.2.2.2:27018 weight 1",
            "endpoint 3.3.3.3:27018 weight 1",
            "outcome: ROUTED",
        ],
    },
    Case {
        name: "03 MUTUAL DestinationRule whose files are missing",
        files: &[
            "02-serviceentry-external-svc-mongocluster.yaml",
            "03-destinationrule-mtls-mongocluster.yaml",
        ],
        args: &["tcp://192.192.192.5:27018"],
        exit: 1,
        expect: &[
            "cluster outbound|27018||mymongodb.somedomain",
            "policy from DestinationRule default/mtls-mongocluster at ",
            "TLS ERROR: DestinationRule default/mtls-mongocluster: ",
            "/etc/certs/",
            "outcome: REFUSED: outbound|27018||mymongodb.somedomain: TLS origination is off, its connections fail",
        ],
    },
    Case {
        name: "04 resolution NONE by SNI",
        files: &["04-serviceentry-external-svc-redirect.yaml"],
        args: &["tls://en.wikipedia.org:443"],
        exit: 0,
        expect: &[
            "matched by wildcard host *.wikipedia.org covering en.wikipedia.org",
            "cluster outbound|443||*.wikipedia.org",
            "discovery ORIGINAL_DST (resolution NONE)",
            "outcome: ROUTED",
        ],
    },
    Case {
        name: "05 TLS routing VirtualService to a firewall that is not in the registry",
        files: &[
            "04-serviceentry-external-svc-redirect.yaml",
            "05-virtualservice-tls-routing.yaml",
        ],
        args: &["tls://wikipedia.org:443"],
        exit: 1,
        expect: &[
            "matched by exact host wikipedia.org",
            "VirtualService default/tls-routing (at ",
            "tls[0] matches (sniHosts cover wikipedia.org)",
            "internal-egress-firewall.ns1.svc.cluster.local is not a service this proxy sees",
            "outcome: REFUSED: VirtualService default/tls-routing routes to a missing destination",
        ],
    },
    Case {
        name: "06 exportTo . seen from its own namespace",
        files: &["06-serviceentry-external-svc-httpbin.yaml"],
        args: &["--workload-namespace", "egress", "http://httpbin.com/get"],
        exit: 0,
        expect: &[
            "port 80: an HTTP route table (requests routed by Host)",
            "served as HTTP",
            "httpbin.com port 80 (http, HTTP) in namespace egress",
            "from ServiceEntry egress/external-svc-httpbin at ",
            "exportTo [.] (visible to namespace egress)",
            "cluster outbound|80||httpbin.com",
            "name httpbin.com:80 weight 1",
            "outcome: ROUTED",
        ],
    },
    Case {
        name: "06 exportTo . seen from another namespace",
        files: &["06-serviceentry-external-svc-httpbin.yaml"],
        args: &["--workload-namespace", "default", "http://httpbin.com/get"],
        exit: 0,
        expect: &[
            "no service in the registry seen by namespace default claims httpbin.com:80",
            "hint: httpbin.com in namespace egress (ServiceEntry egress/external-svc-httpbin at ",
            "is exported to [.], not to namespace default",
            "PassthroughCluster",
            "outcome: PASSTHROUGH",
        ],
    },
    Case {
        name: "07+08 gateway routing: the mesh rule sends to the gateway service, absent here",
        files: &[
            "06-serviceentry-external-svc-httpbin.yaml",
            "07-gateway-istio-egressgateway.yaml",
            "08-virtualservice-gateway-routing.yaml",
        ],
        args: &["--workload-namespace", "egress", "http://httpbin.com/get"],
        exit: 1,
        expect: &[
            "from ServiceEntry egress/external-svc-httpbin",
            "VirtualService egress/gateway-routing (at ",
            "owns the route of httpbin.com:80",
            "http[0] \"#0\" match [port=80 && gateways=mesh]: MATCHED",
            "on the outbound listener (route table for port 80), http[0] \"#0\" picks the destination below; nothing else applies (no rewrite, timeout, retries, fault, mirror or header edits)",
            "istio-egressgateway.istio-system.svc.cluster.local is not a service this proxy sees",
            "outcome: REFUSED 503: meshentry: VirtualService egress/gateway-routing routes to a missing destination",
        ],
    },
    Case {
        name: "09 wildcard host, resolution NONE",
        files: &["09-serviceentry-external-svc-wildcard-example.yaml"],
        args: &["http://baz.bar.com/"],
        exit: 0,
        expect: &[
            "matched by wildcard host *.bar.com covering baz.bar.com",
            "cluster outbound|80||*.bar.com",
            "discovery ORIGINAL_DST (resolution NONE)",
            "outcome: ROUTED",
        ],
    },
    Case {
        name: "10 unix domain socket endpoint",
        files: &["10-serviceentry-unix-domain-socket-example.yaml"],
        args: &["http://example.unix.local/"],
        exit: 0,
        expect: &[
            "matched by exact host example.unix.local",
            "cluster outbound|80||example.unix.local",
            "endpoint unix:///var/run/example/socket weight 1",
            "outcome: ROUTED",
        ],
    },
    Case {
        name: "11 DNS endpoints with per-endpoint ports; the exact host beats *.bar.com",
        files: &[""],
        args: &["http://foo.bar.com/"],
        exit: 0,
        expect: &[
            "matched by exact host foo.bar.com",
            "from ServiceEntry default/external-svc-dns at ",
            "cluster outbound|80||foo.bar.com",
            "discovery STRICT_DNS (resolution DNS): resolves 3 name(s)",
            "name us.foo.bar.com:8080",
            "name uk.foo.bar.com:9080",
            "name in.foo.bar.com:7080",
            "outcome: ROUTED",
        ],
    },
    Case {
        name: "12 MESH_INTERNAL static service in another namespace",
        files: &["12-serviceentry-httpbin.yaml"],
        args: &["http://httpbin.com/status/200"],
        exit: 0,
        expect: &[
            "httpbin.com port 80 (http, HTTP) in namespace httpbin-ns",
            "from ServiceEntry httpbin-ns/httpbin at ",
            "location MESH_INTERNAL",
            "cluster outbound|80||httpbin.com",
            "endpoint 2.2.2.2:80 weight 1",
            "endpoint 3.3.3.3:80 weight 1",
            "outcome: ROUTED",
        ],
    },
    Case {
        name: "13+14 workloadSelector picks WorkloadEntries",
        files: &["13-workloadentry-details-vm-1.yaml", "14-serviceentry-details-svc.yaml"],
        args: &["http://details.bookinfo.com/details/1"],
        exit: 0,
        expect: &[
            "matched by exact host details.bookinfo.com",
            "from ServiceEntry default/details-svc at ",
            "cluster outbound|80||details.bookinfo.com",
            "endpoint 2.2.2.2:80 weight 1 labels app=details,instance-id=vm1",
            "endpoint 3.3.3.3:80 weight 1 labels app=details,instance-id=vm2",
            "outcome: ROUTED",
        ],
    },
    Case {
        name: "the whole seed, explicit proxy listener",
        files: &[""],
        args: &["--via", "http-proxy", "http://details.bookinfo.com/"],
        exit: 0,
        expect: &[
            "explicit HTTP proxy listener (--http-proxy)",
            "matched by exact host details.bookinfo.com",
            "outcome: ROUTED: routed to outbound|80||details.bookinfo.com",
        ],
    },
    Case {
        name: "REGISTRY_ONLY refuses an unknown host",
        files: &[""],
        args: &["--outbound-policy", "REGISTRY_ONLY", "http://unknown.example.com/"],
        exit: 1,
        expect: &[
            "no service in the registry seen by namespace default claims unknown.example.com:80",
            "outbound traffic policy REGISTRY_ONLY (from --outbound-policy): BlackHoleCluster, refused",
            "outcome: REFUSED 502: meshentry: unknown.example.com:80 is not a service in the registry seen by namespace default and the outbound traffic policy is REGISTRY_ONLY (from --outbound-policy)",
        ],
    },
    Case {
        name: "REGISTRY_ONLY refuses TLS to an unknown name",
        files: &[""],
        args: &["--outbound-policy", "REGISTRY_ONLY", "tls://unknown.example.com:443"],
        exit: 1,
        expect: &["outcome: REFUSED: blocked by REGISTRY_ONLY: destination is not in the service registry"],
    },
    Case {
        name: "*.bar.com does not cover bar.com",
        files: &["09-serviceentry-external-svc-wildcard-example.yaml"],
        args: &["--outbound-policy", "REGISTRY_ONLY", "http://bar.com/"],
        exit: 1,
        expect: &[
            "no service in the registry seen by namespace default claims bar.com:80",
            "hint: *.bar.com (ServiceEntry default/external-svc-wildcard-example at ",
            "does not cover bar.com itself",
            "outcome: REFUSED 502",
        ],
    },
];

fn check(case: &Case, out: &Output) {
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(case.exit),
        "{}: exit code\n{stdout}{}",
        case.name,
        text(&out.stderr)
    );
    let mut rest = stdout.as_str();
    for want in case.expect {
        match rest.find(want) {
            Some(i) => rest = &rest[i + want.len()..],
            None => panic!("{}: {want:?} missing (or out of order) in\n{stdout}", case.name),
        }
    }
}

#[test]
fn seed_examples_table() {
    for case in CASES {
        let files: Vec<String> = case.files.iter().map(|f| seed(f)).collect();
        check(case, &explain(&files, case.args));
    }
}

const NO_MATCH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec:
  host: web.example.com
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web.example.com]
  http:
  - name: canary
    match: [{headers: {x-canary: {exact: "yes"}}}]
    route: [{destination: {host: web.example.com, subset: v2}}]
  - name: api
    match: [{uri: {prefix: /api}}]
    route:
    - {destination: {host: web.example.com, subset: v1}, weight: 90}
    - {destination: {host: web.example.com, subset: v2}, weight: 10}
"#;

#[test]
fn virtual_service_rules_subsets_and_no_match() {
    let file = temp_file("web.yaml", NO_MATCH).to_string_lossy().into_owned();
    let files = [file];
    check(
        &Case {
            name: "weighted subsets",
            files: &[],
            args: &[],
            exit: 0,
            expect: &[
                "VirtualService default/web (at ",
                "http[0] \"canary\" match [header x-canary=yes]: no match",
                "http[1] \"api\" match [uri^/api]: MATCHED",
                "on the outbound listener (route table for port 80), http[1] \"api\" picks the destination below; nothing else applies",
                "→ outbound|80|v1|web.example.com weight 90 (90%)",
                "→ outbound|80|v2|web.example.com weight 10 (10%)",
                "cluster outbound|80|v1|web.example.com (subset v1), 90% of requests",
                "policy from DestinationRule default/web at ",
                "subset v1 selects endpoints with labels version=v1",
                "load balancer ROUND_ROBIN",
                "endpoint 10.0.0.1:80 weight 1 labels version=v1",
                "cluster outbound|80|v2|web.example.com (subset v2), 10% of requests",
                "load balancer RANDOM",
                "endpoint 10.0.0.2:80 weight 1 labels version=v2",
                "outcome: ROUTED: routed to outbound|80|v1|web.example.com, outbound|80|v2|web.example.com",
            ],
        },
        &explain(&files, &["http://web.example.com/api/users"]),
    );
    check(
        &Case {
            name: "header match",
            files: &[],
            args: &[],
            exit: 0,
            expect: &[
                "http[0] \"canary\"",
                "MATCHED",
                "outcome: ROUTED: routed to outbound|80|v2|web.example.com",
            ],
        },
        &explain(&files, &["-H", "X-Canary: yes", "http://web.example.com/other"]),
    );
    check(
        &Case {
            name: "no rule matches",
            files: &[],
            args: &[],
            exit: 1,
            expect: &[
                "http[0] \"canary\"",
                "no match",
                "http[1] \"api\"",
                "no match",
                "no rule matches: 404",
                "outcome: REFUSED 404: meshentry: no rule of VirtualService default/web matches this request to web.example.com:80",
            ],
        },
        &explain(&files, &["http://web.example.com/other"]),
    );
}

/// One rule per kind of match condition, none but the last matching the request: each is
/// shown as written (`match [any]` only for a block with no condition at all), and the
/// listener and rule that picked the destination are named.
const CONDITIONS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web.example.com]
  http:
  - name: headers
    match: [{headers: {x-user: {exact: alice}}}]
    route: [{destination: {host: web.example.com}}]
  - name: without
    match: [{withoutHeaders: {x-debug: {}}}]
    route: [{destination: {host: web.example.com}}]
  - name: query
    match: [{queryParams: {v: {exact: "2"}}}]
    route: [{destination: {host: web.example.com}}]
  - name: uri
    match: [{uri: {prefix: /API}, ignoreUriCase: true, method: {exact: POST}}]
    route: [{destination: {host: web.example.com}}]
  - name: source
    match: [{port: 80, gateways: [mesh], sourceLabels: {app: web}, sourceNamespace: shop}]
    route: [{destination: {host: web.example.com}}]
"#;

#[test]
fn every_condition_of_a_match_is_shown() {
    let file = temp_file("conditions.yaml", CONDITIONS).to_string_lossy().into_owned();
    check(
        &Case {
            name: "each kind of condition",
            files: &[],
            args: &[],
            exit: 0,
            expect: &[
                "http[0] \"headers\" match [header x-user=alice]: no match",
                "http[1] \"without\" match [without header x-debug present]: no match",
                "http[2] \"query\" match [query v=2]: no match",
                "http[3] \"uri\" match [uri^/API (ignoreUriCase) && method=POST]: no match",
                "http[4] \"source\" match [port=80 && sourceLabels app=web && sourceNamespace=shop (not applied) && gateways=mesh]: MATCHED",
                "on the outbound listener (route table for port 80), http[4] \"source\" picks the destination below; nothing else applies (no rewrite, timeout, retries, fault, mirror or header edits)",
                "outcome: ROUTED: routed to outbound|80||web.example.com",
            ],
        },
        &explain(
            &[file],
            &[
                "--labels",
                "app=web",
                "-H",
                "x-debug: 1",
                "http://web.example.com/api?v=1",
            ],
        ),
    );
}

/// A rule that does more than pick a destination says so, with what it applies; one that
/// answers the request itself says that; the explicit proxy listener is named as such.
#[test]
fn the_rule_that_picked_the_destination_says_what_else_it_applies() {
    let config = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web.example.com]
  http:
  - name: moved
    match: [{uri: {prefix: /old}}]
    redirect: {uri: /new}
  - name: slow
    timeout: 2s
    route: [{destination: {host: web.example.com}, headers: {request: {set: {x-a: b}}}}]
"#;
    let file = temp_file("extras.yaml", config).to_string_lossy().into_owned();
    let files = [file];
    check(
        &Case {
            name: "timeout and destination headers",
            files: &[],
            args: &[],
            exit: 0,
            expect: &[
                "http[0] \"moved\" match [uri^/old]: no match",
                "http[1] \"slow\" match every request: MATCHED",
                "timeout: 2s",
                "headers to outbound|80||web.example.com: request [set x-a], response []",
                "on the explicit HTTP proxy listener, http[1] \"slow\" picks the destination below and applies the settings above",
                "outcome: ROUTED",
            ],
        },
        &explain(&files, &["--via", "http-proxy", "http://web.example.com/x"]),
    );
    check(
        &Case {
            name: "redirect",
            files: &[],
            args: &[],
            exit: 0,
            expect: &[
                "http[0] \"moved\" match [uri^/old]: MATCHED",
                "on the outbound listener (route table for port 80), http[0] \"moved\" answers the request itself:",
                "redirect 301: scheme (unchanged), authority (unchanged), uri /new",
            ],
        },
        &explain(&files, &["http://web.example.com/old"]),
    );
}

#[test]
fn json_shape() {
    let file = temp_file("web-json.yaml", NO_MATCH).to_string_lossy().into_owned();
    let out = explain(&[file], &["-o", "json", "http://web.example.com/api"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["request"]["protocol"], "http");
    assert_eq!(v["request"]["host"], "web.example.com");
    assert_eq!(v["request"]["port"], 80);
    assert_eq!(v["request"]["listener"], "outbound");
    assert_eq!(v["proxy"]["namespace"], "default");
    assert_eq!(v["proxy"]["outboundPolicy"], "ALLOW_ANY");
    assert!(
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["step"].is_string() && s["lines"].is_array())
    );
    assert_eq!(v["service"]["host"], "web.example.com");
    assert_eq!(v["service"]["matchedBy"], "exact host web.example.com");
    assert_eq!(v["service"]["resource"], "ServiceEntry default/web");
    assert_eq!(v["virtualService"]["name"], "default/web");
    assert_eq!(v["virtualService"]["rule"]["kind"], "http");
    assert_eq!(v["virtualService"]["rule"]["index"], 1);
    assert_eq!(v["virtualService"]["rule"]["name"], "api");
    let dests = v["destinations"].as_array().unwrap();
    assert_eq!(dests.len(), 2);
    assert_eq!(dests[0]["cluster"], "outbound|80|v1|web.example.com");
    assert_eq!(dests[0]["weightPercent"], 90.0);
    assert_eq!(dests[0]["subset"], "v1");
    assert_eq!(dests[0]["discovery"], "EDS");
    assert_eq!(dests[0]["loadBalancer"], "ROUND_ROBIN");
    assert_eq!(dests[0]["endpoints"][0]["address"], "10.0.0.1:80");
    assert_eq!(dests[0]["endpoints"][0]["labels"]["version"], "v1");
    assert_eq!(v["outcome"]["routed"], true);
    assert_eq!(v["outcome"]["result"], "routed");

    let out = explain(
        &[seed("")],
        &[
            "-o",
            "json",
            "--outbound-policy",
            "REGISTRY_ONLY",
            "http://nope.example/",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["service"], serde_json::Value::Null);
    assert_eq!(v["outcome"]["routed"], false);
    assert_eq!(v["outcome"]["status"], 502);
    assert_eq!(v["outcome"]["cluster"], "BlackHoleCluster");
}

#[test]
fn usage_and_config_errors_exit_2() {
    let out = explain(&[seed("")], &["ftp://x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = explain(&[seed("")], &["tcp://db.example.com:5432"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("tcp:// needs an IP"),
        "{}",
        text(&out.stderr)
    );
    let bad = temp_file(
        "bad.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: bad}\nspec:\n  hosts: [a.com]\n  ports: [{number: 70000, name: http}]\n",
    );
    let out = explain(&[bad.to_string_lossy().into_owned()], &["http://a.com/"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("bad.yaml:6"), "{}", text(&out.stderr));
}

const DELEGATE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: default}
spec:
  hosts: [a.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root, namespace: default}
spec:
  hosts: [a.example.com]
  http:
  - name: api
    match: [{uri: {prefix: /api}}]
    delegate: {name: api, namespace: team}
  - match: [{uri: {prefix: /gone}}]
    delegate: {name: missing}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: team}
spec:
  http:
  - name: v1
    match: [{uri: {prefix: /api/v1}}]
    route: [{destination: {host: a.example.com}}]
  - name: v2
    match: [{uri: {prefix: /api/v2}}]
    route: [{destination: {host: a.example.com}}]
"#;

#[test]
fn delegate_rules_are_listed_under_the_root_rule() {
    let file = temp_file("delegate.yaml", DELEGATE).to_string_lossy().into_owned();
    let files = [file];
    check(
        &Case {
            name: "delegate rule matched",
            files: &[],
            args: &[],
            exit: 0,
            expect: &[
                "http[0] (delegate team/api http[0]) \"api-v1\" match [uri^/api/v1]: no match",
                "http[0] (delegate team/api http[1]) \"api-v2\" match [uri^/api/v2]: MATCHED",
                "outcome: ROUTED: routed to outbound|80||a.example.com",
            ],
        },
        &explain(&files, &["http://a.example.com/api/v2/x"]),
    );
    check(
        &Case {
            name: "no delegate rule matches",
            files: &[],
            args: &[],
            exit: 1,
            expect: &[
                "http[1]: delegates to missing, of which no rule applies here (see the warnings below)",
                "no rule matches: 404",
                "VirtualService default/root: http[1] delegates to default/missing, which does not exist",
            ],
        },
        &explain(&files, &["http://a.example.com/api/v3"]),
    );
}

#[test]
fn fields_not_applied_in_the_resources_shown_are_noted() {
    let config = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web.example.com, other.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec:
  host: web.example.com
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {http: {http2KeepAlive: {interval: 30s, timeout: 5s}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: other, namespace: default}
spec:
  host: other.example.com
  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web.example.com]
  http:
  - route: [{destination: {host: web.example.com}}]
    corsPolicy: {allowOrigins: [{exact: "https://a.example.com"}]}
"#;
    let file = temp_file("notes.yaml", config).to_string_lossy().into_owned();
    let out = explain(std::slice::from_ref(&file), &["http://web.example.com/"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let notes = stdout
        .split_once("\nnotes:\n")
        .map(|(_, n)| n)
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        notes.contains(
            "DestinationRule default/web spec.trafficPolicy.connectionPool: accepted but not applied by meshentry: "
        ),
        "{stdout}"
    );
    assert!(
        notes.contains("VirtualService default/web spec.http[0].corsPolicy: accepted but not applied by meshentry: "),
        "{stdout}"
    );
    // A resource the route does not use is not explained.
    assert!(!notes.contains("default/other"), "{stdout}");

    let out = explain(&[file], &["-o", "json", "http://web.example.com/"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["notes"].as_array().map(Vec::len), Some(2), "{v}");
}

const TWO_TCP: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db1, namespace: default}
spec:
  hosts: [db1.internal]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db2, namespace: default}
spec:
  hosts: [db2.internal]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: passthrough, namespace: default}
spec:
  hosts: [passthrough.example]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
";

/// The allocated address `explain dns://` answers for `name`.
fn allocated(config: &[String], name: &str) -> String {
    let out = explain(config, &["-o", "json", &format!("dns://{name}")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "local", "{v}");
    v["answers"][0]["data"].as_str().unwrap().to_string()
}

#[test]
fn dns_names_answers_and_why() {
    let config = vec![temp_file("two-tcp.yaml", TWO_TCP).to_string_lossy().into_owned()];
    let (db1, db2) = (allocated(&config, "db1.internal"), allocated(&config, "db2.internal"));
    assert!(db1.starts_with("240.240.") && db2.starts_with("240.240.") && db1 != db2);
    // A search-domain expansion: a CNAME, then the address.
    let out = explain(
        &config,
        &[
            "--dns-search",
            "ns1.svc.cluster.local",
            "dns://db1.internal.ns1.svc.cluster.local",
        ],
    );
    let t = text(&out.stdout);
    assert!(t.contains("CNAME\tdb1.internal."), "{t}");
    assert!(t.contains(&format!("A\t{db1}")), "{t}");
    // The seed's VIP range answers with the address written.
    let out = explain(&[seed("")], &["dns://mymongodb.somedomain"]);
    assert!(
        text(&out.stdout).contains("A\t192.192.192.192"),
        "{}",
        text(&out.stdout)
    );
    // NONE without addresses: forwarded, and why.
    let out = explain(&config, &["dns://passthrough.example"]);
    let t = text(&out.stdout);
    assert!(t.contains("outcome: forwarded") && t.contains("resolution NONE"), "{t}");
    assert!(!explain(&config, &["dns://"]).status.success());
    assert!(!explain(&config, &["dns://a.b?type=MX"]).status.success());
}

#[test]
fn with_dns_the_allocated_address_routes_each_tcp_service_without_it_they_share_the_port() {
    let config = vec![
        temp_file("two-tcp-routing.yaml", TWO_TCP)
            .to_string_lossy()
            .into_owned(),
    ];
    let db2 = allocated(&config, "db2.internal");
    let out = explain(&config, &["--dns", &format!("tcp://{db2}:5432")]);
    let t = text(&out.stdout);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("relay to outbound|5432||db2.internal"), "{t}");
    assert!(!t.contains("to any destination"), "no shared catch-all: {t}");
    // Without the DNS proxy, both share 0.0.0.0:5432 and the older takes all (Istio's
    // IST0134 situation).
    let out = explain(&config, &[&format!("tcp://{db2}:5432")]);
    let t = text(&out.stdout);
    assert!(t.contains("relay to outbound|5432||db1.internal"), "{t}");
    assert!(
        t.contains("2 services without addresses take TCP traffic to any destination"),
        "{t}"
    );
}

#[test]
fn a_reader_that_goes_away_is_not_an_error() {
    // `meshentry explain -o json ... | head -1`: the pipe's reader is gone before the answer
    // is written. Nothing to say about it, and not exit 2.
    for args in [
        &["explain", "-o", "json", "--config", &seed(""), "http://httpbin.org/"][..],
        &["validate", "-o", "json", &seed("")][..],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshentry"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// `-n` is where resources that set no namespace go, in `explain` and `registry` alike (as in
/// `validate`, kubectl and istioctl); the workload whose view is shown is
/// `--workload-namespace`, by default the same namespace.
#[test]
fn namespace_places_the_resources_and_workload_namespace_is_the_viewer() {
    let file = temp_file(
        "team.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: only}\nspec:\n  hosts: [team.example.com]\n  \
         exportTo: [\".\"]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 127.0.0.9}]\n",
    );
    let config = [file.to_string_lossy().into_owned()];
    let url = "http://team.example.com/";
    let policy = ["--outbound-policy", "REGISTRY_ONLY"];
    let routed = explain(&config, &[&policy[..], &["-n", "team", url]].concat());
    assert_eq!(routed.status.code(), Some(0), "{}", text(&routed.stdout));
    let out = text(&routed.stdout);
    assert!(out.contains("proxy:   namespace team,"), "{out}");
    assert!(out.contains("from ServiceEntry team/only at "), "{out}");
    for args in [
        &["-n", "team", "--workload-namespace", "other", url][..],
        &["--workload-namespace", "team", url][..],
    ] {
        let refused = explain(&config, &[&policy[..], args].concat());
        assert_eq!(refused.status.code(), Some(1), "{args:?}: {}", text(&refused.stdout));
        assert!(
            text(&refused.stdout).contains("is exported to [.], not to namespace"),
            "{}",
            text(&refused.stdout)
        );
    }

    let registry = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_meshentry"))
            .arg("registry")
            .args(args)
            .arg(&file)
            .output()
            .unwrap()
    };
    let all = text(&registry(&["-n", "team"]).stdout);
    let row: Vec<&str> = all.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(row.get(..2), Some(&["team.example.com", "team"][..]), "{all}");
    let theirs = registry(&["-n", "team", "--workload-namespace", "other"]);
    assert!(theirs.status.success(), "{theirs:?}");
    assert_eq!(
        text(&theirs.stdout).lines().count(),
        1,
        "only the header: {}",
        text(&theirs.stdout)
    );
    // Labels pick a workload's Sidecar: meaningless without the workload's namespace.
    let labels = registry(&["--labels", "app=web"]);
    assert_eq!(labels.status.code(), Some(2), "{labels:?}");
    assert!(
        text(&labels.stderr).contains("--workload-namespace"),
        "{}",
        text(&labels.stderr)
    );
}
