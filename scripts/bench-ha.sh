#!/usr/bin/env bash
# bench-ha.sh - several coordinators on one PostgreSQL (issue 16; BENCHMARKS.md, "Several
# coordinators on PostgreSQL (issue 16)"): a fleet-wide pin heard by long-polling agents
# spread over the replicas, and the hand-over after kill -9 of the leader mid-rollout.
#
# WHAT IT DOES
#   1. Starts a PostgreSQL of its own: initdb in a fresh directory under $BENCH_TMP, run as
#      `nobody` (PostgreSQL refuses root), on 127.0.0.1:$PG_PORT, fsync ON (the default),
#      not pinned to a CPU.
#   2. Pin (PARTS contains "pin"): $REPLICAS `drover serve --database postgres://.../drover_pin`
#      replicas on 127.0.0.1:$BASE_PORT, +1, ... (pinned to $REPLICA_CPUS). The first
#      makes the credentials; the others start with copies of what replicas must share
#      (ca.pem, ca.key, admin.token, keys/: tests/src/replicas.rs) and nothing else.
#      $HOSTS hosts are enrolled through the first (`drover-load enroll`), then $PIN_REPS
#      times `drover-load pin-latency`: $WAITERS long-polling agents spread round-robin
#      over the replicas, a fleet-wide pin of a new release (a remote tarball: PostgreSQL
#      refuses uploads) through the first replica, and the time from the pin's start and
#      from its answer until every waiter held the new, verified manifest; per replica too
#      (the others hear of the pin only through NOTIFY and a re-read of the database).
#   3. Leader kill (PARTS contains "kill"), $KILL_REPS rounds, each on a fresh database
#      drover_kill_N and fresh replicas: `drover-rollout-bench --remote-artifacts` enrols
#      $ROLLOUT_HOSTS simulated agents spread over the replicas (each moves to the next
#      replica when its own stops answering), rolls web 2.0 out with $STAGES, and once
#      stage $KILL_AFTER_STAGE passed kills the leading replica with -9 (PIDs given by this
#      script); it times kill -> another replica holds the lease (GET /v1/admin/coordinators
#      through a survivor) and kill -> the rollout progresses again (more hosts pinned to
#      the target or a later stage started), and the rollout must complete.
#   Every timed run waits (bounded) for the machine to be quiet first (bench-lib.sh).
#   Everything it starts (replicas, PostgreSQL) is stopped by PID on exit and the cluster
#   directory removed. All traffic stays on 127.0.0.1. Raw output:
#   $BENCH_TMP/ha${LABEL:+-$LABEL}/raw/ (replica logs included).
#
# Knobs (env): PARTS=pin,kill HOSTS=10000 WAITERS=$HOSTS PIN_REPS=5 ROLLOUT_HOSTS=10000
#   KILL_REPS=3 KILL_AFTER_STAGE=1 STAGES=canary,10%,50%,100% MAX_IN_FLIGHT=10% REPLICAS=3
#   INSTALL_MIN_MS=1100 INSTALL_MAX_MS=1500 (the simulated installs of the rollout: longer
#   than 1 s, so that a host's "healthy" report does not land in the same second as its
#   "installing" one: a replica that does not lead drops such a second report as not
#   newer (timestamps in whole seconds) and the rollout then waits for the host's next
#   report, a long-poll (20 s) later; 0 shows that)
#   BASE_PORT=18900 PG_PORT=18932 ENROLL_PARALLEL=16 REPLICA_CPUS=0 LOAD_CPUS=1
#   REPLICA_LOG=warn (DROVER_LOG of the replicas) QUIET_WAIT=30 QUIET_BUDGET=120
#   BENCH_TMP=/tmp/drover-bench
#   BIN_DIR=   (prebuilt release binaries `drover`, `drover-load`, `drover-rollout-bench`;
#              else it builds)
#   LOAD_BIN_DIR= (where `drover-load` and `drover-rollout-bench` come from, if not BIN_DIR:
#              e.g. to measure an older `drover` with today's load generators)
#   LABEL=     (names the run: output goes to $BENCH_TMP/ha-$LABEL)
#   PG_BIN=    (directory of initdb and postgres; default: the newest
#              /usr/lib/postgresql/<version>/bin)
# Needs: root (PostgreSQL runs as nobody), 2 CPUs, PostgreSQL installed, curl, taskset.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

