#!/usr/bin/env bash
# bench-postgres.sh - one coordinator on PostgreSQL against the same binary on SQLite
# (issue 16; BENCHMARKS.md, "Several coordinators on PostgreSQL (issue 16)").
#
# WHAT IT DOES
#   1. Starts a PostgreSQL of its own: initdb in a fresh directory under $BENCH_TMP, run as
#      `nobody` (PostgreSQL refuses root), on 127.0.0.1:$PG_PORT, fsync ON (the default:
#      unlike the test fixture, which turns it off), not pinned to a CPU.
#   2. Starts two coordinators from the same binary, both pinned to CPU 0: "sqlite" (a data
#      directory of its own, SQLite) on $SQLITE_PORT and "postgres" (`--database
#      postgres://...`, a data directory of its own for the CA and keys) on $PG_DROVER_PORT.
#      Each gets $HOSTS hosts enrolled with `drover-load enroll` (pinned to CPU 1).
#   3. 304 polls, interleaved (REPS=0 skips them): `drover-load polls` with $CONNS
#      keep-alive connections for $DURATION s against sqlite, postgres, postgres, sqlite,
#      sqlite, postgres ... ($REPS rounds of one run each, the order alternating per round).
#      Polls are answered from memory in both modes; the other coordinator sits idle
#      meanwhile.
#   4. Memory per held long-poll, $HOLD_REPS rounds alternating the mode first:
#      `drover-load hold` reads the coordinator's VmRSS with $HOSTS hosts enrolled and not
#      connected, with each of them connected (one GET), with each long-polling
#      (?wait=300), and after they hung up.
#   Every timed run waits (bounded) for the machine to be quiet first, and its RESULT line
#   says how busy the rest of the machine was. Everything it starts (coordinators,
#   PostgreSQL) is stopped by PID on exit and the cluster directory removed. All traffic
#   stays on 127.0.0.1. Raw output: $BENCH_TMP/postgres${LABEL:+-$LABEL}/raw/.
#
# Knobs (env): HOSTS=2000 DURATION=10 REPS=4 (0: no polls) HOLD_REPS=2 CONNS=64
#   ENROLL_PARALLEL=16
#   SQLITE_PORT=18800 PG_DROVER_PORT=18801 PG_PORT=18832 QUIET_WAIT=30 QUIET_BUDGET=120
#   BENCH_TMP=/tmp/drover-bench
#   BIN_DIR=   (prebuilt release binaries `drover` and `drover-load`; else it builds)
#   LABEL=     (names the run: output goes to $BENCH_TMP/postgres-$LABEL)
#   PG_BIN=    (directory of initdb and postgres; default: the newest
#              /usr/lib/postgresql/<version>/bin)
#   The coordinators inherit the environment: e.g. MIMALLOC_PURGE_DELAY=0 tries an
#   allocator setting on both.
# Needs: root (PostgreSQL runs as nobody), 2 CPUs, PostgreSQL installed, curl, taskset.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

HOSTS="${HOSTS:-2000}"
DURATION="${DURATION:-10}"
REPS="${REPS:-4}"
HOLD_REPS="${HOLD_REPS:-2}"
CONNS="${CONNS:-64}"
ENROLL_PARALLEL="${ENROLL_PARALLEL:-16}"
SQLITE_PORT="${SQLITE_PORT:-18800}"
PG_DROVER_PORT="${PG_DROVER_PORT:-18801}"
PG_PORT="${PG_PORT:-18832}"
QUIET_WAIT="${QUIET_WAIT:-30}"
QUIET_BUDGET="${QUIET_BUDGET:-120}"
BENCH_TMP="${BENCH_TMP:-/tmp/drover-bench}"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

(( HOSTS >= 1 && HOSTS <= 50000 )) || die "HOSTS out of range 1..50000"
(( DURATION >= 1 && DURATION <= 120 )) || die "DURATION out of range 1..120"
(( REPS >= 0 && REPS <= 20 )) || die "REPS out of range 0..20"
(( HOLD_REPS >= 0 && HOLD_REPS <= 20 )) || die "HOLD_REPS out of range 0..20"
(( CONNS >= 1 && CONNS <= 1024 && CONNS <= HOSTS )) || die "CONNS must be 1..1024 and at most HOSTS"
[[ "${LABEL:-}" =~ ^[A-Za-z0-9._-]{0,64}$ && "${LABEL:-}" != .* ]] \
    || die "LABEL must be up to 64 letters, digits, '.', '_' or '-', not starting with '.'"
