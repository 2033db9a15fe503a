//! The fleet-wide audit trail (issue 15) against a real `drover serve` process and the
//! real `drover` CLI: host removal, label changes, group create/delete and admin-token
//! create/revoke appear in `drover history` with WHO (the admin token's name) and WHY
//! (`--reason`); the filters (`--app`, `--host`, `--who`, `--since`, `--limit`) select
//! what they say; `-o json` parses; odd filters and reasons are usage errors (exit 2, or
//! 400 with a JSON body from the API) that change nothing.
//!
//! Each change is made with a named token (`alice`) other than the data directory's
//! `admin`, so a line recorded under the wrong name fails the test; each reason is unique
//! to its change, so a line without it fails too (before the audit trail, label changes,
//! groups and admin tokens left no line, and host removal none with a reason).

use std::process::{Command, Output};

use drover_protocol::api::{AuditEntry, AuditSource};
use drover_tests::e2e::CoordinatorProcess;
use drover_tests::fleet::{Admin, Agent};
use drover_tests::{binary, block_on};

/// Runs `drover` against `coordinator` with the admin token `token` (the address and CA
/// still come from its data directory).
fn drover_as(coordinator: &CoordinatorProcess, token: &str, args: &[&str]) -> Output {
    Command::new(binary("drover"))
        .args(args)
        .env("DROVER_DATA_DIR", &coordinator.data_dir)
        .env("DROVER_TOKEN", token)
        .env_remove("DROVER_ADDR")
        .env_remove("DROVER_CA")
        .output()
        .expect("running drover")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts success; returns stdout.
fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Asserts exit `code`; returns stderr.
fn fails(output: Output, code: i32, what: &str) -> String {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: expected exit {code}: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stderr)
}

/// `drover history ARGS -o json` as the data directory's admin, decoded.
fn history(coordinator: &CoordinatorProcess, args: &[&str]) -> Vec<AuditEntry> {
    let mut all = vec!["history"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let stdout = coordinator.drover_ok(&all).unwrap_or_else(|error| panic!("{error}"));
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("drover {all:?}: not JSON lines: {error}\n{stdout}"))
}

/// The one line whose reason is `reason`; panics with every line otherwise.
fn line_with_reason<'a>(lines: &'a [AuditEntry], reason: &str) -> &'a AuditEntry {
    let found: Vec<&AuditEntry> = lines
        .iter()
        .filter(|line| line.reason.as_deref() == Some(reason))
        .collect();
    assert_eq!(found.len(), 1, "one line with reason {reason:?} expected in {lines:#?}");
    found[0]
}

/// A coordinator with an admin token `alice` (made by `admin`); returns alice's secret.
fn with_alice(coordinator: &CoordinatorProcess) -> String {
    let secret = coordinator
        .drover_ok(&[
            "admin-token",
            "create",
            "alice",
            "--reason",
            "alice joins the on-call rota",
        ])
        .expect("admin-token create alice");
    secret.trim().to_owned()
}

/// Enrolls `host` with `labels` the way an agent does (a key, a CSR, `/v1/join`).
fn enroll(coordinator: &CoordinatorProcess, host: &str, labels: &[(&str, &str)]) -> Agent {
    let admin = Admin::from_data_dir(&coordinator.data_dir, &coordinator.url());
    block_on(async {
        let token = admin.token(labels, None).await;
        Agent::join(&coordinator.url(), &admin.ca_pem, &token.token, host)
            .await
            .expect("join")
    })
}

