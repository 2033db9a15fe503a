//! Durable state, behind one interface: [`Store`], its records and [`StoreError`]. The
//! service sees only these; no SQL, no database driver type and no HTTP type crosses
//! this module, so a backend can be added without touching the service.
//!
//! Everything the coordinator must not forget lives here: hosts and their certificate
//! fingerprints, enrollment and admin tokens (hashed), releases, groups, pins, holds, the
//! last signed manifest and serial of every host, reports, a bounded event history,
//! rollouts and who changed what.
//! Writes that belong together are one transaction (a change and the manifests it
//! renders are durable together or not at all), and a committed manifest serial survives
//! power loss, so it is never handed out twice. Schema migrations run at open, under a
//! lock that spans the version check and every migration, so coordinators starting at
//! once on one database apply each migration exactly once. A database whose schema is
//! newer than this binary is used as it is when every newer migration was additive (a
//! rolling upgrade of several coordinators: the ones not yet upgraded keep working), and
//! refused otherwise ([`SCHEMA_VERSIONS`]).
//!
//! Backends: [`sqlite`] (a file in the data directory, the default) and [`postgres`]
//! (`drover serve --database postgres://...`, for several coordinators on one database,
//! issue 16). Both have the same schema (migrations in `migrations/` and
//! `migrations/postgres/`, kept in step by a test) and the same semantics, proven by
//! running every test of `tests.rs` against both.
//!
//! Several coordinators on one database (the multi-replica consistency rule): the
//! database holds a *model generation*, moved on by one by every transaction that changes
//! the fleet model (hosts, labels, groups, releases, pins, holds, rollouts and the
//! manifests they render), and only if it still holds the generation this store last read
//! ([`Store::load`]) or wrote. A coordinator whose model is older than the database's
//! gets [`StoreError::Stale`] and nothing written: it reloads and retries, so a change
//! made through another replica is never overwritten by a decision taken on an old model.
//! A manifest write never lowers or repeats a host's serial (also `Stale`). On PostgreSQL
//! each such transaction also notifies the other replicas ([`changes`]).
//!
//! Design decision: **an enum of backends, not a trait.** `Store` is a concrete type
//! holding one `Backend` variant, and each method forwards to the same method of the
//! backend in use (the `backend!` macro). Why:
//! - the service keeps naming one concrete, cloneable `Store` with plain `async fn`
//!   methods: no `dyn` (a trait with async methods is usable as `dyn` only by boxing
//!   every returned future, an allocation per store call), no generic parameter spread
//!   through `Coordinator`, no `async-trait` dependency;
//! - the backends are a closed set chosen at start-up from configuration, which is what
//!   an enum says; adding PostgreSQL is one variant, one arm in `backend!`, and a
//!   `postgres.rs` with the same methods: the compiler then refuses to build until every
//!   method the service uses exists on it with the same signature.
//!
//! A backend turns its driver's errors into [`StoreError::Database`] (keeping the
//! message, hiding the type) and its rows into these records, decoding stored text with
//! the helpers below ([`StoreError::Corrupt`] names what could not be read back).

pub mod changes;
pub mod cluster;
pub mod postgres;
pub mod shared;
pub mod sqlite;

#[cfg(test)]
pub(crate) mod tests;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use drover_protocol::api::{
    AuditEntry, HistoryEntry, HistoryQuery, HoldInfo, HostHistoryEntry, Labels, PinInfo, Release, Scope, TokenName,
};
use drover_protocol::report::ReportEvent;
use drover_protocol::{AppName, HostId, HostReport, Timestamp, Version};

pub use crate::server::records::{HostRecord, Snapshot, StoredManifest};
use crate::server::rollout::Rollout;
use postgres::PostgresStore;
pub use shared::ModelLock;
use sqlite::SqliteStore;

/// Events kept per host; older ones are deleted as new ones arrive.
pub const EVENTS_PER_HOST: i64 = 200;

