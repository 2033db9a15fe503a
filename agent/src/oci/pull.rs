//! Pulling an image by digest into the artifact cache (SPEC.md §4 "Containers"): the
//! manifest, then the config, then every layer, each verified by sha256 against the digest
//! that named it and with the size its descriptor gives as a hard cap.
//!
//! - The **manifest** is asked for by the release's digest and refused unless its bytes
//!   hash to it; it is parsed here ([`super::image::parse_manifest`]), not by `oci-client`,
//!   and an index is refused (the coordinator resolves the platform). It goes into the
//!   cache too, so a release whose blobs are all cached is staged without the registry.
//! - **Blobs** stream into the same content-addressed [`Cache`] as tarballs, through its
//!   partial-file, fsync and rename steps ([`Cache::begin`], [`crate::fetch::Download`]):
//!   bounded memory, and nothing unverified under a final name. A blob already cached is
//!   not downloaded again, which is how a second release of an image downloads only its
//!   new layers ([`PulledImage::downloaded`] counts the bytes that did come). An
//!   interrupted blob resumes with a Range request from its partial file's length; a
//!   registry that answers 200 instead of 206 sends it whole and it starts over. Each blob
//!   gets [`BLOB_ATTEMPTS`] tries within one pull; after that the partial file waits for
//!   the next reconcile.
//! - **Time**: every request is held to the cache's [`crate::fetch::TransferPace`]: a
//!   blob's answer within its allowance for no bytes, its body paced by
//!   [`crate::fetch::Download::receive`], the manifest (read whole by `oci-client`) within
//!   the allowance for the largest manifest. A stalled or too slow blob is not retried
//!   within the pull; its partial file waits for the next reconcile.
//! - **Size caps**: each descriptor's size is exact; the layers together may not exceed
//!   the agent's `max_release_size` (what they unpack to is capped again when staging).
//!
//! Known limit: `oci-client` reads a manifest body whole before the agent can look at its
//! length, so a hostile registry could make one manifest fetch use memory; its length is
//! checked ([`super::image::MAX_MANIFEST_BYTES`]) before anything else is done with it.

use std::io::Read as _;
use std::path::Path;

use drover_protocol::Digest;
use drover_protocol::manifest::OciReference;
use oci_client::client::BlobResponse;

use super::image::{self, Descriptor, ImageConfig, ImageManifest};
use super::registry::{Registries, RegistryClient};
use crate::fetch::{Begun, BodyStart, Cache, FetchError, VerifiedArtifact};

/// How often one pull tries a blob whose download broke off (resuming each time).
pub const BLOB_ATTEMPTS: u32 = 3;

/// Why an image could not be pulled. Every message names the image
/// (`registry/repository@sha256:...`) and, for a blob, its digest.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry could not be reached, refused us, or answered with an error.
    #[error("pulling {image}: {detail}")]
    Registry { image: String, detail: String },
    /// What the registry sent is not something the agent runs, or does not match its digest.
    #[error("pulling {image}: {problem}")]
    Refused { image: String, problem: String },
    /// A blob could not be downloaded or verified.
    #[error("pulling {image}: {source}")]
    Blob {
        image: String,
        #[source]
        source: FetchError,
    },
    /// The agent's settings for the registry are unusable (credentials, CA file).
    #[error("pulling {image}: registry {registry}: {detail}")]
    Settings {
        image: String,
        registry: String,
        detail: String,
    },
}

/// A blob of an image, verified in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledBlob {
    /// What the manifest says about it.
    pub descriptor: Descriptor,
    /// The verified file.
    pub artifact: VerifiedArtifact,
}

/// An image whose manifest, config and layers are all in the cache and verified: what
/// [`super::stage::stage_image`] takes. Only [`pull`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledImage {
    reference: OciReference,
    manifest: VerifiedArtifact,
    config: ImageConfig,
    config_blob: PulledBlob,
    layers: Vec<PulledBlob>,
    downloaded: u64,
}

impl PulledImage {
    /// The reference it was pulled by.
    pub fn reference(&self) -> &OciReference {
        &self.reference
    }
    /// The manifest's digest.
    pub fn digest(&self) -> &Digest {
        self.manifest.digest()
    }
    /// The parsed image config.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }
    /// The config blob.
    pub fn config_blob(&self) -> &PulledBlob {
        &self.config_blob
    }
    /// The layers, bottom first.
    pub fn layers(&self) -> &[PulledBlob] {
        &self.layers
    }
    /// Bytes this pull downloaded (manifest and blobs; cached ones count nothing).
    pub fn downloaded(&self) -> u64 {
        self.downloaded
    }
}

