//! The `drover` binary: install the TLS crypto provider, set up logging, parse the
//! command line, run it, map the outcome to an exit code.

use std::process::ExitCode;

/// mimalloc instead of glibc malloc: glibc keeps freed memory in per-thread arenas and
/// rarely returns it, so a coordinator that had served a burst (a fleet-wide re-sign,
/// a thousand report connections) stayed at its peak RSS; mimalloc gives it back.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser as _;
use drover_coordinator::{Cli, run};
use drover_protocol::Timestamp;

fn main() -> ExitCode {
    if rustls::crypto::ring::default_provider().install_default().is_err() {
        eprintln!("drover: a TLS crypto provider was already installed");
        return ExitCode::FAILURE;
    }
    // No transparent huge pages for this process: mimalloc asks for them on its arenas
    // (madvise), and a 2 MiB page is resident as a whole once one byte of it is touched.
    // With them, 2,000 held long-polls cost 33-35 KiB each in RSS instead of 26 KiB, and
    // an idle coordinator 8-16 MiB more (BENCHMARKS.md, issue 16). Failing (a kernel
    // before 3.15) changes nothing else.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = Cli::parse();
    let logging = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("DROVER_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Under systemd stderr goes to the journal, which stamps each line itself: a second
    // timestamp would only push the message to the right.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        logging.without_time().init();
    } else {
        logging.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("drover: starting the async runtime failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let now = Timestamp::from_system(std::time::SystemTime::now());
    let outcome = runtime.block_on(run(cli, now, &mut stdin.lock(), &mut stdout.lock()));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("drover: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
