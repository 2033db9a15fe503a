//! Installing a release beside the running one, in steps whose types prove them:
//! `fetch -> VerifiedArtifact`, `stage(VerifiedArtifact) -> StagedRelease`, and (with the
//! install loop) `activate(StagedRelease)`.
//!
//! Staging unpacks into `apps/<app>/releases/.staging-<version>-<random>`, syncs every
//! file and directory, and renames the result to `apps/<app>/releases/<version>` in one
//! step. A crash leaves either no release directory or a complete one; a failed unpack
//! deletes its staging directory (and says so when that fails), and what a crash left
//! behind (`.staging-*`, and `.removing-*` from an interrupted prune) is removed by
//! [`clean_leftovers`] when the agent starts.
//!
//! Trees are deleted with [`remove_tree`], which works at any depth with one open
//! directory at a time, instead of `std::fs::remove_dir_all`: that holds one open
//! directory per level (it recurses with `openat`), so under systemd's default limit of
//! 1,024 open files a tree 2,000 directories deep fails with "Too many open files", and
//! each retry of such an install used to leave another one behind.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use drover_protocol::{AppName, Version};

use crate::fetch::VerifiedArtifact;
use crate::tarstream::{FreeSpace, MIN_FREE_BYTES, free_space};
use crate::unpack::{UnpackError, UnpackLimits, unpack};

/// Why a release could not be staged. Nothing is left under the release's name.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The archive broke a safe-unpack rule or is corrupt.
    #[error("unpacking {app} {version}: {source}")]
    Unpack {
        app: AppName,
        version: Version,
        #[source]
        source: UnpackError,
    },
    /// An image layer broke a rule of [`crate::oci::layer`] or is corrupt.
    #[error("unpacking {app} {version}: layer {index} ({digest}): {source}")]
    Layer {
        app: AppName,
        version: Version,
        /// 1 for the bottom layer.
        index: usize,
        digest: drover_protocol::Digest,
        #[source]
        source: Box<crate::oci::LayerError>,
    },
    /// The image cannot be run as the spec says (no program, unknown user, ...).
    #[error("staging {app} {version}: {problem}")]
    Image {
        app: AppName,
        version: Version,
        problem: String,
    },
    /// The filesystem has too little space for the release before unpacking starts.
    #[error(
        "staging {app} {version}: the filesystem of {path} has {} bytes free; the release needs at least {needed}: \
         its {compressed} compressed bytes (it unpacks to about that or more) plus the {MIN_FREE_BYTES} the agent \
         leaves free for the host; free space there",
        free.bytes
    )]
    DiskFull {
        app: AppName,
        version: Version,
        path: PathBuf,
        compressed: u64,
        needed: u64,
        free: FreeSpace,
    },
    /// Staging failed, and deleting what it had written failed too: the directory is left
    /// for [`clean_leftovers`] at the next start, and the disk space it holds is not free.
    #[error("{error}; deleting the staging directory failed too, it stays until the agent restarts: {cleanup}")]
    Cleanup {
        error: Box<StageError>,
        #[source]
        cleanup: RemoveError,
    },
    /// Local I/O failed.
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<RemoveError> for StageError {
    fn from(error: RemoveError) -> StageError {
        StageError::Io {
            operation: "removing",
            path: error.path,
            source: error.source,
        }
    }
}

/// A tree could not be deleted; `path` is what failed inside it.
#[derive(Debug, thiserror::Error)]
#[error("removing {}: {source}", path.display())]
pub struct RemoveError {
    /// The file or directory that could not be removed or listed.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// A release unpacked, synced and in place under `releases/<version>`, not yet running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedRelease {
    app: AppName,
    version: Version,
    path: PathBuf,
}

impl StagedRelease {
    /// The app.
    pub fn app(&self) -> &AppName {
        &self.app
    }
    /// The version.
    pub fn version(&self) -> &Version {
        &self.version
    }
    /// The release directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn io(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StageError {
    let path = path.to_path_buf();
    move |source| StageError::Io {
        operation,
        path,
        source,
    }
}

/// The releases directory of an app under the state directory.
pub fn releases_dir(state_dir: &Path, app: &AppName) -> PathBuf {
    state_dir.join("apps").join(app.as_str()).join("releases")
}

