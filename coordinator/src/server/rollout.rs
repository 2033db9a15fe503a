//! The rollout controller: moves one app to a target release over ordered stages,
//! advancing on health and stopping itself on a failure budget (SPEC.md §2, §5; issue 6).
//!
//! Everything here is a pure decision: [`plan`] assigns hosts to stages and
//! [`Rollout::step`] is the state machine `(state, event, now) -> (state, actions)`. No
//! I/O, no clock, no randomness: time comes in as `now`, and what the coordinator must
//! do (pin, unpin, record, wake up later) goes out as a closed set of [`Action`]s. The
//! coordinator persists the [`Rollout`] after every step (it is `serde`, stored in the
//! coordinator's own database; it is not wire protocol, so it stays in this crate and
//! the API maps it to protocol types), which is how a restart resumes exactly: no stage
//! is advanced twice or skipped, because the stage, the pinning cursor and every host's
//! status are part of the persisted value.
//!
//! Design decisions, and why:
//! - **`step` takes `&mut Rollout`**, not the rollout by value. A by-value step would
//!   drop the rollout when a command is refused, or force the caller to clone a
//!   10,000-host map before every report. Every refusal is decided before anything is
//!   changed, so on `Err` the rollout is exactly as it was (a test checks this).
//! - **Determinism.** Hosts are ordered by `sha256(rollout id, 0, host id)`, so a plan is
//!   reproducible from its id and `start` pins exactly what `plan` showed. The canary is
//!   the first host in that order that is not already on the target (a canary that
//!   already runs the target would prove nothing). A percentage stage fills the rollout
//!   up to `ceil(P% of all hosts)`, a group stage takes that group's hosts not yet in an
//!   earlier stage, and hosts that no listed group covers go to a final `rest` stage,
//!   because completion pins the whole fleet: every host must pass through a stage.
//! - **Reports carry `current` and `desired`.** A failure counts only when the report is
//!   about the target (`desired` or `current` is the target), so a stale `failed` left
//!   over from an older release, reported before the host saw its new manifest, is not
//!   blamed on this rollout. Healthy means `healthy` with `current` = target.
//! - **Stages pass on settled hosts.** A stage passes when each of its hosts is healthy on
//!   the target, failed (within the budget) or removed, and `bake` has passed since the
//!   last of them settled; with `approve_each_stage`, the next stage also waits for
//!   [`Event::Approve`]. Failures within the budget do not block a stage (that is what
//!   the budget is for), but **the canary has no budget**: a failed canary always trips
//!   the breaker, so a bad release stops at the canary whatever `--max-failures` says.
//! - **Failure budget.** `max_failures` is a count or `floor(P% of all hosts)` (so 5% of
//!   hosts may fail and one more trips it); the breaker trips when failures exceed it.
//!   Failed hosts keep their pin (the agent has already returned to the previous
//!   release and will not retry a bad version), so a pause changes nothing on hosts.
//!   Hosts still in flight when the breaker trips may still fail, so the budget can be
//!   exceeded by at most `max_in_flight`, never more: nothing new is pinned once tripped.
//!   Resuming after the breaker is the operator accepting more risk: the next failure
//!   trips it again.
//! - **Held hosts.** A pinned host that reports `held` stays in flight (it occupies a slot
//!   and its stage waits) until its deadline, then counts as a failure: a hold is a kill
//!   switch, so holding the whole fleet must stop the rollout rather than let it skip
//!   every host and declare success.
//! - **Abort restores the previous desired state**: every host the rollout pinned is
//!   unpinned and falls back to the pin it had before (group or fleet). `--rollback` is
//!   therefore the same set of actions; it is recorded, so history shows the intent.
//! - **Hosts already on the target** are members of their stage, get the host pin when
//!   the stage reaches them (which changes nothing on them) and count as healthy at
//!   once, without taking an in-flight slot.
//! - **The stage sits beside the phase** ([`Rollout::current_stage`]), not inside
//!   `Running`/`Paused`, so a finished rollout still tells where it stopped.
//! - **Timers.** Deadlines and bake ends are checked on every event, not only on
//!   [`Event::Tick`]; [`Action::WakeAt`] is emitted whenever the earliest timer changes,
//!   and [`Rollout::next_wake`] gives it after a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use drover_protocol::report::AppState;
use drover_protocol::{AppName, Duration, HostId, Timestamp, Version};
use serde::{Deserialize, Serialize};
use thiserror::Error;

// --- The spec -------------------------------------------------------------------------

/// A bound given as a number of hosts (`5`) or a share of the rollout's hosts (`10%`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// A number of hosts.
    Count(u32),
    /// A percentage, 0 to 100, of the rollout's hosts.
    Percent(u8),
}

impl Limit {
    /// The bound for `total` hosts rounded up, for limits that must allow progress:
    /// 10% of 15 hosts lets 2 change at once.
    pub fn ceil_of(self, total: usize) -> usize {
        match self {
            Limit::Count(count) => count as usize,
            Limit::Percent(percent) => (total.saturating_mul(usize::from(percent))).div_ceil(100),
        }
    }

    /// The bound for `total` hosts rounded down, for budgets: with 5% of 30 hosts, one
    /// failure is allowed (1 of 30 is 3.3%) and the second trips the breaker.
    pub fn floor_of(self, total: usize) -> usize {
        match self {
            Limit::Count(count) => count as usize,
            Limit::Percent(percent) => total.saturating_mul(usize::from(percent)) / 100,
        }
    }

    fn parse(field: &'static str, text: &str) -> Result<Limit, SpecError> {
        let error = || SpecError::new(field, text, "a number of hosts (e.g. 5) or a percentage (e.g. 10%)");
        match text.strip_suffix('%') {
            Some(number) => match number.parse::<u8>() {
                Ok(percent) if percent <= 100 && !number.starts_with('+') => Ok(Limit::Percent(percent)),
                _ => Err(error()),
            },
            None if text.starts_with('+') => Err(error()),
            None => text.parse().map(Limit::Count).map_err(|_| error()),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Count(count) => write!(f, "{count}"),
            Limit::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

/// One stage as the operator asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageSpec {
    /// One host (only as the first stage).
    Canary,
    /// The rollout grows to this percentage (1 to 100) of all its hosts.
    Percent(u8),
    /// The hosts of this group not in an earlier stage.
    Group(String),
}

impl fmt::Display for StageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageSpec::Canary => f.write_str("canary"),
            StageSpec::Percent(percent) => write!(f, "{percent}%"),
            StageSpec::Group(name) => f.write_str(name),
        }
    }
}

/// A validated list of stages: an optional `canary` first, then either increasing
/// percentages ending at 100% or distinct group names. `canary` is a keyword, not a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<StageSpec>", into = "Vec<StageSpec>")]
pub struct Stages(Vec<StageSpec>);

impl Stages {
    /// Checks `stages` (see the type's rules).
    pub fn new(stages: Vec<StageSpec>) -> Result<Stages, SpecError> {
        let text = stages.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let error = |expected: &str| SpecError::new("stages", &text, expected);
        if stages.is_empty() {
            return Err(error(
                "at least one stage, e.g. canary,10%,50%,100% or canary,group-a,group-b",
            ));
        }
        let mut last_percent = 0;
        let mut groups = BTreeSet::new();
        for (index, stage) in stages.iter().enumerate() {
            match stage {
                StageSpec::Canary if index == 0 => {}
                StageSpec::Canary => return Err(error("canary only as the first stage")),
                StageSpec::Percent(percent) if !(1..=100).contains(percent) => {
                    return Err(error("percentages from 1% to 100%"));
                }
                StageSpec::Percent(percent) if *percent <= last_percent => {
                    return Err(error("percentages in increasing order, e.g. 10%,50%,100%"));
                }
                StageSpec::Percent(percent) => last_percent = *percent,
                StageSpec::Group(name) if !is_group_name(name) => {
                    return Err(error(
                        "group names of a-z, 0-9 and '-' (1 to 63, not starting with '-')",
                    ));
                }
                StageSpec::Group(name) => {
                    if !groups.insert(name.as_str()) {
                        return Err(error("each group once"));
                    }
                }
            }
        }
        if last_percent > 0 && !groups.is_empty() {
            return Err(error("either percentages or groups, not both"));
        }
        if last_percent > 0 && last_percent != 100 {
            return Err(error("percentages ending with 100%, so that every host is in a stage"));
        }
        Ok(Stages(stages))
    }

    /// The stages in order.
    pub fn as_slice(&self) -> &[StageSpec] {
        &self.0
    }
}

fn is_group_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

impl FromStr for Stages {
    type Err = SpecError;

    /// `canary,10%,50%,100%` or `canary,group-a,group-b` (the CLI's `--groups a,b` is the same list).
    fn from_str(text: &str) -> Result<Stages, SpecError> {
        let stages = text
            .split(',')
            .map(str::trim)
            .map(|item| match item {
                "" => Err(SpecError::new(
                    "stages",
                    text,
                    "a comma-separated list without empty items, e.g. canary,10%,100%",
                )),
                "canary" => Ok(StageSpec::Canary),
                _ => match item.strip_suffix('%') {
                    Some(number) => number
                        .parse::<u8>()
                        .ok()
                        .filter(|_| !number.starts_with('+'))
                        .map(StageSpec::Percent)
                        .ok_or_else(|| SpecError::new("stages", text, "percentages from 1% to 100%")),
                    None => Ok(StageSpec::Group(item.to_owned())),
                },
            })
            .collect::<Result<Vec<_>, _>>()?;
        Stages::new(stages)
    }
}