PARTS="${PARTS:-pin,kill}"
HOSTS="${HOSTS:-10000}"
WAITERS="${WAITERS:-$HOSTS}"
PIN_REPS="${PIN_REPS:-5}"
ROLLOUT_HOSTS="${ROLLOUT_HOSTS:-10000}"
KILL_REPS="${KILL_REPS:-3}"
KILL_AFTER_STAGE="${KILL_AFTER_STAGE:-1}"
STAGES="${STAGES:-canary,10%,50%,100%}"
MAX_IN_FLIGHT="${MAX_IN_FLIGHT:-10%}"
INSTALL_MIN_MS="${INSTALL_MIN_MS:-1100}"
INSTALL_MAX_MS="${INSTALL_MAX_MS:-1500}"
REPLICAS="${REPLICAS:-3}"
BASE_PORT="${BASE_PORT:-18900}"
PG_PORT="${PG_PORT:-18932}"
ENROLL_PARALLEL="${ENROLL_PARALLEL:-16}"
REPLICA_CPUS="${REPLICA_CPUS:-0}"
LOAD_CPUS="${LOAD_CPUS:-1}"
REPLICA_LOG="${REPLICA_LOG:-warn}"
QUIET_WAIT="${QUIET_WAIT:-30}"
QUIET_BUDGET="${QUIET_BUDGET:-120}"
BENCH_TMP="${BENCH_TMP:-/tmp/drover-bench}"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

[[ "$PARTS" =~ ^(pin|kill)(,(pin|kill))?$ ]] || die "PARTS must be pin, kill or pin,kill"
(( HOSTS >= 1 && HOSTS <= 50000 )) || die "HOSTS out of range 1..50000"
(( WAITERS >= 1 && WAITERS <= HOSTS )) || die "WAITERS must be 1..HOSTS"
(( PIN_REPS >= 1 && PIN_REPS <= 20 )) || die "PIN_REPS out of range 1..20"
(( ROLLOUT_HOSTS >= 10 && ROLLOUT_HOSTS <= 50000 )) || die "ROLLOUT_HOSTS out of range 10..50000"
(( KILL_REPS >= 1 && KILL_REPS <= 10 )) || die "KILL_REPS out of range 1..10"
(( KILL_AFTER_STAGE >= 1 && KILL_AFTER_STAGE <= 10 )) || die "KILL_AFTER_STAGE out of range 1..10"
(( INSTALL_MIN_MS >= 0 && INSTALL_MIN_MS <= INSTALL_MAX_MS && INSTALL_MAX_MS <= 60000 )) \
    || die "INSTALL_MIN_MS..INSTALL_MAX_MS must be a range within 0..60000"
(( REPLICAS >= 2 && REPLICAS <= 8 )) || die "REPLICAS out of range 2..8"
(( BASE_PORT >= 1024 && BASE_PORT + REPLICAS <= 65535 )) || die "BASE_PORT out of range"
[[ "$STAGES" =~ ^[A-Za-z0-9%,._\ -]{1,200}$ ]] || die "STAGES has unexpected characters"
[[ "$MAX_IN_FLIGHT" =~ ^[0-9]{1,6}%?$ ]] || die "MAX_IN_FLIGHT must be a number or a percentage"
[[ "$REPLICA_CPUS" =~ ^[0-9,-]{1,32}$ && "$LOAD_CPUS" =~ ^[0-9,-]{1,32}$ ]] || die "REPLICA_CPUS and LOAD_CPUS are taskset CPU lists"
[[ "$REPLICA_LOG" =~ ^[a-z_,=:]{1,100}$ ]] || die "REPLICA_LOG must be a DROVER_LOG filter such as warn or info"
[[ "${LABEL:-}" =~ ^[A-Za-z0-9._-]{0,64}$ && "${LABEL:-}" != .* ]] \
    || die "LABEL must be up to 64 letters, digits, '.', '_' or '-', not starting with '.'"
