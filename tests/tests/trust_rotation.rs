//! Trust documents: bootstrap, rotation and its chains, thresholds, and the malformed
//! documents a host must refuse, each as a named test asserting the exact `Rejection`.

use drover_protocol::trust::{MAX_KEYS_PER_ROLE, MAX_ROTATION_CHAIN, MAX_TRUST_BYTES};
use drover_protocol::{
    DocumentKind, Duration, Envelope, MANIFEST_PAYLOAD_TYPE, Rejection, SigningKey, TRUST_PAYLOAD_TYPE, Trust, accept,
};
use drover_tests::{Keys, host, key, manifest, now};
use serde_json::{Value, json};

use drover_tests::expect_rejection;
use support::{document, sign_value, value_of, year};

/// Helpers local to this suite (the shared fixture library is `drover_tests`).
mod support {
    use drover_protocol::trust::{RoleKeys, TRUST_SCHEMA};
    use drover_protocol::{Duration, Envelope, SigningKey, TRUST_PAYLOAD_TYPE, TrustDocument};
    use drover_tests::now;
    use serde_json::Value;

    /// A year, the validity of every document unless a test says otherwise.
    pub fn year() -> Duration {
        Duration::from_secs(365 * 86_400)
    }

    /// A trust document of `version` over these keys, valid for a year from `now()`.
    pub fn document(
        version: u64,
        roots: &[&SigningKey],
        root_threshold: u32,
        manifest_keys: &[&SigningKey],
        manifest_threshold: u32,
    ) -> TrustDocument {
        let publics = |keys: &[&SigningKey]| keys.iter().map(|key| key.public_key()).collect::<Vec<_>>();
        TrustDocument {
            schema: TRUST_SCHEMA,
            version,
            expires_at: now().plus(year()),
            root: RoleKeys::of(&publics(roots), root_threshold),
            manifest: RoleKeys::of(&publics(manifest_keys), manifest_threshold),
        }
    }

    /// The document's payload as a JSON value, to be edited before signing.
    pub fn value_of(document: &TrustDocument) -> Value {
        serde_json::from_slice(&document.to_payload()).expect("a trust payload is JSON")
    }

    /// Signs a JSON value as a trust envelope.
    pub fn sign_value(payload: &Value, keys: &[&SigningKey]) -> Vec<u8> {
        let bytes = serde_json::to_vec(payload).expect("a JSON value serializes");
        Envelope::sign(TRUST_PAYLOAD_TYPE, &bytes, keys).to_json()
    }
}

// --- Bootstrap ----------------------------------------------------------------------

#[test]
fn bootstrap_accepts_a_self_signed_document() {
    let keys = Keys::new(2, 2, 2, 1);
    let envelope = keys.trust_envelope();

    let trust = Trust::bootstrap(&envelope, now()).expect("a self-signed document bootstraps");

    assert_eq!(trust.document(), &keys.document);
    assert_eq!(trust.version(), 1);
    assert_eq!(trust.envelope_bytes(), envelope.as_slice());
    assert_eq!(trust.root().threshold(), 2);
    assert!(trust.is_manifest_key(keys.manifest_keys[0].key_id()));
    assert!(trust.is_manifest_key(keys.manifest_keys[1].key_id()));
    assert!(!trust.is_manifest_key(keys.roots[0].key_id()));
}

#[test]
fn bootstrap_refuses_a_document_signed_by_a_key_not_among_its_roots() {
    let keys = Keys::simple();
    let stranger = key();
    let envelope = keys.document.sign(&[&stranger]);

    let rejection = expect_rejection(
        Trust::bootstrap(&envelope, now()),
        &[
            "trust document rejected",
            stranger.key_id().as_str(),
            "not an authorised root key",
        ],
    );

    assert!(
        matches!(
            &rejection,
            Rejection::UnknownKey {
                kind: DocumentKind::Trust,
                role: "root",
                keyid,
            } if keyid == stranger.key_id().as_str()
        ),
        "{rejection:?}"
    );
}

#[test]
fn bootstrap_refuses_a_document_signed_by_its_manifest_key() {
    let keys = Keys::simple();
    let manifest_key = &keys.manifest_keys[0];
    let envelope = keys.document.sign(&[manifest_key]);

    let rejection = expect_rejection(Trust::bootstrap(&envelope, now()), &["not an authorised root key"]);

    assert!(
        matches!(
            &rejection,
            Rejection::UnknownKey { role: "root", keyid, .. } if keyid == manifest_key.key_id().as_str()
        ),
        "{rejection:?}"
    );
}

