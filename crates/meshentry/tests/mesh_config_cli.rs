//! `--mesh-config` as a user runs it: the real binary with Istio's MeshConfig, as the bare
//! object or the `istio` ConfigMap, on `validate`, `registry`, `explain` and `proxy`. Each
//! applied field is shown to change what meshentry computes, and a flag to override the file.
//! Proxy tests run the real proxy on 127.x addresses of their own, with a DNS server address
//! nothing answers on (every endpoint is a static loopback address), and real curl clients.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use meshentry_proxy::tls::{load_certs, load_key};
use meshentry_testutil::{HttpUpstream, Proxy, TlsUpstream, curl_command, unique_loopback};

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");

/// The proxy on `yaml` with `args` (its DNS server address answers nothing).
async fn start_proxy<S: AsRef<str>>(yaml: &str, args: &[S]) -> Proxy {
    Proxy::builder(BIN)
        .config(yaml)
        .args(args.iter().map(|a| a.as_ref().to_owned()))
        .start()
        .await
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run meshentry")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

/// The `istio` ConfigMap as Istio's installation writes it, holding `mesh` (indented here).
fn configmap(mesh: &str) -> String {
    let body: String = mesh.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  namespace: istio-system\ndata:\n  meshNetworks: 'networks: {{}}'\n  mesh: |-\n{body}"
    )
}

const SERVICE_IN_A: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: a}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.1.1.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: public, namespace: a}
spec:
  hosts: [public.example.com]
  exportTo: ['*']
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.1.1.2}]
";

#[test]
fn default_service_export_to_hides_services_from_other_namespaces() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "se.yaml", SERVICE_IN_A);
    let mesh = write(tmp.path(), "mesh.yaml", "defaultServiceExportTo: [\".\"]\n");
    let cm = write(tmp.path(), "istio.yaml", &configmap("defaultServiceExportTo: [\".\"]"));

    let before = run(&["registry", "--workload-namespace", "b", &config]);
    assert!(before.status.success(), "{}", text(&before));
    assert!(text(&before).contains("api.example.com"), "{}", text(&before));

    for file in [&mesh, &cm] {
        let out = run(&["registry", "--workload-namespace", "b", "--mesh-config", file, &config]);
        assert!(out.status.success(), "{}", text(&out));
        let t = text(&out);
        assert!(
            !t.contains("api.example.com"),
            "exported to its own namespace only: {t}"
        );
        assert!(t.contains("public.example.com"), "an explicit exportTo stands: {t}");
        let own = run(&["registry", "--workload-namespace", "a", "--mesh-config", file, &config]);
        assert!(text(&own).contains("api.example.com"), "{}", text(&own));
    }
}

const RULES_IN_A: &str = "\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api-random, namespace: a}
spec:
  host: api.example.com
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api-routes, namespace: a}
spec:
  hosts: [api.example.com]
  http:
  - route: [{destination: {host: api.example.com}}]
";

#[test]
fn default_virtual_service_and_destination_rule_export_to() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "cfg.yaml", &format!("{SERVICE_IN_A}{RULES_IN_A}"));
    let explain = |extra: &[&str]| {
        let mut args = vec!["explain", "-c", &config, "--workload-namespace", "b"];
        args.extend_from_slice(extra);
        args.push("http://api.example.com/");
        let out = run(&args);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let before = explain(&[]);
    assert!(before.contains("VirtualService a/api-routes"), "{before}");
    assert!(before.contains("policy from DestinationRule a/api-random"), "{before}");

    let vs = write(tmp.path(), "vs.yaml", "defaultVirtualServiceExportTo: [\".\"]\n");
    let after = explain(&["--mesh-config", &vs]);
    assert!(after.contains("no VirtualService routes api.example.com:80"), "{after}");
    assert!(after.contains("policy from DestinationRule a/api-random"), "{after}");

    let dr = write(tmp.path(), "dr.yaml", "defaultDestinationRuleExportTo: [\".\"]\n");
    let after = explain(&["--mesh-config", &dr]);
    assert!(after.contains("VirtualService a/api-routes"), "{after}");
    assert!(after.contains("no DestinationRule applies"), "{after}");
}

