//! The `drover` command line: what an operator types, with help that teaches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use drover_protocol::Duration;

/// drover: pull-based deployments for fleets of Linux hosts.
///
/// The coordinator signs a desired-state manifest per host; agents verify it against
/// their pinned trust document and converge. This binary runs the coordinator
/// (`drover serve`, coming with the coordinator issue) and is the operator's CLI.
#[derive(Debug, Parser)]
#[command(name = "drover", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator: HTTPS API for agents and operators.
    ///
    /// On first start it creates, in the data directory: the CA, the manifest-signing key
    /// and trust document (or uses --keys), the admin token and the SQLite database, all
    /// private files 0600. Later starts reuse them. SIGTERM drains and exits.
    ///
    /// Example: drover serve --listen 0.0.0.0:8443 --public-url https://deploy.example.com:8443
    Serve(ServeArgs),
    /// Create, inspect and use signing keys and trust documents.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// Arguments of `drover serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: std::net::SocketAddr,
    /// Data directory (database, CA, keys, admin token, artifacts).
    #[arg(long, env = "DROVER_DATA_DIR", default_value = crate::datadir::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// The URL hosts use to reach this coordinator; it goes into join commands and
    /// artifact URLs (default: https://<listen address>, 127.0.0.1 for 0.0.0.0).
    #[arg(long)]
    pub public_url: Option<String>,
    /// A key directory made by `drover keys init` (needs manifest.key and trust.json;
    /// root keys can stay offline). Default: <data-dir>/keys, created on first start.
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// How long each signed manifest is valid; manifests are re-signed at half of it.
    #[arg(long, default_value = "24h")]
    pub manifest_ttl: Duration,
    /// Extra DNS names or IP addresses for the server certificate (repeatable).
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
}

/// `drover keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create root keys, a manifest key and a signed trust.json in a new directory.
    ///
    /// Root keys sign trust documents (who may sign manifests); keep them offline after
    /// this. The manifest key is the one the coordinator signs manifests with. Every
    /// private key is written PKCS#8 PEM with mode 0600; existing keys are never
    /// overwritten (exit 4).
    ///
    /// Example: drover keys init --dir ./keys --root-keys 3 --root-threshold 2
    Init(InitArgs),
    /// Print the key ids in a directory and the trust document they belong to.
    Show(ShowArgs),
    /// Sign a payload read from stdin into a DSSE envelope written to stdout.
    ///
    /// Root operations happen on an offline machine: bring the payload there, sign, and
    /// bring the envelope back. Several --key flags add several signatures; with --append,
    /// stdin is an existing envelope and the signatures are added to it, so holders of
    /// different root keys can sign one after another.
    ///
    /// Example: drover keys sign --key keys/manifest.key --type manifest < m.json > m.dsse
    Sign(SignArgs),
}

/// Arguments of `drover keys init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to create the keys in (created 0700 if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// How many root keys to create.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub root_keys: u32,
    /// How many distinct root keys must sign a new trust document.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub root_threshold: u32,
    /// How long the trust document is valid (e.g. 365d); agents refuse everything after it.
    #[arg(long, default_value = "365d")]
    pub expires_in: Duration,
    /// Output format of the summary.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Arguments of `drover keys show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Directory holding *.key files and trust.json.
    #[arg(long)]
    pub dir: PathBuf,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Arguments of `drover keys sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Private key file(s) to sign with; repeat for several signatures.
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    /// Payload type: `manifest`, `trust`, or a full media type. Required unless --append.
    #[arg(long = "type")]
    pub payload_type: Option<String>,
    /// Read an envelope from stdin and add signatures to it instead of signing a payload.
    #[arg(long)]
    pub append: bool,
}

/// Output formats of read commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}
