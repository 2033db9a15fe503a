//! `drover rollout watch`: a progress bar per stage, the phase and the ETA, redrawn in
//! place on a terminal and appended as plain lines elsewhere (CI logs), or one JSON status
//! per line. What is shown is a pure function of the status and the time
//! ([`watch_lines`]); [`Watcher`] decides what to write for each poll.

use std::io::{IsTerminal as _, Write};

use drover_protocol::Timestamp;
use drover_protocol::api::{RolloutFailedHost, RolloutPhase, RolloutStageStatus, RolloutStatus};

use super::emit;
use crate::cli::args::Output;
use crate::cli::client::AdminClient;
use crate::error::Error;
use crate::text::printable;

/// Cells of a stage's bar.
const BAR_WIDTH: usize = 10;
/// Failed hosts shown while the rollout goes on: the newest.
const FAILED_WHILE_RUNNING: usize = 3;
/// Failed hosts shown once it stopped: the first, which tripped the breaker.
const FAILED_WHEN_STOPPED: usize = 10;
/// Characters of a host's error shown per line (a line that wraps on a terminal breaks
/// the redraw; `rollout status` shows it whole).
const ERROR_CHARS: usize = 160;
/// How often the status is fetched.
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// How long `watch` keeps trying while the coordinator cannot be reached or answers with
/// a server error (a restart, a failover), before it gives up with that error.
const UNREACHABLE_FOR: std::time::Duration = std::time::Duration::from_secs(120);
/// The longest pause between those tries.
const RETRY_CAP: std::time::Duration = std::time::Duration::from_secs(5);

/// How `watch` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Display {
    /// A terminal: the lines are redrawn in place (ANSI cursor-up and erase) every poll.
    Terminal,
    /// A file or pipe: the lines are appended whenever more than a countdown changed.
    Log,
    /// One JSON status per line whenever more than a countdown changed (NDJSON).
    Json,
}

impl Display {
    /// The display for `output` on this process's stdout.
    pub(crate) fn for_stdout(output: Output) -> Display {
        let dumb = std::env::var_os("TERM").is_some_and(|term| term == "dumb");
        match output {
            Output::Json => Display::Json,
            Output::Table if std::io::stdout().is_terminal() && !dumb => Display::Terminal,
            Output::Table => Display::Log,
        }
    }
}

/// What has been written so far, to redraw or skip.
#[derive(Debug)]
pub(crate) struct Watcher {
    display: Display,
    /// Lines on screen from the last draw (terminal).
    drawn: usize,
    /// The status without its countdowns, as last written (log and JSON).
    last_change: Option<String>,
}

impl Watcher {
    pub(crate) fn new(display: Display) -> Watcher {
        Watcher {
            display,
            drawn: 0,
            last_change: None,
        }
    }

    /// The text to write for `status` at `now`, if any.
    pub(crate) fn frame(&mut self, status: &RolloutStatus, now: Timestamp) -> Option<String> {
        match self.display {
            Display::Terminal => {
                let lines = watch_lines(status, now);
                let mut text = String::new();
                if self.drawn > 0 {
                    // Up to the first line drawn, to its start, erase to the end of the screen.
                    text.push_str(&format!("\u{1b}[{}A\r\u{1b}[J", self.drawn));
                }
                for line in &lines {
                    text.push_str(line);
                    text.push('\n');
                }
                self.drawn = lines.len();
                Some(text)
            }
            Display::Log | Display::Json => {
                let change = change_key(status);
                if self.last_change.as_ref() == Some(&change) {
                    return None;
                }
                self.last_change = Some(change);
                Some(if self.display == Display::Json {
                    serde_json::to_string(status).expect("API types serialize") + "\n"
                } else {
                    let mut text = watch_lines(status, now).join("\n");
                    text.push_str("\n\n");
                    text
                })
            }
        }
    }
}

/// The status without what changes every second by itself (bake countdowns, the ETA),
/// so that logs get a new block only when the rollout moved.
fn change_key(status: &RolloutStatus) -> String {
    let mut status = status.clone();
    status.eta = None;
    for stage in &mut status.stages {
        stage.bake_remaining = None;
    }
    serde_json::to_string(&status).expect("API types serialize")
}

