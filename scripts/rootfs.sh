#!/usr/bin/env bash
# rootfs.sh - builds the Debian bookworm root filesystem that drover's real-systemd test
# hosts boot from (systemd-nspawn --ephemeral, see SPEC.md §7), once, and caches it.
#
# Prints the rootfs path on stdout; everything else goes to stderr. The cache entry is
# keyed by the package list, the suite and this script's version, so changing any of them
# builds a new rootfs next to the old one instead of mutating a tree a running test boots.
# The tree is built under NAME.tmp and renamed only when complete, under a flock, so a
# crash or two concurrent callers never leave or see a half-built rootfs.
#
# Environment: DROVER_ROOTFS_CACHE (default /var/cache/drover-tests),
#              DROVER_DEBIAN_MIRROR (default: debootstrap's own default mirror).
# Needs root, debootstrap and flock; the first run takes a few minutes, later runs are instant.
set -euo pipefail

# Bump when the customisation below changes, so old caches are not reused.
SCRIPT_VERSION=2
SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,iproute2,ca-certificates,curl,procps
CACHE="${DROVER_ROOTFS_CACHE:-/var/cache/drover-tests}"

log() { printf '[rootfs.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

key=$(printf '%s\n%s\n%s\n' "$SUITE" "$PACKAGES" "$SCRIPT_VERSION" | sha256sum | cut -c1-12)
final="$CACHE/rootfs-$key"
marker=".drover-rootfs-complete"

# Fast path: a finished rootfs is never modified after its rename, so no lock is needed.
if [[ -f "$final/$marker" ]]; then
    echo "$final"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap and systemd-nspawn need it)"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
command -v flock >/dev/null || die "flock is missing: apt-get install util-linux"

mkdir -p "$CACHE"
exec 9>"$CACHE/rootfs-$key.lock"
log "waiting for the build lock $CACHE/rootfs-$key.lock"
flock -w 1800 9 || die "another rootfs build held $CACHE/rootfs-$key.lock for 30 minutes"

# Someone else may have finished the build while we waited.
if [[ -f "$final/$marker" ]]; then
    echo "$final"
    exit 0
fi

tmp="$final.tmp"
build_log="$CACHE/rootfs-$key.debootstrap.log"

# Unmounts whatever a crashed debootstrap left mounted under the tree (proc, sys, dev),
# deepest first, so that removing it can never reach into the machine's /proc or /dev.
unmount_under() {
    local dir="$1" mountpoint
    [[ -d "$dir" ]] || return 0
    awk -v prefix="$(realpath "$dir")/" 'index($2, prefix) == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r mountpoint; do
            umount "$mountpoint" 2>/dev/null || umount -l "$mountpoint"
        done
}

remove_tree() {
    local dir="$1"
    [[ -e "$dir" ]] || return 0
    unmount_under "$dir"
    rm -rf --one-file-system "$dir"
}

# A partial tree from a crashed run, or a final name without its marker (cannot happen
# through this script, but must not be booted), is discarded.
remove_tree "$tmp"
remove_tree "$final"
trap 'unmount_under "$tmp"' EXIT

mirror=()
[[ -n "${DROVER_DEBIAN_MIRROR:-}" ]] && mirror=("$DROVER_DEBIAN_MIRROR")
log "debootstrap $SUITE ($PACKAGES) into $tmp; log: $build_log"
started=$(date +%s)
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "${mirror[@]}" >"$build_log" 2>&1; then
    tail -n 30 "$build_log" >&2
    die "debootstrap failed, see $build_log"
fi
log "debootstrap took $(($(date +%s) - started)) s"

# Customisation for booting as an ephemeral container (no network config, no real
# hardware, no unattended maintenance). Masking links are written directly: running
# systemctl in a chroot is unreliable and nothing here must depend on the build machine.
mask() {
    local unit
    for unit in "$@"; do
        ln -sfn /dev/null "$tmp/etc/systemd/system/$unit"
    done
}
# Periodic jobs would run apt or scan filesystems in the middle of a test.
mask apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service \
    e2scrub_all.timer e2scrub_all.service e2scrub_reap.service fstrim.timer fstrim.service \
    dpkg-db-backup.timer dpkg-db-backup.service systemd-tmpfiles-clean.timer
# Waits for a network the container shares with the machine and never configures.
mask systemd-networkd-wait-online.service

# An empty machine-id makes systemd (and nspawn --ephemeral) generate a fresh one per
# boot, so parallel hosts never share an identity.
: >"$tmp/etc/machine-id"
rm -f "$tmp/var/lib/dbus/machine-id"
# Without /etc/hostname (debootstrap copies the build machine's) each host keeps the
# name nspawn gives it, its unique machine name.
rm -f "$tmp/etc/hostname"
# Hosts share the machine's network; apt inside them is not expected but should resolve.
cp /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
# Downloaded .debs are dead weight in every ephemeral copy.
rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*_Packages

# Where the agent keeps its configuration and state.
install -d -m 0755 "$tmp/etc/drover" "$tmp/var/lib/drover"

printf 'suite=%s\npackages=%s\nscript_version=%s\nbuilt=%s\n' "$SUITE" "$PACKAGES" "$SCRIPT_VERSION" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$tmp/$marker"
unmount_under "$tmp"
mv -T "$tmp" "$final"
trap - EXIT
log "built $final ($(du -sm "$final" | cut -f1) MiB) in $(($(date +%s) - started)) s"
echo "$final"
