//! What the agent tells the coordinator, and how: the install loop updates a shared
//! [`Status`] (a short lock, never held across I/O) and the reporter, a task of its own,
//! sends it on every change and as a heartbeat. So a stuck download or a hanging hook
//! can delay nothing but itself: the coordinator keeps hearing from the host.
//!
//! Events are sent until the coordinator has taken them (a failed report keeps them for
//! the next one, bounded by the protocol's limit, oldest dropped first). Every report
//! built is also written to `<state>/status.json` for `drover-agent status`.
//!
//! Every report the coordinator takes is counted in [`Shared::contact`]: the poller,
//! backing off while the coordinator was down, wakes on it and polls at once, so a pin
//! made right after an outage does not wait out the rest of a back-off of up to a minute.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use drover_protocol::report::{
    AgentFacts, AppReport, AppState, HostReport, MAX_REPORT_EVENTS, MAX_TEXT, REPORT_SCHEMA,
};
use drover_protocol::{AppName, HostId, Timestamp, Version};
use tokio::sync::{Notify, watch};

/// The host as the agent sees it, shared by the install loop and the reporter.
#[derive(Debug, Default)]
pub struct Status {
    /// The serial of the manifest being acted on.
    pub manifest_serial: Option<u64>,
    /// Whether that manifest holds the host.
    pub held: bool,
    /// Why the last manifest was refused, until one is accepted.
    pub manifest_rejection: Option<String>,
    /// Per app.
    pub apps: BTreeMap<AppName, AppReport>,
    /// Events not yet taken by the coordinator, each with its sequence number.
    events: VecDeque<(u64, drover_protocol::report::ReportEvent)>,
    next_event: u64,
}

/// Shortens text to what a report may carry, on a character boundary.
pub fn bounded(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_TEXT - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The coordinator's answer that this host's certificate no longer enrolls it: the host
/// was removed (`drover hosts remove`), or another join replaced its certificate. Only a
/// re-join gives the host a certificate that works again, so the agent asks rarely (see
/// [`crate::backoff::refused_retry`]), keeps its apps as they run, and says how to come
/// back (`drover-agent status`, the journal at ERROR). Kept in `<state>/refused.json`
/// while it lasts, for `drover-agent status`; a re-join removes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    /// The coordinator's code: `host_removed` or `certificate_replaced`.
    pub code: String,
    /// The coordinator's message.
    pub message: String,
    /// When the agent first got it.
    pub since: Timestamp,
}

