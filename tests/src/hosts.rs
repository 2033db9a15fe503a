//! Real systemd hosts for end-to-end tests: throwaway `systemd-nspawn --boot` containers
//! booted from the cached Debian rootfs of `scripts/rootfs.sh` (SPEC.md §7), with helpers
//! to run commands inside, move files in and out, wait for conditions and read the journal.
//!
//! Everything here is synchronous (`std::process`), so sync tests and tokio tests use it
//! with plain calls. A host is torn down when its [`Host`] is dropped; if the test is
//! panicking, its journal and console log are printed first, so a failure explains itself.
//! Only processes this module started are ever signalled, and only by PID.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The `PATH` of commands run inside a host: the test process's own `PATH` (cargo's,
/// rustup's) means nothing there.
const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Upper bound for one command inside a host, so a hung `systemctl` fails the test
/// instead of hanging the whole suite. `timeout` exits 124 when it fires.
const EXEC_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a clean poweroff may take before the container is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// How many lines of journal and console log a failing test prints.
const DIAGNOSTIC_LINES: usize = 200;

/// Longest machine name systemd accepts (it becomes the host name).
const MAX_MACHINE_NAME: usize = 64;

/// The cached rootfs every host boots from, built by `scripts/rootfs.sh` at most once per
/// test process. Fails, saying why, when the machine cannot run real hosts (not root, no
/// `systemd-nspawn`): end-to-end tests must fail loudly rather than pass without running.
pub fn rootfs() -> anyhow::Result<PathBuf> {
    // The outcome, failure included, is kept: retrying a multi-minute build in every test
    // of the process would only repeat the same error slowly.
    static ROOTFS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ROOTFS
        .get_or_init(|| build_rootfs().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_rootfs() -> anyhow::Result<PathBuf> {
    check_prerequisites()?;
    let repository = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests crate lives inside the workspace")?;
    let script = repository.join("scripts/rootfs.sh");
    // The script logs to stderr, which is passed through so a first (slow) build shows progress.
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}); its log is above on stderr",
            script.display(),
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = PathBuf::from(
        stdout
            .lines()
            .last()
            .context("scripts/rootfs.sh printed no path")?
            .trim(),
    );
    if !path.join("usr/lib/systemd/systemd").is_file() {
        bail!(
            "{} printed {}, which holds no systemd",
            script.display(),
            path.display()
        );
    }
    Ok(path)
}

/// Real hosts need root and `systemd-nspawn`, `nsenter` and `debootstrap`; each missing
/// piece is named, with the package that provides it.
fn check_prerequisites() -> anyhow::Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective_uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .context("no Uid line in /proc/self/status")?;
    let mut missing = Vec::new();
    if effective_uid != "0" {
        missing.push(format!(
            "root (running as uid {effective_uid}; systemd-nspawn and nsenter need root)"
        ));
    }
    for (program, package) in [
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
        ("debootstrap", "debootstrap"),
        ("flock", "util-linux"),
    ] {
        if find_program(program).is_none() {
            missing.push(format!("{program} (Debian package {package})"));
        }
    }
    if !missing.is_empty() {
        bail!(
            "real systemd hosts cannot run on this machine (SPEC.md §7), missing: {}",
            missing.join(", ")
        );
    }
    Ok(())
}

fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| HOST_PATH.into());
    std::env::split_paths(&path)
        .chain(std::env::split_paths(HOST_PATH))
        .map(|directory| directory.join(program))
        .find(|candidate| candidate.is_file())
}

/// How a host's root directory is made writable without touching the shared cached rootfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RootMode {
    /// `--volatile=overlay`: the cached rootfs read-only under a tmpfs overlay. Boots in
    /// well under a second, any number of hosts share the tree, and nothing is left behind
    /// even if nspawn is killed (the overlay lives in nspawn's own mount namespace).
    /// Renaming a directory that exists in the rootfs may fail with EXDEV (overlayfs); give
    /// such directories their own `--tmpfs=` or `--bind=`.
    #[default]
    Overlay,
    /// `--ephemeral`: a full copy of the rootfs per host, removed at poweroff. A plain
    /// filesystem, but on ext4 the copy (about 170 MiB) costs seconds per boot, and a host
    /// killed before a clean poweroff leaves its copy in the cache directory.
    EphemeralCopy,
}

/// How to boot a host, beyond the fixed `systemd-nspawn --boot` core.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Extra `systemd-nspawn` arguments, e.g. `--bind-ro=/src:/dst` or
    /// `--tmpfs=/var/lib/drover:size=8M`.
    pub nspawn_args: Vec<String>,
    /// How the root directory is made writable.
    pub root: RootMode,
    /// How long the host may take to reach `running`.
    pub boot_timeout: Duration,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            nspawn_args: Vec::new(),
            root: RootMode::default(),
            boot_timeout: Duration::from_secs(90),
        }
    }
}

