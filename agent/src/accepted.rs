//! The manifest floor: what this host last accepted, kept as ONE record so that no crash
//! can leave its parts disagreeing.
//!
//! `accepted.json` (mode 0600: the envelope holds every app's spec, secrets included)
//! holds the serial and the newest issued-at ever accepted (the floor `accept` keeps
//! rollback and freeze protection with), the envelope of the manifest in force, and the
//! id of the trust root key set they were accepted under. It is replaced in one atomic
//! write, so after a kill -9 or a failed write (a full disk) the host has either the old
//! record or the new one, never a newer envelope beside an older floor.
//!
//! A record accepted under other root keys (the host re-joined a different coordinator)
//! does not count: the floor starts again, without anything having to be wiped, so a
//! re-join writes its trust document and nothing else.
//!
//! Agents before this record kept `manifest.dsse` and a floor-only `accepted.json`
//! (written in that order). [`load`] migrates such a pair: it writes the record first and
//! then removes `manifest.dsse`, so a kill -9 at any point is finished by the next start.

use drover_protocol::keyfile::write_atomic;
use drover_protocol::{
    HostId, KeyError, LastAccepted, Manifest, Rejection, Timestamp, Trust, VerifiedManifest, accept,
};
use serde::{Deserialize, Serialize};

use crate::state::StateDir;

/// The crash tests' pause points in this module (see [`crate::faults`]): before the
/// record's write, after it (before the manifest is acted on), and in a migration after
/// the record is written and before `manifest.dsse` is removed. Compiled only into debug
/// builds: the packaged agent has none of them.
pub const DEBUG_POINTS: [&str; 3] = ["record-before-write", "record-after-write", "migration-after-record"];

/// The id of a trust document's root key set: lowercase hex sha256 over the root
/// threshold and the sorted root key ids. Two trust documents listing the same root keys
/// in any order with the same threshold have the same id.
pub fn trust_roots_id(trust: &Trust) -> String {
    let mut text = format!("drover trust roots v1\nthreshold {}\n", trust.root().threshold());
    // `key_ids` iterates in sorted order (the role keeps its keys in a BTreeMap).
    for key_id in trust.root().key_ids() {
        text.push_str(key_id.as_str());
        text.push('\n');
    }
    drover_protocol::hex::sha256(text.as_bytes())
}

/// `accepted.json` as written since the record holds the envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    /// [`trust_roots_id`] of the trust this was accepted under.
    trust_roots: String,
    serial: u64,
    issued_at: Timestamp,
    /// The envelope (JSON text) of the manifest in force; absent when a migrated floor
    /// had no envelope that still matched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    envelope: Option<String>,
}

/// `accepted.json` as earlier agents wrote it (beside `manifest.dsse`).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyRecord {
    serial: u64,
    issued_at: Timestamp,
}

/// `accepted.json` in either format.
#[derive(Clone, Debug)]
enum OnDisk {
    Absent,
    Current(Record),
    Legacy(LastAccepted),
}

fn read(state: &StateDir) -> Result<OnDisk, String> {
    let path = state.accepted();
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(OnDisk::Absent),
        Err(error) => return Err(format!("{}: {error}", path.display())),
    };
    if let Ok(record) = serde_json::from_slice::<Record>(&bytes) {
        return Ok(OnDisk::Current(record));
    }
    match serde_json::from_slice::<LegacyRecord>(&bytes) {
        Ok(legacy) => Ok(OnDisk::Legacy(LastAccepted {
            serial: legacy.serial,
            issued_at: legacy.issued_at,
        })),
        Err(error) => Err(format!(
            "{}: unreadable ({error}); it is the host's rollback floor, so the agent will not guess: \
             restore it, or remove it to accept the coordinator's next manifest whatever its serial",
            path.display()
        )),
    }
}

/// The last accepted serial and issued-at as stored, whatever trust they belong to: for
/// `status` and `check`, which only display it.
pub fn stored_floor(state: &StateDir) -> Result<Option<LastAccepted>, String> {
    Ok(match read(state)? {
        OnDisk::Absent => None,
        OnDisk::Current(record) => Some(LastAccepted {
            serial: record.serial,
            issued_at: record.issued_at,
        }),
        OnDisk::Legacy(last) => Some(last),
    })
}

fn remove_if_present(path: &std::path::Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(format!("removing {}: {error}", path.display())),
    }
}

