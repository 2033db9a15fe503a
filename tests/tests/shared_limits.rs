//! The rules both sides apply, defined once in `drover-protocol` (issue 12, defects 2, 8
//! and 9), against a real `drover serve` process and the real `drover` CLI:
//! - a spec or a pin the coordinator accepts makes a manifest every agent accepts; one
//!   that would not is refused at once with exit 2 and the numbers, and changes nothing;
//! - a spec an agent would refuse (a health URL with CR/LF, a program with a newline) is
//!   refused at `release create`, not on the host after its grace period;
//! - a host cannot add apps to fleet status by reporting apps it was never given.

use std::path::{Path, PathBuf};
use std::process::Output;

use drover_protocol::manifest::{MAX_MANIFEST_BYTES, signed_size};
use drover_protocol::report::{AppReport, AppState};
use drover_protocol::spec::MAX_SPEC_BYTES;
use drover_protocol::{AppName, accept};
use drover_tests::e2e::CoordinatorProcess;
use drover_tests::fleet::{Admin, Agent, Poll};
use drover_tests::{block_on, now_real};

/// A spec TOML whose one config file holds `content_len` bytes.
fn spec_with_content(dir: &Path, name: &str, content_len: usize) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[service]\ncommand = [\"bin/app\"]\n\n[[config_files]]\npath = \"data\"\ncontent = \"{}\"\n",
        "a".repeat(content_len)
    );
    std::fs::write(&path, text).expect("spec");
    path
}

/// The JSON size of what [`spec_with_content`] writes.
fn spec_json_len(content_len: usize) -> usize {
    let spec: drover_protocol::AppSpec = serde_json::from_value(serde_json::json!({
        "service": {"command": ["bin/app"]},
        "config_files": [{"path": "data", "content": "a".repeat(content_len)}],
    }))
    .expect("spec");
    serde_json::to_vec(&spec).expect("json").len()
}

fn artifact(dir: &Path) -> PathBuf {
    let path = dir.join("app.tar.gz");
    std::fs::write(&path, drover_tests::app_tarball(b"app")).expect("artifact");
    path
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn exit_code(output: &Output) -> Option<i32> {
    output.status.code()
}

fn release(coordinator: &CoordinatorProcess, app: &str, spec: &Path, artifact: &Path) -> Output {
    coordinator.drover(&[
        "release",
        "create",
        app,
        "1.0.0",
        "--spec",
        &spec.display().to_string(),
        "--artifact",
        &artifact.display().to_string(),
    ])
}

fn enroll(coordinator: &CoordinatorProcess, host: &str) -> Agent {
    let admin = Admin::from_data_dir(&coordinator.data_dir, &coordinator.url());
    block_on(async {
        let token = admin.token(&[], None).await;
        Agent::join(&coordinator.url(), &admin.ca_pem, &token.token, host)
            .await
            .expect("join")
    })
}

/// The host's current manifest, verified as its agent would: (serial, app names).
fn current_manifest(agent: &Agent) -> (u64, usize, Vec<String>) {
    let Poll::Changed(envelope, _) = block_on(agent.poll(None, 0)) else {
        panic!("no manifest");
    };
    let verified = accept(&envelope, &agent.trust(), &agent.host, None, now_real())
        .unwrap_or_else(|rejection| panic!("the agent refuses its manifest: {rejection}"));
    let apps = verified.manifest().apps.keys().map(|app| app.to_string()).collect();
    (verified.manifest().serial, envelope.len(), apps)
}

#[test]
fn release_create_refuses_a_spec_over_the_shared_limit_with_exit_2() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let dir = tempfile::tempdir().expect("tempdir");
    let artifact = artifact(dir.path());
    let overhead = spec_json_len(0);
    let at_limit = spec_with_content(dir.path(), "at-limit", MAX_SPEC_BYTES - overhead);
    assert_eq!(spec_json_len(MAX_SPEC_BYTES - overhead), MAX_SPEC_BYTES);
    let created = release(&coordinator, "big", &at_limit, &artifact);
    assert!(created.status.success(), "exactly at the limit: {}", stderr(&created));

    let over = spec_with_content(dir.path(), "over", MAX_SPEC_BYTES - overhead + 1);
    let refused = release(&coordinator, "bigger", &over, &artifact);
    assert_eq!(exit_code(&refused), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(&format!(
            "{} bytes as JSON, over the limit of {MAX_SPEC_BYTES}",
            MAX_SPEC_BYTES + 1
        )),
        "{}",
        stderr(&refused)
    );

    // The server checks too (a client that skips the check, or an older CLI).
    let admin = Admin::from_data_dir(&coordinator.data_dir, &coordinator.url());
    let (status, body) = block_on(async {
        let digest = admin.upload(b"bytes".to_vec()).await;
        admin
            .call(
                reqwest::Method::POST,
                "/v1/admin/releases",
                Some(serde_json::json!({
                    "app": "bigger", "version": "1.0.0",
                    "spec": {"service": {"command": ["bin/app"]},
                             "config_files": [{"path": "data", "content": "a".repeat(MAX_SPEC_BYTES)}]},
                    "artifact": {"kind": "stored_tarball", "digest": digest},
                })),
            )
            .await
    });
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("bad_spec"), "{body}");
    let listed = coordinator.drover(&["release", "list", "bigger"]);
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("1.0.0"),
        "nothing was created"
    );
}

