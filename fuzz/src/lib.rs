//! What the fuzz targets share: fixed test keys and trust, the fixed clock, how one input
//! is split into several documents or layers, and the arena that checks an unpack wrote
//! nothing outside its directory.
//!
//! Every key here is a test key derived from a constant seed, so the committed seed corpus
//! (signed manifests and trust documents) verifies in every build; none is used anywhere
//! but in fuzzing.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use drover_protocol::trust::{RoleKeys, TRUST_SCHEMA};
use drover_protocol::{Envelope, HostId, SigningKey, Timestamp, Trust, TrustDocument};

/// The fuzzed hosts' clock: 2026-12-01T00:00:00Z. Time is an input of every decision
/// fuzzed here, never read from the machine.
pub const NOW_UNIX: i64 = 1_796_083_200;
/// How long the fixture trust is valid after [`NOW_UNIX`].
pub const TRUST_VALID_SECS: i64 = 365 * 24 * 3600;
/// The host the fixture manifests are for.
pub const HOST: &str = "web-01";
/// Separates the documents of a rotation chain, or the layers of an image, in one input.
/// Nothing in JSON or a tar header block needs it, and the dictionaries list it so the
/// fuzzer finds it.
pub const SEPARATOR: &[u8] = b"\n%%drover-next%%\n";
/// Most pieces one input is split into.
pub const MAX_PIECES: usize = 6;

/// The fixed clock as a timestamp.
pub fn now() -> Timestamp {
    Timestamp::from_unix(NOW_UNIX)
}

/// An ed25519 test key from a 32-byte seed, through the PKCS#8 v1 encoding that
/// `openssl genpkey` writes (a fixed prefix, then the seed).
pub fn test_key(seed_byte: u8) -> SigningKey {
    const PKCS8_V1_ED25519_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];
    let mut der = PKCS8_V1_ED25519_PREFIX.to_vec();
    der.extend_from_slice(&[seed_byte; 32]);
    SigningKey::from_pkcs8(&der).expect("a 32-byte seed is a valid ed25519 key")
}

/// The keys and trust every protocol target starts from.
#[derive(Debug)]
pub struct Fixture {
    /// Two root keys, threshold 1.
    pub roots: Vec<SigningKey>,
    /// Two manifest keys, threshold 1.
    pub manifest_keys: Vec<SigningKey>,
    /// Two keys no fixture trust lists, for rotations to move to.
    pub spare_keys: Vec<SigningKey>,
    /// The fixture trust document (version 1).
    pub document: TrustDocument,
    /// It signed by the first root key.
    pub trust_envelope: Vec<u8>,
    /// It verified.
    pub trust: Trust,
    /// The host manifests are accepted for.
    pub host: HostId,
}

impl Fixture {
    /// Every key of the fixture, for signing payloads the fuzzer wrote (so that it gets
    /// past signature checks and exercises what comes after them).
    pub fn all_keys(&self) -> Vec<&SigningKey> {
        self.roots
            .iter()
            .chain(&self.manifest_keys)
            .chain(&self.spare_keys)
            .collect()
    }

    /// A trust document listing these roots and manifest keys, one of each needed.
    pub fn document_with(&self, version: u64, roots: &[&SigningKey], manifest_keys: &[&SigningKey]) -> TrustDocument {
        let public = |keys: &[&SigningKey]| keys.iter().map(|key| key.public_key()).collect::<Vec<_>>();
        TrustDocument {
            schema: TRUST_SCHEMA,
            version,
            expires_at: Timestamp::from_unix(NOW_UNIX + TRUST_VALID_SECS),
            root: RoleKeys::of(&public(roots), 1),
            manifest: RoleKeys::of(&public(manifest_keys), 1),
        }
    }
}

/// The fixture, made once per process.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let roots = vec![test_key(1), test_key(2)];
        let manifest_keys = vec![test_key(3), test_key(4)];
        let spare_keys = vec![test_key(5), test_key(6)];
        let public = |keys: &[SigningKey]| keys.iter().map(SigningKey::public_key).collect::<Vec<_>>();
        let document = TrustDocument {
            schema: TRUST_SCHEMA,
            version: 1,
            expires_at: Timestamp::from_unix(NOW_UNIX + TRUST_VALID_SECS),
            root: RoleKeys::of(&public(&roots), 1),
            manifest: RoleKeys::of(&public(&manifest_keys), 1),
        };
        let trust_envelope = document.sign(&[&roots[0]]);
        let trust = Trust::bootstrap(&trust_envelope, now()).expect("the fixture trust verifies");
        Fixture {
            roots,
            manifest_keys,
            spare_keys,
            document,
            trust_envelope,
            trust,
            host: HOST.parse().expect("a valid host id"),
        }
    })
}

