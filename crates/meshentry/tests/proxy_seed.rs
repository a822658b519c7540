//! The seed examples (Istio's ServiceEntry page) served from the proxy's files; the cases are in
//! `seed/cases.rs`, shared with `kube_seed` (the same examples from a cluster).

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

#[path = "seed/cases.rs"]
mod cases;

const SOURCE: cases::Source = cases::Source::Files;
