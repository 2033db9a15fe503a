//! The `drover` command line: what an operator types, with help that teaches.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use drover_protocol::api::{HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX, Labels, Scope, TokenName};
use drover_protocol::{AppName, Digest, Duration, HostId, Version};

mod values;

pub use values::{LabelChange, When, parse_label_change, parse_labels, parse_reason, parse_when, parse_who};

/// The operator commands: everything but `drover serve`, which the entry point gives to
/// the server ([`crate::Command`]).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect and use signing keys and trust documents.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Create enrollment tokens: the one-line command that joins a new host.
    ///
    /// Example: drover token create --labels env=prod,region=eu --ttl 1h
    Token(TokenArgs),
    /// Named admin tokens for operators and pipelines: who did what, in the history.
    ///
    /// Every admin token can do everything; its name is what the history records as WHO
    /// for each change made with it. The coordinator's own admin.token is named `admin`.
    ///
    /// Examples:
    ///   drover admin-token create alice
    ///   drover admin-token create ci-deploy --ttl 90d
    ///   drover admin-token list
    ///   drover admin-token revoke alice
    // Verbatim keeps one example per line; `about` is then given so that command lists
    // show the summary without its full stop, like the others.
    #[command(
        verbatim_doc_comment,
        about = "Named admin tokens for operators and pipelines: who did what, in the history"
    )]
    AdminToken(AdminTokenArgs),
    /// List, inspect, label and remove enrolled hosts.
    ///
    /// Example: drover hosts label web-01 env=prod tier-
    Hosts(HostsArgs),
    /// Name sets of hosts by label selector, to pin or hold them together.
    ///
    /// Example: drover groups create prod-eu --selector env=prod,region=eu
    Groups(GroupsArgs),
    /// Create and list releases: an app version with its spec and artifact (a tar.gz or an
    /// OCI image).
    ///
    /// Example: drover release create web 1.4.2 --spec drover.toml --artifact web-1.4.2.tar.gz
    Release(ReleaseArgs),
    /// Set the release an app runs for the fleet, a group or one host.
    ///
    /// The most specific pin wins: a host pin over a group pin over the fleet pin. Only the
    /// hosts whose desired state changes get a new signed manifest; they pick it up within
    /// about a second. Pinning again replaces the scope's pin. Recorded in the app's
    /// history with the token's name and --reason.
    ///
    /// Example: drover pin web 1.4.1 --host web-07 --reason "1.4.2 leaks memory there"
    Pin(PinArgs),
    /// Remove a pin of an app for the fleet, a group or one host.
    ///
    /// The hosts it covered fall back to the next less specific pin, or stop running the app
    /// when no pin covers them any more. Recorded in the app's history.
    ///
    /// Example: drover unpin web --host web-01 --reason "fixed in 1.4.3"
    Unpin(UnpinArgs),
    /// Freeze the fleet, a group or one host: its agents apply no changes.
    ///
    /// Held hosts keep running what they run until `drover unhold` on the same scope. Pins
    /// can still be changed meanwhile; they apply on unhold. A hold stops every app, so it
    /// is recorded in every app's history.
    ///
    /// Example: drover hold --group prod-eu --reason "incident 4711"
    Hold(HoldArgs),
    /// Lift a hold set with `drover hold` on the same scope.
    ///
    /// Example: drover unhold --group prod-eu --reason "incident 4711 resolved"
    Unhold(HoldArgs),
    /// Move an app to a new release in stages that stop themselves on failures.
    ///
    /// Hosts are assigned to stages deterministically from the rollout's id, so `plan` shows
    /// exactly which hosts each stage will touch and `start` (run next, with the same
    /// options, on an unchanged fleet) does just that. A stage passes when each of its hosts
    /// is healthy on the target (or failed within --max-failures) and --bake has passed;
    /// a failed canary always pauses. When the last stage passes, the target becomes the
    /// app's fleet pin. One active rollout per app; commands the rollout's state does not
    /// allow exit 4.
    ///
    /// Examples:
    ///   drover rollout plan web 1.5.0 --stages canary,10%,50%,100% --bake 2m
    ///   drover rollout start web 1.5.0 --stages canary,10%,50%,100% --bake 2m --reason "fixes #812"
    ///   drover rollout status web
    ///   drover rollout watch web
    ///   drover rollout abort web --rollback --reason "error rate up"
    ///   drover rollout history web
    #[command(
        subcommand,
        verbatim_doc_comment,
        about = "Move an app to a new release in stages that stop themselves on failures"
    )]
    Rollout(RolloutCommand),
    /// Fleet summary per app: desired hosts, running versions and states, pins, releases.
    ///
    /// DESIRED counts the hosts whose manifest lists the app; VERSIONS and STATES (healthy,
    /// unhealthy, failed, rolled_back, ...) count hosts as they last reported, so a host that
    /// has not reported yet is not in them. PINS is what the app should run per scope:
    /// `fleet=1.4.2 group:eu=1.4.1 hosts=1.4.0:2` (two hosts pinned to 1.4.0; `drover pins`
    /// says which and who set them). Every app with releases or pins is listed, also with
    /// no host. The first line counts enrolled and held hosts.
    ///
    /// Example: drover status -o json
    Status(StatusArgs),
    /// List the coordinators serving the fleet's database, and which one leads.
    ///
    /// With `drover serve --database postgres://...` several coordinators (replicas) share
    /// one PostgreSQL: any of them answers agents and operators; one, the leader, runs the
    /// rollouts and re-signs manifests before they expire. If it stops, another takes the
    /// lead within seconds. HEARTBEAT says when each replica last said it was alive (every
    /// 5 s; "(silent)" after 15 s: stopped, or cut off from the database). A coordinator on
    /// SQLite lists itself alone, as the leader.
    ///
    /// Example: drover coordinators -o json
    Coordinators(StatusArgs),
    /// List pins (fleet, group and host) with who set them, when and why, and the holds.
    ///
    /// The app's history (`drover rollout history APP`) has every change; this is what is
    /// in force now. Pins set before the coordinator recorded who set them show `-`.
    ///
    /// Example: drover pins web
    Pins(PinsArgs),
    /// Who changed what in the fleet, when and why: every recorded change, newest first.
    ///
    /// One view over every history the coordinator keeps: each app's (rollouts, pins,
    /// holds; `drover rollout history APP`), each host id's (joins, replacements,
    /// certificate renewals, removals; `drover hosts history HOST`) and the fleet's admin
    /// changes (label changes, groups, admin tokens). WHO is the admin token's name
    /// (`controller` for what rollouts did by themselves, `host` for a renewal the host
    /// asked for); REASON is the --reason given. Filters combine. --app includes holds,
    /// which stop every app; --host shows the host id's own history and label changes
    /// (pins and holds of one host are in its app's lines). At most --limit lines, the
    /// newest: page back with --until (the AT of the last line shown).
    ///
    /// Examples:
    ///   drover history
    ///   drover history --host web-01 --since 7d
    ///   drover history --who alice --since 2026-12-01T00:00:00Z -o json
    #[command(
        verbatim_doc_comment,
        about = "Who changed what in the fleet, when and why: every recorded change, newest first"
    )]
    History(HistoryArgs),
}

