//! How the operator CLI reaches the coordinator's admin API: where the address, the admin
//! token and the CA come from, and an HTTPS client that trusts exactly that CA.
//!
//! On the coordinator's own machine everything is found in its data directory (`address`,
//! `admin.token`, `ca.pem`); from elsewhere, `DROVER_ADDR`, `DROVER_TOKEN` and `DROVER_CA`
//! name them. Certificate verification is never switched off: a coordinator whose
//! certificate the CA did not sign is refused.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use drover_protocol::api::{BlobInfo, ErrorBody};
use drover_protocol::keyfile::read_private_file;
use drover_protocol::{Digest, KeyError};
use reqwest::{Method, Response, StatusCode};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::datadir::DataDir;
use crate::error::{ApiFailure, Error};
use crate::text::{error_chain, printable};

/// The coordinator's URL, overriding `<data-dir>/address`.
pub const ADDR_ENV: &str = "DROVER_ADDR";
/// The admin token, overriding `<data-dir>/admin.token`.
pub const TOKEN_ENV: &str = "DROVER_TOKEN";
/// A PEM file with the coordinator's CA, overriding `<data-dir>/ca.pem`.
pub const CA_ENV: &str = "DROVER_CA";

/// How long connecting may take before the coordinator counts as unreachable.
const CONNECT_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// How long one JSON request may take (uploads and downloads have no overall limit).
const REQUEST_TIMEOUT: StdDuration = StdDuration::from_secs(60);
/// Largest CA file read.
const MAX_CA_BYTES: u64 = 1024 * 1024;
/// A read is sent again, after these pauses, when the connection closed before any answer
/// came: a coordinator shedding connections that have not shown a token yet (its budget
/// for them fills while a whole fleet reconnects after a restart) closes them without one.
/// Reads change nothing, so sending one again is safe; changes are never resent (the
/// first may have been applied), and a refused connection, a TLS failure or a timeout is
/// reported at once.
const READ_RETRY_PAUSES: [StdDuration; 3] = [
    StdDuration::from_millis(200),
    StdDuration::from_millis(500),
    StdDuration::from_secs(1),
];

/// Where a setting came from, so an error can say which one to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// An environment variable.
    Env(&'static str),
    /// A file (in the data directory, or named by an environment variable).
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Env(name) => f.write_str(name),
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// What the CLI needs to talk to a coordinator.
#[derive(Clone)]
pub struct Credentials {
    /// The base URL, `https://HOST:PORT`, without a trailing `/`.
    pub address: String,
    /// Where the address came from.
    pub address_origin: Origin,
    /// The admin bearer token.
    pub token: String,
    /// Where the token came from.
    pub token_origin: Origin,
    /// The CA certificate(s), PEM.
    pub ca_pem: Vec<u8>,
    /// Where the CA came from.
    pub ca_origin: Origin,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret: never in logs or panics.
        f.debug_struct("Credentials")
            .field("address", &self.address)
            .field("address_origin", &self.address_origin)
            .field("token", &"<redacted>")
            .field("token_origin", &self.token_origin)
            .field("ca_origin", &self.ca_origin)
            .finish()
    }
}

const DATA_DIR_HINT: &str =
    "Run this on the coordinator's machine with --data-dir (or DROVER_DATA_DIR) naming its data directory, or set";

