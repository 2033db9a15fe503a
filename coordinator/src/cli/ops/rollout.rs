//! `drover rollout plan|start|status|watch|pause|resume|approve|abort|history`.

use std::io::Write;

use drover_protocol::Timestamp;
use drover_protocol::api::{
    HistoryEntry, RolloutAbortRequest, RolloutCommandRequest, RolloutPlan, RolloutRequest, RolloutStatus,
};
use reqwest::Method;

use super::{Table, emit, print_json};
use crate::cli::args::{Output, RolloutCommand, RolloutSpecArgs};
use crate::cli::client::AdminClient;
use crate::error::Error;
use crate::text::printable;

/// Runs one `drover rollout` command.
pub async fn rollout(
    client: &AdminClient,
    command: &RolloutCommand,
    now: Timestamp,
    out: &mut dyn Write,
) -> Result<(), Error> {
    match command {
        RolloutCommand::Plan(args) => {
            let plan: RolloutPlan = client
                .send_json(Method::POST, "/v1/admin/rollouts/plan", &request(args))
                .await?;
            match args.output {
                Output::Json => print_json(out, &plan),
                Output::Table => emit(out, &plan_text(&plan)),
            }
        }
        RolloutCommand::Start(args) => {
            let status: RolloutStatus = client
                .send_json(Method::POST, "/v1/admin/rollouts", &request(args))
                .await?;
            show(out, &status, args.output, now)
        }
        RolloutCommand::Status(args) => {
            let status: RolloutStatus = client.get(&status_path(args.app.as_str())).await?;
            show(out, &status, args.output, now)
        }
        RolloutCommand::Watch(args) => {
            let display = super::watch::Display::for_stdout(args.output);
            super::watch::watch(client, &status_path(args.app.as_str()), display, out).await
        }
        RolloutCommand::Pause(args) | RolloutCommand::Resume(args) | RolloutCommand::Approve(args) => {
            let verb = match command {
                RolloutCommand::Pause(_) => "pause",
                RolloutCommand::Resume(_) => "resume",
                _ => "approve",
            };
            let body = RolloutCommandRequest {
                reason: args.reason.clone(),
            };
            let path = format!("{}/{verb}", status_path(args.app.as_str()));
            let status: RolloutStatus = client.send_json(Method::POST, &path, &body).await?;
            show(
                out,
                &status,
                Output::Table,
                Timestamp::from_system(std::time::SystemTime::now()),
            )
        }
        RolloutCommand::Abort(args) => {
            let body = RolloutAbortRequest {
                rollback: args.rollback,
                reason: args.reason.clone(),
            };
            let path = format!("{}/abort", status_path(args.app.as_str()));
            let status: RolloutStatus = client.send_json(Method::POST, &path, &body).await?;
            show(out, &status, Output::Table, now)
        }
        RolloutCommand::History(args) => {
            let lines: Vec<HistoryEntry> = client
                .get(&format!("{}/history", status_path(args.app.as_str())))
                .await?;
            if args.output == Output::Json {
                return print_json(out, &lines);
            }
            let mut table = Table::new(&["AT", "WHO", "ROLLOUT", "WHAT", "REASON"]);
            for line in lines {
                table.row(vec![
                    line.at.to_string(),
                    line.who,
                    line.rollout.unwrap_or_else(|| "-".into()),
                    line.what,
                    line.reason.unwrap_or_else(|| "-".into()),
                ]);
            }
            emit(out, &table.render())
        }
    }
}

fn status_path(app: &str) -> String {
    format!("/v1/admin/rollouts/{}", super::path_segment(app))
}

fn request(args: &RolloutSpecArgs) -> RolloutRequest {
    RolloutRequest {
        app: args.app.to_string(),
        version: args.version.clone(),
        stages: args.stages.clone().or_else(|| args.groups.clone()),
        max_in_flight: args.max_in_flight.clone(),
        bake: args.bake.clone(),
        max_failures: args.max_failures.clone(),
        on_failure: args.on_failure.clone(),
        approve_each_stage: args.approve_each_stage,
        host_deadline: args.host_deadline.clone(),
        reason: args.reason.clone(),
    }
}

/// The plan as people read it: a summary line, then one row per host in pinning order.
pub(crate) fn plan_text(plan: &RolloutPlan) -> String {
    let hosts: usize = plan.stages.iter().map(|stage| stage.hosts.len()).sum();
    let mut text = format!(
        "rollout {} of {} to {}: {hosts} hosts in {} stages, at most {} in flight, {} failures tolerated\n\n",
        printable(&plan.rollout),
        plan.app,
        plan.version,
        plan.stages.len(),
        plan.max_in_flight,
        plan.failure_budget
    );
    let mut table = Table::new(&["STAGE", "LABEL", "HOST", "CURRENT"]);
    for (index, stage) in plan.stages.iter().enumerate() {
        if stage.hosts.is_empty() {
            table.row(vec![
                (index + 1).to_string(),
                stage.label.clone(),
                "-".into(),
                "-".into(),
            ]);
        }
        for host in &stage.hosts {
            table.row(vec![
                (index + 1).to_string(),
                stage.label.clone(),
                host.id.to_string(),
                host.current.as_ref().map_or_else(|| "-".into(), ToString::to_string),
            ]);
        }
    }
    text.push_str(&table.render());
    text
}

