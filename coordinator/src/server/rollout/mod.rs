//! The rollout controller: moves one app to a target release over ordered stages,
//! advancing on health and stopping itself on a failure budget (SPEC.md §2, §5; issue 6).
//!
//! Everything here is a pure decision: [`plan()`] assigns hosts to stages and
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
//!
//! The parts: [`spec`] (the operator's options, validated), [`plan`](mod@plan) (hosts into
//! stages), [`machine`] (the state machine), [`progress`] (the status view). Everything is
//! re-exported here, so callers name `crate::server::rollout::X`.

pub mod machine;
pub mod plan;
pub mod progress;
pub mod spec;

#[cfg(test)]
mod simulation;
#[cfg(test)]
mod test_support;

pub use machine::{Action, Event, FailedHost, FailureReason, HostStatus, PauseReason, Phase, Rollout, RolloutError};
pub use plan::{Plan, PlanError, PlanHost, PlannedHost, PlannedStage, StageLabel, plan};
pub use progress::{Progress, StageProgress, StageStatus};
pub use spec::{Limit, OnFailure, RolloutSpec, SpecError, SpecErrors, SpecText, StageSpec, Stages};
