//! VirtualService route tables (E1-E7), compiled once per snapshot.
//!
//! Istio turns the VirtualServices a proxy sees into route configurations; a sidecar gets one
//! per listener port with a virtual host per service. This module does the same work at
//! snapshot build time so that the data path only does a hash lookup (keyed by the service the
//! registry picked and the port, exactly like the cluster table) and walks a short rule list:
//! regexes are compiled, header names parsed, destinations resolved to their clusters, and the
//! static conditions (`port`, `sourceLabels`, `gateways`) already decided.
//!
//! The tables are built for one gateway name: [`MESH`] for a sidecar; a gateway proxy compiles
//! the same way with its own `namespace/name` (E2).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use meshentry_api::model::{
    Destination, HeaderOperations, Headers, HttpMatchRequest, HttpRetry, HttpRoute, HttpRouteDestination,
    L4MatchAttributes, RedirectPortSelection, RouteDestination, StringMatch, TlsMatchAttributes, VirtualService,
};
use meshentry_api::{Resource, Spec};
use meshentry_registry::hash::FxHashMap;
use meshentry_registry::{Registry, Service, ServiceId, View, host};
use regex::bytes::Regex;

use crate::model::cluster::Cluster;
use crate::model::key::ServiceKey;

/// The gateway name of sidecars (E2).
pub const MESH: &str = "mesh";

/// Request bodies up to this size are buffered when a rule needs to send them more than once
/// (retries, mirroring); larger or unknown-length bodies stream and get one try.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

// === Compiled tables ===

/// Every VirtualService route this proxy applies, by the service and port they replace the
/// default route of.
#[derive(Default)]
pub struct RouteTables {
    /// Keyed like the snapshot's clusters: the address of the service in the registry, and the
    /// port number (= the listener port of a sidecar).
    http: FxHashMap<(ServiceKey, u32), Arc<HttpRoutes>>,
    /// E1: VirtualService hosts that name no visible service get a virtual host on port 80
    /// only; exact names (lower case) here, wildcards in `http_wild`.
    http_names: FxHashMap<Box<str>, Arc<HttpRoutes>>,
    http_wild: Vec<(Box<str>, Arc<HttpRoutes>)>,
    /// TLS and TCP rules (E7), keyed like `http`.
    l4: FxHashMap<(ServiceKey, u32), Arc<L4Routes>>,
    /// Configurations that compile to something other than what the author probably meant.
    pub warnings: Vec<String>,
}

/// The HTTP rules of one VirtualService for one service port, in order.
pub struct HttpRoutes {
    /// `namespace/name` of the VirtualService.
    pub vs: Box<str>,
    pub rules: Box<[HttpRule]>,
}

/// One `http` rule after static filtering.
pub struct HttpRule {
    /// `name`, or `#<index>` in the VirtualService's `http` list.
    pub name: Box<str>,
    /// The rule's position in the VirtualService's `http` list (for a rule pulled in by a
    /// `delegate`, the root rule's position).
    pub index: usize,
    /// E6: `namespace/name http[j]` of the delegate rule this rule was merged from.
    pub delegate: Option<Box<str>>,
    /// ORed; empty = every request.
    matches: Box<[HttpMatch]>,
    /// The match blocks as written (JSON), for admin output.
    pub match_text: Box<[String]>,
    pub action: HttpAction,
    pub rewrite: Option<Rewrite>,
    /// `timeout`: replaces the proxy's response timeout; `Duration::ZERO` = none (Istio's `0s`).
    pub timeout: Option<Duration>,
    pub retry: Retry,
    pub fault: Option<Fault>,
    pub mirrors: Box<[Mirror]>,
    pub headers: HeaderEdits,
    /// Only picks a destination: the HTTP/1.1 fast path can carry it.
    pub simple: bool,
}

/// What a rule does.
pub enum HttpAction {
    /// `route`: weighted destinations (weights relative, 0 dropped, E5).
    Route {
        dests: Box<[WeightedDest]>,
        total: u32,
    },
    Redirect(Redirect),
    /// `directResponse`.
    Direct {
        status: u16,
        body: Bytes,
    },
}

/// One destination of a rule, TLS rule or TCP rule.
pub struct WeightedDest {
    pub weight: u32,
    pub target: Target,
    pub headers: HeaderEdits,
}

/// Where a destination resolved to.
pub enum Target {
    Cluster {
        service: ServiceId,
        port: u32,
        cluster: Arc<Cluster>,
    },
    /// No such service, port or subset: requests get 503 (E5), with this reason.
    Missing(Box<str>),
}

impl Target {
    pub fn name(&self) -> &str {
        match self {
            Target::Cluster { cluster, .. } => &cluster.name,
            Target::Missing(reason) => reason,
        }
    }
}

/// `headers.request` / `headers.response` of a rule or destination.
#[derive(Default)]
pub struct HeaderEdits {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// Istio `HeaderOperations`: remove, then set (replace), then add (append).
#[derive(Default)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// `HTTPRedirect`.
pub struct Redirect {
    pub uri: Option<Box<str>>,
    pub authority: Option<Box<str>>,
    pub scheme: Option<Box<str>>,
    pub port: RedirectPort,
    pub status: u16,
}

pub enum RedirectPort {
    /// Keep whatever port the authority has.
    Unchanged,
    Fixed(u32),
    /// `derivePort: FROM_REQUEST_PORT`.
    FromRequest,
}

/// `HTTPRewrite`.
pub struct Rewrite {
    /// Replaces the matched URI prefix (Envoy `prefix_rewrite`).
    pub uri: Option<Box<str>>,
    /// `uriRegexRewrite`: every match replaced (`\1` becomes the first group).
    pub uri_regex: Option<(Regex, String)>,
    pub authority: Option<HeaderValue>,
}

/// `HTTPRetry`, with Istio's default when the field is absent.
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    /// Retries after the first try.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: u32,
    /// `retriable-status-codes`: numbers in `retryOn`.
    pub codes: Box<[u16]>,
}

/// `retryOn` conditions, as bits of [`Retry::on`].
pub mod retry_on {
    pub const CONNECT_FAILURE: u32 = 1;
    pub const REFUSED_STREAM: u32 = 1 << 1;
    pub const FIVE_XX: u32 = 1 << 2;
    pub const GATEWAY_ERROR: u32 = 1 << 3;
    pub const RESET: u32 = 1 << 4;
    pub const RETRIABLE_STATUS_CODES: u32 = 1 << 5;
    /// gRPC conditions: they never fire for HTTP/1 upstreams.
    pub const UNAVAILABLE: u32 = 1 << 6;
    pub const CANCELLED: u32 = 1 << 7;
    pub const OTHER: u32 = 1 << 8;
}

impl Default for Retry {
    /// C3: 2 retries on "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".
    fn default() -> Self {
        use retry_on::*;
        Retry {
            attempts: 2,
            per_try_timeout: None,
            on: CONNECT_FAILURE | REFUSED_STREAM | UNAVAILABLE | CANCELLED | RETRIABLE_STATUS_CODES,
            codes: Box::new([]),
        }
    }
}

impl Retry {
    fn compile(r: &HttpRetry) -> Retry {
        use retry_on::*;
        let attempts = u32::try_from(r.attempts).unwrap_or(0);
        let per_try_timeout = r.per_try_timeout.as_ref().and_then(|d| d.parse().ok());
        if r.retry_on.trim().is_empty() {
            return Retry {
                attempts,
                per_try_timeout,
                ..Retry::default()
            };
        }
        let mut on = 0;
        let mut codes = Vec::new();
        for token in r.retry_on.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            on |= match token {
                "connect-failure" => CONNECT_FAILURE,
                "refused-stream" => REFUSED_STREAM,
                "5xx" => FIVE_XX,
                "gateway-error" => GATEWAY_ERROR,
                "reset" => RESET,
                "retriable-status-codes" => RETRIABLE_STATUS_CODES,
                "unavailable" => UNAVAILABLE,
                "cancelled" => CANCELLED,
                t => match t.parse::<u16>() {
                    // Istio moves status codes into Envoy's retriable_status_codes.
                    Ok(code) => {
                        codes.push(code);
                        RETRIABLE_STATUS_CODES
                    }
                    Err(_) => OTHER,
                },
            };
        }
        Retry {
            attempts,
            per_try_timeout,
            on,
            codes: codes.into(),
        }
    }

    /// What the fast path already does: fail over on connect failures, each host once.
    fn is_connect_only(&self) -> bool {
        use retry_on::*;
        self.attempts == 0
            || (self.per_try_timeout.is_none()
                && self.codes.is_empty()
                && self.on & !(CONNECT_FAILURE | REFUSED_STREAM | UNAVAILABLE | CANCELLED | RETRIABLE_STATUS_CODES)
                    == 0)
    }

    /// Whether a response with `status` is retried.
    pub fn on_status(&self, status: u16) -> bool {
        use retry_on::*;
        (self.on & FIVE_XX != 0 && (500..600).contains(&status))
            || (self.on & GATEWAY_ERROR != 0 && matches!(status, 502..=504))
            || (self.on & RETRIABLE_STATUS_CODES != 0 && self.codes.contains(&status))
    }
}

/// `HTTPFaultInjection`: percentages in 0..=100.
pub struct Fault {
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(u16, f64)>,
}

/// A copy of the request sent to `target` for `percent` of requests; its response is dropped.
pub struct Mirror {
    pub target: Target,
    pub percent: f64,
}

/// Whether a request falls into `percent` (0..=100).
pub fn roll(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}

/// The TLS and TCP rules of one VirtualService for one service port.
pub struct L4Routes {
    pub vs: Box<str>,
    tls: Box<[TlsRule]>,
    tcp: Box<[TcpRule]>,
}

/// A `tls` or `tcp` rule of a VirtualService.
struct L4Rule<M> {
    /// Position in the VirtualService's `tls` or `tcp` list.
    index: usize,
    /// ORed; a `tcp` rule's may be empty: every connection.
    matches: Box<[M]>,
    dests: Box<[WeightedDest]>,
    total: u32,
}

type TlsRule = L4Rule<TlsMatch>;
type TcpRule = L4Rule<Box<[IpNet]>>;

struct TlsMatch {
    sni: Box<[Box<str>]>,
    subnets: Box<[IpNet]>,
}

/// Whether `subnets` (a match's `destinationSubnets`) admit a connection to `dst`: no subnets
/// admit all; an unknown destination (`None`) is in no subnet.
fn in_subnets(subnets: &[IpNet], dst: Option<IpAddr>) -> bool {
    subnets.is_empty() || dst.is_some_and(|ip| subnets.iter().any(|n| n.contains(&ip)))
}

impl TlsRule {
    /// E7: a match whose `sniHosts` cover `sni` (lower case) and whose subnets admit `dst`.
    fn applies(&self, sni: &str, dst: Option<IpAddr>) -> bool {
        self.matches
            .iter()
            .any(|m| m.sni.iter().any(|h| meshentry_registry::host::covers(h, sni)) && in_subnets(&m.subnets, dst))
    }
}

