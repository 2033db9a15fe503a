//! `drover release create --image REF` against a real registry (Debian's
//! `docker-registry`, images built with `umoci` and pushed with `skopeo`, see
//! `drover_tests::registry`) and an in-process coordinator: the real `drover` binary
//! resolves the tag on this machine, and the release, the pins and the hosts' signed
//! manifests carry only the digest it resolved to.

use std::path::PathBuf;

use drover_protocol::api::Release;
use drover_protocol::{AppName, Artifact, Digest, accept};
use drover_tests::fleet::{Agent, Poll, TestCoordinator};
use drover_tests::now_real;
use drover_tests::registry::{LayerOp, OciImage, Registry};

/// A spec for image releases; the command overrides the image's Entrypoint and Cmd.
const SPEC: &str = r#"[service]
command = ["/app/server", "--port", "8080"]
restart = "always"
"#;

/// What one `drover` run produced.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    fn ok(self) -> String {
        assert_eq!(self.code, Some(0), "drover failed: {self:#?}");
        self.stdout
    }

    /// Asserts exit `code` and returns stderr.
    fn fails(self, code: i32) -> String {
        assert_eq!(self.code, Some(code), "expected exit {code}: {self:#?}");
        self.stderr
    }
}

/// `drover release create web VERSION --spec SPEC --image REFERENCE --registry-insecure
/// EXTRA...`, the image on the fixture's plain-HTTP registry.
fn release_from_plain_registry(
    coordinator: &TestCoordinator,
    spec: &str,
    version: &str,
    reference: &str,
    extra: &[&str],
) -> Run {
    let mut args = vec![
        "release",
        "create",
        "web",
        version,
        "--spec",
        spec,
        "--image",
        reference,
        "--registry-insecure",
    ];
    args.extend_from_slice(extra);
    drover(coordinator, &args, &[])
}

/// Runs the real `drover` binary against the in-process coordinator with its data
/// directory's admin token, plus `env`. The caller's DROVER_* variables never leak in.
fn drover(coordinator: &TestCoordinator, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = std::process::Command::new(drover_tests::binary("drover"));
    command
        .args(args)
        .env("DROVER_DATA_DIR", &coordinator.data_dir)
        .env("DROVER_ADDR", coordinator.url())
        .env_remove("DROVER_TOKEN")
        .env_remove("DROVER_CA")
        .env_remove("DROVER_REGISTRY_PASSWORD")
        .stdin(std::process::Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    // The coordinator runs on this runtime's other worker while the CLI runs.
    let output = tokio::task::block_in_place(|| command.output()).expect("run drover");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A scratch directory with `drover.toml` ([`SPEC`] unless given) and other files.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let files = Files {
            dir: tempfile::tempdir().expect("scratch directory"),
        };
        files.write("drover.toml", SPEC);
        files
    }

    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write scratch file");
        path.to_str().expect("utf-8 path").to_owned()
    }

    fn spec(&self) -> String {
        self.path("drover.toml")
    }

    fn path(&self, name: &str) -> String {
        let path: PathBuf = self.dir.path().join(name);
        path.to_str().expect("utf-8 path").to_owned()
    }
}

/// A one-layer image whose `/app/VERSION` says `version` (so each version has its own
/// digest), for the platform `umoci new` gives it (linux/amd64 here) unless `platform`.
fn image(version: &str, platform: Option<(&str, &str)>) -> OciImage {
    let mut image = OciImage::new().expect("new image");
    image
        .layer(&[
            LayerOp::file("/app/VERSION", format!("{version}\n")),
            LayerOp::executable("/app/server", "#!/bin/sh\nexec sleep infinity\n"),
        ])
        .expect("layer");
    if let Some((os, architecture)) = platform {
        image.set_platform(os, architecture).expect("platform");
    }
    image
}

/// Builds and pushes the images of a test off the async runtime's worker.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// `drover release list APP -o json`.
fn releases(coordinator: &TestCoordinator, app: &str) -> Vec<Release> {
    let stdout = drover(coordinator, &["release", "list", app, "-o", "json"], &[]).ok();
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("release list JSON: {error}\n{stdout}"))
}

