//! Gateway mode (F1-F4): the proxy runs as one `Gateway`, listening on its servers' ports.
//!
//! Each server port becomes a listener. HTTP servers (and HTTPS servers whose TLS is
//! terminated here: SIMPLE, MUTUAL, ISTIO_MUTUAL) route every request by its `Host` to a
//! virtual host: a name where a bound VirtualService's hosts meet the server's hosts, with the
//! rules of every such VirtualService concatenated (E3); no virtual host is a 404. PASSTHROUGH
//! servers read the ClientHello and route by SNI with the VirtualServices' `tls` rules;
//! AUTO_PASSTHROUGH ones by the SNI Istio's sidecars send (`outbound_.PORT_.SUBSET_.HOST`); TCP
//! servers with `tcp` rules. Destinations are the proxy's clusters, as for a sidecar.
//!
//! A gateway proxy has no Kubernetes secrets: `credentialName` is refused, and SIMPLE/MUTUAL
//! servers name their files in `serverCertificate`, `privateKey` and `caCertificates`. Those
//! files (or the mesh identity's, for ISTIO_MUTUAL) are checked for changes every
//! `--cert-check-interval` and a changed set replaces the server's TLS configuration whole
//! ([`ServerTls::reload_if_changed`]), as Envoy's SDS rotates a gateway's certificates.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use meshentry_api::model::{Gateway as GatewaySpec, ServerTlsMode, ServerTlsSettings};
use meshentry_api::{Resource, Spec};
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::ProxyConfig;
use crate::detect::{Detected, detect};
use crate::flags::Flags;
use crate::forward::{self, Original};
use crate::http::{ConnCtx, ResponseBody, local};
use crate::route::{self, Decision, split_host_port};
use crate::server::{ConnGuard, Shared};
use crate::snapshot::Snapshot;
use crate::telemetry::{Routed, TcpConn, note};
use crate::tls::{FileWatch, load_certs, load_key, provider};
use crate::vs::{CompileInput, GatewayRoutes, RouteTables, ServerHost};

/// The Gateway this proxy runs as, compiled for one snapshot.
pub struct Gateway {
    /// `namespace/name`.
    pub name: String,
    /// One per server port, sorted by port.
    pub listeners: Vec<Listener>,
}

/// One listening port of the gateway (its servers on that port merged).
pub struct Listener {
    pub port: u16,
    /// The server port's protocol, upper case.
    pub protocol: String,
    pub kind: Kind,
    pub hosts: Vec<ServerHost>,
    /// `tls.httpsRedirect` of a plain HTTP server: every request gets a 301 to `https://`.
    pub https_redirect: bool,
    pub routes: GatewayRoutes,
}

/// What a listener does with a connection.
pub enum Kind {
    /// Plain HTTP, routed by `Host`.
    Http,
    /// TLS terminated here, then HTTP routed by `Host`; `Err` says why it cannot start.
    Terminate {
        mode: ServerTlsMode,
        tls: Result<ServerTls, String>,
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

/// Where a gateway connection arrived, for the HTTP path.
#[derive(Clone, Copy, Debug)]
pub struct GatewayConn {
    /// The server port (the listener port VirtualService `port` matches compare with).
    pub port: u16,
    /// Whether TLS was terminated (the request's scheme is https).
    pub tls: bool,
}

/// F1: the Gateway `namespace/name` among `resources`, if it exists and is valid.
pub fn find<'a>(resources: &[&'a Resource], name: &str) -> Option<(&'a Resource, &'a GatewaySpec)> {
    let (ns, gw) = name.split_once('/')?;
    resources.iter().find_map(|r| match &r.spec {
        Spec::Gateway(g) if r.valid && r.namespace == ns && r.name() == gw => Some((*r, g)),
        _ => None,
    })
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
            let hosts: Vec<ServerHost> = server.hosts.iter().map(|h| ServerHost::parse(h, gw_ns)).collect();
            if let Some(l) = listeners.iter_mut().find(|l| l.port == number) {
                // Istio merges servers on one port; meshentry merges their hosts and keeps the
                // first server's TLS settings.
                if l.protocol != protocol || kind_key(server.tls.as_ref()) != kind_key_of(&l.kind) {
                    warnings.push(format!(
                        "Gateway {name}: servers[{i}] shares port {number} with an earlier server of another protocol or TLS mode; meshentry serves the port as the first server says"
                    ));
                }
                l.hosts.extend(hosts);
                continue;
            }
            let kind = listener_kind(&protocol, server.tls.as_ref(), config);
            if let Kind::Unsupported(why) = &kind {
                warnings.push(format!(
                    "Gateway {name}: servers[{i}] (port {number}) is not served: {why}"
                ));
            }
            listeners.push(Listener {
                port: number,
                protocol,
                kind,
                hosts,
                https_redirect: server.tls.as_ref().is_some_and(|t| t.https_redirect),
                routes: GatewayRoutes::default(),
            });
        }
        for l in &mut listeners {
            let (routes, w) = RouteTables::compile_gateway(resources, input, u32::from(l.port), &l.hosts);
            l.routes = routes;
            warnings.extend(w);
        }
        listeners.sort_by_key(|l| l.port);
        Some(Gateway {
            name: name.to_string(),
            listeners,
        })
    }

    pub fn listener(&self, port: u16) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.port == port)
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
                    tls: server_tls(tls, config).map_err(|e| format!("tls {}: {e}", mode.as_str())),
                },
            }
        }
        _ => Kind::Tcp,
    }
}

