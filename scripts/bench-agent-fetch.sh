#!/usr/bin/env bash
# bench-agent-fetch.sh - the agent's "fetch + verify + unpack" of one ~256 MiB tar.gz against
# the shell baseline  curl -s URL | tee >(sha256sum) | tar -xzf -  (issue 4; BENCHMARKS.md,
# "Agent: fetch + verify + unpack").
#
# WHAT IT MEASURES
#   The artifact is the deterministic one of shared/bench/artifact-baseline.sh (2000 files,
#   256 MiB gzip, 423 MiB unpacked; gen_tree.py + tar --sort=name --mtime=@0 | gzip -n -6),
#   reused from $BENCH_TMP/artifact/ when its recorded spec and sha256 match, else built the
#   same way into the same place. nginx (Debian package, 1 worker, sendfile, access_log off)
#   serves it on 127.0.0.1:$PORT. Then RUNS rounds (after WARMUP uncounted ones), each:
#     pipeline  bash + curl | tee FIFO | tar -xzf - -C DIR, sha256sum <FIFO  -- the exact
#               command artifact-baseline.sh times (a FIFO so that bash waits for sha256sum),
#               fresh DIR;
#     agent     drover-fetch-bench URL DIGEST SIZE WORKDIR (tests/src/bin/drover-fetch-bench.rs):
#               the agent library's fetch::Cache::fetch into an empty cache, then
#               install::stage in spawn_blocking (unpack, fsync of every file and directory,
#               rename), on the agent's runtime configuration; fresh WORKDIR;
#     split     the same binary with --split: same fetch, then unpack and the fsyncs timed
#               apart (stage's work without the rename), to show what the fsyncs cost.
#   Each run: `sync` untimed before it (no run pays for writing back the previous run's
#   files), wall clock from $EPOCHREALTIME around the process, GNU /usr/bin/time for user,
#   sys and peak RSS (%M: the largest single process; for the agent that is the agent).
#   The archive stays in the page cache (warm), as in the baseline. Before each round the
#   script waits (bounded) until other work on the machine uses under 10 % of the CPUs.
#   Correctness, checked after every run (untimed): the pipeline's sha256 equals the
#   archive's and its DIR holds 2000 files; the agent's releases/v1 holds 2000 files (the
#   agent checked the digest itself: fetch fails on a mismatch). Run directories are
#   deleted after their check.
#
# HOW TO READ THE OUTPUT
#   A table of min / MEDIAN / max per measurement (quote the median), then the ratio
#   agent median wall / pipeline median wall (target <= 1.3) and the agent's peak RSS, as
#   GNU time %M and as the binary's own VmHWM (target <= 32 MiB). fetch_s and stage_s are the
#   agent's two steps as it timed them (the process also pays start-up and exit, so they add
#   to slightly less than its wall time). The split rows give unpack_s and fsync_s.
#   busy% is what other processes used just before each round. Raw per-run rows:
#   $BENCH_TMP/agent-fetch/raw-<UTC timestamp>.csv and the RESULT lines beside it.
#
# Knobs (env): RUNS=5 WARMUP=1 PORT=18083 SPLIT=1 (0: skip the split runs) QUIET_WAIT=30
#   PROFILE=agent (the cargo profile of the agent library; release to compare)
#   QUIET_BUDGET=120 BENCH_TMP=/tmp/drover-bench SHARED_BENCH=<repo>/../shared/bench
#   (gen_tree.py is taken from there; the generation itself is repeated below).
# Needs: root for apt-get when nginx, curl or GNU time are missing; python3, tar, gzip.
# Takes about 1 minute per round plus the build (and, once, about 3 minutes to make the
# archive). Stops its nginx by PID on exit and deletes its work directories; keeps the
# archive for reuse.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

