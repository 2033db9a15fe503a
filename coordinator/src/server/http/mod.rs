//! The HTTPS server: TLS with optional client certificates on one port, the routes, and
//! the mapping of every service error to a status code and a JSON error body.
//!
//! Agents present the client certificate they got at join (or their latest renewal of
//! it); the identity it proves (host id + key) is attached to every request of that
//! connection. The join endpoint and the admin API work without one (the admin API needs
//! the bearer token instead). The server's own certificate sits behind
//! [`ServerCertificate`], which `serve` swaps when it renews it, without a restart.
//!
//! Where things are: this file has the table of routes (`api_routes`) and the layers
//! every request goes through; `agent` and `admin` the handlers (admin ones behind the
//! `Admin` extractor); `request` reading bodies (limits, pace, JSON) and path segments;
//! `error` the one `match` from an error to its status and `ErrorBody.code`; `listener`
//! the accept loop, timeouts and the unauthenticated budget; `tls` the certificates.
//!
//! Hostile clients are bounded here, before anything reaches the service:
//! - Every request body must arrive at a minimum pace (`request::BodyPace`): within a grace
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

mod admin;
mod agent;
mod error;
mod listener;
mod request;
mod tls;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use drover_protocol::api::ErrorBody;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use agent::MAX_JOIN_BODY;
pub use listener::{MAX_REQUEST_BUFFER, MAX_UNAUTHENTICATED_CONNECTIONS, SHUTDOWN_GRACE};
pub use request::{BODY_GRACE, BODY_MAX_STALL, BODY_MIN_RATE};
pub use tls::{ServerCertificate, tls_config, tls_config_with};

use crate::server::service::{Coordinator, ServiceError};
use error::ApiError;

/// Serves HTTPS on `listener` until `shutdown` turns true, then lets in-flight requests
/// finish for up to [`SHUTDOWN_GRACE`] (long-polls answer 304 at once).
pub async fn serve(
    listener: TcpListener,
    coordinator: Arc<Coordinator>,
    tls: Arc<ServerConfig>,
    shutdown: watch::Receiver<bool>,
) {
    let router = routes(AppState {
        coordinator: coordinator.clone(),
        shutdown: shutdown.clone(),
    });
    listener::accept_connections(listener, router, tls, &coordinator.metrics, shutdown).await;
}

/// Shared state of the routes.
#[derive(Clone, Debug)]
struct AppState {
    coordinator: Arc<Coordinator>,
    shutdown: watch::Receiver<bool>,
}

fn routes(state: AppState) -> Router {
    with_layers(api_routes(), state)
}

/// Every route of the API, before the layers that every request goes through.
fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(agent::metrics))
        .route("/v1/join", post(agent::join))
        .route("/v1/agent/manifest", get(agent::manifest))
        .route("/v1/agent/report", post(agent::report))
        .route("/v1/agent/certificate", post(agent::renew_certificate))
        .route("/v1/artifacts/{digest}", get(agent::artifact))
        .route("/v1/admin/tokens", post(admin::create_token))
        .route(
            "/v1/admin/admin-tokens",
            get(admin::list_admin_tokens).post(admin::create_admin_token),
        )
        .route(
            "/v1/admin/admin-tokens/{name}",
            axum::routing::delete(admin::revoke_admin_token),
        )
        .route("/v1/admin/hosts", get(admin::list_hosts))
        .route("/v1/admin/hosts/{id}", get(admin::show_host).delete(admin::remove_host))
        .route("/v1/admin/hosts/{id}/labels", put(admin::label_host))
        .route("/v1/admin/hosts/{id}/history", get(admin::host_history))
        .route("/v1/admin/groups", get(admin::list_groups).post(admin::put_group))
        .route("/v1/admin/groups/{name}", axum::routing::delete(admin::delete_group))
        .route("/v1/admin/artifacts", post(admin::upload_artifact))
        .route("/v1/admin/releases", post(admin::create_release))
        .route("/v1/admin/releases/{app}", get(admin::list_releases))
        .route(
            "/v1/admin/pins",
            get(admin::list_pins).put(admin::pin).delete(admin::unpin),
        )
        .route("/v1/admin/pins/{app}", get(admin::list_app_pins))
        .route("/v1/admin/holds", put(admin::hold).delete(admin::unhold))
        .route("/v1/admin/status", get(admin::status))
        .route("/v1/admin/coordinators", get(admin::coordinators))
        .route("/v1/admin/settings", get(admin::settings))
        .route("/v1/admin/rollouts", post(admin::start_rollout))
        .route("/v1/admin/rollouts/plan", post(admin::plan_rollout))
        .route("/v1/admin/rollouts/{app}", get(admin::rollout_status))
        .route("/v1/admin/rollouts/{app}/history", get(admin::rollout_history))
        .route("/v1/admin/history", get(admin::fleet_history))
        .route("/v1/admin/rollouts/{app}/{command}", post(admin::rollout_command))
        .fallback(|| async { ApiError::Service(ServiceError::Unknown("no_such_route", "no such endpoint".into())) })
}

/// The layers every request goes through, innermost first: a panicking handler becomes
/// a 500 ([`contain_panics`]) before the request is counted, so `/metrics` counts it as
/// an error; body limits are each route's own ([`BodyLimit`](request::BodyLimit)).
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

/// What the HTTP layer's tests share: a real coordinator over a scratch directory, and
/// its router called directly, without TLS.
#[cfg(test)]
mod testing {
    use std::sync::Arc;

    use axum::Router;
    use axum::body::Body;
    use axum::extract::{Extension, Request};
    use axum::http::{StatusCode, header};
    use axum::response::Response;
    use drover_protocol::api::ErrorBody;
    use tokio::sync::watch;
    use tower::Layer as _;

    use super::listener::{Admission, Connection};
    use super::{AppState, api_routes, with_layers};
    use crate::server::service::Coordinator;

    /// A scratch directory removed on drop.
    pub(super) struct Scratch(std::path::PathBuf);

    impl Scratch {
        pub(super) fn new(name: &str) -> Scratch {
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
    pub(super) async fn test_coordinator(scratch: &Scratch) -> crate::server::serve::Running {
        crate::server::serve::start(crate::server::serve::ServeOptions {
            listen: "127.0.0.1:0".parse().expect("address"),
            data_dir: scratch.0.join("data"),
            public_url: None,
            keys: None,
            manifest_ttl: drover_protocol::Duration::from_secs(3600),
            server_names: Vec::new(),
            host_certificate_validity: drover_protocol::Duration::from_secs(86_400),
            server_certificate_validity: drover_protocol::Duration::from_secs(86_400),
            database: None,
            artifact_registry: None,
        })
        .await
        .expect("coordinator starts")
    }

    /// The real routes and layers plus `extra` routes, as one connection without a
    /// client certificate sees them.
    pub(super) fn router_with(
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

    pub(super) async fn call<S>(router: &S, method: &str, path: &str, token: Option<&str>) -> (StatusCode, String)
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

    pub(super) fn error_code(body: &str) -> String {
        serde_json::from_str::<ErrorBody>(body)
            .map(|error| error.code)
            .unwrap_or_else(|_| format!("(not an ErrorBody: {body})"))
    }
}

#[cfg(test)]
mod tests {
    use super::admin::Admin;
    use super::testing::{Scratch, call, error_code, router_with, test_coordinator};
    use super::*;

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
}