impl Credentials {
    /// Finds the address, token and CA: each from its environment variable when set
    /// (looked up with `env`), else from the data directory.
    pub fn resolve(data_dir: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Credentials, Error> {
        let data = DataDir::new(data_dir);
        let set = |name: &str| {
            env(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };

        let (address, address_origin) = match set(ADDR_ENV) {
            Some(address) => (address, Origin::Env(ADDR_ENV)),
            None => {
                let path = data.address();
                let text = std::fs::read_to_string(&path).map_err(|error| Error::Credentials {
                    origin: path.display().to_string(),
                    problem: describe_io(&error),
                    hint: format!("{DATA_DIR_HINT} {ADDR_ENV}=https://HOST:PORT"),
                })?;
                (text.trim().to_owned(), Origin::File(path))
            }
        };
        let address = check_address(&address, &address_origin)?;

        let (token, token_origin) = match set(TOKEN_ENV) {
            Some(token) => (token, Origin::Env(TOKEN_ENV)),
            None => {
                let path = data.admin_token();
                let token = read_private_file(&path).map_err(|error| match error {
                    KeyError::Io { source, .. } => Error::Credentials {
                        origin: path.display().to_string(),
                        problem: format!("cannot read the admin token: {}", describe_io(&source)),
                        hint: format!("{DATA_DIR_HINT} {TOKEN_ENV} to the content of the coordinator's admin.token"),
                    },
                    // Too open (with its chmod), or not a regular file: the key file's own message.
                    other => Error::Key(other),
                })?;
                let token = String::from_utf8(token).map_err(|_| Error::Credentials {
                    origin: path.display().to_string(),
                    problem: "the admin token is not UTF-8 text".into(),
                    hint: "It is written by `drover serve`; restore it from a backup or set DROVER_TOKEN".into(),
                })?;
                (token.trim().to_owned(), Origin::File(path))
            }
        };
        if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(Error::Credentials {
                origin: token_origin.to_string(),
                problem: "the admin token is empty or holds spaces or control characters".into(),
                hint: format!("Set {TOKEN_ENV} to the content of the coordinator's admin.token"),
            });
        }

        let ca_path = set(CA_ENV).map_or_else(|| data.ca_cert(), PathBuf::from);
        let ca_origin = Origin::File(ca_path.clone());
        let ca_pem = read_bounded(&ca_path).map_err(|error| Error::Credentials {
            origin: ca_path.display().to_string(),
            problem: format!("cannot read the coordinator's CA certificate: {}", describe_io(&error)),
            hint: format!("{DATA_DIR_HINT} {CA_ENV} to a copy of the coordinator's ca.pem"),
        })?;
        Ok(Credentials {
            address,
            address_origin,
            token,
            token_origin,
            ca_pem,
            ca_origin,
        })
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_CA_BYTES).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn describe_io(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "does not exist".into(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (the data directory belongs to the user that runs `drover serve`: use sudo, or that user)"
                .into()
        }
        _ => error.to_string(),
    }
}

/// Checks that an address is an `https://` URL and returns it without a trailing `/`.
fn check_address(address: &str, origin: &Origin) -> Result<String, Error> {
    let trimmed = address.trim_end_matches('/');
    let authority = trimmed.strip_prefix("https://").unwrap_or_default();
    if authority.is_empty() || authority.contains(['/', '?', '#']) || trimmed.chars().any(char::is_whitespace) {
        return Err(Error::Credentials {
            origin: origin.to_string(),
            problem: format!(
                "{:?} is not the coordinator's address",
                address.chars().take(200).collect::<String>()
            ),
            hint: format!(
                "Use https://HOST:PORT (the admin token only ever travels over TLS), e.g. {ADDR_ENV}=https://deploy.example.com:8443"
            ),
        });
    }
    Ok(trimmed.to_owned())
}

/// A TLS client configuration that trusts exactly the CA certificates in `ca_pem`.
pub fn tls_config(ca_pem: &[u8], origin: &Origin) -> Result<rustls::ClientConfig, Error> {
    let problem = |problem: String| Error::Credentials {
        origin: origin.to_string(),
        problem,
        hint: format!("{CA_ENV} must name the coordinator's ca.pem (a PEM certificate)"),
    };
    let certificates = CertificateDer::pem_slice_iter(ca_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| problem(format!("not a PEM certificate: {error}")))?;
    if certificates.is_empty() {
        return Err(problem("no PEM certificate in it".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|error| problem(format!("not a usable CA certificate: {error}")))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| problem(format!("TLS versions: {error}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An authenticated client of one coordinator's admin API.
#[derive(Debug)]
pub struct AdminClient {
    http: reqwest::Client,
    credentials: Credentials,
}

impl AdminClient {
    /// A client for the coordinator the environment and `data_dir` name.
    pub fn from_env(data_dir: &Path) -> Result<AdminClient, Error> {
        let credentials = Credentials::resolve(data_dir, &|name| std::env::var(name).ok())?;
        AdminClient::new(credentials)
    }

    /// A client with these credentials.
    pub fn new(credentials: Credentials) -> Result<AdminClient, Error> {
        let tls = tls_config(&credentials.ca_pem, &credentials.ca_origin)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            // The admin API never redirects; following one could carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("drover/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| Error::Http {
                operation: "setting up the HTTPS client for",
                url: credentials.address.clone(),
                detail: error_chain(&error),
            })?;
        Ok(AdminClient { http, credentials })
    }

    /// The coordinator's base URL.
    pub fn address(&self) -> &str {
        &self.credentials.address
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.credentials.address)
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.credentials.token)
    }

    /// `GET path`, decoding the JSON answer.
    /// A connection closed before the answer is tried again ([`READ_RETRY_PAUSES`]).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let mut pauses = READ_RETRY_PAUSES.iter();
        let response = loop {
            let sent = self.request(Method::GET, path).timeout(REQUEST_TIMEOUT).send().await;
            match (sent, pauses.next()) {
                (Err(error), Some(pause)) if closed_without_answer(&error) => {
                    tracing::debug!(path, error = %error_chain(&error), "the connection closed before an answer; asking again");
                    tokio::time::sleep(*pause).await;
                }
                (sent, _) => break self.checked(sent).await?,
            }
        };
        self.decode(path, response).await
    }

    /// `method path` with a JSON body, decoding the JSON answer.
    pub async fn send_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        let response = self
            .send(self.request(method, path).json(body).timeout(REQUEST_TIMEOUT))
            .await?;
        self.decode(path, response).await
    }

