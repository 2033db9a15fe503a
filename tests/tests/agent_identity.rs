//! The agent's identity, trust and accepted-manifest state (issue 13, defects 4 and 6):
//! the accepted record after a crash at every point of its write (and of the migration
//! from an earlier agent's two files), a failed write that changes nothing, and re-joins
//! that must not lower trust nor lose the serial floor by a reordering of root keys.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use drover_agent::accepted::{self, Offer, trust_roots_id};
use drover_agent::join::check_trust_not_lowered;
use drover_agent::renew::{ClientIdentity, Renewer, Validity};
use drover_agent::state::{Identity, StateDir};
use drover_protocol::trust::RoleKeys;
use drover_protocol::{Duration, SigningKey, Timestamp, Trust};
use drover_tests::fleet::TestCoordinator;
use drover_tests::{Keys, host, manifest, now};

const HOST: &str = "web-01";

fn state_dir() -> (tempfile::TempDir, StateDir) {
    let scratch = tempfile::tempdir().expect("scratch");
    let state = StateDir::new(scratch.path().join("state"));
    state.create().expect("create state dir");
    (scratch, state)
}

/// The coordinator's manifest `serial` for the host, issued `minutes` after the fixture
/// clock.
fn signed(keys: &Keys, serial: u64, minutes: u64) -> Vec<u8> {
    let mut manifest = manifest(HOST, serial, 1);
    manifest.issued_at = now().plus(Duration::from_secs(minutes * 60));
    manifest.expires_at = manifest.issued_at.plus(Duration::from_secs(86_400));
    keys.sign(&manifest)
}

fn at(minutes: u64) -> Timestamp {
    now().plus(Duration::from_secs(minutes * 60))
}

/// Starts the agent's view of its record as `run` does, and offers the coordinator's
/// manifest: the serial the host then acts on (from the record or the new manifest).
fn serial_after_restart_and_offer(state: &StateDir, trust: &Trust, coordinator: &[u8], clock: Timestamp) -> u64 {
    let loaded = accepted::load(state, trust, &host(HOST), clock).expect("record loads");
    let mut floor = loaded.floor;
    match floor.offer(coordinator, trust, &host(HOST), clock) {
        Offer::InForce => loaded.manifest.expect("a manifest in force").serial,
        Offer::Accepted(verified) => {
            floor.commit(state, &verified).expect("record written");
            verified.manifest().serial
        }
        Offer::Rejected(rejection) => panic!("the coordinator's manifest was refused: {rejection}"),
    }
}

/// Accepts `bytes` as a running agent would, writing the record.
fn accept_and_record(state: &StateDir, trust: &Trust, bytes: &[u8], clock: Timestamp) {
    let mut floor = accepted::load(state, trust, &host(HOST), clock).expect("load").floor;
    let Offer::Accepted(verified) = floor.offer(bytes, trust, &host(HOST), clock) else {
        panic!("not accepted")
    };
    floor.commit(state, &verified).expect("record written");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("exists").permissions().mode() & 0o777
}

/// What an agent before the single record wrote: the floor, and the envelope beside it.
fn write_legacy(state: &StateDir, serial: u64, issued_at: Timestamp, envelope: Option<&[u8]>) {
    std::fs::write(
        state.accepted(),
        format!(r#"{{"serial":{serial},"issued_at":"{issued_at}"}}"#),
    )
    .expect("legacy floor");
    if let Some(envelope) = envelope {
        std::fs::write(state.legacy_manifest(), envelope).expect("legacy manifest");
    }
}

#[test]
fn a_crash_while_the_accepted_record_is_written_keeps_the_previous_one_and_the_next_manifest_is_accepted() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let (_scratch, state) = state_dir();
    accept_and_record(&state, &trust, &signed(&keys, 1, 0), at(0));
    // Killed inside write_atomic: a temporary file with part of the new record, the old
    // record still in place.
    let partial = state.root().join("accepted.json.tmp-4242");
    std::fs::write(&partial, br#"{"trust_roots":"#).expect("partial temporary");

    let second = signed(&keys, 2, 60);
    assert_eq!(serial_after_restart_and_offer(&state, &trust, &second, at(61)), 2);
    assert_eq!(
        accepted::stored_floor(&state).expect("readable").expect("floor").serial,
        2
    );
    assert!(
        !partial.exists(),
        "the crashed write's temporary file is removed at start"
    );
}

#[test]
fn a_crash_after_the_accepted_record_is_written_resumes_on_that_manifest() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let (_scratch, state) = state_dir();
    let first = signed(&keys, 1, 0);
    accept_and_record(&state, &trust, &first, at(0));
    let second = signed(&keys, 2, 60);
    accept_and_record(&state, &trust, &second, at(61));
    assert_eq!(mode(&state.accepted()), 0o600, "the record holds every spec");

    // Restarted an hour after the manifest was issued, long past the 5 minutes of skew
    // the issued-at check allows: the record's own issued-at is the clock it is
    // verified with, and the coordinator's identical bytes change nothing.
    let loaded = accepted::load(&state, &trust, &host(HOST), at(125)).expect("load");
    assert_eq!(loaded.manifest.expect("in force").serial, 2);
    assert_eq!(loaded.floor.etag().as_deref(), Some("\"2\""));
    assert!(matches!(
        loaded.floor.offer(&second, &trust, &host(HOST), at(125)),
        Offer::InForce
    ));
    assert_eq!(
        serial_after_restart_and_offer(&state, &trust, &signed(&keys, 3, 124), at(125)),
        3
    );
}

