//! drover-load: a load generator that speaks the coordinator's real protocol over mTLS,
//! for `scripts/bench-coordinator.sh` (see BENCHMARKS.md, "Coordinator (issue 3)").
//!
//! - `enroll`: creates tokens and joins N simulated hosts (`load-00000`, ...) with bounded
//!   parallelism, each with its own key and CSR, and writes each host's certificate and
//!   key so the other commands can reuse them.
//! - `polls`: conditional `GET`s answered 304 over keep-alive HTTPS connections; each
//!   connection is one enrolled host (its own client certificate), or presents no
//!   certificate at all (`--no-client-cert`, e.g. against nginx). Same code either way.
//! - `reports`: posts host reports from many connections, then checks in SQLite that
//!   every accepted report arrived.
//! - `pin-latency`: long-polling agents wait on their current ETag, a fleet-wide pin is
//!   made, and the time until every one of them holds the new, verified manifest is
//!   measured.
//! - `hold`: the coordinator's memory per held long-poll: its VmRSS with N enrolled hosts
//!   not connected, then connected (one keep-alive connection each, after one GET), then
//!   each of them long-polling, then after they hung up (BENCHMARKS.md, issue 16).
//!
//! Every command runs on one current-thread runtime (the benchmark pins it to one core),
//! sends traffic to loopback addresses only, and bounds each loop by count and time.
//! Results are `RESULT key=value ...` lines on stdout; progress and a summary go to stderr.

#![forbid(unsafe_code)]

// The helpers live beside this file in drover-load/ (not directly in src/bin/, where
// Cargo would take each one for a binary of its own).
#[path = "drover-load/client.rs"]
mod client;
#[path = "drover-load/stats.rs"]
mod stats;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration as StdDuration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::{Args, Parser, Subcommand};
use drover_protocol::api::{JoinRequest, JoinResponse, TokenRequest, TokenResponse};
use drover_protocol::report::{AppReport, AppState, REPORT_SCHEMA, ReportEvent};
use drover_protocol::{Duration, HostId, HostReport, Trust, accept};
use drover_tests::fleet::facts;
use drover_tests::now_real;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};

use crate::client::{Connection, Target, read_text, tls_config};
use crate::stats::{Histogram, Tally, cpu_seconds, machine_busy_seconds};

/// Generous bound for one admin or join exchange.
const EXCHANGE_TIMEOUT: StdDuration = StdDuration::from_secs(60);
/// How long after its planned end a load phase may take to wind down before it counts
/// as hung.
const WIND_DOWN: StdDuration = StdDuration::from_secs(30);
/// Events the coordinator keeps per host (`drover_coordinator::server::store::EVENTS_PER_HOST`).
const EVENTS_KEPT_PER_HOST: u64 = drover_coordinator::server::store::EVENTS_PER_HOST as u64;

/// Load generator for the drover coordinator (loopback only).
#[derive(Debug, Parser)]
#[command(name = "drover-load", max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll N simulated hosts and store their certificates and keys.
    Enroll(EnrollArgs),
    /// Conditional GETs answered 304 over keep-alive HTTPS (drover or any HTTPS server).
    Polls(PollsArgs),
    /// Post host reports for a fixed time, then check that SQLite has every accepted one.
    Reports(ReportsArgs),
    /// Time a fleet-wide pin until long-polling agents hold the new manifest.
    PinLatency(PinArgs),
    /// Measure the coordinator's memory per held long-poll (VmRSS, /proc).
    Hold(HoldArgs),
}

#[derive(Debug, Args)]
struct EnrollArgs {
    /// The coordinator, e.g. https://127.0.0.1:18600.
    #[arg(long)]
    url: String,
    /// The coordinator's data directory (admin token and CA are read from it).
    #[arg(long)]
    data_dir: PathBuf,
    /// How many hosts: load-00000 .. load-(N-1). Hosts already in --out are skipped.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    hosts: u32,
    /// Where the hosts' certificates and keys go.
    #[arg(long)]
    out: PathBuf,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=512))]
    parallel: u32,
    /// Give up when enrollment takes longer than this.
    #[arg(long, default_value = "30m")]
    max_time: Duration,
    /// The coordinator's PID, to report the CPU time it spent.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("client").required(true).args(["identities", "no_client_cert"]))]