    /// `DELETE path` without a body; the answer carries none either.
    pub async fn delete(&self, path: &str) -> Result<(), Error> {
        self.send(self.request(Method::DELETE, path).timeout(REQUEST_TIMEOUT))
            .await
            .map(drop)
    }

    /// Streams an artifact of `size` bytes to the content store, naming the digest it
    /// must have so that a truncated upload is refused.
    pub async fn upload_artifact(&self, digest: &Digest, size: u64, body: reqwest::Body) -> Result<BlobInfo, Error> {
        let path = "/v1/admin/artifacts";
        let request = self
            .request(Method::POST, path)
            .header("X-Drover-Digest", digest.as_str())
            .header(reqwest::header::CONTENT_LENGTH, size)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        let response = self.send(request).await?;
        self.decode(path, response).await
    }

    /// Sends a request; a non-2xx answer becomes [`Error::Api`].
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, Error> {
        self.checked(request.send().await).await
    }

    /// A sent request's outcome; a non-2xx answer becomes [`Error::Api`].
    async fn checked(&self, sent: reqwest::Result<Response>) -> Result<Response, Error> {
        let response = sent.map_err(|error| self.transport_error(&error))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.api_error(response).await)
    }

    async fn decode<T: DeserializeOwned>(&self, path: &str, response: Response) -> Result<T, Error> {
        let bytes = response.bytes().await.map_err(|error| Error::Http {
            operation: "reading the answer of",
            url: self.url(path),
            detail: error_chain(&error),
        })?;
        serde_json::from_slice(&bytes).map_err(|error| Error::Http {
            operation: "decoding the answer of",
            url: self.url(path),
            detail: format!("{error} (is the coordinator a different version of drover?)"),
        })
    }

    async fn api_error(&self, response: Response) -> Error {
        let status = response.status();
        let url = response.url().to_string();
        let bytes = response.bytes().await.unwrap_or_default();
        let kind = ApiFailure::of(status.as_u16());
        let (code, mut message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => (body.code, printable(&body.error)),
            Err(_) => (
                String::new(),
                format!(
                    "{url} answered HTTP {status}: {}",
                    printable(&String::from_utf8_lossy(&bytes[..bytes.len().min(300)]))
                ),
            ),
        };
        if status == StatusCode::UNAUTHORIZED {
            let hint = match code.as_str() {
                // A token that was valid once: the server's message says what to do.
                "admin_token_revoked" | "admin_token_expired" => String::new(),
                _ => format!(
                    "; use the coordinator's admin.token (via --data-dir) or a token from drover admin-token create, as {TOKEN_ENV}"
                ),
            };
            message.push_str(&format!(
                " (the token came from {}{hint})",
                self.credentials.token_origin
            ));
        }
        Error::Api {
            status: status.as_u16(),
            kind,
            code,
            message,
        }
    }

    fn transport_error(&self, error: &reqwest::Error) -> Error {
        let detail = error_chain(error);
        if is_tls_failure(error) {
            return Error::Tls {
                address: self.credentials.address.clone(),
                ca: self.credentials.ca_origin.to_string(),
                detail,
            };
        }
        if error.is_connect() {
            return Error::Connect {
                address: self.credentials.address.clone(),
                origin: self.credentials.address_origin.to_string(),
                detail,
            };
        }
        let detail = if error.is_timeout() {
            format!("no answer in time: {detail}")
        } else {
            detail
        };
        Error::Http {
            operation: "talking to the coordinator at",
            url: self.credentials.address.clone(),
            detail,
        }
    }
}

