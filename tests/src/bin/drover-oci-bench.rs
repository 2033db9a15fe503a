//! drover-oci-bench: the agent's pull + unpack of an OCI image from a loopback registry,
//! timed against `skopeo copy` + `umoci unpack` of the same image, for
//! `scripts/bench-oci.sh` (BENCHMARKS.md, "Agent: OCI image pull (issue 7)").
//!
//! - `pull`: runs the agent library's code path for one OCI release as the executor does:
//!   `oci::pull::pull` (manifest, config and layers by digest into the content-addressed
//!   cache `<work>/cache`, each blob hashed, size-capped, fsynced and renamed; cached blobs
//!   are not downloaded again) and then `oci::stage::stage_image` in `spawn_blocking`
//!   (layers applied into `<work>/apps/bench/releases/<version>/rootfs`, every file and
//!   directory fsynced, renamed into place), on a current-thread runtime with
//!   `max_blocking_threads(4)` like the agent's `main`, with the registry client the agent
//!   config makes (`oci::registry::Registries`). It prints one line,
//!   `RESULT seconds=… pull_seconds=… stage_seconds=… downloaded_bytes=… vmhwm_kib=…`:
//!   `vmhwm_kib` is this fresh process's peak RSS, i.e. the agent code's. `--split`
//!   replaces `stage_image` by its two halves timed apart: the layers applied with
//!   `oci::apply_layer` (no fsync), then an fsync of every file and directory, to show
//!   what the fsyncs cost.
//! - `run`: the whole benchmark (see `drover-oci-bench/orchestrate.rs`): a registry
//!   (the test fixture's `docker-registry`) on 127.0.0.1, images v1 and v2 sharing two of
//!   three layers, repeated rounds of baseline and agent in alternating order, the second
//!   release pulled through a byte-counting proxy, and a summary with medians.

#![forbid(unsafe_code)]

#[path = "drover-load/stats.rs"]
#[expect(dead_code, reason = "shared with drover-load, which uses all of it")]
mod stats;

// The orchestration lives beside this file in drover-oci-bench/ (not directly in
// src/bin/, where Cargo would take it for a binary of its own).
#[path = "drover-oci-bench/orchestrate.rs"]
mod orchestrate;

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, anyhow};
use clap::{Parser, Subcommand};
use drover_agent::config::{RegistryConfig, RegistryTransport};
use drover_agent::fetch::Cache;
use drover_agent::oci::pull::{PulledImage, pull};
use drover_agent::oci::registry::Registries;
use drover_agent::oci::{LayerLimits, LayerMeter, apply_layer, decompressor};
use drover_agent::unpack::UnpackLimits;
use drover_protocol::manifest::OciReference;
use drover_protocol::{AppName, AppSpec, Version};

#[derive(Debug, Parser)]
#[command(about = "Times the agent's OCI pull + unpack against skopeo copy + umoci unpack")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pull and stage one image with the agent's code; prints one RESULT line.
    Pull(PullArgs),
    /// The whole benchmark: registry, images, rounds, summary.
    Run(orchestrate::RunArgs),
}

#[derive(Debug, clap::Args)]
struct PullArgs {
    /// The registry, `HOST:PORT` as image references spell it.
    #[arg(long)]
    registry: String,
    /// `REPOSITORY@sha256:HEX`.
    #[arg(long)]
    reference: String,
    /// The agent's state directory: the cache goes to `<work>/cache` (as the agent's
    /// does), releases to `<work>/apps/bench/releases`. A fresh one means a cold cache.
    #[arg(long)]
    work: PathBuf,
    /// Plain HTTP to the registry (`insecure = true` in the agent config).
    #[arg(long)]
    insecure: bool,
    /// The release version to stage as.
    #[arg(long, default_value = "v1")]
    version: String,
    /// Apply the layers and fsync the tree as two separately timed steps instead of
    /// `stage_image`.
    #[arg(long)]
    split: bool,
}

