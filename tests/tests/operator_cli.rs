//! The operator CLI against a real coordinator: `drover serve` runs as a child process on
//! 127.0.0.1:0 with its own data directory, and every command runs as the real `drover`
//! binary, asserting what an operator sees: stdout, the message on stderr, the exit code.
//!
//! Hosts are enrolled without an agent: the test makes a key and CSR as an agent would
//! and posts them to `/v1/join`; reports go over the host's mTLS connection. Every wait
//! is bounded (the coordinator's start, each CLI run, the artifact server).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_coordinator::cli::client::{Origin, tls_config};
use drover_coordinator::server::pki::make_host_csr;
use drover_protocol::api::{
    FleetStatus, Group, HostDetail, HostSummary, JoinRequest, JoinResponse, Release, TokenResponse,
};
use drover_protocol::report::AgentFacts;
use drover_protocol::{Artifact, Digest, HostId};
use drover_tests::{binary, block_on};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How long the coordinator may take to write its `address` file.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one CLI command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

const SPEC: &str = r#"keep_releases = 3

[service]
command = ["bin/web", "--port", "8080"]
restart = "always"

[service.environment]
PORT = "8080"

[[health.checks]]
kind = "http"
url = "http://127.0.0.1:8080/healthz"
"#;

/// Runs a read command with `-o json` among its arguments and decodes its stdout into
/// the type the binding names (drover-tests has no direct serde dependency to name it).
macro_rules! read_json {
    ($coordinator:expr, $args:expr) => {{
        let args: &[&str] = $args;
        let stdout = $coordinator.drover(args).ok();
        serde_json::from_str(&stdout)
            .unwrap_or_else(|error| panic!("{args:?}: not the JSON expected: {error}\n{stdout}"))
    }};
}

/// What one `drover` run produced.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts success and returns stdout.
    fn ok(self) -> String {
        assert!(self.status.success(), "drover failed: {self:#?}");
        self.stdout
    }

    /// Asserts exit `code` and returns stderr.
    fn fails(self, code: i32) -> String {
        assert_eq!(self.code(), Some(code), "expected exit {code}: {self:#?}");
        // Progress lines may come first; the error is a line of its own.
        assert!(
            self.stderr
                .lines()
                .any(|line| line.starts_with("drover: ") || line.starts_with("error: ")),
            "{self:#?}"
        );
        self.stderr
    }
}

