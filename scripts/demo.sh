#!/usr/bin/env bash
# The demo. Part 1 shows the promise everything in drover rests on: a host acts only on a
# manifest that a threshold of trusted keys signed, recently, for that host (keys, a signed
# manifest verified as an agent would, hostile variants refused). Part 2 runs a coordinator
# with its embedded defaults, enrolls three hosts with the real agent, and creates a
# release, a group, a pin and a hold. (The fleet demo with real systemd hosts installing
# the app arrives with the agent's install loop and the packages.)
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

echo; echo "Part 2: a coordinator with its embedded defaults, three hosts enrolled by the real agent,"
echo "a release, pins and a hold. (Agents do not install yet: that is issue 4's install loop.)"
export DROVER_DATA_DIR="$work/coordinator"
step "drover serve --listen 127.0.0.1:0 --data-dir $DROVER_DATA_DIR &"
drover serve --listen 127.0.0.1:0 --data-dir "$DROVER_DATA_DIR" 2>"$work/serve.log" &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null; wait "$serve_pid" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do [ -s "$DROVER_DATA_DIR/address" ] && break; sleep 0.1; done
[ -s "$DROVER_DATA_DIR/address" ] || { cat "$work/serve.log"; echo "the coordinator did not start" >&2; exit 1; }
echo "(listening on $(cat "$DROVER_DATA_DIR/address"); CA, keys, admin token and SQLite created in $DROVER_DATA_DIR)"

for n in 1 2 3; do
  region=$([ "$n" = 3 ] && echo us || echo eu)
  step "drover token create --labels env=demo,region=$region"
  join=$(drover token create --labels "env=demo,region=$region" 2>/dev/null)
  echo "$join"
  step "${join%% --token*} --token ... --host-id demo-$n --config $work/demo-$n/agent.toml --state-dir $work/demo-$n/state"
  # shellcheck disable=SC2086
  ${join} --host-id "demo-$n" --config "$work/demo-$n/agent.toml" --state-dir "$work/demo-$n/state"
done
run drover hosts list

mkdir -p "$work/web/bin"
printf '#!/bin/sh\nexec python3 -m http.server 8080\n' > "$work/web/bin/web"; chmod +x "$work/web/bin/web"
tar -czf "$work/web-1.0.0.tar.gz" -C "$work/web" .
cat > "$work/drover.toml" <<'TOML'
[service]
command = ["bin/web"]

[health]
grace_period = "20s"
[[health.checks]]
kind = "http"
url = "http://127.0.0.1:8080/"
TOML
run drover release create web 1.0.0 --spec "$work/drover.toml" --artifact "$work/web-1.0.0.tar.gz"
run drover groups create eu --selector region=eu
run drover pin web 1.0.0 --group eu
run drover hold --host demo-2
run drover status
run drover hosts show demo-1
refused drover pin web 9.9.9

echo; echo "Done. Next: read ARCHITECTURE.md for how the pieces fit."
