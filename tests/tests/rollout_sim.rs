//! Rollouts at fleet scale: 1,000 simulated agents (tests/src/sim.rs) speaking the real
//! protocol over mTLS to an in-process coordinator with real SQLite. A good release
//! completes every stage; one failing everywhere stops at the canary and no other host's
//! manifest ever names it; 3 % failures fit a 5 % budget, 10 % pause; `--on-failure
//! rollback` returns every touched host to the previous release; a coordinator restart
//! mid-stage resumes exactly; hosts that go silent fail by the host deadline.
//!
//! The scenarios run one at a time (each on its own runtime, behind one lock): each has
//! a thousand tasks and a coordinator, and CI has two cores.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration as StdDuration, Instant};

use drover_coordinator::server::clock::ManualClock;
use drover_protocol::api::{HistoryEntry, HostSummary, RolloutPhase, RolloutPlan, RolloutStatus};
use drover_protocol::report::AppState;
use drover_protocol::{HostId, Version};
use drover_tests::e2e::CoordinatorProcess;
use drover_tests::fleet::{Admin, TestCoordinator};
use drover_tests::sim::{Behaviour, SimConfig, Simulator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const HOSTS: usize = 1000;
/// Hosts in each stage of `canary,10%,50%,100%` over [`HOSTS`].
const STAGES: &str = "canary,10%,50%,100%";

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `scenario` alone, on a two-worker runtime like CI's two cores.
fn run(name: &str, scenario: impl Future<Output = ()>) {
    let _alone = serial();
    let started = Instant::now();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(scenario);
    eprintln!("{name}: {:.1} s", started.elapsed().as_secs_f64());
}

fn version(text: &str) -> Version {
    text.parse().expect("version")
}

/// A coordinator with web 1.0 (the fleet pin) and 2.0, and [`HOSTS`] simulated hosts
/// healthy on 1.0.
async fn fleet() -> (TestCoordinator, Simulator) {
    let coordinator = TestCoordinator::start().await;
    let sim = populate(&coordinator.url(), &coordinator.admin).await;
    (coordinator, sim)
}

/// [`fleet`] on a coordinator whose service reads a manual clock, for scenarios that show
/// what does (not) happen when time passes without waiting for it.
async fn fleet_on_manual_clock() -> (TestCoordinator, Simulator, Arc<ManualClock>) {
    let (coordinator, clock) = TestCoordinator::start_manual().await;
    let sim = populate(&coordinator.url(), &coordinator.admin).await;
    (coordinator, sim, clock)
}

/// Moves the coordinator's clock on by an hour, past any bake or host deadline of these
/// rollouts, and runs a pass of the rollout driver at that time.
async fn an_hour_later(coordinator: &TestCoordinator, clock: &ManualClock) {
    clock.advance(drover_protocol::Duration::from_secs(3600));
    coordinator.coordinator().drive_once().await;
}

/// The hosts whose published manifest names web `version`, by the coordinator (no
/// waiting for agents to fetch it).
async fn desired_on(admin: &Admin, version: &Version) -> BTreeSet<HostId> {
    let hosts: Vec<HostSummary> =
        serde_json::from_value(admin.ok(Method::GET, "/v1/admin/hosts", None).await).expect("hosts");
    hosts
        .into_iter()
        .filter(|host| {
            host.apps
                .get(&"web".parse().expect("app"))
                .is_some_and(|app| app.desired.as_ref() == Some(version))
        })
        .map(|host| host.id)
        .collect()
}

/// The silent hosts in flight: their manifest names 2.0 and the rollout has not counted
/// them failed.
async fn silent_in_flight(admin: &Admin, silent: &BTreeSet<HostId>) -> BTreeSet<HostId> {
    let failed: BTreeSet<HostId> = status(admin)
        .await
        .failed_hosts
        .into_iter()
        .map(|failed| failed.host)
        .collect();
    desired_on(admin, &version("2.0"))
        .await
        .intersection(silent)
        .filter(|host| !failed.contains(host))
        .cloned()
        .collect()
}

/// Polls the status until the rollout leaves `running`, on a manual clock: whenever every
/// host in flight is a silent one (nothing else can happen until a deadline passes, and
/// the window always has room for the next hosts, so none are waiting), moves the clock
/// to a second before and a second after `host_deadline` and runs the driver at each.
/// Returns the status and how often it did.
async fn settled_past_deadlines(
    coordinator: &TestCoordinator,
    clock: &ManualClock,
    silent: &BTreeSet<HostId>,
    host_deadline: drover_protocol::Duration,
    timeout: StdDuration,
) -> (RolloutStatus, usize) {
    let deadline = Instant::now() + timeout;
    let mut passed = 0;
    loop {
        let before = silent_in_flight(&coordinator.admin, silent).await;
        let current = status(&coordinator.admin).await;
        if current.phase != RolloutPhase::Running {
            return (current, passed);
        }
        let after = silent_in_flight(&coordinator.admin, silent).await;
        if current.in_flight > 0 && before == after && current.in_flight == after.len() {
            // They were pinned when the clock last moved: a second before their deadline
            // they are still in flight, a second after it every one of them failed.
            let second = drover_protocol::Duration::from_secs(1);
            clock.advance(drover_protocol::Duration::from_millis(host_deadline.as_millis() - 1000));
            coordinator.coordinator().drive_once().await;
            assert_eq!(
                silent_in_flight(&coordinator.admin, silent).await,
                after,
                "before the deadline"
            );
            clock.advance(second);
            clock.advance(second);
            coordinator.coordinator().drive_once().await;
            let still = silent_in_flight(&coordinator.admin, silent).await;
            assert!(still.is_disjoint(&after), "after the deadline: {still:?} of {after:?}");
            passed += 1;
            continue;
        }
        assert!(
            Instant::now() < deadline,
            "still running after {timeout:?}: {current:?}"
        );
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
}

/// Releases web 1.0 and 2.0, pins 1.0 for the fleet and enrolls [`HOSTS`] simulated hosts.
async fn populate(url: &str, admin: &Admin) -> Simulator {
    let started = Instant::now();
    admin.release("web", "1.0", b"web 1.0".to_vec()).await;
    admin.release("web", "2.0", b"web 2.0".to_vec()).await;
    admin
        .ok(
            Method::PUT,
            "/v1/admin/pins",
            Some(json!({"app": "web", "version": "1.0", "scope": {"kind": "fleet"}})),
        )
        .await;
    let sim = Simulator::enroll_at(url, admin, SimConfig::new(HOSTS, "web", "2.0")).await;
    let enrolled = started.elapsed();
    sim.wait_ready(StdDuration::from_secs(60)).await;
    assert_eq!(sim.healthy_on(&version("1.0")), HOSTS);
    eprintln!(
        "fleet of {HOSTS}: enrolled in {:.1} s, ready in {:.1} s",
        enrolled.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    sim
}

fn body(extra: Value) -> Value {
    let mut body = json!({
        "app": "web", "version": "2.0", "stages": STAGES, "max_in_flight": "10%", "bake": "0s",
        "reason": "release 2.0",
    });
    for (key, value) in extra.as_object().expect("object") {
        body[key] = value.clone();
    }
    body
}

async fn plan(admin: &Admin, extra: Value) -> RolloutPlan {
    let value = admin
        .ok(Method::POST, "/v1/admin/rollouts/plan", Some(body(extra)))
        .await;
    serde_json::from_value(value).expect("plan")
}

/// The plan's canary (the first stage's only host).
async fn canary(admin: &Admin, extra: Value) -> (RolloutPlan, HostId) {
    let plan = plan(admin, extra).await;
    assert_eq!(plan.stages[0].label, "canary");
    assert_eq!(plan.stages[0].hosts.len(), 1);
    let canary = plan.stages[0].hosts[0].id.clone();
    (plan, canary)
}

async fn start(admin: &Admin, extra: Value) -> RolloutStatus {
    let (status, text) = admin.call(Method::POST, "/v1/admin/rollouts", Some(body(extra))).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    serde_json::from_str(&text).expect("status")
}

async fn status(admin: &Admin) -> RolloutStatus {
    let value = admin.ok(Method::GET, "/v1/admin/rollouts/web", None).await;
    serde_json::from_value(value).expect("status")
}

async fn history(admin: &Admin) -> Vec<HistoryEntry> {
    let value = admin.ok(Method::GET, "/v1/admin/rollouts/web/history", None).await;
    serde_json::from_value(value).expect("history")
}

/// Polls the status until the rollout leaves `running`.
async fn settled(admin: &Admin, timeout: StdDuration) -> RolloutStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let current = status(admin).await;
        if current.phase != RolloutPhase::Running {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "still running after {timeout:?}: {current:?}"
        );
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
}

fn lines_like(history: &[HistoryEntry], pattern: impl Fn(&str) -> bool) -> Vec<&str> {
    history
        .iter()
        .map(|entry| entry.what.as_str())
        .filter(|what| pattern(what))
        .collect()
}

/// Every stage started once and passed once, in order.
fn assert_each_stage_once(history: &[HistoryEntry], stages: usize) {
    let starts = lines_like(history, |what| {
        what.starts_with("stage ") && what.contains(" started: ")
    });
    assert_eq!(starts.len(), stages, "each stage started exactly once: {starts:?}");
    for (index, line) in starts.iter().enumerate() {
        assert!(
            line.starts_with(&format!("stage {} of {stages} ", index + 1)),
            "{starts:?}"
        );
    }
    let passes = lines_like(history, |what| what.starts_with("stage ") && what.ends_with(" passed"));
    assert_eq!(passes.len(), stages, "each stage passed exactly once: {passes:?}");
    for (index, line) in passes.iter().enumerate() {
        assert!(line.starts_with(&format!("stage {} (", index + 1)), "{passes:?}");
    }
}

fn assert_clean_protocol(sim: &Simulator) {
    let stats = sim.stats();
    eprintln!("simulator: {stats:?}");
    assert_eq!(stats.rejections, 0, "every manifest verifies: {stats:?}");
    assert_eq!(stats.lost_reports, 0, "{stats:?}");
    assert_eq!(stats.refusals, 0, "{stats:?}");
}

/// The hosts of the plan's stages up to and including `last`.
fn hosts_of_stages(plan: &RolloutPlan, last: usize) -> BTreeSet<HostId> {
    plan.stages[..=last]
        .iter()
        .flat_map(|stage| stage.hosts.iter().map(|host| host.id.clone()))
        .collect()
}

#[test]
fn a_good_release_completes_every_stage_at_1000_hosts() {
    run("good release", async {
        let (coordinator, sim) = fleet().await;
        let started = Instant::now();
        let first = start(&coordinator.admin, json!({})).await;
        assert_eq!(first.phase, RolloutPhase::Running);
        assert_eq!(
            first.stages.iter().map(|stage| stage.total).collect::<Vec<_>>(),
            [1, 99, 400, 500]
        );
        let finished = settled(&coordinator.admin, StdDuration::from_secs(180)).await;
        eprintln!(
            "rollout of {HOSTS}: completed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(finished.phase, RolloutPhase::Completed, "{finished:?}");
        for stage in &finished.stages {
            assert_eq!(stage.status, "passed", "{stage:?}");
            assert_eq!(stage.done, stage.total, "{stage:?}");
        }
        assert_eq!(finished.failures, 0);
        assert!(finished.finished_at.is_some());
        sim.wait_all("on 2.0", StdDuration::from_secs(30), |view| {
            view.current == Some(version("2.0")) && view.state == Some(AppState::Healthy) && view.reported
        })
        .await;
        assert_eq!(sim.offered(&version("2.0")).len(), HOSTS);
        assert_each_stage_once(&history(&coordinator.admin).await, 4);
        assert_clean_protocol(&sim);
        sim.shutdown().await;
        coordinator.stop().await;
    });
}

#[test]
fn a_release_failing_everywhere_stops_at_the_canary_at_1000_hosts() {
    run("failing everywhere", async {
        let (coordinator, sim, clock) = fleet_on_manual_clock().await;
        let (_, canary) = canary(&coordinator.admin, json!({"max_failures": "5%"})).await;
        sim.assign(
            7,
            HOSTS,
            Behaviour::FailsOnTarget(AppState::RolledBack),
            &BTreeSet::new(),
        );
        start(&coordinator.admin, json!({"max_failures": "5%"})).await;
        let stopped = settled(&coordinator.admin, StdDuration::from_secs(60)).await;
        assert_eq!(stopped.phase, RolloutPhase::PausedByBreaker, "{stopped:?}");
        assert_eq!(stopped.failures, 1);
        assert_eq!(stopped.stages[0].failed, 1);
        for stage in &stopped.stages[1..] {
            assert_eq!(stage.waiting, stage.total, "{stage:?}");
        }
        // An hour later (every timer of the rollout due) still nobody else was ever offered
        // 2.0, and the canary runs 1.0.
        an_hour_later(&coordinator, &clock).await;
        assert_eq!(
            desired_on(&coordinator.admin, &version("2.0")).await,
            BTreeSet::from([canary.clone()]),
            "the breaker leaves the canary pinned (it rolled itself back) and pins nobody else"
        );
        assert_eq!(sim.offered(&version("2.0")), BTreeSet::from([canary.clone()]));
        let view = sim.view(&canary).expect("canary");
        assert_eq!(view.current, Some(version("1.0")));
        assert_eq!(view.state, Some(AppState::RolledBack));
        assert_eq!(status(&coordinator.admin).await.phase, RolloutPhase::PausedByBreaker);
        assert_eq!(sim.healthy_on(&version("1.0")), HOSTS - 1);
        assert_clean_protocol(&sim);
        sim.shutdown().await;
        coordinator.stop().await;
    });
}

#[test]
fn three_percent_failures_within_a_five_percent_budget_complete() {
    run("3 % failures", async {
        let (coordinator, sim) = fleet().await;
        let extra = json!({"max_failures": "5%"});
        let (plan, canary) = canary(&coordinator.admin, extra.clone()).await;
        assert_eq!(plan.failure_budget, 50);
        // The canary has no budget (one failure there always stops): it is a good host.
        let failing = sim.assign(
            3,
            HOSTS * 3 / 100,
            Behaviour::FailsOnTarget(AppState::Failed),
            &BTreeSet::from([canary]),
        );
        start(&coordinator.admin, extra).await;
        let finished = settled(&coordinator.admin, StdDuration::from_secs(180)).await;
        assert_eq!(finished.phase, RolloutPhase::Completed, "{finished:?}");
        assert_eq!(finished.failures, 30);
        assert_eq!(finished.stages.iter().map(|stage| stage.failed).sum::<usize>(), 30);
        sim.wait_all("settled", StdDuration::from_secs(30), |view| {
            view.reported && matches!(view.state, Some(AppState::Healthy | AppState::Failed))
        })
        .await;
        assert_eq!(sim.healthy_on(&version("2.0")), HOSTS - 30);
        for host in &failing {
            let view = sim.view(host).expect("host");
            assert_eq!(view.current, Some(version("1.0")), "{host}");
            assert_eq!(view.state, Some(AppState::Failed), "{host}");
        }
        assert_each_stage_once(&history(&coordinator.admin).await, 4);
        assert_clean_protocol(&sim);
        sim.shutdown().await;
        coordinator.stop().await;
    });
}

#[test]
fn ten_percent_failures_pause_the_rollout() {
    run("10 % failures", async {
        let (coordinator, sim, clock) = fleet_on_manual_clock().await;
        let extra = json!({"max_failures": "5%"});
        let (plan, canary) = canary(&coordinator.admin, extra.clone()).await;
        sim.assign(
            10,
            HOSTS / 10,
            Behaviour::FailsOnTarget(AppState::RolledBack),
            &BTreeSet::from([canary]),
        );
        start(&coordinator.admin, extra).await;
        let paused = settled(&coordinator.admin, StdDuration::from_secs(180)).await;
        assert_eq!(paused.phase, RolloutPhase::PausedByBreaker, "{paused:?}");
        assert!(
            paused.failures > paused.failure_budget,
            "{} failures, {} tolerated",
            paused.failures,
            paused.failure_budget
        );
        // Hosts in flight when the breaker tripped may still fail, never more than those:
        // once each has reported where it ended up, and the driver took the reports.
        sim.wait_all("in flight ended", StdDuration::from_secs(30), |view| {
            view.desired != Some(version("2.0"))
                || (view.reported
                    && matches!(
                        view.state,
                        Some(AppState::Healthy | AppState::RolledBack | AppState::Failed)
                    ))
        })
        .await;
        coordinator.coordinator().drive_once().await;
        let later = status(&coordinator.admin).await;
        assert_eq!(later.phase, RolloutPhase::PausedByBreaker);
        assert!(
            later.failures <= later.failure_budget + later.max_in_flight,
            "{} failures with {} tolerated and {} in flight",
            later.failures,
            later.failure_budget,
            later.max_in_flight
        );
        // A paused rollout offers the target to nobody new, however much time passes, and
        // nobody outside the stages started so far ever saw it.
        let offered = sim.offered(&version("2.0"));
        let desired = desired_on(&coordinator.admin, &version("2.0")).await;
        an_hour_later(&coordinator, &clock).await;
        assert_eq!(desired_on(&coordinator.admin, &version("2.0")).await, desired);
        assert_eq!(status(&coordinator.admin).await, later, "nothing changed");
        assert_eq!(sim.offered(&version("2.0")), offered);
        let stage = later.stage.expect("a stage started");
        // About one host in ten fails, so the 51st failure comes about 510 hosts in.
        let last = &later.stages[3];
        assert!(
            last.status != "passed" && last.waiting > 0,
            "stopped before the end: {later:?}"
        );
        assert!(offered.len() < HOSTS, "{later:?}");
        let started_hosts = hosts_of_stages(&plan, stage);
        assert!(
            offered.is_subset(&started_hosts),
            "a host outside the started stages saw 2.0"
        );
        eprintln!(
            "paused in stage {} with {} failures of {} tolerated; {} hosts saw 2.0",
            stage + 1,
            later.failures,
            later.failure_budget,
            offered.len()
        );
        assert_clean_protocol(&sim);
        sim.shutdown().await;
        coordinator.stop().await;
    });
}

#[test]
fn on_failure_rollback_returns_every_touched_host_to_the_previous_release() {
    run("rollback", async {
        let (coordinator, sim) = fleet().await;
        let extra = json!({"max_failures": "5%", "on_failure": "rollback"});
        let (_, canary) = canary(&coordinator.admin, extra.clone()).await;
        sim.assign(
            11,
            HOSTS / 10,
            Behaviour::FailsOnTarget(AppState::RolledBack),
            &BTreeSet::from([canary]),
        );
        start(&coordinator.admin, extra).await;
        let rolled_back = settled(&coordinator.admin, StdDuration::from_secs(180)).await;
        assert_eq!(rolled_back.phase, RolloutPhase::RolledBack, "{rolled_back:?}");
        let touched = sim.offered(&version("2.0"));
        assert!(
            touched.len() > 100,
            "the breaker tripped after the canary: {}",
            touched.len()
        );
        sim.wait_all("back on 1.0", StdDuration::from_secs(60), |view| {
            view.desired == Some(version("1.0"))
                && view.current == Some(version("1.0"))
                && view.state == Some(AppState::Healthy)
                && view.reported
        })
        .await;
        let hosts = coordinator.admin.ok(Method::GET, "/v1/admin/hosts", None).await;
        for host in hosts.as_array().expect("hosts") {
            assert_eq!(host["apps"]["web"]["desired"], "1.0", "{host}");
            assert_eq!(host["apps"]["web"]["current"], "1.0", "{host}");
        }
        eprintln!("{} touched hosts returned to 1.0", touched.len());
        assert_clean_protocol(&sim);
        sim.shutdown().await;
        coordinator.stop().await;
    });
}

#[test]
fn a_coordinator_restart_mid_rollout_resumes_exactly() {
    run("restart", async {
        let (mut coordinator, sim) = fleet().await;
        start(&coordinator.admin, json!({})).await;
        // Restart while the 50 % stage (the third) is in flight, a quarter or more done.
        let deadline = Instant::now() + StdDuration::from_secs(120);
        let before = loop {
            let current = status(&coordinator.admin).await;
            let third = &current.stages[2];
            if current.stage == Some(2) && current.in_flight > 0 && third.done >= third.total / 4 {
                break current;
            }
            assert_eq!(current.phase, RolloutPhase::Running, "{current:?}");
            assert!(Instant::now() < deadline, "never reached stage 3: {current:?}");
            tokio::time::sleep(StdDuration::from_millis(20)).await;
        };
        let retries_before = sim.stats().retries;
        let restarting = Instant::now();
        coordinator.restart().await;
        let restart_time = restarting.elapsed();
        let after = status(&coordinator.admin).await;
        assert_eq!(after.rollout, before.rollout);
        assert_eq!(after.stage, Some(2), "before {before:?}, after {after:?}");
        for (old, new) in before.stages.iter().zip(&after.stages) {
            assert!(new.done >= old.done, "{old:?} -> {new:?}");
            if old.status == "passed" {
                assert_eq!(new.status, "passed");
            }
        }
        assert_eq!(after.stages[3].status, "not_started", "{after:?}");
        let finished = settled(&coordinator.admin, StdDuration::from_secs(180)).await;
        assert_eq!(finished.phase, RolloutPhase::Completed, "{finished:?}");
        assert_eq!(finished.failures, 0);
        for stage in &finished.stages {
            assert_eq!(stage.done, stage.total, "{stage:?}");
        }
        sim.wait_all("on 2.0", StdDuration::from_secs(30), |view| {
            view.current == Some(version("2.0")) && view.state == Some(AppState::Healthy) && view.reported
        })
        .await;
        let lines = history(&coordinator.admin).await;
        assert_each_stage_once(&lines, 4);
        assert_eq!(lines_like(&lines, |what| what.starts_with("completed: ")).len(), 1);
        eprintln!(
            "restart in stage 3 ({} of {} done) took {:.2} s; agents retried {} requests across it",
            before.stages[2].done,
            before.stages[2].total,
            restart_time.as_secs_f64(),
            sim.stats().retries - retries_before
        );
        assert_clean_protocol(&sim);
        sim.shutdown().await;
        coordinator.stop().await;
    });
}

#[test]
fn a_coordinator_killed_mid_rollout_resumes_exactly() {
    run("kill -9", async {
        // A real `drover serve` process, so the crash is a real SIGKILL.
        let mut process = tokio::task::block_in_place(CoordinatorProcess::start).expect("drover serve");
        let admin = Admin::from_data_dir(&process.data_dir, &process.url());
        let sim = populate(&process.url(), &admin).await;
        start(&admin, json!({})).await;
        let deadline = Instant::now() + StdDuration::from_secs(120);
        let before = loop {
            let current = status(&admin).await;
            let third = &current.stages[2];
            if current.stage == Some(2) && current.in_flight > 0 && third.done >= third.total / 4 {
                break current;
            }
            assert_eq!(current.phase, RolloutPhase::Running, "{current:?}");
            assert!(Instant::now() < deadline, "never reached stage 3: {current:?}");
            tokio::time::sleep(StdDuration::from_millis(20)).await;
        };
        process.kill9();
        tokio::task::block_in_place(|| process.resume()).expect("drover serve again");
        let after = status(&admin).await;
        assert_eq!(after.rollout, before.rollout);
        for (old, new) in before.stages.iter().zip(&after.stages) {
            if old.status == "passed" {
                assert_eq!(new.status, "passed", "a passed stage stays passed: {old:?} -> {new:?}");
            }
        }
        let finished = settled(&admin, StdDuration::from_secs(180)).await;
        assert_eq!(finished.phase, RolloutPhase::Completed, "{finished:?}");
        assert_eq!(finished.failures, 0);
        for stage in &finished.stages {
            assert_eq!(stage.done, stage.total, "{stage:?}");
        }
        sim.wait_all("on 2.0", StdDuration::from_secs(30), |view| {
            view.current == Some(version("2.0")) && view.state == Some(AppState::Healthy) && view.reported
        })
        .await;
        let lines = history(&admin).await;
        assert_each_stage_once(&lines, 4);
        assert_eq!(lines_like(&lines, |what| what.starts_with("completed: ")).len(), 1);
        sim.shutdown().await;
        process.stop();
    });
}

#[test]
fn silent_hosts_fail_by_the_host_deadline_at_1000_hosts() {
    run("silent hosts", async {
        // On a manual clock: a real 2 s deadline also failed healthy hosts whose reports a
        // loaded machine took longer to carry. The driver's own timer is tested once, in
        // rollouts.rs (the_driver_wakes_on_its_own_when_a_host_deadline_passes).
        let (coordinator, sim, clock) = fleet_on_manual_clock().await;
        let extra = json!({"max_failures": "5%", "host_deadline": "10m"});
        let (_, canary) = canary(&coordinator.admin, extra.clone()).await;
        let silent = sim.assign(13, 20, Behaviour::Silent, &BTreeSet::from([canary]));
        start(&coordinator.admin, extra).await;
        let (finished, deadlines_passed) = settled_past_deadlines(
            &coordinator,
            &clock,
            &silent,
            drover_protocol::Duration::from_secs(600),
            StdDuration::from_secs(180),
        )
        .await;
        assert!(deadlines_passed > 0, "the rollout waited on silent hosts");
        assert_eq!(finished.phase, RolloutPhase::Completed, "{finished:?}");
        assert_eq!(finished.failures, 20);
        let lines = history(&coordinator.admin).await;
        let missed = lines_like(&lines, |what| {
            what.contains("failed on 2.0") && what.contains("deadline")
        });
        assert_eq!(missed.len(), 20, "{missed:?}");
        for host in &silent {
            assert!(
                missed.iter().any(|line| line.contains(host.as_str())),
                "{host}: {missed:?}"
            );
            assert_eq!(sim.view(host).expect("host").current, Some(version("1.0")));
        }
        assert_clean_protocol(&sim);
        sim.shutdown().await;
        coordinator.stop().await;
    });
}
