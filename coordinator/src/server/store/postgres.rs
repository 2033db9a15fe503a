//! The PostgreSQL backend (`drover serve --database postgres://...`): the same statements
//! and semantics as the SQLite backend, for several coordinators on one database (issue
//! 16). A pool of [`POOL_SIZE`] connections; waiting for one, and connecting, gives up
//! after [`ACQUIRE_TIMEOUT`]; every statement is bounded by a server-side
//! `statement_timeout` of [`STATEMENT_TIMEOUT`], so a hung database fails a request
//! instead of hanging it forever.
//!
//! Besides what SQLite does, each transaction that changes shared state tells the other
//! replicas, in the same transaction (PostgreSQL delivers a notification only when its
//! transaction commits): `pg_notify('drover_changes', payload)` with the payloads of
//! [`super::changes::Change`]. Reads that must be consistent (`load`) run in one
//! REPEATABLE READ read-only transaction.

mod audit;

use std::time::Duration;

use drover_protocol::api::{
    BOOTSTRAP_TOKEN_NAME, HistoryEntry, HoldInfo, HostHistoryEntry, Labels, PinInfo, Release, Scope, TokenName,
};
use drover_protocol::report::ReportEvent;
use drover_protocol::{AppName, HostId, HostReport, Timestamp, Version};
use sqlx::Connection as _;
use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};

use super::changes::{CHANNEL, Change};
use super::{
    AdminChange, AdminTokenRecord, BOOTSTRAP_CREATOR, DatabaseError, EVENTS_PER_HOST, HistoryRecord, HostChange,
    HostRecord, RENEWALS_KEPT_PER_HOST, RolloutCommit, SeenGeneration, Snapshot, StoreError, StoredManifest,
    StoredRollout, TokenProblem, TokenRecord, check_newer_schema, corrupt, json, known_schema_version, parse,
    recorded_readable_from, redact_password, to_json, unix,
};

/// Schema migrations in PostgreSQL's dialect, applied in order; the index + 1 is the
/// schema version, the same as SQLite's list (a test checks that both make the same
/// tables and columns).
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/postgres/0001_initial.sql"),
    include_str!("../../../migrations/postgres/0002_rollouts.sql"),
    include_str!("../../../migrations/postgres/0003_admin_tokens.sql"),
    include_str!("../../../migrations/postgres/0004_host_identity.sql"),
    include_str!("../../../migrations/postgres/0005_pin_origins.sql"),
    include_str!("../../../migrations/postgres/0006_audit.sql"),
    include_str!("../../../migrations/postgres/0007_history_host.sql"),
    include_str!("../../../migrations/postgres/0008_replicas.sql"),
];

// One migration per schema version both backends declare (`store::SCHEMA_VERSIONS`).
const _: () = assert!(MIGRATIONS.len() == super::SCHEMA_VERSIONS.len());

/// The key of the transaction-scoped advisory lock that migrations run under
/// (`pg_advisory_xact_lock`): "drover" in ASCII, then 0x0001 for "migrations". Other
/// advisory locks of drover (the leader lease) must use other keys.
pub const MIGRATION_LOCK_KEY: i64 = 0x6472_6f76_6572_0001;

/// Connections per coordinator.
pub const POOL_SIZE: u32 = 10;

/// How long a request waits for a free connection (or for a new one to connect).
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server lets one statement run before cancelling it.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pub(super) pool: PgPool,
    pub(super) seen: SeenGeneration,
}

type Transaction = sqlx::Transaction<'static, sqlx::Postgres>;

