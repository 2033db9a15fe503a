//! Two directory trees compared as a container would see them: every path's type, mode
//! (setuid, setgid and sticky included), owner, symlink target and content digest, and
//! which regular files are hard links of one another. Used to hold the agent's root
//! filesystems against `umoci unpack`'s for the same image (SPEC.md §7). Self-contained
//! (std and `ring`) so any test can compare any two root filesystems.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

/// What a path is, with what makes two of them the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory (its entries are nodes of their own).
    Directory,
    /// A regular file.
    File {
        /// The hex sha256 of its content.
        sha256: String,
    },
    /// A symbolic link.
    Symlink {
        /// Its target, verbatim (not resolved).
        target: PathBuf,
    },
    /// A device node, fifo or socket.
    Special {
        /// Which, with its device number.
        file_type: String,
    },
}

/// One path: its kind, permission bits (setuid, setgid and sticky included) and owner.
/// Modification times are not compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// What it is.
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl fmt::Display for Node {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Directory => "directory".to_owned(),
            Kind::File { sha256 } => format!("file sha256:{}", &sha256[..12]),
            Kind::Symlink { target } => format!("symlink -> {}", target.display()),
            Kind::Special { file_type } => file_type.clone(),
        };
        write!(formatter, "{kind} {:04o} {}:{}", self.mode, self.uid, self.gid)
    }
}

/// Every path under a root (the root itself as `.`), and which regular files are hard
/// links of one another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    /// Each path relative to the root (`./etc/passwd`), the root itself as `.`.
    pub nodes: BTreeMap<PathBuf, Node>,
    /// Groups of two or more paths sharing one inode, each sorted.
    pub hardlink_groups: BTreeSet<Vec<PathBuf>>,
}

/// Reads the tree under `root` without following symlinks. Panics on I/O errors.
pub fn scan(root: &Path) -> Tree {
    let mut tree = Tree::default();
    let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    let mut pending = vec![PathBuf::from(".")];
    while let Some(relative) = pending.pop() {
        let full = root.join(&relative);
        let metadata = fs::symlink_metadata(&full).unwrap_or_else(|error| panic!("{}: {error}", full.display()));
        let file_type = metadata.file_type();
        let kind = if file_type.is_dir() {
            for entry in fs::read_dir(&full).unwrap_or_else(|error| panic!("{}: {error}", full.display())) {
                pending.push(relative.join(entry.expect("directory entry").file_name()));
            }
            Kind::Directory
        } else if file_type.is_symlink() {
            Kind::Symlink {
                target: fs::read_link(&full).expect("read symlink"),
            }
        } else if file_type.is_file() {
            inodes
                .entry((metadata.dev(), metadata.ino()))
                .or_default()
                .push(relative.clone());
            Kind::File {
                sha256: sha256_file(&full),
            }
        } else {
            let name = if file_type.is_char_device() {
                "character device"
            } else if file_type.is_block_device() {
                "block device"
            } else if file_type.is_fifo() {
                "fifo"
            } else {
                "socket"
            };
            Kind::Special {
                file_type: format!("{name} {:x}", metadata.rdev()),
            }
        };
        let node = Node {
            kind,
            mode: metadata.mode() & 0o7777,
            uid: metadata.uid(),
            gid: metadata.gid(),
        };
        tree.nodes.insert(relative, node);
    }
    tree.hardlink_groups = inodes
        .into_values()
        .filter(|paths| paths.len() > 1)
        .map(|mut paths| {
            paths.sort();
            paths
        })
        .collect();
    tree
}

fn sha256_file(path: &Path) -> String {
    let mut file = fs::File::open(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0; 64 << 10];
    loop {
        let count = file.read(&mut buffer).expect("read file");
        if count == 0 {
            break;
        }
        context.update(&buffer[..count]);
    }
    context
        .finish()
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Every way `actual` differs from `expected`, one line each; empty when they match.
pub fn differences(expected: &Tree, actual: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (path, want) in &expected.nodes {
        match actual.nodes.get(path) {
            None => out.push(format!("{}: missing (expected {want})", path.display())),
            Some(got) if got != want => out.push(format!("{}: {got}, expected {want}", path.display())),
            Some(_) => {}
        }
    }
    for (path, got) in &actual.nodes {
        if !expected.nodes.contains_key(path) {
            out.push(format!("{}: unexpected {got}", path.display()));
        }
    }
    for group in expected.hardlink_groups.difference(&actual.hardlink_groups) {
        out.push(format!("hard links {group:?}: not one inode"));
    }
    for group in actual.hardlink_groups.difference(&expected.hardlink_groups) {
        out.push(format!("hard links {group:?}: unexpectedly one inode"));
    }
    out
}

/// Panics, listing every difference, unless the trees under the two roots match.
pub fn assert_same(expected_root: &Path, actual_root: &Path) {
    let problems = differences(&scan(expected_root), &scan(actual_root));
    assert!(
        problems.is_empty(),
        "{} differs from {}:\n  {}",
        actual_root.display(),
        expected_root.display(),
        problems.join("\n  ")
    );
}

/// Like [`differences`], except that `actual` must also hold each path of `additions`,
/// exactly as given and absent from `expected`: what a client adds to an image on
/// purpose (mount points, say) is listed path by path, so nothing else can slip through.
/// A listed addition that is missing, different, or in `expected` too is a difference.
pub fn differences_with_additions(expected: &Tree, actual: &Tree, additions: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = actual.clone();
    for (path, want) in additions {
        if let Some(there) = expected.nodes.get(path) {
            out.push(format!(
                "{}: listed as an addition, but the expected tree has it already ({there})",
                path.display()
            ));
        }
        match rest.nodes.remove(path) {
            None => out.push(format!("{}: addition missing (expected {want})", path.display())),
            Some(got) if &got != want => out.push(format!("{}: addition is {got}, expected {want}", path.display())),
            Some(_) => {}
        }
    }
    out.extend(differences(expected, &rest));
    out
}