/// The TLS of a terminating server: its files (SIMPLE, MUTUAL, OPTIONAL_MUTUAL), or the proxy's
/// mesh identity (ISTIO_MUTUAL).
pub fn server_tls(tls: &ServerTlsSettings, config: &ProxyConfig) -> Result<ServerTls, String> {
    let (cert, key, ca, require) = match tls.mode {
        ServerTlsMode::IstioMutual => {
            let id = config.identity.as_ref().ok_or(
                "ISTIO_MUTUAL needs this proxy's mesh identity: start it with --cert, --key and --ca (meshentry ca issue writes them)",
            )?;
            (id.cert.clone(), id.key.clone(), Some(id.ca.clone()), true)
        }
        mode => {
            if !tls.credential_name.is_empty() || !tls.credential_names.is_empty() {
                return Err(format!(
                    "credentialName {:?} names a Kubernetes secret, which meshentry cannot read; give the files in serverCertificate and privateKey{}",
                    if tls.credential_name.is_empty() {
                        tls.credential_names.join(",")
                    } else {
                        tls.credential_name.clone()
                    },
                    if mode == ServerTlsMode::Simple {
                        ""
                    } else {
                        " (and caCertificates)"
                    }
                ));
            }
            if tls.server_certificate.is_empty() || tls.private_key.is_empty() {
                return Err("serverCertificate and privateKey (file paths) are required".into());
            }
            let ca = (!tls.ca_certificates.is_empty()).then(|| tls.ca_certificates.clone().into());
            match mode {
                ServerTlsMode::Mutual if ca.is_none() => {
                    return Err("MUTUAL needs caCertificates (the CA client certificates must chain to)".into());
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
    ServerTls::new(ServerFiles {
        cert,
        key,
        client_ca: ca,
        require,
    })
}

/// The files a terminating server's TLS is built from.
#[derive(Debug)]
struct ServerFiles {
    cert: PathBuf,
    key: PathBuf,
    /// The CA client certificates must chain to (MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL).
    client_ca: Option<PathBuf>,
    /// Whether a client certificate is required (MUTUAL, ISTIO_MUTUAL).
    require: bool,
}

/// A terminating server's TLS: its files and the rustls configuration built from them.
///
/// The configuration is swapped whole when the files change, rather than through a
/// `ResolvesServerCert`, because `caCertificates` (the client certificate verifier) rotates
/// too and a certificate, its key and the CA must change together. A handshake takes the
/// configuration in force with one lock-free `ArcSwap` load; a connection keeps the one it
/// was accepted with, so established connections are untouched by a rotation.
pub struct ServerTls {
    files: ServerFiles,
    config: ArcSwap<ServerConfig>,
    /// The files as they were when `config` was built.
    watch: FileWatch,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    fn new(files: ServerFiles) -> Result<ServerTls, String> {
        let watch = FileWatch::new(files.paths());
        let config = build_server_config(&files)?;
        Ok(ServerTls {
            files,
            config: ArcSwap::new(config),
            watch,
        })
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// Rebuilds the configuration when one of its files changed since it was built (a stat
    /// of each; they are read only then). On a broken file, or a certificate and key that do
    /// not match (half-way through a rotation), the configuration in force stays and the error
    /// is returned; it is not retried until a file changes again. `Ok(true)`: reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        if !self.watch.changed() {
            return Ok(false);
        }
        self.config.store(build_server_config(&self.files)?);
        Ok(true)
    }
}

impl ServerFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut out = vec![self.cert.clone(), self.key.clone()];
        out.extend(self.client_ca.clone());
        out
    }
}

fn build_server_config(files: &ServerFiles) -> Result<Arc<ServerConfig>, String> {
    let (cert, key, client_ca, require) = (&files.cert, &files.key, files.client_ca.as_deref(), files.require);
    let chain = load_certs("server certificate", cert).map_err(|e| e.to_string())?;
    let key_path = key;
    let key = load_key(key_path).map_err(|e| e.to_string())?;
    let provider = provider();
    // Parsed once more by `with_single_cert`; done here first so that the error names the key
    // file rather than the certificate (reloads are rare, the cost is nothing).
    provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("private key {}: {e}", key_path.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs("CA certificates", ca).map_err(|e| e.to_string())? {
                roots
                    .add(c)
                    .map_err(|e| format!("CA certificates {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if require {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| format!("client certificate verifier: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        // Expected for a moment when a rotation replaces the two files one at a time.
        rustls::Error::InconsistentKeys(_) => format!(
            "{} and {}: the certificate and the private key do not match",
            cert.display(),
            key_path.display()
        ),
        e => format!("{}: {e}", cert.display()),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

// === Data path ===

/// Accepts connections on the gateway's server port `port` until `shutdown` turns true.
pub async fn serve_gateway(listener: TcpListener, port: u16, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    crate::server::serve_listener(listener, shared, shutdown, move |stream, peer, shared| {
        handle(stream, peer, port, shared)
    })
    .await;
}

async fn handle(stream: TcpStream, peer: SocketAddr, port: u16, shared: Arc<Shared>) {
    let stats_owner = shared.clone();
    let _guard = ConnGuard::new(&stats_owner.stats);
    let snapshot = shared.snapshot.load_full();
    let Some(listener) = snapshot.gateway.as_ref().and_then(|g| g.listener(port)) else {
        tracing::warn!(%peer, port, "the gateway no longer has a server on this port: closed");
        return;
    };
    let _ = stream.set_nodelay(true);
    let ctx = |tls: bool| {
        Arc::new(ConnCtx {
            snapshot: snapshot.clone(),
            shared: shared.clone(),
            peer,
            transparent: None,
            gateway: Some(GatewayConn { port, tls }),
        })
    };
    match &listener.kind {
        Kind::Http => crate::http::serve_io(stream, peer, ctx(false)).await,
        Kind::Terminate { tls: Ok(tls), mode } => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            let timeout = shared.config.header_read_timeout;
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => crate::http::serve_io(tls, peer, ctx(true)).await,
                Ok(Err(e)) => {
                    shared.stats.downstream_tls_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, port, mode = mode.as_str(), error = %e, "gateway TLS handshake failed");
                }
                Err(_) => {
                    shared.stats.downstream_tls_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, port, "gateway TLS handshake timed out");
                }
            }
        }
        Kind::Terminate { tls: Err(reason), .. } | Kind::Unsupported(reason) => {
            tracing::warn!(%peer, port, reason, "gateway server not served: connection closed");
        }
        Kind::Passthrough | Kind::AutoPassthrough | Kind::Tcp => {
            l4(stream, peer, listener, &snapshot, &shared).await;
        }
    }
}

/// PASSTHROUGH, AUTO_PASSTHROUGH and TCP servers: pick a cluster, then relay the bytes.
async fn l4(mut stream: TcpStream, peer: SocketAddr, listener: &Listener, snap: &Snapshot, shared: &Arc<Shared>) {
    let port = listener.port;
    let local = stream.local_addr().ok();
    let dst = local.map_or(peer.ip(), |a| a.ip());
    let mut buf = BytesMut::with_capacity(4096);
    let sni = if matches!(listener.kind, Kind::Tcp) {
        None
    } else {
        // TLS clients speak first; give them the time a client has to send a request head.
        match detect(&mut stream, &mut buf, shared.config.header_read_timeout, None).await {
            Detected::Tls { sni: Some(sni) } => Some(sni),
            other => {
                tracing::info!(%peer, port, detected = other.as_str(), "gateway TLS server: no ClientHello with an SNI; closed");
                return;
            }
        }
    };
    let decision = match (&listener.kind, &sni) {
        (Kind::AutoPassthrough, Some(sni)) => auto_passthrough(snap, sni),
        (Kind::Passthrough, Some(sni)) if !listener.hosts.iter().any(|h| h.covers(sni)) => {
            Err(format!("SNI {sni} is not among the server's hosts"))
        }
        _ => match listener.routes.l4_pick(dst, sni.as_deref()) {
            Some(d) => route::to_target(snap, &d.target).map_err(str::to_string),
            None => Err("no VirtualService rule of this gateway matches".into()),
        },
    };
    let routed = decision.as_ref().map_or(Routed::Unknown, Routed::of);
    let mut tcp = TcpConn::open(shared, routed, peer, local, sni.as_deref());
    let (cluster, name) = match &decision {
        Ok(d @ Decision::Cluster { cluster, .. }) => (&***cluster, d.cluster_name().to_string()),
        Ok(_) => return,
        Err(reason) => {
            tcp.refused(Flags::NR, "");
            shared.stats.blocked.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, port, sni, reason, "gateway: connection refused (no route)");
            let _ = stream.shutdown().await;
            return;
        }
    };
    let host = sni.clone().unwrap_or_else(|| dst.to_string());
    let original = Original { host: &host, port };
    match forward::connect_stream(shared, Some(cluster), &original).await {
        Ok((upstream, addr)) => {
            tcp.connected(&addr, &upstream);
            shared.stats.tunnels.fetch_add(1, Ordering::Relaxed);
            tcp.relayed(crate::outbound::relay(stream, upstream, &buf, shared).await);
        }
        Err(e) => {
            tcp.failed(&e);
            shared.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, port, cluster = name, flags = e.flag(), error = %e, "gateway connection failed upstream");
        }
    }
}

