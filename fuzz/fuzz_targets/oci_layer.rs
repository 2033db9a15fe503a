//! Fuzzes OCI layer application: `drover_agent::oci::layer::apply_layer`, layer after layer
//! onto one rootfs with one meter, the layers (plain tar streams) separated by
//! `drover_fuzz::SEPARATOR`. Layering is where whiteouts, opaque directories and
//! replacement meet, so the fuzzer gets up to six.
//!
//! The first byte chooses the mode: bit 1 set keeps setuid, setgid and sticky bits,
//! otherwise they are stripped.
//!
//! After every layer, applied or refused, nothing outside the rootfs may have changed
//! (`drover_fuzz::Arena`, which catches writes through a symlink a lower layer made), the
//! tree holds only directories, regular files and symlinks (symlinks may point anywhere:
//! they resolve inside the container's root at run time), and no hard link leads outside.
//! When every layer applied, no whiteout file is left in the rootfs.

#![no_main]

use std::sync::OnceLock;

use drover_agent::oci::layer::{LayerLimits, LayerMeter, apply_layer};
use drover_agent::unpack::SpecialBits;
use drover_fuzz::{Arena, debug, split, walk};
use libfuzzer_sys::fuzz_target;

const MAX_TOTAL_BYTES: u64 = 4 << 20;
const MAX_ENTRIES: u64 = 1024;

fn arena() -> &'static Arena {
    static ARENA: OnceLock<Arena> = OnceLock::new();
    ARENA.get_or_init(|| Arena::new("oci_layer"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let special_bits = if mode & 2 == 2 {
        SpecialBits::Keep
    } else {
        SpecialBits::Strip
    };
    // Limits not named here keep their defaults, so a limit added later is fuzzed as it
    // ships (the update is needless only while every field is named).
    #[allow(clippy::needless_update)]
    let limits = LayerLimits {
        max_total_bytes: MAX_TOTAL_BYTES,
        max_entries: MAX_ENTRIES,
        special_bits,
        ..LayerLimits::default()
    };
    let arena = arena();
    let mut meter = LayerMeter::new();
    let mut all_applied = true;
    for layer in split(rest) {
        let result = apply_layer(layer, arena.root(), &limits, &mut meter);
        debug("apply_layer", &result);
        arena.check_outside_untouched();
        debug("tree", &walk(arena.root()));
        if result.is_err() {
            all_applied = false;
            break;
        }
    }
    assert!(meter.bytes() <= MAX_TOTAL_BYTES, "wrote more than the byte limit");
    if all_applied {
        let tree = walk(arena.root());
        assert!(
            tree.whiteout_names.is_empty(),
            "whiteout files left: {:?}",
            tree.whiteout_names
        );
        if special_bits == SpecialBits::Strip {
            assert!(
                tree.special_bits.is_empty(),
                "special bits kept: {:?}",
                tree.special_bits
            );
        }
    }
    arena.reset();
});
