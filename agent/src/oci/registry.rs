//! Registry clients (`oci-client`), one per registry, made from the agent config's
//! `[registries."HOST[:PORT]"]` sections and kept for the agent's lifetime.
//!
//! - **Transport**: HTTPS unless the section says `insecure = true`; the roots are the
//!   system bundle the rest of the agent trusts ([`crate::tls::SYSTEM_CA_BUNDLES`]) plus the
//!   section's `ca_file`. Redirects (registries send blob downloads to a CDN) are followed
//!   by reqwest, which drops the `Authorization` header when one leaves the registry.
//! - **Credentials** are read from their files (0600 or tighter, as the agent's key) each
//!   time a client is asked for, and never logged: `oci-client` keeps the first credentials
//!   it sees per registry, so a client whose credentials changed on disk (a rotated token)
//!   is replaced by a new one instead of being reused with stale ones.
//! - **Index resolution** is off (`platform_resolver: None`): the agent pulls one image
//!   manifest by digest, and the coordinator picked the platform when the release was made.
//! - **Blob URLs** from a manifest (`urls`, "foreign layers") are never followed: blobs are
//!   requested by digest from the registry that served the manifest.
//! - **Timeouts**: the connect timeout and read-timeout backstop of every agent client
//!   ([`crate::fetch::CONNECT_TIMEOUT`], [`crate::fetch::ARTIFACT_READ_TIMEOUT`]); the pull
//!   holds each request to the cache's [`crate::fetch::TransferPace`] on top.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::config::{RegistryConfig, RegistryCredentials, RegistryTransport};
use crate::fetch::{ARTIFACT_READ_TIMEOUT, CONNECT_TIMEOUT};

/// What the agent calls itself to registries.
const USER_AGENT: &str = concat!("drover-agent/", env!("CARGO_PKG_VERSION"));

/// A client for one registry and the credentials it was made with.
#[derive(Clone)]
pub struct RegistryClient {
    /// The client.
    pub client: Arc<oci_client::Client>,
    /// What to authenticate with (its `Debug` hides the secret).
    pub auth: RegistryAuth,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

struct Cached {
    client: RegistryClient,
    /// sha256 over the credentials the client was made with.
    fingerprint: drover_protocol::Digest,
}

/// The registries the agent knows, and the clients made for them so far.
pub struct Registries {
    configs: BTreeMap<String, RegistryConfig>,
    bundles: Vec<String>,
    clients: Mutex<BTreeMap<String, Cached>>,
}

impl std::fmt::Debug for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registries")
            .field("configs", &self.configs)
            .finish_non_exhaustive()
    }
}

impl Registries {
    /// The registries of the agent config; `bundles` are where the system roots are (the
    /// first readable file wins).
    pub fn new(configs: BTreeMap<String, RegistryConfig>, bundles: &[&str]) -> Registries {
        Registries {
            configs,
            bundles: bundles.iter().map(|bundle| (*bundle).to_owned()).collect(),
            clients: Mutex::new(BTreeMap::new()),
        }
    }

    /// The settings for `registry` (`HOST[:PORT]` as image references spell it): its
    /// section, or anonymous HTTPS.
    pub fn config(&self, registry: &str) -> RegistryConfig {
        self.configs.get(registry).cloned().unwrap_or_default()
    }

    /// The client for `registry`, made on first use (or when its credentials changed on
    /// disk), with the credentials read now. Errors say what is wrong with the settings.
    pub fn client(&self, registry: &str) -> Result<RegistryClient, String> {
        let config = self.config(registry);
        let auth = read_credentials(&config.credentials)?;
        let fingerprint = fingerprint(&auth);
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cached) = clients.get(registry)
            && cached.fingerprint == fingerprint
        {
            return Ok(cached.client.clone());
        }
        let client = RegistryClient {
            client: Arc::new(build_client(&config, &self.bundles)?),
            auth,
        };
        clients.insert(
            registry.to_owned(),
            Cached {
                client: client.clone(),
                fingerprint,
            },
        );
        Ok(client)
    }
}

/// Reads the secret of `credentials` from its file (mode checked again: it may have
/// changed since the config was loaded), without its trailing newline.
fn read_credentials(credentials: &RegistryCredentials) -> Result<RegistryAuth, String> {
    let read = |path: &Path| -> Result<String, String> {
        let bytes = drover_protocol::keyfile::read_private_file(path).map_err(|error| error.to_string())?;
        let text = String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
        let secret = text.trim_end_matches(['\n', '\r']);
        if secret.is_empty() || secret.contains(['\n', '\r', '\0']) {
            return Err(format!("{} must hold the secret on one line", path.display()));
        }
        Ok(secret.to_owned())
    };
    Ok(match credentials {
        RegistryCredentials::Anonymous => RegistryAuth::Anonymous,
        RegistryCredentials::Basic {
            username,
            password_file,
        } => RegistryAuth::Basic(username.clone(), read(password_file)?),
        RegistryCredentials::Bearer { token_file } => RegistryAuth::Bearer(read(token_file)?),
    })
}

