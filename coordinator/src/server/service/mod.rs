//! The coordinator's operations, independent of HTTP: enrollment, desired-state changes
//! that re-sign exactly the affected hosts' manifests, manifest publication with
//! long-poll wake-ups, reports, releases and the fleet status.
//!
//! Consistency: every desired-state change runs under one async mutex (`model`), commits
//! to the store first, then updates memory and publishes the new manifests. Readers
//! (polls) never take that mutex: each host has a `watch` channel holding its current
//! signed manifest, so a poll is a map lookup and a pointer clone.

mod admin;
mod audit;
mod background;
mod desired;
mod enroll;
mod error;
mod hosts;
mod locks;
mod releases;
mod replication;
mod reports;
mod rollouts;
mod views;

pub use admin::Operator;
pub use error::ServiceError;
pub use rollouts::{RolloutCommand, rollout_defaults};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use drover_protocol::{AppName, Digest, Duration, HostId, HostReport, Timestamp, Version};
use tokio::sync::{Mutex, Notify, mpsc, watch};

use crate::datadir::DataDir;
use crate::server::clock::Clock;
use crate::server::fleet::{Fleet, Resolved};
use crate::server::metrics::Metrics;
use crate::server::pki::{PeerIdentity, sha256_hex};
use crate::server::rollout::Rollout;
use crate::server::setup::Credentials;
use crate::server::store::cluster::{ChangeListener, ReplicaInfo, new_replica_id};
use crate::server::store::shared::RecordedCredentials;
use crate::server::store::{AdminTokenRecord, HostRecord, Snapshot, Store, StoreError, StoredManifest, StoredRollout};
use desired::{RenderMode, Rendered};
use error::During as _;
use locks::RwLock;
use reports::QueuedReport;

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
    /// Where `drover release create --artifact FILE` pushes tarballs when the operator
    /// names no registry (`--artifact-registry REGISTRY/PREFIX`, checked by `serve`).
    pub artifact_registry: Option<String>,
    /// Where every "now" of the service comes from ([`SystemClock`](crate::server::clock::SystemClock)
    /// in `serve`, a [`ManualClock`](crate::server::clock::ManualClock) in tests).
    pub clock: Arc<dyn Clock>,
}

/// Who a host history line names for a renewal: the host itself asked for it.
pub const HOST_RENEWAL_ACTOR: &str = "host";

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
    /// The slot of enrolled `host`, publishing `published`; `last_seen` in unix seconds
    /// (0: not seen since start).
    fn new(host: &HostRecord, published: Arc<Published>, last_seen: i64) -> Arc<HostSlot> {
        let (sender, _) = watch::channel(published);
        Arc::new(HostSlot {
            identity: RwLock::new(SlotIdentity::of(host)),
            manifest: sender,
            last_seen: AtomicI64::new(last_seen),
        })
    }

    /// Whether this host's current manifest references `digest`.
    pub fn may_download(&self, digest: &Digest) -> bool {
        self.manifest.borrow().digests.contains(digest)
    }

    /// A receiver of this host's manifest changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.manifest.subscribe()
    }
}

/// The desired state, the rendering state and the active rollouts (which change pins),
/// changed together under one lock.
#[derive(Debug, Default)]
struct Model {
    fleet: Fleet,
    rendered: HashMap<HostId, Rendered>,
    rollouts: BTreeMap<AppName, ActiveRollout>,
    /// Set when a holder of the lock panicked (see [`locks::ModelGuard`]): the model may
    /// hold a change that was never committed, so the next holder loads it again.
    unsettled: bool,
}

impl Model {
    /// The model as committed: the fleet, what each host was last rendered with, the
    /// rollouts not finished.
    fn from_stored(snapshot: &Snapshot, rollouts: Vec<StoredRollout>) -> Model {
        Model {
            fleet: Fleet::from_snapshot(snapshot),
            rendered: snapshot
                .manifests
                .iter()
                .map(|manifest| (manifest.host.clone(), Rendered::of(manifest)))
                .collect(),
            rollouts: rollouts
                .into_iter()
                .map(|stored| {
                    (
                        stored.rollout.spec().app.clone(),
                        ActiveRollout {
                            rollout: stored.rollout,
                            created_by: stored.created_by,
                            created_at: stored.created_at,
                        },
                    )
                })
                .collect(),
            unsettled: false,
        }
    }
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
    reports: locks::Mutex<HashMap<HostId, (HostReport, Timestamp)>>,
    report_queue: mpsc::Sender<QueuedReport>,
    /// Hosts whose reported app states changed since the rollout driver last looked.
    rollout_dirty: locks::Mutex<BTreeSet<HostId>>,
    /// Wakes the rollout driver (a report changed, or a step moved the next timer).
    rollout_signal: Notify,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Who this coordinator is among the replicas on one database (`drover coordinators`).
    replica: ReplicaInfo,
}

