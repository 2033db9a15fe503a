//! OCI images for tests, made with the real tools (SPEC.md §7): an OCI layout in a
//! temporary directory built layer by layer with `umoci` (unpack, change the root
//! filesystem, repack: deletions become whiteouts), hand-made layer tarballs for what
//! `umoci` will not write (opaque directories, hostile paths), image configs, and pushes
//! to a test [`Registry`] with `skopeo`, single images or multi-platform indexes.
//!
//! Layers are reproducible: every path's times are set to one fixed instant before a
//! repack, so the same changes give the same layer digest in every build (a benchmark
//! relies on two builds sharing layers).

use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::Registry;

/// The tag of the one image in each layout.
const TAG: &str = "image";
/// The instant every path in a layer carries: 2026-01-01T00:00:00Z.
const LAYER_TIME: u64 = 1_767_225_600;
/// How long one `umoci` or `skopeo` run may take (a 100 MiB layer included).
const TOOL_TIMEOUT: Duration = Duration::from_secs(600);
/// The media type of an OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The media type of an OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// An OCI image under construction in an OCI layout of its own (removed on drop).
#[derive(Debug)]
pub struct OciImage {
    dir: tempfile::TempDir,
}

impl OciImage {
    /// An image with no layers and an empty linux/amd64 config (`umoci init` + `umoci new`).
    pub fn new() -> anyhow::Result<OciImage> {
        let dir = tempfile::Builder::new()
            .prefix("drover-oci-")
            .tempdir()
            .context("image directory")?;
        let image = OciImage { dir };
        umoci(Command::new("umoci").arg("init").arg("--layout").arg(image.layout()))?;
        umoci(Command::new("umoci").args(["new", "--image"]).arg(image.reference()))?;
        Ok(image)
    }

    /// The OCI layout directory.
    pub fn layout(&self) -> PathBuf {
        self.dir.path().join("layout")
    }

    /// `LAYOUT:TAG`, what `umoci --image` takes (and `skopeo` after `oci:`).
    pub fn reference(&self) -> String {
        format!("{}:{TAG}", self.layout().display())
    }

    /// Adds a layer made of `operations` applied in order to the image's root filesystem.
    pub fn layer(&mut self, operations: &[LayerOp]) -> anyhow::Result<&mut OciImage> {
        self.layer_with(|rootfs| operations.iter().try_for_each(|operation| operation.apply(rootfs)))
    }

