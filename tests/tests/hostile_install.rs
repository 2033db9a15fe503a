//! Installs that fail must not leak (issue 12, defects 3 and 10c), through the agent's
//! real staging code on real filesystems: an archive 2,000 directories deep is refused by
//! name before anything is made; a failed staging directory is deleted whatever its depth
//! (deeper than this process may hold directories open, which is where
//! `std::fs::remove_dir_all` gave up and the error was ignored); what a crash left is
//! cleaned at start; a gzip bomb under `max_release_size` is stopped by the compression
//! ratio; and a filesystem that is too full is refused before and while unpacking, with
//! the numbers. The tests mount small tmpfs filesystems, so they need root, as the agent
//! does.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use drover_agent::fetch::{Cache, VerifiedArtifact};
use drover_agent::install::{self, StageError};
use drover_agent::oci::layer::{LayerError, LayerLimits, LayerMeter, apply_blob};
use drover_agent::unpack::{self, PathLimit, UnpackError, UnpackLimits};
use drover_protocol::{AppName, Digest, Version};
use flate2::Compression;
use flate2::write::GzEncoder;

fn app() -> AppName {
    "web".parse().expect("app name")
}

fn version() -> Version {
    "2.0.0".parse().expect("version")
}

/// The names in a directory, sorted; nothing for a directory that does not exist.
fn listing(directory: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(directory) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The soft limit on open files of this process (`Max open files` in /proc/self/limits).
fn open_files_limit() -> u64 {
    let limits = fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a Max open files line");
    line.split_whitespace()
        .nth(3)
        .expect("soft limit")
        .parse()
        .expect("a number")
}

/// Deeper than this process may hold directories open: what a removal holding one open
/// directory per level (`std::fs::remove_dir_all`) cannot delete. Bounded, so the test
/// stays fast; systemd gives services 1,024 and this harness usually runs with more.
fn deeper_than_open_files() -> usize {
    let limit = open_files_limit();
    assert!(
        limit <= 200_000,
        "the open-files limit ({limit}) is too high to build a tree deeper than it quickly; run with `ulimit -n 20000`"
    );
    limit as usize + 100
}

/// Where the tests with deep trees make them: a tmpfs, as tens of thousands of directory
/// operations on a disk shared with parallel builds can take a minute.
const DEEP_TREES: &str = "size=64m,nr_inodes=100000,mode=0755";

/// Makes `parent/name`, a chain of `depth` nested directories `a` with a file every 1,000
/// levels, using only short paths: each step moves the chain one level down into a new
/// directory. Far deeper than a path (PATH_MAX) can reach.
fn deep_chain(parent: &Path, name: &str, depth: usize) -> PathBuf {
    let top = parent.join(name);
    let next = parent.join(format!("{name}.next"));
    fs::create_dir(&top).expect("chain");
    for level in 1..depth {
        if level % 1000 == 0 {
            fs::write(top.join(format!("file-{level}")), b"data").expect("file in the chain");
        }
        fs::create_dir(&next).expect("next level");
        fs::rename(&top, next.join("a")).expect("move the chain down");
        fs::rename(&next, &top).expect("move it back up");
    }
    top
}

/// A tar.gz of `entries` (path, contents), paths written as given (GNU long names where
/// needed).
fn tarball(entries: &[(&str, &[u8])], compression: Compression) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, path, *data).expect("append");
    }
    let tar = builder.into_inner().expect("finish tar");
    let mut encoder = GzEncoder::new(Vec::new(), compression);
    encoder.write_all(&tar).expect("compress");
    encoder.finish().expect("finish gzip")
}

