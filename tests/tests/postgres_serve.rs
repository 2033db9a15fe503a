//! `drover serve --database postgres://...` end to end: a coordinator keeping its state
//! in a real PostgreSQL (a cluster of the test's own, from Debian's `postgresql`) enrolls
//! a host, takes a pin, wakes the host's long-poll with the new manifest, and after a
//! restart serves the same manifest from what PostgreSQL kept.

use std::time::{Duration, Instant};

use drover_coordinator::server::store::Database;
use drover_coordinator::testing::PostgresCluster;
use drover_protocol::{LastAccepted, accept};
use drover_tests::fleet::{Agent, Poll, TestCoordinator};
use drover_tests::now_real;
use reqwest::Method;
use serde_json::json;

/// The new manifest of `poll`, verified as an agent would: (serial, etag, apps).
fn verified(agent: &Agent, poll: Poll, last: Option<LastAccepted>) -> (u64, String, Vec<String>) {
    let Poll::Changed(envelope, etag) = poll else {
        panic!("expected a new manifest, got {poll:?}");
    };
    let verified = accept(&envelope, &agent.trust(), &agent.host, last, now_real()).expect("manifest verifies");
    let manifest = verified.manifest();
    let apps = manifest
        .apps
        .iter()
        .map(|(app, release)| format!("{app}={}", release.version))
        .collect();
    (manifest.serial, etag, apps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_on_postgres_joins_pins_and_wakes_a_long_poll_and_keeps_it_across_a_restart() {
    let cluster = PostgresCluster::start();
    let url = cluster.create_database("drover_serve");
    let mut coordinator = TestCoordinator::start_with_database(Database::Postgres(url.clone())).await;
    let agent = coordinator.enroll("web-01", &[("env", "prod")]).await;
    let (serial, etag, apps) = verified(&agent, agent.poll(None, 0).await, None);
    assert!(serial >= 1 && apps.is_empty());
    assert!(matches!(agent.poll(Some(&etag), 0).await, Poll::NotModified));

    // Replicas on PostgreSQL share no disk: an upload is refused, saying what to use.
    let refused = coordinator
        .admin
        .http
        .post(format!("{}/v1/admin/artifacts", coordinator.admin.url))
        .bearer_auth(&coordinator.admin.token)
        .body(b"v1".to_vec())
        .send()
        .await
        .expect("upload request");
    assert_eq!(refused.status(), reqwest::StatusCode::CONFLICT);
    let body = refused.text().await.expect("refusal body");
    assert!(
        body.contains("uploads_need_a_registry") && body.contains("--registry") && body.contains("--artifact-registry"),
        "{body}"
    );
    coordinator
        .admin
        .ok(
            Method::POST,
            "/v1/admin/releases",
            Some(json!({
                "app": "web", "version": "1.0.0",
                "spec": {"service": {"command": ["bin/app"]}},
                "artifact": {"kind": "remote_tarball", "url": "https://artifacts.example/web-1.0.0.tar.gz",
                             "digest": drover_protocol::Digest::of(b"v1").to_string(), "size": 2},
            })),
        )
        .await;
    let waiting = {
        let agent = agent.clone();
        let etag = etag.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (agent.poll(Some(&etag), 60).await, started.elapsed())
        })
    };
    let pinned = coordinator
        .admin
        .ok(
            Method::PUT,
            "/v1/admin/pins",
            Some(json!({"app": "web", "version": "1.0.0", "scope": {"kind": "fleet"}})),
        )
        .await;
    assert_eq!(pinned["hosts_changed"], 1);
    let (poll, waited) = waiting.await.expect("long-poll task");
    assert!(waited < Duration::from_secs(10), "woke after {waited:?}");
    let last = LastAccepted {
        serial,
        issued_at: now_real(),
    };
    let (pinned_serial, pinned_etag, apps) = verified(&agent, poll, Some(last));
    assert!(pinned_serial > serial);
    assert_eq!(apps, ["web=1.0.0"]);

    // The state is in PostgreSQL, not in a SQLite file in the data directory.
    assert!(!coordinator.data_dir.join("coordinator.db").exists());

    coordinator.restart().await;
    assert!(
        matches!(agent.poll(Some(&pinned_etag), 0).await, Poll::NotModified),
        "the same manifest after a restart"
    );
    let pins = coordinator.admin.ok(Method::GET, "/v1/admin/pins", None).await;
    assert_eq!(pins["pins"][0]["version"], "1.0.0", "{pins}");
    coordinator.stop().await;
    drop(cluster);
}