impl PostgresStore {
    /// Connects to the database at `url` (which must exist) and migrates it.
    pub(super) async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let options = options
            .application_name("drover")
            .options([("statement_timeout", format!("{}", STATEMENT_TIMEOUT.as_millis()))]);
        // One connection first, on its own: when the server cannot be reached or refuses
        // the login, the pool would only say that it timed out; this says why (refused,
        // no such host, wrong password, no such database).
        let first = tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| {
                StoreError::Database(DatabaseError::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", ACQUIRE_TIMEOUT.as_secs()),
                )))
            })??;
        let _ = first.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        let store = PostgresStore {
            pool,
            seen: SeenGeneration::default(),
        };
        store.migrate(&redact_password(url)).await?;
        let generation: i64 = sqlx::query_scalar("SELECT generation FROM model_generation WHERE id = 1")
            .fetch_one(&store.pool)
            .await?;
        store.seen.set(generation);
        Ok(store)
    }

    /// Brings the schema up to [`MIGRATIONS`] in one transaction whose first statement
    /// takes the advisory lock [`MIGRATION_LOCK_KEY`] (released at commit or rollback):
    /// a second coordinator starting at once waits, then finds every migration applied.
    /// PostgreSQL's DDL is transactional, so a failed migration rolls all of them back. A
    /// schema newer than this binary knows is used as it is when the `readable_from` its
    /// newest migration recorded allows this binary (a replica not yet upgraded during a
    /// rolling upgrade), and refused otherwise; either way nothing is written
    /// (`store::SCHEMA_VERSIONS`).
    async fn migrate(&self, database: &str) -> Result<(), StoreError> {
        let known = known_schema_version();
        let mut transaction = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK_KEY)
            .execute(&mut *transaction)
            .await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
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
                "SELECT MAX(COALESCE(readable_from, version)) FROM schema_version WHERE version = $1",
            )
            .bind(current)
            .fetch_one(&mut *transaction)
            .await?;
            transaction.rollback().await?;
            return check_newer_schema(database, current, readable_from);
        }
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            let version = i64::try_from(index + 1).expect("few migrations");
            if version <= current {
                continue;
            }
            sqlx::raw_sql(migration).execute(&mut *transaction).await?;
            match recorded_readable_from(version) {
                Some(readable_from) => {
                    sqlx::query("INSERT INTO schema_version (version, readable_from) VALUES ($1, $2)")
                        .bind(version)
                        .bind(readable_from)
                        .execute(&mut *transaction)
                        .await?
                }
                None => {
                    sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
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
    /// before that generation, in one REPEATABLE READ read-only transaction: one snapshot,
    /// so the generation read matches every row read.
    async fn read_snapshot(&self, since: Option<i64>) -> Result<Snapshot, StoreError> {
        let mut transaction = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let mut snapshot = Snapshot {
            generation: sqlx::query_scalar("SELECT generation FROM model_generation WHERE id = 1")
                .fetch_one(&mut *transaction)
                .await?,
            ..Snapshot::default()
        };
        for row in sqlx::query(&format!("SELECT {HOST_COLUMNS} FROM hosts ORDER BY id"))
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
        for row in sqlx::query("SELECT release FROM releases ORDER BY created_at, app, version")
            .fetch_all(&mut *transaction)
            .await?
        {
            snapshot.releases.push(json("release", row.get::<&str, _>(0))?);
        }
        let manifests = sqlx::query(
            "SELECT host, serial, envelope, content_hash, issued_at, expires_at FROM manifests
             WHERE $1::BIGINT IS NULL OR generation > $1 ORDER BY host",
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
            for row in sqlx::query("SELECT report, received_at FROM reports ORDER BY host")
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
        let rows = sqlx::query("SELECT report, received_at FROM reports WHERE host = ANY($1) ORDER BY host")
            .bind(host_ids(hosts))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|row| Ok((json("report", row.get::<&str, _>(0))?, Timestamp::from_unix(row.get(1)))))
            .collect()
    }

    pub(super) async fn hosts_of(&self, hosts: &[HostId]) -> Result<Vec<HostRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {HOST_COLUMNS} FROM hosts WHERE id = ANY($1) ORDER BY id"
        ))
        .bind(host_ids(hosts))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(host_record).collect()
    }

    /// Moves the model generation on by one, if it is still the one this store last saw:
    /// the first statement of every transaction that changes the fleet model. Another
    /// replica's concurrent change holds the row until it commits; this one then finds
    /// the new generation and fails with [`StoreError::Stale`]. The new generation is
    /// noted (`commit_model`) only once the transaction commits.
    async fn next_generation(&self, transaction: &mut Transaction) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "UPDATE model_generation SET generation = generation + 1 WHERE id = 1 AND generation = $1 RETURNING generation",
        )
        .bind(self.seen.get())
        .fetch_optional(&mut **transaction)
        .await?
        .ok_or(StoreError::Stale)
    }

    /// Stores `manifests` (written at `generation`) in the same transaction as the model
    /// change that produced them, tells the other replicas, and commits: a change, its
    /// manifests and its notification are durable together or not at all.
    async fn commit_model(
        &self,
        mut transaction: Transaction,
        generation: i64,
        manifests: &[StoredManifest],
    ) -> Result<(), StoreError> {
        save_manifests_in(&mut transaction, manifests, generation).await?;
        notify(&mut transaction, &Change::Model { generation }).await?;
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
            "INSERT INTO tokens (hash, labels, replace, replace_host, created_by, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
            "SELECT labels, replace, expires_at, used_at, replace_host, created_by FROM tokens WHERE hash = $1",
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
            "UPDATE tokens SET used_at = $1, used_by = $2 WHERE hash = $3 AND used_at IS NULL AND expires_at > $4",
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
            "INSERT INTO hosts (id, labels, cert_sha256, joined_at, key_sha256, cert_not_after) VALUES ($1, $2, $3, $4, $5, $6)
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
        sqlx::query("DELETE FROM reports WHERE host = $1")
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
        sqlx::query("UPDATE hosts SET cert_sha256 = NULL, key_sha256 = NULL, cert_not_after = NULL WHERE id = $1")
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
            "UPDATE hosts SET cert_sha256 = $1, key_sha256 = $2, cert_not_after = $3
             WHERE id = $4 AND cert_sha256 IS NOT NULL AND (key_sha256 = $5 OR (key_sha256 IS NULL AND cert_sha256 = $6))",
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
        notify(&mut transaction, &Change::Hosts(vec![host.clone()])).await?;
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
        let mut transaction = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE hosts SET key_sha256 = $1, cert_not_after = $2 WHERE id = $3 AND cert_sha256 = $4 AND key_sha256 IS NULL",
        )
        .bind(key_sha256)
        .bind(unix(not_after))
        .bind(host.as_str())
        .bind(cert_sha256)
        .execute(&mut *transaction)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(());
        }
        notify(&mut transaction, &Change::Hosts(vec![host.clone()])).await?;
        transaction.commit().await?;
        Ok(())
    }

    pub(super) async fn host_history(&self, host: &HostId, limit: u32) -> Result<Vec<HostHistoryEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, who, what, old_cert, new_cert FROM (
               SELECT id, at, who, what, old_cert, new_cert FROM host_history WHERE host = $1 ORDER BY id DESC LIMIT $2
             ) AS newest ORDER BY id",
        )
        .bind(host.as_str())
        .bind(i64::from(limit))
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
        sqlx::query("UPDATE hosts SET labels = $1 WHERE id = $2")
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
        sqlx::query("INSERT INTO groups (name, selector) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET selector = excluded.selector")
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
        sqlx::query("DELETE FROM groups WHERE name = $1")
            .bind(name)
            .execute(&mut *transaction)
            .await?;
        audit::insert_admin_change(&mut transaction, change).await?;
        self.commit_model(transaction, generation, &[]).await
    }

    pub(super) async fn insert_release(&self, release: &Release) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        let generation = self.next_generation(&mut transaction).await?;
        sqlx::query("INSERT INTO releases (app, version, release, created_at) VALUES ($1, $2, $3, $4)")
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
                "INSERT INTO holds (scope, set_by, set_at, reason) VALUES ($1, $2, $3, $4) ON CONFLICT (scope) DO NOTHING",
            )
            .bind(to_json(scope))
            .bind(origin.map(|line| line.who.as_str()))
            .bind(origin.map(|line| unix(line.at)))
            .bind(origin.and_then(|line| line.reason.as_deref()))
            .execute(&mut *transaction)
            .await?;
        } else {
            sqlx::query("DELETE FROM holds WHERE scope = $1")
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
        let hosts: std::collections::HashSet<&str> = reports.iter().map(|(report, _)| report.host.as_str()).collect();
        if hosts.len() == reports.len() {
            for batch in reports.chunks(REPORTS_PER_STATEMENT) {
                save_report_batch(&mut transaction, batch).await?;
            }
        } else {
            // One statement cannot change a row twice: a host reported twice in one batch
            // goes one by one, in order.
            for report in reports {
                save_report_batch(&mut transaction, std::slice::from_ref(report)).await?;
            }
        }
        let hosts = reports.iter().map(|(report, _)| report.host.clone()).collect();
        notify(&mut transaction, &Change::Reports(hosts)).await?;
        transaction.commit().await?;
        Ok(())
    }

    pub(super) async fn events(&self, host: &HostId) -> Result<Vec<ReportEvent>, StoreError> {
        let rows = sqlx::query("SELECT at, app, message FROM events WHERE host = $1 ORDER BY id")
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
        let known: Option<i64> = sqlx::query_scalar("SELECT id FROM admin_tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&mut *transaction)
            .await?;
        if known.is_some() {
            return Ok(());
        }
        sqlx::query("UPDATE admin_tokens SET revoked_at = $1, revoked_by = $2 WHERE name = $3 AND revoked_at IS NULL")
            .bind(unix(now))
            .bind(BOOTSTRAP_CREATOR)
            .bind(BOOTSTRAP_TOKEN_NAME)
            .execute(&mut *transaction)
            .await?;
        sqlx::query("INSERT INTO admin_tokens (name, hash, created_at, created_by) VALUES ($1, $2, $3, $4)")
            .bind(BOOTSTRAP_TOKEN_NAME)
            .bind(hash)
            .bind(unix(now))
            .bind(BOOTSTRAP_CREATOR)
            .execute(&mut *transaction)
            .await?;
        notify(&mut transaction, &Change::AdminTokens).await?;
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
            "UPDATE admin_tokens SET revoked_at = $1, revoked_by = $2
             WHERE name = $3 AND revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at <= $4",
        )
        .bind(unix(token.created_at))
        .bind(&token.created_by)
        .bind(token.name.as_str())
        .bind(unix(token.created_at))
        .execute(&mut *transaction)
        .await?;
        sqlx::query(
            "INSERT INTO admin_tokens (name, hash, created_at, created_by, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token.name.as_str())
        .bind(&token.hash)
        .bind(unix(token.created_at))
        .bind(&token.created_by)
        .bind(token.expires_at.map(unix))
        .execute(&mut *transaction)
        .await?;
        audit::insert_admin_change(&mut transaction, change).await?;
        notify(&mut transaction, &Change::AdminTokens).await?;
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
        let done = sqlx::query(
            "UPDATE admin_tokens SET revoked_at = $1, revoked_by = $2 WHERE name = $3 AND revoked_at IS NULL",
        )
        .bind(unix(at))
        .bind(by)
        .bind(name.as_str())
        .execute(&mut *transaction)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        audit::insert_admin_change(&mut transaction, change).await?;
        notify(&mut transaction, &Change::AdminTokens).await?;
        transaction.commit().await?;
        Ok(true)
    }

    pub(super) async fn touch_admin_token(&self, hash: &str, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE admin_tokens SET last_used_at = $1 WHERE hash = $2")
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
            "SELECT state, created_by, created_at, finished_at FROM rollouts WHERE app = $1 ORDER BY created_at DESC, seq DESC LIMIT 1",
        )
        .bind(app.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(stored_rollout).transpose()
    }

    pub(super) async fn rollout_count(&self, app: &AppName) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rollouts WHERE app = $1")
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
                    "INSERT INTO rollouts (id, app, state, created_by, created_at, finished_at) VALUES ($1, $2, $3, $4, $5, $6)",
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
                sqlx::query("UPDATE rollouts SET state = $1, finished_at = $2 WHERE id = $3")
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
            "SELECT app, scope, version, set_by, set_at, rollout, reason FROM pins WHERE $1::TEXT IS NULL OR app = $1",
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
               WHERE app = $1 OR app IS NULL ORDER BY id DESC LIMIT $2
             ) AS newest ORDER BY id",
        )
        .bind(app.as_str())
        .bind(i64::from(limit))
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

