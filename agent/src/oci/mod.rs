//! Running OCI images without a container runtime (SPEC.md §4 "Containers"): the pieces
//! that turn an image's verified layer blobs into the root filesystem a systemd unit runs
//! with `RootDirectory=`.
//!
//! - [`layer`]: applying one layer (a tar stream) onto a rootfs with OCI semantics
//!   (whiteouts, opaque directories, replacement of lower entries) under the safe-unpack
//!   rules of SPEC.md §3, and [`decompressor`] for the layer media types the agent accepts.
//! - [`image`]: reading manifests, image configs and the rootfs' user database, and
//!   resolving who runs the image; `image.json`, the record of a staged image. Pure.
//! - [`registry`]: one `oci-client` per registry from the agent config (transport, extra
//!   CA, credentials read from files).
//! - [`pull`]: manifest, config and layers by digest into the shared artifact cache,
//!   verified, resumed, only what is missing.
//! - [`stage`]: the release directory: layers applied into `rootfs/`, mount points,
//!   `resolv.conf`, program and user resolved inside the rootfs, `image.json`.
//!
//! The unit that runs a staged image is rendered by [`crate::unit::render_oci`].

pub mod image;
pub mod layer;
pub mod pull;
pub mod registry;
pub mod stage;
#[cfg(test)]
pub(crate) mod testing;

pub use layer::{
    LayerError, LayerLimits, LayerMeter, LayerSummary, MEDIA_TYPE_DOCKER_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_LAYER_TAR_GZIP, MEDIA_TYPE_LAYER_TAR_ZSTD, apply_layer, decompressor,
};
