//! The `drover-agent` binary: install the TLS crypto provider, set up logging, parse the
//! command line, run it with SIGTERM/SIGINT as the shutdown signal, and map the outcome
//! to an exit code (64 for bad configuration).

use std::process::ExitCode;

use clap::Parser as _;
use drover_agent::{cli::Cli, run};
use drover_protocol::Timestamp;

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut terminate), Ok(mut interrupt)) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn main() -> ExitCode {
    if rustls::crypto::ring::default_provider().install_default().is_err() {
        eprintln!("drover-agent: a TLS crypto provider was already installed");
        return ExitCode::FAILURE;
    }
    // Under systemd stderr goes to the journal, which stamps time and unit itself.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // DROVER_LOG=debug|info|warn|error (a level, not a filter: no regex engine in the agent).
    let level = std::env::var("DROVER_LOG")
        .ok()
        .and_then(|text| text.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    let logging = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    if journald {
        // Each line starts with its syslog priority (`<4>` for WARN), which journald reads.
        let format = tracing_subscriber::fmt::format()
            .with_ansi(false)
            .with_target(false)
            .without_time();
        logging
            .event_format(drover_agent::systemd::JournalPriority(format))
            .init();
    } else {
        logging.init();
    }
    let cli = Cli::parse();
    let runtime = match drover_agent::runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("drover-agent: starting the async runtime failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let now = Timestamp::from_system(std::time::SystemTime::now());
    // Unlocked handles: holding stderr's lock here would block every log line written
    // from another thread (the unpacker runs on the blocking pool) for good.
    let outcome = runtime.block_on(run(
        cli,
        now,
        &mut std::io::stdin(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
        shutdown_signal(),
    ));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("drover-agent: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
