#!/usr/bin/env bash
# The HA demo (issue 16): several coordinators on one PostgreSQL, artifacts in an OCI
# registry, three real systemd hosts, and the leader killed with -9 in the middle of a
# rollout. It runs, each of its own and torn down on exit:
#   - PostgreSQL (Debian's postgresql package): its own initdb cluster in a temp dir, run
#     as nobody, on a free 127.0.0.1 port;
#   - a registry (Debian's docker-registry) over plain HTTP on the demo bridge;
#   - three `drover serve --database postgres://...` replicas sharing the CA, keys and
#     admin token (the first makes them; the others get copies, as configuration
#     management would give them);
#   - three hosts (systemd-nspawn, Debian 12) that install drover-agent from its .deb
#     and join with a line naming all three coordinators.
# Then: two releases pushed to the registry, v1 everywhere, a staged rollout of v2, the
# leader killed once the canary stage passed, another replica takes the lead and the
# rollout finishes with each stage run once. Every `drover` command is printed first.
#
# Network: a bridge drover-ha0 (10.79.0.1/24) that exists only while the demo runs; the
# hosts are 10.79.0.11-13 in their own network namespaces; the replicas listen on
# 10.79.0.1:8441-8443 and the registry on 10.79.0.1:5000; PostgreSQL on 127.0.0.1.
# Nothing is sent anywhere else. Everything it started is stopped by PID on exit.
#
# Environment: DROVER_DEMO_NO_BUILD=1 uses target/release and dist/ as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

BRIDGE=drover-ha0
NET=10.79.0
HOSTS=(drover-ha-1 drover-ha-2 drover-ha-3)
REPLICA_PORTS=(8441 8442 8443)
REGISTRY_PORT=5000
BAKE=10s

