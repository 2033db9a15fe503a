//! The coordinator's data directory: what `drover serve` creates on first start and
//! reuses afterwards, and where the CLI on the same machine finds its credentials.
//!
//! ```text
//! <data-dir>/              0700
//!   coordinator.db         SQLite (WAL)
//!   ca.pem  ca.key         the CA (key 0600)
//!   admin.token            the bootstrap admin token, named `admin` (0600)
//!   address                the URL the CLI uses to reach this coordinator
//!   server.pem             the server certificate in use, renewed while serving (0600)
//!   keys/                  manifest.key (0600), trust.json; root-1.key when created here
//!   blobs/sha256/<hex>     uploaded artifacts, content-addressed
//! ```

use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use drover_protocol::keyfile::{read_signing_key, write_atomic, write_new_key_file};
use drover_protocol::{Duration, SigningKey, Timestamp, Trust};

use crate::error::Error;
use crate::keys::{MANIFEST_KEY_FILE, TRUST_FILE};
use crate::pki::Ca;

/// The default data directory of a packaged coordinator.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/drover-coordinator";

/// Paths inside a data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The SQLite database.
    pub fn database(&self) -> PathBuf {
        self.root.join("coordinator.db")
    }
    /// The CA certificate (PEM).
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    /// The CA key (PEM, 0600).
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    /// The admin bearer token (0600).
    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin.token")
    }
    /// The URL the local CLI should use.
    pub fn address(&self) -> PathBuf {
        self.root.join("address")
    }
    /// The default key directory.
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    /// The artifact store.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }
}

/// Everything the server needs from the data directory.
#[derive(Debug)]
pub struct Credentials {
    /// The CA.
    pub ca: Ca,
    /// The key that signs manifests.
    pub manifest_key: SigningKey,
    /// The trust document hosts pin.
    pub trust: Trust,
    /// The admin bearer token.
    pub admin_token: String,
}

fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        operation,
        path,
        source,
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("system random source");
    encode_secret(bytes)
}

