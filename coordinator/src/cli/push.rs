//! Pushing a release's tar.gz into an OCI registry (`drover release create --artifact FILE
//! --registry REGISTRY/REPO`): coordinators that share no disk keep their artifacts where
//! operators already keep them, and hosts fetch them there by digest.
//!
//! What is pushed is an OCI artifact (image-spec 1.1): the empty config blob `{}`, the
//! tar.gz as the one layer (streamed from the file, never held in memory), and an image
//! manifest with `artifactType` [`drover_protocol::oci::ARTIFACT_TYPE_TARBALL`], built by
//! [`drover_protocol::oci::tarball_artifact_manifest`], the same definition the agent
//! checks against. The manifest is tagged `APP-VERSION` so that people and registry
//! retention see it; the release is pinned by its digest alone.
//!
//! **Invariant** (as for `--image`, [`crate::cli::image`]): the digest the release records
//! is the sha256 this machine computed over the manifest bytes it sent, and it is read
//! back from the registry by that digest and hashed again before the release is created.
//! A registry's `Location` or `Docker-Content-Digest` header is never trusted. The layer's
//! digest is the one computed over the file; the registry refuses an upload whose bytes
//! do not hash to it (a file changed while being pushed).
//!
//! Blobs the repository has already are not sent again: pushing the same tarball twice
//! uploads nothing and gives the same manifest digest.

use std::path::Path;

use drover_protocol::Digest;
use drover_protocol::manifest::OciReference;
use drover_protocol::oci::{
    EMPTY_CONFIG_BYTES, EMPTY_CONFIG_DIGEST, MAX_TARBALL_ARTIFACT_MANIFEST_BYTES, MEDIA_TYPE_OCI_MANIFEST,
    check_tarball_artifact_manifest, tarball_artifact_manifest,
};
use drover_protocol::{AppName, Version};
use futures_util::StreamExt as _;
use oci_client::errors::OciDistributionError;
use oci_client::{Client, Reference, RegistryOperation};

use crate::cli::image::{RegistryAccess, registry_error};
use crate::cli::ops::{Progress, human_size};
use crate::error::{Error, ImageError};
use crate::reference::ImageRef;
use crate::text::printable;

/// Bytes read from the file per step while pushing.
const CHUNK: usize = 256 * 1024;

/// Where a tarball is pushed: a registry and a repository, checked as image references
/// are, and the tag it gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushTarget {
    /// `registry/repository:APP-VERSION` (or without a tag when `APP-VERSION` cannot be
    /// one: then the manifest is pushed by digest alone).
    target: ImageRef,
}

impl PushTarget {
    /// Parses `--registry REGISTRY/REPO` for the release `app` `version`: a registry host
    /// (with a port, a dot or `localhost`), a repository, and neither a tag nor a digest.
    pub fn parse(text: &str, app: &AppName, version: &Version) -> Result<PushTarget, Error> {
        let bad = |problem: &str| Error::Input(format!("--registry {}: {problem}", printable(text)));
        if crate::reference::names_tag_or_digest(text) {
            return Err(bad(
                "names a tag or digest; give the repository alone (REGISTRY/REPO, e.g. registry.example.com/drover/web): the tag is APP-VERSION",
            ));
        }
        let tag = format!("{app}-{version}");
        let parse = |reference: &str| {
            ImageRef::parse(reference).map_err(|error| match error {
                ImageError::BadReference { problem, .. } => bad(&problem),
                other => Error::Image(other),
            })
        };
        let target = match ImageRef::parse(&format!("{text}:{tag}")) {
            Ok(target) => target,
            // The version makes no tag (a '+' in it, say): push by digest alone. A
            // placeholder digest only checks the name; it is replaced when pushing.
            Err(_) => {
                let mut target = parse(&format!("{text}@{EMPTY_CONFIG_DIGEST}"))?;
                target.digest = None;
                target
            }
        };
        Ok(PushTarget { target })
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        self.target.name()
    }

    /// The registry, `HOST[:PORT]` (what agent.toml's `[registries."…"]` is keyed by).
    pub fn registry(&self) -> &str {
        &self.target.registry
    }

    fn by_digest(&self, digest: &Digest) -> Reference {
        self.target.by_digest(digest)
    }

    /// Where the manifest is put: its tag, or its digest.
    fn manifest_reference(&self, digest: &Digest) -> Reference {
        match &self.target.tag {
            Some(tag) => Reference::with_tag(
                self.target.registry.clone(),
                self.target.repository.clone(),
                tag.clone(),
            ),
            None => self.by_digest(digest),
        }
    }
}

/// What a push made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// `registry/repository@sha256:<artifact manifest digest>`: what the release records.
    pub reference: OciReference,
    /// The tag the manifest got, if any.
    pub tag: Option<String>,
    /// Whether the tar.gz was sent (false: the repository had it).
    pub uploaded: bool,
}