/// Polls the status every second and shows it until the rollout finishes (exit 0 when
/// completed) or the failure breaker stops it (exit 1, as for aborted and rolled back).
/// A coordinator that restarts meanwhile is waited for (up to [`UNREACHABLE_FOR`], one
/// line on stderr when it goes and when it is back): the rollout resumes where it was, so
/// the watch does too.
pub(crate) async fn watch(
    client: &AdminClient,
    path: &str,
    display: Display,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let mut watcher = Watcher::new(display);
    let mut unreachable_since: Option<std::time::Instant> = None;
    let mut retry = POLL_INTERVAL;
    loop {
        let status: RolloutStatus = match client.get(path).await {
            Ok(status) => {
                if unreachable_since.take().is_some() {
                    eprintln!("drover: the coordinator answers again");
                }
                retry = POLL_INTERVAL;
                status
            }
            Err(error) if passing(&error) => {
                let since = *unreachable_since.get_or_insert_with(|| {
                    eprintln!("drover: {error}; retrying for up to {}s", UNREACHABLE_FOR.as_secs());
                    std::time::Instant::now()
                });
                if since.elapsed() >= UNREACHABLE_FOR {
                    return Err(error);
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_CAP);
                continue;
            }
            Err(error) => return Err(error),
        };
        let now = Timestamp::from_system(std::time::SystemTime::now());
        if let Some(text) = watcher.frame(&status, now) {
            emit(out, &text)?;
            let _ = out.flush();
        }
        let outcome = match status.phase {
            RolloutPhase::Completed => return Ok(()),
            RolloutPhase::PausedByBreaker => "paused by the failure breaker",
            RolloutPhase::Aborted => "aborted",
            RolloutPhase::RolledBack => "rolled back",
            RolloutPhase::Pending
            | RolloutPhase::Running
            | RolloutPhase::PausedByOperator
            | RolloutPhase::AwaitingApproval => {
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
        };
        let outcome = match status.failed_hosts.first() {
            Some(first) => format!(
                "{outcome}; first failure: {}",
                failed_host_text(first, &status, usize::MAX)
            ),
            None => outcome.to_owned(),
        };
        return Err(Error::RolloutOutcome {
            app: status.app.to_string(),
            rollout: printable(&status.rollout),
            outcome,
        });
    }
}

/// Errors a coordinator restart or failover causes, which `watch` waits out: no
/// connection, a broken exchange, a server error (5xx). A refusal (4xx: bad token, no such
/// rollout) or a TLS failure is final.
fn passing(error: &Error) -> bool {
    match error {
        Error::Connect { .. } | Error::Http { .. } => true,
        Error::Api { status, .. } => *status >= 500,
        _ => false,
    }
}

/// What `watch` shows: a header with the phase (and why it is paused) and the ETA, one
/// bar per stage (a stage without hosts says so), the totals, and the failed hosts with
/// what they reported (the newest few while it runs, the first ones once it stopped).
///
/// ```text
/// rollout web-2.0-1 of web to 2.0: running, stage 2 of 3, ETA 3m10s
/// canary  [##########]  1/1  done  0 in flight  0 failed  passed
/// 50%     [####x.....] 12/25 done  3 in flight  1 failed  9 waiting
/// 100%    [..........]  0/25 done  0 in flight  0 failed  not started
/// 13 of 51 hosts done, 1 failed (2 tolerated), 3 of 5 in flight
/// web-07 failed in stage 2 (50%): reported rolled_back: health check failed: …
/// ```
pub(crate) fn watch_lines(status: &RolloutStatus, now: Timestamp) -> Vec<String> {
    let stage = stage_text(status);
    let eta = match (status.phase, status.eta) {
        (_, Some(eta)) => format!(", ETA {}", short_duration(eta.unix() - now.unix())),
        // The estimate needs a host that took measurable time to install.
        (RolloutPhase::Running, None) => ", ETA not known yet".to_owned(),
        _ => String::new(),
    };
    let mut lines = vec![format!(
        "rollout {} of {} to {}: {}{stage}{eta}",
        printable(&status.rollout),
        status.app,
        status.version,
        phase_text(status)
    )];
    let width = |value: &dyn Fn(&RolloutStageStatus) -> String| {
        status
            .stages
            .iter()
            .map(|stage| value(stage).chars().count())
            .max()
            .unwrap_or(0)
    };
    let label_width = width(&|stage| printable(&stage.label));
    let done_width = width(&|stage| stage.done.to_string());
    let total_width = width(&|stage| stage.total.to_string());
    let in_flight_width = width(&|stage| stage.in_flight.to_string());
    let failed_width = width(&|stage| stage.failed.to_string());
    for stage in &status.stages {
        let line = format!(
            "{:<label_width$}  [{}] {:>done_width$}/{:<total_width$} done  {:>in_flight_width$} in flight  {:>failed_width$} failed  {}",
            printable(&stage.label),
            bar(stage),
            stage.done,
            stage.total,
            stage.in_flight,
            stage.failed,
            stage_state(stage),
        );
        lines.push(line.trim_end().to_owned());
    }
    let (done, total) = status
        .stages
        .iter()
        .fold((0, 0), |(done, total), stage| (done + stage.done, total + stage.total));
    lines.push(format!(
        "{done} of {total} hosts done, {} failed ({} tolerated), {} of {} in flight",
        status.failures, status.failure_budget, status.in_flight, status.max_in_flight
    ));
    let stopped = matches!(
        status.phase,
        RolloutPhase::PausedByBreaker | RolloutPhase::Completed | RolloutPhase::Aborted | RolloutPhase::RolledBack
    );
    let shown: Vec<&RolloutFailedHost> = if stopped {
        status.failed_hosts.iter().take(FAILED_WHEN_STOPPED).collect()
    } else {
        let skip = status.failed_hosts.len().saturating_sub(FAILED_WHILE_RUNNING);
        status.failed_hosts.iter().skip(skip).collect()
    };
    for failed in &shown {
        lines.push(failed_host_text(failed, status, ERROR_CHARS));
    }
    let more = status.failures.saturating_sub(shown.len());
    if more > 0 && !shown.is_empty() {
        lines.push(format!(
            "… {more} more failed; all of them: drover rollout status {}",
            status.app
        ));
    }
    lines
}

/// `, stage 2 of 3` while it goes on (with `(stages 2-3 have no hosts)` when some are
/// empty), `, stage 3 of 3` or ` (stages 2-3 had no hosts)` once completed: a completed
/// rollout whose later stages had no hosts did not stop at its first stage.
pub(crate) fn stage_text(status: &RolloutStatus) -> String {
    let Some(current) = status.stage else {
        return ", not started".to_owned();
    };
    let empty: Vec<usize> = status
        .stages
        .iter()
        .enumerate()
        .filter(|(_, stage)| stage.total == 0)
        .map(|(index, _)| index)
        .collect();
    if empty.is_empty() {
        return format!(", stage {} of {}", current + 1, status.stages.len());
    }
    let empty = stage_numbers(&empty);
    match status.phase {
        RolloutPhase::Completed => format!(" ({empty} had no hosts)"),
        RolloutPhase::Aborted | RolloutPhase::RolledBack => {
            format!(
                ", stage {} of {} ({empty} had no hosts)",
                current + 1,
                status.stages.len()
            )
        }
        RolloutPhase::Pending
        | RolloutPhase::Running
        | RolloutPhase::PausedByOperator
        | RolloutPhase::PausedByBreaker
        | RolloutPhase::AwaitingApproval => {
            format!(
                ", stage {} of {} ({empty} have no hosts)",
                current + 1,
                status.stages.len()
            )
        }
    }
}

/// `stage 2`, `stages 2-3`, `stages 1, 3-4` for stage indexes in ascending order.
fn stage_numbers(indexes: &[usize]) -> String {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &index in indexes {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == index => *last = index,
            _ => runs.push((index, index)),
        }
    }
    let text: Vec<String> = runs
        .iter()
        .map(|&(first, last)| {
            if first == last {
                (first + 1).to_string()
            } else {
                format!("{}-{}", first + 1, last + 1)
            }
        })
        .collect();
    let noun = if indexes.len() == 1 { "stage" } else { "stages" };
    format!("{noun} {}", text.join(", "))
}

