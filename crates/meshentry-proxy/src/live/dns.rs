//! Name resolution for DNS-resolved services (Istio's STRICT_DNS and LOGICAL_DNS clusters) and
//! for `resolution: NONE` requests that name a host.
//!
//! Each name gets a [`DnsName`] entry that holds its last answer. A lookup never waits for the
//! DNS server when any answer is cached: a stale answer is served while one background refresh
//! runs (Envoy drains connections when IPs churn, and a slow DNS server must never stall
//! traffic; see ecosystem.md pain point 8). Only the very first lookup of a name waits, and
//! concurrent first lookups share one query. Answers are kept for their TTL, within
//! [`DnsConfig::min_ttl`]..[`DnsConfig::max_ttl`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::sync::Notify;

/// How to reach DNS and how long to trust answers.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// The server to ask (`--dns-server`); `None` reads /etc/resolv.conf.
    pub server: Option<SocketAddr>,
    /// How long one query may take before it counts as failed.
    pub timeout: Duration,
    /// Answers are kept at least this long, so a zero TTL does not mean a query per request.
    pub min_ttl: Duration,
    /// And at most this long.
    pub max_ttl: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            server: None,
            timeout: Duration::from_secs(5),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
        }
    }
}

/// A name that could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("DNS lookup of {name} failed: {reason}")]
pub struct DnsError {
    pub name: Arc<str>,
    pub reason: String,
}

/// Counters for `/stats`.
#[derive(Debug, Default)]
pub struct DnsStats {
    pub queries: AtomicU64,
    pub failures: AtomicU64,
}

/// The resolver shared by all workers.
pub struct Dns {
    resolver: TokioResolver,
    config: DnsConfig,
    /// Entries by name. Taken only to find or create an entry, which a connection does once
    /// per name it has not resolved before on this snapshot; the hot path holds an
    /// `Arc<DnsName>` and touches no lock.
    names: Mutex<HashMap<Arc<str>, Arc<DnsName>>>,
    /// Entries for names that come from traffic (passthrough, `resolution: NONE`), kept apart
    /// and bounded so that clients cannot grow memory by asking for many names.
    dynamic: Mutex<HashMap<Arc<str>, Arc<DnsName>>>,
    pub stats: DnsStats,
}

/// Most names remembered from traffic; past this the dynamic cache starts over.
const MAX_DYNAMIC_NAMES: usize = 4096;

/// The cached state of one name.
pub struct DnsName {
    pub name: Arc<str>,
    answer: ArcSwapOption<Answer>,
    refreshing: AtomicBool,
    changed: Notify,
}

/// One answer (or failure) for a name.
#[derive(Debug)]
pub struct Answer {
    pub addrs: Box<[IpAddr]>,
    pub valid_until: Instant,
    pub error: Option<String>,
}

