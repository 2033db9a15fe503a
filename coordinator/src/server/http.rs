//! The HTTPS server: TLS with optional client certificates on one port, the routes, and
//! the mapping of every service error to a status code and a JSON error body.
//!
//! Agents present the client certificate they got at join (or their latest renewal of
//! it); the identity it proves (host id + key) is attached to every request of that
//! connection. The join endpoint and the admin API work without one (the admin API needs
//! the bearer token instead). The server's own certificate sits behind
//! [`ServerCertificate`], which `serve` swaps when it renews it, without a restart.
//!
//! Hostile clients are bounded here, before anything reaches the service:
//! - Every request body must arrive at a minimum pace ([`BodyPace`]): within a grace
//!   period plus one second per [`BODY_MIN_RATE`] bytes, with no pause over
//!   [`BODY_MAX_STALL`]; a slower body is answered 408 and its connection closed. Large
//!   admin uploads therefore get a rate floor, not a short total deadline.
//! - A connection is *unauthenticated* until it presents a client certificate at the
//!   handshake (an agent) or a valid admin token in a request (an operator). At most
//!   [`MAX_UNAUTHENTICATED_CONNECTIONS`] are open at once; a new one beyond that closes
//!   the oldest, so a flood of idle or slow anonymous connections can delay an operator's
//!   request but never lock it out. Agents leave the budget when their handshake
//!   completes, operators when their token is checked (before any body is read).
//! - Before authentication a connection can make the server buffer at most the request
//!   head (hyper's buffer, [`MAX_REQUEST_BUFFER`]) and a join body ([`MAX_JOIN_BODY`]):
//!   admin routes check the token before touching the body, and only authenticated
//!   clients get an oversized body drained to show them the 413.
//! - Accept errors (out of file descriptors) pause the accept loop, 10 ms doubling to
//!   1 s, and are logged at most every 10 s, instead of spinning.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration as StdDuration, Instant};

use axum::body::Body;
use axum::extract::{Extension, FromRequestParts, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use drover_protocol::api::{
    AdminTokenRequest, ChangeReason, ErrorBody, Group, HistoryQuery, HoldRequest, JoinRequest, LabelRequest,
    MAX_JSON_BODY, MAX_WAIT_SECONDS, Pin, PinRequest, ReleaseRequest, RenewRequest, RenewResponse, RolloutAbortRequest,
    RolloutCommandRequest, RolloutRequest, TokenName, TokenRequest, UnpinRequest,
};
use drover_protocol::report::MAX_REPORT_BYTES;
use drover_protocol::{AppName, Digest, HostId, HostReport};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;
use tower::Layer as _;

use crate::server::blobs::BlobError;
use crate::server::pki::PeerIdentity;
use crate::server::service::{Coordinator, Operator, RolloutCommand, ServiceError};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// How long in-flight requests get to finish after SIGTERM.
pub const SHUTDOWN_GRACE: StdDuration = StdDuration::from_secs(10);
/// How long an agent (client certificate) may take to send a request head, which is
/// also how long its connection may sit idle between requests.
const AGENT_HEADER_TIMEOUT: StdDuration = StdDuration::from_secs(30);
/// The same for connections without a client certificate: operators' CLI calls and
/// joins send their request at once.
const ANONYMOUS_HEADER_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// hyper's read buffer per connection, which bounds a request head (431 over it).
pub const MAX_REQUEST_BUFFER: usize = 64 * 1024;
/// Connections open at once without a client certificate or a valid admin token.
pub const MAX_UNAUTHENTICATED_CONNECTIONS: usize = 512;
/// The largest join body (a token, a CSR and a few facts are ~2 KiB). The join is the
/// only route that reads a body from an unauthenticated client.
pub const MAX_JOIN_BODY: usize = 64 * 1024;
/// Every body may take this long whatever its size ...
pub const BODY_GRACE: StdDuration = StdDuration::from_secs(10);
/// ... plus one second per this many bytes (a floor of 64 KiB/s on average) ...
pub const BODY_MIN_RATE: u64 = 64 * 1024;
/// ... and may not pause longer than this between two chunks.
pub const BODY_MAX_STALL: StdDuration = StdDuration::from_secs(30);

/// What a connection proved at the TLS handshake.
#[derive(Clone, Debug)]
struct Connection {
    identity: Option<PeerIdentity>,
    /// The connection's place in the unauthenticated budget, while it has one (none for
    /// agents); a valid admin token gives it up.
    admission: Option<Arc<Admission>>,
}

/// The connections that have not proved who they are, oldest first, bounded by
/// [`MAX_UNAUTHENTICATED_CONNECTIONS`]: admitting one more closes the oldest.
///
/// Closing the oldest rather than refusing the newest is what keeps operators in during
/// a flood: a refused operator could never get in while an attacker holds the budget,
/// whereas an admitted one only has to send its request head before the attacker opens
/// another full budget of connections; a valid token then takes it out of the budget.
#[derive(Debug)]
struct Unauthenticated {
    capacity: usize,
    open: Mutex<OpenConnections>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    next_id: u64,
    /// By admission order; each entry wakes its connection's task to close it.
    by_age: BTreeMap<u64, Arc<Notify>>,
}

impl Unauthenticated {
    fn new(capacity: usize) -> Arc<Unauthenticated> {
        Arc::new(Unauthenticated {
            capacity,
            open: Mutex::new(OpenConnections::default()),
        })
    }

    /// Admits a new connection; says whether an older one had to be closed for it.
    fn admit(self: &Arc<Self>) -> (Admission, bool) {
        let mut open = self.lock();
        let evicted = open.by_age.len() >= self.capacity && evict(&mut open);
        let id = open.next_id;
        open.next_id += 1;
        let closed = Arc::new(Notify::new());
        open.by_age.insert(id, closed.clone());
        let admission = Admission {
            id,
            budget: self.clone(),
            closed,
        };
        (admission, evicted)
    }

    /// Closes the oldest unauthenticated connection, if there is one.
    fn evict_oldest(&self) -> bool {
        evict(&mut self.lock())
    }

    /// The open connections. A panic while the lock was held (in this short, allocation-
    /// only code, hardly possible) leaves the map as it was or with one entry more or
    /// less, which is still a valid budget: the lock is taken back instead of failing
    /// every later connection.
    fn lock(&self) -> std::sync::MutexGuard<'_, OpenConnections> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn release(&self, id: u64) {
        self.lock().by_age.remove(&id);
    }
}

fn evict(open: &mut OpenConnections) -> bool {
    match open.by_age.pop_first() {
        Some((_, closed)) => {
            // notify_one keeps the wake-up for a task that is not waiting yet.
            closed.notify_one();
            true
        }
        None => false,
    }
}

/// One connection's place in the unauthenticated budget; dropping it frees the place.
#[derive(Debug)]
struct Admission {
    id: u64,
    budget: Arc<Unauthenticated>,
    closed: Arc<Notify>,
}

impl Admission {
    /// The connection proved who it is: it leaves the budget and is never closed for it.
    fn authenticated(&self) {
        self.budget.release(self.id);
    }

    /// Resolves when the budget closes this connection to make room.
    async fn evicted(&self) {
        self.closed.notified().await;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.budget.release(self.id);
    }
}

/// At most one log line per [`LogLimit::EVERY`] about a repeated event, so that a flood
/// does not become a log storm; each line says how many it stood for.
#[derive(Debug, Default)]
struct LogLimit {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl LogLimit {
    const EVERY: StdDuration = StdDuration::from_secs(10);

