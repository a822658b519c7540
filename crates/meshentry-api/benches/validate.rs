//! Issue 2's figure: validating one 10,000-ServiceEntry file (about 5 MB) takes under 1 s.
//! Peak memory is measured on the real binary by scripts/bench-validate.

use criterion::{Criterion, criterion_group, criterion_main};
use meshentry_api::{LoadOptions, load_str};

mod support;

fn validate_10k(c: &mut Criterion) {
    let text = support::service_entries(10_000);
    eprintln!("input: {} bytes", text.len());
    let opts = LoadOptions::default();
    let mut group = c.benchmark_group("validate");
    group.sample_size(10);
    group.bench_function("10k_service_entries", |b| {
        b.iter(|| {
            let loaded = load_str("bench.yaml", &text, &opts);
            assert_eq!(loaded.resources.len(), 10_000);
            assert!(!loaded.has_errors());
            loaded
        })
    });
    group.finish();
}

criterion_group!(benches, validate_10k);
criterion_main!(benches);
