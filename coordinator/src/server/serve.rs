//! `drover serve`: prepare the data directory, open the store, start the coordinator,
//! serve HTTPS until told to stop, then drain. While serving, the server certificate is
//! renewed when a third of its lifetime is left (`renew_server_certificate`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use std::sync::Arc;

use drover_protocol::keyfile::write_atomic;
use drover_protocol::{Duration, Timestamp};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::datadir::DataDir;
use crate::error::Error;
use crate::server::service::{Config, Coordinator};
use crate::server::setup::prepare;
use crate::server::store::{Database, Store, StoreError};

/// Arguments of `drover serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Data directory (database, CA, keys, admin token, artifacts).
    #[arg(long, env = "DROVER_DATA_DIR", default_value = crate::datadir::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// The URL hosts use to reach this coordinator; it goes into join commands and
    /// artifact URLs (default: https://<listen address>, 127.0.0.1 for 0.0.0.0).
    #[arg(long)]
    pub public_url: Option<String>,
    /// A key directory made by `drover keys init` (needs manifest.key and trust.json;
    /// root keys can stay offline). Default: <data-dir>/keys, created on first start.
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// How long each signed manifest is valid; manifests are re-signed at half of it.
    #[arg(long, default_value = "24h")]
    pub manifest_ttl: Duration,
    /// Extra DNS names or IP addresses for the server certificate (repeatable).
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
    /// How long each host client certificate is valid (1m to 1095d). Agents renew
    /// theirs over mTLS when a third of it is left, keeping their key; a host that cannot
    /// reach the coordinator until its certificate expires must be re-joined. The CA that
    /// signs them lasts 10 years from the first start.
    #[arg(long, default_value = "365d", value_parser = parse_certificate_validity, value_name = "DURATION")]
    pub host_certificate_validity: Duration,
    /// How long the coordinator's own TLS certificate is valid (1m to 1095d). It is made
    /// at each start and renewed while serving when a third of it is left (written to
    /// <data-dir>/server.pem); clients trust it through the CA.
    #[arg(long, default_value = "365d", value_parser = parse_certificate_validity, value_name = "DURATION")]
    pub server_certificate_validity: Duration,
    /// Keep the state in this PostgreSQL database (postgres://USER:PASSWORD@HOST:PORT/NAME
    /// or postgresql://...; it must exist) instead of SQLite in the data directory, so that
    /// several coordinators can share it. Keys, CA and admin token still come from the
    /// data directory. TLS to PostgreSQL: add ?sslmode=verify-full&sslrootcert=CA.pem
    /// (the server's certificate checked against that CA and its name against HOST;
    /// without sslrootcert, against the system's roots).
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// The OCI registry where `drover release create --artifact FILE` pushes tarballs
    /// when the operator names no --registry: REGISTRY/PREFIX, e.g.
    /// registry.example.com/drover (each app is a repository under it:
    /// registry.example.com/drover/web). The CLI pushes with the operator's own registry
    /// access; hosts fetch by digest with theirs. Needed with --database, where
    /// coordinators share no disk and keep no uploaded tarballs; give every replica the
    /// same value.
    #[arg(long, env = "DROVER_ARTIFACT_REGISTRY", value_name = "REGISTRY/PREFIX", value_parser = parse_artifact_registry)]
    pub artifact_registry: Option<String>,
}

impl ServeArgs {
    /// `--database`, read: a usage error (exit 2) for anything but a PostgreSQL URL, with
    /// the forms accepted and without the password it may hold (clap's own message would
    /// repeat the value as given).
    pub fn database(&self) -> Result<Option<Database>, Error> {
        self.database
            .as_deref()
            .map(Database::from_url)
            .transpose()
            .map_err(Error::Input)
    }
}

