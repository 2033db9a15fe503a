//! The store's behaviour through its interface: what any backend must do. Every test
//! here runs against both backends (`on_both_backends!`: a scratch SQLite file, and a
//! fresh database on a PostgreSQL cluster of the test binary's own). A backend's own
//! matters (its migrations' lock, rows as older coordinators left them) are tested in
//! `sqlite/tests.rs` and `postgres/tests.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU32;
use std::sync::{Mutex, PoisonError, Weak};

use drover_protocol::Timestamp;
use drover_protocol::api::{AuditSource, TokenName};

use super::*;
use crate::testing::PostgresCluster;

pub(super) fn at(seconds: i64) -> Timestamp {
    Timestamp::from_unix(1_800_000_000 + seconds)
}

/// A fresh, migrated database of one backend with a store open on it; removed (the file's
/// directory, or the cluster once no test uses it) when dropped.
pub(super) struct Scratch {
    pub(super) store: Store,
    pub(super) database: Database,
    /// The SQLite file's directory.
    directory: Option<PathBuf>,
    /// The PostgreSQL cluster the database is on, kept running while this lives.
    _cluster: Option<Arc<PostgresCluster>>,
}

impl Scratch {
    /// A new SQLite file in its own directory.
    pub(super) async fn sqlite(name: &str) -> Scratch {
        static CREATED: AtomicU32 = AtomicU32::new(0);
        let directory = std::env::temp_dir().join(format!(
            "drover-store-{name}-{}-{}",
            std::process::id(),
            CREATED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&directory).expect("scratch directory");
        let database = Database::Sqlite(directory.join("coordinator.db"));
        let store = Store::open_database(&database).await.expect("open");
        Scratch {
            store,
            database,
            directory: Some(directory),
            _cluster: None,
        }
    }

    /// A new database on the shared PostgreSQL cluster.
    pub(super) async fn postgres() -> Scratch {
        let (cluster, database) = scratch_postgres_database();
        let store = Store::open_database(&database).await.expect("open");
        Scratch {
            store,
            database,
            directory: None,
            _cluster: Some(cluster),
        }
    }

    /// The SQLite file's directory.
    pub(super) fn directory(&self) -> &Path {
        self.directory.as_deref().expect("a SQLite scratch database")
    }

    /// Another store on the same database: another coordinator (replica).
    pub(super) async fn open_another(&self) -> Store {
        Store::open_database(&self.database).await.expect("open again")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(directory) = &self.directory {
            let _ = std::fs::remove_dir_all(directory);
        }
    }
}

/// A new, empty (not migrated) database on the PostgreSQL cluster this test binary shares
/// between the tests that run at the same time: started by the first, stopped and removed
/// when the last lets go of it (a cluster in a `static` would outlive the process).
pub(crate) fn scratch_postgres_database() -> (Arc<PostgresCluster>, Database) {
    static CLUSTER: Mutex<Weak<PostgresCluster>> = Mutex::new(Weak::new());
    static CREATED: AtomicU32 = AtomicU32::new(0);
    let cluster = {
        let mut shared = CLUSTER.lock().unwrap_or_else(PoisonError::into_inner);
        match shared.upgrade() {
            Some(cluster) => cluster,
            None => {
                let cluster = Arc::new(PostgresCluster::start());
                *shared = Arc::downgrade(&cluster);
                cluster
            }
        }
    };
    let name = format!("store_{}", CREATED.fetch_add(1, Ordering::Relaxed));
    let url = cluster.create_database(&name);
    (cluster, Database::Postgres(url))
}

/// Runs each named `async fn(Scratch)` as two tests, `on_sqlite::NAME` and
/// `on_postgres::NAME`, each on a fresh database of its backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Scratch::sqlite(stringify!($name)).await).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Scratch::postgres().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    a_revoked_bootstrap_token_stays_revoked_and_a_new_admin_token_file_replaces_it,
    a_name_is_unique_among_tokens_not_revoked_and_an_expired_one_is_replaced,
    a_token_enrolls_once_and_a_host_id_keeps_its_joins_removal_rejoin_and_renewals,
    a_stored_manifest_serial_never_goes_down_and_labels_commit_with_their_manifests,
    pins_and_holds_round_trip_with_who_when_and_why_and_the_history_is_per_app,
    the_latest_report_per_host_is_kept_and_events_are_trimmed_to_the_newest,
    a_rollout_step_commits_its_state_pins_history_and_manifests_together_or_not_at_all,
    a_host_enrolled_before_keys_were_recorded_renews_by_its_certificate_then_by_its_key,
    the_fleet_history_merges_every_source_newest_first_filtered_and_bounded,
    a_refused_revocation_writes_no_line,
    a_second_coordinator_with_an_old_model_gets_stale_and_writes_nothing,
    a_manifest_write_that_would_lower_or_repeat_a_serial_is_stale_and_writes_nothing,
    load_since_reads_the_model_and_only_newer_manifests_and_hosts_and_reports_are_read_by_id,
    a_fleet_wide_manifest_write_is_stored_whole_and_one_stale_serial_in_it_refuses_all_of_it,
    a_new_database_records_readable_from_with_each_version_from_the_one_that_added_it,
    a_database_one_additive_migration_ahead_is_used_as_it_is_and_takes_writes_and_loads,
    a_database_one_migration_ahead_that_changed_meaning_is_refused_and_left_unchanged,
);

/// Runs a statement with bound values on whichever backend `$store` is (test fixtures
/// that write rows as other coordinators or older versions did). Placeholders are `$1`,
/// `$2`, ... in the order they appear (SQLite reads them as named parameters, bound in
/// order of first appearance).
macro_rules! execute {
    ($store:expr, $sql:expr $(, $value:expr)* $(,)?) => {
        match &$store.backend {
            Backend::Sqlite(sqlite) => sqlx::query($sql)$(.bind($value))*.execute(&sqlite.pool).await.map(|_| ()),
            Backend::Postgres(postgres) => sqlx::query($sql)$(.bind($value))*.execute(&postgres.pool).await.map(|_| ()),
        }
    };
}

/// An admin change's line by `who`.
pub(super) fn admin_change(at: Timestamp, who: &str, what: &str) -> AdminChange {
    AdminChange {
        at,
        who: who.into(),
        host: None,
        what: what.into(),
        reason: None,
    }
}

fn state(tokens: &[AdminTokenRecord]) -> Vec<(String, String, bool)> {
    tokens
        .iter()
        .map(|token| (token.name.to_string(), token.hash.clone(), token.revoked_at.is_some()))
        .collect()
}

