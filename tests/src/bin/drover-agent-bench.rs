//! `drover-agent-bench`: the agent's host-side benchmarks (issue 4; BENCHMARKS.md, "Agent
//! (issue 4)"), run by `scripts/bench-agent.sh`. It reuses the end-to-end harness: a real
//! `drover serve`, real systemd-nspawn hosts running the real `drover-agent` under
//! `systemd/drover-agent.service`, the sample app as release tarballs.
//!
//! - `idle`: per run a fresh host joins, gets `web 1` deployed and healthy (unless
//!   `--no-app`), then its agent is restarted on the product's default intervals
//!   (`poll_interval` 30 s, `long_poll` 60 s: the e2e overrides are removed from
//!   `/etc/drover/agent.toml`). From the moment `systemctl restart` returns (the unit is
//!   `Type=notify`, so the agent is up) `/proc/<machine PID>/status` and `/stat` are
//!   sampled every 5 s, as `shared/bench/mender-rss.sh` does for mender-client.
//! - `pins`: one host on the same defaults serves `web`; `web` is pinned alternately to
//!   two good releases. Per pin: the `drover pin` wall time, and from its start until the
//!   agent logs "accepted manifest", systemd stops the old app process, the app's port
//!   answers the new version (a new process), and the agent logs "is healthy".
//!
//! Binaries come from the target profile directory this program was built in
//! ([`drover_tests::binary`] expects to run from `target/<profile>/deps/`; the script copies
//! it there). Output: one `RESULT` line per run or pin on stdout, raw files in `--out`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use drover_tests::e2e::{AGENT_UNIT, AgentHost, Behaviour, CoordinatorProcess, Releases, free_port};
use drover_tests::hosts::HostOptions;

const APP_UNIT: &str = "drover-web.service";
const CONVERGE: Duration = Duration::from_secs(90);
const SAMPLE_EVERY: u64 = 5;

#[derive(Parser, Debug)]
#[command(about = "drover-agent host-side benchmarks (idle footprint, pin latency)")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Idle footprint: VmRSS/VmHWM/CPU of the agent over DURATION s, REPS fresh hosts.
    Idle {
        #[arg(long, default_value_t = 3)]
        reps: u32,
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Measure an agent with nothing deployed (default: one healthy app).
        #[arg(long)]
        no_app: bool,
        #[arg(long)]
        out: PathBuf,
    },
    /// Pin -> app restart latency, COUNT pins alternating between two good releases.
    Pins {
        #[arg(long, default_value_t = 10)]
        count: u32,
        /// `KEY=VALUE` for the agent's environment (a unit drop-in), e.g. MALLOC_ARENA_MAX=1.
        #[arg(long)]
        agent_env: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let exe = std::env::current_exe().context("current exe")?;
    if exe.parent().and_then(Path::file_name).is_none_or(|name| name != "deps") {
        bail!(
            "run me from target/<profile>/deps/ (drover_tests::binary resolves drover and drover-agent from there); \
             scripts/bench-agent.sh does"
        );
    }
    match cli.mode {
        Mode::Idle {
            reps,
            duration,
            no_app,
            out,
        } => idle(reps, duration, !no_app, &out),
        Mode::Pins { count, agent_env, out } => pins(count, &agent_env, &out),
    }
}

/// Removes the e2e harness's short intervals so the agent runs on the product defaults,
/// and restarts it. Returns the config now in force.
fn product_defaults(agent: &AgentHost) -> anyhow::Result<String> {
    let config = String::from_utf8(agent.host.read_file("/etc/drover/agent.toml")?).context("agent.toml")?;
    let config: String = config
        .lines()
        .filter(|line| {
            let key = line.trim_start();
            !key.starts_with("poll_interval") && !key.starts_with("long_poll")
        })
        .fold(String::new(), |mut text, line| {
            text.push_str(line);
            text.push('\n');
            text
        });
    agent
        .host
        .write_file("/etc/drover/agent.toml", config.as_bytes(), 0o644)?;
    agent.host.check(&["systemctl", "restart", AGENT_UNIT])?;
    Ok(config)
}

