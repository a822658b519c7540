//! Gateway mode's data path: one connection to a listener of the Gateway
//! [`crate::model::gateway`] compiled: its TLS termination and the routing of each connection or
//! request.

use crate::base::addr::ListenAddr;
use crate::base::flags::Flags;
use crate::live::Live;
use crate::model::snapshot::Snapshot;
use crate::model::vs::ServerHost;
use crate::net::conn::Conn;
use crate::net::detect::{Detected, detect};
use crate::net::forward::{Original, Upstream};
use crate::obs::telemetry::Routed;
use crate::route::{self, Decision};
use crate::rt::shared::{ConnGuard, Shared};
use crate::serve::ctx::ConnCtx;
use crate::serve::record::TcpConn;
use bytes::BytesMut;
use meshentry_registry::host;
use rustls::server::Acceptor;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::io::AsyncWriteExt;
use tokio_rustls::StartHandshake;
use tokio_rustls::server::TlsStream;

use crate::live::server_tls::ServerTls;
use crate::model::gateway::*;

pub(crate) async fn handle<C: Conn>(stream: C, peer: SocketAddr, addr: ListenAddr, shared: Arc<Shared>) {
    let stats_owner = shared.clone();
    let _guard = ConnGuard::new(&stats_owner.stats);
    let snapshot = shared.snapshot.load_full();
    let Some(listener) = snapshot.gateway.as_ref().and_then(|g| g.listener(&addr)) else {
        tracing::warn!(%peer, listener = %addr, "the gateway no longer has a server on this listener: closed");
        return;
    };
    stream.no_delay();
    if listener.is_tls() {
        tls_port(stream, peer, listener, &snapshot, &shared).await;
        return;
    }
    // A plain port: its servers are merged into one.
    let server = &listener.servers[0];
    let port = listener.port;
    match &server.kind {
        Kind::Http => {
            let ctx = conn_ctx(&snapshot, &shared, peer, listener, false, 0);
            crate::serve::http::serve_io(stream, peer, ctx).await;
        }
        Kind::Tcp => l4(stream, peer, port, server, BytesMut::new(), None, &snapshot, &shared).await,
        other => {
            tracing::warn!(%peer, port, serves = %other.describe(), "gateway server not served: connection closed");
        }
    }
}

fn conn_ctx(
    snapshot: &Arc<Live>,
    shared: &Arc<Shared>,
    peer: SocketAddr,
    listener: &Listener,
    tls: bool,
    server: usize,
) -> Arc<ConnCtx> {
    Arc::new(ConnCtx {
        snapshot: snapshot.clone(),
        shared: shared.clone(),
        peer,
        transparent: None,
        gateway: Some(GatewayConn {
            listener: listener.addr(),
            port: listener.port,
            tls,
            server,
        }),
    })
}

