//! The `drover-agent` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use drover_protocol::{HostId, Timestamp};

/// drover-agent: runs on every host, acts only on manifests its trust document vouches for.
#[derive(Debug, Parser)]
#[command(name = "drover-agent", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Agent commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll this host with a coordinator, using the line `drover token create` printed.
    ///
    /// Makes the host's own key (it never leaves the host), pins the coordinator's CA by
    /// the given sha256, and stores the client certificate, the CA and the trust
    /// document under the state directory; writes the coordinator URL(s) and host id to
    /// the config file. The CA answer must be exactly the one certificate with that sha256.
    /// Several URLs (replicas of one coordinator, comma-separated) are tried in order
    /// until one answers; the agent keeps them all and fails over between them.
    ///
    /// Example: drover-agent join https://deploy.example.com:8443 --token 3q2+... --ca-sha256 9f86d0...
    ///
    /// Example: drover-agent join https://deploy-a:8443,https://deploy-b:8443 --token 3q2+... --ca-sha256 9f86d0...
    Join(JoinArgs),
    /// Run the agent: poll the coordinator, install what it signed, report.
    ///
    /// Long-polls the host's manifest, accepts it only if the pinned trust vouches for
    /// it, installs each app's release beside the running one, switches, restarts its
    /// unit through systemd, checks health and rolls back on its own. Runs until
    /// SIGTERM; the apps keep running when it stops. Normally started by
    /// drover-agent.service.
    ///
    /// Example: drover-agent run --config /etc/drover/agent.toml
    Run(RunArgs),
    /// Show what this host runs, as the agent sees it (no network needed).
    ///
    /// Example: drover-agent status -o json
    Status(StatusArgs),
    /// Validate the configuration and the pinned trust document; exit 64 on bad config.
    ///
    /// Example: drover-agent check --config /etc/drover/agent.toml
    Check(CheckArgs),
    /// Verify a signed manifest exactly as the agent would before acting on it.
    ///
    /// Prints the payload on stdout and exits 0 when the manifest would be accepted;
    /// prints the one-line reason on stderr and exits 1 when it would be rejected.
    /// Nothing on the host changes either way.
    ///
    /// Example: drover-agent verify --trust keys/trust.json --host web-01 --last-serial 6 m.dsse
    Verify(VerifyArgs),
    /// Check that new trust documents would replace the pinned one, as the agent checks
    /// a rotation: each signed by a threshold of the current root keys and of its own
    /// root keys, with a higher version; the last one not expired.
    ///
    /// Prints the resulting trust document and exits 0, or the one-line reason and exits 1.
    ///
    /// Example: drover-agent verify-trust --trust /var/lib/drover/trust.json trust-v2.json
    VerifyTrust(VerifyTrustArgs),
}

/// Where the configuration comes from, shared by the commands that need it.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The config file.
    #[arg(long, env = "DROVER_AGENT_CONFIG", default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Override the host id (default: from the config, else the hostname).
    #[arg(long)]
    pub host_id: Option<String>,
    /// Override the state directory.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// Arguments of `drover-agent join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The coordinator URL, or several comma-separated (URL,URL,...): replicas of one
    /// coordinator, tried in this order.
    #[arg(value_name = "URL[,URL...]")]
    pub url: String,
    /// The one-time enrollment token.
    #[arg(long)]
    pub token: String,
    /// The sha256 of the coordinator's CA certificate, as printed by `drover token create`.
    #[arg(long)]
    pub ca_sha256: String,
    /// Replace an identity this host already has (a new key and certificate; the token
    /// must come from `drover token create --replace HOST`). The pinned trust document
    /// is never replaced by an older version over the same root keys, and the serial
    /// floor stays unless the coordinator's root keys differ.
    #[arg(long)]
    pub force: bool,
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `drover-agent run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Override the coordinator URLs (repeat for several; replaces the config's list).
    #[arg(long, value_name = "URL")]
    pub coordinator: Vec<String>,
    /// Override the heartbeat / poll interval (e.g. 30s).
    #[arg(long)]
    pub poll_interval: Option<String>,
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `drover-agent status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: crate::status::Output,
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `drover-agent check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `drover-agent verify-trust`.
#[derive(Debug, Args)]
pub struct VerifyTrustArgs {
    /// The pinned (current) trust document.
    #[arg(long, default_value = "/var/lib/drover/trust.json")]
    pub trust: PathBuf,
    /// The new trust document(s), applied in order (a rotation chain).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Arguments of `drover-agent verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The pinned trust document (a DSSE envelope).
    #[arg(long, default_value = "/var/lib/drover/trust.json")]
    pub trust: PathBuf,
    /// This host's id; the manifest must be for it.
    #[arg(long)]
    pub host: HostId,
    /// Serial of the last accepted manifest; the manifest's serial must be greater.
    #[arg(long)]
    pub last_serial: Option<u64>,
    /// Issued-at of the last accepted manifest (RFC 3339); expiry is judged against the
    /// later of this and the clock.
    #[arg(long, requires = "last_serial")]
    pub last_issued_at: Option<Timestamp>,
    /// Print the exact signed payload bytes instead of pretty JSON.
    #[arg(long)]
    pub raw: bool,
    /// The manifest envelope to verify, or `-` for stdin.
    pub file: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_token_starting_with_a_dash_parses_in_the_printed_form() {
        // Tokens are base64url: about one in 64 starts with '-'.
        let cli = Cli::try_parse_from([
            "drover-agent",
            "join",
            "https://c:8443",
            "--token=-evfvSS3XpNaGwGnMZ4SxJ",
            "--ca-sha256",
            "ab",
        ])
        .expect("parses");
        let Command::Join(args) = cli.command else {
            panic!("a join");
        };
        assert_eq!(args.token, "-evfvSS3XpNaGwGnMZ4SxJ");
    }

    #[test]
    fn a_join_takes_several_coordinators_as_one_comma_separated_argument() {
        let cli = Cli::try_parse_from([
            "drover-agent",
            "join",
            "https://a:8443,https://b:8443",
            "--token",
            "t",
            "--ca-sha256",
            "ab",
        ])
        .expect("parses");
        let Command::Join(args) = cli.command else {
            panic!("a join");
        };
        assert_eq!(args.url, "https://a:8443,https://b:8443");
        let cli = Cli::try_parse_from([
            "drover-agent",
            "run",
            "--coordinator",
            "https://a:8443",
            "--coordinator",
            "https://b:8443",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("a run");
        };
        assert_eq!(args.coordinator, ["https://a:8443", "https://b:8443"]);
    }
}
