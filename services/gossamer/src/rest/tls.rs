//! HTTPS for the API and console: a rustls server identity from PEM files.

use std::sync::Arc;

/// The HTTPS settings for a certificate chain and key in PEM files.
pub fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("reading the TLS certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("the TLS certificate file {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("reading the TLS key {}: {e}", key.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map(|mut config| {
            // HTTP/1.1 is what is served; say so to clients that ask (as actix-web does).
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            config
        })
        .map_err(|e| anyhow::anyhow!("the TLS certificate and key do not make a server identity: {e}"))
}