    /// The event happened at `now`: `Some(n)` to log it now, `n` being how many went
    /// unlogged since the last line.
    fn event(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last_logged
            .is_none_or(|last| now.saturating_duration_since(last) >= Self::EVERY);
        if due {
            self.last_logged = Some(now);
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        }
    }
}

/// The accept loop's pause after an error and its rate-limited log line.
#[derive(Debug, Default)]
struct AcceptBackoff {
    pause: Option<StdDuration>,
    log: LogLimit,
}

/// What to do after a failed accept.
#[derive(Debug, PartialEq, Eq)]
struct AcceptPause {
    /// How long to stop accepting.
    pause: StdDuration,
    /// `Some(n)`: log now, mentioning the `n` failures since the last line.
    log: Option<u64>,
}

impl AcceptBackoff {
    const FIRST_PAUSE: StdDuration = StdDuration::from_millis(10);
    const MAX_PAUSE: StdDuration = StdDuration::from_secs(1);

    /// An accept failed at `now`: the pause doubles from 10 ms up to 1 s, and a line is
    /// logged at most every 10 s.
    fn failed(&mut self, now: Instant) -> AcceptPause {
        let pause = self
            .pause
            .map_or(Self::FIRST_PAUSE, |pause| (pause * 2).min(Self::MAX_PAUSE));
        self.pause = Some(pause);
        AcceptPause {
            pause,
            log: self.log.event(now),
        }
    }

    /// An accept succeeded: the next failure pauses briefly again (the log limit stays).
    fn succeeded(&mut self) {
        self.pause = None;
    }
}

/// Accept errors that concern only the connection being accepted (the client gave up):
/// nothing to wait for.
fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionRefused
            | ErrorKind::Interrupted
    )
}

/// Shared state of the routes.
#[derive(Clone, Debug)]
struct AppState {
    coordinator: Arc<Coordinator>,
    shutdown: watch::Receiver<bool>,
}

/// The server's certificate (chain + key), swapped whole when it is renewed: every
/// handshake after [`ServerCertificate::replace`] gets the new one, connections already
/// open keep theirs.
#[derive(Debug)]
pub struct ServerCertificate {
    current: std::sync::RwLock<Arc<CertifiedKey>>,
}

impl ServerCertificate {
    /// A certificate from its chain (PEM, leaf first) and key (PEM).
    pub fn new(chain_pem: &str, key_pem: &str) -> Result<Arc<ServerCertificate>, String> {
        Ok(Arc::new(ServerCertificate {
            current: std::sync::RwLock::new(certified_key(chain_pem, key_pem)?),
        }))
    }

    /// Serves `chain_pem` with `key_pem` from the next handshake on.
    pub fn replace(&self, chain_pem: &str, key_pem: &str) -> Result<(), String> {
        let key = certified_key(chain_pem, key_pem)?;
        // A swap of one Arc cannot leave a half-written value: a poisoned lock holds the
        // old certificate or the new one, either of which is fine to serve.
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = key;
        Ok(())
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("server certificate: {error}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|error| format!("server key: {error}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|error| format!("server certificate: {error}"))?;
    Ok(Arc::new(key))
}

/// Builds the TLS configuration with a fixed server certificate (for test servers).
pub fn tls_config(ca_der: &[u8], cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, String> {
    tls_config_with(ca_der, ServerCertificate::new(cert_pem, key_pem)?)
}

/// Builds the TLS configuration: the server certificate from `certificate` at each
/// handshake, and client certificates verified against the coordinator's CA (and the
/// clock: an expired one fails the handshake) when presented.
pub fn tls_config_with(ca_der: &[u8], certificate: Arc<ServerCertificate>) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|error| format!("CA certificate: {error}"))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|error| format!("client verifier: {error}"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS versions: {error}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves HTTPS on `listener` until `shutdown` turns true, then lets in-flight requests
/// finish for up to [`SHUTDOWN_GRACE`] (long-polls answer 304 at once).
pub async fn serve(
    listener: TcpListener,
    coordinator: Arc<Coordinator>,
    tls: Arc<ServerConfig>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let shared = coordinator.clone();
    let metrics = &shared.metrics;
    let router = routes(AppState {
        coordinator,
        shutdown: shutdown.clone(),
    });
    let graceful = GracefulShutdown::new();
    let unauthenticated = Unauthenticated::new(MAX_UNAUTHENTICATED_CONNECTIONS);
    let mut backoff = AcceptBackoff::default();
    let mut eviction_log = LogLimit::default();
    'accept: loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(error) if is_per_connection(&error) => {
                metrics.accept_errors.add(1);
                continue;
            }
            Err(error) => {
                // Out of file descriptors (EMFILE/ENFILE) or kernel memory: the pending
                // connection stays queued, so retrying at once would spin. Closing the
                // oldest unauthenticated connection frees a descriptor for whoever waits.
                metrics.accept_errors.add(1);
                if unauthenticated.evict_oldest() {
                    metrics.connections_evicted.add(1);
                }
                let AcceptPause { pause, log } = backoff.failed(Instant::now());
                if let Some(unlogged) = log {
                    tracing::error!(
                        %error,
                        pause_ms = pause.as_millis(),
                        failures_since_last_message = unlogged,
                        "accepting a connection failed; pausing the accept loop (out of file descriptors? raise LimitNOFILE, or look for a connection flood; /metrics drover_accept_errors_total counts these)"
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    _ = shutdown.changed() => break 'accept,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (admission, evicted) = unauthenticated.admit();
        if evicted {
            metrics.connections_evicted.add(1);
            if let Some(unlogged) = eviction_log.event(Instant::now()) {
                tracing::warn!(
                    limit = MAX_UNAUTHENTICATED_CONNECTIONS,
                    closed_since_last_message = unlogged,
                    "too many connections without a client certificate or admin token: closing the oldest (a connection flood? /metrics drover_connections_closed_by_limit_total counts these)"
                );
            }
        }
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let tls = tokio::select! {
                handshake = handshake => match handshake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(_)) | Err(_) => return,
                },
                () = admission.evicted() => return,
            };
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| PeerIdentity::from_certificate(leaf));
            let (admission, header_timeout) = match identity {
                Some(_) => {
                    admission.authenticated();
                    (None, AGENT_HEADER_TIMEOUT)
                }
                None => (Some(Arc::new(admission)), ANONYMOUS_HEADER_TIMEOUT),
            };
            // The identity wraps the whole router (one small clone per request);
            // `Router::layer` would rebuild every route per connection, which
            // was ~22 KiB of each held long-poll.
            let connection_state = Connection {
                identity,
                admission: admission.clone(),
            };
            let service = TowerToHyperService::new(Extension(connection_state).layer(router));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_REQUEST_BUFFER)
                .serve_connection(TokioIo::new(tls), service);
            let served = watcher.watch(connection);
            match &admission {
                // Dropping the connection closes it.
                Some(admission) => tokio::select! {
                    _ = served => {}
                    () = admission.evicted() => {}
                },
                None => {
                    let _ = served.await;
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}

fn routes(state: AppState) -> Router {
    with_layers(api_routes(), state)
}

/// Every route of the API, before the layers that every request goes through.
fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/join", post(join))
        .route("/v1/agent/manifest", get(manifest))
        .route("/v1/agent/report", post(report))
        .route("/v1/agent/certificate", post(renew_certificate))
        .route("/v1/artifacts/{digest}", get(artifact))
        .route("/v1/admin/tokens", post(create_token))
        .route(
            "/v1/admin/admin-tokens",
            get(list_admin_tokens).post(create_admin_token),
        )
        .route(
            "/v1/admin/admin-tokens/{name}",
            axum::routing::delete(revoke_admin_token),
        )
        .route("/v1/admin/hosts", get(list_hosts))
        .route("/v1/admin/hosts/{id}", get(show_host).delete(remove_host))
        .route("/v1/admin/hosts/{id}/labels", put(label_host))
        .route("/v1/admin/hosts/{id}/history", get(host_history))
        .route("/v1/admin/groups", get(list_groups).post(put_group))
        .route("/v1/admin/groups/{name}", axum::routing::delete(delete_group))
        .route("/v1/admin/artifacts", post(upload_artifact))
        .route("/v1/admin/releases", post(create_release))
        .route("/v1/admin/releases/{app}", get(list_releases))
        .route("/v1/admin/pins", get(list_pins).put(pin).delete(unpin))
        .route("/v1/admin/pins/{app}", get(list_app_pins))
        .route("/v1/admin/holds", put(hold).delete(unhold))
        .route("/v1/admin/status", get(status))
        .route("/v1/admin/rollouts", post(start_rollout))
        .route("/v1/admin/rollouts/plan", post(plan_rollout))
        .route("/v1/admin/rollouts/{app}", get(rollout_status))
        .route("/v1/admin/rollouts/{app}/history", get(rollout_history))
        .route("/v1/admin/history", get(fleet_history))
        .route("/v1/admin/rollouts/{app}/{command}", post(rollout_command))
        .fallback(|| async { ApiError::Service(ServiceError::Unknown("no_such_route", "no such endpoint".into())) })
}

/// The layers every request goes through, innermost first: a panicking handler becomes
/// a 500 ([`contain_panics`]) before the request is counted, so `/metrics` counts it as
/// an error; body limits are each route's own ([`BodyLimit`]).
fn with_layers(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .layer(axum::middleware::from_fn(contain_panics))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// How much of a request's path a panic's log line and answer show.
const MAX_LOGGED_PATH: usize = 200;

/// The `ErrorBody.code` of a request whose handler panicked.
pub const PANIC_CODE: &str = "internal";

/// Turns a panic in a handler (a bug) into a 500 with an [`ErrorBody`] and an ERROR log
/// line naming the route. Without it the panic would end the connection's task: the
/// client would see the connection drop with no answer, and an agent's connection would
/// go with it. Later requests still work: the service's locks do not poison. What a
/// handler changed in memory before it panicked is not undone, which is one more reason
/// the line says it is a bug. The panic's message and place are printed by the panic
/// hook just before this line; the client is told only that it was logged, not what it
/// said (the client may be anonymous).
async fn contain_panics(request: Request, next: axum::middleware::Next) -> Response {
    use futures_util::FutureExt as _;
    let method = request.method().clone();
    // hyper refuses control characters and spaces in a path; a long one is cut.
    let route: String = request.uri().path().chars().take(MAX_LOGGED_PATH).collect();
    match std::panic::AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(payload) => {
            let panic = payload
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            tracing::error!(
                %method,
                route,
                panic,
                "a request handler panicked (a bug in the coordinator): answered 500; please report this line and the panic message before it"
            );
            let body = ErrorBody {
                code: PANIC_CODE.to_owned(),
                error: format!(
                    "internal error in the coordinator while handling {method} {route}; it was logged there (please report it). A change this request asked for may or may not have been made: look before retrying"
                ),
            };
            (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
        }
    }
}

async fn count_requests(State(state): State<AppState>, request: Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let metrics = &state.coordinator.metrics;
    metrics.requests.add(1);
    if response.status().is_client_error() || response.status().is_server_error() {
        metrics.request_errors.add(1);
    }
    if response.status() == StatusCode::REQUEST_TIMEOUT {
        metrics.body_timeouts.add(1);
    }
    response
}

/// Why a request body was not read.
#[derive(Clone, Debug, thiserror::Error)]
enum BodyError {
    /// Over the route's limit (declared in Content-Length or counted while reading).
    #[error("the request body is over the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// Slower than [`BodyPace`] allows.
    #[error(
        "the request body came too slowly: {received} bytes in {elapsed_ms} ms (a body may take {grace_s} s plus 1 s per {min_rate} bytes, and pause at most {stall_s} s); the connection is closed"
    )]
    TooSlow {
        received: u64,
        elapsed_ms: u128,
        grace_s: u64,
        min_rate: u64,
        stall_s: u64,
    },
    /// The connection failed mid-body.
    #[error("the request body could not be read: {0}")]
    Unreadable(String),
}

