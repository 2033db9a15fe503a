//! A small client of systemd's D-Bus API on the system bus: reload unit files, enable,
//! restart and stop units and wait for the job's result, and read a unit's state.
//!
//! Restarting through D-Bus instead of `systemctl` gives the agent the job's real result
//! (`done`, `failed`, ...) as a value and no process to spawn or output to parse. The
//! result is taken from the `JobRemoved` signal, which the client subscribes to *before*
//! asking for the job, so a job that finishes before the method call returns is not
//! missed.
//!
//! What a job result means for drover's units (`Type=exec`, see `unit.rs`), as observed
//! on Debian 12 (systemd 252):
//!
//! - `done`: the program was executed, even if it exits at once. A program that exits 1
//!   right away still yields `done`; from then on the unit is `activating` with sub-state
//!   `auto-restart` (briefly `start` while a new attempt runs), `NRestarts` going up by one
//!   about every 1.3 s with `RestartSec=1`, `Result` `exit-code`. It is never seen
//!   `active` from a consistent snapshot. Health checks must look at [`UnitStatus`].
//! - `failed`: the program could not be executed at all (203/EXEC missing program,
//!   217/USER unknown user, 226/NAMESPACE missing `ReadWritePaths=`, 200/CHDIR a state
//!   directory other users cannot traverse); the unit then also enters `auto-restart`.
//! - `canceled`: another job replaced it (a stop during a slow restart).
//!
//! A job result says only *that* a start failed. [`UnitStatus::failure_cause`] says why,
//! from the unit's `Result` and `ExecMainCode`/`ExecMainStatus`, as `systemctl status`
//! would (`exit-code, status=217/USER`), with a hint in the terms of `drover.toml` for
//! systemd's own exit statuses; every failed or rolled-back event and `last_error` carry it.

use std::collections::HashMap;
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use systemd_zbus::{ManagerProxy, Mode};
use thiserror::Error;
use zbus::export::futures_core::Stream;
use zbus::fdo::PropertiesProxy;
use zbus::names::InterfaceName;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

/// systemd's bus name and the interfaces whose properties [`Systemd::status`] reads.
const SYSTEMD: &str = "org.freedesktop.systemd1";
const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_INTERFACE: &str = "org.freedesktop.systemd1.Service";

/// The D-Bus error systemd answers with for a unit that is not loaded.
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

/// A failed conversation with systemd. Each variant names the operation and the unit.
/// zbus errors are boxed: they are large, and these errors travel through every step.
#[derive(Debug, Error)]
pub enum SystemdError {
    /// The system bus could not be reached, or systemd is not on it.
    #[error("connecting to systemd on the system bus: {source}")]
    Connect {
        #[source]
        source: Box<zbus::Error>,
    },
    /// `daemon-reload` failed.
    #[error("reloading systemd's unit files: {source}")]
    Reload {
        #[source]
        source: Box<zbus::Error>,
    },
    /// A D-Bus call about a unit failed.
    #[error("{operation} {unit}: {source}")]
    Call {
        operation: &'static str,
        unit: String,
        #[source]
        source: Box<zbus::Error>,
    },
    /// systemd did not report the job's result in time. The job may still be queued or
    /// running; a later restart or stop with mode `replace` supersedes it.
    #[error("{operation} {unit}: systemd reported no result within {timeout:?}; the job may still be running")]
    JobWait {
        operation: &'static str,
        unit: String,
        timeout: Duration,
    },
    /// The bus connection stopped delivering signals before the job's result arrived.
    #[error("{operation} {unit}: the bus connection closed before systemd reported the job's result")]
    SignalsLost { operation: &'static str, unit: String },
}

/// How a systemd job ended: the `result` of its `JobRemoved` signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// It succeeded. For a start or restart of a `Type=exec` unit: the program was executed.
    Done,
    /// It failed (for a start: the program could not be executed, or exited during start).
    Failed,
    /// Another job replaced it, or it was cancelled.
    Canceled,
    /// It hit its job timeout.
    Timeout,
    /// A unit it required failed.
    Dependency,
    /// It was not needed (for instance a reload of an inactive unit).
    Skipped,
    /// A result this client does not know (systemd adds some now and then).
    Other(String),
}

