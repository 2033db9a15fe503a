//! drover's host agent as a library: enrollment (`join`), the agent itself (`run`: poll,
//! verify, fetch, stage, switch, restart, check health, roll back, report), its local
//! view (`status`), configuration and state (`check`), and `verify` / `verify-trust`,
//! which run the exact checks the agent applies to manifests and trust rotations.

#![forbid(unsafe_code)]

pub mod accepted;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod coordinators;
pub mod error;
pub mod executor;
pub mod faults;
pub mod fetch;
pub mod health;
pub mod hooks;
pub mod install;
pub mod join;
pub mod local;
pub mod notify;
pub mod oci;
pub mod plan;
pub mod renew;
pub mod reporting;
pub mod run;
pub mod state;
pub mod status;
pub mod systemd;
mod tarstream;
pub mod tls;
pub mod unit;
pub mod unpack;
pub mod verify;

use std::io::{Read, Write};

use drover_protocol::{Timestamp, Trust};

pub use error::Error;

/// The agent's async runtime: one thread (an idle agent needs no more) and at most four
/// blocking threads for unpacking, fsyncs and systemd calls. The benchmarks that time the
/// agent's library build theirs here too.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

fn load_config(args: &cli::ConfigArgs, required: bool) -> Result<config::AgentConfig, Error> {
    load_config_with(args, required, config::Overrides::default())
}

fn load_config_with(
    args: &cli::ConfigArgs,
    required: bool,
    overrides: config::Overrides,
) -> Result<config::AgentConfig, Error> {
    let overrides = config::Overrides {
        host_id: args.host_id.clone(),
        state_dir: args.state_dir.clone(),
        ..overrides
    };
    Ok(config::load(&args.config, required, &overrides, &hostname())?)
}

/// Runs one `drover-agent` command with the given clock and streams; `shutdown`
/// completes on SIGTERM (only `run` waits for it).
pub async fn run(
    cli: cli::Cli,
    now: Timestamp,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
    err: &mut dyn Write,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    match cli.command {
        cli::Command::Run(args) => {
            let overrides = config::Overrides {
                coordinators: args.coordinator.clone(),
                poll_interval: args.poll_interval.clone(),
                ..config::Overrides::default()
            };
            let config = load_config_with(&args.config, true, overrides)?;
            run::run(&config, shutdown).await
        }
        cli::Command::Status(args) => status::status(&load_config(&args.config, false)?, args.output, out),
        cli::Command::Join(args) => {
            let config = load_config(&args.config, false)?;
            let options = join::JoinOptions {
                urls: args.url.split(',').map(str::to_owned).collect(),
                token: args.token,
                ca_sha256: args.ca_sha256,
                force: args.force,
                config_path: args.config.config.clone(),
            };
            join::join(&options, &config, now, out).await
        }
        cli::Command::Check(args) => check(&load_config(&args.config, true)?, now, out),
        cli::Command::Verify(args) => verify::verify(&args, now, stdin, out, err),
        cli::Command::VerifyTrust(args) => verify::verify_trust(&args, now, out, err),
    }
}

/// `drover-agent check`: the config is valid (else exit 64), the host has joined, its
/// key is private, and the pinned trust document verifies and has not expired.
fn check(config: &config::AgentConfig, now: Timestamp, out: &mut dyn Write) -> Result<(), Error> {
    let state = state::StateDir::new(&config.state_dir);
    if !state.joined() {
        return Err(Error::NotJoined(state.root().to_path_buf()));
    }
    let bytes = std::fs::read(state.trust()).map_err(|source| Error::Io {
        operation: "reading",
        path: state.trust(),
        source,
    })?;
    let trust = Trust::bootstrap(&bytes, now).map_err(|rejection| Error::Trust {
        path: state.trust(),
        rejection,
    })?;
    let last = accepted::stored_floor(&state).map_err(|detail| Error::Io {
        operation: "reading",
        path: state.accepted(),
        source: std::io::Error::other(detail),
    })?;
    let coordinator = if config.coordinators.is_empty() {
        "(none: run drover-agent join)".to_owned()
    } else {
        config.coordinators.join(", ")
    };
    let identity = state.load_identity()?;
    let certificate = renew::Validity::of_pem(&identity.certificate_pem).map_err(|detail| Error::Io {
        operation: "reading",
        path: state.certificate(),
        source: std::io::Error::other(detail),
    })?;
    writeln!(
        out,
        "ok: host {} -> {coordinator}; certificate valid until {} (renewed from {}); trust version {} valid until {}; last accepted manifest: {}",
        config.host_id,
        certificate.not_after,
        certificate.renewal_from(),
        trust.version(),
        trust.expires_at(),
        last.map_or_else(
            || "none yet".to_owned(),
            |last| format!("serial {} issued {}", last.serial, last.issued_at)
        ),
    )
    .map_err(|source| Error::Io {
        operation: "writing",
        path: "stdout".into(),
        source,
    })
}
