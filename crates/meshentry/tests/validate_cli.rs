//! `meshentry validate` as a user runs it: the real binary, real files, exit codes.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshentry"))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run meshentry")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn temp_file(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshentry-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

const BAD: &str = "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: bad
spec:
  hosts: [\"*\"]
  ports:
  - number: 70000
    name: http
";

/// Every example of Istio's ServiceEntry page is valid, and `istioctl analyze
/// --use-kube=false` reports four errors on them (exit 1): the tls-routing and egress examples
/// route to `*.svc.cluster.local` Services that are not in the files, the egress Gateway
/// selects no Pod, and its VirtualService names it without its namespace
/// ([`seed_egress_gateway_name_is_reported_with_the_gateway_meant`]). meshentry adds that the
/// mTLS example's three files do not exist on this machine.
#[test]
fn seed_examples_are_valid_and_get_istios_analysis_in_both_api_versions() {
    for version in ["v1alpha3", "v1beta1"] {
        let dir = workspace().join("examples/seed").join(version);
        let out = run(&["validate", dir.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{version}: {}", text(&out.stderr));
        assert!(
            // The analysis's 4 errors and 1 warning, the two wildcard `resolution: NONE`
            // entries, and the mTLS example's three files missing here.
            text(&out.stderr).contains("15 resources, 0 invalid: 4 errors, 6 warnings"),
            "{}",
            text(&out.stderr)
        );
        let out = run(&["validate", "--output-threshold", "warning", dir.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let stdout = text(&out.stdout);
        let codes: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.find(": IST").map(|i| &l[i + 2..i + 9]))
            .collect();
        assert_eq!(
            codes,
            ["IST0101", "IST0101", "IST0101", "IST0132", "IST0101"],
            "{version}"
        );
        assert_eq!(stdout.lines().count(), 10, "{stdout}");
    }
}

/// The seed's egress example binds its VirtualService (namespace egress) to
/// `istio-egressgateway`, which Istio reads as egress/istio-egressgateway; the Gateway is in
/// istio-system. istioctl reports it as IST0101 (an error) and, as that gateway serves none of
/// the VirtualService's hosts, IST0132; meshentry adds the gateway meant. The other findings
/// are Istio's offline verdict on the Services and Pods the examples assume, the seed's two
/// wildcard `resolution: NONE` entries ([`wildcard_resolution_none_is_warned_with_the_fix`]),
/// and the mTLS example's files, which do not exist on this machine (`explain` refuses its
/// route for that reason).
#[test]
fn seed_egress_gateway_name_is_reported_with_the_gateway_meant() {
    let dir = workspace().join("examples/seed/v1beta1");
    let out = run(&["validate", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let f = |name: &str| dir.join(name).display().to_string();
    let none = |host: &str| {
        format!(
            "warning: wildcard host \"{host}\" with resolution NONE: a connection whose Host or SNI matches it is forwarded to whatever address the client dialed, so even under REGISTRY_ONLY any IP is reachable by naming a matching host (Istio does the same); to reach only the service's own endpoints, use resolution DNS, or STATIC with endpoints (Istio's DYNAMIC_DNS also resolves the requested name; meshentry does not support it yet)"
        )
    };
    let unknown = |host: &str| {
        format!(
            "IST0101: Referenced host not found: \"{host}\"; no ServiceEntry defines {host}, and no Kubernetes Service was read (offline, istioctl knows none either): add the Service to the files, or read the cluster's with --kubernetes"
        )
    };
    let missing = |file: &str| {
        format!(
            "warning: file \"{file}\" does not exist on this machine: a proxy run here cannot originate this TLS, and every connection the policy applies to fails"
        )
    };
    let dr = f("03-destinationrule-mtls-mongocluster.yaml");
    let vs = f("08-virtualservice-gateway-routing.yaml");
    assert_eq!(
        text(&out.stdout),
        [
            format!(
                "{dr}:10:26: DestinationRule default/mtls-mongocluster: spec.trafficPolicy.tls.clientCertificate: {}",
                missing("/etc/certs/myclientcert.pem")
            ),
            format!(
                "{dr}:11:19: DestinationRule default/mtls-mongocluster: spec.trafficPolicy.tls.privateKey: {}",
                missing("/etc/certs/client_private_key.pem")
            ),
            format!(
                "{dr}:12:23: DestinationRule default/mtls-mongocluster: spec.trafficPolicy.tls.caCertificates: {}",
                missing("/etc/certs/rootcacerts.pem")
            ),
            format!(
                "{}:8:5: ServiceEntry default/external-svc-redirect: spec.hosts[1]: {}",
                f("04-serviceentry-external-svc-redirect.yaml"),
                none("*.wikipedia.org")
            ),
            format!(
                "{}:16:15: VirtualService default/tls-routing: spec.tls[0].route[0].destination.host: {}",
                f("05-virtualservice-tls-routing.yaml"),
                unknown("internal-egress-firewall.ns1.svc.cluster.local")
            ),
            format!(
                "{}:8:4: Gateway istio-system/istio-egressgateway: spec.selector: IST0101: Referenced selector not found: \"istio=egressgateway\"; istioctl analyzes files against the Pods in them and its default ingress gateway Pod (labels istio=ingressgateway, namespace istio-system); no Pod carries these labels, so no proxy would serve this Gateway",
                f("07-gateway-istio-egressgateway.yaml")
            ),
            format!(
                "{vs}:13:5: VirtualService egress/gateway-routing: spec.gateways[1]: IST0101: Referenced gateway not found: \"istio-egressgateway\"; a gateway name without a namespace is in the VirtualService's namespace (egress/istio-egressgateway): did you mean \"istio-system/istio-egressgateway\"?"
            ),
            format!(
                "{vs}:13:5: VirtualService egress/gateway-routing: spec.gateways[1]: warning: IST0132: one or more host [httpbin.com] defined in VirtualService egress/gateway-routing not found in Gateway egress/istio-egressgateway."
            ),
            format!(
                "{vs}:21:15: VirtualService egress/gateway-routing: spec.http[0].route[0].destination.host: {}",
                unknown("istio-egressgateway.istio-system.svc.cluster.local")
            ),
            format!(
                "{}:7:5: ServiceEntry default/external-svc-wildcard-example: spec.hosts[0]: {}",
                f("09-serviceentry-external-svc-wildcard-example.yaml"),
                none("*.bar.com")
            ),
            String::new(),
        ]
        .join("\n")
    );
}

/// The seed's two `*.svc.cluster.local` destinations are IST0101 only while no Kubernetes
/// Service defines them: with their Services in the files (as with `--kubernetes`, a cluster's)
/// Istio's lookup finds them and those two errors go; a Service file without them says that
/// the files hold no such Service.
#[test]
fn seed_cluster_hosts_are_found_once_their_services_are_read() {
    let dir = workspace().join("examples/seed/v1beta1");
    let services = temp_file(
        "seed-services.yaml",
        "apiVersion: v1
kind: Service
metadata: {name: internal-egress-firewall, namespace: ns1}
spec:
  ports: [{name: tls, port: 443}]
---
apiVersion: v1
kind: Service
metadata: {name: istio-egressgateway, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  ports: [{name: http, port: 80}]
",
    );
    let out = run(&["validate", dir.to_str().unwrap(), services.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("Referenced host not found"), "{stdout}");
    let errors: Vec<&str> = stdout.lines().filter(|l| !l.contains(": warning: ")).collect();
    assert_eq!(
        errors.len(),
        2,
        "the Gateway's selector and the gateway's name: {stdout}"
    );
    assert!(
        errors[0].contains("spec.selector: IST0101: Referenced selector not found"),
        "{stdout}"
    );
    assert!(
        errors[1].contains("spec.gateways[1]: IST0101: Referenced gateway not found"),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("17 resources, 0 invalid: 2 errors, 6 warnings"),
        "{}",
        text(&out.stderr)
    );

    let other = temp_file(
        "seed-other-service.yaml",
        "apiVersion: v1
kind: Service
metadata: {name: firewall, namespace: ns1}
spec:
  ports: [{name: tls, port: 443}]
",
    );
    let out = run(&["validate", dir.to_str().unwrap(), other.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{}:16:15: VirtualService default/tls-routing: spec.tls[0].route[0].destination.host: IST0101: Referenced host not found: \"internal-egress-firewall.ns1.svc.cluster.local\"; no ServiceEntry defines internal-egress-firewall.ns1.svc.cluster.local, and the files hold no such Kubernetes Service\n",
            dir.join("05-virtualservice-tls-routing.yaml").display()
        )),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("16 resources, 0 invalid: 4 errors, 6 warnings"),
        "{}",
        text(&out.stderr)
    );
}

/// The seed's egress example with the gateway named as Istio needs it. Istio's analyzer
/// still finds no `httpbin.com`: the VirtualService is exported to every namespace, and the
/// analyzer then looks only among services exported everywhere, while the ServiceEntry is
/// exported to its own namespace (and the gateway's). When the gateway's namespace is not among
/// them (as in the seed), meshentry adds that the gateway's proxies do not see it.
#[test]
fn corrected_seed_egress_example() {
    let seed = workspace().join("examples/seed/v1beta1");
    let read = |name: &str| std::fs::read_to_string(seed.join(name)).unwrap();
    let vs = read("08-virtualservice-gateway-routing.yaml")
        .replace("- istio-egressgateway", "- istio-system/istio-egressgateway");
    let gateway = read("07-gateway-istio-egressgateway.yaml");
    let se = read("06-serviceentry-external-svc-httpbin.yaml");
    let exported = se.replace("  - \".\"", "  - \".\"\n  - istio-system");
    assert_ne!(se, exported);
    let httpbin = "VirtualService egress/gateway-routing: spec.http[1].route[0].destination.host: IST0101: Referenced host not found: \"httpbin.com\"; ServiceEntry egress/external-svc-httpbin exports it to";
    let analyzer = "and Istio's analyzer looks only among the services exported to every namespace (the VirtualService's exportTo is *)";

    let f = temp_file(
        "egress-corrected.yaml",
        &[exported.as_str(), &gateway, &vs].join("---\n"),
    );
    let out = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("{httpbin} namespaces egress, istio-system, {analyzer}\n")),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("3 resources, 0 invalid: 3 errors, 0 warnings"),
        "{}",
        text(&out.stderr)
    );

    let f = temp_file("egress-private.yaml", &[se.as_str(), &gateway, &vs].join("---\n"));
    let out = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains(&format!("{httpbin} namespace egress, {analyzer}; \"httpbin.com\" is not visible to proxies of Gateway istio-system/istio-egressgateway (namespace istio-system): ServiceEntry egress/external-svc-httpbin defines it but exports it to namespace egress\n")),
        "{}",
        text(&out.stdout)
    );
}

/// Analysis findings have the same JSON shape as validation's, with Istio's code; a warning
/// alone exits 0.
#[test]
fn analysis_findings_in_json() {
    let config = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reveiws.example.com
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
";
    let f = temp_file("dr-unknown-host.yaml", config);
    let out = run(&["validate", "--output", "json", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(
        v,
        serde_json::json!([{
            "file": f.to_str().unwrap(), "line": 5, "column": 9, "kind": "DestinationRule",
            "namespace": "shop", "name": "reviews", "field": "spec.host", "severity": "warning",
            "code": "IST0174",
            "message": "The host reveiws.example.com defined in the DestinationRule does not match any services in the mesh."
        }])
    );
}

/// `--failure-threshold` and `--output-threshold`, as `istioctl analyze` has them: levels
/// error, warning and info in any case; the exit status counts every finding, shown or not.
#[test]
fn failure_and_output_thresholds() {
    let config = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reveiws.example.com
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: shop}
spec:
  hosts: [reviews.example.com]
  gateways: [missing]
  http: [{route: [{destination: {host: reviews.example.com}}]}]
";
    let warn_only = temp_file("thresholds-warning.yaml", config.split("---\n").next().unwrap());
    let both = temp_file("thresholds-both.yaml", config);
    let code = |args: &[&str], f: &Path| {
        let mut all = vec!["validate"];
        all.extend_from_slice(args);
        all.push(f.to_str().unwrap());
        run(&all)
    };
    assert_eq!(code(&[], &warn_only).status.code(), Some(0));
    for level in ["warning", "WARNING", "Warning", "info"] {
        assert_eq!(
            code(&["--failure-threshold", level], &warn_only).status.code(),
            Some(1),
            "{level}"
        );
    }
    assert_eq!(
        code(&["--failure-threshold", "error"], &warn_only).status.code(),
        Some(0)
    );
    // IST0101 is an error whatever the output threshold hides.
    let out = code(&["--output-threshold", "Error"], &both);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("IST0101: Referenced gateway not found: \"missing\""),
        "{stdout}"
    );
    assert!(!stdout.contains("IST0174") && !stdout.contains("warning:"), "{stdout}");
    assert!(
        text(&out.stderr).contains("2 errors, 2 warnings (2 below the output threshold not shown)"),
        "{}",
        text(&out.stderr)
    );
    let out = code(&["--output", "json", "--output-threshold", "error"], &both);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.as_array().unwrap().iter().all(|f| f["severity"] == "error"), "{v}");
    assert_eq!(out.status.code(), Some(1));
    for bad in ["fatal", ""] {
        let out = code(&["--failure-threshold", bad], &warn_only);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            text(&out.stderr).contains("error, warning, info"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn invalid_config_exits_1_and_lists_every_error() {
    let f = temp_file("bad.yaml", BAD);
    let out = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let file = f.display();
    assert!(
        stdout.contains(&format!(
            "{file}:6:11: ServiceEntry default/bad: spec.hosts[0]: invalid host *"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{file}:8:13: ServiceEntry default/bad: spec.ports[0].number: port number 70000 must be in the range 1..65535"
        )),
        "{stdout}"
    );
}

#[test]
fn json_output() {
    let f = temp_file("bad-json.yaml", BAD);
    let out = run(&[
        "validate",
        "--output",
        "json",
        "--namespace",
        "team",
        f.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let arr = v.as_array().unwrap();
    let first = &arr[0];
    assert_eq!(first["kind"], "ServiceEntry");
    assert_eq!(first["namespace"], "team");
    assert_eq!(first["name"], "bad");
    assert_eq!(first["field"], "spec.hosts[0]");
    assert_eq!(first["severity"], "error");
    assert_eq!(first["line"], 6);
    assert_eq!(first["column"], 11);
    assert_eq!(first["message"], "invalid host *");
    let keys: Vec<&String> = first.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 9, "{keys:?}");
}

#[test]
fn stdin_and_warnings_only_exit_0() {
    let warn_only = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp}
spec:
  hosts: [db.example.com]
  ports: [{number: 5432, name: pg, protocol: TCP}]
  resolution: NONE
";
    let mut child = bin()
        .args(["validate", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(warn_only.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .starts_with("<stdin>:6:11: ServiceEntry default/tcp: spec.ports[0]: warning: addresses are required"),
        "{}",
        text(&out.stdout)
    );
}

/// A wildcard host with `resolution: NONE` lets a captured connection that names a matching
/// host reach any address, even under REGISTRY_ONLY (issue 13): warned, with the ServiceEntry,
/// the host and the fix. A DNS entry for the same hosts is not.
#[test]
fn wildcard_resolution_none_is_warned_with_the_fix() {
    let config = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: any-wiki, namespace: egress}
spec:
  hosts: [wikipedia.org, \"*.wikipedia.org\"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wiki-dns, namespace: egress}
spec:
  hosts: [\"*.wikimedia.org\"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
  endpoints: [{address: upload.wikimedia.org}]
";
    let f = temp_file("wildcard-none.yaml", config);
    let out = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning, not an error: {}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let want = ":5:26: ServiceEntry egress/any-wiki: spec.hosts[1]: warning: wildcard host \"*.wikipedia.org\" \
                with resolution NONE: a connection whose Host or SNI matches it is forwarded to whatever address \
                the client dialed, so even under REGISTRY_ONLY any IP is reachable by naming a matching host";
    assert!(lines[0].contains(want), "{stdout}");
    assert!(
        lines[0].ends_with("use resolution DNS, or STATIC with endpoints (Istio's DYNAMIC_DNS also resolves the requested name; meshentry does not support it yet)"),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("2 resources, 0 invalid: 0 errors, 1 warning"),
        "{}",
        text(&out.stderr)
    );
}

/// Istio's SIMPLE sends no client certificate, whatever `clientCertificate` and `privateKey`
/// say: each is warned as ignored, on its own field (a warning: Istio accepts the rule). The
/// same fields under MUTUAL are not.
#[test]
fn client_certificate_in_simple_mode_is_warned_as_ignored() {
    let ca = temp_file("simple-ca.pem", "not read by validate");
    let config = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: shop}}
spec:
  hosts: [db.example.com]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db, namespace: shop}}
spec:
  host: db.example.com
  trafficPolicy:
    tls:
      mode: SIMPLE
      clientCertificate: {ca}
      privateKey: {ca}
      caCertificates: {ca}
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: MUTUAL, clientCertificate: {ca}, privateKey: {ca}, caCertificates: {ca}}}
",
        ca = ca.display()
    );
    let f = temp_file("simple-client-cert.yaml", &config);
    let out = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "warnings only: {}", text(&out.stderr));
    let file = f.display();
    let ignored = |field: &str| {
        format!("{field} is ignored in SIMPLE mode: no client certificate is sent; use mode MUTUAL to present one")
    };
    assert_eq!(
        text(&out.stdout),
        format!(
            "{file}:17:26: DestinationRule shop/db: spec.trafficPolicy.tls.clientCertificate: warning: {}\n\
             {file}:18:19: DestinationRule shop/db: spec.trafficPolicy.tls.privateKey: warning: {}\n",
            ignored("clientCertificate"),
            ignored("privateKey")
        )
    );
    assert!(
        text(&out.stderr).contains("2 resources, 0 invalid: 0 errors, 2 warnings"),
        "{}",
        text(&out.stderr)
    );
}

/// A certificate, key or CA file a DestinationRule names that does not exist here is warned
/// on its field: a proxy run here would fail the policy's connections (`explain` refuses the
/// route). Only the files the mode reads: not SIMPLE's client certificate, not ISTIO_MUTUAL's
/// files, not a `credentialName` (a Secret, not a file). Relative paths are read from the
/// working directory, as the proxy reads them.
#[test]
fn tls_files_that_do_not_exist_here_are_warned() {
    let here = temp_file("present-ca.pem", "not read by validate");
    let gone = here.with_file_name("absent-ca.pem");
    let config = format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db, namespace: shop}}
