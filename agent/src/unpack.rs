//! Unpacking a verified release tarball (tar.gz) into an empty staging directory under the
//! rules of SPEC.md §3 "Archives": nothing is written outside the staging directory; no
//! absolute paths, no `..`, nothing written through a symlink; no symlink or hard link that
//! leads outside; no device nodes, fifos or other special files; setuid, setgid and sticky
//! bits stripped unless the app spec allows them; entry paths at most
//! [`MAX_PATH_DEPTH`] components and [`MAX_PATH_BYTES`] bytes deep and long; and the
//! unpacked size, the number of entries, the compression ratio
//! ([`MAX_COMPRESSION_RATIO`]) and the archive's own metadata bounded while decompressing,
//! so a gzip bomb stops at the limit instead of at the size its headers claim. Unpacking
//! stops while [`MIN_FREE_BYTES`] are still free on the filesystem. These rules are the
//! ones [`crate::oci::layer`] applies too (they are written once, in `tarstream`).
//!
//! The archive is treated as hostile even though its sha256 was verified: the digest proves
//! who published it, not that the build that made it was careful. The checks are lexical
//! and rely on this function being the only writer in the staging directory (it lives in
//! the agent's root-owned state directory): everything it creates is recorded, a path is
//! walked only through directories it created itself, and no existing file is ever
//! followed, replaced or removed. That is why it needs neither `unsafe` nor `openat`.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::read::MultiGzDecoder;
use tar::EntryType;
use thiserror::Error;

use crate::tarstream::{
    CompressedCounter, CountCompressed, LeadingSlash, MetadataMeter, Metered, PathProblem, SpaceProblem, SpaceWatch,
    TarStreamError, check_end, corrupt_header, entry_path, header_mode, position, quote, stream_error,
};
pub use crate::tarstream::{
    DiskFull, FreeSpace, MAX_COMPRESSION_RATIO, MAX_NAME_BYTES, MAX_PATH_BYTES, MAX_PATH_DEPTH, MIN_FREE_BYTES,
    MIN_FREE_INODES, PathLimit, RATIO_EXEMPT_BYTES, RatioExceeded, free_space,
};

/// Default bound on the bytes of all unpacked files together (8 GiB).
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 8 << 30;
/// Default bound on the number of entries (archive members plus directories they imply).
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

/// Modification times after 9999-12-31T23:59:59Z are not kept (not every filesystem can store them).
pub(crate) const LATEST_MTIME: u64 = 253_402_300_799;
/// Read size when copying file data.
pub(crate) const COPY_BUFFER: usize = 64 << 10;

/// What happens to setuid, setgid and sticky bits found in the archive. The spec's
/// `sandbox.allow_setuid` decides; stripping is the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpecialBits {
    /// Clear setuid, setgid and sticky bits (the default).
    #[default]
    Strip,
    /// Keep them as the archive says (`allow_setuid = true` in the app spec).
    Keep,
}

impl SpecialBits {
    /// The policy for an app spec's `sandbox.allow_setuid`.
    pub fn from_allow_setuid(allow_setuid: bool) -> SpecialBits {
        if allow_setuid {
            SpecialBits::Keep
        } else {
            SpecialBits::Strip
        }
    }

    /// The permission bits to give an entry whose header says `mode`. The archive's own
    /// bits are used as they are (no group or other bit is ever added), so the umask has no
    /// say; file type bits some archivers put into the field are dropped.
    pub(crate) fn apply(self, mode: u32) -> u32 {
        match self {
            SpecialBits::Strip => mode & 0o777,
            SpecialBits::Keep => mode & 0o7777,
        }
    }
}

/// Bounds and policy for one unpack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of all regular files together, counted as they are written (hard links add nothing).
    pub max_total_bytes: u64,
    /// Archive members plus the directories they imply without listing them.
    pub max_entries: u64,
    /// Whether setuid, setgid and sticky bits survive.
    pub special_bits: SpecialBits,
}

impl Default for UnpackLimits {
    fn default() -> UnpackLimits {
        UnpackLimits {
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            special_bits: SpecialBits::Strip,
        }
    }
}

/// What an unpack created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackSummary {
    /// Regular files written.
    pub files: u64,
    /// Directories created, listed in the archive or implied by a path.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created (to files unpacked earlier).
    pub hardlinks: u64,
    /// Bytes written into regular files.
    pub bytes: u64,
}

/// Why an archive was not unpacked. Paths named by the archive are quoted as the archive
/// spells them, with control characters escaped and long names shortened, so every message
/// is one line that a hostile archive cannot use to forge log lines.
#[derive(Debug, Error)]
pub enum UnpackError {
    /// The staging directory is not an empty real directory.
    #[error("staging directory {path}: {problem}")]
    Staging { path: PathBuf, problem: &'static str },
    /// An entry path starts with `/`.
    #[error("archive entry '{path}': absolute paths are refused; entries must be relative to the release directory")]
    AbsolutePath { path: String },
    /// An entry path has a `..` component (even one that would stay inside).
    #[error("archive entry '{path}': paths with a `..` component are refused")]
    ParentComponent { path: String },
    /// An entry path is too deep or too long ([`MAX_PATH_DEPTH`], [`MAX_PATH_BYTES`],
    /// [`MAX_NAME_BYTES`]).
    #[error("archive entry '{path}': its path {limit}; such archives are refused")]
    PathLimit { path: String, limit: PathLimit },
    /// An entry other than a directory names the release directory itself (`""`, `.`, `./`).
    #[error("archive entry '{path}': names the release directory itself, which only a directory entry may do")]
    EmptyPath { path: String },
    /// A parent of the entry is a symlink unpacked earlier.
    #[error("archive entry '{path}': its parent '{symlink}' is a symlink; nothing is written through symlinks")]
    ThroughSymlink { path: String, symlink: String },
    /// A parent of the entry is a file unpacked earlier.
    #[error("archive entry '{path}': its parent '{parent}' is not a directory")]
    ThroughNonDirectory { path: String, parent: String },
    /// A symlink with an absolute target.
    #[error(
        "archive entry '{path}': symlink target '{target}' is absolute; symlinks must stay inside the release directory"
    )]
    SymlinkAbsolute { path: String, target: String },
    /// A symlink whose relative target leaves the release directory, or could.
    #[error("archive entry '{path}': symlink target '{target}' {problem}")]
    SymlinkEscape {
        path: String,
        target: String,
        problem: &'static str,
    },
    /// A hard link whose target is absolute or has a `..` component.
    #[error("archive entry '{path}': hard link target '{target}' is outside the release directory")]
    HardlinkOutside { path: String, target: String },
    /// A hard link to a path no earlier entry created.
    #[error("archive entry '{path}': hard link target '{target}' is not a file unpacked earlier in the archive")]
    HardlinkMissing { path: String, target: String },
    /// A hard link to a directory or symlink.
    #[error("archive entry '{path}': hard link target '{target}' is not a regular file")]
    HardlinkNotAFile { path: String, target: String },
    /// A device node, fifo or any other type that is not a file, directory or link.
    #[error(
        "archive entry '{path}': {kind} entries are refused; only regular files, directories, symlinks and hard links are unpacked"
    )]
    UnsupportedType { path: String, kind: String },
    /// A second entry for a path an earlier entry already created.
    #[error(
        "archive entry '{path}': an earlier entry already created this path; archives with duplicate entries are refused"
    )]
    Duplicate { path: String },
    /// The files together would exceed `max_total_bytes`.
    #[error("archive entry '{path}': the release unpacks to more than the limit of {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    /// The archive unpacks to more than [`MAX_COMPRESSION_RATIO`] times its compressed size.
    #[error("archive entry '{path}': {ratio}")]
    CompressionRatio { path: String, ratio: RatioExceeded },
    /// The filesystem is too full to go on ([`MIN_FREE_BYTES`], [`MIN_FREE_INODES`]).
    #[error("archive entry '{path}': {full}")]
    DiskFull { path: String, full: Box<DiskFull> },
    /// More than `max_entries` members and implied directories.
    #[error(
        "archive entry '{path}': the archive has more than the limit of {limit} entries (counting directories its paths imply)"
    )]
    TooManyEntries { path: String, limit: u64 },
    /// Headers, long names or pax records beyond what any sane archive needs.
    #[error("the archive's headers, long names or pax records exceed the metadata limit {context}")]
    MetadataTooLarge { context: String },
    /// The gzip or tar stream is truncated, corrupt, or has data after its end.
    #[error("the archive is truncated or corrupt {context}: {detail}")]
    Corrupt { context: String, detail: String },
    /// Creating or writing something in the staging directory failed.
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl From<TarStreamError> for UnpackError {
    fn from(error: TarStreamError) -> UnpackError {
        match error {
            TarStreamError::MetadataTooLarge { context } => UnpackError::MetadataTooLarge { context },
            TarStreamError::Corrupt { context, detail } => UnpackError::Corrupt { context, detail },
        }
    }
}