/// `payload` as a signed envelope of `payload_type`, signed by `keys`.
pub fn sign(payload_type: &str, payload: &[u8], keys: &[&SigningKey]) -> Vec<u8> {
    Envelope::sign(payload_type, payload, keys).to_json()
}

/// Splits one input into at most [`MAX_PIECES`] pieces at [`SEPARATOR`]s (the last piece
/// keeps any further separators).
pub fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut rest = data;
    while pieces.len() + 1 < MAX_PIECES {
        match rest.windows(SEPARATOR.len()).position(|window| window == SEPARATOR) {
            Some(at) => {
                pieces.push(&rest[..at]);
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    pieces.push(rest);
    pieces
}

/// Joins pieces with [`SEPARATOR`], the inverse of [`split`] (for the seed maker).
pub fn join(pieces: &[&[u8]]) -> Vec<u8> {
    pieces.join(SEPARATOR)
}

/// A directory for one unpack target: `root/` is what the code under test writes into,
/// `canary/` beside it holds one file, and nothing else is there. After every run the
/// arena checks that `canary/`, its file and the arena itself are exactly as they were,
/// so any write that escaped `root/` (through `..`, a symlink or a hard link) is a crash.
///
/// Put it on a tmpfs for speed: it lives under `$TMPDIR` (scripts/fuzz.sh sets that to
/// `/dev/shm` when there is one).
#[derive(Debug)]
pub struct Arena {
    base: PathBuf,
    root: PathBuf,
    canary: PathBuf,
    before: Outside,
}

/// What is outside `root/`, compared before and after each run.
#[derive(Debug, PartialEq, Eq)]
struct Outside {
    base_entries: Vec<OsString>,
    base_mode: u32,
    canary_entries: Vec<OsString>,
    canary_mode: u32,
    canary_mtime: (i64, i64),
    keep_content: Vec<u8>,
    keep_mode: u32,
    keep_links: u64,
    keep_owner: (u32, u32),
}

const CANARY_FILE: &str = "keep";
const CANARY_CONTENT: &[u8] = b"nothing may write here\n";

impl Arena {
    /// Makes a fresh arena for the target `name` (one per process), first removing the
    /// arenas of processes that are gone: libFuzzer ends a run with `exit`, which drops
    /// no statics, so an arena is never removed by the process that made it.
    pub fn new(name: &str) -> Arena {
        let prefix = format!("drover-fuzz-{name}-");
        if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let Some(pid) = file_name.to_str().and_then(|text| text.strip_prefix(&prefix)) else {
                    continue;
                };
                if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                    remove_tree(&entry.path());
                }
            }
        }
        let base = std::env::temp_dir().join(format!("{prefix}{}", std::process::id()));
        if base.exists() {
            remove_tree(&base);
        }
        let root = base.join("root");
        let canary = base.join("canary");
        fs::create_dir_all(&root).expect("create arena root");
        fs::create_dir_all(&canary).expect("create arena canary");
        fs::write(canary.join(CANARY_FILE), CANARY_CONTENT).expect("write canary file");
        fs::set_permissions(&base, fs::Permissions::from_mode(0o700)).expect("chmod arena");
        let before = Outside::read(&base, &canary);
        let mut arena = Arena {
            base,
            root,
            canary,
            before,
        };
        arena.self_test();
        // The test touched the canary directory (its time changed): what later runs are
        // compared with is the state after it.
        arena.before = Outside::read(&arena.base, &arena.canary);
        arena
    }

    /// Proves, once per process, that the checks can fail: each escape an unpack could
    /// make is planted by hand and must be seen, then undone. A check that saw nothing
    /// here would let every fuzz run pass.
    fn self_test(&self) {
        let keep = self.canary.join(CANARY_FILE);
        fs::write(self.canary.join("written"), b"x").expect("plant a file in the canary");
        assert_ne!(
            self.before,
            Outside::read(&self.base, &self.canary),
            "a new file outside went unseen"
        );
        fs::remove_file(self.canary.join("written")).expect("remove the planted file");

        fs::hard_link(&keep, self.root.join("link")).expect("plant a hard link to the canary");
        assert!(
            try_walk(&self.root).is_err(),
            "a hard link to a file outside went unseen"
        );
        assert_ne!(
            self.before,
            Outside::read(&self.base, &self.canary),
            "a new link to the canary went unseen"
        );
        fs::remove_file(self.root.join("link")).expect("remove the planted hard link");

        std::os::unix::fs::symlink("sub/../..", self.root.join("up")).expect("plant an escaping symlink");
        std::os::unix::fs::symlink("up/canary", self.root.join("through")).expect("plant a chained symlink");
        std::os::unix::fs::symlink("/etc", self.root.join("absolute")).expect("plant an absolute symlink");
        std::os::unix::fs::symlink("a/./b/..", self.root.join("inside")).expect("plant a contained symlink");
        for escaping in ["up", "through", "absolute"] {
            assert!(
                symlink_escape(&self.root, Path::new(escaping)).is_some(),
                "the escaping symlink {escaping} went unseen"
            );
        }
        assert_eq!(
            symlink_escape(&self.root, Path::new("inside")),
            None,
            "a contained symlink was taken for an escape"
        );
        self.reset();
        let after = Outside::read(&self.base, &self.canary);
        assert_eq!(
            (
                &self.before.canary_entries,
                &self.before.keep_content,
                self.before.keep_links
            ),
            (&after.canary_entries, &after.keep_content, after.keep_links),
            "the self test left something behind"
        );
    }

    /// The directory the code under test writes into, empty at the start of each run.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Panics (a crash for the fuzzer) if anything outside `root/` changed, or `root/`
    /// is no longer a real directory.
    pub fn check_outside_untouched(&self) {
        let after = Outside::read(&self.base, &self.canary);
        assert_eq!(self.before, after, "something outside the unpack directory changed");
        let root = fs::symlink_metadata(&self.root).expect("the unpack directory still exists");
        assert!(root.is_dir(), "the unpack directory was replaced by a non-directory");
    }

    /// Empties `root/` for the next run.
    pub fn reset(&self) {
        remove_tree(&self.root);
        fs::create_dir(&self.root).expect("recreate arena root");
    }
}