impl TcpRule {
    /// E7: no match, or a match whose subnets admit `dst`.
    fn applies(&self, dst: Option<IpAddr>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|subnets| in_subnets(subnets, dst))
    }
}

impl L4Routes {
    /// Whether some match names `destinationSubnets`, so the destination address matters.
    fn has_subnets(&self) -> bool {
        self.tls.iter().flat_map(|r| &*r.matches).any(|m| !m.subnets.is_empty())
            || self.tcp.iter().flat_map(|r| &*r.matches).any(|s| !s.is_empty())
    }
}

// === Matching ===

/// What HTTP matching reads from a request, so the fast path (bytes in place) and the hyper
/// path (`http::Request`) share one matcher.
pub trait RequestView {
    fn method(&self) -> &[u8];
    /// Path and query, as sent (origin form).
    fn path(&self) -> &[u8];
    fn scheme(&self) -> &[u8];
    /// The `Host` (or `:authority`) as sent, port included.
    fn authority(&self) -> &[u8];
    /// The first value of the header `name` (lower case).
    fn header(&self, name: &str) -> Option<&[u8]>;
}

/// A request given as plain values (`explain`'s target, tests, benchmarks), for the matcher.
/// `Host` and `:authority` read as the authority; other header names match in any case.
pub struct PlainRequest<'a, H: AsRef<str> = &'a str> {
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub headers: &'a [(H, H)],
}

impl<H: AsRef<str>> RequestView for PlainRequest<'_, H> {
    fn method(&self) -> &[u8] {
        self.method.as_bytes()
    }
    fn path(&self) -> &[u8] {
        self.path.as_bytes()
    }
    fn scheme(&self) -> &[u8] {
        b"http"
    }
    fn authority(&self) -> &[u8] {
        self.authority.as_bytes()
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        if name == "host" || name == ":authority" {
            return Some(self.authority.as_bytes());
        }
        self.headers
            .iter()
            .find(|(n, _)| n.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref().as_bytes())
    }
}

/// A compiled `StringMatch`.
enum StrMatch {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    /// Anchored: RE2 in Envoy matches the whole value.
    Regex(Regex),
    /// An empty `StringMatch` (headers, query parameters): the value is present.
    Present,
}

impl StrMatch {
    fn compile(m: &StringMatch) -> Result<StrMatch, String> {
        if let Some(e) = &m.exact {
            return Ok(StrMatch::Exact(e.as_bytes().into()));
        }
        if let Some(p) = &m.prefix {
            return Ok(StrMatch::Prefix(p.as_bytes().into()));
        }
        if let Some(r) = &m.regex {
            return Regex::new(&format!("^(?:{r})$"))
                .map(StrMatch::Regex)
                .map_err(|e| format!("regex {r:?}: {e}"));
        }
        Ok(StrMatch::Present)
    }

    fn is(&self, value: &[u8], ignore_case: bool) -> bool {
        match self {
            StrMatch::Exact(e) if ignore_case => value.eq_ignore_ascii_case(e),
            StrMatch::Exact(e) => value == &**e,
            StrMatch::Prefix(p) => {
                value.len() >= p.len()
                    && if ignore_case {
                        value[..p.len()].eq_ignore_ascii_case(p)
                    } else {
                        value.starts_with(p)
                    }
            }
            StrMatch::Regex(r) => r.is_match(value),
            StrMatch::Present => true,
        }
    }
}

/// A compiled `HTTPMatchRequest` (fields ANDed).
struct HttpMatch {
    uri: Option<StrMatch>,
    ignore_uri_case: bool,
    scheme: Option<StrMatch>,
    method: Option<StrMatch>,
    authority: Option<StrMatch>,
    headers: NamedMatches,
    without_headers: NamedMatches,
    query: NamedMatches,
}

/// The rule that matched, and how much of the path its URI prefix covered (for `rewrite.uri`).
pub struct Selected<'a> {
    pub rule: &'a HttpRule,
    pub prefix_len: usize,
}

impl HttpMatch {
    /// `Some(prefix length)` when the request matches.
    fn check(&self, req: &impl RequestView) -> Option<usize> {
        let full = req.path();
        // Envoy compares exact and regex URI matches with the query removed; prefixes with
        // the whole path (a prefix cannot tell the difference but for `?`).
        let path = full.split(|b| *b == b'?').next().unwrap_or(full);
        let mut prefix_len = usize::from(path.starts_with(b"/"));
        if let Some(uri) = &self.uri {
            let ok = match uri {
                StrMatch::Prefix(p) => {
                    prefix_len = p.len();
                    uri.is(full, self.ignore_uri_case)
                }
                StrMatch::Exact(_) => {
                    prefix_len = path.len();
                    uri.is(path, self.ignore_uri_case)
                }
                _ => uri.is(path, false),
            };
            if !ok {
                return None;
            }
        }
        if let Some(m) = &self.method
            && !m.is(req.method(), false)
        {
            return None;
        }
        if let Some(m) = &self.scheme
            && !m.is(req.scheme(), false)
        {
            return None;
        }
        if let Some(m) = &self.authority
            && !m.is(req.authority(), false)
        {
            return None;
        }
        for (name, m) in &self.headers {
            match req.header(name) {
                Some(v) if m.is(v, false) => {}
                _ => return None,
            }
        }
        for (name, m) in &self.without_headers {
            if req.header(name).is_some_and(|v| m.is(v, false)) {
                return None;
            }
        }
        if !self.query.is_empty() {
            let query = full
                .iter()
                .position(|b| *b == b'?')
                .map_or(&b""[..], |i| &full[i + 1..]);
            for (name, m) in &self.query {
                let found = query.split(|b| *b == b'&').find_map(|pair| {
                    let mut kv = pair.splitn(2, |b| *b == b'=');
                    let k = kv.next().unwrap_or(b"");
                    (k == name.as_bytes()).then(|| kv.next().unwrap_or(b""))
                });
                let ok = match (found, m) {
                    (Some(_), StrMatch::Exact(e)) if e.is_empty() => true,
                    (Some(v), m) => m.is(v, false),
                    (None, _) => false,
                };
                if !ok {
                    return None;
                }
            }
        }
        Some(prefix_len)
    }
}

impl HttpRoutes {
    /// E4: the first rule with a matching block (or none); `None` = 404.
    #[inline]
    pub fn select(&self, req: &impl RequestView) -> Option<Selected<'_>> {
        self.select_block(req).map(|(selected, _)| selected)
    }

    /// [`HttpRoutes::select`], also saying which match block (an index into the rule's
    /// `match_text`) matched; `None` for a rule without blocks. For `meshentry explain`.
    #[inline]
    pub fn select_block(&self, req: &impl RequestView) -> Option<(Selected<'_>, Option<usize>)> {
        for rule in &*self.rules {
            if rule.matches.is_empty() {
                let prefix_len = usize::from(req.path().starts_with(b"/"));
                return Some((Selected { rule, prefix_len }, None));
            }
            for (block, m) in rule.matches.iter().enumerate() {
                if let Some(prefix_len) = m.check(req) {
                    return Some((Selected { rule, prefix_len }, Some(block)));
                }
            }
        }
        None
    }
}

impl HttpRule {
    /// E5: a weighted random destination of a `route` rule.
    pub fn pick(&self) -> Option<&WeightedDest> {
        match &self.action {
            HttpAction::Route { dests, total } => pick(dests, *total),
            _ => None,
        }
    }
}

fn pick(dests: &[WeightedDest], total: u32) -> Option<&WeightedDest> {
    match dests {
        [] => None,
        [only] => Some(only),
        _ => {
            let mut n = fastrand::u32(0..total.max(1));
            for d in dests {
                if n < d.weight {
                    return Some(d);
                }
                n -= d.weight;
            }
            dests.last()
        }
    }
}

impl RouteTables {
    /// Whether no VirtualService applies to this proxy's HTTP traffic (the common case, which
    /// then costs the data path one branch).
    pub fn http_is_empty(&self) -> bool {
        self.http.is_empty() && self.http_names.is_empty() && self.http_wild.is_empty()
    }

    /// The HTTP rules for a request the registry routed to `routed` (the service and port
    /// number, as [`crate::route::Decision::service_port`] gives them; `None` when it is no
    /// service), `host:port` being what the request named (for E1's port-80 hosts that are
    /// no service).
    pub fn http_for(&self, routed: Option<(&Service, u32)>, host: &str, port: u16) -> Option<&HttpRoutes> {
        if self.http_is_empty() {
            return None;
        }
        match routed {
            Some((service, number)) => self.http.get(&(ServiceKey::of(service), number)).map(|r| &**r),
            None if port == 80 && (!self.http_names.is_empty() || !self.http_wild.is_empty()) => {
                let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
                self.http_names.get(name.as_str()).map(|r| &**r).or_else(|| {
                    self.http_wild
                        .iter()
                        .find(|(w, _)| meshentry_registry::host::covers(w, &name))
                        .map(|(_, r)| &**r)
                })
            }
            None => None,
        }
    }

    /// The HTTP rules replacing the default route of `service:port`, for admin output.
    pub fn http_of(&self, service: &Service, port: u32) -> Option<&HttpRoutes> {
        self.http.get(&(ServiceKey::of(service), port)).map(|r| &**r)
    }

    /// E1's port-80 virtual hosts for names that are no service, for admin output.
    pub fn http_by_name(&self) -> impl Iterator<Item = (&str, &HttpRoutes)> {
        self.http_names
            .iter()
            .map(|(h, r)| (&**h, &**r))
            .chain(self.http_wild.iter().map(|(h, r)| (&**h, &**r)))
    }

    /// Whether a service port has TLS rules (then a connection to it must be read for its SNI).
    pub fn has_tls(&self, service: &Service, port: u32) -> bool {
        self.l4
            .get(&(ServiceKey::of(service), port))
            .is_some_and(|r| !r.tls.is_empty())
    }

    /// E7: the destination the TLS (`sni` given) or TCP rules pick for a connection to `dst`
    /// that the registry gave to `service:port`. `None`: no rule applies (the default route).
    #[inline]
    pub fn l4_pick(&self, service: &Service, port: u32, dst: IpAddr, sni: Option<&str>) -> Option<&WeightedDest> {
        self.l4_rule(service, port, dst, sni)?.pick()
    }

