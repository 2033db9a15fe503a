//! The signing promise from a shell: `drover keys init` -> `drover keys sign` ->
//! `drover-agent verify`, run as real processes, with every hostile case rejected by
//! its reason and exit code 1.
//!
//! The binaries read the real clock, so manifests here are issued at the real "now"
//! with margins of hours; nothing depends on timing.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use drover_protocol::keyfile::read_signing_key;
use drover_protocol::{Duration, Envelope, MANIFEST_PAYLOAD_TYPE, Manifest, TRUST_PAYLOAD_TYPE, Timestamp};
use drover_tests::{Keys, binary};

fn run(program: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(binary(program))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn binary");
    // A large stdin may be refused before it is read whole; a broken pipe is fine then.
    let _ = child.stdin.take().expect("stdin").write_all(stdin);
    child.wait_with_output().expect("wait for binary")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn real_now() -> Timestamp {
    Timestamp::from_system(std::time::SystemTime::now())
}

/// A key directory made by `drover keys init`.
struct KeyDir {
    _scratch: tempfile::TempDir,
    dir: PathBuf,
}

impl KeyDir {
    fn init(extra: &[&str]) -> KeyDir {
        let scratch = tempfile::tempdir().expect("scratch directory");
        let dir = scratch.path().join("keys");
        let dir_text = dir.to_str().expect("utf-8 path");
        let mut args = vec!["keys", "init", "--dir", dir_text];
        args.extend_from_slice(extra);
        let output = run("drover", &args, b"");
        assert!(output.status.success(), "keys init failed: {}", stderr(&output));
        KeyDir { _scratch: scratch, dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("utf-8 path").to_owned()
    }

    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.dir.join(name);
        fs::write(&path, bytes).expect("write scratch file");
        path.to_str().expect("utf-8 path").to_owned()
    }

    /// Signs `payload` as `payload_type` with `key` through `drover keys sign`.
    fn sign(&self, key: &str, payload_type: &str, payload: &[u8]) -> Vec<u8> {
        let output = run(
            "drover",
            &["keys", "sign", "--key", &self.path(key), "--type", payload_type],
            payload,
        );
        assert!(output.status.success(), "keys sign failed: {}", stderr(&output));
        output.stdout
    }

    /// Runs `drover-agent verify` on `envelope` with this directory's trust.json.
    fn verify(&self, envelope: &[u8], host: &str, extra: &[&str]) -> Output {
        let file = self.write("candidate.dsse", envelope);
        let trust = self.path("trust.json");
        let mut args = vec!["verify", "--trust", trust.as_str(), "--host", host];
        args.extend_from_slice(extra);
        args.push(&file);
        run("drover-agent", &args, b"")
    }
}

/// A manifest for `web-01` issued now (real clock), valid for a day.
fn live_manifest(serial: u64) -> Manifest {
    let mut manifest = drover_tests::manifest("web-01", serial, 2);
    manifest.issued_at = real_now();
    manifest.expires_at = real_now().plus(Duration::from_secs(86_400));
    manifest
}

fn payload_json(manifest: &Manifest) -> serde_json::Value {
    serde_json::from_slice(&manifest.to_payload()).expect("manifest JSON")
}

/// Asserts that verify refused with exit 1 and a reason containing `reason`.
fn assert_rejected(output: &Output, reason: &str) {
    let message = stderr(output);
    assert_eq!(output.status.code(), Some(1), "expected exit 1, stderr: {message}");
    assert!(message.contains(reason), "expected {reason:?} in: {message}");
    assert_eq!(message.lines().count(), 1, "one-line reason expected: {message}");
    assert!(output.stdout.is_empty(), "nothing printed on stdout for a rejection");
}

#[test]
fn init_sign_verify_accepts_a_valid_manifest() {
    let keys = KeyDir::init(&[]);
    let manifest = live_manifest(7);
    let envelope = keys.sign("manifest.key", "manifest", &manifest.to_payload());
    let output = keys.verify(&envelope, "web-01", &["--last-serial", "6"]);
    assert!(output.status.success(), "verify failed: {}", stderr(&output));
    let printed: Manifest = serde_json::from_slice(&output.stdout).expect("verify prints the payload");
    assert_eq!(printed, manifest);
    assert!(stderr(&output).starts_with("accepted: manifest serial 7 for host web-01"));

    let raw = keys.verify(&envelope, "web-01", &["--raw"]);
    assert_eq!(
        raw.stdout.strip_suffix(b"\n"),
        Some(&manifest.to_payload()[..]),
        "--raw prints the signed bytes"
    );
}

#[test]
fn key_files_are_0600_and_trust_is_public() {
    let keys = KeyDir::init(&["--root-keys", "3", "--root-threshold", "2"]);
    for name in ["root-1.key", "root-2.key", "root-3.key", "manifest.key"] {
        let mode = fs::metadata(keys.dir.join(name)).expect(name).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    let mode = fs::metadata(keys.dir.join("trust.json"))
        .expect("trust")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644);
    let directory_mode = fs::metadata(&keys.dir).expect("dir").permissions().mode() & 0o777;
    assert_eq!(directory_mode, 0o700);
}

#[test]
fn group_readable_key_is_refused_with_a_clear_message() {
    let keys = KeyDir::init(&[]);
    let key = keys.dir.join("manifest.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).expect("chmod");
    let output = run(
        "drover",
        &[
            "keys",
            "sign",
            "--key",
            &keys.path("manifest.key"),
            "--type",
            "manifest",
        ],
        b"{}",
    );
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("mode 0640 lets group or others read this private file"),
        "{message}"
    );
    assert!(message.contains("chmod 600"), "{message}");
    assert!(output.stdout.is_empty());
}

#[test]
fn init_refuses_to_overwrite_existing_keys() {
    let keys = KeyDir::init(&[]);
    let before = fs::read(keys.dir.join("manifest.key")).expect("key");
    let output = run("drover", &["keys", "init", "--dir", &keys.path("")], b"");
    assert_eq!(output.status.code(), Some(4), "refused by state: {}", stderr(&output));
    assert!(stderr(&output).contains("refusing to overwrite"));
    assert_eq!(
        fs::read(keys.dir.join("manifest.key")).expect("key"),
        before,
        "the old key is untouched"
    );
}

#[test]
fn init_refuses_a_threshold_no_key_set_can_meet() {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("keys");
    let args = [
        "keys",
        "init",
        "--dir",
        dir.to_str().expect("utf-8"),
        "--root-keys",
        "2",
        "--root-threshold",
        "3",
    ];
    let output = run("drover", &args, b"");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(!dir.exists(), "nothing is created");
}

#[test]
fn show_prints_key_ids_roles_and_the_trust_document() {
    let keys = KeyDir::init(&["--root-keys", "2", "--root-threshold", "2"]);
    let table = run("drover", &["keys", "show", "--dir", &keys.path("")], b"");
    assert!(table.status.success(), "{}", stderr(&table));
    let text = String::from_utf8(table.stdout).expect("utf-8");
    let manifest_id = read_signing_key(&keys.dir.join("manifest.key"))
        .expect("key")
        .key_id()
        .to_string();
    assert!(text.contains(&manifest_id), "{text}");
    assert!(text.contains("2 of 2 must sign a new trust document"), "{text}");

    let json = run("drover", &["keys", "show", "--dir", &keys.path(""), "-o", "json"], b"");
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json output");
    assert_eq!(value["trust"]["version"], 1);
    assert_eq!(value["trust_expired"], false);
    let roles: Vec<&str> = value["keys"]
        .as_array()
        .expect("keys array")
        .iter()
        .map(|key| key["roles"][0].as_str().expect("role"))
        .collect();
    assert_eq!(roles, ["manifest", "root", "root"]);

    let missing = run("drover", &["keys", "show", "--dir", "/nonexistent/drover-keys"], b"");
    assert_eq!(missing.status.code(), Some(3));
}

#[test]
fn sign_appends_signatures_from_several_key_holders() {
    let keys = KeyDir::init(&["--root-keys", "3", "--root-threshold", "2"]);
    let payload = fs::read(keys.dir.join("trust.json")).expect("trust");
    let payload = serde_json::from_slice::<Envelope>(&payload)
        .expect("envelope")
        .payload_bytes(drover_protocol::DocumentKind::Trust)
        .expect("payload");
    let first = keys.sign("root-1.key", "trust", &payload);
    let append = |envelope: &[u8], key: &str| {
        let output = run(
            "drover",
            &["keys", "sign", "--append", "--key", &keys.path(key)],
            envelope,
        );
        assert!(output.status.success(), "{}", stderr(&output));
        output.stdout
    };
    let second = append(&first, "root-2.key");
    let again = append(&second, "root-2.key");
    let envelope: Envelope = serde_json::from_slice(&again).expect("envelope");
    assert_eq!(envelope.payload_type, TRUST_PAYLOAD_TYPE);
    assert_eq!(
        envelope.signatures.len(),
        2,
        "a key that already signed is not added twice"
    );
    drover_protocol::Trust::bootstrap(&again, real_now()).expect("2 of 3 root signatures verify");

    let mismatch = run(
        "drover",
        &[
            "keys",
            "sign",
            "--append",
            "--type",
            "manifest",
            "--key",
            &keys.path("root-3.key"),
        ],
        &first,
    );
    assert_eq!(mismatch.status.code(), Some(2), "{}", stderr(&mismatch));
}

#[test]
fn rejects_replayed_and_rolled_back_manifests() {
    let keys = KeyDir::init(&[]);
    let envelope = keys.sign("manifest.key", "manifest", &live_manifest(7).to_payload());
    assert_rejected(
        &keys.verify(&envelope, "web-01", &["--last-serial", "7"]),
        "serial 7 is not greater than the last accepted serial 7",
    );
    assert_rejected(
        &keys.verify(&envelope, "web-01", &["--last-serial", "9"]),
        "serial 7 is not greater than the last accepted serial 9",
    );
}

#[test]
fn rejects_manifest_for_another_host() {
    let keys = KeyDir::init(&[]);
    let envelope = keys.sign("manifest.key", "manifest", &live_manifest(1).to_payload());
    assert_rejected(
        &keys.verify(&envelope, "web-02", &[]),
        "it is for host \"web-01\", this host is web-02",
    );
}

#[test]
fn rejects_expired_and_frozen_manifests() {
    let keys = KeyDir::init(&[]);
    let mut manifest = live_manifest(1);
    manifest.issued_at = real_now().minus(Duration::from_secs(7200));
    manifest.expires_at = real_now().minus(Duration::from_secs(3600));
    let envelope = keys.sign("manifest.key", "manifest", &manifest.to_payload());
    assert_rejected(&keys.verify(&envelope, "web-01", &[]), "expired at");

    // Freeze: the clock says it is still valid, but a newer manifest was already seen.
    let fresh = live_manifest(2);
    let envelope = keys.sign("manifest.key", "manifest", &fresh.to_payload());
    let later = real_now().plus(Duration::from_secs(2 * 86_400)).to_string();
    assert_rejected(
        &keys.verify(&envelope, "web-01", &["--last-serial", "1", "--last-issued-at", &later]),
        "expired at",
    );
}

#[test]
fn rejects_manifest_issued_in_the_future() {
    let keys = KeyDir::init(&[]);
    let mut manifest = live_manifest(1);
    manifest.issued_at = real_now().plus(Duration::from_secs(3600));
    manifest.expires_at = real_now().plus(Duration::from_secs(7200));
    let envelope = keys.sign("manifest.key", "manifest", &manifest.to_payload());
    assert_rejected(&keys.verify(&envelope, "web-01", &[]), "check the clocks");
}

#[test]
fn rejects_manifest_signed_by_a_root_key() {
    let keys = KeyDir::init(&[]);
    let envelope = keys.sign("root-1.key", "manifest", &live_manifest(1).to_payload());
    assert_rejected(&keys.verify(&envelope, "web-01", &[]), "not an authorised manifest key");
}

#[test]
fn rejects_manifest_signed_by_an_unknown_key() {
    let keys = KeyDir::init(&[]);
    let stranger = KeyDir::init(&[]);
    let envelope = stranger.sign("manifest.key", "manifest", &live_manifest(1).to_payload());
    assert_rejected(&keys.verify(&envelope, "web-01", &[]), "not an authorised manifest key");
}

#[test]
fn rejects_unknown_schema_and_unknown_fields() {
    let keys = KeyDir::init(&[]);
    let mut value = payload_json(&live_manifest(1));
    value["schema"] = 2.into();
    let envelope = keys.sign("manifest.key", "manifest", &serde_json::to_vec(&value).expect("json"));
    assert_rejected(&keys.verify(&envelope, "web-01", &[]), "unknown schema version 2");

    let mut value = payload_json(&live_manifest(1));
    value["run_as_root"] = true.into();
    let envelope = keys.sign("manifest.key", "manifest", &serde_json::to_vec(&value).expect("json"));
    assert_rejected(&keys.verify(&envelope, "web-01", &[]), "unknown field `run_as_root`");
}

#[test]
fn rejects_a_valid_signature_over_another_payload_type() {
    let keys = KeyDir::init(&[]);
    let payload = live_manifest(1).to_payload();
    let envelope = keys.sign("manifest.key", "application/vnd.example.other+json", &payload);
    assert_rejected(
        &keys.verify(&envelope, "web-01", &[]),
        "payload type \"application/vnd.example.other+json\"",
    );

    // Relabelling the type breaks the signature: PAE covers the payload type.
    let text = String::from_utf8(envelope).expect("utf-8");
    let relabelled = text.replace("application/vnd.example.other+json", MANIFEST_PAYLOAD_TYPE);
    assert_rejected(&keys.verify(relabelled.as_bytes(), "web-01", &[]), "does not verify");
}

#[test]
fn rejects_tampered_truncated_and_malformed_envelopes() {
    let keys = KeyDir::init(&[]);
    let envelope = keys.sign("manifest.key", "manifest", &live_manifest(1).to_payload());

    let mut value: serde_json::Value = serde_json::from_slice(&envelope).expect("envelope");
    let mut signature = value["signatures"][0]["sig"]
        .as_str()
        .expect("sig")
        .to_owned()
        .into_bytes();
    signature[10] = if signature[10] == b'A' { b'B' } else { b'A' };
    value["signatures"][0]["sig"] = String::from_utf8(signature).expect("ascii").into();
    assert_rejected(
        &keys.verify(&serde_json::to_vec(&value).expect("json"), "web-01", &[]),
        "does not verify",
    );

    let cut = &envelope[..envelope.len() / 2];
    assert_rejected(&keys.verify(cut, "web-01", &[]), "not a valid signed envelope");
    assert_rejected(&keys.verify(b"", "web-01", &[]), "not a valid signed envelope");
    assert_rejected(&keys.verify(b"\xff\xfe{\"payload\"", "web-01", &[]), "not UTF-8");
    assert_rejected(&keys.verify(b"[1,2,3]", "web-01", &[]), "not a valid signed envelope");
}

#[test]
fn rejects_huge_input_before_parsing() {
    let keys = KeyDir::init(&[]);
    let huge = vec![b'{'; 3 * 1024 * 1024];
    assert_rejected(
        &keys.verify(&huge, "web-01", &[]),
        "3145728 bytes is over the limit of 1048576 bytes",
    );
}

#[test]
fn rejects_signatures_below_the_manifest_threshold() {
    // `keys init` makes one manifest key; a 2-of-2 manifest role comes from the library.
    let fixture = Keys::new(1, 1, 2, 2);
    let scratch = tempfile::tempdir().expect("scratch");
    let trust = scratch.path().join("trust.json");
    let mut trust_document = fixture.document.clone();
    trust_document.expires_at = real_now().plus(Duration::from_secs(86_400));
    fs::write(&trust, trust_document.sign(&fixture.roots.iter().collect::<Vec<_>>())).expect("trust");
    let manifest = live_manifest(1);
    let one = Envelope::sign(
        MANIFEST_PAYLOAD_TYPE,
        &manifest.to_payload(),
        &[&fixture.manifest_keys[0]],
    );
    let twice = Envelope::sign(
        MANIFEST_PAYLOAD_TYPE,
        &manifest.to_payload(),
        &[&fixture.manifest_keys[0], &fixture.manifest_keys[0]],
    );
    let both = manifest.sign(&fixture.manifest_keys.iter().collect::<Vec<_>>());
    let check = |envelope: &[u8]| {
        let file = scratch.path().join("m.dsse");
        fs::write(&file, envelope).expect("write");
        run(
            "drover-agent",
            &[
                "verify",
                "--trust",
                trust.to_str().expect("utf-8"),
                "--host",
                "web-01",
                file.to_str().expect("utf-8"),
            ],
            b"",
        )
    };
    assert_rejected(
        &check(&one.to_json()),
        "1 valid manifest signature(s) from distinct keys, 2 required",
    );
    assert_rejected(
        &check(&twice.to_json()),
        "1 valid manifest signature(s) from distinct keys, 2 required",
    );
    assert!(check(&both).status.success());
}

#[test]
fn rejects_everything_when_the_trust_document_expired() {
    let fixture = Keys::simple();
    let mut document = fixture.document.clone();
    document.expires_at = real_now().minus(Duration::from_secs(60));
    let scratch = tempfile::tempdir().expect("scratch");
    let trust = scratch.path().join("trust.json");
    fs::write(&trust, document.sign(&fixture.roots.iter().collect::<Vec<_>>())).expect("trust");
    let file = scratch.path().join("m.dsse");
    fs::write(&file, fixture.sign(&live_manifest(1))).expect("manifest");
    let output = run(
        "drover-agent",
        &[
            "verify",
            "--trust",
            trust.to_str().expect("utf-8"),
            "--host",
            "web-01",
            file.to_str().expect("utf-8"),
        ],
        b"",
    );
    assert_rejected(&output, "trust document rejected: expired at");
}

#[test]
fn bad_arguments_exit_2_and_help_teaches() {
    let output = run("drover-agent", &["verify", "--host", "Not_A_Host", "x"], b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("invalid host id"), "{}", stderr(&output));

    let help = run("drover", &["keys", "--help"], b"");
    let text = String::from_utf8(help.stdout).expect("utf-8");
    for command in ["init", "show", "sign"] {
        assert!(text.contains(command), "{text}");
    }
    let help = run("drover", &["keys", "sign", "--help"], b"");
    assert!(String::from_utf8_lossy(&help.stdout).contains("--append"));
}

#[test]
fn verify_reads_stdin() {
    let keys = KeyDir::init(&[]);
    let envelope = keys.sign("manifest.key", "manifest", &live_manifest(3).to_payload());
    let trust = keys.path("trust.json");
    let output = run(
        "drover-agent",
        &["verify", "--trust", &trust, "--host", "web-01", "-"],
        &envelope,
    );
    assert!(output.status.success(), "{}", stderr(&output));
}

/// The payload of `dir`'s trust.json as JSON, to edit into a rotation.
fn trust_payload(keys: &KeyDir) -> serde_json::Value {
    let envelope: Envelope =
        serde_json::from_slice(&fs::read(keys.dir.join("trust.json")).expect("trust")).expect("envelope");
    let payload = envelope
        .payload_bytes(drover_protocol::DocumentKind::Trust)
        .expect("payload");
    serde_json::from_slice(&payload).expect("json")
}

/// Signs `payload` as a trust document with the given key files (absolute paths).
fn sign_trust(payload: &serde_json::Value, key_files: &[String]) -> Vec<u8> {
    let mut args = vec!["keys", "sign", "--type", "trust"];
    for file in key_files {
        args.extend(["--key", file.as_str()]);
    }
    let output = run("drover", &args, &serde_json::to_vec(payload).expect("json"));
    assert!(output.status.success(), "{}", stderr(&output));
    output.stdout
}

fn verify_trust(current: &KeyDir, candidate: &[u8]) -> Output {
    let file = current.write("candidate-trust.json", candidate);
    run(
        "drover-agent",
        &["verify-trust", "--trust", &current.path("trust.json"), &file],
        b"",
    )
}

#[test]
fn verify_trust_accepts_a_rotation_signed_by_old_and_new_roots() {
    let old = KeyDir::init(&[]);
    let new = KeyDir::init(&[]);
    let mut payload = trust_payload(&new);
    payload["version"] = 2.into();
    let rotation = sign_trust(&payload, &[old.path("root-1.key"), new.path("root-1.key")]);
    let output = verify_trust(&old, &rotation);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("trust document version 2 replaces version 1"),
        "{}",
        stderr(&output)
    );

    // After the rotation, the new manifest key is the one hosts accept.
    let rotated_trust = new.write("trust.json", &rotation);
    let by_new = new.sign("manifest.key", "manifest", &live_manifest(1).to_payload());
    let by_old = old.sign("manifest.key", "manifest", &live_manifest(1).to_payload());
    let verify = |envelope: &[u8]| {
        let file = new.write("m.dsse", envelope);
        run(
            "drover-agent",
            &["verify", "--trust", &rotated_trust, "--host", "web-01", &file],
            b"",
        )
    };
    assert!(verify(&by_new).status.success());
    assert_rejected(&verify(&by_old), "not an authorised manifest key");
}

