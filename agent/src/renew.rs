//! In-band renewal of the host certificate. A host certificate lasts as long as the
//! coordinator's `--host-certificate-validity` (a year by default); once less than a third
//! of its lifetime is left, the agent asks for a new one over its current mTLS identity
//! (`POST /v1/agent/certificate` with a CSR for the SAME key: the coordinator knows a
//! host by its key, so the old certificate keeps working until it expires and a crash
//! between the answer and the write loses nothing).
//!
//! The new certificate is written atomically to `identity/host.pem` and put into the
//! [`ClientIdentity`] every host connection presents from then on: the agent's one HTTP
//! client resolves its client certificate at each TLS handshake, so no client is rebuilt
//! and connections already open finish on the certificate they began with. A failed
//! renewal is logged at WARN with the expiry and retried with back-off; it never stops
//! the agent.

use std::sync::{Arc, RwLock};
use std::time::Duration as StdDuration;

use drover_protocol::api::{ErrorBody, RenewRequest, RenewResponse};
use drover_protocol::{HostId, Timestamp};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};
use tokio::sync::watch;
use x509_parser::prelude::FromDer as _;

use crate::state::StateDir;

/// When a certificate is valid: from `not_before` until `not_after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// The first second it is valid.
    pub not_before: Timestamp,
    /// The last second it is valid.
    pub not_after: Timestamp,
}

impl Validity {
    /// The validity of the first certificate in `pem`.
    pub fn of_pem(pem: &str) -> Result<Validity, String> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|error| format!("not a PEM certificate: {error}"))?;
        let (_, certificate) = x509_parser::certificate::X509Certificate::from_der(&der)
            .map_err(|error| format!("not an X.509 certificate: {error}"))?;
        Ok(Validity {
            not_before: Timestamp::from_unix(certificate.validity().not_before.timestamp()),
            not_after: Timestamp::from_unix(certificate.validity().not_after.timestamp()),
        })
    }

    /// When renewal becomes due: with a third of the lifetime left (the rule the
    /// coordinator applies to its own server certificate, defined once in the protocol).
    pub fn renewal_from(self) -> Timestamp {
        drover_protocol::api::renewal_due_at(self.not_before, self.not_after)
    }
}

/// Whether a certificate valid from `not_before` to `not_after` should be renewed at
/// `now`: once at most a third of its lifetime is left (or it has expired). A year's
/// certificate is renewed about four months before it expires; a 60-second one (the
/// shortest `drover serve` issues, which starts its validity up to a lifetime early for
/// clock skew) twenty seconds after issue. Pure.
pub fn renewal_due(not_before: Timestamp, not_after: Timestamp, now: Timestamp) -> bool {
    not_after <= not_before || now >= drover_protocol::api::renewal_due_at(not_before, not_after)
}

/// The client certificate and key every host connection presents; [`ClientIdentity::set`]
/// swaps in a renewed certificate for the handshakes that follow.
#[derive(Debug)]
pub struct ClientIdentity {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ClientIdentity {
    /// The identity from PEM texts; the certificate must be for the key.
    pub fn new(certificate_pem: &str, key_pem: &str) -> Result<ClientIdentity, String> {
        Ok(ClientIdentity {
            current: RwLock::new(certified_key(certificate_pem, key_pem)?),
        })
    }

    /// Presents `certificate_pem` (for `key_pem`) from the next handshake on.
    pub fn set(&self, certificate_pem: &str, key_pem: &str) -> Result<(), String> {
        let key = certified_key(certificate_pem, key_pem)?;
        *self.current.write().expect("identity lock") = key;
        Ok(())
    }
}

impl ResolvesClientCert for ClientIdentity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().expect("identity lock")))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and key, refused unless the certificate carries this key (a
/// certificate for another key would fail every handshake from then on).
fn certified_key(certificate_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("host certificate: {error}"))?;
    if chain.is_empty() {
        return Err("host certificate: no certificate in the PEM text".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|error| format!("host key: {error}"))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|error| format!("host key: {error}"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|error| format!("the host certificate is not for the host key ({error})"))?;
    Ok(Arc::new(certified))
}

/// The client configuration for the coordinator: trust the stored CA, present whatever
/// certificate `identity` holds at each handshake.
pub fn host_config(ca_pem: &str, identity: Arc<ClientIdentity>) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    crate::tls::add_ca(&mut roots, ca_pem)?;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_client_cert_resolver(identity))
}

