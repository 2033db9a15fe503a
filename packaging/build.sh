#!/usr/bin/env bash
# build.sh - builds drover's packages and demo artifacts into dist/:
#   drover-agent_<ver>_amd64.deb        drover-agent-<ver>-1.x86_64.rpm
#   drover-coordinator_<ver>_amd64.deb  drover-coordinator-<ver>-1.x86_64.rpm
#   sample-app-1.0.0.tar.gz  sample-app-2.0.0.tar.gz  sample-app.toml
#
# Tools: Debian's own dpkg-deb (hand-written control, conffiles and maintainer scripts)
# and rpmbuild (Debian package `rpm`) from a spec over the prebuilt binaries, rather
# than cargo-deb and cargo-generate-rpm. Both take the same release builds the tests
# use, so CI compiles nothing extra (cargo install of the two tools takes minutes on
# every cold runner, and pinning them is one more thing to keep current); the files we
# ship are all visible here (control, scripts, lintian overrides) instead of generated
# from Cargo metadata, which is what lintian and the lifecycle checks need to be
# reviewed against; and rpmbuild gives real %config(noreplace), %pre/%post/%preun/
# %postun scriptlets and automatic library dependencies.
#
# Idempotent: every run rebuilds dist/ from scratch in target/packaging. Installs its
# Debian packages (dpkg-dev, rpm) itself. Needs: a Rust toolchain (scripts/prereqs.sh
# installs Debian's when missing). The version comes from [workspace.package] in the
# workspace Cargo.toml.
#
# Environment: DROVER_SKIP_CARGO=1 packages the existing target/agent and target/release
# binaries.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=../scripts/prereqs.sh
source scripts/prereqs.sh

log() { printf '[build.sh] %s\n' "$*" >&2; }

command -v dpkg-shlibdeps >/dev/null && command -v rpmbuild >/dev/null || apt_install dpkg-dev rpm

