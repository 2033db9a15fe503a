//! The HTTP APIs' request and response bodies: enrollment and the agent endpoints
//! (mTLS), and the operator's admin API (bearer token). Signed documents travel as
//! their own envelopes; everything here is plain JSON over TLS.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::NameError;
use crate::names::{AppName, Digest, HostId, Version, validated_string};
use crate::report::{AgentFacts, AppState, ReportEvent};
use crate::spec::AppSpec;
use crate::time::{Duration, Timestamp};

/// Largest body of any JSON request (reports have their own, smaller limit).
pub const MAX_JSON_BODY: usize = 1024 * 1024;
/// Longest `?wait=` a manifest long-poll may ask for, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 300;

/// The error body of every 4xx and 5xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable, machine-readable code, e.g. `token_expired`.
    pub code: String,
    /// What was wrong and what to do, for people.
    pub error: String,
}

/// Host labels: `env=prod`, `region=eu`.
pub type Labels = BTreeMap<String, String>;

/// `POST /v1/join`: a host enrolls with a one-time token and a CSR for a key it made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The enrollment token from `drover token create`.
    pub token: String,
    /// The host id the agent asks for; the CSR's common name must be the same.
    pub host_id: HostId,
    /// PEM certificate signing request for the agent's own key.
    pub csr_pem: String,
    /// Facts about the host.
    pub facts: AgentFacts,
}

/// The answer to a successful join.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The host id the certificate is bound to.
    pub host_id: HostId,
    /// The host's client certificate (PEM), for mTLS from now on.
    pub certificate_pem: String,
    /// The coordinator's CA certificate (PEM).
    pub ca_pem: String,
    /// The trust document envelope (JSON text) the host pins.
    pub trust: String,
    /// Labels the host was given (from the token).
    pub labels: Labels,
}

/// `POST /v1/agent/certificate`: a joined host renews its client certificate over its
/// current mTLS identity, well before the certificate expires. The CSR is for the key
/// the host already holds (the coordinator refuses any other key), so renewal changes
/// one file on the host (its certificate) and a crash at any point leaves a working
/// identity: the old certificate stays valid until its own expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PEM certificate signing request for the host's current key; its common name is
    /// the host id.
    pub csr_pem: String,
}

/// The answer to a renewal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewResponse {
    /// The new client certificate (PEM).
    pub certificate_pem: String,
    /// When it expires.
    pub not_after: Timestamp,
}

/// When a certificate valid from `not_before` to `not_after` is due for renewal: once
/// less than a third of its lifetime is left (122 days before a 365-day certificate
/// expires), so a coordinator that is down for a while still leaves months to retry.
/// The coordinator applies it to its server certificate, agents to their own.
pub fn renewal_due_at(not_before: Timestamp, not_after: Timestamp) -> Timestamp {
    let lifetime = not_after.unix().saturating_sub(not_before.unix()).max(0);
    Timestamp::from_unix(not_after.unix() - lifetime / 3)
}

/// A certificate expiring sooner than this is counted in the coordinator's
/// `drover_host_certificates_expiring_soon` and marked in `drover hosts list`.
pub const CERTIFICATE_EXPIRING_SOON: Duration = Duration::from_secs(30 * 86_400);

/// Largest artifact a coordinator stores: the server refuses bigger uploads and
/// `drover release create` refuses them before uploading.
pub const MAX_ARTIFACT_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// True when every label of a group's `selector` is on the host with the same value: how
/// the coordinator resolves groups and how `drover groups list` counts their hosts.
pub fn selector_matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(key, value)| labels.get(key) == Some(value))
}

/// `POST /v1/admin/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Labels given to the host that joins with this token.
    #[serde(default)]
    pub labels: Labels,
    /// How long the token is valid.
    pub ttl: Duration,
    /// The one host id this token may take over (a reinstalled or removed machine,
    /// keeping the id's host pins and holds); none: only a host id never used before.
    /// An older client's `true` is refused with a message saying so.
    #[serde(
        default,
        deserialize_with = "replace_target",
        skip_serializing_if = "Option::is_none"
    )]
    pub replace: Option<HostId>,
    /// Make the token although the coordinator's public URL is a loopback address while
    /// it listens on other addresses too (`drover token create --allow-loopback`): a join
    /// line with 127.0.0.1 works only on the coordinator's own machine.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_loopback: bool,
}

/// The error code of a token refused because the public URL is a loopback address
/// while the coordinator listens on other addresses.
pub const LOOPBACK_PUBLIC_URL: &str = "loopback_public_url";

/// `TokenRequest::replace`: a host id; `false` (what older clients send by default) is
/// none; `true` (an older client's "any host") is refused.
fn replace_target<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<HostId>, D::Error> {
    use serde::de::Error as _;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Host(String),
        Flag(bool),
    }
    match Option::<Wire>::deserialize(deserializer)? {
        None | Some(Wire::Flag(false)) => Ok(None),
        Some(Wire::Flag(true)) => Err(D::Error::custom(
            "replace must name the one host id the token may take over (drover token create --replace HOST); a replace token for any host is no longer made (is this drover older than the coordinator?)",
        )),
        Some(Wire::Host(text)) => text.parse().map(Some).map_err(D::Error::custom),
    }
}