impl Outside {
    fn read(base: &Path, canary: &Path) -> Outside {
        let base_meta = fs::symlink_metadata(base).expect("arena exists");
        let canary_meta = fs::symlink_metadata(canary).expect("canary directory exists");
        let keep = canary.join(CANARY_FILE);
        let keep_meta = fs::symlink_metadata(&keep).expect("canary file exists");
        Outside {
            base_entries: listing(base),
            base_mode: base_meta.mode(),
            canary_entries: listing(canary),
            canary_mode: canary_meta.mode(),
            canary_mtime: (canary_meta.mtime(), canary_meta.mtime_nsec()),
            keep_content: if keep_meta.is_file() {
                fs::read(&keep).unwrap_or_default()
            } else {
                Vec::new()
            },
            keep_mode: keep_meta.mode(),
            keep_links: keep_meta.nlink(),
            keep_owner: (keep_meta.uid(), keep_meta.gid()),
        }
    }
}

fn listing(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .expect("list arena directory")
        .map(|entry| entry.expect("read arena entry").file_name())
        .collect();
    names.sort();
    names
}

/// Removes a tree without following symlinks, first making every directory in it
/// writable (an archive may make one read-only, which stops a non-root user).
pub fn remove_tree(path: &Path) {
    fn open_up(path: &Path) {
        let Ok(metadata) = fs::symlink_metadata(path) else {
            return;
        };
        if metadata.is_dir() {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
            if let Ok(entries) = fs::read_dir(path) {
                for entry in entries.flatten() {
                    open_up(&entry.path());
                }
            }
        }
    }
    open_up(path);
    if let Err(error) = fs::remove_dir_all(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        panic!("cannot remove {}: {error}", path.display());
    }
}

/// What a walk of an unpacked tree found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tree {
    /// Directories below the root.
    pub dirs: u64,
    /// Paths of regular files (a hard-linked inode counts once per path).
    pub file_paths: u64,
    /// Distinct regular-file inodes.
    pub inodes: u64,
    /// Bytes of the distinct inodes.
    pub bytes: u64,
    /// Symlinks, by path relative to the root, with their targets.
    pub symlinks: BTreeMap<PathBuf, PathBuf>,
    /// Paths whose mode has a setuid, setgid or sticky bit.
    pub special_bits: Vec<PathBuf>,
    /// Names that start with `.wh.` (OCI whiteout files must never be created).
    pub whiteout_names: Vec<PathBuf>,
}

/// Walks `root` without following symlinks and checks what must hold of any tree an
/// unpack leaves, whether it succeeded or not: only directories, regular files and
/// symlinks, and every regular file's link count is the number of its paths inside the
/// tree (a hard link to anything outside would show as a count higher than that).
pub fn walk(root: &Path) -> Tree {
    try_walk(root).unwrap_or_else(|problem| panic!("{problem}"))
}

