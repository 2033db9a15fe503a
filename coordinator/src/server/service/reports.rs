//! Agent reports: kept in memory for status and the rollouts, queued for the store and
//! written in batches by the report writer.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use drover_protocol::report::MAX_REPORT_EVENTS;
use drover_protocol::{HostId, HostReport, Timestamp};

use super::error::ServiceError;
use super::{Coordinator, Published};

/// Whether two reports say the same about every app's current, desired and state.
pub(super) fn same_app_states(old: &HostReport, new: &HostReport) -> bool {
    let states = |report: &HostReport| {
        report
            .apps
            .iter()
            .map(|(app, state)| (app.clone(), state.current.clone(), state.desired.clone(), state.state))
            .collect::<Vec<_>>()
    };
    states(old) == states(new)
}

/// A report on its way to the store, with the request that waits for it to be durable.
#[derive(Debug)]
pub(super) struct QueuedReport {
    report: HostReport,
    received_at: Timestamp,
    /// Answered once the batch holding the report is committed, or failed.
    stored: oneshot::Sender<Result<(), String>>,
}

/// A report taken into memory and queued for the store: [`ReportReceipt::stored`] waits
/// until it is durable.
#[derive(Debug)]
pub(super) struct ReportReceipt(oneshot::Receiver<Result<(), String>>);

impl ReportReceipt {
    /// Waits until the report's batch is committed. A failed commit, or a writer gone
    /// (the coordinator stopping), is 503: the agent keeps the report's events and sends
    /// them again.
    pub(super) async fn stored(self) -> Result<(), ServiceError> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ServiceError::Busy(
                "report_not_stored",
                format!("the coordinator could not store the report ({error}); retry"),
            )),
            Err(_) => Err(ServiceError::Busy(
                "report_not_stored",
                "the coordinator is stopping and did not store the report; retry".into(),
            )),
        }
    }
}

/// Stores one batch of queued reports in one transaction (group commit: the reports that
/// arrived while the previous batch was being committed go together), then answers each
/// report's request. Only the newest report per host is kept; every event is kept.
pub(super) async fn store_reports(coordinator: &Coordinator, batch: Vec<QueuedReport>) {
    let mut latest: HashMap<HostId, (HostReport, Timestamp)> = HashMap::new();
    let mut events: HashMap<HostId, Vec<drover_protocol::report::ReportEvent>> = HashMap::new();
    let mut waiting = Vec::with_capacity(batch.len());
    for QueuedReport {
        report,
        received_at,
        stored,
    } in batch
    {
        events
            .entry(report.host.clone())
            .or_default()
            .extend(report.events.iter().cloned());
        latest.insert(report.host.clone(), (report, received_at));
        waiting.push(stored);
    }
    let merged: Vec<(HostReport, Timestamp)> = latest
        .into_values()
        .map(|(mut report, at)| {
            let mut host_events = events.remove(&report.host).unwrap_or_default();
            let keep_from = host_events.len().saturating_sub(MAX_REPORT_EVENTS * 4);
            report.events = host_events.split_off(keep_from);
            (report, at)
        })
        .collect();
    let outcome = coordinator.store.save_reports(&merged).await.map_err(|error| {
        tracing::error!(%error, count = merged.len(), "storing reports failed; the latest reports stay in memory and their agents send them again");
        error.to_string()
    });
    for stored in waiting {
        // A request that gave up waiting (its connection closed) needs no answer.
        let _ = stored.send(outcome.clone());
    }
}

impl Coordinator {
    /// `POST /v1/agent/report`: keeps the latest in memory, queues it for the store and
    /// answers once it is stored: an acknowledged report survives a kill -9 right after.
    /// Reports are rare next to polls (a change, or one per poll interval per host), and
    /// those arriving together share one commit (see [`store_reports`]).
    pub async fn report(&self, slot_host: &HostId, report: HostReport) -> Result<(), ServiceError> {
        self.accept_report(slot_host, report)?.stored().await
    }