/// A connection to a TLS port: the ClientHello's SNI picks the server, whose own TLS
/// settings then terminate it (or whose rules relay it).
async fn tls_port<C: Conn>(
    mut stream: C,
    peer: SocketAddr,
    listener: &Listener,
    snapshot: &Arc<Live>,
    shared: &Arc<Shared>,
) {
    let port = listener.port;
    // One budget for the ClientHello and the handshake, as before the server was chosen by SNI.
    let timeout = shared.config.header_read_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(4096);
    let sni = match detect(&mut stream, &mut buf, timeout, None).await {
        Detected::Tls { sni } => sni,
        other => {
            shared.stats.downstream_tls_errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, port, detected = other.as_str(), "gateway TLS server: no ClientHello; closed");
            return;
        }
    };
    let Some(index) = listener.select(sni.as_deref()) else {
        // Envoy: no filter chain matches, the connection is closed (listener stat
        // `no_filter_chain_match`, flag NR in the listener's access log).
        shared.stats.gateway_no_server.fetch_add(1, Ordering::Relaxed);
        let mut tcp = TcpConn::open(shared, Routed::Unknown, peer, stream.local(), sni.as_deref());
        tcp.refused(Flags::NR, "filter_chain_not_found");
        tracing::info!(%peer, port, sni, "gateway: no server on the port takes this SNI; closed");
        let _ = stream.shutdown().await;
        return;
    };
    let server = &listener.servers[index];
    match &server.kind {
        Kind::Terminate { mode, .. } => {
            let tls = match snapshot.server_tls(server.index) {
                Some(Ok(tls)) => tls,
                _ => {
                    let reason = snapshot.server_error(server).unwrap_or_default();
                    tracing::warn!(%peer, port, server = server.index, reason, "gateway server not served: connection closed");
                    return;
                }
            };
            match tokio::time::timeout_at(deadline, handshake(stream, buf, sni.as_deref(), tls)).await {
                Ok(Ok(tls)) => {
                    let ctx = conn_ctx(snapshot, shared, peer, listener, true, index);
                    crate::serve::http::serve_io(tls, peer, ctx).await;
                }
                Ok(Err(e)) => {
                    shared.stats.downstream_tls_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, port, server = server.index, mode = mode.as_str(), sni, error = %e, "gateway TLS handshake failed");
                }
                Err(_) => {
                    shared.stats.downstream_tls_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, port, server = server.index, "gateway TLS handshake timed out");
                }
            }
        }
        Kind::Passthrough | Kind::AutoPassthrough => {
            l4(stream, peer, port, server, buf, sni, snapshot, shared).await;
        }
        Kind::Unsupported(reason) => {
            tracing::warn!(%peer, port, server = server.index, reason, "gateway server not served: connection closed");
        }
        Kind::Http | Kind::Tcp => {
            tracing::warn!(%peer, port, server = server.index, "a plain server on a TLS port: connection closed");
        }
    }
}

/// Completes the handshake of a connection whose ClientHello, naming `sni`, has been read
/// into `hello`, with the chosen server's TLS.
///
/// The bytes already read go straight into rustls's `Acceptor` rather than being replayed
/// through a wrapper around the socket, so nothing stays allocated for the connection's life.
async fn handshake<C: Conn>(
    mut stream: C,
    hello: BytesMut,
    sni: Option<&str>,
    tls: &ServerTls,
) -> io::Result<TlsStream<C>> {
    let mut acceptor = Acceptor::default();
    let mut rest: &[u8] = &hello;
    while !rest.is_empty() {
        if acceptor.read_tls(&mut rest)? == 0 {
            break;
        }
    }
    drop(hello);
    let accepted = match acceptor.accept() {
        Ok(Some(accepted)) => accepted,
        // The SNI parser saw a whole ClientHello; rustls reads it as cut short.
        Ok(None) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ClientHello incomplete to rustls",
            ));
        }
        Err((e, mut alert)) => {
            let mut out = Vec::new();
            if alert.write_all(&mut out).is_ok() {
                let _ = stream.write_all(&out).await;
            }
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    };
    let start = StartHandshake::from_parts(accepted, stream);
    // The server was chosen on meshentry's reading of the ClientHello; rustls reads it again.
    // Should the two ever disagree on the name, one server's certificate and client CA could
    // end up serving a connection another server was chosen for: refuse rather than guess.
    if let Some(theirs) = sni_disagreement(start.client_hello().server_name(), sni) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the ClientHello's server name reads {theirs:?} to rustls but {sni:?} to the SNI parser"),
        ));
    }
    start.into_stream(tls.config()).await
}

/// `Some(rustls's name)` when rustls and the SNI parser read different server names.
fn sni_disagreement(theirs: Option<&str>, ours: Option<&str>) -> Option<Option<String>> {
    let agree = match (theirs, ours) {
        (Some(t), Some(o)) => {
            let bare = |n: &str| n.strip_suffix('.').unwrap_or(n).to_ascii_lowercase();
            bare(t) == bare(o)
        }
        (None, None) => true,
        // rustls treats an IP address sent as a host name as no SNI (RFC 6066 forbids it).
        (None, Some(o)) => o.parse::<std::net::IpAddr>().is_ok(),
        (Some(_), None) => false,
    };
    (!agree).then(|| theirs.map(str::to_string))
}

