//! `drover release create` and `drover release list`: the spec is parsed before anything
//! else, artifacts are hashed and uploaded as streams (never held in memory), images are
//! resolved to a digest here (see [`crate::cli::image`]), and a version that exists with
//! another artifact is refused before a long upload.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration as StdDuration;

use drover_protocol::api::MAX_ARTIFACT_BYTES;
use drover_protocol::api::{CoordinatorSettings, MAX_JSON_BODY, Release, ReleaseArtifact, ReleaseRequest};
use drover_protocol::manifest::HttpUrl;
use drover_protocol::spec::ArtifactKind;
use drover_protocol::{AppSpec, Artifact, Digest};
use futures_util::StreamExt as _;
use reqwest::Method;
use tokio::io::AsyncReadExt as _;

use super::{Progress, Table, emit, human_size, print_json};
use crate::cli::args::{Output, ReleaseCreateArgs, ReleaseListArgs};
use crate::cli::client::AdminClient;
use crate::cli::image::{self, Credentials, Platform, RegistryAccess, Resolution, Transport};
use crate::cli::push::{self, PushTarget};
use crate::error::Error;
use crate::reference::ImageRef;
use crate::text::{error_chain, printable};

/// Bytes read per step while hashing and uploading.
const CHUNK: usize = 256 * 1024;

/// Where the artifact comes from.
#[derive(Debug)]
enum ArtifactSource {
    /// A local file, uploaded to the coordinator.
    File(PathBuf),
    /// A URL hosts download from.
    Url(HttpUrl),
}

impl ArtifactSource {
    fn parse(text: &str) -> Result<ArtifactSource, Error> {
        if text.starts_with("http://") || text.starts_with("https://") {
            HttpUrl::try_from(text.to_owned())
                .map(ArtifactSource::Url)
                .map_err(|error| Error::Input(format!("--artifact: {error}")))
        } else if text.contains("://") {
            Err(Error::Input(format!(
                "--artifact {:?}: only http:// and https:// URLs, or a local file",
                printable(text)
            )))
        } else {
            Ok(ArtifactSource::File(PathBuf::from(text)))
        }
    }
}