fn main() -> ExitCode {
    if rustls::crypto::ring::default_provider().install_default().is_err() {
        eprintln!("drover-oci-bench: a TLS crypto provider was already installed");
        return ExitCode::FAILURE;
    }
    let args = Args::parse();
    // The agent's own runtime configuration.
    let runtime = match drover_agent::runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("drover-oci-bench: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match args.command {
        Command::Pull(args) => runtime.block_on(pull_command(args)).map(|line| println!("{line}")),
        Command::Run(args) => runtime.block_on(orchestrate::run(args)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("drover-oci-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn pull_command(args: PullArgs) -> anyhow::Result<String> {
    let reference = OciReference::try_from(format!("{}/{}", args.registry, args.reference))
        .map_err(|error| anyhow!("reference: {error}"))?;
    let digest = reference.digest();
    let app: AppName = "bench".parse().map_err(|error| anyhow!("{error}"))?;
    let version: Version = args.version.parse().map_err(|error| anyhow!("version: {error}"))?;
    let transport = if args.insecure {
        RegistryTransport::PlainHttp
    } else {
        RegistryTransport::Https
    };
    // As agent/src/run.rs makes them: the agent config's registry sections.
    let registries = Registries::new(
        BTreeMap::from([(
            args.registry.clone(),
            RegistryConfig {
                transport,
                ..RegistryConfig::default()
            },
        )]),
        &drover_agent::tls::SYSTEM_CA_BUNDLES,
    );
    let state_dir = args.work.clone();
    let cache = Cache::new(state_dir.join("cache"));
    // The executor's limits with the agent's default max_release_size.
    let limits = UnpackLimits::default();
    let layer_limits = LayerLimits {
        max_total_bytes: limits.max_total_bytes,
        max_entries: limits.max_entries,
        special_bits: limits.special_bits,
    };

    let started = Instant::now();
    let image = pull(&registries, &cache, &reference, &digest, limits.max_total_bytes)
        .await
        .context("pull")?;
    let pull_seconds = started.elapsed().as_secs_f64();
    let pull_vmhwm_kib = self_kib("VmHWM")?;
    let downloaded = image.downloaded();
    let layers = image.layers().len();

    let stage_started = Instant::now();
    let detail = if args.split {
        let state = state_dir.clone();
        let (apply, sync, rootfs) = tokio::task::spawn_blocking(move || split_stage(&image, &state, &layer_limits))
            .await
            .context("the blocking task")??;
        let per_layer: Vec<String> = apply.iter().map(|seconds| format!("{seconds:.4}")).collect();
        format!(
            "mode=split apply_seconds={:.4} layer_seconds={} sync_seconds={sync:.4} rootfs={}",
            apply.iter().sum::<f64>(),
            per_layer.join(","),
            rootfs.display()
        )
    } else {
        // As the executor's `stage`: a spec without overrides, in spawn_blocking.
        let spec: AppSpec = serde_json::from_str(r#"{"service":{}}"#).context("spec")?;
        let state = state_dir.clone();
        let staged = tokio::task::spawn_blocking(move || {
            drover_agent::oci::stage::stage_image(&image, &spec, &state, &app, &version, &layer_limits)
        })
        .await
        .context("the blocking task")?
        .context("stage_image")?;
        format!("mode=stage rootfs={}", staged.path().join("rootfs").display())
    };
    let stage_seconds = stage_started.elapsed().as_secs_f64();
    let seconds = started.elapsed().as_secs_f64();
    let vmhwm_kib = self_kib("VmHWM")?;
    let rss_anon_kib = self_kib("RssAnon")?;
    let rss_file_kib = self_kib("RssFile")?;
    Ok(format!(
        "RESULT seconds={seconds:.4} pull_seconds={pull_seconds:.4} stage_seconds={stage_seconds:.4} \
         downloaded_bytes={downloaded} layers={layers} pull_vmhwm_kib={pull_vmhwm_kib} vmhwm_kib={vmhwm_kib} \
         rss_anon_kib={rss_anon_kib} rss_file_kib={rss_file_kib} {detail}"
    ))
}

/// `stage_image`'s two costly halves, timed apart: each layer applied (as `stage_image`
/// applies it: 256 KiB buffer, `decompressor`, `apply_layer`, one meter for the image),
/// then an fsync of every file and directory (what `install::stage_with` does before its
/// rename). Returns the seconds per layer, the fsync seconds and the rootfs.
fn split_stage(
    image: &PulledImage,
    state_dir: &Path,
    limits: &LayerLimits,
) -> anyhow::Result<(Vec<f64>, f64, PathBuf)> {
    let rootfs = state_dir.join("split-staging/rootfs");
    std::fs::create_dir_all(rootfs.parent().expect("has a parent")).context("creating split-staging")?;
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&rootfs)
        .with_context(|| format!("creating {}", rootfs.display()))?;
    let mut meter = LayerMeter::new();
    let mut per_layer = Vec::new();
    for layer in image.layers() {
        let started = Instant::now();
        let path = layer.artifact.path();
        let blob = std::io::BufReader::with_capacity(
            256 * 1024,
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        );
        let tar = decompressor(&layer.descriptor.media_type, blob).context("layer media type")?;
        apply_layer(tar, &rootfs, limits, &mut meter).context("apply_layer")?;
        per_layer.push(started.elapsed().as_secs_f64());
    }
    let started = Instant::now();
    drover_agent::install::sync_tree(&rootfs)?;
    Ok((per_layer, started.elapsed().as_secs_f64(), rootfs))
}

/// A `/proc/self/status` figure in KiB.
fn self_kib(key: &str) -> anyhow::Result<u64> {
    drover_tests::proc_status_kib("self", key).ok_or_else(|| anyhow!("no {key} line in /proc/self/status"))
}
