//! A fleet simulator: N simulated agents speaking the real protocol to a
//! [`TestCoordinator`] on 127.0.0.1, so rollouts can be tested at fleet scale on one
//! machine.
//!
//! Each host enrolls with its own token (created through the admin API) and its own CSR,
//! then runs as one tokio task over its own mTLS client (one kept-alive connection):
//! it long-polls its manifest with the ETag, verifies every new manifest against the
//! trust document its join returned ([`drover_protocol::accept`]), and when the release
//! the manifest asks for changes it reports `installing`, waits its install time, and
//! reports `healthy` on the new release, or, per its [`Behaviour`], `failed` /
//! `rolled_back` on the target (its current release stays the old one), or nothing at all.
//!
//! The release a host runs when it starts is the one its first manifest names (it was
//! provisioned with it): it reports `healthy` on it at once, without an install.
//!
//! Every loop is bounded in count and in time ([`SimConfig::lifetime`]); every task stops
//! when the simulator is shut down or dropped. Network errors (a coordinator restart)
//! are retried with a short backoff, as an agent does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration as StdDuration, Instant};

use drover_protocol::report::{AppReport, AppState};
use drover_protocol::{AppName, HostId, LastAccepted, Trust, Version, accept};
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::fleet::{Admin, Agent, TestCoordinator};
use crate::now_real;

/// How a simulated host treats a change of its desired release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Installs whatever it is asked to and is healthy on it.
    Good,
    /// Installs anything but the simulator's target like [`Behaviour::Good`]; on the
    /// target it reports `state` (`failed` or `rolled_back`) after its install time and
    /// keeps running its previous release, as the agent does.
    FailsOnTarget(AppState),
    /// Reports its first release, then never reports again once its desired release
    /// changes (an agent hung mid-install): only the host deadline notices it. It keeps
    /// polling, so what its manifests named is still recorded.
    Silent,
}

/// The simulator's settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How many hosts.
    pub hosts: usize,
    /// Host ids are `{prefix}{index:05}`.
    pub prefix: String,
    /// The app the hosts run.
    pub app: AppName,
    /// The release [`Behaviour::FailsOnTarget`] fails on.
    pub target: Version,
    /// Seeds the install-time jitter (and nothing else: behaviours are set explicitly).
    pub seed: u64,
    /// Shortest install time.
    pub install_min: StdDuration,
    /// Longest install time.
    pub install_max: StdDuration,
    /// Seconds of `?wait=` on each long-poll.
    pub wait_seconds: u64,
    /// Joins in flight at once.
    pub join_concurrency: usize,
    /// How long each host task runs at most.
    pub lifetime: StdDuration,
    /// Several coordinators on one database (issue 16): host `i` starts on
    /// `coordinators[i % n]` and, like the agent, moves to the next one when a request
    /// gets no answer or a 5xx. Empty: every host stays on the URL it joined through.
    pub coordinators: Vec<String>,
}

impl SimConfig {
    /// `hosts` hosts of `app`, target `target`, installs of 50 to 300 ms, 20 s long-polls,
    /// 16 joins in flight, 10 minutes of life.
    pub fn new(hosts: usize, app: &str, target: &str) -> SimConfig {
        SimConfig {
            hosts,
            prefix: "sim-".to_owned(),
            app: app.parse().expect("valid app name"),
            target: target.parse().expect("valid version"),
            seed: 1,
            install_min: StdDuration::from_millis(50),
            install_max: StdDuration::from_millis(300),
            wait_seconds: 20,
            join_concurrency: 16,
            lifetime: StdDuration::from_secs(600),
            coordinators: Vec::new(),
        }
    }
}

/// What one host did, as the simulator saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostView {
    /// Its behaviour now.
    pub behaviour: Behaviour,
    /// The release it runs.
    pub current: Option<Version>,
    /// The release its last accepted manifest asks for.
    pub desired: Option<Version>,
    /// The state it last reported (or would have, for a silent host).
    pub state: Option<AppState>,
    /// Every release any manifest it accepted ever named.
    pub offered: BTreeSet<Version>,
    /// Whether its last report was taken by the coordinator.
    pub reported: bool,
}

