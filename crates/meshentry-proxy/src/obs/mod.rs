//! What happened, for people and tools: counters and outcomes, Istio's metrics, the access log.

pub mod access_log;
pub mod dns_proxy;
pub mod metrics;
pub mod telemetry;
