//! Originating TLS to upstreams: the rustls configuration built from a cluster's
//! [`Recipe`] (D6-D8), reloaded when its files change.
//! Connections already open keep the configuration they started with.
//!
//! Verification is stricter than Istio's by default. Istio's SIMPLE and MUTUAL check the server
//! certificate only when `caCertificates` or `subjectAltNames` are set; here the chain is always
//! checked (against `caCertificates`, else the system roots) and so is the name (the rule's
//! `subjectAltNames`, else the ServiceEntry's, else the SNI or host name), unless
//! `insecureSkipVerify: true` turns every check off, which is logged.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

pub use meshentry_route::model::tls::{Mode, Recipe, Sni};

/// A cluster's TLS origination, reloadable.
#[derive(Debug)]
pub struct Origination {
    pub recipe: Recipe,
    /// With SNI, and without (D7: TCP with an automatic SNI sends none).
    config: Rebuilt<(Arc<ClientConfig>, Arc<ClientConfig>)>,
}

/// A configuration built from files, swapped whole when they change: new connections take the
/// one in force with one lock-free load; open ones keep theirs.
pub(crate) struct Rebuilt<C> {
    current: ArcSwap<C>,
    /// The files as they were when `current` was built.
    watch: FileWatch,
}

impl<C> fmt::Debug for Rebuilt<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rebuilt")
    }
}

impl<C> Rebuilt<C> {
    pub(crate) fn new<E>(paths: Vec<PathBuf>, build: impl FnOnce() -> Result<Arc<C>, E>) -> Result<Self, E> {
        let watch = FileWatch::new(paths);
        Ok(Rebuilt {
            current: ArcSwap::new(build()?),
            watch,
        })
    }

    pub(crate) fn load_full(&self) -> Arc<C> {
        self.current.load_full()
    }

    /// Rebuilds when one of the files changed since the last build (a stat of each; they are
    /// read only then). On an error the configuration in force stays, and the error is not
    /// retried until a file changes again. `Ok(true)`: rebuilt.
    pub(crate) fn reload_if_changed<E>(&self, build: impl FnOnce() -> Result<Arc<C>, E>) -> Result<bool, E> {
        if !self.watch.changed() {
            return Ok(false);
        }
        self.current.store(build()?);
        Ok(true)
    }
}

/// TLS origination with no name to verify the server's certificate against.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error(
    "TLS origination has no server name to verify: {} is not a valid DNS name (set sni or subjectAltNames in the DestinationRule)",
    host.as_deref().map_or("the request names no host, which".to_string(), |h| format!("{h:?}"))
)]
pub struct Unverifiable {
    pub host: Option<String>,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {reason}", path.display())]
pub struct ConfigError {
    pub what: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

impl Origination {
    pub fn new(recipe: Recipe) -> Result<Origination, ConfigError> {
        let config = Rebuilt::new(files(&recipe), || build_pair(&recipe).map(Arc::new))?;
        Ok(Origination { recipe, config })
    }

    /// The configuration for new connections (with SNI).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.load_full().0.clone()
    }

    /// The configuration for new connections that send `sni` or not.
    pub fn config_for(&self, sni: bool) -> Arc<ClientConfig> {
        let pair = self.config.load_full();
        if sni { pair.0.clone() } else { pair.1.clone() }
    }

    /// Rebuilds the configuration when one of its files changed since it was built. On a
    /// broken file the previous configuration stays in force and the error is returned.
    /// `Ok(true)`: reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, ConfigError> {
        self.config.reload_if_changed(|| build_pair(&self.recipe).map(Arc::new))
    }

