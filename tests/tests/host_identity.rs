//! Host identity against a real `drover serve` process: replace tokens bound to one host
//! id, removed ids reused only on purpose, the history of every join, replacement,
//! renewal and removal (issue 13, defect 1), and certificates renewed before they expire
//! — a host's over mTLS with the same key, the coordinator's own while it serves (defect
//! 3). Hosts are simulated as in `operator_cli.rs`: a key and CSR made here, posted to
//! `/v1/join`, then the host's mTLS client. Certificate lifetimes are set short with
//! `--host-certificate-validity` / `--server-certificate-validity` so the tests cross an
//! expiry in real time; every wait is a bounded loop on a condition.

use std::time::{Duration, Instant};

use drover_coordinator::server::pki::{csr_for_key, make_host_csr, validity_of, validity_of_der};
use drover_protocol::api::{
    HostDetail, HostHistoryEntry, HostSummary, JoinRequest, JoinResponse, RenewResponse, TokenResponse,
};
use drover_protocol::report::AgentFacts;
use drover_protocol::{HostId, Timestamp};
use drover_tests::e2e::CoordinatorProcess;
use drover_tests::fleet::{http_client, tls_client};
use drover_tests::now_real;
use reqwest::StatusCode;

/// A coordinator process and a runtime for the HTTP calls of one test.
struct Fleet {
    coordinator: CoordinatorProcess,
    runtime: tokio::runtime::Runtime,
}

/// A simulated host: its id, key and current certificate.
#[derive(Clone, Debug)]
struct Host {
    id: String,
    key_pem: String,
    certificate_pem: String,
}

/// What an agent request got: a status and body, or no TLS session at all.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Status(StatusCode, String),
    NoConnection(String),
}

impl Answer {
    fn code(&self) -> Option<String> {
        match self {
            Answer::Status(_, body) => serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|value| value["code"].as_str().map(str::to_owned)),
            Answer::NoConnection(_) => None,
        }
    }
}

impl Fleet {
    fn start(serve_args: &[&str]) -> Fleet {
        let coordinator =
            CoordinatorProcess::start_with(std::net::Ipv4Addr::LOCALHOST, serve_args).expect("drover serve starts");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Fleet { coordinator, runtime }
    }

    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.coordinator.data_dir.join("ca.pem")).expect("ca.pem")
    }

    /// `drover token create -o json` with `args`.
    fn token(&self, args: &[&str]) -> TokenResponse {
        let mut all = vec!["token", "create", "-o", "json"];
        all.extend_from_slice(args);
        let text = self.coordinator.drover_ok(&all).expect("token create");
        serde_json::from_str(&text).expect("token JSON")
    }

    /// Joins `host` with `token` and a new key; the refusal's status and body otherwise.
    fn join(&self, token: &TokenResponse, host: &str) -> Result<Host, (StatusCode, String)> {
        let host_id: HostId = host.parse().expect("host id");
        let (csr_pem, key_pem) = make_host_csr(&host_id).expect("csr");
        let request = JoinRequest {
            token: token.token.clone(),
            host_id,
            csr_pem,
            facts: AgentFacts {
                agent_version: "0.1.0".into(),
                os: "debian 12".into(),
                arch: "x86_64".into(),
            },
        };
        let client = http_client(tls_client(&self.ca_pem(), None));
        let url = self.coordinator.url();
        let (status, text) = self.runtime.block_on(async {
            let response = client
                .post(format!("{url}/v1/join"))
                .json(&request)
                .send()
                .await
                .expect("join request");
            (response.status(), response.text().await.unwrap_or_default())
        });
        if !status.is_success() {
            return Err((status, text));
        }
        let joined: JoinResponse = serde_json::from_str(&text).expect("join response");
        Ok(Host {
            id: host.to_owned(),
            key_pem,
            certificate_pem: joined.certificate_pem,
        })
    }

    fn enroll(&self, host: &str) -> Host {
        self.join(&self.token(&[]), host).expect("join")
    }

    /// A request as `host` with `certificate_pem` on a new connection (a pooled one
    /// would skip the handshake, where an expired certificate is refused).
    fn request(&self, host: &Host, certificate_pem: &str, path: &str, body: Option<serde_json::Value>) -> Answer {
        let client = http_client(tls_client(&self.ca_pem(), Some((certificate_pem, &host.key_pem))));
        let url = format!("{}{path}", self.coordinator.url());
        self.runtime.block_on(async {
            let request = match body {
                Some(body) => client.post(url).json(&body),
                None => client.get(url),
            };
            match request.send().await {
                Ok(response) => Answer::Status(response.status(), response.text().await.unwrap_or_default()),
                Err(error) => Answer::NoConnection(format!("{error:?}")),
            }
        })
    }

    /// A manifest poll (no wait) with this certificate.
    fn poll(&self, host: &Host, certificate_pem: &str) -> Answer {
        self.request(host, certificate_pem, "/v1/agent/manifest?wait=0", None)
    }

    /// `POST /v1/agent/certificate` with `csr_pem`, presenting `host`'s certificate.
    fn renew(&self, host: &Host, csr_pem: &str) -> Answer {
        let body = serde_json::json!({ "csr_pem": csr_pem });
        self.request(host, &host.certificate_pem, "/v1/agent/certificate", Some(body))
    }

    fn show(&self, host: &str) -> HostDetail {
        let text = self
            .coordinator
            .drover_ok(&["hosts", "show", host, "-o", "json"])
            .expect("hosts show");
        serde_json::from_str(&text).expect("hosts show JSON")
    }

    fn metrics(&self) -> String {
        let client = http_client(tls_client(&self.ca_pem(), None));
        let url = format!("{}/metrics", self.coordinator.url());
        self.runtime.block_on(async {
            client
                .get(url)
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("metrics body")
        })
    }
}

