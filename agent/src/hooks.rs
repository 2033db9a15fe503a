//! Lifecycle hooks (`pre_start`, `post_start`): short commands run from the new release
//! directory with the app's environment, killed with everything they started when their
//! timeout passes, their output kept so a failure explains itself.
//!
//! The same bounded runner serves the health gate's command checks ([`crate::health`]).
//!
//! **Invariant:** a command run here leaves no process behind in its process group: when
//! it exits or times out, whatever remains of the group is killed. Hooks are not a way to
//! start daemons; anything meant to keep running belongs in the service itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_protocol::spec::{EnvName, Hook};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// How much of a command's combined stdout and stderr is kept: the end is what explains
/// a failure, and an unbounded buffer would let a chatty hook grow the agent's memory.
pub const OUTPUT_TAIL_BYTES: usize = 4096;

/// The search path commands start with, systemd's default for services, so a hook finds
/// the same programs the service would. The app's environment may override it.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long output is still collected after the command ended and its group was killed.
/// Bounded because a process that left the group (`setsid`) may hold the pipes open.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// A hook that did not succeed, naming the hook, its command line and why.
#[derive(Debug, Error)]
pub enum HookError {
    /// The program could not be started (missing, not executable, bad directory).
    #[error("{hook} hook `{command}` could not be started: {source}")]
    Spawn {
        hook: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the program failed; it has been killed.
    #[error("{hook} hook `{command}` could not be waited for: {source}")]
    Wait {
        hook: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// The program exited unsuccessfully (non-zero status or a signal).
    #[error("{hook} hook `{command}` failed with {status}{}", show_output(.output))]
    Failed {
        hook: String,
        command: String,
        status: ExitStatus,
        /// The last [`OUTPUT_TAIL_BYTES`] of its combined stdout and stderr.
        output: String,
    },
    /// The program outlived its timeout and was killed with its process group.
    #[error("{hook} hook `{command}` timed out after {timeout} and was killed{}", show_output(.output))]
    TimedOut {
        hook: String,
        command: String,
        timeout: drover_protocol::Duration,
        /// The last [`OUTPUT_TAIL_BYTES`] of its combined stdout and stderr.
        output: String,
    },
}

fn show_output(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("; output:\n{output}")
    }
}

/// Runs hook `name` (`pre_start`, `post_start`) from `release_dir` with the app's
/// `environment`, stdin closed, and kills it with its process group after `hook.timeout`.
///
/// A relative program with a `/` (`bin/migrate`) is resolved against the release
/// directory; a bare name (`sh`) is looked up in `PATH`. The agent's own environment is
/// not passed on, so a hook sees what the service sees.
pub async fn run_hook(
    name: &str,
    hook: &Hook,
    release_dir: &Path,
    environment: &BTreeMap<EnvName, String>,
) -> Result<(), HookError> {
    let argv = hook.command.argv();
    let command = display_argv(argv);
    let pairs = environment.iter().map(|(key, value)| (key.as_str(), value.as_str()));
    match run_bounded(argv, release_dir, pairs, hook.timeout.to_std()).await {
        Ok(finished) if finished.status.success() => Ok(()),
        Ok(finished) => Err(HookError::Failed {
            hook: name.to_owned(),
            command,
            status: finished.status,
            output: finished.output,
        }),
        Err(RunError::TimedOut { output }) => Err(HookError::TimedOut {
            hook: name.to_owned(),
            command,
            timeout: hook.timeout,
            output,
        }),
        Err(RunError::Spawn(source)) => Err(HookError::Spawn {
            hook: name.to_owned(),
            command,
            source,
        }),
        Err(RunError::Wait(source)) => Err(HookError::Wait {
            hook: name.to_owned(),
            command,
            source,
        }),
    }
}

/// A command that ran to its end within the timeout.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    /// The tail of its combined stdout and stderr, lossily decoded and trimmed.
    pub(crate) output: String,
}

/// Why [`run_bounded`] has no exit status to give.
#[derive(Debug)]
pub(crate) enum RunError {
    Spawn(std::io::Error),
    Wait(std::io::Error),
    TimedOut { output: String },
}

