//! The coordinator's operations, independent of HTTP: enrollment, desired-state changes
//! that re-sign exactly the affected hosts' manifests, manifest publication with
//! long-poll wake-ups, reports, releases and the fleet status.
//!
//! Consistency: every desired-state change runs under one async mutex (`model`), commits
//! to the store first, then updates memory and publishes the new manifests. Readers
//! (polls) never take that mutex: each host has a `watch` channel holding its current
//! signed manifest, so a poll is a map lookup and a pointer clone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use drover_protocol::api::PinList;
use drover_protocol::api::{
    AdminTokenCreated, AdminTokenInfo, AdminTokenRequest, AdminTokenState, BOOTSTRAP_TOKEN_NAME, CONTROLLER_NAME,
    ChangeResult, FleetStatus, Group, HistoryEntry, HostApp, HostDetail, HostHistoryEntry, HostSummary, JoinRequest,
    JoinResponse, Labels, Pin, Release, ReleaseArtifact, ReleaseRequest, RenewResponse, RolloutPhase, RolloutPlan,
    RolloutPlanHost, RolloutPlanStage, RolloutRequest, RolloutStageStatus, RolloutStatus, Scope, TokenName,
    TokenRequest, TokenResponse,
};
use drover_protocol::api::{MAX_FAILED_HOSTS_SHOWN, RolloutFailedHost};
use drover_protocol::manifest::HttpUrl;
use drover_protocol::manifest::{MAX_APPS, MAX_MANIFEST_BYTES};
use drover_protocol::report::MAX_REPORT_EVENTS;
use drover_protocol::spec::ArtifactKind;
use drover_protocol::{AppName, Artifact, Digest, Duration, HostId, HostReport, SigningKey, Timestamp, Version};
use tokio::sync::{Mutex, Notify, mpsc, watch};

use crate::datadir::DataDir;
use crate::server::fleet::{Fleet, Resolved, sign_manifest};
use crate::server::metrics::{CertificateExpiry, Metrics};
use crate::server::pki::{PeerIdentity, sha256_hex};
use crate::server::rollout::{
    Action, Event, PauseReason, Phase, Plan, PlanError, PlanHost, Rollout, RolloutSpec, SpecText, StageStatus,
};
use crate::server::setup::Credentials;
use crate::server::store::{
    AdminTokenRecord, HistoryRecord, HostChange, HostRecord, RolloutCommit, Store, StoreError, StoredManifest,
    StoredRollout, TokenProblem,
};
use crate::text::labels_text;

/// Settings of a running coordinator.
#[derive(Clone, Debug)]
pub struct Config {
    /// The URL hosts and the CLI use to reach this coordinator, e.g. `https://10.0.0.5:8443`.
    pub public_url: String,
    /// The address it listens on.
    pub listen: std::net::SocketAddr,
    /// What is wrong when the public URL is a loopback address while the coordinator
    /// listens on others (`serve` decides, and words it for the operator): token creation
    /// refuses with it unless the request allows it.
    pub loopback_trap: Option<String>,
    /// How long a signed manifest is valid.
    pub manifest_ttl: Duration,
    /// How often the refresher looks for manifests to re-sign before they expire.
    pub refresh_interval: Duration,
    /// How long each host certificate (at join and at renewal) is valid.
    pub host_certificate_validity: Duration,
}

/// Who a host history line names for a renewal: the host itself asked for it.
pub const HOST_RENEWAL_ACTOR: &str = "host";

