//! Carrying out the plan: each [`Step`] of [`crate::plan::plan`] done for real, with the
//! app's record (the journal, [`crate::local`]) written before every step that changes
//! what runs. One app's failure stops that app's steps only.
//!
//! Activation, the only step that touches what runs:
//! 1. journal `activation {to, from, phase: activating}`;
//! 2. write the spec's config files into the release, run `pre_start` from it;
//! 3. write `drover-<app>.service` (atomically), switch `current` (rename), `daemon-reload`,
//!    enable, restart, and wait for the job's result (JobRemoved);
//! 4. health: unit state and the spec's checks every interval until `successes` in a row
//!    pass (then `post_start`), or the grace period ends, or the unit fails;
//! 5. healthy: `current = to`, `previous = from`, journal cleared. Unhealthy: journal
//!    `phase: rolling_back`, the version is remembered as bad, steps 2-4 for `from`, then
//!    `rolled_back` is reported (or `failed` when there was nothing to go back to).
//!
//! A kill -9 anywhere leaves the journal saying which step to redo; [`Executor::recover`]
//! redoes it on the next start, so the host ends on a healthy release, never between two.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration as StdDuration, Instant};

use drover_protocol::report::AppState;
use drover_protocol::{AppName, AppRelease, Artifact, Digest, Manifest, Timestamp, Version};

use crate::fetch::{Cache, FetchError, VerifiedArtifact};
use crate::health::{Gate, Probe, UnitState, Verdict};
use crate::install::{StageError, StagedRelease};
use crate::local::{self, Activation, AppRecord, Phase};
use crate::plan::{Observed, ObservedApp, Step, plan};
use crate::reporting::Shared;
use crate::systemd::{JobOutcome, Systemd};
use crate::unpack::UnpackLimits;

/// Why a step failed; said in the report.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Downloading or verifying the artifact.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// Unpacking it.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// An artifact kind this agent does not install yet.
    #[error("{app} {version}: {kind} artifacts are not supported by this agent")]
    Unsupported {
        app: AppName,
        version: Version,
        kind: &'static str,
    },
    /// systemd refused or failed (boxed: zbus errors are large).
    #[error(transparent)]
    Systemd(Box<crate::systemd::SystemdError>),
    /// A lifecycle hook failed.
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    /// The spec cannot be written as a unit.
    #[error(transparent)]
    Unit(#[from] crate::unit::UnitError),
    /// The release's directory disappeared.
    #[error("{app} {version} is not staged; it will be fetched again")]
    NotStaged { app: AppName, version: Version },
    /// Local I/O.
    #[error("{operation} {path}: {detail}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        detail: String,
    },
}

impl From<crate::systemd::SystemdError> for StepError {
    fn from(error: crate::systemd::SystemdError) -> StepError {
        StepError::Systemd(Box::new(error))
    }
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StepError {
    let path = path.to_path_buf();
    move |error| StepError::Io {
        operation,
        path,
        detail: error.to_string(),
    }
}

fn key_error(operation: &'static str, path: &Path) -> impl FnOnce(drover_protocol::KeyError) -> StepError {
    let path = path.to_path_buf();
    move |error| StepError::Io {
        operation,
        path,
        detail: error.to_string(),
    }
}

/// Where units go.
pub const UNIT_DIR: &str = "/etc/systemd/system";

/// How long a restart job may take before it counts as failed.
const JOB_TIMEOUT: StdDuration = StdDuration::from_secs(120);

/// The install loop's tools.
#[derive(Debug)]
pub struct Executor {
    /// The state directory.
    pub state_dir: PathBuf,
    /// Where generated units are written.
    pub unit_dir: PathBuf,
    /// The artifact cache.
    pub cache: Cache,
    /// The mTLS client, for artifacts in the coordinator's store.
    pub client: reqwest::Client,
    /// The coordinator's URL: artifacts under it go through `client`.
    pub coordinator: String,
    /// System roots, no client certificate: artifacts anywhere else.
    pub public: reqwest::Client,
    /// systemd, over D-Bus.
    pub systemd: Systemd,
    /// Unpack limits.
    pub limits: UnpackLimits,
    /// What is reported.
    pub status: Shared,
    /// The app records, as on disk.
    pub records: BTreeMap<AppName, AppRecord>,
}

fn now() -> Timestamp {
    Timestamp::from_system(std::time::SystemTime::now())
}

fn version_of(release: Option<&AppRelease>) -> Option<&Version> {
    release.map(|release| &release.version)
}

impl Executor {
    fn save(&self, app: &AppName) -> Result<(), StepError> {
        let record = self.records.get(app).cloned().unwrap_or_default();
        local::save(&self.state_dir, app, &record).map_err(key_error(
            "writing the record of",
            &local::app_dir(&self.state_dir, app),
        ))
    }

