//! A proxy in front of a test [`Registry`] that sees every HTTP request: it counts the
//! body bytes of each blob download (`GET /v2/NAME/blobs/DIGEST`), so a test can tell
//! which layers a client fetched, and it can drop the connection midway through the
//! first download of each blob, so a test can check that a client resumes with a
//! `Range` request. It speaks what the registry speaks (TLS with a certificate from the
//! registry's CA, or plain HTTP) and passes `Host` and `Authorization` through, so
//! upload locations and auth challenges name the proxy.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use anyhow::Context as _;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

use super::Registry;

/// How long the proxy waits after the last bytes it forwards before it drops the
/// connection, so that those bytes reach the client first.
const DROP_DELAY: Duration = Duration::from_millis(200);

/// One blob download through the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobFetch {
    /// The blob's digest, as the request path names it.
    pub digest: String,
    /// The request's `Range` header, if any.
    pub range: Option<String>,
    /// The registry's status code.
    pub status: u16,
    /// Body bytes forwarded to the client so far.
    pub bytes: u64,
    /// Whether the body reached its end.
    pub complete: bool,
    /// Whether the proxy dropped the connection on purpose.
    pub dropped: bool,
}

#[derive(Debug, Default)]
struct ProxyState {
    fetches: Vec<BlobFetch>,
    /// Blobs whose first download has begun (and was cut, if the proxy cuts).
    seen: HashSet<String>,
}

