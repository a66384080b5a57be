#!/usr/bin/env bash
# Installs Debian packages quietly (sudo when not root): one line says what, apt's own output goes
# to a log that is shown only when the install fails.
#
#   deploy/local/apt-install.sh PACKAGE...
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 PACKAGE..." >&2; exit 2; }
sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
log=$(mktemp "${TMPDIR:-/tmp}/netbox-relay-apt.XXXXXX")
echo "installing $* (Debian packages; apt's output: $log)" >&2
if ! { $sudo_cmd apt-get update -qq \
       && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "$@"; } >"$log" 2>&1; then
  echo "apt-get failed installing $*:" >&2
  tail -20 "$log" >&2
  exit 1
fi
rm -f "$log"