fn ok(answer: &Answer) -> bool {
    matches!(answer, Answer::Status(StatusCode::OK, _))
}

fn refused(answer: &Answer, status: StatusCode, code: &str) {
    match answer {
        Answer::Status(got, _) if *got == status && answer.code().as_deref() == Some(code) => {}
        other => panic!("expected {status} {code}, got {other:?}"),
    }
}

/// Waits up to `timeout` for `condition`, checking every 200 ms; panics with `what`.
fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn history_kinds(detail: &HostDetail) -> Vec<(String, String)> {
    detail
        .history
        .iter()
        .map(|line| {
            let kind = line.what.split([' ', ':', ';']).next().unwrap_or_default().to_owned();
            (line.who.clone(), kind)
        })
        .collect()
}

fn certificate_sha256(pem: &str) -> String {
    drover_coordinator::server::pki::sha256_hex(
        &drover_coordinator::server::pki::certificate_der(pem).expect("certificate der"),
    )
}

#[test]
fn a_replace_token_for_one_host_cannot_take_over_another() {
    let fleet = Fleet::start(&[]);
    let web = fleet.enroll("web-07");
    let db = fleet.enroll("db-01");

    // A token meant for the reinstalled web-07, used to join as db-01: refused, and db-01
    // keeps its certificate.
    let token = fleet.token(&["--replace", "web-07"]);
    let (status, body) = fleet
        .join(&token, "db-01")
        .expect_err("a web-07 token cannot take db-01");
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains("token_for_another_host") && body.contains("web-07"),
        "{body}"
    );
    assert!(ok(&fleet.poll(&db, &db.certificate_pem)), "db-01 still works");
    // Nor a new id.
    let (status, _) = fleet.join(&token, "canary-01").expect_err("nor any new id");
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The token is still unused: it re-enrolls web-07, whose old key stops working.
    let replaced = fleet.join(&token, "web-07").expect("the token replaces web-07");
    assert!(ok(&fleet.poll(&replaced, &replaced.certificate_pem)));
    refused(
        &fleet.poll(&web, &web.certificate_pem),
        StatusCode::FORBIDDEN,
        "certificate_replaced",
    );
    assert!(ok(&fleet.poll(&db, &db.certificate_pem)), "db-01 untouched");

    // An older client's "replace any host" is refused with a message that says so.
    let client = http_client(tls_client(&fleet.ca_pem(), None));
    let admin_token = std::fs::read_to_string(fleet.coordinator.data_dir.join("admin.token")).expect("admin.token");
    let url = format!("{}/v1/admin/tokens", fleet.coordinator.url());
    let (status, body) = fleet.runtime.block_on(async {
        let response = client
            .post(url)
            .bearer_auth(admin_token.trim())
            .json(&serde_json::json!({ "ttl": "1h", "replace": true }))
            .send()
            .await
            .expect("token request");
        (response.status(), response.text().await.unwrap_or_default())
    });
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("--replace HOST"), "{body}");
}

