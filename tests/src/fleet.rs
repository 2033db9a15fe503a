//! Speaking the real protocol to a real coordinator: an in-process coordinator on
//! 127.0.0.1:0 with real SQLite, an admin API client, and simulated agents that join
//! with a CSR and then poll, long-poll, report and download over mTLS. Used by the
//! integration suites and by the load tool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use drover_coordinator::server::clock::{Clock, ManualClock, SystemClock};
use drover_coordinator::server::serve::{Running, ServeOptions, start_with_clock};
use drover_protocol::api::{JoinRequest, JoinResponse, TokenRequest, TokenResponse};
use drover_protocol::report::{AgentFacts, AppReport, REPORT_SCHEMA};
use drover_protocol::{AppName, Duration, HostId, HostReport, Trust};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS client configuration trusting exactly `ca_pem`, optionally presenting a client
/// certificate, with ring as the only provider.
pub fn tls_client(ca_pem: &str, identity: Option<(&str, &str)>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(certificate.expect("CA PEM")).expect("CA certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    match identity {
        None => builder.with_no_client_auth(),
        Some((certificate_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(certificate_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("certificate PEM");
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
            builder.with_client_auth_cert(chain, key).expect("client certificate")
        }
    }
}

/// An HTTP client over `config`.
pub fn http_client(config: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .pool_max_idle_per_host(4)
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .expect("HTTP client")
}

/// How far behind the real time [`TestCoordinator::start_manual`]'s clock starts: how far
/// a test may move it on.
pub const MANUAL_CLOCK_LEAD: Duration = Duration::from_secs(2 * 3600);

/// A coordinator running in this process on 127.0.0.1 with its own data directory.
#[derive(Debug)]
pub struct TestCoordinator {
    /// The running server.
    pub running: Option<Running>,
    /// The data directory (kept across restarts).
    pub data_dir: PathBuf,
    /// The admin client.
    pub admin: Admin,
    /// The clock the service reads (kept across restarts).
    clock: Arc<dyn Clock>,
    /// The database it keeps its state in (`None`: SQLite in the data directory).
    database: Option<drover_coordinator::server::store::Database>,
    _scratch: Option<tempfile::TempDir>,
}

impl TestCoordinator {
    /// Starts a coordinator in a fresh temporary data directory.
    pub async fn start() -> TestCoordinator {
        TestCoordinator::start_with_clock(Arc::new(SystemClock)).await
    }

    /// Starts a coordinator in a fresh temporary data directory whose service reads a
    /// [`ManualClock`]: the test ages manifests, tokens and rollouts by moving it
    /// (`advance`, then `Coordinator::drive_once` or `refresh`) instead of sleeping.
    /// The clock starts [`MANUAL_CLOCK_LEAD`] behind the real time, because agents check
    /// what it signs against theirs: moved on by up to that, it still issues manifests
    /// and host certificates that are not from the future (an agent refuses a manifest
    /// issued more than 5 minutes ahead).
    pub async fn start_manual() -> (TestCoordinator, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(crate::now_real().minus(MANUAL_CLOCK_LEAD)));
        (TestCoordinator::start_with_clock(clock.clone()).await, clock)
    }

    async fn start_with_clock(clock: Arc<dyn Clock>) -> TestCoordinator {
        TestCoordinator::start_with(clock, None).await
    }

    /// Starts a coordinator in a fresh temporary data directory that keeps its state in
    /// `database` (`drover serve --database`).
    pub async fn start_with_database(database: drover_coordinator::server::store::Database) -> TestCoordinator {
        TestCoordinator::start_with(Arc::new(SystemClock), Some(database)).await
    }

    async fn start_with(
        clock: Arc<dyn Clock>,
        database: Option<drover_coordinator::server::store::Database>,
    ) -> TestCoordinator {
        let scratch = tempfile::tempdir().expect("scratch directory");
        let data_dir = scratch.path().join("data");
        let mut coordinator = TestCoordinator::start_in_with_clock(&data_dir, 0, clock, database).await;
        coordinator._scratch = Some(scratch);
        coordinator
    }

    /// Starts a coordinator on `data_dir` (port 0 picks a free port).
    pub async fn start_in(data_dir: &Path, port: u16) -> TestCoordinator {
        TestCoordinator::start_in_with_clock(data_dir, port, Arc::new(SystemClock), None).await
    }

    async fn start_in_with_clock(
        data_dir: &Path,
        port: u16,
        clock: Arc<dyn Clock>,
        database: Option<drover_coordinator::server::store::Database>,
    ) -> TestCoordinator {
        let options = ServeOptions {
            listen: ([127, 0, 0, 1], port).into(),
            data_dir: data_dir.to_path_buf(),
            public_url: None,
            keys: None,
            manifest_ttl: Duration::from_secs(86_400),
            server_names: Vec::new(),
            host_certificate_validity: drover_coordinator::server::pki::DEFAULT_LEAF_VALIDITY,
            server_certificate_validity: drover_coordinator::server::pki::DEFAULT_LEAF_VALIDITY,
            database: database.clone(),
            artifact_registry: None,
        };
        let running = start_with_clock(options, clock.clone())
            .await
            .expect("coordinator starts");
        let admin = Admin::from_data_dir(data_dir, &running.public_url);
        TestCoordinator {
            running: Some(running),
            data_dir: data_dir.to_path_buf(),
            admin,
            clock,
            database,
            _scratch: None,
        }
    }

    /// The coordinator itself, for what tests do in-process (`drive_once`, `refresh`).
    pub fn coordinator(&self) -> &Arc<drover_coordinator::server::service::Coordinator> {
        &self.running.as_ref().expect("running").coordinator
    }

    /// The base URL.
    pub fn url(&self) -> String {
        self.running.as_ref().expect("running").public_url.clone()
    }

    /// Stops the server (graceful) and starts it again on the same data directory and port.
    pub async fn restart(&mut self) {
        self.restart_after(std::time::Duration::ZERO).await;
    }

    /// [`TestCoordinator::restart`] with `gap` between the stop and the start (clients
    /// see the port refuse connections meanwhile).
    pub async fn restart_after(&mut self, gap: std::time::Duration) {
        let running = self.running.take().expect("running");
        let port = running.addr.port();
        running.stop().await;
        tokio::time::sleep(gap).await;
        let again =
            TestCoordinator::start_in_with_clock(&self.data_dir, port, self.clock.clone(), self.database.clone()).await;
        self.running = again.running;
        self.admin = again.admin;
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    /// Creates a token with these labels and joins `host` with it.
    pub async fn enroll(&self, host: &str, labels: &[(&str, &str)]) -> Agent {
        let token = self.admin.token(labels, None).await;
        Agent::join(&self.url(), &self.admin.ca_pem, &token.token, host)
            .await
            .expect("join succeeds")
    }
}

/// The admin API, authenticated with the data directory's token.
#[derive(Clone, Debug)]
pub struct Admin {
    /// The HTTP client (trusts the CA, no client certificate).
    pub http: reqwest::Client,
    /// The base URL.
    pub url: String,
    /// The admin token.
    pub token: String,
    /// The CA certificate.
    pub ca_pem: String,
}

impl Admin {
    /// Reads the token and CA from a coordinator's data directory.
    pub fn from_data_dir(data_dir: &Path, url: &str) -> Admin {
        let token = std::fs::read_to_string(data_dir.join("admin.token"))
            .expect("admin token")
            .trim()
            .to_owned();
        let ca_pem = std::fs::read_to_string(data_dir.join("ca.pem")).expect("CA");
        Admin {
            http: http_client(tls_client(&ca_pem, None)),
            url: url.to_owned(),
            token,
            ca_pem,
        }
    }

    /// Sends `method path` with an optional JSON body; returns status and body text. A
    /// read whose connection closed before any answer is sent again, as `drover` does (a
    /// coordinator that a whole fleet reconnects to sheds connections without a token yet).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, String) {
        let mut retries = if method == reqwest::Method::GET { 3 } else { 0 };
        let response = loop {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.url))
                .bearer_auth(&self.token);
            if let Some(body) = &body {
                request = request.json(body);
            }
            match request.send().await {
                Err(error) if retries > 0 && error.is_request() && !error.is_connect() && !error.is_timeout() => {
                    retries -= 1;
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                sent => break sent.expect("admin request"),
            }
        };
        let status = response.status();
        (status, response.text().await.expect("admin response body"))
    }

    /// Like [`Admin::call`] but expects a 2xx and parses the JSON answer.
    pub async fn ok(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let (status, text) = self.call(method, path, body).await;
        assert!(status.is_success(), "{path}: {status} {text}");
        if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON answer")
        }
    }

    /// Creates an enrollment token; `replace`: the one taken host id it may enroll.
    pub async fn token(&self, labels: &[(&str, &str)], replace: Option<&str>) -> TokenResponse {
        let request = TokenRequest {
            labels: labels
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
            ttl: Duration::from_secs(3600),
            replace: replace.map(|host| host.parse().expect("host id")),
            allow_loopback: false,
        };
        let value = self
            .ok(
                reqwest::Method::POST,
                "/v1/admin/tokens",
                Some(serde_json::to_value(request).expect("json")),
            )
            .await;
        serde_json::from_value(value).expect("token response")
    }

    /// Uploads an artifact; returns its digest.
    pub async fn upload(&self, bytes: Vec<u8>) -> String {
        let response = self
            .http
            .post(format!("{}/v1/admin/artifacts", self.url))
            .bearer_auth(&self.token)
            .body(bytes)
            .send()
            .await
            .expect("upload");
        assert_eq!(response.status(), StatusCode::CREATED);
        let info: serde_json::Value = response.json().await.expect("blob info");
        info["digest"].as_str().expect("digest").to_owned()
    }

    /// Creates release `app version` with a minimal spec (`bin/app`) from an uploaded
    /// [`crate::app_tarball`] of `payload`; returns the tarball's digest.
    pub async fn release(&self, app: &str, version: &str, payload: Vec<u8>) -> String {
        let digest = self.upload(crate::app_tarball(&payload)).await;
        let body = serde_json::json!({
            "app": app, "version": version,
            "spec": {"service": {"command": ["bin/app"]}},
            "artifact": {"kind": "stored_tarball", "digest": digest},
        });
        self.ok(reqwest::Method::POST, "/v1/admin/releases", Some(body)).await;
        digest
    }

    /// Creates release `app version` whose artifact is exactly `bytes` (uploaded, then
    /// named by its URL as a remote tarball, which the coordinator does not open): for
    /// tests of what agents do with artifacts, including ones no release check would pass.
    /// Returns the digest.
    pub async fn release_unchecked(&self, app: &str, version: &str, bytes: Vec<u8>) -> String {
        let size = bytes.len();
        let digest = self.upload(bytes).await;
        let body = serde_json::json!({
            "app": app, "version": version,
            "spec": {"service": {"command": ["bin/app"]}},
            "artifact": {"kind": "remote_tarball", "url": format!("{}/v1/artifacts/{digest}", self.url),
                         "digest": digest, "size": size},
        });
        self.ok(reqwest::Method::POST, "/v1/admin/releases", Some(body)).await;
        digest
    }
}

