//! The DNS proxy's local answer path (`Query::parse`, `NameTable::lookup`, `write_answer`, what
//! its server calls) allocates nothing once its buffer has grown: reading the query, looking
//! the name up (exact, wildcard, after a search domain) and writing the answer.
//! A counting global allocator makes "allocation-free" a checked claim, not a comment.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::alloc::System;

use meshentry_registry::{BuildOptions, Registry};
use meshentry_route::model::names::{NameTable, write_answer};
use meshentry_wire::dns::{Query, rtype};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
    m
}

/// The proxy's answer path: read the query, look it up, write the answer.
fn answer(table: &NameTable, msg: &[u8], out: &mut Vec<u8>) -> bool {
    let q = Query::parse(msg).unwrap();
    let Some(hit) = table.lookup(q.name()) else {
        return false;
    };
    write_answer(out, &q, hit, 7, q.udp_limit());
    true
}

#[test]
fn local_answers_allocate_nothing() {
    let yaml = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.internal]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: default}
spec:
  hosts: ['*.wild.example']
  addresses: [10.9.9.9, 10.9.9.10]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
";
    let loaded = meshentry_api::load_str("t.yaml", yaml, &meshentry_api::LoadOptions::default());
    let resources: Vec<_> = loaded.valid().collect();
    let registry = Registry::build_with(
        resources.iter().copied(),
        &BuildOptions {
            auto_allocate: true,
            dns_capture: true,
            ..BuildOptions::default()
        },
    );
    let table = NameTable::build(
        &registry,
        "default",
        &["default.svc.cluster.local".into()],
        "cluster.local",
    );
    let queries = [
        query("db.internal", rtype::A),
        query("DB.Internal", rtype::AAAA),
        query("api.wild.example", rtype::A),
        query("db.internal.default.svc.cluster.local", rtype::A),
        query("unknown.example", rtype::A),
    ];
    let mut out = Vec::with_capacity(1500);
    // Warm up: the buffer reaches its size.
    let answered: Vec<bool> = queries.iter().map(|q| answer(&table, q, &mut out)).collect();
    assert_eq!(answered, [true, true, true, true, false]);
    let region = Region::new(GLOBAL);
    for _ in 0..1000 {
        for q in &queries {
            answer(&table, q, &mut out);
        }
    }
    let change = region.change();
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "allocations on the answer path"
    );
}