async fn a_revoked_bootstrap_token_stays_revoked_and_a_new_admin_token_file_replaces_it(scratch: Scratch) {
    let store = &scratch.store;
    store.bootstrap_admin_token("first", at(0)).await.expect("bootstrap");
    store.bootstrap_admin_token("first", at(1)).await.expect("again");
    let tokens = store.admin_tokens().await.expect("tokens");
    assert_eq!(state(&tokens), [("admin".into(), "first".into(), false)]);
    assert_eq!(tokens[0].created_by, BOOTSTRAP_CREATOR);

    let admin: TokenName = "admin".parse().expect("name");
    let revoked = admin_change(at(2), "alice", "revoked admin token admin");
    assert!(
        store
            .revoke_admin_token(&admin, at(2), "alice", &revoked)
            .await
            .expect("revoke")
    );
    assert!(
        !store
            .revoke_admin_token(&admin, at(3), "alice", &revoked)
            .await
            .expect("twice")
    );
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
}

async fn a_name_is_unique_among_tokens_not_revoked_and_an_expired_one_is_replaced(scratch: Scratch) {
    let store = &scratch.store;
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
        .insert_admin_token(&token("one", 0, Some(60)), &admin_change(at(0), "admin", "created ci"))
        .await
        .expect("insert");
    // While valid, a second `ci` is refused by the unique index (the service says so first).
    assert!(
        store
            .insert_admin_token(&token("two", 10, None), &admin_change(at(10), "admin", "created ci"))
            .await
            .is_err()
    );
    // Once expired, creating `ci` again revokes the old one in the same transaction.
    store
        .insert_admin_token(
            &token("three", 120, None),
            &admin_change(at(120), "admin", "created ci"),
        )
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
}

// --- Hosts, tokens, manifests ----------------------------------------------------------

fn host(id: &str) -> HostId {
    id.parse().expect("host id")
}

fn enrolled(id: &HostId, cert: &str, key: &str, joined_at: Timestamp) -> HostRecord {
    HostRecord {
        id: id.clone(),
        labels: Labels::from([("env".to_owned(), "prod".to_owned())]),
        cert_sha256: Some(cert.to_owned()),
        key_sha256: Some(key.to_owned()),
        cert_not_after: Some(joined_at.plus(drover_protocol::Duration::from_secs(86_400))),
        joined_at,
    }
}

fn manifest(id: &HostId, serial: u64) -> StoredManifest {
    StoredManifest {
        host: id.clone(),
        serial,
        envelope: bytes::Bytes::from(format!("envelope {serial}")),
        content_hash: format!("hash {serial}"),
        issued_at: at(0),
        expires_at: at(3600),
    }
}

fn host_line(at: Timestamp, what: &str, old: Option<&str>, new: Option<&str>) -> HostHistoryEntry {
    HostHistoryEntry {
        at,
        who: "alice".into(),
        what: what.into(),
        old_certificate: old.map(str::to_owned),
        new_certificate: new.map(str::to_owned),
    }
}

async fn only_host(store: &Store) -> (HostRecord, StoredManifest) {
    let mut snapshot = store.load().await.expect("load");
    assert_eq!((snapshot.hosts.len(), snapshot.manifests.len()), (1, 1));
    (snapshot.hosts.remove(0), snapshot.manifests.remove(0))
}

async fn a_token_enrolls_once_and_a_host_id_keeps_its_joins_removal_rejoin_and_renewals(scratch: Scratch) {
    let store = &scratch.store;
    let web = host("web-01");
    let labels = Labels::from([("env".to_owned(), "prod".to_owned())]);
    store
        .insert_token("t1", &labels, None, "alice", at(600), at(0))
        .await
        .expect("token");
    let token = store.check_token("t1", at(1)).await.expect("check");
    assert_eq!(
        token,
        Ok(TokenRecord {
            labels: labels.clone(),
            replace: None,
            replace_any: false,
            created_by: Some("alice".into())
        })
    );
    assert_eq!(
        store.check_token("other", at(1)).await.expect("check"),
        Err(TokenProblem::Unknown)
    );
    assert_eq!(
        store.check_token("t1", at(600)).await.expect("check"),
        Err(TokenProblem::Expired)
    );

    let joined = host_line(at(2), "joined", None, Some("cert-1"));
    let first = enrolled(&web, "cert-1", "key-1", at(2));
    let outcome = store
        .join_host("t1", &first, &manifest(&web, 1), (HostChange::Joined, &joined), at(2))
        .await
        .expect("join");
    assert_eq!(outcome, Ok(()));
    // The same token again (another join racing): refused, and nothing of it written.
    let intruder = host("web-02");
    let outcome = store
        .join_host(
            "t1",
            &enrolled(&intruder, "cert-x", "key-x", at(3)),
            &manifest(&intruder, 1),
            (HostChange::Joined, &joined),
            at(3),
        )
        .await
        .expect("second join");
    assert_eq!(outcome, Err(TokenProblem::Used));
    assert_eq!(
        store.check_token("t1", at(3)).await.expect("check"),
        Err(TokenProblem::Used)
    );
    assert_eq!(only_host(store).await, (first, manifest(&web, 1)));
    assert!(store.host_history(&intruder, 100).await.expect("history").is_empty());

    // Removed: the key and certificates stop counting; the serial stays for a re-join.
    let removed = host_line(at(4), "removed", Some("cert-1"), None);
    store.remove_host(&web, &removed, Some("why")).await.expect("remove");
    let (record, stored) = only_host(store).await;
    assert_eq!(
        (record.cert_sha256, record.key_sha256, record.cert_not_after),
        (None, None, None)
    );
    assert_eq!(stored.serial, 1);
    let renewal = host_line(at(5), "renewed", Some("cert-1"), Some("cert-2"));
    assert!(
        !store
            .renew_host(&web, "key-1", "cert-2", at(900), &renewal)
            .await
            .expect("renew")
    );

    // An explicit re-join of the id (`--replace web-01`), then a renewal of its new key.
    store
        .insert_token("t2", &labels, Some(&web), "alice", at(600), at(6))
        .await
        .expect("token");
    let token = store.check_token("t2", at(6)).await.expect("check").expect("usable");
    assert_eq!(token.replace.as_ref(), Some(&web));
    let rejoined = host_line(at(7), "rejoined", None, Some("cert-3"));
    let outcome = store
        .join_host(
            "t2",
            &enrolled(&web, "cert-3", "key-3", at(7)),
            &manifest(&web, 2),
            (HostChange::Rejoined, &rejoined),
            at(7),
        )
        .await
        .expect("rejoin");
    assert_eq!(outcome, Ok(()));
    let renewed = host_line(at(8), "renewed", Some("cert-3"), Some("cert-4"));
    assert!(
        store
            .renew_host(&web, "key-3", "cert-4", at(900), &renewed)
            .await
            .expect("renew")
    );
    let (record, stored) = only_host(store).await;
    assert_eq!(
        (
            record.cert_sha256.as_deref(),
            record.key_sha256.as_deref(),
            record.cert_not_after
        ),
        (Some("cert-4"), Some("key-3"), Some(at(900)))
    );
    assert_eq!(stored.serial, 2);

    let history = store.host_history(&web, 100).await.expect("history");
    assert_eq!(history, [joined, removed, rejoined.clone(), renewed.clone()]);
    assert_eq!(
        store.host_history(&web, 2).await.expect("history"),
        [rejoined, renewed],
        "the newest lines, oldest first"
    );
}

