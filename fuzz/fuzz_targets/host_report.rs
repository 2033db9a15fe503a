//! Fuzzes what the coordinator does with a host's report body: parse it as JSON into a
//! `drover_protocol::HostReport` (as `POST /v1/agent/report` does, after the same size
//! limit) and run `HostReport::check`, which bounds what the coordinator stores.
//!
//! Invariants: a report that passes the check has at most `MAX_REPORT_EVENTS` events and
//! no text over `MAX_TEXT`; and it survives the trip to JSON and back unchanged (the
//! coordinator stores it as JSON and serves it back in status).

#![no_main]

use drover_fuzz::debug;
use drover_protocol::HostReport;
use drover_protocol::report::{MAX_REPORT_BYTES, MAX_REPORT_EVENTS, MAX_TEXT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_REPORT_BYTES {
        return;
    }
    let parsed = serde_json::from_slice::<HostReport>(data);
    debug("parse", &parsed.as_ref().map(|_| "ok"));
    let Ok(report) = parsed else {
        return;
    };
    let checked = report.check();
    debug("check", &checked);
    if checked.is_err() {
        return;
    }
    assert!(report.events.len() <= MAX_REPORT_EVENTS);
    for event in &report.events {
        assert!(event.message.len() <= MAX_TEXT);
    }
    if let Some(rejection) = &report.manifest_rejection {
        assert!(rejection.len() <= MAX_TEXT);
    }
    let json = serde_json::to_vec(&report).expect("a report serialises");
    let again: HostReport = serde_json::from_slice(&json)
        .unwrap_or_else(|error| panic!("a checked report does not parse again from its JSON: {error}"));
    assert_eq!(again, report, "the report does not survive the trip to JSON and back");
});
