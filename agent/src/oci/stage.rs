//! Staging a pulled image as a release: `releases/<version>/` holding `rootfs/` (the layers
//! applied in order), `files/` (the spec's config files, bound into the image by the
//! unit) and `image.json` (what the unit needs, and which cache blobs the release came
//! from). Built in `releases/.staging-<version>-<random>/`, synced and renamed into place
//! as tarball releases are ([`crate::install::stage_with`]).
//!
//! What staging does besides applying the layers, all before anything runs, never through
//! a symlink (a symlink in the image is resolved inside the rootfs at run time, by systemd,
//! never by the agent on the host):
//! - the release directory is **0700**: the rootfs may hold setuid programs (with
//!   `allow_setuid`) or world-writable directories, which host users must not reach.
//!   Services still can: systemd enters `RootDirectory=` as root before it changes user.
//! - the mount points systemd needs exist: `dev proc sys run` (0755), `tmp var/tmp` (1777);
//!   without them the unit fails with 226/NAMESPACE (SPEC.md §4);
//! - `etc/resolv.conf` is an empty regular file unless the image has one, so the host's
//!   can be bound over it (a symlink there is replaced: it would point into the image's
//!   `/run`, which is empty at run time);
//! - each config file has an empty mount point at its path;
//! - the working directory exists (created as runc does);
//! - the program is found: a bare name in the `PATH` of the environment (spec's, else the
//!   image's, else systemd's default) as runc looks it up, a relative path from the working
//!   directory, an absolute path as it is, each resolved inside the rootfs and required to
//!   be an executable file, so a missing program is a staging error that names it and not
//!   a crash loop; the unit gets the absolute path;
//! - the user is resolved inside the rootfs ([`super::image::resolve_user`]).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{BufReader, Read as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use drover_protocol::{AppName, AppSpec, Version};

use super::image::{ImageRecord, ImageRun, MAX_USER_DATABASE_BYTES, resolve_user};
use super::layer::apply_blob;
use super::pull::PulledImage;
use super::{LayerLimits, LayerMeter};
use crate::install::{StageError, StagedRelease, check_free_space, stage_with};

/// systemd's default `PATH` for services, where a bare program name is looked up when
/// neither the spec nor the image sets `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Symlinks followed in one path lookup inside the rootfs (Linux allows 40).
const MAX_SYMLINKS: u32 = 40;

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StageError {
    let path = path.to_path_buf();
    move |source| StageError::Io {
        operation,
        path,
        source,
    }
}

/// Stages `image` as `app` `version` with `spec`'s overrides: see the module documentation.
/// A release directory that exists already is complete and reused. Blocking I/O.
pub fn stage_image(
    image: &PulledImage,
    spec: &AppSpec,
    state_dir: &Path,
    app: &AppName,
    version: &Version,
    limits: &LayerLimits,
) -> Result<StagedRelease, StageError> {
    let refused = |problem: String| StageError::Image {
        app: app.clone(),
        version: version.clone(),
        problem,
    };
    stage_with(state_dir, app, version, |staging| {
        fs::set_permissions(staging, fs::Permissions::from_mode(0o700)).map_err(io_error("securing", staging))?;
        let compressed = image
            .layers()
            .iter()
            .fold(0u64, |total, layer| total.saturating_add(layer.artifact.size()));
        check_free_space(staging, app, version, compressed)?;
        let rootfs = staging.join("rootfs");
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&rootfs)
            .map_err(io_error("creating", &rootfs))?;
        let mut meter = LayerMeter::new();
        let halfway = image.layers().len().div_ceil(2);
        for (index, layer) in image.layers().iter().enumerate() {
            let layer_error = |source| StageError::Layer {
                app: app.clone(),
                version: version.clone(),
                index: index + 1,
                digest: layer.descriptor.digest.clone(),
                source: Box::new(source),
            };
            let path = layer.artifact.path();
            let blob = BufReader::with_capacity(256 * 1024, fs::File::open(path).map_err(io_error("opening", path))?);
            apply_blob(&layer.descriptor.media_type, blob, &rootfs, limits, &mut meter).map_err(layer_error)?;
            if index + 1 == halfway {
                crate::faults::pause_point("mid-unpack", state_dir);
            }
        }
        prepare_rootfs(&rootfs).map_err(refused)?;
        let run = resolve_run(&rootfs, image, spec).map_err(refused)?;
        for file in &spec.config_files {
            config_mount_point(&rootfs, file.path.as_str()).map_err(refused)?;
        }
        let files = staging.join(crate::unit::OCI_CONFIG_FILES_DIR);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&files)
            .map_err(io_error("creating", &files))?;
        let record = ImageRecord {
            reference: image.reference().as_str().to_owned(),
            manifest: image.digest().clone(),
            config: image.config_blob().descriptor.digest.clone(),
            layers: image
                .layers()
                .iter()
                .map(|layer| layer.descriptor.digest.clone())
                .collect(),
            image: image.config().clone(),
            run,
        };
        let path = staging.join(ImageRecord::FILE);
        let json = serde_json::to_vec_pretty(&record).expect("an image record serializes");
        // Root only, like everything of the agent's that holds an environment (the image's
        // own here, in a release directory that is 0700 anyway).
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(&json))
            .map_err(io_error("writing", &path))
    })
}

