//! The content-addressed artifact store: `blobs/sha256/<hex>`. Uploads stream to a
//! temporary file while their sha256 is computed, are synced, and are renamed into place
//! only when complete (and, when the client said which digest to expect, when it
//! matches). A truncated or wrong upload leaves nothing behind.

use std::path::{Path, PathBuf};

use drover_protocol::Digest;
use drover_protocol::api::BlobInfo;
use futures_util::{Stream, StreamExt as _};
use tokio::io::AsyncWriteExt as _;

use crate::server::service::ServiceError;

pub use drover_protocol::api::MAX_ARTIFACT_BYTES;

fn io(operation: &'static str) -> impl FnOnce(std::io::Error) -> ServiceError {
    move |source| ServiceError::Io { operation, source }
}

/// The path of a blob.
pub fn path_of(root: &Path, digest: &Digest) -> PathBuf {
    root.join(digest.hex())
}

/// The size of a stored blob, if it exists.
pub fn size_of(root: &Path, digest: &Digest) -> Result<Option<u64>, ServiceError> {
    match std::fs::metadata(path_of(root, digest)) {
        Ok(metadata) => Ok(Some(metadata.len())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io("reading artifact metadata")(error)),
    }
}

/// Streams `body` into the store. `expected`, when given, must match.
pub async fn put<S, E>(root: &Path, mut body: S, expected: Option<&Digest>) -> Result<BlobInfo, ServiceError>
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
            let chunk = chunk.map_err(|error| {
                ServiceError::BadRequest("upload_interrupted", format!("the upload was interrupted: {error}"))
            })?;
            size += chunk.len() as u64;
            if size > MAX_ARTIFACT_BYTES {
                return Err(ServiceError::TooLarge(
                    "artifact_too_large",
                    format!("artifacts are limited to {MAX_ARTIFACT_BYTES} bytes"),
                ));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io("writing upload file"))?;
        }
        file.sync_all().await.map_err(io("syncing upload file"))?;
        let digest = Digest::from_sha256(hasher.finish().as_ref());
        if let Some(expected) = expected
            && expected != &digest
        {
            return Err(ServiceError::BadRequest(
                "digest_mismatch",
                format!("the upload's digest is {digest}, not the expected {expected}: truncated or wrong file"),
            ));
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
pub fn resolve_range(header: Option<&str>, size: u64) -> Result<Option<ByteRange>, ServiceError> {
    let Some(header) = header else {
        return Ok(None);
    };
    let unsatisfiable = || ServiceError::RangeNotSatisfiable {
        message: format!("range {header:?} is not satisfiable for an artifact of {size} bytes"),
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

#[cfg(test)]
mod tests {
    use super::*;

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
                matches!(
                    resolve_range(Some(bad), 10),
                    Err(ServiceError::RangeNotSatisfiable { .. })
                ),
                "{bad}"
            );
        }
    }
}