/// Runs `drover` with `args` and extra environment, bounded by [`COMMAND_TIMEOUT`]. The
/// caller's DROVER_* variables never leak in.
fn drover_in(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let stdout_path = scratch.path().join("stdout");
    let stderr_path = scratch.path().join("stderr");
    let mut command = Command::new(binary("drover"));
    command
        .args(args)
        .env_remove("DROVER_ADDR")
        .env_remove("DROVER_TOKEN")
        .env_remove("DROVER_CA")
        .env("DROVER_DATA_DIR", data_dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(fs::File::create(&stderr_path).expect("stderr file"));
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn drover");
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for drover") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("drover {args:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        status,
        stdout: fs::read_to_string(&stdout_path).expect("read stdout"),
        stderr: fs::read_to_string(&stderr_path).expect("read stderr"),
    }
}

/// A running `drover serve`, killed (by its PID) when dropped.
struct Coordinator {
    scratch: tempfile::TempDir,
    data_dir: PathBuf,
    child: Option<Child>,
    address: String,
}

impl Coordinator {
    fn start() -> Coordinator {
        let scratch = tempfile::tempdir().expect("scratch directory");
        let data_dir = scratch.path().join("data");
        let log = fs::File::create(scratch.path().join("serve.log")).expect("log file");
        let child = Command::new(binary("drover"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .env("DROVER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn drover serve");
        let mut coordinator = Coordinator {
            scratch,
            data_dir,
            child: Some(child),
            address: String::new(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // The address file is written atomically once the server listens.
            if let Ok(address) = fs::read_to_string(coordinator.data_dir.join("address"))
                && !address.trim().is_empty()
            {
                coordinator.address = address.trim().to_owned();
                return coordinator;
            }
            let exited = coordinator
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "drover serve did not start within {START_TIMEOUT:?} ({exited:?}): {}",
                    coordinator.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.scratch.path().join("serve.log")).unwrap_or_default()
    }

    /// Stops the coordinator now.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn drover(&self, args: &[&str]) -> Run {
        drover_in(&self.data_dir, args, &[])
    }

    fn drover_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        drover_in(&self.data_dir, args, env)
    }

    fn ca_pem(&self) -> Vec<u8> {
        fs::read(self.data_dir.join("ca.pem")).expect("ca.pem")
    }

    /// A file in the scratch directory.
    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.scratch.path().join(name);
        fs::write(&path, bytes).expect("write scratch file");
        path.to_str().expect("utf-8 path").to_owned()
    }

    /// Enrolls `host` with `labels` as an agent would: token from the CLI, own key and CSR,
    /// `POST /v1/join`. Returns the host's mTLS client.
    fn join(&self, host: &str, labels: &str) -> HostClient {
        let token: TokenResponse = read_json!(self, &["token", "create", "--labels", labels, "-o", "json"]);
        let host_id: HostId = host.parse().expect("host id");
        let (csr_pem, key_pem) = make_host_csr(&host_id).expect("csr");
        let request = JoinRequest {
            token: token.token,
            host_id: host_id.clone(),
            csr_pem,
            facts: AgentFacts {
                agent_version: "0.1.0".into(),
                os: "debian 12".into(),
                arch: "x86_64".into(),
            },
        };
        let client = http_client(self.tls(None));
        let response: JoinResponse = block_on(async {
            let response = client
                .post(format!("{}/v1/join", self.address))
                .json(&request)
                .send()
                .await
                .expect("join request");
            assert!(
                response.status().is_success(),
                "join of {host} failed: {}",
                response.status()
            );
            response.json().await.expect("join response")
        });
        assert_eq!(response.host_id, host_id);
        HostClient {
            address: self.address.clone(),
            host: host.to_owned(),
            http: http_client(self.tls(Some((&response.certificate_pem, &key_pem)))),
        }
    }

    /// TLS trusting the coordinator's CA, with a client certificate when given.
    fn tls(&self, identity: Option<(&str, &str)>) -> rustls::ClientConfig {
        let ca = self.ca_pem();
        let origin = Origin::File(self.data_dir.join("ca.pem"));
        let Some((cert_pem, key_pem)) = identity else {
            return tls_config(&ca, &origin).expect("tls config");
        };
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(&ca) {
            roots.add(certificate.expect("ca pem")).expect("ca certificate");
        }
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("host certificate");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("host key");
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client certificate")
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An enrolled host's mTLS connection to the coordinator.
struct HostClient {
    address: String,
    host: String,
    http: reqwest::Client,
}

impl HostClient {
    /// Reports `apps` (name -> (current version, state)) and `events` as this host's agent.
    fn report(&self, apps: &[(&str, &str, &str)], events: &[&str]) {
        let apps: BTreeMap<&str, serde_json::Value> = apps
            .iter()
            .map(|(app, version, state)| {
                (
                    *app,
                    serde_json::json!({ "current": version, "desired": version, "state": state }),
                )
            })
            .collect();
        let events: Vec<serde_json::Value> = events
            .iter()
            .map(|message| serde_json::json!({ "at": "2026-11-27T12:00:00Z", "app": "web", "message": message }))
            .collect();
        let report = serde_json::json!({
            "schema": 1,
            "host": self.host,
            "sent_at": "2026-11-27T12:00:00Z",
            "manifest_serial": 1,
            "facts": { "agent_version": "0.1.0", "os": "debian 12", "arch": "x86_64" },
            "apps": apps,
            "events": events,
        });
        block_on(async {
            let response = self
                .http
                .post(format!("{}/v1/agent/report", self.address))
                .json(&report)
                .send()
                .await
                .expect("report request");
            assert!(response.status().is_success(), "report failed: {}", response.status());
        });
    }
}

fn http_client(tls: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

/// A tarball of `SPEC`'s program and about `size` bytes that are not all alike, so a
/// truncated or shifted upload changes the digest.
fn artifact_bytes(size: usize, seed: u8) -> Vec<u8> {
    let payload: Vec<u8> = (0..size).map(|index| (index % 251) as u8 ^ seed).collect();
    drover_tests::tarball_with_program("bin/web", 0o755, &payload)
}

/// A plain HTTP server for `/web.tar.gz` (HEAD and GET) on a thread, answering 404 for
/// anything else; sockets time out so nothing waits forever.
fn artifact_server(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind artifact server");
    let address = listener.local_addr().expect("artifact server address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => request.extend_from_slice(&buffer[..read]),
                }
            }
            let request = String::from_utf8_lossy(&request);
            let line = request.lines().next().unwrap_or_default().to_owned();
            let head = line.starts_with("HEAD ");
            let response = if line.contains(" /web.tar.gz ") {
                let mut response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                if !head {
                    response.extend_from_slice(&body);
                }
                response
            } else {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            };
            let _ = stream.write_all(&response);
        }
    });
    format!("http://{address}")
}