RUNS="${RUNS:-5}"
WARMUP="${WARMUP:-1}"
PORT="${PORT:-18083}"
PROFILE="${PROFILE:-agent}"
SPLIT="${SPLIT:-1}"
QUIET_WAIT="${QUIET_WAIT:-30}"
QUIET_BUDGET="${QUIET_BUDGET:-120}"
BENCH_TMP="${BENCH_TMP:-/tmp/drover-bench}"
SHARED_BENCH="${SHARED_BENCH:-$ROOT/../shared/bench}"
(( RUNS >= 1 && RUNS <= 20 && WARMUP >= 0 && WARMUP <= 3 )) || { echo "RUNS must be 1..20, WARMUP 0..3" >&2; exit 1; }

# The artifact: same spec and place as shared/bench/artifact-baseline.sh.
NFILES=2000 RANDOM_MIB=194.4 TEXT_MIB=229 SEED=20240501
A="$BENCH_TMP/artifact"
ART="$A/www/app.tar.gz"
SPEC="$NFILES-$RANDOM_MIB-$TEXT_MIB-$SEED"
W="$BENCH_TMP/agent-fetch"
TS="$(date -u +%Y%m%dT%H%M%SZ)"
CSV="$W/raw-$TS.csv"
RESULTS="$W/raw-$TS.results"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

