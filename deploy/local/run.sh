#!/usr/bin/env bash
# Quickstart: starts a local nats-server with JetStream (unless one already listens on
# 127.0.0.1:4222), then the relay with its built-in defaults on 127.0.0.1:8090.
# The webhook secret comes from NETBOX_RELAY_WEBHOOK__SECRETS, else from data/webhook-secret
# (created on first run); configure the same secret in NetBox's webhook.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
mkdir -p data

nats_pid=""
cleanup() { [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

if (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
  echo "using the NATS already listening on 127.0.0.1:4222"
else
  nats=$(deploy/local/ensure-nats.sh)
  "$nats" -c deploy/local/nats.conf >data/nats.log 2>&1 &
  nats_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 0.1; done
  echo "started $("$nats" --version) with JetStream (log: data/nats.log)"
fi

if [ -z "${NETBOX_RELAY_WEBHOOK__SECRETS:-}" ] && [ -z "${NETBOX_RELAY_CONFIG:-}" ]; then
  if [ ! -s data/webhook-secret ]; then
    (umask 077; python3 -c 'import secrets; print(secrets.token_hex(24))' >data/webhook-secret)
  fi
  export NETBOX_RELAY_WEBHOOK__SECRET_FILE="$root/data/webhook-secret"
  echo "webhook secret: data/webhook-secret (put the same secret in NetBox's webhook)"
fi

cargo build --release --locked --quiet
target/release/netbox-relay serve "$@"
