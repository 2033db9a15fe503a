//! Applying OCI image layers, one after another, onto a root filesystem: the changeset
//! semantics of the image spec (`layer.md`) under the rules of SPEC.md §3 "Archives".
//!
//! A layer is a tar stream (already decompressed, see [`decompressor`], and verified by
//! digest by the caller). Each entry adds or replaces a path; `.wh.NAME` deletes NAME from
//! the layers below; `.wh..wh..opq` hides everything the layers below have in its
//! directory. As with release tarballs (`crate::unpack`), the layer is treated as hostile
//! although its digest matched: the digest says who published it, not that it is sane.
//!
//! The rules, and where they differ from `umoci unpack` or containerd:
//!
//! - **Paths** are taken relative to the rootfs after dropping a leading `/` and `./` (both
//!   are common; umoci, runc and containerd drop them too) and `.` components. A `..`
//!   component anywhere is refused (containerd would clean it away). Paths are at most
//!   [`MAX_PATH_DEPTH`] components and [`MAX_PATH_BYTES`] bytes, as in release tarballs
//!   (one rule, in `tarstream`).
//! - **Nothing is written through a symlink.** Every parent of an entry must be a real
//!   directory (looked at with `lstat`, never followed); a symlink in the way is an error,
//!   whichever layer made it. containerd resolves such paths inside the rootfs instead; a
//!   well-formed layer never needs that, as builders write the real path.
//! - **Symlinks** are created with their target verbatim, absolute ones included: they are
//!   resolved inside the container's `RootDirectory=` at run time, never by the agent.
//! - **Hard links** name their target from the rootfs, normalized as entry paths are; it
//!   must be a regular file of this or an earlier layer, reached without symlinks. The link
//!   entry's own mode and owner are ignored (a link shares its target's inode).
//! - **Device nodes and fifos are refused** with an error naming the entry (SPEC.md §3: no
//!   device nodes). umoci creates them when run as root; the agent's units get `/dev` from
//!   systemd (`MountAPIVFS=`), so an image's own `/dev` entries serve no purpose.
//! - **Ownership** is the header's numeric uid and gid (a pax `uid`/`gid` record wins, as
//!   Go's archive/tar writes large ids there), set with `lchown`; user and group names are
//!   ignored, as umoci and runc ignore them. This needs root, which the agent is.
//! - **Modes** keep the permission bits; setuid, setgid and sticky bits as
//!   [`LayerLimits::special_bits`] says (stripped by default, `NoNewPrivileges=` makes them
//!   useless anyway).
//! - **Modification times** are kept for files and directories (a directory's is set after
//!   the layer's entries, so writing into it does not change it again); symlinks get the
//!   time they were created (std cannot set a symlink's time without `unsafe`).
//! - **Extended attributes** (pax `SCHILY.xattr.*`: file capabilities, SELinux labels) are
//!   ignored; no other pax record than `path`, `linkpath`, `uid` and `gid` is read.
//! - **Replacing**: an entry replaces a non-directory that is there; a directory over a
//!   directory takes the new metadata and keeps the contents; a non-directory over a
//!   directory removes that directory's tree; a directory over a non-directory replaces it.
//!   Tar's "the last one wins" holds within a layer too.
//! - **Whiteouts apply to lower layers only** (image spec): a whiteout never removes what
//!   the same layer wrote, wherever it comes in the tar. The opaque marker removes, at the
//!   point it is read, everything in its directory that this layer has not written so far
//!   (and, inside directories this layer wrote into, what it did not write there), so it
//!   works whether it comes before or after its siblings. A whiteout of a path that does
//!   not exist does nothing; the whiteout files themselves never appear in the rootfs.
//! - **The rootfs itself**: a directory entry `.` or `./` gives the rootfs its mode, owner
//!   and time, as umoci does. The caller keeps the rootfs inside a directory only root can
//!   enter, as an image may well make it (or its `tmp`) writable by others.
//! - **Limits** (entries, bytes written, tar metadata) count across all layers of one image
//!   through a [`LayerMeter`], so a gzip bomb in any layer stops at the image's limit.
//!   [`apply_blob`] also holds each compressed layer to [`MAX_COMPRESSION_RATIO`], as
//!   release tarballs are, and every layer stops while [`MIN_FREE_BYTES`] are still free on
//!   the rootfs's filesystem.
//!
//! Like `crate::unpack`, this needs neither `unsafe` nor `openat`: it relies on being the
//! only writer in the rootfs (which lives in the agent's root-owned state directory) while
//! layers are applied, so a path found to be a real directory stays one until it is
//! written to.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashSet};
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
    TarStreamError, check_end, corrupt_header, entry_path, header_mode, position, stream_error,
};
use crate::unpack::{DiskFull, PathLimit, RatioExceeded};
#[cfg(doc)]
use crate::unpack::{MAX_COMPRESSION_RATIO, MAX_PATH_BYTES, MAX_PATH_DEPTH, MIN_FREE_BYTES};

use crate::tarstream::quote;
use crate::unpack::{self, COPY_BUFFER, LATEST_MTIME, SpecialBits};

use drover_protocol::oci::{
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP, MEDIA_TYPE_DOCKER_LAYER_TAR, MEDIA_TYPE_NONDISTRIBUTABLE_TAR,
    MEDIA_TYPE_NONDISTRIBUTABLE_TAR_GZIP, MEDIA_TYPE_NONDISTRIBUTABLE_TAR_ZSTD,
};
pub use drover_protocol::oci::{
    MEDIA_TYPE_DOCKER_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_TAR_GZIP, MEDIA_TYPE_LAYER_TAR_ZSTD,
};

/// The name prefix of a whiteout file.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The name of the marker that makes its directory opaque.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// The decompressed tar stream of a layer blob with the given media type: the blob itself
/// for `tar`, a gzip decoder (multi-member, as `pigz` and some registries write them) for
/// `tar+gzip` and Docker's `tar.gzip`. zstd layers and anything else are refused with an
/// error naming the media type. A blob that is not what its media type says fails later,
/// in [`apply_layer`], as [`LayerError::Corrupt`].
pub fn decompressor<'a, R: Read + Send + 'a>(
    media_type: &str,
    blob: R,
) -> Result<Box<dyn Read + Send + 'a>, LayerError> {
    match media_type {
        MEDIA_TYPE_LAYER_TAR | MEDIA_TYPE_DOCKER_LAYER_TAR | MEDIA_TYPE_NONDISTRIBUTABLE_TAR => Ok(Box::new(blob)),
        MEDIA_TYPE_LAYER_TAR_GZIP
        | MEDIA_TYPE_DOCKER_LAYER_GZIP
        | MEDIA_TYPE_NONDISTRIBUTABLE_TAR_GZIP
        | MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP => Ok(Box::new(MultiGzDecoder::new(blob))),
        MEDIA_TYPE_LAYER_TAR_ZSTD | MEDIA_TYPE_NONDISTRIBUTABLE_TAR_ZSTD => Err(LayerError::UnsupportedMediaType {
            media_type: quote(media_type.as_bytes()),
            problem: "is zstd-compressed, which this agent cannot decompress yet; push the image with gzip layers",
        }),
        _ => Err(LayerError::UnsupportedMediaType {
            media_type: quote(media_type.as_bytes()),
            problem: "is not a layer type this agent applies (an OCI layer: tar or tar+gzip, or a Docker tar.gzip layer)",
        }),
    }
}

/// Bounds and policy for the layers of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerLimits {
    /// Bytes of regular files written by all the image's layers together (a file that a
    /// later layer replaces counts twice: it was written twice).
    pub max_total_bytes: u64,
    /// Entries of all the image's layers (whiteouts included) plus the directories their
    /// paths imply.
    pub max_entries: u64,
    /// Whether setuid, setgid and sticky bits survive.
    pub special_bits: SpecialBits,
}

impl Default for LayerLimits {
    fn default() -> LayerLimits {
        LayerLimits {
            max_total_bytes: unpack::DEFAULT_MAX_TOTAL_BYTES,
            max_entries: unpack::DEFAULT_MAX_ENTRIES,
            special_bits: SpecialBits::Strip,
        }
    }
}

/// What the layers of one image have used so far: passed to every [`apply_layer`] of the
/// image in turn, so that [`LayerLimits`] bound the image, not each layer. It also meters
/// the tar metadata read between entries, so a layer of endless headers, long names or
/// pax records stops early.
#[derive(Debug, Default)]
pub struct LayerMeter {
    layers: Cell<u64>,
    /// Entries plus the directories their paths implied, for `max_entries`.
    entries: Cell<u64>,
    /// Bytes written into regular files.
    bytes: Cell<u64>,
    /// Headers, long names and pax records read, over all layers.
    metadata: MetadataMeter,
}

impl LayerMeter {
    /// A meter for a new image.
    pub fn new() -> LayerMeter {
        LayerMeter::default()
    }

    /// Layers applied (or started) so far.
    pub fn layers(&self) -> u64 {
        self.layers.get()
    }

    /// Entries of all layers so far plus the directories their paths implied.
    pub fn entries(&self) -> u64 {
        self.entries.get()
    }

    /// Bytes written into regular files by all layers so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }

    fn layer_started(&self) {
        self.layers.set(self.layers.get() + 1);
        self.metadata.stream_started();
    }
}

/// What one layer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerSummary {
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated, listed in the layer or implied by a path.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// Whiteout entries (`.wh.NAME` and opaque markers), whether or not they found anything.
    pub whiteouts: u64,
    /// Bytes written into regular files.
    pub bytes: u64,
}

