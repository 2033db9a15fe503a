//! What the coordinator and the agent agree on about OCI images: the media types and the
//! limits. `drover release create --image` refuses at creation what an agent would refuse
//! at deploy time, so both read them here.

/// An OCI image manifest.
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// A Docker image manifest, v2 schema 2.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// An OCI image index (several platforms).
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// A Docker manifest list (several platforms).
pub const MEDIA_TYPE_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// An OCI image config.
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// A Docker image config.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// An uncompressed OCI layer.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// A gzip-compressed OCI layer.
pub const MEDIA_TYPE_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// A zstd-compressed OCI layer (refused for now).
pub const MEDIA_TYPE_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// A Docker image manifest v2 schema 2 layer (gzip).
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// An uncompressed Docker layer (what some builders push without compression).
pub const MEDIA_TYPE_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Deprecated non-distributable variants: the same formats, only their blobs may live
/// elsewhere than the registry (drover never follows such URLs).
pub const MEDIA_TYPE_NONDISTRIBUTABLE_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
/// See [`MEDIA_TYPE_NONDISTRIBUTABLE_TAR`].
pub const MEDIA_TYPE_NONDISTRIBUTABLE_TAR_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// See [`MEDIA_TYPE_NONDISTRIBUTABLE_TAR`] (refused for now, as zstd).
pub const MEDIA_TYPE_NONDISTRIBUTABLE_TAR_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
/// A Docker foreign layer (gzip).
pub const MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// The layer media types an agent applies: uncompressed and gzip tarballs, OCI and Docker
/// spellings, and the deprecated non-distributable variants.
pub const APPLICABLE_LAYERS: [&str; 7] = [
    MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_LAYER_TAR_GZIP,
    MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_LAYER_TAR,
    MEDIA_TYPE_NONDISTRIBUTABLE_TAR,
    MEDIA_TYPE_NONDISTRIBUTABLE_TAR_GZIP,
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP,
];

/// Largest image manifest or index read (the distribution spec's recommended limit).
pub const MAX_IMAGE_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config read.
pub const MAX_IMAGE_CONFIG_BYTES: u64 = 8 << 20;
/// Most layers an image may have.
pub const MAX_IMAGE_LAYERS: usize = 256;

// --- Tarballs kept in a registry ----------------------------------------------------
//
// `drover release create --artifact FILE --registry REGISTRY/REPO` pushes the tar.gz as an
// OCI artifact (image-spec 1.1 "artifact" guidance): an image manifest whose config is the
// empty descriptor and whose one layer is the tar.gz, marked by `artifactType`. The CLI
// builds the manifest with [`tarball_artifact_manifest`]; the agent checks what the
// registry serves with [`check_tarball_artifact_manifest`]: one definition, both sides.

/// The `artifactType` of a drover tarball artifact.
pub const ARTIFACT_TYPE_TARBALL: &str = "application/vnd.drover.tarball.v1";
/// The media type of its one layer: the standard gzip layer type (the tar.gz is exactly
/// that), so registries and tools such as oras or crane show and copy it as any layer.
pub const MEDIA_TYPE_TARBALL_LAYER: &str = MEDIA_TYPE_LAYER_TAR_GZIP;
/// The OCI empty descriptor's media type (image-spec 1.1): the artifact's config.
pub const MEDIA_TYPE_OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The OCI empty blob: `{}`.
pub const EMPTY_CONFIG_BYTES: &[u8] = b"{}";
/// The sha256 of [`EMPTY_CONFIG_BYTES`].
pub const EMPTY_CONFIG_DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
/// Largest tarball artifact manifest read: the manifest is a few hundred bytes; a
/// registry that sends more is not serving one.
pub const MAX_TARBALL_ARTIFACT_MANIFEST_BYTES: u64 = 64 << 10;

