//! Gateway mode (F1-F4): the proxy runs as one `Gateway`, listening on its servers' ports.
//!
//! Each server port becomes a listener. HTTP servers (and HTTPS servers whose TLS is
//! terminated here: SIMPLE, MUTUAL, ISTIO_MUTUAL) route every request by its `Host` to a
//! virtual host: a name where a bound VirtualService's hosts meet the server's hosts, with the
//! rules of every such VirtualService concatenated (E3); no virtual host is a 404. PASSTHROUGH
//! servers read the ClientHello and route by SNI with the VirtualServices' `tls` rules;
//! AUTO_PASSTHROUGH ones by the SNI Istio's sidecars send (`outbound_.PORT_.SUBSET_.HOST`), for
//! services under their hosts only; TCP servers with `tcp` rules. Destinations are the proxy's
//! clusters, as for a sidecar.
//!
//! HTTPS and TLS servers sharing a port stay apart, as each is its own filter chain in Envoy:
//! the ClientHello's SNI picks the server ([`Listener::select`]), whose own certificate and
//! client CA terminate the connection, and whose own virtual hosts are all its requests can
//! reach (another server's `Host` is a 404, as in Istio). Sharing the first server's TLS and
//! one merged route table would let a client choose its way past a MUTUAL server's client
//! certificate check.
//!
//! SIMPLE/MUTUAL servers name their files in `serverCertificate`, `privateKey` and
//! `caCertificates`, or a Kubernetes secret in `credentialName` when the proxy keeps its
//! namespace's secrets as files (`--kubernetes-secrets`; refused otherwise). Those
//! files (or the mesh identity's, for ISTIO_MUTUAL) are checked for changes every
//! `--cert-check-interval` and a changed set replaces the server's TLS configuration whole
//! (the proxy's `live::server_tls`), as Envoy's SDS rotates a gateway's certificates. This
//! module decides which files a server uses ([`ServerFiles`]); the proxy loads them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use meshentry_api::model::{Gateway as GatewaySpec, ServerTlsMode, ServerTlsSettings};
use meshentry_api::{Resource, Spec};
use meshentry_registry::hash::FxHashMap;

use crate::base::addr::ListenAddr;
use crate::base::config::{CredentialFiles, ProxyConfig};
use crate::model::vs::{CompileInput, GatewayRoutes, RouteTables, ServerHost};
use meshentry_registry::host::covers;

/// The Gateway this proxy runs as, compiled for one snapshot.
pub struct Gateway {
    /// `namespace/name`.
    pub name: String,
    /// One per server port, sorted by port.
    pub listeners: Vec<Listener>,
}

/// One listening port of the gateway.
///
/// As in Istio (pilot/pkg/model/gateway.go `MergeGateways`), the first server on a port
/// decides what the port is. A TLS port (HTTPS and TLS servers) keeps each server apart, with
/// its own TLS settings and routes, and a connection's SNI picks the server
/// ([`Listener::select`]), as Envoy picks a filter chain by `server_names`. The plain HTTP
/// servers of a port share one route table (Istio's `http.PORT`), so they are merged into one
/// [`Server`]; so are TCP servers. A server of another kind than the port's first is not
/// served (Istio skips it too): served with the first one's TLS, it would expose its hosts
/// under settings that are not its own.
pub struct Listener {
    pub port: u16,
    /// Where it listens: its servers' `bind`, or `--gateway-bind` for servers without one.
    pub bind: Bind,
    /// The first server's protocol, upper case.
    pub protocol: String,
    /// Never empty.
    pub servers: Vec<Server>,
    /// How an SNI picks a server; `None` on a plain (HTTP or TCP) port.
    pub(crate) sni: Option<SniTable>,
}

/// One server of a port (or, on a plain port, the port's servers merged).
pub struct Server {
    /// Its index in the Gateway's `servers` (the first one's, when merged), for logs.
    pub index: usize,
    pub kind: Kind,
    pub hosts: Vec<ServerHost>,
    /// `tls.httpsRedirect` of a plain HTTP server: every request gets a 301 to `https://`.
    pub https_redirect: bool,
    pub routes: GatewayRoutes,
}

/// What a server does with a connection.
pub enum Kind {
    /// Plain HTTP, routed by `Host`.
    Http,
    /// TLS terminated here, then HTTP routed by `Host`, with the TLS these files make; `Err`
    /// says why it cannot start.
    Terminate {
        mode: ServerTlsMode,
        tls: Result<ServerFiles, ServerFilesError>,
    },
    /// TLS passed through, routed by SNI with VirtualService `tls` rules.
    Passthrough,
    /// TLS passed through to the service the SNI `outbound_.PORT_.SUBSET_.HOST` names.
    AutoPassthrough,
    /// Opaque TCP, routed with VirtualService `tcp` rules.
    Tcp,
    /// A server meshentry does not serve (the reason is logged at start).
    Unsupported(String),
}

impl Kind {
    pub fn describe(&self) -> String {
        match self {
            Kind::Http => "HTTP".into(),
            Kind::Terminate { mode, .. } => format!("TLS {} terminated, then HTTP", mode.as_str()),
            Kind::Passthrough => "TLS PASSTHROUGH (routed by SNI)".into(),
            Kind::AutoPassthrough => "TLS AUTO_PASSTHROUGH".into(),
            Kind::Tcp => "TCP".into(),
            Kind::Unsupported(why) => format!("not served: {why}"),
        }
    }
}

