//! Prints N generated ServiceEntries (default 10,000) as one YAML stream, for measuring the
//! CLI: `cargo run -p meshentry-api --example gen_service_entries -- 10000 > /tmp/10k.yaml`.

#[path = "../benches/support/mod.rs"]
mod support;

fn main() {
    let n = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    print!("{}", support::service_entries(n));
}
