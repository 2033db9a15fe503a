//! The coordinators this agent knows (`coordinators = [...]` in `agent.toml`) and which
//! one it talks to now. Replicas over one database (issue 16) share one CA, so the one
//! TLS configuration and host certificate serve them all; one load-balanced URL is a
//! list of one.
//!
//! The rule ([`unreachable_error`], [`unreachable_status`]): a request that got no
//! answer (connection refused or reset, a timeout, a failed TLS handshake) or a gateway
//! answer (502, 503, 504) moves the agent to the next URL in the list, round robin; every
//! other answer, 4xx included, is the coordinator speaking and moves nothing. The agent
//! stays on a URL while it answers ("sticky"): there is no preference to return to. The
//! callers keep their jittered back-off ([`crate::backoff`]) between attempts, so a fleet
//! that lost one replica spreads over the next one instead of arriving at once.
//!
//! Every task (poller, reporter, renewer, downloads) shares one [`Coordinators`]. Each
//! request remembers which URL it went to ([`Attempt`]) and a failure moves the agent only
//! if that URL is still the current one: two tasks failing on the same coordinator move it
//! one step, not two.
//!
//! The current URL is kept in `<state>/coordinator` for `drover-agent status`, and a
//! restart begins there when it is still in the list.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The file in the state directory naming the coordinator in use.
pub const CURRENT_FILE: &str = "coordinator";

/// One request's target: the URL and which entry of the list it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The index in the list when the request was made.
    pub index: usize,
    /// The full URL (the coordinator's URL and the request path).
    pub url: String,
}

/// The list and the current entry.
#[derive(Debug)]
pub struct Coordinators {
    urls: Vec<String>,
    current: AtomicUsize,
    /// Where the current URL is kept (none in unit tests).
    current_file: Option<PathBuf>,
}

/// Whether a request that failed with `error` (no HTTP answer) counts as the coordinator
/// being unreachable: any transport failure does (connect, TLS handshake, reset, timeout,
/// a body cut off); a request the client could not even build does not.
pub fn unreachable_error(error: &reqwest::Error) -> bool {
    !(error.is_builder() || error.is_redirect() || error.is_status() || error.is_decode())
}

/// Whether an HTTP answer says the coordinator behind it is unreachable: the gateway
/// answers of a load balancer or proxy (502, 503, 504). Any other answer, a 4xx above all,
/// is the coordinator's own and another replica would say the same. Pure.
pub fn unreachable_status(status: u16) -> bool {
    matches!(status, 502..=504)
}

impl Coordinators {
    /// The list (validated: non-empty, no duplicates) starting at the entry named in
    /// `state_dir`'s [`CURRENT_FILE`] if it is in the list, else at the first.
    pub fn open(urls: Vec<String>, state_dir: &Path) -> Coordinators {
        let current_file = state_dir.join(CURRENT_FILE);
        let start = kept_current(&urls, &current_file).unwrap_or(0);
        let coordinators = Coordinators {
            urls,
            current: AtomicUsize::new(start),
            current_file: Some(current_file),
        };
        coordinators.keep_current();
        coordinators
    }

    /// The list starting at its first entry, remembered nowhere. `urls` must not be empty.
    pub fn new(urls: Vec<String>) -> Coordinators {
        assert!(!urls.is_empty(), "a coordinator list has at least one URL");
        Coordinators {
            urls,
            current: AtomicUsize::new(0),
            current_file: None,
        }
    }

    /// Every URL, in the configured order.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The URL in use now.
    pub fn current(&self) -> &str {
        &self.urls[self.current.load(Ordering::Acquire) % self.urls.len()]
    }

    /// A request to `path` (`/v1/agent/...`) on the current coordinator.
    pub fn attempt(&self, path: &str) -> Attempt {
        let index = self.current.load(Ordering::Acquire) % self.urls.len();
        Attempt {
            index,
            url: format!("{}{path}", self.urls[index]),
        }
    }