/// Everything a route can answer with instead of success.
#[derive(Debug)]
enum ApiError {
    Service(ServiceError),
    Body(BodyError),
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> ApiError {
        ApiError::Service(error)
    }
}

/// The artifact store's errors reach the client as the service words them.
impl From<BlobError> for ApiError {
    fn from(error: BlobError) -> ApiError {
        ApiError::Service(error.into())
    }
}

impl From<BodyError> for ApiError {
    fn from(error: BodyError) -> ApiError {
        ApiError::Body(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::Service(ServiceError::Invalid(code, _)) => (StatusCode::BAD_REQUEST, *code),
            ApiError::Service(ServiceError::Unauthenticated(code, _)) => (StatusCode::UNAUTHORIZED, *code),
            ApiError::Service(ServiceError::NotAllowed(code, _)) => (StatusCode::FORBIDDEN, *code),
            ApiError::Service(ServiceError::Unknown(code, _)) => (StatusCode::NOT_FOUND, *code),
            ApiError::Service(ServiceError::Conflicting(code, _)) => (StatusCode::CONFLICT, *code),
            ApiError::Service(ServiceError::Expired(code, _)) => (StatusCode::GONE, *code),
            ApiError::Service(ServiceError::TooLarge(code, _)) => (StatusCode::PAYLOAD_TOO_LARGE, *code),
            ApiError::Service(ServiceError::Busy(code, _)) => (StatusCode::SERVICE_UNAVAILABLE, *code),
            ApiError::Service(ServiceError::PastEnd { .. }) => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            ApiError::Service(ServiceError::Store { .. }) => (StatusCode::INTERNAL_SERVER_ERROR, "store_failed"),
            ApiError::Service(ServiceError::Io { .. }) => (StatusCode::INTERNAL_SERVER_ERROR, "io_failed"),
            ApiError::Body(BodyError::TooLarge { .. }) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::Body(BodyError::TooSlow { .. }) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::Body(BodyError::Unreadable(_)) => (StatusCode::BAD_REQUEST, "body_unreadable"),
        };
        let message = match &self {
            // The client reads what the store said, as it always has; which operation it
            // interrupted is for the operator's log below.
            ApiError::Service(ServiceError::Store { source, .. }) => source.to_string(),
            ApiError::Service(error) => error.to_string(),
            ApiError::Body(error) => error.to_string(),
        };
        // 503 is expected back-pressure (counted in /metrics); logging each one would turn
        // an overload into a log storm.
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            match &self {
                ApiError::Service(error) => tracing::error!(error = %error, "request failed"),
                ApiError::Body(error) => tracing::error!(error = %error, "request failed"),
            }
        }
        let body = ErrorBody {
            code: code.to_owned(),
            error: message,
        };
        let mut response = (status, Json(body)).into_response();
        match &self {
            ApiError::Service(ServiceError::PastEnd { size, .. }) => {
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
            }
            // The rest of the body is unread (and may never come): the connection cannot
            // carry another request.
            ApiError::Body(_) => {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ApiError::Service(_) => {}
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// How much of an oversized body is read and discarded before answering 413, so that
/// ordinary clients, which send the whole body before reading the answer, see the 413
/// instead of a broken pipe. Beyond this the connection is simply closed. Only
/// authenticated clients get this: an anonymous one is answered at once.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// How much of a body a route reads.
#[derive(Clone, Copy, Debug)]
struct BodyLimit {
    /// The largest body accepted.
    max: usize,
    /// How much is read (and dropped) before answering 413 to a larger one.
    drain: usize,
}

impl BodyLimit {
    /// For a client that proved who it is (agent certificate or admin token).
    const fn authenticated(max: usize) -> BodyLimit {
        BodyLimit {
            max,
            drain: if max > DRAIN_LIMIT { max } else { DRAIN_LIMIT },
        }
    }

    /// For a client that did not: nothing beyond `max` is read.
    const fn anonymous(max: usize) -> BodyLimit {
        BodyLimit { max, drain: max }
    }
}

/// How fast a request body must arrive: by `grace` plus one second per `min_rate` bytes
/// received (an average rate floor that a large upload can meet however long it is),
/// and never pausing longer than `max_stall`. A client sending a byte a second is cut
/// off after `grace`; one that sends part of a body and stops, after at most
/// `max_stall`.
#[derive(Clone, Copy, Debug)]
struct BodyPace {
    grace: StdDuration,
    min_rate: u64,
    max_stall: StdDuration,
}

/// The pace every route asks for.
const BODY_PACE: BodyPace = BodyPace {
    grace: BODY_GRACE,
    min_rate: BODY_MIN_RATE,
    max_stall: BODY_MAX_STALL,
};

impl BodyPace {
    /// When the next chunk must have arrived, given when the body started, when the last
    /// chunk came and how many bytes came so far.
    fn deadline<I>(&self, started: I, last_chunk: I, received: u64) -> I
    where
        I: std::ops::Add<StdDuration, Output = I> + Ord,
    {
        let earned = StdDuration::from_millis(received.saturating_mul(1000) / self.min_rate.max(1));
        std::cmp::min(started + self.grace + earned, last_chunk + self.max_stall)
    }

    fn too_slow(&self, received: u64, elapsed: StdDuration) -> BodyError {
        BodyError::TooSlow {
            received,
            elapsed_ms: elapsed.as_millis(),
            grace_s: self.grace.as_secs(),
            min_rate: self.min_rate,
            stall_s: self.max_stall.as_secs(),
        }
    }
}

/// The request body as a stream that ends with [`BodyError::TooSlow`] when the client
/// falls behind `pace` (the error is also put in `failure`, for callers that hand the
/// stream on and get a different error back).
fn paced(
    body: Body,
    pace: BodyPace,
    failure: Arc<OnceLock<BodyError>>,
) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, PacedError>> + Unpin {
    use futures_util::StreamExt as _;
    let started = tokio::time::Instant::now();
    let state = (Some(body.into_data_stream()), started, 0u64);
    Box::pin(futures_util::stream::unfold(
        state,
        move |(stream, last_chunk, received)| {
            let failure = failure.clone();
            async move {
                let mut stream = stream?;
                let deadline = pace.deadline(started, last_chunk, received);
                let error = match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(None) => return None,
                    Ok(Some(Ok(chunk))) => {
                        let received = received + chunk.len() as u64;
                        return Some((Ok(chunk), (Some(stream), tokio::time::Instant::now(), received)));
                    }
                    Ok(Some(Err(error))) => BodyError::Unreadable(error.to_string()),
                    Err(_) => pace.too_slow(received, started.elapsed()),
                };
                let message = error.to_string();
                let _ = failure.set(error);
                Some((Err(PacedError(message)), (None, last_chunk, received)))
            }
        },
    ))
}

/// The error item of [`paced`]: the message of the [`BodyError`] it stored.
#[derive(Debug)]
struct PacedError(String);

impl std::fmt::Display for PacedError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Reads an optional JSON body: an empty body is the type's default.
async fn read_optional_json<T: DeserializeOwned + Default>(body: Body, limit: BodyLimit) -> ApiResult<T> {
    let bytes = read_body(body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    Ok(parse_json(&bytes)?)
}

/// Reads a JSON body within `limit`: 413 over it, 408 too slow, 400 when malformed.
async fn read_json<T: DeserializeOwned>(body: Body, limit: BodyLimit) -> ApiResult<T> {
    Ok(parse_json(&read_body(body, limit).await?)?)
}

async fn read_body(body: Body, limit: BodyLimit) -> Result<Vec<u8>, BodyError> {
    use futures_util::StreamExt as _;
    // A declared length over what would be read (`drain` is at least `max`) is refused
    // before reading any of it.
    let declared = axum::body::HttpBody::size_hint(&body).lower();
    if declared > limit.drain as u64 {
        return Err(BodyError::TooLarge { limit: limit.max });
    }
    let failure = Arc::new(OnceLock::new());
    let mut stream = paced(body, BODY_PACE, failure.clone());
    let mut bytes = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            failure
                .get()
                .cloned()
                .unwrap_or_else(|| BodyError::Unreadable(error.to_string()))
        })?;
        total += chunk.len();
        if total <= limit.max {
            bytes.extend_from_slice(&chunk);
        } else if total > limit.drain {
            break;
        }
    }
    if total > limit.max {
        return Err(BodyError::TooLarge { limit: limit.max });
    }
    Ok(bytes)
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ServiceError> {
    serde_json::from_slice(bytes).map_err(|error| {
        let detail: String = error
            .to_string()
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect();
        ServiceError::Invalid("bad_json", format!("invalid request body: {detail}"))
    })
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is matched without
/// regard to case (RFC 9110 §11.1: `bearer`, `BEARER`), and any run of spaces or tabs may
/// separate it from the token.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// An admin request's operator: the bearer token was checked before the handler runs,
/// and the [`Operator`] is the `who` of whatever the request changes. Every admin route
/// takes one, so none can forget the check, and the check runs before the body is read
/// (the body extractor comes last): an anonymous client never makes the server read an
/// admin body. A valid token takes the connection out of the unauthenticated budget, so
/// an operator's long upload is never closed to make room for anonymous clients.
#[derive(Debug)]
struct Admin(Operator);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Admin, ApiError> {
        let operator = state.coordinator.check_admin(bearer(&parts.headers)).await?;
        if let Some(admission) = parts
            .extensions
            .get::<Connection>()
            .and_then(|connection| connection.admission.as_ref())
        {
            admission.authenticated();
        }
        Ok(Admin(operator))
    }
}

fn parse_path<T: std::str::FromStr>(text: &str, what: &'static str) -> Result<T, ServiceError>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|error: T::Err| ServiceError::Invalid(what, error.to_string()))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let now = drover_protocol::Timestamp::from_system(std::time::SystemTime::now());
    let coordinator = &state.coordinator;
    let text = coordinator
        .metrics
        .render(coordinator.host_count(), coordinator.certificate_expiry(now), now);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn join(State(state): State<AppState>, body: Body) -> ApiResult<Json<drover_protocol::api::JoinResponse>> {
    let request: JoinRequest = read_json(body, BodyLimit::anonymous(MAX_JOIN_BODY)).await?;
    Ok(Json(state.coordinator.join(request).await?))
}

/// `GET /v1/agent/manifest[?wait=SECONDS]` with `If-None-Match`.
async fn manifest(
    State(state): State<AppState>,
    Extension(connection): Extension<Connection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let slot = state.coordinator.host_slot(connection.identity.as_ref())?;
    let wait = parse_wait(query.as_deref())?;
    let metrics = &state.coordinator.metrics;
    metrics.polls.add(1);
    let mut receiver = slot.subscribe();
    drop(slot);
    let known = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    // The request's headers point into hyper's read buffer of this connection: dropped
    // before a long wait, so a held poll does not keep that buffer (8 KiB) alive too.
    drop(headers);
    let current = receiver.borrow_and_update().clone();
    if known.as_deref() != Some(current.etag.as_str()) {
        return Ok(manifest_response(&current));
    }
    if wait > 0 {
        let mut shutdown = state.shutdown.clone();
        tokio::select! {
            changed = receiver.changed() => {
                if changed.is_err() {
                    // The slot was dropped: the host was removed or re-joined.
                    return Err(ServiceError::NotAllowed("host_removed", "this host was removed or re-joined while waiting".into()).into());
                }
                let current = receiver.borrow_and_update().clone();
                if known.as_deref() != Some(current.etag.as_str()) {
                    return Ok(manifest_response(&current));
                }
            }
            () = tokio::time::sleep(StdDuration::from_secs(wait)) => {}
            _ = shutdown.wait_for(|stopping| *stopping) => {}
        }
    }
    metrics.polls_not_modified.add(1);
    Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, current.etag.clone())]).into_response())
}