    /// Checks a report, keeps it in memory (status, rollouts) and queues it for the store,
    /// without waiting for the store.
    pub(super) fn accept_report(
        &self,
        slot_host: &HostId,
        mut report: HostReport,
    ) -> Result<ReportReceipt, ServiceError> {
        if &report.host != slot_host {
            return Err(ServiceError::NotAllowed(
                "wrong_host",
                format!("host {slot_host} cannot report for host {}", report.host),
            ));
        }
        report
            .check()
            .map_err(|detail| ServiceError::Invalid("bad_report", detail))?;
        self.drop_apps_never_given(&mut report);
        let received_at = self.now();
        // Queue first: a report the store will not see must not show in status either.
        let permit = self.report_queue.try_reserve().map_err(|_| {
            ServiceError::Busy(
                "report_queue_full",
                "the coordinator is behind on storing reports; retry".into(),
            )
        })?;
        self.metrics.reports.add(1);
        let previous = self
            .reports
            .lock()
            .insert(report.host.clone(), (report.clone(), received_at));
        // Rollouts advance on changes of an app's current/desired/state, not on every
        // periodic report.
        if previous.is_none_or(|(old, _)| !same_app_states(&old, &report)) {
            self.rollout_dirty.lock().insert(report.host.clone());
            self.rollout_signal.notify_one();
        }
        let (stored, receipt) = oneshot::channel();
        permit.send(QueuedReport {
            report,
            received_at,
            stored,
        });
        Ok(ReportReceipt(receipt))
    }

    /// Drops (and counts) the apps of a report that the host was never given: a host may
    /// report the apps of its current manifest, and keeps reporting an app it was given
    /// before (while it stops and removes it) only as long as every report since named it.
    /// Anything else is invented and would show in fleet status as if it ran there.
    pub(super) fn drop_apps_never_given(&self, report: &mut HostReport) {
        // The published manifest is shared (an Arc): nothing is copied per report.
        let given: Option<Arc<Published>> = self
            .slots
            .read()
            .get(&report.host)
            .map(|slot| Arc::clone(&slot.manifest.borrow()));
        let before = report.apps.len();
        {
            let reports = self.reports.lock();
            let reported_before = reports.get(&report.host).map(|(previous, _)| &previous.apps);
            report.apps.retain(|app, _| {
                given
                    .as_ref()
                    .is_some_and(|published| published.versions.contains_key(app))
                    || reported_before.is_some_and(|apps| apps.contains_key(app))
            });
        }
        let dropped = before - report.apps.len();
        if dropped > 0 {
            self.metrics.report_apps_ignored.add(dropped);
            tracing::warn!(host = %report.host, dropped, "a report named apps this host was never given; ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use drover_protocol::report::AppState;

    use super::same_app_states;
    use crate::server::service::testing::{code, coordinator, report};

    #[test]
    fn only_current_desired_and_state_make_a_report_new_for_rollouts() {
        let old = report("web-1", &[("web", "1.0.0", AppState::Healthy)]);
        let mut same = old.clone();
        same.sent_at = same.sent_at.plus(drover_protocol::Duration::from_secs(30));
        same.apps
            .values_mut()
            .for_each(|app| app.health = Some("ok".to_owned()));
        assert!(same_app_states(&old, &same));
        let failed = report("web-1", &[("web", "1.0.0", AppState::Failed)]);
        assert!(!same_app_states(&old, &failed));
        let upgraded = report("web-1", &[("web", "1.1.0", AppState::Healthy)]);
        assert!(!same_app_states(&old, &upgraded));
        let another_app = report(
            "web-1",
            &[("web", "1.0.0", AppState::Healthy), ("api", "2.0.0", AppState::Healthy)],
        );
        assert!(!same_app_states(&old, &another_app));
    }

    #[tokio::test]
    async fn a_host_reports_only_for_itself_and_only_apps_it_was_given() {
        let test = coordinator().await;
        let service = &test.coordinator;
        test.join("web-1", &[]).await;
        test.release("web", "1.0.0").await;
        let error = service
            .accept_report(
                &"web-2".parse().expect("id"),
                report("web-1", &[("web", "1.0.0", AppState::Healthy)]),
            )
            .expect_err("another host's report");
        assert_eq!(code(&error), "wrong_host");
        // Nothing pins web to web-1: a report of it is invented and dropped.
        service
            .accept_report(
                &"web-1".parse().expect("id"),
                report("web-1", &[("web", "1.0.0", AppState::Healthy)]),
            )
            .expect("report");
        assert_eq!(service.metrics.report_apps_ignored.get(), 1);
        let host = service.host(&"web-1".parse().expect("id")).await.expect("host");
        assert!(host.summary.apps.is_empty(), "{:?}", host.summary.apps);
    }

    /// One request that panics while it holds the service's locks (a bug anywhere in
    /// those sections) must not take every later request down with it.
    #[tokio::test]
    async fn a_request_that_panicked_holding_the_locks_does_not_fail_later_requests() {
        let test = coordinator().await;
        let service = &test.coordinator;
        test.join("web-1", &[]).await;
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _tokens = service.admin_tokens.write();
            let _slots = service.slots.write();
            let _reports = service.reports.lock();
            let _dirty = service.rollout_dirty.lock();
            panic!("a bug while holding the service's locks");
        }));
        assert!(panicked.is_err());
        service
            .accept_report(&"web-1".parse().expect("id"), report("web-1", &[]))
            .expect("a report after the panic");
        assert_eq!(service.hosts().await.len(), 1);
        assert_eq!(service.status().await.hosts, 1);
        assert_eq!(service.host_count(), 1);
        service
            .check_admin(Some(&test.admin_secret))
            .await
            .expect("an admin request after the panic");
    }