    /// Notes that `attempt` found its coordinator unreachable (`cause` says how): moves to
    /// the next URL, unless another task already moved on from it or the list has one
    /// URL. Returns the URL moved to, if this call moved.
    pub fn failed(&self, attempt: &Attempt, cause: &str) -> Option<&str> {
        if self.urls.len() < 2 {
            return None;
        }
        let next = (attempt.index + 1) % self.urls.len();
        self.current
            .compare_exchange(attempt.index, next, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        tracing::info!(
            "coordinator {} unreachable ({cause}); trying {}",
            self.urls[attempt.index],
            self.urls[next]
        );
        self.keep_current();
        Some(&self.urls[next])
    }

    /// Applies the rule to a request's outcome: a transport error or a gateway answer
    /// moves on ([`Coordinators::failed`]). For callers that hold a `reqwest` result.
    pub fn observe(&self, attempt: &Attempt, outcome: Result<reqwest::StatusCode, &reqwest::Error>) {
        match outcome {
            Ok(status) if unreachable_status(status.as_u16()) => {
                self.failed(attempt, &format!("HTTP {status}"));
            }
            Ok(_) => {}
            Err(error) if unreachable_error(error) => {
                self.failed(attempt, &crate::error::chain(error));
            }
            Err(_) => {}
        }
    }

    /// An artifact URL whose origin is one of the coordinators, on the current one
    /// instead (same path): a manifest names the replica that rendered it, and any
    /// replica serves the same blobs. `None` for URLs elsewhere, which must not get the
    /// host certificate.
    pub fn artifact_attempt(&self, url: &str) -> Option<Attempt> {
        let rest = self.urls.iter().find_map(|base| {
            url.strip_prefix(base.as_str())
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        })?;
        Some(self.attempt(rest))
    }

    /// Writes the current URL to the state directory (see [`remember`]).
    fn keep_current(&self) {
        if let Some(path) = &self.current_file {
            keep(path, self.current());
        }
    }
}

/// Notes `url` as the coordinator in use in `state_dir` (`join` names the one that
/// answered), where `drover-agent status` reads it and the next start begins.
pub fn remember(state_dir: &Path, url: &str) {
    keep(&state_dir.join(CURRENT_FILE), url);
}

/// Writes `url` to `path` unless it holds it already. A failed write is logged and
/// changes nothing else: the file only says where to begin and what `status` shows.
fn keep(path: &Path, url: &str) {
    let current = format!("{url}\n");
    if std::fs::read_to_string(path).is_ok_and(|kept| kept == current) {
        return;
    }
    if let Err(error) = drover_protocol::keyfile::write_atomic(path, current.as_bytes(), 0o644) {
        tracing::warn!("writing {}: {error}", path.display());
    }
}

/// Whether a download from a coordinator failed because the coordinator is unreachable:
/// no connection or no answer, or a gateway answer. A download that stalls or crawls has
/// a coordinator that answers (the partial file resumes); a wrong digest is the content's
/// fault, not the replica's.
pub fn unreachable_download(error: &crate::fetch::FetchError) -> bool {
    use crate::fetch::FetchError;
    match error {
        FetchError::Request { .. } | FetchError::NoAnswer { .. } => true,
        FetchError::Status { status, .. } => unreachable_status(*status),
        _ => false,
    }
}

/// The index of the URL kept in `path`, if the file names one of `urls`.
fn kept_current(urls: &[String], path: &Path) -> Option<usize> {
    let kept = std::fs::read_to_string(path).ok()?;
    urls.iter().position(|url| url == kept.trim())
}

/// The coordinator in use as the last run of the agent left it: the kept URL if it is
/// in `urls`, else the first of `urls`. For `drover-agent status`, which reads files only.
pub fn current_of(urls: &[String], state_dir: &Path) -> Option<String> {
    let index = kept_current(urls, &state_dir.join(CURRENT_FILE)).unwrap_or(0);
    urls.get(index).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Coordinators {
        Coordinators::new(vec![
            "https://a:8443".into(),
            "https://b:8443".into(),
            "https://c:8443".into(),
        ])
    }

    #[test]
    fn connection_failures_and_gateway_answers_move_on_and_other_answers_do_not() {
        for status in [502, 503, 504] {
            assert!(unreachable_status(status), "{status}");
        }
        for status in [200, 204, 304, 400, 401, 403, 404, 409, 413, 429, 500, 501, 505] {
            assert!(!unreachable_status(status), "{status}");
        }
        let coordinators = three();
        let attempt = coordinators.attempt("/v1/agent/report");
        coordinators.observe(&attempt, Ok(reqwest::StatusCode::FORBIDDEN));
        coordinators.observe(&attempt, Ok(reqwest::StatusCode::NOT_FOUND));
        assert_eq!(
            coordinators.current(),
            "https://a:8443",
            "a 4xx is the coordinator speaking"
        );
        coordinators.observe(&attempt, Ok(reqwest::StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(coordinators.current(), "https://b:8443");
    }

    #[tokio::test]
    async fn a_refused_connection_moves_on() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead = listener.local_addr().expect("address");
        drop(listener);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let error = reqwest::Client::new()
            .get(format!("http://{dead}/"))
            .send()
            .await
            .expect_err("nothing listens");
        assert!(unreachable_error(&error), "{error:?}");
        let coordinators = three();
        let attempt = coordinators.attempt("/x");
        coordinators.observe(&attempt, Err(&error));
        assert_eq!(coordinators.current(), "https://b:8443");
    }

    #[test]
    fn the_agent_stays_where_it_is_answered_and_wraps_round_the_list() {
        let coordinators = three();
        let first = coordinators.attempt("/v1/agent/manifest");
        assert_eq!(first.url, "https://a:8443/v1/agent/manifest");
        assert_eq!(coordinators.failed(&first, "refused"), Some("https://b:8443"));
        // Sticky: nothing but a failure moves it, however many requests succeed.
        for _ in 0..10 {
            assert_eq!(coordinators.attempt("/x").url, "https://b:8443/x");
        }
        let second = coordinators.attempt("/x");
        coordinators.failed(&second, "refused");
        let third = coordinators.attempt("/x");
        assert_eq!(coordinators.failed(&third, "refused"), Some("https://a:8443"), "wraps");
        assert_eq!(coordinators.current(), "https://a:8443");
    }

    #[test]
    fn two_tasks_failing_on_one_coordinator_move_the_agent_one_step() {
        let coordinators = three();
        let poll = coordinators.attempt("/v1/agent/manifest");
        let report = coordinators.attempt("/v1/agent/report");
        assert!(coordinators.failed(&poll, "reset").is_some());
        assert_eq!(coordinators.failed(&report, "reset"), None, "already moved on from a");
        assert_eq!(coordinators.current(), "https://b:8443");
    }

    #[test]
    fn one_url_never_moves() {
        let coordinators = Coordinators::new(vec!["https://lb.example".into()]);
        let attempt = coordinators.attempt("/x");
        assert_eq!(coordinators.failed(&attempt, "refused"), None);
        assert_eq!(coordinators.current(), "https://lb.example");
    }

    #[test]
    fn artifacts_on_any_coordinator_come_from_the_current_one_and_others_stay_where_they_are() {
        let coordinators = three();
        let attempt = coordinators.attempt("/x");
        coordinators.failed(&attempt, "refused");
        let url = |artifact: &str| coordinators.artifact_attempt(artifact).map(|attempt| attempt.url);
        assert_eq!(
            url("https://a:8443/v1/agent/artifacts/sha256:ab").as_deref(),
            Some("https://b:8443/v1/agent/artifacts/sha256:ab")
        );
        assert_eq!(
            url("https://c:8443/v1/agent/artifacts/sha256:ab").as_deref(),
            Some("https://b:8443/v1/agent/artifacts/sha256:ab")
        );
        assert_eq!(url("https://a:8443.evil.net/x"), None);
        assert_eq!(url("https://a/x"), None);
        assert_eq!(url("https://artifacts.example.com/web.tar.gz"), None);
        // A download that cannot reach the current one moves the agent on; one that the
        // coordinator answers, however badly, does not.
        let failed = |error: crate::fetch::FetchError| unreachable_download(&error);
        let url_text = || "https://b:8443/x".to_owned();
        assert!(failed(crate::fetch::FetchError::Request {
            url: url_text(),
            detail: "connection refused".into()
        }));
        assert!(failed(crate::fetch::FetchError::Status {
            url: url_text(),
            status: 503
        }));
        assert!(!failed(crate::fetch::FetchError::Status {
            url: url_text(),
            status: 404
        }));
        assert!(!failed(crate::fetch::FetchError::Truncated {
            url: url_text(),
            received: 1,
            size: 2
        }));
    }

    #[test]
    fn the_current_coordinator_is_kept_across_restarts_while_it_is_listed() {
        let directory = tempfile::tempdir().expect("tempdir");
        let urls = vec!["https://a:8443".to_owned(), "https://b:8443".to_owned()];
        let coordinators = Coordinators::open(urls.clone(), directory.path());
        assert_eq!(current_of(&urls, directory.path()).as_deref(), Some("https://a:8443"));
        let attempt = coordinators.attempt("/x");
        coordinators.failed(&attempt, "refused");
        assert_eq!(current_of(&urls, directory.path()).as_deref(), Some("https://b:8443"));
        let restarted = Coordinators::open(urls, directory.path());
        assert_eq!(restarted.current(), "https://b:8443", "sticky across a restart");
        let relisted = Coordinators::open(vec!["https://c:8443".into()], directory.path());
        assert_eq!(
            relisted.current(),
            "https://c:8443",
            "a URL no longer listed is forgotten"
        );
    }
}
