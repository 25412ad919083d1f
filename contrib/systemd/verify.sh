#!/usr/bin/env bash
# Verify the unit files with `systemd-analyze verify`, as CI does: ExecStart
# and ExecReload name /opt/balancebeam/bin/twistd, which exists only once
# installed there, so a copy naming this machine's twistd is verified.
# Any warning fails, not only errors.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
twistd="${1:-$(command -v twistd)}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for unit in balancebeam.service balancebeam.socket; do
  sed "s#/opt/balancebeam/bin/twistd#$twistd#g" "$here/$unit" > "$work/$unit"
done
out="$(cd "$work" && systemd-analyze verify ./balancebeam.socket ./balancebeam.service 2>&1)" || {
  echo "$out"; echo "systemd-analyze verify failed"; exit 1; }
if [ -n "$out" ]; then
  echo "$out"; echo "systemd-analyze verify warned"; exit 1
fi
echo "systemd-analyze verify: balancebeam.service and balancebeam.socket OK"
# The hardening, scored by systemd (0 is best, 10 worst; --threshold counts
# tenths): keep it at 2.0 or under (it is 1.4).
(cd "$work" && systemd-analyze security --offline=yes --threshold=20 ./balancebeam.service \
  | tail -1)