/// PASSTHROUGH, AUTO_PASSTHROUGH and TCP servers: pick a cluster, then relay the bytes
/// (`buf`: those already read, the ClientHello).
#[allow(clippy::too_many_arguments)]
async fn l4<C: Conn>(
    mut stream: C,
    peer: SocketAddr,
    port: u16,
    server: &Server,
    buf: BytesMut,
    sni: Option<String>,
    snap: &Live,
    shared: &Arc<Shared>,
) {
    let local = stream.local();
    // A unix socket has no address: only rules without `destinationSubnets` match.
    let dst = local.map(|a| a.ip());
    let decision = match (&server.kind, &sni) {
        (Kind::AutoPassthrough, Some(sni)) => auto_passthrough(snap, &server.hosts, sni),
        (Kind::Passthrough | Kind::AutoPassthrough, None) => Err("no SNI".to_string()),
        (Kind::Passthrough, Some(sni)) if !server.hosts.iter().any(|h| h.covers(sni)) => {
            Err(format!("SNI {sni} is not among the server's hosts"))
        }
        _ => match server.routes.l4_pick(dst, sni.as_deref()) {
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
    let host = sni
        .clone()
        .or_else(|| dst.map(|ip| ip.to_string()))
        .unwrap_or_else(|| "localhost".to_string());
    let to = Upstream {
        shared,
        live: snap,
        cluster: Some(cluster),
        original: Original { host: &host, port },
    };
    match tcp.connect(&to).await {
        Ok(upstream) => {
            shared.stats.tunnels.fetch_add(1, Ordering::Relaxed);
            tcp.relayed(crate::net::relay::relay(stream, upstream, &buf, shared).await);
        }
        Err(e) => {
            shared.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, port, cluster = name, flags = e.flag(), error = %e, "gateway connection failed upstream");
        }
    }
}

/// F3: AUTO_PASSTHROUGH reads the cluster from Istio's SNI `outbound_.PORT_.SUBSET_.HOST`,
/// for a service under the server's `hosts` only: Istio builds a filter chain for a service
/// when its hostname `SubsetOf` one of them (pilot/pkg/networking/core/gateway.go,
/// `builtAutoPassthroughFilterChains`), so any other SNI finds no chain.
fn auto_passthrough<'s>(snap: &'s Snapshot, hosts: &[ServerHost], sni: &str) -> Result<Decision<'s>, String> {
    let (port, subset, host) =
        parse_auto_sni(sni).ok_or_else(|| format!("SNI {sni} is not outbound_.PORT_.SUBSET_.HOST"))?;
    let service = snap
        .view()
        .lookup_host(host)
        .ok_or_else(|| format!("{host} is not a service this gateway sees"))?;
    if !hosts.iter().any(|h| host::subset_of(&service.host, &h.host)) {
        return Err(format!("service {} is not among the server's hosts", service.host));
    }
    let cluster = if subset.is_empty() {
        snap.cluster(service, port)
    } else {
        snap.subset_cluster(service, port, subset)
    }
    .ok_or_else(|| format!("no cluster outbound|{port}|{subset}|{host}"))?;
    let port = service.port(port).ok_or_else(|| format!("{host} has no port {port}"))?;
    Ok(Decision::Cluster { cluster, service, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_and_the_sni_parser_must_read_the_same_name() {
        assert_eq!(sni_disagreement(Some("a.example.com"), Some("a.example.com")), None);
        assert_eq!(sni_disagreement(Some("a.example.com"), Some("A.Example.com.")), None);
        assert_eq!(sni_disagreement(Some("a.example.com."), Some("a.example.com")), None);
        assert_eq!(sni_disagreement(None, None), None);
        assert_eq!(sni_disagreement(None, Some("127.0.0.1")), None);
        assert_eq!(
            sni_disagreement(Some("b.example.com"), Some("a.example.com")),
            Some(Some("b.example.com".into()))
        );
        assert_eq!(sni_disagreement(None, Some("a.example.com")), Some(None));
        assert_eq!(
            sni_disagreement(Some("a.example.com"), None),
            Some(Some("a.example.com".into()))
        );
    }
}