#[test]
fn bootstrap_refuses_an_unsigned_document() {
    let keys = Keys::simple();
    let envelope = keys.document.sign(&[]);

    let rejection = expect_rejection(Trust::bootstrap(&envelope, now()), &["0 valid root signature(s)"]);

    assert!(
        matches!(
            rejection,
            Rejection::BelowThreshold {
                kind: DocumentKind::Trust,
                role: "root",
                valid: 0,
                threshold: 1
            }
        ),
        "{rejection:?}"
    );
}

#[test]
fn bootstrap_refuses_an_expired_document() {
    let keys = Keys::simple();
    let envelope = keys.trust_envelope();

    let rejection = expect_rejection(
        Trust::bootstrap(&envelope, keys.document.expires_at),
        &[
            "trust document rejected",
            &format!("expired at {}", keys.document.expires_at),
        ],
    );

    assert!(
        matches!(
            rejection,
            Rejection::Expired {
                kind: DocumentKind::Trust,
                expires_at,
                ..
            } if expires_at == keys.document.expires_at
        ),
        "{rejection:?}"
    );
}

#[test]
fn bootstrap_refuses_a_manifest_envelope() {
    let keys = Keys::simple();
    // Signed by a root key, so only the payload type gives it away.
    let envelope = manifest("web-01", 1, 1).sign(&[&keys.roots[0]]);

    let rejection = expect_rejection(
        Trust::bootstrap(&envelope, now()),
        &[MANIFEST_PAYLOAD_TYPE, TRUST_PAYLOAD_TYPE],
    );

    assert!(
        matches!(
            &rejection,
            Rejection::UnknownPayloadType {
                kind: DocumentKind::Trust,
                expected: TRUST_PAYLOAD_TYPE,
                found,
            } if found == MANIFEST_PAYLOAD_TYPE
        ),
        "{rejection:?}"
    );
}

#[test]
fn bootstrap_refuses_a_document_over_the_size_limit_before_parsing() {
    let garbage = vec![b'{'; MAX_TRUST_BYTES + 1];

    let rejection = expect_rejection(Trust::bootstrap(&garbage, now()), &["over the limit"]);

    assert!(
        matches!(
            rejection,
            Rejection::TooLarge {
                kind: DocumentKind::Trust,
                size,
                limit: MAX_TRUST_BYTES,
            } if size == MAX_TRUST_BYTES + 1
        ),
        "{rejection:?}"
    );
}

#[test]
fn bootstrap_refuses_a_document_signed_for_another_payload_type() {
    let keys = Keys::simple();
    let mut envelope = Envelope::sign(MANIFEST_PAYLOAD_TYPE, &keys.document.to_payload(), &[&keys.roots[0]]);
    envelope.payload_type = TRUST_PAYLOAD_TYPE.to_owned();

    let rejection = expect_rejection(Trust::bootstrap(&envelope.to_json(), now()), &["does not verify"]);

    assert!(
        matches!(
            &rejection,
            Rejection::InvalidSignature { kind: DocumentKind::Trust, role: "root", keyid }
                if keyid == keys.roots[0].key_id()
        ),
        "{rejection:?}"
    );
}

#[test]
fn bootstrap_with_two_of_three_roots_needs_two_distinct_keys() {
    let keys = Keys::new(3, 2, 1, 1);
    let [first, second, _] = [&keys.roots[0], &keys.roots[1], &keys.roots[2]];

    Trust::bootstrap(&keys.document.sign(&[first, second]), now())
        .expect("two distinct roots of three meet the threshold");
    let rejection = expect_rejection(
        Trust::bootstrap(&keys.document.sign(&[first, first]), now()),
        &["1 valid root signature(s) from distinct keys", "2 required"],
    );

    assert!(
        matches!(
            rejection,
            Rejection::BelowThreshold {
                kind: DocumentKind::Trust,
                role: "root",
                valid: 1,
                threshold: 2
            }
        ),
        "{rejection:?}"
    );
}

// --- Malformed documents ------------------------------------------------------------

