//! The `run` subcommand of drover-oci-bench: the whole OCI pull benchmark of issue 7.
//!
//! 1. A plain-HTTP `docker-registry` on 127.0.0.1 (the test fixture,
//!    `drover_tests::registry::Registry`), and two images built with `umoci` and pushed
//!    with `skopeo` (`SampleImage`: base, app and data layers, each padded with
//!    deterministic incompressible bytes): v1, and v2 with the same base and app layers
//!    and a new data layer. The run checks that the two share exactly those two layers.
//!    With `--base-tree DIR,...` the base layer holds copies of those directories of this
//!    machine instead of the sample app's libraries (many real files, see `tree_image`).
//! 2. Rounds (after `--warmup` uncounted ones), each waiting first (bounded) until other
//!    work leaves the machine alone, with the two sides in alternating order:
//!    - **baseline**: `skopeo copy docker://HOST/bench@DIGEST oci:LAYOUT:bench`, then
//!      `umoci unpack --image LAYOUT:bench BUNDLE`, timed together, fresh directories;
//!    - **agent**: this binary's `pull` subcommand (the agent's `pull` + `stage_image`)
//!      in a fresh state directory (empty cache);
//!
//!    each side followed by a timed `sync`: the write-back it left behind (umoci fsyncs
//!    nothing, the agent everything, so this is what the baseline's durability would
//!    cost). Then, not compared with the target: the agent's root filesystem is checked
//!    against umoci's (same paths, types and file sizes; the agent adds only the mount
//!    points and `etc/resolv.conf` staging makes); `umoci raw unpack` of the same layout
//!    is timed (umoci's unpack without the mtree manifest that hashes every file); v2 is
//!    pulled into the agent's state directory through the fixture's counting proxy
//!    (`Registry::counting_proxy`), and the bytes the agent says it downloaded and the
//!    blob bytes the proxy forwarded are set against the new layer's size; and a
//!    `pull --split` in a fresh directory times applying the layers and the fsyncs apart.
//! 3. With `--strace`, one more agent run and one more baseline under `strace -f -T -y`
//!    tracing only the sync calls (`--seccomp-bpf`), to count the fsyncs each side makes
//!    and the time spent in them (strace slows what it traces: counts, not timings, are
//!    the point).
//!
//! Every child runs under GNU time (user and system CPU, peak RSS) and, with
//! `--client-cpus`, under `taskset`, so both sides get the same CPUs; the registry and
//! this process stay where the caller pinned them. `sync` runs (untimed) before every
//! timed child, so no run pays for writing back the previous one's files. CPU used by
//! other processes during each run is the machine's busy time (/proc/stat) minus this
//! process tree's and the registry's. Output: `RESULT` lines on stdout, then a summary;
//! progress on stderr. Every child is bounded by a timeout and killed (by its handle) when
//! it runs over; all traffic goes to 127.0.0.1.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use drover_tests::registry::image::{base_accounts, padding_bytes};
use drover_tests::registry::{ImageConfig, LayerOp, OciImage, Registry, SampleImage};

use crate::stats::cpu_seconds;

/// How long one child (a pull, a skopeo copy, an unpack) may take.
const CHILD_TIMEOUT: Duration = Duration::from_secs(600);
/// The repository the images are pushed to.
const REPOSITORY: &str = "bench";
/// What the machine may be busy with (percent of all CPUs) for a round to start at once.
const QUIET_PCT: f64 = 10.0;
/// The rootfs entries agent staging adds to an image's (SPEC.md §4 mount points).
const STAGING_EXTRAS: [&str; 8] = ["dev", "proc", "sys", "run", "tmp", "var", "var/tmp", "etc/resolv.conf"];
/// The sync system calls counted under strace.
const SYNC_CALLS: [&str; 5] = ["fsync", "fdatasync", "sync_file_range", "syncfs", "msync"];

/// Options of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Counted rounds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    reps: u32,
    /// Uncounted rounds before them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=3))]
    warmup: u32,
    /// MiB of incompressible padding in the base, app and data layers.
    #[arg(long, default_value = "40,40,20")]
    padding_mib: String,
    /// The CPUs (a `taskset -c` list) every client runs on, baseline and agent alike.
    #[arg(long)]
    client_cpus: Option<String>,
    /// Work directory for the rounds and logs (must be empty or missing).
    #[arg(long)]
    work: PathBuf,
    /// The drover-sample-app binary packed into the images; by default the one next to
    /// this binary.
    #[arg(long)]
    sample_app: Option<PathBuf>,
    /// Directories of this machine to copy into the base layer at their own paths (comma
    /// separated), for an image of many real files instead of `SampleImage`'s few.
    #[arg(long, value_delimiter = ',')]
    base_tree: Vec<PathBuf>,
    /// Skip the `pull --split` runs.
    #[arg(long)]
    no_split: bool,
    /// After the rounds, count each side's fsyncs under strace.
    #[arg(long)]
    strace: bool,
    /// Seconds one round may wait for the machine to be quiet.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=600))]
    quiet_wait_s: u64,
    /// Seconds all rounds together may wait for it.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(0..=3600))]
    quiet_budget_s: u64,
}

/// What one child cost.
#[derive(Debug, Clone, Default)]
struct Measured {
    wall_seconds: f64,
    user_seconds: f64,
    system_seconds: f64,
    maxrss_kib: u64,
    /// CPU other processes used meanwhile, in percent of one CPU.
    other_cpu_pct: f64,
    stdout: String,
}

impl Measured {
    fn cpu_seconds(&self) -> f64 {
        self.user_seconds + self.system_seconds
    }
}

/// One RESULT line, kept for the summary.
#[derive(Debug)]
struct Record {
    kind: &'static str,
    counted: bool,
    fields: BTreeMap<String, f64>,
}

