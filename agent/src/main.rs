//! The `drover-agent` binary: install the TLS crypto provider, parse the command line,
//! run it, map the outcome to an exit code (64 for bad configuration).

use std::process::ExitCode;

use clap::Parser as _;
use drover_agent::{cli::Cli, run};
use drover_protocol::Timestamp;

fn main() -> ExitCode {
    if rustls::crypto::ring::default_provider().install_default().is_err() {
        eprintln!("drover-agent: a TLS crypto provider was already installed");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("drover-agent: starting the async runtime failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let now = Timestamp::from_system(std::time::SystemTime::now());
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let outcome = runtime.block_on(run(cli, now, &mut stdin.lock(), &mut stdout.lock(), &mut stderr.lock()));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("drover-agent: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