/// Counters over the whole fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Manifest requests answered (200 or 304).
    pub polls: u64,
    /// New manifests accepted.
    pub manifests: u64,
    /// Manifests `accept` refused (should stay 0 against a correct coordinator).
    pub rejections: u64,
    /// Reports the coordinator took (204).
    pub reports: u64,
    /// Requests that failed (connection errors, 5xx) and were retried.
    pub retries: u64,
    /// Reports given up on after every retry.
    pub lost_reports: u64,
    /// Other refusals (4xx).
    pub refusals: u64,
}

#[derive(Debug, Default)]
struct Counters {
    polls: AtomicU64,
    manifests: AtomicU64,
    rejections: AtomicU64,
    reports: AtomicU64,
    retries: AtomicU64,
    lost_reports: AtomicU64,
    refusals: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A simulated fleet. Dropping it stops every host task.
#[derive(Debug)]
pub struct Simulator {
    hosts: Vec<HostId>,
    views: Arc<Vec<Mutex<HostView>>>,
    counters: Arc<Counters>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    config: SimConfig,
}

impl Simulator {
    /// Creates a token and joins each of `config.hosts` hosts (at most
    /// `config.join_concurrency` at once), then starts every host's task. All hosts start
    /// [`Behaviour::Good`].
    pub async fn enroll(coordinator: &TestCoordinator, config: SimConfig) -> Simulator {
        Simulator::enroll_at(&coordinator.url(), &coordinator.admin, config).await
    }

    /// [`Simulator::enroll`] against any coordinator: its URL and an admin client (e.g.
    /// a `drover serve` process, which a test can kill -9).
    pub async fn enroll_at(url: &str, admin: &Admin, config: SimConfig) -> Simulator {
        let url = url.to_owned();
        let admin = admin.clone();
        let names: Vec<String> = (0..config.hosts)
            .map(|index| format!("{}{index:05}", config.prefix))
            .collect();
        let mut agents: Vec<(usize, Agent)> = futures_util::stream::iter(names.iter().enumerate())
            .map(|(index, name)| {
                let admin = admin.clone();
                let url = url.clone();
                async move {
                    let token = admin.token(&[("sim", "yes")], None).await;
                    let agent = Agent::join(&url, &admin.ca_pem, &token.token, name)
                        .await
                        .unwrap_or_else(|(status, body)| panic!("join of {name}: {status} {body}"));
                    (index, agent)
                }
            })
            .buffer_unordered(config.join_concurrency.max(1))
            .collect()
            .await;
        agents.sort_by_key(|(index, _)| *index);
        let views: Arc<Vec<Mutex<HostView>>> = Arc::new(
            (0..config.hosts)
                .map(|_| {
                    Mutex::new(HostView {
                        behaviour: Behaviour::Good,
                        current: None,
                        desired: None,
                        state: None,
                        offered: BTreeSet::new(),
                        reported: false,
                    })
                })
                .collect(),
        );
        let counters = Arc::new(Counters::default());
        let (shutdown, receiver) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut hosts = Vec::with_capacity(config.hosts);
        for (index, mut agent) in agents {
            hosts.push(agent.host.clone());
            if !config.coordinators.is_empty() {
                agent
                    .url
                    .clone_from(&config.coordinators[index % config.coordinators.len()]);
            }
            let host = SimHost {
                index,
                trust: agent.trust(),
                agent,
                views: views.clone(),
                counters: counters.clone(),
                shutdown: receiver.clone(),
                config: config.clone(),
                random: splitmix(config.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                last_report: None,
            };
            tasks.spawn(host.run());
        }
        Simulator {
            hosts,
            views,
            counters,
            shutdown,
            tasks,
            config,
        }
    }

    /// The host ids, in index order.
    pub fn hosts(&self) -> &[HostId] {
        &self.hosts
    }

    /// Sets the behaviour of the hosts named in `behaviours` (others keep theirs). It
    /// applies to the next change of desired release each host sees.
    pub fn set_behaviours(&self, behaviours: &BTreeMap<HostId, Behaviour>) {
        for (index, host) in self.hosts.iter().enumerate() {
            if let Some(behaviour) = behaviours.get(host) {
                lock(&self.views[index]).behaviour = *behaviour;
            }
        }
    }

    /// Picks `count` hosts deterministically from `seed`, never one of `spare` (e.g. the
    /// canary), and gives them `behaviour`; returns them.
    pub fn assign(&self, seed: u64, count: usize, behaviour: Behaviour, spare: &BTreeSet<HostId>) -> BTreeSet<HostId> {
        let chosen = pick(&self.hosts, seed, count, spare);
        self.set_behaviours(&chosen.iter().map(|host| (host.clone(), behaviour)).collect());
        chosen
    }

    /// What each host did so far.
    pub fn views(&self) -> BTreeMap<HostId, HostView> {
        self.hosts
            .iter()
            .zip(self.views.iter())
            .map(|(host, view)| (host.clone(), lock(view).clone()))
            .collect()
    }

    /// The hosts any of whose accepted manifests ever named `version`.
    pub fn offered(&self, version: &Version) -> BTreeSet<HostId> {
        self.filter(|view| view.offered.contains(version))
    }

    /// The release each host runs.
    pub fn current(&self) -> BTreeMap<HostId, Option<Version>> {
        self.views()
            .into_iter()
            .map(|(host, view)| (host, view.current))
            .collect()
    }

    /// How many hosts run `version` and last reported healthy on it.
    pub fn healthy_on(&self, version: &Version) -> usize {
        self.filter(|view| view.current.as_ref() == Some(version) && view.state == Some(AppState::Healthy))
            .len()
    }

    /// The hosts for which `predicate` holds.
    pub fn filter(&self, predicate: impl Fn(&HostView) -> bool) -> BTreeSet<HostId> {
        self.hosts
            .iter()
            .zip(self.views.iter())
            .filter(|(_, view)| predicate(&lock(view)))
            .map(|(host, _)| host.clone())
            .collect()
    }

    /// The fleet's counters.
    pub fn stats(&self) -> SimStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.counters;
        SimStats {
            polls: get(&counters.polls),
            manifests: get(&counters.manifests),
            rejections: get(&counters.rejections),
            reports: get(&counters.reports),
            retries: get(&counters.retries),
            lost_reports: get(&counters.lost_reports),
            refusals: get(&counters.refusals),
        }
    }

