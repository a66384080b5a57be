#!/usr/bin/env bash
# The soak (issue 37): real NetBox changes under faults for N minutes, then one default reconcile,
# judged by `netbox-relay audit` and the stream (scripts/soak/soak.py says what it does; its
# FAULTS and CHANGES tables say which faults and changes, and how often).
#
#   scripts/soak.sh [--minutes 5] [--seed S] [--rate 30] [--out DIR] [--debug]
#
# --debug runs the debug build (what `cargo test` built) instead of the release one.
# Uses a real NetBox 4.7 with netbox-branching (scripts/netbox.sh), a 3-node NATS cluster, two
# relays (the release build) behind HAProxy (Debian's, installed on first use). The report is
# DIR/report.json (default: target/soak/<seed>); exit 0 when every judgement passed. A failing
# run is replayed with its --seed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
minutes=5 seed=$(date +%s) rate=30 out="" profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --debug) profile=debug; shift ;;
    *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
out=${out:-$root/target/soak/$seed}
NATS_SERVER=$(deploy/local/ensure-nats.sh)
command -v haproxy >/dev/null || deploy/local/apt-install.sh haproxy
settings=$(scripts/netbox.sh up)
if [ "$profile" = release ]; then cargo build --release --locked --quiet; else cargo build --locked --quiet; fi
rm -rf "$out"; mkdir -p "$out"
echo "soak.sh: $minutes min, seed $seed, $rate changes/min; report in $out/report.json" >&2
exec .netbox/venv/bin/python scripts/soak/soak.py --minutes "$minutes" --seed "$seed" --rate "$rate" \
  --out "$out" --relay "${CARGO_TARGET_DIR:-$root/target}/$profile/netbox-relay" --nats "$NATS_SERVER" \
  --haproxy "$(command -v haproxy)" --settings "$settings" --netbox-sh "$root/scripts/netbox.sh"
