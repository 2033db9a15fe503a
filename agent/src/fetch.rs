//! Downloading artifacts into the content-addressed cache, verified as they stream.
//!
//! The manifest gives the digest and the exact size; the size is a hard cap (a server
//! that sends more is cut off), the sha256 is computed over every byte as it arrives, and
//! only a complete, matching file is renamed from `<hex>.partial` to `<hex>`. So a file
//! named by its digest in the cache is always verified, and [`VerifiedArtifact`], the only
//! thing the installer accepts, can only be made here. An interrupted download keeps its
//! partial file and resumes with a `Range` request (the bytes already on disk are hashed
//! again first, so nothing unverified is ever trusted).
//!
//! [`Cache::fetch`] does this for a URL; [`Cache::begin`] and [`Download::receive`] are the
//! same steps for any stream of bytes, which is how OCI blobs from a registry client come
//! into the same cache ([`crate::oci::pull`]), and [`Cache::store`] for small blobs already
//! in memory (image manifests).
//!
//! A slow server cannot hold the app's reconciler: every download keeps a
//! [`TransferPace`] ([`ARTIFACT_PACE`]): an answer within a bound, no pause in the body
//! longer than the idle bound, and an average rate floor after a grace period (the shape
//! of the coordinator's request body pace). A download that falls behind fails naming the
//! URL and what was slow, and keeps its partial file, so the next attempt resumes where
//! it stopped. The HTTP clients ([`coordinator_client`], [`artifact_client`]) add read
//! timeouts under that as a backstop for every other request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_protocol::Digest;
use drover_protocol::api::MAX_WAIT_SECONDS;
use drover_protocol::manifest::HttpUrl;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long connecting (TCP and TLS) to the coordinator, an artifact server or a registry
/// may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How slow a download may be before the agent gives it up (and resumes it at the next
/// attempt). A fetch gets the answer (status and headers) within `answer`, then the body
/// may pause for at most `idle` and must keep an average of `min_rate` bytes a second
/// after `grace`: by `grace` + 1 s per `min_rate` bytes received. A server that trickles
/// a byte now and then is cut off after `grace`; one that stops, after `idle`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferPace {
    /// From sending the request to the response's status and headers.
    pub answer: Duration,
    /// The longest pause between two pieces of the body.
    pub idle: Duration,
    /// Before the rate floor counts.
    pub grace: Duration,
    /// The average bytes a second a transfer must keep after `grace`.
    pub min_rate: u64,
}

/// The pace of every artifact and image download: answer within 60 s, no pause over
/// 60 s, 32 KiB/s on average after 30 s (a 1 GiB artifact may take up to 9 hours per
/// attempt; a partial download resumes). The floor only bounds how long a broken or
/// hostile server holds a reconciler; each attempt starts its clock again, so even a link
/// below the floor makes progress across attempts.
pub const ARTIFACT_PACE: TransferPace = TransferPace {
    answer: Duration::from_secs(60),
    idle: Duration::from_secs(60),
    grace: Duration::from_secs(30),
    min_rate: 32 * 1024,
};

/// The read timeout of the artifact and registry clients: any read that waits this long
/// fails. A backstop above every bound of [`ARTIFACT_PACE`] (answer, idle, and an answer
/// that takes a registry token exchange first, `answer + grace`), so the paced errors,
/// which say what was slow, come first.
pub const ARTIFACT_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The read timeout of the coordinator client: longer than a manifest long-poll may
/// legitimately wait without a byte (`MAX_WAIT_SECONDS`), so only a coordinator that
/// stopped answering trips it. Each request also has its own bound (the poll: its wait
/// plus a margin; reports: 20 s; blob downloads: [`ARTIFACT_PACE`]).
pub const COORDINATOR_READ_TIMEOUT: Duration = Duration::from_secs(MAX_WAIT_SECONDS + 60);

impl TransferPace {
    /// The longest a whole transfer of `bytes` may take under this pace: the answer, the
    /// grace and the rate floor's allowance (for a response read whole, such as an image
    /// manifest through the registry client).
    pub fn allowance(&self, bytes: u64) -> Duration {
        self.answer + self.grace + self.earned(bytes)
    }

    /// The time `bytes` earn at the rate floor.
    fn earned(&self, bytes: u64) -> Duration {
        Duration::from_millis(bytes.saturating_mul(1000) / self.min_rate.max(1))
    }
}