/// Reads and checks an app spec (`drover.toml`). A parse error names the line and
/// column, after the file's path.
pub fn read_spec(path: &Path) -> Result<AppSpec, Error> {
    let bytes = match std::fs::metadata(path) {
        Ok(metadata) if metadata.len() > MAX_JSON_BODY as u64 => {
            return Err(Error::Spec {
                path: path.to_path_buf(),
                detail: format!("{} bytes is over the limit of {MAX_JSON_BODY} bytes", metadata.len()),
            });
        }
        Ok(_) => std::fs::read(path),
        Err(error) => Err(error),
    };
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound {
                path: path.to_path_buf(),
                hint: " (--spec names the app's drover.toml)",
            });
        }
        Err(source) => {
            return Err(Error::Io {
                operation: "reading",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let text = String::from_utf8(bytes).map_err(|_| Error::Spec {
        path: path.to_path_buf(),
        detail: "not UTF-8 text".into(),
    })?;
    toml::from_str(&text).map_err(|error| Error::Spec {
        path: path.to_path_buf(),
        detail: error.to_string().trim_end().to_owned(),
    })
}

/// `drover release create`.
pub async fn release_create(client: &AdminClient, args: &ReleaseCreateArgs, out: &mut dyn Write) -> Result<(), Error> {
    let spec = read_spec(&args.spec)?;
    let source = match (&args.artifact, &args.image) {
        (Some(artifact), None) => match (ArtifactSource::parse(artifact)?, push_registry(args)?) {
            (ArtifactSource::File(path), Some(target)) => Source::Pushed(path, Box::new(target)),
            (source, _) => Source::Tarball(source),
        },
        (None, Some(image)) => {
            // Refuses an explicit --registry, which would push nothing.
            push_registry(args)?;
            Source::Image(Box::new(ImageRequest::from_args(image, args)?))
        }
        // clap makes these usage errors (exit 2) before anything runs.
        (Some(_), Some(_)) | (None, None) => {
            return Err(Error::Input("give either --artifact FILE|URL or --image REF".into()));
        }
    };
    if matches!(source, Source::Tarball(ArtifactSource::Url(_))) {
        refuse_registry_flags(args, "an artifact URL is not pushed anywhere")?;
    }
    // The same check the coordinator and every agent run: refused here, before any upload.
    let kind = match source {
        Source::Tarball(_) | Source::Pushed(..) => ArtifactKind::Tarball,
        Source::Image(_) => ArtifactKind::Image,
    };
    spec.check(kind).map_err(|error| Error::Spec {
        path: args.spec.clone(),
        detail: error.to_string(),
    })?;
    if kind == ArtifactKind::Tarball {
        // An image's user is one of the image's own accounts; a tarball's is the host's.
        for warning in crate::tarball_check::account_warnings(&spec) {
            eprintln!("warning: {}: {warning}", args.spec.display());
        }
    }
    // Proves the address and token work before hashing a large file or asking a
    // registry, and finds a version that already exists.
    let releases: Vec<Release> = client.get(&format!("/v1/admin/releases/{}", args.app)).await?;
    let existing = releases.into_iter().find(|release| release.version == args.version);
    // A file and no --registry: the coordinators may name a registry of their own.
    let source = match source {
        Source::Tarball(ArtifactSource::File(path)) => match coordinators_registry(client, args).await? {
            Some(target) => Source::Pushed(path, Box::new(target)),
            None => {
                refuse_registry_flags(
                    args,
                    "nothing is pushed: give --registry REGISTRY/REPO, or start the coordinators with --artifact-registry REGISTRY/PREFIX",
                )?;
                Source::Tarball(ArtifactSource::File(path))
            }
        },
        other => other,
    };

    let mut resolved_line = None;
    let artifact = match source {
        Source::Tarball(ArtifactSource::File(path)) => {
            // The program must be in the tarball, executable, before anything is uploaded.
            check_tarball_program(&spec, &path).await?;
            let (digest, size) = hash_file(&path).await?;
            check_given(args, &digest, size, &path.display().to_string())?;
            refuse_other_artifact(args, existing.as_ref(), &digest)?;
            let stored_prefix = format!("{}/v1/artifacts/", client.address());
            let stored = existing.as_ref().is_some_and(|release| {
                matches!(&release.artifact, Artifact::Tarball { url, .. } if url.as_str().starts_with(&stored_prefix))
            });
            if stored {
                // The same version with the same digest was uploaded before: no second upload.
                eprintln!("{} is stored already", path.display());
            } else {
                upload(client, &path, &digest, size).await?;
            }
            ReleaseArtifact::StoredTarball { digest }
        }
        Source::Pushed(path, target) => {
            // The same checks as for an upload, all before anything is pushed.
            check_tarball_program(&spec, &path).await?;
            let (digest, size) = hash_file(&path).await?;
            check_given(args, &digest, size, &path.display().to_string())?;
            refuse_other_artifact(args, existing.as_ref(), &digest)?;
            let PushRequest { target, access } = *target;
            // The same tarball released without a registry is another artifact to the
            // coordinator: refused here rather than after a push.
            if let Some(release) = &existing
                && !matches!(release.artifact, Artifact::OciTarball { .. })
            {
                return Err(Error::ReleaseExists {
                    app: args.app.to_string(),
                    version: args.version.to_string(),
                    existing: format!("{} (not kept in a registry)", release.artifact.digest()),
                    wanted: format!("{digest} in {}", target.name()),
                });
            }
            let pushed = push::push_tarball(&target, &access, &path, &digest, size).await?;
            if let Some(tag) = &pushed.tag {
                eprintln!("tagged {}:{tag}", target.name());
            }
            ReleaseArtifact::RegistryTarball {
                reference: pushed.reference,
                digest,
                size,
            }
        }
        Source::Tarball(ArtifactSource::Url(url)) => {
            let (digest, size) = match (&args.digest, args.size) {
                (Some(digest), Some(size)) => (digest.clone(), size),
                (Some(digest), None) => (digest.clone(), remote_size(&url).await?),
                (None, _) => {
                    let (digest, size) = download_digest(&url).await?;
                    check_given(args, &digest, size, url.as_str())?;
                    (digest, size)
                }
            };
            refuse_other_artifact(args, existing.as_ref(), &digest)?;
            ReleaseArtifact::RemoteTarball { url, digest, size }
        }
        Source::Image(request) => {
            eprintln!("resolving {} for {}", request.image, request.platform);
            let resolution = image::resolve(&request.image, &request.platform, &request.access).await?;
            resolved_line = Some(resolved_text(&resolution));
            refuse_other_artifact(args, existing.as_ref(), &resolution.pinned.digest())?;
            ReleaseArtifact::Image {
                reference: resolution.pinned,
            }
        }
    };
    let request = ReleaseRequest {
        app: args.app.clone(),
        version: args.version.clone(),
        spec,
        artifact,
    };
    let release: Release = client.send_json(Method::POST, "/v1/admin/releases", &request).await?;
    let mut text = resolved_line.unwrap_or_default();
    match &release.artifact {
        Artifact::Tarball { url, size, .. } => text.push_str(&format!(
            "release {} {}\n  digest:  {}\n  size:    {}\n  url:     {}\n",
            release.app,
            release.version,
            release.artifact.digest(),
            human_size(*size),
            printable(url.as_str())
        )),
        Artifact::OciTarball { reference, size, .. } => text.push_str(&format!(
            "release {} {}\n  digest:  {}\n  size:    {}\n  oci:     {}\n",
            release.app,
            release.version,
            release.artifact.digest(),
            human_size(*size),
            printable(reference.as_str())
        )),
        Artifact::Oci { reference, digest } => text.push_str(&format!(
            "release {} {}\n  digest:  {digest}\n  image:   {}\n",
            release.app,
            release.version,
            printable(reference.as_str())
        )),
    }
    text.push_str(&format!(
        "Deploy it: drover pin {} {} [--group G | --host H]\n",
        release.app, release.version
    ));
    emit(out, &text)
}

/// What the release is made from.
#[derive(Debug)]
enum Source {
    /// A tar.gz.
    Tarball(ArtifactSource),
    /// A local tar.gz to push to a registry.
    Pushed(PathBuf, Box<PushRequest>),
    /// An image to resolve.
    Image(Box<ImageRequest>),
}

/// `--image` with the options that say how to resolve it, all checked before any
/// network access.
#[derive(Debug)]
struct ImageRequest {
    image: ImageRef,
    platform: Platform,
    access: RegistryAccess,
}

/// `--artifact FILE --registry REGISTRY/REPO` with the options that say how to reach
/// the registry, all checked before any network access.
#[derive(Debug)]
struct PushRequest {
    target: PushTarget,
    access: RegistryAccess,
}

/// The environment variable the registry password may come from.
const REGISTRY_PASSWORD_ENV: &str = "DROVER_REGISTRY_PASSWORD";
/// The environment variable `--registry` may come from.
const REGISTRY_ENV: &str = "DROVER_REGISTRY";

/// The registry to push `--artifact FILE` to: `--registry`, or `DROVER_REGISTRY` when the
/// artifact is a local file. A `--registry` given on the command line with `--image` or
/// an artifact URL is an error (nothing would be pushed); the environment's is ignored
/// then, so that one environment serves every kind of release.
fn push_registry(args: &ReleaseCreateArgs) -> Result<Option<PushRequest>, Error> {
    let Some(text) = &args.push_registry else {
        return Ok(None);
    };
    let from_environment = std::env::var(REGISTRY_ENV).is_ok_and(|value| &value == text);
    let is_file = args
        .artifact
        .as_deref()
        .is_some_and(|artifact| matches!(ArtifactSource::parse(artifact), Ok(ArtifactSource::File(_))));
    match (is_file, from_environment) {
        (true, _) => Ok(Some(PushRequest {
            target: PushTarget::parse(text, &args.app, &args.version)?,
            access: registry_access(args)?,
        })),
        (false, true) => Ok(None),
        (false, false) => Err(Error::Input(format!(
            "--registry {}: pushes a local --artifact FILE; an --image or an artifact URL is not pushed",
            printable(text)
        ))),
    }
}

/// The push target the coordinator names for tarballs (`drover serve --artifact-registry
/// REGISTRY/PREFIX`: the app's repository under it), reached with this machine's
/// registry access; `None` when it names none, or is a version without the setting.
async fn coordinators_registry(client: &AdminClient, args: &ReleaseCreateArgs) -> Result<Option<PushRequest>, Error> {
    let settings: CoordinatorSettings = match client.get("/v1/admin/settings").await {
        Ok(settings) => settings,
        Err(Error::Api { status: 404, .. }) => return Ok(None),
        Err(error) => return Err(error),
    };
    let Some(prefix) = settings.artifact_registry else {
        return Ok(None);
    };
    let repository = format!("{prefix}/{}", args.app);
    eprintln!("pushing to {repository}: the coordinator's --artifact-registry (give --registry to push elsewhere)");
    Ok(Some(PushRequest {
        target: PushTarget::parse(&repository, &args.app, &args.version)?,
        access: registry_access(args)?,
    }))
}

/// A usage error when a registry access flag is given for a release that reaches no
/// registry (`why`), rather than ignoring it.
fn refuse_registry_flags(args: &ReleaseCreateArgs, why: &str) -> Result<(), Error> {
    let registry = &args.registry;
    let given = [
        (registry.registry_insecure, "--registry-insecure"),
        (registry.registry_ca.is_some(), "--registry-ca"),
        (registry.registry_user.is_some(), "--registry-user"),
    ];
    match given.iter().find(|(given, _)| *given) {
        Some((_, flag)) => Err(Error::Input(format!("{flag} applies to a registry, and {why}"))),
        None => Ok(()),
    }
}

/// How to reach the registry: `--registry-insecure`, `--registry-ca`, `--registry-user`
/// with the password from its file or the environment.
fn registry_access(args: &ReleaseCreateArgs) -> Result<RegistryAccess, Error> {
    let registry = &args.registry;
    let transport = if registry.registry_insecure {
        Transport::PlainHttp
    } else {
        Transport::Https
    };
    let ca_pem = match &registry.registry_ca {
        Some(path) => Some(read_ca(path)?),
        None => None,
    };
    let credentials = match &registry.registry_user {
        None => None,
        Some(user) => {
            let password = match &registry.registry_password_file {
                Some(path) => read_password_file(path)?,
                None => match std::env::var(REGISTRY_PASSWORD_ENV) {
                    Ok(password) if !password.is_empty() => password,
                    Ok(_) | Err(_) => {
                        return Err(Error::Input(format!(
                            "--registry-user {}: no password; give --registry-password-file FILE or set {REGISTRY_PASSWORD_ENV}",
                            printable(user)
                        )));
                    }
                },
            };
            Some(Credentials {
                user: user.clone(),
                password,
            })
        }
    };
    if credentials.is_some() && transport == Transport::PlainHttp {
        return Err(Error::Input(
                "--registry-user with --registry-insecure would send the password in clear text; use the registry over TLS (--registry-ca FILE for a private CA)".into(),
            ));
    }
    Ok(RegistryAccess {
        transport,
        ca_pem,
        credentials,
    })
}

impl ImageRequest {
    fn from_args(text: &str, args: &ReleaseCreateArgs) -> Result<ImageRequest, Error> {
        let image = ImageRef::parse(text)?;
        let platform = match &args.registry.platform {
            Some(platform) => platform.parse::<Platform>()?,
            None => Platform::default(),
        };
        Ok(ImageRequest {
            image,
            platform,
            access: registry_access(args)?,
        })
    }
}

/// Reads `--registry-ca`: a PEM file with at least one certificate.
fn read_ca(path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = read_small_file(
        path,
        " (--registry-ca is a PEM file with the registry's CA certificate)",
    )?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN CERTIFICATE-----") {
        return Err(Error::Input(format!(
            "--registry-ca {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Reads `--registry-password-file`: its text without one trailing newline.
fn read_password_file(path: &Path) -> Result<String, Error> {
    let bytes = read_small_file(path, " (--registry-password-file holds the registry password)")?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::Input(format!("--registry-password-file {}: not UTF-8 text", path.display())))?;
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(Error::Input(format!(
            "--registry-password-file {}: the file is empty",
            path.display()
        )));
    }
    Ok(password.to_owned())
}

/// Reads a file of at most 1 MiB.
fn read_small_file(path: &Path, hint: &'static str) -> Result<Vec<u8>, Error> {
    let error = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                path: path.to_path_buf(),
                hint,
            }
        } else {
            Error::Io {
                operation: "reading",
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let metadata = std::fs::metadata(path).map_err(error)?;
    if metadata.len() > MAX_JSON_BODY as u64 {
        return Err(Error::Input(format!(
            "{}: {} bytes, over the limit of {MAX_JSON_BODY} bytes{hint}",
            path.display(),
            metadata.len()
        )));
    }
    std::fs::read(path).map_err(error)
}

/// `resolved REF → registry/repository@sha256:… (platform, N layers, SIZE[, from index …])`.
fn resolved_text(resolution: &Resolution) -> String {
    let from_index = match &resolution.index {
        Some(index) => format!(", from index {index}"),
        None => String::new(),
    };
    printable(&format!(
        "resolved {} → {} ({}, {} layer{}, {}{from_index})",
        resolution.requested,
        resolution.pinned.as_str(),
        resolution.platform,
        resolution.layers,
        if resolution.layers == 1 { "" } else { "s" },
        human_size(resolution.size),
    )) + "\n"
}

/// Refuses (exit 2, naming the path) a local tarball that lacks the spec's program or
/// whose program the app's user cannot execute: the same check the coordinator runs on
/// uploads ([`crate::tarball_check`]), here before the upload. A check stopped by its
/// limits is a warning.
async fn check_tarball_program(spec: &AppSpec, path: &Path) -> Result<(), Error> {
    let file = path.to_path_buf();
    let spec = spec.clone();
    let checked = tokio::task::spawn_blocking(move || {
        crate::tarball_check::check_program(&spec, || std::fs::File::open(&file).map(std::io::BufReader::new))
    })
    .await
    .map_err(|error| Error::Input(format!("checking {}: {error}", path.display())))?;
    match checked {
        Ok(crate::tarball_check::Checked::Inconclusive(reason)) => {
            eprintln!("warning: --artifact {}: {reason}", path.display());
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(crate::tarball_check::ProgramProblem::Io(_)) => {
            // Reading it again below gives the error with its cause (not found, permissions).
            Ok(())
        }
        Err(problem) => Err(Error::Input(format!("--artifact {}: {problem}", path.display()))),
    }
}

/// Checks a computed digest and size against --digest and --size.
fn check_given(args: &ReleaseCreateArgs, digest: &Digest, size: u64, what: &str) -> Result<(), Error> {
    if let Some(given) = &args.digest
        && given != digest
    {
        return Err(Error::Input(format!(
            "{what} has digest {digest}, not --digest {given}: wrong file, or a wrong --digest"
        )));
    }
    if let Some(given) = args.size
        && given != size
    {
        return Err(Error::Input(format!("{what} is {size} bytes, not --size {given}")));
    }
    Ok(())
}

/// Refuses, before uploading, a version that exists with another artifact (the
/// coordinator would refuse it after the upload).
fn refuse_other_artifact(args: &ReleaseCreateArgs, existing: Option<&Release>, digest: &Digest) -> Result<(), Error> {
    match existing {
        Some(release) if release.artifact.digest() != digest => Err(Error::ReleaseExists {
            app: args.app.to_string(),
            version: args.version.to_string(),
            existing: release.artifact.digest().to_string(),
            wanted: digest.to_string(),
        }),
        Some(_) | None => Ok(()),
    }
}

fn open_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                path,
                hint: " (--artifact is a local .tar.gz file or an http(s):// URL)",
            }
        } else {
            Error::Io {
                operation: "reading",
                path,
                source,
            }
        }
    }
}

/// The sha256 and size of a file, read as a stream.
async fn hash_file(path: &Path) -> Result<(Digest, u64), Error> {
    let mut file = tokio::fs::File::open(path).await.map_err(open_error(path))?;
    let metadata = file.metadata().await.map_err(open_error(path))?;
    if !metadata.is_file() {
        return Err(Error::Input(format!(
            "--artifact {}: not a regular file",
            path.display()
        )));
    }
    let mut progress = Progress::new(format!("hashing {}", path.display()), Some(metadata.len()));
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; CHUNK];
    let mut size: u64 = 0;
    loop {
        let read = file.read(&mut buffer).await.map_err(open_error(path))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
        progress.advance(read as u64);
    }
    progress.finish();
    Ok((Digest::from_sha256(hasher.finish().as_ref()), size))
}