async fn a_stored_manifest_serial_never_goes_down_and_labels_commit_with_their_manifests(scratch: Scratch) {
    let store = &scratch.store;
    let web = host("web-01");
    store.save_manifests(&[manifest(&web, 5)]).await.expect("save");
    // A lower serial (a writer with an old model) is refused: the stored serial never
    // goes down (more in the serial guard's own test below).
    let lower = store.save_manifests(&[manifest(&web, 3)]).await;
    assert!(matches!(lower, Err(StoreError::Stale)), "{lower:?}");
    let snapshot = store.load().await.expect("load");
    assert_eq!(snapshot.manifests, [manifest(&web, 5)]);
    let labels = Labels::from([("tier".to_owned(), "edge".to_owned())]);
    store
        .set_labels(
            &web,
            &labels,
            &[manifest(&web, 6)],
            &admin_change(at(6), "admin", "labels"),
        )
        .await
        .expect("labels");
    store
        .put_group(
            "edge",
            &labels,
            &[manifest(&web, 7)],
            &admin_change(at(7), "admin", "group"),
        )
        .await
        .expect("group");
    let snapshot = store.load().await.expect("load");
    assert_eq!(snapshot.manifests, [manifest(&web, 7)]);
    assert_eq!(snapshot.groups, BTreeMap::from([("edge".to_owned(), labels)]));
    store
        .delete_group("edge", &admin_change(at(8), "admin", "deleted group"))
        .await
        .expect("delete group");
    assert!(store.load().await.expect("load").groups.is_empty());
}

// --- Pins, holds, history --------------------------------------------------------------

fn app(name: &str) -> AppName {
    name.parse().expect("app")
}

fn version(text: &str) -> Version {
    text.parse().expect("version")
}

fn app_line(app_name: Option<&str>, at: Timestamp, who: &str, what: &str, reason: Option<&str>) -> HistoryRecord {
    HistoryRecord {
        app: app_name.map(app),
        host: None,
        rollout: None,
        at,
        who: who.into(),
        what: what.into(),
        reason: reason.map(str::to_owned),
    }
}

async fn pins_and_holds_round_trip_with_who_when_and_why_and_the_history_is_per_app(scratch: Scratch) {
    let store = &scratch.store;
    let (web, db) = (app("web"), app("db"));
    let edge = Scope::Group("edge".into());
    let pin_web = app_line(
        Some("web"),
        at(1),
        "alice",
        "pinned web 1.0 on the fleet",
        Some("release day"),
    );
    store
        .change_pin(
            &web,
            &Scope::Fleet,
            Some(&version("1.0")),
            std::slice::from_ref(&pin_web),
            &[],
        )
        .await
        .expect("pin");
    let pin_edge = app_line(Some("web"), at(2), "bob", "pinned web 1.1 on group edge", None);
    store
        .change_pin(&web, &edge, Some(&version("1.1")), std::slice::from_ref(&pin_edge), &[])
        .await
        .expect("pin");
    let pin_db = app_line(Some("db"), at(3), "carol", "pinned db 9 on the fleet", None);
    store
        .change_pin(&db, &Scope::Fleet, Some(&version("9")), &[pin_db], &[])
        .await
        .expect("pin");
    let pins = store.pins(Some(&web)).await.expect("pins");
    assert_eq!(
        pins,
        [
            PinInfo {
                app: web.clone(),
                scope: Scope::Fleet,
                version: version("1.0"),
                set_by: Some("alice".into()),
                set_at: Some(at(1)),
                rollout: None,
                reason: Some("release day".into()),
            },
            PinInfo {
                app: web.clone(),
                scope: edge.clone(),
                version: version("1.1"),
                set_by: Some("bob".into()),
                set_at: Some(at(2)),
                rollout: None,
                reason: None,
            },
        ]
    );
    assert_eq!(store.pins(None).await.expect("pins").len(), 3);

    // A hold keeps who set it first; holding again changes nothing.
    let hold = app_line(None, at(4), "dave", "held the fleet", Some("incident"));
    store
        .change_hold(&Scope::Fleet, true, std::slice::from_ref(&hold), &[])
        .await
        .expect("hold");
    let again = app_line(None, at(5), "erin", "held the fleet", None);
    store
        .change_hold(&Scope::Fleet, true, std::slice::from_ref(&again), &[])
        .await
        .expect("hold again");
    assert_eq!(
        store.holds().await.expect("holds"),
        [HoldInfo {
            scope: Scope::Fleet,
            set_by: Some("dave".into()),
            set_at: Some(at(4)),
            reason: Some("incident".into()),
        }]
    );
    let snapshot = store.load().await.expect("load");
    assert_eq!(snapshot.holds, BTreeSet::from([Scope::Fleet]));
    assert_eq!(snapshot.pins.get(&(web.clone(), edge.clone())), Some(&version("1.1")));

    // Cleared: gone from the pins, the holds and the snapshot.
    let unpin = app_line(Some("web"), at(6), "bob", "unpinned web on group edge", None);
    store
        .change_pin(&web, &edge, None, std::slice::from_ref(&unpin), &[])
        .await
        .expect("unpin");
    let unhold = app_line(None, at(7), "dave", "released the fleet", None);
    store
        .change_hold(&Scope::Fleet, false, std::slice::from_ref(&unhold), &[])
        .await
        .expect("unhold");
    assert_eq!(store.pins(Some(&web)).await.expect("pins").len(), 1);
    assert!(store.holds().await.expect("holds").is_empty());
    let snapshot = store.load().await.expect("load");
    assert!(snapshot.holds.is_empty());
    assert_eq!(snapshot.pins.len(), 2);

    // web's history: its own lines and the holds (which cover every app), not db's.
    let entry = |line: &HistoryRecord| HistoryEntry {
        at: line.at,
        app: line.app.clone(),
        who: line.who.clone(),
        rollout: line.rollout.clone(),
        what: line.what.clone(),
        reason: line.reason.clone(),
    };
    let expected: Vec<HistoryEntry> = [&pin_web, &pin_edge, &hold, &again, &unpin, &unhold]
        .into_iter()
        .map(entry)
        .collect();
    assert_eq!(store.history(&web, 100).await.expect("history"), expected);
    assert_eq!(store.history(&web, 2).await.expect("history"), expected[4..]);
}

