//! [`ServiceError`]: why an operation failed, in the service's own terms, with a stable
//! code for the API. Which HTTP status each variant becomes is decided in one `match` in
//! the HTTP layer; nothing here knows of HTTP.

use crate::server::blobs::BlobError;
use crate::server::store::StoreError;

/// Why an operation failed. Each variant names what the service refused (or what broke),
/// not how a transport reports it; the `&'static str` is the stable `ErrorBody.code`
/// clients match on, the `String` the message the operator reads.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request carries something the service does not accept: a malformed name,
    /// value or body, a spec an agent would refuse, an artifact whose digest differs.
    #[error("{1}")]
    Invalid(&'static str, String),
    /// The caller did not prove who it is: no, malformed or unknown credentials (admin
    /// token, join token, client certificate).
    #[error("{1}")]
    Unauthenticated(&'static str, String),
    /// The caller is known but may not do this: a removed host, a replaced certificate,
    /// a host asking about another.
    #[error("{1}")]
    NotAllowed(&'static str, String),
    /// Something the request names does not exist (host, app, release, rollout, route,
    /// artifact).
    #[error("{1}")]
    Unknown(&'static str, String),
    /// The request contradicts the state it would change: a name already taken, a
    /// group still in use, a rollout already running.
    #[error("{1}")]
    Conflicting(&'static str, String),
    /// A token that was valid once but is not any more (expired or used up).
    #[error("{1}")]
    Expired(&'static str, String),
    /// Something over its limit (an artifact, a spec, a report).
    #[error("{1}")]
    TooLarge(&'static str, String),
    /// The service is at a limit that passes (too many waiting clients, a full
    /// queue); the client should retry later.
    #[error("{1}")]
    Busy(&'static str, String),
    /// A requested range starts past the end of an artifact of `size` bytes.
    #[error("{message}")]
    PastEnd { message: String, size: u64 },
    /// The store failed while the service was `operation` ("recording a report").
    /// Built only through `During::during`, so every store call names its operation.
    #[error("{operation}: {source}")]
    Store {
        operation: &'static str,
        #[source]
        source: StoreError,
    },
    /// Local I/O failed (artifact store).
    #[error("{operation}: {source}")]
    Io {
        operation: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Names the operation a store call was part of, so that its failure says what the
/// coordinator was doing (there is deliberately no `From<StoreError>`: a bare `?` on a
/// store result does not compile).
pub(crate) trait During<T> {
    /// `operation` is a gerund phrase: "recording a report", "loading the fleet".
    fn during(self, operation: &'static str) -> Result<T, ServiceError>;
}

impl<T> During<T> for Result<T, StoreError> {
    fn during(self, operation: &'static str) -> Result<T, ServiceError> {
        self.map_err(|source| ServiceError::Store { operation, source })
    }
}

/// The artifact store's errors with their API codes (the store knows nothing of them).
impl From<BlobError> for ServiceError {
    fn from(error: BlobError) -> ServiceError {
        let message = error.to_string();
        match error {
            BlobError::NotFound { .. } => ServiceError::Unknown("artifact_not_found", message),
            BlobError::RangeNotSatisfiable { size, .. } => ServiceError::PastEnd { message, size },
            BlobError::UploadInterrupted { .. } => ServiceError::Invalid("upload_interrupted", message),
            BlobError::TooLarge => ServiceError::TooLarge("artifact_too_large", message),
            BlobError::DigestMismatch { .. } => ServiceError::Invalid("digest_mismatch", message),
            BlobError::Io { operation, source } => ServiceError::Io { operation, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{During as _, ServiceError};
    use crate::server::store::StoreError;

    #[test]
    fn the_message_is_what_the_operator_reads() {
        let error = ServiceError::Conflicting("group_in_use", "group eu has pins or holds".into());
        assert_eq!(error.to_string(), "group eu has pins or holds");
        let error = ServiceError::Io {
            operation: "reading an uploaded artifact",
            source: std::io::Error::other("disk gone"),
        };
        assert_eq!(error.to_string(), "reading an uploaded artifact: disk gone");
        let error = ServiceError::PastEnd {
            message: "range starts past the end".into(),
            size: 10,
        };
        assert_eq!(error.to_string(), "range starts past the end");
    }

    #[test]
    fn a_store_failure_names_the_operation_it_interrupted() {
        let failed: Result<(), StoreError> = Err(StoreError::Corrupt {
            what: "host",
            detail: "bad certificate".into(),
        });
        let error = failed.during("recording a report").expect_err("the store failed");
        assert_eq!(
            error.to_string(),
            "recording a report: database holds an unreadable host: bad certificate"
        );
        let ServiceError::Store { operation, source } = &error else {
            panic!("a store failure stays a store failure: {error:?}");
        };
        assert_eq!(*operation, "recording a report");
        assert_eq!(source.to_string(), "database holds an unreadable host: bad certificate");
    }
}
