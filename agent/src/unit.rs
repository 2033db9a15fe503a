//! Renders the systemd unit `drover-<app>.service` that runs an app's current release, as
//! pure text: no I/O, so every escaping rule is tested here and not on a host.
//!
//! The unit never names a release directory. It runs everything through the `current`
//! link (`/var/lib/drover/apps/<app>/current`), which the agent switches atomically, so a
//! restart after the switch starts the new release and a rollback is a switch back plus
//! a restart. It is rewritten on every activation anyway, because the spec travels with
//! the release and may change between versions.
//!
//! Choices worth knowing:
//!
//! - **No user means `DynamicUser=yes`**, as the spec documents: an unprivileged uid that
//!   exists only while the service runs, so an app that names no user never runs as
//!   root by accident and cannot leave files behind owned by a reused uid. It needs the
//!   release to be readable by "others": the agent keeps release directories 0755 and
//!   files world-readable, and every directory above `current` must be traversable (the
//!   state directory root 0755; only the identity directory below it is 0700). systemd
//!   makes `DynamicUser=` imply `ProtectSystem=strict`, `ProtectHome=read-only`,
//!   `PrivateTmp=yes`, `RemoveIPC=yes` and `RestrictSUIDSGID=yes`, whatever the sandbox
//!   level says; a service that must manage the host names `user = "root"` explicitly.
//! - **`Type=exec`**: the start job completes only once `execve` succeeded, so a missing
//!   program or user fails the restart job itself instead of showing up later as a crash.
//! - **`StartLimitIntervalSec=0`**: with `RestartSec=1` systemd's default start limit (5
//!   starts in 10 s) would give up on a crashing app for good after about 5 s. An app on
//!   a rebooted host whose database is not up yet must keep trying on its own, without
//!   the agent, so restarts are not rate limited beyond `RestartSec=`. The agent's health
//!   check sees a crash loop in `NRestarts` and the `auto-restart` sub-state instead.
//! - **`allow_setuid`** only drops `NoNewPrivileges=` and `RestrictSUIDSGID=`. The kernel
//!   still sets no_new_privs for an unprivileged service when the strict level's other
//!   options (`PrivateDevices=`, `ProtectKernel*=`, `ProtectClock=`, ...) or
//!   `DynamicUser=` are in effect, so setuid programs work only at the `basic` and `none`
//!   levels with an explicit user.
//! - `ReadWritePaths=` entries must exist: a missing one fails the start (status
//!   226/NAMESPACE) rather than silently running with less than the operator asked for.
//!
//! Escaping: systemd expands `%` specifiers in every setting written here, expands `$VAR`
//! in `ExecStart=` arguments, splits `ExecStart=`, `Environment=` and `ReadWritePaths=` into
//! words with C-style quoting, and takes `WorkingDirectory=` verbatim up to the end of the
//! line. Words are written plain when they hold only characters with no meaning to any of
//! that, and double-quoted with `\\`, `\"` and `\xNN` escapes otherwise. What systemd cannot
//! express at all (a NUL byte in an environment value, a line over 1 MiB) is refused with a
//! [`UnitError`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use drover_protocol::spec::{RestartMode, SandboxLevel};
use drover_protocol::{AppName, AppSpec, Version};
use thiserror::Error;

/// The longest logical line systemd's unit file parser reads (`LONG_LINE_MAX`).
const MAX_LINE: usize = 1 << 20;

