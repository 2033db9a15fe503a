//! Fuzzes the release tarball rules: `drover_agent::unpack::unpack` into an empty
//! directory, with small limits.
//!
//! The first byte chooses the mode. Bit 0 clear: the rest is a tar stream, which the
//! harness gzips (stored, no compression) so the fuzzer works on tar headers directly.
//! Bit 0 set: the rest is the tar.gz as downloaded. Bit 1 set: setuid, setgid and sticky
//! bits are kept (`sandbox.allow_setuid`), otherwise stripped.
//!
//! After every run, accepted or refused, nothing outside the directory may have changed
//! (`drover_fuzz::Arena`), the tree holds only directories, regular files and symlinks,
//! no hard link leads outside, and no symlink resolves outside the directory. When the
//! archive is accepted, the summary must count what is on disk, and what the archive
//! lists is what is there: each regular file with its bytes, each symlink with its
//! target, each hard link sharing its target's inode (what `tar -tvf` shows an auditor
//! is what runs).

#![no_main]

use std::ffi::OsStr;
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use drover_agent::unpack::{SpecialBits, UnpackLimits, unpack};
use drover_fuzz::{Arena, debug, symlink_escape, walk};
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use libfuzzer_sys::fuzz_target;
use tar::EntryType;

/// Small enough that a run stays in memory and milliseconds, large enough for real trees.
const MAX_TOTAL_BYTES: u64 = 4 << 20;
const MAX_ENTRIES: u64 = 512;

/// An archive path as unpack reads it: `.` components and empty ones dropped.
fn normalized(raw: &[u8]) -> PathBuf {
    raw.split(|&byte| byte == b'/')
        .filter(|component| !component.is_empty() && *component != b".")
        .map(OsStr::from_bytes)
        .collect()
}

/// Reads the accepted archive again with the tar crate and checks that each member is on
/// disk as it says.
fn check_members_on_disk(gzipped: &[u8], root: &Path) {
    let mut archive = tar::Archive::new(MultiGzDecoder::new(gzipped));
    let entries = archive.entries().expect("an accepted archive reads again");
    for entry in entries {
        let mut entry = entry.expect("an accepted archive's entries read again");
        let path = normalized(&entry.path_bytes());
        let on_disk = root.join(&path);
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut expected = Vec::new();
                entry
                    .read_to_end(&mut expected)
                    .expect("an accepted member's data reads again");
                let found = fs::read(&on_disk).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                assert!(
                    found == expected,
                    "{}: {} bytes on disk, {} in the archive",
                    path.display(),
                    found.len(),
                    expected.len()
                );
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|name| name.into_owned())
                    .unwrap_or_default();
                let found = fs::read_link(&on_disk).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                assert_eq!(
                    found.as_os_str().as_bytes(),
                    &target[..],
                    "{}: symlink target",
                    path.display()
                );
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|name| normalized(&name))
                    .unwrap_or_default();
                let link = fs::symlink_metadata(&on_disk).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                let file = fs::symlink_metadata(root.join(&target)).expect("a hard link's target");
                assert_eq!(
                    link.ino(),
                    file.ino(),
                    "{} is not a hard link to {}",
                    path.display(),
                    target.display()
                );
            }
            EntryType::Directory => {
                let metadata =
                    fs::symlink_metadata(&on_disk).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                assert!(metadata.is_dir(), "{} is not a directory", path.display());
            }
            _ => {}
        }
    }
}

fn arena() -> &'static Arena {
    static ARENA: OnceLock<Arena> = OnceLock::new();
    ARENA.get_or_init(|| Arena::new("unpack"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let gzipped;
    let archive = if mode & 1 == 1 {
        rest
    } else {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::none());
        encoder.write_all(rest).expect("gzip into memory");
        gzipped = encoder.finish().expect("gzip into memory");
        &gzipped[..]
    };
    let special_bits = if mode & 2 == 2 {
        SpecialBits::Keep
    } else {
        SpecialBits::Strip
    };
    // Limits not named here keep their defaults, so a limit added later is fuzzed as it
    // ships (the update is needless only while every field is named).
    #[allow(clippy::needless_update)]
    let limits = UnpackLimits {
        max_total_bytes: MAX_TOTAL_BYTES,
        max_entries: MAX_ENTRIES,
        special_bits,
        ..UnpackLimits::default()
    };
    let arena = arena();
    let result = unpack(archive, arena.root(), &limits);
    debug("unpack", &result);
    arena.check_outside_untouched();
    let tree = walk(arena.root());
    debug("tree", &tree);
    for link in tree.symlinks.keys() {
        if let Some(problem) = symlink_escape(arena.root(), link) {
            panic!("unpack left a symlink that leads outside: {problem} (result: {result:?})");
        }
    }
    if let Ok(summary) = result {
        assert!(summary.bytes <= MAX_TOTAL_BYTES, "wrote more than the byte limit");
        assert_eq!(
            summary.files + summary.hardlinks,
            tree.file_paths,
            "files: {summary:?} {tree:?}"
        );
        assert_eq!(summary.files, tree.inodes, "inodes: {summary:?} {tree:?}");
        assert_eq!(
            summary.symlinks,
            tree.symlinks.len() as u64,
            "symlinks: {summary:?} {tree:?}"
        );
        assert_eq!(summary.dirs, tree.dirs, "dirs: {summary:?} {tree:?}");
        assert_eq!(summary.bytes, tree.bytes, "bytes: {summary:?} {tree:?}");
        check_members_on_disk(archive, arena.root());
        if special_bits == SpecialBits::Strip {
            assert!(
                tree.special_bits.is_empty(),
                "special bits kept: {:?}",
                tree.special_bits
            );
        }
    }
    arena.reset();
});