/// Where the operator commands find the coordinator.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// The coordinator's data directory, where the CLI reads `address`, `admin.token` and
    /// `ca.pem` (admin.token is readable only by the coordinator's user). DROVER_ADDR,
    /// DROVER_TOKEN and DROVER_CA (a PEM file) override each one, e.g. on a laptop.
    #[arg(
        long,
        global = true,
        env = "DROVER_DATA_DIR",
        default_value = crate::datadir::DEFAULT_DATA_DIR,
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
}

/// `drover token ...`
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Where the coordinator is.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// `drover token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a single-use enrollment token and print the join command for the new host.
    ///
    /// Run the printed command as root on the host: its agent makes its own key, gets a
    /// client certificate and pins the coordinator's CA by the sha256 in the command. The
    /// token works once and expires after --ttl; the host gets --labels.
    ///
    /// Example: drover token create --labels env=prod,region=eu --ttl 1h
    Create(TokenCreateArgs),
}

/// Arguments of `drover token create`.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// Labels the joining host gets, e.g. env=prod,region=eu.
    #[arg(long, value_parser = parse_labels, value_name = "K=V,...")]
    pub labels: Option<Labels>,
    /// How long the token is valid (1s to 30d).
    #[arg(long, default_value = "1h")]
    pub ttl: Duration,
    /// Let the token enroll exactly this host id although it is taken: an enrolled host
    /// (a reinstalled machine; its old key and certificates stop working when the new one
    /// joins) or a removed one (its id is not reused otherwise). The host keeps the id's
    /// manifest serial, host pins and holds; its labels come from --labels. The token
    /// cannot be used for any other host id. Joins and replacements are recorded in the
    /// id's history (`drover hosts history HOST`, also while the host is removed).
    #[arg(long, value_name = "HOST")]
    pub replace: Option<HostId>,
    /// Print the join command although the coordinator's public URL is a loopback
    /// address (127.0.0.1) while it listens on other addresses: such a join line works
    /// only on the coordinator's own machine. Without it the coordinator refuses (exit 2)
    /// and says where to set --public-url.
    #[arg(long)]
    pub allow_loopback: bool,
    /// Every coordinator URL the host should know (replicas over one database, in the
    /// order the host tries them): the printed join line names them all instead of this
    /// coordinator's --public-url alone. Also read from DROVER_COORDINATORS.
    #[arg(long, env = "DROVER_COORDINATORS", value_delimiter = ',', value_name = "URL,...")]
    pub coordinators: Vec<String>,
    /// Output format: the join command alone, or the whole token as JSON.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `drover admin-token ...`