impl TryFrom<Vec<StageSpec>> for Stages {
    type Error = SpecError;
    fn try_from(stages: Vec<StageSpec>) -> Result<Stages, SpecError> {
        Stages::new(stages)
    }
}

impl From<Stages> for Vec<StageSpec> {
    fn from(stages: Stages) -> Vec<StageSpec> {
        stages.0
    }
}

impl fmt::Display for Stages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, stage) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{stage}")?;
        }
        Ok(())
    }
}

/// What crossing the failure budget does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop pinning and wait for the operator (the default).
    Pause,
    /// Unpin every host that took the target, returning it to its previous release.
    Rollback,
}

impl FromStr for OnFailure {
    type Err = SpecError;
    fn from_str(text: &str) -> Result<OnFailure, SpecError> {
        match text {
            "pause" => Ok(OnFailure::Pause),
            "rollback" => Ok(OnFailure::Rollback),
            _ => Err(SpecError::new("on-failure", text, "pause or rollback")),
        }
    }
}

/// How to roll an app out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutSpec {
    /// The app.
    pub app: AppName,
    /// The release every host should end up on.
    pub target: Version,
    /// The stages, in order.
    pub stages: Stages,
    /// Most hosts changing at once (pinned to the target, neither healthy on it nor failed).
    pub max_in_flight: Limit,
    /// How long a stage must stay healthy after its last host settled before the next starts.
    pub bake: Duration,
    /// Most failures tolerated; one more trips the breaker.
    pub max_failures: Limit,
    /// What the breaker does.
    pub on_failure: OnFailure,
    /// Whether each stage after the first waits for `drover rollout approve`.
    pub approve_each_stage: bool,
    /// How long a pinned host has to report healthy on the target before it counts as failed.
    pub host_deadline: Duration,
}

/// A rollout spec as typed on the command line, before validation.
#[derive(Clone, Copy, Debug)]
pub struct SpecText<'a> {
    /// `APP`.
    pub app: &'a str,
    /// `VERSION`.
    pub target: &'a str,
    /// `--stages` (or `--groups`, which is the same list without percentages).
    pub stages: &'a str,
    /// `--max-in-flight`.
    pub max_in_flight: &'a str,
    /// `--bake`.
    pub bake: &'a str,
    /// `--max-failures`.
    pub max_failures: &'a str,
    /// `--on-failure`.
    pub on_failure: &'a str,
    /// `--approve-each-stage`.
    pub approve_each_stage: bool,
    /// `--host-deadline`.
    pub host_deadline: &'a str,
}

impl RolloutSpec {
    /// Parses and validates every field, reporting every bad one at once (STYLE.md).
    pub fn parse(text: &SpecText<'_>) -> Result<RolloutSpec, SpecErrors> {
        let mut errors = Vec::new();
        let app = keep(
            &mut errors,
            text.app.parse::<AppName>().map_err(name_error("app", text.app)),
        );
        let target = keep(
            &mut errors,
            text.target
                .parse::<Version>()
                .map_err(name_error("version", text.target)),
        );
        let stages = keep(&mut errors, text.stages.parse::<Stages>());
        let max_in_flight = keep(
            &mut errors,
            Limit::parse("max-in-flight", text.max_in_flight).and_then(|limit| {
                if limit.ceil_of(1) == 0 {
                    Err(SpecError::new(
                        "max-in-flight",
                        text.max_in_flight,
                        "at least 1 host or 1%",
                    ))
                } else {
                    Ok(limit)
                }
            }),
        );
        let bake = keep(
            &mut errors,
            text.bake.parse::<Duration>().map_err(name_error("bake", text.bake)),
        );
        let max_failures = keep(&mut errors, Limit::parse("max-failures", text.max_failures));
        let on_failure = keep(&mut errors, text.on_failure.parse::<OnFailure>());
        let host_deadline = keep(
            &mut errors,
            text.host_deadline
                .parse::<Duration>()
                .map_err(name_error("host-deadline", text.host_deadline))
                .and_then(|deadline| {
                    if deadline.as_millis() < 1000 {
                        Err(SpecError::new("host-deadline", text.host_deadline, "at least 1s"))
                    } else {
                        Ok(deadline)
                    }
                }),
        );
        match (
            app,
            target,
            stages,
            max_in_flight,
            bake,
            max_failures,
            on_failure,
            host_deadline,
        ) {
            (
                Some(app),
                Some(target),
                Some(stages),
                Some(max_in_flight),
                Some(bake),
                Some(max_failures),
                Some(on_failure),
                Some(host_deadline),
            ) => Ok(RolloutSpec {
                app,
                target,
                stages,
                max_in_flight,
                bake,
                max_failures,
                on_failure,
                approve_each_stage: text.approve_each_stage,
                host_deadline,
            }),
            _ => Err(SpecErrors(errors)),
        }
    }
}

/// Maps a name or duration error of the protocol to the field it was given for.
fn name_error<'a>(field: &'static str, value: &'a str) -> impl FnOnce(drover_protocol::NameError) -> SpecError + 'a {
    move |error| SpecError::new(field, value, error.expected)
}

/// The value of `result`, or `None` with its error added to `errors`.
fn keep<T>(errors: &mut Vec<SpecError>, result: Result<T, SpecError>) -> Option<T> {
    result.map_err(|error| errors.push(error)).ok()
}

/// One bad field of a rollout spec.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("invalid --{field} {value:?}: expected {expected}")]
pub struct SpecError {
    /// The option, as the CLI spells it without dashes.
    pub field: &'static str,
    /// The refused text (at most 80 characters).
    pub value: String,
    /// What a valid value looks like.
    pub expected: String,
}

impl SpecError {
    fn new(field: &'static str, value: &str, expected: &str) -> SpecError {
        SpecError {
            field,
            value: value.chars().take(80).collect(),
            expected: expected.to_owned(),
        }
    }
}

/// Every bad field of a rollout spec.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("rollout spec: {}", self.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct SpecErrors(pub Vec<SpecError>);

// --- The plan -------------------------------------------------------------------------

/// A host as the planner needs it: who, which groups match it, what it runs now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanHost {
    /// The host.
    pub id: HostId,
    /// The groups whose selector matches the host.
    pub groups: BTreeSet<String>,
    /// The app's release on the host now (from its last report), if any.
    pub current: Option<Version>,
}

/// What a planned stage covers, for display and for the canary rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageLabel {
    /// One host; its failure always trips the breaker.
    Canary,
    /// Up to this percentage of all hosts.
    Percent(u8),
    /// A group's hosts.
    Group(String),
    /// Hosts no listed group covers.
    Rest,
}

impl fmt::Display for StageLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageLabel::Canary => f.write_str("canary"),
            StageLabel::Percent(percent) => write!(f, "{percent}%"),
            StageLabel::Group(name) => write!(f, "group {name}"),
            StageLabel::Rest => f.write_str("rest"),
        }
    }
}

/// A host in a planned stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedHost {
    /// The host.
    pub id: HostId,
    /// What it ran at planning time; a host already on the target needs no change.
    pub current: Option<Version>,
}

/// One stage of a plan, hosts in the order they will be pinned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStage {
    /// What the stage is.
    pub label: StageLabel,
    /// Its hosts; may be empty (10% of 3 hosts is the canary), and then it is skipped.
    pub hosts: Vec<PlannedHost>,
}

/// Which host is in which stage: what `drover rollout plan` shows and `start` does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The rollout id the order was derived from.
    pub rollout_id: String,
    /// The stages in order; every host is in exactly one.
    pub stages: Vec<PlannedStage>,
}

impl Plan {
    /// How many hosts the plan covers.
    pub fn host_count(&self) -> usize {
        self.stages.iter().map(|stage| stage.hosts.len()).sum()
    }

    /// The index of the stage `host` is in.
    pub fn stage_of(&self, host: &HostId) -> Option<usize> {
        self.stages
            .iter()
            .position(|stage| stage.hosts.iter().any(|planned| &planned.id == host))
    }
}

/// Why a rollout cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PlanError {
    /// No host to roll out to.
    #[error("plan rollout {rollout} of {app}: there are no hosts; enroll hosts first (`drover-agent join`)")]
    NoHosts { rollout: String, app: AppName },
    /// The same host twice in the input (a caller bug, refused rather than guessed at).
    #[error("plan rollout {rollout}: host {host} is listed twice")]
    DuplicateHost { rollout: String, host: HostId },
    /// A group stage whose group matches no host: most likely a typo.
    #[error("plan rollout {rollout}: group {group} matches no host; see `drover groups list`")]
    EmptyGroup { rollout: String, group: String },
}

/// The position of `host` in rollout `rollout_id`'s order: stable, and unrelated between
/// rollouts so that the same host is not always the canary.
fn order_key(rollout_id: &str, host: &HostId) -> Vec<u8> {
    let mut input = Vec::with_capacity(rollout_id.len() + 1 + host.as_str().len());
    input.extend_from_slice(rollout_id.as_bytes());
    input.push(0);
    input.extend_from_slice(host.as_str().as_bytes());
    ring::digest::digest(&ring::digest::SHA256, &input).as_ref().to_vec()
}

