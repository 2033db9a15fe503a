//! Several coordinators on one PostgreSQL (issue 16), end to end: a PostgreSQL cluster of
//! the test's own and three `drover serve` processes (tests/src/replicas.rs), with hosts
//! speaking the real protocol to whichever replica they are on. Each test names the
//! promise it checks; every wait is bounded and every time limit is the issue's.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use drover_protocol::{LastAccepted, accept};
use drover_tests::fleet::{Agent, Poll};
use drover_tests::replicas::Replicas;
use drover_tests::sim::{SimConfig, Simulator};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// How far a change made through one replica may take to reach the others.
const CROSS_REPLICA: Duration = Duration::from_secs(1);

/// A release of `app` at `version` whose tarball lives elsewhere (replicas share no disk).
fn remote_release(app: &str, version: &str) -> serde_json::Value {
    json!({
        "app": app, "version": version,
        "spec": {"service": {"command": ["bin/app"]}},
        "artifact": {"kind": "remote_tarball",
                     "url": format!("https://artifacts.example/{app}-{version}.tar.gz"),
                     "digest": drover_protocol::Digest::of(format!("{app} {version}").as_bytes()).to_string(),
                     "size": 1000},
    })
}

/// Joins `host` through replica `through` and returns it talking to replica `on`.
async fn join(replicas: &Replicas, host: &str, through: usize, on: usize) -> Agent {
    let admin = replicas.replicas[through].admin();
    let token = admin.token(&[("role", "web")], None).await;
    let mut agent = Agent::join(&replicas.replicas[through].url(), &admin.ca_pem, &token.token, host)
        .await
        .unwrap_or_else(|(status, body)| panic!("join of {host}: {status} {body}"));
    agent.url = replicas.replicas[on].url();
    agent
}

