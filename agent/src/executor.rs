//! Carrying out the plan: each [`Step`] of [`crate::plan::plan`] done for real, with the
//! app's record (the journal, [`crate::local`]) written before every step that changes
//! what runs. One app's failure stops that app's steps only. Each app is reconciled by a
//! task of its own ([`Executor::reconcile_app`] on an [`Executor::for_app`] copy that
//! holds only that app's record; the tasks are run by `crate::run`), so apps never wait
//! for each other's downloads or health checks.
//!
//! Activation, the only step that touches what runs:
//! 1. journal `activation {to, from, phase: activating}`;
//! 2. write the spec's config files into the release (owned by the user the app runs as,
//!    with the spec's mode), run `pre_start` from it;
//! 3. write the app's environment file (0600, root's) and `drover-<app>.service`, which
//!    names it (both atomically), switch `current` (rename), `daemon-reload`, enable,
//!    restart, and wait for the job's result (JobRemoved);
//! 4. health: unit state and the spec's checks every interval until `successes` in a row
//!    pass (then `post_start`), or the grace period ends, or the unit fails;
//! 5. healthy: `current = to`, `previous = from`, journal cleared. Unhealthy: journal
//!    `phase: rolling_back`, the version is remembered as bad, steps 2-4 for `from`, then
//!    `rolled_back` is reported with its reason (or `failed` when there was nothing to go
//!    back to).
//!
//! When the restart job is done its time is journaled (`restarted_at`), and the health
//! grace period counts from it. A failure before the switch (a config file, `pre_start`,
//! the unit) means the new release never ran: the journal is cleared, nothing is marked
//! bad, and the app is reported `failed` with the reason, like a failed download.
//!
//! A kill -9 anywhere leaves the journal saying which step to redo; [`Executor::recover`]
//! redoes it on the next start, so the host ends on a healthy release, never between two.
//! **Invariant:** a resumed switch whose restart was journaled and whose `current` already
//! points at the journaled release does not restart the app again: it resumes the health
//! check against the journaled restart time, so agent restarts never extend the grace
//! period ([`crate::health::Gate::resumed`]).
//!
//! A failed install (fetch, stage, or an activation that failed before the switch) is
//! journaled per app with its version, attempt count and retry time; it is tried again
//! after 5 s doubling to 10 minutes ([`crate::backoff::install_retry`]), also across agent
//! restarts, and is an event once per version, not once per attempt. Apps the manifest no
//! longer lists are removed whether or not they ever installed (record, status entry and
//! directory).
//!
//! OCI releases take the same path: fetching is [`crate::oci::pull::pull`] (manifest,
//! config and layers into the shared cache), staging is [`crate::oci::stage::stage_image`],
//! and activation differs only in the unit ([`crate::unit::render_oci`]) and in where config
//! files go (`files/` beside the rootfs, bound into it). Before an image that runs as a
//! fixed uid/gid is activated, the host's user database must know both ids, because systemd
//! resolves `User=` and `Group=` there even for numbers (all but root and nobody): a
//! missing one is created as a system account `drover-u<uid>` / `drover-g<gid>`
//! (`Executor::ensure_host_ids`); if that fails the step fails, before anything changed,
//! saying what to do. Hooks and command
//! health checks run on the host from the release directory, as for tarballs. The cache
//! keeps every blob an image still on disk came from, so prune drops unreferenced layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration as StdDuration, Instant, SystemTime};

use drover_protocol::report::AppState;
use drover_protocol::{AppName, AppRelease, Artifact, Digest, Manifest, Timestamp, Version};

