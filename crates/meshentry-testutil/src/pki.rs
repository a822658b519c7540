//! A throwaway PKI per test: a CA made with rcgen at run time, leaves it issues, and rustls
//! configurations built from them. No key is ever committed; every run makes new ones.
//!
//! Istio workload certificates carry a SPIFFE id (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`) as a
//! URI SAN, so [`LeafSpec::uri_sans`] exists to mint them for ISTIO_MUTUAL tests, and
//! [`LeafSpec::not_after`] mints expired certificates for rejection tests.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::crypto_provider;

/// A certificate authority that exists for one test run.
pub struct TestCa {
    name: String,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What to put in a leaf certificate. `Default` gives a server certificate with no names, valid
/// from a day ago for a year.
#[derive(Debug, Clone, Default)]
pub struct LeafSpec {
    /// DNS SANs, e.g. `api.example.com` or `*.example.com`.
    pub dns_names: Vec<String>,
    /// IP SANs, for upstreams addressed by IP.
    pub ip_sans: Vec<IpAddr>,
    /// URI SANs, typically SPIFFE ids (`spiffe://cluster.local/ns/default/sa/app`).
    pub uri_sans: Vec<String>,
    /// Adds the clientAuth extended key usage (the leaf always has serverAuth), so the leaf can
    /// be presented as a client certificate in mutual TLS.
    pub client_auth: bool,
    /// The end of validity; set it in the past for an expired certificate (validity then starts
    /// a day before it). `None`: a year from now.
    pub not_after: Option<SystemTime>,
}

impl LeafSpec {
    /// A server certificate for the given DNS names.
    pub fn server<S: Into<String>>(dns_names: impl IntoIterator<Item = S>) -> Self {
        Self {
            dns_names: dns_names.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// A client (workload) certificate carrying `spiffe_id` as its URI SAN.
    pub fn client(spiffe_id: impl Into<String>) -> Self {
        Self {
            uri_sans: vec![spiffe_id.into()],
            client_auth: true,
            ..Self::default()
        }
    }
}

/// A certificate issued by a [`TestCa`] and its private key, in PEM and DER.
#[derive(Debug)]
pub struct Leaf {
    /// The certificate alone (not the chain: the CA is the direct issuer).
    pub cert_pem: String,
    /// The private key as PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate as DER.
    pub cert_der: CertificateDer<'static>,
    /// The private key as PKCS#8 DER.
    pub key_der: PrivateKeyDer<'static>,
}

impl Clone for Leaf {
    fn clone(&self) -> Self {
        Self {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            cert_der: self.cert_der.clone(),
            key_der: self.key_der.clone_key(),
        }
    }
}

fn new_key() -> KeyPair {
    KeyPair::generate().expect("rcgen: generating an ECDSA P-256 key cannot fail with ring")
}

impl TestCa {
    /// A new self-signed CA whose subject common name is `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "meshentry tests");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(86_400)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 86_400)).into();
        let key = new_key();
        let cert = params
            .self_signed(&key)
            .expect("rcgen: self-signing a CA with valid params");
        Self {
            name: name.to_owned(),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's common name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate in PEM, for trust stores and `curl --cacert`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A root store that trusts only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert_der.clone())
            .expect("a CA certificate rcgen made parses as a trust anchor");
        roots
    }

    /// Issues a leaf certificate signed by this CA.
    ///
    /// Panics if a name is not a valid IA5 string (non-ASCII), which is a bug in the test.
    pub fn issue(&self, spec: LeafSpec) -> Leaf {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let cn = spec
            .dns_names
            .first()
            .cloned()
            .or_else(|| spec.uri_sans.first().cloned())
            .or_else(|| spec.ip_sans.first().map(IpAddr::to_string))
            .unwrap_or_else(|| "meshentry test leaf".to_owned());
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        for name in &spec.dns_names {
            let ia5 = name.clone().try_into().expect("DNS SAN must be ASCII");
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        for ip in &spec.ip_sans {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        for uri in &spec.uri_sans {
            let ia5 = uri.clone().try_into().expect("URI SAN must be ASCII");
            params.subject_alt_names.push(SanType::URI(ia5));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if spec.client_auth {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        let day = Duration::from_secs(86_400);
        let not_after = spec.not_after.unwrap_or_else(|| SystemTime::now() + 365 * day);
        params.not_after = not_after.into();
        params.not_before = (not_after.min(SystemTime::now()) - day).into();

        let key = new_key();
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("rcgen: signing a leaf with valid params");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// A temporary directory holding PEM files, for tests that pass certificates to the proxy's CLI.
/// The directory and its files are deleted on drop.
#[derive(Debug)]
pub struct PemDir {
    dir: tempfile::TempDir,
}

/// Where [`PemDir::leaf`] wrote a leaf.
#[derive(Debug, Clone)]
pub struct LeafPaths {
    /// `<name>.crt`: the certificate in PEM.
    pub cert: PathBuf,
    /// `<name>.key`: the PKCS#8 private key in PEM.
    pub key: PathBuf,
}

impl PemDir {
    /// Creates an empty temporary directory.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("meshentry-pki-")
            .tempdir()
            .expect("creating a temporary directory for PEM files");
        Self { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `name` in the directory and returns the path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// Writes the CA certificate to `<ca name>.crt` (spaces become `-`) and returns the path.
    pub fn ca(&self, ca: &TestCa) -> PathBuf {
        let file = format!("{}.crt", ca.name().replace(|c: char| !c.is_ascii_alphanumeric(), "-"));
        self.write(&file, ca.cert_pem())
    }

    /// Writes the leaf to `<name>.crt` and `<name>.key` and returns both paths.
    pub fn leaf(&self, leaf: &Leaf, name: &str) -> LeafPaths {
        LeafPaths {
            cert: self.write(&format!("{name}.crt"), &leaf.cert_pem),
            key: self.write(&format!("{name}.key"), &leaf.key_pem),
        }
    }
}

impl Default for PemDir {
    fn default() -> Self {
        Self::new()
    }
}

/// A rustls server configuration presenting `leaf`. With `require_client_ca`, the server
/// requires a client certificate issued by that CA (mutual TLS); otherwise it asks for none.
///
/// No ALPN protocols are set; clone the config and set `alpn_protocols` to test ALPN.
pub fn server_config(leaf: &Leaf, require_client_ca: Option<&TestCa>) -> Arc<ServerConfig> {
    let provider = crypto_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions");
    let builder = match require_client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(ca.root_store()), provider)
                .build()
                .expect("a client verifier with one root builds");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(vec![leaf.cert_der.clone()], leaf.key_der.clone_key())
        .expect("the leaf's key matches its certificate");
    Arc::new(config)
}

/// A rustls client configuration that trusts only `trust` and, with `client_cert`, presents that
/// leaf for mutual TLS.
pub fn client_config(trust: &TestCa, client_cert: Option<&Leaf>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(trust.root_store());
    let config = match client_cert {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.cert_der.clone()], leaf.key_der.clone_key())
            .expect("the leaf's key matches its certificate"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn pem_and_der_agree_and_files_are_written() {
        let ca = TestCa::new("test ca");
        let leaf = ca.issue(LeafSpec::server(["a.example.com"]));
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("cert pem");
        assert_eq!(der, leaf.cert_der);
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key pem");
        assert_eq!(key.secret_der(), leaf.key_der.secret_der());
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).expect("ca pem");
        assert_eq!(&ca_der, ca.cert_der());

        let dir = PemDir::new();
        let paths = dir.leaf(&leaf, "server");
        let ca_path = dir.ca(&ca);
        assert_eq!(std::fs::read_to_string(paths.cert).expect("read"), leaf.cert_pem);
        assert_eq!(std::fs::read_to_string(paths.key).expect("read"), leaf.key_pem);
        assert!(ca_path.ends_with("test-ca.crt"));
    }

    #[test]
    fn configs_build_for_every_kind_of_leaf() {
        let ca = TestCa::new("ca");
        let server = ca.issue(LeafSpec {
            dns_names: vec!["*.example.com".into()],
            ip_sans: vec!["127.0.0.1".parse().expect("ip")],
            ..LeafSpec::default()
        });
        let client = ca.issue(LeafSpec::client("spiffe://cluster.local/ns/default/sa/app"));
        server_config(&server, Some(&ca));
        server_config(&server, None);
        client_config(&ca, Some(&client));
        client_config(&ca, None);
    }
}