/// The HTTP client for the coordinator (mTLS with the host's identity): no redirects,
/// [`CONNECT_TIMEOUT`], [`COORDINATOR_READ_TIMEOUT`].
pub fn coordinator_client(tls: rustls::ClientConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(COORDINATOR_READ_TIMEOUT)
        .pool_max_idle_per_host(2)
        .build()
        .map_err(|error| format!("HTTP client: {error}"))
}

/// The HTTP client for artifacts served elsewhere than the coordinator (system roots and
/// the coordinator's CA): [`CONNECT_TIMEOUT`], [`ARTIFACT_READ_TIMEOUT`]; downloads are
/// paced by [`Cache::fetch`].
pub fn artifact_client(tls: rustls::ClientConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(ARTIFACT_READ_TIMEOUT)
        .pool_max_idle_per_host(1)
        .build()
        .map_err(|error| format!("HTTP client: {error}"))
}

/// Why an artifact could not be fetched. Nothing unverified is left under its digest.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request failed (connection, TLS, timeout).
    #[error("downloading {url}: {detail}")]
    Request { url: String, detail: String },
    /// The server answered with an error status.
    #[error("downloading {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    /// The server sent more bytes than the manifest's size.
    #[error("{url} sent more than the {size} bytes the manifest allows; refused")]
    TooLarge { url: String, size: u64 },
    /// The download ended early; the partial file is kept to resume.
    #[error("{url} ended after {received} of {size} bytes; will resume")]
    Truncated { url: String, received: u64, size: u64 },
    /// The server did not answer (status and headers) in time.
    #[error("downloading {url}: no answer within {waited:?}; will retry")]
    NoAnswer { url: String, waited: Duration },
    /// The body paused longer than the idle bound; the partial file is kept to resume.
    #[error("{url} sent nothing for {idle:?} after {received} of {size} bytes; gave up, will resume")]
    Stalled {
        url: String,
        idle: Duration,
        received: u64,
        size: u64,
    },
    /// The body came slower than the rate floor; the partial file is kept to resume.
    #[error(
        "{url} is too slow: {this_time} bytes in {elapsed:?}, under the minimum of {min_rate} bytes/s after {grace:?}; gave up after {received} of {size} bytes, will resume"
    )]
    TooSlow {
        url: String,
        this_time: u64,
        elapsed: Duration,
        min_rate: u64,
        grace: Duration,
        received: u64,
        size: u64,
    },
    /// The bytes do not hash to the manifest's digest.
    #[error("{url}: content has digest {actual}, the manifest says {expected}; refused and deleted")]
    DigestMismatch {
        url: String,
        expected: Digest,
        actual: Digest,
    },
    /// Local I/O failed (e.g. the disk is full).
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An artifact whose bytes on disk match the manifest's digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedArtifact {
    path: PathBuf,
    digest: Digest,
    size: u64,
}

impl VerifiedArtifact {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Its digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
    /// Its size.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// The artifact cache: `<root>/<hex>` (verified) and `<root>/<hex>.partial` (in flight),
/// and the pace its downloads keep.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    pace: TransferPace,
}

fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError {
    let path = path.to_path_buf();
    move |source| FetchError::Io {
        operation,
        path,
        source,
    }
}