#[derive(Debug, Args)]
pub struct AdminTokenArgs {
    /// Where the coordinator is.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminTokenCommand,
}

/// `drover admin-token ...`
#[derive(Debug, Subcommand)]
pub enum AdminTokenCommand {
    /// Create a named admin token and print its secret (shown once, stored only hashed).
    ///
    /// Give it to the person or pipeline as DROVER_TOKEN, with DROVER_ADDR and DROVER_CA.
    /// Names are unique among tokens not revoked; an expired token's name can be reused.
    /// Recorded with the creating token's name and --reason in `drover history`.
    ///
    /// Examples:
    ///   drover admin-token create alice
    ///   drover admin-token create ci-deploy --ttl 90d -o json
    #[command(
        verbatim_doc_comment,
        about = "Create a named admin token and print its secret (shown once, stored only hashed)"
    )]
    Create(AdminTokenCreateArgs),
    /// List admin tokens (never their secrets): state, created, expires, last used.
    /// Revoked tokens stay listed, so every name in the history can be traced.
    ///
    /// Example: drover admin-token list -o json
    List(OutputArgs),
    /// Revoke an admin token: requests with it are refused at once (HTTP 401). Recorded
    /// with the revoking token's name and --reason in `drover history`.
    ///
    /// The last valid token cannot be revoked (exit 4): create another first. The
    /// data directory's `admin` can be revoked like any other once another exists; it
    /// stays revoked across restarts. Locked out? Delete admin.token in the data directory
    /// and restart `drover serve`: it makes a new `admin` token.
    ///
    /// Example: drover admin-token revoke alice --reason "left the team"
    Revoke(AdminTokenNameArgs),
}

