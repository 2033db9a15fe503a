//! Agents that know several coordinators (issue 16): the real `drover-agent` joins, polls
//! and reports through whichever of its `coordinators` answers, and stays on one while it
//! answers. Two replicas need PostgreSQL, so the second "coordinator" here is a dead
//! address (a 127.0.0.1 port bound and closed again: connections are refused).
//!
//! `drover-agent run` needs systemd on the system bus; these hosts have no apps, so the
//! agent only subscribes to the manager's signals. A private `dbus-daemon` with a fake
//! `org.freedesktop.systemd1` that answers `Subscribe` stands in for it
//! (`DBUS_SYSTEM_BUS_ADDRESS`), which keeps the test on this machine (no real hosts).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_tests::binary;
use drover_tests::fleet::TestCoordinator;

/// A `dbus-daemon` of our own with a fake systemd manager on it. Killed on drop.
struct FakeSystemBus {
    daemon: Child,
    address: String,
    _connection: zbus::Connection,
}

/// The one method `drover-agent run` calls on systemd when the host has no apps.
struct FakeManager;

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl FakeManager {
    async fn subscribe(&self) {}
}

impl FakeSystemBus {
    async fn start(directory: &Path) -> FakeSystemBus {
        let socket = directory.join("system_bus_socket");
        let address = format!("unix:path={}", socket.display());
        let daemon = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", &format!("--address={address}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (package dbus-daemon) runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        let connection = loop {
            if socket.exists()
                && let Ok(builder) = zbus::connection::Builder::address(address.as_str())
                && let Ok(connection) = builder
                    .name("org.freedesktop.systemd1")
                    .expect("name")
                    .serve_at("/org/freedesktop/systemd1", FakeManager)
                    .expect("serve")
                    .build()
                    .await
            {
                break connection;
            }
            assert!(Instant::now() < deadline, "dbus-daemon did not come up at {address}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        FakeSystemBus {
            daemon,
            address,
            _connection: connection,
        }
    }
}

impl Drop for FakeSystemBus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// A URL on 127.0.0.1 where nothing listens: bound, then closed.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    format!("https://127.0.0.1:{port}")
}

/// One host's files and its running agent (killed on drop).
struct Host {
    directory: tempfile::TempDir,
    agent: Option<Child>,
}

impl Host {
    fn new() -> Host {
        Host {
            directory: tempfile::tempdir().expect("scratch"),
            agent: None,
        }
    }

    fn config(&self) -> PathBuf {
        self.directory.path().join("agent.toml")
    }