#[test]
fn token_create_prints_the_join_command_or_json() {
    let coordinator = Coordinator::start();
    let line = coordinator
        .drover(&["token", "create", "--labels", "env=prod", "--ttl", "10m"])
        .ok();
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&words[..3], ["drover-agent", "join", coordinator.address.as_str()]);
    // `--token=T`: a token may start with '-', which a separate argument would turn into a flag.
    assert!(
        words[3].starts_with("--token=") && words[3].len() > "--token=".len(),
        "{line}"
    );
    assert_eq!(words[4], "--ca-sha256");
    assert_eq!(words[5].len(), 64, "{line}");

    let token: TokenResponse = read_json!(coordinator, &["token", "create", "-o", "json"]);
    assert!(token.join_command.contains(&token.token));
    assert!(
        token
            .join_command
            .starts_with(&format!("drover-agent join {} ", coordinator.address))
    );

    let error = coordinator.drover(&["token", "create", "--ttl", "90d"]).fails(2);
    assert!(error.contains("--ttl"), "{error}");
    let error = coordinator.drover(&["token", "create", "--labels", "env"]).fails(2);
    assert!(error.contains("key=value"), "{error}");
}

#[test]
fn hosts_list_show_label_and_remove() {
    let coordinator = Coordinator::start();
    coordinator.join("web-01", "env=prod,region=eu");
    coordinator.join("web-02", "env=prod,region=us");

    let table = coordinator.drover(&["hosts", "list"]).ok();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("HOST") && lines[0].contains("LABELS"), "{table}");
    assert!(
        lines[1].starts_with("web-01  ") && lines[1].contains("env=prod,region=eu"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("web-02  ") && lines[2].contains("env=prod,region=us"),
        "{table}"
    );
    // Aligned: the LABELS column starts at the same place on every line.
    let column = lines[0].find("LABELS").expect("LABELS");
    assert!(
        lines[1..].iter().all(|line| line[column..].starts_with("env=")),
        "{table}"
    );

    let hosts: Vec<HostSummary> = read_json!(coordinator, &["hosts", "list", "-o", "json"]);
    assert_eq!(hosts.len(), 2);

    let shown = coordinator.drover(&["hosts", "show", "web-01"]).ok();
    assert!(
        shown.contains("web-01") && shown.contains("env=prod,region=eu"),
        "{shown}"
    );
    let detail: HostDetail = read_json!(coordinator, &["hosts", "show", "web-01", "-o", "json"]);
    assert_eq!(detail.summary.labels.get("region").map(String::as_str), Some("eu"));

    let labelled = coordinator
        .drover(&["hosts", "label", "web-01", "tier=front", "region-"])
        .ok();
    assert!(labelled.contains("web-01"), "{labelled}");
    let detail: HostDetail = read_json!(coordinator, &["hosts", "show", "web-01", "-o", "json"]);
    let labels: Vec<(&str, &str)> = detail
        .summary
        .labels
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    assert_eq!(labels, [("env", "prod"), ("tier", "front")]);
    coordinator
        .drover(&["hosts", "label", "web-01", "tier=a", "tier-"])
        .fails(2);
    coordinator
        .drover(&["hosts", "label", "web-01", "bad label=x"])
        .fails(2);

    let removed = coordinator.drover(&["hosts", "remove", "web-02"]).ok();
    assert!(removed.contains("removed host web-02"), "{removed}");
    let hosts: Vec<HostSummary> = read_json!(coordinator, &["hosts", "list", "-o", "json"]);
    assert_eq!(
        hosts.iter().map(|host| host.id.as_str()).collect::<Vec<_>>(),
        ["web-01"]
    );

    let error = coordinator.drover(&["hosts", "show", "web-02"]).fails(3);
    assert!(error.contains("web-02"), "{error}");
    coordinator.drover(&["hosts", "remove", "web-02"]).fails(3);
    coordinator.drover(&["hosts", "label", "nope", "a=b"]).fails(3);
    coordinator.drover(&["hosts", "show", "NOT/A/HOST"]).fails(2);
}

