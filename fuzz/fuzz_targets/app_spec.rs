//! Fuzzes the app spec: `drover_protocol::AppSpec` parsed from TOML (as `drover release
//! create` reads `drover.toml`) or from JSON (as manifests carry it), then the shared
//! check (`AppSpec::check`, run at release create and by the agent) and the agent's unit
//! rendering.
//!
//! The first byte chooses the mode: bit 0 set parses the rest as TOML, clear as JSON.
//!
//! Invariants: a spec that parses survives the trip to JSON and back unchanged (release
//! create stores what the agent later reads); a spec the check accepts for a tarball
//! renders as a unit; and a rendered unit is exactly the unit drover writes, with nothing
//! smuggled in by a value (one `[Unit]`, `[Service]` and `[Install]`, one `ExecStart=`, no
//! other `Exec*=`, no line continued by a trailing backslash).

#![no_main]

use std::path::Path;

use drover_fuzz::debug;
use drover_protocol::spec::ArtifactKind;
use drover_protocol::{AppName, AppSpec, Version};
use libfuzzer_sys::fuzz_target;

fn check_unit(text: &str) {
    let mut sections = Vec::new();
    let mut exec_start = 0;
    for line in text.lines() {
        assert!(
            !line.ends_with('\\'),
            "a line continues onto the next: {line:?}\n{text}"
        );
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            sections.push(line);
            continue;
        }
        let (key, _) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a setting: {line:?}\n{text}"));
        assert!(
            !key.is_empty() && key.bytes().all(|byte| byte.is_ascii_alphanumeric()),
            "not a setting name: {key:?}\n{text}"
        );
        if key == "ExecStart" {
            exec_start += 1;
        } else {
            assert!(
                !key.starts_with("Exec"),
                "a command setting drover never writes: {line:?}\n{text}"
            );
        }
    }
    assert_eq!(sections, ["[Unit]", "[Service]", "[Install]"], "{text}");
    assert_eq!(exec_start, 1, "{text}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let parsed: Result<AppSpec, String> = if mode & 1 == 1 {
        std::str::from_utf8(rest)
            .map_err(|error| error.to_string())
            .and_then(|text| toml::from_str(text).map_err(|error| error.to_string()))
    } else {
        serde_json::from_slice(rest).map_err(|error| error.to_string())
    };
    debug("parse", &parsed.as_ref().map(|_| "ok"));
    let Ok(spec) = parsed else {
        return;
    };
    let json = serde_json::to_vec(&spec).expect("a spec serialises");
    let again: AppSpec = serde_json::from_slice(&json)
        .unwrap_or_else(|error| panic!("a parsed spec does not parse again from its JSON: {error}"));
    assert_eq!(again, spec, "the spec does not survive the trip to JSON and back");

    debug("check image", &spec.check(ArtifactKind::Image));
    let tarball = spec.check(ArtifactKind::Tarball);
    debug("check tarball", &tarball);
    if tarball.is_ok() {
        let app: AppName = "app".parse().expect("an app name");
        let version: Version = "1.0.0".parse().expect("a version");
        let current = Path::new("/var/lib/drover/apps/app/current");
        match drover_agent::unit::render(&app, &version, &spec, current) {
            Ok(text) => {
                debug("unit", &text);
                check_unit(&text);
            }
            Err(error) => panic!("a spec the check accepts cannot be rendered as a unit: {error}"),
        }
    }
});
