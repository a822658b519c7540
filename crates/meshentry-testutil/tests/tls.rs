//! The test PKI and TlsUpstream work with real TLS clients: tokio-rustls and curl.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use meshentry_testutil::pki::{client_config, server_config};
use meshentry_testutil::{LeafSpec, PemDir, TestCa, TlsEcho, TlsUpstream, unique_loopback};
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

async fn tls_connect(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).expect("valid server name");
    TlsConnector::from(config).connect(name, tcp).await
}

/// The certificate verification error inside a failed tokio-rustls connect.
fn cert_error(err: &std::io::Error) -> Option<CertificateError> {
    match err.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(e) => Some(e.clone()),
        _ => None,
    }
}

async fn get_json(tls: TlsStream<TcpStream>, host: &str) -> hyper::Result<(u16, Value)> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = Request::get("/tls")
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body).expect("json body")))
}

#[tokio::test]
async fn tls_upstream_records_sni_and_serves_http() {
    let ip = unique_loopback();
    let ca = TestCa::new("tls test ca");
    let leaf = ca.issue(LeafSpec::server(["api.example.com", "*.example.org"]));
    let up = TlsUpstream::start((ip, 443).into(), "secure", server_config(&leaf, None));

    let tls = tls_connect(up.addr(), "api.example.com", client_config(&ca, None))
        .await
        .expect("handshake");
    let (status, json) = get_json(tls, "api.example.com").await.expect("request");
    assert_eq!(status, 200);
    assert_eq!(json["upstream"], "secure");
    assert_eq!(json["tls"]["sni"], "api.example.com");
    assert_eq!(json["tls"]["client_cert"], false);
    assert_eq!(up.last_sni().as_deref(), Some("api.example.com"));

    // A wildcard SAN.
    let tls = tls_connect(up.addr(), "x.example.org", client_config(&ca, None))
        .await
        .expect("wildcard handshake");
    drop(tls);
    // In TLS 1.3 the client is done before the server has processed its Finished message.
    meshentry_testutil::eventually(Duration::from_secs(5), || async { up.handshakes().len() == 2 }).await;
    assert_eq!(up.last_sni().as_deref(), Some("x.example.org"));
}

#[tokio::test]
async fn an_unknown_name_or_an_untrusted_ca_fails_verification() {
    let ip = unique_loopback();
    let ca = TestCa::new("ca");
    let other = TestCa::new("other ca");
    let leaf = ca.issue(LeafSpec::server(["api.example.com"]));
    let up = TlsUpstream::start((ip, 443).into(), "s", server_config(&leaf, None));
    let err = tls_connect(up.addr(), "wrong.example.com", client_config(&ca, None))
        .await
        .expect_err("name mismatch");
    assert!(
        matches!(
            cert_error(&err),
            Some(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })
        ),
        "{err}"
    );
    let err = tls_connect(up.addr(), "api.example.com", client_config(&other, None))
        .await
        .expect_err("untrusted issuer");
    assert!(
        matches!(cert_error(&err), Some(CertificateError::UnknownIssuer)),
        "{err}"
    );
}