    /// E7: the TLS or TCP rule [`RouteTables::l4_pick`] picks its destination from.
    #[inline]
    pub fn l4_rule(&self, service: &Service, port: u32, dst: IpAddr, sni: Option<&str>) -> Option<L4Hit<'_>> {
        self.l4_rule_at(service, port, Some(dst), sni)
    }

    /// [`RouteTables::l4_rule`] for a connection whose destination address may be unknown
    /// (`None`: a CONNECT to a name that did not resolve), which no `destinationSubnets` match.
    pub fn l4_rule_at(
        &self,
        service: &Service,
        port: u32,
        dst: Option<IpAddr>,
        sni: Option<&str>,
    ) -> Option<L4Hit<'_>> {
        if self.l4.is_empty() {
            return None;
        }
        let routes = self.l4.get(&(ServiceKey::of(service), port))?;
        if let Some(sni) = sni {
            let sni = sni.to_ascii_lowercase();
            if let Some(rule) = routes.tls.iter().find(|r| r.applies(&sni, dst)) {
                return Some(L4Hit {
                    vs: &routes.vs,
                    kind: L4Kind::Tls,
                    index: rule.index,
                    dests: &rule.dests,
                    total: rule.total,
                });
            }
        }
        let rule = routes.tcp.iter().find(|r| r.applies(dst))?;
        Some(L4Hit {
            vs: &routes.vs,
            kind: L4Kind::Tcp,
            index: rule.index,
            dests: &rule.dests,
            total: rule.total,
        })
    }

    /// Whether a rule for `service:port` matches on `destinationSubnets`: only then does a
    /// CONNECT to a name need the name's address to be routed.
    pub fn l4_needs_address(&self, service: &Service, port: u32) -> bool {
        self.l4
            .get(&(ServiceKey::of(service), port))
            .is_some_and(|r| r.has_subnets())
    }

    /// `namespace/name` of the VirtualService whose TLS or TCP rules apply to `service:port`.
    pub fn l4_of(&self, service: &Service, port: u32) -> Option<&str> {
        self.l4.get(&(ServiceKey::of(service), port)).map(|r| &*r.vs)
    }
}

/// Which list an L4 rule is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Kind {
    Tls,
    Tcp,
}

impl L4Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            L4Kind::Tls => "tls",
            L4Kind::Tcp => "tcp",
        }
    }
}

/// The TLS or TCP rule that applies to a connection (E7).
pub struct L4Hit<'a> {
    /// `namespace/name` of the VirtualService.
    pub vs: &'a str,
    pub kind: L4Kind,
    /// Position in the VirtualService's `tls` or `tcp` list.
    pub index: usize,
    pub dests: &'a [WeightedDest],
    /// The sum of the weights.
    pub total: u32,
}

impl<'a> L4Hit<'a> {
    /// E5: a weighted random destination of the rule; `None` when it has none (then the
    /// connection takes the default route).
    pub fn pick(&self) -> Option<&'a WeightedDest> {
        pick(self.dests, self.total)
    }
}

// === Compilation ===

/// The cluster of port `u32` of a service, or of its subset `Some(name)`.
pub type ClusterOf<'a> = dyn Fn(&Service, u32, Option<&str>) -> Option<Arc<Cluster>> + 'a;

/// Header (or query parameter) names with their matchers.
type NamedMatches = Box<[(Box<str>, StrMatch)]>;

/// What compiling needs from the snapshot being built.
pub struct CompileInput<'a> {
    pub registry: &'a Registry,
    pub view: View<'a, 'a>,
    /// The proxy's namespace and labels (E3 visibility, `sourceLabels`).
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// [`MESH`], or `namespace/name` of the gateway this proxy is.
    pub gateway: &'a str,
    /// The cluster of a service port, and of a subset of it.
    pub cluster: &'a ClusterOf<'a>,
}

/// One VirtualService that applies to this proxy, hosts expanded.
struct Applicable<'a> {
    id: Box<str>,
    namespace: &'a str,
    hosts: Vec<String>,
    spec: &'a VirtualService,
}

impl RouteTables {
    /// E1-E7: compiles the VirtualServices among `resources` that bind to `input.gateway` and
    /// are visible to the proxy's namespace.
    pub fn compile(resources: &[&Resource], input: &CompileInput<'_>) -> RouteTables {
        let mut tables = RouteTables::default();
        let vss = applicable(resources, input);
        if vss.is_empty() {
            return tables;
        }
        let mut ctx = Ctx::new(resources, input);
        // E3: the first VirtualService naming a host exactly owns it; wildcards are kept per
        // host text, the first VirtualService with that text owning it.
        let mut exact: FxHashMap<String, usize> = FxHashMap::default();
        let mut wild: Vec<(String, usize)> = Vec::new();
        for (i, vs) in vss.iter().enumerate() {
            for h in &vs.hosts {
                if h.starts_with('*') {
                    if !wild.iter().any(|(w, _)| w == h) {
                        wild.push((h.clone(), i));
                    }
                } else {
                    exact.entry(h.clone()).or_insert(i);
                }
            }
        }
        let mut claimed = vec![false; vss.len()];
        let mut host_used: FxHashMap<String, bool> = FxHashMap::default();
        for service in input.view.services() {
            let name = service.host.to_ascii_lowercase();
            let owner = exact
                .get(&name)
                .copied()
                .or_else(|| wild.iter().find(|(w, _)| *w == name).map(|(_, i)| *i))
                .map(|i| (i, name.clone()))
                .or_else(|| {
                    // The most specific wildcard covering the service host (E3).
                    wild.iter()
                        .filter(|(w, _)| {
                            if name.starts_with('*') {
                                host::subset_of(&name, w)
                            } else {
                                meshentry_registry::host::covers(w, &name)
                            }
                        })
                        .max_by_key(|(w, i)| (w.len(), std::cmp::Reverse(*i)))
                        .map(|(w, i)| (*i, w.clone()))
                });
            let Some((owner, via)) = owner else { continue };
            claimed[owner] = true;
            host_used.insert(via, true);
            let vs = &vss[owner];
            let key = ServiceKey::of(service);
            for port in &service.ports {
                let p = port.protocol;
                if p.is_http() || p == meshentry_registry::Protocol::Unset {
                    let rules = ctx.http_rules(vs, port.number);
                    if !rules.is_empty() {
                        tables.http.insert(
                            (key, port.number),
                            Arc::new(HttpRoutes {
                                vs: vs.id.clone(),
                                rules: rules.into(),
                            }),
                        );
                    }
                }
                let (mut tls, tcp) = ctx.l4_rules(vs, port.number);
                // Istio builds SNI filter chains from `tls` rules for ports declared TLS or
                // HTTPS only (pilot/pkg/networking/core/tls.go,
                // buildSidecarOutboundTLSFilterChainOpts); on any other port they never match.
                if !p.is_tls() {
                    tls.clear();
                }
                if !tls.is_empty() || !tcp.is_empty() {
                    tables.l4.insert(
                        (key, port.number),
                        Arc::new(L4Routes {
                            vs: vs.id.clone(),
                            tls: tls.into(),
                            tcp: tcp.into(),
                        }),
                    );
                }
            }
        }
        // E1: hosts that are no service get a virtual host on port 80.
        for (i, vs) in vss.iter().enumerate() {
            for h in &vs.hosts {
                if host_used.contains_key(h) || input.view.services().iter().any(|s| host::matches(&s.host, h)) {
                    continue;
                }
                let owner = if h.starts_with('*') {
                    wild.iter().find(|(w, _)| w == h).map(|(_, o)| *o)
                } else {
                    exact.get(h).copied()
                };
                if owner != Some(i) {
                    continue;
                }
                let rules = ctx.http_rules(vs, 80);
                if rules.is_empty() {
                    continue;
                }
                claimed[i] = true;
                let routes = Arc::new(HttpRoutes {
                    vs: vs.id.clone(),
                    rules: rules.into(),
                });
                if h.starts_with('*') {
                    tables.http_wild.push((h.clone().into(), routes));
                } else {
                    tables.http_names.insert(h.clone().into(), routes);
                }
            }
        }
        // Most specific wildcard first.
        tables.http_wild.sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));
        for (i, vs) in vss.iter().enumerate() {
            if !claimed[i] {
                ctx.warnings.push(format!(
                    "VirtualService {}: every host ({}) is claimed by an older VirtualService or has no route for this proxy",
                    vs.id,
                    vs.hosts.join(", ")
                ));
            }
        }
        ctx.warnings.sort();
        ctx.warnings.dedup();
        tables.warnings = ctx.warnings;
        tables
    }
}

/// A gateway server host (F2): `namespace/dnsName`, `namespace` being `*` (any, the default),
/// or a namespace (`.` already resolved to the gateway's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHost {
    pub namespace: String,
    pub host: String,
}

impl ServerHost {
    /// F2: `h` = `*/h`; `./h` = the gateway's namespace; `ns/h`.
    pub fn parse(text: &str, gateway_ns: &str) -> ServerHost {
        let (ns, host) = match text.split_once('/') {
            Some((".", h)) => (gateway_ns, h),
            Some((ns, h)) => (ns, h),
            None => ("*", text),
        };
        ServerHost {
            namespace: ns.to_string(),
            host: host.to_ascii_lowercase(),
        }
    }

    /// Whether a VirtualService in `vs_ns` may bind host `vs_host` through this server host;
    /// `Some(the virtual host name)`: the more specific of the two (F2/F3).
    pub fn bind(&self, vs_ns: &str, vs_host: &str) -> Option<String> {
        if self.namespace != "*" && self.namespace != vs_ns {
            return None;
        }
        if !host::matches(vs_host, &self.host) {
            return None;
        }
        Some(if host::subset_of(vs_host, &self.host) {
            vs_host.to_string()
        } else {
            self.host.clone()
        })
    }

    /// Whether a requested name (`Host` or SNI) is among this server's hosts.
    pub fn covers(&self, name: &str) -> bool {
        meshentry_registry::host::covers(&self.host, name)
    }
}

/// The routes of one gateway port (F3): a virtual host per name where a bound VirtualService's
/// hosts meet the server's, each with the rules of every such VirtualService concatenated (E3:
/// gateways merge), and the TLS/TCP rules of those VirtualServices in order.
#[derive(Default)]
pub struct GatewayRoutes {
    exact: FxHashMap<Box<str>, Arc<HttpRoutes>>,
    /// Most specific first.
    wild: Vec<(Box<str>, Arc<HttpRoutes>)>,
    l4: Vec<Arc<L4Routes>>,
}

impl GatewayRoutes {
    /// The virtual host for `host` (exact, then the most specific wildcard); `None` = 404.
    pub fn http(&self, host: &str) -> Option<&HttpRoutes> {
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        self.exact
            .get(name.as_str())
            .or_else(|| {
                self.wild
                    .iter()
                    .find(|(w, _)| meshentry_registry::host::covers(w, &name))
                    .map(|(_, r)| r)
            })
            .map(|r| &**r)
    }

    /// Every virtual host, for admin output and logs.
    pub fn vhosts(&self) -> impl Iterator<Item = (&str, &HttpRoutes)> {
        self.exact
            .iter()
            .map(|(h, r)| (&**h, &**r))
            .chain(self.wild.iter().map(|(h, r)| (&**h, &**r)))
    }