struct PollsArgs {
    /// The full URL to poll, e.g. https://127.0.0.1:18600/v1/agent/manifest.
    #[arg(long)]
    url: String,
    /// The CA that signed the server's certificate (default: <identities>/ca.pem).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Enrolled hosts from `enroll`: connection i is host load-(first+i).
    #[arg(long)]
    identities: Option<PathBuf>,
    /// Present no client certificate (for servers other than drover).
    #[arg(long)]
    no_client_cert: bool,
    /// The first host index to use.
    #[arg(long, default_value_t = 0)]
    first: u32,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    connections: u32,
    /// Measured time.
    #[arg(long, default_value = "10s")]
    duration: Duration,
    /// Unmeasured time before it.
    #[arg(long, default_value = "1s")]
    warmup: Duration,
    /// A name for the RESULT line.
    #[arg(long, default_value = "target")]
    label: String,
    /// The server's PID (e.g. the nginx worker), to report its CPU time in the window.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Debug, Args)]
struct ReportsArgs {
    /// The coordinator, e.g. https://127.0.0.1:18600.
    #[arg(long)]
    url: String,
    /// Enrolled hosts from `enroll`: connection i is host load-(first+i).
    #[arg(long)]
    identities: PathBuf,
    /// The first host index to use.
    #[arg(long, default_value_t = 0)]
    first: u32,
    /// Keep-alive connections, one host each.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    connections: u32,
    /// How long to post.
    #[arg(long, default_value = "10s")]
    duration: Duration,
    /// Offered reports per second over all connections, paced per connection (each
    /// still waits for its answer before the next); 0 posts as fast as answers come.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// How long a connection waits after a 503 (the coordinator's writer is behind)
    /// before it posts again, as an agent backs off; 0 retries at once.
    #[arg(long, default_value = "0ms")]
    backoff: Duration,
    /// The coordinator's SQLite database: when given, wait (read-only, with the sqlite3
    /// command) until every accepted report is stored and check the latest per host.
    #[arg(long)]
    db: Option<PathBuf>,
    /// How long to wait for the database to catch up.
    #[arg(long, default_value = "60s")]
    flush_timeout: Duration,
    /// Marks this run's reports (default: from the clock).
    #[arg(long)]
    run_id: Option<String>,
    /// The coordinator's PID, to report its CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Debug, Args)]
struct PinArgs {
    /// The coordinator, e.g. https://127.0.0.1:18600. Several replicas on one database
    /// (issue 16): repeat it or give a comma list; the waiters are spread over them
    /// round-robin and the release and the pin go through the first, so the others learn
    /// of the pin through the database (NOTIFY and re-read).
    #[arg(long, visible_alias = "coordinator", required = true, value_delimiter = ',')]
    url: Vec<String>,
    /// The (first) coordinator's data directory (admin token; replicas share it).
    #[arg(long)]
    data_dir: PathBuf,
    /// Enrolled hosts from `enroll`.
    #[arg(long)]
    identities: PathBuf,
    /// How many hosts were enrolled; the waiters are spread evenly over them.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    hosts: u32,
    /// Long-polling agents (one connection and host each).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    waiters: u32,
    /// Waiters' connections opened at once while setting up (the coordinator closes the
    /// oldest beyond 512 that have not yet shown a client certificate).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=256))]
    parallel: u32,
    /// The long-poll's ?wait= seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=300))]
    wait: u64,
    /// The app to pin.
    #[arg(long, default_value = "bench")]
    app: String,
    /// The version to create and pin fleet-wide (must be new).
    #[arg(long)]
    version: String,
    /// Make the release's artifact a `remote_tarball` at a URL nothing fetches instead of
    /// uploading one: a coordinator on PostgreSQL refuses uploads (replicas share no disk).
    #[arg(long)]
    remote_artifact: bool,
    /// The coordinators' PIDs (repeat or comma list), to report their CPU time for the pin.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
}

#[derive(Debug, Args)]
struct HoldArgs {
    /// The coordinator, e.g. https://127.0.0.1:18600.
    #[arg(long)]
    url: String,
    /// Enrolled hosts from `enroll`; load-00000 .. load-(N-1) are held.
    #[arg(long)]
    identities: PathBuf,
    /// How many hosts long-poll at once (one connection each).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    hosts: u32,
    /// Connections opened at once (the coordinator closes the oldest beyond 512 that have
    /// not yet shown a client certificate).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=256))]
    parallel: u32,
    /// The long-poll's ?wait= seconds: longer than opening, settling and holding take.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=300))]
    wait: u64,
    /// How long to let the coordinator settle before each VmRSS reading.
    #[arg(long, default_value = "2s")]
    settle: Duration,
    /// How long to keep the long-polls held after measuring (e.g. for a heap profiler).
    #[arg(long, default_value = "0s")]
    hold_for: Duration,
    /// The coordinator's PID, whose VmRSS is read.
    #[arg(long)]
    server_pid: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("drover-load: starting the runtime failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Enroll(args) => enroll(args).await,
            Command::Polls(args) => polls(args).await,
            Command::Reports(args) => reports(args).await,
            Command::PinLatency(args) => pin_latency(args).await,
            Command::Hold(args) => hold(args).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("drover-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

// --- Identities ---------------------------------------------------------------------

/// The id of simulated host number `index`.
fn host_name(index: usize) -> String {
    format!("load-{index:05}")
}

fn certificate_path(dir: &Path, host: &str) -> PathBuf {
    dir.join(format!("{host}.crt.pem"))
}

fn key_path(dir: &Path, host: &str) -> PathBuf {
    dir.join(format!("{host}.key.pem"))
}

/// An enrolled host as `enroll` stored it.
#[derive(Debug)]
struct Identity {
    host: HostId,
    tls: Arc<rustls::ClientConfig>,
}

/// Opens `identity`'s keep-alive connection to `target` and GETs its manifest once
/// (TLS set up, the host's slot looked up): the connection and the 200 answer.
async fn first_poll(target: &Target, identity: &Identity) -> anyhow::Result<(Connection, client::Answer)> {
    let mut connection = Connection::open(target, identity.tls.clone()).await?;
    let answer = connection.get("/v1/agent/manifest", &[], EXCHANGE_TIMEOUT).await?;
    ensure!(
        answer.status == StatusCode::OK,
        "{}: first poll answered {} {}",
        identity.host,
        answer.status,
        answer.body_text()
    );
    Ok((connection, answer))
}

fn load_identity(dir: &Path, ca_pem: &str, index: usize) -> anyhow::Result<Identity> {
    let host = host_name(index);
    let certificate = read_text(&certificate_path(dir, &host))
        .with_context(|| format!("host {host} is not enrolled in {} (run enroll first)", dir.display()))?;
    let key = read_text(&key_path(dir, &host))?;
    Ok(Identity {
        host: host.parse().context("host id")?,
        tls: tls_config(ca_pem, Some((&certificate, &key))),
    })
}

/// Writes `contents` to a new file with `mode`, via a temporary name so that a file
/// that exists is always complete.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn server_cpu(pid: Option<u32>) -> Option<f64> {
    pid.and_then(|pid| cpu_seconds(&pid.to_string()))
}

fn client_cpu() -> f64 {
    cpu_seconds("self").unwrap_or(f64::NAN)
}

fn format_cpu(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "-".to_owned(), |seconds| format!("{seconds:.2}"))
}

/// The CPU other processes used during a run, in percent of one CPU ("-" when the
/// server's PID was not given): the machine's busy time minus the server's and ours.
fn other_cpu_pct(machine: Option<(f64, f64)>, server: Option<f64>, client: f64, seconds: f64) -> String {
    match (machine, server) {
        (Some((before, after)), Some(server)) => {
            format!("{:.0}", ((after - before - server - client) * 100.0 / seconds).max(0.0))
        }
        _ => "-".to_owned(),
    }
}

fn ms(duration: StdDuration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

// --- enroll -------------------------------------------------------------------------

struct EnrollShared {
    target: Target,
    tls: Arc<rustls::ClientConfig>,
    admin_token: String,
    out: PathBuf,
    hosts: usize,
    next: AtomicUsize,
    joined: AtomicUsize,
    trust_written: AtomicBool,
    started: Instant,
    deadline: Instant,
}

#[derive(Default)]
struct EnrollTally {
    joined: u64,
    skipped: u64,
    latency: Histogram,
}

async fn enroll(args: EnrollArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.url)?;
    let admin_token = read_text(&args.data_dir.join("admin.token"))?.trim().to_owned();
    let ca_pem = read_text(&args.data_dir.join("ca.pem"))?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let ca_copy = args.out.join("ca.pem");
    if ca_copy.exists() && read_text(&ca_copy)? != ca_pem {
        bail!(
            "{} holds hosts of another coordinator (another CA); use an empty directory",
            args.out.display()
        );
    }
    write_file(&ca_copy, ca_pem.as_bytes(), 0o644)?;
    let started = Instant::now();
    let shared = Arc::new(EnrollShared {
        tls: tls_config(&ca_pem, None),
        target,
        admin_token,
        out: args.out.clone(),
        hosts: args.hosts as usize,
        next: AtomicUsize::new(0),
        joined: AtomicUsize::new(0),
        trust_written: AtomicBool::new(args.out.join("trust.json").exists()),
        started,
        deadline: started + args.max_time.to_std(),
    });
    let server_before = server_cpu(args.server_pid);
    let client_before = client_cpu();
    let workers: Vec<_> = (0..args.parallel)
        .map(|_| tokio::spawn(enroll_worker(shared.clone())))
        .collect();
    let mut total = EnrollTally::default();
    for worker in workers {
        let tally = worker.await.context("enroll worker panicked")??;
        total.joined += tally.joined;
        total.skipped += tally.skipped;
        total.latency.merge(&tally.latency);
    }
    let wall = started.elapsed();
    let server = server_before.zip(server_cpu(args.server_pid)).map(|(a, b)| b - a);
    let client = client_cpu() - client_before;
    let rate = total.joined as f64 / wall.as_secs_f64();
    println!(
        "RESULT enroll hosts={} joined={} skipped={} parallel={} wall_s={:.2} joins_per_s={rate:.1} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} server_cpu_s={} client_cpu_s={client:.2}",
        args.hosts,
        total.joined,
        total.skipped,
        args.parallel,
        wall.as_secs_f64(),
        total.latency.quantile_us(0.5) as f64 / 1000.0,
        total.latency.quantile_us(0.99) as f64 / 1000.0,
        total.latency.max_us() as f64 / 1000.0,
        format_cpu(server),
    );
    eprintln!(
        "enroll: {} hosts joined ({} already there) in {:.1} s = {rate:.0} joins/s with {} in flight",
        total.joined,
        total.skipped,
        wall.as_secs_f64(),
        args.parallel
    );
    Ok(())
}

async fn enroll_worker(shared: Arc<EnrollShared>) -> anyhow::Result<EnrollTally> {
    let mut tally = EnrollTally::default();
    let mut connection: Option<Connection> = None;
    loop {
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        if index >= shared.hosts {
            return Ok(tally);
        }
        if Instant::now() > shared.deadline {
            bail!("enrollment did not finish within --max-time");
        }
        let host = host_name(index);
        if certificate_path(&shared.out, &host).exists() {
            tally.skipped += 1;
            continue;
        }
        let started = Instant::now();
        // A broken keep-alive connection is replaced; an answer other than success is
        // fatal (retrying a join that may have happened would only hide the problem).
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut open = match connection.take() {
                Some(open) => open,
                None => Connection::open(&shared.target, shared.tls.clone()).await?,
            };
            match join_one(&shared, &mut open, &host).await {
                Ok(()) => {
                    connection = Some(open);
                    break;
                }
                Err(JoinFailure::Connection(error)) if attempts < 3 => {
                    eprintln!("enroll: {host}: {error:#}; reconnecting");
                }
                Err(JoinFailure::Connection(error) | JoinFailure::Refused(error)) => {
                    return Err(error.context(format!("enrolling {host}")));
                }
            }
        }
        tally.latency.record(started.elapsed());
        tally.joined += 1;
        let joined = shared.joined.fetch_add(1, Ordering::Relaxed) + 1;
        if joined.is_multiple_of(1000) {
            let elapsed = shared.started.elapsed().as_secs_f64();
            eprintln!(
                "enroll: {joined} joined in {elapsed:.1} s ({:.0}/s)",
                joined as f64 / elapsed
            );
        }
    }
}

enum JoinFailure {
    /// The connection failed: safe to retry on a new one only before anything was sent
    /// (the token request is the first thing, and a lost token does no harm).
    Connection(anyhow::Error),
    /// The coordinator refused.
    Refused(anyhow::Error),
}

async fn join_one(shared: &EnrollShared, connection: &mut Connection, host: &str) -> Result<(), JoinFailure> {
    let request = TokenRequest {
        labels: BTreeMap::new(),
        ttl: Duration::from_secs(3600),
        replace: None,
        allow_loopback: false,
    };
    let body = serde_json::to_vec(&request).map_err(|error| JoinFailure::Refused(error.into()))?;
    let answer = connection
        .send_body(
            Method::POST,
            "/v1/admin/tokens",
            Some(&shared.admin_token),
            "application/json",
            body.into(),
            EXCHANGE_TIMEOUT,
        )
        .await
        .map_err(JoinFailure::Connection)?;
    if answer.status != StatusCode::CREATED {
        return Err(JoinFailure::Refused(anyhow::anyhow!(
            "token: {} {}",
            answer.status,
            answer.body_text()
        )));
    }
    let token: TokenResponse =
        serde_json::from_slice(&answer.body).map_err(|error| JoinFailure::Refused(error.into()))?;
    let refused = |error: anyhow::Error| JoinFailure::Refused(error);
    let host_id: HostId = host.parse().map_err(|error| refused(anyhow::anyhow!("{error}")))?;
    let (csr_pem, key_pem) = drover_coordinator::server::pki::make_host_csr(&host_id)
        .map_err(|error| refused(anyhow::anyhow!("CSR: {error}")))?;
    let request = JoinRequest {
        token: token.token,
        host_id,
        csr_pem,
        facts: facts(),
    };
    let body = serde_json::to_vec(&request).map_err(|error| refused(error.into()))?;
    // From here on a failure is not retried: the join may have happened.
    let answer = connection
        .send_body(
            Method::POST,
            "/v1/join",
            None,
            "application/json",
            body.into(),
            EXCHANGE_TIMEOUT,
        )
        .await
        .map_err(refused)?;
    if answer.status != StatusCode::OK {
        return Err(refused(anyhow::anyhow!(
            "join: {} {}",
            answer.status,
            answer.body_text()
        )));
    }
    let joined: JoinResponse = serde_json::from_slice(&answer.body).map_err(|error| refused(error.into()))?;
    write_file(&key_path(&shared.out, host), key_pem.as_bytes(), 0o600).map_err(refused)?;
    // The certificate is written last: its presence means the host is complete.
    write_file(
        &certificate_path(&shared.out, host),
        joined.certificate_pem.as_bytes(),
        0o644,
    )
    .map_err(refused)?;
    if !shared.trust_written.swap(true, Ordering::Relaxed) {
        write_file(&shared.out.join("trust.json"), joined.trust.as_bytes(), 0o644).map_err(refused)?;
    }
    Ok(())
}

// --- polls --------------------------------------------------------------------------

async fn polls(args: PollsArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.url)?;
    ensure!(!target.path.is_empty(), "--url needs the path to poll");
    let ca_path = match (&args.ca, &args.identities) {
        (Some(ca), _) => ca.clone(),
        (None, Some(identities)) => identities.join("ca.pem"),
        (None, None) => bail!("--ca is needed with --no-client-cert"),
    };
    let ca_pem = read_text(&ca_path)?;
    let count = args.connections as usize;
    let anonymous = tls_config(&ca_pem, None);
    let mut configs = Vec::with_capacity(count);
    for index in 0..count {
        configs.push(match &args.identities {
            Some(dir) => load_identity(dir, &ca_pem, args.first as usize + index)?.tls,
            None => anonymous.clone(),
        });
    }

