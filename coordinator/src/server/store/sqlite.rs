//! The SQLite backend: every SQL statement of the store. One file in the data directory
//! in WAL mode with `synchronous=FULL` (a commit is on disk before it is acknowledged), a
//! pool of four connections, foreign keys on, and a 10 s busy timeout so that a writer
//! waits for another instead of failing.
//!
//! Model changes move the model generation on like PostgreSQL's (one coordinator per file
//! never finds it stale, but the rule and its tests are the same for both backends);
//! SQLite sends no notifications.

mod audit;

use std::path::Path;

use drover_protocol::api::{
    BOOTSTRAP_TOKEN_NAME, HistoryEntry, HoldInfo, HostHistoryEntry, Labels, PinInfo, Release, Scope, TokenName,
};
use drover_protocol::report::ReportEvent;
use drover_protocol::{AppName, HostId, HostReport, Timestamp, Version};
use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};

use super::{
    AdminChange, AdminTokenRecord, BOOTSTRAP_CREATOR, DatabaseError, EVENTS_PER_HOST, HistoryRecord, HostChange,
    HostRecord, RENEWALS_KEPT_PER_HOST, RolloutCommit, SeenGeneration, Snapshot, StoreError, StoredManifest,
    StoredRollout, TokenProblem, TokenRecord, check_newer_schema, corrupt, json, known_schema_version, parse,
    recorded_readable_from, to_json, unix,
};

/// Schema migrations, applied in order; the index + 1 is the schema version.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/0001_initial.sql"),
    include_str!("../../../migrations/0002_rollouts.sql"),
    include_str!("../../../migrations/0003_admin_tokens.sql"),
    include_str!("../../../migrations/0004_host_identity.sql"),
    include_str!("../../../migrations/0005_pin_origins.sql"),
    include_str!("../../../migrations/0006_audit.sql"),
    include_str!("../../../migrations/0007_history_host.sql"),
    include_str!("../../../migrations/0008_replicas.sql"),
];

// One migration per schema version both backends declare (`store::SCHEMA_VERSIONS`).
const _: () = assert!(MIGRATIONS.len() == super::SCHEMA_VERSIONS.len());

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> StoreError {
        StoreError::Database(DatabaseError::new(error))
    }
}

/// A SQLite database.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pub(super) pool: SqlitePool,
    pub(super) seen: SeenGeneration,
}

type Transaction = sqlx::Transaction<'static, sqlx::Sqlite>;

