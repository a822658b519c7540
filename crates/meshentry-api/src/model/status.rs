//! `status` of the kinds whose status Istio reads back: a ServiceEntry's `status.addresses`,
//! the VIPs istiod's IP auto-allocation controller writes for hosts without `spec.addresses`
//! (`pilot/pkg/networking/serviceentry/ip_autoallocation.go`).
//!
//! Status is written by the control plane, not by users, so it is decoded leniently: fields
//! meshentry does not use (`conditions`, `observedGeneration`, `validationMessages`) and values
//! of the wrong type are ignored, never reported.

use serde::Deserialize;

/// `ServiceEntry.status`: only the part Istio's registry uses.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceEntryStatus {
    /// `status.addresses[]`: one auto-allocated address per host and IP family.
    pub addresses: Vec<ServiceEntryAddress>,
}

/// `status.addresses[]` (`ServiceEntryAddress`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceEntryAddress {
    /// The address: an IP. Istio skips a value that does not parse as one.
    pub value: String,
    /// The `spec.hosts` entry it was allocated for.
    pub host: String,
}
