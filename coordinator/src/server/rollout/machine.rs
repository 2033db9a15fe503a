//! The state machine: [`Rollout::step`] is `(state, event, now) -> (state, actions)`,
//! with the phases, events and actions it works on. The view of a rollout for
//! `drover rollout status|watch` is computed in [`super::progress`], which reads the
//! fields marked `pub(super)` here; nothing outside the rollout module sees them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use drover_protocol::report::AppState;
use drover_protocol::{HostId, Timestamp, Version};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::plan::{Plan, StageLabel};
use super::spec::{OnFailure, RolloutSpec};

/// Where a rollout is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Planned, not started.
    Pending,
    /// Pinning and watching the current stage.
    Running,
    /// Pinning nothing new; hosts already in flight still report and still count.
    Paused {
        /// Why.
        reason: PauseReason,
    },
    /// Every stage passed; the target is the app's fleet pin.
    Completed {
        /// When.
        at: Timestamp,
    },
    /// Stopped by the operator; every touched host was unpinned.
    Aborted {
        /// When.
        at: Timestamp,
        /// Whether the operator asked for `--rollback` (the same actions; see the module doc).
        rollback: bool,
    },
    /// The breaker tripped with `--on-failure rollback`; every touched host was unpinned.
    RolledBack {
        /// When.
        at: Timestamp,
    },
}

impl Phase {
    /// Whether the rollout is over (no event changes it any more).
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            Phase::Completed { .. } | Phase::Aborted { .. } | Phase::RolledBack { .. }
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Pending => f.write_str("pending"),
            Phase::Running => f.write_str("running"),
            Phase::Paused {
                reason: PauseReason::Operator { by, .. },
            } => write!(f, "paused by {by}"),
            Phase::Paused {
                reason: PauseReason::FailureBudget,
            } => f.write_str("paused by the failure breaker"),
            Phase::Paused {
                reason: PauseReason::AwaitingApproval,
            } => f.write_str("awaiting approval of the next stage"),
            Phase::Completed { .. } => f.write_str("completed"),
            Phase::Aborted { .. } => f.write_str("aborted"),
            Phase::RolledBack { .. } => f.write_str("rolled back"),
        }
    }
}

/// Why a rollout is paused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// `drover rollout pause`, by this token name, with its `--reason`.
    Operator {
        by: String,
        /// Absent from states stored before reasons were kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The failure breaker tripped (budget exceeded, or the canary failed).
    FailureBudget,
    /// A stage passed and `approve_each_stage` asks for `drover rollout approve`.
    AwaitingApproval,
}

/// Why a host counts as failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// It reported `failed`, `rolled_back` or `unhealthy` about the target.
    Reported { state: AppState },
    /// It was not healthy on the target within the deadline (held, if it said so last).
    MissedDeadline { held: bool },
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::Reported { state } => write!(f, "reported {}", state_name(*state)),
            FailureReason::MissedDeadline { held: false } => f.write_str("not healthy within the deadline"),
            FailureReason::MissedDeadline { held: true } => f.write_str("held past the deadline"),
        }
    }
}

fn state_name(state: AppState) -> &'static str {
    match state {
        AppState::Fetching => "fetching",
        AppState::Installing => "installing",
        AppState::Starting => "starting",
        AppState::Healthy => "healthy",
        AppState::Unhealthy => "unhealthy",
        AppState::Failed => "failed",
        AppState::RolledBack => "rolled_back",
        AppState::Held => "held",
    }
}

/// One host's place in the rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum HostStatus {
    /// Not pinned yet; `on_target` when its last report was healthy on the target.
    Waiting { on_target: bool },
    /// Pinned to the target, neither healthy on it nor failed.
    InFlight {
        pinned_at: Timestamp,
        deadline: Timestamp,
        held: bool,
    },
    /// Healthy on the target.
    Healthy { pinned_at: Timestamp, at: Timestamp },
    /// Counted as a failure (once; later reports do not change it).
    Failed { at: Timestamp, reason: FailureReason },
    /// Removed from the fleet; no longer part of the rollout.
    Removed,
}

/// A host the rollout counts as failed ([`Rollout::failed_hosts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedHost {
    /// The host.
    pub host: HostId,
    /// The index of its stage.
    pub stage: usize,
    /// When it was counted as failed.
    pub at: Timestamp,
    /// Why.
    pub reason: FailureReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct HostProgress {
    pub(super) stage: usize,
    pub(super) status: HostStatus,
}