/// The images as pushed.
#[derive(Debug)]
struct Images {
    v1: String,
    v2: String,
    v1_layers: Vec<(String, u64)>,
    v2_layers: Vec<(String, u64)>,
    v2_config: (String, u64),
    v2_manifest_bytes: u64,
}

#[derive(Debug)]
struct Bench {
    args: RunArgs,
    exe: PathBuf,
    registry_pid: Option<String>,
    records: Vec<Record>,
    quiet_spent: u64,
}

/// Runs the benchmark (see the module documentation) until it ends or SIGTERM/SIGINT
/// arrives; either way the registry, the proxy and any running child are stopped (the
/// registry and the proxy on drop, the child by `kill_on_drop`).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        outcome = run_bench(args) => outcome,
        _ = terminate.recv() => bail!("stopped by SIGTERM"),
        _ = interrupt.recv() => bail!("stopped by SIGINT"),
    }
}

async fn run_bench(args: RunArgs) -> anyhow::Result<()> {
    let padding = parse_padding(&args.padding_mib)?;
    for tool in ["skopeo", "umoci", "taskset", "sync"] {
        ensure!(which(tool).is_some(), "{tool} is not installed");
    }
    ensure!(
        Path::new("/usr/bin/time").is_file(),
        "GNU time (/usr/bin/time) is not installed"
    );
    if args.strace {
        ensure!(
            which("strace").is_some(),
            "strace is not installed (needed for --strace)"
        );
    }
    if args.work.exists() {
        ensure!(
            std::fs::read_dir(&args.work)?.next().is_none(),
            "{} is not empty",
            args.work.display()
        );
    }
    std::fs::create_dir_all(&args.work).with_context(|| format!("creating {}", args.work.display()))?;
    let exe = std::env::current_exe().context("this binary's path")?;
    let sample_app = match &args.sample_app {
        Some(path) => path.clone(),
        None => exe.with_file_name("drover-sample-app"),
    };
    ensure!(
        sample_app.is_file(),
        "{} is missing (build drover-tests' bins)",
        sample_app.display()
    );

    let registry = Registry::start_plain()?;
    let host = registry.host();
    progress(&format!(
        "docker-registry on {host}; building images (padding {padding:?} bytes)"
    ));
    let started = Instant::now();
    let images = build_and_push(&registry, padding, &sample_app, &args.base_tree)?;
    progress(&format!(
        "images built and pushed in {:.0} s: v1 {} layers {:?}",
        started.elapsed().as_secs_f64(),
        images.v1,
        images.v1_layers.iter().map(|(_, size)| size).collect::<Vec<_>>()
    ));
    let proxy = registry.counting_proxy()?;
    let mut bench = Bench {
        registry_pid: child_pid("docker-registry"),
        exe,
        args,
        records: Vec::new(),
        quiet_spent: 0,
    };
    ensure!(bench.registry_pid.is_some(), "cannot find the docker-registry process");
    println!(
        "# image v1 {REPOSITORY}@{} layers (compressed bytes) {}; v2 {REPOSITORY}@{} new layer {} ({} bytes), config {} bytes, manifest {} bytes; client CPUs {}",
        images.v1,
        images
            .v1_layers
            .iter()
            .map(|(_, size)| size.to_string())
            .collect::<Vec<_>>()
            .join(" + "),
        images.v2,
        images.v2_layers[2].0,
        images.v2_layers[2].1,
        images.v2_config.1,
        images.v2_manifest_bytes,
        bench.args.client_cpus.as_deref().unwrap_or("any")
    );

    let first = 1 - i64::from(bench.args.warmup);
    for round in first..=i64::from(bench.args.reps) {
        bench.round(round, &host, &proxy.host(), &proxy, &images).await?;
    }
    if bench.args.strace {
        bench.strace_round(&host, &images).await?;
    }
    bench.summary(&images);
    drop(proxy);
    drop(registry);
    Ok(())
}

