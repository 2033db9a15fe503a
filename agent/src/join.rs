//! `drover-agent join URL[,URL...] --token T --ca-sha256 H`: enroll this host. The agent
//! makes its own key (it never leaves the host), sends a CSR with the one-time token over
//! TLS to a coordinator whose CA it pins by hash, checks what comes back (the CA's hash
//! again, a trust document that verifies, a certificate for this host id), and stores it
//! all. Several URLs (replicas over one database) are tried in order until one answers,
//! by the rule the running agent fails over by ([`crate::coordinators`]); an answer that
//! refuses the join is final (another replica would refuse it too).

use std::io::Write;
use std::path::PathBuf;

use drover_protocol::api::{ErrorBody, JoinRequest, JoinResponse};
use drover_protocol::report::AgentFacts;
use drover_protocol::{HostId, Timestamp, Trust};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::accepted::trust_roots_id;
use crate::config::{self, AgentConfig};
use crate::error::Error;
use crate::state::{Identity, StateDir};
use crate::tls::{join_config, sha256_hex};

/// What `join` needs.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// The coordinator URLs, tried in order.
    pub urls: Vec<String>,
    /// The one-time token.
    pub token: String,
    /// The pinned CA hash.
    pub ca_sha256: String,
    /// Replace an existing identity in the state directory.
    pub force: bool,
    /// Where to write the coordinator URLs and host id.
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

/// The one certificate of the CA in a join answer, which must have the pinned sha256.
/// Anything else in the PEM text is refused: later connections trust every certificate
/// in the stored `ca.pem`, and only this one was pinned.
fn pinned_ca(ca_pem: &str, pinned: &str) -> Result<(), Error> {
    let certificates = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| Error::Join(format!("the CA in the join answer is not PEM: {error}")))?;
    let blocks = ca_pem.matches("-----BEGIN ").count();
    let [certificate] = certificates.as_slice() else {
        return Err(Error::Join(format!(
            "the CA in the join answer holds {} certificates; exactly one, the pinned CA, is allowed",
            certificates.len()
        )));
    };
    if blocks != 1 {
        return Err(Error::Join(format!(
            "the CA in the join answer holds {blocks} PEM blocks; exactly one, the pinned CA certificate, is allowed"
        )));
    }
    if sha256_hex(certificate) != pinned {
        return Err(Error::Join(
            "the CA in the join answer does not have the pinned sha256".into(),
        ));
    }
    Ok(())
}

/// A re-join never lowers trust: with the same root key set (the keys in any order, and
/// the threshold) the coordinator's trust document must have at least the pinned
/// version, and the same version must be the same document. Other root keys mean
/// another coordinator, whose trust starts its own versions.
pub fn check_trust_not_lowered(pinned: &Trust, offered: &Trust) -> Result<(), Error> {
    if trust_roots_id(pinned) != trust_roots_id(offered) {
        return Ok(());
    }
    if offered.version() < pinned.version() {
        return Err(Error::Join(format!(
            "the coordinator's trust document is version {}, older than the version {} this host pins with the same root keys; \
             a re-join never lowers trust: give the coordinator the current trust.json (drover keys), or check that this is the coordinator you think",
            offered.version(),
            pinned.version()
        )));
    }
    if offered.version() == pinned.version() && !same_meaning(pinned, offered) {
        return Err(Error::Join(format!(
            "the coordinator's trust document is version {} like the pinned one but says something else; \
             a changed trust document needs a higher version",
            offered.version()
        )));
    }
    Ok(())
}

