#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every test of every crate,
# and a smoke run of the benchmarks. Installs what it needs on Debian 12 (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# Prerequisites: a C compiler for ring's assembly, and a Rust toolchain (rustup).
if ! command -v cc >/dev/null 2>&1; then
  log "installing build-essential (a C compiler for ring)"
  apt-get update -qq && apt-get install -y -qq build-essential >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust 1.90 or newer with rustup (https://rustup.rs), then rerun." >&2
  exit 1
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "building the binaries the CLI tests run"
cargo build --workspace --bins --locked

log "benchmarks, smoke run (debug build, tiny sizes: proves they work, measures nothing)"
cargo test --workspace --benches --locked

log "cargo test (unit, property, integration and CLI tests, doc tests)"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
cargo test --workspace --locked 2>&1 | tee "$results"

# One closing line for the whole run (cargo's own last line is the last crate's doc tests).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "\ntests: %d passed, %d failed\n", passed, failed }' "$results"
