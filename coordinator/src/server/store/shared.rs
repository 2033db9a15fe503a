//! What several coordinators on one database share besides the records (issue 16): the
//! database's model lock, the change listener, the leader lease and the heartbeats, as
//! the service sees them. On SQLite (one process) the lock is free, nothing is heard, the
//! one coordinator always leads, and `drover coordinators` lists it alone; on PostgreSQL
//! they are [`super::cluster`]'s, over the store's own connection settings.

use drover_protocol::Timestamp;

use super::cluster::{self, ChangeListener, Lease, ReplicaInfo, ReplicaRow};
use super::{Backend, Store, StoreError};
use crate::server::clock::Clock;

/// The CA and trust document the coordinators on one database serve with, as the first
/// of them recorded them (sha256 hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedCredentials {
    /// The CA certificate's DER.
    pub ca_sha256: String,
    /// The trust document's envelope.
    pub trust_sha256: String,
    /// The replica that recorded them.
    pub recorded_by: String,
    /// When.
    pub recorded_at: Timestamp,
}

/// The advisory lock that one change of the fleet model at a time holds, across every
/// replica (the migration lock is `..0001`, the leader's `..0002`).
pub const MODEL_LOCK_KEY: i64 = 0x6472_6f76_6572_0003;

/// The database's model lock, held by whoever changes the fleet model, and the model
/// generation the database held when it was taken. Dropping it releases the lock (on
/// PostgreSQL a transaction-level advisory lock, so also a lost connection releases it).
#[derive(Debug)]
pub struct ModelLock {
    generation: i64,
    _transaction: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
}

impl ModelLock {
    /// The database's model generation under the lock: when it is not the one this
    /// store last read or wrote ([`Store::seen_generation`]), another replica changed the
    /// model and this one must load it again before changing it.
    pub fn generation(&self) -> i64 {
        self.generation
    }
}

impl Store {
    /// The model generation this store last read or wrote.
    pub fn seen_generation(&self) -> i64 {
        match &self.backend {
            Backend::Sqlite(backend) => backend.seen.get(),
            Backend::Postgres(backend) => backend.seen.get(),
        }
    }

    /// The database's model generation now, read without the model lock: whether
    /// another replica changed the model since this one read it, at the cost of one
    /// query (on SQLite, where nobody else writes, the one seen).
    pub async fn database_generation(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(backend) => Ok(backend.seen.get()),
            Backend::Postgres(backend) => Ok(sqlx::query_scalar(
                "SELECT generation FROM model_generation WHERE id = 1",
            )
            .fetch_one(&backend.pool)
            .await?),
        }
    }

    /// Whether other coordinators may share this database (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Takes the database's model lock (waits for another replica's change to finish).
    /// Free on SQLite, where the coordinator's own mutex is enough.
    pub async fn lock_model(&self) -> Result<ModelLock, StoreError> {
        match &self.backend {
            Backend::Sqlite(backend) => Ok(ModelLock {
                generation: backend.seen.get(),
                _transaction: None,
            }),
            Backend::Postgres(backend) => {
                let mut transaction = backend.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(MODEL_LOCK_KEY)
                    .execute(&mut *transaction)
                    .await?;
                let generation: i64 = sqlx::query_scalar("SELECT generation FROM model_generation WHERE id = 1")
                    .fetch_one(&mut *transaction)
                    .await?;
                Ok(ModelLock {
                    generation,
                    _transaction: Some(transaction),
                })
            }
        }
    }

    /// Records `mine` as the credentials of every coordinator on this database when none
    /// are recorded yet, and returns what is recorded (the caller refuses to serve with
    /// other ones).
    pub async fn record_credentials(&self, mine: &RecordedCredentials) -> Result<RecordedCredentials, StoreError> {
        let read = |row: (String, String, String, i64)| RecordedCredentials {
            ca_sha256: row.0,
            trust_sha256: row.1,
            recorded_by: row.2,
            recorded_at: Timestamp::from_unix(row.3),
        };
        match &self.backend {
            Backend::Sqlite(backend) => {
                sqlx::query(
                    "INSERT INTO credentials (id, ca_sha256, trust_sha256, recorded_by, recorded_at) \
                     VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&mine.ca_sha256)
                .bind(&mine.trust_sha256)
                .bind(&mine.recorded_by)
                .bind(mine.recorded_at.unix())
                .execute(&backend.pool)
                .await?;
                let row = sqlx::query_as(
                    "SELECT ca_sha256, trust_sha256, recorded_by, recorded_at FROM credentials WHERE id = 1",
                )
                .fetch_one(&backend.pool)
                .await?;
                Ok(read(row))
            }
            Backend::Postgres(backend) => {
                sqlx::query(
                    "INSERT INTO credentials (id, ca_sha256, trust_sha256, recorded_by, recorded_at) \
                     VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&mine.ca_sha256)
                .bind(&mine.trust_sha256)
                .bind(&mine.recorded_by)
                .bind(mine.recorded_at.unix())
                .execute(&backend.pool)
                .await?;
                let row = sqlx::query_as(
                    "SELECT ca_sha256, trust_sha256, recorded_by, recorded_at FROM credentials WHERE id = 1",
                )
                .fetch_one(&backend.pool)
                .await?;
                Ok(read(row))
            }
        }
    }

    /// Starts listening to the other replicas' changes (PostgreSQL); `None` on SQLite.
    /// Call it before loading what the changes would update.
    pub async fn listen(&self) -> Result<Option<ChangeListener>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(backend) => Ok(Some(
                ChangeListener::start((*backend.pool.connect_options()).clone()).await?,
            )),
        }
    }

    /// Campaigns until this replica leads (PostgreSQL); `None` at once on SQLite, whose
    /// one coordinator always leads.
    pub async fn campaign(&self, replica: &str, clock: &dyn Clock) -> Option<Lease> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(backend) => {
                let options = (*backend.pool.connect_options()).clone();
                Some(cluster::campaign(&options, replica, clock).await)
            }
        }
    }

    /// Records that `replica` is alive (PostgreSQL; nothing on SQLite) and forgets the
    /// replicas silent for long.
    pub async fn heartbeat(&self, replica: &ReplicaInfo, now: Timestamp) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(backend) => {
                cluster::heartbeat(&backend.pool, replica, now).await?;
                cluster::forget_silent_replicas(&backend.pool, now, cluster::FORGET_SILENT_AFTER).await?;
                Ok(())
            }
        }
    }

    /// The replicas on this database with the leader marked (PostgreSQL); `None` on SQLite.
    pub async fn replicas(&self) -> Result<Option<Vec<ReplicaRow>>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(backend) => Ok(Some(cluster::replicas(&backend.pool).await?)),
        }
    }
}
