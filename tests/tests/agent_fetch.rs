//! The agent's artifact download against the real coordinator over mTLS: verified while
//! streaming, capped at the manifest's size, resumed with Range, and nothing unverified
//! ever left under an artifact's digest.

use drover_agent::fetch::{Cache, FetchError};
use drover_protocol::Digest;
use drover_protocol::manifest::HttpUrl;
use drover_tests::fleet::{Agent, TestCoordinator};
use reqwest::Method;
use serde_json::json;

/// A coordinator with `web 1.0.0` pinned to host web-01, whose artifact is `content`.
async fn setup(content: &[u8]) -> (TestCoordinator, Agent, HttpUrl, Digest) {
    let coordinator = TestCoordinator::start().await;
    let agent = coordinator.enroll("web-01", &[]).await;
    let digest = coordinator
        .admin
        .release_unchecked("web", "1.0.0", content.to_vec())
        .await;
    let pin = json!({"app": "web", "version": "1.0.0", "scope": {"kind": "host", "name": "web-01"}});
    coordinator.admin.ok(Method::PUT, "/v1/admin/pins", Some(pin)).await;
    let url = HttpUrl::try_from(format!("{}/v1/artifacts/{digest}", coordinator.url())).expect("url");
    (coordinator, agent, url, digest.parse().expect("digest"))
}

async fn served_bytes(coordinator: &TestCoordinator) -> u64 {
    let text = coordinator
        .admin
        .http
        .get(format!("{}/metrics", coordinator.url()))
        .send()
        .await
        .expect("metrics");
    let text = text.text().await.expect("text");
    text.lines()
        .find_map(|line| line.strip_prefix("drover_artifact_bytes_served_total "))
        .and_then(|value| value.parse().ok())
        .expect("counter present")
}