/// A new enrollment token; the secret is shown once and stored only hashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The secret.
    pub token: String,
    /// When it stops working.
    pub expires_at: Timestamp,
    /// The one-line join command for the host.
    pub join_command: String,
}

/// The name `drover serve` gives the admin token it creates in its data directory
/// (`admin.token`) on first start.
pub const BOOTSTRAP_TOKEN_NAME: &str = "admin";
/// The `who` of history lines the rollout controller records by itself (reports,
/// timers); no admin token can have this name.
pub const CONTROLLER_NAME: &str = "controller";

validated_string!(
    /// The name of an admin token: 1 to 32 characters of `[a-z0-9-]`, starting with a
    /// letter or digit. It is the `who` of everything the token's requests record, so it
    /// can be neither `controller` (see [`CONTROLLER_NAME`]) nor hold spaces or control
    /// characters that would forge a history line.
    TokenName,
    check_token_name
);

fn check_token_name(text: &str) -> Result<(), NameError> {
    let ok = (1..=32).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-');
    if !ok {
        return Err(NameError::new(
            "admin token name",
            text,
            "1 to 32 characters of a-z, 0-9 and '-', not starting with '-'",
        ));
    }
    if text == CONTROLLER_NAME {
        return Err(NameError::new(
            "admin token name",
            text,
            "a name other than controller (the history's name for what rollouts do by themselves)",
        ));
    }
    Ok(())
}

/// `POST /v1/admin/admin-tokens`: a named admin token for an operator or a pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenRequest {
    /// Its name: the `who` of everything done with it.
    pub name: TokenName,
    /// How long it is valid; none: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
}

/// A new admin token; the secret is shown once and stored only hashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminTokenCreated {
    /// Its name.
    pub name: TokenName,
    /// The secret, for `Authorization: Bearer` (the CLI reads it from `DROVER_TOKEN`).
    pub token: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
}

/// Whether an admin token works.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminTokenState {
    /// It works.
    Active,
    /// Its `--ttl` ran out.
    Expired,
    /// `drover admin-token revoke` (or a replaced `admin.token`) ended it.
    Revoked,
}

/// One admin token of `GET /v1/admin/admin-tokens` and the answer of `DELETE
/// /v1/admin/admin-tokens/{name}`; never its secret. Revoked tokens stay listed, so the
/// names in the history can always be traced to when they were valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminTokenInfo {
    /// Its name.
    pub name: TokenName,
    /// Whether it works now.
    pub state: AdminTokenState,
    /// When it was made.
    pub created_at: Timestamp,
    /// The token that made it (`drover serve` for the data directory's `admin`).
    pub created_by: String,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// When a request last came with it (updated at most once a minute).
    pub last_used_at: Option<Timestamp>,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// The token that revoked it.
    pub revoked_by: Option<String>,
}

/// Where a pin or hold applies.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Scope {
    /// Every host.
    Fleet,
    /// The hosts a group's selector matches.
    Group(String),
    /// One host.
    Host(HostId),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Fleet => f.write_str("fleet"),
            Scope::Group(name) => write!(f, "group {name}"),
            Scope::Host(id) => write!(f, "host {id}"),
        }
    }
}

/// One host as the coordinator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSummary {
    /// Its id.
    pub id: HostId,
    /// Its labels.
    pub labels: Labels,
    /// When it joined.
    pub joined_at: Timestamp,
    /// When it was last heard from (any request).
    pub last_seen: Option<Timestamp>,
    /// The serial of its current manifest.
    pub manifest_serial: u64,
    /// The serial it last reported acting on.
    pub reported_serial: Option<u64>,
    /// Whether its manifest holds it.
    pub held: bool,
    /// Per app: what it runs and in which state.
    pub apps: BTreeMap<AppName, HostApp>,
    /// Facts the agent reported.
    pub facts: Option<AgentFacts>,
    /// When its newest client certificate expires (none: not known yet, for a host
    /// enrolled by an older coordinator until it next connects).
    #[serde(default)]
    pub certificate_not_after: Option<Timestamp>,
}

/// One app on one host, as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostApp {
    /// What the manifest asks for.
    pub desired: Option<Version>,
    /// What the host runs.
    pub current: Option<Version>,
    /// The reported state.
    pub state: Option<AppState>,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// `GET /v1/admin/hosts/{id}`: a host with its recent events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: HostSummary,
    /// Why its last manifest was rejected, if it was.
    pub manifest_rejection: Option<String>,
    /// Recent events, oldest first.
    pub events: Vec<ReportEvent>,
    /// Its id's joins, replacements, certificate renewals and removals, oldest first.
    #[serde(default)]
    pub history: Vec<HostHistoryEntry>,
}

