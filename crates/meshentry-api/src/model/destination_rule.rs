//! `DestinationRule` (networking.istio.io): policies for traffic to a service after routing.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Duration, PortSelector};

/// `DestinationRule.spec`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct DestinationRule {
    /// Short names are relative to the rule's namespace.
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Vec<Subset>,
    pub export_to: Vec<String>,
    pub workload_selector: Option<TypeWorkloadSelector>,
}

/// `istio.type.v1beta1.WorkloadSelector`, the selector of DestinationRule: `matchLabels`,
/// unlike the `labels` of ServiceEntry's and Sidecar's [`super::WorkloadSelector`].
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct TypeWorkloadSelector {
    pub match_labels: BTreeMap<String, String>,
}

/// Istio `TrafficPolicy`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct TrafficPolicy {
    // The two largest settings are boxed so that a DestinationRule stays small next to the
    // other kinds in `resource::Spec`; field access auto-derefs.
    pub load_balancer: Option<Box<LoadBalancerSettings>>,
    pub connection_pool: Option<Box<ConnectionPoolSettings>>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
    /// An entry for a port replaces (does not merge with) the four settings above.
    pub port_level_settings: Vec<PortTrafficPolicy>,
    pub tunnel: Option<TunnelSettings>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub retry_budget: Option<RetryBudget>,
}

/// Istio `TrafficPolicy.PortTrafficPolicy`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    pub port: Option<PortSelector>,
    /// Boxed like [`TrafficPolicy::load_balancer`], so that code choosing between the two
    /// gets one type.
    pub load_balancer: Option<Box<LoadBalancerSettings>>,
    pub connection_pool: Option<Box<ConnectionPoolSettings>>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
}

/// Istio `TrafficPolicy.TunnelSettings`: tunnel TCP over HTTP CONNECT or POST.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct TunnelSettings {
    /// `CONNECT` (default) or `POST`.
    pub protocol: String,
    pub target_host: String,
    pub target_port: u32,
}

/// Istio `TrafficPolicy.ProxyProtocol`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct ProxyProtocol {
    pub version: ProxyProtocolVersion,
}

/// Istio `TrafficPolicy.ProxyProtocol.VERSION`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
pub enum ProxyProtocolVersion {
    #[default]
    V1,
    V2,
}

/// Istio `TrafficPolicy.RetryBudget`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct RetryBudget {
    /// `DoubleValue`, 0..100.
    pub percent: Option<f64>,
    pub min_retry_concurrency: u32,
    /// The window the budget's percentage is computed over.
    pub budget_interval: Option<Duration>,
}

/// Istio `Subset`: endpoints whose labels contain `labels`, with an optional policy override.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Istio `LoadBalancerSettings`. `simple`, `consistentHash` and `backendUtilization` are a
/// oneof.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    pub simple: Option<SimpleLb>,
    pub consistent_hash: Option<ConsistentHashLb>,
    pub backend_utilization: Option<BackendUtilizationLb>,
    /// Cannot be set together with `zoneAwareLbSetting`.
    pub locality_lb_setting: Option<LocalityLoadBalancerSetting>,
    pub zone_aware_lb_setting: Option<ZoneAwareLoadBalancerSetting>,
    /// Deprecated; `warmup` replaces it.
    pub warmup_duration_secs: Option<Duration>,
    pub warmup: Option<WarmupConfiguration>,
}

/// Istio `LoadBalancerSettings.BackendUtilizationLB`: weights from the load the endpoints
/// report (ORCA).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct BackendUtilizationLb {
    pub weight_update_period: Option<Duration>,
    pub weight_expiration_period: Option<Duration>,
    pub weight_stabilization_period: Option<Duration>,
    pub error_utilization_penalty_percent: u32,
    pub metric_names_for_computing_utilization: Vec<String>,
}

/// Istio `LoadBalancerSettings.SimpleLB`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
pub enum SimpleLb {
    #[default]
    #[serde(rename = "UNSPECIFIED")]
    Unspecified,
    /// Deprecated alias of `LEAST_REQUEST`.
    #[serde(rename = "LEAST_CONN")]
    LeastConn,
    #[serde(rename = "RANDOM")]
    Random,
    #[serde(rename = "PASSTHROUGH")]
    Passthrough,
    #[serde(rename = "ROUND_ROBIN")]
    RoundRobin,
    #[serde(rename = "LEAST_REQUEST")]
    LeastRequest,
}

/// Istio `LoadBalancerSettings.ConsistentHashLB`. The hash key (`httpHeaderName`, `httpCookie`,
/// `useSourceIp`, `httpQueryParameterName`) and the algorithm (`ringHash`, `maglev`) are oneofs.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ConsistentHashLb {
    pub http_header_name: String,
    pub http_cookie: Option<HttpCookie>,
    pub use_source_ip: bool,
    pub http_query_parameter_name: String,
    pub ring_hash: Option<RingHash>,
    pub maglev: Option<MagLev>,
    /// Deprecated; `ringHash.minimumRingSize` replaces it.
    pub minimum_ring_size: u64,
}

/// Istio `ConsistentHashLB.HTTPCookie`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpCookie {
    pub name: String,
    pub path: String,
    pub ttl: Option<Duration>,
    pub attributes: Vec<HttpCookieAttribute>,
}

