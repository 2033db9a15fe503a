//! The agent end to end on real systemd hosts (systemd-nspawn, SPEC §7): a real `drover
//! serve`, the real `drover-agent` under its unit, the sample app as release tarballs.
//! Each test asserts what an operator would see: the port answers the right version,
//! `drover-agent status` and `drover hosts show` agree, a bad release is rolled back, a
//! hostile archive or manifest changes nothing, a killed agent converges.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use drover_tests::e2e::{AgentHost, Behaviour, CoordinatorProcess, Releases, free_port};
use drover_tests::hosts::HostOptions;

const CONVERGE: Duration = Duration::from_secs(90);

/// Creates release `web VERSION` from a sample tarball and spec; returns the tarball.
fn release(
    coordinator: &CoordinatorProcess,
    releases: &Releases,
    version: &str,
    port: u16,
    behaviour: Behaviour,
    padding: usize,
) -> std::path::PathBuf {
    coordinator
        .sample_release(releases, version, port, behaviour, padding)
        .expect("release create")
}

/// The envelope of the manifest the host accepted last (in its accepted record).
fn accepted_envelope(host: &AgentHost) -> Vec<u8> {
    let record = host
        .host
        .read_file("/var/lib/drover/accepted.json")
        .expect("accepted record");
    let record: serde_json::Value = serde_json::from_slice(&record).expect("accepted record JSON");
    record["envelope"]
        .as_str()
        .expect("the accepted envelope")
        .as_bytes()
        .to_vec()
}

fn pin(coordinator: &CoordinatorProcess, version: &str) {
    coordinator.drover_ok(&["pin", "web", version]).expect("pin");
}

