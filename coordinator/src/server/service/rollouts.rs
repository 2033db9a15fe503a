//! Rollouts: plan, start, commands, status and history, and the driver's step that
//! feeds reports and timers to the pure controller ([`crate::server::rollout`]).

use std::collections::BTreeSet;

use drover_protocol::api::{CONTROLLER_NAME, HistoryEntry, RolloutPlan, RolloutRequest, RolloutStatus, Scope};
use drover_protocol::{AppName, Duration, Timestamp, Version};

use super::admin::{Actor, Operator, check_reason};
use super::desired::{manifests_with, refuse_oversized, refuse_too_many_apps, restore_pin};
use super::error::{During as _, ServiceError};
use super::views::{plan_view, status_view};
use super::{ActiveRollout, Coordinator, Model};
use crate::server::fleet::Fleet;
use crate::server::rollout::{Action, Event, Plan, PlanError, PlanHost, Rollout, RolloutSpec, SpecText};
use crate::server::store::{HistoryRecord, RolloutCommit, StoredRollout};

/// Defaults of `drover rollout plan|start`, documented in its `--help`.
pub mod rollout_defaults {
    /// A canary, then half the fleet, then all of it.
    pub const STAGES: &str = "canary,50%,100%";
    /// A tenth of the hosts at once (at least one).
    pub const MAX_IN_FLIGHT: &str = "10%";
    /// No bake: a stage passes once all its hosts settled.
    pub const BAKE: &str = "0s";
    /// No failure tolerated: the first one pauses (the canary's always does).
    pub const MAX_FAILURES: &str = "0";
    /// Pause and wait for the operator.
    pub const ON_FAILURE: &str = "pause";
    /// Time a pinned host has to become healthy on the target.
    pub const HOST_DEADLINE: &str = "10m";
}

/// A command on a running rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutCommand {
    /// Pin nothing new.
    Pause,
    /// Continue after a pause (by the operator or the breaker).
    Resume,
    /// Start the next stage (with `approve_each_stage`).
    Approve,
    /// Unpin every touched host.
    Abort { rollback: bool },
}

pub(super) fn rollout_spec(request: &RolloutRequest) -> Result<RolloutSpec, ServiceError> {
    use rollout_defaults as default;
    let text = SpecText {
        app: &request.app,
        target: &request.version,
        stages: request.stages.as_deref().unwrap_or(default::STAGES),
        max_in_flight: request.max_in_flight.as_deref().unwrap_or(default::MAX_IN_FLIGHT),
        bake: request.bake.as_deref().unwrap_or(default::BAKE),
        max_failures: request.max_failures.as_deref().unwrap_or(default::MAX_FAILURES),
        on_failure: request.on_failure.as_deref().unwrap_or(default::ON_FAILURE),
        approve_each_stage: request.approve_each_stage,
        host_deadline: request.host_deadline.as_deref().unwrap_or(default::HOST_DEADLINE),
    };
    RolloutSpec::parse(&text).map_err(|errors| ServiceError::Invalid("bad_rollout_spec", errors.to_string()))
}

pub(super) fn no_rollout(app: &AppName) -> ServiceError {
    ServiceError::Unknown(
        "rollout_not_found",
        format!("{app} has no rollout; plan one with drover rollout plan {app} VERSION"),
    )
}

/// A rollout moves hosts with host pins and ends in the app's fleet pin, so a host pin of
/// the app on a host it would touch (which the rollout would overwrite and could not give
/// back on abort) or a group pin of the app over such a host (which outranks the fleet pin,
/// so the group would go back to its version once the rollout completed) is refused up
/// front, naming the pins and how to clear them.
pub(super) fn refuse_pins_in_the_way(fleet: &Fleet, app: &AppName, hosts: &[PlanHost]) -> Result<(), ServiceError> {
    let mut in_the_way: BTreeSet<(String, String)> = BTreeSet::new();
    for host in hosts {
        if let Some(version) = fleet.pins.get(&(app.clone(), Scope::Host(host.id.clone()))) {
            in_the_way.insert((format!("--host {}", host.id), version.to_string()));
        }
        for group in &host.groups {
            if let Some(version) = fleet.pins.get(&(app.clone(), Scope::Group(group.clone()))) {
                in_the_way.insert((format!("--group {group}"), version.to_string()));
            }
        }
    }
    if in_the_way.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = in_the_way
        .iter()
        .take(5)
        .map(|(scope, version)| format!("{scope} (pinned to {version})"))
        .collect();
    let more = in_the_way.len().saturating_sub(shown.len());
    let first = &in_the_way.first().expect("not empty").0;
    Err(ServiceError::Conflicting(
        "pins_in_the_way",
        format!(
            "{app} has {} group or host pin(s) over hosts this rollout would move: {}{}; a rollout ends in the app's fleet pin, which they would outrank; remove them first (drover unpin {app} {first})",
            in_the_way.len(),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            },
        ),
    ))
}