#[test]
fn groups_create_list_and_delete_refused_while_pinned() {
    let coordinator = Coordinator::start();
    coordinator.join("web-01", "env=prod,region=eu");
    coordinator.join("web-02", "env=prod,region=us");
    let spec = coordinator.write("drover.toml", SPEC.as_bytes());
    let artifact = coordinator.write("web.tar.gz", &artifact_bytes(1000, 1));
    coordinator
        .drover(&[
            "release",
            "create",
            "web",
            "1.0.0",
            "--spec",
            &spec,
            "--artifact",
            &artifact,
        ])
        .ok();

    let created = coordinator
        .drover(&["groups", "create", "eu", "--selector", "region=eu"])
        .ok();
    assert!(created.contains("group eu selects region=eu"), "{created}");
    let groups: Vec<Group> = read_json!(coordinator, &["groups", "list", "-o", "json"]);
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].selector.get("region").map(String::as_str), Some("eu"));
    let table = coordinator.drover(&["groups", "list"]).ok();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["GROUP", "SELECTOR", "HOSTS"]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["eu", "region=eu", "1"]
    );

    let pinned = coordinator.drover(&["pin", "web", "1.0.0", "--group", "eu"]).ok();
    assert!(pinned.contains("1 host got a new manifest"), "{pinned}");
    let error = coordinator.drover(&["groups", "delete", "eu"]).fails(4);
    assert!(error.contains("unpin"), "{error}");

    let unpinned = coordinator.drover(&["unpin", "web", "--group", "eu"]).ok();
    assert!(unpinned.contains("1 host got a new manifest"), "{unpinned}");
    coordinator.drover(&["groups", "delete", "eu"]).ok();
    let groups: Vec<Group> = read_json!(coordinator, &["groups", "list", "-o", "json"]);
    assert!(groups.is_empty());
    coordinator.drover(&["groups", "delete", "eu"]).fails(3);
    coordinator
        .drover(&["groups", "create", "Bad_Name", "--selector", "a=b"])
        .fails(2);
    coordinator.drover(&["groups", "create", "eu"]).fails(2);
}

