//! Peak memory and wall time of one registry build over the benchmark input (10,000
//! ServiceEntries, 20,000 WorkloadEntries). Linux only: resets the peak-RSS counter after
//! loading (`/proc/self/clear_refs`), so VmHWM afterwards is the peak during the build.
//!
//! `cargo run --release -p meshentry-registry --example build_memory`

use std::time::Instant;

use meshentry_registry::Registry;

#[path = "../benches/support/generate.rs"]
mod generate;

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let loaded = generate::load();
    let before = status_kb("VmRSS:");
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let start = Instant::now();
    let registry = Registry::build(&loaded.resources);
    let elapsed = start.elapsed();
    let peak = status_kb("VmHWM:");
    let after = status_kb("VmRSS:");
    let endpoints: usize = registry.services().map(|s| s.endpoints.len()).sum();
    println!("resources: {}", loaded.resources.len());
    println!(
        "services: {}, endpoints: {endpoints}, warnings: {}",
        registry.services().len(),
        registry.warnings().len()
    );
    println!("build time: {:.1} ms", elapsed.as_secs_f64() * 1e3);
    println!("RSS before build (input loaded): {:.1} MB", before as f64 / 1024.0);
    println!(
        "peak RSS during build{}: {:.1} MB",
        if reset {
            ""
        } else {
            " (process peak: clear_refs failed)"
        },
        peak as f64 / 1024.0
    );
    println!(
        "peak above input: {:.1} MB",
        peak.saturating_sub(before) as f64 / 1024.0
    );
    println!("RSS after build (input + registry): {:.1} MB", after as f64 / 1024.0);
    drop(registry);
    // Wall time again, warm; min and median of several, since a shared machine is noisy.
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            let r = Registry::build(&loaded.resources);
            let t = start.elapsed().as_secs_f64() * 1e3;
            drop(r);
            t
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "warm build time: min {:.1} ms, median {:.1} ms",
        times[0],
        times[times.len() / 2]
    );
}