(( $(id -u) == 0 )) || die "run as root (PostgreSQL is started as nobody)"
(( $(nproc) >= 2 )) || die "needs 2 CPUs (coordinators on CPU 0, load on CPU 1)"
for tool in curl taskset setpriv psql; do command -v "$tool" >/dev/null || die "$tool is missing"; done
if [[ -z "${PG_BIN:-}" ]]; then
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
fi
[[ -x "${PG_BIN:-}/postgres" && -x "$PG_BIN/initdb" ]] || die "no PostgreSQL found (apt-get install postgresql, or set PG_BIN)"

. scripts/bench-lib.sh

ulimit -n "$(ulimit -Hn)"
(( $(ulimit -n) >= HOSTS + 500 )) || die "open-file limit $(ulimit -n) is too low for $HOSTS hosts"

W="$BENCH_TMP/postgres${LABEL:+-$LABEL}"
RAW="$W/raw"
for p in "$SQLITE_PORT" "$PG_DROVER_PORT" "$PG_PORT"; do port_free "$p" || die "port $p is already in use"; done
rm -rf "$W"
mkdir -p "$W" "$RAW"

if [[ -n "${BIN_DIR:-}" ]]; then
    BIN="$(cd "$BIN_DIR" && pwd)"
    for b in drover drover-load; do [[ -x "$BIN/$b" ]] || die "BIN_DIR=$BIN_DIR has no executable $b"; done
    log "using prebuilt binaries in $BIN (no build)"
else
    log "building release binaries (cargo build --release -p drover-coordinator -p drover-tests --bins)"
    cargo build --release -p drover-coordinator -p drover-tests --bins
    BIN="$ROOT/target/release"
fi
LOAD=(taskset -c 1 "$BIN/drover-load")

# --- PostgreSQL of our own, fsync on (bench-lib.sh) -------------------------------------
start_postgres
"$PG_BIN/createdb" --host 127.0.0.1 --port "$PG_PORT" --username drover drover
DATABASE="postgres://drover@127.0.0.1:$PG_PORT/drover"

{
    echo "date: $(date -u +%FT%TZ)  host: $(nproc) cores, $(uname -r), $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "drover: $(drover_revision)  binaries: $BIN${LABEL:+  label: $LABEL}"
    echo "postgres: $("$PG_BIN/postgres" --version)  fsync=$PG_FSYNC synchronous_commit=$PG_SYNC (not pinned)"
    echo "HOSTS=$HOSTS DURATION=$DURATION REPS=$REPS HOLD_REPS=$HOLD_REPS CONNS=$CONNS"
} | tee "$RAW/env.txt" >&2

# --- the two coordinators -------------------------------------------------------------------
declare -A PID PORT
PORT[sqlite]=$SQLITE_PORT
PORT[postgres]=$PG_DROVER_PORT
start_mode() {  # MODE: starts that coordinator on CPU 0 and waits until it answers HTTPS
    local mode="$1" extra=()
    [[ "$mode" == postgres ]] && extra=(--database "$DATABASE")
    DROVER_LOG=warn taskset -c 0 "$BIN/drover" serve --listen "127.0.0.1:${PORT[$mode]}" \
        --data-dir "$W/$mode/data" "${extra[@]}" >"$RAW/serve-$mode.log" 2>&1 &
    PID[$mode]=$!
    STARTED+=("${PID[$mode]}")
    local deadline=$(( $(date +%s) + 120 ))
    while (( $(date +%s) < deadline )); do
        curl -sf --max-time 2 --cacert "$W/$mode/data/ca.pem" "https://127.0.0.1:${PORT[$mode]}/healthz" >/dev/null 2>&1 && return 0
        kill -0 "${PID[$mode]}" 2>/dev/null || die "drover serve ($mode) exited: $(tail -5 "$RAW/serve-$mode.log")"
        sleep 0.05
    done
    die "drover serve ($mode) did not answer within 120 s"
}
for mode in sqlite postgres; do
    mkdir -p "$W/$mode"
    start_mode "$mode"
    DROVER_PID=${PID[$mode]}
    log "enrolling $HOSTS hosts into $mode ($ENROLL_PARALLEL in flight)"
    "${LOAD[@]}" enroll --url "https://127.0.0.1:${PORT[$mode]}" --data-dir "$W/$mode/data" --hosts "$HOSTS" \
        --out "$W/$mode/ids" --parallel "$ENROLL_PARALLEL" --server-pid "$DROVER_PID" --max-time 20m \
        | sed "s/^RESULT /RESULT mode=$mode /" | tee -a "$RAW/enroll.txt"
    printf '%s after enrolment: VmRSS %s KiB\n' "$mode" "$(mem_kib "$DROVER_PID" VmRSS)" | tee -a "$RAW/memory.txt" >&2
