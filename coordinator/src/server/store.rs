//! Durable state: SQLite in the data directory, through this one module, so that the
//! HTTP handlers never see SQL and a PostgreSQL backend can be added beside it.
//!
//! Everything the coordinator must not forget lives here: hosts and their certificate
//! fingerprints, enrollment and admin tokens (hashed), releases, groups, pins, holds, the
//! last signed manifest and serial of every host, reports, a bounded event history,
//! rollouts and who changed what.
//! Writes that belong together are one transaction. The database runs in WAL mode with
//! `synchronous=FULL`, so a committed manifest serial survives power loss and is never
//! handed out twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;

use drover_protocol::api::{
    BOOTSTRAP_TOKEN_NAME, HistoryEntry, HoldInfo, HostHistoryEntry, Labels, PinInfo, Release, Scope, TokenName,
};
use drover_protocol::{AppName, HostId, HostReport, Timestamp, Version};
use sqlx::Row as _;

use crate::server::rollout::Rollout;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

/// Schema migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_initial.sql"),
    include_str!("../../migrations/0002_rollouts.sql"),
    include_str!("../../migrations/0003_admin_tokens.sql"),
    include_str!("../../migrations/0004_host_identity.sql"),
    include_str!("../../migrations/0005_pin_origins.sql"),
];

/// Events kept per host; older ones are deleted as new ones arrive.
pub const EVENTS_PER_HOST: i64 = 200;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored value could not be read back (a bug or a hand-edited database).
    #[error("database holds an unreadable {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

fn corrupt(what: &'static str) -> impl Fn(String) -> StoreError {
    move |detail| StoreError::Corrupt { what, detail }
}

fn json<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|error| corrupt(what)(error.to_string()))
}

fn parse<T: FromStr>(what: &'static str, text: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|error: T::Err| corrupt(what)(error.to_string()))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("stored values serialize")
}

fn unix(at: Timestamp) -> i64 {
    at.unix()
}

/// A host as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRecord {
    /// Its id.
    pub id: HostId,
    /// Its labels.
    pub labels: Labels,
    /// The sha256 of its newest client certificate; `None` once removed.
    pub cert_sha256: Option<String>,
    /// The sha256 of its key (SubjectPublicKeyInfo): every unexpired certificate of the
    /// CA for this host with this key is the host. `None` for a host enrolled before
    /// keys were recorded (known by `cert_sha256` until it renews) or removed.
    pub key_sha256: Option<String>,
    /// When its newest certificate expires, if known.
    pub cert_not_after: Option<Timestamp>,
    /// When it joined.
    pub joined_at: Timestamp,
}

/// A host's last signed manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredManifest {
    /// The host.
    pub host: HostId,
    /// Its serial (never goes down for a host id, across removals and re-joins).
    pub serial: u64,
    /// The envelope bytes (shared with what polls are answered from).
    pub envelope: axum::body::Bytes,
    /// A hash of what was rendered (hold + apps), to tell a change from a refresh.
    pub content_hash: String,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
}

/// An enrollment token as stored (hashed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// Labels for the joining host.
    pub labels: Labels,
    /// The one taken host id it may enroll (`--replace HOST`).
    pub replace: Option<HostId>,
    /// Made by an older coordinator as "replace any host": now refused for taken ids.
    pub replace_any: bool,
    /// The admin token that made it (none: made by an older coordinator).
    pub created_by: Option<String>,
}

/// Why a token could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenProblem {
    /// No such token.
    Unknown,
    /// It was used already.
    Used,
    /// It expired.
    Expired,
}

/// An admin token as stored: its secret only as sha256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminTokenRecord {
    /// Its name (unique among the tokens not revoked).
    pub name: TokenName,
    /// The hex sha256 of its secret.
    pub hash: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// The token that made it, or [`BOOTSTRAP_CREATOR`].
    pub created_by: String,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// The token that revoked it, or [`BOOTSTRAP_CREATOR`] (a replaced `admin.token`).
    pub revoked_by: Option<String>,
    /// When a request last came with it (kept to the minute).
    pub last_used_at: Option<Timestamp>,
}