fn show(out: &mut dyn Write, status: &RolloutStatus, output: Output, now: Timestamp) -> Result<(), Error> {
    match output {
        Output::Json => print_json(out, status),
        Output::Table => emit(out, &status_text(status, now)),
    }
}

/// Per stage: done / in flight / failed / waiting, the bake countdown; ETA on top.
pub(crate) fn status_text(status: &RolloutStatus, now: Timestamp) -> String {
    let stage = super::watch::stage_text(status);
    let eta = status.eta.map_or_else(
        || "-".to_owned(),
        |eta| format!("{eta} (in {}s)", (eta.unix() - now.unix()).max(0)),
    );
    let mut text = format!(
        "rollout {} of {} to {}: {}{stage}\nfailures {} of {} tolerated, {} of {} in flight, ETA {eta}\n\n",
        printable(&status.rollout),
        status.app,
        status.version,
        super::watch::phase_text(status),
        status.failures,
        status.failure_budget,
        status.in_flight,
        status.max_in_flight
    );
    let mut table = Table::new(&[
        "STAGE",
        "LABEL",
        "STATUS",
        "DONE",
        "IN FLIGHT",
        "FAILED",
        "WAITING",
        "TOTAL",
    ]);
    for (index, stage) in status.stages.iter().enumerate() {
        let state = match &stage.bake_remaining {
            _ if stage.total == 0 => "no hosts".to_owned(),
            Some(remaining) => format!("baking, {remaining} left"),
            None => stage.status.replace('_', " "),
        };
        table.row(vec![
            (index + 1).to_string(),
            stage.label.clone(),
            state,
            stage.done.to_string(),
            stage.in_flight.to_string(),
            stage.failed.to_string(),
            stage.waiting.to_string(),
            stage.total.to_string(),
        ]);
    }
    text.push_str(&table.render());
    if !status.failed_hosts.is_empty() {
        // The host's own words, whole (the table escapes them).
        text.push_str(&format!(
            "\nfailed hosts ({} of {}):\n",
            status.failed_hosts.len(),
            status.failures
        ));
        let mut failed = Table::new(&["HOST", "STAGE", "FAILED AT", "WHY", "STATE", "ERROR"]);
        for host in &status.failed_hosts {
            failed.row(vec![
                host.host.to_string(),
                (host.stage + 1).to_string(),
                host.at.to_string(),
                host.reason.clone(),
                host.state
                    .map_or_else(|| "-".to_owned(), |state| super::hosts::state_name(&state)),
                host.error.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        text.push_str(&failed.render());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-host fleet's rollout paused by the breaker: the canary failed, the other
    /// stages have no hosts.
    fn paused_one_host() -> RolloutStatus {
        let stage = |label: &str, status: &str, total: usize, failed: usize| {
            serde_json::json!({"label": label, "status": status, "bake_remaining": null, "total": total,
                               "waiting": 0, "in_flight": 0, "done": 0, "failed": failed, "removed": 0})
        };
        serde_json::from_value(serde_json::json!({
            "rollout": "web-2.0-1", "app": "web", "version": "2.0",
            "phase": "paused_by_breaker", "phase_text": "paused by the failure breaker",
            "stage": 0,
            "stages": [stage("canary", "failed", 1, 1), stage("50%", "not_started", 0, 0), stage("100%", "not_started", 0, 0)],
            "failures": 1, "failure_budget": 0, "in_flight": 0, "max_in_flight": 1, "eta": null,
            "created_by": "ci", "created_at": "2026-11-27T12:00:00Z", "finished_at": null,
            "failed_hosts": [{"host": "h01", "stage": 0, "at": "2026-11-27T12:00:30Z",
                              "reason": "reported rolled_back", "state": "rolled_back",
                              "error": "job Failed (status=217/USER)\n\u{1b}[2J"}],
        }))
        .expect("a status")
    }

    #[test]
    fn status_names_failed_hosts_and_empty_stages() {
        let text = status_text(&paused_one_host(), Timestamp::from_unix(1_800_000_000));
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].ends_with(", stage 1 of 3 (stages 2-3 have no hosts)"),
            "{text}"
        );
        let row = |label: &str| {
            lines
                .iter()
                .find(|line| line.contains(label))
                .copied()
                .unwrap_or_default()
        };
        assert!(row("50%").contains("no hosts"), "{text}");
        assert!(row("canary").contains("failed"), "{text}");
        assert!(text.contains("failed hosts (1 of 1):"), "{text}");
        let host = row("h01");
        assert!(
            host.starts_with("h01   1      2026-11-27T12:00:30Z  reported rolled_back  rolled_back  job Failed (status=217/USER)\\n\\u{1b}[2J"),
            "{host:?}"
        );
        assert!(!text.contains('\u{1b}'), "{text:?}");
    }
}
