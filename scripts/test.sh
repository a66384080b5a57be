#!/usr/bin/env bash
# Runs every test against a real nats-server (installed into .venv on first use).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
NATS_SERVER=$(deploy/local/ensure-nats.sh)
export NATS_SERVER
echo "using $("$NATS_SERVER" --version)"
cargo test --locked "$@"
