//! Staged rollouts through the real coordinator (in-process, real SQLite, real TLS) with
//! simulated agents that poll their signed manifest, verify it as an agent does, and
//! report `apps.web {current, desired, state}`: a good release reaches every stage and
//! becomes the fleet pin, a bad one stops at the canary, commands are refused by state,
//! abort restores the previous desired state, and a restart resumes exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration as StdDuration, Instant};

use drover_protocol::report::{AppReport, AppState, HostReport};
use drover_protocol::{Version, accept};
use drover_tests::fleet::{Agent, Poll, TestCoordinator};
use drover_tests::now_real;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn version(text: &str) -> Version {
    text.parse().expect("version")
}

/// How a simulated host treats the target release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    /// Installs whatever it is asked to and is healthy on it.
    Good,
    /// Fails health on 2.0 and rolls itself back to 1.0, as the agent does.
    FailsOnTarget,
}

/// A fleet of `count` hosts running web 1.0 (fleet pin), with release 2.0 created.
async fn fleet(count: usize) -> (TestCoordinator, Vec<Agent>) {
    let coordinator = TestCoordinator::start().await;
    coordinator.admin.release("web", "1.0", b"web 1.0".to_vec()).await;
    coordinator.admin.release("web", "2.0", b"web 2.0".to_vec()).await;
    coordinator
        .admin
        .ok(
            Method::PUT,
            "/v1/admin/pins",
            Some(json!({"app": "web", "version": "1.0", "scope": {"kind": "fleet"}})),
        )
        .await;
    let mut agents = Vec::new();
    for index in 0..count {
        agents.push(coordinator.enroll(&format!("h{index:02}"), &[("env", "prod")]).await);
    }
    for agent in &agents {
        let desired = desired_web(agent).await;
        agent
            .report(&report(agent, desired.clone(), desired, AppState::Healthy))
            .await;
    }
    (coordinator, agents)
}

fn report(agent: &Agent, current: Option<Version>, desired: Option<Version>, state: AppState) -> HostReport {
    let app_report = AppReport {
        current,
        desired,
        state,
        health: None,
        last_error: None,
        bad_versions: Vec::new(),
    };
    agent.app_report(None, &"web".parse().expect("app"), app_report)
}

/// The web release the host's current manifest asks for, verified as the agent would.
async fn desired_web(agent: &Agent) -> Option<Version> {
    let Poll::Changed(envelope, _) = agent.poll(None, 0).await else {
        panic!("a poll without an ETag returns the manifest");
    };
    let verified = accept(&envelope, &agent.trust(), &agent.host, None, now_real()).expect("manifest verifies");
    verified
        .manifest()
        .apps
        .get(&"web".parse().expect("app"))
        .map(|release| release.version.clone())
}

/// One round of every agent: poll, act as `behaviour` says, report. Returns what each
/// host's manifest asked for.
async fn round(agents: &[Agent], behaviour: &dyn Fn(&Agent) -> Behaviour) -> BTreeMap<String, Option<Version>> {
    let mut seen = BTreeMap::new();
    for agent in agents {
        let desired = desired_web(agent).await;
        let failing = behaviour(agent) == Behaviour::FailsOnTarget && desired == Some(version("2.0"));
        let sent = if failing {
            report(agent, Some(version("1.0")), desired.clone(), AppState::RolledBack)
        } else {
            report(agent, desired.clone(), desired.clone(), AppState::Healthy)
        };
        let (status, body) = agent.report(&sent).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        seen.insert(agent.host.to_string(), desired);
    }
    seen
}

async fn status(coordinator: &TestCoordinator) -> Value {
    coordinator.admin.ok(Method::GET, "/v1/admin/rollouts/web", None).await
}

async fn history(coordinator: &TestCoordinator) -> Vec<Value> {
    let value = coordinator
        .admin
        .ok(Method::GET, "/v1/admin/rollouts/web/history", None)
        .await;
    value.as_array().expect("history list").clone()
}

