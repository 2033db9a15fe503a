//! The agent's identity and accepted-manifest state on real systemd hosts (issue 13): the
//! host certificate renewed in band across its expiry, an earlier agent's crash between
//! its two writes of an accepted manifest, and a full disk at the accepted record's
//! write. Each runs the real `drover-agent` from the .deb under its unit against a real
//! `drover serve`.
//!
//! `DROVER_TEST_AGENT_DEB=/path/to/drover-agent_*.deb` installs another agent package
//! (an older build), to see these tests fail against an agent without the fixes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use drover_agent::renew::Validity;
use drover_protocol::Timestamp;
use drover_tests::binary;
use drover_tests::e2e::{AGENT_UNIT, AgentHost, CoordinatorProcess, install_package, package};
use drover_tests::hosts::{Host, HostOptions};

const HOST_CERTIFICATE: &str = "/var/lib/drover/identity/host.pem";
const RECORD: &str = "/var/lib/drover/accepted.json";
const LEGACY_MANIFEST: &str = "/var/lib/drover/manifest.dsse";
const CONVERGE: Duration = Duration::from_secs(60);

fn agent_deb() -> PathBuf {
    std::env::var_os("DROVER_TEST_AGENT_DEB").map_or_else(
        || package("drover-agent_", "_amd64.deb").expect("agent package"),
        PathBuf::from,
    )
}

/// Boots a host, installs the agent package, joins and starts it.
fn agent_host(name: &str, coordinator: &CoordinatorProcess, options: &HostOptions) -> AgentHost {
    let host = Host::boot(name, options).expect("boot");
    install_package(&host, &agent_deb()).expect("install the agent");
    let agent = AgentHost {
        id: host.name().to_owned(),
        host,
    };
    agent.join_and_start(coordinator, "").expect("join and start");
    agent
}

fn serial(agent: &AgentHost) -> Option<u64> {
    agent.status().ok()?["manifest_serial"].as_u64()
}

fn wait_serial(agent: &AgentHost, description: &str, wanted: impl Fn(u64) -> bool) -> u64 {
    agent
        .host
        .wait_until(description, CONVERGE, Duration::from_millis(250), || {
            serial(agent).is_some_and(&wanted)
        })
        .expect("serial");
    serial(agent).expect("serial")
}

fn certificate(agent: &AgentHost) -> (String, Validity) {
    let pem = String::from_utf8(agent.host.read_file(HOST_CERTIFICATE).expect("host.pem")).expect("PEM text");
    let validity = Validity::of_pem(&pem).expect("a certificate");
    (pem, validity)
}

fn real_now() -> Timestamp {
    Timestamp::from_system(std::time::SystemTime::now())
}

