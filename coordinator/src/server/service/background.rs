//! The background tasks: the report writer, the refresher and the rollout driver.

use std::sync::Arc;

use drover_protocol::Timestamp;
use tokio::sync::watch;

use super::reports::store_reports;
use super::{Background, Coordinator};

impl Background {
    /// Runs the report writer, the manifest refresher and the rollout driver until
    /// `shutdown` fires, then flushes the reports still queued.
    pub async fn run(mut self, coordinator: Arc<Coordinator>, mut shutdown: watch::Receiver<bool>) {
        let driver = tokio::spawn(drive_rollouts(coordinator.clone(), shutdown.clone()));
        let mut refresh = tokio::time::interval(coordinator.config.refresh_interval.to_std());
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                received = self.report_receiver.recv_many(&mut batch, 2048) => {
                    if received == 0 {
                        break;
                    }
                    // Keep only the newest report per host; every event is kept.
                    store_reports(&coordinator, std::mem::take(&mut batch)).await;
                }
                _ = refresh.tick() => {
                    match coordinator.refresh().await {
                        Ok(0) => {}
                        Ok(count) => tracing::info!(count, "re-signed manifests before they expire"),
                        Err(error) => tracing::error!(%error, "manifest refresh failed; will retry"),
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        self.report_receiver.close();
        while self.report_receiver.recv_many(&mut batch, 2048).await > 0 {
            store_reports(&coordinator, std::mem::take(&mut batch)).await;
        }
        let _ = driver.await;
    }
}

/// The rollout driver: runs a pass whenever a report changed or a step was taken, and at
/// the earliest timer of any active rollout (after a restart too, from the stored state).
pub(super) async fn drive_rollouts(coordinator: Arc<Coordinator>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            break;
        }
        let wake = coordinator.drive_rollouts().await;
        let sleep = wake.map_or(std::time::Duration::from_secs(3600), until);
        tokio::select! {
            () = coordinator.rollout_signal.notified() => {}
            () = tokio::time::sleep(sleep) => {}
            _ = shutdown.changed() => break,
        }
    }
}

/// How long until `at` (whole seconds), plus a little so that `now()` has reached it.
pub(super) fn until(at: Timestamp) -> std::time::Duration {
    let now_millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    let at_millis = u128::try_from(at.unix()).unwrap_or(0) * 1000;
    let millis = u64::try_from(at_millis.saturating_sub(now_millis)).unwrap_or(u64::MAX);
    std::time::Duration::from_millis(millis.saturating_add(20))
}

#[cfg(test)]
mod tests {
    use drover_protocol::api::Pin;
    use drover_protocol::report::AppState;
    use drover_protocol::{Duration, Timestamp};
    use tokio::sync::watch;

    use super::until;
    use crate::server::service::testing::{coordinator, name, operator, report};

    #[test]
    fn a_timer_in_the_past_is_due_at_once_and_one_ahead_waits_for_it() {
        let now = Timestamp::from_system(std::time::SystemTime::now());
        assert_eq!(
            until(now.minus(Duration::from_secs(10))),
            std::time::Duration::from_millis(20)
        );
        let ahead = until(now.plus(Duration::from_secs(3)));
        assert!(ahead > std::time::Duration::from_secs(1) && ahead <= std::time::Duration::from_millis(3020));
    }

    #[tokio::test]
    async fn reports_still_queued_at_shutdown_are_stored() {
        let mut test = coordinator().await;
        let service = test.coordinator.clone();
        test.join("web-1", &[]).await;
        test.release("web", "1.0.0").await;
        let pin = Pin {
            app: name("web"),
            version: name("1.0.0"),
            scope: drover_protocol::api::Scope::Fleet,
        };
        service.pin(pin, &operator(), None).await.expect("pin");
        service
            .report(&name("web-1"), report("web-1", &[("web", "1.0.0", AppState::Healthy)]))
            .expect("report");
        // Told to stop before it starts: all it does is flush the queue.
        let (shutdown, receiver) = watch::channel(false);
        shutdown.send_replace(true);
        drop(shutdown);
        let background = test.background.take().expect("background");
        background.run(service.clone(), receiver).await;
        let stored = service.store.load().await.expect("load").reports;
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert_eq!(stored[0].0.host.as_str(), "web-1");
    }
}