/// Unpacks `artifact` as `app` `version` beside the running release. A release directory
/// that already exists is complete (it only ever appears by rename) and is reused.
/// Blocking I/O: call from `spawn_blocking`.
pub fn stage(
    artifact: &VerifiedArtifact,
    state_dir: &Path,
    app: &AppName,
    version: &Version,
    limits: &UnpackLimits,
) -> Result<StagedRelease, StageError> {
    stage_with(state_dir, app, version, |staging| {
        check_free_space(staging, app, version, artifact.size())?;
        let archive = std::fs::File::open(artifact.path()).map_err(io("opening", artifact.path()))?;
        let archive = PauseHalfway {
            inner: archive,
            read: 0,
            halfway: artifact.size() / 2,
            state_dir: state_dir.to_path_buf(),
        };
        unpack(io::BufReader::with_capacity(256 * 1024, archive), staging, limits)
            .map(|_| ())
            .map_err(|source| StageError::Unpack {
                app: app.clone(),
                version: version.clone(),
                source,
            })
    })
}

/// Makes the release directory of `app` `version` with `fill`, which writes the release
/// into the empty staging directory it is given; then syncs the tree and renames it into
/// place. A release directory that already exists is complete and is reused; on error
/// the staging directory is deleted, and if that fails too the error says so
/// ([`StageError::Cleanup`]). Blocking I/O.
pub fn stage_with(
    state_dir: &Path,
    app: &AppName,
    version: &Version,
    fill: impl FnOnce(&Path) -> Result<(), StageError>,
) -> Result<StagedRelease, StageError> {
    let releases = releases_dir(state_dir, app);
    let target = releases.join(version.as_str());
    let staged = StagedRelease {
        app: app.clone(),
        version: version.clone(),
        path: target.clone(),
    };
    if target.is_dir() {
        return Ok(staged);
    }
    // 0711 like every directory above a release (see `crate::local`): apps running as
    // other users pass through by name, no one else lists the versions.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o711)
        .create(&releases)
        .map_err(io("creating", &releases))?;
    let mut random = [0u8; 6];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).expect("system random source");
    let staging = releases.join(format!(".staging-{version}-{}", drover_protocol::hex::encode(&random)));
    std::fs::create_dir(&staging).map_err(io("creating", &staging))?;
    let result = (|| {
        fill(&staging)?;
        sync_tree(&staging)?;
        std::fs::rename(&staging, &target).map_err(io("renaming into place", &target))?;
        sync_dir(&releases)
    })();
    match result {
        Ok(()) => Ok(staged),
        Err(error) => match remove_tree(&staging) {
            Ok(()) => Err(error),
            Err(cleanup) => Err(StageError::Cleanup {
                error: Box::new(error),
                cleanup,
            }),
        },
    }
}

/// Refuses to start unpacking a release of `compressed` bytes into `staging` unless its
/// filesystem has that much free plus [`MIN_FREE_BYTES`] (a compressed release unpacks to
/// about its size or more). The unpackers check again as they write.
pub(crate) fn check_free_space(
    staging: &Path,
    app: &AppName,
    version: &Version,
    compressed: u64,
) -> Result<(), StageError> {
    let free = free_space(staging).map_err(io("checking the free space of", staging))?;
    let needed = compressed.saturating_add(MIN_FREE_BYTES);
    if free.bytes < needed {
        return Err(StageError::DiskFull {
            app: app.clone(),
            version: version.clone(),
            // The releases directory: the staging directory is gone when this is read.
            path: staging.parent().unwrap_or(staging).to_path_buf(),
            compressed,
            needed,
            free,
        });
    }
    Ok(())
}

/// A reader that stops at the `mid-unpack` fault point halfway through the archive.
struct PauseHalfway<R> {
    inner: R,
    read: u64,
    halfway: u64,
    state_dir: PathBuf,
}

impl<R: io::Read> io::Read for PauseHalfway<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buffer)?;
        let before = self.read;
        self.read += count as u64;
        if before < self.halfway && self.read >= self.halfway {
            crate::faults::pause_point("mid-unpack", &self.state_dir);
        }
        Ok(count)
    }
}