/// Where the registry part of a reference ends: what image references and the agent
/// config call the registry (`HOST[:PORT]`), and the repository.
///
/// Built from its parts rather than parsed: `OciReference` was validated already, and
/// oci-spec's parser compiles a regular expression that costs the agent ~17 MiB of heap
/// at its peak and ~13 MiB for the rest of its life (measured with heaptrack).
fn parse_reference(reference: &OciReference) -> Result<oci_client::Reference, PullError> {
    let refused = |problem: &str| PullError::Refused {
        image: reference.as_str().to_owned(),
        problem: problem.to_owned(),
    };
    let (name, digest) = reference
        .as_str()
        .rsplit_once('@')
        .ok_or_else(|| refused("the reference has no @digest"))?;
    let (registry, repository) = name
        .split_once('/')
        .filter(|(registry, repository)| !registry.is_empty() && !repository.is_empty())
        .ok_or_else(|| refused("the reference names no registry (registry/repository@digest)"))?;
    Ok(oci_client::Reference::with_digest(
        registry.to_owned(),
        repository.to_owned(),
        digest.to_owned(),
    ))
}

/// The registry client, made only once something has to come from the registry, so a
/// fully cached image is staged with the registry down and without reading credentials.
struct Remote<'a> {
    registries: &'a Registries,
    reference: &'a oci_client::Reference,
    image: &'a str,
    client: Option<RegistryClient>,
}

impl Remote<'_> {
    async fn client(&mut self) -> Result<RegistryClient, PullError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let registry = self.reference.registry();
        let client = self.registries.client(registry).map_err(|detail| PullError::Settings {
            image: self.image.to_owned(),
            registry: registry.to_owned(),
            detail,
        })?;
        // Blob requests find the credentials only where the client stored them.
        client
            .client
            .store_auth_if_needed(self.reference.resolve_registry(), &client.auth)
            .await;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// `request` within `limit`: a registry that does not answer in time is an error
    /// naming the step, as a registry that answered with an error is.
    async fn bounded<T>(
        &self,
        what: &str,
        limit: std::time::Duration,
        request: impl Future<Output = Result<T, oci_client::errors::OciDistributionError>>,
    ) -> Result<T, PullError> {
        match tokio::time::timeout(limit, request).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(self.registry_error(what, &error)),
            Err(_) => Err(PullError::Registry {
                image: self.image.to_owned(),
                detail: format!(
                    "{what} from registry {}: no complete answer within {limit:?}; will retry",
                    self.reference.registry()
                ),
            }),
        }
    }

    fn registry_error(&self, what: &str, error: &oci_client::errors::OciDistributionError) -> PullError {
        PullError::Registry {
            image: self.image.to_owned(),
            detail: format!(
                "{what} from registry {}: {}",
                self.reference.registry(),
                crate::error::chain(error)
            ),
        }
    }
}

/// Pulls the image `reference` (pinned to `digest`) into `cache`: manifest, config and
/// layers, each verified. `max_layers_size` bounds the layers' sizes together.
pub async fn pull(
    registries: &Registries,
    cache: &Cache,
    reference: &OciReference,
    digest: &Digest,
    max_layers_size: u64,
) -> Result<PulledImage, PullError> {
    let image = reference.as_str().to_owned();
    let refused = |problem: String| PullError::Refused {
        image: image.clone(),
        problem,
    };
    if &reference.digest() != digest {
        return Err(refused(format!(
            "the reference is not pinned to the release's digest {digest}"
        )));
    }
    let parsed = parse_reference(reference)?;
    let mut remote = Remote {
        registries,
        reference: &parsed,
        image: &image,
        client: None,
    };
    let mut downloaded = 0u64;

    // The manifest: from the cache, else from the registry by digest.
    let manifest_bytes = match read_cached(cache, digest, image::MAX_MANIFEST_BYTES) {
        Some(bytes) => bytes,
        None => {
            let client = remote.client().await?;
            // Read whole by oci-client, so bounded whole: the pace's allowance for the
            // largest manifest the agent reads.
            let (bytes, _) = remote
                .bounded(
                    "fetching the manifest",
                    cache.pace().allowance(image::MAX_MANIFEST_BYTES),
                    client
                        .client
                        .pull_manifest_raw(&parsed, &client.auth, &image::ACCEPTED_MANIFEST_TYPES),
                )
                .await?;
            if bytes.len() as u64 > image::MAX_MANIFEST_BYTES {
                return Err(refused(format!(
                    "the manifest is {} bytes, more than the {} the agent reads",
                    bytes.len(),
                    image::MAX_MANIFEST_BYTES
                )));
            }
            let actual = Digest::of(&bytes);
            if &actual != digest {
                return Err(refused(format!(
                    "the registry sent a manifest with digest {actual}, the release names {digest}; refused"
                )));
            }
            downloaded += bytes.len() as u64;
            bytes.to_vec()
        }
    };
    let manifest = image::parse_manifest(&manifest_bytes).map_err(refused)?;
    if manifest.layers_size() > max_layers_size {
        return Err(refused(format!(
            "its layers are {} bytes together, more than this agent's max_release_size of {max_layers_size}",
            manifest.layers_size()
        )));
    }
    let manifest_blob = cache
        .store(&format!("manifest {digest}"), digest, &manifest_bytes)
        .await
        .map_err(|source| PullError::Blob {
            image: image.clone(),
            source,
        })?;

    let (config_blob, count) = fetch_blob(&mut remote, cache, &manifest.config).await?;
    downloaded += count;
    let config_bytes = read_cached(cache, &manifest.config.digest, image::MAX_CONFIG_BYTES).ok_or_else(|| {
        refused(format!(
            "the config blob {} vanished from the cache",
            manifest.config.digest
        ))
    })?;
    let config = image::parse_config(&config_bytes, image::host_architecture())
        .map_err(|problem| refused(format!("config {}: {problem}", manifest.config.digest)))?;

    let mut layers = Vec::with_capacity(manifest.layers.len());
    for layer in &manifest.layers {
        let (blob, count) = fetch_blob(&mut remote, cache, layer).await?;
        downloaded += count;
        layers.push(blob);
    }
    Ok(PulledImage {
        reference: reference.clone(),
        manifest: manifest_blob,
        config,
        config_blob,
        layers,
        downloaded,
    })
}