/// Runs `argv` from `dir` in a new process group with a clean environment (`PATH` plus
/// `environment`), capturing the tail of its output, and kills the group when the program
/// exits or `timeout` passes.
pub(crate) async fn run_bounded<'a>(
    argv: &[String],
    dir: &Path,
    environment: impl Iterator<Item = (&'a str, &'a str)>,
    timeout: Duration,
) -> Result<Finished, RunError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(RunError::Spawn(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command line",
        )));
    };
    let mut command = Command::new(resolve_program(program, dir));
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .envs(environment)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(RunError::Spawn)?;
    // The child leads its own group, so its pid is the group id.
    let group = child.id();

    let tail = Arc::new(Mutex::new(Tail::default()));
    let readers = [
        child
            .stdout
            .take()
            .map(|pipe| tokio::spawn(read_into(pipe, Arc::clone(&tail)))),
        child
            .stderr
            .take()
            .map(|pipe| tokio::spawn(read_into(pipe, Arc::clone(&tail)))),
    ];

    let waited = tokio::time::timeout(timeout, child.wait()).await;
    // On timeout the leader is not reaped yet, so its pid still names the group; after a
    // normal exit the group lives on only while stragglers do.
    if let Some(group) = group {
        kill_group(group).await;
    }
    let result = match waited {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(source)) => {
            let _ = child.start_kill();
            Err(RunError::Wait(source))
        }
        Err(_elapsed) => {
            // Should the group kill have failed, at least the leader goes.
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(RunError::TimedOut { output: String::new() })
        }
    };

    for reader in readers.into_iter().flatten() {
        let abort = reader.abort_handle();
        if tokio::time::timeout(DRAIN_TIMEOUT, reader).await.is_err() {
            abort.abort();
        }
    }
    let output = tail.lock().map(|tail| tail.text()).unwrap_or_default();
    match result {
        Ok(status) => Ok(Finished { status, output }),
        Err(RunError::TimedOut { .. }) => Err(RunError::TimedOut { output }),
        Err(other) => Err(other),
    }
}

/// A relative program with a directory part belongs to the release; a bare name is looked
/// up in `PATH`. Joined explicitly because how a relative program combines with
/// `current_dir` is platform-specific in `std::process`.
fn resolve_program(program: &str, dir: &Path) -> PathBuf {
    let path = Path::new(program);
    if path.is_absolute() || !program.contains('/') {
        return path.to_path_buf();
    }
    std::path::absolute(dir)
        .unwrap_or_else(|_| dir.to_path_buf())
        .join(path)
}

/// Sends SIGKILL to process group `group` through the shell's `kill` builtin: there is no
/// safe std API for it, and `/bin/sh` is on every host systemd runs on (unlike procps).
async fn kill_group(group: u32) {
    let _ = Command::new("/bin/sh")
        .args(["-c", "kill -KILL -\"$1\"", "sh"])
        .arg(group.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

async fn read_into(mut pipe: impl AsyncRead + Unpin, tail: Arc<Mutex<Tail>>) {
    let mut buffer = [0_u8; 4096];
    while let Ok(read @ 1..) = pipe.read(&mut buffer).await {
        if let Ok(mut tail) = tail.lock() {
            tail.push(&buffer[..read]);
        }
    }
}

/// The last [`OUTPUT_TAIL_BYTES`] written to it.
#[derive(Debug, Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > OUTPUT_TAIL_BYTES {
            let excess = self.0.len() - OUTPUT_TAIL_BYTES;
            self.0.drain(..excess);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).trim().to_owned()
    }
}

