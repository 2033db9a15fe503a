//! The store's behaviour through its interface, on a scratch SQLite database: what any
//! backend must do. SQLite-only matters (migrations, rows as older coordinators left
//! them) are tested in `sqlite.rs`.

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
