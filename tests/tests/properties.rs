//! Property tests of DSSE signing and manifest acceptance: what is signed verifies, any
//! altered byte is refused, and no mutation of an envelope yields a different manifest.

use drover_protocol::manifest::MAX_MANIFEST_BYTES;
use drover_protocol::{
    DocumentKind, Duration, Envelope, LastAccepted, MANIFEST_PAYLOAD_TYPE, MAX_CLOCK_SKEW, Rejection, Timestamp, accept,
};
use drover_tests::{Keys, host, manifest, now};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};

use drover_tests::{base64_decode, base64_encode};
use support::{config, verify_wire};

/// Helpers local to this suite (the shared fixture library is `drover_tests`).
mod support {
    use drover_protocol::manifest::MAX_MANIFEST_BYTES;
    use drover_protocol::{DocumentKind, Envelope, Rejection, Role};
    use proptest::test_runner::Config;

    /// Few enough cases that the suite stays fast in debug builds.
    pub fn config(cases: u32) -> Config {
        Config {
            cases,
            ..Config::default()
        }
    }

    /// Sends `envelope` over the wire (compact JSON), parses it back and verifies it
    /// against `role` the way `accept` does: the payload is decoded from the envelope.
    pub fn verify_wire(envelope: &Envelope, role: &Role) -> Result<(), Rejection> {
        let kind = DocumentKind::Manifest;
        let received = Envelope::parse(&envelope.to_json(), kind, MAX_MANIFEST_BYTES)?;
        let payload = received.payload_bytes(kind)?;
        role.verify(&received, &payload, kind)
    }
}

const HOST: &str = "web-01";

#[test]
fn any_signed_payload_verifies() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let role = trust.manifest();
    let signer = &keys.manifest_keys[0];

    proptest!(config(128), |(
        payload in vec(any::<u8>(), 0..4096),
        payload_type in any::<String>(),
    )| {
        let envelope = Envelope::sign(&payload_type, &payload, &[signer]);

        prop_assert_eq!(verify_wire(&envelope, role), Ok(()));
    });
}

#[test]
fn any_single_byte_change_of_the_payload_is_refused() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let role = trust.manifest();
    let signer = &keys.manifest_keys[0];

    proptest!(config(128), |(
        payload in vec(any::<u8>(), 1..4096),
        payload_type in any::<String>(),
        index in any::<Index>(),
        xor in 1u8..=255,
    )| {
        let mut envelope = Envelope::sign(&payload_type, &payload, &[signer]);
        let mut altered = payload.clone();
        let at = index.index(altered.len());
        altered[at] ^= xor;
        envelope.payload = base64_encode(&altered);

        let result = verify_wire(&envelope, role);

        prop_assert!(
            matches!(result, Err(Rejection::InvalidSignature { .. })),
            "{:?}",
            result
        );
    });
}

#[test]
fn any_single_byte_change_of_the_signature_is_refused() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let role = trust.manifest();
    let signer = &keys.manifest_keys[0];

    proptest!(config(128), |(
        payload in vec(any::<u8>(), 0..4096),
        payload_type in any::<String>(),
        index in any::<Index>(),
        xor in 1u8..=255,
    )| {
        let mut envelope = Envelope::sign(&payload_type, &payload, &[signer]);
        let mut signature = base64_decode(&envelope.signatures[0].sig);
        let at = index.index(signature.len());
        signature[at] ^= xor;
        envelope.signatures[0].sig = base64_encode(&signature);

        let result = verify_wire(&envelope, role);

        prop_assert!(
            matches!(result, Err(Rejection::InvalidSignature { .. })),
            "{:?}",
            result
        );
    });
}

#[test]
fn any_change_of_the_payload_type_is_refused() {
    // PAE binds the type: a signature never carries over to another type.
    let keys = Keys::simple();
    let trust = keys.trust();
    let role = trust.manifest();
    let signer = &keys.manifest_keys[0];

    proptest!(config(128), |(
        payload in vec(any::<u8>(), 0..512),
        payload_type in any::<String>(),
        other_type in any::<String>(),
    )| {
        prop_assume!(payload_type != other_type);
        let mut envelope = Envelope::sign(&payload_type, &payload, &[signer]);
        envelope.payload_type = other_type;

        let result = verify_wire(&envelope, role);

        prop_assert!(
            matches!(result, Err(Rejection::InvalidSignature { .. })),
            "{:?}",
            result
        );
    });
}

/// Bytes that keep an envelope's JSON shape plausible, so that mutations reach past the
/// parser more often than random bytes (half of which are not even UTF-8) do.
const JSON_ALPHABET: &[u8] = b"\"\\{}[]:, 0123456789abcdefABCDEFxyz+/=-_";

#[test]
fn any_single_byte_change_of_a_manifest_envelope_never_yields_another_manifest() {
    let keys = Keys::new(1, 1, 2, 2);
    let trust = keys.trust();
    let original = manifest(HOST, 3, 2);
    let envelope = keys.sign(&original);
    accept(&envelope, &trust, &host(HOST), None, now()).expect("the unaltered envelope is valid");

    proptest!(config(256), |(
        index in any::<Index>(),
        replacement in prop_oneof![any::<u8>(), select(JSON_ALPHABET)],
    )| {
        let mut altered = envelope.clone();
        let at = index.index(altered.len());
        prop_assume!(altered[at] != replacement);
        altered[at] = replacement;

        match accept(&altered, &trust, &host(HOST), None, now()) {
            Err(_) => {}
            Ok(verified) => prop_assert_eq!(
                verified.manifest(),
                &original,
                "byte {} changed to {:?} was accepted as a different manifest",
                at,
                char::from(replacement)
            ),
        }
    });
}

