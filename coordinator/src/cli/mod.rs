//! The operator's CLI: every `drover` command but `serve`. Each parses its arguments
//! ([`args`]), finds the coordinator and an admin token ([`client`]), calls the admin API
//! and prints a table or JSON ([`ops`]). `drover keys` works on key files offline
//! ([`keys`]); `release create --image` resolves images at a registry ([`image`]).
//! Nothing here imports the server's modules: what both sides must agree on is in
//! `drover-protocol`.

pub mod args;
pub mod client;
pub mod image;
pub mod keys;
pub mod ops;
pub mod push;

use std::io::{Read, Write};

use drover_protocol::Timestamp;

use crate::error::Error;
use args::{AdminTokenCommand, Command, GroupsCommand, HostsCommand, KeysCommand, ReleaseCommand, TokenCommand};
use client::AdminClient;

/// Runs one operator command with the given clock and streams.
pub async fn run(command: Command, now: Timestamp, input: &mut dyn Read, out: &mut dyn Write) -> Result<(), Error> {
    match command {
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
        Command::Coordinators(args) => {
            ops::coordinators(&AdminClient::from_env(&args.connection.data_dir)?, &args, now, out).await
        }
        Command::Pins(args) => ops::pins(&AdminClient::from_env(&args.connection.data_dir)?, &args, now, out).await,
        Command::History(args) => {
            ops::history(&AdminClient::from_env(&args.connection.data_dir)?, &args, now, out).await
        }
    }
}