/// A spec that cannot be written as a unit file.
#[derive(Debug, Error)]
pub enum UnitError {
    /// The `current` link path must be absolute UTF-8 without control characters, since
    /// it becomes `WorkingDirectory=` and the program path.
    #[error("rendering {unit}: the release link {} must be an absolute UTF-8 path without control characters", path.display())]
    CurrentPath { unit: String, path: PathBuf },
    /// systemd refuses executable paths with `.` or `..` parts, `//` or a trailing `/`.
    #[error("rendering {unit}: program {program:?} must be a normalized path (no '.', '..' or empty parts)")]
    Program { unit: String, program: String },
    /// An environment value with a NUL byte, which no process environment can hold.
    #[error("rendering {unit}: environment variable {name} holds a NUL byte, which no process environment can carry")]
    Environment { unit: String, name: String },
    /// A limit of zero, which systemd rejects for `MemoryMax=`, `CPUQuota=` and `TasksMax=`.
    #[error("rendering {unit}: {setting}=0 is not a limit systemd accepts; leave it out for no limit")]
    ZeroLimit { unit: String, setting: &'static str },
    /// A line longer than systemd reads.
    #[error("rendering {unit}: the {setting}= line would be {length} bytes, more than the {MAX_LINE} systemd reads")]
    LineTooLong {
        unit: String,
        setting: &'static str,
        length: usize,
    },
}

/// The unit that runs `app`: `drover-<app>.service`. App names cannot hold anything a
/// unit name could not, so no escaping is needed.
pub fn unit_name(app: &AppName) -> String {
    format!("drover-{app}.service")
}

/// The unit file text for `app` at `version`, run through the `current` link.
pub fn render(app: &AppName, version: &Version, spec: &AppSpec, current: &Path) -> Result<String, UnitError> {
    let unit = unit_name(app);
    let service = &spec.service;
    let current = current
        .to_str()
        .filter(|text| current.is_absolute() && !text.chars().any(char::is_control))
        .map(|text| text.trim_end_matches('/'))
        .filter(|text| !text.is_empty())
        .ok_or_else(|| UnitError::CurrentPath {
            unit: unit.clone(),
            path: current.to_path_buf(),
        })?;

    let mut settings: Vec<(&'static str, String)> = vec![("Type", "exec".to_owned())];
    settings.push(("ExecStart", exec_start(&unit, service.command.argv(), current)?));
    settings.push((
        "WorkingDirectory",
        working_directory(current, service.working_directory.as_ref().map(|dir| dir.as_str())),
    ));
    match &service.user {
        Some(user) => settings.push(("User", user.to_string())),
        None => settings.push(("DynamicUser", "yes".to_owned())),
    }
    if let Some(group) = &service.group {
        settings.push(("Group", group.to_string()));
    }
    for (name, value) in &service.environment {
        if !environment_value_ok(value) {
            return Err(UnitError::Environment {
                unit,
                name: name.to_string(),
            });
        }
        settings.push(("Environment", quote_word(&format!("{name}={value}"), Dollar::Literal)));
    }
    let restart = match service.restart {
        RestartMode::Always => "always",
        RestartMode::OnFailure => "on-failure",
        RestartMode::No => "no",
    };
    settings.push(("Restart", restart.to_owned()));
    settings.push(("RestartSec", "1".to_owned()));
    // systemd reads `TimeoutStopSec=0` as "wait forever", the opposite of a zero timeout.
    settings.push((
        "TimeoutStopSec",
        format!("{}ms", service.stop_timeout.as_millis().max(1)),
    ));

    let resources = &spec.resources;
    let zero = |setting| UnitError::ZeroLimit {
        unit: unit.clone(),
        setting,
    };
    if let Some(memory) = resources.memory_max {
        if memory.bytes() == 0 {
            return Err(zero("MemoryMax"));
        }
        settings.push(("MemoryMax", memory.bytes().to_string()));
    }
    if let Some(percent) = resources.cpu_quota_percent {
        if percent == 0 {
            return Err(zero("CPUQuota"));
        }
        settings.push(("CPUQuota", format!("{percent}%")));
    }
    if let Some(tasks) = resources.tasks_max {
        if tasks == 0 {
            return Err(zero("TasksMax"));
        }
        settings.push(("TasksMax", tasks.to_string()));
    }

    let sandbox = &spec.sandbox;
    let no_new_privileges = !sandbox.allow_setuid;
    let yes = |setting: &'static str| (setting, "yes".to_owned());
    match sandbox.level {
        SandboxLevel::Strict => {
            settings.push(("ProtectSystem", "strict".to_owned()));
            settings.extend(
                [
                    "ProtectHome",
                    "PrivateTmp",
                    "PrivateDevices",
                    "ProtectKernelTunables",
                    "ProtectKernelModules",
                    "ProtectKernelLogs",
                    "ProtectControlGroups",
                    "ProtectClock",
                    "ProtectHostname",
                    "LockPersonality",
                    "RestrictRealtime",
                ]
                .map(yes),
            );
            if no_new_privileges {
                settings.extend(["NoNewPrivileges", "RestrictSUIDSGID"].map(yes));
            }
        }
        SandboxLevel::Basic => {
            settings.push(("ProtectSystem", "full".to_owned()));
            settings.push(yes("PrivateTmp"));
            if no_new_privileges {
                settings.push(yes("NoNewPrivileges"));
            }
        }
        SandboxLevel::None => {}
    }
    // At level `none` nothing is read-only unless `DynamicUser=` made it so; the setting
    // would only give a service that manages the host a mount namespace of its own.
    if sandbox.level != SandboxLevel::None || service.user.is_none() {
        for path in &sandbox.read_write_paths {
            settings.push(("ReadWritePaths", quote_word(path.as_str(), Dollar::Literal)));
        }
    }

    // The app name and version are validated to plain characters (no `%`, no newline),
    // so they need no escaping in comments or `Description=`.
    let mut text = format!(
        "# {unit}: generated by drover-agent for app {app}, version {version}.\n\
         # Do not edit: the agent rewrites this file on every install and rollback.\n\
         \n\
         [Unit]\n\
         Description=drover app {app} ({version})\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         StartLimitIntervalSec=0\n\
         \n\
         [Service]\n"
    );
    for (setting, value) in settings {
        let length = setting.len() + 1 + value.len();
        if length > MAX_LINE {
            return Err(UnitError::LineTooLong { unit, setting, length });
        }
        let _ = writeln!(text, "{setting}={value}");
    }
    text.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    Ok(text)
}

/// `ExecStart=`: the program, inside the release through `current` unless absolute,
/// then the arguments, each one word with `%` and `$` taken literally.
fn exec_start(unit: &str, argv: &[String], current: &str) -> Result<String, UnitError> {
    let (program, args) = argv.split_first().ok_or_else(|| UnitError::Program {
        unit: unit.to_owned(),
        program: String::new(),
    })?;
    let relative = program.strip_prefix('/').unwrap_or(program);
    if relative
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(UnitError::Program {
            unit: unit.to_owned(),
            program: program.clone(),
        });
    }
    // An absolute program starts with `/`, and so does `current`: the word can never
    // start with one of systemd's prefix characters (`@-:+!`).
    let path = if program.starts_with('/') {
        program.clone()
    } else {
        format!("{current}/{program}")
    };
    let mut line = quote_word(&path, Dollar::Literal);
    for arg in args {
        line.push(' ');
        line.push_str(&quote_word(arg, Dollar::Escape));
    }
    Ok(line)
}

/// `WorkingDirectory=`, which systemd takes verbatim (after `%` specifiers) up to the end
/// of the line, with surrounding whitespace trimmed and a trailing `\` continuing the line.
/// A trailing `/`, which systemd drops, keeps both from mattering.
fn working_directory(current: &str, relative: Option<&str>) -> String {
    let mut path = match relative {
        Some(relative) => format!("{current}/{relative}"),
        None => current.to_owned(),
    };
    if path.ends_with([' ', '\\']) {
        path.push('/');
    }
    path.replace('%', "%%")
}

/// Whether `value` can be passed in an environment at all: a C string cannot hold NUL.
/// Other control characters pass through `Environment=` escaped (checked on systemd 252).
fn environment_value_ok(value: &str) -> bool {
    !value.contains('\0')
}

/// What `$` means where a word is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dollar {
    /// `ExecStart=` arguments, where systemd substitutes `$VAR`: written `$$`.
    Escape,
    /// Settings without variable substitution (`Environment=`, paths).
    Literal,
}