/// Arguments of `drover admin-token create`.
#[derive(Debug, Args)]
pub struct AdminTokenCreateArgs {
    /// Its name: 1 to 32 characters of a-z, 0-9 and '-'; the history's WHO.
    pub name: TokenName,
    /// How long it is valid (1s to 3650d). Default: until revoked.
    #[arg(long)]
    pub ttl: Option<Duration>,
    /// Why, for the history (`drover history`).
    #[arg(long, value_parser = parse_reason)]
    pub reason: Option<String>,
    /// Output format: the secret with how to use it, or JSON.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Arguments of `drover admin-token revoke`.
#[derive(Debug, Args)]
pub struct AdminTokenNameArgs {
    /// The token's name.
    pub name: TokenName,
    /// Why, for the history (`drover history`).
    #[arg(long, value_parser = parse_reason)]
    pub reason: Option<String>,
}

/// `drover hosts ...`
#[derive(Debug, Args)]
pub struct HostsArgs {
    /// Where the coordinator is.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: HostsCommand,
}

/// `drover hosts ...`
#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// List enrolled hosts: labels, last contact, manifest serials, held, certificate
    /// expiry, apps.
    ///
    /// SERIAL is the host's current manifest; REPORTED is the one its agent last said it
    /// acted on (behind while it converges or when it is offline). CERT EXPIRES is when the
    /// host's newest client certificate expires, marked `!` when that is less than 30 days
    /// away: agents renew theirs when a third of its lifetime is left, so a mark means the
    /// host has not reached the coordinator for a long time (or runs an agent that does not
    /// renew); once it expires the host must be re-joined (`token create --replace HOST`).
    ///
    /// Example: drover hosts list -o json
    List(OutputArgs),
    /// Show one host: labels, facts, its certificate's expiry, each app's desired and
    /// running release and state, the last manifest rejection, recent events, and the
    /// id's history (joins, replacements, certificate renewals, removals; who, when, and
    /// the sha256 of the old and new certificate).
    ///
    /// Example: drover hosts show web-01
    Show(HostShowArgs),
    /// Set or remove labels of a host: k=v sets, k- removes.
    ///
    /// Labels decide which groups a host is in, so its pins and holds may change with them;
    /// the command prints whether the host got a new manifest. Recorded with the token's
    /// name and --reason in `drover history`.
    ///
    /// Example: drover hosts label web-01 env=prod region=eu canary- --reason "moved to eu"
    Label(HostLabelArgs),
    /// Remove a host: its key and certificates stop working at once. Its id stays
    /// reserved (with its host pins and holds): to bring it back, create a token with
    /// `drover token create --replace HOST` and join it again. Recorded with the token's
    /// name and --reason in `hosts show` and `drover history`.
    ///
    /// Example: drover hosts remove web-01 --reason "decommissioned, ticket 4711"
    Remove(HostIdArgs),
    /// The history of a host id, also while it is removed: every join, replacement
    /// (--replace), certificate renewal and removal, with who did it (the admin token that
    /// made the join token or removed the host; `host` for a renewal), when, and the
    /// sha256 of the old and new certificate.
    ///
    /// Example: drover hosts history web-01
    History(HostShowArgs),
}

/// Just the output format.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Arguments of `drover hosts show`.
#[derive(Debug, Args)]
pub struct HostShowArgs {
    /// The host id.
    pub id: HostId,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Arguments of `drover hosts label`.
#[derive(Debug, Args)]
pub struct HostLabelArgs {
    /// The host id.
    pub id: HostId,
    /// Changes: `key=value` sets a label, `key-` removes one.
    #[arg(required = true, value_parser = parse_label_change, value_name = "K=V|K-")]
    pub changes: Vec<LabelChange>,
    /// Why, for the history (`drover history`).
    #[arg(long, value_parser = parse_reason)]
    pub reason: Option<String>,
}

/// Arguments of `drover hosts remove`.
#[derive(Debug, Args)]
pub struct HostIdArgs {
    /// The host id.
    pub id: HostId,
    /// Why, for the history (`drover history`, `drover hosts history`).
    #[arg(long, value_parser = parse_reason)]
    pub reason: Option<String>,
}

/// `drover groups ...`
#[derive(Debug, Args)]
pub struct GroupsArgs {
    /// Where the coordinator is.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: GroupsCommand,
}

/// `drover groups ...`
#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List groups with their selectors and how many hosts each matches now.
    ///
    /// Example: drover groups list
    List(OutputArgs),
    /// Create a group, or change the selector of an existing one.
    ///
    /// A host is in the group when it has every label of the selector. Hosts that enter
    /// or leave the group get new manifests when the group has pins or holds. Recorded
    /// with the token's name and --reason in `drover history`.
    ///
    /// Example: drover groups create prod-eu --selector env=prod,region=eu
    Create(GroupCreateArgs),
    /// Delete a group. Refused (exit 4) while pins or holds use it: unpin and unhold first.
    /// Recorded with the token's name and --reason in `drover history`.
    ///
    /// Example: drover groups delete prod-eu --reason "region closed"
    Delete(GroupNameArgs),
}

/// Arguments of `drover groups create`.
#[derive(Debug, Args)]
pub struct GroupCreateArgs {
    /// The group's name: a-z, 0-9 and '-'.
    pub name: String,
    /// Labels a host must all have to be in the group, e.g. env=prod,region=eu.
    #[arg(long, required = true, value_parser = parse_labels, value_name = "K=V,...")]
    pub selector: Labels,
    /// Why, for the history (`drover history`).
    #[arg(long, value_parser = parse_reason)]
    pub reason: Option<String>,
}