/// One line of a host id's history: who enrolled, replaced, renewed or removed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostHistoryEntry {
    /// When.
    pub at: Timestamp,
    /// Who: the admin token that removed it or made the join token, or `host` for a
    /// renewal the host asked for.
    pub who: String,
    /// What happened.
    pub what: String,
    /// Hex sha256 of the certificate that stopped being the newest (none on a first join).
    #[serde(default)]
    pub old_certificate: Option<String>,
    /// Hex sha256 of the certificate issued (none on a removal).
    #[serde(default)]
    pub new_certificate: Option<String>,
}

/// `PUT /v1/admin/hosts/{id}/labels`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRequest {
    /// Labels to set (added or overwritten).
    #[serde(default)]
    pub set: Labels,
    /// Label keys to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A group: a named label selector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// Every label here must match.
    pub selector: Labels,
}

/// A stored artifact blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// The artifact of a new release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReleaseArtifact {
    /// A tarball already uploaded to the coordinator's store.
    StoredTarball {
        /// Its digest.
        digest: Digest,
    },
    /// A tarball on another HTTP(S) server.
    RemoteTarball {
        /// Where.
        url: crate::manifest::HttpUrl,
        /// Its digest.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// An OCI image, already pinned by the digest of its image manifest (the CLI resolves
    /// a tag, and an image index, before it sends the request; the coordinator never
    /// talks to a registry).
    Image {
        /// `registry/repository@sha256:<digest of the image manifest>`.
        reference: crate::manifest::OciReference,
    },
    /// A tarball the CLI pushed to an OCI registry as an artifact
    /// ([`crate::oci::tarball_artifact_manifest`]); the coordinator never talks to the
    /// registry, hosts fetch it there by digest.
    RegistryTarball {
        /// `registry/repository@sha256:<digest of the artifact manifest>`.
        reference: crate::manifest::OciReference,
        /// The tar.gz's sha256 (the artifact's one layer).
        digest: Digest,
        /// The tar.gz's size.
        size: u64,
    },
}

/// `POST /v1/admin/releases`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The app.
    pub app: AppName,
    /// The version.
    pub version: Version,
    /// How it runs.
    pub spec: AppSpec,
    /// What to deploy.
    pub artifact: ReleaseArtifact,
}

/// A release as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The app.
    pub app: AppName,
    /// The version.
    pub version: Version,
    /// The artifact as manifests carry it.
    pub artifact: crate::manifest::Artifact,
    /// How it runs.
    pub spec: AppSpec,
    /// When it was created.
    pub created_at: Timestamp,
}

/// `PUT /v1/admin/pins`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    /// The app.
    pub app: AppName,
    /// The version it should run.
    pub version: Version,
    /// Where.
    pub scope: Scope,
    /// Why, for the history (absent from older clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `DELETE /v1/admin/pins`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnpinRequest {
    /// The app.
    pub app: AppName,
    /// Where.
    pub scope: Scope,
    /// Why, for the history (absent from older clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `PUT` / `DELETE /v1/admin/holds`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// Where.
    pub scope: Scope,
    /// Why, for the history (absent from older clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A pin as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The app.
    pub app: AppName,
    /// The version.
    pub version: Version,
    /// Where.
    pub scope: Scope,
}

/// What changed after a desired-state change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeResult {
    /// How many hosts got a new manifest.
    pub hosts_changed: usize,
}

/// `GET /v1/admin/status`: the fleet per app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The replica that runs the rollouts, when several coordinators share one database
    /// (absent on a single coordinator, and from older coordinators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Enrolled hosts.
    pub hosts: usize,
    /// Hosts whose manifest holds them.
    pub held: usize,
    /// Per app.
    pub apps: BTreeMap<AppName, AppStatus>,
}

/// One app across the fleet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    /// Hosts whose manifest lists the app.
    pub desired_hosts: usize,
    /// Hosts per running version.
    pub versions: BTreeMap<String, usize>,
    /// Hosts per reported state.
    pub states: BTreeMap<String, usize>,
    /// Releases of the app (absent from older coordinators).
    #[serde(default)]
    pub releases: usize,
    /// The version of the app's fleet pin.
    #[serde(default)]
    pub fleet_pin: Option<Version>,
    /// Group pins: group name to version.
    #[serde(default)]
    pub group_pins: BTreeMap<String, Version>,
    /// Host pins: how many hosts are pinned to each version (removed hosts' pins count:
    /// they come back with the id).
    #[serde(default)]
    pub host_pins: BTreeMap<String, usize>,
}

/// `GET /v1/admin/pins[?app=APP]`: the pins (of one app or all) and the holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinList {
    /// Pins by app, then scope (fleet, groups, hosts).
    pub pins: Vec<PinInfo>,
    /// Holds (they stop every app on their hosts).
    pub holds: Vec<HoldInfo>,
}

/// A pin with who set it, when and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinInfo {
    /// The app.
    pub app: AppName,
    /// Where.
    pub scope: Scope,
    /// The version.
    pub version: Version,
    /// The admin token's name, or `controller` for a rollout's own step; none for pins
    /// set before the coordinator recorded it.
    pub set_by: Option<String>,
    /// When it was set (same: none when not recorded).
    pub set_at: Option<Timestamp>,
    /// The rollout that set it, if any.
    pub rollout: Option<String>,
    /// Why, as given with `--reason`.
    pub reason: Option<String>,
}

