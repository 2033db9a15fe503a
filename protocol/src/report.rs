//! The host report: what an agent tells the coordinator about itself and its apps.
//!
//! Reports travel over the host's mTLS connection and are not signed documents, so they
//! follow the opposite policy to manifests: unknown fields are ignored, because during an
//! agent upgrade an older coordinator must still take reports from newer agents. The
//! coordinator bounds every list and string it stores (see [`HostReport::check`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::names::{AppName, HostId, Version};
use crate::time::Timestamp;

/// The report schema this build writes.
pub const REPORT_SCHEMA: u32 = 1;
/// Largest report body a coordinator should take.
pub const MAX_REPORT_BYTES: usize = 256 * 1024;
/// Most events one report may carry.
pub const MAX_REPORT_EVENTS: usize = 64;
/// Longest free-text field (errors, messages, health details).
pub const MAX_TEXT: usize = 2048;

/// One agent's view of its host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    /// [`REPORT_SCHEMA`].
    pub schema: u32,
    /// The reporting host.
    pub host: HostId,
    /// When the agent wrote the report (its clock).
    pub sent_at: Timestamp,
    /// The serial of the last manifest the agent accepted, if any.
    #[serde(default)]
    pub manifest_serial: Option<u64>,
    /// Whether the accepted manifest holds the host.
    #[serde(default)]
    pub held: bool,
    /// Why the most recent manifest was rejected, when it was.
    #[serde(default)]
    pub manifest_rejection: Option<String>,
    /// Facts about the host and agent.
    pub facts: AgentFacts,
    /// Per app state.
    #[serde(default)]
    pub apps: BTreeMap<AppName, AppReport>,
    /// Recent events, oldest first.
    #[serde(default)]
    pub events: Vec<ReportEvent>,
}

/// Facts about the host and the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentFacts {
    /// The agent's version.
    pub agent_version: String,
    /// `ID VERSION_ID` from os-release, e.g. `debian 12`.
    pub os: String,
    /// CPU architecture, e.g. `x86_64`.
    pub arch: String,
}

/// One app's state on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppReport {
    /// The release running now, if any.
    pub current: Option<Version>,
    /// The release the manifest asks for.
    pub desired: Option<Version>,
    /// Where the app is in its lifecycle.
    pub state: AppState,
    /// The latest health check outcome, in words.
    #[serde(default)]
    pub health: Option<String>,
    /// The last error, in words.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Versions that failed health here and will not be retried until the desired release changes.
    #[serde(default)]
    pub bad_versions: Vec<Version>,
}

/// The lifecycle states of SPEC.md §2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppState {
    /// Downloading the artifact.
    Fetching,
    /// Unpacking and preparing the release.
    Installing,
    /// Restarting the unit and waiting for health.
    Starting,
    /// The desired release runs and passes its checks.
    Healthy,
    /// The running release fails its checks.
    Unhealthy,
    /// The install failed; the previous release (if any) still runs.
    Failed,
    /// The new release was unhealthy and the previous one was restored.
    RolledBack,
    /// The host is held: no changes are applied.
    Held,
}

/// Something that happened on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportEvent {
    /// When.
    pub at: Timestamp,
    /// The app concerned, if one.
    #[serde(default)]
    pub app: Option<AppName>,
    /// What happened and why, in words.
    pub message: String,
}

impl HostReport {
    /// Checks the bounds a coordinator enforces before storing a report.
    pub fn check(&self) -> Result<(), String> {
        if self.events.len() > MAX_REPORT_EVENTS {
            return Err(format!(
                "{} events is over the limit of {MAX_REPORT_EVENTS}",
                self.events.len()
            ));
        }
        let texts = self
            .apps
            .values()
            .flat_map(|app| [app.health.as_deref(), app.last_error.as_deref()])
            .chain(self.events.iter().map(|event| Some(event.message.as_str())))
            .chain([self.manifest_rejection.as_deref()])
            .flatten();
        for text in texts {
            if text.len() > MAX_TEXT {
                return Err(format!(
                    "a text field of {} bytes is over the limit of {MAX_TEXT}",
                    text.len()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_ignored_in_reports() {
        let json = r#"{"schema":1,"host":"web-01","sent_at":"2026-11-27T12:00:00Z",
            "facts":{"agent_version":"0.1.0","os":"debian 12","arch":"x86_64","future_fact":1},
            "apps":{"web":{"current":"1.0","desired":"1.0","state":"healthy","from_the_future":true}},
            "something_new":[1,2,3]}"#;
        let report: HostReport = serde_json::from_str(json).expect("newer agents' reports are taken");
        assert_eq!(report.apps.len(), 1);
        assert!(report.check().is_ok());
    }

    #[test]
    fn oversized_reports_fail_the_check() {
        let json = r#"{"schema":1,"host":"web-01","sent_at":"2026-11-27T12:00:00Z",
            "facts":{"agent_version":"0.1.0","os":"debian 12","arch":"x86_64"}}"#;
        let mut report: HostReport = serde_json::from_str(json).expect("minimal report");
        report.manifest_rejection = Some("x".repeat(MAX_TEXT + 1));
        assert!(report.check().is_err());
    }
}