#[test]
fn host_removal_is_in_drover_history_with_who_and_why() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let alice = with_alice(&coordinator);
    let _agent = enroll(&coordinator, "web-01", &[]);
    ok(
        drover_as(
            &coordinator,
            &alice,
            &["hosts", "remove", "web-01", "--reason", "disk died, ticket 4711"],
        ),
        "hosts remove",
    );

    let lines = history(&coordinator, &[]);
    let removal = line_with_reason(&lines, "disk died, ticket 4711");
    assert_eq!(removal.who, "alice", "{removal:#?}");
    assert_eq!(removal.host.as_ref().map(|host| host.as_str()), Some("web-01"));
    assert_eq!(removal.source, AuditSource::Host);
    assert!(removal.what.starts_with("removed"), "{removal:#?}");
    // The join is in the same view (who made the join token: admin), before the removal.
    let join = lines
        .iter()
        .position(|line| line.host.as_ref().is_some_and(|host| host.as_str() == "web-01") && line.what.contains("join"))
        .unwrap_or_else(|| panic!("no join line of web-01 in {lines:#?}"));
    let removed = lines
        .iter()
        .position(|line| std::ptr::eq(line, removal))
        .expect("position");
    assert!(removed < join, "newest first: {lines:#?}");

    // The table shows who and why too, and the record survives a restart.
    let mut coordinator = coordinator;
    coordinator.stop();
    coordinator.resume().expect("restart");
    let table = coordinator
        .drover_ok(&["history", "--host", "web-01"])
        .expect("history");
    let row = table
        .lines()
        .find(|row| row.contains("disk died, ticket 4711"))
        .unwrap_or_else(|| panic!("no removal row:\n{table}"));
    assert!(row.contains("alice") && row.contains("web-01"), "{table}");
}

#[test]
fn label_changes_are_in_drover_history_with_who_and_why() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let alice = with_alice(&coordinator);
    let _agent = enroll(&coordinator, "web-01", &[("tier", "front")]);
    ok(
        drover_as(
            &coordinator,
            &alice,
            &[
                "hosts",
                "label",
                "web-01",
                "env=prod",
                "tier-",
                "--reason",
                "web-01 moves to prod",
            ],
        ),
        "hosts label",
    );

    let lines = history(&coordinator, &[]);
    let change = line_with_reason(&lines, "web-01 moves to prod");
    assert_eq!(change.who, "alice", "{change:#?}");
    assert_eq!(change.host.as_ref().map(|host| host.as_str()), Some("web-01"));
    assert_eq!(change.source, AuditSource::Admin);
    assert!(
        change.what.contains("env=prod") && change.what.contains("tier"),
        "the line says what changed: {change:#?}"
    );

    // A refused change (a label key the coordinator refuses) records nothing.
    let refused = drover_as(
        &coordinator,
        &alice,
        &["hosts", "label", "web-01", "Bad Key=x", "--reason", "refused change"],
    );
    assert!(!refused.status.success(), "a bad label key is refused");
    let lines = history(&coordinator, &[]);
    assert!(
        lines
            .iter()
            .all(|line| line.reason.as_deref() != Some("refused change")),
        "{lines:#?}"
    );
}

#[test]
fn group_create_and_delete_are_in_drover_history_with_who_and_why() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let alice = with_alice(&coordinator);
    ok(
        drover_as(
            &coordinator,
            &alice,
            &[
                "groups",
                "create",
                "prod-eu",
                "--selector",
                "env=prod,region=eu",
                "--reason",
                "eu goes live",
            ],
        ),
        "groups create",
    );
    // Refused while a hold uses it (exit 4): nothing recorded for the refusal.
    coordinator
        .drover_ok(&["hold", "--group", "prod-eu", "--reason", "freeze"])
        .expect("hold");
    fails(
        drover_as(
            &coordinator,
            &alice,
            &["groups", "delete", "prod-eu", "--reason", "too early"],
        ),
        4,
        "groups delete while held",
    );
    coordinator
        .drover_ok(&["unhold", "--group", "prod-eu", "--reason", "thaw"])
        .expect("unhold");
    ok(
        drover_as(
            &coordinator,
            &alice,
            &["groups", "delete", "prod-eu", "--reason", "eu closed"],
        ),
        "groups delete",
    );

    let lines = history(&coordinator, &["--who", "alice"]);
    let created = line_with_reason(&lines, "eu goes live");
    assert_eq!(created.who, "alice");
    assert!(
        created.what.contains("prod-eu") && created.what.contains("env=prod"),
        "{created:#?}"
    );
    let deleted = line_with_reason(&lines, "eu closed");
    assert_eq!(deleted.who, "alice");
    assert!(deleted.what.contains("prod-eu"), "{deleted:#?}");
    assert!(
        lines.iter().all(|line| line.reason.as_deref() != Some("too early")),
        "a refused delete is not recorded: {lines:#?}"
    );
}