/// Istio `ConsistentHashLB.HTTPCookie.Attribute`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpCookieAttribute {
    pub name: String,
    pub value: String,
}

/// Istio `ConsistentHashLB.RingHash`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct RingHash {
    pub minimum_ring_size: u64,
}

/// Istio `ConsistentHashLB.MagLev`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct MagLev {
    pub table_size: u64,
}

/// Istio `LocalityLoadBalancerSetting`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct LocalityLoadBalancerSetting {
    pub distribute: Vec<LocalityDistribute>,
    pub failover: Vec<LocalityFailover>,
    pub failover_priority: Vec<String>,
    pub enabled: Option<bool>,
}

/// Istio `LocalityLoadBalancerSetting.Distribute`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct LocalityDistribute {
    pub from: String,
    /// Locality -> weight; the weights add up to 100.
    pub to: BTreeMap<String, u32>,
}

/// Istio `ZoneAwareLoadBalancerSetting`: Envoy's zone-aware routing, with region failover.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct ZoneAwareLoadBalancerSetting {
    pub enabled: Option<bool>,
    /// Regions only: zones and subzones are handled by zone-aware routing itself.
    pub failover: Vec<LocalityFailover>,
    pub failover_priority: Vec<String>,
    /// `UInt32Value`, at least 1.
    pub min_cluster_size: Option<u32>,
}

/// Istio `LocalityLoadBalancerSetting.Failover` (and `ZoneAwareLoadBalancerSetting.Failover`,
/// the same shape).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct LocalityFailover {
    pub from: String,
    pub to: String,
}

/// Istio `WarmupConfiguration`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct WarmupConfiguration {
    pub duration: Option<Duration>,
    /// `DoubleValue`, 0..100.
    pub minimum_percent: Option<f64>,
    /// `DoubleValue`.
    pub aggression: Option<f64>,
}

/// Istio `ConnectionPoolSettings`; 0 limits mean "no limit".
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ConnectionPoolSettings {
    pub tcp: Option<TcpSettings>,
    pub http: Option<HttpSettings>,
}

/// Istio `ConnectionPoolSettings.TCPSettings`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct TcpSettings {
    pub max_connections: i32,
    pub connect_timeout: Option<Duration>,
    pub tcp_keepalive: Option<TcpKeepalive>,
    pub max_connection_duration: Option<Duration>,
    pub idle_timeout: Option<Duration>,
}

/// Istio `ConnectionPoolSettings.TCPSettings.TcpKeepalive`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct TcpKeepalive {
    pub probes: u32,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

/// Istio `ConnectionPoolSettings.HTTPSettings`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpSettings {
    pub http1_max_pending_requests: i32,
    pub http2_max_requests: i32,
    pub max_requests_per_connection: i32,
    pub max_retries: i32,
    pub idle_timeout: Option<Duration>,
    pub h2_upgrade_policy: H2UpgradePolicy,
    pub use_client_protocol: bool,
    pub max_concurrent_streams: i32,
    pub http2_keep_alive: Option<ConnectionKeepalive>,
}

/// Istio `ConnectionPoolSettings.HTTPSettings.ConnectionKeepalive`: HTTP/2 PING keepalive;
/// both durations are required.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct ConnectionKeepalive {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
}

/// Istio `ConnectionPoolSettings.HTTPSettings.H2UpgradePolicy`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
pub enum H2UpgradePolicy {
    #[default]
    #[serde(rename = "DEFAULT")]
    Default,
    #[serde(rename = "DO_NOT_UPGRADE")]
    DoNotUpgrade,
    #[serde(rename = "UPGRADE")]
    Upgrade,
}

/// Istio `OutlierDetection`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Deprecated; `consecutive5xxErrors` / `consecutiveGatewayErrors` replace it.
    pub consecutive_errors: i32,
    pub split_external_local_origin_errors: bool,
    pub consecutive_local_origin_failures: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub consecutive_5xx_errors: Option<u32>,
    pub interval: Option<Duration>,
    pub base_ejection_time: Option<Duration>,
    pub max_ejection_percent: i32,
    pub min_health_percent: i32,
    /// The status codes (100..599) that count as errors, instead of 5xx.
    pub outlier_detection_http_error_codes: Vec<u32>,
}

/// Istio `ClientTLSSettings`: TLS from the proxy to the upstream.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct ClientTlsSettings {
    pub mode: ClientTlsMode,
    pub client_certificate: String,
    pub private_key: String,
    pub ca_certificates: String,
    pub credential_name: String,
    pub subject_alt_names: Vec<String>,
    pub sni: String,
    pub insecure_skip_verify: Option<bool>,
    pub ca_crl: String,
}

/// Istio `ClientTLSSettings.TLSmode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
pub enum ClientTlsMode {
    #[default]
    #[serde(rename = "DISABLE")]
    Disable,
    #[serde(rename = "SIMPLE")]
    Simple,
    #[serde(rename = "MUTUAL")]
    Mutual,
    #[serde(rename = "ISTIO_MUTUAL")]
    IstioMutual,
}

impl ClientTlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientTlsMode::Disable => "DISABLE",
            ClientTlsMode::Simple => "SIMPLE",
            ClientTlsMode::Mutual => "MUTUAL",
            ClientTlsMode::IstioMutual => "ISTIO_MUTUAL",
        }
    }
}