    // Connect everything and learn each connection's current ETag (unconditional GET,
    // 200), before any timing starts.
    let opening = configs.into_iter().map(|tls| {
        let target = target.clone();
        async move {
            let mut connection = Connection::open(&target, tls).await?;
            let path = connection.path().to_owned();
            let answer = connection.get(&path, &[], EXCHANGE_TIMEOUT).await?;
            ensure!(
                answer.status == StatusCode::OK,
                "GET {path}: expected 200, got {} {}",
                answer.status,
                answer.body_text()
            );
            let etag = answer.etag().with_context(|| format!("GET {path}: no ETag"))?;
            anyhow::Ok((connection, etag, answer.body.len()))
        }
    });
    let opened = futures_util::future::try_join_all(opening).await?;
    let cipher = opened
        .first()
        .map_or_else(String::new, |(connection, _, _)| connection.cipher.clone());
    let body_bytes = opened.first().map_or(0, |(_, _, size)| *size);

    let uri: Uri = target.path.parse().context("path")?;
    let window_start = Instant::now() + args.warmup.to_std();
    let window_end = window_start + args.duration.to_std();
    let loops: Vec<_> = opened
        .into_iter()
        .map(|(connection, etag, _)| {
            tokio::spawn(tokio::time::timeout(
                window_end - Instant::now() + WIND_DOWN,
                poll_loop(connection, uri.clone(), etag, window_start, window_end),
            ))
        })
        .collect();
    tokio::time::sleep_until(window_start.into()).await;
    let (server_before, client_before, machine_before) =
        (server_cpu(args.server_pid), client_cpu(), machine_busy_seconds());
    tokio::time::sleep_until(window_end.into()).await;
    let (server_after, client_after, machine_after) =
        (server_cpu(args.server_pid), client_cpu(), machine_busy_seconds());
    let mut total = Tally::default();
    for handle in loops {
        let tally = handle
            .await
            .context("poll loop panicked")?
            .context("a poll connection hung past the end of the run")?;
        total.merge(&tally);
    }

