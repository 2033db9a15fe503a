//! Tarball releases kept in an OCI registry (issue 16, "artifacts in a registry"): the
//! real `drover` binary pushes a tar.gz to Debian's `docker-registry` on 127.0.0.1 with
//! `release create --artifact FILE --registry REGISTRY/REPO`, an in-process coordinator
//! records the artifact pinned by the manifest digest the CLI computed, and the agent
//! library fetches the tarball from the registry by digest as its executor does, refusing
//! bytes that do not match.
//!
//! Needs `docker-registry` (see `drover_tests::registry`) and the built binaries
//! (`cargo build -p drover-coordinator -p drover-agent --bins`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use drover_agent::config::{RegistryConfig, RegistryTransport};
use drover_agent::fetch::{Cache, FetchError};
use drover_agent::oci::pull::{PullError, pull_tarball};
use drover_agent::oci::registry::Registries;
use drover_protocol::api::Release;
use drover_protocol::manifest::OciReference;
use drover_protocol::oci::{MEDIA_TYPE_OCI_MANIFEST, check_tarball_artifact_manifest};
use drover_protocol::{AppName, Artifact, Digest, accept};
use drover_tests::e2e::{Behaviour, Releases};
use drover_tests::fleet::{Poll, TestCoordinator};
use drover_tests::now_real;
use drover_tests::registry::Registry;
use drover_tests::replicas::Replicas;

/// What one `drover` run produced.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "drover failed: {self:#?}");
        self
    }

    fn fails(self, code: i32) -> String {
        assert_eq!(self.code, Some(code), "expected exit {code}: {self:#?}");
        self.stderr
    }
}

/// Runs the real `drover` binary against the in-process coordinator, plus `env`. The
/// caller's DROVER_* variables never leak in.
fn drover(coordinator: &TestCoordinator, args: &[&str], env: &[(&str, &str)]) -> Run {
    drover_at(&coordinator.data_dir, &coordinator.url(), args, env)
}

