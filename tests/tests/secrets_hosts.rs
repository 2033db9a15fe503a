//! App secrets on a real systemd host (issue 13, defect 2): the real agent from the .deb
//! under its unit, a real `drover serve`. An app's spec carries a secret in a config file
//! (mode 0600) and in its environment; no other local user (nobody, or another app's
//! dynamic user) can read either through any file under the state directory, the unit
//! files, or systemd's view of the unit, while the app itself still reads both. An upgrade
//! from an agent that wrote world-readable copies tightens them at start.

use std::time::Duration;

use drover_tests::e2e::{AgentHost, CoordinatorProcess, Releases, free_port};
use drover_tests::hosts::HostOptions;

const CONVERGE: Duration = Duration::from_secs(90);

/// The secret in the config file: what the sample app serves as its version when it could
/// read the file (it reads `VERSION` from its working directory).
const CONFIG_SECRET: &str = "cfg-secret-4f1d9a77c2";
/// The secret in the environment.
const ENV_SECRET: &str = "env-secret-b83e05d16a";
/// An environment value with everything an environment file could get wrong: quotes,
/// backslash, `$`, backquote, `%`, a newline, leading and trailing spaces.
const TRICKY: &str = " a \"b\" \\c $d `e` %f 'g'\nline2 ";

/// Where anything of the agent's could land: every regular file under these is read.
const SCANNED: &str = "/var/lib/drover /etc/systemd/system /etc/drover /run/systemd/system /run/systemd/transient";

/// `drover release create APP 1` of the sample app with the spec `text`.
fn create(coordinator: &CoordinatorProcess, releases: &Releases, app: &str, text: &str) {
    let tarball = releases.tarball(app, 0).expect("tarball");
    let spec = releases.path().join(format!("{app}.toml"));
    std::fs::write(&spec, text).expect("spec");
    coordinator
        .drover_ok(&[
            "release",
            "create",
            app,
            "1",
            "--spec",
            spec.to_str().expect("spec path"),
            "--artifact",
            tarball.to_str().expect("tarball path"),
        ])
        .expect("release create");
}

/// A TOML basic string holding `text`.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a JSON string is a TOML basic string")
}

/// What a secret looks like in a file: itself, and the parts of its base64 that do not
/// depend on the bytes around it at each of the three alignments (a DSSE envelope carries
/// the manifest, so every spec, as a base64 payload).
fn secret_patterns(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    let mut patterns = vec![secret.to_owned()];
    for offset in 0..3 {
        let mut bytes = vec![0u8; offset];
        bytes.extend_from_slice(secret.as_bytes());
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        // Character i covers bits 6i..6i+6 of the bytes: keep those within the secret's.
        let start = (8 * offset).div_ceil(6);
        let end = 8 * (offset + secret.len()) / 6;
        patterns.push(encoded[start..end].to_owned());
    }
    patterns
}

/// The files under [`SCANNED`] whose bytes, read as `uid:gid` (`None`: as root), hold a
/// secret (plain or base64). The list of files is made as root, so a file in a directory
/// the user may traverse but not list is still tried by its name.
fn files_with_secrets(host: &AgentHost, as_user: Option<(u32, u32)>) -> Vec<String> {
    let read = match as_user {
        Some((uid, gid)) => format!("setpriv --reuid={uid} --regid={gid} --clear-groups -- cat"),
        None => "cat".to_owned(),
    };
    let patterns: String = [CONFIG_SECRET, ENV_SECRET]
        .iter()
        .flat_map(|secret| secret_patterns(secret))
        .map(|pattern| format!(" -e '{pattern}'"))
        .collect();
    let script = format!(
        "find {SCANNED} -xdev -type f 2>/dev/null | while IFS= read -r file; do \
           if {read} -- \"$file\" 2>/dev/null | grep -q -F{patterns}; then echo \"$file\"; fi; \
         done"
    );
    host.host
        .check_sh(&script)
        .expect("scan")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The uid and gid a unit's main process runs as.
fn ids_of(host: &AgentHost, unit: &str) -> (u32, u32) {
    let pid = host.host.pid_of_unit(unit).expect("main pid");
    let ids = host
        .host
        .check(&["stat", "-c", "%u %g", &format!("/proc/{pid}")])
        .expect("stat");
    let mut ids = ids.split_whitespace().map(|id| id.parse::<u32>().expect("an id"));
    (ids.next().expect("uid"), ids.next().expect("gid"))
}

/// The mode bits of `path` in the host, in octal.
fn mode_of(host: &AgentHost, path: &str) -> String {
    host.host
        .check(&["stat", "-c", "%a", path])
        .expect("stat")
        .trim()
        .to_owned()
}

#[test]
fn the_scan_finds_a_secret_inside_base64_at_every_alignment() {
    use base64::Engine as _;
    for before in ["", "a", "ab", "abc", "{\"spec\":"] {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{before}{ENV_SECRET}\"}}").as_bytes());
        assert!(
            secret_patterns(ENV_SECRET)
                .iter()
                .any(|pattern| encoded.contains(pattern.as_str())),
            "{before:?}: {encoded}"
        );
    }
}

