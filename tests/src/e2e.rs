//! The end-to-end fleet: a real `drover serve` process on 127.0.0.1 and real systemd
//! hosts ([`crate::hosts`]) running the real `drover-agent` under its unit
//! (`systemd/drover-agent.service`), joined with a token from the real `drover` CLI.
//! The sample app (`drover-sample-app`) is packed into release tarballs here.
//!
//! Everything is torn down on drop, also when a test panics: hosts power off, the
//! coordinator process is killed by its PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::binary;
use crate::hosts::{Host, HostOptions};
use crate::net::Bridge;

/// A free TCP port on 127.0.0.1 (bound, then released for the caller).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port on 127.0.0.1")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A `drover serve` process with its own data directory.
#[derive(Debug)]
pub struct CoordinatorProcess {
    child: Option<Child>,
    /// The data directory (kept across restarts).
    pub data_dir: PathBuf,
    /// The address it listens on (127.0.0.1 unless started with [`start_on`]).
    ///
    /// [`start_on`]: CoordinatorProcess::start_on
    pub ip: std::net::Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// Extra `drover serve` arguments, kept for [`resume`](CoordinatorProcess::resume).
    pub serve_args: Vec<String>,
    log: PathBuf,
    _scratch: tempfile::TempDir,
}

impl CoordinatorProcess {
    /// Starts a coordinator on 127.0.0.1, a free port, with a fresh data directory.
    pub fn start() -> anyhow::Result<CoordinatorProcess> {
        CoordinatorProcess::start_on(std::net::Ipv4Addr::LOCALHOST)
    }

    /// Starts a coordinator listening on `ip` (e.g. a [`crate::net::Bridge`]'s address,
    /// which is also the URL hosts use and a name in its server certificate).
    pub fn start_on(ip: std::net::Ipv4Addr) -> anyhow::Result<CoordinatorProcess> {
        CoordinatorProcess::start_with(ip, &[])
    }

    /// Starts a coordinator listening on `ip` with extra `drover serve` arguments, e.g.
    /// `["--host-certificate-validity", "2m"]` to cross certificate expiry in a test.
    pub fn start_with(ip: std::net::Ipv4Addr, serve_args: &[&str]) -> anyhow::Result<CoordinatorProcess> {
        let scratch = tempfile::Builder::new()
            .prefix("drover-e2e-coordinator-")
            .tempdir()
            .context("scratch directory")?;
        let mut coordinator = CoordinatorProcess {
            child: None,
            data_dir: scratch.path().join("data"),
            ip,
            port: free_port(),
            serve_args: serve_args.iter().map(|arg| (*arg).to_owned()).collect(),
            log: scratch.path().join("serve.log"),
            _scratch: scratch,
        };
        coordinator.resume()?;
        Ok(coordinator)
    }

