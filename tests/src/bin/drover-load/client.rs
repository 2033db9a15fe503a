//! One HTTPS keep-alive connection driven by hyper's low-level HTTP/1 client over
//! tokio-rustls: the same code talks to the coordinator (with a host's client
//! certificate) and to nginx (without one), so both sides of a comparison pay the same
//! client cost.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long connecting plus the TLS handshake may take.
const CONNECT_TIMEOUT: StdDuration = StdDuration::from_secs(15);

/// Where requests go: an `https://127.0.0.1:PORT[/path]` URL, split once.
#[derive(Clone, Debug)]
pub struct Target {
    /// The socket address (always a loopback address).
    pub addr: SocketAddr,
    /// The path of the URL, `""` when it had none.
    pub path: String,
    /// The `Host` header value.
    pub authority: HeaderValue,
}

impl Target {
    /// Parses `url`, refusing anything that is not HTTPS to a loopback IP address: this
    /// tool only ever sends traffic to the machine it runs on.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("https://")
            .with_context(|| format!("{url}: only https:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(index) => rest.split_at(index),
            None => (rest, ""),
        };
        let addr: SocketAddr = authority
            .parse()
            .with_context(|| format!("{url}: the host must be an IP address with a port, e.g. 127.0.0.1:8443"))?;
        if !addr.ip().is_loopback() {
            bail!("{url}: refusing a non-loopback address; load is only ever sent to 127.0.0.1");
        }
        Ok(Target {
            addr,
            path: path.trim_end_matches('/').to_owned(),
            authority: HeaderValue::from_str(authority).context("authority")?,
        })
    }

    /// The same server with another path.
    pub fn with_path(&self, path: &str) -> Target {
        Target {
            path: path.to_owned(),
            ..self.clone()
        }
    }
}

/// A TLS client configuration trusting `ca_pem`, optionally presenting a client
/// certificate; the shared test helper, with HTTP/1.1 offered over ALPN.
pub fn tls_config(ca_pem: &str, identity: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let mut config = drover_tests::fleet::tls_client(ca_pem, identity);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Reads a PEM file into a string.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// An answer, fully read.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// The `ETag` header, if any.
    pub fn etag(&self) -> Option<HeaderValue> {
        self.headers.get(header::ETAG).cloned()
    }

    /// The body as text, shortened, for error messages.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).chars().take(300).collect()
    }
}

/// One open keep-alive connection.
#[derive(Debug)]
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    target: Target,
    /// The TLS cipher suite the handshake agreed on.
    pub cipher: String,
}

impl Connection {
    /// Connects and completes the TLS handshake.
    pub async fn open(target: &Target, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Connection> {
        let connecting = async {
            let tcp = TcpStream::connect(target.addr)
                .await
                .with_context(|| format!("connecting to {}", target.addr))?;
            tcp.set_nodelay(true)?;
            let ip: IpAddr = target.addr.ip();
            let stream = TlsConnector::from(tls)
                .connect(ServerName::IpAddress(ip.into()), tcp)
                .await
                .with_context(|| format!("TLS handshake with {}", target.addr))?;
            let cipher = stream
                .get_ref()
                .1
                .negotiated_cipher_suite()
                .map_or_else(|| "?".to_owned(), |suite| format!("{:?}", suite.suite()));
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .context("HTTP/1 handshake")?;
            tokio::spawn(async move {
                // Ends when the server closes or the sender is dropped.
                let _ = connection.await;
            });
            anyhow::Ok(Connection {
                sender,
                target: target.clone(),
                cipher,
            })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .with_context(|| format!("connecting to {} took over {CONNECT_TIMEOUT:?}", target.addr))?
    }

    /// A request to `path` on this connection's server, with the `Host` header set.
    pub fn request(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.target.authority.clone())
    }

    /// Sends a request and reads the whole answer, within `timeout`.
    pub async fn send(&mut self, request: Request<Full<Bytes>>, timeout: StdDuration) -> anyhow::Result<Answer> {
        tokio::time::timeout(timeout, self.send_unbounded(request))
            .await
            .with_context(|| format!("no answer within {timeout:?}"))?
    }

    /// Sends a request and reads the whole answer with no timeout of its own: for hot
    /// loops that bound their whole run instead (a timer per request costs throughput).
    pub async fn send_unbounded(&mut self, request: Request<Full<Bytes>>) -> anyhow::Result<Answer> {
        self.sender.ready().await.context("connection closed")?;
        let response = self.sender.send_request(request).await.context("request failed")?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.context("reading the body")?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// `GET path` with optional extra headers.
    pub async fn get(
        &mut self,
        path: &str,
        headers: &[(header::HeaderName, HeaderValue)],
        timeout: StdDuration,
    ) -> anyhow::Result<Answer> {
        let mut builder = self.request(Method::GET, path);
        for (name, value) in headers {
            builder = builder.header(name, value.clone());
        }
        self.send(builder.body(Full::default())?, timeout).await
    }

    /// A request with a body and a content type.
    pub async fn send_body(
        &mut self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        content_type: &str,
        body: Bytes,
        timeout: StdDuration,
    ) -> anyhow::Result<Answer> {
        let mut builder = self
            .request(method, path)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, body.len());
        if let Some(token) = bearer {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        self.send(builder.body(Full::new(body))?, timeout).await
    }

    /// The `Host` header value for this connection's server.
    pub fn authority(&self) -> HeaderValue {
        self.target.authority.clone()
    }

    /// The path of this connection's target URL.
    pub fn path(&self) -> &str {
        &self.target.path
    }
}
