//! Several coordinators on one PostgreSQL (issue 16): how a replica hears what the others
//! changed, which replica leads, and which replicas are alive. Self-contained: it takes
//! connection options, a pool and plain values; the service wires it in.
//!
//! - [`ChangeListener`]: `LISTEN` on [`CHANNEL`] on a connection of its own, payloads
//!   read with [`Change::parse`] and handed out in batches ([`ChangeListener::recv`]).
//!   When the connection is lost it reconnects with jittered backoff and then says
//!   [`Change::Resync`]: PostgreSQL keeps no notification for a session that is not
//!   listening, so whatever was sent meanwhile is lost and the replica re-reads all.
//! - [`campaign`] / [`Lease`]: the leader (the one replica that runs the rollout driver
//!   and the manifest refresher) is whoever holds the session-level advisory lock
//!   [`LEADER_KEY`] on a connection dedicated to it. Winning it bumps `leader.epoch` in
//!   the database; the lease carries that epoch and says when it is lost.
//! - [`heartbeat`] / [`replicas`] / [`forget_silent_replicas`]: the `replicas` table, what
//!   `drover coordinators` lists.
//!
//! # Why the leader is safe in a split brain
//!
//! "Holds the lock" is PostgreSQL's view; a replica only *believes* it leads. The two can
//! differ for a moment: the leader's session may be gone (terminated, the network cut,
//! the server restarted) before the replica notices. Three things make that harmless:
//! 1. **Fencing.** Every write the leader's driver makes (a rollout step, a manifest
//!    refresh) calls [`check_epoch`] inside its own transaction: `SELECT epoch FROM
//!    leader WHERE id = 1 FOR SHARE` must still be the lease's epoch. A new leader bumps
//!    the epoch before it starts driving, so a step of the old leader either commits
//!    before the bump (the `FOR SHARE` row lock makes the new leader's `UPDATE` wait for
//!    it, and the new leader then reads that step's result) or sees the new epoch and
//!    rolls back. No step is taken twice or by two leaders, whatever the timing.
//! 2. **The lease-lost signal.** The lock's connection is pinged every 500 ms with a
//!    1.5 s timeout; on any failure the lease is marked lost *before* anything else and
//!    the connection is dropped, and the driver stops on that signal. So a leader cut off
//!    from the database stops within about 2 s.
//! 3. **PostgreSQL frees the lock when the session dies**, and the lock's session sets
//!    short server-side TCP keepalives and a TCP user timeout (below), so the server
//!    notices a leader that vanished without a FIN (kill -9 of the machine, a network
//!    cut) within about 4 s; a crashed process's FIN frees it at once. The other
//!    replicas try the lock every 500 ms, so one leads within ~5 s of the leader's death.
//!    In a network cut the old leader stops (≈2 s) before the server frees the lock
//!    (≈3-4 s), so normally no two replicas drive at once even for a moment (measured
//!    with the connection's packets dropped: stopped after 1.98 s, another led after
//!    3.5 s; without these settings no one led within 5 s). When the
//!    timing is otherwise, fencing (1) refuses the old writes: the server ended the
//!    session itself (`pg_terminate_backend`, measured: the successor led after 13-510 ms
//!    while the old leader noticed after ~500 ms), or the old process stalled.
//!
//! A graceful stop ([`Lease::release`], or dropping the [`Lease`]) clears
//! `leader.replica`, unlocks and closes, so the next replica leads within one retry
//! (≤ 500 ms).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_protocol::{HostId, Timestamp};
use ring::rand::SecureRandom as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Row as _};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

use super::changes::{CHANNEL, Change};
use crate::server::clock::Clock;

/// The advisory-lock key whose holder leads: "drover" in ASCII, then 0x0002 for "leader"
/// (the migration lock, `postgres::MIGRATION_LOCK_KEY`, is 0x0001). Advisory locks are per
/// database, so it only has to differ from the other keys drover takes in it.
pub const LEADER_KEY: i64 = 0x6472_6f76_6572_0002;

