//! drover's host agent as a library. Today: `verify` and `verify-trust`, which run the
//! exact checks the agent applies to manifests and trust rotations before acting. The install loop comes with the agent issue.

#![forbid(unsafe_code)]

pub mod cli;
pub mod error;
pub mod verify;

use std::io::{Read, Write};

use drover_protocol::Timestamp;

pub use error::Error;

/// Runs one `drover-agent` command with the given clock and streams.
pub fn run(
    cli: cli::Cli,
    now: Timestamp,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), Error> {
    match cli.command {
        cli::Command::Verify(args) => verify::verify(&args, now, stdin, out, err),
        cli::Command::VerifyTrust(args) => verify::verify_trust(&args, now, out, err),
    }
}