NGINX_PID=""
cleanup() {
    local rc=$? i
    set +e
    if [[ -n "$NGINX_PID" ]] && kill -0 "$NGINX_PID" 2>/dev/null; then
        kill -TERM "$NGINX_PID"
        for ((i = 0; i < 100; i++)); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$NGINX_PID" 2>/dev/null && kill -KILL "$NGINX_PID"
    fi
    rm -rf "$W/out"
    return $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v curl >/dev/null || need+=(curl)
[[ -x /usr/bin/time ]] || need+=(time)
if (( ${#need[@]} )); then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
fi
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then die "port $PORT in use"; fi

# The agent's library as it ships: the size-optimised `agent` profile (Cargo.toml).
log "building drover-fetch-bench (--profile $PROFILE)"
cargo build --profile "$PROFILE" -q -p drover-tests --bin drover-fetch-bench
BIN="$ROOT/target/$PROFILE/drover-fetch-bench"

mkdir -p "$A/www" "$W"/{logs,tmp}
if [[ -s "$ART" && -s "$A/app.sha256" && "$(cat "$A/spec" 2>/dev/null)" == "$SPEC" ]] \
   && [[ "$(sha256sum "$ART" | cut -d' ' -f1)" == "$(cat "$A/app.sha256")" ]]; then
    log "reusing $ART"
else
    log "generating the artifact ($NFILES files, $RANDOM_MIB MiB random + $TEXT_MIB MiB text)"
    rm -rf "$A/src"; mkdir -p "$A/src/app"
    python3 "$SHARED_BENCH/gen_tree.py" "$A/src/app" "$NFILES" "$RANDOM_MIB" "$TEXT_MIB" "$SEED"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$A/src" -cf - app \
        | gzip -n -6 >"$ART.tmp"
    mv "$ART.tmp" "$ART"
    sha256sum "$ART" | cut -d' ' -f1 >"$A/app.sha256"
    echo "$SPEC" >"$A/spec"
    rm -rf "$A/src"
fi
SHA="$(cat "$A/app.sha256")"
SIZE="$(stat -c %s "$ART")"

cat >"$W/nginx.conf" <<CONF
worker_processes 1;
pid $W/nginx.pid;
error_log $W/logs/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path $W/tmp/body;
    proxy_temp_path $W/tmp/proxy;
    fastcgi_temp_path $W/tmp/fastcgi;
    uwsgi_temp_path $W/tmp/uwsgi;
    scgi_temp_path $W/tmp/scgi;
    default_type application/octet-stream;
    server { listen 127.0.0.1:$PORT; root $A/www; }
}
CONF
nginx -p "$W" -e "$W/logs/error.log" -c "$W/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
for ((i = 0; i < 100; i++)); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
URL="http://127.0.0.1:$PORT/app.tar.gz"
[[ "$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "$URL")" == "200 $SIZE" ]] || die "nginx does not serve the artifact"
cat "$ART" >/dev/null  # into the page cache

# busy_pct: how busy the whole machine was over the next second, in % of all its CPUs.
busy_pct() {
    local before after
    before=$(head -1 /proc/stat); sleep 1; after=$(head -1 /proc/stat)
    awk -v a="$before" -v b="$after" 'BEGIN { split(a, x, " "); split(b, y, " "); busy = 0; total = 0
        for (i = 2; i <= 9; i++) { d = y[i] - x[i]; total += d; if (i != 5 && i != 6) busy += d }
        printf "%.0f", total ? 100 * busy / total : 0 }'
}
QUIET_SPENT=0
BUSY=0
wait_quiet() {
    local waited=0
    while :; do
        BUSY=$(busy_pct)
        (( BUSY < 10 )) && break
        (( waited >= QUIET_WAIT || QUIET_SPENT >= QUIET_BUDGET )) && { log "machine ${BUSY}% busy; measuring anyway"; break; }
        sleep 2; waited=$((waited + 3)); QUIET_SPENT=$((QUIET_SPENT + 3))
    done
}

PIPE='d=$(mktemp -d -p "$0" run.XXXXXX); mkfifo "$d.fifo"; sha256sum <"$d.fifo" >"$d.sha" & h=$!; curl -s "$1" | tee "$d.fifo" | tar -xzf - -C "$d"; rc=$?; wait $h || rc=1; exit $rc'

echo "round,kind,busy_pct,wall_s,user_s,sys_s,maxrss_kib,fetch_s,stage_s,unpack_s,fsync_s,vmhwm_kib,cpu_s" >"$CSV"
: >"$RESULTS"
# timed ROUND KIND CMD...: one run under sync + GNU time; appends a CSV row (counted rounds).
timed() {
    local round="$1" kind="$2" t0 t1 rc line; shift 2
    sync
    t0=$EPOCHREALTIME
    rc=0
    /usr/bin/time -f '%U %S %M' -o "$W/out/time" timeout -k 10 300 "$@" </dev/null >"$W/out/stdout" 2>"$W/out/stderr" || rc=$?
    t1=$EPOCHREALTIME
    (( rc == 0 )) || { cat "$W/out/stderr" >&2; die "$kind run $round failed (exit $rc)"; }
    line=$(grep '^RESULT ' "$W/out/stdout" || true)
    [[ -n "$line" ]] && echo "round=$round kind=$kind $line" >>"$RESULTS"
    (( round > 0 )) || return 0
    awk -v r="$round" -v k="$kind" -v b="$BUSY" -v t0="$t0" -v t1="$t1" -v line="$line" '
        function field(name,   i, n, kv) { n = split(line, kv, " ")
            for (i = 1; i <= n; i++) if (index(kv[i], name "=") == 1) return substr(kv[i], length(name) + 2)
            return "" }
        { printf "%s,%s,%s,%.4f,%s,%s,%s,%s,%s,%s,%s,%s,%.2f\n", r, k, b, t1 - t0, $1, $2, $3,
              field("fetch_s"), field("stage_s"), field("unpack_s"), field("fsync_s"), field("vmhwm_kib"), $1 + $2 }' \
        "$W/out/time" >>"$CSV"
}
count_files() { find "$1" -type f | wc -l; }

log "artifact $SIZE bytes, sha256 $SHA; $WARMUP warm-up + $RUNS rounds"
for ((round = 1 - WARMUP; round <= RUNS; round++)); do
    rm -rf "$W/out"; mkdir -p "$W/out/pipe"
    wait_quiet
    log "round $round (busy ${BUSY}%)"

    timed "$round" pipeline bash -c "$PIPE" "$W/out/pipe" "$URL"
    d=$(ls -d "$W"/out/pipe/run.*/)
    [[ "$(cut -d' ' -f1 "$W"/out/pipe/run.*.sha)" == "$SHA" ]] || die "pipeline sha256 mismatch in round $round"
    n=$(count_files "$d"); [[ "$n" == "$NFILES" ]] || die "pipeline extracted $n files in round $round"
    rm -rf "$W/out/pipe"

    timed "$round" agent "$BIN" "$URL" "$SHA" "$SIZE" "$W/out/agent"
    n=$(count_files "$W/out/agent/state/apps/bench/releases/v1"); [[ "$n" == "$NFILES" ]] || die "agent staged $n files in round $round"
    [[ -s "$W/out/agent/cache/$SHA" ]] || die "agent cache has no verified blob in round $round"
    rm -rf "$W/out/agent"

    if (( SPLIT )); then
        timed "$round" split "$BIN" --split "$URL" "$SHA" "$SIZE" "$W/out/split"
        n=$(count_files "$W/out/split/state/split-staging"); [[ "$n" == "$NFILES" ]] || die "split unpacked $n files in round $round"
        rm -rf "$W/out/split"
    fi
done

# stat KIND COLUMN: "median min max" of a CSV column over the counted runs of KIND.
stat_col() {
    awk -F, -v k="$1" -v c="$2" 'NR > 1 && $2 == k && $c != "" {print $c}' "$CSV" | sort -g \
        | awk '{a[NR]=$1} END { if (NR == 0) { print "NA NA NA"; exit }
              m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; print m, a[1], a[NR] }'
}
row() {  # LABEL KIND COLUMN [SCALE]
    stat_col "$2" "$3" | awk -v l="$1" -v s="${4:-1}" '{ if ($1 == "NA") printf "%-34s %10s\n", l, "-";
        else printf "%-34s %10.3f %10.3f %10.3f\n", l, $1 / s, $2 / s, $3 / s }'
}
{
    echo "# bench-agent-fetch $(date -u +%FT%TZ), $(nproc) cores, $(uname -r), tree $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+dirty')"
    echo "# artifact $ART: $SIZE bytes, sha256 $SHA; $RUNS counted rounds after $WARMUP warm-up"
    echo "# curl $(curl --version | head -1 | cut -d' ' -f2), tar $(tar --version | head -1 | awk '{print $NF}'), gzip $(gzip --version | head -1 | awk '{print $NF}'), nginx $(nginx -v 2>&1 | cut -d/ -f2)"
    printf '%-34s %10s %10s %10s\n' "" median min max
    row "pipeline wall s" pipeline 4
    row "pipeline cpu s (user+sys)" pipeline 13
    row "pipeline user s" pipeline 5
    row "pipeline sys s" pipeline 6
    row "pipeline peak MiB (%M)" pipeline 7 1024
    row "agent wall s" agent 4
    row "agent cpu s (user+sys)" agent 13
    row "agent user s" agent 5
    row "agent sys s" agent 6
    row "agent fetch s (own timer)" agent 8
    row "agent stage s (own timer)" agent 9
    row "agent peak MiB (%M)" agent 7 1024
    row "agent peak MiB (VmHWM)" agent 12 1024
    if (( SPLIT )); then
        row "split wall s" split 4
        row "split fetch s" split 8
        row "split unpack s (no fsync)" split 10
        row "split fsync s (files + dirs)" split 11
        row "split peak MiB (VmHWM)" split 12 1024
    fi
    row "busy % before round" agent 3
    p=$(stat_col pipeline 4 | cut -d' ' -f1); a=$(stat_col agent 4 | cut -d' ' -f1)
    hwm=$(awk -F, 'NR > 1 && ($2 == "agent" || $2 == "split") { if ($7 > m) m = $7; if ($12 > m) m = $12 } END { print m + 0 }' "$CSV")
    awk -v p="$p" -v a="$a" -v h="$hwm" 'BEGIN {
        r = a / p; printf "ratio agent/pipeline median wall: %.2f (target <= 1.30: %s)\n", r, r <= 1.3 ? "met" : "MISSED"
        printf "agent peak RSS over all runs: %.1f MiB (target <= 32 MiB: %s)\n", h / 1024, h <= 32768 ? "met" : "MISSED" }'
    echo "verification: every pipeline sha256 matched and every run unpacked $NFILES files"
    echo "raw: $CSV $RESULTS"
    # The MISSED/met lines above decide nothing: the script reports and exits 0.
    true
} | tee "$W/summary-$TS.txt"
