//! The decompressed tar stream as both unpackers read it (release tarballs in
//! [`crate::unpack`], OCI layers in [`crate::oci::layer`]), and the archive rules they
//! share, written once here: the metadata meter that stops a hostile stream of headers,
//! long names and pax records, the end-of-archive check, the limits on entry paths (depth,
//! length, name length), the compression-ratio limit, and the free-space check while
//! writing. Each unpacker reports them in its own error type (through
//! `From<TarStreamError>`).

use std::cell::Cell;
use std::ffi::OsStr;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Most archive metadata (headers, GNU long names, pax records, padding, data of entries
/// that have none, such as a directory's) read between two entries. The tar crate holds long
/// names and pax records in memory, so this bounds what a hostile header can make it allocate.
pub(crate) const MAX_METADATA_BETWEEN_ENTRIES: u64 = 1 << 20;
/// Metadata allowed per entry on top of one `MAX_METADATA_BETWEEN_ENTRIES`, so the
/// decompression work spent on metadata grows with the entries and not beyond.
pub(crate) const METADATA_PER_ENTRY: u64 = 16 << 10;
/// A tar block; a complete archive ends with two zero blocks.
pub(crate) const BLOCK: u64 = 512;

/// Archive-chosen text made safe for a one-line message: not UTF-8 shown lossily, control
/// characters escaped, shortened to `MAX_QUOTED` characters.
pub(crate) fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len().min(MAX_QUOTED));
    for (count, character) in text.chars().enumerate() {
        if count == MAX_QUOTED {
            out.push('…');
            break;
        }
        if character.is_control() {
            out.extend(character.escape_default());
        } else {
            out.push(character);
        }
    }
    out
}

/// Longest piece of archive-chosen text quoted in an error.
const MAX_QUOTED: usize = 256;

/// Most components an entry path may have (its depth below the release directory or
/// rootfs). Real trees stay far below it (the deepest `node_modules` nesting old npm
/// versions made is a few dozen); it keeps every release removable by tools that hold one
/// open directory per level, as `std::fs::remove_dir_all` and `rm -r` do, well within the
/// default limit of 1,024 open files; and a tree of 2,000 levels is refused before its
/// first directory is made.
pub const MAX_PATH_DEPTH: usize = 128;
/// Longest entry path in bytes, after `.` components and repeated slashes are dropped. The
/// agent creates entries by their full path, which must stay under Linux's `PATH_MAX` of
/// 4,096 bytes: this leaves 2,047 for the part in front (the state directory,
/// `apps/<app>/releases/.staging-<version>-<random>/rootfs/` is at most about 240 of them
/// plus the state directory). POSIX ustar allows 255; real archives stay well below.
pub const MAX_PATH_BYTES: usize = 2048;
/// Longest component of an entry path: Linux's `NAME_MAX`, which every filesystem it
/// supports enforces anyway, checked here so the error names the entry.
pub const MAX_NAME_BYTES: usize = 255;

/// Largest allowed ratio of bytes unpacked into files to compressed bytes read. Release
/// tarballs and image layers (programs, libraries, text, assets) compress 2 to 10 times,
/// very repetitive text (logs, JSON) up to about 50; deflate itself cannot exceed about
/// 1,032 (runs of zeros). 100 leaves twice the most a real release needs and cuts what a
/// gzip bomb can make of its compressed size tenfold.
pub const MAX_COMPRESSION_RATIO: u64 = 100;
/// Bytes any stream may unpack to whatever its ratio, so small releases with a few highly
/// compressible files (zero-filled or sparse ones) are never refused by the ratio.
pub const RATIO_EXEMPT_BYTES: u64 = 64 << 20;

/// Bytes an unpack leaves free on the filesystem it writes to, for the host (logs, the
/// running apps' own data). Counted in blocks available to unprivileged users, so the
/// blocks a filesystem reserves for root (5 % on ext4) stay free as well: the agent runs
/// as root and could otherwise take them.
pub const MIN_FREE_BYTES: u64 = 128 << 20;
/// Inodes an unpack leaves free (where the filesystem counts them).
pub const MIN_FREE_INODES: u64 = 16_384;
/// Bytes written between two free-space checks while unpacking.
const SPACE_CHECK_INTERVAL: u64 = 16 << 20;
/// Entries created between two free-space checks while unpacking.
const SPACE_CHECK_ENTRIES: u64 = 4096;

