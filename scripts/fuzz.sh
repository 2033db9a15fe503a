#!/usr/bin/env bash
# Coverage-guided fuzzing of drover's parsers and archive rules (fuzz/, FUZZING.md).
#
#   scripts/fuzz.sh build               build every target once (fuzz/target)
#   scripts/fuzz.sh replay              run every seed and regression input once
#   scripts/fuzz.sh run [SECS] [TARGET...]   fuzz each target SECS seconds (default 600)
#   scripts/fuzz.sh smoke [SECS]        build, replay, then SECS seconds each (test.sh's run)
#   scripts/fuzz.sh seeds               regenerate fuzz/seeds/ (deterministic, committed)
#   scripts/fuzz.sh lock                realign fuzz/Cargo.lock with the workspace's
#   scripts/fuzz.sh list                the target names
#
# The targets link libFuzzer through the libfuzzer-sys crate, built by cargo with the same
# sanitizer-coverage flags cargo-fuzz passes for `--sanitizer none`; they are all stable
# rustc codegen options, so neither nightly, RUSTC_BOOTSTRAP nor cargo-fuzz is needed.
# A target found crashing leaves its input in fuzz/artifacts/<target>/; the run goes on
# with the other targets and exits 1 at the end. Per-target numbers (executions, execs/s,
# corpus size) go to fuzz/target/fuzz-stats.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_DIR=fuzz
TARGETS=(manifest_accept trust_rotation unpack oci_layer app_spec host_report agent_config)
# The unpack targets write a small tree per execution: a tmpfs makes that memory speed.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then export TMPDIR=/dev/shm; fi

log() { printf '\n==> %s\n' "$*"; }

host_triple() { rustc -vV | sed -n 's/^host: //p'; }

bin_dir() { echo "$FUZZ_DIR/target/$(host_triple)/release"; }

build() {
  # libfuzzer-sys compiles libFuzzer, which is C++.
  if ! command -v c++ >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "==> installing Debian packages: g++ (libFuzzer is C++)" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
    else
      echo "no C++ compiler (c++); install g++ to build the fuzz targets" >&2
      exit 1
    fi
  fi
  log "building the fuzz targets (fuzz/target, release, sanitizer coverage)"
  local flags=(
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    --cfg fuzzing
  )
  # --target keeps these flags off build scripts and proc macros, which do not link
  # libFuzzer. Not --locked: fuzz/Cargo.lock pins what was fuzzed, but a dependency newly
  # added to the agent or protocol must not break this build; cargo then adds only that
  # (`scripts/fuzz.sh lock` realigns the shared versions with the workspace's lock).
  local start=$SECONDS
  RUSTFLAGS="${flags[*]}" cargo build --manifest-path "$FUZZ_DIR/Cargo.toml" --release \
    --target "$(host_triple)" --bins
  echo "fuzz build: $((SECONDS - start)) s"
}

lock() {
  log "fuzz/Cargo.lock from the workspace's Cargo.lock, plus what only the fuzz crate uses"
  cp Cargo.lock "$FUZZ_DIR/Cargo.lock"
  cargo update --manifest-path "$FUZZ_DIR/Cargo.toml" --workspace
}

inputs_of() { # the committed inputs of target $1, as file arguments
  local dir
  for dir in "$FUZZ_DIR/seeds/$1" "$FUZZ_DIR/regressions/$1"; do
    [ -d "$dir" ] && find "$dir" -type f ! -name '*.md' | sort
  done
  return 0
}

replay() {
  log "replaying every seed and regression input once"
  local target failed=0 files
  for target in "${TARGETS[@]}"; do
    mapfile -t files < <(inputs_of "$target")
    if [ "${#files[@]}" -eq 0 ]; then
      echo "$target: no seeds in $FUZZ_DIR/seeds/$target; run scripts/fuzz.sh seeds" >&2
      failed=1
      continue
    fi
    if "$(bin_dir)/$target" -runs=1 "${files[@]}" >"$FUZZ_DIR/target/replay-$target.log" 2>&1; then
      echo "$target: ${#files[@]} inputs replayed, no crash"
    else
      echo "$target: CRASHED on a committed input; see $FUZZ_DIR/target/replay-$target.log" >&2
      tail -n 30 "$FUZZ_DIR/target/replay-$target.log" >&2
      failed=1
    fi
  done
  return "$failed"
}

stat_of() { sed -n "s/^stat::$1: *//p" "$2" | tail -n 1; }

run() {
  local seconds=$1
  shift
  local targets=("$@")
  [ "${#targets[@]}" -gt 0 ] || targets=("${TARGETS[@]}")
  local stats="$FUZZ_DIR/target/fuzz-stats.tsv" crashed=() target
  printf 'target\tseconds\texecutions\texecs_per_sec\tcorpus\tresult\n' >"$stats"
  for target in "${targets[@]}"; do
    local corpus="$FUZZ_DIR/corpus/$target" artifacts="$FUZZ_DIR/artifacts/$target/"
    local logfile="$FUZZ_DIR/target/fuzz-$target.log" dict=() dirs=("$FUZZ_DIR/seeds/$target")
    mkdir -p "$corpus" "$artifacts"
    [ -f "$FUZZ_DIR/dicts/$target.dict" ] && dict=("-dict=$FUZZ_DIR/dicts/$target.dict")
    [ -n "$(ls -A "$FUZZ_DIR/regressions/$target" 2>/dev/null)" ] && dirs+=("$FUZZ_DIR/regressions/$target")
    log "fuzzing $target for $seconds s"
    local result=ok start=$SECONDS
    # New inputs go to the first directory (fuzz/corpus, not committed); the seeds and
    # regressions are read only. -timeout: one input taking 10 s is a hang worth a report.
    if ! "$(bin_dir)/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$artifacts" "${dict[@]}" \
      "$corpus" "${dirs[@]}" >"$logfile" 2>&1; then
      result=crash
      crashed+=("$target")
      grep -E '^(==[0-9]+==|SUMMARY|thread .* panicked)|panicked at' "$logfile" | head -n 5 >&2 || true
      tail -n 40 "$logfile" >&2
    fi
    local executions rate corpus_size
    executions=$(stat_of number_of_executed_units "$logfile")
    rate=$(stat_of average_exec_per_sec "$logfile")
    corpus_size=$(find "$corpus" -type f | wc -l)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$((SECONDS - start))" "${executions:-?}" "${rate:-?}" \
      "$corpus_size" "$result" >>"$stats"
    echo "$target: ${executions:-?} executions in $((SECONDS - start)) s, ${rate:-?}/s, corpus $corpus_size, $result"
  done
  log "fuzz summary ($stats)"
  column -t -s $'\t' "$stats" 2>/dev/null || cat "$stats"
  if [ "${#crashed[@]}" -gt 0 ]; then
    echo "fuzzing found crashes in: ${crashed[*]}; inputs in $FUZZ_DIR/artifacts/ (FUZZING.md says what to do)" >&2
    return 1
  fi
}

seeds() {
  log "writing the seed corpora (fuzz/seeds)"
  "$(bin_dir)/make-seeds" "$FUZZ_DIR/seeds"
}

command=${1:-smoke}
shift || true
case "$command" in
  build) build ;;
  replay) replay ;;
  run) run "${1:-600}" "${@:2}" ;;
  smoke)
    build
    replay
    run "${1:-20}"
    ;;
  seeds) seeds ;;
  lock) lock ;;
  list) printf '%s\n' "${TARGETS[@]}" ;;
  *)
    sed -n '2,10p' "$0" >&2
    exit 64
    ;;
esac
