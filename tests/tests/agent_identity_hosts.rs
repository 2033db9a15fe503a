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
    let status = agent.status().expect("status");
    assert_eq!(
        status["certificate_not_after"].as_str(),
        Some(renewed.not_after.to_string().as_str()),
        "drover-agent status shows the certificate's expiry: {status}"
    );
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

    let record = agent.host.read_file(RECORD).expect("accepted.json");
    let record: serde_json::Value = serde_json::from_slice(&record).expect("JSON");
    let envelope = match record["envelope"].as_str() {
        Some(envelope) => envelope.as_bytes().to_vec(),
        // An agent that keeps the envelope apart.
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
