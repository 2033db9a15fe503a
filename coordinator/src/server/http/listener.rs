//! The accept loop and what it bounds: TLS handshakes and request heads under timeouts,
//! the budget of connections that have not proved who they are ([`Unauthenticated`]),
//! and a pause with a rate-limited log line when accepting fails ([`AcceptBackoff`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use axum::Router;
use axum::extract::Extension;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tower::Layer as _;

use crate::server::metrics::Metrics;
use crate::server::pki::PeerIdentity;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// How long in-flight requests get to finish after SIGTERM.
pub const SHUTDOWN_GRACE: StdDuration = StdDuration::from_secs(10);
/// How long an agent (client certificate) may take to send a request head, which is
/// also how long its connection may sit idle between requests.
const AGENT_HEADER_TIMEOUT: StdDuration = StdDuration::from_secs(30);
/// The same for connections without a client certificate: operators' CLI calls and
/// joins send their request at once.
const ANONYMOUS_HEADER_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// hyper's read buffer per connection, which bounds a request head (431 over it).
pub const MAX_REQUEST_BUFFER: usize = 64 * 1024;
/// Connections open at once without a client certificate or a valid admin token.
pub const MAX_UNAUTHENTICATED_CONNECTIONS: usize = 512;

/// What a connection proved at the TLS handshake.
#[derive(Clone, Debug)]
pub(super) struct Connection {
    pub(super) identity: Option<PeerIdentity>,
    /// The connection's place in the unauthenticated budget, while it has one (none for
    /// agents); a valid admin token gives it up.
    pub(super) admission: Option<Arc<Admission>>,
}

/// The connections that have not proved who they are, oldest first, bounded by
/// [`MAX_UNAUTHENTICATED_CONNECTIONS`]: admitting one more closes the oldest.
///
/// Closing the oldest rather than refusing the newest is what keeps operators in during
/// a flood: a refused operator could never get in while an attacker holds the budget,
/// whereas an admitted one only has to send its request head before the attacker opens
/// another full budget of connections; a valid token then takes it out of the budget.
#[derive(Debug)]
pub(super) struct Unauthenticated {
    capacity: usize,
    open: Mutex<OpenConnections>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    next_id: u64,
    /// By admission order; each entry wakes its connection's task to close it.
    by_age: BTreeMap<u64, Arc<Notify>>,
}

impl Unauthenticated {
    pub(super) fn new(capacity: usize) -> Arc<Unauthenticated> {
        Arc::new(Unauthenticated {
            capacity,
            open: Mutex::new(OpenConnections::default()),
        })
    }

    /// Admits a new connection; says whether an older one had to be closed for it.
    pub(super) fn admit(self: &Arc<Self>) -> (Admission, bool) {
        let mut open = self.lock();
        let evicted = open.by_age.len() >= self.capacity && evict(&mut open);
        let id = open.next_id;
        open.next_id += 1;
        let closed = Arc::new(Notify::new());
        open.by_age.insert(id, closed.clone());
        let admission = Admission {
            id,
            budget: self.clone(),
            closed,
        };
        (admission, evicted)
    }

    /// Closes the oldest unauthenticated connection, if there is one.
    pub(super) fn evict_oldest(&self) -> bool {
        evict(&mut self.lock())
    }

    /// The open connections. A panic while the lock was held (in this short, allocation-
    /// only code, hardly possible) leaves the map as it was or with one entry more or
    /// less, which is still a valid budget: the lock is taken back instead of failing
    /// every later connection.
    fn lock(&self) -> std::sync::MutexGuard<'_, OpenConnections> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn release(&self, id: u64) {
        self.lock().by_age.remove(&id);
    }
}

fn evict(open: &mut OpenConnections) -> bool {
    match open.by_age.pop_first() {
        Some((_, closed)) => {
            // notify_one keeps the wake-up for a task that is not waiting yet.
            closed.notify_one();
            true
        }
        None => false,
    }
}

/// One connection's place in the unauthenticated budget; dropping it frees the place.
#[derive(Debug)]
pub(super) struct Admission {
    id: u64,
    budget: Arc<Unauthenticated>,
    closed: Arc<Notify>,
}

impl Admission {
    /// The connection proved who it is: it leaves the budget and is never closed for it.
    pub(super) fn authenticated(&self) {
        self.budget.release(self.id);
    }

    /// Resolves when the budget closes this connection to make room.
    async fn evicted(&self) {
        self.closed.notified().await;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.budget.release(self.id);
    }
}

/// At most one log line per [`LogLimit::EVERY`] about a repeated event, so that a flood
/// does not become a log storm; each line says how many it stood for.
#[derive(Debug, Default)]
struct LogLimit {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl LogLimit {
    const EVERY: StdDuration = StdDuration::from_secs(10);

