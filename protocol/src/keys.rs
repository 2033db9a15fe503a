//! Ed25519 signing and public keys (through `ring`), their ids, and PKCS#8 encoding.
//!
//! A key id is the lowercase hex sha256 of the raw 32-byte public key, so anyone holding
//! the public key can recompute it and no two keys share an id. Private keys are PKCS#8,
//! written as PEM (`-----BEGIN PRIVATE KEY-----`) so that `openssl pkey` can read them;
//! DER is accepted too.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::rand::SecureRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::names::KeyId;

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// An ed25519 private key that can sign.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    key_id: KeyId,
}

impl std::fmt::Debug for SigningKey {
    /// Shows the key id only, never key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("key_id", &self.key_id).finish()
    }
}

/// Why bytes are not a usable private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyParseError(pub String);

impl SigningKey {
    /// Generates a new key; returns it with its PKCS#8 PEM encoding, for storing.
    pub fn generate(rng: &dyn SecureRandom) -> Option<(SigningKey, String)> {
        let document = Ed25519KeyPair::generate_pkcs8(rng).ok()?;
        let key = SigningKey::from_pkcs8_der(document.as_ref()).ok()?;
        Some((key, pem_encode(document.as_ref())))
    }

    /// Reads a PKCS#8 private key, PEM or DER.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<SigningKey, KeyParseError> {
        match std::str::from_utf8(bytes) {
            Ok(text) if text.trim_start().starts_with(PEM_BEGIN) => SigningKey::from_pkcs8_der(&pem_decode(text)?),
            _ => SigningKey::from_pkcs8_der(bytes),
        }
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, KeyParseError> {
        // `maybe_unchecked` also takes PKCS#8 v1 files (no embedded public key), which is
        // what `openssl genpkey -algorithm ed25519` writes.
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|error| KeyParseError(error.to_string()))?;
        let key_id = KeyId::of_public_key(pair.public_key().as_ref());
        Ok(SigningKey { pair, key_id })
    }

    /// The key's id.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_raw(self.pair.public_key().as_ref()).expect("ring's ed25519 public keys are 32 bytes")
    }

    /// Signs `message` (for envelopes: the DSSE pre-authentication encoding).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

fn pem_encode(der: &[u8]) -> String {
    let body = BASE64.encode(der);
    let mut pem = String::from(PEM_BEGIN);
    pem.push('\n');
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    pem
}

fn pem_decode(text: &str) -> Result<Vec<u8>, KeyParseError> {
    let body = text
        .trim()
        .strip_prefix(PEM_BEGIN)
        .and_then(|rest| rest.strip_suffix(PEM_END))
        .ok_or_else(|| KeyParseError(format!("expected one {PEM_BEGIN} block")))?;
    let joined: String = body.split_whitespace().collect();
    BASE64
        .decode(joined)
        .map_err(|error| KeyParseError(format!("bad base64 in PEM: {error}")))
}

/// Signature schemes a trust document may name. Only ed25519 exists today; the field
/// is there so that adding one is a schema change, not a guess.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyScheme {
    /// Ed25519 (RFC 8032).
    Ed25519,
}

/// An ed25519 public key with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    raw: [u8; 32],
    key_id: KeyId,
}

impl PublicKey {
    /// A public key from its 32 raw bytes.
    pub fn from_raw(raw: &[u8]) -> Option<PublicKey> {
        let raw: [u8; 32] = raw.try_into().ok()?;
        Some(PublicKey {
            raw,
            key_id: KeyId::of_public_key(&raw),
        })
    }

    /// The key's id.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The raw 32 bytes, lowercase hex.
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.raw)
    }

    /// True when `signature` is this key's valid signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(message, signature)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    #[test]
    fn generated_keys_round_trip_through_pem_and_sign() {
        let (key, pem) = SigningKey::generate(&SystemRandom::new()).expect("random source");
        assert!(pem.starts_with(PEM_BEGIN));
        let again = SigningKey::from_pkcs8(pem.as_bytes()).expect("own PEM parses");
        assert_eq!(again.key_id(), key.key_id());
        let signature = key.sign(b"message");
        assert!(again.public_key().verify(b"message", &signature));
        assert!(!again.public_key().verify(b"massage", &signature));
    }

    #[test]
    fn key_id_is_sha256_of_the_raw_public_key() {
        let public = PublicKey::from_raw(&[7u8; 32]).expect("32 bytes");
        let expected = crate::hex::encode(ring::digest::digest(&ring::digest::SHA256, &[7u8; 32]).as_ref());
        assert_eq!(public.key_id().as_str(), expected);
        assert!(PublicKey::from_raw(&[7u8; 31]).is_none());
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert!(SigningKey::from_pkcs8(b"not a key").is_err());
        assert!(SigningKey::from_pkcs8(format!("{PEM_BEGIN}\n!!!!\n{PEM_END}\n").as_bytes()).is_err());
        assert!(SigningKey::from_pkcs8(&[0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
    }
}
