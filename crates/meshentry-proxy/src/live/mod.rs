//! A snapshot in force, with the state only a running proxy has: each cluster's DNS entries
//! and the hosts made from their answers, each cluster's TLS origination and each terminating
//! Gateway server's TLS, built from the files the snapshot names. Kept per cluster id
//! ([`Cluster::id`]) beside the pure [`Snapshot`], and swapped with it on reload.

pub mod dns;
pub mod server_tls;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use meshentry_registry::hash::FxHashMap;
use meshentry_route::model::cluster::{Cluster, Discovery, HostSet};
use meshentry_route::model::gateway::{Kind, Listener, Server};
use meshentry_route::model::snapshot::Snapshot;
use meshentry_route::model::tls::RecipeError;
use meshentry_route::route::{self, Decision, TunnelDst};

use dns::{Answer, Dns, DnsError, DnsName};
use server_tls::{ServerTls, ServerTlsError};
use tls::Origination;

/// A snapshot and its runtime state. Dereferences to the [`Snapshot`], so what only decides
/// reads it as one.
pub struct Live {
    snap: Snapshot,
    /// By [`Cluster::id`].
    clusters: Box<[ClusterRt]>,
    /// By the Gateway server's index ([`meshentry_route::model::gateway::Server::index`]),
    /// for terminating servers whose files were chosen.
    servers: FxHashMap<usize, Result<ServerTls, ServerTlsError>>,
}

/// One cluster's runtime state.
struct ClusterRt {
    /// DNS clusters: an entry per target (so answers survive reloads: entries come from the
    /// shared [`Dns`]) and the hosts made from the last answers.
    dns: Option<DnsRt>,
    /// TLS origination: the configuration built from the cluster's recipe, or why it could not
    /// be (what the cluster's connections fail with).
    tls: Option<Result<Arc<Origination>, TlsUnavailable>>,
}

struct DnsRt {
    entries: Box<[Arc<DnsName>]>,
    current: ArcSwap<DnsHosts>,
}

/// A DNS cluster's hosts, with the answers they were made from (to notice when to rebuild).
struct DnsHosts {
    answers: Vec<Option<Arc<Answer>>>,
    set: Arc<HostSet>,
}

/// Why a cluster cannot originate the TLS its rule asks for.
#[derive(Debug, thiserror::Error)]
pub enum TlsUnavailable {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// The recipe's files could not be read or used; `who` is the rule that names them.
    #[error("{who}: {source}")]
    Files {
        who: String,
        #[source]
        source: tls::ConfigError,
    },
}

/// Why a cluster has no host to offer.
#[derive(Debug, thiserror::Error)]
pub enum NoHost {
    #[error("no healthy upstream (the service has no endpoints)")]
    Empty,
    #[error(transparent)]
    Dns(#[from] DnsError),
}

impl Deref for Live {
    type Target = Snapshot;

