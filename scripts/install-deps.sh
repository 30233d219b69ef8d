#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs the Debian 12 packages sluice builds, tests and runs with. Idempotent: packages already
# present are skipped without touching the network.
set -euo pipefail

packages=(
  build-essential clang meson ninja-build pkg-config
  libuv1-dev liblmdb-dev lmdb-utils libflatbuffers-dev flatbuffers-compiler libtomlplusplus-dev
  libfmt-dev nlohmann-json3-dev libcli11-dev libsystemd-dev libmicrohttpd-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libcurl4-openssl-dev
  python3 python3-aiosmtpd
  # tests/install: systemd-analyze, systemd-sysusers and systemd-tmpfiles check the unit and its
  # entries, groff lints the man pages, procps has the /bin/kill of the unit's ExecReload=.
  systemd groff-base procps
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing: ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