/// Defect 6 as it was: an earlier agent wrote `manifest.dsse` (serial 2, issued an hour
/// after serial 1) and was killed before `accepted.json`. It then re-checked the new
/// envelope with the old issued-at as "now", refused it as issued in the future, and
/// skipped the coordinator's identical bytes until the next re-sign.
#[test]
fn an_earlier_agents_crash_between_envelope_and_floor_no_longer_stalls_the_host() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let (_scratch, state) = state_dir();
    let second = signed(&keys, 2, 60);
    write_legacy(&state, 1, at(0), Some(&second));

    let loaded = accepted::load(&state, &trust, &host(HOST), at(62)).expect("load");
    assert_eq!(
        loaded.manifest.as_ref().map(|manifest| manifest.serial),
        Some(2),
        "the envelope is taken over the floor it passes: {:?}",
        loaded.notes
    );
    assert!(matches!(
        loaded.floor.offer(&second, &trust, &host(HOST), at(62)),
        Offer::InForce
    ));
    assert!(!state.legacy_manifest().exists(), "migrated into the one record");
    assert_eq!(mode(&state.accepted()), 0o600);
    assert_eq!(serial_after_restart_and_offer(&state, &trust, &second, at(62)), 2);
}

#[test]
fn an_earlier_agents_stale_envelope_past_its_expiry_leaves_the_floor_and_the_coordinators_manifest_is_accepted() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let (_scratch, state) = state_dir();
    // The crash state again, but the agent stayed down until serial 2 expired: the floor
    // of serial 1 stands, and the coordinator's re-signed serial 3 gets through.
    write_legacy(&state, 1, at(0), Some(&signed(&keys, 2, 60)));
    let later = at(60 + 25 * 60);
    assert_eq!(
        serial_after_restart_and_offer(&state, &trust, &signed(&keys, 3, 60 + 25 * 60), later),
        3
    );
}

#[test]
fn an_earlier_agents_consistent_pair_is_migrated_into_one_private_record() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let (_scratch, state) = state_dir();
    let first = signed(&keys, 1, 0);
    write_legacy(&state, 1, at(0), Some(&first));
    std::fs::set_permissions(state.accepted(), std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let loaded = accepted::load(&state, &trust, &host(HOST), at(600)).expect("load");
    assert_eq!(loaded.manifest.expect("in force").serial, 1);
    assert!(!state.legacy_manifest().exists());
    assert_eq!(mode(&state.accepted()), 0o600);
    // Loading again (the next start) finds the record and changes nothing.
    let again = accepted::load(&state, &trust, &host(HOST), at(600)).expect("load again");
    assert_eq!(again.floor.last(), loaded.floor.last());
    assert!(again.notes.is_empty(), "{:?}", again.notes);
}

