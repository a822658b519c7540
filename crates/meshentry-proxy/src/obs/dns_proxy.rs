//! The DNS proxy's counters: queries by outcome, and how long upstream resolvers take.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What became of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered from the name table.
    Local,
    /// Answered from the cache of upstream answers.
    Cached,
    /// Sent upstream and the upstream's answer relayed.
    Forwarded,
    /// No upstream answered: SERVFAIL.
    Failed,
    /// Malformed or unsupported: FORMERR, NOTIMP, BADVERS, or dropped.
    Refused,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Local,
        Outcome::Cached,
        Outcome::Forwarded,
        Outcome::Failed,
        Outcome::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Local => "local",
            Outcome::Cached => "cached",
            Outcome::Forwarded => "forwarded",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
        }
    }
}

/// Upper bounds (seconds) of the upstream latency buckets; the last bucket is +Inf.
pub const LATENCY_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Written by the DNS thread alone, read by the admin server.
#[derive(Debug, Default)]
pub struct DnsProxyStats {
    outcomes: [AtomicU64; 5],
    /// Exchanges with an upstream resolver (Istio's `dns_upstream_requests_total`), and those
    /// that failed (no answer in time, unreachable, malformed).
    pub upstream_requests: AtomicU64,
    pub upstream_failures: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    latency_sum_micros: AtomicU64,
}

impl DnsProxyStats {
    pub fn count(&self, o: Outcome) {
        self.outcomes[o as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn outcome(&self, o: Outcome) -> u64 {
        self.outcomes[o as usize].load(Ordering::Relaxed)
    }

    /// Every query answered or refused.
    pub fn requests(&self) -> u64 {
        Outcome::ALL.iter().map(|o| self.outcome(*o)).sum()
    }

    /// One forwarded query's time until its answer (or failure), all upstream tries included.
    pub fn observe_upstream(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Bucket counts (not cumulative) and the sum in seconds.
    pub fn latency(&self) -> ([u64; LATENCY_BOUNDS.len() + 1], f64) {
        let mut out = [0; LATENCY_BOUNDS.len() + 1];
        for (o, c) in out.iter_mut().zip(&self.latency) {
            *o = c.load(Ordering::Relaxed);
        }
        (out, self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

/// Appends the DNS proxy's Prometheus families: ours by outcome, and the Istio agent's names
/// (`istio_agent_dns_*`), so that dashboards built for Istio's DNS proxy work unchanged.
pub fn encode(out: &mut String, stats: &DnsProxyStats) {
    use crate::obs::metrics::{family, histogram, push_label, sample};
    let name = "meshentry_dns_proxy_queries_total";
    family(
        out,
        name,
        "counter",
        "DNS queries by outcome: local (the mesh's names), cached, forwarded, failed (SERVFAIL), refused (malformed or unsupported).",
    );
    for o in Outcome::ALL {
        let mut labels = String::new();
        push_label(&mut labels, "outcome", o.as_str());
        sample(out, name, &labels, None, &stats.outcome(o).to_string());
    }
    let counters: [(&str, &str, u64); 3] = [
        (
            "istio_agent_dns_requests_total",
            "Total number of DNS requests.",
            stats.requests(),
        ),
        (
            "istio_agent_dns_upstream_requests_total",
            "Total number of DNS requests forwarded to upstream.",
            stats.upstream_requests.load(Ordering::Relaxed),
        ),
        (
            "istio_agent_dns_upstream_failures_total",
            "Total number of DNS failures.",
            stats.upstream_failures.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        family(out, name, "counter", help);
        sample(out, name, "", None, &value.to_string());
    }
    let (counts, sum) = stats.latency();
    histogram(
        out,
        "istio_agent_dns_upstream_request_duration_seconds",
        "Total time in seconds Istio takes to get DNS response from upstream.",
        &LATENCY_BOUNDS,
        std::iter::once(("", &counts[..], sum)),
    );
}