version=$(awk '
    /^\[/ { section = $0 }
    section == "[workspace.package]" && $1 == "version" { gsub(/"/, "", $3); print $3; exit }
' Cargo.toml)
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || { log "no version in [workspace.package] of Cargo.toml"; exit 1; }
# Reproducible timestamps: the last commit's.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

if [[ -z ${DROVER_SKIP_CARGO:-} ]]; then
    log "cargo build --release (drover, drover-sample-app) and --profile agent (drover-agent)"
    # --bin selects across the workspace (with -p, --bin would narrow every package to that one binary).
    cargo build --release --locked --bin drover --bin drover-sample-app
    # The agent runs on every host: Cargo.toml's `agent` profile optimises it for size.
    cargo build --profile agent --locked --bin drover-agent
fi
work=target/packaging
dist=dist
rm -rf "$work" "$dist"
mkdir -p "$work/bin" "$dist"

# The release profile already strips symbols; the compiler's .comment section goes too.
release=$work/bin
for built in target/agent/drover-agent target/release/drover target/release/drover-sample-app; do
    [[ -x $built ]] || { log "missing $built"; exit 1; }
    objcopy --remove-section=.comment "$built" "$release/${built##*/}"
done

# --- staging trees: one per package and format ---------------------------------------

# stage_agent DIR UNITDIR
stage_agent() {
    local root=$1 unitdir=$2
    install -D -m 0755 "$release/drover-agent" "$root/usr/bin/drover-agent"
    install -D -m 0644 systemd/drover-agent.service "$root$unitdir/drover-agent.service"
    install -D -m 0644 packaging/files/agent.toml "$root/etc/drover/agent.toml"
    install -d -m 0711 "$root/var/lib/drover"
    install -D -m 0644 packaging/files/README.agent "$root/usr/share/doc/drover-agent/README"
    install -D -m 0644 packaging/files/copyright "$root/usr/share/doc/drover-agent/copyright"
}

# stage_coordinator DIR UNITDIR ENVFILE
stage_coordinator() {
    local root=$1 unitdir=$2 envfile=$3
    install -D -m 0755 "$release/drover" "$root/usr/bin/drover"
    install -D -m 0644 systemd/drover-coordinator.service "$root$unitdir/drover-coordinator.service"
    install -D -m 0644 packaging/files/drover-coordinator.sysusers "$root/usr/lib/sysusers.d/drover-coordinator.conf"
    install -D -m 0644 packaging/files/drover-coordinator.default "$root$envfile"
    install -D -m 0644 packaging/files/README.coordinator "$root/usr/share/doc/drover-coordinator/README"
    install -D -m 0644 packaging/files/copyright "$root/usr/share/doc/drover-coordinator/copyright"
}

# --- deb -------------------------------------------------------------------------------

# The shared-library dependencies of a binary (libc6, libgcc-s1), as dpkg-shlibdeps
# computes them; it wants a debian/control, so it runs in a scratch source tree.
shlibs_of() {
    local binary=$1 scratch="$work/shlibdeps"
    mkdir -p "$scratch/debian"
    printf 'Source: drover\n\nPackage: drover\nArchitecture: any\n' >"$scratch/debian/control"
    (cd "$scratch" && dpkg-shlibdeps -O "$repo/$binary" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
}

# build_deb PACKAGE ROOT DEPENDS SUMMARY DESCRIPTION
build_deb() {
    local package=$1 root=$2 depends=$3 summary=$4 description=$5
    local doc="$root/usr/share/doc/$package"
    # Debian wants the README as README.Debian and a compressed changelog.
    mv "$doc/README" "$doc/README.Debian"
    printf '%s (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- drover developers <drover@example.com>  %s\n' \
        "$package" "$version" "$version" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")" |
        gzip -9n >"$doc/changelog.gz"
    install -D -m 0644 "packaging/deb/$package/lintian-overrides" "$root/usr/share/lintian/overrides/$package"
    install -d -m 0755 "$root/DEBIAN"
    for script in postinst prerm postrm; do
        install -m 0755 "packaging/deb/$package/$script" "$root/DEBIAN/$script"
    done
    (cd "$root" && find etc -type f -printf '/%p\n' | sort) >"$root/DEBIAN/conffiles"
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
    chmod 0644 "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
    # Timestamps from the commit, so two builds of one commit give the same files.
    find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    local size
    size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
    cat >"$root/DEBIAN/control" <<EOF
Package: $package
Version: $version
Architecture: amd64
Maintainer: drover developers <drover@example.com>
Installed-Size: $size
Depends: $depends
Section: admin
Priority: optional
Homepage: https://example.com/drover
Description: $summary
$(printf '%s\n' "$description" | fold -s -w 72 | sed 's/ *$//; s/^/ /')
EOF
    dpkg-deb --root-owner-group -Zxz --build "$root" "$dist/${package}_${version}_amd64.deb" >/dev/null
    log "built $dist/${package}_${version}_amd64.deb"
}

stage_agent "$work/deb/drover-agent" /lib/systemd/system
build_deb drover-agent "$work/deb/drover-agent" "$(shlibs_of "$release/drover-agent")" \
    "drover host agent: verifies, installs and runs signed desired state" \
    "The agent polls this host's signed desired-state manifest from a drover coordinator, verifies it, fetches and verifies the release artifacts, installs them beside the running release, switches atomically, restarts the apps' systemd units, checks their health and rolls back on its own. It is enabled on installation and starts once the host has joined a coordinator (drover-agent join)."

stage_coordinator "$work/deb/drover-coordinator" /lib/systemd/system /etc/default/drover-coordinator
build_deb drover-coordinator "$work/deb/drover-coordinator" "$(shlibs_of "$release/drover")" \
    "drover coordinator: desired state, signed manifests, rollouts" \
    "The coordinator (drover serve) decides what every host should run, publishes it as signed per-host manifests, runs staged rollouts and stores artifacts; the same binary, drover, is the operator CLI. It runs as the system user drover-coordinator in a tight systemd sandbox, with its data in /var/lib/drover-coordinator."

# --- rpm -------------------------------------------------------------------------------

stage_agent "$work/rpm/drover-agent" /usr/lib/systemd/system
stage_coordinator "$work/rpm/drover-coordinator" /usr/lib/systemd/system /etc/sysconfig/drover-coordinator
for package in drover-agent drover-coordinator; do
    rpmbuild -bb --quiet \
        --define "_topdir $repo/$work/rpmbuild" \
        --define "_rpmdir $repo/$work/rpms" \
        --define "_build_id_links none" \
        --define "drover_version $version" \
        --define "staging $repo/$work/rpm/$package" \
        --define "use_source_date_epoch_as_buildtime 1" \
        --define "clamp_mtime_to_source_date_epoch 1" \
        --target x86_64 \
        "packaging/rpm/$package.spec"
    cp "$work/rpms/x86_64/$package-$version-1.x86_64.rpm" "$dist/"
    log "built $dist/$package-$version-1.x86_64.rpm"
done

# --- the sample app: two release tarballs and its spec ---------------------------------

for app_version in 1.0.0 2.0.0; do
    tree="$work/sample-app-$app_version"
    install -D -m 0755 "$release/drover-sample-app" "$tree/bin/drover-sample-app"
    printf '%s\n' "$app_version" >"$tree/VERSION"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
        -C "$tree" -cf - bin VERSION | gzip -9n >"$dist/sample-app-$app_version.tar.gz"
    log "built $dist/sample-app-$app_version.tar.gz"
done
install -m 0644 packaging/sample-app.toml "$dist/sample-app.toml"

(cd "$dist" && sha256sum -- * >SHA256SUMS)
log "done: $(cd "$dist" && echo *)"