// --- Reports and events ----------------------------------------------------------------

fn report(id: &HostId, sent_at: Timestamp, events: &[(i64, &str)]) -> HostReport {
    HostReport {
        schema: drover_protocol::report::REPORT_SCHEMA,
        host: id.clone(),
        sent_at,
        manifest_serial: Some(1),
        held: false,
        manifest_rejection: None,
        facts: drover_protocol::report::AgentFacts {
            agent_version: "test".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
        },
        apps: BTreeMap::new(),
        events: events
            .iter()
            .map(|(seconds, message)| ReportEvent {
                at: at(*seconds),
                app: Some(app("web")),
                message: (*message).to_owned(),
            })
            .collect(),
    }
}

async fn the_latest_report_per_host_is_kept_and_events_are_trimmed_to_the_newest(scratch: Scratch) {
    let store = &scratch.store;
    let (web, db) = (host("web-01"), host("db-01"));
    store
        .save_reports(&[
            (report(&web, at(1), &[(1, "fetching web 1.0")]), at(2)),
            (report(&db, at(1), &[]), at(2)),
        ])
        .await
        .expect("reports");
    let newer = report(&web, at(10), &[(9, "installing web 1.0"), (10, "web 1.0 healthy")]);
    store.save_reports(&[(newer.clone(), at(11))]).await.expect("reports");
    let mut reports = store.load().await.expect("load").reports;
    reports.sort_by(|a, b| a.0.host.cmp(&b.0.host));
    assert_eq!(reports, [(report(&db, at(1), &[]), at(2)), (newer, at(11))]);
    let messages = |events: Vec<ReportEvent>| events.into_iter().map(|event| event.message).collect::<Vec<_>>();
    assert_eq!(
        messages(store.events(&web).await.expect("events")),
        ["fetching web 1.0", "installing web 1.0", "web 1.0 healthy"]
    );
    assert!(store.events(&db).await.expect("events").is_empty());

    // Past EVENTS_PER_HOST the oldest go, per host.
    let many: Vec<(i64, String)> = (0..EVENTS_PER_HOST + 5)
        .map(|index| (100 + index, format!("event {index}")))
        .collect();
    let many: Vec<(i64, &str)> = many
        .iter()
        .map(|(seconds, message)| (*seconds, message.as_str()))
        .collect();
    store
        .save_reports(&[(report(&web, at(500), &many), at(501))])
        .await
        .expect("reports");
    let events = store.events(&web).await.expect("events");
    assert_eq!(events.len(), usize::try_from(EVENTS_PER_HOST).expect("small"));
    assert_eq!(events[0].message, "event 5");
    assert_eq!(
        events.last().map(|event| event.message.as_str()),
        Some(&*format!("event {}", EVENTS_PER_HOST + 4))
    );

    // A batch of several hosts: each keeps its own newest events, in the order given.
    store
        .save_reports(&[
            (report(&db, at(600), &[(600, "db a"), (601, "db b")]), at(602)),
            (report(&web, at(600), &[(600, "web last")]), at(602)),
        ])
        .await
        .expect("batch");
    assert_eq!(messages(store.events(&db).await.expect("events")), ["db a", "db b"]);
    let events = store.events(&web).await.expect("events");
    assert_eq!(events.len(), usize::try_from(EVENTS_PER_HOST).expect("small"));
    assert_eq!(
        (
            events[0].message.as_str(),
            events.last().map(|event| event.message.as_str())
        ),
        ("event 6", Some("web last"))
    );
    // The same host twice in one batch: the later report is kept, every event stored.
    let later = report(&db, at(701), &[(701, "db d")]);
    store
        .save_reports(&[
            (report(&db, at(700), &[(700, "db c")]), at(700)),
            (later.clone(), at(702)),
        ])
        .await
        .expect("twice");
    let reports = store.reports_of(std::slice::from_ref(&db)).await.expect("reports");
    assert_eq!(reports, [(later, at(702))]);
    assert_eq!(
        messages(store.events(&db).await.expect("events")),
        ["db a", "db b", "db c", "db d"]
    );
}

// --- Rollouts --------------------------------------------------------------------------

fn started_rollout(id: &str) -> Rollout {
    use crate::server::rollout::{Event, PlanHost, RolloutSpec, SpecText, plan};
    let spec = RolloutSpec::parse(&SpecText {
        app: "web",
        target: "2.0",
        stages: "100%",
        max_in_flight: "1",
        bake: "0s",
        max_failures: "0",
        on_failure: "pause",
        approve_each_stage: false,
        host_deadline: "10m",
    })
    .expect("spec");
    let hosts = [PlanHost {
        id: host("web-01"),
        groups: BTreeSet::new(),
        current: Some(version("1.0")),
    }];
    let plan = plan(&spec, id, &hosts).expect("plan");
    let mut rollout = Rollout::new(spec, plan);
    rollout.step(Event::Start, at(0)).expect("start");
    rollout
}

