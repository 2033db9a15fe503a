//! The PostgreSQL backend's own tests: migrations under the advisory lock, a newer schema
//! refused, and the notifications each committed change sends (and a rolled-back one
//! does not). What every backend must do is tested through the interface in
//! `store/tests.rs`, on both.

use std::time::Duration;

use drover_protocol::api::{HostHistoryEntry, Scope};
use sqlx::postgres::PgListener;

use super::*;
use crate::server::store::tests::{Scratch, admin_change, at, scratch_postgres_database};
use crate::server::store::{AdminTokenRecord, Backend, Database, HistoryRecord, Store};

fn pool(store: &Store) -> &PgPool {
    match &store.backend {
        Backend::Postgres(postgres) => &postgres.pool,
        Backend::Sqlite(_) => panic!("a PostgreSQL store"),
    }
}

fn url(database: &Database) -> &str {
    match database {
        Database::Postgres(url) => url,
        Database::Sqlite(_) => panic!("a PostgreSQL database"),
    }
}

/// Each recorded schema version with how many times it was recorded.
async fn recorded_versions(store: &Store) -> Vec<(i64, i64)> {
    sqlx::query_as("SELECT version, COUNT(*) FROM schema_version GROUP BY version ORDER BY version")
        .fetch_all(pool(store))
        .await
        .expect("schema versions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinators_opening_one_new_postgres_database_at_once_all_succeed_and_apply_each_migration_once() {
    for round in 0..4 {
        let (_cluster, database) = scratch_postgres_database();
        let (first, second, third, fourth) = tokio::join!(
            Store::open_database(&database),
            Store::open_database(&database),
            Store::open_database(&database),
            Store::open_database(&database)
        );
        let every_version_once: Vec<(i64, i64)> = (1..=i64::try_from(MIGRATIONS.len()).expect("few"))
            .map(|version| (version, 1))
            .collect();
        for opened in [first, second, third, fourth] {
            let store = opened.unwrap_or_else(|error| panic!("round {round}: {error}"));
            assert_eq!(recorded_versions(&store).await, every_version_once, "round {round}");
        }
    }
}

#[tokio::test]
async fn a_postgres_database_with_a_newer_schema_is_refused_named_without_its_password_and_left_unchanged() {
    let scratch = Scratch::postgres().await;
    let newer = i64::try_from(MIGRATIONS.len() + 1).expect("few");
    sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
        .bind(newer)
        .execute(pool(&scratch.store))
        .await
        .expect("a newer drover's version");
    // The fixture's cluster trusts loopback, so any password gets in (and must not show).
    let with_password = url(&scratch.database).replacen("drover@", "drover:s3cret@", 1);
    let error = Store::open_database(&Database::Postgres(with_password.clone()))
        .await
        .expect_err("newer schema");
    assert!(
        matches!(error, StoreError::SchemaTooNew { found, known, .. } if found == newer && known == MIGRATIONS.len()),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(!message.contains("s3cret"), "{message}");
    assert!(message.contains(&redact_password(&with_password)), "{message}");
    let max: i64 = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
        .fetch_one(pool(&scratch.store))
        .await
        .expect("max");
    assert_eq!(max, newer);
}

/// The next notification on `listener`, or a failure after a generous bound.
async fn next_payload(listener: &mut PgListener) -> String {
    tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within 10 s")
        .expect("the listener's connection")
        .payload()
        .to_owned()
}

#[tokio::test]
async fn notifications_are_delivered_when_a_change_commits_and_never_for_one_rolled_back() {
    let scratch = Scratch::postgres().await;
    let store = &scratch.store;
    let mut listener = PgListener::connect(url(&scratch.database)).await.expect("listener");
    listener.listen(CHANNEL).await.expect("listen");
    let generation = store.load().await.expect("load").generation;
    let web = "web-01".parse::<HostId>().expect("host");
    let line = |who: &str| HistoryRecord {
        app: Some("web".parse().expect("app")),
        host: None,
        rollout: None,
        at: at(1),
        who: who.into(),
        what: "pinned".into(),
        reason: None,
    };
    let manifest = |serial: u64| StoredManifest {
        host: web.clone(),
        serial,
        envelope: bytes::Bytes::from_static(b"envelope"),
        content_hash: "hash".into(),
        issued_at: at(0),
        expires_at: at(3600),
    };
    let app = "web".parse().expect("app");
    store
        .change_pin(
            &app,
            &Scope::Fleet,
            Some(&"1.0".parse().expect("version")),
            &[line("alice")],
            &[manifest(1)],
        )
        .await
        .expect("pin");
    assert_eq!(next_payload(&mut listener).await, format!("m {}", generation + 1));

    // Rolled back: a repeated serial (after the generation moved and the pin was written
    // in the transaction), and a model change of a stale replica.
    let refused = store
        .change_pin(
            &app,
            &Scope::Fleet,
            Some(&"2.0".parse().expect("version")),
            &[line("bob")],
            &[manifest(1)],
        )
        .await;
    assert!(matches!(refused, Err(StoreError::Stale)), "{refused:?}");
    let other = scratch.open_another().await;
    store.save_manifests(&[manifest(2)]).await.expect("newer manifest");
    assert_eq!(next_payload(&mut listener).await, format!("m {}", generation + 2));
    let refused = other
        .delete_group("edge", &admin_change(at(2), "carol", "deleted group edge"))
        .await;
    assert!(matches!(refused, Err(StoreError::Stale)), "{refused:?}");

    // The next notification is of the next commit: nothing came of the two refused ones.
    let report = HostReport {
        schema: drover_protocol::report::REPORT_SCHEMA,
        host: web.clone(),
        sent_at: at(3),
        manifest_serial: Some(2),
        held: false,
        manifest_rejection: None,
        facts: drover_protocol::report::AgentFacts {
            agent_version: "test".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
        },
        apps: Default::default(),
        events: Vec::new(),
    };
    store.save_reports(&[(report, at(3))]).await.expect("report");
    assert_eq!(next_payload(&mut listener).await, "r web-01");

    // Host records without a model change, and admin tokens (not their use).
    execute_host_row(store, &web).await;
    store
        .record_host_key(&web, "cert-1", "key-1", at(9))
        .await
        .expect("key");
    assert_eq!(next_payload(&mut listener).await, "h web-01");
    let renewal = HostHistoryEntry {
        at: at(4),
        who: "host".into(),
        what: "renewed".into(),
        old_certificate: Some("cert-1".into()),
        new_certificate: Some("cert-2".into()),
    };
    assert!(
        store
            .renew_host(&web, "key-1", "cert-2", at(10), &renewal)
            .await
            .expect("renew")
    );
    assert_eq!(next_payload(&mut listener).await, "h web-01");
    store
        .bootstrap_admin_token("secret-hash", at(5))
        .await
        .expect("bootstrap");
    assert_eq!(next_payload(&mut listener).await, "t");
    store.touch_admin_token("secret-hash", at(6)).await.expect("touch");
    let token = AdminTokenRecord {
        name: "ci".parse().expect("name"),
        hash: "ci-hash".into(),
        created_at: at(7),
        created_by: "admin".into(),
        expires_at: None,
        revoked_at: None,
        revoked_by: None,
        last_used_at: None,
    };
    store
        .insert_admin_token(&token, &admin_change(at(7), "admin", "created admin token ci"))
        .await
        .expect("token");
    assert_eq!(next_payload(&mut listener).await, "t", "the token's use sent nothing");
    assert!(
        store
            .revoke_admin_token(&token.name, at(8), "admin", &admin_change(at(8), "admin", "revoked ci"))
            .await
            .expect("revoke")
    );
    assert_eq!(next_payload(&mut listener).await, "t");
}

async fn execute_host_row(store: &Store, host: &HostId) {
    sqlx::query("INSERT INTO hosts (id, labels, cert_sha256, joined_at) VALUES ($1, '{}', 'cert-1', 0)")
        .bind(host.as_str())
        .execute(pool(store))
        .await
        .expect("host row");
}

#[tokio::test]
async fn every_connection_bounds_its_statements_so_a_hung_database_fails_a_request_instead_of_hanging_it() {
    let scratch = Scratch::postgres().await;
    let shown: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(pool(&scratch.store))
        .await
        .expect("show");
    assert_eq!(shown, format!("{}s", STATEMENT_TIMEOUT.as_secs()));
    // And it is enforced: a statement past a (here shorter) timeout is cancelled.
    let mut connection = pool(&scratch.store).acquire().await.expect("connection");
    sqlx::query("SET statement_timeout = 200")
        .execute(&mut *connection)
        .await
        .expect("set");
    let started = std::time::Instant::now();
    let cancelled = sqlx::query("SELECT pg_sleep(30)").execute(&mut *connection).await;
    assert!(
        cancelled.is_err() && started.elapsed() < Duration::from_secs(10),
        "{cancelled:?}"
    );
    sqlx::query("RESET statement_timeout")
        .execute(&mut *connection)
        .await
        .expect("reset");
}
