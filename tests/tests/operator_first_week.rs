//! What a new operator meets in the first week (issue 14): a join line that cannot work
//! from another host is refused instead of printed, `drover status` keeps showing apps
//! after the last host is gone, and `drover pins` answers "what is web pinned to, and who
//! did that?". Each test runs a real `drover serve` (a child process with its own data
//! directory) and the real `drover` binary; hosts join as simulated agents over mTLS.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use drover_protocol::report::{AppReport, AppState};

use drover_tests::e2e::CoordinatorProcess;
use drover_tests::fleet::{Admin, Agent};
use drover_tests::{binary, block_on};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `drover ARGS` and asserts success; returns stdout.
fn drover_ok(coordinator: &CoordinatorProcess, args: &[&str]) -> String {
    coordinator.drover_ok(args).unwrap_or_else(|error| panic!("{error:#}"))
}

/// Runs `drover ARGS` with environment `env` (e.g. DROVER_TOKEN) and asserts success.
fn drover_env(coordinator: &CoordinatorProcess, env: &[(&str, &str)], args: &[&str]) -> String {
    let mut command = Command::new(binary("drover"));
    command
        .args(args)
        .env("DROVER_DATA_DIR", &coordinator.data_dir)
        .env_remove("DROVER_TOKEN")
        .env_remove("DROVER_ADDR")
        .env_remove("DROVER_CA");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("running drover");
    assert!(output.status.success(), "drover {args:?}: {}", stderr(&output));
    stdout(&output)
}