/// A tarball kept in a registry, verified in the cache: what
/// [`crate::install::stage`] takes, as a tarball downloaded from a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledTarball {
    /// The verified tar.gz.
    pub artifact: VerifiedArtifact,
    /// Bytes this fetch downloaded (the artifact manifest and the tar.gz; 0 when cached).
    pub downloaded: u64,
}

/// Fetches the tar.gz that release artifact `reference` (an OCI artifact pushed by
/// `drover release create --artifact FILE --registry …`) holds as its one layer, into
/// `cache`: the artifact manifest by the reference's digest, refused unless its bytes hash
/// to it and it names exactly the layer `digest` of `size` bytes
/// ([`drover_protocol::oci::check_tarball_artifact_manifest`]); then that layer by digest,
/// streamed, sha256-verified, resumable and paced as every blob. A tar.gz already in the
/// cache is taken without asking the registry. `max_size` is the agent's
/// `max_release_size`: a bigger tarball is refused before anything is downloaded.
pub async fn pull_tarball(
    registries: &Registries,
    cache: &Cache,
    reference: &OciReference,
    digest: &Digest,
    size: u64,
    max_size: u64,
) -> Result<PulledTarball, PullError> {
    let image = reference.as_str().to_owned();
    let refused = |problem: String| PullError::Refused {
        image: image.clone(),
        problem,
    };
    if size > max_size {
        return Err(refused(format!(
            "the tarball is {size} bytes, more than this agent's max_release_size of {max_size}"
        )));
    }
    let layer = Descriptor {
        media_type: drover_protocol::oci::MEDIA_TYPE_TARBALL_LAYER.to_owned(),
        digest: digest.clone(),
        size,
    };
    if let Some(artifact) = cache.cached(digest, size) {
        return Ok(PulledTarball {
            artifact,
            downloaded: 0,
        });
    }
    let parsed = parse_reference(reference)?;
    let mut remote = Remote {
        registries,
        reference: &parsed,
        image: &image,
        client: None,
    };
    let manifest_digest = reference.digest();
    let client = remote.client().await?;
    let limit = drover_protocol::oci::MAX_TARBALL_ARTIFACT_MANIFEST_BYTES;
    let (bytes, _digest_the_registry_claims) = remote
        .bounded(
            "fetching the artifact manifest",
            cache.pace().allowance(limit),
            client
                .client
                .pull_manifest_raw(&parsed, &client.auth, &[drover_protocol::oci::MEDIA_TYPE_OCI_MANIFEST]),
        )
        .await?;
    if bytes.len() as u64 > limit {
        return Err(refused(format!(
            "the artifact manifest is {} bytes, more than the {limit} a tarball artifact needs",
            bytes.len()
        )));
    }
    let actual = Digest::of(&bytes);
    if actual != manifest_digest {
        return Err(refused(format!(
            "the registry sent an artifact manifest with digest {actual}, the release names {manifest_digest}; refused"
        )));
    }
    drover_protocol::oci::check_tarball_artifact_manifest(&bytes, digest, size).map_err(&refused)?;
    let (blob, count) = fetch_blob(&mut remote, cache, &layer).await?;
    Ok(PulledTarball {
        artifact: blob.artifact,
        downloaded: bytes.len() as u64 + count,
    })
}

