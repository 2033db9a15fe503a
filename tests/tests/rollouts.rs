//! Staged rollouts through the real coordinator (in-process, real SQLite, real TLS) with
//! simulated agents that poll their signed manifest, verify it as an agent does, and
//! report `apps.web {current, desired, state}`: a good release reaches every stage and
//! becomes the fleet pin, a bad one stops at the canary, commands are refused by state,
//! abort restores the previous desired state, and a restart resumes exactly. Every change
//! is in the history under the name of the admin token that made it, with its reason; a
//! revoked token changes nothing. `drover rollout watch` follows a rollout to its end.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration as StdDuration, Instant};

use drover_protocol::report::{AppReport, AppState, HostReport};
use drover_protocol::{Version, accept};
use drover_tests::fleet::{Admin, Agent, Poll, TestCoordinator};
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

/// Starts `drover ARGS` (a `rollout watch`) with piped output and reads its first line.
fn spawn_watch(
    coordinator: &TestCoordinator,
    args: &[&str],
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
    String,
) {
    let mut child = drover_command(coordinator, None, args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn drover rollout watch");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).expect("first line of watch");
    (child, stdout, first)
}

/// The real `drover` binary against the in-process coordinator, with the data
/// directory's `admin` token, or `token` as DROVER_TOKEN.
fn drover_command(coordinator: &TestCoordinator, token: Option<&str>, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(drover_tests::binary("drover"));
    command
        .args(args)
        .env("DROVER_DATA_DIR", &coordinator.data_dir)
        .env("DROVER_ADDR", coordinator.url())
        .env_remove("DROVER_TOKEN")
        .env_remove("DROVER_CA")
        .stdin(std::process::Stdio::null());
    if let Some(token) = token {
        command.env("DROVER_TOKEN", token);
    }
    command
}

/// Runs `drover args` with `token` (or the data directory's); exit code, stdout, stderr.
fn drover_as(coordinator: &TestCoordinator, token: Option<&str>, args: &[&str]) -> (Option<i32>, String, String) {
    let output = drover_command(coordinator, token, args).output().expect("run drover");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs the real `drover` binary against the in-process coordinator.
fn drover(coordinator: &TestCoordinator, args: &[&str]) -> (Option<i32>, String, String) {
    drover_as(coordinator, None, args)
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

/// Creates the admin token `name` with the bootstrap `admin`; returns a client using it.
async fn named_admin(coordinator: &TestCoordinator, name: &str) -> Admin {
    let (status, text) = coordinator
        .admin
        .call(Method::POST, "/v1/admin/admin-tokens", Some(json!({"name": name})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let created: Value = serde_json::from_str(&text).expect("created token");
    assert_eq!(created["name"], name);
    assert!(created["expires_at"].is_null(), "{created}");
    let mut admin = coordinator.admin.clone();
    admin.token = created["token"].as_str().expect("secret").to_owned();
    assert_ne!(admin.token, coordinator.admin.token);
    admin
}

/// The history line whose `what` is exactly `what`.
fn line<'a>(lines: &'a [Value], what: &str) -> &'a Value {
    lines
        .iter()
        .find(|line| line["what"] == what)
        .unwrap_or_else(|| panic!("no history line {what:?}: {lines:#?}"))
}

fn assert_error(status: StatusCode, text: &str, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{text}");
    let body: Value = serde_json::from_str(text).expect("error body");
    assert_eq!(body["code"], code, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_recorded_with_the_token_name_and_reason() {
    let (coordinator, agents) = fleet(20).await;
    let ci = named_admin(&coordinator, "ci").await;
    let alice = named_admin(&coordinator, "alice").await;
    coordinator
        .admin
        .ok(
            Method::POST,
            "/v1/admin/groups",
            Some(json!({"name": "eu", "selector": {"env": "prod"}})),
        )
        .await;

    // ci starts; alice pauses, resumes and aborts, each with a reason.
    let (status_code, text) = ci
        .call(
            Method::POST,
            "/v1/admin/rollouts",
            Some(start_body(json!({"stages": "canary,100%", "reason": "ship 2.0"}))),
        )
        .await;
    assert_eq!(status_code, StatusCode::CREATED, "{text}");
    let started: Value = serde_json::from_str(&text).expect("status");
    assert_eq!(started["created_by"], "ci");
    let paused = alice
        .ok(
            Method::POST,
            "/v1/admin/rollouts/web/pause",
            Some(json!({"reason": "latency up"})),
        )
        .await;
    assert_eq!(paused["phase"], "paused_by_operator");
    assert_eq!(paused["phase_text"], "paused by alice");
    assert_eq!(paused["pause_reason"], "latency up");
    alice
        .ok(
            Method::POST,
            "/v1/admin/rollouts/web/resume",
            Some(json!({"reason": "it was the load balancer"})),
        )
        .await;
    round(&agents, &|_| Behaviour::Good).await;
    let aborted = alice
        .ok(
            Method::POST,
            "/v1/admin/rollouts/web/abort",
            Some(json!({"rollback": true, "reason": "error rate up"})),
        )
        .await;
    assert_eq!(aborted["phase"], "aborted");

    // Pins and holds by hand, with reasons.
    let host = |index: usize| json!({"kind": "host", "name": agents[index].host.as_str()});
    alice
        .ok(
            Method::PUT,
            "/v1/admin/pins",
            Some(json!({"app": "web", "version": "2.0", "scope": host(3), "reason": "debug 2.0 on h03"})),
        )
        .await;
    assert_eq!(desired_web(&agents[3]).await, Some(version("2.0")));
    alice
        .ok(
            Method::DELETE,
            "/v1/admin/pins",
            Some(json!({"app": "web", "scope": host(3), "reason": "debugged"})),
        )
        .await;
    let eu = json!({"kind": "group", "name": "eu"});
    let held = ci
        .ok(
            Method::PUT,
            "/v1/admin/holds",
            Some(json!({"scope": eu, "reason": "incident 4711"})),
        )
        .await;
    assert_eq!(held["hosts_changed"], 20);
    ci.ok(
        Method::DELETE,
        "/v1/admin/holds",
        Some(json!({"scope": eu, "reason": "incident 4711 resolved"})),
    )
    .await;

    // `drover rollout history web -o json`, with ci's token from the environment.
    let (code, stdout, stderr) = tokio::task::block_in_place(|| {
        drover_as(
            &coordinator,
            Some(&ci.token),
            &["rollout", "history", "web", "-o", "json"],
        )
    });
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<Value> = serde_json::from_str(&stdout).expect("history JSON");
    let expect = |what: &str, who: &str, reason: &str| {
        let found = line(&lines, what);
        assert_eq!(found["who"], who, "{found}");
        assert_eq!(found["reason"], reason, "{found}");
        assert!(found["at"].is_string(), "{found}");
    };
    let start_line = lines
        .iter()
        .find(|line| {
            line["what"]
                .as_str()
                .is_some_and(|what| what.contains("started: 20 hosts"))
        })
        .expect("start recorded");
    assert_eq!(start_line["who"], "ci");
    assert_eq!(start_line["reason"], "ship 2.0");
    assert_eq!(start_line["app"], "web");
    assert_eq!(start_line["rollout"], started["rollout"]);
    expect("paused by alice", "alice", "latency up");
    let resumed = lines
        .iter()
        .find(|line| line["what"].as_str().is_some_and(|what| what.starts_with("resumed")))
        .expect("resume recorded");
    assert_eq!(resumed["who"], "alice");
    assert_eq!(resumed["reason"], "it was the load balancer");
    let abort_line = lines
        .iter()
        .find(|line| line["what"].as_str().is_some_and(|what| what.starts_with("aborted")))
        .expect("abort recorded");
    assert_eq!(abort_line["who"], "alice");
    assert_eq!(abort_line["reason"], "error rate up");
    expect("pinned web 2.0 for the host h03", "alice", "debug 2.0 on h03");
    expect("unpinned web for the host h03", "alice", "debugged");
    expect("held the group eu", "ci", "incident 4711");
    expect("released the hold on the group eu", "ci", "incident 4711 resolved");
    // A hold stops every app: it belongs to none and is in each app's history.
    assert!(line(&lines, "held the group eu")["app"].is_null());
    // What the rollout did by itself is the controller's.
    assert!(lines.iter().any(|line| line["who"] == "controller"), "{lines:#?}");

    // The table shows the same, and `admin-token list` that both tokens were used.
    let (code, table, _) = tokio::task::block_in_place(|| drover(&coordinator, &["rollout", "history", "web"]));
    assert_eq!(code, Some(0));
    let hold_row = table
        .lines()
        .find(|row| row.contains("held the group eu"))
        .expect("hold row");
    assert!(
        hold_row.contains(" ci ") && hold_row.ends_with("incident 4711"),
        "{table}"
    );
    let tokens = coordinator.admin.ok(Method::GET, "/v1/admin/admin-tokens", None).await;
    let names: Vec<&str> = tokens
        .as_array()
        .expect("tokens")
        .iter()
        .map(|token| token["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["admin", "ci", "alice"]);
    for token in tokens.as_array().expect("tokens") {
        assert_eq!(token["state"], "active", "{token}");
        assert!(token["last_used_at"].is_string(), "{token}");
        assert!(token.get("token").is_none() && token.get("hash").is_none(), "{token}");
    }
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_at_once_and_changes_nothing() {
    let (mut coordinator, agents) = fleet(3).await;
    let alice = named_admin(&coordinator, "alice").await;
    alice
        .ok(
            Method::PUT,
            "/v1/admin/holds",
            Some(json!({"scope": {"kind": "host", "name": "h01"}, "reason": "look at it"})),
        )
        .await;
    let revoked = coordinator
        .admin
        .ok(Method::DELETE, "/v1/admin/admin-tokens/alice", None)
        .await;
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(revoked["revoked_by"], "admin");
    let before = history(&coordinator).await;

    // Every request with it is refused, and nothing changes.
    let (status, text) = alice
        .call(
            Method::PUT,
            "/v1/admin/pins",
            Some(json!({"app": "web", "version": "2.0", "scope": {"kind": "fleet"}, "reason": "sneaky"})),
        )
        .await;
    assert_error(status, &text, StatusCode::UNAUTHORIZED, "admin_token_revoked");
    assert!(text.contains("alice was revoked at"), "{text}");
    let (status, text) = alice
        .call(Method::POST, "/v1/admin/rollouts", Some(start_body(json!({}))))
        .await;
    assert_error(status, &text, StatusCode::UNAUTHORIZED, "admin_token_revoked");
    let (status, text) = alice.call(Method::GET, "/v1/admin/rollouts/web/history", None).await;
    assert_error(status, &text, StatusCode::UNAUTHORIZED, "admin_token_revoked");
    assert_eq!(history(&coordinator).await, before);
    for agent in &agents {
        assert_eq!(desired_web(agent).await, Some(version("1.0")), "{}", agent.host);
    }
    let (status, _) = coordinator
        .admin
        .call(Method::GET, "/v1/admin/rollouts/web", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no rollout was started");
    // The CLI says so, and exits 1.
    let (code, _, stderr) = tokio::task::block_in_place(|| drover_as(&coordinator, Some(&alice.token), &["status"]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("admin token alice was revoked"), "{stderr}");

    // Names: checked, `admin` reserved, unique while valid; revoking twice is refused.
    for (body, expected, code) in [
        (json!({"name": "controller"}), StatusCode::BAD_REQUEST, "bad_json"),
        (json!({"name": "Bad Name"}), StatusCode::BAD_REQUEST, "bad_json"),
        (json!({"name": "admin"}), StatusCode::BAD_REQUEST, "reserved_token_name"),
        (
            json!({"name": "ci", "ttl": "500ms"}),
            StatusCode::BAD_REQUEST,
            "bad_ttl",
        ),
    ] {
        let (status, text) = coordinator
            .admin
            .call(Method::POST, "/v1/admin/admin-tokens", Some(body))
            .await;
        assert_error(status, &text, expected, code);
    }
    let (status, text) = coordinator
        .admin
        .call(Method::DELETE, "/v1/admin/admin-tokens/alice", None)
        .await;
    assert_error(status, &text, StatusCode::CONFLICT, "admin_token_revoked");
    let (status, text) = coordinator
        .admin
        .call(Method::DELETE, "/v1/admin/admin-tokens/nobody", None)
        .await;
    assert_error(status, &text, StatusCode::NOT_FOUND, "admin_token_not_found");

    // The data directory's `admin` can be revoked once another token exists, not the last one.
    let ci = named_admin(&coordinator, "ci").await;
    let (status, text) = coordinator
        .admin
        .call(Method::POST, "/v1/admin/admin-tokens", Some(json!({"name": "ci"})))
        .await;
    assert_error(status, &text, StatusCode::CONFLICT, "admin_token_exists");
    ci.ok(Method::DELETE, "/v1/admin/admin-tokens/admin", None).await;
    let (status, text) = coordinator.admin.call(Method::GET, "/v1/admin/hosts", None).await;
    assert_error(status, &text, StatusCode::UNAUTHORIZED, "admin_token_revoked");
    let (status, text) = ci.call(Method::DELETE, "/v1/admin/admin-tokens/ci", None).await;
    assert_error(status, &text, StatusCode::CONFLICT, "last_admin_token");
    // A restart with the same admin.token keeps it revoked; ci still works.
    coordinator.restart().await;
    let (status, text) = coordinator.admin.call(Method::GET, "/v1/admin/hosts", None).await;
    assert_error(status, &text, StatusCode::UNAUTHORIZED, "admin_token_revoked");
    let mut ci = ci;
    ci.url = coordinator.url();
    let tokens = ci.ok(Method::GET, "/v1/admin/admin-tokens", None).await;
    let states: Vec<(&str, &str)> = tokens
        .as_array()
        .expect("tokens")
        .iter()
        .map(|token| {
            (
                token["name"].as_str().expect("name"),
                token["state"].as_str().expect("state"),
            )
        })
        .collect();
    assert_eq!(states, [("admin", "revoked"), ("alice", "revoked"), ("ci", "active")]);
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_and_holds_without_a_reason_still_work() {
    let (coordinator, agents) = fleet(3).await;
    // Bodies as clients before reasons sent them.
    let host = json!({"kind": "host", "name": "h02"});
    coordinator
        .admin
        .ok(
            Method::PUT,
            "/v1/admin/pins",
            Some(json!({"app": "web", "version": "2.0", "scope": host})),
        )
        .await;
    assert_eq!(desired_web(&agents[2]).await, Some(version("2.0")));
    coordinator
        .admin
        .ok(Method::PUT, "/v1/admin/holds", Some(json!({"scope": host})))
        .await;
    coordinator
        .admin
        .ok(Method::DELETE, "/v1/admin/holds", Some(json!({"scope": host})))
        .await;
    coordinator
        .admin
        .ok(
            Method::DELETE,
            "/v1/admin/pins",
            Some(json!({"app": "web", "scope": host})),
        )
        .await;
    assert_eq!(desired_web(&agents[2]).await, Some(version("1.0")));
    // The CLI without --reason, and with one.
    let (code, stdout, stderr) = tokio::task::block_in_place(|| drover(&coordinator, &["hold", "--host", "h01"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("held host h01"), "{stdout}");
    let (code, _, stderr) =
        tokio::task::block_in_place(|| drover(&coordinator, &["unhold", "--host", "h01", "--reason", "checked"]));
    assert_eq!(code, Some(0), "{stderr}");
    let lines = history(&coordinator).await;
    for what in [
        "pinned web 2.0 for the host h02",
        "held the host h02",
        "released the hold on the host h02",
        "unpinned web for the host h02",
        "held the host h01",
    ] {
        let found = line(&lines, what);
        assert_eq!(found["who"], "admin", "{found}");
        assert!(found["reason"].is_null(), "{found}");
    }
    assert_eq!(line(&lines, "released the hold on the host h01")["reason"], "checked");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_lists_and_revokes_admin_tokens() {
    let (coordinator, _agents) = fleet(1).await;
    let (code, secret, stderr) =
        tokio::task::block_in_place(|| drover(&coordinator, &["admin-token", "create", "ci-deploy", "--ttl", "90d"]));
    assert_eq!(code, Some(0), "{stderr}");
    let secret = secret.trim().to_owned();
    assert!(secret.len() >= 40 && !secret.contains(' '), "{secret}");
    assert!(
        stderr.contains("ci-deploy expires at") && stderr.contains("DROVER_TOKEN"),
        "{stderr}"
    );
    // The new token works from the environment, and its changes are its own.
    let (code, _, stderr) = tokio::task::block_in_place(|| {
        drover_as(
            &coordinator,
            Some(&secret),
            &["pin", "web", "2.0", "--host", "h00", "--reason", "from ci"],
        )
    });
    assert_eq!(code, Some(0), "{stderr}");
    let pinned = line(&history(&coordinator).await, "pinned web 2.0 for the host h00").clone();
    assert_eq!(pinned["who"], "ci-deploy");
    assert_eq!(pinned["reason"], "from ci");

    let (code, table, _) = tokio::task::block_in_place(|| drover(&coordinator, &["admin-token", "list"]));
    assert_eq!(code, Some(0));
    let row = table
        .lines()
        .find(|row| row.starts_with("ci-deploy"))
        .expect("ci-deploy row");
    assert!(
        row.contains("active") && row.contains(" admin ") && row.contains("ago"),
        "{table}"
    );
    assert!(!table.contains(&secret), "secrets are never listed");
    // Bad names are usage errors; a taken name is refused by state.
    let (code, _, stderr) =
        tokio::task::block_in_place(|| drover(&coordinator, &["admin-token", "create", "Not_A_Name"]));
    assert_eq!(code, Some(2), "{stderr}");
    let (code, _, stderr) =
        tokio::task::block_in_place(|| drover(&coordinator, &["admin-token", "create", "ci-deploy"]));
    assert_eq!(code, Some(4), "{stderr}");
    let (code, stdout, stderr) =
        tokio::task::block_in_place(|| drover(&coordinator, &["admin-token", "revoke", "ci-deploy"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("revoked admin token ci-deploy"), "{stdout}");
    let (code, _, stderr) = tokio::task::block_in_place(|| drover_as(&coordinator, Some(&secret), &["status"]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("revoked"), "{stderr}");
    let (code, json_list, _) =
        tokio::task::block_in_place(|| drover(&coordinator, &["admin-token", "list", "-o", "json"]));
    assert_eq!(code, Some(0));
    let tokens: Vec<Value> = serde_json::from_str(&json_list).expect("JSON list");
    assert_eq!(tokens[1]["name"], "ci-deploy");
    assert_eq!(tokens[1]["state"], "revoked");
    assert!(tokens[1]["expires_at"].is_string());
    // The last valid token stays (exit 4).
    let (code, _, stderr) = tokio::task::block_in_place(|| drover(&coordinator, &["admin-token", "revoke", "admin"]));
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("last valid admin token"), "{stderr}");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_a_rollout_to_its_end_and_exits_with_its_outcome() {
    let (coordinator, agents) = fleet(10).await;
    start(&coordinator, json!({"stages": "canary,50%,100%"})).await;
    // Two watchers from the start, as a CI job would run them: bars and NDJSON. Each has
    // shown the running rollout before the agents move it.
    let watcher = |args: &[&str]| {
        let (child, stdout, first) = spawn_watch(&coordinator, args);
        assert!(first.contains("running"), "{first}");
        (child, stdout, first)
    };
    let (mut bars, mut bars_out, mut text) = tokio::task::block_in_place(|| watcher(&["rollout", "watch", "web"]));
    let (mut json_watch, mut json_out, mut json_text) =
        tokio::task::block_in_place(|| watcher(&["rollout", "watch", "web", "-o", "json"]));
    let (finished, _) = drive(&coordinator, &agents, &|_| Behaviour::Good).await;
    assert_eq!(finished["phase"], "completed", "{finished}");
    tokio::task::block_in_place(|| {
        use std::io::Read as _;
        bars_out.read_to_string(&mut text).expect("rest of watch");
        json_out.read_to_string(&mut json_text).expect("rest of watch");
    });
    let bars_exit = tokio::task::block_in_place(|| bars.wait()).expect("watch ends");
    let json_exit = tokio::task::block_in_place(|| json_watch.wait()).expect("watch ends");
    assert_eq!(bars_exit.code(), Some(0), "{text}");
    assert_eq!(json_exit.code(), Some(0), "{json_text}");

    // Not a terminal: plain blocks appended, no escape sequences, the last one complete.
    assert!(!text.contains('\u{1b}'), "{text:?}");
    let last = text.trim_end().rsplit("\n\n").next().expect("a block");
    let last_lines: Vec<&str> = last.lines().collect();
    assert_eq!(last_lines.len(), 5, "{last}");
    assert!(
        last_lines[0].starts_with("rollout web-2.0-1 of web to 2.0: completed"),
        "{last}"
    );
    assert!(
        last_lines[1].starts_with("canary  [##########] 1/1 done  0 in flight  0 failed  passed"),
        "{last}"
    );
    assert!(last_lines[2].starts_with("50%     [##########] 4/4 done"), "{last}");
    assert!(last_lines[3].starts_with("100%    [##########] 5/5 done"), "{last}");
    assert_eq!(
        last_lines[4],
        "10 of 10 hosts done, 0 failed (0 tolerated), 0 of 2 in flight"
    );

    // NDJSON: one status per change, each a whole object; it ends completed.
    let statuses: Vec<Value> = json_text
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON status per line"))
        .collect();
    assert!(statuses.len() >= 2, "{statuses:#?}");
    assert_eq!(statuses.last().expect("last")["phase"], "completed");
    assert!(statuses.windows(2).all(|pair| pair[0] != pair[1]), "only changes");

    // A rollout the breaker stops: watch exits 1 and says why.
    let (coordinator, agents) = {
        coordinator.stop().await;
        fleet(4).await
    };
    start(&coordinator, json!({})).await;
    let (stopped, _) = drive(&coordinator, &agents, &|_| Behaviour::FailsOnTarget).await;
    assert_eq!(stopped["phase"], "paused_by_breaker");
    // The stage the breaker stopped did not pass (it said `passed` before).
    assert_eq!(stopped["stages"][0]["status"], "failed", "{stopped}");
    let (code, stdout, stderr) = tokio::task::block_in_place(|| drover(&coordinator, &["rollout", "watch", "web"]));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("paused by the failure breaker (1 failed, 0 tolerated")
            && stdout.contains("canary  [xxxxxxxxxx] 0/1 done  0 in flight  1 failed  stopped by the breaker"),
        "{stdout}"
    );
    assert!(stderr.contains("ended paused by the failure breaker"), "{stderr}");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_that_would_undo_a_rollout_are_refused_and_manual_pins_wait_for_it() {
    let (coordinator, agents) = fleet(6).await;
    let admin = &coordinator.admin;
    let pin = |scope: Value| json!({"app": "web", "version": "1.0", "scope": scope});
    // A host pin of the app: the rollout would overwrite it and could not give it back.
    let host = agents[2].host.to_string();
    admin
        .ok(
            Method::PUT,
            "/v1/admin/pins",
            Some(pin(json!({"kind": "host", "name": host}))),
        )
        .await;
    for path in ["/v1/admin/rollouts/plan", "/v1/admin/rollouts"] {
        let (status_code, text) = admin.call(Method::POST, path, Some(start_body(json!({})))).await;
        assert_error(status_code, &text, StatusCode::CONFLICT, "pins_in_the_way");
        assert!(text.contains(&format!("--host {host}")), "{text}");
    }
    admin
        .ok(
            Method::DELETE,
            "/v1/admin/pins",
            Some(json!({"app": "web", "scope": {"kind": "host", "name": host}})),
        )
        .await;
    // A group pin over the fleet outranks the fleet pin a finished rollout leaves.
    admin
        .ok(
            Method::POST,
            "/v1/admin/groups",
            Some(json!({"name": "prod", "selector": {"env": "prod"}})),
        )
        .await;
    admin
        .ok(
            Method::PUT,
            "/v1/admin/pins",
            Some(pin(json!({"kind": "group", "name": "prod"}))),
        )
        .await;
    let (status_code, text) = admin
        .call(Method::POST, "/v1/admin/rollouts", Some(start_body(json!({}))))
        .await;
    assert_error(status_code, &text, StatusCode::CONFLICT, "pins_in_the_way");
    assert!(text.contains("--group prod"), "{text}");
    assert_eq!(status_of(admin).await, StatusCode::NOT_FOUND, "nothing started");
    admin
        .ok(
            Method::DELETE,
            "/v1/admin/pins",
            Some(json!({"app": "web", "scope": {"kind": "group", "name": "prod"}})),
        )
        .await;
    // While the rollout runs, its pins are the controller's: manual pins are refused.
    start(&coordinator, json!({"stages": "canary,100%"})).await;
    for (method, body) in [
        (
            Method::PUT,
            pin(json!({"kind": "host", "name": agents[0].host.to_string()})),
        ),
        (Method::PUT, pin(json!({"kind": "fleet"}))),
        (Method::DELETE, json!({"app": "web", "scope": {"kind": "fleet"}})),
    ] {
        let (status_code, text) = admin.call(method, "/v1/admin/pins", Some(body)).await;
        assert_error(status_code, &text, StatusCode::CONFLICT, "rollout_active");
    }
    let (finished, _) = drive(&coordinator, &agents, &|_| Behaviour::Good).await;
    assert_eq!(finished["phase"], "completed", "{finished}");
    // Finished, pins are the operator's again.
    admin
        .ok(Method::PUT, "/v1/admin/pins", Some(pin(json!({"kind": "fleet"}))))
        .await;
    coordinator.stop().await;
}

async fn status_of(admin: &Admin) -> StatusCode {
    admin.call(Method::GET, "/v1/admin/rollouts/web", None).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_waits_out_a_coordinator_restart() {
    let (mut coordinator, agents) = fleet(6).await;
    start(&coordinator, json!({"stages": "canary,100%"})).await;
    let (child, first) = tokio::task::block_in_place(|| {
        let (mut child, stdout, first) = spawn_watch(&coordinator, &["rollout", "watch", "web"]);
        child.stdout = Some(stdout.into_inner());
        (child, first)
    });
    assert!(first.contains("running"), "{first}");
    // Down for 3 s (the watch polls every second), then back on the same port and data.
    coordinator.restart_after(StdDuration::from_secs(3)).await;
    let (finished, _) = drive(&coordinator, &agents, &|_| Behaviour::Good).await;
    assert_eq!(finished["phase"], "completed", "{finished}");
    let output = tokio::task::block_in_place(|| child.wait_with_output()).expect("watch ends");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("completed"), "{stdout}");
    assert!(
        stderr.contains("retrying for up to 120s") && stderr.contains("the coordinator answers again"),
        "{stderr}"
    );
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_wakes_on_its_own_when_a_host_deadline_passes() {
    // The real timer, once: `serve`'s driver task on the system clock. A host that never
    // reports fails when its 1 s deadline passes with no report or command to wake the
    // driver (status reads change nothing). How deadlines count is tested on a manual
    // clock (rollout_sim's silent hosts, the service's unit tests).
    let (coordinator, _agents) = fleet(1).await;
    start(&coordinator, json!({"stages": "100%", "host_deadline": "1s"})).await;
    let deadline = Instant::now() + StdDuration::from_secs(30);
    let stopped = loop {
        let current = status(&coordinator).await;
        if current["phase"] != "running" {
            break current;
        }
        assert!(Instant::now() < deadline, "still running after 30 s: {current}");
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    };
    let at = |value: &Value| -> drover_protocol::Timestamp { serde_json::from_value(value.clone()).expect("time") };
    assert!(
        at(&stopped["failed_hosts"][0]["at"])
            >= at(&stopped["created_at"]).plus(drover_protocol::Duration::from_secs(1)),
        "{stopped}"
    );
    assert_eq!(stopped["failures"], 1, "{stopped}");
    assert_eq!(
        stopped["failed_hosts"][0]["reason"], "not healthy within the deadline",
        "{stopped}"
    );
    coordinator.stop().await;
}
