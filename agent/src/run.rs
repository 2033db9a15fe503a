//! `drover-agent run`: the agent's life. Four tasks share one small runtime:
//!
//! - the **poller** (this function's own loop) long-polls the host's manifest with its
//!   ETag, accepts a new one only through [`drover_protocol::accept`], persists the
//!   accepted record ([`crate::accepted`]) *before* handing it on (a failed write, say
//!   a full disk, keeps the previous manifest and is retried), and backs off with jitter
//!   while the coordinator is unreachable (the host keeps running what it runs); any
//!   successful exchange (a report getting through) ends a back-off at once. Every task
//!   talks to the current one of the configured coordinators ([`crate::coordinators`]):
//!   an unreachable one moves them all to the next;
//! - the **reconciler** runs one task per app (at most [`APP_CONCURRENCY`] in a step at
//!   once): each finishes its app's interrupted switch (the journal), then brings the app
//!   to the latest accepted manifest, retrying a failed install after its journaled
//!   back-off, and removes the app when the manifest drops it. Apps do not wait for each
//!   other: a pin of one lands while another sits in its health grace. The artifact cache
//!   is collected only while no app is in a step, so no download loses its blobs;
//! - the **reporter** ([`crate::reporting`]) reports every change and a heartbeat;
//! - the **renewer** ([`crate::renew`]) renews the host certificate in band once a third
//!   of its lifetime is left; every connection presents the newest one.
//!
//! SIGTERM (the `shutdown` future) stops polling, lets the reconciler finish its step
//! for up to [`DRAIN`], sends a last report and returns. Apps are their own units: the
//! agent stopping or restarting never stops them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use drover_protocol::AppName;
use drover_protocol::api::MAX_WAIT_SECONDS;
use drover_protocol::manifest::MAX_MANIFEST_BYTES;
use drover_protocol::{Manifest, Timestamp, Trust};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::AgentConfig;
use crate::coordinators::Coordinators;
use crate::error::Error;
use crate::executor::{APP_CONCURRENCY, AppNext, Executor, UNIT_DIR};
use crate::fetch::Cache;
use crate::notify::Notifier;
use crate::reporting::{Reporter, Shared, stopped};
use crate::state::StateDir;

/// How long SIGTERM waits for the install step in progress (below the unit's
/// `TimeoutStopSec=30`).
pub const DRAIN: StdDuration = StdDuration::from_secs(20);

/// The longest wait between attempts while the coordinator is down.
const BACKOFF_CAP: StdDuration = StdDuration::from_secs(60);

/// How often the journal is told again (at ERROR) that the coordinator refuses this
/// host's certificate, with the command to re-join.
const REFUSAL_LOG_EVERY: StdDuration = StdDuration::from_secs(3600);

fn now() -> Timestamp {
    Timestamp::from_system(std::time::SystemTime::now())
}