/// What happened; the closed set of inputs to [`Rollout::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `drover rollout start`.
    Start,
    /// A host's latest report about this app.
    Report {
        host: HostId,
        /// The release running.
        current: Option<Version>,
        /// The release its manifest asks for.
        desired: Option<Version>,
        state: AppState,
    },
    /// A timer fired (see [`Action::WakeAt`]); any event also checks timers.
    Tick,
    /// `drover rollout pause`, by this token name, with its `--reason`.
    Pause { by: String, reason: Option<String> },
    /// `drover rollout resume`.
    Resume,
    /// `drover rollout approve`.
    Approve,
    /// `drover rollout abort [--rollback]`.
    Abort { rollback: bool },
    /// `drover hosts remove`.
    HostRemoved { host: HostId },
}

/// What the coordinator must do; the closed set of outputs of [`Rollout::step`]. Apply
/// them in order, in one store transaction with the rollout's new state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Host-scope pins of the app to `version`.
    PinHosts { hosts: Vec<HostId>, version: Version },
    /// Remove the app's host-scope pins of these hosts, so they fall back to the group or
    /// fleet pin they had before the rollout.
    UnpinHosts { hosts: Vec<HostId> },
    /// Make `version` the app's fleet pin (on completion; it comes before the unpinning
    /// so that no host falls back to the old release in between).
    PinApp { version: Version },
    /// Send [`Event::Tick`] at this instant (replaces any earlier wake-up).
    WakeAt { at: Timestamp },
    /// A line for the rollout's history.
    Record { what: String },
}

/// A command refused because of the rollout's phase (HTTP 409, exit code 4). The
/// rollout is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RolloutError {
    /// `start` on a rollout that is not pending.
    #[error("start rollout {rollout}: it is already {phase}; a rollout runs once, plan a new one")]
    AlreadyStarted { rollout: String, phase: Phase },
    /// `pause` on a rollout that is not running.
    #[error("pause rollout {rollout}: it is {phase}, not running")]
    NotRunning { rollout: String, phase: Phase },
    /// `resume` on a rollout that is not paused by the operator or the breaker.
    #[error("resume rollout {rollout}: it is {phase}{hint}")]
    NotResumable {
        rollout: String,
        phase: Phase,
        hint: &'static str,
    },
    /// `approve` on a rollout that is not waiting for approval.
    #[error("approve rollout {rollout}: it is {phase}, not awaiting approval")]
    NotAwaitingApproval { rollout: String, phase: Phase },
    /// `abort` on a finished rollout.
    #[error("abort rollout {rollout}: it is already {phase}")]
    Finished { rollout: String, phase: Phase },
}

impl RolloutError {
    /// The API's error code (the HTTP status is always 409).
    pub fn code(&self) -> &'static str {
        match self {
            RolloutError::AlreadyStarted { .. } => "rollout_already_started",
            RolloutError::NotRunning { .. } => "rollout_not_running",
            RolloutError::NotResumable { .. } => "rollout_not_paused",
            RolloutError::NotAwaitingApproval { .. } => "rollout_not_awaiting_approval",
            RolloutError::Finished { .. } => "rollout_finished",
        }
    }
}

/// One rollout's whole state: persisted after every step, resumed exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub(super) spec: RolloutSpec,
    pub(super) plan: Plan,
    pub(super) phase: Phase,
    /// The last stage started.
    pub(super) stage: Option<usize>,
    /// The next host of the current stage to consider pinning (hosts are pinned in plan order).
    pub(super) cursor: usize,
    /// When the current stage started or a host of it last settled: the bake counts from here.
    pub(super) stage_settled_at: Timestamp,
    pub(super) hosts: BTreeMap<HostId, HostProgress>,
    pub(super) in_flight: BTreeSet<HostId>,
    pub(super) failures: usize,
    pub(super) max_in_flight: usize,
    pub(super) failure_budget: usize,
    /// The last wake-up asked for.
    pub(super) wake: Option<Timestamp>,
}