/// Reads `releases/<version>/image.json` of a staged OCI release.
pub fn read_record(release_dir: &Path) -> Result<ImageRecord, String> {
    let path = release_dir.join(ImageRecord::FILE);
    let bytes = fs::read(&path).map_err(|error| format!("reading {}: {error}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|error| format!("{} is not an image record: {error}", path.display()))
}

/// The mount points and `etc/resolv.conf` a unit with `RootDirectory=` needs.
fn prepare_rootfs(rootfs: &Path) -> Result<(), String> {
    for (directory, mode) in [
        ("/dev", 0o755),
        ("/proc", 0o755),
        ("/sys", 0o755),
        ("/run", 0o755),
        ("/tmp", 0o1777),
        ("/var/tmp", 0o1777),
        ("/etc", 0o755),
    ] {
        ensure_directory(rootfs, directory, mode)?;
    }
    let etc = rootfs.join("etc");
    if !fs::symlink_metadata(&etc).is_ok_and(|metadata| metadata.is_dir()) {
        return Err(
            "the image's /etc is a symlink; the host's resolv.conf is bound into /etc and the agent writes nothing through symlinks"
                .to_owned(),
        );
    }
    let resolv = etc.join("resolv.conf");
    match fs::symlink_metadata(&resolv) {
        Ok(metadata) if metadata.is_file() => return Ok(()),
        Ok(metadata) if metadata.is_dir() => {
            return Err(
                "the image's /etc/resolv.conf is a directory; the host's resolv.conf cannot be bound over it"
                    .to_owned(),
            );
        }
        Ok(_) => fs::remove_file(&resolv).map_err(|error| format!("replacing /etc/resolv.conf: {error}"))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("inspecting /etc/resolv.conf: {error}")),
    }
    create_empty_file(&resolv).map_err(|error| format!("creating /etc/resolv.conf: {error}"))
}

fn create_empty_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map(drop)
}

/// Makes sure the directory `path` (absolute inside the rootfs) exists, creating what is
/// missing with `mode` (the last part) and 0755 (parents). Stops without error at a
/// symlink, which systemd resolves inside the rootfs and the agent never writes through;
/// returns whether the directory is known to exist as a real directory.
fn ensure_directory(rootfs: &Path, path: &str, mode: u32) -> Result<bool, String> {
    let normalized = normalize(path);
    let parts: Vec<&str> = normalized.split('/').filter(|part| !part.is_empty()).collect();
    let mut current = rootfs.to_path_buf();
    for (index, part) in parts.iter().enumerate() {
        current.push(part);
        let shown = format!("/{}", parts[..=index].join("/"));
        match fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(metadata) if metadata.file_type().is_symlink() => return Ok(false),
            Ok(_) => return Err(format!("{shown} in the image is not a directory, where one is needed")),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mode = if index + 1 == parts.len() { mode } else { 0o755 };
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&current)
                    .and_then(|()| fs::set_permissions(&current, fs::Permissions::from_mode(mode)))
                    .map_err(|error| format!("creating {shown} in the image: {error}"))?;
            }
            Err(error) => return Err(format!("inspecting {shown} in the image: {error}")),
        }
    }
    Ok(true)
}