    fn deref(&self) -> &Snapshot {
        &self.snap
    }
}

impl Live {
    /// Builds `snap`'s runtime state: DNS entries from `dns`, TLS configurations from the
    /// files (a file that cannot be read is the cluster's or server's error, and a warning).
    pub fn new(mut snap: Snapshot, dns: &Dns) -> Live {
        let mut warnings = Vec::new();
        let clusters = snap
            .eager()
            .iter()
            .map(|cluster| ClusterRt {
                dns: match &cluster.discovery {
                    Discovery::Dns { targets, .. } => Some(DnsRt {
                        entries: targets.iter().map(|t| dns.entry(&t.name)).collect(),
                        current: ArcSwap::from_pointee(DnsHosts {
                            answers: Vec::new(),
                            set: Arc::new(HostSet::new(cluster.policy, Vec::new())),
                        }),
                    }),
                    _ => None,
                },
                tls: cluster.tls.as_ref().map(|recipe| {
                    let recipe = recipe.as_ref().map_err(|e| TlsUnavailable::Recipe(e.clone()))?;
                    Origination::new(recipe.clone()).map(Arc::new).map_err(|source| {
                        let e = TlsUnavailable::Files {
                            who: recipe.source.clone(),
                            source,
                        };
                        warnings.push(format!(
                            "{}: TLS origination is off, its connections fail: {e}",
                            cluster.name
                        ));
                        e
                    })
                }),
            })
            .collect();
        let mut servers = FxHashMap::default();
        for server in snap.gateway.iter().flat_map(|g| &g.listeners).flat_map(|l| &l.servers) {
            if let Kind::Terminate { tls: Ok(files), .. } = &server.kind {
                servers.insert(server.index, ServerTls::new(files.clone()));
            }
        }
        if !warnings.is_empty() {
            snap.warnings.extend(warnings);
            snap.warnings.sort();
        }
        Live {
            snap,
            clusters,
            servers,
        }
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    fn rt(&self, cluster: &Cluster) -> Option<&ClusterRt> {
        self.clusters.get(cluster.id)
    }

    /// The cluster's TLS origination: `None` for plaintext, `Err` with why it is off.
    pub fn tls(&self, cluster: &Cluster) -> Option<&Result<Arc<Origination>, TlsUnavailable>> {
        self.rt(cluster)?.tls.as_ref()
    }

    /// The hosts to balance over now. Never waits on DNS when any answer is cached.
    pub async fn hosts(&self, cluster: &Cluster, dns: &Arc<Dns>) -> Result<Arc<HostSet>, NoHost> {
        let rt = match &cluster.discovery {
            Discovery::Static(set) if set.is_empty() => return Err(NoHost::Empty),
            Discovery::Static(set) => return Ok(set.clone()),
            Discovery::OriginalDst { .. } => return Err(NoHost::Empty),
            Discovery::Dns { .. } => match self.rt(cluster).and_then(|rt| rt.dns.as_ref()) {
                Some(rt) if !rt.entries.is_empty() => rt,
                _ => return Err(NoHost::Empty),
            },
        };
        let mut answers = Vec::with_capacity(rt.entries.len());
        let mut last_err = None;
        for entry in rt.entries.iter() {
            match dns.resolve(entry).await {
                Ok(a) => answers.push(Some(a)),
                Err(e) => {
                    answers.push(None);
                    last_err = Some(e);
                }
            }
        }
        let cur = rt.current.load();
        let same = cur.answers.len() == answers.len()
            && cur.answers.iter().zip(&answers).all(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            });
        if same && !cur.set.is_empty() {
            return Ok(cur.set.clone());
        }
        let hosts = cluster.dns_hosts(answers.iter().map(|a| a.as_ref().map(|a| &*a.addrs)));
        if hosts.is_empty() {
            cluster.stats.dns_failures.fetch_add(1, Ordering::Relaxed);
            return Err(match last_err {
                Some(e) => NoHost::Dns(e),
                None => NoHost::Empty,
            });
        }
        let set = Arc::new(HostSet::new(cluster.policy, hosts));
        rt.current.store(Arc::new(DnsHosts {
            answers,
            set: set.clone(),
        }));
        Ok(set)
    }

    /// The hosts as last resolved, for admin output (no DNS queries).
    pub fn known_hosts(&self, cluster: &Cluster) -> Option<Arc<HostSet>> {
        match &cluster.discovery {
            Discovery::Static(set) => Some(set.clone()),
            Discovery::Dns { .. } => Some(self.rt(cluster)?.dns.as_ref()?.current.load().set.clone()),
            Discovery::OriginalDst { .. } => None,
        }
    }

    /// A terminating Gateway server's TLS (by [`meshentry_route::model::gateway::Server::index`]),
    /// or why it cannot serve.
    pub fn server_tls(&self, server: usize) -> Option<&Result<ServerTls, ServerTlsError>> {
        self.servers.get(&server)
    }

    /// Why a terminating server cannot start (its settings or its files), if it cannot.
    pub fn server_error(&self, server: &Server) -> Option<String> {
        let Kind::Terminate { mode, tls } = &server.kind else {
            return None;
        };
        let reason = match tls {
            Err(e) => e.to_string(),
            Ok(_) => match self.server_tls(server.index) {
                Some(Err(e)) => e.to_string(),
                _ => return None,
            },
        };
        Some(format!("tls {}: {reason}", mode.as_str()))
    }

    /// Why servers of `listener` cannot start, if any: the first reason.
    pub fn listener_error(&self, listener: &Listener) -> Option<String> {
        listener.servers.iter().find_map(|s| self.server_error(s))
    }

    /// C5 ([`route::tcp_owner`]): the candidates' hosts resolved one at a time, in order,
    /// until one includes the destination IP.
    pub async fn tcp_owner(&self, dns: &Arc<Dns>, dst: SocketAddr) -> Option<Decision<'_>> {
        let owner = route::tcp_owner(&self.snap, dst)?;
        let mut serving = None;
        for (i, cluster) in owner.clusters().enumerate() {
            if self.hosts(cluster, dns).await.is_ok_and(|h| owner.serves(&h)) {
                serving = Some(i);
                break;
            }
        }
        owner.decide(&self.snap, serving)
    }

