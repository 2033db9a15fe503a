//! Renders the systemd unit `drover-<app>.service` that runs an app's current release, as
//! pure text: no I/O, so every escaping rule is tested here and not on a host. A tarball
//! release runs from its directory ([`render`]); an OCI image runs in its rootfs with
//! `RootDirectory=` ([`render_oci`], with what staging resolved inside the image).
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
//!   their files as the artifact made them, and every directory above `current` must be
//!   traversable (the state directory root, `apps/`, `apps/<app>/` and `releases/` are
//!   0711: passable by name, not listable; see [`crate::local`]). Config files stay root's
//!   for a dynamic user (there is no fixed uid to give them to), so such an app reads only
//!   config files whose mode lets others read them; with `user` they are that user's. systemd
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
//! - `ReadWritePaths=` entries and the sources of `BindPaths=` / `BindReadOnlyPaths=`
//!   must exist: a missing one fails the start (status 226/NAMESPACE) rather than silently
//!   running with less than the operator asked for.
//!
//! - **The environment is not in the unit.** A unit file is world-readable and its
//!   `Environment=` is public over D-Bus (`systemctl show`), and environment values are
//!   often secrets, so the unit names `EnvironmentFile=<state>/apps/<app>/environment`, a
//!   0600 root-owned file written with it ([`render_environment`]). systemd reads it as
//!   root at each start, before dropping to the app's user (dynamic users included).
//!
//! Escaping: systemd expands `%` specifiers in every setting written here, expands `$VAR`
//! in `ExecStart=` arguments, splits `ExecStart=` and `ReadWritePaths=` into
//! words with C-style quoting, and takes `WorkingDirectory=` verbatim up to the end of the
//! line. Words are written plain when they hold only characters with no meaning to any of
//! that, and double-quoted with `\\`, `\"` and `\xNN` escapes otherwise. What systemd cannot
//! express at all (a NUL byte in an environment value, a line over 1 MiB) is refused with a
//! [`UnitError`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use drover_protocol::spec::{BindPath, RestartMode, SandboxLevel};
use drover_protocol::{AppName, AppSpec, Version};
use thiserror::Error;

use crate::oci::image::{ImageRun, RunAs};

/// The longest logical line systemd's unit file parser reads (`LONG_LINE_MAX`).
const MAX_LINE: usize = 1 << 20;

/// A spec that cannot be written as a unit file.
#[derive(Debug, Error)]
pub enum UnitError {
    /// The `current` link path must be absolute UTF-8 without control characters, since
    /// it becomes `WorkingDirectory=` and the program path.
    #[error("rendering {unit}: the release link {} must be an absolute UTF-8 path without control characters", path.display())]
    CurrentPath { unit: String, path: PathBuf },
    /// The environment file's path must be absolute UTF-8 without control characters or
    /// surrounding whitespace, since it becomes `EnvironmentFile=`.
    #[error("rendering {unit}: the environment file {} must be an absolute UTF-8 path without control characters or surrounding whitespace", path.display())]
    EnvironmentFile { unit: String, path: PathBuf },
    /// systemd refuses executable paths with `.` or `..` parts, `//` or a trailing `/`.
    #[error("rendering {unit}: program {program:?} must be a normalized path (no '.', '..' or empty parts)")]
    Program { unit: String, program: String },
    /// An environment value with a NUL byte, which no process environment can hold.
    #[error("rendering {unit}: environment variable {name} holds a NUL byte, which no process environment can carry")]
    Environment { unit: String, name: String },
    /// A limit of zero, which systemd rejects for `MemoryMax=`, `CPUQuota=` and `TasksMax=`.
    #[error("rendering {unit}: {setting}=0 is not a limit systemd accepts; leave it out for no limit")]
    ZeroLimit { unit: String, setting: &'static str },
    /// A tarball release whose spec has no command (only an OCI image brings its own).
    #[error(
        "rendering {unit}: the spec has no service command, which a tarball release needs (only an OCI image brings its own Entrypoint and Cmd)"
    )]
    NoCommand { unit: String },
    /// A config file of an OCI release whose bind mount systemd could not read back.
    #[error("rendering {unit}: config file {path} cannot be bind-mounted into the image: {problem}")]
    ConfigFileBind {
        unit: String,
        path: String,
        problem: &'static str,
    },
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