/// How often a campaigning replica tries the leader lock, and how often the leader pings
/// the lock's connection.
pub const LEASE_PING_EVERY: Duration = Duration::from_millis(500);

/// How long a ping of the lock's connection may take before the lease counts as lost.
pub const LEASE_PING_TIMEOUT: Duration = Duration::from_millis(1_500);

/// Server-side settings of the lock's session, so that PostgreSQL notices a leader that
/// vanished without closing its connection within seconds, not the kernel's two hours:
/// keepalive probes after 1 s idle, every 1 s, 3 unanswered ones end the session; and
/// when the server's own data (an answer to a ping) stays unacknowledged for 3 s the
/// session ends too (keepalives do not run while data is in flight). PostgreSQL 12 or
/// newer (`tcp_user_timeout`).
/// Sent in the connection's start-up packet, so they hold from its first byte.
const LOCK_SESSION_SETTINGS: [(&str, &str); 4] = [
    ("tcp_keepalives_idle", "1"),
    ("tcp_keepalives_interval", "1"),
    ("tcp_keepalives_count", "3"),
    ("tcp_user_timeout", "3000"),
];

/// How long opening a connection may take before it counts as failed (an unreachable
/// address would otherwise wait for the kernel's SYN timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the winner's `UPDATE leader` may wait (on a stale leader's step in flight,
/// which holds the row `FOR SHARE`) before the campaign lets go and tries again.
const TAKE_LEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a quiet listening connection waits before it checks that the server still
/// answers (a cut network would otherwise look like a quiet fleet forever).
const LISTENER_PING_AFTER_SILENCE: Duration = Duration::from_secs(5);

/// How long the listener's check may take before the connection counts as lost.
const LISTENER_PING_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection that stayed up this long resets the reconnect backoff; one that drops
/// sooner keeps backing off, so a server that accepts and drops at once is not hammered.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// How often a replica should call [`heartbeat`].
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// Replicas not heard from for this long are removed by [`forget_silent_replicas`]: a
/// replica id is new per process, so every restart leaves a row behind.
pub const FORGET_SILENT_AFTER: Duration = Duration::from_secs(3_600);

// ---------------------------------------------------------------------------------------
// Change listener
// ---------------------------------------------------------------------------------------

/// Hears the changes other replicas commit (`NOTIFY` on [`CHANNEL`]) and hands them out
/// in batches. Owns a background task and a connection of its own; dropping it stops both.
#[derive(Debug)]
pub struct ChangeListener {
    pending: Arc<Pending>,
    task: JoinHandle<()>,
}

impl ChangeListener {
    /// Connects and starts listening. When this returns, every change committed from now
    /// on is heard (or a [`Change::Resync`] says some were lost), so the caller reads its
    /// initial state *after* this. Fails when the first connection fails: a replica that
    /// cannot reach its database at start should say so, not wait silently.
    pub async fn start(options: PgConnectOptions) -> Result<ChangeListener, sqlx::Error> {
        let connection = ListeningConnection::open(&options).await?;
        let pending = Arc::new(Pending::default());
        let task = tokio::spawn(listen_forever(options, connection, Arc::clone(&pending)));
        Ok(ChangeListener { pending, task })
    }

    /// The next batch of changes, waiting until there is one: everything heard since the
    /// last call, merged (one [`Change::Model`] with the newest generation, each host once
    /// per kind). A [`Change::Resync`] replaces the whole batch, since re-reading
    /// everything covers the rest. Never empty. Cancel-safe: a dropped call loses nothing.
    pub async fn recv(&mut self) -> Vec<Change> {
        loop {
            let batch = self.pending.take();
            if !batch.is_empty() {
                return batch;
            }
            self.pending.ready.notified().await;
        }
    }

    /// The changes heard so far, without waiting (empty when none).
    pub fn try_recv(&mut self) -> Vec<Change> {
        self.pending.take()
    }