/// An empty file at `/<path>` for a config file's bind mount, unless the image has one
/// there (or a symlink on the way, left to systemd).
fn config_mount_point(rootfs: &Path, path: &str) -> Result<(), String> {
    let target = format!("/{path}");
    let (parent, _) = target.rsplit_once('/').expect("starts with /");
    if !ensure_directory(rootfs, if parent.is_empty() { "/" } else { parent }, 0o755)? {
        return Ok(());
    }
    let host_path = rootfs.join(path);
    match fs::symlink_metadata(&host_path) {
        Ok(metadata) if metadata.is_dir() => Err(format!(
            "config file {target} would be bound over a directory of the image"
        )),
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            create_empty_file(&host_path).map_err(|error| format!("creating {target} in the image: {error}"))
        }
        Err(error) => Err(format!("inspecting {target} in the image: {error}")),
    }
}

/// What the unit runs: program, environment, working directory and user, decided with
/// the rootfs at hand.
fn resolve_run(rootfs: &Path, image: &PulledImage, spec: &AppSpec) -> Result<ImageRun, String> {
    let config = image.config();
    let service = &spec.service;
    let working_directory = match &service.working_directory {
        Some(relative) => normalize(relative.as_str()),
        None if config.working_dir.is_empty() => "/".to_owned(),
        None => normalize(&config.working_dir),
    };
    ensure_directory(rootfs, &working_directory, 0o755)?;

    let passwd = read_in_root(rootfs, "/etc/passwd")?;
    let group = read_in_root(rootfs, "/etc/group")?;
    let user = resolve_user(
        &config.user,
        service.user.as_ref().map(|user| user.as_str()),
        service.group.as_ref().map(|group| group.as_str()),
        &passwd,
        &group,
    )?;

    let argv: Vec<String> = match &service.command {
        Some(command) => command.argv().to_vec(),
        None => config.entrypoint.iter().chain(&config.cmd).cloned().collect(),
    };
    let Some((program, args)) = argv.split_first() else {
        return Err("the image has neither Entrypoint nor Cmd and the spec has no command: nothing to run".to_owned());
    };
    let search_path = service
        .environment
        .iter()
        .find(|(name, _)| name.as_str() == "PATH")
        .map(|(_, value)| value.as_str())
        .or_else(|| {
            config
                .env
                .iter()
                .find(|(name, _)| name == "PATH")
                .map(|(_, value)| value.as_str())
        })
        .unwrap_or(DEFAULT_PATH);
    let program = find_program(rootfs, program, search_path, &working_directory)?;
    let exec = std::iter::once(program).chain(args.iter().cloned()).collect();
    Ok(ImageRun {
        exec,
        environment: config.env.clone(),
        working_directory,
        user,
    })
}

