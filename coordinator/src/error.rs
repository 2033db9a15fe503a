//! The coordinator's errors and the exit code each maps to.

use std::path::PathBuf;

use drover_protocol::{Digest, KeyError, Rejection};
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
    /// `drover serve` could not start: its database, its listening address, its
    /// certificates or the state it loads failed. Not a usage error (exit 1, not 2): the
    /// command line was fine, what it names is not. Made by [`Error::start`].
    #[error("cannot start the coordinator: {step}: {cause}")]
    Start {
        /// What was being done, naming the file or address (`opening the database
        /// /var/lib/drover-coordinator/coordinator.db`).
        step: String,
        /// Why: the whole chain of causes, and what to check when it is known.
        cause: String,
    },
    /// An app spec file (`drover.toml`) that does not parse; `detail` names the line.
    #[error("{path}: {detail}")]
    Spec { path: PathBuf, detail: String },
    /// The CLI could not find or use the address, admin token or CA of the coordinator.
    #[error("{origin}: {problem}. {hint}")]
    Credentials {
        origin: String,
        problem: String,
        hint: String,
    },
    /// No connection to the coordinator (refused, unreachable, DNS).
    #[error(
        "cannot connect to the coordinator at {address} (from {origin}): {detail}. Is `drover serve` running there? Set DROVER_ADDR=https://HOST:PORT for another coordinator, or --data-dir to the data directory of the local one"
    )]
    Connect {
        address: String,
        origin: String,
        detail: String,
    },
    /// The TLS handshake with the coordinator failed (usually: a CA that did not sign its
    /// certificate).
    #[error(
        "TLS with the coordinator at {address} failed: {detail}. The CLI trusts only the CA in {ca}; set DROVER_CA to the coordinator's ca.pem"
    )]
    Tls {
        address: String,
        ca: String,
        detail: String,
    },
    /// The coordinator answered with an error (its JSON `ErrorBody`, or the status when
    /// the body is not one).
    #[error("{message}")]
    Api {
        status: u16,
        kind: ApiFailure,
        code: String,
        message: String,
    },
    /// An HTTP exchange failed after connecting (timeout, broken connection, an answer
    /// that is not what the API promises), or a download from another server failed.
    #[error("{operation} {url}: {detail}")]
    Http {
        operation: &'static str,
        url: String,
        detail: String,
    },
    /// `drover rollout watch` saw the rollout end other than completed.
    #[error("rollout {rollout} of {app} ended {outcome}")]
    RolloutOutcome {
        app: String,
        rollout: String,
        outcome: String,
    },
    /// Resolving `--image` failed: a bad reference or platform, the registry, or what it
    /// holds.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The release exists with another artifact; refused before uploading anything.
    #[error(
        "release {app} {version} already exists with artifact {existing}, not {wanted}; releases are immutable: use a new version"
    )]
    ReleaseExists {
        app: String,
        version: String,
        existing: String,
        wanted: String,
    },
}

impl Error {
    /// A start-up failure of `drover serve`: `step` says what was being done (naming the
    /// file or address), `error` why, with every cause under it; `hint`, when not empty,
    /// what to check.
    pub fn start(step: impl Into<String>, error: &(dyn std::error::Error + 'static), hint: &str) -> Error {
        let mut cause = error_chain(error);
        if !hint.is_empty() {
            cause = format!("{cause}; {hint}");
        }
        Error::Start {
            step: step.into(),
            cause,
        }
    }
}

/// An error and its sources as one line, `outer: inner: innermost`, leaving out a source
/// whose text the line already holds (an error that prints its source itself).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        source = cause.source();
    }
    line
}

/// What an HTTP error status of the admin API means for the operator, one class per
/// exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiFailure {
    /// 400, 413, 416, 422: the request was wrong (bad arguments, bad spec, too large).
    Invalid,
    /// 401, 403: missing or wrong credentials.
    Denied,
    /// 404: something named does not exist.
    NotFound,
    /// 409, 410: refused because of existing state.
    Refused,
    /// Everything else (5xx, unexpected statuses): the operation failed.
    Failed,
}