#[test]
fn admin_token_create_and_revoke_are_in_drover_history_with_who_and_why() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let alice = with_alice(&coordinator);
    ok(
        drover_as(
            &coordinator,
            &alice,
            &["admin-token", "create", "ci-deploy", "--reason", "the deploy pipeline"],
        ),
        "admin-token create",
    );
    ok(
        drover_as(
            &coordinator,
            &alice,
            &["admin-token", "revoke", "ci-deploy", "--reason", "pipeline retired"],
        ),
        "admin-token revoke",
    );

    let lines = history(&coordinator, &[]);
    let made_alice = line_with_reason(&lines, "alice joins the on-call rota");
    assert_eq!(
        made_alice.who, "admin",
        "the data directory's token made alice: {made_alice:#?}"
    );
    assert!(made_alice.what.contains("alice"), "{made_alice:#?}");
    let created = line_with_reason(&lines, "the deploy pipeline");
    assert_eq!(created.who, "alice");
    assert!(created.what.contains("ci-deploy"), "{created:#?}");
    let revoked = line_with_reason(&lines, "pipeline retired");
    assert_eq!(revoked.who, "alice");
    assert!(
        revoked.what.contains("ci-deploy") && revoked.what.contains("revoked"),
        "{revoked:#?}"
    );
    // Never the secret.
    assert!(
        lines.iter().all(|line| !line.what.contains(&alice)),
        "a token's secret is never in the history"
    );
}

#[test]
fn history_filters_select_by_app_host_who_and_since_newest_first() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let alice = with_alice(&coordinator);
    let _one = enroll(&coordinator, "web-01", &[]);
    let _two = enroll(&coordinator, "web-02", &[]);
    let admin = Admin::from_data_dir(&coordinator.data_dir, &coordinator.url());
    block_on(admin.release("web", "1.0.0", b"web".to_vec()));
    block_on(admin.release("api", "1.0.0", b"api".to_vec()));
    coordinator
        .drover_ok(&["pin", "web", "1.0.0", "--reason", "web to 1.0.0"])
        .expect("pin web");
    coordinator
        .drover_ok(&["pin", "api", "1.0.0", "--reason", "api to 1.0.0"])
        .expect("pin api");
    // A pin scoped to one host is in that host's history, not in the others'.
    coordinator
        .drover_ok(&["pin", "web", "1.0.0", "--host", "web-02", "--reason", "web-02 first"])
        .expect("pin web on web-02");
    ok(
        drover_as(
            &coordinator,
            &alice,
            &["hosts", "label", "web-01", "env=prod", "--reason", "label one"],
        ),
        "label web-01",
    );
    ok(
        drover_as(
            &coordinator,
            &alice,
            &["hosts", "label", "web-02", "env=prod", "--reason", "label two"],
        ),
        "label web-02",
    );

    let all = history(&coordinator, &[]);
    for pair in all.windows(2) {
        assert!(pair[0].at >= pair[1].at, "newest first: {all:#?}");
    }

    let web = history(&coordinator, &["--app", "web"]);
    assert!(
        !web.is_empty()
            && web
                .iter()
                .all(|line| line.app.as_ref().is_some_and(|app| app.as_str() == "web"))
    );
    line_with_reason(&web, "web to 1.0.0");

    let host = history(&coordinator, &["--host", "web-01"]);
    line_with_reason(&host, "label one");
    assert!(
        host.iter()
            .all(|line| line.host.as_ref().is_some_and(|id| id.as_str() == "web-01")),
        "{host:#?}"
    );

    assert!(!host.iter().any(|line| line.reason.as_deref() == Some("web-02 first")));
    let second = history(&coordinator, &["--host", "web-02"]);
    line_with_reason(&second, "web-02 first");

    let by_alice = history(&coordinator, &["--who", "alice"]);
    let reasons: Vec<&str> = by_alice.iter().filter_map(|line| line.reason.as_deref()).collect();
    assert_eq!(reasons, ["label two", "label one"], "{by_alice:#?}");

    let both = history(&coordinator, &["--who", "alice", "--host", "web-02"]);
    assert_eq!(both.len(), 1, "{both:#?}");

    assert_eq!(history(&coordinator, &["--since", "1h"]).len(), all.len());
    assert!(history(&coordinator, &["--since", "9999-01-01T00:00:00Z"]).is_empty());

    let two = history(&coordinator, &["--limit", "2"]);
    assert_eq!(two, all[..2], "the two newest");
    let table = coordinator.drover_ok(&["history", "--limit", "2"]).expect("history");
    assert!(table.contains("the newest 2 lines"), "{table}");
    // Paging back: --until the second newest line's instant has it and everything older.
    let until = all[1].at.to_string();
    let older = history(&coordinator, &["--until", &until]);
    assert!(
        older.contains(&all[1]) && older.iter().all(|line| line.at <= all[1].at),
        "{older:#?}"
    );
    assert!(all[1..].iter().all(|line| older.contains(line)), "{older:#?}");
}

