//! Property: building is deterministic. The same resources in any order give the same JSON
//! (every service, and each namespace's view) and the same warnings; with creation
//! timestamps, load order does not matter either.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use meshentry_api::{LoadOptions, Resource, load_str};
use meshentry_registry::Registry;
use proptest::prelude::*;

const NAMESPACES: [&str; 3] = ["a", "b", "c"];
const HOSTS: [&str; 5] = [
    "x.example.com",
    "y.example.com",
    "z.example.com",
    "*.example.com",
    "w.other.org",
];

#[derive(Clone, Debug)]
struct Se {
    ns: usize,
    hosts: Vec<usize>,
    dns: bool,
    export: usize,
    ports: Vec<(u32, bool)>,
    endpoints: Vec<u8>,
    selector: bool,
    address: Option<u8>,
}

fn se() -> impl Strategy<Value = Se> {
    (
        0..3usize,
        proptest::sample::subsequence((0..5).collect::<Vec<usize>>(), 1..3),
        any::<bool>(),
        0..5usize,
        proptest::sample::subsequence(vec![(80u32, true), (443, false), (8080, true)], 1..3),
        proptest::collection::vec(1..6u8, 0..3),
        any::<bool>(),
        proptest::option::of(1..4u8),
    )
        .prop_map(|(ns, hosts, dns, export, ports, endpoints, selector, address)| Se {
            ns,
            hosts,
            dns,
            export,
            ports,
            endpoints,
            selector,
            address,
        })
}

fn yaml(ses: &[Se], workloads: &[(usize, u8, bool)], timestamps: bool) -> String {
    let mut out = String::new();
    let mut n = 0;
    let mut stamp = |out: &mut String| {
        n += 1;
        if timestamps {
            out.push_str(&format!("  creationTimestamp: \"2024-01-01T00:00:{:02}Z\"\n", n));
        }
    };
    for (i, (ns, ip, app)) in workloads.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: we{i}\n  namespace: {}\n",
            NAMESPACES[*ns]
        ));
        stamp(&mut out);
        out.push_str(&format!(
            "spec:\n  address: 10.1.0.{ip}\n  labels: {{app: {}}}\n",
            if *app { "x" } else { "y" }
        ));
    }
    for (i, s) in ses.iter().enumerate() {
        let dns = s.dns && !s.hosts.contains(&3);
        out.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: se{i}\n  namespace: {}\n",
            NAMESPACES[s.ns]
        ));
        stamp(&mut out);
        out.push_str("spec:\n  hosts:\n");
        for &h in &s.hosts {
            out.push_str(&format!("  - \"{}\"\n", HOSTS[h]));
        }
        if let Some(a) = s.address {
            out.push_str(&format!("  addresses: [10.0.0.{a}]\n"));
        }
        out.push_str("  ports:\n");
        for (p, http) in &s.ports {
            out.push_str(&format!(
                "  - {{number: {p}, name: p{p}, protocol: {}}}\n",
                if *http { "HTTP" } else { "TLS" }
            ));
        }
        out.push_str(&format!("  resolution: {}\n", if dns { "DNS" } else { "STATIC" }));
        match s.export {
            0 => {}
            1 => out.push_str("  exportTo: [\".\"]\n"),
            2 => out.push_str("  exportTo: [b]\n"),
            3 => out.push_str("  exportTo: [\"~\"]\n"),
            _ => out.push_str("  exportTo: [\"*\"]\n"),
        }
        if s.selector {
            out.push_str("  workloadSelector: {labels: {app: x}}\n");
        } else if !s.endpoints.is_empty() {
            out.push_str("  endpoints:\n");
            for e in &s.endpoints {
                out.push_str(&format!("  - address: 10.2.0.{e}\n"));
            }
        }
    }
    out
}

fn render(resources: &[Resource]) -> String {
    let r = Registry::build(resources);
    let mut out = serde_json::to_string(&r.to_json(None)).unwrap();
    for ns in NAMESPACES {
        out += &serde_json::to_string(&r.to_json(Some(ns))).unwrap();
    }
    for w in r.warnings() {
        out += &w.to_string();
    }
    out
}

fn shuffled<T: Clone>(items: &[T], keys: &[u32]) -> Vec<T> {
    let mut idx: Vec<usize> = (0..items.len()).collect();
    idx.sort_by_key(|&i| (keys.get(i).copied().unwrap_or(0), i));
    idx.into_iter().map(|i| items[i].clone()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn same_input_any_order_same_output(
        ses in proptest::collection::vec(se(), 1..8),
        workloads in proptest::collection::vec((0..3usize, 1..6u8, any::<bool>()), 0..6),
        keys in proptest::collection::vec(any::<u32>(), 20),
        timestamps in any::<bool>(),
    ) {
        let loaded = load_str("p.yaml", &yaml(&ses, &workloads, timestamps), &LoadOptions::default());
        let errors: Vec<String> = loaded.errors().map(|f| f.to_string()).collect();
        prop_assume!(errors.is_empty());
        let expected = render(&loaded.resources);
        let mut permuted = shuffled(&loaded.resources, &keys);
        prop_assert_eq!(&render(&permuted), &expected);
        if timestamps {
            // Ages come from the timestamps: load order (the tie-breaker) must not matter.
            let n = permuted.len();
            for (i, r) in permuted.iter_mut().enumerate() {
                r.order = n - i;
            }
            prop_assert_eq!(&render(&permuted), &expected);
        }
    }
}
