//! Trust documents: which keys may sign manifests, which keys may change that, and how
//! a host moves from one trust document to the next (rotation).
//!
//! A trust document is a DSSE envelope of type [`TRUST_PAYLOAD_TYPE`] whose payload is a
//! [`TrustDocument`]. The first one a host gets arrives over the enrollment channel (the
//! CA pinned by hash) and must be signed by a threshold of its own root keys. After that a
//! new document is accepted only when
//! - a threshold of the *current* root keys signed it (authority comes from what the host
//!   already trusts),
//! - a threshold of its *own* root keys signed it too (the new keys are proven usable, so a
//!   typo cannot lock the fleet out), and
//! - its version is higher than the current one (no rollback to a compromised set).
//!
//! Intermediate documents of a rotation chain may have expired; the last must not.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::dsse::{Envelope, Role};
use crate::error::{DocumentKind, PublicKeyError, Rejection};
use crate::keys::{KeyScheme, PublicKey, SigningKey};
use crate::names::KeyId;
use crate::time::Timestamp;

/// The payload type of trust document envelopes.
pub const TRUST_PAYLOAD_TYPE: &str = "application/vnd.drover.trust+json";
/// The trust document schema this build understands.
pub const TRUST_SCHEMA: u32 = 1;
/// Largest trust envelope accepted, checked before parsing.
pub const MAX_TRUST_BYTES: usize = 64 * 1024;
/// Most keys one role may list.
pub const MAX_KEYS_PER_ROLE: usize = 16;
/// Most documents one rotation walk applies; a longer chain is refused.
pub const MAX_ROTATION_CHAIN: usize = 32;

const KIND: DocumentKind = DocumentKind::Trust;

/// The trust document payload. Unknown fields are refused (see ARCHITECTURE.md: a field
/// an old agent silently ignored could be one that restricts what it may do).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustDocument {
    /// Always [`TRUST_SCHEMA`].
    pub schema: u32,
    /// Increases with every rotation.
    pub version: u64,
    /// After this instant the document, and every manifest verified with it, is refused.
    pub expires_at: Timestamp,
    /// Keys that sign trust documents.
    pub root: RoleKeys,
    /// Keys that sign manifests.
    pub manifest: RoleKeys,
}

/// The keys of a role and how many of them must sign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleKeys {
    /// How many distinct keys must sign; at least 1, at most the number of keys.
    pub threshold: u32,
    /// The public keys.
    pub keys: Vec<TrustKey>,
}

/// A public key as listed in a trust document. The id must equal the sha256 of the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustKey {
    /// Hex sha256 of the raw public key.
    pub keyid: KeyId,
    /// The signature scheme.
    pub scheme: KeyScheme,
    /// The raw public key, lowercase hex.
    pub public: String,
}

impl TrustKey {
    /// The listing of a public key.
    pub fn of(key: &PublicKey) -> TrustKey {
        TrustKey {
            keyid: key.key_id().clone(),
            scheme: KeyScheme::Ed25519,
            public: key.to_hex(),
        }
    }
}

impl RoleKeys {
    /// A role listing of these keys with this threshold.
    pub fn of(keys: &[PublicKey], threshold: u32) -> RoleKeys {
        RoleKeys {
            threshold,
            keys: keys.iter().map(TrustKey::of).collect(),
        }
    }

    fn to_role(&self, name: &'static str) -> Result<Role, String> {
        if self.keys.is_empty() || self.keys.len() > MAX_KEYS_PER_ROLE {
            return Err(format!(
                "{name} role lists {} keys; 1 to {MAX_KEYS_PER_ROLE} allowed",
                self.keys.len()
            ));
        }
        let threshold = usize::try_from(self.threshold).unwrap_or(usize::MAX);
        if threshold == 0 || threshold > self.keys.len() {
            return Err(format!(
                "{name} role threshold {} must be between 1 and its {} keys",
                self.threshold,
                self.keys.len()
            ));
        }
        let mut seen = BTreeSet::new();
        let mut keys = Vec::with_capacity(self.keys.len());
        for listed in &self.keys {
            let not_hex = || {
                format!(
                    "{name} key {}: public key is not 32 bytes of lowercase hex",
                    listed.keyid
                )
            };
            let raw = crate::hex::decode(&listed.public).ok_or_else(not_hex)?;
            // A weak key (small order, or a second spelling of a point) is refused before
            // its id counts toward any threshold.
            let key = PublicKey::from_raw(&raw).map_err(|error| match error {
                PublicKeyError::Length(_) => not_hex(),
                weak => format!("{name} key {}: public key refused: {weak}", listed.keyid),
            })?;
            if key.key_id() != &listed.keyid {
                return Err(format!(
                    "{name} key {}: key id is not the sha256 of the public key",
                    listed.keyid
                ));
            }
            if !seen.insert(listed.keyid.clone()) {
                return Err(format!("{name} key {} is listed twice", listed.keyid));
            }
            keys.push(key);
        }
        Ok(Role::new(name, keys, threshold))
    }
}

