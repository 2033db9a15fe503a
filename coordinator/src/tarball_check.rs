//! Whether a release tarball holds the program its spec runs, checked when the release is
//! created rather than when its first host fails to start it (releases are immutable, so a
//! mistake found at deploy time costs a version). `drover release create --artifact FILE`
//! runs [`check_program`] on the local file before uploading it, and the server runs it on
//! the stored blob of every release made from an upload (`stored_tarball`), whichever
//! client sent it.
//!
//! The program is `service.command[0]`; a relative one is inside the release directory,
//! which is the archive's root (the agent runs `<state>/apps/<app>/current/<program>`).
//! It must be a regular file the app's user may execute, or a symlink (or hard link) inside
//! the archive to one. The archive is read as a stream (gzip, then tar headers; file data
//! is skipped, nothing is written), a pass stops at the entry that decides, and all passes
//! of one check together read at most [`MAX_SCAN_BYTES`] decompressed bytes and
//! [`MAX_SCAN_ENTRIES`] entries: past that the check is [`Checked::Inconclusive`], not a
//! refusal. Entry paths are read as the agent's unpacker reads them (`.` and empty parts
//! dropped, `..` never followed; the first entry for a path decides, as the agent refuses
//! duplicates).

use std::cell::Cell;
use std::io::{self, Read};

use drover_protocol::AppSpec;
use flate2::read::MultiGzDecoder;
use tar::EntryType;

/// Decompressed bytes one check reads at most, over all its passes.
pub const MAX_SCAN_BYTES: u64 = 4 << 30;
/// Archive entries one check reads at most, over all its passes (the agent unpacks at most
/// 100,000 by default).
pub const MAX_SCAN_ENTRIES: u64 = 100_000;
/// Symlinks and hard links followed from the program to a file.
pub const MAX_LINK_HOPS: usize = 8;

/// What a check found, when it found nothing wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checked {
    /// The program is an executable regular file in the archive, at this path (after links).
    Executable { path: String },
    /// The program is an absolute path on the host, not in the archive: nothing to check.
    OnHost,
    /// The check stopped at a limit before it could decide; the release is not refused.
    Inconclusive(String),
}

/// Why a tarball cannot run its spec's program: the release is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProgramProblem {
    /// No entry at the program's path.
    #[error(
        "the tarball has no {program}, the program [service] command runs (a path relative to the release root: the agent runs <state>/apps/<app>/current/{program}). `tar -tzf FILE` lists what it holds; its paths must start at the release root ({program} or ./{program}), not inside a top directory"
    )]
    Missing { program: String },
    /// The program resolves to a file the app's user may not execute.
    #[error(
        "{path} in the tarball is not executable by the app's user (mode {mode:04o}{via}): the files of a release belong to root, so {who}; run `chmod {fix} {path}` before packing"
    )]
    NotExecutable {
        path: String,
        mode: u32,
        via: String,
        who: &'static str,
        fix: &'static str,
    },
    /// The program resolves to something that is not a regular file.
    #[error("{path} in the tarball is {kind}{via}, not a program file")]
    NotAFile { path: String, kind: String, via: String },
    /// The program is a link (or under a symlinked directory) to a path the archive lacks.
    #[error("the tarball has no {path}, which {program} leads to (through {via})")]
    Dangling { program: String, path: String, via: String },
    /// A symlink on the way leaves the archive (the agent refuses those anyway).
    #[error("{link} in the tarball is a symlink to {target}, which leads out of the release; the agent refuses it")]
    LinkLeaves { link: String, target: String },
    /// More links than [`MAX_LINK_HOPS`].
    #[error("{program} in the tarball leads through more than {MAX_LINK_HOPS} symlinks or hard links")]
    TooManyLinks { program: String },
    /// Not a gzip-compressed tar archive, or a corrupt one.
    #[error("not a gzip-compressed tar archive the agent can unpack: {detail}")]
    NotATarball { detail: String },
    /// The archive could not be opened or read (a local I/O problem, not the archive's).
    #[error("reading it failed: {0}")]
    Io(String),
}

