//! Hostile-input tests of `drover_protocol::accept`: one named test per way a manifest
//! must be refused, each asserting the exact `Rejection` and that its message says why.

use drover_protocol::dsse::MAX_SIGNATURES;
use drover_protocol::manifest::{MAX_APPS, MAX_MANIFEST_BYTES, OciReference};
use drover_protocol::{
    Artifact, Digest, DocumentKind, Duration, Envelope, EnvelopeSignature, LastAccepted, MANIFEST_PAYLOAD_TYPE,
    MAX_CLOCK_SKEW, Rejection, TRUST_PAYLOAD_TYPE, accept,
};
use drover_tests::{Keys, host, key, manifest, now};
use serde_json::{Value, json};

use drover_tests::{base64_decode, base64_encode, expect_rejection};
use support::{HOST, accept_now, manifest_value, sign_json, sign_payload};

/// Helpers local to this suite (the shared fixture library is `drover_tests`).
mod support {
    use drover_protocol::{
        Envelope, MANIFEST_PAYLOAD_TYPE, Manifest, Rejection, SigningKey, Trust, VerifiedManifest, accept,
    };
    use drover_tests::{host, now};
    use serde_json::Value;

    /// The host every manifest in this suite is for.
    pub const HOST: &str = "web-01";

    /// Runs `accept` as host [`HOST`] at `now()` on its first manifest.
    pub fn accept_now(envelope: &[u8], trust: &Trust) -> Result<VerifiedManifest, Rejection> {
        accept(envelope, trust, &host(HOST), None, now())
    }

    /// The manifest's signed payload as a JSON value, to be edited before signing.
    pub fn manifest_value(manifest: &Manifest) -> Value {
        serde_json::from_slice(&manifest.to_payload()).expect("a manifest payload is JSON")
    }

    /// Signs arbitrary payload bytes as a manifest envelope.
    pub fn sign_payload(payload: &[u8], keys: &[&SigningKey]) -> Vec<u8> {
        Envelope::sign(MANIFEST_PAYLOAD_TYPE, payload, keys).to_json()
    }

    /// Signs a JSON value as a manifest envelope.
    pub fn sign_json(payload: &Value, keys: &[&SigningKey]) -> Vec<u8> {
        sign_payload(&serde_json::to_vec(payload).expect("a JSON value serializes"), keys)
    }
}

fn parse_envelope(bytes: &[u8]) -> Envelope {
    serde_json::from_slice(bytes).expect("the test's envelope is JSON")
}

fn hour() -> Duration {
    Duration::from_secs(3600)
}

// --- Accepted manifests -------------------------------------------------------------

#[test]
fn accepts_a_valid_manifest_with_ten_apps() {
    let keys = Keys::simple();
    let manifest = manifest(HOST, 7, 10);
    let envelope = keys.sign(&manifest);

    let verified = accept_now(&envelope, &keys.trust()).expect("a valid manifest is accepted");

    assert_eq!(verified.manifest(), &manifest);
    assert_eq!(verified.manifest().apps.len(), 10);
    assert_eq!(verified.payload(), manifest.to_payload().as_slice());
    assert_eq!(verified.envelope(), envelope.as_slice());
    assert_eq!(
        verified.last_accepted(),
        LastAccepted {
            serial: 7,
            issued_at: now()
        }
    );
}

#[test]
fn accepted_manifest_keeps_the_newest_issued_at_in_last_accepted() {
    let keys = Keys::simple();
    let mut manifest = manifest(HOST, 8, 1);
    manifest.issued_at = now().minus(hour());
    let last = LastAccepted {
        serial: 7,
        issued_at: now(),
    };

    let verified = accept(&keys.sign(&manifest), &keys.trust(), &host(HOST), Some(last), now())
        .expect("an older issued-at with a higher serial is still accepted");

    assert_eq!(
        verified.last_accepted(),
        LastAccepted {
            serial: 8,
            issued_at: now()
        },
        "time must never go back below the newest issued-at ever accepted"
    );
}

#[test]
fn accepts_a_threshold_of_signatures_alongside_one_from_an_unknown_key() {
    let keys = Keys::simple();
    let stranger = key();
    let envelope = manifest(HOST, 1, 1).sign(&[&keys.manifest_keys[0], &stranger]);

    accept_now(&envelope, &keys.trust())
        .expect("an extra signature from an unknown key does not spoil a met threshold");
}

// --- Size ---------------------------------------------------------------------------

#[test]
fn rejects_garbage_over_the_size_limit_before_parsing() {
    let keys = Keys::simple();
    let garbage = vec![0xffu8; 2 * 1024 * 1024];

    let rejection = expect_rejection(
        accept_now(&garbage, &keys.trust()),
        &["manifest", "2097152 bytes", "over the limit"],
    );

    assert!(
        matches!(
            rejection,
            Rejection::TooLarge {
                kind: DocumentKind::Manifest,
                size: 2_097_152,
                limit: MAX_MANIFEST_BYTES
            }
        ),
        "{rejection:?}"
    );
}