/// Streams a file to the coordinator's content store.
async fn upload(client: &AdminClient, path: &Path, digest: &Digest, size: u64) -> Result<(), Error> {
    let file = tokio::fs::File::open(path).await.map_err(open_error(path))?;
    let mut progress = Progress::new(format!("uploading {}", path.display()), Some(size));
    let stream = tokio_util::io::ReaderStream::with_capacity(file, CHUNK).map(move |chunk| {
        if let Ok(bytes) = &chunk {
            progress.advance(bytes.len() as u64);
        }
        chunk
    });
    let stored = client
        .upload_artifact(digest, size, reqwest::Body::wrap_stream(stream))
        .await?;
    if &stored.digest != digest || stored.size != size {
        return Err(Error::Http {
            operation: "uploading to",
            url: client.address().to_owned(),
            detail: format!(
                "the coordinator stored {} ({} bytes), not {digest} ({size} bytes); was {} changed during the upload?",
                stored.digest,
                stored.size,
                path.display()
            ),
        });
    }
    eprintln!("uploaded {} ({})", path.display(), human_size(size));
    Ok(())
}

/// A client for artifact servers other than the coordinator: the system's CA roots.
fn remote_client(url: &HttpUrl) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .connect_timeout(StdDuration::from_secs(10))
        .read_timeout(StdDuration::from_secs(60))
        .user_agent(concat!("drover/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| Error::Http {
            operation: "setting up the HTTP client for",
            url: url.to_string(),
            detail: error_chain(&error),
        })
}