impl ProgramProblem {
    /// The API error code of the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            ProgramProblem::Missing { .. } | ProgramProblem::Dangling { .. } => "program_not_in_tarball",
            ProgramProblem::NotExecutable { .. }
            | ProgramProblem::NotAFile { .. }
            | ProgramProblem::LinkLeaves { .. }
            | ProgramProblem::TooManyLinks { .. } => "program_not_executable",
            ProgramProblem::NotATarball { .. } => "not_a_tarball",
            ProgramProblem::Io(_) => "artifact_unreadable",
        }
    }
}

/// Checks that the tarball `open` reads (it is opened once per pass) holds `spec`'s
/// program as a file its user may execute.
pub fn check_program<R: Read>(spec: &AppSpec, open: impl FnMut() -> io::Result<R>) -> Result<Checked, ProgramProblem> {
    check_within(spec, open, MAX_SCAN_BYTES, MAX_SCAN_ENTRIES)
}

/// [`check_program`] with the limits as arguments (the tests use small ones).
fn check_within<R: Read>(
    spec: &AppSpec,
    mut open: impl FnMut() -> io::Result<R>,
    max_bytes: u64,
    max_entries: u64,
) -> Result<Checked, ProgramProblem> {
    let Some(command) = &spec.service.command else {
        // A tarball without a command is refused by `AppSpec::check` before this runs.
        return Ok(Checked::OnHost);
    };
    let program = command.argv()[0].clone();
    if program.starts_with('/') {
        return Ok(Checked::OnHost);
    }
    let user = spec.service.user.as_ref().map(|user| user.as_str());
    let runs_as_root = matches!(user, Some("root" | "0"));
    let mut budget = Budget {
        bytes: Cell::new(max_bytes),
        entries: max_entries,
    };
    let mut wanted = components(program.as_bytes()).ok_or_else(|| ProgramProblem::Missing {
        program: program.clone(),
    })?;
    let mut via: Vec<String> = Vec::new();
    for _ in 0..=MAX_LINK_HOPS {
        let reader = open().map_err(|error| ProgramProblem::Io(error.to_string()))?;
        let path = join(&wanted);
        let via_text = if via.is_empty() {
            String::new()
        } else {
            format!(", reached from {}", via.join(" → "))
        };
        match find(reader, &wanted, &mut budget)? {
            Found::Limit(reason) => return Ok(Checked::Inconclusive(reason)),
            Found::Missing if via.is_empty() => return Err(ProgramProblem::Missing { program }),
            Found::Missing => {
                return Err(ProgramProblem::Dangling {
                    program,
                    path,
                    via: via.join(" → "),
                });
            }
            Found::File { mode } => {
                let needed = if runs_as_root { 0o111 } else { 0o001 };
                if mode & needed != 0 {
                    return Ok(Checked::Executable { path });
                }
                let who = match (runs_as_root, user) {
                    (true, _) => "a program run as root needs an execute bit",
                    (false, Some(_)) => "a program run as the spec's user needs the execute bit for others",
                    (false, None) => {
                        "a program run as a dynamic user (no [service] user) needs the execute bit for others"
                    }
                };
                return Err(ProgramProblem::NotExecutable {
                    path,
                    mode,
                    via: via_text,
                    who,
                    fix: if runs_as_root { "u+x" } else { "755" },
                });
            }
            Found::Other { kind } => {
                return Err(ProgramProblem::NotAFile {
                    path,
                    kind: kind.into(),
                    via: via_text,
                });
            }
            Found::Symlink { link, target, rest } => {
                let link_text = join(&link);
                let mut next = link[..link.len() - 1].to_vec();
                if target.first() == Some(&b'/') {
                    return Err(ProgramProblem::LinkLeaves {
                        link: link_text,
                        target: String::from_utf8_lossy(&target).into_owned(),
                    });
                }
                for part in target.split(|&byte| byte == b'/') {
                    match part {
                        b"" | b"." => {}
                        b".." => {
                            if next.pop().is_none() {
                                return Err(ProgramProblem::LinkLeaves {
                                    link: link_text,
                                    target: String::from_utf8_lossy(&target).into_owned(),
                                });
                            }
                        }
                        name => next.push(name.to_vec()),
                    }
                }
                next.extend(rest);
                via.push(link_text);
                wanted = next;
            }
            Found::HardLink { target } => {
                via.push(path);
                wanted = components(&target).ok_or_else(|| ProgramProblem::NotAFile {
                    path: join(&wanted),
                    kind: "a hard link out of the release".into(),
                    via: String::new(),
                })?;
            }
        }
    }
    Err(ProgramProblem::TooManyLinks { program })
}

