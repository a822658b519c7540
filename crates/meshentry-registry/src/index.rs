//! The lookup indexes the data plane uses, built once per snapshot: host (exact, then an
//! ExternalName alias, then the most specific wildcard, B11), destination IP and port (VIPs, then the longest CIDR prefix,
//! C4/C5), port alone (C5) and SNI (C4). Every lookup answers for one proxy namespace: it sees
//! only the services exported to it (B9) and, for a host defined in several namespaces, the
//! one B10 picks. Lookups take `&str` and allocate nothing.

use std::net::IpAddr;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::hash::FxHashMap as HashMap;
use crate::model::{Resolution, Service, ServiceId};

/// Longest host name a lookup accepts (DNS allows 253 plus a trailing dot).
const MAX_HOST: usize = 255;

/// Index of a candidate list in [`Index::candidates`].
type Slot = u32;

/// The networks of one prefix length.
type PrefixTable<N> = (u8, HashMap<N, Box<[ServiceId]>>);

pub(crate) struct Index {
    /// Lower-cased host (wildcards verbatim, `*.a.com`) -> its services.
    exact: HashMap<Box<str>, Slot>,
    /// `*.a.com` is stored under `.a.com`: a name's label suffixes are looked up from the
    /// longest down, so the first hit is the most specific wildcard (B11).
    suffix: HashMap<Box<str>, Slot>,
    /// Partial wildcards (`*foo.a.com` under `foo.a.com`), longest first; rare, so scanned.
    partial: Vec<(Box<str>, Slot)>,
    /// Lower-cased ExternalName alias host -> the slot of the host it stands for (Istio adds
    /// an alias to its concrete service's virtual host and SNI names, as exact names).
    aliases: HashMap<Box<str>, Slot>,
    /// Services of one host (any namespace, any merge class), oldest first.
    candidates: Vec<Box<[ServiceId]>>,
    /// Service -> its host's slot.
    host_slot: Vec<Slot>,
    /// Slots in host order, for [`crate::Registry::visible`].
    host_order: Vec<Slot>,
    /// Single addresses: VIPs, and (C5) the endpoint IPs of NONE services with a selector
    /// and no address.
    ips: HashMap<IpAddr, Box<[ServiceId]>>,
    /// CIDR addresses by prefix length, longest first, keyed by the network.
    cidrs_v4: Vec<PrefixTable<Ipv4Net>>,
    cidrs_v6: Vec<PrefixTable<Ipv6Net>>,
    /// Port number -> services with that port, oldest first.
    ports: HashMap<u32, Box<[ServiceId]>>,
    /// Port number -> services owning `0.0.0.0:<port>` for TCP (C5), oldest first.
    wildcard_ports: HashMap<u32, Box<[ServiceId]>>,
}

fn freeze<K: std::hash::Hash + Eq>(m: HashMap<K, Vec<ServiceId>>) -> HashMap<K, Box<[ServiceId]>> {
    m.into_iter().map(|(k, v)| (k, v.into_boxed_slice())).collect()
}

impl Index {
    /// `services` must be in the order [`crate::build`] produces them; every list built here
    /// is then sorted by age.
    pub(crate) fn new(services: &[Service]) -> Index {
        let mut by_age: Vec<ServiceId> = (0..services.len() as ServiceId).collect();
        by_age.sort_by_key(|&id| (services[id as usize].age, id));

        let mut exact: HashMap<Box<str>, Slot> = HashMap::default();
        exact.reserve(services.len());
        let mut lists: Vec<Vec<ServiceId>> = Vec::with_capacity(services.len());
        let mut host_slot = vec![0; services.len()];
        let mut ips: HashMap<IpAddr, Vec<ServiceId>> = HashMap::default();
        let mut v4: HashMap<u8, HashMap<Ipv4Net, Vec<ServiceId>>> = HashMap::default();
        let mut v6: HashMap<u8, HashMap<Ipv6Net, Vec<ServiceId>>> = HashMap::default();
        let mut ports: HashMap<u32, Vec<ServiceId>> = HashMap::default();
        let mut wildcard_ports: HashMap<u32, Vec<ServiceId>> = HashMap::default();
        for &id in &by_age {
            let s = &services[id as usize];
            let key: std::borrow::Cow<'_, str> = if s.host.bytes().any(|b| b.is_ascii_uppercase()) {
                s.host.to_ascii_lowercase().into()
            } else {
                (*s.host).into()
            };
            let slot = match exact.get(&*key) {
                Some(&slot) => slot,
                None => {
                    let slot = lists.len() as Slot;
                    lists.push(Vec::new());
                    exact.insert(key.into(), slot);
                    slot
                }
            };
            lists[slot as usize].push(id);
            host_slot[id as usize] = slot;

            for a in s.addresses.iter() {
                match a.net {
                    _ if !a.is_cidr() => ips.entry(a.net.addr()).or_default().push(id),
                    ipnet::IpNet::V4(n) => v4.entry(n.prefix_len()).or_default().entry(n).or_default().push(id),
                    ipnet::IpNet::V6(n) => v6.entry(n.prefix_len()).or_default().entry(n).or_default().push(id),
                }
            }
            let no_address = s.addresses.is_empty();
            let per_endpoint = no_address && s.resolution == Resolution::None && s.selector.is_some();
            if per_endpoint {
                let mut seen: Vec<IpAddr> = Vec::new();
                for e in &s.endpoints {
                    if let Ok(ip) = e.address().parse::<IpAddr>()
                        && !seen.contains(&ip)
                    {
                        seen.push(ip);
                        ips.entry(ip).or_default().push(id);
                    }
                }
            }
            for p in &s.ports {
                ports.entry(p.number).or_default().push(id);
                if no_address && !per_endpoint && p.protocol.is_opaque_tcp() {
                    wildcard_ports.entry(p.number).or_default().push(id);
                }
            }
        }

