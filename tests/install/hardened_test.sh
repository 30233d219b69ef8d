#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The installed sluiced under the restrictions of sluice.service that can be reproduced without
# systemd as PID 1: an unprivileged user (nobody) with no new privileges (NoNewPrivileges=), in a
# private mount namespace where the whole filesystem is read-only except its state and runtime
# directories (ProtectSystem=strict with StateDirectory= and RuntimeDirectory=). It runs the order
# pipeline plugins from the installed plugin folder, and the test places an order end to end with the
# installed sluicectl: CONFIRMED, a thank-you mail in the Maildir, SIGTERM exits 0.
# Needs root (to make the namespace and drop to nobody); exits 77 (skipped) otherwise.
# Environment: MESON, BUILDDIR, PREFIX, SBINDIR, BINDIR, PLUGINDIR.
set -euo pipefail
fail() { echo "FAIL: $*"; [ -f "${log:-}" ] && cat "$log"; exit 1; }
note() { echo "-- $*"; }

[ "$(id -u)" = 0 ] || { echo "SKIP: needs root"; exit 77; }
for tool in unshare setpriv mount; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool is missing"; exit 77; }
done

top=$(mktemp -d "${TMPDIR:-/tmp}/sluice-hardened.XXXXXX")
pid=
cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  rm -rf "$top"
}
trap cleanup EXIT
chmod 755 "$top"
destdir=$top/root
"$MESON" install -C "$BUILDDIR" --no-rebuild --destdir "$destdir" >"$top/install.log" 2>&1 ||
  { cat "$top/install.log"; fail "meson install failed"; }

state=$top/state
run=$top/run
log=$top/sluiced.log
mkdir -p "$state" "$run"
chown 65534:65534 "$state" "$run"
cat >"$top/sluice.toml" <<TOML
[daemon]
data_dir = "$state"
broker_socket = "$run/broker.sock"
admin_socket = "$run/admin.sock"
plugin_dir = "$destdir$PLUGINDIR"
shutdown_timeout = "10s"

[[plugin]]
name = "order"
config = { catalog = { "SKU-1" = 1250 } }

[[plugin]]
name = "inventory"
config = { stock = { "SKU-1" = 10 } }

[[plugin]]
name = "notification"
TOML
chmod 644 "$top/sluice.toml"

sluiced=$destdir$SBINDIR/sluiced
ctl() { "$destdir$BINDIR/sluicectl" --socket "$run/admin.sock" --broker-socket "$run/broker.sock" "$@"; }

unshare --mount --propagation private sh -c '
  set -e
  mount --bind "$1" "$1"
  mount --bind "$2" "$2"
  mount -o remount,bind,ro /
  exec setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs "$3" --config "$4"
' hardened "$state" "$run" "$sluiced" "$top/sluice.toml" 2>"$log" &
pid=$!

for _ in $(seq 200); do
  ctl stock show >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || fail "sluiced exited under the restrictions"
  sleep 0.1
done
ctl stock show >/dev/null 2>&1 || fail "sluiced and its plugins did not come up within 20 s"
owner=$(stat -c %u "$state/store/data.mdb")
[ "$owner" = 65534 ] || fail "the store is owned by uid $owner, not the unprivileged user"
note "sluiced runs as uid 65534 with no new privileges on a read-only filesystem"

# Nothing outside the state and runtime directories is writable to it.
if unshare --mount --propagation private sh -c 'mount -o remount,bind,ro / && touch /etc/sluice-probe' 2>/dev/null; then
  rm -f /etc/sluice-probe
  fail "the read-only root is not read-only"
fi

placed=$(ctl --json order place --email hardened@example.com --item SKU-1:2) || fail "order place: $placed"
id=$(sed -n 's/.*"order_id": "\(.*\)".*/\1/p' <<<"$placed")
[ -n "$id" ] || fail "no order id in: $placed"
status=
for _ in $(seq 300); do
  status=$(ctl --json order show "$id" | sed -n 's/.*"status": "\(.*\)".*/\1/p')
  [ "$status" = CONFIRMED ] && break
  sleep 0.1
done
[ "$status" = CONFIRMED ] || fail "order $id is $status, not CONFIRMED, after 30 s"
# Notification handles OrderCreated on its own, so its mail may land after the confirmation.
for _ in $(seq 300); do
  grep -rqs "$id" "$state/plugins/notification/Maildir/new" && break
  sleep 0.1
done
grep -rqs "$id" "$state/plugins/notification/Maildir/new" || fail "no thank-you mail for $id in the Maildir after 30 s"
note "order $id placed, CONFIRMED, and mailed under the hardening"

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=
[ "$rc" = 0 ] || fail "sluiced exited with $rc on SIGTERM"
[ ! -e "$run/broker.sock" ] || fail "the broker socket was left behind"
note "SIGTERM: exit 0, sockets removed"