/// F3: AUTO_PASSTHROUGH reads the cluster from Istio's SNI `outbound_.PORT_.SUBSET_.HOST`.
fn auto_passthrough<'s>(snap: &'s Snapshot, sni: &str) -> Result<Decision<'s>, String> {
    let bad = || format!("SNI {sni} is not outbound_.PORT_.SUBSET_.HOST");
    let rest = sni.strip_prefix("outbound_.").ok_or_else(bad)?;
    let (port, rest) = rest.split_once("_.").ok_or_else(bad)?;
    let (subset, host) = rest.split_once("_.").ok_or_else(bad)?;
    let port: u32 = port.parse().map_err(|_| bad())?;
    let service = snap
        .view()
        .lookup_host(host)
        .ok_or_else(|| format!("{host} is not a service this gateway sees"))?;
    let cluster = if subset.is_empty() {
        snap.cluster(service, port)
    } else {
        snap.subset_cluster(service, port, subset)
    }
    .ok_or_else(|| format!("no cluster outbound|{port}|{subset}|{host}"))?;
    let port = service.port(port).ok_or_else(|| format!("{host} has no port {port}"))?;
    Ok(Decision::Cluster { cluster, service, port })
}

/// An HTTP request on a gateway listener (F3): `httpsRedirect`, then the virtual host named
/// by the request's `Host` (404 when none), then its rules.
pub(crate) async fn forward(req: Request<Incoming>, ctx: &Arc<ConnCtx>, g: GatewayConn) -> Response<ResponseBody> {
    let Some(listener) = ctx.snapshot.gateway.as_ref().and_then(|gw| gw.listener(g.port)) else {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            "meshentry: the gateway no longer has this port",
        );
    };
    let host_header = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| req.headers().get(header::HOST).cloned());
    let Some(host_header) = host_header else {
        ctx.shared.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        note(|o| o.fail(Flags::DPE, "missing_host_header"));
        return local(StatusCode::BAD_REQUEST, "meshentry: the request has no Host header");
    };
    let text = String::from_utf8_lossy(host_header.as_bytes()).into_owned();
    let Some((host, _)) = split_host_port(&text, g.port) else {
        ctx.shared.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        note(|o| o.fail(Flags::DPE, "invalid_host_header"));
        return local(StatusCode::BAD_REQUEST, "meshentry: the Host header is not host[:port]");
    };
    if listener.https_redirect && !g.tls {
        note(|o| o.fail(Flags::NONE, "direct_response"));
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut resp = local(StatusCode::MOVED_PERMANENTLY, "");
        if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{path}")) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return resp;
    }
    let Some(routes) = listener.routes.http(host) else {
        note(|o| o.fail(Flags::NR, "route_not_found"));
        let gw = ctx.snapshot.gateway.as_ref().map_or("", |g| g.name.as_str());
        let mut resp = local(
            StatusCode::NOT_FOUND,
            &format!(
                "meshentry: gateway {gw} port {}: no VirtualService bound to it routes host {host}",
                g.port
            ),
        );
        resp.headers_mut().insert(
            HeaderName::from_static("x-meshentry-response-flags"),
            HeaderValue::from_static("NR"),
        );
        return resp;
    };
    let original = Original { host, port: g.port };
    crate::routed::handle(ctx, routes, req, host_header.clone(), &original, g.port).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(yaml: &str, gateway: &str, namespace: &str) -> Snapshot {
        let loaded = meshentry_api::load_str("t.yaml", yaml, &meshentry_api::LoadOptions::default());
        assert!(!loaded.has_errors(), "{:?}", loaded.errors().collect::<Vec<_>>());
        let valid: Vec<_> = loaded.valid().collect();
        let dns = crate::dns::Dns::new(crate::dns::DnsConfig {
            server: Some(SocketAddr::from(([127, 0, 0, 1], 9))),
            ..Default::default()
        })
        .unwrap();
        let config = ProxyConfig {
            namespace: namespace.into(),
            gateway: Some(gateway.into()),
            ..Default::default()
        };
        Snapshot::build(&valid, &config, &dns, 1)
    }

    /// The VirtualServices and rule names of the virtual host `host` on `port`.
    fn vhost(snap: &Snapshot, port: u16, host: &str) -> Option<(String, Vec<String>)> {
        let l = snap.gateway.as_ref()?.listener(port)?;
        let r = l.routes.http(host)?;
        Some((r.vs.to_string(), r.rules.iter().map(|r| r.name.to_string()).collect()))
    }

    const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: istio-system}