/// Pushes the tar.gz at `path` (sha256 `digest`, `size` bytes, both computed over the
/// file) to `target` as a drover tarball artifact and reads its manifest back by digest.
pub async fn push_tarball(
    target: &PushTarget,
    access: &RegistryAccess,
    path: &Path,
    digest: &Digest,
    size: u64,
) -> Result<Pushed, Error> {
    let client = access.client(target.registry())?;
    let auth = access.auth();
    let shown = target.name();
    let layer_reference = target.by_digest(digest);
    // Token exchange (or basic auth) for pushing, once, before the first request.
    client
        .auth(&layer_reference, &auth, RegistryOperation::Push)
        .await
        .map_err(|error| registry_error(error, "authenticating to push to", &shown, access))?;

    let uploaded = if has_blob(&client, &layer_reference, digest, &shown, access).await? {
        eprintln!("{shown} has {digest} already; not sent again");
        false
    } else {
        push_file(&client, &layer_reference, path, digest, size, &shown, access).await?;
        true
    };
    let empty: Digest = EMPTY_CONFIG_DIGEST.parse().expect("a sha256 digest");
    if !has_blob(&client, &layer_reference, &empty, &shown, access).await? {
        client
            .push_blob(&layer_reference, EMPTY_CONFIG_BYTES, EMPTY_CONFIG_DIGEST)
            .await
            .map_err(|error| registry_error(error, "pushing the empty config blob to", &shown, access))?;
    }

    let manifest = tarball_artifact_manifest(digest, size);
    let manifest_digest = Digest::of(&manifest);
    let content_type = MEDIA_TYPE_OCI_MANIFEST.parse().expect("a valid header value");
    client
        .push_manifest_raw(&target.manifest_reference(&manifest_digest), manifest, content_type)
        .await
        .map_err(|error| registry_error(error, "pushing the artifact manifest to", &shown, access))?;

    // Read back by the digest computed here: the release names only what the registry
    // serves under it.
    let pinned = target.target.pinned(&manifest_digest);
    let (served, _digest_the_registry_claims) = client
        .pull_manifest_raw(&target.by_digest(&manifest_digest), &auth, &[MEDIA_TYPE_OCI_MANIFEST])
        .await
        .map_err(|error| registry_error(error, "reading back the artifact manifest", pinned.as_str(), access))?;
    if served.len() as u64 > MAX_TARBALL_ARTIFACT_MANIFEST_BYTES || Digest::of(&served) != manifest_digest {
        return Err(Error::Image(ImageError::DigestMismatch {
            reference: pinned.as_str().to_owned(),
            expected: manifest_digest,
            actual: Digest::of(&served),
        }));
    }
    check_tarball_artifact_manifest(&served, digest, size).map_err(|problem| {
        Error::Image(ImageError::NotAnImage {
            reference: pinned.as_str().to_owned(),
            problem,
        })
    })?;
    if uploaded {
        eprintln!("pushed {} ({}) to {shown}", path.display(), human_size(size));
    }
    Ok(Pushed {
        reference: pinned,
        tag: target.target.tag.clone(),
        uploaded,
    })
}

/// Whether the repository has blob `digest` (a HEAD request).
async fn has_blob(
    client: &Client,
    reference: &Reference,
    digest: &Digest,
    shown: &str,
    access: &RegistryAccess,
) -> Result<bool, Error> {
    client
        .blob_exists(reference, digest.as_str())
        .await
        .map_err(|error| Error::Image(registry_error(error, "asking for a blob of", shown, access)))
}

/// Streams the file to the registry as blob `digest`, with progress on stderr.
async fn push_file(
    client: &Client,
    reference: &Reference,
    path: &Path,
    digest: &Digest,
    size: u64,
    shown: &str,
    access: &RegistryAccess,
) -> Result<(), Error> {
    let file = tokio::fs::File::open(path).await.map_err(|source| Error::Io {
        operation: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    let mut progress = Progress::new(format!("pushing {} to {shown}", path.display()), Some(size));
    let stream = tokio_util::io::ReaderStream::with_capacity(file, CHUNK).map(move |chunk| match chunk {
        Ok(bytes) => {
            progress.advance(bytes.len() as u64);
            Ok(bytes)
        }
        Err(error) => Err(OciDistributionError::IoError(error)),
    });
    client
        .push_blob_stream(reference, stream, digest.as_str(), Some(size))
        .await
        .map_err(|error| {
            Error::Image(registry_error(
                error,
                "pushing the tarball to",
                &format!("{shown} (was {} changed while it was pushed?)", path.display()),
                access,
            ))
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppName {
        "web".parse().expect("app")
    }

    #[test]
    fn a_push_target_is_a_repository_tagged_with_the_app_and_version() {
        let version: Version = "1.4.2".parse().expect("version");
        let target = PushTarget::parse("127.0.0.1:5000/drover/web", &app(), &version).expect("target");
        assert_eq!(target.name(), "127.0.0.1:5000/drover/web");
        assert_eq!(target.registry(), "127.0.0.1:5000");
        assert_eq!(target.target.tag.as_deref(), Some("web-1.4.2"));
        let digest = Digest::of(b"manifest");
        assert_eq!(
            target.manifest_reference(&digest).to_string(),
            "127.0.0.1:5000/drover/web:web-1.4.2"
        );
    }

    #[test]
    fn a_push_target_with_a_tag_digest_or_no_registry_is_refused() {
        let version: Version = "1".parse().expect("version");
        for (text, expected) in [
            ("127.0.0.1:5000/drover/web:1", "names a tag or digest"),
            (
                "127.0.0.1:5000/drover/web@sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                "names a tag or digest",
            ),
            ("drover/web", "names no registry"),
            ("127.0.0.1:5000/Web", "--registry"),
            ("", "--registry"),
        ] {
            let Err(error) = PushTarget::parse(text, &app(), &version) else {
                panic!("{text:?} must be refused");
            };
            let message = error.to_string();
            assert!(message.contains(expected), "{text:?}: {message}");
        }
    }
}
