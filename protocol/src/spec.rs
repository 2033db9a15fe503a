//! The app spec: how an app runs on a host. Operators write it as `drover.toml` next to
//! their code; a release snapshots it, and manifests carry it to hosts as JSON.
//!
//! Every field that ends up in a path, a unit file or a command line is a validated type,
//! so that a spec which deserializes is one the agent can act on without re-checking.
//! Unknown fields are refused: a misspelt `sandbox` key must be an error, not a silently
//! unsandboxed service.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::NameError;
use crate::names::validated_string;
use crate::time::Duration;

/// How an app runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// The main process.
    pub service: ServiceSpec,
    /// Resource limits (systemd `MemoryMax=`, `CPUQuota=`, `TasksMax=`).
    #[serde(default, skip_serializing_if = "Resources::is_unset")]
    pub resources: Resources,
    /// Sandboxing of the service unit.
    #[serde(default)]
    pub sandbox: Sandbox,
    /// Files written into the release directory before it starts (for an OCI release:
    /// beside the image's root, and bound read-only into it at `/<path>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_files: Vec<ConfigFile>,
    /// How the agent decides the release is healthy.
    #[serde(default)]
    pub health: Health,
    /// Commands run around the switch to a new release.
    #[serde(default, skip_serializing_if = "Hooks::is_unset")]
    pub hooks: Hooks,
    /// How many releases to keep on disk, the running one included (2 to 32).
    #[serde(default = "default_keep_releases")]
    pub keep_releases: KeepReleases,
}

/// The service's process and how systemd runs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Program and arguments. For a tarball release it is required, and a relative program
    /// path is inside the release directory. For an OCI release it is optional: when set it
    /// replaces the image's Entrypoint and Cmd entirely, and paths are inside the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    /// The user to run as; absent means a dynamic, unprivileged user (`DynamicUser=yes`).
    /// For an OCI release it is a user of the image (its `/etc/passwd`) and replaces the
    /// image config's `User`; absent, the image's `User` applies, and only an image without
    /// one runs as a dynamic user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UnixName>,
    /// The group to run as (for an OCI release: a group of the image's `/etc/group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<UnixName>,
    /// Working directory, relative to the release directory (default: the release root).
    /// For an OCI release it is relative to the image's root and replaces its `WorkingDir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<RelativePath>,
    /// Environment variables (for an OCI release: on top of the image's `Env`). A name
    /// set twice is refused ([`unique_environment`]).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_environment"
    )]
    pub environment: BTreeMap<EnvName, String>,
    /// When systemd restarts the process.
    #[serde(default)]
    pub restart: RestartMode,
    /// How long systemd waits for the process to stop before killing it.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: Duration,
}

/// systemd's `Restart=` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    /// Restart whenever the process exits.
    Always,
    /// Restart when the process fails (the default).
    #[default]
    OnFailure,
    /// Never restart.
    No,
}

/// Resource limits; absent fields are unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// `MemoryMax=`, e.g. `"256M"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<ByteSize>,
    /// `CPUQuota=` in percent of one core (1 to 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota_percent: Option<u16>,
    /// `TasksMax=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_max: Option<u32>,
}

impl Resources {
    fn is_unset(&self) -> bool {
        self == &Resources::default()
    }
}

/// How tightly systemd confines the service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sandbox {
    /// The preset of systemd hardening options.
    #[serde(default)]
    pub level: SandboxLevel,
    /// Absolute paths the service may write to despite `ProtectSystem=strict` (for an OCI
    /// release, paths inside the image).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_write_paths: Vec<AbsolutePath>,
    /// Host paths bind-mounted read-write into the service's view (systemd `BindPaths=`):
    /// `"SOURCE"` or `"SOURCE:TARGET"`. For an OCI release the target is inside the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bind_paths: Vec<BindPath>,
    /// Host paths bind-mounted read-only (systemd `BindReadOnlyPaths=`), written as
    /// [`Sandbox::bind_paths`] are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bind_read_only_paths: Vec<BindPath>,
    /// Keep setuid/setgid bits found in the artifact (stripped by default).
    #[serde(default)]
    pub allow_setuid: bool,
}

/// Presets of systemd sandboxing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxLevel {
    /// `ProtectSystem=strict`, `ProtectHome`, `PrivateTmp`, `NoNewPrivileges` and more (the default).
    #[default]
    Strict,
    /// `ProtectSystem=full`, `PrivateTmp`, `NoNewPrivileges`.
    Basic,
    /// No sandboxing options at all; for services that manage the host itself.
    None,
}