/// Unpacks the tar.gz `archive` into `staging`, which must be an existing, empty, real
/// directory (not a symlink) that no other process writes to while this runs.
///
/// Only regular files, directories, symlinks and hard links are created, each at a path
/// checked to stay inside `staging`, and nothing outside `staging` is ever written, even
/// when this fails. Files are created with `O_CREAT|O_EXCL`, so nothing that exists is
/// followed or overwritten; parents are created as real directories and never walked
/// through a symlink; a path is created at most once (duplicates are refused).
///
/// Modes come from the archive (setuid, setgid and sticky bits as `limits.special_bits`
/// says); directories are made 0755 and get their mode at the end, so a read-only
/// directory can still be filled. Ownership is not changed: everything belongs to the
/// agent's user (root), whatever uid, gid or names the archive records, as files of a
/// package do; a service that needs to write gets a state directory, not its release.
/// Modification times of regular files are kept; directories and symlinks get the time of
/// unpacking. Nothing is fsynced: the caller syncs the tree before switching to it.
///
/// The stream must be a complete gzip (CRC and length checked) holding a complete tar
/// archive (end-of-archive marker present, only zeros after it).
///
/// On error `staging` may hold part of the release and the caller must delete it
/// ([`crate::install::remove_tree`], which does not follow symlinks and works at any
/// depth). This does blocking I/O; call it from `spawn_blocking`.
pub fn unpack(archive: impl Read, staging: &Path, limits: &UnpackLimits) -> Result<UnpackSummary, UnpackError> {
    check_staging(staging)?;
    let meter = MetadataMeter::default();
    meter.stream_started();
    let compressed = CompressedCounter::default();
    let mut archive = tar::Archive::new(Metered {
        inner: MultiGzDecoder::new(CountCompressed {
            inner: archive,
            counter: &compressed,
        }),
        meter: &meter,
    });
    let mut unpacker = Unpacker {
        staging,
        limits,
        meter: &meter,
        compressed: &compressed,
        space: SpaceWatch::new(staging, 0),
        nodes: HashMap::new(),
        objects: 0,
        summary: UnpackSummary::default(),
        buffer: vec![0; COPY_BUFFER],
    };
    let mut last_entry: Option<String> = None;
    let entries = archive
        .entries()
        .map_err(|error| stream_error(&meter, position(None), error))?;
    for entry in entries {
        let mut entry = entry.map_err(|error| stream_error(&meter, position(last_entry.as_deref()), error))?;
        meter.entry_started();
        let name = quote(&entry.path_bytes());
        unpacker.add(&mut entry, &name)?;
        last_entry = Some(name);
    }
    check_end(
        archive.into_inner(),
        &mut unpacker.buffer,
        &meter,
        position(last_entry.as_deref()),
    )?;
    unpacker.finish()
}

/// What the unpacker created at a path (relative to staging, normalized).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    /// A directory; `mode` is `None` while no archive entry has listed it.
    Dir {
        mode: Option<u32>,
    },
    /// A regular file, or a hard link to one.
    File,
    Symlink,
}

/// The state of one unpack.
struct Unpacker<'a> {
    staging: &'a Path,
    limits: &'a UnpackLimits,
    meter: &'a MetadataMeter,
    /// Compressed bytes read, for the ratio limit.
    compressed: &'a CompressedCounter,
    /// Free space on the staging directory's filesystem.
    space: SpaceWatch<'a>,
    /// Everything created so far. Staging started empty and this is its only writer, so
    /// this map is what the staging directory holds.
    nodes: HashMap<PathBuf, Node>,
    /// Archive members plus implied directories, for `max_entries`.
    objects: u64,
    summary: UnpackSummary,
    buffer: Vec<u8>,
}

