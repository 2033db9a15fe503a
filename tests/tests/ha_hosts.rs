//! Several coordinators on one PostgreSQL (issue 16) with real systemd hosts
//! (systemd-nspawn, SPEC §7): three `drover serve` replicas ([`Replicas`]) listening on a
//! private bridge, hosts on that bridge with the agent installed from its .deb and joined
//! with the line `drover token create --coordinators U1,U2,U3` prints, and the sample app
//! released and served on each host. What a fake systemd on a private bus cannot show is
//! shown here: the real agent under its real unit keeps deploying when the replica it
//! talks to dies with kill -9, and joins and works through the next coordinator when the
//! first one it knows is dead.
//!
//! Replicas share no disk and refuse uploads, so releases name their tarball by URL
//! (`release create --artifact URL --digest --size`): a small HTTP server of the test on
//! the bridge serves the files, and the agent checks the digest as for any download.
//!
//! Needs root, PostgreSQL binaries, and dist/*.deb built from this tree
//! (`bash packaging/build.sh`).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use drover_tests::binary;
use drover_tests::e2e::{AGENT_UNIT, AgentHost, Behaviour, Releases, install_package, package, run_ok};
use drover_tests::hosts::Host;
use drover_tests::net::Bridge;
use drover_tests::replicas::{Replica, Replicas};

/// The sample app's port inside each host (each host has its own loopback).
const PORT: u16 = 8080;
/// How long a host may take to install and report a release healthy.
const CONVERGE: Duration = Duration::from_secs(120);
/// How long the fleet may take to run v2 after the replica it used was killed: a
/// failover (a retry after 0.5 to 1 s), a long-poll on the next replica, a download and
/// the health checks' grace (8 s at most for the sample spec).
const FAILOVER_CONVERGE: Duration = Duration::from_secs(60);

/// A plain HTTP server on `ip` serving the files of a directory (GET and HEAD), on a
/// thread of its own that ends with the test process. Just enough for an agent to
/// download a release tarball by URL.
struct FileServer {
    base: String,
}

impl FileServer {
    fn start(ip: Ipv4Addr, directory: PathBuf) -> FileServer {
        let listener = TcpListener::bind((ip, 0)).expect("bind the file server");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let directory = directory.clone();
                std::thread::spawn(move || serve_one(stream, &directory));
            }
        });
        FileServer { base }
    }

    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }
}

/// Answers one request: the named file of `directory` (no subdirectories), or 404.
fn serve_one(stream: std::net::TcpStream, directory: &Path) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Skip the headers.
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let mut stream = reader.into_inner();
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let name = path.trim_start_matches('/');
    let file = (!name.is_empty() && !name.contains('/') && !name.contains(".."))
        .then(|| std::fs::read(directory.join(name)).ok())
        .flatten();
    let _ = match file {
        Some(bytes) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/gzip\r\nConnection: close\r\n\r\n",
                bytes.len()
            );
            stream.write_all(head.as_bytes()).and_then(|()| {
                if method == "HEAD" {
                    Ok(())
                } else {
                    stream.write_all(&bytes)
                }
            })
        }
        None => stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    };
}

/// The `drover` CLI against one replica (its data directory names its address, the
/// shared admin token and CA); stdout, or a panic with the output.
fn drover(replica: &Replica, args: &[&str]) -> String {
    run_ok(
        Command::new(binary("drover"))
            .args(args)
            .env("DROVER_DATA_DIR", &replica.data_dir)
            .env_remove("DROVER_ADDR")
            .env_remove("DROVER_TOKEN")
            .env_remove("DROVER_CA")
            .env_remove("DROVER_COORDINATORS"),
    )
    .unwrap_or_else(|error| panic!("{error}"))
}

/// Releases `web 1.0.0` and `web 2.0.0` of the sample app through `replica`, each a
/// tarball the hosts download from `files` by URL (digest and size given here).
fn release_versions(replica: &Replica, releases: &Releases, files: &FileServer) {
    let spec = releases.spec("web", PORT, Behaviour::Good).expect("spec");
    for version in ["1.0.0", "2.0.0"] {
        let tarball = releases.tarball(version, 0).expect("tarball");
        let name = tarball
            .file_name()
            .and_then(|name| name.to_str())
            .expect("name")
            .to_owned();
        let bytes = std::fs::read(&tarball).expect("read tarball");
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let hex: String = digest.as_ref().iter().map(|byte| format!("{byte:02x}")).collect();
        drover(
            replica,
            &[
                "release",
                "create",
                "web",
                version,
                "--spec",
                spec.to_str().expect("utf-8"),
                "--artifact",
                &files.url(&name),
                "--digest",
                &format!("sha256:{hex}"),
                "--size",
                &bytes.len().to_string(),
            ],
        );
    }
}

