//! Read-only views for the API: fleet status, pins, and the rollout plan/status bodies.

use std::collections::BTreeMap;

use drover_protocol::api::PinList;
use drover_protocol::api::{
    FleetStatus, RolloutPhase, RolloutPlan, RolloutPlanHost, RolloutPlanStage, RolloutStageStatus, RolloutStatus, Scope,
};
use drover_protocol::api::{MAX_FAILED_HOSTS_SHOWN, RolloutFailedHost};
use drover_protocol::{AppName, Timestamp};

use super::Coordinator;
use super::error::ServiceError;
use crate::server::rollout::{PauseReason, Phase, Rollout, StageStatus};

pub(super) fn plan_view(rollout: &Rollout) -> RolloutPlan {
    RolloutPlan {
        rollout: rollout.id().to_owned(),
        app: rollout.spec().app.clone(),
        version: rollout.spec().target.clone(),
        stages: rollout
            .plan()
            .stages
            .iter()
            .map(|stage| RolloutPlanStage {
                label: stage.label.to_string(),
                hosts: stage
                    .hosts
                    .iter()
                    .map(|host| RolloutPlanHost {
                        id: host.id.clone(),
                        current: host.current.clone(),
                    })
                    .collect(),
            })
            .collect(),
        max_in_flight: rollout.max_in_flight(),
        failure_budget: rollout.failure_budget(),
    }
}

pub(super) fn status_view(
    rollout: &Rollout,
    created_by: &str,
    created_at: Timestamp,
    finished_at: Option<Timestamp>,
    now: Timestamp,
) -> RolloutStatus {
    let progress = rollout.progress(now);
    let phase = match &progress.phase {
        Phase::Pending => RolloutPhase::Pending,
        Phase::Running => RolloutPhase::Running,
        Phase::Paused {
            reason: PauseReason::Operator { .. },
        } => RolloutPhase::PausedByOperator,
        Phase::Paused {
            reason: PauseReason::FailureBudget,
        } => RolloutPhase::PausedByBreaker,
        Phase::Paused {
            reason: PauseReason::AwaitingApproval,
        } => RolloutPhase::AwaitingApproval,
        Phase::Completed { .. } => RolloutPhase::Completed,
        Phase::Aborted { .. } => RolloutPhase::Aborted,
        Phase::RolledBack { .. } => RolloutPhase::RolledBack,
    };
    let pause_reason = match &progress.phase {
        Phase::Paused {
            reason: PauseReason::Operator { reason, .. },
        } => reason.clone(),
        _ => None,
    };
    RolloutStatus {
        rollout: progress.rollout,
        app: progress.app,
        version: progress.target,
        phase,
        phase_text: progress.phase.to_string(),
        pause_reason,
        stage: progress.stage,
        stages: progress
            .stages
            .into_iter()
            .map(|stage| {
                let (status, bake_remaining) = match stage.status {
                    StageStatus::NotStarted => ("not_started", None),
                    StageStatus::Active => ("active", None),
                    StageStatus::Baking { remaining } => ("baking", Some(remaining)),
                    StageStatus::Passed => ("passed", None),
                    StageStatus::Failed => ("failed", None),
                };
                RolloutStageStatus {
                    label: stage.label.to_string(),
                    status: status.to_owned(),
                    bake_remaining,
                    total: stage.total,
                    waiting: stage.waiting,
                    in_flight: stage.in_flight,
                    done: stage.done,
                    failed: stage.failed,
                    removed: stage.removed,
                }
            })
            .collect(),
        failures: progress.failures,
        failure_budget: progress.failure_budget,
        in_flight: progress.in_flight,
        max_in_flight: progress.max_in_flight,
        eta: progress.eta,
        created_by: created_by.to_owned(),
        created_at,
        finished_at,
        failed_hosts: Vec::new(),
    }
}

impl Coordinator {
    /// The rollout's failed hosts (the first [`MAX_FAILED_HOSTS_SHOWN`]), each with the
    /// app's state and `last_error` from the host's latest report: why it failed, in the
    /// host's words (a removed host has no report left).
    pub(super) fn failed_hosts_view(&self, rollout: &Rollout) -> Vec<RolloutFailedHost> {
        let app = &rollout.spec().app;
        let reports = self.reports.lock().expect("reports lock");
        rollout
            .failed_hosts()
            .into_iter()
            .take(MAX_FAILED_HOSTS_SHOWN)
            .map(|failed| {
                let reported = reports.get(&failed.host).and_then(|(report, _)| report.apps.get(app));
                RolloutFailedHost {
                    stage: failed.stage,
                    at: failed.at,
                    reason: failed.reason.to_string(),
                    state: reported.map(|state| state.state),
                    error: reported.and_then(|state| state.last_error.clone()),
                    host: failed.host,
                }
            })
            .collect()
    }

    /// `drover status`.
    pub async fn status(&self) -> FleetStatus {
        let model = self.model.lock().await;
        let slots = self.slots.read().expect("slots lock");
        let reports = self.reports.lock().expect("reports lock");
        let mut status = FleetStatus {
            hosts: 0,
            held: 0,
            apps: BTreeMap::new(),
        };
        for host in model.fleet.active_hosts() {
            status.hosts += 1;
            if let Some(slot) = slots.get(&host.id) {
                let published = slot.manifest.borrow();
                status.held += usize::from(published.held);
                for app in published.versions.keys() {
                    status.apps.entry(app.clone()).or_default().desired_hosts += 1;
                }
            }
            if let Some((report, _)) = reports.get(&host.id) {
                for (app, state) in &report.apps {
                    let entry = status.apps.entry(app.clone()).or_default();
                    let version = state
                        .current
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), ToString::to_string);
                    *entry.versions.entry(version).or_default() += 1;
                    let state_name = serde_json::to_value(state.state)
                        .ok()
                        .and_then(|value| value.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    *entry.states.entry(state_name).or_default() += 1;
                }
            }
        }
        // Apps with releases or pins are listed with no host too: after the last host is
        // removed, "what should run" is still there and still the operator's question.
        for (app, _) in model.fleet.releases.keys() {
            status.apps.entry(app.clone()).or_default().releases += 1;
        }
        for ((app, scope), version) in &model.fleet.pins {
            let entry = status.apps.entry(app.clone()).or_default();
            match scope {
                Scope::Fleet => entry.fleet_pin = Some(version.clone()),
                Scope::Group(group) => {
                    entry.group_pins.insert(group.clone(), version.clone());
                }
                Scope::Host(_) => *entry.host_pins.entry(version.to_string()).or_default() += 1,
            }
        }
        status
    }

    /// `drover pins [APP]`: the pins in force (of `app`, or all) with who set them, when
    /// and why, and the holds, as committed.
    pub async fn pins(&self, app: Option<&AppName>) -> Result<PinList, ServiceError> {
        Ok(PinList {
            pins: self.store.pins(app).await?,
            holds: self.store.holds().await?,
        })
    }
}
