//! Tarball releases kept in an OCI registry, end to end on real systemd hosts
//! (systemd-nspawn, SPEC §7; issue 16 "artifacts in a registry"): the real `drover`
//! binary pushes a tar.gz to Debian's `docker-registry` on 127.0.0.1 (`release create
//! --artifact FILE --registry REGISTRY/REPO`), and the agent from its .deb fetches it from
//! the registry by digest, with the per-registry settings of its agent.toml, and installs
//! and runs it as any tarball; a blob changed in the registry's storage is refused and
//! nothing of it is installed.
//!
//! Needs root, `docker-registry`, and dist/*.deb built from this tree
//! (`bash packaging/build.sh`).

use std::time::Duration;

use drover_tests::e2e::{AgentHost, Behaviour, CoordinatorProcess, Releases, free_port};
use drover_tests::hosts::HostOptions;
use drover_tests::registry::Registry;

const CONVERGE: Duration = Duration::from_secs(120);

/// The agent.toml lines that reach `registry` (plain HTTP on 127.0.0.1).
fn registry_settings(registry: &Registry) -> String {
    format!("\n[registries.\"{}\"]\ninsecure = true\n", registry.host())
}

/// `drover release create web VERSION --artifact sample-VERSION.tar.gz --registry
/// REGISTRY/drover/web --registry-insecure`; returns the tarball's digest.
fn push_release(
    coordinator: &CoordinatorProcess,
    releases: &Releases,
    registry: &Registry,
    port: u16,
    version: &str,
) -> String {
    let spec = releases.spec("web", port, Behaviour::Good).expect("spec");
    let tarball = releases.tarball(version, 64 * 1024).expect("tarball");
    let out = coordinator
        .drover_ok(&[
            "release",
            "create",
            "web",
            version,
            "--spec",
            spec.to_str().expect("utf-8"),
            "--artifact",
            tarball.to_str().expect("utf-8"),
            "--registry",
            &format!("{}/drover/web", registry.host()),
            "--registry-insecure",
        ])
        .expect("release create --registry");
    eprintln!("{out}");
    let listed = coordinator
        .drover_ok(&["release", "list", "web", "-o", "json"])
        .expect("release list");
    let releases: serde_json::Value = serde_json::from_str(&listed).expect("release list JSON");
    let release = releases
        .as_array()
        .and_then(|all| all.iter().find(|release| release["version"] == version))
        .unwrap_or_else(|| panic!("no release {version}: {listed}"));
    assert_eq!(release["artifact"]["kind"], "oci_tarball", "{release}");
    release["artifact"]["digest"].as_str().expect("digest").to_owned()
}

#[test]
fn a_tarball_release_pushed_to_a_registry_installs_on_a_real_host() {
    let registry = Registry::start_plain().expect("registry");
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    push_release(&coordinator, &releases, &registry, port, "1");
    push_release(&coordinator, &releases, &registry, port, "2");

    let host = AgentHost::start_with(
        "regart",
        &coordinator,
        &HostOptions::default(),
        &registry_settings(&registry),
    )
    .expect("agent host");
    coordinator.drover_ok(&["pin", "web", "1"]).expect("pin 1");
    host.wait_serving(port, "1", CONVERGE).expect("release 1 serves");
    host.wait_healthy("web", "1", CONVERGE).expect("release 1 healthy");
    // Installed as a tarball: the release directory holds the tarball's files.
    let version = host
        .host
        .check(&["cat", "/var/lib/drover/apps/web/current/VERSION"])
        .expect("VERSION");
    assert_eq!(version.trim(), "1");

    coordinator.drover_ok(&["pin", "web", "2"]).expect("pin 2");
    host.wait_serving(port, "2", CONVERGE).expect("release 2 serves");
    host.wait_healthy("web", "2", CONVERGE).expect("release 2 healthy");
}

#[test]
fn a_tampered_tarball_blob_in_the_registry_is_refused() {
    let registry = Registry::start_plain().expect("registry");
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    push_release(&coordinator, &releases, &registry, port, "1");
    let tampered = push_release(&coordinator, &releases, &registry, port, "2");
    // The registry's stored bytes change behind its back; the release still names the
    // digest the CLI computed over the file.
    registry.corrupt_blob(&tampered).expect("corrupt the blob");

    let host = AgentHost::start_with(
        "regbad",
        &coordinator,
        &HostOptions::default(),
        &registry_settings(&registry),
    )
    .expect("agent host");
    coordinator.drover_ok(&["pin", "web", "1"]).expect("pin 1");
    host.wait_healthy("web", "1", CONVERGE).expect("release 1 healthy");

    coordinator.drover_ok(&["pin", "web", "2"]).expect("pin 2");
    let detail = coordinator.wait_reported(&host, "the report on the tampered release 2", CONVERGE, |detail| {
        let web = &detail["apps"]["web"];
        web["state"] == "failed"
            && web["last_error"]
                .as_str()
                .is_some_and(|error| error.contains(&tampered))
    });
    let error = detail["apps"]["web"]["last_error"].as_str().unwrap_or_default();
    eprintln!("last_error: {error}");
    assert!(
        error.contains("refused") && error.contains("/drover/web@sha256:"),
        "the error names the artifact and says it was refused: {error}"
    );
    // Nothing of release 2 was installed, and release 1 keeps serving.
    assert!(
        !host.host.path("/var/lib/drover/apps/web/releases/2").exists(),
        "no release directory for the refused tarball"
    );
    let hex = tampered.trim_start_matches("sha256:");
    assert!(
        !host.host.path(&format!("/var/lib/drover/cache/{hex}")).exists(),
        "the tampered bytes are not in the cache under the tarball's digest"
    );
    assert_eq!(AgentHost::get(port, "/").as_deref(), Some("drover-sample-app 1"));
    assert_eq!(
        host.app_status("web").expect("status")["current"],
        "1",
        "the running release is untouched"
    );
}