#[test]
fn pin_refused_when_a_host_manifest_would_exceed_what_agents_accept() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let dir = tempfile::tempdir().expect("tempdir");
    let artifact = artifact(dir.path());
    // Each app's release adds about 4/3 of its spec to the signed manifest: four fit in
    // MAX_MANIFEST_BYTES, five do not.
    let content = 170_000;
    let per_app = signed_size(spec_json_len(content), 1);
    assert!(4 * per_app < MAX_MANIFEST_BYTES && 5 * per_app > MAX_MANIFEST_BYTES);
    let spec = spec_with_content(dir.path(), "spec", content);
    for index in 1..=5 {
        let created = release(&coordinator, &format!("app{index}"), &spec, &artifact);
        assert!(created.status.success(), "{}", stderr(&created));
    }
    let agent = enroll(&coordinator, "web-01");
    for index in 1..=4 {
        let pinned = coordinator.drover(&["pin", &format!("app{index}"), "1.0.0"]);
        assert!(pinned.status.success(), "{}", stderr(&pinned));
    }
    let (serial, size, apps) = current_manifest(&agent);
    assert_eq!(
        apps.len(),
        4,
        "the largest manifest the coordinator allows is one the agent accepts"
    );
    assert!(size > 3 * MAX_MANIFEST_BYTES / 4, "{size} bytes: near the limit");

    let refused = coordinator.drover(&["pin", "app5", "1.0.0"]);
    assert_eq!(exit_code(&refused), Some(2), "{}", stderr(&refused));
    let message = stderr(&refused);
    assert!(
        message.contains("would give host web-01 a signed manifest of")
            && message.contains(&MAX_MANIFEST_BYTES.to_string()),
        "{message}"
    );
    assert_eq!(current_manifest(&agent).0, serial, "nothing changed for the host");

    // A rollout that would end there is refused at plan and start, before any step.
    let plan = coordinator.drover(&["rollout", "plan", "app5", "1.0.0", "--stages", "100%"]);
    assert_eq!(exit_code(&plan), Some(2), "{}", stderr(&plan));
    let start = coordinator.drover(&["rollout", "start", "app5", "1.0.0", "--stages", "100%"]);
    assert_eq!(exit_code(&start), Some(2), "{}", stderr(&start));

    // A label that would bring the host into a group pinned to app5: refused too.
    assert!(
        coordinator
            .drover(&["groups", "create", "eu", "--selector", "region=eu"])
            .status
            .success()
    );
    let group_pin = coordinator.drover(&["pin", "app5", "1.0.0", "--group", "eu"]);
    assert!(
        group_pin.status.success(),
        "no host in the group yet: {}",
        stderr(&group_pin)
    );
    let label = coordinator.drover(&["hosts", "label", "web-01", "region=eu"]);
    assert_eq!(exit_code(&label), Some(2), "{}", stderr(&label));
    assert_eq!(current_manifest(&agent).0, serial, "nothing changed for the host");

    // A host joining with labels that bring that pin is refused, and its token stays unused.
    let admin = Admin::from_data_dir(&coordinator.data_dir, &coordinator.url());
    let token = block_on(admin.token(&[("region", "eu")], None));
    let refused = block_on(Agent::join(&coordinator.url(), &admin.ca_pem, &token.token, "web-02"));
    let Err((status, body)) = refused else {
        panic!("a host whose manifest its agent would refuse was enrolled");
    };
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("manifest_too_large"), "{body}");
    assert!(coordinator.drover(&["unpin", "app5", "--group", "eu"]).status.success());
    let joined = block_on(Agent::join(&coordinator.url(), &admin.ca_pem, &token.token, "web-02"))
        .expect("the refused join left the token usable");
    assert_eq!(current_manifest(&joined).2.len(), 4);
}

