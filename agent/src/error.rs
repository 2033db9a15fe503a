//! The agent's errors and the exit code each maps to.

use std::path::PathBuf;

use drover_protocol::Rejection;
use thiserror::Error;

/// Exit codes of `drover-agent`.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The operation failed, or a document was rejected.
    pub const FAILURE: u8 = 1;
    /// Bad command line (clap uses the same code).
    pub const USAGE: u8 = 2;
    /// Bad configuration (sysexits EX_USAGE, as systemd units expect).
    pub const CONFIG: u8 = 64;
}

/// Everything that can go wrong in a `drover-agent` command.
#[derive(Debug, Error)]
pub enum Error {
    /// The trust document could not be loaded.
    #[error("{path}: {rejection}")]
    Trust { path: PathBuf, rejection: Rejection },
    /// The manifest was rejected.
    #[error("{0}")]
    Manifest(Rejection),
    /// Reading a file failed.
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Trust { .. } | Error::Manifest(_) | Error::Io { .. } => exit::FAILURE,
        }
    }
}