impl Rollout {
    /// A pending rollout of `spec` following `plan` (from [`plan`](super::plan()) with the same spec).
    pub fn new(spec: RolloutSpec, plan: Plan) -> Rollout {
        let mut hosts = BTreeMap::new();
        for (stage, planned) in plan.stages.iter().enumerate() {
            for host in &planned.hosts {
                let on_target = host.current.as_ref() == Some(&spec.target);
                let status = HostStatus::Waiting { on_target };
                hosts.insert(host.id.clone(), HostProgress { stage, status });
            }
        }
        let total = hosts.len();
        Rollout {
            // A zero limit would never move; `RolloutSpec::parse` refuses it, this is the backstop.
            max_in_flight: spec.max_in_flight.ceil_of(total).max(1),
            failure_budget: spec.max_failures.floor_of(total),
            spec,
            plan,
            phase: Phase::Pending,
            stage: None,
            cursor: 0,
            stage_settled_at: Timestamp::EPOCH,
            hosts,
            in_flight: BTreeSet::new(),
            failures: 0,
            wake: None,
        }
    }

    /// The rollout's id.
    pub fn id(&self) -> &str {
        &self.plan.rollout_id
    }

    /// What was asked for.
    pub fn spec(&self) -> &RolloutSpec {
        &self.spec
    }

    /// Which host is in which stage.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Where the rollout is.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The index of the last stage started, if any.
    pub fn current_stage(&self) -> Option<usize> {
        self.stage
    }

    /// Hosts counted as failed so far.
    pub fn failures(&self) -> usize {
        self.failures
    }

    /// Failures tolerated; one more trips the breaker.
    pub fn failure_budget(&self) -> usize {
        self.failure_budget
    }

    /// Most hosts in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Hosts in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// A host's status, if it is part of the rollout.
    pub fn host_status(&self, host: &HostId) -> Option<&HostStatus> {
        self.hosts.get(host).map(|progress| &progress.status)
    }