    let seconds = args.duration.to_std().as_secs_f64();
    let rate = total.ok as f64 / seconds;
    let server = server_before.zip(server_after).map(|(a, b)| b - a);
    let client = client_after - client_before;
    let server_us_per_request = server.map(|cpu| cpu * 1e6 / total.ok.max(1) as f64);
    let other = other_cpu_pct(machine_before.zip(machine_after), server, client, seconds);
    println!(
        "RESULT polls label={} connections={count} window_s={seconds:.2} ok={} rps={rate:.0} unexpected={} statuses={} failures={} p50_us={} p90_us={} p99_us={} max_us={} client_cpu_pct={:.0} server_cpu_pct={} server_us_per_req={} other_cpu_pct={other} cipher={cipher} first_body_bytes={body_bytes}",
        args.label,
        total.ok,
        total.unexpected(),
        total.statuses_text(),
        total.failures,
        total.latency.quantile_us(0.5),
        total.latency.quantile_us(0.9),
        total.latency.quantile_us(0.99),
        total.latency.max_us(),
        client * 100.0 / seconds,
        server.map_or_else(|| "-".to_owned(), |cpu| format!("{:.0}", cpu * 100.0 / seconds)),
        server_us_per_request.map_or_else(|| "-".to_owned(), |us| format!("{us:.1}")),
    );
    eprintln!(
        "polls {}: {rate:.0} answers 304/s over {count} connections for {seconds:.1} s, p99 {} µs, client CPU {:.0} %",
        args.label,
        total.latency.quantile_us(0.99),
        client * 100.0 / seconds
    );
    if let Some(detail) = &total.first_unexpected {
        eprintln!("polls {}: first unexpected answer: {detail}", args.label);
    }
    if let Some(detail) = &total.first_failure {
        eprintln!("polls {}: first connection failure: {detail}", args.label);
    }
    ensure!(
        total.unexpected() == 0 && total.failures == 0,
        "{} unexpected answers and {} failed connections",
        total.unexpected(),
        total.failures
    );
    ensure!(total.ok > 0, "no answer at all in the measured window");
    Ok(())
}

/// Conditional GETs on one connection until `window_end`; counts the answers that
/// complete inside the window.
async fn poll_loop(
    mut connection: Connection,
    uri: Uri,
    etag: HeaderValue,
    window_start: Instant,
    window_end: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let authority = connection.authority();
    // Bounded: the loop ends at window_end, and the caller's timeout ends a hung one.
    while Instant::now() < window_end {
        let request = Request::get(uri.clone())
            .header(header::HOST, authority.clone())
            .header(header::IF_NONE_MATCH, etag.clone())
            .body(http_body_util::Full::default())
            .expect("a valid request");
        let sent = Instant::now();
        match connection.send_unbounded(request).await {
            Ok(answer) => {
                let done = Instant::now();
                if done < window_start || done >= window_end {
                    continue;
                }
                if answer.status == StatusCode::NOT_MODIFIED {
                    tally.ok += 1;
                    tally.latency.record(done - sent);
                } else {
                    *tally.other_statuses.entry(answer.status.as_u16()).or_default() += 1;
                    if tally.first_unexpected.is_none() {
                        tally.first_unexpected = Some(format!("{} {}", answer.status, answer.body_text()));
                    }
                }
            }
            Err(error) => {
                tally.failures += 1;
                tally.first_failure = Some(format!("{error:#}"));
                break;
            }
        }
    }
    tally
}

// --- reports ------------------------------------------------------------------------

/// What one report connection did.
#[derive(Debug, Default)]
struct ReportTally {
    tally: Tally,
    /// The sequence number of the last report answered 204.
    last_accepted: Option<u64>,
}

async fn reports(args: ReportsArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.url)?;
    let ca_pem = read_text(&args.identities.join("ca.pem"))?;
    let run_id = args.run_id.clone().unwrap_or_else(|| format!("r{}", now_real().unix()));
    ensure!(
        !run_id.is_empty() && run_id.chars().all(|c| c.is_ascii_alphanumeric()),
        "--run-id must be letters and digits"
    );
    let count = args.connections as usize;
    let mut identities = Vec::with_capacity(count);
    for index in 0..count {
        identities.push(load_identity(&args.identities, &ca_pem, args.first as usize + index)?);
    }
    let opening = identities.into_iter().map(|identity| {
        let target = target.clone();
        async move {
            let connection = Connection::open(&target, identity.tls.clone()).await?;
            anyhow::Ok((connection, identity.host))
        }
    });
    let opened = futures_util::future::try_join_all(opening).await?;