/// A hold with who set it, when and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldInfo {
    /// Where.
    pub scope: Scope,
    /// The admin token's name; none for holds set before the coordinator recorded it.
    pub set_by: Option<String>,
    /// When it was set.
    pub set_at: Option<Timestamp>,
    /// Why, as given with `--reason`.
    pub reason: Option<String>,
}

/// `POST /v1/admin/rollouts/plan` and `POST /v1/admin/rollouts` (start): a rollout as the
/// operator typed it. Every field but `app` and `version` is text checked by the
/// coordinator (all bad fields reported at once) and has a default there when absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// The app.
    pub app: String,
    /// The target release.
    pub version: String,
    /// `canary,10%,50%,100%` or group names `a,b,c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<String>,
    /// `N` hosts or `P%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<String>,
    /// A duration, e.g. `2m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<String>,
    /// `N` hosts or `P%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<String>,
    /// `pause` or `rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    /// Whether each stage after the first waits for an approval.
    #[serde(default)]
    pub approve_each_stage: bool,
    /// A duration, e.g. `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_deadline: Option<String>,
    /// Why, for the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/admin/rollouts/{app}/pause|resume|approve`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutCommandRequest {
    /// Why, for the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/admin/rollouts/{app}/abort`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutAbortRequest {
    /// Record the abort as a rollback (the actions are the same: every touched host
    /// returns to the release it had before).
    #[serde(default)]
    pub rollback: bool,
    /// Why, for the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One host of a planned stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPlanHost {
    /// The host.
    pub id: HostId,
    /// What it ran at planning time.
    pub current: Option<Version>,
}

/// One planned stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPlanStage {
    /// `canary`, `10%`, `group NAME` or `rest`.
    pub label: String,
    /// Its hosts in the order they are pinned.
    pub hosts: Vec<RolloutPlanHost>,
}

/// The answer to `POST /v1/admin/rollouts/plan`: exactly what `start` would do now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPlan {
    /// The id the next rollout of this app will have (the order derives from it).
    pub rollout: String,
    /// The app.
    pub app: AppName,
    /// The target release.
    pub version: Version,
    /// The stages.
    pub stages: Vec<RolloutPlanStage>,
    /// Most hosts changing at once.
    pub max_in_flight: usize,
    /// Failures tolerated; one more trips the breaker.
    pub failure_budget: usize,
}

/// Where a rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    /// Planned, not started.
    Pending,
    /// Pinning and watching the current stage.
    Running,
    /// Paused by an operator.
    PausedByOperator,
    /// Paused by the failure breaker.
    PausedByBreaker,
    /// A stage passed and the next waits for `drover rollout approve`.
    AwaitingApproval,
    /// Every stage passed; the target is the app's fleet pin.
    Completed,
    /// Stopped by an operator; touched hosts returned to their previous release.
    Aborted,
    /// The breaker rolled every touched host back.
    RolledBack,
}

/// One stage of a rollout at a glance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStageStatus {
    /// `canary`, `10%`, `group NAME` or `rest`.
    pub label: String,
    /// `not_started`, `active`, `baking` or `passed`.
    pub status: String,
    /// Time left of the bake, while baking.
    pub bake_remaining: Option<Duration>,
    /// Hosts in the stage.
    pub total: usize,
    /// Not pinned yet.
    pub waiting: usize,
    /// Pinned, neither healthy nor failed.
    pub in_flight: usize,
    /// Healthy on the target.
    pub done: usize,
    /// Counted as failed.
    pub failed: usize,
    /// Removed from the fleet.
    pub removed: usize,
}

/// `GET /v1/admin/rollouts/{app}`: the app's active rollout, else its last one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The rollout's id.
    pub rollout: String,
    /// The app.
    pub app: AppName,
    /// The target release.
    pub version: Version,
    /// Where it is.
    pub phase: RolloutPhase,
    /// The phase for people, e.g. `paused by the failure breaker`.
    pub phase_text: String,
    /// The `--reason` of an operator's pause, while paused by one.
    #[serde(default)]
    pub pause_reason: Option<String>,
    /// The index of the last stage started.
    pub stage: Option<usize>,
    /// Per stage.
    pub stages: Vec<RolloutStageStatus>,
    /// Failures so far.
    pub failures: usize,
    /// Failures tolerated.
    pub failure_budget: usize,
    /// Hosts changing now.
    pub in_flight: usize,
    /// Most hosts changing at once.
    pub max_in_flight: usize,
    /// Rough completion time, while running.
    pub eta: Option<Timestamp>,
    /// Who started it.
    pub created_by: String,
    /// When.
    pub created_at: Timestamp,
    /// When it finished, if it did.
    pub finished_at: Option<Timestamp>,
    /// The hosts counted as failed, oldest first, at most [`MAX_FAILED_HOSTS_SHOWN`]
    /// (`failures` counts them all). Absent from older coordinators.
    #[serde(default)]
    pub failed_hosts: Vec<RolloutFailedHost>,
}

