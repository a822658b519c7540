//! `VirtualService` (networking.istio.io), and the routing types that DestinationRule, Sidecar
//! and Gateway share with it (`Destination`, `PortSelector`, `StringMatch`, `Percent`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Duration;

/// `VirtualService.spec`: routing rules for a set of hosts. No `hosts` makes it a delegate,
/// reachable only through another VirtualService's `delegate`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualService {
    pub hosts: Vec<String>,
    /// Empty = `[mesh]`.
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
    pub tls: Vec<TlsRoute>,
    pub tcp: Vec<TcpRoute>,
    pub export_to: Vec<String>,
}

/// Istio `HTTPRoute`: the first rule whose `match` (any block) fits the request wins.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRoute {
    pub name: String,
    /// Blocks are ORed; no block = every request.
    pub r#match: Vec<HttpMatchRequest>,
    pub route: Vec<HttpRouteDestination>,
    pub redirect: Option<HttpRedirect>,
    pub direct_response: Option<HttpDirectResponse>,
    pub delegate: Option<Delegate>,
    pub rewrite: Option<HttpRewrite>,
    pub timeout: Option<Duration>,
    pub retries: Option<HttpRetry>,
    pub fault: Option<HttpFaultInjection>,
    pub mirror: Option<Destination>,
    pub mirrors: Vec<HttpMirrorPolicy>,
    pub mirror_percentage: Option<Percent>,
    /// Deprecated `UInt32Value`; `mirrorPercentage` replaces it. The schema takes it under two
    /// names, this one and [`HttpRoute::mirror_percent_proto_name`]; read
    /// [`HttpRoute::legacy_mirror_percent`].
    pub mirror_percent: Option<u32>,
    /// `mirror_percent`, the proto field name the CRD also accepts.
    #[serde(rename = "mirror_percent")]
    pub mirror_percent_proto_name: Option<u32>,
    pub cors_policy: Option<CorsPolicy>,
    pub headers: Option<Headers>,
}

impl HttpRoute {
    /// The deprecated mirror percentage under either of its names. Istio's decoder reads the
    /// proto name first, so it wins when both are written.
    pub fn legacy_mirror_percent(&self) -> Option<u32> {
        self.mirror_percent_proto_name.or(self.mirror_percent)
    }
}

/// Istio `HTTPMatchRequest`: every set field must match (AND).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpMatchRequest {
    pub name: String,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub headers: BTreeMap<String, StringMatch>,
    /// 0 = any port.
    pub port: u32,
    pub source_labels: BTreeMap<String, String>,
    pub gateways: Vec<String>,
    pub query_params: BTreeMap<String, StringMatch>,
    pub ignore_uri_case: bool,
    pub without_headers: BTreeMap<String, StringMatch>,
    pub source_namespace: String,
    pub stat_prefix: String,
}

/// Istio `StringMatch`, a proto oneof: `Some("")` is a set-but-empty value, which Istio
/// treats differently from an absent one (an empty prefix matches everything).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

/// Istio `HTTPRouteDestination`: a weighted destination of an HTTP rule.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRouteDestination {
    pub destination: Option<Destination>,
    /// Relative weight; 0 with a single destination means all traffic.
    pub weight: i32,
    pub headers: Option<Headers>,
}

/// Istio `RouteDestination`: a weighted destination of a TLS or TCP rule.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct RouteDestination {
    pub destination: Option<Destination>,
    pub weight: i32,
}

/// Istio `Destination`: a service (`host`, short names relative to the config's namespace),
/// optionally a DestinationRule subset and a port.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct Destination {
    pub host: String,
    pub subset: String,
    pub port: Option<PortSelector>,
}

/// Istio `PortSelector`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct PortSelector {
    pub number: u32,
}

/// Istio `Headers`: header manipulation for requests and responses.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct Headers {
    pub request: Option<HeaderOperations>,
    pub response: Option<HeaderOperations>,
}

/// Istio `Headers.HeaderOperations`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct HeaderOperations {
    pub set: BTreeMap<String, String>,
    pub add: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

/// Istio `HTTPRedirect`. `port` and `derivePort` are a oneof.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRedirect {
    pub uri: String,
    pub authority: String,
    pub port: Option<u32>,
    pub derive_port: Option<RedirectPortSelection>,
    pub scheme: String,
    /// 0 = 301.
    pub redirect_code: u32,
    /// Replaces the matched URI prefix in the redirect; not with `uri`.
    pub prefix_rewrite: String,
}

