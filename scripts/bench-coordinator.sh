#!/usr/bin/env bash
# bench-coordinator.sh - the coordinator's performance figures (issue 3; BENCHMARKS.md,
# "Coordinator (issue 3)").
#
# WHAT IT DOES
#   1. Builds the release binaries and starts `drover serve` (release) on a fresh data
#      directory, pinned to CPU 0 (taskset -c 0), on 127.0.0.1:$DROVER_PORT.
#   2. Enrolls $HOSTS simulated hosts with `drover-load enroll` (token + CSR + join each,
#      $ENROLL_PARALLEL in flight) and times it.
#   3. 304 polls: `drover-load polls` with $CONNS keep-alive connections for $DURATION s,
#      against drover (each connection an enrolled host with its own client certificate,
#      GET /v1/agent/manifest + If-None-Match) and against nginx (Debian package, 1
#      worker, pinned to CPU 0, a static 2 KiB file + its ETag over HTTPS, no client
#      certificate), alternating drover, nginx, drover, nginx ... for $REPS rounds. The
#      load tool is pinned to CPU 1. Then wrk once against the same nginx, as an anchor
#      that shows what our client costs.
#   4. Fleet-wide pin, $PIN_REPS times: $WAITERS agents long-poll (?wait=60, current ETag)
#      before the pin; the pin API's wall time and the time until every waiter holds the
#      new manifest (verified against the trust document) are measured.
#   5. Reports: `drover-load reports` posts reports (one event each) from $REPORT_CONNS
#      hosts for $DURATION s, then checks with sqlite3 (read-only) that SQLite holds every
#      accepted report. Three load shapes per round, $REPS rounds: paced at
#      $REPORT_RATE/s offered (the target rate), as fast as answers come with a 100 ms
#      back-off after a 503 (capacity, as agents that back off), and as fast as possible
#      with no back-off (overload: every refusal is retried at once).
#   6. Coordinator VmRSS / VmHWM with $HOSTS hosts after each phase and after a restart
#      (everything loaded from SQLite), and its CPU time per phase.
#   This machine is shared: before every timed run the script waits (at most $QUIET_WAIT s
#   per run, $QUIET_BUDGET s in all) until other work uses under 10 % of the CPUs, and
#   each RESULT line reports the CPU other processes used during the run (other_cpu_pct,
#   in % of one CPU).
#   Everything it starts (coordinator, nginx) is stopped by PID on exit. All traffic
#   stays on 127.0.0.1. Raw output: $BENCH_TMP/coordinator/raw/.
#
# Knobs (env): HOSTS=10000 DURATION=10 REPS=5 CONNS=64 WAITERS=500 PIN_REPS=3
#   REPORT_CONNS=500 REPORT_RATE=3000 ENROLL_PARALLEL=16 DROVER_PORT=18600
#   NGINX_PORT=18643 QUIET_WAIT=60 QUIET_BUDGET=300 BENCH_TMP=/tmp/drover-bench
#   BIN_DIR=   (prebuilt release binaries `drover` and `drover-load`; no build then. To
#              compare two trees in one session, build each in its own worktree and
#              target dir and alternate runs: BENCHMARKS.md, issue 15)
#   LABEL=     (names the run: output goes to $BENCH_TMP/coordinator-$LABEL)
# Needs: root for apt-get when nginx, wrk, sqlite3, curl or openssl are missing.
# Takes about 9 minutes with the defaults on a quiet machine (plus the build and at most
# QUIET_BUDGET of waiting).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

HOSTS="${HOSTS:-10000}"
DURATION="${DURATION:-10}"
REPS="${REPS:-5}"
CONNS="${CONNS:-64}"
WAITERS="${WAITERS:-500}"
PIN_REPS="${PIN_REPS:-3}"
# 500, not 1000: the coordinator keeps at most 512 connections that have not yet shown a
# client certificate (issue 12) and closes the oldest beyond that, so 1,000 hosts opening
# their connections at once on a busy machine had handshakes reset and drover-load gave
# up (seen with both trees in BENCHMARKS.md, issue 15).
REPORT_CONNS="${REPORT_CONNS:-500}"
REPORT_RATE="${REPORT_RATE:-3000}"
ENROLL_PARALLEL="${ENROLL_PARALLEL:-16}"
DROVER_PORT="${DROVER_PORT:-18600}"
NGINX_PORT="${NGINX_PORT:-18643}"
QUIET_WAIT="${QUIET_WAIT:-60}"
QUIET_BUDGET="${QUIET_BUDGET:-300}"
BENCH_TMP="${BENCH_TMP:-/tmp/drover-bench}"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

