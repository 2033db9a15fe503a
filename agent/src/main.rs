//! The `drover-agent` binary: parse the command line, run it, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser as _;
use drover_agent::{cli::Cli, run};
use drover_protocol::Timestamp;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let now = Timestamp::from_system(std::time::SystemTime::now());
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    match run(cli, now, &mut stdin.lock(), &mut stdout.lock(), &mut stderr.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("drover-agent: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