impl Unpacker<'_> {
    fn add<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<(), UnpackError> {
        self.count_object(name)?;
        let entry_type = entry.header().entry_type();
        match entry_type {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link => {}
            // A pax global header (`git archive` writes one with the commit id) holds
            // defaults for later entries; the tar crate does not apply them and neither
            // does this, so every entry is judged by its own header and pax records.
            EntryType::XGlobalHeader => return Ok(()),
            other => {
                return Err(UnpackError::UnsupportedType {
                    path: name.to_owned(),
                    kind: describe(other),
                });
            }
        }
        let relative = relative_path(&entry.path_bytes()).map_err(|problem| match problem {
            PathProblem::Absolute => UnpackError::AbsolutePath { path: name.to_owned() },
            PathProblem::ParentDir => UnpackError::ParentComponent { path: name.to_owned() },
            PathProblem::Limit(limit) => UnpackError::PathLimit {
                path: name.to_owned(),
                limit,
            },
        })?;
        self.check_space(name)?;
        if relative.as_os_str().is_empty() {
            // `./` (as `tar -C dir .` writes) names staging itself, whose mode is the
            // caller's to choose.
            return match entry_type {
                EntryType::Directory => Ok(()),
                _ => Err(UnpackError::EmptyPath { path: name.to_owned() }),
            };
        }
        // Duplicates are refused rather than "the last one wins" as tar does. Replacing
        // means removing what an earlier entry made, and the classic attack is exactly
        // that: a directory checked for its children, then the same name as a symlink
        // pointing elsewhere, then a file "inside" it. It would also let what
        // `tar -tvf` shows an auditor first differ from what runs, and extractors do not
        // agree on which copy wins. Only a directory that earlier paths implied may be
        // listed afterwards (its entry carries the mode).
        match self.nodes.get(&relative) {
            None => {}
            Some(Node::Dir { mode: None }) if entry_type == EntryType::Directory => {}
            Some(_) => return Err(UnpackError::Duplicate { path: name.to_owned() }),
        }
        self.create_parents(&relative, name)?;
        match entry_type {
            EntryType::Directory => self.directory(entry, relative, name),
            EntryType::Symlink => self.symlink(entry, relative, name),
            EntryType::Link => self.hardlink(entry, relative, name),
            _ => self.file(entry, relative, name),
        }
    }

    /// Stops while the filesystem still has [`MIN_FREE_BYTES`] and [`MIN_FREE_INODES`]
    /// free (looked at every few MiB written and every few thousand entries).
    fn check_space(&self, name: &str) -> Result<(), UnpackError> {
        self.space
            .check(self.summary.bytes, self.objects)
            .map_err(|problem| match problem {
                SpaceProblem::Full(full) => UnpackError::DiskFull {
                    path: name.to_owned(),
                    full: Box::new(full),
                },
                SpaceProblem::Statvfs { directory, source } => UnpackError::Io {
                    operation: "checking the free space of",
                    path: directory,
                    source,
                },
            })
    }

    fn count_object(&mut self, name: &str) -> Result<(), UnpackError> {
        self.objects += 1;
        if self.objects > self.limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                path: name.to_owned(),
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    /// Makes every parent of `relative` a real directory, creating missing ones (0755),
    /// and refuses to go through a symlink or a file.
    fn create_parents(&mut self, relative: &Path, name: &str) -> Result<(), UnpackError> {
        let Some(parent) = relative.parent() else {
            return Ok(());
        };
        let mut prefix = PathBuf::new();
        for component in parent.components() {
            prefix.push(component);
            match self.nodes.get(&prefix) {
                // Created by this unpack as a real directory; nothing here ever replaces
                // or removes anything, so it still is one.
                Some(Node::Dir { .. }) => continue,
                Some(Node::Symlink) => {
                    return Err(UnpackError::ThroughSymlink {
                        path: name.to_owned(),
                        symlink: quote(prefix.as_os_str().as_bytes()),
                    });
                }
                Some(Node::File) => {
                    return Err(UnpackError::ThroughNonDirectory {
                        path: name.to_owned(),
                        parent: quote(prefix.as_os_str().as_bytes()),
                    });
                }
                None => {}
            }
            let full = self.staging.join(&prefix);
            // Not created by this unpack, so it should not exist; look without following.
            match fs::symlink_metadata(&full) {
                Ok(metadata) if metadata.file_type().is_symlink() => {
                    return Err(UnpackError::ThroughSymlink {
                        path: name.to_owned(),
                        symlink: quote(prefix.as_os_str().as_bytes()),
                    });
                }
                Ok(_) => {
                    return Err(io_error(
                        "creating directory",
                        &full,
                        io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "exists but this unpack did not create it; is something else writing to the staging directory?",
                        ),
                    ));
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error("inspecting", &full, error)),
            }
            self.count_object(name)?;
            create_dir(&full)?;
            self.nodes.insert(prefix.clone(), Node::Dir { mode: None });
            self.summary.dirs += 1;
        }
        Ok(())
    }

    fn directory<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        relative: PathBuf,
        name: &str,
    ) -> Result<(), UnpackError> {
        let mode = self.limits.special_bits.apply(header_mode(entry, name)?);
        if let Some(Node::Dir { mode: listed }) = self.nodes.get_mut(&relative) {
            *listed = Some(mode);
            return Ok(());
        }
        create_dir(&self.staging.join(&relative))?;
        self.nodes.insert(relative, Node::Dir { mode: Some(mode) });
        self.summary.dirs += 1;
        Ok(())
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        relative: PathBuf,
        name: &str,
    ) -> Result<(), UnpackError> {
        let target = entry
            .link_name_bytes()
            .map(|target| target.into_owned())
            .unwrap_or_default();
        check_symlink_target(&relative, &target).map_err(|problem| match problem {
            SymlinkProblem::Absolute => UnpackError::SymlinkAbsolute {
                path: name.to_owned(),
                target: quote(&target),
            },
            SymlinkProblem::Escapes(problem) => UnpackError::SymlinkEscape {
                path: name.to_owned(),
                target: quote(&target),
                problem,
            },
        })?;
        let full = self.staging.join(&relative);
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &full)
            .map_err(|error| io_error("creating symlink", &full, error))?;
        self.nodes.insert(relative, Node::Symlink);
        self.summary.symlinks += 1;
        Ok(())
    }

    /// A hard link, to a regular file unpacked earlier. Tar names the target from the
    /// archive root, not from the link's directory.
    fn hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        relative: PathBuf,
        name: &str,
    ) -> Result<(), UnpackError> {
        let raw_target = entry
            .link_name_bytes()
            .map(|target| target.into_owned())
            .unwrap_or_default();
        let target = relative_path(&raw_target).map_err(|problem| match problem {
            PathProblem::Absolute | PathProblem::ParentDir => UnpackError::HardlinkOutside {
                path: name.to_owned(),
                target: quote(&raw_target),
            },
            // No entry can have made a file at such a path.
            PathProblem::Limit(_) => UnpackError::HardlinkMissing {
                path: name.to_owned(),
                target: quote(&raw_target),
            },
        })?;
        match self.nodes.get(&target) {
            Some(Node::File) => {}
            Some(Node::Dir { .. } | Node::Symlink) => {
                return Err(UnpackError::HardlinkNotAFile {
                    path: name.to_owned(),
                    target: quote(&raw_target),
                });
            }
            None if target.as_os_str().is_empty() => {
                return Err(UnpackError::HardlinkNotAFile {
                    path: name.to_owned(),
                    target: quote(&raw_target),
                });
            }
            None => {
                return Err(UnpackError::HardlinkMissing {
                    path: name.to_owned(),
                    target: quote(&raw_target),
                });
            }
        }
        let full = self.staging.join(&relative);
        fs::hard_link(self.staging.join(&target), &full)
            .map_err(|error| io_error("creating hard link", &full, error))?;
        self.nodes.insert(relative, Node::File);
        self.summary.hardlinks += 1;
        Ok(())
    }

    /// A regular file: created exclusively (0600 until it is complete), its data counted
    /// against `max_total_bytes` as it is written, then given its mode and mtime through
    /// the open handle.
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        relative: PathBuf,
        name: &str,
    ) -> Result<(), UnpackError> {
        let mode = self.limits.special_bits.apply(header_mode(entry, name)?);
        let mtime = entry.header().mtime().map_err(|error| corrupt_header(name, &error))?;
        let full = self.staging.join(&relative);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&full)
            .map_err(|error| io_error("creating", &full, error))?;
        self.nodes.insert(relative, Node::File);
        loop {
            // Data bytes count against `max_total_bytes`, not the metadata limit.
            self.meter.set_in_data(true);
            let read = entry.read(&mut self.buffer);
            self.meter.set_in_data(false);
            let count = match read {
                Ok(0) => break,
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    return Err(stream_error(self.meter, format!("in the data of entry '{name}'"), error).into());
                }
            };
            let total = self.summary.bytes + count as u64;
            if total > self.limits.max_total_bytes {
                return Err(UnpackError::TooLarge {
                    path: name.to_owned(),
                    limit: self.limits.max_total_bytes,
                });
            }
            if let Err(ratio) = self.compressed.check(total) {
                return Err(UnpackError::CompressionRatio {
                    path: name.to_owned(),
                    ratio,
                });
            }
            file.write_all(&self.buffer[..count])
                .map_err(|error| io_error("writing", &full, error))?;
            self.summary.bytes = total;
            self.check_space(name)?;
        }
        // After the data: writing as non-root would clear setuid again.
        set_mode(&file, mode, &full)?;
        if mtime <= LATEST_MTIME {
            file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime))
                .map_err(|error| io_error("setting the modification time of", &full, error))?;
        }
        self.summary.files += 1;
        Ok(())
    }

    /// Gives every directory its mode: listed ones the archive's, implied ones 0755
    /// whatever the umask. Deepest first, so that a parent made unsearchable (0600, say)
    /// cannot stop a non-root agent from reaching what is below it.
    fn finish(self) -> Result<UnpackSummary, UnpackError> {
        let mut dirs: Vec<(&PathBuf, u32)> = self
            .nodes
            .iter()
            .filter_map(|(path, node)| match node {
                Node::Dir { mode } => Some((path, mode.unwrap_or(0o755))),
                Node::File | Node::Symlink => None,
            })
            .collect();
        dirs.sort_by_key(|(path, _)| Reverse(path.components().count()));
        for (path, mode) in dirs {
            // By path: every component is a real directory this unpack created.
            let full = self.staging.join(path);
            fs::set_permissions(&full, Permissions::from_mode(mode))
                .map_err(|error| io_error("setting the mode of", &full, error))?;
        }
        Ok(self.summary)
    }
}

/// Refuses a staging path that is a symlink, not a directory, or not empty.
fn check_staging(staging: &Path) -> Result<(), UnpackError> {
    let metadata = fs::symlink_metadata(staging).map_err(|error| io_error("inspecting", staging, error))?;
    if !metadata.is_dir() {
        return Err(UnpackError::Staging {
            path: staging.to_path_buf(),
            problem: "is not a directory (a symlink to one is refused too)",
        });
    }
    let mut listing = fs::read_dir(staging).map_err(|error| io_error("listing", staging, error))?;
    if listing.next().is_some() {
        return Err(UnpackError::Staging {
            path: staging.to_path_buf(),
            problem: "is not empty; an archive is only unpacked into a fresh directory",
        });
    }
    Ok(())
}

/// The archive path as a normalized relative path (`.` components and repeated slashes
/// dropped; empty for the release directory itself) under the shared path rules; a
/// leading `/` is refused.
fn relative_path(raw: &[u8]) -> Result<PathBuf, PathProblem> {
    entry_path(raw, LeadingSlash::Refuse)
}

