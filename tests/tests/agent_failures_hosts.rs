//! Failures that say why, and a removed host that knows it, on real systemd hosts against
//! a real `drover serve` (issue 14, points 3 and 5).
//!
//! A unit systemd cannot start (217/USER: the spec's user does not exist on the host;
//! 203/EXEC: a program whose `#!` interpreter does not exist) reports systemd's own cause,
//! with a hint, in `drover hosts show` (the app's `last_error` and its event), in
//! `drover rollout status` (the failed host with its error) and in the agent's journal at
//! WARN. A host removed with `drover hosts remove` backs off to a
//! request every few minutes, says so in `drover-agent status` with the command to come
//! back, logs it at ERROR once, keeps its apps running, and a `join --force` restarts the
//! running agent with the new identity.

use std::path::PathBuf;
use std::time::Duration;

use drover_tests::e2e::{AgentHost, Behaviour, CoordinatorProcess, Releases, free_port, run_ok};
use drover_tests::hosts::HostOptions;

const CONVERGE: Duration = Duration::from_secs(90);

/// A spec of the sample app's tarball running `program` as `user` (none: a dynamic user).
fn spec(releases: &Releases, name: &str, program: &str, port: u16, user: Option<&str>) -> PathBuf {
    let user = user.map(|user| format!("user = \"{user}\"\n")).unwrap_or_default();
    let text = format!(
        r#"[service]
command = ["{program}", "--listen", "127.0.0.1:{port}"]
restart = "on-failure"
{user}
[health]
grace_period = "8s"
interval = "500ms"
successes = 2

[[health.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/healthz"
timeout = "1s"
"#
    );
    let path = releases.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("spec");
    path
}

fn create(coordinator: &CoordinatorProcess, version: &str, spec: &std::path::Path, artifact: &std::path::Path) {
    coordinator
        .drover_ok(&[
            "release",
            "create",
            "web",
            version,
            "--spec",
            spec.to_str().expect("spec path"),
            "--artifact",
            artifact.to_str().expect("artifact path"),
        ])
        .expect("release create");
}

/// The agent's journal at priority warning and above.
fn warnings(host: &AgentHost) -> String {
    host.host
        .check(&[
            "journalctl",
            "-u",
            "drover-agent.service",
            "-p",
            "warning",
            "--no-pager",
            "-o",
            "cat",
        ])
        .unwrap_or_default()
}

/// The events of `web` in `hosts show`, as text.
fn web_events(shown: &serde_json::Value) -> Vec<String> {
    shown["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["app"] == "web")
        .filter_map(|event| event["message"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_unit_failing_with_217_user_shows_the_status_in_hosts_show() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    let tarball = releases.tarball("1", 0).expect("tarball");
    create(
        &coordinator,
        "1",
        &spec(&releases, "web-1", "bin/drover-sample-app", port, None),
        &tarball,
    );
    create(
        &coordinator,
        "2",
        &spec(&releases, "web-2", "bin/drover-sample-app", port, Some("nosuchuser")),
        &tarball,
    );
    let host = AgentHost::start("e2e-217", &coordinator, &HostOptions::default()).expect("agent host");
    coordinator.drover_ok(&["pin", "web", "1"]).expect("pin");
    host.wait_healthy("web", "1", CONVERGE).expect("v1 healthy");

    // Through a rollout, whose status names the failed host with the same cause.
    coordinator
        .drover_ok(&["rollout", "start", "web", "2"])
        .expect("rollout start");
    let shown = coordinator.wait_reported(&host, "web 2 to be rolled back", CONVERGE, |shown| {
        shown["apps"]["web"]["state"] == "rolled_back"
    });
    let error = shown["apps"]["web"]["last_error"].as_str().unwrap_or_default();
    eprintln!("last_error: {error}");
    assert!(
        error.contains("drover-web.service failed: exit-code, status=217/USER")
            && error.contains("the user in [service] user does not exist on this host"),
        "the rollback names systemd's cause: {shown:#}"
    );
    assert!(!error.contains("job Failed"), "{error}");
    let events = web_events(&shown);
    assert!(
        events
            .iter()
            .any(|event| event.starts_with("2 is unhealthy") && event.contains("status=217/USER")),
        "the unhealthy event names the cause: {events:#?}"
    );
    assert!(
        warnings(&host).contains("status=217/USER"),
        "journalctl -p warning shows the unhealthy release and the rollback"
    );
    host.wait_serving(port, "1", CONVERGE).expect("1 serves again");
    let mut rollout = serde_json::Value::Null;
    host.host
        .wait_until(
            "rollout status to name the failed host",
            CONVERGE,
            Duration::from_millis(300),
            || {
                rollout = coordinator
                    .drover_ok(&["rollout", "status", "web", "-o", "json"])
                    .ok()
                    .and_then(|text| serde_json::from_str(&text).ok())
                    .unwrap_or_default();
                rollout["failed_hosts"]
                    .as_array()
                    .is_some_and(|failed| !failed.is_empty())
            },
        )
        .unwrap_or_else(|error| {
            panic!(
                "{error}
last rollout status: {rollout:#}"
            )
        });
    let failed = &rollout["failed_hosts"][0];
    assert_eq!(failed["host"], host.id.as_str(), "{rollout:#}");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|error| error.contains("status=217/USER")),
        "rollout status names the cause: {rollout:#}"
    );
    let table = coordinator
        .drover_ok(&["rollout", "status", "web"])
        .expect("rollout status");
    assert!(
        table
            .lines()
            .any(|line| line.starts_with(&host.id) && line.contains("status=217/USER")),
        "{table}"
    );
}

#[test]
fn a_unit_failing_with_203_exec_shows_the_status_in_hosts_show() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    // An executable whose interpreter does not exist: it passes any check that the
    // program is in the tarball and executable, and execve fails with ENOENT (203/EXEC).
    releases.tarball("1", 0).expect("tree");
    let tree = releases.path().join("tree-1");
    std::fs::write(tree.join("bin/start"), "#!/nonexistent/interpreter\n").expect("program");
    std::fs::set_permissions(
        tree.join("bin/start"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let tarball = releases.path().join("bad-interpreter.tar.gz");
    run_ok(
        std::process::Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(&tree)
            .arg("."),
    )
    .expect("tar");
    create(
        &coordinator,
        "1",
        &spec(&releases, "web-1", "bin/start", port, None),
        &tarball,
    );
    let host = AgentHost::start("e2e-203", &coordinator, &HostOptions::default()).expect("agent host");
    coordinator.drover_ok(&["pin", "web", "1"]).expect("pin");
    // Nothing ran before it: failed (the unit stopped), with systemd's cause.
    let shown = coordinator.wait_reported(&host, "web 1 to fail", CONVERGE, |shown| {
        shown["apps"]["web"]["state"] == "failed"
    });
    let error = shown["apps"]["web"]["last_error"].as_str().unwrap_or_default();
    eprintln!("last_error: {error}");
    assert!(
        error.contains("drover-web.service failed: exit-code, status=203/EXEC")
            && error.contains("#! interpreter does not exist"),
        "the failure names systemd's cause: {shown:#}"
    );
    let events = web_events(&shown);
    assert!(
        events.iter().any(|event| event.contains("status=203/EXEC")),
        "an event names the cause: {events:#?}"
    );
    assert!(
        warnings(&host).contains("status=203/EXEC"),
        "journalctl -p warning shows it"
    );
}

/// `drover_http_request_errors_total` of the coordinator: on a one-host fleet after its
/// removal, that host's refused requests.
fn refused_requests(coordinator: &CoordinatorProcess) -> u64 {
    let text = run_ok(
        std::process::Command::new("curl")
            .args(["-sf", "--max-time", "10", "--cacert"])
            .arg(coordinator.data_dir.join("ca.pem"))
            .arg(format!("{}/metrics", coordinator.url())),
    )
    .expect("metrics");
    text.lines()
        .find_map(|line| line.strip_prefix("drover_http_request_errors_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no drover_http_request_errors_total in {text}"))
}

#[test]
fn a_removed_hosts_agent_backs_off_says_so_and_keeps_its_apps() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    coordinator
        .sample_release(&releases, "1", port, Behaviour::Good, 0)
        .expect("release");
    let host = AgentHost::start("e2e-removed", &coordinator, &HostOptions::default()).expect("agent host");
    coordinator.drover_ok(&["pin", "web", "1"]).expect("pin");
    host.wait_healthy("web", "1", CONVERGE).expect("v1 healthy");
    let app_started = host.app_started("web");
    let agent_pid = host.agent_pid().expect("agent pid");

    coordinator
        .drover_ok(&["hosts", "remove", &host.id])
        .expect("hosts remove");
    let mut status = serde_json::Value::Null;
    host.host
        .wait_until(
            "drover-agent status to say the host was removed",
            Duration::from_secs(60),
            Duration::from_millis(300),
            || {
                status = host.status().unwrap_or_default();
                status["refused"]["code"] == "host_removed"
            },
        )
        .unwrap_or_else(|error| panic!("{error}\nlast status: {status:#}"));
    let rejoin = format!("drover token create --replace {}", host.id);
    assert!(
        status["refused"]["rejoin"]
            .as_str()
            .is_some_and(|text| text.contains(&rejoin) && text.contains("drover-agent join --force")),
        "{status:#}"
    );
    let text = host.host.check(&["drover-agent", "status"]).expect("status");
    assert!(
        text.contains("REMOVED") && text.contains(&rejoin) && text.contains("apps keep running"),
        "{text}"
    );

    // The request rate drops: before, polls backed off to a minute and reports came every
    // heartbeat (5 s here), about 15 refused requests a minute; now one every 4-6 minutes.
    let before = refused_requests(&coordinator);
    let window = Duration::from_secs(45);
    std::thread::sleep(window);
    let refused = refused_requests(&coordinator) - before;
    eprintln!("{refused} refused requests from the removed host in {window:?}");
    assert!(
        refused <= 2,
        "a removed host's agent asks rarely: {refused} refused requests in {window:?}"
    );
    let errors = host
        .host
        .check(&[
            "journalctl",
            "-u",
            "drover-agent.service",
            "-p",
            "err",
            "--no-pager",
            "-o",
            "cat",
        ])
        .expect("journal");
    assert_eq!(
        errors.lines().filter(|line| line.contains(&rejoin)).count(),
        1,
        "said once at ERROR, with the command to come back:\n{errors}"
    );

    // Its apps keep running, untouched.
    assert_eq!(host.host.unit_state("drover-web.service"), "active");
    assert_eq!(host.app_started("web"), app_started, "the app was not restarted");
    assert_eq!(
        AgentHost::get(port, "/").as_deref(),
        Some("drover-sample-app 1"),
        "the app still serves"
    );
    assert_eq!(host.agent_pid(), Some(agent_pid), "the agent kept running");

    // Back with a replace token: join --force restarts the running agent, which uses the
    // new identity at once; the app is not restarted.
    let join = coordinator
        .drover_ok(&["token", "create", "--replace", &host.id])
        .expect("replace token");
    let words: Vec<&str> = join.split_whitespace().collect();
    let at = words.iter().position(|word| *word == "join").expect("join line");
    let mut argv = vec!["drover-agent"];
    argv.extend(&words[at..]);
    if !argv.contains(&"--force") {
        argv.push("--force");
    }
    argv.extend(["--host-id", &host.id]);
    let output = host.host.check(&argv).expect("join --force");
    assert!(
        output.contains("restarted drover-agent.service"),
        "join --force says it restarted the running agent: {output}"
    );
    assert_ne!(host.agent_pid(), Some(agent_pid), "a new agent process");
    assert!(host.status().expect("status")["refused"].is_null());
    let last_seen = coordinator.host_json(&host.id).expect("hosts show")["last_seen"].clone();
    coordinator.wait_reported(&host, "the re-joined host to report", CONVERGE, |shown| {
        shown["last_seen"] != last_seen && shown["apps"]["web"]["state"] == "healthy"
    });
    assert_eq!(
        host.app_started("web"),
        app_started,
        "the re-join did not restart the app"
    );
}