impl Cache {
    /// A cache in `root` (created when first used) whose downloads keep [`ARTIFACT_PACE`].
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache {
            root: root.into(),
            pace: ARTIFACT_PACE,
        }
    }

    /// The same cache with downloads held to `pace` (tests use bounds of a second or less).
    #[must_use]
    pub fn with_pace(self, pace: TransferPace) -> Cache {
        Cache { pace, ..self }
    }

    /// The pace downloads into this cache keep.
    pub fn pace(&self) -> TransferPace {
        self.pace
    }

    /// The path of a verified blob.
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.hex())
    }

    fn partial_of(&self, digest: &Digest) -> PathBuf {
        self.root.join(format!("{}.partial", digest.hex()))
    }

    /// Fetches `url` unless the cache has it; resumes a partial download.
    pub async fn fetch(
        &self,
        client: &reqwest::Client,
        url: &HttpUrl,
        digest: &Digest,
        size: u64,
    ) -> Result<VerifiedArtifact, FetchError> {
        let download = match self.begin(url.as_str(), digest, size).await? {
            Begun::Cached(artifact) => return Ok(artifact),
            Begun::Download(download) => download,
        };
        let mut request = client.get(url.as_str());
        if download.offset() > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={}-", download.offset()));
        }
        let response = tokio::time::timeout(self.pace.answer, request.send())
            .await
            .map_err(|_| FetchError::NoAnswer {
                url: url.as_str().to_owned(),
                waited: self.pace.answer,
            })?
            .map_err(|error| FetchError::Request {
                url: url.as_str().to_owned(),
                detail: crate::error::chain(&error),
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.as_str().to_owned(),
                status: status.as_u16(),
            });
        }
        // A server that ignored the Range answers 200 with the whole blob: start over.
        let from = if status == reqwest::StatusCode::PARTIAL_CONTENT {
            BodyStart::Offset
        } else {
            BodyStart::Beginning
        };
        let received = download.receive(response.bytes_stream(), from).await?;
        Ok(received.artifact)
    }

    /// The blob `digest` of exactly `size` bytes when the cache has it (what [`Cache::begin`]
    /// checks first: a file under its final name was verified before it was renamed).
    pub fn cached(&self, digest: &Digest, size: u64) -> Option<VerifiedArtifact> {
        let done = self.path_of(digest);
        let metadata = std::fs::metadata(&done).ok()?;
        (metadata.is_file() && metadata.len() == size).then(|| VerifiedArtifact {
            path: done,
            digest: digest.clone(),
            size,
        })
    }

    /// Starts getting the blob `digest` of exactly `size` bytes into the cache: the
    /// verified blob when the cache has it, else a [`Download`] to feed with the bytes from
    /// [`Download::offset`] on (the part an interrupted download left, hashed again, is
    /// kept). `name` says where the bytes come from in errors (a URL, a registry blob).
    pub async fn begin(&self, name: &str, digest: &Digest, size: u64) -> Result<Begun, FetchError> {
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(io("creating", &self.root))?;
        let done = self.path_of(digest);
        if let Ok(metadata) = tokio::fs::metadata(&done).await
            && metadata.len() == size
        {
            return Ok(Begun::Cached(VerifiedArtifact {
                path: done,
                digest: digest.clone(),
                size,
            }));
        }
        let partial = self.partial_of(digest);
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let offset = hash_existing(&partial, size, &mut hasher).await?;
        Ok(Begun::Download(Box::new(Download {
            name: name.to_owned(),
            root: self.root.clone(),
            digest: digest.clone(),
            size,
            partial,
            done,
            hasher,
            offset,
            pace: self.pace,
        })))
    }

    /// Puts `bytes` (a small blob already in memory, such as an image manifest) into the
    /// cache under `digest` after checking that they hash to it: written under the partial
    /// name, synced, renamed.
    pub async fn store(&self, name: &str, digest: &Digest, bytes: &[u8]) -> Result<VerifiedArtifact, FetchError> {
        match self.begin(name, digest, bytes.len() as u64).await? {
            Begun::Cached(artifact) => Ok(artifact),
            Begun::Download(download) => {
                let body = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]);
                Ok(download.receive(body, BodyStart::Beginning).await?.artifact)
            }
        }
    }

    /// Deletes cached blobs and partial downloads not in `keep`.
    pub fn collect_garbage(&self, keep: &[Digest]) -> std::io::Result<usize> {
        let keep: std::collections::BTreeSet<&str> = keep.iter().map(Digest::hex).collect();
        let mut removed = 0;
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(error) => return Err(error),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name.strip_suffix(".partial").unwrap_or(&name);
            if !keep.contains(hex) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// What [`Cache::begin`] found.
#[derive(Debug)]
pub enum Begun {
    /// The cache has the blob, verified.
    Cached(VerifiedArtifact),
    /// The blob is to be downloaded, from [`Download::offset`] on.
    Download(Box<Download>),
}

/// Where a body given to [`Download::receive`] starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyStart {
    /// At the blob's first byte (a server that ignored a Range request): the partial file
    /// is truncated and the download starts over.
    Beginning,
    /// At [`Download::offset`] (HTTP 206 to a Range request): appended to the partial file.
    Offset,
}