fn remote_error(operation: &'static str, url: &HttpUrl) -> impl FnOnce(reqwest::Error) -> Error {
    let url = url.to_string();
    move |error| Error::Http {
        operation,
        url,
        detail: error_chain(&error),
    }
}

fn check_status(response: &reqwest::Response, operation: &'static str, url: &HttpUrl) -> Result<(), Error> {
    if response.status().is_success() {
        Ok(())
    } else {
        Err(Error::Http {
            operation,
            url: url.to_string(),
            detail: format!("the server answered HTTP {}", response.status()),
        })
    }
}

/// The size of a remote artifact from a HEAD request's Content-Length.
async fn remote_size(url: &HttpUrl) -> Result<u64, Error> {
    let response = remote_client(url)?
        .head(url.as_str())
        .timeout(StdDuration::from_secs(60))
        .send()
        .await
        .map_err(remote_error("asking the size of", url))?;
    check_status(&response, "asking the size of", url)?;
    // Read the header itself: a HEAD answer has no body, whatever length it announces.
    response
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| {
            Error::Input(format!(
                "{url} gave no Content-Length to a HEAD request; pass --size BYTES, or leave out --digest to download it once and measure both"
            ))
        })
}

/// Downloads a remote artifact once, as a stream, for its sha256 and size (nothing is
/// stored).
async fn download_digest(url: &HttpUrl) -> Result<(Digest, u64), Error> {
    let response = remote_client(url)?
        .get(url.as_str())
        .send()
        .await
        .map_err(remote_error("downloading", url))?;
    check_status(&response, "downloading", url)?;
    let announced = response
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    let mut progress = Progress::new(format!("downloading {url} to hash it"), announced);
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size: u64 = 0;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(remote_error("downloading", url))?;
        size += chunk.len() as u64;
        if size > MAX_ARTIFACT_BYTES {
            return Err(Error::Http {
                operation: "downloading",
                url: url.to_string(),
                detail: format!("over the artifact limit of {}", human_size(MAX_ARTIFACT_BYTES)),
            });
        }
        hasher.update(&chunk);
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    Ok((Digest::from_sha256(hasher.finish().as_ref()), size))
}