/// Renewal lines kept per host in `host_history` (joins, replacements and removals are
/// all kept).
pub const RENEWALS_KEPT_PER_HOST: i64 = 100;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (could not be opened, reached, read or written).
    #[error("database: {0}")]
    Database(DatabaseError),
    /// A stored value could not be read back (a bug or a hand-edited database).
    #[error("database holds an unreadable {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// The database was migrated by a newer coordinator, past a migration that changed
    /// what older coordinators read or write; this one would misread or damage it.
    #[error(
        "database {database}: its schema is version {found}, newer than the {known} this drover knows, \
         and needs a drover that knows schema version {readable_from} or newer; a newer drover has migrated it. \
         Run that drover (or a newer one), or restore the backup taken before the upgrade"
    )]
    SchemaTooNew {
        /// The database: a file path, or a URL without its password.
        database: String,
        /// The database's schema version.
        found: i64,
        /// The newest schema version this binary knows (the length of [`SCHEMA_VERSIONS`]).
        known: usize,
        /// The oldest schema version whose coordinators can use the database, as recorded
        /// by the migration to `found` (its own version when it recorded none).
        readable_from: i64,
    },
    /// The fleet model changed through another coordinator since this one last read it:
    /// nothing was written. Reload the model and retry.
    #[error("the fleet model changed through another coordinator; reload and retry")]
    Stale,
}

/// A schema version both backends migrate to, with the oldest schema version whose
/// coordinators can still use a database at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SchemaVersion {
    /// The version: the index + 1 of its migration in each backend's `MIGRATIONS`.
    pub(super) version: i64,
    /// The oldest schema version whose coordinators use a database at `version`
    /// correctly: the previous version's value for an additive migration, `version`
    /// itself for one that changes meaning.
    pub(super) readable_from: i64,
}

impl SchemaVersion {
    const fn new(version: i64, readable_from: i64) -> SchemaVersion {
        SchemaVersion { version, readable_from }
    }
}

/// Every schema version, in order: one definition for both backends (each backend's
/// `MIGRATIONS` has one migration per entry, checked when it compiles). A migration
/// records its `readable_from` in `schema_version` when it is applied, and a coordinator
/// that knows schema versions up to K opens a database at a newer version F only when
/// the `readable_from` recorded for F is at most K: it then uses the database as it is
/// (rolling upgrades: the coordinators not yet upgraded keep working after the first
/// upgraded one migrated).
///
/// A migration is **additive**, and keeps the previous `readable_from`, when every
/// statement an older coordinator runs still means the same after it: new tables, new
/// columns that are nullable or have a default (rows older coordinators write get it, so
/// the newer code must read that value as "written by an older coordinator"), new
/// indexes, a new foreign key onto an existing table only with `ON DELETE CASCADE` or
/// `SET NULL` (older coordinators delete hosts, groups, pins, holds and events without
/// knowing it). Everything else **changes meaning** and raises `readable_from` to its own
/// version: a column dropped, renamed or retyped, a `NOT NULL` column without a default,
/// a new unique index or check that older writes can break, a new value or field in
/// stored text older coordinators parse or rewrite (releases' specs refuse unknown
/// fields; a rollout's state drops them when rewritten), or a new rule every writer must
/// follow.
///
/// What an older coordinator does on a newer schema it may use: it runs no migration and
/// writes nothing to `schema_version`; it reads and writes only the tables and columns it
/// knows, every `INSERT` naming its columns (newer columns get their defaults) and every
/// upsert updating only the columns it names (a newer column keeps its value, so a newer
/// column that describes others of its row must be treated as a hint, or its migration
/// is not additive); there is no `INSERT OR REPLACE`, which would reset newer columns.
/// Otherwise it serves, and may lead, as on its own schema.
///
/// Versions 1 to 7 were migrated by coordinators that recorded no `readable_from` (the
/// column comes with version 8, [`READABLE_FROM_RECORDED_SINCE`]); a row without one
/// counts as readable only by coordinators that know its own version, as declared here.
/// Version 8 changes meaning: it brings the model generation every coordinator that
/// changes the fleet model must move on (module documentation), which a schema-7
/// coordinator does not, so replicas would never re-read its changes.
pub(super) const SCHEMA_VERSIONS: &[SchemaVersion] = &[
    SchemaVersion::new(1, 1), // 0001_initial
    SchemaVersion::new(2, 2), // 0002_rollouts
    SchemaVersion::new(3, 3), // 0003_admin_tokens
    SchemaVersion::new(4, 4), // 0004_host_identity
    SchemaVersion::new(5, 5), // 0005_pin_origins
    SchemaVersion::new(6, 6), // 0006_audit
    SchemaVersion::new(7, 7), // 0007_history_host
    SchemaVersion::new(8, 8), // 0008_replicas: the model generation, a rule for every writer
];