#[test]
fn release_create_uploads_a_file_and_records_its_digest() {
    let coordinator = Coordinator::start();
    let spec = coordinator.write("drover.toml", SPEC.as_bytes());
    // Several upload chunks, and not a multiple of the chunk size.
    let bytes = artifact_bytes(3 * 256 * 1024 + 12_345, 7);
    let digest = sha256(&bytes);
    let artifact = coordinator.write("web-1.0.0.tar.gz", &bytes);

    let created = coordinator
        .drover(&[
            "release",
            "create",
            "web",
            "1.0.0",
            "--spec",
            &spec,
            "--artifact",
            &artifact,
        ])
        .ok();
    assert!(created.contains(digest.as_str()), "{created}");
    let releases: Vec<Release> = read_json!(coordinator, &["release", "list", "web", "-o", "json"]);
    assert_eq!(releases.len(), 1);
    match &releases[0].artifact {
        Artifact::Tarball {
            url,
            digest: stored,
            size,
        } => {
            assert_eq!(stored, &digest);
            assert_eq!(*size, bytes.len() as u64);
            assert_eq!(url.as_str(), format!("{}/v1/artifacts/{digest}", coordinator.address));
        }
        other => panic!("not a tarball: {other:?}"),
    }
    let stored = fs::read(coordinator.data_dir.join("blobs/sha256").join(digest.hex())).expect("stored blob");
    assert!(stored == bytes, "the stored blob differs from the file");
    let table = coordinator.drover(&["release", "list", "web"]).ok();
    assert!(
        table.starts_with("VERSION") && table.contains("1.0.0") && table.contains("uploaded"),
        "{table}"
    );

    // The same release again is fine; the same version with another artifact is refused.
    coordinator
        .drover(&[
            "release",
            "create",
            "web",
            "1.0.0",
            "--spec",
            &spec,
            "--artifact",
            &artifact,
        ])
        .ok();
    let other = coordinator.write("other.tar.gz", &artifact_bytes(100, 9));
    let run = coordinator.drover(&[
        "release",
        "create",
        "web",
        "1.0.0",
        "--spec",
        &spec,
        "--artifact",
        &other,
    ]);
    assert!(run.stdout.is_empty(), "{run:#?}");
    let error = run.fails(4);
    assert!(
        error.contains("immutable") && error.contains(digest.as_str()),
        "{error}"
    );

    // Wrong arguments.
    coordinator
        .drover(&["release", "create", "web", "1.0.1", "--spec", &spec])
        .fails(2);
    let error = coordinator
        .drover(&[
            "release",
            "create",
            "web",
            "1.0.1",
            "--spec",
            &spec,
            "--artifact",
            "/nonexistent.tar.gz",
        ])
        .fails(3);
    assert!(error.contains("/nonexistent.tar.gz"), "{error}");
    coordinator
        .drover(&[
            "release",
            "create",
            "web",
            "1.0.1",
            "--spec",
            &spec,
            "--artifact",
            "ftp://x/y.tar.gz",
        ])
        .fails(2);
    let wrong = format!("{}", sha256(b"something else"));
    let error = coordinator
        .drover(&[
            "release",
            "create",
            "web",
            "1.0.1",
            "--spec",
            &spec,
            "--artifact",
            &other,
            "--digest",
            &wrong,
        ])
        .fails(2);
    assert!(error.contains(&wrong), "{error}");
    coordinator
        .drover(&[
            "release",
            "create",
            "Web!",
            "1.0.1",
            "--spec",
            &spec,
            "--artifact",
            &other,
        ])
        .fails(2);
    let releases: Vec<Release> = read_json!(coordinator, &["release", "list", "web", "-o", "json"]);
    assert_eq!(releases.len(), 1, "nothing else was created");
}

#[test]
fn release_create_from_urls() {
    let coordinator = Coordinator::start();
    let spec = coordinator.write("drover.toml", SPEC.as_bytes());
    // A remote artifact is not opened by release create (only hashed), so any bytes do.
    let bytes: Vec<u8> = (0..300_000usize).map(|index| (index % 251) as u8 ^ 3).collect();
    let digest = sha256(&bytes);
    let server = artifact_server(bytes.clone());
    let url = format!("{server}/web.tar.gz");
    let remote = |version: &str| -> (String, Digest, u64) {
        let releases: Vec<Release> = read_json!(coordinator, &["release", "list", "web", "-o", "json"]);
        let release = releases
            .into_iter()
            .find(|release| release.version.as_str() == version)
            .expect("release");
        match release.artifact {
            Artifact::Tarball { url, digest, size } => (url.to_string(), digest, size),
            other => panic!("not a tarball: {other:?}"),
        }
    };

    // --digest and --size: nothing is fetched (this host does not even exist).
    let offline = "https://artifacts.invalid/web-1.tar.gz";
    coordinator
        .drover(&[
            "release",
            "create",
            "web",
            "1",
            "--spec",
            &spec,
            "--artifact",
            offline,
            "--digest",
            digest.as_str(),
            "--size",
            "300000",
        ])
        .ok();
    assert_eq!(remote("1"), (offline.to_owned(), digest.clone(), 300_000));

    // --digest alone: the size comes from HEAD.
    coordinator
        .drover(&[
            "release",
            "create",
            "web",
            "2",
            "--spec",
            &spec,
            "--artifact",
            &url,
            "--digest",
            digest.as_str(),
        ])
        .ok();
    assert_eq!(remote("2"), (url.clone(), digest.clone(), 300_000));

    // Neither: downloaded once to hash it.
    coordinator
        .drover(&["release", "create", "web", "3", "--spec", &spec, "--artifact", &url])
        .ok();
    assert_eq!(remote("3"), (url.clone(), digest.clone(), 300_000));

    // A wrong --size is caught by the download; a missing file on the server fails.
    coordinator
        .drover(&[
            "release",
            "create",
            "web",
            "4",
            "--spec",
            &spec,
            "--artifact",
            &url,
            "--size",
            "5",
        ])
        .fails(2);
    let missing = format!("{server}/missing.tar.gz");
    let error = coordinator
        .drover(&["release", "create", "web", "4", "--spec", &spec, "--artifact", &missing])
        .fails(1);
    assert!(error.contains("404") && error.contains(&missing), "{error}");
}

