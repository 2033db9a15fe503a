//! Running OCI images without a container runtime (SPEC.md §4 "Containers"): the pieces
//! that turn an image's verified layer blobs into the root filesystem a systemd unit runs
//! with `RootDirectory=`.
//!
//! - [`layer`]: applying one layer (a tar stream) onto a rootfs with OCI semantics
//!   (whiteouts, opaque directories, replacement of lower entries) under the safe-unpack
//!   rules of SPEC.md §3, and [`decompressor`] for the layer media types the agent accepts.

pub mod layer;

pub use layer::{
    LayerError, LayerLimits, LayerMeter, LayerSummary, MEDIA_TYPE_DOCKER_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_LAYER_TAR_GZIP, MEDIA_TYPE_LAYER_TAR_ZSTD, apply_layer, decompressor,
};