/// Where a gateway listener listens (Istio's `Server.bind`): a server's own address or unix
/// socket, or `--gateway-bind` for a server that names none.
///
/// As in Istio (pilot/pkg/model/gateway.go `mergeGateways`, which keys servers by
/// `ServerPort{Number, Protocol, Bind}`; pilot/pkg/networking/core/gateway.go
/// `buildGatewayListeners`, which listens on the bind rather than the wildcard), servers are
/// merged only with servers of the same port and bind: each (port, bind) is a listener of its
/// own, so servers with different binds share a port number without sharing anything else.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bind {
    Ip(IpAddr),
    /// `unix://PATH`: a unix socket at PATH, or `@NAME` in Linux's abstract namespace. The
    /// server's port number is then only what VirtualService `port` matches compare with.
    Unix(Arc<str>),
}

impl Bind {
    /// A server's `bind` (validated: empty, an IP or `unix://PATH`); `default` when empty.
    pub fn of(bind: &str, default: IpAddr) -> Bind {
        if let Some(path) = bind.strip_prefix("unix://") {
            return Bind::Unix(path.into());
        }
        bind.parse().map_or(Bind::Ip(default), Bind::Ip)
    }
}

impl fmt::Display for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bind::Ip(ip) => ip.fmt(f),
            Bind::Unix(path) => write!(f, "unix://{path}"),
        }
    }
}

/// Where a gateway connection arrived, for the HTTP path.
#[derive(Clone, Debug)]
pub struct GatewayConn {
    /// The listener it was accepted on (its servers are looked up in the snapshot in force).
    pub listener: ListenAddr,
    /// The server port (the listener port VirtualService `port` matches compare with).
    pub port: u16,
    /// Whether TLS was terminated (the request's scheme is https).
    pub tls: bool,
    /// The server (index in [`Listener::servers`]) whose TLS the connection came through, or
    /// the plain port's one: its routes, and only its, serve the connection's requests.
    pub server: usize,
}

/// A TLS port's servers by the names an SNI is matched against: Envoy's `server_names` of each
/// server's filter chain, which Istio fills with the server's hosts, namespaces dropped
/// (pilot/pkg/networking/core/gateway.go, `TLSServerInfo.SNIHosts`).
#[derive(Default)]
pub(crate) struct SniTable {
    exact: FxHashMap<Box<str>, usize>,
    /// `*.suffix` names, longest first: Envoy takes the most specific wildcard.
    wild: Vec<(Box<str>, usize)>,
    /// The server with a host of `*`: Istio then gives its filter chain no `server_names`,
    /// so it takes connections without an SNI and those whose SNI no other server lists.
    any: Option<usize>,
    /// AUTO_PASSTHROUGH servers: Istio gives them one filter chain per service under their
    /// hosts, named `outbound_.PORT_.SUBSET_.HOST`, rather than their hosts.
    auto: Vec<usize>,
}

impl Listener {
    /// The socket address it listens on.
    pub fn addr(&self) -> ListenAddr {
        match &self.bind {
            Bind::Ip(ip) => ListenAddr::Tcp(SocketAddr::new(*ip, self.port)),
            Bind::Unix(path) => ListenAddr::Unix(path.clone()),
        }
    }

    /// Whether it is a TLS port (HTTPS and TLS servers, picked by SNI).
    pub fn is_tls(&self) -> bool {
        self.sni.is_some()
    }

    /// Whether the port is opened: some server on it is served.
    pub fn served(&self) -> bool {
        self.servers.iter().any(|s| !matches!(s.kind, Kind::Unsupported(_)))
    }