/// Bootstraps a document edited as JSON, signed by `keys`' roots so that only the edit
/// can be the reason for a refusal.
fn bootstrap_edited(keys: &Keys, edit: impl FnOnce(&mut Value)) -> Result<Trust, Rejection> {
    let mut value = value_of(&keys.document);
    edit(&mut value);
    let roots: Vec<&SigningKey> = keys.roots.iter().collect();
    Trust::bootstrap(&sign_value(&value, &roots), now())
}

fn assert_bad_trust_payload(rejection: &Rejection) {
    assert!(
        matches!(
            rejection,
            Rejection::BadPayload {
                kind: DocumentKind::Trust,
                ..
            }
        ),
        "{rejection:?}"
    );
}

#[test]
fn refuses_trust_document_with_threshold_zero() {
    let keys = Keys::simple();
    for role in ["root", "manifest"] {
        let rejection = expect_rejection(
            bootstrap_edited(&keys, |value| value[role]["threshold"] = json!(0)),
            &[
                "invalid payload",
                &format!("{role} role threshold 0 must be between 1 and its 1 keys"),
            ],
        );

        assert_bad_trust_payload(&rejection);
    }
}

#[test]
fn refuses_trust_document_with_threshold_above_its_keys() {
    let keys = Keys::new(2, 2, 2, 2);
    for role in ["root", "manifest"] {
        let rejection = expect_rejection(
            bootstrap_edited(&keys, |value| value[role]["threshold"] = json!(3)),
            &["invalid payload", &format!("{role} role threshold 3")],
        );

        assert_bad_trust_payload(&rejection);
    }
    let rejection = expect_rejection(
        bootstrap_edited(&keys, |value| {
            value["root"]["threshold"] = json!(u64::from(u32::MAX) + 1);
        }),
        &["invalid payload"],
    );
    assert_bad_trust_payload(&rejection);
}

#[test]
fn refuses_trust_document_with_no_keys_or_too_many_keys() {
    let keys = Keys::simple();
    let rejection = expect_rejection(
        bootstrap_edited(&keys, |value| value["manifest"]["keys"] = json!([])),
        &["invalid payload", "manifest role lists 0 keys"],
    );
    assert_bad_trust_payload(&rejection);

    let many: Vec<Value> = (0..=MAX_KEYS_PER_ROLE)
        .map(|_| serde_json::to_value(drover_protocol::trust::TrustKey::of(&key().public_key())))
        .collect::<Result<_, _>>()
        .expect("trust keys serialize");
    let rejection = expect_rejection(
        bootstrap_edited(&keys, |value| value["manifest"]["keys"] = json!(many)),
        &["invalid payload", "manifest role lists 17 keys"],
    );
    assert_bad_trust_payload(&rejection);
}

#[test]
fn refuses_trust_document_listing_a_key_twice() {
    // Listing a key twice must not let one key count twice towards a threshold.
    let keys = Keys::simple();
    let root = &keys.roots[0];
    for role in ["root", "manifest"] {
        let rejection = expect_rejection(
            bootstrap_edited(&keys, |value| {
                let listed = value[role]["keys"][0].clone();
                value[role]["keys"] = json!([listed.clone(), listed]);
                value[role]["threshold"] = json!(2);
            }),
            &["invalid payload", "listed twice"],
        );

        assert_bad_trust_payload(&rejection);
    }
    // The signature is what the duplicate would have inflated; it is valid.
    Trust::bootstrap(&keys.document.sign(&[root]), now()).expect("the unedited document is valid");
}

#[test]
fn refuses_trust_document_whose_keyid_does_not_match_its_key() {
    let keys = Keys::simple();
    let other = key();
    for role in ["root", "manifest"] {
        let rejection = expect_rejection(
            bootstrap_edited(&keys, |value| {
                value[role]["keys"][0]["keyid"] = json!(other.key_id().as_str());
            }),
            &[
                "invalid payload",
                other.key_id().as_str(),
                "key id is not the sha256 of the public key",
            ],
        );

        assert_bad_trust_payload(&rejection);
    }
}