bold() { printf '\033[1m%s\033[0m' "$*"; }
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { step "$*"; "$@"; }
say() { printf '\n%s\n' "$*"; }
heading() { printf '\n\033[1;34m== %s ==\033[0m\n' "$*"; }
die() { echo "demo-ha: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: the demo boots systemd hosts"

# --- cleanup: everything this run started, by PID, and its directories ---------------
work=""
pg_dir=""
pg_pid=""
registry_pid=""
declare -a replica_pid=("" "" "")
declare -A nspawn_pid=()
bridge_made=""

stop_pid() { # pid signal: signal, wait up to 20 s, then SIGKILL
  local pid=$1 signal=${2:-TERM}
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -"$signal" "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ "$status" != 0 ] && [ -n "$work" ] && [ -d "$work" ]; then
    echo >&2
    echo "demo-ha failed (exit $status); the last lines of each log:" >&2
    for log in "$work"/*.log "$work"/*.console "$pg_dir"/server.log; do
      [ -f "$log" ] || continue
      echo "--- $log" >&2
      tail -n 15 "$log" >&2
    done
  fi
  echo "cleaning up: hosts, replicas, registry, PostgreSQL, bridge, temp dirs" >&2
  # The hosts power off in parallel; wait only for those stops (a bare `wait` would
  # also wait for the replicas, the registry and PostgreSQL).
  local stops=()
  for host in "${!nspawn_pid[@]}"; do
    stop_pid "${nspawn_pid[$host]}" TERM &
    stops+=($!)
  done
  for pid in "${stops[@]}"; do wait "$pid" 2>/dev/null || true; done
  for pid in "${replica_pid[@]}"; do stop_pid "$pid" TERM; done
  stop_pid "$registry_pid" TERM
  # SIGINT: PostgreSQL's fast shutdown.
  stop_pid "$pg_pid" INT
  [ -n "$bridge_made" ] && ip link del "$BRIDGE" 2>/dev/null || true
  [ -n "$work" ] && rm -rf "$work"
  [ -n "$pg_dir" ] && rm -rf "$pg_dir"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. prerequisites and the build -------------------------------------------------
. scripts/prereqs.sh
command -v ip >/dev/null || apt_install iproute2
command -v curl >/dev/null || apt_install curl
command -v jq >/dev/null || apt_install jq

# Whether dist/ and the release binaries are missing or older than the sources.
build_stale() {
  local deb
  deb=$(ls dist/drover-agent_*_amd64.deb 2>/dev/null | head -1)
  [ -n "$deb" ] && [ -x target/release/drover ] && [ -f dist/sample-app-2.0.0.tar.gz ] || return 0
  find protocol coordinator agent tests/src/bin packaging Cargo.toml Cargo.lock \
    -newer "$deb" -type f -not -path '*/target/*' -print -quit | grep -q .
}
if [ -z "${DROVER_DEMO_NO_BUILD:-}" ] && build_stale; then
  say "Building the release binaries, the .deb packages and the sample app's tarballs (minutes)..."
  flock /tmp/drover-pkg.lock bash packaging/build.sh >/dev/null
fi
agent_deb=$(ls dist/drover-agent_*_amd64.deb | head -1)
export PATH="$repo/target/release:$PATH"
rootfs=$(bash scripts/rootfs.sh)
SECONDS=0

work=$(mktemp -d /tmp/drover-demo-ha.XXXXXX)
ip link del "$BRIDGE" 2>/dev/null || true # a bridge left by a run that was killed -9
say "A private bridge for the demo: $BRIDGE ($NET.1/24)."
ip link add "$BRIDGE" type bridge
bridge_made=1
ip addr add "$NET.1/24" dev "$BRIDGE"
ip link set "$BRIDGE" up

# --- 2. PostgreSQL of its own --------------------------------------------------------
heading "PostgreSQL"
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$pg_bin/postgres" ] || die "PostgreSQL is not installed: apt-get install postgresql"
free_port() { # a port no socket uses, below Linux's ephemeral range (32768-60999)
  local port
  for _ in $(seq 1 50); do
    port=$((15000 + RANDOM % 17000))
    ss -tanH "( sport = :$port )" | grep -q . || { echo "$port"; return 0; }
  done
  die "no free port found"
}
pg_port=$(free_port)
pg_dir=$(mktemp -d /tmp/drover-demo-ha-pg.XXXXXX)
chown nobody:nogroup "$pg_dir"
as_nobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }
(cd / && as_nobody "$pg_bin/initdb" --pgdata "$pg_dir/data" --username drover --auth trust \
  --encoding UTF8 --locale C --no-sync --no-instructions >/dev/null)
(cd / && exec setpriv --reuid=nobody --regid=nogroup --clear-groups "$pg_bin/postgres" \
  -D "$pg_dir/data" -p "$pg_port" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$pg_dir" -c fsync=off </dev/null >"$pg_dir/server.log" 2>&1) &
pg_pid=$!
for _ in $(seq 1 150); do
  "$pg_bin/pg_isready" --host 127.0.0.1 --port "$pg_port" --username drover --quiet && break
  kill -0 "$pg_pid" 2>/dev/null || die "PostgreSQL exited at its start (its log follows)"
  sleep 0.2
done
"$pg_bin/pg_isready" --host 127.0.0.1 --port "$pg_port" --username drover --quiet || die "PostgreSQL did not start"
"$pg_bin/createdb" --host 127.0.0.1 --port "$pg_port" --username drover drover
database="postgres://drover@127.0.0.1:$pg_port/drover"
say "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') (initdb as nobody in $pg_dir) serves $database"

# --- 3. a registry of its own ---------------------------------------------------------
heading "Registry"
registry="$NET.1:$REGISTRY_PORT"
mkdir -p "$work/registry"
cat >"$work/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry/storage
http:
  addr: $registry
  secret: $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
EOF
docker-registry serve "$work/registry/config.yml" </dev/null >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 150); do curl -sf "http://$registry/v2/" >/dev/null && break; sleep 0.2; done
curl -sf "http://$registry/v2/" >/dev/null || die "the registry did not start"
say "docker-registry (plain HTTP) listens on $registry: the releases' tarballs go there, not to a coordinator."

# --- 4. three coordinators on one database --------------------------------------------
heading "Three coordinators on one PostgreSQL"
urls=()
start_replica() { # index
  local index=$1 dir="$work/replica-$(($1 + 1))" port=${REPLICA_PORTS[$1]}
  step "drover serve --listen $NET.1:$port --data-dir $dir --database $database --artifact-registry $registry/demo &"
  rm -f "$dir/address"
  setsid drover serve --listen "$NET.1:$port" --data-dir "$dir" --database "$database" \
    --artifact-registry "$registry/demo" </dev/null >"$work/replica-$(($1 + 1)).log" 2>&1 &
  replica_pid[$index]=$!
  # No job notice ("Killed") when the demo kills it; the cleanup still stops it by PID.
  disown "${replica_pid[$index]}"
  for _ in $(seq 1 300); do [ -s "$dir/address" ] && break; sleep 0.2; done
  [ -s "$dir/address" ] || die "replica $((index + 1)) did not start"
  urls[$index]="https://$NET.1:$port"
}
start_replica 0
say "The first replica made the CA, the signing keys and the admin token. The others get
copies of exactly those (ca.pem, ca.key, admin.token, keys/) and nothing else:"
for index in 1 2; do
  dir="$work/replica-$((index + 1))"
  mkdir -m 0700 "$dir"
  step "cp -a replica-1/{ca.pem,ca.key,admin.token,keys} replica-$((index + 1))/"
  cp -a "$work/replica-1/"{ca.pem,ca.key,admin.token,keys} "$dir/"
  start_replica "$index"
done
coordinators=$(IFS=,; echo "${urls[*]}")
# The CLI reads the admin token and CA from replica 1's data directory; DROVER_ADDR says
# which replica it talks to (changed to a survivor after the kill).
export DROVER_DATA_DIR="$work/replica-1" DROVER_ADDR="${urls[0]}"
run drover coordinators

# --- 5. three real hosts ---------------------------------------------------------------
heading "Three hosts"
# The machine-side PID of a host's systemd: a descendant of nspawn whose NSpid is 1.
init_pid() {
  local child grandchild
  for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    for grandchild in "$child" $(cat /proc/"$child"/task/*/children 2>/dev/null); do
      if [ "$(cat /proc/"$grandchild"/comm 2>/dev/null)" = systemd ] &&
        [ "$(awk '/^NSpid:/{print $NF}' /proc/"$grandchild"/status 2>/dev/null)" = 1 ]; then
        echo "$grandchild"
        return 0
      fi
    done
  done
  return 1
}
declare -A host_pid=()
on() { local host=$1; shift; nsenter -t "${host_pid[$host]}" -a "$@"; }

