#!/usr/bin/env bash
# bench-agent.sh - the agent's host-side figures (issue 4; BENCHMARKS.md, "Agent (issue 4)"),
# measured in one run together with the mender-client baseline.
#
# WHAT IT DOES
#   1. Builds the release binaries (`cargo build --release --workspace --bins`) and the
#      packages the hosts install (packaging/build.sh: the agent from the size-optimised
#      `agent` profile, stripped), and records the size of the packaged drover-agent.
#   2. Idle footprint, $REPS runs of $DURATION s, each on a fresh systemd-nspawn host
#      (tests/src/bin/drover-agent-bench.rs, `idle`): a real `drover serve` on 127.0.0.1,
#      the real drover-agent under systemd/drover-agent.service, joined with a token; `web 1`
#      (the sample app) deployed and healthy (IDLE_APP=0: nothing deployed); then the agent
#      is restarted on the product's default intervals (poll_interval 30 s, long_poll 60 s).
#      From the moment the restart returns (Type=notify: the agent is up), VmRSS, VmHWM,
#      RssAnon, RssFile, Threads (/proc/PID/status) and utime+stime (/proc/PID/stat) of
#      the agent's machine-side PID are sampled every 5 s, as mender-rss.sh does.
#   3. Pin latency, $PINS pins alternating between two good releases of `web` on one host
#      (same defaults): from the start of `drover pin web V` until the app's port answers
#      V from a new process, with the split (pin command, "accepted manifest" and "is
#      healthy" in the agent's journal, systemd stopping/starting the app unit).
#   4. /work/shared/bench/mender-rss.sh (REPS, DURATION as above): Debian's mender-client
#      daemon measured the same way ($MENDER_BENCH to point elsewhere; MENDER=0 skips it).
#   5. A summary: medians (min-max), ratios drover/mender, verdicts against the targets.
#   Everything stays on 127.0.0.1; hosts and the coordinator are stopped by the bench
#   program (by PID) on exit. Raw output: $BENCH_TMP/agent/<UTC timestamp>/.
#
# Knobs (env): REPS=3 DURATION=60 PINS=10 IDLE_APP=1 MENDER=1 BENCH_TMP=/tmp/drover-bench
# Needs: root, systemd-nspawn, debootstrap (scripts/rootfs.sh builds the hosts' rootfs once);
#   mender-rss.sh builds /tmp/rootfs-bench once (several minutes).
# Takes about 4 + 1 + 4 minutes with the defaults, plus the build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

REPS="${REPS:-3}"
DURATION="${DURATION:-60}"
PINS="${PINS:-10}"
IDLE_APP="${IDLE_APP:-1}"
MENDER="${MENDER:-1}"
MENDER_BENCH="${MENDER_BENCH:-/work/shared/bench/mender-rss.sh}"
BENCH_TMP="${BENCH_TMP:-/tmp/drover-bench}"
export BENCH_TMP

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

(( REPS >= 1 && REPS <= 10 )) || die "REPS must be 1..10"
(( DURATION >= 10 && DURATION <= 600 )) || die "DURATION must be 10..600"
(( PINS >= 2 && PINS <= 100 )) || die "PINS must be 2..100"
[[ $(id -u) == 0 ]] || die "needs root (systemd-nspawn hosts)"

OUT="$BENCH_TMP/agent/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"

# field KEY < RESULT lines: the values of KEY=..., one per line.
field() { awk -v k="$1" '{ for (i = 1; i <= NF; i++) { n = index($i, "="); if (n && substr($i, 1, n - 1) == k) print substr($i, n + 1) } }'; }
# stats < numbers: "median min max".
stats() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print "nan nan nan"; exit }
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m, v[1], v[NR] }'; }
# mmm FILE KEY SCALE FORMAT: "median (min-max)" of KEY/SCALE over the RESULT lines in FILE.
mmm() { field "$2" <"$1" | awk -v s="$3" '{ print $1 / s }' | stats | awk -v f="$4" '{ printf f " (" f "–" f ")", $1, $2, $3 }'; }
median() { field "$2" <"$1" | awk -v s="$3" '{ print $1 / s }' | stats | awk '{ print $1 }'; }

