//! What `drover serve` makes on its first start and loads at every start: the data
//! directory, the CA, the key directory (manifest key and trust document), the admin
//! token. See [`crate::datadir`] for the layout.

use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;

use drover_protocol::keyfile::{read_signing_key, write_atomic, write_new_key_file};
use drover_protocol::{Duration, SigningKey, Timestamp, Trust};

use crate::datadir::{DataDir, read_private_file};
use crate::error::Error;
use crate::keydir::{MANIFEST_KEY_FILE, TRUST_FILE, io};
use crate::server::pki::Ca;

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
        Ca::load(&cert, &key).map_err(|error| {
            let step = format!(
                "loading the CA from {} and {}",
                data.ca_cert().display(),
                data.ca_key().display()
            );
            Error::start(step, &error, "")
        })?
    } else {
        let (ca, key_pem) = Ca::create(now).map_err(|error| Error::start("creating the CA", &error, ""))?;
        write_atomic(&data.ca_cert(), ca.cert_pem().as_bytes(), 0o644)?;
        write_new_key_file(&data.ca_key(), &key_pem)?;
        ca
    };

    let keys = keys_dir.map_or_else(|| data.keys(), Path::to_path_buf);
    if keys_dir.is_none() && !keys.join(MANIFEST_KEY_FILE).exists() {
        crate::keydir::create_key_dir(&keys, 1, 1, Duration::from_secs(5 * 365 * 86_400), now)?;
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
        let token = crate::datadir::new_secret();
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
}