async fn a_rollout_step_commits_its_state_pins_history_and_manifests_together_or_not_at_all(scratch: Scratch) {
    let store = &scratch.store;
    let web = app("web");
    let host_web = host("web-01");
    let first = started_rollout("web-1");
    let line = HistoryRecord {
        rollout: Some("web-1".into()),
        ..app_line(
            Some("web"),
            at(0),
            "alice",
            "rollout web-1 started",
            Some("release day"),
        )
    };
    let pins = [(Scope::Host(host_web.clone()), Some(version("2.0")))];
    store
        .commit_rollout(&RolloutCommit {
            rollout: &first,
            created: Some(("alice", at(0))),
            finished_at: None,
            pins: &pins,
            pin_origin: ("alice", at(0), Some("release day")),
            history: std::slice::from_ref(&line),
            manifests: &[manifest(&host_web, 1)],
        })
        .await
        .expect("commit");
    let active = store.active_rollouts().await.expect("active");
    assert_eq!(active.len(), 1);
    assert_eq!(
        (&active[0].rollout, active[0].created_by.as_str(), active[0].created_at),
        (&first, "alice", at(0))
    );
    assert_eq!(store.rollout_count(&web).await.expect("count"), 1);
    let pinned = store.pins(Some(&web)).await.expect("pins");
    assert_eq!(
        (
            pinned[0].rollout.as_deref(),
            pinned[0].set_by.as_deref(),
            pinned[0].reason.as_deref()
        ),
        (Some("web-1"), Some("alice"), Some("release day"))
    );

    // A second active rollout of the same app is refused by the database, and nothing
    // of that step is written: no pin, no history line, no manifest.
    let second = started_rollout("web-2");
    let refused = store
        .commit_rollout(&RolloutCommit {
            rollout: &second,
            created: Some(("bob", at(5))),
            finished_at: None,
            pins: &[(Scope::Fleet, Some(version("2.0")))],
            pin_origin: ("bob", at(5), None),
            history: &[app_line(Some("web"), at(5), "bob", "rollout web-2 started", None)],
            manifests: &[manifest(&host_web, 2)],
        })
        .await;
    assert!(matches!(refused, Err(StoreError::Database(_))), "{refused:?}");
    assert_eq!(store.pins(Some(&web)).await.expect("pins"), pinned);
    assert_eq!(store.history(&web, 100).await.expect("history").len(), 1);
    assert_eq!(store.load().await.expect("load").manifests, [manifest(&host_web, 1)]);
    assert_eq!(store.rollout_count(&web).await.expect("count"), 1);

    // Finishing: the host pin goes, the fleet pin comes, by the controller.
    store
        .commit_rollout(&RolloutCommit {
            rollout: &first,
            created: None,
            finished_at: Some(at(9)),
            pins: &[
                (Scope::Fleet, Some(version("2.0"))),
                (Scope::Host(host_web.clone()), None),
            ],
            pin_origin: ("controller", at(9), None),
            history: &[],
            manifests: &[manifest(&host_web, 3)],
        })
        .await
        .expect("finish");
    assert!(store.active_rollouts().await.expect("active").is_empty());
    let latest = store.latest_rollout(&web).await.expect("latest").expect("one");
    assert_eq!(latest.finished_at, Some(at(9)));
    let pinned = store.pins(Some(&web)).await.expect("pins");
    assert_eq!(pinned.len(), 1);
    assert_eq!(
        (&pinned[0].scope, pinned[0].set_by.as_deref()),
        (&Scope::Fleet, Some("controller"))
    );
    assert!(store.latest_rollout(&app("db")).await.expect("latest").is_none());
}

// --- Rows as an older coordinator left them --------------------------------------------

async fn a_host_enrolled_before_keys_were_recorded_renews_by_its_certificate_then_by_its_key(scratch: Scratch) {
    let store = &scratch.store;
    // As an older coordinator left it: the certificate's sha256, no key.
    execute!(
        store,
        "INSERT INTO hosts (id, labels, cert_sha256, joined_at) VALUES ('web-01', '{}', 'cert-1', 0)"
    )
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
    store.remove_host(&host, &removal, None).await.expect("remove");
    assert!(!renew("key-a", "cert-3", "cert-4").await);
}

// --- The fleet-wide history -------------------------------------------------------------

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

async fn fill_histories(store: &Store) {
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
        let inserted = match table {
            "rollout_history" => execute!(
                store,
                "INSERT INTO rollout_history (app, host, at, who, what, reason) VALUES ($1, $2, $3, $4, $5, $6)",
                app,
                host,
                at(seconds).unix(),
                who,
                what,
                reason,
            ),
            "host_history" => execute!(
                store,
                "INSERT INTO host_history (host, kind, at, who, what, reason) VALUES ($1, 'removed', $2, $3, $4, $5)",
                host,
                at(seconds).unix(),
                who,
                what,
                reason,
            ),
            _ => execute!(
                store,
                "INSERT INTO admin_history (host, at, who, what, reason) VALUES ($1, $2, $3, $4, $5)",
                host,
                at(seconds).unix(),
                who,
                what,
                reason,
            ),
        };
        inserted.expect("insert");
    }
}

/// The seconds (after `at(0)`) of the lines `query` selects, in order.
async fn seconds(store: &Store, query: HistoryQuery) -> Vec<i64> {
    store
        .fleet_history(&query)
        .await
        .expect("history")
        .iter()
        .map(|line| line.at.unix() - at(0).unix())
        .collect()
}

async fn the_fleet_history_merges_every_source_newest_first_filtered_and_bounded(scratch: Scratch) {
    let store = &scratch.store;
    fill_histories(store).await;
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
    assert_eq!(seconds(store, query(|q| q.limit = 3)).await, [40, 35, 30]);
    // An app's lines and the holds (no app), as in `rollout history APP`; no host lines.
    assert_eq!(
        seconds(store, query(|q| q.app = Some("web".parse().expect("app")))).await,
        [20, 12, 10]
    );
    // A host id's history, its admin lines and the pins and holds scoped to it; no
    // fleet-wide or group app lines.
    assert_eq!(
        seconds(store, query(|q| q.host = Some("web-01".parse().expect("host")))).await,
        [40, 35, 15, 12]
    );
    assert_eq!(
        seconds(store, query(|q| q.who = Some("alice".into()))).await,
        [40, 35, 30, 10]
    );
    assert_eq!(
        seconds(store, query(|q| q.since = Some(at(25)))).await,
        [40, 35, 30, 25]
    );
    // Paging back past the limit: until the last line shown, that second included.
    assert_eq!(
        seconds(
            store,
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
            store,
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
        seconds(store, query(|q| q.who = Some("nobody".into())))
            .await
            .is_empty()
    );
}

async fn a_refused_revocation_writes_no_line(scratch: Scratch) {
    let store = &scratch.store;
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
}

// --- Several coordinators on one database: the model generation and the serial guard ---

async fn a_second_coordinator_with_an_old_model_gets_stale_and_writes_nothing(scratch: Scratch) {
    let first = &scratch.store;
    let second = scratch.open_another().await;
    let generation = first.load().await.expect("load").generation;
    assert_eq!(second.load().await.expect("load").generation, generation);
    let web = app("web");
    let host_web = host("web-01");
    let pin = |who: &str, seconds: i64| app_line(Some("web"), at(seconds), who, "pinned web", None);
    first
        .change_pin(
            &web,
            &Scope::Fleet,
            Some(&version("1.0")),
            &[pin("alice", 1)],
            &[manifest(&host_web, 1)],
        )
        .await
        .expect("pin through the first");
    assert_eq!(first.load().await.expect("load").generation, generation + 1);

    // The second decided on the model before that pin: refused, nothing of it written,
    // and the generation not moved.
    let stale = second
        .change_pin(
            &web,
            &Scope::Fleet,
            Some(&version("2.0")),
            &[pin("bob", 2)],
            &[manifest(&host_web, 2)],
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Stale)), "{stale:?}");
    let stale = second
        .put_group(
            "edge",
            &Labels::new(),
            &[],
            &admin_change(at(2), "bob", "created group edge"),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Stale)), "{stale:?}");
    let stale = second.save_manifests(&[manifest(&host_web, 2)]).await;
    assert!(matches!(stale, Err(StoreError::Stale)), "{stale:?}");
    let snapshot = first.load().await.expect("load");
    assert_eq!(snapshot.generation, generation + 1);
    assert_eq!(snapshot.pins.get(&(web.clone(), Scope::Fleet)), Some(&version("1.0")));
    assert!(snapshot.groups.is_empty());
    assert_eq!(snapshot.manifests, [manifest(&host_web, 1)]);
    assert_eq!(first.history(&web, 100).await.expect("history").len(), 1);
    assert!(
        first
            .fleet_history(&HistoryQuery::default())
            .await
            .expect("history")
            .iter()
            .all(|line| line.who != "bob")
    );

    // Once it has reloaded, the second's change goes through, and now the first is behind.
    assert_eq!(second.load().await.expect("reload").generation, generation + 1);
    second
        .change_pin(
            &web,
            &Scope::Fleet,
            Some(&version("2.0")),
            &[pin("bob", 3)],
            &[manifest(&host_web, 2)],
        )
        .await
        .expect("pin after the reload");
    let stale = first.change_hold(&Scope::Fleet, true, &[], &[]).await;
    assert!(matches!(stale, Err(StoreError::Stale)), "{stale:?}");
    let snapshot = second.load().await.expect("load");
    assert_eq!(
        (snapshot.generation, snapshot.pins.get(&(web, Scope::Fleet))),
        (generation + 2, Some(&version("2.0")))
    );
    assert!(snapshot.holds.is_empty());
}