#[test]
fn spec_errors_name_the_line() {
    let coordinator = Coordinator::start();
    let artifact = coordinator.write("web.tar.gz", b"not really a tarball");
    // Line 5 has a misspelt field.
    let broken = SPEC.replace("restart = \"always\"", "restrat = \"always\"");
    assert_eq!(broken.lines().nth(4), Some("restrat = \"always\""));
    let spec = coordinator.write("drover.toml", broken.as_bytes());
    let error = coordinator
        .drover(&[
            "release",
            "create",
            "web",
            "1.0.0",
            "--spec",
            &spec,
            "--artifact",
            &artifact,
        ])
        .fails(2);
    assert!(error.starts_with(&format!("drover: {spec}: ")), "{error}");
    assert!(error.contains("line 5"), "{error}");
    assert!(error.contains("restrat"), "{error}");

    // A value of the wrong kind, and TOML that does not parse.
    let spec = coordinator.write("bad-value.toml", SPEC.replace("\"always\"", "\"sometimes\"").as_bytes());
    let error = coordinator
        .drover(&[
            "release",
            "create",
            "web",
            "1.0.0",
            "--spec",
            &spec,
            "--artifact",
            &artifact,
        ])
        .fails(2);
    assert!(error.contains("line 5") && error.contains("sometimes"), "{error}");
    let spec = coordinator.write("syntax.toml", b"[service\ncommand = 1\n");
    let error = coordinator
        .drover(&[
            "release",
            "create",
            "web",
            "1.0.0",
            "--spec",
            &spec,
            "--artifact",
            &artifact,
        ])
        .fails(2);
    assert!(error.contains("line 1"), "{error}");
    let error = coordinator
        .drover(&[
            "release",
            "create",
            "web",
            "1.0.0",
            "--spec",
            "/nonexistent/drover.toml",
            "--artifact",
            &artifact,
        ])
        .fails(3);
    assert!(error.contains("/nonexistent/drover.toml"), "{error}");

    // Nothing was uploaded or created.
    let releases: Vec<Release> = read_json!(coordinator, &["release", "list", "web", "-o", "json"]);
    assert!(releases.is_empty());
    let blobs = fs::read_dir(coordinator.data_dir.join("blobs/sha256"))
        .expect("blob store")
        .count();
    assert_eq!(blobs, 0);
}