    /// The URL hosts use.
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.ip, self.port)
    }

    /// Starts the process again on the same port and data directory (after [`stop`]).
    ///
    /// [`stop`]: CoordinatorProcess::stop
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .context("coordinator log")?;
        let child = Command::new(binary("drover"))
            .args(["serve", "--listen", &format!("{}:{}", self.ip, self.port), "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.serve_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log handle")?)
            .stderr(log)
            .spawn()
            .context("starting drover serve")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect((self.ip, self.port)).is_ok() && self.data_dir.join("address").exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("drover serve did not listen within 30 s; log:\n{}", self.log_text())
    }

    /// Stops the process (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process with SIGKILL (a crash: nothing is flushed or drained).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the `drover` CLI against this coordinator.
    pub fn drover(&self, args: &[&str]) -> Output {
        Command::new(binary("drover"))
            .args(args)
            .env("DROVER_DATA_DIR", &self.data_dir)
            .env_remove("DROVER_ADDR")
            .env_remove("DROVER_TOKEN")
            .env_remove("DROVER_CA")
            .output()
            .expect("running drover")
    }

    /// Runs the `drover` CLI and returns stdout; an error carries stderr.
    pub fn drover_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.drover(args);
        if !output.status.success() {
            bail!(
                "drover {} failed ({}): {}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `drover release create web VERSION --spec SPEC --artifact FILE`.
    pub fn release_from(&self, version: &str, spec: &Path, artifact: &Path) -> anyhow::Result<()> {
        let (spec, artifact) = (
            spec.to_str().context("spec path")?,
            artifact.to_str().context("artifact path")?,
        );
        self.drover_ok(&[
            "release",
            "create",
            "web",
            version,
            "--spec",
            spec,
            "--artifact",
            artifact,
        ])
        .map(drop)
    }

    /// Release `web VERSION` of the sample app listening on `port`, behaving as told, with
    /// `padding` random bytes in the tarball; returns the tarball.
    pub fn sample_release(
        &self,
        releases: &Releases,
        version: &str,
        port: u16,
        behaviour: Behaviour,
        padding: usize,
    ) -> anyhow::Result<PathBuf> {
        let tarball = releases.tarball(version, padding)?;
        let spec = releases.spec(&format!("web-{version}"), port, behaviour)?;
        self.release_from(version, &spec, &tarball)?;
        Ok(tarball)
    }

    /// `drover hosts show HOST -o json`.
    pub fn host_json(&self, host: &str) -> anyhow::Result<serde_json::Value> {
        let text = self.drover_ok(&["hosts", "show", host, "-o", "json"])?;
        serde_json::from_str(&text).context("hosts show -o json")
    }

    /// Waits up to `timeout` until `hosts show` for `host` satisfies `condition`; returns
    /// what it showed last, and panics with it when the time is up.
    pub fn wait_reported(
        &self,
        host: &AgentHost,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        host.host
            .wait_until(what, timeout, Duration::from_millis(300), || {
                last = self.host_json(&host.id).unwrap_or_default();
                condition(&last)
            })
            .unwrap_or_else(|error| panic!("{error}\nlast hosts show: {last:#}"));
        last
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- coordinator log (tail) ----\n{}", tail(&self.log_text(), 60));
        }
        self.stop();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How a sample-app release behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Serves its version and a healthy `/healthz`.
    Good,
    /// `/healthz` answers 500.
    FailsHealth,
    /// Exits 1 right after start (systemd restarts it in a loop).
    Crashes,
}

/// A place for release files.
#[derive(Debug)]
pub struct Releases {
    dir: tempfile::TempDir,
}

impl Releases {
    /// A fresh directory.
    pub fn new() -> anyhow::Result<Releases> {
        Ok(Releases {
            dir: tempfile::Builder::new()
                .prefix("drover-e2e-releases-")
                .tempdir()
                .context("releases directory")?,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `sample-<version>.tar.gz`: `bin/drover-sample-app`, `VERSION`, and `padding`
    /// random bytes in `data/padding` (to make downloads take a while).
    pub fn tarball(&self, version: &str, padding: usize) -> anyhow::Result<PathBuf> {
        let tree = self.dir.path().join(format!("tree-{version}"));
        std::fs::create_dir_all(tree.join("bin"))?;
        std::fs::create_dir_all(tree.join("data"))?;
        std::fs::copy(binary("drover-sample-app"), tree.join("bin/drover-sample-app"))?;
        std::fs::write(tree.join("VERSION"), version)?;
        let mut random = vec![0u8; padding];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).expect("random");
        std::fs::write(tree.join("data/padding"), random)?;
        // A setuid bit the agent must strip (the spec does not allow it).
        std::fs::write(tree.join("bin/helper"), "#!/bin/sh\n")?;
        std::fs::set_permissions(
            tree.join("bin/helper"),
            std::os::unix::fs::PermissionsExt::from_mode(0o4755),
        )?;
        let tarball = self.dir.path().join(format!("sample-{version}.tar.gz"));
        run_ok(
            Command::new("tar")
                .arg("-czf")
                .arg(&tarball)
                .arg("-C")
                .arg(&tree)
                .arg("."),
        )?;
        Ok(tarball)
    }

    /// A spec (`drover.toml`) for the sample app on `port`.
    pub fn spec(&self, name: &str, port: u16, behaviour: Behaviour) -> anyhow::Result<PathBuf> {
        let fail = match behaviour {
            Behaviour::Good => "",
            Behaviour::FailsHealth => "FAIL = \"health\"\n",
            Behaviour::Crashes => "FAIL = \"crash\"\n",
        };
        let text = format!(
            r#"keep_releases = 3

[service]
command = ["bin/drover-sample-app", "--listen", "127.0.0.1:{port}"]
restart = "on-failure"

[service.environment]
APP_STAGE = "staged"
{fail}
[health]
grace_period = "8s"
interval = "500ms"
successes = 2

[[health.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/healthz"
timeout = "1s"

[hooks.pre_start]
command = ["sh", "-c", "echo \"$APP_STAGE\" > pre-start-ran"]
timeout = "10s"

[hooks.post_start]
command = ["sh", "-c", "echo ok > post-start-ran"]
"#
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// Runs a command; an error carries its output.
pub fn run_ok(command: &mut Command) -> anyhow::Result<String> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A package built into `dist/` by `packaging/build.sh` (which the test command runs
/// first): the end-to-end suites install the agent as users do, from its .deb.
pub fn package(prefix: &str, suffix: &str) -> anyhow::Result<PathBuf> {
    let dist = repo_root().join("dist");
    let entries =
        std::fs::read_dir(&dist).with_context(|| format!("{}: run `bash packaging/build.sh` first", dist.display()))?;
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
            name.starts_with(prefix) && name.ends_with(suffix)
        })
        .with_context(|| {
            format!(
                "no {prefix}*{suffix} in {}; run `bash packaging/build.sh`",
                dist.display()
            )
        })
}

/// `dpkg -i` of a package file inside `host`; returns dpkg's output.
pub fn install_package(host: &Host, package: &Path) -> anyhow::Result<String> {
    let name = package
        .file_name()
        .and_then(|name| name.to_str())
        .context("package file name")?;
    let inside = format!("/tmp/{name}");
    host.copy_in(package, &inside, 0o644)?;
    host.check(&["dpkg", "-i", &inside])
}

/// The agent's unit name.
pub const AGENT_UNIT: &str = "drover-agent.service";

/// A booted host with the agent installed from its .deb, joined and running.
#[derive(Debug)]
pub struct AgentHost {
    /// The host (powered off on drop).
    pub host: Host,
    /// Its host id.
    pub id: String,
}

impl AgentHost {
    /// When systemd last started `app`'s main process (monotonic µs): unchanged means the
    /// app was not restarted.
    pub fn app_started(&self, app: &str) -> String {
        self.host
            .check(&[
                "systemctl",
                "show",
                "--property=ExecMainStartTimestampMonotonic",
                "--value",
                &format!("drover-{app}.service"),
            ])
            .expect("systemctl show")
            .trim()
            .to_owned()
    }

    /// Boots a host, installs `drover-agent` from `dist/`'s .deb, joins `coordinator`
    /// with a fresh token, and starts the agent (which waits for its READY notification).
    pub fn start(name: &str, coordinator: &CoordinatorProcess, options: &HostOptions) -> anyhow::Result<AgentHost> {
        AgentHost::start_with(name, coordinator, options, "")
    }

    /// [`AgentHost::start`] with extra lines for `/etc/drover/agent.toml`.
    pub fn start_with(
        name: &str,
        coordinator: &CoordinatorProcess,
        options: &HostOptions,
        extra_config: &str,
    ) -> anyhow::Result<AgentHost> {
        let host = Host::boot(name, options)?;
        install_package(&host, &package("drover-agent_", "_amd64.deb")?)?;
        let agent = AgentHost {
            id: host.name().to_owned(),
            host,
        };
        agent.join_and_start(coordinator, extra_config)?;
        Ok(agent)
    }

    /// [`AgentHost::start`] for a host of its own network on `bridge` (address number
    /// `n`), joined to a coordinator listening on the bridge
    /// ([`CoordinatorProcess::start_on`] with [`Bridge::gateway`]).
    pub fn start_on_bridge(
        name: &str,
        coordinator: &CoordinatorProcess,
        bridge: &Bridge,
        n: u8,
    ) -> anyhow::Result<AgentHost> {
        let host = Host::boot(name, &bridge.host_options())?;
        bridge.configure(&host, n, &format!("{}/healthz", coordinator.url()))?;
        install_package(&host, &package("drover-agent_", "_amd64.deb")?)?;
        let agent = AgentHost {
            id: host.name().to_owned(),
            host,
        };
        agent.join_and_start(coordinator, "")?;
        Ok(agent)
    }

    /// What the app on `port` answers at `path` inside the host (for hosts with a
    /// network of their own; see [`AgentHost::get`] for hosts sharing the machine's).
    pub fn get_inside(&self, port: u16, path: &str) -> Option<String> {
        let output = self.host.exec(&[
            "curl",
            "-sf",
            "--max-time",
            "2",
            &format!("http://127.0.0.1:{port}{path}"),
        ]);
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Joins the installed agent with the line `drover token create` prints, adds
    /// `extra_config` and short test intervals to its config, and starts it.
    pub fn join_and_start(&self, coordinator: &CoordinatorProcess, extra_config: &str) -> anyhow::Result<()> {
        let join = coordinator.drover_ok(&["token", "create"])?;
        let words: Vec<&str> = join.split_whitespace().collect();
        let at = words
            .iter()
            .position(|word| *word == "join")
            .with_context(|| format!("no join line in {join:?}"))?;
        let mut argv = vec!["drover-agent"];
        argv.extend(&words[at..]);
        argv.extend(["--host-id", &self.id]);
        self.host.check(&argv)?;
        // Short intervals so tests see changes quickly; the long-poll makes pins immediate.
        let config = String::from_utf8(self.host.read_file("/etc/drover/agent.toml")?).context("agent.toml")?;
        let config = format!("{config}poll_interval = \"5s\"\nlong_poll = \"30s\"\n{extra_config}");
        self.host
            .write_file("/etc/drover/agent.toml", config.as_bytes(), 0o644)?;
        self.host.check(&["systemctl", "start", AGENT_UNIT])?;
        Ok(())
    }

    /// `drover-agent status -o json` inside the host.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let text = self.host.check(&["drover-agent", "status", "-o", "json"])?;
        serde_json::from_str(&text).context("drover-agent status -o json")
    }

    /// The status of one app in `drover-agent status`.
    pub fn app_status(&self, app: &str) -> Option<serde_json::Value> {
        let status = self.status().ok()?;
        status["apps"]
            .as_array()?
            .iter()
            .find(|entry| entry["app"] == app)
            .cloned()
    }

    /// What the app on `port` answers at `/` (from the machine: hosts share loopback).
    pub fn get(port: u16, path: &str) -> Option<String> {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.").then(|| body.trim().to_owned())
    }

    /// Waits until the app on `port` answers `drover-sample-app VERSION`.
    pub fn wait_serving(&self, port: u16, version: &str, timeout: Duration) -> anyhow::Result<()> {
        let expected = format!("drover-sample-app {version}");
        self.host.wait_until(
            &format!("the app on port {port} to serve {version}"),
            timeout,
            Duration::from_millis(100),
            || AgentHost::get(port, "/").as_deref() == Some(expected.as_str()),
        )
    }

    /// Waits until `drover-agent status` shows `app` in `state`.
    pub fn wait_state(&self, app: &str, state: &str, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        self.wait_status(app, &format!("{app} to be {state}"), timeout, |entry| {
            entry["state"] == state
        })
    }

    /// Waits until `drover-agent status` shows `app` healthy on `version`, no switch pending.
    pub fn wait_healthy(&self, app: &str, version: &str, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        self.wait_status(app, &format!("{app} {version} to be healthy"), timeout, |entry| {
            entry["state"] == "healthy" && entry["current"] == version && entry["interrupted"].is_null()
        })
    }

    /// Waits until `drover-agent status` shows `app` meeting `condition`.
    pub fn wait_status(
        &self,
        app: &str,
        description: &str,
        timeout: Duration,
        condition: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let mut last = None;
        self.host.wait_until(
            &format!("{description} in drover-agent status"),
            timeout,
            Duration::from_millis(200),
            || {
                last = self.app_status(app);
                last.as_ref().is_some_and(&condition)
            },
        )?;
        Ok(last.unwrap_or_default())
    }

    /// The agent's main PID inside the host.
    pub fn agent_pid(&self) -> Option<u32> {
        self.host.pid_of_unit(AGENT_UNIT)
    }
}

/// A hostile coordinator: it holds the real coordinator's CA key (so the agent's TLS
/// checks pass, as they would against a compromised network position with a stolen
/// server key) and serves whatever manifest bytes the test sets, recording the reports
/// the agent sends. What stands between it and the host is the manifest check alone.
#[derive(Debug)]
pub struct Impostor {
    state: std::sync::Arc<std::sync::Mutex<ImpostorState>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct ImpostorState {
    manifest: Vec<u8>,
    generation: u64,
    reports: Vec<serde_json::Value>,
    files: std::collections::BTreeMap<String, Vec<u8>>,
}

impl Impostor {
    /// Serves on 127.0.0.1:`port` with a server certificate issued by the CA in `data_dir`.
    pub fn start(data_dir: &Path, port: u16) -> anyhow::Result<Impostor> {
        let ca_pem = std::fs::read_to_string(data_dir.join("ca.pem")).context("ca.pem")?;
        let ca_key = std::fs::read_to_string(data_dir.join("ca.key")).context("ca.key")?;
        let ca = drover_coordinator::server::pki::Ca::load(&ca_pem, &ca_key).context("loading the CA")?;
        let now = drover_protocol::Timestamp::from_system(std::time::SystemTime::now());
        let (cert, key) = ca
            .issue_server(&["127.0.0.1".to_owned()], now)
            .context("issuing a server certificate")?;
        let tls = drover_coordinator::server::http::tls_config(ca.cert_der(), &format!("{cert}{ca_pem}"), &key)
            .map_err(anyhow::Error::msg)?;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).context("binding the impostor")?;
        listener.set_nonblocking(true)?;
        let state = std::sync::Arc::new(std::sync::Mutex::new(ImpostorState::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = std::sync::Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("impostor runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                let mut stopped = stopped;
                loop {
                    let (stream, _) = tokio::select! {
                        accepted = listener.accept() => match accepted { Ok(pair) => pair, Err(_) => continue },
                        _ = &mut stopped => break,
                    };
                    let acceptor = acceptor.clone();
                    let shared = std::sync::Arc::clone(&shared);
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(stream).await else { return };
                        let service = hyper::service::service_fn(move |request| {
                            let shared = std::sync::Arc::clone(&shared);
                            async move { Ok::<_, std::convert::Infallible>(impostor_answer(request, &shared).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        Ok(Impostor {
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Serves `bytes` as the manifest from now on (a new ETag).
    pub fn serve(&self, bytes: Vec<u8>) {
        let mut state = self.state.lock().expect("impostor state");
        state.manifest = bytes;
        state.generation += 1;
    }

    /// Serves `bytes` at `path` (e.g. an artifact's `/v1/artifacts/sha256:...`).
    pub fn serve_file(&self, path: &str, bytes: Vec<u8>) {
        self.state
            .lock()
            .expect("impostor state")
            .files
            .insert(path.to_owned(), bytes);
    }

    /// The reports received so far.
    pub fn reports(&self) -> Vec<serde_json::Value> {
        self.state.lock().expect("impostor state").reports.clone()
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn impostor_answer(
    request: hyper::Request<hyper::body::Incoming>,
    shared: &std::sync::Mutex<ImpostorState>,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    use http_body_util::BodyExt as _;
    let respond = |status: u16, etag: Option<String>, body: Vec<u8>| {
        let mut response = hyper::Response::builder().status(status);
        if let Some(etag) = etag {
            response = response.header("etag", etag);
        }
        response
            .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
            .expect("response")
    };
    let path = request.uri().path().to_owned();
    if path == "/v1/agent/report" {
        let body = request
            .into_body()
            .collect()
            .await
            .map(|body| body.to_bytes())
            .unwrap_or_default();
        if let Ok(report) = serde_json::from_slice(&body) {
            shared.lock().expect("impostor state").reports.push(report);
        }
        return respond(204, None, Vec::new());
    }
    if path == "/v1/agent/manifest" {
        let known = request
            .headers()
            .get("if-none-match")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let (etag, manifest) = {
            let state = shared.lock().expect("impostor state");
            (format!("\"impostor-{}\"", state.generation), state.manifest.clone())
        };
        if known.as_deref() == Some(etag.as_str()) || manifest.is_empty() {
            // A short long-poll: the test changes the manifest at any time.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return respond(304, Some(etag), Vec::new());
        }
        return respond(200, Some(etag), manifest);
    }
    let file = shared.lock().expect("impostor state").files.get(&path).cloned();
    match file {
        Some(bytes) => respond(200, None, bytes),
        None => respond(404, None, b"{\"error\":\"not here\"}".to_vec()),
    }
}
