//! Resolving an OCI image reference to what drover deploys: `registry/repo@sha256:…` of
//! one platform's image manifest. Runs in the operator's CLI (`drover release create
//! --image REF`): the operator's machine talks to the registry, the coordinator server
//! never does, and hosts only ever see the digest.
//!
//! The pure parts (reference and platform parsing, manifest and index parsing, the
//! platform choice, the media type and size checks) are separate functions with their
//! own tests; [`resolve`] is the network edge around them.
//!
//! **Invariant:** every digest this module reports is the sha256 it computed over the
//! bytes it received, compared with the digest it asked for. A registry's
//! `Docker-Content-Digest` header is never trusted.
//!
//! References name their registry: `registry.example.com/team/web:1.4`,
//! `127.0.0.1:5000/web@sha256:…`, `localhost/web:2`. Docker's short names (`nginx:1.25`,
//! `team/web:1`) are refused rather than expanded to Docker Hub: a deploy tool should not
//! guess where code comes from. Docker Hub is `docker.io/library/nginx:1.25`
//! (`docker.io/nginx:1.25` is expanded to that, as Docker does). A reference needs a tag or
//! a digest; there is no implicit `:latest`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use drover_protocol::Digest;
use drover_protocol::manifest::OciReference;
use futures_util::StreamExt as _;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::Value;

use crate::error::ImageError;
use crate::reference::ImageRef;
use crate::text::{error_chain, printable};

// The media types and limits the agents apply too (one definition in drover-protocol).
pub use drover_protocol::oci::{
    APPLICABLE_LAYERS, MAX_IMAGE_CONFIG_BYTES as MAX_CONFIG_BYTES, MAX_IMAGE_LAYERS as MAX_LAYERS,
    MEDIA_TYPE_DOCKER_CONFIG as DOCKER_CONFIG, MEDIA_TYPE_DOCKER_LIST as DOCKER_LIST,
    MEDIA_TYPE_DOCKER_MANIFEST as DOCKER_MANIFEST, MEDIA_TYPE_OCI_CONFIG as OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX as OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST as OCI_MANIFEST,
};

/// The manifest media types asked for (`Accept`).
const ACCEPTED_MANIFESTS: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Largest manifest or index accepted, as a length.
pub const MAX_MANIFEST_BYTES: usize = drover_protocol::oci::MAX_IMAGE_MANIFEST_BYTES as usize;

// --- Platforms ----------------------------------------------------------------------

/// A platform: `linux/amd64`, `linux/arm64/v8`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v7`, `v8`, ...
    pub variant: Option<String>,
}

impl Default for Platform {
    /// linux/amd64, what hosts run unless the operator says otherwise.
    fn default() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl FromStr for Platform {
    type Err = ImageError;

    /// `OS/ARCH[/VARIANT]`; `x86_64` and `aarch64` are taken for `amd64` and `arm64`.
    fn from_str(text: &str) -> Result<Platform, ImageError> {
        let bad = |problem: &str| ImageError::BadPlatform {
            text: printable(text),
            problem: problem.to_owned(),
        };
        let part_ok = |part: &str| {
            (1..=32).contains(&part.len())
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        };
        let parts: Vec<&str> = text.split('/').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad(
                "not OS/ARCH or OS/ARCH/VARIANT, e.g. linux/amd64 or linux/arm64/v8",
            ));
        }
        if !parts.iter().all(|part| part_ok(part)) {
            return Err(bad("each part is 1 to 32 of a-z, 0-9, '.', '_', '-'"));
        }
        let architecture = match parts[1] {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: architecture.to_owned(),
            variant: parts.get(2).map(|variant| (*variant).to_owned()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// Whether an image for `candidate` runs where `self` is wanted. A missing variant
    /// means the architecture's baseline (`arm64` is `arm64/v8`, `arm` is `arm/v7`), as
    /// containerd reads it.
    pub fn accepts(&self, candidate: &Platform) -> bool {
        fn variant(platform: &Platform) -> Option<&str> {
            match (platform.architecture.as_str(), platform.variant.as_deref()) {
                ("arm64", None) => Some("v8"),
                ("arm", None) => Some("v7"),
                (_, variant) => variant,
            }
        }
        self.os == candidate.os && self.architecture == candidate.architecture && variant(self) == variant(candidate)
    }
}

// --- Manifests ----------------------------------------------------------------------

/// A descriptor: what a manifest or index says about another blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Its media type.
    pub media_type: String,
    /// Its sha256.
    pub digest: Digest,
    /// Its exact size in bytes.
    pub size: u64,
    /// The platform an index entry is for.
    pub platform: Option<Platform>,
}

/// An image manifest: a config and layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageManifest {
    /// OCI or Docker schema 2.
    pub media_type: String,
    /// The image config.
    pub config: Descriptor,
    /// The layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// A manifest as fetched: an image, or an index of images per platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Document {
    /// An image manifest.
    Image(ImageManifest),
    /// An OCI image index or a Docker manifest list.
    Index(Vec<Descriptor>),
}

