//! The one function that decides whether a host may act on a manifest.
//!
//! [`accept`] is the only way to make a [`VerifiedManifest`], and the agent acts only on
//! verified manifests, so every check below happens before anything on a host changes.
//! The checks, in order (cheapest and least-trusting first):
//! 1. size, before parsing anything;
//! 2. the trust document has not expired (against the effective now, below);
//! 3. the envelope parses and has the manifest payload type;
//! 4. a threshold of distinct manifest keys signed `PAE(type, payload)`; the payload is
//!    opaque bytes until this passes;
//! 5. the schema version is known, then the payload parses strictly;
//! 6. it is for this host;
//! 7. its serial is greater than the last accepted one (replay / rollback);
//! 8. it has not expired against `max(now, last accepted issued_at)` (freeze);
//! 9. it was not issued further in the future than [`MAX_CLOCK_SKEW`].

use crate::dsse::Envelope;
use crate::error::{DocumentKind, Rejection};
use crate::manifest::{MANIFEST_PAYLOAD_TYPE, MANIFEST_SCHEMA, MAX_MANIFEST_BYTES, Manifest};
use crate::names::HostId;
use crate::time::{Duration, Timestamp};
use crate::trust::Trust;

/// How far ahead of the host's clock a manifest's issued-at may be.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

const KIND: DocumentKind = DocumentKind::Manifest;

/// What the host remembers of the last manifest it accepted; persisted before acting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastAccepted {
    /// Its serial.
    pub serial: u64,
    /// The newest issued-at ever accepted: time never goes back below it.
    pub issued_at: Timestamp,
}

/// A manifest that passed every check of [`accept`]. It cannot be made any other way.
#[derive(Clone, Debug)]
pub struct VerifiedManifest {
    manifest: Manifest,
    payload: Vec<u8>,
    envelope: Vec<u8>,
    last_accepted: LastAccepted,
}

impl VerifiedManifest {
    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The exact payload bytes that were signed.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The envelope bytes, for storing as the last accepted manifest.
    pub fn envelope(&self) -> &[u8] {
        &self.envelope
    }

    /// What to remember once this manifest is accepted (persist it before acting).
    pub fn last_accepted(&self) -> LastAccepted {
        self.last_accepted
    }
}

/// Decides whether `expected_host` may act on the manifest envelope `envelope_bytes`.
///
/// `last` is what the host persisted from the last manifest it accepted (`None` on its
/// first). `now` is the host's clock; this function never reads one.
pub fn accept(
    envelope_bytes: &[u8],
    trust: &Trust,
    expected_host: &HostId,
    last: Option<LastAccepted>,
    now: Timestamp,
) -> Result<VerifiedManifest, Rejection> {
    if envelope_bytes.len() > MAX_MANIFEST_BYTES {
        return Err(Rejection::TooLarge {
            kind: KIND,
            size: envelope_bytes.len(),
            limit: MAX_MANIFEST_BYTES,
        });
    }
    let effective_now = last.map_or(now, |last| now.max(last.issued_at));
    if trust.expires_at() <= effective_now {
        return Err(Rejection::Expired {
            kind: DocumentKind::Trust,
            expires_at: trust.expires_at(),
            effective_now,
        });
    }

    let envelope = Envelope::parse(envelope_bytes, KIND, MAX_MANIFEST_BYTES)?;
    if envelope.payload_type != MANIFEST_PAYLOAD_TYPE {
        return Err(Rejection::UnknownPayloadType {
            kind: KIND,
            expected: MANIFEST_PAYLOAD_TYPE,
            found: envelope.payload_type.chars().take(80).collect(),
        });
    }
    let payload = envelope.payload_bytes(KIND)?;
    trust.manifest().verify(&envelope, &payload, KIND)?;

    let schema = crate::peek_schema(&payload, KIND)?;
    if schema != u64::from(MANIFEST_SCHEMA) {
        return Err(Rejection::UnknownSchema {
            kind: KIND,
            schema,
            known: MANIFEST_SCHEMA,
        });
    }
    let manifest: Manifest = serde_json::from_slice(&payload).map_err(|error| Rejection::bad_payload(KIND, error))?;
    manifest
        .check()
        .map_err(|detail| Rejection::bad_payload(KIND, detail))?;

    if &manifest.host != expected_host {
        return Err(Rejection::WrongHost {
            expected: expected_host.clone(),
            found: manifest.host.to_string(),
        });
    }
    if let Some(last) = last
        && manifest.serial <= last.serial
    {
        return Err(Rejection::Replay {
            serial: manifest.serial,
            last_accepted: last.serial,
        });
    }
    if manifest.expires_at <= effective_now {
        return Err(Rejection::Expired {
            kind: KIND,
            expires_at: manifest.expires_at,
            effective_now,
        });
    }
    if manifest.issued_at > now.plus(MAX_CLOCK_SKEW) {
        return Err(Rejection::IssuedInFuture {
            issued_at: manifest.issued_at,
            now,
            skew: MAX_CLOCK_SKEW,
        });
    }

    let last_accepted = LastAccepted {
        serial: manifest.serial,
        issued_at: last.map_or(manifest.issued_at, |last| last.issued_at.max(manifest.issued_at)),
    };
    Ok(VerifiedManifest {
        manifest,
        payload,
        envelope: envelope_bytes.to_vec(),
        last_accepted,
    })
}