impl Coordinator {
    /// Validates a rollout request (every bad field at once) and plans it over the hosts
    /// enrolled now, with the id the app's next rollout gets, so `plan` shows what `start`
    /// will do as long as the fleet does not change in between.
    pub(super) async fn plan_rollout_in(
        &self,
        model: &Model,
        request: &RolloutRequest,
    ) -> Result<(RolloutSpec, Plan), ServiceError> {
        let spec = rollout_spec(request)?;
        if !model
            .fleet
            .releases
            .contains_key(&(spec.app.clone(), spec.target.clone()))
        {
            return Err(ServiceError::Unknown(
                "release_not_found",
                format!(
                    "no release {} {}; create it with drover release create",
                    spec.app, spec.target
                ),
            ));
        }
        let sequence = self
            .store
            .rollout_count(&spec.app)
            .await
            .during("counting an app's rollouts")?
            + 1;
        let rollout_id = format!("{}-{}-{sequence}", spec.app, spec.target);
        let hosts = {
            let reports = self.reports.lock();
            model
                .fleet
                .active_hosts()
                .map(|host| PlanHost {
                    id: host.id.clone(),
                    groups: model.fleet.groups_of(&host.labels).map(str::to_owned).collect(),
                    current: reports
                        .get(&host.id)
                        .and_then(|(report, _)| report.apps.get(&spec.app))
                        .and_then(|app| app.current.clone()),
                })
                .collect::<Vec<_>>()
        };
        // During a rollout its own host pins are in place; `start` refuses with
        // `rollout_active` then, and a plan previews the next one.
        if !model.rollouts.contains_key(&spec.app) {
            refuse_pins_in_the_way(&model.fleet, &spec.app, &hosts)?;
        }
        let what = format!("a rollout of {} to {}", spec.app, spec.target);
        for (host, size, apps) in manifests_with(&model.fleet, &spec.app, &spec.target) {
            refuse_oversized(&what, &host, size, 1)?;
            refuse_too_many_apps(&what, &host, apps)?;
        }
        let plan = crate::server::rollout::plan(&spec, &rollout_id, &hosts).map_err(|error| match error {
            PlanError::NoHosts { .. } => ServiceError::Conflicting("no_hosts", error.to_string()),
            PlanError::EmptyGroup { .. } => ServiceError::Invalid("empty_group", error.to_string()),
            PlanError::DuplicateHost { .. } => ServiceError::Invalid("duplicate_host", error.to_string()),
        })?;
        Ok((spec, plan))
    }

    /// `drover rollout plan`: which host is in which stage, without changing anything.
    pub async fn plan_rollout(&self, request: &RolloutRequest) -> Result<RolloutPlan, ServiceError> {
        let model = self.model().await;
        let (spec, plan) = self.plan_rollout_in(&model, request).await?;
        let preview = Rollout::new(spec, plan);
        Ok(plan_view(&preview))
    }

    /// `drover rollout start`: plans, stores the rollout and takes its first step, in one
    /// transaction with the pins and manifests of that step. One active rollout per app.
    pub async fn start_rollout(
        &self,
        request: &RolloutRequest,
        operator: &Operator,
    ) -> Result<RolloutStatus, ServiceError> {
        let reason = check_reason(request.reason.as_deref())?;
        let mut guard = self.model().await;
        let model = &mut *guard;
        let (spec, plan) = self.plan_rollout_in(model, request).await?;
        let app = spec.app.clone();
        if let Some(active) = model.rollouts.get(&app) {
            return Err(ServiceError::Conflicting(
                "rollout_active",
                format!(
                    "{app} already has an active rollout {} ({}); see drover rollout status {app}, or abort it first",
                    active.rollout.id(),
                    active.rollout.phase()
                ),
            ));
        }
        let now = self.now();
        model.rollouts.insert(
            app.clone(),
            ActiveRollout {
                rollout: Rollout::new(spec, plan),
                created_by: operator.name().to_owned(),
                created_at: now,
            },
        );
        let actor = Actor::of(operator, reason);
        if let Err(error) = self
            .step_rollout(model, &app, vec![Event::Start], now, &actor, true)
            .await
        {
            model.rollouts.remove(&app);
            return Err(error);
        }
        drop(guard);
        self.rollout_status(&app).await
    }