spec:
  host: db.example.com
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {here}}}
    portLevelSettings:
    - port: {{number: 5432}}
      tls: {{mode: MUTUAL, clientCertificate: {here}, privateKey: absent-key.pem, caCertificates: {gone}}}
  subsets:
  - name: v1
    trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL, caCertificates: {gone}}}}}
  - name: v2
    trafficPolicy: {{tls: {{mode: SIMPLE, credentialName: db-ca}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: shop}}
spec:
  hosts: [db.example.com]
  ports: [{{number: 5432, name: pg, protocol: TCP}}]
  addresses: [192.0.2.10]
  resolution: DNS
",
        here = here.display(),
        gone = gone.display()
    );
    let f = temp_file("missing-tls-files.yaml", &config);
    let out = bin()
        .args(["validate", "--output", "json", f.to_str().unwrap()])
        .current_dir(here.parent().unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "warnings only: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let fail = "does not exist on this machine: a proxy run here cannot originate this TLS, and every connection the policy applies to fails";
    let warning = |line: u64, column: u64, field: &str, file: &str| {
        serde_json::json!({
            "file": f.to_str().unwrap(), "line": line, "column": column, "kind": "DestinationRule",
            "namespace": "shop", "name": "db", "field": field, "severity": "warning",
            "message": format!("file {file:?} {fail}"),
        })
    };
    let gone = gone.display().to_string();
    // Columns depend on the temporary directory's name: found in the line itself.
    let line10 = config.lines().nth(9).unwrap();
    let column = |value: &str| line10.find(&format!(": {value}")).unwrap() as u64 + 3;
    assert_eq!(
        v,
        serde_json::json!([
            warning(
                10,
                column("absent-key.pem"),
                "spec.trafficPolicy.portLevelSettings[0].tls.privateKey",
                "absent-key.pem"
            ),
            warning(
                10,
                column(&gone),
                "spec.trafficPolicy.portLevelSettings[0].tls.caCertificates",
                &gone
            ),
            {
                "file": f.to_str().unwrap(), "line": 15, "column": 57, "kind": "DestinationRule",
                "namespace": "shop", "name": "db", "field": "spec.subsets[1].trafficPolicy.tls.credentialName",
                "severity": "info",
                "message": "accepted but not applied by meshentry: it names a Kubernetes secret, which meshentry cannot read; requests through this policy get 503 until clientCertificate, privateKey and caCertificates name files"
            },
        ])
    );
}

