//! DSSE envelopes: the payload bytes and their type, signed over the pre-authentication
//! encoding (PAE), with threshold verification that counts distinct authorised keys.
//!
//! Signatures cover `PAE(payloadType, payload)`, so a signature made for one payload type
//! can never be replayed as another, and the payload is verified as opaque bytes before
//! anything parses it. See <https://github.com/secure-systems-lab/dsse>.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::error::{DocumentKind, Rejection};
use crate::keys::{PublicKey, SigningKey};
use crate::names::KeyId;

/// No legitimate document carries more signatures than this; more is refused before any
/// signature is checked, which bounds the CPU an attacker can make a host spend.
pub const MAX_SIGNATURES: usize = 32;

/// A DSSE envelope as it appears on the wire.
///
/// Unknown fields are refused: an envelope is exactly these three fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The media type of the payload; part of what is signed.
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// The payload, standard base64 with padding.
    pub payload: String,
    /// Signatures over `PAE(payloadType, payload)`.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One signature in an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// The signing key's id (hex sha256 of its public key).
    pub keyid: String,
    /// The ed25519 signature, standard base64.
    pub sig: String,
}

/// The DSSE v1 pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let header = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len());
    let mut message = Vec::with_capacity(header.len() + payload.len());
    message.extend_from_slice(header.as_bytes());
    message.extend_from_slice(payload);
    message
}

impl Envelope {
    /// Signs `payload` as `payload_type` with each key, in order.
    pub fn sign(payload_type: &str, payload: &[u8], keys: &[&SigningKey]) -> Envelope {
        let message = pae(payload_type, payload);
        Envelope {
            payload_type: payload_type.to_owned(),
            payload: BASE64.encode(payload),
            signatures: keys.iter().map(|key| signature_of(key, &message)).collect(),
        }
    }

    /// Appends `key`'s signature; a key that already signed is not added twice.
    pub fn add_signature(&mut self, key: &SigningKey) -> Result<(), base64::DecodeError> {
        if self
            .signatures
            .iter()
            .any(|existing| existing.keyid == key.key_id().as_str())
        {
            return Ok(());
        }
        let payload = BASE64.decode(&self.payload)?;
        self.signatures
            .push(signature_of(key, &pae(&self.payload_type, &payload)));
        Ok(())
    }

    /// The envelope as compact JSON, the form that is stored and sent.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope of strings always serializes")
    }

    /// Parses an envelope of `kind`, refusing anything over `limit` bytes before parsing.
    pub fn parse(bytes: &[u8], kind: DocumentKind, limit: usize) -> Result<Envelope, Rejection> {
        if bytes.len() > limit {
            return Err(Rejection::TooLarge {
                kind,
                size: bytes.len(),
                limit,
            });
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|error| Rejection::bad_encoding(kind, format!("not UTF-8 ({error})")))?;
        serde_json::from_str(text).map_err(|error| Rejection::bad_encoding(kind, error))
    }

    /// The decoded payload bytes.
    pub fn payload_bytes(&self, kind: DocumentKind) -> Result<Vec<u8>, Rejection> {
        BASE64
            .decode(&self.payload)
            .map_err(|error| Rejection::bad_encoding(kind, format!("payload is not standard base64: {error}")))
    }
}

fn signature_of(key: &SigningKey, message: &[u8]) -> EnvelopeSignature {
    EnvelopeSignature {
        keyid: key.key_id().to_string(),
        sig: BASE64.encode(key.sign(message)),
    }
}

/// A set of keys allowed to sign one kind of document, and how many must.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    name: &'static str,
    keys: BTreeMap<KeyId, PublicKey>,
    threshold: usize,
}

impl Role {
    /// A role; the caller has checked `1 <= threshold <= keys.len()` and distinct ids.
    pub(crate) fn new(name: &'static str, keys: Vec<PublicKey>, threshold: usize) -> Role {
        let keys = keys.into_iter().map(|key| (key.key_id().clone(), key)).collect();
        Role { name, keys, threshold }
    }

    /// The role's name ("root" or "manifest").
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The ids of the role's keys.
    pub fn key_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }

    /// How many distinct keys must sign.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Checks that at least `threshold` distinct keys of this role signed
    /// `PAE(envelope.payloadType, payload)`. A key's repeated signature counts once;
    /// signatures from other keys are ignored unless nothing else verified, in which
    /// case the rejection names them.
    pub fn verify(&self, envelope: &Envelope, payload: &[u8], kind: DocumentKind) -> Result<(), Rejection> {
        if envelope.signatures.len() > MAX_SIGNATURES {
            return Err(Rejection::TooManySignatures {
                kind,
                count: envelope.signatures.len(),
                limit: MAX_SIGNATURES,
            });
        }
        let message = pae(&envelope.payload_type, payload);
        let mut valid: BTreeSet<&KeyId> = BTreeSet::new();
        let mut first_invalid: Option<&KeyId> = None;
        let mut first_unknown: Option<&str> = None;
        for signature in &envelope.signatures {
            let Some((key_id, key)) = self.keys.get_key_value(signature.keyid.as_str()) else {
                first_unknown.get_or_insert(&signature.keyid);
                continue;
            };
            if valid.contains(key_id) {
                continue;
            }
            let verified = BASE64
                .decode(&signature.sig)
                .is_ok_and(|sig| key.verify(&message, &sig));
            if verified {
                valid.insert(key_id);
            } else {
                first_invalid.get_or_insert(key_id);
            }
        }
        if valid.len() >= self.threshold {
            return Ok(());
        }
        if let Some(key_id) = first_invalid {
            return Err(Rejection::InvalidSignature {
                kind,
                role: self.name,
                keyid: key_id.clone(),
            });
        }
        if let (true, Some(key_id)) = (valid.is_empty(), first_unknown) {
            let keyid = crate::error::one_line(&key_id.chars().take(80).collect::<String>());
            return Err(Rejection::UnknownKey {
                kind,
                role: self.name,
                keyid,
            });
        }
        Err(Rejection::BelowThreshold {
            kind,
            role: self.name,
            valid: valid.len(),
            threshold: self.threshold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_specification() {
        // The example from the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }
}
