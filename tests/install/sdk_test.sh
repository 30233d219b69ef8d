#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A plugin built from the installed SDK only, as a third party would: installs into a temporary
# DESTDIR, then compiles plugins/analytics/analytics.cc with nothing but what `pkg-config sluice-plugin`
# and the installed schemas give (flatc runs on the installed .fbs files), and checks that the
# installed sluiced accepts the result (--check-plugin). Environment: MESON, BUILDDIR, SOURCEDIR,
# PREFIX, LIBDIR, SBINDIR, CXX.
set -euo pipefail
fail() { echo "FAIL: $*"; exit 1; }

destdir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-sdk.XXXXXX")
trap 'rm -rf "$destdir"' EXIT
"$MESON" install -C "$BUILDDIR" --no-rebuild --destdir "$destdir" >"$destdir/install.log" 2>&1 ||
  { cat "$destdir/install.log"; fail "meson install failed"; }

pc_dir=$destdir$LIBDIR/pkgconfig
[ -f "$pc_dir/sluice-plugin.pc" ] || fail "sluice-plugin.pc is not installed in $LIBDIR/pkgconfig"
pc() { PKG_CONFIG_PATH=$pc_dir pkg-config --define-variable=prefix="$destdir$PREFIX" "$@" sluice-plugin; }
cflags=$(pc --cflags) || fail "pkg-config sluice-plugin failed"
schemadir=$(pc --variable=schemadir)
[ -f "$schemadir/orders.fbs" ] || fail "no orders.fbs in the installed schema dir $schemadir"

# Only the plugin's source leaves the tree: everything else comes from the install.
work=$destdir/thirdparty
mkdir -p "$work/gen"
cp "$SOURCEDIR/plugins/analytics/analytics.cc" "$work/"
flatc --cpp --scoped-enums -I "$schemadir" -o "$work/gen" "$schemadir"/*.fbs
# shellcheck disable=SC2086
"$CXX" -std=c++20 -O1 -fPIC -shared -fvisibility=hidden $cflags -I"$work/gen" \
  "$work/analytics.cc" -o "$work/analytics.so" 2>"$work/build.log" ||
  { cat "$work/build.log"; fail "the plugin does not build from the installed SDK"; }

out=$("$destdir$SBINDIR/sluiced" --check-plugin "$work/analytics.so" 2>&1) ||
  { echo "$out"; fail "sluiced --check-plugin refuses the plugin built from the installed SDK"; }
grep -q "analytics" <<<"$out" || { echo "$out"; fail "--check-plugin does not name the plugin"; }
echo "-- analytics.so built from the installed SDK alone and accepted by sluiced --check-plugin"