/// Most failed hosts a [`RolloutStatus`] names: the first failures are what tripped the
/// breaker, and `watch` fetches the status every second.
pub const MAX_FAILED_HOSTS_SHOWN: usize = 50;

/// A host a rollout counts as failed, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutFailedHost {
    /// The host.
    pub host: HostId,
    /// The index of its stage.
    pub stage: usize,
    /// When the rollout counted it as failed.
    pub at: Timestamp,
    /// Why the rollout counts it, e.g. `reported rolled_back` or `not healthy within the
    /// deadline`.
    pub reason: String,
    /// The app's state in the host's latest report, if it reported the app.
    #[serde(default)]
    pub state: Option<AppState>,
    /// The app's `last_error` in the host's latest report: the host's own words (the
    /// cause systemd gave, a failed download), unescaped; escape before printing.
    #[serde(default)]
    pub error: Option<String>,
}

/// One line of `GET /v1/admin/rollouts/{app}/history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When.
    pub at: Timestamp,
    /// The app it concerns; none for holds, which stop every app and so are in every
    /// app's history.
    #[serde(default)]
    pub app: Option<AppName>,
    /// Who: the admin token's name, or `controller` for what the rollout did by itself.
    pub who: String,
    /// The rollout it belongs to, if any (pins and holds made by hand have none).
    pub rollout: Option<String>,
    /// What happened.
    pub what: String,
    /// Why, as given with `--reason`.
    pub reason: Option<String>,
}

// --- The audit trail: `drover history` and the reasons of changes without a body field ---

/// Longest `--reason` the coordinator records, in characters (after trimming).
pub const MAX_REASON_CHARS: usize = 500;
/// How many lines `GET /v1/admin/history` returns when no `limit` is given.
pub const HISTORY_LIMIT_DEFAULT: u32 = 100;
/// The most lines one `GET /v1/admin/history` returns: the view is bounded so that a
/// large fleet's history costs one bounded query per source, never a full scan into memory.
pub const HISTORY_LIMIT_MAX: u32 = 1000;
/// Longest `who` filter, in characters (token names have 32; `drover serve` and the
/// controller's name are shorter).
pub const MAX_WHO_CHARS: usize = 64;

/// Checks a `--reason`: trimmed, an empty one is none; at most [`MAX_REASON_CHARS`]
/// characters of one line (no control characters, which could forge lines in a log or on
/// a terminal). The error says what to change.
pub fn check_reason(reason: Option<&str>) -> Result<Option<String>, String> {
    let Some(reason) = reason.map(str::trim).filter(|reason| !reason.is_empty()) else {
        return Ok(None);
    };
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(format!("--reason is limited to {MAX_REASON_CHARS} characters"));
    }
    if reason.chars().any(char::is_control) {
        return Err("--reason must be one line of printable text (no control characters or newlines)".into());
    }
    Ok(Some(reason.to_owned()))
}

/// The `?reason=` of the admin changes whose request body has no field for one (existing
/// bodies keep their shape): `DELETE /v1/admin/hosts/{id}`, `PUT
/// /v1/admin/hosts/{id}/labels`, `POST /v1/admin/groups`, `DELETE
/// /v1/admin/groups/{name}`, `POST /v1/admin/admin-tokens` and `DELETE
/// /v1/admin/admin-tokens/{name}`. Pins, holds and rollouts carry theirs in the body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeReason {
    /// Why, as given with `--reason` (checked by [`check_reason`]).
    pub reason: Option<String>,
}

impl ChangeReason {
    /// The query to append to the path: `?reason=...` (percent-encoded), or nothing.
    pub fn to_query(&self) -> String {
        match &self.reason {
            Some(reason) => format!("?reason={}", percent_encode(reason)),
            None => String::new(),
        }
    }

    /// Parses a request's query (the part after `?`, if any): only `reason`, at most once,
    /// checked by [`check_reason`]; anything else is refused with what to change.
    pub fn from_query(query: Option<&str>) -> Result<ChangeReason, String> {
        let mut change = ChangeReason::default();
        let mut seen = false;
        for (key, value) in query_pairs(query)? {
            match key.as_str() {
                "reason" if !seen => {
                    seen = true;
                    change.reason = check_reason(Some(&value))?;
                }
                "reason" => return Err("reason is given twice".into()),
                other => return Err(format!("unknown query parameter {other:?}; only reason is accepted")),
            }
        }
        Ok(change)
    }
}

/// `GET /v1/admin/history?app=&host=&who=&since=&until=&limit=`: which lines of the
/// fleet-wide history to return, newest first. Filters combine (all must match); `until`
/// pages back past the limit (the instant of the last line shown: lines of that second
/// come again rather than being skipped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only lines about this app (holds, which stop every app, included, as in `drover
    /// rollout history APP`).
    pub app: Option<AppName>,
    /// Only lines about this host id: its joins, replacements, renewals, removal and
    /// label changes.
    pub host: Option<HostId>,
    /// Only lines by this admin token name (or `controller`, or `host` for renewals).
    pub who: Option<String>,
    /// Only lines at or after this instant.
    pub since: Option<Timestamp>,
    /// Only lines at or before this instant.
    pub until: Option<Timestamp>,
    /// At most this many lines, 1 to [`HISTORY_LIMIT_MAX`].
    pub limit: u32,
}