/// The unit file text for `app` at `version` from a tarball release, run through the
/// `current` link, its environment read from `environment_file` (which holds
/// [`render_environment`]'s text).
pub fn render(
    app: &AppName,
    version: &Version,
    spec: &AppSpec,
    current: &Path,
    environment_file: &Path,
) -> Result<String, UnitError> {
    render_unit(app, version, spec, current, environment_file, None)
}

/// The unit file text for `app` at `version` from an OCI image staged as
/// `<release>/rootfs` (see [`crate::oci::stage`]), with what staging resolved in `image`.
/// The agent passes the release directory itself, not the `current` link: systemd (252)
/// fails to set up `RootDirectory=` with `MountAPIVFS=` through a symlink (226/NAMESPACE,
/// EBUSY), so an image's unit is re-rendered for the release it runs, also on rollback.
///
/// On top of what [`render`] writes: `RootDirectory=<release>/rootfs`, `MountAPIVFS=yes` (the rootfs has the mount
/// points), the host's `/etc/resolv.conf` bound read-only (host networking, the host's
/// resolver), `PrivateTmp=yes`, `NoNewPrivileges=yes` unless `allow_setuid`; the program
/// and working directory of `image` (staging applied the spec's `command` and
/// `working_directory`), its environment with the spec's on top; numeric
/// `User=` and `Group=` (names were resolved inside the rootfs, where they belong) or
/// `DynamicUser=yes`, and `HOME` from the image's `/etc/passwd` unless an environment
/// sets it. Paths in `read_write_paths` and bind targets are inside the image. Config
/// files are written beside `rootfs/` in `files/` and bound read-only at their path, so
/// the agent never writes into a rootfs after staging it.
pub fn render_oci(
    app: &AppName,
    version: &Version,
    spec: &AppSpec,
    release: &Path,
    environment_file: &Path,
    image: &ImageRun,
) -> Result<String, UnitError> {
    render_unit(app, version, spec, release, environment_file, Some(image))
}

/// The environment file of `app` (`EnvironmentFile=` of its unit): the spec's
/// `[service] environment`, for an image on top of the image's own with `HOME` from its
/// `/etc/passwd` unless set. One `NAME="value"` line per variable, in the order systemd
/// applies them, the value double-quoted with `\`, `\"`, `\$` and `` \` `` escaped: the
/// escapes every systemd since 2013 reads the same way, and no specifier or variable is
/// expanded in such a file. Names are [`drover_protocol::spec::EnvName`]s (checked in the
/// spec and in the image's config), which need no quoting. A NUL byte, which no process
/// environment can carry, is refused.
///
/// It is a file of its own, written 0600 by root, because environment values are often
/// secrets: `Environment=` lines would be readable by every local user in the 0644 unit
/// file and through `systemctl show` (unit properties are public over D-Bus). systemd reads
/// the file as root when it starts the service, before it drops to the app's user, so a
/// `DynamicUser=` app gets its environment too.
pub fn render_environment(app: &AppName, spec: &AppSpec, image: Option<&ImageRun>) -> Result<String, UnitError> {
    let mut text = format!(
        "# {}: written by drover-agent from the spec's [service] environment.\n",
        unit_name(app)
    );
    for (name, value) in environment_entries(spec, image) {
        if !environment_value_ok(value) {
            return Err(UnitError::Environment {
                unit: unit_name(app),
                name: name.to_owned(),
            });
        }
        text.push_str(name);
        text.push_str("=\"");
        for c in value.chars() {
            if matches!(c, '\\' | '"' | '$' | '`') {
                text.push('\\');
            }
            text.push(c);
        }
        text.push_str("\"\n");
    }
    Ok(text)
}

/// The variables an app's process gets, in order: for an image its own environment with
/// the spec's on top (replacing a variable of the same name in place) and `HOME` of its
/// user unless one of them sets it; for a tarball the spec's.
fn environment_entries<'a>(spec: &'a AppSpec, image: Option<&'a ImageRun>) -> Vec<(&'a str, &'a str)> {
    let spec_environment = spec
        .service
        .environment
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()));
    let Some(image) = image else {
        return spec_environment.collect();
    };
    let mut entries: Vec<(&str, &str)> = image
        .environment
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    for (name, value) in spec_environment {
        match entries.iter_mut().find(|(existing, _)| *existing == name) {
            Some(entry) => entry.1 = value,
            None => entries.push((name, value)),
        }
    }
    if let RunAs::Ids { home, .. } = &image.user
        && !entries.iter().any(|(name, _)| *name == "HOME")
    {
        // systemd would set the host's idea of the user's home.
        entries.push(("HOME", home));
    }
    entries
}

