//! The state machine's tests, one behaviour each; the property tests that drive it
//! with a simulated fleet are in `rollout/simulation.rs`.

use drover_protocol::report::AppState;
use drover_protocol::{Duration, HostId, Timestamp};

use super::*;
use crate::server::rollout::test_support::*;
use crate::server::rollout::{RolloutSpec, StageStatus};

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