    /// [`route::tunnel_dst`], the name resolved when a subnet rule needs its address.
    pub async fn tunnel_dst(&self, dns: &Arc<Dns>, decision: &Decision<'_>, host: &str) -> Option<IpAddr> {
        match route::tunnel_dst(&self.snap, decision, host) {
            TunnelDst::Ip(ip) => Some(ip),
            TunnelDst::Resolve(name) => {
                let entry = dns.dynamic_entry(name);
                dns.resolve(&entry).await.ok()?.addrs.first().copied()
            }
            TunnelDst::None => None,
        }
    }

    /// Reloads TLS certificates whose files changed: DestinationRule TLS origination and, in
    /// gateway mode, the terminating servers' (SDS-like rotation, without a configuration
    /// change). Connections already open keep the configuration they were made with; a broken
    /// file keeps the previous one in force. File checks are a few stat calls; reading and
    /// parsing happens only on a change.
    pub fn reload_certificates(&self) {
        for cluster in self.snap.eager() {
            let Some(Ok(tls)) = self.tls(cluster) else { continue };
            match tls.reload_if_changed() {
                Ok(true) => tracing::info!(cluster = %cluster.name, "TLS certificates reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(cluster = %cluster.name, error = %e, "TLS certificates not reloaded; the previous ones stay in force")
                }
            }
        }
        let Some(gateway) = &self.snap.gateway else { return };
        for l in &gateway.listeners {
            // Each server on a port has its own files and rotates alone.
            for server in &l.servers {
                let (Kind::Terminate { mode, .. }, Some(Ok(tls))) = (&server.kind, self.server_tls(server.index))
                else {
                    continue;
                };
                let (gateway, port, index, mode) = (&gateway.name, l.port, server.index, mode.as_str());
                match tls.reload_if_changed() {
                    Ok(true) => {
                        tracing::info!(%gateway, port, server = index, mode, "gateway TLS certificates reloaded; new handshakes use them")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(%gateway, port, server = index, mode, error = %e, "gateway TLS certificates not reloaded; the previous ones stay in force")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::config::ProxyConfig;
    use crate::live::dns::DnsConfig;

    fn live(yaml: &str) -> Live {
        let loaded = meshentry_api::load_str("t.yaml", yaml, &meshentry_api::LoadOptions::default());
        assert!(!loaded.has_errors(), "{:?}", loaded.errors().collect::<Vec<_>>());
        let valid: Vec<_> = loaded.valid().collect();
        // DNS points at a closed port: nothing here resolves a name.
        let dns = Dns::new(DnsConfig {
            server: Some(([127, 0, 0, 1], 9).into()),
            ..DnsConfig::default()
        })
        .unwrap();
        Live::new(Snapshot::build(&valid, &ProxyConfig::default(), 1), &dns)
    }

    #[test]
    fn a_tls_file_that_cannot_be_read_is_the_clusters_error_and_a_warning() {
        let live = live(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 5432, name: pg, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: default}
spec:
  host: db.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, caCertificates: /nonexistent/ca.pem}
    portLevelSettings:
    - port: {number: 5432}
      loadBalancer: {simple: ROUND_ROBIN}
"#,
        );
        let cluster = |name: &str| live.clusters().into_iter().find(|c| c.name == name).unwrap();
        let http = cluster("outbound|80||db.example.com");
        let Some(Err(reason)) = live.tls(&http) else {
            panic!("TLS origination should have failed");
        };
        let reason = reason.to_string();
        assert!(
            reason.contains("DestinationRule default/db") && reason.contains("/nonexistent/ca.pem"),
            "{reason}"
        );
        assert!(
            live.warnings
                .iter()
                .any(|w| w.starts_with("outbound|80||db.example.com: TLS origination is off")
                    && w.contains(reason.as_str())),
            "{:?}",
            live.warnings
        );
        assert!(live.tls(&cluster("outbound|5432||db.example.com")).is_none());
        // A DNS cluster knows no hosts before its first lookup; a name has an entry.
        assert_eq!(live.known_hosts(&http).map(|h| h.hosts.len()), Some(0));
    }
}