fn stored_rollout(row: &PgRow) -> Result<StoredRollout, StoreError> {
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
                "INSERT INTO pins (app, scope, version, set_by, set_at, rollout, reason) VALUES ($1, $2, $3, $4, $5, $6, $7)
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
            sqlx::query("DELETE FROM pins WHERE app = $1 AND scope = $2")
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
            "INSERT INTO rollout_history (app, host, rollout, at, who, what, reason) VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
        "INSERT INTO host_history (host, kind, at, who, what, old_cert, new_cert, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
            "DELETE FROM host_history WHERE host = $1 AND kind = 'renewed' AND id NOT IN (
               SELECT id FROM host_history WHERE host = $2 AND kind = 'renewed' ORDER BY id DESC LIMIT $3)",
        )
        .bind(host.as_str())
        .bind(host.as_str())
        .bind(RENEWALS_KEPT_PER_HOST)
        .execute(&mut **transaction)
        .await?;
    }
    Ok(())
}

/// Reports written per statement (see [`MANIFESTS_PER_STATEMENT`]).
const REPORTS_PER_STATEMENT: usize = 1_000;

/// Stores reports of distinct hosts (the latest per host) and their events in three
/// statements, then trims each host's events to the newest [`EVENTS_PER_HOST`]; events
/// get their ids in the order given, as one statement each would.
async fn save_report_batch(
    transaction: &mut Transaction,
    reports: &[(HostReport, Timestamp)],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO reports (host, report, received_at)
         SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[])
         ON CONFLICT (host) DO UPDATE SET report = excluded.report, received_at = excluded.received_at",
    )
    .bind(
        reports
            .iter()
            .map(|(report, _)| report.host.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
    .bind(reports.iter().map(|(report, _)| to_json(report)).collect::<Vec<_>>())
    .bind(
        reports
            .iter()
            .map(|(_, received_at)| unix(*received_at))
            .collect::<Vec<_>>(),
    )
    .execute(&mut **transaction)
    .await?;
    let events: Vec<(&HostId, &ReportEvent)> = reports
        .iter()
        .flat_map(|(report, _)| report.events.iter().map(move |event| (&report.host, event)))
        .collect();
    if events.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO events (host, at, app, message)
         SELECT host, at, app, message
         FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[]) WITH ORDINALITY
           AS given (host, at, app, message, position)
         ORDER BY position",
    )
    .bind(
        events
            .iter()
            .map(|(host, _)| host.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|(_, event)| unix(event.at)).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|(_, event)| event.app.as_ref().map(|app| app.as_str().to_owned()))
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|(_, event)| event.message.clone())
            .collect::<Vec<_>>(),
    )
    .execute(&mut **transaction)
    .await?;
    let with_events: Vec<String> = reports
        .iter()
        .filter(|(report, _)| !report.events.is_empty())
        .map(|(report, _)| report.host.as_str().to_owned())
        .collect();
    sqlx::query(
        "DELETE FROM events WHERE id IN (
           SELECT id FROM (
             SELECT id, row_number() OVER (PARTITION BY host ORDER BY id DESC) AS newer
             FROM events WHERE host = ANY($1)
           ) AS ranked
           WHERE newer > $2)",
    )
    .bind(with_events)
    .bind(EVENTS_PER_HOST)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Manifests written per statement: a fleet-wide change of 10,000 hosts is ten round