/// One word of a systemd setting that splits its value into words: plain when every
/// character is harmless, double-quoted with C escapes otherwise. `%` is always doubled,
/// since specifiers are expanded before and after quoting alike.
fn quote_word(word: &str, dollar: Dollar) -> String {
    let plain = !word.is_empty()
        && word.bytes().all(|b| {
            b.is_ascii_alphanumeric() || b"-_./:,+=@%".contains(&b) || (b == b'$' && dollar == Dollar::Escape)
        });
    let mut out = String::with_capacity(word.len() + 2);
    if !plain {
        out.push('"');
    }
    for c in word.chars() {
        match c {
            '%' => out.push_str("%%"),
            '$' if dollar == Dollar::Escape => out.push_str("$$"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    if !plain {
        out.push('"');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURRENT: &str = "/var/lib/drover/apps/web/current";

    fn spec(json: &str) -> AppSpec {
        serde_json::from_str(json).expect("test spec parses")
    }

    fn render_json(json: &str) -> Result<String, UnitError> {
        let app: AppName = "web".parse().expect("app name");
        let version: Version = "1.2.3".parse().expect("version");
        render(&app, &version, &spec(json), Path::new(CURRENT))
    }

    fn rendered(json: &str) -> String {
        render_json(json).expect("renders")
    }

    /// The values of every `setting=` line, in order.
    fn values<'a>(text: &'a str, setting: &str) -> Vec<&'a str> {
        let prefix = format!("{setting}=");
        text.lines()
            .filter_map(|line| line.strip_prefix(prefix.as_str()))
            .collect()
    }

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|candidate| candidate == line)
    }

    #[test]
    fn unit_name_is_prefixed() {
        assert_eq!(unit_name(&"web".parse().expect("app name")), "drover-web.service");
    }

    #[test]
    fn minimal_spec_runs_through_current_as_a_dynamic_user() {
        let text = rendered(r#"{"service":{"command":["bin/web","--port","8080"]}}"#);
        assert!(text.starts_with("# drover-web.service: generated by drover-agent for app web, version 1.2.3.\n"));
        assert!(text.contains("Do not edit"));
        assert_eq!(
            values(&text, "ExecStart"),
            ["/var/lib/drover/apps/web/current/bin/web --port 8080"]
        );
        assert_eq!(values(&text, "WorkingDirectory"), [CURRENT]);
        assert_eq!(values(&text, "DynamicUser"), ["yes"]);
        assert!(values(&text, "User").is_empty());
        assert_eq!(values(&text, "Type"), ["exec"]);
        assert_eq!(values(&text, "Restart"), ["on-failure"]);
        assert_eq!(values(&text, "RestartSec"), ["1"]);
        assert_eq!(values(&text, "TimeoutStopSec"), ["30000ms"]);
        assert_eq!(values(&text, "StartLimitIntervalSec"), ["0"]);
        assert!(text.ends_with("\n[Install]\nWantedBy=multi-user.target\n"));
    }

    #[test]
    fn full_spec_sets_user_group_workdir_resources_and_restart() {
        let text = rendered(
            r#"{"service":{"command":["/usr/bin/python3","app.py"],"user":"web","group":"www-data",
                "working_directory":"srv/app","restart":"always","stop_timeout":"10s"},
                "resources":{"memory_max":"256M","cpu_quota_percent":150,"tasks_max":64}}"#,
        );
        assert_eq!(values(&text, "ExecStart"), ["/usr/bin/python3 app.py"]);
        assert_eq!(values(&text, "WorkingDirectory"), [format!("{CURRENT}/srv/app")]);
        assert_eq!(values(&text, "User"), ["web"]);
        assert_eq!(values(&text, "Group"), ["www-data"]);
        assert!(values(&text, "DynamicUser").is_empty());
        assert_eq!(values(&text, "Restart"), ["always"]);
        assert_eq!(values(&text, "TimeoutStopSec"), ["10000ms"]);
        assert_eq!(values(&text, "MemoryMax"), ["268435456"]);
        assert_eq!(values(&text, "CPUQuota"), ["150%"]);
        assert_eq!(values(&text, "TasksMax"), ["64"]);
        let text = rendered(r#"{"service":{"command":["x"],"restart":"no","stop_timeout":"0s"}}"#);
        assert_eq!(values(&text, "Restart"), ["no"]);
        assert_eq!(
            values(&text, "TimeoutStopSec"),
            ["1ms"],
            "0 would mean no timeout at all"
        );
    }

    #[test]
    fn exec_start_arguments_are_escaped() {
        let text = rendered(
            r#"{"service":{"command":["bin/web","two words","say \"hi\"","back\\slash","100%","$HOME","${X}",
                ";","","tab\there","line\nbreak","esc\u001bape","it's","naïve","trailing\\"]}}"#,
        );
        let expected = [
            "/var/lib/drover/apps/web/current/bin/web",
            r#""two words""#,
            r#""say \"hi\"""#,
            r#""back\\slash""#,
            "100%%",
            "$$HOME",
            r#""$${X}""#,
            r#"";""#,
            r#""""#,
            r#""tab\there""#,
            r#""line\nbreak""#,
            r#""esc\x1bape""#,
            r#""it's""#,
            "\"naïve\"",
            r#""trailing\\""#,
        ]
        .join(" ");
        assert_eq!(values(&text, "ExecStart"), [expected.as_str()]);
    }

    #[test]
    fn program_paths_are_quoted_and_must_be_normalized() {
        let text = rendered(r#"{"service":{"command":["bin/my app"]}}"#);
        assert_eq!(values(&text, "ExecStart"), [format!("\"{CURRENT}/bin/my app\"")]);
        let text = rendered(r#"{"service":{"command":["/opt/100%/run"]}}"#);
        assert_eq!(values(&text, "ExecStart"), ["/opt/100%%/run"]);
        for program in [
            "../bin/sh",
            "bin/../../x",
            "./bin/web",
            "bin//web",
            "bin/web/",
            "/usr/./bin/x",
        ] {
            let json = format!(r#"{{"service":{{"command":["{program}"]}}}}"#);
            assert!(
                matches!(render_json(&json), Err(UnitError::Program { .. })),
                "{program} must be refused"
            );
        }
    }

    #[test]
    fn environment_is_quoted_and_percent_escaped_but_dollar_is_literal() {
        let text = rendered(
            r#"{"service":{"command":["x"],"environment":{"PLAIN":"8080","SPACE":"a b","QUOTE":"say \"hi\"",
                "PCT":"50%","DOLLAR":"$HOME","MULTI":"one\ntwo\tthree","EMPTY":"","BACK":"c:\\dir\\"}}}"#,
        );
        assert_eq!(
            values(&text, "Environment"),
            [
                r#""BACK=c:\\dir\\""#,
                r#""DOLLAR=$HOME""#,
                "EMPTY=",
                r#""MULTI=one\ntwo\tthree""#,
                "PCT=50%%",
                "PLAIN=8080",
                r#""QUOTE=say \"hi\"""#,
                r#""SPACE=a b""#,
            ]
        );
    }

    #[test]
    fn environment_control_characters_are_escaped_and_nul_is_refused() {
        let text = rendered(r#"{"service":{"command":["x"],"environment":{"CC":"a\u001bb\rc\u0085d"}}}"#);
        assert_eq!(values(&text, "Environment"), [r#""CC=a\x1bb\x0dc\u0085d""#]);
        match render_json(r#"{"service":{"command":["x"],"environment":{"BAD":"a\u0000b"}}}"#) {
            Err(UnitError::Environment { name, unit }) => {
                assert_eq!((name.as_str(), unit.as_str()), ("BAD", "drover-web.service"));
            }
            other => panic!("a NUL byte must be refused, got {other:?}"),
        }
    }

    #[test]
    fn working_directory_survives_trailing_space_backslash_and_percent() {
        let workdir = |dir: &str| {
            let json = format!(r#"{{"service":{{"command":["x"],"working_directory":"{dir}"}}}}"#);
            values(&rendered(&json), "WorkingDirectory")[0].to_owned()
        };
        assert_eq!(workdir("srv "), format!("{CURRENT}/srv /"));
        assert_eq!(workdir(r"srv\\"), format!("{CURRENT}/srv\\/"));
        assert_eq!(workdir("100%"), format!("{CURRENT}/100%%"));
        assert_eq!(workdir("my dir/x"), format!("{CURRENT}/my dir/x"));
    }

    #[test]
    fn strict_sandbox_is_the_default() {
        let text =
            rendered(r#"{"service":{"command":["x"]},"sandbox":{"read_write_paths":["/var/lib/web","/srv/my data"]}}"#);
        for line in [
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "NoNewPrivileges=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectControlGroups=yes",
            "RestrictSUIDSGID=yes",
        ] {
            assert!(has(&text, line), "strict must set {line}");
        }
        assert_eq!(values(&text, "ReadWritePaths"), ["/var/lib/web", r#""/srv/my data""#]);
    }

    #[test]
    fn strict_sandbox_with_setuid_drops_only_no_new_privileges() {
        let text = rendered(r#"{"service":{"command":["x"],"user":"web"},"sandbox":{"allow_setuid":true}}"#);
        assert!(has(&text, "ProtectSystem=strict"));
        assert!(has(&text, "PrivateDevices=yes"));
        assert!(values(&text, "NoNewPrivileges").is_empty());
        assert!(values(&text, "RestrictSUIDSGID").is_empty());
    }

    #[test]
    fn basic_sandbox_is_lighter() {
        let text =
            rendered(r#"{"service":{"command":["x"]},"sandbox":{"level":"basic","read_write_paths":["/etc/web"]}}"#);
        assert!(has(&text, "ProtectSystem=full"));
        assert!(has(&text, "PrivateTmp=yes"));
        assert!(has(&text, "NoNewPrivileges=yes"));
        assert!(values(&text, "ProtectHome").is_empty());
        assert!(values(&text, "PrivateDevices").is_empty());
        assert_eq!(values(&text, "ReadWritePaths"), ["/etc/web"]);
        let text = rendered(r#"{"service":{"command":["x"]},"sandbox":{"level":"basic","allow_setuid":true}}"#);
        assert!(values(&text, "NoNewPrivileges").is_empty());
    }

    #[test]
    fn no_sandbox_sets_nothing() {
        let text = rendered(
            r#"{"service":{"command":["x"],"user":"root"},"sandbox":{"level":"none","read_write_paths":["/etc"]}}"#,
        );
        for setting in [
            "ProtectSystem",
            "ProtectHome",
            "PrivateTmp",
            "PrivateDevices",
            "NoNewPrivileges",
            "RestrictSUIDSGID",
            "ReadWritePaths",
            "ProtectKernelTunables",
            "DynamicUser",
        ] {
            assert!(values(&text, setting).is_empty(), "level none must not set {setting}");
        }
        assert_eq!(values(&text, "User"), ["root"]);
        // `DynamicUser=` makes the system read-only whatever the level says.
        let text =
            rendered(r#"{"service":{"command":["x"]},"sandbox":{"level":"none","read_write_paths":["/srv/x"]}}"#);
        assert_eq!(values(&text, "DynamicUser"), ["yes"]);
        assert_eq!(values(&text, "ReadWritePaths"), ["/srv/x"]);
    }

    #[test]
    fn zero_limits_are_refused() {
        for (resources, setting) in [
            (r#"{"memory_max":"0"}"#, "MemoryMax"),
            (r#"{"cpu_quota_percent":0}"#, "CPUQuota"),
            (r#"{"tasks_max":0}"#, "TasksMax"),
        ] {
            let json = format!(r#"{{"service":{{"command":["x"]}},"resources":{resources}}}"#);
            assert!(
                matches!(render_json(&json), Err(UnitError::ZeroLimit { setting: s, .. }) if s == setting),
                "{setting}=0 must be refused"
            );
        }
    }

    #[test]
    fn current_must_be_absolute_utf8() {
        let app: AppName = "web".parse().expect("app name");
        let version: Version = "1".parse().expect("version");
        let spec = spec(r#"{"service":{"command":["x"]}}"#);
        for current in ["relative/current", "/", "/var/lib/drover\n/current"] {
            assert!(
                matches!(
                    render(&app, &version, &spec, Path::new(current)),
                    Err(UnitError::CurrentPath { .. })
                ),
                "{current:?} must be refused"
            );
        }
        let text = render(&app, &version, &spec, Path::new("/srv/drover 100%/apps/web/current/")).expect("renders");
        assert_eq!(
            values(&text, "ExecStart"),
            [r#""/srv/drover 100%%/apps/web/current/x""#]
        );
        assert_eq!(
            values(&text, "WorkingDirectory"),
            ["/srv/drover 100%%/apps/web/current"]
        );
    }

    #[test]
    fn overlong_lines_are_refused() {
        let arg = "\\u0001".repeat(4096);
        let args: Vec<String> = std::iter::repeat_n(format!("\"{arg}\""), 255).collect();
        let json = format!(r#"{{"service":{{"command":["x",{}]}}}}"#, args.join(","));
        assert!(matches!(
            render_json(&json),
            Err(UnitError::LineTooLong {
                setting: "ExecStart",
                ..
            })
        ));
    }
}
