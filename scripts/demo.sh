#!/usr/bin/env bash
# The demo: a coordinator with its embedded defaults and three real systemd hosts
# (systemd-nspawn, Debian 12) that install drover-agent from its .deb, join, and get a
# sample app rolled out in stages: v1 everywhere, v2 on a canary host first, then the
# fleet; then a bad v3 that the canary rolls back by itself. Every `drover` command is
# printed before it runs, so this doubles as a walk through the workflow.
#
# The fleet stays up afterwards for exploring; `bash scripts/demo.sh teardown` removes it
# (also done automatically at the start of the next run, so the demo can be run twice).
#
# Network: a bridge drover-demo0 (10.77.0.1/24) that exists only for the demo; the hosts
# are 10.77.0.11-13 in their own network namespaces, the coordinator listens on
# 10.77.0.1:8443. Nothing is sent anywhere else.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

DEMO=/var/lib/drover-demo
BRIDGE=drover-demo0
NET=10.77.0
HOSTS=(drover-demo-1 drover-demo-2 drover-demo-3)

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { step "$*"; "$@"; }
say() { printf '\n%s\n' "$*"; }

teardown() {
  local pid
  for file in "$DEMO"/*.pid; do
    [ -f "$file" ] || continue
    pid=$(cat "$file")
    # Only what this demo started: the PID files hold the nspawn and coordinator PIDs.
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "$DEMO"
}

if [ "${1:-}" = teardown ]; then
  teardown
  echo "demo removed"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "run as root: the demo boots systemd hosts" >&2; exit 1; }

. scripts/prereqs.sh
command -v ip >/dev/null || apt_install iproute2
command -v curl >/dev/null || apt_install curl
teardown

say "Building the release binaries, the .deb/.rpm packages and the sample app's release tarballs..."
bash packaging/build.sh >/dev/null
agent_deb=$(ls dist/drover-agent_*_amd64.deb | head -1)
export PATH="$repo/target/release:$PATH"
rootfs=$(bash scripts/rootfs.sh)
mkdir -p "$DEMO"

say "A private bridge for the demo hosts: $BRIDGE ($NET.1/24)."
ip link add "$BRIDGE" type bridge
ip addr add "$NET.1/24" dev "$BRIDGE"
ip link set "$BRIDGE" up

export DROVER_DATA_DIR="$DEMO/coordinator"
step "drover serve --listen $NET.1:8443 --data-dir $DROVER_DATA_DIR &"
setsid drover serve --listen "$NET.1:8443" --data-dir "$DROVER_DATA_DIR" </dev/null >"$DEMO/coordinator.log" 2>&1 &
echo $! >"$DEMO/coordinator.pid"
for _ in $(seq 1 100); do [ -s "$DROVER_DATA_DIR/address" ] && break; sleep 0.1; done
[ -s "$DROVER_DATA_DIR/address" ] || { cat "$DEMO/coordinator.log"; echo "the coordinator did not start" >&2; exit 1; }
say "The coordinator created its CA, signing keys, admin token and SQLite database in $DROVER_DATA_DIR."

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

n=0
for host in "${HOSTS[@]}"; do
  n=$((n + 1))
  setsid systemd-nspawn -q -D "$rootfs" --volatile=overlay --boot --register=no --keep-unit \
    --machine="$host" --network-bridge="$BRIDGE" </dev/null >"$DEMO/$host.console" 2>&1 &
  nspawn=$!
  echo "$nspawn" >"$DEMO/$host.pid"
  for _ in $(seq 1 300); do
    if ip=$(init_pid "$nspawn") && [[ "$(nsenter -t "$ip" -a systemctl is-system-running 2>/dev/null)" =~ ^(running|degraded)$ ]]; then
      host_pid[$host]=$ip
      break
    fi
    sleep 0.2
  done
  [ -n "${host_pid[$host]:-}" ] || { cat "$DEMO/$host.console"; echo "host $host did not boot" >&2; exit 1; }
  on "$host" ip addr add "$NET.1$n/24" dev host0
  on "$host" ip link set host0 up
  echo "${host_pid[$host]}" >"$DEMO/$host.init"
  say "Host $host is up ($NET.1$n, systemd $(on "$host" systemctl --version | head -1 | cut -d' ' -f2))."
  cp "$agent_deb" "/proc/${host_pid[$host]}/root/tmp/"
  step "dpkg -i $(basename "$agent_deb")    # on $host"
  on "$host" dpkg -i "/tmp/$(basename "$agent_deb")" | sed 's/^/    /'
  labels="env=demo,ring=$([ "$n" = 1 ] && echo canary || echo main)"
  step "drover token create --labels $labels"
  join=$(drover token create --labels "$labels" 2>/dev/null)
  echo "$join"
  step "${join%% --token*} --token ... --ca-sha256 ...    # on $host"
  # shellcheck disable=SC2086
  on "$host" $join
  # Quick heartbeats for the demo; pins arrive by long-poll either way.
  on "$host" sh -c 'printf "poll_interval = \"5s\"\n" >> /etc/drover/agent.toml'
  step "systemctl start drover-agent    # on $host"
  on "$host" systemctl start drover-agent
done
run drover hosts list

wait_version() { # version host... : until each host reports the version healthy, then ask the app
  local version=$1 host ip
  shift
  for host in "$@"; do
    ip="$NET.1${host##*-}"
    for _ in $(seq 1 300); do
      drover hosts show "$host" -o json 2>/dev/null | tr -d ' \n' |
        grep -q "\"current\":\"$version\",\"state\":\"healthy\"" && break
      sleep 0.2
    done
    printf '    curl http://%s:8080/  ->  %s\n' "$ip" "$(curl -s --max-time 1 "http://$ip:8080/" || echo 'no answer')"
  done
}

say "Two releases of the sample app: a tarball each, and the spec (drover.toml) saying how it runs."
run cat dist/sample-app.toml
run drover release create web 1.0.0 --spec dist/sample-app.toml --artifact dist/sample-app-1.0.0.tar.gz
run drover release create web 2.0.0 --spec dist/sample-app.toml --artifact dist/sample-app-2.0.0.tar.gz
run drover groups create canary --selector ring=canary
run drover groups create main --selector ring=main

say "Stage 0: v1 everywhere. Each agent gets its signed manifest by long-poll, downloads and
verifies the tarball, unpacks it under /var/lib/drover/apps/web/releases/, writes
drover-web.service, starts it through systemd and checks its health."
run drover pin web 1.0.0
wait_version 1.0.0 "${HOSTS[@]}"
run drover status

say "Stage 1: v2 on the canary group only."
run drover pin web 2.0.0 --group canary
wait_version 2.0.0 drover-demo-1
run drover status

say "Stage 2: the canary is healthy; v2 for the fleet (the canary's group pin is no longer needed)."
run drover pin web 2.0.0
run drover unpin web --group canary
wait_version 2.0.0 "${HOSTS[@]}"
run drover status

say "A bad release: v3 answers /healthz with 500. On the canary it fails its health check
within the grace period, and the host rolls itself back to v2 and reports why."
sed 's/^\[service\]$/[service]\nenvironment = { FAIL = "health" }/' dist/sample-app.toml >"$DEMO/sample-app-bad.toml"
run drover release create web 3.0.0 --spec "$DEMO/sample-app-bad.toml" --artifact dist/sample-app-2.0.0.tar.gz
run drover pin web 3.0.0 --group canary
for _ in $(seq 1 300); do
  drover hosts show drover-demo-1 -o json 2>/dev/null | grep -q '"rolled_back"' && break
  sleep 0.2
done
run drover hosts show drover-demo-1
wait_version 2.0.0 drover-demo-1
run drover unpin web --group canary

cat <<EOF

The fleet is still running. Explore it:

  export DROVER_DATA_DIR=$DROVER_DATA_DIR PATH=$repo/target/release:\$PATH
  drover status; drover hosts list; drover hosts show drover-demo-2
  drover pin web 1.0.0 --host drover-demo-3          # and watch: curl http://$NET.13:8080/
  drover hold --group main                            # the kill switch
  nsenter -t \$(cat $DEMO/drover-demo-1.init) -a drover-agent status
  nsenter -t \$(cat $DEMO/drover-demo-1.init) -a journalctl -u drover-agent -u drover-web

Remove everything it made (hosts, coordinator, bridge, $DEMO):

  bash scripts/demo.sh teardown
EOF
