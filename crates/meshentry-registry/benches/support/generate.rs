#![allow(dead_code)] // Shared by the bench and the memory example; each uses a part.

//! Synthetic input for the registry benchmarks: 10,000 ServiceEntries in 100 namespaces, each
//! with 3 hosts (two names and a wildcard), a VIP, 2 HTTP ports and 4 endpoints; half list
//! their endpoints inline, half select 4 of the 20,000 WorkloadEntries.

use meshentry_api::{LoadOptions, Loaded, load_str};

pub const SERVICE_ENTRIES: usize = 10_000;
pub const WORKLOAD_ENTRIES: usize = 20_000;
pub const NAMESPACES: usize = 100;

/// Host names that exist in the generated registry, for lookups.
pub fn exact_host(i: usize) -> String {
    format!("svc{i}.ns{}.example.com", i % NAMESPACES)
}

pub fn wildcard_match(i: usize) -> String {
    format!("pod-7.svc{i}.ns{}.wild.example.com", i % NAMESPACES)
}

pub fn vip(i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 100 + (i / 65536) as u8, ((i / 256) % 256) as u8, (i % 256) as u8)
}

pub fn namespace(i: usize) -> String {
    format!("ns{}", i % NAMESPACES)
}

pub fn yaml() -> String {
    let mut out = String::with_capacity(40 << 20);
    for i in 0..SERVICE_ENTRIES {
        let ns = i % NAMESPACES;
        out.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: se{i}\n  namespace: ns{ns}\n\
             spec:\n  hosts: [svc{i}.ns{ns}.example.com, api.svc{i}.ns{ns}.example.com, \"*.svc{i}.ns{ns}.wild.example.com\"]\n\
             \x20 addresses: [{}]\n  ports:\n  - {{number: 80, name: http, protocol: HTTP, targetPort: 8080}}\n\
             \x20 - {{number: 8443, name: grpc, protocol: GRPC}}\n  location: MESH_INTERNAL\n  resolution: STATIC\n",
            vip(i)
        ));
        if i % 2 == 0 {
            out.push_str("  endpoints:\n");
            for e in 0..4 {
                out.push_str(&format!(
                    "  - {{address: 10.{}.{}.{}, labels: {{app: svc{i}, version: v{e}}}}}\n",
                    (i / 256) % 256,
                    i % 256,
                    e + 1
                ));
            }
        } else {
            out.push_str(&format!("  workloadSelector:\n    labels: {{app: svc{i}}}\n"));
        }
    }
    for w in 0..WORKLOAD_ENTRIES {
        // Four per odd-numbered ServiceEntry, in its namespace.
        let i = (w / 4) * 2 + 1;
        out.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: we{w}\n  namespace: ns{}\n\
             spec:\n  address: 172.{}.{}.{}\n  labels: {{app: svc{i}, version: v{}}}\n  ports: {{http: 9080}}\n  serviceAccount: sa{i}\n",
            i % NAMESPACES,
            16 + w / 65536,
            (w / 256) % 256,
            w % 256,
            w % 4
        ));
    }
    out
}

pub fn load() -> Loaded {
    let loaded = load_str("bench.yaml", &yaml(), &LoadOptions::default());
    if let Some(e) = loaded.errors().next() {
        panic!("generated config is invalid: {e}");
    }
    loaded
}
