//! The coordinator in-process on 127.0.0.1:0 with real SQLite and real TLS: the whole
//! enrollment -> manifest -> pin -> long-poll -> report -> status flow, persistence
//! across restarts, and every hostile request answered with a precise 4xx and a JSON
//! error body that leaves the store unchanged.

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use drover_coordinator::server::clock::{Clock as _, ManualClock};
use drover_protocol::report::{AppReport, AppState, HostReport, REPORT_SCHEMA};
use drover_protocol::{HostId, LastAccepted, Timestamp, accept};
use drover_tests::fleet::{Agent, Poll, TestCoordinator, facts, http_client, tls_client};
use drover_tests::now_real;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn host(id: &str) -> HostId {
    id.parse().expect("host id")
}

fn report_for(agent: &Agent, serial: u64, app: &str, version: &str, state: AppState) -> HostReport {
    HostReport {
        schema: REPORT_SCHEMA,
        host: agent.host.clone(),
        sent_at: now_real(),
        manifest_serial: Some(serial),
        held: false,
        manifest_rejection: None,
        facts: facts(),
        apps: [(
            app.parse().expect("app"),
            AppReport {
                current: Some(version.parse().expect("version")),
                desired: Some(version.parse().expect("version")),
                state,
                health: Some("http 200".into()),
                last_error: None,
                bad_versions: Vec::new(),
            },
        )]
        .into(),
        events: Vec::new(),
    }
}

/// Unwraps a new manifest, verifies it exactly as an agent would, returns (serial, etag, apps).
fn verified(agent: &Agent, poll: Poll, last: Option<LastAccepted>) -> (u64, String, Vec<String>) {
    let (serial, etag, apps, _) = verified_at(agent, poll, last, now_real());
    (serial, etag, apps)
}

/// [`verified`] by an agent whose clock shows `now`; also returns the manifest's
/// (issued_at, expires_at).
fn verified_at(
    agent: &Agent,
    poll: Poll,
    last: Option<LastAccepted>,
    now: Timestamp,
) -> (u64, String, Vec<String>, (Timestamp, Timestamp)) {
    let Poll::Changed(envelope, etag) = poll else {
        panic!("expected a new manifest, got {poll:?}");
    };
    let verified = accept(&envelope, &agent.trust(), &agent.host, last, now).expect("manifest verifies");
    let manifest = verified.manifest();
    let apps = manifest
        .apps
        .iter()
        .map(|(app, release)| format!("{app}={}", release.version))
        .collect();
    (manifest.serial, etag, apps, (manifest.issued_at, manifest.expires_at))
}

/// Asserts an error answer read from a response: the status and the JSON error code.
async fn assert_response_error(response: reqwest::Response, expected_status: StatusCode, expected_code: &str) {
    let status = response.status();
    let body = response.text().await.expect("body");
    assert_error(status, &body, expected_status, expected_code);
}