        let mut aliases: HashMap<Box<str>, Slot> = HashMap::default();
        for (id, s) in services.iter().enumerate() {
            for a in s.aliases.iter() {
                let a = a.to_ascii_lowercase();
                // A service of that very host is matched first, as its own name.
                if !exact.contains_key(a.as_str()) {
                    aliases.entry(a.into()).or_insert(host_slot[id]);
                }
            }
        }
        let mut suffix = HashMap::default();
        let mut partial = Vec::new();
        for (host, &slot) in &exact {
            if let Some(rest) = host.strip_prefix('*') {
                if rest.starts_with('.') {
                    suffix.insert(rest.into(), slot);
                } else if !rest.is_empty() {
                    partial.push((Box::<str>::from(rest), slot));
                }
            }
        }
        partial.sort_by(|a: &(Box<str>, Slot), b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let mut host_order: Vec<(&str, Slot)> = exact.iter().map(|(h, &s)| (&**h, s)).collect();
        host_order.sort_unstable();
        let host_order = host_order.into_iter().map(|(_, s)| s).collect();

        let mut cidrs_v4: Vec<_> = v4.into_iter().map(|(l, m)| (l, freeze(m))).collect();
        cidrs_v4.sort_by_key(|c| std::cmp::Reverse(c.0));
        let mut cidrs_v6: Vec<_> = v6.into_iter().map(|(l, m)| (l, freeze(m))).collect();
        cidrs_v6.sort_by_key(|c| std::cmp::Reverse(c.0));
        Index {
            exact,
            suffix,
            partial,
            aliases,
            candidates: lists.into_iter().map(Vec::into_boxed_slice).collect(),
            host_slot,
            host_order,
            ips: freeze(ips),
            cidrs_v4,
            cidrs_v6,
            ports: freeze(ports),
            wildcard_ports: freeze(wildcard_ports),
        }
    }
}

/// The registry as a proxy in one namespace sees it. Cheap to make; borrow it per lookup or
/// keep it per connection.
#[derive(Clone, Copy)]
pub struct View<'a, 'n> {
    pub(crate) services: &'a [Service],
    pub(crate) index: &'a Index,
    pub(crate) namespace: &'n str,
}

