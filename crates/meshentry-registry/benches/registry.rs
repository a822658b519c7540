//! Registry benchmarks (figures in BENCHMARKS.md): building from 10,000 ServiceEntries and
//! 20,000 WorkloadEntries, the data-plane lookups with 30,000 hosts loaded, and the analysis
//! `meshentry validate` runs across 10,000 ServiceEntries, VirtualServices and
//! DestinationRules.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use meshentry_api::{LoadOptions, load_str};
use meshentry_registry::Registry;
use meshentry_registry::analyze::{analyze, analyze_with};

#[path = "support/generate.rs"]
mod generate;

/// The configuration `gen_service_entries --routing` prints, so that the CLI measurement and
/// this one read the same thing.
#[path = "../../meshentry-api/benches/support/mod.rs"]
mod routed;

fn build(c: &mut Criterion) {
    let loaded = generate::load();
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    group.bench_function("10k_service_entries_20k_workload_entries", |b| {
        b.iter_with_large_drop(|| Registry::build(black_box(&loaded.resources)))
    });
    group.finish();
}

fn lookups(c: &mut Criterion) {
    let loaded = generate::load();
    let registry = Registry::build(&loaded.resources);
    assert_eq!(registry.services().len(), 3 * generate::SERVICE_ENTRIES);
    let n = 7_777;
    let ns = generate::namespace(n);
    let view = registry.view(&ns);
    let exact = generate::exact_host(n);
    let wildcard = generate::wildcard_match(n);
    let vip = IpAddr::V4(generate::vip(n));
    assert!(view.lookup_host(&exact).is_some());
    assert!(view.lookup_host(&wildcard).is_some_and(|s| s.is_wildcard()));
    assert!(view.lookup_addr(vip, 80).is_some());

    let mut group = c.benchmark_group("lookup");
    group.bench_function("exact_host", |b| b.iter(|| view.lookup_host(black_box(&exact))));
    group.bench_function("wildcard_host", |b| b.iter(|| view.lookup_host(black_box(&wildcard))));
    group.bench_function("vip", |b| b.iter(|| view.lookup_addr(black_box(vip), black_box(80))));
    group.bench_function("sni_miss", |b| {
        b.iter(|| view.lookup_sni(black_box(&exact), black_box(443)))
    });
    group.bench_function("exact_host_other_namespace", |b| {
        b.iter(|| registry.view(black_box("ns-elsewhere")).lookup_host(black_box(&exact)))
    });
    group.finish();
}

fn analysis(c: &mut Criterion) {
    let n = 10_000;
    let text = routed::service_entries(n) + &routed::routing(n);
    let loaded = load_str("bench.yaml", &text, &LoadOptions::default());
    assert!(!loaded.has_errors());
    // The Gateway, its Pod and its Service, then a VirtualService and a DestinationRule per host.
    assert_eq!(loaded.resources.len(), 3 * n + 3);
    let registry = Registry::build(&loaded.resources);
    let found = analyze_with(&loaded, &registry);
    assert!(found.is_empty(), "{:?}", &found[..found.len().min(3)]);

    let mut group = c.benchmark_group("analyze");
    group.sample_size(10);
    group.bench_function("10k_se_10k_vs_10k_dr", |b| {
        b.iter(|| analyze_with(black_box(&loaded), black_box(&registry)))
    });
    group.bench_function("10k_se_10k_vs_10k_dr_with_registry_build", |b| {
        b.iter(|| analyze(black_box(&loaded)))
    });
    group.finish();
}

/// Issue 18's bound: auto-allocating addresses for 10,000 ServiceEntries in under 10 ms.
fn allocation(c: &mut Criterion) {
    let n = 10_000;
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se-{i}, namespace: ns-{}}}\nspec:\n  hosts: [db-{i}.example.com]\n  ports: [{{number: 27017, name: tcp, protocol: TCP}}]\n  resolution: DNS\n",
            i % 100
        ));
    }
    let loaded = load_str("bench.yaml", &text, &LoadOptions::default());
    assert!(!loaded.has_errors());
    let services: Vec<meshentry_registry::Service> = Registry::build(&loaded.resources).services().cloned().collect();
    assert_eq!(services.len(), n);
    let mut group = c.benchmark_group("allocate");
    group.bench_function("10k_service_entries", |b| {
        b.iter_batched_ref(
            || services.clone(),
            |s| meshentry_registry::allocate::allocate(black_box(s)),
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, build, lookups, analysis, allocation);
criterion_main!(benches);