/// The artifact of release `version` of `app`.
fn artifact_of(coordinator: &TestCoordinator, app: &str, version: &str) -> Artifact {
    releases(coordinator, app)
        .into_iter()
        .find(|release| release.version.as_str() == version)
        .unwrap_or_else(|| panic!("no release {app} {version}"))
        .artifact
}

/// `registry/repository@digest` as an OCI artifact.
fn oci(name: &str, digest: &str) -> Artifact {
    Artifact::Oci {
        reference: format!("{name}@{digest}").try_into().expect("OCI reference"),
        digest: digest.parse::<Digest>().expect("digest"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_on_a_plain_registry_resolves_to_the_digest_pushed() {
    let coordinator = TestCoordinator::start().await;
    let files = Files::new();
    let (registry, pushed) = blocking(|| {
        let registry = Registry::start_plain().expect("registry");
        let pushed = image("1", None).push(&registry, "drover/web:1").expect("push");
        (registry, pushed)
    });
    let name = format!("{}/drover/web", registry.host());
    let tagged = format!("{name}:1");

    let stdout = release_from_plain_registry(&coordinator, &files.spec(), "1", &tagged, &[]).ok();
    assert!(
        stdout.starts_with(&format!("resolved {tagged} → {name}@{pushed} (linux/amd64, 1 layer, ")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("  image:   {name}@{pushed}\n")), "{stdout}");
    assert_eq!(artifact_of(&coordinator, "web", "1"), oci(&name, &pushed));

    // The table names the image.
    let table = drover(&coordinator, &["release", "list", "web"], &[]).ok();
    assert!(table.contains(&format!("{name}@{pushed}")), "{table}");

    // A reference pinned by digest is checked (it exists, it is an image) and kept.
    let pinned = format!("{name}@{pushed}");
    let stdout = release_from_plain_registry(&coordinator, &files.spec(), "1b", &pinned, &[]).ok();
    assert!(
        stdout.starts_with(&format!("resolved {pinned} → {pinned} (")),
        "{stdout}"
    );
    assert_eq!(artifact_of(&coordinator, "web", "1b"), oci(&name, &pushed));

    // A digest the registry does not have, and a tag it does not have: not found (3).
    let unknown = format!("{name}@sha256:{}", "0".repeat(64));
    for missing in [unknown.as_str(), &format!("{name}:nope")] {
        let stderr = release_from_plain_registry(&coordinator, &files.spec(), "9", missing, &[]).fails(3);
        assert!(stderr.contains("not found in the registry"), "{stderr}");
    }
    // Without --registry-insecure the CLI speaks TLS, and says what to add.
    let stderr = drover(
        &coordinator,
        &[
            "release",
            "create",
            "web",
            "9",
            "--spec",
            &files.spec(),
            "--image",
            &tagged,
        ],
        &[],
    )
    .fails(1);
    assert!(stderr.contains("--registry-insecure"), "{stderr}");
    assert_eq!(releases(&coordinator, "web").len(), 2, "no release 9 was created");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_resolves_to_the_image_of_the_platform() {
    let coordinator = TestCoordinator::start().await;
    let files = Files::new();
    let (registry, amd64, arm64, index) = blocking(|| {
        let registry = Registry::start_plain().expect("registry");
        let amd64 = image("2", None);
        let arm64 = image("2", Some(("linux", "arm64")));
        let index = OciImage::push_index(&registry, "drover/web:2", &[&arm64, &amd64]).expect("push index");
        let amd64 = amd64.manifest_digest().expect("amd64 digest");
        let arm64 = arm64.manifest_digest().expect("arm64 digest");
        (registry, amd64, arm64, index)
    });
    assert_ne!(amd64, arm64);
    let name = format!("{}/drover/web", registry.host());
    let tagged = format!("{name}:2");

    let stdout = release_from_plain_registry(&coordinator, &files.spec(), "2", &tagged, &[]).ok();
    assert!(
        stdout.starts_with(&format!("resolved {tagged} → {name}@{amd64} (linux/amd64, 1 layer, ")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!(", from index {index})")), "{stdout}");
    assert_eq!(artifact_of(&coordinator, "web", "2"), oci(&name, &amd64));

    // --platform picks another entry; the index's own digest works as the reference too.
    let by_index = format!("{name}@{index}");
    let stdout = release_from_plain_registry(
        &coordinator,
        &files.spec(),
        "2-arm",
        &by_index,
        &["--platform", "linux/arm64"],
    )
    .ok();
    assert!(stdout.contains(&format!("→ {name}@{arm64} (linux/arm64, ")), "{stdout}");
    assert_eq!(artifact_of(&coordinator, "web", "2-arm"), oci(&name, &arm64));

    // A single image for another platform is refused: hosts could not run it.
    let arm_only = blocking(|| {
        image("3", Some(("linux", "arm64")))
            .push(&registry, "drover/web:arm-only")
            .expect("push")
    });
    let stderr =
        release_from_plain_registry(&coordinator, &files.spec(), "3", &format!("{name}:arm-only"), &[]).fails(1);
    assert!(stderr.contains(&format!("{name}@{arm_only}")), "{stderr}");
    assert!(stderr.contains("built for linux/arm64, not linux/amd64"), "{stderr}");
    assert_eq!(releases(&coordinator, "web").len(), 2);
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_without_the_platform_fails_listing_its_platforms_and_creates_nothing() {
    let coordinator = TestCoordinator::start().await;
    let files = Files::new();
    let registry = blocking(|| {
        let registry = Registry::start_plain().expect("registry");
        let arm64 = image("4", Some(("linux", "arm64")));
        let arm = image("4", Some(("linux", "arm")));
        OciImage::push_index_as(
            &registry,
            "drover/web:4",
            &[(&arm64, "linux/arm64"), (&arm, "linux/arm/v7")],
        )
        .expect("push index");
        registry
    });
    let tagged = format!("{}/drover/web:4", registry.host());
    let stderr = release_from_plain_registry(&coordinator, &files.spec(), "4", &tagged, &[]).fails(1);
    assert!(
        stderr.contains(&format!(
            "{tagged} is an image index with no image for linux/amd64; it has linux/arm64, linux/arm/v7"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("--platform"), "{stderr}");
    assert!(releases(&coordinator, "web").is_empty(), "nothing was created");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_registry_with_basic_auth_needs_its_ca_and_the_right_password() {
    let coordinator = TestCoordinator::start().await;
    let files = Files::new();
    let (registry, pushed) = blocking(|| {
        let registry = Registry::start_tls_basic("ci", "correct horse").expect("registry");
        let pushed = image("5", None).push(&registry, "team/web:5").expect("push");
        (registry, pushed)
    });
    let ca = registry.ca_pem_path().expect("CA").to_str().expect("utf-8").to_owned();
    let name = format!("{}/team/web", registry.host());
    let tagged = format!("{name}:5");
    let good = files.write("password", "correct horse\n");
    let wrong = files.write("wrong", "battery staple\n");
    let spec = files.spec();
    let create = |version: &str, extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["release", "create", "web", version, "--spec", &spec, "--image", &tagged];
        args.extend_from_slice(extra);
        drover(&coordinator, &args, env)
    };

    let stdout = create(
        "5",
        &[
            "--registry-ca",
            &ca,
            "--registry-user",
            "ci",
            "--registry-password-file",
            &good,
        ],
        &[],
    )
    .ok();
    assert!(
        stdout.starts_with(&format!("resolved {tagged} → {name}@{pushed} (")),
        "{stdout}"
    );
    assert_eq!(artifact_of(&coordinator, "web", "5"), oci(&name, &pushed));

    // The password from the environment does as well (the same release again: idempotent).
    create(
        "5",
        &["--registry-ca", &ca, "--registry-user", "ci"],
        &[("DROVER_REGISTRY_PASSWORD", "correct horse")],
    )
    .ok();

    let stderr = create(
        "6",
        &[
            "--registry-ca",
            &ca,
            "--registry-user",
            "ci",
            "--registry-password-file",
            &wrong,
        ],
        &[],
    )
    .fails(1);
    assert!(stderr.contains("the registry refused access"), "{stderr}");
    assert!(stderr.contains("check --registry-user and the password"), "{stderr}");
    assert!(!stderr.contains("battery"), "the password is never printed: {stderr}");

    let stderr = create("6", &["--registry-ca", &ca], &[]).fails(1);
    assert!(stderr.contains("give credentials with --registry-user"), "{stderr}");

    // Without the CA the registry's certificate is not trusted.
    let stderr = create("6", &["--registry-user", "ci", "--registry-password-file", &good], &[]).fails(1);
    assert!(stderr.contains("--registry-ca FILE"), "{stderr}");

    // Credentials never go over plain HTTP; a user without a password is a usage error.
    let stderr = create(
        "6",
        &[
            "--registry-insecure",
            "--registry-user",
            "ci",
            "--registry-password-file",
            &good,
        ],
        &[],
    )
    .fails(2);
    assert!(stderr.contains("clear text"), "{stderr}");
    let stderr = create("6", &["--registry-ca", &ca, "--registry-user", "ci"], &[]).fails(2);
    assert!(stderr.contains("DROVER_REGISTRY_PASSWORD"), "{stderr}");

    let versions: Vec<String> = releases(&coordinator, "web")
        .iter()
        .map(|release| release.version.to_string())
        .collect();
    assert_eq!(versions, ["5"]);
    coordinator.stop().await;
}

/// The manifest `agent` gets next, verified as an agent does.
async fn next_manifest(agent: &Agent, etag: Option<&str>) -> (drover_protocol::Manifest, String) {
    let Poll::Changed(envelope, etag) = agent.poll(etag, 10).await else {
        panic!("expected a new manifest");
    };
    let verified = accept(&envelope, &agent.trust(), &agent.host, None, now_real()).expect("manifest verifies");
    (verified.manifest().clone(), etag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_moved_after_release_creation_does_not_change_the_release() {
    let coordinator = TestCoordinator::start().await;
    let agent = coordinator.enroll("web-01", &[("env", "prod")]).await;
    let (_, etag) = next_manifest(&agent, None).await;
    let files = Files::new();
    let (registry, first) = blocking(|| {
        let registry = Registry::start_plain().expect("registry");
        let first = image("7", None).push(&registry, "drover/web:stable").expect("push");
        (registry, first)
    });
    let name = format!("{}/drover/web", registry.host());
    let stable = format!("{name}:stable");
    let spec = files.spec();
    let create = |version: &str| release_from_plain_registry(&coordinator, &spec, version, &stable, &[]);
    create("7").ok();

    // The tag moves to another image.
    let second = blocking(|| image("8", None).push(&registry, "drover/web:stable").expect("push"));
    assert_ne!(first, second);

    drover(&coordinator, &["pin", "web", "7"], &[]).ok();
    let (manifest, _) = next_manifest(&agent, Some(&etag)).await;
    let app: AppName = "web".parse().expect("app");
    let release = &manifest.apps[&app];
    assert_eq!(release.version.as_str(), "7");
    assert_eq!(
        release.artifact,
        oci(&name, &first),
        "the host gets the digest of creation"
    );
    assert_eq!(artifact_of(&coordinator, "web", "7"), oci(&name, &first));

    // The same version from the moved tag is another artifact: refused (releases are
    // immutable); a new version gets the new digest.
    let stderr = create("7").fails(4);
    assert!(
        stderr.contains(&format!("already exists with artifact {first}, not {second}")),
        "{stderr}"
    );
    create("8").ok();
    assert_eq!(artifact_of(&coordinator, "web", "8"), oci(&name, &second));
    assert_eq!(artifact_of(&coordinator, "web", "7"), oci(&name, &first));
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_release_may_leave_the_command_to_the_image_but_a_tarball_may_not() {
    let coordinator = TestCoordinator::start().await;
    let files = Files::new();
    let no_command = files.write("no-command.toml", "[service]\nrestart = \"always\"\n");
    let (registry, pushed) = blocking(|| {
        let registry = Registry::start_plain().expect("registry");
        let pushed = image("9", None).push(&registry, "drover/web:9").expect("push");
        (registry, pushed)
    });
    let name = format!("{}/drover/web", registry.host());
    release_from_plain_registry(&coordinator, &no_command, "9", &format!("{name}:9"), &[]).ok();
    assert_eq!(artifact_of(&coordinator, "web", "9"), oci(&name, &pushed));

    let tarball = files.write("web.tar.gz", "not really a tarball, never unpacked here");
    let stderr = drover(
        &coordinator,
        &[
            "release",
            "create",
            "web",
            "10",
            "--spec",
            &no_command,
            "--artifact",
            &tarball,
        ],
        &[],
    )
    .fails(2);
    assert!(stderr.contains("a tarball release needs service.command"), "{stderr}");
    assert_eq!(releases(&coordinator, "web").len(), 1);
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_takes_only_canonical_pinned_image_references() {
    let coordinator = TestCoordinator::start().await;
    let digest = format!("sha256:{}", "ab".repeat(32));
    let request = |reference: &str| {
        serde_json::json!({
            "app": "web", "version": "1",
            "spec": {"service": {"command": ["/app/server"]}},
            "artifact": {"kind": "image", "reference": reference},
        })
    };
    for (reference, code) in [
        (format!("docker.io/nginx@{digest}"), "bad_image_reference"),
        (format!("nginx@{digest}"), "bad_image_reference"),
        (format!("r.example.com/web:1@{digest}"), "bad_image_reference"),
    ] {
        let (status, body) = coordinator
            .admin
            .call(reqwest::Method::POST, "/v1/admin/releases", Some(request(&reference)))
            .await;
        assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{reference}: {body}");
        assert!(body.contains(code), "{reference}: {body}");
    }
    let (status, body) = coordinator
        .admin
        .call(
            reqwest::Method::POST,
            "/v1/admin/releases",
            Some(request("r.example.com/web:1")),
        )
        .await;
    assert_eq!(status.as_u16() / 100, 4, "a tag is not a pinned reference: {body}");
    // A tarball needs a command; the check comes before the artifact is looked up.
    let tarball = serde_json::json!({
        "app": "web", "version": "1",
        "spec": {"service": {"restart": "always"}},
        "artifact": {"kind": "stored_tarball", "digest": digest},
    });
    let (status, body) = coordinator
        .admin
        .call(reqwest::Method::POST, "/v1/admin/releases", Some(tarball))
        .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("command_required"), "{body}");

    let created = coordinator
        .admin
        .ok(
            reqwest::Method::POST,
            "/v1/admin/releases",
            Some(request(&format!("docker.io/library/nginx@{digest}"))),
        )
        .await;
    assert_eq!(created["artifact"]["kind"], "oci");
    assert_eq!(created["artifact"]["digest"], digest.as_str());
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_and_image_together_is_a_usage_error() {
    let coordinator = TestCoordinator::start().await;
    let files = Files::new();
    let spec = files.spec();
    let image = "127.0.0.1:5000/drover/web:1";
    for args in [
        vec!["--artifact", "web.tar.gz", "--image", image],
        vec![],
        vec!["--artifact", "web.tar.gz", "--platform", "linux/arm64"],
        vec!["--image", image, "--registry-password-file", "pw"],
    ] {
        let mut all = vec!["release", "create", "web", "1", "--spec", &spec];
        all.extend(args.iter().copied());
        let stderr = drover(&coordinator, &all, &[]).fails(2);
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
    // A registry flag for a file no registry takes (no --registry, and the coordinator
    // names none with --artifact-registry), or for a URL: refused, not ignored.
    for artifact in ["web.tar.gz", "https://artifacts.example/web.tar.gz"] {
        let all = [
            "release",
            "create",
            "web",
            "1",
            "--spec",
            &spec,
            "--artifact",
            artifact,
            "--registry-insecure",
        ];
        let stderr = drover(&coordinator, &all, &[]).fails(2);
        assert!(
            stderr.contains("--registry-insecure applies to a registry"),
            "{artifact}: {stderr}"
        );
    }
    // Checked before any network access: a short name, a bad platform.
    for (args, expected) in [
        (vec!["--image", "nginx:1.25"], "docker.io/library/nginx:TAG"),
        (vec!["--image", image, "--platform", "linux"], "--platform linux"),
        (vec!["--image", "127.0.0.1:5000/web"], "no implicit :latest"),
    ] {
        let mut all = vec!["release", "create", "web", "1", "--spec", &spec];
        all.extend(args.iter().copied());
        let stderr = drover(&coordinator, &all, &[]).fails(2);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(releases(&coordinator, "web").is_empty());
    coordinator.stop().await;
}
