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
pub mod serve;
pub mod server;
pub mod service;
pub mod store;

use std::io::{Read, Write};

use drover_protocol::Timestamp;

pub use error::Error;

/// Runs one `drover` command with the given clock and streams.
pub async fn run(cli: cli::Cli, now: Timestamp, input: &mut dyn Read, out: &mut dyn Write) -> Result<(), Error> {
    match cli.command {
        cli::Command::Serve(args) => {
            let running = serve::start(serve::ServeOptions {
                listen: args.listen,
                data_dir: args.data_dir,
                public_url: args.public_url,
                keys: args.keys,
                manifest_ttl: args.manifest_ttl,
                server_names: args.server_names,
            })
            .await?;
            running.wait(Box::pin(termination())).await;
            Ok(())
        }
        cli::Command::Keys(cli::KeysCommand::Init(args)) => keys::init(&args, now, out),
        cli::Command::Keys(cli::KeysCommand::Show(args)) => keys::show(&args, now, out),
        cli::Command::Keys(cli::KeysCommand::Sign(args)) => keys::sign(&args, input, out),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers there is nothing to wait for but the process's end.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}