    /// Adds a layer: `umoci unpack`s the image so far, lets `edit` change the root
    /// filesystem (the path it is given; mind that absolute symlinks in it point at the
    /// machine's files), then `umoci repack`s the difference.
    pub fn layer_with(&mut self, edit: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<&mut OciImage> {
        let bundle = self.dir.path().join("bundle");
        if bundle.exists() {
            std::fs::remove_dir_all(&bundle).context("removing an old bundle")?;
        }
        umoci(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(self.reference())
                .arg(&bundle),
        )?;
        let rootfs = bundle.join("rootfs");
        let edited = edit(&rootfs).and_then(|()| set_layer_times(&rootfs)).and_then(|()| {
            umoci(
                Command::new("umoci")
                    .args(["repack", "--no-history", "--image"])
                    .arg(self.reference())
                    .arg(&bundle),
            )
            .map(drop)
        });
        std::fs::remove_dir_all(&bundle).context("removing the bundle")?;
        edited?;
        Ok(self)
    }

    /// Appends `tar` (an uncompressed layer tarball, e.g. from [`TarLayer`]) verbatim as
    /// the next layer (`umoci raw add-layer`). A hostile layer should be the last one:
    /// `umoci unpack` (and so [`OciImage::layer`]) may refuse it.
    pub fn raw_layer(&mut self, tar: &[u8]) -> anyhow::Result<&mut OciImage> {
        let path = self.dir.path().join("raw-layer.tar");
        std::fs::write(&path, tar).context("writing the raw layer")?;
        umoci(
            Command::new("umoci")
                .args(["raw", "add-layer", "--no-history", "--image"])
                .arg(self.reference())
                .arg(&path),
        )?;
        std::fs::remove_file(&path).context("removing the raw layer")?;
        Ok(self)
    }

    /// Sets the fields of the image config that `config` has (`umoci config`).
    pub fn configure(&mut self, config: &ImageConfig) -> anyhow::Result<&mut OciImage> {
        let mut command = Command::new("umoci");
        command
            .args(["config", "--no-history", "--image"])
            .arg(self.reference());
        for (flag, clear, values) in [
            ("--config.entrypoint", "config.entrypoint", &config.entrypoint),
            ("--config.cmd", "config.cmd", &config.cmd),
        ] {
            match values.as_deref() {
                None => {}
                Some([]) => {
                    command.arg(format!("--clear={clear}"));
                }
                Some(values) => {
                    command.args(values.iter().map(|value| format!("{flag}={value}")));
                }
            }
        }
        command.args(config.env.iter().map(|entry| format!("--config.env={entry}")));
        if let Some(directory) = &config.working_dir {
            command.arg(format!("--config.workingdir={directory}"));
        }
        if let Some(user) = &config.user {
            command.arg(format!("--config.user={user}"));
        }
        umoci(&mut command)?;
        Ok(self)
    }

    /// Sets the platform the image config claims (e.g. `linux`, `arm64`).
    pub fn set_platform(&mut self, os: &str, architecture: &str) -> anyhow::Result<&mut OciImage> {
        umoci(
            Command::new("umoci")
                .args(["config", "--no-history", "--image"])
                .arg(self.reference())
                .arg(format!("--os={os}"))
                .arg(format!("--architecture={architecture}")),
        )?;
        Ok(self)
    }

    /// The descriptor of the tagged manifest in the layout's `index.json`.
    fn descriptor(&self) -> anyhow::Result<serde_json::Value> {
        let index = read_json(&self.layout().join("index.json"))?;
        index["manifests"]
            .as_array()
            .and_then(|manifests| {
                manifests
                    .iter()
                    .find(|entry| entry["annotations"]["org.opencontainers.image.ref.name"] == TAG)
            })
            .cloned()
            .context("the layout's index.json has no entry for the image")
    }

    /// The digest of the image manifest (`sha256:HEX`), as a push with
    /// `--preserve-digests` keeps it.
    pub fn manifest_digest(&self) -> anyhow::Result<String> {
        let descriptor = self.descriptor()?;
        descriptor["digest"]
            .as_str()
            .map(str::to_owned)
            .context("manifest descriptor without a digest")
    }

    /// The bytes of blob `digest` in the layout.
    pub fn blob(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|hex| !hex.contains('/'))
            .with_context(|| format!("{digest:?} is not a sha256 digest"))?;
        let path = self.layout().join("blobs/sha256").join(hex);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// The image manifest.
    pub fn manifest(&self) -> anyhow::Result<serde_json::Value> {
        let bytes = self.blob(&self.manifest_digest()?)?;
        serde_json::from_slice(&bytes).context("image manifest")
    }

    /// The image config.
    pub fn config(&self) -> anyhow::Result<serde_json::Value> {
        let manifest = self.manifest()?;
        let digest = manifest["config"]["digest"]
            .as_str()
            .context("manifest without config")?;
        serde_json::from_slice(&self.blob(digest)?).context("image config")
    }

    /// The digests of the (compressed) layers, bottom first.
    pub fn layer_digests(&self) -> anyhow::Result<Vec<String>> {
        let manifest = self.manifest()?;
        manifest["layers"]
            .as_array()
            .context("manifest without layers")?
            .iter()
            .map(|layer| {
                layer["digest"]
                    .as_str()
                    .map(str::to_owned)
                    .context("layer without digest")
            })
            .collect()
    }

    /// The sizes of the (compressed) layers, bottom first.
    pub fn layer_sizes(&self) -> anyhow::Result<Vec<u64>> {
        let manifest = self.manifest()?;
        manifest["layers"]
            .as_array()
            .context("manifest without layers")?
            .iter()
            .map(|layer| layer["size"].as_u64().context("layer without size"))
            .collect()
    }

    /// `umoci unpack`s the image into `bundle` (which must not exist) and returns its
    /// root filesystem: the reference a client's unpacking is compared with.
    pub fn unpack(&self, bundle: &Path) -> anyhow::Result<PathBuf> {
        umoci(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(self.reference())
                .arg(bundle),
        )?;
        Ok(bundle.join("rootfs"))
    }

    /// Pushes the image to `registry` as `reference` (`REPOSITORY:TAG`) with
    /// `skopeo copy`, keeping its digests; returns the manifest digest pushed.
    pub fn push(&self, registry: &Registry, reference: &str) -> anyhow::Result<String> {
        skopeo_push(registry, &self.reference(), reference, &[], self.dir.path())
    }

    /// Pushes an image index of `images` to `registry` as `reference`, each entry with the
    /// platform its config claims; returns the index digest.
    pub fn push_index(registry: &Registry, reference: &str, images: &[&OciImage]) -> anyhow::Result<String> {
        let entries = images
            .iter()
            .map(|image| {
                let config = image.config()?;
                let os = config["os"].as_str().context("config without os")?;
                let architecture = config["architecture"].as_str().context("config without architecture")?;
                let platform = match config["variant"].as_str() {
                    Some(variant) => format!("{os}/{architecture}/{variant}"),
                    None => format!("{os}/{architecture}"),
                };
                Ok((*image, platform))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let entries: Vec<(&OciImage, &str)> = entries
            .iter()
            .map(|(image, platform)| (*image, platform.as_str()))
            .collect();
        OciImage::push_index_as(registry, reference, &entries)
    }

    /// Pushes an image index to `registry` as `reference` whose entries claim the given
    /// platforms (`OS/ARCH` or `OS/ARCH/VARIANT`), whatever the images' configs say;
    /// returns the index digest. The index is written by hand into a layout holding
    /// every image's blobs and copied with `skopeo copy --all`.
    pub fn push_index_as(
        registry: &Registry,
        reference: &str,
        entries: &[(&OciImage, &str)],
    ) -> anyhow::Result<String> {
        let scratch = tempfile::Builder::new()
            .prefix("drover-oci-index-")
            .tempdir()
            .context("index directory")?;
        let layout = scratch.path().join("layout");
        umoci(Command::new("umoci").arg("init").arg("--layout").arg(&layout))?;
        let blobs = layout.join("blobs/sha256");
        let mut manifests = Vec::new();
        for (image, platform) in entries {
            for entry in std::fs::read_dir(image.layout().join("blobs/sha256")).context("reading image blobs")? {
                let entry = entry.context("reading image blobs")?;
                let target = blobs.join(entry.file_name());
                if !target.exists() {
                    std::fs::copy(entry.path(), &target).context("copying a blob")?;
                }
            }
            let mut parts = platform.split('/');
            let (Some(os), Some(architecture)) = (parts.next(), parts.next()) else {
                bail!("platform {platform:?} is not OS/ARCH[/VARIANT]");
            };
            let mut platform_json = serde_json::json!({ "os": os, "architecture": architecture });
            if let Some(variant) = parts.next() {
                platform_json["variant"] = variant.into();
            }
            let descriptor = image.descriptor()?;
            manifests.push(serde_json::json!({
                "mediaType": descriptor["mediaType"],
                "digest": descriptor["digest"],
                "size": descriptor["size"],
                "platform": platform_json,
            }));
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec(&index).context("index JSON")?;
        let digest = sha256_digest(&bytes);
        std::fs::write(blobs.join(&digest["sha256:".len()..]), &bytes).context("writing the index blob")?;
        let layout_index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": OCI_INDEX,
                "digest": digest,
                "size": bytes.len(),
                "annotations": { "org.opencontainers.image.ref.name": TAG },
            }],
        });
        std::fs::write(
            layout.join("index.json"),
            serde_json::to_vec(&layout_index).context("layout index JSON")?,
        )
        .context("writing the layout's index.json")?;
        let pushed = skopeo_push(
            registry,
            &format!("{}:{TAG}", layout.display()),
            reference,
            &["--all"],
            scratch.path(),
        )?;
        anyhow::ensure!(pushed == digest, "skopeo pushed index {pushed}, expected {digest}");
        Ok(pushed)
    }
}