#[test]
fn refuses_trust_document_with_a_public_key_of_the_wrong_length() {
    let keys = Keys::simple();
    let public = keys.roots[0].public_key().to_hex();
    for bad_public in [
        public[..62].to_owned(),
        format!("{public}00"),
        public[..63].to_owned(),
        public.to_uppercase(),
        format!("{}zz", &public[..62]),
        String::new(),
    ] {
        let rejection = expect_rejection(
            bootstrap_edited(&keys, |value| {
                value["root"]["keys"][0]["public"] = json!(bad_public);
            }),
            &["invalid payload", "public key is not 32 bytes of lowercase hex"],
        );

        assert_bad_trust_payload(&rejection);
    }
}

#[test]
fn refuses_trust_document_with_an_unknown_key_scheme() {
    let keys = Keys::simple();

    let rejection = expect_rejection(
        bootstrap_edited(&keys, |value| {
            value["root"]["keys"][0]["scheme"] = json!("rsa");
        }),
        &["invalid payload", "rsa"],
    );

    assert_bad_trust_payload(&rejection);
}

#[test]
fn refuses_trust_document_with_an_unknown_field() {
    let keys = Keys::simple();
    // Where the field goes (a JSON pointer), its name and its value.
    let additions = [
        ("", "delegations", json!({})),
        ("/manifest", "paths", json!(["*"])),
        ("/root/keys/0", "expires", json!("2030-01-01T00:00:00Z")),
    ];
    for (parent, field, added) in additions {
        let rejection = expect_rejection(
            bootstrap_edited(&keys, |value| {
                value
                    .pointer_mut(parent)
                    .and_then(Value::as_object_mut)
                    .expect("the parent is an object")
                    .insert(field.to_owned(), added);
            }),
            &["invalid payload", "unknown field", field],
        );

        assert_bad_trust_payload(&rejection);
    }
}

#[test]
fn refuses_trust_document_with_an_unknown_schema() {
    let keys = Keys::simple();

    let rejection = expect_rejection(
        bootstrap_edited(&keys, |value| value["schema"] = json!(2)),
        &["trust document rejected", "unknown schema version 2"],
    );

    assert!(
        matches!(
            rejection,
            Rejection::UnknownSchema {
                kind: DocumentKind::Trust,
                schema: 2,
                known: 1
            }
        ),
        "{rejection:?}"
    );
}

#[test]
fn rotation_refuses_a_malformed_document_even_when_properly_signed() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let mut value = value_of(&keys.document);
    value["version"] = json!(2);
    value["manifest"]["threshold"] = json!(0);

    let rejection = expect_rejection(
        trust.rotate(&sign_value(&value, &[&keys.roots[0]]), now()),
        &["invalid payload", "manifest role threshold 0"],
    );

    assert_bad_trust_payload(&rejection);
}

// --- Rotation -----------------------------------------------------------------------

#[test]
fn rotation_is_accepted_when_signed_by_current_and_new_roots() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let (new_root, new_manifest_key) = (key(), key());
    let next = document(2, &[&new_root], 1, &[&new_manifest_key], 1);
    let envelope = next.sign(&[&keys.roots[0], &new_root]);

    let rotated = trust
        .rotate(&envelope, now())
        .expect("signed by both the current and the new roots");

    assert_eq!(rotated.version(), 2);
    assert_eq!(rotated.document(), &next);
    assert_eq!(rotated.envelope_bytes(), envelope.as_slice());
    assert!(rotated.is_manifest_key(new_manifest_key.key_id()));
    assert!(!rotated.is_manifest_key(keys.manifest_keys[0].key_id()));
    assert_eq!(trust.version(), 1, "the current trust is not changed");
}

#[test]
fn rotation_signed_only_by_new_roots_is_refused() {
    // Authority comes from what the host already trusts, never from the new document.
    let keys = Keys::simple();
    let (first, second) = (key(), key());
    let next = document(2, &[&first, &second], 2, &[&keys.manifest_keys[0]], 1);

    let rejection = expect_rejection(
        keys.trust().rotate(&next.sign(&[&first, &second]), now()),
        &["not an authorised root key"],
    );

    assert!(
        matches!(
            &rejection,
            Rejection::UnknownKey {
                kind: DocumentKind::Trust,
                role: "root",
                keyid,
            } if keyid == first.key_id().as_str()
        ),
        "{rejection:?}"
    );
}