/// Whether two trust documents say the same: expiry, and each role's key set and
/// threshold (the order keys are listed in means nothing).
fn same_meaning(one: &Trust, other: &Trust) -> bool {
    let role = |role: &drover_protocol::Role| (role.threshold(), role.key_ids().cloned().collect::<Vec<_>>());
    one.expires_at() == other.expires_at()
        && role(one.root()) == role(other.root())
        && role(one.manifest()) == role(other.manifest())
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
    let urls = drover_protocol::coordinators::check_coordinator_urls(&options.urls)
        .map_err(|problems| Error::Join(problems.join("; ")))?;
    let pinned = options.ca_sha256.to_lowercase();
    if pinned.len() != 64 || !pinned.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Join(
            "--ca-sha256 must be 64 hex digits (from `drover token create`)".into(),
        ));
    }
    let state = StateDir::new(&config.state_dir);
    if state.joined() && !options.force {
        return Err(Error::Join(format!(
            "this host already joined (identity in {}); pass --force to replace it (with a token from `drover token create --replace {}`)",
            state.root().display(),
            config.host_id
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
    let mut unreachable = Vec::new();
    let mut answer = None;
    for (index, url) in urls.iter().enumerate() {
        let last = index + 1 == urls.len();
        match client.post(format!("{url}/v1/join")).json(&request).send().await {
            // The last URL's gateway answer is shown as the answer it is.
            Ok(response) if !last && crate::coordinators::unreachable_status(response.status().as_u16()) => {
                unreachable.push(format!("{url}: HTTP {}", response.status()));
            }
            Ok(response) => {
                answer = Some((url, response));
                break;
            }
            Err(error) if crate::coordinators::unreachable_error(&error) => {
                unreachable.push(format!("{url}: {}", crate::error::chain(&error)));
            }
            Err(error) => {
                return Err(Error::Join(format!(
                    "cannot reach the coordinator at {url}: {}",
                    crate::error::chain(&error)
                )));
            }
        }
        if let Some(next) = urls.get(unreachable.len()) {
            tracing::info!("coordinator {url} unreachable; trying {next}");
        }
    }
    let Some((url, response)) = answer else {
        return Err(Error::Join(match &unreachable[..] {
            [one] => format!("cannot reach the coordinator at {one}"),
            all => format!("cannot reach any coordinator: {}", all.join("; ")),
        }));
    };
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
    pinned_ca(&joined.ca_pem, &pinned)?;
    let trust = Trust::bootstrap(joined.trust.as_bytes(), now)
        .map_err(|rejection| Error::Join(format!("the coordinator's trust document is not valid: {rejection}")))?;

    state.create().map_err(|source| Error::Io {
        operation: "creating",
        path: state.root().to_path_buf(),
        source,
    })?;
    // The pinned trust, expired or not, is what a re-join must not go back from.
    let pinned_trust = std::fs::read(state.trust())
        .ok()
        .and_then(|bytes| Trust::bootstrap(&bytes, Timestamp::EPOCH).ok());
    if let Some(pinned_trust) = &pinned_trust {
        check_trust_not_lowered(pinned_trust, &trust)?;
    }
    // The trust first: the accepted record names the root key set it belongs to, so a
    // floor of other root keys stops counting by itself (nothing is wiped), and a crash
    // at any step leaves a trust and a floor that agree.
    drover_protocol::keyfile::write_atomic(&state.trust(), trust.envelope_bytes(), 0o644)?;
    state.save_identity(&Identity {
        key_pem,
        certificate_pem: joined.certificate_pem,
        ca_pem: joined.ca_pem,
    })?;
    config::write_after_join(&options.config_path, &urls, &config.host_id).map_err(|source| Error::Io {
        operation: "writing",
        path: options.config_path.clone(),
        source,
    })?;
    // The agent starts at the coordinator that answered.
    crate::coordinators::remember(&config.state_dir, url);
    // A refusal kept from the old identity (removed, replaced) no longer holds.
    if let Err(error) = crate::reporting::Refusal::clear(&config.state_dir) {
        tracing::warn!(
            "removing {}: {error}",
            crate::reporting::Refusal::path(&config.state_dir).display()
        );
    }
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
    })?;
    let note = restart_running_agent(options.force).await;
    if !note.is_empty() {
        writeln!(out, "{note}").map_err(|source| Error::Io {
            operation: "writing",
            path: PathBuf::from("stdout"),
            source,
        })?;
    }
    Ok(())
}

/// The agent's own unit, as the packages install it.
const AGENT_UNIT: &str = "drover-agent.service";

/// A running agent holds the identity it started with: after a re-join it must restart to
/// present the new certificate. Restarts `drover-agent.service` through systemd when it
/// is running (apps are units of their own: they keep running) and says what happened;
/// without systemd on the bus, says that a running agent must be restarted by hand (only
/// for a re-join: a first join has no agent running yet).
async fn restart_running_agent(rejoin: bool) -> String {
    let systemd = match crate::systemd::Systemd::connect().await {
        Ok(systemd) => systemd,
        Err(error) if rejoin => {
            return format!(
                "systemd is not reachable ({error}): if a drover-agent runs on this host, restart it so that it uses the new identity"
            );
        }
        Err(_) => return String::new(),
    };
    let active = match systemd.status(AGENT_UNIT).await {
        Ok(status) => matches!(
            status.active_state,
            crate::systemd::ActiveState::Active
                | crate::systemd::ActiveState::Activating
                | crate::systemd::ActiveState::Reloading
        ),
        Err(error) => {
            return format!(
                "reading the state of {AGENT_UNIT} failed ({error}): if it runs, restart it (`systemctl restart drover-agent`) so that it uses the new identity"
            );
        }
    };
    if !active {
        return String::new();
    }
    match systemd
        .try_restart(AGENT_UNIT, std::time::Duration::from_secs(60))
        .await
    {
        Ok(crate::systemd::JobOutcome::Done) => {
            format!("restarted {AGENT_UNIT}, which was running with the previous identity (apps keep running)")
        }
        Ok(outcome) => format!(
            "restarting {AGENT_UNIT} ended with job {outcome}: restart it (`systemctl restart drover-agent`) so that it uses the new identity"
        ),
        Err(error) => format!(
            "restarting {AGENT_UNIT} failed ({error}): restart it (`systemctl restart drover-agent`) so that it uses the new identity"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_answer_with_more_than_the_pinned_ca_certificate_is_refused() {
        let ca = rcgen::generate_simple_self_signed(vec!["drover CA".into()]).expect("certificate");
        let extra = rcgen::generate_simple_self_signed(vec!["attacker CA".into()]).expect("certificate");
        let pinned = sha256_hex(ca.cert.der());
        assert!(pinned_ca(&ca.cert.pem(), &pinned).is_ok());

        for (bundle, said) in [
            (format!("{}{}", ca.cert.pem(), extra.cert.pem()), "holds 2 certificates"),
            (format!("{}{}", extra.cert.pem(), ca.cert.pem()), "holds 2 certificates"),
            (
                format!("{}{}", ca.cert.pem(), extra.signing_key.serialize_pem()),
                "holds 2 PEM blocks",
            ),
        ] {
            let error = pinned_ca(&bundle, &pinned).expect_err("refused").to_string();
            assert!(error.contains(said), "{error}");
        }
        let error = pinned_ca(&extra.cert.pem(), &pinned).expect_err("refused").to_string();
        assert!(error.contains("pinned sha256"), "{error}");
    }
}