/// A blob on its way into the cache: its partial file and the hash of what it holds.
pub struct Download {
    name: String,
    root: PathBuf,
    digest: Digest,
    size: u64,
    partial: PathBuf,
    done: PathBuf,
    hasher: ring::digest::Context,
    offset: u64,
    pace: TransferPace,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

/// A download that completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The verified blob in the cache.
    pub artifact: VerifiedArtifact,
    /// Bytes that came over the network this time (a resumed download counts only the rest).
    pub downloaded: u64,
}

impl Download {
    /// How many bytes of the blob the partial file already holds (verified to hash on from).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Writes `body` into the partial file while hashing it, with the blob's size as a hard
    /// cap, and renames the file to the digest once every byte arrived and the sha256
    /// matched. A body that breaks off or falls behind the cache's [`TransferPace`] keeps
    /// the synced partial file for a resume ([`FetchError::Truncated`],
    /// [`FetchError::Stalled`], [`FetchError::TooSlow`]); too many bytes, a wrong digest or
    /// a failed write delete it.
    pub async fn receive<S, C, E>(self: Box<Self>, mut body: S, start: BodyStart) -> Result<Received, FetchError>
    where
        S: futures_util::Stream<Item = Result<C, E>> + Unpin,
        C: AsRef<[u8]>,
    {
        use futures_util::StreamExt as _;
        let mut download = *self;
        let (partial, name, size) = (download.partial.clone(), download.name.clone(), download.size);
        let mut file = if start == BodyStart::Offset && download.offset > 0 {
            tokio::fs::OpenOptions::new()
                .append(true)
                .open(&partial)
                .await
                .map_err(io("opening", &partial))?
        } else {
            download.offset = 0;
            download.hasher = ring::digest::Context::new(&ring::digest::SHA256);
            tokio::fs::File::create(&partial)
                .await
                .map_err(io("creating", &partial))?
        };
        let mut received = download.offset;
        let mut downloaded = 0u64;
        let pace = download.pace;
        let started = tokio::time::Instant::now();
        let mut last_chunk = started;
        loop {
            let stalls_at = last_chunk + pace.idle;
            let too_slow_at = started + pace.grace + pace.earned(downloaded);
            let next = match tokio::time::timeout_at(stalls_at.min(too_slow_at), body.next()).await {
                Ok(next) => next,
                // Every byte is here and the server only keeps the body open: the digest
                // below judges it.
                Err(_) if received >= size => break,
                Err(_) => {
                    file.sync_all().await.map_err(io("syncing", &partial))?;
                    return Err(if stalls_at <= too_slow_at {
                        FetchError::Stalled {
                            url: name,
                            idle: pace.idle,
                            received,
                            size,
                        }
                    } else {
                        FetchError::TooSlow {
                            url: name,
                            this_time: downloaded,
                            elapsed: started.elapsed(),
                            min_rate: pace.min_rate,
                            grace: pace.grace,
                            received,
                            size,
                        }
                    });
                }
            };
            let chunk = match next {
                Some(Ok(chunk)) => chunk,
                None => break,
                // A body that fails once every byte is here (a client checking a digest of
                // its own, say) is judged by the digest below, not as a broken transfer.
                Some(Err(_)) if received >= size => break,
                Some(Err(_)) => {
                    file.sync_all().await.map_err(io("syncing", &partial))?;
                    return Err(FetchError::Truncated {
                        url: name,
                        received,
                        size,
                    });
                }
            };
            let chunk = chunk.as_ref();
            if received + chunk.len() as u64 > size {
                drop(file);
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(FetchError::TooLarge { url: name, size });
            }
            download.hasher.update(chunk);
            if let Err(error) = file.write_all(chunk).await {
                drop(file);
                // A full disk must not stay full because of us.
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(io("writing", &partial)(error));
            }
            let before = received;
            received += chunk.len() as u64;
            downloaded += chunk.len() as u64;
            if before < size / 2 && received >= size / 2 {
                file.sync_all().await.map_err(io("syncing", &partial))?;
                crate::faults::pause_point("mid-download", download.root.parent().unwrap_or(&download.root));
            }
            // The idle clock runs from here: time our own disk took is not the server's.
            last_chunk = tokio::time::Instant::now();
        }
        file.sync_all().await.map_err(io("syncing", &partial))?;
        drop(file);
        if received < size {
            return Err(FetchError::Truncated {
                url: name,
                received,
                size,
            });
        }
        let actual = Digest::from_sha256(download.hasher.finish().as_ref());
        if actual != download.digest {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(FetchError::DigestMismatch {
                url: name,
                expected: download.digest,
                actual,
            });
        }
        tokio::fs::rename(&partial, &download.done)
            .await
            .map_err(io("renaming into place", &download.done))?;
        tokio::fs::File::open(&download.root)
            .await
            .map_err(io("opening", &download.root))?
            .sync_all()
            .await
            .map_err(io("syncing", &download.root))?;
        Ok(Received {
            artifact: VerifiedArtifact {
                path: download.done,
                digest: download.digest,
                size,
            },
            downloaded,
        })
    }
}

