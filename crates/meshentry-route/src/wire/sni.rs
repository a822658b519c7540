//! Reading the server name (SNI) and ALPN from a ClientHello: the parser is
//! [`meshentry_wire::sni`] (pure, and fuzzed there without building the proxy).

pub use meshentry_wire::sni::*;

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// What rustls really sends, so the parser is checked against a client and not only
    /// against hand-built bytes.
    #[test]
    fn a_real_rustls_client_hello() {
        use std::sync::Arc;

        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut config = config;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("www.googleapis.com").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut bytes = Vec::new();
        conn.write_tls(&mut bytes).unwrap();
        match sniff(&bytes) {
            Sniff::Hello(h) => {
                assert_eq!(h.server_name.as_deref(), Some("www.googleapis.com"));
                assert_eq!(h.alpn, vec![Cow::Borrowed(&b"h2"[..])]);
            }
            other => panic!("{other:?}"),
        }
    }
}
