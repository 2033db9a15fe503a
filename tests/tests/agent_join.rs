//! `drover-agent join` and `drover-agent check` as real processes against an in-process
//! coordinator: the CA pinned by hash, the identity stored privately, the config written,
//! and every way enrollment can go wrong refused with a clear message.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;

use drover_tests::binary;
use drover_tests::fleet::TestCoordinator;

/// Runs `drover-agent` with `args` off the async runtime.
async fn agent(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary("drover-agent"))
            .args(&args)
            .output()
            .expect("run drover-agent")
    })
    .await
    .expect("blocking task")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn ca_sha256_of(join_command: &str) -> String {
    join_command
        .rsplit("--ca-sha256 ")
        .next()
        .expect("hash in the join command")
        .trim()
        .to_owned()
}

fn join_args(url: &str, token: &str, ca_sha256: &str, dir: &Path, host: &str) -> Vec<String> {
    vec![
        "join".into(),
        url.into(),
        "--token".into(),
        token.into(),
        "--ca-sha256".into(),
        ca_sha256.into(),
        "--config".into(),
        dir.join("agent.toml").display().to_string(),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
        "--host-id".into(),
        host.into(),
    ]
}

fn check_args(dir: &Path) -> Vec<String> {
    vec![
        "check".into(),
        "--config".into(),
        dir.join("agent.toml").display().to_string(),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_pins_the_ca_stores_a_private_identity_and_check_passes() {
    let coordinator = TestCoordinator::start().await;
    let token = coordinator.admin.token(&[("env", "prod")], None).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path();

    let output = agent(join_args(
        &coordinator.url(),
        &token.token,
        &ca_sha256_of(&token.join_command),
        dir,
        "web-01",
    ))
    .await;
    assert!(output.status.success(), "join failed: {}", stderr(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("as web-01 (labels: env=prod)"), "{printed}");

    let state = dir.join("state");
    let mode = |path: &Path| std::fs::metadata(path).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&state.join("identity/host.key")), 0o600);
    assert_eq!(mode(&state.join("identity")), 0o700, "the identity is private");
    assert_eq!(mode(&state), 0o755, "apps running as other users reach their releases");
    assert!(state.join("trust.json").is_file());
    let config = std::fs::read_to_string(dir.join("agent.toml")).expect("config written");
    assert!(
        config.contains(&format!("coordinator = \"{}\"", coordinator.url())),
        "{config}"
    );
    assert!(config.contains("host_id = \"web-01\""), "{config}");

    let output = agent(check_args(dir)).await;
    assert!(output.status.success(), "check failed: {}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("ok: host web-01"));

    // The coordinator sees the host.
    let hosts = coordinator
        .admin
        .ok(reqwest::Method::GET, "/v1/admin/hosts", None)
        .await;
    assert_eq!(hosts[0]["id"], "web-01");
    assert_eq!(hosts[0]["labels"]["env"], "prod");

    // Joining again without --force is refused and changes nothing.
    let again = coordinator.admin.token(&[], Some("web-01")).await;
    let before = std::fs::read(state.join("identity/host.pem")).expect("certificate");
    let output = agent(join_args(
        &coordinator.url(),
        &again.token,
        &ca_sha256_of(&again.join_command),
        dir,
        "web-01",
    ))
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("already joined"), "{}", stderr(&output));
    assert_eq!(
        std::fs::read(state.join("identity/host.pem")).expect("certificate"),
        before
    );
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_refuses_a_coordinator_whose_ca_does_not_match_the_pin() {
    let coordinator = TestCoordinator::start().await;
    let token = coordinator.admin.token(&[], None).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let wrong = "0".repeat(64);
    let output = agent(join_args(
        &coordinator.url(),
        &token.token,
        &wrong,
        scratch.path(),
        "web-01",
    ))
    .await;
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("does not have the pinned sha256"), "{message}");
    assert!(!scratch.path().join("state").exists(), "nothing is written");
    // The token was never sent to the impostor, so it still works.
    let output = agent(join_args(
        &coordinator.url(),
        &token.token,
        &ca_sha256_of(&token.join_command),
        scratch.path(),
        "web-01",
    ))
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_reports_a_used_token_and_writes_nothing() {
    let coordinator = TestCoordinator::start().await;
    let token = coordinator.admin.token(&[], None).await;
    let pin = ca_sha256_of(&token.join_command);
    let first = tempfile::tempdir().expect("scratch");
    assert!(
        agent(join_args(
            &coordinator.url(),
            &token.token,
            &pin,
            first.path(),
            "web-01"
        ))
        .await
        .status
        .success()
    );
    let second = tempfile::tempdir().expect("scratch");
    let output = agent(join_args(
        &coordinator.url(),
        &token.token,
        &pin,
        second.path(),
        "web-02",
    ))
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("already used"), "{}", stderr(&output));
    assert!(!second.path().join("state").exists());
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_exits_64_listing_every_problem() {
    let scratch = tempfile::tempdir().expect("scratch");
    let config = scratch.path().join("agent.toml");
    std::fs::write(
        &config,
        "coordinator = \"http://plain\"\nhost_id = \"Not Valid\"\nstate_dir = \"relative\"\npoll_interval = \"0s\"\n",
    )
    .expect("write config");
    let output = agent(vec!["check".into(), "--config".into(), config.display().to_string()]).await;
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
    let message = stderr(&output);
    for problem in ["https:// URL", "host_id", "state_dir", "poll_interval"] {
        assert!(message.contains(problem), "{problem} missing in: {message}");
    }

    std::fs::write(&config, "coordinater = \"https://x\"\n").expect("write config");
    let output = agent(vec!["check".into(), "--config".into(), config.display().to_string()]).await;
    assert_eq!(output.status.code(), Some(64));
    assert!(stderr(&output).contains("coordinater"), "{}", stderr(&output));

    let missing = scratch.path().join("absent.toml");
    let output = agent(vec!["check".into(), "--config".into(), missing.display().to_string()]).await;
    assert_eq!(
        output.status.code(),
        Some(64),
        "a missing config file is a config error for check"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_when_the_host_has_not_joined() {
    let scratch = tempfile::tempdir().expect("scratch");
    let config = scratch.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\nhost_id = \"web-01\"\n",
            scratch.path().join("state").display()
        ),
    )
    .expect("write config");
    let output = agent(vec!["check".into(), "--config".into(), config.display().to_string()]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("has not joined"), "{}", stderr(&output));
}
