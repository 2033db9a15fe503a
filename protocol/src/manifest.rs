//! The per-host desired-state manifest: what one host should run, signed by the
//! coordinator's manifest key(s), and the artifacts it points at.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::dsse::Envelope;
use crate::keys::SigningKey;
use crate::names::NameError;
use crate::names::{AppName, Digest, HostId, Version};
use crate::spec::AppSpec;
use crate::time::Timestamp;

/// The payload type of manifest envelopes.
pub const MANIFEST_PAYLOAD_TYPE: &str = "application/vnd.drover.manifest+json";
/// The manifest schema this build understands.
pub const MANIFEST_SCHEMA: u32 = 1;
/// Largest manifest envelope accepted, checked before parsing.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// Most apps one manifest may list.
pub const MAX_APPS: usize = 256;

/// A host's desired state. Unknown fields are refused (see ARCHITECTURE.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_SCHEMA`].
    pub schema: u32,
    /// The host this manifest is for.
    pub host: HostId,
    /// Strictly increasing per host; an agent never accepts a serial it has passed.
    pub serial: u64,
    /// When the coordinator signed it.
    pub issued_at: Timestamp,
    /// After this, the manifest is refused; the coordinator re-signs well before.
    pub expires_at: Timestamp,
    /// When set, the agent applies no changes (a kill switch); it keeps running what it runs.
    #[serde(default)]
    pub hold: bool,
    /// The release of each app this host should run. Apps not listed are not managed.
    #[serde(deserialize_with = "unique_map")]
    pub apps: BTreeMap<AppName, AppRelease>,
}

/// The release one app should run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRelease {
    /// The release version.
    pub version: Version,
    /// What to fetch.
    pub artifact: Artifact,
    /// How to run it.
    pub spec: AppSpec,
}

/// Where a release's bits come from, always pinned by digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Artifact {
    /// A tar.gz over HTTP(S): the coordinator's content store or another server.
    Tarball {
        /// Where to download it.
        url: HttpUrl,
        /// The sha256 of the tar.gz bytes.
        digest: Digest,
        /// The exact size in bytes: a hard cap while downloading.
        size: u64,
    },
    /// An OCI image, pinned by manifest digest.
    Oci {
        /// `registry/repository@sha256:...`; must end in `@` + `digest`.
        reference: OciReference,
        /// The image manifest digest.
        digest: Digest,
    },
    /// A tar.gz kept in an OCI registry: the one layer of the OCI artifact `reference`
    /// (what `drover release create --artifact FILE --registry REGISTRY/REPO` pushes; see
    /// [`crate::oci::tarball_artifact_manifest`]). The agent fetches the artifact manifest
    /// by its digest, checks it names exactly this layer, then downloads the layer by
    /// `digest` and installs it as any other tarball. Replicas of the coordinator share no
    /// disk; a registry is where their artifacts live.
    #[serde(rename = "oci_tarball")]
    OciTarball {
        /// `registry/repository@sha256:<digest of the artifact manifest>`.
        reference: OciReference,
        /// The sha256 of the tar.gz bytes (the artifact's layer).
        digest: Digest,
        /// The exact size of the tar.gz in bytes: a hard cap while downloading.
        size: u64,
    },
}

impl Artifact {
    /// Whether it is a tarball or an image (what [`crate::AppSpec::check`] needs to know).
    pub fn kind(&self) -> crate::spec::ArtifactKind {
        match self {
            Artifact::Tarball { .. } | Artifact::OciTarball { .. } => crate::spec::ArtifactKind::Tarball,
            Artifact::Oci { .. } => crate::spec::ArtifactKind::Image,
        }
    }

    /// The artifact's digest: the tarball's (also of one kept in a registry), or the image
    /// manifest's.
    pub fn digest(&self) -> &Digest {
        match self {
            Artifact::Tarball { digest, .. } | Artifact::Oci { digest, .. } | Artifact::OciTarball { digest, .. } => {
                digest
            }
        }
    }
}

/// An absolute `http://` or `https://` URL without whitespace or control characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpUrl(String);

