//! The proxy's own settings (from the command line), as opposed to the Istio resources it
//! serves.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// `outboundTrafficPolicy.mode`: what happens to traffic for destinations the registry does
/// not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutboundPolicy {
    /// Pass it through to where the application sent it (Istio's PassthroughCluster).
    AllowAny,
    /// Refuse it (Istio's BlackHoleCluster), and say so.
    RegistryOnly,
}

impl OutboundPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundPolicy::AllowAny => "ALLOW_ANY",
            OutboundPolicy::RegistryOnly => "REGISTRY_ONLY",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ALLOW_ANY" => Some(OutboundPolicy::AllowAny),
            "REGISTRY_ONLY" => Some(OutboundPolicy::RegistryOnly),
            _ => None,
        }
    }
}

impl fmt::Display for OutboundPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who this proxy is and how it behaves.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The workload's namespace: decides what it sees (exportTo) and which Sidecar and
    /// DestinationRules apply.
    pub namespace: String,
    /// The workload's labels, for Sidecar and DestinationRule workload selectors.
    pub labels: BTreeMap<String, String>,
    /// `--outbound-policy`: overrides any Sidecar and the mesh default (ALLOW_ANY).
    pub policy_override: Option<OutboundPolicy>,
    /// The mesh default policy, for workloads no Sidecar sets one for (MeshConfig
    /// `outboundTrafficPolicy.mode`, ALLOW_ANY unless `--mesh-config` says otherwise), and
    /// where it came from, as the policy's source is reported.
    pub mesh_policy: OutboundPolicy,
    pub mesh_policy_source: String,
    /// MeshConfig `enableAutoMtls` (default true): mesh-internal services whose endpoints all
    /// have a sidecar get ISTIO_MUTUAL without a DestinationRule (C10).
    pub auto_mtls: bool,
    /// Istio's root namespace, whose selector-less Sidecar is the mesh-wide default and whose
    /// exported DestinationRules apply last (D1).
    pub root_namespace: String,
    /// Upstream TCP connect timeout (Istio's default is 10 s).
    pub connect_timeout: Duration,
    /// How long an upstream may take to send response headers before the client gets a 504.
    /// Istio sets no route timeout; a bound keeps a stalled upstream from holding a client
    /// forever.
    pub response_timeout: Duration,
    /// How long a client may take to send a complete request head.
    pub header_read_timeout: Duration,
    /// How long to wait for a client's first bytes in a tunnel before treating the
    /// connection as server-first TCP.
    pub sniff_timeout: Duration,
    /// Idle upstream HTTP connections are closed after this long.
    pub pool_idle_timeout: Duration,
    /// This workload's mesh identity (`--cert`, `--key`, `--ca`), for ISTIO_MUTUAL.
    pub identity: Option<IdentityFiles>,
    /// The SPIFFE trust domain of the mesh (Istio's default `cluster.local`).
    pub trust_domain: String,
    /// `--gateway`: the `namespace/name` of the Gateway this proxy runs as; `None` for a
    /// sidecar.
    pub gateway: Option<String>,
    /// `--gateway-bind`: the address of the Gateway's servers that name no `bind`.
    pub gateway_bind: IpAddr,
    /// The limits that protect the host (`--max-connections`, header limits, idle timeouts).
    pub limits: Limits,
    /// `--kubernetes-secrets`: where the proxy's namespace's Kubernetes Secrets are kept as
    /// files (`DIR/NAME/tls.crt`, `tls.key`, `ca.crt`), for `credentialName`; `None`: it
    /// reads no secrets.
    pub credentials: Option<std::path::PathBuf>,
    /// `--cluster-domain`: Kubernetes Service hosts are `NAME.NS.svc.DOMAIN`, and short names
    /// expand to them.
    pub cluster_domain: meshentry_api::ClusterDomain,
    /// `--dns`: the proxy answers DNS for its applications; `None`: it does not (and, as an
    /// Istio sidecar without DNS capture, uses no auto-allocated address).
    pub dns: Option<DnsProxy>,
    /// MeshConfig's `PILOT_ENABLE_IP_AUTOALLOCATE` (default on): with [`ProxyConfig::dns`],
    /// ServiceEntries without addresses get allocated ones.
    pub ip_autoallocate: bool,
}