#[test]
fn root_namespace_moves_which_destination_rules_apply_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let rule = |ns: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api-subsets, namespace: {ns}}}\nspec:\n  host: api.example.com\n  exportTo: ['*']\n  trafficPolicy: {{loadBalancer: {{simple: RANDOM}}}}\n  subsets: [{{name: v1, labels: {{version: v1}}}}]\n"
        )
    };
    let service = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api, namespace: default}\nspec:\n  hosts: [api.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.1.1.1, labels: {version: v1}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: api-v1, namespace: default}\nspec:\n  hosts: [api.example.com]\n  http:\n  - route: [{destination: {host: api.example.com, subset: v1}}]\n";
    let in_mesh_root = write(tmp.path(), "mesh-root.yaml", &format!("{service}{}", rule("mesh-root")));
    let in_istio_system = write(
        tmp.path(),
        "istio-system.yaml",
        &format!("{service}{}", rule("istio-system")),
    );
    let mesh = write(tmp.path(), "mesh.yaml", &configmap("rootNamespace: mesh-root"));

    let explain = |config: &str, extra: &[&str]| {
        let mut args = vec!["explain", "-c", config];
        args.extend_from_slice(extra);
        args.push("http://api.example.com/");
        text(&run(&args))
    };
    // istio-system is the root namespace until the mesh config moves it.
    assert!(explain(&in_istio_system, &[]).contains("policy from DestinationRule istio-system/api-subsets"));
    assert!(!explain(&in_mesh_root, &[]).contains("policy from DestinationRule mesh-root/api-subsets"));
    let moved = explain(&in_mesh_root, &["--mesh-config", &mesh]);
    assert!(
        moved.contains("policy from DestinationRule mesh-root/api-subsets"),
        "{moved}"
    );
    let left = explain(&in_istio_system, &["--mesh-config", &mesh]);
    assert!(!left.contains("policy from DestinationRule istio-system"), "{left}");

    // istioctl analyze does not know the root namespace: it wants the subset in a rule of the
    // VirtualService's namespace, so IST0101 (an error) stands either way. meshentry's note on
    // it follows the root namespace: the rule does not apply without the mesh config.
    let validate = |config: &str, extra: &[&str]| {
        let mut args = vec!["validate", config];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        text(&out)
    };
    let without = validate(&in_mesh_root, &[]);
    assert!(
        without.contains("IST0101: Referenced host+subset in destinationrule not found"),
        "{without}"
    );
    assert!(
        without.contains("mesh-root/api-subsets defines \"v1\" but does not apply there"),
        "{without}"
    );
    let with = validate(&in_mesh_root, &["--mesh-config", &mesh]);
    assert!(
        with.contains("IST0101: Referenced host+subset in destinationrule not found"),
        "{with}"
    );
    assert!(!with.contains("does not apply there"), "{with}");
}

