//! The agent's reconciler and poller on real systemd hosts, against a real `drover serve`:
//! the regressions of issue 12 that only show with the real parts. An agent restarted
//! during a health check keeps the original deadline; a pin made right after a
//! coordinator outage arrives at once; a release that cannot install is retried with a
//! growing back-off (one event), and removed when unpinned although it never installed;
//! a release that never ran is `failed` with its reason, not `rolled_back`; one app's
//! health grace does not hold up another app's pin.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use drover_tests::e2e::{AgentHost, CoordinatorProcess, Releases, free_port};
use drover_tests::hosts::HostOptions;

const CONVERGE: Duration = Duration::from_secs(90);

/// How a release's spec is written.
#[derive(Clone, Copy, Debug)]
struct Spec<'a> {
    port: u16,
    /// `FAIL` for the sample app: `health` answers 500.
    fail: Option<&'a str>,
    grace: &'a str,
    /// A `pre_start` shell line.
    pre_start: &'a str,
}

impl Spec<'_> {
    fn good(port: u16) -> Spec<'static> {
        Spec {
            port,
            fail: None,
            grace: "8s",
            pre_start: "true",
        }
    }

    fn write(&self, releases: &Releases, name: &str) -> PathBuf {
        let fail = self.fail.map(|fail| format!("FAIL = \"{fail}\"\n")).unwrap_or_default();
        let text = format!(
            r#"keep_releases = 3

[service]
command = ["bin/drover-sample-app", "--listen", "127.0.0.1:{port}"]
restart = "on-failure"

[service.environment]
{fail}
[health]
grace_period = "{grace}"
interval = "500ms"
successes = 2

[[health.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/healthz"
timeout = "1s"

[hooks.pre_start]
command = ["sh", "-c", "{pre_start}"]
timeout = "10s"
"#,
            port = self.port,
            grace = self.grace,
            pre_start = self.pre_start,
        );
        let path = releases.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("spec");
        path
    }
}

/// `drover release create APP VERSION` of the sample app with `spec`.
fn create(coordinator: &CoordinatorProcess, releases: &Releases, app: &str, version: &str, spec: Spec<'_>) {
    let tarball = releases.tarball(&format!("{app}-{version}"), 0).expect("tarball");
    // The sample app serves the VERSION file: make it the plain version.
    let tree = releases.path().join(format!("tree-{app}-{version}"));
    std::fs::write(tree.join("VERSION"), version).expect("VERSION");
    drover_tests::e2e::run_ok(
        std::process::Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(&tree)
            .arg("."),
    )
    .expect("tar");
    create_from(
        coordinator,
        app,
        version,
        &spec.write(releases, &format!("{app}-{version}")),
        &tarball,
    );
}

/// A tar.gz with the sample app's program (executable) and then a fifo, which the agent
/// does not unpack.
fn program_then_fifo() -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let mut program = tar::Header::new_gnu();
    program.set_mode(0o755);
    program.set_size(10);
    builder
        .append_data(&mut program, "bin/drover-sample-app", &b"#!/bin/sh\n"[..])
        .expect("program");
    let mut fifo = tar::Header::new_gnu();
    fifo.set_entry_type(tar::EntryType::Fifo);
    fifo.set_mode(0o644);
    fifo.set_size(0);
    builder.append_data(&mut fifo, "pipe", std::io::empty()).expect("fifo");
    builder.into_inner().expect("tar").finish().expect("gzip")
}

fn create_from(
    coordinator: &CoordinatorProcess,
    app: &str,
    version: &str,
    spec: &std::path::Path,
    artifact: &std::path::Path,
) {
    coordinator
        .drover_ok(&[
            "release",
            "create",
            app,
            version,
            "--spec",
            spec.to_str().expect("spec path"),
            "--artifact",
            artifact.to_str().expect("artifact path"),
        ])
        .expect("release create");
}

fn pin(coordinator: &CoordinatorProcess, app: &str, version: &str) {
    coordinator.drover_ok(&["pin", app, version]).expect("pin");
}

