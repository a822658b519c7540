//! A Gateway's terminating servers (F3): the rustls server configuration built from the files
//! the model chose ([`ServerFiles`]), swapped whole when they change, as Envoy's SDS rotates a
//! gateway's certificates.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;

pub use meshentry_route::model::gateway::ServerFiles;

use crate::live::tls::{Rebuilt, load_certs, load_key, provider};

/// Why a terminating server's TLS could not be built from its files (or rebuilt).
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error(transparent)]
    File(#[from] crate::live::tls::ConfigError),
    #[error("private key {}: {source}", path.display())]
    Key { path: PathBuf, source: rustls::Error },
    #[error("CA certificates {}: {source}", path.display())]
    Ca { path: PathBuf, source: rustls::Error },
    #[error("client certificate verifier: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("{} and {}: the certificate and the private key do not match", cert.display(), key.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: {source}", path.display())]
    Cert { path: PathBuf, source: rustls::Error },
    #[error("{0}")]
    Rustls(#[source] rustls::Error),
}

/// A terminating server's TLS: its files and the rustls configuration built from them.
///
/// The configuration is swapped whole when the files change, rather than through a
/// `ResolvesServerCert`, because `caCertificates` (the client certificate verifier) rotates
/// too and a certificate, its key and the CA must change together. A handshake takes the
/// configuration in force with one lock-free `ArcSwap` load; a connection keeps the one it
/// was accepted with, so established connections are untouched by a rotation.
#[derive(Debug)]
pub struct ServerTls {
    files: ServerFiles,
    config: Rebuilt<ServerConfig>,
}

impl ServerTls {
    pub fn new(files: ServerFiles) -> Result<ServerTls, ServerTlsError> {
        let config = Rebuilt::new(files.paths(), || build_server_config(&files))?;
        Ok(ServerTls { files, config })
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// Rebuilds the configuration when one of its files changed since it was built (a stat
    /// of each; they are read only then). On a broken file, or a certificate and key that do
    /// not match (half-way through a rotation), the configuration in force stays and the error
    /// is returned; it is not retried until a file changes again. `Ok(true)`: reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, ServerTlsError> {
        self.config.reload_if_changed(|| build_server_config(&self.files))
    }
}

fn build_server_config(files: &ServerFiles) -> Result<Arc<ServerConfig>, ServerTlsError> {
    let (cert, key, client_ca, require) = (&files.cert, &files.key, files.client_ca.as_deref(), files.require);
    let chain = load_certs("server certificate", cert)?;
    let key_path = key;
    let key = load_key(key_path)?;
    let provider = provider();
    // Parsed once more by `with_single_cert`; done here first so that the error names the key
    // file rather than the certificate (reloads are rare, the cost is nothing).
    provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|source| ServerTlsError::Key {
            path: key_path.clone(),
            source,
        })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(ServerTlsError::Rustls)?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs("CA certificates", ca)? {
                roots.add(c).map_err(|source| ServerTlsError::Ca {
                    path: ca.to_path_buf(),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if require {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(ServerTlsError::Verifier)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        // Expected for a moment when a rotation replaces the two files one at a time.
        rustls::Error::InconsistentKeys(_) => ServerTlsError::Mismatch {
            cert: cert.clone(),
            key: key_path.clone(),
        },
        source => ServerTlsError::Cert {
            path: cert.clone(),
            source,
        },
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named() {
        let files = ServerFiles {
            cert: "/nonexistent/c.pem".into(),
            key: "/k".into(),
            client_ca: None,
            require: false,
        };
        let err = ServerTls::new(files).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/c.pem"), "{err}");
    }
}