/// Why an operation failed; the HTTP layer maps each to a status in one `match`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed or invalid.
    #[error("{1}")]
    BadRequest(&'static str, String),
    /// Missing or wrong credentials.
    #[error("{1}")]
    Unauthorized(&'static str, String),
    /// Authenticated, but not allowed to touch this resource.
    #[error("{1}")]
    Forbidden(&'static str, String),
    /// Something named does not exist.
    #[error("{1}")]
    NotFound(&'static str, String),
    /// Conflicts with existing state.
    #[error("{1}")]
    Conflict(&'static str, String),
    /// A token that was valid once but is not any more.
    #[error("{1}")]
    Gone(&'static str, String),
    /// A body over its limit.
    #[error("{1}")]
    TooLarge(&'static str, String),
    /// Temporarily overloaded; the client should retry later.
    #[error("{1}")]
    Unavailable(&'static str, String),
    /// A Range past the end of an artifact.
    #[error("{message}")]
    RangeNotSatisfiable { message: String, size: u64 },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Local I/O failed (artifact store).
    #[error("{operation}: {source}")]
    Io {
        operation: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A host's current signed manifest as served to polls.
#[derive(Debug)]
pub struct Published {
    /// Its serial.
    pub serial: u64,
    /// The ETag (quoted).
    pub etag: String,
    /// The envelope bytes.
    pub envelope: axum::body::Bytes,
    /// Whether it holds the host.
    pub held: bool,
    /// The version of each app it asks for.
    pub versions: BTreeMap<AppName, Version>,
    /// The artifacts it references: the only ones this host may download.
    pub digests: BTreeSet<Digest>,
}

impl Published {
    fn of(manifest: &StoredManifest, resolved: &Resolved, fleet: &Fleet) -> Published {
        Published {
            serial: manifest.serial,
            etag: format!("\"{}\"", manifest.serial),
            envelope: manifest.envelope.clone(),
            held: resolved.hold,
            versions: resolved.versions.clone(),
            digests: fleet.digests(resolved),
        }
    }
}

/// One enrolled host's live entry.
#[derive(Debug)]
pub struct HostSlot {
    identity: RwLock<SlotIdentity>,
    manifest: watch::Sender<Arc<Published>>,
    last_seen: AtomicI64,
}

/// What proves a host: its key, and what is known of its newest certificate.
#[derive(Clone, Debug)]
struct SlotIdentity {
    /// The key (SubjectPublicKeyInfo sha256); `None` for a host enrolled before keys
    /// were recorded, until its first request (then read from its certificate).
    key_sha256: Option<String>,
    /// The newest certificate's sha256.
    cert_sha256: String,
    /// When the newest certificate expires, if known.
    not_after: Option<Timestamp>,
}

impl SlotIdentity {
    fn of(host: &HostRecord) -> SlotIdentity {
        SlotIdentity {
            key_sha256: host.key_sha256.clone(),
            cert_sha256: host.cert_sha256.clone().unwrap_or_default(),
            not_after: host.cert_not_after,
        }
    }

    /// Whether `peer`'s certificate is this host's: its key when the key is known, else
    /// the one certificate recorded.
    fn proves(&self, peer: &PeerIdentity) -> bool {
        match &self.key_sha256 {
            Some(key) => *key == peer.key_sha256,
            None => self.cert_sha256 == peer.fingerprint,
        }
    }
}

impl HostSlot {
    /// Whether this host's current manifest references `digest`.
    pub fn may_download(&self, digest: &Digest) -> bool {
        self.manifest.borrow().digests.contains(digest)
    }

    /// A receiver of this host's manifest changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.manifest.subscribe()
    }
}

/// Which hosts [`Coordinator::render`] re-signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RenderMode {
    /// Those whose desired state changed.
    Changed,
    /// Those that changed or expire within half their lifetime.
    Refresh,
    /// All given hosts (a join: the host gets a fresh serial whatever it ran before).
    Force,
}

/// What the rendering remembers per host: enough to tell a change from a no-op.
#[derive(Clone, Debug)]
struct Rendered {
    serial: u64,
    content_hash: String,
    expires_at: Timestamp,
}

impl Rendered {
    fn of(manifest: &StoredManifest) -> Rendered {
        Rendered {
            serial: manifest.serial,
            content_hash: manifest.content_hash.clone(),
            expires_at: manifest.expires_at,
        }
    }
}

/// The desired state, the rendering state and the active rollouts (which change pins),
/// changed together under one lock.
#[derive(Debug, Default)]
struct Model {
    fleet: Fleet,
    rendered: HashMap<HostId, Rendered>,
    rollouts: BTreeMap<AppName, ActiveRollout>,
}

/// A rollout that has not finished, with who started it.
#[derive(Debug)]
struct ActiveRollout {
    rollout: Rollout,
    created_by: String,
    created_at: Timestamp,
}

/// The running coordinator.
#[derive(Debug)]
pub struct Coordinator {
    config: Config,
    store: Store,
    data: DataDir,
    credentials: Credentials,
    /// Every admin token, revoked ones too (to say so), in the order they were made. A
    /// handful: looked up by the sha256 of the secret.
    admin_tokens: RwLock<Vec<AdminTokenRecord>>,
    /// Serializes admin token changes (the last valid token must stay).
    admin_token_changes: Mutex<()>,
    model: Mutex<Model>,
    slots: RwLock<HashMap<HostId, Arc<HostSlot>>>,
    reports: std::sync::Mutex<HashMap<HostId, (HostReport, Timestamp)>>,
    report_queue: mpsc::Sender<(HostReport, Timestamp)>,
    /// Hosts whose reported app states changed since the rollout driver last looked.
    rollout_dirty: std::sync::Mutex<BTreeSet<HostId>>,
    /// Wakes the rollout driver (a report changed, or a step moved the next timer).
    rollout_signal: Notify,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
}

/// The background work a coordinator needs: the report writer and the refresher.
#[derive(Debug)]
pub struct Background {
    report_receiver: mpsc::Receiver<(HostReport, Timestamp)>,
}

fn now() -> Timestamp {
    Timestamp::from_system(std::time::SystemTime::now())
}

fn hash_secret(secret: &str) -> String {
    sha256_hex(secret.as_bytes())
}

impl Coordinator {
    /// Loads the store, renders any host whose manifest is missing, and publishes every
    /// enrolled host's manifest.
    pub async fn start(
        config: Config,
        store: Store,
        data: DataDir,
        credentials: Credentials,
    ) -> Result<(Arc<Coordinator>, Background), ServiceError> {
        let snapshot = store.load().await?;
        store
            .bootstrap_admin_token(&hash_secret(&credentials.admin_token), now())
            .await?;
        let admin_tokens = store.admin_tokens().await?;
        let mut model = Model {
            fleet: Fleet::from_snapshot(&snapshot),
            rendered: HashMap::new(),
            rollouts: BTreeMap::new(),
        };
        for stored in store.active_rollouts().await? {
            model.rollouts.insert(
                stored.rollout.spec().app.clone(),
                ActiveRollout {
                    rollout: stored.rollout,
                    created_by: stored.created_by,
                    created_at: stored.created_at,
                },
            );
        }
        // Reports that arrived just before a stop may not have reached the rollouts yet:
        // feeding every last report again is harmless (the controller counts a host once).
        let dirty: BTreeSet<HostId> = snapshot.reports.iter().map(|(report, _)| report.host.clone()).collect();
        let stored: HashMap<HostId, StoredManifest> = snapshot
            .manifests
            .into_iter()
            .map(|manifest| (manifest.host.clone(), manifest))
            .collect();
        for manifest in stored.values() {
            model.rendered.insert(manifest.host.clone(), Rendered::of(manifest));
        }
        let (report_queue, report_receiver) = mpsc::channel(16_384);
        let coordinator = Coordinator {
            admin_tokens: RwLock::new(admin_tokens),
            admin_token_changes: Mutex::new(()),
            config,
            store,
            data,
            credentials,
            model: Mutex::new(Model::default()),
            slots: RwLock::new(HashMap::new()),
            reports: std::sync::Mutex::new(
                snapshot
                    .reports
                    .into_iter()
                    .map(|(report, at)| (report.host.clone(), (report, at)))
                    .collect(),
            ),
            report_queue,
            rollout_dirty: std::sync::Mutex::new(dirty),
            rollout_signal: Notify::new(),
            metrics: Metrics::default(),
        };
        // Publish what was stored; re-render hosts whose desired state no longer matches
        // (e.g. the database was restored) so the published state is always current.
        let hosts: Vec<HostRecord> = model.fleet.active_hosts().cloned().collect();
        let changed = coordinator.render(&model, &hosts, now(), RenderMode::Changed);
        coordinator.store.save_manifests(&changed).await?;
        for manifest in &changed {
            model.rendered.insert(manifest.host.clone(), Rendered::of(manifest));
        }
        {
            let mut slots = coordinator.slots.write().expect("slots lock");
            for host in &hosts {
                let resolved = model.fleet.resolve(host);
                let manifest = changed
                    .iter()
                    .find(|manifest| manifest.host == host.id)
                    .or_else(|| stored.get(&host.id))
                    .expect("every active host has a manifest after rendering");
                let (sender, _) = watch::channel(Arc::new(Published::of(manifest, &resolved, &model.fleet)));
                slots.insert(
                    host.id.clone(),
                    Arc::new(HostSlot {
                        identity: RwLock::new(SlotIdentity::of(host)),
                        manifest: sender,
                        last_seen: AtomicI64::new(0),
                    }),
                );
            }
        }
        *coordinator.model.lock().await = model;
        Ok((Arc::new(coordinator), Background { report_receiver }))
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The data directory.
    pub fn data(&self) -> &DataDir {
        &self.data
    }

    /// The CA, for the TLS setup.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Checks an admin bearer token and returns whose it is: the name every change the
    /// request makes is recorded under. Revoked and expired tokens are refused at once.
    pub async fn check_admin(&self, token: Option<&str>) -> Result<Operator, ServiceError> {
        let Some(token) = token else {
            return Err(ServiceError::Unauthorized(
                "admin_token_missing",
                "this endpoint needs an admin token: Authorization: Bearer <token> (the CLI reads it from the data directory or DROVER_TOKEN)".into(),
            ));
        };
        // Looking the secret up by its digest keeps the timing independent of the secret.
        let hash = hash_secret(token);
        let now = now();
        let (name, touch) = {
            let tokens = self.admin_tokens.read().expect("admin tokens lock");
            let Some(record) = tokens.iter().find(|token| token.hash == hash) else {
                return Err(ServiceError::Unauthorized(
                    "admin_token_invalid",
                    "the admin token is wrong".into(),
                ));
            };
            if let Some(revoked_at) = record.revoked_at {
                return Err(ServiceError::Unauthorized(
                    "admin_token_revoked",
                    format!(
                        "the admin token {} was revoked at {revoked_at}; ask an operator for a new one (drover admin-token create NAME)",
                        record.name
                    ),
                ));
            }
            if let Some(expires_at) = record.expires_at.filter(|_| record.expired(now)) {
                return Err(ServiceError::Unauthorized(
                    "admin_token_expired",
                    format!(
                        "the admin token {} expired at {expires_at}; ask an operator for a new one (drover admin-token create NAME)",
                        record.name
                    ),
                ));
            }
            let stale = record
                .last_used_at
                .is_none_or(|last| now.unix() - last.unix() >= LAST_USED_PRECISION_SECONDS);
            (record.name.clone(), stale)
        };
        if touch {
            if let Some(record) = self
                .admin_tokens
                .write()
                .expect("admin tokens lock")
                .iter_mut()
                .find(|token| token.hash == hash)
            {
                record.last_used_at = Some(now);
            }
            // Informational only: a failed write must not refuse the request.
            if let Err(error) = self.store.touch_admin_token(&hash, now).await {
                tracing::warn!(%error, token = %name, "noting when the admin token was last used failed");
            }
        }
        Ok(Operator(name))
    }

    /// The live slot of the host a client certificate names, refusing removed hosts and
    /// certificates that are no longer the host's (replaced by a re-join).
    pub fn host_slot(&self, identity: Option<&PeerIdentity>) -> Result<Arc<HostSlot>, ServiceError> {
        let Some(identity) = identity else {
            return Err(ServiceError::Unauthorized(
                "client_certificate_required",
                "agent endpoints need the host's client certificate (join first)".into(),
            ));
        };
        let slot = self.slots.read().expect("slots lock").get(&identity.host).cloned();
        match slot {
            Some(slot) if slot.identity.read().expect("slot identity lock").proves(identity) => {
                slot.last_seen.store(now().unix(), Ordering::Relaxed);
                self.learn_key(&slot, identity);
                Ok(slot)
            }
            Some(_) => Err(ServiceError::Forbidden(
                "certificate_replaced",
                format!(
                    "host {} re-joined with a new key; this certificate is no longer valid",
                    identity.host
                ),
            )),
            None => Err(ServiceError::Forbidden(
                "host_removed",
                format!(
                    "host {} is not enrolled (removed); to bring it back, join it with a token from `drover token create --replace {}`",
                    identity.host, identity.host
                ),
            )),
        }
    }

    /// For a host enrolled before keys were recorded: its first request proves the key
    /// (the certificate is the one recorded), so the key and expiry are kept from now on,
    /// in memory at once and in the store in the background (a failed write is retried
    /// by the next start's first request).
    fn learn_key(&self, slot: &HostSlot, identity: &PeerIdentity) {
        {
            let mut known = slot.identity.write().expect("slot identity lock");
            if known.key_sha256.is_some() || known.cert_sha256 != identity.fingerprint {
                return;
            }
            known.key_sha256 = Some(identity.key_sha256.clone());
            known.not_after = Some(identity.not_after);
        }
        let store = self.store.clone();
        let identity = identity.clone();
        tokio::spawn(async move {
            if let Err(error) = store
                .record_host_key(
                    &identity.host,
                    &identity.fingerprint,
                    &identity.key_sha256,
                    identity.not_after,
                )
                .await
            {
                tracing::warn!(%error, host = %identity.host, "recording the key of a host enrolled by an older coordinator failed; it is retried after the next restart");
            }
        });
    }

    /// When each enrolled host's newest certificate expires, summed up for `/metrics`.
    pub fn certificate_expiry(&self, now: Timestamp) -> CertificateExpiry {
        let mut expiry = CertificateExpiry::default();
        for slot in self.slots.read().expect("slots lock").values() {
            if let Some(not_after) = slot.identity.read().expect("slot identity lock").not_after {
                expiry.add(not_after, now);
            }
        }
        expiry
    }

    /// Renders `hosts` and returns the manifests that must be re-signed (see
    /// [`RenderMode`]), each with the host's serial + 1. Nothing is changed: the caller
    /// commits them to the store, then calls [`Coordinator::applied`].
    fn render(&self, model: &Model, hosts: &[HostRecord], now: Timestamp, mode: RenderMode) -> Vec<StoredManifest> {
        let key: &SigningKey = &self.credentials.manifest_key;
        let ttl = self.config.manifest_ttl;
        let refresh_before = now.plus(Duration::from_millis(ttl.as_millis() / 2));
        let work: Vec<(&HostRecord, u64, Resolved)> = hosts
            .iter()
            .filter_map(|host| {
                let resolved = model.fleet.resolve(host);
                let previous = model.rendered.get(&host.id);
                let unchanged = previous.is_some_and(|previous| match mode {
                    RenderMode::Changed => previous.content_hash == resolved.content_hash(),
                    RenderMode::Refresh => {
                        previous.content_hash == resolved.content_hash() && previous.expires_at > refresh_before
                    }
                    RenderMode::Force => false,
                });
                (!unchanged).then(|| (host, previous.map_or(0, |previous| previous.serial) + 1, resolved))
            })
            .collect();
        // Signing is CPU-bound: off the async workers, and spread over the cores when
        // there is enough of it to be worth the threads. The full manifest of each host is
        // built inside the signing loop and dropped there, so a fleet-wide change never
        // holds 10,000 expanded manifests at once.
        let fleet = &model.fleet;
        let sign = |(host, serial, resolved): &(&HostRecord, u64, Resolved)| {
            sign_manifest(fleet, &host.id, *serial, resolved, now, ttl, key)
        };
        if work.len() < 512 {
            let signed: Vec<StoredManifest> = work.iter().map(sign).collect();
            self.metrics.manifests_signed.add(signed.len());
            return signed;
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(4);
        let chunk = work.len().div_ceil(threads).max(1);
        let signed: Vec<StoredManifest> = tokio::task::block_in_place(|| {
            std::thread::scope(|scope| {
                let handles: Vec<_> = work
                    .chunks(chunk)
                    .map(|part| scope.spawn(move || part.iter().map(sign).collect::<Vec<_>>()))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|handle| handle.join().expect("signing thread"))
                    .collect()
            })
        });
        self.metrics.manifests_signed.add(signed.len());
        signed
    }

    /// Records committed manifests as rendered and publishes them: long-polls of those
    /// hosts wake now.
    fn applied(&self, model: &mut Model, manifests: &[StoredManifest]) -> ChangeResult {
        for manifest in manifests {
            model.rendered.insert(manifest.host.clone(), Rendered::of(manifest));
        }
        self.publish(model, manifests);
        ChangeResult {
            hosts_changed: manifests.len(),
        }
    }

    fn publish(&self, model: &Model, manifests: &[StoredManifest]) {
        let slots = self.slots.read().expect("slots lock");
        for manifest in manifests {
            let (Some(slot), Some(host)) = (slots.get(&manifest.host), model.fleet.hosts.get(&manifest.host)) else {
                continue;
            };
            let resolved = model.fleet.resolve(host);
            slot.manifest
                .send_replace(Arc::new(Published::of(manifest, &resolved, &model.fleet)));
        }
    }

    /// Re-renders the active hosts a scope covers after a change already applied to the
    /// model; returns the manifests to commit.
    fn render_scope(&self, model: &Model, scopes: &[Scope], now: Timestamp) -> Vec<StoredManifest> {
        let mut ids: Vec<HostId> = scopes.iter().flat_map(|scope| model.fleet.hosts_in(scope)).collect();
        ids.sort();
        ids.dedup();
        let hosts: Vec<HostRecord> = ids.iter().filter_map(|id| model.fleet.hosts.get(id).cloned()).collect();
        self.render(model, &hosts, now, RenderMode::Changed)
    }

    // --- Admin tokens -----------------------------------------------------------------

    /// `drover admin-token create`: a named admin token; the secret is returned once and
    /// stored only hashed. A name is unique among the tokens not revoked; an expired token
    /// of the same name is revoked in the same transaction.
    pub async fn create_admin_token(
        &self,
        request: AdminTokenRequest,
        operator: &Operator,
    ) -> Result<AdminTokenCreated, ServiceError> {
        if request.name.as_str() == BOOTSTRAP_TOKEN_NAME {
            return Err(ServiceError::BadRequest(
                "reserved_token_name",
                format!(
                    "{BOOTSTRAP_TOKEN_NAME} is the name of the token in the coordinator's admin.token; choose another name"
                ),
            ));
        }
        if let Some(ttl) = request.ttl
            && (ttl.as_millis() < 1000 || ttl > Duration::from_secs(MAX_ADMIN_TOKEN_TTL_DAYS * 86_400))
        {
            return Err(ServiceError::BadRequest(
                "bad_ttl",
                format!("--ttl must be between 1s and {MAX_ADMIN_TOKEN_TTL_DAYS}d (or absent: valid until revoked)"),
            ));
        }
        let _changing = self.admin_token_changes.lock().await;
        let now = now();
        let existing = self
            .admin_tokens
            .read()
            .expect("admin tokens lock")
            .iter()
            .find(|token| token.name == request.name && token.revoked_at.is_none())
            .cloned();
        if let Some(existing) = existing.as_ref().filter(|token| !token.expired(now)) {
            return Err(ServiceError::Conflict(
                "admin_token_exists",
                format!(
                    "an admin token named {} exists (created {} by {}); revoke it first or choose another name",
                    existing.name, existing.created_at, existing.created_by
                ),
            ));
        }
        let secret = crate::datadir::new_secret();
        let record = AdminTokenRecord {
            name: request.name,
            hash: hash_secret(&secret),
            created_at: now,
            created_by: operator.name().to_owned(),
            expires_at: request.ttl.map(|ttl| now.plus(ttl)),
            revoked_at: None,
            revoked_by: None,
            last_used_at: None,
        };
        self.store.insert_admin_token(&record).await?;
        let mut tokens = self.admin_tokens.write().expect("admin tokens lock");
        if let Some(expired) = existing.and_then(|expired| tokens.iter_mut().find(|token| token.hash == expired.hash)) {
            expired.revoked_at = Some(now);
            expired.revoked_by = Some(record.created_by.clone());
        }
        tokens.push(record.clone());
        Ok(AdminTokenCreated {
            name: record.name,
            token: secret,
            created_at: now,
            expires_at: record.expires_at,
        })
    }

    /// `drover admin-token list`: every admin token, revoked ones too, oldest first.
    pub fn admin_tokens(&self) -> Vec<AdminTokenInfo> {
        let now = now();
        self.admin_tokens
            .read()
            .expect("admin tokens lock")
            .iter()
            .map(|token| admin_token_info(token, now))
            .collect()
    }

    /// `drover admin-token revoke`: requests with the token are refused from now on.
    /// Refused (409) for the last valid token, which would lock every operator out.
    pub async fn revoke_admin_token(
        &self,
        name: &TokenName,
        operator: &Operator,
    ) -> Result<AdminTokenInfo, ServiceError> {
        let _changing = self.admin_token_changes.lock().await;
        let now = now();
        let (target, others_valid, ever) = {
            let tokens = self.admin_tokens.read().expect("admin tokens lock");
            let target = tokens
                .iter()
                .find(|token| &token.name == name && token.revoked_at.is_none())
                .cloned();
            let others_valid = tokens
                .iter()
                .filter(|token| &token.name != name && token.valid(now))
                .count();
            let ever = tokens.iter().any(|token| &token.name == name);
            (target, others_valid, ever)
        };
        let Some(target) = target else {
            return Err(if ever {
                ServiceError::Conflict(
                    "admin_token_revoked",
                    format!("the admin token {name} is already revoked"),
                )
            } else {
                ServiceError::NotFound(
                    "admin_token_not_found",
                    format!("no admin token named {name}; see drover admin-token list"),
                )
            });
        };
        if target.valid(now) && others_valid == 0 {
            return Err(ServiceError::Conflict(
                "last_admin_token",
                format!(
                    "{name} is the last valid admin token; create another first (drover admin-token create NAME), or nobody could use the admin API"
                ),
            ));
        }
        if !self.store.revoke_admin_token(name, now, operator.name()).await? {
            return Err(ServiceError::Conflict(
                "admin_token_revoked",
                format!("the admin token {name} is already revoked"),
            ));
        }
        let mut tokens = self.admin_tokens.write().expect("admin tokens lock");
        let record = tokens
            .iter_mut()
            .find(|token| token.hash == target.hash)
            .expect("looked up above");
        record.revoked_at = Some(now);
        record.revoked_by = Some(operator.name().to_owned());
        Ok(admin_token_info(record, now))
    }

    // --- Enrollment -------------------------------------------------------------------

    /// `drover token create`.
    pub async fn create_token(
        &self,
        request: TokenRequest,
        operator: &Operator,
    ) -> Result<TokenResponse, ServiceError> {
        if request.ttl.as_millis() == 0 || request.ttl > Duration::from_secs(30 * 86_400) {
            return Err(ServiceError::BadRequest(
                "bad_ttl",
                "--ttl must be between 1s and 30d".into(),
            ));
        }
        check_labels(&request.labels)?;
        if let Some(problem) = self.config.loopback_trap.as_deref().filter(|_| !request.allow_loopback) {
            return Err(ServiceError::BadRequest(
                drover_protocol::api::LOOPBACK_PUBLIC_URL,
                format!(
                    "refusing to make a join line that works only on this machine: {problem}. Or pass --allow-loopback to get it anyway"
                ),
            ));
        }
        let now = now();
        let token = crate::datadir::new_secret();
        let expires_at = now.plus(request.ttl);
        self.store
            .insert_token(
                &hash_secret(&token),
                &request.labels,
                request.replace.as_ref(),
                operator.name(),
                expires_at,
                now,
            )
            .await?;
        let join_command = format!(
            "drover-agent join {} --token={token} --ca-sha256 {}",
            self.config.public_url,
            self.credentials.ca.sha256()
        );
        Ok(TokenResponse {
            token,
            expires_at,
            join_command,
        })
    }

    /// `POST /v1/join`. A plain token enrolls only a host id never used; a token from
    /// `--replace HOST` enrolls only HOST, taking it over from its old key when enrolled
    /// or bringing a removed id back. Either way the id keeps its serial, host pins and
    /// holds, and the join is in the id's history. A refused join leaves the token unused.
    pub async fn join(&self, request: JoinRequest) -> Result<JoinResponse, ServiceError> {
        let now = now();
        let token_hash = hash_secret(&request.token);
        let token = self.store.check_token(&token_hash, now).await?.map_err(token_error)?;
        let id = &request.host_id;
        if let Some(target) = &token.replace
            && target != id
        {
            return Err(ServiceError::Forbidden(
                "token_for_another_host",
                format!(
                    "this token may only re-enroll host {target}, not {id}; it is still unused. To enroll {id}, create a token for it (with --replace {id} if the id is taken)"
                ),
            ));
        }
        let issued = self
            .credentials
            .ca
            .issue_host(id, &request.csr_pem, None, now, self.config.host_certificate_validity)
            .map_err(|error| ServiceError::BadRequest("bad_csr", error.to_string()))?;

        let mut model = self.model.lock().await;
        let before = model.fleet.hosts.get(id);
        let change = match (before, &token.replace) {
            (None, _) => HostChange::Joined,
            (Some(host), Some(_)) if host.cert_sha256.is_some() => HostChange::Replaced,
            (Some(_), Some(_)) => HostChange::Rejoined,
            (Some(host), None) if host.cert_sha256.is_some() => {
                let older = if token.replace_any {
                    " (this token was made by an older drover as \"replace any host\", which is no longer honoured)"
                } else {
                    ""
                };
                return Err(ServiceError::Conflict(
                    "host_exists",
                    format!(
                        "host id {id} is already enrolled{older}; to re-enroll it (a reinstalled machine), create a token with `drover token create --replace {id}`; the token is still unused"
                    ),
                ));
            }
            (Some(_), None) => {
                return Err(ServiceError::Conflict(
                    "host_id_removed",
                    format!(
                        "host id {id} was removed; its id is reused only on purpose, because it keeps the id's host pins and holds: create a token with `drover token create --replace {id}`, or join under a new id; the token is still unused"
                    ),
                ));
            }
        };
        let old_certificate = before.and_then(|host| host.cert_sha256.clone());
        let who = token.created_by.clone().unwrap_or_else(|| "join token".to_owned());
        let what = match change {
            HostChange::Replaced => {
                "re-joined with a new key (a --replace token); the old key and its certificates stop working".to_owned()
            }
            HostChange::Rejoined => {
                "joined again after its removal (a --replace token), keeping the id's host pins and holds".to_owned()
            }
            _ => "joined with a join token".to_owned(),
        };
        let history = HostHistoryEntry {
            at: now,
            who,
            what: format!("{what}; labels {}", labels_text(&token.labels)),
            old_certificate,
            new_certificate: Some(issued.sha256.clone()),
        };
        let record = HostRecord {
            id: id.clone(),
            labels: token.labels.clone(),
            cert_sha256: Some(issued.sha256.clone()),
            key_sha256: Some(issued.key_sha256.clone()),
            cert_not_after: Some(issued.not_after),
            joined_at: now,
        };
        let previous = model.fleet.hosts.insert(record.id.clone(), record.clone());
        // A re-join gets a new serial even when nothing changed (Force).
        let manifests = self.render(&model, std::slice::from_ref(&record), now, RenderMode::Force);
        // The pins its labels bring could give it a manifest its agent would refuse: the
        // join fails (the token stays unused) rather than enrolling a host that can never
        // apply anything.
        let what = format!("joining host {} with labels {:?}", record.id, record.labels);
        if let Err(error) = check_manifests(&model.fleet, &manifests, &what) {
            match previous {
                Some(previous) => model.fleet.hosts.insert(record.id.clone(), previous),
                None => model.fleet.hosts.remove(&record.id),
            };
            return Err(error);
        }
        let manifest = manifests.first().expect("a joining host is always rendered").clone();
        let stored = self
            .store
            .join_host(&token_hash, &record, &manifest, (change, &history), now)
            .await;
        if !matches!(stored, Ok(Ok(()))) {
            // Nothing was committed (another join used the token first, or the store
            // failed): put the model back as it was.
            match previous {
                Some(previous) => model.fleet.hosts.insert(record.id.clone(), previous),
                None => model.fleet.hosts.remove(&record.id),
            };
            return Err(match stored {
                Ok(Err(problem)) => token_error(problem),
                Err(error) => error.into(),
                Ok(Ok(())) => unreachable!("matched above"),
            });
        }
        model.rendered.insert(record.id.clone(), Rendered::of(&manifest));
        let resolved = model.fleet.resolve(&record);
        let (sender, _) = watch::channel(Arc::new(Published::of(&manifest, &resolved, &model.fleet)));
        let slot = HostSlot {
            identity: RwLock::new(SlotIdentity::of(&record)),
            manifest: sender,
            last_seen: AtomicI64::new(now.unix()),
        };
        // Replacing the slot drops the old sender: long-polls on the old certificate end.
        self.slots
            .write()
            .expect("slots lock")
            .insert(record.id.clone(), Arc::new(slot));
        self.reports.lock().expect("reports lock").remove(&record.id);
        self.metrics.joins.add(1);
        Ok(JoinResponse {
            host_id: record.id,
            certificate_pem: issued.pem,
            ca_pem: self.credentials.ca.cert_pem().to_owned(),
            trust: String::from_utf8_lossy(self.credentials.trust.envelope_bytes()).into_owned(),
            labels: record.labels,
        })
    }

    /// `POST /v1/agent/certificate`: a new certificate for the key of the certificate the
    /// host presented (`identity`, already proven by [`Coordinator::host_slot`]). The
    /// certificates it had stay valid until they expire: they carry the same key, so an
    /// agent that dies before writing the new one still gets in with the old one.
    pub async fn renew_certificate(
        &self,
        identity: &PeerIdentity,
        csr_pem: &str,
    ) -> Result<RenewResponse, ServiceError> {
        let now = now();
        let issued = self
            .credentials
            .ca
            .issue_host(
                &identity.host,
                csr_pem,
                Some(&identity.key_sha256),
                now,
                self.config.host_certificate_validity,
            )
            .map_err(|error| match error {
                crate::server::pki::PkiError::CsrKeyMismatch => {
                    ServiceError::BadRequest("csr_key_mismatch", error.to_string())
                }
                crate::server::pki::PkiError::CsrHostMismatch { .. } => {
                    ServiceError::BadRequest("csr_host_mismatch", error.to_string())
                }
                _ => ServiceError::BadRequest("bad_csr", error.to_string()),
            })?;
        // Under the model lock, so a join or removal of this host cannot interleave.
        let mut model = self.model.lock().await;
        let slot = self.host_slot(Some(identity))?;
        let old_certificate = slot.identity.read().expect("slot identity lock").cert_sha256.clone();
        let history = HostHistoryEntry {
            at: now,
            who: HOST_RENEWAL_ACTOR.to_owned(),
            what: format!("renewed its certificate (same key), valid until {}", issued.not_after),
            old_certificate: Some(old_certificate),
            new_certificate: Some(issued.sha256.clone()),
        };
        let recorded = self
            .store
            .renew_host(
                &identity.host,
                &issued.key_sha256,
                &issued.sha256,
                issued.not_after,
                &history,
            )
            .await?;
        if !recorded {
            return Err(ServiceError::Forbidden(
                "certificate_replaced",
                format!(
                    "host {} was removed or re-joined with a new key meanwhile; this certificate is no longer valid",
                    identity.host
                ),
            ));
        }
        {
            let mut known = slot.identity.write().expect("slot identity lock");
            known.key_sha256 = Some(issued.key_sha256.clone());
            known.cert_sha256 = issued.sha256.clone();
            known.not_after = Some(issued.not_after);
        }
        if let Some(record) = model.fleet.hosts.get_mut(&identity.host) {
            record.cert_sha256 = Some(issued.sha256.clone());
            record.key_sha256 = Some(issued.key_sha256.clone());
            record.cert_not_after = Some(issued.not_after);
        }
        self.metrics.certificate_renewals.add(1);
        tracing::info!(host = %identity.host, not_after = %issued.not_after, "renewed a host certificate");
        Ok(RenewResponse {
            certificate_pem: issued.pem,
            not_after: issued.not_after,
        })
    }

    // --- Reports ----------------------------------------------------------------------

    /// `POST /v1/agent/report`: keeps the latest in memory and queues it for the store.
    pub fn report(&self, slot_host: &HostId, mut report: HostReport) -> Result<(), ServiceError> {
        if &report.host != slot_host {
            return Err(ServiceError::Forbidden(
                "wrong_host",
                format!("host {slot_host} cannot report for host {}", report.host),
            ));
        }
        report
            .check()
            .map_err(|detail| ServiceError::BadRequest("bad_report", detail))?;
        self.drop_apps_never_given(&mut report);
        let received_at = now();
        // Queue first: a report the store will not see must not show in status either.
        let permit = self.report_queue.try_reserve().map_err(|_| {
            ServiceError::Unavailable(
                "report_queue_full",
                "the coordinator is behind on storing reports; retry".into(),
            )
        })?;
        self.metrics.reports.add(1);
        let previous = self
            .reports
            .lock()
            .expect("reports lock")
            .insert(report.host.clone(), (report.clone(), received_at));
        // Rollouts advance on changes of an app's current/desired/state, not on every
        // periodic report.
        if previous.is_none_or(|(old, _)| !same_app_states(&old, &report)) {
            self.rollout_dirty
                .lock()
                .expect("rollout dirty lock")
                .insert(report.host.clone());
            self.rollout_signal.notify_one();
        }
        permit.send((report, received_at));
        Ok(())
    }

    /// Drops (and counts) the apps of a report that the host was never given: a host may
    /// report the apps of its current manifest, and keeps reporting an app it was given
    /// before (while it stops and removes it) only as long as every report since named it.
    /// Anything else is invented and would show in fleet status as if it ran there.
    fn drop_apps_never_given(&self, report: &mut HostReport) {
        // The published manifest is shared (an Arc): nothing is copied per report.
        let given: Option<Arc<Published>> = self
            .slots
            .read()
            .expect("slots lock")
            .get(&report.host)
            .map(|slot| Arc::clone(&slot.manifest.borrow()));
        let before = report.apps.len();
        {
            let reports = self.reports.lock().expect("reports lock");
            let reported_before = reports.get(&report.host).map(|(previous, _)| &previous.apps);
            report.apps.retain(|app, _| {
                given
                    .as_ref()
                    .is_some_and(|published| published.versions.contains_key(app))
                    || reported_before.is_some_and(|apps| apps.contains_key(app))
            });
        }
        let dropped = before - report.apps.len();
        if dropped > 0 {
            self.metrics.report_apps_ignored.add(dropped);
            tracing::warn!(host = %report.host, dropped, "a report named apps this host was never given; ignored");
        }
    }

    // --- Hosts, labels, groups --------------------------------------------------------

    fn summary(&self, model: &Model, host: &HostRecord) -> HostSummary {
        let slot = self.slots.read().expect("slots lock").get(&host.id).cloned();
        let published = slot.as_ref().map(|slot| slot.manifest.borrow().clone());
        let reports = self.reports.lock().expect("reports lock");
        let report = reports.get(&host.id).map(|(report, _)| report);
        let mut apps: BTreeMap<AppName, HostApp> = BTreeMap::new();
        if let Some(published) = &published {
            for (app, version) in &published.versions {
                apps.entry(app.clone()).or_insert_with(empty_app).desired = Some(version.clone());
            }
        }
        if let Some(report) = report {
            for (app, state) in &report.apps {
                let entry = apps.entry(app.clone()).or_insert_with(empty_app);
                entry.current = state.current.clone();
                entry.state = Some(state.state);
                entry.last_error = state.last_error.clone();
            }
        }
        let last_seen = slot
            .map(|slot| slot.last_seen.load(Ordering::Relaxed))
            .filter(|seen| *seen > 0);
        HostSummary {
            id: host.id.clone(),
            labels: host.labels.clone(),
            joined_at: host.joined_at,
            last_seen: last_seen.map(Timestamp::from_unix),
            manifest_serial: model.rendered.get(&host.id).map_or(0, |rendered| rendered.serial),
            reported_serial: report.and_then(|report| report.manifest_serial),
            held: published.is_some_and(|published| published.held),
            apps,
            facts: report.map(|report| report.facts.clone()),
            certificate_not_after: self
                .slots
                .read()
                .expect("slots lock")
                .get(&host.id)
                .and_then(|slot| slot.identity.read().expect("slot identity lock").not_after)
                .or(host.cert_not_after),
        }
    }

    /// `drover hosts list`.
    pub async fn hosts(&self) -> Vec<HostSummary> {
        let model = self.model.lock().await;
        model
            .fleet
            .active_hosts()
            .map(|host| self.summary(&model, host))
            .collect()
    }

    /// `drover hosts show`.
    pub async fn host(&self, id: &HostId) -> Result<HostDetail, ServiceError> {
        let summary = {
            let model = self.model.lock().await;
            let host = active_host(&model.fleet, id)?;
            self.summary(&model, host)
        };
        let manifest_rejection = self
            .reports
            .lock()
            .expect("reports lock")
            .get(id)
            .and_then(|(report, _)| report.manifest_rejection.clone());
        let events = self.store.events(id).await?;
        let history = self.store.host_history(id, 1_000).await?;
        Ok(HostDetail {
            summary,
            manifest_rejection,
            events,
            history,
        })
    }

    /// `drover hosts history`: the id's joins, replacements, renewals and removals, also
    /// while it is removed.
    pub async fn host_history(&self, id: &HostId) -> Result<Vec<HostHistoryEntry>, ServiceError> {
        if !self.model.lock().await.fleet.hosts.contains_key(id) {
            return Err(ServiceError::NotFound(
                "host_not_found",
                format!("no host with id {id} was ever enrolled"),
            ));
        }
        Ok(self.store.host_history(id, 10_000).await?)
    }

    /// `drover hosts label`.
    pub async fn label_host(
        &self,
        id: &HostId,
        set: Labels,
        remove: Vec<String>,
    ) -> Result<ChangeResult, ServiceError> {
        check_labels(&set)?;
        let mut model = self.model.lock().await;
        let mut record = active_host(&model.fleet, id)?.clone();
        for key in &remove {
            record.labels.remove(key);
        }
        record.labels.extend(set);
        let previous = model.fleet.hosts.insert(id.clone(), record.clone());
        let manifests = self.render(&model, &[record.clone()], now(), RenderMode::Changed);
        let outcome = match check_manifests(&model.fleet, &manifests, &format!("labelling host {id}")) {
            Ok(()) => self
                .store
                .set_labels(id, &record.labels, &manifests)
                .await
                .map_err(ServiceError::from),
            Err(error) => Err(error),
        };
        if let Err(error) = outcome {
            if let Some(previous) = previous {
                model.fleet.hosts.insert(id.clone(), previous);
            }
            return Err(error);
        }
        Ok(self.applied(&mut model, &manifests))
    }

    /// `drover hosts remove`: the host's certificate stops working at once.
    pub async fn remove_host(&self, id: &HostId, operator: &Operator) -> Result<(), ServiceError> {
        let mut model = self.model.lock().await;
        let old_certificate = active_host(&model.fleet, id)?.cert_sha256.clone();
        let history = HostHistoryEntry {
            at: now(),
            who: operator.name().to_owned(),
            what: "removed: its key and certificates stop working; the id, with its host pins and holds, comes back only with `drover token create --replace HOST`".to_owned(),
            old_certificate,
            new_certificate: None,
        };
        self.store.remove_host(id, &history).await?;
        if let Some(record) = model.fleet.hosts.get_mut(id) {
            record.cert_sha256 = None;
            record.key_sha256 = None;
            record.cert_not_after = None;
        }
        self.slots.write().expect("slots lock").remove(id);
        self.reports.lock().expect("reports lock").remove(id);
        let now = now();
        let apps: Vec<AppName> = model
            .rollouts
            .iter()
            .filter(|(_, active)| active.rollout.host_status(id).is_some())
            .map(|(app, _)| app.clone())
            .collect();
        for app in apps {
            let event = Event::HostRemoved { host: id.clone() };
            let actor = Actor::of(operator, None);
            if let Err(error) = self
                .step_rollout(&mut model, &app, vec![event], now, &actor, false)
                .await
            {
                tracing::error!(%error, %app, host = %id, "the rollout could not take the host's removal; it will count as missing its deadline");
            }
        }
        Ok(())
    }

    /// `drover groups list`.
    pub async fn groups(&self) -> Vec<Group> {
        let model = self.model.lock().await;
        model
            .fleet
            .groups
            .iter()
            .map(|(name, selector)| Group {
                name: name.clone(),
                selector: selector.clone(),
            })
            .collect()
    }

    /// `drover groups create`: re-renders hosts the old or new selector matched.
    pub async fn put_group(&self, group: Group) -> Result<ChangeResult, ServiceError> {
        check_group_name(&group.name)?;
        check_labels(&group.selector)?;
        if group.selector.is_empty() {
            return Err(ServiceError::BadRequest(
                "empty_selector",
                "a group needs at least one label in its selector (use the fleet scope for every host)".into(),
            ));
        }
        let mut model = self.model.lock().await;
        let scope = Scope::Group(group.name.clone());
        let before = model.fleet.hosts_in(&scope);
        let previous = model.fleet.groups.insert(group.name.clone(), group.selector.clone());
        let mut scopes: Vec<Scope> = before.into_iter().map(Scope::Host).collect();
        scopes.push(scope);
        let manifests = self.render_scope(&model, &scopes, now());
        let outcome = match check_manifests(&model.fleet, &manifests, &format!("group {}", group.name)) {
            Ok(()) => self
                .store
                .put_group(&group.name, &group.selector, &manifests)
                .await
                .map_err(ServiceError::from),
            Err(error) => Err(error),
        };
        if let Err(error) = outcome {
            match previous {
                Some(previous) => model.fleet.groups.insert(group.name.clone(), previous),
                None => model.fleet.groups.remove(&group.name),
            };
            return Err(error);
        }
        Ok(self.applied(&mut model, &manifests))
    }

    /// `drover groups delete`: refused while pins or holds use the group.
    pub async fn delete_group(&self, name: &str) -> Result<(), ServiceError> {
        let mut model = self.model.lock().await;
        if !model.fleet.groups.contains_key(name) {
            return Err(ServiceError::NotFound(
                "group_not_found",
                format!("no group named {name}"),
            ));
        }
        let scope = Scope::Group(name.to_owned());
        let pinned = model.fleet.pins.keys().any(|(_, pin_scope)| pin_scope == &scope);
        if pinned || model.fleet.holds.contains(&scope) {
            return Err(ServiceError::Conflict(
                "group_in_use",
                format!("group {name} has pins or holds; unpin and unhold it first"),
            ));
        }
        self.store.delete_group(name).await?;
        model.fleet.groups.remove(name);
        Ok(())
    }

    // --- Releases ---------------------------------------------------------------------

    /// `drover release create`. Releases are immutable: the same version with other
    /// content is refused; the identical request again is accepted (idempotent).
    pub async fn create_release(&self, request: ReleaseRequest) -> Result<Release, ServiceError> {
        let kind = match &request.artifact {
            ReleaseArtifact::StoredTarball { .. } | ReleaseArtifact::RemoteTarball { .. } => ArtifactKind::Tarball,
            ReleaseArtifact::Image { .. } => ArtifactKind::Image,
        };
        // The agent runs this same check on every manifest: what passes here runs there.
        if let Err(error) = request.spec.check(kind) {
            let code = if kind == ArtifactKind::Tarball && request.spec.service.command.is_none() {
                "command_required"
            } else {
                "bad_spec"
            };
            return Err(ServiceError::BadRequest(
                code,
                format!("release {} {}: {error}", request.app, request.version),
            ));
        }
        let artifact = match request.artifact {
            ReleaseArtifact::StoredTarball { digest } => {
                let size = crate::server::blobs::size_of(&self.data.blobs(), &digest)?.ok_or_else(|| {
                    ServiceError::NotFound(
                        "artifact_not_found",
                        format!("no uploaded artifact {digest}; upload it first (drover release create --artifact FILE does)"),
                    )
                })?;
                self.check_uploaded_program(&request.app, &request.version, &request.spec, &digest)
                    .await?;
                let url = HttpUrl::try_from(format!("{}/v1/artifacts/{digest}", self.config.public_url))
                    .map_err(|error| ServiceError::BadRequest("bad_public_url", error.to_string()))?;
                Artifact::Tarball { url, digest, size }
            }
            ReleaseArtifact::RemoteTarball { url, digest, size } => Artifact::Tarball { url, digest, size },
            ReleaseArtifact::Image { reference } => {
                crate::reference::check_pinned(&reference).map_err(|problem| {
                    ServiceError::BadRequest(
                        "bad_image_reference",
                        format!("image reference {}: {problem}", reference.as_str()),
                    )
                })?;
                Artifact::Oci {
                    digest: reference.digest(),
                    reference,
                }
            }
        };
        let release = Release {
            app: request.app,
            version: request.version,
            artifact,
            spec: request.spec,
            created_at: now(),
        };
        let mut model = self.model.lock().await;
        let key = (release.app.clone(), release.version.clone());
        if let Some(existing) = model.fleet.releases.get(&key) {
            if existing.artifact == release.artifact && existing.spec == release.spec {
                return Ok(existing.clone());
            }
            return Err(ServiceError::Conflict(
                "release_exists",
                format!(
                    "release {} {} already exists with another artifact or spec (digest {}); releases are immutable: use a new version",
                    release.app,
                    release.version,
                    existing.artifact.digest()
                ),
            ));
        }
        self.store.insert_release(&release).await?;
        model.fleet.releases.insert(key, release.clone());
        Ok(release)
    }

    /// Refuses a release made from an upload whose tarball lacks the spec's program, or
    /// whose program the app's user cannot execute (400 `program_not_in_tarball`,
    /// `program_not_executable`, `not_a_tarball`): the check `drover release create` runs
    /// before uploading ([`crate::tarball_check`]), here for every client. The same release
    /// created again is not checked again (its answer is the existing release); a check
    /// stopped by its limits is logged and the release accepted.
    async fn check_uploaded_program(
        &self,
        app: &AppName,
        version: &Version,
        spec: &drover_protocol::AppSpec,
        digest: &Digest,
    ) -> Result<(), ServiceError> {
        let created_before = {
            let model = self.model.lock().await;
            model
                .fleet
                .releases
                .get(&(app.clone(), version.clone()))
                .is_some_and(|existing| existing.artifact.digest() == digest && &existing.spec == spec)
        };
        if created_before {
            return Ok(());
        }
        let path = crate::server::blobs::path_of(&self.data.blobs(), digest);
        let owned_spec = spec.clone();
        let checked = tokio::task::spawn_blocking(move || {
            crate::tarball_check::check_program(&owned_spec, || std::fs::File::open(&path).map(std::io::BufReader::new))
        })
        .await
        .map_err(|error| ServiceError::Io {
            operation: "checking an uploaded artifact",
            source: std::io::Error::other(error.to_string()),
        })?;
        match checked {
            Ok(crate::tarball_check::Checked::Inconclusive(reason)) => {
                tracing::warn!(%app, %version, %digest, "release created without checking its program: {reason}");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(crate::tarball_check::ProgramProblem::Io(detail)) => Err(ServiceError::Io {
                operation: "reading an uploaded artifact",
                source: std::io::Error::other(detail),
            }),
            Err(problem) => Err(ServiceError::BadRequest(
                problem.code(),
                format!("release {app} {version}: uploaded artifact {digest}: {problem}"),
            )),
        }
    }

    /// `drover release list APP`, newest first.
    pub async fn releases(&self, app: &AppName) -> Vec<Release> {
        let model = self.model.lock().await;
        let mut releases: Vec<Release> = model
            .fleet
            .releases
            .values()
            .filter(|release| &release.app == app)
            .cloned()
            .collect();
        releases.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.version.cmp(&a.version)));
        releases
    }

    // --- Pins and holds ---------------------------------------------------------------

    fn check_scope(fleet: &Fleet, scope: &Scope) -> Result<(), ServiceError> {
        match scope {
            Scope::Fleet => Ok(()),
            Scope::Group(name) if fleet.groups.contains_key(name) => Ok(()),
            Scope::Group(name) => Err(ServiceError::NotFound(
                "group_not_found",
                format!("no group named {name}; create it with drover groups create"),
            )),
            Scope::Host(id) => active_host(fleet, id).map(|_| ()),
        }
    }

    /// `drover pin`.
    pub async fn pin(&self, pin: Pin, operator: &Operator, reason: Option<&str>) -> Result<ChangeResult, ServiceError> {
        let actor = Actor::of(operator, check_reason(reason)?);
        let mut model = self.model.lock().await;
        refuse_during_rollout(&model, &pin.app, "pin")?;
        Self::check_scope(&model.fleet, &pin.scope)?;
        if !model
            .fleet
            .releases
            .contains_key(&(pin.app.clone(), pin.version.clone()))
        {
            return Err(ServiceError::NotFound(
                "release_not_found",
                format!(
                    "no release {} {}; create it with drover release create",
                    pin.app, pin.version
                ),
            ));
        }
        let key = (pin.app.clone(), pin.scope.clone());
        let previous = model.fleet.pins.insert(key.clone(), pin.version.clone());
        let manifests = self.render_scope(&model, std::slice::from_ref(&pin.scope), now());
        let history = [manual_history(
            Some(&pin.app),
            format!("pinned {} {} for the {}", pin.app, pin.version, pin.scope),
            &actor,
        )];
        let what = format!("pinning {} {} for the {}", pin.app, pin.version, pin.scope);
        let outcome = match check_manifests(&model.fleet, &manifests, &what) {
            Ok(()) => self
                .store
                .change_pin(&pin.app, &pin.scope, Some(&pin.version), &history, &manifests)
                .await
                .map_err(ServiceError::from),
            Err(error) => Err(error),
        };
        if let Err(error) = outcome {
            restore_pin(&mut model.fleet, key, previous);
            return Err(error);
        }
        Ok(self.applied(&mut model, &manifests))
    }

    /// `drover unpin`.
    pub async fn unpin(
        &self,
        app: AppName,
        scope: Scope,
        operator: &Operator,
        reason: Option<&str>,
    ) -> Result<ChangeResult, ServiceError> {
        let actor = Actor::of(operator, check_reason(reason)?);
        let mut model = self.model.lock().await;
        refuse_during_rollout(&model, &app, "unpin")?;
        let key = (app.clone(), scope.clone());
        let Some(previous) = model.fleet.pins.remove(&key) else {
            return Err(ServiceError::NotFound(
                "pin_not_found",
                format!("{app} is not pinned for the {scope}"),
            ));
        };
        let manifests = self.render_scope(&model, std::slice::from_ref(&scope), now());
        let history = [manual_history(
            Some(&app),
            format!("unpinned {app} for the {scope}"),
            &actor,
        )];
        if let Err(error) = self.store.change_pin(&app, &scope, None, &history, &manifests).await {
            restore_pin(&mut model.fleet, key, Some(previous));
            return Err(error.into());
        }
        Ok(self.applied(&mut model, &manifests))
    }

    /// `drover hold` / `drover unhold`. A hold stops every app on its hosts, so its
    /// history line belongs to no app and shows in every app's history. Holding what is
    /// held already (or lifting no hold) changes nothing and records nothing.
    pub async fn hold(
        &self,
        scope: Scope,
        held: bool,
        operator: &Operator,
        reason: Option<&str>,
    ) -> Result<ChangeResult, ServiceError> {
        let actor = Actor::of(operator, check_reason(reason)?);
        let mut model = self.model.lock().await;
        Self::check_scope(&model.fleet, &scope)?;
        let changed = if held {
            model.fleet.holds.insert(scope.clone())
        } else {
            model.fleet.holds.remove(&scope)
        };
        if !changed {
            return Ok(ChangeResult { hosts_changed: 0 });
        }
        let manifests = self.render_scope(&model, std::slice::from_ref(&scope), now());
        let verb = if held { "held" } else { "released the hold on" };
        let history = [manual_history(None, format!("{verb} the {scope}"), &actor)];
        if let Err(error) = self.store.change_hold(&scope, held, &history, &manifests).await {
            if held {
                model.fleet.holds.remove(&scope);
            } else {
                model.fleet.holds.insert(scope);
            }
            return Err(error.into());
        }
        Ok(self.applied(&mut model, &manifests))
    }

    /// Re-signs manifests that expire within half their lifetime.
    pub async fn refresh(&self) -> Result<usize, ServiceError> {
        let mut model = self.model.lock().await;
        let hosts: Vec<HostRecord> = model.fleet.active_hosts().cloned().collect();
        let manifests = self.render(&model, &hosts, now(), RenderMode::Refresh);
        self.store.save_manifests(&manifests).await?;
        Ok(self.applied(&mut model, &manifests).hosts_changed)
    }

    // --- Rollouts ---------------------------------------------------------------------

    /// Validates a rollout request (every bad field at once) and plans it over the hosts
    /// enrolled now, with the id the app's next rollout gets, so `plan` shows what `start`
    /// will do as long as the fleet does not change in between.
    async fn plan_rollout_in(
        &self,
        model: &Model,
        request: &RolloutRequest,
    ) -> Result<(RolloutSpec, Plan), ServiceError> {
        let spec = rollout_spec(request)?;
        if !model
            .fleet
            .releases
            .contains_key(&(spec.app.clone(), spec.target.clone()))
        {
            return Err(ServiceError::NotFound(
                "release_not_found",
                format!(
                    "no release {} {}; create it with drover release create",
                    spec.app, spec.target
                ),
            ));
        }
        let sequence = self.store.rollout_count(&spec.app).await? + 1;
        let rollout_id = format!("{}-{}-{sequence}", spec.app, spec.target);
        let hosts = {
            let reports = self.reports.lock().expect("reports lock");
            model
                .fleet
                .active_hosts()
                .map(|host| PlanHost {
                    id: host.id.clone(),
                    groups: model.fleet.groups_of(&host.labels).map(str::to_owned).collect(),
                    current: reports
                        .get(&host.id)
                        .and_then(|(report, _)| report.apps.get(&spec.app))
                        .and_then(|app| app.current.clone()),
                })
                .collect::<Vec<_>>()
        };
        // During a rollout its own host pins are in place; `start` refuses with
        // `rollout_active` then, and a plan previews the next one.
        if !model.rollouts.contains_key(&spec.app) {
            refuse_pins_in_the_way(&model.fleet, &spec.app, &hosts)?;
        }
        let what = format!("a rollout of {} to {}", spec.app, spec.target);
        for (host, size, apps) in manifests_with(&model.fleet, &spec.app, &spec.target) {
            refuse_oversized(&what, &host, size, 1)?;
            refuse_too_many_apps(&what, &host, apps)?;
        }
        let plan = crate::server::rollout::plan(&spec, &rollout_id, &hosts).map_err(|error| match error {
            PlanError::NoHosts { .. } => ServiceError::Conflict("no_hosts", error.to_string()),
            PlanError::EmptyGroup { .. } => ServiceError::BadRequest("empty_group", error.to_string()),
            PlanError::DuplicateHost { .. } => ServiceError::BadRequest("duplicate_host", error.to_string()),
        })?;
        Ok((spec, plan))
    }

    /// `drover rollout plan`: which host is in which stage, without changing anything.
    pub async fn plan_rollout(&self, request: &RolloutRequest) -> Result<RolloutPlan, ServiceError> {
        let model = self.model.lock().await;
        let (spec, plan) = self.plan_rollout_in(&model, request).await?;
        let preview = Rollout::new(spec, plan);
        Ok(plan_view(&preview))
    }

    /// `drover rollout start`: plans, stores the rollout and takes its first step, in one
    /// transaction with the pins and manifests of that step. One active rollout per app.
    pub async fn start_rollout(
        &self,
        request: &RolloutRequest,
        operator: &Operator,
    ) -> Result<RolloutStatus, ServiceError> {
        let reason = check_reason(request.reason.as_deref())?;
        let mut guard = self.model.lock().await;
        let model = &mut *guard;
        let (spec, plan) = self.plan_rollout_in(model, request).await?;
        let app = spec.app.clone();
        if let Some(active) = model.rollouts.get(&app) {
            return Err(ServiceError::Conflict(
                "rollout_active",
                format!(
                    "{app} already has an active rollout {} ({}); see drover rollout status {app}, or abort it first",
                    active.rollout.id(),
                    active.rollout.phase()
                ),
            ));
        }
        let now = now();
        model.rollouts.insert(
            app.clone(),
            ActiveRollout {
                rollout: Rollout::new(spec, plan),
                created_by: operator.name().to_owned(),
                created_at: now,
            },
        );
        let actor = Actor::of(operator, reason);
        if let Err(error) = self
            .step_rollout(model, &app, vec![Event::Start], now, &actor, true)
            .await
        {
            model.rollouts.remove(&app);
            return Err(error);
        }
        drop(guard);
        self.rollout_status(&app).await
    }

    /// `drover rollout pause|resume|approve|abort`: refused (409) when the rollout's
    /// phase does not allow it, changing nothing.
    pub async fn rollout_command(
        &self,
        app: &AppName,
        command: RolloutCommand,
        operator: &Operator,
        reason: Option<&str>,
    ) -> Result<RolloutStatus, ServiceError> {
        let reason = check_reason(reason)?;
        let mut guard = self.model.lock().await;
        if !guard.rollouts.contains_key(app) {
            drop(guard);
            return Err(match self.store.latest_rollout(app).await? {
                Some(stored) => ServiceError::Conflict(
                    "rollout_finished",
                    format!(
                        "the last rollout of {app}, {}, is already {}; start a new one with drover rollout start",
                        stored.rollout.id(),
                        stored.rollout.phase()
                    ),
                ),
                None => no_rollout(app),
            });
        }
        let event = match command {
            RolloutCommand::Pause => Event::Pause {
                by: operator.name().to_owned(),
                reason: reason.clone(),
            },
            RolloutCommand::Resume => Event::Resume,
            RolloutCommand::Approve => Event::Approve,
            RolloutCommand::Abort { rollback } => Event::Abort { rollback },
        };
        let actor = Actor::of(operator, reason);
        self.step_rollout(&mut guard, app, vec![event], now(), &actor, false)
            .await?;
        drop(guard);
        self.rollout_status(app).await
    }

    /// `drover rollout status`: the app's active rollout, else its last one.
    pub async fn rollout_status(&self, app: &AppName) -> Result<RolloutStatus, ServiceError> {
        let now = now();
        {
            let model = self.model.lock().await;
            if let Some(active) = model.rollouts.get(app) {
                let mut status = status_view(&active.rollout, &active.created_by, active.created_at, None, now);
                status.failed_hosts = self.failed_hosts_view(&active.rollout);
                return Ok(status);
            }
        }
        let stored: StoredRollout = self.store.latest_rollout(app).await?.ok_or_else(|| no_rollout(app))?;
        let mut status = status_view(
            &stored.rollout,
            &stored.created_by,
            stored.created_at,
            stored.finished_at,
            now,
        );
        status.failed_hosts = self.failed_hosts_view(&stored.rollout);
        Ok(status)
    }

    /// The rollout's failed hosts (the first [`MAX_FAILED_HOSTS_SHOWN`]), each with the
    /// app's state and `last_error` from the host's latest report: why it failed, in the
    /// host's words (a removed host has no report left).
    fn failed_hosts_view(&self, rollout: &Rollout) -> Vec<RolloutFailedHost> {
        let app = &rollout.spec().app;
        let reports = self.reports.lock().expect("reports lock");
        rollout
            .failed_hosts()
            .into_iter()
            .take(MAX_FAILED_HOSTS_SHOWN)
            .map(|failed| {
                let reported = reports.get(&failed.host).and_then(|(report, _)| report.apps.get(app));
                RolloutFailedHost {
                    stage: failed.stage,
                    at: failed.at,
                    reason: failed.reason.to_string(),
                    state: reported.map(|state| state.state),
                    error: reported.and_then(|state| state.last_error.clone()),
                    host: failed.host,
                }
            })
            .collect()
    }

    /// `drover rollout history`: rollouts, commands, pins and holds, oldest first.
    pub async fn rollout_history(&self, app: &AppName) -> Result<Vec<HistoryEntry>, ServiceError> {
        Ok(self.store.history(app, 10_000).await?)
    }

    /// Feeds `events` to `app`'s active rollout and carries out its actions: the new
    /// state, the pin changes (in the order the controller gave them, so completion's
    /// fleet pin comes before the host pins are removed), the history lines and the
    /// manifests they render are committed in one transaction, then published. If the
    /// commit fails, the rollout and the pins in memory are put back as they were (the
    /// stored state, since memory equals the store between steps).
    async fn step_rollout(
        &self,
        model: &mut Model,
        app: &AppName,
        events: Vec<Event>,
        now: Timestamp,
        actor: &Actor,
        created: bool,
    ) -> Result<(), ServiceError> {
        let Some(active) = model.rollouts.get_mut(app) else {
            return Err(no_rollout(app));
        };
        let before = active.rollout.clone();
        let mut actions = Vec::new();
        for event in events {
            match active.rollout.step(event, now) {
                Ok(more) => actions.extend(more),
                Err(error) => {
                    active.rollout = before;
                    return Err(ServiceError::Conflict(error.code(), error.to_string()));
                }
            }
        }
        let rollout_id = active.rollout.id().to_owned();
        let finished = active.rollout.phase().is_finished();
        let mut pins: Vec<(Scope, Option<Version>)> = Vec::new();
        let mut history = Vec::new();
        for action in actions {
            match action {
                Action::PinHosts { hosts, version } => {
                    pins.extend(hosts.into_iter().map(|host| (Scope::Host(host), Some(version.clone()))));
                }
                Action::UnpinHosts { hosts } => pins.extend(hosts.into_iter().map(|host| (Scope::Host(host), None))),
                Action::PinApp { version } => pins.push((Scope::Fleet, Some(version))),
                // The driver re-reads `next_wake` after every step.
                Action::WakeAt { .. } => {}
                Action::Record { what } => history.push(HistoryRecord {
                    app: Some(app.clone()),
                    rollout: Some(rollout_id.clone()),
                    at: now,
                    who: actor.who.clone(),
                    what,
                    reason: actor.reason.clone(),
                }),
            }
        }
        let mut undo = Vec::with_capacity(pins.len());
        for (scope, version) in &pins {
            let key = (app.clone(), scope.clone());
            let previous = match version {
                Some(version) => model.fleet.pins.insert(key.clone(), version.clone()),
                None => model.fleet.pins.remove(&key),
            };
            undo.push((key, previous));
        }
        let scopes: Vec<Scope> = if pins.iter().any(|(scope, _)| scope == &Scope::Fleet) {
            vec![Scope::Fleet]
        } else {
            pins.iter().map(|(scope, _)| scope.clone()).collect()
        };
        let manifests = if scopes.is_empty() {
            Vec::new()
        } else {
            self.render_scope(model, &scopes, now)
        };
        let active = model.rollouts.get(app).expect("looked up above");
        let commit = RolloutCommit {
            rollout: &active.rollout,
            created: created.then_some((active.created_by.as_str(), active.created_at)),
            finished_at: finished.then_some(now),
            pins: &pins,
            pin_origin: (&actor.who, now, actor.reason.as_deref()),
            history: &history,
            manifests: &manifests,
        };
        if let Err(error) = self.store.commit_rollout(&commit).await {
            for (key, previous) in undo.into_iter().rev() {
                restore_pin(&mut model.fleet, key, previous);
            }
            if let Some(active) = model.rollouts.get_mut(app) {
                active.rollout = before;
            }
            return Err(error.into());
        }
        self.applied(model, &manifests);
        if finished {
            model.rollouts.remove(app);
        }
        self.metrics.rollout_steps.add(1);
        self.rollout_signal.notify_one();
        Ok(())
    }

    /// One pass of the rollout driver: feeds changed reports and due timers to the active
    /// rollouts; returns when it should run again at the latest.
    async fn drive_rollouts(&self) -> Option<Timestamp> {
        let dirty = std::mem::take(&mut *self.rollout_dirty.lock().expect("rollout dirty lock"));
        let mut guard = self.model.lock().await;
        let model = &mut *guard;
        let now = now();
        let mut retry = None;
        let apps: Vec<AppName> = model.rollouts.keys().cloned().collect();
        for app in apps {
            let mut events = Vec::new();
            {
                let rollout = &model.rollouts[&app].rollout;
                let reports = self.reports.lock().expect("reports lock");
                for host in &dirty {
                    if rollout.host_status(host).is_none() {
                        continue;
                    }
                    if let Some(state) = reports.get(host).and_then(|(report, _)| report.apps.get(&app)) {
                        events.push(Event::Report {
                            host: host.clone(),
                            current: state.current.clone(),
                            desired: state.desired.clone(),
                            state: state.state,
                        });
                    }
                }
                if events.is_empty() && rollout.next_wake().is_some_and(|at| at <= now) {
                    events.push(Event::Tick);
                }
            }
            if events.is_empty() {
                continue;
            }
            let actor = Actor {
                who: CONTROLLER_NAME.to_owned(),
                reason: None,
            };
            if let Err(error) = self.step_rollout(model, &app, events, now, &actor, false).await {
                tracing::error!(%error, %app, "rollout step failed; retrying in a second");
                self.rollout_dirty
                    .lock()
                    .expect("rollout dirty lock")
                    .extend(dirty.iter().cloned());
                retry = Some(now.plus(Duration::from_secs(1)));
            }
        }
        model
            .rollouts
            .values()
            .filter_map(|active| active.rollout.next_wake())
            .chain(retry)
            .min()
    }

    // --- Status -----------------------------------------------------------------------

    /// `drover status`.
    pub async fn status(&self) -> FleetStatus {
        let model = self.model.lock().await;
        let slots = self.slots.read().expect("slots lock");
        let reports = self.reports.lock().expect("reports lock");
        let mut status = FleetStatus {
            hosts: 0,
            held: 0,
            apps: BTreeMap::new(),
        };
        for host in model.fleet.active_hosts() {
            status.hosts += 1;
            if let Some(slot) = slots.get(&host.id) {
                let published = slot.manifest.borrow();
                status.held += usize::from(published.held);
                for app in published.versions.keys() {
                    status.apps.entry(app.clone()).or_default().desired_hosts += 1;
                }
            }
            if let Some((report, _)) = reports.get(&host.id) {
                for (app, state) in &report.apps {
                    let entry = status.apps.entry(app.clone()).or_default();
                    let version = state
                        .current
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), ToString::to_string);
                    *entry.versions.entry(version).or_default() += 1;
                    let state_name = serde_json::to_value(state.state)
                        .ok()
                        .and_then(|value| value.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    *entry.states.entry(state_name).or_default() += 1;
                }
            }
        }
        // Apps with releases or pins are listed with no host too: after the last host is
        // removed, "what should run" is still there and still the operator's question.
        for (app, _) in model.fleet.releases.keys() {
            status.apps.entry(app.clone()).or_default().releases += 1;
        }
        for ((app, scope), version) in &model.fleet.pins {
            let entry = status.apps.entry(app.clone()).or_default();
            match scope {
                Scope::Fleet => entry.fleet_pin = Some(version.clone()),
                Scope::Group(group) => {
                    entry.group_pins.insert(group.clone(), version.clone());
                }
                Scope::Host(_) => *entry.host_pins.entry(version.to_string()).or_default() += 1,
            }
        }
        status
    }

    /// `drover pins [APP]`: the pins in force (of `app`, or all) with who set them, when
    /// and why, and the holds, as committed.
    pub async fn pins(&self, app: Option<&AppName>) -> Result<PinList, ServiceError> {
        Ok(PinList {
            pins: self.store.pins(app).await?,
            holds: self.store.holds().await?,
        })
    }

    /// The number of enrolled hosts (for `/metrics`).
    pub fn host_count(&self) -> usize {
        self.slots.read().expect("slots lock").len()
    }
}

impl Background {
    /// Runs the report writer, the manifest refresher and the rollout driver until
    /// `shutdown` fires, then flushes the reports still queued.
    pub async fn run(mut self, coordinator: Arc<Coordinator>, mut shutdown: watch::Receiver<bool>) {
        let driver = tokio::spawn(drive_rollouts(coordinator.clone(), shutdown.clone()));
        let mut refresh = tokio::time::interval(coordinator.config.refresh_interval.to_std());
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                received = self.report_receiver.recv_many(&mut batch, 2048) => {
                    if received == 0 {
                        break;
                    }
                    // Keep only the newest report per host; every event is kept.
                    store_reports(&coordinator, std::mem::take(&mut batch)).await;
                }
                _ = refresh.tick() => {
                    match coordinator.refresh().await {
                        Ok(0) => {}
                        Ok(count) => tracing::info!(count, "re-signed manifests before they expire"),
                        Err(error) => tracing::error!(%error, "manifest refresh failed; will retry"),
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        self.report_receiver.close();
        while self.report_receiver.recv_many(&mut batch, 2048).await > 0 {
            store_reports(&coordinator, std::mem::take(&mut batch)).await;
        }
        let _ = driver.await;
    }
}

/// The rollout driver: runs a pass whenever a report changed or a step was taken, and at
/// the earliest timer of any active rollout (after a restart too, from the stored state).
async fn drive_rollouts(coordinator: Arc<Coordinator>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            break;
        }
        let wake = coordinator.drive_rollouts().await;
        let sleep = wake.map_or(std::time::Duration::from_secs(3600), until);
        tokio::select! {
            () = coordinator.rollout_signal.notified() => {}
            () = tokio::time::sleep(sleep) => {}
            _ = shutdown.changed() => break,
        }
    }
}

/// How long until `at` (whole seconds), plus a little so that `now()` has reached it.
fn until(at: Timestamp) -> std::time::Duration {
    let now_millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    let at_millis = u128::try_from(at.unix()).unwrap_or(0) * 1000;
    let millis = u64::try_from(at_millis.saturating_sub(now_millis)).unwrap_or(u64::MAX);
    std::time::Duration::from_millis(millis.saturating_add(20))
}

/// Who made a request: the name of the admin token it came with, made only by
/// [`Coordinator::check_admin`] (and [`Operator::new`] for in-process callers). It is the
/// `who` of everything the request records in the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator(TokenName);

impl Operator {
    /// An operator by token name, for callers inside the coordinator's process.
    pub fn new(name: TokenName) -> Operator {
        Operator(name)
    }

    /// The token's name.
    pub fn name(&self) -> &str {
        self.0.as_str()
    }
}

/// Who took a step and why, for the history: an operator, or the controller by itself.
#[derive(Debug)]
struct Actor {
    who: String,
    reason: Option<String>,
}

impl Actor {
    fn of(operator: &Operator, reason: Option<String>) -> Actor {
        Actor {
            who: operator.name().to_owned(),
            reason,
        }
    }
}

/// How precisely "last used" of an admin token is kept: at most one write per token per
/// this many seconds, so admin requests do not each cost a database write.
const LAST_USED_PRECISION_SECONDS: i64 = 60;
/// The longest `--ttl` of an admin token (no `--ttl`: valid until revoked).
const MAX_ADMIN_TOKEN_TTL_DAYS: u64 = 3650;

fn admin_token_info(token: &AdminTokenRecord, now: Timestamp) -> AdminTokenInfo {
    let state = if token.revoked_at.is_some() {
        AdminTokenState::Revoked
    } else if token.expired(now) {
        AdminTokenState::Expired
    } else {
        AdminTokenState::Active
    };
    AdminTokenInfo {
        name: token.name.clone(),
        state,
        created_at: token.created_at,
        created_by: token.created_by.clone(),
        expires_at: token.expires_at,
        last_used_at: token.last_used_at,
        revoked_at: token.revoked_at,
        revoked_by: token.revoked_by.clone(),
    }
}

/// Defaults of `drover rollout plan|start`, documented in its `--help`.
pub mod rollout_defaults {
    /// A canary, then half the fleet, then all of it.
    pub const STAGES: &str = "canary,50%,100%";
    /// A tenth of the hosts at once (at least one).
    pub const MAX_IN_FLIGHT: &str = "10%";
    /// No bake: a stage passes once all its hosts settled.
    pub const BAKE: &str = "0s";
    /// No failure tolerated: the first one pauses (the canary's always does).
    pub const MAX_FAILURES: &str = "0";
    /// Pause and wait for the operator.
    pub const ON_FAILURE: &str = "pause";
    /// Time a pinned host has to become healthy on the target.
    pub const HOST_DEADLINE: &str = "10m";
}

/// A command on a running rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutCommand {
    /// Pin nothing new.
    Pause,
    /// Continue after a pause (by the operator or the breaker).
    Resume,
    /// Start the next stage (with `approve_each_stage`).
    Approve,
    /// Unpin every touched host.
    Abort { rollback: bool },
}

fn rollout_spec(request: &RolloutRequest) -> Result<RolloutSpec, ServiceError> {
    use rollout_defaults as default;
    let text = SpecText {
        app: &request.app,
        target: &request.version,
        stages: request.stages.as_deref().unwrap_or(default::STAGES),
        max_in_flight: request.max_in_flight.as_deref().unwrap_or(default::MAX_IN_FLIGHT),
        bake: request.bake.as_deref().unwrap_or(default::BAKE),
        max_failures: request.max_failures.as_deref().unwrap_or(default::MAX_FAILURES),
        on_failure: request.on_failure.as_deref().unwrap_or(default::ON_FAILURE),
        approve_each_stage: request.approve_each_stage,
        host_deadline: request.host_deadline.as_deref().unwrap_or(default::HOST_DEADLINE),
    };
    RolloutSpec::parse(&text).map_err(|errors| ServiceError::BadRequest("bad_rollout_spec", errors.to_string()))
}

fn check_reason(reason: Option<&str>) -> Result<Option<String>, ServiceError> {
    match reason.map(str::trim).filter(|reason| !reason.is_empty()) {
        Some(reason) if reason.chars().count() > 500 => Err(ServiceError::BadRequest(
            "bad_reason",
            "--reason is limited to 500 characters".into(),
        )),
        other => Ok(other.map(str::to_owned)),
    }
}

fn no_rollout(app: &AppName) -> ServiceError {
    ServiceError::NotFound(
        "rollout_not_found",
        format!("{app} has no rollout; plan one with drover rollout plan {app} VERSION"),
    )
}

fn manual_history(app: Option<&AppName>, what: String, actor: &Actor) -> HistoryRecord {
    HistoryRecord {
        app: app.cloned(),
        rollout: None,
        at: now(),
        who: actor.who.clone(),
        what,
        reason: actor.reason.clone(),
    }
}

/// Whether two reports say the same about every app's current, desired and state.
fn same_app_states(old: &HostReport, new: &HostReport) -> bool {
    let states = |report: &HostReport| {
        report
            .apps
            .iter()
            .map(|(app, state)| (app.clone(), state.current.clone(), state.desired.clone(), state.state))
            .collect::<Vec<_>>()
    };
    states(old) == states(new)
}

fn plan_view(rollout: &Rollout) -> RolloutPlan {
    RolloutPlan {
        rollout: rollout.id().to_owned(),
        app: rollout.spec().app.clone(),
        version: rollout.spec().target.clone(),
        stages: rollout
            .plan()
            .stages
            .iter()
            .map(|stage| RolloutPlanStage {
                label: stage.label.to_string(),
                hosts: stage
                    .hosts
                    .iter()
                    .map(|host| RolloutPlanHost {
                        id: host.id.clone(),
                        current: host.current.clone(),
                    })
                    .collect(),
            })
            .collect(),
        max_in_flight: rollout.max_in_flight(),
        failure_budget: rollout.failure_budget(),
    }
}

fn status_view(
    rollout: &Rollout,
    created_by: &str,
    created_at: Timestamp,
    finished_at: Option<Timestamp>,
    now: Timestamp,
) -> RolloutStatus {
    let progress = rollout.progress(now);
    let phase = match &progress.phase {
        Phase::Pending => RolloutPhase::Pending,
        Phase::Running => RolloutPhase::Running,
        Phase::Paused {
            reason: PauseReason::Operator { .. },
        } => RolloutPhase::PausedByOperator,
        Phase::Paused {
            reason: PauseReason::FailureBudget,
        } => RolloutPhase::PausedByBreaker,
        Phase::Paused {
            reason: PauseReason::AwaitingApproval,
        } => RolloutPhase::AwaitingApproval,
        Phase::Completed { .. } => RolloutPhase::Completed,
        Phase::Aborted { .. } => RolloutPhase::Aborted,
        Phase::RolledBack { .. } => RolloutPhase::RolledBack,
    };
    let pause_reason = match &progress.phase {
        Phase::Paused {
            reason: PauseReason::Operator { reason, .. },
        } => reason.clone(),
        _ => None,
    };
    RolloutStatus {
        rollout: progress.rollout,
        app: progress.app,
        version: progress.target,
        phase,
        phase_text: progress.phase.to_string(),
        pause_reason,
        stage: progress.stage,
        stages: progress
            .stages
            .into_iter()
            .map(|stage| {
                let (status, bake_remaining) = match stage.status {
                    StageStatus::NotStarted => ("not_started", None),
                    StageStatus::Active => ("active", None),
                    StageStatus::Baking { remaining } => ("baking", Some(remaining)),
                    StageStatus::Passed => ("passed", None),
                    StageStatus::Failed => ("failed", None),
                };
                RolloutStageStatus {
                    label: stage.label.to_string(),
                    status: status.to_owned(),
                    bake_remaining,
                    total: stage.total,
                    waiting: stage.waiting,
                    in_flight: stage.in_flight,
                    done: stage.done,
                    failed: stage.failed,
                    removed: stage.removed,
                }
            })
            .collect(),
        failures: progress.failures,
        failure_budget: progress.failure_budget,
        in_flight: progress.in_flight,
        max_in_flight: progress.max_in_flight,
        eta: progress.eta,
        created_by: created_by.to_owned(),
        created_at,
        finished_at,
        failed_hosts: Vec::new(),
    }
}

async fn store_reports(coordinator: &Coordinator, batch: Vec<(HostReport, Timestamp)>) {
    let mut latest: HashMap<HostId, (HostReport, Timestamp)> = HashMap::new();
    let mut events: HashMap<HostId, Vec<drover_protocol::report::ReportEvent>> = HashMap::new();
    for (report, at) in batch {
        events
            .entry(report.host.clone())
            .or_default()
            .extend(report.events.iter().cloned());
        latest.insert(report.host.clone(), (report, at));
    }
    let merged: Vec<(HostReport, Timestamp)> = latest
        .into_values()
        .map(|(mut report, at)| {
            let mut host_events = events.remove(&report.host).unwrap_or_default();
            let keep_from = host_events.len().saturating_sub(MAX_REPORT_EVENTS * 4);
            report.events = host_events.split_off(keep_from);
            (report, at)
        })
        .collect();
    if let Err(error) = coordinator.store.save_reports(&merged).await {
        tracing::error!(%error, count = merged.len(), "storing reports failed; the latest reports stay in memory");
    }
}

/// Pins of an app are the rollout controller's while the app has an active rollout (it
/// moves hosts with host pins and gives them back on abort): a manual pin or unpin then
/// is refused (409), pointing at the rollout commands. Holds stay allowed: they are the
/// kill switch.
fn refuse_during_rollout(model: &Model, app: &AppName, verb: &str) -> Result<(), ServiceError> {
    match model.rollouts.get(app) {
        Some(active) => Err(ServiceError::Conflict(
            "rollout_active",
            format!(
                "cannot {verb} {app} while rollout {} is {}; use drover rollout pause|abort {app} (or drover hold to stop hosts at once)",
                active.rollout.id(),
                active.rollout.phase()
            ),
        )),
        None => Ok(()),
    }
}

/// A rollout moves hosts with host pins and ends in the app's fleet pin, so a host pin of
/// the app on a host it would touch (which the rollout would overwrite and could not give
/// back on abort) or a group pin of the app over such a host (which outranks the fleet pin,
/// so the group would go back to its version once the rollout completed) is refused up
/// front, naming the pins and how to clear them.
fn refuse_pins_in_the_way(fleet: &Fleet, app: &AppName, hosts: &[PlanHost]) -> Result<(), ServiceError> {
    let mut in_the_way: BTreeSet<(String, String)> = BTreeSet::new();
    for host in hosts {
        if let Some(version) = fleet.pins.get(&(app.clone(), Scope::Host(host.id.clone()))) {
            in_the_way.insert((format!("--host {}", host.id), version.to_string()));
        }
        for group in &host.groups {
            if let Some(version) = fleet.pins.get(&(app.clone(), Scope::Group(group.clone()))) {
                in_the_way.insert((format!("--group {group}"), version.to_string()));
            }
        }
    }
    if in_the_way.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = in_the_way
        .iter()
        .take(5)
        .map(|(scope, version)| format!("{scope} (pinned to {version})"))
        .collect();
    let more = in_the_way.len().saturating_sub(shown.len());
    let first = &in_the_way.first().expect("not empty").0;
    Err(ServiceError::Conflict(
        "pins_in_the_way",
        format!(
            "{app} has {} group or host pin(s) over hosts this rollout would move: {}{}; a rollout ends in the app's fleet pin, which they would outrank; remove them first (drover unpin {app} {first})",
            in_the_way.len(),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            },
        ),
    ))
}

fn restore_pin(fleet: &mut Fleet, key: (AppName, Scope), previous: Option<Version>) {
    match previous {
        Some(version) => fleet.pins.insert(key, version),
        None => fleet.pins.remove(&key),
    };
}

fn empty_app() -> HostApp {
    HostApp {
        desired: None,
        current: None,
        state: None,
        last_error: None,
    }
}

fn active_host<'a>(fleet: &'a Fleet, id: &HostId) -> Result<&'a HostRecord, ServiceError> {
    fleet
        .hosts
        .get(id)
        .filter(|host| host.cert_sha256.is_some())
        .ok_or_else(|| ServiceError::NotFound("host_not_found", format!("no enrolled host {id}")))
}

fn token_error(problem: TokenProblem) -> ServiceError {
    match problem {
        TokenProblem::Unknown => ServiceError::Unauthorized("token_unknown", "the join token is not valid".into()),
        TokenProblem::Used => ServiceError::Gone(
            "token_used",
            "the join token was already used; create a new one with drover token create".into(),
        ),
        TokenProblem::Expired => ServiceError::Gone(
            "token_expired",
            "the join token expired; create a new one with drover token create".into(),
        ),
    }
}

fn check_labels(labels: &Labels) -> Result<(), ServiceError> {
    let valid = |text: &str| {
        (1..=63).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    };
    if labels.len() > 64 {
        return Err(ServiceError::BadRequest("bad_labels", "at most 64 labels".into()));
    }
    for (key, value) in labels {
        if !valid(key) || !valid(value) {
            return Err(ServiceError::BadRequest(
                "bad_labels",
                format!(
                    "invalid label {:?}={:?}: keys and values are 1 to 63 characters of letters, digits, '-', '_', '.', '/'",
                    key.chars().take(70).collect::<String>(),
                    value.chars().take(70).collect::<String>()
                ),
            ));
        }
    }
    Ok(())
}

fn check_group_name(name: &str) -> Result<(), ServiceError> {
    name.parse::<AppName>().map(|_| ()).map_err(|_| {
        ServiceError::BadRequest(
            "bad_group_name",
            format!("invalid group name {name:?}: use a-z, 0-9 and '-'"),
        )
    })
}

/// Refuses a change that would give a host a signed manifest larger than agents accept
/// ([`MAX_MANIFEST_BYTES`]): that host's agent would refuse every manifest from then on,
/// changes to its other apps included, until the change was undone.
/// The same for the number of apps ([`MAX_APPS`]), which agents refuse past as well.
fn check_manifests(fleet: &Fleet, manifests: &[StoredManifest], what: &str) -> Result<(), ServiceError> {
    for manifest in manifests {
        let apps = fleet
            .hosts
            .get(&manifest.host)
            .map_or(0, |host| fleet.resolve(host).versions.len());
        refuse_too_many_apps(what, &manifest.host, apps)?;
    }
    let over: Vec<&StoredManifest> = manifests
        .iter()
        .filter(|manifest| manifest.envelope.len() > MAX_MANIFEST_BYTES)
        .collect();
    match over.iter().max_by_key(|manifest| manifest.envelope.len()) {
        Some(largest) => refuse_oversized(what, &largest.host, largest.envelope.len(), over.len()),
        None => Ok(()),
    }
}

fn refuse_too_many_apps(what: &str, host: &HostId, apps: usize) -> Result<(), ServiceError> {
    if apps <= MAX_APPS {
        return Ok(());
    }
    Err(ServiceError::BadRequest(
        "too_many_apps",
        format!(
            "{what} would give host {host} {apps} apps, over the {MAX_APPS} agents accept in one manifest; nothing was changed"
        ),
    ))
}

fn refuse_oversized(what: &str, host: &HostId, size: usize, hosts: usize) -> Result<(), ServiceError> {
    if size <= MAX_MANIFEST_BYTES {
        return Ok(());
    }
    let others = match hosts {
        0 | 1 => String::new(),
        more => format!(" (and {} more hosts over)", more - 1),
    };
    Err(ServiceError::BadRequest(
        "manifest_too_large",
        format!(
            "{what} would give host {host} a signed manifest of {size} bytes{others}, over the {MAX_MANIFEST_BYTES} bytes agents accept; nothing was changed. Make the specs smaller (config_files content counts) or put fewer apps on those hosts"
        ),
    ))
}

/// The signed manifest sizes (and numbers of apps) active hosts would get with `app` at `target` (what a
/// rollout ends with), as an upper bound computed without signing: per distinct desired
/// state, with the longest host id among its hosts and the largest serial.
fn manifests_with(fleet: &Fleet, app: &AppName, target: &Version) -> Vec<(HostId, usize, usize)> {
    let mut longest: HashMap<BTreeMap<AppName, Version>, &HostId> = HashMap::new();
    for host in fleet.active_hosts() {
        let mut resolved = fleet.resolve(host);
        resolved.versions.insert(app.clone(), target.clone());
        let entry = longest.entry(resolved.versions).or_insert(&host.id);
        if host.id.as_str().len() > entry.as_str().len() {
            *entry = &host.id;
        }
    }
    longest
        .into_iter()
        .map(|(versions, host)| {
            let resolved = Resolved { hold: false, versions };
            let manifest = drover_protocol::Manifest {
                schema: drover_protocol::MANIFEST_SCHEMA,
                host: host.clone(),
                serial: u64::MAX,
                issued_at: Timestamp::EPOCH,
                expires_at: Timestamp::EPOCH,
                hold: false,
                apps: fleet.expand(&resolved).apps,
            };
            // Timestamps print at a fixed width, so EPOCH stands for any of them.
            let size = drover_protocol::manifest::signed_size(manifest.to_payload().len(), 1);
            (host.clone(), size, manifest.apps.len())
        })
        .collect()
}