/// A tar.gz of one file `zeros` of `size` zero bytes (a multiple of 1 MiB) in about
/// size/1000 bytes: one-MiB gzip members concatenated (as `cat a.gz b.gz` does), so the
/// test need not compress it all; a decoder reads them as one stream.
fn zeros_tar_gz(size: u64) -> Vec<u8> {
    const CHUNK: usize = 1 << 20;
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_size(size);
    header.set_path("zeros").expect("path");
    header.set_cksum();
    let gzip = |bytes: &[u8]| {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(bytes).expect("compress");
        encoder.finish().expect("finish")
    };
    let mut archive = gzip(header.as_bytes());
    let zeros = gzip(&vec![0; CHUNK]);
    for _ in 0..size / CHUNK as u64 {
        archive.extend_from_slice(&zeros);
    }
    archive.extend(gzip(&[0; 1024]));
    archive
}

/// `bytes` as a verified artifact in a cache under `scratch`, as a download leaves it.
fn artifact(scratch: &Path, bytes: &[u8]) -> VerifiedArtifact {
    let digest: Digest = format!(
        "sha256:{}",
        drover_protocol::hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    )
    .parse()
    .expect("digest");
    let cache = Cache::new(scratch.join("cache"));
    drover_tests::block_on(cache.store("release.tar.gz", &digest, bytes)).expect("stored")
}

#[test]
fn deep_archive_is_refused_naming_the_depth_limit() {
    // The archive of the issue, through the agent's staging: 2,000 directories deep.
    let scratch = tempfile::tempdir().expect("scratch");
    let state = scratch.path().join("state");
    let path = format!("{}/file", vec!["a"; 2000].join("/"));
    let archive = artifact(scratch.path(), &tarball(&[(&path, b"x")], Compression::fast()));
    let error = install::stage(&archive, &state, &app(), &version(), &UnpackLimits::default())
        .expect_err("a 2,000-deep archive is refused");
    match &error {
        StageError::Unpack {
            source:
                UnpackError::PathLimit {
                    limit: PathLimit::Depth { components: 2001 },
                    ..
                },
            ..
        } => {}
        other => panic!("{other}"),
    }
    let message = error.to_string();
    assert!(
        message.starts_with("unpacking web 2.0.0: archive entry 'a/a/a/")
            && message.contains("its path is 2001 directories deep, more than the limit of 128"),
        "{message}"
    );
    assert!(!message.contains("os error"), "{message}");
    assert!(
        listing(&install::releases_dir(&state, &app())).is_empty(),
        "neither a release nor a staging directory is left"
    );
}

#[test]
fn failed_staging_leaves_nothing_behind() {
    // A fill that made a tree deeper than this process may hold directories open, then
    // failed: the staging directory goes, and the error is the fill's.
    let depth = deeper_than_open_files();
    let scratch = Tmpfs::mount(DEEP_TREES);
    let state = scratch.path().join("state");
    let error = install::stage_with(&state, &app(), &version(), |staging| {
        deep_chain(staging, "tree", depth);
        Err(StageError::Image {
            app: app(),
            version: version(),
            problem: "the fill failed on purpose".into(),
        })
    })
    .expect_err("the fill failed");
    assert!(
        matches!(&error, StageError::Image { problem, .. } if problem == "the fill failed on purpose"),
        "{error}"
    );
    assert_eq!(
        listing(&install::releases_dir(&state, &app())),
        Vec::<String>::new(),
        "the staging directory of a failed install is deleted"
    );
}

