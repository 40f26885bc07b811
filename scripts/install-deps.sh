#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, when missing.
# Idempotent; needs root or sudo only when something is missing.
set -euo pipefail

PACKAGES=(
  postgresql etcd-server etcd-client protobuf-compiler libprotobuf-dev
  softhsm2 opensc swtpm swtpm-tools libtss2-dev libtss2-tcti-swtpm0
  pkg-config g++ libgmp-dev m4 dpkg-dev
)
missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Debian starts a system PostgreSQL and etcd on install; the project runs its own
# throwaway instances on free ports, so the system ones are not needed.
