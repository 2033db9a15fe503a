//! What the agent knows about the apps on this host, kept in `<state>/apps/<app>/app.json`
//! and written atomically (write, fsync, rename) before every step that changes the
//! host. It is the install journal: an `activation` on disk means a switch was started
//! and not finished, so the next start redoes it (forward to the new release, or on with
//! the rollback) instead of guessing what the host runs.
//!
//! ```text
//! <state>/                     0711: every user may pass through, no one else may list
//!   apps/                      0711
//!   apps/<app>/                0711
//!     app.json                 this file (0600: it holds the spec, secrets included)
//!     environment              the unit's EnvironmentFile= (0600, root's)
//!     current -> releases/<v>  the release the unit runs (switched by rename)
//!     releases/<v>/            complete releases (they appear only by rename)
//! ```
//!
//! **Invariant:** a file that holds a spec or a value from one (this record, the
//! environment file, the accepted manifest, the status file) is readable by root only; an
//! app's config files belong to the user the app runs as, with the mode the spec gave them.
//! The directories above a release are 0711 so that an app running as another user (or as
//! a systemd `DynamicUser`) reaches its release through `current` by name without anyone
//! listing what else is there. [`restrict_state_dir`] puts an existing state directory
//! (an older agent wrote these 0644 under a 0755 root) in that shape at every start.

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

/// The environment file of an app's unit (`EnvironmentFile=`): written 0600 by root at each
/// activation and rollback with the unit that names it, see [`crate::unit::render_environment`].
pub fn environment_file(state_dir: &Path, app: &AppName) -> PathBuf {
    app_dir(state_dir, app).join("environment")
}

/// Files directly in the state directory that hold a manifest (so every app's spec) or
/// what came of one, from this agent or an older one: readable by root only.
const PRIVATE_STATE_FILES: [&str; 3] = ["manifest.dsse", "accepted.json", "status.json"];

/// Puts the state directory in the shape of the module doc, whatever an older agent left:
/// the root, `apps/`, each app's directory and its `releases/` 0711, each app's record
/// and environment file and [`PRIVATE_STATE_FILES`] 0600. Idempotent; symlinks are never
/// followed (a symlink where a file should be is left alone). Returns how many modes it
/// changed; the first failure is an error, after every other path was tried.
pub fn restrict_state_dir(state_dir: &Path) -> Result<usize, String> {
    let mut changed = 0;
    let mut first_error: Option<String> = None;
    let mut restrict = |path: &Path, mode: u32, directory: bool| {
        let Ok(metadata) = std::fs::symlink_metadata(path) else {
            return;
        };
        let kind = metadata.file_type();
        if (directory && !kind.is_dir()) || (!directory && !kind.is_file()) {
            return;
        }
        use std::os::unix::fs::PermissionsExt as _;
        if metadata.permissions().mode() & 0o7777 == mode {
            return;
        }
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            Ok(()) => changed += 1,
            Err(error) => {
                first_error.get_or_insert_with(|| format!("making {} mode {mode:o}: {error}", path.display()));
            }
        }
    };
    restrict(state_dir, 0o711, true);
    for name in PRIVATE_STATE_FILES {
        restrict(&state_dir.join(name), 0o600, false);
    }
    let apps = state_dir.join("apps");
    restrict(&apps, 0o711, true);
    for app in app_dirs(state_dir) {
        let directory = app_dir(state_dir, &app);
        restrict(&directory, 0o711, true);
        restrict(&directory.join("releases"), 0o711, true);
        restrict(&record_path(state_dir, &app), 0o600, false);
        restrict(&environment_file(state_dir, &app), 0o600, false);
    }
    match first_error {
        None => Ok(changed),
        Some(error) => Err(error),
    }
}

/// Creates an app's directory (and `apps/`) 0711 if missing: see the module doc.
pub fn create_app_dir(state_dir: &Path, app: &AppName) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    let directory = app_dir(state_dir, app);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&directory)?;
    Ok(directory)
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

/// Writes one app's record atomically, 0600.
pub fn save(state_dir: &Path, app: &AppName, record: &AppRecord) -> Result<(), drover_protocol::KeyError> {
    create_app_dir(state_dir, app).map_err(|source| drover_protocol::KeyError::Io {
        operation: "creating",
        path: app_dir(state_dir, app),
        source,
    })?;
    let bytes = serde_json::to_vec_pretty(record).expect("app records serialize");
    // It holds the spec of every release it names, secrets included: root only.
    write_atomic(&record_path(state_dir, app), &bytes, 0o600)
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

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::symlink_metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    #[test]
    fn records_are_root_only_and_app_directories_traversable_not_listable() {
        let root = tempfile::tempdir().expect("tempdir");
        let app: AppName = "web".parse().expect("app");
        save(root.path(), &app, &AppRecord::default()).expect("save");
        assert_eq!(
            mode(&record_path(root.path(), &app)),
            0o600,
            "the record holds the spec"
        );
        assert_eq!(mode(&app_dir(root.path(), &app)), 0o711);
        assert_eq!(mode(&root.path().join("apps")), 0o711);
    }

    #[test]
    fn an_older_agents_world_readable_state_is_restricted_at_start_and_again_changes_nothing() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().expect("tempdir");
        let state = root.path().join("state");
        let set = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        // What an older agent left: everything 0644 under 0755 directories.
        let app: AppName = "web".parse().expect("app");
        let release = app_dir(&state, &app).join("releases/1");
        std::fs::create_dir_all(&release).expect("mkdir");
        for directory in [
            state.clone(),
            state.join("apps"),
            app_dir(&state, &app),
            release.join(".."),
        ] {
            set(&directory, 0o755);
        }
        for file in [
            state.join("manifest.dsse"),
            state.join("accepted.json"),
            state.join("status.json"),
            record_path(&state, &app),
            environment_file(&state, &app),
            release.join("VERSION"),
        ] {
            std::fs::write(&file, b"{}").expect("write");
            set(&file, 0o644);
        }
        // A symlink where a record should be is not followed.
        let other: AppName = "api".parse().expect("app");
        std::fs::create_dir_all(app_dir(&state, &other)).expect("mkdir");
        let outside = root.path().join("outside");
        std::fs::write(&outside, b"x").expect("write");
        set(&outside, 0o644);
        std::os::unix::fs::symlink(&outside, record_path(&state, &other)).expect("symlink");

        // The root, apps/, web, web/releases, api, three state files, web's record and environment.
        assert_eq!(restrict_state_dir(&state), Ok(10));
        for directory in [
            state.clone(),
            state.join("apps"),
            app_dir(&state, &app),
            release.join(".."),
        ] {
            assert_eq!(mode(&directory), 0o711, "{}", directory.display());
        }
        for file in ["manifest.dsse", "accepted.json", "status.json"] {
            assert_eq!(mode(&state.join(file)), 0o600, "{file}");
        }
        assert_eq!(mode(&record_path(&state, &app)), 0o600);
        assert_eq!(mode(&environment_file(&state, &app)), 0o600);
        assert_eq!(mode(&release), 0o755, "a release stays readable by the app's user");
        assert_eq!(
            mode(&release.join("VERSION")),
            0o644,
            "files of a release keep their mode"
        );
        assert_eq!(mode(&outside), 0o644, "the symlink was not followed");
        assert_eq!(restrict_state_dir(&state), Ok(0), "idempotent");
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