impl Default for HistoryQuery {
    fn default() -> HistoryQuery {
        HistoryQuery {
            app: None,
            host: None,
            who: None,
            since: None,
            until: None,
            limit: HISTORY_LIMIT_DEFAULT,
        }
    }
}

/// Checks a `who` filter: 1 to [`MAX_WHO_CHARS`] characters without control characters.
pub fn check_who(who: &str) -> Result<(), String> {
    if who.is_empty() || who.chars().count() > MAX_WHO_CHARS {
        return Err(format!(
            "who must be 1 to {MAX_WHO_CHARS} characters (an admin token's name, controller, or host)"
        ));
    }
    if who.chars().any(char::is_control) {
        return Err("who must not hold control characters".into());
    }
    Ok(())
}

/// Checks a history limit: 1 to [`HISTORY_LIMIT_MAX`].
pub fn check_history_limit(limit: u32) -> Result<u32, String> {
    if (1..=HISTORY_LIMIT_MAX).contains(&limit) {
        Ok(limit)
    } else {
        Err(format!(
            "limit must be between 1 and {HISTORY_LIMIT_MAX} (narrow the view with since, app, host or who)"
        ))
    }
}

impl HistoryQuery {
    /// The query to append to `/v1/admin/history`: `?limit=...&...` (percent-encoded).
    pub fn to_query(&self) -> String {
        let mut pairs = vec![format!("limit={}", self.limit)];
        if let Some(app) = &self.app {
            pairs.push(format!("app={}", percent_encode(app.as_str())));
        }
        if let Some(host) = &self.host {
            pairs.push(format!("host={}", percent_encode(host.as_str())));
        }
        if let Some(who) = &self.who {
            pairs.push(format!("who={}", percent_encode(who)));
        }
        if let Some(since) = self.since {
            pairs.push(format!("since={}", percent_encode(&since.to_string())));
        }
        if let Some(until) = self.until {
            pairs.push(format!("until={}", percent_encode(&until.to_string())));
        }
        format!("?{}", pairs.join("&"))
    }

    /// Parses a request's query: each known parameter at most once and valid; unknown
    /// parameters are refused. The error names the parameter and what it must be.
    pub fn from_query(query: Option<&str>) -> Result<HistoryQuery, String> {
        let mut parsed = HistoryQuery::default();
        let mut seen: Vec<String> = Vec::new();
        for (key, value) in query_pairs(query)? {
            if seen.contains(&key) {
                return Err(format!("{key} is given twice"));
            }
            seen.push(key.clone());
            match key.as_str() {
                "app" => parsed.app = Some(value.parse().map_err(|error: NameError| format!("app: {error}"))?),
                "host" => parsed.host = Some(value.parse().map_err(|error: NameError| format!("host: {error}"))?),
                "who" => {
                    check_who(&value)?;
                    parsed.who = Some(value);
                }
                "since" => parsed.since = Some(value.parse().map_err(|error: NameError| format!("since: {error}"))?),
                "until" => parsed.until = Some(value.parse().map_err(|error: NameError| format!("until: {error}"))?),
                "limit" => {
                    let limit = value
                        .parse::<u32>()
                        .map_err(|_| check_history_limit(0).expect_err("0 is refused"))?;
                    parsed.limit = check_history_limit(limit)?;
                }
                other => {
                    return Err(format!(
                        "unknown query parameter {other:?}; the history takes app, host, who, since, until and limit"
                    ));
                }
            }
        }
        if let (Some(since), Some(until)) = (parsed.since, parsed.until)
            && since > until
        {
            return Err(format!("since ({since}) is after until ({until}): no line can match"));
        }
        Ok(parsed)
    }
}

/// Where a line of the fleet-wide history was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditSource {
    /// An app's history (`drover rollout history APP`): rollouts, pins, holds.
    App,
    /// A host id's history (`drover hosts history HOST`): joins, replacements,
    /// renewals, removals.
    Host,
    /// The fleet's admin changes: label changes, groups, admin tokens.
    Admin,
}

/// One line of `GET /v1/admin/history`, newest first: who changed what, when and why,
/// from every history the coordinator keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When.
    pub at: Timestamp,
    /// Who: the admin token's name, `controller` for what rollouts did by themselves, or
    /// `host` for a certificate renewal the host asked for.
    pub who: String,
    /// What happened.
    pub what: String,
    /// Why, as given with `--reason`.
    #[serde(default)]
    pub reason: Option<String>,
    /// The app it concerns, if one (none for holds, which stop every app).
    #[serde(default)]
    pub app: Option<AppName>,
    /// The host id it concerns, if one.
    #[serde(default)]
    pub host: Option<HostId>,
    /// The rollout it belongs to, if any.
    #[serde(default)]
    pub rollout: Option<String>,
    /// Which history it comes from.
    pub source: AuditSource,
}