/// The schema version whose migration adds `schema_version.readable_from`: the rows of
/// versions before it are written without one.
pub(super) const READABLE_FROM_RECORDED_SINCE: i64 = 8;

/// Whether `versions` is a schema list a coordinator can trust: versions 1, 2, ... in
/// order, each readable from a version in 1..=itself, never from an older one than the
/// version before it (a coordinator that cannot use a database at one version cannot use
/// it after an additive migration on top), and long enough to hold the column.
const fn schema_versions_are_consistent(versions: &[SchemaVersion]) -> bool {
    let mut index = 0;
    while index < versions.len() {
        let entry = versions[index];
        if entry.version != index as i64 + 1 || entry.readable_from < 1 || entry.readable_from > entry.version {
            return false;
        }
        if index > 0 && entry.readable_from < versions[index - 1].readable_from {
            return false;
        }
        index += 1;
    }
    versions.len() as i64 >= READABLE_FROM_RECORDED_SINCE
}

const _: () = assert!(schema_versions_are_consistent(SCHEMA_VERSIONS));

/// The newest schema version this binary knows.
pub(super) fn known_schema_version() -> i64 {
    i64::try_from(SCHEMA_VERSIONS.len()).expect("few schema versions")
}

/// The value a backend records in `schema_version.readable_from` for `version` when it
/// applies its migration (`None`: the column does not exist yet).
pub(super) fn recorded_readable_from(version: i64) -> Option<i64> {
    (version >= READABLE_FROM_RECORDED_SINCE)
        .then(|| usize::try_from(version - 1).ok())
        .flatten()
        .and_then(|index| SCHEMA_VERSIONS.get(index))
        .map(|entry| entry.readable_from)
}

/// Decides on a database at schema version `found`, newer than this binary knows, whose
/// migration to `found` recorded `readable_from` (or none): used as it is when this
/// binary's version is at least `readable_from`, else [`StoreError::SchemaTooNew`].
pub(super) fn check_newer_schema(database: &str, found: i64, readable_from: Option<i64>) -> Result<(), StoreError> {
    let known = known_schema_version();
    let readable_from = readable_from.unwrap_or(found);
    if readable_from > known {
        return Err(StoreError::SchemaTooNew {
            database: database.to_owned(),
            found,
            known: SCHEMA_VERSIONS.len(),
            readable_from,
        });
    }
    tracing::warn!(
        database,
        schema = found,
        known,
        readable_from,
        "the database's schema is newer than this drover's, and readable by it: using it as it is \
         (migrations are left to the newer drover); upgrade this coordinator soon"
    );
    Ok(())
}

/// Which database a coordinator keeps its state in. Its `Debug` form hides a URL's
/// password, as [`Database::display_name`] does.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (the default: `coordinator.db` in the data directory).
    Sqlite(PathBuf),
    /// A PostgreSQL server, by its `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Database::Postgres(url) => f.debug_tuple("Postgres").field(&redact_password(url)).finish(),
        }
    }
}

impl Database {
    /// Reads `--database`: a `postgres://` or `postgresql://` URL; anything else is
    /// refused with the forms accepted.
    pub fn from_url(url: &str) -> Result<Database, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Database::Postgres(url.to_owned()))
        } else {
            Err(format!(
                "--database {}: not a database URL drover knows; use postgres://USER:PASSWORD@HOST:PORT/DATABASE \
                 (or postgresql://...), or leave --database out for SQLite in the data directory",
                redact_password(url)
            ))
        }
    }

    /// How to name it in messages: the file's path, or the URL without its password.
    pub fn display_name(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(url) => redact_password(url),
        }
    }
}