/// The `user` and `group` of a tarball release that a fresh host may not have, as
/// warnings naming the field: the agent does not create accounts, and a unit whose user
/// does not exist fails to start (`status=217/USER`).
pub fn account_warnings(spec: &AppSpec) -> Vec<String> {
    const USERS: [&str; 5] = ["root", "daemon", "bin", "sys", "nobody"];
    const GROUPS: [&str; 9] = [
        "root", "daemon", "bin", "sys", "adm", "users", "nogroup", "nobody", "wheel",
    ];
    let numeric = |name: &str| name.bytes().all(|byte| byte.is_ascii_digit());
    let mut warnings = Vec::new();
    if let Some(user) = &spec.service.user
        && !USERS.contains(&user.as_str())
        && !numeric(user.as_str())
    {
        warnings.push(format!(
            "[service] user = {:?}: the agent does not create users, so this account must exist on every host the release goes to, or its unit fails to start (status=217/USER). Create it when you provision hosts, or leave `user` out to run as a dynamic user",
            user.as_str()
        ));
    }
    if let Some(group) = &spec.service.group
        && !GROUPS.contains(&group.as_str())
        && !numeric(group.as_str())
    {
        warnings.push(format!(
            "[service] group = {:?}: the agent does not create groups, so this group must exist on every host the release goes to, or its unit fails to start (status=216/GROUP)",
            group.as_str()
        ));
    }
    warnings
}

/// What is left of one check's limits.
struct Budget {
    bytes: Cell<u64>,
    entries: u64,
}

/// What one pass found at the wanted path.
enum Found {
    /// No entry for it.
    Missing,
    /// A regular file with this mode.
    File { mode: u32 },
    /// The symlink `link` (the path itself, or a directory on its way) points to `target`;
    /// `rest` is what of the wanted path lies below it.
    Symlink {
        link: Vec<Vec<u8>>,
        target: Vec<u8>,
        rest: Vec<Vec<u8>>,
    },
    /// A hard link to the archive path `target`.
    HardLink { target: Vec<u8> },
    /// Something else (a directory, a device).
    Other { kind: &'static str },
    /// A scan limit was reached first.
    Limit(String),
}

/// Counts decompressed bytes against the budget and stops at its end.
struct Metered<'a, R> {
    inner: R,
    left: &'a Cell<u64>,
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 {
            return Err(io::Error::other("the scan limit was reached"));
        }
        let most = buffer.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buffer[..most])?;
        self.left.set(left - read as u64);
        Ok(read)
    }
}

/// One pass over the archive for `wanted`.
fn find<R: Read>(reader: R, wanted: &[Vec<u8>], budget: &mut Budget) -> Result<Found, ProgramProblem> {
    let bytes_limit = || {
        Found::Limit(
            "read as much of the unpacked archive as the check may without finding the program; not checked".into(),
        )
    };
    let corrupt = |error: io::Error| ProgramProblem::NotATarball {
        detail: error.to_string(),
    };
    let mut archive = tar::Archive::new(Metered {
        inner: MultiGzDecoder::new(reader),
        left: &budget.bytes,
    });
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(error) => return Err(corrupt(error)),
    };
    let mut seen: u64 = 0;
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(_) if budget.bytes.get() == 0 => return Ok(bytes_limit()),
            Err(error) => return Err(corrupt(error)),
        };
        seen += 1;
        if seen > budget.entries {
            return Ok(Found::Limit(
                "read as many archive entries as the check may without finding the program; not checked".into(),
            ));
        }
        let header = entry.header();
        let entry_type = header.entry_type();
        if entry_type == EntryType::XGlobalHeader {
            continue;
        }
        let Some(path) = components(&entry.path_bytes()) else {
            continue;
        };
        if path.is_empty() || path.len() > wanted.len() || wanted[..path.len()] != path[..] {
            continue;
        }
        let exact = path.len() == wanted.len();
        let found = match entry_type {
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|name| name.into_owned())
                    .unwrap_or_default();
                Found::Symlink {
                    rest: wanted[path.len()..].to_vec(),
                    link: path,
                    target,
                }
            }
            // A directory on the way, or an entry at a path inside it: read on.
            _ if !exact => continue,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Found::File {
                mode: header.mode().map_err(corrupt)? & 0o7777,
            },
            EntryType::Link => Found::HardLink {
                target: entry
                    .link_name_bytes()
                    .map(|name| name.into_owned())
                    .unwrap_or_default(),
            },
            EntryType::Directory => Found::Other { kind: "a directory" },
            _ => Found::Other {
                kind: "a special file (device, fifo or other) the agent does not unpack",
            },
        };
        budget.entries -= seen;
        return Ok(found);
    }
    budget.entries -= seen.min(budget.entries);
    Ok(Found::Missing)
}

