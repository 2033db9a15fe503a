//! The routes agents (and joining hosts) call: join, the manifest long-poll, reports,
//! certificate renewal, artifacts; and `/metrics`.

use std::time::Duration as StdDuration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use drover_protocol::api::{JoinRequest, MAX_WAIT_SECONDS, RenewRequest, RenewResponse};
use drover_protocol::report::MAX_REPORT_BYTES;
use drover_protocol::{Digest, HostReport};

use super::AppState;
use super::error::ApiResult;
use super::listener::Connection;
use super::request::{BodyLimit, parse_path, read_json};
use crate::server::service::ServiceError;

/// The largest join body (a token, a CSR and a few facts are ~2 KiB). The join is the
/// only route that reads a body from an unauthenticated client.
pub const MAX_JOIN_BODY: usize = 64 * 1024;

pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let now = drover_protocol::Timestamp::from_system(std::time::SystemTime::now());
    let coordinator = &state.coordinator;
    let text = coordinator
        .metrics
        .render(coordinator.host_count(), coordinator.certificate_expiry(now), now);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

pub(super) async fn join(
    State(state): State<AppState>,
    body: Body,
) -> ApiResult<Json<drover_protocol::api::JoinResponse>> {
    let request: JoinRequest = read_json(body, BodyLimit::anonymous(MAX_JOIN_BODY)).await?;
    Ok(Json(state.coordinator.join(request).await?))
}

/// `GET /v1/agent/manifest[?wait=SECONDS]` with `If-None-Match`.
pub(super) async fn manifest(
    State(state): State<AppState>,
    Extension(connection): Extension<Connection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let slot = state
        .coordinator
        .host_slot_current(connection.identity.as_ref())
        .await?;
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

pub(super) async fn report(
    State(state): State<AppState>,
    Extension(connection): Extension<Connection>,
    body: Body,
) -> ApiResult<StatusCode> {
    state
        .coordinator
        .host_slot_current(connection.identity.as_ref())
        .await?;
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
pub(super) async fn renew_certificate(
    State(state): State<AppState>,
    Extension(connection): Extension<Connection>,
    body: Body,
) -> ApiResult<Json<RenewResponse>> {
    state
        .coordinator
        .host_slot_current(connection.identity.as_ref())
        .await?;
    let identity = connection.identity.as_ref().expect("checked by host_slot");
    let request: RenewRequest = read_json(body, BodyLimit::authenticated(MAX_JOIN_BODY)).await?;
    Ok(Json(
        state.coordinator.renew_certificate(identity, &request.csr_pem).await?,
    ))
}

/// `GET /v1/artifacts/{digest}` with `Range` support, for enrolled hosts.
pub(super) async fn artifact(
    State(state): State<AppState>,
    Extension(connection): Extension<Connection>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let slot = state
        .coordinator
        .host_slot_current(connection.identity.as_ref())
        .await?;
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