impl AdminTokenRecord {
    /// Whether it expired by `now`.
    pub fn expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|expires_at| expires_at <= now)
    }

    /// Whether requests with it are accepted at `now`.
    pub fn valid(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && !self.expired(now)
    }
}

/// Who creates (and, when `admin.token` was replaced, revokes) the bootstrap admin token.
pub const BOOTSTRAP_CREATOR: &str = "drover serve";

/// Everything loaded at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Hosts, including removed ones (whose serials must continue).
    pub hosts: Vec<HostRecord>,
    /// Groups by name.
    pub groups: BTreeMap<String, Labels>,
    /// Pins.
    pub pins: BTreeMap<(AppName, Scope), Version>,
    /// Holds.
    pub holds: BTreeSet<Scope>,
    /// Releases.
    pub releases: Vec<Release>,
    /// The last manifest of every host.
    pub manifests: Vec<StoredManifest>,
    /// The latest report of every host.
    pub reports: Vec<(HostReport, Timestamp)>,
}

/// A rollout as stored: the controller's state and who started it when.
#[derive(Clone, Debug)]
pub struct StoredRollout {
    /// The controller's whole state.
    pub rollout: Rollout,
    /// The token name that started it.
    pub created_by: String,
    /// When.
    pub created_at: Timestamp,
    /// When it finished, if it did.
    pub finished_at: Option<Timestamp>,
}

/// A line for the history table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRecord {
    /// The app it concerns (`None`: every app, e.g. a hold).
    pub app: Option<AppName>,
    /// The rollout it belongs to, if any.
    pub rollout: Option<String>,
    /// When.
    pub at: Timestamp,
    /// Who.
    pub who: String,
    /// What.
    pub what: String,
    /// Why.
    pub reason: Option<String>,
}

/// One rollout step to commit: the rollout's new state, the pins its actions changed (in
/// order), its history lines and the manifests they render, all in one transaction.
#[derive(Debug)]
pub struct RolloutCommit<'a> {
    /// The rollout after the step.
    pub rollout: &'a Rollout,
    /// `Some((created_by, created_at))` when the rollout row is new.
    pub created: Option<(&'a str, Timestamp)>,
    /// When it finished, if this step finished it.
    pub finished_at: Option<Timestamp>,
    /// Pin changes of the rollout's app, applied in order (`None` removes the pin).
    pub pins: &'a [(Scope, Option<Version>)],
    /// Who the pins it sets are set by, when and why (`drover pins`): the operator of a
    /// command, or the controller for a step of its own.
    pub pin_origin: (&'a str, Timestamp, Option<&'a str>),
    /// History lines.
    pub history: &'a [HistoryRecord],
    /// The manifests the pin changes render.
    pub manifests: &'a [StoredManifest],
}

