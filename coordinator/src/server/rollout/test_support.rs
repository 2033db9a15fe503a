//! What the rollout tests share: a spec, a fleet, a started rollout, reports, and
//! reading pins and wake-ups out of actions. `at(s)` is s seconds after 1_800_000_000.

use std::collections::BTreeSet;

use drover_protocol::report::AppState;
use drover_protocol::{HostId, Timestamp, Version};

use super::{Action, Event, PlanHost, Rollout, RolloutSpec, SpecText, plan};

pub(super) fn at(seconds: i64) -> Timestamp {
    Timestamp::from_unix(1_800_000_000 + seconds)
}

pub(super) fn host(index: usize) -> HostId {
    format!("h{index}").parse().expect("host id")
}

pub(super) fn old() -> Version {
    "1.0".parse().expect("version")
}

pub(super) fn target() -> Version {
    "2.0".parse().expect("version")
}

pub(super) fn text(stages: &str) -> SpecText<'_> {
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

pub(super) fn spec(stages: &str) -> RolloutSpec {
    RolloutSpec::parse(&text(stages)).expect("spec")
}

pub(super) fn fleet(count: usize) -> Vec<PlanHost> {
    (0..count)
        .map(|index| PlanHost {
            id: host(index),
            groups: BTreeSet::new(),
            current: Some(old()),
        })
        .collect()
}

pub(super) fn rollout(spec: RolloutSpec, hosts: &[PlanHost]) -> Rollout {
    let plan = plan(&spec, "r1", hosts).expect("plan");
    Rollout::new(spec, plan)
}

pub(super) fn started(spec: RolloutSpec, count: usize) -> (Rollout, Vec<Action>) {
    let mut rollout = rollout(spec, &fleet(count));
    let actions = rollout.step(Event::Start, at(0)).expect("start");
    (rollout, actions)
}

pub(super) fn pinned(actions: &[Action]) -> Vec<HostId> {
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

pub(super) fn unpinned(actions: &[Action]) -> Vec<HostId> {
    actions
        .iter()
        .flat_map(|action| match action {
            Action::UnpinHosts { hosts } => hosts.clone(),
            _ => Vec::new(),
        })
        .collect()
}

pub(super) fn healthy(host: &HostId) -> Event {
    Event::Report {
        host: host.clone(),
        current: Some(target()),
        desired: Some(target()),
        state: AppState::Healthy,
    }
}

pub(super) fn failing(host: &HostId, state: AppState) -> Event {
    Event::Report {
        host: host.clone(),
        current: Some(old()),
        desired: Some(target()),
        state,
    }
}

pub(super) fn wake(actions: &[Action]) -> Option<Timestamp> {
    actions.iter().rev().find_map(|action| match action {
        Action::WakeAt { at } => Some(*at),
        _ => None,
    })
}

/// An operator's pause without a reason.
pub(super) fn pause(by: &str) -> Event {
    Event::Pause {
        by: by.into(),
        reason: None,
    }
}