/// A PEM CSR for the existing key `key_pem`, its common name the host id.
pub fn csr_for_key(host: &HostId, key_pem: &str) -> Result<String, String> {
    let failed = |error: rcgen::Error| format!("making the renewal request failed: {error}");
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(failed)?;
    let mut params = rcgen::CertificateParams::default();
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, host.as_str());
    params.distinguished_name = name;
    params.serialize_request(&key).map_err(failed)?.pem().map_err(failed)
}

/// What the renewal task needs.
#[derive(Debug)]
pub struct Renewer {
    /// Where renewals go: `/v1/agent/certificate` on the current coordinator.
    pub coordinators: Arc<crate::coordinators::Coordinators>,
    /// The host client (presents `identity`).
    pub client: reqwest::Client,
    /// The host id (the CSR's common name).
    pub host: HostId,
    /// The state directory (`identity/host.pem` is replaced).
    pub state: StateDir,
    /// The host key, PEM.
    pub key_pem: String,
    /// What connections present.
    pub identity: Arc<ClientIdentity>,
}

/// The first retry after a failed renewal; doubled up to [`RETRY_CAP`].
const RETRY_FIRST: StdDuration = StdDuration::from_secs(5);
/// The longest wait between failed renewals.
const RETRY_CAP: StdDuration = StdDuration::from_secs(600);
/// The longest sleep between looks at the certificate (the clock may jump).
const LOOK_CAP: StdDuration = StdDuration::from_secs(3600);

fn now() -> Timestamp {
    Timestamp::from_system(std::time::SystemTime::now())
}