/// Runs the agent until `shutdown` completes.
pub async fn run(config: &AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let state = StateDir::new(&config.state_dir);
    if !state.joined() {
        return Err(Error::NotJoined(state.root().to_path_buf()));
    }
    if config.coordinators.is_empty() {
        return Err(Error::NotJoined(state.root().to_path_buf()));
    }
    let coordinators = Arc::new(Coordinators::open(config.coordinators.clone(), &config.state_dir));
    let identity = state.load_identity()?;
    let trust_bytes = std::fs::read(state.trust()).map_err(|source| Error::Io {
        operation: "reading",
        path: state.trust(),
        source,
    })?;
    let trust = Trust::bootstrap(&trust_bytes, now()).map_err(|rejection| Error::Trust {
        path: state.trust(),
        rejection,
    })?;
    // Every host connection presents the certificate this holds at its handshake, so a
    // renewal (crate::renew) reaches every task without rebuilding their clients.
    let client_identity = Arc::new(
        crate::renew::ClientIdentity::new(&identity.certificate_pem, &identity.key_pem)
            .map_err(|detail| Error::State(format!("the stored identity is unusable: {detail}")))?,
    );
    let tls = crate::renew::host_config(&identity.ca_pem, Arc::clone(&client_identity))
        .map_err(|detail| Error::State(format!("the stored identity is unusable: {detail}")))?;
    let client = crate::fetch::coordinator_client(tls).map_err(Error::State)?;
    let public_tls = crate::tls::public_config(&identity.ca_pem, &crate::tls::SYSTEM_CA_BUNDLES)
        .map_err(|detail| Error::State(format!("the stored CA is unusable: {detail}")))?;
    let public = crate::fetch::artifact_client(public_tls).map_err(Error::State)?;
    // Spec copies an older agent left readable by every user become root's (issue 13).
    if let Err(error) = crate::local::restrict_state_dir(&config.state_dir) {
        tracing::warn!("restricting the state directory to root: {error}");
    }
    // What crashed installs, prunes and removals left behind goes before anything is
    // staged (nothing else writes there yet); a failure is said, and the agent goes on.
    let mut leftovers_error = crate::install::clean_leftovers(&config.state_dir)
        .err()
        .map(|error| error.to_string());
    for leftover in crate::local::removal_leftovers(&config.state_dir) {
        if let Err(error) = crate::install::remove_tree(&leftover) {
            leftovers_error.get_or_insert_with(|| error.to_string());
        }
    }
    let records = crate::local::load_all(&config.state_dir).map_err(Error::State)?;
    let systemd = crate::systemd::Systemd::connect()
        .await
        .map_err(|error| Error::State(format!("cannot talk to systemd: {error}")))?;

    let status = Shared::new();
    for (app, record) in &records {
        let current = record.current.as_ref().map(|release| &release.version);
        // Until the reconciler has looked: an interrupted switch is still starting.
        let state = if record.activation.is_some() {
            drover_protocol::report::AppState::Starting
        } else {
            drover_protocol::report::AppState::Healthy
        };
        status.app_state(app, current, current, state, None);
    }
    if let Some(error) = leftovers_error {
        status.event(
            now(),
            None,
            format!("cleaning up after interrupted installs failed: {error}; the space stays used until it is removed"),
        );
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let reporter = Reporter {
        coordinators: Arc::clone(&coordinators),
        client: client.clone(),
        host: config.host_id.clone(),
        facts: crate::join::facts(),
        heartbeat: config.poll_interval.to_std().max(StdDuration::from_secs(1)),
        status_file: config.state_dir.join("status.json"),
    };
    let reporter_task = tokio::spawn(reporter.run(status.clone(), stop_rx.clone()));
    let renewer = crate::renew::Renewer {
        coordinators: Arc::clone(&coordinators),
        client: client.clone(),
        host: config.host_id.clone(),
        state: state.clone(),
        key_pem: identity.key_pem.clone(),
        identity: client_identity,
    };
    let renewer_task = tokio::spawn(renewer.run(identity.certificate_pem.clone(), stop_rx.clone()));

    // The accepted record (migrated from an earlier agent's files if need be), its
    // manifest checked again: the file could have been tampered with.
    let loaded = crate::accepted::load(&state, &trust, &config.host_id, now()).map_err(Error::State)?;
    for note in &loaded.notes {
        tracing::warn!("{note}");
    }
    let mut floor = loaded.floor;
    let stored = loaded.manifest.map(Arc::new);
    let (desired_tx, desired_rx) = watch::channel::<Option<Arc<Manifest>>>(stored);

    let executor = Executor {
        state_dir: config.state_dir.clone(),
        unit_dir: UNIT_DIR.into(),
        cache: Cache::new(config.state_dir.join("cache")),
        client: client.clone(),
        coordinators: Arc::clone(&coordinators),
        public,
        registries: Arc::new(crate::oci::registry::Registries::new(
            config.registries.clone(),
            &crate::tls::SYSTEM_CA_BUNDLES,
        )),
        systemd,
        limits: crate::unpack::UnpackLimits {
            max_total_bytes: config.max_release_size,
            ..crate::unpack::UnpackLimits::default()
        },
        status: status.clone(),
        records,
    };
    let mut reconciler = tokio::spawn(reconcile_loop(executor, desired_rx, stop_rx.clone()));

    let notifier = Notifier::from_env();
    notifier.notify("READY=1");
    tracing::info!(
        "drover-agent {} polling {} as {}{}",
        env!("CARGO_PKG_VERSION"),
        coordinators.current(),
        config.host_id,
        match coordinators.urls() {
            [_] => String::new(),
            all => format!(" (coordinators: {})", all.join(", ")),
        }
    );
    let poller = Poller {
        coordinators,
        client,
        wait: config.long_poll.to_std().as_secs().min(MAX_WAIT_SECONDS),
        interval: config.poll_interval.to_std(),
        etag: floor.etag(),
    };
    // The watchdog proves the runtime turns: the agent is one thread, so a step that
    // blocked it would stop these pings and systemd would restart the agent.
    let notifier = Arc::new(notifier);
    if let Some(interval) = Notifier::watchdog_interval() {
        let notifier = Arc::clone(&notifier);
        tokio::spawn(async move {
            loop {
                notifier.notify("WATCHDOG=1");
                tokio::time::sleep(interval).await;
            }
        });
    }
    let mut shutdown = std::pin::pin!(shutdown);
    let mut failures = 0u32;
    let mut save_failures = 0u32;
    let mut poller = poller;
    let mut contact = status.contact();
    // When the refusal was last logged at ERROR (it is repeated every hour), and whether
    // it is kept on disk for `drover-agent status` (also from before a restart).
    let mut refusal_logged: Option<std::time::Instant> = None;
    let mut refusal_kept = crate::reporting::Refusal::path(&config.state_dir).exists();
    loop {
        contact.mark_unchanged();
        let pause = tokio::select! {
            outcome = poller.poll() => {
                if !matches!(outcome, PollOutcome::Refused(_) | PollOutcome::Failed(_)) && (refusal_kept || refusal_logged.is_some()) {
                    refusal_logged = None;
                    refusal_kept = false;
                    status.accepted();
                    if let Err(error) = crate::reporting::Refusal::clear(&config.state_dir) {
                        tracing::warn!("removing {}: {error}", crate::reporting::Refusal::path(&config.state_dir).display());
                    }
                    tracing::warn!("the coordinator takes this host's certificate again");
                }
                match outcome {
                PollOutcome::NotModified => {
                    failures = 0;
                    if poller.wait == 0 { poller.interval } else { StdDuration::ZERO }
                }
                PollOutcome::Refused(refusal) => {
                    failures = 0;
                    status.refused(refusal.clone());
                    let refusal = status.refusal().unwrap_or(refusal);
                    if !refusal_kept {
                        match refusal.store(&config.state_dir) {
                            Ok(()) => refusal_kept = true,
                            Err(error) => tracing::warn!("writing {}: {error}", crate::reporting::Refusal::path(&config.state_dir).display()),
                        }
                    }
                    if refusal_logged.is_none() {
                        status.record_event(now(), None, crate::reporting::bounded(&refusal.explain(&config.host_id)));
                    }
                    if refusal_logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
                        tracing::error!("{}", refusal.explain(&config.host_id));
                        refusal_logged = Some(std::time::Instant::now());
                    }
                    crate::backoff::refused_retry()
                }
                PollOutcome::Manifest { bytes, etag } => {
                    failures = 0;
                    let mut pause = StdDuration::ZERO;
                    match floor.offer(&bytes, &trust, &config.host_id, now()) {
                        crate::accepted::Offer::InForce => poller.etag = etag,
                        crate::accepted::Offer::Accepted(verified) => {
                            // Persist before acting: a crash from here on never lets a
                            // lower serial back in. A failed write (a full disk) changes
                            // nothing: the host keeps its manifest and the same answer is
                            // taken again after a back-off (the ETag stays).
                            match floor.commit(&state, &verified) {
                                Ok(()) => {
                                    poller.etag = etag;
                                    save_failures = 0;
                                    let manifest = verified.manifest().clone();
                                    status.update(|status| status.manifest_rejection = None);
                                    status.event(now(), None, format!("accepted manifest serial {}", manifest.serial));
                                    desired_tx.send_replace(Some(Arc::new(manifest)));
                                }
                                Err(error) => {
                                    save_failures += 1;
                                    pause = crate::backoff::delay(save_failures, BACKOFF_CAP);
                                    let reason = format!(
                                        "manifest serial {} passed every check but recording it failed ({error}); \
                                         keeping the previous manifest, retrying in {:.0}s",
                                        verified.manifest().serial,
                                        pause.as_secs_f64().ceil()
                                    );
                                    tracing::warn!("{reason}");
                                    if save_failures == 1 {
                                        status.event(now(), None, reason);
                                    }
                                }
                            }
                        }
                        crate::accepted::Offer::Rejected(rejection) => {
                            poller.etag = etag;
                            let reason = rejection.to_string();
                            status.update(|status| status.manifest_rejection = Some(crate::reporting::bounded(&reason)));
                            status.event(now(), None, format!("rejected a manifest: {reason}"));
                        }
                    }
                    pause
                }
                PollOutcome::Failed(reason) => {
                    failures += 1;
                    let delay = crate::backoff::delay(failures, BACKOFF_CAP);
                    tracing::warn!("polling failed ({reason}); retrying in {:.1}s", delay.as_secs_f64());
                    if failures == 1 {
                        status.event(now(), None, format!("the coordinator is unreachable: {reason}"));
                    }
                    delay
                }
            }},
            () = &mut shutdown => break,
        };
        if !pause.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                // The coordinator took a report since this poll began: it is back, so the
                // rest of the back-off would only delay what it has for this host.
                Ok(()) = contact.changed(), if failures > 0 => {
                    tracing::info!("the coordinator answers again (a report got through); polling now");
                }
                () = &mut shutdown => break,
            }
        }
    }
    notifier.notify("STOPPING=1");
    tracing::info!("draining: waiting up to {}s for the step in progress", DRAIN.as_secs());
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN, &mut reconciler).await.is_err() {
        // The journal makes this as safe as a crash: the next start finishes the step.
        reconciler.abort();
        tracing::warn!("the install step did not finish in time; it resumes at the next start");
    }
    let _ = tokio::time::timeout(StdDuration::from_secs(5), reporter_task).await;
    renewer_task.abort();
    Ok(())
}