impl JobOutcome {
    fn from_result(result: &str) -> JobOutcome {
        match result {
            "done" => JobOutcome::Done,
            "failed" => JobOutcome::Failed,
            "canceled" => JobOutcome::Canceled,
            "timeout" => JobOutcome::Timeout,
            "dependency" => JobOutcome::Dependency,
            "skipped" => JobOutcome::Skipped,
            other => JobOutcome::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for JobOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobOutcome::Done => "done",
            JobOutcome::Failed => "failed",
            JobOutcome::Canceled => "canceled",
            JobOutcome::Timeout => "timeout",
            JobOutcome::Dependency => "dependency",
            JobOutcome::Skipped => "skipped",
            JobOutcome::Other(other) => other,
        })
    }
}

/// A unit's `ActiveState`. Kept open ([`ActiveState::Other`]) because systemd adds states
/// (`refreshing` came in 256) and a status read must not fail on a newer host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActiveState {
    /// Running (for a service: started and not stopping).
    Active,
    /// Reloading its configuration.
    Reloading,
    /// Stopped, cleanly.
    Inactive,
    /// Stopped after a failure (and not going to be restarted automatically).
    Failed,
    /// Starting, or waiting to be restarted after a crash (`SubState` `auto-restart`).
    Activating,
    /// Stopping.
    Deactivating,
    /// Any other state.
    Other(String),
}

impl ActiveState {
    fn from_state(state: &str) -> ActiveState {
        match state {
            "active" => ActiveState::Active,
            "reloading" => ActiveState::Reloading,
            "inactive" => ActiveState::Inactive,
            "failed" => ActiveState::Failed,
            "activating" => ActiveState::Activating,
            "deactivating" => ActiveState::Deactivating,
            other => ActiveState::Other(other.to_owned()),
        }
    }

    /// systemd's name for the state.
    pub fn as_str(&self) -> &str {
        match self {
            ActiveState::Active => "active",
            ActiveState::Reloading => "reloading",
            ActiveState::Inactive => "inactive",
            ActiveState::Failed => "failed",
            ActiveState::Activating => "activating",
            ActiveState::Deactivating => "deactivating",
            ActiveState::Other(other) => other,
        }
    }
}

impl fmt::Display for ActiveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lets callers compare with systemd's names (`status.active_state == "active"`).
impl PartialEq<&str> for ActiveState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// How the service's main process last ended (`ExecMainCode`/`ExecMainStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MainExit {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Killed { signal: i32, core_dumped: bool },
}

/// A snapshot of a service unit's state.
///
/// The unit's states are one consistent snapshot; the service's fields (`n_restarts`,
/// `main_pid`, ...) are read right after, in a second call, and may already be newer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitStatus {
    /// `LoadState`: `loaded`, `not-found`, `bad-setting`, `error` or `masked`.
    pub load_state: String,
    /// `ActiveState`.
    pub active_state: ActiveState,
    /// `SubState`, for services e.g. `running`, `exited`, `dead`, `failed`, `auto-restart`.
    pub sub_state: String,
    /// The main process, if one runs.
    pub main_pid: Option<u32>,
    /// How often systemd restarted the service automatically since it was last started
    /// explicitly (`NRestarts`; an explicit start or restart sets it back to 0).
    pub n_restarts: u32,
    /// The service's `Result`: `success`, `exit-code`, `signal`, `core-dump`, `timeout`,
    /// `start-limit-hit`, `resources`, ...; reset by an explicit start.
    pub result: String,
    /// How the main process last ended, if it has.
    pub main_exit: Option<MainExit>,
}

impl UnitStatus {
    /// What systemd says about the unit's last failure, the way `systemctl status` puts
    /// it, with a hint for systemd's own exit statuses: `exit-code, status=217/USER (the
    /// user in [service] user does not exist on this host)`, `signal, signal=SIGKILL`,
    /// `timeout`. `None` while its `Result` is `success` and no process ended badly.
    pub fn failure_cause(&self) -> Option<String> {
        let exit = match self.main_exit {
            Some(MainExit::Exited(0)) | None => None,
            Some(MainExit::Exited(status)) => Some(match exit_status_name(status) {
                Some(name) => format!("status={status}/{name}"),
                None => format!("status={status}"),
            }),
            Some(MainExit::Killed { signal, core_dumped }) => Some(format!(
                "signal={}{}",
                signal_name(signal).map_or_else(|| signal.to_string(), str::to_owned),
                if core_dumped { " (core dumped)" } else { "" }
            )),
        };
        let result = (!self.result.is_empty() && self.result != "success").then_some(self.result.as_str());
        let mut cause = match (result, exit) {
            (None, None) => return None,
            (Some(result), None) => result.to_owned(),
            (None, Some(exit)) => exit,
            (Some(result), Some(exit)) => format!("{result}, {exit}"),
        };
        if let Some(MainExit::Exited(status)) = self.main_exit
            && let Some(hint) = exit_status_hint(status)
        {
            cause.push_str(&format!(" ({hint})"));
        } else if self.result == "timeout" {
            cause.push_str(" (it did not start or stop within its timeout)");
        } else if self.result == "start-limit-hit" {
            cause.push_str(" (it was restarted too often)");
        }
        Some(cause)
    }