    /// The event happened at `now`: `Some(n)` to log it now, `n` being how many went
    /// unlogged since the last line.
    fn event(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last_logged
            .is_none_or(|last| now.saturating_duration_since(last) >= Self::EVERY);
        if due {
            self.last_logged = Some(now);
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        }
    }
}

/// The accept loop's pause after an error and its rate-limited log line.
#[derive(Debug, Default)]
struct AcceptBackoff {
    pause: Option<StdDuration>,
    log: LogLimit,
}

/// What to do after a failed accept.
#[derive(Debug, PartialEq, Eq)]
struct AcceptPause {
    /// How long to stop accepting.
    pause: StdDuration,
    /// `Some(n)`: log now, mentioning the `n` failures since the last line.
    log: Option<u64>,
}

impl AcceptBackoff {
    const FIRST_PAUSE: StdDuration = StdDuration::from_millis(10);
    const MAX_PAUSE: StdDuration = StdDuration::from_secs(1);

    /// An accept failed at `now`: the pause doubles from 10 ms up to 1 s, and a line is
    /// logged at most every 10 s.
    fn failed(&mut self, now: Instant) -> AcceptPause {
        let pause = self
            .pause
            .map_or(Self::FIRST_PAUSE, |pause| (pause * 2).min(Self::MAX_PAUSE));
        self.pause = Some(pause);
        AcceptPause {
            pause,
            log: self.log.event(now),
        }
    }

    /// An accept succeeded: the next failure pauses briefly again (the log limit stays).
    fn succeeded(&mut self) {
        self.pause = None;
    }
}

/// Accept errors that concern only the connection being accepted (the client gave up):
/// nothing to wait for.
fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionRefused
            | ErrorKind::Interrupted
    )
}