/// Percent-encodes a query value: everything but `A-Za-z0-9-._~` as `%XX` of its UTF-8 bytes.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Decodes a percent-encoded query part (`+` is a space, as in forms); the bytes must be UTF-8.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = bytes
                    .get(index + 1..index + 3)
                    .and_then(|pair| std::str::from_utf8(pair).ok())
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or_else(|| format!("{text:?}: % must be followed by two hex digits"))?;
                decoded.push(hex);
                index += 3;
            }
            b'+' => {
                decoded.push(b' ');
                index += 1;
            }
            byte => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}

/// The decoded `key=value` pairs of a query; a pair without `=` is refused.
fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("query parameter {pair:?} has no value (key=value)"))?;
            Ok((percent_decode(key)?, percent_decode(value)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_names_are_short_lowercase_and_never_the_controller() {
        for good in ["admin", "ci", "alice-2", "0", &"a".repeat(32)] {
            assert!(good.parse::<TokenName>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "-ci",
            "Alice",
            "ci bot",
            "ci\n",
            "a_b",
            "controller",
            &"a".repeat(33),
        ] {
            assert!(bad.parse::<TokenName>().is_err(), "{bad:?}");
        }
        let refused = serde_json::from_str::<AdminTokenRequest>(r#"{"name": "controller"}"#);
        assert!(refused.is_err());
    }

    #[test]
    fn requests_of_older_clients_still_parse() {
        let pin: PinRequest =
            serde_json::from_str(r#"{"app": "web", "version": "1.0", "scope": {"kind": "fleet"}}"#).expect("pin");
        assert_eq!(pin.reason, None);
        let hold: HoldRequest = serde_json::from_str(r#"{"scope": {"kind": "group", "name": "eu"}}"#).expect("hold");
        assert_eq!(hold.reason, None);
        let unpin: UnpinRequest =
            serde_json::from_str(r#"{"app": "web", "scope": {"kind": "fleet"}, "reason": "x"}"#).expect("unpin");
        assert_eq!(unpin.reason.as_deref(), Some("x"));
    }

    #[test]
    fn a_token_request_names_the_host_it_may_replace_and_refuses_an_old_any_host_flag() {
        let named: TokenRequest = serde_json::from_str(r#"{"ttl": "1h", "replace": "web-07"}"#).expect("named host");
        assert_eq!(named.replace.as_ref().map(HostId::as_str), Some("web-07"));
        let plain: TokenRequest = serde_json::from_str(r#"{"ttl": "1h", "replace": false}"#).expect("old plain");
        assert_eq!(plain.replace, None);
        let error = serde_json::from_str::<TokenRequest>(r#"{"ttl": "1h", "replace": true}"#).expect_err("any host");
        assert!(error.to_string().contains("--replace HOST"), "{error}");
        assert!(serde_json::from_str::<TokenRequest>(r#"{"ttl": "1h", "replace": "../x"}"#).is_err());
    }

    #[test]
    fn renewal_is_due_when_a_third_of_the_lifetime_is_left() {
        let at = |text: &str| text.parse::<Timestamp>().expect("timestamp");
        // A 366-day window (a day of skew slack + 365 days): due 122 days before the end.
        let due = renewal_due_at(at("2026-01-01T00:00:00Z"), at("2027-01-02T00:00:00Z"));
        assert_eq!(due, at("2026-09-02T00:00:00Z"));
        // A two-minute window: due 40 s before the end.
        let due = renewal_due_at(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:02:00Z"));
        assert_eq!(due, at("2026-01-01T00:01:20Z"));
        // A window that is empty or backwards is due at its end (it is unusable anyway).
        let due = renewal_due_at(at("2026-01-01T00:02:00Z"), at("2026-01-01T00:00:00Z"));
        assert_eq!(due, at("2026-01-01T00:00:00Z"));
    }

    #[test]
    fn release_artifacts_keep_their_wire_form() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let stored: ReleaseArtifact =
            serde_json::from_str(&format!(r#"{{"kind": "stored_tarball", "digest": "{digest}"}}"#)).expect("stored");
        assert!(matches!(stored, ReleaseArtifact::StoredTarball { .. }));
        let remote: ReleaseArtifact = serde_json::from_str(&format!(
            r#"{{"kind": "remote_tarball", "url": "https://cdn.example.com/web.tar.gz", "digest": "{digest}", "size": 3}}"#
        ))
        .expect("remote");
        assert!(matches!(remote, ReleaseArtifact::RemoteTarball { size: 3, .. }));

        let reference = format!("registry.example.com/web@{digest}");
        let image: ReleaseArtifact =
            serde_json::from_str(&format!(r#"{{"kind": "image", "reference": "{reference}"}}"#)).expect("image");
        let ReleaseArtifact::Image { reference: parsed } = &image else {
            panic!("not an image: {image:?}");
        };
        assert_eq!(parsed.as_str(), reference);
        assert_eq!(
            serde_json::to_value(&image).expect("json"),
            serde_json::json!({"kind": "image", "reference": reference})
        );
        // Only a reference pinned by digest is an image artifact; a tag is resolved by the CLI.
        for bad in [
            r#"{"kind": "image", "reference": "registry.example.com/web:1.0"}"#.to_owned(),
            format!(r#"{{"kind": "image", "reference": "{reference}", "digest": "{digest}"}}"#),
        ] {
            assert!(serde_json::from_str::<ReleaseArtifact>(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reasons_travel_in_the_query_and_are_checked_once() {
        let reason = ChangeReason {
            reason: Some("incident 4711: été & co=1".into()),
        };
        let query = reason.to_query();
        assert_eq!(query, "?reason=incident%204711%3A%20%C3%A9t%C3%A9%20%26%20co%3D1");
        assert_eq!(ChangeReason::from_query(query.strip_prefix('?')), Ok(reason));
        assert_eq!(ChangeReason::default().to_query(), "");
        assert_eq!(ChangeReason::from_query(None), Ok(ChangeReason::default()));
        assert_eq!(
            ChangeReason::from_query(Some("reason=+spaced+")).map(|change| change.reason),
            Ok(Some("spaced".into()))
        );
        assert_eq!(ChangeReason::from_query(Some("reason=")), Ok(ChangeReason::default()));
        for bad in [
            "reason=a&reason=b",
            "why=a",
            "reason",
            "reason=%zz",
            "reason=%ff",
            "reason=line%0Aforged",
            &format!("reason={}", "a".repeat(MAX_REASON_CHARS + 1)),
        ] {
            assert!(ChangeReason::from_query(Some(bad)).is_err(), "{bad}");
        }
        let at_limit = format!("reason={}", "é".repeat(MAX_REASON_CHARS));
        assert!(ChangeReason::from_query(Some(&at_limit)).is_ok());
    }

    #[test]
    fn history_queries_round_trip_and_refuse_odd_input() {
        let query = HistoryQuery {
            app: Some("web".parse().expect("app")),
            host: Some("web-01".parse().expect("host")),
            who: Some("drover serve".into()),
            since: Some("2026-12-07T10:00:00Z".parse().expect("since")),
            until: Some("2026-12-07T11:00:00Z".parse().expect("until")),
            limit: 7,
        };
        let text = query.to_query();
        assert_eq!(
            text,
            "?limit=7&app=web&host=web-01&who=drover%20serve&since=2026-12-07T10%3A00%3A00Z&until=2026-12-07T11%3A00%3A00Z"
        );
        assert_eq!(HistoryQuery::from_query(text.strip_prefix('?')), Ok(query));
        assert_eq!(HistoryQuery::from_query(None), Ok(HistoryQuery::default()));
        assert_eq!(HistoryQuery::default().limit, HISTORY_LIMIT_DEFAULT);
        assert_eq!(
            HistoryQuery::from_query(Some("limit=1000")).map(|query| query.limit),
            Ok(HISTORY_LIMIT_MAX)
        );
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=99999999999999999999",
            "limit=-1",
            "limit=ten",
            "app=Web",
            "app=../x",
            "host=a..b",
            "who=",
            "who=a%0Ab",
            &format!("who={}", "a".repeat(MAX_WHO_CHARS + 1)),
            "since=yesterday",
            "since=2h",
            "until=now",
            "since=2026-12-07T11:00:01Z&until=2026-12-07T11:00:00Z",
            "app=web&app=api",
            "order=asc",
            "app",
        ] {
            let error = HistoryQuery::from_query(Some(bad)).expect_err(bad);
            assert!(!error.is_empty(), "{bad}");
        }
    }

    #[test]
    fn audit_entries_keep_their_wire_form() {
        let entry = AuditEntry {
            at: "2026-12-07T10:00:00Z".parse().expect("at"),
            who: "alice".into(),
            what: "labels of web-01: set env=prod".into(),
            reason: Some("moving to prod".into()),
            app: None,
            host: Some("web-01".parse().expect("host")),
            rollout: None,
            source: AuditSource::Admin,
        };
        let json = serde_json::to_value(&entry).expect("json");
        assert_eq!(json["source"], "admin");
        assert_eq!(json["host"], "web-01");
        assert_eq!(json["app"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<AuditEntry>(json).expect("parse"), entry);
    }
}

/// What the CLI needs to know of a coordinator's own settings (`GET /v1/admin/settings`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorSettings {
    /// Where `drover release create --artifact FILE` pushes tarballs when the operator
    /// names no `--registry`: `REGISTRY/PREFIX`, the app's name is the repository under
    /// it (`drover serve --artifact-registry`).
    #[serde(default)]
    pub artifact_registry: Option<String>,
}

/// One coordinator replica serving the fleet's database (`GET /v1/admin/coordinators`,
/// `drover coordinators`): several share one PostgreSQL; a coordinator on SQLite lists
/// itself alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Unique per process: `<hostname>:<port>-<random>`.
    pub id: String,
    /// Its public URL.
    pub address: String,
    /// Its drover version.
    pub version: String,
    /// When its process started.
    pub started_at: Timestamp,
    /// When it last said it was alive (every few seconds).
    pub heartbeat_at: Timestamp,
    /// Whether it holds the lead (runs the rollout driver and the manifest refresher).
    pub leader: bool,
}
