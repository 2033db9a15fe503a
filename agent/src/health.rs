//! The health gate after a release is restarted: a pure [`Gate`] that turns rounds of
//! probe results into a verdict, and [`probe_checks`], the I/O that runs one round of an
//! app's HTTP, TCP and command checks.
//!
//! The caller drives the loop: it reads the unit's state from systemd, calls
//! [`probe_checks`], feeds both to [`Gate::observe`] with the time since the restart, and
//! sleeps [`Gate::interval`] while the verdict is [`Verdict::Pending`]. The gate reads no
//! clock, so its rules are tested with plain numbers.
//!
//! **Invariant:** the gate never says [`Verdict::Healthy`] without `successes`
//! consecutive fully passing rounds that began within the grace period (or, for a gate
//! [`Gate::resumed`] after its grace period ended while the agent was down, one fully
//! passing round), and any round that begins after the grace period decides: a release
//! cannot stay pending forever.
//!
//! **Invariant:** the grace period counts from the restart recorded in the journal, so an
//! agent restarted during a health check resumes it and never extends it
//! ([`elapsed_since`], [`Gate::resumed`]): an agent that crash-loops faster than the grace
//! period still rolls a bad release back by its original deadline.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use drover_protocol::Timestamp;
use drover_protocol::spec::{Health, HealthCheck, HealthUrl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::hooks::{self, RunError};

/// The systemd unit's state as the caller read it for one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitState {
    /// `ActiveState` is `active`.
    pub active: bool,
    /// `ActiveState` is `failed`: systemd gave up, so the release will not recover.
    pub failed: bool,
    /// The unit's `NRestarts`: automatic restarts systemd performed.
    pub restarts: u32,
}

/// The outcome of one check in one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// What was checked, for messages: `http GET http://127.0.0.1:8080/healthz`.
    pub check: String,
    /// Why it failed, one line; `None` when it passed.
    pub failure: Option<String>,
}

impl CheckResult {
    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// One round: the unit's state and every check's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub unit: UnitState,
    pub checks: Vec<CheckResult>,
}