#[test]
fn rejects_valid_json_shaped_envelope_one_byte_over_the_limit() {
    let keys = Keys::simple();
    let prefix = format!(r#"{{"payloadType":"{MANIFEST_PAYLOAD_TYPE}","payload":""#);
    let suffix = r#"","signatures":[]}"#;
    let filler = MAX_MANIFEST_BYTES + 1 - prefix.len() - suffix.len();
    let envelope = format!("{prefix}{}{suffix}", "A".repeat(filler));
    assert_eq!(envelope.len(), MAX_MANIFEST_BYTES + 1);
    assert!(
        serde_json::from_str::<Value>(&envelope).is_ok(),
        "the input must be valid JSON"
    );

    let rejection = expect_rejection(
        accept_now(envelope.as_bytes(), &keys.trust()),
        &["1048577 bytes", "1048576"],
    );

    assert!(
        matches!(
            rejection,
            Rejection::TooLarge {
                size,
                limit: MAX_MANIFEST_BYTES,
                ..
            } if size == MAX_MANIFEST_BYTES + 1
        ),
        "{rejection:?}"
    );
}

#[test]
fn accepts_a_valid_manifest_of_exactly_the_size_limit_and_rejects_one_byte_more() {
    let keys = Keys::simple();
    // The padding is spread over five apps: one spec may be at most MAX_SPEC_BYTES.
    const APPS: usize = 5;
    let unpadded = manifest_value(&manifest(HOST, 1, APPS));
    let payload = |padding: usize| {
        let mut value = unpadded.clone();
        for index in 0..APPS {
            let share = padding / APPS + if index == 0 { padding % APPS } else { 0 };
            value["apps"][format!("app-{index}")]["spec"]["service"]["environment"]["PADDING"] =
                Value::String("x".repeat(share));
        }
        serde_json::to_vec(&value).expect("a JSON value serializes")
    };
    let signed = |padding: usize| sign_payload(&payload(padding), &[&keys.manifest_keys[0]]);
    // An extra signature from an unknown key is ignored once the threshold is met; its
    // key id's length tunes the envelope to the exact byte (base64 grows in steps of 4).
    let with_extra_signature = |envelope: &[u8], keyid_length: usize| {
        let mut envelope = parse_envelope(envelope);
        envelope.signatures.push(EnvelopeSignature {
            keyid: "k".repeat(keyid_length),
            sig: String::new(),
        });
        envelope.to_json()
    };
    let extra_signature = with_extra_signature(&signed(0), 0).len() - signed(0).len();
    let outside_payload = signed(0).len() - base64_encode(&payload(0)).len();
    let largest_payload = (MAX_MANIFEST_BYTES - outside_payload - extra_signature) / 4 * 3;
    let padding = largest_payload - payload(0).len() - 100;
    let base = signed(padding);
    let keyid_length = MAX_MANIFEST_BYTES - extra_signature - base.len();
    assert!(
        (100..200).contains(&keyid_length),
        "the padding arithmetic is off: {keyid_length}"
    );

    let at_limit = with_extra_signature(&base, keyid_length);
    assert_eq!(at_limit.len(), MAX_MANIFEST_BYTES);
    let verified = accept_now(&at_limit, &keys.trust()).expect("an envelope of exactly the limit is accepted");
    assert_eq!(verified.manifest().serial, 1);

    let over_limit = with_extra_signature(&base, keyid_length + 1);
    assert_eq!(over_limit.len(), MAX_MANIFEST_BYTES + 1);
    let rejection = expect_rejection(accept_now(&over_limit, &keys.trust()), &["over the limit"]);
    assert!(matches!(rejection, Rejection::TooLarge { .. }), "{rejection:?}");
}

#[test]
fn rejects_more_apps_than_the_limit() {
    let keys = Keys::simple();
    let envelope = keys.sign(&manifest(HOST, 1, MAX_APPS + 1));

    let rejection = expect_rejection(accept_now(&envelope, &keys.trust()), &["invalid payload", "256"]);

    assert!(
        matches!(
            rejection,
            Rejection::BadPayload {
                kind: DocumentKind::Manifest,
                ..
            }
        ),
        "{rejection:?}"
    );
    accept_now(&keys.sign(&manifest(HOST, 1, MAX_APPS)), &keys.trust()).expect("exactly the limit of apps is accepted");
}

// --- Encoding -----------------------------------------------------------------------

fn assert_bad_encoding(rejection: &Rejection) {
    assert!(
        matches!(
            rejection,
            Rejection::BadEncoding {
                kind: DocumentKind::Manifest,
                ..
            }
        ),
        "{rejection:?}"
    );
}

#[test]
fn rejects_input_that_is_not_json() {
    let keys = Keys::simple();
    for input in [&b"not json at all"[..], b"<manifest/>", b"[]", b"null", b"\"a string\""] {
        let rejection = expect_rejection(
            accept_now(input, &keys.trust()),
            &["manifest rejected", "not a valid signed envelope"],
        );
        assert_bad_encoding(&rejection);
    }
}

#[test]
fn rejects_empty_input() {
    let keys = Keys::simple();

    let rejection = expect_rejection(accept_now(b"", &keys.trust()), &["not a valid signed envelope"]);

    assert_bad_encoding(&rejection);
}

#[test]
fn rejects_non_utf8_input() {
    let keys = Keys::simple();
    let mut envelope = keys.sign(&manifest(HOST, 1, 1));
    // Inside the payloadType string, where a lenient decoder might let it pass.
    envelope[16] = 0xc3;
    envelope[17] = 0x28;

    let rejection = expect_rejection(
        accept_now(&envelope, &keys.trust()),
        &["not a valid signed envelope", "not UTF-8"],
    );

    assert_bad_encoding(&rejection);
}

#[test]
fn rejects_payload_that_is_not_base64() {
    let keys = Keys::simple();
    let valid = parse_envelope(&keys.sign(&manifest(HOST, 1, 1)));
    let unpadded = valid.payload.trim_end_matches('=').to_owned();
    let cases = [
        "not base64!".to_owned(),
        format!("{}*", &valid.payload[..valid.payload.len() - 1]),
        format!("{}=", valid.payload),
        if unpadded.len() == valid.payload.len() {
            format!("{}A", valid.payload)
        } else {
            unpadded
        },
        format!("-{}", &valid.payload[1..]),
    ];
    for payload in cases {
        let envelope = Envelope {
            payload,
            ..valid.clone()
        };

        let rejection = expect_rejection(
            accept_now(&envelope.to_json(), &keys.trust()),
            &["not a valid signed envelope", "base64"],
        );

        assert_bad_encoding(&rejection);
    }
}

#[test]
fn rejects_truncated_envelope_at_every_cut_point() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let envelope = keys.sign(&manifest(HOST, 1, 1));

    for cut in 0..envelope.len() {
        let rejection = expect_rejection(accept_now(&envelope[..cut], &trust), &["not a valid signed envelope"]);
        assert_bad_encoding(&rejection);
    }
    accept_now(&envelope, &trust).expect("the whole envelope is accepted");
}