# --- 1. build ----------------------------------------------------------------------------
log "building release binaries (waits for the cargo lock if another build holds it)"
cargo build --release --workspace --bins 2>&1 | tail -3 >&2
# The hosts install the agent from dist/'s .deb: build the packages as they ship.
bash packaging/build.sh 2>&1 | tail -3 >&2
AGENT_BIN="$ROOT/target/packaging/bin/drover-agent"
AGENT_BYTES=$(stat -c %s "$AGENT_BIN")
file "$AGENT_BIN" >"$OUT/agent-binary.txt" 2>/dev/null || true
# drover_tests::binary() resolves drover/drover-agent next to target/<profile>/deps/.
BENCH="$ROOT/target/release/deps/drover-agent-bench"
install -m 0755 "$ROOT/target/release/drover-agent-bench" "$BENCH"
GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')"

# --- 2. idle -----------------------------------------------------------------------------
log "idle: $REPS runs x ${DURATION}s, each on a fresh host (IDLE_APP=$IDLE_APP)"
idle_args=(idle --reps "$REPS" --duration "$DURATION" --out "$OUT")
[[ "$IDLE_APP" == 1 ]] || idle_args+=(--no-app)
"$BENCH" "${idle_args[@]}" >"$OUT/idle.results" 2>"$OUT/idle.log" || { tail -40 "$OUT/idle.log" >&2; die "idle bench failed"; }
grep RESULT "$OUT/idle.results" >&2

# --- 3. pins -----------------------------------------------------------------------------
log "pin latency: $PINS pins"
"$BENCH" pins --count "$PINS" --out "$OUT" >"$OUT/pins.results" 2>"$OUT/pins.log" || { tail -40 "$OUT/pins.log" >&2; die "pin bench failed"; }
grep RESULT "$OUT/pins.results" >&2

# --- 4. mender ---------------------------------------------------------------------------
if [[ "$MENDER" == 1 ]]; then
    log "mender-client baseline: $MENDER_BENCH (REPS=$REPS DURATION=$DURATION)"
    REPS="$REPS" DURATION="$DURATION" bash "$MENDER_BENCH" >"$OUT/mender.out" 2>"$OUT/mender.log" \
        || { tail -40 "$OUT/mender.log" >&2; die "mender-rss.sh failed"; }
fi