(( $(id -u) == 0 )) || die "run as root (PostgreSQL is started as nobody)"
(( $(nproc) >= 2 )) || die "needs 2 CPUs"
for tool in curl taskset setpriv; do command -v "$tool" >/dev/null || die "$tool is missing"; done
if [[ -z "${PG_BIN:-}" ]]; then
    PG_BIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1)
fi
[[ -x "${PG_BIN:-}/postgres" && -x "$PG_BIN/initdb" ]] || die "no PostgreSQL found (apt-get install postgresql, or set PG_BIN)"

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

ulimit -n "$(ulimit -Hn)"
# The load generator holds one connection per host (each replica a share of them).
(( $(ulimit -n) >= (HOSTS > ROLLOUT_HOSTS ? HOSTS : ROLLOUT_HOSTS) + 500 )) \
    || die "open-file limit $(ulimit -n) is too low for $HOSTS hosts' connections"

W="$BENCH_TMP/ha${LABEL:+-$LABEL}"
RAW="$W/raw"
for ((i = 0; i < REPLICAS; i++)); do port_free $((BASE_PORT + i)) || die "port $((BASE_PORT + i)) is already in use"; done
port_free "$PG_PORT" || die "port $PG_PORT is already in use"
rm -rf "$W"
mkdir -p "$W" "$RAW"

if [[ -n "${BIN_DIR:-}" ]]; then
    BIN="$(cd "$BIN_DIR" && pwd)"
    [[ -x "$BIN/drover" ]] || die "BIN_DIR=$BIN_DIR has no executable drover"
    log "using prebuilt binaries in $BIN (no build)"
else
    log "building release binaries (cargo build --release -p drover-coordinator -p drover-tests --bins)"
    cargo build --release -p drover-coordinator -p drover-tests --bins
    BIN="$ROOT/target/release"
fi
LOAD_BIN_DIR="$(cd "${LOAD_BIN_DIR:-$BIN}" && pwd)"
for b in drover-load drover-rollout-bench; do [[ -x "$LOAD_BIN_DIR/$b" ]] || die "$LOAD_BIN_DIR has no executable $b"; done
LOAD=(taskset -c "$LOAD_CPUS" "$LOAD_BIN_DIR/drover-load")
ROLLOUT_BENCH=(taskset -c "$LOAD_CPUS" "$LOAD_BIN_DIR/drover-rollout-bench")

# --- PostgreSQL of our own, fsync on (bench-lib.sh) -------------------------------------
start_postgres
{
    echo "date: $(date -u +%FT%TZ)  host: $(nproc) cores, $(uname -r), $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "drover: $(drover_revision)  binaries: $BIN  load: $LOAD_BIN_DIR${LABEL:+  label: $LABEL}"
    echo "postgres: $("$PG_BIN/postgres" --version)  fsync=$PG_FSYNC synchronous_commit=$PG_SYNC (not pinned)"
    echo "replicas: $REPLICAS on CPUs $REPLICA_CPUS, load on CPUs $LOAD_CPUS"
    echo "PARTS=$PARTS HOSTS=$HOSTS WAITERS=$WAITERS PIN_REPS=$PIN_REPS ROLLOUT_HOSTS=$ROLLOUT_HOSTS KILL_REPS=$KILL_REPS" \
        "KILL_AFTER_STAGE=$KILL_AFTER_STAGE STAGES=$STAGES MAX_IN_FLIGHT=$MAX_IN_FLIGHT INSTALL_MS=$INSTALL_MIN_MS..$INSTALL_MAX_MS"
} | tee "$RAW/env.txt" >&2