fn release(coordinator: &CoordinatorProcess, releases: &Releases, version: &str, port: u16) -> anyhow::Result<()> {
    let tarball = releases.tarball(version, 0)?;
    let spec = releases.spec(&format!("web-{version}"), port, Behaviour::Good)?;
    coordinator.drover_ok(&[
        "release",
        "create",
        "web",
        version,
        "--spec",
        spec.to_str().context("utf-8")?,
        "--artifact",
        tarball.to_str().context("utf-8")?,
    ])?;
    Ok(())
}

/// The machine-side PID of the process whose PID inside the host (innermost `NSpid`) is
/// `inner` and that lives in the PID namespace of the host's init.
fn machine_pid(init_pid: u32, inner: u32) -> anyhow::Result<u32> {
    let namespace = std::fs::read_link(format!("/proc/{init_pid}/ns/pid")).context("host pid namespace")?;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok().as_ref() != Some(&namespace) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let innermost = status
            .lines()
            .find_map(|line| line.strip_prefix("NSpid:"))
            .and_then(|pids| pids.split_whitespace().last())
            .and_then(|pid| pid.parse::<u32>().ok());
        if innermost == Some(inner) {
            return Ok(pid);
        }
    }
    bail!("no machine PID for PID {inner} in the namespace of {init_pid}")
}

/// One `/proc` sample of a process.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    t: u64,
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    shmem_kib: u64,
    threads: u64,
    /// utime + stime (clock ticks, 100/s), dead threads included.
    cpu_ticks: u64,
    /// Sum of the live threads' on-CPU time from `/proc/PID/task/*/schedstat` (ns).
    sched_ns: u64,
}

fn sample(pid: u32, t: u64) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("process gone")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("process gone")?;
    let after_comm = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // After "pid (comm) ": state is field 0, utime field 11, stime field 12.
    let tick = |index: usize| {
        fields
            .get(index)
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut sched_ns = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            sched_ns += text
                .split_whitespace()
                .next()
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(Sample {
        t,
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        anon_kib: field("RssAnon:"),
        file_kib: field("RssFile:"),
        shmem_kib: field("RssShmem:"),
        threads: field("Threads:"),
        cpu_ticks: tick(11) + tick(12),
        sched_ns,
    })
}

/// Rss of `pid`'s mappings grouped by what is mapped (file path, `[heap]`, `[anon]`), from
/// `/proc/PID/smaps`, largest first.
fn smaps_by_name(pid: u32) -> Vec<(String, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by_name: std::collections::BTreeMap<String, (u64, u64)> = std::collections::BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let name = line.split_whitespace().nth(5).unwrap_or("[anon]").to_owned();
            current = name;
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            let entry = by_name.entry(current.clone()).or_default();
            entry.0 += kib;
            entry.1 += 1;
        }
    }
    let mut rows: Vec<(String, u64, u64)> = by_name
        .into_iter()
        .map(|(name, (kib, count))| (name, kib, count))
        .collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.1));
    rows
}

