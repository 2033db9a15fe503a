//! What the agent knows about the apps on this host, kept in `<state>/apps/<app>/app.json`
//! and written atomically (write, fsync, rename) before every step that changes the
//! host. It is the install journal: an `activation` on disk means a switch was started
//! and not finished, so the next start redoes it (forward to the new release, or on with
//! the rollback) instead of guessing what the host runs.
//!
//! ```text
//! <state>/apps/<app>/
//!   app.json                   this file
//!   current -> releases/<v>    the release the unit runs (switched by rename)
//!   releases/<v>/              complete releases (they appear only by rename)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use drover_protocol::keyfile::write_atomic;
use drover_protocol::{AppName, AppRelease, Timestamp, Version};
use serde::{Deserialize, Serialize};

/// Where an interrupted switch was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Moving to `to`: unit written, `current` switched, restarted, health checked.
    Activating,
    /// `to` failed; moving back to `from`.
    RollingBack,
}

/// A switch in progress: the journal entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    /// The release being activated.
    pub to: AppRelease,
    /// The release that ran before, if any.
    pub from: Option<AppRelease>,
    /// How far it got.
    pub phase: Phase,
    /// When it started.
    pub started_at: Timestamp,
    /// Why a rollback started (the health verdict), for the report.
    #[serde(default)]
    pub reason: Option<String>,
    /// When the restart job of the release this phase moves to (`to` while activating,
    /// `from` while rolling back) finished: its health grace period counts from here, also
    /// across agent restarts, so a resumed switch never restarts the app or its grace.
    /// `None`: not restarted yet in this phase.
    #[serde(default)]
    pub restarted_at: Option<Timestamp>,
    /// The unit's `NRestarts` right after that restart (a restart loop counts from it).
    #[serde(default)]
    pub restarts_at_start: u32,
}

/// An install of the desired version that failed before it ever ran (download, unpack,
/// unit, `pre_start`), and when it may be tried again. Journaled, so a restarted agent
/// keeps the back-off instead of retrying at once; forgotten when the desired version
/// changes or the version installs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallFailure {
    /// The version that failed.
    pub version: Version,
    /// Failed attempts so far (1 after the first).
    pub attempts: u32,
    /// Not tried again before this.
    pub retry_at: Timestamp,
}

/// The agent's record of one app.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// The release running and healthy (or last known to be).
    pub current: Option<AppRelease>,
    /// The release before it: the rollback target.
    pub previous: Option<AppRelease>,
    /// Versions that failed health here; kept only while they stay desired.
    #[serde(default)]
    pub bad: BTreeSet<Version>,
    /// A switch in progress.
    #[serde(default)]
    pub activation: Option<Activation>,
    /// The desired version's last failed install, with its retry time.
    #[serde(default)]
    pub failure: Option<InstallFailure>,
    /// Why the last install failed or was rolled back, reported until the app is healthy
    /// again (also after an agent restart).
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Paths of an app's directory.
pub fn app_dir(state_dir: &Path, app: &AppName) -> PathBuf {
    state_dir.join("apps").join(app.as_str())
}

/// The `current` symlink of an app.
pub fn current_link(state_dir: &Path, app: &AppName) -> PathBuf {
    app_dir(state_dir, app).join("current")
}

fn record_path(state_dir: &Path, app: &AppName) -> PathBuf {
    app_dir(state_dir, app).join("app.json")
}

/// Where an app's directory is moved to be deleted (`apps/.removing-<app>`), so a half
/// deleted app never looks like an app.
pub fn removal_dir(state_dir: &Path, app: &AppName) -> PathBuf {
    state_dir.join("apps").join(format!(".removing-{app}"))
}

/// Directories a removal interrupted by a crash left behind (`apps/.removing-*`).
pub fn removal_leftovers(state_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("apps")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(".removing-"))
        .map(|entry| entry.path())
        .collect()
}