async fn a_manifest_write_that_would_lower_or_repeat_a_serial_is_stale_and_writes_nothing(scratch: Scratch) {
    let store = &scratch.store;
    let web = host("web-01");
    store.save_manifests(&[manifest(&web, 5)]).await.expect("save");
    let generation = store.load().await.expect("load").generation;
    for serial in [5, 4] {
        let repeated = store.save_manifests(&[manifest(&web, serial)]).await;
        assert!(
            matches!(repeated, Err(StoreError::Stale)),
            "serial {serial}: {repeated:?}"
        );
    }
    // With a model change: the change is not written either, and the generation stays.
    let labels = Labels::from([("tier".to_owned(), "edge".to_owned())]);
    execute!(
        store,
        "INSERT INTO hosts (id, labels, cert_sha256, joined_at) VALUES ($1, '{}', 'cert-1', 0)",
        web.as_str()
    )
    .expect("host row");
    let refused = store
        .set_labels(
            &web,
            &labels,
            &[manifest(&web, 5)],
            &admin_change(at(6), "admin", "labels"),
        )
        .await;
    assert!(matches!(refused, Err(StoreError::Stale)), "{refused:?}");
    let snapshot = store.load().await.expect("load");
    assert_eq!(snapshot.generation, generation);
    assert_eq!(snapshot.hosts[0].labels, Labels::new());
    assert_eq!(snapshot.manifests, [manifest(&web, 5)]);
    // Several manifests in one write: one repeated serial fails all of them.
    let other = host("web-02");
    let refused = store.save_manifests(&[manifest(&other, 1), manifest(&web, 5)]).await;
    assert!(matches!(refused, Err(StoreError::Stale)), "{refused:?}");
    assert_eq!(store.load().await.expect("load").manifests, [manifest(&web, 5)]);
    // A higher serial is written, at the new generation.
    store
        .set_labels(
            &web,
            &labels,
            &[manifest(&web, 6)],
            &admin_change(at(7), "admin", "labels"),
        )
        .await
        .expect("labels");
    let snapshot = store.load().await.expect("load");
    assert_eq!(snapshot.generation, generation + 1);
    assert_eq!(snapshot.hosts[0].labels, labels);
    assert_eq!(snapshot.manifests, [manifest(&web, 6)]);
}

async fn load_since_reads_the_model_and_only_newer_manifests_and_hosts_and_reports_are_read_by_id(scratch: Scratch) {
    let store = &scratch.store;
    let (web, db, api) = (host("web-01"), host("db-01"), host("api-01"));
    store
        .save_manifests(&[manifest(&web, 1), manifest(&db, 1)])
        .await
        .expect("first");
    let first = store.load().await.expect("load").generation;
    store.save_manifests(&[manifest(&db, 2)]).await.expect("second");
    store
        .save_reports(&[(report(&web, at(1), &[]), at(2)), (report(&db, at(1), &[]), at(2))])
        .await
        .expect("reports");
    let since = store.load_since(first).await.expect("load since");
    assert_eq!(since.generation, first + 1);
    assert_eq!(since.manifests, [manifest(&db, 2)]);
    assert!(since.reports.is_empty());
    assert!(
        store
            .load_since(first + 1)
            .await
            .expect("load since")
            .manifests
            .is_empty()
    );
    assert_eq!(store.load_since(0).await.expect("load since").manifests.len(), 2);

    for (id, cert) in [(&web, "cert-web"), (&db, "cert-db")] {
        execute!(
            store,
            "INSERT INTO hosts (id, labels, cert_sha256, joined_at) VALUES ($1, '{}', $2, 0)",
            id.as_str(),
            cert
        )
        .expect("host row");
    }
    let hosts = store
        .hosts_of(&[web.clone(), api.clone(), db.clone()])
        .await
        .expect("hosts");
    assert_eq!(
        hosts
            .iter()
            .map(|record| (record.id.as_str(), record.cert_sha256.as_deref()))
            .collect::<Vec<_>>(),
        [("db-01", Some("cert-db")), ("web-01", Some("cert-web"))],
        "the hosts that exist, by id"
    );
    assert!(store.hosts_of(&[]).await.expect("none").is_empty());
    let reports = store.reports_of(&[web.clone(), api]).await.expect("reports");
    assert_eq!(reports, [(report(&web, at(1), &[]), at(2))]);
    assert!(store.reports_of(&[]).await.expect("none").is_empty());
}

