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
//!   accepted.json              {"serial": N, "issued_at": "..."} of the last accepted manifest
//!   manifest.dsse              that manifest's envelope
//! ```

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use drover_protocol::keyfile::{read_private_file, write_atomic};
use drover_protocol::{KeyError, LastAccepted, Timestamp};
use serde::{Deserialize, Serialize};

/// Paths in a state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

/// What the agent remembers of its last accepted manifest (`accepted.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptedFile {
    serial: u64,
    issued_at: Timestamp,
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
    /// The last accepted serial and issued-at.
    pub fn accepted(&self) -> PathBuf {
        self.root.join("accepted.json")
    }
    /// The last accepted manifest envelope.
    pub fn manifest(&self) -> PathBuf {
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

    /// What was last accepted, if anything.
    pub fn last_accepted(&self) -> Result<Option<LastAccepted>, String> {
        match std::fs::read(self.accepted()) {
            Ok(bytes) => {
                let file: AcceptedFile = serde_json::from_slice(&bytes)
                    .map_err(|error| format!("{}: unreadable ({error})", self.accepted().display()))?;
                Ok(Some(LastAccepted {
                    serial: file.serial,
                    issued_at: file.issued_at,
                }))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(format!("{}: {error}", self.accepted().display())),
        }
    }

    /// Records an accepted manifest: its envelope first, then the serial, so a crash
    /// between the two leaves the old serial (the manifest is accepted again, never a
    /// lower one).
    pub fn save_accepted(&self, accepted: LastAccepted, envelope: &[u8]) -> Result<(), KeyError> {
        write_atomic(&self.manifest(), envelope, 0o644)?;
        let file = AcceptedFile {
            serial: accepted.serial,
            issued_at: accepted.issued_at,
        };
        write_atomic(
            &self.accepted(),
            &serde_json::to_vec(&file).expect("accepted state serializes"),
            0o644,
        )
    }

    /// Forgets the last accepted manifest (a join to a coordinator with other root keys).
    pub fn forget_accepted(&self) -> std::io::Result<()> {
        for path in [self.accepted(), self.manifest()] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_state_round_trips_and_identity_key_is_private() {
        let root = std::env::temp_dir().join(format!("drover-agent-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let state = StateDir::new(&root);
        state.create().expect("create");
        assert_eq!(state.last_accepted().expect("readable"), None);
        let accepted = LastAccepted {
            serial: 7,
            issued_at: Timestamp::from_unix(1_800_000_000),
        };
        state.save_accepted(accepted, b"{}").expect("save");
        assert_eq!(state.last_accepted().expect("readable"), Some(accepted));

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
