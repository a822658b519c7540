//! Which kinds meshentry reads from a cluster, in which version, and how an object becomes a
//! document for the loader.

use std::sync::Arc;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::discovery::{self, Scope};
use serde_json::Value;

use crate::KubeError;

/// The API group whose objects meshentry reads.
pub const GROUP: &str = "networking.istio.io";

/// How an object read from a cluster is named in findings: `kubernetes://NAMESPACE/KIND/NAME`.
pub const ORIGIN_SCHEME: &str = "kubernetes://";

/// The Kubernetes kinds read beside Istio's: workload selection (Namespaces, Pods) and the
/// Kubernetes Services a mesh routes to. An API server that does not serve one (a bare
/// apiextensions-apiserver serves none) is read without it.
const CORE: [(&str, &str, &str); 4] = [
    ("", "v1", "Namespace"),
    ("", "v1", "Pod"),
    ("", "v1", "Service"),
    ("discovery.k8s.io", "v1", "EndpointSlice"),
];

/// One kind to read: where the server serves it.
#[derive(Clone, Debug)]
pub(crate) struct Kind {
    pub ar: ApiResource,
    pub namespaced: bool,
    /// Read in this namespace only, whatever the watch's (Secrets: the proxy's own).
    pub only_namespace: Option<String>,
    /// Secrets, for `credentialName`: kept as files, never loaded as configuration.
    pub secret: bool,
}

/// An object as the loader reads it, with the name findings give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// `kubernetes://NAMESPACE/KIND/NAME` (no namespace for a cluster-scoped kind).
    pub origin: Arc<str>,
    /// The object as JSON, with its apiVersion and kind.
    pub text: Arc<str>,
}

/// Why the kinds could not be discovered.
#[derive(Debug)]
pub(crate) enum DiscoverError {
    NoIstio(kube::Error),
    Kind { resource: String, source: kube::Error },
}

impl DiscoverError {
    pub fn at(self, server: &str) -> KubeError {
        match self {
            DiscoverError::NoIstio(source) => KubeError::NoIstio {
                server: server.to_string(),
                group: GROUP,
                source,
            },
            DiscoverError::Kind { resource, source } => KubeError::Discovery {
                server: server.to_string(),
                resource,
                source,
            },
        }
    }
}

/// Every kind of [`GROUP`] in the version the server prefers (kinds in name order), then the
/// [`CORE`] kinds the server serves.
pub(crate) async fn discover(client: &kube::Client) -> Result<Vec<Kind>, DiscoverError> {
    let group = discovery::group(client, GROUP).await.map_err(DiscoverError::NoIstio)?;
    // Only the kinds meshentry reads: others (EnvoyFilter, ProxyConfig) would need a wider
    // role for nothing, and a least-privilege role would refuse their lists.
    let mut resources: Vec<_> = group
        .recommended_resources()
        .into_iter()
        .filter(|(ar, _)| meshentry_api::Kind::ISTIO.iter().any(|k| k.as_str() == ar.kind))
        .collect();
    resources.sort_by(|a, b| a.0.kind.cmp(&b.0.kind));
    let mut kinds: Vec<Kind> = resources
        .into_iter()
        .map(|(ar, caps)| Kind {
            ar,
            namespaced: caps.scope == Scope::Namespaced,
            only_namespace: None,
            secret: false,
        })
        .collect();
    for (group, version, kind) in CORE {
        match discovery::pinned_kind(client, &GroupVersionKind::gvk(group, version, kind)).await {
            Ok((ar, caps)) => kinds.push(Kind {
                ar,
                namespaced: caps.scope == Scope::Namespaced,
                only_namespace: None,
                secret: false,
            }),
            Err(e) if not_served(&e) => {}
            Err(source) => {
                return Err(DiscoverError::Kind {
                    resource: kind.to_string(),
                    source,
                });
            }
        }
    }
    Ok(kinds)
}

/// The Secrets of `namespace`, when the server serves them.
pub(crate) async fn secrets(client: &kube::Client, namespace: &str) -> Result<Option<Kind>, DiscoverError> {
    match discovery::pinned_kind(client, &GroupVersionKind::gvk("", "v1", "Secret")).await {
        Ok((ar, _)) => Ok(Some(Kind {
            ar,
            namespaced: true,
            only_namespace: Some(namespace.to_string()),
            secret: true,
        })),
        Err(e) if not_served(&e) => Ok(None),
        Err(source) => Err(DiscoverError::Kind {
            resource: "Secret".into(),
            source,
        }),
    }
}

/// A discovery answer that says the server does not have the kind (as opposed to one that
/// could not be had).
fn not_served(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code == 404,
        kube::Error::Discovery(_) => true,
        _ => false,
    }
}

impl Kind {
    /// The kind's objects in `namespace`, or everywhere (always everywhere for a kind that is
    /// not namespaced).
    pub fn api(&self, client: &kube::Client, namespace: Option<&str>) -> Api<DynamicObject> {
        match (self.namespaced, self.only_namespace.as_deref().or(namespace)) {
            (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &self.ar),
            _ => Api::all_with(client.clone(), &self.ar),
        }
    }

    /// The object as the loader reads it: a JSON document with its apiVersion and kind (a
    /// list's or a watch's items may carry neither), without the server's bookkeeping.
    pub fn document(&self, object: DynamicObject) -> Result<Document, serde_json::Error> {
        let origin = self.origin(
            object.metadata.namespace.as_deref().unwrap_or_default(),
            object.metadata.name.as_deref().unwrap_or_default(),
        );
        let text = document(object, &self.ar.api_version, &self.ar.kind)?;
        Ok(Document {
            origin: origin.into(),
            text: text.into(),
        })
    }

    pub fn origin(&self, namespace: &str, name: &str) -> String {
        format!("{ORIGIN_SCHEME}{namespace}/{}/{name}", self.ar.kind)
    }
}

/// `managedFields` and the `last-applied-configuration` annotation are bookkeeping, not
/// configuration: dropped, so that findings and memory are about what the user wrote.
fn document(object: DynamicObject, api_version: &str, kind: &str) -> Result<String, serde_json::Error> {
    let mut value = serde_json::to_value(object)?;
    if let Value::Object(map) = &mut value {
        map.insert("apiVersion".into(), Value::String(api_version.into()));
        map.insert("kind".into(), Value::String(kind.into()));
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.remove("managedFields");
            if let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
                annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
                if annotations.is_empty() {
                    meta.remove("annotations");
                }
            }
        }
    }
    serde_json::to_string_pretty(&value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_drop_the_servers_bookkeeping_and_name_their_kind() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "reviews",
                "namespace": "default",
                "resourceVersion": "42",
                "managedFields": [{"manager": "kubectl"}],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
            },
            "spec": {"hosts": ["reviews"]}
        }))
        .unwrap();
        let kind = Kind {
            ar: ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, "v1", "VirtualService")),
            namespaced: true,
            only_namespace: None,
            secret: false,
        };
        let doc = kind.document(object).unwrap();
        assert_eq!(&*doc.origin, "kubernetes://default/VirtualService/reviews");
        let value: Value = serde_json::from_str(&doc.text).unwrap();
        assert_eq!(value["apiVersion"], "networking.istio.io/v1");
        assert_eq!(value["kind"], "VirtualService");
        assert_eq!(value["metadata"]["resourceVersion"], "42");
        assert!(value["metadata"].get("managedFields").is_none());
        assert!(value["metadata"].get("annotations").is_none());
        assert_eq!(value["spec"]["hosts"][0], "reviews");
    }
}