/// The agent's journal record of `app` (`app.json`), or null.
fn record(host: &AgentHost, app: &str) -> serde_json::Value {
    host.host
        .read_file(&format!("/var/lib/drover/apps/{app}/app.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// kill -9 of the agent, then a start (as systemd's restart after a crash would).
fn crash_and_restart_agent(host: &AgentHost) {
    let pid = host.agent_pid().expect("agent pid");
    host.host.kill9(pid).expect("kill -9");
    host.host
        .check_sh("systemctl reset-failed drover-agent.service; systemctl restart drover-agent.service")
        .expect("start agent");
}

#[test]
fn agent_restarts_during_the_grace_never_extend_it_on_a_real_host() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    let grace = Duration::from_secs(30);
    create(&coordinator, &releases, "web", "1", Spec::good(port));
    let bad = Spec {
        fail: Some("health"),
        grace: "30s",
        ..Spec::good(port)
    };
    create(&coordinator, &releases, "web", "2", bad);
    let host = AgentHost::start("e2e-grace", &coordinator, &HostOptions::default()).expect("agent host");
    pin(&coordinator, "web", "1");
    host.wait_healthy("web", "1", CONVERGE).expect("v1 healthy");

    pin(&coordinator, "web", "2");
    // 2 serves: it was restarted, and its grace period counts from then (or a bit before).
    host.host
        .wait_until("web 2 to serve", CONVERGE, Duration::from_millis(50), || {
            AgentHost::get(port, "/").as_deref() == Some("drover-sample-app 2")
        })
        .expect("web 2 serves");
    let restarted = Instant::now();
    let started = host.app_started("web");
    // Two agent crashes during the grace, as a crash loop or an OOM kill would do.
    for at in [Duration::from_secs(5), Duration::from_secs(12)] {
        std::thread::sleep(at.saturating_sub(restarted.elapsed()));
        crash_and_restart_agent(&host);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        host.app_started("web"),
        started,
        "a resumed switch does not restart the app again"
    );
    host.host
        .wait_until("web 1 to serve again", CONVERGE, Duration::from_millis(100), || {
            AgentHost::get(port, "/").as_deref() == Some("drover-sample-app 1")
        })
        .expect("rolled back");
    let rolled_back_after = restarted.elapsed();
    eprintln!("web 1 serves again {rolled_back_after:?} after web 2's restart (grace {grace:?}, two agent crashes)");
    // The deadline is restart + 30 s; the rollback itself restarts 1 (a second or two).
    assert!(
        rolled_back_after <= grace + Duration::from_secs(6),
        "the bad release was live {rolled_back_after:?} after its restart; the grace period is {grace:?} and agent restarts must not extend it"
    );
    let entry = host.wait_state("web", "rolled_back", CONVERGE).expect("rolled_back");
    let error = entry["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("grace period"), "a rollback says why: {entry:#}");
}

#[test]
fn a_pin_right_after_a_coordinator_outage_arrives_at_once_on_a_real_host() {
    let mut coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    create(&coordinator, &releases, "web", "1", Spec::good(port));
    create(&coordinator, &releases, "web", "2", Spec::good(port));
    let host = AgentHost::start("e2e-recover", &coordinator, &HostOptions::default()).expect("agent host");
    pin(&coordinator, "web", "1");
    host.wait_healthy("web", "1", CONVERGE).expect("v1 healthy");

    let last_seen = coordinator.host_json(&host.id).expect("hosts show")["last_seen"].clone();
    coordinator.stop();
    // Long enough for the poll back-off to grow to 16-60 s.
    std::thread::sleep(Duration::from_secs(70));
    let journal = host.host.journal_lines(Some("drover-agent.service"), 300);
    let delays: Vec<f64> = journal
        .lines()
        .filter_map(|line| line.split("retrying in ").nth(1))
        .filter_map(|rest| rest.trim_end().trim_end_matches('s').parse().ok())
        .collect();
    let largest = delays.iter().copied().fold(0.0, f64::max);
    assert!(largest >= 15.0, "the poller backs off: {delays:?}");

    coordinator.resume().expect("coordinator back");
    // The coordinator hears from the host (its reports come every few seconds) ...
    host.host
        .wait_until(
            "the host to reach the coordinator again",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                // A restarted coordinator shows no last_seen until the host's first request
                // (null, which also differs from before the outage): wait for a time.
                coordinator
                    .host_json(&host.id)
                    .is_ok_and(|shown| shown["last_seen"].is_string() && shown["last_seen"] != last_seen)
            },
        )
        .expect("host back");
    // ... and a pin made now reaches the host at once, not after the rest of a back-off.
    // Measured on the agent's side: from the moment the pin was committed and published
    // (the pin command has returned) to the agent's journal line for accepting the new
    // manifest (the host shares this machine's clock). Neither the time it takes to look
    // at the host from outside nor the CLI's own start, TLS handshake and commit (3 s on a
    // loaded CI machine, none of it the agent's) is in it; a poller still sleeping out its
    // back-off (16-60 s here) is.
    let before_pin = std::time::SystemTime::now();
    pin(&coordinator, "web", "2");
    let published = std::time::SystemTime::now();
    host.wait_status("web", "web 2 to be desired", CONVERGE, |entry| entry["desired"] == "2")
        .expect("pin arrived");
    let accepted_at = accepted_manifest_times(&host)
        .into_iter()
        .find(|at| *at >= before_pin)
        .expect("the agent's journal says when it accepted the pin's manifest");
    // Accepted before the command returned (the answer was still on its way): at once.
    let arrived = accepted_at.duration_since(published).unwrap_or_default();
    let pin_command = published.duration_since(before_pin).unwrap_or_default();
    eprintln!(
        "the pin reached the agent {arrived:?} after it was published (the pin command took {pin_command:?}; poll delays during the outage: {delays:?})"
    );
    assert!(
        arrived <= Duration::from_secs(2),
        "the pin took {arrived:?} to reach the agent after the coordinator was back (poll delays before: {delays:?})"
    );
    host.wait_healthy("web", "2", CONVERGE).expect("v2 healthy");
}

#[test]
fn a_release_that_cannot_install_backs_off_reports_once_and_is_removed_when_unpinned_on_a_real_host() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    create(&coordinator, &releases, "web", "1", Spec::good(port));
    // The program, then a fifo: the coordinator's program check passes, the agent refuses
    // the archive at unpacking, every time.
    let refused = releases.path().join("refused.tar.gz");
    std::fs::write(&refused, program_then_fifo()).expect("artifact");
    create_from(
        &coordinator,
        "api",
        "1",
        &Spec::good(free_port()).write(&releases, "api-1"),
        &refused,
    );
    let host = AgentHost::start("e2e-refused", &coordinator, &HostOptions::default()).expect("agent host");
    pin(&coordinator, "web", "1");
    host.wait_healthy("web", "1", CONVERGE).expect("web healthy");

    pin(&coordinator, "api", "1");
    let pinned = Instant::now();
    let entry = host.wait_state("api", "failed", CONVERGE).expect("api failed");
    assert!(
        entry["last_error"].as_str().is_some_and(|error| !error.is_empty()),
        "failed says why: {entry:#}"
    );
    // 5, 10, 20 s between attempts: within 40 s, four attempts, not one every few seconds,
    // and one event.
    std::thread::sleep(Duration::from_secs(40).saturating_sub(pinned.elapsed()));
    let shown = coordinator.host_json(&host.id).expect("hosts show");
    let failures = shown["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|event| {
            event["app"] == "api" && event["message"].as_str().is_some_and(|text| text.starts_with("failed"))
        })
        .count();
    assert_eq!(failures, 1, "the failure is one event, not one per retry: {shown:#}");
    // Every attempt is logged, once reported or not.
    let journal = host.host.journal_lines(Some("drover-agent.service"), 1000);
    let tries = journal
        .lines()
        .filter(|line| line.contains("app=api") && (line.contains("failed: ") || line.contains("failed again: ")))
        .count();
    assert!(
        (2..=5).contains(&tries),
        "a failed install is retried with a growing back-off: {tries} attempts logged in 40 s"
    );
    let attempts = record(&host, "api")["failure"]["attempts"].as_u64().unwrap_or(0);
    eprintln!("{attempts} install attempts of api 1 in 40 s ({tries} logged)");
    assert!(
        (2..=4).contains(&attempts),
        "a failed install is retried with a growing back-off: {attempts} attempts in 40 s"
    );

    // A restarted agent keeps the back-off it journaled instead of retrying at once.
    let record_before = record(&host, "api")["failure"].clone();
    let retry_at = record_before["retry_at"].clone();
    crash_and_restart_agent(&host);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        record(&host, "api")["failure"]["retry_at"],
        retry_at,
        "no attempt right after a restart: {record_before:#}"
    );

    // Unpinned: the app goes from the host's report, the fleet's status and the disk,
    // although it never installed.
    coordinator.drover_ok(&["unpin", "api"]).expect("unpin");
    host.host
        .wait_until(
            "api to be gone from the agent, the coordinator and the disk",
            Duration::from_secs(30),
            Duration::from_millis(300),
            || {
                host.app_status("api").is_none()
                    && !host.host.path("/var/lib/drover/apps/api").exists()
                    && coordinator
                        .host_json(&host.id)
                        .is_ok_and(|shown| shown["apps"].get("api").is_none())
            },
        )
        .unwrap_or_else(|error| {
            panic!(
                "{error}\nagent: {:#}\ncoordinator: {:#}",
                host.status().unwrap_or_default(),
                coordinator.host_json(&host.id).unwrap_or_default()
            )
        });
    assert_eq!(
        AgentHost::get(port, "/").as_deref(),
        Some("drover-sample-app 1"),
        "the other app is untouched"
    );
}