#[test]
fn pin_unpin_hold_and_unhold_count_hosts() {
    let coordinator = Coordinator::start();
    coordinator.join("web-01", "env=prod,region=eu");
    coordinator.join("web-02", "env=prod,region=us");
    let spec = coordinator.write("drover.toml", SPEC.as_bytes());
    for (version, seed) in [("1.0.0", 1), ("2.0.0", 2)] {
        let artifact = coordinator.write(&format!("web-{version}.tar.gz"), &artifact_bytes(2000, seed));
        coordinator
            .drover(&[
                "release",
                "create",
                "web",
                version,
                "--spec",
                &spec,
                "--artifact",
                &artifact,
            ])
            .ok();
    }

    let said = |args: &[&str]| coordinator.drover(args).ok();
    assert_eq!(
        said(&["pin", "web", "1.0.0"]),
        "pinned web 1.0.0 for the fleet: 2 hosts got a new manifest\n"
    );
    assert_eq!(
        said(&["pin", "web", "2.0.0", "--host", "web-01"]),
        "pinned web 2.0.0 for host web-01: 1 host got a new manifest\n"
    );
    // The host pin is more specific: the fleet pin changes only web-02.
    assert_eq!(
        said(&["pin", "web", "2.0.0"]),
        "pinned web 2.0.0 for the fleet: 1 host got a new manifest\n"
    );
    assert!(said(&["unpin", "web", "--host", "web-01"]).contains("no host got a new manifest"));
    assert!(said(&["hold", "--host", "web-01"]).contains("1 host got a new manifest"));
    let status: FleetStatus = read_json!(coordinator, &["status", "-o", "json"]);
    assert_eq!((status.hosts, status.held), (2, 1));
    assert!(said(&["hold", "--host", "web-01"]).contains("no host got a new manifest"));
    // web-01 is held already: holding the fleet changes web-02 only, and so does lifting it.
    assert_eq!(said(&["hold"]), "held the fleet: 1 host got a new manifest\n");
    assert_eq!(
        said(&["unhold"]),
        "released the hold on the fleet: 1 host got a new manifest\n"
    );
    assert!(said(&["unhold", "--host", "web-01"]).contains("1 host got a new manifest"));
    let status: FleetStatus = read_json!(coordinator, &["status", "-o", "json"]);
    assert_eq!(status.held, 0);
    assert_eq!(
        said(&["unpin", "web"]),
        "unpinned web for the fleet: 2 hosts got a new manifest\n"
    );

    let error = coordinator.drover(&["pin", "web", "9.9.9"]).fails(3);
    assert!(error.contains("release create"), "{error}");
    coordinator.drover(&["pin", "web", "1.0.0", "--group", "nope"]).fails(3);
    coordinator.drover(&["pin", "web", "1.0.0", "--host", "nope"]).fails(3);
    coordinator.drover(&["unpin", "web"]).fails(3);
    coordinator
        .drover(&["pin", "web", "1.0.0", "--group", "eu", "--host", "web-01"])
        .fails(2);
    coordinator.drover(&["hold", "--group", "nope"]).fails(3);
}

#[test]
fn status_counts_versions_and_states_per_app() {
    let coordinator = Coordinator::start();
    let web_01 = coordinator.join("web-01", "env=prod");
    let web_02 = coordinator.join("web-02", "env=prod");
    let spec = coordinator.write("drover.toml", SPEC.as_bytes());
    let artifact = coordinator.write("web.tar.gz", &artifact_bytes(2000, 1));
    coordinator
        .drover(&[
            "release",
            "create",
            "web",
            "1.0.0",
            "--spec",
            &spec,
            "--artifact",
            &artifact,
        ])
        .ok();
    coordinator.drover(&["pin", "web", "1.0.0"]).ok();
    web_01.report(&[("web", "1.0.0", "healthy")], &["started 1.0.0"]);
    web_02.report(&[("web", "1.0.0", "unhealthy")], &["health check failed\u{1b}[2J"]);
    coordinator.drover(&["hold", "--host", "web-02"]).ok();

    let status: FleetStatus = read_json!(coordinator, &["status", "-o", "json"]);
    assert_eq!((status.hosts, status.held), (2, 1));
    let web = &status.apps[&"web".parse().expect("app")];
    assert_eq!(web.desired_hosts, 2);
    assert_eq!(web.versions.get("1.0.0"), Some(&2));
    assert_eq!(web.states.get("healthy"), Some(&1));
    assert_eq!(web.states.get("unhealthy"), Some(&1));

    let table = coordinator.drover(&["status"]).ok();
    assert!(table.contains("2 enrolled, 1 held"), "{table}");
    let row = table.lines().find(|line| line.starts_with("web ")).expect("web row");
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["web", "2", "1.0.0:2", "healthy:1", "unhealthy:1", "fleet=1.0.0", "1"]
    );

    // What a host reported is shown, with control characters escaped. Events are stored
    // by the coordinator's background writer, so they may take a moment to appear.
    let deadline = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let shown = coordinator.drover(&["hosts", "show", "web-02"]).ok();
        if shown.contains("health check failed") || Instant::now() > deadline {
            break shown;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(shown.contains("unhealthy"), "{shown}");
    assert!(shown.contains("health check failed\\u{1b}[2J"), "{shown}");
    assert!(!shown.contains('\u{1b}'), "{shown}");
    let list = coordinator.drover(&["hosts", "list"]).ok();
    assert!(
        list.contains("web 1.0.0 healthy") && list.contains("web 1.0.0 unhealthy"),
        "{list}"
    );
}

