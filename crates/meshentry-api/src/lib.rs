//! Istio's networking resources as meshentry reads them.
//!
//! - [`yaml`]: YAML/JSON streams into node trees that keep line and column;
//! - [`de`]: node trees into the typed [`model`], recording every problem instead of stopping;
//! - [`model`]: ServiceEntry, WorkloadEntry, WorkloadGroup, DestinationRule, VirtualService,
//!   Gateway and Sidecar (networking.istio.io v1alpha3, v1beta1 and v1), and the parts of
//!   Kubernetes Pod and Namespace that workload selection needs and of Service and
//!   EndpointSlice that Istio's Kubernetes registry reads;
//! - [`validate`]: Istio's validation rules, with Istio's messages;
//! - [`load`]: files, directories and stdin into [`Resource`]s and [`Finding`]s.
//!
//! This crate does no I/O beyond reading the files it is given, and has no async runtime.

pub mod de;
pub mod load;
pub mod mesh_config;
pub mod model;
pub mod resource;
pub mod suggest;
pub mod validate;
pub mod yaml;

pub use load::{
    ClusterDomain, DEFAULT_CLUSTER_DOMAIN, LoadError, LoadOptions, Loaded, ServicesKnown, load_paths, load_str,
    source_files,
};
pub use mesh_config::MeshConfig;
pub use resource::{Finding, Kind, Origin, Resource, Spec};
pub use validate::Severity;
