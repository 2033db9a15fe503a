//! `cargo bench -p drover-tests --bench protocol`: how long a host takes to accept a
//! manifest, and how long the coordinator takes to sign a fleet's worth of them.
//!
//! A small self-timed harness (no criterion: it would add a large dependency tree for two
//! numbers). Each measurement runs a warm-up, then a fixed number of samples; it prints
//! the median, the fastest and the slowest sample, so noise on this shared machine shows.
//! Everything runs on one thread, so "one core" is what is measured.

use std::hint::black_box;
use std::time::{Duration, Instant};

use drover_protocol::{LastAccepted, accept};
use drover_tests::{Keys, host, manifest, now};

/// Runs `body` `batch` times per sample for `samples` samples after a warm-up, and
/// returns the per-call durations of each sample, sorted.
fn measure(samples: usize, batch: u32, mut body: impl FnMut()) -> Vec<Duration> {
    let warm_up_until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < warm_up_until {
        body();
    }
    let mut per_call: Vec<Duration> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..batch {
                body();
            }
            start.elapsed() / batch
        })
        .collect();
    per_call.sort();
    per_call
}

fn report(name: &str, sorted: &[Duration], target: Option<Duration>, quick: bool) {
    let median = sorted[sorted.len() / 2];
    let verdict = match target {
        _ if quick => "smoke run, not a measurement".to_owned(),
        None => "context".to_owned(),
        Some(target) if median <= target => format!("target <= {target:?}: meets"),
        Some(target) => format!("target <= {target:?}: MISSES"),
    };
    println!(
        "{name:<44} median {:>12.3?}  min {:>12.3?}  max {:>12.3?}  ({} samples; {verdict})",
        median,
        sorted[0],
        sorted[sorted.len() - 1],
        sorted.len(),
    );
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench` absent; stay quick then.
    let quick = !std::env::args().any(|argument| argument == "--bench");
    let (samples, batch, sign_rounds, fleet_size) = if quick { (3, 10, 1, 100) } else { (31, 500, 7, 10_000) };

    let keys = Keys::simple();
    let trust = keys.trust();
    let host_id = host("web-01");
    let ten_apps = manifest("web-01", 42, 10);
    let envelope = keys.sign(&ten_apps);
    let last = Some(LastAccepted {
        serial: 41,
        issued_at: now(),
    });
    println!(
        "manifest with 10 apps, 1 signature: {} bytes of envelope",
        envelope.len()
    );

    let verify = measure(samples, batch, || {
        let verified = accept(black_box(&envelope), &trust, &host_id, last, now()).expect("fixture manifest is valid");
        black_box(verified);
    });
    report(
        "parse + verify (accept), 10 apps",
        &verify,
        Some(Duration::from_micros(150)),
        quick,
    );

    // The share of that spent in the one ed25519 verification, for context.
    let parsed = drover_protocol::Envelope::parse(&envelope, drover_protocol::DocumentKind::Manifest, usize::MAX)
        .expect("fixture envelope parses");
    let payload = parsed
        .payload_bytes(drover_protocol::DocumentKind::Manifest)
        .expect("base64");
    let signature_only = measure(samples, batch, || {
        trust
            .manifest()
            .verify(
                black_box(&parsed),
                black_box(&payload),
                drover_protocol::DocumentKind::Manifest,
            )
            .expect("valid signature");
    });
    report("  of which: ed25519 threshold check", &signature_only, None, quick);

    // The coordinator re-signs every host's manifest on a fleet-wide change: 10,000
    // distinct manifests (different host and serial), serialized and signed.
    let fleet: Vec<_> = (0..fleet_size)
        .map(|index| manifest(&format!("host-{index}"), index + 1, 10))
        .collect();
    let signer = &keys.manifest_keys[0];
    let sign_all = measure(sign_rounds, 1, || {
        for manifest in &fleet {
            black_box(manifest.sign(&[signer]));
        }
    });
    let name = format!("serialize + sign {fleet_size} manifests, 10 apps");
    report(&name, &sign_all, Some(Duration::from_secs(2)), quick);
}
