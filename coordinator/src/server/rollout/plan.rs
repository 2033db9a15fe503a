//! The plan: which host is in which stage, deterministically from the rollout id (see
//! the rules in the [module documentation](super)). What `drover rollout plan` shows is
//! exactly what `start` pins.

use std::collections::BTreeSet;
use std::fmt;

use drover_protocol::{AppName, HostId, Version};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::spec::{Limit, RolloutSpec, StageSpec};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::rollout::test_support::*;

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
}