#[test]
fn staging_removal_works_at_any_depth() {
    let depth = deeper_than_open_files();
    let scratch = Tmpfs::mount(DEEP_TREES);
    let tree = scratch.path().join("tree");
    fs::create_dir(&tree).expect("tree");
    deep_chain(&tree, "deep", depth);
    // Wide too, read-only directories, and symlinks out of the tree that must not be
    // followed.
    let outside = scratch.path().join("outside");
    fs::create_dir(&outside).expect("outside");
    fs::write(outside.join("keep"), b"keep").expect("outside file");
    for index in 0..200 {
        fs::write(tree.join(format!("file-{index}")), b"x").expect("file");
    }
    std::os::unix::fs::symlink(&outside, tree.join("link-to-dir")).expect("symlink");
    std::os::unix::fs::symlink(outside.join("keep"), tree.join("link-to-file")).expect("symlink");
    let locked = tree.join("locked");
    fs::create_dir_all(locked.join("inner")).expect("locked");
    fs::write(locked.join("inner/f"), b"x").expect("file");
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o500)).expect("read-only");

    install::remove_tree(&tree).expect("removed");
    assert!(!tree.exists());
    assert_eq!(fs::read(outside.join("keep")).expect("outside untouched"), b"keep");
    assert_eq!(listing(scratch.path()), ["outside"]);

    // Nothing there, and a file, are fine too.
    install::remove_tree(&tree).expect("nothing to remove");
    let file = scratch.path().join("file");
    fs::write(&file, b"x").expect("file");
    install::remove_tree(&file).expect("a file");
    assert!(!file.exists());
}

#[test]
fn leftover_staging_is_cleaned_at_start() {
    let scratch = Tmpfs::mount(DEEP_TREES);
    let state = scratch.path().join("state");
    let web = state.join("apps/web/releases");
    let api = state.join("apps/api/releases");
    fs::create_dir_all(web.join("1.0.0/bin")).expect("release");
    fs::write(web.join("1.0.0/bin/app"), b"app").expect("release file");
    fs::create_dir_all(&api).expect("api");
    // What crashes leave: a staging directory of the deep archive, one of a normal one,
    // and a release a prune was deleting.
    deep_chain(&web, ".staging-2.0.0-0123456789ab", 2500);
    fs::create_dir_all(api.join(".staging-1.1.0-ba9876543210/etc")).expect("staging");
    fs::create_dir_all(web.join(".removing-0.9.0/bin")).expect("removing");
    // Not a directory of apps: left alone.
    fs::write(state.join("apps/stray"), b"x").expect("stray file");

    assert_eq!(install::clean_leftovers(&state).expect("cleaned"), 3);
    assert_eq!(listing(&web), ["1.0.0"]);
    assert!(listing(&api).is_empty());
    assert_eq!(fs::read(web.join("1.0.0/bin/app")).expect("release kept"), b"app");
    assert_eq!(install::clean_leftovers(&state).expect("again"), 0);
    assert_eq!(
        install::clean_leftovers(&scratch.path().join("none")).expect("no state"),
        0
    );
}

#[test]
fn gzip_bomb_is_refused_by_the_compression_ratio() {
    // 2 GiB of zeros in about 2 MiB of gzip, staged as the agent stages a release under
    // the default 8 GiB `max_release_size`: refused soon after the exempt 64 MiB.
    let bomb = zeros_tar_gz(2 << 30);
    assert!(bomb.len() < 4 << 20, "{} bytes", bomb.len());

    let scratch = tempfile::tempdir().expect("scratch");
    let state = scratch.path().join("state");
    let archive = artifact(scratch.path(), &bomb);
    let error = install::stage(&archive, &state, &app(), &version(), &UnpackLimits::default())
        .expect_err("the bomb is refused");
    match &error {
        StageError::Unpack {
            source: UnpackError::CompressionRatio { ratio, .. },
            ..
        } => assert!(ratio.unpacked <= unpack::RATIO_EXEMPT_BYTES + (1 << 20), "{ratio}"),
        other => panic!("{other}"),
    }
    assert!(error.to_string().contains("refused as a likely gzip bomb"), "{error}");
    assert!(listing(&install::releases_dir(&state, &app())).is_empty());
}

/// A tmpfs of `options` mounted on a fresh directory, unmounted on drop (also when the
/// test panics).
struct Tmpfs {
    directory: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(options: &str) -> Tmpfs {
        let directory = tempfile::tempdir().expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "drover-test"])
            .arg(directory.path())
            .status()
            .expect("run mount(8)");
        assert!(
            status.success(),
            "mounting a tmpfs failed ({status}): these tests need root and mount(8), as the agent runs as root"
        );
        Tmpfs { directory }
    }

    fn path(&self) -> &Path {
        self.directory.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.directory.path()).status();
    }
}