/// A running proxy; stopped on drop.
#[derive(Debug)]
pub struct FaultyProxy {
    port: u16,
    state: Arc<Mutex<ProxyState>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the proxy's connections need, shared.
struct Upstream {
    port: u16,
    /// TLS towards the registry (trusting its CA), when it speaks TLS.
    tls: Option<tokio_rustls::TlsConnector>,
    /// Body bytes after which a first blob download is cut.
    drop_after: Option<u64>,
    state: Arc<Mutex<ProxyState>>,
}

impl FaultyProxy {
    /// Starts a proxy on 127.0.0.1 (a port of its own) in front of `registry`.
    pub(super) fn start(registry: &Registry, drop_after: Option<u64>) -> anyhow::Result<FaultyProxy> {
        let (acceptor, connector) = match registry.ca() {
            None => (None, None),
            Some(ca) => {
                let (cert, key) = ca
                    .issue_server(&["127.0.0.1".to_owned()], crate::now_real())
                    .context("issuing the proxy certificate")?;
                let server = drover_coordinator::server::http::tls_config(
                    ca.cert_der(),
                    &format!("{cert}{}", ca.cert_pem()),
                    &key,
                )
                .map_err(anyhow::Error::msg)?;
                let client = crate::fleet::tls_client(ca.cert_pem(), None);
                (
                    Some(tokio_rustls::TlsAcceptor::from(server)),
                    Some(tokio_rustls::TlsConnector::from(Arc::new(client))),
                )
            }
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        listener.set_nonblocking(true).context("non-blocking proxy listener")?;
        let port = listener.local_addr().context("proxy address")?.port();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let upstream = Arc::new(Upstream {
            port: registry.port(),
            tls: connector,
            drop_after,
            state: Arc::clone(&state),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("registry-proxy".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(accept_loop(listener, acceptor, upstream, stopped));
            })
            .context("proxy thread")?;
        Ok(FaultyProxy {
            port,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:PORT`, to use in place of the registry's host.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every blob download so far, in the order they began.
    pub fn fetches(&self) -> Vec<BlobFetch> {
        self.state.lock().expect("proxy state").fetches.clone()
    }

    /// The body bytes of all successful (2xx) blob downloads so far, complete or not
    /// (error bodies such as a 401's are left out; image configs are blobs too and count).
    pub fn blob_bytes(&self) -> u64 {
        self.state
            .lock()
            .expect("proxy state")
            .fetches
            .iter()
            .filter(|fetch| (200..300).contains(&fetch.status))
            .map(|fetch| fetch.bytes)
            .sum()
    }

    /// Forgets the downloads counted so far (blobs already cut stay uncut).
    pub fn reset_counts(&self) {
        self.state.lock().expect("proxy state").fetches.clear();
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    upstream: Arc<Upstream>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = &mut stopped => break,
        };
        let acceptor = acceptor.clone();
        let upstream = Arc::clone(&upstream);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let upstream = Arc::clone(&upstream);
                async move { Ok::<_, std::convert::Infallible>(forward(request, &upstream).await) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            match acceptor {
                None => {
                    let _ = http
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let _ = http.serve_connection(hyper_util::rt::TokioIo::new(tls), service).await;
                }
            }
        });
    }
}

type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Sends `request` to the registry on a connection of its own and returns the answer,
/// counting (and perhaps cutting) the body of a blob download.
async fn forward(request: hyper::Request<Incoming>, upstream: &Upstream) -> hyper::Response<ProxyBody> {
    let blob = blob_digest(request.method(), request.uri().path());
    let range = request
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let response = match send_upstream(request, upstream).await {
        Ok(response) => response,
        Err(error) => {
            let body = http_body_util::Full::new(Bytes::from(format!("proxy: registry unreachable: {error:#}\n")));
            let body = http_body_util::BodyExt::map_err(body, |never| -> BoxError { match never {} });
            return hyper::Response::builder()
                .status(502)
                .body(http_body_util::BodyExt::boxed_unsync(body))
                .expect("response");
        }
    };
    let Some(digest) = blob else {
        return response
            .map(|body| http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(body, box_error)));
    };
    let status = response.status().as_u16();
    let limit = {
        let mut state = upstream.state.lock().expect("proxy state");
        let first = state.seen.insert(digest.clone());
        state.fetches.push(BlobFetch {
            digest,
            range,
            status,
            bytes: 0,
            complete: false,
            dropped: false,
        });
        upstream.drop_after.filter(|_| first && response.status().is_success())
    };
    let index = upstream.state.lock().expect("proxy state").fetches.len() - 1;
    let state = Arc::clone(&upstream.state);
    response.map(move |inner| {
        http_body_util::BodyExt::boxed_unsync(CountedBody {
            inner,
            state,
            index,
            limit,
            sent: 0,
            cutting: None,
        })
    })
}

fn box_error(error: hyper::Error) -> BoxError {
    Box::new(error)
}

/// The digest of a blob download (`GET /v2/NAME/blobs/DIGEST`), else `None`.
fn blob_digest(method: &hyper::Method, path: &str) -> Option<String> {
    if method != hyper::Method::GET {
        return None;
    }
    let rest = path.strip_prefix("/v2/")?;
    let (_name, digest) = rest.rsplit_once("/blobs/")?;
    (!digest.is_empty() && !digest.contains('/') && digest.contains(':')).then(|| digest.to_owned())
}

async fn send_upstream(
    request: hyper::Request<Incoming>,
    upstream: &Upstream,
) -> anyhow::Result<hyper::Response<Incoming>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", upstream.port))
        .await
        .context("connecting to the registry")?;
    match &upstream.tls {
        None => exchange(hyper_util::rt::TokioIo::new(stream), request).await,
        Some(connector) => {
            let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
            let tls = connector
                .connect(name, stream)
                .await
                .context("TLS towards the registry")?;
            exchange(hyper_util::rt::TokioIo::new(tls), request).await
        }
    }
}

async fn exchange<Io>(io: Io, request: hyper::Request<Incoming>) -> anyhow::Result<hyper::Response<Incoming>>
where
    Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .context("HTTP towards the registry")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await.context("request to the registry")
}

/// A blob body on its way to the client: counted, and cut after `limit` bytes.
struct CountedBody {
    inner: Incoming,
    state: Arc<Mutex<ProxyState>>,
    index: usize,
    limit: Option<u64>,
    sent: u64,
    /// Set once `limit` bytes are sent: the connection is dropped when it fires.
    cutting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl CountedBody {
    fn record(&self, update: impl FnOnce(&mut BlobFetch)) {
        if let Some(fetch) = self.state.lock().expect("proxy state").fetches.get_mut(self.index) {
            update(fetch);
        }
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(limit) = this.limit
            && this.sent >= limit
        {
            if this.cutting.is_none() {
                // The body may end right here: then nothing is cut.
                if ready!(Pin::new(&mut this.inner).poll_frame(context)).is_none() {
                    this.record(|fetch| fetch.complete = true);
                    return Poll::Ready(None);
                }
                this.cutting = Some(Box::pin(tokio::time::sleep(DROP_DELAY)));
            }
            if let Some(cutting) = this.cutting.as_mut() {
                ready!(cutting.as_mut().poll(context));
            }
            this.record(|fetch| fetch.dropped = true);
            return Poll::Ready(Some(Err("the test proxy dropped the connection on purpose".into())));
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(context)) {
            None => {
                this.record(|fetch| fetch.complete = true);
                Poll::Ready(None)
            }
            Some(Err(error)) => Poll::Ready(Some(Err(Box::new(error)))),
            Some(Ok(frame)) => {
                let frame = match frame.into_data() {
                    Err(frame) => frame,
                    Ok(mut data) => {
                        let whole = data.len();
                        if let Some(limit) = this.limit {
                            let room = usize::try_from(limit - this.sent).unwrap_or(usize::MAX);
                            if data.len() > room {
                                data.truncate(room);
                                this.cutting = Some(Box::pin(tokio::time::sleep(DROP_DELAY)));
                            }
                        }
                        let length = data.len() as u64;
                        this.sent += length;
                        // hyper stops polling once Content-Length bytes are through.
                        let complete = this.inner.is_end_stream() && data.len() == whole;
                        this.record(|fetch| {
                            fetch.bytes += length;
                            fetch.complete |= complete;
                        });
                        Frame::data(data)
                    }
                };
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.cutting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