/// Parses manifest bytes into an image manifest or an index. The `mediaType` field
/// decides; without one (allowed in OCI documents) the shape does.
pub fn parse_document(bytes: &[u8]) -> Result<Document, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|error| format!("not a JSON manifest ({error})"))?;
    let object = value.as_object().ok_or("the manifest is not a JSON object")?;
    match object.get("schemaVersion").and_then(Value::as_u64) {
        Some(2) => {}
        Some(1) => {
            return Err(
                "is a Docker schema 1 manifest (deprecated, not content-addressable); push the image again with a current tool"
                    .into(),
            );
        }
        _ => return Err("the manifest has no schemaVersion 2".into()),
    }
    let media_type = match object.get("mediaType") {
        None => None,
        Some(Value::String(media_type)) => Some(media_type.as_str()),
        Some(_) => return Err("the manifest's mediaType is not a string".into()),
    };
    let is_index = match media_type {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => {
            return Err(format!(
                "has media type {}, neither an image manifest nor an image index",
                printable(other)
            ));
        }
        None if object.contains_key("manifests") => true,
        None if object.contains_key("config") => false,
        None => return Err("is neither an image manifest nor an image index".into()),
    };
    if is_index {
        let entries = object
            .get("manifests")
            .and_then(Value::as_array)
            .ok_or("the index has no manifests list")?;
        let entries = entries
            .iter()
            .enumerate()
            .map(|(number, entry)| {
                descriptor(entry).map_err(|problem| format!("index entry {}: {problem}", number + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Document::Index(entries));
    }
    let config = descriptor(object.get("config").ok_or("the manifest has no config")?)
        .map_err(|problem| format!("config: {problem}"))?;
    let layers = object
        .get("layers")
        .and_then(Value::as_array)
        .ok_or("the manifest has no layers list")?
        .iter()
        .enumerate()
        .map(|(number, layer)| descriptor(layer).map_err(|problem| format!("layer {}: {problem}", number + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Document::Image(ImageManifest {
        media_type: media_type.unwrap_or(OCI_MANIFEST).to_owned(),
        config,
        layers,
    }))
}

/// One descriptor object.
fn descriptor(value: &Value) -> Result<Descriptor, String> {
    let text = |field: &str| {
        value
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no {field}"))
    };
    let media_type = text("mediaType")?.to_owned();
    let digest = text("digest")?;
    let digest = digest.parse::<Digest>().map_err(|_| {
        format!(
            "digest {} is not sha256:<64 lowercase hex digits> (other algorithms are not supported)",
            printable(digest)
        )
    })?;
    let size = value
        .get("size")
        .and_then(Value::as_u64)
        .ok_or("no size (a whole number of bytes)")?;
    let platform = match value.get("platform") {
        None | Some(Value::Null) => None,
        Some(platform) => {
            let part = |field: &str| platform.get(field).and_then(Value::as_str).map(str::to_owned);
            match (part("os"), part("architecture")) {
                (Some(os), Some(architecture)) => Some(Platform {
                    os,
                    architecture,
                    variant: part("variant"),
                }),
                _ => return Err("platform without os and architecture".into()),
            }
        }
    };
    Ok(Descriptor {
        media_type,
        digest,
        size,
        platform,
    })
}

/// The entry of an index to deploy for `wanted`: the first image manifest whose platform
/// it accepts. None: the platforms the index has, for the error.
pub fn choose_platform<'a>(entries: &'a [Descriptor], wanted: &Platform) -> Result<&'a Descriptor, String> {
    let is_image = |entry: &Descriptor| matches!(entry.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST);
    if let Some(entry) = entries
        .iter()
        .find(|entry| is_image(entry) && entry.platform.as_ref().is_some_and(|platform| wanted.accepts(platform)))
    {
        return Ok(entry);
    }
    let mut available: Vec<String> = entries
        .iter()
        .filter(|entry| is_image(entry))
        .filter_map(|entry| entry.platform.as_ref())
        // BuildKit lists its attestations as unknown/unknown.
        .filter(|platform| platform.os != "unknown")
        .map(|platform| printable(&platform.to_string()))
        .collect();
    available.dedup();
    Err(if available.is_empty() {
        "no images for any platform".into()
    } else {
        available.join(", ")
    })
}

/// Checks that an image manifest is a container image the agent can apply: an image
/// config, at least one layer, every layer a tarball type the agent knows, no empty blobs.
pub fn check_image(manifest: &ImageManifest) -> Result<(), String> {
    let config = &manifest.config;
    if config.media_type != OCI_CONFIG && config.media_type != DOCKER_CONFIG {
        return Err(format!(
            "its config has media type {}: not a container image (an OCI artifact?)",
            printable(&config.media_type)
        ));
    }
    if config.size == 0 || config.size > MAX_CONFIG_BYTES {
        return Err(format!(
            "its config is {} bytes; an image config is 1 to {MAX_CONFIG_BYTES} bytes",
            config.size
        ));
    }
    if manifest.layers.is_empty() {
        return Err("it has no layers: nothing to run".into());
    }
    if manifest.layers.len() > MAX_LAYERS {
        return Err(format!(
            "it has {} layers, more than the {MAX_LAYERS} drover accepts",
            manifest.layers.len()
        ));
    }
    for (number, layer) in manifest.layers.iter().enumerate() {
        let number = number + 1;
        if layer.media_type.contains("zstd") {
            return Err(format!(
                "layer {number} is zstd-compressed ({}), which drover agents cannot apply yet; push the image with gzip layers",
                printable(&layer.media_type)
            ));
        }
        if !APPLICABLE_LAYERS.contains(&layer.media_type.as_str()) {
            return Err(format!(
                "layer {number} has media type {}, not a layer drover agents apply (tar or tar+gzip)",
                printable(&layer.media_type)
            ));
        }
        if layer.size == 0 {
            return Err(format!("layer {number} ({}) is empty", layer.digest));
        }
    }
    Ok(())
}

/// What the image config says that matters here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFacts {
    /// The platform the image was built for.
    pub platform: Platform,
    /// How many layer diff ids it lists (one per layer).
    pub diff_ids: usize,
}

/// Parses an image config.
pub fn parse_config(bytes: &[u8]) -> Result<ConfigFacts, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|error| format!("its config is not JSON ({error})"))?;
    let text = |field: &str| value.get(field).and_then(Value::as_str).map(str::to_owned);
    let (Some(os), Some(architecture)) = (text("os"), text("architecture")) else {
        return Err("its config names no os and architecture".into());
    };
    let diff_ids = value
        .get("rootfs")
        .and_then(|rootfs| rootfs.get("diff_ids"))
        .and_then(Value::as_array)
        .ok_or("its config has no rootfs.diff_ids")?
        .len();
    Ok(ConfigFacts {
        platform: Platform {
            os,
            architecture,
            variant: text("variant"),
        },
        diff_ids,
    })
}