    /// How many times it has tried to reconnect since it started (for metrics, and to
    /// show that a dead database is waited out, not hammered).
    pub fn reconnect_attempts(&self) -> u64 {
        self.pending
            .reconnect_attempts
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for ChangeListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Changes heard and not yet handed out, shared between the listening task and
/// [`ChangeListener::recv`]. The task never waits for the consumer: a listener that stops
/// reading its socket would hold back PostgreSQL's notification queue for every session.
/// Merging keeps it bounded by the number of hosts.
#[derive(Debug, Default)]
struct Pending {
    batch: Mutex<Batch>,
    ready: Notify,
    reconnect_attempts: std::sync::atomic::AtomicU64,
}

impl Pending {
    fn add(&self, changes: impl IntoIterator<Item = Change>) {
        {
            let mut batch = self.batch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for change in changes {
                batch.add(change);
            }
        }
        // A stored permit when no one waits: `recv` cannot miss it between its check
        // and its wait.
        self.ready.notify_one();
    }

    fn take(&self) -> Vec<Change> {
        std::mem::take(&mut *self.batch.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_changes()
    }
}

/// Changes merged: what must be re-read, each thing once.
#[derive(Debug, Default)]
struct Batch {
    resync: bool,
    generation: Option<i64>,
    reports: HostSet,
    hosts: HostSet,
    admin_tokens: bool,
}

impl Batch {
    fn add(&mut self, change: Change) {
        match change {
            Change::Model { generation } => {
                self.generation = Some(self.generation.map_or(generation, |held| held.max(generation)));
            }
            Change::Reports(hosts) => self.reports.extend(hosts),
            Change::Hosts(hosts) => self.hosts.extend(hosts),
            Change::AdminTokens => self.admin_tokens = true,
            Change::Resync => self.resync = true,
        }
    }

    fn into_changes(self) -> Vec<Change> {
        if self.resync {
            return vec![Change::Resync];
        }
        let mut changes = Vec::new();
        if let Some(generation) = self.generation {
            changes.push(Change::Model { generation });
        }
        if !self.reports.order.is_empty() {
            changes.push(Change::Reports(self.reports.order));
        }
        if !self.hosts.order.is_empty() {
            changes.push(Change::Hosts(self.hosts.order));
        }
        if self.admin_tokens {
            changes.push(Change::AdminTokens);
        }
        changes
    }
}

/// Hosts in the order first heard, each once.
#[derive(Debug, Default)]
struct HostSet {
    order: Vec<HostId>,
    seen: HashSet<HostId>,
}

impl HostSet {
    fn extend(&mut self, hosts: Vec<HostId>) {
        for host in hosts {
            if self.seen.insert(host.clone()) {
                self.order.push(host);
            }
        }
    }
}

/// One listening session: sqlx's [`PgListener`] on a one-connection pool of its own.
/// sqlx's own reconnect is switched off: a lost connection ends this value, and the task
/// opens a new one, so that every reconnect is seen (and answered with a resync).
struct ListeningConnection {
    pool: PgPool,
    listener: PgListener,
}

impl ListeningConnection {
    async fn open(options: &PgConnectOptions) -> Result<ListeningConnection, sqlx::Error> {
        let open = async {
            // A pool retries a refused connection on its own, every 10 ms and more, until
            // its acquire timeout; one plain connection first fails at once instead, so the
            // reconnect schedule stays the jittered backoff of `listen_forever`.
            PgConnection::connect_with(options).await?.close().await?;
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .min_connections(0)
                .max_lifetime(None)
                .idle_timeout(None)
                .test_before_acquire(false)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_with(options.clone().application_name("drover change listener"))
                .await?;
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.ignore_pool_close_event(true);
            listener.eager_reconnect(false);
            listener.listen(CHANNEL).await?;
            Ok(ListeningConnection { pool, listener })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, open)
            .await
            .unwrap_or_else(|_| Err(timed_out("connecting to PostgreSQL")))
    }

    /// Hands what arrives to `pending` until the connection fails; returns why.
    async fn serve(&mut self, pending: &Pending) -> String {
        loop {
            tokio::select! {
                // Cancel-safe: sqlx consumes a message only once it has all of it.
                received = self.listener.try_recv() => match received {
                    Ok(Some(first)) => {
                        let mut changes = vec![parse_payload(first.payload())];
                        while let Some(next) = self.listener.next_buffered() {
                            changes.push(parse_payload(next.payload()));
                        }
                        pending.add(changes);
                    }
                    Ok(None) => return "the server closed the connection".to_owned(),
                    Err(error) => return error.to_string(),
                },
                () = tokio::time::sleep(LISTENER_PING_AFTER_SILENCE) => {
                    let ping = sqlx::query("SELECT 1").execute(&mut self.listener);
                    match tokio::time::timeout(LISTENER_PING_TIMEOUT, ping).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return error.to_string(),
                        Err(_) => {
                            return format!("the server did not answer within {LISTENER_PING_TIMEOUT:?}");
                        }
                    }
                }
            }
        }
    }

    /// Lets the connection go without waiting on a server that may not answer.
    async fn close(self) {
        let ListeningConnection { pool, listener } = self;
        drop(listener);
        let _ = tokio::time::timeout(Duration::from_secs(1), pool.close()).await;
    }
}

/// A payload this version cannot read (a newer replica's, during a rolling upgrade) asks
/// for a full re-read rather than a guess.
fn parse_payload(payload: &str) -> Change {
    Change::parse(payload).unwrap_or_else(|| {
        tracing::debug!(payload, "unknown change notification; re-reading everything");
        Change::Resync
    })
}

async fn listen_forever(options: PgConnectOptions, mut connection: ListeningConnection, pending: Arc<Pending>) {
    let mut backoff = Backoff::default();
    loop {
        let connected_at = Instant::now();
        let failure = connection.serve(&pending).await;
        connection.close().await;
        if connected_at.elapsed() >= STABLE_CONNECTION {
            backoff = Backoff::default();
        }
        tracing::warn!(
            reason = %failure,
            "lost the PostgreSQL connection that hears other coordinators' changes; reconnecting \
             (what changed meanwhile is re-read in full)"
        );
        connection = loop {
            tokio::time::sleep(backoff.next_delay()).await;
            pending
                .reconnect_attempts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match ListeningConnection::open(&options).await {
                Ok(connection) => break connection,
                Err(error) => tracing::warn!(
                    %error,
                    "cannot reconnect to PostgreSQL to hear other coordinators' changes; retrying"
                ),
            }
        };
        tracing::info!("listening for other coordinators' changes again");
        // Only now, with LISTEN active again: whatever the consumer re-reads after this
        // includes everything committed while the connection was down.
        pending.add([Change::Resync]);
    }
}

// ---------------------------------------------------------------------------------------
// Leader lease
// ---------------------------------------------------------------------------------------

/// This replica leads, until [`Lease::lost`] says otherwise. Dropping it (or
/// [`Lease::release`]) gives the lead up at once.
#[derive(Debug)]
pub struct Lease {
    epoch: i64,
    session_pid: i32,
    lost: watch::Receiver<bool>,
    release: Option<oneshot::Sender<()>>,
    keeper: Option<JoinHandle<()>>,
}

impl Lease {
    /// The epoch this lease won: pass it to [`check_epoch`] in every write the leader makes.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The PostgreSQL backend process id of the lock's session (for logs, and for
    /// `pg_terminate_backend` by an operator or a test).
    pub fn session_pid(&self) -> i32 {
        self.session_pid
    }

    /// Whether the lease is lost (it never comes back: campaign again).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once the lease is lost: stop driving at once.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the keeper is gone, which it only is after marking the loss.
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// A receiver that turns `true` when the lease is lost, for tasks that outlive a borrow.
    pub fn lost_signal(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Gives the lead up and waits until it is given up: `leader.replica` cleared (when
    /// this lease's epoch is still current), the lock released and the session closed.
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.await;
        }
    }
}

impl Drop for Lease {
    /// Asks the keeper to give the lead up; it does so in the background (a process that
    /// exits right after loses the session anyway, and PostgreSQL frees the lock then).
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
    }
}

/// Campaigns until this replica leads: tries the leader lock every [`LEASE_PING_EVERY`]
/// on a connection of its own (reconnecting with backoff when it is lost; a dead database
/// is waited out, never an error), and on success takes the next epoch. Cancel-safe:
/// dropping the future drops the connection, and a lock taken with it.
pub async fn campaign(options: &PgConnectOptions, replica: &str, clock: &dyn Clock) -> Lease {
    let mut backoff = Backoff::default();
    let mut session: Option<PgConnection> = None;
    loop {
        if session.is_none() {
            match open_lock_session(options, replica).await {
                Ok(connection) => {
                    backoff = Backoff::default();
                    session = Some(connection);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot connect to PostgreSQL to campaign for the lead; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
        }
        let connection = session.as_mut().expect("a session was just opened");
        let attempt = tokio::time::timeout(TAKE_LEAD_TIMEOUT, try_lead(connection, replica, clock)).await;
        match attempt.unwrap_or_else(|_| Err(timed_out("taking the lead"))) {
            Ok(Some((epoch, session_pid))) => {
                let connection = session.take().expect("the session just used");
                tracing::info!(replica, epoch, "this coordinator leads");
                return start_keeper(connection, epoch, session_pid);
            }
            Ok(None) => tokio::time::sleep(LEASE_PING_EVERY).await,
            Err(error) => {
                // Dropping the session frees whatever it held (a lock taken before the
                // UPDATE failed): the next attempt starts clean.
                session = None;
                tracing::warn!(%error, "campaign for the lead failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Whether `epoch` is still the leader's epoch, read `FOR SHARE` inside the caller's
/// transaction: call it in every transaction the leader's driver commits, and roll back
/// when it is `false` (another replica leads now). The row lock makes a new leader's
/// epoch bump wait until this transaction ends, so the step either commits before the
/// new leader starts or is refused.
pub async fn check_epoch(connection: &mut PgConnection, epoch: i64) -> Result<bool, sqlx::Error> {
    let current: Option<i64> = sqlx::query_scalar("SELECT epoch FROM leader WHERE id = 1 FOR SHARE")
        .fetch_optional(connection)
        .await?;
    Ok(current == Some(epoch))
}

/// The leader as recorded: who took the lead last, with which epoch, since when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderRow {
    /// The replica that took the lead last; `None` before the first leader and after a
    /// graceful release. (A leader that died stays named until the next one takes over:
    /// compare the replica's heartbeat.)
    pub replica: Option<String>,
    /// Bumped each time a replica takes the lead.
    pub epoch: i64,
    /// When the current leader took the lead.
    pub since: Option<Timestamp>,
}

/// Reads the `leader` row.
pub async fn leader(pool: &PgPool) -> Result<Option<LeaderRow>, sqlx::Error> {
    let row = sqlx::query("SELECT replica, epoch, since FROM leader WHERE id = 1")
        .fetch_optional(pool)
        .await?;
    row.map(|row| {
        Ok(LeaderRow {
            replica: row.try_get("replica")?,
            epoch: row.try_get("epoch")?,
            since: row.try_get::<Option<i64>, _>("since")?.map(Timestamp::from_unix),
        })
    })
    .transpose()
}

/// A connection for the lock alone, with the keepalive settings of
/// [`LOCK_SESSION_SETTINGS`] and a name operators can find in `pg_stat_activity`.
async fn open_lock_session(options: &PgConnectOptions, replica: &str) -> Result<PgConnection, sqlx::Error> {
    let options = options
        .clone()
        .application_name(&format!("drover leader lease {replica}"))
        .options(LOCK_SESSION_SETTINGS);
    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .unwrap_or_else(|_| Err(timed_out("connecting to PostgreSQL")))
}

/// One try: `None` when another session holds the lock; the new epoch and this session's
/// backend pid when this one took it and recorded itself as the leader.
async fn try_lead(
    connection: &mut PgConnection,
    replica: &str,
    clock: &dyn Clock,
) -> Result<Option<(i64, i32)>, sqlx::Error> {
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_KEY)
        .fetch_one(&mut *connection)
        .await?;
    if !locked {
        return Ok(None);
    }
    let mut transaction = connection.begin().await?;
    let epoch: Option<i64> = sqlx::query_scalar(
        "UPDATE leader SET replica = $1, epoch = epoch + 1, since = $2 WHERE id = 1 RETURNING epoch",
    )
    .bind(replica)
    .bind(clock.now().unix())
    .fetch_optional(&mut *transaction)
    .await?;
    let Some(epoch) = epoch else {
        return Err(sqlx::Error::Protocol(
            "the leader table has no row 1: the database is not migrated for several coordinators".to_owned(),
        ));
    };
    transaction.commit().await?;
    let session_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *connection)
        .await?;
    Ok(Some((epoch, session_pid)))
}

fn start_keeper(connection: PgConnection, epoch: i64, session_pid: i32) -> Lease {
    let (lost_sender, lost) = watch::channel(false);
    let (release, released) = oneshot::channel();
    let keeper = tokio::spawn(keep_lease(connection, epoch, lost_sender, released));
    Lease {
        epoch,
        session_pid,
        lost,
        release: Some(release),
        keeper: Some(keeper),
    }
}

/// Holds the lock's session: pings it, and on any failure marks the lease lost first,
/// then drops the connection (which frees the lock if the server still has it). On
/// release: clears `leader.replica`, unlocks, closes.
async fn keep_lease(
    mut connection: PgConnection,
    epoch: i64,
    lost: watch::Sender<bool>,
    mut released: oneshot::Receiver<()>,
) {
    let mut pings = tokio::time::interval(LEASE_PING_EVERY);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // A dropped sender (the Lease forgotten without Drop) counts as a release too.
            _ = &mut released => {
                lost.send_replace(true);
                let give_up = async {
                    sqlx::query("UPDATE leader SET replica = NULL WHERE id = 1 AND epoch = $1")
                        .bind(epoch)
                        .execute(&mut connection)
                        .await?;
                    sqlx::query("SELECT pg_advisory_unlock($1)").bind(LEADER_KEY).execute(&mut connection).await?;
                    Ok::<_, sqlx::Error>(())
                };
                if let Err(error) = tokio::time::timeout(LEASE_PING_TIMEOUT, give_up)
                    .await
                    .unwrap_or_else(|_| Err(timed_out("giving up the lead")))
                {
                    tracing::warn!(%error, "could not give up the lead cleanly; closing its connection frees it");
                }
                let _ = tokio::time::timeout(LEASE_PING_TIMEOUT, connection.close()).await;
                tracing::info!(epoch, "gave up the lead");
                return;
            }
            _ = pings.tick() => {
                let ping = sqlx::query("SELECT 1").execute(&mut connection);
                let failure = match tokio::time::timeout(LEASE_PING_TIMEOUT, ping).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => format!("no answer within {LEASE_PING_TIMEOUT:?}"),
                };
                // First stop the driver, then anything else.
                lost.send_replace(true);
                drop(connection);
                tracing::error!(
                    epoch,
                    reason = %failure,
                    "lost the lead: the connection holding the leader lock failed; \
                     this coordinator stops driving rollouts and campaigns again"
                );
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Replica heartbeats
// ---------------------------------------------------------------------------------------

/// What a replica says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// Unique per process: see [`new_replica_id`].
    pub id: String,
    /// Where it serves (its public URL or listen address).
    pub address: String,
    /// Its drover version.
    pub version: String,
    /// When the process started.
    pub started_at: Timestamp,
}

/// A replica as listed by `drover coordinators`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRow {
    pub id: String,
    pub address: String,
    pub version: String,
    pub started_at: Timestamp,
    /// When it last called [`heartbeat`].
    pub heartbeat_at: Timestamp,
    /// Whether the `leader` row names it (see [`LeaderRow::replica`] for a dead leader).
    pub leader: bool,
}

/// A replica id that is unique per process: `<hostname>:<listen port>-<8 random hex>`.
/// Hostname and port say where to look; the random part keeps a restarted process (or a
/// second one on a host whose name is not unique) from passing for the one before, whose
/// row then ages out ([`FORGET_SILENT_AFTER`]).
pub fn new_replica_id(listen_port: u16) -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{hostname}:{listen_port}-{:08x}", random_u64() as u32)
}

/// Records that `replica` is alive at `now` (inserting its row the first time).
pub async fn heartbeat(pool: &PgPool, replica: &ReplicaInfo, now: Timestamp) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO replicas (id, address, version, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, version = EXCLUDED.version, \
         started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at",
    )
    .bind(&replica.id)
    .bind(&replica.address)
    .bind(&replica.version)
    .bind(replica.started_at.unix())
    .bind(now.unix())
    .execute(pool)
    .await?;
    Ok(())
}

/// Every replica heard from (and not yet forgotten), by id, with the leader marked.
pub async fn replicas(pool: &PgPool) -> Result<Vec<ReplicaRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT r.id, r.address, r.version, r.started_at, r.heartbeat_at, l.id IS NOT NULL AS leader \
         FROM replicas r LEFT JOIN leader l ON l.id = 1 AND l.replica = r.id ORDER BY r.id",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            let time = |column: &str| -> Result<Timestamp, sqlx::Error> {
                Ok(Timestamp::from_unix(
                    row.try_get::<Option<i64>, _>(column)?.unwrap_or(0),
                ))
            };
            Ok(ReplicaRow {
                id: row.try_get("id")?,
                address: row.try_get::<Option<String>, _>("address")?.unwrap_or_default(),
                version: row.try_get::<Option<String>, _>("version")?.unwrap_or_default(),
                started_at: time("started_at")?,
                heartbeat_at: time("heartbeat_at")?,
                leader: row.try_get("leader")?,
            })
        })
        .collect()
}

