//! The coordinator's errors and the exit code each maps to.

use std::path::PathBuf;

use drover_protocol::{KeyError, Rejection};
use thiserror::Error;

/// Exit codes of `drover` (SPEC.md §6).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The operation failed.
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap uses the same code).
    pub const USAGE: u8 = 2;
    /// Something named does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// Refused because of existing state (e.g. keys already exist).
    pub const REFUSED: u8 = 4;
}

/// Everything that can go wrong in a `drover` command.
#[derive(Debug, Error)]
pub enum Error {
    /// A key file could not be made or read.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Refused to overwrite existing keys.
    #[error(
        "{path} already holds drover keys ({existing}); refusing to overwrite them. Use another --dir, or move the old keys away first"
    )]
    KeysExist { path: PathBuf, existing: String },
    /// A trust document in a key directory does not verify.
    #[error("{path}: {rejection}")]
    Trust { path: PathBuf, rejection: Rejection },
    /// A file that should exist does not.
    #[error("{path}: not found{hint}")]
    NotFound { path: PathBuf, hint: &'static str },
    /// Reading or writing a file or stream failed.
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Input that is not what the command needs.
    #[error("{0}")]
    Input(String),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Key(KeyError::AlreadyExists { .. }) | Error::KeysExist { .. } => exit::REFUSED,
            Error::NotFound { .. } => exit::NOT_FOUND,
            Error::Input(_) => exit::USAGE,
            Error::Key(_) | Error::Trust { .. } | Error::Io { .. } => exit::FAILURE,
        }
    }
}