fn fingerprint(auth: &RegistryAuth) -> drover_protocol::Digest {
    let text = match auth {
        RegistryAuth::Anonymous => "anonymous".to_owned(),
        RegistryAuth::Basic(user, password) => format!("basic\0{user}\0{password}"),
        RegistryAuth::Bearer(token) => format!("bearer\0{token}"),
    };
    drover_protocol::Digest::of(text.as_bytes())
}

fn build_client(config: &RegistryConfig, bundles: &[String]) -> Result<oci_client::Client, String> {
    let mut roots = Vec::new();
    if config.transport == RegistryTransport::Https {
        for bundle in bundles {
            let Ok(bytes) = std::fs::read(bundle) else {
                continue;
            };
            roots.extend(CertificateDer::pem_slice_iter(&bytes).flatten().map(|der| Certificate {
                encoding: CertificateEncoding::Der,
                data: der.to_vec(),
            }));
            break;
        }
        if let Some(ca_file) = &config.ca_file {
            let bytes =
                std::fs::read(ca_file).map_err(|error| format!("reading ca_file {}: {error}", ca_file.display()))?;
            let before = roots.len();
            for der in CertificateDer::pem_slice_iter(&bytes) {
                let der = der.map_err(|error| format!("ca_file {}: {error}", ca_file.display()))?;
                roots.push(Certificate {
                    encoding: CertificateEncoding::Der,
                    data: der.to_vec(),
                });
            }
            if roots.len() == before {
                return Err(format!("ca_file {} holds no PEM certificate", ca_file.display()));
            }
        }
    }
    let client_config = ClientConfig {
        protocol: match config.transport {
            RegistryTransport::Https => ClientProtocol::Https,
            RegistryTransport::PlainHttp => ClientProtocol::Http,
        },
        // Empty: reqwest's own roots (only when no system bundle could be read).
        tls_certs_only: roots,
        platform_resolver: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(ARTIFACT_READ_TIMEOUT),
        user_agent: USER_AGENT,
        ..ClientConfig::default()
    };
    oci_client::Client::try_from(client_config).map_err(|error| format!("making the registry client: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::PathBuf;

    fn secret_file(directory: &Path, name: &str, text: &str) -> PathBuf {
        let path = directory.join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    #[test]
    fn credentials_come_from_their_files_without_the_newline() {
        let directory = tempfile::tempdir().expect("tempdir");
        let password = secret_file(directory.path(), "password", "s3cret\n");
        let auth = read_credentials(&RegistryCredentials::Basic {
            username: "deploy".into(),
            password_file: password.clone(),
        })
        .expect("basic");
        assert!(matches!(&auth, RegistryAuth::Basic(user, secret) if user == "deploy" && secret == "s3cret"));
        assert!(!format!("{auth:?}").contains("s3cret"), "Debug must hide the password");
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = read_credentials(&RegistryCredentials::Bearer {
            token_file: password.clone(),
        })
        .expect_err("a group-readable secret is refused");
        assert!(error.contains("chmod"), "{error}");
        let two_lines = secret_file(directory.path(), "two", "a\nb\n");
        assert!(read_credentials(&RegistryCredentials::Bearer { token_file: two_lines }).is_err());
        assert!(matches!(
            read_credentials(&RegistryCredentials::Anonymous),
            Ok(RegistryAuth::Anonymous)
        ));
    }

    #[test]
    fn clients_are_kept_until_their_credentials_change() {
        crate::oci::testing::crypto();
        let directory = tempfile::tempdir().expect("tempdir");
        let token = secret_file(directory.path(), "token", "one\n");
        let configs = BTreeMap::from([(
            "registry.example".to_owned(),
            RegistryConfig {
                credentials: RegistryCredentials::Bearer {
                    token_file: token.clone(),
                },
                ..RegistryConfig::default()
            },
        )]);
        let registries = Registries::new(configs, &[]);
        let first = registries.client("registry.example").expect("client");
        let again = registries.client("registry.example").expect("client");
        assert!(Arc::ptr_eq(&first.client, &again.client));
        secret_file(directory.path(), "token", "two\n");
        let rotated = registries.client("registry.example").expect("client");
        assert!(
            !Arc::ptr_eq(&first.client, &rotated.client),
            "a new token needs a new client"
        );
        assert!(matches!(rotated.auth, RegistryAuth::Bearer(ref token) if token == "two"));
        // An unknown registry is anonymous HTTPS.
        assert_eq!(registries.config("other.example"), RegistryConfig::default());
        assert!(matches!(
            registries.client("other.example").expect("client").auth,
            RegistryAuth::Anonymous
        ));
    }

    #[test]
    fn a_ca_file_without_certificates_is_an_error() {
        crate::oci::testing::crypto();
        let directory = tempfile::tempdir().expect("tempdir");
        let ca = directory.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").expect("write");
        let config = RegistryConfig {
            ca_file: Some(ca),
            ..RegistryConfig::default()
        };
        let Err(error) = build_client(&config, &[]) else {
            panic!("a CA file without certificates must be refused");
        };
        assert!(error.contains("no PEM certificate"), "{error}");
    }
}
