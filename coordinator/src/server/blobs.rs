//! The content-addressed artifact store: `blobs/sha256/<hex>`. Uploads stream to a
//! temporary file while their sha256 is computed, are synced, and are renamed into place
//! only when complete (and, when the client said which digest to expect, when it
//! matches). A truncated or wrong upload leaves nothing behind. Downloads ([`open`])
//! resolve a `Range` header and stream the bytes asked for.
//!
//! The store knows files, not HTTP or the service: it answers with [`BlobError`], which
//! the service turns into its own error (status codes are the HTTP layer's business).

use std::path::{Path, PathBuf};

use drover_protocol::Digest;
use drover_protocol::api::BlobInfo;
use futures_util::{Stream, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

pub use drover_protocol::api::MAX_ARTIFACT_BYTES;

/// Why the artifact store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No artifact with this digest was uploaded.
    #[error("no artifact {digest}")]
    NotFound {
        /// The digest asked for.
        digest: Digest,
    },
    /// A `Range` header past the end of the artifact, or one that cannot be parsed.
    #[error("range {header:?} is not satisfiable for an artifact of {size} bytes")]
    RangeNotSatisfiable {
        /// The header as sent.
        header: String,
        /// The artifact's size, for `Content-Range: bytes */SIZE`.
        size: u64,
    },
    /// The upload's body ended with an error (the client went away, or was too slow).
    #[error("the upload was interrupted: {detail}")]
    UploadInterrupted {
        /// What the body stream said.
        detail: String,
    },
    /// An upload over [`MAX_ARTIFACT_BYTES`].
    #[error("artifacts are limited to {MAX_ARTIFACT_BYTES} bytes")]
    TooLarge,
    /// The upload is not the artifact the client said it sends.
    #[error("the upload's digest is {actual}, not the expected {expected}: truncated or wrong file")]
    DigestMismatch {
        /// The digest the client named.
        expected: Digest,
        /// The sha256 of what arrived.
        actual: Digest,
    },
    /// Reading or writing the store failed (a full disk, a broken file system).
    #[error("{operation}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

fn io(operation: &'static str) -> impl FnOnce(std::io::Error) -> BlobError {
    move |source| BlobError::Io { operation, source }
}

/// The path of a blob.
pub fn path_of(root: &Path, digest: &Digest) -> PathBuf {
    root.join(digest.hex())
}

/// The size of a stored blob, if it exists.
pub fn size_of(root: &Path, digest: &Digest) -> Result<Option<u64>, BlobError> {
    match std::fs::metadata(path_of(root, digest)) {
        Ok(metadata) => Ok(Some(metadata.len())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io("reading artifact metadata")(error)),
    }
}

/// Streams `body` into the store. `expected`, when given, must match.
pub async fn put<S, E>(root: &Path, mut body: S, expected: Option<&Digest>) -> Result<BlobInfo, BlobError>
where
    S: Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut random = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).expect("system random source");
    let temporary = root.join(format!(".upload-{}", drover_protocol::hex::encode(&random)));
    let result = async {
        let mut file = tokio::fs::File::create(&temporary)
            .await
            .map_err(io("creating upload file"))?;
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|error| BlobError::UploadInterrupted {
                detail: error.to_string(),
            })?;
            size += chunk.len() as u64;
            if size > MAX_ARTIFACT_BYTES {
                return Err(BlobError::TooLarge);
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io("writing upload file"))?;
        }
        file.sync_all().await.map_err(io("syncing upload file"))?;
        let digest = Digest::from_sha256(hasher.finish().as_ref());
        if let Some(expected) = expected
            && expected != &digest
        {
            return Err(BlobError::DigestMismatch {
                expected: expected.clone(),
                actual: digest,
            });
        }
        tokio::fs::rename(&temporary, path_of(root, &digest))
            .await
            .map_err(io("storing artifact"))?;
        tokio::fs::File::open(root)
            .await
            .map_err(io("opening artifact store"))?
            .sync_all()
            .await
            .map_err(io("syncing artifact store"))?;
        Ok(BlobInfo { digest, size })
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&temporary).await;
    }
    result
}

