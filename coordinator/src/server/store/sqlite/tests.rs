//! The SQLite backend's own tests: migrations (under the lock, refused when newer) and
//! rows as older coordinators left them. What every backend must do is tested through
//! the interface in `store/tests.rs`.

use drover_protocol::HostId;
use drover_protocol::api::HostHistoryEntry;

use super::*;
use crate::server::store::tests::{at, scratch};
use crate::server::store::{Backend, Store};

fn pool(store: &Store) -> &SqlitePool {
    match &store.backend {
        Backend::Sqlite(sqlite) => &sqlite.pool,
    }
}

/// Each recorded schema version with how many times it was recorded.
async fn recorded_versions(store: &Store) -> Vec<(i64, i64)> {
    sqlx::query_as("SELECT version, COUNT(*) FROM schema_version GROUP BY version ORDER BY version")
        .fetch_all(pool(store))
        .await
        .expect("schema versions")
}

fn every_version_once() -> Vec<(i64, i64)> {
    (1..=i64::try_from(MIGRATIONS.len()).expect("few"))
        .map(|version| (version, 1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinators_opening_one_new_database_at_once_all_succeed_and_apply_each_migration_once() {
    // Defect: the runner read MAX(version) and applied the rest without a lock, so a
    // second coordinator starting at the same moment applied migration 1 again and
    // failed (`table hosts already exists`), or recorded a version twice.
    for round in 0..8 {
        let directory = std::env::temp_dir().join(format!("drover-store-race-{round}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).expect("scratch directory");
        let path = directory.join("coordinator.db");
        // Each connection runs on its own SQLite worker thread, so the three opens
        // race in the database even though one task polls them.
        let (first, second, third) = tokio::join!(Store::open(&path), Store::open(&path), Store::open(&path));
        let stores: Vec<Store> = [first, second, third]
            .into_iter()
            .map(|opened| opened.unwrap_or_else(|error| panic!("round {round}: {error}")))
            .collect();
        for store in &stores {
            assert_eq!(recorded_versions(store).await, every_version_once(), "round {round}");
        }
        drop(stores);
        let _ = std::fs::remove_dir_all(&directory);
    }
}

#[tokio::test]
async fn a_database_with_a_newer_schema_than_this_binary_is_refused_and_left_unchanged() {
    let (store, directory) = scratch("newer-schema").await;
    let newer = i64::try_from(MIGRATIONS.len() + 1).expect("few");
    sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
        .bind(newer)
        .execute(pool(&store))
        .await
        .expect("a newer drover's version");
    drop(store);
    let path = directory.join("coordinator.db");
    let error = Store::open(&path).await.expect_err("newer schema");
    assert!(
        matches!(error, StoreError::SchemaTooNew { found, known, .. } if found == newer && known == MIGRATIONS.len()),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains(&format!(
            "schema is version {newer}, newer than the {} this drover knows",
            MIGRATIONS.len()
        )),
        "{message}"
    );
    // Refused before anything was written: the versions are as the newer drover left them.
    let options = SqliteConnectOptions::new().filename(&path);
    let pool = SqlitePoolOptions::new().connect_with(options).await.expect("reopen");
    let max: i64 = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
        .fetch_one(&pool)
        .await
        .expect("max");
    assert_eq!(max, newer);
    pool.close().await;
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn a_host_enrolled_before_keys_were_recorded_renews_by_its_certificate_then_by_its_key() {
    let (store, directory) = scratch("legacy-host").await;
    // As an older coordinator left it: the certificate's sha256, no key.
    sqlx::query("INSERT INTO hosts (id, labels, cert_sha256, joined_at) VALUES ('web-01', '{}', 'cert-1', 0)")
        .execute(pool(&store))
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
    store.remove_host(&host, &removal, None).await.expect("remove");
    assert!(!renew("key-a", "cert-3", "cert-4").await);
    let _ = std::fs::remove_dir_all(&directory);
}
