//! [`ServiceError`]: why an operation failed, with a stable code for the API.

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
