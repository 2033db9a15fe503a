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

#[cfg(test)]
mod tests {
    use drover_protocol::api::{AuditSource, HistoryQuery};

    use crate::server::store::Backend;
    use crate::server::store::tests::{admin_change, at, scratch};

    /// A row as one of the three histories holds it, at `at(seconds)`.
    struct Row {
        table: &'static str,
        seconds: i64,
        who: &'static str,
        app: Option<&'static str>,
        host: Option<&'static str>,
        reason: Option<&'static str>,
    }

    const fn row(
        table: &'static str,
        seconds: i64,
        who: &'static str,
        (app, host, reason): (Option<&'static str>, Option<&'static str>, Option<&'static str>),
    ) -> Row {
        Row {
            table,
            seconds,
            who,
            app,
            host,
            reason,
        }
    }

    const ROWS: [Row; 9] = [
        row("admin_history", 5, "admin", (None, None, None)),
        row("rollout_history", 10, "alice", (Some("web"), None, Some("release day"))),
        // A pin scoped to one host: in that host's history too.
        row("rollout_history", 12, "carol", (Some("web"), Some("web-01"), None)),
        row("host_history", 15, "admin", (None, Some("web-01"), None)),
        row("rollout_history", 20, "bob", (None, None, Some("incident"))),
        row("host_history", 25, "host", (None, Some("web-02"), None)),
        row("rollout_history", 30, "alice", (Some("api"), None, None)),
        row("admin_history", 35, "alice", (None, Some("web-01"), Some("to prod"))),
        row("host_history", 40, "alice", (None, Some("web-01"), Some("disk died"))),
    ];

    async fn filled() -> (crate::server::store::Store, std::path::PathBuf) {
        let (store, directory) = scratch("fleet-history").await;
        let Backend::Sqlite(sqlite) = &store.backend;
        for Row {
            table,
            seconds,
            who,
            app,
            host,
            reason,
        } in ROWS
        {
            let what = format!("{table} at {seconds}");
            let statement = match table {
                "rollout_history" => sqlx::query(
                    "INSERT INTO rollout_history (app, host, at, who, what, reason) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(app)
                .bind(host),
                "host_history" => sqlx::query(
                    "INSERT INTO host_history (host, kind, at, who, what, reason) VALUES (?, 'removed', ?, ?, ?, ?)",
                )
                .bind(host),
                _ => sqlx::query("INSERT INTO admin_history (host, at, who, what, reason) VALUES (?, ?, ?, ?, ?)")
                    .bind(host),
            };
            statement
                .bind(super::unix(at(seconds)))
                .bind(who)
                .bind(what)
                .bind(reason)
                .execute(&sqlite.pool)
                .await
                .expect("insert");
        }
        (store, directory)
    }

    /// The seconds (after `at(0)`) of the lines `query` selects, in order.
    async fn seconds(store: &crate::server::store::Store, query: HistoryQuery) -> Vec<i64> {
        store
            .fleet_history(&query)
            .await
            .expect("history")
            .iter()
            .map(|line| line.at.unix() - at(0).unix())
            .collect()
    }

    #[tokio::test]
    async fn the_fleet_history_merges_every_source_newest_first_filtered_and_bounded() {
        let (store, directory) = filled().await;
        let all = store.fleet_history(&HistoryQuery::default()).await.expect("all");
        assert_eq!(
            all.iter().map(|line| line.at.unix() - at(0).unix()).collect::<Vec<_>>(),
            [40, 35, 30, 25, 20, 15, 12, 10, 5]
        );
        assert_eq!(
            (all[0].source, all[1].source, all[2].source),
            (AuditSource::Host, AuditSource::Admin, AuditSource::App)
        );
        assert_eq!(all[0].reason.as_deref(), Some("disk died"));
        assert_eq!(all[1].host.as_ref().map(|host| host.as_str()), Some("web-01"));
        assert_eq!(all[2].app.as_ref().map(|app| app.as_str()), Some("api"));

        let query = |edit: fn(&mut HistoryQuery)| {
            let mut query = HistoryQuery::default();
            edit(&mut query);
            query
        };
        // Bounded across sources: the newest lines whichever history holds them.
        assert_eq!(seconds(&store, query(|q| q.limit = 3)).await, [40, 35, 30]);
        // An app's lines and the holds (no app), as in `rollout history APP`; no host lines.
        assert_eq!(
            seconds(&store, query(|q| q.app = Some("web".parse().expect("app")))).await,
            [20, 12, 10]
        );
        // A host id's history, its admin lines and the pins and holds scoped to it; no
        // fleet-wide or group app lines.
        assert_eq!(
            seconds(&store, query(|q| q.host = Some("web-01".parse().expect("host")))).await,
            [40, 35, 15, 12]
        );
        assert_eq!(
            seconds(&store, query(|q| q.who = Some("alice".into()))).await,
            [40, 35, 30, 10]
        );
        assert_eq!(
            seconds(&store, query(|q| q.since = Some(at(25)))).await,
            [40, 35, 30, 25]
        );
        // Paging back past the limit: until the last line shown, that second included.
        assert_eq!(
            seconds(
                &store,
                query(|q| {
                    q.until = Some(at(30));
                    q.limit = 3;
                })
            )
            .await,
            [30, 25, 20]
        );
        assert_eq!(
            seconds(
                &store,
                query(|q| {
                    q.who = Some("alice".into());
                    q.host = Some("web-01".parse().expect("host"));
                    q.since = Some(at(36));
                })
            )
            .await,
            [40]
        );
        assert!(
            seconds(&store, query(|q| q.who = Some("nobody".into())))
                .await
                .is_empty()
        );
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[tokio::test]
    async fn a_refused_revocation_writes_no_line() {
        let (store, directory) = scratch("audit-refused").await;
        let name = "nobody".parse().expect("name");
        let change = admin_change(at(1), "alice", "revoked admin token nobody");
        assert!(
            !store
                .revoke_admin_token(&name, at(1), "alice", &change)
                .await
                .expect("revoke")
        );
        assert!(
            store
                .fleet_history(&HistoryQuery::default())
                .await
                .expect("history")
                .is_empty()
        );
        let _ = std::fs::remove_dir_all(&directory);
    }
}