/// The background work a coordinator needs: the report writer and the refresher.
#[derive(Debug)]
pub struct Background {
    report_receiver: mpsc::Receiver<QueuedReport>,
    /// The other replicas' changes (PostgreSQL), heard from before the fleet was loaded.
    listener: Option<ChangeListener>,
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
        // Listening first: a change committed after this is heard, so nothing slips in
        // between the load and the listener (a replica of several on PostgreSQL).
        let listener = store
            .listen()
            .await
            .during("listening to the other coordinators' changes")?;
        let replica = ReplicaInfo {
            id: new_replica_id(config.listen.port()),
            address: config.public_url.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: config.clock.now(),
        };
        if store.is_shared() {
            check_shared_credentials(&store, &credentials, &replica).await?;
        }
        // Replicas starting together load, re-render and save one at a time.
        let database_lock = store.lock_model().await.during("taking the database's model lock")?;
        let snapshot = store.load().await.during("loading the fleet")?;
        store
            .bootstrap_admin_token(&hash_secret(&credentials.admin_token), config.clock.now())
            .await
            .during("storing the bootstrap admin token")?;
        let admin_tokens = store.admin_tokens().await.during("loading the admin tokens")?;
        let mut model = Model::from_stored(
            &snapshot,
            store.active_rollouts().await.during("loading the active rollouts")?,
        );
        // Reports that arrived just before a stop may not have reached the rollouts yet:
        // feeding every last report again is harmless (the controller counts a host once).
        let dirty: BTreeSet<HostId> = snapshot.reports.iter().map(|(report, _)| report.host.clone()).collect();
        let stored: HashMap<HostId, StoredManifest> = snapshot
            .manifests
            .into_iter()
            .map(|manifest| (manifest.host.clone(), manifest))
            .collect();
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
            reports: locks::Mutex::new(
                snapshot
                    .reports
                    .into_iter()
                    .map(|(report, at)| (report.host.clone(), (report, at)))
                    .collect(),
            ),
            report_queue,
            rollout_dirty: locks::Mutex::new(dirty),
            rollout_signal: Notify::new(),
            metrics: Metrics::default(),
            replica,
        };
        // Publish what was stored; re-render hosts whose desired state no longer matches
        // (e.g. the database was restored) so the published state is always current.
        let hosts: Vec<HostRecord> = model.fleet.active_hosts().cloned().collect();
        let changed = coordinator.render(&model, &hosts, coordinator.now(), RenderMode::Changed);
        coordinator
            .store
            .save_manifests(&changed)
            .await
            .during("saving manifests re-rendered at start")?;
        drop(database_lock);
        for manifest in &changed {
            model.rendered.insert(manifest.host.clone(), Rendered::of(manifest));
        }
        {
            let mut slots = coordinator.slots.write();
            for host in &hosts {
                let resolved = model.fleet.resolve(host);
                let manifest = changed
                    .iter()
                    .find(|manifest| manifest.host == host.id)
                    .or_else(|| stored.get(&host.id))
                    .expect("every active host has a manifest after rendering");
                let published = Arc::new(Published::of(manifest, &resolved, &model.fleet));
                slots.insert(host.id.clone(), HostSlot::new(host, published, 0));
            }
        }
        *coordinator.model.lock().await = model;
        Ok((
            Arc::new(coordinator),
            Background {
                report_receiver,
                listener,
            },
        ))
    }

    /// Loads the model again from the store, after a panic left it unsettled or when the
    /// change listener lost notifications (`since` is `None`: everything), or when another
    /// replica changed it (`since` is the generation this replica last read or wrote: the
    /// model in full, but only the manifests written after it, which is what keeps a
    /// fleet-wide change through another replica from costing every replica a read of
    /// every host's manifest). Brings the host slots in line with it: a slot for every
    /// enrolled host (a join or re-join committed before its slot was made), none for a
    /// removed one, each with the stored certificate and manifest.
    async fn reload_model(&self, model: &mut Model, since: Option<i64>) -> Result<(), StoreError> {
        let snapshot = match since {
            Some(generation) => self.store.load_since(generation).await?,
            None => self.store.load().await?,
        };
        self.metrics.manifests_reread.add(snapshot.manifests.len());
        let mut fresh = Model::from_stored(&snapshot, self.store.active_rollouts().await?);
        if since.is_some() {
            // Every manifest written at or before `since` is one memory already holds:
            // each model write moves the generation on by one under the database's model
            // lock, and this replica read or wrote every generation up to `since`.
            let newer = std::mem::replace(&mut fresh.rendered, std::mem::take(&mut model.rendered));
            fresh.rendered.extend(newer);
        }
        let manifests: HashMap<&HostId, &StoredManifest> = snapshot
            .manifests
            .iter()
            .map(|manifest| (&manifest.host, manifest))
            .collect();
        let mut unpublished = Vec::new();
        {
            let mut slots = self.slots.write();
            slots.retain(|id, _| fresh.fleet.hosts.get(id).is_some_and(HostRecord::is_active));
            for host in fresh.fleet.active_hosts() {
                let manifest = manifests.get(&host.id);
                let published = |manifest: &StoredManifest| {
                    Arc::new(Published::of(manifest, &fresh.fleet.resolve(host), &fresh.fleet))
                };
                match (slots.get(&host.id), manifest) {
                    (None, Some(manifest)) => {
                        slots.insert(host.id.clone(), HostSlot::new(host, published(manifest), 0));
                    }
                    (None, None) => unpublished.push(host.id.clone()),
                    (Some(slot), manifest) => {
                        if slot.identity.read().cert_sha256 != host.cert_sha256.as_deref().unwrap_or_default() {
                            *slot.identity.write() = SlotIdentity::of(host);
                        }
                        if let Some(manifest) = manifest
                            && slot.manifest.borrow().serial != manifest.serial
                        {
                            slot.manifest.send_replace(published(manifest));
                        }
                    }
                }
            }
        }
        *model = fresh;
        if unpublished.is_empty() {
            return Ok(());
        }
        if since.is_some() {
            // A host this replica has no slot for and no newer manifest of: not expected
            // (a join writes its manifest with the host), but reading everything once
            // costs a moment and settles it.
            return Box::pin(self.reload_model(model, None)).await;
        }
        for host in unpublished {
            tracing::error!(%host, "an enrolled host has no stored manifest; it is served again once a change renders one");
        }
        Ok(())
    }

    /// The time now, by the clock the coordinator was started with.
    pub fn now(&self) -> Timestamp {
        self.config.clock.now()
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

    /// The number of enrolled hosts (for `/metrics`).
    pub fn host_count(&self) -> usize {
        self.slots.read().len()
    }
}

