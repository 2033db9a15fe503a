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
    /// The configuration is invalid (every problem listed).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigErrors),
    /// Enrollment failed.
    #[error("join failed: {0}")]
    Join(String),
    /// A key or state file could not be read or written.
    #[error(transparent)]
    Key(#[from] drover_protocol::KeyError),
    /// The host has not joined yet.
    #[error(
        "this host has not joined a coordinator yet ({0} has no identity); run the `drover-agent join ...` line printed by `drover token create`"
    )]
    NotJoined(PathBuf),
    /// The agent's own state cannot be used (unreadable record, unusable identity, no systemd).
    #[error("{0}")]
    State(String),
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
            Error::Config(_) => exit::CONFIG,
            Error::Trust { .. }
            | Error::Manifest(_)
            | Error::Io { .. }
            | Error::Join(_)
            | Error::Key(_)
            | Error::NotJoined(_)
            | Error::State(_) => exit::FAILURE,
        }
    }
}

/// An error with its sources, "outer: inner: innermost" (reqwest hides the cause, e.g.
/// the TLS failure, one or two levels down).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
