//! Ed25519 signing and public keys (through `ring`), their ids, and PKCS#8 encoding.
//!
//! A key id is the lowercase hex sha256 of the raw 32-byte public key, so anyone holding
//! the public key can recompute it and no two keys share an id. Private keys are PKCS#8,
//! written as PEM (`-----BEGIN PRIVATE KEY-----`) so that `openssl pkey` can read them;
//! DER is accepted too.
//!
//! Public keys are checked where they enter ([`PublicKey::from_raw`]): a non-canonical
//! encoding or a point of small order is refused. ring verifies signatures under such
//! keys as RFC 8032 allows, so the neutral point, listed under two encodings, would be two
//! keys with two ids that both accept one constant signature for any message; a trust
//! document listing it would meet a threshold of 2 with no private key at all. Generated
//! keys are never like that, so nothing legitimate is refused.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::rand::SecureRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::error::PublicKeyError;
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
        PublicKey::from_raw(self.pair.public_key().as_ref())
            .expect("ring derives canonical public keys of full order (clamped scalar times the base point)")
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
    /// A public key from its 32 raw bytes (RFC 8032 section 5.1.2: y little-endian, the
    /// top bit is the sign of x). Refused: another length, an encoding that is not the
    /// point's canonical one, and the 8 points of small order (see the module docs).
    pub fn from_raw(raw: &[u8]) -> Result<PublicKey, PublicKeyError> {
        let raw: [u8; 32] = raw.try_into().map_err(|_| PublicKeyError::Length(raw.len()))?;
        check_encoding(&raw)?;
        Ok(PublicKey {
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

/// The field prime p = 2^255 - 19, little-endian.
const FIELD_PRIME: [u8; 32] = {
    let mut p = [0xff; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    p
};

/// The y-coordinates of the 8 points of order dividing 8 (the curve's torsion subgroup),
/// little-endian with the sign bit clear; each y stands for the point and its negation:
/// - 0: the two points of order 4, (+-sqrt(-1), 0);
/// - 1: the neutral point (0, 1), order 1;
/// - p - 1: (0, -1), order 2;
/// - the two y-values of the four points of order 8.
///
/// The same values as libsodium's `has_small_order` blocklist (crypto_core/ed25519/ref10),
/// which ignores the sign bit the same way (its two further entries, p and p + 1, are
/// non-canonical spellings of 0 and 1, refused here as non-canonical). They were computed
/// again for this file from p and d (the points [L]P for points P on the curve, L the
/// prime order of the base point, all of order 1, 2, 4 or 8), and
/// `small_order_public_keys_are_refused` checks with ring that under each of the 8
/// encodings the constant signature (R = neutral point, S = 0) verifies for some of 256
/// messages, which a point of large order practically never allows.
const SMALL_ORDER_Y: [[u8; 32]; 5] = [
    [0; 32],
    {
        let mut one = [0; 32];
        one[0] = 1;
        one
    },
    {
        let mut minus_one = FIELD_PRIME;
        minus_one[0] = 0xec;
        minus_one
    },
    // y = 2707385501144840649318225287225658788936804267575313519463743609750303402022
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0, 0xd5, 0xdf,
        0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05,
    ],
    // y = 55188659117513257062467267217118295137698188065244968500265048394206261417927
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f, 0x2a, 0x20,
        0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a,
    ],
];

/// Checks the 32-byte encoding of a point without decompressing it (ring does not expose
/// that): canonical (y below p; x = 0, which only y = 1 and y = p - 1 have, with a clear
/// sign bit) and not of small order. Public keys are public, so this need not be constant
/// time.
fn check_encoding(raw: &[u8; 32]) -> Result<(), PublicKeyError> {
    let mut y = *raw;
    y[31] &= 0x7f;
    let sign_of_x = raw[31] & 0x80 != 0;
    // Little-endian: compare from the most significant byte down.
    let y_below_p = y.iter().rev().cmp(FIELD_PRIME.iter().rev()).is_lt();
    let x_is_zero = y == SMALL_ORDER_Y[1] || y == SMALL_ORDER_Y[2];
    if !y_below_p || (x_is_zero && sign_of_x) {
        return Err(PublicKeyError::NonCanonical);
    }
    if SMALL_ORDER_Y.contains(&y) {
        return Err(PublicKeyError::SmallOrder);
    }
    Ok(())
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
        assert_eq!(PublicKey::from_raw(&[7u8; 31]), Err(PublicKeyError::Length(31)));
    }

    /// The 8 canonical encodings of the points of small order: each y of
    /// [`SMALL_ORDER_Y`] with a clear sign bit, and with a set one where x is not zero.
    fn small_order_encodings() -> Vec<[u8; 32]> {
        let mut encodings = Vec::new();
        for (index, y) in SMALL_ORDER_Y.iter().enumerate() {
            encodings.push(*y);
            if index != 1 && index != 2 {
                let mut negated = *y;
                negated[31] |= 0x80;
                encodings.push(negated);
            }
        }
        encodings
    }

    /// The signature (R, S = 0): under a key A it verifies when R = -[k]A, k the hash of
    /// R, A and the message.
    fn constant_signature(r: &[u8; 32]) -> [u8; 64] {
        let mut signature = [0; 64];
        signature[..32].copy_from_slice(r);
        signature
    }

    #[test]
    fn small_order_public_keys_are_refused() {
        let encodings = small_order_encodings();
        assert_eq!(encodings.len(), 8);
        for encoding in &encodings {
            assert_eq!(
                PublicKey::from_raw(encoding),
                Err(PublicKeyError::SmallOrder),
                "{}",
                crate::hex::encode(encoding)
            );
            // What makes them weak, checked with ring itself (which also shows ring
            // decodes each as a point, and one of order dividing 8): the signature
            // (R = neutral point, S = 0) verifies whenever [k]A is neutral, k the message's
            // hash, which is every message for the neutral point and about one in 8 for the
            // others; for a real key, never (`generated_public_keys_are_all_accepted`).
            let forged = (0..256u32)
                .filter(|message| {
                    UnparsedPublicKey::new(&ED25519, encoding)
                        .verify(&message.to_be_bytes(), &constant_signature(&SMALL_ORDER_Y[1]))
                        .is_ok()
                })
                .count();
            assert!(forged > 0, "{}", crate::hex::encode(encoding));
            if encoding == &SMALL_ORDER_Y[1] {
                assert_eq!(forged, 256);
            }
        }
    }

    #[test]
    fn non_canonical_public_keys_are_refused() {
        let mut refused = 0;
        // y from p to 2^255 - 1 (19 values), with either sign of x.
        for low in 0xed..=0xff_u8 {
            for sign in [0, 0x80] {
                let mut encoding = FIELD_PRIME;
                encoding[0] = low;
                encoding[31] |= sign;
                assert_eq!(
                    PublicKey::from_raw(&encoding),
                    Err(PublicKeyError::NonCanonical),
                    "{}",
                    crate::hex::encode(&encoding)
                );
                refused += 1;
            }
        }
        // x = 0 with the sign bit set: (0, 1) and (0, -1) spelled a second way.
        for y in [SMALL_ORDER_Y[1], SMALL_ORDER_Y[2]] {
            let mut encoding = y;
            encoding[31] |= 0x80;
            assert_eq!(PublicKey::from_raw(&encoding), Err(PublicKeyError::NonCanonical));
            refused += 1;
        }
        assert_eq!(refused, 40);
        // The largest canonical y, p - 1, is refused only for its small order; one below it
        // is an ordinary encoding.
        let mut below = FIELD_PRIME;
        below[0] = 0xeb;
        assert!(PublicKey::from_raw(&below).is_ok());
        // The neutral point spelled as y = p + 1 verifies the constant signature like the
        // canonical spelling does: this is the second key id of the attack.
        let mut identity_again = FIELD_PRIME;
        identity_again[0] = 0xee;
        let identity_signature = constant_signature(&SMALL_ORDER_Y[1]);
        for encoding in [SMALL_ORDER_Y[1], identity_again] {
            assert!(
                UnparsedPublicKey::new(&ED25519, &encoding)
                    .verify(b"any message", &identity_signature)
                    .is_ok()
            );
        }
    }

    #[test]
    fn generated_public_keys_are_all_accepted() {
        let rng = SystemRandom::new();
        for _ in 0..500 {
            let (key, _) = SigningKey::generate(&rng).expect("random source");
            let raw = key.pair.public_key().as_ref();
            let public = PublicKey::from_raw(raw).expect("a generated key is accepted");
            assert_eq!(public.key_id(), key.key_id());
            assert!(
                !(0..8u32).any(|message| public.verify(&message.to_be_bytes(), &constant_signature(&SMALL_ORDER_Y[1])))
            );
        }
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert!(SigningKey::from_pkcs8(b"not a key").is_err());
        assert!(SigningKey::from_pkcs8(format!("{PEM_BEGIN}\n!!!!\n{PEM_END}\n").as_bytes()).is_err());
        assert!(SigningKey::from_pkcs8(&[0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
    }
}