/// Assigns every host to exactly one stage, deterministically from `rollout_id` (see the
/// module documentation for the rules).
pub fn plan(spec: &RolloutSpec, rollout_id: &str, hosts: &[PlanHost]) -> Result<Plan, PlanError> {
    if hosts.is_empty() {
        return Err(PlanError::NoHosts {
            rollout: rollout_id.to_owned(),
            app: spec.app.clone(),
        });
    }
    let mut seen = BTreeSet::new();
    for host in hosts {
        if !seen.insert(&host.id) {
            return Err(PlanError::DuplicateHost {
                rollout: rollout_id.to_owned(),
                host: host.id.clone(),
            });
        }
    }
    let mut ordered: Vec<(Vec<u8>, &PlanHost)> = hosts
        .iter()
        .map(|host| (order_key(rollout_id, &host.id), host))
        .collect();
    ordered.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
    let total = ordered.len();
    let on_target = |host: &PlanHost| host.current.as_ref() == Some(&spec.target);
    let mut assigned = vec![false; total];
    let mut assigned_count = 0;
    let mut stages = Vec::new();
    for stage in spec.stages.as_slice() {
        let free = |index: &usize| !assigned[*index];
        let (label, picked): (StageLabel, Vec<usize>) = match stage {
            StageSpec::Canary => {
                let canary = (0..total)
                    .filter(free)
                    .find(|&index| !on_target(ordered[index].1))
                    .or_else(|| (0..total).find(free));
                (StageLabel::Canary, canary.into_iter().collect())
            }
            StageSpec::Percent(percent) => {
                let quota = Limit::Percent(*percent).ceil_of(total);
                let wanted = quota.saturating_sub(assigned_count);
                (
                    StageLabel::Percent(*percent),
                    (0..total).filter(free).take(wanted).collect(),
                )
            }
            StageSpec::Group(name) => {
                if !hosts.iter().any(|host| host.groups.contains(name)) {
                    return Err(PlanError::EmptyGroup {
                        rollout: rollout_id.to_owned(),
                        group: name.clone(),
                    });
                }
                let members = (0..total)
                    .filter(free)
                    .filter(|&index| ordered[index].1.groups.contains(name))
                    .collect();
                (StageLabel::Group(name.clone()), members)
            }
        };
        for &index in &picked {
            assigned[index] = true;
        }
        assigned_count += picked.len();
        stages.push(PlannedStage {
            label,
            hosts: picked.into_iter().map(|index| planned(ordered[index].1)).collect(),
        });
    }
    if assigned_count < total {
        let rest = (0..total).filter(|&index| !assigned[index]);
        stages.push(PlannedStage {
            label: StageLabel::Rest,
            hosts: rest.map(|index| planned(ordered[index].1)).collect(),
        });
    }
    Ok(Plan {
        rollout_id: rollout_id.to_owned(),
        stages,
    })
}

fn planned(host: &PlanHost) -> PlannedHost {
    PlannedHost {
        id: host.id.clone(),
        current: host.current.clone(),
    }
}

// --- The state machine ----------------------------------------------------------------

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
struct HostProgress {
    stage: usize,
    status: HostStatus,
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
    spec: RolloutSpec,
    plan: Plan,
    phase: Phase,
    /// The last stage started.
    stage: Option<usize>,
    /// The next host of the current stage to consider pinning (hosts are pinned in plan order).
    cursor: usize,
    /// When the current stage started or a host of it last settled: the bake counts from here.
    stage_settled_at: Timestamp,
    hosts: BTreeMap<HostId, HostProgress>,
    in_flight: BTreeSet<HostId>,
    failures: usize,
    max_in_flight: usize,
    failure_budget: usize,
    /// The last wake-up asked for.
    wake: Option<Timestamp>,
}

impl Rollout {
    /// A pending rollout of `spec` following `plan` (from [`plan`] with the same spec).
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
    fn stage_settled(&self, stage: usize) -> bool {
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

    /// The view for `drover rollout status|watch` at `now`.
    pub fn progress(&self, now: Timestamp) -> Progress {
        let stages = self
            .plan
            .stages
            .iter()
            .enumerate()
            .map(|(index, planned)| {
                let mut view = StageProgress {
                    label: planned.label.clone(),
                    total: planned.hosts.len(),
                    waiting: 0,
                    in_flight: 0,
                    done: 0,
                    failed: 0,
                    removed: 0,
                    status: self.stage_status(index, now),
                };
                for host in &planned.hosts {
                    match self.hosts.get(&host.id).map(|progress| &progress.status) {
                        Some(HostStatus::Waiting { .. }) | None => view.waiting += 1,
                        Some(HostStatus::InFlight { .. }) => view.in_flight += 1,
                        Some(HostStatus::Healthy { .. }) => view.done += 1,
                        Some(HostStatus::Failed { .. }) => view.failed += 1,
                        Some(HostStatus::Removed) => view.removed += 1,
                    }
                }
                view
            })
            .collect();
        Progress {
            rollout: self.plan.rollout_id.clone(),
            app: self.spec.app.clone(),
            target: self.spec.target.clone(),
            phase: self.phase.clone(),
            stage: self.stage,
            stages,
            failures: self.failures,
            failure_budget: self.failure_budget,
            in_flight: self.in_flight.len(),
            max_in_flight: self.max_in_flight,
            eta: self.eta(now),
        }
    }

    fn stage_status(&self, index: usize, now: Timestamp) -> StageStatus {
        let Some(current) = self.stage else {
            return StageStatus::NotStarted;
        };
        if matches!(self.phase, Phase::Completed { .. }) || index < current {
            return StageStatus::Passed;
        }
        if index > current {
            return StageStatus::NotStarted;
        }
        if !self.stage_settled(index) {
            return StageStatus::Active;
        }
        // The breaker stopped the rollout in this stage (paused, or rolled back with
        // `--on-failure rollback`): it did not pass, whatever its hosts settled on.
        if matches!(
            self.phase,
            Phase::Paused {
                reason: PauseReason::FailureBudget
            } | Phase::RolledBack { .. }
        ) {
            return StageStatus::Failed;
        }
        let bake_end = self.stage_settled_at.plus(self.spec.bake);
        if bake_end > now && !self.phase.is_finished() {
            StageStatus::Baking {
                remaining: seconds_between(now, bake_end),
            }
        } else {
            StageStatus::Passed
        }
    }

    /// A rough estimate: the mean time from pin to healthy so far, times the batches of
    /// `max_in_flight` left in each stage, plus the bakes. Only while running (a pause
    /// lasts as long as the operator wants), and only once some host has been installed.
    fn eta(&self, now: Timestamp) -> Option<Timestamp> {
        if self.phase != Phase::Running {
            return None;
        }
        let stage = self.stage?;
        let installs: Vec<i64> = self
            .hosts
            .values()
            .filter_map(|progress| match progress.status {
                HostStatus::Healthy { pinned_at, at } if at > pinned_at => Some(at.unix() - pinned_at.unix()),
                _ => None,
            })
            .collect();
        if installs.is_empty() {
            return None;
        }
        let per_host = installs.iter().sum::<i64>() / i64::try_from(installs.len()).unwrap_or(i64::MAX);
        let bake = i64::try_from(self.spec.bake.as_millis() / 1000).unwrap_or(i64::MAX);
        let mut seconds: i64 = 0;
        for index in stage..self.plan.stages.len() {
            let to_change = self.plan.stages[index]
                .hosts
                .iter()
                .filter(|host| {
                    matches!(
                        self.hosts.get(&host.id).map(|progress| &progress.status),
                        Some(HostStatus::Waiting { on_target: false } | HostStatus::InFlight { .. })
                    )
                })
                .count();
            if to_change == 0 && index != stage {
                continue;
            }
            let batches = i64::try_from(to_change.div_ceil(self.max_in_flight)).unwrap_or(i64::MAX);
            let stage_bake = match self.stage_status(index, now) {
                StageStatus::Baking { remaining } => i64::try_from(remaining.as_millis() / 1000).unwrap_or(0),
                _ => bake,
            };
            seconds = seconds
                .saturating_add(batches.saturating_mul(per_host))
                .saturating_add(stage_bake);
        }
        Some(now.plus(Duration::from_secs(u64::try_from(seconds).unwrap_or(0))))
    }
}

fn seconds_between(from: Timestamp, to: Timestamp) -> Duration {
    Duration::from_secs(u64::try_from(to.unix() - from.unix()).unwrap_or(0))
}

fn record(what: String) -> Action {
    Action::Record { what }
}

/// A rollout at a glance, for `drover rollout status|watch` (the API maps it to protocol types).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The rollout's id.
    pub rollout: String,
    /// The app.
    pub app: AppName,
    /// The target release.
    pub target: Version,
    /// Where it is.
    pub phase: Phase,
    /// The last stage started.
    pub stage: Option<usize>,
    /// Per stage counts.
    pub stages: Vec<StageProgress>,
    /// Failures so far.
    pub failures: usize,
    /// Failures tolerated.
    pub failure_budget: usize,
    /// Hosts changing now.
    pub in_flight: usize,
    /// Most hosts changing at once.
    pub max_in_flight: usize,
    /// When it should complete, roughly; none while paused or before the first install.
    pub eta: Option<Timestamp>,
}

/// One stage at a glance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageProgress {
    /// What the stage is.
    pub label: StageLabel,
    /// Its hosts.
    pub total: usize,
    /// Not pinned yet.
    pub waiting: usize,
    /// Pinned, neither healthy nor failed.
    pub in_flight: usize,
    /// Healthy on the target.
    pub done: usize,
    /// Counted as failed.
    pub failed: usize,
    /// Removed from the fleet.
    pub removed: usize,
    /// Where the stage is.
    pub status: StageStatus,
}

