//! `drover serve`: prepare the data directory, open the store, start the coordinator,
//! serve HTTPS until told to stop, then drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use drover_protocol::keyfile::write_atomic;
use drover_protocol::{Duration, Timestamp};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::datadir::{DataDir, prepare};
use crate::error::Error;
use crate::service::{Config, Coordinator};
use crate::store::Store;

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
}

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
    let data = DataDir::new(&options.data_dir);
    let credentials = prepare(&data, options.keys.as_deref(), now())?;
    let listener = TcpListener::bind(options.listen).await.map_err(|source| Error::Io {
        operation: "listening on",
        path: PathBuf::from(options.listen.to_string()),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| Error::Io {
        operation: "reading the address of",
        path: PathBuf::from(options.listen.to_string()),
        source,
    })?;
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
    let (cert_pem, key_pem) = credentials
        .ca
        .issue_server(&names, now())
        .map_err(|error| Error::Input(format!("server certificate: {error}")))?;
    // The chain carries the CA too: a joining agent pins the CA by its sha256.
    let chain_pem = format!("{cert_pem}{}", credentials.ca.cert_pem());
    let tls = crate::server::tls_config(credentials.ca.cert_der(), &chain_pem, &key_pem).map_err(Error::Input)?;

    let store = Store::open(&data.database())
        .await
        .map_err(|error| Error::Input(error.to_string()))?;
    let config = Config {
        public_url: public_url.clone(),
        manifest_ttl: options.manifest_ttl,
        refresh_interval: Duration::from_secs(60),
    };
    let (coordinator, background) = Coordinator::start(config, store, data.clone(), credentials)
        .await
        .map_err(|error| Error::Input(error.to_string()))?;
    write_atomic(&data.address(), format!("{public_url}\n").as_bytes(), 0o644)?;

    let (shutdown, receiver) = watch::channel(false);
    let server = tokio::spawn(crate::server::serve(
        listener,
        coordinator.clone(),
        tls,
        receiver.clone(),
    ));
    let background = tokio::spawn(background.run(coordinator.clone(), receiver));
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

/// Below this many open files the coordinator warns at start: every connected agent holds
/// a descriptor (its long-poll), and up to
/// [`MAX_UNAUTHENTICATED_CONNECTIONS`](crate::server::MAX_UNAUTHENTICATED_CONNECTIONS)
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

fn url_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    (!host.is_empty()).then(|| host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

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
