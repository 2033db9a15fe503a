//! The operator's routes, each behind the [`Admin`] extractor.

use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use drover_protocol::api::{
    AdminTokenRequest, ChangeReason, Group, HistoryQuery, HoldRequest, LabelRequest, MAX_JSON_BODY, Pin, PinRequest,
    ReleaseRequest, RolloutAbortRequest, RolloutCommandRequest, RolloutRequest, TokenName, TokenRequest, UnpinRequest,
};
use drover_protocol::{AppName, Digest, HostId};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::listener::Connection;
use super::request::{BODY_PACE, BodyLimit, paced, parse_path, read_json, read_optional_json};
use crate::server::service::{Operator, RolloutCommand, ServiceError};

/// The token of an `Authorization: Bearer <token>` header. The scheme is matched without
/// regard to case (RFC 9110 §11.1: `bearer`, `BEARER`), and any run of spaces or tabs may
/// separate it from the token.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
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
pub(super) struct Admin(Operator);

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

pub(super) async fn create_admin_token(
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

pub(super) async fn list_admin_tokens(State(state): State<AppState>, _: Admin) -> ApiResult<Response> {
    Ok(Json(state.coordinator.admin_tokens()).into_response())
}

pub(super) async fn revoke_admin_token(
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

pub(super) async fn create_token(
    State(state): State<AppState>,
    Admin(operator): Admin,
    body: Body,
) -> ApiResult<Response> {
    let request: TokenRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    Ok((
        StatusCode::CREATED,
        Json(state.coordinator.create_token(request, &operator).await?),
    )
        .into_response())
}

pub(super) async fn list_hosts(State(state): State<AppState>, _: Admin) -> ApiResult<Response> {
    Ok(Json(state.coordinator.hosts().await).into_response())
}

pub(super) async fn show_host(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> ApiResult<Response> {
    let id: HostId = parse_path(&id, "bad_host_id")?;
    Ok(Json(state.coordinator.host(&id).await?).into_response())
}

pub(super) async fn host_history(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id: HostId = parse_path(&id, "bad_host_id")?;
    Ok(Json(state.coordinator.host_history(&id).await?).into_response())
}

pub(super) async fn remove_host(
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

pub(super) async fn label_host(
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

pub(super) async fn list_groups(State(state): State<AppState>, _: Admin) -> ApiResult<Response> {
    Ok(Json(state.coordinator.groups().await).into_response())
}

pub(super) async fn put_group(
    State(state): State<AppState>,
    Admin(operator): Admin,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    let reason = change_reason(query.as_deref())?;
    let group: Group = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    Ok(Json(state.coordinator.put_group(group, &operator, reason.as_deref()).await?).into_response())
}

pub(super) async fn delete_group(
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
pub(super) async fn fleet_history(
    State(state): State<AppState>,
    _: Admin,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let query = HistoryQuery::from_query(query.as_deref())
        .map_err(|error| ServiceError::Invalid("bad_history_query", error))?;
    Ok(Json(state.coordinator.history(&query).await?).into_response())
}

/// `POST /v1/admin/artifacts`: the body is the artifact, streamed to disk. The optional
/// `X-Drover-Digest` header names the digest the client expects.
pub(super) async fn upload_artifact(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    state.coordinator.accepts_uploads()?;
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

pub(super) async fn create_release(State(state): State<AppState>, _: Admin, body: Body) -> ApiResult<Response> {
    let request: ReleaseRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    Ok((
        StatusCode::CREATED,
        Json(state.coordinator.create_release(request).await?),
    )
        .into_response())
}

pub(super) async fn list_releases(
    State(state): State<AppState>,
    _: Admin,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    let app: AppName = parse_path(&app, "bad_app_name")?;
    Ok(Json(state.coordinator.releases(&app).await).into_response())
}

pub(super) async fn pin(State(state): State<AppState>, Admin(operator): Admin, body: Body) -> ApiResult<Response> {
    let request: PinRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    let pin = Pin {
        app: request.app,
        version: request.version,
        scope: request.scope,
    };
    let reason = request.reason.as_deref();
    Ok(Json(state.coordinator.pin(pin, &operator, reason).await?).into_response())
}

pub(super) async fn unpin(State(state): State<AppState>, Admin(operator): Admin, body: Body) -> ApiResult<Response> {
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

pub(super) async fn hold(State(state): State<AppState>, Admin(operator): Admin, body: Body) -> ApiResult<Response> {
    let request: HoldRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    let reason = request.reason.as_deref();
    Ok(Json(state.coordinator.hold(request.scope, true, &operator, reason).await?).into_response())
}

pub(super) async fn unhold(State(state): State<AppState>, Admin(operator): Admin, body: Body) -> ApiResult<Response> {
    let request: HoldRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    let reason = request.reason.as_deref();
    Ok(Json(state.coordinator.hold(request.scope, false, &operator, reason).await?).into_response())
}

/// `GET /v1/admin/pins`: every app's pins and the holds.
pub(super) async fn list_pins(State(state): State<AppState>, _: Admin) -> ApiResult<Response> {
    Ok(Json(state.coordinator.pins(None).await?).into_response())
}

/// `GET /v1/admin/pins/{app}`: one app's pins and the holds.
pub(super) async fn list_app_pins(
    State(state): State<AppState>,
    _: Admin,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    let app: AppName = parse_path(&app, "bad_app_name")?;
    Ok(Json(state.coordinator.pins(Some(&app)).await?).into_response())
}

pub(super) async fn status(State(state): State<AppState>, _: Admin) -> ApiResult<Response> {
    Ok(Json(state.coordinator.status().await).into_response())
}

pub(super) async fn settings(State(state): State<AppState>, _: Admin) -> ApiResult<Response> {
    Ok(Json(state.coordinator.settings()).into_response())
}

pub(super) async fn coordinators(State(state): State<AppState>, _: Admin) -> ApiResult<Response> {
    Ok(Json(state.coordinator.coordinators().await?).into_response())
}

pub(super) async fn plan_rollout(State(state): State<AppState>, _: Admin, body: Body) -> ApiResult<Response> {
    let request: RolloutRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    Ok(Json(state.coordinator.plan_rollout(&request).await?).into_response())
}

pub(super) async fn start_rollout(
    State(state): State<AppState>,
    Admin(operator): Admin,
    body: Body,
) -> ApiResult<Response> {
    let request: RolloutRequest = read_json(body, BodyLimit::authenticated(MAX_JSON_BODY)).await?;
    Ok((
        StatusCode::CREATED,
        Json(state.coordinator.start_rollout(&request, &operator).await?),
    )
        .into_response())
}

pub(super) async fn rollout_status(
    State(state): State<AppState>,
    _: Admin,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    let app: AppName = parse_path(&app, "bad_app_name")?;
    Ok(Json(state.coordinator.rollout_status(&app).await?).into_response())
}

pub(super) async fn rollout_history(
    State(state): State<AppState>,
    _: Admin,
    Path(app): Path<String>,
) -> ApiResult<Response> {
    let app: AppName = parse_path(&app, "bad_app_name")?;
    Ok(Json(state.coordinator.rollout_history(&app).await?).into_response())
}

/// `POST /v1/admin/rollouts/{app}/pause|resume|approve|abort`; the body (optional) has
/// the reason, and for abort `rollback`.
pub(super) async fn rollout_command(
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
    use axum::Router;

    use crate::server::http::listener::Unauthenticated;
    use crate::server::http::testing::{Scratch, call, error_code, router_with, test_coordinator};

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
}