#[test]
fn a_migration_killed_after_writing_the_record_is_finished_by_the_next_start() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let (_scratch, state) = state_dir();
    let first = signed(&keys, 1, 0);
    write_legacy(&state, 1, at(0), Some(&first));
    accepted::load(&state, &trust, &host(HOST), at(1)).expect("migrate");
    // Killed before manifest.dsse was removed.
    std::fs::write(state.legacy_manifest(), &first).expect("leftover");

    assert_eq!(
        serial_after_restart_and_offer(&state, &trust, &signed(&keys, 2, 5), at(6)),
        2
    );
    assert!(!state.legacy_manifest().exists());
    assert_eq!(
        accepted::stored_floor(&state).expect("readable").expect("floor").serial,
        2
    );
}

#[test]
fn an_envelope_whose_floor_was_never_written_is_dropped_and_the_coordinators_manifest_accepted() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let (_scratch, state) = state_dir();
    let first = signed(&keys, 1, 0);
    std::fs::write(state.legacy_manifest(), &first).expect("envelope only");

    let loaded = accepted::load(&state, &trust, &host(HOST), at(1)).expect("load");
    assert_eq!(
        loaded.floor.etag(),
        None,
        "the poll asks for the coordinator's manifest at once"
    );
    assert!(!state.legacy_manifest().exists());
    assert_eq!(serial_after_restart_and_offer(&state, &trust, &first, at(1)), 1);
}

/// A full disk at the record's write: nothing changes (on disk or in memory), and the
/// same manifest is taken once the write works.
#[test]
fn a_failed_record_write_changes_nothing_and_the_manifest_is_taken_on_the_retry() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let (_scratch, state) = state_dir();
    let first = signed(&keys, 1, 0);
    accept_and_record(&state, &trust, &first, at(0));
    let before = std::fs::read(state.accepted()).expect("record");

    let mut floor = accepted::load(&state, &trust, &host(HOST), at(1)).expect("load").floor;
    let second = signed(&keys, 2, 1);
    let Offer::Accepted(verified) = floor.offer(&second, &trust, &host(HOST), at(2)) else {
        panic!("not accepted")
    };
    // The write's temporary file cannot be made (a directory in its place; root ignores
    // permissions, so this stands in for ENOSPC).
    let obstacle = state.root().join(format!("accepted.json.tmp-{}", std::process::id()));
    std::fs::create_dir(&obstacle).expect("obstacle");
    std::fs::write(obstacle.join("x"), b"x").expect("obstacle content");
    let error = floor.commit(&state, &verified).expect_err("the write fails");
    assert!(error.to_string().contains("accepted.json"), "{error}");
    assert_eq!(
        std::fs::read(state.accepted()).expect("record"),
        before,
        "the record is untouched"
    );
    assert_eq!(
        floor.last().expect("floor").serial,
        1,
        "the floor in memory is untouched"
    );
    assert_eq!(floor.etag().as_deref(), Some("\"1\""));

    std::fs::remove_dir_all(&obstacle).expect("space again");
    let Offer::Accepted(verified) = floor.offer(&second, &trust, &host(HOST), at(3)) else {
        panic!("not accepted on the retry")
    };
    floor.commit(&state, &verified).expect("written on the retry");
    assert_eq!(floor.last().expect("floor").serial, 2);
}

/// A trust document over the same keys as `keys` with another version, roots listed in
/// the reverse order, and a root threshold.
fn variant(keys: &Keys, version: u64, reverse_roots: bool, root_threshold: u32) -> Trust {
    let mut document = keys.document.clone();
    document.version = version;
    let mut roots: Vec<_> = keys.roots.iter().map(SigningKey::public_key).collect();
    if reverse_roots {
        roots.reverse();
    }
    document.root = RoleKeys::of(&roots, root_threshold);
    let envelope = document.sign(&keys.roots.iter().collect::<Vec<_>>());
    Trust::bootstrap(&envelope, now()).expect("valid trust")
}

#[test]
fn a_rejoin_refuses_an_older_trust_with_the_same_root_keys() {
    let keys = Keys::new(3, 2, 1, 1);
    let pinned = variant(&keys, 5, false, 2);
    let older = variant(&keys, 4, true, 2);
    let error = check_trust_not_lowered(&pinned, &older)
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("version 4, older than the version 5"),
        "the message names both versions: {error}"
    );
    assert!(
        check_trust_not_lowered(&pinned, &variant(&keys, 5, true, 2)).is_ok(),
        "same document, reordered"
    );
    assert!(
        check_trust_not_lowered(&pinned, &variant(&keys, 6, false, 2)).is_ok(),
        "newer"
    );
}

