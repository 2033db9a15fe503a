//! The HTTPS server: TLS with optional client certificates on one port, the routes, and
//! the mapping of every service error to a status code and a JSON error body.
//!
//! Agents present the client certificate they got at join; the identity it proves (host
//! id + certificate fingerprint) is attached to every request of that connection. The
//! join endpoint and the admin API work without one (the admin API needs the bearer
//! token instead).

use std::sync::Arc;
use std::time::Duration as StdDuration;

use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use drover_protocol::api::{
    AdminTokenRequest, ErrorBody, Group, HoldRequest, JoinRequest, LabelRequest, MAX_JSON_BODY, MAX_WAIT_SECONDS, Pin,
    PinRequest, ReleaseRequest, RolloutAbortRequest, RolloutCommandRequest, RolloutRequest, TokenName, TokenRequest,
    UnpinRequest,
};
use drover_protocol::report::MAX_REPORT_BYTES;
use drover_protocol::{AppName, Digest, HostId, HostReport};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::Layer as _;

use crate::pki::PeerIdentity;
use crate::service::{Coordinator, Operator, RolloutCommand, ServiceError};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// How long in-flight requests get to finish after SIGTERM.
pub const SHUTDOWN_GRACE: StdDuration = StdDuration::from_secs(10);

/// What a connection proved at the TLS handshake.
#[derive(Clone, Debug)]
struct Connection {
    identity: Option<PeerIdentity>,
}

/// Shared state of the routes.
#[derive(Clone, Debug)]
struct AppState {
    coordinator: Arc<Coordinator>,
    shutdown: watch::Receiver<bool>,
}

/// Builds the TLS configuration: the server certificate, and client certificates
/// verified against the coordinator's CA when presented.
pub fn tls_config(ca_der: &[u8], cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|error| format!("CA certificate: {error}"))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|error| format!("client verifier: {error}"))?;
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("server certificate: {error}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|error| format!("server key: {error}"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS versions: {error}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|error| format!("server certificate: {error}"))?;
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
    let router = routes(AppState {
        coordinator,
        shutdown: shutdown.clone(),
    });
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let router = router.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await else {
                        return;
                    };
                    let identity = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| PeerIdentity::from_certificate(leaf));
                    // The identity wraps the whole router (one small clone per request);
                    // `Router::layer` would rebuild every route per connection, which
                    // was ~22 KiB of each held long-poll.
                    let service = TowerToHyperService::new(Extension(Connection { identity }).layer(router));
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(StdDuration::from_secs(30))
                        .serve_connection(TokioIo::new(tls), service);
                    let _ = watcher.watch(connection).await;
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}

