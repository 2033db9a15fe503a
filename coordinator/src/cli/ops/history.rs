//! `drover history`: the fleet-wide audit trail, newest first, from every history the
//! coordinator keeps (apps, host ids, admin changes), filtered by app, host, who and time.

use std::io::Write;

use drover_protocol::Timestamp;
use drover_protocol::api::{AuditEntry, HistoryQuery};

use super::{Table, emit, print_json};
use crate::cli::args::{HistoryArgs, Output};
use crate::cli::client::AdminClient;
use crate::error::Error;

/// The admin API path of the fleet-wide history.
const PATH: &str = "/v1/admin/history";

/// `drover history`: a table (AT WHO APP HOST WHAT REASON) or the lines as JSON.
pub async fn history(
    client: &AdminClient,
    args: &HistoryArgs,
    now: Timestamp,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let query = HistoryQuery {
        app: args.app.clone(),
        host: args.host.clone(),
        who: args.who.clone(),
        since: args.since.map(|since| since.at(now)),
        until: args.until.map(|until| until.at(now)),
        limit: args.limit,
    };
    let lines: Vec<AuditEntry> = client.get(&format!("{PATH}{}", query.to_query())).await?;
    match args.output {
        Output::Json => print_json(out, &lines),
        Output::Table => emit(out, &history_text(&lines, &query)),
    }
}

/// The table, and a line saying when the limit cut older lines off (the view is bounded).
fn history_text(lines: &[AuditEntry], query: &HistoryQuery) -> String {
    if lines.is_empty() {
        return "No recorded changes match.\n".into();
    }
    let dash = || "-".to_owned();
    let mut table = Table::new(&["AT", "WHO", "APP", "HOST", "WHAT", "REASON"]);
    for line in lines {
        table.row(vec![
            line.at.to_string(),
            line.who.clone(),
            line.app.as_ref().map_or_else(dash, ToString::to_string),
            line.host.as_ref().map_or_else(dash, ToString::to_string),
            line.what.clone(),
            line.reason.clone().unwrap_or_else(dash),
        ]);
    }
    let mut text = table.render();
    if let Some(last) = lines.last()
        && lines.len() >= usize::try_from(query.limit).unwrap_or(usize::MAX)
    {
        text.push_str(&format!(
            "(the newest {} lines; older ones with --until {} (that second's lines come again), or --limit up to {})\n",
            query.limit,
            last.at,
            drover_protocol::api::HISTORY_LIMIT_MAX
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use drover_protocol::api::AuditSource;

    use super::*;

    fn line(who: &str, what: &str, reason: Option<&str>) -> AuditEntry {
        AuditEntry {
            at: "2026-12-07T10:00:00Z".parse().expect("at"),
            who: who.into(),
            what: what.into(),
            reason: reason.map(str::to_owned),
            app: None,
            host: Some("web-01".parse().expect("host")),
            rollout: None,
            source: AuditSource::Admin,
        }
    }

    #[test]
    fn the_table_escapes_what_and_says_when_lines_were_cut() {
        let query = HistoryQuery {
            limit: 2,
            ..HistoryQuery::default()
        };
        let one = history_text(
            &[line("alice", "labels of web-01: set env=prod", Some("moved"))],
            &query,
        );
        let rows: Vec<&str> = one.lines().collect();
        assert!(rows[0].starts_with("AT"), "{one}");
        assert!(
            rows[1].contains("alice") && rows[1].contains("web-01") && rows[1].ends_with("moved"),
            "{one}"
        );
        assert_eq!(rows.len(), 2, "{one}");
        let two = history_text(&[line("bob", "evil\nline", None), line("bob", "x", None)], &query);
        assert!(two.contains("evil\\nline"), "{two}");
        assert!(
            two.contains("the newest 2 lines; older ones with --until 2026-12-07T10:00:00Z"),
            "{two}"
        );
        assert_eq!(history_text(&[], &query), "No recorded changes match.\n");
    }
}