#[test]
fn a_rejoin_refuses_a_different_trust_under_the_same_version() {
    let keys = Keys::new(2, 1, 1, 1);
    let pinned = variant(&keys, 3, false, 1);
    let mut document = keys.document.clone();
    document.version = 3;
    document.expires_at = document.expires_at.plus(Duration::from_secs(86_400));
    let changed = Trust::bootstrap(&document.sign(&keys.roots.iter().collect::<Vec<_>>()), now()).expect("valid");
    let error = check_trust_not_lowered(&pinned, &changed)
        .expect_err("refused")
        .to_string();
    assert!(error.contains("needs a higher version"), "{error}");
}

#[test]
fn reordered_root_keys_keep_the_serial_floor() {
    let keys = Keys::new(3, 2, 1, 1);
    let trust = variant(&keys, 1, false, 2);
    let reordered = variant(&keys, 2, true, 2);
    assert_eq!(trust_roots_id(&trust), trust_roots_id(&reordered));
    let (_scratch, state) = state_dir();
    accept_and_record(&state, &trust, &signed(&keys, 7, 0), at(0));

    let loaded = accepted::load(&state, &reordered, &host(HOST), at(1)).expect("load");
    assert_eq!(loaded.floor.last().expect("the floor stands").serial, 7);
    let replay = signed(&keys, 6, 1);
    assert!(
        matches!(
            loaded.floor.offer(&replay, &reordered, &host(HOST), at(1)),
            Offer::Rejected(_)
        ),
        "a lower serial stays refused"
    );
}

#[test]
fn a_record_from_other_root_keys_or_threshold_does_not_count_and_nothing_is_wiped() {
    let keys = Keys::new(3, 2, 1, 1);
    let trust = variant(&keys, 1, false, 2);
    let (_scratch, state) = state_dir();
    accept_and_record(&state, &trust, &signed(&keys, 40, 0), at(0));

    // Another threshold over the same keys is another root set.
    let other_threshold = variant(&keys, 2, false, 3);
    assert_ne!(trust_roots_id(&trust), trust_roots_id(&other_threshold));
    // Another coordinator: other keys altogether; its serials start low.
    let other = Keys::simple();
    let other_trust = other.trust();
    assert_ne!(trust_roots_id(&trust), trust_roots_id(&other_trust));
    let loaded = accepted::load(&state, &other_trust, &host(HOST), at(1)).expect("load");
    assert_eq!(loaded.floor.last(), None);
    assert!(
        loaded.notes.iter().any(|note| note.contains("other trust root keys")),
        "{:?}",
        loaded.notes
    );
    assert_eq!(
        serial_after_restart_and_offer(&state, &other_trust, &signed(&other, 1, 1), at(1)),
        1
    );
    // Under the first trust again, the record is the new coordinator's: it does not count
    // either, and a crash between a re-join's trust write and anything else is harmless.
    assert_eq!(
        accepted::load(&state, &trust, &host(HOST), at(2))
            .expect("load")
            .floor
            .last(),
        None
    );
}