/// A stream problem, before the unpacker names it in its own error type.
#[derive(Debug)]
pub(crate) enum TarStreamError {
    /// Headers, long names or pax records beyond the metadata limit.
    MetadataTooLarge { context: String },
    /// The stream is truncated, corrupt, not a tar, or has data after its end.
    Corrupt { context: String, detail: String },
}

/// An entry path beyond the limits every unpacker applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathLimit {
    /// More than [`MAX_PATH_DEPTH`] components.
    Depth { components: usize },
    /// More than [`MAX_PATH_BYTES`] bytes.
    Length { bytes: usize },
    /// A component longer than [`MAX_NAME_BYTES`] bytes.
    Name { bytes: usize },
}

impl fmt::Display for PathLimit {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathLimit::Depth { components } => write!(
                formatter,
                "is {components} directories deep, more than the limit of {MAX_PATH_DEPTH}"
            ),
            PathLimit::Length { bytes } => write!(
                formatter,
                "is {bytes} bytes long, more than the limit of {MAX_PATH_BYTES}"
            ),
            PathLimit::Name { bytes } => write!(
                formatter,
                "has a component of {bytes} bytes, more than the limit of {MAX_NAME_BYTES}"
            ),
        }
    }
}

/// Why an entry path is not a path inside the release directory or rootfs.
#[derive(Debug)]
pub(crate) enum PathProblem {
    /// It starts with `/` and the unpacker refuses that.
    Absolute,
    /// It has a `..` component.
    ParentDir,
    /// It is too deep or too long.
    Limit(PathLimit),
}

/// What an unpacker does with an entry path that starts with `/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LeadingSlash {
    /// Refuse it (release tarballs: SPEC.md §3).
    Refuse,
    /// Take it from the root (image layers, as umoci, runc and containerd do).
    FromRoot,
}

/// The entry path as a normalized relative path (`.` components and repeated slashes
/// dropped; empty for the root itself), under the path limits. Any `..` is refused, even
/// one that would stay inside, as tar-rs, GNU tar and bsdtar refuse or strip them too.
pub(crate) fn entry_path(raw: &[u8], leading_slash: LeadingSlash) -> Result<PathBuf, PathProblem> {
    if leading_slash == LeadingSlash::Refuse && raw.first() == Some(&b'/') {
        return Err(PathProblem::Absolute);
    }
    let mut path = PathBuf::new();
    let mut components = 0usize;
    let mut bytes = 0usize;
    for component in raw.split(|&byte| byte == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(PathProblem::ParentDir),
            name => {
                components += 1;
                bytes += name.len() + usize::from(components > 1);
                if name.len() > MAX_NAME_BYTES {
                    return Err(PathProblem::Limit(PathLimit::Name { bytes: name.len() }));
                }
                path.push(OsStr::from_bytes(name));
            }
        }
    }
    // Judged once the whole path is seen, so the error gives its real depth and length.
    if components > MAX_PATH_DEPTH {
        return Err(PathProblem::Limit(PathLimit::Depth { components }));
    }
    if bytes > MAX_PATH_BYTES {
        return Err(PathProblem::Limit(PathLimit::Length { bytes }));
    }
    Ok(path)
}

/// Compressed bytes read from one stream, for the compression-ratio limit. Atomic only so
/// that a reader holding it can be `Send` (a boxed decompressor must be).
#[derive(Debug, Default)]
pub(crate) struct CompressedCounter {
    read: AtomicU64,
}

impl CompressedCounter {
    /// Compressed bytes read so far (the decompressor's read-ahead included, which only
    /// makes the limit more lenient).
    pub(crate) fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Checks `unpacked` bytes written from this stream against the ratio limit.
    pub(crate) fn check(&self, unpacked: u64) -> Result<(), RatioExceeded> {
        let compressed = self.read();
        if unpacked > RATIO_EXEMPT_BYTES && unpacked > compressed.saturating_mul(MAX_COMPRESSION_RATIO) {
            return Err(RatioExceeded { unpacked, compressed });
        }
        Ok(())
    }
}

/// A stream that unpacked to more than [`MAX_COMPRESSION_RATIO`] times what was read of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RatioExceeded {
    /// Bytes written into files from the stream so far.
    pub unpacked: u64,
    /// Compressed bytes read from it so far.
    pub compressed: u64,
}