fn parse_padding(text: &str) -> anyhow::Result<[usize; 3]> {
    let parts: Vec<usize> = text
        .split(',')
        .map(|part| part.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--padding-mib {text:?}: three numbers, e.g. 40,40,20"))?;
    let [base, app, data] = parts[..] else {
        bail!("--padding-mib {text:?}: three numbers, e.g. 40,40,20");
    };
    ensure!(base + app + data <= 1024, "--padding-mib: at most 1024 MiB together");
    Ok([base << 20, app << 20, data << 20])
}

/// Builds v1 and v2 (same base and app layers, a new data layer), pushes both, and checks
/// that they share exactly the two lower layers.
fn build_and_push(
    registry: &Registry,
    padding: [usize; 3],
    sample_app: &Path,
    base_tree: &[PathBuf],
) -> anyhow::Result<Images> {
    let build = |data: &str| -> anyhow::Result<OciImage> {
        if base_tree.is_empty() {
            SampleImage {
                data: data.to_owned(),
                padding,
                padding_seed: 7,
                binary: Some(sample_app.to_path_buf()),
                ..SampleImage::new("1", 18_090)
            }
            .build()
        } else {
            tree_image(base_tree, padding, sample_app, data)
        }
    };
    let one = build("bench data v1\n").context("building image v1")?;
    let two = build("bench data v2\n").context("building image v2")?;
    let v1_digest = one.push(registry, &format!("{REPOSITORY}:v1"))?;
    let v2_digest = two.push(registry, &format!("{REPOSITORY}:v2"))?;
    let layers = |image: &OciImage| -> anyhow::Result<Vec<(String, u64)>> {
        Ok(image.layer_digests()?.into_iter().zip(image.layer_sizes()?).collect())
    };
    let (v1_layers, v2_layers) = (layers(&one)?, layers(&two)?);
    ensure!(
        v1_layers.len() == 3 && v2_layers.len() == 3,
        "the images should have 3 layers"
    );
    ensure!(
        v1_layers[..2] == v2_layers[..2] && v1_layers[2] != v2_layers[2],
        "v2 should share base and app layers with v1 and have a new data layer: {v1_layers:?} vs {v2_layers:?}"
    );
    let manifest = two.manifest()?;
    let config = (
        manifest["config"]["digest"]
            .as_str()
            .context("config digest")?
            .to_owned(),
        manifest["config"]["size"].as_u64().context("config size")?,
    );
    Ok(Images {
        v2_manifest_bytes: two.blob(&v2_digest)?.len() as u64,
        v1: v1_digest,
        v2: v2_digest,
        v1_layers,
        v2_layers,
        v2_config: config,
    })
}

/// The `--base-tree` variant of the images: a base layer holding copies of real
/// directories of this machine at their own paths (many files of real sizes and
/// compressibility, e.g. a Python standard library) plus the base padding, then app and
/// data layers as `SampleImage` makes them (the sample app's binary, padding; the data).
/// Only staging's checks need to pass (the program exists and is executable); the image
/// is not run, so its libraries are left out.
fn tree_image(trees: &[PathBuf], padding: [usize; 3], sample_app: &Path, data: &str) -> anyhow::Result<OciImage> {
    let mut image = OciImage::new()?;
    let mut base = base_accounts();
    if padding[0] > 0 {
        base.push(LayerOp::file("/opt/padding/base.bin", padding_bytes(padding[0], 7, 0)));
    }
    image.layer_with(|rootfs| {
        for tree in trees {
            ensure!(
                tree.is_absolute() && tree.is_dir(),
                "--base-tree {} is not an absolute directory",
                tree.display()
            );
            let parent = rootfs.join(tree.parent().context("a tree below /")?.strip_prefix("/")?);
            std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
            let status = std::process::Command::new("cp")
                .arg("-a")
                .arg(tree)
                .arg(&parent)
                .status()
                .context("running cp")?;
            ensure!(status.success(), "cp -a {} failed", tree.display());
        }
        base.iter().try_for_each(|operation| operation.apply(rootfs))
    })?;
    let mut app = vec![
        LayerOp::dir("/app"),
        LayerOp::dir("/app/bin"),
        LayerOp::executable(
            "/app/bin/drover-sample-app",
            std::fs::read(sample_app).with_context(|| format!("reading {}", sample_app.display()))?,
        ),
        LayerOp::file("/app/VERSION", "1\n"),
    ];
    if padding[1] > 0 {
        app.push(LayerOp::file("/app/padding.bin", padding_bytes(padding[1], 7, 1)));
    }
    image.layer(&app)?;
    let mut data_layer = vec![
        LayerOp::dir("/app/data").owned_by(1000, 1000),
        LayerOp::file("/app/data/message.txt", data).owned_by(1000, 1000),
    ];
    if padding[2] > 0 {
        data_layer.push(LayerOp::file("/app/data/padding.bin", padding_bytes(padding[2], 7, 2)));
    }
    image.layer(&data_layer)?;
    image.configure(&ImageConfig {
        entrypoint: Some(vec!["/app/bin/drover-sample-app".to_owned()]),
        cmd: Some(vec!["--listen".to_owned(), "127.0.0.1:18090".to_owned()]),
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_owned()],
        working_dir: Some("/app".to_owned()),
        user: Some("app".to_owned()),
    })?;
    Ok(image)
}

