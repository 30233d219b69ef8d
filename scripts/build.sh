#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Configures (once) and builds sluice in ./build with Debian's packages only: no wrap is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
builddir=${BUILDDIR:-build}
if [ ! -f "$builddir/build.ninja" ]; then
  meson setup "$builddir" --wrap-mode=nodownload "$@"
fi
ninja -C "$builddir"
