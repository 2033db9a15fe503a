//! drover-rollout-bench: a staged rollout at fleet scale against a real `drover serve`
//! process, for `scripts/bench-rollout.sh` (BENCHMARKS.md, "Rollouts (issue 6)").
//!
//! Enrolls `--hosts` simulated agents (tests/src/sim.rs: real protocol, mTLS, long-poll,
//! reports) healthy on release 1.0, then `--reps` times releases the next version and
//! rolls it out with `POST /v1/admin/rollouts` (what `drover rollout start` sends),
//! polling the status every 20 ms until the rollout leaves `running`. Per rollout it
//! prints a `RESULT` line: wall time from the start request to `completed`, the
//! coordinator's CPU seconds over that time (from /proc/PID/stat), its peak RSS during
//! the rollout (VmHWM after resetting it with /proc/PID/clear_refs), and what the
//! simulated fleet did (manifests taken, reports sent, retries).
//!
//! Several replicas on one PostgreSQL (issue 16; `scripts/bench-ha.sh`): `--replica`
//! names the others, and the simulated hosts are spread over all of them. With
//! `--kill-leader-after-stage N`, the first rollout's leading replica is killed with -9
//! once stage N passed, and a `RESULT takeover` line says how long until another replica
//! held the lease and until the rollout progressed again.
//!
//! Traffic goes to the coordinator URLs given (loopback); every wait is bounded.

#![forbid(unsafe_code)]

#[path = "drover-load/stats.rs"]
#[expect(dead_code, reason = "shared with drover-load, which uses all of it")]
mod stats;

