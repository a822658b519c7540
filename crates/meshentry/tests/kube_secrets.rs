//! `credentialName` from Kubernetes Secrets (`proxy --kubernetes --kubernetes-secrets`): a
//! DestinationRule's MUTUAL origination presents the client certificate of the Secret it names,
//! follows the Secret's rotation, and refuses with a reason while the Secret is missing.
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
use meshentry_testutil::pki::server_config;
use meshentry_testutil::raw::RawClient;
use meshentry_testutil::{KubeApi, KubeFront, LeafSpec, Proxy, TestCa, TlsUpstream, eventually, unique_loopback};
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

/// A `kubernetes.io/tls` Secret as the API server returns it (data base64-encoded).
fn secret(name: &str, version: u32, data: &[(&str, &str)]) -> Value {
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
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
    let front = KubeFront::start(
        &kube,
        vec![
            ("/api/v1".into(), CORE_RESOURCES.into()),
            ("/api/v1/namespaces".into(), empty_list("NamespaceList")),
            ("/api/v1/pods".into(), empty_list("PodList")),
            ("/api/v1/services".into(), empty_list("ServiceList")),
            (SECRETS.into(), secret_list(&[client_cred(&leaf1, 90)])),
        ],
    );
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