/// The reconciler: one task per app, fed the latest manifest, until `stop`. Dropping
/// this future (the drain timed out) aborts the app tasks with it: the journal makes that
/// as safe as a crash.
async fn reconcile_loop(
    executor: Executor,
    mut desired: watch::Receiver<Option<Arc<Manifest>>>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(APP_CONCURRENCY));
    let idle = Arc::new(Notify::new());
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut feeds: std::collections::BTreeMap<AppName, watch::Sender<Option<Arc<Manifest>>>> =
        std::collections::BTreeMap::new();
    // Every app the host has something of gets a task at once: it finishes an interrupted
    // switch, or removes what the manifest no longer lists.
    let mut known: std::collections::BTreeSet<AppName> = executor.records.keys().cloned().collect();
    known.extend(crate::local::app_dirs(&executor.state_dir));
    let mut startup = Some(executor.records.clone());
    let mut manifest = desired.borrow_and_update().clone();
    let mut fresh = true;
    loop {
        if fresh {
            fresh = false;
            if let Some(manifest) = &manifest {
                executor.note_manifest(manifest);
            }
            feeds.retain(|_, feed| !feed.is_closed());
            for feed in feeds.values() {
                feed.send_replace(manifest.clone());
            }
            let wanted = manifest.iter().flat_map(|manifest| manifest.apps.keys().cloned());
            let starting: Vec<AppName> = std::mem::take(&mut known).into_iter().chain(wanted).collect();
            for app in starting {
                if feeds.contains_key(&app) {
                    continue;
                }
                // The records loaded at start, once; later, the record as on disk now (a
                // task that ended may have changed it).
                let record = match &startup {
                    Some(records) => records.get(&app).cloned(),
                    None => crate::local::load_all(&executor.state_dir)
                        .ok()
                        .and_then(|records| records.get(&app).cloned()),
                };
                let (feed, receiver) = watch::channel(manifest.clone());
                tasks.spawn(app_loop(
                    executor.for_app(&app, record),
                    app.clone(),
                    receiver,
                    Arc::clone(&permits),
                    Arc::clone(&idle),
                    stop.clone(),
                ));
                feeds.insert(app, feed);
            }
            startup = None;
        }
        tokio::select! {
            changed = desired.changed() => {
                if changed.is_err() {
                    break;
                }
                manifest = desired.borrow_and_update().clone();
                fresh = true;
            }
            () = idle.notified() => {
                // Collected only when no app holds a permit: no step, no download, in flight.
                if let (Some(manifest), Ok(_all)) = (&manifest, permits.try_acquire_many(APP_CONCURRENCY as u32)) {
                    executor.collect_garbage(manifest);
                }
            }
            () = stopped(&mut stop) => break,
            Some(_) = tasks.join_next() => feeds.retain(|_, feed| !feed.is_closed()),
        }
        if *stop.borrow() {
            break;
        }
    }
    // Each app task stops after the step it is in.
    while tasks.join_next().await.is_some() {}
}

