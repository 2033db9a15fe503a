//! The documentation that ships with the project is checked like code (issue 14): a reader
//! who follows a link lands on a file of this repository, and every example spec or agent
//! config in the docs is one the real parsers and validators accept, so a change to the
//! spec's fields breaks this test instead of the next operator's first release.
//!
//! Which files: README.md, ARCHITECTURE.md, BENCHMARKS.md, FUZZING.md, packaging/README.md
//! and every `docs/*.md` ([`documents`]).
//!
//! Every ```` ```toml ```` block in them must say on its first line what it is (a block
//! without a marker fails the test, so no example goes unchecked):
//!
//! | first line | checked as |
//! |---|---|
//! | `# drover.toml` | a whole app spec of a tarball release: `drover release create`'s own parser ([`read_spec`]) and [`AppSpec::check`] |
//! | `# drover.toml for an image` | the same, for an OCI image release (`service.command` may be left out) |
//! | `# drover.toml excerpt` | a part of a spec: completed with `[service] command = ["bin/app"]` when it has no `[service]` table, then as above |
//! | `# /etc/drover/agent.toml` | the agent's config: `drover_agent::config::load`, as `drover-agent check` runs it; the secret and CA files it names are made (0600) in a scratch directory first |
//!
//! And the README's example spec runs, exactly as written, on a fresh real systemd host
//! (needs root, `systemd-nspawn` and `dist/drover-agent_*.deb` like the `*_hosts` tests).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use drover_agent::config::{Overrides, load};
use drover_coordinator::cli::ops::read_spec;
use drover_protocol::spec::ArtifactKind;

/// The repository's root (this crate is `tests/`).
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Markdown files a reader of the repository meets, relative to its root.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [
        "README.md",
        "ARCHITECTURE.md",
        "BENCHMARKS.md",
        "FUZZING.md",
        "packaging/README.md",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .map(|path| path.strip_prefix(root).expect("under the root").to_path_buf())
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "docs/ holds no Markdown file");
    files.extend(docs);
    files
}

/// One fenced code block: its info string, first line number (1-based) and text.
struct CodeBlock {
    info: String,
    line: usize,
    text: String,
}

/// Splits Markdown into prose (code blocks blanked, line numbers kept) and fenced blocks.
fn split_markdown(text: &str) -> (Vec<String>, Vec<CodeBlock>) {
    let mut prose = Vec::new();
    let mut blocks = Vec::new();
    let mut open: Option<(String, CodeBlock)> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                let fence: String = trimmed.chars().take_while(|&c| c == '`' || c == '~').collect();
                if fence.len() >= 3 && fence.chars().all(|c| c == fence.chars().next().unwrap_or('`')) {
                    let info = trimmed[fence.len()..].trim().to_owned();
                    open = Some((
                        fence,
                        CodeBlock {
                            info,
                            line: index + 2,
                            text: String::new(),
                        },
                    ));
                    prose.push(String::new());
                } else {
                    prose.push(line.to_owned());
                }
            }
            Some((fence, block)) => {
                if trimmed.starts_with(fence.as_str()) && trimmed.trim_start_matches(fence.as_str()).trim().is_empty() {
                    let (_, block) = open.take().expect("open block");
                    blocks.push(block);
                } else {
                    block.text.push_str(line);
                    block.text.push('\n');
                }
                prose.push(String::new());
            }
        }
    }
    if let Some((_, block)) = open {
        blocks.push(block);
    }
    (prose, blocks)
}

/// A line with its inline code spans removed (a link inside backticks is not a link).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
        let after = &rest[start + ticks..];
        match after.find(&"`".repeat(ticks)) {
            Some(end) => rest = &after[end + ticks..],
            None => {
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Every link target of a Markdown text, with its line: inline `[text](target)` and
/// reference definitions `[name]: target`.
fn links(prose: &[String]) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (index, line) in prose.iter().enumerate() {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let mut depth = 0usize;
            let mut end = after.len();
            for (at, c) in after.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' if depth == 0 => {
                        end = at;
                        break;
                    }
                    ')' => depth -= 1,
                    _ => {}
                }
            }
            let target = after[..end].split_whitespace().next().unwrap_or("");
            let target = target.trim_start_matches('<').trim_end_matches('>');
            found.push((index + 1, target.to_owned()));
            rest = &after[end.min(after.len())..];
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with('[')
            && let Some((label, target)) = trimmed.split_once("]:")
            && !label.contains(']')
        {
            let target = target.split_whitespace().next().unwrap_or("");
            found.push((index + 1, target.to_owned()));
        }
    }
    found
}

