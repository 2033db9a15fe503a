//! Agent reports: kept in memory for status and the rollouts, queued for the store and
//! written in batches by the report writer.

use std::collections::HashMap;
use std::sync::Arc;

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

pub(super) async fn store_reports(coordinator: &Coordinator, batch: Vec<(HostReport, Timestamp)>) {
    let mut latest: HashMap<HostId, (HostReport, Timestamp)> = HashMap::new();
    let mut events: HashMap<HostId, Vec<drover_protocol::report::ReportEvent>> = HashMap::new();
    for (report, at) in batch {
        events
            .entry(report.host.clone())
            .or_default()
            .extend(report.events.iter().cloned());
        latest.insert(report.host.clone(), (report, at));
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
    if let Err(error) = coordinator.store.save_reports(&merged).await {
        tracing::error!(%error, count = merged.len(), "storing reports failed; the latest reports stay in memory");
    }
}

impl Coordinator {
    /// `POST /v1/agent/report`: keeps the latest in memory and queues it for the store.
    pub fn report(&self, slot_host: &HostId, mut report: HostReport) -> Result<(), ServiceError> {
        if &report.host != slot_host {
            return Err(ServiceError::Forbidden(
                "wrong_host",
                format!("host {slot_host} cannot report for host {}", report.host),
            ));
        }
        report
            .check()
            .map_err(|detail| ServiceError::BadRequest("bad_report", detail))?;
        self.drop_apps_never_given(&mut report);
        let received_at = self.now();
        // Queue first: a report the store will not see must not show in status either.
        let permit = self.report_queue.try_reserve().map_err(|_| {
            ServiceError::Unavailable(
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
        permit.send((report, received_at));
        Ok(())
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
            .report(
                &"web-2".parse().expect("id"),
                report("web-1", &[("web", "1.0.0", AppState::Healthy)]),
            )
            .expect_err("another host's report");
        assert_eq!(code(&error), "wrong_host");
        // Nothing pins web to web-1: a report of it is invented and dropped.
        service
            .report(
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
            .report(&"web-1".parse().expect("id"), report("web-1", &[]))
            .expect("a report after the panic");
        assert_eq!(service.hosts().await.len(), 1);
        assert_eq!(service.status().await.hosts, 1);
        assert_eq!(service.host_count(), 1);
        service
            .check_admin(Some(&test.admin_secret))
            .await
            .expect("an admin request after the panic");
    }
}