#[test]
fn rejects_unknown_field_in_envelope() {
    let keys = Keys::simple();
    let mut envelope: Value = serde_json::from_slice(&keys.sign(&manifest(HOST, 1, 1))).expect("envelope is JSON");
    envelope["comment"] = json!("ignore me");

    let rejection = expect_rejection(
        accept_now(&serde_json::to_vec(&envelope).expect("JSON"), &keys.trust()),
        &["not a valid signed envelope", "comment"],
    );

    assert_bad_encoding(&rejection);
}

#[test]
fn rejects_unknown_field_in_envelope_signature() {
    let keys = Keys::simple();
    let mut envelope: Value = serde_json::from_slice(&keys.sign(&manifest(HOST, 1, 1))).expect("envelope is JSON");
    envelope["signatures"][0]["cert"] = json!("");

    let rejection = expect_rejection(
        accept_now(&serde_json::to_vec(&envelope).expect("JSON"), &keys.trust()),
        &["not a valid signed envelope", "cert"],
    );

    assert_bad_encoding(&rejection);
}

#[test]
fn rejects_duplicate_field_in_envelope() {
    // Two readers that keep the first or the last payload would disagree on what was
    // accepted; the envelope must be refused instead.
    let keys = Keys::simple();
    let valid = String::from_utf8(keys.sign(&manifest(HOST, 1, 1))).expect("envelope is UTF-8");
    let other = parse_envelope(&keys.sign(&manifest(HOST, 2, 1)));
    let duplicated = valid.replacen(
        r#""payload":"#,
        &format!(r#""payload":"{}","payload":"#, other.payload),
        1,
    );
    assert_ne!(duplicated, valid);

    let rejection = expect_rejection(
        accept_now(duplicated.as_bytes(), &keys.trust()),
        &["not a valid signed envelope", "duplicate field"],
    );

    assert_bad_encoding(&rejection);
}

// --- Payload type -------------------------------------------------------------------

#[test]
fn rejects_trust_document_presented_as_manifest() {
    let keys = Keys::simple();
    // Validly signed, by keys the host trusts, but a trust document, not a manifest.
    let trust_envelope = keys.trust_envelope();

    let rejection = expect_rejection(
        accept_now(&trust_envelope, &keys.trust()),
        &[TRUST_PAYLOAD_TYPE, MANIFEST_PAYLOAD_TYPE],
    );

    assert!(
        matches!(
            &rejection,
            Rejection::UnknownPayloadType {
                kind: DocumentKind::Manifest,
                expected: MANIFEST_PAYLOAD_TYPE,
                found,
            } if found == TRUST_PAYLOAD_TYPE
        ),
        "{rejection:?}"
    );
}

#[test]
fn rejects_manifest_payload_signed_under_another_payload_type() {
    let keys = Keys::simple();
    let envelope = Envelope::sign(
        TRUST_PAYLOAD_TYPE,
        &manifest(HOST, 1, 1).to_payload(),
        &[&keys.manifest_keys[0]],
    );

    let rejection = expect_rejection(accept_now(&envelope.to_json(), &keys.trust()), &["payload type"]);

    assert!(
        matches!(rejection, Rejection::UnknownPayloadType { .. }),
        "{rejection:?}"
    );
}

#[test]
fn rejects_signature_made_for_another_payload_type() {
    // The signature covers PAE(type, payload): rewriting the type field must break it.
    let keys = Keys::simple();
    let mut envelope = Envelope::sign(
        "application/vnd.drover.other+json",
        &manifest(HOST, 1, 1).to_payload(),
        &[&keys.manifest_keys[0]],
    );
    envelope.payload_type = MANIFEST_PAYLOAD_TYPE.to_owned();

    let rejection = expect_rejection(
        accept_now(&envelope.to_json(), &keys.trust()),
        &[
            "does not verify",
            keys.manifest_keys[0].key_id().as_str(),
            "manifest key",
        ],
    );

    assert!(
        matches!(
            &rejection,
            Rejection::InvalidSignature {
                kind: DocumentKind::Manifest,
                role: "manifest",
                keyid,
            } if keyid == keys.manifest_keys[0].key_id()
        ),
        "{rejection:?}"
    );
}

// --- Schema -------------------------------------------------------------------------

#[test]
fn rejects_unknown_schema_version() {
    let keys = Keys::simple();
    let mut manifest = manifest(HOST, 1, 1);
    manifest.schema = 2;

    let rejection = expect_rejection(
        accept_now(&keys.sign(&manifest), &keys.trust()),
        &["unknown schema version 2", "knows 1", "upgrade"],
    );

    assert!(
        matches!(
            rejection,
            Rejection::UnknownSchema {
                kind: DocumentKind::Manifest,
                schema: 2,
                known: 1
            }
        ),
        "{rejection:?}"
    );
}

#[test]
fn rejects_payload_without_a_schema_version() {
    let keys = Keys::simple();
    let mut value = manifest_value(&manifest(HOST, 1, 1));
    value
        .as_object_mut()
        .expect("object")
        .remove("schema")
        .expect("had a schema");

    let rejection = expect_rejection(
        accept_now(&sign_json(&value, &[&keys.manifest_keys[0]]), &keys.trust()),
        &["invalid payload", "schema"],
    );

    assert!(matches!(rejection, Rejection::BadPayload { .. }), "{rejection:?}");
}

// --- Signatures ---------------------------------------------------------------------

#[test]
fn rejects_unsigned_manifest() {
    let keys = Keys::simple();
    let envelope = manifest(HOST, 1, 1).sign(&[]);

    let rejection = expect_rejection(
        accept_now(&envelope, &keys.trust()),
        &["0 valid manifest signature(s)", "1 required"],
    );

    assert!(
        matches!(
            rejection,
            Rejection::BelowThreshold {
                kind: DocumentKind::Manifest,
                role: "manifest",
                valid: 0,
                threshold: 1
            }
        ),
        "{rejection:?}"
    );
}

#[test]
fn rejects_signatures_below_threshold() {
    let keys = Keys::new(1, 1, 2, 2);
    let envelope = manifest(HOST, 1, 1).sign(&[&keys.manifest_keys[0]]);

    let rejection = expect_rejection(
        accept_now(&envelope, &keys.trust()),
        &["1 valid manifest signature(s) from distinct keys", "2 required"],
    );

    assert!(
        matches!(
            rejection,
            Rejection::BelowThreshold {
                kind: DocumentKind::Manifest,
                role: "manifest",
                valid: 1,
                threshold: 2
            }
        ),
        "{rejection:?}"
    );
    accept_now(&keys.sign(&manifest(HOST, 1, 1)), &keys.trust()).expect("both keys together meet the threshold");
}

#[test]
fn rejects_one_key_signing_twice_to_reach_threshold() {
    let keys = Keys::new(1, 1, 2, 2);
    let first = &keys.manifest_keys[0];
    let envelope = manifest(HOST, 1, 1).sign(&[first, first]);
    assert_eq!(parse_envelope(&envelope).signatures.len(), 2);

    let rejection = expect_rejection(
        accept_now(&envelope, &keys.trust()),
        &["1 valid", "distinct keys", "2 required"],
    );

    assert!(
        matches!(
            rejection,
            Rejection::BelowThreshold {
                valid: 1,
                threshold: 2,
                ..
            }
        ),
        "{rejection:?}"
    );
}

#[test]
fn rejects_manifest_signed_by_unknown_key() {
    let keys = Keys::simple();
    let stranger = key();
    let envelope = manifest(HOST, 1, 1).sign(&[&stranger]);

    let rejection = expect_rejection(
        accept_now(&envelope, &keys.trust()),
        &[stranger.key_id().as_str(), "not an authorised manifest key"],
    );

    assert!(
        matches!(
            &rejection,
            Rejection::UnknownKey {
                kind: DocumentKind::Manifest,
                role: "manifest",
                keyid,
            } if keyid == stranger.key_id().as_str()
        ),
        "{rejection:?}"
    );
}

#[test]
fn rejects_manifest_signed_by_root_key() {
    // Root keys authorise trust documents only; they are not manifest keys.
    let keys = Keys::simple();
    let root = &keys.roots[0];
    let envelope = manifest(HOST, 1, 1).sign(&[root]);

    let rejection = expect_rejection(
        accept_now(&envelope, &keys.trust()),
        &[root.key_id().as_str(), "not an authorised manifest key"],
    );

    assert!(
        matches!(
            &rejection,
            Rejection::UnknownKey {
                role: "manifest",
                keyid,
                ..
            } if keyid == root.key_id().as_str()
        ),
        "{rejection:?}"
    );
}

#[test]
fn rejects_bit_flipped_signature() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let valid = parse_envelope(&keys.sign(&manifest(HOST, 1, 1)));
    let signature = base64_decode(&valid.signatures[0].sig);
    assert_eq!(signature.len(), 64);

    for (index, bit) in [(0, 0x01), (31, 0x80), (32, 0x01), (63, 0x40)] {
        let mut flipped = signature.clone();
        flipped[index] ^= bit;
        let mut envelope = valid.clone();
        envelope.signatures[0].sig = base64_encode(&flipped);

        let rejection = expect_rejection(
            accept_now(&envelope.to_json(), &trust),
            &["does not verify", "forged or altered"],
        );

        assert!(
            matches!(
                &rejection,
                Rejection::InvalidSignature { keyid, .. } if keyid == keys.manifest_keys[0].key_id()
            ),
            "byte {index}: {rejection:?}"
        );
    }
}

