//! The service registry: resources to services and endpoints, as Istio computes them.
