//! The DNS proxy's name table: which names this proxy answers itself and with which addresses,
//! built from the snapshot's registry as Istio's `BuildNameTable` (pkg/dns/server) and the
//! agent's lookup table (pkg/dns/client) build theirs.
//!
//! - Every service the proxy imports (its Sidecar's egress hosts, else the namespace's view)
//!   is answered with its addresses that are IPs, or, having none, with the IPs its CIDR
//!   addresses were written with (`192.192.192.192/24`; Istio answers nothing then), or with
//!   its auto-allocated ones; a NONE service without addresses (headless) with its
//!   endpoints' IPs; a service left with no IP is not answered (its name goes upstream).
//! - A Kubernetes Service in the proxy's cluster domain also answers as `name.ns`,
//!   `name.ns.svc`, and `name` from its own namespace.
//! - A wildcard host (`*.example.com`) answers every name under it.
//! - A name the table knows, followed by one of the resolver's search domains (what a client
//!   with `ndots:5` asks first), is answered with a CNAME to the name and its addresses, so
//!   that the search ends at once. Istio does this for the first search domain only; every
//!   one is answered here, so none of those queries goes upstream.
//! - Only A and AAAA are answered (and a known name without an address of the family asked
//!   gets an empty NOERROR answer, not NXDOMAIN, as Istio does: a client that asks for both
//!   must not conclude the name does not exist); every other type goes upstream, where a
//!   real domain's other records are.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use meshentry_registry::{AutoAddresses, Provider, Registry, Resolution, Service};
use meshentry_wire::dns::{Answer, Owner, Query, rcode, rtype};

/// The TTL of the answers (Istio's `defaultTTLInSeconds`): short, so that a client that
/// honours it picks up a new address soon.
pub const TTL: u32 = 30;

/// Where a name's addresses come from, for `explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The service's `addresses`.
    Addresses,
    /// Auto-allocated: from `status.addresses` (istiod), or by this proxy.
    Allocated { by_istiod: bool },
    /// A headless (NONE, no address) service: its endpoints' IPs.
    Endpoints,
}

/// One name's answer.
#[derive(Clone, Debug)]
pub struct Entry {
    pub v4: Box<[Ipv4Addr]>,
    pub v6: Box<[Ipv6Addr]>,
    /// The service it comes from.
    pub host: Arc<str>,
    pub namespace: Arc<str>,
    pub origin: Origin,
    /// A Kubernetes short form (`name`, `name.ns`, `name.ns.svc`) rather than the host.
    pub alias: bool,
}

/// How a query name matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// The name itself.
    Exact,
    /// Under the wildcard host `*.<suffix>`.
    Wildcard,
}

/// A name the table answers.
#[derive(Clone, Copy, Debug)]
pub struct Hit<'t> {
    pub entry: &'t Entry,
    pub how: Match,
    /// When the query was a known name plus a search domain: the length of that known name
    /// (a prefix of the query), which the answer's CNAME points to; its wire form is one byte
    /// longer.
    pub cname_to: Option<usize>,
    /// The search domain that was stripped.
    pub search: Option<&'t str>,
}

/// The names one proxy answers, swapped with its snapshot.
#[derive(Debug, Default)]
pub struct NameTable {
    exact: HashMap<Box<str>, Entry>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<Box<str>, Entry>,
    /// Lower-case, without dots at either end.
    search: Box<[Box<str>]>,
}

impl NameTable {
    /// The table for a proxy in `namespace` importing `registry`'s services, whose clients
    /// search `search` (resolv.conf's `search` line), in `cluster_domain`.
    pub fn build(registry: &Registry, namespace: &str, search: &[String], cluster_domain: &str) -> NameTable {
        let mut t = NameTable {
            search: search
                .iter()
                .map(|s| s.trim_matches('.').to_ascii_lowercase().into_boxed_str())
                .filter(|s| !s.is_empty())
                .collect(),
            ..NameTable::default()
        };
        let svc_suffix = format!(".svc.{cluster_domain}");
        for s in registry.view(namespace).services() {
            let Some(entry) = entry_of(s) else { continue };
            let host = s.host.to_ascii_lowercase();
            if s.provider == Provider::Kubernetes
                && let Some(rest) = host.strip_suffix(&svc_suffix)
                && let Some((name, ns)) = rest.split_once('.')
                && !ns.contains('.')
            {
                let alias = Entry {
                    alias: true,
                    ..entry.clone()
                };
                let mut alts = vec![format!("{name}.{ns}"), format!("{name}.{ns}.svc")];
                if ns == namespace {
                    alts.push(name.to_string());
                }
                for alt in alts {
                    // A real host of that name (a ServiceEntry for `foo.bar`) wins.
                    t.exact.entry(alt.into()).or_insert_with(|| alias.clone());
                }
            }
            t.insert(host, entry);
        }
        t
    }

