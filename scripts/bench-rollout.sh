#!/usr/bin/env bash
# bench-rollout.sh - staged rollouts at fleet scale (issue 6; BENCHMARKS.md, "Rollouts
# (issue 6)").
#
# WHAT IT DOES
#   1. Builds the release binaries and starts `drover serve` (release) on a fresh data
#      directory, pinned to CPU 0 (taskset -c 0), on 127.0.0.1:$DROVER_PORT.
#   2. `drover-rollout-bench` (tests/src/bin/drover-rollout-bench.rs), pinned to CPU 1,
#      enrolls $HOSTS simulated agents (real protocol over mTLS: long-poll with ETag,
#      manifest verification, reports) healthy on web 1.0, then $REPS times releases the
#      next version and rolls it out (`--stages $STAGES --max-in-flight $MAX_IN_FLIGHT
#      --bake 0s`), timing the start request until the status says `completed`, with
#      the coordinator's CPU seconds and peak RSS (VmHWM reset before each rollout).
#      Simulated installs take $INSTALL_MIN_MS..$INSTALL_MAX_MS ms.
#   3. Prints the median (min-max) over the rollouts; raw lines in $BENCH_TMP/rollout/.
#   Everything it starts is stopped by PID on exit. All traffic stays on 127.0.0.1.
#
# Knobs (env): HOSTS=10000 REPS=3 STAGES=canary,10%,50%,100% MAX_IN_FLIGHT=10%
#   INSTALL_MIN_MS=0 INSTALL_MAX_MS=0 DROVER_PORT=18700 QUIET_WAIT=60 QUIET_BUDGET=180
#   BENCH_TMP=/tmp/drover-bench
#   BIN_DIR=   (prebuilt release binaries `drover` and `drover-rollout-bench`; no build
#              then: BENCHMARKS.md, issue 15, compares two trees this way)
#   LABEL=     (names the run: output goes to $BENCH_TMP/rollout-$LABEL)
#   DATABASE=  (postgres://...: the coordinator serves from this PostgreSQL database, which
#              must be empty, instead of SQLite; releases are then `remote_tarball`s, as
#              a coordinator on PostgreSQL refuses uploads. Issue 16; scripts/bench-postgres.sh
#              shows how to start a PostgreSQL of one's own)
# Needs: root for apt-get when curl or taskset are missing; 2 CPUs.
# Takes about 2 minutes with the defaults (plus the build).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

HOSTS="${HOSTS:-10000}"
REPS="${REPS:-3}"
STAGES="${STAGES:-canary,10%,50%,100%}"
MAX_IN_FLIGHT="${MAX_IN_FLIGHT:-10%}"
INSTALL_MIN_MS="${INSTALL_MIN_MS:-0}"
INSTALL_MAX_MS="${INSTALL_MAX_MS:-0}"
DROVER_PORT="${DROVER_PORT:-18700}"
QUIET_WAIT="${QUIET_WAIT:-60}"
QUIET_BUDGET="${QUIET_BUDGET:-180}"
BENCH_TMP="${BENCH_TMP:-/tmp/drover-bench}"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

(( HOSTS >= 1 && HOSTS <= 50000 )) || die "HOSTS out of range 1..50000"
(( REPS >= 1 && REPS <= 20 )) || die "REPS out of range 1..20"
(( INSTALL_MIN_MS >= 0 && INSTALL_MAX_MS >= INSTALL_MIN_MS && INSTALL_MAX_MS <= 60000 )) \
    || die "need 0 <= INSTALL_MIN_MS <= INSTALL_MAX_MS <= 60000"
# LABEL becomes part of a directory the script empties with rm -rf: one path component.
[[ "${LABEL:-}" =~ ^[A-Za-z0-9._-]{0,64}$ && "${LABEL:-}" != .* ]] \
    || die "LABEL must be up to 64 letters, digits, '.', '_' or '-', not starting with '.'"

. scripts/prereqs.sh
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v taskset >/dev/null || missing+=(util-linux)
if (( ${#missing[@]} )); then apt_install "${missing[@]}"; fi
(( $(nproc) >= 2 )) || die "needs 2 CPUs (server on CPU 0, simulated fleet on CPU 1)"
. scripts/bench-lib.sh

# Every simulated host holds one connection, and the coordinator one per host: each
# process needs HOSTS descriptors and some.
ulimit -n "$(ulimit -Hn)"
(( $(ulimit -n) >= HOSTS + 500 )) || die "open-file limit $(ulimit -n) is too low for $HOSTS hosts"

W="$BENCH_TMP/rollout${LABEL:+-$LABEL}"
RAW="$W/raw"
port_free "$DROVER_PORT" || die "port $DROVER_PORT is already in use"
rm -rf "$W"
mkdir -p "$W" "$RAW"

if [[ -n "${BIN_DIR:-}" ]]; then
    BIN="$(cd "$BIN_DIR" && pwd)"
    for b in drover drover-rollout-bench; do [[ -x "$BIN/$b" ]] || die "BIN_DIR=$BIN_DIR has no executable $b: build it with cargo build --release -p drover-coordinator -p drover-tests --bins"; done
    log "using prebuilt binaries in $BIN (no build)"
else
    log "building release binaries (cargo build --release -p drover-coordinator -p drover-tests --bins)"
    cargo build --release -p drover-coordinator -p drover-tests --bins
    BIN="$ROOT/target/release"
fi

{
    echo "date: $(date -u +%FT%TZ)  host: $(nproc) cores, $(uname -r), $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "drover: $(drover_revision)  binaries: $BIN${LABEL:+  label: $LABEL}  rustc: $(rustc --version)"
    echo "HOSTS=$HOSTS REPS=$REPS STAGES=$STAGES MAX_IN_FLIGHT=$MAX_IN_FLIGHT INSTALL_MS=$INSTALL_MIN_MS..$INSTALL_MAX_MS${DATABASE:+ DATABASE=$DATABASE}"
} | tee "$RAW/env.txt" >&2

start_drover "$RAW/serve.log"
log "coordinator PID $DROVER_PID on CPU 0; fleet of $HOSTS on CPU 1"
wait_quiet "rollouts"
taskset -c 1 "$BIN/drover-rollout-bench" --url "https://127.0.0.1:$DROVER_PORT" --data-dir "$W/data" \
    --pid "$DROVER_PID" --hosts "$HOSTS" --reps "$REPS" --stages "$STAGES" --max-in-flight "$MAX_IN_FLIGHT" \
    --install-min-ms "$INSTALL_MIN_MS" --install-max-ms "$INSTALL_MAX_MS" ${DATABASE:+--remote-artifacts} \
    | tee "$RAW/results.txt"
memory "after the rollouts"

echo
echo "Rollouts of $HOSTS simulated hosts ($STAGES, max in flight $MAX_IN_FLIGHT, bake 0 s, installs $INSTALL_MIN_MS..$INSTALL_MAX_MS ms), $REPS runs: median (min-max)"
printf '  start -> completed, s          %s\n' "$(mmm "$RAW/results.txt" seconds %.2f)"
printf '  coordinator CPU, s            %s\n' "$(mmm "$RAW/results.txt" coordinator_cpu_s %.2f)"
printf '  coordinator peak RSS, KiB     %s\n' "$(mmm "$RAW/results.txt" coordinator_peak_rss_kib)"
printf '  manifests taken per rollout   %s\n' "$(mmm "$RAW/results.txt" manifests)"
printf '  reports sent per rollout      %s\n' "$(mmm "$RAW/results.txt" reports)"
printf '  retries per rollout           %s\n' "$(mmm "$RAW/results.txt" retries)"