    /// E7 at a gateway: the first TLS rule (by SNI) or TCP rule of the bound VirtualServices
    /// that applies to a connection to `dst`.
    /// `dst`: the address the connection was accepted on (`None` on a unix socket, which no
    /// `destinationSubnets` match).
    pub fn l4_pick(&self, dst: Option<IpAddr>, sni: Option<&str>) -> Option<&WeightedDest> {
        if let Some(sni) = sni.map(str::to_ascii_lowercase) {
            for routes in &self.l4 {
                if let Some(rule) = routes.tls.iter().find(|r| r.applies(&sni, dst)) {
                    return pick(&rule.dests, rule.total);
                }
            }
        }
        for routes in &self.l4 {
            if let Some(rule) = routes.tcp.iter().find(|r| r.applies(dst)) {
                return pick(&rule.dests, rule.total);
            }
        }
        None
    }
}

impl RouteTables {
    /// F2/F3: the routes of each server of the gateway `input.gateway` on its port `port`,
    /// `servers` holding each one's hosts; returns them in the same order, and the warnings.
    ///
    /// Istio gives every HTTPS server its own route configuration
    /// (`https.PORT.PORTNAME.GATEWAY.NS`, pilot/pkg/model/gateway.go `gatewayRDSRouteName`)
    /// holding only the virtual hosts its own hosts make, so that what a client may reach
    /// depends on the server whose TLS it came through. Plain HTTP servers on one port share
    /// one (`http.PORT`): the caller passes them as one host list.
    pub fn compile_gateway(
        resources: &[&Resource],
        input: &CompileInput<'_>,
        port: u32,
        servers: &[&[ServerHost]],
    ) -> (Vec<GatewayRoutes>, Vec<String>) {
        let vss = applicable(resources, input);
        let mut ctx = Ctx::new(resources, input);
        let mut bound_anywhere = vec![false; vss.len()];
        let mut all = Vec::with_capacity(servers.len());
        for server_hosts in servers {
            let mut out = GatewayRoutes::default();
            // Virtual host name -> the VirtualServices (indexes, in order) bound to it.
            let mut vhosts: Vec<(String, Vec<usize>)> = Vec::new();
            let mut bound = vec![false; vss.len()];
            for (i, vs) in vss.iter().enumerate() {
                for h in &vs.hosts {
                    for sh in *server_hosts {
                        let Some(name) = sh.bind(vs.namespace, h) else { continue };
                        bound[i] = true;
                        match vhosts.iter_mut().find(|(n, _)| *n == name) {
                            Some((_, list)) if !list.contains(&i) => list.push(i),
                            Some(_) => {}
                            None => vhosts.push((name, vec![i])),
                        }
                    }
                }
            }
            for (name, list) in vhosts {
                let mut rules = Vec::new();
                let mut names = Vec::new();
                for &i in &list {
                    let r = ctx.http_rules(&vss[i], port);
                    if !r.is_empty() {
                        names.push(vss[i].id.to_string());
                        rules.extend(r);
                    }
                }
                if rules.is_empty() {
                    continue;
                }
                let routes = Arc::new(HttpRoutes {
                    vs: names.join(",").into(),
                    rules: rules.into(),
                });
                if name.starts_with('*') {
                    out.wild.push((name.into(), routes));
                } else {
                    out.exact.insert(name.into(), routes);
                }
            }
            out.wild.sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));
            for (i, vs) in vss.iter().enumerate() {
                if !bound[i] {
                    continue;
                }
                bound_anywhere[i] = true;
                let (tls, tcp) = ctx.l4_rules(vs, port);
                if !tls.is_empty() || !tcp.is_empty() {
                    out.l4.push(Arc::new(L4Routes {
                        vs: vs.id.clone(),
                        tls: tls.into(),
                        tcp: tcp.into(),
                    }));
                }
            }
            all.push(out);
        }
        for (i, vs) in vss.iter().enumerate() {
            if !bound_anywhere[i] {
                ctx.warnings.push(format!(
                    "VirtualService {}: bound to gateway {} but none of its hosts ({}) is among port {port}'s server hosts",
                    vs.id,
                    input.gateway,
                    vs.hosts.join(", ")
                ));
            }
        }
        ctx.warnings.sort();
        ctx.warnings.dedup();
        (all, ctx.warnings)
    }
}

/// E2/E3: the VirtualServices bound to the gateway and visible to the namespace, in Istio's
/// order: own namespace, exported to it by name, public; oldest first.
fn applicable<'a>(resources: &[&'a Resource], input: &CompileInput<'_>) -> Vec<Applicable<'a>> {
    let mut vss: Vec<(&'a Resource, &'a VirtualService, u8)> = resources
        .iter()
        .filter(|r| r.valid)
        .filter_map(|r| match &r.spec {
            Spec::VirtualService(vs) => Some((*r, vs)),
            _ => None,
        })
        // A delegate (no hosts) is reachable only through a root rule (E6).
        .filter(|(_, vs)| !vs.hosts.is_empty())
        .filter(|(r, vs)| binds(&vs.gateways, &r.namespace, input.gateway))
        .filter_map(|(r, vs)| export_rank(&vs.export_to, &r.namespace, input.namespace).map(|g| (r, vs, g)))
        .collect();
    vss.sort_by(|a, b| {
        let key = |(r, _, g): &(&Resource, &VirtualService, u8)| (r.namespace != input.namespace, *g);
        key(a).cmp(&key(b)).then_with(|| a.0.age_key().cmp(&b.0.age_key()))
    });
    vss.into_iter()
        .map(|(r, vs, _)| Applicable {
            id: format!("{}/{}", r.namespace, r.name()).into(),
            namespace: &r.namespace,
            hosts: vs
                .hosts
                .iter()
                .map(|h| input.registry.expand_host(h, &r.namespace))
                .collect(),
            spec: vs,
        })
        .collect()
}

/// E2: whether `gateways` (empty = `[mesh]`) names `gateway`.
fn binds(gateways: &[String], vs_ns: &str, gateway: &str) -> bool {
    if gateways.is_empty() {
        return gateway == MESH;
    }
    gateways.iter().any(|g| resolve_gateway(g, vs_ns) == gateway)
}

/// E2: `mesh`; `ns/gw`; `./gw` and bare `gw` in the VirtualService's namespace; legacy
/// `gw.ns.svc.cluster.local` = `ns/gw`.
pub fn resolve_gateway(name: &str, vs_ns: &str) -> String {
    if name == MESH {
        return MESH.into();
    }
    if let Some((ns, gw)) = name.split_once('/') {
        let ns = if ns == "." { vs_ns } else { ns };
        return format!("{ns}/{gw}");
    }
    if let Some((gw, rest)) = name.split_once('.') {
        let ns = rest.split('.').next().unwrap_or(vs_ns);
        return format!("{ns}/{gw}");
    }
    format!("{vs_ns}/{name}")
}

/// E3: the VirtualService's exportTo (default `*`): `None` when `proxy_ns` does not see it,
/// else 0 (by `.` or by name) or 1 (public).
fn export_rank(export_to: &[String], own: &str, proxy_ns: &str) -> Option<u8> {
    if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
        return Some(1);
    }
    export_to
        .iter()
        .any(|e| e == proxy_ns || (e == "." && own == proxy_ns))
        .then_some(0)
}

/// Every valid VirtualService by (namespace, name): where E6 looks up a `delegate`.
fn vs_by_name<'r>(resources: &[&'r Resource]) -> FxHashMap<(&'r str, &'r str), &'r Resource> {
    resources
        .iter()
        .filter(|r| r.valid && matches!(r.spec, Spec::VirtualService(_)))
        .map(|r| ((r.namespace.as_str(), r.name()), *r))
        .collect()
}

