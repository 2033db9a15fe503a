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

/// How long the CA is valid: ten years from the first start. There is no CA rotation;
/// hosts pin it at join.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How long server and host certificates are valid unless `drover serve` is told
/// otherwise (`--host-certificate-validity`, `--server-certificate-validity`).
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
/// The shortest certificate validity `drover serve` accepts: renewal starts when a third
/// of the lifetime is left, so shorter lifetimes would be mostly renewal traffic.
pub const MIN_LEAF_VALIDITY: Duration = Duration::from_secs(60);
/// The longest: certificates should not outlive the CA that vouches for them.
pub const MAX_LEAF_VALIDITY: Duration = Duration::from_secs(3 * 365 * 86_400);
/// How far before "now" a certificate's validity starts (at most): absorbs clock skew
/// between machines. Shorter lifetimes get a slack as long as themselves, so the
/// renewal rule (a third of not_before..not_after) still waits a while after issue.
const SKEW_SLACK: Duration = Duration::from_secs(86_400);

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
    /// A renewal CSR is for another key than the certificate the host presented.
    #[error(
        "the certificate signing request is for another key than the host's current certificate; renewal keeps the key (to change it, re-join with a token from `drover token create --replace HOST`)"
    )]
    CsrKeyMismatch,
}

/// A certificate the CA issued to a host, with what the coordinator keeps of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The certificate, PEM.
    pub pem: String,
    /// Hex sha256 of the certificate DER.
    pub sha256: String,
    /// Hex sha256 of its SubjectPublicKeyInfo DER: the host's identity.
    pub key_sha256: String,
    /// When it expires.
    pub not_after: Timestamp,
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

/// Sets not_before to "now" minus the skew slack and not_after to "now" plus `length`,
/// to the second.
fn validity(params: &mut CertificateParams, now: Timestamp, length: Duration) {
    let at = |at: Timestamp| {
        let seconds = u64::try_from(at.unix()).unwrap_or(0);
        rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(seconds)
    };
    let slack = if length < SKEW_SLACK { length } else { SKEW_SLACK };
    params.not_before = at(now.minus(slack));
    params.not_after = at(now.plus(length));
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

    /// Issues a server certificate for these names and addresses, valid for the default
    /// [`DEFAULT_LEAF_VALIDITY`]; returns (cert PEM, key PEM).
    pub fn issue_server(&self, names: &[String], now: Timestamp) -> Result<(String, String), PkiError> {
        self.issue_server_valid_for(names, now, DEFAULT_LEAF_VALIDITY)
    }

    /// Issues the server certificate for these names and addresses, valid for `length`;
    /// returns (cert PEM, key PEM).
    pub fn issue_server_valid_for(
        &self,
        names: &[String],
        now: Timestamp,
        length: Duration,
    ) -> Result<(String, String), PkiError> {
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
        validity(&mut params, now, length);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues a host's client certificate from its CSR, valid for `length`. The CSR must
    /// be validly self-signed and its common name must be `host`; nothing else from it is
    /// used. With `same_key` (a renewal: the hex sha256 of the SubjectPublicKeyInfo of the
    /// certificate the host presented) the CSR must be for that key.
    pub fn issue_host(
        &self,
        host: &HostId,
        csr_pem: &str,
        same_key: Option<&str>,
        now: Timestamp,
        length: Duration,
    ) -> Result<IssuedCertificate, PkiError> {
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
        if let Some(expected) = same_key
            && csr_key_sha256(csr_pem)? != expected
        {
            return Err(PkiError::CsrKeyMismatch);
        }
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host.as_str());
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        validity(&mut params, now, length);
        let certificate = params.signed_by(&csr.public_key, &self.issuer)?;
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(certificate.der())
            .map_err(|_| PkiError::Generate(rcgen::Error::CouldNotParseCertificate))?;
        Ok(IssuedCertificate {
            pem: certificate.pem(),
            sha256: sha256_hex(certificate.der()),
            key_sha256: sha256_hex(parsed.tbs_certificate.subject_pki.raw),
            not_after: Timestamp::from_unix(parsed.validity().not_after.timestamp()),
        })
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

/// The hex sha256 of the SubjectPublicKeyInfo of a PEM CSR (parsed as sent, so it is
/// byte for byte the key the CSR's signature was checked with).
fn csr_key_sha256(csr_pem: &str) -> Result<String, PkiError> {
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|error| PkiError::BadCsr(error.to_string()))?;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
        .map_err(|error| PkiError::BadCsr(error.to_string()))?;
    Ok(sha256_hex(csr.certification_request_info.subject_pki.raw))
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    drover_protocol::hex::sha256(bytes)
}

/// The identity a verified client certificate proves: the host id in its common name
/// and the key it holds. The coordinator binds each host to one key: every unexpired
/// certificate from its CA that names the host and carries that key is the host, so a
/// renewed certificate does not cut off the one a host still uses until it wrote the new
/// one (a crash in between loses nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The host id from the certificate's common name.
    pub host: HostId,
    /// Hex sha256 of the certificate DER (hosts enrolled before keys were recorded are
    /// known by this until their first renewal).
    pub fingerprint: String,
    /// Hex sha256 of the certificate's SubjectPublicKeyInfo DER.
    pub key_sha256: String,
    /// When the certificate expires.
    pub not_after: Timestamp,
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
            key_sha256: sha256_hex(certificate.tbs_certificate.subject_pki.raw),
            not_after: Timestamp::from_unix(certificate.validity().not_after.timestamp()),
        })
    }
}

