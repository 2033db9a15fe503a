//! The coordinator's data directory: what `drover serve` creates on first start and
//! reuses afterwards, and where the CLI on the same machine finds its credentials.
//!
//! ```text
//! <data-dir>/              0700
//!   coordinator.db         SQLite (WAL)
//!   ca.pem  ca.key         the CA (key 0600)
//!   admin.token            the bootstrap admin token, named `admin` (0600)
//!   address                the URL the CLI uses to reach this coordinator
//!   server.pem             the server certificate in use, renewed while serving (0600)
//!   keys/                  manifest.key (0600), trust.json; root-1.key when created here
//!   blobs/sha256/<hex>     uploaded artifacts, content-addressed
//! ```

use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::error::Error;

/// The default data directory of a packaged coordinator.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/drover-coordinator";

/// Paths inside a data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The SQLite database.
    pub fn database(&self) -> PathBuf {
        self.root.join("coordinator.db")
    }
    /// The CA certificate (PEM).
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    /// The CA key (PEM, 0600).
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    /// The admin bearer token (0600).
    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin.token")
    }
    /// The URL the local CLI should use.
    pub fn address(&self) -> PathBuf {
        self.root.join("address")
    }
    /// The default key directory.
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    /// The artifact store.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("system random source");
    encode_secret(bytes)
}

/// 32 random bytes as URL-safe base64 that never starts with `-`: secrets go on command
/// lines (`drover-agent join URL --token X`), where one starting with `-` (1 in 64) would be
/// read as an option. A leading `-` (sextet 62) has its top bit cleared, becoming `e`.
fn encode_secret(mut bytes: [u8; 32]) -> String {
    if bytes[0] >> 2 == 62 {
        bytes[0] &= 0x7f;
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Reads a secret text file (0600 enforced).
pub fn read_private_file(path: &Path) -> Result<String, Error> {
    let bytes = drover_protocol::keyfile::read_private_file(path)?;
    String::from_utf8(bytes).map_err(|_| Error::Input(format!("{}: not UTF-8 text", path.display())))
}

/// A fresh random secret (enrollment tokens).
pub fn new_secret() -> String {
    random_token()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_start_with_a_dash() {
        // 0xf8 = 111110 00: the first sextet is 62, URL-safe base64's `-`.
        let mut bytes = [0u8; 32];
        bytes[0] = 0xf8;
        let secret = encode_secret(bytes);
        assert!(secret.starts_with('e'), "{secret}");
        assert_eq!(secret.len(), 43);
        // `_` (63) and everything else is left as it is.
        bytes[0] = 0xfc;
        assert!(encode_secret(bytes).starts_with('_'));
        for _ in 0..2_000 {
            assert!(!random_token().starts_with('-'));
        }
    }
}