fn smaps_text(rows: &[(String, u64, u64)]) -> String {
    rows.iter().fold(String::new(), |mut out, (name, kib, count)| {
        let _ = writeln!(out, "{kib:>8} kB  {count:>4} maps  {name}");
        out
    })
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn idle(reps: u32, duration: u64, with_app: bool, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let coordinator = CoordinatorProcess::start()?;
    let releases = Releases::new()?;
    let port = free_port();
    if with_app {
        release(&coordinator, &releases, "1", port)?;
        coordinator.drover_ok(&["pin", "web", "1"])?;
    }
    for run in 1..=reps {
        let agent = AgentHost::start("bench-idle", &coordinator, &HostOptions::default())?;
        if with_app {
            agent.wait_serving(port, "1", CONVERGE)?;
            agent.wait_healthy("web", "1", CONVERGE)?;
        }
        let config = product_defaults(&agent)?;
        let t0 = Instant::now();
        let inner = agent.agent_pid().context("agent has no MainPID")?;
        let pid = machine_pid(agent.host.init_pid(), inner)?;
        if run == 1 {
            write(&out.join("agent.toml"), &config)?;
        }
        let mut csv =
            String::from("t_s,vmrss_kib,vmhwm_kib,rssanon_kib,rssfile_kib,rssshmem_kib,threads,cpu_ticks,sched_ns\n");
        let mut samples = Vec::new();
        let mut t = SAMPLE_EVERY;
        while t <= duration {
            let wake = t0 + Duration::from_secs(t);
            std::thread::sleep(wake.saturating_duration_since(Instant::now()));
            let now = sample(pid, t).with_context(|| format!("run {run}: the agent exited before {t} s"))?;
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{}",
                now.t, now.rss_kib, now.hwm_kib, now.anon_kib, now.file_kib, now.threads, now.cpu_ticks, now.sched_ns
            );
            samples.push(now);
            t += SAMPLE_EVERY;
        }
        if agent.agent_pid() != Some(inner) {
            bail!("run {run}: the agent restarted during the measurement");
        }
        write(&out.join(format!("idle{run}.csv")), &csv)?;
        write(
            &out.join(format!("idle{run}.smaps_rollup")),
            &std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default(),
        )?;
        let maps = smaps_by_name(pid);
        write(&out.join(format!("idle{run}.smaps_top")), &smaps_text(&maps))?;
        let mapped = |wanted: &str| {
            maps.iter()
                .filter(|(name, _, _)| name == wanted)
                .map(|(_, kib, _)| kib)
                .sum::<u64>()
        };
        let libs: u64 = maps
            .iter()
            .filter(|(name, _, _)| name.contains(".so"))
            .map(|(_, kib, _)| kib)
            .sum();
        write(
            &out.join(format!("idle{run}.journal")),
            &agent.host.journal_lines(Some(AGENT_UNIT), 500),
        )?;
        let at10 = samples.iter().find(|s| s.t == 10).copied().unwrap_or_default();
        let end = samples.last().copied().unwrap_or_default();
        let polls = agent.host.journal_lines(Some(AGENT_UNIT), 500);
        let failures = polls.matches("polling failed").count();
        println!(
            "RESULT idle run={run} app={with_app} duration={duration} rss10_kib={} rss_kib={} hwm_kib={} anon_kib={} file_kib={} \
             shmem_kib={} binmap_kib={} libs_kib={} heap_kib={} threads={} cpu_s={:.2} cpu10_s={:.2} sched_s={:.4} sched10_s={:.4} poll_failures={failures}",
            at10.rss_kib,
            end.rss_kib,
            end.hwm_kib,
            end.anon_kib,
            end.file_kib,
            end.shmem_kib,
            mapped("/usr/bin/drover-agent"),
            libs,
            mapped("[heap]"),
            end.threads,
            end.cpu_ticks as f64 / 100.0,
            at10.cpu_ticks as f64 / 100.0,
            end.sched_ns as f64 / 1e9,
            at10.sched_ns as f64 / 1e9,
        );
    }
    Ok(())
}

/// Microseconds since the epoch.
fn epoch_us(at: SystemTime) -> u64 {
    u64::try_from(at.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros()).unwrap_or(u64::MAX)
}

/// The first journal entry (of the agent's or the app's unit) at or after `since_us` whose
/// message contains `needle`: its realtime stamp in µs.
fn journal_time(entries: &[serde_json::Value], since_us: u64, unit: &str, needle: &str) -> Option<u64> {
    entries.iter().find_map(|entry| {
        let at: u64 = entry["__REALTIME_TIMESTAMP"].as_str()?.parse().ok()?;
        let message = entry["MESSAGE"].as_str()?;
        let of_unit = entry["_SYSTEMD_UNIT"] == unit || entry["UNIT"] == unit;
        (at >= since_us && of_unit && message.contains(needle)).then_some(at)
    })
}

