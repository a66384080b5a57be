#!/usr/bin/env bash
# Prints the path of a prometheus binary, installing Debian's package when there is none. The
# service-discovery tests run a real Prometheus against the relay's http_sd endpoint.
set -euo pipefail

if [ -n "${PROMETHEUS:-}" ] && [ -x "$PROMETHEUS" ]; then
  echo "$PROMETHEUS"; exit 0
fi
if ! command -v prometheus >/dev/null; then
  echo "installing prometheus (Debian package)" >&2
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends prometheus >&2
fi
command -v prometheus
