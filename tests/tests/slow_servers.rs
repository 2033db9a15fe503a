//! Slow servers cannot hold the agent's reconciler: an artifact server or a registry that
//! never answers, stops mid-body, or trickles bytes fails the download within the agent's
//! [`TransferPace`], with an error naming the URL (or image) and what was slow, and the
//! partial file is kept so the next attempt resumes. The servers are real TCP servers on
//! 127.0.0.1; the pace is set to bounds under a second through [`Cache::with_pace`], so
//! these take seconds (the agent's own is [`drover_agent::fetch::ARTIFACT_PACE`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_agent::fetch::{Cache, FetchError, TransferPace};
use drover_agent::oci::pull::PullError;
use drover_protocol::Digest;
use drover_protocol::manifest::{HttpUrl, OciReference};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How a route answers.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Status, headers and the whole body (from the requested Range offset: 206).
    Whole,
    /// Status and headers, the first bytes of the body, then silence with the connection
    /// held open.
    StallAfter(usize),
    /// Status and headers, then `bytes` bytes every `every`.
    Trickle { bytes: usize, every: Duration },
    /// Reads the request and never answers.
    Silent,
}

struct Route {
    body: Vec<u8>,
    content_type: &'static str,
    behaviour: Behaviour,
}

#[derive(Default)]
struct Routes {
    routes: HashMap<String, Route>,
    /// `path [bytes=N-]` of every request.
    requests: Vec<String>,
}

/// An HTTP/1.1 server on 127.0.0.1 serving fixed bodies by path with a chosen slowness;
/// stops when dropped (its connections with it).
struct SlowServer {
    address: String,
    routes: Arc<Mutex<Routes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlowServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SlowServer {
    async fn start() -> SlowServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let routes = Arc::new(Mutex::new(Routes::default()));
        let shared = Arc::clone(&routes);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(serve(stream, Arc::clone(&shared)));
            }
        });
        SlowServer { address, routes, task }
    }

    fn route(&self, path: &str, body: &[u8], content_type: &'static str, behaviour: Behaviour) {
        self.routes.lock().expect("routes").routes.insert(
            path.to_owned(),
            Route {
                body: body.to_vec(),
                content_type,
                behaviour,
            },
        );
    }

    fn requests(&self) -> Vec<String> {
        self.routes.lock().expect("routes").requests.clone()
    }

    fn url(&self, path: &str) -> HttpUrl {
        HttpUrl::try_from(format!("http://{}{path}", self.address)).expect("url")
    }
}

