//! What an image says, read without I/O: its manifest (which config and layers, by digest
//! and size), its config (Entrypoint, Cmd, Env, WorkingDir, User, platform), the user
//! database inside its rootfs, and what the agent records about a staged image
//! (`releases/<version>/image.json`).
//!
//! Everything here parses bytes that came from a registry, so it is strict about what it
//! needs and refuses what it cannot run with one line that says why: an image index (the
//! coordinator resolves one platform when the release is created, so a manifest digest that
//! names an index is a release made wrong), a manifest or config bigger than any sane one, a
//! digest that is not sha256, a layer type [`super::decompressor`] does not take, an image
//! for another OS or CPU.
//!
//! User resolution follows runc, with the spec on top (SPEC.md §4: the image config's User
//! unless the spec overrides it):
//! - the spec's `user` replaces the image's `User` whole; the spec's `group` replaces the
//!   group whichever user was chosen;
//! - `NAME` is looked up in the rootfs' `/etc/passwd` (systemd would look on the host,
//!   where the name means someone else or nobody), `UID` is taken as it is; `:GROUP` or
//!   `:GID` after either picks the group the same way in `/etc/group`, else the user's
//!   primary group from `/etc/passwd`, else 0 (as runc does for a uid the rootfs does not
//!   list);
//! - `root` and `0` need no entry;
//! - no user at all (neither image nor spec) runs as a dynamic user (`DynamicUser=yes`),
//!   as for tarball releases, not as root as docker would: an image that needs root says
//!   so with `user = "root"` in the spec.

use std::collections::BTreeMap;

use drover_protocol::Digest;
use drover_protocol::spec::EnvName;
use serde::{Deserialize, Serialize};

pub use drover_protocol::oci::{
    MAX_IMAGE_CONFIG_BYTES as MAX_CONFIG_BYTES, MAX_IMAGE_LAYERS as MAX_LAYERS,
    MAX_IMAGE_MANIFEST_BYTES as MAX_MANIFEST_BYTES, MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_LIST,
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};

/// What the agent asks a registry for when it fetches a manifest by digest: the image
/// manifests it runs, and the indexes it refuses with a clear message.
pub const ACCEPTED_MANIFEST_TYPES: [&str; 4] = [
    MEDIA_TYPE_OCI_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_DOCKER_LIST,
];

/// The largest `/etc/passwd` or `/etc/group` read from a rootfs.
pub const MAX_USER_DATABASE_BYTES: u64 = 4 << 20;

/// A blob an image manifest points at, checked: sha256 digest, size, media type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// The blob's media type.
    pub media_type: String,
    /// Its sha256.
    pub digest: Digest,
    /// Its exact size in bytes.
    pub size: u64,
}

/// An image manifest the agent can run: one config and its layers, bottom first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageManifest {
    /// The image config blob.
    pub config: Descriptor,
    /// The layer blobs in the order they are applied.
    pub layers: Vec<Descriptor>,
}

impl ImageManifest {
    /// Every blob the manifest names: config first, then the layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.config).chain(&self.layers)
    }

    /// The layers' sizes added up (what a pull downloads at most, apart from the config).
    pub fn layers_size(&self) -> u64 {
        self.layers
            .iter()
            .fold(0u64, |total, layer| total.saturating_add(layer.size))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: String,
    digest: String,
    size: u64,
}

/// The message for a manifest digest that names an image index.
pub const INDEX_REFUSED: &str = "release names an image index; `drover release create` resolves one platform";