/// A file the agent writes into the release directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where, relative to the release directory.
    pub path: RelativePath,
    /// The file's contents.
    pub content: String,
    /// The file's mode, octal text such as `"0640"` (default `0644`).
    #[serde(default = "default_file_mode")]
    pub mode: FileMode,
}

/// Health checking of a newly started release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// How long the release has to become healthy before it is rolled back.
    #[serde(default = "default_grace_period")]
    pub grace_period: Duration,
    /// Time between check rounds.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// Consecutive passing rounds needed to call the release healthy.
    #[serde(default = "default_successes")]
    pub successes: u32,
    /// The checks; every one must pass in a round. The unit-state check always applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<HealthCheck>,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            grace_period: default_grace_period(),
            interval: default_interval(),
            successes: default_successes(),
            checks: Vec::new(),
        }
    }
}

/// One health check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum HealthCheck {
    /// An HTTP GET that must answer with `status` (default 200).
    Http {
        /// `http://` URL, normally on 127.0.0.1.
        url: HealthUrl,
        /// Expected status code.
        #[serde(default = "default_http_status")]
        status: u16,
        /// Per-attempt timeout.
        #[serde(default = "default_check_timeout")]
        timeout: Duration,
    },
    /// A TCP connect that must succeed.
    Tcp {
        /// `HOST:PORT`.
        address: TcpAddress,
        /// Per-attempt timeout.
        #[serde(default = "default_check_timeout")]
        timeout: Duration,
    },
    /// A command that must exit 0.
    Command {
        /// Program and arguments, run from the release directory.
        command: Command,
        /// Per-attempt timeout.
        #[serde(default = "default_check_timeout")]
        timeout: Duration,
    },
}

/// Lifecycle hooks, run from the new release directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Before the new release is started; failure aborts the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_start: Option<Hook>,
    /// After the new release started; failure counts as unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_start: Option<Hook>,
}

impl Hooks {
    fn is_unset(&self) -> bool {
        self == &Hooks::default()
    }
}

/// A hook command with its timeout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// Program and arguments.
    pub command: Command,
    /// Killed and failed after this long.
    #[serde(default = "default_hook_timeout")]
    pub timeout: Duration,
}