/// E6 (Istio `mergeHTTPRoute`): delegate rule `sub` (of a VirtualService in `sub_ns`) under
/// root rule `root` (in `root_ns`): the matches merged, and what `sub` leaves unset taken
/// from `root`. `None` when the matches conflict.
fn merge_http_route(
    root: &HttpRoute,
    root_ns: &str,
    sub: &HttpRoute,
    sub_ns: &str,
    registry: &Registry,
) -> Option<HttpRoute> {
    let matches = merge_matches(&root.r#match, root_ns, &sub.r#match, sub_ns)?;
    let mut out = sub.clone();
    out.r#match = matches;
    out.delegate = None;
    out.name = match (root.name.is_empty(), sub.name.is_empty()) {
        (_, true) => root.name.clone(),
        (true, false) => sub.name.clone(),
        (false, false) => format!("{}-{}", root.name, sub.name),
    };
    // Short names in what comes from the root are the root's: expand them before the rule
    // is compiled relative to the delegate's namespace.
    let root_dest = |d: &Destination| Destination {
        host: registry.expand_host(&d.host, root_ns),
        ..d.clone()
    };
    // What the delegate's rule leaves unset, the root's gives.
    fill(&mut out.rewrite, &root.rewrite);
    fill(&mut out.direct_response, &root.direct_response);
    fill(&mut out.timeout, &root.timeout);
    fill(&mut out.retries, &root.retries);
    fill(&mut out.fault, &root.fault);
    if out.mirror.is_none() {
        out.mirror = root.mirror.as_ref().map(root_dest);
    }
    if out.legacy_mirror_percent().is_none() {
        out.mirror_percent = root.mirror_percent;
        out.mirror_percent_proto_name = root.mirror_percent_proto_name;
    }
    fill(&mut out.mirror_percentage, &root.mirror_percentage);
    fill(&mut out.cors_policy, &root.cors_policy);
    if out.mirrors.is_empty() {
        out.mirrors = root.mirrors.clone();
        for m in &mut out.mirrors {
            m.destination = m.destination.as_ref().map(root_dest);
        }
    }
    fill(&mut out.headers, &root.headers);
    Some(out)
}

fn fill<T: Clone>(field: &mut Option<T>, root: &Option<T>) {
    if field.is_none() {
        field.clone_from(root);
    }
}

/// E6 (Istio `mergeHTTPMatchRequests`): every block of the delegate rule ANDed with every
/// root block it does not conflict with; `None` (conflict) when some delegate block fits no
/// root block. Gateway names come back resolved (`ns/name`), since the two sides resolve
/// them in different namespaces.
fn merge_matches(
    root: &[HttpMatchRequest],
    root_ns: &str,
    sub: &[HttpMatchRequest],
    sub_ns: &str,
) -> Option<Vec<HttpMatchRequest>> {
    let resolved = |m: &HttpMatchRequest, ns: &str| HttpMatchRequest {
        gateways: m.gateways.iter().map(|g| resolve_gateway(g, ns)).collect(),
        ..m.clone()
    };
    if root.is_empty() {
        return Some(sub.iter().map(|m| resolved(m, sub_ns)).collect());
    }
    if sub.is_empty() {
        return Some(root.iter().map(|m| resolved(m, root_ns)).collect());
    }
    let mut out = Vec::new();
    for leaf in sub {
        let leaf = resolved(leaf, sub_ns);
        let mut found = false;
        for r in root {
            let r = resolved(r, root_ns);
            if match_conflict(&r, &leaf) {
                continue;
            }
            out.push(merge_match(&r, &leaf));
            found = true;
        }
        if !found {
            return None;
        }
    }
    Some(out)
}

/// Istio `mergeHTTPMatchRequest`: `leaf`, with what it leaves unset taken from `root`; for
/// keyed conditions (headers, query parameters, source labels) the leaf's value wins.
fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = leaf.clone();
    out.name = match (root.name.is_empty(), leaf.name.is_empty()) {
        (_, true) => root.name.clone(),
        (true, false) => leaf.name.clone(),
        (false, false) => format!("{}-{}", root.name, leaf.name),
    };
    for (mine, theirs) in [
        (&mut out.uri, &root.uri),
        (&mut out.scheme, &root.scheme),
        (&mut out.method, &root.method),
        (&mut out.authority, &root.authority),
    ] {
        if mine.is_none() {
            mine.clone_from(theirs);
        }
    }
    let under = |root: &BTreeMap<String, StringMatch>, leaf: &BTreeMap<String, StringMatch>| {
        let mut m = root.clone();
        m.extend(leaf.iter().map(|(k, v)| (k.clone(), v.clone())));
        m
    };
    out.headers = under(&root.headers, &leaf.headers);
    out.without_headers = under(&root.without_headers, &leaf.without_headers);
    out.query_params = under(&root.query_params, &leaf.query_params);
    let mut labels = root.source_labels.clone();
    labels.extend(leaf.source_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    out.source_labels = labels;
    if out.port == 0 {
        out.port = root.port;
    }
    if out.source_namespace.is_empty() {
        out.source_namespace.clone_from(&root.source_namespace);
    }
    if out.gateways.is_empty() {
        out.gateways.clone_from(&root.gateways);
    }
    if out.stat_prefix.is_empty() {
        out.stat_prefix.clone_from(&root.stat_prefix);
    }
    out
}

/// Istio `hasConflict`: whether delegate block `leaf` can select traffic that root block
/// `root` does not (Istio requires the delegate's match to be a subset of the root's).
fn match_conflict(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs.iter().any(|(r, l)| string_match_conflict(r.as_ref(), l.as_ref())) {
        return true;
    }
    let keyed = |r: &BTreeMap<String, StringMatch>, l: &BTreeMap<String, StringMatch>| {
        l.iter().any(|(k, v)| string_match_conflict(r.get(k), Some(v)))
    };
    if keyed(&root.headers, &leaf.headers)
        || keyed(&root.without_headers, &leaf.without_headers)
        || keyed(&root.query_params, &leaf.query_params)
    {
        return true;
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    if root.port > 0 && leaf.port > 0 && root.port != leaf.port {
        return true;
    }
    if !root.source_namespace.is_empty() && leaf.source_namespace != root.source_namespace {
        return true;
    }
    if leaf
        .source_labels
        .iter()
        .any(|(k, v)| root.source_labels.get(k).is_some_and(|rv| rv != v))
    {
        return true;
    }
    // The root's gateways must be a superset of the leaf's.
    !root.gateways.is_empty() && !leaf.gateways.is_empty() && leaf.gateways.iter().any(|g| !root.gateways.contains(g))
}

/// Istio `stringMatchConflict`: no conflict when either side is unset; otherwise only an
/// exact or prefix inside the root's prefix, or the root's exact itself, fits. A regex on
/// either side always conflicts (regex inclusion is undecidable here), and, as in Istio, an
/// empty string counts as unset within a match.
fn string_match_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    let set = |s: &Option<String>| s.as_deref().filter(|v| !v.is_empty()).map(str::to_owned);
    let (r_exact, r_prefix, r_regex) = (set(&root.exact), set(&root.prefix), set(&root.regex));
    let (l_exact, l_prefix, l_regex) = (set(&leaf.exact), set(&leaf.prefix), set(&leaf.regex));
    if r_regex.is_some() && (l_regex.is_some() || l_prefix.is_some() || l_exact.is_some()) {
        return true;
    }
    if l_regex.is_some() && (r_regex.is_some() || r_prefix.is_some() || r_exact.is_some()) {
        return true;
    }
    if let Some(exact) = r_exact {
        return l_prefix.is_some() || l_exact.as_deref() != Some(exact.as_str());
    }
    if let Some(prefix) = r_prefix {
        if let Some(lp) = l_prefix {
            return !lp.starts_with(&prefix);
        }
        if let Some(le) = l_exact {
            return !le.starts_with(&prefix);
        }
    }
    true
}

struct Ctx<'i, 'a> {
    input: &'i CompileInput<'a>,
    ids: FxHashMap<ServiceKey, ServiceId>,
    /// Every valid VirtualService by (namespace, name), where `delegate`s are looked up (E6).
    by_name: FxHashMap<(&'i str, &'i str), &'i Resource>,
    warnings: Vec<String>,
}

impl<'i, 'a> Ctx<'i, 'a> {
    fn new(resources: &[&'i Resource], input: &'i CompileInput<'a>) -> Self {
        Ctx {
            input,
            ids: service_ids(input),
            by_name: vs_by_name(resources),
            warnings: Vec::new(),
        }
    }
}

impl Ctx<'_, '_> {
    /// E4: the rules of `vs` for listener port `port`; blocks whose static conditions fail
    /// are dropped, and a rule left without blocks with it.
    fn http_rules(&mut self, vs: &Applicable<'_>, port: u32) -> Vec<HttpRule> {
        let mut out = Vec::new();
        for (i, rule) in vs.spec.http.iter().enumerate() {
            match &rule.delegate {
                None => self.push_http_rule(&mut out, vs, i, rule, None, port),
                Some(d) => self.delegated_rules(&mut out, vs, i, rule, d, port),
            }
        }
        out
    }

    /// E6: the rules of the delegate VirtualService `d` that root rule `i` hands its traffic
    /// to, each merged with the root rule (matches ANDed, unset fields inherited) here, at
    /// compile time, so the data path sees one flat rule list. Like Istio, a missing,
    /// invisible or hosted delegate drops the root rule, and a delegate rule that conflicts
    /// with the root's match or delegates again is dropped (one level only).
    fn delegated_rules(
        &mut self,
        out: &mut Vec<HttpRule>,
        root: &Applicable<'_>,
        i: usize,
        rule: &HttpRoute,
        d: &meshentry_api::model::Delegate,
        port: u32,
    ) {
        let ns = if d.namespace.is_empty() {
            root.namespace
        } else {
            d.namespace.as_str()
        };
        let id = format!("{ns}/{}", d.name);
        let found = self.by_name.get(&(ns, d.name.as_str())).copied();
        let Some((res, spec)) = found.and_then(|r| match &r.spec {
            Spec::VirtualService(vs) => Some((r, vs)),
            _ => None,
        }) else {
            self.warnings.push(format!(
                "VirtualService {}: http[{i}] delegates to {id}, which does not exist (or is invalid); the rule is skipped",
                root.id
            ));
            return;
        };
        if !spec.hosts.is_empty() {
            self.warnings.push(format!(
                "VirtualService {}: http[{i}] delegates to {id}, which has hosts and so is no delegate; the rule is skipped",
                root.id
            ));
            return;
        }
        if export_rank(&spec.export_to, ns, root.namespace).is_none() {
            self.warnings.push(format!(
                "VirtualService {}: http[{i}] delegates to {id}, which is not exported to {}; the rule is skipped",
                root.id, root.namespace
            ));
            return;
        }
        // The delegate's own destinations and gateway names are relative to its namespace.
        let delegate = Applicable {
            id: id.as_str().into(),
            namespace: &res.namespace,
            hosts: Vec::new(),
            spec,
        };
        for (j, sub) in spec.http.iter().enumerate() {
            if sub.delegate.is_some() {
                self.warnings.push(format!(
                    "VirtualService {id}: http[{j}] delegates again, but delegation is one level only; the rule is skipped"
                ));
                continue;
            }
            let Some(mut merged) = merge_http_route(rule, root.namespace, sub, ns, self.input.registry) else {
                self.warnings.push(format!(
                    "VirtualService {id}: http[{j}]'s match is not within the match of {} http[{i}]; the rule is skipped",
                    root.id
                ));
                continue;
            };
            if merged.name.is_empty() {
                merged.name = format!("#{i}.{j}");
            }
            let label = format!("{id} http[{j}]");
            self.push_http_rule(out, &delegate, i, &merged, Some(label.into()), port);
        }
    }

    /// Compiles one rule into `out` unless its static conditions exclude it (E4).
    fn push_http_rule(
        &mut self,
        out: &mut Vec<HttpRule>,
        vs: &Applicable<'_>,
        i: usize,
        rule: &HttpRoute,
        delegate: Option<Box<str>>,
        port: u32,
    ) {
        let mut matches = Vec::new();
        let mut match_text = Vec::new();
        let mut kept_any = rule.r#match.is_empty();
        for m in &rule.r#match {
            if !self.static_ok(m.port, &m.source_labels, &m.gateways, vs.namespace, port) {
                continue;
            }
            kept_any = true;
            match compile_match(m) {
                Ok(compiled) => {
                    matches.push(compiled);
                    match_text.push(describe_match(m));
                }
                Err(e) => self.warnings.push(format!(
                    "VirtualService {}: http[{i}]: {e}; the block is skipped",
                    vs.id
                )),
            }
        }
        if !kept_any || (!rule.r#match.is_empty() && matches.is_empty()) {
            return;
        }
        let mut compiled = self.http_rule(vs, i, rule, (matches, match_text), port);
        compiled.delegate = delegate;
        out.push(compiled);
    }

    /// E4: `port`, `sourceLabels` and `gateways` of a match block, decided for this proxy.
    fn static_ok(
        &self,
        match_port: u32,
        source_labels: &BTreeMap<String, String>,
        gateways: &[String],
        vs_ns: &str,
        port: u32,
    ) -> bool {
        if match_port != 0 && match_port != port {
            return false;
        }
        if !gateways.is_empty() {
            // A block's gateways override the VirtualService's (E2), and then sourceLabels
            // are not consulted.
            return gateways.iter().any(|g| resolve_gateway(g, vs_ns) == self.input.gateway);
        }
        source_labels.iter().all(|(k, v)| self.input.labels.get(k) == Some(v))
    }

    fn http_rule(
        &mut self,
        vs: &Applicable<'_>,
        i: usize,
        rule: &HttpRoute,
        (matches, match_text): (Vec<HttpMatch>, Vec<String>),
        port: u32,
    ) -> HttpRule {
        let match_text = match_text.into();
        let name: Box<str> = if rule.name.is_empty() {
            format!("#{i}").into()
        } else {
            rule.name.as_str().into()
        };
        let action = if let Some(r) = &rule.redirect {
            HttpAction::Redirect(Redirect {
                uri: (!r.uri.is_empty()).then(|| r.uri.as_str().into()),
                authority: (!r.authority.is_empty()).then(|| r.authority.as_str().into()),
                scheme: (!r.scheme.is_empty()).then(|| r.scheme.as_str().into()),
                port: match (r.port, r.derive_port) {
                    (Some(p), _) => RedirectPort::Fixed(p),
                    (None, Some(RedirectPortSelection::FromRequestPort)) => RedirectPort::FromRequest,
                    _ => RedirectPort::Unchanged,
                },
                status: if r.redirect_code == 0 {
                    301
                } else {
                    u16::try_from(r.redirect_code).unwrap_or(301)
                },
            })
        } else if let Some(d) = &rule.direct_response {
            let body = d.body.as_ref().and_then(|b| b.string.clone()).unwrap_or_default();
            HttpAction::Direct {
                status: u16::try_from(d.status).unwrap_or(200),
                body: Bytes::from(body),
            }
        } else {
            let mut dests = self.weighted(vs, &rule.route, port);
            if rule.route.len() <= 1
                && let Some(only) = dests.first_mut()
            {
                only.weight = 1;
            }
            let (dests, total) = totalled(dests);
            HttpAction::Route { dests, total }
        };
        let rewrite = rule.rewrite.as_ref().map(|r| Rewrite {
            uri: (!r.uri.is_empty()).then(|| r.uri.as_str().into()),
            uri_regex: r
                .uri_regex_rewrite
                .as_ref()
                .and_then(|rr| match Regex::new(&rr.r#match) {
                    Ok(re) => Some((re, envoy_substitution(&rr.rewrite))),
                    Err(e) => {
                        self.warnings
                            .push(format!("VirtualService {}: http[{i}] uriRegexRewrite: {e}", vs.id));
                        None
                    }
                }),
            authority: (!r.authority.is_empty())
                .then(|| HeaderValue::from_str(&r.authority).ok())
                .flatten(),
        });
        let timeout = rule.timeout.as_ref().and_then(|d| d.parse().ok());
        let retry = rule.retries.as_ref().map(Retry::compile).unwrap_or_default();
        let fault = rule.fault.as_ref().map(|f| Fault {
            delay: f.delay.as_ref().and_then(|d| {
                let pct = d
                    .percentage
                    .as_ref()
                    .map(|p| p.value)
                    .or((d.percent > 0).then_some(f64::from(d.percent)))
                    .unwrap_or(100.0);
                Some((d.fixed_delay.as_ref()?.parse().ok()?, pct))
            }),
            abort: f.abort.as_ref().and_then(|a| {
                let pct = a.percentage.as_ref().map_or(100.0, |p| p.value);
                Some((u16::try_from(a.http_status?).ok()?, pct))
            }),
        });
        let mut mirrors = Vec::new();
        if let Some(m) = &rule.mirror {
            let percent = rule
                .mirror_percentage
                .as_ref()
                .map(|p| p.value)
                .or(rule.legacy_mirror_percent().map(f64::from))
                .unwrap_or(100.0);
            mirrors.push(Mirror {
                target: self.target(vs, m, port),
                percent,
            });
        }
        for m in &rule.mirrors {
            if let Some(d) = &m.destination {
                mirrors.push(Mirror {
                    target: self.target(vs, d, port),
                    percent: m.percentage.as_ref().map_or(100.0, |p| p.value),
                });
            }
        }
        let headers = rule
            .headers
            .as_ref()
            .map(|h| self.header_edits(vs, h))
            .unwrap_or_default();
        let simple = matches!(&action, HttpAction::Route { dests, .. } if dests.iter().all(|d| d.headers.is_empty()))
            && rewrite.is_none()
            && timeout.is_none()
            && retry.is_connect_only()
            && fault.is_none()
            && mirrors.is_empty()
            && headers.is_empty();
        HttpRule {
            name,
            index: i,
            delegate: None,
            matches: matches.into(),
            match_text,
            action,
            rewrite,
            timeout,
            retry,
            fault,
            mirrors: mirrors.into(),
            headers,
            simple,
        }
    }

    fn header_edits(&mut self, vs: &Applicable<'_>, h: &Headers) -> HeaderEdits {
        HeaderEdits {
            request: h.request.as_ref().map(|o| self.header_ops(vs, o)).unwrap_or_default(),
            response: h.response.as_ref().map(|o| self.header_ops(vs, o)).unwrap_or_default(),
        }
    }

    fn header_ops(&mut self, vs: &Applicable<'_>, ops: &HeaderOperations) -> HeaderOps {
        let mut out = HeaderOps::default();
        let pair = |k: &str, v: &str, warnings: &mut Vec<String>| match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(n), Ok(v)) => Some((n, v)),
            _ => {
                warnings.push(format!(
                    "VirtualService {}: header {k:?}: {v:?} is not a valid header; skipped",
                    vs.id
                ));
                None
            }
        };
        out.set = ops
            .set
            .iter()
            .filter_map(|(k, v)| pair(k, v, &mut self.warnings))
            .collect();
        out.add = ops
            .add
            .iter()
            .filter_map(|(k, v)| pair(k, v, &mut self.warnings))
            .collect();
        out.remove = ops
            .remove
            .iter()
            .filter_map(|k| HeaderName::from_bytes(k.as_bytes()).ok())
            .collect();
        out
    }

    /// E5: a destination's service (E1-expanded host, as this proxy sees it), port (explicit,
    /// else the service's only port, else the listener port) and subset.
    fn target(&mut self, vs: &Applicable<'_>, d: &Destination, listener_port: u32) -> Target {
        let host = self.input.registry.expand_host(&d.host, vs.namespace);
        let Some(service) = self.input.view.lookup_host(&host) else {
            return Target::Missing(format!("{host} is not a service this proxy sees").into());
        };
        let port = match (&d.port, service.ports.as_slice()) {
            (Some(p), _) if p.number != 0 => p.number,
            (_, [only]) => only.number,
            _ => listener_port,
        };
        let subset = (!d.subset.is_empty()).then_some(d.subset.as_str());
        let Some(cluster) = (self.input.cluster)(service, port, subset) else {
            let name = format!("outbound|{port}|{}|{host}", subset.unwrap_or(""));
            self.warnings.push(format!(
                "VirtualService {}: destination {name} does not exist (no such port{}); its requests get 503",
                vs.id,
                if subset.is_some() {
                    " or DestinationRule subset"
                } else {
                    ""
                }
            ));
            return Target::Missing(format!("cluster {name} does not exist").into());
        };
        let Some(&id) = self.ids.get(&(ServiceKey::of(service))) else {
            return Target::Missing(format!("{host} is not in the registry").into());
        };
        Target::Cluster {
            service: id,
            port,
            cluster,
        }
    }

    /// E7: the `tls` and `tcp` rules of `vs` for port `port`.
    fn l4_rules(&mut self, vs: &Applicable<'_>, port: u32) -> (Vec<TlsRule>, Vec<TcpRule>) {
        let mut tls = Vec::new();
        for (index, rule) in vs.spec.tls.iter().enumerate() {
            let matches: Vec<TlsMatch> = rule
                .r#match
                .iter()
                .filter(|m: &&TlsMatchAttributes| {
                    self.static_ok(m.port, &m.source_labels, &m.gateways, vs.namespace, port)
                })
                .map(|m| TlsMatch {
                    sni: m
                        .sni_hosts
                        .iter()
                        .map(|h| self.input.registry.expand_host(h, vs.namespace).into())
                        .collect(),
                    subnets: parse_subnets(&m.destination_subnets),
                })
                .collect();
            if matches.is_empty() {
                continue;
            }
            tls.push(self.l4_rule(vs, index, matches, &rule.route, port));
        }
        let mut tcp = Vec::new();
        for (index, rule) in vs.spec.tcp.iter().enumerate() {
            let matches: Vec<Box<[IpNet]>> = rule
                .r#match
                .iter()
                .filter(|m: &&L4MatchAttributes| {
                    self.static_ok(m.port, &m.source_labels, &m.gateways, vs.namespace, port)
                })
                .map(|m| parse_subnets(&m.destination_subnets))
                .collect();
            if !rule.r#match.is_empty() && matches.is_empty() {
                continue;
            }
            tcp.push(self.l4_rule(vs, index, matches, &rule.route, port));
        }
        (tls, tcp)
    }

    fn l4_rule<M>(
        &mut self,
        vs: &Applicable<'_>,
        index: usize,
        matches: Vec<M>,
        route: &[RouteDestination],
        port: u32,
    ) -> L4Rule<M> {
        let (dests, total) = totalled(self.weighted(vs, route, port));
        L4Rule {
            index,
            matches: matches.into(),
            dests,
            total,
        }
    }

    /// The destinations of a rule of any kind, with their targets and header edits.
    fn weighted<R: RouteDest>(&mut self, vs: &Applicable<'_>, route: &[R], port: u32) -> Vec<WeightedDest> {
        let several = route.len() > 1;
        let mut dests = Vec::new();
        for d in route {
            let (weight, destination, headers) = d.parts();
            let weight = u32::try_from(weight).unwrap_or(0);
            // E5: weights are relative; 0 drops a destination unless it is the only one.
            if several && weight == 0 {
                continue;
            }
            let Some(dest) = destination else { continue };
            dests.push(WeightedDest {
                weight: weight.max(1),
                target: self.target(vs, dest, port),
                headers: headers.map(|h| self.header_edits(vs, h)).unwrap_or_default(),
            });
        }
        dests
    }
}

