//! Private key files on disk: created 0600 and never overwritten, refused when group
//! or others can read them; plus the atomic write used for trust documents.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::error::KeyError;
use crate::keys::SigningKey;

/// No private key file is larger than this; anything bigger is not read.
const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;

fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KeyError {
    let path = path.to_path_buf();
    move |source| KeyError::Io {
        operation,
        path,
        source,
    }
}

/// Reads a private file (a key or a secret token), refusing it when it is not a regular
/// file or its mode lets group or others read it.
pub fn read_private_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    let file = File::open(path).map_err(io("opening", path))?;
    let metadata = file.metadata().map_err(io("reading metadata of", path))?;
    if !metadata.is_file() {
        return Err(KeyError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io("reading", path))?;
    Ok(bytes)
}

/// Reads a private signing key file (see [`read_private_file`] for the checks).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let bytes = read_private_file(path)?;
    SigningKey::from_pkcs8(&bytes).map_err(|error| KeyError::Parse {
        path: path.to_path_buf(),
        detail: error.0,
    })
}

/// Writes a new private key file with mode 0600, atomically and without ever
/// replacing an existing file: the key is written and synced under a temporary name,
/// then hard-linked into place (which fails if the name exists).
pub fn write_new_key_file(path: &Path, pem: &str) -> Result<(), KeyError> {
    if path.exists() {
        return Err(KeyError::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    let temporary = temporary_name(path);
    write_synced(&temporary, pem.as_bytes(), 0o600)?;
    let linked = fs::hard_link(&temporary, path);
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => sync_parent(path),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Err(KeyError::AlreadyExists {
            path: path.to_path_buf(),
        }),
        Err(error) => Err(io("linking key file", path)(error)),
    }
}

/// Replaces `path` with `bytes` atomically: write and fsync a temporary file, rename it
/// over `path`, fsync the directory. A crash leaves either the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let temporary = temporary_name(path);
    write_synced(&temporary, bytes, mode)?;
    if let Err(error) = fs::rename(&temporary, path) {
        let _ = fs::remove_file(&temporary);
        return Err(io("renaming into place", path)(error));
    }
    sync_parent(path)
}

fn temporary_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let _ = fs::remove_file(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("creating", path))?;
    file.write_all(bytes).map_err(io("writing", path))?;
    file.sync_all().map_err(io("syncing", path))
}

fn sync_parent(path: &Path) -> Result<(), KeyError> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|directory| directory.sync_all())
        .map_err(io("syncing directory", parent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn scratch(name: &str) -> PathBuf {
        let directory = std::env::temp_dir().join(format!("drover-keyfile-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&directory);
        fs::create_dir_all(&directory).expect("scratch directory");
        directory
    }

    #[test]
    fn key_files_are_0600_and_never_overwritten() {
        let directory = scratch("mode");
        let path = directory.join("manifest.key");
        let (key, pem) = SigningKey::generate(&ring::rand::SystemRandom::new()).expect("random");
        write_new_key_file(&path, &pem).expect("first write");
        let mode = fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_signing_key(&path).expect("reads back").key_id(), key.key_id());
        assert!(matches!(
            write_new_key_file(&path, &pem),
            Err(KeyError::AlreadyExists { .. })
        ));
        let leftovers: Vec<_> = fs::read_dir(&directory).expect("list").collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        fs::remove_dir_all(&directory).expect("cleanup");
    }

    #[test]
    fn group_readable_key_is_refused() {
        let directory = scratch("open");
        let path = directory.join("manifest.key");
        let (_, pem) = SigningKey::generate(&ring::rand::SystemRandom::new()).expect("random");
        write_new_key_file(&path, &pem).expect("write");
        for mode in [0o640, 0o604, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
            let error = read_signing_key(&path).expect_err("must be refused");
            assert!(matches!(error, KeyError::TooOpen { .. }), "{error}");
            assert!(error.to_string().contains("chmod 600"), "{error}");
        }
        fs::remove_dir_all(&directory).expect("cleanup");
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let directory = scratch("atomic");
        let path = directory.join("trust.json");
        write_atomic(&path, b"one", 0o644).expect("write one");
        write_atomic(&path, b"two", 0o644).expect("write two");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert_eq!(fs::read_dir(&directory).expect("list").count(), 1);
        fs::remove_dir_all(&directory).expect("cleanup");
    }
}
