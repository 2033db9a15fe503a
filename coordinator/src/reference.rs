//! OCI image references as operators write them, and the rule that an image release is
//! pinned by digest alone. The CLI parses `--image REF` with it; the server checks every
//! image release it is given with [`check_pinned`].
//!
//! References name their registry: `registry.example.com/team/web:1.4`,
//! `127.0.0.1:5000/web@sha256:…`, `localhost/web:2`. Docker's short names are refused
//! rather than expanded to Docker Hub (see [`crate::cli::image`]).

use std::fmt;

use drover_protocol::Digest;
use drover_protocol::manifest::OciReference;
use oci_client::Reference;

use crate::error::ImageError;
use crate::text::printable;

/// Longest image reference accepted.
const MAX_REFERENCE_LEN: usize = 1024;
/// Longest `registry/repository` (the distribution spec's name limit).
const MAX_NAME_LEN: usize = 255;

/// An image reference as the operator typed it: a registry, a repository and a tag or a
/// digest (or both: then the digest is what counts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]`, lowercase.
    pub registry: String,
    /// `team/web`.
    pub repository: String,
    /// `1.4`, if given.
    pub tag: Option<String>,
    /// `sha256:…`, if given.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses `registry/repository:tag`, `registry/repository@sha256:…` or both.
    pub fn parse(text: &str) -> Result<ImageRef, ImageError> {
        let bad = |problem: String| ImageError::BadReference {
            text: printable(text),
            problem,
        };
        if text.is_empty() || text.len() > MAX_REFERENCE_LEN {
            return Err(bad(format!(
                "an image reference is 1 to {MAX_REFERENCE_LEN} characters"
            )));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("holds spaces or control characters".into()));
        }
        let (name_and_tag, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                let digest = digest.parse::<Digest>().map_err(|_| {
                    bad(format!(
                        "{:?} after @ is not a digest drover accepts (sha256:<64 lowercase hex digits>)",
                        printable(digest)
                    ))
                })?;
                (name, Some(digest))
            }
            None => (text, None),
        };
        // A ':' after the last '/' starts the tag; one before it is the registry's port.
        let last_slash = name_and_tag.rfind('/');
        let (name, tag) = match name_and_tag.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
            }
            _ => (name_and_tag, None),
        };
        let short_name = || {
            let hub = if name.contains('/') {
                format!("docker.io/{name}")
            } else {
                format!("docker.io/library/{name}")
            };
            bad(format!(
                "names no registry; write it in full, e.g. registry.example.com/{name}:TAG, or {hub}:TAG for Docker Hub (short names are not expanded: where code comes from is not guessed)"
            ))
        };
        let Some((registry, repository)) = name.split_once('/') else {
            return Err(short_name());
        };
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(short_name());
        }
        let registry = check_registry(registry).map_err(bad)?;
        check_repository(repository).map_err(bad)?;
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_owned()
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(bad(format!(
                "registry/repository is longer than {MAX_NAME_LEN} characters"
            )));
        }
        if let Some(tag) = tag {
            check_tag(tag).map_err(bad)?;
        }
        if tag.is_none() && digest.is_none() {
            return Err(bad(
                "names neither a tag nor a digest; add :TAG (there is no implicit :latest) or @sha256:DIGEST".into(),
            ));
        }
        Ok(ImageRef {
            registry,
            repository,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// This image pinned to `digest`, as manifests carry it.
    pub fn pinned(&self, digest: &Digest) -> OciReference {
        OciReference::try_from(format!("{}@{digest}", self.name()))
            .expect("a parsed registry and repository with a digest is an OCI reference")
    }

    /// The reference for fetching what was asked: by digest when there is one; none
    /// without a tag or a digest.
    pub(crate) fn requested(&self) -> Option<Reference> {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => Some(self.by_digest(digest)),
            (None, Some(tag)) => Some(Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                tag.clone(),
            )),
            (None, None) => None,
        }
    }

    /// The reference of another manifest in the same repository.
    pub(crate) fn by_digest(&self, digest: &Digest) -> Reference {
        Reference::with_digest(self.registry.clone(), self.repository.clone(), digest.to_string())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Checks (and lowercases) `host[:port]`: DNS labels or an IPv4 address, a port 1-65535.
fn check_registry(registry: &str) -> Result<String, String> {
    if registry.starts_with('[') {
        return Err("IPv6 address literals are not supported as registries; use a host name".into());
    }
    let (host, port) = match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!(
            "registry host {:?} is not a host name or IPv4 address",
            printable(host)
        ));
    }
    if let Some(port) = port {
        let valid = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        if !valid || !port.parse::<u16>().is_ok_and(|port| port != 0) {
            return Err(format!("registry port {:?} is not 1 to 65535", printable(port)));
        }
    }
    Ok(registry.to_ascii_lowercase())
}

/// Checks a repository: `/`-separated components of `[a-z0-9]+` joined by `.`, `_`, `__`
/// or runs of `-` (the distribution spec's grammar).
fn check_repository(repository: &str) -> Result<(), String> {
    let component_ok = |component: &str| {
        let bytes = component.as_bytes();
        if bytes.is_empty() || !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
            return false;
        }
        let mut index = 0;
        while index < bytes.len() {
            let byte = bytes[index];
            if byte.is_ascii_lowercase() || byte.is_ascii_digit() {
                index += 1;
                continue;
            }
            let separator_end = match byte {
                b'.' => index + 1,
                b'_' if bytes.get(index + 1) == Some(&b'_') => index + 2,
                b'_' => index + 1,
                b'-' => index + bytes[index..].iter().take_while(|b| **b == b'-').count(),
                _ => return false,
            };
            // A separator sits between two alphanumeric runs.
            if !bytes
                .get(separator_end)
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return false;
            }
            index = separator_end;
        }
        true
    };
    if repository.is_empty() || !repository.split('/').all(component_ok) {
        return Err(format!(
            "repository {:?} is not lowercase letters and digits in /-separated parts (joined by '.', '_' or '-')",
            printable(repository)
        ));
    }
    Ok(())
}

/// Checks a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&tag.len())
        && !tag.starts_with(['.', '-'])
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {:?} is not 1 to 128 of A-Z, a-z, 0-9, '_', '.', '-' (not starting with '.' or '-')",
            printable(tag)
        ))
    }
}

/// Whether `text` (`REGISTRY/REPOSITORY...`) names a tag or a digest, which a place to
/// push to must not (`release create --registry`, `serve --artifact-registry`): the
/// tag is the release's own.
pub fn names_tag_or_digest(text: &str) -> bool {
    text.contains('@') || text.rsplit_once('/').is_some_and(|(_, last)| last.contains(':'))
}

/// Checks a reference a release request carries: pinned by digest alone, naming its
/// registry, in the canonical form [`ImageRef::pinned`] writes (so that two spellings of
/// one image cannot make two different releases look alike).
pub fn check_pinned(reference: &OciReference) -> Result<(), String> {
    let image = ImageRef::parse(reference.as_str()).map_err(|error| match error {
        ImageError::BadReference { problem, .. } => problem,
        other => other.to_string(),
    })?;
    match (&image.tag, &image.digest) {
        (None, Some(digest)) if image.pinned(digest) == *reference => Ok(()),
        (None, Some(digest)) => Err(format!("write it as {}", image.pinned(digest).as_str())),
        _ => Err("an image release is pinned by digest alone: registry/repository@sha256:DIGEST".into()),
    }
}