    /// What the port serves, per server, for the startup log.
    pub fn describe(&self) -> String {
        self.servers
            .iter()
            .map(|s| {
                let hosts: Vec<String> = s.hosts.iter().map(|h| format!("{}/{}", h.namespace, h.host)).collect();
                format!("servers[{}] {} [{}]", s.index, s.kind.describe(), hosts.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Every server's virtual hosts, for logs.
    pub fn vhosts(&self) -> impl Iterator<Item = (&str, &crate::model::vs::HttpRoutes)> {
        self.servers.iter().flat_map(|s| s.routes.vhosts())
    }

    /// The server a TLS connection with `sni` goes to, as Envoy picks the filter chain
    /// (`FilterChainManagerImpl::findFilterChainForServerName`): an AUTO_PASSTHROUGH
    /// server for an `outbound_` SNI whose host it covers, else the server naming the SNI
    /// exactly, else the one with the longest wildcard covering it, else the server with no
    /// names (a host of `*`). `None`: Envoy has no filter chain and closes the connection.
    /// A plain port has one server and no SNI to go by.
    pub fn select(&self, sni: Option<&str>) -> Option<usize> {
        let Some(table) = &self.sni else {
            return Some(0);
        };
        if let Some(sni) = sni {
            let sni = sni.strip_suffix('.').unwrap_or(sni);
            if let Some((_, _, host)) = parse_auto_sni(sni)
                && let Some(&i) = table
                    .auto
                    .iter()
                    .find(|&&i| self.servers[i].hosts.iter().any(|h| h.covers(host)))
            {
                return Some(i);
            }
            if let Some(&i) = table.exact.get(sni) {
                return Some(i);
            }
            if let Some((_, i)) = table.wild.iter().find(|(w, _)| covers(w, sni)) {
                return Some(*i);
            }
        }
        table.any
    }
}

impl SniTable {
    /// Adds server `i` with `hosts`; `Err(names)` when another server on the port already
    /// lists one of them. Istio skips such a server (`MergeGateways`, "duplicate host names"):
    /// Envoy would refuse the listener whole for two filter chains with the same match.
    fn add(&mut self, i: usize, kind: &Kind, hosts: &[ServerHost]) -> Result<(), Vec<String>> {
        let mut dup: Vec<String> = Vec::new();
        let auto = matches!(kind, Kind::AutoPassthrough);
        for h in hosts {
            let name = h.host.as_str();
            let taken = if auto {
                false
            } else if name == "*" {
                self.any.is_some()
            } else if name.starts_with('*') {
                self.wild.iter().any(|(w, _)| &**w == name)
            } else {
                self.exact.contains_key(name)
            };
            if taken {
                dup.push(name.to_string());
            }
        }
        if !dup.is_empty() {
            return Err(dup);
        }
        if auto {
            self.auto.push(i);
            return Ok(());
        }
        for h in hosts {
            let name = h.host.as_str();
            if name == "*" {
                self.any = Some(i);
            } else if name.starts_with('*') {
                if !self.wild.iter().any(|(w, _)| &**w == name) {
                    self.wild.push((name.into(), i));
                }
            } else {
                self.exact.entry(name.into()).or_insert(i);
            }
        }
        self.wild.sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));
        Ok(())
    }
}

/// F1: the Gateway `namespace/name` among `resources`, if it exists and is valid.
pub fn find<'a>(resources: &[&'a Resource], name: &str) -> Option<(&'a Resource, &'a GatewaySpec)> {
    let (ns, gw) = name.split_once('/')?;
    resources.iter().find_map(|r| match &r.spec {
        Spec::Gateway(g) if r.valid && r.namespace == ns && r.name() == gw => Some((*r, g)),
        _ => None,
    })
}

/// What a port is, from its first server's protocol (Istio: plain text servers, and TLS
/// servers told apart by SNI, cannot share a port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortClass {
    Http,
    Tls,
    Tcp,
}

impl PortClass {
    fn of(protocol: &str) -> PortClass {
        match protocol {
            "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => PortClass::Http,
            "HTTPS" | "TLS" => PortClass::Tls,
            _ => PortClass::Tcp,
        }
    }
}

impl Gateway {
    /// Compiles the Gateway `name` (`namespace/name`); `None` when it does not exist. Warnings
    /// (servers not served, VirtualServices that bind to nothing) go to `warnings`.
    pub fn build(
        resources: &[&Resource],
        input: &CompileInput<'_>,
        name: &str,
        config: &ProxyConfig,
        warnings: &mut Vec<String>,
    ) -> Option<Gateway> {
        let (resource, spec) = find(resources, name)?;
        let gw_ns = resource.namespace.as_str();
        let mut listeners: Vec<Listener> = Vec::new();
        for (i, server) in spec.servers.iter().enumerate() {
            let Some(port) = server.port.as_ref() else { continue };
            let Ok(number) = u16::try_from(port.number) else {
                continue;
            };
            let protocol = port.protocol.to_ascii_uppercase();
            let class = PortClass::of(&protocol);
            let hosts: Vec<ServerHost> = server.hosts.iter().map(|h| ServerHost::parse(h, gw_ns)).collect();
            let https_redirect = server.tls.as_ref().is_some_and(|t| t.https_redirect);
            // A unix bind's port number is 0 (validation): one path, one listener.
            let bind = Bind::of(&server.bind, config.gateway_bind);
            if let Some(l) = listeners.iter_mut().find(|l| l.port == number && l.bind == bind) {
                let first = PortClass::of(&l.protocol);
                if class != first {
                    warnings.push(format!(
                        "Gateway {name}: servers[{i}] ({protocol}) is not served: port {number} is already {} (servers[{}]), and plain text and TLS servers cannot share a port",
                        l.protocol, l.servers[0].index
                    ));
                    continue;
                }
                if class == PortClass::Tls {
                    let kind = listener_kind(&protocol, server.tls.as_ref(), config);
                    if let Kind::Unsupported(why) = &kind {
                        warnings.push(format!(
                            "Gateway {name}: servers[{i}] (port {number}) is not served: {why}"
                        ));
                    }
                    let at = l.servers.len();
                    let table = l.sni.get_or_insert_with(SniTable::default);
                    if let Err(dup) = table.add(at, &kind, &hosts) {
                        warnings.push(format!(
                            "Gateway {name}: servers[{i}] is not served: another server on port {number} already lists {}",
                            dup.join(", ")
                        ));
                        continue;
                    }
                    l.servers.push(Server {
                        index: i,
                        kind,
                        hosts,
                        https_redirect,
                        routes: GatewayRoutes::default(),
                    });
                    continue;
                }
                // Plain servers on one port share one route table in Istio: their hosts are
                // merged, and the port is served as the first server says.
                let merged = &mut l.servers[0];
                if l.protocol != protocol || kind_key(server.tls.as_ref()) != kind_key_of(&merged.kind) {
                    warnings.push(format!(
                        "Gateway {name}: servers[{i}] shares port {number} with an earlier server of another protocol or TLS mode; meshentry serves the port as the first server says"
                    ));
                }
                merged.hosts.extend(hosts);
                continue;
            }
            let kind = listener_kind(&protocol, server.tls.as_ref(), config);
            if let Kind::Unsupported(why) = &kind {
                warnings.push(format!(
                    "Gateway {name}: servers[{i}] (port {number}) is not served: {why}"
                ));
            }
            let mut sni = None;
            if class == PortClass::Tls {
                let mut table = SniTable::default();
                // The first server on a port has nothing to collide with.
                let _ = table.add(0, &kind, &hosts);
                sni = Some(table);
            }
            listeners.push(Listener {
                port: number,
                bind,
                protocol,
                servers: vec![Server {
                    index: i,
                    kind,
                    hosts,
                    https_redirect,
                    routes: GatewayRoutes::default(),
                }],
                sni,
            });
        }
        listeners.sort_by(|a, b| (a.port, &a.bind).cmp(&(b.port, &b.bind)));
        // Compiled a port at a time, every bind's servers together: a VirtualService bound to
        // the servers of one bind is bound on the port, not missing from the other's.
        let mut at = 0;
        while at < listeners.len() {
            let port = listeners[at].port;
            let end = at + listeners[at..].iter().take_while(|l| l.port == port).count();
            let same_port = &mut listeners[at..end];
            let hosts: Vec<&[ServerHost]> = same_port
                .iter()
                .flat_map(|l| l.servers.iter().map(|s| s.hosts.as_slice()))
                .collect();
            let (routes, w) = RouteTables::compile_gateway(resources, input, u32::from(port), &hosts);
            let servers = same_port.iter_mut().flat_map(|l| l.servers.iter_mut());
            for (s, r) in servers.zip(routes) {
                s.routes = r;
            }
            warnings.extend(w);
            at = end;
        }
        Some(Gateway {
            name: name.to_string(),
            listeners,
        })
    }

