//! `drover token create`, `drover hosts ...` and `drover groups ...`.

use std::io::Write;

use drover_protocol::Timestamp;
use drover_protocol::api::{
    ChangeResult, Group, HostApp, HostDetail, HostHistoryEntry, HostSummary, LabelRequest, Labels, TokenRequest,
    TokenResponse,
};
use reqwest::Method;

use super::{Table, ago, emit, hosts_count, path_segment, print_json, reason_query};
use crate::cli::args::{
    GroupCreateArgs, GroupNameArgs, HostIdArgs, HostLabelArgs, HostShowArgs, LabelChange, Output, OutputArgs,
    TokenCreateArgs,
};
use crate::cli::client::AdminClient;
use crate::error::Error;
use crate::text::labels_text;
use crate::text::printable;

/// `drover token create`: the join command alone on stdout (so `$(drover token create)`
/// is the command), how long it works on stderr. With --coordinators the join command
/// names those URLs (checked as the agent checks them) instead of the coordinator's own.
pub async fn token_create(client: &AdminClient, args: &TokenCreateArgs, out: &mut dyn Write) -> Result<(), Error> {
    let coordinators: Vec<&String> = args.coordinators.iter().filter(|url| !url.is_empty()).collect();
    let coordinators = match coordinators[..] {
        [] => None,
        _ => Some(
            drover_protocol::coordinators::check_coordinator_urls(&coordinators)
                .map_err(|problems| Error::Input(format!("--coordinators: {}", problems.join("; "))))?,
        ),
    };
    let request = TokenRequest {
        labels: args.labels.clone().unwrap_or_default(),
        ttl: args.ttl,
        replace: args.replace.clone(),
        allow_loopback: args.allow_loopback,
    };
    let mut token: TokenResponse = client.send_json(Method::POST, "/v1/admin/tokens", &request).await?;
    if let Some(coordinators) = coordinators {
        token.join_command = join_command_for(&token.join_command, &coordinators)?;
    }
    match args.output {
        Output::Json => print_json(out, &token),
        Output::Table => {
            emit(out, &format!("{}\n", printable(&token.join_command)))?;
            eprintln!(
                "Run this as root on the new host. The token works once and expires at {}.",
                token.expires_at
            );
            Ok(())
        }
    }
}

/// The coordinator's join command (`drover-agent join URL --token=... --ca-sha256 ...`)
/// naming `coordinators` (comma-separated, the form `drover-agent join` takes) in place of
/// its one URL. Pure.
fn join_command_for(join_command: &str, coordinators: &[String]) -> Result<String, Error> {
    let rest = join_command
        .strip_prefix("drover-agent join ")
        .and_then(|rest| rest.split_once(' '))
        .map(|(_url, rest)| rest)
        .ok_or_else(|| {
            Error::Input(format!(
                "the coordinator answered an unexpected join command: {join_command}"
            ))
        })?;
    Ok(format!("drover-agent join {} {rest}", coordinators.join(",")))
}

/// `drover hosts list`.
pub async fn hosts_list(
    client: &AdminClient,
    args: &OutputArgs,
    now: Timestamp,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let hosts: Vec<HostSummary> = client.get("/v1/admin/hosts").await?;
    if args.output == Output::Json {
        return print_json(out, &hosts);
    }
    if hosts.is_empty() {
        return emit(
            out,
            "No hosts enrolled. Enroll one with the command `drover token create` prints.\n",
        );
    }
    let mut table = Table::new(&[
        "HOST",
        "LABELS",
        "LAST SEEN",
        "SERIAL",
        "REPORTED",
        "HELD",
        "CERT EXPIRES",
        "APPS",
    ]);
    for host in &hosts {
        table.row(vec![
            host.id.to_string(),
            labels_text(&host.labels),
            ago(host.last_seen, now),
            host.manifest_serial.to_string(),
            host.reported_serial
                .map_or_else(|| "-".into(), |serial| serial.to_string()),
            yes_no(host.held).into(),
            certificate_expiry_text(host.certificate_not_after, now),
            apps_text(host),
        ]);
    }
    emit(out, &table.render())
}

/// When a host's certificate expires, relative to `now`: `in 364d`, `in 12d !` (less than
/// 30 days left: the host has not renewed), `expired 2d ago !`, or `-` when not known yet.
pub(crate) fn certificate_expiry_text(not_after: Option<Timestamp>, now: Timestamp) -> String {
    let Some(not_after) = not_after else {
        return "-".into();
    };
    let seconds = not_after.unix() - now.unix();
    if seconds <= 0 {
        return format!("expired {} !", ago(Some(not_after), now));
    }
    let (amount, unit) = match seconds {
        0..60 => (seconds, "s"),
        60..3600 => (seconds / 60, "m"),
        3600..86_400 => (seconds / 3600, "h"),
        _ => (seconds / 86_400, "d"),
    };
    let soon = not_after <= now.plus(drover_protocol::api::CERTIFICATE_EXPIRING_SOON);
    format!("in {amount}{unit}{}", if soon { " !" } else { "" })
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// One app as `web 1.4.2 healthy`, or `web 1.4.1->1.4.2 fetching` while it converges.
fn app_text(name: &str, app: &HostApp) -> String {
    let version = |version: &Option<drover_protocol::Version>| {
        version.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string)
    };
    let versions = if app.current == app.desired || app.desired.is_none() {
        version(&app.current)
    } else {
        format!("{}->{}", version(&app.current), version(&app.desired))
    };
    let state = app
        .state
        .map_or_else(|| "not reported".to_owned(), |state| state_name(&state));
    format!("{name} {versions} {state}")
}