impl<'a, 'n> View<'a, 'n> {
    /// The namespace this view is for.
    pub fn namespace(&self) -> &'n str {
        self.namespace
    }

    fn service(&self, id: ServiceId) -> &'a Service {
        &self.services[id as usize]
    }

    /// B10: of one host's services, the one this namespace uses.
    fn pick(&self, slot: Slot) -> Option<ServiceId> {
        let list = &self.index.candidates[slot as usize];
        if let [only] = **list {
            return self.service(only).is_visible_to(self.namespace).then_some(only);
        }
        list.iter()
            .filter_map(|&id| self.service(id).preference(self.namespace).map(|r| (r, id)))
            .min()
            .map(|(_, id)| id)
    }

    /// Whether this namespace uses service `id` for its host (visible, and not shadowed by
    /// another service of the same host, B10).
    pub fn uses(&self, id: ServiceId) -> bool {
        self.pick(self.index.host_slot[id as usize]) == Some(id)
    }

    /// The best of `ids` this namespace uses and `ok` accepts.
    fn best(&self, ids: &[ServiceId], ok: impl Fn(&Service) -> bool) -> Option<&'a Service> {
        ids.iter()
            .filter(|&&id| ok(self.service(id)) && self.uses(id))
            .filter_map(|&id| self.service(id).preference(self.namespace).map(|r| (r, id)))
            .min()
            .map(|(_, id)| self.service(id))
    }

    fn pick_if(&self, slot: Slot, ok: &impl Fn(&Service) -> bool) -> Option<&'a Service> {
        self.pick(slot).map(|id| self.service(id)).filter(|s| ok(s))
    }

    /// B11 lookup by host name: the exact host, else the most specific (longest) wildcard that
    /// covers it (`*.a.com` covers `b.a.com` and `x.b.a.com`, not `a.com`). Case-insensitive;
    /// one trailing dot is ignored. A host this namespace does not see (B9), or sees only
    /// through another namespace's copy (B10), falls through to the next candidate.
    pub fn lookup_host(&self, host: &str) -> Option<&'a Service> {
        self.find_host(host, &|_| true)
    }

    /// C4: the service an SNI names on TLS port `port`: host matching as in
    /// [`View::lookup_host`], among services whose port `port` is TLS or HTTPS.
    pub fn lookup_sni(&self, sni: &str, port: u32) -> Option<&'a Service> {
        self.find_host(sni, &|s| s.port(port).is_some_and(|p| p.protocol.is_tls()))
    }

    fn find_host(&self, host: &str, ok: &impl Fn(&Service) -> bool) -> Option<&'a Service> {
        let mut buf = [0u8; MAX_HOST];
        let name = normalize(host, &mut buf)?;
        if let Some(&slot) = self.index.exact.get(name)
            && let Some(s) = self.pick_if(slot, ok)
        {
            return Some(s);
        }
        // Most registries have no alias: no hashing the name again for them.
        if !self.index.aliases.is_empty()
            && let Some(&slot) = self.index.aliases.get(name)
            && let Some(s) = self.pick_if(slot, ok)
        {
            return Some(s);
        }
        let mut partial = self.index.partial.iter().peekable();
        for (i, _) in name.match_indices('.') {
            let suffix = &name[i..];
            while let Some((p, slot)) = partial.next_if(|(p, _)| p.len() > suffix.len()) {
                if name.len() > p.len()
                    && name.ends_with(&**p)
                    && let Some(s) = self.pick_if(*slot, ok)
                {
                    return Some(s);
                }
            }
            if let Some(&slot) = self.index.suffix.get(suffix)
                && let Some(s) = self.pick_if(slot, ok)
            {
                return Some(s);
            }
        }
        for (p, slot) in partial {
            if name.len() > p.len()
                && name.ends_with(&**p)
                && let Some(s) = self.pick_if(*slot, ok)
            {
                return Some(s);
            }
        }
        None
    }

    /// C4/C5 lookup by original destination: the service with `port` whose address is `ip`
    /// (a VIP, or an endpoint IP of a NONE service with a selector and no address), else whose
    /// CIDR contains `ip`, longest prefix first.
    pub fn lookup_addr(&self, ip: IpAddr, port: u32) -> Option<&'a Service> {
        let ok = |s: &Service| s.port(port).is_some();
        if let Some(ids) = self.index.ips.get(&ip)
            && let Some(s) = self.best(ids, ok)
        {
            return Some(s);
        }
        match ip {
            IpAddr::V4(v4) => self.index.cidrs_v4.iter().find_map(|(len, nets)| {
                let net = Ipv4Net::new(v4, *len).ok()?.trunc();
                self.best(nets.get(&net)?, ok)
            }),
            IpAddr::V6(v6) => self.index.cidrs_v6.iter().find_map(|(len, nets)| {
                let net = Ipv6Net::new(v6, *len).ok()?.trunc();
                self.best(nets.get(&net)?, ok)
            }),
        }
    }

    /// C5 lookup by port alone: the service that owns TCP traffic to any destination on
    /// `port`, i.e. the first (own namespace, exported, public; oldest) service with no
    /// address and an opaque TCP or unset-protocol port `port`.
    pub fn lookup_port(&self, port: u32) -> Option<&'a Service> {
        self.best(self.index.wildcard_ports.get(&port)?, |_| true)
    }

    /// Every service this namespace uses that has port `port`, oldest first.
    pub fn services_on_port(&self, port: u32) -> impl Iterator<Item = &'a Service> + use<'a, 'n> {
        let view = *self;
        let ids: &'a [ServiceId] = self.index.ports.get(&port).map_or(&[], |v| v);
        ids.iter()
            .filter(move |&&id| view.uses(id))
            .map(move |&id| view.service(id))
    }

    /// B9/B10: "what does this namespace see": one service per host, sorted by host.
    pub fn services(&self) -> Vec<&'a Service> {
        self.index
            .host_order
            .iter()
            .filter_map(|&slot| self.pick(slot))
            .map(|id| self.service(id))
            .collect()
    }
}

/// Strips one trailing dot and lower-cases into `buf` when needed, so lookups never allocate.
fn normalize<'b>(host: &'b str, buf: &'b mut [u8; MAX_HOST]) -> Option<&'b str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(host);
    }
    let out = buf.get_mut(..host.len())?;
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}