/// What a manifest poll returned.
#[derive(Debug)]
pub enum Poll {
    /// A new manifest (envelope bytes) and its ETag.
    Changed(Vec<u8>, String),
    /// 304: unchanged.
    NotModified,
    /// Any other status, with the body.
    Refused(StatusCode, String),
}

/// A simulated agent: a host's identity and its mTLS client.
#[derive(Clone, Debug)]
pub struct Agent {
    /// The host id.
    pub host: HostId,
    /// The mTLS client.
    pub http: reqwest::Client,
    /// The coordinator URL.
    pub url: String,
    /// What the join returned.
    pub joined: JoinResponse,
    /// The agent's private key (PEM).
    pub key_pem: String,
}

impl Agent {
    /// Joins `host` with `token`; returns the error status and body when refused.
    pub async fn join(url: &str, ca_pem: &str, token: &str, host: &str) -> Result<Agent, (StatusCode, String)> {
        let host: HostId = host.parse().expect("host id");
        let (csr_pem, key_pem) = drover_coordinator::server::pki::make_host_csr(&host).expect("CSR");
        let request = JoinRequest {
            token: token.to_owned(),
            host_id: host.clone(),
            csr_pem,
            facts: facts(),
        };
        let anonymous = http_client(tls_client(ca_pem, None));
        let response = anonymous
            .post(format!("{url}/v1/join"))
            .json(&request)
            .send()
            .await
            .expect("join request");
        let status = response.status();
        let text = response.text().await.expect("join body");
        if !status.is_success() {
            return Err((status, text));
        }
        let joined: JoinResponse = serde_json::from_str(&text).expect("join response");
        let http = http_client(tls_client(ca_pem, Some((&joined.certificate_pem, &key_pem))));
        Ok(Agent {
            host,
            http,
            url: url.to_owned(),
            joined,
            key_pem,
        })
    }

