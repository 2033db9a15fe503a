//! `drover-agent join URL --token T --ca-sha256 H`: enroll this host. The agent makes its
//! own key (it never leaves the host), sends a CSR with the one-time token over TLS to a
//! coordinator whose CA it pins by hash, checks what comes back (the CA's hash again, a
//! trust document that verifies, a certificate for this host id), and stores it all.

use std::io::Write;
use std::path::PathBuf;

use drover_protocol::api::{ErrorBody, JoinRequest, JoinResponse};
use drover_protocol::report::AgentFacts;
use drover_protocol::{HostId, Timestamp, Trust};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

use crate::config::{self, AgentConfig};
use crate::error::Error;
use crate::state::{Identity, StateDir};
use crate::tls::{join_config, sha256_hex};

/// What `join` needs.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// The coordinator URL.
    pub url: String,
    /// The one-time token.
    pub token: String,
    /// The pinned CA hash.
    pub ca_sha256: String,
    /// Replace an existing identity in the state directory.
    pub force: bool,
    /// Where to write the coordinator URL and host id.
    pub config_path: PathBuf,
}

/// The host's facts, as reported.
pub fn facts() -> AgentFacts {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |name: &str| {
        os_release
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")))
            .map(|value| value.trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    AgentFacts {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        os: format!("{} {}", field("ID"), field("VERSION_ID")).trim().to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
    }
}

fn make_csr(host: &HostId) -> Result<(String, String), Error> {
    let failed = |error: rcgen::Error| Error::Join(format!("making the host key failed: {error}"));
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, host.as_str());
    params.distinguished_name = name;
    let csr = params.serialize_request(&key).map_err(failed)?;
    Ok((csr.pem().map_err(failed)?, key.serialize_pem()))
}

/// `drover-agent join`.
pub async fn join(
    options: &JoinOptions,
    config: &AgentConfig,
    now: Timestamp,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let url = options.url.trim_end_matches('/');
    if !url.starts_with("https://") {
        return Err(Error::Join(format!("{url:?} is not an https:// URL")));
    }
    let pinned = options.ca_sha256.to_lowercase();
    if pinned.len() != 64 || !pinned.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Join(
            "--ca-sha256 must be 64 hex digits (from `drover token create`)".into(),
        ));
    }
    let state = StateDir::new(&config.state_dir);
    if state.joined() && !options.force {
        return Err(Error::Join(format!(
            "this host already joined (identity in {}); pass --force to replace it (the coordinator needs a token made with --replace)",
            state.root().display()
        )));
    }

    let (csr_pem, key_pem) = make_csr(&config.host_id)?;
    let tls = join_config(&pinned).map_err(Error::Join)?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|error| Error::Join(format!("HTTP client: {error}")))?;
    let request = JoinRequest {
        token: options.token.clone(),
        host_id: config.host_id.clone(),
        csr_pem,
        facts: facts(),
    };
    let response = client
        .post(format!("{url}/v1/join"))
        .json(&request)
        .send()
        .await
        .map_err(|error| {
            Error::Join(format!(
                "cannot reach the coordinator at {url}: {}",
                crate::error::chain(&error)
            ))
        })?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|error| Error::Join(format!("reading the answer: {error}")))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|error| error.error)
            .unwrap_or_else(|_| format!("HTTP {status}"));
        return Err(Error::Join(format!("the coordinator refused the join: {message}")));
    }
    let joined: JoinResponse =
        serde_json::from_slice(&body).map_err(|error| Error::Join(format!("unreadable join answer: {error}")))?;

    // Trust nothing in the answer that does not check out.
    if joined.host_id != config.host_id {
        return Err(Error::Join(format!(
            "the coordinator enrolled {} instead of {}",
            joined.host_id, config.host_id
        )));
    }
    let ca_der = {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::CertificateDer::from_pem_slice(joined.ca_pem.as_bytes())
            .map_err(|error| Error::Join(format!("the CA in the join answer is not a PEM certificate: {error}")))?
    };
    if sha256_hex(&ca_der) != pinned {
        return Err(Error::Join(
            "the CA in the join answer does not have the pinned sha256".into(),
        ));
    }
    let trust = Trust::bootstrap(joined.trust.as_bytes(), now)
        .map_err(|rejection| Error::Join(format!("the coordinator's trust document is not valid: {rejection}")))?;

    state.create().map_err(|source| Error::Io {
        operation: "creating",
        path: state.root().to_path_buf(),
        source,
    })?;
    // A coordinator with other root keys starts its own serial sequence.
    let same_roots = std::fs::read(state.trust())
        .ok()
        .and_then(|bytes| Trust::bootstrap(&bytes, Timestamp::EPOCH).ok())
        .is_some_and(|old| old.document().root == trust.document().root);
    if !same_roots {
        state.forget_accepted().map_err(|source| Error::Io {
            operation: "resetting",
            path: state.accepted(),
            source,
        })?;
    }
    state.save_identity(&Identity {
        key_pem,
        certificate_pem: joined.certificate_pem,
        ca_pem: joined.ca_pem,
    })?;
    drover_protocol::keyfile::write_atomic(&state.trust(), trust.envelope_bytes(), 0o644)?;
    config::write_after_join(&options.config_path, url, &config.host_id).map_err(|source| Error::Io {
        operation: "writing",
        path: options.config_path.clone(),
        source,
    })?;
    let labels: Vec<String> = joined
        .labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    writeln!(
        out,
        "joined {url} as {} (labels: {}); trust version {}; state in {}",
        config.host_id,
        if labels.is_empty() {
            "none".to_owned()
        } else {
            labels.join(",")
        },
        trust.version(),
        state.root().display()
    )
    .map_err(|source| Error::Io {
        operation: "writing",
        path: PathBuf::from("stdout"),
        source,
    })
}
