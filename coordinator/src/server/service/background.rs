//! The background tasks: the report writer, the refresher and the rollout driver.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::replication::{follow_changes, heartbeat};
use super::reports::{QueuedReport, store_reports};
use super::{Background, Coordinator};

impl Background {
    /// Runs until `shutdown` fires: the report writer; on PostgreSQL the follower of the
    /// other replicas' changes and the heartbeat; and, while this replica leads (always on
    /// SQLite), the manifest refresher and the rollout driver. The writer then stores (and
    /// answers) the reports still queued.
    pub async fn run(self, coordinator: Arc<Coordinator>, mut shutdown: watch::Receiver<bool>) {
        // Its own task: a refresh re-signing the whole fleet must not hold up the commits
        // that report requests wait for.
        let writer = tokio::spawn(write_reports(
            coordinator.clone(),
            self.report_receiver,
            shutdown.clone(),
        ));
        let follower = self
            .listener
            .map(|listener| tokio::spawn(follow_changes(coordinator.clone(), listener, shutdown.clone())));
        let heartbeat = tokio::spawn(heartbeat(coordinator.clone(), shutdown.clone()));
        loop {
            let lease = tokio::select! {
                lease = coordinator.store.campaign(&coordinator.replica.id, coordinator.config.clock.as_ref()) => lease,
                _ = shutdown.changed() => break,
            };
            let (stop, stopped) = watch::channel(false);
            let driver = tokio::spawn(drive_rollouts(coordinator.clone(), stopped.clone()));
            let refresher = tokio::spawn(refresh_manifests(coordinator.clone(), stopped));
            let lost_signal = lease.as_ref().map(crate::server::store::cluster::Lease::lost_signal);
            let lost = async move {
                match lost_signal {
                    // An error means the lease's keeper is gone, which it is only after
                    // marking the loss.
                    Some(mut lost) => drop(lost.wait_for(|lost| *lost).await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = lost => {
                    // Stop at once: a step in flight is refused by the store if another
                    // leader moved the model on, and rolled back if it is cut short.
                    driver.abort();
                    refresher.abort();
                    tracing::warn!("this coordinator lost the lead; the rollout driver and refresher stopped, campaigning again");
                    let _ = driver.await;
                    let _ = refresher.await;
                }
                _ = shutdown.changed() => {
                    stop.send_replace(true);
                    let _ = driver.await;
                    let _ = refresher.await;
                    if let Some(lease) = lease {
                        lease.release().await;
                    }
                    break;
                }
            }
        }
        let _ = writer.await;
        let _ = heartbeat.await;
        if let Some(follower) = follower {
            let _ = follower.await;
        }
    }
}

/// The manifest refresher: re-signs manifests before they expire, every refresh interval,
/// until `shutdown`.
async fn refresh_manifests(coordinator: Arc<Coordinator>, mut shutdown: watch::Receiver<bool>) {
    let mut refresh = tokio::time::interval(coordinator.config.refresh_interval.to_std());
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
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
}

/// The report writer: stores the queued reports a batch at a time, each batch in one
/// transaction, so reports arriving while a commit runs share the next one (group
/// commit). At shutdown it stops taking new reports and stores those already queued.
async fn write_reports(
    coordinator: Arc<Coordinator>,
    mut receiver: mpsc::Receiver<QueuedReport>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            received = receiver.recv_many(&mut batch, 2048) => {
                if received == 0 {
                    break;
                }
                store_reports(&coordinator, std::mem::take(&mut batch)).await;
            }
            _ = shutdown.changed() => break,
        }
    }
    receiver.close();
    while receiver.recv_many(&mut batch, 2048).await > 0 {
        store_reports(&coordinator, std::mem::take(&mut batch)).await;
    }
}

/// The rollout driver: runs a pass whenever a report changed or a step was taken, and at
/// the earliest timer of any active rollout (after a restart too, from the stored state).
pub(super) async fn drive_rollouts(coordinator: Arc<Coordinator>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            break;
        }
        let wake = coordinator.drive_once().await;
        // How long to wait is the only thing the real time decides; what is due when it
        // ends is decided by the coordinator's clock in `drive_once`.
        let sleep = wake.map_or(std::time::Duration::from_secs(3600), |at| {
            coordinator.config.clock.until(at)
        });
        tokio::select! {
            () = coordinator.rollout_signal.notified() => {}
            () = tokio::time::sleep(sleep) => {}
            _ = shutdown.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use drover_protocol::api::Pin;
    use drover_protocol::report::AppState;
    use tokio::sync::watch;

    use crate::server::service::testing::{coordinator, name, operator, report};

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
            .accept_report(&name("web-1"), report("web-1", &[("web", "1.0.0", AppState::Healthy)]))
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