/// Why a layer was not applied. Paths named by the layer are quoted as the layer spells
/// them, with control characters escaped and long names shortened, so every message is one
/// line that a hostile layer cannot use to forge log lines. The caller adds which layer.
#[derive(Debug, Error)]
pub enum LayerError {
    /// The layer's media type is not one this agent can decompress and apply.
    #[error("layer media type '{media_type}' {problem}")]
    UnsupportedMediaType { media_type: String, problem: &'static str },
    /// The rootfs is not a real directory.
    #[error("rootfs {path}: {problem}")]
    Rootfs { path: PathBuf, problem: &'static str },
    /// An entry path (or a hard link target) has a `..` component.
    #[error("layer entry '{path}': paths with a `..` component are refused")]
    ParentComponent { path: String },
    /// An entry path is too deep or too long ([`MAX_PATH_DEPTH`], [`MAX_PATH_BYTES`],
    /// [`crate::unpack::MAX_NAME_BYTES`]).
    #[error("layer entry '{path}': its path {limit}; such layers are refused")]
    PathLimit { path: String, limit: PathLimit },
    /// An entry other than a directory names the rootfs itself (`.`, `./`, `/`).
    #[error("layer entry '{path}': names the rootfs itself, which only a directory entry may do")]
    EmptyPath { path: String },
    /// A parent of the entry is a symlink (made by this or an earlier layer).
    #[error("layer entry '{path}' goes through symlink '{symlink}'; nothing is written through symlinks")]
    ThroughSymlink { path: String, symlink: String },
    /// A parent of the entry is a file or something else that is not a directory.
    #[error("layer entry '{path}': its parent '{parent}' is not a directory")]
    ThroughNonDirectory { path: String, parent: String },
    /// A whiteout that names no file (`.wh.`, `.wh..`, `.wh...`), or a whiteout name used as
    /// a directory.
    #[error("layer entry '{path}': {problem}")]
    Whiteout { path: String, problem: &'static str },
    /// A symlink with an empty target, which no filesystem can store.
    #[error("layer entry '{path}': symlink with an empty target")]
    SymlinkEmpty { path: String },
    /// A hard link whose target has a `..` component.
    #[error("layer entry '{path}': hard link target '{target}' has a `..` component and is refused")]
    HardlinkOutside { path: String, target: String },
    /// A hard link whose target path goes through a symlink.
    #[error(
        "layer entry '{path}': hard link target '{target}' goes through symlink '{symlink}'; links are only made to files reached without symlinks"
    )]
    HardlinkThroughSymlink {
        path: String,
        target: String,
        symlink: String,
    },
    /// A hard link to a path that holds nothing.
    #[error(
        "layer entry '{path}': hard link target '{target}' does not exist (it must be a file of this layer, earlier in it, or of a lower layer)"
    )]
    HardlinkMissing { path: String, target: String },
    /// A hard link to a directory, a symlink or the rootfs.
    #[error("layer entry '{path}': hard link target '{target}' is not a regular file")]
    HardlinkNotAFile { path: String, target: String },
    /// A device node, fifo or any other type that is not a file, directory or link.
    #[error(
        "layer entry '{path}': {kind} entries are refused; a rootfs gets only regular files, directories, symlinks and hard links (systemd provides /dev)"
    )]
    UnsupportedType { path: String, kind: String },
    /// The files of the image's layers together would exceed `max_total_bytes`.
    #[error("layer entry '{path}': the image's layers unpack to more than the limit of {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    /// A compressed layer unpacks to more than [`MAX_COMPRESSION_RATIO`] times its size.
    #[error("layer entry '{path}': {ratio}")]
    CompressionRatio { path: String, ratio: RatioExceeded },
    /// The filesystem is too full to go on ([`MIN_FREE_BYTES`]).
    #[error("layer entry '{path}': {full}")]
    DiskFull { path: String, full: Box<DiskFull> },
    /// More than `max_entries` entries and implied directories in the image's layers.
    #[error(
        "layer entry '{path}': the image's layers have more than the limit of {limit} entries (counting directories their paths imply)"
    )]
    TooManyEntries { path: String, limit: u64 },
    /// Headers, long names or pax records beyond what any sane layer needs.
    #[error("the layer's headers, long names or pax records exceed the metadata limit {context}")]
    MetadataTooLarge { context: String },
    /// The decompressed stream is truncated, corrupt, not a tar, or has data after its end.
    #[error("the layer is truncated or corrupt {context}: {detail}")]
    Corrupt { context: String, detail: String },
    /// Creating, removing or changing something in the rootfs failed.
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl From<TarStreamError> for LayerError {
    fn from(error: TarStreamError) -> LayerError {
        match error {
            TarStreamError::MetadataTooLarge { context } => LayerError::MetadataTooLarge { context },
            TarStreamError::Corrupt { context, detail } => LayerError::Corrupt { context, detail },
        }
    }
}

/// Applies one layer, the decompressed tar stream `layer`, onto `rootfs`: an existing real
/// directory (not a symlink) holding the image's lower layers, applied by earlier calls
/// with the same `meter`, and written by nothing else meanwhile. Layers go in manifest
/// order, the first onto the empty directory the caller made (0755, root's).
///
/// The module documentation lists the rules. The stream must be a complete tar archive
/// (end-of-archive marker present, only zeros after it); reading it to its end also makes
/// a gzip decoder check its CRC and length.
///
/// On error the rootfs may hold part of the layer and the caller must delete it
/// ([`crate::install::remove_tree`], which does not follow symlinks); nothing outside
/// `rootfs` has been written. This does blocking I/O; call it from `spawn_blocking`.
///
/// The stream is already decompressed, so no compression ratio can be checked here;
/// [`apply_blob`] applies a layer blob as stored and checks it.
pub fn apply_layer(
    layer: impl Read,
    rootfs: &Path,
    limits: &LayerLimits,
    meter: &mut LayerMeter,
) -> Result<LayerSummary, LayerError> {
    apply(layer, rootfs, limits, meter, None)
}

/// Applies one layer blob as the registry stores it, of the given media type (see
/// [`decompressor`]), as [`apply_layer`] does, and holds it to [`MAX_COMPRESSION_RATIO`]:
/// the bytes this layer writes into files against the compressed bytes read of it.
pub fn apply_blob(
    media_type: &str,
    blob: impl Read + Send,
    rootfs: &Path,
    limits: &LayerLimits,
    meter: &mut LayerMeter,
) -> Result<LayerSummary, LayerError> {
    let compressed = CompressedCounter::default();
    let layer = decompressor(
        media_type,
        CountCompressed {
            inner: blob,
            counter: &compressed,
        },
    )?;
    apply(layer, rootfs, limits, meter, Some(&compressed))
}

fn apply(
    layer: impl Read,
    rootfs: &Path,
    limits: &LayerLimits,
    meter: &mut LayerMeter,
    compressed: Option<&CompressedCounter>,
) -> Result<LayerSummary, LayerError> {
    check_rootfs(rootfs)?;
    let meter = &*meter;
    meter.layer_started();
    let mut archive = tar::Archive::new(Metered {
        inner: layer,
        meter: &meter.metadata,
    });
    let mut applier = Applier {
        rootfs,
        limits,
        meter,
        compressed,
        space: SpaceWatch::new(rootfs, meter.bytes()),
        upper: HashSet::new(),
        dirs: BTreeMap::new(),
        summary: LayerSummary::default(),
        buffer: vec![0; COPY_BUFFER],
    };
    let mut last_entry: Option<String> = None;
    let entries = archive
        .entries()
        .map_err(|error| stream_error(&meter.metadata, position(None), error))?;
    for entry in entries {
        let mut entry = entry.map_err(|error| stream_error(&meter.metadata, position(last_entry.as_deref()), error))?;
        meter.metadata.entry_started();
        let name = quote(&entry.path_bytes());
        applier.add(&mut entry, &name)?;
        last_entry = Some(name);
    }
    check_end(
        archive.into_inner(),
        &mut applier.buffer,
        &meter.metadata,
        position(last_entry.as_deref()),
    )?;
    applier.finish()
}

/// What is at a path, looked at without following a symlink there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Missing,
    Dir,
    File,
    Symlink,
    /// A device node, fifo or socket (none of which a layer can create, but the check costs nothing).
    Other,
}

/// How the parents of a path are.
enum Parents {
    /// All real directories.
    Directories,
    /// One does not exist.
    Missing,
    /// The first one that is a symlink.
    Symlink(PathBuf),
    /// One is neither a directory nor a symlink.
    NotADirectory,
}

/// The metadata a directory gets once the layer's entries are written.
#[derive(Clone, Copy, Debug)]
struct DirMetadata {
    mode: u32,
    /// `None` for a directory the layer only implied: it keeps the time it was created.
    mtime: Option<u64>,
}

/// The state of one layer being applied.
struct Applier<'a> {
    rootfs: &'a Path,
    limits: &'a LayerLimits,
    meter: &'a LayerMeter,
    /// Compressed bytes read of this layer, when known, for the ratio limit.
    compressed: Option<&'a CompressedCounter>,
    /// Free space on the rootfs's filesystem.
    space: SpaceWatch<'a>,
    /// Every path this layer has written, and every directory above one: what the layer's
    /// own whiteouts and opaque markers must leave alone (they apply to lower layers only).
    upper: HashSet<PathBuf>,
    /// Directories this layer listed or created, with the mode and time they get at the end.
    dirs: BTreeMap<PathBuf, DirMetadata>,
    summary: LayerSummary,
    buffer: Vec<u8>,
}