/// The agent's renewal against a real coordinator: a CSR over the host's key, the answer
/// checked and written, and a new connection presenting the renewed certificate; a
/// refused renewal (the host was removed) changes nothing on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_keeps_the_key_writes_the_certificate_and_new_connections_present_it() {
    let coordinator = TestCoordinator::start().await;
    let joined = coordinator.enroll(HOST, &[]).await;
    let (_scratch, state) = state_dir();
    state
        .save_identity(&Identity {
            key_pem: joined.key_pem.clone(),
            certificate_pem: joined.joined.certificate_pem.clone(),
            ca_pem: joined.joined.ca_pem.clone(),
        })
        .expect("identity");
    let client_for = |identity: &std::sync::Arc<ClientIdentity>| {
        let tls =
            drover_agent::renew::host_config(&joined.joined.ca_pem, std::sync::Arc::clone(identity)).expect("tls");
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .expect("client")
    };
    let identity =
        std::sync::Arc::new(ClientIdentity::new(&joined.joined.certificate_pem, &joined.key_pem).expect("identity"));
    let renewer = Renewer {
        coordinators: std::sync::Arc::new(drover_agent::coordinators::Coordinators::new(vec![coordinator.url()])),
        client: client_for(&identity),
        host: host(HOST),
        state: state.clone(),
        key_pem: joined.key_pem.clone(),
        identity: std::sync::Arc::clone(&identity),
    };
    let original = Validity::of_pem(&joined.joined.certificate_pem).expect("certificate");
    let renewed = renewer.renew_once().await.expect("renewed");
    assert_ne!(renewed, joined.joined.certificate_pem);
    assert_eq!(std::fs::read_to_string(state.certificate()).expect("host.pem"), renewed);
    assert_eq!(
        std::fs::read_to_string(state.key()).expect("host.key"),
        joined.key_pem,
        "the key stays"
    );
    // Whole seconds: a renewal in the join's second has the same expiry, never an earlier one.
    assert!(Validity::of_pem(&renewed).expect("renewed").not_after.unix() >= original.not_after.unix());

    // A client made now (new connections only) presents the renewed certificate and is
    // the host.
    let fresh = client_for(&identity);
    let answer = fresh
        .get(format!("{}/v1/agent/manifest?wait=0", coordinator.url()))
        .send()
        .await
        .expect("poll");
    assert!(answer.status().is_success(), "{}", answer.status());

    coordinator
        .admin
        .ok(reqwest::Method::DELETE, &format!("/v1/admin/hosts/{HOST}"), None)
        .await;
    let error = renewer.renew_once().await.expect_err("a removed host is refused");
    assert!(error.contains("403"), "{error}");
    assert_eq!(
        std::fs::read_to_string(state.certificate()).expect("host.pem"),
        renewed,
        "a refused renewal changes nothing"
    );
}

fn join_argv(coordinator: &TestCoordinator, join_command: &str, token: &str, dir: &Path, force: bool) -> Vec<String> {
    let ca_sha256 = join_command
        .rsplit("--ca-sha256 ")
        .next()
        .expect("hash in the join command")
        .trim()
        .to_owned();
    let mut argv: Vec<String> = vec![
        "join".into(),
        coordinator.url(),
        "--token".into(),
        token.into(),
        "--ca-sha256".into(),
        ca_sha256,
        "--config".into(),
        dir.join("agent.toml").display().to_string(),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
        "--host-id".into(),
        HOST.into(),
    ];
    if force {
        argv.push("--force".into());
    }
    argv
}

async fn run_agent(argv: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(drover_tests::binary("drover-agent"))
            .args(&argv)
            .output()
            .expect("run drover-agent")
    })
    .await
    .expect("blocking task")
}

/// A real `drover-agent join --force` against a coordinator whose trust document is
/// older than the one the host pins (same root keys): refused before anything is
/// written, naming both versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_to_a_coordinator_with_an_older_trust_is_refused_and_changes_nothing() {
    let coordinator = TestCoordinator::start().await;
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path();
    let token = coordinator.admin.token(&[], None).await;
    let output = run_agent(join_argv(&coordinator, &token.join_command, &token.token, dir, false)).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // The host pins version 2 of the same roots (listed as the coordinator lists them),
    // say from a rotation this coordinator's trust.json was never updated with.
    let state = StateDir::new(dir.join("state"));
    let pinned =
        Trust::bootstrap(&std::fs::read(state.trust()).expect("trust"), drover_tests::now_real()).expect("trust");
    let root =
        drover_protocol::keyfile::read_signing_key(&coordinator.data_dir.join("keys/root-1.key")).expect("root key");
    let mut newer = pinned.document().clone();
    newer.version = pinned.version() + 1;
    let newer = newer.sign(&[&root]);
    std::fs::write(state.trust(), &newer).expect("pin version 2");
    let key_before = std::fs::read(state.key()).expect("key");
    let certificate_before = std::fs::read(state.certificate()).expect("certificate");

    let token = coordinator.admin.token(&[], Some(HOST)).await;
    let output = run_agent(join_argv(&coordinator, &token.join_command, &token.token, dir, true)).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the re-join must be refused");
    assert!(
        stderr.contains(&format!(
            "version {}, older than the version {}",
            pinned.version(),
            pinned.version() + 1
        )),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(state.trust()).expect("trust"),
        newer,
        "the pinned trust stays"
    );
    assert_eq!(std::fs::read(state.key()).expect("key"), key_before);
    assert_eq!(
        std::fs::read(state.certificate()).expect("certificate"),
        certificate_before
    );
}