    /// The server name to send and to verify: the fixed SNI, else `host` (the request's Host,
    /// or the service's host for TCP) when it is a valid DNS name or an IP address.
    ///
    /// Without such a name there is nothing the certificate can be checked against, and the
    /// endpoint's own address was never promised to anyone: the connection is refused (fail
    /// closed), unless the rule pins `subjectAltNames` (checked whatever the name) or skips
    /// verification. Then `fallback` (the endpoint's address) stands in, and no SNI is sent.
    pub fn server_name(
        &self,
        host: Option<&str>,
        fallback: std::net::IpAddr,
    ) -> Result<ServerName<'static>, Unverifiable> {
        let name = match &self.recipe.sni {
            Sni::Fixed(s) => Some(s.as_str()),
            Sni::Auto => host,
        };
        if let Some(n) = name.filter(|n| !n.starts_with('*'))
            && let Ok(name) = ServerName::try_from(n.to_string())
        {
            return Ok(name);
        }
        if !self.recipe.subject_alt_names.is_empty() || self.recipe.insecure_skip_verify {
            return Ok(ServerName::IpAddress(fallback.into()));
        }
        Err(Unverifiable {
            host: name.map(str::to_string),
        })
    }

    /// Whether the ClientHello carries an SNI: always with a fixed one; with `Auto` only for
    /// HTTP, which has a Host (D7: TCP sends none).
    pub fn sends_sni(&self, http: bool) -> bool {
        matches!(self.recipe.sni, Sni::Fixed(_)) || http
    }
}

fn files(recipe: &Recipe) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    if let Some((c, k)) = &recipe.client_cert {
        out.push(c.clone());
        out.push(k.clone());
    }
    if let Some(ca) = &recipe.ca {
        out.push(ca.clone());
    }
    out
}

/// What a file looked like: enough to notice a rewrite in place (modification time, size) and
/// a replacement by rename or by a Kubernetes-style symlink swap (device and inode, since a
/// file moved into place may carry an older modification time than the one it replaces).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