/// The column names of every table of the SQLite schema.
async fn sqlite_columns(store: &Store) -> BTreeMap<String, BTreeSet<String>> {
    let Backend::Sqlite(sqlite) = &store.backend else {
        panic!("a SQLite store");
    };
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT m.name, p.name FROM sqlite_master AS m, pragma_table_info(m.name) AS p
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&sqlite.pool)
    .await
    .expect("sqlite columns");
    let mut tables: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (table, column) in rows {
        tables.entry(table).or_default().insert(column);
    }
    tables
}

/// The column names of every table of the PostgreSQL schema, less the columns that stand
/// in for what SQLite has implicitly (`rollouts.seq` is SQLite's rowid).
async fn postgres_columns(store: &Store) -> BTreeMap<String, BTreeSet<String>> {
    let Backend::Postgres(postgres) = &store.backend else {
        panic!("a PostgreSQL store");
    };
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::TEXT, column_name::TEXT FROM information_schema.columns WHERE table_schema = 'public'",
    )
    .fetch_all(&postgres.pool)
    .await
    .expect("postgres columns");
    let mut tables: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (table, column) in rows {
        if (table.as_str(), column.as_str()) != ("rollouts", "seq") {
            tables.entry(table).or_default().insert(column);
        }
    }
    tables
}

#[tokio::test]
async fn both_backends_have_the_same_tables_and_columns() {
    let sqlite = Scratch::sqlite("same-schema").await;
    let postgres = Scratch::postgres().await;
    let sqlite_tables = sqlite_columns(&sqlite.store).await;
    assert!(sqlite_tables.contains_key("model_generation"), "{sqlite_tables:?}");
    assert_eq!(sqlite_tables, postgres_columns(&postgres.store).await);
    assert_eq!(sqlite::MIGRATIONS.len(), postgres::MIGRATIONS.len());
}

#[test]
fn a_database_url_is_named_without_its_password_and_other_urls_are_refused() {
    for (url, shown) in [
        (
            "postgres://drover:s3cret@db.example:5432/fleet",
            "postgres://drover:***@db.example:5432/fleet",
        ),
        (
            "postgresql://drover:p%40ss@db/fleet?sslmode=require",
            "postgresql://drover:***@db/fleet?sslmode=require",
        ),
        ("postgres://drover@db/fleet", "postgres://drover@db/fleet"),
        (
            "postgres://db/fleet?user=drover&password=s3cret",
            "postgres://db/fleet?user=drover&password=***",
        ),
    ] {
        let database = Database::from_url(url).expect("a PostgreSQL URL");
        assert_eq!(database, Database::Postgres(url.to_owned()));
        assert_eq!(database.display_name(), shown);
        assert_eq!(format!("{database:?}"), format!("Postgres({shown:?})"));
    }
    let refused = Database::from_url("mysql://root:hunter2@db/fleet").expect_err("not PostgreSQL");
    assert!(
        refused.contains("postgres://") && refused.contains("postgresql://"),
        "{refused}"
    );
    assert!(!refused.contains("hunter2"), "{refused}");
}

async fn a_fleet_wide_manifest_write_is_stored_whole_and_one_stale_serial_in_it_refuses_all_of_it(scratch: Scratch) {
    let store = &scratch.store;
    let hosts: Vec<HostId> = (0..2_500).map(|index| host(&format!("host-{index:05}"))).collect();
    let first: Vec<StoredManifest> = hosts.iter().map(|id| manifest(id, 1)).collect();
    let started = std::time::Instant::now();
    store.save_manifests(&first).await.expect("fleet-wide write");
    let took = started.elapsed();
    let mut stored = store.load().await.expect("load").manifests;
    stored.sort_by(|a, b| a.host.cmp(&b.host));
    assert_eq!(stored, first);
    // One host in the middle of the last batch already has serial 2: nothing is written.
    store
        .save_manifests(&[manifest(&hosts[2_400], 2)])
        .await
        .expect("one ahead");
    let second: Vec<StoredManifest> = hosts.iter().map(|id| manifest(id, 2)).collect();
    let refused = store.save_manifests(&second).await;
    assert!(matches!(refused, Err(StoreError::Stale)), "{refused:?}");
    let stored = store.load().await.expect("load").manifests;
    assert_eq!(stored.iter().filter(|manifest| manifest.serial == 2).count(), 1);
    // The same host twice in one write: both in order, the later serial stays.
    store
        .save_manifests(&[manifest(&hosts[0], 3), manifest(&hosts[0], 4)])
        .await
        .expect("twice");
    let stored = store.load_since(0).await.expect("load").manifests;
    assert!(stored.contains(&manifest(&hosts[0], 4)), "the later one is kept");
    eprintln!("2,500 manifests written in {took:?}");
}

// --- Schema versions: a coordinator one version behind (rolling upgrades) ---------------

/// Every row of `schema_version`: the version and the `readable_from` recorded with it.
async fn schema_version_rows(store: &Store) -> Vec<(i64, Option<i64>)> {
    let sql = "SELECT version, readable_from FROM schema_version ORDER BY version";
    match &store.backend {
        Backend::Sqlite(sqlite) => sqlx::query_as(sql).fetch_all(&sqlite.pool).await,
        Backend::Postgres(postgres) => sqlx::query_as(sql).fetch_all(&postgres.pool).await,
    }
    .expect("schema versions")
}

/// Makes `store`'s database look migrated by a drover one schema version newer, whose
/// migration recorded `readable_from`: a defaulted column on a table every coordinator
/// writes (`manifests`), a nullable one on another (`hosts`), and a new table.
async fn migrate_one_version_further_by_hand(store: &Store, readable_from: i64) {
    for statement in [
        "ALTER TABLE manifests ADD COLUMN signed_by TEXT NOT NULL DEFAULT 'an older coordinator'",
        "ALTER TABLE hosts ADD COLUMN rack TEXT",
        "CREATE TABLE newer_things (id TEXT PRIMARY KEY, since BIGINT NOT NULL)",
    ] {
        execute!(store, statement).expect(statement);
    }
    execute!(
        store,
        "INSERT INTO schema_version (version, readable_from) VALUES ($1, $2)",
        known_schema_version() + 1,
        readable_from
    )
    .expect("the newer drover's version");
}

async fn a_new_database_records_readable_from_with_each_version_from_the_one_that_added_it(scratch: Scratch) {
    let rows = schema_version_rows(&scratch.store).await;
    let expected: Vec<(i64, Option<i64>)> = SCHEMA_VERSIONS
        .iter()
        .map(|entry| {
            let recorded = entry.version >= READABLE_FROM_RECORDED_SINCE;
            (entry.version, recorded.then_some(entry.readable_from))
        })
        .collect();
    assert_eq!(rows, expected);
    assert_eq!(rows.last().map(|row| row.0), Some(known_schema_version()));
}