/// `url` with the password of its `user:password@` part replaced by `***`, for messages
/// and logs (the URL may come from an operator's command line or configuration).
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => {
            // A password may also come as a query parameter.
            let (before, query) = tail.split_once('?').unwrap_or((tail, ""));
            if query.is_empty() {
                return url.to_owned();
            }
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{scheme}://{authority}{before}?{}", query.join("&"))
        }
    }
}

/// The model generation a backend last read or wrote (see the module documentation):
/// the value its next model change expects to find in the database.
#[derive(Clone, Debug, Default)]
struct SeenGeneration(Arc<AtomicI64>);

impl SeenGeneration {
    fn get(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Notes a generation read by a load or written by a committed change.
    fn set(&self, generation: i64) {
        self.0.store(generation, Ordering::SeqCst);
    }
}

/// The database's own error, with its message and cause chain; the driver's type stays
/// inside the backend.
#[derive(Debug)]
pub struct DatabaseError(Box<dyn std::error::Error + Send + Sync>);

impl DatabaseError {
    /// Wraps a backend driver's error.
    fn new(error: impl std::error::Error + Send + Sync + 'static) -> DatabaseError {
        DatabaseError(Box::new(error))
    }
}

impl std::fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DatabaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
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

/// A line of the admin changes that belong to no app (label changes, groups, admin
/// tokens), written in the same transaction as the change: `drover history` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminChange {
    /// When.
    pub at: Timestamp,
    /// Who: the admin token's name.
    pub who: String,
    /// The host it is about, if one (label changes), for `drover history --host`.
    pub host: Option<HostId>,
    /// What changed.
    pub what: String,
    /// Why, as given with `--reason`.
    pub reason: Option<String>,
}

/// A line for the history table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRecord {
    /// The app it concerns (`None`: every app, e.g. a hold).
    pub app: Option<AppName>,
    /// The one host it concerns (a pin or hold scoped to a host), for `history --host`.
    pub host: Option<HostId>,
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

/// The coordinator's store: one backend, chosen when it is opened (see the module
/// documentation for why this is an enum and not a trait).
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

/// The backends a store can be.
#[derive(Clone, Debug)]
enum Backend {
    /// A SQLite file.
    Sqlite(SqliteStore),
    /// A PostgreSQL database.
    Postgres(PostgresStore),
}

