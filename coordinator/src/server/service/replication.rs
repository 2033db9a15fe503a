//! Several coordinators on one PostgreSQL (issue 16): how this replica keeps its memory
//! in step with the changes the others commit, and which replica drives the rollouts.
//!
//! - **Changes.** Every replica listens to the database's change notifications
//!   ([`crate::server::store::changes`]) and re-reads what they name: the fleet model
//!   (re-published to the long-polls this replica holds, so a pin made through another
//!   replica reaches its hosts), reports (so status and the rollout driver see every
//!   host, whichever replica it reports to), host records (renewed certificates) and
//!   admin tokens (a revoked token stops working everywhere). A lost listening
//!   connection makes it re-read everything.
//! - **Writes.** Every change of the fleet model takes [`Coordinator::model`], which on
//!   PostgreSQL also holds the database's model lock and first catches up with the
//!   database when another replica changed the model: decisions are taken on the model
//!   as committed, and the store's generation check refuses any write taken on an older
//!   one (`StoreError::Stale`, nothing written).
//! - **The leader.** One replica at a time, the holder of the leader lease
//!   ([`crate::server::store::cluster`]), runs the rollout driver and the manifest
//!   refresher. It stops them the moment the lease is lost; and even a leader that has not
//!   noticed yet cannot commit a step taken on a model another leader has moved on, since
//!   each step is a model write under the generation check. SQLite has one process: it
//!   always leads.

use std::collections::BTreeSet;
use std::sync::Arc;

use drover_protocol::api::ReplicaStatus;
use drover_protocol::{HostId, HostReport, Timestamp};
use tokio::sync::watch;

use super::reports::same_app_states;
use super::{Coordinator, SlotIdentity};
use crate::server::store::StoreError;
use crate::server::store::changes::Change;
use crate::server::store::cluster::ChangeListener;

impl Coordinator {
    /// Brings memory up to date with the changes another replica committed.
    pub(super) async fn apply_changes(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        for change in changes {
            match change {
                Change::Model { generation } => {
                    if generation > self.store.seen_generation() {
                        // Taking the model catches up with the database (see `model`).
                        drop(self.model().await);
                        // A rollout started, paused or stepped elsewhere: the driver (if
                        // this replica leads) looks again now, not at its next timer.
                        self.rollout_signal.notify_one();
                    }
                }
                Change::Reports(hosts) => {
                    let reports = self.store.reports_of(&hosts).await?;
                    self.take_reports(reports);
                }
                Change::Hosts(hosts) => self.refresh_host_identities(&hosts).await?,
                Change::AdminTokens => {
                    let tokens = self.store.admin_tokens().await?;
                    *self.admin_tokens.write() = tokens;
                }
                Change::Resync => {
                    drop(self.model_caught_up(true).await);
                    self.rollout_signal.notify_one();
                    // The reload read the model; the reports are one more query, not a
                    // second load of every manifest.
                    let hosts: Vec<HostId> = self.slots.read().keys().cloned().collect();
                    let reports = self.store.reports_of(&hosts).await?;
                    self.take_reports(reports);
                    let tokens = self.store.admin_tokens().await?;
                    *self.admin_tokens.write() = tokens;
                }
            }
        }
        Ok(())
    }

    /// Takes reports another replica stored: what the database holds now replaces what
    /// memory holds unless memory's is strictly newer, and a host whose app states changed
    /// is handed to the rollout driver.
    ///
    /// Times are whole seconds, and an agent often reports twice in one (installing, then
    /// healthy): a report as old as memory's is taken, because the database keeps each
    /// host's last stored report, so the later of two in one second is what a read after
    /// the second notification finds. Taking only strictly newer ones dropped that
    /// "healthy", and the leader's rollout waited for the host's next report. A read that
    /// races this replica's own not-yet-stored report of the same second is put right by
    /// the notification of that report's own write.
    fn take_reports(&self, reports: Vec<(HostReport, Timestamp)>) {
        let mut changed = BTreeSet::new();
        {
            let mut held = self.reports.lock();
            for (report, at) in reports {
                let newer = held
                    .get(&report.host)
                    .is_none_or(|(old, old_at)| (old_at, old.sent_at) <= (&at, report.sent_at));
                if !newer {
                    continue;
                }
                let states_changed = held
                    .get(&report.host)
                    .is_none_or(|(old, _)| !same_app_states(old, &report));
                if states_changed {
                    changed.insert(report.host.clone());
                }
                held.insert(report.host.clone(), (report, at));
            }
        }
        if !changed.is_empty() {
            self.rollout_dirty.lock().extend(changed);
            self.rollout_signal.notify_one();
        }
    }

