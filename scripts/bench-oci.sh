#!/usr/bin/env bash
# bench-oci.sh - the agent's OCI image pull + unpack against `skopeo copy` + `umoci unpack`
# of the same image from the same loopback registry (issue 7; BENCHMARKS.md, "Agent: OCI
# image pull (issue 7)").
#
# WHAT IT DOES
#   1. Installs what is missing (scripts/prereqs.sh: docker-registry, umoci, skopeo; here:
#      GNU time, strace, taskset) and builds the release binaries drover-oci-bench and
#      drover-sample-app (packed into the images).
#   2. Waits (bounded) until other work leaves the machine alone, then runs
#      `drover-oci-bench run` (tests/src/bin/drover-oci-bench.rs) pinned to CPU
#      $REGISTRY_CPUS: it starts docker-registry on 127.0.0.1 (which inherits that CPU),
#      builds and pushes image v1 (3 layers: base, app, data, padded with incompressible
#      bytes to $PADDING_MIB MiB) and v2 (same base and app, a new data layer), and runs
#      $WARMUP uncounted and $REPS counted rounds, the sides in alternating order, every
#      client pinned to CPU $CLIENT_CPUS (both sides get the same CPU):
#        baseline  skopeo copy docker://HOST/bench@DIGEST oci:DIR:bench, then
#                  umoci unpack --image DIR:bench BUNDLE, timed together, fresh dirs;
#        agent     `drover-oci-bench pull`: the agent's oci::pull::pull +
#                  oci::stage::stage_image on the agent's runtime, fresh state dir;
#      then (not compared) v2 pulled into the agent's state dir through a proxy that counts
#      blob bytes, and `pull --split` (layers applied and fsyncs timed apart). Each round
#      also checks the agent's rootfs against umoci's. With STRACE=1, one last agent run
#      and baseline under strace count each side's fsync calls.
#   3. Prints the RESULT lines and the summary (median (min-max), ratio agent/baseline,
#      second-pull bytes, peak RSS); raw output under $BENCH_TMP/oci/raw/.
#   Everything it starts is stopped by PID on exit. All traffic stays on 127.0.0.1.
#
# Knobs (env): REPS=5 WARMUP=1 PADDING_MIB=40,40,20 REGISTRY_CPUS=0 CLIENT_CPUS=1 SPLIT=1
#   STRACE=1 QUIET_WAIT=30 QUIET_BUDGET=120 BENCH_TMP=/tmp/drover-bench
#   PROFILE=agent (the cargo profile of the agent library; release to compare)
#   BASE_TREE= (e.g. /usr/lib/python3.11,/usr/share/perl: those directories of this machine
#   go into the base layer, for an image of many real files; try PADDING_MIB=0,20,10)
# Needs: root (apt-get; umoci unpack keeps owners); 2 CPUs; about 1.5 GiB free in BENCH_TMP.
# Takes about 2 minutes with the defaults (plus the build).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

REPS="${REPS:-5}"
WARMUP="${WARMUP:-1}"
PADDING_MIB="${PADDING_MIB:-40,40,20}"
REGISTRY_CPUS="${REGISTRY_CPUS:-0}"
CLIENT_CPUS="${CLIENT_CPUS:-1}"
SPLIT="${SPLIT:-1}"
STRACE="${STRACE:-1}"
PROFILE="${PROFILE:-agent}"
QUIET_WAIT="${QUIET_WAIT:-30}"
QUIET_BUDGET="${QUIET_BUDGET:-120}"
BENCH_TMP="${BENCH_TMP:-/tmp/drover-bench}"
BASE_TREE="${BASE_TREE:-}"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

(( REPS >= 1 && REPS <= 20 )) || die "REPS out of range 1..20"
(( WARMUP >= 0 && WARMUP <= 3 )) || die "WARMUP out of range 0..3"
(( $(id -u) == 0 )) || die "run as root (umoci unpack keeps owners; apt-get)"