/// Parses and checks an image manifest (OCI, or Docker v2 schema 2). An index or manifest
/// list, another schema, an unknown config type or layer type, a digest other than sha256
/// are refused with the reason.
pub fn parse_manifest(bytes: &[u8]) -> Result<ImageManifest, String> {
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|error| format!("the manifest is not valid JSON: {error}"))?;
    let media_type = raw.media_type.as_deref();
    if matches!(media_type, Some(MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_LIST)) || raw.manifests.is_some() {
        return Err(INDEX_REFUSED.to_owned());
    }
    if raw.schema_version != Some(2) {
        return Err(format!(
            "the manifest has schemaVersion {}; only version 2 (OCI, or Docker v2 schema 2) is supported",
            raw.schema_version
                .map_or_else(|| "(none)".to_owned(), |version| version.to_string())
        ));
    }
    if let Some(other) = media_type.filter(|kind| ![MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST].contains(kind))
    {
        return Err(format!(
            "the manifest's media type {} is not an image manifest",
            shown(other)
        ));
    }
    let config = raw
        .config
        .ok_or_else(|| "the manifest has no config: it is not an image".to_owned())?;
    if ![MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_DOCKER_CONFIG].contains(&config.media_type.as_str()) {
        return Err(format!(
            "the config media type {} is not an image config (an artifact, not a container image?)",
            shown(&config.media_type)
        ));
    }
    let config = descriptor(config, "config")?;
    if config.size > MAX_CONFIG_BYTES {
        return Err(format!(
            "the image config is {} bytes, more than the {MAX_CONFIG_BYTES} the agent reads",
            config.size
        ));
    }
    let raw_layers = raw.layers.unwrap_or_default();
    if raw_layers.len() > MAX_LAYERS {
        return Err(format!(
            "the image has {} layers, more than {MAX_LAYERS}",
            raw_layers.len()
        ));
    }
    let mut layers = Vec::with_capacity(raw_layers.len());
    for (index, layer) in raw_layers.into_iter().enumerate() {
        let what = format!("layer {}", index + 1);
        if let Err(error) = super::decompressor(&layer.media_type, std::io::empty()) {
            return Err(format!("{what}: {error}"));
        }
        layers.push(descriptor(layer, &what)?);
    }
    Ok(ImageManifest { config, layers })
}

fn descriptor(raw: RawDescriptor, what: &str) -> Result<Descriptor, String> {
    let digest = raw.digest.parse::<Digest>().map_err(|_| {
        format!(
            "{what} digest {} is not sha256:<64 hex digits>; only sha256 is supported",
            shown(&raw.digest)
        )
    })?;
    Ok(Descriptor {
        media_type: raw.media_type,
        digest,
        size: raw.size,
    })
}

/// Text from a registry made safe for a one-line message: control characters escaped,
/// at most 100 characters.
pub(crate) fn shown(text: &str) -> String {
    let mut out: String = text.chars().take(100).flat_map(char::escape_debug).collect();
    if text.chars().count() > 100 {
        out.push('…');
    }
    format!("'{out}'")
}

/// What the agent takes from an image config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, in order, as `NAME`, `VALUE` pairs.
    pub env: Vec<(String, String)>,
    /// `WorkingDir` (empty: `/`).
    pub working_dir: String,
    /// `User` (empty: none).
    pub user: String,
}

#[derive(Deserialize)]
struct RawConfigFile {
    os: Option<String>,
    architecture: Option<String>,
    config: Option<RawContainerConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawContainerConfig {
    user: Option<String>,
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
}

/// The platform name (OCI `architecture`) of the CPU this agent was built for, if known.
pub fn host_architecture() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        "x86" => Some("386"),
        "arm" => Some("arm"),
        "s390x" => Some("s390x"),
        "riscv64" => Some("riscv64"),
        _ => None,
    }
}

/// Parses an image config and checks that it is for Linux on `architecture` (when both
/// are known) and that its environment can be passed on.
pub fn parse_config(bytes: &[u8], architecture: Option<&str>) -> Result<ImageConfig, String> {
    let raw: RawConfigFile =
        serde_json::from_slice(bytes).map_err(|error| format!("the image config is not valid JSON: {error}"))?;
    if let Some(os) = raw.os.as_deref().filter(|os| *os != "linux") {
        return Err(format!("the image is for {}, not linux", shown(os)));
    }
    if let (Some(image), Some(host)) = (raw.architecture.as_deref(), architecture)
        && image != host
    {
        return Err(format!(
            "the image is for CPU {}, this host is {host}; release an image for {host}",
            shown(image)
        ));
    }
    let config = raw.config.unwrap_or(RawContainerConfig {
        user: None,
        env: None,
        entrypoint: None,
        cmd: None,
        working_dir: None,
    });
    let mut env = Vec::new();
    for entry in config.env.unwrap_or_default() {
        let (name, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        if name.parse::<EnvName>().is_err() {
            return Err(format!(
                "the image sets environment variable {}, which is not a name systemd passes on",
                shown(name)
            ));
        }
        if value.contains('\0') {
            return Err(format!("the image's environment variable {name} holds a NUL byte"));
        }
        env.retain(|(existing, _): &(String, String)| existing != name);
        env.push((name.to_owned(), value.to_owned()));
    }
    Ok(ImageConfig {
        entrypoint: config.entrypoint.unwrap_or_default(),
        cmd: config.cmd.unwrap_or_default(),
        env,
        working_dir: config.working_dir.unwrap_or_default(),
        user: config.user.unwrap_or_default(),
    })
}

/// One `/etc/passwd` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    /// User name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// The well-formed entries of an `/etc/passwd` (`name:password:uid:gid:gecos:home:shell`);
/// comments and malformed lines are skipped, as glibc skips them.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 7 || fields[0].is_empty() || fields[0].starts_with('#') {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_owned(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: fields[5].to_owned(),
            })
        })
        .collect()
}