    let started = Instant::now();
    let end = started + args.duration.to_std();
    let (server_before, client_before, machine_before) =
        (server_cpu(args.server_pid), client_cpu(), machine_busy_seconds());
    // With --rate, connection i posts every `interval`, starting i/count of an interval
    // late, so the offered load is spread evenly.
    let interval = (args.rate > 0).then(|| StdDuration::from_secs_f64(count as f64 / f64::from(args.rate)));
    let loops: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(index, (connection, host))| {
            let pacing = interval.map(|interval| Pacing {
                first: started + interval.mul_f64(index as f64 / count as f64),
                interval,
            });
            let plan = ReportPlan {
                run_id: run_id.clone(),
                end,
                pacing,
                backoff: args.backoff.to_std(),
            };
            let host_for_result = host.clone();
            let handle = tokio::spawn(tokio::time::timeout(
                end - Instant::now() + WIND_DOWN,
                report_loop(connection, host, plan),
            ));
            (host_for_result, handle)
        })
        .collect();
    let mut total = Tally::default();
    let mut last_accepted: HashMap<HostId, u64> = HashMap::new();
    let mut expected_events = 0u64;
    for (host, handle) in loops {
        let result = handle
            .await
            .context("report loop panicked")?
            .context("a report connection hung past the end of the run")?;
        expected_events += result.tally.ok.min(EVENTS_KEPT_PER_HOST);
        if let Some(sequence) = result.last_accepted {
            last_accepted.insert(host, sequence);
        }
        total.merge(&result.tally);
    }
    let load_time = started.elapsed();
    let (server_after, client_after, machine_after) =
        (server_cpu(args.server_pid), client_cpu(), machine_busy_seconds());
    let seconds = load_time.as_secs_f64();
    let rate = total.ok as f64 / seconds;
    // The coordinator sheds load with 503 report_queue_full when its writer is behind.
    let queue_full = total.other_statuses.get(&503).copied().unwrap_or(0);

    let mut database = String::from("db=-");
    if let Some(db) = &args.db {
        let flush = wait_for_reports(
            db,
            &run_id,
            expected_events,
            &last_accepted,
            args.flush_timeout.to_std(),
        )
        .await?;
        // Every accepted report was written: each host's latest is its last accepted one,
        // and each host holds all of this run's events SQLite keeps (the rest were
        // inserted and trimmed in the same transactions).
        let ingested_rate = total.ok as f64 / (seconds + flush.lag.as_secs_f64());
        database = format!(
            "db=checked events_expected={expected_events} events_stored={} latest_ok={}/{} flush_lag_ms={:.0} ingested_per_s={ingested_rate:.0}",
            flush.rows,
            flush.latest_matching,
            last_accepted.len(),
            ms(flush.lag),
        );
        eprintln!(
            "reports: SQLite holds {} of {expected_events} expected events and the last accepted report of {}/{} hosts, {:.0} ms after the load ended ({ingested_rate:.0} reports/s end to end)",
            flush.rows,
            flush.latest_matching,
            last_accepted.len(),
            ms(flush.lag),
        );
        ensure!(
            flush.rows >= expected_events && flush.latest_matching == last_accepted.len(),
            "SQLite is missing reports after {:.0} ms: {} of {expected_events} events, latest report right for {} of {} hosts",
            ms(flush.lag),
            flush.rows,
            flush.latest_matching,
            last_accepted.len()
        );
    }
    let server = server_before.zip(server_after).map(|(a, b)| b - a);
    let client = client_after - client_before;
    let other = other_cpu_pct(machine_before.zip(machine_after), server, client, seconds);
    println!(
        "RESULT reports connections={count} run={run_id} offered_rate={} backoff_ms={} seconds={seconds:.2} accepted={} accepted_per_s={rate:.0} queue_full={queue_full} statuses={} failures={} p50_us={} p99_us={} max_us={} server_cpu_s={} client_cpu_s={client:.2} other_cpu_pct={other} {database}",
        if args.rate == 0 {
            "max".to_owned()
        } else {
            args.rate.to_string()
        },
        args.backoff.as_millis(),
        total.ok,
        total.statuses_text(),
        total.failures,
        total.latency.quantile_us(0.5),
        total.latency.quantile_us(0.99),
        total.latency.max_us(),
        format_cpu(server),
    );
    eprintln!(
        "reports: {} accepted in {seconds:.1} s = {rate:.0}/s over {count} connections ({queue_full} refused as queue full)",
        total.ok
    );
    if let Some(detail) = &total.first_unexpected {
        eprintln!("reports: first unexpected answer: {detail}");
    }
    if let Some(detail) = &total.first_failure {
        eprintln!("reports: first connection failure: {detail}");
    }
    ensure!(total.failures == 0, "{} connections failed", total.failures);
    ensure!(
        total.unexpected() == queue_full,
        "unexpected answers: {}",
        total.statuses_text()
    );
    Ok(())
}

/// A report as a healthy agent sends it, marked with the run and a sequence number (in
/// the agent version fact, so the stored latest report shows which one it is) and
/// carrying one event (so every accepted report leaves a row in SQLite).
fn load_report(host: &HostId, run_id: &str, sequence: u64) -> HostReport {
    let now = now_real();
    let app = "bench".parse().expect("valid app name");
    let version: drover_protocol::Version = "1.0.0".parse().expect("valid version");
    let mut agent = facts();
    agent.agent_version = format!("load {run_id} {sequence}");
    HostReport {
        schema: REPORT_SCHEMA,
        host: host.clone(),
        sent_at: now,
        manifest_serial: Some(1),
        held: false,
        manifest_rejection: None,
        facts: agent,
        apps: [(
            app,
            AppReport {
                current: Some(version.clone()),
                desired: Some(version),
                state: AppState::Healthy,
                health: Some("http 200 in 3 ms".into()),
                last_error: None,
                bad_versions: Vec::new(),
            },
        )]
        .into(),
        events: vec![ReportEvent {
            at: now,
            app: Some("bench".parse().expect("valid app name")),
            message: format!("load {run_id} {host} {sequence}"),
        }],
    }
}

/// When one report connection posts.
#[derive(Clone, Copy, Debug)]
struct Pacing {
    first: Instant,
    interval: StdDuration,
}

/// What one report connection does.
#[derive(Clone, Debug)]
struct ReportPlan {
    run_id: String,
    end: Instant,
    pacing: Option<Pacing>,
    backoff: StdDuration,
}