    fn record(&mut self, app: &AppName) -> &mut AppRecord {
        self.records.entry(app.clone()).or_default()
    }

    /// Finishes every switch a previous run left half done (the journal says which).
    pub async fn recover(&mut self) {
        let pending: Vec<(AppName, Activation)> = self
            .records
            .iter()
            .filter_map(|(app, record)| record.activation.clone().map(|activation| (app.clone(), activation)))
            .collect();
        for (app, activation) in pending {
            self.status.event(
                now(),
                Some(&app),
                format!(
                    "resuming an interrupted {} of {} (started {})",
                    match activation.phase {
                        Phase::Activating => "activation",
                        Phase::RollingBack => "rollback",
                    },
                    activation.to.version,
                    activation.started_at
                ),
            );
            let keep = activation.to.spec.keep_releases.get();
            let outcome = match activation.phase {
                Phase::Activating => self.activate_journaled(&app, activation).await,
                Phase::RollingBack => {
                    let reason = activation
                        .reason
                        .clone()
                        .unwrap_or_else(|| "interrupted rollback".into());
                    self.roll_back(&app, activation, reason).await
                }
            };
            match outcome {
                // The plan's prune step belonged to the interrupted run: do it here.
                Ok(()) => self.prune(&app, keep),
                Err(error) => self.failed(&app, None, &error),
            }
        }
    }

    /// Brings the host to `desired`. Returns whether every app got there (false: retry later).
    pub async fn reconcile(&mut self, desired: &Manifest) -> bool {
        self.status.update(|status| {
            status.manifest_serial = Some(desired.serial);
            status.held = desired.hold;
        });
        // A version is remembered as bad only while it stays the desired one.
        let apps: Vec<AppName> = self.records.keys().cloned().collect();
        for app in &apps {
            let wanted = desired.apps.get(app).map(|release| release.version.clone());
            let record = self.record(app);
            let before = record.bad.len();
            record.bad.retain(|version| Some(version) == wanted.as_ref());
            if record.bad.len() != before {
                let _ = self.save(app);
            }
        }
        for (app, release) in &desired.apps {
            let record = self.records.get(app).cloned().unwrap_or_default();
            let state = if desired.hold {
                AppState::Held
            } else if record.bad.contains(&release.version) {
                AppState::RolledBack
            } else if version_of(record.current.as_ref()) == Some(&release.version) {
                AppState::Healthy
            } else {
                AppState::Fetching
            };
            let keep_error = matches!(state, AppState::RolledBack);
            self.status.app_state(
                app,
                version_of(record.current.as_ref()),
                Some(&release.version),
                state,
                None,
            );
            if !keep_error {
                self.status.with_app(app, |report| report.last_error = None);
            }
            self.status
                .with_app(app, |report| report.bad_versions = record.bad.iter().cloned().collect());
        }
        if desired.hold {
            return true;
        }
        // Apps the manifest no longer lists (unpinned everywhere for this host) stop.
        let retired: Vec<AppName> = self
            .records
            .keys()
            .filter(|app| !desired.apps.contains_key(*app))
            .cloned()
            .collect();
        let mut complete = true;
        for app in retired {
            if let Err(error) = self.retire(&app).await {
                self.failed(&app, None, &error);
                complete = false;
            }
        }

        let steps = plan(desired, &self.observe(desired));
        let mut failed: BTreeSet<AppName> = BTreeSet::new();
        let mut artifacts: BTreeMap<AppName, VerifiedArtifact> = BTreeMap::new();
        for step in steps {
            let app = match &step {
                Step::Fetch { app, .. }
                | Step::Stage { app, .. }
                | Step::Activate { app, .. }
                | Step::Prune { app, .. } => app.clone(),
            };
            if failed.contains(&app) {
                continue;
            }
            let outcome = match step {
                Step::Fetch { app, release } => self.fetch(&app, &release).await.map(|artifact| {
                    artifacts.insert(app, artifact);
                }),
                Step::Stage { app, release } => {
                    let artifact = match artifacts.remove(&app) {
                        Some(artifact) => Ok(artifact),
                        None => self.fetch(&app, &release).await,
                    };
                    match artifact {
                        Ok(artifact) => self.stage(&app, &release, artifact).await.map(|_| ()),
                        Err(error) => Err(error),
                    }
                }
                Step::Activate { app, release } => self.activate(&app, release).await,
                Step::Prune { app, keep } => {
                    self.prune(&app, keep);
                    Ok(())
                }
            };
            if let Err(error) = outcome {
                self.failed(&app, desired.apps.get(&app).map(|release| &release.version), &error);
                failed.insert(app);
            }
        }
        let keep: Vec<Digest> = desired
            .apps
            .values()
            .map(|release| release.artifact.digest().clone())
            .collect();
        if let Err(error) = self.cache.collect_garbage(&keep) {
            tracing::warn!("cleaning the artifact cache: {error}");
        }
        failed.is_empty() && complete
    }