#[tokio::test]
async fn an_expired_leaf_is_rejected() {
    let ip = unique_loopback();
    let ca = TestCa::new("ca");
    let expired = ca.issue(LeafSpec {
        dns_names: vec!["old.example.com".into()],
        not_after: Some(SystemTime::now() - Duration::from_secs(3600)),
        ..LeafSpec::default()
    });
    let up = TlsUpstream::start((ip, 443).into(), "s", server_config(&expired, None));
    let err = tls_connect(up.addr(), "old.example.com", client_config(&ca, None))
        .await
        .expect_err("expired");
    assert!(
        matches!(
            cert_error(&err),
            Some(CertificateError::Expired | CertificateError::ExpiredContext { .. })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_ca() {
    let ip = unique_loopback();
    let ca = TestCa::new("mesh ca");
    let leaf = ca.issue(LeafSpec::server(["reviews.default.svc"]));
    let up = TlsUpstream::start((ip, 443).into(), "mtls", server_config(&leaf, Some(&ca)));

    // Without a certificate: in TLS 1.3 the client finishes first, so the rejection surfaces on
    // the first exchange rather than in connect().
    let outcome = match tls_connect(up.addr(), "reviews.default.svc", client_config(&ca, None)).await {
        Err(e) => Err(e.to_string()),
        Ok(tls) => get_json(tls, "reviews").await.map_err(|e| e.to_string()),
    };
    assert!(outcome.is_err(), "a request without a client cert must fail");
    meshentry_testutil::eventually(Duration::from_secs(5), || async {
        up.handshake_failures()
            .iter()
            .any(|e| e.contains("no certificates") || e.contains("NoCertificatesPresented"))
            .then_some(())
            .ok_or_else(|| up.handshake_failures())
    })
    .await;
    assert_eq!(up.requests(), 0);

    let client = ca.issue(LeafSpec::client("spiffe://cluster.local/ns/default/sa/productpage"));
    let tls = tls_connect(up.addr(), "reviews.default.svc", client_config(&ca, Some(&client)))
        .await
        .expect("mTLS handshake");
    let (status, json) = get_json(tls, "reviews").await.expect("request");
    assert_eq!(status, 200);
    assert_eq!(json["tls"]["client_cert"], true);
    assert_eq!(
        json["tls"]["client_names"],
        serde_json::json!(["spiffe://cluster.local/ns/default/sa/productpage"])
    );
    let last = up.handshakes().last().expect("handshake").clone();
    assert!(last.client_cert);
    assert_eq!(last.client_names, ["spiffe://cluster.local/ns/default/sa/productpage"]);
}

#[tokio::test]
async fn tls_echo_terminates_mutual_tls_and_echoes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ip = unique_loopback();
    let ca = TestCa::new("db ca");
    let leaf = ca.issue(LeafSpec::server(["db.example.com"]));
    let echo = TlsEcho::start((ip, 27017).into(), server_config(&leaf, Some(&ca)));

    let client = ca.issue(LeafSpec::client("spiffe://cluster.local/ns/default/sa/app"));
    let mut tls = tls_connect(echo.addr(), "db.example.com", client_config(&ca, Some(&client)))
        .await
        .expect("mTLS handshake");
    tls.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    tls.read_exact(&mut back).await.expect("echo");
    assert_eq!(&back, b"ping");
    let seen = echo.handshakes();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].sni.as_deref(), Some("db.example.com"));
    assert_eq!(seen[0].client_names, ["spiffe://cluster.local/ns/default/sa/app"]);
    assert_eq!(echo.bytes_received(), 4);

    // Without a client certificate the server refuses, and says why.
    let outcome = match tls_connect(echo.addr(), "db.example.com", client_config(&ca, None)).await {
        Err(e) => Err(e.to_string()),
        Ok(mut tls) => {
            let _ = tls.write_all(b"ping").await;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())
        }
    };
    assert!(outcome.is_err(), "{outcome:?}");
    meshentry_testutil::eventually(Duration::from_secs(5), || async {
        echo.handshake_failures().len() == 1
    })
    .await;
    assert_eq!(echo.connections(), 2);
    assert_eq!(echo.handshakes().len(), 1);
}

#[tokio::test]
async fn alpn_h2_is_served_as_http2() {
    let ip = unique_loopback();
    let ca = TestCa::new("ca");
    let leaf = ca.issue(LeafSpec::server(["h2.example.com"]));
    let mut config = (*server_config(&leaf, None)).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let up = TlsUpstream::start((ip, 443).into(), "h2", Arc::new(config));

    let mut client = (*client_config(&ca, None)).clone();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tls_connect(up.addr(), "h2.example.com", Arc::new(client))
        .await
        .expect("handshake");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get("https://h2.example.com/two")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let json: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["version"], "HTTP/2.0");
    assert_eq!(json["host"], "h2.example.com");
    assert_eq!(json["tls"]["alpn"], "h2");
}

#[tokio::test]
async fn curl_verifies_the_upstream_with_the_ca_file() {
    let ip = unique_loopback();
    let ca = TestCa::new("curl ca");
    let leaf = ca.issue(LeafSpec::server(["curl.example.com"]));
    let client = ca.issue(LeafSpec::client("spiffe://cluster.local/ns/default/sa/curl"));
    let up = TlsUpstream::start((ip, 443).into(), "curl-tls", server_config(&leaf, Some(&ca)));
    let pem = PemDir::new();
    let ca_path = pem.ca(&ca);
    let client_paths = pem.leaf(&client, "client");
    // Isolated from ~/.curlrc and the proxy variables: only the URL decides where it goes.
    let out = tokio::process::Command::from(meshentry_testutil::curl_command())
        .arg("-sS")
        .args(["--noproxy", "*"])
        .args(["--resolve", &format!("curl.example.com:443:{ip}")])
        .arg("--cacert")
        .arg(&ca_path)
        .arg("--cert")
        .arg(&client_paths.cert)
        .arg("--key")
        .arg(&client_paths.key)
        .arg("https://curl.example.com/c")
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run curl ({e}): apt-get install curl (scripts/test does this)"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).expect("json body");
    assert_eq!(json["upstream"], "curl-tls");
    assert_eq!(json["tls"]["sni"], "curl.example.com");
    assert_eq!(json["tls"]["client_cert"], true);
    assert_eq!(up.requests(), 1);
}
