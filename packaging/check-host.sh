#!/usr/bin/env bash
# check-host.sh - the packages' lifecycle on a real systemd host: boots a throwaway
# Debian 12 host (systemd-nspawn, the rootfs of scripts/rootfs.sh, its own network
# namespace so port 8443 is its own) and, printing every command and its output:
# installs both debs, checks the units (systemd-analyze verify/security), the
# coordinator answering, the agent enabled but not started before the join, join +
# start, a malformed agent.toml failing without a restart loop, a sample-app deploy,
# the upgrade path (agent restarted, app's MainPID unchanged), remove and purge.
#
# Usage (root): bash packaging/check-host.sh   (after packaging/build.sh)
# Exits non-zero on the first failed expectation; the host is powered off on exit.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=$(awk '/^\[/{s=$0} s=="[workspace.package]" && $1=="version"{gsub(/"/,"",$3);print $3;exit}' "$repo/Cargo.toml")
dist="$repo/dist"
for file in "drover-agent_${version}_amd64.deb" "drover-coordinator_${version}_amd64.deb" \
    sample-app-1.0.0.tar.gz sample-app.toml; do
    [[ -f $dist/$file ]] || { echo "missing $dist/$file: run packaging/build.sh" >&2; exit 1; }
done

rootfs=$(bash "$repo/scripts/rootfs.sh")
console=$(mktemp /tmp/drover-check-host.XXXXXX)
systemd-nspawn -q -D "$rootfs" --volatile=overlay --boot --register=no --keep-unit \
    --private-network --machine="pkgcheck-$$" --setenv=SYSTEMD_COLORS=0 </dev/null >"$console" 2>&1 &
nspawn_pid=$!
power_off() {
    kill -TERM "$nspawn_pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do kill -0 "$nspawn_pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -KILL "$nspawn_pid" 2>/dev/null || true
}
trap power_off EXIT

# The host's systemd: a child or grandchild of nspawn named systemd whose own PID is 1.
find_init() {
    local child pid
    for child in $(cat /proc/"$nspawn_pid"/task/*/children 2>/dev/null); do
        for pid in "$child" $(cat /proc/"$child"/task/*/children 2>/dev/null); do
            if [[ $(cat /proc/"$pid"/comm 2>/dev/null) == systemd ]] &&
                [[ $(awk '/^NSpid:/ { print $NF }' /proc/"$pid"/status 2>/dev/null) == 1 ]]; then
                echo "$pid"
                return 0
            fi
        done
    done
    return 1
}
init_pid=
for _ in $(seq 1 450); do
    init_pid=$(find_init) && case $(nsenter -t "$init_pid" -a systemctl is-system-running 2>/dev/null) in
        running | degraded) break ;;
    esac
    sleep 0.2
done
[[ -n $init_pid ]] || { cat "$console"; echo "host did not boot" >&2; exit 1; }

inside() { nsenter -t "$init_pid" -a -- "$@"; }
# run CMD: prints "# CMD" and its output; fails the script when CMD fails.
run() { printf '\n# %s\n' "$*"; inside sh -c "$*" 2>&1; }
# expect WHAT ACTUAL WANTED
expect() {
    if [[ $2 == "$3" ]]; then printf '  ok: %s = %s\n' "$1" "$2"; else printf '  FAILED: %s = %s, wanted %s\n' "$1" "$2" "$3"; exit 1; fi
}
q() { inside sh -c "$*" 2>/dev/null || true; }
wait_for() { for _ in $(seq 1 150); do [[ $(q "$1") == "$2" ]] && return 0; sleep 0.2; done; }

