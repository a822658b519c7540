//! Kubernetes as meshentry's configuration source: Istio's networking objects read from an API
//! server, each in the version the server prefers, into the same loader (and so the same
//! validation and analysis) as files.
//!
//! An object is loaded as the JSON the API server returned, without `managedFields` and the
//! `last-applied-configuration` annotation (bookkeeping, not configuration), and is named
//! `kubernetes://NAMESPACE/KIND/NAME` in findings, with lines and columns in that JSON.

use std::path::{Path, PathBuf};

use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use meshentry_api::{LoadOptions, Loaded};

mod kinds;
mod secrets;
pub mod watch;

pub use kinds::{Document, GROUP, ORIGIN_SCHEME};
pub use watch::{SecretsOptions, Status, View, Watch, WatchOptions};

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
    #[error("API server {server}: discovering {resource}: {source}")]
    Discovery {
        server: String,
        resource: String,
        #[source]
        source: kube::Error,
    },
    #[error("API server {server}: {resource}: {source}")]
    Encode {
        server: String,
        resource: String,
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

    /// A cluster reached through `client` (tests: a client over recorded responses).
    pub fn from_client(client: kube::Client, server: impl Into<String>) -> Cluster {
        Cluster {
            client,
            server: server.into(),
        }
    }

    /// Adds every object meshentry reads ([`kinds`]) that the server holds (in `namespace`, or
    /// all namespaces) to `loaded`, kinds in order and objects in the server's order
    /// (namespace, name). Returns how many objects were added. Call [`Loaded::finish`] after
    /// the last source.
    pub async fn load_into(
        &self,
        loaded: &mut Loaded,
        opts: &LoadOptions,
        namespace: Option<&str>,
    ) -> Result<usize, KubeError> {
        let kinds = kinds::discover(&self.client).await.map_err(|e| e.at(&self.server))?;
        loaded.read_from_cluster(kinds.iter().any(|k| k.ar.kind == "Service"), namespace);
        let mut added = 0;
        for kind in &kinds {
            let api = kind.api(&self.client, namespace);
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|source| KubeError::List {
                    server: self.server.clone(),
                    resource: kind.ar.plural.clone(),
                    source,
                })?;
            for object in list.items {
                let doc = kind.document(object).map_err(|source| KubeError::Encode {
                    server: self.server.clone(),
                    resource: kind.ar.plural.clone(),
                    source,
                })?;
                loaded.add_str(&doc.origin, &doc.text, opts);
                added += 1;
            }
        }
        Ok(added)
    }
}

/// Adds documents a [`watch::Watch`] (or [`Cluster::load_into`]) read to `loaded`.
pub fn add_documents(loaded: &mut Loaded, documents: &[Document], opts: &LoadOptions) {
    for doc in documents {
        loaded.add_str(&doc.origin, &doc.text, opts);
    }
}

/// Whether a finding is about an object read from a cluster, which a proxy skips on its own
/// (as istiod skips an invalid object) instead of refusing the whole configuration.
pub fn is_cluster_origin(file: &str) -> bool {
    file.starts_with(ORIGIN_SCHEME)
}