/// `--artifact-registry`: a registry host (with a dot, a port or `localhost`) and a
/// repository prefix, without a tag or digest (the CLI adds `/APP` and tags `APP-VERSION`).
pub fn parse_artifact_registry(text: &str) -> Result<String, String> {
    let text = text.trim_end_matches('/');
    let problem = if crate::reference::names_tag_or_digest(text) {
        Some("names a tag or digest".to_owned())
    } else if !text.contains('/') {
        Some("names no repository prefix".to_owned())
    } else {
        crate::reference::ImageRef::parse(&format!("{text}/app:tag"))
            .err()
            .map(|error| error.to_string())
    };
    match problem {
        None => Ok(text.to_owned()),
        Some(problem) => Err(format!(
            "{problem}; give REGISTRY/PREFIX, e.g. registry.example.com/drover (each app is a repository under it)"
        )),
    }
}

/// A certificate lifetime within [`MIN_LEAF_VALIDITY`](crate::server::pki::MIN_LEAF_VALIDITY)
/// and [`MAX_LEAF_VALIDITY`](crate::server::pki::MAX_LEAF_VALIDITY).
fn parse_certificate_validity(text: &str) -> Result<Duration, String> {
    let validity: Duration = text.parse().map_err(|error| format!("{error}"))?;
    let (min, max) = (
        crate::server::pki::MIN_LEAF_VALIDITY,
        crate::server::pki::MAX_LEAF_VALIDITY,
    );
    if validity < min || validity > max {
        return Err(format!(
            "a certificate validity must be between {min} and {max} (renewal starts when a third is left)"
        ));
    }
    Ok(validity)
}

/// What `drover serve` needs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The URL hosts use to reach the coordinator (default: from the listen address).
    pub public_url: Option<String>,
    /// A key directory from `drover keys init` instead of `<data-dir>/keys`.
    pub keys: Option<PathBuf>,
    /// How long a signed manifest is valid.
    pub manifest_ttl: Duration,
    /// Extra names or addresses for the server certificate.
    pub server_names: Vec<String>,
    /// How long host certificates are valid (join and renewal).
    pub host_certificate_validity: Duration,
    /// How long the server certificate is valid (it is renewed while serving).
    pub server_certificate_validity: Duration,
    /// The database (`None`: SQLite in the data directory).
    pub database: Option<Database>,
    /// `--artifact-registry REGISTRY/PREFIX` (checked by [`parse_artifact_registry`]).
    pub artifact_registry: Option<String>,
}

/// The server certificate and key in use, in the data directory (0600; written atomically
/// at start and at each renewal), for inspection: each start issues a new one.
pub const SERVER_CERTIFICATE_FILE: &str = "server.pem";

/// A running coordinator.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on (the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// The URL hosts and the CLI use.
    pub public_url: String,
    /// The coordinator, for in-process tests and tools.
    pub coordinator: Arc<Coordinator>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    background: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, flushes queued reports.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        let _ = self.background.await;
    }

    /// Waits until the server stops by itself (it does not, unless shut down).
    pub async fn wait(self, mut signal: impl Future<Output = ()> + Unpin) {
        (&mut signal).await;
        tracing::info!("shutting down: draining requests and flushing reports");
        self.stop().await;
    }
}

fn now() -> Timestamp {
    Timestamp::from_system(std::time::SystemTime::now())
}

/// Starts the coordinator and returns once it listens.
pub async fn start(options: ServeOptions) -> Result<Running, Error> {
    start_with_clock(options, Arc::new(crate::server::clock::SystemClock)).await
}

