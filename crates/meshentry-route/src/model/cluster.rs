//! Clusters: the endpoints of one service port, how they are found (C1) and balanced (C2, D5).
//!
//! Istio names them `outbound|<port>||<host>`. STATIC services become a fixed host list (EDS);
//! DNS services resolve every endpoint name and use every address (STRICT_DNS);
//! DNS_ROUND_ROBIN uses the first address of its one name (LOGICAL_DNS); NONE services, and
//! DestinationRules with `loadBalancer.simple: PASSTHROUGH`, dial the destination the
//! application asked for (ORIGINAL_DST).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use meshentry_registry::{Resolution, Service};

use crate::model::lb::{Balancer, HostLoad, Policy};
use crate::model::tls::{Recipe, RecipeError};

/// Where an endpoint listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostAddr {
    Ip(SocketAddr),
    Unix(Arc<Path>),
}

impl std::fmt::Display for HostAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostAddr::Ip(a) => write!(f, "{a}"),
            HostAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// One upstream host of a cluster.
#[derive(Debug)]
pub struct Host {
    pub addr: HostAddr,
    pub load: HostLoad,
    pub stats: HostStats,
}

/// Per-host counters, shown on `/clusters` as Envoy does.
#[derive(Debug, Default)]
pub struct HostStats {
    pub requests: AtomicU64,
    pub connect_failures: AtomicU64,
    pub connections: AtomicU64,
}

impl AsRef<HostLoad> for Host {
    fn as_ref(&self) -> &HostLoad {
        &self.load
    }
}

/// A balanced list of hosts.
#[derive(Debug)]
pub struct HostSet {
    pub hosts: Box<[Host]>,
    pub balancer: Balancer,
}

impl HostSet {
    pub fn new(policy: Policy, hosts: Vec<(HostAddr, u32)>) -> Self {
        let hosts: Box<[Host]> = hosts
            .into_iter()
            .map(|(addr, weight)| Host {
                addr,
                load: HostLoad::new(weight),
                stats: HostStats::default(),
            })
            .collect();
        let balancer = Balancer::new(policy, &hosts);
        Self { hosts, balancer }
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// One endpoint name of a DNS cluster.
#[derive(Clone, Debug)]
pub struct DnsTarget {
    pub name: Arc<str>,
    pub port: u16,
    pub weight: u32,
}

/// How a cluster finds its hosts.
pub enum Discovery {
    /// Fixed at configuration time.
    Static(Arc<HostSet>),
    /// Resolved names (by the proxy, which keeps the answers and the hosts made from them);
    /// `first_only` for DNS_ROUND_ROBIN.
    Dns { targets: Vec<DnsTarget>, first_only: bool },
    /// Dial the original destination; `port` replaces its port when set (targetPort, B4).
    OriginalDst { port: Option<u16> },
}

/// The endpoints of one service port.
pub struct Cluster {
    /// Its index among the snapshot's clusters ([`crate::model::snapshot::Snapshot::by_id`]):
    /// what the proxy keys the cluster's runtime state (DNS answers, TLS configuration) by.
    pub id: usize,
    /// `outbound|<port>|<subset>|<host>`.
    pub name: String,
    pub host: Arc<str>,
    pub namespace: Arc<str>,
    pub port: u32,
    pub discovery: Discovery,
    pub policy: Policy,
    /// See [`ClusterSpec::tls`].
    pub tls: Option<Result<Recipe, RecipeError>>,
    pub stats: ClusterStats,
    /// The labels its traffic is reported under (Istio's destination_* labels).
    pub dest: crate::model::dest::DestId,
}

/// Per-cluster counters.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub requests: AtomicU64,
    pub connect_failures: AtomicU64,
    pub no_healthy_upstream: AtomicU64,
    pub dns_failures: AtomicU64,
    /// Originated TLS handshakes that failed.
    pub tls_failures: AtomicU64,
}

/// What a pick needs for ORIGINAL_DST clusters: where the application was going.
#[derive(Clone, Debug)]
pub enum Destination<'a> {
    Ip(SocketAddr),
    Name(&'a str, u16),
}

/// The load-balancing policy, discovery and TLS a service port gets.
pub struct ClusterSpec {
    pub policy: Policy,
    pub passthrough: bool,
    /// TLS origination (D6); `Err` when the rule asks for it and it cannot be set up (the
    /// reason is what the cluster's connections fail with).
    pub tls: Option<Result<Recipe, RecipeError>>,
    /// A DestinationRule subset (D4): its name and the labels its endpoints must carry.
    pub subset: Option<(String, BTreeMap<String, String>)>,
}

/// Istio's name for the cluster of `port` of `host` (and DestinationRule subset `subset`, or
/// ""): `outbound|<port>|<subset>|<host>`.
pub fn name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

impl ClusterSpec {
    /// What a service port gets when no DestinationRule and no auto mTLS apply to it.
    pub fn plain() -> ClusterSpec {
        ClusterSpec {
            policy: Policy::LeastRequest,
            passthrough: false,
            tls: None,
            subset: None,
        }
    }
}

impl Cluster {
    /// Builds cluster `id`, for `port` of `service`.
    pub fn build(id: usize, service: &Service, port: u32, spec: ClusterSpec) -> Cluster {
        let mut cluster = Cluster::detached(id, service, port, spec);
        let origination = match &cluster.tls {
            Some(Ok(r)) => Some(r),
            _ => None,
        };
        cluster.dest = crate::model::dest::intern(crate::model::dest::destination_of(
            &service.host,
            &service.namespace,
            origination,
        ));
        cluster
    }