/// Whether the coordinator closed the connection before answering a request it was sent:
/// not a refused connection, a TLS failure or a timeout, which asking again would not mend
/// or would only prolong.
fn closed_without_answer(error: &reqwest::Error) -> bool {
    error.is_request() && !error.is_connect() && !error.is_timeout() && !is_tls_failure(error)
}

/// Whether a TLS error (bad certificate, failed handshake) is among an error's causes.
fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if current.is::<rustls::Error>() {
            return true;
        }
        // io::Error's source() skips the error it wraps (which may be another io::Error
        // around rustls's): step into it directly.
        cause = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_be_https() {
        let origin = Origin::Env(ADDR_ENV);
        assert_eq!(
            check_address("https://10.0.0.5:8443/", &origin).ok().as_deref(),
            Some("https://10.0.0.5:8443")
        );
        for bad in [
            "http://10.0.0.5:8443",
            "10.0.0.5:8443",
            "https://",
            "https://a b",
            "https://x/y",
        ] {
            assert!(check_address(bad, &origin).is_err(), "{bad}");
        }
    }

    #[test]
    fn environment_wins_over_the_data_directory() {
        // Any CA certificate will do: the CLI only loads it into its TLS roots.
        let ca = rcgen::generate_simple_self_signed(vec!["drover-test-ca".to_owned()]).expect("ca");
        let directory = std::env::temp_dir().join(format!("drover-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&directory).expect("scratch directory");
        let ca_path = directory.join("elsewhere.pem");
        std::fs::write(&ca_path, ca.cert.pem()).expect("write ca");
        let ca_text = ca_path.display().to_string();
        let env = |name: &str| match name {
            ADDR_ENV => Some("https://deploy.example.com:8443/".to_owned()),
            TOKEN_ENV => Some(" secret\n".to_owned()),
            CA_ENV => Some(ca_text.clone()),
            _ => None,
        };
        // The data directory does not exist: nothing is read from it.
        let credentials = Credentials::resolve(&directory.join("missing"), &env).expect("credentials");
        assert_eq!(credentials.address, "https://deploy.example.com:8443");
        assert_eq!(credentials.token, "secret");
        assert_eq!(credentials.ca_origin, Origin::File(ca_path.clone()));
        assert!(!format!("{credentials:?}").contains("secret"));
        assert!(tls_config(&credentials.ca_pem, &credentials.ca_origin).is_ok());
        assert!(tls_config(b"not a certificate", &credentials.ca_origin).is_err());

        let missing = Credentials::resolve(&directory.join("missing"), &|_| None).expect_err("no address");
        let message = missing.to_string();
        assert!(message.contains("address") && message.contains(ADDR_ENV), "{message}");
        let _ = std::fs::remove_dir_all(&directory);
    }
}