/// Where one stage is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageStatus {
    /// Not started.
    NotStarted,
    /// Hosts are being pinned or are in flight.
    Active,
    /// Every host settled; the bake has this much left.
    Baking { remaining: Duration },
    /// Passed (or settled and baked, awaiting approval or a resume).
    Passed,
    /// Settled with more failures than the budget: the breaker stopped the rollout here.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix(1_800_000_000 + seconds)
    }

    fn host(index: usize) -> HostId {
        format!("h{index}").parse().expect("host id")
    }

    fn old() -> Version {
        "1.0".parse().expect("version")
    }

    fn target() -> Version {
        "2.0".parse().expect("version")
    }

    fn text(stages: &str) -> SpecText<'_> {
        SpecText {
            app: "web",
            target: "2.0",
            stages,
            max_in_flight: "2",
            bake: "1m",
            max_failures: "1",
            on_failure: "pause",
            approve_each_stage: false,
            host_deadline: "10m",
        }
    }

    fn spec(stages: &str) -> RolloutSpec {
        RolloutSpec::parse(&text(stages)).expect("spec")
    }

    fn fleet(count: usize) -> Vec<PlanHost> {
        (0..count)
            .map(|index| PlanHost {
                id: host(index),
                groups: BTreeSet::new(),
                current: Some(old()),
            })
            .collect()
    }

    fn rollout(spec: RolloutSpec, hosts: &[PlanHost]) -> Rollout {
        let plan = plan(&spec, "r1", hosts).expect("plan");
        Rollout::new(spec, plan)
    }

    fn started(spec: RolloutSpec, count: usize) -> (Rollout, Vec<Action>) {
        let mut rollout = rollout(spec, &fleet(count));
        let actions = rollout.step(Event::Start, at(0)).expect("start");
        (rollout, actions)
    }

    fn pinned(actions: &[Action]) -> Vec<HostId> {
        actions
            .iter()
            .flat_map(|action| match action {
                Action::PinHosts { hosts, version } => {
                    assert_eq!(version, &target());
                    hosts.clone()
                }
                _ => Vec::new(),
            })
            .collect()
    }

    fn unpinned(actions: &[Action]) -> Vec<HostId> {
        actions
            .iter()
            .flat_map(|action| match action {
                Action::UnpinHosts { hosts } => hosts.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    fn healthy(host: &HostId) -> Event {
        Event::Report {
            host: host.clone(),
            current: Some(target()),
            desired: Some(target()),
            state: AppState::Healthy,
        }
    }

    fn failing(host: &HostId, state: AppState) -> Event {
        Event::Report {
            host: host.clone(),
            current: Some(old()),
            desired: Some(target()),
            state,
        }
    }

    fn wake(actions: &[Action]) -> Option<Timestamp> {
        actions.iter().rev().find_map(|action| match action {
            Action::WakeAt { at } => Some(*at),
            _ => None,
        })
    }

    /// Reports every host in flight healthy at `now`, returning what was pinned meanwhile.
    fn all_in_flight_healthy(rollout: &mut Rollout, now: Timestamp) -> Vec<Action> {
        let hosts: Vec<HostId> = rollout.in_flight.iter().cloned().collect();
        let mut actions = Vec::new();
        for host in hosts {
            actions.extend(rollout.step(healthy(&host), now).expect("report"));
        }
        actions
    }

    #[test]
    fn stages_parse_and_refuse_with_reasons() {
        assert_eq!(
            "canary,10%,50%,100%".parse::<Stages>().expect("stages").as_slice(),
            [
                StageSpec::Canary,
                StageSpec::Percent(10),
                StageSpec::Percent(50),
                StageSpec::Percent(100)
            ]
        );
        assert_eq!(
            "canary, a ,b".parse::<Stages>().expect("groups").to_string(),
            "canary,a,b"
        );
        for (bad, reason) in [
            ("", "without empty items"),
            ("10%,canary,100%", "canary only as the first stage"),
            ("50%,10%,100%", "increasing"),
            ("10%,50%", "ending with 100%"),
            ("0%,100%", "1% to 100%"),
            ("101%", "1% to 100%"),
            ("a,10%,100%", "not both"),
            ("a,a", "each group once"),
            ("Web", "group names"),
            ("canary,,100%", "without empty items"),
        ] {
            let error = bad.parse::<Stages>().expect_err(bad);
            assert!(error.to_string().contains(reason), "{bad}: {error}");
        }
    }

    #[test]
    fn limits_parse_and_round_the_safe_way() {
        assert_eq!("5".parse::<u32>().map(Limit::Count), Ok(Limit::Count(5)));
        assert_eq!(Limit::parse("f", "10%"), Ok(Limit::Percent(10)));
        assert_eq!(Limit::parse("f", "7"), Ok(Limit::Count(7)));
        for bad in ["", "%", "101%", "-1", "+3", "x", "1.5%"] {
            assert!(Limit::parse("f", bad).is_err(), "{bad}");
        }
        // In flight rounds up (progress), the failure budget rounds down (safety).
        assert_eq!(Limit::Percent(10).ceil_of(15), 2);
        assert_eq!(Limit::Percent(5).floor_of(30), 1);
        assert_eq!(Limit::Percent(5).floor_of(10), 0);
    }

    #[test]
    fn spec_parse_reports_every_bad_field_at_once() {
        let errors = RolloutSpec::parse(&SpecText {
            app: "Web",
            target: "2.0",
            stages: "canary,50%",
            max_in_flight: "0",
            bake: "soon",
            max_failures: "5",
            on_failure: "explode",
            approve_each_stage: false,
            host_deadline: "0s",
        })
        .expect_err("bad spec");
        let fields: Vec<&str> = errors.0.iter().map(|error| error.field).collect();
        assert_eq!(
            fields,
            ["app", "stages", "max-in-flight", "bake", "on-failure", "host-deadline"]
        );
        assert!(errors.to_string().starts_with("rollout spec: invalid --app \"Web\""));
    }

    #[test]
    fn plan_is_deterministic_covers_every_host_once_and_depends_on_the_id() {
        let spec = spec("canary,10%,50%,100%");
        let hosts = fleet(40);
        let first = plan(&spec, "r1", &hosts).expect("plan");
        let mut reversed = hosts.clone();
        reversed.reverse();
        assert_eq!(
            first,
            plan(&spec, "r1", &reversed).expect("plan"),
            "input order does not matter"
        );
        let sizes: Vec<usize> = first.stages.iter().map(|stage| stage.hosts.len()).collect();
        assert_eq!(
            sizes,
            [1, 3, 16, 20],
            "10% of 40 is 4 hosts in all, the canary included"
        );
        let mut all: Vec<HostId> = first
            .stages
            .iter()
            .flat_map(|stage| stage.hosts.iter().map(|host| host.id.clone()))
            .collect();
        all.sort();
        let mut expected: Vec<HostId> = hosts.iter().map(|host| host.id.clone()).collect();
        expected.sort();
        assert_eq!(all, expected);
        let other = plan(&spec, "r2", &hosts).expect("plan");
        assert_ne!(
            first.stages[1].hosts, other.stages[1].hosts,
            "another rollout, another order"
        );
    }

    #[test]
    fn plan_picks_a_canary_that_is_not_already_on_the_target() {
        let spec = spec("canary,100%");
        let mut hosts = fleet(5);
        let usual = plan(&spec, "r1", &hosts).expect("plan").stages[0].hosts[0].id.clone();
        for host in &mut hosts {
            if host.id == usual {
                host.current = Some(target());
            }
        }
        let planned = plan(&spec, "r1", &hosts).expect("plan");
        assert_ne!(planned.stages[0].hosts[0].id, usual);
        assert_eq!(planned.host_count(), 5);
    }

    #[test]
    fn plan_takes_groups_in_order_and_puts_the_rest_last() {
        let spec = spec("canary,eu,us");
        let mut hosts = fleet(9);
        for (index, host) in hosts.iter_mut().enumerate() {
            if index < 4 {
                host.groups.insert("eu".into());
            }
            if (2..6).contains(&index) {
                host.groups.insert("us".into());
            }
        }
        let planned = plan(&spec, "r1", &hosts).expect("plan");
        let labels: Vec<String> = planned.stages.iter().map(|stage| stage.label.to_string()).collect();
        assert_eq!(labels, ["canary", "group eu", "group us", "rest"]);
        assert_eq!(planned.host_count(), 9);
        for host in &planned.stages[1].hosts {
            assert!(host.id.as_str() < "h4", "eu holds only h0..h3: {}", host.id);
        }
        let rest: BTreeSet<&str> = planned.stages[3].hosts.iter().map(|host| host.id.as_str()).collect();
        let canary = planned.stages[0].hosts[0].id.as_str();
        assert!(rest.iter().all(|id| ["h6", "h7", "h8"].contains(id)));
        assert_eq!(rest.len() + usize::from(["h6", "h7", "h8"].contains(&canary)), 3);
    }

    #[test]
    fn plan_refuses_what_it_cannot_plan() {
        let spec = spec("canary,eu");
        assert!(matches!(plan(&spec, "r1", &[]), Err(PlanError::NoHosts { .. })));
        let mut twice = fleet(2);
        twice[1].id = host(0);
        assert!(matches!(
            plan(&spec, "r1", &twice),
            Err(PlanError::DuplicateHost { .. })
        ));
        let error = plan(&spec, "r1", &fleet(3)).expect_err("no host in eu");
        assert_eq!(
            error.to_string(),
            "plan rollout r1: group eu matches no host; see `drover groups list`"
        );
    }

    #[test]
    fn start_pins_only_the_canary_and_a_second_start_is_refused() {
        let (mut rollout, actions) = started(spec("canary,100%"), 10);
        assert_eq!(pinned(&actions), [rollout.plan().stages[0].hosts[0].id.clone()]);
        assert_eq!(rollout.phase(), &Phase::Running);
        assert_eq!(wake(&actions), Some(at(600)), "the canary's deadline");
        let before = rollout.clone();
        let error = rollout.step(Event::Start, at(1)).expect_err("second start");
        assert_eq!(error.code(), "rollout_already_started");
        assert_eq!(rollout, before, "a refused command changes nothing");
    }

    #[test]
    fn the_window_never_holds_more_than_max_in_flight_and_refills() {
        let (mut rollout, _) = started(spec("100%"), 7);
        assert_eq!(rollout.in_flight(), 2);
        let first = rollout.in_flight.iter().next().cloned().expect("in flight");
        let actions = rollout.step(healthy(&first), at(10)).expect("report");
        assert_eq!(pinned(&actions).len(), 1, "one slot freed, one host pinned");
        assert_eq!(rollout.in_flight(), 2);
    }

    #[test]
    fn a_stage_passes_after_every_host_is_healthy_and_the_bake() {
        let (mut rollout, _) = started(spec("canary,100%"), 4);
        let canary = rollout.plan().stages[0].hosts[0].id.clone();
        let actions = rollout.step(healthy(&canary), at(30)).expect("report");
        assert!(pinned(&actions).is_empty(), "baking");
        assert_eq!(wake(&actions), Some(at(90)), "bake ends a minute after the last host");
        assert_eq!(
            rollout.progress(at(60)).stages[0].status,
            StageStatus::Baking {
                remaining: Duration::from_secs(30)
            }
        );
        assert!(pinned(&rollout.step(Event::Tick, at(89)).expect("tick")).is_empty());
        let actions = rollout.step(Event::Tick, at(90)).expect("tick");
        assert_eq!(pinned(&actions).len(), 2, "the next stage starts, two at a time");
        assert_eq!(rollout.current_stage(), Some(1));
    }

    #[test]
    fn a_failed_canary_trips_the_breaker_whatever_the_budget() {
        let mut text = text("canary,100%");
        text.max_failures = "50%";
        let mut rollout = rollout(RolloutSpec::parse(&text).expect("spec"), &fleet(10));
        rollout.step(Event::Start, at(0)).expect("start");
        let canary = rollout.plan().stages[0].hosts[0].id.clone();
        let actions = rollout
            .step(failing(&canary, AppState::RolledBack), at(5))
            .expect("report");
        assert!(pinned(&actions).is_empty());
        assert_eq!(
            rollout.phase(),
            &Phase::Paused {
                reason: PauseReason::FailureBudget
            }
        );
        assert_eq!(rollout.failures(), 1);
    }

    #[test]
    fn a_stage_the_breaker_stopped_is_failed_not_passed() {
        // Defect: after the breaker tripped, `rollout status` showed the failed canary's
        // stage as passed (its only host had settled, on a failure).
        let mut text = text("canary,100%");
        for on_failure in ["pause", "rollback"] {
            text.on_failure = on_failure;
            let mut rollout = rollout(RolloutSpec::parse(&text).expect("spec"), &fleet(4));
            rollout.step(Event::Start, at(0)).expect("start");
            let canary = rollout.plan().stages[0].hosts[0].id.clone();
            rollout
                .step(failing(&canary, AppState::RolledBack), at(5))
                .expect("report");
            let stages = rollout.progress(at(600)).stages;
            assert_eq!(stages[0].status, StageStatus::Failed, "--on-failure {on_failure}");
            assert_eq!(stages[1].status, StageStatus::NotStarted, "--on-failure {on_failure}");
        }
    }

    #[test]
    fn failures_count_once_and_crossing_the_budget_pauses_until_resumed() {
        let (mut rollout, actions) = started(spec("100%"), 6);
        let [first, second] = pinned(&actions).try_into().expect("two in flight");
        rollout.step(failing(&first, AppState::Failed), at(5)).expect("report");
        rollout
            .step(failing(&first, AppState::Failed), at(6))
            .expect("same again");
        assert_eq!(rollout.failures(), 1, "counted once");
        assert_eq!(rollout.phase(), &Phase::Running, "one failure is within the budget");
        let actions = rollout
            .step(failing(&second, AppState::Unhealthy), at(7))
            .expect("report");
        assert!(pinned(&actions).is_empty(), "no new pins once tripped");
        assert_eq!(rollout.failures(), 2);
        assert!(matches!(
            rollout.phase(),
            Phase::Paused {
                reason: PauseReason::FailureBudget
            }
        ));
        let actions = rollout.step(Event::Resume, at(8)).expect("resume");
        assert_eq!(
            pinned(&actions).len(),
            1,
            "resuming refills the window (one host is still in flight)"
        );
        let next = pinned(&actions)[0].clone();
        rollout.step(failing(&next, AppState::Failed), at(9)).expect("report");
        assert!(
            matches!(rollout.phase(), Phase::Paused { .. }),
            "the next failure trips it again"
        );
    }

    #[test]
    fn rollback_on_failure_unpins_every_host_that_took_the_target() {
        let mut text = text("100%");
        text.max_failures = "0";
        text.on_failure = "rollback";
        let mut rollout = rollout(RolloutSpec::parse(&text).expect("spec"), &fleet(5));
        let [first, second] = pinned(&rollout.step(Event::Start, at(0)).expect("start"))
            .try_into()
            .expect("two");
        rollout.step(healthy(&first), at(3)).expect("report");
        let third = rollout
            .in_flight
            .iter()
            .find(|host| **host != second)
            .cloned()
            .expect("refilled");
        let actions = rollout.step(failing(&second, AppState::Failed), at(4)).expect("report");
        let mut expected = vec![first, second, third];
        expected.sort();
        assert_eq!(unpinned(&actions), expected);
        assert!(matches!(rollout.phase(), Phase::RolledBack { .. }));
        assert_eq!(rollout.step(healthy(&expected[0]), at(5)).expect("late report"), []);
    }

    #[test]
    fn a_host_that_misses_its_deadline_counts_as_failed_and_held_hosts_too() {
        let mut text = text("100%");
        text.max_failures = "5";
        text.host_deadline = "2m";
        let mut rollout = rollout(RolloutSpec::parse(&text).expect("spec"), &fleet(4));
        let [first, second] = pinned(&rollout.step(Event::Start, at(0)).expect("start"))
            .try_into()
            .expect("two");
        let held = Event::Report {
            host: second.clone(),
            current: Some(old()),
            desired: Some(old()),
            state: AppState::Held,
        };
        let actions = rollout.step(held, at(10)).expect("held");
        assert!(pinned(&actions).is_empty(), "a held host keeps its slot");
        assert_eq!(rollout.in_flight(), 2);
        let actions = rollout.step(Event::Tick, at(120)).expect("tick");
        assert_eq!(rollout.failures(), 2);
        assert_eq!(
            rollout.host_status(&first),
            Some(&HostStatus::Failed {
                at: at(120),
                reason: FailureReason::MissedDeadline { held: false }
            })
        );
        assert_eq!(
            rollout.host_status(&second),
            Some(&HostStatus::Failed {
                at: at(120),
                reason: FailureReason::MissedDeadline { held: true }
            })
        );
        assert_eq!(pinned(&actions).len(), 2, "the slots are free again");
        rollout.step(healthy(&first), at(130)).expect("late healthy");
        assert_eq!(rollout.failures(), 2, "a failure stays counted");
        // Both are named, with their stage and why, in host order at the same instant.
        let mut expected = vec![
            (first, 0, at(120), FailureReason::MissedDeadline { held: false }),
            (second, 0, at(120), FailureReason::MissedDeadline { held: true }),
        ];
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        let failed: Vec<_> = rollout
            .failed_hosts()
            .into_iter()
            .map(|failed| (failed.host, failed.stage, failed.at, failed.reason))
            .collect();
        assert_eq!(failed, expected);
    }

    #[test]
    fn a_host_turning_unhealthy_during_the_bake_counts() {
        let (mut rollout, _) = started(spec("canary,100%"), 3);
        let canary = rollout.plan().stages[0].hosts[0].id.clone();
        rollout.step(healthy(&canary), at(5)).expect("healthy");
        let unhealthy = Event::Report {
            host: canary,
            current: Some(target()),
            desired: Some(target()),
            state: AppState::Unhealthy,
        };
        rollout.step(unhealthy, at(30)).expect("unhealthy");
        assert_eq!(rollout.failures(), 1);
        assert!(matches!(rollout.phase(), Phase::Paused { .. }), "it was the canary");
    }

    #[test]
    fn a_stale_failure_about_another_release_is_not_blamed_on_the_rollout() {
        let (mut rollout, actions) = started(spec("100%"), 3);
        let first = pinned(&actions)[0].clone();
        let stale = Event::Report {
            host: first.clone(),
            current: Some(old()),
            desired: Some(old()),
            state: AppState::Failed,
        };
        rollout.step(stale, at(1)).expect("stale");
        assert_eq!(rollout.failures(), 0);
        assert!(matches!(rollout.host_status(&first), Some(HostStatus::InFlight { .. })));
    }

    #[test]
    fn a_paused_rollout_pins_nothing_until_resumed() {
        let (mut rollout, actions) = started(spec("100%"), 6);
        rollout
            .step(
                Event::Pause {
                    by: "alice".into(),
                    reason: Some("lunch".into()),
                },
                at(1),
            )
            .expect("pause");
        assert_eq!(rollout.phase().to_string(), "paused by alice");
        for host in pinned(&actions) {
            assert!(pinned(&rollout.step(healthy(&host), at(2)).expect("report")).is_empty());
        }
        assert_eq!(rollout.in_flight(), 0);
        let actions = rollout.step(Event::Resume, at(3)).expect("resume");
        assert_eq!(pinned(&actions).len(), 2);
    }

    /// An operator's pause without a reason.
    fn pause(by: &str) -> Event {
        Event::Pause {
            by: by.into(),
            reason: None,
        }
    }

    #[test]
    fn a_pause_stored_before_reasons_were_kept_still_loads() {
        let old: Phase = serde_json::from_str(r#"{"phase": "paused", "reason": {"operator": {"by": "alice"}}}"#)
            .expect("old paused phase");
        assert_eq!(
            old,
            Phase::Paused {
                reason: PauseReason::Operator {
                    by: "alice".into(),
                    reason: None
                }
            }
        );
        let text = serde_json::to_string(&old).expect("serialize");
        assert!(!text.contains("null"), "{text}");
    }

    #[test]
    fn approve_each_stage_waits_for_approval() {
        let mut text = text("canary,100%");
        text.approve_each_stage = true;
        text.bake = "0s";
        let mut rollout = rollout(RolloutSpec::parse(&text).expect("spec"), &fleet(3));
        rollout.step(Event::Start, at(0)).expect("start");
        let canary = rollout.plan().stages[0].hosts[0].id.clone();
        let actions = rollout.step(healthy(&canary), at(5)).expect("healthy");
        assert!(pinned(&actions).is_empty());
        assert_eq!(
            rollout.phase(),
            &Phase::Paused {
                reason: PauseReason::AwaitingApproval
            }
        );
        let error = rollout.step(Event::Resume, at(6)).expect_err("resume is not approve");
        assert!(error.to_string().contains("drover rollout approve"), "{error}");
        let actions = rollout.step(Event::Approve, at(7)).expect("approve");
        assert_eq!(pinned(&actions).len(), 2);
        all_in_flight_healthy(&mut rollout, at(8));
        assert!(
            matches!(rollout.phase(), Phase::Completed { .. }),
            "completion needs no approval"
        );
    }

    #[test]
    fn commands_the_phase_does_not_allow_are_refused_and_change_nothing() {
        let pending = rollout(spec("canary,100%"), &fleet(3));
        let (running, _) = started(spec("canary,100%"), 3);
        let mut completed = running.clone();
        let canary = completed.plan().stages[0].hosts[0].id.clone();
        completed.step(healthy(&canary), at(1)).expect("healthy");
        completed.step(Event::Tick, at(61)).expect("tick");
        all_in_flight_healthy(&mut completed, at(62));
        completed.step(Event::Tick, at(200)).expect("tick");
        assert!(matches!(completed.phase(), Phase::Completed { .. }));
        let mut paused = running.clone();
        paused.step(pause("bob"), at(1)).expect("pause");
        let cases = [
            (&pending, pause("x"), "rollout_not_running"),
            (&pending, Event::Resume, "rollout_not_paused"),
            (&pending, Event::Approve, "rollout_not_awaiting_approval"),
            (&running, Event::Start, "rollout_already_started"),
            (&running, Event::Resume, "rollout_not_paused"),
            (&running, Event::Approve, "rollout_not_awaiting_approval"),
            (&paused, pause("x"), "rollout_not_running"),
            (&paused, Event::Approve, "rollout_not_awaiting_approval"),
            (&completed, Event::Start, "rollout_already_started"),
            (&completed, Event::Resume, "rollout_not_paused"),
            (&completed, pause("x"), "rollout_not_running"),
            (&completed, Event::Abort { rollback: true }, "rollout_finished"),
        ];
        for (state, event, code) in cases {
            let mut copy = state.clone();
            let error = copy.step(event.clone(), at(300)).expect_err("refused");
            assert_eq!(error.code(), code, "{event:?} when {}", state.phase());
            assert_eq!(&copy, state, "{event:?} changed the rollout");
        }
    }

    #[test]
    fn abort_unpins_every_touched_host_and_pending_aborts_touch_nothing() {
        let mut pending = rollout(spec("100%"), &fleet(3));
        assert_eq!(
            pending.step(Event::Abort { rollback: false }, at(0)).expect("abort"),
            [record(
                "aborted: every touched host returns to its previous desired release".into()
            )]
        );
        let (mut running, actions) = started(spec("100%"), 5);
        let mut touched = pinned(&actions);
        touched.sort();
        let actions = running.step(Event::Abort { rollback: true }, at(1)).expect("abort");
        assert_eq!(unpinned(&actions), touched);
        assert_eq!(
            running.phase(),
            &Phase::Aborted {
                at: at(1),
                rollback: true
            }
        );
        assert_eq!(running.next_wake(), None);
    }

    #[test]
    fn completion_pins_the_app_before_unpinning_the_hosts() {
        let mut text = text("100%");
        text.bake = "0s";
        text.max_in_flight = "100%";
        let mut rollout = rollout(RolloutSpec::parse(&text).expect("spec"), &fleet(3));
        rollout.step(Event::Start, at(0)).expect("start");
        let actions = all_in_flight_healthy(&mut rollout, at(4));
        let pin_app = actions
            .iter()
            .position(|action| matches!(action, Action::PinApp { .. }))
            .expect("pin app");
        let unpin = actions
            .iter()
            .position(|action| matches!(action, Action::UnpinHosts { .. }))
            .expect("unpin");
        assert!(pin_app < unpin);
        assert_eq!(unpinned(&actions).len(), 3);
        assert_eq!(rollout.phase(), &Phase::Completed { at: at(4) });
    }

    #[test]
    fn a_removed_host_frees_its_slot_and_loses_its_pin() {
        let (mut rollout, actions) = started(spec("100%"), 4);
        let gone = pinned(&actions)[0].clone();
        let actions = rollout
            .step(Event::HostRemoved { host: gone.clone() }, at(2))
            .expect("removed");
        assert_eq!(unpinned(&actions), std::slice::from_ref(&gone));
        assert_eq!(pinned(&actions).len(), 1);
        assert_eq!(rollout.failures(), 0);
        assert_eq!(rollout.step(healthy(&gone), at(3)).expect("ignored"), []);
    }

    #[test]
    fn hosts_already_on_the_target_take_no_slot() {
        let mut hosts = fleet(5);
        for host in &mut hosts[..3] {
            host.current = Some(target());
        }
        let mut rollout = rollout(spec("100%"), &hosts);
        let actions = rollout.step(Event::Start, at(0)).expect("start");
        assert_eq!(pinned(&actions).len(), 5, "three on target and two in flight");
        assert_eq!(rollout.in_flight(), 2);
    }

    #[test]
    fn unknown_hosts_and_reports_after_the_end_are_ignored() {
        let (mut rollout, _) = started(spec("100%"), 2);
        let stranger = host(99);
        assert_eq!(
            rollout.step(failing(&stranger, AppState::Failed), at(1)).expect("ok"),
            []
        );
        rollout.step(Event::Abort { rollback: false }, at(2)).expect("abort");
        assert_eq!(
            rollout.step(failing(&host(0), AppState::Failed), at(3)).expect("ok"),
            []
        );
        assert_eq!(rollout.step(Event::Tick, at(4)).expect("ok"), []);
    }

    #[test]
    fn a_persisted_rollout_resumes_exactly() {
        let (mut original, actions) = started(spec("canary,50%,100%"), 12);
        let canary = pinned(&actions)[0].clone();
        original.step(healthy(&canary), at(10)).expect("healthy");
        original.step(Event::Tick, at(70)).expect("next stage");
        let json = serde_json::to_string(&original).expect("serialize");
        let mut restored: Rollout = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(restored, original);
        assert_eq!(restored.next_wake(), original.next_wake());
        let mut now = 70;
        while !original.phase().is_finished() {
            now += 30;
            let hosts: Vec<HostId> = original.in_flight.iter().cloned().collect();
            let mut events: Vec<Event> = hosts.iter().map(healthy).collect();
            events.push(Event::Tick);
            for event in events {
                let expected = original.step(event.clone(), at(now)).expect("step");
                assert_eq!(restored.step(event, at(now)).expect("step"), expected);
            }
            assert!(now < 10_000, "the rollout finishes");
        }
        assert_eq!(restored, original);
    }

    #[test]
    fn progress_shows_counts_bake_and_eta() {
        let (mut rollout, _) = started(spec("canary,100%"), 5);
        let canary = rollout.plan().stages[0].hosts[0].id.clone();
        rollout.step(healthy(&canary), at(40)).expect("healthy");
        let progress = rollout.progress(at(50));
        assert_eq!(progress.stages[0].done, 1);
        assert_eq!(
            progress.stages[0].status,
            StageStatus::Baking {
                remaining: Duration::from_secs(50)
            }
        );
        assert_eq!(progress.stages[1].waiting, 4);
        assert_eq!(progress.stages[1].status, StageStatus::NotStarted);
        // 50 s of bake, then 2 batches of 40 s and a 60 s bake.
        assert_eq!(progress.eta, Some(at(50 + 50 + 80 + 60)));
        rollout.step(Event::Tick, at(100)).expect("tick");
        let progress = rollout.progress(at(100));
        assert_eq!(progress.stages[0].status, StageStatus::Passed);
        assert_eq!(progress.stages[1].in_flight, 2);
        assert_eq!(progress.stages[1].status, StageStatus::Active);
    }

    // --- Property tests: a small fleet simulator drives the controller --------------

    /// How a simulated host behaves once pinned (delays in seconds).
    #[derive(Clone, Copy, Debug)]
    enum Behaviour {
        Good { after: i64 },
        Fails { after: i64, state: AppState },
        Silent,
        Flaky { healthy_after: i64, unhealthy_after: i64 },
        Held,
    }

    struct Sim {
        rollout: Rollout,
        now: Timestamp,
        queue: BTreeMap<(Timestamp, u64), Event>,
        seq: u64,
        behaviours: BTreeMap<HostId, Behaviour>,
        on_target: BTreeSet<HostId>,
        /// Hosts with a host pin now, and when they got it.
        pinned: BTreeMap<HostId, Timestamp>,
        ever_pinned: BTreeSet<HostId>,
        /// Hosts whose healthy-on-target or failure report was delivered.
        settled: BTreeSet<HostId>,
        was_healthy: BTreeSet<HostId>,
        late_failures: BTreeSet<HostId>,
        removed: BTreeSet<HostId>,
        fleet_pinned: bool,
        wake: Option<Timestamp>,
        deadline: Duration,
        steps: usize,
    }

    impl Sim {
        fn new(spec: RolloutSpec, hosts: &[PlanHost], behaviours: Vec<Behaviour>) -> Sim {
            let deadline = spec.host_deadline;
            let plan = plan(&spec, "sim", hosts).expect("plan");
            Sim {
                on_target: hosts
                    .iter()
                    .filter(|host| host.current.as_ref() == Some(&spec.target))
                    .map(|host| host.id.clone())
                    .collect(),
                rollout: Rollout::new(spec, plan),
                now: at(0),
                queue: BTreeMap::new(),
                seq: 0,
                behaviours: hosts.iter().map(|host| host.id.clone()).zip(behaviours).collect(),
                pinned: BTreeMap::new(),
                ever_pinned: BTreeSet::new(),
                settled: BTreeSet::new(),
                was_healthy: BTreeSet::new(),
                late_failures: BTreeSet::new(),
                removed: BTreeSet::new(),
                fleet_pinned: false,
                wake: None,
                deadline,
                steps: 0,
            }
        }

        fn schedule(&mut self, after: i64, event: Event) {
            self.seq += 1;
            self.queue.insert(
                (self.now.plus(Duration::from_secs(after.unsigned_abs())), self.seq),
                event,
            );
        }

        fn report(host: &HostId, current: Version, desired: Version, state: AppState) -> Event {
            Event::Report {
                host: host.clone(),
                current: Some(current),
                desired: Some(desired),
                state,
            }
        }

        fn on_pinned(&mut self, host: &HostId) {
            if self.on_target.contains(host) {
                self.settled.insert(host.clone());
                return;
            }
            let installing = Sim::report(host, old(), target(), AppState::Installing);
            self.schedule(1, installing);
            match self.behaviours[host] {
                Behaviour::Good { after } => self.schedule(after, healthy(host)),
                Behaviour::Fails { after, state } => {
                    // Sent twice: a failure must count once.
                    self.schedule(after, failing(host, state));
                    self.schedule(after + 30, failing(host, state));
                }
                Behaviour::Silent => {}
                Behaviour::Flaky {
                    healthy_after,
                    unhealthy_after,
                } => {
                    self.schedule(healthy_after, healthy(host));
                    let unhealthy = Sim::report(host, target(), target(), AppState::Unhealthy);
                    self.schedule(healthy_after + unhealthy_after, unhealthy);
                }
                Behaviour::Held => self.schedule(2, Sim::report(host, old(), old(), AppState::Held)),
            }
        }

        fn in_flight(&self) -> usize {
            self.pinned
                .iter()
                .filter(|(host, pinned_at)| !self.settled.contains(*host) && self.now < pinned_at.plus(self.deadline))
                .count()
        }

        fn settled_or_expired(&self, host: &HostId) -> bool {
            self.removed.contains(host)
                || self.settled.contains(host)
                || self
                    .pinned
                    .get(host)
                    .is_some_and(|pinned_at| self.now >= pinned_at.plus(self.deadline))
        }

        /// Feeds one event and checks every invariant on what came out.
        fn apply(&mut self, event: Event) -> Result<(), TestCaseError> {
            self.steps += 1;
            if let Event::Report {
                host, current, state, ..
            } = &event
            {
                if self.removed.contains(host) {
                    return Ok(());
                }
                let live = self.pinned.contains_key(host);
                if *state == AppState::Healthy && current.as_ref() == Some(&target()) && live {
                    self.settled.insert(host.clone());
                    self.was_healthy.insert(host.clone());
                } else if matches!(state, AppState::Failed | AppState::RolledBack | AppState::Unhealthy) && live {
                    if self.was_healthy.contains(host) {
                        self.late_failures.insert(host.clone());
                    }
                    self.settled.insert(host.clone());
                }
            }
            if let Event::HostRemoved { host } = &event {
                self.removed.insert(host.clone());
            }
            let before_phase = self.rollout.phase().clone();
            let before_stage = self.rollout.current_stage();
            let before = self.rollout.clone();
            let actions = match self.rollout.step(event.clone(), self.now) {
                Ok(actions) => actions,
                Err(_) => {
                    prop_assert_eq!(&self.rollout, &before, "a refused command changed the rollout");
                    return Ok(());
                }
            };
            let pins = pinned(&actions);
            // (3) A paused or finished rollout issues no new pins.
            if matches!(before_phase, Phase::Paused { .. }) && !matches!(event, Event::Resume | Event::Approve) {
                prop_assert!(pins.is_empty(), "pinned {pins:?} while {before_phase}");
            }
            if matches!(self.rollout.phase(), Phase::Paused { .. }) || self.rollout.phase().is_finished() {
                prop_assert!(pins.is_empty(), "pinned {pins:?} and ended {}", self.rollout.phase());
            }
            // A stage starts only when every host of the earlier ones settled.
            if let (Some(previous), Some(current)) = (before_stage, self.rollout.current_stage())
                && current > previous
            {
                for stage in &self.rollout.plan().stages[..current] {
                    for planned in &stage.hosts {
                        prop_assert!(
                            self.settled_or_expired(&planned.id),
                            "stage {current} started with {} unsettled",
                            planned.id
                        );
                    }
                }
            }
            for action in &actions {
                match action {
                    Action::PinHosts { hosts, .. } => {
                        for host in hosts {
                            // (2) Only hosts of the started stage get the target.
                            prop_assert_eq!(self.rollout.plan().stage_of(host), self.rollout.current_stage());
                            prop_assert!(!self.removed.contains(host));
                            prop_assert!(self.ever_pinned.insert(host.clone()), "{} pinned twice", host);
                            self.pinned.insert(host.clone(), self.now);
                            self.on_pinned(host);
                        }
                    }
                    Action::UnpinHosts { hosts } => {
                        for host in hosts {
                            prop_assert!(self.pinned.remove(host).is_some(), "{} unpinned but not pinned", host);
                        }
                    }
                    Action::PinApp { version } => {
                        prop_assert_eq!(version, &target());
                        prop_assert!(!self.fleet_pinned);
                        self.fleet_pinned = true;
                    }
                    Action::WakeAt { at } => self.wake = Some(*at),
                    Action::Record { .. } => {}
                }
            }
            // (1) Never more than max_in_flight hosts changing at once.
            prop_assert!(
                self.in_flight() <= self.rollout.max_in_flight(),
                "{} in flight, limit {}",
                self.in_flight(),
                self.rollout.max_in_flight()
            );
            prop_assert_eq!(self.in_flight(), self.rollout.in_flight());
            // (4) The budget is exceeded by at most max_in_flight (plus hosts that had
            // already passed and broke later, which no controller can prevent).
            prop_assert!(
                self.rollout.failures()
                    <= self.rollout.failure_budget() + self.rollout.max_in_flight() + self.late_failures.len(),
                "{} failures, budget {}, in flight {}, late {}",
                self.rollout.failures(),
                self.rollout.failure_budget(),
                self.rollout.max_in_flight(),
                self.late_failures.len()
            );
            if self.steps.is_multiple_of(97) {
                let json = serde_json::to_string(&self.rollout).expect("serialize");
                let restored: Rollout = serde_json::from_str(&json).expect("deserialize");
                prop_assert_eq!(&restored, &self.rollout);
                self.rollout = restored;
            }
            Ok(())
        }

        /// Runs until the rollout finishes or nothing more can happen. `ops` are operator
        /// commands and removals mixed in, one per step while they last.
        fn run(&mut self, ops: &[(u8, u16)]) -> Result<(), TestCaseError> {
            self.apply(Event::Start)?;
            let hosts: Vec<HostId> = self.behaviours.keys().cloned().collect();
            for iteration in 0..50_000 {
                if self.rollout.phase().is_finished() {
                    return Ok(());
                }
                match ops.get(iteration) {
                    Some((kind, which)) => match kind % 16 {
                        0 => self.apply(pause("op"))?,
                        1 if matches!(
                            self.rollout.phase(),
                            Phase::Paused {
                                reason: PauseReason::Operator { .. }
                            }
                        ) =>
                        {
                            self.apply(Event::Resume)?
                        }
                        2 => {
                            let host = hosts[usize::from(*which) % hosts.len()].clone();
                            self.apply(Event::HostRemoved { host })?
                        }
                        3 => self.apply(Event::Approve)?,
                        4 => self.apply(Event::Start)?,
                        _ => {}
                    },
                    None => match self.rollout.phase() {
                        Phase::Paused {
                            reason: PauseReason::Operator { .. },
                        } => self.apply(Event::Resume)?,
                        Phase::Paused {
                            reason: PauseReason::AwaitingApproval,
                        } => self.apply(Event::Approve)?,
                        _ => {}
                    },
                }
                if let Phase::Paused {
                    reason: PauseReason::AwaitingApproval,
                } = self.rollout.phase()
                {
                    self.apply(Event::Approve)?;
                }
                let next_report = self.queue.keys().next().map(|(time, _)| *time);
                match (next_report, self.wake) {
                    (Some(report), wake) if wake.is_none_or(|wake| report <= wake) => {
                        let (key, event) = self.queue.pop_first().expect("queued");
                        self.now = self.now.max(key.0);
                        self.apply(event)?;
                    }
                    (_, Some(wake)) => {
                        self.wake = None;
                        self.now = self.now.max(wake);
                        self.apply(Event::Tick)?;
                    }
                    (None, None) if iteration >= ops.len() => return Ok(()),
                    (Some(_), None) | (None, None) => {}
                }
            }
            Err(TestCaseError::fail("the simulation did not settle"))
        }
    }

    /// Fleets of 1 to 300 hosts: (group bits, on-target roll, behaviour roll, delay, delay).
    fn hosts_strategy() -> impl Strategy<Value = Vec<(u8, u8, u8, i64, i64)>> {
        prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>(), 1i64..500, 1i64..500), 1..300)
    }

    const GROUPS: [&str; 4] = ["g0", "g1", "g2", "g3"];

    fn build_hosts(raw: &[(u8, u8, u8, i64, i64)], on_target: bool) -> Vec<PlanHost> {
        raw.iter()
            .enumerate()
            .map(|(index, (bits, roll, ..))| PlanHost {
                id: host(index),
                groups: GROUPS
                    .iter()
                    .enumerate()
                    .filter(|(bit, _)| bits & (1 << bit) != 0)
                    .map(|(_, name)| (*name).to_owned())
                    .collect(),
                current: Some(if on_target && roll % 10 == 0 { target() } else { old() }),
            })
            .collect()
    }

    fn behaviour(failure_percent: u8, (_, _, roll, first, second): (u8, u8, u8, i64, i64)) -> Behaviour {
        if u16::from(roll) * 100 / 256 >= u16::from(failure_percent) {
            return Behaviour::Good { after: first };
        }
        match roll % 6 {
            0 => Behaviour::Fails {
                after: first,
                state: AppState::Failed,
            },
            1 => Behaviour::Fails {
                after: first,
                state: AppState::RolledBack,
            },
            2 => Behaviour::Silent,
            3 => Behaviour::Held,
            4 => Behaviour::Flaky {
                healthy_after: first,
                unhealthy_after: second,
            },
            _ => Behaviour::Fails {
                after: first,
                state: AppState::Unhealthy,
            },
        }
    }

    /// A stage list: canary or not, then percentages or groups that some host is in.
    fn stage_text(canary: bool, percents: &BTreeSet<u8>, group_order: &[usize], hosts: &[PlanHost]) -> String {
        let mut items: Vec<String> = Vec::new();
        if canary {
            items.push("canary".into());
        }
        let groups: Vec<&str> = group_order
            .iter()
            .map(|index| GROUPS[index % GROUPS.len()])
            .filter(|group| hosts.iter().any(|host| host.groups.contains(*group)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if groups.is_empty() {
            items.extend(
                percents
                    .iter()
                    .filter(|p| (1..100).contains(*p))
                    .map(|p| format!("{p}%")),
            );
            items.push("100%".into());
        } else {
            items.extend(groups.iter().map(|group| (*group).to_owned()));
        }
        items.join(",")
    }

    fn limit_text(limit: (bool, u8)) -> String {
        match limit {
            (true, percent) => format!("{}%", percent % 101),
            (false, count) => format!("{count}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn random_fleets_keep_every_invariant(
            raw in hosts_strategy(),
            canary in any::<bool>(),
            percents in prop::collection::btree_set(1u8..100, 0..4),
            group_order in prop::collection::vec(0usize..4, 0..4),
            in_flight in (any::<bool>(), 1u8..20),
            failures in (any::<bool>(), 0u8..20),
            failure_percent in 0u8..40,
            rollback in any::<bool>(),
            approve in any::<bool>(),
            bake in 0u64..300,
            deadline in 60u64..900,
            ops in prop::collection::vec((any::<u8>(), any::<u16>()), 0..40),
        ) {
            let hosts = build_hosts(&raw, true);
            let stages = stage_text(canary, &percents, &group_order, &hosts);
            let in_flight = limit_text(in_flight);
            prop_assume!(in_flight != "0%");
            let bake = format!("{bake}s");
            let deadline = format!("{deadline}s");
            let max_failures = limit_text(failures);
            let spec = RolloutSpec::parse(&SpecText {
                app: "web",
                target: "2.0",
                stages: &stages,
                max_in_flight: &in_flight,
                bake: &bake,
                max_failures: &max_failures,
                on_failure: if rollback { "rollback" } else { "pause" },
                approve_each_stage: approve,
                host_deadline: &deadline,
            })
            .expect("generated specs are valid");
            let behaviours = raw.iter().map(|host| behaviour(failure_percent, *host)).collect();
            let mut sim = Sim::new(spec, &hosts, behaviours);
            sim.run(&ops)?;
            if sim.rollout.phase().is_finished() {
                prop_assert!(sim.pinned.is_empty(), "host pins left: {:?}", sim.pinned);
            }
            if matches!(sim.rollout.phase(), Phase::Completed { .. }) {
                prop_assert!(sim.fleet_pinned);
            }
        }

        #[test]
        fn a_good_release_always_completes_on_every_host(
            raw in hosts_strategy(),
            canary in any::<bool>(),
            percents in prop::collection::btree_set(1u8..100, 0..4),
            group_order in prop::collection::vec(0usize..4, 0..4),
            in_flight in (any::<bool>(), 1u8..20),
            approve in any::<bool>(),
            bake in 0u64..300,
        ) {
            let hosts = build_hosts(&raw, true);
            let stages = stage_text(canary, &percents, &group_order, &hosts);
            let in_flight = limit_text(in_flight);
            prop_assume!(in_flight != "0%");
            let bake = format!("{bake}s");
            let spec = RolloutSpec::parse(&SpecText {
                approve_each_stage: approve,
                stages: &stages,
                max_in_flight: &in_flight,
                bake: &bake,
                max_failures: "0",
                ..text("100%")
            })
            .expect("spec");
            let behaviours = raw.iter().map(|host| behaviour(0, *host)).collect();
            let mut sim = Sim::new(spec, &hosts, behaviours);
            sim.run(&[])?;
            prop_assert!(matches!(sim.rollout.phase(), Phase::Completed { .. }), "ended {}", sim.rollout.phase());
            prop_assert!(sim.fleet_pinned, "the target became the fleet pin");
            prop_assert!(sim.pinned.is_empty(), "and the host pins are gone");
            prop_assert_eq!(sim.ever_pinned.len(), hosts.len(), "every host went through a stage");
            prop_assert_eq!(sim.rollout.failures(), 0);
        }

        #[test]
        fn a_release_failing_everywhere_stops_at_the_canary(
            raw in hosts_strategy(),
            percents in prop::collection::btree_set(1u8..100, 0..4),
            group_order in prop::collection::vec(0usize..4, 0..4),
            in_flight in (any::<bool>(), 1u8..20),
            failures in (any::<bool>(), 0u8..100),
            rollback in any::<bool>(),
        ) {
            let hosts = build_hosts(&raw, false);
            let stages = stage_text(true, &percents, &group_order, &hosts);
            let in_flight = limit_text(in_flight);
            prop_assume!(in_flight != "0%");
            let max_failures = limit_text(failures);
            let spec = RolloutSpec::parse(&SpecText {
                stages: &stages,
                max_in_flight: &in_flight,
                max_failures: &max_failures,
                on_failure: if rollback { "rollback" } else { "pause" },
                ..text("100%")
            })
            .expect("spec");
            // Every host fails one way or another (a flaky host passes at first, so not that).
            let behaviours = raw
                .iter()
                .map(|host| match behaviour(100, *host) {
                    Behaviour::Flaky { healthy_after, .. } => Behaviour::Fails { after: healthy_after, state: AppState::Failed },
                    other => other,
                })
                .collect();
            let mut sim = Sim::new(spec, &hosts, behaviours);
            sim.run(&[])?;
            let canary = sim.rollout.plan().stages[0].hosts[0].id.clone();
            prop_assert_eq!(sim.ever_pinned.iter().collect::<Vec<_>>(), vec![&canary], "only the canary ever got it");
            prop_assert_eq!(sim.rollout.failures(), 1);
            if rollback {
                let rolled_back = matches!(sim.rollout.phase(), Phase::RolledBack { .. });
                prop_assert!(rolled_back, "ended {}", sim.rollout.phase());
                prop_assert!(sim.pinned.is_empty());
            } else {
                prop_assert_eq!(sim.rollout.phase(), &Phase::Paused { reason: PauseReason::FailureBudget });
            }
        }
    }
}