    /// [`Cluster::build`] for display only: its traffic labels are not registered (the
    /// registry of them lives as long as the process), so it must never carry a request.
    pub fn detached(id: usize, service: &Service, port: u32, spec: ClusterSpec) -> Cluster {
        let subset_name = spec.subset.as_ref().map_or("", |(n, _)| n.as_str());
        let name = name(port, subset_name, &service.host);
        let target_port = service
            .port(port)
            .and_then(|p| p.target_port)
            .and_then(|p| u16::try_from(p).ok());
        let endpoints = || {
            service
                .ports
                .iter()
                .find(|p| p.number == port)
                .into_iter()
                .flat_map(|p| service.endpoints_for(p))
                // D4: a subset's endpoints are those whose labels contain the subset's (DNS
                // clusters too, so a host-only DNS service has none in a labelled subset).
                .filter(|ep| {
                    spec.subset
                        .as_ref()
                        .is_none_or(|(_, labels)| labels.iter().all(|(k, v)| ep.workload.labels.get(k) == Some(v)))
                })
        };
        let discovery = if spec.passthrough || service.resolution == Resolution::None {
            Discovery::OriginalDst { port: target_port }
        } else if matches!(service.resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
            let first_only = service.resolution == Resolution::DnsRoundRobin;
            let mut targets = Vec::new();
            for ep in endpoints() {
                let Ok(port) = u16::try_from(ep.port) else { continue };
                targets.push(DnsTarget {
                    name: Arc::from(ep.address()),
                    port,
                    weight: ep.workload.weight,
                });
                if first_only {
                    break;
                }
            }
            Discovery::Dns { targets, first_only }
        } else {
            let hosts = endpoints()
                .filter_map(|ep| static_addr(ep.address(), ep.port).map(|a| (a, ep.workload.weight)))
                .collect();
            Discovery::Static(Arc::new(HostSet::new(spec.policy, hosts)))
        };
        Cluster {
            id,
            name,
            host: service.host.clone(),
            namespace: service.namespace.clone(),
            port,
            discovery,
            policy: spec.policy,
            tls: spec.tls,
            stats: ClusterStats::default(),
            dest: crate::model::dest::DestId::UNKNOWN,
        }
    }

    /// The hosts of a DNS cluster made from `answers`, one per target in order (`None`: that
    /// name has no answer now). Every address of every answer (STRICT_DNS), or the first
    /// address of the one name (LOGICAL_DNS); empty for other clusters.
    pub fn dns_hosts<'a>(&self, answers: impl IntoIterator<Item = Option<&'a [IpAddr]>>) -> Vec<(HostAddr, u32)> {
        let Discovery::Dns { targets, first_only } = &self.discovery else {
            return Vec::new();
        };
        let mut hosts = Vec::new();
        for (t, addrs) in targets.iter().zip(answers) {
            for ip in addrs.unwrap_or_default() {
                hosts.push((HostAddr::Ip(SocketAddr::new(*ip, t.port)), t.weight));
                if *first_only {
                    break;
                }
            }
        }
        hosts
    }

    /// For ORIGINAL_DST clusters: the port to dial instead of the requested one.
    pub fn original_dst_port(&self) -> Option<Option<u16>> {
        match &self.discovery {
            Discovery::OriginalDst { port } => Some(*port),
            _ => None,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match &self.discovery {
            Discovery::Static(_) => "EDS",
            Discovery::Dns { first_only: false, .. } => "STRICT_DNS",
            Discovery::Dns { first_only: true, .. } => "LOGICAL_DNS",
            Discovery::OriginalDst { .. } => "ORIGINAL_DST",
        }
    }

    /// The hosts fixed by the configuration (STATIC); `None` for DNS and ORIGINAL_DST
    /// clusters, whose hosts only the proxy knows.
    pub fn static_hosts(&self) -> Option<&Arc<HostSet>> {
        match &self.discovery {
            Discovery::Static(set) => Some(set),
            _ => None,
        }
    }
}

/// A STATIC endpoint's address: an IP with its port, or a unix socket (C7).
fn static_addr(address: &str, port: u32) -> Option<HostAddr> {
    if let Some(path) = address.strip_prefix("unix://") {
        return Some(HostAddr::Unix(Arc::from(PathBuf::from(path).as_path())));
    }
    let ip: IpAddr = address.parse().ok()?;
    Some(HostAddr::Ip(SocketAddr::new(ip, u16::try_from(port).ok()?)))
}