    fn state(&self) -> PathBuf {
        self.directory.path().join("state")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.directory.path().join("agent.log")).unwrap_or_default()
    }

    fn common_args(&self) -> Vec<String> {
        vec![
            "--config".into(),
            self.config().display().to_string(),
            "--state-dir".into(),
            self.state().display().to_string(),
            "--host-id".into(),
            "web-01".into(),
        ]
    }

    /// Runs `drover-agent` to completion (off the async runtime).
    fn agent_command(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        all.extend(self.common_args());
        tokio::task::block_in_place(|| Command::new(binary("drover-agent")).args(&all).output()).expect("drover-agent")
    }

    /// Starts `drover-agent run`, logging to `agent.log`.
    fn start(&mut self, bus: &FakeSystemBus) {
        let log = std::fs::File::create(self.directory.path().join("agent.log")).expect("log");
        let child = Command::new(binary("drover-agent"))
            .arg("run")
            .args(self.common_args())
            .args(["--poll-interval", "1s"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .env("DROVER_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("drover-agent run");
        self.agent = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `drover token create --coordinators ...` by the real CLI: the printed join line.
fn join_line(coordinator: &TestCoordinator, coordinators: &[&str]) -> String {
    let output = tokio::task::block_in_place(|| {
        Command::new(binary("drover"))
            .args(["token", "create", "--coordinators", &coordinators.join(",")])
            .env("DROVER_DATA_DIR", &coordinator.data_dir)
            .env("DROVER_ADDR", coordinator.url())
            .env_remove("DROVER_TOKEN")
            .env_remove("DROVER_CA")
            .env_remove("DROVER_COORDINATORS")
            .output()
    })
    .expect("drover token create");
    assert!(
        output.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8").trim().to_owned()
}

/// Joins `host` with the join line naming `coordinators`; returns the join's stdout.
fn join(coordinator: &TestCoordinator, host: &Host, coordinators: &[&str]) -> String {
    let line = join_line(coordinator, coordinators);
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[..2], ["drover-agent", "join"], "{line}");
    assert_eq!(
        words[2],
        coordinators.join(","),
        "the join line names every coordinator: {line}"
    );
    let output = host.agent_command(&words[1..]);
    assert!(
        output.status.success(),
        "join: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A counter from the coordinator's `/metrics`.
async fn metric(coordinator: &TestCoordinator, name: &str) -> u64 {
    let text = coordinator
        .admin
        .http
        .get(format!("{}/metrics", coordinator.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .map_or(0, |value| value.trim().parse().expect("a counter"))
}

/// Waits (bounded) until the coordinator has taken `count` more reports than `since`.
async fn wait_for_reports(coordinator: &TestCoordinator, since: u64, count: u64, host: &Host) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(coordinator, "drover_reports_total").await < since + count {
        assert!(
            Instant::now() < deadline,
            "no {count} reports in 30 s; agent log:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn status_json(host: &Host) -> serde_json::Value {
    let output = host.agent_command(&["status", "-o", "json"]);
    assert!(
        output.status.success(),
        "status: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("status JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_first_coordinator_is_dead_joins_polls_and_reports_through_the_next() {
    let coordinator = TestCoordinator::start().await;
    let live = coordinator.url();
    let dead = dead_url();
    let mut host = Host::new();
    let printed = join(&coordinator, &host, &[&dead, &live]);
    assert!(printed.contains(&format!("joined {live}")), "{printed}");
    let config = std::fs::read_to_string(host.config()).expect("agent.toml");
    assert!(
        config.contains(&format!("coordinators = [\"{dead}\", \"{live}\"]")),
        "{config}"
    );

    // The join noted the coordinator that answered; start from the dead one instead, as
    // an agent does whose coordinator went away while it was down.
    std::fs::write(host.state().join("coordinator"), format!("{dead}\n")).expect("write");
    let bus_directory = tempfile::tempdir().expect("bus directory");
    let bus = FakeSystemBus::start(bus_directory.path()).await;
    let reports_before = metric(&coordinator, "drover_reports_total").await;
    let polls_before = metric(&coordinator, "drover_manifest_polls_total").await;
    let started = Instant::now();
    host.start(&bus);
    wait_for_reports(&coordinator, reports_before, 1, &host).await;
    let first_report = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&coordinator, "drover_manifest_polls_total").await == polls_before {
        assert!(Instant::now() < deadline, "no poll in 30 s; agent log:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let first_poll = started.elapsed();
    eprintln!(
        "first failover: first report through the live coordinator {} ms after the agent started, first poll {} ms",
        first_report.as_millis(),
        first_poll.as_millis()
    );
    // Heartbeats keep going to the live one.
    wait_for_reports(&coordinator, reports_before, 3, &host).await;
    let log = host.log();
    assert!(
        log.contains(&format!("coordinator {dead} unreachable (")) && log.contains(&format!("; trying {live}")),
        "the move is logged at INFO: {log}"
    );
    assert_eq!(
        log.matches("unreachable (").count(),
        1,
        "one move, however many tasks saw the dead one: {log}"
    );
    let status = status_json(&host);
    assert_eq!(status["coordinator"], live.as_str(), "{status:#}");
    assert_eq!(status["coordinators"], serde_json::json!([dead, live]), "{status:#}");
    host.stop();
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_stays_on_its_first_coordinator_while_it_answers() {
    let coordinator = TestCoordinator::start().await;
    let live = coordinator.url();
    let dead = dead_url();
    let mut host = Host::new();
    join(&coordinator, &host, &[&live, &dead]);
    // Short long-polls: many polls in the few seconds this runs.
    let config = std::fs::read_to_string(host.config()).expect("agent.toml");
    std::fs::write(host.config(), format!("{config}long_poll = \"1s\"\n")).expect("write");
    let bus_directory = tempfile::tempdir().expect("bus directory");
    let bus = FakeSystemBus::start(bus_directory.path()).await;
    let reports_before = metric(&coordinator, "drover_reports_total").await;
    let polls_before = metric(&coordinator, "drover_manifest_polls_total").await;
    host.start(&bus);
    wait_for_reports(&coordinator, reports_before, 4, &host).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&coordinator, "drover_manifest_polls_total").await < polls_before + 3 {
        assert!(
            Instant::now() < deadline,
            "fewer than 3 polls in 30 s; agent log:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let log = host.log();
    assert!(!log.contains("unreachable"), "never moved: {log}");
    assert!(
        !log.contains(&format!("trying {dead}")),
        "never tried the second: {log}"
    );
    let status = status_json(&host);
    assert_eq!(status["coordinator"], live.as_str(), "{status:#}");
    host.stop();
    coordinator.stop().await;
}

/// A TCP proxy on 127.0.0.1 to `target`, standing in for a second replica: the same
/// coordinator behind another URL, which [`Proxy::kill`] takes away with every
/// connection through it (as a replica that dies).
struct Proxy {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            // Dropped with the task: every connection through the proxy ends with it.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy { url, task }
    }

    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_moves_on_when_its_coordinator_goes_away_while_it_works() {
    let coordinator = TestCoordinator::start().await;
    let direct = coordinator.url();
    let address: std::net::SocketAddr = direct
        .strip_prefix("https://")
        .expect("https")
        .parse()
        .expect("an address");
    let proxy = Proxy::start(address).await;
    let first = proxy.url.clone();
    let mut host = Host::new();
    join(&coordinator, &host, &[&first, &direct]);
    let bus_directory = tempfile::tempdir().expect("bus directory");
    let bus = FakeSystemBus::start(bus_directory.path()).await;
    let reports_before = metric(&coordinator, "drover_reports_total").await;
    host.start(&bus);
    // Working through the first URL: a long-poll held open through it.
    wait_for_reports(&coordinator, reports_before, 2, &host).await;
    assert!(!host.log().contains("unreachable"), "{}", host.log());

    let polls_before = metric(&coordinator, "drover_manifest_polls_total").await;
    let killed = Instant::now();
    proxy.kill().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&coordinator, "drover_manifest_polls_total").await == polls_before {
        assert!(Instant::now() < deadline, "no poll in 30 s; agent log:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let next_poll = killed.elapsed();
    let reports_after_kill = metric(&coordinator, "drover_reports_total").await;
    wait_for_reports(&coordinator, reports_after_kill, 1, &host).await;
    let next_report = killed.elapsed();
    eprintln!(
        "failover while working: next poll through the other URL {} ms after the first went away, next report {} ms",
        next_poll.as_millis(),
        next_report.as_millis()
    );
    let log = host.log();
    assert!(
        log.contains(&format!("coordinator {first} unreachable (")) && log.contains(&format!("; trying {direct}")),
        "{log}"
    );
    assert_eq!(status_json(&host)["coordinator"], direct.as_str());
    host.stop();
    coordinator.stop().await;
}