fn totalled(dests: Vec<WeightedDest>) -> (Box<[WeightedDest]>, u32) {
    let total = dests.iter().map(|d| d.weight).sum();
    (dests.into(), total)
}

/// An HTTP rule's destination or a TLS or TCP rule's, which edits no headers.
trait RouteDest {
    fn parts(&self) -> (i32, Option<&Destination>, Option<&Headers>);
}

impl RouteDest for HttpRouteDestination {
    fn parts(&self) -> (i32, Option<&Destination>, Option<&Headers>) {
        (self.weight, self.destination.as_ref(), self.headers.as_ref())
    }
}

impl RouteDest for RouteDestination {
    fn parts(&self) -> (i32, Option<&Destination>, Option<&Headers>) {
        (self.weight, self.destination.as_ref(), None)
    }
}

fn compile_match(m: &HttpMatchRequest) -> Result<HttpMatch, String> {
    let opt = |s: &Option<StringMatch>| s.as_ref().map(StrMatch::compile).transpose();
    let list = |map: &BTreeMap<String, StringMatch>| -> Result<NamedMatches, String> {
        map.iter()
            .map(|(k, v)| Ok((k.to_ascii_lowercase().into(), StrMatch::compile(v)?)))
            .collect()
    };
    Ok(HttpMatch {
        uri: opt(&m.uri)?.filter(|u| !matches!(u, StrMatch::Present)),
        ignore_uri_case: m.ignore_uri_case,
        scheme: opt(&m.scheme)?.filter(|u| !matches!(u, StrMatch::Present)),
        method: opt(&m.method)?.filter(|u| !matches!(u, StrMatch::Present)),
        authority: opt(&m.authority)?.filter(|u| !matches!(u, StrMatch::Present)),
        headers: list(&m.headers)?,
        without_headers: list(&m.without_headers)?,
        query: m
            .query_params
            .iter()
            .map(|(k, v)| Ok((k.as_str().into(), StrMatch::compile(v)?)))
            .collect::<Result<_, String>>()?,
    })
}