/// Why a symlink target is refused.
enum SymlinkProblem {
    Absolute,
    Escapes(&'static str),
}

/// Checks a symlink target lexically from the link's directory. `..` may only come first
/// (`../lib/x`) and must not climb above the release directory. A `..` after a name
/// (`a/../b`) is refused even when it looks harmless: if `a` is itself a symlink, the
/// kernel goes up from where `a` points, so `d/up -> ..` and then `x -> d/up/..` would
/// lead out of the release directory although each looks inside. With leading `..` only,
/// every link climbs from the real directory holding it, which this unpack created, so
/// no chain of links can leave.
fn check_symlink_target(link: &Path, target: &[u8]) -> Result<(), SymlinkProblem> {
    if target.is_empty() {
        return Err(SymlinkProblem::Escapes("is empty"));
    }
    if target[0] == b'/' {
        return Err(SymlinkProblem::Absolute);
    }
    let mut depth = link.components().count().saturating_sub(1);
    let mut descended = false;
    for component in target.split(|&byte| byte == b'/') {
        match component {
            b"" | b"." => {}
            b".." if descended => {
                return Err(SymlinkProblem::Escapes(
                    "has `..` after a name, which could lead outside the release directory through another symlink",
                ));
            }
            b".." => {
                depth = depth
                    .checked_sub(1)
                    .ok_or(SymlinkProblem::Escapes("leads outside the release directory"))?;
            }
            _ => descended = true,
        }
    }
    Ok(())
}

/// A real directory, 0755 (before the umask) until `finish` gives it its mode. Fails if
/// anything exists at `path`, a symlink included.
fn create_dir(path: &Path) -> Result<(), UnpackError> {
    DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(|error| io_error("creating directory", path, error))
}

fn set_mode(file: &File, mode: u32, path: &Path) -> Result<(), UnpackError> {
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(|error| io_error("setting the mode of", path, error))
}

fn io_error(operation: &'static str, path: &Path, source: io::Error) -> UnpackError {
    UnpackError::Io {
        operation,
        path: quote(path.as_os_str().as_bytes()),
        source,
    }
}

/// A name for an entry type this unpacker refuses.
pub(crate) fn describe(entry_type: EntryType) -> String {
    match entry_type {
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "fifo".into(),
        other => format!("type '{}'", quote(&[other.as_byte()])),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt as _;

    use flate2::Compression;
    use flate2::write::GzEncoder;
    use tar::Header;

    use super::*;

    const MTIME: u64 = 1_700_000_000;

    /// Makes an archive for a table of cases.
    type BuildTarball = fn() -> Tarball;
    /// Makes an archive aimed at a sandbox's `outside` directory.
    type BuildHostile = fn(&Sandbox) -> Tarball;

    /// Builds tar archives entry by entry. Names and link targets are written straight
    /// into the header bytes, past the tar crate's own checks, so hostile ones get through.
    struct Tarball {
        builder: tar::Builder<Vec<u8>>,
    }

    fn tarball() -> Tarball {
        Tarball {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(entry_type: EntryType, mode: u32, size: usize) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(entry_type);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header.set_size(size as u64);
        header
    }

    impl Tarball {
        fn raw(mut self, path: &[u8], entry_type: EntryType, mode: u32, link: &[u8], data: &[u8]) -> Tarball {
            let mut header = header(entry_type, mode, data.len());
            assert!(
                path.len() <= 100 && link.len() <= 100,
                "use long_file / pax_file for long names"
            );
            header.as_old_mut().name[..path.len()].copy_from_slice(path);
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            header.set_cksum();
            self.builder.append(&header, data).expect("append entry");
            self
        }
        fn file(self, path: &str, mode: u32, data: &[u8]) -> Tarball {
            self.raw(path.as_bytes(), EntryType::Regular, mode, b"", data)
        }
        fn dir(self, path: &str, mode: u32) -> Tarball {
            self.raw(path.as_bytes(), EntryType::Directory, mode, b"", b"")
        }
        fn symlink(self, path: &str, target: &str) -> Tarball {
            self.raw(path.as_bytes(), EntryType::Symlink, 0o777, target.as_bytes(), b"")
        }
        fn hardlink(self, path: &str, target: &str) -> Tarball {
            self.raw(path.as_bytes(), EntryType::Link, 0o644, target.as_bytes(), b"")
        }
        /// A file whose name needs a GNU long-name entry (the tar crate writes it).
        fn long_file(mut self, path: &str, data: &[u8]) -> Tarball {
            let mut header = header(EntryType::Regular, 0o644, data.len());
            self.builder
                .append_data(&mut header, path, data)
                .expect("append long name");
            self
        }
        /// A file whose name is given by a pax `path` record, as GNU tar's pax format and
        /// Go's archive/tar write long names.
        fn pax_file(self, path: &[u8], data: &[u8]) -> Tarball {
            let records = pax_record("path", path);
            self.raw(b"PaxHeaders/placeholder", EntryType::XHeader, 0o644, b"", &records)
                .file("placeholder", 0o644, data)
        }
        fn tar(self) -> Vec<u8> {
            self.builder.into_inner().expect("finish tar")
        }
        fn gz(self) -> Vec<u8> {
            gzip(&self.tar())
        }
    }

    /// One pax record: "<length> <key>=<value>\n", the length counting itself.
    fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        let body_len = key.len() + value.len() + 3;
        let mut length = body_len + 1;
        while length.to_string().len() + body_len != length {
            length = length.to_string().len() + body_len;
        }
        let mut record = format!("{length} {key}=").into_bytes();
        record.extend_from_slice(value);
        record.push(b'\n');
        assert_eq!(record.len(), length);
        record
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(bytes).expect("compress");
        encoder.finish().expect("finish gzip")
    }

    /// Bytes that do not compress.
    fn noise(length: usize) -> Vec<u8> {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// A temporary directory holding the empty `staging` and, beside it, `outside` with a
    /// file and a directory that hostile archives aim at.
    struct Sandbox {
        root: tempfile::TempDir,
        staging: PathBuf,
        outside: PathBuf,
    }

    fn sandbox() -> Sandbox {
        let root = tempfile::tempdir().expect("temporary directory");
        let staging = root.path().join("staging");
        let outside = root.path().join("outside");
        fs::create_dir(&staging).expect("staging");
        fs::create_dir_all(outside.join("dir")).expect("outside");
        fs::write(outside.join("victim"), b"original").expect("victim");
        Sandbox { root, staging, outside }
    }

    impl Sandbox {
        /// The absolute path of `outside/<name>`, as hostile archives spell it.
        fn outside(&self, name: &str) -> String {
            self.outside
                .join(name)
                .to_str()
                .expect("UTF-8 temporary path")
                .to_owned()
        }

        /// Everything under the root except the staging directory: kind, mode, link count,
        /// contents or target. Any write outside staging changes it.
        fn snapshot(&self) -> BTreeMap<PathBuf, String> {
            fn walk(dir: &Path, root: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
                let mut names: Vec<_> = fs::read_dir(dir)
                    .expect("list")
                    .map(|entry| entry.expect("entry").path())
                    .collect();
                names.sort();
                for path in names {
                    if path == skip {
                        continue;
                    }
                    let metadata = fs::symlink_metadata(&path).expect("metadata");
                    let description = if metadata.file_type().is_symlink() {
                        format!("symlink -> {:?}", fs::read_link(&path).expect("read link"))
                    } else if metadata.is_dir() {
                        walk(&path, root, skip, out);
                        format!("dir {:o}", metadata.mode())
                    } else {
                        format!(
                            "file {:o} links {} {:?}",
                            metadata.mode(),
                            metadata.nlink(),
                            fs::read(&path).expect("read")
                        )
                    };
                    out.insert(path.strip_prefix(root).expect("under root").to_path_buf(), description);
                }
            }
            let mut out = BTreeMap::new();
            walk(self.root.path(), self.root.path(), &self.staging, &mut out);
            out
        }

        /// Unpacks a hostile archive, checks that it was refused and that nothing outside
        /// staging changed, and returns the error.
        fn refuse(&self, archive: &[u8], limits: &UnpackLimits) -> UnpackError {
            let before = self.snapshot();
            let result = unpack(archive, &self.staging, limits);
            assert_eq!(before, self.snapshot(), "unpack changed something outside staging");
            match result {
                Ok(summary) => panic!("a hostile archive was unpacked: {summary:?}"),
                Err(error) => {
                    // Every message is one line naming what was wrong.
                    assert!(!error.to_string().contains('\n'), "{error}");
                    error
                }
            }
        }
    }

    /// Builds an archive aimed at a fresh sandbox and returns why it was refused.
    fn refused_with(limits: &UnpackLimits, build: impl FnOnce(&Sandbox) -> Vec<u8>) -> UnpackError {
        let sandbox = sandbox();
        let archive = build(&sandbox);
        sandbox.refuse(&archive, limits)
    }

    fn refused(build: impl FnOnce(&Sandbox) -> Vec<u8>) -> UnpackError {
        refused_with(&UnpackLimits::default(), build)
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).expect("metadata").mode() & 0o7777
    }

    #[test]
    fn unpack_extracts_files_dirs_symlinks_and_modes() {
        let long_name = format!("deep/{}/file.txt", "x".repeat(120));
        let pax_name = format!("pax/{}.txt", "y".repeat(150));
        let archive = tarball()
            .raw(
                b"pax_global_header",
                EntryType::XGlobalHeader,
                0o644,
                b"",
                &pax_record("comment", b"0123abc"),
            )
            .dir("./", 0o755)
            .dir("./bin/", 0o755)
            .file("./bin/app", 0o755, b"#!/bin/sh\necho hello\n")
            .hardlink("bin/app-again", "./bin/app")
            .file("etc/config", 0o640, b"key = value\n")
            .dir("etc", 0o750)
            .file("lib/libfoo.so.1", 0o644, b"\x7fELF")
            .symlink("lib/libfoo.so", "libfoo.so.1")
            .symlink("bin/lib", "../lib")
            .symlink("current", "./bin/app")
            .dir("readonly", 0o555)
            .file("readonly/file", 0o444, b"read only")
            .file("empty", 0o600, b"")
            .long_file(&long_name, b"long")
            .pax_file(pax_name.as_bytes(), b"pax")
            .gz();
        let sandbox = sandbox();
        let before = sandbox.snapshot();
        let summary = unpack(&archive[..], &sandbox.staging, &UnpackLimits::default()).expect("unpack");
        assert_eq!(before, sandbox.snapshot());
        let staging = &sandbox.staging;

        assert_eq!(
            summary,
            UnpackSummary {
                files: 7,
                dirs: 7, // bin etc lib readonly deep deep/xxx pax
                symlinks: 3,
                hardlinks: 1,
                bytes: 21 + 12 + 4 + 9 + 4 + 3,
            }
        );
        assert_eq!(fs::read(staging.join("bin/app")).unwrap(), b"#!/bin/sh\necho hello\n");
        assert_eq!(mode(&staging.join("bin/app")), 0o755);
        assert_eq!(
            fs::metadata(staging.join("bin/app")).unwrap().mtime(),
            MTIME as i64,
            "file mtimes are kept"
        );
        let app = fs::metadata(staging.join("bin/app")).unwrap();
        let again = fs::symlink_metadata(staging.join("bin/app-again")).unwrap();
        assert_eq!((app.ino(), app.nlink()), (again.ino(), 2), "a hard link, not a copy");
        assert_eq!(fs::read(staging.join("etc/config")).unwrap(), b"key = value\n");
        assert_eq!(mode(&staging.join("etc/config")), 0o640);
        assert_eq!(
            mode(&staging.join("etc")),
            0o750,
            "a directory listed after its contents gets its mode"
        );
        assert_eq!(mode(&staging.join("lib")), 0o755, "an implied directory is 0755");
        assert_eq!(mode(&staging.join("readonly")), 0o555);
        assert_eq!(fs::read(staging.join("readonly/file")).unwrap(), b"read only");
        assert_eq!(mode(&staging.join("readonly/file")), 0o444);
        assert_eq!(
            fs::read_link(staging.join("lib/libfoo.so")).unwrap(),
            Path::new("libfoo.so.1")
        );
        assert_eq!(fs::read_link(staging.join("bin/lib")).unwrap(), Path::new("../lib"));
        assert_eq!(fs::read(staging.join("bin/lib/libfoo.so")).unwrap(), b"\x7fELF");
        assert_eq!(fs::read(staging.join("current")).unwrap(), b"#!/bin/sh\necho hello\n");
        assert_eq!(fs::read(staging.join("empty")).unwrap(), b"");
        assert_eq!(mode(&staging.join("empty")), 0o600);
        assert_eq!(fs::read(staging.join(&long_name)).unwrap(), b"long");
        assert_eq!(fs::read(staging.join(&pax_name)).unwrap(), b"pax");
        assert!(
            !staging.join("placeholder").exists(),
            "the pax path replaces the header's name"
        );
        let mut top: Vec<_> = fs::read_dir(staging)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        top.sort();
        assert_eq!(
            top,
            ["bin", "current", "deep", "empty", "etc", "lib", "pax", "readonly"],
            "nothing else, and no pax_global_header file"
        );
    }

    #[test]
    fn unpack_refuses_absolute_path() {
        let error = refused(|sandbox| tarball().file(&sandbox.outside("evil"), 0o644, b"evil").gz());
        assert!(matches!(error, UnpackError::AbsolutePath { .. }), "{error}");
        let error = refused(|_| tarball().dir("/etc/", 0o755).gz());
        assert!(matches!(error, UnpackError::AbsolutePath { .. }), "{error}");
        let error = refused(|sandbox| tarball().symlink(&sandbox.outside("link"), "victim").gz());
        assert!(matches!(error, UnpackError::AbsolutePath { .. }), "{error}");
        // A long name carried by a pax record is checked like any other.
        let error = refused(|sandbox| tarball().pax_file(sandbox.outside("pax-evil").as_bytes(), b"evil").gz());
        assert!(matches!(error, UnpackError::AbsolutePath { .. }), "{error}");
        assert!(error.to_string().contains("pax-evil"), "{error}");
    }

    #[test]
    fn unpack_refuses_dotdot_path() {
        for path in ["../outside/evil", "a/../../outside/evil", "./../outside/evil", "a/.."] {
            let error = refused(|_| tarball().file("a/b", 0o644, b"ok").file(path, 0o644, b"evil").gz());
            match &error {
                UnpackError::ParentComponent { path: named } => assert_eq!(named, path),
                other => panic!("{path}: {other}"),
            }
        }
        let error = refused(|_| tarball().dir("../outside/dir/new", 0o755).gz());
        assert!(matches!(error, UnpackError::ParentComponent { .. }), "{error}");
        let error = refused(|_| tarball().pax_file(b"../outside/pax-evil", b"evil").gz());
        assert!(matches!(error, UnpackError::ParentComponent { .. }), "{error}");
        // A GNU long name, written by hand because the tar crate refuses to write `..`.
        let error = refused(|_| {
            tarball()
                .raw(
                    b"././@LongLink",
                    EntryType::GNULongName,
                    0o644,
                    b"",
                    b"../outside/long-evil\0",
                )
                .file("placeholder", 0o644, b"evil")
                .gz()
        });
        assert!(matches!(error, UnpackError::ParentComponent { .. }), "{error}");
    }

    #[test]
    fn unpack_refuses_symlink_escape_absolute() {
        for target in ["/", "/etc/passwd", "//etc"] {
            let error = refused(|_| tarball().symlink("link", target).gz());
            assert!(
                matches!(error, UnpackError::SymlinkAbsolute { .. }),
                "{target}: {error}"
            );
        }
        let error = refused(|sandbox| tarball().symlink("bin/link", &sandbox.outside("victim")).gz());
        assert!(matches!(error, UnpackError::SymlinkAbsolute { .. }), "{error}");
    }

    #[test]
    fn unpack_refuses_symlink_escape_relative() {
        let escapes = [
            ("link", ".."),
            ("link", "../outside/victim"),
            ("link", "./../outside"),
            ("dir/link", "../.."),
            ("dir/link", "../../outside/victim"),
            ("a/b/c/link", "../../../../outside"),
            ("link", ""),
        ];
        for (path, target) in escapes {
            let error = refused(|_| tarball().dir("dir", 0o755).symlink(path, target).gz());
            assert!(
                matches!(error, UnpackError::SymlinkEscape { .. }),
                "{path} -> {target}: {error}"
            );
        }
        // `d/up -> ..` points at the release directory, which is fine; `x -> d/up/..`
        // looks inside lexically but leads to the parent of staging through `d/up`.
        let sandbox = sandbox();
        let fine = tarball().symlink("d/up", "..").symlink("a/b/c/top", "../../..").gz();
        unpack(&fine[..], &sandbox.staging, &UnpackLimits::default()).expect("links to the top are fine");
        for (path, target) in [("x", "d/up/.."), ("d/x", "up/.."), ("d/x", "up/../d")] {
            let error = refused(|_| tarball().symlink("d/up", "..").symlink(path, target).gz());
            match &error {
                UnpackError::SymlinkEscape { problem, .. } => assert!(problem.contains("after a name"), "{error}"),
                other => panic!("{path} -> {target}: {other}"),
            }
        }
        let error = refused(|_| tarball().symlink("x", "a/../..").gz());
        assert!(matches!(error, UnpackError::SymlinkEscape { .. }), "{error}");
    }

    #[test]
    fn unpack_refuses_writing_through_a_symlink() {
        // The link itself stays inside, but nothing is written through any link.
        let error = refused(|_| {
            tarball()
                .dir("sub", 0o755)
                .symlink("a", "sub")
                .file("a/evil", 0o644, b"x")
                .gz()
        });
        match &error {
            UnpackError::ThroughSymlink { path, symlink } => assert_eq!((&path[..], &symlink[..]), ("a/evil", "a")),
            other => panic!("{other}"),
        }
        let error = refused(|_| tarball().symlink("sub/up", "..").file("sub/up/evil", 0o644, b"x").gz());
        assert!(matches!(error, UnpackError::ThroughSymlink { .. }), "{error}");
        let error = refused(|_| tarball().symlink("a", "sub").dir("a/b/c", 0o755).gz());
        assert!(matches!(error, UnpackError::ThroughSymlink { .. }), "{error}");
        let error = refused(|_| tarball().symlink("a", "sub").symlink("a/s", "x").gz());
        assert!(matches!(error, UnpackError::ThroughSymlink { .. }), "{error}");
        let error = refused(|_| {
            tarball()
                .file("f", 0o644, b"f")
                .symlink("a", ".")
                .hardlink("a/h", "f")
                .gz()
        });
        assert!(matches!(error, UnpackError::ThroughSymlink { .. }), "{error}");
        // Links that point outside never get as far as being written through.
        let error = refused(|sandbox| {
            tarball()
                .symlink("a", &sandbox.outside("dir"))
                .file("a/evil", 0o644, b"x")
                .gz()
        });
        assert!(matches!(error, UnpackError::SymlinkAbsolute { .. }), "{error}");
        let error = refused(|_| tarball().symlink("a", "..").file("a/outside/evil", 0o644, b"x").gz());
        assert!(matches!(error, UnpackError::SymlinkEscape { .. }), "{error}");
        // Nor through a file.
        let error = refused(|_| tarball().file("f", 0o644, b"f").file("f/evil", 0o644, b"x").gz());
        assert!(matches!(error, UnpackError::ThroughNonDirectory { .. }), "{error}");
    }

    #[test]
    fn unpack_refuses_hardlink_outside() {
        let error = refused(|_| tarball().hardlink("h", "../outside/victim").gz());
        assert!(matches!(error, UnpackError::HardlinkOutside { .. }), "{error}");
        let error = refused(|sandbox| tarball().hardlink("h", &sandbox.outside("victim")).gz());
        assert!(matches!(error, UnpackError::HardlinkOutside { .. }), "{error}");
        // A link to a path not yet unpacked could be to something the host already has.
        let error = refused(|_| tarball().hardlink("h", "later").file("later", 0o644, b"x").gz());
        assert!(matches!(error, UnpackError::HardlinkMissing { .. }), "{error}");
        let error = refused(|_| tarball().dir("d", 0o755).hardlink("h", "d").gz());
        assert!(matches!(error, UnpackError::HardlinkNotAFile { .. }), "{error}");
        let error = refused(|_| tarball().symlink("s", "x").hardlink("h", "s").gz());
        assert!(matches!(error, UnpackError::HardlinkNotAFile { .. }), "{error}");
        let error = refused(|_| tarball().hardlink("h", ".").gz());
        assert!(matches!(error, UnpackError::HardlinkNotAFile { .. }), "{error}");
        // A link to a file inside is fine, and cannot be written through afterwards.
        let error = refused(|_| {
            tarball()
                .file("f", 0o644, b"original")
                .hardlink("h", "f")
                .file("h", 0o644, b"overwrite")
                .gz()
        });
        assert!(matches!(error, UnpackError::Duplicate { .. }), "{error}");
    }

    #[test]
    fn unpack_refuses_device_nodes_and_fifos() {
        let cases = [
            (EntryType::Char, "character device"),
            (EntryType::Block, "block device"),
            (EntryType::Fifo, "fifo"),
            (EntryType::new(b'V'), "type 'V'"),
            (EntryType::new(b'D'), "type 'D'"),
        ];
        for (entry_type, kind) in cases {
            let sandbox = sandbox();
            let archive = tarball().raw(b"dev/node", entry_type, 0o666, b"", b"").gz();
            let error = sandbox.refuse(&archive, &UnpackLimits::default());
            match &error {
                UnpackError::UnsupportedType { path, kind: named } => {
                    assert_eq!((&path[..], &named[..]), ("dev/node", kind))
                }
                other => panic!("{kind}: {other}"),
            }
            assert!(
                !sandbox.staging.join("dev").exists(),
                "refused before anything is created"
            );
        }
    }

    fn special_bits_archive() -> Vec<u8> {
        tarball()
            .file("bin/setuid", 0o4755, b"x")
            .file("bin/setgid", 0o2755, b"x")
            .dir("shared", 0o3775)
            .dir("scratch", 0o1777)
            .gz()
    }

    #[test]
    fn unpack_strips_setuid_and_setgid() {
        let sandbox = sandbox();
        unpack(&special_bits_archive()[..], &sandbox.staging, &UnpackLimits::default()).expect("unpack");
        let staging = &sandbox.staging;
        assert_eq!(mode(&staging.join("bin/setuid")), 0o755);
        assert_eq!(mode(&staging.join("bin/setgid")), 0o755);
        assert_eq!(mode(&staging.join("shared")), 0o775);
        assert_eq!(mode(&staging.join("scratch")), 0o777);
        assert_eq!(
            UnpackLimits::default().special_bits,
            SpecialBits::from_allow_setuid(false)
        );
    }

    #[test]
    fn unpack_keeps_setuid_when_allowed() {
        let sandbox = sandbox();
        let limits = UnpackLimits {
            special_bits: SpecialBits::from_allow_setuid(true),
            ..UnpackLimits::default()
        };
        unpack(&special_bits_archive()[..], &sandbox.staging, &limits).expect("unpack");
        let staging = &sandbox.staging;
        assert_eq!(mode(&staging.join("bin/setuid")), 0o4755);
        assert_eq!(mode(&staging.join("bin/setgid")), 0o2755);
        assert_eq!(mode(&staging.join("shared")), 0o3775);
        assert_eq!(mode(&staging.join("scratch")), 0o1777);
    }

    /// Sum of the sizes of the files under `dir`.
    fn bytes_under(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let metadata = fs::symlink_metadata(entry.as_ref().unwrap().path()).unwrap();
                if metadata.is_dir() {
                    bytes_under(&entry.unwrap().path())
                } else {
                    metadata.len()
                }
            })
            .sum()
    }

