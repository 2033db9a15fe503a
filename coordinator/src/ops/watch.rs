//! `drover rollout watch`: a progress bar per stage, the phase and the ETA, redrawn in
//! place on a terminal and appended as plain lines elsewhere (CI logs), or one JSON status
//! per line. What is shown is a pure function of the status and the time
//! ([`watch_lines`]); [`Watcher`] decides what to write for each poll.

use std::io::{IsTerminal as _, Write};

use drover_protocol::Timestamp;
use drover_protocol::api::{RolloutPhase, RolloutStageStatus, RolloutStatus};

use super::emit;
use crate::cli::Output;
use crate::client::{AdminClient, printable};
use crate::error::Error;

/// Cells of a stage's bar.
const BAR_WIDTH: usize = 10;
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
        return Err(Error::RolloutOutcome {
            app: status.app.to_string(),
            rollout: printable(&status.rollout),
            outcome: outcome.to_owned(),
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
/// bar per stage, and the totals.
///
/// ```text
/// rollout web-2.0-1 of web to 2.0: running, stage 2 of 3, ETA 3m10s
/// canary  [##########]  1/1  done  0 in flight  0 failed  passed
/// 50%     [####x.....] 12/25 done  3 in flight  1 failed  9 waiting
/// 100%    [..........]  0/25 done  0 in flight  0 failed  not started
/// 13 of 51 hosts done, 1 failed (2 tolerated), 3 of 5 in flight
/// ```
pub(crate) fn watch_lines(status: &RolloutStatus, now: Timestamp) -> Vec<String> {
    let stage = status.stage.map_or_else(
        || "not started".to_owned(),
        |stage| format!("stage {} of {}", stage + 1, status.stages.len()),
    );
    let eta = match (status.phase, status.eta) {
        (_, Some(eta)) => format!(", ETA {}", short_duration(eta.unix() - now.unix())),
        // The estimate needs a host that took measurable time to install.
        (RolloutPhase::Running, None) => ", ETA not known yet".to_owned(),
        _ => String::new(),
    };
    let mut lines = vec![format!(
        "rollout {} of {} to {}: {}, {stage}{eta}",
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
    lines
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
/// total, rounded down so that a full bar means every host settled.
fn bar(stage: &RolloutStageStatus) -> String {
    let settled = (stage.done + stage.failed + stage.removed).min(stage.total);
    // A stage without hosts (all removed before it started) is full once passed.
    let empty = if stage.status == "passed" { BAR_WIDTH } else { 0 };
    let cells = (settled * BAR_WIDTH).checked_div(stage.total).unwrap_or(empty);
    // Rounded up, so that one failure shows; a stage without hosts has no failures.
    let failed_cells = (stage.failed * BAR_WIDTH).div_ceil(stage.total.max(1)).min(cells);
    let mut text = String::with_capacity(BAR_WIDTH);
    text.extend(std::iter::repeat_n('#', cells - failed_cells));
    text.extend(std::iter::repeat_n('x', failed_cells));
    text.extend(std::iter::repeat_n('.', BAR_WIDTH - cells));
    text
}

/// What a stage is doing: `passed`, `bake 1m20s left`, `3 waiting`, `not started`,
/// `stopped by the breaker` (status `failed`); a stage that passed with failures within
/// the budget is `settled`, not `passed`.
fn stage_state(stage: &RolloutStageStatus) -> String {
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
        assert_eq!(bar(&stage("empty", "passed", [0, 0, 0, 0])), "##########");
        assert_eq!(bar(&stage("empty", "not_started", [0, 0, 0, 0])), "..........");
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