    /// `drover rollout pause|resume|approve|abort`: refused (409) when the rollout's
    /// phase does not allow it, changing nothing.
    pub async fn rollout_command(
        &self,
        app: &AppName,
        command: RolloutCommand,
        operator: &Operator,
        reason: Option<&str>,
    ) -> Result<RolloutStatus, ServiceError> {
        let reason = check_reason(reason)?;
        let mut guard = self.model().await;
        if !guard.rollouts.contains_key(app) {
            drop(guard);
            let latest = self
                .store
                .latest_rollout(app)
                .await
                .during("reading the latest rollout")?;
            return Err(match latest {
                Some(stored) => ServiceError::Conflicting(
                    "rollout_finished",
                    format!(
                        "the last rollout of {app}, {}, is already {}; start a new one with drover rollout start",
                        stored.rollout.id(),
                        stored.rollout.phase()
                    ),
                ),
                None => no_rollout(app),
            });
        }
        let event = match command {
            RolloutCommand::Pause => Event::Pause {
                by: operator.name().to_owned(),
                reason: reason.clone(),
            },
            RolloutCommand::Resume => Event::Resume,
            RolloutCommand::Approve => Event::Approve,
            RolloutCommand::Abort { rollback } => Event::Abort { rollback },
        };
        let actor = Actor::of(operator, reason);
        self.step_rollout(&mut guard, app, vec![event], self.now(), &actor, false)
            .await?;
        drop(guard);
        self.rollout_status(app).await
    }

    /// `drover rollout status`: the app's active rollout, else its last one.
    pub async fn rollout_status(&self, app: &AppName) -> Result<RolloutStatus, ServiceError> {
        let now = self.now();
        {
            let model = self.model().await;
            if let Some(active) = model.rollouts.get(app) {
                let mut status = status_view(&active.rollout, &active.created_by, active.created_at, None, now);
                status.failed_hosts = self.failed_hosts_view(&active.rollout);
                return Ok(status);
            }
        }
        let stored: StoredRollout = self
            .store
            .latest_rollout(app)
            .await
            .during("reading the latest rollout")?
            .ok_or_else(|| no_rollout(app))?;
        let mut status = status_view(
            &stored.rollout,
            &stored.created_by,
            stored.created_at,
            stored.finished_at,
            now,
        );
        status.failed_hosts = self.failed_hosts_view(&stored.rollout);
        Ok(status)
    }

    /// `drover rollout history`: rollouts, commands, pins and holds, oldest first.
    pub async fn rollout_history(&self, app: &AppName) -> Result<Vec<HistoryEntry>, ServiceError> {
        self.store.history(app, 10_000).await.during("reading an app's history")
    }

