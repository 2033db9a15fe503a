//! The cluster mechanics against a real PostgreSQL of each test's own
//! ([`PostgresCluster`]): notifications, reconnects, the leader lease and its fencing,
//! heartbeats. Every wait is bounded.

use std::str::FromStr as _;
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};

use super::*;
use crate::server::clock::{ManualClock, SystemClock};
use crate::server::store::postgres::PostgresStore;
use crate::testing::PostgresCluster;

/// A running cluster (blocking calls moved off the runtime's worker), its connection
/// options and a pool, the database migrated by the PostgreSQL store (migration 0008
/// makes the `leader` and `replicas` tables).
async fn database() -> (PostgresCluster, PgConnectOptions, PgPool) {
    let cluster = tokio::task::block_in_place(PostgresCluster::start);
    let options = PgConnectOptions::from_str(&cluster.url()).expect("the fixture's URL parses");
    let store = PostgresStore::open(&cluster.url())
        .await
        .expect("open and migrate the test database");
    (cluster, options, store.pool.clone())
}

/// The next batch, failing the test after `within`.
async fn next_batch(listener: &mut ChangeListener, within: Duration) -> Vec<Change> {
    tokio::time::timeout(within, listener.recv())
        .await
        .unwrap_or_else(|_| panic!("no change heard within {within:?}"))
}

/// Waits (bounded) until a batch holds `wanted`; returns everything heard until then.
async fn hear(listener: &mut ChangeListener, wanted: &Change, within: Duration) -> Vec<Change> {
    let deadline = Instant::now() + within;
    let mut heard = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = tokio::time::timeout(left, listener.recv())
            .await
            .unwrap_or_else(|_| panic!("{wanted:?} not heard within {within:?}; heard {heard:?}"));
        let found = batch.contains(wanted);
        heard.extend(batch);
        if found {
            return heard;
        }
    }
}

async fn notify(connection: &mut PgConnection, change: &Change) {
    for payload in change.payloads() {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&mut *connection)
            .await
            .expect("notify");
    }
}