#[test]
fn missing_file_exits_2_and_names_it() {
    let out = run(&["validate", "/nonexistent/dir/se.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("/nonexistent/dir/se.yaml"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(&["validate"]).status.code(), Some(2));
    assert_eq!(run(&["validate", "--output", "xml", "x"]).status.code(), Some(2));
}

/// An endpoint on a loopback or unspecified address and a port the proxy listens on by default
/// is the proxy itself (issue 14): warned on the endpoint, exit 0. The proxy refuses such
/// traffic at run time (`proxy_self.rs`); this says so before it is deployed.
#[test]
fn endpoints_that_are_the_proxy_itself_are_warned() {
    let config = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: loop, namespace: shop}
spec:
  hosts: [loop.example.com]
  ports: [{number: 15001, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: fine, namespace: shop}
spec:
  hosts: [fine.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 8080}}]
";
    let f = temp_file("self-endpoint.yaml", config);
    let out = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning, not an error: {}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].contains(
            "ServiceEntry shop/loop: spec.endpoints[0].address: warning: endpoint 127.0.0.1:15001 of loop.example.com (port http) is this proxy itself: 15001 is where meshentry proxy listens by default (--outbound, the transparent listener), so traffic to it would loop through the proxy"
        ),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("2 resources, 0 invalid: 0 errors, 1 warning"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_os_error_is_said_once() {
    for args in [
        &["validate", "/nonexistent/meshentry"][..],
        &["registry", "/nonexistent/meshentry"][..],
        &["explain", "--config", "/nonexistent/meshentry", "http://a.example/"][..],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert_eq!(err.matches("(os error 2)").count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("/nonexistent/meshentry: No such file or directory"),
            "{err}"
        );
    }
}

/// A path with nothing in it is a mistake until said otherwise: a CI job pointed at the wrong
/// directory must not pass.
#[test]
fn nothing_to_validate_is_an_error_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let empty_dir = tmp.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let empty_file = tmp.path().join("empty.yaml");
    std::fs::write(&empty_file, "# nothing yet\n").unwrap();
    let not_yaml = tmp.path().join("notes");
    std::fs::create_dir(&not_yaml).unwrap();
    std::fs::write(not_yaml.join("README.txt"), "kind: ServiceEntry\n").unwrap();
    for path in [&empty_dir, &empty_file, &not_yaml] {
        let path = path.to_str().unwrap();
        for output in ["text", "json"] {
            let out = run(&["validate", "-o", output, path]);
            assert_eq!(out.status.code(), Some(1), "{path} -o {output}: {out:?}");
            let err = text(&out.stderr);
            assert!(
                err.contains(&format!(
                    "no resources found in {path} (pass --allow-empty if that is expected)"
                )),
                "{err}"
            );
            let allowed = run(&["validate", "-o", output, "--allow-empty", path]);
            assert_eq!(allowed.status.code(), Some(0), "{path} -o {output}: {allowed:?}");
            assert!(!text(&allowed.stderr).contains("no resources found"), "{allowed:?}");
        }
    }
    // Stdin too.
    let mut child = bin()
        .args(["validate", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("no resources found in -"), "{out:?}");
    // One resource is enough, even next to an empty file.
    let one = tmp.path().join("one.yaml");
    std::fs::write(
        &one,
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec:\n  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n",
    )
    .unwrap();
    let out = run(&["validate", empty_file.to_str().unwrap(), one.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}