use crate::fetch::{Cache, FetchError, VerifiedArtifact};
use crate::health::{Gate, Probe, UnitState, Verdict};
use crate::install::{StageError, StagedRelease};
use crate::local::{self, Activation, AppRecord, InstallFailure, Phase};
use crate::oci::image::RunAs;
use crate::oci::pull::{PullError, PulledImage};
use crate::oci::registry::Registries;
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
    /// Unpacking it (boxed: the stage errors carry paths and limits).
    #[error(transparent)]
    Stage(Box<StageError>),
    /// Pulling an OCI image.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// A tarball release without a service command.
    #[error(
        "{app} {version}: the spec has no service command; a tarball release needs one (only an OCI image brings its own Entrypoint and Cmd)"
    )]
    NoCommand { app: AppName, version: Version },
    /// An image runs as ids the host's user database does not know, which systemd refuses.
    #[error("{app} {version}: {detail}")]
    HostUser {
        app: AppName,
        version: Version,
        detail: String,
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

impl From<StageError> for StepError {
    fn from(error: StageError) -> StepError {
        StepError::Stage(Box::new(error))
    }
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

fn remove_error(error: crate::install::RemoveError) -> StepError {
    StepError::Io {
        operation: "removing",
        path: error.path,
        detail: error.source.to_string(),
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

/// When removing an app failed (systemd or the disk refused), the next try.
const RETIRE_RETRY: StdDuration = StdDuration::from_secs(30);

/// What one app's task does after [`Executor::reconcile_app`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppNext {
    /// Nothing until the manifest changes.
    Wait,
    /// Try again at this time (a failed install's back-off, a failed removal), or sooner
    /// when the manifest changes.
    RetryAt(Timestamp),
    /// The app is gone from this host: its task ends.
    Removed,
}

/// How many apps may be in a step (download, unpack, switch, health check) at once. Apps
/// reconcile independently, so one app's health grace does not hold up another's pin;
/// the bound keeps a host with many apps from unpacking them all at the same moment.
pub const APP_CONCURRENCY: usize = 4;

/// The install loop's tools, and the records of the apps it acts on: the whole host's at
/// start, then one app's in each app's task ([`Executor::for_app`]).
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
    /// The coordinators: artifacts under any of them come from the current one through
    /// `client` (and only they get the host certificate).
    pub coordinators: std::sync::Arc<crate::coordinators::Coordinators>,
    /// System roots, no client certificate: artifacts anywhere else.
    pub public: reqwest::Client,
    /// OCI registries and their clients (shared by every app's task).
    pub registries: std::sync::Arc<Registries>,
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
    Timestamp::from_system(SystemTime::now())
}

fn version_of(release: Option<&AppRelease>) -> Option<&Version> {
    release.map(|release| &release.version)
}

/// A release ready to be switched to: its unit written, config files and `pre_start` done.
#[derive(Debug)]
struct Prepared {
    unit: String,
    release_dir: PathBuf,
}

/// A release's bits, verified in the cache: what staging takes.
#[derive(Debug)]
pub enum Fetched {
    /// A tarball.
    Tarball(VerifiedArtifact),
    /// An image's manifest, config and layers.
    Image(Box<PulledImage>),
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

    /// Finishes every switch a previous run left half done (the journal says which). First
    /// the units an older agent wrote with the environment inline get their environment
    /// file ([`Executor::move_environment_out_of_unit`]).
    pub async fn recover(&mut self) {
        let settled: Vec<(AppName, AppRelease)> = self
            .records
            .iter()
            .filter(|(_, record)| record.activation.is_none())
            .filter_map(|(app, record)| Some((app.clone(), record.current.clone()?)))
            .collect();
        for (app, release) in settled {
            if let Err(error) = self.move_environment_out_of_unit(&app, &release).await {
                self.status.event(
                    now(),
                    Some(&app),
                    format!(
                        "its unit still holds its environment (world-readable): {error}; the next install moves it"
                    ),
                );
            }
        }
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
            let version = activation.to.version.clone();
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
                Err(error) => self.failed(&app, Some(&version), &error),
            }
        }
    }

    /// A copy of the tools holding only `app`'s record (`record`, as loaded): what the
    /// task that reconciles that one app owns.
    pub fn for_app(&self, app: &AppName, record: Option<AppRecord>) -> Executor {
        Executor {
            state_dir: self.state_dir.clone(),
            unit_dir: self.unit_dir.clone(),
            cache: self.cache.clone(),
            client: self.client.clone(),
            coordinators: std::sync::Arc::clone(&self.coordinators),
            public: self.public.clone(),
            registries: std::sync::Arc::clone(&self.registries),
            systemd: self.systemd.clone(),
            limits: self.limits,
            status: self.status.clone(),
            records: record.map(|record| (app.clone(), record)).into_iter().collect(),
        }
    }

    /// The host-wide part of a new manifest: its serial and hold, in the report.
    pub fn note_manifest(&self, desired: &Manifest) {
        self.status.update(|status| {
            status.manifest_serial = Some(desired.serial);
            status.held = desired.hold;
        });
    }

    /// Drops the cache blobs nothing desired or on disk uses. Only while no app is in a
    /// step (the caller makes sure), so no download in flight loses its blobs.
    pub fn collect_garbage(&self, desired: &Manifest) {
        if let Err(error) = self
            .cache
            .collect_garbage(&blobs_in_use(&self.cache, &self.state_dir, desired))
        {
            tracing::warn!("cleaning the artifact cache: {error}");
        }
    }

    /// Brings one app to `desired`: its steps when the manifest lists it, its removal
    /// when it does not (unless the host is held). Says what the app's task does next.
    pub async fn reconcile_app(&mut self, desired: &Manifest, app: &AppName) -> AppNext {
        let started = now();
        // A version is remembered as bad, or as failing to install, only while it stays
        // the desired one.
        let wanted = desired.apps.get(app).map(|release| release.version.clone());
        if let Some(record) = self.records.get_mut(app) {
            let before = (record.bad.len(), record.failure.is_some());
            record.bad.retain(|version| Some(version) == wanted.as_ref());
            if record
                .failure
                .as_ref()
                .is_some_and(|failure| Some(&failure.version) != wanted.as_ref())
            {
                record.failure = None;
            }
            if (record.bad.len(), record.failure.is_some()) != before {
                let _ = self.save(app);
            }
        }
        let Some(release) = desired.apps.get(app) else {
            if desired.hold {
                return AppNext::Wait;
            }
            // Unpinned everywhere for this host: it stops and goes, also when it never
            // installed (a status entry or a directory but maybe no record).
            return match self.retire(app).await {
                Ok(()) => AppNext::Removed,
                Err(error) => {
                    self.failed(app, None, &error);
                    AppNext::RetryAt(started.plus(drover_protocol::Duration::from_secs(RETIRE_RETRY.as_secs())))
                }
            };
        };
        let record = self.records.get(app).cloned().unwrap_or_default();
        let waiting = record
            .failure
            .as_ref()
            .is_some_and(|failure| failure.version == release.version && failure.retry_at > started);
        let (state, error) = if desired.hold {
            (AppState::Held, None)
        } else if record.bad.contains(&release.version) && record.current.is_some() {
            (AppState::RolledBack, record.last_error.clone())
        } else if record.bad.contains(&release.version) {
            // Nothing ran before it, so nothing was rolled back to: it failed.
            (AppState::Failed, record.last_error.clone())
        } else if version_of(record.current.as_ref()) == Some(&release.version) {
            (AppState::Healthy, None)
        } else if waiting {
            (AppState::Failed, record.last_error.clone())
        } else {
            (AppState::Fetching, None)
        };
        self.status.app_state(
            app,
            version_of(record.current.as_ref()),
            Some(&release.version),
            state,
            error,
        );
        self.status
            .with_app(app, |report| report.bad_versions = record.bad.iter().cloned().collect());
        if desired.hold {
            return AppNext::Wait;
        }

        let mine = Manifest {
            apps: BTreeMap::from([(app.clone(), release.clone())]),
            ..desired.clone()
        };
        let mut fetched: Option<Fetched> = None;
        for step in plan(&mine, &self.observe(&mine), started) {
            let outcome = match step {
                Step::Fetch { app, release } => self.fetch(&app, &release).await.map(|artifact| {
                    fetched = Some(artifact);
                }),
                Step::Stage { app, release } => {
                    let artifact = match fetched.take() {
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
                self.failed(app, Some(&release.version), &error);
                break;
            }
        }
        match crate::plan::next_retry(&mine, &self.observe(&mine)) {
            Some(at) => AppNext::RetryAt(at),
            None => AppNext::Wait,
        }
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
        let doomed = local::removal_dir(&self.state_dir, app);
        // A crash during an earlier removal may have left one behind: it would block the rename.
        crate::install::remove_tree(&doomed).map_err(remove_error)?;
        match std::fs::rename(&directory, &doomed) {
            Ok(()) => crate::install::remove_tree(&doomed).map_err(remove_error)?,
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

    /// Reports a failed step. With the desired `version`, it is journaled as a failed
    /// install with its retry time: an event the first time for that version, later
    /// attempts only in `last_error` and the log.
    fn failed(&mut self, app: &AppName, desired: Option<&Version>, error: &StepError) {
        let mut message = error.to_string();
        let first = match desired {
            Some(version) => {
                let (attempts, wait) = self.note_failure(app, version, &message);
                if attempts > 1 || wait > crate::backoff::INSTALL_RETRY_FIRST {
                    message = format!("{message} (attempt {attempts}; next in {} s)", wait.as_secs());
                } else {
                    message = format!("{message} (next attempt in {} s)", wait.as_secs());
                }
                attempts == 1
            }
            None => true,
        };
        if first {
            self.status.warning(now(), Some(app), format!("failed: {message}"));
        } else {
            tracing::warn!(%app, "failed again: {message}");
        }
        let current = self.current_version(app);
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

    /// Journals a failed install of `version`: one more attempt, and the time before which
    /// it is not tried again. Returns the attempt count and the wait.
    fn note_failure(&mut self, app: &AppName, version: &Version, message: &str) -> (u32, StdDuration) {
        let at = now();
        let record = self.record(app);
        let attempts = match &record.failure {
            Some(failure) if &failure.version == version => failure.attempts.saturating_add(1),
            _ => 1,
        };
        let wait = crate::backoff::install_retry(attempts);
        record.failure = Some(InstallFailure {
            version: version.clone(),
            attempts,
            retry_at: at.plus(drover_protocol::Duration::from_secs(wait.as_secs())),
        });
        record.last_error = Some(crate::reporting::bounded(message));
        if let Err(error) = self.save(app) {
            // The back-off then lasts until the agent restarts; the step will say more.
            tracing::warn!(%app, "journaling a failed install: {error}");
        }
        (attempts, wait)
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
                    retry: record.failure.map(|failure| (failure.version, failure.retry_at)),
                },
            );
        }
        for release in desired.apps.values() {
            let cached = match &release.artifact {
                Artifact::Tarball { digest, .. } | Artifact::OciTarball { digest, .. } => {
                    self.cache.path_of(digest).is_file()
                }
                // Only the whole image: manifest, config and every layer.
                Artifact::Oci { digest, .. } => crate::oci::pull::is_cached(&self.cache, digest),
            };
            if cached {
                observed.cached.insert(release.artifact.digest().clone());
            }
        }
        observed
    }

    async fn fetch(&self, app: &AppName, release: &AppRelease) -> Result<Fetched, StepError> {
        let current = self.current_version(app);
        match &release.artifact {
            Artifact::Tarball { url, digest, size } => {
                // Checked before downloading what could never run.
                if release.spec.service.command.is_none() {
                    return Err(StepError::NoCommand {
                        app: app.clone(),
                        version: release.version.clone(),
                    });
                }
                self.status
                    .app_state(app, current, Some(&release.version), AppState::Fetching, None);
                let on_coordinator = self.coordinators.artifact_attempt(url.as_str()).and_then(|attempt| {
                    let url = drover_protocol::manifest::HttpUrl::try_from(attempt.url.clone()).ok()?;
                    Some((attempt, url))
                });
                let Some((attempt, url)) = on_coordinator else {
                    return Ok(Fetched::Tarball(
                        self.cache.fetch(&self.public, url, digest, *size).await?,
                    ));
                };
                let fetched = self.cache.fetch(&self.client, &url, digest, *size).await;
                if let Err(error) = &fetched
                    && crate::coordinators::unreachable_download(error)
                {
                    self.coordinators.failed(&attempt, &error.to_string());
                }
                Ok(Fetched::Tarball(fetched?))
            }
            Artifact::Oci { reference, digest } => {
                self.status
                    .app_state(app, current, Some(&release.version), AppState::Fetching, None);
                let image = crate::oci::pull::pull(
                    &self.registries,
                    &self.cache,
                    reference,
                    digest,
                    self.limits.max_total_bytes,
                )
                .await?;
                if image.downloaded() > 0 {
                    self.status.event(
                        now(),
                        Some(app),
                        format!(
                            "pulled {} ({} layers): {} bytes downloaded",
                            reference.as_str(),
                            image.layers().len(),
                            image.downloaded()
                        ),
                    );
                }
                Ok(Fetched::Image(Box::new(image)))
            }
            Artifact::OciTarball {
                reference,
                digest,
                size,
            } => {
                // A tarball, wherever it is kept: checked before downloading what could
                // never run, installed as one from a URL is.
                if release.spec.service.command.is_none() {
                    return Err(StepError::NoCommand {
                        app: app.clone(),
                        version: release.version.clone(),
                    });
                }
                self.status
                    .app_state(app, current, Some(&release.version), AppState::Fetching, None);
                let tarball = crate::oci::pull::pull_tarball(
                    &self.registries,
                    &self.cache,
                    reference,
                    digest,
                    *size,
                    self.limits.max_total_bytes,
                )
                .await?;
                if tarball.downloaded > 0 {
                    self.status.event(
                        now(),
                        Some(app),
                        format!(
                            "fetched the tarball {digest} of {}: {} bytes downloaded",
                            reference.as_str(),
                            tarball.downloaded
                        ),
                    );
                }
                Ok(Fetched::Tarball(tarball.artifact))
            }
        }
    }

    async fn stage(&self, app: &AppName, release: &AppRelease, fetched: Fetched) -> Result<StagedRelease, StepError> {
        let current = self.current_version(app);
        self.status
            .app_state(app, current, Some(&release.version), AppState::Installing, None);
        let state_dir = self.state_dir.clone();
        let (app_owned, version) = (app.clone(), release.version.clone());
        let mut limits = self.limits;
        if release.spec.sandbox.allow_setuid {
            limits.special_bits = crate::unpack::SpecialBits::Keep;
        }
        let spec = release.spec.clone();
        let staged = tokio::task::spawn_blocking(move || {
            match fetched {
                Fetched::Tarball(artifact) => {
                    crate::install::stage(&artifact, &state_dir, &app_owned, &version, &limits)
                }
                Fetched::Image(image) => {
                    let limits = crate::oci::LayerLimits {
                        max_total_bytes: limits.max_total_bytes,
                        max_entries: limits.max_entries,
                        special_bits: limits.special_bits,
                    };
                    crate::oci::stage::stage_image(&image, &spec, &state_dir, &app_owned, &version, &limits)
                }
            }
            .map_err(StepError::from)
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
        if matches!(release.artifact, Artifact::Oci { .. }) {
            self.ensure_host_ids(app, &release).await?;
        }
        let from = self.records.get(app).and_then(|record| record.current.clone());
        let activation = Activation {
            to: release,
            from,
            phase: Phase::Activating,
            started_at: now(),
            reason: None,
            restarted_at: None,
            restarts_at_start: 0,
        };
        self.activate_journaled(app, activation).await
    }

    /// Whether an interrupted switch to `release` got as far as its restart (journaled)
    /// with `current` pointing at it: then it is not restarted again, its health check is
    /// resumed. The journaled restart time and `NRestarts` when so.
    fn resumable(&self, app: &AppName, activation: &Activation, release: &AppRelease) -> Option<(Timestamp, u32)> {
        let restarted_at = activation.restarted_at?;
        (local::read_current(&self.state_dir, app).as_ref() == Some(&release.version))
            .then_some((restarted_at, activation.restarts_at_start))
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
        let verdict = match self.resumable(app, &activation, to) {
            Some((restarted_at, restarts)) => self.resume_check(app, to, restarted_at, restarts).await,
            None => match self.prepare(app, to).await {
                Ok(prepared) => self.switch_and_check(app, to, prepared).await,
                // A previous run switched `current` before it was killed: the release may
                // have run, so this is a rollback like any unhealthy start.
                Err(error) if local::read_current(&self.state_dir, app).as_ref() == Some(&to.version) => {
                    Verdict::Unhealthy(error.to_string())
                }
                Err(error) => {
                    // The new release never ran and nothing changed: not a rollback, a
                    // failed install (reported `failed` with the reason, retried later).
                    self.record(app).activation = None;
                    self.save(app)?;
                    return Err(error);
                }
            },
        };
        match verdict {
            Verdict::Healthy => {
                let record = self.record(app);
                record.previous = activation.from.clone();
                record.current = Some(activation.to.clone());
                record.activation = None;
                record.failure = None;
                record.last_error = None;
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
        // A rollback already restarted `from` (journaled) resumes its health check.
        let resume = match (&activation.phase, &activation.from) {
            (Phase::RollingBack, Some(from)) => self.resumable(app, &activation, from),
            _ => None,
        };
        activation.phase = Phase::RollingBack;
        activation.reason = Some(reason.clone());
        if resume.is_none() {
            activation.restarted_at = None;
            activation.restarts_at_start = 0;
        }
        {
            let record = self.record(app);
            record.activation = Some(activation.clone());
            record.bad.insert(activation.to.version.clone());
            record.last_error = Some(crate::reporting::bounded(&reason));
        }
        self.save(app)?;
        let bad = activation.to.version.clone();
        self.status
            .warning(now(), Some(app), format!("{bad} is unhealthy: {reason}"));
        let bad_versions: Vec<Version> = self.record(app).bad.iter().cloned().collect();
        self.status.with_app(app, |report| report.bad_versions = bad_versions);
        let Some(from) = activation.from.clone() else {
            // Nothing to go back to: stop the bad release rather than let it flap.
            let unit = crate::unit::unit_name(app);
            let stopped = self.systemd.stop(&unit, JOB_TIMEOUT).await;
            let detail = format!(
                "{bad} failed health and there is no earlier release to go back to; {unit} {}: {reason}",
                if stopped.is_ok() {
                    "stopped"
                } else {
                    "could not be stopped"
                }
            );
            let record = self.record(app);
            record.activation = None;
            record.current = None;
            record.last_error = Some(crate::reporting::bounded(&detail));
            self.save(app)?;
            self.status
                .app_state(app, None, Some(&bad), AppState::Failed, Some(detail.clone()));
            self.status.warning(now(), Some(app), detail);
            return Ok(());
        };
        let verdict = match resume {
            Some((restarted_at, restarts)) => self.resume_check(app, &from, restarted_at, restarts).await,
            None => match self.prepare(app, &from).await {
                Ok(prepared) => self.switch_and_check(app, &from, prepared).await,
                Err(error) => Verdict::Unhealthy(error.to_string()),
            },
        };
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
        let record = self.record(app);
        record.activation = None;
        record.current = Some(from.clone());
        record.last_error = Some(crate::reporting::bounded(&detail));
        self.save(app)?;
        self.status
            .app_state(app, Some(&from.version), Some(&bad), state, Some(detail.clone()));
        self.status.warning(now(), Some(app), detail);
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

    /// Makes sure the host's user database knows the uid and gid an image runs as, because
    /// systemd looks `User=` and `Group=` up there even as numbers (an unknown one fails the
    /// start with 217/USER or 216/GROUP). A missing one is created as a system account
    /// without home or shell, `drover-u<uid>` / `drover-g<gid>`: that also reserves the id,
    /// so no person's account created later on this host owns the image's files. When
    /// that is not possible the step fails, before anything changed, saying what to do.
    async fn ensure_host_ids(&self, app: &AppName, release: &AppRelease) -> Result<(), StepError> {
        let release_dir = crate::install::releases_dir(&self.state_dir, app).join(release.version.as_str());
        let record = crate::oci::stage::read_record(&release_dir).map_err(|detail| StepError::Io {
            operation: "reading the image record of",
            path: release_dir.clone(),
            detail,
        })?;
        let RunAs::Ids { uid, gid, .. } = record.run.user else {
            return Ok(());
        };
        let failed = |what: String| StepError::HostUser {
            app: app.clone(),
            version: release.version.clone(),
            detail: format!(
                "the image runs as uid {uid} gid {gid}, which systemd looks up in this host's user database even as numbers, and {what}; create them (`groupadd --system --gid {gid} drover-g{gid}`, `useradd --system --no-create-home --uid {uid} --gid {gid} drover-u{uid}`) or set `user` in the spec"
            ),
        };
        if !host_knows("group", gid).await {
            let name = format!("drover-g{gid}");
            let gid_text = gid.to_string();
            run_account_tool("groupadd", &["--system", "--gid", &gid_text, &name])
                .await
                .map_err(|error| failed(format!("creating group {name} failed: {error}")))?;
            self.status.event(
                now(),
                Some(app),
                format!("created host group {name} (gid {gid}) for the image's group"),
            );
        }
        if !host_knows("passwd", uid).await {
            let name = format!("drover-u{uid}");
            let (uid_text, gid_text) = (uid.to_string(), gid.to_string());
            let comment = format!("drover uid {uid} for OCI images");
            let arguments = [
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--no-user-group",
                "--uid",
                &uid_text,
                "--gid",
                &gid_text,
                "--comment",
                &comment,
                &name,
            ];
            run_account_tool("useradd", &arguments)
                .await
                .map_err(|error| failed(format!("creating user {name} failed: {error}")))?;
            self.status.event(
                now(),
                Some(app),
                format!("created host user {name} (uid {uid}) for the image's user"),
            );
        }
        Ok(())
    }

    /// An agent before issue 13 wrote the environment into the unit as `Environment=`
    /// lines, readable by every local user in the unit file and through `systemctl show`.
    /// When the unit of `release` (the app's running release) still has such lines, its
    /// environment file and unit are written as an activation writes them, and systemd
    /// reloads: the app is not restarted (its process keeps the environment it has; its
    /// next start reads the same values from the file). Otherwise nothing is done.
    async fn move_environment_out_of_unit(&self, app: &AppName, release: &AppRelease) -> Result<(), StepError> {
        let unit_path = self.unit_dir.join(crate::unit::unit_name(app));
        let Ok(text) = std::fs::read_to_string(&unit_path) else {
            return Ok(());
        };
        if !text.lines().any(|line| line.starts_with("Environment=")) {
            return Ok(());
        }
        self.ensure_staged(app, &release.version)?;
        let release_dir = crate::install::releases_dir(&self.state_dir, app).join(release.version.as_str());
        let environment_path = local::environment_file(&self.state_dir, app);
        let (unit, environment) = match &release.artifact {
            Artifact::Tarball { .. } | Artifact::OciTarball { .. } => (
                crate::unit::render(
                    app,
                    &release.version,
                    &release.spec,
                    &local::current_link(&self.state_dir, app),
                    &environment_path,
                )?,
                crate::unit::render_environment(app, &release.spec, None)?,
            ),
            Artifact::Oci { .. } => {
                let record = crate::oci::stage::read_record(&release_dir).map_err(|detail| StepError::Io {
                    operation: "reading the image record of",
                    path: release_dir.clone(),
                    detail,
                })?;
                (
                    crate::unit::render_oci(
                        app,
                        &release.version,
                        &release.spec,
                        &release_dir,
                        &environment_path,
                        &record.run,
                    )?,
                    crate::unit::render_environment(app, &release.spec, Some(&record.run))?,
                )
            }
        };
        drover_protocol::keyfile::write_atomic(&environment_path, environment.as_bytes(), 0o600)
            .map_err(key_error("writing", &environment_path))?;
        drover_protocol::keyfile::write_atomic(&unit_path, unit.as_bytes(), 0o644)
            .map_err(key_error("writing", &unit_path))?;
        self.systemd.daemon_reload().await?;
        self.status.event(
            now(),
            Some(app),
            format!(
                "moved the environment of {} out of its unit into {} (root only); not restarted",
                release.version,
                environment_path.display()
            ),
        );
        Ok(())
    }

    /// Step 2 and the unit file: everything before the switch, so a failure here means
    /// the release never ran and nothing the host runs changed.
    async fn prepare(&self, app: &AppName, release: &AppRelease) -> Result<Prepared, StepError> {
        self.ensure_staged(app, &release.version)?;
        let release_dir = crate::install::releases_dir(&self.state_dir, app).join(release.version.as_str());
        let spec = &release.spec;
        let image = match &release.artifact {
            Artifact::Tarball { .. } | Artifact::OciTarball { .. } => None,
            Artifact::Oci { .. } => {
                Some(
                    crate::oci::stage::read_record(&release_dir).map_err(|detail| StepError::Io {
                        operation: "reading the image record of",
                        path: release_dir.clone(),
                        detail,
                    })?,
                )
            }
        };
        // An image's config files are bound into it from beside the rootfs.
        let files_dir = match image {
            Some(_) => release_dir.join(crate::unit::OCI_CONFIG_FILES_DIR),
            None => release_dir.clone(),
        };
        let owner = match spec.config_files.is_empty() {
            true => None,
            false => config_file_owner(app, release, image.as_ref().map(|record| &record.run.user)).await?,
        };
        for file in &spec.config_files {
            let path = files_dir.join(file.path.as_str());
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io_error("creating", parent))?;
            }
            drover_protocol::keyfile::write_atomic(&path, file.content.as_bytes(), file.mode.bits())
                .map_err(key_error("writing", &path))?;
            match owner {
                Some((uid, gid)) => std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(io_error("changing the owner of", &path))?,
                // A dynamic user is one of "others" to a root-owned file.
                None if file.mode.bits() & 0o004 == 0 && runs_as_dynamic_user(spec, image.as_ref()) => {
                    self.status.event(
                        now(),
                        Some(app),
                        format!(
                            "config file {} has mode {:04o}: only root can read it, and {} runs as a dynamic user; set `user` in the spec (the file is then that user's) or a mode that lets others read it",
                            file.path.as_str(),
                            file.mode.bits(),
                            release.version
                        ),
                    );
                }
                None => {}
            }
        }
        let unit = crate::unit::unit_name(app);
        let unit_path = self.unit_dir.join(&unit);
        let current = local::current_link(&self.state_dir, app);
        let environment_path = local::environment_file(&self.state_dir, app);
        let text = match &image {
            // systemd cannot set up `RootDirectory=` with `MountAPIVFS=` through a symlink
            // (226/NAMESPACE, EBUSY on the mounts it makes below it, seen on systemd 252), so
            // an image's unit names its release directory itself; the switch of `current`
            // still happens, and a rollback re-renders the unit for the release it goes to.
            Some(record) => crate::unit::render_oci(
                app,
                &release.version,
                spec,
                &release_dir,
                &environment_path,
                &record.run,
            )?,
            None => crate::unit::render(app, &release.version, spec, &current, &environment_path)?,
        };
        let environment = crate::unit::render_environment(app, spec, image.as_ref().map(|record| &record.run))?;
        if let Some(hook) = &spec.hooks.pre_start {
            crate::hooks::run_hook("pre_start", hook, &release_dir, &spec.service.environment).await?;
        }
        // The environment (often secrets) only root reads; systemd reads it as root before
        // it drops to the app's user. Written right before the unit that names it, and
        // again for the release a rollback goes back to.
        drover_protocol::keyfile::write_atomic(&environment_path, environment.as_bytes(), 0o600)
            .map_err(key_error("writing", &environment_path))?;
        drover_protocol::keyfile::write_atomic(&unit_path, text.as_bytes(), 0o644)
            .map_err(key_error("writing", &unit_path))?;
        Ok(Prepared { unit, release_dir })
    }

    /// Steps 3-4 for a prepared release: switch, reload, restart (journaled), health. Any
    /// failure from here on is a verdict: the release may have run.
    async fn switch_and_check(&mut self, app: &AppName, release: &AppRelease, prepared: Prepared) -> Verdict {
        match self.switch_and_restart(app, release, &prepared).await {
            Ok(Ok(restarts)) => {
                self.check_then_post_start(app, release, &prepared, None, restarts)
                    .await
            }
            Ok(Err(job)) => Verdict::Unhealthy(job),
            Err(error) => Verdict::Unhealthy(error.to_string()),
        }
    }

    /// Switches `current`, restarts the unit and journals when the restart finished and
    /// the unit's `NRestarts` then (returned); the inner error says how the restart job
    /// failed.
    async fn switch_and_restart(
        &mut self,
        app: &AppName,
        release: &AppRelease,
        prepared: &Prepared,
    ) -> Result<Result<u32, String>, StepError> {
        let unit = &prepared.unit;
        let current = local::current_link(&self.state_dir, app);
        local::switch_current(&self.state_dir, app, &release.version).map_err(io_error("switching", &current))?;
        crate::faults::pause_point("after-switch", &self.state_dir);
        self.systemd.daemon_reload().await?;
        self.systemd.enable(unit).await?;
        let outcome = self.systemd.restart(unit, JOB_TIMEOUT).await?;
        if outcome != JobOutcome::Done {
            // The job's result says only that it failed; the unit's `Result` and exit
            // status say why (217/USER, 203/EXEC, ...), which is what the operator needs.
            let cause = match self.systemd.status(unit).await {
                Ok(status) => status.failure_cause(),
                Err(error) => {
                    tracing::warn!(%app, "reading why {unit} failed: {error}");
                    None
                }
            };
            return Ok(Err(match cause {
                Some(cause) => format!("{unit} failed: {cause}"),
                None => format!("systemd could not restart {unit}: job {outcome}"),
            }));
        }
        let restarted_at = now();
        let restarts = self.systemd.status(unit).await?.n_restarts;
        if let Some(activation) = self.record(app).activation.as_mut() {
            activation.restarted_at = Some(restarted_at);
            activation.restarts_at_start = restarts;
        }
        self.save(app)?;
        Ok(Ok(restarts))
    }

    /// Resumes the health check of `release`, restarted at `restarted_at` by the journal,
    /// without restarting it: the grace period goes on from there.
    async fn resume_check(
        &mut self,
        app: &AppName,
        release: &AppRelease,
        restarted_at: Timestamp,
        restarts: u32,
    ) -> Verdict {
        let elapsed = crate::health::elapsed_since(restarted_at, SystemTime::now());
        let grace = release.spec.health.grace_period.to_std();
        self.status.event(
            now(),
            Some(app),
            format!(
                "resuming the health check of {} (restarted at {restarted_at}, {} s of its {} grace period left); not restarting it",
                release.version,
                grace.saturating_sub(elapsed).as_secs(),
                release.spec.health.grace_period
            ),
        );
        let prepared = Prepared {
            unit: crate::unit::unit_name(app),
            release_dir: crate::install::releases_dir(&self.state_dir, app).join(release.version.as_str()),
        };
        self.check_then_post_start(app, release, &prepared, Some(elapsed), restarts)
            .await
    }

    /// Step 4 and `post_start`: health from the restart (`resumed`: that long ago), then
    /// the hook when healthy.
    async fn check_then_post_start(
        &self,
        app: &AppName,
        release: &AppRelease,
        prepared: &Prepared,
        resumed: Option<StdDuration>,
        restarts: u32,
    ) -> Verdict {
        let spec = &release.spec;
        let verdict = match self
            .check_health(app, release, &prepared.unit, &prepared.release_dir, resumed, restarts)
            .await
        {
            Ok(verdict) => verdict,
            Err(error) => return Verdict::Unhealthy(error.to_string()),
        };
        if verdict == Verdict::Healthy
            && let Some(hook) = &spec.hooks.post_start
            && let Err(error) =
                crate::hooks::run_hook("post_start", hook, &prepared.release_dir, &spec.service.environment).await
        {
            return Verdict::Unhealthy(error.to_string());
        }
        verdict
    }

    async fn check_health(
        &self,
        app: &AppName,
        release: &AppRelease,
        unit: &str,
        release_dir: &Path,
        resumed: Option<StdDuration>,
        restarts_at_start: u32,
    ) -> Result<Verdict, StepError> {
        let health = &release.spec.health;
        let started = Instant::now();
        let before = resumed.unwrap_or(StdDuration::ZERO);
        let mut gate = match resumed {
            Some(elapsed) => Gate::resumed(health, restarts_at_start, elapsed),
            None => Gate::new(health, restarts_at_start),
        };
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
            let elapsed = before + started.elapsed();
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
            if let Verdict::Unhealthy(reason) = verdict {
                // A unit that failed or restarts has systemd's cause in its status.
                return Ok(Verdict::Unhealthy(match status.failure_cause() {
                    Some(cause) => format!("{reason}; {unit} failed: {cause}"),
                    None => reason,
                }));
            }
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

/// The cache blobs to keep: the desired releases' artifacts (an image's config and layers
/// too, as far as its cached manifest names them, partial downloads included), and every
/// blob an OCI release still on disk came from (its `image.json`). Tarballs are not kept
/// for releases on disk: staging never needs them again.
fn blobs_in_use(cache: &Cache, state_dir: &Path, desired: &Manifest) -> Vec<Digest> {
    let mut keep: BTreeSet<Digest> = BTreeSet::new();
    for release in desired.apps.values() {
        match &release.artifact {
            Artifact::Tarball { digest, .. } | Artifact::OciTarball { digest, .. } => {
                keep.insert(digest.clone());
            }
            Artifact::Oci { digest, .. } => keep.extend(crate::oci::pull::cached_blobs(cache, digest)),
        }
    }
    if let Ok(apps) = std::fs::read_dir(state_dir.join("apps")) {
        for app in apps.filter_map(Result::ok) {
            let Ok(releases) = std::fs::read_dir(app.path().join("releases")) else {
                continue;
            };
            for release in releases.filter_map(Result::ok) {
                keep.extend(crate::oci::pull::release_blobs(&release.path()));
            }
        }
    }
    keep.into_iter().collect()
}

/// Whether the host's user database (through NSS, as systemd asks it) has `id` in
/// `database` (`passwd` or `group`). root and nobody are always there for systemd. When
/// `getent` cannot say (missing, failing), the answer is yes: systemd will tell.
async fn host_knows(database: &str, id: u32) -> bool {
    if id == 0 || id == 65534 {
        return true;
    }
    let status = tokio::process::Command::new("getent")
        .arg(database)
        .arg(id.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    // getent exits 2 when the key is not found.
    !matches!(status.map(|status| status.code()), Ok(Some(2)))
}

/// Who owns the config files `release` writes: the user the app runs as (with the spec's
/// group, else that user's primary group; an image's numeric ids), so a file the spec made
/// 0600 is readable by the app and by no one else. `None` for an app that runs as root
/// and for a dynamic user (`DynamicUser=yes`, no fixed uid to give the file to): those
/// files stay root's, so a dynamic-user app can read only config files whose mode lets
/// others read them. A user or group the host does not know fails the step before anything
/// runs, as systemd would fail the start.
async fn config_file_owner(
    app: &AppName,
    release: &AppRelease,
    image_user: Option<&RunAs>,
) -> Result<Option<(u32, u32)>, StepError> {
    if let Some(user) = image_user {
        return Ok(match user {
            RunAs::Ids { uid, gid, .. } if (*uid, *gid) != (0, 0) => Some((*uid, *gid)),
            _ => None,
        });
    }
    let service = &release.spec.service;
    let Some(user) = &service.user else {
        return Ok(None);
    };
    let unknown = |database: &str, name: &str, detail: String| StepError::HostUser {
        app: app.clone(),
        version: release.version.clone(),
        detail: format!(
            "the spec runs it as {database} {name}, who owns its config files, and {detail}; create it on this host or change the spec"
        ),
    };
    let passwd = getent("passwd", user.as_str())
        .await
        .map_err(|detail| unknown("user", user.as_str(), detail))?;
    let ids = |entry: &str, index: usize| entry.split(':').nth(index).and_then(|field| field.parse::<u32>().ok());
    let (Some(uid), Some(primary_gid)) = (ids(&passwd, 2), ids(&passwd, 3)) else {
        return Err(unknown("user", user.as_str(), format!("getent gave {passwd:?}")));
    };
    let gid = match &service.group {
        Some(group) => {
            let entry = getent("group", group.as_str())
                .await
                .map_err(|detail| unknown("group", group.as_str(), detail))?;
            ids(&entry, 2).ok_or_else(|| unknown("group", group.as_str(), format!("getent gave {entry:?}")))?
        }
        None => primary_gid,
    };
    Ok(((uid, gid) != (0, 0)).then_some((uid, gid)))
}

/// Whether the app runs as a systemd `DynamicUser` (no `user` for a tarball, no user in
/// the image nor the spec for an image).
fn runs_as_dynamic_user(spec: &drover_protocol::AppSpec, image: Option<&crate::oci::image::ImageRecord>) -> bool {
    match image {
        Some(record) => matches!(record.run.user, RunAs::Dynamic),
        None => spec.service.user.is_none(),
    }
}

/// The `getent DATABASE KEY` line, or why there is none.
async fn getent(database: &str, key: &str) -> Result<String, String> {
    let output = tokio::time::timeout(
        StdDuration::from_secs(30),
        tokio::process::Command::new("getent")
            .arg(database)
            .arg(key)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "getent did not answer within 30 s".to_owned())?
    .map_err(|error| format!("getent could not be started: {error}"))?;
    match output.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()),
        // getent exits 2 when the key is not found.
        Some(2) => Err(format!("it is not in this host's {database} database")),
        _ => Err(format!("getent {database} {key} failed ({})", output.status)),
    }
}

/// Runs `useradd` or `groupadd` with `arguments`; the error has its output.
async fn run_account_tool(tool: &str, arguments: &[&str]) -> Result<(), String> {
    let output = tokio::time::timeout(
        StdDuration::from_secs(60),
        tokio::process::Command::new(tool)
            .args(arguments)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("{tool} did not finish within 60 s"))?
    .map_err(|error| format!("{tool} could not be started: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{tool} {}: {}",
            output.status,
            crate::reporting::bounded(String::from_utf8_lossy(&output.stderr).trim())
        ))
    }
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
    use std::collections::BTreeMap;

    use super::*;
    use crate::oci::testing::{Entry, TestImage, TestRegistry, crypto, layer};

    #[tokio::test]
    async fn cache_gc_keeps_the_blobs_of_images_on_disk_and_drops_the_rest() {
        crypto();
        let registry = TestRegistry::start().await;
        let base = layer(&[Entry::File("bin/app", b"#!/bin/sh\n", 0o755)]);
        let config = r#"{"config":{"Cmd":["/bin/app"]}}"#;
        let one = TestImage::new(config, vec![base.clone(), layer(&[Entry::File("v", b"1", 0o644)])]);
        let two = TestImage::new(config, vec![base.clone(), layer(&[Entry::File("v", b"2", 0o644)])]);
        let three = TestImage::new(config, vec![base.clone(), layer(&[Entry::File("v", b"3", 0o644)])]);
        for image in [&one, &two, &three] {
            registry.push(image);
        }
        let registries = registry.plain_http();
        let directory = tempfile::tempdir().expect("tempdir");
        let state_dir = directory.path().join("state");
        let cache = Cache::new(state_dir.join("cache"));
        let app: AppName = "web".parse().expect("app");
        let spec: drover_protocol::AppSpec = serde_json::from_str(r#"{"service":{}}"#).expect("spec");
        let mut releases = Vec::new();
        for (version, image) in [("1", &one), ("2", &two), ("3", &three)] {
            let reference = registry.reference("web", &image.digest);
            let pulled = crate::oci::pull::pull(&registries, &cache, &reference, &image.digest, 1 << 30)
                .await
                .expect("pulled");
            let version: Version = version.parse().expect("version");
            if version.as_str() != "3" {
                crate::oci::stage::stage_image(
                    &pulled,
                    &spec,
                    &state_dir,
                    &app,
                    &version,
                    &crate::oci::LayerLimits::default(),
                )
                .expect("staged");
            }
            releases.push(AppRelease {
                version,
                artifact: Artifact::Oci {
                    reference,
                    digest: image.digest.clone(),
                },
                spec: spec.clone(),
            });
        }
        // 1 was pruned; 2 is on disk; 3 is desired and pulled but not staged yet.
        crate::install::prune(&state_dir, &app, 1, &BTreeSet::from([releases[1].version.clone()])).expect("pruned");
        let desired = Manifest {
            schema: drover_protocol::manifest::MANIFEST_SCHEMA,
            host: "web-01".parse().expect("host"),
            serial: 1,
            issued_at: Timestamp::EPOCH,
            expires_at: Timestamp::from_unix(1),
            hold: false,
            apps: BTreeMap::from([(app.clone(), releases[2].clone())]),
        };
        cache
            .collect_garbage(&blobs_in_use(&cache, &state_dir, &desired))
            .expect("collected");
        let cached = |bytes: &[u8]| cache.path_of(&Digest::of(bytes)).is_file();
        assert!(cached(&base), "shared by everything");
        assert!(
            !cached(&one.layers[1]) && !cached(&one.manifest),
            "release 1 is gone, so are its own blobs"
        );
        assert!(cached(&two.layers[1]) && cached(&two.manifest), "release 2 is on disk");
        assert!(
            crate::oci::pull::is_cached(&cache, &three.digest),
            "release 3 is desired"
        );
    }

    #[tokio::test]
    async fn the_host_user_database_is_asked_through_getent() {
        assert!(host_knows("passwd", 0).await, "root is always there for systemd");
        assert!(host_knows("group", 65534).await, "so is nobody");
        assert!(
            !host_knows("passwd", 4_000_000_000).await,
            "getent (libc-bin) must be installed"
        );
        assert!(!host_knows("group", 4_000_000_000).await);
    }

    #[tokio::test]
    async fn config_files_belong_to_the_user_the_app_runs_as() {
        let app: AppName = "web".parse().expect("app");
        let release = |service: &str| -> AppRelease {
            serde_json::from_str(&format!(
                r#"{{"version":"1","artifact":{{"kind":"tarball","url":"https://example.com/web.tar.gz",
                    "digest":"{}","size":3}},"spec":{{"service":{service}}}}}"#,
                Digest::of(b"web")
            ))
            .expect("release")
        };
        let owner = |service: &'static str| {
            let app = app.clone();
            async move { config_file_owner(&app, &release(service), None).await }
        };
        assert_eq!(
            owner(r#"{"command":["x"]}"#).await.expect("dynamic"),
            None,
            "a dynamic user"
        );
        assert_eq!(owner(r#"{"command":["x"],"user":"root"}"#).await.expect("root"), None);
        assert_eq!(
            owner(r#"{"command":["x"],"user":"nobody"}"#).await.expect("nobody"),
            Some((65534, 65534)),
            "the user's primary group"
        );
        assert_eq!(
            owner(r#"{"command":["x"],"user":"nobody","group":"root"}"#)
                .await
                .expect("nobody:root"),
            Some((65534, 0)),
            "the spec's group"
        );
        let error = owner(r#"{"command":["x"],"user":"no_such_user_here"}"#)
            .await
            .expect_err("unknown user");
        assert!(
            error.to_string().contains("not in this host's passwd database"),
            "{error}"
        );
        let image_release = release(r#"{}"#);
        let ids = RunAs::Ids {
            uid: 1000,
            gid: 1001,
            home: "/home/app".into(),
        };
        assert_eq!(
            config_file_owner(&app, &image_release, Some(&RunAs::Dynamic))
                .await
                .expect("dynamic"),
            None
        );
        assert_eq!(
            config_file_owner(&app, &image_release, Some(&ids)).await.expect("ids"),
            Some((1000, 1001)),
            "an image's numeric ids"
        );
    }
}
