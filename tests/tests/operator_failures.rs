//! Failures that say why, for the operator: `drover rollout status|watch` name the hosts a
//! rollout counts as failed with what they reported (escaped), and `release create`
//! refuses a tarball that lacks its program, on the CLI and on the server.

use std::sync::Arc;
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
            let canary = rollout["failed_hosts"][0]["host"]
                .as_str()
                .expect("a failed host")
                .to_owned();
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

/// `drover.toml` of an app whose program is `bin/web`, run as `user` if given.
fn web_spec(user: Option<&str>) -> String {
    let user = user.map_or_else(String::new, |user| format!("user = \"{user}\"\n"));
    format!("[service]\ncommand = [\"bin/web\", \"--port\", \"8080\"]\n{user}")
}

/// A tar.gz of `entries`: (path, mode, symlink target).
fn tarball(entries: &[(&str, u32, Option<&str>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (path, mode, target) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(*mode);
        header.set_mtime(0);
        match target {
            Some(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder.append_link(&mut header, path, target).expect("symlink");
            }
            None => {
                header.set_size(10);
                builder
                    .append_data(&mut header, path, &b"#!/bin/sh\n"[..])
                    .expect("file");
            }
        }
    }
    builder.into_inner().expect("tar").finish().expect("gzip")
}

/// `drover release create web VERSION` with `spec` and a tarball of `entries`; exit code,
/// stdout, stderr.
fn release_create(
    coordinator: &TestCoordinator,
    dir: &std::path::Path,
    version: &str,
    spec: &str,
    entries: &[(&str, u32, Option<&str>)],
) -> (Option<i32>, String, String) {
    let spec_path = dir.join(format!("drover-{version}.toml"));
    std::fs::write(&spec_path, spec).expect("spec");
    let artifact = dir.join(format!("web-{version}.tar.gz"));
    std::fs::write(&artifact, tarball(entries)).expect("tarball");
    tokio::task::block_in_place(|| {
        drover(
            coordinator,
            &[
                "release",
                "create",
                "web",
                version,
                "--spec",
                spec_path.to_str().expect("path"),
                "--artifact",
                artifact.to_str().expect("path"),
            ],
        )
    })
}

fn blob_count(coordinator: &TestCoordinator) -> usize {
    std::fs::read_dir(coordinator.data_dir.join("blobs/sha256"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

async fn release_versions(coordinator: &TestCoordinator) -> Vec<String> {
    let releases = coordinator.admin.ok(Method::GET, "/v1/admin/releases/web", None).await;
    releases
        .as_array()
        .expect("list")
        .iter()
        .map(|release| release["version"].as_str().expect("version").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_create_refuses_a_tarball_without_its_program() {
    let coordinator = TestCoordinator::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The classic mistake: the tree was packed with its top directory.
    let entries = [("web-1.0/bin/web", 0o755, None), ("web-1.0/README", 0o644, None)];
    let (code, _, stderr) = release_create(&coordinator, dir.path(), "1.0", &web_spec(None), &entries);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("web-1.0.tar.gz: the tarball has no bin/web, the program [service] command runs"),
        "{stderr}"
    );
    assert_eq!(blob_count(&coordinator), 0, "refused before the upload");
    assert!(
        release_versions(&coordinator).await.is_empty(),
        "no release, no version burnt"
    );

    // Fixed, the same version goes through.
    let entries = [("bin/web", 0o755, None), ("README", 0o644, None)];
    let (code, stdout, stderr) = release_create(&coordinator, dir.path(), "1.0", &web_spec(None), &entries);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("release web 1.0"), "{stdout}");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_create_refuses_a_program_that_is_not_executable() {
    let coordinator = TestCoordinator::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, stderr) = release_create(
        &coordinator,
        dir.path(),
        "1.0",
        &web_spec(None),
        &[("bin/web", 0o644, None)],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("bin/web in the tarball is not executable by the app's user (mode 0644)")
            && stderr.contains("chmod 755 bin/web"),
        "{stderr}"
    );
    // Executable by its owner (root) only: a dynamic user cannot run it.
    let (code, _, stderr) = release_create(
        &coordinator,
        dir.path(),
        "1.1",
        &web_spec(None),
        &[("bin/web", 0o700, None)],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("(mode 0700)"), "{stderr}");
    // A directory where the program should be.
    let (code, _, stderr) = release_create(
        &coordinator,
        dir.path(),
        "1.2",
        &web_spec(None),
        &[("bin/web/x", 0o755, None)],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(blob_count(&coordinator), 0, "{stderr}");
    assert!(release_versions(&coordinator).await.is_empty());
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_create_warns_about_a_user_a_fresh_host_lacks() {
    let coordinator = TestCoordinator::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let entries = [("bin/web", 0o755, None)];
    let (code, _, stderr) = release_create(&coordinator, dir.path(), "1.0", &web_spec(Some("web")), &entries);
    assert_eq!(code, Some(0), "a warning, not a refusal: {stderr}");
    assert!(
        stderr.contains("warning: ") && stderr.contains("[service] user = \"web\": the agent does not create users"),
        "{stderr}"
    );
    let (code, _, stderr) = release_create(&coordinator, dir.path(), "1.1", &web_spec(Some("nobody")), &entries);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_a_release_whose_uploaded_tarball_lacks_the_program() {
    let coordinator = TestCoordinator::start().await;
    let admin = &coordinator.admin;
    let create = |digest: &str, version: &str| {
        json!({"app": "web", "version": version,
               "spec": {"service": {"command": ["bin/web"]}},
               "artifact": {"kind": "stored_tarball", "digest": digest}})
    };
    let cases = [
        (
            tarball(&[("bin/other", 0o755, None)]),
            "program_not_in_tarball",
            "the tarball has no bin/web",
        ),
        (
            tarball(&[("bin/web", 0o640, None)]),
            "program_not_executable",
            "bin/web in the tarball is not executable",
        ),
        (
            b"not a tarball".to_vec(),
            "not_a_tarball",
            "not a gzip-compressed tar archive",
        ),
    ];
    for (bytes, code, message) in cases {
        let digest = admin.upload(bytes).await;
        let (status, body) = admin
            .call(Method::POST, "/v1/admin/releases", Some(create(&digest, "1.0")))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let error: Value = serde_json::from_str(&body).expect("error body");
        assert_eq!(error["code"], code, "{body}");
        let text = error["error"].as_str().expect("error text");
        assert!(
            text.starts_with(&format!("release web 1.0: uploaded artifact {digest}: {message}")),
            "{text}"
        );
    }
    assert!(release_versions(&coordinator).await.is_empty(), "nothing created");
    let good = admin.upload(tarball(&[("bin/web", 0o755, None)])).await;
    let (status, body) = admin
        .call(Method::POST, "/v1/admin/releases", Some(create(&good, "1.0")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_program_is_a_symlink_inside_the_tarball_is_accepted() {
    let coordinator = TestCoordinator::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let entries = [
        ("bin/web", 0o777, Some("../libexec/web-1.0")),
        ("libexec/web-1.0", 0o755, None),
    ];
    let (code, stdout, stderr) = release_create(&coordinator, dir.path(), "1.0", &web_spec(None), &entries);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("release web 1.0"), "{stdout}");
    // A symlink out of the release is not a program the agent will run.
    let entries = [("bin/web", 0o777, Some("../../usr/bin/web"))];
    let (code, _, stderr) = release_create(&coordinator, dir.path(), "1.1", &web_spec(None), &entries);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("bin/web in the tarball is a symlink to ../../usr/bin/web"),
        "{stderr}"
    );
    assert_eq!(release_versions(&coordinator).await, ["1.0"]);
    coordinator.stop().await;
}

/// A TCP relay in front of the coordinator that closes its first connection the moment
/// the client sends its request (its second TLS application-data record: the first is the
/// client's TLS 1.3 Finished), without an answer, as a coordinator shedding connections
/// that have not shown a token yet does; later connections are relayed untouched.
/// Returns its address, how many connections it took, and whether it closed one.
async fn closing_relay(
    upstream: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (counter, flag) = (accepted.clone(), closed.clone());
    tokio::spawn(async move {
        // Bounded: the test makes a handful of connections.
        for _ in 0..16 {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
            let flag = flag.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                if !first {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let answers = tokio::spawn(async move { tokio::io::copy(&mut server_read, &mut client_write).await });
                // Client to server, record by record, until the second application-data one.
                let mut application_records = 0;
                loop {
                    let mut header = [0u8; 5];
                    if client_read.read_exact(&mut header).await.is_err() {
                        break;
                    }
                    let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
                    let mut record = vec![0u8; length];
                    if client_read.read_exact(&mut record).await.is_err() {
                        break;
                    }
                    if header[0] == 23 {
                        application_records += 1;
                        if application_records == 2 {
                            flag.store(true, Ordering::SeqCst);
                            break;
                        }
                    }
                    if server_write.write_all(&header).await.is_err() || server_write.write_all(&record).await.is_err()
                    {
                        break;
                    }
                }
                // Dropping both halves closes the client's connection with no answer.
                answers.abort();
            });
        }
    });
    (address, accepted, closed)
}

/// `drover status` while the coordinator closes the connection before answering (it
/// sheds connections that have not shown a token when a whole fleet reconnects at once):
/// a read is asked again and succeeds; before, the operator got "peer closed connection".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_connection_closed_before_the_answer_is_asked_again() {
    let coordinator = TestCoordinator::start().await;
    let upstream: std::net::SocketAddr = coordinator
        .url()
        .trim_start_matches("https://")
        .parse()
        .expect("coordinator address");
    let (relay, accepted, closed) = closing_relay(upstream).await;
    let output = tokio::task::spawn_blocking({
        let data_dir = coordinator.data_dir.clone();
        move || {
            std::process::Command::new(drover_tests::binary("drover"))
                .args(["status"])
                .env("DROVER_DATA_DIR", &data_dir)
                .env("DROVER_ADDR", format!("https://{relay}"))
                .env_remove("DROVER_TOKEN")
                .env_remove("DROVER_CA")
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run drover")
        }
    })
    .await
    .expect("drover ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        closed.load(std::sync::atomic::Ordering::SeqCst),
        "the relay never closed a request: the test proves nothing ({stderr})"
    );
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    coordinator.stop().await;
}