#[test]
fn a_plain_token_cannot_reuse_a_removed_hosts_id() {
    let fleet = Fleet::start(&[]);
    let old = fleet.enroll("web-01");
    fleet
        .coordinator
        .drover_ok(&["hold", "--host", "web-01", "--reason", "disk check"])
        .expect("hold web-01");
    fleet
        .coordinator
        .drover_ok(&["hosts", "remove", "web-01"])
        .expect("remove");
    refused(
        &fleet.poll(&old, &old.certificate_pem),
        StatusCode::FORBIDDEN,
        "host_removed",
    );

    // A plain token does not silently take the removed id (and its hold).
    let plain = fleet.token(&[]);
    let (status, body) = fleet
        .join(&plain, "web-01")
        .expect_err("a removed id is not reused by accident");
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body.contains("host_id_removed") && body.contains("--replace web-01"),
        "{body}"
    );
    // The refused join left the token unused.
    fleet
        .join(&plain, "web-02")
        .expect("the plain token still enrolls a new id");

    // On purpose: a replace token for the id brings it back with its host hold.
    let replace = fleet.token(&["--replace", "web-01"]);
    let back = fleet.join(&replace, "web-01").expect("explicit reuse");
    assert!(ok(&fleet.poll(&back, &back.certificate_pem)));
    assert!(
        fleet.show("web-01").summary.held,
        "an explicit reuse keeps the id's hold"
    );
}

#[test]
fn joins_replacements_and_removals_are_in_the_history() {
    let fleet = Fleet::start(&[]);
    let first = fleet.enroll("web-01");
    let replaced = fleet
        .join(&fleet.token(&["--replace", "web-01"]), "web-01")
        .expect("replace");
    fleet
        .coordinator
        .drover_ok(&["hosts", "remove", "web-01"])
        .expect("remove");
    // While removed, the id's history is readable (hosts show is for enrolled hosts).
    let removed: Vec<HostHistoryEntry> = serde_json::from_str(
        &fleet
            .coordinator
            .drover_ok(&["hosts", "history", "web-01", "-o", "json"])
            .expect("hosts history"),
    )
    .expect("history JSON");
    let last = removed.last().expect("history");
    assert!(last.what.starts_with("removed") && last.who == "admin", "{removed:#?}");
    let never = fleet.coordinator.drover(&["hosts", "history", "web-99"]);
    assert_eq!(never.status.code(), Some(3), "{never:?}");
    let back = fleet
        .join(&fleet.token(&["--replace", "web-01"]), "web-01")
        .expect("rejoin");

    let detail = fleet.show("web-01");
    assert_eq!(
        history_kinds(&detail),
        [
            ("admin".to_owned(), "joined".to_owned()),
            ("admin".to_owned(), "re-joined".to_owned()),
            ("admin".to_owned(), "removed".to_owned()),
            ("admin".to_owned(), "joined".to_owned()),
        ],
        "{:#?}",
        detail.history
    );
    let certificates: Vec<(Option<String>, Option<String>)> = detail
        .history
        .iter()
        .map(|line| (line.old_certificate.clone(), line.new_certificate.clone()))
        .collect();
    let (first, replaced, back) = (
        certificate_sha256(&first.certificate_pem),
        certificate_sha256(&replaced.certificate_pem),
        certificate_sha256(&back.certificate_pem),
    );
    assert_eq!(
        certificates,
        [
            (None, Some(first.clone())),
            (Some(first), Some(replaced.clone())),
            (Some(replaced), None),
            (None, Some(back)),
        ]
    );
    assert!(
        detail.history[3].what.contains("after its removal"),
        "{:#?}",
        detail.history
    );
    assert!(detail.history.windows(2).all(|pair| pair[0].at <= pair[1].at));

    // The table shows it too.
    let text = fleet
        .coordinator
        .drover_ok(&["hosts", "show", "web-01"])
        .expect("hosts show");
    assert!(
        text.contains("HISTORY AT") && text.contains("removed: its key"),
        "{text}"
    );
}

