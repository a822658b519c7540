//! The seed examples (Istio's ServiceEntry page) applied with `kubectl` to a real API server
//! (apiextensions-apiserver over etcd with Istio's CRDs; `scripts/k8s-apiserver`) and served by
//! a proxy that follows it with `--kubernetes`: the same cases, and the same assertions, as
//! `proxy_seed`, which serves them from files.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

#[path = "seed/cases.rs"]
mod cases;

const SOURCE: cases::Source = cases::Source::Kubernetes;