/// Asserts an error answer: the status and the JSON error code.
fn assert_error(status: StatusCode, body: &str, expected_status: StatusCode, expected_code: &str) {
    assert_eq!(status, expected_status, "{body}");
    let parsed: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON error body expected, got {body:?}"));
    assert_eq!(parsed["code"], expected_code, "{body}");
    assert!(parsed["error"].as_str().is_some_and(|text| !text.is_empty()), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_join_manifest_304_pin_long_poll_report_status() {
    let coordinator = TestCoordinator::start().await;
    let admin = &coordinator.admin;
    let token = admin.token(&[("env", "prod")], None).await;
    assert!(token.join_command.starts_with(&format!(
        "drover-agent join {} --token={} ",
        coordinator.url(),
        token.token
    )));
    assert!(token.join_command.contains("--ca-sha256 "));

    let agent = Agent::join(&coordinator.url(), &admin.ca_pem, &token.token, "web-01")
        .await
        .expect("join");
    assert_eq!(agent.joined.labels.get("env").map(String::as_str), Some("prod"));

    // First poll: a signed, empty manifest for this host; then 304 with its ETag.
    let (serial, etag, apps) = verified(&agent, agent.poll(None, 0).await, None);
    assert!(serial >= 1);
    assert!(apps.is_empty());
    assert!(matches!(agent.poll(Some(&etag), 0).await, Poll::NotModified));

    // A long-poll waiting on the current ETag wakes the moment a pin changes the manifest.
    admin.release("web", "1.0.0", b"tarball v1".to_vec()).await;
    let waiting = {
        let agent = agent.clone();
        let etag = etag.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let poll = agent.poll(Some(&etag), 60).await;
            (poll, started.elapsed())
        })
    };
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    let pinned = admin
        .ok(
            Method::PUT,
            "/v1/admin/pins",
            Some(json!({"app": "web", "version": "1.0.0", "scope": {"kind": "fleet"}})),
        )
        .await;
    assert_eq!(pinned["hosts_changed"], 1);
    let (poll, waited) = waiting.await.expect("long-poll task");
    assert!(
        waited < StdDuration::from_secs(10),
        "the long-poll woke on the pin, after {waited:?}"
    );
    let last = LastAccepted {
        serial,
        issued_at: now_real(),
    };
    let (new_serial, new_etag, apps) = verified(&agent, poll, Some(last));
    assert!(new_serial > serial, "serial goes up");
    assert_ne!(new_etag, etag);
    assert_eq!(apps, ["web=1.0.0"]);

    // The report shows up in status.
    let (status, body) = agent
        .report(&report_for(&agent, new_serial, "web", "1.0.0", AppState::Healthy))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let fleet = admin.ok(Method::GET, "/v1/admin/status", None).await;
    assert_eq!(fleet["hosts"], 1);
    assert_eq!(fleet["apps"]["web"]["desired_hosts"], 1);
    assert_eq!(fleet["apps"]["web"]["versions"]["1.0.0"], 1);
    assert_eq!(fleet["apps"]["web"]["states"]["healthy"], 1);
    let shown = admin.ok(Method::GET, "/v1/admin/hosts/web-01", None).await;
    assert_eq!(shown["apps"]["web"]["current"], "1.0.0");
    assert_eq!(shown["reported_serial"], new_serial);

    let metrics = admin
        .http
        .get(format!("{}/metrics", coordinator.url()))
        .send()
        .await
        .expect("metrics");
    let text = metrics.text().await.expect("metrics text");
    assert!(text.contains("drover_manifest_polls_total"), "{text}");
    assert!(text.contains("drover_hosts 1"), "{text}");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_hosts_certificates_releases_pins_and_serials() {
    let mut coordinator = TestCoordinator::start().await;
    let agent = coordinator.enroll("web-01", &[("env", "prod")]).await;
    coordinator.admin.release("web", "1.0.0", b"v1".to_vec()).await;
    coordinator
        .admin
        .ok(
            Method::PUT,
            "/v1/admin/pins",
            Some(json!({"app": "web", "version": "1.0.0", "scope": {"kind": "fleet"}})),
        )
        .await;
    let (serial, etag, _) = verified(&agent, agent.poll(None, 0).await, None);

    coordinator.restart().await;

    // Same certificate works, same manifest (304), same release and pin.
    assert!(
        matches!(agent.poll(Some(&etag), 0).await, Poll::NotModified),
        "same manifest after restart"
    );
    let hosts = coordinator.admin.ok(Method::GET, "/v1/admin/hosts", None).await;
    assert_eq!(hosts.as_array().map(Vec::len), Some(1));
    let releases = coordinator.admin.ok(Method::GET, "/v1/admin/releases/web", None).await;
    assert_eq!(releases[0]["version"], "1.0.0");

    // A change after the restart continues the serial.
    coordinator
        .admin
        .ok(
            Method::PUT,
            "/v1/admin/holds",
            Some(json!({"scope": {"kind": "fleet"}})),
        )
        .await;
    let (after, _, _) = verified(
        &agent,
        agent.poll(Some(&etag), 0).await,
        Some(LastAccepted {
            serial,
            issued_at: now_real(),
        }),
    );
    assert!(after > serial, "serial {after} continues above {serial}");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_with_the_same_id_continues_the_serial_and_revokes_the_old_certificate() {
    let coordinator = TestCoordinator::start().await;
    let first = coordinator.enroll("web-01", &[]).await;
    let (serial, _, _) = verified(&first, first.poll(None, 0).await, None);

    // Without --replace the id is taken.
    let token = coordinator.admin.token(&[], None).await;
    let refused = Agent::join(&coordinator.url(), &coordinator.admin.ca_pem, &token.token, "web-01").await;
    let (status, body) = refused.expect_err("a taken id needs --replace");
    assert_error(status, &body, StatusCode::CONFLICT, "host_exists");

    let token = coordinator.admin.token(&[], Some("web-01")).await;
    let second = Agent::join(&coordinator.url(), &coordinator.admin.ca_pem, &token.token, "web-01")
        .await
        .expect("replace");
    let (new_serial, _, _) = verified(
        &second,
        second.poll(None, 0).await,
        Some(LastAccepted {
            serial,
            issued_at: now_real(),
        }),
    );
    assert!(new_serial > serial);
    let Poll::Refused(status, body) = first.poll(None, 0).await else {
        panic!("old certificate must be refused")
    };
    assert_error(status, &body, StatusCode::FORBIDDEN, "certificate_replaced");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_admin_requests_get_precise_4xx_and_change_nothing() {
    let coordinator = TestCoordinator::start().await;
    let admin = &coordinator.admin;
    let raw = |method: Method, path: &str, body: &'static [u8]| {
        admin
            .http
            .request(method, format!("{}{path}", coordinator.url()))
            .bearer_auth(&admin.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // Malformed JSON, unknown fields, invalid names and versions.
    let response = raw(Method::POST, "/v1/admin/tokens", b"{not json").await.expect("send");
    assert_response_error(response, StatusCode::BAD_REQUEST, "bad_json").await;
    let (status, body) = admin
        .call(
            Method::POST,
            "/v1/admin/tokens",
            Some(json!({"ttl": "1h", "admin": true})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_json");
    let pin = json!({"app": "Web!", "version": "1.0", "scope": {"kind": "fleet"}});
    let (status, body) = admin.call(Method::PUT, "/v1/admin/pins", Some(pin)).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_json");
    let pin = json!({"app": "web", "version": "../1", "scope": {"kind": "fleet"}});
    let (status, body) = admin.call(Method::PUT, "/v1/admin/pins", Some(pin)).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_json");
    let (status, body) = admin.call(Method::GET, "/v1/admin/hosts/NOT_A_HOST", None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_host_id");

    // Unknown apps, releases, groups and hosts.
    let pin = json!({"app": "web", "version": "9.9.9", "scope": {"kind": "fleet"}});
    let (status, body) = admin.call(Method::PUT, "/v1/admin/pins", Some(pin)).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "release_not_found");
    let (status, body) = admin
        .call(
            Method::PUT,
            "/v1/admin/holds",
            Some(json!({"scope": {"kind": "group", "name": "nope"}})),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "group_not_found");
    let (status, body) = admin.call(Method::GET, "/v1/admin/hosts/ghost", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "host_not_found");
    let (status, body) = admin.call(Method::GET, "/v1/admin/nothing-here", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "no_such_route");

    // Oversized body.
    let huge = json!({"ttl": "1h", "labels": {"k": "x".repeat(2 * 1024 * 1024)}});
    let (status, body) = admin.call(Method::POST, "/v1/admin/tokens", Some(huge)).await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");

    // Wrong or missing admin token.
    let anonymous = http_client(tls_client(&admin.ca_pem, None));
    let response = anonymous
        .get(format!("{}/v1/admin/hosts", coordinator.url()))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("send");
    assert_response_error(response, StatusCode::UNAUTHORIZED, "admin_token_invalid").await;
    let response = anonymous
        .get(format!("{}/v1/admin/hosts", coordinator.url()))
        .send()
        .await
        .expect("send");
    assert_response_error(response, StatusCode::UNAUTHORIZED, "admin_token_missing").await;

    // Releases are immutable: same version, other artifact -> 409; identical -> accepted.
    admin.release("web", "1.0.0", b"v1".to_vec()).await;
    let other = admin.upload(drover_tests::app_tarball(b"v1 but different")).await;
    let body = json!({"app": "web", "version": "1.0.0", "spec": {"service": {"command": ["bin/app"]}},
                      "artifact": {"kind": "stored_tarball", "digest": other}});
    let (status, text) = admin.call(Method::POST, "/v1/admin/releases", Some(body)).await;
    assert_error(status, &text, StatusCode::CONFLICT, "release_exists");
    admin.release("web", "1.0.0", b"v1".to_vec()).await;
    let releases = admin.ok(Method::GET, "/v1/admin/releases/web", None).await;
    assert_eq!(releases.as_array().map(Vec::len), Some(1), "nothing changed");

    // A group in use cannot be deleted.
    admin
        .ok(
            Method::POST,
            "/v1/admin/groups",
            Some(json!({"name": "eu", "selector": {"region": "eu"}})),
        )
        .await;
    let pin = json!({"app": "web", "version": "1.0.0", "scope": {"kind": "group", "name": "eu"}});
    admin.ok(Method::PUT, "/v1/admin/pins", Some(pin)).await;
    let (status, body) = admin.call(Method::DELETE, "/v1/admin/groups/eu", None).await;
    assert_error(status, &body, StatusCode::CONFLICT, "group_in_use");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_enrollment_is_refused_and_changes_nothing() {
    let coordinator = TestCoordinator::start().await;
    let admin = &coordinator.admin;
    let url = coordinator.url();

    // Unknown token.
    let (status, body) = Agent::join(&url, &admin.ca_pem, "not-a-token", "web-01")
        .await
        .expect_err("refused");
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "token_unknown");

    // A token is single-use.
    let token = admin.token(&[], None).await;
    Agent::join(&url, &admin.ca_pem, &token.token, "web-01")
        .await
        .expect("first use");
    let (status, body) = Agent::join(&url, &admin.ca_pem, &token.token, "web-02")
        .await
        .expect_err("reuse refused");
    assert_error(status, &body, StatusCode::GONE, "token_used");

    // An expired token (a TTL shorter than the clock's resolution expires at once).
    let expired = admin
        .ok(Method::POST, "/v1/admin/tokens", Some(json!({"ttl": "1ms"})))
        .await;
    let expired = expired["token"].as_str().expect("token").to_owned();
    let (status, body) = Agent::join(&url, &admin.ca_pem, &expired, "web-03")
        .await
        .expect_err("expired");
    assert_error(status, &body, StatusCode::GONE, "token_expired");

    // A CSR for another host id than the one joining.
    let token = admin.token(&[], None).await;
    let (csr_pem, _) = drover_coordinator::server::pki::make_host_csr(&host("web-04")).expect("csr");
    let request = json!({"token": token.token, "host_id": "web-05", "csr_pem": csr_pem, "facts": facts()});
    let anonymous = http_client(tls_client(&admin.ca_pem, None));
    let response = anonymous
        .post(format!("{url}/v1/join"))
        .json(&request)
        .send()
        .await
        .expect("send");
    assert_response_error(response, StatusCode::BAD_REQUEST, "bad_csr").await;
    // ...and the token was not used up by the failed attempt.
    Agent::join(&url, &admin.ca_pem, &token.token, "web-05")
        .await
        .expect("token still valid");

    let hosts = admin.ok(Method::GET, "/v1/admin/hosts", None).await;
    let ids: Vec<&str> = hosts
        .as_array()
        .expect("hosts")
        .iter()
        .map(|host| host["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["web-01", "web-05"], "only the valid joins enrolled hosts");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_agent_requests_are_refused() {
    let coordinator = TestCoordinator::start().await;
    let admin = &coordinator.admin;
    let url = coordinator.url();
    let web1 = coordinator.enroll("web-01", &[]).await;
    let web2 = coordinator.enroll("web-02", &[]).await;

    // No client certificate on agent endpoints.
    let anonymous = http_client(tls_client(&admin.ca_pem, None));
    let response = anonymous
        .get(format!("{url}/v1/agent/manifest"))
        .send()
        .await
        .expect("send");
    assert_response_error(response, StatusCode::UNAUTHORIZED, "client_certificate_required").await;

    // Reporting for another host.
    let (status, body) = web1
        .report(&report_for(&web2, 1, "web", "1.0.0", AppState::Healthy))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "wrong_host");

    // Malformed and oversized reports.
    let response = web1
        .http
        .post(format!("{url}/v1/agent/report"))
        .body("{")
        .send()
        .await
        .expect("send");
    assert_response_error(response, StatusCode::BAD_REQUEST, "bad_json").await;
    let mut huge = report_for(&web1, 1, "web", "1.0.0", AppState::Failed);
    huge.manifest_rejection = Some("x".repeat(300 * 1024));
    let (status, body) = web1.report(&huge).await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    let mut long = report_for(&web1, 1, "web", "1.0.0", AppState::Failed);
    long.manifest_rejection = Some("x".repeat(10_000));
    let (status, body) = web1.report(&long).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_report");

    // A bad wait parameter.
    let response = web1
        .http
        .get(format!("{url}/v1/agent/manifest?wait=99999"))
        .send()
        .await
        .expect("send");
    assert_response_error(response, StatusCode::BAD_REQUEST, "bad_wait").await;

    // A client certificate from another CA does not even complete the TLS handshake.
    let other = TestCoordinator::start().await;
    let stranger = other.enroll("web-01", &[]).await;
    let foreign = http_client(tls_client(
        &admin.ca_pem,
        Some((&stranger.joined.certificate_pem, &stranger.key_pem)),
    ));
    let result = foreign.get(format!("{url}/v1/agent/manifest")).send().await;
    assert!(
        result.is_err(),
        "a certificate from another CA is refused at the handshake"
    );
    other.stop().await;

    // A removed host is refused on its next request, and a waiting long-poll ends.
    let (_, etag, _) = verified(&web2, web2.poll(None, 0).await, None);
    let waiting = {
        let web2 = web2.clone();
        tokio::spawn(async move { web2.poll(Some(&etag), 60).await })
    };
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    let (status, _) = admin.call(Method::DELETE, "/v1/admin/hosts/web-02", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let Poll::Refused(status, body) = tokio::time::timeout(StdDuration::from_secs(10), waiting)
        .await
        .expect("the long-poll ends promptly")
        .expect("task")
    else {
        panic!("a removed host's long-poll is refused");
    };
    assert_error(status, &body, StatusCode::FORBIDDEN, "host_removed");
    let Poll::Refused(status, body) = web2.poll(None, 0).await else {
        panic!("removed host refused")
    };
    assert_error(status, &body, StatusCode::FORBIDDEN, "host_removed");
    assert!(
        matches!(web1.poll(None, 0).await, Poll::Changed(..)),
        "other hosts are unaffected"
    );
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_stream_with_ranges_and_bad_uploads_leave_nothing() {
    let coordinator = TestCoordinator::start().await;
    let admin = &coordinator.admin;
    let url = coordinator.url();
    let agent = coordinator.enroll("web-01", &[]).await;
    let content: Vec<u8> = (0..100_000u32).map(|index| (index % 251) as u8).collect();
    let digest = admin.release_unchecked("web", "1.0.0", content.clone()).await;
    assert_eq!(digest, drover_protocol::Digest::of(&content).to_string());
    let other = coordinator.enroll("web-02", &[]).await;
    let pin = json!({"app": "web", "version": "1.0.0", "scope": {"kind": "host", "name": "web-01"}});
    admin.ok(Method::PUT, "/v1/admin/pins", Some(pin)).await;

    // A host may download only what its manifest lists.
    let response = other
        .http
        .get(format!("{url}/v1/artifacts/{digest}"))
        .send()
        .await
        .expect("get");
    assert_response_error(response, StatusCode::FORBIDDEN, "artifact_not_in_manifest").await;

    let full = agent
        .http
        .get(format!("{url}/v1/artifacts/{digest}"))
        .send()
        .await
        .expect("get");
    assert_eq!(full.status(), StatusCode::OK);
    assert_eq!(full.bytes().await.expect("body").as_ref(), &content[..]);
    let part = agent
        .http
        .get(format!("{url}/v1/artifacts/{digest}"))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .expect("get");
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], "bytes 1000-1999/100000");
    assert_eq!(part.bytes().await.expect("body").as_ref(), &content[1000..2000]);

    // Range past the end.
    let past = agent
        .http
        .get(format!("{url}/v1/artifacts/{digest}"))
        .header("range", "bytes=100000-")
        .send()
        .await
        .expect("get");
    let status = past.status();
    assert_eq!(past.headers()["content-range"], "bytes */100000");
    assert_error(
        status,
        &past.text().await.expect("body"),
        StatusCode::RANGE_NOT_SATISFIABLE,
        "range_not_satisfiable",
    );
    // A digest not in the manifest, and a malformed one.
    let missing = format!("{url}/v1/artifacts/{}", drover_protocol::Digest::of(b"nothing"));
    let response = agent.http.get(missing).send().await.expect("get");
    assert_response_error(response, StatusCode::FORBIDDEN, "artifact_not_in_manifest").await;
    let response = agent
        .http
        .get(format!("{url}/v1/artifacts/sha256:xyz"))
        .send()
        .await
        .expect("get");
    assert_response_error(response, StatusCode::BAD_REQUEST, "bad_digest").await;

    let blobs = coordinator.data_dir.join("blobs").join("sha256");
    let count = || std::fs::read_dir(&blobs).expect("blobs").count();
    let before = count();

    // A digest that does not match what was sent.
    let response = admin
        .http
        .post(format!("{url}/v1/admin/artifacts"))
        .bearer_auth(&admin.token)
        .header(
            "x-drover-digest",
            drover_protocol::Digest::of(b"something else").to_string(),
        )
        .body(content.clone())
        .send()
        .await
        .expect("upload");
    assert_response_error(response, StatusCode::BAD_REQUEST, "digest_mismatch").await;
    assert_eq!(count(), before, "nothing stored, no temporary file left");

    // A truncated upload: the body stream fails half way.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![1u8; 64 * 1024]), Err(std::io::Error::other("client went away"))];
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let result = admin
        .http
        .post(format!("{url}/v1/admin/artifacts"))
        .bearer_auth(&admin.token)
        .header("content-length", "1000000")
        .body(body)
        .send()
        .await;
    if let Ok(response) = result {
        assert!(
            response.status().is_client_error(),
            "a truncated upload is refused: {}",
            response.status()
        );
    }
    // Give the server a moment to notice the dropped connection and clean up.
    let deadline = Instant::now() + StdDuration::from_secs(5);
    while count() != before && Instant::now() < deadline {
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    assert_eq!(count(), before, "a truncated upload leaves nothing behind");
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresher_re_signs_manifests_before_they_expire() {
    // A 1 h manifest lifetime on a manual clock: until half of it has passed the
    // refresher leaves a manifest alone; from then on it re-signs it with a higher serial,
    // the same content and the new times, which the next poll serves and an agent accepts.
    // (When the refresher runs is a real timer of `serve`; what is due is the clock's.)
    let scratch = tempfile::tempdir().expect("scratch");
    let clock = Arc::new(ManualClock::new(now_real()));
    let started = clock.now();
    let ttl = drover_protocol::Duration::from_secs(3600);
    let options = drover_coordinator::server::serve::ServeOptions {
        listen: ([127, 0, 0, 1], 0).into(),
        data_dir: scratch.path().join("data"),
        public_url: None,
        keys: None,
        manifest_ttl: ttl,
        server_names: Vec::new(),
        host_certificate_validity: drover_coordinator::server::pki::DEFAULT_LEAF_VALIDITY,
        server_certificate_validity: drover_coordinator::server::pki::DEFAULT_LEAF_VALIDITY,
        database: None,
        artifact_registry: None,
    };
    let running = drover_coordinator::server::serve::start_with_clock(options, clock.clone())
        .await
        .expect("coordinator starts");
    let admin = drover_tests::fleet::Admin::from_data_dir(&scratch.path().join("data"), &running.public_url);
    let token = admin.token(&[], None).await;
    let agent = Agent::join(&running.public_url, &admin.ca_pem, &token.token, "web-01")
        .await
        .expect("join");
    let (serial, etag, apps, (issued_at, expires_at)) = verified_at(&agent, agent.poll(None, 0).await, None, started);
    assert_eq!(
        (issued_at, expires_at),
        (started, started.plus(ttl)),
        "signed at the clock's time"
    );

    assert_eq!(
        running.coordinator.refresh().await.expect("refresh"),
        0,
        "a fresh manifest is left alone"
    );
    clock.advance(drover_protocol::Duration::from_secs(1799));
    assert_eq!(
        running.coordinator.refresh().await.expect("refresh"),
        0,
        "a manifest with more than half its lifetime left is left alone"
    );
    assert!(matches!(agent.poll(Some(&etag), 0).await, Poll::NotModified));
    clock.advance(drover_protocol::Duration::from_secs(1));
    assert_eq!(
        running.coordinator.refresh().await.expect("refresh"),
        1,
        "an aging manifest is re-signed"
    );
    let now = clock.now();
    let (new_serial, new_etag, new_apps, (new_issued_at, new_expires_at)) = verified_at(
        &agent,
        agent.poll(Some(&etag), 0).await,
        Some(LastAccepted { serial, issued_at }),
        now,
    );
    assert!(new_serial > serial);
    assert_ne!(new_etag, etag);
    assert_eq!(new_apps, apps);
    assert_eq!((new_issued_at, new_expires_at), (now, now.plus(ttl)));
    running.stop().await;
}