#[test]
fn a_host_renews_its_certificate_over_mtls_and_the_old_one_keeps_working_until_it_expires() {
    // Joined with one-minute certificates; renewed after a restart with one-hour ones, so
    // the old certificate expires while the renewed one still works.
    let mut fleet = Fleet::start(&["--host-certificate-validity", "1m"]);
    let host = fleet.enroll("web-01");
    let (_, old_not_after) = validity_of(&host.certificate_pem).expect("validity");
    assert!(old_not_after <= now_real().plus(drover_protocol::Duration::from_secs(61)));
    fleet.coordinator.stop();
    fleet.coordinator.serve_args = vec!["--host-certificate-validity".into(), "1h".into()];
    fleet.coordinator.resume().expect("restart");

    let csr = csr_for_key(&host.id.parse().expect("host id"), &host.key_pem).expect("csr");
    let answer = fleet.renew(&host, &csr);
    let Answer::Status(StatusCode::OK, body) = &answer else {
        panic!("renewal refused: {answer:?}");
    };
    let renewed: RenewResponse = serde_json::from_str(body).expect("renew response");
    assert_eq!(
        validity_of(&renewed.certificate_pem).map(|(_, end)| end),
        Some(renewed.not_after)
    );
    assert!(renewed.not_after > now_real().plus(drover_protocol::Duration::from_secs(3000)));

    // Both work: an agent that died before writing the new certificate is not locked out.
    assert!(
        ok(&fleet.poll(&host, &renewed.certificate_pem)),
        "the renewed certificate works"
    );
    assert!(ok(&fleet.poll(&host, &host.certificate_pem)), "the old one still works");

    // The coordinator shows the new expiry, counts it, and recorded who renewed.
    let hosts: Vec<HostSummary> = serde_json::from_str(
        &fleet
            .coordinator
            .drover_ok(&["hosts", "list", "-o", "json"])
            .expect("hosts list"),
    )
    .expect("hosts JSON");
    assert_eq!(hosts[0].certificate_not_after, Some(renewed.not_after));
    let table = fleet.coordinator.drover_ok(&["hosts", "list"]).expect("hosts list");
    assert!(table.contains("CERT EXPIRES") && table.contains(" !"), "{table}");
    let metrics = fleet.metrics();
    assert!(
        metrics.contains("drover_host_certificates_expiring_soon 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drover_host_certificate_renewals_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drover_host_certificate_expiry_seconds 3"),
        "{metrics}"
    );
    let detail = fleet.show("web-01");
    let last = detail.history.last().expect("history");
    assert_eq!(last.who, "host");
    assert_eq!(last.old_certificate, Some(certificate_sha256(&host.certificate_pem)));
    assert_eq!(last.new_certificate, Some(certificate_sha256(&renewed.certificate_pem)));

    // Crossing the old certificate's expiry: it stops working, the renewed one does not.
    wait_for("the old certificate to expire", Duration::from_secs(90), || {
        matches!(fleet.poll(&host, &host.certificate_pem), Answer::NoConnection(_))
    });
    assert!(now_real() >= old_not_after);
    assert!(
        ok(&fleet.poll(&host, &renewed.certificate_pem)),
        "the renewed one works after"
    );
    // The renewed certificate renews again (the key is the identity, not one certificate).
    let renewed_host = Host {
        certificate_pem: renewed.certificate_pem,
        ..host
    };
    assert!(ok(&fleet.renew(&renewed_host, &csr)));
}