impl ApiFailure {
    /// The class of an HTTP status code.
    pub fn of(status: u16) -> ApiFailure {
        match status {
            400 | 413 | 416 | 422 => ApiFailure::Invalid,
            401 | 403 => ApiFailure::Denied,
            404 => ApiFailure::NotFound,
            409 | 410 => ApiFailure::Refused,
            0..=399 | 402 | 405..=408 | 411 | 412 | 414 | 415 | 417..=421 | 423..=u16::MAX => ApiFailure::Failed,
        }
    }
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Key(KeyError::AlreadyExists { .. })
            | Error::KeysExist { .. }
            | Error::ReleaseExists { .. }
            | Error::Api {
                kind: ApiFailure::Refused,
                ..
            } => exit::REFUSED,
            Error::NotFound { .. }
            | Error::Image(ImageError::NotFound { .. })
            | Error::Api {
                kind: ApiFailure::NotFound,
                ..
            } => exit::NOT_FOUND,
            Error::Input(_)
            | Error::Spec { .. }
            | Error::Image(ImageError::BadReference { .. } | ImageError::BadPlatform { .. })
            | Error::Api {
                kind: ApiFailure::Invalid,
                ..
            } => exit::USAGE,
            Error::Key(_)
            | Error::Trust { .. }
            | Error::Io { .. }
            | Error::Start { .. }
            | Error::Credentials { .. }
            | Error::Connect { .. }
            | Error::Tls { .. }
            | Error::Http { .. }
            | Error::RolloutOutcome { .. }
            | Error::Image(
                ImageError::Setup { .. }
                | ImageError::Registry { .. }
                | ImageError::Unauthorized { .. }
                | ImageError::DigestMismatch { .. }
                | ImageError::NotAnImage { .. }
                | ImageError::NoPlatform { .. },
            )
            | Error::Api {
                kind: ApiFailure::Denied | ApiFailure::Failed,
                ..
            } => exit::FAILURE,
        }
    }
}

/// What went wrong resolving an image.
#[derive(Debug, Error)]
pub enum ImageError {
    /// `--image REF` is not a reference drover accepts.
    #[error("--image {text}: {problem}")]
    BadReference {
        /// The reference as typed (made printable).
        text: String,
        /// What is wrong and how to write it.
        problem: String,
    },
    /// `--platform` is not `OS/ARCH[/VARIANT]`.
    #[error("--platform {text}: {problem}")]
    BadPlatform {
        /// The platform as typed (made printable).
        text: String,
        /// What is wrong.
        problem: String,
    },
    /// The registry client could not be set up (a CA that is not a certificate).
    #[error("setting up the registry client: {detail}")]
    Setup {
        /// Why.
        detail: String,
    },
    /// Talking to the registry failed: connection, TLS, an HTTP error.
    #[error("{operation} {reference}: {detail}{hint}")]
    Registry {
        /// What was being done.
        operation: &'static str,
        /// The reference or blob concerned.
        reference: String,
        /// The error chain.
        detail: String,
        /// What the operator may have to add.
        hint: &'static str,
    },
    /// The registry wants other credentials.
    #[error("{reference}: the registry refused access ({detail}); {hint}")]
    Unauthorized {
        /// The reference concerned.
        reference: String,
        /// The registry's words.
        detail: String,
        /// What to do.
        hint: &'static str,
    },
    /// The registry does not have the manifest (tag or digest) or the repository.
    #[error("{reference}: not found in the registry ({detail}); check the repository name and the tag or digest")]
    NotFound {
        /// The reference concerned.
        reference: String,
        /// The registry's words.
        detail: String,
    },
    /// Content whose sha256 is not the one asked for.
    #[error(
        "{reference}: the registry sent content with digest {actual}, not {expected}; nothing was created (a broken or tampered registry?)"
    )]
    DigestMismatch {
        /// What was fetched.
        reference: String,
        /// The digest asked for.
        expected: Digest,
        /// The sha256 of what came.
        actual: Digest,
    },
    /// What the registry has is not a container image drover can run.
    #[error("{reference}: {problem}")]
    NotAnImage {
        /// The reference concerned.
        reference: String,
        /// What is wrong with it.
        problem: String,
    },
    /// An image index without an image for the wanted platform.
    #[error(
        "{reference} is an image index with no image for {wanted}; it has {available}. Name one with --platform OS/ARCH[/VARIANT]"
    )]
    NoPlatform {
        /// The index's reference.
        reference: String,
        /// The platform asked for (`linux/amd64`).
        wanted: String,
        /// The platforms it has, for people.
        available: String,
    },
}