    /// The trust document the join returned, verified.
    pub fn trust(&self) -> Trust {
        Trust::bootstrap(self.joined.trust.as_bytes(), crate::now_real()).expect("join returns a valid trust document")
    }

    /// Polls the manifest with `etag` and `wait` seconds of long-poll.
    pub async fn poll(&self, etag: Option<&str>, wait: u64) -> Poll {
        let mut request = self.http.get(format!("{}/v1/agent/manifest?wait={wait}", self.url));
        if let Some(etag) = etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let response = request.send().await.expect("poll request");
        match response.status() {
            StatusCode::OK => {
                let etag = response.headers()[reqwest::header::ETAG]
                    .to_str()
                    .expect("etag")
                    .to_owned();
                Poll::Changed(response.bytes().await.expect("manifest body").to_vec(), etag)
            }
            StatusCode::NOT_MODIFIED => Poll::NotModified,
            status => Poll::Refused(status, response.text().await.unwrap_or_default()),
        }
    }

    /// A report about one app, as the agent builds it (no events).
    pub fn app_report(&self, serial: Option<u64>, app: &AppName, app_report: AppReport) -> HostReport {
        HostReport {
            schema: REPORT_SCHEMA,
            host: self.host.clone(),
            sent_at: crate::now_real(),
            manifest_serial: serial,
            held: false,
            manifest_rejection: None,
            facts: facts(),
            apps: [(app.clone(), app_report)].into(),
            events: Vec::new(),
        }
    }

    /// Sends a report; returns the status and body.
    pub async fn report(&self, report: &HostReport) -> (StatusCode, String) {
        let response = self
            .http
            .post(format!("{}/v1/agent/report", self.url))
            .json(report)
            .send()
            .await
            .expect("report request");
        let status = response.status();
        (status, response.text().await.unwrap_or_default())
    }
}

/// Facts of a simulated host.
pub fn facts() -> AgentFacts {
    AgentFacts {
        agent_version: "sim".into(),
        os: "debian 12".into(),
        arch: "x86_64".into(),
    }
}
