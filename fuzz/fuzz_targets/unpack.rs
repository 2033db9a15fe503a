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
//! archive is accepted, the summary must count what is on disk.

#![no_main]

use std::io::Write as _;
use std::sync::OnceLock;

use drover_agent::unpack::{SpecialBits, UnpackLimits, unpack};
use drover_fuzz::{Arena, debug, symlink_escape, walk};
use flate2::Compression;
use flate2::write::GzEncoder;
use libfuzzer_sys::fuzz_target;

/// Small enough that a run stays in memory and milliseconds, large enough for real trees.
const MAX_TOTAL_BYTES: u64 = 4 << 20;
const MAX_ENTRIES: u64 = 512;

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
