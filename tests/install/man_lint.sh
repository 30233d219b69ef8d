#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Lints man pages with groff: `groff -man -ww -z` (and the same for the terminal device that man(1)
# uses) must print nothing for every page given. Exits 77 (meson's "skipped") without groff.
set -euo pipefail
if ! command -v groff >/dev/null; then
  echo "groff not found (apt-get install groff-base): man pages not linted"
  exit 77
fi
status=0
for page in "$@"; do
  for device in ps utf8; do
    out=$(groff -man -ww -z -T"$device" "$page" 2>&1) || true
    if [ -n "$out" ]; then
      echo "$page (-T$device):"
      echo "$out"
      status=1
    fi
  done
done
[ $status -eq 0 ] && echo "linted $# pages: no warnings"
exit $status