#[test]
fn rotation_signed_only_by_old_roots_is_refused() {
    // The new roots must prove they are usable, or a typo could lock the fleet out.
    let keys = Keys::simple();
    let old_root = &keys.roots[0];
    let next = document(2, &[&key()], 1, &[&keys.manifest_keys[0]], 1);

    let rejection = expect_rejection(
        keys.trust().rotate(&next.sign(&[old_root]), now()),
        &[old_root.key_id().as_str(), "not an authorised new root key"],
    );

    assert!(
        matches!(
            &rejection,
            Rejection::UnknownKey {
                kind: DocumentKind::Trust,
                role: "new root",
                keyid,
            } if keyid == old_root.key_id().as_str()
        ),
        "{rejection:?}"
    );
}

#[test]
fn rotation_below_the_new_root_threshold_is_refused() {
    let keys = Keys::simple();
    let (first, second) = (key(), key());
    let next = document(2, &[&first, &second], 2, &[&keys.manifest_keys[0]], 1);

    let rejection = expect_rejection(
        keys.trust().rotate(&next.sign(&[&keys.roots[0], &first]), now()),
        &["1 valid new root signature(s)", "2 required"],
    );

    assert!(
        matches!(
            rejection,
            Rejection::BelowThreshold {
                kind: DocumentKind::Trust,
                role: "new root",
                valid: 1,
                threshold: 2
            }
        ),
        "{rejection:?}"
    );
}

#[test]
fn rotation_with_a_forged_new_root_signature_is_refused() {
    let keys = Keys::simple();
    let new_root = key();
    let next = document(2, &[&new_root], 1, &[&keys.manifest_keys[0]], 1);
    let mut envelope = Envelope::sign(TRUST_PAYLOAD_TYPE, &next.to_payload(), &[&keys.roots[0], &new_root]);
    // A signature of other bytes, claimed for the new root.
    envelope.signatures[1].sig = Envelope::sign(TRUST_PAYLOAD_TYPE, b"other", &[&new_root]).signatures[0]
        .sig
        .clone();

    let rejection = expect_rejection(
        keys.trust().rotate(&envelope.to_json(), now()),
        &[new_root.key_id().as_str(), "does not verify"],
    );

    assert!(
        matches!(
            &rejection,
            Rejection::InvalidSignature { kind: DocumentKind::Trust, role: "new root", keyid }
                if keyid == new_root.key_id()
        ),
        "{rejection:?}"
    );
}

#[test]
fn refuses_trust_document_sharing_a_key_between_root_and_manifest_roles() {
    // The manifest key lives online on the coordinator: it must not also be a root key.
    let shared = key();
    let both = document(1, &[&shared], 1, &[&shared], 1);
    let rejection = expect_rejection(
        Trust::bootstrap(&both.sign(&[&shared]), now()),
        &[shared.key_id().as_str(), "both a root key and a manifest key"],
    );
    assert!(
        matches!(
            rejection,
            Rejection::BadPayload {
                kind: DocumentKind::Trust,
                ..
            }
        ),
        "{rejection:?}"
    );
}

#[test]
fn rotation_with_the_same_or_a_lower_version_is_refused() {
    let keys = Keys::simple();
    let trust = keys.trust();
    for version in [1, 0] {
        // The same keys, so only the version can be the reason.
        let mut next = keys.document.clone();
        next.version = version;

        let rejection = expect_rejection(
            trust.rotate(&next.sign(&[&keys.roots[0]]), now()),
            &[&format!("version {version} is not higher than the current version 1")],
        );

        assert!(
            matches!(
                rejection,
                Rejection::TrustVersionNotIncreasing { current: 1, proposed } if proposed == version
            ),
            "{rejection:?}"
        );
    }
}

#[test]
fn rotation_refuses_replaying_the_previous_document() {
    let keys = Keys::simple();
    let root = &keys.roots[0];
    let original = keys.trust();
    let mut next = keys.document.clone();
    next.version = 2;
    let rotated = original
        .rotate(&next.sign(&[root]), now())
        .expect("version 2 with the same keys");

    for replayed in [keys.trust_envelope(), next.sign(&[root])] {
        let rejection = expect_rejection(rotated.rotate(&replayed, now()), &["not higher"]);

        assert!(
            matches!(rejection, Rejection::TrustVersionNotIncreasing { current: 2, .. }),
            "{rejection:?}"
        );
    }
}

