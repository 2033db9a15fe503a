//! The agent's state directory: its identity (key, certificate, the coordinator's CA),
//! the pinned trust document, and what it last accepted. Every file is written
//! atomically (write, fsync, rename); private files are 0600.
//!
//! ```text
//! <state-dir>/                 0755 (apps reach their releases through it)
//!   identity/                  0700
//!   identity/host.key          the host's private key (0600)
//!   identity/host.pem          its client certificate
//!   identity/ca.pem            the coordinator's CA (pinned by hash at join)
//!   trust.json                 the pinned trust document (a DSSE envelope)
//!   accepted.json              the accepted record (0600): serial, newest issued-at, the
//!                              envelope in force and the trust root set they belong to
//!                              ([`crate::accepted`])
//! ```
//!
//! Earlier agents kept the envelope apart, in `manifest.dsse`; the first start of this
//! agent migrates it into `accepted.json`.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use drover_protocol::KeyError;
use drover_protocol::keyfile::{read_private_file, write_atomic};

/// Paths in a state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

/// The host's identity as stored.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Private key PEM.
    pub key_pem: String,
    /// Client certificate PEM.
    pub certificate_pem: String,
    /// The coordinator's CA PEM.
    pub ca_pem: String,
}

impl StateDir {
    /// The state directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    fn identity_dir(&self) -> PathBuf {
        self.root.join("identity")
    }
    /// The host key.
    pub fn key(&self) -> PathBuf {
        self.identity_dir().join("host.key")
    }
    /// The host certificate.
    pub fn certificate(&self) -> PathBuf {
        self.identity_dir().join("host.pem")
    }
    /// The coordinator's CA.
    pub fn ca(&self) -> PathBuf {
        self.identity_dir().join("ca.pem")
    }
    /// The pinned trust document.
    pub fn trust(&self) -> PathBuf {
        self.root.join("trust.json")
    }
    /// The accepted record ([`crate::accepted`]).
    pub fn accepted(&self) -> PathBuf {
        self.root.join("accepted.json")
    }
    /// Where earlier agents kept the accepted envelope; only migration reads it.
    pub fn legacy_manifest(&self) -> PathBuf {
        self.root.join("manifest.dsse")
    }

    /// Creates the directory tree: the root 0755 (apps running as other users, or as a
    /// systemd `DynamicUser`, must reach their releases under it), `identity/` 0700.
    pub fn create(&self) -> std::io::Result<()> {
        DirBuilder::new().recursive(true).mode(0o755).create(&self.root)?;
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.identity_dir())?;
        // An existing identity directory keeps the mode it was made with; make sure.
        std::fs::set_permissions(self.identity_dir(), std::os::unix::fs::PermissionsExt::from_mode(0o700))
    }

    /// Whether the host has joined (an identity exists).
    pub fn joined(&self) -> bool {
        self.certificate().exists()
    }

    /// Stores the identity: key 0600, certificate and CA 0644.
    pub fn save_identity(&self, identity: &Identity) -> Result<(), KeyError> {
        write_atomic(&self.key(), identity.key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.certificate(), identity.certificate_pem.as_bytes(), 0o644)?;
        write_atomic(&self.ca(), identity.ca_pem.as_bytes(), 0o644)
    }

    /// Replaces the host certificate (a renewal over the same key), atomically: a crash
    /// leaves the old certificate or the new one, and either works with the key.
    pub fn save_certificate(&self, certificate_pem: &str) -> Result<(), KeyError> {
        write_atomic(&self.certificate(), certificate_pem.as_bytes(), 0o644)
    }

    /// Loads the identity, refusing a key file others can read.
    pub fn load_identity(&self) -> Result<Identity, KeyError> {
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path).map_err(|source| KeyError::Io {
                operation: "reading",
                path,
                source,
            })
        };
        let key = read_private_file(&self.key())?;
        Ok(Identity {
            key_pem: String::from_utf8(key).map_err(|_| KeyError::Parse {
                path: self.key(),
                detail: "not PEM text".into(),
            })?,
            certificate_pem: read(self.certificate())?,
            ca_pem: read(self.ca())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_key_is_private() {
        let root = std::env::temp_dir().join(format!("drover-agent-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let state = StateDir::new(&root);
        state.create().expect("create");
        let identity = Identity {
            key_pem: "key".into(),
            certificate_pem: "cert".into(),
            ca_pem: "ca".into(),
        };
        state.save_identity(&identity).expect("save identity");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(state.key()).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(state.load_identity().expect("load").certificate_pem, "cert");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