impl TrustDocument {
    /// The payload bytes to sign.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a trust document always serializes")
    }

    /// Signs this document with root keys into an envelope (JSON bytes).
    pub fn sign(&self, root_keys: &[&SigningKey]) -> Vec<u8> {
        Envelope::sign(TRUST_PAYLOAD_TYPE, &self.to_payload(), root_keys).to_json()
    }
}

/// A trust document whose signatures and structure have been verified. Only
/// [`Trust::bootstrap`] and [`Trust::rotate`] make one.
#[derive(Clone, Debug)]
pub struct Trust {
    document: TrustDocument,
    root: Role,
    manifest: Role,
    envelope: Vec<u8>,
}

impl Trust {
    /// Accepts a first trust document from a trusted channel: it must be well formed,
    /// signed by a threshold of its own root keys, and not expired at `now`.
    pub fn bootstrap(envelope_bytes: &[u8], now: Timestamp) -> Result<Trust, Rejection> {
        let (envelope, payload) = open_envelope(envelope_bytes)?;
        let candidate = parse_document(&payload)?;
        candidate.root.verify(&envelope, &payload, KIND)?;
        check_not_expired(&candidate.document, now)?;
        Ok(Trust {
            envelope: envelope_bytes.to_vec(),
            ..candidate
        })
    }

    /// Moves to a new trust document (see the module docs for the rules).
    pub fn rotate(&self, envelope_bytes: &[u8], now: Timestamp) -> Result<Trust, Rejection> {
        self.rotate_chain(&[envelope_bytes], now)
    }

    /// Walks a chain of rotations in order, each checked against the one before it.
    /// Intermediate documents may have expired; the final one must be valid at `now`.
    pub fn rotate_chain(&self, chain: &[&[u8]], now: Timestamp) -> Result<Trust, Rejection> {
        if chain.len() > MAX_ROTATION_CHAIN {
            return Err(Rejection::RotationChainTooLong {
                length: chain.len(),
                limit: MAX_ROTATION_CHAIN,
            });
        }
        let mut current = self.clone();
        for envelope_bytes in chain {
            current = current.rotate_one(envelope_bytes)?;
        }
        check_not_expired(&current.document, now)?;
        Ok(current)
    }

    fn rotate_one(&self, envelope_bytes: &[u8]) -> Result<Trust, Rejection> {
        let (envelope, payload) = open_envelope(envelope_bytes)?;
        // Authority first: nothing about the new document is believed until the keys
        // the host already trusts have vouched for these exact bytes.
        self.root.verify(&envelope, &payload, KIND)?;
        let candidate = parse_document(&payload)?;
        candidate
            .root
            .verify(&envelope, &payload, KIND)
            .map_err(|rejection| match rejection {
                Rejection::BelowThreshold { valid, threshold, .. } => Rejection::BelowThreshold {
                    kind: KIND,
                    role: "new root",
                    valid,
                    threshold,
                },
                Rejection::UnknownKey { keyid, .. } => Rejection::UnknownKey {
                    kind: KIND,
                    role: "new root",
                    keyid,
                },
                Rejection::InvalidSignature { keyid, .. } => Rejection::InvalidSignature {
                    kind: KIND,
                    role: "new root",
                    keyid,
                },
                other => other,
            })?;
        if candidate.document.version <= self.document.version {
            return Err(Rejection::TrustVersionNotIncreasing {
                current: self.document.version,
                proposed: candidate.document.version,
            });
        }
        Ok(Trust {
            envelope: envelope_bytes.to_vec(),
            ..candidate
        })
    }

    /// The verified document.
    pub fn document(&self) -> &TrustDocument {
        &self.document
    }

    /// The document's version.
    pub fn version(&self) -> u64 {
        self.document.version
    }

    /// When the document expires.
    pub fn expires_at(&self) -> Timestamp {
        self.document.expires_at
    }

    /// The keys that may sign trust documents.
    pub fn root(&self) -> &Role {
        &self.root
    }

    /// The keys that may sign manifests.
    pub fn manifest(&self) -> &Role {
        &self.manifest
    }

    /// The envelope bytes this trust was verified from, for storing as-is.
    pub fn envelope_bytes(&self) -> &[u8] {
        &self.envelope
    }

    /// True when `key_id` is a manifest-signing key.
    pub fn is_manifest_key(&self, key_id: &KeyId) -> bool {
        self.manifest.key_ids().any(|id| id == key_id)
    }
}

fn open_envelope(bytes: &[u8]) -> Result<(Envelope, Vec<u8>), Rejection> {
    let envelope = Envelope::parse(bytes, KIND, MAX_TRUST_BYTES)?;
    if envelope.payload_type != TRUST_PAYLOAD_TYPE {
        return Err(Rejection::UnknownPayloadType {
            kind: KIND,
            expected: TRUST_PAYLOAD_TYPE,
            found: envelope.payload_type.chars().take(80).collect(),
        });
    }
    let payload = envelope.payload_bytes(KIND)?;
    Ok((envelope, payload))
}