/// The artifact manifest for a tar.gz of `size` bytes with sha256 `digest`, as the bytes
/// pushed (and hashed: the release is pinned to their sha256). Deterministic: the same
/// tarball always gives the same manifest, so pushing it again creates nothing new and a
/// release created again from the same file is the identical release.
pub fn tarball_artifact_manifest(digest: &crate::Digest, size: u64) -> Vec<u8> {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE_TARBALL,
        "config": {
            "mediaType": MEDIA_TYPE_OCI_EMPTY,
            "digest": EMPTY_CONFIG_DIGEST,
            "size": EMPTY_CONFIG_BYTES.len(),
            "data": "e30=",
        },
        "layers": [{
            "mediaType": MEDIA_TYPE_TARBALL_LAYER,
            "digest": digest.as_str(),
            "size": size,
        }],
    });
    serde_json::to_vec(&manifest).expect("a JSON value always serializes")
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawArtifactManifest {
    schema_version: Option<u32>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<RawArtifactDescriptor>,
    layers: Option<Vec<RawArtifactDescriptor>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawArtifactDescriptor {
    media_type: String,
    digest: String,
    size: u64,
}

/// Checks that `bytes` (a manifest the registry served for the digest a release names;
/// the caller has checked their sha256) is a drover tarball artifact whose one layer is
/// exactly the tar.gz the release names: `digest`, `size`, [`MEDIA_TYPE_TARBALL_LAYER`].
/// The reason when it is not, one line, with what the registry sent shortened.
pub fn check_tarball_artifact_manifest(bytes: &[u8], digest: &crate::Digest, size: u64) -> Result<(), String> {
    if bytes.len() as u64 > MAX_TARBALL_ARTIFACT_MANIFEST_BYTES {
        return Err(format!(
            "the artifact manifest is {} bytes, more than the {MAX_TARBALL_ARTIFACT_MANIFEST_BYTES} a tarball artifact needs",
            bytes.len()
        ));
    }
    let shown = |text: &str| -> String {
        let mut out: String = text.chars().take(100).flat_map(char::escape_debug).collect();
        if text.chars().count() > 100 {
            out.push('…');
        }
        format!("'{out}'")
    };
    let raw: RawArtifactManifest =
        serde_json::from_slice(bytes).map_err(|error| format!("the artifact manifest is not valid JSON: {error}"))?;
    if raw.schema_version != Some(2) || raw.media_type.as_deref() != Some(MEDIA_TYPE_OCI_MANIFEST) {
        return Err(format!(
            "the artifact manifest is not an OCI image manifest (schemaVersion 2, mediaType {MEDIA_TYPE_OCI_MANIFEST})"
        ));
    }
    match raw.artifact_type.as_deref() {
        Some(ARTIFACT_TYPE_TARBALL) => {}
        Some(other) => {
            return Err(format!(
                "the artifact's type is {}, not a drover tarball ({ARTIFACT_TYPE_TARBALL})",
                shown(other)
            ));
        }
        None => {
            return Err(format!(
                "the manifest has no artifactType: not a drover tarball ({ARTIFACT_TYPE_TARBALL})"
            ));
        }
    }
    let config = raw.config.ok_or("the artifact manifest has no config")?;
    if config.media_type != MEDIA_TYPE_OCI_EMPTY
        || config.digest != EMPTY_CONFIG_DIGEST
        || config.size != EMPTY_CONFIG_BYTES.len() as u64
    {
        return Err(format!(
            "the artifact's config is {} {}, not the empty descriptor",
            shown(&config.media_type),
            shown(&config.digest)
        ));
    }
    let layers = raw.layers.unwrap_or_default();
    let [layer] = layers.as_slice() else {
        return Err(format!(
            "the artifact has {} layers; a drover tarball has exactly one",
            layers.len()
        ));
    };
    if layer.media_type != MEDIA_TYPE_TARBALL_LAYER {
        return Err(format!(
            "the artifact's layer has media type {}, not {MEDIA_TYPE_TARBALL_LAYER}",
            shown(&layer.media_type)
        ));
    }
    if layer.digest != digest.as_str() {
        return Err(format!(
            "the artifact's layer is {}, the release names the tarball {digest}; refused",
            shown(&layer.digest)
        ));
    }
    if layer.size != size {
        return Err(format!(
            "the artifact's layer is {} bytes, the release says {size}; refused",
            layer.size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Digest;

    #[test]
    fn the_empty_config_digest_is_the_sha256_of_its_bytes() {
        assert_eq!(Digest::of(EMPTY_CONFIG_BYTES).as_str(), EMPTY_CONFIG_DIGEST);
    }

    #[test]
    fn a_tarball_artifact_manifest_passes_its_own_check_and_only_for_its_layer() {
        let layer = Digest::of(b"the tarball");
        let manifest = tarball_artifact_manifest(&layer, 11);
        assert_eq!(manifest, tarball_artifact_manifest(&layer, 11), "deterministic");
        check_tarball_artifact_manifest(&manifest, &layer, 11).expect("its own manifest");
        let other = Digest::of(b"another tarball");
        let error = check_tarball_artifact_manifest(&manifest, &other, 11).expect_err("another layer");
        assert!(error.contains("release names the tarball"), "{error}");
        let error = check_tarball_artifact_manifest(&manifest, &layer, 12).expect_err("another size");
        assert!(error.contains("11 bytes"), "{error}");
    }

    #[test]
    fn manifests_that_are_not_one_drover_tarball_are_refused_with_the_reason() {
        let layer = Digest::of(b"the tarball");
        let good: serde_json::Value = serde_json::from_slice(&tarball_artifact_manifest(&layer, 11)).expect("json");
        let refused = |change: &dyn Fn(&mut serde_json::Value), expected: &str| {
            let mut manifest = good.clone();
            change(&mut manifest);
            let bytes = serde_json::to_vec(&manifest).expect("json");
            let error = check_tarball_artifact_manifest(&bytes, &layer, 11).expect_err(expected);
            assert!(error.contains(expected), "{error} should say {expected}");
        };
        refused(
            &|m| m["artifactType"] = "application/vnd.example".into(),
            "not a drover tarball",
        );
        refused(
            &|m| {
                m.as_object_mut().expect("object").remove("artifactType");
            },
            "no artifactType",
        );
        refused(
            &|m| m["mediaType"] = MEDIA_TYPE_OCI_INDEX.into(),
            "not an OCI image manifest",
        );
        refused(
            &|m| m["config"]["mediaType"] = MEDIA_TYPE_OCI_CONFIG.into(),
            "not the empty descriptor",
        );
        refused(
            &|m| m["layers"][0]["mediaType"] = MEDIA_TYPE_LAYER_TAR.into(),
            "media type",
        );
        refused(
            &|m| {
                let layer = m["layers"][0].clone();
                m["layers"] = serde_json::json!([layer.clone(), layer]);
            },
            "2 layers",
        );
        refused(&|m| m["layers"] = serde_json::json!([]), "0 layers");
        assert!(check_tarball_artifact_manifest(b"not json", &layer, 11).is_err());
        let huge = vec![b' '; MAX_TARBALL_ARTIFACT_MANIFEST_BYTES as usize + 1];
        let error = check_tarball_artifact_manifest(&huge, &layer, 11).expect_err("too big");
        assert!(error.contains("more than"), "{error}");
    }
}