impl Applier<'_> {
    fn add<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<(), LayerError> {
        self.count_entry(name)?;
        let entry_type = entry.header().entry_type();
        // A pax global header holds defaults for later entries; like the tar crate, this
        // does not apply them, so every entry is judged by its own header and pax records.
        if entry_type == EntryType::XGlobalHeader {
            return Ok(());
        }
        let relative = layer_path(&entry.path_bytes()).map_err(|problem| match problem {
            PathProblem::Limit(limit) => LayerError::PathLimit {
                path: name.to_owned(),
                limit,
            },
            PathProblem::Absolute | PathProblem::ParentDir => LayerError::ParentComponent { path: name.to_owned() },
        })?;
        self.check_space(name)?;
        let mut components = relative.iter();
        let last = components.next_back();
        if components.any(|component| component.as_bytes().starts_with(WHITEOUT_PREFIX)) {
            return Err(LayerError::Whiteout {
                path: name.to_owned(),
                problem: "a whiteout name is used as a directory (AUFS metadata is not supported)",
            });
        }
        if last.is_some_and(|last| last.as_bytes().starts_with(WHITEOUT_PREFIX)) {
            return self.whiteout(&relative, name);
        }
        match entry_type {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link => {}
            other => {
                return Err(LayerError::UnsupportedType {
                    path: name.to_owned(),
                    kind: unpack::describe(other),
                });
            }
        }
        if relative.as_os_str().is_empty() {
            return match entry_type {
                EntryType::Directory => self.directory(entry, relative, name),
                _ => Err(LayerError::EmptyPath { path: name.to_owned() }),
            };
        }
        self.create_parents(&relative, name)?;
        match entry_type {
            EntryType::Directory => self.directory(entry, relative, name),
            EntryType::Symlink => self.symlink(entry, relative, name),
            EntryType::Link => self.hardlink(entry, relative, name),
            _ => self.file(entry, relative, name),
        }
    }

    /// Stops while the filesystem still has [`MIN_FREE_BYTES`] and
    /// [`crate::unpack::MIN_FREE_INODES`] free (looked at every few MiB written and every
    /// few thousand entries).
    fn check_space(&self, name: &str) -> Result<(), LayerError> {
        self.space
            .check(self.meter.bytes(), self.meter.entries())
            .map_err(|problem| match problem {
                SpaceProblem::Full(full) => LayerError::DiskFull {
                    path: name.to_owned(),
                    full: Box::new(full),
                },
                SpaceProblem::Statvfs { directory, source } => LayerError::Io {
                    operation: "checking the free space of",
                    path: directory,
                    source,
                },
            })
    }

    fn count_entry(&mut self, name: &str) -> Result<(), LayerError> {
        let entries = self.meter.entries.get() + 1;
        self.meter.entries.set(entries);
        if entries > self.limits.max_entries {
            return Err(LayerError::TooManyEntries {
                path: name.to_owned(),
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    /// Looks at each parent of `relative` in turn, from the top, without following symlinks.
    fn parents(&self, relative: &Path) -> Result<Parents, LayerError> {
        let Some(parent) = relative.parent() else {
            return Ok(Parents::Directories);
        };
        let mut prefix = PathBuf::new();
        for component in parent.components() {
            prefix.push(component);
            match kind(&self.rootfs.join(&prefix))? {
                Kind::Dir => {}
                Kind::Missing => return Ok(Parents::Missing),
                Kind::Symlink => return Ok(Parents::Symlink(prefix)),
                Kind::File | Kind::Other => return Ok(Parents::NotADirectory),
            }
        }
        Ok(Parents::Directories)
    }

    /// Makes every parent of `relative` a real directory, creating missing ones (0755,
    /// root's), and refuses to go through a symlink or a file. The parents belong to this
    /// layer from now on: its own whiteouts and opaque markers leave them alone.
    fn create_parents(&mut self, relative: &Path, name: &str) -> Result<(), LayerError> {
        let Some(parent) = relative.parent() else {
            return Ok(());
        };
        let mut prefix = PathBuf::new();
        for component in parent.components() {
            prefix.push(component);
            let full = self.rootfs.join(&prefix);
            match kind(&full)? {
                Kind::Dir => {}
                Kind::Symlink => {
                    return Err(LayerError::ThroughSymlink {
                        path: name.to_owned(),
                        symlink: quote(prefix.as_os_str().as_bytes()),
                    });
                }
                Kind::File | Kind::Other => {
                    return Err(LayerError::ThroughNonDirectory {
                        path: name.to_owned(),
                        parent: quote(prefix.as_os_str().as_bytes()),
                    });
                }
                Kind::Missing => {
                    self.count_entry(name)?;
                    create_dir(&full)?;
                    self.dirs.insert(
                        prefix.clone(),
                        DirMetadata {
                            mode: 0o755,
                            mtime: None,
                        },
                    );
                    self.summary.dirs += 1;
                }
            }
            self.upper.insert(prefix.clone());
        }
        Ok(())
    }

    /// `.wh.NAME` removes NAME unless this layer wrote it; `.wh..wh..opq` hides what lower
    /// layers have in its directory. The whiteout itself is never created. Like any entry,
    /// its parents must be real directories (missing ones are created, as containerd and
    /// umoci do), so a whiteout cannot remove anything through a symlink.
    fn whiteout(&mut self, relative: &Path, name: &str) -> Result<(), LayerError> {
        self.summary.whiteouts += 1;
        self.create_parents(relative, name)?;
        let directory = relative.parent().unwrap_or(Path::new(""));
        let file_name = relative.file_name().map(OsStr::as_bytes).unwrap_or_default();
        if file_name == OPAQUE_MARKER {
            return self.make_opaque(directory);
        }
        let hidden = &file_name[WHITEOUT_PREFIX.len()..];
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(LayerError::Whiteout {
                path: name.to_owned(),
                problem: "whiteout names no file",
            });
        }
        let target = directory.join(OsStr::from_bytes(hidden));
        if self.upper.contains(&target) {
            // Written by this same layer: a whiteout only hides what is below.
            return Ok(());
        }
        self.remove(&target)
    }

    /// Removes everything in `directory` that this layer has not written, and in each
    /// directory it has written into, what it has not written there.
    fn make_opaque(&mut self, directory: &Path) -> Result<(), LayerError> {
        let mut pending = vec![directory.to_path_buf()];
        while let Some(directory) = pending.pop() {
            let full = self.rootfs.join(&directory);
            let mut names = Vec::new();
            for child in fs::read_dir(&full).map_err(|error| io_error("listing", &full, error))? {
                names.push(child.map_err(|error| io_error("listing", &full, error))?.file_name());
            }
            for child_name in names {
                let child = directory.join(child_name);
                if !self.upper.contains(&child) {
                    self.remove(&child)?;
                } else if kind(&self.rootfs.join(&child))? == Kind::Dir {
                    pending.push(child);
                }
            }
        }
        Ok(())
    }

    /// Removes whatever is at `relative` (a directory with its tree) without following a
    /// symlink; nothing there is fine. Its parents have been checked to be real directories.
    fn remove(&mut self, relative: &Path) -> Result<(), LayerError> {
        let full = self.rootfs.join(relative);
        match kind(&full)? {
            Kind::Missing => {}
            Kind::Dir => {
                // `remove_tree` does not follow symlinks inside the tree.
                crate::install::remove_tree(&full).map_err(|error| LayerError::Io {
                    operation: "removing",
                    path: quote(error.path.as_os_str().as_bytes()),
                    source: error.source,
                })?;
                let gone: Vec<PathBuf> = self
                    .dirs
                    .range(relative.to_path_buf()..)
                    .map(|(path, _)| path)
                    .take_while(|path| path.starts_with(relative))
                    .cloned()
                    .collect();
                for path in gone {
                    self.dirs.remove(&path);
                }
            }
            Kind::File | Kind::Symlink | Kind::Other => {
                fs::remove_file(&full).map_err(|error| io_error("removing", &full, error))?;
            }
        }
        Ok(())
    }

    /// A directory: created if missing, replacing a non-directory; one that exists keeps
    /// its contents. Owner now, mode and time once the layer's entries are written.
    fn directory<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        relative: PathBuf,
        name: &str,
    ) -> Result<(), LayerError> {
        let mode = self.limits.special_bits.apply(header_mode(entry, name)?);
        let mtime = entry.header().mtime().map_err(|error| corrupt_header(name, &error))?;
        let (uid, gid) = owner(entry, name)?;
        let full = self.rootfs.join(&relative);
        match kind(&full)? {
            Kind::Dir => {}
            Kind::Missing => create_dir(&full)?,
            Kind::File | Kind::Symlink | Kind::Other => {
                self.remove(&relative)?;
                create_dir(&full)?;
            }
        }
        std::os::unix::fs::lchown(&full, Some(uid), Some(gid))
            .map_err(|error| io_error("setting the owner of", &full, error))?;
        self.dirs.insert(
            relative.clone(),
            DirMetadata {
                mode,
                mtime: Some(mtime),
            },
        );
        self.upper.insert(relative);
        self.summary.dirs += 1;
        Ok(())
    }

    /// A symlink, its target stored as the layer has it.
    fn symlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        relative: PathBuf,
        name: &str,
    ) -> Result<(), LayerError> {
        let target = entry
            .link_name_bytes()
            .map(|target| target.into_owned())
            .unwrap_or_default();
        if target.is_empty() {
            return Err(LayerError::SymlinkEmpty { path: name.to_owned() });
        }
        let (uid, gid) = owner(entry, name)?;
        self.remove(&relative)?;
        let full = self.rootfs.join(&relative);
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), &full)
            .map_err(|error| io_error("creating symlink", &full, error))?;
        std::os::unix::fs::lchown(&full, Some(uid), Some(gid))
            .map_err(|error| io_error("setting the owner of", &full, error))?;
        self.upper.insert(relative);
        self.summary.symlinks += 1;
        Ok(())
    }

    /// A hard link to a regular file already in the rootfs. Tar names the target from the
    /// archive root, not from the link's directory.
    fn hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        relative: PathBuf,
        name: &str,
    ) -> Result<(), LayerError> {
        let raw_target = entry
            .link_name_bytes()
            .map(|target| target.into_owned())
            .unwrap_or_default();
        let quoted_target = || quote(&raw_target);
        let target = layer_path(&raw_target).map_err(|problem| match problem {
            PathProblem::Absolute | PathProblem::ParentDir => LayerError::HardlinkOutside {
                path: name.to_owned(),
                target: quoted_target(),
            },
            // No layer can have made a file at such a path.
            PathProblem::Limit(_) => LayerError::HardlinkMissing {
                path: name.to_owned(),
                target: quoted_target(),
            },
        })?;
        let missing = || LayerError::HardlinkMissing {
            path: name.to_owned(),
            target: quoted_target(),
        };
        match self.parents(&target)? {
            Parents::Directories => {}
            Parents::Missing | Parents::NotADirectory => return Err(missing()),
            Parents::Symlink(symlink) => {
                return Err(LayerError::HardlinkThroughSymlink {
                    path: name.to_owned(),
                    target: quoted_target(),
                    symlink: quote(symlink.as_os_str().as_bytes()),
                });
            }
        }
        let target_full = self.rootfs.join(&target);
        match kind(&target_full)? {
            Kind::File => {}
            Kind::Missing => return Err(missing()),
            Kind::Dir | Kind::Symlink | Kind::Other => {
                return Err(LayerError::HardlinkNotAFile {
                    path: name.to_owned(),
                    target: quoted_target(),
                });
            }
        }
        if target != relative {
            self.remove(&relative)?;
            let full = self.rootfs.join(&relative);
            // linkat(2) without AT_SYMLINK_FOLLOW: the target, a regular file, is linked itself.
            fs::hard_link(&target_full, &full).map_err(|error| io_error("creating hard link", &full, error))?;
        }
        self.upper.insert(relative);
        self.summary.hardlinks += 1;
        Ok(())
    }

    /// A regular file, replacing whatever is at its path: created exclusively (0600 until
    /// it is complete), its data counted against `max_total_bytes` as it is written, then
    /// given its owner, mode and time through the open handle (in that order, as `chown`
    /// clears setuid).
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        relative: PathBuf,
        name: &str,
    ) -> Result<(), LayerError> {
        let mode = self.limits.special_bits.apply(header_mode(entry, name)?);
        let mtime = entry.header().mtime().map_err(|error| corrupt_header(name, &error))?;
        let (uid, gid) = owner(entry, name)?;
        self.remove(&relative)?;
        let full = self.rootfs.join(&relative);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&full)
            .map_err(|error| io_error("creating", &full, error))?;
        self.upper.insert(relative);
        loop {
            // Data bytes count against `max_total_bytes`, not the metadata limit.
            self.meter.metadata.set_in_data(true);
            let read = entry.read(&mut self.buffer);
            self.meter.metadata.set_in_data(false);
            let count = match read {
                Ok(0) => break,
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    return Err(
                        stream_error(&self.meter.metadata, format!("in the data of entry '{name}'"), error).into(),
                    );
                }
            };
            let total = self.meter.bytes.get() + count as u64;
            if total > self.limits.max_total_bytes {
                return Err(LayerError::TooLarge {
                    path: name.to_owned(),
                    limit: self.limits.max_total_bytes,
                });
            }
            if let Some(Err(ratio)) = self
                .compressed
                .map(|compressed| compressed.check(self.summary.bytes + count as u64))
            {
                return Err(LayerError::CompressionRatio {
                    path: name.to_owned(),
                    ratio,
                });
            }
            file.write_all(&self.buffer[..count])
                .map_err(|error| io_error("writing", &full, error))?;
            self.meter.bytes.set(total);
            self.summary.bytes += count as u64;
            self.check_space(name)?;
        }
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .map_err(|error| io_error("setting the owner of", &full, error))?;
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(|error| io_error("setting the mode of", &full, error))?;
        set_mtime(&file, mtime, &full)?;
        self.summary.files += 1;
        Ok(())
    }

    /// Gives the directories this layer listed their mode and time, and the ones it
    /// created without listing them 0755 whatever the umask; deepest first, so a
    /// directory's time is set after everything below it is.
    fn finish(self) -> Result<LayerSummary, LayerError> {
        let mut dirs: Vec<(&PathBuf, &DirMetadata)> = self.dirs.iter().collect();
        dirs.sort_by_key(|(path, _)| Reverse(path.components().count()));
        for (path, metadata) in dirs {
            let full = self.rootfs.join(path);
            // Entries that replaced or removed a directory dropped it from the list, so each
            // is still a real directory; looked at again, as `chmod` would follow a symlink.
            let still_a_directory = matches!(self.parents(path)?, Parents::Directories) && kind(&full)? == Kind::Dir;
            if !still_a_directory {
                return Err(io_error(
                    "setting the mode of",
                    &full,
                    io::Error::other("no longer a directory; is something else writing to the rootfs?"),
                ));
            }
            fs::set_permissions(&full, Permissions::from_mode(metadata.mode))
                .map_err(|error| io_error("setting the mode of", &full, error))?;
            if let Some(mtime) = metadata.mtime {
                let directory = File::open(&full).map_err(|error| io_error("opening", &full, error))?;
                set_mtime(&directory, mtime, &full)?;
            }
        }
        Ok(self.summary)
    }
}

