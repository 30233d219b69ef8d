#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Runs one libFuzzer target for a bounded time; meson test --suite fuzz calls it (tests/fuzz/meson.build).
#   run-fuzz-target.sh FUZZER SEED_DIR WORK_DIR SECONDS
# The seeds are copied into WORK_DIR/corpus (in the build dir), where libFuzzer adds what it finds, so the
# repository is never written and the corpus grows from one run to the next. A crash, leak, sanitizer
# report or timeout makes libFuzzer exit non-zero, and the test fails; the reproducer is left in
# WORK_DIR/artifacts/. SECONDS = 0 skips the run (exit 77).
set -eu

fuzzer=$1
seeds=$2
work=$3
seconds=$4

if [ "$seconds" -eq 0 ]; then
  echo "fuzz_seconds = 0: not fuzzing"
  exit 77
fi

mkdir -p "$work/corpus"
rm -rf "$work/artifacts"
mkdir -p "$work/artifacts"
if [ -d "$seeds" ]; then
  cp -f "$seeds"/* "$work/corpus/" 2>/dev/null || true
fi

exec "$fuzzer" \
  -max_total_time="$seconds" \
  -rss_limit_mb=2048 \
  -timeout=30 \
  -max_len=65536 \
  -print_final_stats=1 \
  -artifact_prefix="$work/artifacts/" \
  "$work/corpus"