use std::process::ExitCode;
use std::time::{Duration as StdDuration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use drover_protocol::api::{RolloutPhase, RolloutStatus};
use drover_protocol::report::AppState;
use drover_tests::fleet::Admin;
use drover_tests::proc_status_kib;
use drover_tests::sim::{SimConfig, Simulator};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::stats::cpu_seconds;

/// Staged rollouts over a simulated fleet against a running coordinator.
#[derive(Debug, Parser)]
struct Options {
    /// The coordinator's URL (loopback).
    #[arg(long)]
    url: String,
    /// Its data directory (admin token and CA).
    #[arg(long)]
    data_dir: std::path::PathBuf,
    /// Its PID (for CPU time and memory).
    #[arg(long)]
    pid: u32,
    /// Simulated hosts.
    #[arg(long, default_value_t = 10_000)]
    hosts: usize,
    /// Rollouts to time, one after the other (1.0 → 2.0 → 3.0 ...).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Shortest simulated install, in milliseconds.
    #[arg(long, default_value_t = 0)]
    install_min_ms: u64,
    /// Longest simulated install, in milliseconds.
    #[arg(long, default_value_t = 0)]
    install_max_ms: u64,
    /// `--stages` of the rollouts.
    #[arg(long, default_value = "canary,10%,50%,100%")]
    stages: String,
    /// `--max-in-flight` of the rollouts.
    #[arg(long, default_value = "10%")]
    max_in_flight: String,
    /// Joins in flight during enrollment.
    #[arg(long, default_value_t = 16)]
    join_concurrency: usize,
    /// How long one rollout may take before the run fails.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// Make releases whose tarball lives elsewhere (`remote_tarball`, never fetched: the
    /// simulated hosts install nothing) instead of uploading one: a coordinator on
    /// PostgreSQL refuses uploads (replicas share no disk).
    #[arg(long)]
    remote_artifacts: bool,
    /// Further replicas on the coordinator's database (repeat or comma list): the
    /// simulated hosts are spread round-robin over `--url` and these, and move on to the
    /// next one when theirs stops answering, as agents do.
    #[arg(long, value_delimiter = ',')]
    replica: Vec<String>,
    /// The PIDs of `--replica`, in the same order (for `--kill-leader-after-stage`).
    #[arg(long, value_delimiter = ',')]
    replica_pid: Vec<u32>,
    /// kill -9 the replica that leads (`GET /v1/admin/coordinators`) once stage N
    /// (1 = the first) of the first rollout passed; then time how long until another
    /// replica holds the lease and until the rollout progresses again (more hosts pinned
    /// to the target, or a later stage started). Needs `--replica` and `--replica-pid`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100))]
    kill_leader_after_stage: Option<u64>,
}

/// Every coordinator's URL: `--url` first, then `--replica`.
fn coordinator_urls(options: &Options) -> Vec<String> {
    std::iter::once(options.url.clone())
        .chain(options.replica.iter().cloned())
        .collect()
}

/// The URL of the replica that leads, as `admin`'s coordinator lists them, unless it is
/// `except` (a replica that was killed may still be listed as leading until another
/// takes the lease).
async fn leader_url(admin: &Admin, except: Option<&str>) -> Option<String> {
    let (code, text) = admin.call(Method::GET, "/v1/admin/coordinators", None).await;
    if code != StatusCode::OK {
        return None;
    }
    let listed: serde_json::Value = serde_json::from_str(&text).ok()?;
    listed
        .as_array()?
        .iter()
        .filter(|replica| replica["leader"] == true)
        .filter_map(|replica| replica["address"].as_str())
        .find(|address| Some(*address) != except)
        .map(str::to_owned)
}

/// How far a rollout got: hosts pinned to the target so far (every stage's hosts but
/// those still waiting), and the last stage started.
fn progress(status: &RolloutStatus) -> (usize, Option<usize>) {
    let pinned = status.stages.iter().map(|stage| stage.total - stage.waiting).sum();
    (pinned, status.stage)
}

/// The leader kill of `--kill-leader-after-stage`, while it is under way.
struct Takeover {
    killed_url: String,
    killed_at: Instant,
    /// What the survivor showed when the kill was made.
    progress_at_kill: (usize, Option<usize>),
    /// The stage that was active then, to see when its hosts were all done.
    stage_at_kill: Option<usize>,
    leader: Option<(String, StdDuration)>,
    stage_done: Option<StdDuration>,
    progressed: Option<StdDuration>,
}

/// Creates release `app` `version`: uploaded, or with `--remote-artifacts` a
/// `remote_tarball` at a URL nothing fetches.
async fn release(admin: &Admin, options: &Options, app: &str, version: &str) {
    let payload = format!("{app} {version}");
    if options.remote_artifacts {
        let body = json!({
            "app": app, "version": version,
            "spec": {"service": {"command": ["bin/app"]}},
            "artifact": {"kind": "remote_tarball",
                         "url": format!("https://artifacts.example/{app}-{version}.tar.gz"),
                         "digest": drover_protocol::Digest::of(payload.as_bytes()).to_string(),
                         "size": payload.len()},
        });
        admin.ok(Method::POST, "/v1/admin/releases", Some(body)).await;
    } else {
        admin.release(app, version, payload.into_bytes()).await;
    }
}

fn main() -> ExitCode {
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("the only crypto provider");
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(run(&options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("drover-rollout-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: &Options) -> anyhow::Result<()> {
    let urls = coordinator_urls(options);
    let pids: Vec<u32> = std::iter::once(options.pid)
        .chain(options.replica_pid.iter().copied())
        .collect();
    if options.kill_leader_after_stage.is_some()
        && (options.replica.is_empty() || options.replica_pid.len() != options.replica.len())
    {
        bail!("--kill-leader-after-stage needs --replica and one --replica-pid per replica, in the same order");
    }
    let admins: Vec<Admin> = urls
        .iter()
        .map(|url| Admin::from_data_dir(&options.data_dir, url))
        .collect();
    // The coordinator that admin calls go to: the first, or after a kill a survivor.
    let mut through = 0;
    let admin = &admins[0];
    let pid = options.pid.to_string();
    let started = Instant::now();
    release(admin, options, "web", "1.0").await;
    admin
        .ok(
            Method::PUT,
            "/v1/admin/pins",
            Some(json!({"app": "web", "version": "1.0", "scope": {"kind": "fleet"}})),
        )
        .await;
    let mut config = SimConfig::new(options.hosts, "web", "999.0");
    config.install_min = StdDuration::from_millis(options.install_min_ms);
    config.install_max = StdDuration::from_millis(options.install_max_ms.max(options.install_min_ms));
    config.join_concurrency = options.join_concurrency;
    config.lifetime = StdDuration::from_secs(options.timeout_s * (options.reps as u64 + 1) + 600);
    if urls.len() > 1 {
        config.coordinators.clone_from(&urls);
    }
    let sim = Simulator::enroll_at(&options.url, admin, config).await;
    let enrolled = started.elapsed();
    sim.wait_ready(StdDuration::from_secs(300)).await;
    eprintln!(
        "{} hosts enrolled in {:.1} s, all healthy on 1.0 after {:.1} s; coordinator RSS {} KiB",
        options.hosts,
        enrolled.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        proc_status_kib(&pid, "VmRSS").unwrap_or(0)
    );
    let mut kill_pending = options.kill_leader_after_stage;

    for rep in 1..=options.reps {
        let version = format!("{}.0", rep + 1);
        let admin = &admins[through];
        release(admin, options, "web", &version).await;
        // Peak RSS from here on: writing 5 to clear_refs resets VmHWM to the current RSS.
        // (The coordinator of --pid may have been killed as the leader: then no numbers.)
        let measured = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let before = sim.stats();
        let cpu_before = cpu_seconds(&pid);
        let clock = Instant::now();
        let body = json!({
            "app": "web", "version": version, "stages": options.stages,
            "max_in_flight": options.max_in_flight, "bake": "0s", "reason": "benchmark",
        });
        let (code, text) = admin.call(Method::POST, "/v1/admin/rollouts", Some(body)).await;
        if code != StatusCode::CREATED {
            bail!("rollout start: {code} {text}");
        }
        let mut takeover: Option<Takeover> = None;
        let status = loop {
            let value = admins[through].ok(Method::GET, "/v1/admin/rollouts/web", None).await;
            let status: RolloutStatus = serde_json::from_value(value).context("rollout status")?;
            if let Some(stage) = kill_pending
                && status
                    .stages
                    .get(stage as usize - 1)
                    .is_some_and(|stage| stage.status == "passed")
            {
                kill_pending = None;
                takeover = Some(kill_leader(&admins, through, &urls, &pids, stage).await?);
                let killed = &takeover.as_ref().expect("just made").killed_url;
                through = urls.iter().position(|url| url != killed).expect("a survivor");
                continue;
            }
            if let Some(takeover) = &mut takeover {
                takeover.observe(&admins[through], &status).await;
            }
            if status.phase != RolloutPhase::Running {
                break status;
            }
            if clock.elapsed() > StdDuration::from_secs(options.timeout_s) {
                bail!(
                    "rollout to {version} still running after {} s: {status:?}",
                    options.timeout_s
                );
            }
            tokio::time::sleep(StdDuration::from_millis(20)).await;
        };
        let seconds = clock.elapsed().as_secs_f64();
        let cpu = cpu_before.zip(cpu_seconds(&pid)).map(|(before, after)| after - before);
        let peak = proc_status_kib(&pid, "VmHWM").filter(|_| measured);
        if status.phase != RolloutPhase::Completed {
            bail!("rollout to {version} ended {:?}: {status:?}", status.phase);
        }
        let target = version.parse().context("version")?;
        sim.wait_all("healthy on the target", StdDuration::from_secs(60), |view| {
            view.current.as_ref() == Some(&target) && view.state == Some(AppState::Healthy)
        })
        .await;
        let after = sim.stats();
        let stages: Vec<String> = status
            .stages
            .iter()
            .map(|stage| format!("{}:{}", stage.label, stage.total))
            .collect();
        let shown = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
        println!(
            "RESULT rep={rep} hosts={} coordinators={} stages={} max_in_flight={} install_ms={}..{} seconds={seconds:.3} \
             coordinator_cpu_s={} coordinator_peak_rss_kib={} manifests={} reports={} retries={} \
             rejections={}",
            options.hosts,
            urls.len(),
            stages.join(","),
            status.max_in_flight,
            options.install_min_ms,
            options.install_max_ms.max(options.install_min_ms),
            shown(cpu.map(|cpu| format!("{cpu:.2}"))),
            shown(peak.map(|peak| peak.to_string())),
            after.manifests - before.manifests,
            after.reports - before.reports,
            after.retries - before.retries,
            after.rejections - before.rejections,
        );
        if let Some(takeover) = takeover {
            takeover.report(rep)?;
        }
        eprintln!(
            "rollout {rep} to {version}: completed in {seconds:.2} s, coordinator {} CPU s, peak RSS {} KiB",
            shown(cpu.map(|cpu| format!("{cpu:.2}"))),
            shown(peak.map(|peak| peak.to_string())),
        );
    }
    sim.shutdown().await;
    Ok(())
}

/// kill -9 of the replica that leads, as `admins[through]`'s coordinator lists them, right
/// after reading the rollout's progress from the leader itself (a replica that does not
/// lead may not have heard of the leader's last step yet, which would later look like
/// progress).
async fn kill_leader(
    admins: &[Admin],
    through: usize,
    urls: &[String],
    pids: &[u32],
    after_stage: u64,
) -> anyhow::Result<Takeover> {
    let leader = leader_url(&admins[through], None).await.context("no replica leads")?;
    let index = urls
        .iter()
        .position(|url| *url == leader)
        .with_context(|| format!("the leader {leader} is none of {urls:?}"))?;
    let value = admins[index].ok(Method::GET, "/v1/admin/rollouts/web", None).await;
    let status: RolloutStatus = serde_json::from_value(value).context("rollout status")?;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pids[index].to_string()])
        .status()
        .context("running kill")?;
    let killed_at = Instant::now();
    if !killed.success() {
        bail!("kill -KILL {} (the leader {leader}) failed: {killed}", pids[index]);
    }
    eprintln!(
        "killed the leader {leader} (pid {}) with -9 once stage {after_stage} passed; {} hosts pinned to the target then",
        pids[index],
        progress(&status).0
    );
    Ok(Takeover {
        killed_url: leader,
        killed_at,
        progress_at_kill: progress(&status),
        stage_at_kill: status.stage,
        leader: None,
        stage_done: None,
        progressed: None,
    })
}

impl Takeover {
    /// Notes, from the survivor `admin` talks to and its rollout `status`, what happened
    /// since the kill for the first time.
    async fn observe(&mut self, admin: &Admin, status: &RolloutStatus) {
        let since = self.killed_at.elapsed();
        if self.leader.is_none()
            && let Some(url) = leader_url(admin, Some(&self.killed_url)).await
        {
            self.leader = Some((url, self.killed_at.elapsed()));
        }
        let stage_done = self
            .stage_at_kill
            .and_then(|stage| status.stages.get(stage))
            .is_some_and(|stage| stage.waiting == 0 && stage.in_flight == 0);
        if self.stage_done.is_none() && stage_done {
            self.stage_done = Some(since);
        }
        let (pinned, stage) = progress(status);
        let (pinned_at_kill, stage_at_kill) = self.progress_at_kill;
        if self.progressed.is_none() && (pinned > pinned_at_kill || stage > stage_at_kill) {
            self.progressed = Some(since);
        }
    }

    fn report(&self, rep: usize) -> anyhow::Result<()> {
        let (leader, leader_after) = self.leader.as_ref().context("no other replica took the lead")?;
        let progressed = self.progressed.context("the rollout never progressed after the kill")?;
        let stage_done = self
            .stage_done
            .map_or_else(|| "-".to_owned(), |done| format!("{:.0}", done.as_secs_f64() * 1000.0));
        println!(
            "RESULT takeover rep={rep} killed={} new_leader={leader} lease_ms={:.0} progress_ms={:.0} \
             stage_at_kill_done_ms={stage_done} pinned_at_kill={}",
            self.killed_url,
            leader_after.as_secs_f64() * 1000.0,
            progressed.as_secs_f64() * 1000.0,
            self.progress_at_kill.0,
        );
        eprintln!(
            "takeover: {leader} leads {:.2} s after kill -9 of {}; the rollout progressed again after {:.2} s",
            leader_after.as_secs_f64(),
            self.killed_url,
            progressed.as_secs_f64()
        );
        Ok(())
    }
}