/// Refuses a rootfs path that is not a real directory.
fn check_rootfs(rootfs: &Path) -> Result<(), LayerError> {
    let metadata = fs::symlink_metadata(rootfs).map_err(|error| io_error("inspecting", rootfs, error))?;
    if !metadata.is_dir() {
        return Err(LayerError::Rootfs {
            path: rootfs.to_path_buf(),
            problem: "is not a directory (a symlink to one is refused too)",
        });
    }
    Ok(())
}

/// The entry path as a normalized path relative to the rootfs (empty for the rootfs
/// itself): leading `/`, `.` components and repeated slashes dropped; refused if it has a
/// `..` component anywhere, even one that would stay inside, or breaks the path limits.
fn layer_path(raw: &[u8]) -> Result<PathBuf, PathProblem> {
    entry_path(raw, LeadingSlash::FromRoot)
}

/// What is at `path`, without following a symlink there.
fn kind(path: &Path) -> Result<Kind, LayerError> {
    match fs::symlink_metadata(path) {
        Ok(metadata) => {
            let file_type = metadata.file_type();
            Ok(if file_type.is_dir() {
                Kind::Dir
            } else if file_type.is_symlink() {
                Kind::Symlink
            } else if file_type.is_file() {
                Kind::File
            } else {
                Kind::Other
            })
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Kind::Missing),
        Err(error) => Err(io_error("inspecting", path, error)),
    }
}

/// The owner an entry asks for: pax `uid`/`gid` records, else the header's numeric ids.
fn owner<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str) -> Result<(u32, u32), LayerError> {
    let header = entry.header();
    let mut uid = header.uid().map_err(|error| corrupt_header(name, &error))?;
    let mut gid = header.gid().map_err(|error| corrupt_header(name, &error))?;
    if let Some(extensions) = entry.pax_extensions().map_err(|error| corrupt_header(name, &error))? {
        for extension in extensions {
            let extension = extension.map_err(|error| corrupt_header(name, &error))?;
            let slot = match extension.key_bytes() {
                b"uid" => &mut uid,
                b"gid" => &mut gid,
                _ => continue,
            };
            *slot = extension
                .value()
                .ok()
                .and_then(|value| value.parse().ok())
                .ok_or_else(|| corrupt_header(name, &io::Error::other("pax uid or gid record is not a number")))?;
        }
    }
    let id = |value: u64| {
        u32::try_from(value).map_err(|_| corrupt_header(name, &io::Error::other("uid or gid does not fit 32 bits")))
    };
    Ok((id(uid)?, id(gid)?))
}

/// A real directory, 0755 (before the umask) until `finish` gives it its mode. Fails if
/// anything exists at `path`, a symlink included.
fn create_dir(path: &Path) -> Result<(), LayerError> {
    DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(|error| io_error("creating directory", path, error))
}

/// Sets the modification time of an open file or directory, unless it is beyond what
/// every filesystem can store (it then keeps the time of unpacking).
fn set_mtime(file: &File, mtime: u64, path: &Path) -> Result<(), LayerError> {
    if mtime > LATEST_MTIME {
        return Ok(());
    }
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime))
        .map_err(|error| io_error("setting the modification time of", path, error))
}