impl Stamp {
    /// `None` when the file cannot be stat'ed (missing, unreadable directory): a change too.
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        // `metadata` follows symlinks: a swapped `..data` link shows as a new inode.
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            modified: m.modified().ok(),
            len: m.len(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// Certificate files checked for changes by stat alone, so a periodic check costs a few system
/// calls and the files are read and parsed only when one changed.
pub(crate) struct FileWatch {
    paths: Vec<PathBuf>,
    /// Only the certificate check takes it, never a connection.
    seen: std::sync::Mutex<Vec<Option<Stamp>>>,
}

impl FileWatch {
    /// Stamps the files now. Take it before reading them: a write racing the read then shows
    /// as a change at the next check instead of being missed.
    pub(crate) fn new(paths: Vec<PathBuf>) -> FileWatch {
        let seen = paths.iter().map(|p| Stamp::of(p)).collect();
        FileWatch {
            paths,
            seen: std::sync::Mutex::new(seen),
        }
    }

    /// Whether a file changed since the last call (or since `new`). What it sees is recorded
    /// whatever the caller then makes of the files, so broken files are not read again every
    /// check, only when they change again.
    pub(crate) fn changed(&self) -> bool {
        let now: Vec<Option<Stamp>> = self.paths.iter().map(|p| Stamp::of(p)).collect();
        let mut seen = crate::base::lock(&self.seen);
        if *seen == now {
            return false;
        }
        *seen = now;
        true
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// PEM certificates from `path`; at least one.
pub fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(what, path)?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| ConfigError {
                what,
                path: path.to_path_buf(),
                reason: format!("not PEM certificates: {e}"),
            })?;
    if certs.is_empty() {
        return Err(ConfigError {
            what,
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// A PEM private key (PKCS#8, PKCS#1 or SEC1) from `path`.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| ConfigError {
        what: "private key",
        path: path.to_path_buf(),
        reason: format!("no usable PEM private key: {e}"),
    })
}

fn roots(recipe: &Recipe) -> Result<RootCertStore, ConfigError> {
    let mut store = RootCertStore::empty();
    match &recipe.ca {
        Some(path) => {
            for cert in load_certs("CA certificates", path)? {
                store.add(cert).map_err(|e| ConfigError {
                    what: "CA certificates",
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => {
            // The system's roots, as Envoy uses when no CA is given.
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = store.add(cert);
            }
        }
    }
    Ok(store)
}

fn build_pair(recipe: &Recipe) -> Result<(Arc<ClientConfig>, Arc<ClientConfig>), ConfigError> {
    let with_sni = build(recipe)?;
    let mut without = with_sni.clone();
    without.enable_sni = false;
    Ok((Arc::new(with_sni), Arc::new(without)))
}

fn build(recipe: &Recipe) -> Result<ClientConfig, ConfigError> {
    let provider = provider();
    let verifier = Arc::new(Verifier {
        roots: Arc::new(roots(recipe)?),
        subject_alt_names: recipe.subject_alt_names.clone(),
        skip: recipe.insecure_skip_verify,
        algs: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError {
            what: "TLS",
            path: PathBuf::new(),
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &recipe.client_cert {
        Some((cert, key)) => {
            let chain = load_certs("client certificate", cert)?;
            let key_der = load_key(key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| ConfigError {
                what: "client certificate and key",
                path: cert.clone(),
                reason: e.to_string(),
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = recipe.alpn.clone();
    Ok(config)
}

/// Checks the server's chain against the roots, then its names: one of `subject_alt_names`
/// (DNS or URI SANs, exact; a wildcard DNS SAN covers one label) or, without them, the server
/// name the connection was made for.
#[derive(Debug)]
struct Verifier {
    roots: Arc<RootCertStore>,
    subject_alt_names: Vec<String>,
    skip: bool,
    algs: WebPkiSupportedAlgorithms,
}

/// The server certificate carries none of the expected names.
#[derive(Debug)]
pub struct SanMismatch {
    pub expected: Vec<String>,
    pub found: Vec<String>,
}

impl fmt::Display for SanMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server certificate's names [{}] include none of subjectAltNames [{}]",
            self.found.join(", "),
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for SanMismatch {}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.skip {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(&cert, &self.roots, intermediates, now, self.algs.all)?;
        if self.subject_alt_names.is_empty() {
            verify_server_name(&cert, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        let sans = cert_sans(end_entity);
        if self
            .subject_alt_names
            .iter()
            .any(|want| sans.iter().any(|have| san_matches(have, want)))
        {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(SanMismatch {
                expected: self.subject_alt_names.clone(),
                found: cert_names(end_entity),
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A subject alternative name, by type: a name of one type never stands for another's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Uri(String),
    Ip(std::net::IpAddr),
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(d) => f.write_str(d),
            San::Uri(u) => f.write_str(u),
            San::Ip(ip) => ip.fmt(f),
        }
    }
}

/// The DNS, URI and IP SANs of a certificate.
pub fn cert_sans(der: &CertificateDer<'_>) -> Vec<San> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(San::Dns(d.to_string())),
            GeneralName::URI(u) => Some(San::Uri(u.to_string())),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b).ok().map(|a| San::Ip(a.into())),
                16 => <[u8; 16]>::try_from(*b).ok().map(|a| San::Ip(a.into())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The SANs of a certificate as text, for messages and `/config_dump`.
pub fn cert_names(der: &CertificateDer<'_>) -> Vec<String> {
    cert_sans(der).iter().map(San::to_string).collect()
}

/// Envoy's typed SAN match of one `subjectAltNames` entry: an entry with a scheme
/// (`spiffe://...`) is a URI and matches a URI SAN exactly, case included; an IP address
/// matches an IP SAN; anything else is a DNS name and matches a DNS SAN without regard to
/// case, a certificate's `*.a.com` covering `b.a.com` (one label).
fn san_matches(have: &San, want: &str) -> bool {
    if want.contains("://") {
        return matches!(have, San::Uri(u) if u == want);
    }
    if let Ok(ip) = want.parse::<std::net::IpAddr>() {
        return matches!(have, San::Ip(h) if *h == ip);
    }
    let San::Dns(have) = have else {
        return false;
    };
    if have.eq_ignore_ascii_case(want) {
        return true;
    }
    match have.strip_prefix("*.") {
        Some(suffix) => want
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => false,
    }
}

/// A TLS failure in the words a 503 body and a log line use.
pub fn describe(e: &io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(inner) => describe_rustls(inner),
        None => format!("TLS handshake failed: {e}"),
    }
}

/// The TLS cause somewhere in `e`'s chain of sources (a hyper error wrapping an I/O error
/// wrapping a rustls alert, say), described; `None` when there is no TLS error in it.
pub fn find_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(describe_rustls(r));
        }
        if let Some(io) = err.downcast_ref::<io::Error>()
            && let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(describe_rustls(r));
        }
        cur = err.source();
    }
    None
}

fn describe_rustls(inner: &rustls::Error) -> String {
    match inner {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "TLS error: the server certificate is not signed by a trusted CA (unknown CA)".into()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "TLS error: the server certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "TLS error: the server certificate is not valid yet".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("TLS error: the server certificate does not match the server name (SAN mismatch): {c}")
            }
            CertificateError::Other(o) => format!("TLS error: SAN mismatch: {o}"),
            other => format!("TLS error: invalid server certificate: {other}"),
        },
        rustls::Error::AlertReceived(alert) => {
            format!(
                "TLS error: the server refused the handshake (alert {alert:?}); it may require a client certificate this proxy does not have"
            )
        }
        other => format!("TLS error: {other}"),
    }
}

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use meshentry_testutil::pki::server_config;
    use meshentry_testutil::{LeafSpec, PemDir, TestCa, TlsUpstream, unique_loopback};
    use std::time::UNIX_EPOCH;

    fn recipe(ca: Option<PathBuf>, sans: &[&str]) -> Recipe {
        Recipe {
            source: "DestinationRule default/test".into(),
            mode: Mode::Simple,
            client_cert: None,
            ca,
            subject_alt_names: sans.iter().map(|s| s.to_string()).collect(),
            insecure_skip_verify: false,
            sni: Sni::Auto,
            alpn: Vec::new(),
        }
    }

    /// Connects to `up` as `name` with `o`; the handshake's outcome, described as a 503 would.
    async fn handshake(o: &Origination, up: &TlsUpstream, name: &str) -> Result<(), String> {
        let tcp = tokio::net::TcpStream::connect(up.addr()).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(o.config());
        let server_name = o.server_name(Some(name), up.addr().ip()).map_err(|e| e.to_string())?;
        match connector.connect(server_name, tcp).await {
            Ok(_) => Ok(()),
            Err(e) => Err(describe(&e)),
        }
    }

    #[tokio::test]
    async fn server_certificates_are_checked_by_chain_and_name() {
        let ca = TestCa::new("origination CA");
        let other = TestCa::new("someone else");
        let pem = PemDir::new();
        let ca_file = pem.ca(&ca);
        let leaf = ca.issue(LeafSpec::server(["api.example.com"]));
        let up = TlsUpstream::start((unique_loopback(), 443).into(), "api", server_config(&leaf, None));

        let ok = Origination::new(recipe(Some(ca_file.clone()), &[])).unwrap();
        assert_eq!(handshake(&ok, &up, "api.example.com").await, Ok(()));
        let wrong_name = handshake(&ok, &up, "other.example.com").await.unwrap_err();
        assert!(wrong_name.contains("SAN mismatch"), "{wrong_name}");

        let untrusted = Origination::new(recipe(Some(pem.ca(&other)), &[])).unwrap();
        let err = handshake(&untrusted, &up, "api.example.com").await.unwrap_err();
        assert!(err.contains("unknown CA"), "{err}");

        // subjectAltNames replace the name check.
        let pinned = Origination::new(recipe(Some(ca_file.clone()), &["api.example.com"])).unwrap();
        assert_eq!(handshake(&pinned, &up, "anything.test").await, Ok(()));
        let pinned_other = Origination::new(recipe(Some(ca_file), &["db.example.com"])).unwrap();
        let err = handshake(&pinned_other, &up, "api.example.com").await.unwrap_err();
        assert!(err.contains("SAN mismatch") && err.contains("db.example.com"), "{err}");

        // Only insecureSkipVerify turns the checks off.
        let mut skip = recipe(Some(pem.ca(&other)), &["nope"]);
        skip.insecure_skip_verify = true;
        assert_eq!(handshake(&Origination::new(skip).unwrap(), &up, "x").await, Ok(()));
    }

    #[tokio::test]
    async fn spiffe_identities_and_expiry() {
        let ca = TestCa::new("mesh CA");
        let pem = PemDir::new();
        let ca_file = pem.ca(&ca);
        let id = "spiffe://cluster.local/ns/httpbin-ns/sa/httpbin-service-account";
        let mut spec = LeafSpec::client(id);
        spec.client_auth = false;
        let leaf = ca.issue(spec);
        let up = TlsUpstream::start((unique_loopback(), 443).into(), "httpbin", server_config(&leaf, None));
        let o = Origination::new(recipe(Some(ca_file.clone()), &[id])).unwrap();
        assert_eq!(handshake(&o, &up, "httpbin.com").await, Ok(()));
        let o = Origination::new(recipe(Some(ca_file.clone()), &["spiffe://cluster.local/ns/x/sa/y"])).unwrap();
        assert!(
            handshake(&o, &up, "httpbin.com")
                .await
                .unwrap_err()
                .contains("SAN mismatch")
        );

        let expired = ca.issue(LeafSpec {
            not_after: Some(UNIX_EPOCH + Duration::from_secs(1_600_000_000)),
            ..LeafSpec::server(["old.example.com"])
        });
        let up = TlsUpstream::start((unique_loopback(), 443).into(), "old", server_config(&expired, None));
        let o = Origination::new(recipe(Some(ca_file), &[])).unwrap();
        let err = handshake(&o, &up, "old.example.com").await.unwrap_err();
        assert!(err.contains("expired"), "{err}");
    }

    #[tokio::test]
    async fn mutual_tls_presents_the_client_certificate_and_files_reload() {
        let ca = TestCa::new("db CA");
        let pem = PemDir::new();
        let ca_file = pem.ca(&ca);
        let server = ca.issue(LeafSpec::server(["db.example.com"]));
        let up = TlsUpstream::start((unique_loopback(), 443).into(), "db", server_config(&server, Some(&ca)));

        let no_cert = Origination::new(recipe(Some(ca_file.clone()), &[])).unwrap();
        let err = handshake(&no_cert, &up, "db.example.com").await;
        // TLS 1.3: the client learns of the refusal only when it reads; the handshake itself
        // may succeed. The server must have refused either way.
        if let Err(e) = &err {
            assert!(e.contains("refused") || e.contains("alert"), "{e}");
        }

        let client = ca.issue(LeafSpec::client("spiffe://cluster.local/ns/default/sa/app"));
        let paths = pem.leaf(&client, "client");
        let mut r = recipe(Some(ca_file), &[]);
        r.mode = Mode::Mutual;
        r.client_cert = Some((paths.cert.clone(), paths.key.clone()));
        let mutual = Origination::new(r).unwrap();
        assert_eq!(handshake(&mutual, &up, "db.example.com").await, Ok(()));
        eventually_handshake_with_cert(&up).await;

        // A broken file keeps the last good configuration; a good new one replaces it.
        assert!(!mutual.reload_if_changed().unwrap());
        let before = mutual.config();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&paths.key, "not a key").unwrap();
        assert!(mutual.reload_if_changed().is_err());
        assert!(Arc::ptr_eq(&before, &mutual.config()));
        let fresh = ca.issue(LeafSpec::client("spiffe://cluster.local/ns/default/sa/app2"));
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&paths.cert, &fresh.cert_pem).unwrap();
        std::fs::write(&paths.key, &fresh.key_pem).unwrap();
        assert!(mutual.reload_if_changed().unwrap());
        assert!(!Arc::ptr_eq(&before, &mutual.config()));
        assert_eq!(handshake(&mutual, &up, "db.example.com").await, Ok(()));
    }

    async fn eventually_handshake_with_cert(up: &TlsUpstream) {
        for _ in 0..100 {
            if up.handshakes().iter().any(|h| h.client_cert) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the upstream never saw a client certificate: {:?}", up.handshakes());
    }

    #[test]
    fn broken_files_are_named() {
        let pem = PemDir::new();
        let bad = pem.write("bad.pem", "hello");
        let err = Origination::new(recipe(Some(bad), &[])).unwrap_err().to_string();
        assert!(
            err.contains("CA certificates") && err.contains("bad.pem") && err.contains("no CERTIFICATE"),
            "{err}"
        );
        let err = Origination::new(recipe(Some(pem.path().join("missing.pem")), &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }

    #[test]
    fn file_watch_sees_writes_renames_and_removals_once() {
        let pem = PemDir::new();
        let file = pem.write("cert.pem", "one");
        let watch = FileWatch::new(vec![file.clone()]);
        assert!(!watch.changed());
        // A file renamed into place with the same size and an older modification time (as a
        // copy preserving times would have) is still a change: its inode differs.
        let old_mtime = std::fs::metadata(&file).unwrap().modified().unwrap() - Duration::from_secs(60);
        let tmp = pem.write("cert.tmp", "two");
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(old_mtime)
            .unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert!(watch.changed());
        assert!(!watch.changed(), "a change is reported once");
        std::fs::remove_file(&file).unwrap();
        assert!(watch.changed());
        assert!(!watch.changed());
    }

    #[test]
    fn san_matching() {
        let dns = |d: &str| San::Dns(d.to_string());
        let uri = |u: &str| San::Uri(u.to_string());
        assert!(san_matches(&dns("api.a.com"), "API.a.com"));
        assert!(san_matches(&dns("*.a.com"), "b.a.com"));
        assert!(!san_matches(&dns("*.a.com"), "a.com"));
        assert!(!san_matches(&dns("*.a.com"), "c.b.a.com"));
        assert!(san_matches(
            &uri("spiffe://cluster.local/ns/x/sa/y"),
            "spiffe://cluster.local/ns/x/sa/y"
        ));
        assert!(!san_matches(
            &uri("spiffe://cluster.local/ns/x/sa/y"),
            "spiffe://cluster.local/ns/x/sa/z"
        ));
        // Typed: the text of a URI in a DNS SAN is not that URI; URIs compare exactly, case
        // included; an IP SAN is not a DNS name.
        assert!(!san_matches(
            &dns("spiffe://cluster.local/ns/x/sa/y"),
            "spiffe://cluster.local/ns/x/sa/y"
        ));
        assert!(!san_matches(
            &uri("spiffe://cluster.local/ns/X/sa/y"),
            "spiffe://cluster.local/ns/x/sa/y"
        ));
        assert!(!san_matches(&uri("api.a.com"), "api.a.com"));
        assert!(san_matches(&San::Ip([127, 0, 0, 1].into()), "127.0.0.1"));
        assert!(!san_matches(&dns("127.0.0.1"), "127.0.0.1"));
        assert!(!san_matches(&San::Ip([127, 0, 0, 1].into()), "localhost"));
    }

    #[test]
    fn no_name_no_verified_connection() {
        let o = |sans: &[&str], sni: Sni| {
            let mut r = recipe(None, sans);
            r.sni = sni;
            Origination::new(r).unwrap()
        };
        let ip = std::net::IpAddr::from([127, 0, 0, 9]);
        let auto = o(&[], Sni::Auto);
        assert_eq!(
            auto.server_name(Some("api.w.test"), ip),
            Ok(ServerName::try_from("api.w.test".to_string()).unwrap())
        );
        // An IP named as the host is the name that was promised.
        assert_eq!(
            auto.server_name(Some("127.0.0.5"), ip),
            Ok(ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 5]).into()))
        );
        // Not a DNS name (a wildcard, a label ending in '-'), or no host at all: refused, never
        // the endpoint's IP.
        for host in [Some("*.w.test"), Some("bad-.w.test"), Some("a b"), None] {
            let err = auto.server_name(host, ip).unwrap_err();
            assert!(err.to_string().contains("set sni or subjectAltNames"), "{err}");
        }
        // Pinned names are checked whatever the name, so the address may stand in.
        let pinned = o(&["api.w.test"], Sni::Auto);
        assert_eq!(
            pinned.server_name(Some("bad-.w.test"), ip),
            Ok(ServerName::IpAddress(ip.into()))
        );
        let fixed = o(&[], Sni::Fixed("fixed.w.test".into()));
        assert_eq!(
            fixed.server_name(None, ip),
            Ok(ServerName::try_from("fixed.w.test".to_string()).unwrap())
        );
    }
}
