//! Test helpers below the registry boundary: a tiny in-process OCI distribution server
//! on 127.0.0.1 (plain HTTP/1.1, one request per connection) that serves manifests and
//! blobs by digest, honours or ignores Range, can cut a blob download midway, can demand
//! basic auth, and counts the blob bytes it sends; and builders for gzip layers and
//! images. The real `docker-registry` is exercised by the end-to-end suites.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};

use drover_protocol::Digest;
use drover_protocol::manifest::OciReference;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::image::{MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_MANIFEST};

/// Installs ring as the rustls provider (reqwest needs one), once per test process.
pub(crate) fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One entry of a test layer.
pub(crate) enum Entry<'a> {
    /// A directory with its mode.
    Dir(&'a str, u32),
    /// A regular file with contents and mode.
    File(&'a str, &'a [u8], u32),
    /// A symlink and its target.
    Symlink(&'a str, &'a str),
}

/// A gzip-compressed tar layer of `entries`.
pub(crate) fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Entry::Dir(path, mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder
                    .append_data(&mut header, path, std::io::empty())
                    .expect("dir entry");
            }
            Entry::File(path, contents, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(contents.len() as u64);
                builder.append_data(&mut header, path, *contents).expect("file entry");
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target).expect("symlink entry");
            }
        }
    }
    let tar = builder.into_inner().expect("tar");
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&tar).expect("gzip");
    gzip.finish().expect("gzip")
}

/// An image: manifest, config and layers with their digests.
#[derive(Clone, Debug)]
pub(crate) struct TestImage {
    pub(crate) manifest: Vec<u8>,
    pub(crate) digest: Digest,
    pub(crate) config: Vec<u8>,
    pub(crate) layers: Vec<Vec<u8>>,
}

impl TestImage {
    /// An OCI image of `layers` (gzip) with the image config `config` (JSON).
    pub(crate) fn new(config: &str, layers: Vec<Vec<u8>>) -> TestImage {
        let descriptors: Vec<String> = layers
            .iter()
            .map(|layer| {
                format!(
                    r#"{{"mediaType":"{}","digest":"{}","size":{}}}"#,
                    super::MEDIA_TYPE_LAYER_TAR_GZIP,
                    Digest::of(layer),
                    layer.len()
                )
            })
            .collect();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_OCI_MANIFEST}","config":{{"mediaType":"{MEDIA_TYPE_OCI_CONFIG}","digest":"{}","size":{}}},"layers":[{}]}}"#,
            Digest::of(config.as_bytes()),
            config.len(),
            descriptors.join(",")
        )
        .into_bytes();
        TestImage {
            digest: Digest::of(&manifest),
            manifest,
            config: config.as_bytes().to_vec(),
            layers,
        }
    }

    /// The bytes of every blob (config and layers).
    pub(crate) fn blob_bytes(&self) -> u64 {
        (self.config.len() + self.layers.iter().map(Vec::len).sum::<usize>()) as u64
    }
}

#[derive(Default)]
struct State {
    manifests: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, Vec<u8>>,
    /// Blob digest → bytes after which the next download of it is cut.
    cuts: HashMap<String, usize>,
    /// Blob digest → bytes after which every download of it is cut.
    cut_always: HashMap<String, usize>,
    ignore_range: bool,
    /// The `Authorization` header every request must carry.
    required_authorization: Option<String>,
    blob_bytes_sent: u64,
    /// `GET path [range]` of every request.
    requests: Vec<String>,
}