    /// Re-reads the records of `hosts` (a certificate renewed, a key learned through
    /// another replica) into their slots.
    async fn refresh_host_identities(&self, hosts: &[HostId]) -> Result<(), StoreError> {
        let records = self.store.hosts_of(hosts).await?;
        let slots = self.slots.read();
        for record in records.iter().filter(|record| record.is_active()) {
            if let Some(slot) = slots.get(&record.id) {
                *slot.identity.write() = SlotIdentity::of(record);
            }
        }
        Ok(())
    }

    /// `drover coordinators`: every replica on the database with its last heartbeat and
    /// the leader; on SQLite, this coordinator alone (which always leads).
    pub async fn coordinators(&self) -> Result<Vec<ReplicaStatus>, super::ServiceError> {
        use super::error::During as _;
        let replica = &self.replica;
        let rows = self.store.replicas().await.during("listing the coordinators")?;
        let Some(rows) = rows else {
            return Ok(vec![ReplicaStatus {
                id: replica.id.clone(),
                address: replica.address.clone(),
                version: replica.version.clone(),
                started_at: replica.started_at,
                heartbeat_at: self.now(),
                leader: true,
            }]);
        };
        Ok(rows
            .into_iter()
            .map(|row| ReplicaStatus {
                id: row.id,
                address: row.address,
                version: row.version,
                started_at: row.started_at,
                heartbeat_at: row.heartbeat_at,
                leader: row.leader,
            })
            .collect())
    }
}

/// Follows the other replicas' changes until `shutdown`. A change that cannot be read
/// (the database is away) is retried as a full re-read once it is back.
pub(super) async fn follow_changes(
    coordinator: Arc<Coordinator>,
    mut listener: ChangeListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pending: Vec<Change> = Vec::new();
    loop {
        tokio::select! {
            batch = listener.recv(), if pending.is_empty() => pending = batch,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)), if !pending.is_empty() => {}
            _ = shutdown.changed() => break,
        }
        match coordinator.apply_changes(std::mem::take(&mut pending)).await {
            Ok(()) => {}
            Err(error) => {
                tracing::warn!(%error, "could not read another coordinator's change; re-reading everything in 1 s");
                pending = vec![Change::Resync];
            }
        }
    }
}

