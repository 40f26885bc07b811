#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, when missing, and
# schemathesis (the API fuzzer of scripts/fuzz-api.sh, pinned) into a project venv.
# Idempotent; needs root or sudo only when a Debian package is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)

PACKAGES=(
  postgresql etcd-server etcd-client protobuf-compiler libprotobuf-dev
  softhsm2 opensc swtpm swtpm-tools libtss2-dev libtss2-tcti-swtpm0
  pkg-config g++ libgmp-dev m4 dpkg-dev
  curl python3 python3-venv
)
missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
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
fi

# schemathesis (PyPI) and its dependencies, pinned in scripts/fuzz-requirements.txt,
# in target/venv-fuzz (under target/: ignored by git, removed by `cargo clean`, made
# again here). `make test` runs a bounded fuzzing run with it and must fail, not
# skip, when it cannot be installed.
REQUIREMENTS=$ROOT/scripts/fuzz-requirements.txt
VENV=${FUZZ_VENV:-$ROOT/target/venv-fuzz}
if ! { "$VENV/bin/schemathesis" --version >/dev/null 2>&1 &&
  cmp -s "$REQUIREMENTS" "$VENV/installed-requirements.txt"; }; then
  echo "installing schemathesis ($REQUIREMENTS) into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || { echo "cannot create a Python venv at $VENV (python3 -m venv)" >&2; exit 1; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS" ||
    { echo "cannot install schemathesis from PyPI into $VENV ($REQUIREMENTS)" >&2; exit 1; }
  "$VENV/bin/schemathesis" --version
  cp "$REQUIREMENTS" "$VENV/installed-requirements.txt"
fi
