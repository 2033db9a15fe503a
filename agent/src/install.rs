//! Installing a release beside the running one, in steps whose types prove them:
//! `fetch -> VerifiedArtifact`, `stage(VerifiedArtifact) -> StagedRelease`, and (with the
//! install loop) `activate(StagedRelease)`.
//!
//! Staging unpacks into `apps/<app>/releases/.staging-<version>-<random>`, syncs every
//! file and directory, and renames the result to `apps/<app>/releases/<version>` in one
//! step. A crash leaves either no release directory or a complete one; leftover
//! `.staging-*` directories are removed by [`clean_staging`] at start.

use std::path::{Path, PathBuf};

use drover_protocol::{AppName, Version};

use crate::fetch::VerifiedArtifact;
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
    /// Local I/O failed.
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StageError {
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
        let archive = std::fs::File::open(artifact.path()).map_err(io("opening", artifact.path()))?;
        let archive = PauseHalfway {
            inner: archive,
            read: 0,
            halfway: artifact.size() / 2,
            state_dir: state_dir.to_path_buf(),
        };
        unpack(std::io::BufReader::with_capacity(256 * 1024, archive), staging, limits)
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
/// the staging directory is deleted. Blocking I/O.
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
    std::fs::create_dir_all(&releases).map_err(io("creating", &releases))?;
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
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result.map(|()| staged)
}

/// A reader that stops at the `mid-unpack` fault point halfway through the archive.
struct PauseHalfway<R> {
    inner: R,
    read: u64,
    halfway: u64,
    state_dir: PathBuf,
}

impl<R: std::io::Read> std::io::Read for PauseHalfway<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
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
) -> std::io::Result<Vec<Version>> {
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
        let doomed = releases.join(format!(".staging-removing-{version}"));
        std::fs::rename(&path, &doomed)?;
        std::fs::remove_dir_all(&doomed)?;
        removed.push(version);
    }
    Ok(removed)
}

/// Removes staging directories an interrupted install left behind.
pub fn clean_staging(state_dir: &Path, app: &AppName) -> std::io::Result<usize> {
    let releases = releases_dir(state_dir, app);
    let entries = match std::fs::read_dir(&releases) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(error),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(".staging-") {
            std::fs::remove_dir_all(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
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