async fn serve(mut stream: tokio::net::TcpStream, routes: Arc<Mutex<Routes>>) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(count) => head.extend_from_slice(&buffer[..count]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
    let range = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("range: bytes=")
                .map(str::to_owned)
        })
        .and_then(|range| {
            range
                .trim()
                .strip_suffix('-')
                .and_then(|start| start.parse::<usize>().ok())
        });
    let answer = {
        let mut routes = routes.lock().expect("routes");
        routes.requests.push(format!(
            "{path}{}",
            range.map_or(String::new(), |start| format!(" bytes={start}-"))
        ));
        routes
            .routes
            .get(&path)
            .map(|route| (route.body.clone(), route.content_type, route.behaviour))
    };
    let Some((body, content_type, behaviour)) = answer else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    };
    if let Behaviour::Silent = behaviour {
        // Hold the connection, say nothing; the client gives up.
        let _ = stream.read(&mut buffer).await;
        std::future::pending::<()>().await;
    }
    let (status, extra, body) = match range {
        Some(start) if start < body.len() => (
            "206 Partial Content",
            format!("Content-Range: bytes {start}-{}/{}\r\n", body.len() - 1, body.len()),
            body[start..].to_vec(),
        ),
        _ => ("200 OK", String::new(), body),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: {content_type}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    match behaviour {
        Behaviour::Whole => {
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        }
        Behaviour::StallAfter(count) => {
            let _ = stream.write_all(&body[..count.min(body.len())]).await;
            let _ = stream.flush().await;
            std::future::pending::<()>().await;
        }
        Behaviour::Trickle { bytes, every } => {
            for piece in body.chunks(bytes) {
                if stream.write_all(piece).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        }
        Behaviour::Silent => unreachable!("answered above"),
    }
}

fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client with no timeouts of its own, so only the pace under test can end a download.
fn plain_client() -> reqwest::Client {
    crypto();
    reqwest::Client::builder().build().expect("client")
}

/// Bytes that do not repeat (so a resumed download that got an offset wrong fails).
fn content(size: usize) -> Vec<u8> {
    (0..size as u32)
        .map(|index| (index.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// A pace with bounds under a second; a download never takes the outer bound of the
/// tests (10 s) unless the pace is not applied at all.
const FAST_PACE: TransferPace = TransferPace {
    answer: Duration::from_millis(500),
    idle: Duration::from_millis(500),
    grace: Duration::from_millis(500),
    min_rate: 64 * 1024,
};

/// The outer bound: a fetch that takes this long was not held to any pace (before the
/// pace existed, these fetches waited forever).
const HUNG: Duration = Duration::from_secs(10);

async fn fetch_within_bound(
    cache: &Cache,
    url: &HttpUrl,
    content: &[u8],
) -> (Result<drover_agent::fetch::VerifiedArtifact, FetchError>, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(
        HUNG,
        cache.fetch(&plain_client(), url, &Digest::of(content), content.len() as u64),
    )
    .await
    .unwrap_or_else(|_| panic!("the fetch of {url:?} hung for {HUNG:?}: no pace was applied"));
    (result, started.elapsed())
}

#[tokio::test]
async fn an_artifact_server_that_stalls_mid_body_fails_the_fetch_within_the_idle_timeout() {
    let server = SlowServer::start().await;
    let content = content(200_000);
    server.route(
        "/web.tar.gz",
        &content,
        "application/gzip",
        Behaviour::StallAfter(1_000),
    );
    let directory = tempfile::tempdir().expect("tempdir");
    let cache = Cache::new(directory.path()).with_pace(TransferPace {
        grace: Duration::from_secs(30),
        min_rate: 1,
        ..FAST_PACE
    });
    let url = server.url("/web.tar.gz");

    let (result, elapsed) = fetch_within_bound(&cache, &url, &content).await;
    let error = result.expect_err("a server that stops sending fails the fetch");
    assert!(matches!(error, FetchError::Stalled { received: 1_000, .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(url.as_str()) && message.contains("sent nothing for 500ms after 1000 of 200000 bytes"),
        "{message}"
    );
    assert!(
        elapsed >= FAST_PACE.idle && elapsed < FAST_PACE.idle * 4,
        "gave up after {elapsed:?}, the idle bound is {:?}",
        FAST_PACE.idle
    );
    // What came is kept, and the next attempt resumes from it at a normal rate.
    let partial = directory.path().join(format!("{}.partial", Digest::of(&content).hex()));
    assert_eq!(std::fs::metadata(&partial).expect("partial kept").len(), 1_000);
    server.route("/web.tar.gz", &content, "application/gzip", Behaviour::Whole);
    let (result, _) = fetch_within_bound(&cache, &url, &content).await;
    let artifact = result.expect("resumed at a normal rate, within the same pace");
    assert_eq!(std::fs::read(artifact.path()).expect("read"), content);
    assert_eq!(server.requests(), ["/web.tar.gz", "/web.tar.gz bytes=1000-"]);
}

#[tokio::test]
async fn an_artifact_server_below_the_minimum_rate_fails_the_fetch() {
    let server = SlowServer::start().await;
    let content = content(100_000);
    // 64 bytes every 20 ms: about 3 KiB/s, never silent as long as the idle bound.
    server.route(
        "/web.tar.gz",
        &content,
        "application/gzip",
        Behaviour::Trickle {
            bytes: 64,
            every: Duration::from_millis(20),
        },
    );
    let directory = tempfile::tempdir().expect("tempdir");
    let pace = TransferPace {
        idle: Duration::from_secs(5),
        min_rate: 16 * 1024,
        ..FAST_PACE
    };
    let cache = Cache::new(directory.path()).with_pace(pace);
    let url = server.url("/web.tar.gz");

    let (result, elapsed) = fetch_within_bound(&cache, &url, &content).await;
    let error = result.expect_err("a server under the rate floor fails the fetch");
    let FetchError::TooSlow {
        this_time, received, ..
    } = &error
    else {
        panic!("expected too slow, got: {error}");
    };
    assert!(*this_time > 0 && *received == *this_time, "{error}");
    let message = error.to_string();
    assert!(
        message.contains(url.as_str()) && message.contains("is too slow") && message.contains("16384 bytes/s"),
        "{message}"
    );
    assert!(
        elapsed >= pace.grace && elapsed < pace.idle,
        "gave up after {elapsed:?}: by the rate floor, before the idle bound"
    );
    let partial = directory.path().join(format!("{}.partial", Digest::of(&content).hex()));
    assert_eq!(
        std::fs::metadata(&partial).expect("partial kept").len(),
        *received,
        "what came is kept to resume"
    );
}

#[tokio::test]
async fn an_artifact_server_that_never_answers_fails_the_fetch_within_the_answer_timeout() {
    let server = SlowServer::start().await;
    let content = content(1_000);
    server.route("/web.tar.gz", &content, "application/gzip", Behaviour::Silent);
    let directory = tempfile::tempdir().expect("tempdir");
    let cache = Cache::new(directory.path()).with_pace(FAST_PACE);
    let url = server.url("/web.tar.gz");

    let (result, elapsed) = fetch_within_bound(&cache, &url, &content).await;
    let error = result.expect_err("no answer fails the fetch");
    assert!(matches!(error, FetchError::NoAnswer { .. }), "{error}");
    assert!(
        error.to_string().contains(url.as_str()) && error.to_string().contains("no answer within 500ms"),
        "{error}"
    );
    assert!(
        elapsed >= FAST_PACE.answer && elapsed < FAST_PACE.answer * 4,
        "{elapsed:?}"
    );
}

/// An image of one layer (bytes the pull does not unpack) served by `server` as the
/// repository `web`; returns its reference and manifest digest.
fn image_on(server: &SlowServer, layer_behaviour: Behaviour, manifest_behaviour: Behaviour) -> (OciReference, Digest) {
    use drover_protocol::oci::{MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_MANIFEST};
    let architecture = drover_agent::oci::image::host_architecture().unwrap_or("amd64");
    let config = format!(r#"{{"architecture":"{architecture}","os":"linux","config":{{"Cmd":["/bin/app"]}}}}"#);
    let layer = content(300_000);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_OCI_MANIFEST}","config":{{"mediaType":"{MEDIA_TYPE_OCI_CONFIG}","digest":"{}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{}","size":{}}}]}}"#,
        Digest::of(config.as_bytes()),
        config.len(),
        drover_agent::oci::MEDIA_TYPE_LAYER_TAR_GZIP,
        Digest::of(&layer),
        layer.len()
    );
    let digest = Digest::of(manifest.as_bytes());
    server.route("/v2/", b"{}", "application/json", Behaviour::Whole);
    server.route(
        &format!("/v2/web/manifests/{digest}"),
        manifest.as_bytes(),
        MEDIA_TYPE_OCI_MANIFEST,
        manifest_behaviour,
    );
    server.route(
        &format!("/v2/web/blobs/{}", Digest::of(config.as_bytes())),
        config.as_bytes(),
        "application/octet-stream",
        Behaviour::Whole,
    );
    server.route(
        &format!("/v2/web/blobs/{}", Digest::of(&layer)),
        &layer,
        "application/octet-stream",
        layer_behaviour,
    );
    let reference = OciReference::try_from(format!("{}/web@{digest}", server.address)).expect("reference");
    (reference, digest)
}

fn plain_http(server: &SlowServer) -> drover_agent::oci::registry::Registries {
    crypto();
    let config = drover_agent::config::RegistryConfig {
        transport: drover_agent::config::RegistryTransport::PlainHttp,
        ..drover_agent::config::RegistryConfig::default()
    };
    drover_agent::oci::registry::Registries::new(
        std::collections::BTreeMap::from([(server.address.clone(), config)]),
        &[],
    )
}

async fn pull_within_bound(
    server: &SlowServer,
    cache: &Cache,
    reference: &OciReference,
    digest: &Digest,
) -> (PullError, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(
        HUNG,
        drover_agent::oci::pull::pull(&plain_http(server), cache, reference, digest, 1 << 30),
    )
    .await
    .unwrap_or_else(|_| panic!("the pull of {reference:?} hung for {HUNG:?}: no pace was applied"));
    (result.expect_err("the pull fails"), started.elapsed())
}

#[tokio::test]
async fn a_registry_that_stalls_mid_blob_fails_the_pull_within_the_idle_timeout() {
    let server = SlowServer::start().await;
    let (reference, digest) = image_on(&server, Behaviour::StallAfter(5_000), Behaviour::Whole);
    let directory = tempfile::tempdir().expect("tempdir");
    let cache = Cache::new(directory.path()).with_pace(TransferPace {
        grace: Duration::from_secs(30),
        min_rate: 1,
        ..FAST_PACE
    });

    let (error, elapsed) = pull_within_bound(&server, &cache, &reference, &digest).await;
    assert!(
        matches!(
            &error,
            PullError::Blob {
                source: FetchError::Stalled { received: 5_000, .. },
                ..
            }
        ),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains(reference.as_str()) && message.contains("sent nothing for 500ms"),
        "{message}"
    );
    // Not retried within the pull: one request for the layer, given up after the idle bound.
    assert!(elapsed < FAST_PACE.idle * 4, "gave up after {elapsed:?}");
    let blob_requests = server
        .requests()
        .iter()
        .filter(|request| request.contains("/blobs/"))
        .count();
    assert_eq!(blob_requests, 2, "config and layer once each: {:?}", server.requests());
}

#[tokio::test]
async fn a_registry_that_never_sends_the_manifest_fails_the_pull_within_its_allowance() {
    let server = SlowServer::start().await;
    let (reference, digest) = image_on(&server, Behaviour::Whole, Behaviour::Silent);
    let directory = tempfile::tempdir().expect("tempdir");
    let pace = TransferPace {
        min_rate: 64 * 1024 * 1024,
        ..FAST_PACE
    };
    let cache = Cache::new(directory.path()).with_pace(pace);

    let (error, elapsed) = pull_within_bound(&server, &cache, &reference, &digest).await;
    assert!(matches!(error, PullError::Registry { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(reference.as_str())
            && message.contains("fetching the manifest")
            && message.contains("no complete answer within"),
        "{message}"
    );
    let allowance = pace.allowance(drover_agent::oci::image::MAX_MANIFEST_BYTES);
    assert!(
        elapsed >= allowance && elapsed < allowance * 4,
        "{elapsed:?}, allowance {allowance:?}"
    );
}
