//! The view of a rollout for `drover rollout status|watch`: per-stage counts, where each
//! stage is, the failures and a rough ETA. Computed from the state machine's fields, never
//! stored (the API maps it to protocol types).

use drover_protocol::{AppName, Duration, Timestamp, Version};

use super::machine::{HostStatus, PauseReason, Phase, Rollout};
use super::plan::StageLabel;

impl Rollout {
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
    use drover_protocol::report::AppState;

    use super::*;
    use crate::server::rollout::test_support::*;
    use crate::server::rollout::{Event, RolloutSpec};

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
}