/// Checks the config against the manifest and the wanted platform.
pub fn check_config(facts: &ConfigFacts, manifest: &ImageManifest, wanted: &Platform) -> Result<(), String> {
    if facts.diff_ids != manifest.layers.len() {
        return Err(format!(
            "its config lists {} layer diff ids for {} layers",
            facts.diff_ids,
            manifest.layers.len()
        ));
    }
    let built_for = &facts.platform;
    // A config without a variant says nothing against one asked for.
    let comparable = Platform {
        variant: built_for.variant.clone().or_else(|| wanted.variant.clone()),
        ..built_for.clone()
    };
    if !wanted.accepts(&comparable) {
        return Err(format!(
            "it is built for {}, not {wanted}; push an image (or an index entry) for {wanted}, or name the platform with --platform",
            printable(&built_for.to_string())
        ));
    }
    Ok(())
}

// --- The registry -------------------------------------------------------------------

/// How the registry is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS, verified against the system's roots plus `--registry-ca`.
    Https,
    /// Plain HTTP (`--registry-insecure`): only for a registry on loopback or a private
    /// network.
    PlainHttp,
}

/// Basic-auth credentials for the registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub user: String,
    /// The password (never printed).
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Everything needed to reach the registry.
#[derive(Clone, Debug)]
pub struct RegistryAccess {
    /// HTTPS or plain HTTP.
    pub transport: Transport,
    /// Extra CA certificates (PEM) to trust, e.g. a private registry's.
    pub ca_pem: Option<Vec<u8>>,
    /// Basic-auth credentials; none: anonymous (or a token the registry hands out).
    pub credentials: Option<Credentials>,
}