fn pins(count: u32, agent_env: &[String], out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let coordinator = CoordinatorProcess::start()?;
    let releases = Releases::new()?;
    let port = free_port();
    release(&coordinator, &releases, "1", port)?;
    release(&coordinator, &releases, "2", port)?;
    let agent = AgentHost::start("bench-pins", &coordinator, &HostOptions::default())?;
    if !agent_env.is_empty() {
        let dropin = agent_env.iter().fold(String::from("[Service]\n"), |mut text, pair| {
            let _ = writeln!(text, "Environment={pair}");
            text
        });
        agent.host.write_file(
            "/etc/systemd/system/drover-agent.service.d/bench.conf",
            dropin.as_bytes(),
            0o644,
        )?;
        agent.host.check(&["systemctl", "daemon-reload"])?;
    }
    product_defaults(&agent)?;
    coordinator.drover_ok(&["pin", "web", "1"])?;
    agent.wait_serving(port, "1", CONVERGE)?;
    agent.wait_healthy("web", "1", CONVERGE)?;
    let agent_inner = agent.agent_pid().context("agent has no MainPID")?;
    let agent_pid = machine_pid(agent.host.init_pid(), agent_inner)?;
    let mut journal_all = String::new();
    for index in 0..count {
        let version = if index % 2 == 0 { "2" } else { "1" };
        let expected = format!("drover-sample-app {version}");
        // Let the agent finish reporting and sit in its long-poll again.
        std::thread::sleep(Duration::from_secs(3));
        let old_app = agent.host.pid_of_unit(APP_UNIT);
        let wall0 = SystemTime::now();
        let t0 = Instant::now();
        coordinator.drover_ok(&["pin", "web", version])?;
        let pin_wall = t0.elapsed();
        let deadline = t0 + Duration::from_secs(60);
        let serving = loop {
            if AgentHost::get(port, "/").as_deref() == Some(expected.as_str()) {
                break t0.elapsed();
            }
            if Instant::now() > deadline {
                bail!("pin {index}: {version} not served within 60 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        agent.wait_healthy("web", version, CONVERGE)?;
        let new_app = agent.host.pid_of_unit(APP_UNIT);
        if new_app.is_none() || new_app == old_app {
            bail!("pin {index}: the app's MainPID did not change ({old_app:?} -> {new_app:?})");
        }
        let since = epoch_us(wall0);
        let since_arg = format!("@{}", since / 1_000_000);
        let output = agent.host.check(&[
            "journalctl",
            "--no-pager",
            "-o",
            "json",
            "--since",
            &since_arg,
            "-u",
            AGENT_UNIT,
            "-u",
            APP_UNIT,
        ])?;
        let entries: Vec<serde_json::Value> = output
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        let offset = |at: Option<u64>| at.map_or(f64::NAN, |at| (at.saturating_sub(since)) as f64 / 1e6);
        let accepted = offset(journal_time(&entries, since, AGENT_UNIT, "accepted manifest"));
        let stopping = offset(journal_time(&entries, since, APP_UNIT, "Stopping"));
        let started = offset(journal_time(&entries, since, APP_UNIT, "Started"));
        let healthy = offset(journal_time(
            &entries,
            since,
            AGENT_UNIT,
            &format!("{version} is healthy"),
        ));
        for entry in &entries {
            let _ = writeln!(
                journal_all,
                "pin{index} {} {} {}",
                entry["__REALTIME_TIMESTAMP"].as_str().unwrap_or(""),
                entry["_SYSTEMD_UNIT"].as_str().or(entry["UNIT"].as_str()).unwrap_or(""),
                entry["MESSAGE"].as_str().unwrap_or("")
            );
        }
        let memory = sample(agent_pid, 0)?;
        println!(
            "RESULT pin index={index} version={version} pin_cmd_s={:.3} accepted_s={accepted:.3} stopping_s={stopping:.3} \
             started_s={started:.3} serving_s={:.3} healthy_s={healthy:.3} agent_rss_kib={} agent_anon_kib={}",
            pin_wall.as_secs_f64(),
            serving.as_secs_f64(),
            memory.rss_kib,
            memory.anon_kib,
        );
    }
    write(&out.join("pins.journal"), &journal_all)?;
    // The agent's footprint after the series: VmHWM covers every install (download,
    // unpack on the blocking pool, D-Bus calls, health checks) since the restart.
    if agent.agent_pid() != Some(agent_inner) {
        bail!("the agent restarted during the pin series");
    }
    let after = sample(agent_pid, 0)?;
    println!(
        "RESULT pinmem pins={count} rss_kib={} hwm_kib={} anon_kib={} threads={} cpu_s={:.2}",
        after.rss_kib,
        after.hwm_kib,
        after.anon_kib,
        after.threads,
        after.cpu_ticks as f64 / 100.0
    );
    Ok(())
}
