#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job on the embedded default: installs what it needs, builds, starts sluiced with the local
# configuration (etc/sluice.local.toml, copied into ./run/), shows that it answers, then stops it with
# SIGTERM. Idempotent: ./run/ keeps its data between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
build=${BUILDDIR:-build}
run=$PWD/run
mkdir -p "$run"
cp etc/sluice.local.toml "$run/sluice.toml"
ctl() { "$build/daemon/sluicectl" --config "$run/sluice.toml" "$@"; }

"$build/daemon/sluiced" --config "$run/sluice.toml" 2>"$run/sluiced.log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  ctl ping >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$run/sluiced.log"; exit 1; }
  sleep 0.1
done

echo "== sluicectl status"
ctl status
echo
echo "== sluicectl topics"
ctl topics
echo
echo "== stopping sluiced (SIGTERM)"
kill -TERM $pid
wait $pid && echo "sluiced exited with status 0"
trap - EXIT
echo
echo "== daemon log ($run/sluiced.log)"
cat "$run/sluiced.log"
