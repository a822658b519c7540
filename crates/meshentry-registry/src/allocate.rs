//! Address auto-allocation for ServiceEntries that declare none, so that each such host has a
//! VIP of its own (which a DNS proxy can answer with, and a captured connection to it can be
//! routed by), as Istio's allocation does: IPv4 from 240.240.0.0/16, IPv6 from 2001:2::/48.
//!
//! istiod allocates sequentially and writes the result to each ServiceEntry's
//! `status.addresses`, which is what makes its addresses stable; those are used as they are
//! ([`AutoAddresses::Status`]). Where there is no status (files, or a cluster whose istiod does
//! not allocate), every meshentry computes the same addresses from the same configuration with
//! no coordination:
//!
//! - a host's address is a hash of `NAMESPACE/HOST` into the range (FNV-1a, fixed, so that
//!   every build and version agrees); if that address is taken (by an address a ServiceEntry
//!   or Service declares, by a `status.addresses` one, or by an older host's allocation), the
//!   hash of `NAMESPACE/HOST#1`, then `#2`..., is tried;
//! - hosts are allocated oldest first (Istio's age: creationTimestamp, then namespace and
//!   name), so a new ServiceEntry never takes an address from an existing one: adding one
//!   never moves another's address;
//! - removing one moves only the hosts that had lost a collision to it (they take their first
//!   hash back); at 10,000 hosts in the /16 that is a few in a thousand of the removed one's
//!   collisions, and `status.addresses` pins addresses where that matters.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::hash::FxHashSet;
use crate::model::{Address, AutoAddresses, Service};

/// The IPv4 range: 240.240.0.0/16 (class E, never routed).
const V4_BASE: u32 = u32::from_be_bytes([240, 240, 0, 0]);
/// Host numbers 1..=65534: neither the network nor the broadcast address.
const V4_HOSTS: u64 = (1 << 16) - 2;
/// The IPv6 range: 2001:2::/48 (RFC 5180's benchmarking range), 80 bits of host.
const V6_BASE: u128 = 0x2001_0002_0000_u128 << 80;

/// FNV-1a, 64 bits: fixed and portable, unlike the standard library's hasher.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The `probe`th candidate addresses of `namespace/host`.
fn candidate(namespace: &str, host: &str, probe: u32) -> (Ipv4Addr, Ipv6Addr) {
    let n = probe.to_string();
    let parts: [&[u8]; 5] = [namespace.as_bytes(), b"/", host.as_bytes(), b"#", n.as_bytes()];
    let h = fnv(if probe == 0 { &parts[..3] } else { &parts });
    let v4 = Ipv4Addr::from(V4_BASE + 1 + (h % V4_HOSTS) as u32);
    // 80 bits: the hash, and 16 more from a second hash; never the all-zero host.
    let high = u128::from(fnv(&[&h.to_le_bytes()]) & 0xffff);
    let low = (high << 64) | u128::from(h);
    let v6 = Ipv6Addr::from(V6_BASE | low.max(1));
    (v4, v6)
}

