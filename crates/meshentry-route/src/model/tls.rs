//! Originating TLS to upstreams: DestinationRule `tls` (D6-D8).
//!
//! A cluster whose policy says SIMPLE, MUTUAL or ISTIO_MUTUAL gets a [`Recipe`]: the files to
//! build a client configuration from (or the proxy's mesh identity), the SNI to send and the
//! names to check. The proxy builds the rustls configuration from it (`meshentry_proxy::live::tls`)
//! and rebuilds it when the files change; this crate only decides.
//!
//! Verification is stricter than Istio's by default. Istio's SIMPLE and MUTUAL check the server
//! certificate only when `caCertificates` or `subjectAltNames` are set; here the chain is always
//! checked (against `caCertificates`, else the system roots) and so is the name (the rule's
//! `subjectAltNames`, else the ServiceEntry's, else the SNI or host name), unless
//! `insecureSkipVerify: true` turns every check off, which is logged.

use std::path::PathBuf;

/// How the upstream connection is secured (D6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Simple,
    Mutual,
    IstioMutual,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Simple => "SIMPLE",
            Mode::Mutual => "MUTUAL",
            Mode::IstioMutual => "ISTIO_MUTUAL",
        }
    }
}

/// Which server name goes in the ClientHello (D7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sni {
    /// The rule's `sni`, or ISTIO_MUTUAL's `outbound_.<port>_.<subset>_.<host>`.
    Fixed(String),
    /// The request's Host (HTTP), else none.
    Auto,
}

/// Where the certificates come from: files named by the rule, or the proxy's mesh identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipe {
    /// What asked for it, for errors: `DestinationRule NS/NAME` or `auto mTLS`.
    pub source: String,
    pub mode: Mode,
    /// PEM client certificate chain and key (MUTUAL), or the mesh identity's (ISTIO_MUTUAL).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// PEM roots; `None`: the system's (SIMPLE/MUTUAL) or the mesh CA (ISTIO_MUTUAL, always set).
    pub ca: Option<PathBuf>,
    /// Names the server certificate must carry one of (DNS or URI SANs); empty: the SNI or host
    /// name is checked instead.
    pub subject_alt_names: Vec<String>,
    pub insecure_skip_verify: bool,
    pub sni: Sni,
    /// ALPN protocols to offer (`h2` for HTTP/2 upstreams, `http/1.1` for HTTP/1.1 ones).
    pub alpn: Vec<Vec<u8>>,
}

/// Why a cluster cannot originate the TLS its rule asks for; its connections fail with this
/// rather than send plaintext.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    #[error(
        "{who}: credentialName {name:?} names a Kubernetes secret, which this proxy does not read: run it with --kubernetes --kubernetes-secrets, or give clientCertificate, privateKey and caCertificates as files"
    )]
    CredentialName { who: String, name: String },
    #[error("{who}: credentialName {name:?} is not a Kubernetes Secret name")]
    BadCredentialName { who: String, name: String },
    #[error("{who}: MUTUAL needs both clientCertificate and privateKey")]
    HalfClientCertificate { who: String },
    #[error(
        "{who}: ISTIO_MUTUAL needs this proxy's mesh identity; start it with --cert, --key and --ca (see `meshentry ca`)"
    )]
    NoIdentity { who: String },
}