#[test]
fn rotation_to_an_expired_document_is_refused() {
    let keys = Keys::simple();
    let mut next = keys.document.clone();
    next.version = 2;
    next.expires_at = now();

    let rejection = expect_rejection(
        keys.trust().rotate(&next.sign(&[&keys.roots[0]]), now()),
        &["trust document rejected", &format!("expired at {}", now())],
    );

    assert!(
        matches!(
            rejection,
            Rejection::Expired {
                kind: DocumentKind::Trust,
                expires_at,
                effective_now,
            } if expires_at == now() && effective_now == now()
        ),
        "{rejection:?}"
    );
}

#[test]
fn rotation_refuses_a_document_signed_by_a_manifest_key() {
    let keys = Keys::simple();
    let manifest_key = &keys.manifest_keys[0];
    // The new document even lists the manifest key as a root: still not its place to sign.
    let next = document(2, &[manifest_key], 1, &[manifest_key], 1);

    let rejection = expect_rejection(
        keys.trust().rotate(&next.sign(&[manifest_key]), now()),
        &["not an authorised root key"],
    );

    assert!(
        matches!(
            &rejection,
            Rejection::UnknownKey { role: "root", keyid, .. } if keyid == manifest_key.key_id().as_str()
        ),
        "{rejection:?}"
    );
}

#[test]
fn rotation_with_two_of_three_roots_refuses_one_key_signing_twice() {
    let keys = Keys::new(3, 2, 1, 1);
    let trust = keys.trust();
    let mut next = keys.document.clone();
    next.version = 2;
    let [first, second] = [&keys.roots[0], &keys.roots[1]];

    trust
        .rotate(&next.sign(&[first, second]), now())
        .expect("two distinct roots of three meet the threshold");
    let rejection = expect_rejection(
        trust.rotate(&next.sign(&[first, first]), now()),
        &["1 valid root signature(s) from distinct keys", "2 required"],
    );

    assert!(
        matches!(
            rejection,
            Rejection::BelowThreshold {
                kind: DocumentKind::Trust,
                role: "root",
                valid: 1,
                threshold: 2
            }
        ),
        "{rejection:?}"
    );
}

// --- Rotation chains ----------------------------------------------------------------

/// Three rotations away from `keys`' trust, each to a fresh root key; the middle
/// document has already expired.
fn chain_of_three(keys: &Keys) -> [Vec<u8>; 3] {
    let roots = [key(), key(), key()];
    let manifest_key = &keys.manifest_keys[0];
    let second = document(2, &[&roots[0]], 1, &[manifest_key], 1);
    let mut third = document(3, &[&roots[1]], 1, &[manifest_key], 1);
    third.expires_at = now().minus(Duration::from_secs(86_400));
    let fourth = document(4, &[&roots[2]], 1, &[manifest_key], 1);
    [
        second.sign(&[&keys.roots[0], &roots[0]]),
        third.sign(&[&roots[0], &roots[1]]),
        fourth.sign(&[&roots[1], &roots[2]]),
    ]
}

#[test]
fn rotation_chain_walked_in_order_succeeds_with_an_expired_intermediate() {
    let keys = Keys::simple();
    let [second, third, fourth] = chain_of_three(&keys);

    let rotated = keys
        .trust()
        .rotate_chain(&[&second, &third, &fourth], now())
        .expect("each link is signed by the one before it and the final one is valid");

    assert_eq!(rotated.version(), 4);
    assert_eq!(rotated.envelope_bytes(), fourth.as_slice());
}

#[test]
fn rotation_chain_out_of_order_is_refused() {
    let keys = Keys::simple();
    let [second, third, fourth] = chain_of_three(&keys);
    let trust = keys.trust();

    for chain in [[&third[..], &second, &fourth], [&second[..], &fourth, &third]] {
        let rejection = expect_rejection(trust.rotate_chain(&chain, now()), &["not an authorised root key"]);

        assert!(
            matches!(rejection, Rejection::UnknownKey { role: "root", .. }),
            "{rejection:?}"
        );
    }
}

#[test]
fn rotation_chain_with_a_missing_link_is_refused() {
    let keys = Keys::simple();
    let [second, _, fourth] = chain_of_three(&keys);

    let rejection = expect_rejection(
        keys.trust().rotate_chain(&[&second, &fourth], now()),
        &["not an authorised root key"],
    );

    assert!(
        matches!(rejection, Rejection::UnknownKey { role: "root", .. }),
        "{rejection:?}"
    );
}

