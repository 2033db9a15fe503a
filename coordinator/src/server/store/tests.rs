//! The store's behaviour through its interface, on a scratch SQLite database: what any
//! backend must do. SQLite-only matters (migrations, rows as older coordinators left
//! them) are tested in `sqlite.rs`.

use std::collections::{BTreeMap, BTreeSet};

use drover_protocol::Timestamp;
use drover_protocol::api::TokenName;

use super::*;

pub(super) fn at(seconds: i64) -> Timestamp {
    Timestamp::from_unix(1_800_000_000 + seconds)
}

/// A fresh database in its own directory, removed by the caller.
pub(super) async fn scratch(name: &str) -> (Store, PathBuf) {
    let directory = std::env::temp_dir().join(format!("drover-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).expect("scratch directory");
    let store = Store::open(&directory.join("coordinator.db")).await.expect("open");
    (store, directory)
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

#[tokio::test]
async fn a_revoked_bootstrap_token_stays_revoked_and_a_new_admin_token_file_replaces_it() {
    let (store, directory) = scratch("bootstrap").await;
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
    let _ = std::fs::remove_dir_all(&directory);
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

#[tokio::test]
async fn a_token_enrolls_once_and_a_host_id_keeps_its_joins_removal_rejoin_and_renewals() {
    let (store, directory) = scratch("host-lifecycle").await;
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
    assert_eq!(only_host(&store).await, (first, manifest(&web, 1)));
    assert!(store.host_history(&intruder, 100).await.expect("history").is_empty());

    // Removed: the key and certificates stop counting; the serial stays for a re-join.
    let removed = host_line(at(4), "removed", Some("cert-1"), None);
    store.remove_host(&web, &removed, Some("why")).await.expect("remove");
    let (record, stored) = only_host(&store).await;
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
    let (record, stored) = only_host(&store).await;
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
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn a_stored_manifest_serial_never_goes_down_and_labels_commit_with_their_manifests() {
    let (store, directory) = scratch("serials").await;
    let web = host("web-01");
    store.save_manifests(&[manifest(&web, 5)]).await.expect("save");
    // A lower serial (a slower writer) is a no-op: the stored serial never goes down.
    store.save_manifests(&[manifest(&web, 3)]).await.expect("save lower");
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
    let _ = std::fs::remove_dir_all(&directory);
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

#[tokio::test]
async fn pins_and_holds_round_trip_with_who_when_and_why_and_the_history_is_per_app() {
    let (store, directory) = scratch("pins").await;
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
    let _ = std::fs::remove_dir_all(&directory);
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

#[tokio::test]
async fn the_latest_report_per_host_is_kept_and_events_are_trimmed_to_the_newest() {
    let (store, directory) = scratch("reports").await;
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
    let _ = std::fs::remove_dir_all(&directory);
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

#[tokio::test]
async fn a_rollout_step_commits_its_state_pins_history_and_manifests_together_or_not_at_all() {
    let (store, directory) = scratch("rollouts").await;
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
    let _ = std::fs::remove_dir_all(&directory);
}