fn default_keep_releases() -> KeepReleases {
    KeepReleases(3)
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_grace_period() -> Duration {
    Duration::from_secs(30)
}
fn default_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_successes() -> u32 {
    2
}
fn default_http_status() -> u16 {
    200
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_hook_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_file_mode() -> FileMode {
    FileMode(0o644)
}

/// The largest app spec, as the JSON a manifest carries. A manifest holds up to
/// [`crate::manifest::MAX_APPS`] of them and must stay under
/// [`crate::manifest::MAX_MANIFEST_BYTES`] once signed (base64 adds a third), so one spec
/// may take at most a fifth of it; the coordinator checks the whole signed manifest too.
pub const MAX_SPEC_BYTES: usize = 192 * 1024;

/// Why a spec cannot run anywhere: every problem found, one per line. The coordinator
/// refuses such a release at `drover release create` and the agent refuses a manifest
/// carrying one, with this same text, because both run [`AppSpec::check`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.join("; "))]
pub struct SpecError {
    /// What is wrong, one sentence each.
    pub problems: Vec<String>,
}

/// The artifact kind a spec is checked for: a tarball release must name its command,
/// an image brings its own Entrypoint and Cmd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    /// A tar.gz of the release directory.
    Tarball,
    /// An OCI image.
    Image,
}

/// Why a tarball release needs `service.command`.
pub const TARBALL_NEEDS_COMMAND: &str = "a tarball release needs service.command in its spec (what to run from the release directory); only an image release may leave it out and run the image's Entrypoint and Cmd";

impl AppSpec {
    /// The rules serde's field types cannot express, for a release of `kind`: its size as
    /// JSON, the service program as systemd's `ExecStart=` needs it, environment values a
    /// process environment can carry, and limits systemd accepts. A spec that passes is
    /// one the agent can render and run; see [`SpecError`].
    pub fn check(&self, kind: ArtifactKind) -> Result<(), SpecError> {
        let mut problems = Vec::new();
        let size = serde_json::to_vec(self).map_or(usize::MAX, |json| json.len());
        if size > MAX_SPEC_BYTES {
            problems.push(format!(
                "the spec is {size} bytes as JSON, over the limit of {MAX_SPEC_BYTES} bytes (config_files content counts; ship large files in the artifact)"
            ));
        }
        match (&self.service.command, kind) {
            (None, ArtifactKind::Tarball) => problems.push(TARBALL_NEEDS_COMMAND.to_owned()),
            (Some(command), _) => {
                let program = &command.argv()[0];
                let relative = program.strip_prefix('/').unwrap_or(program);
                if relative
                    .split('/')
                    .any(|part| part.is_empty() || part == "." || part == "..")
                {
                    problems.push(format!(
                        "[service] command: program {program:?} must be a normalized path (no '.', '..' or empty parts), as systemd's ExecStart= requires"
                    ));
                }
            }
            (None, ArtifactKind::Image) => {}
        }
        for (name, value) in &self.service.environment {
            if value.contains('\0') {
                problems.push(format!(
                    "[service.environment] {name} holds a NUL byte, which no process environment can carry"
                ));
            }
        }
        if self.resources.memory_max.is_some_and(|memory| memory.bytes() == 0) {
            problems
                .push("[resources] memory_max = 0 is not a limit systemd accepts; leave it out for no limit".into());
        }
        if let Some(percent) = self.resources.cpu_quota_percent
            && !(1..=10_000).contains(&percent)
        {
            problems.push(format!(
                "[resources] cpu_quota_percent = {percent}: it must be 1 to 10000 (percent of one core); leave it out for no limit"
            ));
        }
        if self.resources.tasks_max == Some(0) {
            problems.push("[resources] tasks_max = 0 is not a limit systemd accepts; leave it out for no limit".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SpecError { problems })
        }
    }
}

validated_string!(
    /// An `http://` health check URL: a host (and optional port), no user name, no spaces
    /// or control characters. The agent sends exactly one HTTP/1.1 GET to it, built from
    /// [`HealthUrl::target`], so nothing in it can split the request.
    HealthUrl,
    check_health_url
);

fn check_health_url(text: &str) -> Result<(), NameError> {
    HttpTarget::parse(text)
        .map(|_| ())
        .map_err(|why| NameError::new("health URL", text, why))
}

impl HealthUrl {
    /// Where to connect and what to ask for.
    pub fn target(&self) -> HttpTarget {
        HttpTarget::parse(self.as_str()).expect("a HealthUrl was validated by HttpTarget::parse")
    }
}

/// Where an `http://` health URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// `HOST:PORT` to connect to (IPv6 literals keep their brackets).
    pub connect: String,
    /// The `Host` header: the URL's authority as written.
    pub host: String,
    /// The request target: path and query, `/` when empty.
    pub path: String,
}

impl HttpTarget {
    /// Splits an `http://` URL; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<HttpTarget, &'static str> {
        if url.len() > 2048 {
            return Err("at most 2048 bytes");
        }
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err("an http:// URL (https is not supported; check the app over plain http on loopback)");
            }
            _ => return Err("a URL starting with http://"),
        };
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("an http:// URL without spaces or control characters");
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.is_empty() || authority.contains('@') {
            return Err("an http:// URL with a host and no user name");
        }
        let has_port = match authority.rfind(']') {
            Some(bracket) => authority[bracket + 1..].starts_with(':'),
            None => authority.contains(':'),
        };
        let connect = if has_port {
            let (_, port) = authority.rsplit_once(':').unwrap_or_default();
            port.parse::<u16>()
                .map_err(|_| "an http:// URL with a port from 0 to 65535")?;
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let path = match target {
            "" => "/".to_owned(),
            query if query.starts_with('?') => format!("/{query}"),
            path => path.to_owned(),
        };
        Ok(HttpTarget {
            connect,
            host: authority.to_owned(),
            path,
        })
    }
}

validated_string!(
    /// A TCP health check's `HOST:PORT` (an IPv6 literal in brackets), without spaces or
    /// control characters, at most 512 bytes.
    TcpAddress,
    check_tcp_address
);

fn check_tcp_address(text: &str) -> Result<(), NameError> {
    let ok = text.len() <= 512
        && !text
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '/' || c == '@')
        && text.rsplit_once(':').is_some_and(|(host, port)| {
            let host_ok = match host.strip_prefix('[') {
                Some(inner) => inner
                    .strip_suffix(']')
                    .is_some_and(|inner| !inner.is_empty() && !inner.contains(['[', ']'])),
                None => !host.is_empty() && !host.contains([':', '[', ']']),
            };
            host_ok && port.parse::<u16>().is_ok()
        });
    if ok {
        Ok(())
    } else {
        Err(NameError::new(
            "TCP address",
            text,
            "HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080",
        ))
    }
}

