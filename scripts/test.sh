#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The whole test suite: installs what it needs, builds, runs every meson test suite (unit, integration,
# plugins, config, fuzz corpus replay), then runs each libFuzzer target for FUZZ_SECONDS (default 60)
# in a clang build. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
meson test -C "${BUILDDIR:-build}" --print-errorlogs --num-processes 2
if [ "${SKIP_FUZZ:-0}" != 1 ]; then
  FUZZ_SECONDS=${FUZZ_SECONDS:-60} ./tests/fuzz/run-fuzzers.sh
fi