#[test]
fn a_renewal_for_another_key_or_host_or_without_a_current_certificate_is_refused() {
    let fleet = Fleet::start(&[]);
    let host = fleet.enroll("web-01");
    let other = fleet.enroll("web-02");
    let id: HostId = "web-01".parse().expect("host id");

    // A CSR for a key the host does not hold (a stolen certificate cannot be moved to a
    // key the thief controls).
    let (new_key_csr, _) = make_host_csr(&id).expect("csr");
    refused(
        &fleet.renew(&host, &new_key_csr),
        StatusCode::BAD_REQUEST,
        "csr_key_mismatch",
    );
    // A CSR naming another host, with the host's own key.
    let web02_csr = csr_for_key(&"web-02".parse().expect("host id"), &host.key_pem).expect("csr");
    refused(
        &fleet.renew(&host, &web02_csr),
        StatusCode::BAD_REQUEST,
        "csr_host_mismatch",
    );
    // Garbage.
    refused(&fleet.renew(&host, "not a csr"), StatusCode::BAD_REQUEST, "bad_csr");
    // web-02 cannot renew into web-01 either.
    let own_csr = csr_for_key(&id, &host.key_pem).expect("csr");
    let as_web02 = Host {
        certificate_pem: other.certificate_pem.clone(),
        key_pem: other.key_pem.clone(),
        id: "web-02".into(),
    };
    refused(
        &fleet.renew(&as_web02, &own_csr),
        StatusCode::BAD_REQUEST,
        "csr_host_mismatch",
    );

    // No client certificate.
    let client = http_client(tls_client(&fleet.ca_pem(), None));
    let url = format!("{}/v1/agent/certificate", fleet.coordinator.url());
    let status = fleet.runtime.block_on(async {
        client
            .post(url)
            .json(&serde_json::json!({ "csr_pem": own_csr }))
            .send()
            .await
            .expect("request")
            .status()
    });
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Nothing was renewed or recorded.
    assert_eq!(fleet.show("web-01").history.len(), 1, "only the join");
    assert!(fleet.metrics().contains("drover_host_certificate_renewals_total 0"));

    // A removed host cannot renew its way back in.
    fleet
        .coordinator
        .drover_ok(&["hosts", "remove", "web-01"])
        .expect("remove");
    refused(&fleet.renew(&host, &own_csr), StatusCode::FORBIDDEN, "host_removed");
    // Nor can a replaced one.
    let replaced = fleet
        .join(&fleet.token(&["--replace", "web-02"]), "web-02")
        .expect("replace web-02");
    let web02_own = csr_for_key(&"web-02".parse().expect("host id"), &other.key_pem).expect("csr");
    refused(
        &fleet.renew(&as_web02, &web02_own),
        StatusCode::FORBIDDEN,
        "certificate_replaced",
    );
    assert!(ok(&fleet.poll(&replaced, &replaced.certificate_pem)));
}

/// The server certificate a TLS client sees now (a new connection), as (DER, not_after).
fn served_certificate(fleet: &Fleet) -> (Vec<u8>, Timestamp) {
    let config = std::sync::Arc::new(tls_client(&fleet.ca_pem(), None));
    let address = (fleet.coordinator.ip, fleet.coordinator.port);
    fleet.runtime.block_on(async move {
        let stream = tokio::net::TcpStream::connect(address).await.expect("connect");
        let name = rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from(address.0).into());
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .expect("TLS handshake: the served certificate is valid for the CA");
        let der = tls.get_ref().1.peer_certificates().expect("server certificate")[0].to_vec();
        let (_, not_after) = validity_of_der(&der).expect("validity");
        (der, not_after)
    })
}

