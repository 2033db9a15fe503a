# bench-lib.sh - shared by the benchmark scripts (sourced, not run): processes they
# start are stopped by PID on exit; RESULT-line statistics (field, stats, mmm, median);
# /proc readers (cpu_s, mem_kib); wait_quiet (waits, bounded, until other work leaves
# the CPUs alone); start_drover (a coordinator pinned to CPU 0); start_postgres (a
# PostgreSQL of its own).
#
# Expects from the caller: log, die; for drover_revision ROOT (the checkout) and BIN_DIR
# if set; for wait_quiet RAW, QUIET_WAIT, QUIET_BUDGET; for start_drover W (its data
# directory is $W/data), BIN and DROVER_PORT; for memory DROVER_PID and RAW; for
# start_postgres W, RAW, PG_BIN and PG_PORT.
# shellcheck shell=bash

# --- processes this script starts, stopped by PID on exit --------------------------------
declare -a STARTED=()
stop_pid() {  # PID: TERM, wait up to 15 s, then KILL
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    log "pid $pid still alive after 15 s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$? pid
    set +e
    for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
    return $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {  # PORT SECONDS
    local deadline=$(( $(date +%s) + $2 ))
    while (( $(date +%s) < deadline )); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# field KEY < RESULT lines: the values of KEY=..., one per line.
field() { awk -v k="$1" '{ for (i = 1; i <= NF; i++) { n = index($i, "="); if (n && substr($i, 1, n - 1) == k) print substr($i, n + 1) } }'; }
# stats < numbers: "median min max".
stats() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print "nan nan nan"; exit }
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m, v[1], v[NR] }'; }
# mmm FILE KEY [FORMAT]: "median (min-max)" of KEY over the RESULT lines in FILE.
mmm() {
    local fmt="${3:-%.0f}"
    field "$2" <"$1" | stats | awk -v f="$fmt" '{ printf f " (" f "-" f ")", $1, $2, $3 }'
}
median() { field "$2" <"$1" | stats | awk '{ print $1 }'; }
cpu_s() { awk '{ split($0, a, ") "); split(a[2], f, " "); printf "%.2f", (f[12] + f[13]) / 100 }' "/proc/$1/stat"; }
mem_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# busy_pct: how busy the whole machine was over the next second, in % of all its CPUs.
busy_pct() {
    local before after
    before=$(head -1 /proc/stat); sleep 1; after=$(head -1 /proc/stat)
    awk -v a="$before" -v b="$after" 'BEGIN { split(a, x, " "); split(b, y, " "); busy = 0; total = 0
        for (i = 2; i <= 9; i++) { d = y[i] - x[i]; total += d; if (i != 5 && i != 6) busy += d }
        printf "%.0f", total ? 100 * busy / total : 0 }'
}
# wait_quiet LABEL: waits until other work uses under 10 % of the CPUs, so that builds
# sharing this machine stay out of the timed runs: at most QUIET_WAIT s per run and
# QUIET_BUDGET s over the whole script, which keeps the script's length bounded.
QUIET_SPENT=0
wait_quiet() {
    local waited=0 busy
    while :; do
        busy=$(busy_pct)
        (( busy < 10 )) && break
        if (( waited >= QUIET_WAIT || QUIET_SPENT >= QUIET_BUDGET )); then
            log "machine still ${busy}% busy after ${waited}s of waiting; measuring $1 anyway"
            echo "$1 busy=$busy waited=$waited gave_up=1" >>"$RAW/quiet.txt"
            return 0
        fi
        sleep 4
        waited=$((waited + 5))
        QUIET_SPENT=$((QUIET_SPENT + 5))
    done
    (( waited == 0 )) || log "waited ${waited}s for the machine to be quiet before $1"
    echo "$1 busy=$busy waited=$waited gave_up=0" >>"$RAW/quiet.txt"
}
# memory LABEL: the coordinator's VmRSS and VmHWM now, into $RAW/memory.txt.
memory() {
    local rss hwm
    rss=$(mem_kib "$DROVER_PID" VmRSS); hwm=$(mem_kib "$DROVER_PID" VmHWM)
    printf '  %-44s VmRSS %7s MiB   VmHWM %7s MiB\n' "$1" "$(mib "$rss")" "$(mib "$hwm")" | tee -a "$RAW/memory.txt" >&2
}
# drover_revision: the tree the measured binaries were built from: this checkout's, or
# with BIN_DIR (prebuilt binaries, maybe from another worktree) the tree BIN_DIR lies in,
# if any; the LABEL of such runs should name it.
drover_revision() {
    local dir="$ROOT"
    [[ -n "${BIN_DIR:-}" ]] && dir="$BIN_DIR"
    git -C "$dir" describe --always --dirty 2>/dev/null || echo "unknown (prebuilt in ${BIN_DIR:-?})"
}
# start_drover LOG: starts the coordinator pinned to CPU 0; returns once it answers HTTPS.
# With DATABASE set (postgres://...), it serves from that PostgreSQL database instead of
# SQLite (issue 16).
start_drover() {
    local database=()
    [[ -n "${DATABASE:-}" ]] && database=(--database "$DATABASE")
    DROVER_LOG=warn taskset -c 0 "$BIN/drover" serve --listen "127.0.0.1:$DROVER_PORT" --data-dir "$W/data" \
        "${database[@]}" >"$1" 2>&1 &
    DROVER_PID=$!
    STARTED+=("$DROVER_PID")
    local deadline=$(( $(date +%s) + 120 ))
    while (( $(date +%s) < deadline )); do
        if curl -sf --max-time 2 --cacert "$W/data/ca.pem" "https://127.0.0.1:$DROVER_PORT/healthz" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$DROVER_PID" 2>/dev/null || die "drover serve exited: $(tail -5 "$1")"
        sleep 0.05
    done
    die "drover serve did not answer within 120 s: $(tail -5 "$1")"
}