/// Arguments of `drover groups delete`.
#[derive(Debug, Args)]
pub struct GroupNameArgs {
    /// The group's name.
    pub name: String,
    /// Why, for the history (`drover history`).
    #[arg(long, value_parser = parse_reason)]
    pub reason: Option<String>,
}

/// `drover release ...`
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Where the coordinator is.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: ReleaseCommand,
}

/// `drover release ...`
#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Create a release: the app spec (drover.toml) and an artifact pinned by sha256 (a
    /// tar.gz, or an OCI image). Releases are immutable.
    ///
    /// --artifact FILE: the file is hashed, then uploaded to the coordinator's store
    /// (streamed, with progress on stderr); hosts download it from the coordinator.
    /// --artifact URL (http:// or https://): hosts download it from there. Give --digest and
    /// --size to skip all network access here; with --digest alone the size comes from a
    /// HEAD request; without --digest the file is downloaded once to compute both (it is
    /// not stored). A tarball release needs service.command in its spec.
    ///
    /// --image REF (registry/repository:tag or registry/repository@sha256:...): this
    /// machine asks the registry, now, which image REF names for --platform (linux/amd64
    /// unless given; through an image index if REF is one), checks the manifests' sha256
    /// and that it is a container image, and the release records only
    /// registry/repository@sha256:<image manifest digest>. Hosts pull exactly that
    /// digest: moving the tag later changes no release. The coordinator never talks to
    /// the registry; hosts use their own registry credentials. The reference names its
    /// registry (Docker Hub is docker.io/library/NAME); there is no implicit :latest.
    /// Without service.command the image's Entrypoint and Cmd run.
    ///
    /// --artifact FILE --registry REGISTRY/REPO (or DROVER_REGISTRY): the file is checked
    /// and hashed, then pushed from this machine to that OCI registry repository as an
    /// OCI artifact (one tar.gz layer, tagged APP-VERSION), instead of being uploaded to
    /// the coordinator; the release records registry/repository@sha256:<artifact manifest
    /// digest> and the tarball's digest. Hosts fetch it from the registry by digest with
    /// their own registry settings (agent.toml [registries."HOST[:PORT]"]). For several
    /// coordinators, which share no disk (started with --artifact-registry PREFIX, they
    /// name the registry themselves: --registry may be left out). --registry-insecure, --registry-ca and
    /// --registry-user apply as for --image.
    ///
    /// The spec is checked before anything is uploaded or resolved. Creating the same
    /// version again with the same content succeeds; with another artifact or spec it is
    /// refused (exit 4): use a new version.
    ///
    /// Example: drover release create web 1.4.2 --spec drover.toml --artifact web-1.4.2.tar.gz
    /// Example: drover release create web 1.4.2 --spec drover.toml --image registry.example.com/web:1.4.2
    /// Example: drover release create web 1.4.2 --spec drover.toml --image registry.example.com/web:1.4.2 \
    ///              --platform linux/arm64 --registry-user ci --registry-password-file pw.txt
    /// Example: drover release create web 1.4.3 --spec drover.toml --image 10.0.0.5:5000/web:1.4.3 \
    ///              --registry-insecure
    /// Example: drover release create web 1.4.4 --spec drover.toml --artifact web-1.4.4.tar.gz \
    ///              --registry registry.example.com/drover/web
    #[command(
        verbatim_doc_comment,
        about = "Create a release: the app spec and a tar.gz or an OCI image, pinned by sha256"
    )]
    Create(Box<ReleaseCreateArgs>),
    /// List an app's releases, newest first.
    ///
    /// Example: drover release list web -o json
    List(ReleaseListArgs),
}