fn apps_text(host: &HostSummary) -> String {
    if host.apps.is_empty() {
        return "-".into();
    }
    host.apps
        .iter()
        .map(|(name, app)| app_text(name.as_str(), app))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The wire name of a state (`rolled_back`), as the API and `status` spell it.
pub(super) fn state_name<T: serde::Serialize>(state: &T) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// `drover hosts show`.
pub async fn hosts_show(
    client: &AdminClient,
    args: &HostShowArgs,
    now: Timestamp,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let host: HostDetail = client.get(&format!("/v1/admin/hosts/{}", args.id)).await?;
    if args.output == Output::Json {
        return print_json(out, &host);
    }
    let summary = &host.summary;
    let mut fields = Table::new(&["host:", summary.id.as_str()]);
    fields.row(vec!["labels:".into(), labels_text(&summary.labels)]);
    fields.row(vec!["joined:".into(), summary.joined_at.to_string()]);
    fields.row(vec![
        "last seen:".into(),
        match summary.last_seen {
            Some(seen) => format!("{} ({seen})", ago(Some(seen), now)),
            None => "never".into(),
        },
    ]);
    fields.row(vec![
        "manifest:".into(),
        match summary.reported_serial {
            Some(reported) if reported == summary.manifest_serial => {
                format!("serial {} (the host acted on it)", summary.manifest_serial)
            }
            Some(reported) => format!("serial {} (the host last acted on {reported})", summary.manifest_serial),
            None => format!("serial {} (the host has not reported yet)", summary.manifest_serial),
        },
    ]);
    fields.row(vec!["held:".into(), yes_no(summary.held).into()]);
    fields.row(vec![
        "certificate:".into(),
        match summary.certificate_not_after {
            Some(not_after) => format!(
                "expires {not_after} ({})",
                certificate_expiry_text(Some(not_after), now)
            ),
            None => "expiry not known yet (enrolled by an older coordinator; known at its next request)".into(),
        },
    ]);
    if let Some(facts) = &summary.facts {
        fields.row(vec![
            "facts:".into(),
            format!("{} {}, agent {}", facts.os, facts.arch, facts.agent_version),
        ]);
    }
    if let Some(rejection) = &host.manifest_rejection {
        fields.row(vec!["rejected:".into(), rejection.clone()]);
    }
    let mut text = fields.render();
    if !summary.apps.is_empty() {
        let mut apps = Table::new(&["APP", "DESIRED", "CURRENT", "STATE", "LAST ERROR"]);
        for (name, app) in &summary.apps {
            let version = |version: &Option<drover_protocol::Version>| {
                version.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string)
            };
            apps.row(vec![
                name.to_string(),
                version(&app.desired),
                version(&app.current),
                app.state.map_or_else(|| "-".to_owned(), |state| state_name(&state)),
                app.last_error.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        text.push('\n');
        text.push_str(&apps.render());
    }
    if !host.events.is_empty() {
        let mut events = Table::new(&["EVENT AT", "APP", "MESSAGE"]);
        for event in &host.events {
            events.row(vec![
                event.at.to_string(),
                event.app.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string),
                event.message.clone(),
            ]);
        }
        text.push('\n');
        text.push_str(&events.render());
    }
    if !host.history.is_empty() {
        text.push('\n');
        text.push_str(&history_table(&host.history));
    }
    emit(out, &text)
}

/// A host id's history as a table; certificates by the first 16 hex digits of their
/// sha256 (-o json has them whole).
fn history_table(lines: &[HostHistoryEntry]) -> String {
    let short = |sha256: &Option<String>| {
        sha256
            .as_deref()
            .map_or_else(|| "-".to_owned(), |sha256| sha256.chars().take(16).collect())
    };
    let mut history = Table::new(&["HISTORY AT", "WHO", "OLD CERT", "NEW CERT", "WHAT"]);
    for line in lines {
        history.row(vec![
            line.at.to_string(),
            printable(&line.who),
            short(&line.old_certificate),
            short(&line.new_certificate),
            printable(&line.what),
        ]);
    }
    history.render()
}

/// `drover hosts history`.
pub async fn hosts_history(client: &AdminClient, args: &HostShowArgs, out: &mut dyn Write) -> Result<(), Error> {
    let lines: Vec<HostHistoryEntry> = client.get(&format!("/v1/admin/hosts/{}/history", args.id)).await?;
    if args.output == Output::Json {
        return print_json(out, &lines);
    }
    emit(out, &history_table(&lines))
}

/// `drover hosts label`.
pub async fn hosts_label(client: &AdminClient, args: &HostLabelArgs, out: &mut dyn Write) -> Result<(), Error> {
    let mut request = LabelRequest {
        set: Labels::new(),
        remove: Vec::new(),
    };
    for change in &args.changes {
        let (LabelChange::Set(key, _) | LabelChange::Remove(key)) = change;
        if request.set.contains_key(key) || request.remove.contains(key) {
            return Err(Error::Input(format!(
                "label {key:?} is changed twice; give each key once (k=v sets, k- removes)"
            )));
        }
        match change {
            LabelChange::Set(key, value) => {
                request.set.insert(key.clone(), value.clone());
            }
            LabelChange::Remove(key) => request.remove.push(key.clone()),
        }
    }
    let path = format!("/v1/admin/hosts/{}/labels{}", args.id, reason_query(&args.reason));
    let changed: ChangeResult = client.send_json(Method::PUT, &path, &request).await?;
    emit(
        out,
        &format!(
            "labelled host {}: {} got a new manifest\n",
            args.id,
            hosts_count(changed.hosts_changed)
        ),
    )
}

/// `drover hosts remove`.
pub async fn hosts_remove(client: &AdminClient, args: &HostIdArgs, out: &mut dyn Write) -> Result<(), Error> {
    client
        .delete(&format!("/v1/admin/hosts/{}{}", args.id, reason_query(&args.reason)))
        .await?;
    emit(
        out,
        &format!(
            "removed host {}: its key and certificates no longer work. Its id is kept with its host pins and holds; to enroll it again, join it with a token from `drover token create --replace {}`\n",
            args.id, args.id
        ),
    )
}

/// `drover groups list`: each group with the number of enrolled hosts it matches now.
pub async fn groups_list(client: &AdminClient, args: &OutputArgs, out: &mut dyn Write) -> Result<(), Error> {
    let groups: Vec<Group> = client.get("/v1/admin/groups").await?;
    if args.output == Output::Json {
        return print_json(out, &groups);
    }
    if groups.is_empty() {
        return emit(
            out,
            "No groups. Create one: drover groups create NAME --selector k=v,...\n",
        );
    }
    let hosts: Vec<HostSummary> = client.get("/v1/admin/hosts").await?;
    let mut table = Table::new(&["GROUP", "SELECTOR", "HOSTS"]);
    for group in &groups {
        let matching = hosts
            .iter()
            .filter(|host| drover_protocol::api::selector_matches(&group.selector, &host.labels))
            .count();
        table.row(vec![
            group.name.clone(),
            labels_text(&group.selector),
            matching.to_string(),
        ]);
    }
    emit(out, &table.render())
}

/// `drover groups create`.
pub async fn groups_create(client: &AdminClient, args: &GroupCreateArgs, out: &mut dyn Write) -> Result<(), Error> {
    let group = Group {
        name: args.name.clone(),
        selector: args.selector.clone(),
    };
    let path = format!("/v1/admin/groups{}", reason_query(&args.reason));
    let changed: ChangeResult = client.send_json(Method::POST, &path, &group).await?;
    emit(
        out,
        &format!(
            "group {} selects {}: {} got a new manifest\n",
            printable(&group.name),
            labels_text(&group.selector),
            hosts_count(changed.hosts_changed)
        ),
    )
}

/// `drover groups delete`.
pub async fn groups_delete(client: &AdminClient, args: &GroupNameArgs, out: &mut dyn Write) -> Result<(), Error> {
    client
        .delete(&format!(
            "/v1/admin/groups/{}{}",
            path_segment(&args.name),
            reason_query(&args.reason)
        ))
        .await?;
    emit(out, &format!("deleted group {}\n", printable(&args.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_join_line_names_every_coordinator_given() {
        let line = "drover-agent join https://a:8443 --token=-x_y --ca-sha256 ab12";
        let all = ["https://a:8443".to_owned(), "https://b:8443".to_owned()];
        assert_eq!(
            join_command_for(line, &all).expect("rewritten"),
            "drover-agent join https://a:8443,https://b:8443 --token=-x_y --ca-sha256 ab12"
        );
        assert!(join_command_for("something else", &all).is_err());
    }

    #[test]
    fn apps_read_as_version_and_state() {
        let app = |desired: Option<&str>, current: Option<&str>, state| HostApp {
            desired: desired.map(|version| version.parse().expect("version")),
            current: current.map(|version| version.parse().expect("version")),
            state,
            last_error: None,
        };
        use drover_protocol::report::AppState;
        assert_eq!(
            app_text("web", &app(Some("1.4.2"), Some("1.4.2"), Some(AppState::Healthy))),
            "web 1.4.2 healthy"
        );
        assert_eq!(
            app_text("web", &app(Some("1.4.2"), Some("1.4.1"), Some(AppState::RolledBack))),
            "web 1.4.1->1.4.2 rolled_back"
        );
        assert_eq!(
            app_text("web", &app(Some("1.4.2"), None, None)),
            "web none->1.4.2 not reported"
        );
    }
}
