//! The coordinator's own certificate authority: it signs the server certificate and one
//! client certificate per host, bound to the host id, from a CSR for a key the host made.
//!
//! Keys are ECDSA P-256 (ring), which every TLS client understands. Certificates carry
//! only what drover decides: a CSR contributes its public key and its common name (which
//! must equal the host id asked for); its extensions, SANs and CA flags are ignored.

use std::net::IpAddr;

use drover_protocol::{Duration, HostId, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use x509_parser::prelude::FromDer as _;

/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How long server and host certificates are valid.
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// Why a certificate could not be made or a CSR was refused.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Key generation or signing failed inside rcgen/ring.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The CSR is not a valid, self-signed PKCS#10 request.
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(String),
    /// The CSR names another host than the one joining.
    #[error("the certificate signing request is for {found:?}, but the host joins as {expected}")]
    CsrHostMismatch { expected: HostId, found: String },
}

/// The CA: its certificate and the key that signs with it.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("sha256", &self.sha256()).finish()
    }
}

fn validity(params: &mut CertificateParams, now: Timestamp, length: Duration) {
    let date = |at: Timestamp| {
        let (year, month, day) = at.date();
        rcgen::date_time_ymd(year, month, day)
    };
    // A day of slack either side of "now" absorbs clock skew between machines.
    params.not_before = date(now.minus(Duration::from_secs(86_400)));
    params.not_after = date(now.plus(length));
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("system random source");
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

/// The DER of the first certificate in `pem`.
pub fn certificate_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|der| der.to_vec())
}

impl Ca {
    /// Makes a new CA; returns it and its private key PEM for storing.
    pub fn create(now: Timestamp) -> Result<(Ca, String), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "drover coordinator CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity(&mut params, now, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        let ca = Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        };
        Ok((ca, key_pem))
    }

    /// Loads a CA from its certificate and key PEM.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let cert_der = certificate_der(cert_pem).ok_or(PkiError::Generate(rcgen::Error::CouldNotParseCertificate))?;
        Ok(Ca {
            issuer,
            cert_pem: cert_pem.to_owned(),
            cert_der,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The hex sha256 of the CA certificate (DER): what `--ca-sha256` pins.
    pub fn sha256(&self) -> String {
        sha256_hex(&self.cert_der)
    }

    /// Issues the server certificate for these names and addresses; returns (cert PEM, key PEM).
    pub fn issue_server(&self, names: &[String], now: Timestamp) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "drover coordinator");
        params.distinguished_name = name;
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(address) => Ok(SanType::IpAddress(address)),
                Err(_) => Ok(SanType::DnsName(name.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        validity(&mut params, now, LEAF_VALIDITY);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues a host's client certificate from its CSR. The CSR must be validly
    /// self-signed and its common name must be `host`; nothing else from it is used.
    pub fn issue_host(&self, host: &HostId, csr_pem: &str, now: Timestamp) -> Result<String, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|error| PkiError::BadCsr(error.to_string()))?;
        let common_name = csr
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .map(dn_text)
            .unwrap_or_default();
        if common_name != host.as_str() {
            return Err(PkiError::CsrHostMismatch {
                expected: host.clone(),
                found: common_name.chars().take(80).collect(),
            });
        }
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host.as_str());
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        validity(&mut params, now, LEAF_VALIDITY);
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
    }
}

fn dn_text(value: &DnValue) -> String {
    match value {
        DnValue::Utf8String(text) => text.clone(),
        DnValue::PrintableString(text) => text.as_str().to_owned(),
        DnValue::Ia5String(text) => text.as_str().to_owned(),
        DnValue::TeletexString(text) => text.as_str().to_owned(),
        _ => String::new(),
    }
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    drover_protocol::hex::sha256(bytes)
}

/// The identity a verified client certificate proves: the host id in its common name
/// and the certificate's sha256 (the coordinator binds each host to one certificate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The host id from the certificate's common name.
    pub host: HostId,
    /// Hex sha256 of the certificate DER.
    pub fingerprint: String,
}

impl PeerIdentity {
    /// Reads the identity from a client certificate that rustls has already verified
    /// against the CA; `None` when its common name is not a valid host id.
    pub fn from_certificate(der: &[u8]) -> Option<PeerIdentity> {
        let (_, certificate) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
        let common_name = certificate.subject().iter_common_name().next()?.as_str().ok()?;
        Some(PeerIdentity {
            host: common_name.parse().ok()?,
            fingerprint: sha256_hex(der),
        })
    }
}

/// A key and CSR as an agent makes them (used by tests and, later, the agent).
pub fn make_host_csr(host: &HostId) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, host.as_str());
    params.distinguished_name = name;
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-27T12:00:00Z".parse().expect("timestamp")
    }

    #[test]
    fn host_certificates_are_bound_to_the_csr_host() {
        let (ca, key_pem) = Ca::create(now()).expect("ca");
        let reloaded = Ca::load(ca.cert_pem(), &key_pem).expect("reload");
        assert_eq!(reloaded.sha256(), ca.sha256());
        let host: HostId = "web-01".parse().expect("host");
        let (csr, _) = make_host_csr(&host).expect("csr");
        let pem = reloaded.issue_host(&host, &csr, now()).expect("issue");
        let identity = PeerIdentity::from_certificate(&certificate_der(&pem).expect("der")).expect("identity");
        assert_eq!(identity.host, host);

        let other: HostId = "web-02".parse().expect("host");
        assert!(matches!(
            reloaded.issue_host(&other, &csr, now()),
            Err(PkiError::CsrHostMismatch { .. })
        ));
        assert!(matches!(
            reloaded.issue_host(&host, "garbage", now()),
            Err(PkiError::BadCsr(_))
        ));
    }
}