/// Refuses to serve with a CA or trust document other than those the coordinators on this
/// database serve with (the first to start recorded them): hosts enrolled through the
/// others would refuse this one's server certificate or its manifests.
async fn check_shared_credentials(
    store: &Store,
    credentials: &Credentials,
    replica: &ReplicaInfo,
) -> Result<(), ServiceError> {
    let mine = RecordedCredentials {
        ca_sha256: credentials.ca.sha256(),
        trust_sha256: sha256_hex(credentials.trust.envelope_bytes()),
        recorded_by: replica.id.clone(),
        recorded_at: replica.started_at,
    };
    let recorded = store
        .record_credentials(&mine)
        .await
        .during("checking this coordinator's CA and trust document against the database's")?;
    let differs = |what: &str, ours: &str, theirs: &str| {
        (ours != theirs).then(|| format!("{what} (sha256 {ours} here, {theirs} recorded)"))
    };
    let differences: Vec<String> = [
        differs("CA certificate", &mine.ca_sha256, &recorded.ca_sha256),
        differs("trust document", &mine.trust_sha256, &recorded.trust_sha256),
    ]
    .into_iter()
    .flatten()
    .collect();
    if differences.is_empty() {
        return Ok(());
    }
    Err(ServiceError::Conflicting(
        "credentials_differ",
        format!(
            "this coordinator's {} are not those of the coordinators on this database (recorded by {} at {}): \
             every coordinator on one database must serve with the same ca.pem, ca.key, admin.token and keys/ \
             (manifest.key, trust.json); copy them from a running coordinator's data directory into this one \
             and start again",
            differences.join(" and "),
            recorded.recorded_by,
            recorded.recorded_at
        ),
    ))
}