/// One blob into the cache unless it is there; returns it and the bytes downloaded.
async fn fetch_blob(
    remote: &mut Remote<'_>,
    cache: &Cache,
    descriptor: &Descriptor,
) -> Result<(PulledBlob, u64), PullError> {
    let digest = &descriptor.digest;
    let name = format!("blob {digest}");
    let blob_error = |source| PullError::Blob {
        image: remote.image.to_owned(),
        source,
    };
    let mut downloaded = 0;
    let mut attempt = 1;
    loop {
        let download = match cache.begin(&name, digest, descriptor.size).await.map_err(blob_error)? {
            Begun::Cached(artifact) => {
                return Ok((
                    PulledBlob {
                        descriptor: descriptor.clone(),
                        artifact,
                    },
                    downloaded,
                ));
            }
            Begun::Download(download) => download,
        };
        let client = remote.client().await?;
        // The answer (after a token exchange, perhaps) within the pace's allowance for no
        // bytes; the body is paced by `receive`.
        let what = format!("fetching blob {digest}");
        let answer = cache.pace().allowance(0);
        let response = if download.offset() > 0 {
            let request =
                client
                    .client
                    .pull_blob_stream_partial(remote.reference, digest.as_str(), download.offset(), None);
            remote.bounded(&what, answer, request).await?
        } else {
            let request = client.client.pull_blob_stream(remote.reference, digest.as_str());
            BlobResponse::Full(remote.bounded(&what, answer, request).await?)
        };
        let (body, start) = match response {
            BlobResponse::Full(body) => (body, BodyStart::Beginning),
            BlobResponse::Partial(body) => (body, BodyStart::Offset),
        };
        let offset = download.offset();
        match download.receive(body, start).await {
            Ok(received) => {
                downloaded += received.downloaded;
                return Ok((
                    PulledBlob {
                        descriptor: descriptor.clone(),
                        artifact: received.artifact,
                    },
                    downloaded,
                ));
            }
            Err(FetchError::Truncated { received, .. }) if attempt < BLOB_ATTEMPTS => {
                downloaded += received.saturating_sub(if start == BodyStart::Offset { offset } else { 0 });
                tracing::warn!(
                    "{}: blob {digest} broke off after {received} of {} bytes; resuming (attempt {} of {BLOB_ATTEMPTS})",
                    remote.image,
                    descriptor.size,
                    attempt + 1
                );
                attempt += 1;
            }
            Err(error) => return Err(blob_error(error)),
        }
    }
}

/// The bytes of cached blob `digest` when the cache has it, at most `limit` of them, and
/// they still hash to it (a small blob is cheap to check again before it is parsed).
fn read_cached(cache: &Cache, digest: &Digest, limit: u64) -> Option<Vec<u8>> {
    let file = std::fs::File::open(cache.path_of(digest)).ok()?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).ok()?;
    (bytes.len() as u64 <= limit && &Digest::of(&bytes) == digest).then_some(bytes)
}

/// The cached manifest of image `digest`, parsed, if the cache has it.
fn cached_manifest(cache: &Cache, digest: &Digest) -> Option<ImageManifest> {
    let bytes = read_cached(cache, digest, image::MAX_MANIFEST_BYTES)?;
    image::parse_manifest(&bytes).ok()
}

/// Whether the cache holds image `digest` whole: its manifest and every blob it names,
/// each with its exact size. Only then may the reconcile plan skip the pull.
pub fn is_cached(cache: &Cache, digest: &Digest) -> bool {
    cached_manifest(cache, digest).is_some_and(|manifest| {
        manifest.blobs().all(|blob| {
            std::fs::metadata(cache.path_of(&blob.digest)).is_ok_and(|metadata| metadata.len() == blob.size)
        })
    })
}

/// The cache blobs image `digest` needs as far as the cache knows: the manifest, and
/// when it is cached, the config and layers it names (their partial downloads too).
pub fn cached_blobs(cache: &Cache, digest: &Digest) -> Vec<Digest> {
    let mut blobs = vec![digest.clone()];
    if let Some(manifest) = cached_manifest(cache, digest) {
        blobs.extend(manifest.blobs().map(|blob| blob.digest.clone()));
    }
    blobs
}