    /// Stops and removes an app the manifest no longer lists: its unit (stopped,
    /// disabled, deleted), then its releases and record. The unit goes first, so a crash
    /// in between leaves a record that the next reconcile retires again.
    async fn retire(&mut self, app: &AppName) -> Result<(), StepError> {
        let unit = crate::unit::unit_name(app);
        let unit_path = self.unit_dir.join(&unit);
        self.systemd.stop(&unit, JOB_TIMEOUT).await?;
        if unit_path.exists() {
            self.systemd.disable(&unit).await?;
            std::fs::remove_file(&unit_path).map_err(io_error("removing", &unit_path))?;
            self.systemd.daemon_reload().await?;
        }
        let directory = local::app_dir(&self.state_dir, app);
        let doomed = directory.with_file_name(format!(".removing-{app}"));
        match std::fs::rename(&directory, &doomed) {
            Ok(()) => std::fs::remove_dir_all(&doomed).map_err(io_error("removing", &doomed))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error("removing", &directory)(error)),
        }
        self.records.remove(app);
        self.status.update(|status| {
            status.apps.remove(app);
        });
        self.status.event(
            now(),
            Some(app),
            format!("removed: no longer in this host's manifest ({unit} stopped)"),
        );
        Ok(())
    }

    /// The version the app's record says runs.
    fn current_version(&self, app: &AppName) -> Option<&Version> {
        self.records
            .get(app)
            .and_then(|record| version_of(record.current.as_ref()))
    }

    fn failed(&self, app: &AppName, desired: Option<&Version>, error: &StepError) {
        let message = error.to_string();
        let current = self.current_version(app);
        self.status.event(now(), Some(app), format!("failed: {message}"));
        self.status.update(|status| {
            let entry = status
                .apps
                .entry(app.clone())
                .or_insert_with(|| drover_protocol::report::AppReport {
                    current: None,
                    desired: None,
                    state: AppState::Failed,
                    health: None,
                    last_error: None,
                    bad_versions: Vec::new(),
                });
            entry.current = current.cloned();
            if desired.is_some() {
                entry.desired = desired.cloned();
            }
            entry.state = AppState::Failed;
            entry.last_error = Some(crate::reporting::bounded(&message));
        });
    }

    fn observe(&self, desired: &Manifest) -> Observed {
        let mut observed = Observed::default();
        for app in desired.apps.keys() {
            let record = self.records.get(app).cloned().unwrap_or_default();
            let staged = crate::install::staged_versions(&self.state_dir, app);
            observed.apps.insert(
                app.clone(),
                ObservedApp {
                    current: record.current.map(|release| release.version),
                    staged,
                    bad: record.bad,
                },
            );
        }
        for release in desired.apps.values() {
            if self.cache.path_of(release.artifact.digest()).is_file() {
                observed.cached.insert(release.artifact.digest().clone());
            }
        }
        observed
    }

