//! Kubernetes as meshentry's configuration source: Istio's networking objects read from an API
//! server, each in the version the server prefers, into the same loader (and so the same
//! validation and analysis) as files.
//!
//! An object is loaded as the JSON the API server returned, without `managedFields` and the
//! `last-applied-configuration` annotation (bookkeeping, not configuration), and is named
//! `kubernetes://NAMESPACE/KIND/NAME` in findings, with lines and columns in that JSON.

use std::path::{Path, PathBuf};

use kube::api::{Api, DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{self, Scope};
use meshentry_api::{LoadOptions, Loaded};
use serde_json::Value;

/// The API group whose objects meshentry reads.
pub const GROUP: &str = "networking.istio.io";

/// Why the cluster's configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes configuration found (--kubeconfig, KUBECONFIG, ~/.kube/config, or the in-cluster service account): {0}"
    )]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot make a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("API server {server}: {group} is not served (are Istio's CRDs installed?): {source}")]
    NoIstio {
        server: String,
        group: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("API server {server}: listing {resource}: {source}")]
    List {
        server: String,
        resource: String,
        #[source]
        source: kube::Error,
    },
    #[error("API server {server}: {resource} {name}: {source}")]
    Encode {
        server: String,
        resource: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A connection to one cluster's API server.
pub struct Cluster {
    client: kube::Client,
    server: String,
}

impl Cluster {
    /// The cluster `kubeconfig` names (its current context), else the one `KUBECONFIG`,
    /// `~/.kube/config` or the in-cluster service account gives, as kubectl finds it.
    pub async fn connect(kubeconfig: Option<&Path>) -> Result<Cluster, KubeError> {
        // kube's TLS takes the process's default rustls provider; the workspace's is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?;
                kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|source| KubeError::Kubeconfig {
                        path: path.to_path_buf(),
                        source,
                    })?
            }
            None => kube::Config::infer().await.map_err(KubeError::Infer)?,
        };
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(KubeError::Client)?;
        Ok(Cluster { client, server })
    }

    /// The API server's address, for messages.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Adds every object of [`GROUP`] the server holds (in `namespace`, or all namespaces) to
    /// `loaded`, kinds in name order and objects in the server's order (namespace, name).
    /// Returns how many objects were added. Call [`Loaded::finish`] after the last source.
    pub async fn load_into(
        &self,
        loaded: &mut Loaded,
        opts: &LoadOptions,
        namespace: Option<&str>,
    ) -> Result<usize, KubeError> {
        let group = discovery::group(&self.client, GROUP)
            .await
            .map_err(|source| KubeError::NoIstio {
                server: self.server.clone(),
                group: GROUP,
                source,
            })?;
        let mut resources = group.recommended_resources();
        resources.sort_by(|a, b| a.0.kind.cmp(&b.0.kind));
        let mut added = 0;
        for (ar, caps) in resources {
            let api: Api<DynamicObject> = match (caps.scope, namespace) {
                (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
                _ => Api::all_with(self.client.clone(), &ar),
            };
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|source| KubeError::List {
                    server: self.server.clone(),
                    resource: ar.plural.clone(),
                    source,
                })?;
            for object in list.items {
                let ns = object.metadata.namespace.clone().unwrap_or_default();
                let name = object.metadata.name.clone().unwrap_or_default();
                let text = document(object, &ar.api_version, &ar.kind).map_err(|source| KubeError::Encode {
                    server: self.server.clone(),
                    resource: ar.plural.clone(),
                    name: name.clone(),
                    source,
                })?;
                loaded.add_str(&format!("kubernetes://{ns}/{}/{name}", ar.kind), &text, opts);
                added += 1;
            }
        }
        Ok(added)
    }
}

/// The object as the loader reads it: a JSON document with its apiVersion and kind (a list's
/// items carry neither), without the server's bookkeeping.
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
        let text = document(object, "networking.istio.io/v1", "VirtualService").unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["apiVersion"], "networking.istio.io/v1");
        assert_eq!(value["kind"], "VirtualService");
        assert_eq!(value["metadata"]["resourceVersion"], "42");
        assert!(value["metadata"].get("managedFields").is_none());
        assert!(value["metadata"].get("annotations").is_none());
        assert_eq!(value["spec"]["hosts"][0], "reviews");
    }
}