    /// Joins `hosts` and pins web 1.0.0 to the fleet, so their reports of it count.
    async fn fleet_running_web(test: &crate::server::service::testing::TestCoordinator, hosts: &[&str]) {
        for host in hosts {
            test.join(host, &[]).await;
        }
        test.release("web", "1.0.0").await;
        let pin = drover_protocol::api::Pin {
            app: "web".parse().expect("app"),
            version: "1.0.0".parse().expect("version"),
            scope: drover_protocol::api::Scope::Fleet,
        };
        test.coordinator
            .pin(pin, &crate::server::service::testing::operator(), None)
            .await
            .expect("pin");
    }

    #[tokio::test]
    async fn an_acknowledged_report_is_already_stored() {
        let mut test = coordinator().await;
        fleet_running_web(&test, &["web-1"]).await;
        let (shutdown, background) = test.run_background();
        let service = &test.coordinator;
        service
            .report(
                &"web-1".parse().expect("id"),
                report("web-1", &[("web", "1.0.0", AppState::Healthy)]),
            )
            .await
            .expect("acknowledged");
        // What a restart after kill -9 would load, read at once.
        let stored = service.store.load().await.expect("load").reports;
        assert_eq!(stored.len(), 1, "{stored:?}");
        let web = stored[0]
            .0
            .apps
            .get(&"web".parse().expect("app"))
            .expect("web reported");
        assert_eq!(web.state, AppState::Healthy);
        shutdown.send_replace(true);
        background.await.expect("background");
    }

    #[tokio::test]
    async fn reports_arriving_together_are_each_answered_once_stored() {
        let mut test = coordinator().await;
        let hosts = ["web-1", "web-2", "web-3", "web-4", "web-5"];
        fleet_running_web(&test, &hosts).await;
        let (shutdown, background) = test.run_background();
        let service = &test.coordinator;
        let reports = hosts.iter().map(|host| {
            let host_id: drover_protocol::HostId = host.parse().expect("id");
            async move {
                service
                    .report(&host_id, report(host, &[("web", "1.0.0", AppState::Healthy)]))
                    .await
            }
        });
        for outcome in futures_util::future::join_all(reports).await {
            outcome.expect("acknowledged");
        }
        assert_eq!(service.store.load().await.expect("load").reports.len(), hosts.len());
        shutdown.send_replace(true);
        background.await.expect("background");
    }

    #[tokio::test]
    async fn a_report_the_store_could_not_take_is_refused_with_503_and_retried_by_the_agent() {
        let mut test = coordinator().await;
        fleet_running_web(&test, &["web-1"]).await;
        let (shutdown, background) = test.run_background();
        let service = &test.coordinator;
        // Break the store under the coordinator: its reports table is gone.
        let database = service.data().database();
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&database);
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .expect("open the database");
        sqlx::query("DROP TABLE reports")
            .execute(&pool)
            .await
            .expect("drop reports");
        pool.close().await;
        let error = service
            .report(
                &"web-1".parse().expect("id"),
                report("web-1", &[("web", "1.0.0", AppState::Healthy)]),
            )
            .await
            .expect_err("not stored");
        assert_eq!(code(&error), "report_not_stored");
        assert!(error.to_string().contains("retry"), "{error}");
        shutdown.send_replace(true);
        background.await.expect("background");
    }
}