/// A parsed `Range: bytes=START-END` header (one range; END inclusive and optional).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
}

/// Resolves a Range header against a blob of `size` bytes: `Ok(None)` for no header,
/// `Err` (416) for a range past the end or one that cannot be parsed.
pub fn resolve_range(header: Option<&str>, size: u64) -> Result<Option<ByteRange>, BlobError> {
    let Some(header) = header else {
        return Ok(None);
    };
    let unsatisfiable = || BlobError::RangeNotSatisfiable {
        header: header.to_owned(),
        size,
    };
    let spec = header.strip_prefix("bytes=").ok_or_else(unsatisfiable)?;
    let (start, end) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let range = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let length: u64 = suffix.parse().map_err(|_| unsatisfiable())?;
            if length == 0 || size == 0 {
                return Err(unsatisfiable());
            }
            ByteRange {
                start: size.saturating_sub(length),
                end: size - 1,
            }
        }
        (start, end) => {
            let start: u64 = start.parse().map_err(|_| unsatisfiable())?;
            let end: u64 = if end.is_empty() {
                size.saturating_sub(1)
            } else {
                end.parse().map_err(|_| unsatisfiable())?
            };
            ByteRange {
                start,
                end: end.min(size.saturating_sub(1)),
            }
        }
    };
    if range.start >= size || range.start > range.end {
        return Err(unsatisfiable());
    }
    Ok(Some(range))
}

/// How much of a blob is read per chunk of a download.
const DOWNLOAD_CHUNK: usize = 256 * 1024;

/// A stored blob opened for a download: the whole of it, or the one range asked for.
#[derive(Debug)]
pub struct Download {
    /// The blob's size.
    pub size: u64,
    /// The range sent, when a `Range` header asked for one (206); `None`: all of it (200).
    pub range: Option<ByteRange>,
    /// How many bytes [`Download::into_stream`] yields (the `Content-Length`).
    pub length: u64,
    file: tokio::io::Take<tokio::fs::File>,
}

impl Download {
    /// The `Content-Range` value of a range download (`bytes 2-4/10`).
    pub fn content_range(&self) -> Option<String> {
        self.range
            .map(|range| format!("bytes {}-{}/{}", range.start, range.end, self.size))
    }

    /// The bytes, [`Download::length`] of them, read as they are sent.
    pub fn into_stream(self) -> tokio_util::io::ReaderStream<tokio::io::Take<tokio::fs::File>> {
        tokio_util::io::ReaderStream::with_capacity(self.file, DOWNLOAD_CHUNK)
    }
}