(( HOSTS >= 1 && HOSTS <= 100000 )) || die "HOSTS out of range 1..100000"
(( DURATION >= 1 && DURATION <= 120 )) || die "DURATION out of range 1..120"
(( REPS >= 1 && REPS <= 20 )) || die "REPS out of range 1..20"
(( PIN_REPS >= 1 && PIN_REPS <= 20 )) || die "PIN_REPS out of range 1..20"
(( CONNS >= 1 && CONNS <= 1024 && CONNS <= HOSTS )) || die "CONNS must be 1..1024 and at most HOSTS"
(( REPORT_CONNS >= 1 && REPORT_CONNS <= 4096 )) || die "REPORT_CONNS out of range 1..4096"
(( WAITERS >= 1 && WAITERS <= 4096 )) || die "WAITERS out of range 1..4096"
(( REPORT_RATE >= 1 && REPORT_RATE <= 100000 )) || die "REPORT_RATE out of range 1..100000"
(( REPORT_CONNS > HOSTS )) && REPORT_CONNS="$HOSTS"
# LABEL becomes part of a directory the script empties with rm -rf: one path component.
[[ "${LABEL:-}" =~ ^[A-Za-z0-9._-]{0,64}$ && "${LABEL:-}" != .* ]] \
    || die "LABEL must be up to 64 letters, digits, '.', '_' or '-', not starting with '.'"
(( WAITERS > HOSTS )) && WAITERS="$HOSTS"