/// The file at `path` inside the rootfs (symlinks resolved inside it), or empty when
/// there is none.
fn read_in_root(rootfs: &Path, path: &str) -> Result<String, String> {
    let Some(host_path) = resolve_in_root(rootfs, path) else {
        return Ok(String::new());
    };
    let Ok(file) = fs::File::open(&host_path) else {
        return Ok(String::new());
    };
    let mut bytes = Vec::new();
    file.take(MAX_USER_DATABASE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("reading {path} in the image: {error}"))?;
    if bytes.len() as u64 > MAX_USER_DATABASE_BYTES {
        return Err(format!(
            "{path} in the image is larger than {MAX_USER_DATABASE_BYTES} bytes"
        ));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Finds `program` as runc does and returns its absolute path inside the rootfs: one with
/// a `/` from `working_directory` (or as it is when absolute), a bare name in
/// `search_path`. It must be an executable regular file once symlinks are followed
/// inside the rootfs.
pub fn find_program(
    rootfs: &Path,
    program: &str,
    search_path: &str,
    working_directory: &str,
) -> Result<String, String> {
    let executable = |candidate: &str| {
        resolve_in_root(rootfs, candidate)
            .and_then(|path| fs::metadata(path).ok())
            .is_some_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let candidate = if program.starts_with('/') {
            normalize(program)
        } else {
            normalize(&format!("{working_directory}/{program}"))
        };
        return if executable(&candidate) {
            Ok(candidate)
        } else {
            Err(format!("program {candidate} is not an executable file in the image"))
        };
    }
    let directories: Vec<&str> = search_path
        .split(':')
        .filter(|directory| directory.starts_with('/'))
        .collect();
    directories
        .iter()
        .map(|directory| normalize(&format!("{directory}/{program}")))
        .find(|candidate| executable(candidate))
        .ok_or_else(|| {
            format!(
                "program {} is not an executable file in any PATH directory of the image ({})",
                super::image::shown(program),
                directories.join(":")
            )
        })
}

/// `path` made absolute and normalized without looking at any file: `.` and empty parts
/// dropped, `..` taking away the part before it (never above `/`).
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The host path of `path` (absolute inside the rootfs) with every symlink on the way
/// followed inside the rootfs: an absolute target starts again at the rootfs, `..` stops
/// there. Only looks (`lstat`, `readlink`); `None` when a part is missing or the links go
/// round in circles.
pub fn resolve_in_root(rootfs: &Path, path: &str) -> Option<PathBuf> {
    let mut pending: VecDeque<OsString> = path.split('/').map(OsString::from).collect();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part.is_empty() || part == "." {
            continue;
        }
        if part == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = rootfs.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&part);
        let metadata = fs::symlink_metadata(&candidate).ok()?;
        if metadata.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return None;
            }
            let target = fs::read_link(&candidate).ok()?;
            let target = target.as_os_str().as_bytes();
            if target.starts_with(b"/") {
                resolved.clear();
            }
            for component in target.split(|&byte| byte == b'/').rev() {
                pending.push_front(OsStr::from_bytes(component).to_os_string());
            }
        } else {
            resolved.push(part);
        }
    }
    let mut host_path = rootfs.to_path_buf();
    host_path.extend(&resolved);
    Some(host_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn executable(path: &Path) {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, "#!/bin/sh\n").expect("write");
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// A rootfs with merged /usr, a relative and an absolute symlink, and a plain file.
    fn rootfs() -> tempfile::TempDir {
        let directory = tempfile::tempdir().expect("tempdir");
        let root = directory.path();
        executable(&root.join("usr/bin/sh"));
        executable(&root.join("usr/local/bin/server"));
        executable(&root.join("app/bin/run"));
        fs::write(root.join("usr/bin/readme"), "not a program").expect("write");
        symlink("usr/bin", root.join("bin")).expect("symlink");
        symlink("/usr/local/bin/server", root.join("usr/bin/web")).expect("symlink");
        symlink("../../../../../etc/shadow", root.join("usr/bin/escape")).expect("symlink");
        symlink("loop", root.join("usr/bin/loop")).expect("symlink");
        directory
    }

    #[test]
    fn paths_are_normalized_without_leaving_the_root() {
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("srv/app/"), "/srv/app");
        assert_eq!(normalize("/a/./b//c/../d"), "/a/b/d");
        assert_eq!(normalize("/../../etc"), "/etc");
    }

    #[test]
    fn symlinks_are_followed_inside_the_rootfs_only() {
        let directory = rootfs();
        let root = directory.path();
        assert_eq!(resolve_in_root(root, "/bin/sh"), Some(root.join("usr/bin/sh")));
        // An absolute target starts again at the rootfs, not at the host's /.
        assert_eq!(
            resolve_in_root(root, "/usr/bin/web"),
            Some(root.join("usr/local/bin/server"))
        );
        // `..` stops at the rootfs.
        assert_eq!(
            resolve_in_root(root, "/usr/bin/escape"),
            None,
            "no /etc/shadow in the rootfs"
        );
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::write(root.join("etc/shadow"), "").expect("write");
        assert_eq!(resolve_in_root(root, "/usr/bin/escape"), Some(root.join("etc/shadow")));
        assert_eq!(resolve_in_root(root, "/usr/bin/loop"), None, "a loop ends");
        assert_eq!(resolve_in_root(root, "/missing/x"), None);
    }

    #[test]
    fn programs_are_found_as_runc_finds_them() {
        let directory = rootfs();
        let root = directory.path();
        let path = "/usr/local/bin:/usr/bin:relative/ignored";
        assert_eq!(
            find_program(root, "server", path, "/"),
            Ok("/usr/local/bin/server".into())
        );
        assert_eq!(find_program(root, "sh", path, "/"), Ok("/usr/bin/sh".into()));
        // The PATH directory is kept (argv[0] as the image expects), not the link target.
        assert_eq!(find_program(root, "web", path, "/"), Ok("/usr/bin/web".into()));
        assert_eq!(find_program(root, "sh", "/bin", "/"), Ok("/bin/sh".into()));
        assert_eq!(find_program(root, "/bin/sh", "", "/"), Ok("/bin/sh".into()));
        assert_eq!(find_program(root, "bin/run", "", "/app"), Ok("/app/bin/run".into()));
        assert_eq!(
            find_program(root, "./bin/../bin/run", "", "/app"),
            Ok("/app/bin/run".into())
        );
        for (program, search_path) in [
            ("readme", path),
            ("missing", path),
            ("/usr/bin/readme", path),
            ("sh", "/nowhere"),
        ] {
            let error = find_program(root, program, search_path, "/").expect_err(program);
            assert!(error.contains("not an executable file"), "{error}");
        }
    }

    #[test]
    fn the_rootfs_gets_mount_points_and_a_bindable_resolv_conf() {
        let directory = tempfile::tempdir().expect("tempdir");
        let root = directory.path();
        prepare_rootfs(root).expect("prepared");
        for (path, mode) in [
            ("dev", 0o755),
            ("proc", 0o755),
            ("sys", 0o755),
            ("run", 0o755),
            ("tmp", 0o1777),
            ("var/tmp", 0o1777),
            ("var", 0o755),
        ] {
            let metadata = fs::symlink_metadata(root.join(path)).expect(path);
            assert!(metadata.is_dir(), "{path}");
            assert_eq!(metadata.permissions().mode() & 0o7777, mode, "{path}");
        }
        let resolv = fs::symlink_metadata(root.join("etc/resolv.conf")).expect("resolv.conf");
        assert!(resolv.is_file() && resolv.len() == 0);

        // A symlinked resolv.conf is replaced; an image's own file is kept.
        let directory = tempfile::tempdir().expect("tempdir");
        let root = directory.path();
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        symlink("../run/systemd/resolve/stub-resolv.conf", root.join("etc/resolv.conf")).expect("symlink");
        symlink("/run", root.join("var")).expect("symlink");
        prepare_rootfs(root).expect("prepared");
        assert!(
            fs::symlink_metadata(root.join("etc/resolv.conf"))
                .expect("resolv")
                .is_file()
        );
        assert!(
            fs::symlink_metadata(root.join("var"))
                .expect("var")
                .file_type()
                .is_symlink(),
            "nothing is created through the image's symlinks"
        );
        fs::write(root.join("etc/resolv.conf"), "nameserver 192.0.2.1\n").expect("write");
        prepare_rootfs(root).expect("prepared again");
        assert_eq!(
            fs::read_to_string(root.join("etc/resolv.conf")).expect("read"),
            "nameserver 192.0.2.1\n"
        );
    }

    #[test]
    fn a_rootfs_whose_etc_or_tmp_is_wrong_is_refused() {
        let directory = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        symlink(outside.path(), directory.path().join("etc")).expect("symlink");
        let error = prepare_rootfs(directory.path()).expect_err("symlinked /etc");
        assert!(error.contains("symlink"), "{error}");
        assert_eq!(
            fs::read_dir(outside.path()).expect("read").count(),
            0,
            "nothing written outside"
        );

        let directory = tempfile::tempdir().expect("tempdir");
        fs::write(directory.path().join("tmp"), "").expect("write");
        let error = prepare_rootfs(directory.path()).expect_err("a file at /tmp");
        assert!(error.contains("/tmp in the image is not a directory"), "{error}");
    }

    #[test]
    fn config_files_get_mount_points() {
        let directory = tempfile::tempdir().expect("tempdir");
        let root = directory.path();
        config_mount_point(root, "etc/web/web.toml").expect("mount point");
        assert!(root.join("etc/web/web.toml").is_file());
        fs::write(root.join("etc/web/web.toml"), "image's").expect("write");
        config_mount_point(root, "etc/web/web.toml").expect("kept");
        assert_eq!(
            fs::read_to_string(root.join("etc/web/web.toml")).expect("read"),
            "image's"
        );
        fs::create_dir_all(root.join("srv/dir")).expect("mkdir");
        assert!(config_mount_point(root, "srv/dir").is_err());
        let outside = tempfile::tempdir().expect("tempdir");
        symlink(outside.path(), root.join("conf")).expect("symlink");
        config_mount_point(root, "conf/x.toml").expect("left to systemd");
        assert_eq!(
            fs::read_dir(outside.path()).expect("read").count(),
            0,
            "nothing written outside"
        );
    }

    mod staged {
        use super::*;
        use crate::fetch::Cache;
        use crate::oci::image::RunAs;
        use crate::oci::testing::{Entry, TestImage, TestRegistry, crypto, layer};

        const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
        const GROUP: &[u8] = b"root:x:0:\napp:x:1000:\nstaff:x:50:\n";

        fn base() -> Vec<u8> {
            layer(&[
                Entry::Dir("etc/", 0o755),
                Entry::File("etc/passwd", PASSWD, 0o644),
                Entry::File("etc/group", GROUP, 0o644),
                Entry::Dir("usr/", 0o755),
                Entry::Dir("usr/bin/", 0o755),
                Entry::File("usr/bin/server", b"#!/bin/sh\n", 0o755),
                Entry::Symlink("bin", "usr/bin"),
                Entry::File("old.txt", b"old", 0o644),
            ])
        }

        fn top() -> Vec<u8> {
            layer(&[
                Entry::File(".wh.old.txt", b"", 0o644),
                Entry::Dir("srv/", 0o755),
                Entry::File("srv/index.html", b"hello", 0o644),
            ])
        }

        async fn pulled(config: &str, layers: Vec<Vec<u8>>, cache: &Cache) -> PulledImage {
            crypto();
            let registry = TestRegistry::start().await;
            let image = TestImage::new(config, layers);
            registry.push(&image);
            let registries = registry.plain_http();
            let reference = registry.reference("web", &image.digest);
            crate::oci::pull::pull(&registries, cache, &reference, &image.digest, 1 << 30)
                .await
                .expect("pulled")
        }

        fn spec(json: &str) -> AppSpec {
            serde_json::from_str(json).expect("spec")
        }

        fn names() -> (AppName, Version) {
            ("web".parse().expect("app"), "1.0".parse().expect("version"))
        }

        #[tokio::test]
        async fn an_image_is_staged_with_its_rootfs_record_and_mount_points() {
            let directory = tempfile::tempdir().expect("tempdir");
            let cache = Cache::new(directory.path().join("cache"));
            let config = r#"{"os":"linux","config":{"User":"app","Env":["PATH=/usr/bin","GREETING=hi"],
                "Entrypoint":["server"],"Cmd":["--port","8080"],"WorkingDir":"/srv/www"}}"#;
            let image = pulled(config, vec![base(), top()], &cache).await;
            let state = directory.path().join("state");
            let (app, version) = names();
            let spec = spec(r#"{"service":{},"config_files":[{"path":"etc/web/web.toml","content":"x"}]}"#);
            let staged = stage_image(&image, &spec, &state, &app, &version, &LayerLimits::default()).expect("staged");
            let release = staged.path();
            assert_eq!(release, crate::install::releases_dir(&state, &app).join("1.0"));
            assert_eq!(
                fs::metadata(release).expect("release").permissions().mode() & 0o777,
                0o700,
                "host users cannot reach the rootfs"
            );
            let rootfs = release.join("rootfs");
            assert_eq!(
                fs::read_to_string(rootfs.join("srv/index.html")).expect("read"),
                "hello"
            );
            assert!(!rootfs.join("old.txt").exists(), "the whiteout removed the lower file");
            for mount_point in ["dev", "proc", "sys", "run", "tmp", "var/tmp", "srv/www"] {
                assert!(rootfs.join(mount_point).is_dir(), "{mount_point}");
            }
            assert!(rootfs.join("etc/resolv.conf").is_file());
            assert!(rootfs.join("etc/web/web.toml").is_file(), "config file mount point");
            assert!(release.join(crate::unit::OCI_CONFIG_FILES_DIR).is_dir());
            let record = read_record(release).expect("image.json");
            assert_eq!(&record.manifest, image.digest());
            assert_eq!(record.layers.len(), 2);
            assert_eq!(record.blobs().count(), 4);
            assert_eq!(record.run.exec, ["/usr/bin/server", "--port", "8080"]);
            assert_eq!(record.run.working_directory, "/srv/www");
            assert_eq!(
                record.run.user,
                RunAs::Ids {
                    uid: 1000,
                    gid: 1000,
                    home: "/home/app".into()
                }
            );
            assert_eq!(record.run.environment[1], ("GREETING".to_owned(), "hi".to_owned()));
            assert_eq!(crate::oci::pull::release_blobs(release).len(), 4);
            let leftovers = fs::read_dir(crate::install::releases_dir(&state, &app))
                .expect("releases")
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().starts_with(".staging-"))
                .count();
            assert_eq!(leftovers, 0);
        }

        #[tokio::test]
        async fn the_spec_overrides_command_user_and_working_directory() {
            let directory = tempfile::tempdir().expect("tempdir");
            let cache = Cache::new(directory.path().join("cache"));
            let config = r#"{"config":{"User":"app","Entrypoint":["/bin/server"],"Cmd":["--default"]}}"#;
            let image = pulled(config, vec![base()], &cache).await;
            let (app, version) = names();
            let overrides = spec(
                r#"{"service":{"command":["sh","-c","exec server"],"user":"root","group":"staff","working_directory":"data",
                   "environment":{"PATH":"/bin"}}}"#,
            );
            let state = directory.path().join("state");
            let staged = stage_image(&image, &overrides, &state, &app, &version, &LayerLimits::default());
            // `sh` is not in the image: the spec's PATH (/bin -> usr/bin) is searched.
            let error = staged.expect_err("no sh in the image").to_string();
            assert!(error.contains("program 'sh'") && error.contains("/bin"), "{error}");
            let overrides = spec(
                r#"{"service":{"command":["server","--spec"],"user":"root","group":"staff","working_directory":"data",
                   "environment":{"PATH":"/bin"}}}"#,
            );
            let staged =
                stage_image(&image, &overrides, &state, &app, &version, &LayerLimits::default()).expect("staged");
            let record = read_record(staged.path()).expect("record");
            assert_eq!(
                record.run.exec,
                ["/bin/server", "--spec"],
                "Entrypoint and Cmd replaced whole"
            );
            assert_eq!(
                record.run.user,
                RunAs::Ids {
                    uid: 0,
                    gid: 50,
                    home: "/root".into()
                }
            );
            assert_eq!(record.run.working_directory, "/data");
            assert!(staged.path().join("rootfs/data").is_dir());
        }

        #[tokio::test]
        async fn images_that_cannot_run_are_refused_and_leave_nothing() {
            let directory = tempfile::tempdir().expect("tempdir");
            let cache = Cache::new(directory.path().join("cache"));
            let (app, version) = names();
            let state = directory.path().join("state");
            for (config, expected) in [
                (r#"{"config":{}}"#, "neither Entrypoint nor Cmd"),
                (
                    r#"{"config":{"Cmd":["/usr/bin/missing"]}}"#,
                    "/usr/bin/missing is not an executable",
                ),
                (
                    r#"{"config":{"User":"nginx","Cmd":["server"]}}"#,
                    "user 'nginx' is not in the image",
                ),
            ] {
                let image = pulled(config, vec![base()], &cache).await;
                let error = stage_image(
                    &image,
                    &spec(r#"{"service":{}}"#),
                    &state,
                    &app,
                    &version,
                    &LayerLimits::default(),
                )
                .expect_err(expected)
                .to_string();
                assert!(error.contains(expected), "{error} should say {expected}");
                assert!(error.contains("web 1.0"), "{error}");
            }
            // A hostile layer: the error names the layer and its digest.
            let hostile = layer(&[Entry::Symlink("etc", "/etc"), Entry::File("etc/evil", b"x", 0o644)]);
            let image = pulled(
                r#"{"config":{"Cmd":["/bin/x"]}}"#,
                vec![base(), hostile.clone()],
                &cache,
            )
            .await;
            let error = stage_image(
                &image,
                &spec(r#"{"service":{}}"#),
                &state,
                &app,
                &version,
                &LayerLimits::default(),
            )
            .expect_err("hostile layer");
            let message = error.to_string();
            assert!(message.contains("layer 2"), "{message}");
            assert!(
                message.contains(drover_protocol::Digest::of(&hostile).as_str()),
                "{message}"
            );
            assert!(!Path::new("/etc/evil").exists());
            let entries: Vec<_> = fs::read_dir(crate::install::releases_dir(&state, &app))
                .expect("releases")
                .filter_map(Result::ok)
                .collect();
            assert!(entries.is_empty(), "no release and no staging leftovers");
        }
    }
}