# --- 5. summary --------------------------------------------------------------------------
I="$OUT/idle.results" P="$OUT/pins.results"
{
echo "== drover-agent host-side benchmarks, $(date -u +%FT%TZ), tree $GIT_REV, $(nproc) cores, $(uname -r) =="
echo "config: product defaults (poll_interval 30s, long_poll 60s); idle runs with one healthy app: $IDLE_APP"
echo "binary: packaged drover-agent $AGENT_BYTES bytes ($(awk -v b="$AGENT_BYTES" 'BEGIN{printf "%.2f", b/1048576}') MiB); $(grep -qw stripped "$OUT/agent-binary.txt" && echo stripped || echo NOT stripped)"
echo "-- idle agent, $REPS runs x ${DURATION}s: median (min–max)"
echo "VmRSS at 10s          MiB  $(mmm "$I" rss10_kib 1024 %.2f)"
echo "VmRSS at end (${DURATION}s)   MiB  $(mmm "$I" rss_kib 1024 %.2f)"
echo "VmHWM at end          MiB  $(mmm "$I" hwm_kib 1024 %.2f)"
echo "RssAnon / RssFile / RssShmem MiB  $(mmm "$I" anon_kib 1024 %.2f) / $(mmm "$I" file_kib 1024 %.2f) / $(mmm "$I" shmem_kib 1024 %.2f)"
echo "  by mapping: drover-agent binary $(mmm "$I" binmap_kib 1024 %.2f), shared libs $(mmm "$I" libs_kib 1024 %.2f), [heap] $(mmm "$I" heap_kib 1024 %.2f)"
echo "threads                    $(mmm "$I" threads 1 %.0f)"
echo "CPU s in ${DURATION}s (utime+stime)   $(mmm "$I" cpu_s 1 %.2f)"
echo "CPU s in first 10s               $(mmm "$I" cpu10_s 1 %.2f)"
field sched_s <"$I" >"$OUT/.a"; field sched10_s <"$I" >"$OUT/.b"
paste "$OUT/.a" "$OUT/.b" | awk -v d="$DURATION" '{ printf "%.6f\n", 100 * ($1 - $2) / (d - 10) }' >"$OUT/.steady"
echo "steady CPU 10s..${DURATION}s, % of a core (schedstat)  $(stats <"$OUT/.steady" | awk '{ printf "%.4f (%.4f–%.4f)", $1, $2, $3 }')"
field cpu_s <"$I" | awk -v d="$DURATION" '{ printf "%.6f\n", 100 * $1 / d }' >"$OUT/.whole"
field cpu_s <"$I" >"$OUT/.c"; field cpu10_s <"$I" >"$OUT/.d"
echo "steady CPU 10s..${DURATION}s, % of a core (utime+stime ticks)  $(paste "$OUT/.c" "$OUT/.d" | awk -v d="$DURATION" '{ printf "%.6f\n", 100 * ($1 - $2) / (d - 10) }' | stats | awk '{ printf "%.3f (%.3f–%.3f)", $1, $2, $3 }')"
echo "CPU over the whole ${DURATION}s incl. start-up, % of a core  $(stats <"$OUT/.whole" | awk '{ printf "%.3f (%.3f–%.3f)", $1, $2, $3 }')"
echo "poll failures logged: $(field poll_failures <"$I" | awk '{ s += $1 } END { print s + 0 }')"
echo "-- pin -> new app process answering, $PINS pins: median (min–max) seconds from the start of \`drover pin\`"
echo "pin command wall time     $(mmm "$P" pin_cmd_s 1 %.3f)"
echo "agent: accepted manifest  $(mmm "$P" accepted_s 1 %.3f)"
echo "systemd: Stopping app     $(mmm "$P" stopping_s 1 %.3f)"
echo "systemd: Started app      $(mmm "$P" started_s 1 %.3f)"
echo "port answers new version  $(mmm "$P" serving_s 1 %.3f)"
echo "agent: healthy            $(mmm "$P" healthy_s 1 %.3f)"
echo "agent after the $PINS pins (same process): $(grep 'RESULT pinmem' "$P" | cut -d' ' -f3-)"
AR=$(median "$I" rss_kib 1024); AH=$(median "$I" hwm_kib 1024); AC=$(median "$I" cpu_s 1)
AS=$(stats <"$OUT/.steady" | awk '{ print $1 }'); PS=$(median "$P" serving_s 1)
echo "-- verdicts"
awk -v r="$AR" -v s="$AS" -v b="$AGENT_BYTES" -v p="$PS" 'BEGIN {
    printf "RSS %.2f MiB vs <= 10 MiB: %s\n", r, (r <= 10 ? "MET" : "MISSED")
    printf "idle CPU %.4f %% of a core vs <= 0.1 %%: %s\n", s, (s <= 0.1 ? "MET" : "MISSED")
    printf "binary %.2f MiB vs <= 12 MiB: %s\n", b / 1048576, (b <= 12 * 1048576 ? "MET" : "MISSED")
    printf "pin -> new version served %.3f s vs <= 1.5 s: %s\n", p, (p <= 1.5 ? "MET" : "MISSED") }'
if [[ "$MENDER" == 1 ]]; then
    MR=$(awk '/^VmRSS at [0-9]+s +MiB/ && !/at 10s/ { print $6 }' "$OUT/mender.out")
    MH=$(awk '/^VmHWM at/ { print $6 }' "$OUT/mender.out")
    MC=$(awk '/^CPU s in/ { print $7 }' "$OUT/mender.out")
    MB=$(awk -F'[ :]+' '/\/usr\/bin\/mender:/ { print $3 }' "$OUT/mender.out")
    echo "-- vs mender-client (same run; $(grep -m1 'mender --version' "$OUT/mender.out" | cut -c3-))"
    awk -v ar="$AR" -v mr="$MR" -v ah="$AH" -v mh="$MH" -v ac="$AC" -v mc="$MC" -v ab="$AGENT_BYTES" -v mb="$MB" 'BEGIN {
        printf "VmRSS   drover %.2f / mender %.2f MiB = %.2fx\n", ar, mr, ar / mr
        printf "VmHWM   drover %.2f / mender %.2f MiB = %.2fx\n", ah, mh, ah / mh
        printf "CPU s   drover %.2f / mender %.2f     = %.2fx\n", ac, mc, (mc > 0 ? ac / mc : 0)
        printf "binary  drover %.2f / mender %.2f MiB = %.2fx\n", ab / 1048576, mb / 1048576, ab / mb }'
    echo "mender per run:"; grep '^run ' "$OUT/mender.out"
fi
echo "raw: $OUT"
} | tee "$OUT/summary.txt"
