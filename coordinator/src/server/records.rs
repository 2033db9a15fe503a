//! The fleet's records: plain data that the [`store`](crate::server::store) persists and
//! loads, and that the pure [`fleet`](crate::server::fleet) model and the service hold.
//! They live here, apart from both, so the fleet model never depends on the store (and
//! the store never on the model): neither carries a database or HTTP type.

use std::collections::{BTreeMap, BTreeSet};

use drover_protocol::api::{Labels, Release, Scope};
use drover_protocol::{AppName, HostId, HostReport, Timestamp, Version};

/// A host as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRecord {
    /// Its id.
    pub id: HostId,
    /// Its labels.
    pub labels: Labels,
    /// The sha256 of its newest client certificate; `None` once removed.
    pub cert_sha256: Option<String>,
    /// The sha256 of its key (SubjectPublicKeyInfo): every unexpired certificate of the
    /// CA for this host with this key is the host. `None` for a host enrolled before
    /// keys were recorded (known by `cert_sha256` until it renews) or removed.
    pub key_sha256: Option<String>,
    /// When its newest certificate expires, if known.
    pub cert_not_after: Option<Timestamp>,
    /// When it joined.
    pub joined_at: Timestamp,
}

impl HostRecord {
    /// Whether it is enrolled: it has a certificate (a removed host keeps its record, so
    /// its serials continue, but not its certificate).
    pub fn is_active(&self) -> bool {
        self.cert_sha256.is_some()
    }
}

/// A host's last signed manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredManifest {
    /// The host.
    pub host: HostId,
    /// Its serial (never goes down for a host id, across removals and re-joins).
    pub serial: u64,
    /// The envelope bytes (shared with what polls are answered from).
    pub envelope: bytes::Bytes,
    /// A hash of what was rendered (hold + apps), to tell a change from a refresh.
    pub content_hash: String,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
}

/// Everything loaded at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Hosts, including removed ones (whose serials must continue).
    pub hosts: Vec<HostRecord>,
    /// Groups by name.
    pub groups: BTreeMap<String, Labels>,
    /// Pins.
    pub pins: BTreeMap<(AppName, Scope), Version>,
    /// Holds.
    pub holds: BTreeSet<Scope>,
    /// Releases.
    pub releases: Vec<Release>,
    /// The last manifest of every host.
    pub manifests: Vec<StoredManifest>,
    /// The latest report of every host.
    pub reports: Vec<(HostReport, Timestamp)>,
    /// The database's model generation this was read at (see `store`'s module
    /// documentation).
    pub generation: i64,
}
