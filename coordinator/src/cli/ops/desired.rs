//! `drover pin`, `unpin`, `hold`, `unhold` and `status`: the desired state and how the
//! fleet follows it.

use std::collections::BTreeMap;
use std::io::Write;

use drover_protocol::Timestamp;
use drover_protocol::api::{
    AppStatus, ChangeResult, FleetStatus, HoldRequest, PinList, PinRequest, Scope, UnpinRequest,
};
use reqwest::Method;

use super::{Table, ago, emit, hosts_count, path_segment, print_json};
use crate::cli::args::{HoldArgs, Output, PinArgs, PinsArgs, StatusArgs, UnpinArgs};
use crate::cli::client::AdminClient;
use crate::error::Error;
use crate::text::printable;

/// Whether `hold` sets or lifts a hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldChange {
    /// `drover hold`: the scope's agents apply no changes.
    Hold,
    /// `drover unhold`: they converge again.
    Unhold,
}

/// `the fleet`, `group prod-eu`, `host web-01`.
fn scope_text(scope: &Scope) -> String {
    match scope {
        Scope::Fleet => "the fleet".into(),
        other => printable(&other.to_string()),
    }
}

/// `drover pin`.
pub async fn pin(client: &AdminClient, args: &PinArgs, out: &mut dyn Write) -> Result<(), Error> {
    let request = PinRequest {
        app: args.app.clone(),
        version: args.version.clone(),
        scope: args.scope.scope(),
        reason: args.reason.clone(),
    };
    let changed: ChangeResult = client.send_json(Method::PUT, "/v1/admin/pins", &request).await?;
    emit(
        out,
        &format!(
            "pinned {} {} for {}: {} got a new manifest\n",
            request.app,
            request.version,
            scope_text(&request.scope),
            hosts_count(changed.hosts_changed)
        ),
    )
}

/// `drover unpin`.
pub async fn unpin(client: &AdminClient, args: &UnpinArgs, out: &mut dyn Write) -> Result<(), Error> {
    let request = UnpinRequest {
        app: args.app.clone(),
        scope: args.scope.scope(),
        reason: args.reason.clone(),
    };
    let changed: ChangeResult = client.send_json(Method::DELETE, "/v1/admin/pins", &request).await?;
    emit(
        out,
        &format!(
            "unpinned {} for {}: {} got a new manifest\n",
            request.app,
            scope_text(&request.scope),
            hosts_count(changed.hosts_changed)
        ),
    )
}

/// `drover hold` and `drover unhold`.
pub async fn hold(client: &AdminClient, args: &HoldArgs, change: HoldChange, out: &mut dyn Write) -> Result<(), Error> {
    let request = HoldRequest {
        scope: args.scope.scope(),
        reason: args.reason.clone(),
    };
    let (method, verb) = match change {
        HoldChange::Hold => (Method::PUT, "held"),
        HoldChange::Unhold => (Method::DELETE, "released the hold on"),
    };
    let changed: ChangeResult = client.send_json(method, "/v1/admin/holds", &request).await?;
    let note = if changed.hosts_changed == 0 {
        match change {
            HoldChange::Hold => " (it was held already, or has no hosts)",
            HoldChange::Unhold => " (it was not held, or has no hosts)",
        }
    } else {
        ""
    };
    emit(
        out,
        &format!(
            "{verb} {}: {} got a new manifest{note}\n",
            scope_text(&request.scope),
            hosts_count(changed.hosts_changed)
        ),
    )
}

/// `drover status`: every app that has releases, pins or hosts running it.
pub async fn status(client: &AdminClient, args: &StatusArgs, out: &mut dyn Write) -> Result<(), Error> {
    let status: FleetStatus = client.get("/v1/admin/status").await?;
    if args.output == Output::Json {
        return print_json(out, &status);
    }
    emit(out, &status_text(&status))
}