/// The versions complete on disk for `app` (`releases/<version>` directories; staging
/// leftovers are not releases).
pub fn staged_versions(state_dir: &Path, app: &AppName) -> std::collections::BTreeSet<Version> {
    let Ok(entries) = std::fs::read_dir(releases_dir(state_dir, app)) else {
        return std::collections::BTreeSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// Deletes `app`'s releases beyond the newest `keep` (by when they were staged), never
/// one in `protected`; returns what it removed. Staging leftovers go too.
pub fn prune(
    state_dir: &Path,
    app: &AppName,
    keep: usize,
    protected: &std::collections::BTreeSet<Version>,
) -> io::Result<Vec<Version>> {
    clean_staging(state_dir, app)?;
    let releases = releases_dir(state_dir, app);
    let mut dated: Vec<(std::time::SystemTime, Version)> = Vec::new();
    for version in staged_versions(state_dir, app) {
        let modified = std::fs::symlink_metadata(releases.join(version.as_str()))?.modified()?;
        dated.push((modified, version));
    }
    // Newest first; the protected ones count towards `keep`.
    dated.sort_by(|a, b| b.cmp(a));
    let mut kept = protected.len();
    let mut removed = Vec::new();
    for (_, version) in dated {
        if protected.contains(&version) {
            continue;
        }
        if kept < keep {
            kept += 1;
            continue;
        }
        let path = releases.join(version.as_str());
        // Rename first so a crash never leaves a half-deleted directory under a release name.
        let doomed = releases.join(format!("{REMOVING_PREFIX}{version}"));
        std::fs::rename(&path, &doomed)?;
        remove_tree(&doomed).map_err(|error| io::Error::new(error.source.kind(), error.to_string()))?;
        removed.push(version);
    }
    Ok(removed)
}

/// The name prefix of a directory being unpacked into.
const STAGING_PREFIX: &str = ".staging-";
/// The name prefix of a release being deleted by [`prune`].
const REMOVING_PREFIX: &str = ".removing-";

/// Removes staging directories an interrupted install left behind, and releases an
/// interrupted prune was deleting.
pub fn clean_staging(state_dir: &Path, app: &AppName) -> io::Result<usize> {
    clean_releases_dir(&releases_dir(state_dir, app))
        .map_err(|error| io::Error::new(error.source.kind(), error.to_string()))
}

/// Removes what crashed installs and prunes left in every app's releases directory
/// (`apps/*/releases/.staging-*` and `.removing-*`) and returns how many trees it deleted.
/// Run once at agent start, before anything is staged: nothing else writes there then.
/// Every leftover is tried; the first failure is returned.
pub fn clean_leftovers(state_dir: &Path) -> Result<usize, StageError> {
    let apps = state_dir.join("apps");
    let entries = match std::fs::read_dir(&apps) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(io("listing", &apps)(error)),
    };
    let mut removed = 0;
    let mut first_error = None;
    for entry in entries {
        let entry = entry.map_err(io("listing", &apps))?;
        if !entry.file_type().map_err(io("inspecting", &entry.path()))?.is_dir() {
            continue;
        }
        match clean_releases_dir(&entry.path().join("releases")) {
            Ok(count) => removed += count,
            Err(error) => {
                first_error.get_or_insert(StageError::from(error));
            }
        }
    }
    match first_error {
        None => Ok(removed),
        Some(error) => Err(error),
    }
}

/// Deletes the `.staging-*` and `.removing-*` trees in one releases directory.
fn clean_releases_dir(releases: &Path) -> Result<usize, RemoveError> {
    let failed = |source| RemoveError {
        path: releases.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(releases) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(failed(error)),
    };
    let mut leftovers = Vec::new();
    for entry in entries {
        let name = entry.map_err(failed)?.file_name();
        let text = name.to_string_lossy();
        if text.starts_with(STAGING_PREFIX) || text.starts_with(REMOVING_PREFIX) {
            leftovers.push(releases.join(&name));
        }
    }
    let mut first_error = None;
    for leftover in &leftovers {
        if let Err(error) = remove_tree(leftover) {
            first_error.get_or_insert(error);
        }
    }
    match first_error {
        None => Ok(leftovers.len()),
        Some(error) => Err(error),
    }
}

/// The longest path (in bytes) [`remove_tree`] walks down to; a directory whose path would
/// be longer is first moved up to the top of the tree. Below `PATH_MAX` (4,096) with room
/// for one more name of up to 255 bytes.
const REMOVE_WALK_BYTES: usize = 3072;
/// The deepest [`remove_tree`] walks below the top before it moves a directory up: every
/// step resolves its path again, so the cost grows with the depth walked.
const REMOVE_WALK_DEPTH: usize = 64;

/// Deletes `root` and everything below it, without following symlinks: at any depth,
/// with one open directory at a time, without recursion, and with paths that stay below
/// `PATH_MAX`. It walks down the first subdirectory it finds, deleting files on the way,
/// and removes each directory once it is empty; a subdirectory whose path would get too
/// long or too deep is first renamed to `root/.removing-deep-<n>`, to be walked from
/// there. Each
/// directory is listed once per subdirectory it has plus once. A directory it cannot
/// list or change is made 0700 once and tried again (needed when not running as root).
///
/// It relies on nothing else writing in the tree meanwhile (staging directories and
/// releases under the agent's root-owned state directory). Nothing there is fine.
pub fn remove_tree(root: &Path) -> Result<(), RemoveError> {
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RemoveError { path, source }
    };
    match std::fs::symlink_metadata(root) {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => return std::fs::remove_file(root).map_err(failed(root)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(failed(root)(error)),
    }
    let mut moved = 0u64;
    let mut current = root.to_path_buf();
    // Levels below `root`.
    let mut depth = 0usize;
    loop {
        match first_subdirectory(&current)? {
            Some(name) => {
                let child = current.join(&name);
                if depth > 0 && (depth >= REMOVE_WALK_DEPTH || child.as_os_str().len() > REMOVE_WALK_BYTES) {
                    let up = loop {
                        let candidate = root.join(format!("{REMOVING_PREFIX}deep-{moved}"));
                        moved += 1;
                        match std::fs::symlink_metadata(&candidate) {
                            Err(error) if error.kind() == io::ErrorKind::NotFound => break candidate,
                            Err(error) => return Err(failed(&candidate)(error)),
                            Ok(_) => {}
                        }
                    };
                    retry_writable(&current, || std::fs::rename(&child, &up)).map_err(failed(&child))?;
                } else {
                    current = child;
                    depth += 1;
                }
            }
            None => {
                match std::fs::remove_dir(&current) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => match current.parent() {
                        Some(parent) if depth > 0 => {
                            retry_writable(parent, || std::fs::remove_dir(&current)).map_err(failed(&current))?
                        }
                        _ => return Err(failed(&current)(error)),
                    },
                }
                if depth == 0 {
                    return Ok(());
                }
                current.pop();
                depth -= 1;
            }
        }
    }
}