    async fn fetch(&self, app: &AppName, release: &AppRelease) -> Result<VerifiedArtifact, StepError> {
        let (url, digest, size) = match &release.artifact {
            Artifact::Tarball { url, digest, size } => (url, digest, *size),
            Artifact::Oci { .. } => {
                return Err(StepError::Unsupported {
                    app: app.clone(),
                    version: release.version.clone(),
                    kind: "oci",
                });
            }
        };
        let current = self.current_version(app);
        self.status
            .app_state(app, current, Some(&release.version), AppState::Fetching, None);
        let client = if same_origin(url.as_str(), &self.coordinator) {
            &self.client
        } else {
            &self.public
        };
        let artifact = self.cache.fetch(client, url, digest, size).await?;
        Ok(artifact)
    }

    async fn stage(
        &self,
        app: &AppName,
        release: &AppRelease,
        artifact: VerifiedArtifact,
    ) -> Result<StagedRelease, StepError> {
        let current = self.current_version(app);
        self.status
            .app_state(app, current, Some(&release.version), AppState::Installing, None);
        let state_dir = self.state_dir.clone();
        let (app_owned, version) = (app.clone(), release.version.clone());
        let mut limits = self.limits;
        if release.spec.sandbox.allow_setuid {
            limits.special_bits = crate::unpack::SpecialBits::Keep;
        }
        let staged = tokio::task::spawn_blocking(move || {
            crate::install::stage(&artifact, &state_dir, &app_owned, &version, &limits)
        })
        .await
        .map_err(|error| StepError::Io {
            operation: "unpacking",
            path: self.state_dir.clone(),
            detail: error.to_string(),
        })??;
        self.status.event(
            now(),
            Some(app),
            format!("staged {} in {}", release.version, staged.path().display()),
        );
        Ok(staged)
    }

    async fn activate(&mut self, app: &AppName, release: AppRelease) -> Result<(), StepError> {
        let from = self.records.get(app).and_then(|record| record.current.clone());
        let activation = Activation {
            to: release,
            from,
            phase: Phase::Activating,
            started_at: now(),
            reason: None,
        };
        self.activate_journaled(app, activation).await
    }

    /// Steps 1-5 of the module doc for an activation already decided.
    async fn activate_journaled(&mut self, app: &AppName, activation: Activation) -> Result<(), StepError> {
        self.record(app).activation = Some(activation.clone());
        self.save(app)?;
        let to = &activation.to;
        let from_version = version_of(activation.from.as_ref());
        self.status
            .app_state(app, from_version, Some(&to.version), AppState::Starting, None);
        self.status.event(
            now(),
            Some(app),
            match from_version {
                Some(from) => format!("switching from {from} to {}", to.version),
                None => format!("starting {}", to.version),
            },
        );
        let verdict = match self.switch_and_check(app, to).await {
            Ok(verdict) => verdict,
            Err(error) => Verdict::Unhealthy(error.to_string()),
        };
        match verdict {
            Verdict::Healthy => {
                let record = self.record(app);
                record.previous = activation.from.clone();
                record.current = Some(activation.to.clone());
                record.activation = None;
                self.save(app)?;
                self.status
                    .app_state(app, Some(&to.version), Some(&to.version), AppState::Healthy, None);
                self.status
                    .event(now(), Some(app), format!("{} is healthy", to.version));
                Ok(())
            }
            Verdict::Unhealthy(reason) => self.roll_back(app, activation, reason).await,
            // The health loop returns only decided verdicts; undecided is not healthy.
            Verdict::Pending => self.roll_back(app, activation, "health undecided".into()).await,
        }
    }

