//! The server's TLS: its certificate, swapped whole when renewed, and client
//! certificates verified against the coordinator's CA when presented.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

/// The server's certificate (chain + key), swapped whole when it is renewed: every
/// handshake after [`ServerCertificate::replace`] gets the new one, connections already
/// open keep theirs.
#[derive(Debug)]
pub struct ServerCertificate {
    current: std::sync::RwLock<Arc<CertifiedKey>>,
}

impl ServerCertificate {
    /// A certificate from its chain (PEM, leaf first) and key (PEM).
    pub fn new(chain_pem: &str, key_pem: &str) -> Result<Arc<ServerCertificate>, String> {
        Ok(Arc::new(ServerCertificate {
            current: std::sync::RwLock::new(certified_key(chain_pem, key_pem)?),
        }))
    }

    /// Serves `chain_pem` with `key_pem` from the next handshake on.
    pub fn replace(&self, chain_pem: &str, key_pem: &str) -> Result<(), String> {
        let key = certified_key(chain_pem, key_pem)?;
        // A swap of one Arc cannot leave a half-written value: a poisoned lock holds the
        // old certificate or the new one, either of which is fine to serve.
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = key;
        Ok(())
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("server certificate: {error}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|error| format!("server key: {error}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|error| format!("server certificate: {error}"))?;
    Ok(Arc::new(key))
}

/// Builds the TLS configuration with a fixed server certificate (for test servers).
pub fn tls_config(ca_der: &[u8], cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, String> {
    tls_config_with(ca_der, ServerCertificate::new(cert_pem, key_pem)?)
}

/// Builds the TLS configuration: the server certificate from `certificate` at each
/// handshake, and client certificates verified against the coordinator's CA (and the
/// clock: an expired one fails the handshake) when presented.
pub fn tls_config_with(ca_der: &[u8], certificate: Arc<ServerCertificate>) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|error| format!("CA certificate: {error}"))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|error| format!("client verifier: {error}"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS versions: {error}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