async fn report_loop(mut connection: Connection, host: HostId, plan: ReportPlan) -> ReportTally {
    let mut result = ReportTally::default();
    let mut sequence = 0u64;
    let mut next = plan.pacing.map(|pacing| pacing.first);
    // Bounded: the loop ends at `end`, and the caller's timeout ends a hung one.
    while Instant::now() < plan.end {
        if let (Some(at), Some(pacing)) = (next, plan.pacing) {
            if at >= plan.end {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            // A connection that fell behind does not burst to catch up.
            next = Some((at + pacing.interval).max(Instant::now()));
        }
        let body =
            Bytes::from(serde_json::to_vec(&load_report(&host, &plan.run_id, sequence)).expect("report serializes"));
        let request = connection
            .request(Method::POST, "/v1/agent/report")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .body(http_body_util::Full::new(body))
            .expect("a valid request");
        let sent = Instant::now();
        match connection.send_unbounded(request).await {
            Ok(answer) if answer.status == StatusCode::NO_CONTENT => {
                result.tally.ok += 1;
                result.tally.latency.record(sent.elapsed());
                result.last_accepted = Some(sequence);
            }
            Ok(answer) => {
                *result.tally.other_statuses.entry(answer.status.as_u16()).or_default() += 1;
                if result.tally.first_unexpected.is_none() {
                    result.tally.first_unexpected = Some(format!("{} {}", answer.status, answer.body_text()));
                }
                if answer.status == StatusCode::SERVICE_UNAVAILABLE && !plan.backoff.is_zero() {
                    let until = (Instant::now() + plan.backoff).min(plan.end);
                    tokio::time::sleep_until(until.into()).await;
                }
            }
            Err(error) => {
                result.tally.failures += 1;
                result.tally.first_failure = Some(format!("{error:#}"));
                break;
            }
        }
        sequence += 1;
    }
    result
}

/// Runs one query with the sqlite3 command on a read-only connection.
fn sqlite(db: &Path, query: &str) -> anyhow::Result<String> {
    let output = std::process::Command::new("sqlite3")
        .args(["-readonly", "-batch", "-noheader", "-cmd", ".timeout 5000"])
        .arg(db)
        .arg(query)
        .output()
        .context("running sqlite3 (apt-get install sqlite3)")?;
    ensure!(
        output.status.success(),
        "sqlite3 {query}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

struct Flush {
    /// This run's events in SQLite.
    rows: u64,
    /// Hosts whose stored latest report is the last one they got a 204 for.
    latest_matching: usize,
    /// How long after the load ended SQLite had everything.
    lag: StdDuration,
}

/// Waits until SQLite has this run's events (`expected`; hosts keep at most
/// [`EVENTS_KEPT_PER_HOST`]) and, for every host, the last report it got a 204 for as
/// its latest report; gives up after `timeout`.
async fn wait_for_reports(
    db: &Path,
    run_id: &str,
    expected: u64,
    last_accepted: &HashMap<HostId, u64>,
    timeout: StdDuration,
) -> anyhow::Result<Flush> {
    let started = Instant::now();
    let count = format!("SELECT count(*) FROM events WHERE message LIKE 'load {run_id} %';");
    // Bounded by `timeout`.
    loop {
        let rows: u64 = sqlite(db, &count)?.trim().parse().context("sqlite3 count")?;
        let stored = latest_reports(db, run_id)?;
        let latest_matching = last_accepted
            .iter()
            .filter(|&(host, sequence)| stored.get(host.as_str()) == Some(sequence))
            .count();
        let lag = started.elapsed();
        if (rows >= expected && latest_matching == last_accepted.len()) || lag > timeout {
            return Ok(Flush {
                rows,
                latest_matching,
                lag,
            });
        }
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
}

/// The sequence number of each host's stored latest report from this run.
fn latest_reports(db: &Path, run_id: &str) -> anyhow::Result<HashMap<String, u64>> {
    let query = format!(
        "SELECT host, json_extract(report, '$.facts.agent_version') FROM reports WHERE json_extract(report, '$.facts.agent_version') LIKE 'load {run_id} %';"
    );
    let text = sqlite(db, &query)?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (host, version) = line.split_once('|')?;
            let sequence = version.rsplit(' ').next()?.parse().ok()?;
            Some((host.to_owned(), sequence))
        })
        .collect())
}

// --- pin-latency ----------------------------------------------------------------------

/// An admin API call on `connection`; returns the parsed JSON answer.
async fn admin_call(
    connection: &mut Connection,
    token: &str,
    method: Method,
    path: &str,
    body: serde_json::Value,
    expected: StatusCode,
) -> anyhow::Result<serde_json::Value> {
    let answer = connection
        .send_body(
            method.clone(),
            path,
            Some(token),
            "application/json",
            serde_json::to_vec(&body)?.into(),
            EXCHANGE_TIMEOUT,
        )
        .await?;
    ensure!(
        answer.status == expected,
        "{method} {path}: expected {expected}, got {} {}",
        answer.status,
        answer.body_text()
    );
    Ok(serde_json::from_slice(&answer.body).unwrap_or(serde_json::Value::Null))
}

/// `drover_manifest_polls_total` from /metrics.
async fn polls_counter(connection: &mut Connection) -> anyhow::Result<u64> {
    let answer = connection.get("/metrics", &[], EXCHANGE_TIMEOUT).await?;
    ensure!(answer.status == StatusCode::OK, "GET /metrics: {}", answer.status);
    let text = String::from_utf8_lossy(&answer.body);
    text.lines()
        .find_map(|line| line.strip_prefix("drover_manifest_polls_total "))
        .and_then(|value| value.trim().parse().ok())
        .context("/metrics has no drover_manifest_polls_total")
}

/// One long-polling agent after the pin: when its answer came and what it was.
struct Waited {
    host: HostId,
    /// Which of `--url` it long-polls.
    replica: usize,
    old_serial: u64,
    old_etag: HeaderValue,
    arrived: Instant,
    answer: anyhow::Result<client::Answer>,
}

/// The coordinators' CPU seconds together (None when no PID was given or one is gone).
fn servers_cpu(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|pid| server_cpu(Some(*pid))).sum()
}

/// `drover_manifest_polls_total` of every coordinator together (each counts its own).
async fn polls_counters(connections: &mut [Connection]) -> anyhow::Result<u64> {
    let mut total = 0;
    for connection in connections {
        total += polls_counter(connection).await?;
    }
    Ok(total)
}

/// Latency quantile `q` (0 = first, 1 = last) of sorted `latencies`, in ms.
fn quantile_ms(latencies: &[StdDuration], q: f64) -> f64 {
    latencies
        .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
        .map_or(f64::NAN, |latency| ms(*latency))
}

