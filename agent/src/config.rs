//! The agent's configuration: `/etc/drover/agent.toml` overlaid by command-line flags,
//! validated whole before anything touches the network or systemd. Every problem is
//! reported at once; the binary exits 64 on any of them.
//!
//! ```toml
//! coordinators = ["https://deploy-a.example.com:8443", "https://deploy-b.example.com:8443"]
//!                                                    # set by `drover-agent join`
//! host_id = "web-01"                                 # default: the machine's hostname
//! state_dir = "/var/lib/drover"
//! poll_interval = "30s"                              # idle fleet: one request per interval
//! long_poll = "60s"                                  # how long the coordinator may hold a poll
//! [labels]                                           # informational; labels come from the token
//! rack = "r12"
//! [registries."registry.example.com"]                # per OCI registry, never in manifests
//! username = "deploy"                                # basic auth: username + password_file
//! password_file = "/etc/drover/registry.password"    # 0600, read at each pull, never logged
//! ca_file = "/etc/drover/registry-ca.pem"            # an extra root for this registry only
//! [registries."127.0.0.1:5000"]
//! insecure = true                                    # plain HTTP: only where this says so
//! ```
//!
//! `coordinators` lists the replicas of one coordinator (they share a CA and a database;
//! issue 16), or one load-balanced URL: at most 16 distinct `https://` URLs
//! (`drover_protocol::coordinators`). The agent starts at the first, moves to the next when
//! one is unreachable and stays where it is answered ([`crate::coordinators`]). The single
//! `coordinator = "URL"` of earlier agents is the same as a list of one and stays valid;
//! `join` writes it for a single URL. Setting both keys is an error naming both: which one
//! was meant cannot be guessed, and a merged list would hide a stale entry.
//!
//! A registry without a section is pulled from anonymously over HTTPS with the system's
//! roots. `token_file` instead of `username` + `password_file` sends a bearer token.
//! Credentials are never sent over plain HTTP: an `insecure` registry takes none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use drover_protocol::spec::ByteSize;
use drover_protocol::{Duration, HostId};
use serde::Deserialize;

/// The default config file.
pub const DEFAULT_CONFIG: &str = "/etc/drover/agent.toml";
/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/drover";

/// The config file as written (every field optional; unknown fields are errors).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The coordinator URL (a list of one; earlier agents knew only this key).
    pub coordinator: Option<String>,
    /// The coordinator URLs, tried in order (replicas, or one load-balanced URL).
    pub coordinators: Option<Vec<String>>,
    /// The host id (default: hostname).
    pub host_id: Option<String>,
    /// Where the agent keeps its identity, trust and releases.
    pub state_dir: Option<PathBuf>,
    /// Time between polls when long-polling is not possible.
    pub poll_interval: Option<String>,
    /// How long a long-poll may wait at the coordinator.
    pub long_poll: Option<String>,
    /// The most one release may unpack to (e.g. `2G`): a gzip bomb stops here.
    pub max_release_size: Option<String>,
    /// Extra labels (informational).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Per OCI registry (`HOST[:PORT]`): transport, extra CA and credentials.
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryFile>,
}

/// One `[registries."HOST[:PORT]"]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    /// Plain HTTP instead of HTTPS.
    #[serde(default)]
    pub insecure: bool,
    /// A PEM file of extra root certificates for this registry.
    pub ca_file: Option<PathBuf>,
    /// Basic auth user name (with `password_file`).
    pub username: Option<String>,
    /// The file holding the basic auth password.
    pub password_file: Option<PathBuf>,
    /// The file holding a bearer token.
    pub token_file: Option<PathBuf>,
}

/// How the agent talks to a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryTransport {
    /// HTTPS with the system roots plus the registry's `ca_file` (the default).
    Https,
    /// Plain HTTP (`insecure = true`): no credentials are ever sent.
    PlainHttp,
}