/// Arguments of `drover release create`: exactly one of --artifact and --image.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["artifact", "image"])))]
// An --artifact FILE may be pushed to the registry the coordinator names: the registry
// flags are checked against it at run time (`release_create`).
#[command(group(clap::ArgGroup::new("registry_target").multiple(true).args(["image", "push_registry", "artifact"])))]
pub struct ReleaseCreateArgs {
    /// The app: a-z, 0-9 and '-', e.g. web.
    pub app: AppName,
    /// The version, e.g. 1.4.2 (becomes a directory name on hosts).
    #[arg(id = "release_version", value_name = "VERSION")]
    pub version: Version,
    /// The app spec: how the app runs (service, health checks, sandbox, ...).
    #[arg(long, value_name = "drover.toml")]
    pub spec: PathBuf,
    /// The tar.gz: a local file to upload, or an http(s):// URL hosts download from.
    #[arg(long, value_name = "FILE|URL")]
    pub artifact: Option<String>,
    /// The artifact's sha256 (`sha256:<64 hex>`); checked against a local FILE.
    #[arg(long, conflicts_with = "image")]
    pub digest: Option<Digest>,
    /// The artifact's size in bytes (with --digest, for a URL: no network access here).
    #[arg(long, value_name = "BYTES", conflicts_with = "image")]
    pub size: Option<u64>,
    /// An OCI image instead of a tarball: registry/repository:tag or
    /// registry/repository@sha256:..., resolved here to the digest of its image manifest.
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Push --artifact FILE to this OCI registry repository (e.g.
    /// registry.example.com/drover/web) instead of uploading it to the coordinator.
    /// Without it, a coordinator started with --artifact-registry PREFIX gets the file
    /// pushed to PREFIX/APP.
    #[arg(long = "registry", value_name = "REGISTRY/REPO", env = "DROVER_REGISTRY")]
    pub push_registry: Option<String>,
    /// Registry access for resolving --image or pushing to --registry.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// How `drover release create --image` (or `--registry`) reaches the registry (this
/// machine only; hosts have their own registry settings).
#[derive(Debug, Args)]
#[command(next_help_heading = "Registry (with --image, --registry or a coordinator's --artifact-registry)")]
pub struct RegistryArgs {
    /// The platform hosts run: OS/ARCH[/VARIANT]. Picks the entry of an image index, and
    /// must match the image's config [default: linux/amd64]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", conflicts_with = "artifact")]
    pub platform: Option<String>,
    /// Speak plain HTTP to the registry (only for one on loopback or a private network).
    #[arg(long, requires = "registry_target")]
    pub registry_insecure: bool,
    /// A PEM file with the CA that issued the registry's certificate (trusted besides the
    /// system's roots).
    #[arg(
        long,
        value_name = "FILE",
        requires = "registry_target",
        conflicts_with = "registry_insecure"
    )]
    pub registry_ca: Option<PathBuf>,
    /// The registry user (basic auth); the password comes from --registry-password-file
    /// or the environment variable DROVER_REGISTRY_PASSWORD.
    #[arg(long, value_name = "USER", requires = "registry_target")]
    pub registry_user: Option<String>,
    /// A file holding the registry password (one trailing newline is ignored).
    #[arg(long, value_name = "FILE", requires = "registry_user")]
    pub registry_password_file: Option<PathBuf>,
}

