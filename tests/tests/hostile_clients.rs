//! A real `drover serve` process under hostile clients (issue 12, defects 1 and 10b):
//! hundreds of anonymous connections sending join bodies a byte a second or stalling
//! after most of a body, and a process out of file descriptors. Operators (the real
//! `drover` CLI) and agents (mTLS, the real protocol) must still be served, memory must
//! stay bounded, slow bodies must be cut off by the body deadline, and the accept loop
//! must pause instead of spinning. Everything talks to 127.0.0.1 only, and every loop is
//! bounded in count and time.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use drover_protocol::HostReport;
use drover_protocol::report::REPORT_SCHEMA;
use drover_tests::e2e::free_port;
use drover_tests::fleet::{Admin, Agent, Poll, facts, http_client, tls_client};
use drover_tests::{binary, now_real, proc_status_kib};
use reqwest::StatusCode;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

/// The coordinator closes a body slower than this (`server::BODY_GRACE`, 10 s, for a
/// trickle), plus slack for a loaded machine.
const BODY_DEADLINE: Duration = Duration::from_secs(10);
const SLACK: Duration = Duration::from_secs(6);
/// How long one attacking connection is kept up at most, whatever the server does.
const ATTACK_CAP: Duration = Duration::from_secs(40);

/// A `drover serve` process of this test, whose PID the test needs (memory, CPU time,
/// file descriptor limit), killed on drop.
struct Serve {
    child: Child,
    data_dir: PathBuf,
    port: u16,
    log: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Serve {
    fn start() -> Serve {
        let scratch = tempfile::Builder::new()
            .prefix("drover-hostile-")
            .tempdir()
            .expect("scratch directory");
        let data_dir = scratch.path().join("data");
        let log = scratch.path().join("serve.log");
        let port = free_port();
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary("drover"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .spawn()
            .expect("starting drover serve");
        let serve = Serve {
            child,
            data_dir,
            port,
            log,
            _scratch: scratch,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && serve.data_dir.join("address").exists() {
                return serve;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("drover serve did not listen within 30 s; log:\n{}", serve.log_text());
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn admin(&self) -> Admin {
        Admin::from_data_dir(&self.data_dir, &self.url())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory in KiB.
    fn rss_kib(&self) -> u64 {
        proc_status_kib(&self.pid(), "VmRSS").expect("VmRSS of drover serve")
    }

    /// User + system CPU time so far.
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("/proc/PID/stat");
        // The command name in parentheses may hold spaces: count fields after it.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("stat format")
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        let per_second: u64 = String::from_utf8(
            Command::new("getconf")
                .arg("CLK_TCK")
                .output()
                .expect("getconf CLK_TCK")
                .stdout,
        )
        .expect("CLK_TCK is text")
        .trim()
        .parse()
        .expect("CLK_TCK is a number");
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// Open file descriptors.
    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc/PID/fd")
            .count()
    }

    /// Runs the real `drover` CLI against this coordinator and times it.
    fn drover(&self, args: &[&str]) -> (Output, Duration) {
        let started = Instant::now();
        let output = Command::new(binary("drover"))
            .args(args)
            .env("DROVER_DATA_DIR", &self.data_dir)
            .env_remove("DROVER_ADDR")
            .env_remove("DROVER_TOKEN")
            .env_remove("DROVER_CA")
            .output()
            .expect("running drover");
        (output, started.elapsed())
    }

    /// `drover status` must succeed within `within`.
    fn assert_status_answers(&self, within: Duration, when: &str) {
        let (output, took) = self.drover(&["status"]);
        assert!(
            output.status.success(),
            "drover status failed {when} ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            took <= within,
            "drover status took {took:?} {when}, more than {within:?}"
        );
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "---- drover serve log (tail) ----\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How an attacking connection sends its join body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    /// Declares `Content-Length: declared` and sends a byte a second.
    Trickle { declared: usize },
    /// Declares `Content-Length: declared`, sends all but the last byte at once, then a
    /// byte a second (what raised the RSS to ~420 MiB in the issue).
    StallAtEnd { declared: usize },
}

/// What became of one attacking connection.
#[derive(Debug)]
struct Outcome {
    attack: Attack,
    /// The status of the answer, if one was read before the connection ended.
    status: Option<u16>,
    /// The answer as text (head and body), possibly empty.
    answer: String,
    /// From the end of the request head to the end of the connection; `None` when it was
    /// still open after [`ATTACK_CAP`].
    closed_after: Option<Duration>,
}

fn tls_connector(ca_pem: &str) -> TlsConnector {
    TlsConnector::from(Arc::new(tls_client(ca_pem, None)))
}

/// Opens an anonymous TLS connection and runs `attack` on `POST /v1/join` until the
/// server ends the connection or [`ATTACK_CAP`] passes.
async fn attack(port: u16, connector: TlsConnector, attack: Attack) -> Outcome {
    attack_route(port, connector, "/v1/join", "", attack).await
}

/// Runs `attack` on `POST path` with `headers` (each ending in CRLF) over a connection
/// made by `connector` (with or without a client certificate).
async fn attack_route(port: u16, connector: TlsConnector, path: &str, headers: &str, attack: Attack) -> Outcome {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let server_name = ServerName::try_from("127.0.0.1").expect("server name");
    let tls = connector.connect(server_name, tcp).await.expect("TLS handshake");
    let (mut reader, mut writer) = tokio::io::split(tls);
    let declared = match attack {
        Attack::Trickle { declared } | Attack::StallAtEnd { declared } => declared,
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await.expect("request head");
    let started = Instant::now();
    let read_answer = async move {
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        // Until EOF or an error (a reset after the answer counts as the end too).
        while let Ok(read) = reader.read(&mut buffer).await {
            if read == 0 || answer.len() > 64 * 1024 {
                break;
            }
            answer.extend_from_slice(&buffer[..read]);
        }
        answer
    };
    let send_body = async move {
        let mut sent = 0;
        if let Attack::StallAtEnd { .. } = attack {
            let chunk = vec![b' '; 64 * 1024];
            while sent + chunk.len() < declared {
                if writer.write_all(&chunk).await.is_err() {
                    return;
                }
                sent += chunk.len();
            }
            let rest = declared - 1 - sent;
            if writer.write_all(&chunk[..rest]).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            sent += rest;
        }
        // A byte a second, never the last one; bounded by ATTACK_CAP either way.
        while sent + 1 < declared {
            if writer.write_all(b" ").await.is_err() || writer.flush().await.is_err() {
                return;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        std::future::pending::<()>().await;
    };
    let ended = tokio::time::timeout(ATTACK_CAP, async {
        tokio::select! {
            answer = read_answer => answer,
            // The writer gave up (broken pipe): the server closed; nothing more to read.
            () = send_body => Vec::new(),
        }
    })
    .await;
    match ended {
        Ok(answer) => Outcome {
            attack,
            status: status_of(&answer),
            answer: String::from_utf8_lossy(&answer).into_owned(),
            closed_after: Some(started.elapsed()),
        },
        Err(_) => Outcome {
            attack,
            status: None,
            answer: String::new(),
            closed_after: None,
        },
    }
}

/// The status code of an HTTP/1.1 answer's first line.
fn status_of(answer: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(answer.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.parse().ok()
}

/// A report with no apps, as an idle agent sends it.
fn idle_report(agent: &Agent) -> HostReport {
    HostReport {
        schema: REPORT_SCHEMA,
        host: agent.host.clone(),
        sent_at: now_real(),
        manifest_serial: None,
        held: false,
        manifest_rejection: None,
        facts: facts(),
        apps: Default::default(),
        events: Vec::new(),
    }
}

/// A counter from the coordinator's `/metrics`.
async fn metric(admin: &Admin, name: &str) -> u64 {
    let text = admin
        .http
        .get(format!("{}/metrics", admin.url))
        .send()
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Runs a blocking CLI check on the blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("blocking task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_join_bodies_do_not_starve_operators_or_agents() {
    let serve = Arc::new(Serve::start());
    let admin = serve.admin();
    let token = admin.token(&[], None).await;
    let agent = Agent::join(&serve.url(), &admin.ca_pem, &token.token, "steady-agent")
        .await
        .expect("the agent joins");
    // Warm up every path the test measures, then take the baseline.
    assert!(!matches!(agent.poll(None, 0).await, Poll::Refused(..)));
    assert_eq!(agent.report(&idle_report(&agent)).await.0, StatusCode::NO_CONTENT);
    let check = serve.clone();
    blocking(move || check.assert_status_answers(Duration::from_secs(10), "before the attack")).await;
    let baseline_kib = serve.rss_kib();

    // 400 anonymous connections (below the 512 the coordinator allows without a client
    // certificate or admin token, so this tests the body deadline, not eviction).
    let connector = tls_connector(&admin.ca_pem);
    let mut attacks = Vec::new();
    attacks.extend(std::iter::repeat_n(Attack::Trickle { declared: 1_000_000 }, 100));
    attacks.extend(std::iter::repeat_n(Attack::Trickle { declared: 60_000 }, 150));
    attacks.extend(std::iter::repeat_n(Attack::StallAtEnd { declared: 1_000_000 }, 100));
    attacks.extend(std::iter::repeat_n(Attack::StallAtEnd { declared: 60_000 }, 50));
    let attack_started = Instant::now();
    let mut attackers = JoinSet::new();
    for kind in attacks {
        attackers.spawn(attack(serve.port, connector.clone(), kind));
    }

    // While they are open: the operator's CLI, the agent's poll and report, and memory.
    let mut peak_kib = baseline_kib;
    let mut checks = 0;
    while attack_started.elapsed() < BODY_DEADLINE - Duration::from_secs(2) && checks < 20 {
        checks += 1;
        peak_kib = peak_kib.max(serve.rss_kib());
        let check = serve.clone();
        blocking(move || check.assert_status_answers(Duration::from_secs(3), "during the attack")).await;
        let polled = Instant::now();
        let poll = agent.poll(None, 0).await;
        assert!(
            !matches!(poll, Poll::Refused(..)),
            "poll refused during the attack: {poll:?}"
        );
        let (status, body) = agent.report(&idle_report(&agent)).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "report during the attack: {body}");
        assert!(
            polled.elapsed() < Duration::from_secs(2),
            "the agent's poll and report took {:?} during the attack",
            polled.elapsed()
        );
        peak_kib = peak_kib.max(serve.rss_kib());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(checks >= 2, "the attack was over before the checks ran");

    let mut outcomes = Vec::new();
    while let Some(outcome) = attackers.join_next().await {
        outcomes.push(outcome.expect("attacker task"));
        peak_kib = peak_kib.max(serve.rss_kib());
    }
    let still_open = outcomes.iter().filter(|outcome| outcome.closed_after.is_none()).count();
    eprintln!(
        "RSS {} MiB before, peak {} MiB during 400 slow join bodies; {still_open} still open after {ATTACK_CAP:?}; slowest cut off after {:?}",
        baseline_kib / 1024,
        peak_kib / 1024,
        outcomes.iter().filter_map(|outcome| outcome.closed_after).max()
    );
    assert_eq!(
        still_open, 0,
        "{still_open} of 400 slow join bodies were still open after {ATTACK_CAP:?}"
    );
    let slowest = outcomes
        .iter()
        .filter_map(|outcome| outcome.closed_after)
        .max()
        .expect("outcomes");
    assert!(
        slowest <= BODY_DEADLINE + SLACK,
        "a slow join body was cut off only after {slowest:?} (deadline {BODY_DEADLINE:?})"
    );
    for outcome in &outcomes {
        match outcome.attack {
            // Over the join limit (64 KiB) as declared: refused before reading the body.
            Attack::Trickle { declared: 1_000_000 } => assert_eq!(outcome.status, Some(413), "{outcome:?}"),
            // The server may reset while the megabyte is still being sent, before the
            // client reads the 413; what matters is that it did not buffer it.
            Attack::StallAtEnd { declared: 1_000_000 } => {
                assert!(matches!(outcome.status, None | Some(413)), "{outcome:?}");
            }
            // Within the limit but too slow: the body deadline.
            Attack::Trickle { .. } | Attack::StallAtEnd { .. } => {
                assert_eq!(outcome.status, Some(408), "{outcome:?}");
                assert!(outcome.answer.contains(r#""code":"body_timeout""#), "{outcome:?}");
            }
        }
    }
    let grown_mib = peak_kib.saturating_sub(baseline_kib) / 1024;
    assert!(
        grown_mib < 64,
        "400 slow join bodies grew the coordinator by {grown_mib} MiB (from {} MiB)",
        baseline_kib / 1024
    );
    assert!(metric(&admin, "drover_request_body_timeouts_total").await >= 200);

    // And afterwards everything works as before.
    let check = serve.clone();
    blocking(move || check.assert_status_answers(Duration::from_secs(3), "after the attack")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_of_agents_and_operators_are_cut_off_too() {
    let serve = Serve::start();
    let admin = serve.admin();
    let token = admin.token(&[], None).await;
    let agent = Agent::join(&serve.url(), &admin.ca_pem, &token.token, "slow-agent")
        .await
        .expect("the agent joins");
    let anonymous = tls_connector(&admin.ca_pem);
    let with_certificate = TlsConnector::from(Arc::new(tls_client(
        &admin.ca_pem,
        Some((&agent.joined.certificate_pem, &agent.key_pem)),
    )));
    let bearer = format!("Authorization: Bearer {}\r\n", admin.token);
    let mut attackers = JoinSet::new();
    for _ in 0..3 {
        // An admin upload (a big body by design): the rate floor still applies.
        let connector = anonymous.clone();
        let headers = bearer.clone();
        let port = serve.port;
        attackers.spawn(async move {
            let outcome = attack_route(
                port,
                connector,
                "/v1/admin/artifacts",
                &headers,
                Attack::Trickle { declared: 1_000_000 },
            )
            .await;
            ("upload", outcome)
        });
        // An agent's report.
        let connector = with_certificate.clone();
        attackers.spawn(async move {
            let outcome = attack_route(
                port,
                connector,
                "/v1/agent/report",
                "",
                Attack::Trickle { declared: 60_000 },
            )
            .await;
            ("report", outcome)
        });
    }
    while let Some(joined) = attackers.join_next().await {
        let (route, outcome) = joined.expect("attacker task");
        let closed_after = outcome
            .closed_after
            .unwrap_or_else(|| panic!("a slow {route} was still open after {ATTACK_CAP:?}"));
        assert!(
            closed_after <= BODY_DEADLINE + SLACK,
            "a slow {route} was cut off only after {closed_after:?}"
        );
        assert_eq!(outcome.status, Some(408), "{route}: {outcome:?}");
        assert!(
            outcome.answer.contains(r#""code":"body_timeout""#),
            "{route}: {outcome:?}"
        );
    }
    // No partial upload is left behind, and nothing was stored.
    let uploads = std::fs::read_dir(serve.data_dir.join("blobs/sha256"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(uploads, 0, "the timed-out uploads left files in blobs/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_get_in_past_a_flood_of_idle_anonymous_connections() {
    let serve = Arc::new(Serve::start());
    let admin = serve.admin();
    let connector = tls_connector(&admin.ca_pem);
    // An operator's upload that runs through the flood: opened first (the oldest
    // connection), at 256 KiB/s (four times the rate floor) until the flood is over. Its
    // admin token takes it out of the unauthenticated budget, so the flood must not close it.
    let flood_over = Arc::new(AtomicBool::new(false));
    let upload = tokio::spawn(slow_upload(
        serve.port,
        connector.clone(),
        admin.token.clone(),
        flood_over.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // More idle TLS connections than the 512 allowed without a client certificate or
    // admin token: each new one past the limit closes the oldest.
    let mut idle = Vec::new();
    for _ in 0..700 {
        let tcp = TcpStream::connect(("127.0.0.1", serve.port)).await.expect("connect");
        let server_name = ServerName::try_from("127.0.0.1").expect("server name");
        idle.push(connector.connect(server_name, tcp).await.expect("TLS handshake"));
    }
    flood_over.store(true, Ordering::Relaxed);
    let check = serve.clone();
    blocking(move || check.assert_status_answers(Duration::from_secs(3), "past 700 idle connections")).await;
    let closed = metric(&admin, "drover_connections_closed_by_limit_total").await;
    assert!(
        closed >= 188,
        "only {closed} of 700 idle connections were closed by the limit of 512"
    );
    // The oldest were the ones closed: the first connection reads EOF at once.
    let mut first = idle.swap_remove(0);
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), first.read(&mut buffer)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the oldest idle connection is still open: {read:?}"
    );
    let answer = upload.await.expect("upload task");
    assert!(
        answer.starts_with("HTTP/1.1 201"),
        "the operator's upload did not survive the flood (closed as the oldest connection?): {answer:?}"
    );
}

/// Uploads 4 MiB as an artifact over a fresh anonymous connection with the admin token,
/// 64 KiB every 250 ms until `hurry` is set, then the rest at once; returns the answer
/// (empty when the connection was closed).
async fn slow_upload(port: u16, connector: TlsConnector, token: String, hurry: Arc<AtomicBool>) -> String {
    const SIZE: usize = 4 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let server_name = ServerName::try_from("127.0.0.1").expect("server name");
    let mut tls = connector.connect(server_name, tcp).await.expect("TLS handshake");
    let head = format!(
        "POST /v1/admin/artifacts HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nContent-Length: {SIZE}\r\n\r\n"
    );
    if tls.write_all(head.as_bytes()).await.is_err() {
        return String::new();
    }
    let chunk = vec![b'u'; CHUNK];
    for _ in 0..SIZE / CHUNK {
        if !hurry.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if tls.write_all(&chunk).await.is_err() || tls.flush().await.is_err() {
            return String::new();
        }
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        while let Ok(read) = tls.read(&mut buffer).await {
            answer.extend_from_slice(&buffer[..read]);
            if read == 0 || answer.windows(4).any(|window| window == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_loop_backs_off_when_file_descriptors_run_out() {
    let serve = Arc::new(Serve::start());
    let admin = serve.admin();
    // A low descriptor limit on the running process: 24 more than it uses now.
    let limit = serve.open_fds() + 24;
    let output = Command::new("prlimit")
        .args(["--pid", &serve.pid(), &format!("--nofile={limit}:{limit}")])
        .output()
        .expect("running prlimit");
    assert!(
        output.status.success(),
        "prlimit failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // 200 connections that never start TLS: the server accepts until it runs out of
    // descriptors; the rest wait in the listen backlog. CPU time is counted from the
    // first connection, for 4 s.
    let cpu_before = serve.cpu_time();
    let window = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(("127.0.0.1", serve.port)).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(window.elapsed())).await;
    let cpu_used = serve.cpu_time().saturating_sub(cpu_before);
    let window = window.elapsed();
    eprintln!("drover serve used {cpu_used:?} of CPU in {window:?} out of file descriptors");
    assert!(
        cpu_used < Duration::from_millis(600),
        "the accept loop used {cpu_used:?} of CPU in {window:?} out of file descriptors: it spins"
    );
    let log = serve.log_text();
    let lines = log
        .lines()
        .filter(|line| line.contains("accepting a connection failed"))
        .count();
    assert!(
        (1..=2).contains(&lines),
        "expected one log line (at most one per 10 s) about failed accepts, got {lines}:\n{log}"
    );

    // Once the connections go, everyone is served again.
    drop(idle);
    let check = serve.clone();
    blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (output, _) = check.drover(&["status"]);
            if output.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "drover status still fails 10 s after the connections closed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await;
    assert!(metric(&admin, "drover_accept_errors_total").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_case_bearer_scheme_is_accepted_by_the_server() {
    let serve = Serve::start();
    let admin = serve.admin();
    let client = http_client(tls_client(&admin.ca_pem, None));
    for (authorization, expected) in [
        (format!("bearer {}", admin.token), StatusCode::OK),
        (format!("BEARER {}", admin.token), StatusCode::OK),
        (format!("Bearer {}", admin.token), StatusCode::OK),
        ("bearer not-the-token".to_owned(), StatusCode::UNAUTHORIZED),
    ] {
        let response = client
            .get(format!("{}/v1/admin/status", serve.url()))
            .header(reqwest::header::AUTHORIZATION, &authorization)
            .send()
            .await
            .expect("status request");
        let scheme = authorization.split(' ').next().unwrap_or_default();
        assert_eq!(response.status(), expected, "scheme {scheme:?}");
    }
}