#[test]
fn rejects_signature_that_is_not_base64_or_not_64_bytes() {
    let keys = Keys::simple();
    let valid = parse_envelope(&keys.sign(&manifest(HOST, 1, 1)));
    let signature = base64_decode(&valid.signatures[0].sig);
    for sig in [
        "!!!!".to_owned(),
        String::new(),
        base64_encode(&signature[..63]),
        base64_encode(&[signature.as_slice(), &[0]].concat()),
    ] {
        let mut envelope = valid.clone();
        envelope.signatures[0].sig = sig;

        let rejection = expect_rejection(accept_now(&envelope.to_json(), &keys.trust()), &["does not verify"]);

        assert!(matches!(rejection, Rejection::InvalidSignature { .. }), "{rejection:?}");
    }
}

#[test]
fn rejects_bit_flip_in_payload_base64() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let valid = parse_envelope(&keys.sign(&manifest(HOST, 1, 1)));
    let middle = valid.payload.len() / 2;

    // Every single-bit change of one base64 character in the middle of the payload.
    for bit in 0..8 {
        let mut payload = valid.payload.clone().into_bytes();
        payload[middle] ^= 1 << bit;
        let Ok(payload) = String::from_utf8(payload) else {
            continue; // Not representable in a JSON string; covered by the UTF-8 test.
        };
        let mut envelope = valid.clone();
        envelope.payload = payload;
        let result = accept_now(&envelope.to_json(), &trust);

        let rejection = result.expect_err("an altered payload must be rejected");
        assert!(
            matches!(
                rejection,
                Rejection::InvalidSignature { .. } | Rejection::BadEncoding { .. }
            ),
            "bit {bit}: {rejection:?}"
        );
    }

    // A change that is still valid base64: the signature must catch it.
    let mut decoded = base64_decode(&valid.payload);
    let serial_at = decoded
        .windows(10)
        .position(|window| window == br#""serial":1"#)
        .expect("the payload has a serial")
        + 9;
    decoded[serial_at] = b'9';
    let mut envelope = valid.clone();
    envelope.payload = base64_encode(&decoded);
    let rejection = expect_rejection(
        accept_now(&envelope.to_json(), &trust),
        &["does not verify", "forged or altered"],
    );
    assert!(matches!(rejection, Rejection::InvalidSignature { .. }), "{rejection:?}");
}