#[test]
fn arbitrary_bytes_are_never_accepted() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let envelope = keys.sign(&manifest(HOST, 1, 1));

    proptest!(config(256), |(
        garbage in vec(any::<u8>(), 0..2048),
        cut in any::<Index>(),
    )| {
        let rejection = accept(&garbage, &trust, &host(HOST), None, now())
            .expect_err("random bytes are not a signed manifest");
        prop_assert!(
            matches!(rejection, Rejection::BadEncoding { kind: DocumentKind::Manifest, .. }),
            "{:?}",
            rejection
        );

        // A valid envelope with random bytes appended after a cut is refused too.
        let mut spliced = envelope[..cut.index(envelope.len())].to_vec();
        spliced.extend_from_slice(&garbage);
        prop_assert!(accept(&spliced, &trust, &host(HOST), None, now()).is_err());
    });
}

#[test]
fn serials_are_accepted_only_when_strictly_increasing() {
    let keys = Keys::simple();
    let trust = keys.trust();

    proptest!(config(128), |(serial in 0u64..64, last_serial in prop::option::of(0u64..64))| {
        let envelope = keys.sign(&manifest(HOST, serial, 1));
        let last = last_serial.map(|serial| LastAccepted {
            serial,
            issued_at: now().minus(Duration::from_secs(60)),
        });

        let result = accept(&envelope, &trust, &host(HOST), last, now());

        match last_serial {
            Some(last_serial) if serial <= last_serial => prop_assert!(
                matches!(result, Err(Rejection::Replay { serial: s, last_accepted }) if s == serial && last_accepted == last_serial),
                "{:?}",
                result
            ),
            _ => {
                let verified = result.expect("a higher serial is accepted");
                prop_assert_eq!(verified.last_accepted().serial, serial);
            }
        }
    });
}

#[test]
fn time_checks_follow_the_later_of_the_clock_and_the_last_issued_at() {
    let keys = Keys::simple();
    let trust = keys.trust();
    let day = 86_400i64;
    let at = |offset: i64| Timestamp::from_unix(now().unix() + offset);

    proptest!(config(256), |(
        issued_offset in -2 * day..2 * day,
        lifetime in 1i64..2 * day,
        clock_offset in -2 * day..2 * day,
        last_offset in prop::option::of(-3 * day..3 * day),
    )| {
        let mut candidate = manifest(HOST, 10, 1);
        candidate.issued_at = at(issued_offset);
        candidate.expires_at = at(issued_offset + lifetime);
        let clock = at(clock_offset);
        let last = last_offset.map(|offset| LastAccepted { serial: 9, issued_at: at(offset) });

        let result = accept(&keys.sign(&candidate), &trust, &host(HOST), last, clock);

        // The model: the rules of `accept`, written out independently.
        let effective_now = last.map_or(clock, |last| clock.max(last.issued_at));
        let expected_expired = candidate.expires_at <= effective_now;
        let expected_future = candidate.issued_at > clock.plus(MAX_CLOCK_SKEW);
        match result {
            Ok(verified) => {
                prop_assert!(!expected_expired && !expected_future);
                prop_assert_eq!(
                    verified.last_accepted().issued_at,
                    last.map_or(candidate.issued_at, |last| last.issued_at.max(candidate.issued_at))
                );
            }
            Err(Rejection::Expired { kind: DocumentKind::Manifest, effective_now: reported, .. }) => {
                prop_assert!(expected_expired);
                prop_assert_eq!(reported, effective_now);
            }
            Err(Rejection::IssuedInFuture { .. }) => {
                prop_assert!(!expected_expired && expected_future);
            }
            Err(other) => prop_assert!(false, "unexpected rejection {:?}", other),
        }
    });
}

#[test]
fn envelopes_over_the_limit_are_refused_whatever_their_content() {
    let keys = Keys::simple();
    let trust = keys.trust();

    proptest!(config(16), |(extra in 1usize..4096, fill in any::<u8>())| {
        let oversized = vec![fill; MAX_MANIFEST_BYTES + extra];

        let rejection = accept(&oversized, &trust, &host(HOST), None, now())
            .expect_err("over the limit");

        prop_assert!(
            matches!(rejection, Rejection::TooLarge { size, .. } if size == MAX_MANIFEST_BYTES + extra),
            "{:?}",
            rejection
        );
    });
}

#[test]
fn the_manifest_payload_type_is_what_manifests_are_signed_as() {
    // A guard for the properties above: the fixture signs with the real payload type.
    let keys = Keys::simple();
    let envelope: Envelope = serde_json::from_slice(&keys.sign(&manifest(HOST, 1, 1))).expect("envelope is JSON");

    assert_eq!(envelope.payload_type, MANIFEST_PAYLOAD_TYPE);
}