/// 32 random bytes as URL-safe base64 that never starts with `-`: secrets go on command
/// lines (`drover-agent join URL --token X`), where one starting with `-` (1 in 64) would be
/// read as an option. A leading `-` (sextet 62) has its top bit cleared, becoming `e`.
fn encode_secret(mut bytes: [u8; 32]) -> String {
    if bytes[0] >> 2 == 62 {
        bytes[0] &= 0x7f;
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The root key files (`root-*.key`) in a key directory, sorted; none when it cannot be
/// read (the start fails later, naming what is missing).
fn root_keys_in(keys: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(keys)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().into_string().ok())
                .filter(|name| name.starts_with("root-") && name.ends_with(".key"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Creates what is missing (on first start) and loads everything. `keys_dir` overrides
/// `<data-dir>/keys` with a directory made by `drover keys init` elsewhere (only its
/// manifest.key and trust.json are needed; root keys can stay offline).
pub fn prepare(data: &DataDir, keys_dir: Option<&Path>, now: Timestamp) -> Result<Credentials, Error> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data.root())
        .map_err(io("creating", data.root()))?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data.blobs())
        .map_err(io("creating", &data.blobs()))?;

    let ca = if data.ca_key().exists() {
        let cert = fs::read_to_string(data.ca_cert()).map_err(io("reading", &data.ca_cert()))?;
        // The key file goes through the same mode check as every other private key.
        let key = read_private_file(&data.ca_key())?;
        Ca::load(&cert, &key).map_err(|error| Error::Input(format!("{}: {error}", data.ca_key().display())))?
    } else {
        let (ca, key_pem) = Ca::create(now).map_err(|error| Error::Input(error.to_string()))?;
        write_atomic(&data.ca_cert(), ca.cert_pem().as_bytes(), 0o644)?;
        write_new_key_file(&data.ca_key(), &key_pem)?;
        ca
    };

    let keys = keys_dir.map_or_else(|| data.keys(), Path::to_path_buf);
    if keys_dir.is_none() && !keys.join(MANIFEST_KEY_FILE).exists() {
        crate::keys::create_key_dir(&keys, 1, 1, Duration::from_secs(5 * 365 * 86_400), now)?;
        tracing::info!(dir = %keys.display(), "created the CA, a root key, the manifest key and the trust document");
    }
    // At every start, not only the first: a root key left beside the online manifest key
    // hands whoever takes this machine the power to change what every host trusts.
    let root_keys_here = root_keys_in(&keys);
    if !root_keys_here.is_empty() {
        tracing::warn!(
            dir = %keys.display(),
            keys = %root_keys_here.join(","),
            "root keys are on this machine; for production, move them offline (docs/runbook.md, \"Moving root keys offline\"): the coordinator needs only manifest.key and trust.json"
        );
    }
    let manifest_key = read_signing_key(&keys.join(MANIFEST_KEY_FILE))?;
    let trust_path = keys.join(TRUST_FILE);
    let trust_bytes = fs::read(&trust_path).map_err(io("reading", &trust_path))?;
    let trust = Trust::bootstrap(&trust_bytes, now).map_err(|rejection| Error::Trust {
        path: trust_path.clone(),
        rejection,
    })?;
    if !trust.is_manifest_key(manifest_key.key_id()) {
        return Err(Error::Input(format!(
            "{}: key {} is not a manifest key of {}; hosts would refuse every manifest",
            keys.join(MANIFEST_KEY_FILE).display(),
            manifest_key.key_id(),
            trust_path.display()
        )));
    }

    let admin_token = if data.admin_token().exists() {
        read_private_file(&data.admin_token())?.trim().to_owned()
    } else {
        let token = random_token();
        write_new_key_file(&data.admin_token(), &format!("{token}\n"))?;
        token
    };
    Ok(Credentials {
        ca,
        manifest_key,
        trust,
        admin_token,
    })
}

/// Reads a secret text file (0600 enforced).
pub fn read_private_file(path: &Path) -> Result<String, Error> {
    let bytes = drover_protocol::keyfile::read_private_file(path)?;
    String::from_utf8(bytes).map_err(|_| Error::Input(format!("{}: not UTF-8 text", path.display())))
}

/// A fresh random secret (enrollment tokens).
pub fn new_secret() -> String {
    random_token()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The warning at every start is about what is in the key directory now: a first
    /// start's root key counts, and moving it away ends the warning.
    #[test]
    fn root_keys_left_in_the_key_directory_are_found_at_every_start() {
        let root = std::env::temp_dir().join(format!("drover-datadir-root-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = DataDir::new(root.join("data"));
        prepare(&dir, None, Timestamp::from_unix(1_800_000_000)).expect("first start");
        assert_eq!(root_keys_in(&dir.keys()), vec!["root-1.key".to_owned()]);
        prepare(&dir, None, Timestamp::from_unix(1_800_000_100)).expect("second start");
        assert_eq!(root_keys_in(&dir.keys()), vec!["root-1.key".to_owned()]);
        let offline = root.join("root-1.key.offline");
        fs::rename(dir.keys().join("root-1.key"), &offline).expect("move the root key away");
        prepare(&dir, None, Timestamp::from_unix(1_800_000_200)).expect("start without the root key");
        assert!(root_keys_in(&dir.keys()).is_empty());
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn secrets_never_start_with_a_dash() {
        // 0xf8 = 111110 00: the first sextet is 62, URL-safe base64's `-`.
        let mut bytes = [0u8; 32];
        bytes[0] = 0xf8;
        let secret = encode_secret(bytes);
        assert!(secret.starts_with('e'), "{secret}");
        assert_eq!(secret.len(), 43);
        // `_` (63) and everything else is left as it is.
        bytes[0] = 0xfc;
        assert!(encode_secret(bytes).starts_with('_'));
        for _ in 0..2_000 {
            assert!(!random_token().starts_with('-'));
        }
    }
}
