//! The agent's image pull and staging against a real registry (SPEC.md §7, issue 7):
//! Debian's `docker-registry` on 127.0.0.1, images built with `umoci` and pushed with
//! `skopeo` (`drover_tests::registry`), and the agent library called as its executor calls
//! it for an OCI release: `oci::pull::pull` into the cache under a fresh state directory,
//! then `oci::stage::stage_image` on the blocking pool, with the registry settings read
//! from an `agent.toml` by `config::load` and the limits `run` derives from it.
//!
//! - The rootfs the agent stages equals `umoci unpack`'s for the same image, except for
//!   the additions staging documents, listed path by path.
//! - A blob that does not match its digest, hostile layers (`..`, absolute paths, symlink
//!   escapes), an image index: clear errors, nothing staged, nothing outside the state
//!   directory, the release already on disk untouched.
//! - A download cut midway is resumed with a Range request; a second release sharing two
//!   of three layers downloads only what is new; basic auth over TLS with the registry's
//!   CA works and a wrong password is refused.
//!
//! Needs root (owners are compared), `umoci`, `skopeo`, `docker-registry` and `htpasswd`.
//! Without them the tests fail and say so; they do not skip.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use drover_agent::config::{Overrides, RegistryConfig};
use drover_agent::fetch::{Cache, FetchError};
use drover_agent::install::{StageError, StagedRelease};
use drover_agent::oci::image::INDEX_REFUSED;
use drover_agent::oci::pull::{PullError, PulledImage};
use drover_agent::oci::registry::Registries;
use drover_agent::oci::{LayerLimits, pull, stage};
use drover_agent::unpack::{SpecialBits, UnpackLimits};
use drover_protocol::manifest::OciReference;
use drover_protocol::{AppName, AppSpec, Digest, Version};
use drover_tests::block_on;
use drover_tests::registry::image::{ImageConfig, padding_bytes, sha256_digest};
use drover_tests::registry::{BlobFetch, LayerOp, OciImage, Registry, TarLayer};
use drover_tests::rootfs_tree::{self, Kind, Node};

/// The app every release here belongs to.
const APP: &str = "web";
/// Where the proxy cuts the first download of each blob.
const CUT: u64 = 64 * 1024;
/// The sha256 of nothing: what an empty mount-point file holds.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// The user database of every image here: root and `app` (1000).
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\n";

/// What the agent's `main` does before anything speaks TLS.
fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Fails unless the test runs as root: the agent sets owners (and so does `umoci unpack`),
/// and the comparisons include them.
fn require_root() {
    let probe = tempfile::tempfile().expect("probe file");
    assert_eq!(
        probe.metadata().expect("probe").uid(),
        0,
        "this test must run as root (the agent and umoci set owners, which only root can); it does not skip"
    );
}

fn app() -> AppName {
    APP.parse().expect("app name")
}

fn spec(json: &str) -> AppSpec {
    serde_json::from_str(json).expect("app spec")
}

/// `HOST/REPOSITORY@DIGEST`, as a release carries it.
fn reference(host: &str, repository: &str, digest: &str) -> OciReference {
    OciReference::try_from(format!("{host}/{repository}@{digest}")).expect("pinned reference")
}

fn write_secret(path: &Path, contents: &[u8]) {
    fs::write(path, contents).expect("write secret");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 0600");
}

/// One agent's disk and settings as `drover_agent::run` sets them up: a fresh state
/// directory with the artifact cache in it, the registries of an `agent.toml` (read by
/// `config::load`, so the settings pass the agent's own validation), and unpack limits
/// from its `max_release_size`.
#[derive(Debug)]
struct Agent {
    /// Holds the state directory and `agent.toml`; removed on drop.
    _scratch: tempfile::TempDir,
    state_dir: PathBuf,
    cache: Cache,
    registries: Registries,
    limits: UnpackLimits,
}

impl Agent {
    /// An agent whose `agent.toml` holds `registries` (its `[registries."…"]` sections).
    fn new(registries: &str) -> Agent {
        let scratch = tempfile::Builder::new()
            .prefix("drover-agent-")
            .tempdir()
            .expect("agent directory");
        let state_dir = scratch.path().join("state");
        let config_path = scratch.path().join("agent.toml");
        fs::write(
            &config_path,
            format!(
                "host_id = \"oci-pull\"\nstate_dir = \"{}\"\n\n{registries}",
                state_dir.display()
            ),
        )
        .expect("agent.toml");
        let config = drover_agent::config::load(&config_path, true, &Overrides::default(), "oci-pull")
            .unwrap_or_else(|errors| panic!("{errors}"));
        fs::create_dir_all(&config.state_dir).expect("state directory");
        fs::set_permissions(&config.state_dir, fs::Permissions::from_mode(0o700)).expect("chmod state");
        Agent {
            cache: Cache::new(config.state_dir.join("cache")),
            registries: Registries::new(config.registries.clone(), &drover_agent::tls::SYSTEM_CA_BUNDLES),
            limits: UnpackLimits {
                max_total_bytes: config.max_release_size,
                ..UnpackLimits::default()
            },
            state_dir: config.state_dir,
            _scratch: scratch,
        }
    }

