//! The audit trail in SQLite: `admin_history` (label changes, groups, admin tokens; schema
//! 6) and the fleet-wide view over it, `rollout_history` (each app's) and `host_history`
//! (each host id's), for `drover history`.

use drover_protocol::api::{AuditEntry, AuditSource, HistoryQuery};
use drover_protocol::{AppName, HostId, Timestamp};
use sqlx::Row as _;

use super::{SqliteStore, unix};
use crate::server::store::{AdminChange, StoreError, parse};

/// Writes an admin change's line inside the change's own transaction.
pub(super) async fn insert_admin_change(
    transaction: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    change: &AdminChange,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO admin_history (at, who, host, what, reason) VALUES (?, ?, ?, ?, ?)")
        .bind(unix(change.at))
        .bind(&change.who)
        .bind(change.host.as_ref().map(HostId::as_str))
        .bind(&change.what)
        .bind(change.reason.as_deref())
        .execute(&mut **transaction)
        .await?;
    Ok(())
}

/// One source table of the fleet-wide view, with the filters it can answer.
struct Source {
    source: AuditSource,
    /// `SELECT at, who, what, reason, app, host, rollout FROM ...` (NULL where the table
    /// has no such column).
    select: &'static str,
    /// Its column of the app filter (none: the table has no app lines, so an app filter
    /// leaves it out), and whether lines for every app (NULL, holds) match too.
    app: Option<&'static str>,
    /// Its column of the host filter (none: left out under a host filter).
    host: Option<&'static str>,
}

const SOURCES: [Source; 3] = [
    Source {
        source: AuditSource::App,
        select: "SELECT at, who, what, reason, app, host, rollout FROM rollout_history",
        app: Some("app"),
        host: Some("host"),
    },
    Source {
        source: AuditSource::Host,
        select: "SELECT at, who, what, reason, NULL, host, NULL FROM host_history",
        app: None,
        host: Some("host"),
    },
    Source {
        source: AuditSource::Admin,
        select: "SELECT at, who, what, reason, NULL, host, NULL FROM admin_history",
        app: None,
        host: Some("host"),
    },
];

impl SqliteStore {
    /// The newest `query.limit` lines of every history that match `query`, newest first.
    /// Each source is one bounded query (its newest matching lines by id, through its
    /// index when filtered by app or host), then the lists are merged by time.
    pub async fn fleet_history(&self, query: &HistoryQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let mut lines = Vec::new();
        for source in &SOURCES {
            if (query.app.is_some() && source.app.is_none()) || (query.host.is_some() && source.host.is_none()) {
                continue;
            }
            // Only fixed column names are put into the text; every value is bound.
            let mut conditions = Vec::new();
            if let (Some(_), Some(column)) = (&query.app, source.app) {
                // Holds (no app) stop every app: in every app's history, as in `rollout history`.
                conditions.push(format!("({column} = ? OR {column} IS NULL)"));
            }
            if let (Some(_), Some(column)) = (&query.host, source.host) {
                conditions.push(format!("{column} = ?"));
            }
            if query.who.is_some() {
                conditions.push("who = ?".to_owned());
            }
            if query.since.is_some() {
                conditions.push("at >= ?".to_owned());
            }
            if query.until.is_some() {
                conditions.push("at <= ?".to_owned());
            }
            let filter = if conditions.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", conditions.join(" AND "))
            };
            let text = format!("{}{filter} ORDER BY id DESC LIMIT ?", source.select);
            let mut statement = sqlx::query(&text);
            if let (Some(app), Some(_)) = (&query.app, source.app) {
                statement = statement.bind(app.as_str());
            }
            if let (Some(host), Some(_)) = (&query.host, source.host) {
                statement = statement.bind(host.as_str());
            }
            if let Some(who) = &query.who {
                statement = statement.bind(who.as_str());
            }
            if let Some(since) = query.since {
                statement = statement.bind(unix(since));
            }
            if let Some(until) = query.until {
                statement = statement.bind(unix(until));
            }
            for row in statement.bind(query.limit).fetch_all(&self.pool).await? {
                lines.push(AuditEntry {
                    at: Timestamp::from_unix(row.get(0)),
                    who: row.get(1),
                    what: row.get(2),
                    reason: row.get(3),
                    app: row
                        .get::<Option<&str>, _>(4)
                        .map(|app| parse::<AppName>("app", app))
                        .transpose()?,
                    host: row
                        .get::<Option<&str>, _>(5)
                        .map(|host| parse::<HostId>("host id", host))
                        .transpose()?,
                    rollout: row.get(6),
                    source: source.source,
                });
            }
        }
        // Stable: lines of one source at the same second keep their order (newest id first).
        lines.sort_by_key(|line| std::cmp::Reverse(line.at));
        lines.truncate(usize::try_from(query.limit).unwrap_or(usize::MAX));
        Ok(lines)
    }
}
