//! drover's coordinator: two programs in one binary.
//!
//! - [`server`]: `drover serve`, the HTTPS API agents and operators talk to, with its
//!   service, store, rollouts and PKI. Start reading at [`server::serve`].
//! - [`cli`]: the operator commands (`token`, `hosts`, `release`, `pin`, `rollout`, ...),
//!   which talk to a server's admin API and never import the server's modules. Start
//!   reading at [`cli::run`].
//!
//! Both use `drover-protocol` for what crosses the wire and a few modules of this crate
//! that belong to neither: [`datadir`] (where a coordinator keeps its files, and where the
//! CLI on the same machine finds its credentials), [`keydir`] (key directories), [`error`]
//! (errors and exit codes), [`reference`] (image references), [`tarball_check`] (the
//! program check both run on tarballs) and [`text`] (text for terminals). The entry point
//! ([`run`]) gives `drover serve` to the server and everything else to the CLI.

#![forbid(unsafe_code)]

pub mod cli;
pub mod datadir;
pub mod error;
pub mod keydir;
pub mod reference;
pub mod server;
pub mod tarball_check;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod text;

use std::io::{Read, Write};

use clap::{Parser, Subcommand};
use drover_protocol::Timestamp;

pub use error::Error;

/// drover: pull-based deployments for fleets of Linux hosts.
///
/// The coordinator signs a desired-state manifest per host; agents verify it against
/// their pinned trust document and converge. This binary runs the coordinator
/// (`drover serve`) and is the operator's CLI.
///
/// The operator commands (token, admin-token, hosts, groups, release, pin, hold, rollout,
/// status) talk to the coordinator's admin API. On the coordinator's machine they find
/// its address, admin token and CA in its data directory (--data-dir, default
/// /var/lib/drover-coordinator); from elsewhere, set DROVER_ADDR, DROVER_TOKEN (a named
/// token from `drover admin-token create`) and DROVER_CA. Every change is recorded with
/// the token's name, and --reason where given: see `drover history`.
///
/// Exit codes: 0 ok, 1 failure, 2 usage (bad arguments or spec), 3 not found, 4 refused
/// because of existing state.
#[derive(Debug, Parser)]
#[command(name = "drover", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `drover serve` or one of the operator commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator: HTTPS API for agents and operators.
    ///
    /// On first start it creates, in the data directory: the CA, the manifest-signing key
    /// and trust document (or uses --keys), the admin token and the SQLite database, all
    /// private files 0600. Later starts reuse them. SIGTERM drains and exits.
    ///
    /// Example: drover serve --listen 0.0.0.0:8443 --public-url https://deploy.example.com:8443
    Serve(server::serve::ServeArgs),
    /// The operator commands.
    #[command(flatten)]
    Operator(cli::args::Command),
}

/// Runs one `drover` command with the given clock and streams.
pub async fn run(cli: Cli, now: Timestamp, input: &mut dyn Read, out: &mut dyn Write) -> Result<(), Error> {
    match cli.command {
        Command::Serve(args) => server::run(args).await,
        Command::Operator(command) => cli::run(command, now, input, out).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