#[test]
fn rejects_too_many_signatures() {
    let keys = Keys::simple();
    let signer = &keys.manifest_keys[0];
    let signers = vec![signer; MAX_SIGNATURES + 1];
    let envelope = manifest(HOST, 1, 1).sign(&signers);

    let rejection = expect_rejection(accept_now(&envelope, &keys.trust()), &["33 signatures", "limit of 32"]);

    assert!(
        matches!(
            rejection,
            Rejection::TooManySignatures {
                kind: DocumentKind::Manifest,
                count: 33,
                limit: 32
            }
        ),
        "{rejection:?}"
    );
    let at_limit = manifest(HOST, 1, 1).sign(&vec![signer; MAX_SIGNATURES]);
    accept_now(&at_limit, &keys.trust()).expect("32 signatures are within the limit");
}

// --- Host, serial, time -------------------------------------------------------------

#[test]
fn rejects_manifest_for_another_host() {
    let keys = Keys::simple();
    let envelope = keys.sign(&manifest("web-02", 1, 1));

    let rejection = expect_rejection(
        accept_now(&envelope, &keys.trust()),
        &["\"web-02\"", "this host is web-01"],
    );

    assert!(
        matches!(
            &rejection,
            Rejection::WrongHost { expected, found } if expected == &host(HOST) && found == "web-02"
        ),
        "{rejection:?}"
    );
}

#[test]
fn rejects_replayed_manifest() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let envelope = keys.sign(&manifest(HOST, 7, 1));
    let first = accept(&envelope, &trust, &host(HOST), None, now()).expect("the first delivery is accepted");

    let rejection = expect_rejection(
        accept(
            &envelope,
            &trust,
            &host(HOST),
            Some(first.last_accepted()),
            now().plus(Duration::from_secs(60)),
        ),
        &["serial 7", "last accepted serial 7", "replayed"],
    );

    assert!(
        matches!(
            rejection,
            Rejection::Replay {
                serial: 7,
                last_accepted: 7
            }
        ),
        "{rejection:?}"
    );
}