#[test]
fn verify_trust_rejects_a_rotation_signed_by_the_new_roots_only() {
    let old = KeyDir::init(&[]);
    let new = KeyDir::init(&[]);
    let mut payload = trust_payload(&new);
    payload["version"] = 2.into();
    let rotation = sign_trust(&payload, &[new.path("root-1.key")]);
    assert_rejected(&verify_trust(&old, &rotation), "which is not an authorised root key");
}

#[test]
fn verify_trust_rejects_a_trust_document_signed_by_a_manifest_key() {
    let old = KeyDir::init(&[]);
    let mut payload = trust_payload(&old);
    payload["version"] = 2.into();
    let rotation = sign_trust(&payload, &[old.path("manifest.key")]);
    assert_rejected(&verify_trust(&old, &rotation), "which is not an authorised root key");
}

#[test]
fn verify_trust_rejects_a_version_that_does_not_go_up() {
    let old = KeyDir::init(&[]);
    let new = KeyDir::init(&[]);
    for version in [1, 0] {
        let mut payload = trust_payload(&new);
        payload["version"] = version.into();
        let rotation = sign_trust(&payload, &[old.path("root-1.key"), new.path("root-1.key")]);
        assert_rejected(
            &verify_trust(&old, &rotation),
            &format!("version {version} is not higher than the current version 1"),
        );
    }
}

#[test]
fn verify_trust_rejects_an_expired_trust_document() {
    let old = KeyDir::init(&[]);
    let mut payload = trust_payload(&old);
    payload["version"] = 2.into();
    payload["expires_at"] = real_now().minus(Duration::from_secs(60)).to_string().into();
    let rotation = sign_trust(&payload, &[old.path("root-1.key")]);
    assert_rejected(&verify_trust(&old, &rotation), "trust document rejected: expired at");
}