fn parse_wait(query: Option<&str>) -> Result<u64, ServiceError> {
    let mut wait = 0;
    for pair in query.unwrap_or("").split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("wait", value)) => {
                wait = value
                    .parse()
                    .ok()
                    .filter(|seconds| *seconds <= MAX_WAIT_SECONDS)
                    .ok_or_else(|| {
                        ServiceError::Invalid("bad_wait", format!("wait must be 0 to {MAX_WAIT_SECONDS} seconds"))
                    })?;
            }
            _ => {
                return Err(ServiceError::Invalid(
                    "bad_query",
                    "the only query parameter is wait=SECONDS".into(),
                ));
            }
        }
    }
    Ok(wait)
}

fn manifest_response(published: &crate::server::service::Published) -> Response {
    (
        StatusCode::OK,
        [
            (header::ETAG, published.etag.clone()),
            (header::CONTENT_TYPE, "application/vnd.dsse.envelope.v1+json".to_owned()),
        ],
        published.envelope.clone(),
    )
        .into_response()
}

async fn report(
    State(state): State<AppState>,
    Extension(connection): Extension<Connection>,
    body: Body,
) -> ApiResult<StatusCode> {
    state.coordinator.host_slot(connection.identity.as_ref())?;
    let host = connection
        .identity
        .as_ref()
        .map(|identity| identity.host.clone())
        .expect("checked by host_slot");
    let report: HostReport = read_json(body, BodyLimit::authenticated(MAX_REPORT_BYTES)).await?;
    state.coordinator.report(&host, report).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/agent/certificate`: a new certificate for the key of the one presented.
async fn renew_certificate(
    State(state): State<AppState>,
    Extension(connection): Extension<Connection>,
    body: Body,
) -> ApiResult<Json<RenewResponse>> {
    state.coordinator.host_slot(connection.identity.as_ref())?;
    let identity = connection.identity.as_ref().expect("checked by host_slot");
    let request: RenewRequest = read_json(body, BodyLimit::authenticated(MAX_JOIN_BODY)).await?;
    Ok(Json(
        state.coordinator.renew_certificate(identity, &request.csr_pem).await?,
    ))
}

/// `GET /v1/artifacts/{digest}` with `Range` support, for enrolled hosts.
async fn artifact(
    State(state): State<AppState>,
    Extension(connection): Extension<Connection>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let slot = state.coordinator.host_slot(connection.identity.as_ref())?;
    let digest: Digest = parse_path(&digest, "bad_digest")?;
    if !slot.may_download(&digest) {
        // Artifacts may hold secrets of other apps: a host gets only what its manifest lists.
        return Err(ServiceError::NotAllowed(
            "artifact_not_in_manifest",
            format!("artifact {digest} is not in this host's manifest"),
        )
        .into());
    }
    let range = headers.get(header::RANGE).and_then(|value| value.to_str().ok());
    let download = crate::server::blobs::open(&state.coordinator.data().blobs(), &digest, range).await?;
    state
        .coordinator
        .metrics
        .artifact_bytes_served
        .add(usize::try_from(download.length).unwrap_or(usize::MAX));
    let status = if download.range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let (length, content_range) = (download.length, download.content_range());
    let mut response = Response::new(Body::from_stream(download.into_stream()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(value) = content_range.and_then(|text| HeaderValue::from_str(&text).ok()) {
        headers.insert(header::CONTENT_RANGE, value);
    }
    Ok(response)
}

async fn create_admin_token(
    State(state): State<AppState>,
    Admin(operator): Admin,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    let reason = change_reason(query.as_deref())?;
    let request: AdminTokenRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            state
                .coordinator
                .create_admin_token(request, &operator, reason.as_deref())
                .await?,
        ),
    )
        .into_response())
}

async fn list_admin_tokens(State(state): State<AppState>, _: Admin) -> ApiResult<Response> {
    Ok(Json(state.coordinator.admin_tokens()).into_response())
}

async fn revoke_admin_token(
    State(state): State<AppState>,
    Admin(operator): Admin,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let name: TokenName = parse_path(&name, "bad_token_name")?;
    let reason = change_reason(query.as_deref())?;
    Ok(Json(
        state
            .coordinator
            .revoke_admin_token(&name, &operator, reason.as_deref())
            .await?,
    )
    .into_response())
}

async fn create_token(State(state): State<AppState>, Admin(operator): Admin, body: Body) -> ApiResult<Response> {
    let request: TokenRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    Ok((
        StatusCode::CREATED,
        Json(state.coordinator.create_token(request, &operator).await?),
    )
        .into_response())
}

async fn list_hosts(State(state): State<AppState>, _: Admin) -> ApiResult<Response> {
    Ok(Json(state.coordinator.hosts().await).into_response())
}

async fn show_host(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> ApiResult<Response> {
    let id: HostId = parse_path(&id, "bad_host_id")?;
    Ok(Json(state.coordinator.host(&id).await?).into_response())
}

async fn host_history(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> ApiResult<Response> {
    let id: HostId = parse_path(&id, "bad_host_id")?;
    Ok(Json(state.coordinator.host_history(&id).await?).into_response())
}

async fn remove_host(
    State(state): State<AppState>,
    Admin(operator): Admin,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<StatusCode> {
    let id: HostId = parse_path(&id, "bad_host_id")?;
    let reason = change_reason(query.as_deref())?;
    state.coordinator.remove_host(&id, &operator, reason.as_deref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn label_host(
    State(state): State<AppState>,
    Admin(operator): Admin,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    let id: HostId = parse_path(&id, "bad_host_id")?;
    let reason = change_reason(query.as_deref())?;
    let request: LabelRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    let changed = state
        .coordinator
        .label_host(&id, request.set, request.remove, &operator, reason.as_deref())
        .await?;
    Ok(Json(changed).into_response())
}

async fn list_groups(State(state): State<AppState>, _: Admin) -> ApiResult<Response> {
    Ok(Json(state.coordinator.groups().await).into_response())
}

async fn put_group(
    State(state): State<AppState>,
    Admin(operator): Admin,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    let reason = change_reason(query.as_deref())?;
    let group: Group = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    Ok(Json(state.coordinator.put_group(group, &operator, reason.as_deref()).await?).into_response())
}

async fn delete_group(
    State(state): State<AppState>,
    Admin(operator): Admin,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<StatusCode> {
    let reason = change_reason(query.as_deref())?;
    state
        .coordinator
        .delete_group(&name, &operator, reason.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The `?reason=` of a change whose body has no reason field ([`ChangeReason`]); any
/// other query, or a reason over the limit, is 400 `bad_reason`.
fn change_reason(query: Option<&str>) -> Result<Option<String>, ServiceError> {
    ChangeReason::from_query(query)
        .map(|change| change.reason)
        .map_err(|error| ServiceError::Invalid("bad_reason", error))
}

/// `GET /v1/admin/history?app=&host=&who=&since=&limit=`: the fleet-wide history, newest
/// first; a bad filter is 400 `bad_history_query` saying which and why.
async fn fleet_history(State(state): State<AppState>, _: Admin, RawQuery(query): RawQuery) -> ApiResult<Response> {
    let query = HistoryQuery::from_query(query.as_deref())
        .map_err(|error| ServiceError::Invalid("bad_history_query", error))?;
    Ok(Json(state.coordinator.history(&query).await?).into_response())
}

/// `POST /v1/admin/artifacts`: the body is the artifact, streamed to disk. The optional
/// `X-Drover-Digest` header names the digest the client expects.
async fn upload_artifact(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let expected = match headers.get("x-drover-digest").map(HeaderValue::to_str) {
        None => None,
        Some(Ok(text)) => Some(parse_path::<Digest>(text, "bad_digest")?),
        Some(Err(_)) => {
            return Err(ServiceError::Invalid("bad_digest", "X-Drover-Digest is not text".into()).into());
        }
    };
    // Uploads can be large: they get the rate floor, not a total deadline.
    let failure = Arc::new(OnceLock::new());
    let stream = paced(body, BODY_PACE, failure.clone());
    let stored = crate::server::blobs::put(&state.coordinator.data().blobs(), stream, expected.as_ref()).await;
    match (stored, failure.get()) {
        (Ok(info), _) => Ok((StatusCode::CREATED, Json(info)).into_response()),
        // The body's own error (408), not the "upload interrupted" that put made of it.
        (Err(_), Some(failure)) => Err(failure.clone().into()),
        (Err(error), None) => Err(error.into()),
    }
}

async fn create_release(State(state): State<AppState>, _: Admin, body: Body) -> ApiResult<Response> {
    let request: ReleaseRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    Ok((
        StatusCode::CREATED,
        Json(state.coordinator.create_release(request).await?),
    )
        .into_response())
}

async fn list_releases(State(state): State<AppState>, _: Admin, Path(app): Path<String>) -> ApiResult<Response> {
    let app: AppName = parse_path(&app, "bad_app_name")?;
    Ok(Json(state.coordinator.releases(&app).await).into_response())
}

async fn pin(State(state): State<AppState>, Admin(operator): Admin, body: Body) -> ApiResult<Response> {
    let request: PinRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    let pin = Pin {
        app: request.app,
        version: request.version,
        scope: request.scope,
    };
    let reason = request.reason.as_deref();
    Ok(Json(state.coordinator.pin(pin, &operator, reason).await?).into_response())
}

async fn unpin(State(state): State<AppState>, Admin(operator): Admin, body: Body) -> ApiResult<Response> {
    let request: UnpinRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    let reason = request.reason.as_deref();
    Ok(Json(
        state
            .coordinator
            .unpin(request.app, request.scope, &operator, reason)
            .await?,
    )
    .into_response())
}

async fn hold(State(state): State<AppState>, Admin(operator): Admin, body: Body) -> ApiResult<Response> {
    let request: HoldRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    let reason = request.reason.as_deref();
    Ok(Json(state.coordinator.hold(request.scope, true, &operator, reason).await?).into_response())
}

async fn unhold(State(state): State<AppState>, Admin(operator): Admin, body: Body) -> ApiResult<Response> {
    let request: HoldRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    let reason = request.reason.as_deref();
    Ok(Json(state.coordinator.hold(request.scope, false, &operator, reason).await?).into_response())
}

/// `GET /v1/admin/pins`: every app's pins and the holds.
async fn list_pins(State(state): State<AppState>, _: Admin) -> ApiResult<Response> {
    Ok(Json(state.coordinator.pins(None).await?).into_response())
}

/// `GET /v1/admin/pins/{app}`: one app's pins and the holds.
async fn list_app_pins(State(state): State<AppState>, _: Admin, Path(app): Path<String>) -> ApiResult<Response> {
    let app: AppName = parse_path(&app, "bad_app_name")?;
    Ok(Json(state.coordinator.pins(Some(&app)).await?).into_response())
}

async fn status(State(state): State<AppState>, _: Admin) -> ApiResult<Response> {
    Ok(Json(state.coordinator.status().await).into_response())
}

async fn plan_rollout(State(state): State<AppState>, _: Admin, body: Body) -> ApiResult<Response> {
    let request: RolloutRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    Ok(Json(state.coordinator.plan_rollout(&request).await?).into_response())
}

async fn start_rollout(State(state): State<AppState>, Admin(operator): Admin, body: Body) -> ApiResult<Response> {
    let request: RolloutRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    Ok((
        StatusCode::CREATED,
        Json(state.coordinator.start_rollout(&request, &operator).await?),
    )
        .into_response())
}

async fn rollout_status(State(state): State<AppState>, _: Admin, Path(app): Path<String>) -> ApiResult<Response> {
    let app: AppName = parse_path(&app, "bad_app_name")?;
    Ok(Json(state.coordinator.rollout_status(&app).await?).into_response())
}

async fn rollout_history(State(state): State<AppState>, _: Admin, Path(app): Path<String>) -> ApiResult<Response> {
    let app: AppName = parse_path(&app, "bad_app_name")?;
    Ok(Json(state.coordinator.rollout_history(&app).await?).into_response())
}

/// `POST /v1/admin/rollouts/{app}/pause|resume|approve|abort`; the body (optional) has
/// the reason, and for abort `rollback`.
async fn rollout_command(
    State(state): State<AppState>,
    Admin(operator): Admin,
    Path((app, command)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    let app: AppName = parse_path(&app, "bad_app_name")?;
    let (command, reason) = match command.as_str() {
        "abort" => {
            let request: RolloutAbortRequest =
                read_optional_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
            (
                RolloutCommand::Abort {
                    rollback: request.rollback,
                },
                request.reason,
            )
        }
        "pause" | "resume" | "approve" => {
            let request: RolloutCommandRequest =
                read_optional_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
            let command = match command.as_str() {
                "pause" => RolloutCommand::Pause,
                "resume" => RolloutCommand::Resume,
                _ => RolloutCommand::Approve,
            };
            (command, request.reason)
        }
        _ => {
            return Err(ServiceError::Unknown(
                "no_such_route",
                "rollout commands are pause, resume, approve and abort".into(),
            )
            .into());
        }
    };
    Ok(Json(
        state
            .coordinator
            .rollout_command(&app, command, &operator, reason.as_deref())
            .await?,
    )
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory removed on drop.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos());
            let path = std::env::temp_dir().join(format!("drover-http-{name}-{}-{nanos}", std::process::id()));
            std::fs::create_dir(&path).expect("scratch directory");
            Scratch(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A real coordinator over a fresh data directory (listening on 127.0.0.1:0, which
    /// these tests do not use: they call the router directly).
    async fn test_coordinator(scratch: &Scratch) -> crate::server::serve::Running {
        crate::server::serve::start(crate::server::serve::ServeOptions {
            listen: "127.0.0.1:0".parse().expect("address"),
            data_dir: scratch.0.join("data"),
            public_url: None,
            keys: None,
            manifest_ttl: drover_protocol::Duration::from_secs(3600),
            server_names: Vec::new(),
            host_certificate_validity: drover_protocol::Duration::from_secs(86_400),
            server_certificate_validity: drover_protocol::Duration::from_secs(86_400),
        })
        .await
        .expect("coordinator starts")
    }

    /// The real routes and layers plus `extra` routes, as one connection without a
    /// client certificate sees them.
    fn router_with(
        extra: Router<AppState>,
        coordinator: Arc<Coordinator>,
        admission: Option<Arc<Admission>>,
    ) -> impl tower::Service<Request, Response = Response, Error = std::convert::Infallible> + Clone {
        let (_, shutdown) = watch::channel(false);
        let router = with_layers(api_routes().merge(extra), AppState { coordinator, shutdown });
        Extension(Connection {
            identity: None,
            admission,
        })
        .layer(router)
    }

    async fn call<S>(router: &S, method: &str, path: &str, token: Option<&str>) -> (StatusCode, String)
    where
        S: tower::Service<Request, Response = Response, Error = std::convert::Infallible> + Clone,
    {
        use tower::ServiceExt as _;
        let mut request = axum::http::Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Body::empty()).expect("request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("response body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn error_code(body: &str) -> String {
        serde_json::from_str::<ErrorBody>(body)
            .map(|error| error.code)
            .unwrap_or_else(|_| format!("(not an ErrorBody: {body})"))
    }

    #[tokio::test]
    async fn a_panicking_handler_gets_a_500_and_the_next_requests_are_served() {
        let scratch = Scratch::new("panic");
        let running = test_coordinator(&scratch).await;
        let token = running.coordinator.credentials().admin_token.clone();
        let errors_before = running.coordinator.metrics.request_errors.get();
        async fn panicking(_: Admin) -> StatusCode {
            panic!("a deliberate panic in a test handler")
        }
        let panicking = Router::new().route("/v1/admin/test-panic", get(panicking));
        let router = router_with(panicking, running.coordinator.clone(), None);

        let (status, body) = call(&router, "GET", "/v1/admin/test-panic", Some(&token)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(error_code(&body), PANIC_CODE);
        assert!(body.contains("logged"), "{body}");
        assert!(body.contains("GET /v1/admin/test-panic"), "the route: {body}");
        assert!(
            !body.contains("deliberate"),
            "the panic message stays in the log: {body}"
        );
        assert_eq!(
            running.coordinator.metrics.request_errors.get(),
            errors_before + 1,
            "counted as a failed request"
        );

        // The same router (and coordinator) keeps serving, anonymous and admin requests.
        let (status, body) = call(&router, "GET", "/healthz", None).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
        let (status, body) = call(&router, "GET", "/v1/admin/hosts", Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = call(&router, "GET", "/v1/admin/test-panic", Some(&token)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "a second panic too: {body}");
        let (status, body) = call(&router, "GET", "/v1/admin/status", Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        running.stop().await;
    }

    #[tokio::test]
    async fn every_admin_route_refuses_a_request_without_a_valid_token() {
        let scratch = Scratch::new("admin");
        let running = test_coordinator(&scratch).await;
        let router = router_with(Router::new(), running.coordinator.clone(), None);
        let admin_routes = [
            ("POST", "/v1/admin/tokens"),
            ("GET", "/v1/admin/admin-tokens"),
            ("POST", "/v1/admin/admin-tokens"),
            ("DELETE", "/v1/admin/admin-tokens/ops"),
            ("GET", "/v1/admin/hosts"),
            ("GET", "/v1/admin/hosts/web-1"),
            ("DELETE", "/v1/admin/hosts/web-1"),
            ("PUT", "/v1/admin/hosts/web-1/labels"),
            ("GET", "/v1/admin/hosts/web-1/history"),
            ("GET", "/v1/admin/groups"),
            ("POST", "/v1/admin/groups"),
            ("DELETE", "/v1/admin/groups/eu"),
            ("POST", "/v1/admin/artifacts"),
            ("POST", "/v1/admin/releases"),
            ("GET", "/v1/admin/releases/web"),
            ("GET", "/v1/admin/pins"),
            ("PUT", "/v1/admin/pins"),
            ("DELETE", "/v1/admin/pins"),
            ("GET", "/v1/admin/pins/web"),
            ("PUT", "/v1/admin/holds"),
            ("DELETE", "/v1/admin/holds"),
            ("GET", "/v1/admin/status"),
            ("POST", "/v1/admin/rollouts"),
            ("POST", "/v1/admin/rollouts/plan"),
            ("GET", "/v1/admin/rollouts/web"),
            ("GET", "/v1/admin/rollouts/web/history"),
            ("POST", "/v1/admin/rollouts/web/pause"),
            ("GET", "/v1/admin/history"),
        ];
        for (method, path) in admin_routes {
            let (status, body) = call(&router, method, path, None).await;
            assert_eq!(
                (status, error_code(&body).as_str()),
                (StatusCode::UNAUTHORIZED, "admin_token_missing"),
                "{method} {path}: {body}"
            );
            let (status, body) = call(&router, method, path, Some("wrong")).await;
            assert_eq!(
                (status, error_code(&body).as_str()),
                (StatusCode::UNAUTHORIZED, "admin_token_invalid"),
                "{method} {path}: {body}"
            );
        }
        running.stop().await;
    }

    #[tokio::test]
    async fn a_valid_admin_token_takes_the_connection_out_of_the_unauthenticated_budget() {
        let scratch = Scratch::new("budget");
        let running = test_coordinator(&scratch).await;
        let token = running.coordinator.credentials().admin_token.clone();
        let budget = Unauthenticated::new(4);
        let (admission, _) = budget.admit();
        let router = router_with(Router::new(), running.coordinator.clone(), Some(Arc::new(admission)));
        let (status, _) = call(&router, "GET", "/v1/admin/hosts", Some("wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            budget.evict_oldest(),
            "a wrong token leaves the connection in the budget"
        );
        let (admission, _) = budget.admit();
        let router = router_with(Router::new(), running.coordinator.clone(), Some(Arc::new(admission)));
        let (status, body) = call(&router, "GET", "/v1/admin/hosts", Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(!budget.evict_oldest(), "the operator's connection left the budget");
        running.stop().await;
    }

    fn authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header value"),
        );
        headers
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for value in [
            "Bearer secret",
            "bearer secret",
            "BEARER secret",
            "bEaReR secret",
            "Bearer   secret ",
            "Bearer\tsecret",
        ] {
            assert_eq!(bearer(&authorization(value)), Some("secret"), "{value:?}");
        }
        for value in [
            "Basic c2VjcmV0",
            "Bearer",
            "Bearer ",
            "Bearersecret",
            "Token secret",
            "",
        ] {
            assert_eq!(bearer(&authorization(value)), None, "{value:?}");
        }
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn body_pace_cuts_off_a_trickle_after_the_grace_period() {
        let started = Instant::now();
        // A byte a second: the 10 s grace is all it gets.
        let deadline = BODY_PACE.deadline(started, started + StdDuration::from_secs(9), 9);
        assert!(deadline <= started + BODY_GRACE + StdDuration::from_millis(1));
        assert!(deadline >= started + BODY_GRACE);
    }

    #[test]
    fn body_pace_lets_a_large_upload_run_at_the_rate_floor() {
        let started = Instant::now();
        // 1 GiB at 1 MiB/s takes 1024 s; by then the floor (64 KiB/s) allows 16,384 s + grace.
        let gib: u64 = 1 << 30;
        let now = started + StdDuration::from_secs(1024);
        let deadline = BODY_PACE.deadline(started, now, gib);
        assert_eq!(
            deadline,
            now + BODY_MAX_STALL,
            "only the stall limit binds a fast upload"
        );
        // Half of it at a quarter of the floor: too slow.
        let slow_now = started + StdDuration::from_secs(2 * 8192 + 100);
        let deadline = BODY_PACE.deadline(started, slow_now, gib / 4);
        assert!(deadline < slow_now, "{:?} past", slow_now - deadline);
    }

    #[test]
    fn body_pace_ends_a_body_that_stops() {
        let started = Instant::now();
        // 64 MiB fast, then nothing: the earned 1,024 s do not matter, the 30 s stall does.
        let last = started + StdDuration::from_secs(2);
        let deadline = BODY_PACE.deadline(started, last, 64 << 20);
        assert_eq!(deadline, last + BODY_MAX_STALL);
    }

    #[test]
    fn accept_backoff_doubles_to_a_second_and_logs_rarely() {
        let mut backoff = AcceptBackoff::default();
        let start = Instant::now();
        let mut pauses = Vec::new();
        let mut logged = Vec::new();
        // 100 failures, one every 100 ms of (simulated) time.
        for step in 0..100u32 {
            let AcceptPause { pause, log } = backoff.failed(start + StdDuration::from_millis(100) * step);
            pauses.push(pause.as_millis());
            if let Some(unlogged) = log {
                logged.push((step, unlogged));
            }
        }
        assert_eq!(&pauses[..8], &[10, 20, 40, 80, 160, 320, 640, 1000]);
        assert!(pauses[8..].iter().all(|pause| *pause == 1000));
        // At 0 s and every 10 s after: 9.9 s of failures give one line per 10 s.
        assert_eq!(logged, vec![(0, 0)]);
        let next = backoff.failed(start + StdDuration::from_secs(10));
        assert_eq!(next.log, Some(99), "the next line counts the failures it did not log");
        backoff.succeeded();
        assert_eq!(backoff.failed(start + StdDuration::from_secs(11)).pause.as_millis(), 10);
    }

    #[test]
    fn the_connection_budget_keeps_working_after_a_panic_while_it_was_locked() {
        let budget = Unauthenticated::new(2);
        let (first, _) = budget.admit();
        let poisoner = budget.clone();
        let panicked = std::thread::spawn(move || {
            let _held = poisoner.open.lock();
            panic!("a deliberate panic while holding the connection budget lock");
        })
        .join();
        assert!(panicked.is_err() && budget.open.is_poisoned());
        let (_second, evicted) = budget.admit();
        assert!(!evicted, "the budget still counts the first connection only");
        drop(first);
        assert!(budget.evict_oldest(), "the second is open");
        assert!(!budget.evict_oldest());
    }

    #[test]
    fn unauthenticated_budget_closes_the_oldest_and_spares_the_authenticated() {
        let budget = Unauthenticated::new(2);
        let (first, evicted) = budget.admit();
        assert!(!evicted);
        let (second, evicted) = budget.admit();
        assert!(!evicted);
        second.authenticated();
        let (third, evicted) = budget.admit();
        assert!(!evicted, "the authenticated connection no longer counts");
        let (_fourth, evicted) = budget.admit();
        assert!(evicted, "over the limit the oldest goes");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            tokio::time::timeout(StdDuration::from_secs(1), first.evicted())
                .await
                .expect("the oldest was told to close");
            assert!(
                tokio::time::timeout(StdDuration::from_millis(10), third.evicted())
                    .await
                    .is_err()
            );
            assert!(
                tokio::time::timeout(StdDuration::from_millis(10), second.evicted())
                    .await
                    .is_err()
            );
        });
        drop(third);
        assert!(budget.evict_oldest(), "the fourth is still open");
        assert!(!budget.evict_oldest(), "and nothing else is");
    }

    /// Which variant an error is, by a `match` without a wildcard: a new variant does not
    /// compile until the table below answers for it.
    fn variant(error: &ApiError) -> &'static str {
        match error {
            ApiError::Service(ServiceError::Invalid(..)) => "Invalid",
            ApiError::Service(ServiceError::Unauthenticated(..)) => "Unauthenticated",
            ApiError::Service(ServiceError::NotAllowed(..)) => "NotAllowed",
            ApiError::Service(ServiceError::Unknown(..)) => "Unknown",
            ApiError::Service(ServiceError::Conflicting(..)) => "Conflicting",
            ApiError::Service(ServiceError::Expired(..)) => "Expired",
            ApiError::Service(ServiceError::TooLarge(..)) => "TooLarge",
            ApiError::Service(ServiceError::Busy(..)) => "Busy",
            ApiError::Service(ServiceError::PastEnd { .. }) => "PastEnd",
            ApiError::Service(ServiceError::Store { .. }) => "Store",
            ApiError::Service(ServiceError::Io { .. }) => "Io",
            ApiError::Body(BodyError::TooLarge { .. }) => "Body::TooLarge",
            ApiError::Body(BodyError::TooSlow { .. }) => "Body::TooSlow",
            ApiError::Body(BodyError::Unreadable(_)) => "Body::Unreadable",
        }
    }

    /// Every error answers with the status, code and message it answered with before the
    /// service's errors were named by what failed (issue 15): clients see no change. A
    /// store failure's answer is the store's message alone, as before; the operation it
    /// interrupted goes only to the log.
    #[tokio::test]
    async fn every_error_answers_with_the_status_code_and_message_it_always_had() {
        use crate::server::store::StoreError;
        let store_failure = StoreError::Corrupt {
            what: "host",
            detail: "bad certificate".into(),
        };
        let table: Vec<(ApiError, StatusCode, &str, &str)> = vec![
            (
                ServiceError::Invalid("bad_labels", "at most 64 labels".into()).into(),
                StatusCode::BAD_REQUEST,
                "bad_labels",
                "at most 64 labels",
            ),
            (
                ServiceError::Unauthenticated("bad_token", "no such token".into()).into(),
                StatusCode::UNAUTHORIZED,
                "bad_token",
                "no such token",
            ),
            (
                ServiceError::NotAllowed("host_removed", "this host was removed".into()).into(),
                StatusCode::FORBIDDEN,
                "host_removed",
                "this host was removed",
            ),
            (
                ServiceError::Unknown("host_not_found", "no host web-1".into()).into(),
                StatusCode::NOT_FOUND,
                "host_not_found",
                "no host web-1",
            ),
            (
                ServiceError::Conflicting("group_in_use", "group eu has pins".into()).into(),
                StatusCode::CONFLICT,
                "group_in_use",
                "group eu has pins",
            ),
            (
                ServiceError::Expired("token_expired", "the token expired".into()).into(),
                StatusCode::GONE,
                "token_expired",
                "the token expired",
            ),
            (
                ServiceError::TooLarge("artifact_too_large", "over 1 GiB".into()).into(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "artifact_too_large",
                "over 1 GiB",
            ),
            (
                ServiceError::Busy("too_many_waiting", "retry later".into()).into(),
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_waiting",
                "retry later",
            ),
            (
                ServiceError::PastEnd {
                    message: "range starts past the end".into(),
                    size: 10,
                }
                .into(),
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                "range starts past the end",
            ),
            (
                ServiceError::Store {
                    operation: "recording a report",
                    source: store_failure,
                }
                .into(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_failed",
                "database holds an unreadable host: bad certificate",
            ),
            (
                ServiceError::Io {
                    operation: "reading an uploaded artifact",
                    source: std::io::Error::other("disk gone"),
                }
                .into(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "io_failed",
                "reading an uploaded artifact: disk gone",
            ),
            (
                BodyError::TooLarge { limit: 10 }.into(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is over the limit of 10 bytes",
            ),
            (
                BodyError::TooSlow {
                    received: 1,
                    elapsed_ms: 2,
                    grace_s: 3,
                    min_rate: 4,
                    stall_s: 5,
                }
                .into(),
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body came too slowly: 1 bytes in 2 ms (a body may take 3 s plus 1 s per 4 bytes, and pause at most 5 s); the connection is closed",
            ),
            (
                BodyError::Unreadable("reset".into()).into(),
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                "the request body could not be read: reset",
            ),
        ];
        let mut answered = std::collections::BTreeSet::new();
        for (error, status, code, message) in table {
            let name = variant(&error);
            assert!(answered.insert(name), "{name} is in the table twice");
            let closes = matches!(error, ApiError::Body(_));
            let response = error.into_response();
            assert_eq!(response.status(), status, "{name}");
            let content_range = response.headers().get(header::CONTENT_RANGE).cloned();
            let connection = response.headers().get(header::CONNECTION).cloned();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("response body");
            let body: ErrorBody = serde_json::from_slice(&body).expect("an ErrorBody");
            assert_eq!((body.code.as_str(), body.error.as_str()), (code, message), "{name}");
            let expected_range = (name == "PastEnd").then(|| HeaderValue::from_static("bytes */10"));
            assert_eq!(content_range, expected_range, "{name}");
            assert_eq!(connection, closes.then(|| HeaderValue::from_static("close")), "{name}");
        }
        assert_eq!(answered.len(), 14, "every variant is in the table: {answered:?}");
    }
}