impl Renewer {
    /// Renews the certificate whenever it is due, until `stop`. Never returns an error:
    /// failures are logged with the expiry and retried with back-off.
    pub async fn run(self, certificate_pem: String, mut stop: watch::Receiver<bool>) {
        let mut certificate_pem = certificate_pem;
        let mut failures = 0u32;
        loop {
            let wait = match Validity::of_pem(&certificate_pem) {
                Err(error) => {
                    tracing::warn!("the host certificate cannot be read ({error}); it is not renewed");
                    return;
                }
                Ok(validity) if renewal_due(validity.not_before, validity.not_after, now()) => {
                    match self.renew_once().await {
                        Ok(renewed) => {
                            failures = 0;
                            certificate_pem = renewed;
                            continue;
                        }
                        Err(error) => {
                            failures += 1;
                            let delay = crate::backoff::delay(failures, RETRY_CAP).max(RETRY_FIRST);
                            tracing::warn!(
                                "renewing the host certificate failed ({error}); it expires at {}, retrying in {:.0}s",
                                validity.not_after,
                                delay.as_secs_f64().ceil()
                            );
                            delay
                        }
                    }
                }
                Ok(validity) => {
                    let due = validity.renewal_from();
                    let seconds = u64::try_from(due.unix() - now().unix()).unwrap_or(0);
                    StdDuration::from_secs(seconds).clamp(StdDuration::from_secs(1), LOOK_CAP)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = crate::reporting::stopped(&mut stop) => return,
            }
        }
    }

    /// One renewal: CSR over the current key, the coordinator's answer checked (a
    /// certificate for this key), written atomically, then presented. Returns the new PEM.
    pub async fn renew_once(&self) -> Result<String, String> {
        let request = RenewRequest {
            csr_pem: csr_for_key(&self.host, &self.key_pem)?,
        };
        let attempt = self.coordinators.attempt("/v1/agent/certificate");
        let sent = self
            .client
            .post(&attempt.url)
            .json(&request)
            .timeout(StdDuration::from_secs(30))
            .send()
            .await;
        self.coordinators
            .observe(&attempt, sent.as_ref().map(reqwest::Response::status));
        let response =
            sent.map_err(|error| format!("cannot reach the coordinator: {}", crate::error::chain(&error)))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|error| {
            self.coordinators.observe(&attempt, Err(&error));
            format!("reading the answer: {}", crate::error::chain(&error))
        })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|error| error.error)
                .unwrap_or_default();
            return Err(format!("HTTP {status} {message}").trim().to_owned());
        }
        let renewed: RenewResponse =
            serde_json::from_slice(&body).map_err(|error| format!("unreadable answer: {error}"))?;
        // Checked before anything is written: a certificate for another key would cut the
        // host off at its next connection.
        certified_key(&renewed.certificate_pem, &self.key_pem)?;
        let validity = Validity::of_pem(&renewed.certificate_pem)?;
        if validity.not_after.unix() <= now().unix() {
            return Err(format!(
                "the coordinator answered a certificate that expired at {}",
                validity.not_after
            ));
        }
        self.state
            .save_certificate(&renewed.certificate_pem)
            .map_err(|error| format!("writing the renewed certificate failed: {error}"))?;
        self.identity.set(&renewed.certificate_pem, &self.key_pem)?;
        tracing::info!(
            "renewed the host certificate; the new one is valid until {}",
            validity.not_after
        );
        Ok(renewed.certificate_pem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    /// The manual clock: explicit instants either side of the two-thirds mark.
    #[test]
    fn renewal_is_due_once_less_than_a_third_of_the_lifetime_is_left() {
        // A year's certificate as `drover serve` issues it (a day of skew slack before): 366
        // days, due with under 122 days left, from 2027-07-28T12:00:00Z.
        let not_before = at("2026-11-26T12:00:00Z");
        let not_after = at("2027-11-27T12:00:00Z");
        assert!(
            !renewal_due(not_before, not_after, at("2026-11-27T12:00:00Z")),
            "just issued"
        );
        assert!(
            !renewal_due(not_before, not_after, at("2027-07-28T11:59:59Z")),
            "a third and a bit left"
        );
        assert!(
            renewal_due(not_before, not_after, at("2027-07-28T12:00:01Z")),
            "under a third left"
        );
        assert!(
            renewal_due(not_before, not_after, at("2027-11-27T12:00:01Z")),
            "expired"
        );
        assert!(
            renewal_due(not_before, not_after, at("2030-01-01T00:00:00Z")),
            "long expired"
        );

        // The shortest: 60 s with 60 s of slack, a 120 s lifetime; due with under 40 s left.
        let not_before = at("2026-11-27T11:59:00Z");
        let not_after = at("2026-11-27T12:01:00Z");
        assert!(!renewal_due(not_before, not_after, at("2026-11-27T12:00:19Z")));
        assert!(
            renewal_due(not_before, not_after, at("2026-11-27T12:00:20Z")),
            "exactly a third left: due from that second (protocol::api::renewal_due_at)"
        );
        assert!(renewal_due(not_before, not_after, at("2026-11-27T12:00:21Z")));
        assert_eq!(
            Validity { not_before, not_after }.renewal_from(),
            at("2026-11-27T12:00:20Z")
        );

        // A nonsense validity (ends before it begins) is always due.
        assert!(renewal_due(not_after, not_before, at("2026-11-27T11:00:00Z")));
    }

    #[test]
    fn a_renewed_certificate_for_another_key_is_refused_and_the_same_key_accepted() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let host: HostId = "web-01".parse().expect("host");
        let csr = csr_for_key(&host, &key.serialize_pem()).expect("csr");
        let request = rcgen::CertificateSigningRequestParams::from_pem(&csr).expect("parses");
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let certificate = request.signed_by(&issuer).expect("signed");
        let identity = ClientIdentity::new(&certificate.pem(), &key.serialize_pem()).expect("same key");
        let error = identity
            .set(&certificate.pem(), &other.serialize_pem())
            .expect_err("another key");
        assert!(error.contains("not for the host key"), "{error}");
        assert!(host_config(&ca.pem(), Arc::new(identity)).is_ok());
    }
}