    /// Waits until `predicate` holds for every host, checking every 50 ms; panics after
    /// `timeout` naming how many hosts did not get there.
    pub async fn wait_all(&self, what: &str, timeout: StdDuration, predicate: impl Fn(&HostView) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let behind = self.filter(|view| !predicate(view));
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} of {} hosts not there after {timeout:?}, e.g. {:?}; {:?}",
                behind.len(),
                self.hosts.len(),
                behind
                    .iter()
                    .take(3)
                    .map(|host| (host, self.view(host)))
                    .collect::<Vec<_>>(),
                self.stats()
            );
            tokio::time::sleep(StdDuration::from_millis(50)).await;
        }
    }

    /// Waits until every host reported healthy on the release its manifest names.
    pub async fn wait_ready(&self, timeout: StdDuration) {
        self.wait_all("ready", timeout, |view| {
            view.reported && view.state == Some(AppState::Healthy) && view.current == view.desired
        })
        .await;
    }

    /// One host's view.
    pub fn view(&self, host: &HostId) -> Option<HostView> {
        let index = self.hosts.iter().position(|known| known == host)?;
        Some(lock(&self.views[index]).clone())
    }

    /// The settings.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Stops every host task and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::sleep(StdDuration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = self.tasks.join_next() => {
                    match next {
                        None => return,
                        Some(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                        Some(_) => {}
                    }
                }
                () = &mut deadline => {
                    self.tasks.abort_all();
                    return;
                }
            }
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.tasks.abort_all();
    }
}

/// `count` hosts of `hosts` picked deterministically from `seed`, none of `spare`.
pub fn pick(hosts: &[HostId], seed: u64, count: usize, spare: &BTreeSet<HostId>) -> BTreeSet<HostId> {
    let mut ranked: Vec<(u64, &HostId)> = hosts
        .iter()
        .filter(|host| !spare.contains(*host))
        .map(|host| {
            let hash = host.as_str().bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
            });
            (splitmix(hash), host)
        })
        .collect();
    ranked.sort();
    assert!(ranked.len() >= count, "cannot pick {count} of {} hosts", ranked.len());
    ranked.into_iter().take(count).map(|(_, host)| host.clone()).collect()
}

fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Most requests one host makes in its life (polls and reports with their retries).
const MAX_REQUESTS: u32 = 100_000;
/// Most attempts at one report.
const REPORT_ATTEMPTS: u32 = 60;

/// What a poll came back with.
enum Polled {
    Changed(Vec<u8>, String),
    NotModified,
    /// A connection error or a 5xx: retry after a pause.
    Retry,
    /// A 4xx: something is wrong with the host; pause longer.
    Refused,
}

/// One simulated host's task state.
struct SimHost {
    index: usize,
    agent: Agent,
    trust: Trust,
    views: Arc<Vec<Mutex<HostView>>>,
    counters: Arc<Counters>,
    shutdown: watch::Receiver<bool>,
    config: SimConfig,
    random: u64,
    /// The last report sent, re-sent as a heartbeat after each quiet long-poll as the real
    /// agent does every poll interval (a coordinator that crashed before storing a report
    /// it had acknowledged hears it again).
    last_report: Option<(u64, Option<Version>, Option<Version>, AppState)>,
}

impl SimHost {
    fn view(&self) -> std::sync::MutexGuard<'_, HostView> {
        lock(&self.views[self.index])
    }

    fn next_random(&mut self) -> u64 {
        self.random = splitmix(self.random);
        self.random
    }

    fn install_time(&mut self) -> StdDuration {
        let min = self.config.install_min.as_millis() as u64;
        let span = (self.config.install_max.as_millis() as u64).saturating_sub(min);
        StdDuration::from_millis(min + self.next_random() % (span + 1))
    }

    fn backoff(&mut self, attempt: u32) -> StdDuration {
        let base = 50u64.saturating_mul(1 << attempt.min(4)).min(1000);
        StdDuration::from_millis(base + self.next_random() % 50)
    }

    /// Sleeps `duration`; false when told to stop or out of time first.
    async fn sleep(&mut self, duration: StdDuration, deadline: Instant) -> bool {
        if Instant::now() + duration > deadline {
            return false;
        }
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            _ = shutdown.wait_for(|stop| *stop) => return false,
        }
        !*shutdown.borrow()
    }

    async fn run(mut self) {
        let deadline = Instant::now() + self.config.lifetime;
        let mut etag: Option<String> = None;
        let mut last: Option<(LastAccepted, Vec<u8>)> = None;
        // After its first silent change a silent host never reports again.
        let mut silenced = false;
        // The release that failed here: not retried until the desired release changes.
        let mut bad: Option<Version> = None;
        let mut failures = 0u32;
        let mut shutdown = self.shutdown.clone();
        for _ in 0..MAX_REQUESTS {
            if *self.shutdown.borrow() || Instant::now() >= deadline {
                return;
            }
            let polled = tokio::select! {
                polled = self.poll(etag.as_deref()) => polled,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            let (envelope, new_etag) = match polled {
                Polled::Changed(envelope, new_etag) => (envelope, new_etag),
                Polled::NotModified => {
                    failures = 0;
                    if !silenced && let Some((serial, current, desired, state)) = self.last_report.clone() {
                        self.report(serial, current, desired, state).await;
                    }
                    continue;
                }
                retry @ (Polled::Retry | Polled::Refused) => {
                    if matches!(retry, Polled::Retry) {
                        self.fail_over();
                    }
                    failures += 1;
                    let pause = self.backoff(failures);
                    if !self.sleep(pause, deadline).await {
                        return;
                    }
                    continue;
                }
            };
            failures = 0;
            etag = Some(new_etag);
            if last.as_ref().is_some_and(|(_, bytes)| bytes == &envelope) {
                continue;
            }
            let verified = match accept(
                &envelope,
                &self.trust,
                &self.agent.host,
                last.as_ref().map(|(accepted, _)| *accepted),
                now_real(),
            ) {
                Ok(verified) => verified,
                Err(_) => {
                    Counters::add(&self.counters.rejections);
                    continue;
                }
            };
            Counters::add(&self.counters.manifests);
            last = Some((verified.last_accepted(), envelope));
            let serial = verified.manifest().serial;
            let desired = verified
                .manifest()
                .apps
                .get(&self.config.app)
                .map(|release| release.version.clone());
            let (current, behaviour, first) = {
                let mut view = self.view();
                if let Some(version) = &desired {
                    view.offered.insert(version.clone());
                }
                let first = view.state.is_none();
                if first {
                    // Provisioned with what its first manifest names.
                    view.current = desired.clone();
                }
                view.desired = desired.clone();
                (view.current.clone(), view.behaviour, first)
            };
            if silenced || (desired.is_some() && desired == bad) {
                continue;
            }
            bad = None;
            if first || desired == current {
                self.report(serial, current.clone(), desired.clone(), AppState::Healthy)
                    .await;
                continue;
            }
            if behaviour == Behaviour::Silent {
                silenced = true;
                self.view().state = Some(AppState::Installing);
                continue;
            }
            self.report(serial, current.clone(), desired.clone(), AppState::Installing)
                .await;
            let install = self.install_time();
            if !self.sleep(install, deadline).await {
                return;
            }
            match behaviour {
                Behaviour::FailsOnTarget(state) if desired.as_ref() == Some(&self.config.target) => {
                    bad.clone_from(&desired);
                    self.report(serial, current, desired, state).await;
                }
                _ => {
                    self.view().current = desired.clone();
                    self.report(serial, desired.clone(), desired, AppState::Healthy).await;
                }
            }
        }
    }

    /// Moves to the next of [`SimConfig::coordinators`] (none: stays).
    fn fail_over(&mut self) {
        let coordinators = &self.config.coordinators;
        if let Some(at) = coordinators.iter().position(|url| *url == self.agent.url) {
            self.agent.url.clone_from(&coordinators[(at + 1) % coordinators.len()]);
        } else if let Some(first) = coordinators.first() {
            self.agent.url.clone_from(first);
        }
    }

    async fn poll(&self, etag: Option<&str>) -> Polled {
        let mut request = self.agent.http.get(format!(
            "{}/v1/agent/manifest?wait={}",
            self.agent.url, self.config.wait_seconds
        ));
        if let Some(etag) = etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let Ok(response) = request.send().await else {
            Counters::add(&self.counters.retries);
            return Polled::Retry;
        };
        match response.status() {
            StatusCode::OK => {
                let etag = response
                    .headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                match (etag, response.bytes().await) {
                    (Some(etag), Ok(body)) => {
                        Counters::add(&self.counters.polls);
                        Polled::Changed(body.to_vec(), etag)
                    }
                    _ => {
                        Counters::add(&self.counters.retries);
                        Polled::Retry
                    }
                }
            }
            StatusCode::NOT_MODIFIED => {
                Counters::add(&self.counters.polls);
                Polled::NotModified
            }
            status if status.is_server_error() => {
                Counters::add(&self.counters.retries);
                Polled::Retry
            }
            _ => {
                Counters::add(&self.counters.refusals);
                Polled::Refused
            }
        }
    }

    /// Records the state and sends the report, retrying connection errors and 5xx.
    async fn report(&mut self, serial: u64, current: Option<Version>, desired: Option<Version>, state: AppState) {
        self.last_report = Some((serial, current.clone(), desired.clone(), state));
        let bad_versions = match state {
            AppState::Failed | AppState::RolledBack => desired.iter().cloned().collect(),
            _ => Vec::new(),
        };
        {
            let mut view = self.view();
            view.state = Some(state);
            view.reported = false;
        }
        let app_report = AppReport {
            current,
            desired,
            state,
            health: None,
            last_error: None,
            bad_versions,
        };
        let report = self.agent.app_report(Some(serial), &self.config.app, app_report);
        let deadline = Instant::now() + self.config.lifetime;
        for attempt in 0..REPORT_ATTEMPTS {
            if *self.shutdown.borrow() {
                return;
            }
            let sent = self
                .agent
                .http
                .post(format!("{}/v1/agent/report", self.agent.url))
                .json(&report)
                .send()
                .await;
            match sent.map(|response| response.status()) {
                Ok(status) if status.is_success() => {
                    Counters::add(&self.counters.reports);
                    self.view().reported = true;
                    return;
                }
                Ok(status) if status.is_client_error() => {
                    Counters::add(&self.counters.refusals);
                    return;
                }
                _ => {
                    Counters::add(&self.counters.retries);
                    self.fail_over();
                    let pause = self.backoff(attempt + 1);
                    if !self.sleep(pause, deadline).await {
                        return;
                    }
                }
            }
        }
        Counters::add(&self.counters.lost_reports);
    }
}
