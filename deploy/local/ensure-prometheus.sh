#!/usr/bin/env bash
# Prints the path of a prometheus binary, installing Debian's package when there is none. The
# service-discovery tests run a real Prometheus against the relay's http_sd endpoint.
set -euo pipefail

if [ -n "${PROMETHEUS:-}" ] && [ -x "$PROMETHEUS" ]; then
  echo "$PROMETHEUS"; exit 0
fi
command -v prometheus >/dev/null || "$(dirname "$0")/apt-install.sh" prometheus
command -v prometheus