/// Boots host number `n` on `bridge`, installs the agent from dist/'s .deb, joins it with
/// the line `drover token create --coordinators` prints through `replica`, and starts the
/// agent. `before_start` runs between the join and the start. Returns the host and what
/// the join printed.
fn join_host(
    bridge: &Bridge,
    n: u8,
    replica: &Replica,
    coordinators: &[String],
    before_start: impl FnOnce(&Host),
) -> (AgentHost, String) {
    let host = Host::boot("ha", &bridge.host_options()).expect("boot");
    let reachable = coordinators
        .iter()
        .find(|url| url.contains(&replica.ip.to_string()) && url.ends_with(&format!(":{}", replica.port)))
        .expect("the replica is one of the coordinators");
    bridge
        .configure(&host, n, &format!("{reachable}/healthz"))
        .expect("bridge");
    install_package(&host, &package("drover-agent_", "_amd64.deb").expect("package")).expect("dpkg -i");
    let line = drover(replica, &["token", "create", "--coordinators", &coordinators.join(",")]);
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|word| *word == "join").expect("a join line");
    assert_eq!(
        words[at + 1],
        coordinators.join(","),
        "the join line names every coordinator: {line}"
    );
    let id = host.name().to_owned();
    let mut argv = vec!["drover-agent"];
    argv.extend(&words[at..]);
    argv.extend(["--host-id", &id]);
    let printed = host.check(&argv).expect("drover-agent join");
    eprintln!("{id}: {}", printed.trim());
    let config = String::from_utf8(host.read_file("/etc/drover/agent.toml").expect("agent.toml")).expect("utf-8");
    let listed = coordinators
        .iter()
        .map(|url| format!("\"{url}\""))
        .collect::<Vec<_>>()
        .join(", ");
    assert!(config.contains(&format!("coordinators = [{listed}]")), "{config}");
    let config = format!("{config}poll_interval = \"5s\"\nlong_poll = \"30s\"\n");
    host.write_file("/etc/drover/agent.toml", config.as_bytes(), 0o644)
        .expect("agent.toml");
    before_start(&host);
    host.check(&["systemctl", "start", AGENT_UNIT])
        .expect("start the agent");
    (AgentHost { host, id }, printed)
}