done

# --- 304 polls, interleaved ---------------------------------------------------------------------
poll_run() {  # MODE ROUND
    local mode="$1"
    wait_quiet "polls-$mode-$2"
    log "polls round $2/$REPS: $mode"
    "${LOAD[@]}" polls --url "https://127.0.0.1:${PORT[$mode]}/v1/agent/manifest" --identities "$W/$mode/ids" \
        --connections "$CONNS" --duration "${DURATION}s" --label "$mode" --server-pid "${PID[$mode]}" \
        | tee -a "$RAW/polls-$mode.txt"
}
for ((rep = 1; rep <= REPS; rep++)); do
    if (( rep % 2 )); then poll_run sqlite "$rep"; poll_run postgres "$rep"
    else poll_run postgres "$rep"; poll_run sqlite "$rep"; fi
done

# --- memory per held long-poll ------------------------------------------------------------------
hold_run() {  # MODE ROUND
    local mode="$1"
    wait_quiet "hold-$mode-$2"
    log "hold round $2/$HOLD_REPS: $mode, $HOSTS long-polls"
    "${LOAD[@]}" hold --url "https://127.0.0.1:${PORT[$mode]}" --identities "$W/$mode/ids" --hosts "$HOSTS" \
        --server-pid "${PID[$mode]}" | sed "s/^RESULT hold /RESULT hold mode=$mode round=$2 /" \
        | tee -a "$RAW/hold-$mode.txt"
}
for ((rep = 1; rep <= HOLD_REPS; rep++)); do
    if (( rep % 2 )); then hold_run sqlite "$rep"; hold_run postgres "$rep"
    else hold_run postgres "$rep"; hold_run sqlite "$rep"; fi
done

# --- summary ------------------------------------------------------------------------------------
if (( REPS > 0 )); then
    S_RPS=$(median "$RAW/polls-sqlite.txt" rps)
    P_RPS=$(median "$RAW/polls-postgres.txt" rps)
fi
{
    echo "== drover on PostgreSQL vs SQLite ($(date -u +%FT%TZ); raw: $RAW) =="
    cat "$RAW/env.txt"
    echo
    echo "enrolment of $HOSTS hosts, joins/s: $(grep mode=sqlite "$RAW/enroll.txt" | field joins_per_s) (sqlite)" \
        "$(grep mode=postgres "$RAW/enroll.txt" | field joins_per_s) (postgres)"
    if (( REPS > 0 )); then
        echo "304 polls, $CONNS keep-alive mTLS connections, ${DURATION}s x $REPS rounds, median (min-max):"
        for mode in sqlite postgres; do
            printf '  %-9s %s req/s   p99 %s us   server CPU %s us/req   other CPU %s %%\n' "$mode" \
                "$(mmm "$RAW/polls-$mode.txt" rps)" "$(mmm "$RAW/polls-$mode.txt" p99_us)" \
                "$(mmm "$RAW/polls-$mode.txt" server_us_per_req %.1f)" "$(mmm "$RAW/polls-$mode.txt" other_cpu_pct)"
        done
        awk -v s="$S_RPS" -v p="$P_RPS" 'BEGIN { printf "  ratio postgres / sqlite (medians): %.2fx   (target >= 0.9x)\n", p / s }'
    fi
    if (( HOLD_REPS > 0 )); then
        echo "memory per held long-poll, $HOSTS hosts, KiB (target <= 16):"
        for mode in sqlite postgres; do
            printf '  %-9s per connection %s   per long-poll on top %s   per held long-poll (connection + poll) %s\n' "$mode" \
                "$(mmm "$RAW/hold-$mode.txt" per_connection_kib %.1f)" "$(mmm "$RAW/hold-$mode.txt" per_longpoll_kib %.1f)" \
                "$(mmm "$RAW/hold-$mode.txt" per_held_kib %.1f)"
        done
    fi
    echo "timed runs that started on a busy machine: $(awk '/gave_up=1/' "$RAW/quiet.txt" | wc -l) of $(wc -l <"$RAW/quiet.txt")"
} | tee "$W/summary.txt"
