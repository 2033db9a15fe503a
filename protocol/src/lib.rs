//! drover's protocol: the wire types, DSSE envelopes, ed25519 keys, trust documents and
//! the acceptance function every agent runs before acting on a manifest.
//!
//! Pure by design: no network, no clock reads (callers pass `now`), no global state. The
//! one exception is [`keyfile`], which reads and writes private key files so that every
//! binary enforces the same 0600 rule.

#![forbid(unsafe_code)]

pub mod accept;
pub mod api;
pub mod coordinators;
pub mod dsse;
pub mod error;
pub mod hex;
pub mod keyfile;
pub mod keys;
pub mod manifest;
pub mod names;
pub mod oci;
pub mod report;
pub mod spec;
pub mod time;
pub mod trust;

pub use accept::{LastAccepted, MAX_CLOCK_SKEW, VerifiedManifest, accept};
pub use dsse::{Envelope, EnvelopeSignature, Role, pae};
pub use error::{DocumentKind, KeyError, Rejection};
pub use keys::{PublicKey, SigningKey};
pub use manifest::{AppRelease, Artifact, MANIFEST_PAYLOAD_TYPE, MANIFEST_SCHEMA, Manifest};
pub use names::NameError;
pub use names::{AppName, Digest, HostId, KeyId, Version};
pub use report::HostReport;
pub use spec::AppSpec;
pub use time::{Duration, Timestamp};
pub use trust::{TRUST_PAYLOAD_TYPE, Trust, TrustDocument};

/// Reads only the `schema` field of a signed payload, so that a document of an unknown
/// schema is reported as such instead of as a confusing parse error.
pub(crate) fn peek_schema(payload: &[u8], kind: DocumentKind) -> Result<u64, Rejection> {
    #[derive(serde::Deserialize)]
    struct Peek {
        schema: u64,
    }
    serde_json::from_slice::<Peek>(payload)
        .map(|peek| peek.schema)
        .map_err(|error| Rejection::bad_payload(kind, format!("no readable schema version: {error}")))
}