/// [`drover`] against the coordinator at `url` whose data directory (admin token, CA) is
/// `data_dir`.
fn drover_at(data_dir: &Path, url: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = std::process::Command::new(drover_tests::binary("drover"));
    command
        .args(args)
        .env("DROVER_DATA_DIR", data_dir)
        .env("DROVER_ADDR", url)
        .env_remove("DROVER_TOKEN")
        .env_remove("DROVER_CA")
        .env_remove("DROVER_REGISTRY")
        .env_remove("DROVER_REGISTRY_PASSWORD")
        .stdin(std::process::Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::task::block_in_place(|| command.output()).expect("run drover");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn list_releases(coordinator: &TestCoordinator, app: &str) -> Vec<Release> {
    list_releases_at(&coordinator.data_dir, &coordinator.url(), app)
}

/// [`list_releases`] of the coordinator at `url` (see [`drover_at`]).
fn list_releases_at(data_dir: &Path, url: &str, app: &str) -> Vec<Release> {
    let run = drover_at(data_dir, url, &["release", "list", app, "-o", "json"], &[]).ok();
    serde_json::from_str(&run.stdout).unwrap_or_else(|error| panic!("release list JSON: {error}\n{}", run.stdout))
}

fn artifact_of(coordinator: &TestCoordinator, app: &str, version: &str) -> Artifact {
    list_releases(coordinator, app)
        .into_iter()
        .find(|release| release.version.as_str() == version)
        .unwrap_or_else(|| panic!("no release {app} {version}"))
        .artifact
}

/// `GET /v2/<repository>/<kind>/<name>` on the registry: status and body.
async fn registry_get(registry: &Registry, repository: &str, kind: &str, name: &str) -> (u16, Vec<u8>) {
    let response = registry
        .http_client()
        .get(format!("{}/v2/{repository}/{kind}/{name}", registry.base_url()))
        .header(reqwest::header::ACCEPT, MEDIA_TYPE_OCI_MANIFEST)
        .send()
        .await
        .expect("registry request");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("registry body").to_vec())
}

/// What the agent reads for this registry: plain HTTP, anonymous.
fn agent_registries(registry: &Registry) -> Registries {
    let config = RegistryConfig {
        transport: RegistryTransport::PlainHttp,
        ..RegistryConfig::default()
    };
    Registries::new(BTreeMap::from([(registry.host(), config)]), &[])
}

/// Pushes `sample-<version>.tar.gz` as release web `version`; returns the artifact's
/// reference, the tarball's digest and size, and the tarball's bytes.
fn push_release(
    coordinator: &TestCoordinator,
    releases: &Releases,
    repository: &str,
    version: &str,
) -> (OciReference, Digest, u64, Vec<u8>) {
    let spec = releases.spec("web", 8080, Behaviour::Good).expect("spec");
    let tarball = releases.tarball(version, 4096).expect("tarball");
    let run = drover(
        coordinator,
        &[
            "release",
            "create",
            "web",
            version,
            "--spec",
            spec.to_str().expect("utf-8"),
            "--artifact",
            tarball.to_str().expect("utf-8"),
            "--registry",
            repository,
            "--registry-insecure",
        ],
        &[],
    )
    .ok();
    let Artifact::OciTarball {
        reference,
        digest,
        size,
    } = artifact_of(coordinator, "web", version)
    else {
        panic!("release web {version} is not a tarball in a registry: {run:#?}");
    };
    assert!(run.stdout.contains(reference.as_str()), "{run:#?}");
    (reference, digest, size, std::fs::read(&tarball).expect("tarball bytes"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarball_pushed_with_release_create_is_an_oci_artifact_pinned_by_digest() {
    let registry = tokio::task::block_in_place(|| Registry::start_plain().expect("registry"));
    let coordinator = TestCoordinator::start().await;
    let releases = Releases::new().expect("releases");
    let repository = format!("{}/drover/web", registry.host());
    let (reference, digest, size, bytes) = push_release(&coordinator, &releases, &repository, "1");
    assert_eq!(digest, Digest::of(&bytes), "the release names the tarball's sha256");
    assert_eq!(size, bytes.len() as u64);
    let manifest_digest = reference.digest();
    assert_eq!(reference.as_str(), format!("{repository}@{manifest_digest}"));

    // The registry serves that manifest by digest and under the tag web-1, and the
    // tarball as its one layer.
    let (status, manifest) = registry_get(&registry, "drover/web", "manifests", manifest_digest.as_str()).await;
    assert_eq!(status, 200);
    assert_eq!(Digest::of(&manifest), manifest_digest);
    check_tarball_artifact_manifest(&manifest, &digest, size).expect("a drover tarball artifact");
    let (status, tagged) = registry_get(&registry, "drover/web", "manifests", "web-1").await;
    assert_eq!((status, &tagged), (200, &manifest), "tagged APP-VERSION");
    let (status, blob) = registry_get(&registry, "drover/web", "blobs", digest.as_str()).await;
    assert_eq!((status, &blob), (200, &bytes));

    // Created again: the same release, and the tarball is not sent again.
    let spec = releases.spec("web", 8080, Behaviour::Good).expect("spec");
    let tarball = releases.path().join("sample-1.tar.gz");
    let args = [
        "release",
        "create",
        "web",
        "1",
        "--spec",
        spec.to_str().expect("utf-8"),
        "--artifact",
        tarball.to_str().expect("utf-8"),
        "--registry-insecure",
    ];
    let again = drover(&coordinator, &args, &[("DROVER_REGISTRY", &repository)]).ok();
    assert!(again.stderr.contains("not sent again"), "{again:#?}");
    assert_eq!(releases_count(&coordinator), 1);
    assert_eq!(
        artifact_of(&coordinator, "web", "1"),
        Artifact::OciTarball {
            reference: reference.clone(),
            digest: digest.clone(),
            size
        },
        "DROVER_REGISTRY stands for --registry"
    );
    coordinator.stop().await;
}

fn releases_count(coordinator: &TestCoordinator) -> usize {
    list_releases(coordinator, "web").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_fetches_a_registry_tarball_by_digest_and_refuses_a_tampered_blob() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = tokio::task::block_in_place(|| Registry::start_plain().expect("registry"));
    let coordinator = TestCoordinator::start().await;
    let releases = Releases::new().expect("releases");
    let repository = format!("{}/drover/web", registry.host());
    let (reference, digest, size, bytes) = push_release(&coordinator, &releases, &repository, "1");

    let directory = tempfile::tempdir().expect("tempdir");
    let cache = Cache::new(directory.path().join("cache"));
    let fetched = pull_tarball(&agent_registries(&registry), &cache, &reference, &digest, size, 1 << 30)
        .await
        .expect("fetched from the registry");
    assert_eq!(std::fs::read(fetched.artifact.path()).expect("cached"), bytes);
    assert!(fetched.downloaded > size, "the manifest and the tarball came");

    // The registry's stored blob is changed behind its back: the agent refuses it.
    registry.corrupt_blob(digest.as_str()).expect("corrupt the blob");
    let fresh = tempfile::tempdir().expect("tempdir");
    let cache = Cache::new(fresh.path().join("cache"));
    let error = pull_tarball(&agent_registries(&registry), &cache, &reference, &digest, size, 1 << 30)
        .await
        .expect_err("a tampered blob");
    assert!(
        matches!(
            &error,
            PullError::Blob {
                source: FetchError::DigestMismatch { .. },
                ..
            }
        ),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains(reference.as_str()) && message.contains(digest.as_str()) && message.contains("refused"),
        "{message}"
    );
    assert!(!cache.path_of(&digest).exists(), "nothing unverified in the cache");
    let left: Vec<_> = std::fs::read_dir(fresh.path().join("cache"))
        .map(|entries| entries.filter_map(Result::ok).map(|entry| entry.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no partial file of bytes that hash wrong: {left:?}");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushing_is_refused_before_any_network_access_when_it_could_not_work() {
    let registry = tokio::task::block_in_place(|| Registry::start_plain().expect("registry"));
    let coordinator = TestCoordinator::start().await;
    let releases = Releases::new().expect("releases");
    let spec = releases.spec("web", 8080, Behaviour::Good).expect("spec");
    let spec = spec.to_str().expect("utf-8");
    let tarball = releases.tarball("1", 0).expect("tarball");
    let tarball = tarball.to_str().expect("utf-8");
    let repository = format!("{}/drover/web", registry.host());
    let tagged = format!("{repository}:1");
    let base = ["release", "create", "web", "1", "--spec", spec];
    for (extra, expected) in [
        (
            vec!["--artifact", tarball, "--registry", &tagged],
            "names a tag or digest",
        ),
        (
            vec!["--artifact", tarball, "--registry", "drover/web"],
            "names no registry",
        ),
        (
            vec![
                "--artifact",
                "https://example.com/web.tar.gz",
                "--digest",
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "--size",
                "1",
                "--registry",
                &repository,
            ],
            "is not pushed",
        ),
        (
            vec!["--image", &format!("{repository}:1"), "--registry", &repository],
            "is not pushed",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend(extra.iter().copied());
        let stderr = drover(&coordinator, &args, &[]).fails(2);
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
    // A tarball without the spec's program is refused before anything is pushed.
    let other_spec = releases.path().join("other.toml");
    std::fs::write(&other_spec, "[service]\ncommand = [\"bin/not-there\"]\n").expect("spec");
    let stderr = drover(
        &coordinator,
        &[
            "release",
            "create",
            "web",
            "2",
            "--spec",
            other_spec.to_str().expect("utf-8"),
            "--artifact",
            tarball,
            "--registry",
            &repository,
            "--registry-insecure",
        ],
        &[],
    )
    .fails(2);
    assert!(stderr.contains("bin/not-there"), "{stderr}");
    // A version released without the registry is not pushed again as another artifact.
    let upload = ["release", "create", "web", "3", "--spec", spec, "--artifact", tarball];
    drover(&coordinator, &upload, &[]).ok();
    let stderr = drover(&coordinator, &upload, &[("DROVER_REGISTRY", &repository)]).fails(4);
    assert!(stderr.contains("not kept in a registry"), "{stderr}");
    let catalog = registry
        .http_client()
        .get(format!("{}/v2/_catalog", registry.base_url()))
        .send()
        .await
        .expect("catalog")
        .text()
        .await
        .expect("catalog body");
    assert!(!catalog.contains("drover/web"), "nothing was pushed: {catalog}");
    assert_eq!(
        list_releases(&coordinator, "web").len(),
        1,
        "only the uploaded release 3"
    );
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_takes_registry_tarballs_pinned_by_digest_and_hosts_get_them_signed() {
    let coordinator = TestCoordinator::start().await;
    let agent = coordinator.enroll("web-01", &[("env", "prod")]).await;
    let Poll::Changed(_, etag) = agent.poll(None, 10).await else {
        panic!("expected a first manifest");
    };
    let manifest_digest = format!("sha256:{}", "ab".repeat(32));
    let tarball_digest = format!("sha256:{}", "cd".repeat(32));
    let request = |reference: &str, spec: serde_json::Value| {
        serde_json::json!({
            "app": "web", "version": "1", "spec": spec,
            "artifact": {"kind": "registry_tarball", "reference": reference, "digest": tarball_digest, "size": 1234},
        })
    };
    let command = serde_json::json!({"service": {"command": ["bin/app"]}});
    for (reference, spec, code) in [
        (
            format!("docker.io/web@{manifest_digest}"),
            command.clone(),
            "bad_artifact_reference",
        ),
        (
            format!("r.example.com/web:1@{manifest_digest}"),
            command.clone(),
            "bad_artifact_reference",
        ),
        // A tarball, wherever it is kept, needs the command.
        (
            format!("r.example.com/web@{manifest_digest}"),
            serde_json::json!({"service": {"restart": "always"}}),
            "command_required",
        ),
    ] {
        let (status, body) = coordinator
            .admin
            .call(
                reqwest::Method::POST,
                "/v1/admin/releases",
                Some(request(&reference, spec)),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{reference}: {body}");
        assert!(body.contains(code), "{reference}: {body}");
    }
    let reference = format!("r.example.com/drover/web@{manifest_digest}");
    let created = coordinator
        .admin
        .ok(
            reqwest::Method::POST,
            "/v1/admin/releases",
            Some(request(&reference, command.clone())),
        )
        .await;
    assert_eq!(created["artifact"]["kind"], "oci_tarball");
    assert_eq!(created["artifact"]["reference"], reference.as_str());
    assert_eq!(created["artifact"]["digest"], tarball_digest.as_str());
    assert_eq!(created["artifact"]["size"], 1234);

    drover(&coordinator, &["pin", "web", "1"], &[]).ok();
    let Poll::Changed(envelope, _) = agent.poll(Some(&etag), 10).await else {
        panic!("expected the pinned manifest");
    };
    let verified = accept(&envelope, &agent.trust(), &agent.host, None, now_real()).expect("manifest verifies");
    let app: AppName = "web".parse().expect("app");
    assert_eq!(
        verified.manifest().apps[&app].artifact,
        Artifact::OciTarball {
            reference: OciReference::try_from(reference).expect("reference"),
            digest: tarball_digest.parse().expect("digest"),
            size: 1234,
        },
        "the host's signed manifest names the artifact and the tarball by digest"
    );
    coordinator.stop().await;
}

/// Coordinators started with `--artifact-registry REGISTRY/PREFIX` name the registry
/// themselves: on PostgreSQL, where they refuse uploads, `drover release create --artifact
/// FILE` with no `--registry` pushes the tarball to PREFIX/APP and records it by digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_an_artifact_registry_get_tarballs_pushed_there_without_a_registry_flag() {
    let registry = tokio::task::block_in_place(|| Registry::start_plain().expect("registry"));
    let prefix = format!("{}/drover", registry.host());
    let replicas = tokio::task::block_in_place(|| {
        Replicas::start_with(1, Ipv4Addr::LOCALHOST, &["--artifact-registry", &format!("{prefix}/")])
    });
    let replica = &replicas.replicas[0];
    let settings: drover_protocol::api::CoordinatorSettings = replica
        .admin()
        .ok(reqwest::Method::GET, "/v1/admin/settings", None)
        .await
        .as_object()
        .map(|object| serde_json::from_value(serde_json::Value::Object(object.clone())).expect("settings"))
        .expect("settings object");
    assert_eq!(
        settings.artifact_registry.as_deref(),
        Some(prefix.as_str()),
        "the trailing / is dropped"
    );

    let releases = Releases::new().expect("releases");
    let spec = releases.spec("web", 8080, Behaviour::Good).expect("spec");
    let tarball = releases.tarball("1", 4096).expect("tarball");
    let (spec, tarball) = (spec.to_str().expect("utf-8"), tarball.to_str().expect("utf-8"));
    let create = ["release", "create", "web", "1", "--spec", spec, "--artifact", tarball];
    let run = drover_at(
        &replica.data_dir,
        &replica.url(),
        &[&create[..], &["--registry-insecure"]].concat(),
        &[],
    )
    .ok();
    assert!(run.stderr.contains(&format!("pushing to {prefix}/web")), "{run:#?}");
    let listed = list_releases_at(&replica.data_dir, &replica.url(), "web");
    let Artifact::OciTarball { reference, digest, .. } = &listed[0].artifact else {
        panic!("not a registry tarball: {listed:#?}");
    };
    assert!(
        reference.as_str().starts_with(&format!("{prefix}/web@sha256:")),
        "{reference:?}"
    );
    let bytes = std::fs::read(tarball).expect("tarball bytes");
    assert_eq!(*digest, Digest::of(&bytes));
    let (status, blob) = registry_get(&registry, "drover/web", "blobs", digest.as_str()).await;
    assert_eq!((status, blob), (200, bytes), "the tarball is in the registry");

    // An explicit --registry still wins (without the setting, the upload is refused,
    // saying to set it: tests/postgres_serve.rs).
    let elsewhere = format!("{}/other/web", registry.host());
    let create = ["release", "create", "web", "2", "--spec", spec, "--artifact", tarball];
    let run = drover_at(
        &replica.data_dir,
        &replica.url(),
        &[&create[..], &["--registry", &elsewhere, "--registry-insecure"]].concat(),
        &[],
    );
    let run = run.ok();
    assert!(!run.stderr.contains("pushing to"), "{run:#?}");
    let listed = list_releases_at(&replica.data_dir, &replica.url(), "web");
    let second = listed
        .iter()
        .find(|release| release.version.as_str() == "2")
        .expect("release 2");
    assert!(
        matches!(&second.artifact, Artifact::OciTarball { reference, .. } if reference.as_str().starts_with(&format!("{elsewhere}@"))),
        "{second:#?}"
    );
}