/// [`walk`], returning the broken invariant instead of panicking.
pub fn try_walk(root: &Path) -> Result<Tree, String> {
    let mut tree = Tree::default();
    let mut inodes: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = root.join(&relative);
        let listing = fs::read_dir(&dir).map_err(|error| format!("list {}: {error}", dir.display()))?;
        for entry in listing {
            let entry = entry.expect("read directory entry");
            let path = relative.join(entry.file_name());
            let metadata = fs::symlink_metadata(root.join(&path)).expect("lstat an entry");
            if metadata.mode() & 0o7000 != 0 {
                tree.special_bits.push(path.clone());
            }
            if entry.file_name().as_encoded_bytes().starts_with(b".wh.") {
                tree.whiteout_names.push(path.clone());
            }
            let kind = metadata.file_type();
            if kind.is_dir() {
                tree.dirs += 1;
                pending.push(path);
            } else if kind.is_file() {
                tree.file_paths += 1;
                let seen = inodes.entry(metadata.ino()).or_insert((0, metadata.nlink()));
                if seen.0 == 0 {
                    tree.inodes += 1;
                    tree.bytes += metadata.len();
                }
                seen.0 += 1;
            } else if kind.is_symlink() {
                let target = fs::read_link(root.join(&path)).expect("read a symlink");
                tree.symlinks.insert(path, target);
            } else {
                return Err(format!(
                    "{} is neither a directory, a regular file nor a symlink: {kind:?}",
                    path.display()
                ));
            }
        }
    }
    for (inode, (paths, links)) in inodes {
        if paths != links {
            return Err(format!(
                "inode {inode} has {links} links but {paths} paths in the tree: a hard link leads outside"
            ));
        }
    }
    Ok(tree)
}

/// One step of a symlink walk.
enum Step {
    Root,
    Parent,
    Name(OsString),
}

fn steps(target: &Path) -> Vec<Step> {
    target
        .components()
        .filter_map(|component| match component {
            Component::RootDir | Component::Prefix(_) => Some(Step::Root),
            Component::CurDir => None,
            Component::ParentDir => Some(Step::Parent),
            Component::Normal(name) => Some(Step::Name(name.to_owned())),
        })
        .collect()
}

/// Checks that following the symlink at `link` (relative to `root`), and any symlinks it
/// leads through, never leaves `root`: no absolute target, no `..` above the root. Parts
/// that do not exist are taken lexically. Returns the problem, if any.
pub fn symlink_escape(root: &Path, link: &Path) -> Option<String> {
    const MAX_HOPS: usize = 40;
    let mut directory: Vec<OsString> = link
        .parent()
        .map(|parent| parent.components().map(|c| c.as_os_str().to_owned()).collect())
        .unwrap_or_default();
    let first = fs::read_link(root.join(link)).ok()?;
    let mut pending: VecDeque<Step> = steps(&first).into();
    let mut hops = 0;
    while let Some(step) = pending.pop_front() {
        match step {
            Step::Root => return Some(format!("{} -> {}: absolute", link.display(), first.display())),
            Step::Parent => {
                if directory.pop().is_none() {
                    return Some(format!("{} -> {}: leaves the root", link.display(), first.display()));
                }
            }
            Step::Name(name) => {
                let here = root.join(directory.iter().collect::<PathBuf>()).join(&name);
                match fs::symlink_metadata(&here) {
                    Ok(metadata) if metadata.file_type().is_symlink() => {
                        hops += 1;
                        if hops > MAX_HOPS {
                            // The kernel gives up with ELOOP: it leads nowhere.
                            return None;
                        }
                        let target = fs::read_link(&here).expect("read a symlink");
                        for step in steps(&target).into_iter().rev() {
                            pending.push_front(step);
                        }
                    }
                    _ => directory.push(name),
                }
            }
        }
    }
    None
}

/// With `DROVER_FUZZ_DEBUG=1` in the environment, prints what the code under test
/// returned for each input: for triage (`scripts/fuzz.sh replay` on one input) and to see
/// that the seeds reach the paths they were written for. Read once per process.
pub fn debug(what: &str, result: &dyn std::fmt::Debug) {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    if *ENABLED.get_or_init(|| std::env::var_os("DROVER_FUZZ_DEBUG").is_some_and(|value| value == "1")) {
        eprintln!("{what}: {result:?}");
    }
}
