//! TLS for the agent: at join, trust the coordinator only if its CA certificate has the
//! sha256 from the join command (the way kubeadm pins its CA); afterwards, trust exactly
//! the stored CA and present the host's client certificate. Artifacts on other HTTPS
//! servers (a release made with `--artifact URL`) are fetched with the system's CA bundle
//! and no client certificate: their bytes are trusted by digest, the TLS only protects
//! the download. ring is the only provider.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    drover_protocol::hex::sha256(bytes)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts a server whose chain contains a CA certificate with the pinned sha256 and
/// whose end-entity certificate verifies against that CA for the server name.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    ca_sha256: String,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    /// Pins the CA with this hex sha256 (of its DER).
    pub fn new(ca_sha256: &str) -> PinnedCaVerifier {
        PinnedCaVerifier {
            ca_sha256: ca_sha256.to_lowercase(),
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates.iter().find(|certificate| sha256_hex(certificate) == self.ca_sha256).ok_or_else(|| {
            rustls::Error::General(format!(
                "the coordinator's CA does not have the pinned sha256 {}: wrong --ca-sha256, or not the coordinator you think",
                self.ca_sha256
            ))
        })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|error| rustls::Error::General(format!("pinned CA: {error}")))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|error| rustls::Error::General(format!("pinned CA: {error}")))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The client configuration for `join`: no client certificate, CA pinned by hash.
pub fn join_config(ca_sha256: &str) -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(ca_sha256)))
        .with_no_client_auth())
}

/// Where Debian and RHEL keep the system CA bundle (ca-certificates).
pub const SYSTEM_CA_BUNDLES: [&str; 2] = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"];

/// Every certificate of the first readable bundle in `bundles`; unreadable or malformed
/// entries are skipped (one bad certificate must not cut a host off from every server).
pub fn system_roots(bundles: &[&str]) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for bundle in bundles {
        let Ok(bytes) = std::fs::read(bundle) else {
            continue;
        };
        for certificate in CertificateDer::pem_slice_iter(&bytes).flatten() {
            let _ = roots.add(certificate);
        }
        break;
    }
    roots
}

/// Adds the coordinator's CA (the one certificate `join` pinned) to `roots`.
pub fn add_ca(roots: &mut RootCertStore, ca_pem: &str) -> Result<(), String> {
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(certificate.map_err(|error| format!("CA: {error}"))?)
            .map_err(|error| format!("CA: {error}"))?;
    }
    Ok(())
}

/// The client configuration for artifacts outside the coordinator: system roots plus the
/// coordinator's CA, no client certificate.
pub fn public_config(ca_pem: &str, bundles: &[&str]) -> Result<rustls::ClientConfig, String> {
    let mut roots = system_roots(bundles);
    add_ca(&mut roots, ca_pem)?;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_roots_come_from_the_first_readable_bundle() {
        let directory = tempfile::tempdir().expect("tempdir");
        let bundle = directory.path().join("bundle.pem");
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".into()]).expect("certificate");
        std::fs::write(&bundle, format!("{}garbage\n", ca.cert.pem())).expect("write");
        let missing = directory.path().join("missing.pem");
        let roots = system_roots(&[missing.to_str().expect("utf-8"), bundle.to_str().expect("utf-8")]);
        assert_eq!(roots.len(), 1);
        assert!(public_config(&ca.cert.pem(), &[]).is_ok());
    }
}