mkdir -p "/proc/$init_pid/root/root/pkgs"
cp "$dist"/*.deb "$dist"/sample-app-*.tar.gz "$dist/sample-app.toml" "/proc/$init_pid/root/root/pkgs/"
agent_deb=/root/pkgs/drover-agent_${version}_amd64.deb
coordinator_deb=/root/pkgs/drover-coordinator_${version}_amd64.deb

echo "== host pkgcheck-$$ booted (nspawn PID $nspawn_pid, init PID $init_pid)"

echo "== fresh install"
run dpkg -i "$coordinator_deb" "$agent_deb"
run systemd-analyze verify /lib/systemd/system/drover-coordinator.service /lib/systemd/system/drover-agent.service
run "systemd-analyze security drover-coordinator.service | tail -n 1"
run "systemd-analyze security drover-agent.service | tail -n 1"
run "id drover-coordinator; stat -c '%A %U %n' /var/lib/drover-coordinator /var/lib/drover /etc/drover/agent.toml"
wait_for "curl -sk https://127.0.0.1:8443/healthz >/dev/null && echo up" up
run systemctl is-active drover-coordinator.service
expect coordinator "$(q systemctl is-active drover-coordinator.service)" active
run curl -sSk https://127.0.0.1:8443/healthz
run "systemctl is-enabled drover-agent.service; systemctl is-active drover-agent.service || true"
expect "agent enabled" "$(q systemctl is-enabled drover-agent.service)" enabled
expect "agent before join" "$(q systemctl is-active drover-agent.service)" inactive
run "systemctl start drover-agent.service; systemctl status drover-agent.service --no-pager | sed -n '1,4p'"
expect "agent start before join" "$(q systemctl is-active drover-agent.service)" inactive

echo "== join and start"
join=$(q "drover token create" | grep -o 'drover-agent join .*' | head -n 1)
[[ -n $join ]] || { echo "no join line from drover token create" >&2; exit 1; }
run "$join"
run "systemctl start drover-agent.service && systemctl is-active drover-agent.service"
expect agent "$(q systemctl is-active drover-agent.service)" active
run "head -n 4 /etc/drover/agent.toml"

echo "== malformed /etc/drover/agent.toml"
run "cp /etc/drover/agent.toml /root/agent.toml.good && echo 'poll_interval = [broken' >> /etc/drover/agent.toml"
run "systemctl restart drover-agent.service || true"
sleep 15
run "systemctl status drover-agent.service --no-pager -n 6 || true"
run "systemctl show drover-agent.service -p ActiveState -p Result -p NRestarts -p ExecMainStatus"
expect "agent with a bad config" "$(q systemctl is-active drover-agent.service)" failed
expect "restarts" "$(q systemctl show -P NRestarts drover-agent.service)" 0
run "journalctl -u drover-agent.service --no-pager -o cat | grep -m 2 'invalid configuration' -A1"
run "cp /root/agent.toml.good /etc/drover/agent.toml && systemctl reset-failed drover-agent.service && systemctl start drover-agent.service && systemctl is-active drover-agent.service"

echo "== deploy the sample app"
run "cd /root/pkgs && drover release create sample-app 1.0.0 --spec sample-app.toml --artifact sample-app-1.0.0.tar.gz >/dev/null && drover pin sample-app 1.0.0"
wait_for "curl -s http://127.0.0.1:8080/" "drover-sample-app 1.0.0"
run curl -sS http://127.0.0.1:8080/
run "systemctl is-active drover-sample-app.service"

echo "== upgrade (dpkg -i of the same debs again)"
app_pid=$(q systemctl show -P MainPID drover-sample-app.service)
agent_pid=$(q systemctl show -P MainPID drover-agent.service)
coordinator_pid=$(q systemctl show -P MainPID drover-coordinator.service)
run dpkg -i "$coordinator_deb" "$agent_deb"
wait_for "systemctl is-active drover-agent.service" active
run "systemctl show -P MainPID drover-sample-app.service drover-agent.service drover-coordinator.service"
expect "app MainPID" "$(q systemctl show -P MainPID drover-sample-app.service)" "$app_pid"
new_agent_pid=$(q systemctl show -P MainPID drover-agent.service)
[[ $new_agent_pid != "$agent_pid" && $new_agent_pid != 0 ]] && echo "  ok: agent restarted ($agent_pid -> $new_agent_pid)" || { echo "  FAILED: agent not restarted"; exit 1; }
new_coordinator_pid=$(q systemctl show -P MainPID drover-coordinator.service)
[[ $new_coordinator_pid != "$coordinator_pid" ]] && echo "  ok: coordinator restarted ($coordinator_pid -> $new_coordinator_pid)" || { echo "  FAILED: coordinator not restarted"; exit 1; }
run "grep -c '^coordinator = ' /etc/drover/agent.toml"
expect "joined config kept across the upgrade" "$(q "grep -c '^coordinator = ' /etc/drover/agent.toml")" 1

echo "== remove the agent"
run dpkg -r drover-agent
run "systemctl is-active drover-agent.service || true; systemctl is-enabled drover-agent.service || true"
expect "agent after remove" "$(q systemctl is-active drover-agent.service)" inactive
expect "app after remove" "$(q systemctl is-active drover-sample-app.service)" active
run "ls /var/lib/drover /etc/drover"

echo "== purge the agent"
run dpkg -P drover-agent
run "ls -d /var/lib/drover /etc/drover /etc/systemd/system/drover-sample-app.service 2>&1 || true"
expect "/var/lib/drover after purge" "$(q 'test -e /var/lib/drover && echo present || echo absent')" absent
expect "app unit after purge" "$(q 'test -e /etc/systemd/system/drover-sample-app.service && echo present || echo absent')" absent

echo "== remove and purge the coordinator"
run dpkg -r drover-coordinator
expect "coordinator after remove" "$(q systemctl is-active drover-coordinator.service)" inactive
run "ls /var/lib/drover-coordinator | head -n 3"
run dpkg -P drover-coordinator
expect "/var/lib/drover-coordinator after purge" "$(q 'test -e /var/lib/drover-coordinator && echo present || echo absent')" absent
run "getent passwd drover-coordinator"
echo
echo "== all lifecycle checks passed"