/// Arguments of `drover release list`.
#[derive(Debug, Args)]
pub struct ReleaseListArgs {
    /// The app.
    pub app: AppName,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Where a pin or hold applies: the fleet (no flag), a group, or one host.
#[derive(Debug, Clone, Args)]
pub struct ScopeArgs {
    /// Only the hosts of this group.
    #[arg(long, value_name = "GROUP", conflicts_with = "host")]
    pub group: Option<String>,
    /// Only this host.
    #[arg(long, value_name = "HOST")]
    pub host: Option<HostId>,
}

impl ScopeArgs {
    /// The scope the flags name.
    pub fn scope(&self) -> Scope {
        match (&self.group, &self.host) {
            (Some(group), _) => Scope::Group(group.clone()),
            (None, Some(host)) => Scope::Host(host.clone()),
            (None, None) => Scope::Fleet,
        }
    }
}

/// Arguments of `drover pin`.
#[derive(Debug, Args)]
pub struct PinArgs {
    /// The app.
    pub app: AppName,
    /// The release version it should run (made with `drover release create`).
    #[arg(id = "release_version", value_name = "VERSION")]
    pub version: Version,
    /// Where (default: the whole fleet).
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Why, for the history (`drover rollout history APP`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Where the coordinator is.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// Arguments of `drover unpin`.
#[derive(Debug, Args)]
pub struct UnpinArgs {
    /// The app.
    pub app: AppName,
    /// Which pin (default: the fleet pin).
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Why, for the history (`drover rollout history APP`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Where the coordinator is.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// Arguments of `drover hold` and `drover unhold`.
#[derive(Debug, Args)]
pub struct HoldArgs {
    /// Where (default: the whole fleet).
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Why, for the history (`drover rollout history APP`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Where the coordinator is.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// Arguments of `drover status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Where the coordinator is.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// Arguments of `drover pins`.
#[derive(Debug, Args)]
pub struct PinsArgs {
    /// Only this app's pins (holds are listed either way: they stop every app).
    pub app: Option<AppName>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Where the coordinator is.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// Arguments of `drover history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only lines about this app (and holds, which stop every app).
    #[arg(long)]
    pub app: Option<AppName>,
    /// Only lines about this host id: joins, replacements, renewals, removal, labels.
    #[arg(long)]
    pub host: Option<HostId>,
    /// Only lines by this admin token name (or `controller`, or `host`).
    #[arg(long, value_parser = parse_who, value_name = "NAME")]
    pub who: Option<String>,
    /// Only lines since then: a duration back from now (`30m`, `7d`) or an instant in
    /// RFC 3339 UTC (`2026-12-01T00:00:00Z`).
    #[arg(long, value_parser = parse_when, value_name = "DURATION|RFC3339")]
    pub since: Option<When>,
    /// Only lines until then (that second included), like --since: to page back past
    /// --limit, give the AT of the last line shown.
    #[arg(long, value_parser = parse_when, value_name = "DURATION|RFC3339")]
    pub until: Option<When>,
    /// At most this many lines, the newest (1 to 1000).
    #[arg(
        long,
        default_value_t = HISTORY_LIMIT_DEFAULT,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(HISTORY_LIMIT_MAX))
    )]
    pub limit: u32,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Where the coordinator is.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// `drover rollout ...`
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Show which hosts each stage would touch, changing nothing.
    ///
    /// Example: drover rollout plan web 1.5.0 --stages canary,10%,50%,100%
    Plan(RolloutSpecArgs),
    /// Start a rollout (refused, exit 4, while the app has an active one).
    ///
    /// Example: drover rollout start web 1.5.0 --max-in-flight 5 --bake 2m --reason "fixes #812"
    Start(RolloutSpecArgs),
    /// Per stage: hosts done / in flight / failed / waiting, bake countdown, ETA.
    ///
    /// Example: drover rollout status web -o json
    Status(RolloutAppArgs),
    /// Follow a rollout until it ends: a progress bar per stage (done / in flight / failed,
    /// bake countdown), the phase and why it is paused, and the ETA.
    ///
    /// On a terminal the display is redrawn in place every second; otherwise (CI logs) the
    /// same lines are appended whenever something other than a countdown changed. With -o
    /// json, one status object per line (NDJSON) on every such change. Exits 0 when the
    /// rollout completed, 1 when the failure breaker paused it, or it was aborted or rolled
    /// back; a pause by an operator or a wait for approval keeps watching.
    ///
    /// Examples:
    ///   drover rollout watch web
    ///   drover rollout watch web -o json | jq -c '{phase, stage}'
    #[command(
        verbatim_doc_comment,
        about = "Follow a rollout until it ends: a progress bar per stage (done / in flight / failed, bake countdown), the phase and why it is paused, and the ETA"
    )]
    Watch(RolloutAppArgs),
    /// Pin no more hosts; hosts already changing finish. Resume with `resume`.
    ///
    /// Example: drover rollout pause web --reason "investigating latency"
    Pause(RolloutCommandArgs),
    /// Continue a rollout paused by an operator or by the failure breaker (accepting the
    /// risk: the next failure pauses it again).
    ///
    /// Example: drover rollout resume web --reason "latency was the load balancer"
    Resume(RolloutCommandArgs),
    /// Start the next stage of a rollout made with --approve-each-stage.
    ///
    /// Example: drover rollout approve web
    Approve(RolloutCommandArgs),
    /// Stop the rollout: every host it pinned returns to the pin it had before (group or
    /// fleet), so it reinstalls its previous release. --rollback records that intent.
    ///
    /// Example: drover rollout abort web --rollback --reason "error rate up"
    Abort(RolloutAbortArgs),
    /// Who did what when and why: rollouts and their steps, pauses, aborts, pins and holds.
    ///
    /// WHO is the name of the admin token used (`controller` for what the rollout did by
    /// itself); REASON is the --reason given. Holds stop every app on their hosts, so they
    /// are in every app's history (their app is null in JSON).
    ///
    /// Example: drover rollout history web -o json
    History(RolloutAppArgs),
}

/// The rollout options of `plan` and `start`; defaults are the coordinator's.
#[derive(Debug, Args)]
pub struct RolloutSpecArgs {
    /// The app.
    pub app: AppName,
    /// The target release (made with `drover release create`).
    #[arg(id = "release_version", value_name = "VERSION")]
    pub version: String,
    /// Stages in order: `canary` (one host) first if wanted, then growing percentages
    /// ending at 100%. Default: canary,50%,100%.
    #[arg(long, value_name = "canary,10%,50%,100%", conflicts_with = "groups")]
    pub stages: Option<String>,
    /// Stages by group, in order (`canary,a,b` allowed); hosts in no listed group form a
    /// last `rest` stage.
    #[arg(long, value_name = "a,b,c")]
    pub groups: Option<String>,
    /// Most hosts changing at once: a count or a percentage of the rollout's hosts.
    /// Default: 10% (at least one).
    #[arg(long, value_name = "N|P%")]
    pub max_in_flight: Option<String>,
    /// How long each stage must stay healthy before the next starts. Default: 0s.
    #[arg(long, value_name = "DURATION")]
    pub bake: Option<String>,
    /// Failures tolerated before the breaker trips (a failed canary always trips it).
    /// Default: 0.
    #[arg(long, value_name = "N|P%")]
    pub max_failures: Option<String>,
    /// What the breaker does: pause (wait for an operator) or rollback (return every
    /// touched host to its previous release). Default: pause.
    #[arg(long, value_name = "pause|rollback")]
    pub on_failure: Option<String>,
    /// Wait for `drover rollout approve` before each stage after the first.
    #[arg(long)]
    pub approve_each_stage: bool,
    /// How long a pinned host has to become healthy on the target before it counts as
    /// failed. Default: 10m.
    #[arg(long, value_name = "DURATION")]
    pub host_deadline: Option<String>,
    /// Why, for the history.
    #[arg(long)]
    pub reason: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Where the coordinator is.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// Arguments naming an app's rollout.
#[derive(Debug, Args)]
pub struct RolloutAppArgs {
    /// The app.
    pub app: AppName,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Where the coordinator is.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// Arguments of `pause`, `resume` and `approve`.
#[derive(Debug, Args)]
pub struct RolloutCommandArgs {
    /// The app.
    pub app: AppName,
    /// Why, for the history.
    #[arg(long)]
    pub reason: Option<String>,
    /// Where the coordinator is.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// Arguments of `abort`.
#[derive(Debug, Args)]
pub struct RolloutAbortArgs {
    /// The app.
    pub app: AppName,
    /// Record the abort as a rollback (the same actions: touched hosts return to their
    /// previous release).
    #[arg(long)]
    pub rollback: bool,
    /// Why, for the history.
    #[arg(long)]
    pub reason: Option<String>,
    /// Where the coordinator is.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

impl RolloutCommand {
    /// Where the coordinator is.
    pub fn connection(&self) -> &ConnectionArgs {
        match self {
            RolloutCommand::Plan(args) | RolloutCommand::Start(args) => &args.connection,
            RolloutCommand::Status(args) | RolloutCommand::Watch(args) | RolloutCommand::History(args) => {
                &args.connection
            }
            RolloutCommand::Pause(args) | RolloutCommand::Resume(args) | RolloutCommand::Approve(args) => {
                &args.connection
            }
            RolloutCommand::Abort(args) => &args.connection,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let scope = |group: Option<&str>, host: Option<&str>| {
            ScopeArgs {
                group: group.map(str::to_owned),
                host: host.map(|host| host.parse().expect("host")),
            }
            .scope()
        };
        assert_eq!(scope(None, None), Scope::Fleet);
        assert_eq!(scope(Some("eu"), None), Scope::Group("eu".into()));
        assert_eq!(
            scope(None, Some("web-01")),
            Scope::Host("web-01".parse().expect("host"))
        );
    }
}