#[test]
fn rejects_rolled_back_manifest() {
    let keys = Keys::simple();
    let last = LastAccepted {
        serial: 7,
        issued_at: now().minus(hour()),
    };
    let older = keys.sign(&manifest(HOST, 6, 1));

    let rejection = expect_rejection(
        accept(&older, &keys.trust(), &host(HOST), Some(last), now()),
        &["serial 6", "last accepted serial 7", "rolled-back"],
    );

    assert!(
        matches!(
            rejection,
            Rejection::Replay {
                serial: 6,
                last_accepted: 7
            }
        ),
        "{rejection:?}"
    );
}

#[test]
fn rejects_expired_manifest() {
    let keys = Keys::simple();
    let manifest = manifest(HOST, 1, 1);
    let envelope = keys.sign(&manifest);

    for later in [manifest.expires_at, manifest.expires_at.plus(hour())] {
        let rejection = expect_rejection(
            accept(&envelope, &keys.trust(), &host(HOST), None, later),
            &[
                "manifest rejected",
                &format!("expired at {}", manifest.expires_at),
                &format!("now is {later}"),
            ],
        );

        assert!(
            matches!(
                rejection,
                Rejection::Expired {
                    kind: DocumentKind::Manifest,
                    expires_at,
                    effective_now,
                } if expires_at == manifest.expires_at && effective_now == later
            ),
            "{rejection:?}"
        );
    }
    accept(
        &envelope,
        &keys.trust(),
        &host(HOST),
        None,
        manifest.expires_at.minus(Duration::from_secs(1)),
    )
    .expect("one second before expiry it is still valid");
}

#[test]
fn rejects_frozen_feed_past_manifest_expiry() {
    // The clock says the manifest is fine, but the host has already seen a manifest
    // issued after this one expired: someone is replaying an old feed with a new serial
    // or holding the host's clock back.
    let keys = Keys::simple();
    let mut stale = manifest(HOST, 9, 1);
    stale.issued_at = now().minus(Duration::from_secs(2 * 86_400));
    stale.expires_at = now().minus(Duration::from_secs(86_400));
    let last = LastAccepted {
        serial: 8,
        issued_at: now(),
    };
    let clock = now().minus(Duration::from_secs(3 * 86_400 / 2));

    let rejection = expect_rejection(
        accept(&keys.sign(&stale), &keys.trust(), &host(HOST), Some(last), clock),
        &[
            &format!("expired at {}", stale.expires_at),
            &format!("now is {}", now()),
        ],
    );

    assert!(
        matches!(
            rejection,
            Rejection::Expired {
                kind: DocumentKind::Manifest,
                expires_at,
                effective_now,
            } if expires_at == stale.expires_at && effective_now == now()
        ),
        "{rejection:?}"
    );
}

#[test]
fn rejects_manifest_issued_too_far_in_the_future() {
    let keys = Keys::simple();
    let mut manifest = manifest(HOST, 1, 1);
    manifest.issued_at = now().plus(MAX_CLOCK_SKEW).plus(Duration::from_secs(1));

    let rejection = expect_rejection(
        accept_now(&keys.sign(&manifest), &keys.trust()),
        &[&format!("issued at {}", manifest.issued_at), "5m", "check the clocks"],
    );

    assert!(
        matches!(
            rejection,
            Rejection::IssuedInFuture {
                issued_at,
                now: clock,
                skew: MAX_CLOCK_SKEW,
            } if issued_at == manifest.issued_at && clock == now()
        ),
        "{rejection:?}"
    );
}

#[test]
fn accepts_manifest_issued_just_within_clock_skew() {
    let keys = Keys::simple();
    let mut manifest = manifest(HOST, 1, 1);
    manifest.issued_at = now().plus(MAX_CLOCK_SKEW);

    let verified =
        accept_now(&keys.sign(&manifest), &keys.trust()).expect("issued exactly the allowed skew ahead is accepted");

    assert_eq!(verified.last_accepted().issued_at, manifest.issued_at);
}

#[test]
fn rejects_manifest_while_the_trust_document_is_expired() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let mut manifest = manifest(HOST, 1, 1);
    manifest.issued_at = trust.expires_at();
    manifest.expires_at = trust.expires_at().plus(hour());

    let rejection = expect_rejection(
        accept(&keys.sign(&manifest), &trust, &host(HOST), None, trust.expires_at()),
        &["trust document rejected", &format!("expired at {}", trust.expires_at())],
    );

    assert!(
        matches!(
            rejection,
            Rejection::Expired {
                kind: DocumentKind::Trust,
                expires_at,
                ..
            } if expires_at == trust.expires_at()
        ),
        "{rejection:?}"
    );
}

