//! The typed model of the resources meshentry reads, mirroring Istio's API reference
//! (networking.istio.io v1alpha3, v1beta1 and v1 share one schema) and the few Kubernetes
//! fields we use.
//!
//! Conventions, so that decoding can report every problem and read a bad field as unset
//! (see [`crate::de`]):
//! - every struct is `#[serde(default, rename_all = "camelCase")]` and `Default`;
//! - scalars use proto3 meaning: `0` and `""` are "unset", `Option` only where Istio tells unset
//!   apart from the zero value (wrapper types, enums whose zero value means something);
//! - enums keep Istio's names through `#[serde(rename = ...)]` and list the proto3 zero value
//!   first;
//! - no `flatten` or `untagged` (they hide the field list that unknown-field detection needs).

mod common;
mod destination_rule;
mod gateway;
mod kube;
mod service_entry;
mod sidecar;
mod status;
mod virtual_service;

pub use common::*;
pub use destination_rule::*;
pub use gateway::*;
pub use kube::*;
pub use service_entry::*;
pub use sidecar::*;
pub use status::*;
pub use virtual_service::*;