    /// Moves back to the release that ran before `activation.to`, which is now bad.
    async fn roll_back(&mut self, app: &AppName, mut activation: Activation, reason: String) -> Result<(), StepError> {
        activation.phase = Phase::RollingBack;
        activation.reason = Some(reason.clone());
        {
            let record = self.record(app);
            record.activation = Some(activation.clone());
            record.bad.insert(activation.to.version.clone());
        }
        self.save(app)?;
        let bad = activation.to.version.clone();
        self.status
            .event(now(), Some(app), format!("{bad} is unhealthy: {reason}"));
        let bad_versions: Vec<Version> = self.record(app).bad.iter().cloned().collect();
        self.status.with_app(app, |report| report.bad_versions = bad_versions);
        let Some(from) = activation.from.clone() else {
            // Nothing to go back to: stop the bad release rather than let it flap.
            let unit = crate::unit::unit_name(app);
            let stopped = self.systemd.stop(&unit, JOB_TIMEOUT).await;
            let record = self.record(app);
            record.activation = None;
            record.current = None;
            self.save(app)?;
            let detail = format!(
                "{bad} failed health and there is no earlier release to go back to; {unit} {}: {reason}",
                if stopped.is_ok() {
                    "stopped"
                } else {
                    "could not be stopped"
                }
            );
            self.status
                .app_state(app, None, Some(&bad), AppState::Failed, Some(detail.clone()));
            self.status.event(now(), Some(app), detail);
            return Ok(());
        };
        let verdict = match self.ensure_staged(app, &from.version) {
            Ok(()) => match self.switch_and_check(app, &from).await {
                Ok(verdict) => verdict,
                Err(error) => Verdict::Unhealthy(error.to_string()),
            },
            Err(error) => Verdict::Unhealthy(error.to_string()),
        };
        let record = self.record(app);
        record.activation = None;
        record.current = Some(from.clone());
        self.save(app)?;
        let (state, detail) = match verdict {
            Verdict::Healthy => (
                AppState::RolledBack,
                format!("rolled back from {bad} to {}: {reason}", from.version),
            ),
            Verdict::Unhealthy(again) => (
                AppState::Unhealthy,
                format!(
                    "rolled back from {bad} to {}, which is not healthy either: {again}",
                    from.version
                ),
            ),
            Verdict::Pending => (
                AppState::Unhealthy,
                format!("rolled back from {bad} to {}, whose health is undecided", from.version),
            ),
        };
        self.status
            .app_state(app, Some(&from.version), Some(&bad), state, Some(detail.clone()));
        self.status.event(now(), Some(app), detail);
        Ok(())
    }

    fn ensure_staged(&self, app: &AppName, version: &Version) -> Result<(), StepError> {
        if crate::install::staged_versions(&self.state_dir, app).contains(version) {
            Ok(())
        } else {
            Err(StepError::NotStaged {
                app: app.clone(),
                version: version.clone(),
            })
        }
    }