#[test]
fn credential_and_connection_failures_say_what_to_fix() {
    let mut coordinator = Coordinator::start();
    coordinator.drover(&["status"]).ok();

    let error = coordinator
        .drover_env(&["status"], &[("DROVER_TOKEN", "wrong")])
        .fails(1);
    assert!(
        error.contains("admin token is wrong") && error.contains("DROVER_TOKEN"),
        "{error}"
    );

    let token = coordinator.data_dir.join("admin.token");
    fs::set_permissions(&token, fs::Permissions::from_mode(0o640)).expect("chmod");
    let error = coordinator.drover(&["hosts", "list"]).fails(1);
    assert!(error.contains(&format!("chmod 600 {}", token.display())), "{error}");
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).expect("chmod");

    // A CA that did not sign the coordinator's certificate: refused, never ignored.
    let (other_ca, _) = drover_coordinator::server::pki::Ca::create(drover_protocol::Timestamp::from_system(
        std::time::SystemTime::now(),
    ))
    .expect("another CA");
    let other = coordinator.write("other-ca.pem", other_ca.cert_pem().as_bytes());
    let error = coordinator.drover_env(&["status"], &[("DROVER_CA", &other)]).fails(1);
    assert!(error.contains("TLS") && error.contains(&other), "{error}");

    let error = coordinator
        .drover_env(&["status"], &[("DROVER_ADDR", "http://127.0.0.1:1")])
        .fails(1);
    assert!(error.contains("https://"), "{error}");

    let elsewhere = tempfile::tempdir().expect("scratch directory");
    let error = drover_in(elsewhere.path(), &["status"], &[]).fails(1);
    assert!(error.contains("address") && error.contains("DROVER_ADDR"), "{error}");

    let address = coordinator.address.clone();
    coordinator.stop();
    let error = coordinator.drover(&["status"]).fails(1);
    assert!(error.contains(&address), "{error}");
    assert!(error.contains("DROVER_ADDR"), "{error}");
    assert!(error.contains("drover serve"), "{error}");
}

#[test]
fn help_teaches_with_examples() {
    let commands: &[&[&str]] = &[
        &["token"],
        &["token", "create"],
        &["hosts"],
        &["hosts", "list"],
        &["hosts", "show"],
        &["hosts", "label"],
        &["hosts", "remove"],
        &["groups"],
        &["groups", "list"],
        &["groups", "create"],
        &["groups", "delete"],
        &["release"],
        &["release", "create"],
        &["release", "list"],
        &["pin"],
        &["unpin"],
        &["hold"],
        &["unhold"],
        &["status"],
    ];
    let nowhere = tempfile::tempdir().expect("scratch directory");
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let help = drover_in(nowhere.path(), &args, &[]).ok();
        assert!(
            help.contains("Example: drover "),
            "drover {} --help has no example:\n{help}",
            command.join(" ")
        );
        assert!(
            help.contains("--data-dir"),
            "drover {} --help:\n{help}",
            command.join(" ")
        );
    }
    let help = drover_in(nowhere.path(), &["--help"], &[]).ok();
    assert!(help.contains("DROVER_ADDR") && help.contains("Exit codes"), "{help}");
}