impl Dns {
    pub fn new(config: DnsConfig) -> Result<Arc<Self>, DnsError> {
        let err = |reason: String| DnsError {
            name: "<config>".into(),
            reason,
        };
        let (resolver_config, mut opts) = match config.server {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                (ResolverConfig::from_name_servers(vec![ns]), ResolverOpts::default())
            }
            None => hickory_resolver::system_conf::read_system_conf().map_err(|e| err(e.to_string()))?,
        };
        opts.timeout = config.timeout;
        opts.attempts = 1;
        // Our own entries honour TTLs and serve stale answers; hickory's cache underneath would
        // only make refreshes return old data.
        opts.cache_size = 0;
        let resolver = TokioResolver::builder_with_config(resolver_config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| err(e.to_string()))?;
        Ok(Arc::new(Self {
            resolver,
            config,
            names: Mutex::new(HashMap::new()),
            dynamic: Mutex::new(HashMap::new()),
            stats: DnsStats::default(),
        }))
    }

    /// The entry for `name`, created on first use. Snapshots call this when they are built,
    /// so that their clusters hold entries and never look them up per request.
    pub fn entry(&self, name: &str) -> Arc<DnsName> {
        entry_in(&self.names, name, usize::MAX)
    }

    /// Forgets the configured names that no snapshot holds any more (their services went away
    /// in a reload), so that reloads do not pile names up; returns how many. A name still held
    /// by a snapshot in use keeps its entry, and its cached answer, until a later call.
    pub fn forget_unused(&self) -> usize {
        let mut names = crate::base::lock(&self.names);
        let before = names.len();
        names.retain(|_, e| Arc::strong_count(e) > 1);
        before - names.len()
    }

    /// The entry for a name that comes from traffic rather than configuration.
    pub fn dynamic_entry(&self, name: &str) -> Arc<DnsName> {
        entry_in(&self.dynamic, name, MAX_DYNAMIC_NAMES)
    }

    /// The addresses of `entry`: cached if any answer is, else after one query.
    pub async fn resolve(self: &Arc<Self>, entry: &Arc<DnsName>) -> Result<Arc<Answer>, DnsError> {
        if let Ok(ip) = entry.name.parse::<IpAddr>() {
            return Ok(Arc::new(Answer {
                addrs: Box::new([ip]),
                valid_until: far_future(),
                error: None,
            }));
        }
        if let Some(found) = self.cached(entry) {
            return found;
        }
        // Nothing usable cached: wait for the (shared) query. Register for the wake-up before
        // looking again, so an answer stored in between is not missed.
        let notified = entry.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(found) = self.cached(entry) {
            return found;
        }
        self.refresh_in_background(entry);
        let wait = self.config.timeout + Duration::from_millis(500);
        let _ = tokio::time::timeout(wait, notified).await;
        match entry.answer.load_full() {
            Some(a) if !a.addrs.is_empty() => Ok(a),
            Some(a) => Err(DnsError {
                name: entry.name.clone(),
                reason: a.error.clone().unwrap_or_else(|| "no addresses".into()),
            }),
            None => Err(DnsError {
                name: entry.name.clone(),
                reason: "timed out".into(),
            }),
        }
    }

    /// The cached outcome, if there is one worth returning without waiting: any addresses
    /// (stale ones trigger a refresh), or a failure that is still fresh.
    fn cached(self: &Arc<Self>, entry: &Arc<DnsName>) -> Option<Result<Arc<Answer>, DnsError>> {
        let answer = entry.answer.load_full()?;
        let fresh = answer.valid_until > Instant::now();
        if !fresh {
            self.refresh_in_background(entry);
        }
        if !answer.addrs.is_empty() {
            return Some(Ok(answer));
        }
        fresh.then(|| {
            Err(DnsError {
                name: entry.name.clone(),
                reason: answer.error.clone().unwrap_or_else(|| "no addresses".into()),
            })
        })
    }

    /// Starts a query for `entry` unless one is already running.
    fn refresh_in_background(self: &Arc<Self>, entry: &Arc<DnsName>) {
        if entry.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let dns = self.clone();
        let entry = entry.clone();
        tokio::spawn(async move {
            let answer = dns.query(&entry.name).await;
            let keep_stale =
                answer.addrs.is_empty() && entry.answer.load().as_ref().is_some_and(|old| !old.addrs.is_empty());
            if keep_stale {
                // A failed refresh keeps serving the last good addresses, retrying after the
                // minimum TTL (Envoy would drop the hosts; a DNS blip should not cut traffic).
                if let Some(old) = entry.answer.load_full() {
                    entry.answer.store(Some(Arc::new(Answer {
                        addrs: old.addrs.clone(),
                        valid_until: Instant::now() + dns.config.min_ttl,
                        error: answer.error.clone(),
                    })));
                }
            } else {
                entry.answer.store(Some(Arc::new(answer)));
            }
            entry.refreshing.store(false, Ordering::Release);
            entry.changed.notify_waiters();
        });
    }

    async fn query(&self, name: &str) -> Answer {
        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        // A trailing dot makes the name absolute, so search domains and ndots never apply:
        // ServiceEntry hosts are meant literally.
        let fqdn = format!("{name}.");
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(lookup) => {
                let addrs: Box<[IpAddr]> = lookup.iter().collect();
                let ttl = lookup.valid_until().saturating_duration_since(Instant::now());
                let ttl = ttl.clamp(self.config.min_ttl, self.config.max_ttl);
                Answer {
                    addrs,
                    valid_until: Instant::now() + ttl,
                    error: None,
                }
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                Answer {
                    addrs: Box::new([]),
                    valid_until: Instant::now() + self.config.min_ttl,
                    error: Some(e.to_string()),
                }
            }
        }
    }
}

fn entry_in(map: &Mutex<HashMap<Arc<str>, Arc<DnsName>>>, name: &str, cap: usize) -> Arc<DnsName> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    // A poisoned lock only means another thread panicked while inserting; the map is still
    // consistent (insert and clear are the only mutations), so keep using it.
    let mut names = crate::base::lock(map);
    if let Some(e) = names.get(name.as_str()) {
        return e.clone();
    }
    if names.len() >= cap {
        names.clear();
    }
    let key: Arc<str> = Arc::from(name.as_str());
    let entry = Arc::new(DnsName {
        name: key.clone(),
        answer: ArcSwapOption::empty(),
        refreshing: AtomicBool::new(false),
        changed: Notify::new(),
    });
    names.insert(key, entry.clone());
    entry
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}