/// `web-07 failed in stage 2 (50%): reported rolled_back: <the host's last error>`, the
/// host's text escaped and cut to `error_chars` characters.
pub(crate) fn failed_host_text(failed: &RolloutFailedHost, status: &RolloutStatus, error_chars: usize) -> String {
    let label = status
        .stages
        .get(failed.stage)
        .map_or_else(String::new, |stage| format!(" ({})", printable(&stage.label)));
    let mut text = format!(
        "{} failed in stage {}{label}: {}",
        failed.host,
        failed.stage + 1,
        printable(&failed.reason)
    );
    if let Some(error) = &failed.error {
        let error = printable(error);
        text.push_str(": ");
        if error.chars().count() > error_chars {
            text.extend(error.chars().take(error_chars));
            text.push('…');
        } else {
            text.push_str(&error);
        }
    }
    text
}

/// The phase for people, with why it is paused (also the header of `rollout status`).
pub(crate) fn phase_text(status: &RolloutStatus) -> String {
    let text = printable(&status.phase_text);
    match status.phase {
        RolloutPhase::PausedByOperator => match &status.pause_reason {
            Some(reason) => format!("{text} ({})", printable(reason)),
            None => text,
        },
        RolloutPhase::PausedByBreaker => format!(
            "{text} ({} failed, {} tolerated; drover rollout resume|abort {})",
            status.failures, status.failure_budget, status.app
        ),
        RolloutPhase::AwaitingApproval => format!("{text} (drover rollout approve {})", status.app),
        RolloutPhase::Pending
        | RolloutPhase::Running
        | RolloutPhase::Completed
        | RolloutPhase::Aborted
        | RolloutPhase::RolledBack => text,
    }
}

