//! drover-fetch-bench: the agent's "fetch + verify + unpack" of one tarball artifact, timed,
//! for `scripts/bench-agent-fetch.sh` (BENCHMARKS.md, "Agent: fetch + verify + unpack").
//!
//! It runs the agent library's own code path, as the executor does for one release:
//! `fetch::Cache::fetch` (streamed download, sha256 and size checked as bytes arrive, the
//! file fsynced and renamed into the cache), then `install::stage` (safe unpack into a
//! staging directory, every file and directory fsynced, renamed to `releases/<version>`)
//! inside `spawn_blocking`, on a current-thread runtime with `max_blocking_threads(4)` like
//! the agent's `main`. The HTTP client is built as `run.rs` builds it, with a rustls
//! configuration that trusts nothing (the URL is plain http on loopback).
//!
//! `--split` replaces `stage` by its two halves, timed apart: `unpack::unpack` into a
//! staging directory (same 256 KiB read buffer) and then an fsync of every file and
//! directory in it (what `stage` does before its rename). It shows what the fsyncs cost.
//!
//! Output: one `RESULT key=value ...` line on stdout (seconds, KiB); errors on stderr.
//! `vmhwm_kib` is this process's peak RSS (`VmHWM` in /proc/self/status) at the end.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use clap::Parser;
use drover_agent::fetch::Cache;
use drover_agent::install;
use drover_agent::unpack::{UnpackLimits, unpack};
use drover_protocol::manifest::HttpUrl;
use drover_protocol::{AppName, Digest, Version};
use drover_tests::proc_status_kib;

#[derive(Debug, Parser)]
#[command(about = "Times the agent's fetch + verify + stage of one tar.gz artifact")]
struct Args {
    /// The artifact's URL (http:// or https://).
    url: String,
    /// Its digest, `sha256:<hex>` or the bare 64 hex digits.
    digest: String,
    /// Its exact size in bytes (the manifest's `size`).
    size: u64,
    /// An empty or missing work directory: the cache goes to `<dir>/cache`, the state
    /// directory (releases) to `<dir>/state`.
    work_dir: PathBuf,
    /// Unpack and fsync as two separately timed steps instead of `install::stage`.
    #[arg(long)]
    split: bool,
}

fn main() -> ExitCode {
    if rustls::crypto::ring::default_provider().install_default().is_err() {
        eprintln!("drover-fetch-bench: a TLS crypto provider was already installed");
        return ExitCode::FAILURE;
    }
    let args = Args::parse();
    // The agent's own runtime configuration.
    let runtime = match drover_agent::runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("drover-fetch-bench: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(args)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("drover-fetch-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: Args) -> anyhow::Result<String> {
    let url = HttpUrl::try_from(args.url.clone()).map_err(|error| anyhow!("{error}"))?;
    let digest_text = if args.digest.starts_with("sha256:") {
        args.digest.clone()
    } else {
        format!("sha256:{}", args.digest)
    };
    let digest: Digest = digest_text.parse().map_err(|error| anyhow!("digest: {error}"))?;
    let app: AppName = "bench".parse().map_err(|error| anyhow!("{error}"))?;
    let version: Version = "v1".parse().map_err(|error| anyhow!("{error}"))?;
    let state_dir = args.work_dir.join("state");

    // As agent/src/run.rs builds its client, minus the client certificate.
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(Arc::new(rustls::RootCertStore::empty()))
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(2)
        .build()
        .context("HTTP client")?;

    let started = Instant::now();
    let artifact = Cache::new(args.work_dir.join("cache"))
        .fetch(&client, &url, &digest, args.size)
        .await
        .context("fetch")?;
    let fetch_s = started.elapsed().as_secs_f64();

    let stage_started = Instant::now();
    let (stage_detail, release) = if args.split {
        let state = state_dir.clone();
        let (unpack_s, fsync_s, staging) = tokio::task::spawn_blocking(move || split_stage(artifact.path(), &state))
            .await
            .context("the blocking task")??;
        (format!("unpack_s={unpack_s:.4} fsync_s={fsync_s:.4}"), staging)
    } else {
        let state = state_dir.clone();
        let staged = tokio::task::spawn_blocking(move || {
            install::stage(&artifact, &state, &app, &version, &UnpackLimits::default())
        })
        .await
        .context("the blocking task")?
        .context("stage")?;
        (String::new(), staged.path().to_path_buf())
    };
    let stage_s = stage_started.elapsed().as_secs_f64();
    let total_s = started.elapsed().as_secs_f64();
    let vmhwm_kib = proc_status_kib("self", "VmHWM").context("no VmHWM in /proc/self/status")?;
    Ok(format!(
        "RESULT mode={} fetch_s={fetch_s:.4} stage_s={stage_s:.4} {stage_detail}{}total_s={total_s:.4} vmhwm_kib={vmhwm_kib} release={}",
        if args.split { "split" } else { "stage" },
        if stage_detail.is_empty() { "" } else { " " },
        release.display()
    ))
}

/// `install::stage`'s work in two timed halves: the unpack, then the fsyncs.
fn split_stage(archive: &Path, state_dir: &Path) -> anyhow::Result<(f64, f64, PathBuf)> {
    let staging = state_dir.join("split-staging");
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let started = Instant::now();
    let file = std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    unpack(
        std::io::BufReader::with_capacity(256 * 1024, file),
        &staging,
        &UnpackLimits::default(),
    )
    .context("unpack")?;
    let unpack_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    install::sync_tree(&staging)?;
    Ok((unpack_s, started.elapsed().as_secs_f64(), staging))
}