/// The parts of an archive path as the agent reads them: empty and `.` parts dropped;
/// `None` for a path with `..`, which the agent refuses.
fn components(raw: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut parts = Vec::new();
    for part in raw.split(|&byte| byte == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            name => parts.push(name.to_vec()),
        }
    }
    Some(parts)
}

fn join(parts: &[Vec<u8>]) -> String {
    let bytes: Vec<u8> = parts.join(&b'/');
    crate::text::printable(&String::from_utf8_lossy(&bytes))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// An archive entry for [`tarball`].
    enum Item<'a> {
        File(&'a str, u32),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
    }

    fn tarball(items: &[Item<'_>]) -> Vec<u8> {
        let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(encoder);
        for item in items {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            match *item {
                Item::File(path, mode) => {
                    header.set_entry_type(EntryType::Regular);
                    header.set_mode(mode);
                    header.set_size(3);
                    builder.append_data(&mut header, path, &b"#!x"[..]).expect("file");
                }
                Item::Dir(path) => {
                    header.set_entry_type(EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    builder.append_data(&mut header, path, io::empty()).expect("dir");
                }
                Item::Symlink(path, target) => {
                    header.set_entry_type(EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target).expect("symlink");
                }
                Item::HardLink(path, target) => {
                    header.set_entry_type(EntryType::Link);
                    header.set_mode(0o644);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target).expect("hard link");
                }
            }
        }
        builder.into_inner().expect("tar").finish().expect("gzip")
    }

    fn spec(program: &str, user: Option<&str>) -> AppSpec {
        let user = user.map_or_else(String::new, |user| format!("user = {user:?}\n"));
        toml::from_str(&format!("[service]\ncommand = [{program:?}, \"--flag\"]\n{user}")).expect("spec")
    }

    fn check(bytes: &[u8], program: &str, user: Option<&str>) -> Result<Checked, ProgramProblem> {
        check_program(&spec(program, user), || Ok(Cursor::new(bytes.to_vec())))
    }

    #[test]
    fn an_executable_program_is_found_with_or_without_a_dot_prefix() {
        let bytes = tarball(&[Item::Dir("./"), Item::Dir("./bin"), Item::File("./bin/web", 0o755)]);
        assert_eq!(
            check(&bytes, "bin/web", None),
            Ok(Checked::Executable { path: "bin/web".into() })
        );
        let bytes = tarball(&[Item::File("bin/web", 0o755)]);
        assert_eq!(
            check(&bytes, "bin/web", None),
            Ok(Checked::Executable { path: "bin/web".into() })
        );
        assert_eq!(check(&bytes, "/usr/bin/python3", None), Ok(Checked::OnHost));
    }

    #[test]
    fn a_missing_program_names_its_path() {
        let bytes = tarball(&[Item::File("web/bin/web", 0o755), Item::File("bin/other", 0o755)]);
        let problem = check(&bytes, "bin/web", None).expect_err("missing");
        assert_eq!(
            problem,
            ProgramProblem::Missing {
                program: "bin/web".into()
            }
        );
        assert!(problem.to_string().contains("the tarball has no bin/web"), "{problem}");
        assert_eq!(problem.code(), "program_not_in_tarball");
    }

    #[test]
    fn the_execute_bit_must_reach_the_apps_user() {
        let owner_only = tarball(&[Item::File("bin/web", 0o744)]);
        let problem = check(&owner_only, "bin/web", None).expect_err("dynamic user");
        assert!(
            problem
                .to_string()
                .starts_with("bin/web in the tarball is not executable by the app's user (mode 0744)"),
            "{problem}"
        );
        assert!(problem.to_string().contains("chmod 755 bin/web"), "{problem}");
        assert!(check(&owner_only, "bin/web", Some("web")).is_err());
        assert!(matches!(
            check(&owner_only, "bin/web", Some("root")),
            Ok(Checked::Executable { .. })
        ));
        let plain = tarball(&[Item::File("bin/web", 0o644)]);
        assert!(check(&plain, "bin/web", Some("root")).is_err());
    }

    #[test]
    fn symlinks_and_hard_links_inside_the_archive_are_followed() {
        // The program a symlink to a later entry, through a symlinked directory.
        let bytes = tarball(&[
            Item::Symlink("bin", "usr/bin"),
            Item::Symlink("usr/bin/web", "../lib/web/web-1.2"),
            Item::File("usr/lib/web/web-1.2", 0o755),
        ]);
        assert_eq!(
            check(&bytes, "bin/web", None),
            Ok(Checked::Executable {
                path: "usr/lib/web/web-1.2".into()
            })
        );
        let bytes = tarball(&[Item::File("lib/web", 0o755), Item::HardLink("bin/web", "lib/web")]);
        assert_eq!(
            check(&bytes, "bin/web", None),
            Ok(Checked::Executable { path: "lib/web".into() })
        );
        let leaves = tarball(&[Item::Symlink("bin/web", "../../usr/bin/web")]);
        assert!(matches!(
            check(&leaves, "bin/web", None),
            Err(ProgramProblem::LinkLeaves { .. })
        ));
        let absolute = tarball(&[Item::Symlink("bin/web", "/usr/bin/web")]);
        assert!(matches!(
            check(&absolute, "bin/web", None),
            Err(ProgramProblem::LinkLeaves { .. })
        ));
        let dangling = tarball(&[Item::Symlink("bin/web", "web-1.2")]);
        let problem = check(&dangling, "bin/web", None).expect_err("dangling");
        assert_eq!(
            problem.to_string(),
            "the tarball has no bin/web-1.2, which bin/web leads to (through bin/web)"
        );
        let looping = tarball(&[Item::Symlink("bin/web", "web2"), Item::Symlink("bin/web2", "web")]);
        assert!(matches!(
            check(&looping, "bin/web", None),
            Err(ProgramProblem::TooManyLinks { .. })
        ));
        let directory = tarball(&[Item::Dir("bin/web")]);
        assert!(matches!(
            check(&directory, "bin/web", None),
            Err(ProgramProblem::NotAFile { .. })
        ));
    }

    #[test]
    fn what_is_not_a_tarball_is_refused_as_such() {
        let problem = check(b"tarball v1", "bin/web", None).expect_err("not gzip");
        assert_eq!(problem.code(), "not_a_tarball");
        // Plain tar, not gzip-compressed: the agent does not unpack it either.
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o755);
        builder.append_data(&mut header, "bin/web", io::empty()).expect("entry");
        let plain = builder.into_inner().expect("tar");
        assert_eq!(
            check(&plain, "bin/web", None).map_err(|problem| problem.code()),
            Err("not_a_tarball")
        );
    }

    #[test]
    fn a_check_stopped_by_its_limits_is_inconclusive_not_a_refusal() {
        let entries: Vec<String> = (0..20).map(|index| format!("data/{index}")).collect();
        let mut items: Vec<Item<'_>> = entries.iter().map(|path| Item::File(path, 0o644)).collect();
        items.push(Item::File("bin/web", 0o755));
        let bytes = tarball(&items);
        let open = || Ok(Cursor::new(bytes.clone()));
        let spec = spec("bin/web", None);
        assert!(matches!(
            check_within(&spec, open, MAX_SCAN_BYTES, 10),
            Ok(Checked::Inconclusive(reason)) if reason.contains("entries")
        ));
        assert!(matches!(
            check_within(&spec, open, 4096, MAX_SCAN_ENTRIES),
            Ok(Checked::Inconclusive(reason)) if reason.contains("unpacked archive")
        ));
        assert!(matches!(
            check_within(&spec, open, MAX_SCAN_BYTES, 21),
            Ok(Checked::Executable { .. })
        ));
    }

    #[test]
    fn users_a_fresh_host_lacks_are_warned_about() {
        assert!(account_warnings(&spec("bin/web", None)).is_empty());
        assert!(account_warnings(&spec("bin/web", Some("nobody"))).is_empty());
        let warnings = account_warnings(&spec("bin/web", Some("web")));
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("[service] user = \"web\": the agent does not create users"),
            "{warnings:?}"
        );
    }
}