fn host(name: &str) -> HostId {
    name.parse().expect("valid host id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_sent_in_a_transaction_arrives_after_commit_and_never_after_rollback() {
    let (_cluster, options, pool) = database().await;
    let mut listener = ChangeListener::start(options).await.expect("listen");
    let mut connection = pool.acquire().await.expect("connection");

    let mut transaction = connection.begin().await.expect("begin");
    notify(&mut transaction, &Change::Model { generation: 7 }).await;
    // Not before the commit (a bounded look: nothing may arrive, so nothing to await).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(listener.try_recv(), Vec::<Change>::new(), "heard before the commit");
    transaction.commit().await.expect("commit");
    assert_eq!(
        next_batch(&mut listener, Duration::from_secs(5)).await,
        vec![Change::Model { generation: 7 }]
    );

    let mut transaction = connection.begin().await.expect("begin");
    notify(&mut transaction, &Change::Model { generation: 8 }).await;
    transaction.rollback().await.expect("rollback");
    // PostgreSQL delivers in commit order: once this later change is heard, the rolled
    // back one would have been too.
    let mut transaction = connection.begin().await.expect("begin");
    notify(&mut transaction, &Change::Reports(vec![host("web-1"), host("web-2")])).await;
    notify(&mut transaction, &Change::Reports(vec![host("web-2"), host("web-3")])).await;
    notify(&mut transaction, &Change::AdminTokens).await;
    transaction.commit().await.expect("commit");
    let heard = hear(&mut listener, &Change::AdminTokens, Duration::from_secs(5)).await;
    assert!(
        !heard.iter().any(|change| matches!(change, Change::Model { .. })),
        "a rolled-back notification arrived: {heard:?}"
    );
    let reported: Vec<HostId> = heard
        .iter()
        .filter_map(|change| match change {
            Change::Reports(hosts) => Some(hosts.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        reported.contains(&host("web-1")) && reported.contains(&host("web-3")),
        "{heard:?}"
    );

    // A payload this version does not know asks for a full re-read.
    sqlx::query("SELECT pg_notify($1, 'z from a newer drover')")
        .bind(CHANNEL)
        .execute(&mut *connection)
        .await
        .expect("notify");
    assert_eq!(
        next_batch(&mut listener, Duration::from_secs(5)).await,
        vec![Change::Resync]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_the_database_restarts_and_says_resync() {
    let (mut cluster, options, pool) = database().await;
    let mut listener = ChangeListener::start(options).await.expect("listen");
    drop(pool);

    let restarted = Instant::now();
    tokio::task::block_in_place(|| cluster.restart());
    assert_eq!(
        next_batch(&mut listener, Duration::from_secs(15)).await,
        vec![Change::Resync]
    );
    eprintln!("listener resynced {:?} after the restart began", restarted.elapsed());

    // And it hears again: the Resync comes only once LISTEN is active.
    let mut connection = PgConnection::connect(&cluster.url())
        .await
        .expect("connect after the restart");
    notify(&mut connection, &Change::Model { generation: 9 }).await;
    assert_eq!(
        next_batch(&mut listener, Duration::from_secs(5)).await,
        vec![Change::Model { generation: 9 }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_waits_out_a_dead_database_with_bounded_backoff_and_resyncs_when_it_is_back() {
    let (mut cluster, options, pool) = database().await;
    drop(pool);
    let mut listener = ChangeListener::start(options).await.expect("listen");
    tokio::task::block_in_place(|| cluster.kill());
    // Nothing to await while the database is down: watch a fixed while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = listener.reconnect_attempts();
    eprintln!("{attempts} reconnect attempts in 3 s without a database");
    // Delays of 50-100, 100-200, 200-400, 400-800 ms, 1-2 s: 2 to 6 tries in 3 s.
    assert!((2..=8).contains(&attempts), "{attempts} reconnect attempts in 3 s");
    assert_eq!(
        listener.try_recv(),
        Vec::<Change>::new(),
        "a resync before the database is back"
    );

    tokio::task::block_in_place(|| cluster.restart());
    assert_eq!(
        next_batch(&mut listener, Duration::from_secs(10)).await,
        vec![Change::Resync]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_notices_a_silent_network_cut_and_resyncs_on_a_new_connection() {
    let (cluster, options, pool) = database().await;
    let mut listener = ChangeListener::start(options).await.expect("listen");
    let client_port: i32 = sqlx::query_scalar(
        "SELECT client_port FROM pg_stat_activity WHERE application_name = 'drover change listener'",
    )
    .fetch_one(&pool)
    .await
    .expect("the listener's session is listed");
    let cut = CutConnection::new(u16::try_from(client_port).expect("a port"), cluster.port());
    let cut_at = Instant::now();
    // Silence for 5 s, then a check that gets no answer within 3 s, then a new connection.
    assert_eq!(
        next_batch(&mut listener, Duration::from_secs(12)).await,
        vec![Change::Resync]
    );
    eprintln!("listener resynced {:?} after a silent network cut", cut_at.elapsed());
    let mut connection = pool.acquire().await.expect("connection");
    notify(&mut connection, &Change::AdminTokens).await;
    assert_eq!(
        next_batch(&mut listener, Duration::from_secs(5)).await,
        vec![Change::AdminTokens]
    );
    drop(cut);
}

#[test]
fn a_batch_merges_what_it_holds_and_a_resync_covers_everything() {
    let mut batch = Batch::default();
    batch.add(Change::Model { generation: 3 });
    batch.add(Change::Reports(vec![host("a"), host("b")]));
    batch.add(Change::Model { generation: 5 });
    batch.add(Change::Model { generation: 4 });
    batch.add(Change::Reports(vec![host("b"), host("c")]));
    batch.add(Change::Hosts(vec![host("a")]));
    batch.add(Change::AdminTokens);
    assert_eq!(
        batch.into_changes(),
        vec![
            Change::Model { generation: 5 },
            Change::Reports(vec![host("a"), host("b"), host("c")]),
            Change::Hosts(vec![host("a")]),
            Change::AdminTokens,
        ]
    );

    let mut batch = Batch::default();
    batch.add(Change::Reports(vec![host("a")]));
    batch.add(Change::Resync);
    assert_eq!(batch.into_changes(), vec![Change::Resync]);
    assert_eq!(Batch::default().into_changes(), Vec::<Change>::new());
}

#[test]
fn reconnect_delays_grow_from_100ms_to_2s_and_are_jittered() {
    let mut backoff = Backoff::default();
    let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
    let first = delays[0];
    assert!(
        first >= Duration::from_millis(50) && first <= Duration::from_millis(100),
        "{first:?}"
    );
    for delay in &delays[6..] {
        assert!(
            *delay >= Duration::from_secs(1) && *delay <= Duration::from_secs(2),
            "{delays:?}"
        );
    }
    let mut other = Backoff::default();
    let others: Vec<Duration> = (0..10).map(|_| other.next_delay()).collect();
    assert_ne!(delays, others, "two replicas' delays are not the same sequence");
}

/// Campaigns in a task of its own (so the test can watch it without driving it).
fn spawn_campaign(options: &PgConnectOptions, replica: &str) -> JoinHandle<Lease> {
    let options = options.clone();
    let replica = replica.to_owned();
    tokio::spawn(async move { campaign(&options, &replica, &SystemClock).await })
}

async fn terminate(pool: &PgPool, session_pid: i32) {
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(session_pid)
        .fetch_one(pool)
        .await
        .expect("terminate the leader's session");
    assert!(
        terminated,
        "the leader's session {session_pid} was not there to terminate"
    );
}

/// Waits (bounded) for whichever campaign finishes first; the other is returned still
/// campaigning.
async fn first_leader(mut a: JoinHandle<Lease>, mut b: JoinHandle<Lease>) -> (Lease, &'static str, JoinHandle<Lease>) {
    tokio::time::timeout(Duration::from_secs(15), async {
        tokio::select! {
            lease = &mut a => (lease.expect("campaign a"), "a", b),
            lease = &mut b => (lease.expect("campaign b"), "b", a),
        }
    })
    .await
    .expect("no campaign won within 15 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_of_two_campaigns_leads_and_the_other_takes_over_within_5s_when_the_leader_connection_dies() {
    let (_cluster, options, pool) = database().await;
    let (leader_lease, leader_name, mut other) =
        first_leader(spawn_campaign(&options, "a"), spawn_campaign(&options, "b")).await;
    assert_eq!(leader_lease.epoch(), 1);
    let recorded = leader(&pool).await.expect("read leader").expect("leader row");
    assert_eq!(recorded.replica.as_deref(), Some(leader_name));
    // The other keeps trying and does not lead (several of its 500 ms retries pass).
    assert!(
        tokio::time::timeout(Duration::from_secs(2), &mut other).await.is_err(),
        "two campaigns lead at once"
    );
    assert!(!leader_lease.is_lost());

    // kill -9 of the leader, as PostgreSQL sees it: its lock session ends.
    let killed = Instant::now();
    terminate(&pool, leader_lease.session_pid()).await;
    let successor = tokio::time::timeout(Duration::from_secs(5), other)
        .await
        .expect("no takeover within 5 s")
        .expect("campaign");
    let takeover = killed.elapsed();
    eprintln!("takeover after the leader's session was terminated: {takeover:?}");
    assert!(takeover < Duration::from_secs(5), "{takeover:?}");
    assert_eq!(successor.epoch(), 2);
    assert_ne!(
        leader(&pool)
            .await
            .expect("read leader")
            .expect("leader row")
            .replica
            .as_deref(),
        Some(leader_name)
    );
    // The old leader learns it too, within a ping and its timeout.
    tokio::time::timeout(
        LEASE_PING_EVERY + LEASE_PING_TIMEOUT + Duration::from_secs(1),
        leader_lease.lost(),
    )
    .await
    .expect("the old lease not marked lost");
    let lost_after = killed.elapsed();
    eprintln!("old leader marked its lease lost {lost_after:?} after its session was terminated");

    // A graceful release hands over within one retry.
    let third = spawn_campaign(&options, "c");
    let released = Instant::now();
    successor.release().await;
    let third = tokio::time::timeout(Duration::from_secs(3), third)
        .await
        .expect("no takeover within 3 s of a release")
        .expect("campaign");
    eprintln!("takeover after a graceful release: {:?}", released.elapsed());
    assert_eq!(third.epoch(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leader_is_fenced_by_the_epoch() {
    let (_cluster, options, pool) = database().await;
    let old = campaign(&options, "old", &SystemClock).await;
    let old_epoch = old.epoch();

    // A step of the old leader in flight: its transaction read the epoch FOR SHARE.
    let mut step = pool.begin().await.expect("begin");
    assert!(check_epoch(&mut step, old_epoch).await.expect("check"));

    // The old leader's session dies; the new one takes the lock but its epoch bump waits
    // for the step in flight.
    terminate(&pool, old.session_pid()).await;
    let mut new = spawn_campaign(&options, "new");
    assert!(
        tokio::time::timeout(Duration::from_millis(1_500), &mut new)
            .await
            .is_err(),
        "the new leader bumped the epoch under a step in flight"
    );
    step.commit()
        .await
        .expect("the step that started under its epoch commits");
    let new = tokio::time::timeout(Duration::from_secs(5), new)
        .await
        .expect("the new leader took over once the step committed")
        .expect("campaign");
    assert_eq!(new.epoch(), old_epoch + 1);

    // From now on the old epoch is refused, the new one accepted.
    let mut step = pool.begin().await.expect("begin");
    assert!(
        !check_epoch(&mut step, old_epoch).await.expect("check"),
        "a stale leader passed"
    );
    assert!(check_epoch(&mut step, new.epoch()).await.expect("check"));
    step.rollback().await.expect("rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_lost_when_the_database_restarts_and_a_replica_leads_again_after() {
    let (mut cluster, options, pool) = database().await;
    let lease = campaign(&options, "a", &SystemClock).await;
    drop(pool);
    tokio::task::block_in_place(|| cluster.restart());
    tokio::time::timeout(
        LEASE_PING_EVERY + LEASE_PING_TIMEOUT + Duration::from_secs(1),
        lease.lost(),
    )
    .await
    .expect("the lease not marked lost after a restart");
    assert!(lease.is_lost());
    let again = tokio::time::timeout(Duration::from_secs(15), campaign(&options, "b", &SystemClock))
        .await
        .expect("no replica leads again within 15 s of the restart");
    assert_eq!(
        again.epoch(),
        lease.epoch() + 1,
        "the epoch survived the restart and moved on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_session_asks_the_server_to_notice_a_vanished_leader_within_seconds() {
    let (_cluster, options, pool) = database().await;
    let mut session = open_lock_session(&options, "a").await.expect("open the lock session");
    for (setting, wanted) in [
        ("tcp_keepalives_idle", "1"),
        ("tcp_keepalives_interval", "1"),
        ("tcp_keepalives_count", "3"),
        ("tcp_user_timeout", "3000"),
        ("application_name", "drover leader lease a"),
    ] {
        let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&mut session)
            .await
            .expect("show");
        assert_eq!(value, wanted, "{setting}");
    }
    drop(session);

    // The lease holds LEADER_KEY on the session it names.
    let lease = campaign(&options, "a", &SystemClock).await;
    let lock_holder: i32 = sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND ((classid::bigint << 32) | objid::bigint) = $1",
    )
    .bind(LEADER_KEY)
    .fetch_one(&pool)
    .await
    .expect("the leader lock is held");
    assert_eq!(lock_holder, lease.session_pid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_upserted_listed_with_the_leader_and_silent_replicas_are_forgotten() {
    let (_cluster, options, pool) = database().await;
    let clock = ManualClock::new(Timestamp::from_unix(1_800_000_000));
    let replica = |id: &str| ReplicaInfo {
        id: id.to_owned(),
        address: format!("https://{id}.example:8443"),
        version: "1.2.3".to_owned(),
        started_at: Timestamp::from_unix(1_799_999_000),
    };
    heartbeat(&pool, &replica("a"), clock.now()).await.expect("heartbeat a");
    heartbeat(&pool, &replica("b"), clock.now()).await.expect("heartbeat b");
    let lease = campaign(&options, "b", &clock).await;
    assert_eq!(
        leader(&pool).await.expect("read leader"),
        Some(LeaderRow {
            replica: Some("b".to_owned()),
            epoch: lease.epoch(),
            since: Some(clock.now()),
        })
    );

    clock.advance(drover_protocol::Duration::from_secs(3_000));
    heartbeat(&pool, &replica("b"), clock.now())
        .await
        .expect("heartbeat b again");
    let listed = replicas(&pool).await.expect("list");
    assert_eq!(
        listed,
        vec![
            ReplicaRow {
                id: "a".to_owned(),
                address: "https://a.example:8443".to_owned(),
                version: "1.2.3".to_owned(),
                started_at: Timestamp::from_unix(1_799_999_000),
                heartbeat_at: Timestamp::from_unix(1_800_000_000),
                leader: false,
            },
            ReplicaRow {
                id: "b".to_owned(),
                address: "https://b.example:8443".to_owned(),
                version: "1.2.3".to_owned(),
                started_at: Timestamp::from_unix(1_799_999_000),
                heartbeat_at: Timestamp::from_unix(1_800_003_000),
                leader: true,
            },
        ]
    );

    clock.advance(drover_protocol::Duration::from_secs(700));
    assert_eq!(
        forget_silent_replicas(&pool, clock.now(), FORGET_SILENT_AFTER)
            .await
            .expect("forget"),
        1
    );
    let ids: Vec<String> = replicas(&pool)
        .await
        .expect("list")
        .into_iter()
        .map(|row| row.id)
        .collect();
    assert_eq!(ids, vec!["b".to_owned()]);

    // A graceful release leaves no leader named.
    lease.release().await;
    assert_eq!(
        leader(&pool).await.expect("read leader").expect("leader row").replica,
        None
    );
    assert!(!replicas(&pool).await.expect("list")[0].leader);
}

#[test]
fn replica_ids_name_the_host_and_port_and_differ_per_process() {
    let first = new_replica_id(8443);
    let second = new_replica_id(8443);
    assert_ne!(first, second);
    let (place, suffix) = first.rsplit_once('-').expect("a random suffix");
    assert!(place.ends_with(":8443"), "{first}");
    assert_eq!(suffix.len(), 8, "{first}");
    assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{first}");
}

/// Drops every packet of one TCP connection on the loopback interface, both ways, until
/// dropped: a network cut that sends no FIN and no RST, as a pulled cable or a frozen
/// machine. Needs root and iptables (the host tests run as root already).
struct CutConnection {
    rules: Vec<Vec<String>>,
}

impl CutConnection {
    fn new(client_port: u16, server_port: u16) -> CutConnection {
        let rule = |from: u16, to: u16| -> Vec<String> {
            [
                "-i",
                "lo",
                "-p",
                "tcp",
                "--sport",
                &from.to_string(),
                "--dport",
                &to.to_string(),
                "-j",
                "DROP",
            ]
            .map(str::to_owned)
            .to_vec()
        };
        let cut = CutConnection {
            rules: vec![rule(client_port, server_port), rule(server_port, client_port)],
        };
        for rule in &cut.rules {
            let status = std::process::Command::new("iptables")
                .args(["-w", "-I", "INPUT"])
                .args(rule)
                .status()
                .expect("run iptables (apt-get install iptables; the test needs root)");
            assert!(
                status.success(),
                "iptables -I INPUT {rule:?} failed (the test needs root)"
            );
        }
        cut
    }
}

impl Drop for CutConnection {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = std::process::Command::new("iptables")
                .args(["-w", "-D", "INPUT"])
                .args(rule)
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_without_a_fin_stops_before_the_server_frees_the_lock_and_another_leads_within_5s() {
    let (cluster, options, pool) = database().await;
    let old = campaign(&options, "old", &SystemClock).await;
    let client_port: i32 = sqlx::query_scalar("SELECT client_port FROM pg_stat_activity WHERE pid = $1")
        .bind(old.session_pid())
        .fetch_one(&pool)
        .await
        .expect("the lease's session is listed");
    let mut successor = spawn_campaign(&options, "new");

    let cut = CutConnection::new(u16::try_from(client_port).expect("a port"), cluster.port());
    let cut_at = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), old.lost())
        .await
        .expect("the cut-off leader did not mark its lease lost within 3 s");
    let stopped_after = cut_at.elapsed();
    assert!(
        tokio::time::timeout(Duration::ZERO, &mut successor).await.is_err(),
        "another replica led before the cut-off one stopped ({stopped_after:?})"
    );
    let successor = tokio::time::timeout(Duration::from_secs(5).saturating_sub(cut_at.elapsed()), successor)
        .await
        .expect("no takeover within 5 s of a network cut")
        .expect("campaign");
    let takeover = cut_at.elapsed();
    drop(cut);
    eprintln!("network cut: the old leader stopped after {stopped_after:?}, another led after {takeover:?}");
    assert_eq!(successor.epoch(), old.epoch() + 1);
}
