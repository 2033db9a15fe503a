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