#[test]
fn unpack_refuses_when_disk_is_too_full() {
    let min_free = unpack::MIN_FREE_BYTES;

    // Before unpacking: a 4 MiB release on a filesystem with 130 MiB free needs 132.
    let disk = Tmpfs::mount("size=130m,mode=0755");
    let scratch = tempfile::tempdir().expect("scratch");
    // The check comes before the archive is opened, so its content does not matter.
    let archive = artifact(scratch.path(), &vec![7; 4 << 20]);
    let error = install::stage(&archive, disk.path(), &app(), &version(), &UnpackLimits::default())
        .expect_err("too little space");
    match &error {
        StageError::DiskFull {
            needed,
            free,
            compressed,
            ..
        } => {
            assert_eq!(*compressed, archive.size());
            assert_eq!(*needed, archive.size() + min_free);
            assert!(free.bytes < *needed && free.bytes >= min_free, "{error}");
        }
        other => panic!("{other}"),
    }
    let message = error.to_string();
    assert!(
        message.contains(&format!("the release needs at least {}", archive.size() + min_free))
            && message.contains("bytes free"),
        "{message}"
    );
    assert!(listing(&install::releases_dir(disk.path(), &app())).is_empty());

    // While unpacking: an archive that unpacks to 17 MiB stops while 128 MiB are still
    // free (at the check after 16 MiB), although the archive alone would have fit.
    let staging = disk.path().join("staging");
    fs::create_dir(&staging).expect("staging");
    let archive = zeros_tar_gz(17 << 20);
    let error = unpack::unpack(&archive[..], &staging, &UnpackLimits::default()).expect_err("disk full");
    match &error {
        UnpackError::DiskFull { path, full } => {
            assert_eq!(path, "zeros");
            assert!(full.free.bytes < min_free, "{error}");
            assert!(full.written <= 17 << 20, "{error}");
        }
        other => panic!("{other}"),
    }
    assert!(
        error.to_string().contains("the agent leaves free for the host"),
        "{error}"
    );
    let free = unpack::free_space(disk.path()).expect("statvfs");
    assert!(free.bytes > 100 << 20, "it stopped, it did not fill the disk: {free:?}");

    // The same for image layers (an uncompressed one).
    let disk = Tmpfs::mount("size=130m,mode=0755");
    let rootfs = disk.path().join("rootfs");
    fs::create_dir(&rootfs).expect("rootfs");
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_size(17 << 20);
    builder
        .append_data(&mut header, "zeros", &vec![0u8; 17 << 20][..])
        .expect("append");
    let layer = builder.into_inner().expect("layer");
    let error = apply_blob(
        drover_agent::oci::layer::MEDIA_TYPE_LAYER_TAR,
        &layer[..],
        &rootfs,
        &LayerLimits::default(),
        &mut LayerMeter::new(),
    )
    .expect_err("disk full");
    assert!(matches!(error, LayerError::DiskFull { .. }), "{error}");

    // Inodes: a filesystem with 20,000 of them stops an archive of 6,000 empty files
    // while 16,384 are free.
    let disk = Tmpfs::mount("size=512m,nr_inodes=20000,mode=0755");
    let staging = disk.path().join("staging");
    fs::create_dir(&staging).expect("staging");
    let names: Vec<String> = (0..6000).map(|index| format!("f{index}")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|name| (name.as_str(), &b""[..])).collect();
    let archive = tarball(&entries, Compression::fast());
    let error = unpack::unpack(&archive[..], &staging, &UnpackLimits::default()).expect_err("out of inodes");
    match &error {
        UnpackError::DiskFull { full, .. } => {
            assert!(
                full.free.inodes.is_some_and(|inodes| inodes < unpack::MIN_FREE_INODES),
                "{error}"
            )
        }
        other => panic!("{other}"),
    }
}