/// trips to the server, not 10,000 (the statement's arrays stay a few MiB).
const MANIFESTS_PER_STATEMENT: usize = 1_000;

/// Stores `manifests` written at `generation`, with the serial guard of [`save_manifest`]
/// for each: any one refused fails the whole transaction with [`StoreError::Stale`].
async fn save_manifests_in(
    transaction: &mut Transaction,
    manifests: &[StoredManifest],
    generation: i64,
) -> Result<(), StoreError> {
    let hosts: std::collections::HashSet<&str> = manifests.iter().map(|manifest| manifest.host.as_str()).collect();
    if hosts.len() != manifests.len() {
        // One statement cannot change a row twice: a host written twice goes one by one,
        // in order.
        for manifest in manifests {
            save_manifest(transaction, manifest, generation).await?;
        }
        return Ok(());
    }
    for batch in manifests.chunks(MANIFESTS_PER_STATEMENT) {
        let written = sqlx::query(
            "INSERT INTO manifests (host, serial, envelope, content_hash, issued_at, expires_at, generation)
             SELECT host, serial, envelope, content_hash, issued_at, expires_at, $7
             FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BYTEA[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[])
               AS batch (host, serial, envelope, content_hash, issued_at, expires_at)
             ON CONFLICT (host) DO UPDATE SET serial = excluded.serial, envelope = excluded.envelope,
               content_hash = excluded.content_hash, issued_at = excluded.issued_at, expires_at = excluded.expires_at,
               generation = excluded.generation
             WHERE manifests.serial < excluded.serial",
        )
        .bind(
            batch
                .iter()
                .map(|manifest| manifest.host.as_str().to_owned())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|manifest| i64::try_from(manifest.serial).unwrap_or(i64::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|manifest| manifest.envelope.to_vec())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|manifest| manifest.content_hash.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|manifest| unix(manifest.issued_at))
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|manifest| unix(manifest.expires_at))
                .collect::<Vec<_>>(),
        )
        .bind(generation)
        .execute(&mut **transaction)
        .await?;
        if written.rows_affected() != u64::try_from(batch.len()).unwrap_or(u64::MAX) {
            return Err(StoreError::Stale);
        }
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
         VALUES ($1, $2, $3, $4, $5, $6, $7)
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

fn host_record(row: &PgRow) -> Result<HostRecord, StoreError> {
    Ok(HostRecord {
        id: parse("host id", row.get::<&str, _>(0))?,
        labels: json("labels", row.get::<&str, _>(1))?,
        cert_sha256: row.get(2),
        key_sha256: row.get(4),
        cert_not_after: row.get::<Option<i64>, _>(5).map(Timestamp::from_unix),
        joined_at: Timestamp::from_unix(row.get(3)),
    })
}

/// The host ids as PostgreSQL's `TEXT[]`, for `= ANY($1)`.
fn host_ids(hosts: &[HostId]) -> Vec<String> {
    hosts.iter().map(|host| host.as_str().to_owned()).collect()
}

/// Tells every replica listening on [`CHANNEL`] about `change`, when (and only if) the
/// transaction commits.
async fn notify(transaction: &mut Transaction, change: &Change) -> Result<(), StoreError> {
    for payload in change.payloads() {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&mut **transaction)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