fn routes(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/join", post(join))
        .route("/v1/agent/manifest", get(manifest))
        .route("/v1/agent/report", post(report))
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
        .route("/v1/admin/groups", get(list_groups).post(put_group))
        .route("/v1/admin/groups/{name}", axum::routing::delete(delete_group))
        .route("/v1/admin/artifacts", post(upload_artifact))
        .route("/v1/admin/releases", post(create_release))
        .route("/v1/admin/releases/{app}", get(list_releases))
        .route("/v1/admin/pins", put(pin).delete(unpin))
        .route("/v1/admin/holds", put(hold).delete(unhold))
        .route("/v1/admin/status", get(status))
        .route("/v1/admin/rollouts", post(start_rollout))
        .route("/v1/admin/rollouts/plan", post(plan_rollout))
        .route("/v1/admin/rollouts/{app}", get(rollout_status))
        .route("/v1/admin/rollouts/{app}/history", get(rollout_history))
        .route("/v1/admin/rollouts/{app}/{command}", post(rollout_command))
        .fallback(|| async { ApiError(ServiceError::NotFound("no_such_route", "no such endpoint".into())) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn count_requests(State(state): State<AppState>, request: Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let metrics = &state.coordinator.metrics;
    metrics.requests.add(1);
    if response.status().is_client_error() || response.status().is_server_error() {
        metrics.request_errors.add(1);
    }
    response
}

/// A service error as an HTTP answer.
struct ApiError(ServiceError);

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> ApiError {
        ApiError(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self.0 {
            ServiceError::BadRequest(code, _) => (StatusCode::BAD_REQUEST, *code),
            ServiceError::Unauthorized(code, _) => (StatusCode::UNAUTHORIZED, *code),
            ServiceError::Forbidden(code, _) => (StatusCode::FORBIDDEN, *code),
            ServiceError::NotFound(code, _) => (StatusCode::NOT_FOUND, *code),
            ServiceError::Conflict(code, _) => (StatusCode::CONFLICT, *code),
            ServiceError::Gone(code, _) => (StatusCode::GONE, *code),
            ServiceError::TooLarge(code, _) => (StatusCode::PAYLOAD_TOO_LARGE, *code),
            ServiceError::Unavailable(code, _) => (StatusCode::SERVICE_UNAVAILABLE, *code),
            ServiceError::RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable"),
            ServiceError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_failed"),
            ServiceError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "io_failed"),
        };
        // 503 is expected back-pressure (counted in /metrics); logging each one would turn
        // an overload into a log storm.
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self.0, "request failed");
        }
        let body = ErrorBody {
            code: code.to_owned(),
            error: self.0.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        if let ServiceError::RangeNotSatisfiable { size, .. } = &self.0
            && let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// How much of an oversized body is read and discarded before answering 413, so that
/// ordinary clients, which send the whole body before reading the answer, see the 413
/// instead of a broken pipe. Beyond this the connection is simply closed.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// Reads an optional JSON body: an empty body is the type's default.
async fn read_optional_json<T: DeserializeOwned + Default>(body: Body, limit: usize) -> Result<T, ServiceError> {
    let bytes = read_body(body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(&bytes)
}

/// Reads a JSON body of at most `limit` bytes: 413 over it, 400 when malformed.
async fn read_json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ServiceError> {
    parse_json(&read_body(body, limit).await?)
}

async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, ServiceError> {
    use futures_util::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            ServiceError::BadRequest(
                "body_unreadable",
                format!("the request body could not be read: {error}"),
            )
        })?;
        total += chunk.len();
        if total <= limit {
            bytes.extend_from_slice(&chunk);
        } else if total > DRAIN_LIMIT {
            break;
        }
    }
    if total > limit {
        return Err(ServiceError::TooLarge(
            "body_too_large",
            format!("the request body is over the limit of {limit} bytes"),
        ));
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
        ServiceError::BadRequest("bad_json", format!("invalid request body: {detail}"))
    })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Checks the request's admin token; returns whose it is, the `who` of what it changes.
async fn admin(state: &AppState, headers: &HeaderMap) -> Result<Operator, ServiceError> {
    state.coordinator.check_admin(bearer(headers)).await
}

fn parse_path<T: std::str::FromStr>(text: &str, what: &'static str) -> Result<T, ServiceError>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|error: T::Err| ServiceError::BadRequest(what, error.to_string()))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state.coordinator.metrics.render(state.coordinator.host_count());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn join(State(state): State<AppState>, body: Body) -> ApiResult<Json<drover_protocol::api::JoinResponse>> {
    let request: JoinRequest = read_json(body, MAX_JSON_BODY).await?;
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
                    return Err(ServiceError::Forbidden("host_removed", "this host was removed or re-joined while waiting".into()).into());
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
                        ServiceError::BadRequest("bad_wait", format!("wait must be 0 to {MAX_WAIT_SECONDS} seconds"))
                    })?;
            }
            _ => {
                return Err(ServiceError::BadRequest(
                    "bad_query",
                    "the only query parameter is wait=SECONDS".into(),
                ));
            }
        }
    }
    Ok(wait)
}

