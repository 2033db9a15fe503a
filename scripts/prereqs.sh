# Sourced by test.sh and demo.sh: makes sure a C compiler and a Rust toolchain (with
# rustfmt and clippy) are there, installing Debian 12's packages when they are not.
# Debian 12 ships Rust 1.96 as the *-web packages (built for Firefox, usable by anyone).

have_cargo() {
  command -v cargo >/dev/null 2>&1 || { [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"; }
  command -v cargo >/dev/null 2>&1
}

apt_install() {
  echo "==> installing Debian packages: $*" >&2
  if [ -z "${DROVER_APT_UPDATED:-}" ]; then
    apt-get update -qq
    export DROVER_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v cc >/dev/null 2>&1 || apt_install build-essential
if ! have_cargo; then
  apt_install cargo-web rustc-web rust-web-clippy rustfmt-web
fi
if ! have_cargo; then
  echo "cargo not found and Debian's cargo-web could not be installed; install Rust 1.90+ and rerun" >&2
  exit 1
fi

# Real systemd hosts for the end-to-end suites (SPEC.md §7): systemd-nspawn and the
# debootstrap that builds their cached rootfs.
command -v systemd-nspawn >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 \
  || apt_install systemd-container debootstrap

# OCI images for the container suites: a real registry (Debian's docker-registry, with
# htpasswd from apache2-utils for basic auth), images built with umoci and pushed with
# skopeo.
missing_oci=()
command -v docker-registry >/dev/null 2>&1 || missing_oci+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || missing_oci+=(apache2-utils)
command -v umoci >/dev/null 2>&1 || missing_oci+=(umoci)
command -v skopeo >/dev/null 2>&1 || missing_oci+=(skopeo)
if [ "${#missing_oci[@]}" -gt 0 ]; then apt_install "${missing_oci[@]}"; fi

# PostgreSQL for the store tests on both backends and the several-coordinators suite:
# the tests start clusters of their own (coordinator/src/testing.rs), never the
# package's own cluster.
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || apt_install postgresql

# The several-coordinators suites: iptables cuts one leader's database connection
# without a FIN (coordinator/src/server/store/cluster/tests.rs).
command -v iptables >/dev/null 2>&1 || apt_install iptables
