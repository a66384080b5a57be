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
relay_pid=""
# The relay stops first (it finishes in-flight webhooks and drains into a live NATS), then NATS.
cleanup() {
  if [ -n "$relay_pid" ]; then kill -TERM "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true; fi
  if [ -n "$nats_pid" ]; then
    kill "$nats_pid" 2>/dev/null || true
    wait "$nats_pid" 2>/dev/null || true
    echo "stopped the local nats-server this script started (its data stays in data/nats)"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
  echo "using the NATS already listening on 127.0.0.1:4222"
else
  nats=$(deploy/local/ensure-nats.sh)
  # In a session of its own: a Ctrl-C on the terminal reaches the relay (which then drains into
  # a NATS still running) but not NATS, which this script stops after the relay.
  setsid "$nats" -c deploy/local/nats.conf >data/nats.log 2>&1 &
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

# Cargo builds where CARGO_TARGET_DIR says, if it is set.
relay="${CARGO_TARGET_DIR:-$root/target}/release/netbox-relay"
if [ ! -x "$relay" ]; then
  echo "building netbox-relay (release; the first build takes about 5-10 minutes on 2 cores)"
fi
cargo build --release --locked
echo "the relay listens on 127.0.0.1:8090 by default: only this host can reach it. For a NetBox on"
echo "another host pass --listen 0.0.0.0:8090 with server.tls_cert and server.tls_key (see README)."
echo "other commands: $relay tail | check | spool | send-test-webhook"
"$relay" serve "$@" &
relay_pid=$!
wait "$relay_pid"