fn manifest_response(published: &crate::service::Published) -> Response {
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
    let report: HostReport = read_json(body, MAX_REPORT_BYTES).await?;
    state.coordinator.report(&host, report)?;
    Ok(StatusCode::NO_CONTENT)
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
        return Err(ServiceError::Forbidden(
            "artifact_not_in_manifest",
            format!("artifact {digest} is not in this host's manifest"),
        )
        .into());
    }
    let path = crate::blobs::path_of(&state.coordinator.data().blobs(), &digest);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(ServiceError::NotFound("artifact_not_found", format!("no artifact {digest}")).into());
        }
        Err(source) => {
            return Err(ServiceError::Io {
                operation: "opening artifact",
                source,
            }
            .into());
        }
    };
    let size = file
        .metadata()
        .await
        .map_err(|source| ServiceError::Io {
            operation: "reading artifact",
            source,
        })?
        .len();
    let range_header = headers.get(header::RANGE).and_then(|value| value.to_str().ok());
    let range = crate::blobs::resolve_range(range_header, size)?;
    let (status, start, length) = match range {
        Some(range) => (StatusCode::PARTIAL_CONTENT, range.start, range.end - range.start + 1),
        None => (StatusCode::OK, 0, size),
    };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|source| ServiceError::Io {
            operation: "seeking artifact",
            source,
        })?;
    state
        .coordinator
        .metrics
        .artifact_bytes_served
        .add(usize::try_from(length).unwrap_or(usize::MAX));
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(length), 256 * 1024);
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(range) = range
        && let Ok(value) = HeaderValue::from_str(&format!("bytes {}-{}/{size}", range.start, range.end))
    {
        headers.insert(header::CONTENT_RANGE, value);
    }
    Ok(response)
}

async fn create_admin_token(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let operator = admin(&state, &headers).await?;
    let request: AdminTokenRequest = read_json(body, MAX_JSON_BODY).await?;
    Ok((
        StatusCode::CREATED,
        Json(state.coordinator.create_admin_token(request, &operator).await?),
    )
        .into_response())
}

async fn list_admin_tokens(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    admin(&state, &headers).await?;
    Ok(Json(state.coordinator.admin_tokens()).into_response())
}

async fn revoke_admin_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let operator = admin(&state, &headers).await?;
    let name: TokenName = parse_path(&name, "bad_token_name")?;
    Ok(Json(state.coordinator.revoke_admin_token(&name, &operator).await?).into_response())
}

async fn create_token(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    admin(&state, &headers).await?;
    let request: TokenRequest = read_json(body, MAX_JSON_BODY).await?;
    Ok((
        StatusCode::CREATED,
        Json(state.coordinator.create_token(request).await?),
    )
        .into_response())
}

async fn list_hosts(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    admin(&state, &headers).await?;
    Ok(Json(state.coordinator.hosts().await).into_response())
}

