//! The packages end to end on a real systemd host: the agent installed from its .deb,
//! joined, an app deployed, upgraded, a failed release rolled back, the agent package
//! upgraded while the app keeps serving (same main PID), the host removed from the
//! coordinator, the package purged. The test command builds `dist/` first
//! (`packaging/build.sh`); a missing package fails the test loudly.

use std::time::Duration;

use drover_tests::e2e::{AgentHost, Behaviour, CoordinatorProcess, Releases, free_port, install_package, package};
use drover_tests::hosts::{Host, HostOptions};

const CONVERGE: Duration = Duration::from_secs(90);

fn install_deb(host: &Host, deb: &std::path::Path) -> String {
    install_package(host, deb).expect("dpkg -i")
}

#[test]
fn the_agent_package_installs_joins_deploys_upgrades_and_purges_cleanly() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    let deb = package("drover-agent_", "_amd64.deb").expect("the agent package");
    for (version, behaviour) in [
        ("1", Behaviour::Good),
        ("2", Behaviour::Good),
        ("3", Behaviour::FailsHealth),
    ] {
        coordinator
            .sample_release(&releases, version, port, behaviour, 0)
            .expect("release");
    }

    let host = Host::boot("pkg-agent", &HostOptions::default()).expect("host");
    install_deb(&host, &deb);
    assert_eq!(
        host.check(&["systemctl", "is-enabled", "drover-agent.service"])
            .expect("is-enabled")
            .trim(),
        "enabled"
    );
    assert_ne!(
        host.unit_state("drover-agent.service"),
        "active",
        "not started before the host has joined"
    );
    let agent = AgentHost {
        id: host.name().to_owned(),
        host,
    };
    agent.join_and_start(&coordinator, "").expect("join and start");

    coordinator.drover_ok(&["pin", "web", "1"]).expect("pin 1");
    agent.wait_serving(port, "1", CONVERGE).expect("v1");
    coordinator.drover_ok(&["pin", "web", "2"]).expect("pin 2");
    agent.wait_serving(port, "2", CONVERGE).expect("v2");
    agent.wait_healthy("web", "2", CONVERGE).expect("v2 healthy");
    coordinator.drover_ok(&["pin", "web", "3"]).expect("pin 3");
    let status = agent
        .wait_state("web", "rolled_back", CONVERGE)
        .expect("v3 rolled back");
    assert_eq!(status["current"], "2", "{status:#}");
    assert_eq!(AgentHost::get(port, "/").as_deref(), Some("drover-sample-app 2"));

    // Upgrading the agent package restarts the agent, never the app.
    let app_pid = agent.host.pid_of_unit("drover-web.service").expect("app pid");
    let agent_pid = agent.agent_pid().expect("agent pid");
    install_deb(&agent.host, &deb);
    agent
        .host
        .wait_until(
            "the agent to be restarted",
            CONVERGE,
            Duration::from_millis(200),
            || {
                agent.agent_pid().is_some_and(|pid| pid != agent_pid)
                    && agent.host.unit_state("drover-agent.service") == "active"
            },
        )
        .expect("agent restarted by the upgrade");
    assert_eq!(
        agent.host.pid_of_unit("drover-web.service"),
        Some(app_pid),
        "the app kept running"
    );
    assert_eq!(AgentHost::get(port, "/").as_deref(), Some("drover-sample-app 2"));
    assert!(
        agent
            .host
            .read_file("/etc/drover/agent.toml")
            .is_ok_and(|text| String::from_utf8_lossy(&text).contains("poll_interval = \"5s\"")),
        "the edited config survived the upgrade"
    );

    // Removed from the coordinator: refused at once, the journal says how to come back,
    // and the app keeps serving.
    coordinator
        .drover_ok(&["hosts", "remove", &agent.id])
        .expect("hosts remove");
    agent
        .host
        .wait_until("the agent to be refused", CONVERGE, Duration::from_millis(300), || {
            let journal = agent.host.journal_lines(Some("drover-agent.service"), 50);
            journal.contains("this host was removed from the coordinator (host_removed")
                && journal.contains(&format!("drover token create --replace {}", agent.id))
        })
        .expect("refused");
    assert_eq!(AgentHost::get(port, "/").as_deref(), Some("drover-sample-app 2"));

    // Purge: the agent, its state and the apps it installed are gone.
    agent.host.check(&["dpkg", "-P", "drover-agent"]).expect("purge");
    assert_ne!(agent.host.unit_state("drover-agent.service"), "active");
    // Its releases live under /var/lib/drover, so the apps it installed go with it.
    assert_ne!(agent.host.unit_state("drover-web.service"), "active");
    for gone in [
        "/var/lib/drover",
        "/usr/bin/drover-agent",
        "/etc/drover/agent.toml",
        "/etc/systemd/system/drover-web.service",
    ] {
        assert!(!agent.host.path(gone).exists(), "{gone} left after purge");
    }
}