impl Bench {
    async fn round(
        &mut self,
        round: i64,
        host: &str,
        proxy_host: &str,
        proxy: &drover_tests::registry::FaultyProxy,
        images: &Images,
    ) -> anyhow::Result<()> {
        let counted = round >= 1;
        let busy = self.wait_quiet(round).await;
        progress(&format!(
            "round {round}{} (machine {busy:.0}% busy before it)",
            if counted { "" } else { " (warm-up)" }
        ));
        let dir = self.args.work.join(format!("round-{round}"));
        std::fs::create_dir_all(&dir)?;
        let agent_first = round.rem_euclid(2) == 0;
        let (mut agent_rootfs, mut bundle) = (None, None);
        for side in if agent_first {
            ["agent", "baseline"]
        } else {
            ["baseline", "agent"]
        } {
            if side == "agent" {
                let work = dir.join("agent");
                let measured = self
                    .measure_pull(host, &images.v1, &work, "v1", false, None)
                    .await
                    .context("agent pull of v1")?;
                let writeback = timed_sync()?;
                let inner = result_fields(&measured.stdout)?;
                agent_rootfs = Some(PathBuf::from(text_field(&measured.stdout, "rootfs")?));
                self.record(
                    "agent",
                    round,
                    [
                        ("seconds", measured.wall_seconds),
                        ("writeback_seconds", writeback),
                        ("inner_seconds", get(&inner, "seconds")?),
                        ("pull_seconds", get(&inner, "pull_seconds")?),
                        ("stage_seconds", get(&inner, "stage_seconds")?),
                        ("downloaded_bytes", get(&inner, "downloaded_bytes")?),
                        ("pull_vmhwm_kib", get(&inner, "pull_vmhwm_kib")?),
                        ("vmhwm_kib", get(&inner, "vmhwm_kib")?),
                        ("rss_anon_kib", get(&inner, "rss_anon_kib")?),
                        ("rss_file_kib", get(&inner, "rss_file_kib")?),
                        ("cpu_seconds", measured.cpu_seconds()),
                        ("user_seconds", measured.user_seconds),
                        ("system_seconds", measured.system_seconds),
                        ("maxrss_kib", measured.maxrss_kib as f64),
                        ("other_cpu_pct", measured.other_cpu_pct),
                        ("busy_pct", busy),
                    ],
                );
            } else {
                let base = dir.join("baseline");
                std::fs::create_dir_all(&base)?;
                let (skopeo, umoci) = self.baseline(host, &images.v1, &base, None).await?;
                let writeback = timed_sync()?;
                bundle = Some(base.join("bundle"));
                self.record(
                    "baseline",
                    round,
                    [
                        ("seconds", skopeo.wall_seconds + umoci.wall_seconds),
                        ("writeback_seconds", writeback),
                        ("skopeo_seconds", skopeo.wall_seconds),
                        ("umoci_seconds", umoci.wall_seconds),
                        ("cpu_seconds", skopeo.cpu_seconds() + umoci.cpu_seconds()),
                        ("user_seconds", skopeo.user_seconds + umoci.user_seconds),
                        ("system_seconds", skopeo.system_seconds + umoci.system_seconds),
                        ("skopeo_maxrss_kib", skopeo.maxrss_kib as f64),
                        ("umoci_maxrss_kib", umoci.maxrss_kib as f64),
                        (
                            "other_cpu_pct",
                            (skopeo.other_cpu_pct * skopeo.wall_seconds + umoci.other_cpu_pct * umoci.wall_seconds)
                                / (skopeo.wall_seconds + umoci.wall_seconds),
                        ),
                        ("busy_pct", busy),
                    ],
                );
            }
        }
        let (agent_rootfs, bundle) = (agent_rootfs.expect("the agent ran"), bundle.expect("the baseline ran"));
        compare_rootfs(&agent_rootfs, &bundle.join("rootfs")).with_context(|| format!("round {round}"))?;

        // umoci's unpack without its extras (the mtree manifest that hashes every file,
        // config.json): `umoci raw unpack` of the same layout, to show what they cost.
        let layout = dir.join("baseline/layout");
        let raw = self
            .measure(
                "umoci",
                &[
                    "raw".into(),
                    "unpack".into(),
                    "--image".into(),
                    format!("{}:{REPOSITORY}", layout.display()),
                    dir.join("baseline/raw-rootfs").display().to_string(),
                ],
                None,
            )
            .await
            .context("umoci raw unpack")?;
        self.record(
            "umoci_raw",
            round,
            [
                ("seconds", raw.wall_seconds),
                ("cpu_seconds", raw.cpu_seconds()),
                ("other_cpu_pct", raw.other_cpu_pct),
            ],
        );
        remove(&dir.join("baseline"))?;

        // The second release, in the same state directory (v1's blobs cached).
        proxy.reset_counts();
        let work = dir.join("agent");
        let measured = self
            .measure_pull(proxy_host, &images.v2, &work, "v2", false, None)
            .await
            .context("agent pull of v2 through the counting proxy")?;
        let inner = result_fields(&measured.stdout)?;
        let rootfs = PathBuf::from(text_field(&measured.stdout, "rootfs")?);
        let message = std::fs::read_to_string(rootfs.join("app/data/message.txt")).context("v2's message")?;
        ensure!(message == "bench data v2\n", "v2's rootfs holds {message:?}");
        let fetches = proxy.fetches();
        let fetched: BTreeSet<&str> = fetches.iter().map(|fetch| fetch.digest.as_str()).collect();
        let shared_fetched = images.v2_layers[..2]
            .iter()
            .filter(|(digest, _)| fetched.contains(digest.as_str()))
            .count();
        self.record(
            "second_pull",
            round,
            [
                ("seconds", measured.wall_seconds),
                ("pull_seconds", get(&inner, "pull_seconds")?),
                ("stage_seconds", get(&inner, "stage_seconds")?),
                ("downloaded_bytes", get(&inner, "downloaded_bytes")?),
                ("proxy_blob_bytes", proxy.blob_bytes() as f64),
                ("blob_fetches", fetches.len() as f64),
                ("shared_layers_fetched", shared_fetched as f64),
                ("new_layer_bytes", images.v2_layers[2].1 as f64),
                ("config_bytes", images.v2_config.1 as f64),
                ("manifest_bytes", images.v2_manifest_bytes as f64),
                ("vmhwm_kib", get(&inner, "vmhwm_kib")?),
            ],
        );
        remove(&work)?;

        if !self.args.no_split {
            let work = dir.join("split");
            let measured = self
                .measure_pull(host, &images.v1, &work, "v1", true, None)
                .await
                .context("agent pull --split")?;
            let inner = result_fields(&measured.stdout)?;
            let layers: Vec<f64> = text_field(&measured.stdout, "layer_seconds")?
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .context("layer_seconds")?;
            let mut fields = vec![
                ("seconds", measured.wall_seconds),
                ("pull_seconds", get(&inner, "pull_seconds")?),
                ("apply_seconds", get(&inner, "apply_seconds")?),
                ("sync_seconds", get(&inner, "sync_seconds")?),
                ("vmhwm_kib", get(&inner, "vmhwm_kib")?),
                ("other_cpu_pct", measured.other_cpu_pct),
            ];
            for (name, seconds) in ["base_apply_seconds", "app_apply_seconds", "data_apply_seconds"]
                .into_iter()
                .zip(layers)
            {
                fields.push((name, seconds));
            }
            self.record("split", round, fields);
            remove(&work)?;
        }
        remove(&dir)?;
        Ok(())
    }

