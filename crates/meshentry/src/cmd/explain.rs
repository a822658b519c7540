//! `meshentry explain`: which listener, service, VirtualService rule, subset, DestinationRule
//! policy and endpoints a request would get, or why it is refused, step by step.
//!
//! Every decision is made by the proxy's own routing code on a real [`Snapshot`]
//! (`route::transparent`, `route::route_transparent`, `route::route`,
//! `RouteTables::http_for`, `HttpRoutes::select_block`, `RouteTables::l4_rule`,
//! `route::to_target`); this module only describes what they decided, so it cannot drift
//! from what the proxy does. Nothing is sent and no name is resolved.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use meshentry_api::{Kind, Resource, Spec};
use meshentry_registry::scope::Role;
use meshentry_registry::{Registry, Service, SidecarScope, host};
use meshentry_route::base::config::{OutboundPolicy, ProxyConfig};
use meshentry_route::model::cluster::{Cluster, Discovery};
use meshentry_route::model::lb::Policy;
use meshentry_route::model::snapshot::{Snapshot, destination_rule};
use meshentry_route::model::tls::Sni;
use meshentry_route::model::vs::{HttpAction, PlainRequest, RedirectPort, WeightedDest, resolve_gateway};
use meshentry_route::route::Detected;
use meshentry_route::route::{self, Decision, Handling};
use serde::Serialize;

use crate::cmd::proxy::{Labels, parse_labels, parse_policy};

#[derive(clap::Args)]
pub struct Args {
    /// A file or directory of Istio resources (as for `validate`); repeat the flag for more
    /// (`-c a.yaml -c dir/`).
    #[arg(short, long = "config", value_name = "PATH", required_unless_present = "kubernetes")]
    pub config: Vec<PathBuf>,
    #[command(flatten)]
    pub kube: crate::cmd::kube::KubeArgs,
    /// The namespace of resources that do not set metadata.namespace, as `kubectl apply -n`
    /// would put them.
    #[arg(short, long, value_name = "NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The namespace of the workload sending the request: what it sees (exportTo) and which
    /// Sidecar and rules apply. Default: --namespace.
    #[arg(long, value_name = "NAMESPACE")]
    pub workload_namespace: Option<String>,
    /// The workload's labels (k=v,k=v), for Sidecar, DestinationRule and sourceLabels selectors.
    #[arg(long, default_value = "", value_parser = parse_labels)]
    pub labels: Labels,
    /// ALLOW_ANY or REGISTRY_ONLY; overrides any Sidecar and the mesh default (ALLOW_ANY).
    #[arg(long, value_parser = parse_policy)]
    pub outbound_policy: Option<OutboundPolicy>,
    #[command(flatten)]
    pub mesh: crate::cmd::mesh::MeshArgs,
    #[command(flatten)]
    pub domain: crate::cmd::validate::DomainArgs,
    /// A request header `name:value` (repeatable), for `headers` matches.
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// The request method, for `method` matches.
    #[arg(short = 'X', long, default_value = "GET")]
    pub method: String,
    /// Which listener an http:// request arrives on: `outbound` (captured by iptables, routed
    /// by its Host among the services on the destination port) or `http-proxy` (sent to the
    /// explicit proxy, routed by its authority).
    #[arg(long, value_enum, default_value = "outbound")]
    pub via: Via,
    /// The connection's original destination IP on the outbound listener. Default: the
    /// target's host when it is an IP, else 192.0.2.1, an address no service claims (what a
    /// name outside the mesh resolves to).
    #[arg(long)]
    pub dst: Option<IpAddr>,
    /// `text` (each step, for people) or `json` (the same steps, for tools).
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Output,
    /// As a proxy with `--dns` runs: services without addresses take their auto-allocated
    /// ones, so `tcp://ALLOCATED-IP:PORT` is routed by them (on with a `dns://` target, or
    /// when --mesh-config sets ISTIO_META_DNS_CAPTURE).
    #[arg(long)]
    pub dns: bool,
    /// With --dns or a `dns://` target: the applications' search domains (repeatable).
    /// Default: the `search` line of /etc/resolv.conf.
    #[arg(long, value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// `http://HOST[:PORT]/path?query`, `https://HOST[:PORT]` or `tls://HOST:PORT` (routed by
    /// SNI), `tcp://IP:PORT` (routed by destination), or `dns://NAME[?type=AAAA]` (what the
    /// DNS proxy answers, `proxy --dns`).
    pub target: String,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    Outbound,
    HttpProxy,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("header {s:?} is not name:value"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("header {s:?} has no name"));
    }
    Ok((k.to_ascii_lowercase(), v.trim().to_string()))
}

/// Where an unknown name is assumed to resolve: TEST-NET-1 (RFC 5737), claimed by no service.
const UNCLAIMED: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

/// What the target URL asks for.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Proto {
    Http,
    Tls,
    Tcp,
}

struct Target0 {
    proto: Proto,
    host: String,
    port: u16,
    /// The port as written in the URL (for the Host header).
    explicit_port: bool,
    path: String,
}