/// A match block in one line, every condition as the VirtualService writes it, for `explain`
/// and admin output: `uri^/api && header x-user=alice && port=80 && gateways=mesh`. The ones
/// decided for the whole proxy (`port`, `sourceLabels`, `gateways`) are shown too: a block
/// that lists only those is not "any" request.
fn describe_match(m: &HttpMatchRequest) -> String {
    let sm = |s: &StringMatch| match (&s.exact, &s.prefix, &s.regex) {
        (Some(e), _, _) => format!("={e}"),
        (_, Some(p), _) => format!("^{p}"),
        (_, _, Some(r)) => format!("~{r}"),
        _ => " present".into(),
    };
    let mut parts = Vec::new();
    if let Some(u) = &m.uri {
        let case = if m.ignore_uri_case { " (ignoreUriCase)" } else { "" };
        parts.push(format!("uri{}{case}", sm(u)));
    }
    for (name, v) in [
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name}{}", sm(v)));
        }
    }
    for (k, v) in &m.headers {
        parts.push(format!("header {k}{}", sm(v)));
    }
    for (k, v) in &m.without_headers {
        parts.push(format!("without header {k}{}", sm(v)));
    }
    for (k, v) in &m.query_params {
        parts.push(format!("query {k}{}", sm(v)));
    }
    if m.port != 0 {
        parts.push(format!("port={}", m.port));
    }
    if !m.source_labels.is_empty() {
        let labels: Vec<String> = m.source_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.push(format!("sourceLabels {}", labels.join(",")));
    }
    if !m.source_namespace.is_empty() {
        // Accepted but not applied (validate's note says so): shown, and said.
        parts.push(format!("sourceNamespace={} (not applied)", m.source_namespace));
    }
    if !m.gateways.is_empty() {
        parts.push(format!("gateways={}", m.gateways.join(",")));
    }
    if parts.is_empty() {
        "any".into()
    } else {
        parts.join(" && ")
    }
}

fn parse_subnets(subnets: &[String]) -> Box<[IpNet]> {
    subnets
        .iter()
        .filter_map(|s| {
            s.parse::<IpNet>()
                .ok()
                .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
        })
        .collect()
}