/// `sha256:HEX` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = digest.as_ref().iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// `skopeo copy oci:SOURCE docker://HOST/REFERENCE`; returns the digest pushed.
fn skopeo_push(
    registry: &Registry,
    source: &str,
    reference: &str,
    extra: &[&str],
    scratch: &Path,
) -> anyhow::Result<String> {
    let digest_file = scratch.join("pushed-digest");
    let _ = std::fs::remove_file(&digest_file);
    let mut command = Command::new("skopeo");
    command
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--preserve-digests",
            "--digestfile",
        ])
        .arg(&digest_file)
        .args(registry.skopeo_args("dest"))
        .args(extra)
        .arg(format!("oci:{source}"))
        .arg(format!("docker://{}/{reference}", registry.host()));
    run_bounded(&mut command, TOOL_TIMEOUT).context("skopeo copy (install the Debian package skopeo)")?;
    let digest = std::fs::read_to_string(&digest_file).context("skopeo's digest file")?;
    Ok(digest.trim().to_owned())
}

/// Runs `umoci` (Debian package `umoci`), bounded.
fn umoci(command: &mut Command) -> anyhow::Result<String> {
    run_bounded(command, TOOL_TIMEOUT).context("umoci (install the Debian package umoci)")
}

/// Runs `command` and returns its stdout; it is killed (by its PID) after `timeout`, and
/// an error carries its output.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> anyhow::Result<String> {
    use std::io::{Read as _, Seek as _};
    let mut stdout = tempfile::tempfile().context("stdout file")?;
    let mut stderr = tempfile::tempfile().context("stderr file")?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().context("stdout handle")?)
        .stderr(stderr.try_clone().context("stderr handle")?)
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for {command:?}"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{command:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |file: &mut std::fs::File| {
        let mut text = String::new();
        let _ = file.rewind();
        let _ = file.read_to_string(&mut text);
        text
    };
    let (out, err) = (read(&mut stdout), read(&mut stderr));
    if !status.success() {
        bail!("{command:?} failed ({status}): {out}{err}");
    }
    Ok(out)
}