#[test]
fn a_release_whose_pre_start_fails_is_failed_not_rolled_back_on_a_real_host() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    create(&coordinator, &releases, "web", "1", Spec::good(port));
    let broken = Spec {
        pre_start: "echo migration refused >&2; exit 3",
        ..Spec::good(port)
    };
    create(&coordinator, &releases, "web", "2", broken);
    let host = AgentHost::start("e2e-never-ran", &coordinator, &HostOptions::default()).expect("agent host");
    pin(&coordinator, "web", "1");
    host.wait_healthy("web", "1", CONVERGE).expect("v1 healthy");
    let started = host.app_started("web");

    pin(&coordinator, "web", "2");
    let entry = host.wait_state("web", "failed", CONVERGE).unwrap_or_else(|error| {
        panic!("{error}\n{:#}", host.status().unwrap_or_default());
    });
    let error = entry["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("pre_start"), "failed with its reason: {entry:#}");
    assert_eq!(entry["current"], "1");
    assert_eq!(
        entry["bad_versions"],
        serde_json::json!([]),
        "a release that never ran is not marked bad"
    );
    assert_eq!(host.app_started("web"), started, "the running release was not touched");
    assert_eq!(AgentHost::get(port, "/").as_deref(), Some("drover-sample-app 1"));
    let shown = coordinator.host_json(&host.id).expect("hosts show");
    assert_eq!(shown["apps"]["web"]["state"], "failed", "{shown:#}");
    assert!(
        shown["apps"]["web"]["last_error"]
            .as_str()
            .is_some_and(|text| text.contains("pre_start")),
        "{shown:#}"
    );
}

#[test]
fn a_pin_lands_while_another_app_sits_in_its_health_grace_on_a_real_host() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let (slow_port, web_port) = (free_port(), free_port());
    let never_healthy = Spec {
        fail: Some("health"),
        grace: "30s",
        ..Spec::good(slow_port)
    };
    create(&coordinator, &releases, "slow", "1", never_healthy);
    create(&coordinator, &releases, "web", "1", Spec::good(web_port));
    let host = AgentHost::start("e2e-apart", &coordinator, &HostOptions::default()).expect("agent host");

    pin(&coordinator, "slow", "1");
    // slow serves (its /healthz answers 500): it is in its health grace.
    host.host
        .wait_until("slow 1 to serve", CONVERGE, Duration::from_millis(50), || {
            AgentHost::get(slow_port, "/").as_deref() == Some("drover-sample-app 1")
        })
        .expect("slow in grace");
    let grace_began = Instant::now();
    pin(&coordinator, "web", "1");
    host.wait_healthy("web", "1", CONVERGE).expect("web healthy");
    let web_after = grace_began.elapsed();
    eprintln!("web healthy {web_after:?} into slow's 30 s grace");
    assert!(
        web_after < Duration::from_secs(20),
        "web took {web_after:?} to become healthy while slow's 30 s grace ran: apps must not wait for each other"
    );
    assert_eq!(
        host.app_status("slow").map(|entry| entry["state"].clone()),
        Some(serde_json::json!("starting")),
        "slow is still in its grace"
    );
    assert_eq!(AgentHost::get(web_port, "/").as_deref(), Some("drover-sample-app 1"));
    // slow's gate still decides on time: no earlier release, so it is stopped and failed.
    let entry = host
        .wait_state("slow", "failed", CONVERGE)
        .unwrap_or_else(|error| panic!("{error}\n{:#}", host.status().unwrap_or_default()));
    assert!(
        entry["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("grace period")),
        "{entry:#}"
    );
    assert!(
        grace_began.elapsed() < Duration::from_secs(40),
        "slow decided by its deadline"
    );
}

/// When the agent logged "accepted manifest serial N", from its journal's microsecond
/// timestamps, oldest first.
fn accepted_manifest_times(host: &AgentHost) -> Vec<std::time::SystemTime> {
    let text = host
        .host
        .check(&[
            "journalctl",
            "--no-pager",
            "-o",
            "short-unix",
            "-u",
            "drover-agent.service",
            "-n",
            "500",
        ])
        .unwrap_or_default();
    text.lines()
        .filter(|line| line.contains("accepted manifest serial"))
        .filter_map(|line| line.split_whitespace().next()?.parse::<f64>().ok())
        .map(|seconds| std::time::UNIX_EPOCH + Duration::from_secs_f64(seconds))
        .collect()
}