/// `drover release list`.
pub async fn release_list(client: &AdminClient, args: &ReleaseListArgs, out: &mut dyn Write) -> Result<(), Error> {
    let releases: Vec<Release> = client.get(&format!("/v1/admin/releases/{}", args.app)).await?;
    if args.output == Output::Json {
        return print_json(out, &releases);
    }
    if releases.is_empty() {
        return emit(
            out,
            &format!(
                "No releases of {}. Create one: drover release create {} VERSION --spec drover.toml --artifact FILE\n",
                args.app, args.app
            ),
        );
    }
    let stored_prefix = format!("{}/v1/artifacts/", client.address());
    let mut table = Table::new(&["VERSION", "CREATED", "SIZE", "DIGEST", "SOURCE"]);
    for release in &releases {
        let (size, source) = match &release.artifact {
            Artifact::Tarball { url, size, .. } if url.as_str().starts_with(&stored_prefix) => {
                (human_size(*size), "uploaded".to_owned())
            }
            Artifact::Tarball { url, size, .. } => (human_size(*size), url.to_string()),
            Artifact::Oci { reference, .. } => ("-".into(), reference.as_str().to_owned()),
            Artifact::OciTarball { reference, size, .. } => (human_size(*size), reference.as_str().to_owned()),
        };
        let digest = release.artifact.digest();
        table.row(vec![
            release.version.to_string(),
            release.created_at.to_string(),
            size,
            format!("sha256:{}", &digest.hex()[..12]),
            source,
        ]);
    }
    emit(out, &table.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_sources() {
        assert!(matches!(
            ArtifactSource::parse("https://cdn.example.com/web.tar.gz"),
            Ok(ArtifactSource::Url(_))
        ));
        assert!(matches!(
            ArtifactSource::parse("build/web.tar.gz"),
            Ok(ArtifactSource::File(_))
        ));
        assert!(matches!(
            ArtifactSource::parse("ftp://example.com/web.tar.gz"),
            Err(Error::Input(_))
        ));
        assert!(matches!(ArtifactSource::parse("https://"), Err(Error::Input(_))));
    }
}
