#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Builds the libFuzzer targets with clang in their own build dir (-Dfuzz=true: all code instrumented,
# ASan and UBSan) and runs meson's 'fuzz' suite there: each seed corpus replays, then each target fuzzes
# for FUZZ_SECONDS seconds (default 60) on a copy of its corpus in the build dir. Exits non-zero on any
# crash or sanitizer report; the reproducer is left in BUILD_DIR/tests/fuzz/<target>-fuzz/artifacts/
# (add it to tests/fuzz/corpus/<target>/ with the fix, so it replays in every build from then on).
#   tests/fuzz/run-fuzzers.sh [BUILD_DIR]        (default: build-fuzz, relative to the source root)
#   FUZZ_SECONDS=10 tests/fuzz/run-fuzzers.sh    a short run
# FUZZ_CC and FUZZ_CXX choose the compilers (default clang, clang++). Idempotent: an existing build dir
# is reused and rebuilt incrementally.
set -eu

cd "$(dirname "$0")/../.."
builddir=${1:-build-fuzz}
seconds=${FUZZ_SECONDS:-60}

if [ ! -f "$builddir/build.ninja" ]; then
  CC=${FUZZ_CC:-clang} CXX=${FUZZ_CXX:-clang++} \
    meson setup "$builddir" --wrap-mode=nodownload -Dfuzz=true -Dfuzz_seconds="$seconds"
else
  meson configure "$builddir" -Dfuzz=true -Dfuzz_seconds="$seconds"
fi

# Regenerate first if meson.build files or options changed, so the target list below is current.
ninja -C "$builddir" build.ninja

# Build only what the fuzz suite runs (and what it links), not the whole project.
targets=$(meson introspect "$builddir" --targets | python3 -c '
import json, os, sys
root = os.path.abspath(sys.argv[1])
for t in json.load(sys.stdin):
    if t["defined_in"].endswith(os.path.join("tests", "fuzz", "meson.build")) and t["build_by_default"]:
        for f in t["filename"]:
            print(os.path.relpath(f, root))
' "$builddir")
# shellcheck disable=SC2086 # one word per target
ninja -C "$builddir" $targets

meson test -C "$builddir" --no-rebuild --suite fuzz --print-errorlogs