    /// skopeo copy, then umoci unpack, into `base`; optionally each under `wrap`
    /// (strace) with its log named after the tool.
    async fn baseline(
        &self,
        host: &str,
        digest: &str,
        base: &Path,
        wrap: Option<&Path>,
    ) -> anyhow::Result<(Measured, Measured)> {
        let layout = base.join("layout");
        let bundle = base.join("bundle");
        let skopeo = self
            .measure(
                "skopeo",
                &[
                    "--insecure-policy".into(),
                    "copy".into(),
                    "--quiet".into(),
                    "--src-tls-verify=false".into(),
                    "--src-no-creds".into(),
                    format!("docker://{host}/{REPOSITORY}@{digest}"),
                    format!("oci:{}:{REPOSITORY}", layout.display()),
                ],
                wrap.map(|dir| dir.join("skopeo.strace")).as_deref(),
            )
            .await
            .context("skopeo copy")?;
        let umoci = self
            .measure(
                "umoci",
                &[
                    "unpack".into(),
                    "--image".into(),
                    format!("{}:{REPOSITORY}", layout.display()),
                    bundle.display().to_string(),
                ],
                wrap.map(|dir| dir.join("umoci.strace")).as_deref(),
            )
            .await
            .context("umoci unpack")?;
        Ok((skopeo, umoci))
    }

    /// This binary's `pull` of `REPOSITORY@digest` from `registry` into `work`.
    async fn measure_pull(
        &self,
        registry: &str,
        digest: &str,
        work: &Path,
        version: &str,
        split: bool,
        strace_log: Option<&Path>,
    ) -> anyhow::Result<Measured> {
        let mut args: Vec<String> = vec![
            "pull".into(),
            "--registry".into(),
            registry.into(),
            "--reference".into(),
            format!("{REPOSITORY}@{digest}"),
            "--work".into(),
            work.display().to_string(),
            "--insecure".into(),
            "--version".into(),
            version.into(),
        ];
        if split {
            args.push("--split".into());
        }
        let exe = self.exe.display().to_string();
        self.measure(&exe, &args, strace_log).await
    }