/// Group names and ids of an `/etc/group` (`name:password:gid:members`).
pub fn parse_group(text: &str) -> BTreeMap<String, u32> {
    let mut groups = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 || fields[0].is_empty() || fields[0].starts_with('#') {
            continue;
        }
        if let Ok(gid) = fields[2].parse() {
            // The first entry of a name wins, as getgrnam finds it.
            groups.entry(fields[0].to_owned()).or_insert(gid);
        }
    }
    groups
}

/// Who runs an image's process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunAs {
    /// Neither the image nor the spec names a user: `DynamicUser=yes`.
    Dynamic,
    /// Numeric ids resolved inside the rootfs (`User=`, `Group=` as numbers).
    Ids {
        /// User id.
        uid: u32,
        /// Group id.
        gid: u32,
        /// The home directory the rootfs gives the user (`/` when it lists none).
        home: String,
    },
}

/// Resolves who runs the image: `spec_user` (and `spec_group`) over the image config's
/// `image_user`, names looked up in the rootfs' `passwd` and `group` texts; see the module
/// documentation for the rules.
pub fn resolve_user(
    image_user: &str,
    spec_user: Option<&str>,
    spec_group: Option<&str>,
    passwd: &str,
    group: &str,
) -> Result<RunAs, String> {
    let chosen = spec_user.or(Some(image_user).filter(|user| !user.is_empty()));
    let Some(chosen) = chosen else {
        return match spec_group {
            Some(group) => Err(format!(
                "the spec sets group {group} but neither it nor the image names a user; an image without a user runs as a dynamic user, so name the user too"
            )),
            None => Ok(RunAs::Dynamic),
        };
    };
    let (user_part, group_part) = match chosen.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (chosen, None),
    };
    let users = parse_passwd(passwd);
    let entry = if let Ok(uid) = user_part.parse::<u32>() {
        users.into_iter().find(|entry| entry.uid == uid).or(Some(PasswdEntry {
            name: String::new(),
            uid,
            gid: 0,
            home: "/".to_owned(),
        }))
    } else {
        users.into_iter().find(|entry| entry.name == user_part)
    };
    let entry = match (entry, user_part) {
        (Some(entry), _) => entry,
        (None, "root") => PasswdEntry {
            name: "root".to_owned(),
            uid: 0,
            gid: 0,
            home: "/root".to_owned(),
        },
        (None, _) => {
            return Err(format!("user {} is not in the image's /etc/passwd", shown(user_part)));
        }
    };
    let groups = parse_group(group);
    let lookup_group = |name: &str| -> Result<u32, String> {
        if let Ok(gid) = name.parse::<u32>() {
            return Ok(gid);
        }
        match groups.get(name) {
            Some(gid) => Ok(*gid),
            None if name == "root" => Ok(0),
            None => Err(format!("group {} is not in the image's /etc/group", shown(name))),
        }
    };
    let mut gid = entry.gid;
    // A spec user is a plain name, so a group part comes from the image's `user:group`.
    if let Some(group) = group_part {
        gid = lookup_group(group)?;
    }
    if let Some(group) = spec_group {
        gid = lookup_group(group)?;
    }
    if entry.uid == u32::MAX || gid == u32::MAX {
        return Err("user or group id 4294967295 is not a valid id".to_owned());
    }
    let home = if entry.home.starts_with('/') {
        entry.home
    } else {
        "/".to_owned()
    };
    Ok(RunAs::Ids {
        uid: entry.uid,
        gid,
        home,
    })
}

