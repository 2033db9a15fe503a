//! `drover release create` and `drover release list`: the spec is parsed before anything
//! else, artifacts are hashed and uploaded as streams (never held in memory), and a
//! version that exists with another artifact is refused before a long upload.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration as StdDuration;

use drover_protocol::api::{MAX_JSON_BODY, Release, ReleaseArtifact, ReleaseRequest};
use drover_protocol::manifest::HttpUrl;
use drover_protocol::{AppSpec, Artifact, Digest};
use futures_util::StreamExt as _;
use reqwest::Method;
use tokio::io::AsyncReadExt as _;

use super::{Progress, Table, emit, human_size, print_json};
use crate::blobs::MAX_ARTIFACT_BYTES;
use crate::cli::{Output, ReleaseCreateArgs, ReleaseListArgs};
use crate::client::{AdminClient, error_chain, printable};
use crate::error::Error;

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
    let source = ArtifactSource::parse(&args.artifact)?;
    // Proves the address and token work before hashing a large file, and finds a
    // version that already exists.
    let releases: Vec<Release> = client.get(&format!("/v1/admin/releases/{}", args.app)).await?;
    let existing = releases.into_iter().find(|release| release.version == args.version);

    let artifact = match source {
        ArtifactSource::File(path) => {
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
        ArtifactSource::Url(url) => {
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
    };
    let request = ReleaseRequest {
        app: args.app.clone(),
        version: args.version.clone(),
        spec,
        artifact,
    };
    let release: Release = client.send_json(Method::POST, "/v1/admin/releases", &request).await?;
    let (url, size) = match &release.artifact {
        Artifact::Tarball { url, size, .. } => (url.to_string(), human_size(*size)),
        Artifact::Oci { reference, .. } => (reference.as_str().to_owned(), "-".into()),
    };
    emit(
        out,
        &format!(
            "release {} {}\n  digest:  {}\n  size:    {size}\n  url:     {}\nDeploy it: drover pin {} {} [--group G | --host H]\n",
            release.app,
            release.version,
            release.artifact.digest(),
            printable(&url),
            release.app,
            release.version
        ),
    )
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