    /// Active with its main process running, which is what "up" means for drover's
    /// long-running `Type=exec` services.
    pub fn is_running(&self) -> bool {
        self.active_state == ActiveState::Active && self.sub_state == "running"
    }

    /// Waiting to be restarted after its process ended (a crash loop shows as this and a
    /// growing `n_restarts`).
    pub fn is_restarting(&self) -> bool {
        self.sub_state == "auto-restart"
    }
}

/// systemd's name for an exit status (`systemctl status` shows `status=217/USER`): the
/// LSB codes 1-7 and systemd's own 200-245, with which it reports a failure to set up
/// the process before the program ran.
pub fn exit_status_name(status: i32) -> Option<&'static str> {
    Some(match status {
        1 => "FAILURE",
        2 => "INVALIDARGUMENT",
        3 => "NOTIMPLEMENTED",
        4 => "NOPERMISSION",
        5 => "NOTINSTALLED",
        6 => "NOTCONFIGURED",
        7 => "NOTRUNNING",
        200 => "CHDIR",
        201 => "NICE",
        202 => "FDS",
        203 => "EXEC",
        204 => "MEMORY",
        205 => "LIMITS",
        206 => "OOM_ADJUST",
        207 => "SIGNAL_MASK",
        208 => "STDIN",
        209 => "STDOUT",
        210 => "CHROOT",
        211 => "IOPRIO",
        212 => "TIMERSLACK",
        213 => "SECUREBITS",
        214 => "SETSCHEDULER",
        215 => "CPUAFFINITY",
        216 => "GROUP",
        217 => "USER",
        218 => "CAPABILITIES",
        219 => "CGROUP",
        220 => "SETSID",
        221 => "CONFIRM",
        222 => "STDERR",
        224 => "PAM",
        225 => "NETWORK",
        226 => "NAMESPACE",
        227 => "NO_NEW_PRIVILEGES",
        228 => "SECCOMP",
        229 => "SELINUX_CONTEXT",
        230 => "PERSONALITY",
        231 => "APPARMOR_PROFILE",
        232 => "ADDRESS_FAMILIES",
        233 => "RUNTIME_DIRECTORY",
        235 => "CHOWN",
        236 => "SMACK_PROCESS_LABEL",
        237 => "KEYRING",
        238 => "STATE_DIRECTORY",
        239 => "CACHE_DIRECTORY",
        240 => "LOGS_DIRECTORY",
        241 => "CONFIGURATION_DIRECTORY",
        242 => "NUMA_POLICY",
        243 => "CREDENTIALS",
        245 => "BPF",
        _ => return None,
    })
}

/// What an operator should look at for the exit statuses with which systemd says it
/// could not set up an app's process (the program never ran), in the terms of the app's
/// `drover.toml`.
pub fn exit_status_hint(status: i32) -> Option<&'static str> {
    Some(match status {
        200 => "the working directory does not exist or the service's user cannot enter it",
        203 => "the program could not be executed: it is missing, not executable, or its #! interpreter does not exist",
        204 => "out of memory while starting",
        205 => "a resource limit could not be set",
        209 => "standard output could not be set up",
        214 => "the scheduling settings could not be applied",
        216 => "the group in [service] group does not exist on this host",
        217 => "the user in [service] user does not exist on this host",
        218 => "the capability settings could not be applied",
        219 => "the control group could not be set up",
        226 => "a path the sandbox binds or makes writable does not exist on this host",
        227 => "NoNewPrivileges= could not be applied",
        228 => "the system call filter could not be applied",
        233 => "the runtime directory could not be created",
        238 => "the state directory could not be created",
        243 => "credentials could not be set up",
        _ => return None,
    })
}

/// The name of the signals that commonly end a service (`SIGKILL` from the OOM killer or
/// a stop timeout, `SIGSEGV` and `SIGABRT` from crashes).
fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => return None,
    })
}