    fn insert(&mut self, host: String, entry: Entry) {
        let (map, key) = match host.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix.to_string()),
            None => (&mut self.exact, host),
        };
        match map.get_mut(key.as_str()) {
            // An alias loses to the host itself; a Kubernetes Service to nothing.
            Some(old) if old.alias => *old = entry,
            Some(_) => {}
            None => {
                map.insert(key.into(), entry);
            }
        }
    }

    /// How many names (Kubernetes short forms included) are answered.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The search domains stripped from queries.
    pub fn search(&self) -> &[Box<str>] {
        &self.search
    }

    /// Every name with its entry, wildcards as `*.suffix`, sorted (for the admin dump).
    pub fn names(&self) -> Vec<(String, &Entry)> {
        let mut out: Vec<(String, &Entry)> = self
            .exact
            .iter()
            .map(|(k, e)| (k.to_string(), e))
            .chain(self.wildcard.iter().map(|(k, e)| (format!("*.{k}"), e)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The answer for `name` (lower-case, dotted, no trailing dot): the name itself or under
    /// a wildcard, else the same after one search domain. Never allocates.
    pub fn lookup(&self, name: &str) -> Option<Hit<'_>> {
        if let Some(hit) = self.find(name) {
            return Some(hit);
        }
        for s in self.search.iter() {
            if let Some(prefix) = name.strip_suffix(&**s).and_then(|p| p.strip_suffix('.'))
                && !prefix.is_empty()
                && let Some(hit) = self.find(prefix)
            {
                return Some(Hit {
                    cname_to: Some(prefix.len()),
                    search: Some(s),
                    ..hit
                });
            }
        }
        None
    }

    fn find(&self, name: &str) -> Option<Hit<'_>> {
        if let Some(entry) = self.exact.get(name) {
            return Some(Hit {
                entry,
                how: Match::Exact,
                cname_to: None,
                search: None,
            });
        }
        // The most specific wildcard first: `*.b.example.com` before `*.example.com`.
        for (i, _) in name.match_indices('.') {
            if let Some(entry) = self.wildcard.get(&name[i + 1..]) {
                return Some(Hit {
                    entry,
                    how: Match::Wildcard,
                    cname_to: None,
                    search: None,
                });
            }
        }
        None
    }
}

/// Writes the table's answer to `q` into `out`: the addresses of the family asked (none: an
/// empty NOERROR, NODATA), after a CNAME when the query was a known name plus a search
/// domain, rotated by `turn` so that clients taking the first address spread over all, and
/// truncated to `limit`. Allocates nothing once `out` has grown.
pub fn write_answer(out: &mut Vec<u8>, q: &Query<'_>, hit: Hit<'_>, turn: usize, limit: usize) {
    Answer::begin(out, q, rcode::NOERROR, true);
    let owner = match hit.cname_to {
        Some(len) => Answer::cname_to_prefix(out, q, len + 1, TTL),
        None => Owner::QUESTION,
    };
    match q.qtype {
        rtype::A => {
            let ips = &hit.entry.v4;
            for i in 0..ips.len() {
                Answer::address(out, owner, IpAddr::V4(ips[(turn + i) % ips.len()]), TTL);
            }
        }
        _ => {
            let ips = &hit.entry.v6;
            for i in 0..ips.len() {
                Answer::address(out, owner, IpAddr::V6(ips[(turn + i) % ips.len()]), TTL);
            }
        }
    }
    Answer::finish(out, q, limit);
}

/// The IP a CIDR address was written with, when it names a host in the range
/// (`192.192.192.192/24`), not the range itself (`10.0.0.0/8`). Istio answers nothing for a
/// service whose only addresses are CIDRs, so its name does not resolve at all; answering
/// the address its author wrote lets the name work, and a connection to it is routed by the
/// range as any other in it.
fn written_ip(a: &meshentry_registry::Address) -> Option<IpAddr> {
    let ip: IpAddr = a.text.split_once('/')?.0.parse().ok()?;
    (ip != a.net.network()).then_some(ip)
}

/// A service's answer, if it has an IP to answer with.
fn entry_of(s: &Service) -> Option<Entry> {
    let mut ips: Vec<IpAddr> = Vec::new();
    let auto = !s.auto_addresses.is_empty() && (s.addresses.is_empty() || s.addresses == s.auto_addresses);
    let origin = if auto {
        Origin::Allocated {
            by_istiod: s.auto == AutoAddresses::Status,
        }
    } else if !s.addresses.is_empty() {
        Origin::Addresses
    } else {
        Origin::Endpoints
    };
    match origin {
        Origin::Allocated { .. } => ips.extend(s.auto_addresses.iter().map(|a| a.net.addr())),
        Origin::Addresses => {
            ips.extend(s.addresses.iter().filter(|a| !a.is_cidr()).map(|a| a.net.addr()));
            if ips.is_empty() {
                ips.extend(s.addresses.iter().filter_map(written_ip));
            }
        }
        // Istio: a headless service answers with its endpoints' IPs, once each.
        Origin::Endpoints if s.resolution == Resolution::None && !s.ports.is_empty() => {
            for e in &s.endpoints {
                if let Ok(ip) = e.address().parse::<IpAddr>()
                    && !ips.contains(&ip)
                {
                    ips.push(ip);
                }
            }
        }
        Origin::Endpoints => {}
    }
    if ips.is_empty() {
        return None;
    }
    Some(Entry {
        v4: ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect(),
        v6: ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(v6) => Some(*v6),
                IpAddr::V4(_) => None,
            })
            .collect(),
        host: s.host.clone(),
        namespace: s.namespace.clone(),
        origin,
        alias: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml: &str, namespace: &str, search: &[&str]) -> NameTable {
        let loaded = meshentry_api::load_str("test.yaml", yaml, &meshentry_api::LoadOptions::default());
        let resources: Vec<_> = loaded.valid().collect();
        let registry = Registry::build_with(
            resources.iter().copied(),
            &meshentry_registry::BuildOptions {
                auto_allocate: true,
                dns_capture: true,
                ..Default::default()
            },
        );
        let search: Vec<String> = search.iter().map(|s| s.to_string()).collect();
        NameTable::build(&registry, namespace, &search, "cluster.local")
    }

    const SE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mongo, namespace: default}
