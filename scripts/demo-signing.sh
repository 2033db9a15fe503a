#!/usr/bin/env bash
# The signing demo: the promise everything in drover rests on. A host acts only on a
# manifest that a threshold of trusted keys signed, recently, for that host: keys, a signed
# manifest verified as an agent would, hostile variants refused. (The fleet demo is
# scripts/demo.sh.) No root needed beyond installing the toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/prereqs.sh
cargo build --workspace --bins --release --locked -q
export PATH="$PWD/target/release:$PATH"

work=$(mktemp -d /tmp/drover-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { step "$*"; "$@"; }
refused() { step "$*"; if "$@" >/dev/null; then echo "UNEXPECTED: accepted" >&2; exit 1; else echo "(exit $?)"; fi; }

run drover keys init --dir keys --root-keys 3 --root-threshold 2

now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
tomorrow=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
manifest() { # host serial
  cat <<JSON
{"schema":1,"host":"$1","serial":$2,"issued_at":"$now","expires_at":"$tomorrow","hold":false,
 "apps":{"web":{"version":"1.4.2",
   "artifact":{"kind":"tarball","url":"https://coordinator.example:8443/v1/artifacts/sha256:$(printf web-1.4.2 | sha256sum | cut -c1-64)",
               "digest":"sha256:$(printf web-1.4.2 | sha256sum | cut -c1-64)","size":1048576},
   "spec":{"service":{"command":["bin/web","--port","8080"]},
           "health":{"checks":[{"kind":"http","url":"http://127.0.0.1:8080/healthz"}]}}}}}
JSON
}
manifest web-01 7 > manifest.json

step "drover keys sign --key keys/manifest.key --type manifest < manifest.json > manifest.dsse"
drover keys sign --key keys/manifest.key --type manifest < manifest.json > manifest.dsse
run drover-agent verify --trust keys/trust.json --host web-01 --last-serial 6 manifest.dsse

echo; echo "Now the hostile cases; each is refused with its reason and exit code 1:"
refused drover-agent verify --trust keys/trust.json --host web-01 --last-serial 7 manifest.dsse
refused drover-agent verify --trust keys/trust.json --host web-02 manifest.dsse
drover keys sign --key keys/root-1.key --type manifest < manifest.json > by-root.dsse
refused drover-agent verify --trust keys/trust.json --host web-01 by-root.dsse
# Swap in another payload (serial 9) under the original signature.
forged=$(manifest web-01 9 | base64 -w0)
sed "s|\"payload\":\"[^\"]*\"|\"payload\":\"$forged\"|" manifest.dsse > tampered.dsse
refused drover-agent verify --trust keys/trust.json --host web-01 tampered.dsse
chmod 640 keys/manifest.key
step "chmod 640 keys/manifest.key; drover keys sign --key keys/manifest.key --type manifest < manifest.json"
drover keys sign --key keys/manifest.key --type manifest < manifest.json >/dev/null || echo "(exit $?)"
chmod 600 keys/manifest.key

echo; echo "Done. The fleet demo (real systemd hosts) is scripts/demo.sh."
