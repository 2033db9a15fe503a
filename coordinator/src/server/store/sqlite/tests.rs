//! The SQLite backend's own tests: migrations (under the lock, refused when newer and not
//! declared readable by this binary). What every backend must do is tested through the
//! interface in `store/tests.rs`, on both.

use super::*;
use crate::server::store::tests::Scratch;
use crate::server::store::{Backend, Store};

fn pool(store: &Store) -> &SqlitePool {
    match &store.backend {
        Backend::Sqlite(sqlite) => &sqlite.pool,
        Backend::Postgres(_) => panic!("a SQLite store"),
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
    let scratch = Scratch::sqlite("newer-schema").await;
    let store = scratch.store.clone();
    let directory = scratch.directory().to_owned();
    let newer = i64::try_from(MIGRATIONS.len() + 1).expect("few");
    // Recorded without a readable_from: readable only by a drover that knows its version
    // (a newer one readable by this binary is tested on both backends in store/tests.rs).
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
}