/// What the DNS proxy's name table depends on besides the registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsProxy {
    /// The applications' resolver search domains (resolv.conf's `search`): a known name
    /// followed by one of them is answered too.
    pub search: Vec<String>,
}

/// The files of the Kubernetes secret `name` in a credentials directory, by Istio's key names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: std::path::PathBuf,
}

impl CredentialFiles {
    /// `None` when `name` is not a Secret's name (a DNS-1123 subdomain), after Istio's optional
    /// `kubernetes://` prefix: nothing else may become a path.
    pub fn of(dir: &std::path::Path, name: &str) -> Option<CredentialFiles> {
        let name = name.strip_prefix("kubernetes://").unwrap_or(name);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .split('.')
                .all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'))
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return None;
        }
        let d = dir.join(name);
        Some(CredentialFiles {
            cert: d.join("tls.crt"),
            key: d.join("tls.key"),
            ca: d.join("ca.crt"),
        })
    }
}

/// Bounds on what downstream clients may hold or send; each hit is counted in
/// `meshentry_proxy::rt::shared::Stats`.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Downstream connections open at once, across all workers and listeners; one more is
    /// accepted and closed at once (Envoy's listener connection limit, `downstream_cx_overflow`).
    pub max_connections: u64,
    /// The largest request head (request line and headers), in bytes; larger gets a 431
    /// (Envoy's `max_request_headers_kb`, 60 KiB by default).
    pub max_head_bytes: usize,
    /// The most header fields a request may have; more gets a 431 (Envoy's
    /// `max_headers_count`, 100 by default).
    pub max_headers: usize,
    /// How long a client connection may sit idle between HTTP requests (Envoy's HCM
    /// `idle_timeout`, 1 h by default).
    pub idle_timeout: Duration,
    /// How long a relayed TCP/TLS connection (or CONNECT tunnel) may carry no bytes either way
    /// (Envoy's `tcp_proxy` `idle_timeout`, 1 h by default).
    pub tcp_idle_timeout: Duration,
    /// How long a request may go without a byte of its body arriving from the client, or of
    /// its response arriving from the upstream once the response started (Envoy's HCM
    /// `stream_idle_timeout`, 5 min by default), so a slow body cannot hold a connection and an
    /// upstream forever.
    pub stream_idle_timeout: Duration,
    /// Streams one HTTP/2 client connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// more are refused with RST_STREAM REFUSED_STREAM. Envoy's edge recommendation and the
    /// smallest value RFC 9113 6.5.2 advises.
    pub http2_max_concurrent_streams: u32,
    /// How many streams one HTTP/2 client connection may reset prematurely (within a second of
    /// opening them, before their response started) at once; the allowance refills at a tenth
    /// of this a second. Past it the connection gets GOAWAY ENHANCE_YOUR_CALM (CVE-2023-44487).
    pub http2_max_premature_resets: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1 << 20,
            max_head_bytes: 60 * 1024,
            max_headers: 100,
            idle_timeout: Duration::from_secs(3600),
            tcp_idle_timeout: Duration::from_secs(3600),
            stream_idle_timeout: Duration::from_secs(300),
            http2_max_concurrent_streams: 100,
            http2_max_premature_resets: 100,
        }
    }
}

/// Where the workload certificate chain, its key and the mesh CA's certificates are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: std::path::PathBuf,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            labels: BTreeMap::new(),
            policy_override: None,
            mesh_policy: OutboundPolicy::AllowAny,
            mesh_policy_source: "mesh default".into(),
            auto_mtls: true,
            root_namespace: "istio-system".into(),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            sniff_timeout: Duration::from_millis(300),
            pool_idle_timeout: Duration::from_secs(60),
            identity: None,
            trust_domain: "cluster.local".into(),
            gateway: None,
            gateway_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            limits: Limits::default(),
            credentials: None,
            cluster_domain: meshentry_api::ClusterDomain::default(),
            dns: None,
            ip_autoallocate: true,
        }
    }
}
