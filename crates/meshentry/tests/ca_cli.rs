//! `meshentry ca init|issue` through the real binary: the identities it issues are SPIFFE ids
//! that a real TLS handshake verifies against the CA, and mistakes are refused with a reason.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use meshentry_proxy::tls::{Mode, Origination, Recipe, Sni, cert_names, load_certs, load_key};
use meshentry_testutil::{TlsUpstream, unique_loopback};

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");

fn meshentry(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = meshentry(args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn issued_identities_verify_against_the_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let wl = tmp.path().join("httpbin");
    ok(&["ca", "init", "--dir", s(&ca), "--trust-domain", "example.org"]);
    let printed = ok(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--namespace",
        "httpbin-ns",
        "--service-account",
        "httpbin",
        "--dns",
        "httpbin.com",
        "--out",
        s(&wl),
    ]);
    let id = "spiffe://example.org/ns/httpbin-ns/sa/httpbin";
    assert!(printed.contains(id), "{printed}");
    use std::os::unix::fs::PermissionsExt;
    for key in [ca.join("ca-key.pem"), wl.join("key.pem")] {
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is readable by others: {mode:o}", key.display());
    }
    let chain = load_certs("cert", &wl.join("cert-chain.pem")).unwrap();
    assert_eq!(cert_names(&chain[0]), [id, "httpbin.com"]);

    // A server with the issued identity passes a check that pins it, against root-cert.pem.
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, load_key(&wl.join("key.pem")).unwrap())
        .unwrap();
    let up = TlsUpstream::start((unique_loopback(), 443).into(), "httpbin", Arc::new(server));
    let recipe = |sans: &[&str]| Recipe {
        mode: Mode::IstioMutual,
        client_cert: Some((wl.join("cert-chain.pem"), wl.join("key.pem"))),
        ca: Some(wl.join("root-cert.pem")),
        subject_alt_names: sans.iter().map(|s| s.to_string()).collect(),
        insecure_skip_verify: false,
        sni: Sni::Fixed("outbound_.80_._.httpbin.com".into()),
        alpn: Vec::new(),
    };
    let handshake = |o: Origination| {
        let addr = up.addr();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = o.server_name(None, addr.ip()).unwrap();
            tokio_rustls::TlsConnector::from(o.config())
                .connect(name, tcp)
                .await
                .map(|_| ())
                .map_err(|e| meshentry_proxy::tls::describe(&e))
        }
    };
    assert_eq!(handshake(Origination::new(recipe(&[id])).unwrap()).await, Ok(()));
    let err = handshake(Origination::new(recipe(&["spiffe://example.org/ns/x/sa/y"])).unwrap())
        .await
        .unwrap_err();
    assert!(err.contains("SAN mismatch"), "{err}");
    assert_eq!(up.last_sni().as_deref(), Some("outbound_.80_._.httpbin.com"));
}

#[test]
fn mistakes_are_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ok(&["ca", "init", "--dir", s(&ca)]);
    let again = meshentry(&["ca", "init", "--dir", s(&ca)]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let bad = meshentry(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--namespace",
        "Bad_NS",
        "--service-account",
        "sa",
        "--out",
        s(&tmp.path().join("x")),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("namespace \"Bad_NS\""));

    let missing = meshentry(&[
        "ca",
        "issue",
        "--dir",
        s(&tmp.path().join("nope")),
        "--namespace",
        "ns",
        "--service-account",
        "sa",
        "--out",
        s(&tmp.path().join("x")),
    ]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope/ca-cert.pem"));
}
