//! `credentialName` from Kubernetes Secrets (`proxy --kubernetes --kubernetes-secrets`): a
//! DestinationRule's MUTUAL origination presents the client certificate of the Secret it names,
//! follows the Secret's rotation, and refuses with a reason while the Secret is missing; a
//! Gateway's HTTPS server presents its Secret's certificate and rotates it.
//!
//! The Istio objects live in a real API server (apiextensions-apiserver over etcd;
//! `scripts/k8s-apiserver`). That server serves no core resources, so Secrets (and the empty
//! Namespace, Pod and Service lists the proxy also reads) come from recorded responses in the
//! real API server's format, served by [`KubeFront`], which forwards everything else to the real
//! server. Watch events on Secrets are pushed by the test as the API server would send them.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meshentry_testutil::pki::{client_config, server_config};
use meshentry_testutil::raw::RawClient;
use meshentry_testutil::{
    HttpUpstream, KubeApi, KubeFront, LeafSpec, Proxy, TestCa, TlsUpstream, eventually, unique_loopback,
};
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");
const SECRETS: &str = "/api/v1/namespaces/default/secrets";

/// `/api/v1` as a real kube-apiserver (v1.3x) answers it, cut to the resources the proxy reads.
const CORE_RESOURCES: &str = r#"{"kind":"APIResourceList","groupVersion":"v1","resources":[
{"name":"namespaces","singularName":"namespace","namespaced":false,"kind":"Namespace","verbs":["create","delete","get","list","patch","update","watch"],"shortNames":["ns"],"storageVersionHash":"Q3oi5N2YM8M="},
{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["create","delete","deletecollection","get","list","patch","update","watch"],"shortNames":["po"],"categories":["all"],"storageVersionHash":"xPOwRZ+Yhw8="},
{"name":"secrets","singularName":"secret","namespaced":true,"kind":"Secret","verbs":["create","delete","deletecollection","get","list","patch","update","watch"],"storageVersionHash":"S6u1pOWzb84="},
{"name":"services","singularName":"service","namespaced":true,"kind":"Service","verbs":["create","delete","deletecollection","get","list","patch","update","watch"],"shortNames":["svc"],"categories":["all"],"storageVersionHash":"0/CO1lhkEBI="}]}"#;

fn empty_list(kind: &str) -> String {
    json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "100"}, "items": []}).to_string()
}

/// A `kubernetes.io/tls` Secret of `default` as the API server returns it (data
/// base64-encoded).
fn secret(name: &str, version: u32, data: &[(&str, &str)]) -> Value {
    secret_in("default", name, version, data)
}

fn secret_in(namespace: &str, name: &str, version: u32, data: &[(&str, &str)]) -> Value {
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            resource_version: Some(version.to_string()),
            uid: Some(format!("00000000-0000-0000-0000-{version:012}")),
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_string(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        type_: Some("kubernetes.io/tls".into()),
        ..Secret::default()
    };
    let mut v = serde_json::to_value(s).unwrap();
    v["kind"] = "Secret".into();
    v["apiVersion"] = "v1".into();
    v
}

/// A front for `kube` answering the core kinds the proxy reads: no Namespaces, Pods or
/// Services, and at `secrets` (a namespace's Secrets path) the list `list`.
fn front(kube: &KubeApi, secrets: &str, list: String) -> KubeFront {
    KubeFront::start(
        kube,
        vec![
            ("/api/v1".into(), CORE_RESOURCES.into()),
            ("/api/v1/namespaces".into(), empty_list("NamespaceList")),
            ("/api/v1/pods".into(), empty_list("PodList")),
            ("/api/v1/services".into(), empty_list("ServiceList")),
            (secrets.into(), list),
        ],
    )
}

fn secret_list(items: &[Value]) -> String {
    // A list's items carry no kind or apiVersion.
    let items: Vec<Value> = items
        .iter()
        .map(|i| {
            let mut i = i.clone();
            let o = i.as_object_mut().unwrap();
            o.remove("kind");
            o.remove("apiVersion");
            i
        })
        .collect();
    json!({"kind": "SecretList", "apiVersion": "v1", "metadata": {"resourceVersion": "100"}, "items": items})
        .to_string()
}