# Boot all three at once; then install and join each.
n=0
for host in "${HOSTS[@]}"; do
  setsid systemd-nspawn -q -D "$rootfs" --volatile=overlay --boot --register=no --keep-unit \
    --machine="$host" --network-bridge="$BRIDGE" </dev/null >"$work/$host.console" 2>&1 &
  nspawn_pid[$host]=$!
done
for host in "${HOSTS[@]}"; do
  n=$((n + 1))
  for _ in $(seq 1 300); do
    if ip=$(init_pid "${nspawn_pid[$host]}") &&
      [[ "$(nsenter -t "$ip" -a systemctl is-system-running 2>/dev/null)" =~ ^(running|degraded)$ ]]; then
      host_pid[$host]=$ip
      break
    fi
    sleep 0.2
  done
  [ -n "${host_pid[$host]:-}" ] || die "host $host did not boot"
  on "$host" ip addr add "$NET.1$n/24" dev host0
  on "$host" ip link set host0 up
  say "Host $host is up ($NET.1$n)."
  cp "$agent_deb" "/proc/${host_pid[$host]}/root/tmp/"
  step "dpkg -i $(basename "$agent_deb")    # on $host"
  on "$host" dpkg -i "/tmp/$(basename "$agent_deb")" >/dev/null
  step "drover token create --labels env=demo --coordinators $coordinators"
  join=$(drover token create --labels env=demo --coordinators "$coordinators" 2>/dev/null)
  step "${join%% --token*} --token ... --ca-sha256 ...    # on $host"
  # shellcheck disable=SC2086
  on "$host" $join >/dev/null
  # Quick heartbeats for the demo (pins arrive by long-poll either way), and plain HTTP
  # for the demo's registry, which is on the private bridge.
  on "$host" sh -c "printf 'poll_interval = \"5s\"\n\n[registries.\"$registry\"]\ninsecure = true\n' >> /etc/drover/agent.toml"
  on "$host" systemctl start drover-agent
done
step "cat /etc/drover/agent.toml    # on ${HOSTS[0]}"
on "${HOSTS[0]}" cat /etc/drover/agent.toml | grep -v '^#' | grep . | sed 's/^/    /'
run drover hosts list

# --- 6. releases in the registry, v1 everywhere -------------------------------------------
heading "Releases in the registry, v1 everywhere"
for version in 1.0.0 2.0.0; do
  # No --registry: the coordinators name it (--artifact-registry): pushed to $registry/demo/web.
  run drover release create web "$version" --spec dist/sample-app.toml \
    --artifact "dist/sample-app-$version.tar.gz" --registry-insecure
done
run drover pin web 1.0.0

