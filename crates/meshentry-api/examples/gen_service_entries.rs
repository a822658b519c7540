//! Prints N generated ServiceEntries (default 10,000) as one YAML stream, for measuring the
//! CLI: `cargo run -p meshentry-api --example gen_service_entries -- 10000 > /tmp/10k.yaml`.
//! With `--routing`, also a VirtualService and a DestinationRule per ServiceEntry (and one
//! Gateway), which `meshentry validate` analyzes across resources.

#[path = "../benches/support/mod.rs"]
mod support;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10_000);
    print!("{}", support::service_entries(n));
    if args.iter().any(|a| a == "--routing") {
        print!("{}", support::routing(n));
    }
}