fn parse_target(s: &str) -> anyhow::Result<Target0> {
    let (scheme, rest) = s.split_once("://").ok_or_else(|| {
        anyhow::anyhow!(
            "target {s:?}: expected http://HOST[:PORT]/path, https://HOST[:PORT], tls://HOST:PORT or tcp://IP:PORT"
        )
    })?;
    let (proto, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "http" => (Proto::Http, Some(80)),
        "https" => (Proto::Tls, Some(443)),
        "tls" => (Proto::Tls, Some(443)),
        "tcp" => (Proto::Tcp, None),
        other => anyhow::bail!("target {s:?}: unknown scheme {other:?} (http, https, tls or tcp)"),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let explicit_port = authority
        .rsplit_once(':')
        .is_some_and(|(h, _)| !h.contains(':') || h.ends_with(']'));
    let (host, port) = route::split_host_port(authority, default_port.unwrap_or(0))
        .ok_or_else(|| anyhow::anyhow!("target {s:?}: {authority:?} is not HOST[:PORT]"))?;
    if port == 0 {
        anyhow::bail!("target {s:?}: {scheme}:// needs a port");
    }
    if proto == Proto::Tcp && host.parse::<IpAddr>().is_err() {
        anyhow::bail!("target {s:?}: tcp:// needs an IP (the connection's destination), not a name");
    }
    Ok(Target0 {
        proto,
        host: host.to_ascii_lowercase(),
        port,
        explicit_port,
        path,
    })
}

// === The explanation ===

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Explanation {
    request: RequestJson,
    proxy: ProxyJson,
    /// Human-readable, in order.
    steps: Vec<Step>,
    /// The registry's service, before any VirtualService.
    service: Option<ServiceJson>,
    virtual_service: Option<VsJson>,
    /// Where the request goes: one entry per weighted destination (or the default route).
    destinations: Vec<DestJson>,
    outcome: OutcomeJson,
    /// Snapshot warnings that name this destination's services or clusters.
    warnings: Vec<String>,
    /// Fields of the resources shown above that meshentry accepts but does not apply.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestJson {
    target: String,
    protocol: Proto,
    host: String,
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    listener: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    original_destination: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProxyJson {
    namespace: String,
    labels: BTreeMap<String, String>,
    outbound_policy: &'static str,
    policy_source: String,
    /// `Sidecar ns/name` whose egress hosts scope what the proxy imports (C9); `None`: it
    /// imports everything its namespace sees.
    sidecar: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Step {
    step: &'static str,
    lines: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceJson {
    host: String,
    namespace: String,
    port: u32,
    protocol: &'static str,
    matched_by: String,
    resource: String,
    at: String,
    /// The Sidecar egress host that imported the service, when a Sidecar scopes the proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    imported_by: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VsJson {
    name: String,
    at: Option<String>,
    /// `http`, `tls` or `tcp`, with the index and name of the rule that applied; `None`: no
    /// rule matched.
    rule: Option<RuleJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RuleJson {
    kind: &'static str,
    index: usize,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    matched: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DestJson {
    cluster: String,
    weight_percent: f64,
    subset: Option<String>,
    destination_rule: Option<String>,
    load_balancer: &'static str,
    tls: String,
    discovery: &'static str,
    endpoints: Vec<EndpointJson>,
    /// For DNS clusters: the names that would be resolved (they are not resolved here).
    dns_names: Vec<String>,
    /// Why this destination cannot carry traffic, if it cannot.
    error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EndpointJson {
    address: String,
    labels: BTreeMap<String, String>,
    weight: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutcomeJson {
    routed: bool,
    /// `routed`, `passthrough`, `answered`, `refused`.
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
    message: String,
}

/// Builds the explanation step by step.
struct Explainer<'s> {
    snap: &'s Snapshot,
    /// The unscoped registry, when a Sidecar scopes the snapshot's: to say why a service it
    /// does not import is not routed.
    full: Option<Registry>,
    resources: &'s [&'s Resource],
    config: &'s ProxyConfig,
    steps: Vec<Step>,
    service: Option<ServiceJson>,
    virtual_service: Option<VsJson>,
    destinations: Vec<DestJson>,
    touched: Vec<String>,
}

impl<'s> Explainer<'s> {
    fn step(&mut self, step: &'static str, lines: Vec<String>) {
        self.steps.push(Step { step, lines });
    }

    fn resource(&self, kind: Kind, id: &str) -> Option<&'s Resource> {
        self.resources
            .iter()
            .copied()
            .find(|r| r.kind() == kind && format!("{}/{}", r.namespace, r.name()) == id)
    }

    /// The listener's table for `port`, as Istio would build `0.0.0.0:<port>`.
    fn port_table(&self, port: u16) -> String {
        match self.snap.port_info(u32::from(port)) {
            None => format!(
                "port {port}: no 0.0.0.0:{port} listener (no HTTP route table, SNI chains or address-less TCP service); only service addresses on it are routed"
            ),
            Some(info) => {
                let mut parts = Vec::new();
                if info.http {
                    parts.push("an HTTP route table (requests routed by Host)".to_string());
                }
                if info.sni {
                    parts.push("TLS filter chains (connections routed by SNI)".to_string());
                }
                if info.tcp_wild > 0 {
                    parts.push(format!(
                        "{} catch-all TCP service{} (no addresses: any destination on the port){}",
                        info.tcp_wild,
                        if info.tcp_wild == 1 { "" } else { "s" },
                        if info.tcp_declared { "" } else { ", protocol unset" }
                    ));
                }
                format!("port {port}: {}", parts.join("; "))
            }
        }
    }

    /// Step 2: the service the registry picked, and why; or why none.
    fn describe_service(&mut self, decision: &Decision<'_>, name: Option<&str>, dst: Option<SocketAddr>, port: u16) {
        let mut lines = Vec::new();
        match decision {
            Decision::Cluster { service, port: p, .. } => {
                let matched_by = matched_by(service, name, dst, p.number);
                let src = self.snap.registry.sources().get(service.source as usize);
                let (resource, at) = src.map_or((String::new(), String::new()), |s| {
                    (s.display_name.clone(), s.origin.to_string())
                });
                lines.push(format!(
                    "{} port {} ({}, {}) in namespace {}",
                    service.host, p.number, p.name, p.protocol, service.namespace
                ));
                lines.push(format!("matched by {matched_by}"));
                lines.push(format!("from {resource} at {at}"));
                for m in &service.merged {
                    if let Some(s) = self.snap.registry.sources().get(*m as usize) {
                        lines.push(format!("merged with {} at {}", s.display_name, s.origin));
                    }
                }
                lines.push(format!(
                    "resolution {}, location {}, exportTo {} (visible to namespace {})",
                    service.resolution.as_str(),
                    service.location.as_str(),
                    if service.export_to.written.is_empty() {
                        "* (default)".to_string()
                    } else {
                        format!("[{}]", service.export_to.written.join(", "))
                    },
                    self.snap.namespace
                ));
                let imported_by = self.snap.scope.as_ref().and_then(|scope| {
                    let imp = scope.imported(&service.host, &service.namespace)?;
                    Some(scope.describe_via(&imp.via))
                });
                if let Some(by) = &imported_by {
                    lines.push(format!("imported by {by}"));
                }
                self.touched.push(service.host.to_string());
                self.service = Some(ServiceJson {
                    host: service.host.to_string(),
                    namespace: service.namespace.to_string(),
                    port: p.number,
                    protocol: p.protocol.as_str(),
                    matched_by,
                    resource,
                    at,
                    imported_by,
                });
            }
            Decision::Passthrough | Decision::Blocked => {
                let what = match name {
                    Some(n) => format!("{n}:{port}"),
                    None => dst.map_or_else(|| format!("port {port}"), |d| d.to_string()),
                };
                lines.push(format!(
                    "no service in the registry seen by namespace {} claims {what}",
                    self.snap.namespace
                ));
                lines.extend(self.hints(name, port));
                lines.extend(self.not_imported(name, dst, port));
                lines.push(format!(
                    "outbound traffic policy {} (from {}): {}",
                    self.snap.policy,
                    self.snap.policy_source,
                    match self.snap.policy {
                        OutboundPolicy::AllowAny => "PassthroughCluster, to the original destination as it is",
                        OutboundPolicy::RegistryOnly => "BlackHoleCluster, refused",
                    }
                ));
            }
        }
        self.step("service", lines);
    }

    /// Under a Sidecar: the service the name (or destination) would reach without it, and why
    /// the Sidecar's egress hosts do not import it on this port.
    fn not_imported(&self, name: Option<&str>, dst: Option<SocketAddr>, port: u16) -> Vec<String> {
        let (Some(scope), Some(full)) = (&self.snap.scope, &self.full) else {
            return Vec::new();
        };
        let view = full.view(&self.snap.namespace);
        let port = u32::from(port);
        let service = match name.filter(|n| n.parse::<IpAddr>().is_err()) {
            Some(n) => view.lookup_host(n),
            None => dst.and_then(|d| view.lookup_addr(d.ip(), port)),
        };
        let Some(service) = service.filter(|s| s.port(port).is_some()) else {
            return Vec::new();
        };
        let mut lines = vec![format!(
            "{} port {port} in namespace {} exists, but {} does not route it:",
            service.host,
            service.namespace,
            scope.source()
        )];
        lines.extend(scope.why_not(full, service, port).into_iter().map(|l| format!("  {l}")));
        lines
    }

    /// Why a name found no service: declared on other ports, not exported here, a wildcard
    /// that does not cover the bare domain.
    fn hints(&self, name: Option<&str>, port: u16) -> Vec<String> {
        let Some(name) = name.filter(|n| n.parse::<IpAddr>().is_err()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let view = self.snap.view();
        for s in self.snap.registry.services() {
            let names_it = host::matches(&s.host, name)
                && (!s.host.starts_with('*') || meshentry_registry::host::covers(&s.host, name));
            let visible = s.is_visible_to(&self.snap.namespace);
            let src = self
                .snap
                .registry
                .sources()
                .get(s.source as usize)
                .map_or(String::new(), |x| format!("{} at {}", x.display_name, x.origin));
            if names_it && !visible {
                out.push(format!(
                    "hint: {} in namespace {} ({src}) is exported to [{}], not to namespace {}",
                    s.host,
                    s.namespace,
                    s.export_to.written.join(", "),
                    self.snap.namespace
                ));
            } else if names_it && s.port(u32::from(port)).is_none() && view.lookup_host(name).is_some() {
                let ports: Vec<String> = s.ports.iter().map(|p| p.number.to_string()).collect();
                out.push(format!(
                    "hint: {} ({src}) declares port {}, not {port}",
                    s.host,
                    ports.join(", ")
                ));
            } else if visible && s.host.strip_prefix("*.") == Some(name) {
                out.push(format!(
                    "hint: {} ({src}) does not cover {name} itself: a wildcard host needs at least one more label; add {name} to its hosts",
                    s.host
                ));
            }
        }
        out
    }

    /// Step 3 for HTTP: the VirtualService (if any) and its rules; returns the decisions the
    /// request goes to (with weights), or the refusal.
    /// `listener` names the listener whose route table decides, for the user.
    fn http_routes(
        &mut self,
        decision: Decision<'s>,
        req: &ExplainRequest,
        host: &str,
        port: u16,
        listener: &str,
    ) -> Result<Vec<(u32, u32, Decision<'s>)>, OutcomeJson> {
        let snap = self.snap;
        let Some(routes) = snap.routes.http_for(decision.service_port(), host, port) else {
            let mut lines = vec![format!(
                "no VirtualService routes {host}:{port} for this proxy: the default route ({})",
                decision.cluster_name()
            )];
            lines.extend(self.vs_hints(host, port));
            self.step("virtual service", lines);
            return Ok(vec![(1, 1, decision)]);
        };
        // Its warnings (a missing delegate, a dropped rule) explain what the rules below lack.
        self.touched.extend(routes.vs.split(',').map(str::to_string));
        let vs_res = self.resource(Kind::VirtualService, &routes.vs);
        let at = vs_res.map(|r| r.origin.to_string());
        let mut lines = vec![format!(
            "VirtualService {} (at {}) {} {host}:{port}",
            routes.vs,
            at.as_deref().unwrap_or("?"),
            if matches!(decision, Decision::Cluster { .. }) {
                "owns the route of"
            } else {
                "has a port-80 virtual host for a name that is no service (E1):"
            }
        )];
        let selected = routes.select_block(&req.view());
        let spec = match vs_res.map(|r| &r.spec) {
            Some(Spec::VirtualService(vs)) => Some(vs),
            _ => None,
        };
        let spec_rules = spec.map_or(routes.rules.len(), |vs| vs.http.len());
        // A root rule with `delegate` compiled to one rule per delegate rule (E6), all
        // carrying the root rule's index: list each, up to the one that matched.
        'rules: for i in 0..spec_rules {
            let mut compiled = routes.rules.iter().filter(|r| r.index == i).peekable();
            if compiled.peek().is_none() {
                let delegate = spec.and_then(|vs| vs.http.get(i)).and_then(|r| r.delegate.as_ref());
                lines.push(match delegate {
                    Some(d) => format!(
                        "  http[{i}]: delegates to {}{}, of which no rule applies here (see the warnings below)",
                        if d.namespace.is_empty() {
                            String::new()
                        } else {
                            format!("{}/", d.namespace)
                        },
                        d.name
                    ),
                    None => format!(
                        "  http[{i}]: not for this proxy (its match blocks' port, gateways or sourceLabels exclude it)"
                    ),
                });
                continue;
            }
            for rule in compiled {
                let conds = if rule.match_text.is_empty() {
                    "every request".to_string()
                } else {
                    format!("[{}]", rule.match_text.join(" OR "))
                };
                let hit = selected.as_ref().is_some_and(|(s, _)| std::ptr::eq(s.rule, rule));
                let verdict = match &selected {
                    Some((_, Some(b))) if hit && rule.match_text.len() > 1 => format!("MATCHED (block {b})"),
                    _ if hit => "MATCHED".to_string(),
                    _ => "no match".to_string(),
                };
                let from = rule
                    .delegate
                    .as_deref()
                    .map(|d| format!(" (delegate {d})"))
                    .unwrap_or_default();
                lines.push(format!("  http[{i}]{from} {:?} match {conds}: {verdict}", &*rule.name));
                if hit {
                    break 'rules;
                }
            }
        }
        let Some((sel, block)) = selected else {
            let message = meshentry_proxy::no_route(routes, host, port);
            lines.push(format!("no rule matches: 404 ({message})"));
            self.virtual_service = Some(VsJson {
                name: routes.vs.to_string(),
                at,
                rule: None,
            });
            self.step("virtual service", lines);
            return Err(refused(404, None, message));
        };
        let rule = sel.rule;
        self.virtual_service = Some(VsJson {
            name: routes.vs.to_string(),
            at,
            rule: Some(RuleJson {
                kind: "http",
                index: rule.index,
                name: rule.name.to_string(),
                matched: block.map(|b| rule.match_text[b].clone()),
            }),
        });
        lines.extend(rule_extras(rule));
        let from = rule
            .delegate
            .as_deref()
            .map(|d| format!(" (delegate {d})"))
            .unwrap_or_default();
        let who = format!("{listener}, http[{}]{from} {:?}", rule.index, &*rule.name);
        lines.push(match &rule.action {
            HttpAction::Route { .. } if rule.simple => format!(
                "{who} picks the destination below; nothing else applies (no rewrite, timeout, retries, fault, mirror or header edits)"
            ),
            HttpAction::Route { .. } => format!("{who} picks the destination below and applies the settings above"),
            HttpAction::Redirect(_) | HttpAction::Direct { .. } => format!("{who} answers the request itself:"),
        });
        let result = match &rule.action {
            HttpAction::Redirect(r) => {
                let port_text = match r.port {
                    RedirectPort::Unchanged => String::new(),
                    RedirectPort::Fixed(p) => format!(", port {p}"),
                    RedirectPort::FromRequest => format!(", port {port} (from the request)"),
                };
                let msg = format!(
                    "redirect {}: scheme {}, authority {}, uri {}{port_text}",
                    r.status,
                    r.scheme.as_deref().unwrap_or("(unchanged)"),
                    r.authority.as_deref().unwrap_or("(unchanged)"),
                    r.uri.as_deref().unwrap_or("(unchanged)")
                );
                lines.push(msg.clone());
                Err(OutcomeJson {
                    routed: true,
                    result: "answered",
                    status: Some(r.status),
                    cluster: None,
                    message: format!("the proxy answers: {msg}"),
                })
            }
            HttpAction::Direct { status, body } => {
                let msg = format!("direct response {status} ({} bytes)", body.len());
                lines.push(msg.clone());
                Err(OutcomeJson {
                    routed: true,
                    result: "answered",
                    status: Some(*status),
                    cluster: None,
                    message: format!("the proxy answers: {msg}"),
                })
            }
            HttpAction::Route { dests, total } => {
                let out = self.weighted(&mut lines, dests, *total, "its requests get 503");
                if out.is_empty() {
                    let reason = match dests.first() {
                        None => "the rule has no destination",
                        Some(d) => d.target.name(),
                    };
                    let message = meshentry_proxy::no_cluster(routes, reason);
                    lines.push(format!("503: {message}"));
                    Err(refused(503, None, message))
                } else {
                    Ok(out)
                }
            }
        };
        self.step("virtual service", lines);
        result
    }

    /// The destinations of a rule with their shares; missing ones are listed and left out.
    fn weighted(
        &mut self,
        lines: &mut Vec<String>,
        dests: &'s [WeightedDest],
        total: u32,
        failure: &str,
    ) -> Vec<(u32, u32, Decision<'s>)> {
        let mut out = Vec::new();
        for d in dests {
            let share = percent(d.weight, total);
            match route::to_target(self.snap, &d.target) {
                Ok(decision) => {
                    lines.push(format!(
                        "  → {} weight {} ({share}%)",
                        decision.cluster_name(),
                        d.weight
                    ));
                    out.push((d.weight, total, decision));
                }
                Err(reason) => {
                    lines.push(format!(
                        "  → weight {} ({share}%): missing destination, {failure}: {reason}",
                        d.weight
                    ));
                }
            }
        }
        out
    }

    /// VirtualServices that name the host but do not apply, and why.
    fn vs_hints(&self, host: &str, port: u16) -> Vec<String> {
        let mut out = Vec::new();
        for r in self.resources {
            let Spec::VirtualService(vs) = &r.spec else { continue };
            let names = vs.hosts.iter().any(|h| {
                let h = h.to_ascii_lowercase();
                h == host || (h.starts_with('*') && meshentry_registry::host::covers(&h, host))
            });
            if !names {
                continue;
            }
            let id = format!("{}/{}", r.namespace, r.name());
            let why = if !vs.gateways.is_empty()
                && !vs.gateways.iter().any(|g| resolve_gateway(g, &r.namespace) == "mesh")
            {
                format!(
                    "it is bound to gateways [{}], not to mesh (sidecars)",
                    vs.gateways
                        .iter()
                        .map(|g| resolve_gateway(g, &r.namespace))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else if !vs.export_to.is_empty()
                && !vs.export_to.iter().any(|e| {
                    e == "*" || *e == *self.snap.namespace || (e == "." && r.namespace == *self.snap.namespace)
                })
            {
                format!(
                    "it is exported to [{}], not to namespace {}",
                    vs.export_to.join(", "),
                    self.snap.namespace
                )
            } else if let Some(scope) = self.snap.scope.as_ref().filter(|s| !s.imports_virtual_service(&id)) {
                format!(
                    "{}'s egress hosts do not import it (a VirtualService is imported by a host of its own namespace, or of */)",
                    scope.source()
                )
            } else {
                format!("no rule of it applies to port {port} for this proxy, or an older VirtualService owns the host")
            };
            out.push(format!(
                "hint: VirtualService {id} (at {}) names {host} but does not apply: {why}",
                r.origin
            ));
        }
        out
    }

    /// Steps 4 and 5: a destination's cluster, policy and endpoints.
    fn describe_destination(&mut self, weight: u32, total: u32, decision: &Decision<'_>, original: &str) -> DestJson {
        let mut lines = Vec::new();
        let share = percent(weight, total);
        let dest = match decision {
            Decision::Cluster { cluster, service, .. } => self.cluster_json(&mut lines, cluster, service, share),
            Decision::Passthrough => {
                lines.push(format!(
                    "PassthroughCluster: connects to the original destination {original}"
                ));
                DestJson {
                    cluster: "PassthroughCluster".into(),
                    weight_percent: share,
                    subset: None,
                    destination_rule: None,
                    load_balancer: "-",
                    tls: "as sent by the client".into(),
                    discovery: "ORIGINAL_DST",
                    endpoints: vec![EndpointJson {
                        address: original.to_string(),
                        labels: BTreeMap::new(),
                        weight: 1,
                    }],
                    dns_names: Vec::new(),
                    error: None,
                }
            }
            Decision::Blocked => {
                lines.push("BlackHoleCluster: refused".into());
                DestJson {
                    cluster: "BlackHoleCluster".into(),
                    weight_percent: share,
                    subset: None,
                    destination_rule: None,
                    load_balancer: "-",
                    tls: "-".into(),
                    discovery: "-",
                    endpoints: Vec::new(),
                    dns_names: Vec::new(),
                    error: Some("BlackHoleCluster".into()),
                }
            }
        };
        self.step("destination", lines);
        dest
    }

    fn cluster_json(&mut self, lines: &mut Vec<String>, cluster: &Cluster, service: &Service, share: f64) -> DestJson {
        self.touched.push(cluster.name.clone());
        let subset = cluster
            .name
            .split('|')
            .nth(2)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        lines.push(format!(
            "cluster {}{}{}",
            cluster.name,
            subset.as_ref().map_or(String::new(), |s| format!(" (subset {s})")),
            if share < 100.0 {
                format!(", {share}% of requests")
            } else {
                String::new()
            }
        ));
        let dr = destination_rule(self.resources, service, self.config);
        let dr_name = dr.map(|r| format!("DestinationRule {}/{} at {}", r.namespace, r.name(), r.origin));
        let subset_labels: Option<BTreeMap<String, String>> = match (dr.map(|r| &r.spec), &subset) {
            (Some(Spec::DestinationRule(d)), Some(name)) => {
                d.subsets.iter().find(|s| &s.name == name).map(|s| s.labels.clone())
            }
            _ => None,
        };
        match &dr_name {
            Some(n) => lines.push(format!("policy from {n}")),
            None => lines.push("no DestinationRule applies: default policy".into()),
        }
        if let Some(l) = &subset_labels {
            lines.push(format!(
                "subset {} selects endpoints with labels {}",
                subset.as_deref().unwrap_or(""),
                fmt_labels(l)
            ));
        }
        let lb = match cluster.policy {
            Policy::LeastRequest => "LEAST_REQUEST",
            Policy::RoundRobin => "ROUND_ROBIN",
            Policy::Random => "RANDOM",
        };
        let mut error = None;
        // The proxy loads the files when it starts; the same check here says what it would.
        let loaded = match &cluster.tls {
            Some(Ok(r)) => match meshentry_proxy::tls::Origination::new(r.clone()) {
                Ok(_) => Some(Ok(r)),
                Err(e) => Some(Err(format!("{}: {e}", r.source))),
            },
            Some(Err(reason)) => Some(Err(reason.to_string())),
            None => None,
        };
        let tls = match &loaded {
            None => "plaintext (no TLS origination)".to_string(),
            Some(Ok(r)) => {
                let sni = match &r.sni {
                    Sni::Fixed(s) => s.clone(),
                    Sni::Auto => "the request's host (none for TCP)".into(),
                };
                let sans = if r.subject_alt_names.is_empty() {
                    "the SNI or host name".to_string()
                } else {
                    r.subject_alt_names.join(", ")
                };
                let mut t = format!(
                    "{}{} (originated), SNI {sni}, server names checked: {sans}, CA {}",
                    r.mode.as_str(),
                    if dr.is_none() { " (auto mTLS)" } else { "" },
                    r.ca.as_ref().map_or("system roots".into(), |p| p.display().to_string())
                );
                if let Some((c, _)) = &r.client_cert {
                    t.push_str(&format!(", client certificate {}", c.display()));
                }
                if r.insecure_skip_verify {
                    t.push_str(", insecureSkipVerify: nothing is checked");
                }
                t
            }
            Some(Err(reason)) => {
                error = Some(format!("TLS origination is off, its connections fail: {reason}"));
                format!("ERROR: {reason}")
            }
        };
        lines.push(format!("load balancer {lb}; TLS {tls}"));
        let mut endpoints = Vec::new();
        let mut dns_names = Vec::new();
        let discovery = cluster.kind_name();
        match &cluster.discovery {
            Discovery::Static(set) => {
                lines.push(format!(
                    "discovery {discovery} (resolution STATIC): {} endpoint(s)",
                    set.hosts.len()
                ));
                for h in set.hosts.iter() {
                    let addr = h.addr.to_string();
                    let labels = service
                        .endpoints
                        .iter()
                        .find(|e| {
                            let a = if e.workload.is_unix() {
                                e.address().to_string()
                            } else {
                                SocketAddr::new(e.address().parse().unwrap_or(UNCLAIMED), e.port as u16).to_string()
                            };
                            a == addr
                        })
                        .map(|e| (*e.workload.labels).clone())
                        .unwrap_or_default();
                    lines.push(format!(
                        "  endpoint {addr} weight {}{}",
                        h.load.weight,
                        if labels.is_empty() {
                            String::new()
                        } else {
                            format!(" labels {}", fmt_labels(&labels))
                        }
                    ));
                    endpoints.push(EndpointJson {
                        address: addr,
                        labels,
                        weight: h.load.weight,
                    });
                }
                if set.hosts.is_empty() {
                    error = Some("503: no healthy upstream (the service has no endpoints)".into());
                    lines.push("  no endpoints: requests get 503 (no healthy upstream)".into());
                }
            }
            Discovery::Dns {
                targets, first_only, ..
            } => {
                lines.push(format!(
                    "discovery {discovery} (resolution {}): resolves {} name(s), uses {} (not resolved here)",
                    service.resolution.as_str(),
                    targets.len(),
                    if *first_only {
                        "the first address of the answer"
                    } else {
                        "every address of every answer"
                    }
                ));
                for t in targets {
                    let n = format!("{}:{}", t.name, t.port);
                    lines.push(format!("  name {n} weight {}", t.weight.max(1)));
                    dns_names.push(n);
                }
                if targets.is_empty() {
                    error = Some("503: no healthy upstream (the service has no endpoints)".into());
                    lines.push("  no names: requests get 503 (no healthy upstream)".into());
                }
            }
            Discovery::OriginalDst { port } => {
                let why = if service.resolution == meshentry_registry::Resolution::None {
                    "resolution NONE"
                } else {
                    "loadBalancer PASSTHROUGH"
                };
                lines.push(format!(
                    "discovery {discovery} ({why}): connects to the address the application asked for{}",
                    port.map_or(String::new(), |p| format!(", on port {p} (targetPort)"))
                ));
            }
        }
        DestJson {
            cluster: cluster.name.clone(),
            weight_percent: share,
            subset,
            destination_rule: dr_name,
            load_balancer: lb,
            tls,
            discovery,
            endpoints,
            dns_names,
            error,
        }
    }
}

fn percent(weight: u32, total: u32) -> f64 {
    if total == 0 {
        return 100.0;
    }
    (f64::from(weight) * 1000.0 / f64::from(total)).round() / 10.0
}

fn refused(status: u16, cluster: Option<String>, message: String) -> OutcomeJson {
    OutcomeJson {
        routed: false,
        result: "refused",
        status: Some(status),
        cluster,
        message,
    }
}

fn fmt_labels(l: &BTreeMap<String, String>) -> String {
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// How the registry's pick relates to what was asked.
fn matched_by(service: &Service, name: Option<&str>, dst: Option<SocketAddr>, port: u32) -> String {
    if let Some(name) = name.filter(|n| n.parse::<IpAddr>().is_err()) {
        if service.host.eq_ignore_ascii_case(name) {
            return format!("exact host {name}");
        }
        if service.host.starts_with('*') && meshentry_registry::host::covers(&service.host.to_ascii_lowercase(), name) {
            return format!("wildcard host {} covering {name}", service.host);
        }
    }
    if let Some(dst) = dst.or_else(|| name.and_then(|n| n.parse().ok()).map(|ip| SocketAddr::new(ip, 0))) {
        let ip = dst.ip();
        if let Some(a) = service
            .addresses
            .iter()
            .filter(|a| !a.net.addr().is_unspecified() && a.net.contains(&ip))
            .max_by_key(|a| a.net.prefix_len())
        {
            return if a.is_cidr() {
                format!("CIDR {} containing {ip}", a.text)
            } else {
                format!("address (VIP) {}", a.text)
            };
        }
        if service.endpoints.iter().any(|e| e.address() == ip.to_string()) {
            return format!("endpoint address {ip}");
        }
    }
    format!("port {port}: a service without addresses that takes TCP traffic to any destination on its port (C5)")
}

/// The target as a request, for the matcher the proxy uses.
struct ExplainRequest {
    method: String,
    path: String,
    authority: String,
    headers: Vec<(String, String)>,
}

impl ExplainRequest {
    fn view(&self) -> PlainRequest<'_, String> {
        PlainRequest {
            method: &self.method,
            path: &self.path,
            authority: &self.authority,
            headers: &self.headers,
        }
    }
}

/// Extra things a rule does besides picking a destination.
fn rule_extras(rule: &meshentry_route::model::vs::HttpRule) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(r) = &rule.rewrite {
        let mut parts = Vec::new();
        if let Some(u) = &r.uri {
            parts.push(format!("uri prefix → {u}"));
        }
        if let Some((re, with)) = &r.uri_regex {
            parts.push(format!("uri regex {} → {with}", re.as_str()));
        }
        if let Some(a) = &r.authority {
            parts.push(format!("authority → {}", String::from_utf8_lossy(a.as_bytes())));
        }
        out.push(format!("rewrite: {}", parts.join(", ")));
    }
    if let Some(t) = rule.timeout {
        out.push(if t == Duration::ZERO {
            "timeout: none (0s)".to_string()
        } else {
            format!("timeout: {t:?}")
        });
    }
    let r = &rule.retry;
    if *r != meshentry_route::model::vs::Retry::default() {
        out.push(format!(
            "retries: {} attempt(s){}",
            r.attempts,
            r.per_try_timeout.map_or(String::new(), |t| format!(", {t:?} per try"))
        ));
    }
    if let Some(f) = &rule.fault {
        if let Some((d, p)) = f.delay {
            out.push(format!("fault: delay {d:?} for {p}% of requests"));
        }
        if let Some((s, p)) = f.abort {
            out.push(format!("fault: abort with {s} for {p}% of requests"));
        }
    }
    for m in &*rule.mirrors {
        out.push(format!("mirror: {}% of requests to {}", m.percent, m.target.name()));
    }
    let names = |ops: &meshentry_route::model::vs::HeaderOps| {
        let mut v: Vec<String> = ops.set.iter().map(|(n, _)| format!("set {n}")).collect();
        v.extend(ops.add.iter().map(|(n, _)| format!("add {n}")));
        v.extend(ops.remove.iter().map(|n| format!("remove {n}")));
        v.join(", ")
    };
    let h = &rule.headers;
    if !h.is_empty() {
        out.push(format!(
            "headers: request [{}], response [{}]",
            names(&h.request),
            names(&h.response)
        ));
    }
    if let HttpAction::Route { dests, .. } = &rule.action {
        for d in dests.iter().filter(|d| !d.headers.is_empty()) {
            out.push(format!(
                "headers to {}: request [{}], response [{}]",
                d.target.name(),
                names(&d.headers.request),
                names(&d.headers.response)
            ));
        }
    }
    out
}

// === Running ===

/// Exit 0 when the request would be routed (or answered by a rule), 1 when it would be
/// refused, 2 on usage or configuration errors.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let dns_target = crate::cmd::explain_dns::parse(&args.target)?;
    let target = match dns_target {
        Some(_) => None,
        None => Some(parse_target(&args.target)?),
    };
    let loaded = crate::cmd::validate::load(&args.config, &args.namespace, &args.mesh, &args.kube)?;
    if loaded.has_errors() {
        for f in loaded.errors() {
            eprintln!("{f}");
        }
        eprintln!("meshentry: the configuration is invalid; fix it first (`meshentry validate`)");
        return Ok(ExitCode::from(2));
    }
    let mut config = ProxyConfig {
        namespace: args.workload_namespace.as_ref().unwrap_or(&args.namespace).clone(),
        labels: args.labels.0.clone(),
        policy_override: args.outbound_policy,
        cluster_domain: args.domain.cluster_domain.clone(),
        ..ProxyConfig::default()
    };
    crate::cmd::mesh::proxy_config(&loaded.mesh, &mut config);
    if args.dns || dns_target.is_some() || loaded.mesh.dns_capture {
        config.dns = Some(meshentry_route::base::config::DnsProxy {
            search: match args.dns_search.is_empty() {
                true => meshentry_proxy::dns_proxy::ResolvConf::system().search,
                false => args.dns_search.clone(),
            },
        });
    }
    let valid: Vec<&Resource> = loaded.valid().collect();
    let snapshot = Snapshot::build(&valid, &config, 1);
    let target = match (dns_target, target) {
        (Some(t), _) => {
            let stdout = std::io::stdout();
            crate::cmd::explain_dns::explain(&snapshot, &t, matches!(args.output, Output::Json), &mut stdout.lock())?;
            return Ok(ExitCode::SUCCESS);
        }
        (None, Some(t)) => t,
        (None, None) => unreachable!("a target that is not dns:// was parsed"),
    };
    let full = snapshot.scope.is_some().then(|| {
        Registry::build_with(
            valid.iter().copied(),
            &meshentry_registry::BuildOptions {
                cluster_domain: args.domain.cluster_domain.clone(),
                auto_allocate: false,
                dns_capture: false,
            },
        )
    });
    let explanation = explain(&snapshot, full, &valid, &config, args, &target);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut out, &explanation)?;
            writeln!(out)?;
        }
        Output::Text => write_text(&mut out, &explanation)?,
    }
    Ok(if explanation.outcome.routed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn explain(
    snap: &Snapshot,
    full: Option<Registry>,
    resources: &[&Resource],
    config: &ProxyConfig,
    args: &Args,
    t: &Target0,
) -> Explanation {
    let mut ex = Explainer {
        snap,
        full,
        resources,
        config,
        steps: Vec::new(),
        service: None,
        virtual_service: None,
        destinations: Vec::new(),
        touched: Vec::new(),
    };
    if let Some(scope) = &snap.scope {
        ex.step("sidecar", sidecar_lines(scope));
    }
    let host_ip = t.host.parse::<IpAddr>().ok();
    let via = if t.proto == Proto::Http {
        args.via
    } else {
        Via::Outbound
    };
    let dst = SocketAddr::new(args.dst.or(host_ip).unwrap_or(UNCLAIMED), t.port);
    let assumed = args.dst.is_none() && host_ip.is_none();
    let name = (host_ip.is_none()).then_some(t.host.as_str());
    let result = match via {
        Via::HttpProxy => {
            ex.step(
                "listener",
                vec![
                    format!(
                        "explicit HTTP proxy listener (--http-proxy): routed by the request's authority {}:{}",
                        t.host, t.port
                    ),
                    "the service: the exact host, else the most specific wildcard, among services declaring the port; an IP by service address".into(),
                ],
            );
            let decision = route::route(snap, &t.host, t.port);
            ex.describe_service(
                &decision,
                Some(&t.host),
                host_ip.map(|ip| SocketAddr::new(ip, t.port)),
                t.port,
            );
            let req = request(args, t);
            ex.http_routes(decision, &req, &t.host, t.port, "on the explicit HTTP proxy listener")
        }
        Via::Outbound => explain_outbound(&mut ex, args, t, dst, assumed, name),
    };
    let original = match (t.proto, name) {
        (Proto::Http, Some(n)) if via == Via::HttpProxy => format!("{n}:{}", t.port),
        _ => dst.to_string(),
    };
    let outcome = match result {
        Err(outcome) => outcome,
        Ok(decisions) => {
            let mut ok = Vec::new();
            let mut errors = Vec::new();
            for (w, total, d) in &decisions {
                if matches!(d, Decision::Blocked) {
                    continue;
                }
                let dest = ex.describe_destination(*w, *total, d, &original);
                match (&dest.error, d) {
                    (_, Decision::Blocked) => {}
                    (Some(e), _) => errors.push(format!("{}: {e}", dest.cluster)),
                    (None, _) => ok.push(dest.cluster.clone()),
                }
                ex.destinations.push(dest);
            }
            outcome_of(snap, t, &decisions, ok, errors, name)
        }
    };
    let mut warnings: Vec<String> = snap
        .warnings
        .iter()
        .filter(|w| ex.touched.iter().any(|n| w.contains(n.as_str())))
        .cloned()
        .collect();
    warnings.dedup();
    let mut explanation = Explanation {
        request: RequestJson {
            target: args.target.clone(),
            protocol: t.proto,
            host: t.host.clone(),
            port: t.port,
            path: (t.proto == Proto::Http).then(|| t.path.clone()),
            method: (t.proto == Proto::Http).then(|| args.method.to_ascii_uppercase()),
            listener: match via {
                Via::Outbound => "outbound",
                Via::HttpProxy => "http-proxy",
            },
            original_destination: (via == Via::Outbound).then(|| dst.to_string()),
        },
        proxy: ProxyJson {
            namespace: snap.namespace.to_string(),
            labels: config.labels.clone(),
            outbound_policy: snap.policy.as_str(),
            policy_source: snap.policy_source.clone(),
            sidecar: snap
                .scope
                .as_ref()
                .and_then(|s| s.sidecar.as_ref())
                .map(|s| s.to_string()),
        },
        steps: ex.steps,
        service: ex.service,
        virtual_service: ex.virtual_service,
        destinations: ex.destinations,
        outcome,
        warnings,
        notes: Vec::new(),
    };
    explanation.notes = not_applied_notes(&explanation, resources);
    explanation
}

/// `validate`'s "accepted but not applied" notes for the resources the explanation names: the
/// ServiceEntry, the VirtualService(s), each cluster's DestinationRule and the Sidecar the
/// outbound policy comes from. A reader then knows which of their settings did not shape the
/// route shown.
fn not_applied_notes(e: &Explanation, resources: &[&Resource]) -> Vec<String> {
    let mut shown: Vec<String> = Vec::new();
    if let Some(s) = &e.service {
        shown.push(s.resource.clone());
    }
    if let Some(vs) = &e.virtual_service {
        shown.extend(vs.name.split(',').map(|n| format!("VirtualService {n}")));
    }
    shown.extend(e.destinations.iter().filter_map(|d| d.destination_rule.clone()));
    shown.push(e.proxy.policy_source.clone());
    // The names come as `Kind ns/name`, some followed by ` at FILE:LINE:COL`.
    let names = |r: &Resource| {
        let name = r.display_name();
        shown
            .iter()
            .any(|s| s == &name || s.strip_prefix(&name).is_some_and(|rest| rest.starts_with(' ')))
    };
    let mut notes = Vec::new();
    for r in resources.iter().filter(|r| names(r)) {
        for (path, note) in meshentry_api::validate::not_applied::not_applied(&r.spec) {
            notes.push(format!("{} {path}: {note}", r.display_name()));
        }
    }
    notes
}

/// The Sidecar that scopes the proxy, why it applies, and its egress listeners (C9).
fn sidecar_lines(scope: &SidecarScope) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(id) = &scope.sidecar {
        lines.push(format!("{id} at {} applies: {}", id.origin, id.selection.describe()));
    }
    for l in &scope.listeners {
        let role = match l.role {
            Role::Port(p) => format!("routes port {p} to what it imports"),
            Role::CatchAll if scope.listeners.iter().any(|o| matches!(o.role, Role::Port(_))) => {
                "routes what it imports on every port no port listener holds".to_string()
            }
            Role::CatchAll => "routes what it imports on every port".to_string(),
            Role::HttpProxy => "HTTP_PROXY: routes what it imports on every port".to_string(),
            Role::Unix => format!("bound to {}, a socket meshentry does not open: routes nothing", l.bind),
        };
        let hosts: Vec<String> = l.hosts.iter().map(|h| format!("{h:?}")).collect();
        lines.push(format!("{} hosts [{}]: {role}", l.label(), hosts.join(", ")));
    }
    lines.push(format!(
        "the proxy imports {} service{}; anything else is unknown to it",
        scope.services.len(),
        if scope.services.len() == 1 { "" } else { "s" }
    ));
    lines
}

fn request(args: &Args, t: &Target0) -> ExplainRequest {
    ExplainRequest {
        method: args.method.to_ascii_uppercase(),
        path: t.path.clone(),
        authority: if t.explicit_port {
            format!("{}:{}", t.host, t.port)
        } else {
            t.host.clone()
        },
        headers: args.headers.clone(),
    }
}

fn outcome_of(
    snap: &Snapshot,
    t: &Target0,
    decisions: &[(u32, u32, Decision<'_>)],
    ok: Vec<String>,
    errors: Vec<String>,
    name: Option<&str>,
) -> OutcomeJson {
    if decisions.iter().all(|(_, _, d)| matches!(d, Decision::Blocked)) {
        let host = name.unwrap_or(&t.host);
        return match t.proto {
            Proto::Http => refused(
                502,
                Some("BlackHoleCluster".into()),
                meshentry_proxy::blocked_reason(snap, host, t.port),
            ),
            _ => OutcomeJson {
                routed: false,
                result: "refused",
                status: None,
                cluster: Some("BlackHoleCluster".into()),
                message: format!(
                    "blocked by REGISTRY_ONLY: destination is not in the service registry (namespace {}, policy from {}); the connection is closed{}",
                    snap.namespace,
                    snap.policy_source,
                    if t.proto == Proto::Tls {
                        " after a TLS access_denied alert"
                    } else {
                        ""
                    }
                ),
            },
        };
    }
    if ok.is_empty() {
        return OutcomeJson {
            routed: false,
            result: "refused",
            status: (t.proto == Proto::Http).then_some(503),
            cluster: decisions.first().map(|(_, _, d)| d.cluster_name().to_string()),
            message: errors.join("; "),
        };
    }
    if ok.len() == 1 && ok[0] == "PassthroughCluster" {
        return OutcomeJson {
            routed: true,
            result: "passthrough",
            status: None,
            cluster: Some(ok[0].clone()),
            message: format!(
                "passed through to the original destination (outbound traffic policy ALLOW_ANY, from {})",
                snap.policy_source
            ),
        };
    }
    let mut message = format!("routed to {}", ok.join(", "));
    if !errors.is_empty() {
        message.push_str(&format!("; but {}", errors.join("; ")));
    }
    OutcomeJson {
        routed: true,
        result: "routed",
        status: None,
        cluster: Some(ok[0].clone()),
        message,
    }
}

/// C5 as the proxy decides it with what is known without resolving a name: the STATIC
/// endpoints of the candidates (a DNS service's names are not resolved here).
fn tcp_owner(snap: &Snapshot, dst: SocketAddr) -> Option<Decision<'_>> {
    route::tcp_owner(snap, dst)?.decide_with(snap, |c| c.static_hosts().cloned())
}

/// The transparent listener: its sequence (`route::transparent`) on the bytes the target's
/// protocol would send first, then Host routing (HTTP) or TLS/TCP rules.
fn explain_outbound<'s>(
    ex: &mut Explainer<'s>,
    args: &Args,
    t: &Target0,
    dst: SocketAddr,
    assumed: bool,
    name: Option<&str>,
) -> Result<Vec<(u32, u32, Decision<'s>)>, OutcomeJson> {
    let snap = ex.snap;
    let mut lines = vec![format!(
        "outbound listener (iptables-captured), original destination {dst}{}",
        if assumed {
            format!(" (assumed: {} resolves outside the mesh; --dst to change)", t.host)
        } else {
            String::new()
        }
    )];
    lines.push(ex.port_table(t.port));
    let detected = match (t.proto, name) {
        (Proto::Http, _) => Detected::Http1,
        (Proto::Tls, Some(n)) => Detected::Tls {
            sni: Some(n.to_string()),
        },
        (Proto::Tls, None) => Detected::Tls { sni: None },
        (Proto::Tcp, _) => Detected::Other,
    };
    let first_bytes = match &detected {
        Detected::Http1 => "an HTTP/1.1 request".to_string(),
        Detected::Tls { sni: Some(s) } => format!("a TLS ClientHello with SNI {s}"),
        Detected::Tls { sni: None } => "a TLS ClientHello without SNI".to_string(),
        _ => "bytes of no known protocol".to_string(),
    };
    // The listener's own sequence (route::transparent), driven as outbound.rs drives it, with
    // the first bytes the target's protocol would send when it asks for them.
    let mut first = None;
    let (decision, http) = loop {
        let handling = match route::transparent(snap, dst, first) {
            route::Step::Read => {
                lines.push(format!("protocol detection reads the first bytes: {first_bytes}"));
                first = Some(&detected);
                continue;
            }
            route::Step::Owner(owner) => {
                if first.is_none() {
                    lines.push(format!(
                        "only a catch-all TCP service declares port {}: relayed as TCP without reading (its first bytes are not looked at)",
                        t.port
                    ));
                }
                owner.with_owner(snap, tcp_owner(snap, dst))
            }
            route::Step::Done(h) => h,
        };
        match handling {
            Handling::Http => {
                lines.push(format!(
                    "served as HTTP: the request is routed by its Host among the services on port {}, else by the destination address",
                    t.port
                ));
                let host = name.or(Some(t.host.as_str()));
                break (route::route_transparent(snap, host, dst), true);
            }
            Handling::Relay { decision, misdeclared } => {
                if first.is_none() {
                    lines.push(format!(
                        "decided from the destination alone, without reading: relay to {}",
                        decision.cluster_name()
                    ));
                } else {
                    lines.push(format!("relayed as a byte stream to {}", decision.cluster_name()));
                }
                if misdeclared {
                    lines.push(
                        "the service port is declared HTTP but the client speaks TLS: forwarding it as TLS (Istio would fail it)"
                            .into(),
                    );
                }
                break (decision, false);
            }
        }
    };
    ex.step("listener", lines);
    ex.describe_service(&decision, name.or(Some(&t.host)), Some(dst), t.port);
    if http {
        let req = request(args, t);
        let host = name.unwrap_or(&t.host).to_string();
        let listener = format!("on the outbound listener (route table for port {})", t.port);
        return ex.http_routes(decision, &req, &host, t.port, &listener);
    }
    // E7: TLS and TCP rules (route::l4_routed picks among these destinations).
    let sni = match &detected {
        Detected::Tls { sni: Some(s) } => Some(s.as_str()),
        _ => None,
    };
    let mut lines = Vec::new();
    let result = match &decision {
        Decision::Cluster { service, port, .. } => match snap.routes.l4_rule(service, port.number, dst.ip(), sni) {
            Some(hit) => {
                let at = ex.resource(Kind::VirtualService, hit.vs).map(|r| r.origin.to_string());
                lines.push(format!(
                    "VirtualService {} (at {}) {}[{}] matches ({})",
                    hit.vs,
                    at.as_deref().unwrap_or("?"),
                    hit.kind.as_str(),
                    hit.index,
                    match (hit.kind, sni) {
                        (meshentry_route::model::vs::L4Kind::Tls, Some(s)) => format!("sniHosts cover {s}"),
                        _ => format!("destination {dst}"),
                    }
                ));
                ex.virtual_service = Some(VsJson {
                    name: hit.vs.to_string(),
                    at,
                    rule: Some(RuleJson {
                        kind: hit.kind.as_str(),
                        index: hit.index,
                        name: format!("#{}", hit.index),
                        matched: sni.map(|s| format!("sni {s}")),
                    }),
                });
                let out = ex.weighted(&mut lines, hit.dests, hit.total, "its connections are refused");
                if out.is_empty() {
                    lines.push("VirtualService destination does not exist: connection refused".into());
                    Err(OutcomeJson {
                        routed: false,
                        result: "refused",
                        status: None,
                        cluster: None,
                        message: format!(
                            "VirtualService {} routes to a missing destination: the connection is closed",
                            hit.vs
                        ),
                    })
                } else {
                    Ok(out)
                }
            }
            None => {
                match snap.routes.l4_of(service, port.number) {
                    Some(vs) => lines.push(format!(
                        "VirtualService {vs} has TLS/TCP rules for {}:{}, but none matches: the default route ({})",
                        service.host,
                        port.number,
                        decision.cluster_name()
                    )),
                    None => lines.push(format!(
                        "no VirtualService TLS/TCP rule for {}:{}: the default route ({})",
                        service.host,
                        port.number,
                        decision.cluster_name()
                    )),
                }
                Ok(vec![(1, 1, decision)])
            }
        },
        _ => {
            lines.push("no service, so no VirtualService applies".into());
            Ok(vec![(1, 1, decision)])
        }
    };
    ex.step("virtual service", lines);
    result
}

fn write_text(out: &mut impl Write, e: &Explanation) -> std::io::Result<()> {
    let r = &e.request;
    let what = match r.protocol {
        Proto::Http => format!("{} {}", r.method.as_deref().unwrap_or("GET"), r.target),
        _ => r.target.clone(),
    };
    writeln!(out, "request: {what}")?;
    writeln!(
        out,
        "proxy:   namespace {}, labels {}, outbound policy {} (from {})",
        e.proxy.namespace,
        if e.proxy.labels.is_empty() {
            "none".into()
        } else {
            fmt_labels(&e.proxy.labels)
        },
        e.proxy.outbound_policy,
        e.proxy.policy_source
    )?;
    for (i, s) in e.steps.iter().enumerate() {
        writeln!(out, "\n{}. {}", i + 1, s.step)?;
        for l in &s.lines {
            writeln!(out, "   {l}")?;
        }
    }
    if !e.warnings.is_empty() {
        writeln!(out, "\nwarnings:")?;
        for w in &e.warnings {
            writeln!(out, "   {w}")?;
        }
    }
    if !e.notes.is_empty() {
        writeln!(out, "\nnotes:")?;
        for n in &e.notes {
            writeln!(out, "   {n}")?;
        }
    }
    let o = &e.outcome;
    writeln!(
        out,
        "\noutcome: {}{}: {}",
        o.result.to_ascii_uppercase(),
        o.status.map_or(String::new(), |s| format!(" {s}")),
        o.message
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("http://a.com:8080/x?y=1").unwrap();
        assert!(t.proto == Proto::Http && t.host == "a.com" && t.port == 8080 && t.path == "/x?y=1" && t.explicit_port);
        let t = parse_target("http://A.com?q").unwrap();
        assert!(t.port == 80 && t.path == "/?q" && !t.explicit_port && t.host == "a.com");
        assert!(parse_target("https://a.com").unwrap().port == 443);
        assert!(parse_target("tcp://1.2.3.4:5").unwrap().proto == Proto::Tcp);
        assert!(parse_target("tcp://a.com:5").is_err());
        assert!(parse_target("tcp://1.2.3.4").is_err());
        assert!(parse_target("ftp://a").is_err());
        assert!(parse_target("a.com").is_err());
        assert_eq!(parse_header("X-A: b").unwrap(), ("x-a".into(), "b".into()));
    }
}