fn start_body(extra: Value) -> Value {
    let mut body = json!({"app": "web", "version": "2.0", "max_in_flight": "2", "reason": "release 2.0"});
    for (key, value) in extra.as_object().expect("object") {
        body[key] = value.clone();
    }
    body
}

async fn start(coordinator: &TestCoordinator, extra: Value) -> Value {
    let (status, text) = coordinator
        .admin
        .call(Method::POST, "/v1/admin/rollouts", Some(start_body(extra)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    serde_json::from_str(&text).expect("status")
}

/// Runs rounds until the rollout leaves `running` (or `deadline` passes); returns the
/// final status and every version each host's manifest asked for along the way.
async fn drive(
    coordinator: &TestCoordinator,
    agents: &[Agent],
    behaviour: &dyn Fn(&Agent) -> Behaviour,
) -> (Value, BTreeMap<String, BTreeSet<Option<Version>>>) {
    let deadline = Instant::now() + StdDuration::from_secs(60);
    let mut seen: BTreeMap<String, BTreeSet<Option<Version>>> = BTreeMap::new();
    loop {
        for (host, desired) in round(agents, behaviour).await {
            seen.entry(host).or_default().insert(desired);
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
        let current = status(coordinator).await;
        if current["phase"] != "running" {
            // One more round: the manifests after the last step.
            for (host, desired) in round(agents, behaviour).await {
                seen.entry(host).or_default().insert(desired);
            }
            return (current, seen);
        }
        assert!(Instant::now() < deadline, "rollout did not finish: {current}");
    }
}

fn stage_starts(history: &[Value]) -> Vec<String> {
    history
        .iter()
        .filter_map(|line| line["what"].as_str())
        .filter(|what| what.starts_with("stage ") && what.contains(" started: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_release_completes_every_stage_and_becomes_the_fleet_pin() {
    let (coordinator, agents) = fleet(20).await;
    let started = start(&coordinator, json!({"stages": "canary,50%,100%"})).await;
    assert_eq!(started["phase"], "running");
    assert_eq!(started["stages"].as_array().expect("stages").len(), 3);
    let (finished, _) = drive(&coordinator, &agents, &|_| Behaviour::Good).await;
    assert_eq!(finished["phase"], "completed", "{finished}");
    for stage in finished["stages"].as_array().expect("stages") {
        assert_eq!(stage["status"], "passed", "{stage}");
        assert_eq!(stage["done"], stage["total"], "{stage}");
    }
    assert_eq!(finished["failures"], 0);
    assert!(finished["finished_at"].is_string());
    // Every host runs 2.0 through the fleet pin; no host pin is left.
    for agent in &agents {
        assert_eq!(desired_web(agent).await, Some(version("2.0")), "{}", agent.host);
    }
    let hosts = coordinator.admin.ok(Method::GET, "/v1/admin/hosts", None).await;
    assert_eq!(hosts.as_array().expect("hosts").len(), 20);
    let lines = history(&coordinator).await;
    assert_eq!(stage_starts(&lines).len(), 3, "{lines:?}");
    let start_line = lines
        .iter()
        .find(|line| {
            line["what"]
                .as_str()
                .is_some_and(|what| what.contains("started: 20 hosts"))
        })
        .expect("start recorded");
    assert_eq!(start_line["who"], "admin");
    assert_eq!(start_line["reason"], "release 2.0");
    assert!(lines.iter().any(|line| line["what"] == "pinned web 1.0 for the fleet"));
    // A finished rollout refuses commands (exit 4 in the CLI).
    let (status, text) = coordinator
        .admin
        .call(Method::POST, "/v1/admin/rollouts/web/pause", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_failing_everywhere_stops_at_the_canary_and_no_other_host_sees_it() {
    let (coordinator, agents) = fleet(10).await;
    let started = start(&coordinator, json!({"max_failures": "50%"})).await;
    assert_eq!(started["phase"], "running");
    let (stopped, seen) = drive(&coordinator, &agents, &|_| Behaviour::FailsOnTarget).await;
    assert_eq!(stopped["phase"], "paused_by_breaker", "{stopped}");
    assert_eq!(stopped["failures"], 1);
    let touched: Vec<&String> = seen
        .iter()
        .filter(|(_, versions)| versions.contains(&Some(version("2.0"))))
        .map(|(host, _)| host)
        .collect();
    assert_eq!(touched.len(), 1, "only the canary's manifest ever named 2.0: {seen:?}");
    assert_eq!(stopped["stages"][0]["failed"], 1);
    assert_eq!(stopped["stages"][1]["waiting"], stopped["stages"][1]["total"]);
    // A few more rounds change nothing: the breaker pins nobody new.
    for _ in 0..3 {
        for (host, desired) in round(&agents, &|_| Behaviour::FailsOnTarget).await {
            if &host != touched[0] {
                assert_eq!(desired, Some(version("1.0")), "{host}");
            }
        }
    }
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_is_refused_and_bad_specs_list_every_field() {
    let (coordinator, _agents) = fleet(3).await;
    let (status, text) = coordinator
        .admin
        .call(
            Method::POST,
            "/v1/admin/rollouts",
            Some(
                json!({"app": "web", "version": "2.0", "stages": "50%,10%", "max_in_flight": "0",
                        "bake": "soon", "on_failure": "panic"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let body: Value = serde_json::from_str(&text).expect("error body");
    assert_eq!(body["code"], "bad_rollout_spec");
    for field in ["--stages", "--max-in-flight", "--bake", "--on-failure"] {
        assert!(
            body["error"].as_str().expect("message").contains(field),
            "{field}: {text}"
        );
    }
    let (status, _) = coordinator
        .admin
        .call(
            Method::POST,
            "/v1/admin/rollouts",
            Some(json!({"app": "web", "version": "9.9"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = coordinator
        .admin
        .call(Method::GET, "/v1/admin/rollouts/web", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    start(&coordinator, json!({})).await;
    let (status, text) = coordinator
        .admin
        .call(Method::POST, "/v1/admin/rollouts", Some(start_body(json!({}))))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert!(text.contains("rollout_active"), "{text}");
    // Refused by state: approve while running.
    let (status, text) = coordinator
        .admin
        .call(Method::POST, "/v1/admin/rollouts/web/approve", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert!(text.contains("rollout_not_awaiting_approval"), "{text}");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_new_pins_and_resume_continues() {
    let (coordinator, agents) = fleet(10).await;
    start(&coordinator, json!({"stages": "canary,100%"})).await;
    let paused = coordinator
        .admin
        .ok(
            Method::POST,
            "/v1/admin/rollouts/web/pause",
            Some(json!({"reason": "lunch"})),
        )
        .await;
    assert_eq!(paused["phase"], "paused_by_operator");
    // The canary was pinned at start; while paused, nobody else gets 2.0.
    for _ in 0..4 {
        let seen = round(&agents, &|_| Behaviour::Good).await;
        tokio::time::sleep(StdDuration::from_millis(50)).await;
        let on_target = seen
            .values()
            .filter(|desired| **desired == Some(version("2.0")))
            .count();
        assert_eq!(on_target, 1, "{seen:?}");
    }
    let paused = status(&coordinator).await;
    assert_eq!(paused["phase"], "paused_by_operator");
    assert_eq!(paused["stages"][1]["waiting"], 9);
    let (status_code, _) = coordinator
        .admin
        .call(Method::POST, "/v1/admin/rollouts/web/pause", None)
        .await;
    assert_eq!(status_code, StatusCode::CONFLICT);
    coordinator
        .admin
        .ok(Method::POST, "/v1/admin/rollouts/web/resume", None)
        .await;
    let (finished, _) = drive(&coordinator, &agents, &|_| Behaviour::Good).await;
    assert_eq!(finished["phase"], "completed", "{finished}");
    let lines = history(&coordinator).await;
    let pause = lines
        .iter()
        .find(|line| line["what"] == "paused by admin")
        .expect("pause recorded");
    assert_eq!(pause["reason"], "lunch");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_restores_the_previous_desired_state() {
    let (coordinator, agents) = fleet(10).await;
    start(&coordinator, json!({"stages": "canary,50%,100%", "max_in_flight": "3"})).await;
    // Let it get into the 50% stage.
    let deadline = Instant::now() + StdDuration::from_secs(30);
    loop {
        round(&agents, &|_| Behaviour::Good).await;
        tokio::time::sleep(StdDuration::from_millis(50)).await;
        if status(&coordinator).await["stage"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never reached stage 2");
    }
    let aborted = coordinator
        .admin
        .ok(
            Method::POST,
            "/v1/admin/rollouts/web/abort",
            Some(json!({"rollback": true, "reason": "bad metrics"})),
        )
        .await;
    assert_eq!(aborted["phase"], "aborted");
    for agent in &agents {
        assert_eq!(desired_web(agent).await, Some(version("1.0")), "{}", agent.host);
    }
    let (status_code, _) = coordinator
        .admin
        .call(Method::POST, "/v1/admin/rollouts/web/abort", None)
        .await;
    assert_eq!(status_code, StatusCode::CONFLICT);
    // A new rollout may start once the old one is finished.
    start(&coordinator, json!({})).await;
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_rollout_resumes_exactly() {
    let (mut coordinator, agents) = fleet(12).await;
    start(&coordinator, json!({"stages": "canary,50%,100%"})).await;
    // Complete the canary stage, then restart while the 50% stage is in flight.
    let deadline = Instant::now() + StdDuration::from_secs(30);
    loop {
        round(&agents, &|_| Behaviour::Good).await;
        tokio::time::sleep(StdDuration::from_millis(50)).await;
        let current = status(&coordinator).await;
        if current["stage"] == 1 && current["in_flight"].as_u64() > Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "never reached stage 2: {current}");
    }
    let before = status(&coordinator).await;
    coordinator.restart().await;
    let after = status(&coordinator).await;
    assert_eq!(before["rollout"], after["rollout"]);
    assert_eq!(before["stage"], after["stage"]);
    assert_eq!(before["stages"], after["stages"]);
    let (finished, _) = drive(&coordinator, &agents, &|_| Behaviour::Good).await;
    assert_eq!(finished["phase"], "completed", "{finished}");
    let starts = stage_starts(&history(&coordinator).await);
    assert_eq!(starts.len(), 3, "each stage started exactly once: {starts:?}");
    for (index, line) in starts.iter().enumerate() {
        assert!(line.starts_with(&format!("stage {} of 3", index + 1)), "{starts:?}");
    }
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_does_what_plan_showed() {
    let (coordinator, _agents) = fleet(10).await;
    let planned = coordinator
        .admin
        .ok(
            Method::POST,
            "/v1/admin/rollouts/plan",
            Some(start_body(json!({"stages": "canary,50%,100%"}))),
        )
        .await;
    let planned_stages: Vec<Vec<String>> = planned["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|stage| {
            stage["hosts"]
                .as_array()
                .expect("hosts")
                .iter()
                .map(|host| host["id"].as_str().expect("id").to_owned())
                .collect()
        })
        .collect();
    assert_eq!(planned_stages.iter().map(Vec::len).collect::<Vec<_>>(), [1, 4, 5]);
    // Planning changes nothing: no rollout exists yet.
    let (status_code, _) = coordinator
        .admin
        .call(Method::GET, "/v1/admin/rollouts/web", None)
        .await;
    assert_eq!(status_code, StatusCode::NOT_FOUND);
    let started = start(&coordinator, json!({"stages": "canary,50%,100%"})).await;
    assert_eq!(started["rollout"], planned["rollout"]);
    // The canary the plan named is the host that got 2.0.
    let canary = &planned_stages[0][0];
    let hosts = coordinator.admin.ok(Method::GET, "/v1/admin/hosts", None).await;
    for host in hosts.as_array().expect("hosts") {
        let desired = host["apps"]["web"]["desired"].as_str();
        let expected = if host["id"].as_str() == Some(canary.as_str()) {
            "2.0"
        } else {
            "1.0"
        };
        assert_eq!(desired, Some(expected), "{host}");
    }
    coordinator.stop().await;
}

/// Runs the real `drover` binary against the in-process coordinator.
fn drover(coordinator: &TestCoordinator, args: &[&str]) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(drover_tests::binary("drover"))
        .args(args)
        .env("DROVER_DATA_DIR", &coordinator.data_dir)
        .env("DROVER_ADDR", coordinator.url())
        .env_remove("DROVER_TOKEN")
        .env_remove("DROVER_CA")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run drover");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_plan_shows_what_start_does() {
    let (coordinator, agents) = fleet(6).await;
    let args = ["web", "2.0", "--stages", "canary,50%,100%", "--max-in-flight", "1"];
    let plan = tokio::task::block_in_place(|| drover(&coordinator, &[&["rollout", "plan"], &args[..]].concat()));
    assert_eq!(plan.0, Some(0), "{plan:?}");
    assert!(
        plan.1
            .starts_with("rollout web-2.0-1 of web to 2.0: 6 hosts in 3 stages"),
        "{}",
        plan.1
    );
    let canary_line = plan
        .1
        .lines()
        .find(|line| line.starts_with("1 ") && line.contains("canary"))
        .expect("canary row");
    let canary = canary_line.split_whitespace().nth(2).expect("host column").to_owned();

    let start = tokio::task::block_in_place(|| {
        drover(
            &coordinator,
            &[
                &["rollout", "start"],
                &args[..],
                &["--reason", "cli test", "-o", "json"],
            ]
            .concat(),
        )
    });
    assert_eq!(start.0, Some(0), "{start:?}");
    let started: Value = serde_json::from_str(&start.1).expect("json status");
    assert_eq!(started["rollout"], "web-2.0-1");
    for agent in &agents {
        let expected = if agent.host.as_str() == canary { "2.0" } else { "1.0" };
        assert_eq!(desired_web(agent).await, Some(version(expected)), "{}", agent.host);
    }
    // Refused by state: a second start exits 4; approve while running exits 4.
    let again = tokio::task::block_in_place(|| drover(&coordinator, &[&["rollout", "start"], &args[..]].concat()));
    assert_eq!(again.0, Some(4), "{again:?}");
    let approve = tokio::task::block_in_place(|| drover(&coordinator, &["rollout", "approve", "web"]));
    assert_eq!(approve.0, Some(4), "{approve:?}");
    // Bad spec: exit 2 naming each bad option.
    let bad = tokio::task::block_in_place(|| {
        drover(
            &coordinator,
            &["rollout", "plan", "web", "2.0", "--bake", "soon", "--max-failures", "x"],
        )
    });
    assert_eq!(bad.0, Some(2), "{bad:?}");
    assert!(
        bad.2.contains("--bake") && bad.2.contains("--max-failures"),
        "{}",
        bad.2
    );

    let (finished, _) = drive(&coordinator, &agents, &|_| Behaviour::Good).await;
    assert_eq!(finished["phase"], "completed");
    let status = tokio::task::block_in_place(|| drover(&coordinator, &["rollout", "status", "web"]));
    assert_eq!(status.0, Some(0), "{status:?}");
    assert!(
        status.1.contains("completed") && status.1.contains("IN FLIGHT"),
        "{}",
        status.1
    );
    let watch = tokio::task::block_in_place(|| drover(&coordinator, &["rollout", "watch", "web"]));
    assert_eq!(watch.0, Some(0), "{watch:?}");
    let history = tokio::task::block_in_place(|| drover(&coordinator, &["rollout", "history", "web"]));
    assert_eq!(history.0, Some(0), "{history:?}");
    assert!(
        history.1.contains("cli test") && history.1.contains("completed"),
        "{}",
        history.1
    );
    let help = tokio::task::block_in_place(|| drover(&coordinator, &["rollout", "start", "--help"]));
    assert!(help.1.contains("Default: canary,50%,100%"), "{}", help.1);
    coordinator.stop().await;
}
