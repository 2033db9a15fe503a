//! A report the coordinator acknowledged survives a kill -9 right after: `drover serve`
//! runs as a child process on 127.0.0.1:0, a host enrolled without an agent (its own key
//! and CSR posted to `/v1/join`) reports over its mTLS connection, the coordinator is
//! killed with SIGKILL the moment the report is answered, started again on the same data
//! directory, and `drover hosts show` must still have the report. Every wait is bounded.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_coordinator::server::pki::make_host_csr;
use drover_protocol::HostId;
use drover_protocol::api::{JoinRequest, JoinResponse, TokenResponse};
use drover_protocol::report::AgentFacts;
use drover_tests::{binary, block_on};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How long the coordinator may take to write its `address` file.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one CLI command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `drover serve`, killed (SIGKILL, by its PID) when dropped.
struct Serving(Child);

impl Serving {
    /// kill -9, and reap it.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `drover serve` on `data_dir` and returns it with its address, once it listens.
fn serve(data_dir: &Path, log: &Path) -> (Serving, String) {
    let address_file = data_dir.join("address");
    let _ = fs::remove_file(&address_file);
    let log = fs::File::create(log).expect("log file");
    let mut serving = Serving(
        Command::new(binary("drover"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("DROVER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn drover serve"),
    );
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        // Written atomically once the server listens.
        if let Ok(address) = fs::read_to_string(&address_file)
            && !address.trim().is_empty()
        {
            return (serving, address.trim().to_owned());
        }
        let exited = serving.0.try_wait().expect("wait for drover serve");
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "drover serve did not start within {START_TIMEOUT:?} ({exited:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `drover` against `data_dir` and returns its stdout; it must succeed.
fn drover(data_dir: &Path, args: &[&str]) -> String {
    let mut child = Command::new(binary("drover"))
        .args(args)
        .env_remove("DROVER_ADDR")
        .env_remove("DROVER_TOKEN")
        .env_remove("DROVER_CA")
        .env("DROVER_DATA_DIR", data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drover");
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while child.try_wait().expect("wait for drover").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("drover {args:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().expect("drover output");
    assert!(
        output.status.success(),
        "drover {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// An HTTPS client trusting the coordinator's CA, presenting `identity` when given.
fn client(data_dir: &Path, identity: Option<(&str, &str)>) -> reqwest::Client {
    let ca = fs::read(data_dir.join("ca.pem")).expect("ca.pem");
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&ca) {
        roots.add(certificate.expect("ca pem")).expect("ca certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots);
    let tls = match identity {
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("host certificate");
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("host key");
            builder.with_client_auth_cert(chain, key).expect("client certificate")
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

#[test]
fn a_report_acknowledged_then_kill_9_is_still_in_hosts_show_after_restart() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let data_dir: PathBuf = scratch.path().join("data");
    let (mut first, address) = serve(&data_dir, &scratch.path().join("serve-1.log"));

    let token: TokenResponse =
        serde_json::from_str(&drover(&data_dir, &["token", "create", "-o", "json"])).expect("token JSON");
    let host: HostId = "web-01".parse().expect("host id");
    let (csr_pem, key_pem) = make_host_csr(&host).expect("csr");
    let join = JoinRequest {
        token: token.token,
        host_id: host.clone(),
        csr_pem,
        facts: AgentFacts {
            agent_version: "0.1.0".into(),
            os: "debian 12".into(),
            arch: "x86_64".into(),
        },
    };
    let joined: JoinResponse = block_on(async {
        let response = client(&data_dir, None)
            .post(format!("{address}/v1/join"))
            .json(&join)
            .send()
            .await
            .expect("join request");
        assert!(response.status().is_success(), "join: {}", response.status());
        response.json().await.expect("join response")
    });
    let report = serde_json::json!({
        "schema": 1,
        "host": "web-01",
        "sent_at": "2026-11-27T12:00:00Z",
        "manifest_serial": 1,
        "facts": { "agent_version": "0.1.0-durable", "os": "debian 12", "arch": "x86_64" },
        "events": [{ "at": "2026-11-27T12:00:00Z", "app": "web", "message": "acknowledged before the kill" }],
    });
    let host_client = client(&data_dir, Some((&joined.certificate_pem, &key_pem)));
    block_on(async {
        let response = host_client
            .post(format!("{address}/v1/agent/report"))
            .json(&report)
            .send()
            .await
            .expect("report request");
        assert_eq!(response.status(), reqwest::StatusCode::NO_CONTENT);
    });
    // SIGKILL the moment the report is acknowledged: no drain, no flush.
    first.kill();

    let (mut second, _) = serve(&data_dir, &scratch.path().join("serve-2.log"));
    let shown: serde_json::Value =
        serde_json::from_str(&drover(&data_dir, &["hosts", "show", "web-01", "-o", "json"])).expect("hosts show JSON");
    second.kill();
    let text = shown.to_string();
    assert!(
        text.contains("acknowledged before the kill"),
        "the report's event is gone: {text}"
    );
    assert!(text.contains("0.1.0-durable"), "the report's facts are gone: {text}");
}