wait_version() { # version: until every host reports it healthy (bounded)
  local version=$1 host
  for host in "${HOSTS[@]}"; do
    for _ in $(seq 1 300); do
      drover hosts show "$host" -o json 2>/dev/null | tr -d ' \n' |
        grep -q "\"current\":\"$version\",\"state\":\"healthy\"" && continue 2
      sleep 0.2
    done
    run drover hosts show "$host"
    die "$host did not become healthy on $version within 60 s"
  done
}
wait_version 1.0.0
run drover status

# --- 7. a rollout, and the leader killed in the middle of it --------------------------------
heading "A rollout, and kill -9 of the leader in the middle of it"
run drover rollout start web 2.0.0 --stages canary,50%,100% --bake "$BAKE" --reason "HA demo"
say "Waiting for the canary stage to pass (its host healthy on 2.0.0, then $BAKE of bake)..."
for _ in $(seq 1 600); do
  [ "$(drover rollout status web -o json 2>/dev/null | jq -r '.stages[0].status')" = passed ] && break
  sleep 0.2
done
[ "$(drover rollout status web -o json | jq -r '.stages[0].status')" = passed ] || die "the canary stage did not pass within 120 s"
run drover rollout status web
run drover coordinators

leader_url=$(drover coordinators -o json | jq -r '.[] | select(.leader) | .address' | head -1)
killed=""
for index in 0 1 2; do [ "${leader_url%/}" = "${urls[$index]}" ] && killed=$index; done
[ -n "$killed" ] || die "no replica of this demo leads (leader: '${leader_url:-none}')"
survivor=$(((killed + 1) % 3))
step "kill -9 ${replica_pid[$killed]}    # replica $((killed + 1)), the leader (${urls[$killed]})"
kill -KILL "${replica_pid[$killed]}"
killed_at=$(date +%s%N)
for _ in $(seq 1 100); do kill -0 "${replica_pid[$killed]}" 2>/dev/null || break; sleep 0.05; done
replica_pid[$killed]=""
export DROVER_ADDR="${urls[$survivor]}"
say "The CLI now talks to replica $((survivor + 1)): DROVER_ADDR=$DROVER_ADDR"
new_leader=""
for _ in $(seq 1 150); do
  new_leader=$(drover coordinators -o json 2>/dev/null |
    jq -r --arg dead "${urls[$killed]}" '.[] | select(.leader and (.address | rtrimstr("/")) != $dead) | .address' | head -1)
  [ -n "$new_leader" ] && break
  sleep 0.1
done
[ -n "$new_leader" ] || die "no other replica took the lead within 15 s"
handover_ms=$((($(date +%s%N) - killed_at) / 1000000))
run drover coordinators
say "$(bold "New leader: $new_leader, $((handover_ms / 1000)).$(printf %03d $((handover_ms % 1000))) s after the kill.")"

run timeout 300 drover rollout watch web
run drover rollout history web
run drover status

# Each stage started once and passed once, across the hand-over.
history=$(drover rollout history web)
for stage in "1 of 3 (canary)" "2 of 3 (50%)" "3 of 3 (100%)"; do
  label=${stage#* of 3 }
  started=$(grep -cF "stage $stage started" <<<"$history" || true)
  passed=$(grep -cF "stage ${stage%% of*} $label passed" <<<"$history" || true)
  [ "$started" = 1 ] && [ "$passed" = 1 ] ||
    die "stage $stage started $started times and passed $passed times (expected once each)"
done

heading "What the hosts serve"
wait_version 2.0.0
serving=0
for n in 1 2 3; do
  answer=$(curl -s --max-time 2 "http://$NET.1$n:8080/" || echo 'no answer')
  printf '    curl http://%s:8080/  ->  %s\n' "$NET.1$n" "$answer"
  case $answer in *2.0.0*) serving=$((serving + 1)) ;; esac
done

# --- 8. what it showed -----------------------------------------------------------------------
heading "What this showed"
cat <<EOF
  - 3 coordinators (${urls[*]}) on one PostgreSQL, sharing one CA, keys and admin token.
  - 3 hosts joined with one line naming all three; tarballs fetched from the registry $registry.
  - The leader (replica $((killed + 1))) was killed with -9 after the canary stage passed;
    replica $(for i in 0 1 2; do [ "${urls[$i]}" = "${new_leader%/}" ] && echo $((i + 1)); done) led $((handover_ms / 1000)).$(printf %03d $((handover_ms % 1000))) s later and finished the rollout: each of its 3 stages started once and passed once.
  - $serving of 3 hosts serve 2.0.0. Took ${SECONDS} s after the build.
EOF
[ "$serving" = 3 ] || die "not every host serves 2.0.0"