/// Hashes the bytes of an existing partial download (at most `size`); returns how many.
async fn hash_existing(partial: &Path, size: u64, hasher: &mut ring::digest::Context) -> Result<u64, FetchError> {
    let mut file = match tokio::fs::File::open(partial).await {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(io("opening", partial)(error)),
    };
    let length = file.metadata().await.map_err(io("reading", partial))?.len();
    if length >= size {
        // Complete but never verified, or too long: start over.
        drop(file);
        let _ = tokio::fs::remove_file(partial).await;
        return Ok(0);
    }
    let mut buffer = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let read = file.read(&mut buffer).await.map_err(io("reading", partial))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Chunk = Result<&'static [u8], &'static str>;

    async fn receive(cache: &Cache, content: &[u8], body: Vec<Chunk>) -> Result<Received, FetchError> {
        let digest = Digest::of(content);
        match cache.begin("test blob", &digest, content.len() as u64).await? {
            Begun::Cached(artifact) => Ok(Received {
                artifact,
                downloaded: 0,
            }),
            Begun::Download(download) => {
                let start = if download.offset() > 0 {
                    BodyStart::Offset
                } else {
                    BodyStart::Beginning
                };
                download.receive(futures_util::stream::iter(body), start).await
            }
        }
    }

    #[tokio::test]
    async fn a_stream_is_verified_resumed_and_cached() {
        let directory = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(directory.path());
        let content: &'static [u8] = b"hello, layered world";
        let error = receive(&cache, content, vec![Ok(&content[..5]), Err("connection reset")])
            .await
            .expect_err("broke off");
        assert!(matches!(error, FetchError::Truncated { received: 5, .. }), "{error}");
        let received = receive(&cache, content, vec![Ok(&content[5..])])
            .await
            .expect("resumed");
        assert_eq!(received.downloaded, content.len() as u64 - 5);
        assert_eq!(std::fs::read(received.artifact.path()).expect("read"), content);
        let again = receive(&cache, content, vec![]).await.expect("cached");
        assert_eq!(again.downloaded, 0);
    }

    #[tokio::test]
    async fn a_stream_failing_after_its_last_byte_is_judged_by_the_digest() {
        let directory = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(directory.path());
        let content: &'static [u8] = b"complete";
        let received = receive(&cache, content, vec![Ok(content), Err("client-side digest check")])
            .await
            .expect("all bytes arrived and match");
        assert_eq!(received.downloaded, content.len() as u64);
        let other: &'static [u8] = b"tampered";
        let directory = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(directory.path());
        let error = receive(&cache, content, vec![Ok(other), Err("late error")])
            .await
            .expect_err("wrong bytes");
        assert!(matches!(error, FetchError::DigestMismatch { .. }), "{error}");
        assert_eq!(
            std::fs::read_dir(directory.path()).expect("read").count(),
            0,
            "nothing kept"
        );
    }

    #[tokio::test]
    async fn store_refuses_bytes_that_do_not_hash_to_the_digest() {
        let directory = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(directory.path());
        let digest = Digest::of(b"manifest");
        let error = cache.store("manifest", &digest, b"other").await.expect_err("mismatch");
        assert!(
            matches!(error, FetchError::DigestMismatch { .. } | FetchError::TooLarge { .. }),
            "{error}"
        );
        assert!(!cache.path_of(&digest).exists());
        let stored = cache.store("manifest", &digest, b"manifest").await.expect("stored");
        assert_eq!(std::fs::read(stored.path()).expect("read"), b"manifest");
    }
}