impl HttpUrl {
    /// The URL text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HttpUrl {
    type Error = NameError;
    fn try_from(text: String) -> Result<HttpUrl, NameError> {
        let rest = text.strip_prefix("https://").or_else(|| text.strip_prefix("http://"));
        let ok = rest.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
            && text.len() <= 2048
            && !text.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(HttpUrl(text))
        } else {
            Err(NameError::new(
                "URL",
                &text,
                "an http:// or https:// URL without spaces, at most 2048 bytes",
            ))
        }
    }
}

impl From<HttpUrl> for String {
    fn from(value: HttpUrl) -> String {
        value.0
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An OCI image reference pinned by digest: `name@sha256:<hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OciReference(String);

impl OciReference {
    /// The reference text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digest the reference is pinned to.
    pub fn digest(&self) -> Digest {
        let (_, digest) = self.0.rsplit_once('@').expect("checked when parsed");
        digest.parse().expect("checked when parsed")
    }
}

impl TryFrom<String> for OciReference {
    type Error = NameError;
    fn try_from(text: String) -> Result<OciReference, NameError> {
        let ok = text.rsplit_once('@').is_some_and(|(name, digest)| {
            !name.is_empty()
                && name.len() <= 512
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:".contains(&b))
                && digest.parse::<Digest>().is_ok()
        });
        if ok {
            Ok(OciReference(text))
        } else {
            Err(NameError::new(
                "OCI reference",
                &text,
                "registry/repository@sha256:<64 hex digits>",
            ))
        }
    }
}

impl From<OciReference> for String {
    fn from(value: OciReference) -> String {
        value.0
    }
}

/// The size of the envelope [`Manifest::sign`] makes with `signatures` keys from a payload
/// of `payload_len` bytes, computed without signing: what [`MAX_MANIFEST_BYTES`] (the
/// agent's limit) applies to. The coordinator uses it to refuse a change whose manifest
/// some agent would refuse.
pub fn signed_size(payload_len: usize, signatures: usize) -> usize {
    // {"payloadType":"…","payload":"…","signatures":[{"keyid":"<64 hex>","sig":"<88 base64>"},…]}
    let frame = r#"{"payloadType":"","payload":"","signatures":[]}"#.len() + MANIFEST_PAYLOAD_TYPE.len();
    let signature = r#"{"keyid":"","sig":""}"#.len() + 64 + 88;
    frame + payload_len.div_ceil(3) * 4 + signatures * signature + signatures.saturating_sub(1)
}

impl Manifest {
    /// The payload bytes to sign.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    /// Signs this manifest into an envelope (JSON bytes).
    pub fn sign(&self, keys: &[&SigningKey]) -> Vec<u8> {
        Envelope::sign(MANIFEST_PAYLOAD_TYPE, &self.to_payload(), keys).to_json()
    }

    /// Checks what serde cannot: the cross-field rules of a manifest.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.expires_at <= self.issued_at {
            return Err(format!(
                "expires_at {} is not after issued_at {}",
                self.expires_at, self.issued_at
            ));
        }
        if self.apps.len() > MAX_APPS {
            return Err(format!("{} apps is over the limit of {MAX_APPS}", self.apps.len()));
        }
        for (app, release) in &self.apps {
            if let Artifact::Oci { reference, digest } = &release.artifact
                && &reference.digest() != digest
            {
                return Err(format!(
                    "app {app}: OCI reference {} is not pinned to digest {digest}",
                    reference.as_str()
                ));
            }
            release
                .spec
                .check(release.artifact.kind())
                .map_err(|error| format!("app {app} {}: {error}", release.version))?;
        }
        Ok(())
    }
}

/// Deserializes a JSON object into a map, refusing duplicate keys (serde_json would
/// otherwise keep the last one silently, and two readers could disagree on the value).
fn unique_map<'de, D>(deserializer: D) -> Result<BTreeMap<AppName, AppRelease>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct UniqueMap;
    impl<'de> serde::de::Visitor<'de> for UniqueMap {
        type Value = BTreeMap<AppName, AppRelease>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of app names to releases")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = BTreeMap::new();
            while let Some((app, release)) = access.next_entry::<AppName, AppRelease>()? {
                if map.len() >= MAX_APPS {
                    return Err(serde::de::Error::custom(format!("more than {MAX_APPS} apps")));
                }
                if map.contains_key(&app) {
                    return Err(serde::de::Error::custom(format!("app {app} is listed twice")));
                }
                map.insert(app, release);
            }
            Ok(map)
        }
    }
    deserializer.deserialize_map(UniqueMap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYER: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const ARTIFACT: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn a_tarball_in_a_registry_round_trips_and_older_kinds_keep_their_spelling() {
        let artifact = Artifact::OciTarball {
            reference: OciReference::try_from(format!("127.0.0.1:5000/drover/web@{ARTIFACT}")).expect("reference"),
            digest: LAYER.parse().expect("digest"),
            size: 1234,
        };
        let json = serde_json::to_value(&artifact).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "oci_tarball",
                "reference": format!("127.0.0.1:5000/drover/web@{ARTIFACT}"),
                "digest": LAYER,
                "size": 1234,
            })
        );
        let back: Artifact = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, artifact);
        assert_eq!(back.kind(), crate::spec::ArtifactKind::Tarball);
        assert_eq!(
            back.digest().as_str(),
            LAYER,
            "a registry tarball is known by the tar.gz's digest"
        );
        // The kinds manifests already carry are spelled as before.
        let tarball: Artifact = serde_json::from_value(serde_json::json!({
            "kind": "tarball", "url": "https://example.com/web.tar.gz", "digest": LAYER, "size": 1
        }))
        .expect("tarball");
        assert!(matches!(tarball, Artifact::Tarball { .. }));
        let image: Artifact = serde_json::from_value(serde_json::json!({
            "kind": "oci", "reference": format!("example.com/web@{ARTIFACT}"), "digest": ARTIFACT
        }))
        .expect("image");
        assert!(matches!(image, Artifact::Oci { .. }));
    }

    #[test]
    fn a_tarball_in_a_registry_with_a_malformed_reference_or_field_is_refused() {
        let with = |reference: &str, digest: &str, extra: Option<(&str, serde_json::Value)>| {
            let mut json = serde_json::json!({
                "kind": "oci_tarball", "reference": reference, "digest": digest, "size": 10
            });
            if let Some((key, value)) = extra {
                json[key] = value;
            }
            serde_json::from_value::<Artifact>(json)
        };
        assert!(with(&format!("example.com/web@{ARTIFACT}"), LAYER, None).is_ok());
        for reference in [
            "example.com/web:1.0".to_owned(),               // a tag, not pinned
            format!("example.com/web@{}", &ARTIFACT[..20]), // a short digest
            format!("Example.com/Web@{ARTIFACT}"),          // upper case
            format!("example.com/web @{ARTIFACT}"),         // a space
            format!("@{ARTIFACT}"),                         // no name
            format!("example.com/web@md5:{}", "a".repeat(32)),
        ] {
            assert!(with(&reference, LAYER, None).is_err(), "{reference} must be refused");
        }
        assert!(with(&format!("example.com/web@{ARTIFACT}"), "sha256:xyz", None).is_err());
        assert!(
            with(
                &format!("example.com/web@{ARTIFACT}"),
                LAYER,
                Some(("url", "https://x".into()))
            )
            .is_err(),
            "unknown fields are refused"
        );
        let missing_size = serde_json::json!({
            "kind": "oci_tarball", "reference": format!("example.com/web@{ARTIFACT}"), "digest": LAYER
        });
        assert!(serde_json::from_value::<Artifact>(missing_size).is_err());
    }

    #[test]
    fn signed_size_is_the_size_of_the_signed_envelope() {
        let rng = ring::rand::SystemRandom::new();
        let keys: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate(&rng).expect("key").0).collect();
        for length in [0usize, 1, 2, 3, 4, 100, 1000, 65_537] {
            let payload = vec![b'x'; length];
            for count in 1..=keys.len() {
                let refs: Vec<&SigningKey> = keys[..count].iter().collect();
                let envelope = Envelope::sign(MANIFEST_PAYLOAD_TYPE, &payload, &refs).to_json();
                assert_eq!(
                    signed_size(length, count),
                    envelope.len(),
                    "{length} bytes, {count} keys"
                );
            }
        }
    }
}