/// [`start`] with the service reading `clock` (tests pass a
/// [`ManualClock`](crate::server::clock::ManualClock) to age manifests, tokens and rollouts
/// without sleeping). The CA and the server certificate keep the real time, since peers
/// check certificates against theirs; host certificates are issued at `clock`'s time, so
/// a test that moves it far joins its hosts first.
pub async fn start_with_clock(
    options: ServeOptions,
    clock: Arc<dyn crate::server::clock::Clock>,
) -> Result<Running, Error> {
    let data = DataDir::new(&options.data_dir);
    let credentials = prepare(&data, options.keys.as_deref(), now())?;
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|error| Error::start(format!("listening on {}", options.listen), &error, listen_hint(&error)))?;
    let addr = listener
        .local_addr()
        .map_err(|error| Error::start(format!("reading the address of {}", options.listen), &error, ""))?;
    let public_url = options.public_url.clone().unwrap_or_else(|| {
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            addr.ip().to_string()
        };
        format!(
            "https://{}",
            SocketAddr::new(host.parse().expect("an IP address"), addr.port())
        )
    });
    let public_url = public_url.trim_end_matches('/').to_owned();

    let mut names = vec!["127.0.0.1".to_owned(), "::1".to_owned(), "localhost".to_owned()];
    if let Some(host) = url_host(&public_url) {
        names.push(host);
    }
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    names.extend(options.server_names.iter().cloned());
    names.sort();
    names.dedup();
    let certificate_failed = |cause: String| Error::Start {
        step: format!("issuing the server certificate for {}", names.join(", ")),
        cause,
    };
    let issued = issue_server_certificate(&credentials.ca, &names, options.server_certificate_validity, now())
        .map_err(certificate_failed)?;
    let server_certificate =
        crate::server::http::ServerCertificate::new(&issued.chain_pem, &issued.key_pem).map_err(certificate_failed)?;
    let tls = crate::server::http::tls_config_with(credentials.ca.cert_der(), server_certificate.clone())
        .map_err(certificate_failed)?;
    let server_file = options.data_dir.join(SERVER_CERTIFICATE_FILE);
    write_atomic(&server_file, issued.file_text().as_bytes(), 0o600)?;

    let database = options
        .database
        .clone()
        .unwrap_or_else(|| Database::Sqlite(data.database()));
    // Named without its password: the line goes to logs and terminals.
    let database_name = database.display_name();
    let store = Store::open_database(&database).await.map_err(|error| {
        let hint = database_open_hint(&database, &error);
        Error::start(format!("opening the database {database_name}"), &error, hint)
    })?;
    let loopback_trap = public_url_is_loopback_while_listening_elsewhere(&public_url, addr)
        .then(|| loopback_public_url_problem(&public_url, addr));
    if let Some(problem) = &loopback_trap {
        tracing::warn!("{problem}");
    }
    let config = Config {
        loopback_trap,
        listen: addr,
        public_url: public_url.clone(),
        manifest_ttl: options.manifest_ttl,
        refresh_interval: Duration::from_secs(60),
        host_certificate_validity: options.host_certificate_validity,
        artifact_registry: options.artifact_registry.clone(),
        clock,
    };
    let (coordinator, background) = Coordinator::start(config, store, data.clone(), credentials)
        .await
        .map_err(|error| Error::start(format!("loading the state in {database_name}"), &error, ""))?;
    write_atomic(&data.address(), format!("{public_url}\n").as_bytes(), 0o644)?;

    let (shutdown, receiver) = watch::channel(false);
    let server = tokio::spawn(crate::server::http::serve(
        listener,
        coordinator.clone(),
        tls,
        receiver.clone(),
    ));
    coordinator
        .metrics
        .server_certificate_not_after
        .store(issued.not_after.unix(), std::sync::atomic::Ordering::Relaxed);
    let renewer = tokio::spawn(renew_server_certificate(
        ServerRenewal {
            coordinator: coordinator.clone(),
            names,
            validity: options.server_certificate_validity,
            certificate: server_certificate,
            file: server_file,
            current: (issued.not_before, issued.not_after),
        },
        receiver.clone(),
    ));
    let background = tokio::spawn(background.run(coordinator.clone(), receiver));
    let background = tokio::spawn(async move {
        let _ = background.await;
        let _ = renewer.await;
    });
    tracing::info!(%addr, %public_url, ca_sha256 = %coordinator.credentials().ca.sha256(), "drover coordinator listening");
    warn_if_few_descriptors();
    Ok(Running {
        addr,
        public_url,
        coordinator,
        shutdown,
        server,
        background,
    })
}

/// What to check when the listening socket cannot be opened.
fn listen_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            "another process listens there (another `drover serve`?): stop it, or choose another address with --listen"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "no network interface of this machine has that address: choose one it has with --listen (0.0.0.0 for all)"
        }
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need CAP_NET_BIND_SERVICE, which the packaged unit does not grant: choose a port above 1023 with --listen (the default is 8443)"
        }
        _ => "",
    }
}

