//! `meshentry ca init|issue` through the real binary: the identities it issues are SPIFFE ids
//! that a real TLS handshake verifies against the CA, and mistakes are refused with a reason.
//!
//! What the certificates say is judged by openssl (`verify`, `x509`, `s_client`), not only by
//! meshentry's own parsing and verification, which is the code under test.

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

/// Runs openssl, the independent judge of what `meshentry ca` wrote: its output (stdout and
/// stderr) and whether it succeeded.
fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): apt-get install openssl (scripts/test does this)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// openssl `args`, which must succeed: its output.
fn openssl_ok(args: &[&str]) -> String {
    let (ok, text) = openssl(args);
    assert!(ok, "openssl {args:?}: {text}");
    text
}

/// What openssl says about the CA and the workload identity issued in `wl` for `id` and
/// `httpbin.com`: signed by the root, usable by servers and clients, naming exactly those
/// names, with a key that belongs to it; the root a CA. And a root of another CA does not
/// verify it, so the verification is not vacuous.
fn openssl_judges(ca: &Path, wl: &Path, other_root: &Path, id: &str) {
    let (chain, root) = (wl.join("cert-chain.pem"), wl.join("root-cert.pem"));
    let (chain, root) = (s(&chain), s(&root));
    assert_eq!(
        std::fs::read(wl.join("root-cert.pem")).unwrap(),
        std::fs::read(ca.join("ca-cert.pem")).unwrap(),
        "the workload's root is the CA's certificate"
    );
    for purpose in ["sslserver", "sslclient"] {
        let out = openssl_ok(&[
            "verify",
            "-x509_strict",
            "-CAfile",
            root,
            "-purpose",
            purpose,
            "-verify_hostname",
            "httpbin.com",
            chain,
        ]);
        assert!(out.contains(": OK"), "{purpose}: {out}");
    }
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        root,
        "-verify_hostname",
        "other.example.com",
        chain,
    ]);
    assert!(!ok && out.contains("hostname mismatch"), "{out}");
    let (ok, out) = openssl(&["verify", "-CAfile", s(other_root), chain]);
    assert!(!ok, "verified against another CA: {out}");

    let sans = openssl_ok(&["x509", "-in", chain, "-noout", "-ext", "subjectAltName"]);
    assert_eq!(
        sans.lines().nth(1).map(str::trim),
        Some(format!("URI:{id}, DNS:httpbin.com").as_str()),
        "{sans}"
    );
    let usage = openssl_ok(&["x509", "-in", chain, "-noout", "-ext", "extendedKeyUsage"]);
    assert!(
        usage.contains("TLS Web Server Authentication") && usage.contains("TLS Web Client Authentication"),
        "an mTLS identity serves and connects: {usage}"
    );
    let cert_key = openssl_ok(&["x509", "-in", chain, "-noout", "-pubkey"]);
    let key = openssl_ok(&["pkey", "-in", s(&wl.join("key.pem")), "-pubout"]);
    assert_eq!(cert_key, key, "key.pem is the certificate's key");

    let constraints = openssl_ok(&["x509", "-in", root, "-noout", "-ext", "basicConstraints,keyUsage"]);
    assert!(
        constraints.contains("CA:TRUE") && constraints.contains("Certificate Sign"),
        "the root is a CA: {constraints}"
    );
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
    // `-n`, as kubectl and istioctl spell the namespace: the same identity.
    let short = tmp.path().join("short");
    let printed = ok(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "-n",
        "httpbin-ns",
        "--service-account",
        "httpbin",
        "--out",
        s(&short),
    ]);
    assert!(printed.contains(id), "{printed}");
    let other = tmp.path().join("other-ca");
    ok(&["ca", "init", "--dir", s(&other)]);
    openssl_judges(&ca, &wl, &other.join("ca-cert.pem"), id);
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
    // openssl's own handshake: the server presents the issued chain, which verifies for
    // httpbin.com against root-cert.pem.
    let connect = up.addr().to_string();
    let root = wl.join("root-cert.pem");
    let (ok, out) = tokio::task::spawn_blocking(move || {
        openssl(&[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "httpbin.com",
            "-verify_hostname",
            "httpbin.com",
            "-CAfile",
            s(&root),
            "-verify_return_error",
            "-brief",
        ])
    })
    .await
    .unwrap();
    assert!(ok && out.contains("Verification: OK"), "{out}");
    let recipe = |sans: &[&str]| Recipe {
        source: "DestinationRule default/ca-test".into(),
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