validated_string!(
    /// A path inside the release directory: not absolute, no `..` or empty components,
    /// no NUL or control characters, at most 1024 bytes.
    RelativePath,
    check_relative_path
);

fn check_relative_path(text: &str) -> Result<(), NameError> {
    let ok = !text.is_empty()
        && text.len() <= 1024
        && !text.starts_with('/')
        && !text.chars().any(char::is_control)
        && text.split('/').all(|part| !part.is_empty() && part != "..");
    if ok {
        Ok(())
    } else {
        Err(NameError::new(
            "relative path",
            text,
            "a path inside the release: no leading '/', no '..' or empty parts",
        ))
    }
}

validated_string!(
    /// An absolute path on the host: starts with `/`, no `..` components, no control
    /// characters, at most 1024 bytes.
    AbsolutePath,
    check_absolute_path
);

fn check_absolute_path(text: &str) -> Result<(), NameError> {
    let ok = text.starts_with('/')
        && text.len() <= 1024
        && !text.chars().any(char::is_control)
        && text.split('/').skip(1).all(|part| part != "..");
    if ok {
        Ok(())
    } else {
        Err(NameError::new(
            "absolute path",
            text,
            "a path starting with '/' without '..' parts",
        ))
    }
}

validated_string!(
    /// A bind mount: `SOURCE` (mounted at the same path) or `SOURCE:TARGET`. Both are
    /// absolute, normalized paths (no `.`, `..` or empty parts, no trailing `/`, not `/`
    /// itself) of at most 1024 bytes, without whitespace, control characters, quotes,
    /// backslashes, `%` or `:`, so that systemd's `BindPaths=` reads them exactly as
    /// written: no quoting, no specifier, and no `:` but the one separator.
    BindPath,
    check_bind_path
);

impl BindPath {
    /// The host path.
    pub fn source(&self) -> &str {
        self.as_str()
            .split_once(':')
            .map_or(self.as_str(), |(source, _)| source)
    }

    /// Where it appears in the service's view (the source path when not given).
    pub fn target(&self) -> &str {
        self.as_str()
            .split_once(':')
            .map_or(self.as_str(), |(_, target)| target)
    }
}

fn check_bind_path(text: &str) -> Result<(), NameError> {
    let normalized = |path: &str| {
        (2..=1024).contains(&path.len())
            && path.starts_with('/')
            && path[1..]
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..")
            && !path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '%' | ':' | '"' | '\'' | '\\'))
    };
    let ok = match text.split_once(':') {
        Some((source, target)) => normalized(source) && normalized(target),
        None => normalized(text),
    };
    if ok {
        Ok(())
    } else {
        Err(NameError::new(
            "bind path",
            text,
            "SOURCE or SOURCE:TARGET, absolute normalized paths other than '/' without spaces, quotes, '\\', '%' or ':'",
        ))
    }
}

validated_string!(
    /// A user or group name: `[a-z_][a-z0-9_-]{0,31}`.
    UnixName,
    check_unix_name
);

fn check_unix_name(text: &str) -> Result<(), NameError> {
    let ok = (1..=32).contains(&text.len())
        && text.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError::new(
            "user or group name",
            text,
            "1 to 32 characters of a-z, 0-9, '_' and '-', starting with a letter or '_'",
        ))
    }
}

/// Deserializes `[service.environment]`, refusing a variable set twice: JSON parsers keep
/// the last value silently (serde_json does) or the first, so two readers of one spec
/// could run the app with different values, and the operator's review sees one of them.
/// The same visitor pattern refuses an app listed twice in a manifest. The coordinator and
/// agents both parse specs through this, from TOML and JSON (TOML refuses a repeated key
/// itself too).
fn unique_environment<'de, D>(deserializer: D) -> Result<BTreeMap<EnvName, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct UniqueEnvironment;
    impl<'de> serde::de::Visitor<'de> for UniqueEnvironment {
        type Value = BTreeMap<EnvName, String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of environment variable names to values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = BTreeMap::new();
            while let Some((name, value)) = access.next_entry::<EnvName, String>()? {
                if map.contains_key(&name) {
                    return Err(serde::de::Error::custom(format!(
                        "[service.environment] {name} is set twice; set each variable once"
                    )));
                }
                map.insert(name, value);
            }
            Ok(map)
        }
    }
    deserializer.deserialize_map(UniqueEnvironment)
}

