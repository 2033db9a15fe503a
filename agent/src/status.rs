//! `drover-agent status`: the host as this agent sees it, from its own files only (no
//! network): the coordinator it talks to (of several, the one it last moved to or
//! started at, `<state>/coordinator`), the host certificate's expiry and when its renewal starts, the last accepted
//! manifest, and per app the current and previous release, the state and health last
//! reported, bad versions and an interrupted switch if any; and, while the coordinator
//! refuses this host's certificate (removed or replaced), that and how to re-join. `-o json` prints the same as
//! one JSON document for scripts.

use std::io::Write;

use drover_protocol::report::HostReport;
use serde_json::json;

use crate::config::AgentConfig;
use crate::error::Error;
use crate::state::StateDir;

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned text.
    Table,
    /// One JSON document.
    Json,
}

fn write_error(source: std::io::Error) -> Error {
    Error::Io {
        operation: "writing",
        path: "stdout".into(),
        source,
    }
}

/// Prints the local view.
pub fn status(config: &AgentConfig, output: Output, out: &mut dyn Write) -> Result<(), Error> {
    let state = StateDir::new(&config.state_dir);
    let last = crate::accepted::stored_floor(&state).map_err(Error::State)?;
    let records = crate::local::load_all(&config.state_dir).map_err(Error::State)?;
    let report: Option<HostReport> = std::fs::read(config.state_dir.join("status.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let mut names: Vec<_> = records.keys().cloned().collect();
    if let Some(report) = &report {
        names.extend(report.apps.keys().cloned());
    }
    names.sort();
    names.dedup();
    let apps: Vec<serde_json::Value> = names
        .iter()
        .map(|app| {
            let record = records.get(app).cloned().unwrap_or_default();
            let reported = report.as_ref().and_then(|report| report.apps.get(app));
            json!({
                "app": app,
                "current": record.current.as_ref().map(|release| release.version.as_str()),
                "previous": record.previous.as_ref().map(|release| release.version.as_str()),
                "desired": reported.and_then(|app| app.desired.as_ref()).map(|version| version.as_str()),
                "state": reported.map(|app| serde_json::to_value(app.state).expect("states serialize")),
                "health": reported.and_then(|app| app.health.clone()),
                "last_error": reported.and_then(|app| app.last_error.clone()),
                "bad_versions": record.bad.iter().map(|version| version.as_str()).collect::<Vec<_>>(),
                "interrupted": record.activation.as_ref().map(|activation| activation.to.version.as_str()),
            })
        })
        .collect();
    // The host certificate's validity (renewed in band once a third of it is left).
    let certificate = std::fs::read_to_string(state.certificate())
        .ok()
        .and_then(|pem| crate::renew::Validity::of_pem(&pem).ok());
    let refusal = crate::reporting::Refusal::load(&config.state_dir);
    // The coordinator in use when the agent last moved or started (`<state>/coordinator`).
    let coordinator = crate::coordinators::current_of(&config.coordinators, &config.state_dir);
    let document = json!({
        "host": config.host_id,
        "coordinator": coordinator,
        "coordinators": config.coordinators,
        // Set while the coordinator refuses this host's certificate (removed, replaced).
        "refused": refusal.as_ref().map(|refusal| json!({
            "code": refusal.code,
            "message": refusal.message,
            "since": refusal.since.to_string(),
            "rejoin": crate::reporting::Refusal::rejoin(&config.host_id),
        })),
        "certificate_not_after": certificate.map(|validity| validity.not_after.to_string()),
        "certificate_renewal_from": certificate.map(|validity| validity.renewal_from().to_string()),
        "manifest_serial": last.map(|last| last.serial),
        "manifest_issued_at": last.map(|last| last.issued_at.to_string()),
        "manifest_rejection": report.as_ref().and_then(|report| report.manifest_rejection.clone()),
        "held": report.as_ref().is_some_and(|report| report.held),
        "reported_at": report.as_ref().map(|report| report.sent_at.to_string()),
        "apps": apps,
    });
    if output == Output::Json {
        return writeln!(out, "{}", serde_json::to_string_pretty(&document).expect("json")).map_err(write_error);
    }
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    writeln!(
        out,
        "host {} -> {}{}\nmanifest serial {} (issued {}){}{}",
        config.host_id,
        coordinator.as_deref().unwrap_or("(not joined)"),
        match &config.coordinators[..] {
            [] | [_] => String::new(),
            all => format!(" (of {})", all.join(", ")),
        },
        text(&document["manifest_serial"]),
        text(&document["manifest_issued_at"]),
        if document["held"] == true { ", HELD" } else { "" },
        report
            .as_ref()
            .and_then(|report| report.manifest_rejection.as_deref())
            .map(|reason| format!("\nlast manifest REJECTED: {reason}"))
            .unwrap_or_default(),
    )
    .map_err(write_error)?;
    if let Some(refusal) = &refusal {
        let what = if refusal.code == "certificate_replaced" {
            "REPLACED: another join replaced this host's certificate"
        } else {
            "REMOVED: the coordinator no longer enrolls this host"
        };
        writeln!(
            out,
            "{what} (since {}; {}: {})\napps keep running as they are; the agent asks again every few minutes\nto bring it back: {}",
            refusal.since,
            refusal.code,
            refusal.message,
            crate::reporting::Refusal::rejoin(&config.host_id)
        )
        .map_err(write_error)?;
    }
    writeln!(
        out,
        "host certificate valid until {} (renewed from {})",
        text(&document["certificate_not_after"]),
        text(&document["certificate_renewal_from"]),
    )
    .map_err(write_error)?;
    writeln!(
        out,
        "{:<16} {:<12} {:<12} {:<12} {:<12} BAD / HEALTH / ERROR",
        "APP", "CURRENT", "PREVIOUS", "DESIRED", "STATE"
    )
    .map_err(write_error)?;
    for app in &apps {
        let mut notes = Vec::new();
        if let Some(bad) = app["bad_versions"].as_array().filter(|bad| !bad.is_empty()) {
            notes.push(format!("bad: {}", bad.iter().map(text).collect::<Vec<_>>().join(",")));
        }
        if !app["interrupted"].is_null() {
            notes.push(format!("interrupted switch to {}", text(&app["interrupted"])));
        }
        for field in ["health", "last_error"] {
            if !app[field].is_null() {
                notes.push(text(&app[field]));
            }
        }
        writeln!(
            out,
            "{:<16} {:<12} {:<12} {:<12} {:<12} {}",
            text(&app["app"]),
            text(&app["current"]),
            text(&app["previous"]),
            text(&app["desired"]),
            text(&app["state"]),
            notes.join("; ")
        )
        .map_err(write_error)?;
    }
    Ok(())
}
