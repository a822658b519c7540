//! `Gateway` (networking.istio.io): the listeners of a standalone (ingress or egress) proxy.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `Gateway.spec`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct Gateway {
    pub servers: Vec<Server>,
    /// Gateway proxies whose labels contain these; empty = all.
    pub selector: BTreeMap<String, String>,
}

/// Istio `Server`: one listener (port) of a gateway and the hosts it exposes.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct Server {
    pub port: Option<GatewayPort>,
    /// IP or `unix://` path to bind to; empty = all addresses.
    pub bind: String,
    /// `[namespace/]dnsName`.
    pub hosts: Vec<String>,
    pub tls: Option<ServerTlsSettings>,
    pub default_endpoint: String,
    pub name: String,
}

/// Istio `Port` (Gateway's): a protocol is required.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct GatewayPort {
    pub number: u32,
    pub protocol: String,
    pub name: String,
    /// Deprecated and ignored on gateways.
    pub target_port: u32,
}

/// Istio `ServerTLSSettings`, shared by Gateway servers and Sidecar ingress listeners.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct ServerTlsSettings {
    pub https_redirect: bool,
    pub mode: ServerTlsMode,
    pub server_certificate: String,
    pub private_key: String,
    pub ca_certificates: String,
    pub ca_crl: String,
    pub credential_name: String,
    pub credential_names: Vec<String>,
    /// A secret holding only the CA that client certificates are checked against.
    pub ca_cert_credential_name: String,
    pub tls_certificates: Vec<TlsCertificate>,
    pub subject_alt_names: Vec<String>,
    pub verify_certificate_spki: Vec<String>,
    pub verify_certificate_hash: Vec<String>,
    pub min_protocol_version: TlsProtocol,
    pub max_protocol_version: TlsProtocol,
    pub cipher_suites: Vec<String>,
    pub ecdh_curves: Vec<String>,
    /// `BoolValue`: do not verify client certificates.
    pub insecure_skip_verify: Option<bool>,
}

/// Istio `ServerTLSSettings.TLSmode`; `PASSTHROUGH` is the proto zero value, so `tls: {}`
/// means passthrough.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
pub enum ServerTlsMode {
    #[default]
    #[serde(rename = "PASSTHROUGH")]
    Passthrough,
    #[serde(rename = "SIMPLE")]
    Simple,
    #[serde(rename = "MUTUAL")]
    Mutual,
    #[serde(rename = "AUTO_PASSTHROUGH")]
    AutoPassthrough,
    #[serde(rename = "ISTIO_MUTUAL")]
    IstioMutual,
    #[serde(rename = "OPTIONAL_MUTUAL")]
    OptionalMutual,
}

impl ServerTlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerTlsMode::Passthrough => "PASSTHROUGH",
            ServerTlsMode::Simple => "SIMPLE",
            ServerTlsMode::Mutual => "MUTUAL",
            ServerTlsMode::AutoPassthrough => "AUTO_PASSTHROUGH",
            ServerTlsMode::IstioMutual => "ISTIO_MUTUAL",
            ServerTlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
        }
    }
}

/// Istio `ServerTLSSettings.TLSProtocol`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsProtocol {
    #[default]
    #[serde(rename = "TLS_AUTO")]
    TlsAuto,
    #[serde(rename = "TLSV1_0")]
    TlsV1_0,
    #[serde(rename = "TLSV1_1")]
    TlsV1_1,
    #[serde(rename = "TLSV1_2")]
    TlsV1_2,
    #[serde(rename = "TLSV1_3")]
    TlsV1_3,
}

/// Istio `ServerTLSSettings.TLSCertificate`: one of several certificates (e.g. RSA and ECDSA).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct TlsCertificate {
    pub server_certificate: String,
    pub private_key: String,
    pub ca_certificates: String,
}