    /// The listener on `addr`.
    pub fn listener(&self, addr: &ListenAddr) -> Option<&Listener> {
        self.listeners.iter().find(|l| &l.addr() == addr)
    }
}

fn kind_key(tls: Option<&ServerTlsSettings>) -> Option<ServerTlsMode> {
    tls.filter(|t| !t.https_redirect || t.mode != ServerTlsMode::Passthrough)
        .map(|t| t.mode)
}

fn kind_key_of(kind: &Kind) -> Option<ServerTlsMode> {
    match kind {
        Kind::Terminate { mode, .. } => Some(*mode),
        Kind::Passthrough => Some(ServerTlsMode::Passthrough),
        Kind::AutoPassthrough => Some(ServerTlsMode::AutoPassthrough),
        _ => None,
    }
}

/// F3: what a server of `protocol` with `tls` is.
fn listener_kind(protocol: &str, tls: Option<&ServerTlsSettings>, config: &ProxyConfig) -> Kind {
    match protocol {
        "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => Kind::Http,
        "HTTPS" | "TLS" => {
            let Some(tls) = tls else {
                return Kind::Unsupported(format!("a {protocol} server needs tls settings"));
            };
            match tls.mode {
                ServerTlsMode::Passthrough => Kind::Passthrough,
                ServerTlsMode::AutoPassthrough => Kind::AutoPassthrough,
                mode if protocol == "TLS" => Kind::Unsupported(format!(
                    "TLS servers that terminate ({}) are not supported; use HTTPS",
                    mode.as_str()
                )),
                mode => Kind::Terminate {
                    mode,
                    tls: server_files(tls, config),
                },
            }
        }
        _ => Kind::Tcp,
    }
}

/// Why a terminating server has no files to build its TLS from.
#[derive(Debug, thiserror::Error)]
pub enum ServerFilesError {
    #[error(
        "ISTIO_MUTUAL needs this proxy's mesh identity: start it with --cert, --key and --ca (meshentry ca issue writes them)"
    )]
    NoIdentity,
    #[error(
        "credentialName {names:?} names a Kubernetes secret, which this proxy does not read: run it with --kubernetes --kubernetes-secrets, or give the files in serverCertificate and privateKey{and_ca}"
    )]
    CredentialName { names: String, and_ca: &'static str },
    #[error("credentialName {0:?} is not a Kubernetes Secret name")]
    BadCredentialName(String),
    #[error("serverCertificate and privateKey (file paths) are required")]
    NoFiles,
    #[error("MUTUAL needs caCertificates (the CA client certificates must chain to)")]
    NoClientCa,
}