/// The not_before and not_after of the first certificate in `pem`.
pub fn validity_of(pem: &str) -> Option<(Timestamp, Timestamp)> {
    validity_of_der(&certificate_der(pem)?)
}

/// The not_before and not_after of a certificate (DER).
pub fn validity_of_der(der: &[u8]) -> Option<(Timestamp, Timestamp)> {
    let (_, certificate) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let validity = certificate.validity();
    Some((
        Timestamp::from_unix(validity.not_before.timestamp()),
        Timestamp::from_unix(validity.not_after.timestamp()),
    ))
}

/// A key and CSR as an agent makes them (used by tests and, later, the agent).
pub fn make_host_csr(host: &HostId) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let csr = csr_for_key(host, &key.serialize_pem())?;
    Ok((csr, key.serialize_pem()))
}

/// A CSR for an existing key (PEM), as an agent makes it to renew (used by tests).
pub fn csr_for_key(host: &HostId, key_pem: &str) -> Result<String, PkiError> {
    let key = KeyPair::from_pem(key_pem)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, host.as_str());
    params.distinguished_name = name;
    Ok(params.serialize_request(&key)?.pem()?)
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
        let issued = reloaded
            .issue_host(&host, &csr, None, now(), DEFAULT_LEAF_VALIDITY)
            .expect("issue");
        let identity = PeerIdentity::from_certificate(&certificate_der(&issued.pem).expect("der")).expect("identity");
        assert_eq!(identity.host, host);
        assert_eq!(identity.key_sha256, issued.key_sha256);
        assert_eq!(identity.fingerprint, issued.sha256);
        assert_eq!(identity.not_after, now().plus(DEFAULT_LEAF_VALIDITY));

        let other: HostId = "web-02".parse().expect("host");
        assert!(matches!(
            reloaded.issue_host(&other, &csr, None, now(), DEFAULT_LEAF_VALIDITY),
            Err(PkiError::CsrHostMismatch { .. })
        ));
        assert!(matches!(
            reloaded.issue_host(&host, "garbage", None, now(), DEFAULT_LEAF_VALIDITY),
            Err(PkiError::BadCsr(_))
        ));
    }

    #[test]
    fn a_renewal_csr_must_be_for_the_key_of_the_presented_certificate() {
        let (ca, _) = Ca::create(now()).expect("ca");
        let host: HostId = "web-01".parse().expect("host");
        let (csr, key_pem) = make_host_csr(&host).expect("csr");
        let first = ca
            .issue_host(&host, &csr, None, now(), DEFAULT_LEAF_VALIDITY)
            .expect("issue");
        let renewal = csr_for_key(&host, &key_pem).expect("renewal csr");
        let renewed = ca
            .issue_host(&host, &renewal, Some(&first.key_sha256), now(), MIN_LEAF_VALIDITY)
            .expect("renew");
        assert_eq!(renewed.key_sha256, first.key_sha256);
        assert_ne!(renewed.sha256, first.sha256);
        assert_eq!(renewed.not_after, now().plus(MIN_LEAF_VALIDITY));

        let (other_key_csr, _) = make_host_csr(&host).expect("csr");
        assert!(matches!(
            ca.issue_host(
                &host,
                &other_key_csr,
                Some(&first.key_sha256),
                now(),
                DEFAULT_LEAF_VALIDITY
            ),
            Err(PkiError::CsrKeyMismatch)
        ));
    }
}