    /// Runs `program args` under GNU time (and taskset, and strace into `strace_log`),
    /// bounded by [`CHILD_TIMEOUT`], after an untimed `sync`.
    async fn measure(&self, program: &str, args: &[String], strace_log: Option<&Path>) -> anyhow::Result<Measured> {
        let time_file = self.args.work.join("time.out");
        let _ = std::fs::remove_file(&time_file);
        let mut command = match &self.args.client_cpus {
            Some(cpus) => {
                let mut command = tokio::process::Command::new("taskset");
                command.args(["-c", cpus, "/usr/bin/time"]);
                command
            }
            None => tokio::process::Command::new("/usr/bin/time"),
        };
        command.args(["-f", "%U %S %M", "-o"]).arg(&time_file);
        if let Some(log) = strace_log {
            command
                .args(["strace", "-f", "-qq", "--seccomp-bpf", "-T", "-y", "-o"])
                .arg(log)
                .arg("-e")
                .arg(format!("trace={}", SYNC_CALLS.join(",")));
        }
        command
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let synced = std::process::Command::new("sync").status().context("running sync")?;
        ensure!(synced.success(), "sync failed");
        let before = CpuSnapshot::now(self.registry_pid.as_deref());
        let started = Instant::now();
        let child = command.spawn().with_context(|| format!("starting {program}"))?;
        let output = tokio::time::timeout(CHILD_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| anyhow!("{program} did not finish within {CHILD_TIMEOUT:?}; killed"))?
            .with_context(|| format!("waiting for {program}"))?;
        let wall_seconds = started.elapsed().as_secs_f64();
        let after = CpuSnapshot::now(self.registry_pid.as_deref());
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            bail!("{program} {args:?} failed ({}): {stderr}", output.status);
        }
        let times = std::fs::read_to_string(&time_file).context("GNU time's output")?;
        let fields: Vec<&str> = times.lines().last().unwrap_or_default().split_whitespace().collect();
        let [user, system, maxrss] = fields[..] else {
            bail!("unexpected GNU time output {times:?}");
        };
        Ok(Measured {
            wall_seconds,
            user_seconds: user.parse()?,
            system_seconds: system.parse()?,
            maxrss_kib: maxrss.parse()?,
            other_cpu_pct: after.other_since(&before) * 100.0 / wall_seconds,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        })
    }

    /// One agent run and one baseline under strace: fsync counts and time per side.
    async fn strace_round(&mut self, host: &str, images: &Images) -> anyhow::Result<()> {
        let dir = self.args.work.join("strace");
        std::fs::create_dir_all(&dir)?;
        progress("strace round: counting sync calls");
        let agent_log = dir.join("agent.strace");
        self.measure_pull(host, &images.v1, &dir.join("agent"), "v1", false, Some(&agent_log))
            .await
            .context("agent under strace")?;
        let base = dir.join("baseline");
        std::fs::create_dir_all(&base)?;
        self.baseline(host, &images.v1, &base, Some(&dir)).await?;
        for (side, log) in [
            ("agent", agent_log),
            ("skopeo", dir.join("skopeo.strace")),
            ("umoci", dir.join("umoci.strace")),
        ] {
            let calls = sync_calls(&log)?;
            let total = |filter: &dyn Fn(&str) -> bool| -> (usize, f64) {
                calls
                    .iter()
                    .filter(|(path, _)| filter(path))
                    .fold((0, 0.0), |(count, seconds), (_, time)| (count + 1, seconds + time))
            };
            // Blobs: the agent's cache, skopeo's OCI layout. Root filesystem: the agent's
            // release directory, umoci's bundle. Other: e.g. skopeo's blob-info cache.
            let is_blob = |path: &str| {
                !path.contains("blob-info-cache")
                    && (path.contains("/cache/") || path.ends_with("/cache") || path.contains("/layout"))
            };
            let is_rootfs = |path: &str| path.contains("/apps/") || path.contains("/bundle");
            let (all, all_seconds) = total(&|_| true);
            let (blobs, blob_seconds) = total(&|path| is_blob(path));
            let (rootfs, rootfs_seconds) = total(&|path| is_rootfs(path));
            let (other, other_seconds) = total(&|path| !is_blob(path) && !is_rootfs(path));
            println!(
                "RESULT kind=fsync side={side} calls={all} seconds={all_seconds:.3} blob_calls={blobs} blob_seconds={blob_seconds:.3} rootfs_calls={rootfs} rootfs_seconds={rootfs_seconds:.3} other_calls={other} other_seconds={other_seconds:.3}"
            );
        }
        remove(&dir.join("agent"))?;
        remove(&base)?;
        Ok(())
    }

    fn record<'a>(&mut self, kind: &'static str, round: i64, fields: impl IntoIterator<Item = (&'a str, f64)>) {
        let fields: BTreeMap<String, f64> = fields.into_iter().map(|(key, value)| (key.to_owned(), value)).collect();
        let text: Vec<String> = fields
            .iter()
            .map(|(key, value)| format!("{key}={}", number(*value)))
            .collect();
        println!(
            "RESULT round={round} counted={} kind={kind} {}",
            u8::from(round >= 1),
            text.join(" ")
        );
        self.records.push(Record {
            kind,
            counted: round >= 1,
            fields,
        });
    }

    /// Waits (bounded by the round's and the run's budget) until the machine is under
    /// [`QUIET_PCT`] busy; returns how busy it was when the round started.
    async fn wait_quiet(&mut self, round: i64) -> f64 {
        let mut waited = 0;
        loop {
            let busy = busy_pct().await;
            if busy < QUIET_PCT {
                return busy;
            }
            if waited >= self.args.quiet_wait_s || self.quiet_spent >= self.args.quiet_budget_s {
                progress(&format!(
                    "machine still {busy:.0}% busy after {waited} s; measuring round {round} anyway"
                ));
                return busy;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            waited += 3;
            self.quiet_spent += 3;
        }
    }

    fn summary(&self, images: &Images) {
        let values = |kind: &str, key: &str| -> Vec<f64> {
            self.records
                .iter()
                .filter(|record| record.counted && record.kind == kind)
                .filter_map(|record| record.fields.get(key).copied())
                .collect()
        };
        let row = |label: &str, kind: &str, key: &str, scale: f64, decimals: usize| {
            let mut data = values(kind, key);
            match median_min_max(&mut data) {
                Some((median, min, max)) => println!(
                    "{label:<52} {:>10.decimals$} {:>10.decimals$} {:>10.decimals$}",
                    median / scale,
                    min / scale,
                    max / scale
                ),
                None => println!("{label:<52} {:>10}", "-"),
            }
        };
        let counted = self
            .records
            .iter()
            .filter(|record| record.counted && record.kind == "agent")
            .count();
        println!();
        println!(
            "# summary: {counted} counted rounds after {} warm-up; client CPUs {}",
            self.args.warmup,
            self.args.client_cpus.as_deref().unwrap_or("any")
        );
        println!("{:<52} {:>10} {:>10} {:>10}", "", "median", "min", "max");
        const MIB: f64 = 1024.0;
        row(
            "baseline skopeo copy + umoci unpack, wall s",
            "baseline",
            "seconds",
            1.0,
            3,
        );
        row("  skopeo copy, s", "baseline", "skopeo_seconds", 1.0, 3);
        row("  umoci unpack, s", "baseline", "umoci_seconds", 1.0, 3);
        row(
            "  writeback after it (timed `sync`), s",
            "baseline",
            "writeback_seconds",
            1.0,
            3,
        );
        row(
            "  for comparison: umoci raw unpack (no mtree), s",
            "umoci_raw",
            "seconds",
            1.0,
            3,
        );
        row(
            "  for comparison: umoci raw unpack cpu s",
            "umoci_raw",
            "cpu_seconds",
            1.0,
            2,
        );
        row("  cpu s (user+sys)", "baseline", "cpu_seconds", 1.0, 2);
        row("  user s", "baseline", "user_seconds", 1.0, 2);
        row("  sys s", "baseline", "system_seconds", 1.0, 2);
        row("  skopeo peak RSS, MiB", "baseline", "skopeo_maxrss_kib", MIB, 1);
        row("  umoci peak RSS, MiB", "baseline", "umoci_maxrss_kib", MIB, 1);
        row("agent pull + stage_image, process wall s", "agent", "seconds", 1.0, 3);
        row("  pull (own timer), s", "agent", "pull_seconds", 1.0, 3);
        row("  stage_image (own timer), s", "agent", "stage_seconds", 1.0, 3);
        row(
            "  writeback after it (timed `sync`), s",
            "agent",
            "writeback_seconds",
            1.0,
            3,
        );
        row("  cpu s (user+sys)", "agent", "cpu_seconds", 1.0, 2);
        row("  user s", "agent", "user_seconds", 1.0, 2);
        row("  sys s", "agent", "system_seconds", 1.0, 2);
        row("  peak RSS (VmHWM), MiB", "agent", "vmhwm_kib", MIB, 1);
        row(
            "  peak RSS after the pull only (VmHWM), MiB",
            "agent",
            "pull_vmhwm_kib",
            MIB,
            1,
        );
        row("  RSS at the end: anonymous, MiB", "agent", "rss_anon_kib", MIB, 1);
        row(
            "  RSS at the end: file pages (binary, libraries), MiB",
            "agent",
            "rss_file_kib",
            MIB,
            1,
        );
        if !self.args.no_split {
            row("split: pull, s", "split", "pull_seconds", 1.0, 3);
            row("split: apply 3 layers (no fsync), s", "split", "apply_seconds", 1.0, 3);
            row("split:   base layer, s", "split", "base_apply_seconds", 1.0, 3);
            row("split:   app layer, s", "split", "app_apply_seconds", 1.0, 3);
            row("split:   data layer, s", "split", "data_apply_seconds", 1.0, 3);
            row(
                "split: fsync of every file and directory, s",
                "split",
                "sync_seconds",
                1.0,
                3,
            );
        }
        row("second pull (v2): process wall s", "second_pull", "seconds", 1.0, 3);
        row("  pull, s", "second_pull", "pull_seconds", 1.0, 3);
        row(
            "  stage_image (all 3 layers again), s",
            "second_pull",
            "stage_seconds",
            1.0,
            3,
        );
        row("  agent's downloaded bytes", "second_pull", "downloaded_bytes", 1.0, 0);
        row("  proxy's blob bytes", "second_pull", "proxy_blob_bytes", 1.0, 0);
        row(
            "  blob downloads seen by the proxy",
            "second_pull",
            "blob_fetches",
            1.0,
            0,
        );
        row(
            "other processes' CPU during agent runs, % of one CPU",
            "agent",
            "other_cpu_pct",
            1.0,
            0,
        );
        row(
            "other processes' CPU during baseline runs, %",
            "baseline",
            "other_cpu_pct",
            1.0,
            0,
        );
        row(
            "machine busy before a round, % of all CPUs",
            "agent",
            "busy_pct",
            1.0,
            0,
        );

        let median = |kind: &str, key: &str| median_min_max(&mut values(kind, key)).map(|(median, _, _)| median);
        if let (Some(agent), Some(baseline)) = (median("agent", "seconds"), median("baseline", "seconds")) {
            let ratio = agent / baseline;
            println!(
                "ratio agent/baseline, median wall: {ratio:.2} (target <= 1.00: {})",
                if ratio <= 1.0 { "met" } else { "MISSED" }
            );
            if let (Some(agent_writeback), Some(baseline_writeback)) = (
                median("agent", "writeback_seconds"),
                median("baseline", "writeback_seconds"),
            ) {
                println!(
                    "ratio with each side's write-back added (both durable): {:.2}",
                    (agent + agent_writeback) / (baseline + baseline_writeback)
                );
            }
        }
        let new_layer = images.v2_layers[2].1;
        let expected_agent = images.v2_manifest_bytes + images.v2_config.1 + new_layer;
        let expected_proxy = images.v2_config.1 + new_layer;
        let second: Vec<&Record> = self
            .records
            .iter()
            .filter(|record| record.counted && record.kind == "second_pull")
            .collect();
        let exact = second.iter().all(|record| {
            record.fields["downloaded_bytes"] as u64 == expected_agent
                && record.fields["proxy_blob_bytes"] as u64 == expected_proxy
                && record.fields["shared_layers_fetched"] == 0.0
        });
        println!(
            "second pull: new layer {new_layer} bytes + config {} + manifest {} = {expected_agent}; agent counted {}, proxy forwarded {} blob bytes (expected {expected_proxy}), shared layers fetched {} (target: only the new layer: {})",
            images.v2_config.1,
            images.v2_manifest_bytes,
            second
                .iter()
                .map(|record| number(record.fields["downloaded_bytes"]))
                .collect::<Vec<_>>()
                .join("/"),
            second
                .iter()
                .map(|record| number(record.fields["proxy_blob_bytes"]))
                .collect::<Vec<_>>()
                .join("/"),
            second
                .iter()
                .map(|record| number(record.fields["shared_layers_fetched"]))
                .collect::<Vec<_>>()
                .join("/"),
            if exact && !second.is_empty() { "met" } else { "MISSED" }
        );
        let peak = self
            .records
            .iter()
            .filter(|record| record.kind != "baseline")
            .filter_map(|record| record.fields.get("vmhwm_kib").copied())
            .fold(0.0, f64::max);
        println!(
            "agent peak RSS over all pulls (VmHWM): {:.1} MiB (target <= 48 MiB: {})",
            peak / MIB,
            if peak <= 48.0 * MIB { "met" } else { "MISSED" }
        );
        println!(
            "verification: every round's agent rootfs matched umoci's (paths, types, file sizes), v2 staged its own data"
        );
        // The met/MISSED lines report; they decide nothing.
    }
}