#[test]
fn deploys_upgrades_and_rolls_back_a_failing_release_on_a_real_host() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    release(&coordinator, &releases, "1", port, Behaviour::Good, 0);
    release(&coordinator, &releases, "2", port, Behaviour::Good, 0);
    release(&coordinator, &releases, "3", port, Behaviour::FailsHealth, 0);
    release(&coordinator, &releases, "4", port, Behaviour::Crashes, 0);
    let host = AgentHost::start("e2e-deploy", &coordinator, &HostOptions::default()).expect("agent host");

    pin(&coordinator, "1");
    host.wait_serving(port, "1", CONVERGE).expect("v1 serves");
    assert_eq!(host.host.unit_state("drover-web.service"), "active");
    host.wait_state("web", "healthy", CONVERGE).expect("v1 healthy");
    let unit = String::from_utf8_lossy(
        &host
            .host
            .read_file("/etc/systemd/system/drover-web.service")
            .expect("unit"),
    )
    .into_owned();
    assert!(
        unit.contains("/var/lib/drover/apps/web/current/bin/drover-sample-app"),
        "{unit}"
    );
    // Hooks ran from the release with the app's environment; setuid bits were stripped.
    let release_dir = "/var/lib/drover/apps/web/releases/1";
    assert_eq!(
        host.host
            .read_file(&format!("{release_dir}/pre-start-ran"))
            .expect("pre_start ran"),
        b"staged\n"
    );
    assert!(
        host.host.path(&format!("{release_dir}/post-start-ran")).exists(),
        "post_start ran"
    );
    let mode = host
        .host
        .check(&["stat", "-c", "%a", &format!("{release_dir}/bin/helper")])
        .expect("stat");
    assert_eq!(mode.trim(), "755", "setuid stripped");
    let verified = host.host.exec(&[
        "systemd-analyze",
        "verify",
        "/etc/systemd/system/drover-agent.service",
        "/etc/systemd/system/drover-web.service",
    ]);
    assert!(
        verified.status.success() && verified.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert_eq!(
        host.host
            .check(&["systemctl", "is-enabled", "drover-web.service"])
            .expect("is-enabled")
            .trim(),
        "enabled",
        "the app comes back after a reboot without the agent"
    );

    pin(&coordinator, "2");
    host.wait_serving(port, "2", CONVERGE).expect("v2 serves");
    let status = host.wait_healthy("web", "2", CONVERGE).expect("v2 healthy");
    assert_eq!(status["current"], "2");
    assert_eq!(status["previous"], "1");

    // v3 answers /healthz with 500: rolled back to v2, remembered as bad, reported.
    pin(&coordinator, "3");
    let status = host.wait_state("web", "rolled_back", CONVERGE).expect("v3 rolled back");
    assert_eq!(status["current"], "2", "{status:#}");
    assert_eq!(status["bad_versions"], serde_json::json!(["3"]), "{status:#}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("rolled back from 3 to 2"),
        "{status:#}"
    );
    assert_eq!(AgentHost::get(port, "/").as_deref(), Some("drover-sample-app 2"));
    let shown = coordinator.wait_reported(&host, "the coordinator to hear of the rollback", CONVERGE, |detail| {
        detail["apps"]["web"]["state"] == "rolled_back"
    });
    assert_eq!(
        shown["apps"]["web"]["current"], "2",
        "drover and drover-agent agree: {shown:#}"
    );
    assert!(
        shown["events"].as_array().is_some_and(|events| events
            .iter()
            .any(|event| event["message"].as_str().unwrap_or("").contains("unhealthy"))),
        "the report says why: {shown:#}"
    );
    // The bad version is not retried: the agent stays on v2 across heartbeats.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(AgentHost::get(port, "/").as_deref(), Some("drover-sample-app 2"));

    // v4 crash-loops: rolled back too; v3 is forgotten once it is no longer desired.
    pin(&coordinator, "4");
    host.host
        .wait_until("v4 to be rolled back", CONVERGE, Duration::from_millis(300), || {
            host.app_status("web").is_some_and(|status| {
                status["state"] == "rolled_back" && status["bad_versions"] == serde_json::json!(["4"])
            })
        })
        .expect("v4 rolled back");
    assert_eq!(AgentHost::get(port, "/").as_deref(), Some("drover-sample-app 2"));

    // drover status and drover-agent status agree on what the host runs.
    let fleet: serde_json::Value =
        serde_json::from_str(&coordinator.drover_ok(&["status", "-o", "json"]).expect("drover status")).expect("json");
    assert_eq!(fleet["apps"]["web"]["versions"]["2"], 1, "{fleet:#}");
    assert_eq!(host.app_status("web").expect("web")["current"], "2");

    // The agent stopping (SIGTERM: drain) and starting again never touches the app.
    let app_pid = host.host.pid_of_unit("drover-web.service").expect("app pid");
    host.host
        .check(&["systemctl", "stop", "drover-agent.service"])
        .expect("stop agent");
    assert_eq!(AgentHost::get(port, "/").as_deref(), Some("drover-sample-app 2"));
    host.host
        .check(&["systemctl", "start", "drover-agent.service"])
        .expect("start agent");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        host.host.pid_of_unit("drover-web.service"),
        Some(app_pid),
        "the app was not restarted"
    );
    assert_eq!(AgentHost::get(port, "/").as_deref(), Some("drover-sample-app 2"));
    let journal = host.host.journal_lines(Some("drover-agent.service"), 200);
    assert!(journal.contains("draining"), "SIGTERM drains: {journal}");

    // Unpinned: the host stops running the app and removes what it installed for it.
    coordinator.drover_ok(&["unpin", "web"]).expect("unpin");
    host.host
        .wait_until("the app to be removed", CONVERGE, Duration::from_millis(200), || {
            !host.host.path("/etc/systemd/system/drover-web.service").exists()
                && !host.host.path("/var/lib/drover/apps/web").exists()
        })
        .expect("removed");
    assert_ne!(host.host.unit_state("drover-web.service"), "active");
    assert_eq!(AgentHost::get(port, "/"), None, "nothing listens any more");
    assert!(host.app_status("web").is_none(), "gone from drover-agent status");
}

/// One raw tar entry: (path, type flag, mode, link target, data).
type RawEntry<'a> = (&'a [u8], u8, u32, &'a [u8], &'a [u8]);