/// What the agent has accepted under its current trust, kept in memory beside the record.
#[derive(Clone, Debug)]
pub struct Floor {
    trust_roots: String,
    last: Option<LastAccepted>,
    /// The envelope of the manifest in force (the coordinator sending these bytes again
    /// changes nothing).
    in_force: Option<Vec<u8>>,
}

/// What [`Floor::offer`] makes of a manifest from the coordinator.
#[derive(Debug)]
pub enum Offer {
    /// The manifest in force, byte for byte: nothing to do.
    InForce,
    /// A new manifest that passed `accept`: [`Floor::commit`] it before acting.
    Accepted(Box<VerifiedManifest>),
    /// Refused; nothing changed.
    Rejected(Rejection),
}

/// [`load`]'s result.
#[derive(Debug)]
pub struct Loaded {
    /// The floor to poll with.
    pub floor: Floor,
    /// The stored manifest, verified again, to act on until the coordinator answers.
    pub manifest: Option<Manifest>,
    /// What the operator should know (a migration, a record of other root keys, a stored
    /// manifest that no longer verifies, a failed write), one line each.
    pub notes: Vec<String>,
}

impl Floor {
    /// The ETag to poll with: the serial of the manifest in force. Without one (nothing
    /// stored, or it no longer verifies) none is sent, so the coordinator answers with
    /// its manifest at once instead of holding the poll on a serial this host cannot use.
    pub fn etag(&self) -> Option<String> {
        match (&self.in_force, self.last) {
            (Some(_), Some(last)) => Some(format!("\"{}\"", last.serial)),
            _ => None,
        }
    }

    /// The floor: the last accepted serial and the newest issued-at.
    pub fn last(&self) -> Option<LastAccepted> {
        self.last
    }

    /// Checks a manifest the coordinator sent. Pure: changes nothing.
    pub fn offer(&self, bytes: &[u8], trust: &Trust, host: &HostId, now: Timestamp) -> Offer {
        if self.in_force.as_deref() == Some(bytes) {
            return Offer::InForce;
        }
        match accept(bytes, trust, host, self.last, now) {
            Ok(verified) => Offer::Accepted(Box::new(verified)),
            Err(rejection) => Offer::Rejected(rejection),
        }
    }

    /// Records `verified` as the manifest in force: one atomic write of the record (0600),
    /// then the floor in memory. On an error (a full disk) nothing changed, on disk or
    /// here: the caller keeps running on the previous manifest and offers this one again.
    pub fn commit(&mut self, state: &StateDir, verified: &VerifiedManifest) -> Result<(), KeyError> {
        let last = verified.last_accepted();
        #[cfg(debug_assertions)]
        crate::faults::pause_point(DEBUG_POINTS[0], state.root());
        let envelope = std::str::from_utf8(verified.envelope())
            .expect("an accepted envelope parsed as JSON, so it is UTF-8")
            .to_owned();
        write_record(
            state,
            &Record {
                trust_roots: self.trust_roots.clone(),
                serial: last.serial,
                issued_at: last.issued_at,
                envelope: Some(envelope),
            },
        )?;
        #[cfg(debug_assertions)]
        crate::faults::pause_point(DEBUG_POINTS[1], state.root());
        // A migration's leftover, if its removal failed earlier; the record is complete
        // without it, so failing to remove it is only logged.
        if let Err(error) = remove_if_present(&state.legacy_manifest()) {
            tracing::warn!("{error}");
        }
        self.last = Some(last);
        self.in_force = Some(verified.envelope().to_vec());
        Ok(())
    }
}

fn write_record(state: &StateDir, record: &Record) -> Result<(), KeyError> {
    write_atomic(
        &state.accepted(),
        &serde_json::to_vec(record).expect("the accepted record serializes"),
        0o600,
    )
}

/// Removes the temporary files of record writes that a crash or a full disk left
/// (`accepted.json.tmp-<pid>`): never read, only space.
fn remove_write_leftovers(state: &StateDir) {
    let Ok(entries) = std::fs::read_dir(state.root()) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("accepted.json.tmp-")
            && let Err(error) = std::fs::remove_file(entry.path())
        {
            tracing::warn!("removing {}: {error}", entry.path().display());
        }
    }
}