/// How long a connection waits for another's lock, and how long opening retries a busy
/// database.
const OPEN_BUSY_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the database said SQLITE_BUSY (primary code 5, any extended code).
fn is_busy(error: &StoreError) -> bool {
    let StoreError::Database(database) = error else {
        return false;
    };
    database
        .0
        .downcast_ref::<sqlx::Error>()
        .and_then(sqlx::Error::as_database_error)
        .and_then(|database| database.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == 5)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it. Coordinators
    /// starting together on a new file can get SQLITE_BUSY without SQLite's busy handler
    /// waiting (switching a new file to WAL needs an exclusive lock, and SQLite refuses at
    /// once where waiting could deadlock), so a busy open is retried from the start for
    /// as long as the busy timeout, [`OPEN_BUSY_BUDGET`].
    pub(super) async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let started = std::time::Instant::now();
        loop {
            match SqliteStore::open_once(path).await {
                Err(error) if is_busy(&error) && started.elapsed() < OPEN_BUSY_BUDGET => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                outcome => return outcome,
            }
        }
    }

    async fn open_once(path: &Path) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(OPEN_BUSY_BUDGET);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        let store = SqliteStore {
            pool,
            seen: SeenGeneration::default(),
        };
        store.migrate(path).await?;
        let generation: i64 = sqlx::query_scalar("SELECT generation FROM model_generation WHERE id = 1")
            .fetch_one(&store.pool)
            .await?;
        store.seen.set(generation);
        Ok(store)
    }

    /// Brings the schema up to [`MIGRATIONS`], all in one transaction that holds the
    /// database's write lock from the version check to the commit: `BEGIN IMMEDIATE`
    /// takes the lock before the first read, so a second coordinator opening the same
    /// file waits (up to the busy timeout) and then finds every migration applied, instead
    /// of reading the same old version and applying them again. A failed migration rolls
    /// all of them back. A schema newer than this binary knows is used as it is when the
    /// `readable_from` its newest migration recorded allows this binary, and refused
    /// otherwise; either way nothing is written (`store::SCHEMA_VERSIONS`). (PostgreSQL
    /// takes `pg_advisory_xact_lock` with a constant key as the first statement of the
    /// same kind of transaction; its DDL is transactional too.)
    async fn migrate(&self, path: &Path) -> Result<(), StoreError> {
        let known = known_schema_version();
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .execute(&mut *transaction)
            .await?;
        let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            .fetch_one(&mut *transaction)
            .await?;
        if current > known {
            // Used as it is, or refused: either way nothing is written (the rollback
            // ends the lock). The column exists: `current` is past every version this
            // binary knows, the one that added it among them.
            let readable_from: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(COALESCE(readable_from, version)) FROM schema_version WHERE version = ?",
            )
            .bind(current)
            .fetch_one(&mut *transaction)
            .await?;
            transaction.rollback().await?;
            return check_newer_schema(&path.display().to_string(), current, readable_from);
        }
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            let version = i64::try_from(index + 1).expect("few migrations");
            if version <= current {
                continue;
            }
            sqlx::raw_sql(migration).execute(&mut *transaction).await?;
            match recorded_readable_from(version) {
                Some(readable_from) => {
                    sqlx::query("INSERT INTO schema_version (version, readable_from) VALUES (?, ?)")
                        .bind(version)
                        .bind(readable_from)
                        .execute(&mut *transaction)
                        .await?
                }
                None => {
                    sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
                        .bind(version)
                        .execute(&mut *transaction)
                        .await?
                }
            };
        }
        transaction.commit().await?;
        Ok(())
    }

    pub(super) async fn load(&self) -> Result<Snapshot, StoreError> {
        self.read_snapshot(None).await
    }

    pub(super) async fn load_since(&self, generation: i64) -> Result<Snapshot, StoreError> {
        self.read_snapshot(Some(generation)).await
    }

    /// Everything, or (`since`) everything but reports and the manifests written at or
    /// before that generation, in one read transaction (one snapshot of the WAL).
    async fn read_snapshot(&self, since: Option<i64>) -> Result<Snapshot, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let mut snapshot = Snapshot {
            generation: sqlx::query_scalar("SELECT generation FROM model_generation WHERE id = 1")
                .fetch_one(&mut *transaction)
                .await?,
            ..Snapshot::default()
        };
        for row in sqlx::query(&format!("SELECT {HOST_COLUMNS} FROM hosts"))
            .fetch_all(&mut *transaction)
            .await?
        {
            snapshot.hosts.push(host_record(&row)?);
        }
        for row in sqlx::query("SELECT name, selector FROM groups")
            .fetch_all(&mut *transaction)
            .await?
        {
            snapshot
                .groups
                .insert(row.get(0), json("selector", row.get::<&str, _>(1))?);
        }
        for row in sqlx::query("SELECT app, scope, version FROM pins")
            .fetch_all(&mut *transaction)
            .await?
        {
            snapshot.pins.insert(
                (
                    parse("app", row.get::<&str, _>(0))?,
                    json("scope", row.get::<&str, _>(1))?,
                ),
                parse("version", row.get::<&str, _>(2))?,
            );
        }
        for row in sqlx::query("SELECT scope FROM holds")
            .fetch_all(&mut *transaction)
            .await?
        {
            snapshot.holds.insert(json("scope", row.get::<&str, _>(0))?);
        }
        for row in sqlx::query("SELECT release FROM releases")
            .fetch_all(&mut *transaction)
            .await?
        {
            snapshot.releases.push(json("release", row.get::<&str, _>(0))?);
        }
        let manifests = sqlx::query(
            "SELECT host, serial, envelope, content_hash, issued_at, expires_at FROM manifests
             WHERE ?1 IS NULL OR generation > ?1",
        )
        .bind(since)
        .fetch_all(&mut *transaction)
        .await?;
        for row in manifests {
            snapshot.manifests.push(StoredManifest {
                host: parse("host id", row.get::<&str, _>(0))?,
                serial: u64::try_from(row.get::<i64, _>(1)).map_err(|error| corrupt("serial")(error.to_string()))?,
                envelope: row.get::<Vec<u8>, _>(2).into(),
                content_hash: row.get(3),
                issued_at: Timestamp::from_unix(row.get(4)),
                expires_at: Timestamp::from_unix(row.get(5)),
            });
        }
        if since.is_none() {
            for row in sqlx::query("SELECT report, received_at FROM reports")
                .fetch_all(&mut *transaction)
                .await?
            {
                snapshot
                    .reports
                    .push((json("report", row.get::<&str, _>(0))?, Timestamp::from_unix(row.get(1))));
            }
        }
        transaction.commit().await?;
        self.seen.set(snapshot.generation);
        Ok(snapshot)
    }

    pub(super) async fn reports_of(&self, hosts: &[HostId]) -> Result<Vec<(HostReport, Timestamp)>, StoreError> {
        let rows = sqlx::query(
            "SELECT report, received_at FROM reports WHERE host IN (SELECT value FROM json_each(?)) ORDER BY host",
        )
        .bind(to_json(&hosts))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| Ok((json("report", row.get::<&str, _>(0))?, Timestamp::from_unix(row.get(1)))))
            .collect()
    }

    pub(super) async fn hosts_of(&self, hosts: &[HostId]) -> Result<Vec<HostRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {HOST_COLUMNS} FROM hosts WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id"
        ))
        .bind(to_json(&hosts))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(host_record).collect()
    }

    /// Moves the model generation on by one, if it is still the one this store last saw:
    /// the first statement of every transaction that changes the fleet model. The new
    /// generation is noted (`commit_model`) only once the transaction commits.
    async fn next_generation(&self, transaction: &mut Transaction) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "UPDATE model_generation SET generation = generation + 1 WHERE id = 1 AND generation = ? RETURNING generation",
        )
        .bind(self.seen.get())
        .fetch_optional(&mut **transaction)
        .await?
        .ok_or(StoreError::Stale)
    }

    /// Stores `manifests` (written at `generation`) in the same transaction as the model
    /// change that produced them, and commits: a change and its manifests are durable
    /// together or not at all.
    async fn commit_model(
        &self,
        mut transaction: Transaction,
        generation: i64,
        manifests: &[StoredManifest],
    ) -> Result<(), StoreError> {
        for manifest in manifests {
            save_manifest(&mut transaction, manifest, generation).await?;
        }
        transaction.commit().await?;
        self.seen.set(generation);
        Ok(())
    }

    pub(super) async fn insert_token(
        &self,
        hash: &str,
        labels: &Labels,
        replace: Option<&HostId>,
        created_by: &str,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (hash, labels, replace, replace_host, created_by, expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(hash)
        .bind(to_json(labels))
        .bind(replace.is_some())
        .bind(replace.map(HostId::as_str))
        .bind(created_by)
        .bind(unix(expires_at))
        .bind(unix(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn check_token(
        &self,
        hash: &str,
        now: Timestamp,
    ) -> Result<Result<TokenRecord, TokenProblem>, StoreError> {
        let row = sqlx::query(
            "SELECT labels, replace, expires_at, used_at, replace_host, created_by FROM tokens WHERE hash = ?",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Err(TokenProblem::Unknown));
        };
        if row.get::<Option<i64>, _>(3).is_some() {
            return Ok(Err(TokenProblem::Used));
        }
        if row.get::<i64, _>(2) <= unix(now) {
            return Ok(Err(TokenProblem::Expired));
        }
        let replace: Option<HostId> = row
            .get::<Option<&str>, _>(4)
            .map(|host| parse("replace host", host))
            .transpose()?;
        Ok(Ok(TokenRecord {
            labels: json("labels", row.get::<&str, _>(0))?,
            replace_any: row.get::<bool, _>(1) && replace.is_none(),
            replace,
            created_by: row.get(5),
        }))
    }

    pub(super) async fn join_host(
        &self,
        token_hash: &str,
        host: &HostRecord,
        manifest: &StoredManifest,
        history: (HostChange, &HostHistoryEntry),
        now: Timestamp,
    ) -> Result<Result<(), TokenProblem>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let generation = self.next_generation(&mut transaction).await?;
        let used = sqlx::query(
            "UPDATE tokens SET used_at = ?, used_by = ? WHERE hash = ? AND used_at IS NULL AND expires_at > ?",
        )
        .bind(unix(now))
        .bind(host.id.as_str())
        .bind(token_hash)
        .bind(unix(now))
        .execute(&mut *transaction)
        .await?;
        if used.rows_affected() != 1 {
            return Ok(Err(TokenProblem::Used));
        }
        sqlx::query(
            "INSERT INTO hosts (id, labels, cert_sha256, joined_at, key_sha256, cert_not_after) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET labels = excluded.labels, cert_sha256 = excluded.cert_sha256,
               joined_at = excluded.joined_at, key_sha256 = excluded.key_sha256, cert_not_after = excluded.cert_not_after",
        )
        .bind(host.id.as_str())
        .bind(to_json(&host.labels))
        .bind(host.cert_sha256.as_deref())
        .bind(unix(host.joined_at))
        .bind(host.key_sha256.as_deref())
        .bind(host.cert_not_after.map(unix))
        .execute(&mut *transaction)
        .await?;
        insert_host_history(&mut transaction, &host.id, history.0, history.1, None).await?;
        sqlx::query("DELETE FROM reports WHERE host = ?")
            .bind(host.id.as_str())
            .execute(&mut *transaction)
            .await?;
        self.commit_model(transaction, generation, std::slice::from_ref(manifest))
            .await?;
        Ok(Ok(()))
    }

    pub(super) async fn remove_host(
        &self,
        host: &HostId,
        history: &HostHistoryEntry,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        let generation = self.next_generation(&mut transaction).await?;
        sqlx::query("UPDATE hosts SET cert_sha256 = NULL, key_sha256 = NULL, cert_not_after = NULL WHERE id = ?")
            .bind(host.as_str())
            .execute(&mut *transaction)
            .await?;
        insert_host_history(&mut transaction, host, HostChange::Removed, history, reason).await?;
        self.commit_model(transaction, generation, &[]).await
    }

    pub(super) async fn renew_host(
        &self,
        host: &HostId,
        key_sha256: &str,
        cert_sha256: &str,
        not_after: Timestamp,
        history: &HostHistoryEntry,
    ) -> Result<bool, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE hosts SET cert_sha256 = ?, key_sha256 = ?, cert_not_after = ?
             WHERE id = ? AND cert_sha256 IS NOT NULL AND (key_sha256 = ? OR (key_sha256 IS NULL AND cert_sha256 = ?))",
        )
        .bind(cert_sha256)
        .bind(key_sha256)
        .bind(unix(not_after))
        .bind(host.as_str())
        .bind(key_sha256)
        .bind(history.old_certificate.as_deref())
        .execute(&mut *transaction)
        .await?;
        if updated.rows_affected() != 1 {
            return Ok(false);
        }
        insert_host_history(&mut transaction, host, HostChange::Renewed, history, None).await?;
        transaction.commit().await?;
        Ok(true)
    }

    pub(super) async fn record_host_key(
        &self,
        host: &HostId,
        cert_sha256: &str,
        key_sha256: &str,
        not_after: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE hosts SET key_sha256 = ?, cert_not_after = ? WHERE id = ? AND cert_sha256 = ? AND key_sha256 IS NULL",
        )
        .bind(key_sha256)
        .bind(unix(not_after))
        .bind(host.as_str())
        .bind(cert_sha256)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn host_history(&self, host: &HostId, limit: u32) -> Result<Vec<HostHistoryEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, who, what, old_cert, new_cert FROM (
               SELECT id, at, who, what, old_cert, new_cert FROM host_history WHERE host = ? ORDER BY id DESC LIMIT ?
             ) ORDER BY id",
        )
        .bind(host.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| HostHistoryEntry {
                at: Timestamp::from_unix(row.get(0)),
                who: row.get(1),
                what: row.get(2),
                old_certificate: row.get(3),
                new_certificate: row.get(4),
            })
            .collect())
    }

    pub(super) async fn set_labels(
        &self,
        host: &HostId,
        labels: &Labels,
        manifests: &[StoredManifest],
        change: &AdminChange,
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        let generation = self.next_generation(&mut transaction).await?;
        sqlx::query("UPDATE hosts SET labels = ? WHERE id = ?")
            .bind(to_json(labels))
            .bind(host.as_str())
            .execute(&mut *transaction)
            .await?;
        audit::insert_admin_change(&mut transaction, change).await?;
        self.commit_model(transaction, generation, manifests).await
    }

    pub(super) async fn put_group(
        &self,
        name: &str,
        selector: &Labels,
        manifests: &[StoredManifest],
        change: &AdminChange,
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        let generation = self.next_generation(&mut transaction).await?;
        sqlx::query("INSERT INTO groups (name, selector) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET selector = excluded.selector")
            .bind(name)
            .bind(to_json(selector))
            .execute(&mut *transaction)
            .await?;
        audit::insert_admin_change(&mut transaction, change).await?;
        self.commit_model(transaction, generation, manifests).await
    }

    pub(super) async fn delete_group(&self, name: &str, change: &AdminChange) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        let generation = self.next_generation(&mut transaction).await?;
        sqlx::query("DELETE FROM groups WHERE name = ?")
            .bind(name)
            .execute(&mut *transaction)
            .await?;
        audit::insert_admin_change(&mut transaction, change).await?;
        self.commit_model(transaction, generation, &[]).await
    }

    pub(super) async fn insert_release(&self, release: &Release) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        let generation = self.next_generation(&mut transaction).await?;
        sqlx::query("INSERT INTO releases (app, version, release, created_at) VALUES (?, ?, ?, ?)")
            .bind(release.app.as_str())
            .bind(release.version.as_str())
            .bind(to_json(release))
            .bind(unix(release.created_at))
            .execute(&mut *transaction)
            .await?;
        self.commit_model(transaction, generation, &[]).await
    }

    pub(super) async fn change_pin(
        &self,
        app: &AppName,
        scope: &Scope,
        version: Option<&Version>,
        history: &[HistoryRecord],
        manifests: &[StoredManifest],
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        let generation = self.next_generation(&mut transaction).await?;
        insert_history(&mut transaction, history).await?;
        write_pin(&mut transaction, app, scope, version, history.first()).await?;
        self.commit_model(transaction, generation, manifests).await
    }

    pub(super) async fn change_hold(
        &self,
        scope: &Scope,
        held: bool,
        history: &[HistoryRecord],
        manifests: &[StoredManifest],
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        let generation = self.next_generation(&mut transaction).await?;
        insert_history(&mut transaction, history).await?;
        if held {
            let origin = history.first();
            sqlx::query(
                "INSERT INTO holds (scope, set_by, set_at, reason) VALUES (?, ?, ?, ?) ON CONFLICT (scope) DO NOTHING",
            )
            .bind(to_json(scope))
            .bind(origin.map(|line| line.who.as_str()))
            .bind(origin.map(|line| unix(line.at)))
            .bind(origin.and_then(|line| line.reason.as_deref()))
            .execute(&mut *transaction)
            .await?;
        } else {
            sqlx::query("DELETE FROM holds WHERE scope = ?")
                .bind(to_json(scope))
                .execute(&mut *transaction)
                .await?;
        }
        self.commit_model(transaction, generation, manifests).await
    }

    pub(super) async fn save_manifests(&self, manifests: &[StoredManifest]) -> Result<(), StoreError> {
        if manifests.is_empty() {
            // Nothing changes: no generation to move on.
            return Ok(());
        }
        let mut transaction = self.pool.begin().await?;
        let generation = self.next_generation(&mut transaction).await?;
        self.commit_model(transaction, generation, manifests).await
    }

    pub(super) async fn save_reports(&self, reports: &[(HostReport, Timestamp)]) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        for (report, received_at) in reports {
            sqlx::query(
                "INSERT INTO reports (host, report, received_at) VALUES (?, ?, ?)
                 ON CONFLICT (host) DO UPDATE SET report = excluded.report, received_at = excluded.received_at",
            )
            .bind(report.host.as_str())
            .bind(to_json(report))
            .bind(unix(*received_at))
            .execute(&mut *transaction)
            .await?;
            for event in &report.events {
                sqlx::query("INSERT INTO events (host, at, app, message) VALUES (?, ?, ?, ?)")
                    .bind(report.host.as_str())
                    .bind(unix(event.at))
                    .bind(event.app.as_ref().map(AppName::as_str))
                    .bind(&event.message)
                    .execute(&mut *transaction)
                    .await?;
            }
            if !report.events.is_empty() {
                sqlx::query(
                    "DELETE FROM events WHERE host = ?1 AND id <= (SELECT id FROM events WHERE host = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                )
                .bind(report.host.as_str())
                .bind(EVENTS_PER_HOST)
                .execute(&mut *transaction)
                .await?;
            }
        }
        transaction.commit().await?;
        Ok(())
    }

    pub(super) async fn events(&self, host: &HostId) -> Result<Vec<ReportEvent>, StoreError> {
        let rows = sqlx::query("SELECT at, app, message FROM events WHERE host = ? ORDER BY id")
            .bind(host.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|row| {
                Ok(ReportEvent {
                    at: Timestamp::from_unix(row.get(0)),
                    app: row.get::<Option<&str>, _>(1).map(|app| parse("app", app)).transpose()?,
                    message: row.get(2),
                })
            })
            .collect()
    }

    pub(super) async fn bootstrap_admin_token(&self, hash: &str, now: Timestamp) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        let known: Option<i64> = sqlx::query_scalar("SELECT id FROM admin_tokens WHERE hash = ?")
            .bind(hash)
            .fetch_optional(&mut *transaction)
            .await?;
        if known.is_some() {
            return Ok(());
        }
        sqlx::query("UPDATE admin_tokens SET revoked_at = ?, revoked_by = ? WHERE name = ? AND revoked_at IS NULL")
            .bind(unix(now))
            .bind(BOOTSTRAP_CREATOR)
            .bind(BOOTSTRAP_TOKEN_NAME)
            .execute(&mut *transaction)
            .await?;
        sqlx::query("INSERT INTO admin_tokens (name, hash, created_at, created_by) VALUES (?, ?, ?, ?)")
            .bind(BOOTSTRAP_TOKEN_NAME)
            .bind(hash)
            .bind(unix(now))
            .bind(BOOTSTRAP_CREATOR)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    pub(super) async fn admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, hash, created_at, created_by, expires_at, revoked_at, revoked_by, last_used_at
             FROM admin_tokens ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let at = |index: usize| row.get::<Option<i64>, _>(index).map(Timestamp::from_unix);
                Ok(AdminTokenRecord {
                    name: parse("admin token name", row.get::<&str, _>(0))?,
                    hash: row.get(1),
                    created_at: Timestamp::from_unix(row.get(2)),
                    created_by: row.get(3),
                    expires_at: at(4),
                    revoked_at: at(5),
                    revoked_by: row.get(6),
                    last_used_at: at(7),
                })
            })
            .collect()
    }

    pub(super) async fn insert_admin_token(
        &self,
        token: &AdminTokenRecord,
        change: &AdminChange,
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query(
            "UPDATE admin_tokens SET revoked_at = ?, revoked_by = ?
             WHERE name = ? AND revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ?",
        )
        .bind(unix(token.created_at))
        .bind(&token.created_by)
        .bind(token.name.as_str())
        .bind(unix(token.created_at))
        .execute(&mut *transaction)
        .await?;
        sqlx::query("INSERT INTO admin_tokens (name, hash, created_at, created_by, expires_at) VALUES (?, ?, ?, ?, ?)")
            .bind(token.name.as_str())
            .bind(&token.hash)
            .bind(unix(token.created_at))
            .bind(&token.created_by)
            .bind(token.expires_at.map(unix))
            .execute(&mut *transaction)
            .await?;
        audit::insert_admin_change(&mut transaction, change).await?;
        transaction.commit().await?;
        Ok(())
    }

    pub(super) async fn revoke_admin_token(
        &self,
        name: &TokenName,
        at: Timestamp,
        by: &str,
        change: &AdminChange,
    ) -> Result<bool, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let done =
            sqlx::query("UPDATE admin_tokens SET revoked_at = ?, revoked_by = ? WHERE name = ? AND revoked_at IS NULL")
                .bind(unix(at))
                .bind(by)
                .bind(name.as_str())
                .execute(&mut *transaction)
                .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        audit::insert_admin_change(&mut transaction, change).await?;
        transaction.commit().await?;
        Ok(true)
    }

    pub(super) async fn touch_admin_token(&self, hash: &str, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE admin_tokens SET last_used_at = ? WHERE hash = ?")
            .bind(unix(at))
            .bind(hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn active_rollouts(&self) -> Result<Vec<StoredRollout>, StoreError> {
        let rows = sqlx::query(
            "SELECT state, created_by, created_at, finished_at FROM rollouts WHERE finished_at IS NULL ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_rollout).collect()
    }

    pub(super) async fn latest_rollout(&self, app: &AppName) -> Result<Option<StoredRollout>, StoreError> {
        let row = sqlx::query(
            "SELECT state, created_by, created_at, finished_at FROM rollouts WHERE app = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
        )
        .bind(app.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(stored_rollout).transpose()
    }

    pub(super) async fn rollout_count(&self, app: &AppName) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rollouts WHERE app = ?")
            .bind(app.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    pub(super) async fn commit_rollout(&self, commit: &RolloutCommit<'_>) -> Result<(), StoreError> {
        let app = &commit.rollout.spec().app;
        let mut transaction = self.pool.begin().await?;
        let generation = self.next_generation(&mut transaction).await?;
        let state = to_json(commit.rollout);
        match commit.created {
            Some((created_by, created_at)) => {
                sqlx::query(
                    "INSERT INTO rollouts (id, app, state, created_by, created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(commit.rollout.id())
                .bind(app.as_str())
                .bind(&state)
                .bind(created_by)
                .bind(unix(created_at))
                .bind(commit.finished_at.map(unix))
                .execute(&mut *transaction)
                .await?;
            }
            None => {
                sqlx::query("UPDATE rollouts SET state = ?, finished_at = ? WHERE id = ?")
                    .bind(&state)
                    .bind(commit.finished_at.map(unix))
                    .bind(commit.rollout.id())
                    .execute(&mut *transaction)
                    .await?;
            }
        }
        let (who, at, reason) = commit.pin_origin;
        let origin = HistoryRecord {
            app: Some(app.clone()),
            host: None,
            rollout: Some(commit.rollout.id().to_owned()),
            at,
            who: who.to_owned(),
            what: String::new(),
            reason: reason.map(str::to_owned),
        };
        for (scope, version) in commit.pins {
            write_pin(&mut transaction, app, scope, version.as_ref(), Some(&origin)).await?;
        }
        insert_history(&mut transaction, commit.history).await?;
        self.commit_model(transaction, generation, commit.manifests).await
    }

    pub(super) async fn pins(&self, app: Option<&AppName>) -> Result<Vec<PinInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT app, scope, version, set_by, set_at, rollout, reason FROM pins WHERE ?1 IS NULL OR app = ?1",
        )
        .bind(app.map(AppName::as_str))
        .fetch_all(&self.pool)
        .await?;
        let mut pins = rows
            .into_iter()
            .map(|row| {
                Ok(PinInfo {
                    app: parse("app", row.get::<&str, _>(0))?,
                    scope: json("scope", row.get::<&str, _>(1))?,
                    version: parse("version", row.get::<&str, _>(2))?,
                    set_by: row.get(3),
                    set_at: row.get::<Option<i64>, _>(4).map(Timestamp::from_unix),
                    rollout: row.get(5),
                    reason: row.get(6),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        pins.sort_by(|a, b| (&a.app, &a.scope).cmp(&(&b.app, &b.scope)));
        Ok(pins)
    }

    pub(super) async fn holds(&self) -> Result<Vec<HoldInfo>, StoreError> {
        let rows = sqlx::query("SELECT scope, set_by, set_at, reason FROM holds")
            .fetch_all(&self.pool)
            .await?;
        let mut holds = rows
            .into_iter()
            .map(|row| {
                Ok(HoldInfo {
                    scope: json("scope", row.get::<&str, _>(0))?,
                    set_by: row.get(1),
                    set_at: row.get::<Option<i64>, _>(2).map(Timestamp::from_unix),
                    reason: row.get(3),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        holds.sort_by(|a, b| a.scope.cmp(&b.scope));
        Ok(holds)
    }

    pub(super) async fn history(&self, app: &AppName, limit: u32) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, who, rollout, what, reason, app FROM (
               SELECT id, at, who, rollout, what, reason, app FROM rollout_history
               WHERE app = ? OR app IS NULL ORDER BY id DESC LIMIT ?
             ) ORDER BY id",
        )
        .bind(app.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(HistoryEntry {
                    at: Timestamp::from_unix(row.get(0)),
                    app: row.get::<Option<&str>, _>(5).map(|app| parse("app", app)).transpose()?,
                    who: row.get(1),
                    rollout: row.get(2),
                    what: row.get(3),
                    reason: row.get(4),
                })
            })
            .collect()
    }
}

fn stored_rollout(row: &SqliteRow) -> Result<StoredRollout, StoreError> {
    Ok(StoredRollout {
        rollout: json("rollout", row.get::<&str, _>(0))?,
        created_by: row.get(1),
        created_at: Timestamp::from_unix(row.get(2)),
        finished_at: row.get::<Option<i64>, _>(3).map(Timestamp::from_unix),
    })
}

/// Sets (`Some`) or clears a pin; `origin` is the history line of the change, whose who,
/// when, rollout and reason the pin keeps for `drover pins`.
async fn write_pin(
    transaction: &mut Transaction,
    app: &AppName,
    scope: &Scope,
    version: Option<&Version>,
    origin: Option<&HistoryRecord>,
) -> Result<(), StoreError> {
    match version {
        Some(version) => {
            sqlx::query(
                "INSERT INTO pins (app, scope, version, set_by, set_at, rollout, reason) VALUES (?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (app, scope) DO UPDATE SET version = excluded.version, set_by = excluded.set_by,
                 set_at = excluded.set_at, rollout = excluded.rollout, reason = excluded.reason",
            )
            .bind(app.as_str())
            .bind(to_json(scope))
            .bind(version.as_str())
            .bind(origin.map(|line| line.who.as_str()))
            .bind(origin.map(|line| unix(line.at)))
            .bind(origin.and_then(|line| line.rollout.as_deref()))
            .bind(origin.and_then(|line| line.reason.as_deref()))
            .execute(&mut **transaction)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM pins WHERE app = ? AND scope = ?")
                .bind(app.as_str())
                .bind(to_json(scope))
                .execute(&mut **transaction)
                .await?;
        }
    }
    Ok(())
}

async fn insert_history(transaction: &mut Transaction, history: &[HistoryRecord]) -> Result<(), StoreError> {
    for line in history {
        sqlx::query(
            "INSERT INTO rollout_history (app, host, rollout, at, who, what, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(line.app.as_ref().map(AppName::as_str))
        .bind(line.host.as_ref().map(HostId::as_str))
        .bind(line.rollout.as_deref())
        .bind(unix(line.at))
        .bind(&line.who)
        .bind(&line.what)
        .bind(line.reason.as_deref())
        .execute(&mut **transaction)
        .await?;
    }
    Ok(())
}

async fn insert_host_history(
    transaction: &mut Transaction,
    host: &HostId,
    kind: HostChange,
    line: &HostHistoryEntry,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO host_history (host, kind, at, who, what, old_cert, new_cert, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(host.as_str())
    .bind(kind.as_str())
    .bind(unix(line.at))
    .bind(&line.who)
    .bind(&line.what)
    .bind(line.old_certificate.as_deref())
    .bind(line.new_certificate.as_deref())
    .bind(reason)
    .execute(&mut **transaction)
    .await?;
    if kind == HostChange::Renewed {
        sqlx::query(
            "DELETE FROM host_history WHERE host = ? AND kind = 'renewed' AND id NOT IN (
               SELECT id FROM host_history WHERE host = ? AND kind = 'renewed' ORDER BY id DESC LIMIT ?)",
        )
        .bind(host.as_str())
        .bind(host.as_str())
        .bind(RENEWALS_KEPT_PER_HOST)
        .execute(&mut **transaction)
        .await?;
    }
    Ok(())
}

/// Stores a host's manifest, written at model `generation`. The serial guard: a serial
/// not above the stored one (a writer that rendered from an old model) writes nothing and
/// fails the whole transaction with [`StoreError::Stale`]: a host's serial never goes
/// down or repeats.
async fn save_manifest(
    transaction: &mut Transaction,
    manifest: &StoredManifest,
    generation: i64,
) -> Result<(), StoreError> {
    let written = sqlx::query(
        "INSERT INTO manifests (host, serial, envelope, content_hash, issued_at, expires_at, generation)
         VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (host) DO UPDATE SET serial = excluded.serial, envelope = excluded.envelope,
           content_hash = excluded.content_hash, issued_at = excluded.issued_at, expires_at = excluded.expires_at,
           generation = excluded.generation
         WHERE manifests.serial < excluded.serial",
    )
    .bind(manifest.host.as_str())
    .bind(i64::try_from(manifest.serial).unwrap_or(i64::MAX))
    .bind(manifest.envelope.as_ref())
    .bind(&manifest.content_hash)
    .bind(unix(manifest.issued_at))
    .bind(unix(manifest.expires_at))
    .bind(generation)
    .execute(&mut **transaction)
    .await?;
    if written.rows_affected() == 0 {
        return Err(StoreError::Stale);
    }
    Ok(())
}

/// The columns [`host_record`] reads, in its order.
const HOST_COLUMNS: &str = "id, labels, cert_sha256, joined_at, key_sha256, cert_not_after";

fn host_record(row: &SqliteRow) -> Result<HostRecord, StoreError> {
    Ok(HostRecord {
        id: parse("host id", row.get::<&str, _>(0))?,
        labels: json("labels", row.get::<&str, _>(1))?,
        cert_sha256: row.get(2),
        key_sha256: row.get(4),
        cert_not_after: row.get::<Option<i64>, _>(5).map(Timestamp::from_unix),
        joined_at: Timestamp::from_unix(row.get(3)),
    })
}

#[cfg(test)]
mod tests;