impl Probe {
    /// Why this round fails, one line, or `None` when it fully passes.
    fn failure(&self) -> Option<String> {
        let mut reasons = Vec::new();
        if !self.unit.active {
            reasons.push("unit is not active".to_owned());
        }
        for check in &self.checks {
            if let Some(failure) = &check.failure {
                reasons.push(format!("{}: {failure}", check.check));
            }
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

/// What the gate concluded so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet: probe again after [`Gate::interval`].
    Pending,
    /// Enough consecutive passing rounds: keep the release.
    Healthy,
    /// Roll back; the reason says why, one line.
    Unhealthy(String),
}

/// Decides whether a freshly restarted release is healthy, from rounds of probes.
///
/// Rules, in order, for each observed round:
/// 1. Once decided, the verdict never changes.
/// 2. A `failed` unit, or one whose restart counter grew past the value at the restart
///    (a restart loop), is unhealthy at once: it will not get better by waiting.
/// 3. A round that begins after the grace period decides: unhealthy, with the last
///    failure's reason. A release must become healthy within its grace period.
/// 4. A round passes when the unit is active and every check passes. `successes`
///    consecutive passing rounds make the release healthy (at least one: the unit-state
///    check always applies); a failing round resets the count.
#[derive(Clone, Debug)]
pub struct Gate {
    grace_period: drover_protocol::Duration,
    interval: Duration,
    successes_needed: u32,
    restarts_at_start: u32,
    consecutive: u32,
    last_failure: Option<String>,
    decided: Option<Verdict>,
    /// Resumed after the grace period had already ended: the first round decides alone.
    resumed_late: bool,
}

/// How long ago `started` (a journaled second, rounded down when it was written) was at
/// `now`, rounded so a resumed grace period can only come out shorter, never longer.
/// Zero when the clock went back. Pure: the caller reads the clock.
pub fn elapsed_since(started: Timestamp, now: SystemTime) -> Duration {
    let seconds = u64::try_from(started.unix()).unwrap_or(0);
    now.duration_since(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
        .unwrap_or(Duration::ZERO)
}

impl Gate {
    /// A gate for `health`; `restarts_at_start` is the unit's `NRestarts` right after the
    /// restart job finished, so restarts from before do not count as a loop.
    pub fn new(health: &Health, restarts_at_start: u32) -> Gate {
        Gate {
            grace_period: health.grace_period,
            interval: health.interval.to_std(),
            successes_needed: health.successes.max(1),
            restarts_at_start,
            consecutive: 0,
            last_failure: None,
            decided: None,
            resumed_late: false,
        }
    }

    /// A gate for a health check the agent picks up again after a restart of its own:
    /// the release was restarted `elapsed` ago (by the journal) and is not restarted
    /// again, so the grace period goes on from there instead of starting over, and the
    /// caller passes `elapsed` plus its own time to [`Gate::observe`]. When the grace
    /// period has already ended, the first round decides alone: fully passing is healthy
    /// (the release is fine and the agent was merely away), anything else unhealthy.
    pub fn resumed(health: &Health, restarts_at_start: u32, elapsed: Duration) -> Gate {
        let mut gate = Gate::new(health, restarts_at_start);
        gate.resumed_late = elapsed > gate.grace_period();
        gate
    }

    /// How long the caller waits between rounds.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long after the restart the release has to become healthy.
    pub fn grace_period(&self) -> Duration {
        self.grace_period.to_std()
    }

    /// Feeds one round, `elapsed` being the time from the restart to when the round's
    /// probes began (not ended, so a slow check does not push a round past the grace).
    pub fn observe(&mut self, probe: Probe, elapsed: Duration) -> Verdict {
        if let Some(verdict) = &self.decided {
            return verdict.clone();
        }
        let verdict = self.judge(&probe, elapsed);
        if verdict != Verdict::Pending {
            self.decided = Some(verdict.clone());
        }
        verdict
    }

    fn judge(&mut self, probe: &Probe, elapsed: Duration) -> Verdict {
        if probe.unit.failed {
            let detail = probe.failure().map(|reason| format!(" ({reason})")).unwrap_or_default();
            return Verdict::Unhealthy(format!("the unit failed{detail}"));
        }
        // A counter below the start value was reset by a fresh start: count from there.
        self.restarts_at_start = self.restarts_at_start.min(probe.unit.restarts);
        if probe.unit.restarts > self.restarts_at_start {
            let restarts = probe.unit.restarts - self.restarts_at_start;
            return Verdict::Unhealthy(format!(
                "the unit restarted {restarts} time{} since the release started (restart loop)",
                if restarts == 1 { "" } else { "s" }
            ));
        }
        let failure = probe.failure();
        if std::mem::take(&mut self.resumed_late) && failure.is_none() {
            return Verdict::Healthy;
        }
        if elapsed > self.grace_period.to_std() {
            let why = failure.or_else(|| self.last_failure.take()).unwrap_or_else(|| {
                format!(
                    "only {} of {} consecutive passing rounds",
                    self.consecutive, self.successes_needed
                )
            });
            return Verdict::Unhealthy(format!(
                "not healthy within the {} grace period: {why}",
                self.grace_period
            ));
        }
        match failure {
            Some(reason) => {
                self.consecutive = 0;
                self.last_failure = Some(reason);
                Verdict::Pending
            }
            None => {
                self.consecutive += 1;
                if self.consecutive >= self.successes_needed {
                    Verdict::Healthy
                } else {
                    Verdict::Pending
                }
            }
        }
    }
}

/// Runs every check once, concurrently, each bounded by its own timeout; results come
/// back in the order of `checks`. Command checks run from `release_dir`.
pub async fn probe_checks(checks: &[HealthCheck], release_dir: &Path) -> Vec<CheckResult> {
    let mut results: Vec<CheckResult> = checks
        .iter()
        .map(|check| CheckResult {
            check: describe(check),
            failure: Some("the check ended without a result".to_owned()),
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, check) in checks.iter().enumerate() {
        let check = check.clone();
        let release_dir: PathBuf = release_dir.to_path_buf();
        tasks.spawn(async move { (index, run_check(&check, &release_dir).await) });
    }
    while let Some(joined) = tasks.join_next().await {
        // A panicked check keeps its "ended without a result" failure.
        if let Ok((index, outcome)) = joined {
            results[index].failure = outcome.err();
        }
    }
    results
}

/// How a check is named in messages.
fn describe(check: &HealthCheck) -> String {
    match check {
        HealthCheck::Http { url, .. } => format!("http GET {url}"),
        HealthCheck::Tcp { address, .. } => format!("tcp {address}"),
        HealthCheck::Command { command, .. } => format!("command `{}`", hooks::display_argv(command.argv())),
    }
}

async fn run_check(check: &HealthCheck, release_dir: &Path) -> Result<(), String> {
    match check {
        HealthCheck::Http { url, status, timeout } => tokio::time::timeout(timeout.to_std(), http_status(url))
            .await
            .map_err(|_| format!("no answer within {timeout}"))?
            .and_then(|answered| {
                if answered == *status {
                    Ok(())
                } else {
                    Err(format!("answered {answered}, expected {status}"))
                }
            }),
        HealthCheck::Tcp { address, timeout } => {
            tokio::time::timeout(timeout.to_std(), TcpStream::connect(address.as_str()))
                .await
                .map_err(|_| format!("no connection within {timeout}"))?
                .map(drop)
                .map_err(|error| format!("connect failed: {error}"))
        }
        HealthCheck::Command { command, timeout } => {
            match hooks::run_bounded(command.argv(), release_dir, std::iter::empty(), timeout.to_std()).await {
                Ok(finished) if finished.status.success() => Ok(()),
                Ok(finished) => Err(format!("{}{}", finished.status, one_line_tail(&finished.output))),
                Err(RunError::TimedOut { output }) => Err(format!(
                    "timed out after {timeout} and was killed{}",
                    one_line_tail(&output)
                )),
                Err(RunError::Spawn(error)) => Err(format!("could not be started: {error}")),
                Err(RunError::Wait(error)) => Err(format!("could not be waited for: {error}")),
            }
        }
    }
}

/// The end of a command's output on one line, for a check's reason.
fn one_line_tail(output: &str) -> String {
    const LIMIT: usize = 200;
    let joined = output
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    if joined.is_empty() {
        return String::new();
    }
    let start = joined.len().saturating_sub(LIMIT);
    let start = (start..=joined.len())
        .find(|&i| joined.is_char_boundary(i))
        .unwrap_or(0);
    let ellipsis = if start > 0 { "..." } else { "" };
    format!(": {ellipsis}{}", &joined[start..])
}

/// The largest status line read; anything longer is not an HTTP server we understand.
const MAX_STATUS_LINE: usize = 1024;

/// One `GET` over a fresh connection, answering the response's status code.
///
/// A hand-written HTTP/1.1 request rather than `reqwest`: a health check must see exactly
/// the app's answer, and reqwest would follow redirects, route through `HTTP_PROXY` from
/// the agent's environment, reuse pooled connections and need a TLS provider installed,
/// all of which make a check's result depend on more than the app.
async fn http_status(url: &HealthUrl) -> Result<u16, String> {
    let target = url.target();
    let mut stream = TcpStream::connect(&target.connect)
        .await
        .map_err(|error| format!("connect to {} failed: {error}", target.connect))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: drover-agent-health\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        target.path, target.host
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| format!("sending the request failed: {error}"))?;
    let mut head = Vec::new();
    let mut buffer = [0_u8; 512];
    while !head.contains(&b'\n') && head.len() < MAX_STATUS_LINE {
        let read = stream
            .read(&mut buffer)
            .await
            .map_err(|error| format!("reading the answer failed: {error}"))?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    if head.is_empty() {
        return Err("the connection closed without an answer".to_owned());
    }
    parse_status_line(&head)
}

/// The status code of an HTTP/1.x status line at the start of `head`.
fn parse_status_line(head: &[u8]) -> Result<u16, String> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    let three_digits = code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit());
    match code.parse::<u16>() {
        Ok(code) if version.starts_with("HTTP/1.") && three_digits => Ok(code),
        _ => {
            let shown: String = line.chars().take(60).flat_map(char::escape_default).collect();
            Err(format!("not an HTTP/1 answer: {shown}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn health(grace_secs: u64, interval_secs: u64, successes: u32) -> Health {
        Health {
            grace_period: drover_protocol::Duration::from_secs(grace_secs),
            interval: drover_protocol::Duration::from_secs(interval_secs),
            successes,
            checks: Vec::new(),
        }
    }

    const ACTIVE: UnitState = UnitState {
        active: true,
        failed: false,
        restarts: 0,
    };

    fn pass() -> Probe {
        Probe {
            unit: ACTIVE,
            checks: vec![CheckResult {
                check: "http GET http://127.0.0.1/healthz".to_owned(),
                failure: None,
            }],
        }
    }

    fn fail(reason: &str) -> Probe {
        Probe {
            unit: ACTIVE,
            checks: vec![CheckResult {
                check: "http GET http://127.0.0.1/healthz".to_owned(),
                failure: Some(reason.to_owned()),
            }],
        }
    }

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    #[test]
    fn a_resumed_gate_keeps_the_journaled_deadline() {
        // Restarted 20 s ago by the journal, grace 30 s: 10 s are left, not 30.
        let mut gate = Gate::resumed(&health(30, 2, 3), 0, secs(20));
        assert_eq!(gate.observe(fail("answered 500"), secs(20)), Verdict::Pending);
        assert_eq!(gate.observe(fail("answered 500"), secs(30)), Verdict::Pending);
        assert_eq!(
            gate.observe(fail("answered 500"), secs(31)),
            Verdict::Unhealthy(
                "not healthy within the 30s grace period: http GET http://127.0.0.1/healthz: answered 500".to_owned()
            )
        );
    }

    #[test]
    fn a_gate_resumed_after_its_deadline_decides_on_its_first_round() {
        let mut failing = Gate::resumed(&health(30, 2, 3), 0, secs(45));
        assert!(matches!(
            failing.observe(fail("answered 500"), secs(45)),
            Verdict::Unhealthy(reason) if reason.contains("answered 500")
        ));
        let mut passing = Gate::resumed(&health(30, 2, 3), 0, secs(45));
        assert_eq!(passing.observe(pass(), secs(45)), Verdict::Healthy);
        // Within the grace, a resumed gate still wants all its passes.
        let mut early = Gate::resumed(&health(30, 2, 3), 0, secs(5));
        assert_eq!(early.observe(pass(), secs(5)), Verdict::Pending);
    }

    #[test]
    fn the_resumed_elapsed_time_never_comes_out_short() {
        let restart = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_900);
        let journaled = Timestamp::from_system(restart);
        let now = restart + secs(12);
        assert!(
            elapsed_since(journaled, now) >= secs(12),
            "rounding never extends the grace"
        );
        assert!(elapsed_since(journaled, now) < secs(13));
        assert_eq!(
            elapsed_since(journaled, restart - secs(60)),
            Duration::ZERO,
            "clock went back"
        );
    }

    #[test]
    fn healthy_after_consecutive_passes() {
        let mut gate = Gate::new(&health(30, 2, 3), 0);
        assert_eq!(gate.observe(pass(), secs(0)), Verdict::Pending);
        assert_eq!(gate.observe(pass(), secs(2)), Verdict::Pending);
        assert_eq!(gate.observe(pass(), secs(4)), Verdict::Healthy);
        // Decided verdicts stick, whatever comes later.
        assert_eq!(gate.observe(fail("down"), secs(6)), Verdict::Healthy);
    }

    #[test]
    fn a_failing_round_resets_the_count() {
        let mut gate = Gate::new(&health(30, 2, 2), 0);
        assert_eq!(gate.observe(pass(), secs(0)), Verdict::Pending);
        assert_eq!(
            gate.observe(fail("answered 500, expected 200"), secs(2)),
            Verdict::Pending
        );
        assert_eq!(gate.observe(pass(), secs(4)), Verdict::Pending);
        assert_eq!(gate.observe(pass(), secs(6)), Verdict::Healthy);
    }

    #[test]
    fn an_inactive_unit_fails_the_round() {
        let mut gate = Gate::new(&health(30, 2, 1), 0);
        let activating = Probe {
            unit: UnitState {
                active: false,
                ..ACTIVE
            },
            checks: Vec::new(),
        };
        assert_eq!(gate.observe(activating.clone(), secs(0)), Verdict::Pending);
        assert_eq!(
            gate.observe(activating, secs(31)),
            Verdict::Unhealthy("not healthy within the 30s grace period: unit is not active".to_owned())
        );
    }

    #[test]
    fn grace_expiry_reports_the_last_failure() {
        let mut gate = Gate::new(&health(10, 2, 2), 0);
        assert_eq!(gate.observe(fail("connect failed: refused"), secs(8)), Verdict::Pending);
        assert_eq!(gate.observe(pass(), secs(10)), Verdict::Pending);
        assert_eq!(
            gate.observe(pass(), secs(12)),
            Verdict::Unhealthy(
                "not healthy within the 10s grace period: http GET http://127.0.0.1/healthz: connect failed: refused"
                    .to_owned()
            )
        );
    }

    #[test]
    fn grace_expiry_without_failures_says_how_far_it_got() {
        let mut gate = Gate::new(&health(4, 2, 5), 0);
        for second in [0, 2, 4] {
            assert_eq!(gate.observe(pass(), secs(second)), Verdict::Pending);
        }
        assert_eq!(
            gate.observe(pass(), secs(6)),
            Verdict::Unhealthy(
                "not healthy within the 4s grace period: only 3 of 5 consecutive passing rounds".to_owned()
            )
        );
    }

    #[test]
    fn a_round_beginning_exactly_at_the_grace_still_counts() {
        let mut gate = Gate::new(&health(4, 2, 1), 0);
        assert_eq!(gate.observe(fail("down"), secs(2)), Verdict::Pending);
        assert_eq!(gate.observe(pass(), secs(4)), Verdict::Healthy);
    }

    #[test]
    fn a_failed_unit_is_unhealthy_at_once() {
        let mut gate = Gate::new(&health(30, 2, 2), 0);
        let failed = Probe {
            unit: UnitState {
                active: false,
                failed: true,
                restarts: 0,
            },
            checks: Vec::new(),
        };
        assert_eq!(
            gate.observe(failed, secs(0)),
            Verdict::Unhealthy("the unit failed (unit is not active)".to_owned())
        );
        assert_eq!(
            gate.observe(pass(), secs(2)),
            Verdict::Unhealthy("the unit failed (unit is not active)".to_owned())
        );
    }

    #[test]
    fn a_restart_loop_is_unhealthy_at_once() {
        let mut gate = Gate::new(&health(30, 2, 2), 4);
        let at = |restarts| Probe {
            unit: UnitState { restarts, ..ACTIVE },
            checks: Vec::new(),
        };
        assert_eq!(gate.observe(at(4), secs(0)), Verdict::Pending);
        assert_eq!(
            gate.observe(at(6), secs(2)),
            Verdict::Unhealthy("the unit restarted 2 times since the release started (restart loop)".to_owned())
        );
    }

    #[test]
    fn a_reset_restart_counter_becomes_the_new_baseline() {
        let mut gate = Gate::new(&health(30, 2, 3), 7);
        let at = |restarts| Probe {
            unit: UnitState { restarts, ..ACTIVE },
            checks: Vec::new(),
        };
        assert_eq!(gate.observe(at(0), secs(0)), Verdict::Pending);
        assert_eq!(gate.observe(at(0), secs(2)), Verdict::Pending);
        assert_eq!(
            gate.observe(at(1), secs(4)),
            Verdict::Unhealthy("the unit restarted 1 time since the release started (restart loop)".to_owned())
        );
    }

    #[test]
    fn zero_successes_still_needs_one_passing_round() {
        let mut gate = Gate::new(&health(30, 2, 0), 0);
        assert_eq!(gate.observe(fail("down"), secs(0)), Verdict::Pending);
        assert_eq!(gate.observe(pass(), secs(2)), Verdict::Healthy);
    }

    /// One generated round: unit active, each check's outcome, unit failed, restarted
    /// since the previous round, and the gap since the previous round in thousandths of
    /// the interval.
    type Round = (bool, Vec<bool>, bool, bool, u64);

    fn round() -> impl Strategy<Value = Round> {
        (
            prop::bool::weighted(0.9),
            prop::collection::vec(prop::bool::weighted(0.9), 0..3),
            prop::bool::weighted(0.02),
            prop::bool::weighted(0.02),
            1_u64..=1000,
        )
    }

    proptest! {
        #[test]
        fn never_healthy_without_enough_passes_and_always_decided_by_grace_plus_interval(
            grace_ms in 0_u64..5_000,
            interval_ms in 1_u64..1_000,
            successes in 0_u32..5,
            rounds in prop::collection::vec(round(), 1..300),
        ) {
            let health = Health {
                grace_period: drover_protocol::Duration::from_millis(grace_ms),
                interval: drover_protocol::Duration::from_millis(interval_ms),
                successes,
                checks: Vec::new(),
            };
            let grace = Duration::from_millis(grace_ms);
            let interval = Duration::from_millis(interval_ms);
            let needed = successes.max(1) as usize;
            let mut gate = Gate::new(&health, 0);
            let mut restarts = 0;
            let mut elapsed = Duration::ZERO;
            // Whether each round fully passed, and began within the grace period.
            let mut history: Vec<bool> = Vec::new();
            let mut decided: Option<Verdict> = None;
            for (index, (active, checks, failed, restarted, gap_permille)) in rounds.into_iter().enumerate() {
                if index > 0 {
                    elapsed += interval * u32::try_from(gap_permille).expect("small") / 1000;
                }
                restarts += u32::from(restarted);
                let probe = Probe {
                    unit: UnitState { active, failed, restarts },
                    checks: checks
                        .iter()
                        .map(|&ok| CheckResult { check: "c".to_owned(), failure: (!ok).then(|| "bad".to_owned()) })
                        .collect(),
                };
                let passed = active && !failed && restarts == 0 && checks.iter().all(|&ok| ok) && elapsed <= grace;
                history.push(passed);
                let verdict = gate.observe(probe, elapsed);
                if let Some(earlier) = &decided {
                    prop_assert_eq!(&verdict, earlier, "a decided verdict changed");
                    continue;
                }
                match &verdict {
                    Verdict::Healthy => {
                        prop_assert!(history.len() >= needed);
                        prop_assert!(history[history.len() - needed..].iter().all(|&ok| ok),
                            "healthy without {} consecutive passes: {:?}", needed, history);
                    }
                    Verdict::Unhealthy(reason) => {
                        prop_assert!(failed || restarts > 0 || elapsed > grace, "unhealthy too early: {}", reason);
                    }
                    Verdict::Pending => {
                        prop_assert!(elapsed <= grace, "still pending at {:?} past a {:?} grace", elapsed, grace);
                    }
                }
                if verdict != Verdict::Pending {
                    // Rounds come at most one interval apart, so this is by grace + interval.
                    prop_assert!(elapsed <= grace + interval);
                    decided = Some(verdict);
                }
            }
        }
    }

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Ok(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 500\r\n"), Ok(500));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 20 OK\r\n").is_err());
        assert!(parse_status_line(b"HTTP/2 200\r\n").is_err());
        assert!(parse_status_line(b"\xff\xfe").is_err());
    }

    /// Serves every connection with `answer` (after reading the request head), or holds
    /// it open silently when `answer` is `None`.
    async fn server(answer: Option<&'static str>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0_u8; 256];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => head.extend_from_slice(&buffer[..read]),
                        }
                    }
                    match answer {
                        Some(answer) => {
                            let _ = stream.write_all(answer.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(60)).await,
                    }
                });
            }
        });
        address
    }

    fn timeout(millis: u64) -> drover_protocol::Duration {
        drover_protocol::Duration::from_millis(millis)
    }

    fn command(argv: &[&str]) -> drover_protocol::spec::Command {
        drover_protocol::spec::Command::try_from(argv.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
            .expect("valid command")
    }

    #[tokio::test]
    async fn probes_http_tcp_and_commands_in_order() {
        let ok = server(Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
        let broken = server(Some("HTTP/1.1 500 Internal Server Error\r\n\r\n")).await;
        let silent = server(None).await;
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address")
        };
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("marker"), "").expect("marker");
        let checks = vec![
            HealthCheck::Http {
                url: format!("http://{ok}/healthz").parse().expect("health URL"),
                status: 200,
                timeout: timeout(2000),
            },
            HealthCheck::Http {
                url: format!("http://{broken}/healthz").parse().expect("health URL"),
                status: 200,
                timeout: timeout(2000),
            },
            HealthCheck::Http {
                url: format!("http://{silent}/").parse().expect("health URL"),
                status: 200,
                timeout: timeout(200),
            },
            HealthCheck::Http {
                url: format!("http://{closed}/").parse().expect("health URL"),
                status: 200,
                timeout: timeout(2000),
            },
            HealthCheck::Tcp {
                address: ok.to_string().parse().expect("address"),
                timeout: timeout(2000),
            },
            HealthCheck::Tcp {
                address: closed.to_string().parse().expect("address"),
                timeout: timeout(2000),
            },
            HealthCheck::Command {
                command: command(&["test", "-e", "marker"]),
                timeout: timeout(5000),
            },
            HealthCheck::Command {
                command: command(&["sh", "-c", "echo starting; echo 'not ready' >&2; exit 2"]),
                timeout: timeout(5000),
            },
            HealthCheck::Command {
                command: command(&["sh", "-c", "echo waiting; sleep 30"]),
                timeout: timeout(300),
            },
        ];
        let started = std::time::Instant::now();
        let results = probe_checks(&checks, dir.path()).await;
        // Concurrent: bounded by the slowest timeout, not their sum.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        let failures: Vec<Option<&str>> = results.iter().map(|result| result.failure.as_deref()).collect();
        assert_eq!(failures[0], None);
        assert_eq!(failures[1], Some("answered 500, expected 200"));
        assert_eq!(failures[2], Some("no answer within 200ms"));
        assert!(
            failures[3].is_some_and(|f| f.starts_with("connect to 127.0.0.1:")),
            "{failures:?}"
        );
        assert_eq!(failures[4], None);
        assert!(
            failures[5].is_some_and(|f| f.starts_with("connect failed:")),
            "{failures:?}"
        );
        assert_eq!(failures[6], None);
        assert_eq!(failures[7], Some("exit status: 2: starting | not ready"));
        assert_eq!(failures[8], Some("timed out after 300ms and was killed: waiting"));
        assert_eq!(results[0].check, format!("http GET http://{ok}/healthz"));
        assert_eq!(results[5].check, format!("tcp {closed}"));
        assert_eq!(
            results[7].check,
            "command `sh -c 'echo starting; echo '\\''not ready'\\'' >&2; exit 2'`"
        );
    }

    #[tokio::test]
    async fn no_checks_probe_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(probe_checks(&[], dir.path()).await.is_empty());
    }

    #[test]
    fn long_output_is_cut_to_its_end_on_one_line() {
        let output = (0..100).map(|i| format!("line {i}")).collect::<Vec<_>>().join("\n");
        let tail = one_line_tail(&output);
        assert!(
            tail.starts_with(": ...") && tail.ends_with("line 98 | line 99"),
            "{tail}"
        );
        assert!(tail.len() <= 200 + 5);
        assert_eq!(one_line_tail("\n  \n"), "");
        assert_eq!(
            one_line_tail("héllo wörld ".repeat(40).as_str()).chars().last(),
            Some('d')
        );
    }
}