# start_postgres: a PostgreSQL of the benchmark's own in $W/pg on 127.0.0.1:$PG_PORT, from
# $PG_BIN: initdb run as nobody (PostgreSQL refuses root), fsync and synchronous_commit
# left on (the defaults; the test fixture turns fsync off, a benchmark must not), logs in
# $RAW. On exit the processes in STARTED are stopped first, then PostgreSQL (fast
# shutdown), and its cluster is removed. Sets PG, PG_PID, PG_FSYNC and PG_SYNC; psql_at SQL
# runs a query on its `postgres` database.
psql_at() { "$PG_BIN/psql" -At --host 127.0.0.1 --port "$PG_PORT" --username drover -c "$1" postgres; }
stop_postgres() {
    local rc=$? i pid
    set +e
    for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
    kill -INT "$PG_PID" 2>/dev/null
    for ((i = 0; i < 300; i++)); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PG_PID" 2>/dev/null
    wait "$PG_PID" 2>/dev/null
    rm -rf "$PG"
    return $rc
}
start_postgres() {
    local i
    PG="$W/pg"
    mkdir -p "$PG"
    chown nobody:nogroup "$PG" 2>/dev/null || chown 65534:65534 "$PG"
    (cd / && setpriv --reuid=65534 --regid=65534 --clear-groups "$PG_BIN/initdb" --pgdata "$PG/data" \
        --username drover --auth trust --encoding UTF8 --locale C --no-instructions) >"$RAW/initdb.log" 2>&1 \
        || die "initdb failed: $(tail -5 "$RAW/initdb.log")"
    (cd / && exec setpriv --reuid=65534 --regid=65534 --clear-groups "$PG_BIN/postgres" -D "$PG/data" \
        -p "$PG_PORT" -c listen_addresses=127.0.0.1 -c "unix_socket_directories=$PG" -c max_connections=300) \
        >"$RAW/postgres.log" 2>&1 &
    PG_PID=$!
    trap stop_postgres EXIT
    wait_port "$PG_PORT" 30 || die "postgres did not start: $(tail -5 "$RAW/postgres.log")"
    for ((i = 0; i < 100; i++)); do
        "$PG_BIN/pg_isready" --host 127.0.0.1 --port "$PG_PORT" --quiet && break
        sleep 0.1
    done
    # shellcheck disable=SC2034 # read by the caller's environment line
    PG_FSYNC=$(psql_at 'show fsync')
    # shellcheck disable=SC2034
    PG_SYNC=$(psql_at 'show synchronous_commit')
}
