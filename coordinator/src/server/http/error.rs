//! What a route answers instead of success: [`ApiError`], and the one `match` from each
//! error to its status and `ErrorBody.code`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use drover_protocol::api::ErrorBody;

use crate::server::blobs::BlobError;
use crate::server::service::ServiceError;
use crate::server::store::StoreError;

/// Why a request body was not read.
#[derive(Clone, Debug, thiserror::Error)]
pub(super) enum BodyError {
    /// Over the route's limit (declared in Content-Length or counted while reading).
    #[error("the request body is over the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// Slower than [`BodyPace`](super::request::BodyPace) allows.
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
pub(super) enum ApiError {
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
            // Another replica changed the fleet model first: nothing was written, and the
            // same request succeeds when sent again.
            ApiError::Service(ServiceError::Store {
                source: StoreError::Stale,
                ..
            }) => (StatusCode::SERVICE_UNAVAILABLE, "model_changed"),
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

pub(super) type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

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
