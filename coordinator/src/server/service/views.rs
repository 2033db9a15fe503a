//! Read-only views for the API: fleet status, pins, and the rollout plan/status bodies.

use std::collections::BTreeMap;

use drover_protocol::api::PinList;
use drover_protocol::api::{
    FleetStatus, RolloutPhase, RolloutPlan, RolloutPlanHost, RolloutPlanStage, RolloutStageStatus, RolloutStatus, Scope,
};
use drover_protocol::api::{MAX_FAILED_HOSTS_SHOWN, RolloutFailedHost};
use drover_protocol::{AppName, Timestamp};

use super::Coordinator;
use super::error::{During as _, ServiceError};
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
        let reports = self.reports.lock();
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
        // Several replicas on one database: which one runs the rollouts (unknown while
        // the database cannot be read; a single coordinator names none).
        let leader = match self.store.replicas().await {
            Ok(Some(replicas)) => replicas
                .into_iter()
                .find(|replica| replica.leader)
                .map(|replica| replica.id),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "could not read which coordinator leads");
                None
            }
        };
        let model = self.model().await;
        let slots = self.slots.read();
        let reports = self.reports.lock();
        let mut status = FleetStatus {
            leader,
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
            pins: self.store.pins(app).await.during("reading the pins")?,
            holds: self.store.holds().await.during("reading the holds")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use drover_protocol::api::{RolloutPhase, Scope};
    use drover_protocol::report::AppState;
    use drover_protocol::{Timestamp, Version};

    use super::{plan_view, status_view};
    use crate::server::rollout::{PlanHost, Rollout, RolloutSpec, SpecText, plan};
    use crate::server::service::testing::{coordinator, name, operator, report};

    fn rollout() -> Rollout {
        let spec = RolloutSpec::parse(&SpecText {
            app: "web",
            target: "1.0.0",
            stages: "canary,100%",
            max_in_flight: "1",
            bake: "10m",
            max_failures: "0",
            on_failure: "pause",
            approve_each_stage: false,
            host_deadline: "10m",
        })
        .expect("spec");
        let hosts: Vec<PlanHost> = ["web-1", "web-2", "web-3"]
            .into_iter()
            .map(|id| PlanHost {
                id: name(id),
                groups: Default::default(),
                current: Some(name::<Version>("0.9.0")),
            })
            .collect();
        let plan = plan(&spec, "web-1.0.0-1", &hosts).expect("plan");
        Rollout::new(spec, plan)
    }

    #[test]
    fn the_plan_view_lists_every_host_once_with_its_version() {
        let view = plan_view(&rollout());
        assert_eq!(view.rollout, "web-1.0.0-1");
        assert_eq!(view.stages.first().map(|stage| stage.label.as_str()), Some("canary"));
        let mut hosts: Vec<String> = view
            .stages
            .iter()
            .flat_map(|stage| stage.hosts.iter().map(|host| host.id.to_string()))
            .collect();
        hosts.sort();
        assert_eq!(hosts, ["web-1", "web-2", "web-3"]);
        assert!(
            view.stages
                .iter()
                .flat_map(|stage| &stage.hosts)
                .all(|host| host.current.is_some())
        );
        assert_eq!(view.max_in_flight, 1);
    }

    #[test]
    fn a_rollout_not_started_is_pending_with_no_stage_begun() {
        let created = Timestamp::from_unix(1_000_000);
        let status = status_view(&rollout(), "tester", created, None, created);
        assert_eq!(status.phase, RolloutPhase::Pending);
        assert_eq!(status.created_by, "tester");
        assert_eq!(status.finished_at, None);
        assert!(
            status.stages.iter().all(|stage| stage.status == "not_started"),
            "{status:?}"
        );
        assert_eq!(status.stages.iter().map(|stage| stage.total).sum::<usize>(), 3);
        assert!(status.failed_hosts.is_empty());
    }

    #[tokio::test]
    async fn fleet_status_counts_desired_and_reported_versions_and_apps_without_hosts() {
        let test = coordinator().await;
        let service = &test.coordinator;
        test.join("web-1", &[]).await;
        test.join("web-2", &[]).await;
        test.release("web", "1.0.0").await;
        test.release("api", "2.0.0").await;
        let pin = drover_protocol::api::Pin {
            app: name("web"),
            version: name("1.0.0"),
            scope: Scope::Fleet,
        };
        service.pin(pin, &operator(), None).await.expect("pin");
        service
            .hold(Scope::Host(name("web-2")), true, &operator(), None)
            .await
            .expect("hold");
        service
            .accept_report(&name("web-1"), report("web-1", &[("web", "1.0.0", AppState::Healthy)]))
            .expect("report");
        let status = service.status().await;
        assert_eq!((status.hosts, status.held), (2, 1));
        let web = &status.apps[&name("web")];
        assert_eq!(web.desired_hosts, 2);
        assert_eq!(web.versions.get("1.0.0"), Some(&1));
        assert_eq!(web.states.get("healthy"), Some(&1));
        assert_eq!(web.fleet_pin, Some(name("1.0.0")));
        let api = &status.apps[&name("api")];
        assert_eq!((api.releases, api.desired_hosts), (1, 0), "listed without hosts");
    }
}