/// Log lines for the journal with their priority: journald reads a `<N>` prefix on a
/// service's stderr as the line's syslog priority (`SyslogLevelPrefix=`, on by default),
/// so `journalctl -u drover-agent -p warning` shows the agent's WARN and ERROR lines.
/// Without it every line is priority 6 (info).
#[derive(Debug)]
pub struct JournalPriority<F>(pub F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPriority<F>
where
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        context: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", journal_priority(*event.metadata().level()))?;
        self.0.format_event(context, writer, event)
    }
}

/// The syslog priority of a log level: ERROR 3 (err), WARN 4 (warning), INFO 6, else 7.
fn journal_priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// A connection to systemd (PID 1) over the system bus.
#[derive(Clone, Debug)]
pub struct Systemd {
    connection: zbus::Connection,
    manager: ManagerProxy<'static>,
}

impl Systemd {
    /// Connects to the system bus and subscribes to systemd's job signals.
    pub async fn connect() -> Result<Systemd, SystemdError> {
        let connection = zbus::Connection::system()
            .await
            .map_err(|source| SystemdError::Connect { source: source.into() })?;
        let manager = ManagerProxy::builder(&connection)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|source| SystemdError::Connect { source: source.into() })?;
        // systemd sends `JobRemoved` to the client that queued the job in any case; being
        // subscribed also makes it broadcast them, which older versions needed.
        manager
            .subscribe()
            .await
            .map_err(|source| SystemdError::Connect { source: source.into() })?;
        Ok(Systemd { connection, manager })
    }

    /// Re-reads all unit files (`systemctl daemon-reload`); returns once systemd has
    /// finished reloading, so a unit file written before is in effect.
    pub async fn daemon_reload(&self) -> Result<(), SystemdError> {
        self.manager
            .reload()
            .await
            .map_err(|source| SystemdError::Reload { source: source.into() })
    }

    /// Enables the unit (`systemctl enable`): links it into the targets its `[Install]`
    /// section names, so that it starts at boot without the agent. It does not start it.
    pub async fn enable(&self, unit: &str) -> Result<(), SystemdError> {
        // Not runtime-only (it must survive a reboot), and forced: a stale link left by an
        // older unit file of the same name is replaced.
        self.manager
            .enable_unit_files(&[unit], false, true)
            .await
            .map(drop)
            .map_err(call_error("enabling", unit))
    }

    /// Disables the unit (`systemctl disable`): it no longer starts at boot.
    pub async fn disable(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager
            .disable_unit_files(&[unit], false)
            .await
            .map(drop)
            .map_err(call_error("disabling", unit))
    }

    /// Restarts the unit (starting it if it is stopped) and waits up to `timeout` for the
    /// job's result. A failed unit is reset first: systemd refuses to start a unit that hit
    /// its start rate limit, and `n_restarts` and `result` start from scratch.
    pub async fn restart(&self, unit: &str, timeout: Duration) -> Result<JobOutcome, SystemdError> {
        match self.manager.reset_failed_unit(unit).await {
            Ok(()) => {}
            // Not loaded yet: nothing to reset, and the restart loads it.
            Err(error) if is_no_such_unit(&error) => {}
            Err(source) => return Err(call_error("resetting", unit)(source)),
        }
        self.run_job(
            "restarting",
            unit,
            timeout,
            self.manager.restart_unit(unit, Mode::Replace),
        )
        .await
    }

    /// Restarts the unit if it is running (`systemctl try-restart`) and waits up to
    /// `timeout` for the job's result; a stopped unit stays stopped.
    pub async fn try_restart(&self, unit: &str, timeout: Duration) -> Result<JobOutcome, SystemdError> {
        self.run_job(
            "restarting",
            unit,
            timeout,
            self.manager.try_restart_unit(unit, Mode::Replace),
        )
        .await
    }

    /// Stops the unit and waits up to `timeout` for the job's result. A unit systemd does
    /// not know is already stopped: [`JobOutcome::Done`].
    pub async fn stop(&self, unit: &str, timeout: Duration) -> Result<JobOutcome, SystemdError> {
        match self
            .run_job("stopping", unit, timeout, self.manager.stop_unit(unit, Mode::Replace))
            .await
        {
            Err(SystemdError::Call { source, .. }) if is_no_such_unit(&source) => Ok(JobOutcome::Done),
            other => other,
        }
    }

    /// Reads the unit's state. A unit systemd has no file for is reported, not an error:
    /// `load_state` `not-found`, `active_state` inactive.
    pub async fn status(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        let error = call_error("reading the status of", unit);
        // `LoadUnit` rather than `GetUnit`: it answers for units that are not loaded too.
        let path = self.manager.load_unit(unit).await.map_err(&error)?;
        let properties = PropertiesProxy::builder(&self.connection)
            .destination(SYSTEMD)
            .map_err(&error)?
            .path(path)
            .map_err(&error)?
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(&error)?;
        // One `GetAll` per interface: systemd answers it in one go, so the states within it
        // belong together (reading `ActiveState` and `SubState` one by one was seen to mix
        // `active` with the `auto-restart` that followed a millisecond later).
        let mut unit_properties = get_all(&properties, UNIT_INTERFACE).await.map_err(&error)?;
        let mut service_properties = get_all(&properties, SERVICE_INTERFACE).await.map_err(&error)?;
        let active_state: String = take(&mut unit_properties, "ActiveState").map_err(&error)?;
        let sub_state: String = take(&mut unit_properties, "SubState").map_err(&error)?;
        let load_state: String = take(&mut unit_properties, "LoadState").map_err(&error)?;
        let main_pid: u32 = take(&mut service_properties, "MainPID").map_err(&error)?;
        let n_restarts: u32 = take(&mut service_properties, "NRestarts").map_err(&error)?;
        let result: String = take(&mut service_properties, "Result").map_err(&error)?;
        let exec_main_code: i32 = take(&mut service_properties, "ExecMainCode").map_err(&error)?;
        let exec_main_status: i32 = take(&mut service_properties, "ExecMainStatus").map_err(&error)?;
        // `ExecMainCode` is a `si_code` of `waitid`: CLD_EXITED 1, CLD_KILLED 2, CLD_DUMPED 3.
        let main_exit = match exec_main_code {
            1 => Some(MainExit::Exited(exec_main_status)),
            2 | 3 => Some(MainExit::Killed {
                signal: exec_main_status,
                core_dumped: exec_main_code == 3,
            }),
            _ => None,
        };
        Ok(UnitStatus {
            load_state,
            active_state: ActiveState::from_state(&active_state),
            sub_state,
            main_pid: (main_pid != 0).then_some(main_pid),
            n_restarts,
            result,
            main_exit,
        })
    }

    /// Queues a job with `enqueue` and waits for its `JobRemoved` signal.
    async fn run_job(
        &self,
        operation: &'static str,
        unit: &str,
        timeout: Duration,
        enqueue: impl Future<Output = zbus::Result<OwnedObjectPath>>,
    ) -> Result<JobOutcome, SystemdError> {
        // Subscribe first: the job may finish before the call that queues it returns.
        let mut removed = self
            .manager
            .receive_job_removed()
            .await
            .map_err(call_error(operation, unit))?;
        let job = enqueue.await.map_err(call_error(operation, unit))?;
        let wait = async {
            while let Some(signal) = poll_fn(|context| Pin::new(&mut removed).poll_next(context)).await {
                let args = signal.args().map_err(call_error(operation, unit))?;
                if *args.job() == *job {
                    return Ok(JobOutcome::from_result(args.result()));
                }
            }
            Err(SystemdError::SignalsLost {
                operation,
                unit: unit.to_owned(),
            })
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or_else(|_elapsed| {
            Err(SystemdError::JobWait {
                operation,
                unit: unit.to_owned(),
                timeout,
            })
        })
    }
}