/// A coordinator over a store in a temporary directory, for the modules' unit tests, and
/// the few requests they need to set up a fleet (join a host, create a release).
#[cfg(test)]
mod testing {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use drover_protocol::api::{JoinRequest, Labels, ReleaseArtifact, ReleaseRequest, TokenRequest};
    use drover_protocol::report::{AgentFacts, AppReport, AppState};
    use drover_protocol::{AppName, AppSpec, Digest, Duration, HostId, HostReport, Timestamp, Version};
    use tokio::sync::watch;

    use super::{Background, Config, Coordinator, Operator, ServiceError};
    use crate::datadir::DataDir;
    use crate::server::clock::ManualClock;
    use crate::server::pki::{PeerIdentity, certificate_der, make_host_csr};
    use crate::server::store::{Database, Store};

    /// A started coordinator; its data directory is deleted when dropped.
    #[derive(Debug)]
    pub(crate) struct TestCoordinator {
        pub(crate) coordinator: Arc<Coordinator>,
        /// Its clock: time moves only when a test moves it.
        pub(crate) clock: Arc<ManualClock>,
        /// The background tasks, not running: tests drive what they need by hand.
        pub(crate) background: Option<Background>,
        /// The bootstrap admin token's secret.
        pub(crate) admin_secret: String,
        dir: PathBuf,
    }

    impl Drop for TestCoordinator {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Labels from `key, value` pairs.
    pub(crate) fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    /// The API code of an error (the first field of the coded variants).
    pub(crate) fn code(error: &ServiceError) -> &'static str {
        match error {
            ServiceError::Invalid(code, _)
            | ServiceError::Unauthenticated(code, _)
            | ServiceError::NotAllowed(code, _)
            | ServiceError::Unknown(code, _)
            | ServiceError::Conflicting(code, _)
            | ServiceError::Expired(code, _)
            | ServiceError::TooLarge(code, _)
            | ServiceError::Busy(code, _) => code,
            other => panic!("no code: {other}"),
        }
    }

    /// The operator every test change is made by.
    pub(crate) fn operator() -> Operator {
        Operator::new("tester".parse().expect("token name"))
    }

    pub(crate) fn name<T: std::str::FromStr>(text: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        text.parse().expect("a valid name")
    }

    /// Starts a coordinator over a fresh data directory.
    pub(crate) async fn coordinator() -> TestCoordinator {
        coordinator_on(None, None).await
    }