impl fmt::Display for RatioExceeded {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} bytes unpacked from {} compressed bytes, more than the limit of {MAX_COMPRESSION_RATIO} to 1 \
             (beyond the first {RATIO_EXEMPT_BYTES} bytes); refused as a likely gzip bomb",
            self.unpacked, self.compressed
        )
    }
}

/// The compressed stream, counted.
pub(crate) struct CountCompressed<'c, R> {
    pub(crate) inner: R,
    pub(crate) counter: &'c CompressedCounter,
}

impl<R: Read> Read for CountCompressed<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buffer)?;
        self.counter.read.fetch_add(count as u64, Ordering::Relaxed);
        Ok(count)
    }
}

/// Free space on a filesystem as the agent may use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeSpace {
    /// Bytes available to unprivileged users.
    pub bytes: u64,
    /// Inodes available to unprivileged users; `None` where the filesystem does not count
    /// them (btrfs, for one, reports none).
    pub inodes: Option<u64>,
}

/// Free space on the filesystem holding `path` (`statvfs`).
pub fn free_space(path: &Path) -> io::Result<FreeSpace> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(FreeSpace {
        bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
        inodes: (stat.f_files > 0).then_some(stat.f_favail),
    })
}

/// A filesystem too full to go on unpacking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskFull {
    /// The directory being written (quoted).
    pub directory: String,
    /// What was free when it was looked at.
    pub free: FreeSpace,
    /// Bytes written into files so far.
    pub written: u64,
}

impl fmt::Display for DiskFull {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "the filesystem of {} has {} bytes",
            self.directory, self.free.bytes
        )?;
        if let Some(inodes) = self.free.inodes {
            write!(formatter, " and {inodes} inodes")?;
        }
        write!(
            formatter,
            " free after {} bytes were unpacked, less than the {MIN_FREE_BYTES} bytes and \
             {MIN_FREE_INODES} inodes the agent leaves free for the host; free space there or make the release smaller",
            self.written
        )
    }
}

/// Looks at the free space of the filesystem being written to every
/// `SPACE_CHECK_INTERVAL` bytes and every `SPACE_CHECK_ENTRIES` entries (and before the
/// first), and stops the unpack while [`MIN_FREE_BYTES`] and [`MIN_FREE_INODES`] are still
/// free.
#[derive(Debug)]
pub(crate) struct SpaceWatch<'p> {
    directory: &'p Path,
    next_bytes: Cell<u64>,
    next_entries: Cell<u64>,
}

impl<'p> SpaceWatch<'p> {
    /// A watch over the filesystem of `directory`, which already holds `written` bytes of
    /// this release; the first check is at once.
    pub(crate) fn new(directory: &'p Path, written: u64) -> SpaceWatch<'p> {
        SpaceWatch {
            directory,
            next_bytes: Cell::new(written),
            next_entries: Cell::new(0),
        }
    }

    /// `written` bytes and `entries` entries of the release are on disk; checks the free
    /// space when due.
    pub(crate) fn check(&self, written: u64, entries: u64) -> Result<(), SpaceProblem> {
        if written < self.next_bytes.get() && entries < self.next_entries.get() {
            return Ok(());
        }
        self.next_bytes.set(written.saturating_add(SPACE_CHECK_INTERVAL));
        self.next_entries.set(entries.saturating_add(SPACE_CHECK_ENTRIES));
        let free = free_space(self.directory).map_err(|source| SpaceProblem::Statvfs {
            directory: quote_path(self.directory),
            source,
        })?;
        if free.bytes < MIN_FREE_BYTES || free.inodes.is_some_and(|inodes| inodes < MIN_FREE_INODES) {
            return Err(SpaceProblem::Full(DiskFull {
                directory: quote_path(self.directory),
                free,
                written,
            }));
        }
        Ok(())
    }
}

/// Why a free-space check stopped an unpack.
#[derive(Debug)]
pub(crate) enum SpaceProblem {
    Full(DiskFull),
    Statvfs { directory: String, source: io::Error },
}

fn quote_path(path: &Path) -> String {
    quote(path.as_os_str().as_bytes())
}

/// Counts the decompressed bytes the tar reader consumes outside file data: at most
/// `MAX_METADATA_BETWEEN_ENTRIES` between two entries, and in all no more than that per
/// stream plus `METADATA_PER_ENTRY` per entry. One meter may span several streams (the
/// layers of one image).
#[derive(Debug, Default)]
pub(crate) struct MetadataMeter {
    streams: Cell<u64>,
    entries: Cell<u64>,
    /// Set while file data is being copied.
    in_data: Cell<bool>,
    total: Cell<u64>,
    since_entry: Cell<u64>,
    exceeded: Cell<bool>,
}

impl MetadataMeter {
    /// A new stream (archive or layer) starts.
    pub(crate) fn stream_started(&self) {
        self.streams.set(self.streams.get() + 1);
        self.since_entry.set(0);
        self.exceeded.set(false);
    }

