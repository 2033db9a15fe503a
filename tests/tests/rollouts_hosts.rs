//! Staged rollouts end to end on five real systemd hosts (systemd-nspawn, SPEC §7): each
//! host on a network of its own behind a private bridge (so the same release, an app on a
//! fixed port, runs on all of them), the agent installed from its .deb, a real `drover
//! serve` on the bridge, and the operator's `drover rollout` commands.
//!
//! A good release goes canary → 50 % → 100 %, stage after stage (checked by when each
//! host's service process started); a bad release stops after the canary, whose agent
//! rolls itself back, and the other four hosts never change (same service process, never
//! offered the release). A held host (the kill switch) takes the hold within one poll
//! and is left alone by the next rollout.

use std::process::Command;
use std::time::{Duration, Instant};

use drover_tests::binary;
use drover_tests::e2e::{AgentHost, Behaviour, CoordinatorProcess, Releases};
use drover_tests::net::Bridge;

const HOSTS: u8 = 5;
const PORT: u16 = 8080;
const CONVERGE: Duration = Duration::from_secs(120);
const UNIT: &str = "drover-web.service";

/// `drover rollout watch web` with a time limit: (exit code, output).
fn watch(coordinator: &CoordinatorProcess, limit: Duration) -> (Option<i32>, String) {
    let output = Command::new("timeout")
        .arg(limit.as_secs().to_string())
        .arg(binary("drover"))
        .args(["rollout", "watch", "web"])
        .env("DROVER_DATA_DIR", &coordinator.data_dir)
        .env_remove("DROVER_ADDR")
        .env_remove("DROVER_TOKEN")
        .env_remove("DROVER_CA")
        .output()
        .expect("running drover rollout watch");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

fn json(coordinator: &CoordinatorProcess, args: &[&str]) -> serde_json::Value {
    let text = coordinator.drover_ok(args).expect("drover");
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{args:?}: {error}: {text}"))
}

/// When the host's current service process started (µs on the kernel's monotonic clock,
/// which the hosts share with the machine) and its PID.
fn service_start(host: &AgentHost) -> (u64, u32) {
    let text = host
        .host
        .check(&[
            "systemctl",
            "show",
            UNIT,
            "-p",
            "ExecMainStartTimestampMonotonic",
            "-p",
            "MainPID",
        ])
        .expect("systemctl show");
    let value = |key: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    };
    (value("ExecMainStartTimestampMonotonic"), value("MainPID") as u32)
}

/// The plan's hosts per stage.
fn plan_stages(plan: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    plan["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|stage| {
            let hosts = stage["hosts"]
                .as_array()
                .expect("hosts")
                .iter()
                .map(|host| host["id"].as_str().expect("id").to_owned())
                .collect();
            (stage["label"].as_str().expect("label").to_owned(), hosts)
        })
        .collect()
}

fn host<'a>(fleet: &'a [AgentHost], id: &str) -> &'a AgentHost {
    fleet
        .iter()
        .find(|host| host.id == id)
        .unwrap_or_else(|| panic!("no host {id}"))
}