/// Allocates [`Service::auto_addresses`] to every service that wants them
/// ([`AutoAddresses::Wanted`]), oldest first, around every address already in use.
pub fn allocate(services: &mut [Service]) {
    let mut taken: FxHashSet<IpAddr> = FxHashSet::default();
    for s in services.iter() {
        for a in s.addresses.iter().chain(s.auto_addresses.iter()) {
            if let IpNet::V4(n) = a.net
                && n.prefix_len() == 32
            {
                taken.insert(IpAddr::V4(n.addr()));
            } else if let IpNet::V6(n) = a.net
                && n.prefix_len() == 128
            {
                taken.insert(IpAddr::V6(n.addr()));
            }
        }
    }
    // Istio allocates no address to a wildcard host (its DNS proxy cannot answer for one).
    let mut wanting: Vec<usize> = (0..services.len())
        .filter(|&i| services[i].auto == AutoAddresses::Wanted && !services[i].host.starts_with('*'))
        .collect();
    wanting.sort_by(|&a, &b| {
        let (a, b) = (&services[a], &services[b]);
        (a.age, &a.namespace, &a.host).cmp(&(b.age, &b.namespace, &b.host))
    });
    for i in wanting {
        let (ns, host) = (services[i].namespace.clone(), services[i].host.clone());
        let (mut v4, mut v6) = (None, None);
        let mut probe = 0u32;
        while v4.is_none() || v6.is_none() {
            let (c4, c6) = candidate(&ns, &host, probe);
            if v4.is_none() && taken.insert(IpAddr::V4(c4)) {
                v4 = Some(c4);
            }
            if v6.is_none() && taken.insert(IpAddr::V6(c6)) {
                v6 = Some(c6);
            }
            probe += 1;
            // The /16 holds 65,534 addresses: past that many hosts there is none left.
            if u64::from(probe) > V4_HOSTS * 4 {
                break;
            }
        }
        let s = &mut services[i];
        s.auto_addresses = [v4.map(IpAddr::V4), v6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
            .map(|ip| Address {
                text: ip.to_string().into(),
                net: IpNet::from(ip),
            })
            .collect();
        s.auto = AutoAddresses::Allocated;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use meshentry_api::{LoadOptions, load_str};

    use super::*;
    use crate::{BuildOptions, Registry};

    /// Address-less DNS ServiceEntries `(name, host, created)`, plus `extra` YAML.
    fn entries(list: &[(&str, &str, &str)], extra: &str) -> String {
        let mut out = String::new();
        for (name, host, created) in list {
            out.push_str(&format!(
                "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 27017, name: tcp, protocol: TCP}}]\n  resolution: DNS\n"
            ));
        }
        out + extra
    }

    /// Host -> its allocated addresses (and whose), with allocation on.
    fn allocated(yaml: &str) -> BTreeMap<String, (Vec<String>, AutoAddresses)> {
        let loaded = load_str("t.yaml", yaml, &LoadOptions::default());
        assert!(!loaded.has_errors(), "{:?}", loaded.findings);
        let opts = BuildOptions {
            auto_allocate: true,
            ..BuildOptions::default()
        };
        Registry::build_with(&loaded.resources, &opts)
            .services()
            .map(|s| {
                let addrs = s.auto_addresses.iter().map(|a| a.text.to_string()).collect();
                (s.host.to_string(), (addrs, s.auto))
            })
            .collect()
    }

    /// Two hosts whose first IPv4 candidates collide (a birthday search over a few hundred).
    fn colliding() -> (String, String) {
        let mut seen: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for i in 0.. {
            let host = format!("h{i}.example.com");
            let (v4, _) = candidate("default", &host, 0);
            if let Some(other) = seen.insert(v4, host.clone()) {
                return (other, host);
            }
        }
        unreachable!()
    }

    #[test]
    fn candidates_are_fixed_and_in_istios_ranges() {
        let (v4, v6) = candidate("default", "mymongodb.somedomain", 0);
        // Fixed: every build, platform and version computes these.
        assert_eq!(candidate("default", "mymongodb.somedomain", 0), (v4, v6));
        assert_eq!(v4.octets()[..2], [240, 240]);
        assert!(v4.octets()[2..] != [0, 0] && v4.octets()[2..] != [255, 255]);
        assert_eq!(v6.segments()[..3], [0x2001, 0x0002, 0]);
        assert_ne!(candidate("default", "mymongodb.somedomain", 1).0, v4);
        assert_ne!(candidate("other", "mymongodb.somedomain", 0).0, v4);
        assert_eq!(fnv(&[b"a"]), 0xaf63_dc4c_8601_ec8c, "FNV-1a 64 of \"a\", as published");
    }

    #[test]
    fn every_host_gets_its_own_address_the_same_every_time() {
        let list: Vec<(String, String)> = (0..2000)
            .map(|i| (format!("se-{i}"), format!("s{i}.example.com")))
            .collect();
        let refs: Vec<(&str, &str, &str)> = list
            .iter()
            .map(|(n, h)| (n.as_str(), h.as_str(), "2026-01-01T00:00:00Z"))
            .collect();
        let yaml = entries(&refs, "");
        let a = allocated(&yaml);
        assert_eq!(a, allocated(&yaml), "the same configuration, the same addresses");
        let v4: std::collections::BTreeSet<&String> = a.values().map(|(addrs, _)| &addrs[0]).collect();
        let v6: std::collections::BTreeSet<&String> = a.values().map(|(addrs, _)| &addrs[1]).collect();
        assert_eq!((v4.len(), v6.len()), (2000, 2000), "no address given twice");
        assert!(a.values().all(|(addrs, by)| addrs[0].starts_with("240.240.")
            && addrs[1].starts_with("2001:2:0:")
            && *by == AutoAddresses::Allocated));
    }

    #[test]
    fn a_collision_goes_to_the_older_and_adding_never_moves_anyone() {
        let (a, b) = colliding();
        let first = |h: &str| candidate("default", h, 0).0.to_string();
        assert_eq!(first(&a), first(&b));
        // The older keeps the address both hash to; the newer takes its next candidate.
        let both = allocated(&entries(
            &[("a", &a, "2026-01-01T00:00:00Z"), ("b", &b, "2026-02-01T00:00:00Z")],
            "",
        ));
        assert_eq!(both[&a].0[0], first(&a));
        assert_eq!(both[&b].0[0], candidate("default", &b, 1).0.to_string());
        // Whatever the order: b older now, so b keeps it.
        let swapped = allocated(&entries(
            &[("a", &a, "2026-03-01T00:00:00Z"), ("b", &b, "2026-02-01T00:00:00Z")],
            "",
        ));
        assert_eq!(swapped[&b].0[0], first(&b));
        // Adding a newer ServiceEntry (whatever it hashes to) moves nobody.
        let alone = allocated(&entries(&[("a", &a, "2026-01-01T00:00:00Z")], ""));
        assert_eq!(both[&a], alone[&a]);
        // Removing the older moves only the one that lost to it: b takes its first address.
        let without_a = allocated(&entries(&[("b", &b, "2026-02-01T00:00:00Z")], ""));
        assert_eq!(without_a[&b].0[0], first(&b));
    }

    #[test]
    fn declared_and_istiod_addresses_are_kept_and_avoided() {
        let (a, b) = colliding();
        let taken = candidate("default", &b, 0).0;
        // `a`'s ServiceEntry declares the address `b` would hash to: b moves on. `c` has
        // istiod's status.addresses: used as they are, whoever hashes to them.
        let yaml = entries(
            &[("b", &b, "2026-01-01T00:00:00Z")],
            &format!(
                "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: a, namespace: default, creationTimestamp: \"2026-06-01T00:00:00Z\"}}\nspec:\n  hosts: [{a}]\n  addresses: [{taken}]\n  ports: [{{number: 27017, name: tcp, protocol: TCP}}]\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: c, namespace: default}}\nspec:\n  hosts: [c.example.com]\n  ports: [{{number: 27017, name: tcp, protocol: TCP}}]\n  resolution: DNS\nstatus:\n  addresses: [{{value: 240.240.9.9, host: c.example.com}}]\n"
            ),
        );
        let got = allocated(&yaml);
        assert_eq!(got[&b].0[0], candidate("default", &b, 1).0.to_string());
        assert_eq!(
            got[&a],
            (Vec::new(), AutoAddresses::NotUsed),
            "addresses given: none allocated"
        );
        assert_eq!(
            got["c.example.com"],
            (vec!["240.240.9.9".to_string()], AutoAddresses::Status)
        );
    }

    #[test]
    fn none_resolution_wildcards_and_opted_out_entries_get_nothing() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: none, namespace: default}\nspec:\n  hosts: [none.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: NONE\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: wild, namespace: default}\nspec:\n  hosts: [\"*.wild.example.com\"]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: out, namespace: default, labels: {networking.istio.io/enable-autoallocate-ip: \"false\"}}\nspec:\n  hosts: [out.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n";
        for (host, (addrs, _)) in allocated(yaml) {
            assert!(addrs.is_empty(), "{host}: {addrs:?}");
        }
    }
}