impl RegistryAccess {
    pub(crate) fn client(&self, registry: &str) -> Result<Client, ImageError> {
        let protocol = match self.transport {
            Transport::Https => ClientProtocol::Https,
            Transport::PlainHttp => ClientProtocol::HttpsExcept(vec![registry.to_owned()]),
        };
        let extra_root_certificates = self
            .ca_pem
            .iter()
            .map(|pem| Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.clone(),
            })
            .collect();
        let config = ClientConfig {
            protocol,
            extra_root_certificates,
            platform_resolver: None,
            connect_timeout: Some(StdDuration::from_secs(10)),
            read_timeout: Some(StdDuration::from_secs(60)),
            user_agent: concat!("drover/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        // `Client::new` would fall back to a default client on an error, silently
        // dropping the CA and the transport; `try_from` says what is wrong.
        Client::try_from(config).map_err(|error| ImageError::Setup {
            detail: error_chain(&error),
        })
    }

    pub(crate) fn auth(&self) -> RegistryAuth {
        match &self.credentials {
            Some(credentials) => RegistryAuth::Basic(credentials.user.clone(), credentials.password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// What to suggest when the connection itself failed.
    fn connection_hint(&self) -> &'static str {
        match (self.transport, &self.ca_pem) {
            (Transport::Https, None) => {
                " (a registry with a private CA needs --registry-ca FILE; one speaking plain HTTP needs --registry-insecure)"
            }
            (Transport::Https, Some(_)) => " (is --registry-ca the CA that issued the registry's certificate?)",
            (Transport::PlainHttp, _) => " (--registry-insecure speaks plain HTTP; leave it out for a TLS registry)",
        }
    }
}

/// What an image reference resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// What was asked for.
    pub requested: ImageRef,
    /// `registry/repository@sha256:…` of the platform's image manifest.
    pub pinned: OciReference,
    /// The digest of the image index it was chosen from, if it came from one.
    pub index: Option<Digest>,
    /// The platform the image is for (from its config).
    pub platform: Platform,
    /// How many layers it has.
    pub layers: usize,
    /// Config plus compressed layers, in bytes: what a host downloads at most.
    pub size: u64,
}

/// Resolves `image` to the digest of its image manifest for `wanted`: fetches the
/// manifest (by tag or digest) and checks its sha256; through an index, picks the
/// platform's entry and fetches and checks that; checks the manifest is a container image
/// the agent can apply and that its config (fetched, sha256 checked) is for `wanted`.
pub async fn resolve(image: &ImageRef, wanted: &Platform, access: &RegistryAccess) -> Result<Resolution, ImageError> {
    let requested = image.requested().ok_or_else(|| ImageError::BadReference {
        text: image.to_string(),
        problem: "names neither a tag nor a digest".into(),
    })?;
    let client = access.client(&image.registry)?;
    let auth = access.auth();
    let top = fetch_manifest(&client, &auth, access, &requested, &image.to_string()).await?;
    let top_digest = Digest::of(&top);
    if let Some(expected) = &image.digest
        && expected != &top_digest
    {
        return Err(ImageError::DigestMismatch {
            reference: image.to_string(),
            expected: expected.clone(),
            actual: top_digest,
        });
    }
    let not_an_image = |reference: String| move |problem: String| ImageError::NotAnImage { reference, problem };
    let (manifest, digest, index) = match parse_document(&top).map_err(not_an_image(image.to_string()))? {
        Document::Image(manifest) => (manifest, top_digest, None),
        Document::Index(entries) => {
            let entry = choose_platform(&entries, wanted).map_err(|available| ImageError::NoPlatform {
                reference: image.to_string(),
                wanted: wanted.to_string(),
                available,
            })?;
            let pinned = image.pinned(&entry.digest);
            let bytes =
                fetch_manifest(&client, &auth, access, &image.by_digest(&entry.digest), pinned.as_str()).await?;
            let digest = Digest::of(&bytes);
            if digest != entry.digest {
                return Err(ImageError::DigestMismatch {
                    reference: pinned.as_str().to_owned(),
                    expected: entry.digest.clone(),
                    actual: digest,
                });
            }
            if bytes.len() as u64 != entry.size {
                return Err(ImageError::NotAnImage {
                    reference: pinned.as_str().to_owned(),
                    problem: format!("is {} bytes, but the index says {}", bytes.len(), entry.size),
                });
            }
            match parse_document(&bytes).map_err(not_an_image(pinned.as_str().to_owned()))? {
                Document::Image(manifest) if manifest.media_type == entry.media_type => {
                    (manifest, digest, Some(top_digest))
                }
                Document::Image(manifest) => {
                    return Err(ImageError::NotAnImage {
                        reference: pinned.as_str().to_owned(),
                        problem: format!(
                            "is a {}, but the index says {}",
                            printable(&manifest.media_type),
                            printable(&entry.media_type)
                        ),
                    });
                }
                Document::Index(_) => {
                    return Err(ImageError::NotAnImage {
                        reference: pinned.as_str().to_owned(),
                        problem: "is another index, not an image (nested indexes are not supported)".into(),
                    });
                }
            }
        }
    };
    let pinned = image.pinned(&digest);
    check_image(&manifest).map_err(not_an_image(pinned.as_str().to_owned()))?;
    let config = fetch_config(&client, access, image, &manifest.config).await?;
    let facts = parse_config(&config).map_err(not_an_image(pinned.as_str().to_owned()))?;
    check_config(&facts, &manifest, wanted).map_err(not_an_image(pinned.as_str().to_owned()))?;
    let size = manifest
        .layers
        .iter()
        .fold(manifest.config.size, |total, layer| total.saturating_add(layer.size));
    Ok(Resolution {
        requested: image.clone(),
        pinned,
        index,
        platform: facts.platform,
        layers: manifest.layers.len(),
        size,
    })
}

/// Fetches a manifest's raw bytes (at most [`MAX_MANIFEST_BYTES`]).
async fn fetch_manifest(
    client: &Client,
    auth: &RegistryAuth,
    access: &RegistryAccess,
    reference: &Reference,
    shown: &str,
) -> Result<Vec<u8>, ImageError> {
    let (bytes, _digest_the_registry_claims) = client
        .pull_manifest_raw(reference, auth, &ACCEPTED_MANIFESTS)
        .await
        .map_err(|error| registry_error(error, "fetching the manifest of", shown, access))?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ImageError::NotAnImage {
            reference: shown.to_owned(),
            problem: format!(
                "its manifest is {} bytes, over the limit of {MAX_MANIFEST_BYTES}",
                bytes.len()
            ),
        });
    }
    Ok(bytes.to_vec())
}

