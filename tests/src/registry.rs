//! A real OCI registry for tests, benchmarks and end-to-end suites (SPEC.md §7): Debian's
//! `docker-registry` (distribution v2.8) as a child process on 127.0.0.1 with a minimal
//! config written here, over plain HTTP or over TLS with basic auth; a proxy in front of
//! it that counts blob bytes and can drop a blob download midway ([`proxy`]); and OCI
//! images built with `umoci` and pushed with `skopeo` ([`image`]).
//!
//! Needs the Debian packages `docker-registry`, `umoci`, `skopeo` and `apache2-utils`
//! (for `htpasswd`). Everything listens on 127.0.0.1 only and is torn down on drop, also
//! when a test panics (the registry process is killed by its PID and its log printed).

pub mod image;
pub mod proxy;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use drover_coordinator::server::pki::Ca;

pub use image::{ImageConfig, LayerOp, OciImage, SampleImage, TarLayer};
pub use proxy::{BlobFetch, FaultyProxy};

use crate::e2e::free_port;

/// The registry binary from Debian's `docker-registry` package.
const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
/// Where the listening address goes in the config template.
const ADDRESS_SLOT: &str = "@LISTEN_ADDRESS@";
/// How long the registry may take to answer `/v2/` after its start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `docker-registry` on 127.0.0.1 with its storage in a temporary directory.
#[derive(Debug)]
pub struct Registry {
    child: Option<Child>,
    port: u16,
    tls: Option<RegistryTls>,
    credentials: Option<(String, String)>,
    storage: PathBuf,
    log: PathBuf,
    _scratch: tempfile::TempDir,
}

/// The throwaway PKI of a TLS registry.
#[derive(Debug)]
struct RegistryTls {
    /// The CA that issued the registry's certificate (also issues the proxy's).
    ca: Ca,
    /// `ca.pem`: the CA certificate clients trust.
    ca_pem_path: PathBuf,
    /// A directory holding only `ca.crt`, as `skopeo --dest-cert-dir` wants it.
    cert_dir: PathBuf,
}

impl Registry {
    /// A registry over plain HTTP that anyone may read and push to.
    pub fn start_plain() -> anyhow::Result<Registry> {
        Registry::start(None)
    }

    /// A registry over TLS (a certificate for 127.0.0.1 from a fresh CA, see
    /// [`Registry::ca_pem_path`]) that requires basic auth with `user` and `password`
    /// for everything, reads included.
    pub fn start_tls_basic(user: &str, password: &str) -> anyhow::Result<Registry> {
        Registry::start(Some((user, password)))
    }