    /// Feeds `events` to `app`'s active rollout and carries out its actions: the new
    /// state, the pin changes (in the order the controller gave them, so completion's
    /// fleet pin comes before the host pins are removed), the history lines and the
    /// manifests they render are committed in one transaction, then published. If the
    /// commit fails, the rollout and the pins in memory are put back as they were (the
    /// stored state, since memory equals the store between steps).
    pub(super) async fn step_rollout(
        &self,
        model: &mut Model,
        app: &AppName,
        events: Vec<Event>,
        now: Timestamp,
        actor: &Actor,
        created: bool,
    ) -> Result<(), ServiceError> {
        let Some(active) = model.rollouts.get_mut(app) else {
            return Err(no_rollout(app));
        };
        let before = active.rollout.clone();
        let mut actions = Vec::new();
        for event in events {
            match active.rollout.step(event, now) {
                Ok(more) => actions.extend(more),
                Err(error) => {
                    active.rollout = before;
                    return Err(ServiceError::Conflicting(error.code(), error.to_string()));
                }
            }
        }
        let rollout_id = active.rollout.id().to_owned();
        let finished = active.rollout.phase().is_finished();
        let mut pins: Vec<(Scope, Option<Version>)> = Vec::new();
        let mut history = Vec::new();
        for action in actions {
            match action {
                Action::PinHosts { hosts, version } => {
                    pins.extend(hosts.into_iter().map(|host| (Scope::Host(host), Some(version.clone()))));
                }
                Action::UnpinHosts { hosts } => pins.extend(hosts.into_iter().map(|host| (Scope::Host(host), None))),
                Action::PinApp { version } => pins.push((Scope::Fleet, Some(version))),
                // The driver re-reads `next_wake` after every step.
                Action::WakeAt { .. } => {}
                Action::Record { what } => history.push(HistoryRecord {
                    app: Some(app.clone()),
                    host: None,
                    rollout: Some(rollout_id.clone()),
                    at: now,
                    who: actor.who.clone(),
                    what,
                    reason: actor.reason.clone(),
                }),
            }
        }
        let mut undo = Vec::with_capacity(pins.len());
        for (scope, version) in &pins {
            let key = (app.clone(), scope.clone());
            let previous = match version {
                Some(version) => model.fleet.pins.insert(key.clone(), version.clone()),
                None => model.fleet.pins.remove(&key),
            };
            undo.push((key, previous));
        }
        let scopes: Vec<Scope> = if pins.iter().any(|(scope, _)| scope == &Scope::Fleet) {
            vec![Scope::Fleet]
        } else {
            pins.iter().map(|(scope, _)| scope.clone()).collect()
        };
        let manifests = if scopes.is_empty() {
            Vec::new()
        } else {
            self.render_scope(model, &scopes, now)
        };
        let active = model.rollouts.get(app).expect("looked up above");
        let commit = RolloutCommit {
            rollout: &active.rollout,
            created: created.then_some((active.created_by.as_str(), active.created_at)),
            finished_at: finished.then_some(now),
            pins: &pins,
            pin_origin: (&actor.who, now, actor.reason.as_deref()),
            history: &history,
            manifests: &manifests,
        };
        if let Err(error) = self
            .store
            .commit_rollout(&commit)
            .await
            .during("recording a rollout step")
        {
            for (key, previous) in undo.into_iter().rev() {
                restore_pin(&mut model.fleet, key, previous);
            }
            if let Some(active) = model.rollouts.get_mut(app) {
                active.rollout = before;
            }
            return Err(error);
        }
        self.applied(model, &manifests);
        if finished {
            model.rollouts.remove(app);
        }
        self.metrics.rollout_steps.add(1);
        self.rollout_signal.notify_one();
        Ok(())
    }

