//! Counters for `/metrics`, in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use drover_protocol::Timestamp;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `amount`.
    pub fn add(&self, amount: usize) {
        self.0
            .fetch_add(u64::try_from(amount).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every counter the coordinator exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// HTTP requests answered.
    pub requests: Counter,
    /// HTTP requests answered with a 4xx or 5xx status.
    pub request_errors: Counter,
    /// Manifest polls.
    pub polls: Counter,
    /// Polls answered 304 Not Modified.
    pub polls_not_modified: Counter,
    /// Reports accepted.
    pub reports: Counter,
    /// Manifests signed.
    pub manifests_signed: Counter,
    /// Hosts enrolled.
    pub joins: Counter,
    /// Artifact bytes served.
    pub artifact_bytes_served: Counter,
    /// Rollout steps committed.
    pub rollout_steps: Counter,
    /// Requests answered 408 because their body came too slowly.
    pub body_timeouts: Counter,
    /// Connections without a client certificate or admin token closed to stay within
    /// the limit on them (or to free a file descriptor when accepting failed).
    pub connections_evicted: Counter,
    /// Failed `accept` calls (out of file descriptors, aborted handshakes).
    pub accept_errors: Counter,
    /// Apps in host reports that the host was never given (ignored).
    pub report_apps_ignored: Counter,
    /// Host certificates renewed.
    pub certificate_renewals: Counter,
    /// Manifests read back from the database to catch up with the fleet model (another
    /// replica's changes, or a full re-read after a panic or lost notifications).
    pub manifests_reread: Counter,
    /// When the server's TLS certificate in use expires (unix seconds; 0 before start).
    pub server_certificate_not_after: AtomicI64,
}

use drover_protocol::api::CERTIFICATE_EXPIRING_SOON as EXPIRING_SOON;

/// The host certificates' expiry, for the gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CertificateExpiry {
    /// The earliest expiry of any enrolled host's newest certificate.
    pub soonest: Option<Timestamp>,
    /// Hosts whose newest certificate expires within [`EXPIRING_SOON`] (or has expired).
    pub expiring_soon: usize,
}

impl CertificateExpiry {
    /// Adds one host's certificate expiry, as seen at `now`.
    pub fn add(&mut self, not_after: Timestamp, now: Timestamp) {
        self.soonest = Some(self.soonest.map_or(not_after, |soonest| soonest.min(not_after)));
        if not_after <= now.plus(EXPIRING_SOON) {
            self.expiring_soon += 1;
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition, with `hosts` and the certificates' expiry (seen at
    /// `now`) as gauges.
    pub fn render(&self, hosts: usize, certificates: CertificateExpiry, now: Timestamp) -> String {
        let counters = [
            ("drover_http_requests_total", "HTTP requests answered.", &self.requests),
            (
                "drover_http_request_errors_total",
                "HTTP requests answered with 4xx or 5xx.",
                &self.request_errors,
            ),
            ("drover_manifest_polls_total", "Manifest polls.", &self.polls),
            (
                "drover_manifest_polls_not_modified_total",
                "Manifest polls answered 304.",
                &self.polls_not_modified,
            ),
            ("drover_reports_total", "Host reports accepted.", &self.reports),
            (
                "drover_manifests_signed_total",
                "Manifests signed.",
                &self.manifests_signed,
            ),
            ("drover_joins_total", "Hosts enrolled.", &self.joins),
            (
                "drover_artifact_bytes_served_total",
                "Artifact bytes served.",
                &self.artifact_bytes_served,
            ),
            (
                "drover_rollout_steps_total",
                "Rollout steps committed.",
                &self.rollout_steps,
            ),
            (
                "drover_request_body_timeouts_total",
                "Requests answered 408 because their body came too slowly.",
                &self.body_timeouts,
            ),
            (
                "drover_connections_closed_by_limit_total",
                "Unauthenticated connections closed to stay within their limit.",
                &self.connections_evicted,
            ),
            (
                "drover_accept_errors_total",
                "Failed accepts (out of file descriptors, aborted connections).",
                &self.accept_errors,
            ),
            (
                "drover_report_apps_ignored_total",
                "Apps in host reports that the host was never given (ignored).",
                &self.report_apps_ignored,
            ),
            (
                "drover_host_certificate_renewals_total",
                "Host client certificates renewed.",
                &self.certificate_renewals,
            ),
            (
                "drover_manifests_reread_total",
                "Manifests read back from the database to catch up with other replicas' changes.",
                &self.manifests_reread,
            ),
        ];
        let mut text = String::new();
        for (name, help, counter) in counters {
            let _ = writeln!(
                text,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.get()
            );
        }
        let _ = writeln!(
            text,
            "# HELP drover_hosts Enrolled hosts.\n# TYPE drover_hosts gauge\ndrover_hosts {hosts}"
        );
        if let Some(soonest) = certificates.soonest {
            let _ = writeln!(
                text,
                "# HELP drover_host_certificate_expiry_seconds Seconds until the first enrolled host's client certificate expires (negative: expired).\n# TYPE drover_host_certificate_expiry_seconds gauge\ndrover_host_certificate_expiry_seconds {}",
                soonest.unix() - now.unix()
            );
        }
        let _ = writeln!(
            text,
            "# HELP drover_host_certificates_expiring_soon Enrolled hosts whose client certificate expires within 30 days (or has expired).\n# TYPE drover_host_certificates_expiring_soon gauge\ndrover_host_certificates_expiring_soon {}",
            certificates.expiring_soon
        );
        let server = self.server_certificate_not_after.load(Ordering::Relaxed);
        if server > 0 {
            let _ = writeln!(
                text,
                "# HELP drover_server_certificate_expiry_seconds Seconds until the coordinator's TLS certificate in use expires (it is renewed when a third is left).\n# TYPE drover_server_certificate_expiry_seconds gauge\ndrover_server_certificate_expiry_seconds {}",
                server - now.unix()
            );
        }
        text
    }
}