# --- what it needs ----------------------------------------------------------------------
. scripts/prereqs.sh
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v taskset >/dev/null || missing+=(util-linux)
if (( ${#missing[@]} )); then apt_install "${missing[@]}"; fi
(( $(nproc) >= 2 )) || die "needs 2 CPUs (server on CPU 0, load on CPU 1)"

# Process bookkeeping (stopped by PID on exit), RESULT-line statistics, CPU and memory
# readers, wait_quiet and start_drover.
. scripts/bench-lib.sh

W="$BENCH_TMP/coordinator${LABEL:+-$LABEL}"
RAW="$W/raw"
for p in "$DROVER_PORT" "$NGINX_PORT"; do port_free "$p" || die "port $p is already in use"; done
rm -rf "$W"
mkdir -p "$W" "$RAW" "$W/nginx"/{www,tmp,logs}

# --- build --------------------------------------------------------------------------------
if [[ -n "${BIN_DIR:-}" ]]; then
    BIN="$(cd "$BIN_DIR" && pwd)"
    for b in drover drover-load; do [[ -x "$BIN/$b" ]] || die "BIN_DIR=$BIN_DIR has no executable $b: build it with cargo build --release -p drover-coordinator -p drover-tests --bins"; done
    log "using prebuilt binaries in $BIN (no build)"
else
    log "building release binaries (cargo build --release --workspace --bins)"
    cargo build --release --workspace --bins
    BIN="$ROOT/target/release"
fi
LOAD=(taskset -c 1 "$BIN/drover-load")

{
    echo "date: $(date -u +%FT%TZ)  host: $(nproc) cores, $(uname -r), $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "drover: $(drover_revision)  binaries: $BIN${LABEL:+  label: $LABEL}  rustc: $(rustc --version)"
    echo "nginx: $(nginx -v 2>&1)  wrk: $(dpkg-query -W -f='${Version}' wrk 2>/dev/null || echo unknown)  sqlite3: $(sqlite3 --version | cut -d' ' -f1)"
    echo "HOSTS=$HOSTS DURATION=$DURATION REPS=$REPS CONNS=$CONNS WAITERS=$WAITERS PIN_REPS=$PIN_REPS REPORT_CONNS=$REPORT_CONNS REPORT_RATE=$REPORT_RATE ENROLL_PARALLEL=$ENROLL_PARALLEL"
} >"$W/meta.txt"
cat "$W/meta.txt" >&2

# --- the coordinator ------------------------------------------------------------------------
log "starting drover serve (release, pinned to CPU 0) on 127.0.0.1:$DROVER_PORT"
start_drover "$RAW/serve.log"
URL="https://127.0.0.1:$DROVER_PORT"
: >"$RAW/memory.txt"
memory "empty coordinator"

# --- enrollment -------------------------------------------------------------------------------
wait_quiet enroll
log "enrolling $HOSTS hosts ($ENROLL_PARALLEL in flight)"
"${LOAD[@]}" enroll --url "$URL" --data-dir "$W/data" --hosts "$HOSTS" --out "$W/ids" \
    --parallel "$ENROLL_PARALLEL" --server-pid "$DROVER_PID" --max-time 20m | tee "$RAW/enroll.txt"
CPU_ENROLLED=$(cpu_s "$DROVER_PID")
memory "after enrolling $HOSTS hosts"

# --- nginx: a 2 KiB file over HTTPS with a certificate from its own CA ------------------------
N="$W/nginx"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=drover bench nginx CA" -keyout "$N/ca.key" -out "$N/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$N/key.pem" -out "$N/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >"$N/ext.cnf"
openssl x509 -req -in "$N/server.csr" -CA "$N/ca.pem" -CAkey "$N/ca.key" -CAcreateserial -days 30 \
    -extfile "$N/ext.cnf" -out "$N/cert.pem" 2>/dev/null
{ printf '{"pad":"'; head -c $((2048 - 10)) /dev/zero | tr '\0' 'x'; printf '"}'; } >"$N/www/manifest.json"
[[ $(stat -c %s "$N/www/manifest.json") == 2048 ]] || die "manifest.json is not 2048 bytes"
# The shape of shared/bench/poll-nginx.sh's configuration, TLS only.
cat >"$N/nginx.conf" <<CONF
worker_processes 1;
pid $N/nginx.pid;
error_log $N/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    client_body_temp_path $N/tmp/body;
    proxy_temp_path $N/tmp/proxy;
    fastcgi_temp_path $N/tmp/fastcgi;
    uwsgi_temp_path $N/tmp/uwsgi;
    scgi_temp_path $N/tmp/scgi;
    types { application/json json; }
    default_type application/octet-stream;
    ssl_protocols TLSv1.3;
    ssl_certificate $N/cert.pem;
    ssl_certificate_key $N/key.pem;
    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        root $N/www;
    }
}
CONF
log "starting nginx (1 worker, pinned to CPU 0) on 127.0.0.1:$NGINX_PORT"
taskset -c 0 nginx -p "$N" -e "$N/logs/error.log" -c "$N/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
STARTED+=("$NGINX_PID")
wait_port "$NGINX_PORT" 10 || die "nginx did not come up: $(cat "$N/logs/error.log")"
NGINX_WORKER=""
for ((i = 0; i < 50 && ${#NGINX_WORKER} == 0; i++)); do
    NGINX_WORKER=$(cat /proc/"$NGINX_PID"/task/*/children 2>/dev/null | awk '{ print $1 }')
    [[ -n "$NGINX_WORKER" ]] || sleep 0.1
done
[[ -n "$NGINX_WORKER" ]] || die "no nginx worker process"
NGINX_URL="https://127.0.0.1:$NGINX_PORT/manifest.json"
ETAG=$(curl -s --cacert "$N/ca.pem" -D - -o /dev/null "$NGINX_URL" | awk 'tolower($1) == "etag:" { sub(/\r$/, ""); print $2 }')
[[ -n "$ETAG" ]] || die "nginx gave no ETag"
code=$(curl -s --cacert "$N/ca.pem" -o /dev/null -w '%{http_code}' -H "If-None-Match: $ETAG" "$NGINX_URL")
[[ "$code" == 304 ]] || die "nginx answered $code to If-None-Match, not 304"

# --- 304 polls: drover and nginx alternating, same client, then wrk once ------------------------
CPU_BEFORE_POLLS=$(cpu_s "$DROVER_PID")
for ((rep = 1; rep <= REPS; rep++)); do
    wait_quiet "polls-drover-$rep"
    log "polls round $rep/$REPS: drover"
    "${LOAD[@]}" polls --url "$URL/v1/agent/manifest" --identities "$W/ids" --connections "$CONNS" \
        --duration "${DURATION}s" --label drover --server-pid "$DROVER_PID" | tee -a "$RAW/polls-drover.txt"
    wait_quiet "polls-nginx-$rep"
    log "polls round $rep/$REPS: nginx"
    "${LOAD[@]}" polls --url "$NGINX_URL" --ca "$N/ca.pem" --no-client-cert --connections "$CONNS" \
        --duration "${DURATION}s" --label nginx --server-pid "$NGINX_WORKER" | tee -a "$RAW/polls-nginx.txt"
done
CPU_POLLS=$(awk -v a="$CPU_BEFORE_POLLS" -v b="$(cpu_s "$DROVER_PID")" 'BEGIN { printf "%.2f", b - a }')
memory "after the poll rounds ($CONNS connections)"
wait_quiet wrk
log "wrk anchor against nginx"
taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "If-None-Match: $ETAG" "$NGINX_URL" >"$RAW/wrk-nginx.txt" 2>&1 \
    || die "wrk failed: $(tail -3 "$RAW/wrk-nginx.txt")"
if grep -q 'Non-2xx or 3xx' "$RAW/wrk-nginx.txt"; then die "wrk saw error answers: $(grep 'Non-2xx' "$RAW/wrk-nginx.txt")"; fi
WRK_RPS=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$RAW/wrk-nginx.txt")
WRK_P99=$(awk '$1 == "99%" { print $2 }' "$RAW/wrk-nginx.txt")
stop_pid "$NGINX_PID"

# --- fleet-wide pin with long-polling agents ---------------------------------------------------
for ((rep = 1; rep <= PIN_REPS; rep++)); do
    wait_quiet "pin-$rep"
    log "pin round $rep/$PIN_REPS: $WAITERS long-polling agents, pin bench=1.0.$rep fleet-wide"
    "${LOAD[@]}" pin-latency --url "$URL" --data-dir "$W/data" --identities "$W/ids" --hosts "$HOSTS" \
        --waiters "$WAITERS" --wait 60 --app bench --version "1.0.$rep" --server-pid "$DROVER_PID" \
        | tee -a "$RAW/pin.txt"
    memory "after pin $rep ($WAITERS long-polls)"
done

# --- reports into SQLite ---------------------------------------------------------------------
# report_run FILE RUN_ID [drover-load args...]
report_run() {
    local file="$1" run="$2"; shift 2
    wait_quiet "reports-$run"
    "${LOAD[@]}" reports --url "$URL" --identities "$W/ids" --connections "$REPORT_CONNS" \
        --duration "${DURATION}s" --db "$W/data/coordinator.db" --run-id "$run" \
        --server-pid "$DROVER_PID" "$@" | tee -a "$file"
}
for ((rep = 1; rep <= REPS; rep++)); do
    log "reports round $rep/$REPS: $REPORT_CONNS hosts, paced at $REPORT_RATE/s"
    report_run "$RAW/reports-paced.txt" "paced$rep" --rate "$REPORT_RATE" --backoff 100ms
    log "reports round $rep/$REPS: $REPORT_CONNS hosts, as fast as answers come, 100 ms back-off after 503"
    report_run "$RAW/reports-backoff.txt" "backoff$rep" --backoff 100ms
    log "reports round $rep/$REPS: $REPORT_CONNS hosts, as fast as possible, no back-off"
    report_run "$RAW/reports-flood.txt" "flood$rep"
done
memory "after the report rounds ($REPORT_CONNS connections)"

CPU_END=$(cpu_s "$DROVER_PID")
DB_BYTES=$(du -cb "$W/data"/coordinator.db* | awk 'END { print $1 }')
stop_pid "$DROVER_PID"

# --- a restart: everything loaded back from SQLite -----------------------------------------------
log "restarting the coordinator on the same data directory"
restart_began=$EPOCHREALTIME
start_drover "$RAW/serve-restart.log"
RESTART_S=$(awk -v a="$restart_began" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
sleep 2
memory "after a restart with $HOSTS hosts (idle)"
stop_pid "$DROVER_PID"

# --- summary --------------------------------------------------------------------------------------
D_RPS=$(median "$RAW/polls-drover.txt" rps)
N_RPS=$(median "$RAW/polls-nginx.txt" rps)
{
    echo "== drover coordinator benchmark ($(date -u +%FT%TZ); raw: $RAW) =="
    cat "$W/meta.txt"
    echo
    echo "enrollment of $HOSTS hosts ($ENROLL_PARALLEL in flight): wall $(field wall_s <"$RAW/enroll.txt") s," \
        "$(field joins_per_s <"$RAW/enroll.txt") joins/s, join p50 $(field p50_ms <"$RAW/enroll.txt") ms" \
        "p99 $(field p99_ms <"$RAW/enroll.txt") ms, coordinator CPU $(field server_cpu_s <"$RAW/enroll.txt") s"
    echo
    echo "304 polls, $CONNS keep-alive HTTPS connections, ${DURATION}s x $REPS rounds, median (min-max):"
    printf '  %-30s %s req/s   p99 %s us   server CPU %s us/req\n' \
        "drover (mTLS, drover-load)" "$(mmm "$RAW/polls-drover.txt" rps)" "$(mmm "$RAW/polls-drover.txt" p99_us)" \
        "$(mmm "$RAW/polls-drover.txt" server_us_per_req %.1f)"
    printf '  %-30s %s req/s   p99 %s us   server CPU %s us/req\n' \
        "nginx (no client cert, same)" "$(mmm "$RAW/polls-nginx.txt" rps)" "$(mmm "$RAW/polls-nginx.txt" p99_us)" \
        "$(mmm "$RAW/polls-nginx.txt" server_us_per_req %.1f)"
    printf '  %-30s %s req/s   p99 %s (1 run)\n' "nginx, wrk -t1 (anchor)" "$WRK_RPS" "$WRK_P99"
    awk -v d="$D_RPS" -v n="$N_RPS" -v w="$WRK_RPS" 'BEGIN {
        printf "  ratio drover / nginx (same client): %.2fx   drover / nginx-by-wrk: %.2fx   (target >= 10000 req/s and >= 0.3x)\n", d / n, d / w }'
    echo "  client CPU (drover-load on CPU 1): drover runs $(mmm "$RAW/polls-drover.txt" client_cpu_pct) %, nginx runs $(mmm "$RAW/polls-nginx.txt" client_cpu_pct) %"
    echo "  other processes' CPU during the runs: drover runs $(mmm "$RAW/polls-drover.txt" other_cpu_pct) %, nginx runs $(mmm "$RAW/polls-nginx.txt" other_cpu_pct) % of one CPU"
    echo
    echo "fleet-wide pin, $HOSTS hosts, $WAITERS long-polling agents, $PIN_REPS rounds, median (min-max):"
    echo "  hosts re-signed: $(field hosts_changed <"$RAW/pin.txt" | sort -u | tr '\n' ' ')"
    echo "  pin API wall time:               $(mmm "$RAW/pin.txt" api_ms) ms"
    echo "  all waiters hold the new manifest: $(mmm "$RAW/pin.txt" all_ms) ms (first $(mmm "$RAW/pin.txt" first_ms) ms, p50 $(mmm "$RAW/pin.txt" p50_ms) ms)   (target <= 2000 ms)"
    echo "  coordinator CPU per pin:         $(mmm "$RAW/pin.txt" server_cpu_s %.2f) s"
    echo
    echo "reports, $REPORT_CONNS hosts posting for ${DURATION}s x $REPS rounds each, median (min-max):"
    report_row() {  # label file
        printf '  %-34s offered %s  accepted %s/s  in SQLite %s/s  503s %s  flush lag %s ms  coordinator CPU %s s  p99 %s us\n' \
            "$1" "$(field offered_rate <"$2" | head -1)" "$(mmm "$2" accepted_per_s)" "$(mmm "$2" ingested_per_s)" \
            "$(mmm "$2" queue_full)" "$(mmm "$2" flush_lag_ms)" "$(mmm "$2" server_cpu_s %.2f)" "$(mmm "$2" p99_us)"
    }
    report_row "paced (target rate)" "$RAW/reports-paced.txt"
    report_row "max, 100 ms back-off after 503" "$RAW/reports-backoff.txt"
    report_row "max, no back-off (overload)" "$RAW/reports-flood.txt"
    echo "  (target: >= 3000 reports/s into SQLite; CPU of other processes and kernel threads (SQLite's fsyncs run in jbd2/kworkers) during the runs: $(cat "$RAW"/reports-*.txt | field other_cpu_pct | stats | awk '{ printf "median %s, max %s", $1, $3 }') % of one CPU)"
    echo
    echo "coordinator memory (target VmRSS <= 150 MiB with $HOSTS hosts):"
    cat "$RAW/memory.txt"
    echo "timed runs that started on a busy machine: $(awk '/gave_up=1/' "$RAW/quiet.txt" | wc -l) of $(wc -l <"$RAW/quiet.txt") (waited ${QUIET_SPENT}s in all for quiet)"
    echo "coordinator CPU: $CPU_ENROLLED s up to enrolled, $CPU_POLLS s in the poll rounds, $CPU_END s in total;" \
        "SQLite files $(mib $((DB_BYTES / 1024))) MiB; restart with $HOSTS hosts answered HTTPS after $RESTART_S s"
} | tee "$W/summary.txt"