    /// One pass of the rollout driver: feeds changed reports and the timers due by the
    /// coordinator's clock to the active rollouts; returns when it should run again at the
    /// latest. The driver task calls it on every wake-up; tests call it after moving a
    /// [`ManualClock`](crate::server::clock::ManualClock) on.
    pub async fn drive_once(&self) -> Option<Timestamp> {
        let dirty = std::mem::take(&mut *self.rollout_dirty.lock());
        let mut guard = self.model().await;
        let model = &mut *guard;
        let now = self.now();
        let mut retry = None;
        let apps: Vec<AppName> = model.rollouts.keys().cloned().collect();
        for app in apps {
            let mut events = Vec::new();
            {
                let rollout = &model.rollouts[&app].rollout;
                let reports = self.reports.lock();
                for host in &dirty {
                    if rollout.host_status(host).is_none() {
                        continue;
                    }
                    if let Some(state) = reports.get(host).and_then(|(report, _)| report.apps.get(&app)) {
                        events.push(Event::Report {
                            host: host.clone(),
                            current: state.current.clone(),
                            desired: state.desired.clone(),
                            state: state.state,
                        });
                    }
                }
                if events.is_empty() && rollout.next_wake().is_some_and(|at| at <= now) {
                    events.push(Event::Tick);
                }
            }
            if events.is_empty() {
                continue;
            }
            let actor = Actor {
                who: CONTROLLER_NAME.to_owned(),
                reason: None,
            };
            if let Err(error) = self.step_rollout(model, &app, events, now, &actor, false).await {
                tracing::error!(%error, %app, "rollout step failed; retrying in a second");
                self.rollout_dirty.lock().extend(dirty.iter().cloned());
                retry = Some(now.plus(Duration::from_secs(1)));
            }
        }
        model
            .rollouts
            .values()
            .filter_map(|active| active.rollout.next_wake())
            .chain(retry)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use drover_protocol::api::{Pin, RolloutPhase, RolloutRequest, Scope};
    use drover_protocol::report::AppState;
    use drover_protocol::{AppName, HostId};

    use super::{refuse_pins_in_the_way, rollout_spec};
    use crate::server::clock::Clock;
    use crate::server::fleet::Fleet;
    use crate::server::rollout::PlanHost;
    use crate::server::service::RolloutCommand;
    use crate::server::service::testing::{code, coordinator, name, operator, report};

    fn request(stages: &str) -> RolloutRequest {
        RolloutRequest {
            app: "web".to_owned(),
            version: "1.0.0".to_owned(),
            stages: Some(stages.to_owned()),
            ..RolloutRequest::default()
        }
    }

    fn plan_host(id: &str, groups: &[&str]) -> PlanHost {
        PlanHost {
            id: name(id),
            groups: groups.iter().map(|group| (*group).to_owned()).collect::<BTreeSet<_>>(),
            current: None,
        }
    }

    #[test]
    fn the_defaults_make_a_valid_spec_and_every_bad_field_is_named() {
        let spec = rollout_spec(&RolloutRequest {
            app: "web".to_owned(),
            version: "1.0.0".to_owned(),
            ..RolloutRequest::default()
        })
        .expect("the defaults parse");
        assert_eq!(spec.app.as_str(), "web");
        let error = rollout_spec(&RolloutRequest {
            bake: Some("soon".to_owned()),
            max_in_flight: Some("-3".to_owned()),
            ..request("canary")
        })
        .expect_err("bad fields");
        assert_eq!(code(&error), "bad_rollout_spec");
        let message = error.to_string();
        assert!(message.contains("bake") && message.contains("max"), "{message}");
    }

    #[test]
    fn host_and_group_pins_over_moved_hosts_are_in_the_way() {
        let mut fleet = Fleet::default();
        let hosts = [plan_host("web-1", &["eu"]), plan_host("web-2", &[])];
        let app: AppName = name("web");
        refuse_pins_in_the_way(&fleet, &app, &hosts).expect("no pins");
        fleet
            .pins
            .insert((name("api"), Scope::Host(name("web-1"))), name("2.0.0"));
        fleet
            .pins
            .insert((app.clone(), Scope::Group("us".to_owned())), name("0.9.0"));
        fleet.pins.insert((app.clone(), Scope::Fleet), name("0.9.0"));
        refuse_pins_in_the_way(&fleet, &app, &hosts).expect("another app's pin, an unrelated group, the fleet pin");
        fleet
            .pins
            .insert((app.clone(), Scope::Host(name("web-2"))), name("0.9.0"));
        fleet
            .pins
            .insert((app.clone(), Scope::Group("eu".to_owned())), name("0.8.0"));
        let error = refuse_pins_in_the_way(&fleet, &app, &hosts).expect_err("in the way");
        assert_eq!(code(&error), "pins_in_the_way");
        let message = error.to_string();
        assert!(message.contains("--host web-2 (pinned to 0.9.0)"), "{message}");
        assert!(message.contains("--group eu (pinned to 0.8.0)"), "{message}");
        assert!(message.contains("drover unpin web --group eu"), "{message}");
    }

    #[tokio::test]
    async fn a_rollout_owns_the_apps_pins_until_it_completes_on_a_healthy_report() {
        let test = coordinator().await;
        let service = &test.coordinator;
        test.join("web-1", &[]).await;
        test.release("web", "1.0.0").await;
        let app: AppName = name("web");
        assert_eq!(
            code(&service.rollout_status(&app).await.expect_err("none yet")),
            "rollout_not_found"
        );
        let status = service
            .start_rollout(&request("100%"), &operator())
            .await
            .expect("start");
        assert_eq!(status.phase, RolloutPhase::Running);
        let error = service
            .start_rollout(&request("100%"), &operator())
            .await
            .expect_err("second");
        assert_eq!(code(&error), "rollout_active");
        let manual = Pin {
            app: app.clone(),
            version: name("1.0.0"),
            scope: Scope::Fleet,
        };
        assert_eq!(
            code(&service.pin(manual, &operator(), None).await.expect_err("during")),
            "rollout_active"
        );
        let host: HostId = name("web-1");
        service
            .accept_report(&host, report("web-1", &[("web", "1.0.0", AppState::Healthy)]))
            .expect("report");
        service.drive_once().await;
        let status = service.rollout_status(&app).await.expect("status");
        assert_eq!(status.phase, RolloutPhase::Completed, "{status:?}");
        let error = service
            .rollout_command(&app, RolloutCommand::Pause, &operator(), None)
            .await
            .expect_err("finished");
        assert_eq!(code(&error), "rollout_finished");
        let pins = service.pins(Some(&app)).await.expect("pins").pins;
        assert_eq!(pins.len(), 1, "the fleet pin, the host pin given back: {pins:?}");
        let history = service.rollout_history(&app).await.expect("history");
        assert!(history.iter().any(|entry| entry.who == "tester"), "{history:?}");
    }

    /// The hosts `app` is pinned to by host pins (the rollout's pins).
    async fn host_pins(service: &crate::server::service::Coordinator, app: &AppName) -> Vec<HostId> {
        let model = service.model.lock().await;
        model
            .fleet
            .pins
            .keys()
            .filter(|(pinned, _)| pinned == app)
            .filter_map(|(_, scope)| match scope {
                Scope::Host(host) => Some(host.clone()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_bake_ends_and_the_next_stage_starts_when_the_clock_says_so() {
        let test = coordinator().await;
        let service = &test.coordinator;
        test.join("web-1", &[]).await;
        test.join("web-2", &[]).await;
        test.release("web", "1.0.0").await;
        let app: AppName = name("web");
        let started = RolloutRequest {
            bake: Some("10m".to_owned()),
            ..request("canary,100%")
        };
        service.start_rollout(&started, &operator()).await.expect("start");
        let canary = host_pins(service, &app).await;
        assert_eq!(canary.len(), 1, "the canary first: {canary:?}");
        service
            .accept_report(
                &canary[0],
                report(canary[0].as_str(), &[("web", "1.0.0", AppState::Healthy)]),
            )
            .expect("report");
        let baked_from = test.clock.now();
        let wake = service.drive_once().await;
        assert_eq!(wake, Some(baked_from.plus(drover_protocol::Duration::from_secs(600))));
        let status = service.rollout_status(&app).await.expect("status");
        assert_eq!(status.stages[0].status, "baking", "{status:?}");
        assert_eq!(
            status.stages[0].bake_remaining,
            Some(drover_protocol::Duration::from_secs(600))
        );

        test.clock.advance(drover_protocol::Duration::from_secs(599));
        service.drive_once().await;
        assert_eq!(
            host_pins(service, &app).await,
            canary,
            "still baking a second before its end"
        );
        let status = service.rollout_status(&app).await.expect("status");
        assert_eq!(
            status.stages[0].bake_remaining,
            Some(drover_protocol::Duration::from_secs(1))
        );

        test.clock.advance(drover_protocol::Duration::from_secs(1));
        service.drive_once().await;
        let status = service.rollout_status(&app).await.expect("status");
        assert_eq!(status.stages[0].status, "passed", "{status:?}");
        assert_eq!(status.stage, Some(1));
        let pinned = host_pins(service, &app).await;
        assert_eq!(pinned.len(), 2, "the second stage's host is pinned too: {pinned:?}");
    }

    #[tokio::test]
    async fn a_host_that_misses_its_deadline_fails_by_the_clock() {
        let test = coordinator().await;
        let service = &test.coordinator;
        test.join("web-1", &[]).await;
        test.release("web", "1.0.0").await;
        let app: AppName = name("web");
        let started = RolloutRequest {
            host_deadline: Some("5m".to_owned()),
            ..request("100%")
        };
        service.start_rollout(&started, &operator()).await.expect("start");
        test.clock.advance(drover_protocol::Duration::from_secs(299));
        service.drive_once().await;
        assert_eq!(service.rollout_status(&app).await.expect("status").failures, 0);
        test.clock.advance(drover_protocol::Duration::from_secs(1));
        service.drive_once().await;
        let status = service.rollout_status(&app).await.expect("status");
        assert_eq!(status.failures, 1, "{status:?}");
        assert_eq!(status.phase, RolloutPhase::PausedByBreaker, "{status:?}");
        assert_eq!(status.failed_hosts.len(), 1);
    }
}
