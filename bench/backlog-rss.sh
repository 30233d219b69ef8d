#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The memory bar of issue 3: with a backlog of 1,000,000 1 KiB messages in one subscription, the
# daemon's private memory (RssAnon in /proc/PID/status) stays under 128 MiB. Starts a throwaway sluiced
# (sync durability) in a temporary directory, creates a durable subscription at the earliest on topic
# "backlog" and publishes the messages into it with sluice-bench (workload A, nothing consumes them),
# sampling RssAnon every half second; prints RssAnon before, the peak while publishing, and after, with
# the subscription's pending count; then stops the daemon and removes the directory (KEEP=1 keeps it).
#
#   BUILDDIR=build-bench bench/backlog-rss.sh [MESSAGES [SIZE]]
#
# TMPDIR chooses the disk: the data takes about MESSAGES x (SIZE + 150) bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(realpath "${BUILDDIR:-build}")
messages=${1:-1000000}
size=${2:-1024}
dir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-backlog-rss-XXXXXX")
cat >"$dir/sluice.toml" <<EOF
[daemon]
data_dir = "data"
broker_socket = "broker.sock"
admin_socket = "admin.sock"
log_level = "notice"
[broker]
durability = "sync"
map_size = "2GiB"
EOF
ctl() { "$build/daemon/sluicectl" --config "$dir/sluice.toml" "$@"; }
"$build/daemon/sluiced" --config "$dir/sluice.toml" 2>"$dir/sluiced.log" &
pid=$!
sampler=
cleanup() {
  if [[ -n $sampler ]]; then kill "$sampler" 2>/dev/null || true; fi
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
  fi
  if [[ -n ${KEEP:-} ]]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
for _ in $(seq 100); do
  ctl ping >/dev/null 2>&1 && break
  sleep 0.1
done
rss() { awk '/^RssAnon/ {print $2}' "/proc/$pid/status"; }
before=$(rss)
( while kill -0 "$pid" 2>/dev/null; do rss; sleep 0.5; done ) >"$dir/rss.samples" &
sampler=$!

"$build/bench/sluice-bench" --socket "$dir/broker.sock" --workloads A --messages "$messages" --size "$size" \
  --runs 1 --topic backlog --subscription held
after=$(rss)
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
sampler=
peak=$(sort -n "$dir/rss.samples" | tail -1)
peak=$(( peak > after ? peak : after ))
pending=$(ctl --json subs | python3 -c 'import json,sys
for s in json.load(sys.stdin)["subscriptions"]:
    if s["topic"] == "backlog" and s["name"] == "held": print(s.get("pending"))')
echo "backlog: $messages messages of $size bytes pending in backlog/held: $pending"
echo "sluiced RssAnon: before ${before} kB, peak while publishing ${peak} kB, after ${after} kB" \
     "(bar: 131072 kB = 128 MiB)"
echo "data directory: $(du -sh "$dir/data" | cut -f1)"
