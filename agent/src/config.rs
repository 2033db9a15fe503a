//! The agent's configuration: `/etc/drover/agent.toml` overlaid by command-line flags,
//! validated whole before anything touches the network or systemd. Every problem is
//! reported at once; the binary exits 64 on any of them.
//!
//! ```toml
//! coordinator = "https://deploy.example.com:8443"   # set by `drover-agent join`
//! host_id = "web-01"                                 # default: the machine's hostname
//! state_dir = "/var/lib/drover"
//! poll_interval = "30s"                              # idle fleet: one request per interval
//! long_poll = "60s"                                  # how long the coordinator may hold a poll
//! [labels]                                           # informational; labels come from the token
//! rack = "r12"
//! ```

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
    /// The coordinator URL.
    pub coordinator: Option<String>,
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
}

/// Flags that override the file (each `None` when not given).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--coordinator`.
    pub coordinator: Option<String>,
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
    /// The coordinator URL (https), if known (it is after `join`).
    pub coordinator: Option<String>,
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
    let coordinator = overrides.coordinator.clone().or(file.coordinator);
    if let Some(url) = &coordinator
        && !(url.starts_with("https://") && url.len() > "https://".len() && !url.contains(char::is_whitespace))
    {
        problems.push(format!("coordinator {url:?} must be an https:// URL"));
    }
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
    match (problems.is_empty(), host_id) {
        (true, Some(host_id)) => Ok(AgentConfig {
            coordinator,
            host_id,
            state_dir,
            poll_interval,
            long_poll,
            max_release_size,
            labels: file.labels,
        }),
        _ => Err(problems),
    }
}

/// Writes the agent config after a join: the coordinator URL and host id, keeping other
/// settings of an existing file. Atomic.
pub fn write_after_join(path: &Path, coordinator: &str, host_id: &HostId) -> std::io::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let mut kept: Vec<&str> = existing
        .lines()
        .filter(|line| {
            let key = line.split('=').next().unwrap_or("").trim();
            key != "coordinator" && key != "host_id"
        })
        .collect();
    while kept.first().is_some_and(|line| line.trim().is_empty()) {
        kept.remove(0);
    }
    let text = format!(
        "# Written by `drover-agent join`; other settings are kept.\ncoordinator = {}\nhost_id = {}\n{}{}",
        toml_string(coordinator),
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
        assert_eq!(config.coordinator, None);
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
}