/// One app's task: finishes its interrupted switch, then reconciles the app whenever the
/// manifest changes or its retry time comes, holding one of the shared permits for each
/// round of steps. Ends when the app is removed or at `stop`.
async fn app_loop(
    mut executor: Executor,
    app: AppName,
    mut desired: watch::Receiver<Option<Arc<Manifest>>>,
    permits: Arc<Semaphore>,
    idle: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    {
        let Ok(_permit) = permits.acquire().await else { return };
        executor.recover().await;
    }
    loop {
        let manifest = desired.borrow_and_update().clone();
        let next = match &manifest {
            Some(manifest) => {
                let permit = tokio::select! {
                    permit = permits.acquire() => permit,
                    () = stopped(&mut stop) => return,
                };
                let Ok(_permit) = permit else { return };
                executor.reconcile_app(manifest, &app).await
            }
            None => AppNext::Wait,
        };
        idle.notify_one();
        // Failed installs wait for their journaled retry time, a new manifest does not.
        let again = match next {
            AppNext::Removed => return,
            AppNext::Wait => None,
            AppNext::RetryAt(at) => Some(until(at, std::time::SystemTime::now())),
        };
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            () = async {
                match again {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => std::future::pending().await,
                }
            } => {}
            () = stopped(&mut stop) => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

#[derive(Debug)]
enum PollOutcome {
    NotModified,
    Manifest {
        bytes: Vec<u8>,
        etag: Option<String>,
    },
    Failed(String),
    /// The coordinator no longer takes this host's certificate.
    Refused(crate::reporting::Refusal),
}

#[derive(Debug)]
struct Poller {
    coordinators: Arc<Coordinators>,
    client: reqwest::Client,
    wait: u64,
    interval: StdDuration,
    etag: Option<String>,
}

impl Poller {
    /// One poll of the current coordinator; an unreachable one moves the agent to the
    /// next ([`Coordinators::observe`]), which the back-off after a failure then polls.
    async fn poll(&self) -> PollOutcome {
        let attempt = self
            .coordinators
            .attempt(&format!("/v1/agent/manifest?wait={}", self.wait));
        let mut request = self
            .client
            .get(&attempt.url)
            .timeout(StdDuration::from_secs(self.wait + 30));
        if let Some(etag) = &self.etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                self.coordinators.observe(&attempt, Err(&error));
                return PollOutcome::Failed(crate::error::chain(&error));
            }
        };
        let status = response.status();
        self.coordinators.observe(&attempt, Ok(status));
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return PollOutcome::NotModified;
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            if let Some(refusal) = crate::reporting::Refusal::from_answer(status, &body, now()) {
                return PollOutcome::Refused(refusal);
            }
            let message = serde_json::from_str::<drover_protocol::api::ErrorBody>(&body)
                .map(|error| error.error)
                .unwrap_or_default();
            return PollOutcome::Failed(format!("HTTP {status} {message}").trim().to_owned());
        }
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut bytes = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    bytes.extend_from_slice(&chunk);
                    if bytes.len() > MAX_MANIFEST_BYTES {
                        // Enough to be refused as too large by the acceptance check.
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    self.coordinators.observe(&attempt, Err(&error));
                    return PollOutcome::Failed(crate::error::chain(&error));
                }
            }
        }
        PollOutcome::Manifest { bytes, etag }
    }
}

/// How long from `now` until the second `at` has begun (at least 100 ms, so a retry time
/// that has come does not spin). Pure.
fn until(at: Timestamp, now: std::time::SystemTime) -> StdDuration {
    let at = std::time::UNIX_EPOCH + StdDuration::from_secs(u64::try_from(at.unix()).unwrap_or(0));
    at.duration_since(now)
        .unwrap_or(StdDuration::ZERO)
        .max(StdDuration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_time_is_waited_for_until_its_second_begins_and_never_spins() {
        let now = std::time::UNIX_EPOCH + StdDuration::from_millis(100_250);
        assert_eq!(until(Timestamp::from_unix(105), now), StdDuration::from_millis(4_750));
        assert_eq!(
            until(Timestamp::from_unix(90), now),
            StdDuration::from_millis(100),
            "a time that has come"
        );
    }
}