/// Parses and checks a trust payload; returns it as a `Trust` without an envelope yet.
fn parse_document(payload: &[u8]) -> Result<Trust, Rejection> {
    let schema = crate::peek_schema(payload, KIND)?;
    if schema != u64::from(TRUST_SCHEMA) {
        return Err(Rejection::UnknownSchema {
            kind: KIND,
            schema,
            known: TRUST_SCHEMA,
        });
    }
    let document: TrustDocument =
        serde_json::from_slice(payload).map_err(|error| Rejection::bad_payload(KIND, error))?;
    let bad = |detail: String| Rejection::bad_payload(KIND, detail);
    let root = document.root.to_role("root").map_err(bad)?;
    let manifest = document.manifest.to_role("manifest").map_err(bad)?;
    // The manifest key lives online on the coordinator; if it could also sign trust
    // documents, stealing it would hand over the whole trust model.
    if let Some(shared) = manifest
        .key_ids()
        .find(|id| root.key_ids().any(|root_id| root_id == *id))
    {
        return Err(bad(format!(
            "key {shared} is both a root key and a manifest key; the online manifest key must not be able to change trust"
        )));
    }
    Ok(Trust {
        document,
        root,
        manifest,
        envelope: Vec::new(),
    })
}

fn check_not_expired(document: &TrustDocument, effective_now: Timestamp) -> Result<(), Rejection> {
    if document.expires_at <= effective_now {
        return Err(Rejection::Expired {
            kind: KIND,
            expires_at: document.expires_at,
            effective_now,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;

    use crate::dsse::EnvelopeSignature;

    /// A listing of raw 32 bytes as a key, bypassing [`PublicKey::from_raw`] (as a hostile
    /// or mistaken document would).
    fn listed(raw: &[u8; 32]) -> TrustKey {
        TrustKey {
            keyid: KeyId::of_public_key(raw),
            scheme: KeyScheme::Ed25519,
            public: crate::hex::encode(raw),
        }
    }

    /// A document whose root role is `roots` with threshold 2, and an envelope carrying the
    /// signature (R = the neutral point, S = 0) for each of them: no private key involved.
    fn forged_with_roots(roots: &[[u8; 32]]) -> Vec<u8> {
        let manifest_key = SigningKey::generate(&ring::rand::SystemRandom::new())
            .expect("random source")
            .0;
        let document = TrustDocument {
            schema: TRUST_SCHEMA,
            version: 1,
            expires_at: Timestamp::from_unix(2_000_000_000),
            root: RoleKeys {
                threshold: 2,
                keys: roots.iter().map(listed).collect(),
            },
            manifest: RoleKeys::of(&[manifest_key.public_key()], 1),
        };
        let mut neutral = [0u8; 64];
        neutral[0] = 1;
        let signatures = roots
            .iter()
            .map(|raw| EnvelopeSignature {
                keyid: KeyId::of_public_key(raw).to_string(),
                sig: BASE64.encode(neutral),
            })
            .collect();
        Envelope {
            payload_type: TRUST_PAYLOAD_TYPE.to_owned(),
            payload: BASE64.encode(document.to_payload()),
            signatures,
        }
        .to_json()
    }

    #[test]
    fn a_trust_document_listing_the_neutral_point_twice_is_refused() {
        // The neutral point (0, 1): canonically y = 1; again as y = p + 1 and with the sign
        // bit set on x = 0. Three spellings, three key ids, one point.
        let mut canonical = [0u8; 32];
        canonical[0] = 1;
        let mut y_plus_p = [0xffu8; 32];
        y_plus_p[0] = 0xee;
        y_plus_p[31] = 0x7f;
        let mut signed_zero = canonical;
        signed_zero[31] = 0x80;
        let now = Timestamp::from_unix(1_900_000_000);
        for pair in [[canonical, y_plus_p], [canonical, signed_zero], [y_plus_p, signed_zero]] {
            let rejection = Trust::bootstrap(&forged_with_roots(&pair), now).expect_err(
                "two spellings of the neutral point and one constant signature must not meet a threshold of 2",
            );
            let message = rejection.to_string();
            assert!(
                matches!(rejection, Rejection::BadPayload { .. }) && message.contains("public key refused"),
                "{message}"
            );
        }
        // A rotation to such a document is refused the same way, whoever signed it.
        let root = SigningKey::generate(&ring::rand::SystemRandom::new())
            .expect("random source")
            .0;
        let manifest_key = SigningKey::generate(&ring::rand::SystemRandom::new())
            .expect("random source")
            .0;
        let first = TrustDocument {
            schema: TRUST_SCHEMA,
            version: 1,
            expires_at: Timestamp::from_unix(2_000_000_000),
            root: RoleKeys::of(&[root.public_key()], 1),
            manifest: RoleKeys::of(&[manifest_key.public_key()], 1),
        };
        let trust = Trust::bootstrap(&first.sign(&[&root]), now).expect("a real trust document");
        let mut next = first.clone();
        next.version = 2;
        next.manifest.keys.push(listed(&canonical));
        let rejection = trust
            .rotate(&next.sign(&[&root]), now)
            .expect_err("a small-order manifest key is refused in a rotation");
        assert!(rejection.to_string().contains("small-order"), "{rejection}");
    }
}