    fn start(basic: Option<(&str, &str)>) -> anyhow::Result<Registry> {
        anyhow::ensure!(
            Path::new(REGISTRY_BINARY).is_file(),
            "{REGISTRY_BINARY} is missing: install the Debian package docker-registry"
        );
        let scratch = tempfile::Builder::new()
            .prefix("drover-registry-")
            .tempdir()
            .context("registry scratch directory")?;
        let root = scratch.path().to_owned();
        let storage = root.join("storage");
        std::fs::create_dir_all(&storage).context("registry storage directory")?;
        let mut secret = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).expect("system random source");
        let secret: String = secret.iter().map(|byte| format!("{byte:02x}")).collect();

        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {ADDRESS_SLOT}\n  secret: {secret}\n",
            storage = storage.display(),
        );
        let (tls, credentials) = match basic {
            None => (None, None),
            Some((user, password)) => {
                let tls = write_pki(&root)?;
                config.push_str(&format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    root.join("server.pem").display(),
                    root.join("server.key").display()
                ));
                let htpasswd = root.join("htpasswd");
                write_htpasswd(&htpasswd, user, password)?;
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: drover-test-registry\n    path: {}\n",
                    htpasswd.display()
                ));
                (Some(tls), Some((user.to_owned(), password.to_owned())))
            }
        };
        let config_path = root.join("config.yml");
        let mut registry = Registry {
            child: None,
            port: 0,
            tls,
            credentials,
            storage,
            log: root.join("registry.log"),
            _scratch: scratch,
        };
        // A free port may be taken again before the registry binds it: then try another.
        for attempt in 1.. {
            registry.port = free_port();
            let address = format!("127.0.0.1:{}", registry.port);
            std::fs::write(&config_path, config.replace(ADDRESS_SLOT, &address)).context("registry config")?;
            let log_file = std::fs::File::create(&registry.log).context("registry log")?;
            let child = Command::new(REGISTRY_BINARY)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().context("log handle")?)
                .stderr(log_file)
                .spawn()
                .context("starting docker-registry")?;
            registry.child = Some(child);
            match registry.wait_ready() {
                Ok(()) => break,
                Err(_) if attempt < 3 && registry.log_text().contains("address already in use") => registry.stop(),
                Err(error) => return Err(error),
            }
        }
        Ok(registry)
    }

    /// Waits (bounded) until `GET /v2/` answers 200 or 401.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = self
            .tls
            .as_ref()
            .map(|tls| Arc::new(crate::fleet::tls_client(tls.ca.cert_pem(), None)));
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("docker-registry exited at start ({status}); log:\n{}", self.log_text());
            }
            if let Some(200 | 401) = probe_status(self.port, client.clone()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "docker-registry did not answer /v2/ within {START_TIMEOUT:?}; log:\n{}",
            self.log_text()
        )
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// The PEM file of the CA that issued the registry's certificate (TLS registries).
    pub fn ca_pem_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.ca_pem_path.as_path())
    }

    /// The PEM of that CA (TLS registries).
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|tls| tls.ca.cert_pem())
    }

    /// The user and password it requires (basic-auth registries).
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// An HTTP client for this registry (trusting its CA when it speaks TLS); it sends
    /// no credentials by itself.
    pub fn http_client(&self) -> reqwest::Client {
        crate::fleet::http_client(crate::fleet::tls_client(self.ca_pem().unwrap_or_default(), None))
    }

    /// The storage root of the filesystem driver (`docker/registry/v2/...` below it).
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// Where the registry keeps the bytes of blob `digest` (`sha256:HEX`).
    pub fn blob_path(&self, digest: &str) -> anyhow::Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|hex| hex.len() == 64 && hex.bytes().all(|byte| byte.is_ascii_hexdigit()))
            .with_context(|| format!("{digest:?} is not a sha256 digest"))?;
        Ok(self
            .storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data"))
    }

    /// Flips every byte of the middle of stored blob `digest`, keeping its size, so the
    /// registry serves content that no longer matches its digest.
    pub fn corrupt_blob(&self, digest: &str) -> anyhow::Result<()> {
        let path = self.blob_path(digest)?;
        let mut bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        anyhow::ensure!(!bytes.is_empty(), "blob {digest} is empty");
        let middle = bytes.len() / 2;
        let end = (middle + 16).min(bytes.len());
        for byte in &mut bytes[middle..end] {
            *byte ^= 0xff;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    }

    /// A proxy in front of this registry that passes everything through and counts the
    /// response-body bytes of blob downloads (see [`FaultyProxy::blob_bytes`]).
    pub fn counting_proxy(&self) -> anyhow::Result<FaultyProxy> {
        FaultyProxy::start(self, None)
    }

    /// A proxy in front of this registry that drops the connection after `bytes` bytes of
    /// the body the first time each blob is downloaded (later downloads, ranged or not,
    /// pass through), and counts as [`Registry::counting_proxy`] does.
    pub fn proxy_dropping_after(&self, bytes: u64) -> anyhow::Result<FaultyProxy> {
        FaultyProxy::start(self, Some(bytes))
    }

    /// The registry's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `skopeo` options that reach this registry as a destination (`prefix` is `dest`)
    /// or a source (`src`).
    pub fn skopeo_args(&self, prefix: &str) -> Vec<String> {
        let mut args = Vec::new();
        match &self.tls {
            None => args.push(format!("--{prefix}-tls-verify=false")),
            Some(tls) => {
                args.push(format!("--{prefix}-tls-verify=true"));
                args.push(format!("--{prefix}-cert-dir"));
                args.push(tls.cert_dir.display().to_string());
            }
        }
        match &self.credentials {
            None => args.push(format!("--{prefix}-no-creds")),
            Some((user, password)) => {
                args.push(format!("--{prefix}-creds"));
                args.push(format!("{user}:{password}"));
            }
        }
        args
    }

    /// The CA, for the proxy's certificate.
    pub(crate) fn ca(&self) -> Option<&Ca> {
        self.tls.as_ref().map(|tls| &tls.ca)
    }

    /// Kills the registry (SIGKILL; it keeps nothing worth flushing).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- docker-registry log (tail) ----\n{}", tail(&self.log_text(), 60));
        }
        self.stop();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Makes a CA and a server certificate for 127.0.0.1 in `root`: `ca.pem`,
/// `server.pem` (certificate then CA), `server.key`, and `certs.d/ca.crt`.
fn write_pki(root: &Path) -> anyhow::Result<RegistryTls> {
    let now = crate::now_real();
    let (ca, _ca_key) = Ca::create(now).context("creating the registry CA")?;
    let (cert, key) = ca
        .issue_server(&["127.0.0.1".to_owned()], now)
        .context("issuing the registry certificate")?;
    let ca_pem_path = root.join("ca.pem");
    std::fs::write(&ca_pem_path, ca.cert_pem()).context("ca.pem")?;
    std::fs::write(root.join("server.pem"), format!("{cert}{}", ca.cert_pem())).context("server.pem")?;
    std::fs::write(root.join("server.key"), key).context("server.key")?;
    let cert_dir = root.join("certs.d");
    std::fs::create_dir_all(&cert_dir).context("certs.d")?;
    std::fs::write(cert_dir.join("ca.crt"), ca.cert_pem()).context("certs.d/ca.crt")?;
    Ok(RegistryTls {
        ca,
        ca_pem_path,
        cert_dir,
    })
}

/// A bcrypt htpasswd file (the only kind docker-registry accepts) from `htpasswd -Bbn`.
fn write_htpasswd(path: &Path, user: &str, password: &str) -> anyhow::Result<()> {
    let output = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .context("running htpasswd (install the Debian package apache2-utils)")?;
    if !output.status.success() {
        bail!("htpasswd failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    std::fs::write(path, output.stdout).context("writing htpasswd")
}

/// The status code of `GET /v2/` on 127.0.0.1:`port`, over TLS with `tls`; `None` if
/// nothing answered within two seconds.
fn probe_status(port: u16, tls: Option<Arc<rustls::ClientConfig>>) -> Option<u16> {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    let mut response = Vec::new();
    match tls {
        None => {
            let mut stream = stream;
            stream.write_all(request.as_bytes()).ok()?;
            let _ = stream.read_to_end(&mut response);
        }
        Some(config) => {
            let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
            let connection = rustls::ClientConnection::new(config, name).ok()?;
            let mut stream = rustls::StreamOwned::new(connection, stream);
            stream.write_all(request.as_bytes()).ok()?;
            let _ = stream.read_to_end(&mut response);
        }
    }
    let head = String::from_utf8_lossy(&response);
    let status = head.strip_prefix("HTTP/1.")?.get(2..5)?;
    status.parse().ok()
}