    /// An agent that reaches `host` over plain HTTP (`insecure = true`), anonymously.
    fn plain(host: &str) -> Agent {
        Agent::new(&format!("[registries.\"{host}\"]\ninsecure = true\n"))
    }

    /// The registry settings the agent ended up with for `host`.
    fn registry_config(&self, host: &str) -> RegistryConfig {
        self.registries.config(host)
    }

    /// The executor's fetch step of an OCI release (`Executor::fetch`).
    async fn fetch(&self, reference: &OciReference) -> Result<PulledImage, PullError> {
        pull::pull(
            &self.registries,
            &self.cache,
            reference,
            &reference.digest(),
            self.limits.max_total_bytes,
        )
        .await
    }

    /// The executor's stage step of an OCI release (`Executor::stage`): `allow_setuid`
    /// keeps special bits, the layer limits are the unpack limits, on the blocking pool.
    async fn stage(&self, image: &PulledImage, spec: &AppSpec, version: &str) -> Result<StagedRelease, StageError> {
        let mut limits = self.limits;
        if spec.sandbox.allow_setuid {
            limits.special_bits = SpecialBits::Keep;
        }
        let limits = LayerLimits {
            max_total_bytes: limits.max_total_bytes,
            max_entries: limits.max_entries,
            special_bits: limits.special_bits,
        };
        let (image, spec, state_dir) = (image.clone(), spec.clone(), self.state_dir.clone());
        let version: Version = version.parse().expect("version");
        tokio::task::spawn_blocking(move || stage::stage_image(&image, &spec, &state_dir, &app(), &version, &limits))
            .await
            .expect("staging task")
    }

    /// Fetches and stages, expecting both to work.
    async fn install(&self, reference: &OciReference, spec: &AppSpec, version: &str) -> (PulledImage, StagedRelease) {
        let image = self
            .fetch(reference)
            .await
            .unwrap_or_else(|error| panic!("pulling {}: {error}", reference.as_str()));
        let staged = self
            .stage(&image, spec, version)
            .await
            .unwrap_or_else(|error| panic!("staging {version}: {error}"));
        (image, staged)
    }

    fn releases_dir(&self) -> PathBuf {
        drover_agent::install::releases_dir(&self.state_dir, &app())
    }

    /// Everything in the app's releases directory (staging leftovers included).
    fn release_entries(&self) -> BTreeSet<String> {
        match fs::read_dir(self.releases_dir()) {
            Ok(entries) => entries
                .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
                .collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(error) => panic!("{}: {error}", self.releases_dir().display()),
        }
    }

    /// Every name in the cache directory (`HEX`, `HEX.partial`).
    fn cache_entries(&self) -> Vec<String> {
        match fs::read_dir(self.state_dir.join("cache")) {
            Ok(entries) => entries
                .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
                .collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => panic!("the cache: {error}"),
        }
    }

    /// The names in the cache that belong to blob `digest` (`HEX`, `HEX.partial`).
    fn cache_names_of(&self, digest: &str) -> Vec<String> {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.cache_entries()
            .into_iter()
            .filter(|name| name.starts_with(hex))
            .collect()
    }
}

/// The bottom layer of the small images: the user database and an executable entrypoint.
fn base_layer() -> Vec<LayerOp> {
    vec![
        LayerOp::file("/etc/passwd", PASSWD),
        LayerOp::file("/etc/group", GROUP),
        LayerOp::executable("/bin/app", "#!/bin/sh\nexec sleep infinity\n"),
    ]
}

/// A runnable image: [`base_layer`], then one umoci layer per entry of `layers`, with
/// Entrypoint `/bin/app`. The base layer is the same blob in every such image.
fn app_image(layers: &[Vec<LayerOp>]) -> OciImage {
    let mut image = OciImage::new().expect("new image");
    image.layer(&base_layer()).expect("base layer");
    for operations in layers {
        image.layer(operations).expect("layer");
    }
    image
        .configure(&ImageConfig {
            entrypoint: Some(vec!["/bin/app".to_owned()]),
            ..ImageConfig::default()
        })
        .expect("config");
    image
}

/// The size of blob `digest` of `image`.
fn blob_size(image: &OciImage, digest: &str) -> u64 {
    image.blob(digest).expect("blob").len() as u64
}