#[test]
fn rotation_chain_ending_in_an_expired_document_is_refused() {
    let keys = Keys::simple();
    let [second, third, _] = chain_of_three(&keys);

    let rejection = expect_rejection(
        keys.trust().rotate_chain(&[&second, &third], now()),
        &["trust document rejected", "expired"],
    );

    assert!(
        matches!(
            rejection,
            Rejection::Expired {
                kind: DocumentKind::Trust,
                ..
            }
        ),
        "{rejection:?}"
    );
}

/// `length` rotations of `keys`' trust, versions 2 onwards, all over the same keys.
fn chain_of(keys: &Keys, length: usize) -> Vec<Vec<u8>> {
    (0..length)
        .map(|index| {
            let mut next = keys.document.clone();
            next.version = 2 + u64::try_from(index).expect("small index");
            next.sign(&[&keys.roots[0]])
        })
        .collect()
}

#[test]
fn rotation_chain_longer_than_the_limit_is_refused() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let chain = chain_of(&keys, MAX_ROTATION_CHAIN + 1);
    let links: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();

    let rejection = expect_rejection(
        trust.rotate_chain(&links, now()),
        &["rotation chain of 33 documents", "limit of 32"],
    );

    assert!(
        matches!(
            rejection,
            Rejection::RotationChainTooLong {
                length: 33,
                limit: MAX_ROTATION_CHAIN
            }
        ),
        "{rejection:?}"
    );
    let rotated = trust
        .rotate_chain(&links[..MAX_ROTATION_CHAIN], now())
        .expect("a chain of exactly the limit is walked");
    assert_eq!(rotated.version(), 33);
}

// --- Rotation and manifests ---------------------------------------------------------

#[test]
fn after_rotation_only_the_new_manifest_key_is_accepted() {
    let keys = Keys::simple();
    let old_manifest_key = &keys.manifest_keys[0];
    let (new_root, new_manifest_key) = (key(), key());
    let old_trust = keys.trust();
    let next = document(2, &[&new_root], 1, &[&new_manifest_key], 1);
    let new_trust = old_trust
        .rotate(&next.sign(&[&keys.roots[0], &new_root]), now())
        .expect("a valid rotation");
    let from_old_key = manifest("web-01", 1, 1).sign(&[old_manifest_key]);
    let from_new_key = manifest("web-01", 1, 1).sign(&[&new_manifest_key]);

    let rejection = accept(&from_old_key, &new_trust, &host("web-01"), None, now())
        .expect_err("the old manifest key is no longer trusted");
    assert!(
        matches!(
            &rejection,
            Rejection::UnknownKey {
                kind: DocumentKind::Manifest,
                role: "manifest",
                keyid,
            } if keyid == old_manifest_key.key_id().as_str()
        ),
        "{rejection:?}"
    );
    assert!(
        rejection.to_string().contains("not an authorised manifest key"),
        "{rejection}"
    );
    accept(&from_new_key, &new_trust, &host("web-01"), None, now()).expect("the new manifest key is trusted");
    accept(&from_new_key, &old_trust, &host("web-01"), None, now())
        .expect_err("the old trust never knew the new manifest key");
}

#[test]
fn rotation_to_a_later_expiry_keeps_manifests_acceptable_past_the_old_expiry() {
    let keys = Keys::simple();
    let mut next = keys.document.clone();
    next.version = 2;
    next.expires_at = now().plus(year()).plus(year());
    let rotated = keys
        .trust()
        .rotate(&next.sign(&[&keys.roots[0]]), now())
        .expect("a valid rotation");
    let later = now().plus(year()).plus(Duration::from_secs(86_400));
    let mut manifest = manifest("web-01", 1, 1);
    manifest.issued_at = later;
    manifest.expires_at = later.plus(Duration::from_secs(86_400));
    let envelope = keys.sign(&manifest);

    accept(&envelope, &rotated, &host("web-01"), None, later).expect("the rotated trust is still valid");
    let rejection =
        accept(&envelope, &keys.trust(), &host("web-01"), None, later).expect_err("the original trust has expired");
    assert!(
        matches!(
            rejection,
            Rejection::Expired {
                kind: DocumentKind::Trust,
                ..
            }
        ),
        "{rejection:?}"
    );
}