/// Runs `drover ARGS` as the admin token `token` and asserts success.
fn drover_as(coordinator: &CoordinatorProcess, token: &str, args: &[&str]) -> String {
    drover_env(coordinator, &[("DROVER_TOKEN", token)], args)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

/// The admin API of a coordinator process, from its data directory.
fn admin(coordinator: &CoordinatorProcess) -> Admin {
    let url = std::fs::read_to_string(coordinator.data_dir.join("address")).expect("address file");
    Admin::from_data_dir(&coordinator.data_dir, url.trim())
}

/// Joins `host` with a fresh token (the admin API, not the CLI, so that the loopback
/// refusal does not get in the way of tests about something else).
fn join(coordinator: &CoordinatorProcess, host: &str, labels: &[(&str, &str)]) -> Agent {
    let admin = admin(coordinator);
    block_on(async {
        let token = admin.token(labels, None).await;
        Agent::join(&admin.url, &admin.ca_pem, &token.token, host)
            .await
            .expect("join")
    })
}

// --- the loopback trap ------------------------------------------------------------------

#[test]
fn token_create_refuses_a_loopback_public_url_when_listening_elsewhere() {
    // The packaged default: listen on every address, no --public-url (so 127.0.0.1).
    let coordinator = CoordinatorProcess::start_on(Ipv4Addr::UNSPECIFIED).expect("drover serve");
    let output = coordinator.drover(&["token", "create"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(stdout(&output).is_empty(), "no join line: {}", stdout(&output));
    let message = stderr(&output);
    for needed in [
        "https://127.0.0.1:",
        "--public-url",
        "DROVER_SERVE_ARGS",
        "/etc/default/drover-coordinator",
        "/etc/sysconfig/drover-coordinator",
        "--allow-loopback",
    ] {
        assert!(message.contains(needed), "{needed:?} missing from: {message}");
    }
    // `drover serve` said the same at start.
    let log = coordinator.log_text();
    assert!(
        log.contains("WARN")
            && log.contains("is a loopback address")
            && log.contains("/etc/default/drover-coordinator"),
        "{log}"
    );
    // Other clients of the API get the same refusal: the check is the coordinator's.
    let admin = admin(&coordinator);
    let (status, body) = block_on(admin.call(
        reqwest::Method::POST,
        "/v1/admin/tokens",
        Some(serde_json::json!({"ttl": "1h"})),
    ));
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(json(&body)["code"], "loopback_public_url", "{body}");
}

#[test]
fn token_create_refuses_a_loopback_public_url_when_listening_elsewhere_unless_allow_loopback() {
    let coordinator = CoordinatorProcess::start_on(Ipv4Addr::UNSPECIFIED).expect("drover serve");
    let line = drover_ok(&coordinator, &["token", "create", "--allow-loopback"]);
    assert!(
        line.starts_with(&format!(
            "drover-agent join https://127.0.0.1:{} --token=",
            coordinator.port
        )),
        "{line}"
    );
    // The token works (on this machine, where 127.0.0.1 is the coordinator).
    let token = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("--token="))
        .expect("token in the join line");
    let admin = admin(&coordinator);
    block_on(Agent::join(&admin.url, &admin.ca_pem, token, "web-01")).expect("join with the token");
}

#[test]
fn a_loopback_only_coordinator_prints_its_join_line() {
    // Listening on 127.0.0.1 only (a laptop, the tests): nothing to warn about.
    let coordinator = CoordinatorProcess::start().expect("drover serve");
    let line = drover_ok(&coordinator, &["token", "create"]);
    assert!(
        line.starts_with(&format!("drover-agent join {} --token=", coordinator.url())),
        "{line}"
    );
    assert!(
        !coordinator.log_text().contains("loopback"),
        "{}",
        coordinator.log_text()
    );
    // An explicit non-loopback public URL while listening everywhere: no trap either.
    let coordinator = CoordinatorProcess::start_with(
        Ipv4Addr::UNSPECIFIED,
        &["--public-url", "https://deploy.example.com:8443"],
    )
    .expect("drover serve");
    // The CLI reaches it on this machine; hosts would use the public URL.
    let here = format!("https://127.0.0.1:{}", coordinator.port);
    let line = drover_env(&coordinator, &[("DROVER_ADDR", &here)], &["token", "create"]);
    assert!(
        line.starts_with("drover-agent join https://deploy.example.com:8443 --token="),
        "{line}"
    );
}

// --- status and pins ----------------------------------------------------------------------

/// Releases web 1.0.0 and 2.0.0 and api 0.1.0 (no pins) through the admin API.
fn releases(coordinator: &CoordinatorProcess) {
    let admin = admin(coordinator);
    block_on(async {
        admin.release("web", "1.0.0", b"web one".to_vec()).await;
        admin.release("web", "2.0.0", b"web two".to_vec()).await;
        admin.release("api", "0.1.0", b"api".to_vec()).await;
    });
}

#[test]
fn status_after_removing_the_last_host_still_lists_apps_with_releases_and_pins() {
    let coordinator = CoordinatorProcess::start().expect("drover serve");
    join(&coordinator, "web-01", &[("env", "prod")]);
    releases(&coordinator);
    drover_ok(&coordinator, &["groups", "create", "eu", "--selector", "env=prod"]);
    drover_ok(&coordinator, &["pin", "web", "1.0.0"]);
    drover_ok(&coordinator, &["pin", "web", "2.0.0", "--group", "eu"]);
    drover_ok(&coordinator, &["pin", "web", "2.0.0", "--host", "web-01"]);
    drover_ok(&coordinator, &["hosts", "remove", "web-01"]);

    let status = json(&drover_ok(&coordinator, &["status", "-o", "json"]));
    assert_eq!(status["hosts"], 0, "{status:#}");
    let web = &status["apps"]["web"];
    assert_eq!(web["desired_hosts"], 0, "{status:#}");
    assert_eq!(web["releases"], 2, "{status:#}");
    assert_eq!(web["fleet_pin"], "1.0.0", "{status:#}");
    assert_eq!(web["group_pins"]["eu"], "2.0.0", "{status:#}");
    // The removed host's pin stays (it comes back with the id), so it is counted.
    assert_eq!(web["host_pins"]["2.0.0"], 1, "{status:#}");
    assert_eq!(status["apps"]["api"]["releases"], 1, "{status:#}");

    let table = drover_ok(&coordinator, &["status"]);
    assert!(!table.contains("No apps yet"), "{table}");
    let row = |app: &str| {
        table
            .lines()
            .find(|line| line.starts_with(&format!("{app} ")))
            .unwrap_or_else(|| panic!("no {app} row in:\n{table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("web"),
        [
            "web",
            "0",
            "-",
            "-",
            "fleet=1.0.0",
            "group:eu=2.0.0",
            "hosts=2.0.0:1",
            "2"
        ],
        "{table}"
    );
    assert_eq!(row("api"), ["api", "0", "-", "-", "-", "1"], "{table}");
}

#[test]
fn drover_pins_lists_fleet_group_and_host_pins_and_holds_with_who() {
    let coordinator = CoordinatorProcess::start().expect("drover serve");
    join(&coordinator, "web-01", &[("env", "prod")]);
    join(&coordinator, "web-02", &[("env", "prod")]);
    releases(&coordinator);
    drover_ok(&coordinator, &["groups", "create", "eu", "--selector", "env=prod"]);
    let alice = json(&drover_ok(
        &coordinator,
        &["admin-token", "create", "alice", "-o", "json"],
    ));
    let alice = alice["token"].as_str().expect("alice's secret");

    assert_eq!(
        drover_ok(&coordinator, &["pins"]),
        "No pins. Pin a release: drover pin APP VERSION\n"
    );
    drover_ok(&coordinator, &["pin", "web", "1.0.0", "--reason", "first release"]);
    drover_as(&coordinator, alice, &["pin", "web", "2.0.0", "--group", "eu"]);
    drover_as(
        &coordinator,
        alice,
        &[
            "pin",
            "web",
            "1.0.0",
            "--host",
            "web-02",
            "--reason",
            "2.0.0 leaks there",
        ],
    );
    drover_ok(&coordinator, &["pin", "api", "0.1.0"]);
    drover_as(
        &coordinator,
        alice,
        &["hold", "--host", "web-01", "--reason", "incident 4711"],
    );

    let list = json(&drover_ok(&coordinator, &["pins", "web", "-o", "json"]));
    let pins = list["pins"].as_array().expect("pins");
    let summary: Vec<(String, String, String, String, String)> = pins
        .iter()
        .map(|pin| {
            let scope = match pin["scope"]["name"].as_str() {
                Some(name) => format!("{} {name}", pin["scope"]["kind"].as_str().expect("kind")),
                None => pin["scope"]["kind"].as_str().expect("kind").to_owned(),
            };
            (
                pin["app"].as_str().expect("app").to_owned(),
                scope,
                pin["version"].as_str().expect("version").to_owned(),
                pin["set_by"].as_str().expect("set_by").to_owned(),
                pin["reason"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    let expected = [
        ("web", "fleet", "1.0.0", "admin", "first release"),
        ("web", "group eu", "2.0.0", "alice", "-"),
        ("web", "host web-02", "1.0.0", "alice", "2.0.0 leaks there"),
    ]
    .map(|(app, scope, version, who, why)| (app.into(), scope.into(), version.into(), who.into(), why.into()));
    assert_eq!(summary, expected, "{list:#}");
    assert!(pins.iter().all(|pin| pin["set_at"].is_string()), "{list:#}");
    assert!(pins.iter().all(|pin| pin["rollout"].is_null()), "{list:#}");
    let holds = list["holds"].as_array().expect("holds");
    assert_eq!(holds.len(), 1, "{list:#}");
    assert_eq!(holds[0]["scope"], serde_json::json!({"kind": "host", "name": "web-01"}));
    assert_eq!(holds[0]["set_by"], "alice");
    assert_eq!(holds[0]["reason"], "incident 4711");

    // All apps, as a table: pins first, then the holds.
    let table = drover_ok(&coordinator, &["pins"]);
    let lines: Vec<Vec<&str>> = table.lines().map(|line| line.split_whitespace().collect()).collect();
    assert_eq!(
        lines[0],
        ["APP", "SCOPE", "VERSION", "SET", "BY", "WHEN", "ROLLOUT", "REASON"],
        "{table}"
    );
    assert_eq!(lines[1][..3], ["api", "fleet", "0.1.0"], "{table}");
    assert_eq!(lines[2][..4], ["web", "fleet", "1.0.0", "admin"], "{table}");
    assert!(table.contains("first release"), "{table}");
    assert_eq!(lines[3][..5], ["web", "group", "eu", "2.0.0", "alice"], "{table}");
    assert_eq!(lines[4][..5], ["web", "host", "web-02", "1.0.0", "alice"], "{table}");
    assert!(lines[5].is_empty(), "{table}");
    assert_eq!(lines[6], ["HELD", "SET", "BY", "WHEN", "REASON"], "{table}");
    assert_eq!(lines[7][..3], ["host", "web-01", "alice"], "{table}");
    assert!(table.contains("incident 4711"), "{table}");

    // Unpinned and unheld: gone from the list; the who is the latest change's.
    drover_ok(&coordinator, &["unpin", "web", "--host", "web-02"]);
    drover_ok(&coordinator, &["unhold", "--host", "web-01"]);
    drover_ok(&coordinator, &["pin", "web", "2.0.0", "--reason", "all on 2"]);
    let list = json(&drover_ok(&coordinator, &["pins", "web", "-o", "json"]));
    assert_eq!(list["pins"].as_array().map(Vec::len), Some(2), "{list:#}");
    assert_eq!(list["pins"][0]["version"], "2.0.0", "{list:#}");
    assert_eq!(list["pins"][0]["set_by"], "admin", "{list:#}");
    assert_eq!(list["pins"][0]["reason"], "all on 2", "{list:#}");
    assert_eq!(list["holds"], serde_json::json!([]), "{list:#}");
    assert_eq!(
        drover_ok(&coordinator, &["pins", "nothing"]),
        "No pins for nothing. Pin a release: drover pin APP VERSION\n"
    );
}

/// `drover pins web -o json`'s host pins: host id to (version, set_by, rollout).
fn host_pins(coordinator: &CoordinatorProcess) -> BTreeMap<String, (String, String, String)> {
    let list = json(&drover_ok(coordinator, &["pins", "web", "-o", "json"]));
    list["pins"]
        .as_array()
        .expect("pins")
        .iter()
        .filter(|pin| pin["scope"]["kind"] == "host")
        .map(|pin| {
            let text = |value: &serde_json::Value| value.as_str().unwrap_or("-").to_owned();
            (
                text(&pin["scope"]["name"]),
                (text(&pin["version"]), text(&pin["set_by"]), text(&pin["rollout"])),
            )
        })
        .collect()
}

#[test]
fn drover_pins_names_the_rollout_that_set_a_pin() {
    let coordinator = CoordinatorProcess::start().expect("drover serve");
    let agents = [join(&coordinator, "web-01", &[]), join(&coordinator, "web-02", &[])];
    releases(&coordinator);
    drover_ok(&coordinator, &["pin", "web", "1.0.0", "--reason", "first"]);
    drover_ok(
        &coordinator,
        &[
            "rollout",
            "start",
            "web",
            "2.0.0",
            "--stages",
            "100%",
            "--max-in-flight",
            "1",
            "--reason",
            "fixes #812",
        ],
    );
    let status = json(&drover_ok(&coordinator, &["rollout", "status", "web", "-o", "json"]));
    let rollout = status["rollout"].as_str().expect("rollout id").to_owned();
    // The first host is pinned at once, by the operator who started the rollout, with
    // the rollout's reason.
    let list = json(&drover_ok(&coordinator, &["pins", "web", "-o", "json"]));
    let pins = list["pins"].as_array().expect("pins");
    assert_eq!(pins.len(), 2, "{list:#}");
    assert_eq!(
        (&pins[0]["scope"]["kind"], &pins[0]["reason"], &pins[0]["rollout"]),
        (
            &serde_json::json!("fleet"),
            &serde_json::json!("first"),
            &serde_json::Value::Null
        ),
        "{list:#}"
    );
    assert_eq!(pins[1]["reason"], "fixes #812", "{list:#}");
    let first = host_pins(&coordinator);
    let (first_host, pin) = first.iter().next().expect("one host pinned");
    assert_eq!(pin, &("2.0.0".to_owned(), "admin".to_owned(), rollout.clone()));

    // It reports healthy on 2.0.0: the controller pins the next host by itself.
    let agent = agents
        .iter()
        .find(|agent| agent.host.as_str() == first_host)
        .expect("agent");
    let healthy = AppReport {
        current: Some("2.0.0".parse().expect("version")),
        desired: Some("2.0.0".parse().expect("version")),
        state: AppState::Healthy,
        health: None,
        last_error: None,
        bad_versions: Vec::new(),
    };
    let (status, body) = block_on(agent.report(&agent.app_report(None, &"web".parse().expect("app"), healthy)));
    assert!(status.is_success(), "{status} {body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let both = loop {
        let pins = host_pins(&coordinator);
        if pins.len() == 2 || Instant::now() > deadline {
            break pins;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let second = both
        .iter()
        .find(|(host, _)| *host != first_host)
        .unwrap_or_else(|| panic!("the second host was not pinned: {both:?}"))
        .1;
    assert_eq!(second, &("2.0.0".to_owned(), "controller".to_owned(), rollout));
}

// --- what ships -----------------------------------------------------------------------

/// Starts `drover serve` on 127.0.0.1 with `env`, waits until it logs that it listens,
/// stops it and returns its log.
fn serve_log(env: &[(&str, &str)]) -> String {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let log_path = scratch.path().join("serve.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut command = Command::new(binary("drover"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(scratch.path().join("data"))
        .env_remove("JOURNAL_STREAM")
        .env_remove("DROVER_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log);
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("drover serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("listening") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("listening"), "drover serve did not start:\n{text}");
    text
}

#[test]
fn drover_serve_under_systemd_leaves_the_timestamp_to_the_journal() {
    let starts_with_a_timestamp = |line: &str| line.starts_with("20") && line.get(10..11) == Some("T");
    // Under systemd (JOURNAL_STREAM set): journald stamps each line, tracing does not.
    let journal = serve_log(&[("JOURNAL_STREAM", "8:12345")]);
    assert!(journal.lines().all(|line| !starts_with_a_timestamp(line)), "{journal}");
    assert!(
        journal.lines().any(|line| line.trim_start().starts_with("INFO")),
        "{journal}"
    );
    // In a terminal or a file of its own, the lines keep theirs.
    let plain = serve_log(&[]);
    assert!(plain.lines().all(starts_with_a_timestamp), "{plain}");
}