/// A host whose certificate lasts 60 s (the shortest `drover serve` issues) keeps taking
/// manifests after that certificate expired and the coordinator restarted (so no
/// connection from before survives), without the agent restarting: it renewed the
/// certificate in band, over the same key, and its new connections present the new one.
#[test]
fn a_host_keeps_working_across_its_certificate_expiry() {
    let mut coordinator =
        CoordinatorProcess::start_with(std::net::Ipv4Addr::LOCALHOST, &["--host-certificate-validity", "60s"])
            .expect("coordinator");
    let agent = agent_host("renew", &coordinator, &HostOptions::default());
    let first = wait_serial(&agent, "the first manifest", |_| true);
    let pid = agent.agent_pid().expect("agent running");
    let (original_pem, original) = certificate(&agent);
    assert!(
        original.not_after.unix() - real_now().unix() <= 60,
        "a 60 s certificate: {original:?}"
    );

    // The clock passes the original certificate's expiry (a condition only time makes).
    let deadline = Instant::now() + Duration::from_secs(150);
    while real_now().unix() <= original.not_after.unix() + 2 {
        assert!(
            Instant::now() < deadline,
            "the clock did not pass {}",
            original.not_after
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // A restart of the coordinator ends every connection the agent had open (those
    // began with the original certificate and would outlive it): the next ones must
    // present a certificate that is valid now.
    coordinator.stop();
    coordinator.resume().expect("coordinator restarted");
    coordinator
        .drover_ok(&["hold", "--reason", "after the certificate expired"])
        .expect("hold");
    let held = wait_serial(&agent, "the manifest made after the expiry", |serial| serial > first);
    assert!(held > first);
    assert_eq!(agent.agent_pid(), Some(pid), "the agent was not restarted");

    let (renewed_pem, renewed) = certificate(&agent);
    assert_ne!(renewed_pem, original_pem);
    assert!(renewed.not_after.unix() > original.not_after.unix(), "{renewed:?}");
    let journal = agent.host.journal(Some(AGENT_UNIT));
    assert!(journal.contains("renewed the host certificate"), "{journal}");
    // drover-agent status shows the stored certificate's expiry (read together: with
    // 60 s certificates a renewal may land between two reads).
    agent
        .host
        .wait_until(
            "drover-agent status showing the certificate's expiry",
            CONVERGE,
            Duration::from_millis(250),
            || {
                let shown = agent
                    .status()
                    .ok()
                    .and_then(|status| status["certificate_not_after"].as_str().map(str::to_owned));
                shown == Some(certificate(&agent).1.not_after.to_string())
            },
        )
        .expect("status shows the expiry");
    // A new connection (after a restart of the agent) works with the stored certificate.
    agent
        .host
        .check(&["systemctl", "restart", AGENT_UNIT])
        .expect("restart");
    coordinator.drover_ok(&["unhold"]).expect("unhold");
    wait_serial(&agent, "the manifest after a restart", |serial| serial > held);
}

/// Defect 6 on a real host: an agent before the single record wrote `manifest.dsse` and
/// was killed before `accepted.json`. The state is made by hand (the old agent's files:
/// the coordinator's current envelope, beside the floor of the serial before it, an hour
/// older); the agent must act on the coordinator's manifest without waiting for a re-sign.
#[test]
fn an_earlier_agents_crash_between_envelope_and_floor_does_not_stall_a_real_host() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let agent = agent_host("legacy", &coordinator, &HostOptions::default());
    let current = wait_serial(&agent, "the first manifest", |serial| serial >= 1);
    agent.host.check(&["systemctl", "stop", AGENT_UNIT]).expect("stop");

    write_crash_state_of_an_earlier_agent(&agent, current);
    agent.host.check(&["systemctl", "start", AGENT_UNIT]).expect("start");

    // No change at the coordinator: its manifest is the envelope on disk.
    wait_serial(&agent, "the coordinator's manifest in force again", |serial| {
        serial == current
    });
    assert!(!agent.host.path(LEGACY_MANIFEST).exists(), "migrated into one record");
    let mode = agent.host.check(&["stat", "-c", "%a", RECORD]).expect("stat");
    assert_eq!(mode.trim(), "600", "the record holds every spec");
    coordinator.drover_ok(&["hold"]).expect("hold");
    wait_serial(&agent, "the next manifest", |serial| serial > current);
}

/// A full disk when the accepted record is written: the agent keeps running on its
/// previous manifest, says why, and takes the manifest once there is space again.
#[test]
fn a_full_disk_at_the_accepted_record_does_not_stop_the_agent() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let options = HostOptions::default().arg("--tmpfs=/var/lib/drover:size=4M,mode=0755");
    let agent = agent_host("full-disk", &coordinator, &options);
    let first = wait_serial(&agent, "the first manifest", |serial| serial >= 1);
    let pid = agent.agent_pid().expect("agent running");

    // Fill the state directory's filesystem (dd stops at ENOSPC).
    agent
        .host
        .sh("dd if=/dev/zero of=/var/lib/drover/filler bs=4k 2>/dev/null; sync");
    coordinator.drover_ok(&["hold", "--reason", "disk full"]).expect("hold");
    agent
        .host
        .wait_until(
            "the agent saying it could not record the manifest",
            CONVERGE,
            Duration::from_millis(250),
            || {
                agent
                    .host
                    .journal(Some(AGENT_UNIT))
                    .contains("passed every check but recording it failed")
            },
        )
        .expect("the failed write is logged");
    assert_eq!(agent.agent_pid(), Some(pid), "the agent did not exit");
    assert_eq!(serial(&agent), Some(first), "still on the previous manifest");

    agent.host.check(&["rm", "/var/lib/drover/filler"]).expect("free space");
    let taken = wait_serial(&agent, "the manifest taken once there is space", |serial| {
        serial > first
    });
    assert!(taken > first);
    assert_eq!(agent.agent_pid(), Some(pid), "the same agent took it");
}