# --- replicas ----------------------------------------------------------------------------------
declare -a RPID=() RURL=() RDIR=()
# start_replicas NAME [COUNT]: a database NAME and its replicas 0..COUNT-1 ($REPLICAS by
# default); once more with a larger COUNT, the replicas after those running. The first
# makes the credentials, the others get copies of the shared files (tests/src/replicas.rs).
start_replicas() {
    local name="$1" count="${2:-$REPLICAS}" i dir deadline
    if (( ${#RPID[@]} == 0 )); then
        "$PG_BIN/createdb" --host 127.0.0.1 --port "$PG_PORT" --username drover "$name"
    fi
    for ((i = ${#RPID[@]}; i < count; i++)); do
        dir="$W/$name/replica-$i"
        mkdir -p "$dir"
        chmod 700 "$dir"
        if (( i > 0 )); then
            cp -a "${RDIR[0]}/ca.pem" "${RDIR[0]}/ca.key" "${RDIR[0]}/admin.token" "${RDIR[0]}/keys" "$dir/"
        fi
        DROVER_LOG="$REPLICA_LOG" taskset -c "$REPLICA_CPUS" "$BIN/drover" serve \
            --listen "127.0.0.1:$((BASE_PORT + i))" --data-dir "$dir" \
            --database "postgres://drover@127.0.0.1:$PG_PORT/$name" >>"$RAW/$name-replica-$i.log" 2>&1 &
        RPID+=("$!")
        STARTED+=("$!")
        RDIR+=("$dir")
        RURL+=("https://127.0.0.1:$((BASE_PORT + i))")
        deadline=$(( $(date +%s) + 300 ))
        until curl -sf --max-time 2 --cacert "$dir/ca.pem" "${RURL[$i]}/healthz" >/dev/null 2>&1; do
            kill -0 "${RPID[$i]}" 2>/dev/null || die "replica $i of $name exited: $(tail -5 "$RAW/$name-replica-$i.log")"
            (( $(date +%s) < deadline )) || die "replica $i of $name did not answer within 300 s"
            sleep 0.05
        done
    done
    log "${#RPID[@]} replicas serve database $name: ${RURL[*]} (pids ${RPID[*]})"
}
stop_replicas() {
    local pid
    for pid in "${RPID[@]}"; do stop_pid "$pid"; done
    RPID=(); RURL=(); RDIR=()
}
join_by_comma() { local IFS=,; echo "$*"; }

# --- (a) fleet-wide pin, waiters spread over the replicas ----------------------------------------
if [[ ",$PARTS," == *,pin,* ]]; then
    # The hosts are enrolled before the other replicas start: every join is a model change
    # that each other replica re-reads, which made enrolling 10,000 hosts with three
    # replicas running take ~10 minutes on 809ad3a (48 joins/s at 3,000 hosts, falling).
    start_replicas drover_pin 1
    log "enrolling $HOSTS hosts through replica 0 ($ENROLL_PARALLEL in flight)"
    "${LOAD[@]}" enroll --url "${RURL[0]}" --data-dir "${RDIR[0]}" --hosts "$HOSTS" --out "$W/ids" \
        --parallel "$ENROLL_PARALLEL" --server-pid "${RPID[0]}" --max-time 30m | tee -a "$RAW/enroll.txt"
    start_replicas drover_pin
    for ((rep = 1; rep <= PIN_REPS; rep++)); do
        wait_quiet "pin-$rep"
        log "pin round $rep/$PIN_REPS: $WAITERS long-polling agents over $REPLICAS replicas, pin bench=1.0.$rep through replica 0"
        "${LOAD[@]}" pin-latency --url "$(join_by_comma "${RURL[@]}")" --data-dir "${RDIR[0]}" --identities "$W/ids" \
            --hosts "$HOSTS" --waiters "$WAITERS" --wait 120 --app bench --version "1.0.$rep" --remote-artifact \
            --server-pid "$(join_by_comma "${RPID[@]}")" | tee -a "$RAW/pin.txt"
        for ((i = 0; i < REPLICAS; i++)); do
            printf 'after pin %s: replica %s VmRSS %s KiB\n' "$rep" "$i" "$(mem_kib "${RPID[$i]}" VmRSS)" >>"$RAW/memory.txt"
        done
    done
    stop_replicas
fi

# --- (b) kill -9 of the leader mid-rollout ------------------------------------------------------
if [[ ",$PARTS," == *,kill,* ]]; then
    for ((rep = 1; rep <= KILL_REPS; rep++)); do
        start_replicas "drover_kill_$rep"
        wait_quiet "kill-$rep"
        log "leader kill round $rep/$KILL_REPS: $ROLLOUT_HOSTS simulated hosts, rollout $STAGES, kill after stage $KILL_AFTER_STAGE"
        "${ROLLOUT_BENCH[@]}" --url "${RURL[0]}" --data-dir "${RDIR[0]}" --pid "${RPID[0]}" \
            --replica "$(join_by_comma "${RURL[@]:1}")" --replica-pid "$(join_by_comma "${RPID[@]:1}")" \
            --hosts "$ROLLOUT_HOSTS" --install-min-ms "$INSTALL_MIN_MS" --install-max-ms "$INSTALL_MAX_MS" --reps 1 --stages "$STAGES" --max-in-flight "$MAX_IN_FLIGHT" \
            --remote-artifacts --kill-leader-after-stage "$KILL_AFTER_STAGE" --timeout-s 600 \
            | sed "s/^RESULT /RESULT round=$rep /" | tee -a "$RAW/kill.txt"
        stop_replicas
    done
fi

# --- summary ------------------------------------------------------------------------------------
{
    echo "== several coordinators on one PostgreSQL ($(date -u +%FT%TZ); raw: $RAW) =="
    cat "$RAW/env.txt"
    echo
    if [[ -s "$RAW/pin.txt" ]]; then
        grep '^RESULT pin ' "$RAW/pin.txt" >"$RAW/pin-all.txt" || true
        grep '^RESULT pin-replica ' "$RAW/pin.txt" >"$RAW/pin-replicas.txt" || true
        echo "enrolment of $HOSTS hosts through replica 0: $(field joins_per_s <"$RAW/enroll.txt") joins/s"
        echo "fleet-wide pin through replica 0, $WAITERS long-polling agents over $REPLICAS replicas, $PIN_REPS rounds, median (min-max) ms:"
        echo "  pin API answer         $(mmm "$RAW/pin-all.txt" api_ms)"
        echo "  all held it, from the pin's start   $(mmm "$RAW/pin-all.txt" all_ms)   (target <= 2000)"
        echo "  all held it, from the pin's answer  $(mmm "$RAW/pin-all.txt" after_answer_all_ms)"
        echo "  p50 $(mmm "$RAW/pin-all.txt" p50_ms)   p99 $(mmm "$RAW/pin-all.txt" p99_ms)"
        echo "  CPU s per pin: replicas together $(mmm "$RAW/pin-all.txt" server_cpu_s %.2f), load generator $(mmm "$RAW/pin-all.txt" client_cpu_s %.2f)"
        for ((i = 0; i < REPLICAS; i++)); do
            grep " replica=$i " "$RAW/pin-replicas.txt" >"$RAW/pin-replica-$i.txt" || true
            printf '  replica %s%s: p50 %s   p99 %s   all %s\n' "$i" "$( ((i == 0)) && echo ' (pinned here)' || echo ' (NOTIFY)')" \
                "$(mmm "$RAW/pin-replica-$i.txt" p50_ms)" "$(mmm "$RAW/pin-replica-$i.txt" p99_ms)" \
                "$(mmm "$RAW/pin-replica-$i.txt" all_ms)"
        done
    fi
    if [[ -s "$RAW/kill.txt" ]]; then
        grep '^RESULT round=[0-9]* takeover ' "$RAW/kill.txt" >"$RAW/takeover.txt" || true
        grep '^RESULT round=[0-9]* rep=' "$RAW/kill.txt" >"$RAW/rollouts.txt" || true
        echo "kill -9 of the leader once stage $KILL_AFTER_STAGE passed, $ROLLOUT_HOSTS hosts, $(wc -l <"$RAW/takeover.txt") rounds, median (min-max) ms:"
        echo "  kill -> another replica holds the lease       $(mmm "$RAW/takeover.txt" lease_ms)"
        echo "  kill -> the rollout progresses again          $(mmm "$RAW/takeover.txt" progress_ms)   (target <= 5000)"
        echo "  kill -> the stage in flight at the kill done  $(mmm "$RAW/takeover.txt" stage_at_kill_done_ms)"
        echo "  whole rollout, s: $(mmm "$RAW/rollouts.txt" seconds %.1f)"
    fi
    echo "timed runs that started on a busy machine: $(awk '/gave_up=1/' "$RAW/quiet.txt" | wc -l) of $(wc -l <"$RAW/quiet.txt")"
} | tee "$W/summary.txt"