/// Builds a gzip'd tar from raw entries, bypassing the tar crate's path checks.
fn hostile_tarball(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, mode, link, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::new(*kind));
        header.set_mode(*mode);
        header.set_size(data.len() as u64);
        header.set_mtime(1_700_000_000);
        header.as_old_mut().name[..path.len()].copy_from_slice(path);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        if *kind == b'3' {
            header.set_device_major(1).expect("major");
            header.set_device_minor(3).expect("minor");
        }
        header.set_cksum();
        builder.append(&header, *data).expect("append");
    }
    let tar = builder.into_inner().expect("tar");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&tar).expect("gzip");
    encoder.finish().expect("gzip")
}

/// Serves `body` at any path on 127.0.0.1 claiming `length` bytes (fewer sent = a short
/// download); returns the port. The thread lives as long as the test process.
fn serve_bytes(body: Vec<u8>, length: usize) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(10_000) {
            let Ok(mut stream) = stream else { continue };
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(&body);
        }
    });
    port
}

#[test]
fn hostile_archives_downloads_and_manifests_change_nothing_on_a_real_host() {
    let mut coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    release(&coordinator, &releases, "1", port, Behaviour::Good, 0);
    let spec = releases.spec("good", port, Behaviour::Good).expect("spec");
    let host = AgentHost::start_with(
        "e2e-hostile",
        &coordinator,
        &HostOptions::default(),
        "max_release_size = \"64M\"\n",
    )
    .expect("agent host");
    pin(&coordinator, "1");
    host.wait_serving(port, "1", CONVERGE).expect("v1 serves");
    host.wait_state("web", "healthy", CONVERGE).expect("v1 healthy");

    let good = std::fs::read(releases.tarball("t", 0).expect("tarball")).expect("read");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            hostile_tarball(&[(b"../escaped", b'0', 0o644, b"", b"x")]),
            "..",
        ),
        (
            "absolute",
            hostile_tarball(&[(b"/tmp/escaped", b'0', 0o644, b"", b"x")]),
            "absolute",
        ),
        (
            "symlink-then-file",
            hostile_tarball(&[
                (b"link", b'2', 0o777, b"/tmp", b""),
                (b"link/escaped", b'0', 0o644, b"", b"x"),
            ]),
            "link",
        ),
        (
            "hardlink-outside",
            hostile_tarball(&[(b"passwd", b'1', 0o644, b"/etc/passwd", b"")]),
            "link",
        ),
        (
            "device-node",
            hostile_tarball(&[(b"null", b'3', 0o666, b"", b"")]),
            "device",
        ),
        ("fifo", hostile_tarball(&[(b"pipe", b'6', 0o644, b"", b"")]), "fifo"),
        (
            "truncated-gzip",
            good[..good.len() / 2].to_vec(),
            "truncated or corrupt",
        ),
        (
            "gzip-bomb",
            hostile_tarball(&[(b"zeros", b'0', 0o644, b"", &vec![0u8; 100 << 20])]),
            "more than the limit",
        ),
    ];
    for (name, bytes, fragment) in &cases {
        // From a URL: `release create` and the coordinator check a local or uploaded
        // tarball for its program and would refuse these before any host saw them.
        let server = serve_bytes(bytes.clone(), bytes.len());
        let version = format!("bad-{name}");
        coordinator
            .drover_ok(&[
                "release",
                "create",
                "web",
                &version,
                "--spec",
                spec.to_str().expect("utf-8"),
                "--artifact",
                &format!("http://127.0.0.1:{server}/{name}.tar.gz"),
                "--digest",
                drover_protocol::Digest::of(bytes).as_str(),
                "--size",
                &bytes.len().to_string(),
            ])
            .expect("url release");
        pin(&coordinator, &version);
        let detail = coordinator.wait_reported(&host, &format!("the report on {version}"), CONVERGE, |detail| {
            // `desired` comes from the coordinator's own manifest; the error from the report.
            let web = &detail["apps"]["web"];
            web["state"] == "failed"
                && web["last_error"]
                    .as_str()
                    .is_some_and(|error| error.contains(&format!("unpacking web {version}:")))
        });
        let error = detail["apps"]["web"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(error.contains("unpacking web"), "{name}: {error}");
        assert!(
            error.contains(fragment),
            "{name}: {error:?} should mention {fragment:?}"
        );
        assert_eq!(
            AgentHost::get(port, "/").as_deref(),
            Some("drover-sample-app 1"),
            "{name}: the running release keeps serving"
        );
        for outside in [
            "/tmp/escaped",
            "/var/lib/drover/apps/web/escaped",
            "/var/lib/drover/apps/escaped",
        ] {
            assert!(!host.host.path(outside).exists(), "{name}: {outside} was written");
        }
        assert!(
            !host
                .host
                .path(&format!("/var/lib/drover/apps/web/releases/{version}"))
                .exists(),
            "{name}: no release directory for a refused archive"
        );
    }

    // A URL artifact whose bytes do not match the digest, and one that ends early.
    let body = b"these are not the bytes you signed".to_vec();
    let wrong = serve_bytes(body.clone(), body.len());
    let claimed = format!("sha256:{}", "ab".repeat(32));
    let size = body.len().to_string();
    coordinator
        .drover_ok(&[
            "release",
            "create",
            "web",
            "bad-digest",
            "--spec",
            spec.to_str().expect("utf-8"),
            "--artifact",
            &format!("http://127.0.0.1:{wrong}/web.tar.gz"),
            "--digest",
            &claimed,
            "--size",
            &size,
        ])
        .expect("url release");
    pin(&coordinator, "bad-digest");
    let detail = coordinator.wait_reported(&host, "the digest mismatch report", CONVERGE, |detail| {
        detail["apps"]["web"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("refused and deleted")
    });
    assert_eq!(
        AgentHost::get(port, "/").as_deref(),
        Some("drover-sample-app 1"),
        "{detail:#}"
    );

    let short = serve_bytes(body.clone(), body.len() + 1000);
    coordinator
        .drover_ok(&[
            "release",
            "create",
            "web",
            "bad-short",
            "--spec",
            spec.to_str().expect("utf-8"),
            "--artifact",
            &format!("http://127.0.0.1:{short}/web.tar.gz"),
            "--digest",
            &claimed,
            "--size",
            &(body.len() + 1000).to_string(),
        ])
        .expect("url release");
    pin(&coordinator, "bad-short");
    coordinator.wait_reported(&host, "the short download report", CONVERGE, |detail| {
        detail["apps"]["web"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("will resume")
    });
    assert_eq!(AgentHost::get(port, "/").as_deref(), Some("drover-sample-app 1"));

    // A forged manifest: the coordinator now signs with keys the host's trust does not
    // know. The host refuses it, says why, and changes nothing.
    pin(&coordinator, "1");
    host.wait_state("web", "healthy", CONVERGE).expect("back on v1");
    coordinator.stop();
    let keys = coordinator.data_dir.join("keys");
    std::fs::rename(&keys, coordinator.data_dir.join("keys.original")).expect("move keys");
    coordinator
        .drover_ok(&["keys", "init", "--dir", keys.to_str().expect("utf-8")])
        .expect("new keys");
    coordinator.resume().expect("coordinator back");
    release(&coordinator, &releases, "2", port, Behaviour::Good, 0);
    pin(&coordinator, "2");
    let detail = coordinator.wait_reported(&host, "the manifest rejection report", CONVERGE, |detail| {
        detail["manifest_rejection"]
            .as_str()
            .is_some_and(|reason| !reason.is_empty())
    });
    let reason = detail["manifest_rejection"].as_str().unwrap_or_default();
    assert!(reason.contains("signature") || reason.contains("key"), "{reason}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(AgentHost::get(port, "/").as_deref(), Some("drover-sample-app 1"));
    assert_eq!(
        host.status().expect("status")["manifest_rejection"].as_str(),
        Some(reason)
    );
}

#[test]
fn agent_killed_at_each_install_step_converges_on_a_real_host() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    release(&coordinator, &releases, "1", port, Behaviour::Good, 0);
    let host = AgentHost::start("e2e-kill", &coordinator, &HostOptions::default()).expect("agent host");
    pin(&coordinator, "1");
    host.wait_serving(port, "1", CONVERGE).expect("v1 serves");
    host.wait_state("web", "healthy", CONVERGE).expect("v1 healthy");

    let dropin = "/etc/systemd/system/drover-agent.service.d/pause.conf";
    let mut previous = "1".to_owned();
    for (index, point) in drover_agent::faults::POINTS.iter().enumerate() {
        let version = (index + 2).to_string();
        release(&coordinator, &releases, &version, port, Behaviour::Good, 8 << 20);
        host.host
            .write_file(
                dropin,
                format!("[Service]\nEnvironment=DROVER_AGENT_PAUSE_AT={point}\n").as_bytes(),
                0o644,
            )
            .expect("drop-in");
        host.host.check(&["systemctl", "daemon-reload"]).expect("reload");
        host.host
            .check(&["systemctl", "restart", "drover-agent.service"])
            .expect("restart agent");
        pin(&coordinator, &version);
        host.host
            .wait_until(
                &format!("the agent to pause at {point}"),
                CONVERGE,
                Duration::from_millis(100),
                || {
                    host.host
                        .read_file("/var/lib/drover/paused")
                        .is_ok_and(|text| text == point.as_bytes())
                },
            )
            .expect("paused");
        if *point != "during-health" {
            assert_eq!(
                AgentHost::get(port, "/").as_deref(),
                Some(format!("drover-sample-app {previous}").as_str()),
                "{point}: the old release serves until the restart"
            );
        }
        let pid = host.agent_pid().expect("agent pid");
        host.host.kill9(pid).expect("kill -9");
        std::fs::remove_file(host.host.path(dropin)).expect("remove drop-in");
        std::fs::remove_file(host.host.path("/var/lib/drover/paused")).expect("remove marker");
        host.host.check(&["systemctl", "daemon-reload"]).expect("reload");
        host.host
            .check_sh("systemctl reset-failed drover-agent.service; systemctl restart drover-agent.service")
            .expect("start agent");
        host.wait_serving(port, &version, CONVERGE)
            .unwrap_or_else(|error| panic!("after kill -9 at {point}: {error}"));
        host.wait_healthy("web", &version, CONVERGE)
            .unwrap_or_else(|error| panic!("after kill -9 at {point}: {error}"));
        let leftovers = host
            .host
            .check_sh("ls -a /var/lib/drover/apps/web/releases /var/lib/drover/cache")
            .expect("ls");
        assert!(
            !leftovers.contains(".staging-"),
            "{point}: staging leftovers: {leftovers}"
        );
        assert!(
            !leftovers.contains(".partial"),
            "{point}: partial downloads left: {leftovers}"
        );
        let served = String::from_utf8_lossy(
            &host
                .host
                .read_file(&format!("/var/lib/drover/apps/web/releases/{version}/VERSION"))
                .expect("VERSION"),
        )
        .into_owned();
        assert_eq!(served, version, "{point}: the release directory is complete");
        previous = version;
    }
    // keep_releases = 3: the three newest stay (current and previous among them), the
    // cache holds only what the manifest names.
    host.host
        .wait_until(
            "old releases to be pruned",
            CONVERGE,
            Duration::from_millis(200),
            || {
                host.host
                    .check_sh("ls /var/lib/drover/apps/web/releases")
                    .is_ok_and(|list| list.split_whitespace().collect::<Vec<_>>() == ["3", "4", "5"])
            },
        )
        .expect("pruned");
    let cache = host.host.check_sh("ls /var/lib/drover/cache").expect("ls cache");
    assert_eq!(cache.split_whitespace().count(), 1, "cache garbage-collected: {cache}");
}

#[test]
fn coordinator_outage_is_survived_with_backoff_on_a_real_host() {
    let mut coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    release(&coordinator, &releases, "1", port, Behaviour::Good, 0);
    release(&coordinator, &releases, "2", port, Behaviour::Good, 0);
    let host = AgentHost::start("e2e-outage", &coordinator, &HostOptions::default()).expect("agent host");
    pin(&coordinator, "1");
    host.wait_serving(port, "1", CONVERGE).expect("v1 serves");

    coordinator.stop();
    let outage = std::time::Instant::now();
    // Minutes, as an operator's coordinator maintenance would be.
    while outage.elapsed() < Duration::from_secs(125) {
        assert_eq!(
            AgentHost::get(port, "/").as_deref(),
            Some("drover-sample-app 1"),
            "the app keeps serving while the coordinator is down"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let journal = host.host.journal_lines(Some("drover-agent.service"), 500);
    let delays: Vec<f64> = journal
        .lines()
        .filter_map(|line| line.split("retrying in ").nth(1))
        .filter_map(|rest| rest.trim_end_matches('s').trim_end().trim_end_matches('s').parse().ok())
        .collect();
    assert!(delays.len() >= 3, "retries are logged: {journal}");
    // 1, 2, 4, 8, 16, 32, 60, 60 s ... at most, jittered into [d/2, d]: about 8 to 12 tries in 125 s.
    assert!(delays.len() <= 16, "backoff, not a tight loop: {delays:?}");
    let largest = delays.iter().copied().fold(0.0, f64::max);
    assert!(
        (30.0..=60.0).contains(&largest),
        "delays grow to the cap and stay under it: {delays:?}"
    );

    coordinator.resume().expect("coordinator back");
    pin(&coordinator, "2");
    host.wait_serving(port, "2", CONVERGE)
        .expect("v2 serves after the outage");
    host.wait_state("web", "healthy", CONVERGE).expect("healthy");
}

#[test]
fn disk_full_during_download_keeps_the_old_release_on_a_real_host() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    release(&coordinator, &releases, "1", port, Behaviour::Good, 0);
    release(&coordinator, &releases, "2", port, Behaviour::Good, 16 << 20);
    let options = HostOptions::default().arg("--tmpfs=/var/lib/drover/cache:size=8M");
    let host = AgentHost::start("e2e-diskfull", &coordinator, &options).expect("agent host");
    pin(&coordinator, "1");
    host.wait_serving(port, "1", CONVERGE).expect("v1 serves");

    pin(&coordinator, "2");
    let detail = coordinator.wait_reported(&host, "the disk-full report", CONVERGE, |detail| {
        detail["apps"]["web"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("No space left")
    });
    assert_eq!(detail["apps"]["web"]["current"], "1", "{detail:#}");
    assert_eq!(AgentHost::get(port, "/").as_deref(), Some("drover-sample-app 1"));
    let cache = host
        .host
        .check_sh("ls -a /var/lib/drover/cache; df -k /var/lib/drover/cache")
        .expect("ls");
    assert!(
        !cache.contains(".partial"),
        "a failed download does not keep the disk full: {cache}"
    );
}

#[test]
fn hostile_manifests_are_reported_and_change_nothing_on_a_real_host() {
    use drover_protocol::Manifest;
    use drover_protocol::dsse::Envelope;
    use drover_protocol::manifest::MANIFEST_PAYLOAD_TYPE;
    use drover_tests::e2e::Impostor;

    let mut coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    release(&coordinator, &releases, "1", port, Behaviour::Good, 0);
    let v2_tarball = release(&coordinator, &releases, "2", port, Behaviour::Good, 0);
    let host = AgentHost::start("e2e-forged", &coordinator, &HostOptions::default()).expect("agent host");
    pin(&coordinator, "1");
    host.wait_serving(port, "1", CONVERGE).expect("v1 serves");
    host.wait_healthy("web", "1", CONVERGE).expect("v1 healthy");

    // What the host accepted last, and a desired state that would move it to v2.
    let accepted = accepted_envelope(&host);
    let envelope: serde_json::Value = serde_json::from_slice(&accepted).expect("envelope");
    let payload = drover_tests::base64_decode(envelope["payload"].as_str().expect("payload"));
    let current: Manifest = serde_json::from_slice(&payload).expect("manifest");
    let mut upgrade = current.clone();
    let v2 = serde_json::from_str::<serde_json::Value>(
        &coordinator
            .drover_ok(&["release", "list", "web", "-o", "json"])
            .expect("release list"),
    )
    .expect("json");
    let v2 = v2
        .as_array()
        .and_then(|list| list.iter().find(|release| release["version"] == "2"))
        .expect("release 2")
        .clone();
    let web: drover_protocol::AppName = "web".parse().expect("app");
    let release_v2 = upgrade.apps.get_mut(&web).expect("web");
    release_v2.version = "2".parse().expect("version");
    release_v2.artifact = serde_json::from_value(v2["artifact"].clone()).expect("artifact");
    upgrade.serial = current.serial + 1;
    let key = drover_protocol::keyfile::read_signing_key(&coordinator.data_dir.join("keys/manifest.key")).expect("key");

    // The network is hostile from here on: the impostor holds the CA key, not the trust.
    coordinator.stop();
    let impostor = Impostor::start(&coordinator.data_dir, coordinator.port).expect("impostor");
    let (stranger, _) =
        drover_protocol::SigningKey::generate(&ring::rand::SystemRandom::new()).expect("a key the trust lacks");
    let sign = |manifest: &Manifest, key: &drover_protocol::SigningKey| manifest.sign(&[key]);
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    let mut replayed = upgrade.clone();
    replayed.serial = current.serial;
    cases.push((
        "replayed serial",
        sign(&replayed, &key),
        "not greater than the last accepted",
    ));
    let mut other_host = upgrade.clone();
    other_host.host = "someone-else".parse().expect("host");
    cases.push(("another host's manifest", sign(&other_host, &key), "for host"));
    let mut expired = upgrade.clone();
    expired.issued_at = drover_protocol::Timestamp::from_unix(1_700_000_000);
    expired.expires_at = drover_protocol::Timestamp::from_unix(1_700_003_600);
    cases.push(("expired", sign(&expired, &key), "expired"));
    cases.push((
        "signed by an unknown key",
        sign(&upgrade, &stranger),
        "not an authorised",
    ));
    let mut tampered: serde_json::Value = serde_json::from_slice(&sign(&current, &key)).expect("envelope");
    tampered["payload"] = drover_tests::base64_encode(&upgrade.to_payload()).into();
    cases.push((
        "altered payload",
        serde_json::to_vec(&tampered).expect("json"),
        "does not verify",
    ));
    cases.push((
        "wrong payload type",
        Envelope::sign("application/vnd.other+json", &upgrade.to_payload(), &[&key]).to_json(),
        "payload type",
    ));
    let mut future = upgrade.clone();
    future.schema = 99;
    cases.push(("unknown schema", sign(&future, &key), "schema"));
    cases.push((
        "not an envelope",
        b"{\"hello\":\"world\"}".to_vec(),
        "not a valid signed envelope",
    ));
    cases.push(("oversized", vec![b' '; (1 << 20) + 10], "over the limit"));
    assert_eq!(envelope["payloadType"], MANIFEST_PAYLOAD_TYPE);

    for (name, bytes, fragment) in cases {
        impostor.serve(bytes);
        let mut last = serde_json::Value::Null;
        host.host
            .wait_until(
                &format!("the rejection of the {name} manifest in a report"),
                CONVERGE,
                Duration::from_millis(200),
                || {
                    last = impostor.reports().last().cloned().unwrap_or_default();
                    last["manifest_rejection"]
                        .as_str()
                        .is_some_and(|reason| reason.contains(fragment))
                },
            )
            .unwrap_or_else(|error| panic!("{name}: {error}\nlast report: {last:#}"));
        assert_eq!(
            AgentHost::get(port, "/").as_deref(),
            Some("drover-sample-app 1"),
            "{name}: the host keeps running what it accepted"
        );
        let status = host.status().expect("status");
        assert_eq!(
            status["manifest_serial"], current.serial,
            "{name}: nothing accepted: {status:#}"
        );
        assert_eq!(
            accepted_envelope(&host),
            accepted,
            "{name}: the stored manifest is untouched"
        );
    }

    // The genuine upgrade, through the same hostile channel, is taken: the signature is
    // what counts, not the server.
    let url = v2["artifact"]["url"].as_str().expect("artifact url");
    let path = &url[url.find("/v1/").expect("artifact path")..];
    impostor.serve_file(path, std::fs::read(&v2_tarball).expect("v2 tarball"));
    impostor.serve(sign(&upgrade, &key));
    host.wait_serving(port, "2", CONVERGE)
        .expect("a genuine manifest still works");
    assert_eq!(
        host.status().expect("status")["manifest_rejection"],
        serde_json::Value::Null
    );
}
