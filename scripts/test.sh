#!/usr/bin/env bash
# Runs every test against a real nats-server (installed into .venv on first use), a real
# Prometheus and its promtool (Debian's package, installed on first use), openssl (likewise) and,
# for the live tier, a real NetBox 4.7
# with netbox-branching (scripts/netbox.sh: built on first use, stopped again at the end).
# NETBOX_LIVE=skip runs the rest where NetBox cannot run (no Python >= 3.12); it is said, never
# silent. With the live tier and no arguments, a short soak follows (scripts/soak.sh, the debug
# build the tests built: SOAK_MINUTES, default 3; SOAK_SEED, default 1, replays a failing one).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
NATS_SERVER=$(deploy/local/ensure-nats.sh)
# The TLS tests make their certificates with openssl.
command -v openssl >/dev/null || deploy/local/apt-install.sh openssl
PROMETHEUS=$(deploy/local/ensure-prometheus.sh)
export NATS_SERVER PROMETHEUS
echo "using $("$NATS_SERVER" --version), $("$PROMETHEUS" --version 2>&1 | head -1)"
if [ "${NETBOX_LIVE:-}" = skip ]; then
  echo "live tier skipped: NETBOX_LIVE=skip"
else
  status=0
  NETBOX_LIVE_SETTINGS=$(scripts/netbox.sh up) || status=$?
  if [ "$status" -ne 0 ]; then
    [ "$status" -ne 3 ] || echo "this machine cannot run NetBox; NETBOX_LIVE=skip $0 runs the rest" >&2
    exit 1
  fi
  export NETBOX_LIVE_SETTINGS
  trap 'scripts/netbox.sh down' EXIT
  echo "using NetBox at $(grep NETBOX_URL= "$NETBOX_LIVE_SETTINGS" | cut -d= -f2)"
fi
cargo test --locked "$@"
if [ "${NETBOX_LIVE:-}" != skip ] && [ $# -eq 0 ]; then
  scripts/soak.sh --minutes "${SOAK_MINUTES:-3}" --seed "${SOAK_SEED:-1}" --debug --out target/soak/ci
fi
