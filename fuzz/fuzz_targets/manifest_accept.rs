//! Fuzzes `drover_protocol::accept`, the one function that decides whether a host acts on
//! a manifest, against the fixture trust at the fixed clock.
//!
//! The first byte chooses the mode. Bit 0 clear: the rest is the envelope as received
//! (exercises size, encoding, envelope and signature checks). Bit 0 set: the rest is a
//! manifest payload that the harness signs with every fixture key, so the fuzzer gets past
//! the signatures to schema, strict parsing and the replay, expiry and host checks. Bit 1
//! set: the host has already accepted serial 5, issued an hour before now.
//!
//! Whenever a manifest is accepted, what `accept` promises must hold of it.

#![no_main]

use drover_fuzz::{debug, fixture, now, sign};
use drover_protocol::manifest::{MANIFEST_PAYLOAD_TYPE, Manifest};
use drover_protocol::{Duration, LastAccepted, MAX_CLOCK_SKEW, accept};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let signed;
    let envelope = if mode & 1 == 1 {
        signed = sign(MANIFEST_PAYLOAD_TYPE, rest, &fixture.all_keys());
        &signed[..]
    } else {
        rest
    };
    let last = (mode & 2 == 2).then(|| LastAccepted {
        serial: 5,
        issued_at: now().minus(Duration::from_secs(3600)),
    });
    let result = accept(envelope, &fixture.trust, &fixture.host, last, now());
    debug("accept", &result.as_ref().map(|verified| verified.last_accepted()));
    let Ok(verified) = result else {
        return;
    };
    let manifest = verified.manifest();
    assert_eq!(manifest.host, fixture.host, "accepted a manifest for another host");
    if let Some(last) = last {
        assert!(manifest.serial > last.serial, "accepted a replayed serial");
        assert!(
            verified.last_accepted().issued_at >= last.issued_at,
            "the remembered time went back"
        );
    }
    assert!(manifest.expires_at > now(), "accepted an expired manifest");
    assert!(
        manifest.issued_at <= now().plus(MAX_CLOCK_SKEW),
        "accepted a manifest from the future"
    );
    assert_eq!(
        verified.envelope(),
        envelope,
        "the stored envelope is not the one verified"
    );
    // What the agent stores and what the coordinator re-reads must be the same manifest.
    let again: Manifest = serde_json::from_slice(verified.payload()).expect("the verified payload parses again");
    assert_eq!(&again, manifest);
    let round_trip: Manifest =
        serde_json::from_slice(&manifest.to_payload()).expect("a serialised manifest parses again");
    assert_eq!(&round_trip, manifest, "the manifest does not survive serialisation");
});
