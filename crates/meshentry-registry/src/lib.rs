//! The service registry: resources to services and endpoints, as Istio computes them.
//!
//! [`Registry::build`] is a pure function from validated resources (ServiceEntries,
//! WorkloadEntries, Pods, Kubernetes Services and EndpointSlices) to an immutable snapshot,
//! meant to be shared as `Arc<Registry>`:
//!
//! - [`model`]: the resolved types, [`Service`], [`Port`], [`Endpoint`], [`Warning`];
//! - `build`: Istio's conversion (B1-B7) and same-host merge (B8), Kubernetes Services as
//!   Istio's Kubernetes registry builds them, plus a [`Warning`] for each conflict Istio
//!   settles silently (B8, B10, C5);
//! - [`index`]: the lookups the data plane uses, per proxy namespace ([`View`]);
//! - [`host`]: B11's host matching;
//! - [`json`]: the stable JSON form printed by `meshentry registry`;
//! - [`scope`]: what a Sidecar lets a proxy import (C9), and [`Registry::scoped`], the
//!   registry a scoped proxy keeps;
//! - [`analyze`]: checks across resources (VirtualService, DestinationRule and Sidecar
//!   references resolved against the registry), as warnings for `meshentry validate`.
//!
//! Rule ids (B1..B11, C4, C5) refer to the project's Istio semantics notes.

pub mod allocate;
pub mod analyze;
mod build;
pub mod hash;
pub mod host;
pub mod index;
pub mod json;
pub mod model;
pub mod scope;

use meshentry_api::Resource;

pub use build::BuildOptions;
pub use index::View;
pub use json::RegistryJson;
pub use model::{
    Address, AutoAddresses, Endpoint, ExportTo, Labels, Location, Port, Protocol, Provider, Resolution, Scope, Service,
    ServiceId, Source, SourceId, TlsMode, Warning, Workload,
};
pub use scope::{SidecarScope, select_sidecar};

/// An immutable registry snapshot.
pub struct Registry {
    sources: Vec<Source>,
    services: Vec<Service>,
    listing: Vec<ServiceId>,
    warnings: Vec<Warning>,
    /// Indexes `services[..routable]`: the services lookups find.
    index: index::Index,
    /// How many services (the first ones) lookups find: all, except in a scoped registry,
    /// where services imported only as VirtualService destinations follow them.
    routable: usize,
    /// A scoped registry's index of every service, for VirtualService destinations.
    cluster_index: Option<index::Index>,
    /// The domain of Kubernetes Service hosts and expanded short names.
    cluster_domain: meshentry_api::ClusterDomain,
}

impl Registry {
    /// Builds the registry from `resources`, skipping those that are not `valid` and kinds
    /// the registry does not read. Pure and deterministic: the result depends on the set of
    /// resources and their ages ([`Resource::age_key`], Istio's oldest-first order), not on
    /// the order they come in. Never fails: what Istio would drop is dropped, and every
    /// silent conflict becomes a [`Warning`].
    pub fn build<'a>(resources: impl IntoIterator<Item = &'a Resource>) -> Registry {
        Registry::build_with(resources, &BuildOptions::default())
    }

    /// [`Registry::build`] under `opts` (the cluster domain).
    pub fn build_with<'a>(resources: impl IntoIterator<Item = &'a Resource>, opts: &BuildOptions) -> Registry {
        let built = build::build(resources, opts);
        let index = index::Index::new(&built.services);
        Registry {
            sources: built.sources,
            routable: built.services.len(),
            services: built.services,
            listing: built.listing,
            warnings: built.warnings,
            index,
            cluster_index: None,
            cluster_domain: built.cluster_domain,
        }
    }

    /// The domain of Kubernetes Service hosts (`--cluster-domain`).
    pub fn cluster_domain(&self) -> &meshentry_api::ClusterDomain {
        &self.cluster_domain
    }

    /// E1/D1 in this registry's cluster domain: a host without a dot is short for
    /// `<host>.<namespace>.svc.<domain>` ([`host::expand_in`]).
    pub fn expand_host(&self, host: &str, namespace: &str) -> String {
        host::expand_in(host, namespace, &self.cluster_domain)
    }

    /// Every service, one per host and namespace (Istio's `HostnameAndNamespace` index: the
    /// oldest ServiceEntry's, with the ports B8 merges into it), sorted by host, then
    /// namespace.
    pub fn services(&self) -> impl ExactSizeIterator<Item = &Service> + '_ {
        self.listing.iter().map(|&id| &self.services[id as usize])
    }

    /// A service by id.
    pub fn service(&self, id: ServiceId) -> Option<&Service> {
        self.services.get(id as usize)
    }

    /// The id of `service`, when it is one of this registry's (found by its address: the ids
    /// index one slice, so no hashing and no string compares).
    pub fn id_of(&self, service: &Service) -> Option<ServiceId> {
        let size = std::mem::size_of::<Service>();
        let offset = (std::ptr::from_ref(service) as usize).checked_sub(self.services.as_ptr() as usize)?;
        let id = offset / size;
        (offset % size == 0 && id < self.services.len())
            .then(|| ServiceId::try_from(id).ok())
            .flatten()
    }

    /// The registry as a proxy in `namespace` sees it (B9, B10): what its listeners route.
    pub fn view<'n>(&self, namespace: &'n str) -> View<'_, 'n> {
        View {
            services: &self.services[..self.routable],
            index: &self.index,
            namespace,
        }
    }

    /// Every service the proxy holds a cluster for, to resolve VirtualService destinations:
    /// [`Registry::view`], plus (in a [scoped](Registry::scoped) registry) the services
    /// imported only as VirtualService destinations.
    pub fn cluster_view<'n>(&self, namespace: &'n str) -> View<'_, 'n> {
        match &self.cluster_index {
            Some(index) => View {
                services: &self.services,
                index,
                namespace,
            },
            None => self.view(namespace),
        }
    }

    /// Whether this is a [scoped](Registry::scoped) registry (a Sidecar's imports only).
    pub fn is_scoped(&self) -> bool {
        self.cluster_index.is_some()
    }

    /// "What does namespace `ns` see": one service per host, the one its proxies use (B9,
    /// B10), sorted by host; in a scoped registry, every service it holds.
    pub fn visible(&self, namespace: &str) -> Vec<&Service> {
        self.cluster_view(namespace).services()
    }

    /// Conflicts Istio resolves silently, oldest resources first.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// The resources the registry was built from, oldest first ([`SourceId`] order).
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// The JSON form: every service, or (with a namespace) the ones that namespace sees.
    pub fn to_json(&self, namespace: Option<&str>) -> RegistryJson<'_> {
        match namespace {
            Some(ns) => RegistryJson::new(self.visible(ns)),
            None => RegistryJson::new(self.services()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn registry_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::Registry>();
    }
}