    /// Steps 2-4: config files, pre_start, unit, switch, reload, restart, health.
    async fn switch_and_check(&mut self, app: &AppName, release: &AppRelease) -> Result<Verdict, StepError> {
        self.ensure_staged(app, &release.version)?;
        let release_dir = crate::install::releases_dir(&self.state_dir, app).join(release.version.as_str());
        let spec = &release.spec;
        for file in &spec.config_files {
            let path = release_dir.join(file.path.as_str());
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io_error("creating", parent))?;
            }
            drover_protocol::keyfile::write_atomic(&path, file.content.as_bytes(), file.mode.bits())
                .map_err(key_error("writing", &path))?;
        }
        if let Some(hook) = &spec.hooks.pre_start {
            crate::hooks::run_hook("pre_start", hook, &release_dir, &spec.service.environment).await?;
        }
        let unit = crate::unit::unit_name(app);
        let unit_path = self.unit_dir.join(&unit);
        let current = local::current_link(&self.state_dir, app);
        let text = crate::unit::render(app, &release.version, spec, &current)?;
        drover_protocol::keyfile::write_atomic(&unit_path, text.as_bytes(), 0o644)
            .map_err(key_error("writing", &unit_path))?;
        local::switch_current(&self.state_dir, app, &release.version).map_err(io_error("switching", &current))?;
        crate::faults::pause_point("after-switch", &self.state_dir);
        self.systemd.daemon_reload().await?;
        self.systemd.enable(&unit).await?;
        let outcome = self.systemd.restart(&unit, JOB_TIMEOUT).await?;
        if outcome != JobOutcome::Done {
            return Ok(Verdict::Unhealthy(format!(
                "systemd could not restart {unit}: job {outcome:?}"
            )));
        }
        let verdict = self.check_health(app, release, &unit, &release_dir).await?;
        if verdict == Verdict::Healthy
            && let Some(hook) = &spec.hooks.post_start
            && let Err(error) =
                crate::hooks::run_hook("post_start", hook, &release_dir, &spec.service.environment).await
        {
            return Ok(Verdict::Unhealthy(error.to_string()));
        }
        Ok(verdict)
    }

    async fn check_health(
        &self,
        app: &AppName,
        release: &AppRelease,
        unit: &str,
        release_dir: &Path,
    ) -> Result<Verdict, StepError> {
        let health = &release.spec.health;
        let started = Instant::now();
        let restarts = self.systemd.status(unit).await?.n_restarts;
        let mut gate = Gate::new(health, restarts);
        let interval = gate.interval().max(StdDuration::from_millis(100));
        let mut first = true;
        loop {
            tokio::time::sleep(if first {
                interval.min(StdDuration::from_millis(500))
            } else {
                interval
            })
            .await;
            first = false;
            crate::faults::pause_point("during-health", &self.state_dir);
            // The round's time is when it began: a slow check must not push it past the grace.
            let elapsed = started.elapsed();
            let status = self.systemd.status(unit).await?;
            let unit_state = UnitState {
                active: status.is_running(),
                failed: status.active_state == crate::systemd::ActiveState::Failed,
                restarts: status.n_restarts,
            };
            let checks = crate::health::probe_checks(&health.checks, release_dir).await;
            let probe = Probe {
                unit: unit_state,
                checks,
            };
            let summary = health_summary(&probe);
            self.status
                .with_app(app, |report| report.health = Some(crate::reporting::bounded(&summary)));
            let verdict = gate.observe(probe, elapsed);
            if verdict != Verdict::Pending {
                return Ok(verdict);
            }
        }
    }

    /// Deletes releases beyond the newest `keep` (by staging time), never the current or
    /// previous one, and staging leftovers.
    fn prune(&self, app: &AppName, keep: u32) {
        let record = self.records.get(app).cloned().unwrap_or_default();
        let protected: BTreeSet<Version> = [record.current, record.previous]
            .into_iter()
            .flatten()
            .map(|release| release.version)
            .collect();
        match crate::install::prune(&self.state_dir, app, keep as usize, &protected) {
            Ok(removed) if !removed.is_empty() => {
                let list: Vec<&str> = removed.iter().map(Version::as_str).collect();
                self.status
                    .event(now(), Some(app), format!("removed old releases {}", list.join(", ")));
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%app, "pruning old releases: {error}"),
        }
    }
}

/// Whether `url` is on the coordinator (same scheme, host and port), so the host's
/// certificate goes only there.
fn same_origin(url: &str, coordinator: &str) -> bool {
    let coordinator = coordinator.trim_end_matches('/');
    url.strip_prefix(coordinator)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One line on a health round for the report: what failed, or that all passed.
fn health_summary(probe: &Probe) -> String {
    let failures: Vec<String> = probe
        .checks
        .iter()
        .filter_map(|check| {
            check
                .failure
                .as_ref()
                .map(|failure| format!("{}: {failure}", check.check))
        })
        .collect();
    let unit = if probe.unit.active {
        format!("unit active ({} restarts)", probe.unit.restarts)
    } else if probe.unit.failed {
        "unit failed".to_owned()
    } else {
        "unit not active".to_owned()
    };
    if failures.is_empty() {
        format!("{unit}; {} checks pass", probe.checks.len())
    } else {
        format!("{unit}; {}", failures.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::same_origin;

    #[test]
    fn the_host_certificate_goes_only_to_the_coordinator() {
        let coordinator = "https://deploy.example.com:8443";
        assert!(same_origin(
            "https://deploy.example.com:8443/v1/artifacts/sha256:ab",
            coordinator
        ));
        assert!(!same_origin("https://deploy.example.com:8443.evil.net/x", coordinator));
        assert!(!same_origin("https://deploy.example.com/x", coordinator));
        assert!(!same_origin("https://artifacts.example.com/web.tar.gz", coordinator));
    }
}