/// RE2/Envoy substitutions (`\1`) in the regex crate's syntax (`${1}`).
fn envoy_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push_str("${");
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    out.push(d);
                }
                out.push('}');
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// Each registry service's id, by its key: the route tables name services by id.
fn service_ids(input: &CompileInput<'_>) -> FxHashMap<ServiceKey, ServiceId> {
    // By id, not by listing position: the listing skips later merge classes of a host, and a
    // scoped registry lists its services in another order than their ids.
    (0..)
        .map_while(|id| input.registry.service(id).map(|s| (ServiceKey::of(s), id)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{assert_warned, doc, static_se};

    type Req<'a> = PlainRequest<'a>;

    fn get(path: &str) -> Req<'_> {
        Req {
            method: "GET",
            path,
            authority: "a.example.com",
            headers: &[],
        }
    }

    fn m(yaml: &str) -> HttpMatch {
        let json: serde_json::Value = serde_yaml_like(yaml);
        let parsed: HttpMatchRequest = serde_json::from_value(json).unwrap();
        compile_match(&parsed).unwrap()
    }

    /// The model derives serde; JSON is YAML's subset, so tests write flow-style JSON.
    fn serde_yaml_like(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    fn described(json: &str) -> String {
        describe_match(&serde_json::from_str::<HttpMatchRequest>(json).unwrap())
    }

    /// Every condition of a match block is described, in the VirtualService's own terms, so
    /// that `explain` never calls a block with conditions `any`.
    #[test]
    fn every_condition_of_a_match_is_described() {
        assert_eq!(described("{}"), "any");
        assert_eq!(
            described(r#"{"port": 80, "gateways": ["mesh"]}"#),
            "port=80 && gateways=mesh"
        );
        assert_eq!(
            described(
                r#"{"uri": {"prefix": "/API"}, "ignoreUriCase": true, "scheme": {"exact": "https"}, "method": {"exact": "POST"}, "authority": {"regex": "a.*"}}"#
            ),
            "uri^/API (ignoreUriCase) && scheme=https && method=POST && authority~a.*"
        );
        assert_eq!(
            described(
                r#"{"headers": {"x-user": {"exact": "alice"}, "x-any": {}}, "withoutHeaders": {"x-debug": {"prefix": "1"}}, "queryParams": {"v": {"exact": "2"}}}"#
            ),
            "header x-any present && header x-user=alice && without header x-debug^1 && query v=2"
        );
        assert_eq!(
            described(
                r#"{"sourceLabels": {"app": "web", "version": "v1"}, "sourceNamespace": "shop", "gateways": ["mesh", "istio-system/egress"]}"#
            ),
            "sourceLabels app=web,version=v1 && sourceNamespace=shop (not applied) && gateways=mesh,istio-system/egress"
        );
    }

    #[test]
    fn uri_exact_prefix_regex_and_case() {
        let exact = m(r#"{"uri": {"exact": "/a"}}"#);
        assert_eq!(exact.check(&get("/a")), Some(2));
        assert_eq!(
            exact.check(&get("/a?x=1")),
            Some(2),
            "the query is not part of the path"
        );
        assert!(exact.check(&get("/ab")).is_none());
        assert!(exact.check(&get("/A")).is_none());
        let prefix = m(r#"{"uri": {"prefix": "/api/"}}"#);
        assert_eq!(prefix.check(&get("/api/v1")), Some(5));
        assert!(prefix.check(&get("/apx")).is_none());
        let caseless = m(r#"{"uri": {"prefix": "/api/"}, "ignoreUriCase": true}"#);
        assert!(caseless.check(&get("/API/v1")).is_some());
        let regex = m(r#"{"uri": {"regex": "/v[0-9]+/.*"}}"#);
        assert!(regex.check(&get("/v12/x")).is_some());
        assert!(regex.check(&get("/x/v12/x")).is_none(), "regexes match the whole path");
    }

    #[test]
    fn method_authority_scheme() {
        let post = m(r#"{"method": {"exact": "POST"}}"#);
        assert!(post.check(&get("/")).is_none());
        let mut r = get("/");
        r.method = "POST";
        assert!(post.check(&r).is_some());
        let auth = m(r#"{"authority": {"prefix": "a.example"}}"#);
        assert!(auth.check(&get("/")).is_some());
        let scheme = m(r#"{"scheme": {"exact": "https"}}"#);
        assert!(scheme.check(&get("/")).is_none());
    }

    #[test]
    fn headers_present_and_without() {
        let hm = m(r#"{"headers": {"X-User": {"exact": "jason"}, "x-any": {}}}"#);
        let r = Req {
            headers: &[("x-user", "jason"), ("x-any", "")],
            ..get("/")
        };
        assert!(hm.check(&r).is_some());
        let r = Req {
            headers: &[("x-user", "jason")],
            ..get("/")
        };
        assert!(hm.check(&r).is_none(), "x-any must be present");
        let without = m(r#"{"withoutHeaders": {"x-canary": {"exact": "1"}}}"#);
        assert!(without.check(&get("/")).is_some());
        let r = Req {
            headers: &[("x-canary", "1")],
            ..get("/")
        };
        assert!(without.check(&r).is_none());
        let regex = m(r#"{"headers": {"x-v": {"regex": "v[12]"}}}"#);
        let r = Req {
            headers: &[("x-v", "v2")],
            ..get("/")
        };
        assert!(regex.check(&r).is_some());
    }

    #[test]
    fn query_params() {
        let q = m(r#"{"queryParams": {"debug": {"exact": "1"}, "flag": {"exact": ""}, "v": {"regex": "[0-9]+"}}}"#);
        assert!(q.check(&get("/p?debug=1&flag&v=42")).is_some());
        assert!(q.check(&get("/p?debug=2&flag&v=42")).is_none());
        assert!(q.check(&get("/p?debug=1&v=42")).is_none(), "flag must be present");
        assert!(q.check(&get("/p?debug=1&flag&v=x")).is_none());
    }

    #[test]
    fn retry_on_parsing() {
        let r = Retry::compile(&HttpRetry {
            attempts: 3,
            retry_on: "5xx,gateway-error,418".into(),
            ..Default::default()
        });
        assert_eq!(r.attempts, 3);
        assert!(r.on_status(500) && r.on_status(418) && !r.on_status(404));
        assert!(!r.is_connect_only());
        assert!(Retry::default().is_connect_only());
        let none = Retry::compile(&HttpRetry::default());
        assert_eq!(none.attempts, 0);
        assert!(none.is_connect_only());
    }

    #[test]
    fn gateway_names() {
        assert_eq!(resolve_gateway("mesh", "a"), "mesh");
        assert_eq!(resolve_gateway("gw", "a"), "a/gw");
        assert_eq!(resolve_gateway("./gw", "a"), "a/gw");
        assert_eq!(resolve_gateway("istio-system/gw", "a"), "istio-system/gw");
        assert_eq!(
            resolve_gateway("gw.istio-system.svc.cluster.local", "a"),
            "istio-system/gw"
        );
        assert!(binds(&[], "a", MESH));
        assert!(!binds(&["gw".into()], "a", MESH));
        assert!(binds(&["gw".into(), "mesh".into()], "a", MESH));
        assert!(binds(&["gw".into()], "a", "a/gw"));
    }

    fn snapshot(yaml: &str, labels: &[(&str, &str)]) -> crate::model::snapshot::Snapshot {
        let config = crate::base::config::ProxyConfig {
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        crate::model::fixtures::snapshot(yaml, &config)
    }

    /// The owner VirtualService and the rule names for `host:port`.
    fn table(snap: &crate::model::snapshot::Snapshot, host: &str, port: u16) -> Option<(String, Vec<String>)> {
        let d = crate::route::route(snap, host, port);
        let r = snap.routes.http_for(d.service_port(), host, port)?;
        Some((r.vs.to_string(), r.rules.iter().map(|r| r.name.to_string()).collect()))
    }

    /// The service a.example.com (also b.example.com) on ports 80 and 8080, and `vss`.
    fn with_services(vss: &[String]) -> String {
        let services = static_se(
            "name: a",
            "hosts: [a.example.com, b.example.com], ports: [{number: 80, name: http, protocol: HTTP}, {number: 8080, name: alt, protocol: HTTP}]",
            "10.0.0.1",
        );
        services + &vss.concat()
    }

    #[test]
    fn ownership_binding_visibility_and_static_conditions() {
        let yaml = with_services(&[
            doc(
                "VirtualService",
                r#"name: first, creationTimestamp: "2024-01-01T00:00:00Z""#,
                concat!(
                    "hosts: [a.example.com], http: [",
                    "{name: on-8080, match: [{port: 8080}], route: [{destination: {host: a.example.com}}]}, ",
                    "{name: canary-only, match: [{sourceLabels: {app: canary}}], route: [{destination: {host: a.example.com}}]}, ",
                    "{name: all, route: [{destination: {host: a.example.com}}]}]",
                ),
            ),
            doc(
                "VirtualService",
                r#"name: second, creationTimestamp: "2024-02-01T00:00:00Z""#,
                r#"hosts: ["*.example.com"], http: [{name: late, route: [{destination: {host: a.example.com}}]}]"#,
            ),
            doc(
                "VirtualService",
                "name: gateway-only",
                "hosts: [b.example.com], gateways: [istio-system/egress], \
                 http: [{name: gw, route: [{destination: {host: a.example.com}}]}]",
            ),
            doc(
                "VirtualService",
                "name: hidden, namespace: other",
                r#"hosts: [b.example.com], exportTo: ["."], http: [{name: hidden, route: [{destination: {host: a.example.com}}]}]"#,
            ),
        ]);
        let snap = snapshot(&yaml, &[]);
        // The oldest VirtualService naming the host owns it; static conditions are decided
        // per port (E3, E4).
        assert_eq!(
            table(&snap, "a.example.com", 80),
            Some(("default/first".into(), vec!["all".into()]))
        );
        assert_eq!(
            table(&snap, "a.example.com", 8080),
            Some(("default/first".into(), vec!["on-8080".into(), "all".into()]))
        );
        // b: not bound to mesh, and not exported here; the wildcard of `second` takes it.
        assert_eq!(
            table(&snap, "b.example.com", 80),
            Some(("default/second".into(), vec!["late".into()]))
        );
        let canary = snapshot(&yaml, &[("app", "canary")]);
        assert_eq!(
            table(&canary, "a.example.com", 80),
            Some(("default/first".into(), vec!["canary-only".into(), "all".into()]))
        );
    }

    #[test]
    fn legacy_mirror_percent_under_either_name() {
        let percent = |field: &str| {
            let yaml = with_services(&[doc(
                "VirtualService",
                "name: mirrored",
                &format!(
                    "hosts: [a.example.com], \
                     http: [{{route: [{{destination: {{host: a.example.com}}}}], mirror: {{host: b.example.com}}, {field}}}]"
                ),
            )]);
            let snap = snapshot(&yaml, &[]);
            let d = crate::route::route(&snap, "a.example.com", 80);
            let routes = snap.routes.http_for(d.service_port(), "a.example.com", 80).unwrap();
            routes.rules[0].mirrors.iter().map(|m| m.percent).collect::<Vec<f64>>()
        };
        assert_eq!(percent("mirrorPercent: 30"), [30.0]);
        assert_eq!(percent("mirror_percent: 40"), [40.0]);
        // Istio's decoder reads the proto name first.
        assert_eq!(percent("mirror_percent: 40, mirrorPercent: 30"), [40.0]);
    }

    fn hm(json: &str) -> HttpMatchRequest {
        serde_json::from_value(serde_yaml_like(json)).unwrap()
    }

    #[test]
    fn delegate_string_match_subsets() {
        let sm = |json: &str| -> StringMatch { serde_json::from_value(serde_yaml_like(json)).unwrap() };
        let conflict = |r: &str, l: &str| string_match_conflict(Some(&sm(r)), Some(&sm(l)));
        // A prefix or exact inside the root's prefix fits; outside it does not.
        assert!(!conflict(r#"{"prefix": "/api"}"#, r#"{"prefix": "/api/v1"}"#));
        assert!(!conflict(r#"{"prefix": "/api"}"#, r#"{"exact": "/api/v2"}"#));
        assert!(conflict(r#"{"prefix": "/api/v1"}"#, r#"{"prefix": "/api"}"#));
        assert!(conflict(r#"{"prefix": "/api"}"#, r#"{"exact": "/other"}"#));
        // Under an exact root only the same exact fits.
        assert!(!conflict(r#"{"exact": "/a"}"#, r#"{"exact": "/a"}"#));
        assert!(conflict(r#"{"exact": "/a"}"#, r#"{"exact": "/b"}"#));
        assert!(conflict(r#"{"exact": "/a"}"#, r#"{"prefix": "/a"}"#));
        // A regex on either side conflicts with anything set on the other.
        assert!(conflict(r#"{"regex": "/a.*"}"#, r#"{"prefix": "/a"}"#));
        assert!(conflict(r#"{"prefix": "/a"}"#, r#"{"regex": "/a.*"}"#));
        assert!(conflict(r#"{"regex": "/a.*"}"#, r#"{"regex": "/a.*"}"#));
        // Unset on either side: no conflict.
        assert!(!string_match_conflict(None, Some(&sm(r#"{"regex": "/a.*"}"#))));
        assert!(!string_match_conflict(Some(&sm(r#"{"regex": "/a.*"}"#)), None));
    }

    #[test]
    fn delegate_matches_merge() {
        let root = [
            hm(r#"{"uri": {"prefix": "/api"}, "headers": {"x-env": {"exact": "prod"}}, "port": 80}"#),
            hm(r#"{"uri": {"prefix": "/v2"}, "method": {"exact": "GET"}}"#),
        ];
        // A delegate block is ANDed with each root block it fits: the uri of the leaf, the
        // method and headers of the root (the leaf's header value winning), the root's port.
        let leaf = [hm(
            r#"{"uri": {"prefix": "/api/v1"}, "headers": {"x-user": {"exact": "a"}}, "gateways": ["gw"]}"#,
        )];
        let merged = merge_matches(&root, "root-ns", &leaf, "leaf-ns").unwrap();
        assert_eq!(merged.len(), 1, "only the /api root block covers /api/v1");
        let m = &merged[0];
        assert_eq!(m.uri.as_ref().unwrap().prefix.as_deref(), Some("/api/v1"));
        assert_eq!(m.headers.len(), 2);
        assert_eq!(m.headers["x-env"].exact.as_deref(), Some("prod"));
        assert_eq!(m.port, 80);
        assert_eq!(m.gateways, ["leaf-ns/gw"], "resolved in the delegate's namespace");
        // A leaf without uri fits both root blocks and inherits each one's uri.
        let any_uri = [hm(r#"{"headers": {"x-env": {"exact": "prod"}}}"#)];
        let merged = merge_matches(&root, "r", &any_uri, "l").unwrap();
        let uris: Vec<_> = merged
            .iter()
            .map(|m| m.uri.as_ref().unwrap().prefix.clone().unwrap())
            .collect();
        assert_eq!(uris, ["/api", "/v2"]);
        assert_eq!(merged[1].method.as_ref().unwrap().exact.as_deref(), Some("GET"));
        // One leaf block outside every root block drops the whole delegate rule.
        let outside = [
            hm(r#"{"uri": {"prefix": "/api/v1"}}"#),
            hm(r#"{"uri": {"prefix": "/x"}}"#),
        ];
        assert!(merge_matches(&root, "r", &outside, "l").is_none());
        // Header values, ports and ignoreUriCase must agree too.
        for leaf in [
            r#"{"headers": {"x-env": {"exact": "dev"}}}"#,
            r#"{"uri": {"prefix": "/api"}, "port": 8080}"#,
            r#"{"uri": {"prefix": "/api"}, "ignoreUriCase": true}"#,
        ] {
            assert!(merge_matches(&root[..1], "r", &[hm(leaf)], "l").is_none(), "{leaf}");
        }
        // No match on one side: the other side's blocks as they are.
        assert_eq!(merge_matches(&[], "r", &leaf, "l").unwrap()[0].uri, leaf[0].uri);
        assert_eq!(merge_matches(&root, "r", &[], "l").unwrap().len(), 2);
    }

    #[test]
    fn delegate_rules_are_merged_into_the_root() {
        let yaml = with_services(&[
            doc(
                "VirtualService",
                "name: root",
                concat!(
                    "hosts: [a.example.com], http: [",
                    "{name: api, match: [{uri: {prefix: /api}}], timeout: 3s, delegate: {name: api, namespace: team}}, ",
                    "{match: [{uri: {prefix: /gone}}], delegate: {name: missing}}, ",
                    "{match: [{uri: {prefix: /hosted}}], delegate: {name: hosted}}, ",
                    "{name: rest, route: [{destination: {host: b.example.com}}]}]",
                ),
            ),
            doc(
                "VirtualService",
                "name: api, namespace: team",
                concat!(
                    "http: [{name: v1, match: [{uri: {prefix: /api/v1}}], route: [{destination: {host: a.example.com}}]}, ",
                    "{match: [{uri: {prefix: /elsewhere}}], route: [{destination: {host: a.example.com}}]}, ",
                    "{timeout: 1s, route: [{destination: {host: b.example.com}}]}]",
                ),
            ),
            doc(
                "VirtualService",
                "name: hosted",
                "hosts: [c.example.com], http: [{route: [{destination: {host: a.example.com}}]}]",
            ),
        ]);
        let snap = snapshot(&yaml, &[]);
        assert_eq!(
            table(&snap, "a.example.com", 80),
            Some((
                "default/root".into(),
                vec!["api-v1".into(), "api".into(), "rest".into()]
            ))
        );
        let d = crate::route::route(&snap, "a.example.com", 80);
        let routes = snap.routes.http_for(d.service_port(), "a.example.com", 80).unwrap();
        let pick = |path: &str| routes.select(&get(path)).map(|s| &*s.rule.name);
        assert_eq!(pick("/api/v1/x"), Some("api-v1"));
        // The catch-all delegate rule is confined to the root's /api.
        assert_eq!(pick("/api/other"), Some("api"));
        assert_eq!(pick("/other"), Some("rest"));
        let v1 = &routes.rules[0];
        assert_eq!((v1.index, v1.delegate.as_deref()), (0, Some("team/api http[0]")));
        assert_eq!(v1.timeout, Some(Duration::from_secs(3)), "inherited from the root rule");
        assert_eq!(
            routes.rules[1].timeout,
            Some(Duration::from_secs(1)),
            "the delegate's own wins"
        );
        assert_warned(
            &snap,
            &[
                "team/api: http[1]'s match is not within the match of default/root http[0]",
                "http[1] delegates to default/missing, which does not exist",
                "http[2] delegates to default/hosted, which has hosts",
            ],
        );
    }

    #[test]
    fn substitutions() {
        assert_eq!(envoy_substitution(r"/v2/\1/x"), "/v2/${1}/x");
        assert_eq!(envoy_substitution("$a"), "$$a");
    }

    #[test]
    fn weighted_pick_is_proportional() {
        let dest = |w| WeightedDest {
            weight: w,
            target: Target::Missing("x".into()),
            headers: HeaderEdits::default(),
        };
        let dests = [dest(80), dest(20)];
        let mut first = 0;
        for _ in 0..10_000 {
            if std::ptr::eq(pick(&dests, 100).unwrap(), &dests[0]) {
                first += 1;
            }
        }
        // Binomial(10000, 0.8): sd 40; 8 sd is a failure probability far below 1e-9.
        assert!((7680..=8320).contains(&first), "{first}");
    }
}