/// A server certificate just issued.
struct IssuedServerCertificate {
    /// The certificate and the CA (a joining agent pins the CA by its sha256), PEM.
    chain_pem: String,
    key_pem: String,
    not_before: Timestamp,
    not_after: Timestamp,
}

impl IssuedServerCertificate {
    /// What `server.pem` holds: chain, then key.
    fn file_text(&self) -> String {
        format!("{}{}", self.chain_pem, self.key_pem)
    }
}

fn issue_server_certificate(
    ca: &crate::server::pki::Ca,
    names: &[String],
    validity: Duration,
    now: Timestamp,
) -> Result<IssuedServerCertificate, String> {
    let (cert_pem, key_pem) = ca
        .issue_server_valid_for(names, now, validity)
        .map_err(|error| error.to_string())?;
    let (not_before, not_after) = crate::server::pki::validity_of(&cert_pem)
        .ok_or_else(|| "the issued certificate cannot be read back".to_owned())?;
    Ok(IssuedServerCertificate {
        chain_pem: format!("{cert_pem}{}", ca.cert_pem()),
        key_pem,
        not_before,
        not_after,
    })
}

/// What the server certificate renewal task works with.
struct ServerRenewal {
    coordinator: Arc<Coordinator>,
    names: Vec<String>,
    validity: Duration,
    certificate: Arc<crate::server::http::ServerCertificate>,
    file: PathBuf,
    /// not_before and not_after of the certificate in use.
    current: (Timestamp, Timestamp),
}

/// The longest the renewal task sleeps before it looks at the clock again (the wall
/// clock may jump; a monotonic sleep of months would not notice).
const RENEWAL_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);
/// How long after a failed renewal it tries again.
const RENEWAL_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// How long to wait, at `now`, before renewing a certificate valid `not_before` to
/// `not_after` (see [`renewal_due_at`](drover_protocol::api::renewal_due_at)): zero when
/// due, at most [`RENEWAL_CHECK_INTERVAL`].
pub fn server_renewal_wait(not_before: Timestamp, not_after: Timestamp, now: Timestamp) -> std::time::Duration {
    let due = drover_protocol::api::renewal_due_at(not_before, not_after);
    let seconds = u64::try_from(due.unix().saturating_sub(now.unix())).unwrap_or(0);
    std::time::Duration::from_secs(seconds).min(RENEWAL_CHECK_INTERVAL)
}

/// Renews the server certificate while serving: when a third of its lifetime is left it
/// issues a new one (same names), writes it to `server.pem` atomically and swaps it in;
/// new handshakes get it, open connections keep the old one until they close.
async fn renew_server_certificate(mut renewal: ServerRenewal, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (not_before, not_after) = renewal.current;
        let wait = server_renewal_wait(not_before, not_after, now());
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => continue,
                _ = shutdown.wait_for(|stopping| *stopping) => return,
            }
        }
        let issued = issue_server_certificate(
            &renewal.coordinator.credentials().ca,
            &renewal.names,
            renewal.validity,
            now(),
        )
        .and_then(|issued| {
            renewal.certificate.replace(&issued.chain_pem, &issued.key_pem)?;
            Ok(issued)
        });
        match issued {
            Ok(issued) => {
                if let Err(error) = write_atomic(&renewal.file, issued.file_text().as_bytes(), 0o600) {
                    tracing::warn!(%error, path = %renewal.file.display(), "the renewed server certificate is in use but could not be written to the data directory");
                }
                renewal
                    .coordinator
                    .metrics
                    .server_certificate_not_after
                    .store(issued.not_after.unix(), std::sync::atomic::Ordering::Relaxed);
                tracing::info!(not_after = %issued.not_after, "renewed the server certificate");
                renewal.current = (issued.not_before, issued.not_after);
            }
            Err(error) => {
                tracing::error!(%error, old_not_after = %not_after, "renewing the server certificate failed; retrying in a minute");
                tokio::select! {
                    () = tokio::time::sleep(RENEWAL_RETRY) => {}
                    _ = shutdown.wait_for(|stopping| *stopping) => return,
                }
            }
        }
    }
}

