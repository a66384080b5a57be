#!/usr/bin/env bash
# Runs every test against a real nats-server (installed into .venv on first use) and, for service
# discovery, a real Prometheus (Debian's package, installed on first use).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
NATS_SERVER=$(deploy/local/ensure-nats.sh)
PROMETHEUS=$(deploy/local/ensure-prometheus.sh)
export NATS_SERVER PROMETHEUS
echo "using $("$NATS_SERVER" --version), $("$PROMETHEUS" --version 2>&1 | head -1)"
cargo test --locked "$@"