    /// A tar.gz of one file `zeros` of `size` zero bytes (a multiple of 1 MiB) in about
    /// size/1000 bytes. It is made of gzip members (one per MiB, concatenated as
    /// `cat a.gz b.gz` does) so the test need not compress it all; a decoder reads them as
    /// one stream.
    pub(crate) fn zero_bomb(size: u64) -> Vec<u8> {
        const CHUNK: usize = 1 << 20;
        let mut bomb_header = header(EntryType::Regular, 0o644, size as usize);
        bomb_header.set_path("zeros").unwrap();
        bomb_header.set_cksum();
        let mut bomb = gzip(bomb_header.as_bytes());
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(&vec![0; CHUNK]).unwrap();
        let zeros = encoder.finish().unwrap();
        for _ in 0..size / CHUNK as u64 {
            bomb.extend_from_slice(&zeros);
        }
        bomb.extend(gzip(&[0; 1024]));
        bomb
    }

    #[test]
    fn unpack_stops_a_gzip_bomb_at_the_size_limit() {
        const BOMB: u64 = 1 << 30;
        const LIMIT: u64 = 1 << 20;
        // One file of 1 GiB of zeros in about 1 MiB of gzip.
        let bomb = zero_bomb(BOMB);
        assert!(
            bomb.len() < (BOMB / 500) as usize,
            "a bomb: {} bytes compressed",
            bomb.len()
        );

        let sandbox = sandbox();
        let limits = UnpackLimits {
            max_total_bytes: LIMIT,
            ..UnpackLimits::default()
        };
        let mut input = &bomb[..];
        let before = sandbox.snapshot();
        let error = unpack(&mut input, &sandbox.staging, &limits).expect_err("a bomb is refused");
        assert_eq!(before, sandbox.snapshot());
        match &error {
            UnpackError::TooLarge { path, limit } => assert_eq!((&path[..], *limit), ("zeros", LIMIT)),
            other => panic!("{other}"),
        }
        assert!(
            bytes_under(&sandbox.staging) <= LIMIT,
            "wrote {}",
            bytes_under(&sandbox.staging)
        );
        // It stopped decompressing at the limit (plus the decoder's read-ahead) rather
        // than inflating the whole gigabyte.
        let consumed = bomb.len() - input.len();
        assert!(
            consumed < bomb.len() / 10,
            "read {consumed} of {} compressed bytes",
            bomb.len()
        );

        // The limit is on what is written: exactly the limit fits.
        let sandbox = self::sandbox();
        let fits =
            tarball()
                .file("a", 0o644, &vec![1; (LIMIT / 2) as usize])
                .file("b", 0o644, &vec![2; (LIMIT / 2) as usize]);
        let summary = unpack(&fits.gz()[..], &sandbox.staging, &limits).expect("at the limit");
        assert_eq!(summary.bytes, LIMIT);
    }