/// Calls the method of whichever backend `$store` is, bound to `$backend`: every backend
/// has every method with the same signature, which the compiler checks at each call.
macro_rules! backend {
    ($store:expr, $backend:ident => $call:expr) => {
        match &$store.backend {
            Backend::Sqlite($backend) => $call,
            Backend::Postgres($backend) => $call,
        }
    };
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies pending
    /// migrations under the database's write lock; refuses a schema newer than this
    /// binary knows.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Sqlite(SqliteStore::open(path).await?),
        })
    }

    /// Opens `database` (a SQLite file is created if needed; a PostgreSQL database must
    /// exist) and applies pending migrations under a lock; refuses a schema newer than
    /// this binary knows.
    pub async fn open_database(database: &Database) -> Result<Store, StoreError> {
        let backend = match database {
            Database::Sqlite(path) => Backend::Sqlite(SqliteStore::open(path).await?),
            Database::Postgres(url) => Backend::Postgres(PostgresStore::open(url).await?),
        };
        Ok(Store { backend })
    }

    /// Loads everything the coordinator keeps in memory, in one consistent read, with the
    /// model generation it was read at (which this store's next model change expects).
    pub async fn load(&self) -> Result<Snapshot, StoreError> {
        backend!(self, backend => backend.load().await)
    }

    /// Like [`Store::load`], except that only the manifests written after model
    /// generation `generation` are read, and no reports: what a replica that holds
    /// `generation` must re-read when another changed the model.
    pub async fn load_since(&self, generation: i64) -> Result<Snapshot, StoreError> {
        backend!(self, backend => backend.load_since(generation).await)
    }

    /// The latest reports of these hosts (those that have one), ordered by host id.
    pub async fn reports_of(&self, hosts: &[HostId]) -> Result<Vec<(HostReport, Timestamp)>, StoreError> {
        backend!(self, backend => backend.reports_of(hosts).await)
    }

    /// The records of these hosts (those that exist), ordered by host id.
    pub async fn hosts_of(&self, hosts: &[HostId]) -> Result<Vec<HostRecord>, StoreError> {
        backend!(self, backend => backend.hosts_of(hosts).await)
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
        backend!(self, backend => backend.insert_token(hash, labels, replace, created_by, expires_at, now).await)
    }

    /// Looks a token up without using it.
    pub async fn check_token(
        &self,
        hash: &str,
        now: Timestamp,
    ) -> Result<Result<TokenRecord, TokenProblem>, StoreError> {
        backend!(self, backend => backend.check_token(hash, now).await)
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
        backend!(self, backend => backend.join_host(token_hash, host, manifest, history, now).await)
    }

    /// Marks a host removed, with its history line: its key and certificates stop
    /// working; its serial, host pins and holds are kept for an explicit re-join of the id.
    pub async fn remove_host(
        &self,
        host: &HostId,
        history: &HostHistoryEntry,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        backend!(self, backend => backend.remove_host(host, history, reason).await)
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
        backend!(self, backend => backend.renew_host(host, key_sha256, cert_sha256, not_after, history).await)
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
        backend!(self, backend => backend.record_host_key(host, cert_sha256, key_sha256, not_after).await)
    }

    /// A host id's history (joins, replacements, renewals, removals), oldest first, at
    /// most the newest `limit` lines.
    pub async fn host_history(&self, host: &HostId, limit: u32) -> Result<Vec<HostHistoryEntry>, StoreError> {
        backend!(self, backend => backend.host_history(host, limit).await)
    }

    /// Replaces a host's labels and stores the manifests that changed, in one transaction.
    pub async fn set_labels(
        &self,
        host: &HostId,
        labels: &Labels,
        manifests: &[StoredManifest],
        change: &AdminChange,
    ) -> Result<(), StoreError> {
        backend!(self, backend => backend.set_labels(host, labels, manifests, change).await)
    }

    /// Creates or replaces a group and stores the manifests that changed, in one transaction.
    pub async fn put_group(
        &self,
        name: &str,
        selector: &Labels,
        manifests: &[StoredManifest],
        change: &AdminChange,
    ) -> Result<(), StoreError> {
        backend!(self, backend => backend.put_group(name, selector, manifests, change).await)
    }

    /// Deletes a group, with the change's line, in one transaction.
    pub async fn delete_group(&self, name: &str, change: &AdminChange) -> Result<(), StoreError> {
        backend!(self, backend => backend.delete_group(name, change).await)
    }

    /// Stores a release; it must not exist yet (releases are immutable).
    pub async fn insert_release(&self, release: &Release) -> Result<(), StoreError> {
        backend!(self, backend => backend.insert_release(release).await)
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
        backend!(self, backend => backend.change_pin(app, scope, version, history, manifests).await)
    }

    /// Sets or clears a hold and stores the manifests it changed, in one transaction.
    pub async fn change_hold(
        &self,
        scope: &Scope,
        held: bool,
        history: &[HistoryRecord],
        manifests: &[StoredManifest],
    ) -> Result<(), StoreError> {
        backend!(self, backend => backend.change_hold(scope, held, history, manifests).await)
    }

    /// Stores re-signed manifests (labels, groups or expiry refresh changed them).
    pub async fn save_manifests(&self, manifests: &[StoredManifest]) -> Result<(), StoreError> {
        backend!(self, backend => backend.save_manifests(manifests).await)
    }

    /// Stores a batch of reports (latest per host) and their events, trimming each
    /// host's history to [`EVENTS_PER_HOST`].
    pub async fn save_reports(&self, reports: &[(HostReport, Timestamp)]) -> Result<(), StoreError> {
        backend!(self, backend => backend.save_reports(reports).await)
    }

    /// A host's recent events, oldest first.
    pub async fn events(&self, host: &HostId) -> Result<Vec<ReportEvent>, StoreError> {
        backend!(self, backend => backend.events(host).await)
    }

    /// Records the data directory's admin token as `admin`, unless this secret is known
    /// already (then nothing changes, so a revoked `admin` stays revoked across restarts).
    /// A new secret (the file was deleted and made again) revokes the earlier `admin`:
    /// whoever can write the data directory holds the CA and the manifest key anyway, and
    /// this is the way back in when every named token was lost.
    pub async fn bootstrap_admin_token(&self, hash: &str, now: Timestamp) -> Result<(), StoreError> {
        backend!(self, backend => backend.bootstrap_admin_token(hash, now).await)
    }

    /// Every admin token, revoked ones included, oldest first.
    pub async fn admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        backend!(self, backend => backend.admin_tokens().await)
    }

    /// Stores a new admin token; an expired one of the same name is revoked by the same
    /// transaction (its creator is the revoker), so the name can be used again.
    pub async fn insert_admin_token(&self, token: &AdminTokenRecord, change: &AdminChange) -> Result<(), StoreError> {
        backend!(self, backend => backend.insert_admin_token(token, change).await)
    }

    /// Revokes the admin token `name` that is not revoked yet, with the change's line, in
    /// one transaction; false (and nothing written) when there is none.
    pub async fn revoke_admin_token(
        &self,
        name: &TokenName,
        at: Timestamp,
        by: &str,
        change: &AdminChange,
    ) -> Result<bool, StoreError> {
        backend!(self, backend => backend.revoke_admin_token(name, at, by, change).await)
    }

    /// Notes when the admin token with this hash was last used.
    pub async fn touch_admin_token(&self, hash: &str, at: Timestamp) -> Result<(), StoreError> {
        backend!(self, backend => backend.touch_admin_token(hash, at).await)
    }

    /// The rollouts that have not finished, to resume at start.
    pub async fn active_rollouts(&self) -> Result<Vec<StoredRollout>, StoreError> {
        backend!(self, backend => backend.active_rollouts().await)
    }

    /// The newest rollout of `app`, finished or not.
    pub async fn latest_rollout(&self, app: &AppName) -> Result<Option<StoredRollout>, StoreError> {
        backend!(self, backend => backend.latest_rollout(app).await)
    }

    /// How many rollouts `app` has had (the next one's sequence number is this + 1).
    pub async fn rollout_count(&self, app: &AppName) -> Result<u64, StoreError> {
        backend!(self, backend => backend.rollout_count(app).await)
    }

    /// Commits one rollout step (see [`RolloutCommit`]).
    pub async fn commit_rollout(&self, commit: &RolloutCommit<'_>) -> Result<(), StoreError> {
        backend!(self, backend => backend.commit_rollout(commit).await)
    }

    /// The pins in force (of `app`, or all), with who set them, ordered by app and scope.
    pub async fn pins(&self, app: Option<&AppName>) -> Result<Vec<PinInfo>, StoreError> {
        backend!(self, backend => backend.pins(app).await)
    }

    /// The holds in force with who set them, ordered by scope.
    pub async fn holds(&self) -> Result<Vec<HoldInfo>, StoreError> {
        backend!(self, backend => backend.holds().await)
    }

    /// The history of `app` (including holds, which cover every app), oldest first, at
    /// most the newest `limit` lines.
    pub async fn history(&self, app: &AppName, limit: u32) -> Result<Vec<HistoryEntry>, StoreError> {
        backend!(self, backend => backend.history(app, limit).await)
    }

    /// The fleet-wide history (`drover history`): the newest `query.limit` lines of every
    /// app's history, every host id's and the admin changes that match `query`, newest
    /// first.
    pub async fn fleet_history(&self, query: &HistoryQuery) -> Result<Vec<AuditEntry>, StoreError> {
        backend!(self, backend => backend.fleet_history(query).await)
    }
}

// --- For the backends: decoding what was stored -------------------------------------

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