#[test]
fn release_create_refuses_specs_the_agent_would_refuse() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let dir = tempfile::tempdir().expect("tempdir");
    let artifact = artifact(dir.path());
    for (name, text, needle) in [
        (
            "crlf-url",
            "[service]\ncommand = [\"bin/app\"]\n[[health.checks]]\nkind = \"http\"\nurl = \"http://127.0.0.1:8080/\\r\\nX-Injected: 1\"\n",
            "health URL",
        ),
        (
            "newline-program",
            "[service]\ncommand = [\"bin/app\\nExecStartPre=/bin/sh\"]\n",
            "command",
        ),
        (
            "dot-program",
            "[service]\ncommand = [\"./bin/app\"]\n",
            "normalized path",
        ),
        (
            "zero-memory",
            "[service]\ncommand = [\"bin/app\"]\n[resources]\nmemory_max = \"0\"\n",
            "memory_max",
        ),
        (
            "nul-environment",
            "[service]\ncommand = [\"bin/app\"]\n[service.environment]\nA = \"x\\u0000y\"\n",
            "NUL",
        ),
    ] {
        let spec = dir.path().join(format!("{name}.toml"));
        std::fs::write(&spec, text).expect("spec");
        let refused = release(&coordinator, "web", &spec, &artifact);
        assert_eq!(exit_code(&refused), Some(2), "{name}: {}", stderr(&refused));
        assert!(stderr(&refused).contains(needle), "{name}: {}", stderr(&refused));
    }
    let listed = coordinator.drover(&["release", "list", "web"]);
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("1.0.0"),
        "nothing was created"
    );
}

#[test]
fn reports_naming_apps_never_given_are_ignored_and_counted() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let dir = tempfile::tempdir().expect("tempdir");
    let artifact = artifact(dir.path());
    let spec = spec_with_content(dir.path(), "spec", 10);
    assert!(release(&coordinator, "web", &spec, &artifact).status.success());
    let agent = enroll(&coordinator, "web-01");
    assert!(coordinator.drover(&["pin", "web", "1.0.0"]).status.success());
    let (serial, _, _) = current_manifest(&agent);
    let healthy = |version: &str| AppReport {
        current: Some(version.parse().expect("version")),
        desired: Some(version.parse().expect("version")),
        state: AppState::Healthy,
        health: None,
        last_error: None,
        bad_versions: Vec::new(),
    };
    let web: AppName = "web".parse().expect("app");
    let mut report = agent.app_report(Some(serial), &web, healthy("1.0.0"));
    report.apps.insert("ghost".parse().expect("app"), healthy("6.6.6"));
    let (status, body) = block_on(agent.report(&report));
    assert!(status.is_success(), "{status} {body}");

    let admin = Admin::from_data_dir(&coordinator.data_dir, &coordinator.url());
    let fleet = block_on(admin.ok(reqwest::Method::GET, "/v1/admin/status", None)).to_string();
    assert!(fleet.contains("\"web\""), "{fleet}");
    assert!(
        !fleet.contains("ghost"),
        "an invented app shows in fleet status: {fleet}"
    );
    let host = block_on(admin.ok(reqwest::Method::GET, "/v1/admin/hosts/web-01", None)).to_string();
    assert!(!host.contains("ghost"), "{host}");
    let (_, metrics) = block_on(admin.call(reqwest::Method::GET, "/metrics", None));
    assert!(metrics.contains("drover_report_apps_ignored_total 1"), "{metrics}");

    // An app the host was given stays visible while the host still reports it (it is
    // being stopped and removed), even once it is unpinned.
    assert!(coordinator.drover(&["unpin", "web"]).status.success());
    let (status, body) = block_on(agent.report(&agent.app_report(Some(serial + 1), &web, healthy("1.0.0"))));
    assert!(status.is_success(), "{status} {body}");
    let fleet = block_on(admin.ok(reqwest::Method::GET, "/v1/admin/status", None)).to_string();
    assert!(fleet.contains("\"web\""), "{fleet}");
    let (_, metrics) = block_on(admin.call(reqwest::Method::GET, "/metrics", None));
    assert!(metrics.contains("drover_report_apps_ignored_total 1"), "{metrics}");
}

#[test]
fn pin_refused_past_the_apps_an_agent_accepts() {
    use drover_protocol::manifest::MAX_APPS;
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let agent = enroll(&coordinator, "web-01");
    let admin = Admin::from_data_dir(&coordinator.data_dir, &coordinator.url());
    block_on(async {
        let digest = admin.upload(drover_tests::app_tarball(b"bytes")).await;
        for index in 0..=MAX_APPS {
            let app = format!("app{index}");
            let release = serde_json::json!({
                "app": app, "version": "1.0.0",
                "spec": {"service": {"command": ["bin/app"]}},
                "artifact": {"kind": "stored_tarball", "digest": digest},
            });
            admin
                .ok(reqwest::Method::POST, "/v1/admin/releases", Some(release))
                .await;
            let pin = serde_json::json!({"app": app, "version": "1.0.0", "scope": {"kind": "host", "name": "web-01"}});
            let (status, body) = admin.call(reqwest::Method::PUT, "/v1/admin/pins", Some(pin)).await;
            if index < MAX_APPS {
                assert!(status.is_success(), "app {index}: {status} {body}");
            } else {
                assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
                assert!(
                    body.contains("too_many_apps") && body.contains(&MAX_APPS.to_string()),
                    "{body}"
                );
            }
        }
    });
    let (_, _, apps) = current_manifest(&agent);
    assert_eq!(
        apps.len(),
        MAX_APPS,
        "the agent accepts the fullest manifest the coordinator makes"
    );
}
