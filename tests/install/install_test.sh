#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs the build into a temporary DESTDIR and checks the tree (tests/install/meson.build passes the
# paths, all absolute as installed):
#   - every path of $EXPECTED (one per line) exists; those of $EXPECTED_EXECUTABLES are executable;
#   - the config is etc/sluice.toml unchanged, and the installed sluiced accepts it (--check-config);
#   - sluice.service has every @placeholder@ substituted and starts the installed sluiced with the
#     installed config;
#   - with systemd-analyze: `verify` passes on the unit (its ExecStart pointed into DESTDIR, MANPATH at
#     the installed pages, so Documentation= is checked too) and `security --offline` rates it OK;
#   - with systemd-sysusers: the sysusers.d entry parses and creates user sluice; as root, with
#     systemd-tmpfiles, the tmpfiles.d entry creates its directories inside DESTDIR, owned by sluice.
# Parts whose tool is missing are skipped with a message; scripts/install-deps.sh installs them.
# Environment: MESON, BUILDDIR, SOURCEDIR, EXPECTED, EXPECTED_EXECUTABLES, SBINDIR, SYSCONFDIR,
# MANDIR, UNIT, SYSUSERS, TMPFILES, STATEDIR, RUNSTATEDIR.
set -euo pipefail

fail() { echo "FAIL: $*"; exit 1; }
note() { echo "-- $*"; }

destdir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-install.XXXXXX")
trap 'rm -rf "$destdir"' EXIT

note "meson install --destdir $destdir"
if ! "$MESON" install -C "$BUILDDIR" --no-rebuild --destdir "$destdir" >"$destdir.log" 2>&1; then
  cat "$destdir.log"
  rm -f "$destdir.log"
  fail "meson install failed"
fi
rm -f "$destdir.log"

missing=0
while IFS= read -r path; do
  [ -n "$path" ] || continue
  if [ ! -e "$destdir$path" ]; then
    echo "FAIL: not installed: $path"
    missing=1
  fi
done <<<"$EXPECTED"
while IFS= read -r path; do
  [ -n "$path" ] || continue
  [ -x "$destdir$path" ] || { echo "FAIL: not executable: $path"; missing=1; }
done <<<"$EXPECTED_EXECUTABLES"
[ $missing -eq 0 ] || { echo "installed tree:"; (cd "$destdir" && find . | sort); exit 1; }
note "$(grep -c . <<<"$EXPECTED") expected paths installed"

config=$SYSCONFDIR/sluice/sluice.toml
cmp "$SOURCEDIR/etc/sluice.toml" "$destdir$config" || fail "installed $config differs from etc/sluice.toml"
"$destdir$SBINDIR/sluiced" --check-config --config "$destdir$config" >/dev/null 2>"$destdir/check.err" ||
  { cat "$destdir/check.err"; fail "the installed sluiced refuses the installed config"; }
note "installed config is etc/sluice.toml and passes sluiced --check-config"

unit=$destdir$UNIT
if grep -nE '@[A-Za-z_]+@' "$unit"; then fail "unsubstituted placeholders in $UNIT"; fi
grep -qx "ExecStart=$SBINDIR/sluiced --config $config" "$unit" ||
  fail "ExecStart of $UNIT is not '$SBINDIR/sluiced --config $config': $(grep ExecStart= "$unit")"
for f in "$destdir$SYSUSERS" "$destdir$TMPFILES"; do
  if grep -nE '@[A-Za-z_]+@' "$f"; then fail "unsubstituted placeholders in $f"; fi
done
note "unit, sysusers.d and tmpfiles.d entries are fully substituted"

if command -v systemd-analyze >/dev/null; then
  # verify needs ExecStart= to exist on this machine: check a copy that points into DESTDIR.
  mkdir -p "$destdir/.verify"
  sed "s|^ExecStart=$SBINDIR/|ExecStart=$destdir$SBINDIR/|" "$unit" >"$destdir/.verify/sluice.service"
  if ! out=$(MANPATH=$destdir$MANDIR systemd-analyze verify "$destdir/.verify/sluice.service" 2>&1); then
    echo "$out"
    fail "systemd-analyze verify $UNIT"
  fi
  [ -z "$out" ] || echo "$out"
  note "systemd-analyze verify: ok"
  if systemd-analyze security --help 2>/dev/null | grep -q -- --offline; then
    score=$(systemd-analyze security --offline=yes --no-pager "$destdir/.verify/sluice.service" 2>&1 |
      grep 'Overall exposure level' || true)
    note "${score:-no exposure level printed}"
    # SAFE or OK: a change that weakens the hardening to MEDIUM or worse fails here.
    grep -qE ': [0-9.]+ (SAFE|OK)' <<<"$score" || fail "exposure level of $UNIT is not SAFE or OK"
  else
    note "SKIP: this systemd-analyze has no 'security --offline'"
  fi
else
  note "SKIP: systemd-analyze not found (apt-get install systemd): the unit is not verified"
fi

if command -v systemd-sysusers >/dev/null; then
  out=$(systemd-sysusers --dry-run "$destdir$SYSUSERS" 2>&1) ||
    { echo "$out"; fail "systemd-sysusers $SYSUSERS"; }
  note "systemd-sysusers --dry-run: ok"
  if [ "$(id -u)" -eq 0 ] && command -v systemd-tmpfiles >/dev/null; then
    # Both read only DESTDIR's configuration and write only inside it.
    mkdir -p "$destdir/etc"
    systemd-sysusers --root="$destdir" >/dev/null
    uid=$(awk -F: '$1 == "sluice" { print $3 }' "$destdir/etc/passwd")
    [ -n "$uid" ] || fail "systemd-sysusers --root did not create user sluice"
    systemd-tmpfiles --root="$destdir" --create || fail "systemd-tmpfiles --create $TMPFILES"
    for d in "$STATEDIR" "$RUNSTATEDIR"; do
      [ -d "$destdir$d" ] || fail "$TMPFILES did not create $d"
      [ "$(stat -c '%u %a' "$destdir$d")" = "$uid 750" ] ||
        fail "$d is $(stat -c '%u %a' "$destdir$d"), expected uid $uid (sluice), mode 750"
    done
    [ -d "$destdir$SYSCONFDIR/sluice/conf.d" ] || fail "$TMPFILES did not create $SYSCONFDIR/sluice/conf.d"
    note "systemd-tmpfiles --create: state, runtime and conf.d directories made, owned by sluice"
  else
    note "SKIP: not root or no systemd-tmpfiles: the tmpfiles.d entry is not applied"
  fi
else
  note "SKIP: systemd-sysusers not found: sysusers.d and tmpfiles.d entries are not checked"
fi
echo "install tree OK"
