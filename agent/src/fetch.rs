//! Downloading artifacts into the content-addressed cache, verified as they stream.
//!
//! The manifest gives the digest and the exact size; the size is a hard cap (a server
//! that sends more is cut off), the sha256 is computed over every byte as it arrives, and
//! only a complete, matching file is renamed from `<hex>.partial` to `<hex>`. So a file
//! named by its digest in the cache is always verified, and [`VerifiedArtifact`], the only
//! thing the installer accepts, can only be made here. An interrupted download keeps its
//! partial file and resumes with a `Range` request (the bytes already on disk are hashed
//! again first, so nothing unverified is ever trusted).

use std::path::{Path, PathBuf};

use drover_protocol::Digest;
use drover_protocol::manifest::HttpUrl;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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

/// The artifact cache: `<root>/<hex>` (verified) and `<root>/<hex>.partial` (in flight).
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
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
    /// A cache in `root` (created when first used).
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
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
        let url_text = url.as_str().to_owned();
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(io("creating", &self.root))?;
        let done = self.path_of(digest);
        if let Ok(metadata) = tokio::fs::metadata(&done).await
            && metadata.len() == size
        {
            return Ok(VerifiedArtifact {
                path: done,
                digest: digest.clone(),
                size,
            });
        }
        let partial = self.partial_of(digest);
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut received = hash_existing(&partial, size, &mut hasher).await?;

        let mut request = client.get(url.as_str());
        if received > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={received}-"));
        }
        let mut response = request.send().await.map_err(|error| FetchError::Request {
            url: url_text.clone(),
            detail: crate::error::chain(&error),
        })?;
        let status = response.status();
        let mut file = if received > 0 && status == reqwest::StatusCode::PARTIAL_CONTENT {
            tokio::fs::OpenOptions::new()
                .append(true)
                .open(&partial)
                .await
                .map_err(io("opening", &partial))?
        } else if status.is_success() {
            // A fresh download, or a server that ignored the Range: start over.
            received = 0;
            hasher = ring::digest::Context::new(&ring::digest::SHA256);
            tokio::fs::File::create(&partial)
                .await
                .map_err(io("creating", &partial))?
        } else {
            return Err(FetchError::Status {
                url: url_text,
                status: status.as_u16(),
            });
        };

        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) => {
                    file.sync_all().await.map_err(io("syncing", &partial))?;
                    return Err(FetchError::Truncated {
                        url: url_text,
                        received,
                        size,
                    });
                }
            };
            if received + chunk.len() as u64 > size {
                drop(file);
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(FetchError::TooLarge { url: url_text, size });
            }
            hasher.update(&chunk);
            if let Err(error) = file.write_all(&chunk).await {
                drop(file);
                // A full disk must not stay full because of us.
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(io("writing", &partial)(error));
            }
            let before = received;
            received += chunk.len() as u64;
            if before < size / 2 && received >= size / 2 {
                file.sync_all().await.map_err(io("syncing", &partial))?;
                crate::faults::pause_point("mid-download", self.root.parent().unwrap_or(&self.root));
            }
        }
        file.sync_all().await.map_err(io("syncing", &partial))?;
        drop(file);
        if received < size {
            return Err(FetchError::Truncated {
                url: url_text,
                received,
                size,
            });
        }
        let actual = Digest::from_sha256(hasher.finish().as_ref());
        if &actual != digest {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(FetchError::DigestMismatch {
                url: url_text,
                expected: digest.clone(),
                actual,
            });
        }
        tokio::fs::rename(&partial, &done)
            .await
            .map_err(io("renaming into place", &done))?;
        tokio::fs::File::open(&self.root)
            .await
            .map_err(io("opening", &self.root))?
            .sync_all()
            .await
            .map_err(io("syncing", &self.root))?;
        Ok(VerifiedArtifact {
            path: done,
            digest: digest.clone(),
            size,
        })
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