/// A ServiceEntry for `host` on port 80 to `ep`:443 and a DestinationRule originating MUTUAL
/// TLS with the Secret `credential`.
fn config(host: &str, ep: Ipv4Addr, credential: &str) -> String {
    let name = host.replace('.', "-");
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 443}}]
  resolution: STATIC
  endpoints: [{{address: {ep}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: {host}
  trafficPolicy:
    tls: {{mode: MUTUAL, credentialName: {credential}}}
"
    )
}

/// `GET http://HOST/` through the proxy: the status and the body.
async fn get(proxy: SocketAddr, host: &str) -> (u16, String) {
    let mut c = RawClient::connect(proxy).await.unwrap();
    c.send(format!("GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let r = c.read_response("GET", Duration::from_secs(10)).await.unwrap();
    (r.status, r.text())
}

/// The client identity the upstream saw, from its JSON echo.
fn client_names(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["tls"]["client_names"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_name_presents_the_secrets_certificate_and_follows_its_rotation() {
    let ca = TestCa::new("db CA");
    let ep = unique_loopback();
    let server = ca.issue(LeafSpec::server(["mtls.example.com", "late.example.com"]));
    let up = TlsUpstream::start(
        SocketAddr::new(IpAddr::V4(ep), 443),
        "mtls",
        server_config(&server, Some(&ca)),
    );
    let (one, two) = (
        "spiffe://cluster.local/ns/default/sa/one",
        "spiffe://cluster.local/ns/default/sa/two",
    );
    let (leaf1, leaf2) = (ca.issue(LeafSpec::client(one)), ca.issue(LeafSpec::client(two)));
    let client_cred = |leaf: &meshentry_testutil::pki::Leaf, version| {
        secret(
            "client-cred",
            version,
            &[
                ("tls.crt", &leaf.cert_pem),
                ("tls.key", &leaf.key_pem),
                ("ca.crt", ca.cert_pem()),
            ],
        )
    };

    let kube = tokio::task::spawn_blocking(KubeApi::start).await.unwrap();
    kube.apply_yaml(&config("mtls.example.com", ep, "client-cred"), None);
    kube.apply_yaml(&config("late.example.com", ep, "late-cred"), None);
    let front = front(&kube, SECRETS, secret_list(&[client_cred(&leaf1, 90)]));
    let proxy = Proxy::builder(BIN)
        .no_config_dir()
        .args(["--kubernetes", "--kubernetes-secrets", "--kubeconfig"])
        .arg(front.kubeconfig())
        .start()
        .await;
    let at = proxy.http();

    let (status, body) = get(at, "mtls.example.com").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(client_names(&body), json!([one]));
    assert_eq!(up.requests(), 1);

    // The missing secret: refused, naming what is missing; nothing sent.
    let (status, body) = get(at, "late.example.com").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("meshentry-secrets-") && body.contains("/late-cred/") && body.contains("No such file"),
        "{body}"
    );
    assert_eq!(up.requests(), 1);

    // Rotation, as a watch event.
    eventually(Duration::from_secs(10), || async {
        (front.watching(SECRETS) > 0).then_some(())
    })
    .await;
    let event = json!({"type": "MODIFIED", "object": client_cred(&leaf2, 101)});
    assert_eq!(front.push(SECRETS, &event.to_string()), 1);
    eventually(Duration::from_secs(10), || async {
        let (status, body) = get(at, "mtls.example.com").await;
        (status == 200 && client_names(&body) == json!([two]))
            .then_some(())
            .ok_or_else(|| format!("{status} {body}"))
    })
    .await;

    // The missing secret appears.
    let late = secret(
        "late-cred",
        102,
        &[
            ("tls.crt", &leaf1.cert_pem),
            ("tls.key", &leaf1.key_pem),
            ("ca.crt", ca.cert_pem()),
        ],
    );
    front.push(SECRETS, &json!({"type": "ADDED", "object": late}).to_string());
    eventually(Duration::from_secs(10), || async {
        let (status, body) = get(at, "late.example.com").await;
        (status == 200 && client_names(&body) == json!([one]))
            .then_some(())
            .ok_or_else(|| format!("{status} {body}"))
    })
    .await;

    // Keys never reach the configuration: nothing of a secret is on /config_dump.
    let dump = proxy.config_dump().await.to_string();
    assert!(!dump.contains("PRIVATE KEY"), "a key is on /config_dump");
    assert!(!proxy.process.output().contains("PRIVATE KEY"), "a key is in the log");
}

/// `GET /` over TLS (SNI and `Host` `web.example.com`) to the gateway at `at`, trusting `ca`:
/// the certificate it presented and the response status.
async fn https_get(at: SocketAddr, ca: &TestCa) -> (CertificateDer<'static>, u16) {
    let tcp = tokio::net::TcpStream::connect(at).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(ca, None));
    let name = rustls::pki_types::ServerName::try_from("web.example.com").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
    let mut c = RawClient::new(tls);
    c.send(b"GET / HTTP/1.1\r\nHost: web.example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let status = c.read_response("GET", Duration::from_secs(10)).await.unwrap().status;
    (cert, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_server_presents_its_secrets_certificate_and_rotates_it() {
    let ca = TestCa::new("gateway CA");
    let (first, second) = (
        ca.issue(LeafSpec::server(["web.example.com"])),
        ca.issue(LeafSpec::server(["web.example.com"])),
    );
    let own = unique_loopback();
    let port = meshentry_testutil::free_port(own);
    let up = HttpUpstream::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 8080), "web");
    let kube = tokio::task::spawn_blocking(KubeApi::start).await.unwrap();
    kube.apply_yaml(
        &format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: gw}}
  servers:
  - port: {{number: {port}, name: https, protocol: HTTPS}}
    hosts: [web.example.com]
    tls: {{mode: SIMPLE, credentialName: web-cert}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: istio-system}}
spec:
  hosts: [web.example.com]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: web.example.com}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: istio-system}}