/// The stored manifest verified again under `trust`, with its own issued-at as the clock
/// (an old but once-accepted manifest still counts while the coordinator is away).
fn reverify(envelope: &[u8], last: LastAccepted, trust: &Trust, host: &HostId) -> Result<VerifiedManifest, String> {
    let verified = accept(envelope, trust, host, None, last.issued_at).map_err(|rejection| rejection.to_string())?;
    if verified.manifest().serial != last.serial {
        return Err(format!(
            "its serial {} is not the recorded {}",
            verified.manifest().serial,
            last.serial
        ));
    }
    Ok(verified)
}

/// Reads the accepted record for `trust` at start, migrating an earlier agent's pair of
/// files. Errors only on a record it cannot read (the rollback floor is never guessed);
/// a failed migration write is a note, and the migrated state is used from memory until
/// the next accepted manifest writes the record.
pub fn load(state: &StateDir, trust: &Trust, host: &HostId, now: Timestamp) -> Result<Loaded, String> {
    let trust_roots = trust_roots_id(trust);
    let mut notes = Vec::new();
    let mut floor = Floor {
        trust_roots: trust_roots.clone(),
        last: None,
        in_force: None,
    };
    let mut manifest = None;
    remove_write_leftovers(state);
    match read(state)? {
        OnDisk::Absent => {
            // An earlier agent's envelope without its floor: written first and never
            // followed by its floor, or left by a re-join that cleared the floor. Either
            // way no floor belongs to it; the coordinator sends its manifest again.
            if let Err(error) = remove_if_present(&state.legacy_manifest()) {
                notes.push(error);
            }
        }
        OnDisk::Current(record) if record.trust_roots != trust_roots => {
            notes.push(format!(
                "the accepted record (serial {}) was accepted under other trust root keys; \
                 the serial floor starts again with this trust",
                record.serial
            ));
        }
        OnDisk::Current(record) => {
            let last = LastAccepted {
                serial: record.serial,
                issued_at: record.issued_at,
            };
            floor.last = Some(last);
            if let Some(envelope) = record.envelope {
                match reverify(envelope.as_bytes(), last, trust, host) {
                    Ok(verified) => {
                        manifest = Some(verified.manifest().clone());
                        floor.in_force = Some(envelope.into_bytes());
                    }
                    Err(reason) => notes.push(format!(
                        "the stored manifest (serial {}) no longer verifies ({reason}); waiting for a new one",
                        record.serial
                    )),
                }
            }
            // A migration killed after writing the record.
            if let Err(error) = remove_if_present(&state.legacy_manifest()) {
                notes.push(error);
            }
        }
        OnDisk::Legacy(legacy) => {
            let (last, envelope) = migrate(state, legacy, trust, host, now);
            floor.last = Some(last);
            if let Some((envelope, verified)) = envelope {
                manifest = Some(verified.manifest().clone());
                floor.in_force = Some(envelope.clone());
            }
            let record = Record {
                trust_roots,
                serial: last.serial,
                issued_at: last.issued_at,
                envelope: floor
                    .in_force
                    .as_ref()
                    .map(|bytes| String::from_utf8_lossy(bytes).into_owned()),
            };
            match write_record(state, &record) {
                Ok(()) => {
                    #[cfg(debug_assertions)]
                    crate::faults::pause_point(DEBUG_POINTS[2], state.root());
                    notes.push(format!(
                        "migrated {} and manifest.dsse into one record (serial {})",
                        state.accepted().display(),
                        last.serial
                    ));
                    if let Err(error) = remove_if_present(&state.legacy_manifest()) {
                        notes.push(error);
                    }
                }
                Err(error) => notes.push(format!(
                    "migrating the accepted manifest into one record failed ({error}); \
                     the next accepted manifest writes it"
                )),
            }
        }
    }
    Ok(Loaded { floor, manifest, notes })
}

/// An earlier agent's floor and `manifest.dsse`: the pair as written, or the envelope
/// written and its floor not (the crash this record exists to prevent; the envelope is
/// then one `accept` takes over the floor now).
fn migrate(
    state: &StateDir,
    legacy: LastAccepted,
    trust: &Trust,
    host: &HostId,
    now: Timestamp,
) -> (LastAccepted, Option<(Vec<u8>, VerifiedManifest)>) {
    let Ok(envelope) = std::fs::read(state.legacy_manifest()) else {
        return (legacy, None);
    };
    if let Ok(verified) = reverify(&envelope, legacy, trust, host) {
        return (legacy, Some((envelope, verified)));
    }
    match accept(&envelope, trust, host, Some(legacy), now) {
        Ok(verified) => (verified.last_accepted(), Some((envelope, verified))),
        Err(_) => (legacy, None),
    }
}
