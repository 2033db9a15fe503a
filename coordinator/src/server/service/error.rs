//! [`ServiceError`]: why an operation failed, with a stable code for the API.

use crate::server::blobs::BlobError;
use crate::server::store::StoreError;

/// Why an operation failed; the HTTP layer maps each to a status in one `match`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed or invalid.
    #[error("{1}")]
    BadRequest(&'static str, String),
    /// Missing or wrong credentials.
    #[error("{1}")]
    Unauthorized(&'static str, String),
    /// Authenticated, but not allowed to touch this resource.
    #[error("{1}")]
    Forbidden(&'static str, String),
    /// Something named does not exist.
    #[error("{1}")]
    NotFound(&'static str, String),
    /// Conflicts with existing state.
    #[error("{1}")]
    Conflict(&'static str, String),
    /// A token that was valid once but is not any more.
    #[error("{1}")]
    Gone(&'static str, String),
    /// A body over its limit.
    #[error("{1}")]
    TooLarge(&'static str, String),
    /// Temporarily overloaded; the client should retry later.
    #[error("{1}")]
    Unavailable(&'static str, String),
    /// A Range past the end of an artifact.
    #[error("{message}")]
    RangeNotSatisfiable { message: String, size: u64 },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Local I/O failed (artifact store).
    #[error("{operation}: {source}")]
    Io {
        operation: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The artifact store's errors with their API codes (the store knows nothing of them).
impl From<BlobError> for ServiceError {
    fn from(error: BlobError) -> ServiceError {
        let message = error.to_string();
        match error {
            BlobError::NotFound { .. } => ServiceError::NotFound("artifact_not_found", message),
            BlobError::RangeNotSatisfiable { size, .. } => ServiceError::RangeNotSatisfiable { message, size },
            BlobError::UploadInterrupted { .. } => ServiceError::BadRequest("upload_interrupted", message),
            BlobError::TooLarge => ServiceError::TooLarge("artifact_too_large", message),
            BlobError::DigestMismatch { .. } => ServiceError::BadRequest("digest_mismatch", message),
            BlobError::Io { operation, source } => ServiceError::Io { operation, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ServiceError;

    #[test]
    fn the_message_is_what_the_operator_reads() {
        let error = ServiceError::Conflict("group_in_use", "group eu has pins or holds".into());
        assert_eq!(error.to_string(), "group eu has pins or holds");
        let error = ServiceError::Io {
            operation: "reading an uploaded artifact",
            source: std::io::Error::other("disk gone"),
        };
        assert_eq!(error.to_string(), "reading an uploaded artifact: disk gone");
        let error = ServiceError::RangeNotSatisfiable {
            message: "range starts past the end".into(),
            size: 10,
        };
        assert_eq!(error.to_string(), "range starts past the end");
    }
}