/// Opens blob `digest` for a download of what `range_header` (a `Range` value) asks
/// for: [`BlobError::NotFound`] when there is none, [`BlobError::RangeNotSatisfiable`]
/// for a range it cannot serve. The file stays open while it streams; blobs are only
/// renamed into place whole (a second upload of one replaces it with the same bytes),
/// so a download never sees part of one.
pub async fn open(root: &Path, digest: &Digest, range_header: Option<&str>) -> Result<Download, BlobError> {
    let mut file = match tokio::fs::File::open(path_of(root, digest)).await {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(BlobError::NotFound { digest: digest.clone() });
        }
        Err(source) => return Err(io("opening artifact")(source)),
    };
    let size = file.metadata().await.map_err(io("reading artifact"))?.len();
    let range = resolve_range(range_header, size)?;
    let (start, length) = match range {
        Some(range) => (range.start, range.end - range.start + 1),
        None => (0, size),
    };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(io("seeking artifact"))?;
    Ok(Download {
        size,
        range,
        length,
        file: file.take(length),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store holding one blob of `bytes`, removed on drop.
    struct TestStore {
        root: PathBuf,
        digest: Digest,
    }

    impl TestStore {
        fn with(bytes: &[u8]) -> TestStore {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos());
            let root = std::env::temp_dir().join(format!("drover-blobs-{}-{nanos}", std::process::id()));
            std::fs::create_dir(&root).expect("store directory");
            let digest = Digest::from_sha256(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
            std::fs::write(path_of(&root, &digest), bytes).expect("blob");
            TestStore { root, digest }
        }

        /// Status-like summary of a download: (range, length, content-range, bytes).
        async fn download(
            &self,
            range: Option<&str>,
        ) -> Result<(Option<ByteRange>, u64, Option<String>, Vec<u8>), BlobError> {
            let download = open(&self.root, &self.digest, range).await?;
            assert_eq!(download.size, 10);
            let (range, length, content_range) = (download.range, download.length, download.content_range());
            let mut bytes = Vec::new();
            let mut stream = download.into_stream();
            while let Some(chunk) = stream.next().await {
                bytes.extend_from_slice(&chunk.expect("chunk"));
            }
            assert_eq!(bytes.len() as u64, length, "Content-Length is what is sent");
            Ok((range, length, content_range, bytes))
        }
    }

    impl Drop for TestStore {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    #[tokio::test]
    async fn open_serves_the_whole_blob_or_the_range_asked_for() {
        let store = TestStore::with(b"0123456789");
        assert_eq!(
            store.download(None).await.expect("whole"),
            (None, 10, None, b"0123456789".to_vec())
        );
        assert_eq!(
            store.download(Some("bytes=2-4")).await.expect("middle"),
            (
                Some(ByteRange { start: 2, end: 4 }),
                3,
                Some("bytes 2-4/10".to_owned()),
                b"234".to_vec()
            )
        );
        assert_eq!(
            store.download(Some("bytes=7-")).await.expect("resume"),
            (
                Some(ByteRange { start: 7, end: 9 }),
                3,
                Some("bytes 7-9/10".to_owned()),
                b"789".to_vec()
            )
        );
        assert_eq!(
            store.download(Some("bytes=-2")).await.expect("suffix"),
            (
                Some(ByteRange { start: 8, end: 9 }),
                2,
                Some("bytes 8-9/10".to_owned()),
                b"89".to_vec()
            )
        );
        assert_eq!(
            store.download(Some("bytes=9-100")).await.expect("past the end, cut"),
            (
                Some(ByteRange { start: 9, end: 9 }),
                1,
                Some("bytes 9-9/10".to_owned()),
                b"9".to_vec()
            )
        );
    }

    #[tokio::test]
    async fn open_refuses_a_range_past_the_end_and_a_missing_blob() {
        let store = TestStore::with(b"0123456789");
        match store.download(Some("bytes=10-")).await {
            Err(BlobError::RangeNotSatisfiable { header, size }) => {
                assert_eq!((header.as_str(), size), ("bytes=10-", 10));
            }
            other => panic!("expected 416, got {other:?}"),
        }
        let missing = Digest::from_sha256(&[7; 32]);
        match open(&store.root, &missing, None).await {
            Err(BlobError::NotFound { digest }) => assert_eq!(digest, missing),
            other => panic!("expected not found, got {other:?}"),
        }
        assert_eq!(
            BlobError::NotFound {
                digest: missing.clone()
            }
            .to_string(),
            format!("no artifact {missing}"),
            "the message the artifact endpoint always gave"
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(resolve_range(None, 10).ok(), Some(None));
        assert_eq!(
            resolve_range(Some("bytes=2-4"), 10).ok(),
            Some(Some(ByteRange { start: 2, end: 4 }))
        );
        assert_eq!(
            resolve_range(Some("bytes=5-"), 10).ok(),
            Some(Some(ByteRange { start: 5, end: 9 }))
        );
        assert_eq!(
            resolve_range(Some("bytes=-3"), 10).ok(),
            Some(Some(ByteRange { start: 7, end: 9 }))
        );
        assert_eq!(
            resolve_range(Some("bytes=8-100"), 10).ok(),
            Some(Some(ByteRange { start: 8, end: 9 }))
        );
        for bad in [
            "bytes=10-",
            "bytes=11-12",
            "bytes=4-2",
            "items=1-2",
            "bytes=a-b",
            "bytes=-0",
        ] {
            assert!(
                matches!(resolve_range(Some(bad), 10), Err(BlobError::RangeNotSatisfiable { .. })),
                "{bad}"
            );
        }
    }
}