/// The coordinator `drover-agent status` names as the one the agent talks to now.
fn current_coordinator(host: &AgentHost) -> String {
    host.status().expect("drover-agent status")["coordinator"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn agent_journal(host: &AgentHost) -> String {
    host.host.journal(Some(AGENT_UNIT))
}

/// A URL on the bridge where nothing listens (bound and closed again: refused).
fn dead_url(ip: Ipv4Addr) -> String {
    let listener = TcpListener::bind((ip, 0)).expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    format!("https://{ip}:{port}")
}

#[test]
fn three_real_hosts_on_three_replicas_keep_deploying_when_the_replica_they_use_is_killed() {
    let bridge = Bridge::create().expect("bridge");
    let mut replicas = Replicas::start_on(3, bridge.gateway());
    let urls = replicas.urls();
    let releases = Releases::new().expect("releases");
    let files = FileServer::start(bridge.gateway(), releases.path().to_owned());
    release_versions(&replicas.replicas[0], &releases, &files);

    let started = Instant::now();
    let fleet: Vec<AgentHost> = std::thread::scope(|scope| {
        let booting: Vec<_> = (1..=3u8)
            .map(|n| {
                let (bridge, replica, urls) = (&bridge, &replicas.replicas[0], &urls);
                scope.spawn(move || join_host(bridge, n, replica, urls, |_| {}).0)
            })
            .collect();
        booting
            .into_iter()
            .map(|thread| thread.join().expect("boot thread"))
            .collect()
    });
    eprintln!("3 hosts booted and joined in {:.1} s", started.elapsed().as_secs_f64());

    drover(&replicas.replicas[0], &["pin", "web", "1.0.0"]);
    for host in &fleet {
        host.wait_healthy("web", "1.0.0", CONVERGE).expect("1.0.0 healthy");
        assert_eq!(host.get_inside(PORT, "/").as_deref(), Some("drover-sample-app 1.0.0"));
    }

    // Each agent stays on the first coordinator it knows while that one answers.
    let used: Vec<String> = fleet.iter().map(current_coordinator).collect();
    eprintln!("coordinators in use: {used:?}");
    for (host, url) in fleet.iter().zip(&used) {
        assert_eq!(url, &urls[0], "{} stays on the first coordinator", host.id);
        let journal = agent_journal(host);
        assert!(!journal.contains("unreachable ("), "{} never moved: {journal}", host.id);
    }
    // The replica holding most hosts (all of them here) dies without a word.
    let busiest = (0..urls.len())
        .max_by_key(|index| used.iter().filter(|url| **url == urls[*index]).count())
        .expect("replicas");
    let killed_url = urls[busiest].clone();
    replicas.replicas[busiest].kill();
    let killed = Instant::now();
    eprintln!("killed -9 the replica at {killed_url}");

    let other = (busiest + 1) % urls.len();
    drover(&replicas.replicas[other], &["pin", "web", "2.0.0"]);
    let pinned = Instant::now();
    for host in &fleet {
        host.wait_healthy("web", "2.0.0", FAILOVER_CONVERGE)
            .unwrap_or_else(|error| panic!("{error}\nreplica logs:\n{}", replicas.logs()));
        let healthy = pinned.elapsed();
        assert_eq!(host.get_inside(PORT, "/").as_deref(), Some("drover-sample-app 2.0.0"));
        let now = current_coordinator(host);
        eprintln!(
            "{}: 2.0.0 healthy and serving {} ms after the pin through {} ({} ms after the kill), now on {now}",
            host.id,
            healthy.as_millis(),
            urls[other],
            killed.elapsed().as_millis()
        );
        assert_ne!(now, killed_url, "{} left the killed replica", host.id);
        assert!(urls.contains(&now), "{now}");
        let journal = agent_journal(host);
        assert!(
            journal.contains(&format!("coordinator {killed_url} unreachable (")),
            "the move is logged: {journal}"
        );
    }
    eprintln!(
        "whole fleet on 2.0.0 {} ms after the pin, {} ms after the kill",
        pinned.elapsed().as_millis(),
        killed.elapsed().as_millis()
    );
}

#[test]
fn a_real_host_whose_first_coordinator_is_dead_joins_and_works_through_the_next() {
    let bridge = Bridge::create().expect("bridge");
    let replicas = Replicas::start_on(1, bridge.gateway());
    let live = replicas.replicas[0].url();
    let dead = dead_url(bridge.gateway());
    let releases = Releases::new().expect("releases");
    let files = FileServer::start(bridge.gateway(), releases.path().to_owned());
    release_versions(&replicas.replicas[0], &releases, &files);

    let coordinators = [dead.clone(), live.clone()];
    let (host, printed) = join_host(&bridge, 1, &replicas.replicas[0], &coordinators, |host| {
        // The join noted the coordinator that answered; start from the dead one instead,
        // as an agent does whose coordinator went away while it was down.
        host.write_file("/var/lib/drover/coordinator", format!("{dead}\n").as_bytes(), 0o644)
            .expect("write the current coordinator");
    });
    assert!(
        printed.contains(&format!("joined {live}")),
        "the join went through the next: {printed}"
    );
    let started = Instant::now();
    drover(&replicas.replicas[0], &["pin", "web", "1.0.0"]);
    host.wait_healthy("web", "1.0.0", CONVERGE).expect("1.0.0 healthy");
    assert_eq!(host.get_inside(PORT, "/").as_deref(), Some("drover-sample-app 1.0.0"));
    eprintln!(
        "first coordinator dead: 1.0.0 healthy {} ms after the agent started",
        started.elapsed().as_millis()
    );
    let status = host.status().expect("status");
    assert_eq!(status["coordinator"], live.as_str(), "{status:#}");
    assert_eq!(status["coordinators"], serde_json::json!([dead, live]), "{status:#}");
    let journal = agent_journal(&host);
    assert!(
        journal.contains(&format!("coordinator {dead} unreachable (")) && journal.contains(&format!("; trying {live}")),
        "the move is logged: {journal}"
    );
    assert_eq!(
        journal.matches("unreachable (").count(),
        1,
        "one move, however many tasks saw the dead one: {journal}"
    );
    // The coordinator saw the host's reports through the live replica.
    let shown = drover(&replicas.replicas[0], &["hosts", "show", &host.id, "-o", "json"]);
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("hosts show JSON");
    assert_eq!(shown["apps"]["web"]["current"], "1.0.0", "{shown:#}");
}