#[test]
fn invalid_values_are_errors_with_file_line_and_field_on_every_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "se.yaml", SERVICE_IN_A);
    let mesh = write(
        tmp.path(),
        "istio.yaml",
        &configmap(
            "accessLogFile: /dev/stdout\noutboundTrafficPolicy:\n  mode: REGISTRY_ONYL\nrootNamespace: Istio_System",
        ),
    );
    let out = run(&["validate", "--mesh-config", &mesh, &config]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "{mesh}:11:13: ConfigMap istio-system/istio: data.mesh.outboundTrafficPolicy.mode: unknown value `REGISTRY_ONYL`, did you mean `REGISTRY_ONLY`?"
        )),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "{mesh}:12:20: ConfigMap istio-system/istio: data.mesh.rootNamespace: root namespace"
        )),
        "{t}"
    );
    assert!(
        t.contains("data.mesh.accessLogFile: info: accepted, not applied"),
        "unknown fields are accepted with a note: {t}"
    );
    let out = run(&["registry", "--mesh-config", &mesh, &config]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("REGISTRY_ONYL"), "{}", text(&out));
    let out = run(&[
        "explain",
        "--mesh-config",
        &mesh,
        "-c",
        &config,
        "http://api.example.com/",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("REGISTRY_ONYL"), "{}", text(&out));
    let ip = unique_loopback();
    let (proxy, admin) = (SocketAddr::new(ip.into(), 15080), SocketAddr::new(ip.into(), 15000));
    let out = run(&[
        "proxy",
        "--config",
        &config,
        "--mesh-config",
        &mesh,
        "--http-proxy",
        &proxy.to_string(),
        "--outbound",
        "off",
        "--admin",
        &admin.to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("REGISTRY_ONYL"), "{}", text(&out));

    let out = run(&[
        "validate",
        "--mesh-config",
        &tmp.path().join("missing.yaml").display().to_string(),
        &config,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("missing.yaml"), "{}", text(&out));
}

/// `curl -x proxy url`: (status, body).
fn curl(proxy: SocketAddr, url: &str) -> (u16, String) {
    let out = curl_command()
        .args([
            "-s",
            "-m",
            "10",
            "-w",
            "\n%{http_code}",
            "-x",
            &format!("http://{proxy}"),
            url,
        ])
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = all.rsplit_once('\n').unwrap_or(("", &all));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn outbound_traffic_policy_registry_only_refuses_unknown_hosts_unless_a_flag_says_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = HttpUpstream::start(SocketAddr::new(unique_loopback().into(), 8080), "outside");
    let url = format!("http://{}/x", upstream.addr());
    let mesh = write(
        tmp.path(),
        "mesh.yaml",
        &configmap("outboundTrafficPolicy:\n  mode: REGISTRY_ONLY"),
    );
    let allow = start_proxy::<&str>(SERVICE_IN_A, &[]).await;
    let (status, _) = curl(allow.http(), &url);
    assert_eq!(
        status, 200,
        "Istio's default ALLOW_ANY passes an unknown destination through"
    );
    assert_eq!(upstream.requests(), 1);

    let mut args = vec!["--mesh-config", &mesh];
    let strict = start_proxy(SERVICE_IN_A, &args).await;
    let (status, body) = curl(strict.http(), &url);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("the outbound traffic policy is REGISTRY_ONLY (from mesh default, --mesh-config"),
        "{body}"
    );
    assert_eq!(upstream.requests(), 1, "nothing reached the unknown destination");

    args.extend(["--outbound-policy", "ALLOW_ANY"]);
    let overridden = start_proxy(SERVICE_IN_A, &args).await;
    let (status, body) = curl(overridden.http(), &url);
    assert_eq!(status, 200, "--outbound-policy overrides the mesh config: {body}");
    assert_eq!(upstream.requests(), 2);
}

fn meshentry(args: &[&str]) {
    let out = run(args);
    assert!(out.status.success(), "meshentry {args:?}: {}", text(&out));
}

/// A workload identity from `meshentry ca issue` for `ns`/`sa`.
fn issue(ca: &Path, dir: &Path, ns: &str, sa: &str) -> PathBuf {
    let out = dir.join(sa);
    meshentry(&[
        "ca",
        "issue",
        "--dir",
        &path(ca),
        "--namespace",
        ns,
        "--service-account",
        sa,
        "--out",
        &path(&out),
    ]);
    out
}

/// A TLS server with the identity in `id_dir`, requiring a client certificate of the mesh CA.
fn mesh_server(id_dir: &Path, addr: SocketAddr, name: &str) -> TlsUpstream {
    let provider = meshentry_testutil::crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs("root", &id_dir.join("root-cert.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_certs("chain", &id_dir.join("cert-chain.pem")).unwrap(),
            load_key(&id_dir.join("key.pem")).unwrap(),
        )
        .unwrap();
    TlsUpstream::start(addr, name, Arc::new(config))
}

/// A mesh CA in trust domain `domain`, the proxy's identity (default/sleep) and a server's
/// (a/web) on a loopback address of its own.
struct Mesh {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    identity: Vec<String>,
    server: TlsUpstream,
    ip: Ipv4Addr,
}

fn mesh(domain: &str) -> Mesh {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ca = dir.join("ca");
    meshentry(&["ca", "init", "--dir", &path(&ca), "--trust-domain", domain]);
    let me = issue(&ca, &dir, "default", "sleep");
    let web = issue(&ca, &dir, "a", "web");
    let ip = unique_loopback();
    let server = mesh_server(&web, SocketAddr::new(ip.into(), 80), "web");
    let identity = vec![
        "--cert".to_string(),
        path(&me.join("cert-chain.pem")),
        "--key".into(),
        path(&me.join("key.pem")),
        "--ca".into(),
        path(&me.join("root-cert.pem")),
    ];
    Mesh {
        _tmp: tmp,
        dir,
        identity,
        server,
        ip,
    }
}

#[tokio::test]
async fn trust_domain_decides_the_identity_istio_mutual_expects() {
    let m = mesh("example.org");
    // The endpoint's identity is spiffe://<trust domain>/ns/a/sa/web, from its serviceAccount.
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: web, namespace: a}}\nspec:\n  hosts: [web.mesh.internal]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: {}, serviceAccount: web}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web, namespace: a}}\nspec:\n  host: web.mesh.internal\n  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}\n",
        m.ip
    );
    let mesh_file = write(&m.dir, "mesh.yaml", "trustDomain: example.org\n");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a = m.identity.clone();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    let default = args(&[]);
    let proxy = start_proxy(&yaml, &default).await;
    let (status, body) = curl(proxy.http(), "http://web.mesh.internal/");
    assert_ne!(
        status, 200,
        "cluster.local expects spiffe://cluster.local/ns/a/sa/web: {body}"
    );
    assert!(body.contains("spiffe://cluster.local/ns/a/sa/web"), "{body}");
    assert_eq!(m.server.requests(), 0);

    let with_mesh = args(&["--mesh-config", &mesh_file]);
    let proxy = start_proxy(&yaml, &with_mesh).await;
    let (status, body) = curl(proxy.http(), "http://web.mesh.internal/");
    assert_eq!(status, 200, "{body}");
    assert_eq!(m.server.requests(), 1);

    let flag = args(&["--mesh-config", &mesh_file, "--trust-domain", "cluster.local"]);
    let proxy = start_proxy(&yaml, &flag).await;
    let (status, body) = curl(proxy.http(), "http://web.mesh.internal/");
    assert_ne!(status, 200, "--trust-domain overrides the mesh config: {body}");
    assert_eq!(m.server.requests(), 1);
}

