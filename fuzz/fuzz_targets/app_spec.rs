//! Fuzzes the app spec: `drover_protocol::AppSpec` parsed from TOML (as `drover release
//! create` reads `drover.toml`) or from JSON (as manifests carry it), then the shared
//! check (`AppSpec::check`, run at release create and by the agent) and the agent's unit
//! rendering.
//!
//! The first byte chooses the mode: bit 0 set parses the rest as TOML, clear as JSON.
//!
//! Invariants: a spec that parses survives the trip to JSON and back unchanged (release
//! create stores what the agent later reads); a spec the check accepts for a tarball
//! renders as a unit; a rendered unit is exactly the unit drover writes, with nothing
//! smuggled in by a value (one `[Unit]`, `[Service]` and `[Install]`, one `ExecStart=`, no
//! other `Exec*=`, no line continued by a trailing backslash); and read back the way
//! systemd reads it (specifiers, then quotes and C escapes, then `$$`), `ExecStart=` is
//! exactly the spec's program and arguments, each `Environment=` exactly one of its
//! variables and `WorkingDirectory=` its working directory.

#![no_main]

use std::iter::Peekable;
use std::path::Path;
use std::str::Chars;

use drover_fuzz::debug;
use drover_protocol::spec::ArtifactKind;
use drover_protocol::{AppName, AppSpec, Version};
use libfuzzer_sys::fuzz_target;