impl HostOptions {
    /// Adds one `systemd-nspawn` argument.
    pub fn arg(mut self, argument: impl Into<String>) -> Self {
        self.nspawn_args.push(argument.into());
        self
    }

    /// Binds `source` on the machine read-only at `destination` inside the host.
    pub fn bind_ro(self, source: &Path, destination: &str) -> Self {
        self.arg(format!("--bind-ro={}:{destination}", source.display()))
    }
}

/// A booted systemd host: a throwaway `systemd-nspawn` container that shares the
/// machine's network (so it reaches services on 127.0.0.1) and is powered off on drop.
#[derive(Debug)]
pub struct Host {
    name: String,
    nspawn: Child,
    /// The machine-side PID of the host's systemd (PID 1 inside); 0 until boot found it.
    init_pid: u32,
    console_log: PathBuf,
    /// Holds the console log; removed with the host.
    _scratch: tempfile::TempDir,
}

impl Host {
    /// Boots a host whose machine name starts with `name` (made unique per boot, so
    /// parallel tests never collide) and waits until systemd reports `running` (or
    /// `degraded`, whose failed units are logged). A host that does not get there within
    /// the boot timeout is torn down and the error carries its console log.
    pub fn boot(name: &str, options: &HostOptions) -> anyhow::Result<Host> {
        let rootfs = rootfs()?;
        let name = machine_name(name);
        let scratch = tempfile::Builder::new()
            .prefix(&format!("drover-host-{name}-"))
            .tempdir()
            .context("creating a scratch directory for the console log")?;
        let console_log = scratch.path().join("console.log");
        let console = fs::File::create(&console_log).with_context(|| format!("creating {}", console_log.display()))?;
        let console_err = console.try_clone().context("duplicating the console log handle")?;
        let started = Instant::now();
        let nspawn = Command::new("systemd-nspawn")
            .arg("-q")
            .arg("-D")
            .arg(&rootfs)
            .arg(match options.root {
                RootMode::Overlay => "--volatile=overlay",
                RootMode::EphemeralCopy => "--ephemeral",
            })
            // `--register=no --keep-unit`: this machine's PID 1 is not systemd, so there is
            // no machined to register with and no scope to move into (SPEC.md §7).
            .args(["--boot", "--register=no", "--keep-unit"])
            .arg(format!("--machine={name}"))
            // The console log is read by people; the services inside are not affected.
            .arg("--setenv=SYSTEMD_COLORS=0")
            .args(&options.nspawn_args)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err)
            .spawn()
            .context("starting systemd-nspawn")?;
        // From here on, dropping `host` (also on the error paths below) stops the container.
        let mut host = Host {
            name,
            nspawn,
            init_pid: 0,
            console_log,
            _scratch: scratch,
        };
        host.wait_for_boot(options.boot_timeout).with_context(|| {
            format!(
                "booting host {}; console log (last {DIAGNOSTIC_LINES} lines):\n{}",
                host.name,
                host.console_tail()
            )
        })?;
        eprintln!(
            "host {} booted in {:.1} s (nspawn PID {}, init PID {})",
            host.name,
            started.elapsed().as_secs_f64(),
            host.nspawn_pid(),
            host.init_pid
        );
        Ok(host)
    }

    fn wait_for_boot(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_state = String::from("(systemd not started yet)");
        loop {
            if let Some(status) = self.nspawn.try_wait().context("polling systemd-nspawn")? {
                bail!("systemd-nspawn exited during boot ({status})");
            }
            if self.init_pid == 0 {
                self.init_pid = find_container_init(self.nspawn.id()).unwrap_or(0);
            }
            if self.init_pid != 0 {
                let output = self.exec(&["systemctl", "is-system-running"]);
                let state = String::from_utf8_lossy(&output.stdout).trim().to_owned();
                match state.as_str() {
                    "running" => return Ok(()),
                    "degraded" => {
                        let failed = self.exec(&["systemctl", "--failed", "--no-legend", "--plain"]);
                        eprintln!(
                            "host {} booted degraded; failed units:\n{}",
                            self.name,
                            String::from_utf8_lossy(&failed.stdout)
                        );
                        return Ok(());
                    }
                    _ => {
                        last_state = if state.is_empty() {
                            format!("(no answer: {})", String::from_utf8_lossy(&output.stderr).trim())
                        } else {
                            state
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("not running after {timeout:?}; last `systemctl is-system-running`: {last_state}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The unique machine name (also the host name inside).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The machine-side PID of the host's systemd (PID 1 inside).
    pub fn init_pid(&self) -> u32 {
        self.init_pid
    }

    /// The machine-side PID of the `systemd-nspawn` process that runs the host.
    pub fn nspawn_pid(&self) -> u32 {
        self.nspawn.id()
    }

    /// Runs `argv` inside the host (all of its namespaces, as root, with a clean
    /// environment) and returns what it did. Never fails: a command that could not be
    /// started shows up as a non-zero exit with the reason on stderr.
    pub fn exec(&self, argv: &[&str]) -> Output {
        let init_pid = self.init_pid.to_string();
        let result = Command::new("timeout")
            .arg("--kill-after=5")
            .arg(EXEC_TIMEOUT.as_secs().to_string())
            .args(["nsenter", "-t", &init_pid, "-a", "--"])
            .args(argv)
            .env_clear()
            .env("PATH", HOST_PATH)
            .env("LANG", "C.UTF-8")
            .env("HOME", "/root")
            .env("SYSTEMD_COLORS", "0")
            .stdin(Stdio::null())
            .output();
        match result {
            Ok(output) => output,
            Err(error) => Output {
                status: failed_status(),
                stdout: Vec::new(),
                stderr: format!("could not run nsenter for {argv:?}: {error}").into_bytes(),
            },
        }
    }

    /// Runs a shell script inside the host (`sh -c`).
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    /// Runs `argv` inside the host and returns its stdout; a non-zero exit is an error
    /// carrying the command, its status, stdout and stderr.
    pub fn check(&self, argv: &[&str]) -> anyhow::Result<String> {
        let output = self.exec(argv);
        if !output.status.success() {
            bail!(
                "{argv:?} on host {} failed ({}):\nstdout: {}\nstderr: {}",
                self.name,
                output.status,
                String::from_utf8_lossy(&output.stdout).trim_end(),
                String::from_utf8_lossy(&output.stderr).trim_end()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Like [`Host::check`] for a shell script.
    pub fn check_sh(&self, script: &str) -> anyhow::Result<String> {
        self.check(&["sh", "-c", script])
    }

    /// The machine-side view of `inside` (a path inside the host) through
    /// `/proc/<init PID>/root`. Symlinks inside the host that are absolute would resolve
    /// against the machine's root through this view, so write to real paths.
    pub fn path(&self, inside: &str) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.init_pid)).join(inside.trim_start_matches('/'))
    }

    /// Writes `contents` to `inside` in the host with permission bits `mode`, creating
    /// parent directories; owned by root.
    pub fn write_file(&self, inside: &str, contents: &[u8], mode: u32) -> anyhow::Result<()> {
        let path = self.path(inside);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("creating {} in host {}", parent.display(), self.name))?;
        }
        fs::write(&path, contents).with_context(|| format!("writing {inside} in host {}", self.name))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:o} on {inside} in host {}", self.name))?;
        Ok(())
    }

    /// Copies the machine's file `source` to `inside` in the host with permission bits `mode`.
    pub fn copy_in(&self, source: &Path, inside: &str, mode: u32) -> anyhow::Result<()> {
        let contents = fs::read(source).with_context(|| format!("reading {}", source.display()))?;
        self.write_file(inside, &contents, mode)
    }

    /// Reads `inside` from the host.
    pub fn read_file(&self, inside: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(inside))
    }

    /// Polls `condition` every `poll_interval` until it holds, for at most `timeout`. The
    /// error names what was awaited and carries the tail of the host's journal.
    pub fn wait_until(
        &self,
        description: &str,
        timeout: Duration,
        poll_interval: Duration,
        mut condition: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if condition() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {description} on host {}; journal:\n{}",
                    self.name,
                    self.journal_lines(None, 50)
                );
            }
            std::thread::sleep(poll_interval);
        }
    }

    /// The last 200 lines of the host's journal, of one unit or of everything.
    pub fn journal(&self, unit: Option<&str>) -> String {
        self.journal_lines(unit, DIAGNOSTIC_LINES)
    }

    /// The last `lines` lines of the host's journal, of one unit or of everything.
    pub fn journal_lines(&self, unit: Option<&str>, lines: usize) -> String {
        let lines = lines.to_string();
        let mut argv = vec!["journalctl", "--no-pager", "--no-hostname", "-n", &lines];
        if let Some(unit) = unit {
            argv.extend(["-u", unit]);
        }
        let output = self.exec(&argv);
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            let _ = write!(
                text,
                "(journalctl failed, {}: {})",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end()
            );
        }
        text
    }

    /// `systemctl is-active UNIT` inside the host: `active`, `failed`, `inactive`, ...
    pub fn unit_state(&self, unit: &str) -> String {
        String::from_utf8_lossy(&self.exec(&["systemctl", "is-active", unit]).stdout)
            .trim()
            .to_owned()
    }

    /// The main PID (as seen inside the host) of `unit`, if it is running.
    pub fn pid_of_unit(&self, unit: &str) -> Option<u32> {
        let output = self.exec(&["systemctl", "show", "--property=MainPID", "--value", unit]);
        if !output.status.success() {
            return None;
        }
        match String::from_utf8_lossy(&output.stdout).trim().parse::<u32>() {
            Ok(0) | Err(_) => None,
            Ok(pid) => Some(pid),
        }
    }

    /// Sends SIGKILL to `pid_inside` (a PID as seen inside the host): a crash, for tests
    /// of what systemd and the agent do about one.
    pub fn kill9(&self, pid_inside: u32) -> anyhow::Result<()> {
        self.check(&["kill", "-9", &pid_inside.to_string()]).map(drop)
    }

    fn console_tail(&self) -> String {
        match fs::read(&self.console_log) {
            Ok(bytes) => last_lines(&String::from_utf8_lossy(&bytes).replace('\r', ""), DIAGNOSTIC_LINES),
            Err(error) => format!("(cannot read {}: {error})", self.console_log.display()),
        }
    }

    /// Powers the host off: SIGTERM to `systemd-nspawn` asks a `--boot` container for a
    /// clean shutdown (and lets nspawn remove its ephemeral copy); after the grace period
    /// that one process is killed, which takes the container with it.
    fn stop(&mut self) {
        if matches!(self.nspawn.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.nspawn.id().to_string();
        let terminated = Command::new("kill")
            .args(["-TERM", &pid])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if matches!(terminated, Ok(status) if status.success()) {
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if matches!(self.nspawn.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!(
                "host {} did not power off within {STOP_GRACE:?}; killing systemd-nspawn (PID {pid})",
                self.name
            );
        }
        if let Err(error) = self.nspawn.kill() {
            eprintln!("host {}: killing systemd-nspawn (PID {pid}) failed: {error}", self.name);
        }
        if let Err(error) = self.nspawn.wait() {
            eprintln!(
                "host {}: waiting for systemd-nspawn (PID {pid}) failed: {error}",
                self.name
            );
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let journal = if self.init_pid != 0 {
                self.journal(None)
            } else {
                String::from("(systemd never started)")
            };
            eprintln!(
                "==== host {} journal (last {DIAGNOSTIC_LINES} lines) ====\n{journal}\n==== host {} console log ====\n{}\n==== end of host {} ====",
                self.name,
                self.name,
                self.console_tail(),
                self.name
            );
        }
        self.stop();
    }
}

/// A machine name that starts with `prefix` and is unique among live hosts on this
/// machine (process id plus a per-process counter), valid as a host name.
fn machine_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let suffix = format!("-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let mut name: String = prefix
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() {
                character.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(MAX_MACHINE_NAME - suffix.len());
    let name = name.trim_matches('-');
    let name = if name.is_empty() { "host" } else { name };
    format!("{name}{suffix}")
}

/// Finds the container's systemd among the children and grandchildren of `nspawn_pid`:
/// the process named `systemd` whose PID in its own namespace is 1.
fn find_container_init(nspawn_pid: u32) -> Option<u32> {
    for child in children(nspawn_pid) {
        if is_container_init(child) {
            return Some(child);
        }
        if let Some(grandchild) = children(child).into_iter().find(|&pid| is_container_init(pid)) {
            return Some(grandchild);
        }
    }
    None
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn is_container_init(pid: u32) -> bool {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let innermost_pid = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .and_then(|pids| pids.split_whitespace().last());
    comm.trim() == "systemd" && innermost_pid == Some("1")
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// The status of a command that could not be started: what `sh` reports for "not found".
fn failed_status() -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt as _;
    std::process::ExitStatus::from_raw(127 << 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_names_are_unique_valid_and_keep_the_prefix() {
        let first = machine_name("two_hosts_boot_in_parallel");
        let second = machine_name("two_hosts_boot_in_parallel");
        assert_ne!(first, second);
        assert!(first.starts_with("two-hosts-boot-in-parallel-"), "{first}");
        let long = machine_name(&"x".repeat(200));
        assert!(long.len() <= MAX_MACHINE_NAME, "{long}");
        assert!(machine_name("__").starts_with("host-"));
        for name in [first, second, long] {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            );
        }
    }

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
    }
}