#[tokio::test]
async fn enable_auto_mtls_false_leaves_mesh_traffic_in_plaintext() {
    let m = mesh("cluster.local");
    // A mesh-internal service whose endpoint runs a sidecar: auto mTLS applies without a rule.
    let plain = HttpUpstream::start(SocketAddr::new(unique_loopback().into(), 80), "plain");
    let yaml = |ip: String| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: web, namespace: a}}\nspec:\n  hosts: [web.mesh.internal]\n  location: MESH_INTERNAL\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: {ip}, serviceAccount: web, labels: {{security.istio.io/tlsMode: istio}}}}]\n"
        )
    };
    let id: Vec<&str> = m.identity.iter().map(String::as_str).collect();

    let auto = start_proxy(&yaml(m.ip.to_string()), &id).await;
    let (status, body) = curl(auto.http(), "http://web.mesh.internal/");
    assert_eq!(status, 200, "auto mTLS reaches the mTLS server: {body}");
    assert_eq!(m.server.requests(), 1);

    let off = write(&m.dir, "mesh.yaml", "enableAutoMtls: false\n");
    let mut args = id.clone();
    args.extend(["--mesh-config", off.as_str()]);
    let plain_ip = plain.addr().ip().to_string();
    let proxy = start_proxy(&yaml(plain_ip), &args).await;
    let (status, body) = curl(proxy.http(), "http://web.mesh.internal/");
    assert_eq!(status, 200, "plaintext reaches the plaintext server: {body}");
    assert_eq!(plain.requests(), 1);
    // And the same configuration with auto mTLS on fails against it: TLS to a plaintext port.
    let proxy = start_proxy(&yaml(plain.addr().ip().to_string()), &id).await;
    let (status, _) = curl(proxy.http(), "http://web.mesh.internal/");
    assert_ne!(status, 200);
    assert_eq!(plain.requests(), 1);
}