/// Writes what an agent before the single record left after a kill between its two
/// writes: the coordinator's current envelope as `manifest.dsse`, beside the floor of
/// the serial before it, an hour older. The agent is stopped.
fn write_crash_state_of_an_earlier_agent(agent: &AgentHost, current: u64) {
    let record = agent.host.read_file(RECORD).expect("accepted.json");
    let record: serde_json::Value = serde_json::from_slice(&record).expect("JSON");
    let envelope = match record["envelope"].as_str() {
        Some(envelope) => envelope.as_bytes().to_vec(),
        None => agent.host.read_file(LEGACY_MANIFEST).expect("manifest.dsse"),
    };
    let hour_ago = Timestamp::from_unix(real_now().unix() - 3600);
    agent
        .host
        .write_file(LEGACY_MANIFEST, &envelope, 0o644)
        .expect("write manifest.dsse");
    agent
        .host
        .write_file(
            RECORD,
            format!(r#"{{"serial":{},"issued_at":"{hour_ago}"}}"#, current - 1).as_bytes(),
            0o644,
        )
        .expect("write the old floor");
}

/// kill -9 of a real agent at each step of recording a manifest: before the record's
/// write, after it, and in the migration of an earlier agent's files between writing the
/// record and removing `manifest.dsse`. After each, the restarted agent acts on the
/// coordinator's manifest without waiting for a re-sign. The pause points exist only in
/// debug builds, so the host runs the debug `drover-agent` of this tree in place of the
/// packaged one (same Debian, same libc).
#[test]
fn an_agent_killed_at_each_step_of_recording_a_manifest_converges_on_a_real_host() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let agent = agent_host("kill-record", &coordinator, &HostOptions::default());
    // Replaced by rename: the running agent's file cannot be written (ETXTBSY).
    agent
        .host
        .copy_in(&binary("drover-agent"), "/usr/bin/drover-agent.debug", 0o755)
        .expect("the debug agent");
    agent
        .host
        .check(&["mv", "/usr/bin/drover-agent.debug", "/usr/bin/drover-agent"])
        .expect("install the debug agent");
    let dropin = "/etc/systemd/system/drover-agent.service.d/pause.conf";
    let marker = "/var/lib/drover/paused";
    let pause_at = |point: &str| {
        agent
            .host
            .write_file(
                dropin,
                format!("[Service]\nEnvironment=DROVER_AGENT_PAUSE_AT={point}\n").as_bytes(),
                0o644,
            )
            .expect("drop-in");
        agent.host.check(&["systemctl", "daemon-reload"]).expect("reload");
    };
    let wait_paused_and_kill = |point: &str| {
        agent
            .host
            .wait_until(
                &format!("the agent to pause at {point}"),
                CONVERGE,
                Duration::from_millis(100),
                || agent.host.read_file(marker).is_ok_and(|text| text == point.as_bytes()),
            )
            .expect("paused");
        let pid = agent.agent_pid().expect("agent pid");
        agent.host.kill9(pid).expect("kill -9");
        std::fs::remove_file(agent.host.path(dropin)).expect("remove drop-in");
        std::fs::remove_file(agent.host.path(marker)).expect("remove marker");
        agent.host.check(&["systemctl", "daemon-reload"]).expect("reload");
    };
    let restart = || {
        agent
            .host
            .check_sh("systemctl reset-failed drover-agent.service; systemctl restart drover-agent.service")
            .expect("start agent");
    };
    agent
        .host
        .check(&["systemctl", "restart", AGENT_UNIT])
        .expect("restart on the debug agent");
    let mut current = wait_serial(&agent, "the first manifest", |serial| serial >= 1);

    for (index, point) in ["record-before-write", "record-after-write"].into_iter().enumerate() {
        pause_at(point);
        agent
            .host
            .check(&["systemctl", "restart", AGENT_UNIT])
            .expect("restart");
        let change = if index % 2 == 0 { "hold" } else { "unhold" };
        coordinator.drover_ok(&[change]).expect("a new manifest");
        wait_paused_and_kill(point);
        restart();
        current = wait_serial(
            &agent,
            &format!("the new manifest after kill -9 at {point}"),
            |serial| serial > current,
        );
    }

    // The migration: an earlier agent's crash state, killed again after the record.
    agent.host.check(&["systemctl", "stop", AGENT_UNIT]).expect("stop");
    write_crash_state_of_an_earlier_agent(&agent, current);
    pause_at("migration-after-record");
    // The migration runs before the agent is ready: the start job would wait on it.
    agent
        .host
        .check(&["systemctl", "start", "--no-block", AGENT_UNIT])
        .expect("start");
    wait_paused_and_kill("migration-after-record");
    assert!(
        agent.host.path(LEGACY_MANIFEST).exists(),
        "killed before manifest.dsse was removed"
    );
    let record: serde_json::Value =
        serde_json::from_slice(&agent.host.read_file(RECORD).expect("record")).expect("JSON");
    assert_eq!(
        record["serial"].as_u64(),
        Some(current),
        "the migrated record: {record}"
    );
    restart();
    wait_serial(
        &agent,
        "the coordinator's manifest after the killed migration",
        |serial| serial == current,
    );
    agent
        .host
        .wait_until("manifest.dsse removed", CONVERGE, Duration::from_millis(100), || {
            !agent.host.path(LEGACY_MANIFEST).exists()
        })
        .expect("the migration finished");
    coordinator.drover_ok(&["hold"]).expect("hold");
    wait_serial(&agent, "the next manifest", |serial| serial > current);
}