/// The TLS of a terminating server: its files (SIMPLE, MUTUAL, OPTIONAL_MUTUAL), or the proxy's
/// mesh identity (ISTIO_MUTUAL).
pub fn server_files(tls: &ServerTlsSettings, config: &ProxyConfig) -> Result<ServerFiles, ServerFilesError> {
    let (cert, key, ca, require) = match tls.mode {
        ServerTlsMode::IstioMutual => {
            let id = config.identity.as_ref().ok_or(ServerFilesError::NoIdentity)?;
            (id.cert.clone(), id.key.clone(), Some(id.ca.clone()), true)
        }
        mode => {
            // Istio's credentialNames holds at most one RSA and one ECDSA certificate; a
            // proxy serves the first.
            let name = match tls.credential_names.first() {
                Some(first) if tls.credential_name.is_empty() => first.as_str(),
                _ => tls.credential_name.as_str(),
            };
            if !name.is_empty() {
                let Some(dir) = &config.credentials else {
                    return Err(ServerFilesError::CredentialName {
                        names: if tls.credential_name.is_empty() {
                            tls.credential_names.join(",")
                        } else {
                            tls.credential_name.clone()
                        },
                        and_ca: if mode == ServerTlsMode::Simple {
                            ""
                        } else {
                            " (and caCertificates)"
                        },
                    });
                };
                let files = CredentialFiles::of(dir, name)
                    .ok_or_else(|| ServerFilesError::BadCredentialName(name.to_string()))?;
                // MUTUAL's client CA: the secret's ca.crt (or its NAME-cacert secret's).
                let (ca, require) = match mode {
                    ServerTlsMode::Mutual => (Some(files.ca), true),
                    ServerTlsMode::OptionalMutual => (Some(files.ca), false),
                    _ => (None, false),
                };
                return Ok(ServerFiles {
                    cert: files.cert,
                    key: files.key,
                    client_ca: ca,
                    require,
                });
            }
            if tls.server_certificate.is_empty() || tls.private_key.is_empty() {
                return Err(ServerFilesError::NoFiles);
            }
            let ca = (!tls.ca_certificates.is_empty()).then(|| tls.ca_certificates.clone().into());
            match mode {
                ServerTlsMode::Mutual if ca.is_none() => {
                    return Err(ServerFilesError::NoClientCa);
                }
                ServerTlsMode::Mutual => (
                    tls.server_certificate.clone().into(),
                    tls.private_key.clone().into(),
                    ca,
                    true,
                ),
                ServerTlsMode::OptionalMutual => (
                    tls.server_certificate.clone().into(),
                    tls.private_key.clone().into(),
                    ca,
                    false,
                ),
                _ => (
                    tls.server_certificate.clone().into(),
                    tls.private_key.clone().into(),
                    None,
                    false,
                ),
            }
        }
    };
    Ok(ServerFiles {
        cert,
        key,
        client_ca: ca,
        require,
    })
}

/// The files a terminating server's TLS is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA client certificates must chain to (MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL).
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is required (MUTUAL, ISTIO_MUTUAL).
    pub require: bool,
}

impl ServerFiles {
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut out = vec![self.cert.clone(), self.key.clone()];
        out.extend(self.client_ca.clone());
        out
    }
}

/// `(port, subset, host)` of Istio's AUTO_PASSTHROUGH SNI `outbound_.PORT_.SUBSET_.HOST`.
pub fn parse_auto_sni(sni: &str) -> Option<(u32, &str, &str)> {
    let rest = sni.strip_prefix("outbound_.")?;
    let (port, rest) = rest.split_once("_.")?;
    let (subset, host) = rest.split_once("_.")?;
    Some((port.parse().ok()?, subset, host))
}

/// Why this proxy cannot run as the Gateway `--gateway` names.
#[derive(Debug, thiserror::Error)]
pub enum GatewayCheckError {
    #[error("no such Gateway in the configuration (Gateways: {known})")]
    NotFound { known: String },
    #[error("its selector does not match this proxy's labels (missing {missing}); start it with --labels {labels}")]
    Selector { missing: String, labels: String },
}