/// Tells the database this replica is alive every few seconds until `shutdown`, and
/// forgets replicas silent for long.
pub(super) async fn heartbeat(coordinator: Arc<Coordinator>, mut shutdown: watch::Receiver<bool>) {
    let info = coordinator.replica.clone();
    let mut every = tokio::time::interval(crate::server::store::cluster::HEARTBEAT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {
                if let Err(error) = coordinator.store.heartbeat(&info, coordinator.now()).await {
                    tracing::warn!(%error, "could not record this coordinator's heartbeat; retrying");
                }
            }
            _ = shutdown.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use drover_protocol::HostId;
    use drover_protocol::api::{Pin, Scope};

    use super::super::testing::{TestCoordinator, coordinator_on, name, operator};
    use crate::server::store::changes::Change;
    use crate::server::store::tests::scratch_postgres_database;

    /// The serial each host's slot publishes on `replica`.
    fn serials(replica: &TestCoordinator) -> BTreeMap<HostId, u64> {
        let slots = replica.coordinator.slots.read();
        slots
            .iter()
            .map(|(id, slot)| (id.clone(), slot.manifest.borrow().serial))
            .collect()
    }

    /// Tells `replica` that `writer` changed the model, as the change listener does, and
    /// returns how many manifests it read back from the database to catch up.
    async fn notify(replica: &TestCoordinator, writer: &TestCoordinator) -> u64 {
        let metrics = &replica.coordinator.metrics.manifests_reread;
        let before = metrics.get();
        let generation = writer.coordinator.store.seen_generation();
        replica
            .coordinator
            .apply_changes(vec![Change::Model { generation }])
            .await
            .expect("catching up");
        metrics.get() - before
    }

    #[tokio::test]
    async fn a_replica_catches_up_with_another_ones_changes_reading_only_the_manifests_written_since() {
        let (_cluster, database) = scratch_postgres_database();
        let a = coordinator_on(Some(&database), None).await;
        let b = coordinator_on(Some(&database), Some(&a)).await;
        for host in ["web-1", "web-2", "web-3"] {
            a.join(host, &[("role", "web")]).await;
        }
        a.release("web", "1.0.0").await;
        assert_eq!(notify(&b, &a).await, 3, "the three joins' manifests");
        assert_eq!(serials(&b), serials(&a));
        assert_eq!(serials(&b).len(), 3);

        // One host's pin re-renders one manifest: that one is all the other replica reads,
        // and its hosts' long-polls see the new serial.
        let web_1: HostId = name("web-1");
        let before = serials(&b);
        a.coordinator
            .pin(
                Pin {
                    app: name("web"),
                    version: name("1.0.0"),
                    scope: Scope::Host(web_1.clone()),
                },
                &operator(),
                None,
            )
            .await
            .expect("pin");
        assert_eq!(notify(&b, &a).await, 1, "only web-1's new manifest is read");
        assert_eq!(serials(&b), serials(&a));
        assert!(serials(&b)[&web_1] > before[&web_1]);

        // A removal drops the host's slot; a join through the other replica makes one.
        a.coordinator
            .remove_host(&name("web-3"), &operator(), None)
            .await
            .expect("remove");
        a.join("web-4", &[("role", "web")]).await;
        notify(&b, &a).await;
        assert_eq!(serials(&b), serials(&a));
        assert_eq!(
            serials(&b).keys().map(ToString::to_string).collect::<Vec<_>>(),
            ["web-1", "web-2", "web-4"]
        );

        // Lost notifications: everything is read again, every host's manifest.
        let metrics = &b.coordinator.metrics.manifests_reread;
        let before = metrics.get();
        b.coordinator.apply_changes(vec![Change::Resync]).await.expect("resync");
        assert!(metrics.get() - before >= 3, "a full re-read reads every manifest");
        assert_eq!(serials(&b), serials(&a));
    }

    #[tokio::test]
    async fn a_host_joined_through_another_replica_is_served_at_once_and_a_removed_one_refused() {
        let (_cluster, database) = scratch_postgres_database();
        let a = coordinator_on(Some(&database), None).await;
        let b = coordinator_on(Some(&database), Some(&a)).await;
        // No notification reaches b: the request itself makes it catch up.
        let identity = a.join("web-1", &[]).await;
        let served = b.coordinator.host_slot_current(Some(&identity)).await;
        assert!(served.is_ok(), "{served:?}");
        a.coordinator
            .remove_host(&name("web-1"), &operator(), None)
            .await
            .expect("remove");
        // A removal reaches b by its notification (a slot it holds is served until then).
        notify(&b, &a).await;
        let refused = b.coordinator.host_slot_current(Some(&identity)).await;
        assert!(
            matches!(refused, Err(super::super::ServiceError::NotAllowed(..))),
            "{refused:?}"
        );
        // Refused again from memory and one read of the generation.
        let refused = b.coordinator.host_slot_current(Some(&identity)).await;
        assert!(matches!(refused, Err(super::super::ServiceError::NotAllowed(..))));
    }

    #[tokio::test]
    async fn a_second_report_in_the_same_second_from_another_replica_reaches_the_rollout_driver() {
        use drover_protocol::Timestamp;
        use drover_protocol::report::AppState;

        use super::super::testing::{coordinator, report};
        let test = coordinator().await;
        let coordinator = &test.coordinator;
        let at = coordinator.now();
        let installing = report("web-1", &[("web", "2.0.0", AppState::Installing)]);
        let mut healthy = report("web-1", &[("web", "2.0.0", AppState::Healthy)]);
        healthy.sent_at = installing.sent_at;
        coordinator.take_reports(vec![(installing, at)]);
        coordinator.rollout_dirty.lock().clear();
        coordinator.take_reports(vec![(healthy.clone(), at)]);
        let held = coordinator.reports.lock().get(&healthy.host).cloned();
        assert_eq!(
            held.map(|(report, _)| report),
            Some(healthy.clone()),
            "the later report is held"
        );
        assert!(
            coordinator.rollout_dirty.lock().contains(&healthy.host),
            "the driver looks at the host again"
        );
        // An older one (an earlier second) still changes nothing.
        let mut older = report("web-1", &[("web", "2.0.0", AppState::Fetching)]);
        older.sent_at = Timestamp::from_unix(healthy.sent_at.unix() - 1);
        coordinator.take_reports(vec![(older, Timestamp::from_unix(at.unix() - 1))]);
        let held = coordinator.reports.lock().get(&healthy.host).cloned();
        assert_eq!(held.map(|(report, _)| report), Some(healthy));
    }
}