#[test]
fn odd_history_filters_and_reasons_are_usage_errors_that_change_nothing() {
    let coordinator = CoordinatorProcess::start().expect("coordinator");
    let _agent = enroll(&coordinator, "web-01", &[]);
    for args in [
        &["history", "--limit", "0"][..],
        &["history", "--limit", "1001"],
        &["history", "--limit", "99999999999999999999"],
        &["history", "--since", "yesterday"],
        &["history", "--app", "Web"],
        &["history", "--host", "../etc"],
        &["history", "--who", ""],
        &["history", "--since", "1h", "--until", "2h"],
        &["history", "--until", "tomorrow"],
    ] {
        fails(coordinator.drover(args), 2, &args.join(" "));
    }
    let long = "x".repeat(501);
    let stderr = fails(
        coordinator.drover(&["hosts", "remove", "web-01", "--reason", &long]),
        2,
        "remove with a long reason",
    );
    assert!(stderr.contains("500 characters"), "{stderr}");
    fails(
        coordinator.drover(&["hosts", "label", "web-01", "env=x", "--reason", "two\nlines"]),
        2,
        "a reason of two lines",
    );

    // The API refuses the same with 400 and a JSON body, never a 5xx, and changes nothing.
    let admin = Admin::from_data_dir(&coordinator.data_dir, &coordinator.url());
    for query in [
        "?limit=0",
        "?limit=5000",
        "?limit=%ff",
        "?app=..%2Fx",
        "?since=2h",
        "?since=2026-12-07T11:00:01Z&until=2026-12-07T11:00:00Z",
        "?who=a%0Ab",
        "?order=asc",
        "?app=web&app=api",
    ] {
        let (status, body) = block_on(admin.call(reqwest::Method::GET, &format!("/v1/admin/history{query}"), None));
        assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{query}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{query}: {body}"));
        assert!(
            error["code"].is_string() && error["error"].is_string(),
            "{query}: {body}"
        );
    }
    let (status, body) = block_on(admin.call(
        reqwest::Method::DELETE,
        &format!("/v1/admin/hosts/web-01?reason={long}"),
        None,
    ));
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = block_on(admin.call(reqwest::Method::DELETE, "/v1/admin/hosts/web-01?why=x", None));
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    let host = coordinator.host_json("web-01").expect("hosts show");
    assert!(
        host["history"].as_array().is_some_and(|lines| lines
            .iter()
            .all(|line| line["what"].as_str().is_some_and(|what| !what.starts_with("removed")))),
        "the host was not removed: {host:#}"
    );
    let lines = history(&coordinator, &[]);
    assert!(lines.iter().all(|line| !line.what.starts_with("removed")), "{lines:#?}");
}