/// Sets the access and modification times of every path under `rootfs` (symlinks
/// themselves, not their targets) to [`LAYER_TIME`], so that layers are reproducible and
/// unchanged lower-layer paths stay out of the diff.
fn set_layer_times(rootfs: &Path) -> anyhow::Result<()> {
    run_bounded(
        Command::new("find")
            .arg(rootfs)
            .args(["-exec", "touch", "-h", "-d", &format!("@{LAYER_TIME}"), "{}", "+"]),
        TOOL_TIMEOUT,
    )
    .map(drop)
}

/// The image config fields a test sets; `None` leaves a field as it is, an empty list
/// clears Entrypoint or Cmd.
#[derive(Clone, Debug, Default)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `Env` entries (`NAME=VALUE`) added or replaced.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User` (a name, `UID`, or `UID:GID`).
    pub user: Option<String>,
}

/// One change to an image's root filesystem. Paths are absolute inside the image, without
/// `.` or `..`, and never reached through a symlink (refused, so nothing outside the
/// root filesystem is touched); missing parent directories are made 0755 root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerOp {
    /// A regular file.
    File {
        /// Where.
        path: String,
        /// What it holds.
        contents: Vec<u8>,
        /// Permission bits, setuid and friends included.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// A directory (mode and owner updated if it exists).
    Dir {
        /// Where.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// A symbolic link, owned by root.
    Symlink {
        /// Where.
        path: String,
        /// What it points at, verbatim.
        target: String,
    },
    /// A hard link to an existing file of the image.
    Hardlink {
        /// Where.
        path: String,
        /// The existing file, absolute inside the image.
        target: String,
    },
    /// Removes a file, link or whole directory: the layer carries whiteouts.
    Remove {
        /// What.
        path: String,
    },
    /// Removes a directory with everything in it and makes it again, empty, with the
    /// same mode and owner (umoci writes a whiteout per lower entry, not an opaque
    /// marker; see [`TarLayer::opaque`] for that).
    ReplaceDir {
        /// Which.
        path: String,
    },
}

impl LayerOp {
    /// A 0644 file owned by root.
    pub fn file(path: &str, contents: impl Into<Vec<u8>>) -> LayerOp {
        LayerOp::File {
            path: path.to_owned(),
            contents: contents.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    /// A 0755 file owned by root.
    pub fn executable(path: &str, contents: impl Into<Vec<u8>>) -> LayerOp {
        LayerOp::file(path, contents).with_mode(0o755)
    }

    /// A 0755 directory owned by root.
    pub fn dir(path: &str) -> LayerOp {
        LayerOp::Dir {
            path: path.to_owned(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        }
    }

    /// A symbolic link at `path` to `target`.
    pub fn symlink(path: &str, target: &str) -> LayerOp {
        LayerOp::Symlink {
            path: path.to_owned(),
            target: target.to_owned(),
        }
    }

    /// A hard link at `path` to the existing file `target`.
    pub fn hardlink(path: &str, target: &str) -> LayerOp {
        LayerOp::Hardlink {
            path: path.to_owned(),
            target: target.to_owned(),
        }
    }

    /// Removes `path` (a whiteout in the layer).
    pub fn remove(path: &str) -> LayerOp {
        LayerOp::Remove { path: path.to_owned() }
    }

    /// Empties directory `path` (whiteouts for what it held).
    pub fn replace_dir(path: &str) -> LayerOp {
        LayerOp::ReplaceDir { path: path.to_owned() }
    }

    /// The same file or directory with permission bits `mode`.
    pub fn with_mode(mut self, new_mode: u32) -> LayerOp {
        if let LayerOp::File { mode, .. } | LayerOp::Dir { mode, .. } = &mut self {
            *mode = new_mode;
        }
        self
    }

    /// The same file or directory owned by `new_uid`:`new_gid`.
    pub fn owned_by(mut self, new_uid: u32, new_gid: u32) -> LayerOp {
        if let LayerOp::File { uid, gid, .. } | LayerOp::Dir { uid, gid, .. } = &mut self {
            *uid = new_uid;
            *gid = new_gid;
        }
        self
    }

    /// Carries the change out in the root filesystem at `rootfs`.
    pub fn apply(&self, rootfs: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::{PermissionsExt as _, lchown};
        let set_owner_mode = |path: &Path, uid: u32, gid: u32, mode: u32| -> anyhow::Result<()> {
            // Owner first: chown clears setuid and setgid bits.
            lchown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {}", path.display()))
        };
        match self {
            LayerOp::File {
                path,
                contents,
                mode,
                uid,
                gid,
            } => {
                let host = inside(rootfs, path)?;
                make_parents(rootfs, &host)?;
                if host.symlink_metadata().is_ok_and(|metadata| metadata.is_symlink()) {
                    std::fs::remove_file(&host).with_context(|| format!("replacing {path}"))?;
                }
                std::fs::write(&host, contents).with_context(|| format!("writing {path}"))?;
                set_owner_mode(&host, *uid, *gid, *mode)
            }
            LayerOp::Dir { path, mode, uid, gid } => {
                let host = inside(rootfs, path)?;
                make_parents(rootfs, &host)?;
                if !host.is_dir() {
                    std::fs::create_dir(&host).with_context(|| format!("mkdir {path}"))?;
                }
                set_owner_mode(&host, *uid, *gid, *mode)
            }
            LayerOp::Symlink { path, target } => {
                let host = inside(rootfs, path)?;
                make_parents(rootfs, &host)?;
                std::os::unix::fs::symlink(target, &host).with_context(|| format!("symlink {path} -> {target}"))?;
                Ok(())
            }
            LayerOp::Hardlink { path, target } => {
                let host = inside(rootfs, path)?;
                let existing = inside(rootfs, target)?;
                make_parents(rootfs, &host)?;
                std::fs::hard_link(&existing, &host).with_context(|| format!("hard link {path} -> {target}"))
            }
            LayerOp::Remove { path } => {
                let host = inside(rootfs, path)?;
                let metadata = host.symlink_metadata().with_context(|| format!("removing {path}"))?;
                if metadata.is_dir() {
                    std::fs::remove_dir_all(&host)
                } else {
                    std::fs::remove_file(&host)
                }
                .with_context(|| format!("removing {path}"))
            }
            LayerOp::ReplaceDir { path } => {
                let host = inside(rootfs, path)?;
                let metadata = host.symlink_metadata().with_context(|| format!("replacing {path}"))?;
                anyhow::ensure!(metadata.is_dir(), "{path} is not a directory");
                std::fs::remove_dir_all(&host).with_context(|| format!("removing {path}"))?;
                std::fs::create_dir(&host).with_context(|| format!("mkdir {path}"))?;
                use std::os::unix::fs::MetadataExt as _;
                set_owner_mode(&host, metadata.uid(), metadata.gid(), metadata.mode() & 0o7777)
            }
        }
    }
}

/// Where image path `path` is under `rootfs`, refusing `..`, relative paths, and
/// parents that are symlinks (through which a write could leave the root filesystem).
fn inside(rootfs: &Path, path: &str) -> anyhow::Result<PathBuf> {
    let relative = path
        .strip_prefix('/')
        .with_context(|| format!("image path {path:?} must be absolute"))?;
    let relative = Path::new(relative);
    anyhow::ensure!(
        relative.components().count() > 0 && relative.components().all(|part| matches!(part, Component::Normal(_))),
        "image path {path:?} must name something below / without . or .."
    );
    let mut at = rootfs.to_owned();
    let parts: Vec<_> = relative.components().collect();
    for part in &parts[..parts.len() - 1] {
        at.push(part);
        if at.symlink_metadata().is_ok_and(|metadata| metadata.is_symlink()) {
            bail!("image path {path:?} goes through the symlink {}", at.display());
        }
    }
    Ok(rootfs.join(relative))
}

/// Makes the missing parents of `host` (below `rootfs`) as 0755 root directories.
fn make_parents(rootfs: &Path, host: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let parent = host.parent().context("a path without parent")?;
    let mut missing = Vec::new();
    let mut at = parent;
    while at != rootfs && !at.exists() {
        missing.push(at);
        at = at.parent().context("a path outside the root filesystem")?;
    }
    for directory in missing.into_iter().rev() {
        std::fs::create_dir(directory).with_context(|| format!("mkdir {}", directory.display()))?;
        std::fs::set_permissions(directory, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", directory.display()))?;
    }
    Ok(())
}

/// A layer tarball written entry by entry, for what `umoci repack` does not produce:
/// explicit whiteouts, opaque directories, and (with [`TarLayer::raw`]) hostile names.
/// Every entry carries [`LAYER_TIME`]. Methods panic on names the `tar` crate refuses
/// (a mistake in the test, not a condition to handle).
pub struct TarLayer {
    builder: tar::Builder<Vec<u8>>,
}

impl std::fmt::Debug for TarLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TarLayer").finish_non_exhaustive()
    }
}

impl Default for TarLayer {
    fn default() -> TarLayer {
        TarLayer::new()
    }
}

impl TarLayer {
    /// An empty layer.
    pub fn new() -> TarLayer {
        TarLayer {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_size(size);
        header.set_mtime(LAYER_TIME);
        header
    }

    fn append(mut self, mut header: tar::Header, path: &str, link: Option<&str>, contents: &[u8]) -> TarLayer {
        let path = path.trim_start_matches('/');
        if let Some(link) = link {
            header
                .set_link_name(link)
                .unwrap_or_else(|error| panic!("link name {link:?}: {error}"));
        }
        self.builder
            .append_data(&mut header, path, contents)
            .unwrap_or_else(|error| panic!("tar entry {path:?}: {error}"));
        self
    }

    /// A directory (`path` relative to the root, a leading `/` is dropped).
    pub fn dir(self, path: &str, mode: u32) -> TarLayer {
        let header = TarLayer::header(tar::EntryType::Directory, mode, 0, 0, 0);
        self.append(header, path, None, &[])
    }

    /// A regular file owned by root.
    pub fn file(self, path: &str, contents: &[u8], mode: u32) -> TarLayer {
        self.file_owned(path, contents, mode, 0, 0)
    }

    /// A regular file owned by `uid`:`gid`.
    pub fn file_owned(self, path: &str, contents: &[u8], mode: u32, uid: u64, gid: u64) -> TarLayer {
        let header = TarLayer::header(tar::EntryType::Regular, mode, uid, gid, contents.len() as u64);
        self.append(header, path, None, contents)
    }

    /// A symbolic link to `target` (verbatim: may be absolute or climb with `..`).
    pub fn symlink(self, path: &str, target: &str) -> TarLayer {
        let header = TarLayer::header(tar::EntryType::Symlink, 0o777, 0, 0, 0);
        self.append(header, path, Some(target), &[])
    }

    /// A hard link to `target`, a path in the image (relative to the root).
    pub fn hardlink(self, path: &str, target: &str) -> TarLayer {
        let header = TarLayer::header(tar::EntryType::Link, 0o644, 0, 0, 0);
        self.append(header, path, Some(target.trim_start_matches('/')), &[])
    }

    /// A whiteout: deletes `path` of the layers below (`DIR/.wh.NAME`).
    pub fn whiteout(self, path: &str) -> TarLayer {
        let path = path.trim_start_matches('/');
        let (parent, name) = match path.rsplit_once('/') {
            Some((parent, name)) => (format!("{parent}/"), name),
            None => (String::new(), path),
        };
        self.file(&format!("{parent}.wh.{name}"), &[], 0o644)
    }

    /// An opaque marker: directory `dir` hides everything the layers below had in it
    /// (`DIR/.wh..wh..opq`). The directory itself should be in the layer too.
    pub fn opaque(self, dir: &str) -> TarLayer {
        let dir = dir.trim_start_matches('/').trim_end_matches('/');
        self.file(&format!("{dir}/.wh..wh..opq"), &[], 0o644)
    }

    /// An entry whose name (and link name) are written verbatim into the header, for
    /// hostile layers: `../escape`, `/etc/passwd`. Names are at most 100 bytes.
    pub fn raw(mut self, kind: tar::EntryType, name: &[u8], link: Option<&[u8]>, contents: &[u8]) -> TarLayer {
        let mut header = TarLayer::header(kind, 0o644, 0, 0, contents.len() as u64);
        let old = header.as_old_mut();
        assert!(name.len() <= old.name.len(), "raw names are at most 100 bytes");
        old.name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            assert!(link.len() <= old.linkname.len(), "raw link names are at most 100 bytes");
            old.linkname[..link.len()].copy_from_slice(link);
        }
        header.set_cksum();
        self.builder
            .append(&header, contents)
            .unwrap_or_else(|error| panic!("raw tar entry: {error}"));
        self
    }

    /// The finished tarball.
    pub fn into_bytes(self) -> Vec<u8> {
        self.builder.into_inner().expect("finishing an in-memory tarball")
    }
}

/// The sample app (`drover-sample-app`) as a runnable three-layer image, built from the
/// binary of this build and the libraries `ldd` says it needs:
///
/// 1. base: the dynamic loader and libraries at their paths on this machine (with the
///    machine's symlinked directories, e.g. `/lib64 -> usr/lib64`), `/etc/passwd` and
///    `/etc/group` with user and group `app` (1000), `/tmp`;
/// 2. app: `/app/bin/drover-sample-app` and `/app/VERSION`;
/// 3. data: `/app/data/message.txt`, owned by `app`.
///
/// Config: Entrypoint `/app/bin/drover-sample-app`, Cmd `--listen LISTEN`, User `app`,
/// WorkingDir `/app`, Env `PATH`, `APP_STAGE=image` and [`SampleImage::env`]. Padding
/// bytes (pseudo-random, so they do not compress, and the same for the same seed, so
/// layers stay shared between builds) make layers as large as a benchmark wants.
#[derive(Clone, Debug)]
pub struct SampleImage {
    /// What `/app/VERSION` says (and so what the app serves at `/`, unless `APP_VERSION`
    /// is in `env`).
    pub version: String,
    /// The address in Cmd (`127.0.0.1:PORT`).
    pub listen: String,
    /// What `/app/data/message.txt` holds.
    pub data: String,
    /// More `NAME=VALUE` entries for Env (e.g. `APP_VERSION=2`, `FAIL=health`): a new
    /// config without new layers.
    pub env: Vec<String>,
    /// Padding bytes per layer (base, app, data): `/opt/padding/base.bin`,
    /// `/app/padding.bin`, `/app/data/padding.bin`.
    pub padding: [usize; 3],
    /// The seed of the padding bytes.
    pub padding_seed: u64,
    /// The binary to pack; `None` is [`crate::binary`]`("drover-sample-app")`.
    pub binary: Option<PathBuf>,
}

impl SampleImage {
    /// Version `version` listening on 127.0.0.1:`port`, data `hello`, no padding.
    pub fn new(version: &str, port: u16) -> SampleImage {
        SampleImage {
            version: version.to_owned(),
            listen: format!("127.0.0.1:{port}"),
            data: "hello".to_owned(),
            env: Vec::new(),
            padding: [0; 3],
            padding_seed: 1,
            binary: None,
        }
    }

    /// Builds the image.
    pub fn build(&self) -> anyhow::Result<OciImage> {
        let binary = match &self.binary {
            Some(path) => path.clone(),
            None => crate::binary("drover-sample-app"),
        };
        let libraries = shared_libraries(&binary)?;
        let mut image = OciImage::new()?;
        let padding = |layer: usize| padding_bytes(self.padding[layer], self.padding_seed, layer as u64);

        let mut base = base_accounts();
        if self.padding[0] > 0 {
            base.push(LayerOp::file("/opt/padding/base.bin", padding(0)));
        }
        image.layer_with(|rootfs| {
            for library in &libraries {
                mirror_host_path(library, rootfs, 0)?;
            }
            base.iter().try_for_each(|operation| operation.apply(rootfs))
        })?;

        let mut app = vec![
            LayerOp::dir("/app"),
            LayerOp::dir("/app/bin"),
            LayerOp::executable(
                "/app/bin/drover-sample-app",
                std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?,
            ),
            LayerOp::file("/app/VERSION", format!("{}\n", self.version)),
        ];
        if self.padding[1] > 0 {
            app.push(LayerOp::file("/app/padding.bin", padding(1)));
        }
        image.layer(&app)?;

        let mut data = vec![
            LayerOp::dir("/app/data").owned_by(1000, 1000),
            LayerOp::file("/app/data/message.txt", self.data.clone()).owned_by(1000, 1000),
        ];
        if self.padding[2] > 0 {
            data.push(LayerOp::file("/app/data/padding.bin", padding(2)));
        }
        image.layer(&data)?;

        let mut env = vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".to_owned(),
            "APP_STAGE=image".to_owned(),
        ];
        env.extend(self.env.iter().cloned());
        image.configure(&ImageConfig {
            entrypoint: Some(vec!["/app/bin/drover-sample-app".to_owned()]),
            cmd: Some(vec!["--listen".to_owned(), self.listen.clone()]),
            env,
            working_dir: Some("/app".to_owned()),
            user: Some("app".to_owned()),
        })?;
        Ok(image)
    }
}

/// The start of a sample base layer: `/etc/passwd` and `/etc/group` with root and `app`
/// (uid and gid 1000, the image's non-root user), and a world-writable `/tmp`.
pub fn base_accounts() -> Vec<LayerOp> {
    vec![
        LayerOp::file(
            "/etc/passwd",
            "root:x:0:0:root:/root:/usr/sbin/nologin\napp:x:1000:1000:app:/app:/usr/sbin/nologin\n",
        ),
        LayerOp::file("/etc/group", "root:x:0:\napp:x:1000:\n"),
        LayerOp::dir("/tmp").with_mode(0o1777),
    ]
}

/// `length` pseudo-random bytes (SplitMix64 from `seed` and `stream`): incompressible,
/// and the same for the same inputs.
pub fn padding_bytes(length: usize, seed: u64, stream: u64) -> Vec<u8> {
    let mut state = seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F);
    let mut bytes = Vec::with_capacity(length + 8);
    while bytes.len() < length {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^= mixed >> 31;
        bytes.extend_from_slice(&mixed.to_le_bytes());
    }
    bytes.truncate(length);
    bytes
}

/// The absolute paths `ldd` lists for `binary` (the loader included); none for a static one.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let all = format!("{text}{}", String::from_utf8_lossy(&output.stderr));
        if all.contains("not a dynamic executable") || all.contains("statically linked") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {all}", binary.display());
    }
    Ok(text
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Copies the machine's file `path` into `rootfs` at the same path, recreating on the
/// way every symlink the machine has along it (a merged-/usr `/lib64 -> usr/lib64`, a
/// `libc.so.6 -> libc-2.36.so`) so the loader finds it as it would outside.
fn mirror_host_path(path: &Path, rootfs: &Path, depth: usize) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    anyhow::ensure!(depth < 40, "too many symlinks mirroring {}", path.display());
    let parts: Vec<Component<'_>> = path.components().collect();
    anyhow::ensure!(
        parts.first() == Some(&Component::RootDir),
        "{} is not absolute",
        path.display()
    );
    let mut machine = PathBuf::from("/");
    for (position, part) in parts.iter().enumerate().skip(1) {
        match part {
            Component::CurDir => continue,
            Component::ParentDir => {
                // Everything before is a real directory, so `..` is its parent.
                machine.pop();
                continue;
            }
            Component::Normal(name) => machine.push(name),
            Component::RootDir | Component::Prefix(_) => bail!("odd path {}", path.display()),
        }
        let copy = rootfs.join(machine.strip_prefix("/").expect("absolute"));
        let metadata = machine
            .symlink_metadata()
            .with_context(|| format!("reading {}", machine.display()))?;
        if metadata.is_symlink() {
            let target = std::fs::read_link(&machine).with_context(|| format!("reading {}", machine.display()))?;
            if copy.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(&target, &copy).with_context(|| format!("symlink {}", copy.display()))?;
            }
            let mut resolved = if target.is_absolute() {
                target
            } else {
                machine.parent().unwrap_or(Path::new("/")).join(target)
            };
            for rest in &parts[position + 1..] {
                resolved.push(rest);
            }
            return mirror_host_path(&resolved, rootfs, depth + 1);
        }
        let last = position == parts.len() - 1;
        if metadata.is_dir() {
            if copy.symlink_metadata().is_err() {
                std::fs::create_dir(&copy).with_context(|| format!("mkdir {}", copy.display()))?;
                std::fs::set_permissions(
                    &copy,
                    std::fs::Permissions::from_mode(metadata.permissions().mode() & 0o7777),
                )
                .with_context(|| format!("chmod {}", copy.display()))?;
            }
        } else if last {
            if copy.symlink_metadata().is_err() {
                std::fs::copy(&machine, &copy).with_context(|| format!("copying {}", machine.display()))?;
            }
        } else {
            bail!("{} is not a directory", machine.display());
        }
    }
    Ok(())
}