/// Istio `HTTPRedirect.RedirectPortSelection`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
pub enum RedirectPortSelection {
    #[default]
    #[serde(rename = "FROM_PROTOCOL_DEFAULT")]
    FromProtocolDefault,
    #[serde(rename = "FROM_REQUEST_PORT")]
    FromRequestPort,
}

/// Istio `HTTPDirectResponse`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpDirectResponse {
    pub status: u32,
    pub body: Option<HttpBody>,
}

/// Istio `HTTPBody`, a oneof of text and base64 bytes.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpBody {
    pub string: Option<String>,
    /// Base64 as in proto JSON.
    pub bytes: Option<String>,
}

/// Istio `Delegate`: the host-less VirtualService whose rules a root rule pulls in.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct Delegate {
    pub name: String,
    /// Empty = the root VirtualService's namespace.
    pub namespace: String,
}

/// Istio `HTTPRewrite`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRewrite {
    pub uri: String,
    pub authority: String,
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// Istio `RegexRewrite`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct RegexRewrite {
    pub r#match: String,
    pub rewrite: String,
}

/// Istio `HTTPRetry`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRetry {
    /// 0 disables retries.
    pub attempts: i32,
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated Envoy retry conditions or HTTP status codes.
    pub retry_on: String,
    pub retry_remote_localities: Option<bool>,
    pub retry_ignore_previous_hosts: Option<bool>,
    pub backoff: Option<Duration>,
}

/// Istio `CorsPolicy`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Deprecated exact origins; `allowOrigins` replaces it.
    pub allow_origin: Vec<String>,
    pub allow_origins: Vec<StringMatch>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: Option<Duration>,
    pub allow_credentials: Option<bool>,
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// Istio `CorsPolicy.UnmatchedPreflights`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
pub enum UnmatchedPreflights {
    #[default]
    #[serde(rename = "UNSPECIFIED")]
    Unspecified,
    #[serde(rename = "FORWARD")]
    Forward,
    #[serde(rename = "IGNORE")]
    Ignore,
}

/// Istio `HTTPFaultInjection`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpFaultInjection {
    pub delay: Option<HttpFaultInjectionDelay>,
    pub abort: Option<HttpFaultInjectionAbort>,
}

/// Istio `HTTPFaultInjection.Delay`. `fixedDelay` and `exponentialDelay` are a oneof.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpFaultInjectionDelay {
    /// Deprecated integer percentage; `percentage` replaces it.
    pub percent: i32,
    pub fixed_delay: Option<Duration>,
    pub exponential_delay: Option<Duration>,
    pub percentage: Option<Percent>,
}

/// Istio `HTTPFaultInjection.Abort`. `httpStatus`, `grpcStatus` and `http2Error` are a oneof.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpFaultInjectionAbort {
    pub http_status: Option<i32>,
    pub grpc_status: Option<String>,
    pub http2_error: Option<String>,
    pub percentage: Option<Percent>,
}

/// Istio `HTTPMirrorPolicy`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpMirrorPolicy {
    pub destination: Option<Destination>,
    pub percentage: Option<Percent>,
}

/// Istio `Percent`: 0.0 to 100.0.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Percent {
    pub value: f64,
}

/// Istio `TLSRoute`: routes TLS (and HTTPS) traffic by SNI without terminating it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct TlsRoute {
    pub r#match: Vec<TlsMatchAttributes>,
    pub route: Vec<RouteDestination>,
}

/// Istio `TLSMatchAttributes`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct TlsMatchAttributes {
    pub sni_hosts: Vec<String>,
    pub destination_subnets: Vec<String>,
    pub port: u32,
    pub source_labels: BTreeMap<String, String>,
    pub gateways: Vec<String>,
    pub source_namespace: String,
}

/// Istio `TCPRoute`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct TcpRoute {
    pub r#match: Vec<L4MatchAttributes>,
    pub route: Vec<RouteDestination>,
}

/// Istio `L4MatchAttributes`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct L4MatchAttributes {
    pub destination_subnets: Vec<String>,
    pub port: u32,
    /// Deprecated in Istio's API and not used by it.
    pub source_subnet: String,
    pub source_labels: BTreeMap<String, String>,
    pub gateways: Vec<String>,
    pub source_namespace: String,
}
