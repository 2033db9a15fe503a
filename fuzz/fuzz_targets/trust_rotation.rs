//! Fuzzes trust bootstrap and rotation: `Trust::bootstrap` on the first document and
//! `Trust::rotate_chain` on the rest, documents separated by `drover_fuzz::SEPARATOR`.
//!
//! The first byte chooses the mode. Bit 0 clear: the documents are envelopes as received.
//! Bit 0 set: they are trust payloads that the harness signs with every fixture key (root,
//! manifest and spare), so the fuzzer reaches the document rules behind the signatures.
//! Bit 1 clear: the chain rotates from the fixture trust. Bit 1 set: the first document is
//! bootstrapped and the rest rotate from it.
//!
//! Whatever is accepted must be what the rules promise: a higher version, not expired,
//! root and manifest keys disjoint, the envelope kept byte for byte.

#![no_main]

use drover_fuzz::{debug, fixture, now, sign, split};
use drover_protocol::trust::TRUST_PAYLOAD_TYPE;
use drover_protocol::{Trust, TrustDocument};
use libfuzzer_sys::fuzz_target;

fn check(trust: &Trust, envelope: &[u8], above_version: Option<u64>) {
    assert!(trust.expires_at() > now(), "accepted an expired trust document");
    if let Some(version) = above_version {
        assert!(
            trust.version() > version,
            "accepted a rotation that does not raise the version"
        );
    }
    assert_eq!(
        trust.envelope_bytes(),
        envelope,
        "the stored envelope is not the one verified"
    );
    for key in trust.manifest().key_ids() {
        assert!(
            trust.root().key_ids().all(|root| root != key),
            "a manifest key can also sign trust"
        );
    }
    assert!(
        trust.root().threshold() >= 1 && trust.manifest().threshold() >= 1,
        "a threshold of zero"
    );
    let document: &TrustDocument = trust.document();
    let again: TrustDocument = serde_json::from_slice(&document.to_payload()).expect("a trust document parses again");
    assert_eq!(&again, document, "the trust document does not survive serialisation");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let keys = fixture.all_keys();
    let documents: Vec<Vec<u8>> = split(rest)
        .into_iter()
        .map(|piece| {
            if mode & 1 == 1 {
                sign(TRUST_PAYLOAD_TYPE, piece, &keys)
            } else {
                piece.to_vec()
            }
        })
        .collect();
    let (start, chain) = if mode & 2 == 2 {
        let result = Trust::bootstrap(&documents[0], now());
        debug("bootstrap", &result.as_ref().map(Trust::version));
        let Ok(first) = result else {
            return;
        };
        check(&first, &documents[0], None);
        (first, &documents[1..])
    } else {
        (fixture.trust.clone(), &documents[..])
    };
    if chain.is_empty() {
        return;
    }
    let chain: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
    let result = start.rotate_chain(&chain, now());
    debug("rotate_chain", &result.as_ref().map(Trust::version));
    if let Ok(rotated) = result {
        let last = chain.last().expect("a non-empty chain");
        check(&rotated, last, Some(start.version()));
    }
});