#[test]
fn rejects_manifest_when_last_issued_at_is_past_trust_expiry() {
    // A clock held back does not revive an expired trust document either.
    let keys = Keys::simple();
    let trust = keys.trust();
    let last = LastAccepted {
        serial: 1,
        issued_at: trust.expires_at(),
    };

    let rejection = expect_rejection(
        accept(
            &keys.sign(&manifest(HOST, 2, 1)),
            &trust,
            &host(HOST),
            Some(last),
            now(),
        ),
        &["trust document rejected", "expired"],
    );

    assert!(
        matches!(
            rejection,
            Rejection::Expired {
                kind: DocumentKind::Trust,
                effective_now,
                ..
            } if effective_now == trust.expires_at()
        ),
        "{rejection:?}"
    );
}

// --- Payload ------------------------------------------------------------------------

fn assert_bad_payload(rejection: &Rejection) {
    assert!(
        matches!(
            rejection,
            Rejection::BadPayload {
                kind: DocumentKind::Manifest,
                ..
            }
        ),
        "{rejection:?}"
    );
}

#[test]
fn rejects_manifest_expiring_before_it_is_issued() {
    let keys = Keys::simple();
    for expires_at in [now(), now().minus(Duration::from_secs(1))] {
        let mut manifest = manifest(HOST, 1, 1);
        manifest.expires_at = expires_at;

        let rejection = expect_rejection(
            accept_now(&keys.sign(&manifest), &keys.trust()),
            &["invalid payload", "is not after issued_at"],
        );

        assert_bad_payload(&rejection);
    }
}

#[test]
fn rejects_unknown_field_in_signed_payload() {
    // Policy: a signed document with a field this build does not know is refused, since
    // an ignored field could be one meant to restrict what the agent may do.
    let keys = Keys::simple();
    let valid = manifest_value(&manifest(HOST, 1, 1));
    let mut top = valid.clone();
    top["restrict_to"] = json!("nothing");
    let mut release = valid.clone();
    release["apps"]["app-0"]["pinned"] = json!(true);
    let mut artifact = valid.clone();
    artifact["apps"]["app-0"]["artifact"]["signature"] = json!("");
    let mut spec = valid.clone();
    spec["apps"]["app-0"]["spec"]["service"]["sandbox"] = json!("off");

    for (payload, field) in [
        (top, "restrict_to"),
        (release, "pinned"),
        (artifact, "signature"),
        (spec, "sandbox"),
    ] {
        let rejection = expect_rejection(
            accept_now(&sign_json(&payload, &[&keys.manifest_keys[0]]), &keys.trust()),
            &["invalid payload", "unknown field", field],
        );

        assert_bad_payload(&rejection);
    }
}

#[test]
fn rejects_payload_missing_a_required_field() {
    let keys = Keys::simple();
    let mut value = manifest_value(&manifest(HOST, 1, 1));
    value
        .as_object_mut()
        .expect("object")
        .remove("serial")
        .expect("had a serial");

    let rejection = expect_rejection(
        accept_now(&sign_json(&value, &[&keys.manifest_keys[0]]), &keys.trust()),
        &["invalid payload", "serial"],
    );

    assert_bad_payload(&rejection);
}

