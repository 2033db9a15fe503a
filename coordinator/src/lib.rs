//! drover's coordinator as a library: `drover serve` and the operator CLI's commands.
//! The `drover` binary only parses and dispatches.

#![forbid(unsafe_code)]

pub mod blobs;
pub mod cli;
pub mod client;
pub mod datadir;
pub mod error;
pub mod fleet;
pub mod image;
pub mod keys;
pub mod metrics;
pub mod ops;
pub mod pki;
pub mod rollout;
pub mod serve;
pub mod server;
pub mod service;
pub mod store;
pub mod tarball_check;

use std::io::{Read, Write};

use drover_protocol::Timestamp;

use crate::cli::{AdminTokenCommand, Command, GroupsCommand, HostsCommand, KeysCommand, ReleaseCommand, TokenCommand};
use crate::client::AdminClient;
pub use error::Error;

/// Runs one `drover` command with the given clock and streams.
pub async fn run(cli: cli::Cli, now: Timestamp, input: &mut dyn Read, out: &mut dyn Write) -> Result<(), Error> {
    match cli.command {
        Command::Serve(args) => {
            let running = serve::start(serve::ServeOptions {
                listen: args.listen,
                data_dir: args.data_dir,
                public_url: args.public_url,
                keys: args.keys,
                manifest_ttl: args.manifest_ttl,
                server_names: args.server_names,
                host_certificate_validity: args.host_certificate_validity,
                server_certificate_validity: args.server_certificate_validity,
            })
            .await?;
            running.wait(Box::pin(termination())).await;
            Ok(())
        }
        Command::Keys(KeysCommand::Init(args)) => keys::init(&args, now, out),
        Command::Keys(KeysCommand::Show(args)) => keys::show(&args, now, out),
        Command::Keys(KeysCommand::Sign(args)) => keys::sign(&args, input, out),
        Command::Token(args) => {
            let client = AdminClient::from_env(&args.connection.data_dir)?;
            match &args.command {
                TokenCommand::Create(create) => ops::token_create(&client, create, out).await,
            }
        }
        Command::AdminToken(args) => {
            let client = AdminClient::from_env(&args.connection.data_dir)?;
            match &args.command {
                AdminTokenCommand::Create(create) => ops::admin_token_create(&client, create, out).await,
                AdminTokenCommand::List(list) => ops::admin_token_list(&client, list, now, out).await,
                AdminTokenCommand::Revoke(revoke) => ops::admin_token_revoke(&client, revoke, out).await,
            }
        }
        Command::Hosts(args) => {
            let client = AdminClient::from_env(&args.connection.data_dir)?;
            match &args.command {
                HostsCommand::List(list) => ops::hosts_list(&client, list, now, out).await,
                HostsCommand::Show(show) => ops::hosts_show(&client, show, now, out).await,
                HostsCommand::History(show) => ops::hosts_history(&client, show, out).await,
                HostsCommand::Label(label) => ops::hosts_label(&client, label, out).await,
                HostsCommand::Remove(remove) => ops::hosts_remove(&client, remove, out).await,
            }
        }
        Command::Groups(args) => {
            let client = AdminClient::from_env(&args.connection.data_dir)?;
            match &args.command {
                GroupsCommand::List(list) => ops::groups_list(&client, list, out).await,
                GroupsCommand::Create(create) => ops::groups_create(&client, create, out).await,
                GroupsCommand::Delete(delete) => ops::groups_delete(&client, delete, out).await,
            }
        }
        Command::Release(args) => {
            let client = AdminClient::from_env(&args.connection.data_dir)?;
            match &args.command {
                ReleaseCommand::Create(create) => ops::release_create(&client, create, out).await,
                ReleaseCommand::List(list) => ops::release_list(&client, list, out).await,
            }
        }
        Command::Pin(args) => ops::pin(&AdminClient::from_env(&args.connection.data_dir)?, &args, out).await,
        Command::Unpin(args) => ops::unpin(&AdminClient::from_env(&args.connection.data_dir)?, &args, out).await,
        Command::Hold(args) => {
            let client = AdminClient::from_env(&args.connection.data_dir)?;
            ops::hold(&client, &args, ops::HoldChange::Hold, out).await
        }
        Command::Unhold(args) => {
            let client = AdminClient::from_env(&args.connection.data_dir)?;
            ops::hold(&client, &args, ops::HoldChange::Unhold, out).await
        }
        Command::Rollout(command) => {
            let client = AdminClient::from_env(&command.connection().data_dir)?;
            ops::rollout(&client, &command, now, out).await
        }
        Command::Status(args) => ops::status(&AdminClient::from_env(&args.connection.data_dir)?, &args, out).await,
        Command::Pins(args) => ops::pins(&AdminClient::from_env(&args.connection.data_dir)?, &args, now, out).await,
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