fn io_error(operation: &'static str, path: &Path, source: io::Error) -> LayerError {
    LayerError::Io {
        operation,
        path: quote(path.as_os_str().as_bytes()),
        source,
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

    /// Builds layer tars entry by entry. Names and link targets are written straight into
    /// the header bytes, past the tar crate's own checks, so hostile ones get through.
    struct Layer {
        builder: tar::Builder<Vec<u8>>,
    }

    fn layer() -> Layer {
        Layer {
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

    impl Layer {
        fn raw(
            mut self,
            path: &[u8],
            entry_type: EntryType,
            mode: u32,
            owner: (u64, u64),
            link: &[u8],
            data: &[u8],
        ) -> Layer {
            let mut header = header(entry_type, mode, data.len());
            assert!(path.len() <= 100 && link.len() <= 100, "short names only");
            header.set_uid(owner.0);
            header.set_gid(owner.1);
            header.as_old_mut().name[..path.len()].copy_from_slice(path);
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            header.set_cksum();
            self.builder.append(&header, data).expect("append entry");
            self
        }
        fn file(self, path: &str, mode: u32, data: &[u8]) -> Layer {
            self.raw(path.as_bytes(), EntryType::Regular, mode, (0, 0), b"", data)
        }
        fn owned_file(self, path: &str, mode: u32, owner: (u64, u64), data: &[u8]) -> Layer {
            self.raw(path.as_bytes(), EntryType::Regular, mode, owner, b"", data)
        }
        fn dir(self, path: &str, mode: u32) -> Layer {
            self.raw(path.as_bytes(), EntryType::Directory, mode, (0, 0), b"", b"")
        }
        fn owned_dir(self, path: &str, mode: u32, owner: (u64, u64)) -> Layer {
            self.raw(path.as_bytes(), EntryType::Directory, mode, owner, b"", b"")
        }
        fn symlink(self, path: &str, target: &str) -> Layer {
            self.raw(
                path.as_bytes(),
                EntryType::Symlink,
                0o777,
                (0, 0),
                target.as_bytes(),
                b"",
            )
        }
        fn hardlink(self, path: &str, target: &str) -> Layer {
            self.raw(path.as_bytes(), EntryType::Link, 0o644, (0, 0), target.as_bytes(), b"")
        }
        /// A whiteout as umoci and Docker write them: an empty file with mode 0.
        fn whiteout(self, path: &str) -> Layer {
            self.raw(path.as_bytes(), EntryType::Regular, 0, (0, 0), b"", b"")
        }
        /// A file whose name needs a GNU long-name entry (the tar crate writes it).
        fn long_file(mut self, path: &str, data: &[u8]) -> Layer {
            let mut header = header(EntryType::Regular, 0o644, data.len());
            self.builder
                .append_data(&mut header, path, data)
                .expect("append long name");
            self
        }
        fn tar(self) -> Vec<u8> {
            self.builder.into_inner().expect("finish tar")
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(bytes).expect("compress");
        encoder.finish().expect("finish gzip")
    }

    /// A temporary directory holding `rootfs`, where the layers go, and beside it `outside`
    /// with a file and a directory that hostile layers aim at; and the image's meter.
    struct Image {
        root: tempfile::TempDir,
        rootfs: PathBuf,
        outside: PathBuf,
        limits: LayerLimits,
        meter: LayerMeter,
    }

    fn image() -> Image {
        image_with(LayerLimits::default())
    }

    fn image_with(limits: LayerLimits) -> Image {
        let root = tempfile::tempdir().expect("temporary directory");
        let rootfs = root.path().join("rootfs");
        let outside = root.path().join("outside");
        fs::create_dir(&rootfs).expect("rootfs");
        fs::set_permissions(&rootfs, Permissions::from_mode(0o755)).expect("rootfs mode");
        fs::create_dir_all(outside.join("dir")).expect("outside");
        fs::write(outside.join("victim"), b"original").expect("victim");
        Image {
            root,
            rootfs,
            outside,
            limits,
            meter: LayerMeter::new(),
        }
    }

    impl Image {
        fn apply(&mut self, layer: Layer) -> LayerSummary {
            apply_layer(&layer.tar()[..], &self.rootfs, &self.limits, &mut self.meter).expect("layer applies")
        }

        /// Applies a layer that must be refused, checks that nothing outside the rootfs
        /// changed and that the message is one line, and returns the error.
        fn refuse(&mut self, layer: Layer) -> LayerError {
            self.refuse_bytes(&layer.tar())
        }

        fn refuse_bytes(&mut self, bytes: &[u8]) -> LayerError {
            let before = self.snapshot();
            let result = apply_layer(bytes, &self.rootfs, &self.limits, &mut self.meter);
            assert_eq!(
                before,
                self.snapshot(),
                "the layer changed something outside the rootfs"
            );
            match result {
                Ok(summary) => panic!("a bad layer was applied: {summary:?}"),
                Err(error) => {
                    assert!(!error.to_string().contains('\n'), "{error}");
                    error
                }
            }
        }

        fn path(&self, relative: &str) -> PathBuf {
            self.rootfs.join(relative)
        }

        /// The absolute path of `outside/<name>`, as hostile layers spell it.
        fn outside(&self, name: &str) -> String {
            self.outside
                .join(name)
                .to_str()
                .expect("UTF-8 temporary path")
                .to_owned()
        }

        /// Every path in the rootfs, sorted, directories with a trailing `/`.
        fn listing(&self) -> Vec<String> {
            fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
                for entry in fs::read_dir(dir).expect("list") {
                    let path = entry.expect("entry").path();
                    let relative = path.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
                    if fs::symlink_metadata(&path).unwrap().is_dir() {
                        out.push(format!("{relative}/"));
                        walk(&path, root, out);
                    } else {
                        out.push(relative);
                    }
                }
            }
            let mut out = Vec::new();
            walk(&self.rootfs, &self.rootfs, &mut out);
            out.sort();
            out
        }

        /// Everything under the temporary root except the rootfs: kind, mode, link count,
        /// contents or target. Any write outside the rootfs changes it.
        fn snapshot(&self) -> BTreeMap<PathBuf, String> {
            fn walk(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
                for entry in fs::read_dir(dir).expect("list") {
                    let path = entry.expect("entry").path();
                    if path == skip {
                        continue;
                    }
                    let metadata = fs::symlink_metadata(&path).expect("metadata");
                    let description = if metadata.file_type().is_symlink() {
                        format!("symlink -> {:?}", fs::read_link(&path).expect("read link"))
                    } else if metadata.is_dir() {
                        walk(&path, skip, out);
                        format!("dir {:o} {}:{}", metadata.mode(), metadata.uid(), metadata.gid())
                    } else {
                        format!(
                            "file {:o} {}:{} links {} {:?}",
                            metadata.mode(),
                            metadata.uid(),
                            metadata.gid(),
                            metadata.nlink(),
                            fs::read(&path).expect("read")
                        )
                    };
                    out.insert(path, description);
                }
            }
            let mut out = BTreeMap::new();
            walk(self.root.path(), &self.rootfs, &mut out);
            out
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).expect("metadata").mode() & 0o7777
    }

    fn owner_of(path: &Path) -> (u32, u32) {
        let metadata = fs::symlink_metadata(path).expect("metadata");
        (metadata.uid(), metadata.gid())
    }

    fn inode(path: &Path) -> u64 {
        fs::symlink_metadata(path).expect("metadata").ino()
    }

    fn mtime(path: &Path) -> i64 {
        fs::symlink_metadata(path).expect("metadata").mtime()
    }

    #[test]
    fn layer_applies_files_dirs_links_owners_modes_and_times() {
        let mut image = image();
        let before = image.snapshot();
        let summary = image.apply(
            layer()
                .dir("./", 0o751)
                .dir("./etc/", 0o755)
                .file("./etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n")
                .owned_dir("home/app/", 0o750, (1000, 1000))
                .owned_file("home/app/secret", 0o600, (1000, 1001), b"secret")
                .file("/usr/bin/tool", 0o755, b"#!/bin/sh\n")
                .symlink("usr/absolute", "/usr/bin/tool")
                .symlink("usr/relative", "bin/tool")
                .hardlink("usr/bin/tool-again", "/usr/bin/tool")
                .dir("readonly", 0o555)
                .file("readonly/file", 0o444, b"read only")
                .file("etc//./empty", 0o600, b""),
        );
        assert_eq!(before, image.snapshot());
        assert_eq!(
            summary,
            LayerSummary {
                files: 5,
                dirs: 7, // . etc home(implied) home/app usr(implied) usr/bin(implied) readonly
                symlinks: 2,
                hardlinks: 1,
                whiteouts: 0,
                bytes: 26 + 6 + 10 + 9,
            }
        );
        assert_eq!(
            image.listing(),
            [
                "etc/",
                "etc/empty",
                "etc/passwd",
                "home/",
                "home/app/",
                "home/app/secret",
                "readonly/",
                "readonly/file",
                "usr/",
                "usr/absolute",
                "usr/bin/",
                "usr/bin/tool",
                "usr/bin/tool-again",
                "usr/relative",
            ]
        );
        assert_eq!(mode(&image.rootfs), 0o751, "`./` gives the rootfs its mode");
        assert_eq!(
            fs::read(image.path("etc/passwd")).unwrap(),
            b"root:x:0:0::/root:/bin/sh\n"
        );
        assert_eq!(mode(&image.path("etc/passwd")), 0o644);
        assert_eq!(owner_of(&image.path("etc/passwd")), (0, 0));
        assert_eq!(mode(&image.path("home/app")), 0o750);
        assert_eq!(owner_of(&image.path("home/app")), (1000, 1000));
        assert_eq!(mode(&image.path("home/app/secret")), 0o600);
        assert_eq!(owner_of(&image.path("home/app/secret")), (1000, 1001));
        assert_eq!(mode(&image.path("home")), 0o755, "an implied directory is 0755");
        assert_eq!(mode(&image.path("usr/bin/tool")), 0o755);
        assert_eq!(
            fs::read_link(image.path("usr/absolute")).unwrap(),
            Path::new("/usr/bin/tool")
        );
        assert_eq!(
            fs::read_link(image.path("usr/relative")).unwrap(),
            Path::new("bin/tool")
        );
        assert_eq!(
            inode(&image.path("usr/bin/tool")),
            inode(&image.path("usr/bin/tool-again"))
        );
        assert_eq!(mode(&image.path("readonly")), 0o555);
        assert_eq!(mode(&image.path("readonly/file")), 0o444);
        for path in ["etc/passwd", "home/app/secret", "etc", "home/app", "readonly"] {
            assert_eq!(mtime(&image.path(path)), MTIME as i64, "{path}: the layer's time");
        }
        assert_eq!(image.meter.layers(), 1);
        assert_eq!(image.meter.bytes(), summary.bytes);
    }

    #[test]
    fn layer_whiteout_removes_a_lower_file() {
        let mut image = image();
        image.apply(layer().file("etc/a", 0o644, b"a").file("etc/b", 0o644, b"b"));
        let summary = image.apply(layer().whiteout("etc/.wh.a"));
        assert_eq!(summary.whiteouts, 1);
        assert_eq!(image.listing(), ["etc/", "etc/b"], "no whiteout file either");
        // A whiteout of something that is not there does nothing.
        image.apply(layer().whiteout("etc/.wh.nothing").whiteout("./.wh.nothing"));
        assert_eq!(image.listing(), ["etc/", "etc/b"]);
    }

    #[test]
    fn layer_whiteout_removes_a_lower_directory_tree() {
        let mut image = image();
        image.apply(
            layer()
                .file("srv/data/x/y", 0o644, b"y")
                .dir("srv/data/readonly", 0o500)
                .file("srv/data/z", 0o644, b"z")
                .symlink("srv/data/link", "/srv")
                .file("srv/other", 0o644, b"o"),
        );
        image.apply(layer().whiteout("srv/.wh.data"));
        assert_eq!(image.listing(), ["srv/", "srv/other"]);
        // A symlink is removed itself, not what it points to.
        image.apply(layer().symlink("link", &image.outside("victim")));
        image.apply(layer().whiteout(".wh.link"));
        assert!(!image.path("link").exists());
        assert_eq!(fs::read(image.outside.join("victim")).unwrap(), b"original");
    }

    #[test]
    fn layer_whiteout_keeps_what_the_same_layer_wrote() {
        let mut image = image();
        image.apply(layer().file("a", 0o644, b"lower a").file("b", 0o644, b"lower b"));
        image.apply(
            layer()
                .file("a", 0o644, b"upper a")
                .whiteout(".wh.a")
                .whiteout(".wh.b")
                .file("b", 0o644, b"upper b")
                .file("d/new", 0o644, b"new")
                .whiteout(".wh.d"),
        );
        assert_eq!(image.listing(), ["a", "b", "d/", "d/new"]);
        assert_eq!(fs::read(image.path("a")).unwrap(), b"upper a");
        assert_eq!(fs::read(image.path("b")).unwrap(), b"upper b");
    }

    #[test]
    fn layer_opaque_directory_hides_lower_contents_but_keeps_its_own() {
        // The marker after its siblings (as GNU tar orders them) and before others.
        let mut image = image();
        image.apply(
            layer()
                .file("d/old", 0o644, b"old")
                .file("d/sub/old", 0o644, b"old")
                .file("d/lower/x", 0o644, b"x")
                .file("other/kept", 0o644, b"kept"),
        );
        image.apply(
            layer()
                .dir("d/", 0o755)
                .file("d/new", 0o644, b"new")
                .file("d/sub/new", 0o644, b"new")
                .whiteout("d/.wh..wh..opq")
                .file("d/later", 0o644, b"later"),
        );
        assert_eq!(
            image.listing(),
            ["d/", "d/later", "d/new", "d/sub/", "d/sub/new", "other/", "other/kept"]
        );

        // The marker first.
        let mut image = self::image();
        image.apply(layer().file("d/old", 0o644, b"old").file("d/sub/old", 0o644, b"old"));
        let summary = image.apply(
            layer()
                .whiteout("./d/.wh..wh..opq")
                .dir("./d/", 0o700)
                .file("./d/new", 0o644, b"new"),
        );
        assert_eq!(summary.whiteouts, 1);
        assert_eq!(image.listing(), ["d/", "d/new"]);
        assert_eq!(mode(&image.path("d")), 0o700);

        // An opaque directory the lower layers do not have is simply created.
        let mut image = self::image();
        image.apply(layer().whiteout("fresh/.wh..wh..opq"));
        assert_eq!(image.listing(), ["fresh/"]);

        // Opaque root: only this layer's entries remain.
        let mut image = self::image();
        image.apply(layer().file("a", 0o644, b"a").file("b/c", 0o644, b"c"));
        image.apply(layer().file("b/new", 0o644, b"new").whiteout(".wh..wh..opq"));
        assert_eq!(image.listing(), ["b/", "b/new"]);
    }

    #[test]
    fn layer_replaces_a_file_by_a_directory_and_a_directory_by_a_file() {
        let mut image = image();
        image.apply(
            layer()
                .file("was-file", 0o644, b"file")
                .file("was-dir/inner/deep", 0o644, b"deep")
                .dir("was-dir/readonly", 0o500)
                .file("was-symlink-target", 0o644, b"t")
                .symlink("was-symlink", "was-symlink-target")
                .file("dir/keep", 0o644, b"keep"),
        );
        image.apply(
            layer()
                .dir("was-file/", 0o755)
                .file("was-file/inner", 0o644, b"inner")
                .file("was-dir", 0o644, b"now a file")
                .dir("was-symlink", 0o755)
                .owned_dir("dir", 0o700, (1000, 1000)),
        );
        assert_eq!(
            image.listing(),
            [
                "dir/",
                "dir/keep",
                "was-dir",
                "was-file/",
                "was-file/inner",
                "was-symlink-target",
                "was-symlink/",
            ]
        );
        assert_eq!(fs::read(image.path("was-dir")).unwrap(), b"now a file");
        // A directory over a directory takes the new metadata and keeps the contents.
        assert_eq!(mode(&image.path("dir")), 0o700);
        assert_eq!(owner_of(&image.path("dir")), (1000, 1000));
        assert_eq!(fs::read(image.path("dir/keep")).unwrap(), b"keep");

        // A symlink replaces a directory, and a later file replaces the symlink itself,
        // not what it points to.
        image.apply(layer().symlink("dir", &image.outside("dir")));
        assert_eq!(fs::read_link(image.path("dir")).unwrap(), image.outside.join("dir"));
        image.apply(layer().file("dir", 0o644, b"file"));
        assert_eq!(fs::read(image.path("dir")).unwrap(), b"file");
        assert!(!image.outside.join("dir").join("dir").exists());
        assert!(image.outside.join("dir").is_dir());
    }

    #[test]
    fn layer_replacing_a_hardlinked_file_leaves_its_other_link_alone() {
        let mut image = image();
        image.apply(layer().file("a", 0o644, b"old").hardlink("b", "a"));
        image.apply(layer().file("a", 0o644, b"new"));
        assert_eq!(fs::read(image.path("a")).unwrap(), b"new");
        assert_eq!(fs::read(image.path("b")).unwrap(), b"old");
        assert_ne!(inode(&image.path("a")), inode(&image.path("b")));
    }

    #[test]
    fn layer_hardlink_to_a_lower_layers_file() {
        let mut image = image();
        image.apply(
            layer()
                .file("bin/tool", 0o755, b"tool")
                .file("bin/link", 0o644, b"replaced"),
        );
        let summary = image.apply(
            layer()
                .hardlink("bin/tool-again", "bin/tool")
                .hardlink("./bin/link", "./bin/tool")
                .hardlink("bin/tool", "bin/tool"),
        );
        assert_eq!(summary.hardlinks, 3);
        let tool = inode(&image.path("bin/tool"));
        assert_eq!(inode(&image.path("bin/tool-again")), tool);
        assert_eq!(inode(&image.path("bin/link")), tool);
        assert_eq!(fs::symlink_metadata(image.path("bin/tool")).unwrap().nlink(), 3);
    }

    #[test]
    fn layer_refuses_hardlink_to_a_missing_target() {
        let mut image = image();
        image.apply(
            layer()
                .file("bin/tool", 0o755, b"tool")
                .dir("dir", 0o755)
                .symlink("link", "bin/tool"),
        );
        let error = image.refuse(layer().hardlink("h", "bin/missing"));
        assert!(matches!(error, LayerError::HardlinkMissing { .. }), "{error}");
        let error = image.refuse(layer().hardlink("h", "nowhere/missing"));
        assert!(matches!(error, LayerError::HardlinkMissing { .. }), "{error}");
        // Later in the same layer is too late.
        let error = image.refuse(layer().hardlink("h", "later").file("later", 0o644, b"x"));
        assert!(matches!(error, LayerError::HardlinkMissing { .. }), "{error}");
        for target in ["dir", "link", ".", "/"] {
            let error = image.refuse(layer().hardlink("h", target));
            assert!(
                matches!(error, LayerError::HardlinkNotAFile { .. }),
                "{target}: {error}"
            );
        }
        let error = image.refuse(layer().hardlink("h", "bin/../bin/tool"));
        assert!(matches!(error, LayerError::HardlinkOutside { .. }), "{error}");
        let error = image.refuse(layer().hardlink("h", "../outside/victim"));
        assert!(matches!(error, LayerError::HardlinkOutside { .. }), "{error}");
        // An absolute target names a path in the rootfs, not on the host.
        let victim = image.outside("victim");
        let error = image.refuse(layer().hardlink("h", &victim));
        assert!(matches!(error, LayerError::HardlinkMissing { .. }), "{error}");
        assert!(!image.path("h").exists());
    }

    #[test]
    fn layer_refuses_dotdot_paths() {
        let mut image = image();
        for path in [
            "../outside/victim",
            "a/../../outside/victim",
            "./../outside/victim",
            "/../outside/victim",
            "a/..",
        ] {
            let error = image.refuse(layer().file("a/b", 0o644, b"ok").file(path, 0o644, b"evil"));
            match &error {
                LayerError::ParentComponent { path: named } => assert_eq!(named, path),
                other => panic!("{path}: {other}"),
            }
        }
        for path in ["../outside/.wh.victim", "../outside/dir/.wh..wh..opq"] {
            let error = image.refuse(layer().whiteout(path));
            assert!(matches!(error, LayerError::ParentComponent { .. }), "{path}: {error}");
        }
        let error = image.refuse(layer().dir("../outside/new", 0o755));
        assert!(matches!(error, LayerError::ParentComponent { .. }), "{error}");
        assert!(image.outside.join("victim").exists());
    }

    #[test]
    fn layer_refuses_writing_through_a_symlink_from_a_lower_layer() {
        // Layer 1 makes `etc` a symlink to a directory outside (an absolute target, which is
        // fine: it is resolved inside the container at run time). Nothing of a later layer
        // may go through it.
        type Attempt = fn(&str) -> Layer;
        let attempts: [(&str, Attempt); 8] = [
            ("a file", |_| layer().file("etc/passwd", 0o644, b"evil")),
            ("a file over an outside file", |_| {
                layer().file("etc/victim", 0o644, b"evil")
            }),
            ("a directory", |_| layer().dir("etc/sub/", 0o755)),
            ("a symlink", |_| layer().symlink("etc/link", "/")),
            ("a hard link", |_| layer().file("f", 0o644, b"f").hardlink("etc/h", "f")),
            ("a whiteout", |_| layer().whiteout("etc/.wh.victim")),
            ("an opaque marker", |_| layer().whiteout("etc/.wh..wh..opq")),
            ("a deeper path", |_| layer().file("etc/dir/evil", 0o644, b"evil")),
        ];
        for (symlink_target, relative) in [("absolute", false), ("relative", true)] {
            for (attempt, build) in attempts {
                let mut image = image();
                let target = if relative {
                    "../outside".to_owned()
                } else {
                    image.outside("")
                };
                image.apply(layer().dir("usr", 0o755).symlink("etc", &target));
                let error = image.refuse(build(&target));
                match &error {
                    LayerError::ThroughSymlink { symlink, .. } => {
                        assert_eq!(symlink, "etc", "{symlink_target} {attempt}")
                    }
                    other => panic!("{symlink_target} {attempt}: {other}"),
                }
                assert!(error.to_string().contains("goes through symlink 'etc'"), "{error}");
                assert_eq!(fs::read(image.outside.join("victim")).unwrap(), b"original");
                assert!(!image.outside.join("passwd").exists());
            }
        }
        // A hard link whose target goes through the symlink.
        let mut image = image();
        let outside = image.outside("");
        image.apply(layer().symlink("etc", &outside));
        let error = image.refuse(layer().hardlink("h", "etc/victim"));
        assert!(matches!(error, LayerError::HardlinkThroughSymlink { .. }), "{error}");
        // A symlink the same layer made, then a path through it.
        let mut image = self::image();
        let error = image.refuse(layer().dir("sub", 0o755).symlink("a", "sub").file("a/f", 0o644, b"x"));
        assert!(matches!(error, LayerError::ThroughSymlink { .. }), "{error}");
        // Nor through a file.
        let mut image = self::image();
        let error = image.refuse(layer().file("f", 0o644, b"f").file("f/g", 0o644, b"x"));
        assert!(matches!(error, LayerError::ThroughNonDirectory { .. }), "{error}");
    }

    #[test]
    fn layer_keeps_absolute_symlink_targets_verbatim() {
        let mut image = image();
        let victim = image.outside("victim");
        image.apply(
            layer()
                .symlink("bin/sh", "/bin/busybox")
                .symlink("up", "../../../../etc/shadow")
                .symlink("host", &victim)
                .symlink("dots", "/a/./b/../c//d"),
        );
        assert_eq!(fs::read_link(image.path("bin/sh")).unwrap(), Path::new("/bin/busybox"));
        assert_eq!(
            fs::read_link(image.path("up")).unwrap(),
            Path::new("../../../../etc/shadow")
        );
        assert_eq!(fs::read_link(image.path("host")).unwrap(), Path::new(&victim));
        assert_eq!(fs::read_link(image.path("dots")).unwrap().as_os_str(), "/a/./b/../c//d");
        assert_eq!(fs::read(image.outside.join("victim")).unwrap(), b"original");
        let error = image.refuse(layer().symlink("empty", ""));
        assert!(matches!(error, LayerError::SymlinkEmpty { .. }), "{error}");
    }

    #[test]
    fn layer_refuses_device_nodes_and_fifos() {
        for (entry_type, kind) in [
            (EntryType::Char, "character device"),
            (EntryType::Block, "block device"),
            (EntryType::Fifo, "fifo"),
            (EntryType::new(b'V'), "type 'V'"),
        ] {
            let mut image = image();
            let error = image.refuse(layer().raw(b"dev/node", entry_type, 0o666, (0, 0), b"", b""));
            match &error {
                LayerError::UnsupportedType { path, kind: named } => {
                    assert_eq!((&path[..], &named[..]), ("dev/node", kind))
                }
                other => panic!("{kind}: {other}"),
            }
            assert!(image.listing().is_empty(), "refused before anything is created");
        }
    }

    #[test]
    fn layer_refuses_whiteouts_that_name_no_file() {
        for path in ["dir/.wh.", "dir/.wh..", "dir/.wh..."] {
            let mut image = image();
            image.apply(layer().file("dir/f", 0o644, b"f").file("g", 0o644, b"g"));
            let error = image.refuse(layer().whiteout(path));
            assert!(matches!(error, LayerError::Whiteout { .. }), "{path}: {error}");
            assert_eq!(image.listing(), ["dir/", "dir/f", "g"], "{path}");
        }
        let mut image = image();
        let error = image.refuse(layer().file(".wh..wh.plnk/1234", 0o644, b"aufs"));
        assert!(matches!(error, LayerError::Whiteout { .. }), "{error}");
    }

    #[test]
    fn layer_strips_special_bits_unless_kept() {
        let special = || {
            layer()
                .file("bin/setuid", 0o4755, b"x")
                .file("bin/setgid", 0o2755, b"x")
                .owned_file("bin/owned-setuid", 0o4750, (1000, 1000), b"x")
                .dir("tmp", 0o1777)
        };
        let mut image = image();
        image.apply(special());
        assert_eq!(mode(&image.path("bin/setuid")), 0o755);
        assert_eq!(mode(&image.path("bin/setgid")), 0o755);
        assert_eq!(mode(&image.path("bin/owned-setuid")), 0o750);
        assert_eq!(mode(&image.path("tmp")), 0o777);

        let mut image = image_with(LayerLimits {
            special_bits: SpecialBits::Keep,
            ..LayerLimits::default()
        });
        image.apply(special());
        assert_eq!(mode(&image.path("bin/setuid")), 0o4755);
        assert_eq!(mode(&image.path("bin/setgid")), 0o2755);
        assert_eq!(mode(&image.path("bin/owned-setuid")), 0o4750, "kept through chown");
        assert_eq!(owner_of(&image.path("bin/owned-setuid")), (1000, 1000));
        assert_eq!(mode(&image.path("tmp")), 0o1777);
    }

    #[test]
    fn layer_stops_at_the_size_limit_across_layers() {
        const LIMIT: u64 = 1 << 20;
        let limits = LayerLimits {
            max_total_bytes: LIMIT,
            ..LayerLimits::default()
        };
        let mut image = image_with(limits);
        let half = vec![7; (LIMIT / 2) as usize];
        image.apply(layer().file("a", 0o644, &half));
        image.apply(layer().file("b", 0o644, &half));
        assert_eq!(image.meter.bytes(), LIMIT, "exactly the limit fits");
        let error = image.refuse(layer().file("c", 0o644, b"1"));
        match &error {
            LayerError::TooLarge { path, limit } => assert_eq!((&path[..], *limit), ("c", LIMIT)),
            other => panic!("{other}"),
        }
    }

    /// A gzip layer blob of one file `zeros` of `size` zero bytes (a multiple of 1 MiB),
    /// made of one-MiB gzip members so the test need not compress it all.
    fn zero_bomb(size: u64) -> Vec<u8> {
        const CHUNK: usize = 1 << 20;
        let mut bomb_header = header(EntryType::Regular, 0o644, size as usize);
        bomb_header.set_path("zeros").unwrap();
        bomb_header.set_cksum();
        let mut bomb = gzip(bomb_header.as_bytes());
        let zeros = gzip(&vec![0; CHUNK]);
        for _ in 0..size / CHUNK as u64 {
            bomb.extend_from_slice(&zeros);
        }
        bomb.extend(gzip(&[0; 1024]));
        bomb
    }

    #[test]
    fn layer_stops_a_gzip_bomb_at_the_size_limit() {
        const BOMB: u64 = 1 << 30;
        const LIMIT: u64 = 1 << 20;
        // One file of 1 GiB of zeros in about 4 MiB of gzip.
        let bomb = zero_bomb(BOMB);

        let mut image = image_with(LayerLimits {
            max_total_bytes: LIMIT,
            ..LayerLimits::default()
        });
        let mut input = &bomb[..];
        // By reference, so what is left of `input` afterwards shows how much was read.
        let reader: &mut &[u8] = &mut input;
        let stream = decompressor(MEDIA_TYPE_LAYER_TAR_GZIP, reader).expect("gzip layer");
        let error = apply_layer(stream, &image.rootfs, &image.limits, &mut image.meter).expect_err("a bomb");
        assert!(matches!(error, LayerError::TooLarge { .. }), "{error}");
        assert!(
            fs::metadata(image.path("zeros")).unwrap().len() <= LIMIT,
            "wrote no more than the limit"
        );
        let consumed = bomb.len() - input.len();
        assert!(
            consumed < bomb.len() / 10,
            "read {consumed} of {} compressed bytes",
            bomb.len()
        );
    }

    #[test]
    fn layer_refuses_too_many_entries_across_layers() {
        let mut image = image_with(LayerLimits {
            max_entries: 4,
            ..LayerLimits::default()
        });
        image.apply(layer().file("a", 0o644, b"a").whiteout(".wh.x"));
        image.apply(layer().file("b", 0o644, b"b").dir("c", 0o755));
        let error = image.refuse(layer().file("d", 0o644, b"d"));
        match &error {
            LayerError::TooManyEntries { path, limit } => assert_eq!((&path[..], *limit), ("d", 4)),
            other => panic!("{other}"),
        }
        // Directories a path implies count too.
        let mut image = image_with(LayerLimits {
            max_entries: 3,
            ..LayerLimits::default()
        });
        let error = image.refuse(layer().file("x/y/z/file", 0o644, b"f"));
        assert!(matches!(error, LayerError::TooManyEntries { .. }), "{error}");
    }

    #[test]
    fn layer_refuses_corrupt_and_truncated_streams() {
        let complete = layer().file("data", 0o644, &[5; 4000]).tar();
        // Cut inside the data, at the entry boundary (no end marker), and to nothing.
        for cut in [512 + 100, 512 + 4096, 0] {
            let mut image = image();
            let error = image.refuse_bytes(&complete[..cut]);
            assert!(matches!(error, LayerError::Corrupt { .. }), "cut at {cut}: {error}");
        }
        let mut bad_checksum = complete.clone();
        bad_checksum[0] ^= 1;
        let error = image().refuse_bytes(&bad_checksum);
        assert!(matches!(error, LayerError::Corrupt { .. }), "{error}");
        let mut appended = complete.clone();
        appended.extend(layer().file("hidden", 0o644, b"x").tar());
        let error = image().refuse_bytes(&appended);
        assert!(matches!(error, LayerError::Corrupt { .. }), "{error}");
        // A gzip layer whose stream is cut.
        let gz = gzip(&complete);
        let mut image = image();
        let stream = decompressor(MEDIA_TYPE_DOCKER_LAYER_GZIP, &gz[..gz.len() - 8]).expect("gzip layer");
        let error = apply_layer(stream, &image.rootfs, &image.limits, &mut image.meter).unwrap_err();
        assert!(matches!(error, LayerError::Corrupt { .. }), "{error}");
        // Metadata with no end: a directory entry carrying megabytes of data.
        let mut image = self::image();
        let error = image.refuse(layer().raw(b"dir", EntryType::Directory, 0o755, (0, 0), b"", &vec![0; 2 << 20]));
        assert!(matches!(error, LayerError::MetadataTooLarge { .. }), "{error}");
    }

    #[test]
    fn layer_decompressor_takes_oci_and_docker_media_types() {
        let tar = layer().file("f", 0o644, b"content").tar();
        let gz = gzip(&tar);
        for (media_type, blob) in [
            (MEDIA_TYPE_LAYER_TAR, &tar),
            (MEDIA_TYPE_LAYER_TAR_GZIP, &gz),
            (MEDIA_TYPE_DOCKER_LAYER_GZIP, &gz),
        ] {
            let mut image = image();
            let stream = decompressor(media_type, &blob[..]).expect(media_type);
            apply_layer(stream, &image.rootfs, &image.limits, &mut image.meter).expect(media_type);
            assert_eq!(fs::read(image.path("f")).unwrap(), b"content", "{media_type}");
        }
        for media_type in [
            MEDIA_TYPE_LAYER_TAR_ZSTD,
            "application/vnd.oci.image.config.v1+json",
            "text/plain\n",
        ] {
            let Err(error) = decompressor(media_type, &gz[..]) else {
                panic!("{media_type} accepted");
            };
            assert!(matches!(error, LayerError::UnsupportedMediaType { .. }), "{error}");
            assert!(!error.to_string().contains('\n'), "{error}");
        }
        let Err(error) = decompressor(MEDIA_TYPE_LAYER_TAR_ZSTD, &gz[..]) else {
            unreachable!()
        };
        assert!(error.to_string().contains("zstd"), "{error}");
    }

    #[test]
    fn every_layer_type_the_coordinator_accepts_is_applied() {
        // `drover release create --image` accepts exactly drover_protocol's list: an
        // agent must apply each of them (an uncompressed Docker layer once slipped past).
        let tar = layer().file("f", 0o644, b"content").tar();
        let gz = gzip(&tar);
        for media_type in drover_protocol::oci::APPLICABLE_LAYERS {
            let blob = if media_type.contains("gzip") { &gz } else { &tar };
            let mut image = image();
            let stream = decompressor(media_type, &blob[..]).expect(media_type);
            apply_layer(stream, &image.rootfs, &image.limits, &mut image.meter).expect(media_type);
            assert_eq!(fs::read(image.path("f")).unwrap(), b"content", "{media_type}");
        }
    }

    #[test]
    fn layer_refuses_a_rootfs_that_is_not_a_real_directory() {
        let mut image = image();
        let link = image.root.path().join("link");
        std::os::unix::fs::symlink(&image.outside, &link).unwrap();
        let tar = layer().file("evil", 0o644, b"x").tar();
        let error = apply_layer(&tar[..], &link, &image.limits, &mut image.meter).unwrap_err();
        assert!(matches!(error, LayerError::Rootfs { .. }), "{error}");
        assert!(!image.outside.join("evil").exists());
    }

    #[test]
    fn deep_layer_is_refused_naming_the_depth_limit() {
        // The same rule as release tarballs: 2,000 directories deep is refused before any
        // is made (`./` counted as nothing).
        let deep = format!("./{}/file", vec!["a"; 2000].join("/"));
        let mut image = image();
        let error = image.refuse(layer().long_file(&deep, b"x"));
        match &error {
            LayerError::PathLimit {
                limit: PathLimit::Depth { components: 2001 },
                ..
            } => {}
            other => panic!("{other}"),
        }
        assert!(
            error
                .to_string()
                .contains("2001 directories deep, more than the limit of 128"),
            "{error}"
        );
        assert_eq!(fs::read_dir(&image.rootfs).unwrap().count(), 0, "nothing was made");

        let mut image = self::image();
        let at_limit = format!("{}/file", vec!["a"; unpack::MAX_PATH_DEPTH - 1].join("/"));
        image.apply(layer().long_file(&at_limit, b"x"));
        assert_eq!(fs::read(image.path(&at_limit)).unwrap(), b"x");
        let long = format!("{}/file", vec!["n".repeat(250); 10].join("/"));
        let error = image.refuse(layer().long_file(&long, b"x"));
        assert!(
            matches!(
                error,
                LayerError::PathLimit {
                    limit: PathLimit::Length { .. },
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn gzip_bomb_layer_is_refused_by_the_compression_ratio() {
        // 2 GiB of zeros in a few MiB of gzip, under the default 8 GiB limit: refused by
        // the ratio soon after the exempt 64 MiB, as stage_image applies layers.
        let bomb = zero_bomb(2 << 30);
        let mut image = image();
        let mut input = &bomb[..];
        let reader: &mut &[u8] = &mut input;
        let error = apply_blob(
            MEDIA_TYPE_LAYER_TAR_GZIP,
            reader,
            &image.rootfs,
            &image.limits,
            &mut image.meter,
        )
        .expect_err("a bomb");
        match &error {
            LayerError::CompressionRatio { path, ratio } => {
                assert_eq!(path, "zeros");
                assert!(ratio.unpacked > unpack::RATIO_EXEMPT_BYTES, "{ratio}");
            }
            other => panic!("{other}"),
        }
        assert!(error.to_string().contains("more than the limit of 100 to 1"), "{error}");
        let written = fs::metadata(image.path("zeros")).unwrap().len();
        assert!(
            written <= unpack::RATIO_EXEMPT_BYTES + COPY_BUFFER as u64,
            "wrote {written}"
        );
        assert!(bomb.len() - input.len() < bomb.len() / 10);

        // An uncompressed layer never trips it, whatever its content.
        let tar = layer().file("zeros", 0o644, &[0; 4096]).tar();
        let mut image = self::image();
        apply_blob(
            MEDIA_TYPE_LAYER_TAR,
            &tar[..],
            &image.rootfs,
            &image.limits,
            &mut image.meter,
        )
        .expect("plain tar");
    }
}
