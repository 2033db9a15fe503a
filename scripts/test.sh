#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every test of every crate,
# and a smoke run of the benchmarks. Installs what it needs on Debian 12 (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

. scripts/prereqs.sh

# A CI run builds everything once: incremental caches would only double target/.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "building the binaries the CLI tests run"
cargo build --workspace --bins --locked

log "the cached rootfs of the real systemd test hosts (built once, then reused)"
bash scripts/rootfs.sh >/dev/null

log "packages: .deb and .rpm from release builds, then lintian (errors fail the run)"
bash packaging/build.sh
command -v lintian >/dev/null 2>&1 || apt_install lintian
runuser -u nobody -- env HOME=/tmp lintian --fail-on error --pedantic dist/*.deb
bash packaging/check-rpm.sh

log "benchmarks, smoke run (debug build, tiny sizes: proves they work, measures nothing)"
cargo test --workspace --benches --locked

# --- fuzzing (fuzz/, FUZZING.md): one build of every target, every committed seed and
# regression input replayed, then each target fuzzed for a bounded time (20 s by default,
# DROVER_FUZZ_SECONDS to change). A crash fails the run; its input is in fuzz/artifacts/.
log "fuzz targets: build, replay, ${DROVER_FUZZ_SECONDS:-20} s each"
bash scripts/fuzz.sh smoke "${DROVER_FUZZ_SECONDS:-20}"
# --- end of fuzzing ---

log "cargo test (unit, property, integration and CLI tests, doc tests)"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
cargo test --workspace --locked 2>&1 | tee "$results"

# One closing line for the whole run (cargo's own last line is the last crate's doc tests).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "\ntests: %d passed, %d failed\n", passed, failed }' "$results"
echo "target/: $(du -sh target | cut -f1)"
