//! A key directory: the root keys, the manifest key and the signed trust document that
//! `drover keys init` makes for an operator and `drover serve` makes at its first start.
//! Shared by both programs, so neither imports the other.

use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use drover_protocol::keyfile::{write_atomic, write_new_key_file};
use drover_protocol::trust::{RoleKeys, TRUST_SCHEMA};
use drover_protocol::{Duration, KeyError, SigningKey, Timestamp, TrustDocument};

use crate::error::Error;

/// The trust document's file name in a key directory.
pub const TRUST_FILE: &str = "trust.json";
/// The manifest key's file name in a key directory.
pub const MANIFEST_KEY_FILE: &str = "manifest.key";
pub(crate) fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        operation,
        path,
        source,
    }
}

pub fn root_key_file(index: u32) -> String {
    format!("root-{index}.key")
}

/// Creates root keys, a manifest key and a signed trust.json in `dir` (which must hold
/// no keys yet); returns the trust document.
pub fn create_key_dir(
    dir: &Path,
    root_keys: u32,
    root_threshold: u32,
    expires_in: Duration,
    now: Timestamp,
) -> Result<TrustDocument, Error> {
    if root_threshold > root_keys {
        return Err(Error::Input(format!(
            "--root-threshold {root_threshold} is more than --root-keys {root_keys}: no set of keys could ever sign a new trust document"
        )));
    }
    refuse_existing_keys(dir)?;
    // Build in a sibling directory and rename it into place, so an interrupted init
    // leaves no half-made key directory under the requested name.
    let building = !dir.exists();
    let target = if building {
        sibling(dir, ".init-tmp")
    } else {
        dir.to_path_buf()
    };
    if building {
        let _ = fs::remove_dir_all(&target);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&target)
            .map_err(io("creating directory", &target))?;
    }

    let rng = ring::rand::SystemRandom::new();
    let generate = || SigningKey::generate(&rng).ok_or(Error::Key(KeyError::Generate));
    let mut roots = Vec::new();
    for index in 1..=root_keys {
        let (key, pem) = generate()?;
        write_new_key_file(&target.join(root_key_file(index)), &pem)?;
        roots.push(key);
    }
    let (manifest_key, pem) = generate()?;
    write_new_key_file(&target.join(MANIFEST_KEY_FILE), &pem)?;

    let document = TrustDocument {
        schema: TRUST_SCHEMA,
        version: 1,
        expires_at: now.plus(expires_in),
        root: RoleKeys::of(
            &roots.iter().map(SigningKey::public_key).collect::<Vec<_>>(),
            root_threshold,
        ),
        manifest: RoleKeys::of(&[manifest_key.public_key()], 1),
    };
    let envelope = document.sign(&roots.iter().collect::<Vec<_>>());
    write_atomic(&target.join(TRUST_FILE), &envelope, 0o644)?;
    if building {
        fs::rename(&target, dir).map_err(io("renaming key directory into place", dir))?;
        let parent = dir
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::File::open(parent)
            .and_then(|directory| directory.sync_all())
            .map_err(io("syncing directory", parent))?;
    }
    Ok(document)
}

fn refuse_existing_keys(dir: &Path) -> Result<(), Error> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    let mut existing: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".key") || name == TRUST_FILE)
        .collect();
    existing.sort();
    if existing.is_empty() {
        Ok(())
    } else {
        Err(Error::KeysExist {
            path: dir.to_path_buf(),
            existing: existing.join(", "),
        })
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!("{suffix}-{}", std::process::id()));
    path.with_file_name(name)
}
