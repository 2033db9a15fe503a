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
//! Traffic goes to the coordinator URL given (loopback); every wait is bounded.

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
    let admin = Admin::from_data_dir(&options.data_dir, &options.url);
    let pid = options.pid.to_string();
    let started = Instant::now();
    release(&admin, options, "web", "1.0").await;
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
    let sim = Simulator::enroll_at(&options.url, &admin, config).await;
    let enrolled = started.elapsed();
    sim.wait_ready(StdDuration::from_secs(300)).await;
    eprintln!(
        "{} hosts enrolled in {:.1} s, all healthy on 1.0 after {:.1} s; coordinator RSS {} KiB",
        options.hosts,
        enrolled.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        proc_status_kib(&pid, "VmRSS").unwrap_or(0)
    );

    for rep in 1..=options.reps {
        let version = format!("{}.0", rep + 1);
        release(&admin, options, "web", &version).await;
        // Peak RSS from here on: writing 5 to clear_refs resets VmHWM to the current RSS.
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("resetting the coordinator's VmHWM")?;
        let before = sim.stats();
        let cpu_before = cpu_seconds(&pid).context("coordinator CPU time")?;
        let clock = Instant::now();
        let body = json!({
            "app": "web", "version": version, "stages": options.stages,
            "max_in_flight": options.max_in_flight, "bake": "0s", "reason": "benchmark",
        });
        let (code, text) = admin.call(Method::POST, "/v1/admin/rollouts", Some(body)).await;
        if code != StatusCode::CREATED {
            bail!("rollout start: {code} {text}");
        }
        let status = loop {
            let value = admin.ok(Method::GET, "/v1/admin/rollouts/web", None).await;
            let status: RolloutStatus = serde_json::from_value(value).context("rollout status")?;
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
        let cpu = cpu_seconds(&pid).context("coordinator CPU time")? - cpu_before;
        let peak = proc_status_kib(&pid, "VmHWM").context("coordinator VmHWM")?;
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
        println!(
            "RESULT rep={rep} hosts={} stages={} max_in_flight={} install_ms={}..{} seconds={seconds:.3} \
             coordinator_cpu_s={cpu:.2} coordinator_peak_rss_kib={peak} manifests={} reports={} retries={} \
             rejections={}",
            options.hosts,
            stages.join(","),
            status.max_in_flight,
            options.install_min_ms,
            options.install_max_ms.max(options.install_min_ms),
            after.manifests - before.manifests,
            after.reports - before.reports,
            after.retries - before.retries,
            after.rejections - before.rejections,
        );
        eprintln!(
            "rollout {rep} to {version}: completed in {seconds:.2} s, coordinator {cpu:.2} CPU s, peak RSS {peak} KiB"
        );
    }
    sim.shutdown().await;
    Ok(())
}