/// F1: the Gateway must exist and select this proxy's labels.
pub fn check(
    resources: &[&meshentry_api::Resource],
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), GatewayCheckError> {
    let Some((_, spec)) = find(resources, name) else {
        let known: Vec<String> = resources
            .iter()
            .filter(|r| matches!(r.spec, meshentry_api::Spec::Gateway(_)))
            .map(|r| format!("{}/{}", r.namespace, r.name()))
            .collect();
        return Err(GatewayCheckError::NotFound {
            known: if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            },
        });
    };
    let missing: Vec<String> = spec
        .selector
        .iter()
        .filter(|(k, v)| labels.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !missing.is_empty() {
        return Err(GatewayCheckError::Selector {
            missing: missing.join(","),
            labels: spec
                .selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{assert_warned, doc};
    use crate::model::snapshot::Snapshot;

    /// A listener of a server without `bind`: on the default `--gateway-bind`.
    fn at(port: u16) -> ListenAddr {
        ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn snapshot(yaml: &str, gateway: &str, namespace: &str) -> Snapshot {
        let config = ProxyConfig {
            namespace: namespace.into(),
            gateway: Some(gateway.into()),
            ..Default::default()
        };
        crate::model::fixtures::snapshot(yaml, &config)
    }

    /// The VirtualServices and rule names of the virtual host `host` on `port`.
    fn vhost(snap: &Snapshot, port: u16, host: &str) -> Option<(String, Vec<String>)> {
        let l = snap.gateway.as_ref()?.listener(&at(port))?;
        let r = l.servers[0].routes.http(host)?;
        Some((r.vs.to_string(), r.rules.iter().map(|r| r.name.to_string()).collect()))
    }

    fn config() -> String {
        let vs = |metadata: &str, hosts: &str, gateway: &str, rule: &str| {
            doc(
                "VirtualService",
                metadata,
                &format!("hosts: [{hosts}], gateways: [{gateway}], http: [{{{rule}}}]"),
            )
        };
        [
            doc(
                "ServiceEntry",
                "name: ext, namespace: istio-system",
                "hosts: [a.example.com, b.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS",
            ),
            doc(
                "Gateway",
                "name: gw, namespace: istio-system",
                concat!(
                    "selector: {istio: egressgateway}, servers: [",
                    r#"{port: {number: 80, name: http, protocol: HTTP}, hosts: ["team-a/*.example.com", "./b.example.com"]}, "#,
                    r#"{port: {number: 8080, name: http2, protocol: HTTP}, hosts: ["*"]}]"#,
                ),
            ),
            vs(
                r#"name: a1, namespace: team-a, creationTimestamp: "2020-01-01T00:00:00Z""#,
                "a.example.com",
                "istio-system/gw",
                "name: a1-only-80, match: [{port: 80}], route: [{destination: {host: a.example.com}}]",
            ),
            vs(
                r#"name: a2, namespace: team-a, creationTimestamp: "2021-01-01T00:00:00Z""#,
                r#""*.example.com""#,
                "istio-system/gw",
                "name: a2-all, route: [{destination: {host: b.example.com}}]",
            ),
            vs(
                r#"name: a3, namespace: team-a, creationTimestamp: "2022-01-01T00:00:00Z""#,
                "a.example.com",
                "istio-system/gw",
                "name: a3-all, route: [{destination: {host: a.example.com}}]",
            ),
            vs(
                "name: b, namespace: team-b",
                "b.example.com, c.example.com",
                "gw",
                "name: b-all, route: [{destination: {host: b.example.com}}]",
            ),
            vs(
                "name: sys, namespace: istio-system",
                "b.example.com",
                "gw",
                "name: sys-all, route: [{destination: {host: b.example.com}}]",
            ),
        ]
        .concat()
    }

    #[test]
    fn server_host_syntax() {
        let p = |s| ServerHost::parse(s, "gw-ns");
        assert_eq!(
            (p("a.com").namespace.as_str(), p("a.com").host.as_str()),
            ("*", "a.com")
        );
        assert_eq!(p("./a.com").namespace, "gw-ns");
        assert_eq!(p("ns1/*.A.com").namespace, "ns1");
        assert_eq!(p("ns1/*.A.com").host, "*.a.com");
        // The more specific of the two names becomes the virtual host.
        assert_eq!(p("*.a.com").bind("x", "b.a.com").as_deref(), Some("b.a.com"));
        assert_eq!(p("b.a.com").bind("x", "*.a.com").as_deref(), Some("b.a.com"));
        assert_eq!(p("*").bind("x", "*.a.com").as_deref(), Some("*.a.com"));
        assert_eq!(p("ns1/*").bind("x", "b.a.com"), None, "another namespace");
        assert_eq!(p("*.b.com").bind("x", "a.com"), None);
    }

    #[test]
    fn virtual_hosts_meet_server_hosts_and_concatenate_virtual_services() {
        let snap = snapshot(&config(), "istio-system/gw", "istio-system");
        // Port 80: team-a's VirtualServices through `team-a/*.example.com`; a1 and a3 both
        // name a.example.com, so its virtual host has their rules concatenated, oldest first
        // (E3 at gateways), and a2's wildcard virtual host does not join it (Envoy picks the
        // most specific virtual host); team-b's bind nowhere (b.example.com is `./`).
        assert_eq!(
            vhost(&snap, 80, "a.example.com"),
            Some(("team-a/a1,team-a/a3".into(), vec!["a1-only-80".into(), "a3-all".into()]))
        );
        assert_eq!(
            vhost(&snap, 80, "z.example.com"),
            Some(("team-a/a2".into(), vec!["a2-all".into()]))
        );
        assert_eq!(
            vhost(&snap, 80, "B.example.com."),
            Some(("istio-system/sys".into(), vec!["sys-all".into()])),
            "the exact virtual host wins over team-a's wildcard"
        );
        assert_eq!(
            vhost(&snap, 80, "c.example.com"),
            Some(("team-a/a2".into(), vec!["a2-all".into()]))
        );
        assert_eq!(vhost(&snap, 80, "example.com"), None);
        // Port 8080 (`*`): a1's rule is for port 80 only, so it drops out.
        assert_eq!(
            vhost(&snap, 8080, "a.example.com"),
            Some(("team-a/a3".into(), vec!["a3-all".into()]))
        );
        // team-b's bare `gw` means team-b/gw: not this gateway (E2).
        assert!(
            snap.gateway
                .as_ref()
                .unwrap()
                .listener(&at(8080))
                .unwrap()
                .vhosts()
                .all(|(_, r)| !r.vs.contains("team-b"))
        );
        assert!(snap.routes.http_is_empty(), "a gateway proxy has no sidecar routes");
    }

    #[test]
    fn a_missing_gateway_builds_nothing() {
        let snap = snapshot(&config(), "istio-system/nope", "istio-system");
        assert!(snap.gateway.is_none());
    }

    #[test]
    fn credential_names_are_the_secrets_files_when_the_proxy_keeps_secrets() {
        let tls = |yaml: &str| -> ServerTlsSettings { serde_json::from_str(yaml).unwrap() };
        let config = ProxyConfig {
            credentials: Some("/run/secrets".into()),
            ..ProxyConfig::default()
        };
        let files = server_files(&tls(r#"{"mode": "SIMPLE", "credentialName": "gw-cert"}"#), &config).unwrap();
        assert_eq!(files.cert, std::path::Path::new("/run/secrets/gw-cert/tls.crt"));
        assert_eq!(files.key, std::path::Path::new("/run/secrets/gw-cert/tls.key"));
        assert_eq!(files.client_ca, None);
        assert!(!files.require);
        let files = server_files(
            &tls(r#"{"mode": "MUTUAL", "credentialNames": ["rsa", "ecdsa"]}"#),
            &config,
        )
        .unwrap();
        assert_eq!(files.cert, std::path::Path::new("/run/secrets/rsa/tls.crt"));
        assert_eq!(
            files.client_ca.as_deref(),
            Some(std::path::Path::new("/run/secrets/rsa/ca.crt"))
        );
        assert!(files.require);
        let files = server_files(
            &tls(r#"{"mode": "SIMPLE", "credentialName": "kubernetes://gw-cert"}"#),
            &config,
        )
        .unwrap();
        assert_eq!(files.cert, std::path::Path::new("/run/secrets/gw-cert/tls.crt"));
        // Nothing but a Secret's name may become a path.
        for bad in ["../etc", "a/b", "/abs", "UPPER", "", "a..b", "-a"] {
            let yaml = format!(
                r#"{{"mode": "SIMPLE", "credentialName": "{bad}", "serverCertificate": "/c", "privateKey": "/k"}}"#
            );
            match server_files(&tls(&yaml), &config) {
                Err(ServerFilesError::BadCredentialName(n)) => assert_eq!(n, bad),
                // An empty name is no credentialName at all: the files are used.
                Ok(f) if bad.is_empty() => assert_eq!(f.cert, std::path::Path::new("/c")),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn terminating_servers_need_files_or_an_identity() {
        let tls = |yaml: &str| -> ServerTlsSettings { serde_json::from_str(yaml).unwrap() };
        let config = ProxyConfig::default();
        let err = server_files(&tls(r#"{"mode": "SIMPLE", "credentialName": "c"}"#), &config)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("credentialName \"c\"")
                && err.contains("--kubernetes-secrets")
                && err.contains("serverCertificate"),
            "{err}"
        );
        let err = server_files(&tls(r#"{"mode": "SIMPLE"}"#), &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("serverCertificate and privateKey"), "{err}");
        let err = server_files(
            &tls(r#"{"mode": "MUTUAL", "serverCertificate": "/c", "privateKey": "/k"}"#),
            &config,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("caCertificates"), "{err}");
        let err = server_files(&tls(r#"{"mode": "ISTIO_MUTUAL"}"#), &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--cert"), "{err}");
    }

    fn gateway_yaml(servers: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{servers}"
        )
    }

    /// The servers[] index (in the Gateway) each SNI goes to on `port`.
    fn picks(snap: &Snapshot, port: u16, snis: &[Option<&str>]) -> Vec<Option<usize>> {
        let l = snap.gateway.as_ref().unwrap().listener(&at(port)).unwrap();
        snis.iter()
            .map(|sni| l.select(*sni).map(|i| l.servers[i].index))
            .collect()
    }

    #[test]
    fn an_sni_picks_its_server_as_envoy_picks_a_filter_chain() {
        let servers = "  - port: {number: 443, name: a, protocol: TLS}
    hosts: [ns1/a.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 443, name: b, protocol: TLS}
    hosts: ['*.example.com']
    tls: {mode: PASSTHROUGH}
  - port: {number: 443, name: c, protocol: TLS}
    hosts: ['*.b.example.com', c.example.org]
    tls: {mode: PASSTHROUGH}
  - port: {number: 443, name: d, protocol: TLS}
    hosts: ['*.mesh.internal']
    tls: {mode: AUTO_PASSTHROUGH}
  - port: {number: 8443, name: e, protocol: TLS}
    hosts: [e.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 8443, name: f, protocol: TLS}
    hosts: ['ns2/*']
    tls: {mode: PASSTHROUGH}
";
        let snap = snapshot(&gateway_yaml(servers), "istio-system/gw", "istio-system");
        assert_eq!(
            picks(
                &snap,
                443,
                &[
                    Some("a.example.com"),
                    Some("x.example.com"),
                    Some("x.y.example.com"),
                    // The longest wildcard wins, however deep the name.
                    Some("x.b.example.com"),
                    Some("x.y.b.example.com"),
                    Some("b.example.com"),
                    Some("c.example.org"),
                    Some("example.com"),
                    Some("a.example.com."),
                    // AUTO_PASSTHROUGH takes Istio's SNIs for hosts under its own only.
                    Some("outbound_.443_._.api.mesh.internal"),
                    Some("outbound_.443_.v1_.api.mesh.internal"),
                    Some("outbound_.443_._.a.example.com"),
                    Some("outbound_.443_._.mesh.internal"),
                    // No server without names: no SNI, or an unknown one, finds none.
                    None,
                    Some("other.test"),
                ]
            ),
            [
                Some(0),
                Some(1),
                Some(1),
                Some(2),
                Some(2),
                Some(1),
                Some(2),
                None,
                Some(0),
                Some(3),
                Some(3),
                // Another server's name, spelt as Istio's SNI: the wildcard server's, as in
                // Envoy, where server_names `*.example.com` covers it too.
                Some(1),
                None,
                None,
                None,
            ]
        );
        // A host of `*` (in any namespace) leaves a server without names: it takes the rest.
        assert_eq!(
            picks(&snap, 8443, &[Some("e.example.com"), Some("x.example.com"), None]),
            [Some(4), Some(5), Some(5)]
        );
    }

    #[test]
    fn bind_names_an_ip_a_unix_socket_or_the_default() {
        let default: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(Bind::of("", default), Bind::Ip(default));
        assert_eq!(Bind::of("127.0.11.1", default), Bind::Ip("127.0.11.1".parse().unwrap()));
        assert_eq!(Bind::of("::1", default), Bind::Ip("::1".parse().unwrap()));
        assert_eq!(
            Bind::of("unix:///var/run/gw.sock", default),
            Bind::Unix("/var/run/gw.sock".into())
        );
        assert_eq!(Bind::of("unix://@gw", default), Bind::Unix("@gw".into()));
        assert_eq!(Bind::Unix("/a.sock".into()).to_string(), "unix:///a.sock");
    }

    /// Istio's `mergeGateways` keys servers by port and bind: servers with different binds are
    /// listeners of their own, even of kinds that could not share one; an explicit bind equal
    /// to the default is the default's listener.
    #[test]
    fn each_port_and_bind_is_a_listener_of_its_own() {
        let servers = "  - port: {number: 80, name: a, protocol: HTTP}
    hosts: [a.example.com]
    bind: 127.0.11.1
  - port: {number: 80, name: b, protocol: TLS}
    hosts: [b.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 80, name: c, protocol: HTTP}
    hosts: [c.example.com]
    bind: 127.0.11.1
  - port: {number: 80, name: d, protocol: TLS}
    hosts: [d.example.com]
    tls: {mode: PASSTHROUGH}
    bind: 127.0.0.1
  - port: {number: 0, name: e, protocol: HTTP}
    hosts: [e.example.com]
    bind: unix:///run/gw.sock
  - port: {number: 0, name: f, protocol: HTTP}
    hosts: [f.example.com]
    bind: unix:///run/gw.sock
";
        let snap = snapshot(&gateway_yaml(servers), "istio-system/gw", "istio-system");
        let gw = snap.gateway.as_ref().unwrap();
        let addrs: Vec<String> = gw.listeners.iter().map(|l| l.addr().to_string()).collect();
        assert_eq!(addrs, ["unix:///run/gw.sock", "127.0.0.1:80", "127.0.11.1:80"]);
        let servers = |addr: &str| -> Vec<usize> {
            let l = gw.listeners.iter().find(|l| l.addr().to_string() == addr).unwrap();
            l.servers.iter().map(|s| s.index).collect()
        };
        // The plain HTTP servers of one bind merge; TLS on the default bind is apart from them.
        assert_eq!(servers("127.0.11.1:80"), [0]);
        let hosts: Vec<&str> = gw.listeners[2].servers[0]
            .hosts
            .iter()
            .map(|h| h.host.as_str())
            .collect();
        assert_eq!(hosts, ["a.example.com", "c.example.com"]);
        assert_eq!(servers("127.0.0.1:80"), [1, 3]);
        let unix = gw.listener(&ListenAddr::Unix("/run/gw.sock".into())).unwrap();
        assert_eq!(unix.port, 0);
        let hosts: Vec<&str> = unix.servers[0].hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(hosts, ["e.example.com", "f.example.com"], "one socket, one listener");
        assert!(
            !snap.warnings.iter().any(|w| w.contains("cannot share")),
            "{:?}",
            snap.warnings
        );
    }

    #[test]
    fn a_server_that_cannot_share_the_port_is_not_served_and_says_why() {
        let servers = "  - port: {number: 443, name: a, protocol: TLS}
    hosts: [a.example.com, '*.b.example.com']
    tls: {mode: PASSTHROUGH}
  - port: {number: 443, name: dup, protocol: TLS}
    hosts: [x.example.com, ns1/a.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 443, name: dup-wild, protocol: TLS}
    hosts: ['ns2/*.b.example.com']
    tls: {mode: PASSTHROUGH}
  - port: {number: 443, name: plain, protocol: HTTP}
    hosts: [c.example.com]
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [d.example.com]
  - port: {number: 80, name: http2, protocol: HTTP2}
    hosts: [e.example.com]
  - port: {number: 80, name: tls-on-80, protocol: TLS}
    hosts: [f.example.com]
    tls: {mode: PASSTHROUGH}
";
        let snap = snapshot(&gateway_yaml(servers), "istio-system/gw", "istio-system");
        let gw = snap.gateway.as_ref().unwrap();
        let l = gw.listener(&at(443)).unwrap();
        assert_eq!(l.servers.iter().map(|s| s.index).collect::<Vec<_>>(), [0]);
        // x.example.com was in the skipped server only.
        assert_eq!(l.select(Some("x.example.com")), None);
        let plain = gw.listener(&at(80)).unwrap();
        assert_eq!(plain.servers.len(), 1, "plain HTTP servers merge");
        let hosts: Vec<&str> = plain.servers[0].hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(hosts, ["d.example.com", "e.example.com"]);
        assert_eq!(plain.select(Some("anything")), Some(0));
        assert_warned(
            &snap,
            &[
                "servers[1] is not served: another server on port 443 already lists a.example.com",
                "servers[2] is not served: another server on port 443 already lists *.b.example.com",
                "servers[3] (HTTP) is not served: port 443 is already TLS",
                "servers[6] (TLS) is not served: port 80 is already HTTP",
            ],
        );
    }
}