/// The ETag of `agent`'s current manifest (a plain poll must answer it).
async fn etag_of(agent: &Agent) -> String {
    match agent.poll(None, 0).await {
        Poll::Changed(_, etag) => etag,
        other => panic!("{} has no manifest: {other:?}", agent.host),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pin_through_one_replica_reaches_hosts_long_polling_on_the_others_within_1s() {
    let replicas = Replicas::start(3);
    let admin = replicas.replicas[0].admin();
    admin
        .ok(Method::POST, "/v1/admin/releases", Some(remote_release("web", "1.0.0")))
        .await;
    let mut agents = Vec::new();
    for index in 0..6 {
        // Joined through A, long-polling on B or C.
        agents.push(join(&replicas, &format!("web-{index}"), 0, 1 + index % 2).await);
    }
    let mut polls = Vec::new();
    for agent in &agents {
        let etag = etag_of(agent).await;
        let agent = agent.clone();
        polls.push(tokio::spawn(async move {
            let polled = agent.poll(Some(&etag), 20).await;
            (Instant::now(), polled)
        }));
    }
    // Every long-poll is held before the pin.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pinned_at = Instant::now();
    admin
        .ok(
            Method::PUT,
            "/v1/admin/pins",
            Some(json!({"app": "web", "version": "1.0.0", "scope": {"kind": "fleet"}})),
        )
        .await;
    let mut slowest = Duration::ZERO;
    for poll in polls {
        let (at, polled) = poll.await.expect("poll task");
        assert!(matches!(polled, Poll::Changed(..)), "{polled:?}\n{}", replicas.logs());
        slowest = slowest.max(at.saturating_duration_since(pinned_at));
    }
    println!("a pin through A reached the last of 6 long-polls on B and C after {slowest:?}");
    assert!(
        slowest <= CROSS_REPLICA,
        "the pin took {slowest:?} to reach the other replicas' long-polls\n{}",
        replicas.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_token_revoked_through_one_replica_is_refused_by_another_within_1s() {
    let replicas = Replicas::start(2);
    let a = replicas.replicas[0].admin();
    let created = a
        .ok(Method::POST, "/v1/admin/admin-tokens", Some(json!({"name": "ci"})))
        .await;
    let secret = created["token"].as_str().expect("token secret").to_owned();
    let mut b = replicas.replicas[1].admin();
    b.token = secret;
    let (status, _) = b.call(Method::GET, "/v1/admin/status", None).await;
    assert_eq!(status, StatusCode::OK, "the new token works on the other replica");
    a.ok(Method::DELETE, "/v1/admin/admin-tokens/ci", None).await;
    let revoked_at = Instant::now();
    loop {
        let (status, _) = b.call(Method::GET, "/v1/admin/status", None).await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked_at.elapsed() <= CROSS_REPLICA,
            "B still accepts a token revoked through A after {:?} ({status})",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "B refused the revoked token {:?} after A revoked it",
        revoked_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_removed_through_one_replica_is_refused_by_another() {
    let replicas = Replicas::start(2);
    let agent = join(&replicas, "web-1", 1, 0).await;
    etag_of(&agent).await;
    replicas.replicas[1]
        .admin()
        .ok(Method::DELETE, "/v1/admin/hosts/web-1", None)
        .await;
    let removed_at = Instant::now();
    loop {
        match agent.poll(None, 0).await {
            Poll::Refused(StatusCode::FORBIDDEN, body) => {
                assert!(body.contains("host_removed"), "{body}");
                break;
            }
            other => assert!(
                removed_at.elapsed() <= CROSS_REPLICA,
                "A still serves a host removed through B after {:?}: {other:?}",
                removed_at.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_racing_on_the_same_hosts_manifests_never_publish_a_lower_serial() {
    let replicas = Replicas::start(2);
    let agent = join(&replicas, "web-1", 0, 0).await;
    let admins = [replicas.replicas[0].admin(), replicas.replicas[1].admin()];
    for version in ["1.0.0", "2.0.0"] {
        admins[0]
            .ok(Method::POST, "/v1/admin/releases", Some(remote_release("web", version)))
            .await;
    }
    // Both replicas change the same host's desired state at once, 20 times each.
    let mut changes = Vec::new();
    for (index, admin) in admins.iter().enumerate() {
        let admin = admin.clone();
        changes.push(tokio::spawn(async move {
            for round in 0..20 {
                let version = if (round + index) % 2 == 0 { "1.0.0" } else { "2.0.0" };
                admin
                    .ok(
                        Method::PUT,
                        "/v1/admin/pins",
                        Some(json!({"app": "web", "version": version, "scope": {"kind": "host", "name": "web-1"}})),
                    )
                    .await;
            }
        }));
    }
    // Meanwhile the host reads its manifest from both replicas in turn: each answer must
    // be accepted after the one before (serials never go down, the agent's own rule).
    let trust = agent.trust();
    let mut last: Option<LastAccepted> = None;
    let mut seen = BTreeSet::new();
    let mut on_b = agent.clone();
    on_b.url = replicas.replicas[1].url();
    for round in 0..200 {
        let from = if round % 2 == 0 { &agent } else { &on_b };
        if let Poll::Changed(envelope, _) = from.poll(None, 0).await {
            match accept(&envelope, &trust, &agent.host, last, drover_tests::now_real()) {
                Ok(verified) => {
                    seen.insert(verified.manifest().serial);
                    last = Some(verified.last_accepted());
                }
                // The same serial again is the same manifest (a replica behind by a few
                // ms answers the one before): never a lower serial.
                Err(rejection) if rejection.to_string().contains("replay") => {}
                Err(rejection) => panic!("round {round}: {rejection}\n{}", replicas.logs()),
            }
        }
        if changes.iter().all(tokio::task::JoinHandle::is_finished) && round > 100 {
            break;
        }
    }
    for change in changes {
        change.await.expect("pins through both replicas succeed");
    }
    println!("serials seen across both replicas: {} distinct", seen.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_mid_rollout_another_leads_within_5s_and_each_stage_runs_once() {
    let mut replicas = Replicas::start(3);
    let admin = replicas.replicas[1].admin();
    let mut config = SimConfig::new(30, "web", "2.0.0");
    config.wait_seconds = 5;
    let sim = fleet_on_1_0_0(&replicas, &admin, 1, config).await;
    admin
        .ok(
            Method::POST,
            "/v1/admin/rollouts",
            Some(json!({"app": "web", "version": "2.0.0", "stages": "canary,50%,100%", "bake": "3s"})),
        )
        .await;
    let leader = leader_index(&replicas).await;
    // Mid-rollout: once the canary passed.
    wait_for_history(&replicas, &admin, "(canary) passed").await;
    replicas.replicas[leader].kill();
    let killed_at = Instant::now();
    let survivor = (leader + 1) % 3;
    let new_leader = loop {
        if let Some(index) = leader_index_through(&replicas, survivor).await
            && index != leader
        {
            break index;
        }
        assert!(
            killed_at.elapsed() <= Duration::from_secs(5),
            "no replica leads 5 s after the leader was killed\n{}",
            replicas.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "replica {new_leader} leads {:?} after kill -9 of replica {leader}",
        killed_at.elapsed()
    );
    let survivor_admin = replicas.replicas[survivor].admin();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = survivor_admin.ok(Method::GET, "/v1/admin/rollouts/web", None).await;
        if status["phase"] == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rollout did not complete: {status}\n{}",
            replicas.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let history = survivor_admin
        .ok(Method::GET, "/v1/admin/rollouts/web/history", None)
        .await;
    let lines: Vec<String> = history
        .as_array()
        .expect("history lines")
        .iter()
        .map(|line| line["what"].as_str().unwrap_or_default().to_owned())
        .collect();
    for stage in ["canary", "50%", "100%"] {
        let started = lines
            .iter()
            .filter(|what| what.contains(&format!("({stage}) started")))
            .count();
        assert_eq!(started, 1, "stage {stage} started {started} times: {lines:#?}");
    }
    assert_eq!(sim.healthy_on(&"2.0.0".parse().expect("version")), 30);
    assert_eq!(sim.stats().rejections, 0, "no host saw a serial go down");
}

/// Which replica leads, as replica 0 (or any live one) lists them.
async fn leader_index(replicas: &Replicas) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for through in 0..replicas.replicas.len() {
            if let Some(index) = leader_index_through(replicas, through).await {
                return index;
            }
        }
        assert!(Instant::now() < deadline, "no replica leads\n{}", replicas.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader as replica `through` lists it (`drover coordinators`), by index.
async fn leader_index_through(replicas: &Replicas, through: usize) -> Option<usize> {
    let (status, body) = replicas.replicas[through]
        .admin()
        .call(Method::GET, "/v1/admin/coordinators", None)
        .await;
    if status != StatusCode::OK {
        return None;
    }
    let listed: serde_json::Value = serde_json::from_str(&body).ok()?;
    let leader = listed.as_array()?.iter().find(|replica| replica["leader"] == true)?;
    let address = leader["address"].as_str()?;
    replicas.replicas.iter().position(|replica| replica.url() == address)
}

#[test]
fn a_replica_whose_ca_and_trust_differ_from_the_databases_refuses_to_start_and_says_what_to_copy() {
    let replicas = Replicas::start(1);
    // A data directory of its own: a new CA and new keys, not copies of the first's.
    let stranger = replicas.scratch().join("stranger");
    let mut child = std::process::Command::new(drover_tests::binary("drover"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&stranger)
        .args(["--database", &replicas.database])
        .env("DROVER_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run drover serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait for drover serve").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a replica with another CA and trust document kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("drover serve output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for expected in [
        "CA certificate",
        "trust document",
        "ca.pem, ca.key, admin.token and keys/",
        "copy them",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing from: {stderr}");
    }
    assert!(!stranger.join("address").exists(), "it never listened");
    // The first replica is unaffected.
    let status = drover_tests::block_on(replicas.replicas[0].admin().ok(Method::GET, "/v1/admin/status", None));
    assert!(status["hosts"].is_number(), "{status}");
}

/// Waits (bounded) until the app's history through `admin` has a line containing `needle`.
async fn wait_for_history(replicas: &Replicas, admin: &drover_tests::fleet::Admin, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = admin.call(Method::GET, "/v1/admin/rollouts/web/history", None).await;
        if status == StatusCode::OK && body.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no history line {needle:?}: {body}\n{}",
            replicas.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until the rollout of web completed, as `admin`'s replica says.
async fn wait_for_completion(replicas: &Replicas, admin: &drover_tests::fleet::Admin, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = admin.call(Method::GET, "/v1/admin/rollouts/web", None).await;
        if status == StatusCode::OK && body.contains("\"phase\":\"completed\"") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rollout did not complete: {body}\n{}",
            replicas.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_replica_holding_a_third_of_1000_long_polls_moves_its_hosts_to_the_others_within_10s() {
    let mut replicas = Replicas::start(3);
    let admin = replicas.replicas[0].admin();
    let mut config = SimConfig::new(1000, "web", "2.0.0");
    config.join_concurrency = 32;
    let sim = fleet_on_1_0_0(&replicas, &admin, 0, config).await;
    // Replica 2 holds every third host's long-poll; it dies, and a pin through replica 0
    // must reach every host, those on replica 2 through the others.
    replicas.replicas[2].kill();
    let killed_at = Instant::now();
    pin_fleet(&admin, "2.0.0").await;
    sim.wait_all("healthy on 2.0.0", Duration::from_secs(10), |view| {
        view.current.as_ref().is_some_and(|version| version.as_str() == "2.0.0") && view.reported
    })
    .await;
    println!(
        "all 1,000 hosts healthy on 2.0.0 {:?} after kill -9 of the replica holding a third of them; {:?}",
        killed_at.elapsed(),
        sim.stats()
    );
    assert_eq!(sim.stats().rejections, 0, "no host saw a serial go down");
    assert_eq!(sim.stats().lost_reports, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgresql_restarted_mid_rollout_the_replicas_reconnect_and_nothing_acknowledged_is_lost() {
    let mut replicas = Replicas::start(3);
    let admin = replicas.replicas[0].admin();
    let mut config = SimConfig::new(30, "web", "2.0.0");
    config.wait_seconds = 5;
    let sim = fleet_on_1_0_0(&replicas, &admin, 0, config).await;
    admin
        .ok(
            Method::POST,
            "/v1/admin/rollouts",
            Some(json!({"app": "web", "version": "2.0.0", "stages": "canary,50%,100%", "bake": "2s"})),
        )
        .await;
    wait_for_history(&replicas, &admin, "(canary) passed").await;
    replicas.postgres.restart();
    wait_for_completion(&replicas, &admin, Duration::from_secs(120)).await;
    assert_eq!(sim.stats().lost_reports, 0, "every report was acknowledged in the end");
    assert_eq!(sim.stats().rejections, 0, "no host saw a serial go down");
    // What the replicas acknowledged is in the database: a replica started afresh
    // (loading everything from it) counts every host on 2.0.0.
    replicas.restart(1);
    let status = replicas.replicas[1]
        .admin()
        .ok(Method::GET, "/v1/admin/status", None)
        .await;
    assert_eq!(
        status["apps"]["web"]["versions"]["2.0.0"],
        30,
        "{status}\n{}",
        replicas.logs()
    );
    let history = admin.ok(Method::GET, "/v1/admin/rollouts/web/history", None).await;
    for stage in ["canary", "50%", "100%"] {
        let started = history
            .as_array()
            .expect("history lines")
            .iter()
            .filter(|line| {
                line["what"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&format!("({stage}) started"))
            })
            .count();
        assert_eq!(started, 1, "stage {stage} started {started} times: {history:#}");
    }
}

/// Releases web 1.0.0 and 2.0.0 through `admin`, enrolls `config.hosts` simulated hosts
/// through `through` spread over every replica, pins 1.0.0 and waits until every host
/// reported it healthy.
async fn fleet_on_1_0_0(
    replicas: &Replicas,
    admin: &drover_tests::fleet::Admin,
    through: usize,
    mut config: SimConfig,
) -> Simulator {
    for version in ["1.0.0", "2.0.0"] {
        admin
            .ok(Method::POST, "/v1/admin/releases", Some(remote_release("web", version)))
            .await;
    }
    config.coordinators = replicas.urls();
    let sim = Simulator::enroll_at(&replicas.replicas[through].url(), admin, config).await;
    pin_fleet(admin, "1.0.0").await;
    sim.wait_all("healthy on 1.0.0", Duration::from_secs(120), |view| {
        view.current.as_ref().is_some_and(|version| version.as_str() == "1.0.0") && view.reported
    })
    .await;
    sim
}

/// Pins web `version` for the fleet through `admin`.
async fn pin_fleet(admin: &drover_tests::fleet::Admin, version: &str) {
    admin
        .ok(
            Method::PUT,
            "/v1/admin/pins",
            Some(json!({"app": "web", "version": version, "scope": {"kind": "fleet"}})),
        )
        .await;
}
