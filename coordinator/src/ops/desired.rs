//! `drover pin`, `unpin`, `hold`, `unhold` and `status`: the desired state and how the
//! fleet follows it.

use std::collections::BTreeMap;
use std::io::Write;

use drover_protocol::api::{ChangeResult, FleetStatus, HoldRequest, PinRequest, Scope, UnpinRequest};
use reqwest::Method;

use super::{Table, emit, hosts_count, print_json};
use crate::cli::{HoldArgs, Output, PinArgs, StatusArgs, UnpinArgs};
use crate::client::{AdminClient, printable};
use crate::error::Error;

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

/// `drover status`.
pub async fn status(client: &AdminClient, args: &StatusArgs, out: &mut dyn Write) -> Result<(), Error> {
    let status: FleetStatus = client.get("/v1/admin/status").await?;
    if args.output == Output::Json {
        return print_json(out, &status);
    }
    let mut text = format!("hosts: {} enrolled, {} held\n", status.hosts, status.held);
    if status.apps.is_empty() {
        text.push_str(
            "\nNo apps yet. Create a release and pin it: drover release create ..., drover pin APP VERSION\n",
        );
        return emit(out, &text);
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
    let mut table = Table::new(&["APP", "DESIRED", "VERSIONS", "STATES"]);
    for (app, app_status) in &status.apps {
        table.row(vec![
            app.to_string(),
            app_status.desired_hosts.to_string(),
            counts(&app_status.versions),
            counts(&app_status.states),
        ]);
    }
    text.push('\n');
    text.push_str(&table.render());
    emit(out, &text)
}