#[test]
fn rejects_duplicate_app_in_payload() {
    let keys = Keys::simple();
    let payload = String::from_utf8(manifest(HOST, 1, 2).to_payload()).expect("a payload is UTF-8");
    assert_eq!(payload.matches(r#""app-1":"#).count(), 1);
    let duplicated = payload.replace(r#""app-1":"#, r#""app-0":"#);

    let rejection = expect_rejection(
        accept_now(
            &sign_payload(duplicated.as_bytes(), &[&keys.manifest_keys[0]]),
            &keys.trust(),
        ),
        &["invalid payload", "app-0", "listed twice"],
    );

    assert_bad_payload(&rejection);
}

#[test]
fn rejects_duplicate_field_in_payload() {
    // serde_json would otherwise keep one of the two serials, and a second reader of the
    // same signed bytes could keep the other.
    let keys = Keys::simple();
    let payload = String::from_utf8(manifest(HOST, 5, 1).to_payload()).expect("a payload is UTF-8");
    let duplicated = payload.replacen(r#""serial":5"#, r#""serial":5,"serial":9"#, 1);
    assert_ne!(payload, duplicated);

    let rejection = expect_rejection(
        accept_now(
            &sign_payload(duplicated.as_bytes(), &[&keys.manifest_keys[0]]),
            &keys.trust(),
        ),
        &["invalid payload", "duplicate field", "serial"],
    );

    assert_bad_payload(&rejection);
}

#[test]
fn rejects_oci_reference_not_pinned_to_its_digest() {
    let keys = Keys::simple();
    let pinned = Digest::of(b"image manifest");
    let other = Digest::of(b"another image manifest");
    let oci = |digest: Digest| {
        let mut manifest = manifest(HOST, 1, 1);
        let release = manifest.apps.values_mut().next().expect("the manifest has an app");
        release.artifact = Artifact::Oci {
            reference: OciReference::try_from(format!("registry.example/team/app@{pinned}")).expect("valid reference"),
            digest,
        };
        manifest
    };

    let rejection = expect_rejection(
        accept_now(&keys.sign(&oci(other.clone())), &keys.trust()),
        &["invalid payload", "app-0", "not pinned to digest", other.as_str()],
    );

    assert_bad_payload(&rejection);
    accept_now(&keys.sign(&oci(pinned.clone())), &keys.trust()).expect("a reference pinned to its digest is accepted");
}

#[test]
fn rejects_invalid_app_name_in_signed_payload() {
    let keys = Keys::simple();
    let payload = String::from_utf8(manifest(HOST, 1, 1).to_payload()).expect("a payload is UTF-8");
    for bad_name in ["../etc", "App", "-web", ""] {
        let hostile = payload.replace(r#""app-0":"#, &format!(r#""{bad_name}":"#));

        let rejection = expect_rejection(
            accept_now(
                &sign_payload(hostile.as_bytes(), &[&keys.manifest_keys[0]]),
                &keys.trust(),
            ),
            &["invalid payload", "invalid app name"],
        );

        assert_bad_payload(&rejection);
    }
}

#[test]
fn rejects_invalid_version_in_signed_payload() {
    let keys = Keys::simple();
    for bad_version in ["..", "../../bin", "1 2", ""] {
        let mut value = manifest_value(&manifest(HOST, 1, 1));
        value["apps"]["app-0"]["version"] = json!(bad_version);

        let rejection = expect_rejection(
            accept_now(&sign_json(&value, &[&keys.manifest_keys[0]]), &keys.trust()),
            &["invalid payload", "invalid version"],
        );

        assert_bad_payload(&rejection);
    }
}

#[test]
fn rejects_invalid_digest_in_signed_payload() {
    let keys = Keys::simple();
    let valid = Digest::of(b"x");
    for bad_digest in [
        valid.as_str().to_uppercase(),
        valid.as_str().replace("sha256:", "sha512:"),
        valid.as_str()[..valid.as_str().len() - 1].to_owned(),
        "sha256:".to_owned(),
    ] {
        let mut value = manifest_value(&manifest(HOST, 1, 1));
        value["apps"]["app-0"]["artifact"]["digest"] = json!(bad_digest);

        let rejection = expect_rejection(
            accept_now(&sign_json(&value, &[&keys.manifest_keys[0]]), &keys.trust()),
            &["invalid payload", "invalid digest"],
        );

        assert_bad_payload(&rejection);
    }
}

// --- Messages -----------------------------------------------------------------------

/// Text an attacker would like to see in the agent's log as a line of its own.
const INJECTED: &str = "x\nERROR drover_agent: manifest accepted\r\u{1b}[2K";

#[test]
fn rejection_message_stays_on_one_line_for_a_hostile_key_id() {
    // Anyone who can hand the agent bytes chooses the key id; the one-line message of
    // `Rejection` must not let it start a forged log line.
    let keys = Keys::simple();
    let mut envelope = parse_envelope(&keys.sign(&manifest(HOST, 1, 1)));
    envelope.signatures[0].keyid = INJECTED.to_owned();

    let rejection = expect_rejection(
        accept_now(&envelope.to_json(), &keys.trust()),
        &["not an authorised manifest key"],
    );

    assert!(matches!(rejection, Rejection::UnknownKey { .. }), "{rejection:?}");
}

#[test]
fn rejection_message_stays_on_one_line_for_a_hostile_field_name() {
    let keys = Keys::simple();
    let mut envelope: Value = serde_json::from_slice(&keys.sign(&manifest(HOST, 1, 1))).expect("envelope is JSON");
    envelope[INJECTED] = json!(1);
    let mut payload = manifest_value(&manifest(HOST, 1, 1));
    payload[INJECTED] = json!(1);

    let rejection = expect_rejection(
        accept_now(&serde_json::to_vec(&envelope).expect("JSON"), &keys.trust()),
        &["unknown field"],
    );
    assert_bad_encoding(&rejection);
    let rejection = expect_rejection(
        accept_now(&sign_json(&payload, &[&keys.manifest_keys[0]]), &keys.trust()),
        &["unknown field"],
    );
    assert_bad_payload(&rejection);
}

// --- Purity -------------------------------------------------------------------------

#[test]
fn rejected_manifest_changes_nothing() {
    // `accept` is pure: the caller keeps `last`, and a rejection gives it nothing new to
    // persist, so the next valid manifest is judged exactly as if the bad one never came.
    let keys = Keys::simple();
    let trust = keys.trust();
    let last = LastAccepted {
        serial: 4,
        issued_at: now().minus(hour()),
    };
    let stranger = key();
    let hostile = [
        manifest(HOST, 100, 1).sign(&[&stranger]),
        keys.sign(&manifest("web-02", 100, 1)),
        keys.sign(&manifest(HOST, 3, 1)),
        b"{".to_vec(),
    ];
    let next = keys.sign(&manifest(HOST, 5, 1));
    let before = accept(&next, &trust, &host(HOST), Some(last), now()).expect("the next manifest is valid");

    for envelope in &hostile {
        accept(envelope, &trust, &host(HOST), Some(last), now()).expect_err("each hostile manifest is rejected");
    }
    let after = accept(&next, &trust, &host(HOST), Some(last), now())
        .expect("the next manifest is still accepted after the rejections");

    assert_eq!(after.manifest(), before.manifest());
    assert_eq!(after.last_accepted(), before.last_accepted());
    assert_eq!(
        after.last_accepted(),
        LastAccepted {
            serial: 5,
            issued_at: now()
        }
    );
    assert_eq!(trust.version(), 1);
}