/// Fetches the image config blob: at most its descriptor's size, sha256 checked.
async fn fetch_config(
    client: &Client,
    access: &RegistryAccess,
    image: &ImageRef,
    config: &Descriptor,
) -> Result<Vec<u8>, ImageError> {
    let shown = format!("{}@{}", image.name(), config.digest);
    let reference = image.by_digest(&config.digest);
    let error = |error| registry_error(error, "fetching the image config", &shown, access);
    let mut stream = client
        .pull_blob_stream(&reference, config.digest.as_str())
        .await
        .map_err(error)?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| ImageError::Registry {
            operation: "fetching the image config",
            reference: shown.clone(),
            detail: error_chain(&source),
            hint: "",
        })?;
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > config.size {
            return Err(ImageError::NotAnImage {
                reference: shown,
                problem: format!(
                    "the registry sent more than the {} bytes the manifest says",
                    config.size
                ),
            });
        }
    }
    let actual = Digest::of(&bytes);
    if actual != config.digest || bytes.len() as u64 != config.size {
        return Err(ImageError::DigestMismatch {
            reference: shown,
            expected: config.digest.clone(),
            actual,
        });
    }
    Ok(bytes)
}

/// Sorts a registry client error into what the operator can act on.
pub(crate) fn registry_error(
    error: OciDistributionError,
    operation: &'static str,
    shown: &str,
    access: &RegistryAccess,
) -> ImageError {
    let reference = shown.to_owned();
    let credentials_hint = if access.credentials.is_some() {
        "check --registry-user and the password (--registry-password-file or DROVER_REGISTRY_PASSWORD)"
    } else {
        "give credentials with --registry-user and --registry-password-file (or DROVER_REGISTRY_PASSWORD)"
    };
    match &error {
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            ImageError::Unauthorized {
                reference,
                detail: error_chain(&error),
                hint: credentials_hint,
            }
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|error| &error.code).collect();
            let detail = printable(&envelope.to_string());
            if codes.iter().any(|code| {
                matches!(
                    code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                ImageError::NotFound { reference, detail }
            } else if codes
                .iter()
                .any(|code| matches!(code, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ImageError::Unauthorized {
                    reference,
                    detail,
                    hint: credentials_hint,
                }
            } else {
                ImageError::Registry {
                    operation,
                    reference,
                    detail,
                    hint: "",
                }
            }
        }
        OciDistributionError::ServerError { code: 404, .. } | OciDistributionError::ImageManifestNotFoundError(_) => {
            ImageError::NotFound {
                reference,
                detail: error_chain(&error),
            }
        }
        OciDistributionError::ServerError { code: 401 | 403, .. } => ImageError::Unauthorized {
            reference,
            detail: error_chain(&error),
            hint: credentials_hint,
        },
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => ImageError::Registry {
            operation,
            reference,
            detail: error_chain(&error),
            hint: access.connection_hint(),
        },
        _ => ImageError::Registry {
            operation,
            reference,
            detail: error_chain(&error),
            hint: "",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::check_pinned;

    fn digest(byte: &str) -> Digest {
        format!("sha256:{}", byte.repeat(64)).parse().expect("digest")
    }

    #[test]
    fn references_name_their_registry_and_a_tag_or_digest() {
        let image = ImageRef::parse("127.0.0.1:5000/web:2").expect("tagged");
        assert_eq!(
            image,
            ImageRef {
                registry: "127.0.0.1:5000".into(),
                repository: "web".into(),
                tag: Some("2".into()),
                digest: None,
            }
        );
        assert_eq!(image.to_string(), "127.0.0.1:5000/web:2");

        let pinned = format!("registry.example.com/team/web-app@{}", digest("a"));
        let image = ImageRef::parse(&pinned).expect("pinned");
        assert_eq!(image.repository, "team/web-app");
        assert_eq!(image.tag, None);
        assert_eq!(image.digest, Some(digest("a")));
        assert_eq!(image.pinned(&digest("a")).as_str(), pinned);

        let both = ImageRef::parse(&format!("Registry.Example.com:443/a/b/c:v1.2_x@{}", digest("b"))).expect("both");
        assert_eq!(both.registry, "registry.example.com:443");
        assert_eq!(both.tag.as_deref(), Some("v1.2_x"));
        assert_eq!(both.digest, Some(digest("b")));

        assert_eq!(
            ImageRef::parse("localhost/web:1").expect("localhost").registry,
            "localhost"
        );
        let hub = ImageRef::parse("docker.io/nginx:1.25").expect("hub");
        assert_eq!(hub.name(), "docker.io/library/nginx");
        assert_eq!(
            ImageRef::parse("docker.io/bitnami/nginx:1").expect("hub").name(),
            "docker.io/bitnami/nginx"
        );
        for good in ["r.io/a__b:1", "r.io/a--b:1", "r.io/a.b_c-d/e:1", "r.io/x:A_b.c-D"] {
            assert!(ImageRef::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn references_that_are_refused() {
        let refused = |text: &str| match ImageRef::parse(text) {
            Err(ImageError::BadReference { problem, .. }) => problem,
            other => panic!("{text:?} was not refused: {other:?}"),
        };
        assert!(refused("nginx:1.25").contains("names no registry"));
        assert!(refused("team/web:1").contains("docker.io/team/web:TAG"));
        assert!(refused("nginx:1.25").contains("docker.io/library/nginx:TAG"));
        assert!(refused("registry.example.com/web").contains("no implicit :latest"));
        assert!(refused("127.0.0.1:5000/web").contains("neither a tag nor a digest"));
        assert!(refused("r.io/web@sha256:abc").contains("not a digest"));
        assert!(refused(&format!("r.io/web@sha512:{}", "a".repeat(128))).contains("not a digest"));
        assert!(refused("[::1]:5000/web:1").contains("IPv6"));
        assert!(refused("r.io:0/web:1").contains("port"));
        assert!(refused("r.io:99999/web:1").contains("port"));
        assert!(refused("-r.io/web:1").contains("host"));
        for bad in [
            "",
            "r.io/Web:1",
            "r.io/web:-1",
            "r.io/web:",
            "r.io//web:1",
            "r.io/web/:1",
            "r.io/.web:1",
            "r.io/web.:1",
            "r.io/we___b:1",
            "r.io/web:1 2",
            "r.io/web:1\n",
            "r.io/web..x:1",
        ] {
            assert!(
                matches!(ImageRef::parse(bad), Err(ImageError::BadReference { .. })),
                "{bad:?}"
            );
        }
        let long = format!("r.io/{}:1", "a".repeat(300));
        assert!(refused(&long).contains("longer than"));
        assert!(refused(&format!("r.io/web:{}", "t".repeat(129))).contains("tag"));
    }

    #[test]
    fn release_requests_carry_canonical_pinned_references() {
        let reference = |text: String| OciReference::try_from(text).expect("OCI reference");
        assert_eq!(
            check_pinned(&reference(format!("127.0.0.1:5000/web@{}", digest("a")))),
            Ok(())
        );
        let hub = check_pinned(&reference(format!("docker.io/nginx@{}", digest("a")))).expect_err("not canonical");
        assert!(hub.contains("docker.io/library/nginx@"), "{hub}");
        let short = check_pinned(&reference(format!("nginx@{}", digest("a")))).expect_err("short");
        assert!(short.contains("names no registry"), "{short}");
        let tagged = check_pinned(&reference(format!("r.io/web:1@{}", digest("a")))).expect_err("tagged");
        assert!(tagged.contains("digest alone"), "{tagged}");
    }

    #[test]
    fn platforms_parse_and_match_like_containerd() {
        let platform = |text: &str| text.parse::<Platform>().expect(text);
        assert_eq!(Platform::default().to_string(), "linux/amd64");
        assert_eq!(platform("linux/arm64/v8").to_string(), "linux/arm64/v8");
        assert_eq!(platform("linux/x86_64"), platform("linux/amd64"));
        assert_eq!(platform("linux/aarch64"), platform("linux/arm64"));
        for bad in [
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "Linux/amd64",
            "linux/amd 64",
        ] {
            assert!(
                matches!(bad.parse::<Platform>(), Err(ImageError::BadPlatform { .. })),
                "{bad}"
            );
        }
        assert!(platform("linux/amd64").accepts(&platform("linux/amd64")));
        assert!(!platform("linux/amd64").accepts(&platform("linux/arm64")));
        assert!(!platform("linux/amd64").accepts(&platform("windows/amd64")));
        assert!(!platform("linux/amd64").accepts(&platform("linux/amd64/v3")));
        assert!(platform("linux/arm64").accepts(&platform("linux/arm64/v8")));
        assert!(platform("linux/arm64/v8").accepts(&platform("linux/arm64")));
        assert!(platform("linux/arm").accepts(&platform("linux/arm/v7")));
        assert!(!platform("linux/arm").accepts(&platform("linux/arm/v6")));
        assert!(platform("linux/arm/v6").accepts(&platform("linux/arm/v6")));
    }

    fn image_manifest(media_type: &str, config_type: &str, layers: &[(&str, u64)]) -> Value {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": config_type, "digest": digest("c").to_string(), "size": 120},
            "layers": layers.iter().map(|(media_type, size)| serde_json::json!({
                "mediaType": media_type, "digest": digest("d").to_string(), "size": size,
            })).collect::<Vec<_>>(),
        })
    }

    fn index(entries: &[(&str, &str, Option<&str>, &str)]) -> Vec<Descriptor> {
        let document = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": entries.iter().map(|(media_type, os, variant, hex)| {
                let (os, architecture) = os.split_once('/').expect("os/arch");
                let mut platform = serde_json::json!({"os": os, "architecture": architecture});
                if let Some(variant) = variant {
                    platform["variant"] = (*variant).into();
                }
                serde_json::json!({
                    "mediaType": media_type, "digest": digest(hex).to_string(), "size": 500,
                    "platform": platform,
                })
            }).collect::<Vec<_>>(),
        });
        match parse_document(&serde_json::to_vec(&document).expect("json")).expect("index") {
            Document::Index(entries) => entries,
            Document::Image(_) => panic!("not an index"),
        }
    }

    #[test]
    fn documents_are_told_apart_by_media_type_or_shape() {
        let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
        let bytes = serde_json::to_vec(&image_manifest(DOCKER_MANIFEST, DOCKER_CONFIG, &[(gzip, 10)])).expect("json");
        let Document::Image(manifest) = parse_document(&bytes).expect("image") else {
            panic!("not an image");
        };
        assert_eq!(manifest.media_type, DOCKER_MANIFEST);
        assert_eq!(manifest.config.size, 120);
        assert_eq!(manifest.layers.len(), 1);

        let mut without_type = image_manifest(OCI_MANIFEST, OCI_CONFIG, &[(gzip, 10)]);
        without_type.as_object_mut().expect("object").remove("mediaType");
        let parsed = parse_document(&serde_json::to_vec(&without_type).expect("json")).expect("image");
        assert!(matches!(parsed, Document::Image(manifest) if manifest.media_type == OCI_MANIFEST));

        let untyped_index = br#"{"schemaVersion": 2, "manifests": []}"#;
        assert_eq!(parse_document(untyped_index), Ok(Document::Index(Vec::new())));
        let list = format!(r#"{{"schemaVersion": 2, "mediaType": "{DOCKER_LIST}", "manifests": []}}"#);
        assert_eq!(parse_document(list.as_bytes()), Ok(Document::Index(Vec::new())));

        for (bad, expected) in [
            (&b"not json"[..], "not a JSON manifest"),
            (br#"[1]"#, "not a JSON object"),
            (br#"{"schemaVersion": 1, "fsLayers": []}"#, "schema 1"),
            (br#"{"schemaVersion": 2, "mediaType": "text/html"}"#, "text/html"),
            (br#"{"schemaVersion": 2}"#, "neither"),
            (
                br#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}"#,
                "no config",
            ),
        ] {
            let problem = parse_document(bad).expect_err(expected);
            assert!(problem.contains(expected), "{problem} lacks {expected}");
        }
        let negative = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest("c").to_string(), "size": -1},
            "layers": [],
        });
        let problem = parse_document(&serde_json::to_vec(&negative).expect("json")).expect_err("negative size");
        assert!(problem.contains("size"), "{problem}");
        let sha512 = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": format!("sha512:{}", "a".repeat(128)), "size": 1},
            "layers": [],
        });
        let problem = parse_document(&serde_json::to_vec(&sha512).expect("json")).expect_err("sha512");
        assert!(problem.contains("other algorithms"), "{problem}");
    }

    #[test]
    fn the_index_entry_for_the_platform_is_chosen() {
        let entries = index(&[
            (OCI_MANIFEST, "linux/arm64", Some("v8"), "1"),
            (OCI_MANIFEST, "linux/amd64", None, "2"),
            (OCI_MANIFEST, "linux/amd64", None, "3"),
            (OCI_MANIFEST, "unknown/unknown", None, "4"),
        ]);
        let chosen = choose_platform(&entries, &Platform::default()).expect("amd64");
        assert_eq!(chosen.digest, digest("2"), "the first matching entry wins");
        let arm = choose_platform(&entries, &"linux/arm64".parse().expect("platform")).expect("arm64");
        assert_eq!(arm.digest, digest("1"));

        let missing = choose_platform(&entries, &"linux/s390x".parse().expect("platform")).expect_err("none");
        assert_eq!(missing, "linux/arm64/v8, linux/amd64");

        // Only image manifests are candidates: a nested index for amd64 is passed over.
        let nested = index(&[
            (OCI_INDEX, "linux/amd64", None, "5"),
            (OCI_MANIFEST, "linux/arm64", None, "6"),
        ]);
        assert_eq!(
            choose_platform(&nested, &Platform::default()).expect_err("none"),
            "linux/arm64"
        );
        assert_eq!(
            choose_platform(&[], &Platform::default()).expect_err("empty"),
            "no images for any platform"
        );
    }

    #[test]
    fn images_the_agent_cannot_apply_are_refused() {
        let manifest = |config_type: &str, layers: &[(&str, u64)]| {
            let bytes = serde_json::to_vec(&image_manifest(OCI_MANIFEST, config_type, layers)).expect("json");
            match parse_document(&bytes).expect("manifest") {
                Document::Image(manifest) => manifest,
                Document::Index(_) => panic!("not an image"),
            }
        };
        let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
        let docker = "application/vnd.docker.image.rootfs.diff.tar.gzip";
        let tar = "application/vnd.oci.image.layer.v1.tar";
        assert_eq!(
            check_image(&manifest(OCI_CONFIG, &[(gzip, 10), (docker, 5), (tar, 1)])),
            Ok(())
        );
        assert_eq!(check_image(&manifest(DOCKER_CONFIG, &[(gzip, 10)])), Ok(()));
        let refused = |config_type: &str, layers: &[(&str, u64)], expected: &str| {
            let problem = check_image(&manifest(config_type, layers)).expect_err(expected);
            assert!(problem.contains(expected), "{problem} lacks {expected}");
        };
        refused(
            "application/vnd.cncf.helm.config.v1+json",
            &[(gzip, 10)],
            "not a container image",
        );
        refused(OCI_CONFIG, &[], "no layers");
        refused(OCI_CONFIG, &[(gzip, 10), (gzip, 0)], "layer 2");
        refused(
            OCI_CONFIG,
            &[("application/vnd.oci.image.layer.v1.tar+zstd", 10)],
            "zstd",
        );
        refused(OCI_CONFIG, &[("application/octet-stream", 10)], "not a layer");
        let many: Vec<(&str, u64)> = vec![(gzip, 1); MAX_LAYERS + 1];
        refused(OCI_CONFIG, &many, "layers, more than");
    }

    #[test]
    fn the_config_must_fit_the_manifest_and_the_platform() {
        let manifest = ImageManifest {
            media_type: OCI_MANIFEST.into(),
            config: Descriptor {
                media_type: OCI_CONFIG.into(),
                digest: digest("c"),
                size: 100,
                platform: None,
            },
            layers: vec![
                Descriptor {
                    media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                    digest: digest("d"),
                    size: 10,
                    platform: None,
                };
                2
            ],
        };
        let config = |platform: &str, diff_ids: usize| {
            let (os, architecture) = platform.split_once('/').expect("os/arch");
            let ids: Vec<String> = (0..diff_ids).map(|_| digest("e").to_string()).collect();
            serde_json::to_vec(&serde_json::json!({
                "os": os, "architecture": architecture, "rootfs": {"type": "layers", "diff_ids": ids},
            }))
            .expect("json")
        };
        let facts = parse_config(&config("linux/amd64", 2)).expect("config");
        assert_eq!(facts.platform, Platform::default());
        assert_eq!(check_config(&facts, &manifest, &Platform::default()), Ok(()));

        let arm = parse_config(&config("linux/arm64", 2)).expect("config");
        let problem = check_config(&arm, &manifest, &Platform::default()).expect_err("arm64");
        assert!(problem.contains("built for linux/arm64, not linux/amd64"), "{problem}");
        assert_eq!(
            check_config(&arm, &manifest, &"linux/arm64/v8".parse().expect("platform")),
            Ok(())
        );

        let short = parse_config(&config("linux/amd64", 1)).expect("config");
        assert!(check_config(&short, &manifest, &Platform::default()).is_err());
        assert!(parse_config(br#"{"os": "linux"}"#).is_err());
        assert!(parse_config(br#"{"os": "linux", "architecture": "amd64"}"#).is_err());
    }

    #[test]
    fn credentials_never_print_their_password() {
        let credentials = Credentials {
            user: "ci".into(),
            password: "hunter2".into(),
        };
        let access = RegistryAccess {
            transport: Transport::Https,
            ca_pem: None,
            credentials: Some(credentials),
        };
        let shown = format!("{access:?}");
        assert!(shown.contains("ci") && !shown.contains("hunter2"), "{shown}");
    }
}