/// `[####x.....]`: settled hosts (healthy or removed `#`, failed `x`) of the stage's
/// total, rounded down so that a full bar means every host settled; `[----------]` for a
/// stage without hosts, which is neither done nor waiting.
fn bar(stage: &RolloutStageStatus) -> String {
    if stage.total == 0 {
        // Nothing to settle: neither full (done) nor dots (waiting).
        return "-".repeat(BAR_WIDTH);
    }
    let settled = (stage.done + stage.failed + stage.removed).min(stage.total);
    let cells = settled * BAR_WIDTH / stage.total;
    // Rounded up, so that one failure shows.
    let failed_cells = (stage.failed * BAR_WIDTH).div_ceil(stage.total).min(cells);
    let mut text = String::with_capacity(BAR_WIDTH);
    text.extend(std::iter::repeat_n('#', cells - failed_cells));
    text.extend(std::iter::repeat_n('x', failed_cells));
    text.extend(std::iter::repeat_n('.', BAR_WIDTH - cells));
    text
}

/// What a stage is doing: `passed`, `bake 1m20s left`, `3 waiting`, `not started`,
/// `stopped by the breaker` (status `failed`), `no hosts` (the plan put none in it, so it
/// never runs or passes anything); a stage that passed with failures within the budget is
/// `settled`, not `passed`.
fn stage_state(stage: &RolloutStageStatus) -> String {
    if stage.total == 0 {
        return "no hosts".to_owned();
    }
    let mut text = match (stage.status.as_str(), stage.bake_remaining) {
        ("passed", None) if stage.failed > 0 => "settled".to_owned(),
        ("failed", None) => "stopped by the breaker".to_owned(),
        (_, Some(remaining)) => format!(
            "bake {} left",
            short_duration(i64::try_from(remaining.as_millis() / 1000).unwrap_or(i64::MAX))
        ),
        ("active", None) if stage.waiting > 0 => format!("{} waiting", stage.waiting),
        ("active", None) => "settling".to_owned(),
        (other, None) => other.replace('_', " "),
    };
    if stage.removed > 0 {
        text.push_str(&format!(", {} removed", stage.removed));
    }
    text
}