/// Below this many open files the coordinator warns at start: every connected agent holds
/// a descriptor (its long-poll), and up to
/// [`MAX_UNAUTHENTICATED_CONNECTIONS`](crate::server::http::MAX_UNAUTHENTICATED_CONNECTIONS)
/// more may be held by clients without a certificate. The packaged unit sets 65536.
const FEW_DESCRIPTORS: u64 = 4096;

/// Logs a warning when the open-file limit is low. Raising it here would need
/// `setrlimit` (unsafe or another dependency); the unit's `LimitNOFILE=` does it instead.
/// When the limit is reached anyway the accept loop pauses and logs (see `server`).
fn warn_if_few_descriptors() {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    if let Some((soft, hard)) = open_files_limit(&limits)
        && soft < FEW_DESCRIPTORS
    {
        tracing::warn!(
            soft_limit = soft,
            hard_limit = hard.map_or_else(|| "unlimited".to_owned(), |hard| hard.to_string()),
            "the open-file limit is low: each connected host holds one descriptor; raise it (LimitNOFILE= in the unit, ulimit -n) to at least {FEW_DESCRIPTORS}, or more than the number of hosts plus 600"
        );
    }
}

/// The soft and hard "Max open files" of a `/proc/PID/limits` text (`None`: unlimited).
fn open_files_limit(limits: &str) -> Option<(u64, Option<u64>)> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    let mut values = line.trim_start_matches("Max open files").split_whitespace();
    let soft = values.next()?.parse().ok()?;
    let hard = values.next()?;
    Some((soft, hard.parse().ok()))
}

/// True when `public_url` names a loopback address (127.0.0.0/8, ::1, localhost) while
/// the coordinator listens on `listen`, which is not one: the packaged default (listen on
/// 0.0.0.0, public URL 127.0.0.1). Join lines and artifact URLs with it work only on the
/// coordinator's own machine. A coordinator that listens on loopback only (a laptop, the
/// tests) can only be reached from there anyway, so its loopback URL is no trap.
pub fn public_url_is_loopback_while_listening_elsewhere(public_url: &str, listen: SocketAddr) -> bool {
    let Some(host) = url_host(public_url) else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    let loopback_url = host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    loopback_url && !listen.ip().is_loopback()
}

/// What `drover serve` logs at start and `drover token create` answers (refused) when
/// [`public_url_is_loopback_while_listening_elsewhere`]: the setting, the files and the
/// way out.
pub fn loopback_public_url_problem(public_url: &str, listen: SocketAddr) -> String {
    format!(
        "the public URL {public_url} is a loopback address but the coordinator listens on {listen}: \
         join lines and artifact URLs with it work only on this machine (another host would \
         connect to itself). Set the URL hosts reach this coordinator at with --public-url, \
         e.g. DROVER_SERVE_ARGS=\"--public-url https://deploy.example.com:8443\" in \
         /etc/default/drover-coordinator (deb) or /etc/sysconfig/drover-coordinator (rpm), \
         then `systemctl restart drover-coordinator`"
    )
}