/// Removes replicas not heard from for `silent_for` (e.g. [`FORGET_SILENT_AFTER`]), so
/// the list does not grow with every restart; returns how many.
pub async fn forget_silent_replicas(pool: &PgPool, now: Timestamp, silent_for: Duration) -> Result<u64, sqlx::Error> {
    let silent_for = i64::try_from(silent_for.as_secs()).unwrap_or(i64::MAX);
    let result = sqlx::query("DELETE FROM replicas WHERE heartbeat_at < $1")
        .bind(now.unix().saturating_sub(silent_for))
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

/// Reconnect delays: from 100 ms doubling to 2 s, each drawn uniformly from the upper
/// half of its step, so that replicas that lost the database together do not all knock
/// at the same instant.
#[derive(Debug)]
struct Backoff {
    step: Duration,
}

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { step: BACKOFF_FIRST }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(BACKOFF_MAX);
        let half = step / 2;
        half + half.mul_f64(random_u64() as f64 / u64::MAX as f64)
    }
}

/// Randomness for jitter and ids (the OS's generator; never fails on Linux, and a failure
/// would only cost spread).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        return u64::from(nanos) ^ u64::from(std::process::id()) << 32;
    }
    u64::from_le_bytes(bytes)
}

fn timed_out(what: &str) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what}: no answer within the time allowed"),
    ))
}

#[cfg(test)]
mod tests;