    /// The tar reader produced an entry.
    pub(crate) fn entry_started(&self) {
        self.entries.set(self.entries.get() + 1);
        self.since_entry.set(0);
    }

    /// Whether reads are file data (not counted) from now on.
    pub(crate) fn set_in_data(&self, in_data: bool) {
        self.in_data.set(in_data);
    }

    fn count(&self, bytes: usize) -> io::Result<()> {
        if self.in_data.get() {
            return Ok(());
        }
        let total = self.total.get() + bytes as u64;
        let since_entry = self.since_entry.get() + bytes as u64;
        self.total.set(total);
        self.since_entry.set(since_entry);
        let allowed_total = MAX_METADATA_BETWEEN_ENTRIES
            .saturating_mul(self.streams.get())
            .saturating_add(self.entries.get().saturating_mul(METADATA_PER_ENTRY));
        if since_entry > MAX_METADATA_BETWEEN_ENTRIES || total > allowed_total {
            self.exceeded.set(true);
            return Err(io::Error::other("tar metadata over the limit"));
        }
        Ok(())
    }
}

/// The decompressed stream as the tar reader sees it, metered.
pub(crate) struct Metered<'m, R> {
    pub(crate) inner: R,
    pub(crate) meter: &'m MetadataMeter,
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buffer)?;
        self.meter.count(count)?;
        Ok(count)
    }
}

/// An error from the decompressed stream: over the metadata limit, or truncated/corrupt
/// compression or tar.
pub(crate) fn stream_error(meter: &MetadataMeter, context: String, error: io::Error) -> TarStreamError {
    if meter.exceeded.get() {
        TarStreamError::MetadataTooLarge { context }
    } else {
        TarStreamError::Corrupt {
            context,
            detail: quote(error.to_string().as_bytes()),
        }
    }
}

/// Where in the stream an error happened.
pub(crate) fn position(last_entry: Option<&str>) -> String {
    match last_entry {
        Some(name) => format!("after entry '{name}'"),
        None => "before its first entry".to_owned(),
    }
}

/// A header field that does not parse.
pub(crate) fn corrupt_header(name: &str, error: &io::Error) -> TarStreamError {
    TarStreamError::Corrupt {
        context: format!("in the header of entry '{name}'"),
        detail: quote(error.to_string().as_bytes()),
    }
}

/// The entry's mode as its header gives it.
pub(crate) fn header_mode<R: Read>(entry: &tar::Entry<'_, R>, name: &str) -> Result<u32, TarStreamError> {
    entry.header().mode().map_err(|error| corrupt_header(name, &error))
}

/// Reads what follows the tar end-of-archive block to the end of the stream, which makes
/// a gzip decoder check the CRC and length of every member: the rest of the end marker (a
/// complete archive ends with two zero blocks; the tar crate stops after the first) and
/// record padding, all zeros. Anything else is refused, as another extractor might read
/// it as more entries.
pub(crate) fn check_end(
    mut rest: impl Read,
    buffer: &mut [u8],
    meter: &MetadataMeter,
    context: String,
) -> Result<(), TarStreamError> {
    let mut trailing = 0u64;
    loop {
        let count = match rest.read(buffer) {
            Ok(0) => break,
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(stream_error(meter, context, error)),
        };
        if buffer[..count].iter().any(|&byte| byte != 0) {
            return Err(TarStreamError::Corrupt {
                context,
                detail: "data follows the end-of-archive marker".into(),
            });
        }
        trailing += count as u64;
    }
    if trailing < BLOCK {
        return Err(TarStreamError::Corrupt {
            context,
            detail: "the tar archive ends without its end-of-archive marker".into(),
        });
    }
    Ok(())
}
