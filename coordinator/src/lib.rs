//! drover's coordinator as a library: the operator CLI's commands (and, with the
//! coordinator issue, `drover serve`). The `drover` binary only parses and dispatches.

#![forbid(unsafe_code)]

pub mod blobs;
pub mod cli;
pub mod datadir;
pub mod error;
pub mod fleet;
pub mod keys;
pub mod metrics;
pub mod pki;
pub mod service;
pub mod store;

use std::io::{Read, Write};

use drover_protocol::Timestamp;

pub use error::Error;

/// Runs one `drover` command with the given clock and streams.
pub fn run(
    cli: cli::Cli,
    now: Timestamp,
    input: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<(), Error> {
    match cli.command {
        cli::Command::Keys(cli::KeysCommand::Init(args)) => keys::init(&args, now, out),
        cli::Command::Keys(cli::KeysCommand::Show(args)) => keys::show(&args, now, out),
        cli::Command::Keys(cli::KeysCommand::Sign(args)) => keys::sign(&args, input, out),
    }
}