spec:
  hosts: [mymongodb.somedomain]
  addresses: [192.192.192.192/24, 10.1.2.3]
  ports: [{number: 27018, name: mongodb, protocol: MONGO}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{address: 2.2.2.2}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: auto, namespace: default}
spec:
  hosts: [db.internal]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: default}
spec:
  hosts: ["*.wild.example"]
  addresses: [10.9.9.9, "2001:db8::9"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: headless, namespace: default}
spec:
  hosts: [headless.internal]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
  workloadSelector: {labels: {app: h}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: h1, namespace: default}
spec: {address: 10.0.0.1, labels: {app: h}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: h2, namespace: default}
spec: {address: 10.0.0.2, labels: {app: h}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: none, namespace: default}
spec:
  hosts: [passthrough.example]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: NONE
"#;

    #[test]
    fn vips_allocated_addresses_endpoints_and_wildcards_as_istio_answers_them() {
        let t = table(SE, "default", &["default.svc.cluster.local", "svc.cluster.local"]);
        let mongo = t.lookup("mymongodb.somedomain").expect("known");
        // A CIDR is no name's address while there is an IP.
        assert_eq!(&*mongo.entry.v4, &[Ipv4Addr::new(10, 1, 2, 3)]);
        assert_eq!(mongo.entry.origin, Origin::Addresses);
        let auto = t.lookup("db.internal").expect("allocated");
        assert_eq!(auto.entry.origin, Origin::Allocated { by_istiod: false });
        assert!(auto.entry.v4[0].octets()[..2] == [240, 240]);
        assert_eq!(auto.entry.v6.len(), 1);
        let w = t.lookup("api.wild.example").expect("wildcard");
        assert_eq!(w.how, Match::Wildcard);
        assert!(
            t.lookup("wild.example").is_none(),
            "a wildcard does not cover its own suffix"
        );
        let h = t.lookup("headless.internal").expect("headless");
        assert_eq!(h.entry.origin, Origin::Endpoints);
        assert_eq!(&*h.entry.v4, &[Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]);
        assert!(
            t.lookup("passthrough.example").is_none(),
            "nothing to answer with: upstream"
        );
        // The seed's VIP range: the address as written; a bare range has none.
        let seed = table(
            &SE.replace(", 10.1.2.3]", "]")
                .replace("[192.192.192.192/24", "[10.0.0.0/8, 192.192.192.192/24"),
            "default",
            &[],
        );
        assert_eq!(
            &*seed.lookup("mymongodb.somedomain").expect("range").entry.v4,
            &[Ipv4Addr::new(192, 192, 192, 192)]
        );
        assert!(t.lookup("unknown.example").is_none());
    }

    #[test]
    fn a_known_name_plus_any_search_domain_is_a_cname_to_it() {
        let t = table(
            SE,
            "default",
            &["default.svc.cluster.local", "svc.cluster.local", "cluster.local"],
        );
        for q in [
            "mymongodb.somedomain.default.svc.cluster.local",
            "mymongodb.somedomain.svc.cluster.local",
            "mymongodb.somedomain.cluster.local",
        ] {
            let hit = t.lookup(q).expect(q);
            assert_eq!(hit.cname_to, Some("mymongodb.somedomain".len()), "{q}");
        }
        assert_eq!(
            t.lookup("x.wild.example.cluster.local").expect("wildcard").cname_to,
            Some(14)
        );
        assert!(t.lookup("default.svc.cluster.local").is_none());
        assert!(t.lookup("somedomain.cluster.local").is_none());
    }

    #[test]
    fn kubernetes_services_answer_their_short_names_in_the_proxy_namespace_only() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 9080, name: http}]
"#;
        let mine = table(yaml, "bookinfo", &[]);
        for n in [
            "reviews.bookinfo.svc.cluster.local",
            "reviews.bookinfo",
            "reviews.bookinfo.svc",
            "reviews",
        ] {
            assert_eq!(
                &*mine.lookup(n).expect(n).entry.v4,
                &[Ipv4Addr::new(10, 96, 0, 10)],
                "{n}"
            );
        }
        let other = table(yaml, "default", &[]);
        assert!(other.lookup("reviews").is_none());
        assert!(other.lookup("reviews.bookinfo").is_some());
    }
}
