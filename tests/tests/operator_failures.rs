//! Failures that say why, for the operator: `drover rollout status|watch` name the hosts a
//! rollout counts as failed with what they reported (escaped), and `release create`
//! refuses a tarball that lacks its program, on the CLI and on the server.

use std::time::{Duration as StdDuration, Instant};

use drover_protocol::report::{AppReport, AppState};
use drover_protocol::{Version, accept};
use drover_tests::fleet::{Agent, Poll, TestCoordinator};
use drover_tests::now_real;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn version(text: &str) -> Version {
    text.parse().expect("version")
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

async fn report_web(agent: &Agent, current: &str, desired: Option<Version>, state: AppState, error: Option<&str>) {
    let app_report = AppReport {
        current: Some(version(current)),
        desired,
        state,
        health: None,
        last_error: error.map(str::to_owned),
        bad_versions: Vec::new(),
    };
    let report = agent.app_report(None, &"web".parse().expect("app"), app_report);
    let (status, body) = agent.report(&report).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

/// The real `drover` binary against the in-process coordinator, with the data
/// directory's admin token; exit code, stdout, stderr.
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

/// What an agent puts in `last_error` when systemd cannot start the unit, with a line
/// feed and an escape sequence a hostile host could add.
const UNIT_ERROR: &str = "systemd could not restart drover-web.service: job Failed (result exit-code, status=217/USER)\n\u{1b}[2Jforged line";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_names_failed_hosts_and_their_reasons() {
    let coordinator = TestCoordinator::start().await;
    let admin = &coordinator.admin;
    admin.release("web", "1.0", b"web 1.0".to_vec()).await;
    admin.release("web", "2.0", b"web 2.0".to_vec()).await;
    let fleet_pin = json!({"app": "web", "version": "1.0", "scope": {"kind": "fleet"}});
    admin.ok(Method::PUT, "/v1/admin/pins", Some(fleet_pin)).await;
    let mut agents = Vec::new();
    for index in 0..3 {
        let agent = coordinator.enroll(&format!("h{index:02}"), &[]).await;
        let desired = desired_web(&agent).await;
        report_web(&agent, "1.0", desired, AppState::Healthy, None).await;
        agents.push(agent);
    }
    let start = json!({"app": "web", "version": "2.0", "stages": "canary,100%", "max_failures": "0"});
    let (status, body) = admin.call(Method::POST, "/v1/admin/rollouts", Some(start)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // The canary installs 2.0, systemd refuses to start it, the agent rolls back.
    let deadline = Instant::now() + StdDuration::from_secs(30);
    let (canary, rollout) = loop {
        assert!(Instant::now() < deadline, "the breaker did not trip");
        for agent in &agents {
            let desired = desired_web(agent).await;
            if desired == Some(version("2.0")) {
                report_web(agent, "1.0", desired, AppState::RolledBack, Some(UNIT_ERROR)).await;
            }
        }
        let rollout = admin.ok(Method::GET, "/v1/admin/rollouts/web", None).await;
        if rollout["phase"] == "paused_by_breaker" {
            let canary = rollout["failed_hosts"][0]["host"].as_str().expect("a failed host").to_owned();
            break (canary, rollout);
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    };
    let failed = rollout["failed_hosts"].as_array().expect("failed hosts");
    assert_eq!(failed.len(), 1, "{rollout:#}");
    assert_eq!(failed[0]["stage"], 0);
    assert_eq!(failed[0]["reason"], "reported rolled_back");
    assert_eq!(failed[0]["state"], "rolled_back");
    assert_eq!(failed[0]["error"], UNIT_ERROR, "the host's words, whole, in JSON");

    let (code, table, stderr) = tokio::task::block_in_place(|| drover(&coordinator, &["rollout", "status", "web"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!table.contains('\u{1b}'), "escaped for the terminal: {table:?}");
    let row = table
        .lines()
        .find(|line| line.starts_with(&format!("{canary} ")))
        .unwrap_or_else(|| panic!("a row for {canary}: {table}"));
    assert!(
        row.contains("reported rolled_back")
            && row.contains("status=217/USER)\\n\\u{1b}[2Jforged line")
            && row.contains("rolled_back"),
        "{row}"
    );
    let (code, json_text, _) =
        tokio::task::block_in_place(|| drover(&coordinator, &["rollout", "status", "web", "-o", "json"]));
    assert_eq!(code, Some(0));
    let parsed: Value = serde_json::from_str(&json_text).expect("json");
    assert_eq!(parsed["failed_hosts"], rollout["failed_hosts"]);

    // `watch` ends naming the host and why, in its last frame and in its error.
    let (code, watched, stderr) = tokio::task::block_in_place(|| drover(&coordinator, &["rollout", "watch", "web"]));
    assert_eq!(code, Some(1), "{watched}{stderr}");
    assert!(
        watched.contains(&format!(
            "{canary} failed in stage 1 (canary): reported rolled_back: systemd could not restart"
        )),
        "{watched}"
    );
    assert!(!watched.contains('\u{1b}'), "{watched:?}");
    assert!(
        stderr.contains(&format!("first failure: {canary} failed in stage 1 (canary)"))
            && stderr.contains("status=217/USER"),
        "{stderr}"
    );
    coordinator.stop().await;
}