/// A setting's value after systemd's specifier expansion, in which drover writes only
/// `%%` (a literal `%`); any other specifier is an error.
fn expand_specifiers(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('%') => out.push('%'),
                other => return Err(format!("specifier %{other:?} in {value:?}")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// `digits` hex digits of an escape, as a character.
fn hex_escape(chars: &mut Peekable<Chars<'_>>, digits: usize) -> Result<char, String> {
    let text: String = (0..digits).filter_map(|_| chars.next()).collect();
    u32::from_str_radix(&text, 16)
        .ok()
        .filter(|_| text.len() == digits)
        .and_then(char::from_u32)
        .ok_or_else(|| format!("bad escape digits {text:?}"))
}

/// One C escape after a backslash, as systemd's `cunescape` reads it.
fn unescape(chars: &mut Peekable<Chars<'_>>) -> Result<char, String> {
    Ok(match chars.next() {
        Some('a') => '\u{7}',
        Some('b') => '\u{8}',
        Some('f') => '\u{c}',
        Some('n') => '\n',
        Some('r') => '\r',
        Some('t') => '\t',
        Some('v') => '\u{b}',
        Some('s') => ' ',
        Some(c @ ('\\' | '"' | '\'')) => c,
        Some('x') => hex_escape(chars, 2)?,
        Some('u') => hex_escape(chars, 4)?,
        Some('U') => hex_escape(chars, 8)?,
        other => return Err(format!("escape \\{other:?} that drover never writes")),
    })
}

/// Splits a value into words as systemd does for `ExecStart=` and `Environment=`:
/// specifiers first, then whitespace outside quotes separates words, quotes group, and
/// backslashes are C escapes.
fn systemd_words(value: &str) -> Result<Vec<String>, String> {
    let text = expand_specifiers(value)?;
    let mut chars = text.chars().peekable();
    let mut words = Vec::new();
    loop {
        while chars.next_if(|c| matches!(c, ' ' | '\t' | '\n' | '\r')).is_some() {}
        if chars.peek().is_none() {
            return Ok(words);
        }
        let mut word = String::new();
        let mut quote = None;
        while let Some(c) = chars.next() {
            match (c, quote) {
                ('\\', _) => word.push(unescape(&mut chars)?),
                ('"' | '\'', None) => quote = Some(c),
                (c, Some(open)) if c == open => quote = None,
                (' ' | '\t' | '\n' | '\r', None) => break,
                (c, _) => word.push(c),
            }
        }
        if quote.is_some() {
            return Err(format!("unterminated quote in {value:?}"));
        }
        words.push(word);
    }
}

/// An `ExecStart=` argument after systemd's variable expansion at start: drover writes
/// every `$` as `$$`, so a lone `$` would be a variable the spec did not ask for.
fn expand_dollars(word: &str) -> Result<String, String> {
    let mut out = String::with_capacity(word.len());
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        if c == '$' && chars.next() != Some('$') {
            return Err(format!("a variable reference in {word:?}"));
        }
        out.push(c);
    }
    Ok(out)
}

/// Reads the unit back as systemd would and compares it with what the spec asked for.
fn check_unit_means_spec(text: &str, spec: &AppSpec, current: &str) {
    let values = |key: &str| -> Vec<&str> {
        text.lines()
            .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .collect()
    };
    let command = spec
        .service
        .command
        .as_ref()
        .expect("a checked tarball spec has a command");
    let (program, args) = command.argv().split_first().expect("a command has a program");
    let expected_program = if program.starts_with('/') {
        program.clone()
    } else {
        format!("{current}/{program}")
    };
    let exec = values("ExecStart")[0];
    let words = systemd_words(exec).unwrap_or_else(|error| panic!("ExecStart={exec}: {error}\n{text}"));
    assert!(!words.is_empty(), "an empty ExecStart=\n{text}");
    assert_eq!(words[0], expected_program, "the program systemd would run\n{text}");
    let argv: Vec<String> = words[1..]
        .iter()
        .map(|word| expand_dollars(word).unwrap_or_else(|error| panic!("ExecStart={exec}: {error}\n{text}")))
        .collect();
    assert_eq!(argv, args, "the arguments systemd would pass\n{text}");

    assert!(values("Environment").is_empty(), "an environment value in the unit\n{text}");
    assert_eq!(values("EnvironmentFile"), [ENVIRONMENT_FILE], "{text}");

    if let Some(directory) = &spec.service.working_directory {
        let value = values("WorkingDirectory");
        assert_eq!(value.len(), 1, "{text}");
        // systemd strips whitespace at the end of a line: drover ends such a path with `/`.
        let read = expand_specifiers(value[0].trim_end()).unwrap_or_else(|error| panic!("{error}\n{text}"));
        let expected = format!("{current}/{}", directory.as_str());
        assert!(
            read == expected || read == format!("{expected}/"),
            "WorkingDirectory= reads {read:?}, the spec says {expected:?}\n{text}"
        );
    }
}

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

/// The `current` link of the fuzzed app, as the agent passes it.
const CURRENT: &str = "/var/lib/drover/apps/app/current";

/// The fuzzed app's environment file, as the agent passes it.
const ENVIRONMENT_FILE: &str = "/var/lib/drover/apps/app/environment";

/// An environment file read as systemd's `parse_env_file_internal` (env-file.c, 252) reads
/// it for `EnvironmentFile=`: `#`/`;` comments, `KEY=` (whitespace around the key
/// dropped), values bare (trailing whitespace dropped, `\` takes the next character),
/// single-quoted (verbatim) or double-quoted (`\` before `"`, `\`, `` ` `` or `$` takes
/// it, before a newline continues the line, before anything else stays), a newline outside
/// quotes ending the variable. No specifier or variable is expanded.
fn read_environment_file(text: &str) -> Vec<(String, String)> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        PreKey,
        Key,
        PreValue,
        Value,
        ValueEscape,
        Single,
        Double,
        DoubleEscape,
        Comment,
        CommentEscape,
    }
    let (mut state, mut key, mut value) = (State::PreKey, String::new(), String::new());
    let mut variables = Vec::new();
    let mut push = |key: &mut String, value: &mut String| {
        variables.push((key.trim_end().to_owned(), std::mem::take(value)));
        key.clear();
    };
    let newline = |c: char| c == '\n' || c == '\r';
    for c in text.chars() {
        state = match state {
            State::PreKey if c == '#' || c == ';' => State::Comment,
            State::PreKey if matches!(c, ' ' | '\t' | '\n' | '\r') => State::PreKey,
            State::PreKey | State::Key if c == '=' && state == State::Key => State::PreValue,
            State::Key if newline(c) => {
                key.clear();
                State::PreKey
            }
            State::PreKey | State::Key => {
                key.push(c);
                State::Key
            }
            State::PreValue if newline(c) => {
                push(&mut key, &mut value);
                State::PreKey
            }
            State::PreValue if c == '\'' => State::Single,
            State::PreValue if c == '"' => State::Double,
            State::PreValue if c == '\\' => State::ValueEscape,
            State::PreValue if matches!(c, ' ' | '\t') => State::PreValue,
            State::PreValue | State::Value if newline(c) => {
                value.truncate(value.trim_end().len());
                push(&mut key, &mut value);
                State::PreKey
            }
            State::PreValue | State::Value if c == '\\' => State::ValueEscape,
            State::PreValue | State::Value => {
                value.push(c);
                State::Value
            }
            State::ValueEscape => {
                if !newline(c) {
                    value.push(c);
                }
                State::Value
            }
            State::Single if c == '\'' => State::PreValue,
            State::Double if c == '"' => State::PreValue,
            State::Double if c == '\\' => State::DoubleEscape,
            State::Single | State::Double => {
                value.push(c);
                state
            }
            State::DoubleEscape => {
                if matches!(c, '"' | '\\' | '`' | '$') {
                    value.push(c);
                } else if c != '\n' {
                    value.push('\\');
                    value.push(c);
                }
                State::Double
            }
            State::Comment if c == '\\' => State::CommentEscape,
            State::Comment if newline(c) => State::PreKey,
            State::Comment | State::CommentEscape => State::Comment,
        };
    }
    match state {
        State::PreKey | State::Key | State::Comment | State::CommentEscape => {}
        _ => push(&mut key, &mut value),
    }
    variables
}

/// The environment file means exactly the spec's environment.
fn check_environment_file(text: &str, spec: &AppSpec) {
    let read = read_environment_file(text);
    let expected: Vec<(String, String)> = spec
        .service
        .environment
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.clone()))
        .collect();
    assert_eq!(read, expected, "the environment systemd would set\n{text}");
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
        match drover_agent::unit::render(&app, &version, &spec, Path::new(CURRENT), Path::new(ENVIRONMENT_FILE)) {
            Ok(text) => {
                debug("unit", &text);
                check_unit(&text);
                check_unit_means_spec(&text, &spec, CURRENT);
            }
            Err(error) => panic!("a spec the check accepts cannot be rendered as a unit: {error}"),
        }
        match drover_agent::unit::render_environment(&app, &spec, None) {
            Ok(text) => {
                debug("environment file", &text);
                check_environment_file(&text, &spec);
            }
            Err(error) => panic!("a spec the check accepts cannot be rendered as an environment file: {error}"),
        }
    }
});