validated_string!(
    /// An environment variable name: `[A-Za-z_][A-Za-z0-9_]{0,127}`.
    EnvName,
    check_env_name
);

fn check_env_name(text: &str) -> Result<(), NameError> {
    let ok = (1..=128).contains(&text.len())
        && text
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NameError::new(
            "environment variable name",
            text,
            "letters, digits and '_', not starting with a digit",
        ))
    }
}

/// A command line: a non-empty program without control characters followed by
/// arguments, no NUL bytes, at most 256 arguments of 4096 bytes each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Command(Vec<String>);

impl Command {
    /// The program followed by its arguments.
    pub fn argv(&self) -> &[String] {
        &self.0
    }
}

impl TryFrom<Vec<String>> for Command {
    type Error = NameError;
    fn try_from(argv: Vec<String>) -> Result<Command, NameError> {
        let ok = argv
            .first()
            .is_some_and(|program| !program.is_empty() && !program.chars().any(char::is_control))
            && argv.len() <= 256
            && argv.iter().all(|arg| arg.len() <= 4096 && !arg.contains('\0'));
        if ok {
            Ok(Command(argv))
        } else {
            let shown = argv.first().map_or("", String::as_str);
            Err(NameError::new(
                "command",
                shown,
                "a non-empty program without control characters and up to 256 arguments without NUL bytes",
            ))
        }
    }
}

impl From<Command> for Vec<String> {
    fn from(value: Command) -> Vec<String> {
        value.0
    }
}

/// A size in bytes, written as a number with an optional `K`, `M`, `G` or `T` suffix
/// (powers of 1024, as systemd reads them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ByteSize(u64);

impl ByteSize {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = NameError;
    fn from_str(text: &str) -> Result<ByteSize, NameError> {
        let error = || {
            NameError::new(
                "size",
                text,
                "a whole number with an optional K, M, G or T suffix, e.g. 256M",
            )
        };
        let (digits, shift) = match text.as_bytes().last() {
            Some(b'K') => (&text[..text.len() - 1], 10),
            Some(b'M') => (&text[..text.len() - 1], 20),
            Some(b'G') => (&text[..text.len() - 1], 30),
            Some(b'T') => (&text[..text.len() - 1], 40),
            _ => (text, 0),
        };
        if digits.is_empty() || digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(error());
        }
        let amount: u64 = digits.parse().map_err(|_| error())?;
        amount.checked_mul(1u64 << shift).map(ByteSize).ok_or_else(error)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if self.0 != 0 && self.0.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{suffix}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl TryFrom<String> for ByteSize {
    type Error = NameError;
    fn try_from(text: String) -> Result<ByteSize, NameError> {
        text.parse()
    }
}

impl From<ByteSize> for String {
    fn from(value: ByteSize) -> String {
        value.to_string()
    }
}

/// A file mode, written as octal text (`"0640"`); only permission bits, no setuid/setgid/sticky.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileMode(u32);

impl FileMode {
    /// The permission bits.
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl TryFrom<String> for FileMode {
    type Error = NameError;
    fn try_from(text: String) -> Result<FileMode, NameError> {
        let error = || {
            NameError::new(
                "file mode",
                &text,
                "octal permission bits such as \"0640\" (at most 0777)",
            )
        };
        if text.is_empty() || text.len() > 4 {
            return Err(error());
        }
        match u32::from_str_radix(&text, 8) {
            Ok(bits) if bits <= 0o777 => Ok(FileMode(bits)),
            _ => Err(error()),
        }
    }
}

impl From<FileMode> for String {
    fn from(value: FileMode) -> String {
        format!("{:04o}", value.0)
    }
}

/// How many releases an app keeps on disk: 2 (the running one and one to roll back to) to 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct KeepReleases(u32);

impl KeepReleases {
    /// The count.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for KeepReleases {
    type Error = NameError;
    fn try_from(count: u32) -> Result<KeepReleases, NameError> {
        if (2..=32).contains(&count) {
            Ok(KeepReleases(count))
        } else {
            Err(NameError::new(
                "keep_releases",
                &count.to_string(),
                "2 to 32 (the running release and at least one to roll back to)",
            ))
        }
    }
}

impl From<KeepReleases> for u32 {
    fn from(value: KeepReleases) -> u32 {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<AppSpec, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let spec = parse(r#"{"service":{"command":["bin/web"]}}"#).expect("minimal spec");
        assert_eq!(spec.keep_releases.get(), 3);
        assert_eq!(spec.sandbox.level, SandboxLevel::Strict);
        assert_eq!(spec.service.restart, RestartMode::OnFailure);
        assert_eq!(spec.health.grace_period, Duration::from_secs(30));
    }

    #[test]
    fn full_spec_round_trips() {
        let json = r#"{
            "service": {"command": ["bin/web", "--port", "8080"], "user": "web", "working_directory": "srv",
                        "environment": {"PORT": "8080"}, "restart": "always", "stop_timeout": "10s"},
            "resources": {"memory_max": "256M", "cpu_quota_percent": 50, "tasks_max": 64},
            "sandbox": {"level": "basic", "read_write_paths": ["/var/lib/web"],
                        "bind_paths": ["/srv/data:/data"], "bind_read_only_paths": ["/etc/ssl/certs"]},
            "config_files": [{"path": "etc/web.toml", "content": "port = 8080\n", "mode": "0640"}],
            "health": {"grace_period": "20s", "checks": [
                {"kind": "http", "url": "http://127.0.0.1:8080/healthz"},
                {"kind": "tcp", "address": "127.0.0.1:8080"},
                {"kind": "command", "command": ["bin/check"]}]},
            "hooks": {"pre_start": {"command": ["bin/migrate"], "timeout": "2m"}},
            "keep_releases": 5
        }"#;
        let spec = parse(json).expect("full spec");
        assert_eq!(spec.resources.memory_max.map(ByteSize::bytes), Some(256 << 20));
        assert_eq!(spec.sandbox.bind_paths[0].source(), "/srv/data");
        assert_eq!(spec.sandbox.bind_paths[0].target(), "/data");
        assert_eq!(spec.sandbox.bind_read_only_paths[0].target(), "/etc/ssl/certs");
        let again: AppSpec = serde_json::from_slice(&serde_json::to_vec(&spec).expect("serializes")).expect("parses");
        assert_eq!(again, spec);
    }