/// GitHub's anchor of a heading: lower case, spaces to `-`, punctuation other than `-`
/// and `_` dropped; a repeated heading gets `-1`, `-2`, ...
fn anchors(prose: &[String]) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = Vec::new();
    for line in prose {
        let trimmed = line.trim_start();
        let hashes = trimmed.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !trimmed[hashes..].starts_with(' ') {
            continue;
        }
        let title = trimmed[hashes..].trim().trim_end_matches('#').trim();
        let slug: String = title
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
                _ => None,
            })
            .flat_map(char::to_lowercase)
            .collect();
        let count = seen.entry(slug.clone()).or_insert(0);
        anchors.push(if *count == 0 {
            slug.clone()
        } else {
            format!("{slug}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// `path` relative to `base` (a directory inside `root`), normalized; `None` when it
/// leaves the repository.
fn resolve(root: &Path, base: &Path, path: &str) -> Option<PathBuf> {
    let mut parts: Vec<Component<'_>> = base.components().collect();
    for component in Path::new(path).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(_) => parts.push(component),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(root.join(parts.iter().collect::<PathBuf>()))
}

/// What is wrong with the links of `file` (relative to `root`), one line each.
fn broken_links(root: &Path, file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(root.join(file)).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
    let (prose, _) = split_markdown(&text);
    let own_anchors = anchors(&prose);
    let base = file.parent().unwrap_or(Path::new(""));
    let mut problems = Vec::new();
    for (line, target) in links(&prose) {
        let at = format!("{}:{line}: link {target:?}", file.display());
        if target.is_empty() {
            problems.push(format!("{at} is empty"));
            continue;
        }
        if target.starts_with("https://") || target.starts_with("http://") || target.starts_with("mailto:") {
            continue;
        }
        if target.contains("://") || target.starts_with('/') {
            problems.push(format!(
                "{at} is not a relative link into the repository (write it relative to {})",
                file.display()
            ));
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (target.as_str(), None),
        };
        let heading_anchors = if path.is_empty() {
            own_anchors.clone()
        } else {
            let Some(resolved) = resolve(root, base, path) else {
                problems.push(format!(
                    "{at} leaves the repository: a clone has no such file; bring what it says into docs/"
                ));
                continue;
            };
            if !resolved.exists() {
                problems.push(format!("{at}: {} does not exist in the repository", resolved.display()));
                continue;
            }
            if anchor.is_none() || resolved.extension().is_none_or(|ext| ext != "md") {
                continue;
            }
            let linked = std::fs::read_to_string(&resolved).unwrap_or_default();
            anchors(&split_markdown(&linked).0)
        };
        if let Some(anchor) = anchor
            && !heading_anchors.iter().any(|known| known == anchor)
        {
            problems.push(format!("{at}: no heading with the anchor #{anchor} there"));
        }
    }
    problems
}

#[test]
fn every_link_in_the_docs_resolves_inside_the_repository() {
    let root = repository();
    let mut problems = Vec::new();
    for file in documents(&root) {
        problems.extend(broken_links(&root, &file));
    }
    assert!(
        problems.is_empty(),
        "broken links in the docs:\n{}",
        problems.join("\n")
    );
}

/// What a ```` ```toml ```` block of the docs is, from its first line.
#[derive(Debug, PartialEq, Eq)]
enum TomlExample {
    Spec(ArtifactKind),
    SpecExcerpt,
    AgentConfig,
}

fn toml_example(block: &CodeBlock) -> Option<TomlExample> {
    let first = block.text.lines().next().unwrap_or("").trim();
    if first.starts_with("# drover.toml excerpt") {
        Some(TomlExample::SpecExcerpt)
    } else if first.starts_with("# drover.toml for an image") {
        Some(TomlExample::Spec(ArtifactKind::Image))
    } else if first.starts_with("# drover.toml") {
        Some(TomlExample::Spec(ArtifactKind::Tarball))
    } else if first.starts_with("# /etc/drover/agent.toml") {
        Some(TomlExample::AgentConfig)
    } else {
        None
    }
}

/// Every ```` ```toml ```` block of the docs, with where it is (`file:line`).
fn toml_blocks(root: &Path) -> Vec<(String, CodeBlock)> {
    let mut found = Vec::new();
    for file in documents(root) {
        let text = std::fs::read_to_string(root.join(&file)).expect("readable doc");
        for block in split_markdown(&text).1 {
            if block.info.split_whitespace().next() == Some("toml") {
                found.push((format!("{}:{}", file.display(), block.line), block));
            }
        }
    }
    found
}

/// Why the spec example `text` is refused (`None`: accepted), through the path
/// `drover release create` takes: its TOML parser, then the check coordinator and agents share.
fn spec_problem(scratch: &Path, text: &str, kind: ArtifactKind) -> Option<String> {
    let path = scratch.join("drover.toml");
    std::fs::write(&path, text).expect("scratch spec");
    match read_spec(&path) {
        Err(error) => Some(error.to_string()),
        Ok(spec) => spec.check(kind).err().map(|error| error.to_string()),
    }
}

#[test]
fn every_example_spec_in_the_docs_is_valid() {
    let root = repository();
    let scratch = tempfile::tempdir().expect("scratch dir");
    let mut problems = Vec::new();
    let mut checked = 0;
    for (at, block) in toml_blocks(&root) {
        let (text, kind) = match toml_example(&block) {
            None => {
                problems.push(format!(
                    "{at}: a ```toml block must start with `# drover.toml`, `# drover.toml for an image`, `# drover.toml excerpt` or `# /etc/drover/agent.toml` so that tests/tests/docs.rs checks it"
                ));
                continue;
            }
            Some(TomlExample::AgentConfig) => continue,
            Some(TomlExample::Spec(kind)) => (block.text.clone(), kind),
            Some(TomlExample::SpecExcerpt) => {
                let has_service = block.text.lines().any(|line| line.trim() == "[service]");
                let text = match has_service {
                    true => block.text.clone(),
                    false => format!("{}\n[service]\ncommand = [\"bin/app\"]\n", block.text),
                };
                (text, ArtifactKind::Tarball)
            }
        };
        checked += 1;
        if let Some(problem) = spec_problem(scratch.path(), &text, kind) {
            problems.push(format!("{at}: {problem}"));
        }
    }
    assert!(
        problems.is_empty(),
        "example specs in the docs that drover refuses:\n{}",
        problems.join("\n")
    );
    assert!(
        checked >= 5,
        "only {checked} example specs found: the markers of docs/spec.md changed?"
    );
}

/// The agent config example `text` with every `password_file`, `token_file` and `ca_file`
/// moved under `scratch`, where they are made (mode 0600, a CA file with a PEM header):
/// the validator checks that they exist and are private, which the docs' paths on this
/// machine are not.
fn agent_config_in(scratch: &Path, text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        let quoted = line.split('"').nth(1).filter(|path| path.starts_with('/'));
        match (key, quoted) {
            ("password_file" | "token_file" | "ca_file", Some(path)) => {
                let moved = scratch.join(path.trim_start_matches('/'));
                std::fs::create_dir_all(moved.parent().expect("a parent")).expect("scratch parent");
                std::fs::write(&moved, "-----BEGIN CERTIFICATE-----\n").expect("scratch secret");
                std::fs::set_permissions(&moved, std::fs::Permissions::from_mode(0o600)).expect("chmod");
                out.push_str(&line.replacen(path, &moved.display().to_string(), 1));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[test]
fn every_example_agent_config_in_the_docs_is_valid() {
    let root = repository();
    let scratch = tempfile::tempdir().expect("scratch dir");
    let mut problems = Vec::new();
    let mut checked = 0;
    for (at, block) in toml_blocks(&root) {
        if toml_example(&block) != Some(TomlExample::AgentConfig) {
            continue;
        }
        checked += 1;
        let path = scratch.path().join("agent.toml");
        std::fs::write(&path, agent_config_in(scratch.path(), &block.text)).expect("scratch config");
        if let Err(errors) = load(&path, true, &Overrides::default(), "docs-example") {
            problems.push(format!("{at}: {}", errors.problems.join("; ")));
        }
    }
    assert!(
        problems.is_empty(),
        "example agent configs in the docs that drover-agent refuses:\n{}",
        problems.join("\n")
    );
    assert!(
        checked >= 2,
        "only {checked} example agent configs found: the markers of docs/agent-config.md changed?"
    );
}

/// The checks themselves, on text made to be wrong: each must be caught.
#[test]
fn the_docs_checks_catch_broken_links_anchors_and_specs() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let root = scratch.path();
    std::fs::create_dir_all(root.join("docs")).expect("docs");
    std::fs::write(root.join("docs/a.md"), "# Title\n\n## Moving keys\n").expect("a.md");
    std::fs::write(
        root.join("docs/b.md"),
        "see [a](a.md#moving-keys), [up](../docs/a.md), [own](#here)\n\n# Here\n\
         `[not a link](nowhere.md)`\n```\n[nor this](nowhere.md)\n```\n",
    )
    .expect("b.md");
    assert_eq!(broken_links(root, Path::new("docs/b.md")), Vec::<String>::new());
    std::fs::write(
        root.join("docs/c.md"),
        "[x](../../shared/SPEC.md) [y](missing.md) [z](a.md#no-such) [w](/etc/passwd)\n",
    )
    .expect("c.md");
    let problems = broken_links(root, Path::new("docs/c.md"));
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems[0].contains("leaves the repository"), "{}", problems[0]);
    assert!(problems[1].contains("does not exist"), "{}", problems[1]);
    assert!(problems[2].contains("#no-such"), "{}", problems[2]);
    assert!(problems[3].contains("not a relative link"), "{}", problems[3]);

    let bad_field = "[service]\ncommand = [\"bin/web\"]\nusr = \"web\"\n";
    assert!(spec_problem(root, bad_field, ArtifactKind::Tarball).is_some_and(|p| p.contains("usr")));
    let no_command = "[service]\nuser = \"web\"\n";
    assert!(spec_problem(root, no_command, ArtifactKind::Tarball).is_some());
    assert_eq!(spec_problem(root, no_command, ArtifactKind::Image), None);
    let good = "[service]\ncommand = [\"bin/web\"]\n";
    assert_eq!(spec_problem(root, good, ArtifactKind::Tarball), None);
}

/// The README's example spec, exactly as written, on a fresh real systemd host with the
/// agent from its .deb (issue 14: it said `user = "web"`, and on a host without that user
/// the release failed with `job Failed`). Its `bin/web` is the sample app behind a
/// wrapper that takes the README's `--port 8080`. The host shares the machine's network,
/// so port 8080 must be free here.
#[test]
fn the_readme_example_spec_runs_as_written_on_a_fresh_host() {
    use drover_tests::e2e::{AgentHost, CoordinatorProcess};
    use drover_tests::hosts::HostOptions;

    let readme = std::fs::read_to_string(repository().join("README.md")).expect("README.md");
    let spec = split_markdown(&readme)
        .1
        .into_iter()
        .find(|block| block.info == "toml" && toml_example(block) == Some(TomlExample::Spec(ArtifactKind::Tarball)))
        .expect("README.md has a ```toml block starting with `# drover.toml`")
        .text;
    assert!(
        spec.contains(r#"command = ["bin/web", "--port", "8080"]"#) && spec.contains("http://127.0.0.1:8080/healthz"),
        "this test runs an app as `bin/web --port 8080` checked on 127.0.0.1:8080; change it with the README:\n{spec}"
    );
    if let Err(error) = std::net::TcpListener::bind(("127.0.0.1", 8080)) {
        panic!(
            "port 8080 on this machine is taken ({error}); the README's app listens there on a host sharing its network"
        );
    }

    let scratch = tempfile::tempdir().expect("scratch dir");
    let tree = scratch.path().join("tree");
    std::fs::create_dir_all(tree.join("bin")).expect("bin/");
    std::fs::copy(
        drover_tests::binary("drover-sample-app"),
        tree.join("bin/drover-sample-app"),
    )
    .expect("sample app");
    std::fs::write(
        tree.join("bin/web"),
        "#!/bin/sh\n# bin/web --port PORT: the sample app on 127.0.0.1:PORT\n[ \"$1\" = --port ] || exit 64\nexec \"$(dirname \"$0\")/drover-sample-app\" --listen \"127.0.0.1:$2\"\n",
    )
    .expect("bin/web");
    std::fs::set_permissions(tree.join("bin/web"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(tree.join("VERSION"), "1.0.0").expect("VERSION");
    let artifact = scratch.path().join("web-1.0.0.tar.gz");
    drover_tests::e2e::run_ok(
        std::process::Command::new("tar")
            .arg("-czf")
            .arg(&artifact)
            .arg("-C")
            .arg(&tree)
            .arg("."),
    )
    .expect("tar");
    let spec_path = scratch.path().join("drover.toml");
    std::fs::write(&spec_path, &spec).expect("drover.toml");

    let coordinator = CoordinatorProcess::start().expect("coordinator");
    coordinator
        .release_from("1.0.0", &spec_path, &artifact)
        .expect("release create");
    let host = AgentHost::start("e2e-readme", &coordinator, &HostOptions::default()).expect("agent host");
    assert!(
        host.host.exec(&["getent", "passwd", "web"]).stdout.is_empty(),
        "the host must be fresh: no user web"
    );
    coordinator.drover_ok(&["pin", "web", "1.0.0"]).expect("pin");
    if let Err(error) = host.wait_healthy("web", "1.0.0", std::time::Duration::from_secs(60)) {
        panic!(
            "the README's spec did not become healthy: {error}\nagent status: {:?}\n{}",
            host.app_status("web"),
            host.host.journal_lines(Some("drover-web.service"), 30)
        );
    }
    assert_eq!(AgentHost::get(8080, "/").as_deref(), Some("drover-sample-app 1.0.0"));
    assert_eq!(
        host.host
            .check(&[
                "systemctl",
                "show",
                "-p",
                "DynamicUser",
                "--value",
                "drover-web.service"
            ])
            .expect("systemctl show")
            .trim(),
        "yes",
        "no user in the spec: a dynamic user"
    );
}