async fn pin_latency(args: PinArgs) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    let targets = args
        .url
        .iter()
        .map(|url| Target::parse(url))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let target = &targets[0];
    let token = read_text(&args.data_dir.join("admin.token"))?.trim().to_owned();
    let ca_pem = read_text(&args.identities.join("ca.pem"))?;
    let trust_bytes = std::fs::read(args.identities.join("trust.json")).context("reading trust.json")?;
    let trust = Trust::bootstrap(&trust_bytes, now_real()).context("the stored trust document")?;
    let waiters = args.waiters.min(args.hosts) as usize;

    // The release to pin, over a warm admin connection (so the timed call pays no handshake).
    let mut admin = Connection::open(target, tls_config(&ca_pem, None)).await?;
    let artifact = if args.remote_artifact {
        let payload = format!("drover-load artifact {}", args.version);
        serde_json::json!({
            "kind": "remote_tarball",
            "url": format!("https://artifacts.example/{}-{}.tar.gz", args.app, args.version),
            "digest": drover_protocol::Digest::of(payload.as_bytes()).to_string(),
            "size": payload.len(),
        })
    } else {
        let tarball = drover_tests::app_tarball(format!("drover-load artifact {}", args.version).as_bytes());
        let answer = admin
            .send_body(
                Method::POST,
                "/v1/admin/artifacts",
                Some(&token),
                "application/octet-stream",
                tarball.into(),
                EXCHANGE_TIMEOUT,
            )
            .await?;
        ensure!(
            answer.status == StatusCode::CREATED,
            "upload: {} {} (a coordinator on PostgreSQL refuses uploads: use --remote-artifact)",
            answer.status,
            answer.body_text()
        );
        let blob: serde_json::Value = serde_json::from_slice(&answer.body)?;
        serde_json::json!({"kind": "stored_tarball", "digest": blob["digest"]})
    };
    let release = serde_json::json!({
        "app": args.app, "version": args.version,
        "spec": {"service": {"command": ["bin/app"]}},
        "artifact": artifact,
    });
    admin_call(
        &mut admin,
        &token,
        Method::POST,
        "/v1/admin/releases",
        release,
        StatusCode::CREATED,
    )
    .await?;
    drop(admin);

    // The waiters: hosts spread over the fleet, each on its own connection to coordinator
    // `slot % n`, each with its current manifest (verified, for its serial) and ETag,
    // opened a bounded number at a time.
    let stride = args.hosts as usize / waiters;
    let mut identities = Vec::with_capacity(waiters);
    for slot in 0..waiters {
        identities.push((
            slot % targets.len(),
            load_identity(&args.identities, &ca_pem, slot * stride)?,
        ));
    }
    let opened = futures_util::stream::iter(identities)
        .map(|(replica, identity)| {
            let target = targets[replica].with_path("/v1/agent/manifest");
            let trust = &trust;
            async move {
                let (connection, answer) = first_poll(&target, &identity).await?;
                let etag = answer.etag().context("no ETag")?;
                let verified = accept(&answer.body, trust, &identity.host, None, now_real()).map_err(|rejection| {
                    anyhow::anyhow!("{}: current manifest rejected: {rejection}", identity.host)
                })?;
                anyhow::Ok((replica, connection, identity.host, etag, verified.manifest().serial))
            }
        })
        .buffer_unordered(args.parallel as usize)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;

    // One admin connection per coordinator for its /metrics (the first one's also makes
    // the pin), opened only now: a coordinator closes a connection without a client
    // certificate after 10 s idle, and opening 10,000 waiters takes longer than that.
    let mut counted = Vec::with_capacity(targets.len());
    for target in &targets {
        counted.push(Connection::open(target, tls_config(&ca_pem, None)).await?);
    }
    let before = polls_counters(&mut counted).await?;
    let wait = args.wait;
    let handles: Vec<_> = opened
        .into_iter()
        .map(|(replica, mut connection, host, etag, serial)| {
            tokio::spawn(async move {
                let path = format!("/v1/agent/manifest?wait={wait}");
                let answer = connection
                    .get(
                        &path,
                        &[(header::IF_NONE_MATCH, etag.clone())],
                        StdDuration::from_secs(wait) + WIND_DOWN,
                    )
                    .await;
                Waited {
                    host,
                    replica,
                    old_serial: serial,
                    old_etag: etag,
                    arrived: Instant::now(),
                    answer,
                }
            })
        })
        .collect();
    // Every long-poll must have reached its coordinator before the pin is made.
    let parked_within = StdDuration::from_secs(20 + waiters as u64 / 500);
    let parked_by = Instant::now() + parked_within;
    loop {
        let seen = polls_counters(&mut counted).await?;
        if seen >= before + waiters as u64 {
            break;
        }
        ensure!(
            Instant::now() < parked_by,
            "only {} of {waiters} long-polls reached the coordinators within {} s",
            seen - before,
            parked_within.as_secs()
        );
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    let admin = &mut counted[0];

    let server_before = servers_cpu(&args.server_pid);
    let client_before = client_cpu();
    let pin = serde_json::json!({"app": args.app, "version": args.version, "scope": {"kind": "fleet"}});
    let pinned_at = Instant::now();
    let changed = admin_call(admin, &token, Method::PUT, "/v1/admin/pins", pin, StatusCode::OK).await?;
    let api = pinned_at.elapsed();
    let hosts_changed = changed["hosts_changed"].as_u64().unwrap_or(0);

    let mut arrivals = Vec::with_capacity(waiters);
    let mut per_replica = vec![Vec::new(); targets.len()];
    let mut problems = Vec::new();
    let mut results = Vec::with_capacity(waiters);
    for handle in handles {
        results.push(handle.await.context("waiter panicked")?);
    }
    let server = server_before.zip(servers_cpu(&args.server_pid)).map(|(a, b)| b - a);
    let client = client_cpu() - client_before;
    // Verification happens after every arrival time is taken, so it does not delay them.
    for waited in results {
        let outcome = (|| {
            let answer = waited.answer.as_ref().map_err(|error| anyhow::anyhow!("{error:#}"))?;
            ensure!(
                answer.status == StatusCode::OK,
                "answered {} {}",
                answer.status,
                answer.body_text()
            );
            ensure!(answer.etag().as_ref() != Some(&waited.old_etag), "same ETag as before");
            ensure!(waited.arrived >= pinned_at, "answered before the pin was made");
            let verified = accept(&answer.body, &trust, &waited.host, None, now_real())
                .map_err(|rejection| anyhow::anyhow!("new manifest rejected: {rejection}"))?;
            let manifest = verified.manifest();
            ensure!(manifest.serial > waited.old_serial, "serial did not go up");
            let release = manifest
                .apps
                .get(&args.app.parse().context("app name")?)
                .context("the pinned app is not in the manifest")?;
            ensure!(
                release.version.as_str() == args.version,
                "manifest has {} {}",
                args.app,
                release.version
            );
            anyhow::Ok(waited.arrived - pinned_at)
        })();
        match outcome {
            Ok(latency) => {
                arrivals.push(latency);
                per_replica[waited.replica].push(latency);
            }
            Err(error) => problems.push(format!("{} (via {}): {error:#}", waited.host, args.url[waited.replica])),
        }
    }
    arrivals.sort();
    // Measured from the pin's answer rather than its start: negative when a waiter held
    // the new manifest before the API call returned.
    let after_answer = |q: f64| quantile_ms(&arrivals, q) - ms(api);
    println!(
        "RESULT pin version={} replicas={} hosts_changed={hosts_changed} api_ms={:.0} waiters={waiters} verified={} first_ms={:.0} p50_ms={:.0} p99_ms={:.0} all_ms={:.0} after_answer_p50_ms={:.0} after_answer_all_ms={:.0} server_cpu_s={} client_cpu_s={client:.2}",
        args.version,
        targets.len(),
        ms(api),
        arrivals.len(),
        quantile_ms(&arrivals, 0.0),
        quantile_ms(&arrivals, 0.5),
        quantile_ms(&arrivals, 0.99),
        quantile_ms(&arrivals, 1.0),
        after_answer(0.5),
        after_answer(1.0),
        format_cpu(server),
    );
    if targets.len() > 1 {
        for (replica, latencies) in per_replica.iter_mut().enumerate() {
            latencies.sort();
            println!(
                "RESULT pin-replica version={} replica={replica} url={} pinned_here={} waiters={} first_ms={:.0} p50_ms={:.0} p99_ms={:.0} all_ms={:.0}",
                args.version,
                args.url[replica],
                u8::from(replica == 0),
                latencies.len(),
                quantile_ms(latencies, 0.0),
                quantile_ms(latencies, 0.5),
                quantile_ms(latencies, 0.99),
                quantile_ms(latencies, 1.0),
            );
        }
    }
    eprintln!(
        "pin {}: {hosts_changed} hosts re-signed, the API answered in {:.0} ms; all {} long-polling agents on {} coordinator(s) held the verified manifest after {:.0} ms",
        args.version,
        ms(api),
        arrivals.len(),
        targets.len(),
        quantile_ms(&arrivals, 1.0)
    );
    if let Some(problem) = problems.first() {
        eprintln!("pin: {} waiters failed, first: {problem}", problems.len());
    }
    ensure!(problems.is_empty(), "{} of {waiters} waiters failed", problems.len());
    Ok(())
}