#[test]
fn the_server_certificate_is_renewed_while_serving() {
    // One minute of validity (and a minute of skew slack): due 40 s before its end, so
    // about 20 s after the start.
    let fleet = Fleet::start(&["--server-certificate-validity", "1m"]);
    let host = fleet.enroll("web-01");
    let (first, first_not_after) = served_certificate(&fleet);
    let first_file = std::fs::read_to_string(fleet.coordinator.data_dir.join("server.pem")).expect("server.pem");
    assert!(first_file.contains("PRIVATE KEY"));

    let mut renewed = None;
    wait_for("a renewed server certificate", Duration::from_secs(60), || {
        let (der, not_after) = served_certificate(&fleet);
        if der != first {
            renewed = Some(not_after);
        }
        renewed.is_some()
    });
    let renewed = renewed.expect("renewed");
    assert!(renewed > first_not_after, "{renewed} after {first_not_after}");
    let file = std::fs::read_to_string(fleet.coordinator.data_dir.join("server.pem")).expect("server.pem");
    assert_ne!(file, first_file, "the data directory has the renewed certificate");
    // Agents keep talking to it, past the first certificate's expiry, without a restart.
    wait_for(
        "the first server certificate to expire",
        Duration::from_secs(60),
        || now_real() > first_not_after,
    );
    assert!(ok(&fleet.poll(&host, &host.certificate_pem)));
    let metrics = fleet.metrics();
    assert!(
        metrics.contains("drover_server_certificate_expiry_seconds "),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_enrolled_before_keys_were_recorded_is_known_by_its_certificate_until_its_key_is_learned() {
    use drover_coordinator::datadir::DataDir;
    use drover_coordinator::server::store::{HostChange, HostRecord, Store, StoredManifest};
    use drover_tests::fleet::TestCoordinator;

    let scratch = tempfile::tempdir().expect("scratch");
    let data_dir = scratch.path().join("data");
    let coordinator = TestCoordinator::start_in(&data_dir, 0).await;
    let token = coordinator.admin.token(&[], None).await;
    let agent = drover_tests::fleet::Agent::join(&coordinator.url(), &coordinator.admin.ca_pem, &token.token, "web-01")
        .await
        .expect("join");
    let ca_pem = coordinator.admin.ca_pem.clone();
    let port = coordinator.running.as_ref().expect("running").addr.port();
    coordinator.stop().await;

    // Make the row what an older coordinator left: the certificate's sha256, no key, no
    // expiry (through the store's own upsert, with the next serial: a manifest write never
    // repeats or lowers a host's serial).
    let store = Store::open(&DataDir::new(&data_dir).database()).await.expect("store");
    let serial = store.load().await.expect("load").manifests[0].serial + 1;
    let now = now_real();
    store
        .insert_token(
            "legacy",
            &Default::default(),
            None,
            "admin",
            now.plus(drover_protocol::Duration::from_secs(60)),
            now,
        )
        .await
        .expect("token");
    let host: HostId = "web-01".parse().expect("host id");
    let legacy = HostRecord {
        id: host.clone(),
        labels: Default::default(),
        cert_sha256: Some(certificate_sha256(&agent.joined.certificate_pem)),
        key_sha256: None,
        cert_not_after: None,
        joined_at: now,
    };
    let manifest = StoredManifest {
        host: host.clone(),
        serial,
        envelope: Default::default(),
        content_hash: String::new(),
        issued_at: now,
        expires_at: now,
    };
    let line = HostHistoryEntry {
        at: now,
        who: "older coordinator".into(),
        what: "joined".into(),
        old_certificate: None,
        new_certificate: legacy.cert_sha256.clone(),
    };
    let stored = store
        .join_host("legacy", &legacy, &manifest, (HostChange::Joined, &line), now)
        .await
        .expect("legacy row");
    assert_eq!(stored, Ok(()));
    drop(store);

    let coordinator = TestCoordinator::start_in(&data_dir, port).await;
    let expiry = |coordinator: &TestCoordinator| {
        let admin = coordinator.admin.clone();
        async move {
            let hosts = admin.ok(reqwest::Method::GET, "/v1/admin/hosts", None).await;
            hosts[0]["certificate_not_after"].as_str().map(str::to_owned)
        }
    };
    assert_eq!(
        expiry(&coordinator).await,
        None,
        "not known before the host's first request"
    );
    let client = |certificate_pem: &str| http_client(tls_client(&ca_pem, Some((certificate_pem, &agent.key_pem))));
    let url = coordinator.url();
    let poll = |certificate_pem: String| {
        let client = client(&certificate_pem);
        let url = format!("{url}/v1/agent/manifest?wait=0");
        async move { client.get(url).send().await.map(|response| response.status()).ok() }
    };
    assert_eq!(poll(agent.joined.certificate_pem.clone()).await, Some(StatusCode::OK));
    let (_, not_after) = validity_of(&agent.joined.certificate_pem).expect("validity");
    assert_eq!(
        expiry(&coordinator).await,
        Some(not_after.to_string()),
        "learned from its certificate"
    );

    // It renews like any host; from then on its key is what proves it.
    let csr = csr_for_key(&host, &agent.key_pem).expect("csr");
    let response = client(&agent.joined.certificate_pem)
        .post(format!("{}/v1/agent/certificate", coordinator.url()))
        .json(&serde_json::json!({ "csr_pem": csr }))
        .send()
        .await
        .expect("renew");
    assert_eq!(response.status(), StatusCode::OK);
    let renewed: RenewResponse = response.json().await.expect("renew response");
    let mut coordinator = coordinator;
    coordinator.restart().await;
    assert_eq!(coordinator.url(), url, "same port");
    assert_eq!(poll(renewed.certificate_pem.clone()).await, Some(StatusCode::OK));
    assert_eq!(poll(agent.joined.certificate_pem.clone()).await, Some(StatusCode::OK));
    coordinator.stop().await;
}