/// Accepts TLS connections on `listener` and serves `router` on each until `shutdown`
/// turns true, then lets in-flight requests finish for up to [`SHUTDOWN_GRACE`]. Each
/// connection's [`Connection`] (what it proved) is an extension of every request on it.
pub(super) async fn accept_connections(
    listener: TcpListener,
    router: Router,
    tls: Arc<ServerConfig>,
    metrics: &Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let unauthenticated = Unauthenticated::new(MAX_UNAUTHENTICATED_CONNECTIONS);
    let mut backoff = AcceptBackoff::default();
    let mut eviction_log = LogLimit::default();
    'accept: loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(error) if is_per_connection(&error) => {
                metrics.accept_errors.add(1);
                continue;
            }
            Err(error) => {
                // Out of file descriptors (EMFILE/ENFILE) or kernel memory: the pending
                // connection stays queued, so retrying at once would spin. Closing the
                // oldest unauthenticated connection frees a descriptor for whoever waits.
                metrics.accept_errors.add(1);
                if unauthenticated.evict_oldest() {
                    metrics.connections_evicted.add(1);
                }
                let AcceptPause { pause, log } = backoff.failed(Instant::now());
                if let Some(unlogged) = log {
                    tracing::error!(
                        %error,
                        pause_ms = pause.as_millis(),
                        failures_since_last_message = unlogged,
                        "accepting a connection failed; pausing the accept loop (out of file descriptors? raise LimitNOFILE, or look for a connection flood; /metrics drover_accept_errors_total counts these)"
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    _ = shutdown.changed() => break 'accept,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (admission, evicted) = unauthenticated.admit();
        if evicted {
            metrics.connections_evicted.add(1);
            if let Some(unlogged) = eviction_log.event(Instant::now()) {
                tracing::warn!(
                    limit = MAX_UNAUTHENTICATED_CONNECTIONS,
                    closed_since_last_message = unlogged,
                    "too many connections without a client certificate or admin token: closing the oldest (a connection flood? /metrics drover_connections_closed_by_limit_total counts these)"
                );
            }
        }
        tokio::spawn(serve_connection(
            stream,
            acceptor.clone(),
            router.clone(),
            graceful.watcher(),
            admission,
        ));
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}

/// Serves one accepted connection: the TLS handshake, then HTTP/1 until the client hangs
/// up, the connection idles out, shutdown, or the unauthenticated budget closes it.
///
/// This future is the connection's tokio task for as long as the connection is open, so
/// its size is part of what every held long-poll costs. The handshake is a function of
/// its own ([`handshake`]) because a local that was borrowed (reading the client
/// certificate borrows the TLS stream) keeps its place in an async fn's state until the
/// end of its scope even after it was moved: done here, the task would carry a second,
/// dead copy of the TLS stream beside the one hyper serves.
async fn serve_connection(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    router: Router,
    watcher: Watcher,
    admission: Admission,
) {
    let Some((tls, identity)) = handshake(stream, &acceptor, &admission).await else {
        return;
    };
    let (admission, header_timeout) = match identity {
        Some(_) => {
            admission.authenticated();
            (None, AGENT_HEADER_TIMEOUT)
        }
        None => (Some(Arc::new(admission)), ANONYMOUS_HEADER_TIMEOUT),
    };
    // The identity wraps the whole router (one small clone per request);
    // `Router::layer` would rebuild every route per connection, which
    // was ~22 KiB of each held long-poll.
    let connection_state = Connection {
        identity,
        admission: admission.clone(),
    };
    let service = TowerToHyperService::new(Extension(connection_state).layer(router));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_REQUEST_BUFFER)
        .serve_connection(TokioIo::new(tls), service);
    let served = watcher.watch(connection);
    match &admission {
        // Dropping the connection closes it.
        Some(admission) => tokio::select! {
            _ = served => {}
            () = admission.evicted() => {}
        },
        None => {
            let _ = served.await;
        }
    }
}

/// The TLS handshake under [`HANDSHAKE_TIMEOUT`] (or until the budget closes the
/// connection), and who the client certificate, if any, says the client is.
async fn handshake(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    admission: &Admission,
) -> Option<(TlsStream<TcpStream>, Option<PeerIdentity>)> {
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let tls = tokio::select! {
        handshake = handshake => handshake.ok()?.ok()?,
        () = admission.evicted() => return None,
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| PeerIdentity::from_certificate(leaf));
    Some((tls, identity))
}

#[cfg(test)]
mod tests {
    use axum::middleware::AddExtension;

    use super::*;

    /// Every open connection is one of these futures (its tokio task), so a second copy of
    /// the TLS stream in it (~1.2 KiB) would be paid by every held long-poll.
    #[test]
    fn a_connections_task_holds_one_tls_stream_not_two() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new()));
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let _client = TcpStream::connect(listener.local_addr().expect("address"))
                .await
                .expect("connect");
            let (stream, _) = listener.accept().await.expect("accept");
            let graceful = GracefulShutdown::new();
            let budget = Unauthenticated::new(1);
            let task = serve_connection(
                stream,
                TlsAcceptor::from(Arc::new(config)),
                Router::new(),
                graceful.watcher(),
                budget.admit().0,
            );
            type Served = hyper::server::conn::http1::Connection<
                TokioIo<TlsStream<TcpStream>>,
                TowerToHyperService<AddExtension<Router, Connection>>,
            >;
            // hyper's connection holds the TLS stream; the task adds a little around it.
            let task_size = size_of_val(&task);
            let one_copy = size_of::<Served>();
            let tls_stream = size_of::<TlsStream<TcpStream>>();
            assert!(
                task_size < one_copy + tls_stream,
                "the task is {task_size} bytes: hyper's connection ({one_copy}) plus a second TLS stream ({tls_stream})?"
            );
        });
    }

    #[test]
    fn accept_backoff_doubles_to_a_second_and_logs_rarely() {
        let mut backoff = AcceptBackoff::default();
        let start = Instant::now();
        let mut pauses = Vec::new();
        let mut logged = Vec::new();
        // 100 failures, one every 100 ms of (simulated) time.
        for step in 0..100u32 {
            let AcceptPause { pause, log } = backoff.failed(start + StdDuration::from_millis(100) * step);
            pauses.push(pause.as_millis());
            if let Some(unlogged) = log {
                logged.push((step, unlogged));
            }
        }
        assert_eq!(&pauses[..8], &[10, 20, 40, 80, 160, 320, 640, 1000]);
        assert!(pauses[8..].iter().all(|pause| *pause == 1000));
        // At 0 s and every 10 s after: 9.9 s of failures give one line per 10 s.
        assert_eq!(logged, vec![(0, 0)]);
        let next = backoff.failed(start + StdDuration::from_secs(10));
        assert_eq!(next.log, Some(99), "the next line counts the failures it did not log");
        backoff.succeeded();
        assert_eq!(backoff.failed(start + StdDuration::from_secs(11)).pause.as_millis(), 10);
    }

    #[test]
    fn the_connection_budget_keeps_working_after_a_panic_while_it_was_locked() {
        let budget = Unauthenticated::new(2);
        let (first, _) = budget.admit();
        let poisoner = budget.clone();
        let panicked = std::thread::spawn(move || {
            let _held = poisoner.open.lock();
            panic!("a deliberate panic while holding the connection budget lock");
        })
        .join();
        assert!(panicked.is_err() && budget.open.is_poisoned());
        let (_second, evicted) = budget.admit();
        assert!(!evicted, "the budget still counts the first connection only");
        drop(first);
        assert!(budget.evict_oldest(), "the second is open");
        assert!(!budget.evict_oldest());
    }

    #[test]
    fn unauthenticated_budget_closes_the_oldest_and_spares_the_authenticated() {
        let budget = Unauthenticated::new(2);
        let (first, evicted) = budget.admit();
        assert!(!evicted);
        let (second, evicted) = budget.admit();
        assert!(!evicted);
        second.authenticated();
        let (third, evicted) = budget.admit();
        assert!(!evicted, "the authenticated connection no longer counts");
        let (_fourth, evicted) = budget.admit();
        assert!(evicted, "over the limit the oldest goes");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            tokio::time::timeout(StdDuration::from_secs(1), first.evicted())
                .await
                .expect("the oldest was told to close");
            assert!(
                tokio::time::timeout(StdDuration::from_millis(10), third.evicted())
                    .await
                    .is_err()
            );
            assert!(
                tokio::time::timeout(StdDuration::from_millis(10), second.evicted())
                    .await
                    .is_err()
            );
        });
        drop(third);
        assert!(budget.evict_oldest(), "the fourth is still open");
        assert!(!budget.evict_oldest(), "and nothing else is");
    }
}