/// The directory of an OCI release that holds its config files (bound into the image).
pub const OCI_CONFIG_FILES_DIR: &str = "files";

/// `root` is what the unit runs the release from: the `current` link for a tarball,
/// the release directory itself for an image (see [`render_oci`]).
fn render_unit(
    app: &AppName,
    version: &Version,
    spec: &AppSpec,
    root: &Path,
    environment_file: &Path,
    image: Option<&ImageRun>,
) -> Result<String, UnitError> {
    let unit = unit_name(app);
    let service = &spec.service;
    let root = root
        .to_str()
        .filter(|text| root.is_absolute() && !text.chars().any(char::is_control))
        .map(|text| text.trim_end_matches('/'))
        .filter(|text| !text.is_empty())
        .ok_or_else(|| UnitError::CurrentPath {
            unit: unit.clone(),
            path: root.to_path_buf(),
        })?;

    let mut settings = Settings::default();
    settings.push("Type", "exec".to_owned());
    let dynamic_user;
    match image {
        None => {
            let command = service
                .command
                .as_ref()
                .ok_or_else(|| UnitError::NoCommand { unit: unit.clone() })?;
            settings.push("ExecStart", exec_start(&unit, command.argv(), root)?);
            settings.push(
                "WorkingDirectory",
                working_directory(root, service.working_directory.as_ref().map(|dir| dir.as_str())),
            );
            match &service.user {
                Some(user) => settings.push("User", user.to_string()),
                None => settings.push("DynamicUser", "yes".to_owned()),
            }
            if let Some(group) = &service.group {
                settings.push("Group", group.to_string());
            }
            dynamic_user = service.user.is_none();
        }
        Some(image) => {
            settings.push("RootDirectory", verbatim_path(&format!("{root}/rootfs")));
            settings.push("MountAPIVFS", "yes".to_owned());
            settings.push("BindReadOnlyPaths", "/etc/resolv.conf".to_owned());
            if !image.exec.first().is_some_and(|program| program.starts_with('/')) {
                return Err(UnitError::Program {
                    unit,
                    program: image.exec.first().cloned().unwrap_or_default(),
                });
            }
            settings.push("ExecStart", exec_start(&unit, &image.exec, root)?);
            // Staging applied the spec's `working_directory` (and created the directory).
            settings.push("WorkingDirectory", verbatim_path(&image.working_directory));
            match &image.user {
                RunAs::Dynamic => {
                    settings.push("DynamicUser", "yes".to_owned());
                    dynamic_user = true;
                }
                RunAs::Ids { uid, gid, .. } => {
                    settings.push("User", uid.to_string());
                    settings.push("Group", gid.to_string());
                    dynamic_user = false;
                }
            }
        }
    }
    // The values live in a 0600 file of their own (see `render_environment`), never here.
    settings.push("EnvironmentFile", environment_file_setting(&unit, environment_file)?);
    let restart = match service.restart {
        RestartMode::Always => "always",
        RestartMode::OnFailure => "on-failure",
        RestartMode::No => "no",
    };
    settings.push("Restart", restart.to_owned());
    settings.push("RestartSec", "1".to_owned());
    // systemd reads `TimeoutStopSec=0` as "wait forever", the opposite of a zero timeout.
    settings.push("TimeoutStopSec", timespan(service.stop_timeout.as_millis().max(1)));

    let resources = &spec.resources;
    let zero = |setting| UnitError::ZeroLimit {
        unit: unit.clone(),
        setting,
    };
    if let Some(memory) = resources.memory_max {
        if memory.bytes() == 0 {
            return Err(zero("MemoryMax"));
        }
        settings.push("MemoryMax", memory.bytes().to_string());
    }
    if let Some(percent) = resources.cpu_quota_percent {
        if percent == 0 {
            return Err(zero("CPUQuota"));
        }
        settings.push("CPUQuota", format!("{percent}%"));
    }
    if let Some(tasks) = resources.tasks_max {
        if tasks == 0 {
            return Err(zero("TasksMax"));
        }
        settings.push("TasksMax", tasks.to_string());
    }

    let sandbox = &spec.sandbox;
    let no_new_privileges = !sandbox.allow_setuid;
    if image.is_some() {
        // An image runs confined whatever the level: its own /tmp, no privilege gain.
        settings.push_once("PrivateTmp", "yes");
        if no_new_privileges {
            settings.push_once("NoNewPrivileges", "yes");
        }
    }
    match sandbox.level {
        SandboxLevel::Strict => {
            settings.push("ProtectSystem", "strict".to_owned());
            for setting in [
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
            ] {
                settings.push_once(setting, "yes");
            }
            if no_new_privileges {
                settings.push_once("NoNewPrivileges", "yes");
                settings.push_once("RestrictSUIDSGID", "yes");
            }
        }
        SandboxLevel::Basic => {
            settings.push("ProtectSystem", "full".to_owned());
            settings.push_once("PrivateTmp", "yes");
            if no_new_privileges {
                settings.push_once("NoNewPrivileges", "yes");
            }
        }
        SandboxLevel::None => {}
    }
    // At level `none` nothing is read-only unless `DynamicUser=` made it so; the setting
    // would only give a service that manages the host a mount namespace of its own.
    if sandbox.level != SandboxLevel::None || dynamic_user {
        for path in &sandbox.read_write_paths {
            settings.push("ReadWritePaths", quote_word(path.as_str(), Dollar::Literal));
        }
    }
    // Bind paths are validated to need no quoting and hold no `%` (see `BindPath`).
    for bind in &sandbox.bind_paths {
        settings.push("BindPaths", bind.to_string());
    }
    for bind in &sandbox.bind_read_only_paths {
        settings.push("BindReadOnlyPaths", bind.to_string());
    }
    if image.is_some() {
        for file in &spec.config_files {
            let path = file.path.as_str();
            let bind = format!("{root}/{OCI_CONFIG_FILES_DIR}/{path}:/{path}");
            let bind: BindPath = bind.parse().map_err(|_| UnitError::ConfigFileBind {
                unit: unit.clone(),
                path: path.to_owned(),
                problem: "its path and the state directory's must be normalized and hold no spaces, quotes, '\\', '%' or ':'",
            })?;
            settings.push("BindReadOnlyPaths", bind.to_string());
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
    for (setting, value) in settings.0 {
        let length = setting.len() + 1 + value.len();
        if length > MAX_LINE {
            return Err(UnitError::LineTooLong { unit, setting, length });
        }
        let _ = writeln!(text, "{setting}={value}");
    }
    text.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    Ok(text)
}

/// The `[Service]` settings in order.
#[derive(Default)]
struct Settings(Vec<(&'static str, String)>);

impl Settings {
    fn push(&mut self, setting: &'static str, value: String) {
        self.0.push((setting, value));
    }

    /// Adds a setting that takes one value unless it is there already.
    fn push_once(&mut self, setting: &'static str, value: &str) {
        if !self.0.iter().any(|(existing, _)| *existing == setting) {
            self.0.push((setting, value.to_owned()));
        }
    }
}

/// `EnvironmentFile=`: an absolute UTF-8 path without control characters or surrounding
/// whitespace (systemd takes the value verbatim after specifiers and trims the line), `%`
/// doubled.
fn environment_file_setting(unit: &str, path: &Path) -> Result<String, UnitError> {
    path.to_str()
        .filter(|text| {
            path.is_absolute() && !text.chars().any(char::is_control) && text.trim() == *text && !text.ends_with('/')
        })
        .map(|text| text.replace('%', "%%"))
        .ok_or_else(|| UnitError::EnvironmentFile {
            unit: unit.to_owned(),
            path: path.to_path_buf(),
        })
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

/// `WorkingDirectory=` of a tarball release, inside it through `current`.
/// A duration the way a person (and `systemctl show`) writes it: `30s`, `1min 30s`,
/// `1h 5min`, `250ms`, `1s 500ms`. systemd reads each of these back exactly; `30000ms`
/// would work too but shows as such in `systemctl cat`.
fn timespan(milliseconds: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "min"),
        (1_000, "s"),
        (1, "ms"),
    ];
    let mut left = milliseconds;
    let mut parts = Vec::new();
    for (size, name) in UNITS {
        let count = left / size;
        left %= size;
        if count > 0 {
            parts.push(format!("{count}{name}"));
        }
    }
    if parts.is_empty() {
        return "0".to_owned();
    }
    parts.join(" ")
}

fn working_directory(current: &str, relative: Option<&str>) -> String {
    match relative {
        Some(relative) => verbatim_path(&format!("{current}/{relative}")),
        None => verbatim_path(current),
    }
}

/// A path for a setting systemd takes verbatim (after `%` specifiers) up to the end of the
/// line, with surrounding whitespace trimmed and a trailing `\` continuing the line
/// (`WorkingDirectory=`, `RootDirectory=`). A trailing `/`, which systemd drops, keeps both
/// from mattering.
fn verbatim_path(path: &str) -> String {
    let mut path = path.to_owned();
    if path.ends_with([' ', '\\']) {
        path.push('/');
    }
    path.replace('%', "%%")
}

/// Whether `value` can be passed in an environment at all: a C string cannot hold NUL.
/// Other control characters pass through the environment file as they are.
fn environment_value_ok(value: &str) -> bool {
    !value.contains('\0')
}

/// What `$` means where a word is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dollar {
    /// `ExecStart=` arguments, where systemd substitutes `$VAR`: written `$$`.
    Escape,
    /// Settings without variable substitution (paths).
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
    const ENVIRONMENT_FILE: &str = "/var/lib/drover/apps/web/environment";

    fn spec(json: &str) -> AppSpec {
        serde_json::from_str(json).expect("test spec parses")
    }

    fn render_json(json: &str) -> Result<String, UnitError> {
        let app: AppName = "web".parse().expect("app name");
        let version: Version = "1.2.3".parse().expect("version");
        render(
            &app,
            &version,
            &spec(json),
            Path::new(CURRENT),
            Path::new(ENVIRONMENT_FILE),
        )
    }

    /// The environment file's variable lines for `json` (and `image`).
    fn environment_lines(json: &str, image: Option<&ImageRun>) -> Vec<String> {
        let text = render_environment(&"web".parse().expect("app name"), &spec(json), image).expect("renders");
        assert!(
            text.starts_with("# drover-web.service: written by drover-agent"),
            "{text}"
        );
        read_environment_file(&text)
            .into_iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect()
    }

    /// An environment file read back as systemd's `load_env_file` reads it (252 and
    /// earlier alike for what drover writes): `#` lines are comments, `NAME=` then a
    /// double-quoted value in which `\` escapes `"`, `\`, `$` and `` ` `` and anything
    /// else (newlines too) is taken as it is.
    fn read_environment_file(text: &str) -> Vec<(String, String)> {
        let mut variables = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '#' {
                while chars.next().is_some_and(|c| c != '\n') {}
                continue;
            }
            let mut name = String::from(c);
            for c in chars.by_ref() {
                if c == '=' {
                    break;
                }
                assert!(
                    c.is_ascii_alphanumeric() || c == '_',
                    "name character {c:?} in {text:?}"
                );
                name.push(c);
            }
            assert_eq!(chars.next(), Some('"'), "a quoted value for {name} in {text:?}");
            let mut value = String::new();
            loop {
                match chars.next().expect("the value ends") {
                    '"' => break,
                    '\\' => {
                        let escaped = chars.next().expect("an escaped character");
                        assert!(
                            matches!(escaped, '"' | '\\' | '$' | '`'),
                            "escape {escaped:?} in {text:?}"
                        );
                        value.push(escaped);
                    }
                    c => value.push(c),
                }
            }
            assert_eq!(chars.next(), Some('\n'), "one variable per line in {text:?}");
            variables.push((name, value));
        }
        variables
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
    fn stop_timeouts_are_written_the_way_a_person_would() {
        for (milliseconds, text) in [
            (1, "1ms"),
            (250, "250ms"),
            (1_000, "1s"),
            (1_500, "1s 500ms"),
            (30_000, "30s"),
            (90_000, "1min 30s"),
            (3_600_000, "1h"),
            (3_660_000, "1h 1min"),
            (90_061_001, "1d 1h 1min 1s 1ms"),
        ] {
            assert_eq!(timespan(milliseconds), text, "{milliseconds} ms");
        }
        let text = rendered(r#"{"service":{"command":["x"],"stop_timeout":"2m"}}"#);
        assert_eq!(values(&text, "TimeoutStopSec"), ["2min"]);
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
        assert_eq!(values(&text, "TimeoutStopSec"), ["30s"]);
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
        assert_eq!(values(&text, "TimeoutStopSec"), ["10s"]);
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
    fn environment_goes_to_a_file_of_its_own_not_into_the_unit() {
        let text = rendered(r#"{"service":{"command":["x"],"environment":{"TOKEN":"s3cret","PORT":"8080"}}}"#);
        assert!(
            values(&text, "Environment").is_empty(),
            "no value in the world-readable unit"
        );
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(values(&text, "EnvironmentFile"), [ENVIRONMENT_FILE]);
        assert_eq!(
            environment_lines(
                r#"{"service":{"command":["x"],"environment":{"TOKEN":"s3cret","PORT":"8080"}}}"#,
                None
            ),
            ["PORT=8080", "TOKEN=s3cret"]
        );
        // An app without environment still names the file (the agent always writes it).
        let text = rendered(r#"{"service":{"command":["x"]}}"#);
        assert_eq!(values(&text, "EnvironmentFile"), [ENVIRONMENT_FILE]);
        assert!(environment_lines(r#"{"service":{"command":["x"]}}"#, None).is_empty());
    }

    #[test]
    fn environment_file_values_are_quoted_so_systemd_reads_them_back_exactly() {
        let json = r##"{"service":{"command":["x"],"environment":{"PLAIN":"8080","SPACE":" a b ","QUOTE":"say \"hi\"",
                "PCT":"50%","DOLLAR":"$HOME ${X}","TICK":"`id`","MULTI":"one\ntwo\tthree\r","EMPTY":"","BACK":"c:\\dir\\",
                "HASH":"#not a comment","CC":"a\u001bb\u0085d","SINGLE":"it's"}}}"##;
        let text = render_environment(&"web".parse().expect("app name"), &spec(json), None).expect("renders");
        assert_eq!(
            read_environment_file(&text),
            spec(json)
                .service
                .environment
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.clone()))
                .collect::<Vec<_>>(),
            "{text}"
        );
        assert!(text.contains("BACK=\"c:\\\\dir\\\\\"\n"), "{text}");
        assert!(text.contains("DOLLAR=\"\\$HOME \\${X}\"\n"), "{text}");
        assert!(
            text.contains("PCT=\"50%\"\n"),
            "no specifiers in an environment file: {text}"
        );
    }

    #[test]
    fn environment_nul_is_refused() {
        match render_environment(
            &"web".parse().expect("app name"),
            &spec(r#"{"service":{"command":["x"],"environment":{"BAD":"a\u0000b"}}}"#),
            None,
        ) {
            Err(UnitError::Environment { name, unit }) => {
                assert_eq!((name.as_str(), unit.as_str()), ("BAD", "drover-web.service"));
            }
            other => panic!("a NUL byte must be refused, got {other:?}"),
        }
    }

    #[test]
    fn the_environment_file_path_must_be_absolute_and_plain() {
        let app: AppName = "web".parse().expect("app name");
        let version: Version = "1".parse().expect("version");
        let spec = spec(r#"{"service":{"command":["x"]}}"#);
        for bad in [
            "relative/environment",
            "/state/environment ",
            "/state/env\nExecStartPre=/bin/evil",
            "/state/",
        ] {
            assert!(
                matches!(
                    render(&app, &version, &spec, Path::new(CURRENT), Path::new(bad)),
                    Err(UnitError::EnvironmentFile { .. })
                ),
                "{bad:?} must be refused"
            );
        }
        let text = render(
            &app,
            &version,
            &spec,
            Path::new(CURRENT),
            Path::new("/srv/drover 100%/apps/web/environment"),
        )
        .expect("renders");
        assert_eq!(
            values(&text, "EnvironmentFile"),
            ["/srv/drover 100%%/apps/web/environment"]
        );
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
                    render(&app, &version, &spec, Path::new(current), Path::new(ENVIRONMENT_FILE)),
                    Err(UnitError::CurrentPath { .. })
                ),
                "{current:?} must be refused"
            );
        }
        let text = render(
            &app,
            &version,
            &spec,
            Path::new("/srv/drover 100%/apps/web/current/"),
            Path::new(ENVIRONMENT_FILE),
        )
        .expect("renders");
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

    #[test]
    fn a_tarball_release_needs_a_command() {
        assert!(matches!(
            render_json(r#"{"service":{"user":"web"}}"#),
            Err(UnitError::NoCommand { .. })
        ));
    }

    #[test]
    fn bind_paths_are_rendered_for_tarballs_too() {
        let text = rendered(
            r#"{"service":{"command":["x"]},"sandbox":{"bind_paths":["/srv/data:/data","/run/pg"],
                "bind_read_only_paths":["/etc/ssl/certs"]}}"#,
        );
        assert_eq!(values(&text, "BindPaths"), ["/srv/data:/data", "/run/pg"]);
        assert_eq!(values(&text, "BindReadOnlyPaths"), ["/etc/ssl/certs"]);
        assert!(values(&text, "RootDirectory").is_empty());
    }

    fn image_run(user: RunAs) -> ImageRun {
        ImageRun {
            exec: vec![
                "/usr/bin/server".into(),
                "--port".into(),
                "80$80".into(),
                "daemon off;".into(),
            ],
            environment: vec![
                ("PATH".into(), "/usr/local/bin:/usr/bin".into()),
                ("GREETING".into(), "hello world".into()),
                ("LEVEL".into(), "100%".into()),
            ],
            working_directory: "/srv/www".into(),
            user,
        }
    }

    fn app_user() -> RunAs {
        RunAs::Ids {
            uid: 1000,
            gid: 1001,
            home: "/home/app".into(),
        }
    }

    fn rendered_oci(json: &str, image: &ImageRun) -> String {
        render_oci_json(json, image).expect("renders")
    }

    fn render_oci_json(json: &str, image: &ImageRun) -> Result<String, UnitError> {
        let app: AppName = "web".parse().expect("app name");
        let version: Version = "2.0".parse().expect("version");
        render_oci(
            &app,
            &version,
            &spec(json),
            Path::new(CURRENT),
            Path::new(ENVIRONMENT_FILE),
            image,
        )
    }

    #[test]
    fn an_image_runs_in_its_rootfs_through_current() {
        let text = rendered_oci(r#"{"service":{}}"#, &image_run(app_user()));
        assert_eq!(values(&text, "RootDirectory"), [format!("{CURRENT}/rootfs")]);
        assert_eq!(values(&text, "MountAPIVFS"), ["yes"]);
        assert_eq!(values(&text, "BindReadOnlyPaths"), ["/etc/resolv.conf"]);
        assert_eq!(
            values(&text, "ExecStart"),
            [r#"/usr/bin/server --port 80$$80 "daemon off;""#],
            "the program is inside the rootfs, not under current"
        );
        assert_eq!(values(&text, "WorkingDirectory"), ["/srv/www"]);
        assert_eq!(values(&text, "User"), ["1000"]);
        assert_eq!(values(&text, "Group"), ["1001"]);
        assert!(values(&text, "DynamicUser").is_empty());
        assert!(values(&text, "Environment").is_empty());
        assert_eq!(values(&text, "EnvironmentFile"), [ENVIRONMENT_FILE]);
        assert_eq!(
            environment_lines(r#"{"service":{}}"#, Some(&image_run(app_user()))),
            [
                "PATH=/usr/local/bin:/usr/bin",
                "GREETING=hello world",
                "LEVEL=100%",
                "HOME=/home/app"
            ]
        );
        assert_eq!(values(&text, "Type"), ["exec"]);
        for setting in ["PrivateTmp", "NoNewPrivileges", "PrivateNetwork"] {
            let expected: &[&str] = if setting == "PrivateNetwork" { &[] } else { &["yes"] };
            assert_eq!(values(&text, setting), expected, "{setting} once, host networking");
        }
        assert_eq!(
            values(&text, "ProtectSystem"),
            ["strict"],
            "the sandbox level applies on top"
        );
    }

    #[test]
    fn the_spec_environment_wins_over_the_image() {
        assert_eq!(
            environment_lines(
                r#"{"service":{"environment":{"GREETING":"hi","HOME":"/data","NEW":"1"}}}"#,
                Some(&image_run(app_user()))
            ),
            [
                "PATH=/usr/local/bin:/usr/bin",
                "GREETING=hi",
                "LEVEL=100%",
                "HOME=/data",
                "NEW=1"
            ]
        );
    }

    #[test]
    fn an_image_without_a_user_runs_as_a_dynamic_user() {
        let text = rendered_oci(r#"{"service":{}}"#, &image_run(RunAs::Dynamic));
        assert_eq!(values(&text, "DynamicUser"), ["yes"]);
        assert!(values(&text, "User").is_empty() && values(&text, "Group").is_empty());
        assert!(
            !environment_lines(r#"{"service":{}}"#, Some(&image_run(RunAs::Dynamic)))
                .iter()
                .any(|line| line.starts_with("HOME="))
        );
        let text = rendered_oci(
            r#"{"service":{}}"#,
            &image_run(RunAs::Ids {
                uid: 0,
                gid: 0,
                home: "/root".into(),
            }),
        );
        assert_eq!((values(&text, "User"), values(&text, "Group")), (vec!["0"], vec!["0"]));
    }

    #[test]
    fn image_sandbox_levels_and_setuid() {
        let text = rendered_oci(
            r#"{"service":{},"sandbox":{"level":"none","read_write_paths":["/data"],
                "bind_paths":["/srv/web:/data"],"bind_read_only_paths":["/etc/ssl/certs"]}}"#,
            &image_run(app_user()),
        );
        assert_eq!(
            values(&text, "PrivateTmp"),
            ["yes"],
            "an image always gets its own /tmp"
        );
        assert_eq!(values(&text, "NoNewPrivileges"), ["yes"]);
        assert!(values(&text, "ProtectSystem").is_empty());
        assert!(
            values(&text, "ReadWritePaths").is_empty(),
            "level none with a fixed user"
        );
        assert_eq!(values(&text, "BindPaths"), ["/srv/web:/data"]);
        assert_eq!(
            values(&text, "BindReadOnlyPaths"),
            ["/etc/resolv.conf", "/etc/ssl/certs"]
        );
        let text = rendered_oci(
            r#"{"service":{},"sandbox":{"level":"basic","allow_setuid":true}}"#,
            &image_run(app_user()),
        );
        assert!(values(&text, "NoNewPrivileges").is_empty());
        assert_eq!(values(&text, "ProtectSystem"), ["full"]);
        assert_eq!(values(&text, "PrivateTmp"), ["yes"]);
    }

    #[test]
    fn image_config_files_are_bound_from_beside_the_rootfs() {
        let text = rendered_oci(
            r#"{"service":{},"config_files":[{"path":"etc/web/web.toml","content":"x"}]}"#,
            &image_run(app_user()),
        );
        assert_eq!(
            values(&text, "BindReadOnlyPaths"),
            [
                "/etc/resolv.conf".to_owned(),
                format!("{CURRENT}/files/etc/web/web.toml:/etc/web/web.toml")
            ]
        );
        for path in ["etc/my web.toml", "etc/a:b", "etc/100%"] {
            let json = format!(r#"{{"service":{{}},"config_files":[{{"path":"{path}","content":"x"}}]}}"#);
            assert!(
                matches!(
                    render_oci_json(&json, &image_run(app_user())),
                    Err(UnitError::ConfigFileBind { .. })
                ),
                "{path} cannot be bound"
            );
        }
    }

    #[test]
    fn image_programs_must_be_absolute_and_normalized() {
        for program in ["server", "/usr/../bin/sh", ""] {
            let mut image = image_run(app_user());
            image.exec = vec![program.into()];
            assert!(
                matches!(
                    render_oci_json(r#"{"service":{}}"#, &image),
                    Err(UnitError::Program { .. })
                ),
                "{program:?} must be refused"
            );
        }
        let mut image = image_run(app_user());
        image.exec = vec![];
        assert!(render_oci_json(r#"{"service":{}}"#, &image).is_err());
    }

    #[test]
    fn image_paths_survive_spaces_and_percent() {
        let mut image = image_run(app_user());
        image.working_directory = "/srv/my 100% dir ".into();
        let app: AppName = "web".parse().expect("app name");
        let version: Version = "2.0".parse().expect("version");
        let text = render_oci(
            &app,
            &version,
            &spec(r#"{"service":{}}"#),
            Path::new("/srv/drover 100%/apps/web/current"),
            Path::new(ENVIRONMENT_FILE),
            &image,
        )
        .expect("renders");
        assert_eq!(
            values(&text, "RootDirectory"),
            ["/srv/drover 100%%/apps/web/current/rootfs"]
        );
        assert_eq!(values(&text, "WorkingDirectory"), ["/srv/my 100%% dir /"]);
    }
}