/// A command line as an operator would type it, quoting arguments that need it.
pub(crate) fn display_argv(argv: &[String]) -> String {
    let quote = |arg: &String| {
        let plain = !arg.is_empty()
            && arg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
        if plain {
            arg.clone()
        } else {
            format!("'{}'", arg.replace('\'', r"'\''"))
        }
    };
    argv.iter().map(quote).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(argv: &[&str], timeout: drover_protocol::Duration) -> Hook {
        Hook {
            command: drover_protocol::spec::Command::try_from(argv.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
                .expect("valid command"),
            timeout,
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<EnvName, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.parse().expect("valid name"), (*value).to_owned()))
            .collect()
    }

    const LONG: drover_protocol::Duration = drover_protocol::Duration::from_secs(20);

    #[tokio::test]
    async fn success_runs_in_release_dir_with_app_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = "pwd > where; printf %s \"$GREETING\" > greeting; printf %s \"${HOME-unset}\" > home";
        run_hook(
            "pre_start",
            &hook(&["sh", "-c", script], LONG),
            dir.path(),
            &env(&[("GREETING", "hi")]),
        )
        .await
        .expect("hook succeeds");
        let canonical = dir.path().canonicalize().expect("canonical");
        let recorded = std::fs::read_to_string(dir.path().join("where")).expect("where");
        assert_eq!(Path::new(recorded.trim()).canonicalize().expect("canonical"), canonical);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("greeting")).expect("greeting"),
            "hi"
        );
        // The agent's own environment is not passed on.
        assert_eq!(std::fs::read_to_string(dir.path().join("home")).expect("home"), "unset");
    }

    #[tokio::test]
    async fn relative_program_resolves_against_release_dir() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("bin")).expect("mkdir");
        let script = dir.path().join("bin/migrate");
        std::fs::write(&script, "#!/bin/sh\necho migrated > done\n").expect("write");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        run_hook("pre_start", &hook(&["bin/migrate"], LONG), dir.path(), &BTreeMap::new())
            .await
            .expect("hook succeeds");
        assert!(dir.path().join("done").exists());
    }

    #[tokio::test]
    async fn failure_names_hook_command_status_and_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = run_hook(
            "post_start",
            &hook(&["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"], LONG),
            dir.path(),
            &BTreeMap::new(),
        )
        .await
        .expect_err("exit 3 fails");
        let HookError::Failed { status, output, .. } = &error else {
            panic!("expected Failed, got {error:?}");
        };
        assert_eq!(status.code(), Some(3));
        assert!(output.contains("to-stdout") && output.contains("to-stderr"), "{output}");
        let message = error.to_string();
        assert!(
            message.starts_with("post_start hook `sh -c 'echo to-stdout;"),
            "{message}"
        );
        assert!(message.contains("exit status: 3"), "{message}");
    }

    #[tokio::test]
    async fn output_is_bounded_to_its_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = "i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done; exit 1";
        let error = run_hook(
            "pre_start",
            &hook(&["sh", "-c", script], LONG),
            dir.path(),
            &BTreeMap::new(),
        )
        .await
        .expect_err("exit 1 fails");
        let HookError::Failed { output, .. } = error else {
            panic!("expected Failed");
        };
        assert!(output.len() <= OUTPUT_TAIL_BYTES);
        assert!(output.ends_with("line-1999"), "{output}");
        assert!(!output.contains("line-0\n"));
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = run_hook("pre_start", &hook(&["bin/absent"], LONG), dir.path(), &BTreeMap::new())
            .await
            .expect_err("missing program");
        assert!(matches!(error, HookError::Spawn { .. }), "{error:?}");
        assert!(
            error.to_string().contains("`bin/absent` could not be started"),
            "{error}"
        );
    }

    /// Whether a process with this pid still exists and is not a zombie.
    fn alive(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit(") ").next().is_some_and(|rest| !rest.starts_with('Z')))
    }

    async fn wait_gone(pid: &str) -> bool {
        for _ in 0..100 {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The shell starts a sleeping child, records its pid, and waits on it.
        let script = "sleep 300 & echo $! > child; echo started; wait";
        let started = std::time::Instant::now();
        let error = run_hook(
            "pre_start",
            &hook(&["sh", "-c", script], drover_protocol::Duration::from_millis(500)),
            dir.path(),
            &BTreeMap::new(),
        )
        .await
        .expect_err("times out");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        let HookError::TimedOut { output, .. } = &error else {
            panic!("expected TimedOut, got {error:?}");
        };
        assert_eq!(output, "started");
        assert!(
            error.to_string().contains("timed out after 500ms and was killed"),
            "{error}"
        );
        let child = std::fs::read_to_string(dir.path().join("child")).expect("child pid");
        assert!(
            wait_gone(child.trim()).await,
            "the sleeping child {} survived",
            child.trim()
        );
    }

    #[tokio::test]
    async fn stragglers_are_killed_after_a_successful_hook() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = "sleep 300 > /dev/null 2>&1 & echo $! > child";
        let started = std::time::Instant::now();
        run_hook(
            "post_start",
            &hook(&["sh", "-c", script], LONG),
            dir.path(),
            &BTreeMap::new(),
        )
        .await
        .expect("hook succeeds");
        assert!(started.elapsed() < Duration::from_secs(10));
        let child = std::fs::read_to_string(dir.path().join("child")).expect("child pid");
        assert!(
            wait_gone(child.trim()).await,
            "the background child {} survived",
            child.trim()
        );
    }

    #[test]
    fn argv_display_quotes_what_needs_it() {
        let argv: Vec<String> = ["sh", "-c", "echo 'hi' there", ""]
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
        assert_eq!(display_argv(&argv), r"sh -c 'echo '\''hi'\'' there' ''");
    }
}
