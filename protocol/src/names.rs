//! Validated names that cross the wire: app names, host ids, versions, digests, key ids.
//!
//! Each type can only hold a valid value: it is checked once, when it is parsed from a
//! string (or deserialized), and never again. Several of them end up in file system paths
//! and unit names on hosts (`releases/<version>/`, `drover-<app>.service`), so their
//! alphabets exclude `/`, whitespace and leading dots or dashes by construction.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A string that is not a valid value of one of the validated types.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {what} {value:?}: expected {expected}")]
pub struct NameError {
    /// What was being parsed ("app name", "digest", ...).
    pub what: &'static str,
    /// The refused text, shortened to 80 characters.
    pub value: String,
    /// What a valid value looks like.
    pub expected: &'static str,
}

impl NameError {
    pub(crate) fn new(what: &'static str, value: &str, expected: &'static str) -> NameError {
        let value = value.chars().take(80).collect();
        NameError { what, value, expected }
    }
}

/// Defines a string newtype with `FromStr`, `Display`, `AsRef<str>` and serde support
/// that goes through the validating constructor.
macro_rules! validated_string {
    ($(#[$meta:meta])* $name:ident, $check:path) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(text: &str) -> Result<Self, NameError> {
                $check(text)?;
                Ok(Self(text.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(text: String) -> Result<Self, NameError> {
                $check(&text)?;
                Ok(Self(text))
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

pub(crate) use validated_string;

validated_string!(
    /// An app name: `[a-z0-9][a-z0-9-]{0,62}`. Used in unit names (`drover-<app>.service`)
    /// and directory names, so it never starts with a dash.
    AppName,
    check_app_name
);

validated_string!(
    /// A host id: 1 to 64 characters of `[a-z0-9.-]`, starting and ending with a letter or
    /// digit, no `..`. Lowercase only, so that two spellings can never name two hosts.
    HostId,
    check_host_id
);

validated_string!(
    /// A release version: `[A-Za-z0-9][A-Za-z0-9._+-]{0,127}`. It becomes the directory
    /// `releases/<version>/`, so it can hold neither `/` nor be `.` or `..`.
    Version,
    check_version
);

validated_string!(
    /// A content digest: `sha256:` followed by 64 lowercase hex digits.
    Digest,
    check_digest
);

validated_string!(
    /// A key id: the lowercase hex sha256 of an ed25519 public key (64 characters).
    KeyId,
    check_key_id
);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_sha256(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    }

    /// Wraps a raw 32-byte sha256 value.
    pub fn from_sha256(raw: &[u8]) -> Digest {
        Digest(format!("sha256:{}", crate::hex::encode(raw)))
    }

    /// The 64 hex digits without the `sha256:` prefix (a file name in a content store).
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl KeyId {
    /// The key id of a raw public key.
    pub fn of_public_key(raw_public_key: &[u8]) -> KeyId {
        let digest = ring::digest::digest(&ring::digest::SHA256, raw_public_key);
        KeyId(crate::hex::encode(digest.as_ref()))
    }
}

/// Lets key-id maps be looked up by the untrusted `&str` from an envelope without first
/// validating it; `KeyId` orders and hashes exactly as its text does.
impl std::borrow::Borrow<str> for KeyId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// App names whose unit, `drover-<app>.service`, would be one of drover's own.
pub const RESERVED_APP_NAMES: [&str; 2] = ["agent", "coordinator"];

fn check_app_name(text: &str) -> Result<(), NameError> {
    let ok = (1..=63).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-');
    if !ok {
        return Err(NameError::new(
            "app name",
            text,
            "1 to 63 characters of a-z, 0-9 and '-', not starting with '-'",
        ));
    }
    if RESERVED_APP_NAMES.contains(&text) {
        return Err(NameError::new(
            "app name",
            text,
            "a name other than agent or coordinator (drover-agent.service and drover-coordinator.service are drover's own units)",
        ));
    }
    Ok(())
}

fn check_host_id(text: &str) -> Result<(), NameError> {
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok = (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && edge_ok(text.bytes().next())
        && edge_ok(text.bytes().last())
        && !text.contains("..");
    if ok {
        Ok(())
    } else {
        Err(NameError::new(
            "host id",
            text,
            "1 to 64 characters of a-z, 0-9, '-' and '.', starting and ending with a letter or digit",
        ))
    }
}

fn check_version(text: &str) -> Result<(), NameError> {
    let ok = (1..=128).contains(&text.len())
        && text.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NameError::new(
            "version",
            text,
            "1 to 128 characters of A-Z, a-z, 0-9, '.', '_', '+' and '-', starting with a letter or digit",
        ))
    }
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_digest(text: &str) -> Result<(), NameError> {
    match text.strip_prefix("sha256:") {
        Some(hex) if is_lower_hex(hex, 64) => Ok(()),
        _ => Err(NameError::new(
            "digest",
            text,
            "'sha256:' followed by 64 lowercase hex digits",
        )),
    }
}

fn check_key_id(text: &str) -> Result<(), NameError> {
    if is_lower_hex(text, 64) {
        Ok(())
    } else {
        Err(NameError::new(
            "key id",
            text,
            "64 lowercase hex digits (sha256 of the public key)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names() {
        for good in ["web", "a", "web-2", "0", &"a".repeat(63)] {
            assert!(good.parse::<AppName>().is_ok(), "{good}");
        }
        for bad in ["", "Web", "-web", "we b", "web_1", "web/x", "..", &"a".repeat(64)] {
            assert!(bad.parse::<AppName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn app_names_that_would_replace_drovers_own_units_are_refused() {
        for reserved in RESERVED_APP_NAMES {
            let error = reserved.parse::<AppName>().expect_err(reserved);
            assert!(error.to_string().contains("drover-agent.service"), "{error}");
        }
        assert!("agents".parse::<AppName>().is_ok());
    }

    #[test]
    fn host_ids() {
        for good in ["web-01", "a", "h1.eu.example", &"a".repeat(64)] {
            assert!(good.parse::<HostId>().is_ok(), "{good}");
        }
        for bad in ["", "Web", "-a", "a-", ".a", "a.", "a..b", "a/b", "a b", &"a".repeat(65)] {
            assert!(bad.parse::<HostId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn versions() {
        for good in ["1.2.3", "v2", "1.0.0-rc.1+build.5", "2026_11_27"] {
            assert!(good.parse::<Version>().is_ok(), "{good}");
        }
        for bad in ["", ".", "..", ".hidden", "-1", "1/2", "1 2", "1\n", &"1".repeat(129)] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }

    #[test]
    fn digests() {
        let digest = Digest::of(b"hello");
        assert_eq!(
            digest.as_str(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(digest.hex().len(), 64);
        assert!(digest.as_str().parse::<Digest>().is_ok());
        for bad in [
            "",
            "sha256:",
            "sha512:00",
            "sha256:ABCDEF",
            &format!("sha256:{}", "0".repeat(63)),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_goes_through_validation() {
        assert!(serde_json::from_str::<AppName>("\"web\"").is_ok());
        let error = serde_json::from_str::<AppName>("\"../etc\"").expect_err("must be refused");
        assert!(error.to_string().contains("app name"), "{error}");
    }
}