#[test]
fn iptables_and_ca_take_the_policy_and_trust_domain_from_the_mesh_config() {
    let tmp = tempfile::tempdir().unwrap();
    let mesh = write(
        tmp.path(),
        "istio.yaml",
        &configmap("outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\ntrustDomain: corp.example"),
    );
    // iptables: REGISTRY_ONLY blocks QUIC by default; the flag still wins.
    let quic = "--dport 443 -j MESHENTRY_QUIC";
    let install = |extra: &[&str]| {
        let mut args = vec!["iptables", "install", "--proxy-uid", "1337", "--dry-run"];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    assert!(!install(&[]).contains(quic));
    assert!(install(&["--mesh-config", &mesh]).contains(quic));
    assert!(!install(&["--mesh-config", &mesh, "--outbound-policy", "ALLOW_ANY"]).contains(quic));

    // ca init: the CA's trust domain.
    let ca = |dir: &str, extra: &[&str]| {
        let dir = tmp.path().join(dir);
        let dir_arg = dir.display().to_string();
        let mut args = vec!["ca", "init", "--dir", dir_arg.as_str()];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(out.status.success(), "{}", text(&out));
        std::fs::read_to_string(dir.join("trust-domain")).unwrap()
    };
    assert_eq!(ca("default", &[]), "cluster.local\n");
    assert_eq!(ca("mesh", &["--mesh-config", &mesh]), "corp.example\n");
    assert_eq!(
        ca("flag", &["--mesh-config", &mesh, "--trust-domain", "flag.example"]),
        "flag.example\n"
    );

    // A bad value in the file is an error naming file and field, and nothing is written.
    let bad = write(
        tmp.path(),
        "bad.yaml",
        "trustDomain: \"not a domain\"\noutboundTrafficPolicy: {mode: REGISTRY_ONYL}\n",
    );
    let out = run(&[
        "iptables",
        "install",
        "--proxy-uid",
        "1337",
        "--dry-run",
        "--mesh-config",
        &bad,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("bad.yaml:2:"), "{}", text(&out));
    assert!(text(&out).contains("outboundTrafficPolicy.mode"), "{}", text(&out));
    let dir = tmp.path().join("bad-ca");
    let out = run(&["ca", "init", "--dir", &dir.display().to_string(), "--mesh-config", &bad]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!dir.join("ca-key.pem").exists());
}

/// `registry` shows the addresses meshentry allocates to ServiceEntries without any, marked as
/// its own, and the mesh config's `PILOT_ENABLE_IP_AUTOALLOCATE: "false"` switches that off.
#[test]
fn addresses_are_allocated_unless_the_mesh_config_says_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "se.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mongo, namespace: default}
spec:
  hosts: [mymongodb.somedomain]
  ports: [{number: 27017, name: mongo, protocol: MONGO}]
  resolution: DNS
",
    );
    let services = |out: &Output| -> Vec<serde_json::Value> {
        assert!(out.status.success(), "{}", text(out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["services"].as_array().unwrap().clone()
    };
    let on = services(&run(&["registry", "-o", "json", &config]));
    let allocated: Vec<&str> = on[0]["autoAllocatedAddresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(allocated.len(), 2, "{on:?}");
    assert!(allocated[0].starts_with("240.240."), "{allocated:?}");
    assert!(allocated[1].starts_with("2001:2:0:"), "{allocated:?}");
    assert_eq!(on[0]["autoAllocatedBy"], "meshentry");
    assert_eq!(
        on[0]["addresses"],
        serde_json::json!(["0.0.0.0"]),
        "declared addresses unchanged"
    );
    // The same addresses every run.
    assert_eq!(services(&run(&["registry", "-o", "json", &config])), on);

    let mesh = write(
        dir.path(),
        "mesh.yaml",
        "defaultConfig:\n  proxyMetadata:\n    PILOT_ENABLE_IP_AUTOALLOCATE: \"false\"\n",
    );
    let off = services(&run(&["registry", "-o", "json", "--mesh-config", &mesh, &config]));
    assert!(off[0].get("autoAllocatedAddresses").is_none(), "{off:?}");
    assert!(off[0].get("autoAllocatedBy").is_none(), "{off:?}");
}