/// Which credentials the agent presents to a registry. The secrets stay in their files
/// until a pull reads them, so they are in no config value, `Debug` output or log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryCredentials {
    /// None (also what bearer-token registries hand out anonymous tokens for).
    Anonymous,
    /// HTTP basic auth, or the password grant of a bearer-token registry.
    Basic {
        /// The user name.
        username: String,
        /// The file with the password (mode 0600 or tighter).
        password_file: PathBuf,
    },
    /// A bearer token sent as it is.
    Bearer {
        /// The file with the token (mode 0600 or tighter).
        token_file: PathBuf,
    },
}

/// A validated registry section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// HTTPS or plain HTTP.
    pub transport: RegistryTransport,
    /// Extra roots.
    pub ca_file: Option<PathBuf>,
    /// What to authenticate with.
    pub credentials: RegistryCredentials,
}

impl Default for RegistryConfig {
    fn default() -> RegistryConfig {
        RegistryConfig {
            transport: RegistryTransport::Https,
            ca_file: None,
            credentials: RegistryCredentials::Anonymous,
        }
    }
}

/// Flags that override the file (each `None` when not given).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--coordinator` (repeatable): replaces the file's list when not empty.
    pub coordinators: Vec<String>,
    /// `--host-id`.
    pub host_id: Option<String>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--poll-interval`.
    pub poll_interval: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The coordinator URLs (https, distinct, without trailing `/`), in the order they are
    /// tried; empty until `join`.
    pub coordinators: Vec<String>,
    /// This host's id.
    pub host_id: HostId,
    /// The state directory.
    pub state_dir: PathBuf,
    /// Time between polls.
    pub poll_interval: Duration,
    /// Long-poll wait.
    pub long_poll: Duration,
    /// The most one release may unpack to, in bytes.
    pub max_release_size: u64,
    /// Extra labels.
    pub labels: BTreeMap<String, String>,
    /// OCI registries by `HOST[:PORT]`; any other registry gets [`RegistryConfig::default`].
    pub registries: BTreeMap<String, RegistryConfig>,
}

/// Every problem found in a configuration, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration ({source_name}):\n  - {}", problems.join("\n  - "))]
pub struct ConfigErrors {
    /// Where the configuration came from.
    pub source_name: String,
    /// What is wrong, one entry per problem.
    pub problems: Vec<String>,
}

/// Reads the config file (a missing file is an empty configuration unless `required`)
/// and applies the overrides; `hostname` is the default host id.
pub fn load(path: &Path, required: bool, overrides: &Overrides, hostname: &str) -> Result<AgentConfig, ConfigErrors> {
    let source_name = path.display().to_string();
    let file = match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str::<ConfigFile>(&text).map_err(|error| ConfigErrors {
            source_name: source_name.clone(),
            problems: vec![error.to_string().trim().replace('\n', " ")],
        })?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !required => ConfigFile::default(),
        Err(error) => {
            return Err(ConfigErrors {
                source_name,
                problems: vec![format!("cannot read it: {error}")],
            });
        }
    };
    validate(file, overrides, hostname).map_err(|problems| ConfigErrors { source_name, problems })
}

/// Validates a parsed file with overrides applied; returns every problem.
pub fn validate(file: ConfigFile, overrides: &Overrides, hostname: &str) -> Result<AgentConfig, Vec<String>> {
    let mut problems = Vec::new();
    let listed = match (file.coordinator, file.coordinators) {
        (Some(one), Some(list)) => {
            problems.push(format!(
                "both coordinator = {one:?} and coordinators = {list:?} are set; keep one of the two keys (coordinators = [...] takes a list)"
            ));
            None
        }
        (Some(one), None) => Some(vec![one]),
        (None, list) => list,
    };
    let listed = if overrides.coordinators.is_empty() {
        listed
    } else {
        Some(overrides.coordinators.clone())
    };
    let coordinators = match listed {
        None => Vec::new(),
        Some(list) => drover_protocol::coordinators::check_coordinator_urls(&list).unwrap_or_else(|found| {
            problems.extend(found);
            Vec::new()
        }),
    };
    let host_text = overrides
        .host_id
        .clone()
        .or(file.host_id)
        .unwrap_or_else(|| hostname.to_lowercase());
    let host_id = match host_text.parse::<HostId>() {
        Ok(id) => Some(id),
        Err(error) => {
            problems.push(format!("host_id: {error}; set host_id in the config or --host-id"));
            None
        }
    };
    let state_dir = overrides
        .state_dir
        .clone()
        .or(file.state_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    if !state_dir.is_absolute() {
        problems.push(format!("state_dir {} must be an absolute path", state_dir.display()));
    }
    let mut duration = |name: &str, text: Option<String>, default: Duration, range: (u64, u64)| {
        let Some(text) = text else {
            return default;
        };
        match text.parse::<Duration>() {
            Ok(value) if (range.0..=range.1).contains(&(value.as_millis() / 1000)) => value,
            Ok(_) => {
                problems.push(format!("{name} {text} must be between {}s and {}s", range.0, range.1));
                default
            }
            Err(error) => {
                problems.push(format!("{name}: {error}"));
                default
            }
        }
    };
    let poll_interval = duration(
        "poll_interval",
        overrides.poll_interval.clone().or(file.poll_interval),
        Duration::from_secs(30),
        (1, 3600),
    );
    let long_poll = duration("long_poll", file.long_poll, Duration::from_secs(60), (0, 300));
    let max_release_size = match file.max_release_size.as_deref().map(str::parse::<ByteSize>) {
        None => crate::unpack::DEFAULT_MAX_TOTAL_BYTES,
        Some(Ok(size)) if size.bytes() >= 1 << 20 => size.bytes(),
        Some(Ok(_)) => {
            problems.push("max_release_size must be at least 1M".to_owned());
            crate::unpack::DEFAULT_MAX_TOTAL_BYTES
        }
        Some(Err(error)) => {
            problems.push(format!("max_release_size: {error}"));
            crate::unpack::DEFAULT_MAX_TOTAL_BYTES
        }
    };
    for (key, value) in &file.labels {
        if key.is_empty() || value.is_empty() || key.len() > 63 || value.len() > 63 {
            problems.push(format!(
                "label {key:?}={value:?}: keys and values are 1 to 63 characters"
            ));
        }
    }
    let mut registries = BTreeMap::new();
    for (host, section) in file.registries {
        if let Some(registry) = validate_registry(&host, section, &mut problems) {
            registries.insert(host, registry);
        }
    }
    match (problems.is_empty(), host_id) {
        (true, Some(host_id)) => Ok(AgentConfig {
            coordinators,
            host_id,
            state_dir,
            poll_interval,
            long_poll,
            max_release_size,
            labels: file.labels,
            registries,
        }),
        _ => Err(problems),
    }
}

/// Checks one `[registries."HOST[:PORT]"]` section, adding what is wrong to `problems`.
fn validate_registry(host: &str, section: RegistryFile, problems: &mut Vec<String>) -> Option<RegistryConfig> {
    let before = problems.len();
    let name = format!("registries.{host:?}");
    if !registry_host_ok(host) {
        problems.push(format!(
            "{name}: the key must be a registry as image references spell it: HOST or HOST:PORT in lower case"
        ));
    }
    let transport = if section.insecure {
        RegistryTransport::PlainHttp
    } else {
        RegistryTransport::Https
    };
    let mut secret_file = |field: &str, path: &Path| {
        if let Err(problem) = check_secret_file(path) {
            problems.push(format!("{name}.{field} {}: {problem}", path.display()));
        }
    };
    let credentials = match (section.username, section.password_file, section.token_file) {
        (None, None, None) => RegistryCredentials::Anonymous,
        (Some(username), Some(password_file), None) => {
            secret_file("password_file", &password_file);
            RegistryCredentials::Basic {
                username,
                password_file,
            }
        }
        (None, None, Some(token_file)) => {
            secret_file("token_file", &token_file);
            RegistryCredentials::Bearer { token_file }
        }
        (Some(_), None, None) | (None, Some(_), None) => {
            problems.push(format!("{name}: basic auth needs both username and password_file"));
            RegistryCredentials::Anonymous
        }
        (_, _, Some(_)) => {
            problems.push(format!(
                "{name}: token_file (bearer) and username/password_file (basic) exclude each other"
            ));
            RegistryCredentials::Anonymous
        }
    };
    if let RegistryCredentials::Basic { username, .. } = &credentials
        && (username.is_empty() || username.contains(':') || username.chars().any(char::is_control))
    {
        problems.push(format!(
            "{name}.username must be non-empty, without ':' or control characters"
        ));
    }
    if let Some(ca_file) = &section.ca_file {
        if !ca_file.is_absolute() {
            problems.push(format!("{name}.ca_file {} must be an absolute path", ca_file.display()));
        } else if let Err(error) = std::fs::metadata(ca_file) {
            problems.push(format!("{name}.ca_file {}: {error}", ca_file.display()));
        }
    }
    if transport == RegistryTransport::PlainHttp {
        if section.ca_file.is_some() {
            problems.push(format!(
                "{name}: ca_file is for HTTPS; an insecure registry uses plain HTTP"
            ));
        }
        if credentials != RegistryCredentials::Anonymous {
            problems.push(format!(
                "{name}: credentials are never sent over plain HTTP; serve the registry over HTTPS (ca_file) or drop insecure"
            ));
        }
    }
    (problems.len() == before).then_some(RegistryConfig {
        transport,
        ca_file: section.ca_file,
        credentials,
    })
}

/// `HOST` or `HOST:PORT` as an image reference names a registry: lower-case letters,
/// digits, `.` and `-` (or a bracketed IPv6 address), and a port of 1 to 65535.
fn registry_host_ok(text: &str) -> bool {
    let (host_ok, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((address, tail)) = rest.split_once(']') else {
            return false;
        };
        let address_ok = !address.is_empty()
            && address
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b':');
        let port = match tail.strip_prefix(':') {
            Some(port) => Some(port),
            None if tail.is_empty() => None,
            None => return false,
        };
        (address_ok, port)
    } else {
        let (host, port) = match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && !host.starts_with(['.', '-'])
            && host
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        (host_ok, port)
    };
    let port_ok = |port: &str| {
        (1..=5).contains(&port.len())
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|port| port > 0)
    };
    host_ok && port.is_none_or(port_ok)
}

/// A secret file must be an absolute path to a regular file that group and others cannot
/// read (as the agent's own key): checked at load, read at each pull.
fn check_secret_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    if !path.is_absolute() {
        return Err("must be an absolute path".to_owned());
    }
    let metadata = std::fs::metadata(path).map_err(|error| error.to_string())?;
    if !metadata.is_file() {
        return Err("is not a regular file".to_owned());
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {mode:04o} lets others read the secret; run chmod 600 {}",
            path.display()
        ));
    }
    Ok(())
}

/// Writes the agent config after a join: the coordinator URLs and host id, keeping other
/// settings of an existing file. One URL is written `coordinator = "URL"`, as earlier
/// agents read it; several `coordinators = [...]`. Atomic.
pub fn write_after_join(path: &Path, coordinators: &[String], host_id: &HostId) -> std::io::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let mut kept: Vec<&str> = Vec::new();
    // Inside a `coordinators = [` that spans lines: dropped up to its closing `]`.
    let mut in_replaced_list = false;
    for line in existing.lines() {
        if in_replaced_list {
            in_replaced_list = !line.contains(']');
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        match key.trim() {
            "coordinators" => in_replaced_list = value.contains('[') && !value.contains(']'),
            "coordinator" | "host_id" => {}
            _ => kept.push(line),
        }
    }
    while kept.first().is_some_and(|line| line.trim().is_empty()) {
        kept.remove(0);
    }
    let text = format!(
        "# Written by `drover-agent join`; other settings are kept.\n{}\nhost_id = {}\n{}{}",
        match coordinators {
            [one] => format!("coordinator = {}", toml_string(one)),
            many => format!(
                "coordinators = [{}]",
                many.iter().map(|url| toml_string(url)).collect::<Vec<_>>().join(", ")
            ),
        },
        toml_string(host_id.as_str()),
        if kept.is_empty() { "" } else { "\n" },
        kept.iter()
            .filter(|line| !line.starts_with("# Written by `drover-agent join`"))
            .fold(String::new(), |mut acc, line| {
                acc.push_str(line);
                acc.push('\n');
                acc
            })
    );
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    drover_protocol::keyfile::write_atomic(path, text.as_bytes(), 0o644).map_err(std::io::Error::other)
}

fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, Vec<String>> {
        let file: ConfigFile = toml::from_str(text).map_err(|error| vec![error.to_string()])?;
        validate(file, &Overrides::default(), "Web-01")
    }

    #[test]
    fn defaults_come_from_the_hostname() {
        let config = parse("").expect("empty config is valid");
        assert_eq!(config.host_id.as_str(), "web-01");
        assert_eq!(config.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(config.poll_interval, Duration::from_secs(30));
        assert!(config.coordinators.is_empty());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = parse(
            r#"coordinator = "http://plain"
               host_id = "Not Valid"
               state_dir = "relative"
               poll_interval = "0s"
               long_poll = "forever""#,
        )
        .expect_err("invalid");
        assert_eq!(problems.len(), 5, "{problems:#?}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(parse("coordinatr = \"https://x\"").is_err());
    }

    fn secret(directory: &Path, name: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = directory.join(name);
        std::fs::write(&path, "s3cret\n").expect("write secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn registries_take_transport_ca_and_credentials() {
        let directory = tempfile::tempdir().expect("tempdir");
        let password = secret(directory.path(), "password", 0o600);
        let token = secret(directory.path(), "token", 0o400);
        let ca = directory.path().join("ca.pem");
        std::fs::write(&ca, "").expect("write ca");
        let config = parse(&format!(
            r#"[registries."registry.example.com"]
               username = "deploy"
               password_file = {password:?}
               ca_file = {ca:?}
               [registries."ghcr.io"]
               token_file = {token:?}
               [registries."127.0.0.1:5000"]
               insecure = true
               [registries."[::1]:5001"]
               insecure = false"#
        ))
        .expect("valid registries");
        assert_eq!(
            config.registries["registry.example.com"],
            RegistryConfig {
                transport: RegistryTransport::Https,
                ca_file: Some(ca.clone()),
                credentials: RegistryCredentials::Basic {
                    username: "deploy".into(),
                    password_file: password.clone(),
                },
            }
        );
        assert_eq!(
            config.registries["ghcr.io"].credentials,
            RegistryCredentials::Bearer { token_file: token }
        );
        assert_eq!(
            config.registries["127.0.0.1:5000"].transport,
            RegistryTransport::PlainHttp
        );
        assert_eq!(config.registries["[::1]:5001"], RegistryConfig::default());
        assert!(parse("").expect("empty").registries.is_empty());
        // The secret is not in the configuration, so it cannot reach a log line.
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn bad_registry_sections_are_all_reported() {
        let directory = tempfile::tempdir().expect("tempdir");
        let open = secret(directory.path(), "open", 0o644);
        let fine = secret(directory.path(), "fine", 0o600);
        let problems = parse(&format!(
            r#"[registries."Registry.Example.com"]
               [registries."a.example"]
               username = "deploy"
               [registries."b.example"]
               username = "deploy"
               password_file = {open:?}
               [registries."c.example"]
               username = "deploy"
               password_file = {fine:?}
               token_file = {fine:?}
               [registries."d.example:99999"]
               [registries."e.example"]
               token_file = "relative/token"
               [registries."f.example"]
               insecure = true
               token_file = {fine:?}
               [registries."g.example"]
               ca_file = "/nonexistent/ca.pem""#
        ))
        .expect_err("invalid");
        assert_eq!(problems.len(), 8, "{problems:#?}");
        assert!(
            problems.iter().any(|problem| problem.contains("chmod 600")),
            "{problems:#?}"
        );
        assert!(
            problems
                .iter()
                .any(|problem| problem.contains("never sent over plain HTTP")),
            "{problems:#?}"
        );
        assert!(
            parse("[registries.\"x.example\"]\npassword = \"inline\"").is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let file: ConfigFile = toml::from_str("host_id = \"a\"\npoll_interval = \"10s\"").expect("toml");
        let overrides = Overrides {
            host_id: Some("b".into()),
            poll_interval: Some("5s".into()),
            ..Overrides::default()
        };
        let config = validate(file, &overrides, "h").expect("valid");
        assert_eq!(config.host_id.as_str(), "b");
        assert_eq!(config.poll_interval, Duration::from_secs(5));
    }

    #[test]
    fn the_single_coordinator_of_earlier_agents_is_a_list_of_one() {
        let config = parse("coordinator = \"https://deploy.example.com:8443/\"").expect("valid");
        assert_eq!(config.coordinators, ["https://deploy.example.com:8443"]);
    }

    #[test]
    fn a_list_of_coordinators_parses_in_its_order() {
        let config = parse("coordinators = [\"https://b:8443\", \"https://a:8443\"]").expect("valid");
        assert_eq!(config.coordinators, ["https://b:8443", "https://a:8443"]);
    }

    #[test]
    fn bad_coordinator_lists_are_refused_naming_each_problem() {
        let problems = parse("coordinators = [\"https://a\", \"http://b\", \"https://a/\"]").expect_err("invalid");
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(
            problems
                .iter()
                .any(|problem| problem.contains("\"http://b\" must be an https:// URL"))
        );
        assert!(problems.iter().any(|problem| problem.contains("listed twice")));
        let problems = parse("coordinators = []").expect_err("empty");
        assert!(problems[0].contains("empty"), "{problems:#?}");
        let problems = parse("coordinator = \"https://a\"\ncoordinators = [\"https://b\"]").expect_err("both");
        assert!(
            problems[0].contains("coordinator = ") && problems[0].contains("coordinators = "),
            "{problems:#?}"
        );
        let many: Vec<String> = (0..17).map(|index| format!("\"https://c{index}\"")).collect();
        let problems = parse(&format!("coordinators = [{}]", many.join(", "))).expect_err("too many");
        assert!(problems[0].contains("at most 16"), "{problems:#?}");
    }

    #[test]
    fn a_join_writes_the_list_and_keeps_every_other_setting() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("agent.toml");
        std::fs::write(
            &path,
            "coordinators = [\n  \"https://old-a\",\n  \"https://old-b\",\n]\nhost_id = \"old\"\npoll_interval = \"10s\"\n[labels]\nrack = \"r1\"\n",
        )
        .expect("write");
        let host: HostId = "web-01".parse().expect("host");
        write_after_join(&path, &["https://a:8443".into(), "https://b:8443".into()], &host).expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        let config = validate(toml::from_str(&text).expect("toml"), &Overrides::default(), "h").expect("valid");
        assert_eq!(config.coordinators, ["https://a:8443", "https://b:8443"], "{text}");
        assert_eq!(config.host_id.as_str(), "web-01");
        assert_eq!(config.poll_interval, Duration::from_secs(10));
        assert_eq!(config.labels["rack"], "r1");
        assert!(!text.contains("old"), "{text}");
        write_after_join(&path, &["https://one:8443".into()], &host).expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.contains("\ncoordinator = \"https://one:8443\"\n"),
            "one URL as earlier agents read it: {text}"
        );
        assert!(!text.contains("coordinators"), "{text}");
    }
}
