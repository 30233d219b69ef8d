#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Runs pipeline-bench against a throwaway sluiced with the four order pipeline plugins: makes a temporary
# directory, writes a config whose [[plugin]] paths point into the build directory, starts
# BUILD/daemon/sluiced on it, waits until the inventory plugin answers, runs BUILD/bench/pipeline-bench
# with the arguments given to this script (plus --socket and --maildir), prints the CPU time each part
# took per order placed (the daemon's loop and writer threads, each worker, pipeline-bench itself) and
# how idle the machine was, then the plugins' counters,
# then stops the daemon with SIGTERM and removes the directory (KEEP=1 keeps it).
#
#   BUILDDIR=build-bench bench/run-pipeline-bench.sh --clients 16 --orders 10000 --runs 3
#
# Environment: BUILDDIR (default: build), DURABILITY (sync), INSTANCES (workers per plugin, 1;
# ORDER_INSTANCES, INVENTORY_INSTANCES, NOTIFICATION_INSTANCES, ANALYTICS_INSTANCES override it for one),
# MAILDIR_FSYNC (true: the notification plugin fsyncs each mail and new/, its default), PREALLOCATE
# (broker.preallocate, e.g. 0 to compare without it; default: the daemon's), TMPDIR (where the
# data goes: put it on the disk you want to measure), KEEP. Repeated runs: use KEEP=1 (remove the
# dirs later), or wait 5 minutes between them; on ext4 without a journal, removing the previous run's
# Maildir slows the next run's mail (bench/README.md, "The order pipeline").
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(realpath "${BUILDDIR:-build}")
durability=${DURABILITY:-sync}
instances=${INSTANCES:-1}
maildir_fsync=${MAILDIR_FSYNC:-true}
preallocate=${PREALLOCATE:+preallocate = \"$PREALLOCATE\"}
for f in daemon/sluiced daemon/sluicectl bench/pipeline-bench plugins/order/order.so \
         plugins/inventory/inventory.so plugins/notification/notification.so plugins/analytics/analytics.so; do
  [[ -e $build/$f ]] || { echo "run-pipeline-bench: $build/$f is missing: ninja -C $build" >&2; exit 2; }
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-pipeline-bench-XXXXXX")
plugin() {  # name, config table
  local n=${1^^}_INSTANCES
  printf '[[plugin]]\nname = "%s"\npath = "%s"\ninstances = %s\nconfig = %s\n' \
    "$1" "$build/plugins/$1/$1.so" "${!n:-$instances}" "$2"
}
{
  cat <<EOF
[daemon]
data_dir = "data"
broker_socket = "broker.sock"
admin_socket = "admin.sock"
log_level = "notice"
[broker]
durability = "$durability"
map_size = "1GiB"
$preallocate
[[topic]]
name = "order.events"
retention_max_age = "1h"
[[topic]]
name = "inventory.events"
retention_max_age = "1h"
EOF
  plugin order '{ catalog = { "SKU-1" = 1250, "SKU-2" = 499 } }'
  plugin inventory '{ stock = { "SKU-1" = 1000000000, "SKU-2" = 1000000000 } }'
  plugin notification "{ from = \"shop@example.com\", send_confirmation = false, maildir_fsync = $maildir_fsync }"
  plugin analytics '{}'
} >"$dir/sluice.toml"

ctl() { "$build/daemon/sluicectl" --config "$dir/sluice.toml" "$@"; }
"$build/daemon/sluiced" --config "$dir/sluice.toml" 2>"$dir/sluiced.log" &
pid=$!
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
  fi
  if [[ -n ${KEEP:-} ]]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
for _ in $(seq 200); do
  ctl stock show >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/sluiced.log" >&2; exit 1; }
  sleep 0.1
done
ctl stock show >/dev/null || { echo "run-pipeline-bench: the inventory plugin does not answer" >&2; exit 1; }

workers=$(awk -F' = ' '/^name/ {n=$2} /^instances/ {gsub(/"/, "", n); printf "%s%s=%s", sep, n, $2; sep=" "}' \
  "$dir/sluice.toml")
echo "sluiced pid $pid in $dir: durability $durability, workers $workers, maildir_fsync $maildir_fsync," \
     "$(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg)"

# CPU time in clock ticks (utime + stime) per thread of sluiced (named: the loop is "sluiced", the group
# commit "sluiced-writer") and per worker process, as "name ticks" lines, then the machine's idle
# ticks. pipeline-bench reports its own CPU time when it ends.
cpu_snapshot() {
  local t
  for t in /proc/"$pid"/task/*; do
    awk -v n="$(cat "$t/comm")" '{sub(/^.*\) /, ""); print n, $12 + $13}' "$t/stat" 2>/dev/null
  done
  ctl plugins --json 2>/dev/null | python3 -c '
import json, sys
for p in json.load(sys.stdin).get("plugins", []):
    for w in p.get("workers", []):
        if w.get("pid"): print(p["name"], w["pid"])' | while read -r name wpid; do
    awk -v n="worker:$name" '{sub(/^.*\) /, ""); print n, $12 + $13}' "/proc/$wpid/stat" 2>/dev/null
  done
  awk '/^cpu / {print "idle", $5}' /proc/stat
}
before=$(cpu_snapshot)
started=$(date +%s%N)
rc=0
"$build/bench/pipeline-bench" --socket "$dir/broker.sock" \
  --maildir "$dir/data/plugins/notification/Maildir" "$@" | tee "$dir/bench.out" || rc=$?
elapsed_ns=$(( $(date +%s%N) - started ))
after=$(cpu_snapshot)
# Per order placed, in microseconds of CPU: where the machine's budget goes (bench/README.md).
python3 - "$dir/bench.out" "$elapsed_ns" "$(getconf CLK_TCK)" "$(nproc)" "$before" "$after" <<'PY' || true
import re, sys
out, elapsed_ns, hz, cpus, before, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
text = open(out).read()
placed = sum(int(m.group(1)) for m in re.finditer(r"^  run \d+: (\d+) placed", text, re.M))
own = re.search(r"^pipeline-bench CPU: ([0-9.]+) s", text, re.M)
def ticks(text):
    d = {}
    for line in text.splitlines():
        name, value = line.rsplit(" ", 1)
        d[name] = d.get(name, 0) + int(value)
    return d
b, a = ticks(before), ticks(after)
if placed:
    us = {k: (a[k] - b.get(k, 0)) / hz * 1e6 / placed for k in a if k != "idle"}
    if own:
        us["pipeline-bench"] = float(own.group(1)) * 1e6 / placed
    parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(us.items(), key=lambda kv: -kv[1]) if v >= 0.5)
    idle = (a["idle"] - b["idle"]) / hz / (elapsed_ns / 1e9 * cpus) * 100
    print(f"CPU per order placed (us): {parts}; total {sum(us.values()):.0f}; machine idle {idle:.0f}% of {cpus} cpus")
PY
echo "sluiced RssAnon: $(awk '/RssAnon/ {print $2, $3}' "/proc/$pid/status")"
ctl plugins || true
exit $rc