/// Deletes every non-directory in `directory` up to its first subdirectory, whose name it
/// returns; `None` once the directory has nothing but is left.
fn first_subdirectory(directory: &Path) -> Result<Option<std::ffi::OsString>, RemoveError> {
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RemoveError { path, source }
    };
    let entries = retry_writable(directory, || std::fs::read_dir(directory)).map_err(failed(directory))?;
    for entry in entries {
        let entry = entry.map_err(failed(directory))?;
        // The type from the directory entry (`lstat` where the filesystem does not give
        // it): a symlink is removed itself, never followed.
        let kind = entry.file_type().map_err(failed(&entry.path()))?;
        if kind.is_dir() {
            return Ok(Some(entry.file_name()));
        }
        let path = entry.path();
        match retry_writable(directory, || std::fs::remove_file(&path)) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(failed(&path)(error)),
        }
    }
    Ok(None)
}

/// Runs `operation` in `directory`; if it is refused for permissions, makes the directory
/// 0700 (a real directory reached without symlinks) and runs it once more.
fn retry_writable<T>(directory: &Path, mut operation: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    match operation() {
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            std::fs::set_permissions(directory, std::fs::Permissions::from_mode(0o700))?;
            operation()
        }
        other => other,
    }
}

/// fsyncs every regular file and directory under `root` (symlinks are not followed).
pub fn sync_tree(root: &Path) -> Result<(), StageError> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).map_err(io("reading", &directory))? {
            let entry = entry.map_err(io("reading", &directory))?;
            let kind = entry.file_type().map_err(io("reading", &entry.path()))?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let path = entry.path();
                std::fs::File::open(&path)
                    .and_then(|file| file.sync_all())
                    .map_err(io("syncing", &path))?;
            }
        }
        sync_dir(&directory)?;
    }
    Ok(())
}

fn sync_dir(directory: &Path) -> Result<(), StageError> {
    std::fs::File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(io("syncing", directory))
}