fn call_error(operation: &'static str, unit: &str) -> impl Fn(zbus::Error) -> SystemdError {
    let unit = unit.to_owned();
    move |source| SystemdError::Call {
        operation,
        unit: unit.clone(),
        source: Box::new(source),
    }
}

async fn get_all(
    properties: &PropertiesProxy<'_>,
    interface: &'static str,
) -> Result<HashMap<String, OwnedValue>, zbus::Error> {
    Ok(properties
        .get_all(InterfaceName::from_static_str_unchecked(interface))
        .await?)
}

/// Takes one property out of a `GetAll` answer, as the type systemd documents for it.
fn take<T>(properties: &mut HashMap<String, OwnedValue>, name: &str) -> Result<T, zbus::Error>
where
    T: TryFrom<OwnedValue, Error = zbus::zvariant::Error>,
{
    let value = properties
        .remove(name)
        .ok_or_else(|| zbus::Error::Failure(format!("systemd did not report the property {name}")))?;
    Ok(T::try_from(value)?)
}

fn is_no_such_unit(error: &zbus::Error) -> bool {
    matches!(error, zbus::Error::MethodError(name, _, _) if name.as_str() == NO_SUCH_UNIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_results_map_to_outcomes() {
        for (text, outcome) in [
            ("done", JobOutcome::Done),
            ("failed", JobOutcome::Failed),
            ("canceled", JobOutcome::Canceled),
            ("timeout", JobOutcome::Timeout),
            ("dependency", JobOutcome::Dependency),
            ("skipped", JobOutcome::Skipped),
            ("frozen", JobOutcome::Other("frozen".to_owned())),
        ] {
            assert_eq!(JobOutcome::from_result(text), outcome);
            assert_eq!(outcome.to_string(), text);
        }
    }

    #[test]
    fn journal_lines_carry_the_syslog_priority_of_their_level() {
        assert_eq!(journal_priority(tracing::Level::ERROR), 3);
        assert_eq!(journal_priority(tracing::Level::WARN), 4);
        assert_eq!(journal_priority(tracing::Level::INFO), 6);
        assert_eq!(journal_priority(tracing::Level::DEBUG), 7);
    }

    fn status_with(result: &str, main_exit: Option<MainExit>) -> UnitStatus {
        UnitStatus {
            load_state: "loaded".to_owned(),
            active_state: ActiveState::Activating,
            sub_state: "auto-restart".to_owned(),
            main_pid: None,
            n_restarts: 0,
            result: result.to_owned(),
            main_exit,
        }
    }

    #[test]
    fn a_failure_cause_reads_like_systemctl_status_with_a_hint() {
        assert_eq!(
            status_with("exit-code", Some(MainExit::Exited(217)))
                .failure_cause()
                .as_deref(),
            Some("exit-code, status=217/USER (the user in [service] user does not exist on this host)")
        );
        assert!(
            status_with("exit-code", Some(MainExit::Exited(203)))
                .failure_cause()
                .is_some_and(|cause| cause.starts_with("exit-code, status=203/EXEC (the program could not be executed"))
        );
        assert_eq!(
            status_with("exit-code", Some(MainExit::Exited(1)))
                .failure_cause()
                .as_deref(),
            Some("exit-code, status=1/FAILURE")
        );
        assert_eq!(
            status_with("exit-code", Some(MainExit::Exited(42)))
                .failure_cause()
                .as_deref(),
            Some("exit-code, status=42")
        );
        assert_eq!(
            status_with(
                "signal",
                Some(MainExit::Killed {
                    signal: 9,
                    core_dumped: false
                })
            )
            .failure_cause()
            .as_deref(),
            Some("signal, signal=SIGKILL")
        );
        assert_eq!(
            status_with(
                "core-dump",
                Some(MainExit::Killed {
                    signal: 11,
                    core_dumped: true
                })
            )
            .failure_cause()
            .as_deref(),
            Some("core-dump, signal=SIGSEGV (core dumped)")
        );
        assert_eq!(
            status_with("timeout", None).failure_cause().as_deref(),
            Some("timeout (it did not start or stop within its timeout)")
        );
        assert_eq!(status_with("success", None).failure_cause(), None);
        assert_eq!(status_with("success", Some(MainExit::Exited(0))).failure_cause(), None);
    }

    #[test]
    fn systemd_exit_statuses_have_names_and_the_common_ones_hints() {
        for (status, name) in [
            (200, "CHDIR"),
            (203, "EXEC"),
            (216, "GROUP"),
            (217, "USER"),
            (226, "NAMESPACE"),
        ] {
            assert_eq!(exit_status_name(status), Some(name));
            assert!(exit_status_hint(status).is_some(), "{status} has a hint");
        }
        assert_eq!(exit_status_name(0), None);
        assert_eq!(exit_status_hint(1), None, "an app's own failure has no systemd hint");
    }

    #[test]
    fn active_states_round_trip_and_compare_with_text() {
        for text in [
            "active",
            "reloading",
            "inactive",
            "failed",
            "activating",
            "deactivating",
            "refreshing",
        ] {
            let state = ActiveState::from_state(text);
            assert_eq!(state.as_str(), text);
            assert!(state == text);
        }
        assert_eq!(
            ActiveState::from_state("refreshing"),
            ActiveState::Other("refreshing".to_owned())
        );
    }
}
