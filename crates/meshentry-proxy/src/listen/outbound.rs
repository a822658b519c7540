//! The transparent listener (Istio's `virtualOutbound` on 15001): connections that iptables
//! redirected here, each with the destination the application meant (SO_ORIGINAL_DST).
//!
//! A connection is decided by its destination alone when that is enough (a declared TCP or
//! TLS service address, or an unknown destination under ALLOW_ANY), so server-first protocols
//! and bulk TCP pay nothing for detection. Otherwise its first bytes are read ([`detect`]) and
//! Istio's per-port rules (C3-C8) pick: HTTP is served request by request and routed by Host,
//! TLS goes by SNI, the rest by address or by the port's catch-all TCP service.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use socket2::SockRef;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::base::flags::Flags;
use crate::net::detect::{Detected, detect};
use crate::net::forward::{self, Original, Upstream};
use crate::obs::telemetry::Routed;
use crate::route::{self, Decision, Handling, Step};
use crate::rt::shared::{ConnGuard, Shared};
use crate::serve::ctx::{ConnCtx, Transparent};
use crate::serve::h1::Rewind;
use crate::serve::record::TcpConn;
use crate::wire::alert;

/// Accepts redirected connections until `shutdown` turns true.
pub async fn serve_outbound(listener: TcpListener, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    // Asked and set once here rather than for every connection (a system call each).
    let local = listener.local_addr().ok();
    nodelay_for_accepted(&listener);
    crate::listen::server::serve_listener(listener, shared, shutdown, move |stream, peer, shared| {
        handle(stream, peer, local, shared)
    })
    .await;
}

/// Sets TCP_NODELAY on the listening socket: Linux copies it into every socket `accept`
/// returns, so relayed bytes (a TLS handshake's small records) are not held back by Nagle's
/// algorithm without a `setsockopt` per connection.
fn nodelay_for_accepted(listener: &TcpListener) {
    if let Err(e) = SockRef::from(listener).set_tcp_nodelay(true) {
        tracing::warn!(error = %e, "cannot set TCP_NODELAY on the outbound listener");
    }
}

/// Where the application was going: the NAT table's original destination. `peer` is the
/// address `accept` returned, whose family is the socket's (v4-mapped addresses included).
pub fn original_dst(stream: &TcpStream, peer: SocketAddr) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let addr = match peer {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "original destination is not an IP address"))
}

/// `local`: the listener's address.
async fn handle(stream: TcpStream, peer: SocketAddr, local: Option<SocketAddr>, shared: Arc<Shared>) {
    let stats_owner = shared.clone();
    let stats = &stats_owner.stats;
    let _guard = ConnGuard::new(stats);
    stats.outbound_connections.fetch_add(1, Ordering::Relaxed);
    let dst = match original_dst(&stream, peer) {
        Ok(dst) => dst,
        Err(e) => {
            stats.outbound_loops.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, error = %e, "connection without an original destination (not redirected by iptables?): closed");
            return;
        }
    };
    // A connection made straight to this port (not redirected) reports the port itself as
    // its original destination; forwarding it would connect to ourselves.
    if shared.is_self_addr(dst) || local == Some(dst) {
        stats.outbound_loops.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, %dst, "connection addressed to the proxy itself (not redirected, or redirected twice): closed");
        return;
    }
    let snapshot = shared.snapshot.load_full();
    let mut buf = BytesMut::new();
    let mut stream = stream;
    // The destination alone decides what it can; the first bytes are read only when asked.
    let mut detected = None;
    let decision = loop {
        let handling = match route::transparent(&snapshot, dst, detected.as_ref()) {
            Step::Done(handling) => handling,
            Step::Owner(owner) => owner.with_owner(&snapshot, snapshot.tcp_owner(&shared.dns, dst).await),
            Step::Read => {
                buf.reserve(4096);
                let first = detect(&mut stream, &mut buf, shared.config.sniff_timeout, None).await;
                stats.count_detected(&first);
                if first == Detected::Closed {
                    return;
                }
                detected = Some(first);
                continue;
            }
        };
        match handling {
            Handling::Http if detected == Some(Detected::H2c) => {
                let _ = stream.set_nodelay(true);
                let ctx = Arc::new(ConnCtx {
                    snapshot,
                    shared,
                    peer,
                    transparent: Some(Transparent::new(dst)),
                    gateway: None,
                });
                crate::serve::http::serve_h2(Rewind::new(buf, stream), ctx).await;
                return;
            }
            Handling::Http => {
                crate::serve::h1::serve(stream, peer, shared, buf, Some(Transparent::new(dst))).await;
                return;
            }
            Handling::Relay { decision, misdeclared } => {
                if misdeclared {
                    tracing::warn!(
                        %peer, %dst, cluster = decision.cluster_name(),
                        "the service port is declared HTTP but the client speaks TLS: forwarding it as TLS (Istio would fail it)"
                    );
                }
                break decision;
            }
        }
    };
    // E7: the TLS and TCP rules of a VirtualService for the service the connection reached.
    let sni = match &detected {
        Some(Detected::Tls { sni: Some(sni) }) => Some(sni.as_str()),
        _ => None,
    };
    let decision = route::l4_routed(&snapshot, decision, dst, sni);
    let mut tcp = TcpConn::open(&shared, Routed::of(&decision), peer, Some(dst), sni);
    let cluster = match &decision {
        Decision::Blocked => {
            tcp.refused(Flags::NR, "");
            stats.blocked.fetch_add(1, Ordering::Relaxed);
            let sni = match &detected {
                Some(Detected::Tls { sni: Some(sni) }) => sni.as_str(),
                _ => "",
            };
            tracing::warn!(
                %peer, %dst, sni, namespace = %snapshot.namespace, policy_source = %snapshot.policy_source,
                "blocked by REGISTRY_ONLY: destination is not in the service registry"
            );
            if matches!(detected, Some(Detected::Tls { .. })) {
                let _ = stream.write_all(&alert::fatal(alert::ACCESS_DENIED)).await;
            }
            let _ = stream.shutdown().await;
            return;
        }
        Decision::Passthrough => {
            stats.passthrough.fetch_add(1, Ordering::Relaxed);
            None
        }
        Decision::Cluster { cluster, .. } => Some(&***cluster),
    };
    // The destination as text is only dialled by ORIGINAL_DST and passthrough; a cluster with
    // endpoints never reads it, so its connections skip formatting and allocating it.
    let dials_original = cluster.is_none_or(|c| c.original_dst_port().is_some());
    let host = if dials_original {
        dst.ip().to_string()
    } else {
        String::new()
    };
    let to = Upstream {
        shared: &shared,
        live: &snapshot,
        cluster,
        original: Original {
            host: &host,
            port: dst.port(),
        },
    };
    let upstream = match tcp.connect(&to).await {
        Ok(upstream) => upstream,
        Err(e) => {
            // Every address to dial was the proxy itself: a loop, as a connection addressed to it.
            let counter = match e {
                forward::UpstreamError::Loop(_) => &stats.outbound_loops,
                _ => &stats.upstream_errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, %dst, cluster = decision.cluster_name(), flags = e.flag(), error = %e, "connection failed upstream");
            return;
        }
    };
    stats.tunnels.fetch_add(1, Ordering::Relaxed);
    tcp.relayed(crate::net::relay::relay(stream, upstream, &buf, &shared).await);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_inherit_nodelay_from_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        nodelay_for_accepted(&listener);
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "relay() relies on the listener's TCP_NODELAY"
        );
    }
}