/// Runs `sync` and returns how long it took: the write-back a run left behind (a run that
/// fsynced its files leaves almost none).
fn timed_sync() -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = std::process::Command::new("sync").status().context("running sync")?;
    ensure!(status.success(), "sync failed");
    Ok(started.elapsed().as_secs_f64())
}

/// CPU counters at one instant: the machine's busy time, this process tree's (reaped
/// children included) and the registry's.
#[derive(Debug)]
struct CpuSnapshot {
    machine: f64,
    own: f64,
    registry: f64,
}

impl CpuSnapshot {
    fn now(registry_pid: Option<&str>) -> CpuSnapshot {
        CpuSnapshot {
            machine: proc_stat().map_or(0.0, |(busy, _)| busy),
            own: own_cpu_with_children().unwrap_or(0.0),
            registry: registry_pid.and_then(cpu_seconds).unwrap_or(0.0),
        }
    }

    /// CPU seconds other processes used since `before`.
    fn other_since(&self, before: &CpuSnapshot) -> f64 {
        ((self.machine - before.machine) - (self.own - before.own) - (self.registry - before.registry)).max(0.0)
    }
}

const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime + cutime + cstime of this process, in seconds.
fn own_cpu_with_children() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let mut total = 0.0;
    for index in 11..=14 {
        total += fields.get(index)?.parse::<f64>().ok()?;
    }
    Some(total / TICKS_PER_SECOND)
}