#[test]
fn an_unprivileged_user_cannot_read_another_apps_secret_under_the_state_dir() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let releases = Releases::new().expect("releases");
    let (vault_port, other_port) = (free_port(), free_port());
    // `vault` runs as a user of the host, reads its 0600 config file as its version, listens
    // where its environment says, and its `pre_start` hook needs the secret variable too.
    let vault = format!(
        r#"[service]
command = ["bin/drover-sample-app"]
user = "vault-app"
working_directory = "conf"

[service.environment]
LISTEN = "127.0.0.1:{vault_port}"
VAULT_TOKEN = "{ENV_SECRET}"
TRICKY = {tricky}

[[config_files]]
path = "conf/VERSION"
content = "{CONFIG_SECRET}"
mode = "0600"

[health]
grace_period = "8s"
interval = "500ms"
successes = 2

[[health.checks]]
kind = "http"
url = "http://127.0.0.1:{vault_port}/healthz"
timeout = "1s"

[hooks.pre_start]
command = ["sh", "-c", "test -n \"$VAULT_TOKEN\""]
timeout = "10s"
"#,
        tricky = toml_string(TRICKY),
    );
    // `other` runs as a dynamic user through the same state directory.
    let other = format!(
        r#"[service]
command = ["bin/drover-sample-app", "--listen", "127.0.0.1:{other_port}"]

[health]
grace_period = "8s"
interval = "500ms"
successes = 2

[[health.checks]]
kind = "http"
url = "http://127.0.0.1:{other_port}/healthz"
timeout = "1s"
"#
    );
    create(&coordinator, &releases, "vault", &vault);
    create(&coordinator, &releases, "other", &other);
    let host = AgentHost::start("e2e-secrets", &coordinator, &HostOptions::default()).expect("agent host");
    host.host
        .check(&[
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "vault-app",
        ])
        .expect("useradd");
    coordinator.drover_ok(&["pin", "vault", "1"]).expect("pin vault");
    coordinator.drover_ok(&["pin", "other", "1"]).expect("pin other");
    host.wait_healthy("vault", "1", CONVERGE).expect("vault healthy");
    host.wait_healthy("other", "1", CONVERGE).expect("other healthy");

    // The scan can find them: as root, the secrets are on disk where the agent put them.
    let as_root = files_with_secrets(&host, None);
    assert!(
        as_root.iter().any(|file| file.ends_with("/conf/VERSION")),
        "the scan must see the config file as root: {as_root:?}"
    );
    assert!(
        as_root
            .iter()
            .any(|file| file.ends_with("accepted.json") || file.ends_with("manifest.dsse")),
        "the scan must see the spec in the accepted envelope's base64 as root: {as_root:?}"
    );

    let other_ids = ids_of(&host, "drover-other.service");
    assert_ne!(other_ids.0, 0, "other runs as a dynamic user");
    for (who, ids) in [("nobody", (65534, 65534)), ("the other app's dynamic user", other_ids)] {
        let leaked = files_with_secrets(&host, Some(ids));
        assert!(
            leaked.is_empty(),
            "{who} (uid {}) can read a secret of vault in {leaked:?}",
            ids.0
        );
        let vault_pid = host.host.pid_of_unit("drover-vault.service").expect("vault pid");
        let environ = host.host.exec(&[
            "setpriv",
            &format!("--reuid={}", ids.0),
            &format!("--regid={}", ids.1),
            "--clear-groups",
            "--",
            "cat",
            &format!("/proc/{vault_pid}/environ"),
        ]);
        assert!(
            !String::from_utf8_lossy(&environ.stdout).contains(ENV_SECRET),
            "{who} reads vault's environment from /proc"
        );
    }
    // What systemd tells anyone who asks about the unit (its properties are readable by
    // every user over D-Bus): no environment values.
    let shown = host
        .host
        .check(&["systemctl", "show", "drover-vault.service"])
        .expect("systemctl show");
    assert!(
        !shown.contains(ENV_SECRET) && !shown.contains(CONFIG_SECRET),
        "systemctl show drover-vault.service holds a secret:\n{}",
        shown
            .lines()
            .filter(|line| line.contains("secret"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The app still has both: it serves the config file's content as its version (it read
    // the 0600 file as its own user), listens where its environment says, and has every
    // variable exactly as the spec wrote it.
    assert_eq!(
        AgentHost::get(vault_port, "/").as_deref(),
        Some(format!("drover-sample-app {CONFIG_SECRET}").as_str()),
        "vault read its config file"
    );
    let vault_pid = host.host.pid_of_unit("drover-vault.service").expect("vault pid");
    let environ = host
        .host
        .read_file(&format!("/proc/{vault_pid}/environ"))
        .expect("environ");
    let variables: Vec<&[u8]> = environ.split(|byte| *byte == 0).collect();
    for expected in [format!("VAULT_TOKEN={ENV_SECRET}"), format!("TRICKY={TRICKY}")] {
        assert!(
            variables.contains(&expected.as_bytes()),
            "vault's environment lacks {expected:?}: {:?}",
            String::from_utf8_lossy(&environ)
        );
    }
    assert_eq!(
        AgentHost::get(other_port, "/").as_deref(),
        Some("drover-sample-app other"),
        "the dynamic user app reaches its release (its VERSION file) through the state directory"
    );

    // A host upgraded from an agent that wrote these world-readable (modes 0644 under 0755
    // directories, the environment inline in the unit and no environment file): the agent
    // fixes them at start, without restarting the app.
    let started = host.app_started("vault");
    host.host
        .check_sh(&format!(
            "set -e; cd /var/lib/drover; chmod 0755 . apps apps/vault apps/other; \
             chmod 0644 apps/vault/app.json apps/other/app.json; rm apps/vault/environment; \
             sed -i -e '/^EnvironmentFile=/d' \
               -e 's/^\\[Service\\]$/[Service]\\nEnvironment=VAULT_TOKEN={ENV_SECRET} LISTEN=127.0.0.1:{vault_port}/' \
               /etc/systemd/system/drover-vault.service; \
             systemctl daemon-reload; systemctl show -p Environment drover-vault.service | grep -q {ENV_SECRET}; \
             systemctl restart drover-agent.service"
        ))
        .expect("an older agent's state, then the new agent started");
    host.host
        .wait_until(
            "the agent to fix what the older agent left",
            CONVERGE,
            Duration::from_millis(200),
            || {
                mode_of(&host, "/var/lib/drover/apps/vault/app.json") == "600"
                    && mode_of(&host, "/var/lib/drover/apps/other/app.json") == "600"
                    && mode_of(&host, "/var/lib/drover") == "711"
                    && !host
                        .host
                        .check(&["systemctl", "show", "drover-vault.service"])
                        .unwrap_or_else(|_| ENV_SECRET.to_owned())
                        .contains(ENV_SECRET)
            },
        )
        .expect("the state directory and the unit fixed at start");
    assert!(files_with_secrets(&host, Some((65534, 65534))).is_empty());
    assert_eq!(mode_of(&host, "/var/lib/drover/apps/vault/environment"), "600");
    assert_eq!(host.app_started("vault"), started, "vault was not restarted");
    // Its next start reads the environment from the file.
    host.host
        .check(&["systemctl", "restart", "drover-vault.service"])
        .expect("restart vault");
    host.host
        .wait_until("vault to serve again", CONVERGE, Duration::from_millis(100), || {
            AgentHost::get(vault_port, "/").as_deref() == Some(format!("drover-sample-app {CONFIG_SECRET}").as_str())
        })
        .expect("vault serves after its restart");
}