#[test]
fn rollout_on_five_real_hosts_goes_stage_by_stage_and_a_bad_release_stops_at_the_canary() {
    let bridge = Bridge::create().expect("bridge");
    let coordinator = CoordinatorProcess::start_on(bridge.gateway()).expect("coordinator");
    let releases = Releases::new().expect("releases");
    for (version, behaviour) in [
        ("1.0.0", Behaviour::Good),
        ("2.0.0", Behaviour::Good),
        ("3.0.0", Behaviour::FailsHealth),
    ] {
        coordinator
            .sample_release(&releases, version, PORT, behaviour, 0)
            .expect("release create");
    }
    let started = Instant::now();
    let fleet: Vec<AgentHost> = std::thread::scope(|scope| {
        let booting: Vec<_> = (1..=HOSTS)
            .map(|n| {
                let (coordinator, bridge) = (&coordinator, &bridge);
                scope.spawn(move || AgentHost::start_on_bridge("rollout", coordinator, bridge, n))
            })
            .collect();
        booting
            .into_iter()
            .map(|thread| thread.join().expect("boot thread").expect("agent host"))
            .collect()
    });
    eprintln!(
        "{HOSTS} hosts booted and joined in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Everyone on 1.0.0 first, the fleet pin.
    coordinator.drover_ok(&["pin", "web", "1.0.0"]).expect("pin");
    for host in &fleet {
        host.wait_healthy("web", "1.0.0", CONVERGE).expect("1.0.0 healthy");
        assert_eq!(host.get_inside(PORT, "/").as_deref(), Some("drover-sample-app 1.0.0"));
    }

    // A good release: plan, start, watch to completion.
    let stages = ["--stages", "canary,50%,100%"];
    let plan_text = coordinator
        .drover_ok(&[&["rollout", "plan", "web", "2.0.0"][..], &stages].concat())
        .expect("rollout plan");
    eprintln!("drover rollout plan web 2.0.0 --stages canary,50%,100%\n{plan_text}");
    let plan = plan_stages(&json(
        &coordinator,
        &[&["rollout", "plan", "web", "2.0.0"][..], &stages, &["-o", "json"]].concat(),
    ));
    let sizes: Vec<usize> = plan.iter().map(|(_, hosts)| hosts.len()).collect();
    assert_eq!(
        sizes,
        [1, 2, 2],
        "canary, then up to 3 of 5 (50% rounded up), then the rest: {plan:?}"
    );
    let before: Vec<(u64, u32)> = fleet.iter().map(service_start).collect();
    coordinator
        .drover_ok(&[&["rollout", "start", "web", "2.0.0"][..], &stages].concat())
        .expect("rollout start");
    let (code, text) = watch(&coordinator, CONVERGE);
    eprintln!("drover rollout watch web\n{text}");
    assert_eq!(code, Some(0), "watch exits 0 when the rollout completes:\n{text}");
    for host in &fleet {
        host.wait_healthy("web", "2.0.0", CONVERGE).expect("2.0.0 healthy");
        assert_eq!(host.get_inside(PORT, "/").as_deref(), Some("drover-sample-app 2.0.0"));
    }
    // Stage by stage, as planned: every host of a stage got its new process after every
    // host of the stage before (which had to be healthy first).
    let starts: Vec<Vec<u64>> = plan
        .iter()
        .map(|(_, hosts)| {
            hosts
                .iter()
                .map(|id| {
                    let host = host(&fleet, id);
                    let (start, pid) = service_start(host);
                    let index = fleet.iter().position(|other| other.id == host.id).expect("index");
                    assert_ne!(pid, before[index].1, "{id} restarted on 2.0.0");
                    start
                })
                .collect()
        })
        .collect();
    for pair in starts.windows(2) {
        let earlier = pair[0].iter().max().expect("stage has hosts");
        let later = pair[1].iter().min().expect("stage has hosts");
        assert!(earlier < later, "stages overlapped: {starts:?} (plan {plan:?})");
    }
    let status = json(&coordinator, &["rollout", "status", "web", "-o", "json"]);
    assert_eq!(status["phase"], "completed", "{status:#}");

    // A bad release: the canary takes it, fails its health checks, rolls itself back;
    // the breaker (no failures tolerated at the canary) stops the rollout there.
    let plan = plan_stages(&json(
        &coordinator,
        &[&["rollout", "plan", "web", "3.0.0"][..], &stages, &["-o", "json"]].concat(),
    ));
    let canary = plan[0].1[0].clone();
    let before: Vec<(u64, u32)> = fleet.iter().map(service_start).collect();
    let serials: Vec<serde_json::Value> = fleet
        .iter()
        .map(|host| coordinator.host_json(&host.id).expect("hosts show")["manifest_serial"].clone())
        .collect();
    coordinator
        .drover_ok(&[&["rollout", "start", "web", "3.0.0"][..], &stages].concat())
        .expect("rollout start");
    let (code, text) = watch(&coordinator, CONVERGE);
    eprintln!("drover rollout watch web (bad release)\n{text}");
    assert_eq!(
        code,
        Some(1),
        "watch exits 1 when the breaker stops the rollout:\n{text}"
    );
    let status = json(&coordinator, &["rollout", "status", "web", "-o", "json"]);
    assert_eq!(status["phase"], "paused_by_breaker", "{status:#}");
    assert_eq!(status["stage"], 0, "stopped at the canary: {status:#}");
    assert_eq!(status["failures"], 1, "{status:#}");

    let canary_host = host(&fleet, &canary);
    let entry = canary_host
        .wait_status("web", "the canary rolled back to 2.0.0", CONVERGE, |entry| {
            entry["current"] == "2.0.0" && entry["interrupted"].is_null()
        })
        .expect("canary rolled back");
    assert_eq!(entry["state"], "rolled_back", "{entry:#}");
    assert_eq!(
        canary_host.get_inside(PORT, "/").as_deref(),
        Some("drover-sample-app 2.0.0")
    );
    let canary_index = fleet.iter().position(|host| host.id == canary).expect("index");
    assert_ne!(
        service_start(canary_host).1,
        before[canary_index].1,
        "the canary ran 3.0.0 and then 2.0.0 again"
    );

    // The other four never changed, also a poll interval later: same process, still
    // serving 2.0.0, and never offered 3.0.0.
    std::thread::sleep(Duration::from_secs(6));
    for (index, host) in fleet.iter().enumerate() {
        if host.id == canary {
            continue;
        }
        assert_eq!(service_start(host), before[index], "{} was not touched", host.id);
        assert_eq!(host.get_inside(PORT, "/").as_deref(), Some("drover-sample-app 2.0.0"));
        let entry = host.app_status("web").expect("web in drover-agent status");
        assert_eq!(entry["current"], "2.0.0", "{entry:#}");
        assert_eq!(entry["state"], "healthy", "{entry:#}");
        let shown = coordinator.host_json(&host.id).expect("hosts show");
        assert_eq!(shown["apps"]["web"]["desired"], "2.0.0", "{shown:#}");
        assert_eq!(
            shown["manifest_serial"], serials[index],
            "{} got no new manifest: {shown:#}",
            host.id
        );
        assert!(
            !shown.to_string().contains("3.0.0"),
            "{} heard of 3.0.0: {shown:#}",
            host.id
        );
    }

    // Abort restores the desired state from before the rollout: 2.0.0 everywhere.
    coordinator
        .drover_ok(&["rollout", "abort", "web", "--reason", "health checks fail"])
        .expect("abort");
    let shown = coordinator.host_json(&canary).expect("hosts show");
    assert_eq!(shown["apps"]["web"]["desired"], "2.0.0", "{shown:#}");
    for host in &fleet {
        host.wait_healthy("web", "2.0.0", CONVERGE).expect("2.0.0 after abort");
    }

    // The kill switch: a held host takes its held manifest within one poll (the
    // long-poll brings it at once; the poll interval is 5 s) and then changes nothing
    // while a rollout goes past it; it misses its deadline, which the failure budget
    // absorbs. Released, it follows the pin the finished rollout left.
    coordinator
        .sample_release(&releases, "4.0.0", PORT, Behaviour::Good, 0)
        .expect("release create");
    let plan = plan_stages(&json(
        &coordinator,
        &[&["rollout", "plan", "web", "4.0.0"][..], &stages, &["-o", "json"]].concat(),
    ));
    let held_id = plan[1].1[0].clone();
    let held = host(&fleet, &held_id);
    let held_before = service_start(held);
    let clock = Instant::now();
    coordinator.drover_ok(&["hold", "--host", &held_id]).expect("hold");
    held.host
        .wait_until(
            "the held manifest on the host",
            Duration::from_secs(5),
            Duration::from_millis(50),
            || held.status().is_ok_and(|status| status["held"] == true),
        )
        .expect("held within one poll interval");
    eprintln!("hold reached {held_id} in {:.2} s", clock.elapsed().as_secs_f64());
    coordinator
        .drover_ok(
            &[
                &["rollout", "start", "web", "4.0.0"][..],
                &stages,
                &["--max-failures", "1", "--host-deadline", "15s"],
            ]
            .concat(),
        )
        .expect("rollout start");
    let (code, text) = watch(&coordinator, CONVERGE);
    assert_eq!(code, Some(0), "the held host's failure fits the budget:\n{text}");
    let status = json(&coordinator, &["rollout", "status", "web", "-o", "json"]);
    assert_eq!(status["failures"], 1, "{status:#}");
    assert_eq!(service_start(held), held_before, "the held host was not touched");
    assert_eq!(held.get_inside(PORT, "/").as_deref(), Some("drover-sample-app 2.0.0"));
    for host in fleet.iter().filter(|host| host.id != held_id) {
        host.wait_healthy("web", "4.0.0", CONVERGE).expect("4.0.0 healthy");
    }
    coordinator.drover_ok(&["unhold", "--host", &held_id]).expect("unhold");
    held.wait_healthy("web", "4.0.0", CONVERGE)
        .expect("released, the held host follows the fleet pin");
}