/// (busy, total) CPU seconds of the whole machine from /proc/stat.
fn proc_stat() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|field| field.parse().unwrap_or(0.0))
        .collect();
    let total: f64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    Some(((total - idle) / TICKS_PER_SECOND, total / TICKS_PER_SECOND))
}

/// How busy the machine is over the next second, in percent of all its CPUs.
async fn busy_pct() -> f64 {
    let before = proc_stat();
    tokio::time::sleep(Duration::from_secs(1)).await;
    match (before, proc_stat()) {
        (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
            100.0 * (busy1 - busy0) / (total1 - total0)
        }
        _ => 0.0,
    }
}

/// The PID of this process's child named `name` (the registry the fixture started).
fn child_pid(name: &str) -> Option<String> {
    let own = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .find_map(|entry| {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|byte| byte.is_ascii_digit()) {
                return None;
            }
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (open, close) = (stat.find('(')?, stat.rfind(')')?);
            let comm = &stat[open + 1..close];
            let ppid = stat[close + 2..].split(' ').nth(1)?;
            (ppid == own && name.starts_with(comm)).then_some(pid)
        })
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(tool))
        .find(|path| path.is_file())
}

/// The `key=value` fields of the RESULT line in `stdout` that parse as numbers.
fn result_fields(stdout: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let line = result_line(stdout)?;
    Ok(line
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .filter_map(|(key, value)| Some((key.to_owned(), value.parse().ok()?)))
        .collect())
}

fn text_field(stdout: &str, key: &str) -> anyhow::Result<String> {
    result_line(stdout)?
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == key)
        .map(|(_, value)| value.to_owned())
        .ok_or_else(|| anyhow!("no {key}= in the RESULT line"))
}

fn result_line(stdout: &str) -> anyhow::Result<&str> {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("RESULT "))
        .ok_or_else(|| anyhow!("no RESULT line in {stdout:?}"))
}

fn get(fields: &BTreeMap<String, f64>, key: &str) -> anyhow::Result<f64> {
    fields
        .get(key)
        .copied()
        .ok_or_else(|| anyhow!("no {key}= in the RESULT line"))
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.4}")
    }
}

fn median_min_max(values: &mut [f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    Some((median, values[0], values[n - 1]))
}

fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn progress(message: &str) {
    eprintln!("[drover-oci-bench] {message}");
}

/// Every entry below `root`: relative path -> (kind, size of a regular file).
fn tree(root: &Path) -> anyhow::Result<BTreeMap<String, (char, u64)>> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).with_context(|| format!("reading {}", directory.display()))? {
            let entry = entry?;
            let metadata = entry.path().symlink_metadata()?;
            let relative = entry
                .path()
                .strip_prefix(root)
                .expect("below the root")
                .display()
                .to_string();
            let kind = if metadata.is_dir() {
                pending.push(entry.path());
                'd'
            } else if metadata.is_symlink() {
                'l'
            } else if metadata.is_file() {
                'f'
            } else {
                'o'
            };
            entries.insert(relative, (kind, if kind == 'f' { metadata.len() } else { 0 }));
        }
    }
    Ok(entries)
}

/// The agent's rootfs holds what umoci's does (paths, kinds, file sizes), plus only
/// the mount points and `etc/resolv.conf` that staging adds.
fn compare_rootfs(agent: &Path, umoci: &Path) -> anyhow::Result<()> {
    let (ours, theirs) = (tree(agent)?, tree(umoci)?);
    let differing: Vec<&String> = theirs
        .iter()
        .filter(|(path, entry)| ours.get(*path) != Some(entry))
        .map(|(path, _)| path)
        .collect();
    let extra: Vec<&String> = ours
        .keys()
        .filter(|path| !theirs.contains_key(*path) && !STAGING_EXTRAS.contains(&path.as_str()))
        .collect();
    ensure!(
        differing.is_empty() && extra.is_empty(),
        "the agent's rootfs {} differs from umoci's {}: differing or missing {differing:?}, extra {extra:?}",
        agent.display(),
        umoci.display()
    );
    ensure!(theirs.len() > 3, "umoci's rootfs is nearly empty");
    Ok(())
}

/// The sync calls in strace log `log`: (path of the descriptor, seconds) each.
fn sync_calls(log: &Path) -> anyhow::Result<Vec<(String, f64)>> {
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let mut pending: BTreeMap<String, String> = BTreeMap::new();
    let mut calls = Vec::new();
    for line in text.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let duration = || -> f64 {
            rest.rfind('<')
                .filter(|_| rest.ends_with('>'))
                .and_then(|start| rest[start + 1..rest.len() - 1].parse().ok())
                .unwrap_or(0.0)
        };
        if let Some(resumed) = rest.strip_prefix("<... ") {
            if SYNC_CALLS
                .iter()
                .any(|call| resumed.starts_with(&format!("{call} resumed")))
            {
                let path = pending.remove(pid).unwrap_or_default();
                calls.push((path, duration()));
            }
            continue;
        }
        let Some(name) = rest.split('(').next() else { continue };
        if !SYNC_CALLS.contains(&name) {
            continue;
        }
        // `fsync(7</path/to/file>)`: the path strace -y prints for the descriptor.
        let path = rest
            .split_once('<')
            .and_then(|(_, after)| after.split_once('>'))
            .map(|(path, _)| path.to_owned())
            .unwrap_or_default();
        if rest.contains("<unfinished ...>") {
            pending.insert(pid.to_owned(), path);
        } else {
            calls.push((path, duration()));
        }
    }
    Ok(calls)
}