    #[test]
    fn unpack_refuses_too_many_entries() {
        let limits = UnpackLimits {
            max_entries: 3,
            ..UnpackLimits::default()
        };
        let sandbox = sandbox();
        let three = tarball()
            .file("a", 0o644, b"a")
            .file("b", 0o644, b"b")
            .dir("c", 0o755)
            .gz();
        unpack(&three[..], &sandbox.staging, &limits).expect("three entries fit a limit of three");

        let error = refused_with(&limits, |_| {
            tarball()
                .file("a", 0o644, b"a")
                .file("b", 0o644, b"b")
                .file("c", 0o644, b"c")
                .file("d", 0o644, b"d")
                .gz()
        });
        match &error {
            UnpackError::TooManyEntries { path, limit } => assert_eq!((&path[..], *limit), ("d", 3)),
            other => panic!("{other}"),
        }
        // Directories a path implies count too: one entry, three directories.
        let error = refused_with(&limits, |_| tarball().file("x/y/z/file", 0o644, b"f").gz());
        assert!(matches!(error, UnpackError::TooManyEntries { .. }), "{error}");
    }

    #[test]
    fn unpack_refuses_truncated_gzip() {
        let archive = tarball().file("data", 0o644, &noise(100_000)).gz();
        let sandbox = sandbox();
        unpack(&archive[..], &sandbox.staging, &UnpackLimits::default()).expect("the whole archive unpacks");

        for cut in [archive.len() / 2, archive.len() - 4, archive.len() - 8, 10] {
            let error = refused(|_| archive[..cut].to_vec());
            assert!(matches!(error, UnpackError::Corrupt { .. }), "cut at {cut}: {error}");
        }
        let error = refused(|_| Vec::new());
        assert!(matches!(error, UnpackError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn unpack_refuses_corrupt_gzip() {
        let archive = tarball().file("data", 0o644, &noise(100_000)).gz();
        let mut flipped = archive.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x55;
        let error = refused(|_| flipped);
        assert!(matches!(error, UnpackError::Corrupt { .. }), "{error}");
        // A plain tar is not a gzip.
        let error = refused(|_| tarball().file("data", 0o644, b"x").tar());
        assert!(matches!(error, UnpackError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn unpack_refuses_corrupt_tar() {
        // A header whose checksum does not match.
        let mut bad_checksum = tarball().file("data", 0o644, b"x").tar();
        bad_checksum[0] ^= 1;
        let error = refused(|_| gzip(&bad_checksum));
        assert!(matches!(error, UnpackError::Corrupt { .. }), "{error}");
        // Not tar at all.
        let error = refused(|_| gzip(&noise(4096)));
        assert!(matches!(error, UnpackError::Corrupt { .. }), "{error}");
        // Entries after the end-of-archive marker (another extractor might unpack them).
        let mut appended = tarball().file("data", 0o644, b"x").tar();
        appended.extend(tarball().file("hidden", 0o644, b"x").tar());
        let error = refused(|_| gzip(&appended));
        assert!(matches!(error, UnpackError::Corrupt { .. }), "{error}");
        // The end-of-archive marker missing: the tar was cut at an entry boundary.
        let complete = tarball().file("data", 0o644, b"x").tar();
        let error = refused(|_| gzip(&complete[..complete.len() - 1024]));
        assert!(matches!(error, UnpackError::Corrupt { .. }), "{error}");
        // Data shorter than its header claims.
        let error = refused(|_| gzip(&complete[..512 + 100]));
        assert!(matches!(error, UnpackError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn unpack_refuses_oversized_metadata() {
        // A GNU long name the tar crate would read into memory whole.
        let error = refused(|_| {
            let mut name = vec![b'n'; 2 << 20];
            name.push(0);
            tarball()
                .raw(b"././@LongLink", EntryType::GNULongName, 0o644, b"", &name)
                .file("placeholder", 0o644, b"x")
                .gz()
        });
        assert!(matches!(error, UnpackError::MetadataTooLarge { .. }), "{error}");
        // Data on an entry that has none to write is skipped, but not without bound.
        let error = refused(|_| {
            tarball()
                .raw(b"dir", EntryType::Directory, 0o755, b"", &vec![0; 2 << 20])
                .gz()
        });
        assert!(matches!(error, UnpackError::MetadataTooLarge { .. }), "{error}");
    }

    #[test]
    fn unpack_refuses_duplicate_entries() {
        let cases: [(&str, BuildTarball); 6] = [
            ("file twice", || tarball().file("a", 0o644, b"1").file("a", 0o644, b"2")),
            ("same path spelled differently", || {
                tarball().file("a/b", 0o644, b"1").file("./a//b", 0o644, b"2")
            }),
            ("directory twice", || tarball().dir("d", 0o755).dir("d/", 0o700)),
            ("symlink, then a directory", || {
                tarball().symlink("s", "elsewhere").dir("s", 0o755)
            }),
            ("directory, then a symlink", || {
                tarball().dir("d", 0o755).symlink("d", "elsewhere")
            }),
            ("implied directory, then a file", || {
                tarball().file("d/f", 0o644, b"1").file("d", 0o644, b"2")
            }),
        ];
        for (case, build) in cases {
            let error = refused(|_| build().gz());
            assert!(matches!(error, UnpackError::Duplicate { .. }), "{case}: {error}");
        }
    }

    #[test]
    fn unpack_refuses_unusable_staging() {
        let sandbox = sandbox();
        let archive = tarball().file("a", 0o644, b"a").gz();
        fs::write(sandbox.staging.join("old"), b"old").unwrap();
        let error = unpack(&archive[..], &sandbox.staging, &UnpackLimits::default()).unwrap_err();
        assert!(matches!(error, UnpackError::Staging { .. }), "{error}");
        let link = sandbox.root.path().join("link");
        std::os::unix::fs::symlink(&sandbox.outside, &link).unwrap();
        let error = unpack(&archive[..], &link, &UnpackLimits::default()).unwrap_err();
        assert!(matches!(error, UnpackError::Staging { .. }), "{error}");
        assert!(!sandbox.outside.join("a").exists());
    }

    #[test]
    fn unpack_writes_nothing_outside_staging() {
        // The snapshot notices a write beside staging, so the checks below can fail.
        let sandbox = sandbox();
        let before = sandbox.snapshot();
        fs::write(sandbox.outside.join("victim"), b"changed").unwrap();
        assert_ne!(before, sandbox.snapshot());
        let before = sandbox.snapshot();
        fs::hard_link(sandbox.outside.join("victim"), sandbox.staging.join("link")).unwrap();
        assert_ne!(
            before,
            sandbox.snapshot(),
            "a new link to a file outside changes its link count"
        );

        // Every way into `outside` an archive might try; each is refused and changes nothing.
        let attempts: Vec<(&str, BuildHostile)> = vec![
            ("absolute path", |s| {
                tarball().file(&s.outside("victim"), 0o644, b"evil")
            }),
            ("dot-dot path", |_| tarball().file("../outside/victim", 0o644, b"evil")),
            ("absolute symlink, then a file in it", |s| {
                tarball().symlink("a", &s.outside("dir")).file("a/evil", 0o644, b"evil")
            }),
            ("relative symlink out, then a file in it", |_| {
                tarball().symlink("a", "../outside").file("a/victim", 0o644, b"evil")
            }),
            ("symlink to the top, then a path through it", |_| {
                tarball().symlink("d/up", "..").file("d/up/evil", 0o644, b"evil")
            }),
            ("symlink chain with `..`", |_| {
                tarball()
                    .symlink("d/up", "..")
                    .symlink("x", "d/up/..")
                    .file("x/outside/evil", 0o644, b"evil")
            }),
            ("symlink to a file outside, then overwrite it", |s| {
                tarball().symlink("v", &s.outside("victim")).file("v", 0o644, b"evil")
            }),
            ("hard link to a file outside, then overwrite it", |_| {
                tarball().hardlink("v", "../outside/victim").file("v", 0o644, b"evil")
            }),
            ("directory replaced by a symlink, then a file in it", |_| {
                tarball()
                    .dir("d", 0o755)
                    .symlink("d", "../outside")
                    .file("d/evil", 0o644, b"evil")
            }),
        ];
        for (attempt, build) in attempts {
            let sandbox = self::sandbox();
            let archive = build(&sandbox).gz();
            let error = sandbox.refuse(&archive, &UnpackLimits::default());
            assert_eq!(
                fs::read(sandbox.outside.join("victim")).unwrap(),
                b"original",
                "{attempt}: {error}"
            );
            assert!(!sandbox.outside.join("evil").exists(), "{attempt}");
        }
    }

    /// `depth` components `name`, joined by `/`.
    fn deep_path(depth: usize, name: &str) -> String {
        vec![name; depth].join("/")
    }

    #[test]
    fn deep_archive_is_refused_naming_the_depth_limit() {
        // The archive of the issue: a file 2,000 directories deep (4,005 bytes of path). It
        // used to fail with a raw "File name too long (os error 36)" after making about
        // 2,000 directories, which the retry loop then left behind.
        let path = format!("{}/file", deep_path(2000, "a"));
        let sandbox = sandbox();
        let error = sandbox.refuse(&tarball().long_file(&path, b"x").gz(), &UnpackLimits::default());
        match &error {
            UnpackError::PathLimit {
                path: quoted,
                limit: PathLimit::Depth { components: 2001 },
            } => assert!(quoted.starts_with("a/a/a/") && quoted.ends_with('…'), "{quoted}"),
            other => panic!("{other}"),
        }
        let message = error.to_string();
        assert!(
            message.contains("its path is 2001 directories deep, more than the limit of 128"),
            "{message}"
        );
        assert!(message.len() < 400, "the path is shortened: {message}");
        // Refused before anything was made.
        assert_eq!(fs::read_dir(&sandbox.staging).unwrap().count(), 0);

        // Exactly at the limit unpacks; one deeper does not.
        let sandbox = self::sandbox();
        let at_limit = format!("{}/file", deep_path(MAX_PATH_DEPTH - 1, "a"));
        let archive = tarball().long_file(&at_limit, b"x").gz();
        unpack(&archive[..], &sandbox.staging, &UnpackLimits::default()).expect("at the depth limit");
        assert_eq!(fs::read(sandbox.staging.join(&at_limit)).unwrap(), b"x");
        let over = format!("{}/file", deep_path(MAX_PATH_DEPTH, "a"));
        match refused(|_| tarball().long_file(&over, b"x").gz()) {
            UnpackError::PathLimit {
                limit: PathLimit::Depth { components },
                ..
            } => assert_eq!(components, MAX_PATH_DEPTH + 1),
            other => panic!("{other}"),
        }

        // Few components but long ones, and one name over NAME_MAX.
        let long = format!("{}/file", deep_path(10, &"n".repeat(250)));
        match refused(|_| tarball().long_file(&long, b"x").gz()) {
            UnpackError::PathLimit {
                limit: PathLimit::Length { bytes },
                ..
            } => assert_eq!(bytes, long.len()),
            other => panic!("{other}"),
        }
        let name = "n".repeat(MAX_NAME_BYTES + 1);
        match refused(|_| tarball().long_file(&name, b"x").gz()) {
            UnpackError::PathLimit {
                limit: PathLimit::Name { bytes },
                ..
            } => assert_eq!(bytes, MAX_NAME_BYTES + 1),
            other => panic!("{other}"),
        }
        // A hard link to a path no entry can have made is a missing target.
        let target = deep_path(MAX_PATH_DEPTH + 1, "a");
        assert!(matches!(
            refused(|_| {
                let mut archive = tarball().file("f", 0o644, b"x");
                let mut link = header(EntryType::Link, 0o644, 0);
                archive
                    .builder
                    .append_link(&mut link, "l", &target)
                    .expect("append link");
                archive.gz()
            }),
            UnpackError::HardlinkMissing { .. }
        ));
    }

    #[test]
    fn gzip_bomb_is_refused_by_the_compression_ratio() {
        // 2 GiB of zeros in about 2 MiB: under the default 8 GiB `max_release_size`, which
        // let it install. The ratio stops it soon after the exempt 64 MiB.
        const BOMB: u64 = 2 << 30;
        let bomb = zero_bomb(BOMB);
        let sandbox = sandbox();
        let mut input = &bomb[..];
        let error = unpack(&mut input, &sandbox.staging, &UnpackLimits::default()).expect_err("a bomb is refused");
        match &error {
            UnpackError::CompressionRatio { path, ratio } => {
                assert_eq!(path, "zeros");
                assert!(ratio.unpacked > RATIO_EXEMPT_BYTES, "{ratio}");
                assert!(ratio.unpacked > ratio.compressed * MAX_COMPRESSION_RATIO, "{ratio}");
            }
            other => panic!("{other}"),
        }
        let message = error.to_string();
        assert!(message.contains("more than the limit of 100 to 1"), "{message}");
        let written = bytes_under(&sandbox.staging);
        assert!(
            written <= RATIO_EXEMPT_BYTES + COPY_BUFFER as u64,
            "wrote {written} bytes"
        );
        let consumed = bomb.len() - input.len();
        assert!(consumed < bomb.len() / 10, "read {consumed} of {} bytes", bomb.len());

        // The same ratio below the exempt size unpacks.
        let sandbox = self::sandbox();
        let small = zero_bomb(32 << 20);
        let summary = unpack(&small[..], &sandbox.staging, &UnpackLimits::default()).expect("under the exempt size");
        assert_eq!(summary.bytes, 32 << 20);
    }
}
