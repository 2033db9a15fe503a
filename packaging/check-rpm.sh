#!/usr/bin/env bash
# check-rpm.sh - checks the .rpm packages in dist/ without an rpm-based host: their
# metadata, file lists and scriptlets (rpm -qip / -qlvp / --scripts), then installs both,
# scriptlets included, with `rpm --root SCRATCH -i --nodeps` into a scratch copy of the
# test hosts' Debian rootfs (an empty root has no /bin/sh for the scriptlets) and checks
# what landed: binaries, units, %config files, the coordinator's system user, the enabled
# units. The scratch root is deleted afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "check-rpm.sh: $*" >&2; exit 1; }

agent=$(ls dist/drover-agent-*.x86_64.rpm) || fail "no agent rpm in dist/; run packaging/build.sh"
coordinator=$(ls dist/drover-coordinator-*.x86_64.rpm) || fail "no coordinator rpm in dist/"
for rpm in "$agent" "$coordinator"; do
  echo "== $rpm"
  rpm -qip "$rpm" | grep -E '^(Name|Version|Release|Architecture|License|Summary) '
  rpm -qlvp "$rpm"
  rpm -qp --scripts "$rpm" | grep -E 'scriptlet' || true
done

rootfs=$(bash scripts/rootfs.sh)
scratch=$(mktemp -d /var/tmp/drover-rpm-root.XXXXXX)
trap 'rm -rf --one-file-system "$scratch"' EXIT
cp -a "$rootfs/." "$scratch/"
rpm --root "$scratch" -i --nodeps "$agent" "$coordinator"

# -L too: an enabled unit is a symlink to an absolute path inside the scratch root.
check() { [ -e "$scratch$1" ] || [ -L "$scratch$1" ] || fail "$1 missing after rpm -i"; }
mode() { [ "$(stat -c %a "$scratch$1")" = "$2" ] || fail "$1 has mode $(stat -c %a "$scratch$1"), expected $2"; }
check /usr/bin/drover-agent; mode /usr/bin/drover-agent 755
check /usr/bin/drover; mode /usr/bin/drover 755
check /usr/lib/systemd/system/drover-agent.service
check /usr/lib/systemd/system/drover-coordinator.service
check /etc/drover/agent.toml; mode /etc/drover/agent.toml 644
check /var/lib/drover; mode /var/lib/drover 711
grep -q '^drover-coordinator:' "$scratch/etc/passwd" || fail "the coordinator's system user was not created"
check /etc/systemd/system/multi-user.target.wants/drover-agent.service
check /etc/systemd/system/multi-user.target.wants/drover-coordinator.service
rpm --root "$scratch" -qc drover-agent drover-coordinator
echo "rpm --root $scratch -i --nodeps: both packages installed, scriptlets ran, files and units in place"