spec:
  hosts: [a.example.com, b.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["team-a/*.example.com", "./b.example.com"]
  - port: {number: 8080, name: http2, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a1, namespace: team-a, creationTimestamp: "2020-01-01T00:00:00Z"}
spec:
  hosts: [a.example.com]
  gateways: [istio-system/gw]
  http:
  - {name: a1-only-80, match: [{port: 80}], route: [{destination: {host: a.example.com}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a2, namespace: team-a, creationTimestamp: "2021-01-01T00:00:00Z"}
spec:
  hosts: ["*.example.com"]
  gateways: [istio-system/gw]
  http:
  - {name: a2-all, route: [{destination: {host: b.example.com}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a3, namespace: team-a, creationTimestamp: "2022-01-01T00:00:00Z"}
spec:
  hosts: [a.example.com]
  gateways: [istio-system/gw]
  http:
  - {name: a3-all, route: [{destination: {host: a.example.com}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: team-b}
spec:
  hosts: [b.example.com, c.example.com]
  gateways: [gw]
  http:
  - {name: b-all, route: [{destination: {host: b.example.com}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: sys, namespace: istio-system}
spec:
  hosts: [b.example.com]
  gateways: [gw]
  http:
  - {name: sys-all, route: [{destination: {host: b.example.com}}]}
"#;

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
        let snap = snapshot(CONFIG, "istio-system/gw", "istio-system");
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
                .listener(8080)
                .unwrap()
                .routes
                .vhosts()
                .all(|(_, r)| !r.vs.contains("team-b"))
        );
        assert!(snap.routes.http_is_empty(), "a gateway proxy has no sidecar routes");
    }

    #[test]
    fn a_missing_gateway_builds_nothing() {
        let snap = snapshot(CONFIG, "istio-system/nope", "istio-system");
        assert!(snap.gateway.is_none());
    }

    #[test]
    fn terminating_servers_need_files_or_an_identity() {
        let tls = |yaml: &str| -> ServerTlsSettings { serde_json::from_str(yaml).unwrap() };
        let config = ProxyConfig::default();
        let err = server_tls(&tls(r#"{"mode": "SIMPLE", "credentialName": "c"}"#), &config).unwrap_err();
        assert!(
            err.contains("credentialName \"c\"") && err.contains("serverCertificate"),
            "{err}"
        );
        let err = server_tls(&tls(r#"{"mode": "SIMPLE"}"#), &config).unwrap_err();
        assert!(err.contains("serverCertificate and privateKey"), "{err}");
        let err = server_tls(
            &tls(r#"{"mode": "MUTUAL", "serverCertificate": "/c", "privateKey": "/k"}"#),
            &config,
        )
        .unwrap_err();
        assert!(err.contains("caCertificates"), "{err}");
        let err = server_tls(&tls(r#"{"mode": "ISTIO_MUTUAL"}"#), &config).unwrap_err();
        assert!(err.contains("--cert"), "{err}");
        let err = server_tls(
            &tls(r#"{"mode": "SIMPLE", "serverCertificate": "/nonexistent/c.pem", "privateKey": "/k"}"#),
            &config,
        )
        .unwrap_err();
        assert!(err.contains("/nonexistent/c.pem"), "{err}");
    }
}