#[test]
fn a_malformed_agent_config_fails_the_service_once_with_the_error_in_systemctl_status() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let agent = AgentHost::start("pkg-badconf", &coordinator, &HostOptions::default()).expect("agent host");
    assert_eq!(agent.host.unit_state("drover-agent.service"), "active");
    agent
        .host
        .check_sh("printf 'poll_interval = [broken\\n' >> /etc/drover/agent.toml")
        .expect("break the config");
    let _ = agent.host.exec(&["systemctl", "restart", "drover-agent.service"]);
    // RestartSec=5: long enough to see a restart loop if there were one.
    std::thread::sleep(Duration::from_secs(8));
    let show = agent
        .host
        .check(&[
            "systemctl",
            "show",
            "-p",
            "ActiveState,NRestarts,ExecMainStatus",
            "drover-agent.service",
        ])
        .expect("show");
    assert!(show.contains("ActiveState=failed"), "{show}");
    assert!(show.contains("NRestarts=0"), "no restart loop: {show}");
    assert!(show.contains("ExecMainStatus=64"), "exit 64 for bad config: {show}");
    let status =
        String::from_utf8_lossy(&agent.host.exec(&["systemctl", "status", "drover-agent.service"]).stdout).into_owned();
    assert!(
        status.contains("invalid configuration"),
        "the reason is in systemctl status: {status}"
    );
    assert!(
        agent
            .host
            .journal_lines(Some("drover-agent.service"), 50)
            .contains("poll_interval"),
        "and in the journal"
    );
}

#[test]
fn the_coordinator_package_runs_sandboxed_as_its_own_user_and_purges_its_data() {
    let deb = package("drover-coordinator_", "_amd64.deb").expect("the coordinator package");
    // Its own network namespace: the packaged default listens on port 8443.
    let host = Host::boot("pkg-coord", &HostOptions::default().arg("--private-network")).expect("host");
    install_package(&host, &deb).expect("dpkg -i");
    host.wait_until(
        "the coordinator to answer",
        CONVERGE,
        Duration::from_millis(200),
        || host.check(&["curl", "-sfk", "https://127.0.0.1:8443/healthz"]).is_ok(),
    )
    .expect("healthz");
    let user = host.check(&["ps", "-o", "user=", "-C", "drover"]).expect("ps");
    assert_eq!(user.trim(), "drover-coordinator", "runs as its own user");
    let owner = host
        .check(&["stat", "-c", "%U %a", "/var/lib/drover-coordinator"])
        .expect("stat");
    assert_eq!(owner.trim(), "drover-coordinator 700");
    // The operator CLI on the coordinator host finds everything in the data directory.
    let status = host.check(&["drover", "status"]).expect("drover status as root");
    assert!(status.contains("hosts: 0 enrolled"), "{status}");
    let exposure = host
        .check_sh("systemd-analyze security drover-coordinator.service | tail -1")
        .expect("security");
    let score: f64 = exposure
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in {exposure:?}"));
    assert!(score <= 2.5, "exposure {score} over 2.5: {exposure}");

    host.check(&["dpkg", "-P", "drover-coordinator"]).expect("purge");
    assert_ne!(host.unit_state("drover-coordinator.service"), "active");
    assert!(
        !host.path("/var/lib/drover-coordinator").exists(),
        "data removed on purge"
    );
}