/// VmRSS of process `pid` in KiB, from /proc/PID/status.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (is the coordinator running?)"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

async fn hold(args: HoldArgs) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    let target = Target::parse(&args.url)?;
    let ca_pem = read_text(&args.identities.join("ca.pem"))?;
    let hosts = args.hosts as usize;
    let settle = args.settle.to_std();
    let mut identities = Vec::with_capacity(hosts);
    for index in 0..hosts {
        identities.push(load_identity(&args.identities, &ca_pem, index)?);
    }
    // An admin connection is open at every reading (this one until the counter's below).
    let idle_admin = Connection::open(&target, tls_config(&ca_pem, None)).await?;
    tokio::time::sleep(settle).await;
    let idle_kib = rss_kib(args.server_pid)?;

    // One keep-alive connection per host, each after one GET of its manifest (so TLS is
    // set up and the host's slot looked up), opened a bounded number at a time.
    let opened: Vec<(Connection, HeaderValue)> = futures_util::stream::iter(identities)
        .map(|identity| {
            let target = target.clone();
            async move {
                let (connection, answer) = first_poll(&target, &identity).await?;
                anyhow::Ok((connection, answer.etag().context("no ETag")?))
            }
        })
        .buffer_unordered(args.parallel as usize)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    tokio::time::sleep(settle).await;
    let connected_kib = rss_kib(args.server_pid)?;

    // The coordinator closes a connection without a client certificate after 10 s without
    // a request, and opening thousands of connections takes longer: a fresh one for the
    // counter.
    drop(idle_admin);
    let mut admin = Connection::open(&target, tls_config(&ca_pem, None)).await?;
    let before = polls_counter(&mut admin).await?;
    let wait = args.wait;
    let held: Vec<_> = opened
        .into_iter()
        .map(|(mut connection, etag)| {
            tokio::spawn(async move {
                let path = format!("/v1/agent/manifest?wait={wait}");
                connection
                    .get(
                        &path,
                        &[(header::IF_NONE_MATCH, etag)],
                        StdDuration::from_secs(wait) + WIND_DOWN,
                    )
                    .await
            })
        })
        .collect();
    let parked_by = Instant::now() + StdDuration::from_secs(60);
    loop {
        let seen = polls_counter(&mut admin).await?;
        if seen >= before + hosts as u64 {
            break;
        }
        ensure!(
            Instant::now() < parked_by,
            "only {} of {hosts} long-polls reached the coordinator within 60 s",
            seen - before
        );
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    tokio::time::sleep(settle).await;
    let held_kib = rss_kib(args.server_pid)?;
    let finished = held.iter().filter(|task| task.is_finished()).count();
    ensure!(
        finished == 0,
        "{finished} long-polls were answered while being measured (something changed the fleet?)"
    );
    if args.hold_for.as_millis() > 0 {
        eprintln!("hold: {hosts} long-polls held; holding them for {}", args.hold_for);
        tokio::time::sleep(args.hold_for.to_std()).await;
    }
    for task in &held {
        task.abort();
    }
    for task in held {
        let _ = task.await;
    }
    tokio::time::sleep(settle).await;
    let closed_kib = rss_kib(args.server_pid)?;
    let per = |from: u64, to: u64| (to as f64 - from as f64) / hosts as f64;
    println!(
        "RESULT hold hosts={hosts} idle_kib={idle_kib} connected_kib={connected_kib} held_kib={held_kib} closed_kib={closed_kib} per_connection_kib={:.1} per_longpoll_kib={:.1} per_held_kib={:.1}",
        per(idle_kib, connected_kib),
        per(connected_kib, held_kib),
        per(idle_kib, held_kib),
    );
    eprintln!(
        "hold: coordinator VmRSS {idle_kib} KiB idle, {connected_kib} KiB with {hosts} connections, {held_kib} KiB with {hosts} long-polls held ({:.1} KiB each over idle), {closed_kib} KiB after they hung up",
        per(idle_kib, held_kib)
    );
    Ok(())
}