spec:
  hosts: [web.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {target}}}]
  resolution: STATIC
  endpoints: [{{address: {ip}}}]
",
            ip = up.addr().ip(),
            target = up.addr().port()
        ),
        None,
    );
    const GW_SECRETS: &str = "/api/v1/namespaces/istio-system/secrets";
    let web_cert = |leaf: &meshentry_testutil::pki::Leaf, version| {
        secret_in(
            "istio-system",
            "web-cert",
            version,
            &[("tls.crt", &leaf.cert_pem), ("tls.key", &leaf.key_pem)],
        )
    };
    let front = front(&kube, GW_SECRETS, secret_list(&[web_cert(&first, 90)]));
    let _proxy = Proxy::builder(BIN)
        .ip(own)
        .no_config_dir()
        .args(["--kubernetes", "--kubernetes-secrets", "--kubeconfig"])
        .arg(front.kubeconfig())
        .args(["--gateway", "istio-system/gw", "--labels", "istio=gw", "--gateway-bind"])
        .arg(own.to_string())
        .start()
        .await;
    let at = SocketAddr::new(IpAddr::V4(own), port);
    let (cert, status) = https_get(at, &ca).await;
    assert_eq!(status, 200);
    assert_eq!(cert, first.cert_der, "the Secret's certificate");
    assert_eq!(up.requests(), 1);

    eventually(Duration::from_secs(10), || async {
        (front.watching(GW_SECRETS) > 0).then_some(())
    })
    .await;
    let event = json!({"type": "MODIFIED", "object": web_cert(&second, 101)});
    assert_eq!(front.push(GW_SECRETS, &event.to_string()), 1);
    eventually(Duration::from_secs(10), || async {
        let (cert, status) = https_get(at, &ca).await;
        (status == 200 && cert == second.cert_der)
            .then_some(())
            .ok_or("still the first certificate")
    })
    .await;
}