    /// The hosts counted as failed, oldest failure first (the first ones are what tripped
    /// the breaker), each with its stage and why: what `drover rollout status|watch` name.
    pub fn failed_hosts(&self) -> Vec<FailedHost> {
        let mut failed: Vec<FailedHost> = self
            .hosts
            .iter()
            .filter_map(|(host, progress)| match progress.status {
                HostStatus::Failed { at, reason } => Some(FailedHost {
                    host: host.clone(),
                    stage: progress.stage,
                    at,
                    reason,
                }),
                _ => None,
            })
            .collect();
        failed.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.host.cmp(&b.host)));
        failed
    }

    /// When the next [`Event::Tick`] is needed (after a restart, re-arm the timer with it).
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.wake
    }

    /// Applies one event at `now`. Commands the phase does not allow are refused with a
    /// [`RolloutError`] and change nothing; reports, ticks and removals are facts and are
    /// never refused (after the rollout finished they are ignored).
    pub fn step(&mut self, event: Event, now: Timestamp) -> Result<Vec<Action>, RolloutError> {
        let mut actions = Vec::new();
        let phase = self.phase.clone();
        match (event, phase) {
            (Event::Start, Phase::Pending) => {
                actions.push(record(format!(
                    "rollout {} of {} to {} started: {} hosts in {} stages, at most {} in flight, {} failures tolerated",
                    self.plan.rollout_id,
                    self.spec.app,
                    self.spec.target,
                    self.hosts.len(),
                    self.plan.stages.len(),
                    self.max_in_flight,
                    self.failure_budget
                )));
                self.begin_stage(0, now, &mut actions);
            }
            (Event::Start, phase) => {
                return Err(RolloutError::AlreadyStarted {
                    rollout: self.plan.rollout_id.clone(),
                    phase,
                });
            }
            (Event::Pause { by, reason }, Phase::Running) => {
                actions.push(record(format!("paused by {by}")));
                self.phase = Phase::Paused {
                    reason: PauseReason::Operator { by, reason },
                };
            }
            (Event::Pause { .. }, phase) => {
                return Err(RolloutError::NotRunning {
                    rollout: self.plan.rollout_id.clone(),
                    phase,
                });
            }
            (
                Event::Resume,
                Phase::Paused {
                    reason: PauseReason::Operator { .. } | PauseReason::FailureBudget,
                },
            ) => {
                actions.push(record(format!(
                    "resumed with {} of {} tolerated failures used",
                    self.failures, self.failure_budget
                )));
                self.phase = Phase::Running;
            }
            (
                Event::Resume,
                phase @ Phase::Paused {
                    reason: PauseReason::AwaitingApproval,
                },
            ) => {
                return Err(RolloutError::NotResumable {
                    rollout: self.plan.rollout_id.clone(),
                    phase,
                    hint: "; approve the next stage instead (`drover rollout approve`)",
                });
            }
            (Event::Resume, phase) => {
                return Err(RolloutError::NotResumable {
                    rollout: self.plan.rollout_id.clone(),
                    phase,
                    hint: ", not paused",
                });
            }
            (
                Event::Approve,
                Phase::Paused {
                    reason: PauseReason::AwaitingApproval,
                },
            ) => {
                actions.push(record("next stage approved".to_owned()));
                let next = self.stage.map_or(0, |stage| stage + 1);
                self.begin_stage(next, now, &mut actions);
            }
            (Event::Approve, phase) => {
                return Err(RolloutError::NotAwaitingApproval {
                    rollout: self.plan.rollout_id.clone(),
                    phase,
                });
            }
            (Event::Abort { rollback }, Phase::Pending | Phase::Running | Phase::Paused { .. }) => {
                self.unpin_touched(&mut actions);
                let how = if rollback {
                    "aborted with --rollback: every touched host returns to its previous release"
                } else {
                    "aborted: every touched host returns to its previous desired release"
                };
                actions.push(record(how.to_owned()));
                self.phase = Phase::Aborted { at: now, rollback };
            }
            (
                Event::Abort { .. },
                phase @ (Phase::Completed { .. } | Phase::Aborted { .. } | Phase::RolledBack { .. }),
            ) => {
                return Err(RolloutError::Finished {
                    rollout: self.plan.rollout_id.clone(),
                    phase,
                });
            }
            (Event::Report { .. } | Event::Tick | Event::HostRemoved { .. }, phase) if phase.is_finished() => {
                return Ok(actions);
            }
            (
                Event::Report {
                    host,
                    current,
                    desired,
                    state,
                },
                _,
            ) => self.observe(&host, current.as_ref(), desired.as_ref(), state, now, &mut actions),
            (Event::Tick, _) => {}
            (Event::HostRemoved { host }, _) => self.remove(&host, &mut actions),
        }
        self.expire(now, &mut actions);
        self.advance(now, &mut actions);
        let next = self.next_timer();
        if next != self.wake {
            self.wake = next;
            if let Some(at) = next {
                actions.push(Action::WakeAt { at });
            }
        }
        Ok(actions)
    }

    /// Starts the first stage at or after `from` that still has hosts, or completes.
    fn begin_stage(&mut self, from: usize, now: Timestamp, actions: &mut Vec<Action>) {
        let Some(stage) = (from..self.plan.stages.len()).find(|&stage| self.stage_has_hosts(stage)) else {
            self.complete(now, actions);
            return;
        };
        self.stage = Some(stage);
        self.cursor = 0;
        self.stage_settled_at = now;
        self.phase = Phase::Running;
        let planned = &self.plan.stages[stage];
        actions.push(record(format!(
            "stage {} of {} ({}) started: {} hosts",
            stage + 1,
            self.plan.stages.len(),
            planned.label,
            planned.hosts.len()
        )));
    }

    fn stage_has_hosts(&self, stage: usize) -> bool {
        self.plan.stages[stage].hosts.iter().any(|planned| {
            self.hosts
                .get(&planned.id)
                .is_some_and(|progress| progress.status != HostStatus::Removed)
        })
    }

    /// While running: pins what the window allows, and moves on when the stage passed.
    fn advance(&mut self, now: Timestamp, actions: &mut Vec<Action>) {
        while self.phase == Phase::Running {
            let Some(stage) = self.stage else { return };
            self.fill(stage, now, actions);
            if !self.stage_settled(stage) || now < self.stage_settled_at.plus(self.spec.bake) {
                return;
            }
            actions.push(record(format!(
                "stage {} ({}) passed",
                stage + 1,
                self.plan.stages[stage].label
            )));
            let next = (stage + 1..self.plan.stages.len()).find(|&next| self.stage_has_hosts(next));
            match next {
                None => self.complete(now, actions),
                Some(_) if self.spec.approve_each_stage => {
                    actions.push(record("waiting for approval of the next stage".to_owned()));
                    self.phase = Phase::Paused {
                        reason: PauseReason::AwaitingApproval,
                    };
                }
                Some(next) => self.begin_stage(next, now, actions),
            }
        }
    }

    /// Pins the current stage's next hosts, in plan order, while the window has room.
    /// Hosts already healthy on the target are pinned without taking a slot.
    fn fill(&mut self, stage: usize, now: Timestamp, actions: &mut Vec<Action>) {
        let planned = &self.plan.stages[stage].hosts;
        let mut pinned = Vec::new();
        while let Some(host) = planned.get(self.cursor) {
            let Some(progress) = self.hosts.get_mut(&host.id) else {
                self.cursor += 1;
                continue;
            };
            match progress.status {
                HostStatus::Waiting { on_target: true } => {
                    progress.status = HostStatus::Healthy {
                        pinned_at: now,
                        at: now,
                    };
                    self.stage_settled_at = self.stage_settled_at.max(now);
                }
                HostStatus::Waiting { on_target: false } => {
                    if self.in_flight.len() >= self.max_in_flight {
                        break;
                    }
                    progress.status = HostStatus::InFlight {
                        pinned_at: now,
                        deadline: now.plus(self.spec.host_deadline),
                        held: false,
                    };
                    self.in_flight.insert(host.id.clone());
                }
                HostStatus::InFlight { .. }
                | HostStatus::Healthy { .. }
                | HostStatus::Failed { .. }
                | HostStatus::Removed => {
                    self.cursor += 1;
                    continue;
                }
            }
            pinned.push(host.id.clone());
            self.cursor += 1;
        }
        if !pinned.is_empty() {
            actions.push(Action::PinHosts {
                hosts: pinned,
                version: self.spec.target.clone(),
            });
        }
    }

    /// Every host of `stage` pinned (or removed) and none in flight. Only the current
    /// stage ever has hosts in flight, since a stage passes only when none is.
    pub(super) fn stage_settled(&self, stage: usize) -> bool {
        self.cursor >= self.plan.stages[stage].hosts.len() && self.in_flight.is_empty()
    }

    fn observe(
        &mut self,
        host: &HostId,
        current: Option<&Version>,
        desired: Option<&Version>,
        state: AppState,
        now: Timestamp,
        actions: &mut Vec<Action>,
    ) {
        let target = Some(&self.spec.target);
        let healthy_on_target = state == AppState::Healthy && current == target;
        let failing_target = matches!(state, AppState::Failed | AppState::RolledBack | AppState::Unhealthy)
            && (desired == target || current == target);
        let Some(progress) = self.hosts.get_mut(host) else {
            return;
        };
        match progress.status {
            HostStatus::Waiting { .. } => {
                progress.status = HostStatus::Waiting {
                    on_target: healthy_on_target,
                }
            }
            HostStatus::InFlight {
                pinned_at,
                deadline,
                held,
            } => {
                if healthy_on_target {
                    progress.status = HostStatus::Healthy { pinned_at, at: now };
                    self.in_flight.remove(host);
                    self.stage_settled_at = self.stage_settled_at.max(now);
                } else if failing_target {
                    self.fail(host, FailureReason::Reported { state }, now, actions);
                } else if held != (state == AppState::Held) {
                    progress.status = HostStatus::InFlight {
                        pinned_at,
                        deadline,
                        held: !held,
                    };
                    if !held {
                        actions.push(record(format!(
                            "host {host} is held; it counts as in flight until {deadline}"
                        )));
                    }
                }
            }
            HostStatus::Healthy { .. } if failing_target => {
                self.fail(host, FailureReason::Reported { state }, now, actions);
            }
            HostStatus::Healthy { .. } | HostStatus::Failed { .. } | HostStatus::Removed => {}
        }
    }

    /// Counts `host` as failed (once) and trips the breaker when the canary failed or the
    /// budget is exceeded.
    fn fail(&mut self, host: &HostId, reason: FailureReason, now: Timestamp, actions: &mut Vec<Action>) {
        let Some(progress) = self.hosts.get_mut(host) else {
            return;
        };
        if !matches!(
            progress.status,
            HostStatus::InFlight { .. } | HostStatus::Healthy { .. }
        ) {
            return;
        }
        progress.status = HostStatus::Failed { at: now, reason };
        let stage = progress.stage;
        self.in_flight.remove(host);
        self.failures += 1;
        if Some(stage) == self.stage {
            self.stage_settled_at = self.stage_settled_at.max(now);
        }
        actions.push(record(format!(
            "host {host} failed on {}: {reason} ({} failures, {} tolerated)",
            self.spec.target, self.failures, self.failure_budget
        )));
        let canary = self.plan.stages[stage].label == StageLabel::Canary;
        if canary || self.failures > self.failure_budget {
            let why = if canary {
                "the canary failed".to_owned()
            } else {
                format!(
                    "{} failures exceed the {} tolerated",
                    self.failures, self.failure_budget
                )
            };
            self.trip(&why, now, actions);
        }
    }

    fn trip(&mut self, why: &str, now: Timestamp, actions: &mut Vec<Action>) {
        match &self.phase {
            Phase::Running
            | Phase::Paused {
                reason: PauseReason::Operator { .. } | PauseReason::AwaitingApproval,
            } => {}
            // Already tripped, or nothing pinned yet, or over: nothing to stop.
            Phase::Paused {
                reason: PauseReason::FailureBudget,
            }
            | Phase::Pending
            | Phase::Completed { .. }
            | Phase::Aborted { .. }
            | Phase::RolledBack { .. } => return,
        }
        match self.spec.on_failure {
            OnFailure::Pause => {
                actions.push(record(format!(
                    "failure breaker: {why}; paused. Investigate, then `drover rollout resume` or `abort`"
                )));
                self.phase = Phase::Paused {
                    reason: PauseReason::FailureBudget,
                };
            }
            OnFailure::Rollback => {
                self.unpin_touched(actions);
                actions.push(record(format!(
                    "failure breaker: {why}; rolled back every host that took {}",
                    self.spec.target
                )));
                self.phase = Phase::RolledBack { at: now };
            }
        }
    }

    /// Fails the hosts in flight whose deadline has come.
    fn expire(&mut self, now: Timestamp, actions: &mut Vec<Action>) {
        if self.phase.is_finished() {
            return;
        }
        let expired: Vec<(HostId, bool)> = self
            .in_flight
            .iter()
            .filter_map(|host| match self.hosts.get(host).map(|progress| &progress.status) {
                Some(HostStatus::InFlight { deadline, held, .. }) if *deadline <= now => Some((host.clone(), *held)),
                _ => None,
            })
            .collect();
        for (host, held) in expired {
            if self.phase.is_finished() {
                return;
            }
            self.fail(&host, FailureReason::MissedDeadline { held }, now, actions);
        }
    }

    fn remove(&mut self, host: &HostId, actions: &mut Vec<Action>) {
        let Some(progress) = self.hosts.get_mut(host) else {
            return;
        };
        let touched = match progress.status {
            HostStatus::Removed => return,
            HostStatus::Waiting { .. } => false,
            HostStatus::InFlight { .. } | HostStatus::Healthy { .. } | HostStatus::Failed { .. } => true,
        };
        progress.status = HostStatus::Removed;
        self.in_flight.remove(host);
        if touched {
            actions.push(Action::UnpinHosts {
                hosts: vec![host.clone()],
            });
        }
        actions.push(record(format!(
            "host {host} was removed from the fleet and the rollout"
        )));
    }

    fn complete(&mut self, now: Timestamp, actions: &mut Vec<Action>) {
        actions.push(Action::PinApp {
            version: self.spec.target.clone(),
        });
        self.unpin_touched(actions);
        actions.push(record(format!(
            "completed: {} is the fleet pin of {}",
            self.spec.target, self.spec.app
        )));
        self.phase = Phase::Completed { at: now };
    }

    /// Unpins every host the rollout pinned (and did not already unpin). Hosts in flight
    /// are no longer the rollout's to wait for: they return to their previous release.
    fn unpin_touched(&mut self, actions: &mut Vec<Action>) {
        self.in_flight.clear();
        let hosts: Vec<HostId> = self
            .hosts
            .iter()
            .filter(|(_, progress)| {
                matches!(
                    progress.status,
                    HostStatus::InFlight { .. } | HostStatus::Healthy { .. } | HostStatus::Failed { .. }
                )
            })
            .map(|(host, _)| host.clone())
            .collect();
        if !hosts.is_empty() {
            actions.push(Action::UnpinHosts { hosts });
        }
    }

    /// The earliest deadline of a host in flight, or the end of the current bake.
    fn next_timer(&self) -> Option<Timestamp> {
        if self.phase.is_finished() {
            return None;
        }
        let deadline = self
            .in_flight
            .iter()
            .filter_map(|host| match self.hosts.get(host).map(|progress| &progress.status) {
                Some(HostStatus::InFlight { deadline, .. }) => Some(*deadline),
                _ => None,
            })
            .min();
        let bake = match (self.phase == Phase::Running, self.stage) {
            (true, Some(stage)) if self.stage_settled(stage) => Some(self.stage_settled_at.plus(self.spec.bake)),
            _ => None,
        };
        deadline.into_iter().chain(bake).min()
    }
}

fn record(what: String) -> Action {
    Action::Record { what }
}

#[cfg(test)]
mod tests;