fn content() -> Vec<u8> {
    (0..300_000u32)
        .map(|index| (index.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

fn listing(cache: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .map(|entries| {
            entries
                .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_verifies_caches_and_does_not_download_twice() {
    let content = content();
    let (coordinator, agent, url, digest) = setup(&content).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let cache = Cache::new(scratch.path().join("cache"));
    let artifact = cache
        .fetch(&agent.http, &url, &digest, content.len() as u64)
        .await
        .expect("fetch");
    assert_eq!(std::fs::read(artifact.path()).expect("read"), content);
    assert_eq!(artifact.digest(), &digest);
    let served = served_bytes(&coordinator).await;
    cache
        .fetch(&agent.http, &url, &digest, content.len() as u64)
        .await
        .expect("cached");
    assert_eq!(
        served_bytes(&coordinator).await,
        served,
        "a cached artifact is not downloaded again"
    );
    assert_eq!(listing(&scratch.path().join("cache")), [digest.hex().to_owned()]);
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_refuses_wrong_digest_and_leaves_nothing() {
    let content = content();
    let (coordinator, agent, url, _) = setup(&content).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let cache = Cache::new(scratch.path().join("cache"));
    let claimed = Digest::of(b"what the manifest claims");
    let error = cache
        .fetch(&agent.http, &url, &claimed, content.len() as u64)
        .await
        .expect_err("mismatch");
    assert!(matches!(error, FetchError::DigestMismatch { .. }), "{error}");
    assert!(
        listing(&scratch.path().join("cache")).is_empty(),
        "nothing unverified is kept"
    );
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_cuts_off_a_download_larger_than_the_manifest_size() {
    let content = content();
    let (coordinator, agent, url, digest) = setup(&content).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let cache = Cache::new(scratch.path().join("cache"));
    let error = cache
        .fetch(&agent.http, &url, &digest, content.len() as u64 - 1)
        .await
        .expect_err("too large");
    assert!(matches!(error, FetchError::TooLarge { .. }), "{error}");
    assert!(listing(&scratch.path().join("cache")).is_empty());
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_keeps_a_short_download_as_partial() {
    let content = content();
    let (coordinator, agent, url, digest) = setup(&content).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let cache = Cache::new(scratch.path().join("cache"));
    let error = cache
        .fetch(&agent.http, &url, &digest, content.len() as u64 + 10)
        .await
        .expect_err("short");
    assert!(
        matches!(error, FetchError::Truncated { received, .. } if received == content.len() as u64),
        "{error}"
    );
    assert_eq!(
        listing(&scratch.path().join("cache")),
        [format!("{}.partial", digest.hex())]
    );
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_resumes_a_partial_download_with_range() {
    let content = content();
    let (coordinator, agent, url, digest) = setup(&content).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let cache_dir = scratch.path().join("cache");
    std::fs::create_dir_all(&cache_dir).expect("cache dir");
    let half = content.len() / 2;
    std::fs::write(cache_dir.join(format!("{}.partial", digest.hex())), &content[..half]).expect("partial");
    let before = served_bytes(&coordinator).await;
    let cache = Cache::new(&cache_dir);
    let artifact = cache
        .fetch(&agent.http, &url, &digest, content.len() as u64)
        .await
        .expect("resumed");
    assert_eq!(std::fs::read(artifact.path()).expect("read"), content);
    assert_eq!(
        served_bytes(&coordinator).await - before,
        (content.len() - half) as u64,
        "only the rest was sent"
    );
    assert_eq!(listing(&cache_dir), [digest.hex().to_owned()]);
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_detects_a_corrupt_partial_and_recovers_on_the_next_try() {
    let content = content();
    let (coordinator, agent, url, digest) = setup(&content).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let cache_dir = scratch.path().join("cache");
    std::fs::create_dir_all(&cache_dir).expect("cache dir");
    std::fs::write(cache_dir.join(format!("{}.partial", digest.hex())), vec![0xAAu8; 1000]).expect("partial");
    let cache = Cache::new(&cache_dir);
    let error = cache
        .fetch(&agent.http, &url, &digest, content.len() as u64)
        .await
        .expect_err("corrupt");
    assert!(matches!(error, FetchError::DigestMismatch { .. }), "{error}");
    assert!(listing(&cache_dir).is_empty(), "the corrupt partial is deleted");
    let artifact = cache
        .fetch(&agent.http, &url, &digest, content.len() as u64)
        .await
        .expect("second try");
    assert_eq!(std::fs::read(artifact.path()).expect("read"), content);
    coordinator.stop().await;
}

/// A tar.gz of a tiny release made with the system's tar: `bin/app` and `etc/app.conf`.
fn release_tarball(dir: &std::path::Path) -> Vec<u8> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("bin")).expect("bin");
    std::fs::create_dir_all(tree.join("etc")).expect("etc");
    std::fs::write(tree.join("bin/app"), "#!/bin/sh\necho hello\n").expect("app");
    std::fs::write(tree.join("etc/app.conf"), "port = 8080\n").expect("conf");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(tree.join("bin/app"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let archive = dir.join("release.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success());
    std::fs::read(archive).expect("tarball")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_artifact_is_staged_beside_the_running_release() {
    let scratch = tempfile::tempdir().expect("scratch");
    let tarball = release_tarball(scratch.path());
    let (coordinator, agent, url, digest) = setup(&tarball).await;
    let state = scratch.path().join("state");
    let cache = Cache::new(state.join("cache"));
    let artifact = cache
        .fetch(&agent.http, &url, &digest, tarball.len() as u64)
        .await
        .expect("fetch");
    let app: drover_protocol::AppName = "web".parse().expect("app");
    let version: drover_protocol::Version = "1.0.0".parse().expect("version");
    let limits = drover_agent::unpack::UnpackLimits::default();
    let staged = drover_agent::install::stage(&artifact, &state, &app, &version, &limits).expect("stage");
    assert_eq!(staged.path(), state.join("apps/web/releases/1.0.0"));
    assert_eq!(
        std::fs::read_to_string(staged.path().join("etc/app.conf")).expect("conf"),
        "port = 8080\n"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(staged.path().join("bin/app"))
        .expect("app")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o755);
    let releases = listing(&state.join("apps/web/releases"));
    assert_eq!(releases, ["1.0.0"], "no staging directory is left behind");
    // Staging again reuses the complete release.
    assert_eq!(
        drover_agent::install::stage(&artifact, &state, &app, &version, &limits).expect("again"),
        staged
    );
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_archive_is_refused_and_leaves_no_release() {
    // Valid as an artifact (its digest matches), but not a tar.gz.
    let garbage = b"this is not a gzip stream at all".to_vec();
    let (coordinator, agent, url, digest) = setup(&garbage).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let state = scratch.path().join("state");
    let artifact = Cache::new(state.join("cache"))
        .fetch(&agent.http, &url, &digest, garbage.len() as u64)
        .await
        .expect("fetch");
    let app: drover_protocol::AppName = "web".parse().expect("app");
    let version: drover_protocol::Version = "1.0.0".parse().expect("version");
    let error = drover_agent::install::stage(
        &artifact,
        &state,
        &app,
        &version,
        &drover_agent::unpack::UnpackLimits::default(),
    )
    .expect_err("refused");
    assert!(error.to_string().contains("unpacking web 1.0.0"), "{error}");
    assert!(
        listing(&state.join("apps/web/releases")).is_empty(),
        "neither a release nor a staging directory"
    );
    coordinator.stop().await;
}