/// `45s`, `1m20s`, `2h05m`, `3d04h`; never negative.
fn short_duration(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3600..86_400 => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{:02}h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use drover_protocol::Duration;

    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix(1_800_000_000 + seconds)
    }

    fn stage(label: &str, status: &str, counts: [usize; 4]) -> RolloutStageStatus {
        let [done, in_flight, failed, total] = counts;
        RolloutStageStatus {
            label: label.into(),
            status: status.into(),
            bake_remaining: None,
            total,
            waiting: total - done - in_flight - failed,
            in_flight,
            done,
            failed,
            removed: 0,
        }
    }

    /// A running rollout with every kind of stage line (not a state a real rollout is in:
    /// its last stage bakes while the second is active).
    fn running() -> RolloutStatus {
        let mut baking = stage("group eu", "baking", [25, 0, 0, 25]);
        baking.bake_remaining = Some(Duration::from_secs(80));
        RolloutStatus {
            rollout: "web-2.0-1".into(),
            app: "web".parse().expect("app"),
            version: "2.0".parse().expect("version"),
            phase: RolloutPhase::Running,
            phase_text: "running".into(),
            pause_reason: None,
            stage: Some(1),
            stages: vec![
                stage("canary", "passed", [1, 0, 0, 1]),
                stage("50%", "active", [12, 3, 1, 25]),
                stage("100%", "not_started", [0, 0, 0, 25]),
                baking,
            ],
            failures: 1,
            failure_budget: 2,
            in_flight: 3,
            max_in_flight: 5,
            eta: Some(at(190)),
            created_by: "ci".into(),
            created_at: at(-60),
            finished_at: None,
            failed_hosts: Vec::new(),
        }
    }

    /// A one-host fleet's rollout in three stages: the canary has the host, the others none.
    fn one_host(phase: RolloutPhase, phase_text: &str) -> RolloutStatus {
        let done = usize::from(phase == RolloutPhase::Completed);
        let canary_status = if done == 1 { "passed" } else { "active" };
        let later = if done == 1 { "passed" } else { "not_started" };
        RolloutStatus {
            phase,
            phase_text: phase_text.into(),
            stage: Some(0),
            stages: vec![
                stage("canary", canary_status, [done, 1 - done, 0, 1]),
                stage("50%", later, [0, 0, 0, 0]),
                stage("100%", later, [0, 0, 0, 0]),
            ],
            failures: 0,
            failure_budget: 0,
            in_flight: 1 - done,
            max_in_flight: 1,
            eta: None,
            ..running()
        }
    }

    fn failed_host(host: &str, stage: usize, error: Option<&str>) -> RolloutFailedHost {
        RolloutFailedHost {
            host: host.parse().expect("host"),
            stage,
            at: at(30),
            reason: "reported rolled_back".into(),
            state: Some(drover_protocol::report::AppState::RolledBack),
            error: error.map(Into::into),
        }
    }

    #[test]
    fn bars_count_settled_hosts_and_show_failures() {
        assert_eq!(bar(&stage("canary", "passed", [1, 0, 0, 1])), "##########");
        assert_eq!(bar(&stage("50%", "active", [12, 3, 1, 25])), "####x.....");
        assert_eq!(bar(&stage("100%", "not_started", [0, 0, 0, 25])), "..........");
        // Rounded down: 24 of 25 settled is not a full bar.
        assert_eq!(bar(&stage("all", "active", [24, 1, 0, 25])), "#########.");
        assert_eq!(bar(&stage("all", "active", [0, 1, 3, 4])), "xxxxxxx...");
    }

    #[test]
    fn watch_shows_empty_stages_as_empty_not_full() {
        for status in ["passed", "not_started", "active"] {
            let empty = stage("50%", status, [0, 0, 0, 0]);
            assert_eq!(bar(&empty), "----------", "{status}");
            assert_eq!(stage_state(&empty), "no hosts", "{status}");
        }
        let lines = watch_lines(&one_host(RolloutPhase::Completed, "completed"), at(0));
        assert_eq!(lines[1], "canary  [##########] 1/1 done  0 in flight  0 failed  passed");
        assert_eq!(
            lines[2],
            "50%     [----------] 0/0 done  0 in flight  0 failed  no hosts"
        );
        assert_eq!(
            lines[3],
            "100%    [----------] 0/0 done  0 in flight  0 failed  no hosts"
        );
        let running = watch_lines(&one_host(RolloutPhase::Running, "running"), at(0));
        assert_eq!(
            running[0],
            "rollout web-2.0-1 of web to 2.0: running, stage 1 of 3 (stages 2-3 have no hosts), ETA not known yet"
        );
        assert_eq!(
            running[2],
            "50%     [----------] 0/0 done  0 in flight  0 failed  no hosts"
        );
    }

    #[test]
    fn a_completed_one_host_rollout_does_not_say_stage_1_of_3() {
        let lines = watch_lines(&one_host(RolloutPhase::Completed, "completed"), at(0));
        assert_eq!(
            lines[0],
            "rollout web-2.0-1 of web to 2.0: completed (stages 2-3 had no hosts)"
        );
        assert!(!lines[0].contains("stage 1 of 3"), "{}", lines[0]);
        assert_eq!(lines[4], "1 of 1 hosts done, 0 failed (0 tolerated), 0 of 1 in flight");
        // Stage numbers for people: one, a run, and runs.
        assert_eq!(stage_numbers(&[1]), "stage 2");
        assert_eq!(stage_numbers(&[1, 2]), "stages 2-3");
        assert_eq!(stage_numbers(&[0, 2, 3]), "stages 1, 3-4");
    }

    #[test]
    fn watch_names_failed_hosts_with_their_errors_escaped() {
        let mut status = running();
        status.phase = RolloutPhase::PausedByBreaker;
        status.phase_text = "paused by the failure breaker".into();
        status.eta = None;
        status.failures = 3;
        status.failed_hosts = vec![
            failed_host("web-07", 1, Some("unit failed (status=217/USER)\n\u{1b}[2Jforged")),
            failed_host("web-09", 1, None),
        ];
        let lines = watch_lines(&status, at(0));
        assert_eq!(
            lines[6],
            "web-07 failed in stage 2 (50%): reported rolled_back: unit failed (status=217/USER)\\n\\u{1b}[2Jforged"
        );
        assert_eq!(lines[7], "web-09 failed in stage 2 (50%): reported rolled_back");
        assert_eq!(lines[8], "… 1 more failed; all of them: drover rollout status web");
        assert!(lines.iter().all(|line| !line.contains('\u{1b}')));
        // A long error is cut on the watch (a wrapped line breaks the redraw).
        status.failed_hosts = vec![failed_host("web-07", 1, Some(&"e".repeat(500)))];
        status.failures = 1;
        let lines = watch_lines(&status, at(0));
        assert_eq!(lines.len(), 7);
        assert!(
            lines[6].ends_with(&format!("{}…", "e".repeat(ERROR_CHARS))),
            "{}",
            lines[6]
        );
        // While running: only the newest few.
        status.phase = RolloutPhase::Running;
        status.failures = 5;
        status.failed_hosts = (1..=5)
            .map(|index| failed_host(&format!("web-0{index}"), 1, None))
            .collect();
        let lines = watch_lines(&status, at(0));
        assert!(lines[6].starts_with("web-03 failed"), "{lines:#?}");
        assert!(lines[8].starts_with("web-05 failed"), "{lines:#?}");
        assert_eq!(lines[9], "… 2 more failed; all of them: drover rollout status web");
    }

    #[test]
    fn a_stage_settled_with_failures_has_not_passed() {
        assert_eq!(stage_state(&stage("canary", "passed", [0, 0, 1, 1])), "settled");
        assert_eq!(stage_state(&stage("canary", "passed", [1, 0, 0, 1])), "passed");
        assert_eq!(
            stage_state(&stage("canary", "failed", [0, 0, 1, 1])),
            "stopped by the breaker"
        );
        let mut removed = stage("50%", "active", [2, 1, 0, 4]);
        removed.waiting = 0;
        removed.removed = 1;
        assert_eq!(stage_state(&removed), "settling, 1 removed");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(-5), "0s");
        assert_eq!(short_duration(45), "45s");
        assert_eq!(short_duration(80), "1m20s");
        assert_eq!(short_duration(3600 + 5 * 60 + 7), "1h05m");
        assert_eq!(short_duration(3 * 86_400 + 4 * 3600), "3d04h");
    }

    #[test]
    fn one_bar_per_stage_with_the_phase_and_eta_on_top() {
        let lines = watch_lines(&running(), at(0));
        assert_eq!(
            lines,
            [
                "rollout web-2.0-1 of web to 2.0: running, stage 2 of 4, ETA 3m10s",
                "canary    [##########]  1/1  done  0 in flight  0 failed  passed",
                "50%       [####x.....] 12/25 done  3 in flight  1 failed  9 waiting",
                "100%      [..........]  0/25 done  0 in flight  0 failed  not started",
                "group eu  [##########] 25/25 done  0 in flight  0 failed  bake 1m20s left",
                "38 of 76 hosts done, 1 failed (2 tolerated), 3 of 5 in flight",
            ]
        );
    }

    #[test]
    fn the_phase_says_why_a_rollout_is_paused() {
        let mut status = running();
        status.eta = None;
        status.phase = RolloutPhase::PausedByOperator;
        status.phase_text = "paused by alice".into();
        status.pause_reason = Some("lunch\u{1b}[2J".into());
        assert_eq!(
            watch_lines(&status, at(0))[0],
            "rollout web-2.0-1 of web to 2.0: paused by alice (lunch\\u{1b}[2J), stage 2 of 4"
        );
        status.phase = RolloutPhase::PausedByBreaker;
        status.phase_text = "paused by the failure breaker".into();
        assert!(
            watch_lines(&status, at(0))[0]
                .contains("paused by the failure breaker (1 failed, 2 tolerated; drover rollout resume|abort web)")
        );
        status.phase = RolloutPhase::AwaitingApproval;
        status.phase_text = "awaiting approval of the next stage".into();
        assert!(watch_lines(&status, at(0))[0].contains("(drover rollout approve web)"));
        status.phase = RolloutPhase::Running;
        assert!(watch_lines(&status, at(0))[0].ends_with("ETA not known yet"));
        status.phase = RolloutPhase::Completed;
        status.phase_text = "completed".into();
        assert!(watch_lines(&status, at(0))[0].ends_with(": completed, stage 2 of 4"));
        status.stage = None;
        status.phase = RolloutPhase::Pending;
        status.phase_text = "pending".into();
        assert!(watch_lines(&status, at(0))[0].ends_with(": pending, not started"));
    }

    #[test]
    fn a_terminal_is_redrawn_in_place() {
        let mut watcher = Watcher::new(Display::Terminal);
        let first = watcher.frame(&running(), at(0)).expect("first frame");
        assert!(!first.contains('\u{1b}'), "{first:?}");
        assert_eq!(first.lines().count(), 6);
        // Every poll redraws (the countdowns move): up six lines, erase, draw.
        let second = watcher.frame(&running(), at(1)).expect("second frame");
        assert!(second.starts_with("\u{1b}[6A\r\u{1b}[J"), "{second:?}");
        assert!(second.contains("ETA 3m09s"), "{second}");
    }

    #[test]
    fn logs_and_json_get_a_block_only_when_the_rollout_moved() {
        for display in [Display::Log, Display::Json] {
            let mut watcher = Watcher::new(display);
            let first = watcher.frame(&running(), at(0)).expect("first block");
            assert!(!first.contains('\u{1b}'));
            // Only the countdowns changed: nothing new.
            let mut later = running();
            later.eta = Some(at(185));
            later.stages[3].bake_remaining = Some(Duration::from_secs(75));
            assert_eq!(watcher.frame(&later, at(5)), None, "{display:?}");
            // A host finished: a new block.
            later.stages[1].done += 1;
            later.stages[1].in_flight -= 1;
            let moved = watcher.frame(&later, at(6)).expect("a new block");
            if display == Display::Json {
                assert_eq!(moved.lines().count(), 1, "{moved}");
                let parsed: RolloutStatus = serde_json::from_str(moved.trim_end()).expect("NDJSON");
                assert_eq!(parsed.stages[1].done, 13);
            } else {
                assert!(moved.contains("13/25 done"), "{moved}");
                assert!(moved.ends_with("in flight\n\n"), "{moved:?}");
            }
        }
    }
}