async fn show_host(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Response> {
    admin(&state, &headers).await?;
    let id: HostId = parse_path(&id, "bad_host_id")?;
    Ok(Json(state.coordinator.host(&id).await?).into_response())
}

async fn remove_host(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let operator = admin(&state, &headers).await?;
    let id: HostId = parse_path(&id, "bad_host_id")?;
    state.coordinator.remove_host(&id, &operator).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn label_host(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    admin(&state, &headers).await?;
    let id: HostId = parse_path(&id, "bad_host_id")?;
    let request: LabelRequest = read_json(body, MAX_JSON_BODY).await?;
    Ok(Json(state.coordinator.label_host(&id, request.set, request.remove).await?).into_response())
}

async fn list_groups(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    admin(&state, &headers).await?;
    Ok(Json(state.coordinator.groups().await).into_response())
}

async fn put_group(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    admin(&state, &headers).await?;
    let group: Group = read_json(body, MAX_JSON_BODY).await?;
    Ok(Json(state.coordinator.put_group(group).await?).into_response())
}

async fn delete_group(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    admin(&state, &headers).await?;
    state.coordinator.delete_group(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/admin/artifacts`: the body is the artifact, streamed to disk. The optional
/// `X-Drover-Digest` header names the digest the client expects.
async fn upload_artifact(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    admin(&state, &headers).await?;
    let expected = match headers.get("x-drover-digest").map(HeaderValue::to_str) {
        None => None,
        Some(Ok(text)) => Some(parse_path::<Digest>(text, "bad_digest")?),
        Some(Err(_)) => {
            return Err(ServiceError::BadRequest("bad_digest", "X-Drover-Digest is not text".into()).into());
        }
    };
    let stream = body.into_data_stream();
    let info = crate::blobs::put(&state.coordinator.data().blobs(), stream, expected.as_ref()).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn create_release(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    admin(&state, &headers).await?;
    let request: ReleaseRequest = read_json(body, MAX_JSON_BODY).await?;
    Ok((
        StatusCode::CREATED,
        Json(state.coordinator.create_release(request).await?),
    )
        .into_response())
}

async fn list_releases(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    admin(&state, &headers).await?;
    let app: AppName = parse_path(&app, "bad_app_name")?;
    Ok(Json(state.coordinator.releases(&app).await).into_response())
}

async fn pin(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let operator = admin(&state, &headers).await?;
    let request: PinRequest = read_json(body, MAX_JSON_BODY).await?;
    let pin = Pin {
        app: request.app,
        version: request.version,
        scope: request.scope,
    };
    let reason = request.reason.as_deref();
    Ok(Json(state.coordinator.pin(pin, &operator, reason).await?).into_response())
}

async fn unpin(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let operator = admin(&state, &headers).await?;
    let request: UnpinRequest = read_json(body, MAX_JSON_BODY).await?;
    let reason = request.reason.as_deref();
    Ok(Json(
        state
            .coordinator
            .unpin(request.app, request.scope, &operator, reason)
            .await?,
    )
    .into_response())
}

async fn hold(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let operator = admin(&state, &headers).await?;
    let request: HoldRequest = read_json(body, MAX_JSON_BODY).await?;
    let reason = request.reason.as_deref();
    Ok(Json(state.coordinator.hold(request.scope, true, &operator, reason).await?).into_response())
}

async fn unhold(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let operator = admin(&state, &headers).await?;
    let request: HoldRequest = read_json(body, MAX_JSON_BODY).await?;
    let reason = request.reason.as_deref();
    Ok(Json(state.coordinator.hold(request.scope, false, &operator, reason).await?).into_response())
}

async fn status(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    admin(&state, &headers).await?;
    Ok(Json(state.coordinator.status().await).into_response())
}

async fn plan_rollout(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    admin(&state, &headers).await?;
    let request: RolloutRequest = read_json(body, MAX_JSON_BODY).await?;
    Ok(Json(state.coordinator.plan_rollout(&request).await?).into_response())
}

async fn start_rollout(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let operator = admin(&state, &headers).await?;
    let request: RolloutRequest = read_json(body, MAX_JSON_BODY).await?;
    Ok((
        StatusCode::CREATED,
        Json(state.coordinator.start_rollout(&request, &operator).await?),
    )
        .into_response())
}

async fn rollout_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    admin(&state, &headers).await?;
    let app: AppName = parse_path(&app, "bad_app_name")?;
    Ok(Json(state.coordinator.rollout_status(&app).await?).into_response())
}

async fn rollout_history(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    admin(&state, &headers).await?;
    let app: AppName = parse_path(&app, "bad_app_name")?;
    Ok(Json(state.coordinator.rollout_history(&app).await?).into_response())
}

/// `POST /v1/admin/rollouts/{app}/pause|resume|approve|abort`; the body (optional) has
/// the reason, and for abort `rollback`.
async fn rollout_command(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((app, command)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    let operator = admin(&state, &headers).await?;
    let app: AppName = parse_path(&app, "bad_app_name")?;
    let (command, reason) = match command.as_str() {
        "abort" => {
            let request: RolloutAbortRequest = read_optional_json(body, MAX_JSON_BODY).await?;
            (
                RolloutCommand::Abort {
                    rollback: request.rollback,
                },
                request.reason,
            )
        }
        "pause" | "resume" | "approve" => {
            let request: RolloutCommandRequest = read_optional_json(body, MAX_JSON_BODY).await?;
            let command = match command.as_str() {
                "pause" => RolloutCommand::Pause,
                "resume" => RolloutCommand::Resume,
                _ => RolloutCommand::Approve,
            };
            (command, request.reason)
        }
        _ => {
            return Err(ServiceError::NotFound(
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