/// The apps that have a directory under the state directory, with or without a record
/// (an app whose install failed before anything was journaled has one too).
pub fn app_dirs(state_dir: &Path) -> BTreeSet<AppName> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("apps")) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// Reads every app record under the state directory. An unreadable record is an error:
/// guessing would risk running the wrong release.
pub fn load_all(state_dir: &Path) -> Result<BTreeMap<AppName, AppRecord>, String> {
    let apps = state_dir.join("apps");
    let mut records = BTreeMap::new();
    let entries = match std::fs::read_dir(&apps) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(records),
        Err(error) => return Err(format!("reading {}: {error}", apps.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|error| format!("reading {}: {error}", apps.display()))?;
        let Ok(app) = entry.file_name().to_string_lossy().parse::<AppName>() else {
            continue;
        };
        let path = record_path(state_dir, &app);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let record: AppRecord = serde_json::from_slice(&bytes)
                    .map_err(|error| format!("{}: unreadable ({error})", path.display()))?;
                records.insert(app, record);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(format!("reading {}: {error}", path.display())),
        }
    }
    Ok(records)
}

/// Writes one app's record atomically.
pub fn save(state_dir: &Path, app: &AppName, record: &AppRecord) -> Result<(), drover_protocol::KeyError> {
    let directory = app_dir(state_dir, app);
    std::fs::create_dir_all(&directory).map_err(|source| drover_protocol::KeyError::Io {
        operation: "creating",
        path: directory.clone(),
        source,
    })?;
    let bytes = serde_json::to_vec_pretty(record).expect("app records serialize");
    write_atomic(&record_path(state_dir, app), &bytes, 0o644)
}

/// Points `current` at `releases/<version>` in one step: a new symlink under a temporary
/// name renamed over the old one, then the directory synced.
pub fn switch_current(state_dir: &Path, app: &AppName, version: &Version) -> std::io::Result<()> {
    let directory = app_dir(state_dir, app);
    let temporary = directory.join(".current.tmp");
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    std::os::unix::fs::symlink(Path::new("releases").join(version.as_str()), &temporary)?;
    std::fs::rename(&temporary, current_link(state_dir, app))?;
    std::fs::File::open(&directory)?.sync_all()
}

/// The version `current` points at, if it points at a release.
pub fn read_current(state_dir: &Path, app: &AppName) -> Option<Version> {
    let target = std::fs::read_link(current_link(state_dir, app)).ok()?;
    target.file_name()?.to_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switching_current_replaces_the_link_and_records_round_trip() {
        let root = tempfile::tempdir().expect("tempdir");
        let app: AppName = "web".parse().expect("app");
        std::fs::create_dir_all(app_dir(root.path(), &app).join("releases/1")).expect("mkdir");
        std::fs::create_dir_all(app_dir(root.path(), &app).join("releases/2")).expect("mkdir");
        assert_eq!(read_current(root.path(), &app), None);
        switch_current(root.path(), &app, &"1".parse().expect("version")).expect("switch");
        assert_eq!(read_current(root.path(), &app), Some("1".parse().expect("version")));
        switch_current(root.path(), &app, &"2".parse().expect("version")).expect("switch again");
        assert_eq!(read_current(root.path(), &app), Some("2".parse().expect("version")));
        assert!(current_link(root.path(), &app).join(".").is_dir());

        let mut record = AppRecord::default();
        record.bad.insert("3".parse().expect("version"));
        save(root.path(), &app, &record).expect("save");
        let all = load_all(root.path()).expect("load");
        assert_eq!(all.get(&app), Some(&record));
    }

    #[test]
    fn apps_without_a_record_are_found_and_removal_leftovers_are_not_apps() {
        let root = tempfile::tempdir().expect("tempdir");
        let web: AppName = "web".parse().expect("app");
        std::fs::create_dir_all(app_dir(root.path(), &web)).expect("mkdir");
        std::fs::create_dir_all(removal_dir(root.path(), &"api".parse().expect("app"))).expect("mkdir");
        assert_eq!(
            app_dirs(root.path()),
            BTreeSet::from([web]),
            "no record needed, no leftover counted"
        );
        assert_eq!(
            removal_leftovers(root.path()),
            vec![root.path().join("apps/.removing-api")]
        );
    }

    #[test]
    fn an_unreadable_record_is_an_error_not_a_guess() {
        let root = tempfile::tempdir().expect("tempdir");
        let app: AppName = "web".parse().expect("app");
        std::fs::create_dir_all(app_dir(root.path(), &app)).expect("mkdir");
        std::fs::write(record_path(root.path(), &app), b"{not json").expect("write");
        assert!(load_all(root.path()).expect_err("refused").contains("unreadable"));
    }
}