fn url_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// What to tell the operator after the database's own error when it cannot be opened: how
/// to make it reachable, except for a schema too new, whose message says what to run.
fn database_open_hint(database: &Database, error: &StoreError) -> &'static str {
    match database {
        _ if matches!(error, StoreError::SchemaTooNew { .. }) => "",
        Database::Sqlite(_) => {
            "it must be a SQLite database file the coordinator's user can read and write, or absent (a new one is made)"
        }
        Database::Postgres(_) => {
            "check that PostgreSQL runs and accepts connections at that address, that the database exists, \
             and that the user and password are right (for TLS, which a server that refuses plain connections \
             needs: ?sslmode=verify-full&sslrootcert=/path/to/ca.pem)"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_artifact_registry_is_a_registry_and_a_prefix_without_tag_or_digest() {
        assert_eq!(
            parse_artifact_registry("registry.example.com/drover/").as_deref(),
            Ok("registry.example.com/drover")
        );
        assert_eq!(
            parse_artifact_registry("127.0.0.1:5000/drover").as_deref(),
            Ok("127.0.0.1:5000/drover")
        );
        for (bad, problem) in [
            ("registry.example.com", "no repository prefix"),
            ("registry.example.com/drover:1", "tag or digest"),
            ("registry.example.com/drover@sha256:00", "tag or digest"),
            ("registry.example.com/Drover", "e.g. registry.example.com/drover"),
            ("drover/apps", "e.g. registry.example.com/drover"),
        ] {
            let error = parse_artifact_registry(bad).expect_err(bad);
            assert!(error.contains(problem), "{bad}: {error}");
        }
    }

    #[test]
    fn the_server_certificate_is_renewed_when_a_third_of_its_lifetime_is_left() {
        let at = |text: &str| text.parse::<Timestamp>().expect("timestamp");
        let (not_before, not_after) = (at("2026-01-01T00:00:00Z"), at("2027-01-02T00:00:00Z"));
        // Long before: the task looks at the clock again within the hour.
        assert_eq!(
            server_renewal_wait(not_before, not_after, at("2026-03-01T00:00:00Z")),
            RENEWAL_CHECK_INTERVAL
        );
        // Ten seconds before the due time (2026-09-02): ten seconds.
        assert_eq!(
            server_renewal_wait(not_before, not_after, at("2026-09-01T23:59:50Z")),
            std::time::Duration::from_secs(10)
        );
        // Due, and long past due (even expired): now.
        for now in ["2026-09-02T00:00:00Z", "2026-12-31T00:00:00Z", "2027-02-01T00:00:00Z"] {
            assert!(server_renewal_wait(not_before, not_after, at(now)).is_zero(), "{now}");
        }
    }

    #[test]
    fn a_loopback_public_url_is_a_trap_only_when_listening_beyond_loopback() {
        let listen = |text: &str| text.parse::<SocketAddr>().expect("address");
        for url in [
            "https://127.0.0.1:8443",
            "https://127.0.1.1:8443",
            "https://[::1]:8443",
            "https://localhost:8443",
            "https://LOCALHOST",
        ] {
            assert!(
                public_url_is_loopback_while_listening_elsewhere(url, listen("0.0.0.0:8443")),
                "{url}"
            );
            assert!(
                public_url_is_loopback_while_listening_elsewhere(url, listen("[::]:8443")),
                "{url}"
            );
            assert!(
                public_url_is_loopback_while_listening_elsewhere(url, listen("10.0.0.5:8443")),
                "{url}"
            );
            assert!(
                !public_url_is_loopback_while_listening_elsewhere(url, listen("127.0.0.1:8443")),
                "{url}"
            );
            assert!(
                !public_url_is_loopback_while_listening_elsewhere(url, listen("[::1]:8443")),
                "{url}"
            );
        }
        for url in [
            "https://10.0.0.5:8443",
            "https://deploy.example.com",
            "https://[fd00::1]:8443",
            "https://localhost.example.com",
        ] {
            assert!(
                !public_url_is_loopback_while_listening_elsewhere(url, listen("0.0.0.0:8443")),
                "{url}"
            );
        }
    }

    #[test]
    fn a_schema_too_new_gets_no_hint_about_reaching_the_database() {
        let too_new = StoreError::SchemaTooNew {
            database: "fleet".into(),
            found: 9,
            known: 8,
            readable_from: 9,
        };
        let postgres = Database::Postgres("postgres://drover@db/fleet".into());
        assert_eq!(database_open_hint(&postgres, &too_new), "");
        assert_eq!(
            database_open_hint(&Database::Sqlite("coordinator.db".into()), &too_new),
            ""
        );
        let stale = StoreError::Stale;
        assert!(database_open_hint(&postgres, &stale).contains("PostgreSQL runs"));
    }

    #[test]
    fn reads_the_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63432                63432                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(open_files_limit(limits), Some((1024, Some(524_288))));
        let unlimited = "Max open files            65536                unlimited            files     \n";
        assert_eq!(open_files_limit(unlimited), Some((65536, None)));
        assert_eq!(open_files_limit("Max processes 1 1 processes\n"), None);
    }
}