async fn a_database_one_additive_migration_ahead_is_used_as_it_is_and_takes_writes_and_loads(scratch: Scratch) {
    // A rolling upgrade: the first upgraded coordinator migrated the database with an
    // additive migration; this binary (one version behind) opens it again, as the
    // replicas not yet upgraded do when they restart.
    let readable_from = SCHEMA_VERSIONS.last().expect("versions").readable_from;
    migrate_one_version_further_by_hand(&scratch.store, readable_from).await;
    let versions_before = schema_version_rows(&scratch.store).await;
    let older = Store::open_database(&scratch.database)
        .await
        .unwrap_or_else(|error| panic!("an additive newer schema must open: {error}"));
    // Used as it is: no migration run, nothing written to schema_version.
    assert_eq!(schema_version_rows(&older).await, versions_before);

    // Writes through the older coordinator, into tables that have newer columns, and a
    // load that reads them back.
    let web = host("web-01");
    let labels = Labels::from([("env".to_owned(), "prod".to_owned())]);
    older
        .insert_token("t1", &labels, None, "alice", at(600), at(0))
        .await
        .expect("token");
    let joined = host_line(at(2), "joined", None, Some("cert-1"));
    let outcome = older
        .join_host(
            "t1",
            &enrolled(&web, "cert-1", "key-1", at(2)),
            &manifest(&web, 1),
            (HostChange::Joined, &joined),
            at(2),
        )
        .await
        .expect("join on the newer schema");
    assert_eq!(outcome, Ok(()));
    older
        .change_pin(
            &app("web"),
            &Scope::Fleet,
            Some(&version("1.0")),
            &[app_line(Some("web"), at(3), "alice", "pinned web", None)],
            &[manifest(&web, 2)],
        )
        .await
        .expect("pin on the newer schema");
    let snapshot = older.load().await.expect("load on the newer schema");
    assert_eq!(snapshot.hosts, [enrolled(&web, "cert-1", "key-1", at(2))]);
    assert_eq!(snapshot.manifests, [manifest(&web, 2)]);
    assert_eq!(snapshot.pins.get(&(app("web"), Scope::Fleet)), Some(&version("1.0")));
    // The newer columns got their defaults, as the newer drover expects of rows older
    // coordinators write; the newer version is still recorded as the database's.
    let signed_by: Vec<(String,)> = match &older.backend {
        Backend::Sqlite(sqlite) => {
            sqlx::query_as("SELECT signed_by FROM manifests")
                .fetch_all(&sqlite.pool)
                .await
        }
        Backend::Postgres(postgres) => {
            sqlx::query_as("SELECT signed_by FROM manifests")
                .fetch_all(&postgres.pool)
                .await
        }
    }
    .expect("the newer column");
    assert_eq!(signed_by, [("an older coordinator".to_owned(),)]);
    assert_eq!(schema_version_rows(&scratch.store).await, versions_before);
}

async fn a_database_one_migration_ahead_that_changed_meaning_is_refused_and_left_unchanged(scratch: Scratch) {
    let newer = known_schema_version() + 1;
    migrate_one_version_further_by_hand(&scratch.store, newer).await;
    let versions_before = schema_version_rows(&scratch.store).await;
    let generation_before = scratch.store.load().await.expect("load").generation;
    let error = Store::open_database(&scratch.database)
        .await
        .expect_err("a newer schema that changed meaning");
    assert!(
        matches!(
            error,
            StoreError::SchemaTooNew { found, known, readable_from, .. }
                if found == newer && known == SCHEMA_VERSIONS.len() && readable_from == newer
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&scratch.database.display_name()), "{message}");
    assert!(
        message.contains(&format!(
            "schema is version {newer}, newer than the {} this drover knows, and needs a drover that knows \
             schema version {newer} or newer",
            SCHEMA_VERSIONS.len()
        )),
        "{message}"
    );
    assert_eq!(schema_version_rows(&scratch.store).await, versions_before);
    assert_eq!(scratch.store.load().await.expect("load").generation, generation_before);
}

/// `--database postgres://...?sslmode=verify-full&sslrootcert=CA` speaks TLS to a
/// PostgreSQL that takes nothing else and checks its certificate against that CA; a
/// server certificate from another CA, and a plain connection, are refused with what
/// PostgreSQL or the TLS check said.
#[tokio::test]
async fn postgres_over_tls_checks_the_servers_certificate_against_the_ca_given() {
    use crate::server::pki::Ca;
    let mut cluster = PostgresCluster::start();
    let url = cluster.create_database("over_tls");
    let now = Timestamp::from_system(std::time::SystemTime::now());
    let (ca, _) = Ca::create(now).expect("CA");
    let (other_ca, _) = Ca::create(now).expect("another CA");
    let (cert, key) = ca
        .issue_server(&["127.0.0.1".to_owned()], now)
        .expect("server certificate");
    cluster.require_tls(&cert, &key);
    let dir = std::env::temp_dir().join(format!("drover-pg-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let (right, wrong) = (dir.join("ca.pem"), dir.join("other-ca.pem"));
    std::fs::write(&right, ca.cert_pem()).expect("write CA");
    std::fs::write(&wrong, other_ca.cert_pem()).expect("write the other CA");
    let open = |query: String| {
        let database = Database::from_url(&format!("{url}?{query}")).expect("a PostgreSQL URL");
        async move { Store::open_database(&database).await }
    };

    let store = open(format!("sslmode=verify-full&sslrootcert={}", right.display()))
        .await
        .expect("TLS with the server's CA");
    assert!(store.load().await.expect("load over TLS").hosts.is_empty());
    // The change listener and the leader lease use connections of their own, with the
    // same options.
    assert!(store.listen().await.expect("listening over TLS").is_some());
    let clock = crate::server::clock::SystemClock;
    assert!(
        store.campaign("replica-1", &clock).await.is_some(),
        "the lease over TLS"
    );
    drop(store);

    let refused = open(format!("sslmode=verify-full&sslrootcert={}", wrong.display()))
        .await
        .expect_err("a certificate the CA given did not issue");
    assert!(refused.to_string().to_lowercase().contains("certificate"), "{refused}");
    let refused = open("sslmode=disable".to_owned())
        .await
        .expect_err("a plain connection to a server that takes TLS only");
    assert!(refused.to_string().contains("no encryption"), "{refused}");
    let _ = std::fs::remove_dir_all(&dir);
}