/// How the unit runs a staged image: everything that needed the rootfs to decide, so
/// that rendering the unit stays pure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRun {
    /// Program (absolute inside the rootfs, normalized) and arguments: the spec's command,
    /// else the image's Entrypoint followed by its Cmd.
    pub exec: Vec<String>,
    /// The image's environment, in order; the spec's environment goes on top.
    pub environment: Vec<(String, String)>,
    /// Absolute, normalized, inside the rootfs.
    pub working_directory: String,
    /// Who runs it.
    pub user: RunAs,
}

/// `releases/<version>/image.json`: what the agent made of an image when it staged it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    /// `registry/repository@sha256:...`.
    pub reference: String,
    /// The manifest's digest.
    pub manifest: Digest,
    /// The config blob's digest.
    pub config: Digest,
    /// The layer blobs' digests, bottom first.
    pub layers: Vec<Digest>,
    /// The image config as read (before the spec's overrides).
    pub image: ImageConfig,
    /// How the unit runs it.
    pub run: ImageRun,
}

impl ImageRecord {
    /// The file name beside `rootfs/`.
    pub const FILE: &'static str = "image.json";

    /// Every cache blob the release came from: manifest, config and layers (kept by the
    /// cache's garbage collection while the release is on disk).
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.manifest, &self.config].into_iter().chain(&self.layers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn manifest_json(media_type: Option<&str>, config_type: &str, layer_type: &str) -> String {
        let media = media_type.map_or(String::new(), |kind| format!(r#""mediaType":"{kind}","#));
        format!(
            r#"{{"schemaVersion":2,{media}"config":{{"mediaType":"{config_type}","digest":"{}","size":100}},
               "layers":[{{"mediaType":"{layer_type}","digest":"{}","size":1000}},
                         {{"mediaType":"{layer_type}","digest":"{}","size":2000,"urls":["https://elsewhere.example/x"]}}]}}"#,
            digest(1),
            digest(2),
            digest(3)
        )
    }

    #[test]
    fn oci_and_docker_manifests_parse() {
        for (media, config, layer) in [
            (
                Some(MEDIA_TYPE_OCI_MANIFEST),
                MEDIA_TYPE_OCI_CONFIG,
                super::super::MEDIA_TYPE_LAYER_TAR_GZIP,
            ),
            (None, MEDIA_TYPE_OCI_CONFIG, super::super::MEDIA_TYPE_LAYER_TAR),
            (
                Some(MEDIA_TYPE_DOCKER_MANIFEST),
                MEDIA_TYPE_DOCKER_CONFIG,
                super::super::MEDIA_TYPE_DOCKER_LAYER_GZIP,
            ),
        ] {
            let manifest = parse_manifest(manifest_json(media, config, layer).as_bytes()).expect("manifest");
            assert_eq!(manifest.config.digest.as_str(), digest(1));
            assert_eq!(manifest.layers.len(), 2);
            assert_eq!(manifest.layers[1].size, 2000);
            assert_eq!(manifest.layers_size(), 3000);
            assert_eq!(manifest.blobs().count(), 3);
        }
    }

    #[test]
    fn an_index_is_refused_with_the_reason() {
        for json in [
            format!(r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_OCI_INDEX}","manifests":[]}}"#),
            format!(r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_DOCKER_LIST}","manifests":[]}}"#),
            r#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"y","size":1}]}"#.to_owned(),
        ] {
            assert_eq!(parse_manifest(json.as_bytes()), Err(INDEX_REFUSED.to_owned()));
        }
    }

    #[test]
    fn manifests_the_agent_cannot_run_are_refused() {
        let oci = MEDIA_TYPE_OCI_CONFIG;
        let gzip = super::super::MEDIA_TYPE_LAYER_TAR_GZIP;
        let cases = [
            (
                r#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#.to_owned(),
                "schemaVersion 1",
            ),
            (
                manifest_json(Some("application/vnd.example+json"), oci, gzip),
                "not an image manifest",
            ),
            (
                manifest_json(None, "application/vnd.cncf.helm.config.v1+json", gzip),
                "not an image config",
            ),
            (
                manifest_json(None, oci, super::super::MEDIA_TYPE_LAYER_TAR_ZSTD),
                "zstd",
            ),
            (manifest_json(None, oci, "application/octet-stream"), "not a layer type"),
            (
                manifest_json(None, oci, gzip).replace(&digest(2), &format!("sha512:{}", "ab".repeat(64))),
                "only sha256",
            ),
            (
                manifest_json(None, oci, gzip).replace(r#""size":100"#, r#""size":99999999999"#),
                "more than",
            ),
            (r#"{"schemaVersion":2,"layers":[]}"#.to_owned(), "no config"),
            ("not json".to_owned(), "not valid JSON"),
        ];
        for (json, expected) in cases {
            let error = parse_manifest(json.as_bytes()).expect_err(expected);
            assert!(error.contains(expected), "{error:?} should say {expected:?}");
        }
        let many: Vec<String> = (0..=MAX_LAYERS)
            .map(|_| format!(r#"{{"mediaType":"{gzip}","digest":"{}","size":1}}"#, digest(9)))
            .collect();
        let json = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{oci}","digest":"{}","size":1}},"layers":[{}]}}"#,
            digest(1),
            many.join(",")
        );
        assert!(parse_manifest(json.as_bytes()).is_err_and(|error| error.contains("layers, more than")));
    }

    #[test]
    fn config_gives_entrypoint_cmd_env_workdir_user() {
        let json = r#"{"architecture":"amd64","os":"linux","config":{"User":"app:staff","Env":["PATH=/usr/bin:/bin","A=1=2","EMPTY=","A=3"],
            "Entrypoint":["/docker-entrypoint.sh"],"Cmd":["nginx","-g","daemon off;"],"WorkingDir":"/srv","Labels":{"x":"y"}},
            "rootfs":{"type":"layers","diff_ids":[]},"history":[]}"#;
        let config = parse_config(json.as_bytes(), Some("amd64")).expect("config");
        assert_eq!(config.entrypoint, ["/docker-entrypoint.sh"]);
        assert_eq!(config.cmd, ["nginx", "-g", "daemon off;"]);
        assert_eq!(
            config.env,
            [
                ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
                ("EMPTY".to_owned(), String::new()),
                ("A".to_owned(), "3".to_owned()),
            ]
        );
        assert_eq!(config.working_dir, "/srv");
        assert_eq!(config.user, "app:staff");
        // Docker writes nulls; a config without `config` is an image with nothing set.
        let config = parse_config(br#"{"config":{"Entrypoint":null,"Cmd":null,"Env":null}}"#, None).expect("nulls");
        assert_eq!(config, ImageConfig::default());
        assert_eq!(parse_config(b"{}", None).expect("empty"), ImageConfig::default());
    }

    #[test]
    fn configs_for_other_platforms_or_with_bad_env_are_refused() {
        for (json, expected) in [
            (r#"{"os":"windows"}"#, "not linux"),
            (r#"{"os":"linux","architecture":"arm64"}"#, "this host is amd64"),
            (r#"{"config":{"Env":["BAD-NAME=x"]}}"#, "not a name"),
            (r#"{"config":{"Env":["NUL=a\u0000b"]}}"#, "NUL"),
            ("[", "not valid JSON"),
        ] {
            let error = parse_config(json.as_bytes(), Some("amd64")).expect_err(expected);
            assert!(error.contains(expected), "{error:?} should say {expected:?}");
        }
        assert!(
            parse_config(br#"{"architecture":"arm64"}"#, None).is_ok(),
            "unknown host: no check"
        );
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        broken line\n\
        app:x:1000:1001:App:/home/app:/bin/sh\n\
        nohome:x:1002:1002::relative:/bin/sh\n\
        app:x:2000:2000:second app:/other:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app\napp:x:1001:\nwww-data:x:33:\nstaff:x:51:\n";

    fn ids(uid: u32, gid: u32, home: &str) -> RunAs {
        RunAs::Ids {
            uid,
            gid,
            home: home.to_owned(),
        }
    }

    fn resolve(image: &str, user: Option<&str>, group: Option<&str>) -> Result<RunAs, String> {
        resolve_user(image, user, group, PASSWD, GROUP)
    }

    #[test]
    fn image_user_names_are_resolved_inside_the_rootfs() {
        assert_eq!(resolve("app", None, None), Ok(ids(1000, 1001, "/home/app")));
        assert_eq!(resolve("app:staff", None, None), Ok(ids(1000, 50, "/home/app")));
        assert_eq!(resolve("app:33", None, None), Ok(ids(1000, 33, "/home/app")));
        assert_eq!(resolve("1000", None, None), Ok(ids(1000, 1001, "/home/app")));
        assert_eq!(resolve("1000:1000", None, None), Ok(ids(1000, 1000, "/home/app")));
        // A uid the rootfs does not list: group 0 and home `/`, as runc does.
        assert_eq!(resolve("4242", None, None), Ok(ids(4242, 0, "/")));
        assert_eq!(resolve("4242:www-data", None, None), Ok(ids(4242, 33, "/")));
        assert_eq!(resolve("root", None, None), Ok(ids(0, 0, "/root")));
        assert_eq!(resolve("nohome", None, None), Ok(ids(1002, 1002, "/")));
        assert_eq!(resolve_user("root", None, None, "", ""), Ok(ids(0, 0, "/root")));
        assert_eq!(resolve_user("0:root", None, None, "", ""), Ok(ids(0, 0, "/")));
    }

    #[test]
    fn the_spec_user_and_group_override_the_image() {
        assert_eq!(resolve("app:staff", Some("root"), None), Ok(ids(0, 0, "/root")));
        assert_eq!(resolve("", Some("app"), None), Ok(ids(1000, 1001, "/home/app")));
        assert_eq!(
            resolve("root", Some("app"), Some("www-data")),
            Ok(ids(1000, 33, "/home/app"))
        );
        assert_eq!(resolve("app", None, Some("staff")), Ok(ids(1000, 50, "/home/app")));
        assert_eq!(resolve("app:staff", None, Some("root")), Ok(ids(1000, 0, "/home/app")));
    }

    #[test]
    fn no_user_anywhere_means_a_dynamic_user() {
        assert_eq!(resolve("", None, None), Ok(RunAs::Dynamic));
        let error = resolve("", None, Some("staff")).expect_err("group without a user");
        assert!(error.contains("name the user too"), "{error}");
    }

    #[test]
    fn unknown_names_are_errors_not_host_users() {
        for (image, user, group, expected) in [
            ("nginx", None, None, "user 'nginx' is not in the image's /etc/passwd"),
            (
                "app:wheel",
                None,
                None,
                "group 'wheel' is not in the image's /etc/group",
            ),
            ("", Some("postgres"), None, "user 'postgres'"),
            ("app", None, Some("docker"), "group 'docker'"),
            ("4294967295", None, None, "not a valid id"),
        ] {
            let error = resolve(image, user, group).expect_err(expected);
            assert!(error.contains(expected), "{error:?} should say {expected:?}");
        }
    }

    #[test]
    fn user_databases_skip_malformed_lines() {
        let users = parse_passwd(PASSWD);
        assert_eq!(users.len(), 4);
        assert_eq!(users[1].name, "app");
        let groups = parse_group(GROUP);
        assert_eq!(groups.get("staff"), Some(&50), "the first entry of a name wins");
        assert_eq!(groups.len(), 4);
    }

    #[test]
    fn image_records_round_trip_and_list_their_blobs() {
        let record = ImageRecord {
            reference: format!("127.0.0.1:5000/web@{}", digest(7)),
            manifest: digest(7).parse().expect("digest"),
            config: digest(1).parse().expect("digest"),
            layers: vec![digest(2).parse().expect("digest"), digest(3).parse().expect("digest")],
            image: ImageConfig::default(),
            run: ImageRun {
                exec: vec!["/bin/web".into()],
                environment: vec![("A".into(), "1".into())],
                working_directory: "/".into(),
                user: ids(1, 2, "/"),
            },
        };
        let json = serde_json::to_vec(&record).expect("serializes");
        let again: ImageRecord = serde_json::from_slice(&json).expect("parses");
        assert_eq!(again, record);
        let blobs: Vec<&str> = record.blobs().map(Digest::as_str).collect();
        assert_eq!(blobs, [digest(7), digest(1), digest(2), digest(3)]);
    }
}