    #[test]
    fn command_is_optional_and_absent_from_the_json_when_unset() {
        // An OCI release may run the image's own Entrypoint and Cmd.
        let spec = parse(r#"{"service":{"user":"web"}}"#).expect("spec without a command");
        assert_eq!(spec.service.command, None);
        let json = serde_json::to_string(&spec).expect("serializes");
        assert!(!json.contains("command"), "{json}");
        assert!(!json.contains("bind_"), "empty bind lists are left out: {json}");
        assert_eq!(parse(&json).expect("parses again"), spec);
        let spec = parse(r#"{"service":{"command":["bin/web","-v"]}}"#).expect("spec");
        assert_eq!(
            spec.service.command.as_ref().map(Command::argv),
            Some(&["bin/web".to_owned(), "-v".to_owned()][..])
        );
    }

    #[test]
    fn bind_paths_are_absolute_normalized_and_need_no_quoting() {
        for good in [
            "/srv/data",
            "/srv/data:/data",
            "/run/postgresql:/run/postgresql",
            "/a-b_c.d/e@f+g",
        ] {
            let bind: BindPath = good.parse().unwrap_or_else(|error| panic!("{good}: {error}"));
            assert_eq!(bind.as_str(), good);
        }
        let bind: BindPath = "/srv/data".parse().expect("bind path");
        assert_eq!((bind.source(), bind.target()), ("/srv/data", "/srv/data"));
        for bad in [
            "",
            "/",
            "srv/data",
            "/srv/data:",
            ":/data",
            "/srv/data:data",
            "/srv/data:/",
            "/srv/data/",
            "/srv//data",
            "/srv/./data",
            "/srv/../etc",
            "/srv/data:/data:rbind",
            "/srv/my data",
            "/srv/tab\tdata",
            "/srv/new\nline",
            "/srv/100%",
            "/srv/\"quoted\"",
            "/srv/it's",
            "/srv/back\\slash",
        ] {
            assert!(bad.parse::<BindPath>().is_err(), "{bad:?} must be refused");
        }
        assert!(format!("/{}", "a".repeat(1023)).parse::<BindPath>().is_ok());
        assert!(format!("/{}", "a".repeat(1024)).parse::<BindPath>().is_err());
        assert!(
            parse(r#"{"service":{},"sandbox":{"bind_paths":["relative:/x"]}}"#).is_err(),
            "a spec with a bad bind path is refused"
        );
    }

    #[test]
    fn a_spec_with_a_duplicate_environment_variable_is_refused() {
        // JSON, as the coordinator's API and every agent read it.
        let error = parse(r#"{"service":{"command":["x"],"environment":{"MODE":"safe","PORT":"1","MODE":"unsafe"}}}"#)
            .expect_err("a variable set twice");
        assert!(
            error.to_string().contains("[service.environment] MODE is set twice"),
            "{error}"
        );
        let once =
            parse(r#"{"service":{"command":["x"],"environment":{"MODE":"safe","PORT":"1"}}}"#).expect("each once");
        assert_eq!(once.service.environment.len(), 2);
        // TOML, as `drover release create` reads drover.toml: refused by the TOML parser,
        // whichever way the key is spelt.
        for toml in [
            "[service]\ncommand = [\"x\"]\n[service.environment]\nMODE = \"safe\"\nMODE = \"unsafe\"\n",
            "[service]\ncommand = [\"x\"]\n[service.environment]\nMODE = \"safe\"\n\"MODE\" = \"unsafe\"\n",
            "[service]\ncommand = [\"x\"]\nenvironment = { MODE = \"safe\", MODE = \"unsafe\" }\n",
            "[service]\ncommand = [\"x\"]\nenvironment.MODE = \"safe\"\n[service.environment]\nMODE = \"unsafe\"\n",
        ] {
            let error = toml::from_str::<AppSpec>(toml).expect_err(toml);
            assert!(error.to_string().contains("duplicate key"), "{toml}: {error}");
        }
    }

    #[test]
    fn hostile_or_misspelt_specs_are_refused() {
        for (json, why) in [
            (r#"{"service":{"command":[]}}"#, "empty command"),
            (r#"{"service":{"command":[""]}}"#, "empty program"),
            (
                r#"{"service":{"command":["x"]},"sandbox":{"levle":"none"}}"#,
                "misspelt key",
            ),
            (
                r#"{"service":{"command":["x"],"working_directory":"../etc"}}"#,
                "escaping workdir",
            ),
            (
                r#"{"service":{"command":["x"],"working_directory":"/etc"}}"#,
                "absolute workdir",
            ),
            (
                r#"{"service":{"command":["x"]},"config_files":[{"path":"a/../../b","content":""}]}"#,
                "escaping config file",
            ),
            (
                r#"{"service":{"command":["x"]},"config_files":[{"path":"a","content":"","mode":"4755"}]}"#,
                "setuid mode",
            ),
            (r#"{"service":{"command":["x"],"user":"root;rm"}}"#, "bad user"),
            (
                r#"{"service":{"command":["x"],"environment":{"A=B":"c"}}}"#,
                "bad env name",
            ),
            (
                r#"{"service":{"command":["x"]},"keep_releases":1}"#,
                "nothing to roll back to",
            ),
            (
                r#"{"service":{"command":["x"]},"resources":{"memory_max":"12Q"}}"#,
                "bad size",
            ),
            (
                r#"{"service":{"command":["x"]},"health":{"checks":[{"kind":"exec"}]}}"#,
                "unknown check",
            ),
        ] {
            assert!(parse(json).is_err(), "{why} must be refused");
        }
    }

    fn spec_with(json: &str) -> AppSpec {
        parse(json).unwrap_or_else(|error| panic!("{json}: {error}"))
    }

    #[test]
    fn health_urls_and_tcp_addresses_that_would_split_a_request_are_refused() {
        // Defect: a health URL with CR/LF was accepted at release create and refused only
        // on the host, after the grace period.
        for bad in [
            "http://127.0.0.1:8080/\r\nX-Injected: 1",
            "http://127.0.0.1:8080/a b",
            "https://127.0.0.1/",
            "ftp://x/",
            "127.0.0.1:80",
            "http:///path",
            "http://user@host/",
            "http://host:99999/",
        ] {
            let json = format!(r#"{{"service":{{}},"health":{{"checks":[{{"kind":"http","url":"{bad}"}}]}}}}"#);
            assert!(parse(&json).is_err(), "{bad:?} accepted");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:x",
            ":80",
            "host :80",
            "a\nb:80",
            "[::1:80",
            "::1:80",
            "host:99999",
        ] {
            let json = format!(r#"{{"service":{{}},"health":{{"checks":[{{"kind":"tcp","address":"{bad}"}}]}}}}"#);
            assert!(parse(&json).is_err(), "{bad:?} accepted");
        }
        for good in ["127.0.0.1:8080", "[::1]:9000", "localhost:80"] {
            assert!(good.parse::<TcpAddress>().is_ok(), "{good}");
        }
    }

    #[test]
    fn health_url_targets() {
        let url: HealthUrl = "http://127.0.0.1:8080/healthz?deep=1#frag".parse().expect("valid");
        assert_eq!(
            url.target(),
            HttpTarget {
                connect: "127.0.0.1:8080".to_owned(),
                host: "127.0.0.1:8080".to_owned(),
                path: "/healthz?deep=1".to_owned(),
            }
        );
        let target = HttpTarget::parse("HTTP://localhost").expect("valid");
        assert_eq!((target.connect.as_str(), target.path.as_str()), ("localhost:80", "/"));
        let target = HttpTarget::parse("http://[::1]:9000?x").expect("valid");
        assert_eq!((target.connect.as_str(), target.path.as_str()), ("[::1]:9000", "/?x"));
        assert_eq!(HttpTarget::parse("http://[::1]/").expect("valid").connect, "[::1]:80");
    }

    #[test]
    fn programs_with_control_characters_are_refused() {
        // Defect: a program path with a newline was accepted at release create.
        for json in [
            r#"{"service":{"command":["bin/web\nExecStartPre=/bin/sh"]}}"#,
            r#"{"service":{"command":["bin/web"]},"hooks":{"pre_start":{"command":["bin/mig\rrate"]}}}"#,
            r#"{"service":{"command":["bin/web"]},"health":{"checks":[{"kind":"command","command":["\u001b[2Jcheck"]}]}}"#,
        ] {
            assert!(parse(json).is_err(), "{json} accepted");
        }
        // Arguments may hold anything but NUL: the unit quotes them.
        assert!(parse(r#"{"service":{"command":["bin/web","line\none"]}}"#).is_ok());
    }

    #[test]
    fn check_refuses_what_no_host_could_run_and_lists_every_problem() {
        let spec = spec_with(
            r#"{"service":{"command":["./bin/web"],"environment":{"A":"x\u0000y"}},
                "resources":{"memory_max":"0","cpu_quota_percent":0,"tasks_max":0}}"#,
        );
        let error = spec.check(ArtifactKind::Tarball).expect_err("refused");
        assert_eq!(error.problems.len(), 5, "{error}");
        let text = error.to_string();
        for needle in [
            "normalized path",
            "NUL byte",
            "memory_max",
            "cpu_quota_percent",
            "tasks_max",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        let no_command = spec_with(r#"{"service":{}}"#);
        assert_eq!(
            no_command.check(ArtifactKind::Tarball).expect_err("refused").problems,
            vec![TARBALL_NEEDS_COMMAND.to_owned()]
        );
        assert!(
            no_command.check(ArtifactKind::Image).is_ok(),
            "an image brings its own command"
        );
        assert!(
            spec_with(r#"{"service":{"command":["/usr/bin/env","x"]}}"#)
                .check(ArtifactKind::Tarball)
                .is_ok()
        );
    }

    #[test]
    fn check_refuses_a_spec_over_the_size_limit_at_the_boundary() {
        let frame = |content: &str| {
            spec_with(&format!(
                r#"{{"service":{{"command":["bin/web"]}},"config_files":[{{"path":"big","content":"{content}"}}]}}"#
            ))
        };
        let overhead = serde_json::to_vec(&frame("")).expect("json").len();
        let at_limit = frame(&"a".repeat(MAX_SPEC_BYTES - overhead));
        assert_eq!(serde_json::to_vec(&at_limit).expect("json").len(), MAX_SPEC_BYTES);
        assert!(at_limit.check(ArtifactKind::Tarball).is_ok(), "exactly at the limit");
        let over = frame(&"a".repeat(MAX_SPEC_BYTES - overhead + 1));
        let error = over.check(ArtifactKind::Tarball).expect_err("one byte over");
        assert!(
            error
                .to_string()
                .contains(&format!("over the limit of {MAX_SPEC_BYTES} bytes")),
            "{error}"
        );
    }
}