. scripts/prereqs.sh
missing=()
[[ -x /usr/bin/time ]] || missing+=(time)
command -v taskset >/dev/null || missing+=(util-linux)
if (( STRACE )); then command -v strace >/dev/null || missing+=(strace); fi
if (( ${#missing[@]} )); then apt_install "${missing[@]}"; fi
(( $(nproc) >= 2 )) || die "needs 2 CPUs (registry on CPU $REGISTRY_CPUS, clients on CPU $CLIENT_CPUS)"
. scripts/bench-lib.sh

W="$BENCH_TMP/oci"
RAW="$W/raw"
rm -rf "$W"
mkdir -p "$RAW"

# The agent's library as it ships: the size-optimised `agent` profile (Cargo.toml).
log "building (cargo build --profile $PROFILE -p drover-tests --bin drover-oci-bench --bin drover-sample-app)"
cargo build --profile "$PROFILE" -p drover-tests --bin drover-oci-bench --bin drover-sample-app
BIN="$ROOT/target/$PROFILE"

{
    echo "date: $(date -u +%FT%TZ)  host: $(nproc) cores, $(uname -r), $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "drover: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)  rustc: $(rustc --version)"
    echo "$(skopeo --version), $(umoci --version), docker-registry $(dpkg-query -W -f='${Version}' docker-registry 2>/dev/null || echo '?')"
    echo "REPS=$REPS WARMUP=$WARMUP PADDING_MIB=$PADDING_MIB BASE_TREE=$BASE_TREE REGISTRY_CPUS=$REGISTRY_CPUS CLIENT_CPUS=$CLIENT_CPUS SPLIT=$SPLIT STRACE=$STRACE"
    echo "filesystem of $BENCH_TMP: $(df -T "$BENCH_TMP" | awk 'NR == 2 { print $2, $1 }')"
} | tee "$RAW/env.txt" >&2

args=(run --reps "$REPS" --warmup "$WARMUP" --padding-mib "$PADDING_MIB" --client-cpus "$CLIENT_CPUS"
      --work "$W/work" --sample-app "$BIN/drover-sample-app"
      --quiet-wait-s "$QUIET_WAIT" --quiet-budget-s "$QUIET_BUDGET")
(( SPLIT )) || args+=(--no-split)
[[ -z "$BASE_TREE" ]] || args+=(--base-tree "$BASE_TREE")
(( STRACE )) && args+=(--strace)

wait_quiet "the OCI benchmark"
# In the background so that the EXIT trap can stop it by PID (it stops its registry and
# children itself on SIGTERM).
taskset -c "$REGISTRY_CPUS" "$BIN/drover-oci-bench" "${args[@]}" >"$RAW/results.txt" 2>"$RAW/progress.log" &
BENCH_PID=$!
STARTED+=("$BENCH_PID")
tail -f --pid="$BENCH_PID" "$RAW/progress.log" >&2 &
STARTED+=("$!")
rc=0
wait "$BENCH_PID" || rc=$?
(( rc == 0 )) || die "drover-oci-bench failed (exit $rc): $(tail -5 "$RAW/progress.log")"
cat "$RAW/results.txt"

# A cross-check of the binary's summary from the raw RESULT lines.
grep 'counted=1 kind=agent ' "$RAW/results.txt" >"$RAW/agent.txt"
grep 'counted=1 kind=baseline ' "$RAW/results.txt" >"$RAW/baseline.txt"
grep 'counted=1 kind=second_pull ' "$RAW/results.txt" >"$RAW/second.txt"
echo
echo "OCI pull of a 3-layer image ($PADDING_MIB MiB padding${BASE_TREE:+, base tree $BASE_TREE}), $REPS rounds: median (min-max)"
printf '  baseline skopeo copy + umoci unpack, s   %s\n' "$(mmm "$RAW/baseline.txt" seconds %.3f)"
printf '  agent pull + stage_image, s             %s\n' "$(mmm "$RAW/agent.txt" seconds %.3f)"
printf '  agent peak RSS, KiB                     %s\n' "$(mmm "$RAW/agent.txt" vmhwm_kib)"
printf '  second pull: downloaded bytes           %s\n' "$(mmm "$RAW/second.txt" downloaded_bytes)"
awk -v a="$(median "$RAW/agent.txt" seconds)" -v b="$(median "$RAW/baseline.txt" seconds)" \
    'BEGIN { printf "  ratio agent/baseline                    %.2f\n", a / b }'
echo "raw: $RAW/results.txt $RAW/progress.log $RAW/env.txt $RAW/quiet.txt"