/// The SQLite store.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        let store = Store { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .execute(&self.pool)
            .await?;
        let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            .fetch_one(&self.pool)
            .await?;
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            let version = i64::try_from(index + 1).expect("few migrations");
            if version <= current {
                continue;
            }
            let mut transaction = self.pool.begin().await?;
            sqlx::raw_sql(migration).execute(&mut *transaction).await?;
            sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
                .bind(version)
                .execute(&mut *transaction)
                .await?;
            transaction.commit().await?;
        }
        Ok(())
    }

    /// Loads everything the coordinator keeps in memory.
    pub async fn load(&self) -> Result<Snapshot, StoreError> {
        let mut snapshot = Snapshot::default();
        for row in sqlx::query("SELECT id, labels, cert_sha256, joined_at, key_sha256, cert_not_after FROM hosts")
            .fetch_all(&self.pool)
            .await?
        {
            snapshot.hosts.push(HostRecord {
                id: parse("host id", row.get::<&str, _>(0))?,
                labels: json("labels", row.get::<&str, _>(1))?,
                cert_sha256: row.get(2),
                key_sha256: row.get(4),
                cert_not_after: row.get::<Option<i64>, _>(5).map(Timestamp::from_unix),
                joined_at: Timestamp::from_unix(row.get(3)),
            });
        }
        for row in sqlx::query("SELECT name, selector FROM groups")
            .fetch_all(&self.pool)
            .await?
        {
            snapshot
                .groups
                .insert(row.get(0), json("selector", row.get::<&str, _>(1))?);
        }
        for row in sqlx::query("SELECT app, scope, version FROM pins")
            .fetch_all(&self.pool)
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
        for row in sqlx::query("SELECT scope FROM holds").fetch_all(&self.pool).await? {
            snapshot.holds.insert(json("scope", row.get::<&str, _>(0))?);
        }
        for row in sqlx::query("SELECT release FROM releases")
            .fetch_all(&self.pool)
            .await?
        {
            snapshot.releases.push(json("release", row.get::<&str, _>(0))?);
        }
        let manifests =
            sqlx::query("SELECT host, serial, envelope, content_hash, issued_at, expires_at FROM manifests")
                .fetch_all(&self.pool)
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
        for row in sqlx::query("SELECT report, received_at FROM reports")
            .fetch_all(&self.pool)
            .await?
        {
            snapshot
                .reports
                .push((json("report", row.get::<&str, _>(0))?, Timestamp::from_unix(row.get(1))));
        }
        Ok(snapshot)
    }

    /// Stores a new enrollment token by its hash.
    pub async fn insert_token(
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

    /// Looks a token up without using it.
    pub async fn check_token(
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

    /// Enrolls a host in one transaction: uses the token (only if still unused and
    /// unexpired), stores the host with its certificate and key fingerprints, its first
    /// manifest and the history line. Returns the token problem if another join won the
    /// race.
    pub async fn join_host(
        &self,
        token_hash: &str,
        host: &HostRecord,
        manifest: &StoredManifest,
        history: (HostChange, &HostHistoryEntry),
        now: Timestamp,
    ) -> Result<Result<(), TokenProblem>, StoreError> {
        let mut transaction = self.pool.begin().await?;
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
        insert_host_history(&mut transaction, &host.id, history.0, history.1).await?;
        sqlx::query("DELETE FROM reports WHERE host = ?")
            .bind(host.id.as_str())
            .execute(&mut *transaction)
            .await?;
        save_manifest(&mut transaction, manifest).await?;
        transaction.commit().await?;
        Ok(Ok(()))
    }

    /// Marks a host removed, with its history line: its key and certificates stop
    /// working; its serial, host pins and holds are kept for an explicit re-join of the id.
    pub async fn remove_host(&self, host: &HostId, history: &HostHistoryEntry) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query("UPDATE hosts SET cert_sha256 = NULL, key_sha256 = NULL, cert_not_after = NULL WHERE id = ?")
            .bind(host.as_str())
            .execute(&mut *transaction)
            .await?;
        insert_host_history(&mut transaction, host, HostChange::Removed, history).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Records a renewed certificate of an enrolled host (same key) with its history
    /// line; `false` (and nothing written) when the host is no longer enrolled with this
    /// key (removed or replaced meanwhile). A host without a recorded key must still have
    /// the line's `old_certificate` as its newest certificate.
    pub async fn renew_host(
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
        insert_host_history(&mut transaction, host, HostChange::Renewed, history).await?;
        transaction.commit().await?;
        Ok(true)
    }

    /// Records the key and expiry of a host enrolled before keys were recorded, read
    /// from the certificate it presented (the one stored as `cert_sha256`).
    pub async fn record_host_key(
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

    /// A host id's history (joins, replacements, renewals, removals), oldest first, at
    /// most the newest `limit` lines.
    pub async fn host_history(&self, host: &HostId, limit: u32) -> Result<Vec<HostHistoryEntry>, StoreError> {
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

    /// Replaces a host's labels and stores the manifests that changed, in one transaction.
    pub async fn set_labels(
        &self,
        host: &HostId,
        labels: &Labels,
        manifests: &[StoredManifest],
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query("UPDATE hosts SET labels = ? WHERE id = ?")
            .bind(to_json(labels))
            .bind(host.as_str())
            .execute(&mut *transaction)
            .await?;
        commit_with_manifests(transaction, manifests).await
    }

    /// Creates or replaces a group and stores the manifests that changed, in one transaction.
    pub async fn put_group(
        &self,
        name: &str,
        selector: &Labels,
        manifests: &[StoredManifest],
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query("INSERT INTO groups (name, selector) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET selector = excluded.selector")
            .bind(name)
            .bind(to_json(selector))
            .execute(&mut *transaction)
            .await?;
        commit_with_manifests(transaction, manifests).await
    }

    /// Deletes a group.
    pub async fn delete_group(&self, name: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM groups WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores a release; it must not exist yet (releases are immutable).
    pub async fn insert_release(&self, release: &Release) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO releases (app, version, release, created_at) VALUES (?, ?, ?, ?)")
            .bind(release.app.as_str())
            .bind(release.version.as_str())
            .bind(to_json(release))
            .bind(unix(release.created_at))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets or clears a pin (`version: None` clears) and stores the manifests it changed,
    /// in one transaction.
    pub async fn change_pin(
        &self,
        app: &AppName,
        scope: &Scope,
        version: Option<&Version>,
        history: &[HistoryRecord],
        manifests: &[StoredManifest],
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        insert_history(&mut transaction, history).await?;
        write_pin(&mut transaction, app, scope, version, history.first()).await?;
        commit_with_manifests(transaction, manifests).await
    }

    /// Sets or clears a hold and stores the manifests it changed, in one transaction.
    pub async fn change_hold(
        &self,
        scope: &Scope,
        held: bool,
        history: &[HistoryRecord],
        manifests: &[StoredManifest],
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
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
        commit_with_manifests(transaction, manifests).await
    }

    /// Stores re-signed manifests (labels, groups or expiry refresh changed them).
    pub async fn save_manifests(&self, manifests: &[StoredManifest]) -> Result<(), StoreError> {
        let transaction = self.pool.begin().await?;
        commit_with_manifests(transaction, manifests).await
    }

    /// Stores a batch of reports (latest per host) and their events, trimming each
    /// host's history to [`EVENTS_PER_HOST`].
    pub async fn save_reports(&self, reports: &[(HostReport, Timestamp)]) -> Result<(), StoreError> {
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

    /// A host's recent events, oldest first.
    pub async fn events(&self, host: &HostId) -> Result<Vec<drover_protocol::report::ReportEvent>, StoreError> {
        let rows = sqlx::query("SELECT at, app, message FROM events WHERE host = ? ORDER BY id")
            .bind(host.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|row| {
                Ok(drover_protocol::report::ReportEvent {
                    at: Timestamp::from_unix(row.get(0)),
                    app: row.get::<Option<&str>, _>(1).map(|app| parse("app", app)).transpose()?,
                    message: row.get(2),
                })
            })
            .collect()
    }
}

impl Store {
    /// Records the data directory's admin token as `admin`, unless this secret is known
    /// already (then nothing changes, so a revoked `admin` stays revoked across restarts).
    /// A new secret (the file was deleted and made again) revokes the earlier `admin`:
    /// whoever can write the data directory holds the CA and the manifest key anyway, and
    /// this is the way back in when every named token was lost.
    pub async fn bootstrap_admin_token(&self, hash: &str, now: Timestamp) -> Result<(), StoreError> {
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

    /// Every admin token, revoked ones included, oldest first.
    pub async fn admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
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

    /// Stores a new admin token; an expired one of the same name is revoked by the same
    /// transaction (its creator is the revoker), so the name can be used again.
    pub async fn insert_admin_token(&self, token: &AdminTokenRecord) -> Result<(), StoreError> {
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
        transaction.commit().await?;
        Ok(())
    }

    /// Revokes the admin token `name` that is not revoked yet; false when there is none.
    pub async fn revoke_admin_token(&self, name: &TokenName, at: Timestamp, by: &str) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE admin_tokens SET revoked_at = ?, revoked_by = ? WHERE name = ? AND revoked_at IS NULL")
                .bind(unix(at))
                .bind(by)
                .bind(name.as_str())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Notes when the admin token with this hash was last used.
    pub async fn touch_admin_token(&self, hash: &str, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE admin_tokens SET last_used_at = ? WHERE hash = ?")
            .bind(unix(at))
            .bind(hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl Store {
    /// The rollouts that have not finished, to resume at start.
    pub async fn active_rollouts(&self) -> Result<Vec<StoredRollout>, StoreError> {
        let rows = sqlx::query(
            "SELECT state, created_by, created_at, finished_at FROM rollouts WHERE finished_at IS NULL ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_rollout).collect()
    }

    /// The newest rollout of `app`, finished or not.
    pub async fn latest_rollout(&self, app: &AppName) -> Result<Option<StoredRollout>, StoreError> {
        let row = sqlx::query(
            "SELECT state, created_by, created_at, finished_at FROM rollouts WHERE app = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
        )
        .bind(app.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(stored_rollout).transpose()
    }

    /// How many rollouts `app` has had (the next one's sequence number is this + 1).
    pub async fn rollout_count(&self, app: &AppName) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rollouts WHERE app = ?")
            .bind(app.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Commits one rollout step (see [`RolloutCommit`]).
    pub async fn commit_rollout(&self, commit: &RolloutCommit<'_>) -> Result<(), StoreError> {
        let app = &commit.rollout.spec().app;
        let mut transaction = self.pool.begin().await?;
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
        commit_with_manifests(transaction, commit.manifests).await
    }

    /// The pins in force (of `app`, or all), with who set them, ordered by app and scope.
    pub async fn pins(&self, app: Option<&AppName>) -> Result<Vec<PinInfo>, StoreError> {
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

    /// The holds in force with who set them, ordered by scope.
    pub async fn holds(&self) -> Result<Vec<HoldInfo>, StoreError> {
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

    /// The history of `app` (including holds, which cover every app), oldest first, at
    /// most the newest `limit` lines.
    pub async fn history(&self, app: &AppName, limit: u32) -> Result<Vec<HistoryEntry>, StoreError> {
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

fn stored_rollout(row: &sqlx::sqlite::SqliteRow) -> Result<StoredRollout, StoreError> {
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
    transaction: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
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

async fn insert_history(
    transaction: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    history: &[HistoryRecord],
) -> Result<(), StoreError> {
    for line in history {
        sqlx::query("INSERT INTO rollout_history (app, rollout, at, who, what, reason) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(line.app.as_ref().map(AppName::as_str))
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

/// Renewal lines kept per host in `host_history` (joins, replacements and removals are
/// all kept).
pub const RENEWALS_KEPT_PER_HOST: i64 = 100;

/// What a host history line records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostChange {
    /// A new host id enrolled.
    Joined,
    /// An enrolled host id taken over by a new key (`--replace HOST`).
    Replaced,
    /// A removed host id enrolled again (`--replace HOST`).
    Rejoined,
    /// The host removed.
    Removed,
    /// A new certificate for the same key.
    Renewed,
}

impl HostChange {
    fn as_str(self) -> &'static str {
        match self {
            HostChange::Joined => "joined",
            HostChange::Replaced => "replaced",
            HostChange::Rejoined => "rejoined",
            HostChange::Removed => "removed",
            HostChange::Renewed => "renewed",
        }
    }
}

async fn insert_host_history(
    transaction: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    host: &HostId,
    kind: HostChange,
    line: &HostHistoryEntry,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO host_history (host, kind, at, who, what, old_cert, new_cert) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(host.as_str())
    .bind(kind.as_str())
    .bind(unix(line.at))
    .bind(&line.who)
    .bind(&line.what)
    .bind(line.old_certificate.as_deref())
    .bind(line.new_certificate.as_deref())
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

/// Stores `manifests` in the same transaction as the change that produced them, and
/// commits: a change and its manifests are durable together or not at all.
async fn commit_with_manifests(
    mut transaction: sqlx::Transaction<'_, sqlx::Sqlite>,
    manifests: &[StoredManifest],
) -> Result<(), StoreError> {
    for manifest in manifests {
        save_manifest(&mut transaction, manifest).await?;
    }
    transaction.commit().await?;
    Ok(())
}

async fn save_manifest(
    transaction: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    manifest: &StoredManifest,
) -> Result<(), StoreError> {
    // The WHERE clause makes a lower serial a no-op: the stored serial never goes down.
    sqlx::query(
        "INSERT INTO manifests (host, serial, envelope, content_hash, issued_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (host) DO UPDATE SET serial = excluded.serial, envelope = excluded.envelope,
           content_hash = excluded.content_hash, issued_at = excluded.issued_at, expires_at = excluded.expires_at
         WHERE excluded.serial > manifests.serial",
    )
    .bind(manifest.host.as_str())
    .bind(i64::try_from(manifest.serial).unwrap_or(i64::MAX))
    .bind(manifest.envelope.as_ref())
    .bind(&manifest.content_hash)
    .bind(unix(manifest.issued_at))
    .bind(unix(manifest.expires_at))
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix(1_800_000_000 + seconds)
    }

    /// A fresh database in its own directory, removed by the caller.
    async fn scratch(name: &str) -> (Store, std::path::PathBuf) {
        let directory = std::env::temp_dir().join(format!("drover-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).expect("scratch directory");
        let store = Store::open(&directory.join("coordinator.db")).await.expect("open");
        (store, directory)
    }

    fn state(tokens: &[AdminTokenRecord]) -> Vec<(String, String, bool)> {
        tokens
            .iter()
            .map(|token| (token.name.to_string(), token.hash.clone(), token.revoked_at.is_some()))
            .collect()
    }

    #[tokio::test]
    async fn a_revoked_bootstrap_token_stays_revoked_and_a_new_admin_token_file_replaces_it() {
        let (store, directory) = scratch("bootstrap").await;
        store.bootstrap_admin_token("first", at(0)).await.expect("bootstrap");
        store.bootstrap_admin_token("first", at(1)).await.expect("again");
        let tokens = store.admin_tokens().await.expect("tokens");
        assert_eq!(state(&tokens), [("admin".into(), "first".into(), false)]);
        assert_eq!(tokens[0].created_by, BOOTSTRAP_CREATOR);

        let admin: TokenName = "admin".parse().expect("name");
        assert!(store.revoke_admin_token(&admin, at(2), "alice").await.expect("revoke"));
        assert!(!store.revoke_admin_token(&admin, at(3), "alice").await.expect("twice"));
        // The next start with the same admin.token: still revoked, nothing new.
        store.bootstrap_admin_token("first", at(4)).await.expect("restart");
        assert_eq!(
            state(&store.admin_tokens().await.expect("tokens")),
            [("admin".into(), "first".into(), true)]
        );
        // A new admin.token (the old one deleted): a new `admin`.
        store.bootstrap_admin_token("second", at(5)).await.expect("new file");
        // And another: the second `admin` is revoked by the start that replaced it.
        store.bootstrap_admin_token("third", at(6)).await.expect("newer file");
        let tokens = store.admin_tokens().await.expect("tokens");
        assert_eq!(
            state(&tokens),
            [
                ("admin".into(), "first".into(), true),
                ("admin".into(), "second".into(), true),
                ("admin".into(), "third".into(), false),
            ]
        );
        assert_eq!(tokens[1].revoked_by.as_deref(), Some(BOOTSTRAP_CREATOR));
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[tokio::test]
    async fn a_host_enrolled_before_keys_were_recorded_renews_by_its_certificate_then_by_its_key() {
        let (store, directory) = scratch("legacy-host").await;
        // As an older coordinator left it: the certificate's sha256, no key.
        sqlx::query("INSERT INTO hosts (id, labels, cert_sha256, joined_at) VALUES ('web-01', '{}', 'cert-1', 0)")
            .execute(&store.pool)
            .await
            .expect("legacy row");
        let host: HostId = "web-01".parse().expect("host id");
        let line = |old: &str, new: &str| HostHistoryEntry {
            at: at(1),
            who: "host".into(),
            what: "renewed".into(),
            old_certificate: Some(old.into()),
            new_certificate: Some(new.into()),
        };
        let renew = |key: &'static str, old: &'static str, new: &'static str| {
            let store = store.clone();
            let host = host.clone();
            let line = line(old, new);
            async move { store.renew_host(&host, key, new, at(10), &line).await.expect("renew") }
        };
        // Only the recorded certificate proves the host until its key is known.
        assert!(!renew("key-a", "cert-x", "cert-2").await);
        assert!(renew("key-a", "cert-1", "cert-2").await);
        // A late lazy record of the key (from the old certificate) changes nothing now.
        store
            .record_host_key(&host, "cert-1", "key-b", at(5))
            .await
            .expect("record key");
        let loaded = store.load().await.expect("load");
        let record = loaded.hosts.iter().find(|record| record.id == host).expect("host");
        assert_eq!(record.key_sha256.as_deref(), Some("key-a"));
        assert_eq!(record.cert_sha256.as_deref(), Some("cert-2"));
        assert_eq!(record.cert_not_after, Some(at(10)));
        // From now on the key is the identity: another key is refused, the same renews.
        assert!(!renew("key-b", "cert-2", "cert-3").await);
        for _ in 0..RENEWALS_KEPT_PER_HOST + 5 {
            assert!(renew("key-a", "cert-2", "cert-3").await);
        }
        // Renewal lines are bounded per host (a host decides how often it renews).
        let history = store.host_history(&host, 1_000).await.expect("history");
        assert_eq!(history.len(), usize::try_from(RENEWALS_KEPT_PER_HOST).expect("small"));
        // A removed host renews nothing.
        let removal = HostHistoryEntry {
            who: "admin".into(),
            what: "removed".into(),
            new_certificate: None,
            ..line("cert-3", "-")
        };
        store.remove_host(&host, &removal).await.expect("remove");
        assert!(!renew("key-a", "cert-3", "cert-4").await);
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[tokio::test]
    async fn a_name_is_unique_among_tokens_not_revoked_and_an_expired_one_is_replaced() {
        let (store, directory) = scratch("names").await;
        let token = |hash: &str, created: i64, ttl: Option<i64>| AdminTokenRecord {
            name: "ci".parse().expect("name"),
            hash: hash.into(),
            created_at: at(created),
            created_by: "admin".into(),
            expires_at: ttl.map(|ttl| at(created + ttl)),
            revoked_at: None,
            revoked_by: None,
            last_used_at: None,
        };
        store
            .insert_admin_token(&token("one", 0, Some(60)))
            .await
            .expect("insert");
        // While valid, a second `ci` is refused by the unique index (the service says so first).
        assert!(store.insert_admin_token(&token("two", 10, None)).await.is_err());
        // Once expired, creating `ci` again revokes the old one in the same transaction.
        store
            .insert_admin_token(&token("three", 120, None))
            .await
            .expect("replace");
        store.touch_admin_token("three", at(130)).await.expect("touch");
        let tokens = store.admin_tokens().await.expect("tokens");
        assert_eq!(
            state(&tokens),
            [("ci".into(), "one".into(), true), ("ci".into(), "three".into(), false)]
        );
        assert_eq!(tokens[0].revoked_by.as_deref(), Some("admin"));
        assert_eq!(tokens[1].last_used_at, Some(at(130)));
        assert!(tokens[0].expired(at(61)) && !tokens[1].expired(at(1_000_000)));
        let _ = std::fs::remove_dir_all(&directory);
    }
}