/// The blobs a staged OCI release came from, from its `image.json` (none for a tarball
/// release, or one whose record cannot be read).
pub fn release_blobs(release_dir: &Path) -> Vec<Digest> {
    std::fs::read(release_dir.join(image::ImageRecord::FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<image::ImageRecord>(&bytes).ok())
        .map(|record| record.blobs().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{RegistryConfig, RegistryCredentials, RegistryTransport};
    use crate::oci::testing::{Entry, TestImage, TestRegistry, crypto, layer};

    const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/app"]}}"#;

    /// A layer of about `size` bytes that gzip cannot shrink (so cuts land mid-blob).
    fn big_layer(name: &str, size: usize, seed: u8) -> Vec<u8> {
        let mut state = u32::from(seed) + 1;
        let bytes: Vec<u8> = (0..size)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        layer(&[Entry::File(name, &bytes, 0o644)])
    }

    fn three_layers() -> TestImage {
        TestImage::new(
            CONFIG,
            vec![
                big_layer("base", 200_000, 1),
                big_layer("libs", 100_000, 2),
                big_layer("app", 50_000, 3),
            ],
        )
    }

    fn cached_files(cache: &Cache, image: &TestImage) -> Vec<bool> {
        std::iter::once(&image.manifest)
            .chain(std::iter::once(&image.config))
            .chain(&image.layers)
            .map(|bytes| cache.path_of(&Digest::of(bytes)).is_file())
            .collect()
    }

    #[tokio::test]
    async fn pulls_manifest_config_and_layers_into_the_cache() {
        crypto();
        let registry = TestRegistry::start().await;
        let image = three_layers();
        registry.push(&image);
        let directory = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(directory.path().join("cache"));
        let reference = registry.reference("web", &image.digest);
        let pulled = pull(&registry.plain_http(), &cache, &reference, &image.digest, 1 << 30)
            .await
            .expect("pulled");
        assert_eq!(pulled.digest(), &image.digest);
        assert_eq!(pulled.config().cmd, ["/bin/app"]);
        assert_eq!(pulled.layers().len(), 3);
        assert_eq!(pulled.downloaded(), image.manifest.len() as u64 + image.blob_bytes());
        assert_eq!(cached_files(&cache, &image), [true; 5]);
        assert!(is_cached(&cache, &image.digest));
        assert_eq!(cached_blobs(&cache, &image.digest).len(), 5);
        for blob in pulled.layers() {
            assert_eq!(
                Digest::of(&std::fs::read(blob.artifact.path()).expect("read")),
                blob.descriptor.digest
            );
        }
        // Everything cached: no request at all, not even for the manifest.
        let before = registry.requests().len();
        let again = pull(&registry.plain_http(), &cache, &reference, &image.digest, 1 << 30)
            .await
            .expect("pulled again");
        assert_eq!(again.downloaded(), 0);
        assert_eq!(registry.requests().len(), before);
    }

    #[tokio::test]
    async fn a_second_release_downloads_only_its_new_layer() {
        crypto();
        let registry = TestRegistry::start().await;
        let first = three_layers();
        let mut layers = first.layers.clone();
        layers[2] = big_layer("app", 50_000, 4);
        let second = TestImage::new(CONFIG, layers);
        registry.push(&first);
        registry.push(&second);
        let directory = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(directory.path().join("cache"));
        let registries = registry.plain_http();
        let reference = registry.reference("web", &first.digest);
        pull(&registries, &cache, &reference, &first.digest, 1 << 30)
            .await
            .expect("first");
        let sent = registry.blob_bytes_sent();
        let reference = registry.reference("web", &second.digest);
        let pulled = pull(&registries, &cache, &reference, &second.digest, 1 << 30)
            .await
            .expect("second");
        let new_layer = second.layers[2].len() as u64;
        assert_eq!(
            registry.blob_bytes_sent() - sent,
            new_layer,
            "only the new layer crossed the wire"
        );
        assert_eq!(pulled.downloaded(), second.manifest.len() as u64 + new_layer);
    }

    #[tokio::test]
    async fn an_interrupted_blob_resumes_with_a_range_request() {
        crypto();
        let registry = TestRegistry::start().await;
        let image = three_layers();
        registry.push(&image);
        let base = Digest::of(&image.layers[0]);
        registry.cut_next(&base, 70_000);
        let directory = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(directory.path().join("cache"));
        let reference = registry.reference("web", &image.digest);
        let pulled = pull(&registry.plain_http(), &cache, &reference, &image.digest, 1 << 30)
            .await
            .expect("resumed within the pull");
        assert!(
            registry
                .requests()
                .iter()
                .any(|request| request.ends_with(&format!("/blobs/{base} bytes=70000-"))),
            "{:#?}",
            registry.requests()
        );
        assert_eq!(
            registry.blob_bytes_sent(),
            image.blob_bytes(),
            "the resumed blob's bytes came once"
        );
        assert_eq!(pulled.downloaded(), image.manifest.len() as u64 + image.blob_bytes());
        assert!(is_cached(&cache, &image.digest));
    }

    #[tokio::test]
    async fn a_registry_that_ignores_range_sends_the_blob_again() {
        crypto();
        let registry = TestRegistry::start().await;
        let image = three_layers();
        registry.push(&image);
        registry.ignore_range();
        let base = Digest::of(&image.layers[0]);
        registry.cut_next(&base, 70_000);
        let directory = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(directory.path().join("cache"));
        let reference = registry.reference("web", &image.digest);
        pull(&registry.plain_http(), &cache, &reference, &image.digest, 1 << 30)
            .await
            .expect("started over");
        assert_eq!(registry.blob_bytes_sent(), image.blob_bytes() + 70_000);
        assert_eq!(
            Digest::of(&std::fs::read(cache.path_of(&base)).expect("read")),
            base,
            "the partial was not appended to"
        );
    }

    #[tokio::test]
    async fn a_blob_that_keeps_breaking_off_is_kept_for_the_next_pull() {
        crypto();
        let registry = TestRegistry::start().await;
        let image = three_layers();
        registry.push(&image);
        let base = Digest::of(&image.layers[0]);
        let directory = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(directory.path().join("cache"));
        let reference = registry.reference("web", &image.digest);
        let registries = registry.plain_http();
        registry.cut_every(&base, Some(10_000));
        let error = pull(&registries, &cache, &reference, &image.digest, 1 << 30)
            .await
            .expect_err("every try breaks off");
        let tries = registry
            .requests()
            .iter()
            .filter(|request| request.contains(&format!("/blobs/{base}")))
            .count();
        assert_eq!(tries, BLOB_ATTEMPTS as usize);
        registry.cut_every(&base, None);
        let message = error.to_string();
        assert!(message.contains(&format!("blob {base}")), "{message}");
        assert!(message.contains("will resume"), "{message}");
        assert!(message.contains(reference.as_str()), "names the image: {message}");
        assert!(!cache.path_of(&base).exists(), "nothing unverified under its digest");
        // The next pull goes on from the partial file.
        let pulled = pull(&registries, &cache, &reference, &image.digest, 1 << 30)
            .await
            .expect("finished later");
        let resumed_at = 10_000 * BLOB_ATTEMPTS as usize;
        assert!(
            registry
                .requests()
                .iter()
                .any(|request| request.ends_with(&format!("/blobs/{base} bytes={resumed_at}-"))),
            "{:#?}",
            registry.requests()
        );
        assert_eq!(
            pulled.downloaded(),
            image.blob_bytes() - image.config.len() as u64 - resumed_at as u64,
            "the manifest and config were cached, the partial layer resumed"
        );
    }

    #[tokio::test]
    async fn content_that_does_not_match_its_digest_is_refused_and_not_kept() {
        crypto();
        let registry = TestRegistry::start().await;
        let image = three_layers();
        registry.push(&image);
        let base = Digest::of(&image.layers[0]);
        let mut tampered = image.layers[0].clone();
        let middle = tampered.len() / 2;
        tampered[middle] ^= 0xff;
        registry.put_blob(&base, &tampered);
        let directory = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(directory.path().join("cache"));
        let reference = registry.reference("web", &image.digest);
        let error = pull(&registry.plain_http(), &cache, &reference, &image.digest, 1 << 30)
            .await
            .expect_err("tampered layer");
        assert!(
            matches!(
                &error,
                PullError::Blob {
                    source: FetchError::DigestMismatch { .. },
                    ..
                }
            ),
            "{error}"
        );
        assert!(!cache.path_of(&base).exists());
        let leftovers: Vec<_> = std::fs::read_dir(directory.path().join("cache"))
            .expect("cache")
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(leftovers.is_empty(), "the bad partial is deleted");

        // A manifest that is not the one the release names.
        let other = TestImage::new(CONFIG, vec![image.layers[1].clone()]);
        registry.put_manifest(&image.digest, &other.manifest);
        let cache = Cache::new(directory.path().join("cache2"));
        let error = pull(&registry.plain_http(), &cache, &reference, &image.digest, 1 << 30)
            .await
            .expect_err("moved manifest");
        assert!(error.to_string().contains(image.digest.as_str()), "{error}");
        assert!(!cache.path_of(&image.digest).exists());
    }

    #[tokio::test]
    async fn an_index_or_an_oversized_image_is_refused() {
        crypto();
        let registry = TestRegistry::start().await;
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#,
            image::MEDIA_TYPE_OCI_INDEX
        );
        let digest = Digest::of(index.as_bytes());
        registry.put_manifest(&digest, index.as_bytes());
        let directory = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(directory.path().join("cache"));
        let reference = registry.reference("web", &digest);
        let error = pull(&registry.plain_http(), &cache, &reference, &digest, 1 << 30)
            .await
            .expect_err("index");
        assert!(error.to_string().contains(image::INDEX_REFUSED), "{error}");

        let image = three_layers();
        registry.push(&image);
        let reference = registry.reference("web", &image.digest);
        let error = pull(&registry.plain_http(), &cache, &reference, &image.digest, 100_000)
            .await
            .expect_err("too large");
        assert!(error.to_string().contains("max_release_size"), "{error}");
        assert_eq!(registry.blob_bytes_sent(), 0, "refused before any blob");
    }

    #[tokio::test]
    async fn basic_auth_comes_from_the_password_file() {
        use std::os::unix::fs::PermissionsExt as _;
        crypto();
        let registry = TestRegistry::start().await;
        let image = TestImage::new(CONFIG, vec![big_layer("app", 1000, 5)]);
        registry.push(&image);
        registry.require_basic("deploy", "s3cret");
        let directory = tempfile::tempdir().expect("tempdir");
        let password = directory.path().join("password");
        std::fs::write(&password, "s3cret\n").expect("write");
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let cache = Cache::new(directory.path().join("cache"));
        let reference = registry.reference("web", &image.digest);
        let error = pull(&registry.plain_http(), &cache, &reference, &image.digest, 1 << 30)
            .await
            .expect_err("anonymous is refused");
        assert!(matches!(error, PullError::Registry { .. }), "{error}");
        assert!(
            error.to_string().contains(&registry.address),
            "names the registry: {error}"
        );
        // The agent's config never allows credentials over plain HTTP; the client
        // plumbing is the same over TLS, which the end-to-end suite covers.
        let configs = BTreeMap::from([(
            registry.address.clone(),
            RegistryConfig {
                transport: RegistryTransport::PlainHttp,
                ca_file: None,
                credentials: RegistryCredentials::Basic {
                    username: "deploy".into(),
                    password_file: password,
                },
            },
        )]);
        pull(
            &Registries::new(configs, &[]),
            &cache,
            &reference,
            &image.digest,
            1 << 30,
        )
        .await
        .expect("authenticated");
    }

    #[tokio::test]
    async fn a_missing_blob_names_registry_repository_and_digest() {
        crypto();
        let registry = TestRegistry::start().await;
        let image = three_layers();
        registry.put_manifest(&image.digest, &image.manifest);
        let directory = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(directory.path().join("cache"));
        let reference = registry.reference("team/web", &image.digest);
        let error = pull(&registry.plain_http(), &cache, &reference, &image.digest, 1 << 30)
            .await
            .expect_err("no blobs");
        let message = error.to_string();
        let config = Digest::of(&image.config);
        for part in [
            registry.address.as_str(),
            "team/web",
            image.digest.as_str(),
            config.as_str(),
        ] {
            assert!(message.contains(part), "{message} should name {part}");
        }
        // The manifest was fine and stays cached; the image as a whole is not.
        assert!(cache.path_of(&image.digest).is_file());
        assert!(!is_cached(&cache, &image.digest));
    }
    /// A tar.gz pushed as `drover release create --artifact FILE --registry` pushes it:
    /// the tarball and the artifact manifest naming it.
    fn tarball_artifact() -> (Vec<u8>, Vec<u8>) {
        let tarball = big_layer("bin/app", 100_000, 7);
        let manifest = drover_protocol::oci::tarball_artifact_manifest(&Digest::of(&tarball), tarball.len() as u64);
        (tarball, manifest)
    }

    #[tokio::test]
    async fn a_tarball_kept_in_a_registry_is_fetched_by_digest_into_the_cache() {
        crypto();
        let registry = TestRegistry::start().await;
        let (tarball, manifest) = tarball_artifact();
        let (digest, size) = (Digest::of(&tarball), tarball.len() as u64);
        registry.put_manifest(&Digest::of(&manifest), &manifest);
        registry.put_blob(&digest, &tarball);
        let directory = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(directory.path().join("cache"));
        let reference = registry.reference("drover/web", &Digest::of(&manifest));
        let pulled = pull_tarball(&registry.plain_http(), &cache, &reference, &digest, size, 1 << 30)
            .await
            .expect("fetched");
        assert_eq!(pulled.artifact.digest(), &digest);
        assert_eq!(std::fs::read(pulled.artifact.path()).expect("read"), tarball);
        assert_eq!(pulled.downloaded, manifest.len() as u64 + size);
        // Cached: taken without a request to the registry.
        let before = registry.requests().len();
        let again = pull_tarball(&registry.plain_http(), &cache, &reference, &digest, size, 1 << 30)
            .await
            .expect("fetched again");
        assert_eq!(again.downloaded, 0);
        assert_eq!(registry.requests().len(), before);
    }

    #[tokio::test]
    async fn a_tampered_tarball_blob_is_refused_and_nothing_is_cached() {
        crypto();
        let registry = TestRegistry::start().await;
        let (tarball, manifest) = tarball_artifact();
        let (digest, size) = (Digest::of(&tarball), tarball.len() as u64);
        registry.put_manifest(&Digest::of(&manifest), &manifest);
        // The registry serves other bytes of the same size for the tarball's digest.
        let mut tampered = tarball.clone();
        let middle = tampered.len() / 2;
        tampered[middle] ^= 0xff;
        registry.put_blob(&digest, &tampered);
        let directory = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(directory.path().join("cache"));
        let reference = registry.reference("drover/web", &Digest::of(&manifest));
        let error = pull_tarball(&registry.plain_http(), &cache, &reference, &digest, size, 1 << 30)
            .await
            .expect_err("tampered");
        assert!(
            matches!(
                &error,
                PullError::Blob {
                    source: FetchError::DigestMismatch { .. },
                    ..
                }
            ),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains(reference.as_str()) && message.contains("refused"),
            "{message}"
        );
        assert!(
            !cache.path_of(&digest).exists(),
            "nothing unverified under the final name"
        );
        assert!(
            std::fs::read_dir(directory.path().join("cache"))
                .expect("cache")
                .next()
                .is_none(),
            "no partial file kept of bytes that hash wrong"
        );
    }

    #[tokio::test]
    async fn an_artifact_manifest_naming_another_layer_is_refused_before_any_blob() {
        crypto();
        let registry = TestRegistry::start().await;
        let (tarball, _) = tarball_artifact();
        let (digest, size) = (Digest::of(&tarball), tarball.len() as u64);
        let other = big_layer("bin/evil", 100_000, 8);
        let other_manifest = drover_protocol::oci::tarball_artifact_manifest(&Digest::of(&other), other.len() as u64);
        registry.put_manifest(&Digest::of(&other_manifest), &other_manifest);
        registry.put_blob(&Digest::of(&other), &other);
        registry.put_blob(&digest, &tarball);
        let directory = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(directory.path().join("cache"));
        let reference = registry.reference("drover/web", &Digest::of(&other_manifest));
        let error = pull_tarball(&registry.plain_http(), &cache, &reference, &digest, size, 1 << 30)
            .await
            .expect_err("another layer");
        let message = error.to_string();
        assert!(matches!(error, PullError::Refused { .. }), "{message}");
        assert!(message.contains("the release names the tarball"), "{message}");
        assert!(
            registry.blob_bytes_sent() == 0,
            "no blob was asked for: {:?}",
            registry.requests()
        );
        assert!(!cache.path_of(&digest).exists() && !cache.path_of(&Digest::of(&other)).exists());
    }

    #[tokio::test]
    async fn an_artifact_manifest_that_is_not_the_pinned_one_or_too_big_is_refused() {
        crypto();
        let registry = TestRegistry::start().await;
        let (tarball, manifest) = tarball_artifact();
        let (digest, size) = (Digest::of(&tarball), tarball.len() as u64);
        // The registry serves a different (valid-looking) manifest under the pinned digest.
        let pinned = Digest::of(&manifest);
        let mut swapped = manifest.clone();
        swapped.extend_from_slice(b" ");
        registry.put_manifest(&pinned, &swapped);
        registry.put_blob(&digest, &tarball);
        let directory = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(directory.path().join("cache"));
        let reference = registry.reference("drover/web", &pinned);
        let error = pull_tarball(&registry.plain_http(), &cache, &reference, &digest, size, 1 << 30)
            .await
            .expect_err("swapped manifest");
        // oci-client checks the digest of a manifest fetched by digest too; either way the
        // message names what was asked for, and no blob is fetched.
        assert!(error.to_string().contains(pinned.as_str()), "{error}");
        assert_eq!(registry.blob_bytes_sent(), 0);
        assert!(!cache.path_of(&digest).exists());
        // Bigger than this agent's max_release_size: refused before any request.
        let before = registry.requests().len();
        let error = pull_tarball(&registry.plain_http(), &cache, &reference, &digest, size, size - 1)
            .await
            .expect_err("too big");
        assert!(error.to_string().contains("max_release_size"), "{error}");
        assert_eq!(registry.requests().len(), before);
        assert_eq!(registry.blob_bytes_sent(), 0);
    }
}
