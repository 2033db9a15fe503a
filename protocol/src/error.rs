//! Errors of the protocol crate: why a name, a key or a signed document was refused.

use std::path::PathBuf;

use thiserror::Error;

use crate::names::{HostId, KeyId};
use crate::time::{Duration, Timestamp};

/// Which signed document a [`Rejection`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    /// A per-host desired-state manifest.
    Manifest,
    /// A trust document (root and manifest keys).
    Trust,
}

impl std::fmt::Display for DocumentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DocumentKind::Manifest => "manifest",
            DocumentKind::Trust => "trust document",
        })
    }
}

/// Why a signed document was not accepted. Every variant's message is one line that
/// says what was wrong; a rejected document changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejection {
    /// The envelope is larger than the limit; it was not parsed at all.
    #[error("{kind} rejected: {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        kind: DocumentKind,
        size: usize,
        limit: usize,
    },
    /// The bytes are not a well-formed DSSE envelope (UTF-8 JSON with base64 fields).
    #[error("{kind} rejected: not a valid signed envelope: {detail}")]
    BadEncoding { kind: DocumentKind, detail: String },
    /// The envelope's payloadType is not the one this document must have.
    #[error("{kind} rejected: payload type {found:?} is not {expected:?}")]
    UnknownPayloadType {
        kind: DocumentKind,
        expected: &'static str,
        found: String,
    },
    /// More signatures than any legitimate document carries; refused before verifying.
    #[error("{kind} rejected: {count} signatures is over the limit of {limit}")]
    TooManySignatures {
        kind: DocumentKind,
        count: usize,
        limit: usize,
    },
    /// No signature came from a key authorised for this document; one came from this key
    /// (the id as the envelope claims it, escaped and shortened).
    #[error("{kind} rejected: signed by key {keyid}, which is not an authorised {role} key")]
    UnknownKey {
        kind: DocumentKind,
        role: &'static str,
        keyid: String,
    },
    /// A signature claims an authorised key but does not verify: forged or altered.
    #[error("{kind} rejected: the signature of {role} key {keyid} does not verify (forged or altered document)")]
    InvalidSignature {
        kind: DocumentKind,
        role: &'static str,
        keyid: KeyId,
    },
    /// Fewer distinct authorised keys signed than the threshold requires.
    #[error("{kind} rejected: {valid} valid {role} signature(s) from distinct keys, {threshold} required")]
    BelowThreshold {
        kind: DocumentKind,
        role: &'static str,
        valid: usize,
        threshold: usize,
    },
    /// The payload declares a schema version this build does not know.
    #[error("{kind} rejected: unknown schema version {schema} (this build knows {known}); upgrade the agent")]
    UnknownSchema {
        kind: DocumentKind,
        schema: u64,
        known: u32,
    },
    /// The payload is signed but not a valid document of its schema.
    #[error("{kind} rejected: invalid payload: {detail}")]
    BadPayload { kind: DocumentKind, detail: String },
    /// The manifest is for another host.
    #[error("manifest rejected: it is for host {found:?}, this host is {expected}")]
    WrongHost { expected: HostId, found: String },
    /// The serial is not greater than the last accepted one: a replay or rollback.
    #[error(
        "manifest rejected: serial {serial} is not greater than the last accepted serial {last_accepted} (replayed or rolled-back manifest)"
    )]
    Replay { serial: u64, last_accepted: u64 },
    /// The document expired. `effective_now` is the later of the clock and the newest
    /// issued-at ever accepted, so a frozen feed cannot outlive its expiry.
    #[error("{kind} rejected: expired at {expires_at} (now is {effective_now})")]
    Expired {
        kind: DocumentKind,
        expires_at: Timestamp,
        effective_now: Timestamp,
    },
    /// The manifest was issued further in the future than the allowed clock skew.
    #[error("manifest rejected: issued at {issued_at}, more than {skew} after now ({now}); check the clocks")]
    IssuedInFuture {
        issued_at: Timestamp,
        now: Timestamp,
        skew: Duration,
    },
    /// A new trust document does not have a higher version than the current one.
    #[error("trust document rejected: version {proposed} is not higher than the current version {current}")]
    TrustVersionNotIncreasing { current: u64, proposed: u64 },
    /// A chain of trust rotations is longer than the bound.
    #[error("trust document rejected: rotation chain of {length} documents is over the limit of {limit}")]
    RotationChainTooLong { length: usize, limit: usize },
}

impl Rejection {
    /// A `BadEncoding` whose detail (which may quote attacker-chosen text, such as an
    /// unknown field name) is made safe to print on one line.
    pub(crate) fn bad_encoding(kind: DocumentKind, detail: impl std::fmt::Display) -> Rejection {
        Rejection::BadEncoding {
            kind,
            detail: one_line(&detail.to_string()),
        }
    }

    /// A `BadPayload` with a detail made safe to print on one line.
    pub(crate) fn bad_payload(kind: DocumentKind, detail: impl std::fmt::Display) -> Rejection {
        Rejection::BadPayload {
            kind,
            detail: one_line(&detail.to_string()),
        }
    }
}

/// Longest piece of untrusted text quoted in a rejection.
const MAX_QUOTED: usize = 512;

/// Makes untrusted text safe for a one-line message: control characters (newlines,
/// carriage returns, terminal escapes) are escaped and the text is shortened, so a
/// hostile document cannot forge log lines or repaint a terminal.
pub(crate) fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_QUOTED));
    for (count, c) in text.chars().enumerate() {
        if count == MAX_QUOTED {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Why bytes are not an ed25519 public key this crate accepts. Keys enter through trust
/// documents; see `keys::PublicKey::from_raw` for why the weak ones are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PublicKeyError {
    /// Not 32 bytes.
    #[error("an ed25519 public key is 32 bytes, not {0}")]
    Length(usize),
    /// Not the one canonical encoding of its point: y is 2^255-19 or more, or x is zero
    /// with its sign bit set. Another encoding of a listed point would give it a second
    /// key id.
    #[error(
        "not a canonical ed25519 point encoding (y not below 2^255-19, or x = 0 with the sign bit set); no generated key looks like this"
    )]
    NonCanonical,
    /// One of the 8 points of small order, under which one constant signature verifies
    /// for many messages (for the neutral point: every message) with no private key.
    #[error(
        "a small-order ed25519 point, under which constant signatures verify with no private key; no generated key looks like this"
    )]
    SmallOrder,
}

/// Why a signing key could not be made, read or written.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The operating system's random source failed.
    #[error("generating an ed25519 key failed: the system random source is unavailable")]
    Generate,
    /// The bytes are not an ed25519 PKCS#8 private key (PEM or DER).
    #[error("{path}: not an ed25519 PKCS#8 private key: {detail}")]
    Parse { path: PathBuf, detail: String },
    /// The key file can be read by group or others.
    #[error("{path}: mode {mode:04o} lets group or others read this private file; run `chmod 600 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
    /// The key file is not a regular file.
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    /// Refused to overwrite an existing key.
    #[error("{path}: already exists; refusing to overwrite a key")]
    AlreadyExists { path: PathBuf },
    /// An I/O error on a key or trust file.
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
