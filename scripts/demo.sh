#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The main job on the embedded default: installs what it needs, builds, starts sluiced with the local
# configuration (etc/sluice.local.toml) and the order pipeline plugins in ./run/, places a handful of
# orders (one for a SKU that is out of stock), shows each reach CONFIRMED or CANCELLED, the mails in the
# Maildir, one order's story across services, then drops in the analytics plugin without a restart and
# shows its table. Stops the daemon with SIGTERM at the end. Idempotent: ./run/ is recreated each time.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
echo "building sluice (the first build takes a few minutes; its log is in build.log)"
./scripts/build.sh >build.log 2>&1 || { tail -n 40 build.log; exit 1; }
build=${BUILDDIR:-build}
run=$PWD/run

rm -rf "$run"
mkdir -p "$run/plugins" "$run/plugins.d"
cp etc/sluice.local.toml "$run/sluice.toml"
for p in order inventory notification analytics; do
  ln -s "$PWD/$build/plugins/$p/$p.so" "$run/plugins/$p.so"
done
ctl() { "$build/daemon/sluicectl" --config "$run/sluice.toml" "$@"; }
# Headings in bold on a terminal only: a pipe or a log file gets them plain.
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }

"$build/daemon/sluiced" --config "$run/sluice.toml" 2>"$run/sluiced.log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  ctl stock show >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$run/sluiced.log"; exit 1; }
  sleep 0.1
done

say "sluiced is up: the broker, the admin socket, and a worker process for each of three plugins"
ctl status
echo
ctl plugins

say "stock before (SKU-3 is out of stock)"
ctl stock show

say "placing orders: each reply comes at once, PENDING, before Inventory or Notification ran"
place() { printf '$ sluicectl order place %s\n  -> ' "$*"; ctl order place "$@"; }
place --email ann@example.com --item SKU-1:2
place --email bob@example.com --item SKU-2:1 --item SKU-1:1
place --email cid@example.com --item SKU-3:1
place --email dee@example.com --item SKU-2:3
place --email eve@example.com --item SKU-1:1 --idempotency-key eve-cart-7
place --email eve@example.com --item SKU-1:1 --idempotency-key eve-cart-7
echo "(eve's second request repeats the idempotency key: it returns the first order, in its current status,"
echo " not a new one)"

say "waiting for Inventory to settle every order"
for _ in $(seq 100); do
  [ "$(ctl --json order list --status pending | grep -c '"order_id"')" = 0 ] && break
  sleep 0.1
done
ctl order list

say "stock after: what confirmed orders took is reserved"
ctl stock show

first=$(ctl --json order list | grep -m1 '"order_id"' | sed 's/.*: "\(.*\)".*/\1/')
say "the story of order $first across services (sluicectl trace)"
ctl trace "$first"

# Notification consumes the events on its own subscription, so its mails may come a little after the
# orders settled: one thank-you per order, one more per cancelled order.
maildir=$run/data/plugins/notification/Maildir/new
mails=$(( $(ctl --json order list | grep -c '"order_id"') + $(ctl --json order list --status cancelled | grep -c '"order_id"') ))
for _ in $(seq 100); do
  [ "$(find "$maildir" -type f | wc -l)" -ge "$mails" ] && break
  sleep 0.1
done
say "mails written to $maildir"
# File names follow event ids, not time: list the mails by order, each order's in the order sent.
for f in "$maildir"/*; do
  header() { grep -m1 "^$1: " "$f" | cut -d' ' -f2-; }
  case $(header X-Sluice-Mail) in order-created) rank=1 ;; order-confirmed) rank=2 ;; *) rank=3 ;; esac
  printf '%s\t%s\t  %-20s %s\n' "$(header X-Sluice-Order-Id)" "$rank" "$(header To)" "$(header Subject)"
done | sort -t$'\t' -k1,1 -k2,2n | cut -f3-

say "dropping in analytics: a small TOML file and a load, no restart, Order untouched"
cp etc/plugins.d/analytics.toml "$run/plugins.d/"
cat "$run/plugins.d/analytics.toml"
ctl plugin load analytics
for _ in $(seq 100); do
  ctl analytics >/dev/null 2>&1 && [ "$(ctl --json analytics | grep -m1 '"orders"' | tr -dc 0-9)" -ge 5 ] && break
  sleep 0.1
done
ctl analytics

say "stopping sluiced (SIGTERM): workers first, then the broker drains and exits"
kill -TERM $pid
wait $pid && echo "sluiced exited with status 0"
trap - EXIT
echo "daemon log: $run/sluiced.log"