impl Refusal {
    /// The `ErrorBody` codes with which the coordinator says this certificate does not
    /// enroll the host any more (coordinator `service::host_slot`).
    pub const CODES: [&'static str; 2] = ["host_removed", "certificate_replaced"];

    /// A refusal from a 403 answer's body, if it is one of [`Refusal::CODES`].
    pub fn from_answer(status: reqwest::StatusCode, body: &str, now: Timestamp) -> Option<Refusal> {
        if status != reqwest::StatusCode::FORBIDDEN {
            return None;
        }
        let error: drover_protocol::api::ErrorBody = serde_json::from_str(body).ok()?;
        Refusal::CODES.contains(&error.code.as_str()).then(|| Refusal {
            code: error.code,
            message: bounded(&error.error),
            since: now,
        })
    }

    /// What to run to bring `host` back, for the journal and `drover-agent status`.
    pub fn rejoin(host: &HostId) -> String {
        format!(
            "on the coordinator run `drover token create --replace {host}`, then on this host the join line it prints with --force (`drover-agent join --force URL --token TOKEN --ca-sha256 HASH`)"
        )
    }

    /// One line for the journal: what happened, that apps keep running, what to do.
    pub fn explain(&self, host: &HostId) -> String {
        let what = if self.code == "certificate_replaced" {
            "another join replaced this host's certificate"
        } else {
            "this host was removed from the coordinator"
        };
        format!(
            "{what} ({}: {}); its apps keep running unchanged and the agent asks again only every few minutes; to bring it back, {}",
            self.code,
            self.message,
            Refusal::rejoin(host)
        )
    }

    /// Where it is kept.
    pub fn path(state_dir: &std::path::Path) -> PathBuf {
        state_dir.join("refused.json")
    }

    /// The one kept in `state_dir`, if any.
    pub fn load(state_dir: &std::path::Path) -> Option<Refusal> {
        let bytes = std::fs::read(Refusal::path(state_dir)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Keeps it in `state_dir` (0600, atomically).
    pub fn store(&self, state_dir: &std::path::Path) -> Result<(), drover_protocol::KeyError> {
        let body = serde_json::to_vec(self).expect("refusals serialize");
        drover_protocol::keyfile::write_atomic(&Refusal::path(state_dir), &body, 0o600)
    }

    /// Removes the kept one: the coordinator answers again, or the host re-joined.
    pub fn clear(state_dir: &std::path::Path) -> Result<(), std::io::Error> {
        match std::fs::remove_file(Refusal::path(state_dir)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }
}

/// A handle on the shared status that wakes the reporter on every change.
#[derive(Debug, Clone)]
pub struct Shared {
    status: Arc<Mutex<Status>>,
    changed: Arc<Notify>,
    /// Counts exchanges the coordinator answered with success.
    contact: Arc<watch::Sender<u64>>,
    /// Set while the coordinator refuses this host's certificate ([`Refusal`]).
    refusal: Arc<Mutex<Option<Refusal>>>,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared::new()
    }
}

impl Shared {
    /// An empty status.
    pub fn new() -> Shared {
        Shared {
            status: Arc::new(Mutex::new(Status::default())),
            changed: Arc::new(Notify::new()),
            contact: Arc::new(watch::Sender::new(0)),
            refusal: Arc::new(Mutex::new(None)),
        }
    }

    /// Notes that the coordinator refused this host's certificate; returns `true` when
    /// it did not before (the first refusal's time is kept).
    pub fn refused(&self, refusal: Refusal) -> bool {
        let mut current = self.refusal.lock().expect("refusal lock");
        let first = current.is_none();
        if first {
            *current = Some(refusal);
        }
        first
    }

    /// Clears the refusal (the coordinator answered with success); returns `true` when
    /// there was one.
    pub fn accepted(&self) -> bool {
        self.refusal.lock().expect("refusal lock").take().is_some()
    }

    /// The refusal in force, if any.
    pub fn refusal(&self) -> Option<Refusal> {
        self.refusal.lock().expect("refusal lock").clone()
    }

    /// Counts a successful exchange with the coordinator, waking whoever watches.
    pub fn reached(&self) {
        self.contact.send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Changes whenever the coordinator answered an exchange with success.
    pub fn contact(&self) -> watch::Receiver<u64> {
        self.contact.subscribe()
    }

    /// Changes the status and wakes the reporter.
    pub fn update(&self, change: impl FnOnce(&mut Status)) {
        {
            let mut status = self.status.lock().expect("status lock");
            change(&mut status);
        }
        self.changed.notify_one();
    }

    /// Records an event (also logged, at INFO).
    pub fn event(&self, at: Timestamp, app: Option<&AppName>, message: impl Into<String>) {
        let message = bounded(&message.into());
        match app {
            Some(app) => tracing::info!(%app, "{message}"),
            None => tracing::info!("{message}"),
        }
        self.record_event(at, app, message);
    }

    /// Records an event that needs the operator (a failed install, an unhealthy release,
    /// a rollback), logged at WARN so that `journalctl -u drover-agent -p warning` shows it.
    pub fn warning(&self, at: Timestamp, app: Option<&AppName>, message: impl Into<String>) {
        let message = bounded(&message.into());
        match app {
            Some(app) => tracing::warn!(%app, "{message}"),
            None => tracing::warn!("{message}"),
        }
        self.record_event(at, app, message);
    }

    /// Records an event without logging it (the caller logged it its own way).
    pub(crate) fn record_event(&self, at: Timestamp, app: Option<&AppName>, message: String) {
        self.update(|status| {
            if status.events.len() == MAX_REPORT_EVENTS {
                status.events.pop_front();
            }
            let sequence = status.next_event;
            status.next_event += 1;
            status.events.push_back((
                sequence,
                drover_protocol::report::ReportEvent {
                    at,
                    app: app.cloned(),
                    message,
                },
            ));
        });
    }

    /// Sets one app's state (and clears or sets its last error).
    pub fn app_state(
        &self,
        app: &AppName,
        current: Option<&Version>,
        desired: Option<&Version>,
        state: AppState,
        error: Option<String>,
    ) {
        self.update(|status| {
            let entry = status.apps.entry(app.clone()).or_insert_with(|| AppReport {
                current: None,
                desired: None,
                state,
                health: None,
                last_error: None,
                bad_versions: Vec::new(),
            });
            entry.current = current.cloned();
            entry.desired = desired.cloned();
            entry.state = state;
            entry.last_error = error.as_deref().map(bounded);
        });
    }

    /// Changes one app's report in place, if it is known.
    pub fn with_app(&self, app: &AppName, change: impl FnOnce(&mut AppReport)) {
        self.update(|status| {
            if let Some(entry) = status.apps.get_mut(app) {
                change(entry);
            }
        });
    }

    /// The report as it stands, and a mark to pass to [`Shared::sent`] once the
    /// coordinator has taken it.
    pub fn report(&self, host: &HostId, facts: &AgentFacts, now: Timestamp) -> (HostReport, u64) {
        let status = self.status.lock().expect("status lock");
        let events: Vec<_> = status.events.iter().map(|(_, event)| event.clone()).collect();
        let count = status.next_event;
        (
            HostReport {
                schema: REPORT_SCHEMA,
                host: host.clone(),
                sent_at: now,
                manifest_serial: status.manifest_serial,
                held: status.held,
                manifest_rejection: status.manifest_rejection.clone(),
                facts: facts.clone(),
                apps: status.apps.clone(),
                events,
            },
            count,
        )
    }

    /// Drops the events a report carried (those before `mark`): the coordinator has them.
    /// Events recorded since stay, even when the queue was full and rotated meanwhile.
    pub fn sent(&self, mark: u64) {
        let mut status = self.status.lock().expect("status lock");
        status.events.retain(|(sequence, _)| *sequence >= mark);
    }

    /// Waits for the next change.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Where and how the reporter sends.
#[derive(Debug, Clone)]
pub struct Reporter {
    /// Where reports go: `/v1/agent/report` on the current coordinator.
    pub coordinators: Arc<crate::coordinators::Coordinators>,
    /// The mTLS client.
    pub client: reqwest::Client,
    /// This host.
    pub host: HostId,
    /// Its facts.
    pub facts: AgentFacts,
    /// Heartbeat interval.
    pub heartbeat: StdDuration,
    /// Where the last report is written for `drover-agent status`.
    pub status_file: PathBuf,
}

impl Reporter {
    /// Sends a report on every change (coalesced over a short window) and every
    /// heartbeat, until `shutdown`; then one last report.
    pub async fn run(self, shared: Shared, mut shutdown: watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            self.send(&shared, &mut failures).await;
            if shared.refusal().is_some() {
                // Removed or replaced: only a re-join helps, so no report on every change,
                // only one every few minutes to notice if the coordinator takes it again.
                tokio::select! {
                    () = tokio::time::sleep(crate::backoff::refused_retry()) => {}
                    () = stopped(&mut shutdown) => break,
                }
                continue;
            }
            let wait = if failures == 0 {
                self.heartbeat
            } else {
                crate::backoff::delay(failures, self.heartbeat)
            };
            tokio::select! {
                () = shared.changed() => {
                    // Let a burst of changes (state + event) go out as one report.
                    tokio::time::sleep(StdDuration::from_millis(100)).await;
                }
                () = tokio::time::sleep(wait) => {}
                () = stopped(&mut shutdown) => break,
            }
        }
        self.send(&shared, &mut failures).await;
    }

    async fn send(&self, shared: &Shared, failures: &mut u32) {
        let now = Timestamp::from_system(std::time::SystemTime::now());
        let (report, count) = shared.report(&self.host, &self.facts, now);
        let body = serde_json::to_vec(&report).expect("reports serialize");
        // Root only: errors and hook output tails in it may quote an app's secrets.
        if let Err(error) = drover_protocol::keyfile::write_atomic(&self.status_file, &body, 0o600) {
            tracing::warn!("writing {}: {error}", self.status_file.display());
        }
        let attempt = self.coordinators.attempt("/v1/agent/report");
        let outcome = self
            .client
            .post(&attempt.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(StdDuration::from_secs(20))
            .send()
            .await;
        self.coordinators
            .observe(&attempt, outcome.as_ref().map(reqwest::Response::status));
        match outcome {
            Ok(response) if response.status().is_success() => {
                shared.sent(count);
                shared.reached();
                *failures = 0;
            }
            Ok(response) => {
                *failures += 1;
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                match Refusal::from_answer(status, &body, now) {
                    // The poller logs it (at ERROR, with what to do) and keeps it on disk.
                    Some(refusal) => {
                        shared.refused(refusal);
                    }
                    None if shared.refusal().is_some() => {}
                    None => tracing::warn!("the coordinator refused a report: HTTP {status}"),
                }
            }
            Err(error) => {
                *failures += 1;
                tracing::warn!("sending a report failed: {}", crate::error::chain(&error));
            }
        }
    }
}

/// Completes once `stop` says so (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_bounded_and_dropped_once_sent() {
        let shared = Shared::new();
        let app: AppName = "web".parse().expect("app");
        for index in 0..(MAX_REPORT_EVENTS + 5) {
            shared.event(Timestamp::EPOCH, Some(&app), format!("event {index}"));
        }
        let host: HostId = "web-01".parse().expect("host");
        let facts = crate::join::facts();
        let (report, count) = shared.report(&host, &facts, Timestamp::EPOCH);
        assert_eq!(report.events.len(), MAX_REPORT_EVENTS);
        assert_eq!(report.events[0].message, "event 5", "the oldest are dropped first");
        assert!(report.check().is_ok());
        shared.event(Timestamp::EPOCH, None, "after the report was built");
        shared.sent(count);
        let (report, _) = shared.report(&host, &facts, Timestamp::EPOCH);
        assert_eq!(report.events.len(), 1, "only what came after the sent report remains");
        assert_eq!(report.events[0].message, "after the report was built");
    }

    #[test]
    fn only_the_coordinators_not_enrolled_answers_are_refusals() {
        let body = |code: &str| format!(r#"{{"code":"{code}","error":"host web-01 is not enrolled"}}"#);
        let forbidden = reqwest::StatusCode::FORBIDDEN;
        for code in Refusal::CODES {
            let refusal = Refusal::from_answer(forbidden, &body(code), Timestamp::EPOCH).expect("a refusal");
            assert_eq!(refusal.code, code);
            assert_eq!(refusal.message, "host web-01 is not enrolled");
        }
        assert_eq!(
            Refusal::from_answer(forbidden, &body("forbidden"), Timestamp::EPOCH),
            None
        );
        assert_eq!(
            Refusal::from_answer(
                reqwest::StatusCode::UNAUTHORIZED,
                &body("host_removed"),
                Timestamp::EPOCH
            ),
            None
        );
        assert_eq!(Refusal::from_answer(forbidden, "not json", Timestamp::EPOCH), None);
        let host: HostId = "web-01".parse().expect("host");
        let refusal = Refusal::from_answer(forbidden, &body("host_removed"), Timestamp::EPOCH).expect("a refusal");
        let line = refusal.explain(&host);
        assert!(line.contains("drover token create --replace web-01"), "{line}");
        assert!(line.contains("drover-agent join --force"), "{line}");
        assert!(line.contains("keep running"), "{line}");
    }

    #[test]
    fn long_texts_are_bounded_on_a_character_boundary() {
        let text = "é".repeat(MAX_TEXT);
        let short = bounded(&text);
        assert!(short.len() <= MAX_TEXT);
        assert!(short.ends_with("..."));
    }
}