/// The in-process registry; stops when dropped.
pub(crate) struct TestRegistry {
    pub(crate) address: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestRegistry {
    /// Starts serving on 127.0.0.1 at a free port.
    pub(crate) async fn start() -> TestRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&shared)));
            }
        });
        TestRegistry { address, state, task }
    }

    /// The agent's registry settings that reach this registry: plain HTTP, anonymous.
    pub(crate) fn plain_http(&self) -> super::registry::Registries {
        let config = crate::config::RegistryConfig {
            transport: crate::config::RegistryTransport::PlainHttp,
            ..crate::config::RegistryConfig::default()
        };
        super::registry::Registries::new(std::collections::BTreeMap::from([(self.address.clone(), config)]), &[])
    }

    fn with<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        change(&mut self.state.lock().expect("registry state"))
    }

    /// Serves `image`'s manifest and blobs.
    pub(crate) fn push(&self, image: &TestImage) {
        self.with(|state| {
            state.manifests.insert(image.digest.to_string(), image.manifest.clone());
            state
                .blobs
                .insert(Digest::of(&image.config).to_string(), image.config.clone());
            for layer in &image.layers {
                state.blobs.insert(Digest::of(layer).to_string(), layer.clone());
            }
        });
    }

    /// Serves `bytes` as the manifest `digest` (whatever they hash to).
    pub(crate) fn put_manifest(&self, digest: &Digest, bytes: &[u8]) {
        self.with(|state| state.manifests.insert(digest.to_string(), bytes.to_vec()));
    }

    /// Serves `bytes` as the blob `digest` (whatever they hash to).
    pub(crate) fn put_blob(&self, digest: &Digest, bytes: &[u8]) {
        self.with(|state| state.blobs.insert(digest.to_string(), bytes.to_vec()));
    }

    /// Cuts the next download of blob `digest` after `after` bytes.
    pub(crate) fn cut_next(&self, digest: &Digest, after: usize) {
        self.with(|state| state.cuts.insert(digest.to_string(), after));
    }

    /// Cuts every download of blob `digest` after `after` bytes (`None`: stops).
    pub(crate) fn cut_every(&self, digest: &Digest, after: Option<usize>) {
        self.with(|state| match after {
            Some(after) => state.cut_always.insert(digest.to_string(), after),
            None => state.cut_always.remove(&digest.to_string()),
        });
    }

    /// Answers Range requests with the whole blob (200), as some servers do.
    pub(crate) fn ignore_range(&self) {
        self.with(|state| state.ignore_range = true);
    }

    /// Demands HTTP basic auth with `user` and `password` on every request.
    pub(crate) fn require_basic(&self, user: &str, password: &str) {
        let header = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
        self.with(|state| state.required_authorization = Some(header));
    }

    /// Blob bytes sent so far.
    pub(crate) fn blob_bytes_sent(&self) -> u64 {
        self.with(|state| state.blob_bytes_sent)
    }

    /// The requests so far (`GET /v2/... [bytes=N-]`).
    pub(crate) fn requests(&self) -> Vec<String> {
        self.with(|state| state.requests.clone())
    }

    /// `127.0.0.1:PORT/<repository>@<digest>`.
    pub(crate) fn reference(&self, repository: &str, digest: &Digest) -> OciReference {
        OciReference::try_from(format!("{}/{repository}@{digest}", self.address)).expect("reference")
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let value = chunk.iter().enumerate().fold(0u32, |value, (index, byte)| {
            value | (u32::from(*byte) << (16 - 8 * index))
        });
        for index in 0..4 {
            if index <= chunk.len() {
                out.push(ALPHABET[(value >> (18 - 6 * index) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn serve(mut stream: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(count) => head.extend_from_slice(&buffer[..count]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut headers: HashMap<String, String> = HashMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let path = request_line.split(' ').nth(1).unwrap_or_default().to_owned();
    let range = headers
        .get("range")
        .and_then(|range| range.strip_prefix("bytes="))
        .and_then(|range| range.strip_suffix('-'))
        .and_then(|start| start.parse::<usize>().ok());
    let (status, extra, body, cut) = {
        let mut state = state.lock().expect("registry state");
        state.requests.push(format!(
            "GET {path}{}",
            range.map_or(String::new(), |start| format!(" bytes={start}-"))
        ));
        let authorized = state
            .required_authorization
            .as_ref()
            .is_none_or(|required| headers.get("authorization") == Some(required));
        let parts: Vec<&str> = path.trim_start_matches("/v2/").rsplitn(3, '/').collect();
        if !authorized {
            (
                "401 Unauthorized",
                "WWW-Authenticate: Basic realm=\"test\"\r\n".to_owned(),
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
                None,
            )
        } else if path == "/v2/" {
            ("200 OK", String::new(), b"{}".to_vec(), None)
        } else if parts.len() == 3 && parts[1] == "manifests" && state.manifests.contains_key(parts[0]) {
            (
                "200 OK",
                format!("Content-Type: {MEDIA_TYPE_OCI_MANIFEST}\r\n"),
                state.manifests[parts[0]].clone(),
                None,
            )
        } else if parts.len() == 3 && parts[1] == "blobs" && state.blobs.contains_key(parts[0]) {
            let blob = state.blobs[parts[0]].clone();
            let cut = state
                .cuts
                .remove(parts[0])
                .or_else(|| state.cut_always.get(parts[0]).copied());
            match range {
                Some(start) if !state.ignore_range && start < blob.len() => (
                    "206 Partial Content",
                    format!("Content-Range: bytes {start}-{}/{}\r\n", blob.len() - 1, blob.len()),
                    blob[start..].to_vec(),
                    cut,
                ),
                _ => ("200 OK", String::new(), blob, cut),
            }
        } else {
            (
                "404 Not Found",
                String::new(),
                br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"not here"}]}"#.to_vec(),
                None,
            )
        }
    };
    let is_blob = path.contains("/blobs/");
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let sent = cut.map_or(body.len(), |after| after.min(body.len()));
    if stream.write_all(&body[..sent]).await.is_err() {
        return;
    }
    if is_blob {
        state.lock().expect("registry state").blob_bytes_sent += sent as u64;
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

#[test]
fn base64_matches_the_rfc_examples() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}