    /// Starts a coordinator over a fresh data directory, on `database` (default: SQLite in
    /// the data directory) and with the CA, keys and admin token of `replica_of` (another
    /// replica on the same database) when given.
    pub(crate) async fn coordinator_on(
        database: Option<&Database>,
        replica_of: Option<&TestCoordinator>,
    ) -> TestCoordinator {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "drover-service-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        if let Some(original) = replica_of {
            copy_credentials(&original.dir, &dir);
        }
        let data = DataDir::new(&dir);
        let now = Timestamp::from_system(std::time::SystemTime::now());
        let clock = Arc::new(ManualClock::new(now));
        let credentials = crate::server::setup::prepare(&data, None, now).expect("data directory");
        let admin_secret = credentials.admin_token.clone();
        let store = match database {
            Some(database) => Store::open_database(database).await.expect("store"),
            None => Store::open(&data.database()).await.expect("store"),
        };
        let config = Config {
            public_url: "https://10.0.0.5:8443".to_owned(),
            listen: "10.0.0.5:8443".parse().expect("address"),
            loopback_trap: None,
            manifest_ttl: Duration::from_secs(3600),
            refresh_interval: Duration::from_secs(60),
            host_certificate_validity: Duration::from_secs(30 * 86_400),
            artifact_registry: None,
            clock: clock.clone(),
        };
        let (coordinator, background) = Coordinator::start(config, store, data, credentials)
            .await
            .expect("coordinator starts");
        TestCoordinator {
            coordinator,
            clock,
            background: Some(background),
            admin_secret,
            dir,
        }
    }

    /// Copies a data directory's files (CA, keys, admin token) but not its SQLite
    /// database, as an operator provisions a second replica.
    fn copy_credentials(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("replica directory");
        for entry in std::fs::read_dir(from).expect("data directory") {
            let entry = entry.expect("entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                copy_credentials(&entry.path(), &target);
            } else if !entry.file_name().to_string_lossy().starts_with("coordinator.db") {
                std::fs::copy(entry.path(), &target).expect("copy");
            }
        }
    }

    impl TestCoordinator {
        /// Starts the background tasks (report writer, refresher, rollout driver); they
        /// stop, storing what is queued, when the returned sender sends `true` or is dropped.
        pub(crate) fn run_background(&mut self) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
            let (shutdown, receiver) = watch::channel(false);
            let background = self.background.take().expect("background not started yet");
            let task = tokio::spawn(background.run(self.coordinator.clone(), receiver));
            (shutdown, task)
        }

        /// Joins `host` with `labels` through a join token, as an agent does; returns the
        /// identity its client certificate proves.
        pub(crate) async fn join(&self, host: &str, labels: &[(&str, &str)]) -> PeerIdentity {
            let labels: Labels = labels
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect();
            let token = self
                .coordinator
                .create_token(
                    TokenRequest {
                        labels,
                        ttl: Duration::from_secs(600),
                        replace: None,
                        allow_loopback: false,
                    },
                    &operator(),
                )
                .await
                .expect("token");
            let host_id: HostId = name(host);
            let (csr_pem, _key) = make_host_csr(&host_id).expect("csr");
            let joined = self
                .coordinator
                .join(JoinRequest {
                    token: token.token,
                    host_id,
                    csr_pem,
                    facts: facts(),
                })
                .await
                .expect("join");
            PeerIdentity::from_certificate(&certificate_der(&joined.certificate_pem).expect("pem")).expect("identity")
        }

        /// Creates release `app` `version` of a remote tarball.
        pub(crate) async fn release(&self, app: &str, version: &str) {
            self.coordinator
                .create_release(release_request(app, version, "bin/app"))
                .await
                .expect("release");
        }
    }

    /// A release request of a remote tarball whose spec runs `program`.
    pub(crate) fn release_request(app: &str, version: &str, program: &str) -> ReleaseRequest {
        let spec: AppSpec = toml::from_str(&format!("[service]\ncommand = [\"{program}\"]\n")).expect("spec");
        ReleaseRequest {
            app: name(app),
            version: name(version),
            spec,
            artifact: ReleaseArtifact::RemoteTarball {
                url: format!("https://artifacts.example/{app}-{version}.tar.gz")
                    .try_into()
                    .expect("url"),
                digest: Digest::of(format!("{app} {version}").as_bytes()),
                size: 1000,
            },
        }
    }

    pub(crate) fn facts() -> AgentFacts {
        AgentFacts {
            agent_version: "test".to_owned(),
            os: "linux".to_owned(),
            arch: "x86_64".to_owned(),
        }
    }

    /// A report of `host` running each `(app, version, state)`.
    pub(crate) fn report(host: &str, apps: &[(&str, &str, AppState)]) -> HostReport {
        HostReport {
            schema: drover_protocol::report::REPORT_SCHEMA,
            host: name(host),
            sent_at: Timestamp::from_system(std::time::SystemTime::now()),
            manifest_serial: None,
            held: false,
            manifest_rejection: None,
            facts: facts(),
            apps: apps
                .iter()
                .map(|(app, version, state)| {
                    let version: Version = name(version);
                    (
                        name::<AppName>(app),
                        AppReport {
                            current: Some(version.clone()),
                            desired: Some(version),
                            state: *state,
                            health: None,
                            last_error: None,
                            bad_versions: Vec::new(),
                        },
                    )
                })
                .collect(),
            events: Vec::new(),
        }
    }
}