/// `drover status` as a table: what each app should run (DESIRED hosts, PINS per scope),
/// what runs (VERSIONS, STATES) and how many RELEASES it has.
fn status_text(status: &FleetStatus) -> String {
    let mut text = format!("hosts: {} enrolled, {} held\n", status.hosts, status.held);
    if let Some(leader) = &status.leader {
        text.push_str(&format!(
            "leader: {leader} (runs the rollouts; drover coordinators lists every replica)\n"
        ));
    }
    if status.apps.is_empty() {
        text.push_str(
            "\nNo apps yet. Create a release and pin it: drover release create ..., drover pin APP VERSION\n",
        );
        return text;
    }
    let counts = |counts: &BTreeMap<String, usize>| {
        if counts.is_empty() {
            return "-".to_owned();
        }
        counts
            .iter()
            .map(|(name, count)| format!("{name}:{count}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut table = Table::new(&["APP", "DESIRED", "VERSIONS", "STATES", "PINS", "RELEASES"]);
    for (app, app_status) in &status.apps {
        table.row(vec![
            app.to_string(),
            app_status.desired_hosts.to_string(),
            counts(&app_status.versions),
            counts(&app_status.states),
            pins_text(app_status),
            app_status.releases.to_string(),
        ]);
    }
    text.push('\n');
    text.push_str(&table.render());
    text
}

/// An app's pins in one cell: `fleet=1.0.0 group:eu=1.1.0 hosts=2.0.0:3` (three hosts
/// pinned to 2.0.0), or `-`.
fn pins_text(app: &AppStatus) -> String {
    let mut parts = Vec::new();
    if let Some(version) = &app.fleet_pin {
        parts.push(format!("fleet={version}"));
    }
    for (group, version) in &app.group_pins {
        parts.push(format!("group:{group}={version}"));
    }
    if !app.host_pins.is_empty() {
        let hosts = app
            .host_pins
            .iter()
            .map(|(version, count)| format!("{version}:{count}"))
            .collect::<Vec<_>>()
            .join(",");
        parts.push(format!("hosts={hosts}"));
    }
    if parts.is_empty() {
        return "-".into();
    }
    parts.join(" ")
}

/// `drover pins [APP]`: the pins in force with who set them, and the holds.
pub async fn pins(client: &AdminClient, args: &PinsArgs, now: Timestamp, out: &mut dyn Write) -> Result<(), Error> {
    let path = match &args.app {
        Some(app) => format!("/v1/admin/pins/{}", path_segment(app.as_str())),
        None => "/v1/admin/pins".to_owned(),
    };
    let list: PinList = client.get(&path).await?;
    if args.output == Output::Json {
        return print_json(out, &list);
    }
    emit(
        out,
        &pins_text_table(&list, args.app.as_ref().map(|app| app.as_str()), now),
    )
}

/// `drover pins` as two tables, pins then holds.
fn pins_text_table(list: &PinList, app: Option<&str>, now: Timestamp) -> String {
    let or_dash = |text: Option<&str>| text.map_or_else(|| "-".to_owned(), str::to_owned);
    let when = |at: Option<Timestamp>| at.map_or_else(|| "-".to_owned(), |at| ago(Some(at), now));
    let mut text = String::new();
    if list.pins.is_empty() {
        let whose = app.map_or_else(String::new, |app| format!(" for {app}"));
        text.push_str(&format!("No pins{whose}. Pin a release: drover pin APP VERSION\n"));
    } else {
        let mut table = Table::new(&["APP", "SCOPE", "VERSION", "SET BY", "WHEN", "ROLLOUT", "REASON"]);
        for pin in &list.pins {
            table.row(vec![
                pin.app.to_string(),
                pin.scope.to_string(),
                pin.version.to_string(),
                or_dash(pin.set_by.as_deref()),
                when(pin.set_at),
                or_dash(pin.rollout.as_deref()),
                or_dash(pin.reason.as_deref()),
            ]);
        }
        text.push_str(&table.render());
    }
    if !list.holds.is_empty() {
        let mut table = Table::new(&["HELD", "SET BY", "WHEN", "REASON"]);
        for hold in &list.holds {
            table.row(vec![
                hold.scope.to_string(),
                or_dash(hold.set_by.as_deref()),
                when(hold.set_at),
                or_dash(hold.reason.as_deref()),
            ]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    text
}