fn config_digest(image: &OciImage) -> String {
    image.manifest().expect("manifest")["config"]["digest"]
        .as_str()
        .expect("config digest")
        .to_owned()
}

/// The image of the comparison with `umoci unpack`: four layers with everything the
/// applier has rules for, and a config whose WorkingDir and User staging acts on.
fn reference_image() -> OciImage {
    let mut image = OciImage::new().expect("new image");
    // 1: files, owners, modes, links of every kind.
    image
        .layer(&[
            LayerOp::file("/etc/passwd", PASSWD),
            LayerOp::file("/etc/group", GROUP),
            LayerOp::file("/etc/shadow", "root:*:19000::::::\n").with_mode(0o600),
            LayerOp::executable("/bin/app", "#!/bin/sh\nexec /bin/tool\n"),
            LayerOp::executable("/bin/tool", "#!/bin/sh\necho tool\n").with_mode(0o4755),
            LayerOp::hardlink("/bin/tool-hard", "/bin/tool"),
            LayerOp::file("/usr/lib/libx.so.1", "\x7fELF libx\n"),
            LayerOp::symlink("/usr/lib/libx.so", "libx.so.1"),
            LayerOp::symlink("/usr/bin/tool", "/bin/tool"),
            LayerOp::symlink("/usr/bin/tool-relative", "../../bin/tool"),
            LayerOp::symlink("/usr/bin/dangling", "/nonexistent/target"),
            LayerOp::dir("/home/app").owned_by(1000, 1000).with_mode(0o750),
            LayerOp::file("/home/app/.profile", "export PATH=/bin\n").owned_by(1000, 1000),
            LayerOp::dir("/srv/private").with_mode(0o700),
            LayerOp::file("/srv/private/key", "secret\n").with_mode(0o600),
            LayerOp::dir("/srv/data").owned_by(1000, 1000).with_mode(0o750),
            LayerOp::file("/srv/data/state", "state\n")
                .owned_by(1000, 1000)
                .with_mode(0o640),
            LayerOp::dir("/shared").owned_by(0, 1000).with_mode(0o2775),
            LayerOp::file("/doomed", "deleted by layer 2\n"),
            LayerOp::file("/old/tree/leaf", "deleted with its directory\n"),
            LayerOp::file("/opt/cache/a", "hidden by the opaque directory\n"),
            LayerOp::file("/opt/cache/b/c", "hidden too\n"),
            LayerOp::file("/opt/cache/keep/old", "hidden although keep/ stays\n"),
            LayerOp::file("/opt/other", "outside the opaque directory\n"),
        ])
        .expect("layer 1");
    // 2: whiteouts of a file and a tree, a file replaced, a hard link across layers.
    image
        .layer(&[
            LayerOp::remove("/doomed"),
            LayerOp::remove("/old"),
            LayerOp::file(
                "/etc/passwd",
                format!("{PASSWD}nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
            ),
            LayerOp::hardlink("/usr/lib/libx-again", "/usr/lib/libx.so.1"),
        ])
        .expect("layer 2");
    // 3: a file owned by the user, a mode changed.
    image
        .layer(&[
            LayerOp::file("/srv/data/more", "more\n")
                .owned_by(1000, 1000)
                .with_mode(0o600),
            LayerOp::dir("/srv/private").with_mode(0o700).owned_by(1000, 1000),
        ])
        .expect("layer 3");
    // 4: an opaque directory, by hand (umoci writes a whiteout per entry instead).
    let opaque = TarLayer::new()
        .dir("opt/cache", 0o775)
        .file_owned("opt/cache/fresh", b"written before the marker\n", 0o640, 1000, 1000)
        .dir("opt/cache/keep", 0o755)
        .file("opt/cache/keep/new", b"new in a lower directory\n", 0o644)
        .opaque("opt/cache")
        .file("opt/cache/after", b"written after the marker\n", 0o644)
        .into_bytes();
    image.raw_layer(&opaque).expect("layer 4");
    image
        .configure(&ImageConfig {
            entrypoint: Some(vec!["/bin/app".to_owned()]),
            cmd: Some(vec!["--serve".to_owned()]),
            env: vec!["PATH=/usr/bin:/bin".to_owned()],
            working_dir: Some("/srv/www".to_owned()),
            user: Some("app".to_owned()),
        })
        .expect("config");
    image
}

#[test]
fn the_rootfs_the_agent_builds_equals_umoci_unpack() {
    require_root();
    crypto();
    let registry = Registry::start_plain().expect("registry");
    let image = reference_image();
    let digest = image.push(&registry, "drover/reference:1").expect("push");
    assert_eq!(image.layer_digests().expect("layers").len(), 4);
    let scratch = tempfile::tempdir().expect("scratch");
    let expected = image.unpack(&scratch.path().join("bundle")).expect("umoci unpack");

    let agent = Agent::plain(&registry.host());
    let spec = spec(
        r#"{"service":{},"sandbox":{"allow_setuid":true},
            "config_files":[{"path":"etc/app/app.toml","content":"port = 8080\n"}]}"#,
    );
    let (pulled, staged) =
        block_on(agent.install(&reference(&registry.host(), "drover/reference", &digest), &spec, "1"));
    assert_eq!(pulled.layers().len(), 4);
    assert_eq!(staged.path(), agent.releases_dir().join("1"));
    assert_eq!(
        fs::metadata(staged.path()).expect("release").permissions().mode() & 0o7777,
        0o700,
        "the release directory keeps host users out of the rootfs"
    );
    let rootfs = staged.path().join("rootfs");

    // What staging adds on purpose (stage.rs), and nothing else: the mount points systemd
    // needs, resolv.conf to bind the host's over, the image's WorkingDir, and the mount
    // point of the spec's config file.
    let directory = |mode| Node {
        kind: Kind::Directory,
        mode,
        uid: 0,
        gid: 0,
    };
    let empty_file = Node {
        kind: Kind::File {
            sha256: EMPTY_SHA256.to_owned(),
        },
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
    let additions: BTreeMap<PathBuf, Node> = [
        ("./dev", directory(0o755)),
        ("./proc", directory(0o755)),
        ("./sys", directory(0o755)),
        ("./run", directory(0o755)),
        ("./tmp", directory(0o1777)),
        ("./var", directory(0o755)),
        ("./var/tmp", directory(0o1777)),
        ("./etc/resolv.conf", empty_file.clone()),
        ("./srv/www", directory(0o755)),
        ("./etc/app", directory(0o755)),
        ("./etc/app/app.toml", empty_file),
    ]
    .into_iter()
    .map(|(path, node)| (PathBuf::from(path), node))
    .collect();
    let umoci_tree = rootfs_tree::scan(&expected);
    let agent_tree = rootfs_tree::scan(&rootfs);
    let problems = rootfs_tree::differences_with_additions(&umoci_tree, &agent_tree, &additions);
    assert!(
        problems.is_empty(),
        "the agent's rootfs {} differs from umoci's {}:\n  {}",
        rootfs.display(),
        expected.display(),
        problems.join("\n  ")
    );

    // The image has what the comparison is meant to cover, so a match means something.
    let node = |path: &str| {
        agent_tree
            .nodes
            .get(Path::new(path))
            .unwrap_or_else(|| panic!("{path} missing from the agent's rootfs"))
    };
    assert_eq!(node("./bin/tool").mode, 0o4755, "allow_setuid keeps the setuid bit");
    assert_eq!(node("./shared").mode, 0o2775);
    assert_eq!((node("./shared").uid, node("./shared").gid), (0, 1000));
    assert_eq!(node("./srv/private").mode, 0o700);
    assert_eq!(node("./srv/private").uid, 1000);
    assert_eq!(
        (node("./srv/data/more").uid, node("./srv/data/more").mode),
        (1000, 0o600)
    );
    assert_eq!(node("./opt/cache/fresh").uid, 1000);
    assert_eq!(
        node("./usr/bin/tool").kind,
        Kind::Symlink {
            target: "/bin/tool".into()
        }
    );
    for group in [
        ["./bin/tool", "./bin/tool-hard"],
        ["./usr/lib/libx-again", "./usr/lib/libx.so.1"],
    ] {
        let group: Vec<PathBuf> = group.iter().map(PathBuf::from).collect();
        assert!(
            agent_tree.hardlink_groups.contains(&group),
            "{group:?} should be one inode: {:?}",
            agent_tree.hardlink_groups
        );
    }
    for gone in [
        "./doomed",
        "./old",
        "./opt/cache/a",
        "./opt/cache/b",
        "./opt/cache/keep/old",
    ] {
        assert!(!agent_tree.nodes.contains_key(Path::new(gone)), "{gone} should be gone");
    }
    for kept in [
        "./opt/cache/fresh",
        "./opt/cache/after",
        "./opt/cache/keep/new",
        "./opt/other",
    ] {
        assert!(agent_tree.nodes.contains_key(Path::new(kept)), "{kept} should be there");
    }
    assert!(
        !agent_tree
            .nodes
            .keys()
            .any(|path| path.to_string_lossy().contains(".wh.")),
        "no whiteout file in the rootfs"
    );
    // And the additions really are additions: the image has none of them.
    for path in additions.keys() {
        assert!(
            !umoci_tree.nodes.contains_key(path),
            "{} is in the image",
            path.display()
        );
    }
    let record = stage::read_record(staged.path()).expect("image.json");
    assert_eq!(record.run.exec, ["/bin/app", "--serve"]);
    assert_eq!(record.run.working_directory, "/srv/www");
}

#[test]
fn a_blob_whose_digest_does_not_match_is_refused_and_changes_nothing() {
    require_root();
    crypto();
    let registry = Registry::start_plain().expect("registry");
    let one = app_image(&[vec![LayerOp::file("/srv/version", "1\n")]]);
    let two = app_image(&[vec![
        LayerOp::file("/srv/version", "2\n"),
        LayerOp::file("/srv/padding.bin", padding_bytes(256 << 10, 2, 0)),
    ]]);
    let one_digest = one.push(&registry, "drover/corrupt:1").expect("push 1");
    let two_digest = two.push(&registry, "drover/corrupt:2").expect("push 2");
    let bad_layer = two.layer_digests().expect("layers")[1].clone();
    assert!(
        !one.layer_digests().expect("layers").contains(&bad_layer),
        "the corrupted layer is new in release 2"
    );

    let agent = Agent::plain(&registry.host());
    let spec = spec(r#"{"service":{}}"#);
    let (_, staged) = block_on(agent.install(&reference(&registry.host(), "drover/corrupt", &one_digest), &spec, "1"));
    let release_one = rootfs_tree::scan(staged.path());
    let record_one = fs::read(staged.path().join("image.json")).expect("image.json");

    registry.corrupt_blob(&bad_layer).expect("corrupt");
    let two_reference = reference(&registry.host(), "drover/corrupt", &two_digest);
    let error = block_on(agent.fetch(&two_reference)).expect_err("a layer that does not match its digest");
    let message = error.to_string();
    assert!(
        matches!(
            &error,
            PullError::Blob {
                source: FetchError::DigestMismatch { .. },
                ..
            }
        ),
        "{message}"
    );
    for part in [bad_layer.as_str(), two_reference.as_str(), "refused"] {
        assert!(message.contains(part), "{message:?} should name {part:?}");
    }

    assert!(
        agent.cache_names_of(&bad_layer).is_empty(),
        "nothing under the blob's cache name: {:?}",
        agent.cache_names_of(&bad_layer)
    );
    assert!(!pull::is_cached(&agent.cache, &two_reference.digest()));
    assert_eq!(
        agent.release_entries(),
        BTreeSet::from(["1".to_owned()]),
        "no release 2"
    );
    assert_eq!(rootfs_tree::scan(staged.path()), release_one, "release 1 is untouched");
    assert_eq!(
        fs::read(staged.path().join("image.json")).expect("image.json"),
        record_one
    );
    // Release 1 is still whole from the cache alone.
    assert!(pull::is_cached(
        &agent.cache,
        &one_digest.parse::<Digest>().expect("digest")
    ));
}

/// A hostile last layer and what the agent must make of it.
struct Hostile {
    version: &'static str,
    layer: Vec<u8>,
    /// What the error says, or `None` when the layer is applied safely.
    refused: Option<&'static str>,
}

#[test]
fn layers_with_dotdot_absolute_or_symlink_escapes_are_refused() {
    require_root();
    crypto();
    let registry = Registry::start_plain().expect("registry");
    let agent = Agent::plain(&registry.host());
    // Outside the state directory: where each escape aims. It must stay empty.
    let canary = tempfile::Builder::new()
        .prefix("drover-canary-")
        .tempdir()
        .expect("canary directory");
    let canary_relative = canary
        .path()
        .to_str()
        .expect("UTF-8 path")
        .trim_start_matches('/')
        .to_owned();
    // Enough `..` to climb from releases/.staging-…/rootfs to `/` and beyond.
    let climb = "../".repeat(agent.state_dir.components().count() + 8);
    let name = |text: String| -> Vec<u8> {
        assert!(text.len() <= 100, "raw tar names are at most 100 bytes: {text}");
        text.into_bytes()
    };
    let raw = |kind, entry: &[u8], link: Option<&[u8]>| TarLayer::new().raw(kind, entry, link, b"escaped\n");
    use tar::EntryType::{Link, Regular, Symlink};
    let cases = [
        Hostile {
            version: "dotdot",
            layer: raw(Regular, b"../x", None).into_bytes(),
            refused: Some("`..` component"),
        },
        Hostile {
            version: "dotdot-deep",
            layer: raw(Regular, &name(format!("{climb}{canary_relative}/dotdot")), None).into_bytes(),
            refused: Some("`..` component"),
        },
        // A leading `/` is dropped (layer.rs): the file lands inside the rootfs.
        Hostile {
            version: "absolute",
            layer: raw(Regular, &name(format!("/{canary_relative}/absolute")), None).into_bytes(),
            refused: None,
        },
        Hostile {
            version: "symlink-absolute",
            layer: raw(Symlink, b"etc", Some(&name(canary.path().display().to_string())))
                .raw(Regular, b"etc/passwd", None, b"root::0:0::/:/bin/sh\n")
                .into_bytes(),
            refused: Some("goes through symlink 'etc'"),
        },
        Hostile {
            version: "symlink-relative",
            layer: raw(Symlink, b"up", Some(&name(climb.trim_end_matches('/').to_owned())))
                .raw(Regular, &name(format!("up/{canary_relative}/relative")), None, b"x")
                .into_bytes(),
            refused: Some("goes through symlink 'up'"),
        },
        Hostile {
            version: "hardlink-dotdot",
            layer: raw(Link, b"stolen", Some(&name(format!("{climb}etc/shadow")))).into_bytes(),
            refused: Some("has a `..` component"),
        },
    ];
    let spec = spec(r#"{"service":{}}"#);
    for case in &cases {
        let mut image = app_image(&[]);
        image.raw_layer(&case.layer).expect("hostile layer");
        let repository = format!("drover/hostile-{}", case.version);
        let digest = image.push(&registry, &format!("{repository}:1")).expect("push");
        let layer = image.layer_digests().expect("layers")[1].clone();
        let pulled =
            block_on(agent.fetch(&reference(&registry.host(), &repository, &digest))).unwrap_or_else(|error| {
                panic!(
                    "{}: the blobs are what they claim, so the pull works: {error}",
                    case.version
                )
            });
        let staged = block_on(agent.stage(&pulled, &spec, case.version));
        match (case.refused, staged) {
            (Some(rule), Err(error)) => {
                let message = error.to_string();
                assert!(
                    matches!(error, StageError::Layer { index: 2, .. }),
                    "{}: {message}",
                    case.version
                );
                for part in [rule, layer.as_str(), "layer 2", case.version] {
                    assert!(
                        message.contains(part),
                        "{}: {message:?} should say {part:?}",
                        case.version
                    );
                }
                assert!(
                    !agent.release_entries().contains(case.version),
                    "{}: no release directory",
                    case.version
                );
            }
            (None, Ok(staged)) => {
                let inside = staged.path().join("rootfs").join(&canary_relative).join("absolute");
                assert_eq!(
                    fs::read(&inside).unwrap_or_else(|error| panic!("{}: {error}", inside.display())),
                    b"escaped\n"
                );
            }
            (Some(_), Ok(staged)) => panic!(
                "{}: staged at {} but must be refused",
                case.version,
                staged.path().display()
            ),
            (None, Err(error)) => panic!("{}: {error}", case.version),
        }
        assert!(
            !agent
                .release_entries()
                .iter()
                .any(|entry| entry.starts_with(".staging-")),
            "{}: staging leftovers {:?}",
            case.version,
            agent.release_entries()
        );
        let outside: Vec<_> = fs::read_dir(canary.path())
            .expect("canary")
            .map(|entry| entry.expect("entry").path())
            .collect();
        assert!(
            outside.is_empty(),
            "{}: written outside the state directory: {outside:?}",
            case.version
        );
    }
    assert_eq!(agent.release_entries(), BTreeSet::from(["absolute".to_owned()]));
}

/// Blob downloads through a proxy, by digest.
fn fetches_of(fetches: &[BlobFetch], digest: &str) -> Vec<BlobFetch> {
    fetches.iter().filter(|fetch| fetch.digest == digest).cloned().collect()
}

#[test]
fn a_registry_that_drops_the_connection_mid_blob_is_resumed() {
    require_root();
    crypto();
    let registry = Registry::start_plain().expect("registry");
    let image = app_image(&[vec![LayerOp::file("/srv/big.bin", padding_bytes(1 << 20, 3, 0))]]);
    let digest = image.push(&registry, "drover/resume:1").expect("push");
    let big = image.layer_digests().expect("layers")[1].clone();
    let big_size = blob_size(&image, &big);
    assert!(big_size > 2 * CUT, "the layer is {big_size} bytes");
    let proxy = registry.proxy_dropping_after(CUT).expect("proxy");

    let spec = spec(r#"{"service":{}}"#);
    let through_proxy = Agent::plain(&proxy.host());
    let (resumed, resumed_release) =
        block_on(through_proxy.install(&reference(&proxy.host(), "drover/resume", &digest), &spec, "1"));
    let direct = Agent::plain(&registry.host());
    let (clean, clean_release) =
        block_on(direct.install(&reference(&registry.host(), "drover/resume", &digest), &spec, "1"));

    let fetches = proxy.fetches();
    let big_fetches = fetches_of(&fetches, &big);
    assert_eq!(big_fetches.len(), 2, "one cut download, one resume: {fetches:#?}");
    let (cut, resume) = (&big_fetches[0], &big_fetches[1]);
    assert!(
        cut.dropped && !cut.complete && cut.bytes == CUT && cut.range.is_none() && cut.status == 200,
        "{cut:?}"
    );
    assert_eq!(
        resume.range.as_deref(),
        Some(format!("bytes={CUT}-").as_str()),
        "{resume:?}"
    );
    assert_eq!(resume.status, 206, "{resume:?}");
    assert!(resume.complete && resume.bytes == big_size - CUT, "{resume:?}");
    // Every other blob came once, whole; every byte came once.
    for fetch in fetches.iter().filter(|fetch| fetch.digest != big) {
        assert!(fetch.complete && !fetch.dropped && fetch.status == 200, "{fetch:?}");
    }
    let blobs: u64 = std::iter::once(config_digest(&image))
        .chain(image.layer_digests().expect("layers"))
        .map(|digest| blob_size(&image, &digest))
        .sum();
    assert_eq!(proxy.blob_bytes(), blobs);

    // The same image as a clean pull.
    assert_eq!(resumed.digest(), clean.digest());
    assert_eq!(resumed.layers().len(), clean.layers().len());
    assert_eq!(resumed.downloaded(), clean.downloaded(), "the resumed bytes count once");
    for (ours, theirs) in resumed.layers().iter().zip(clean.layers()) {
        assert_eq!(ours.descriptor, theirs.descriptor);
        assert_eq!(
            fs::read(ours.artifact.path()).expect("resumed blob"),
            fs::read(theirs.artifact.path()).expect("clean blob")
        );
    }
    assert_eq!(
        sha256_digest(&fs::read(through_proxy.cache.path_of(&big.parse().expect("digest"))).expect("cached layer")),
        big
    );
    rootfs_tree::assert_same(
        &clean_release.path().join("rootfs"),
        &resumed_release.path().join("rootfs"),
    );
}

/// A three-layer image: the base, a 512 KiB library layer, and an app layer saying `version`.
fn three_layers(version: &str) -> OciImage {
    app_image(&[
        vec![LayerOp::file("/usr/lib/libbig.so", padding_bytes(512 << 10, 4, 0))],
        vec![
            LayerOp::file("/srv/version", format!("{version}\n")),
            LayerOp::file("/srv/app.bin", padding_bytes(96 << 10, 5, version.len() as u64 + 1)),
            LayerOp::file("/srv/app.txt", version),
        ],
    ])
}

#[test]
fn a_second_release_sharing_two_layers_downloads_only_the_new_one() {
    require_root();
    crypto();
    let registry = Registry::start_plain().expect("registry");
    let one = three_layers("one");
    let two = three_layers("two-two");
    let (one_layers, two_layers) = (
        one.layer_digests().expect("layers"),
        two.layer_digests().expect("layers"),
    );
    assert_eq!(one_layers.len(), 3);
    assert_eq!(one_layers[..2], two_layers[..2], "layers 1 and 2 are shared");
    assert_ne!(one_layers[2], two_layers[2]);
    let one_digest = one.push(&registry, "drover/shared:1").expect("push 1");
    let two_digest = two.push(&registry, "drover/shared:2").expect("push 2");
    let proxy = registry.counting_proxy().expect("proxy");
    let agent = Agent::plain(&proxy.host());
    let spec = spec(r#"{"service":{}}"#);

    let (first, _) = block_on(agent.install(&reference(&proxy.host(), "drover/shared", &one_digest), &spec, "1"));
    let everything: u64 = std::iter::once(config_digest(&one))
        .chain(one_layers.iter().cloned())
        .map(|digest| blob_size(&one, &digest))
        .sum();
    assert_eq!(proxy.blob_bytes(), everything, "release 1 downloads all its blobs");
    assert_eq!(first.downloaded(), blob_size(&one, &one_digest) + everything);

    proxy.reset_counts();
    let (second, staged) = block_on(agent.install(&reference(&proxy.host(), "drover/shared", &two_digest), &spec, "2"));
    // The new layer, and the new config (its rootfs.diff_ids name the new layer); the
    // manifest is no blob, but the agent counts it.
    let new_config = config_digest(&two);
    let fetched: BTreeSet<String> = proxy.fetches().into_iter().map(|fetch| fetch.digest).collect();
    assert_eq!(fetched, BTreeSet::from([new_config.clone(), two_layers[2].clone()]));
    let new_bytes = blob_size(&two, &two_layers[2]);
    let config_bytes = blob_size(&two, &new_config);
    assert_eq!(
        proxy.blob_bytes(),
        new_bytes + config_bytes,
        "only the new layer and config"
    );
    assert_eq!(
        second.downloaded(),
        blob_size(&two, &two_digest) + new_bytes + config_bytes,
        "the agent's count agrees with the wire (plus the manifest)"
    );
    assert_eq!(
        fs::read_to_string(staged.path().join("rootfs/srv/app.txt")).expect("app"),
        "two-two"
    );
}

#[test]
fn basic_auth_over_tls_with_a_registry_ca_works_and_a_wrong_password_fails() {
    require_root();
    crypto();
    let registry = Registry::start_tls_basic("deploy", "correct horse").expect("registry");
    let image = app_image(&[vec![LayerOp::file("/srv/version", "tls\n")]]);
    let digest = image.push(&registry, "drover/private:1").expect("push");
    let host = registry.host();
    let image_reference = reference(&host, "drover/private", &digest);
    let secrets = tempfile::tempdir().expect("secrets");
    let ca_file = secrets.path().join("registry-ca.pem");
    write_secret(&ca_file, registry.ca_pem().expect("CA").as_bytes());
    let agent_with = |password: &str, ca: bool| {
        let password_file = secrets.path().join(format!("password-{}", password.len()));
        write_secret(&password_file, format!("{password}\n").as_bytes());
        let ca_line = if ca {
            format!("ca_file = \"{}\"\n", ca_file.display())
        } else {
            String::new()
        };
        Agent::new(&format!(
            "[registries.\"{host}\"]\n{ca_line}username = \"deploy\"\npassword_file = \"{}\"\n",
            password_file.display()
        ))
    };
    let spec = spec(r#"{"service":{}}"#);

    let agent = agent_with("correct horse", true);
    assert_eq!(
        agent.registry_config(&host).transport,
        drover_agent::config::RegistryTransport::Https
    );
    let (_, staged) = block_on(agent.install(&image_reference, &spec, "1"));
    assert_eq!(
        fs::read_to_string(staged.path().join("rootfs/srv/version")).expect("version"),
        "tls\n"
    );

    let wrong = agent_with("battery staple", true);
    let error = block_on(wrong.fetch(&image_reference)).expect_err("a wrong password");
    let message = error.to_string();
    assert!(matches!(error, PullError::Registry { .. }), "{message}");
    for part in [host.as_str(), image_reference.as_str()] {
        assert!(message.contains(part), "{message:?} should name {part:?}");
    }
    assert!(
        ["not authorized", "unauthorized", "401"]
            .iter()
            .any(|word| message.to_lowercase().contains(word)),
        "{message:?} should say that the registry refused the credentials"
    );
    assert!(
        !message.contains("battery staple"),
        "the password is never shown: {message}"
    );
    assert!(wrong.release_entries().is_empty(), "nothing staged");
    assert!(
        wrong.cache_entries().is_empty(),
        "nothing cached: {:?}",
        wrong.cache_entries()
    );

    // The CA file is what makes the registry's certificate trusted.
    let without_ca = agent_with("correct horse", false);
    let error = block_on(without_ca.fetch(&image_reference)).expect_err("an unknown issuer");
    let message = error.to_string();
    assert!(matches!(error, PullError::Registry { .. }), "{message}");
    assert!(
        message.contains(host.as_str()) && message.to_lowercase().contains("certificate"),
        "{message:?} should name the registry and its certificate"
    );
    assert!(without_ca.release_entries().is_empty(), "nothing staged");
}

#[test]
fn an_image_index_digest_is_refused_by_the_agent() {
    require_root();
    crypto();
    let registry = Registry::start_plain().expect("registry");
    let amd64 = app_image(&[]);
    let mut arm64 = app_image(&[vec![LayerOp::file("/arch", "arm64")]]);
    arm64.set_platform("linux", "arm64").expect("platform");
    let index = OciImage::push_index(&registry, "drover/multi:1", &[&amd64, &arm64]).expect("push index");
    let agent = Agent::plain(&registry.host());
    let index_reference = reference(&registry.host(), "drover/multi", &index);
    let error = block_on(agent.fetch(&index_reference)).expect_err("an index");
    let message = error.to_string();
    assert!(matches!(error, PullError::Refused { .. }), "{message}");
    for part in [INDEX_REFUSED, index_reference.as_str()] {
        assert!(message.contains(part), "{message:?} should say {part:?}");
    }
    assert!(agent.cache_names_of(&index).is_empty(), "the index is not cached");
    assert!(agent.release_entries().is_empty());
    // The image the index names for this host is what a release carries; it works.
    let (_, staged) = block_on(agent.install(
        &reference(
            &registry.host(),
            "drover/multi",
            &amd64.manifest_digest().expect("digest"),
        ),
        &spec(r#"{"service":{}}"#),
        "1",
    ));
    assert!(staged.path().join("rootfs/bin/app").is_file());
}
