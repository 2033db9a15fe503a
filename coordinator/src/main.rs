//! The `drover` binary: parse the command line, run it, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser as _;
use drover_coordinator::{cli::Cli, run};
use drover_protocol::Timestamp;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    match run(
        cli,
        Timestamp::from_system(std::time::SystemTime::now()),
        &mut stdin.lock(),
        &mut stdout.lock(),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("drover: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
