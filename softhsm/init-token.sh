#!/usr/bin/env bash
# Create a fresh SoftHSM2 token for one dev/test node.
#
# usage: softhsm/init-token.sh DIR LABEL PIN SO_PIN
#
# Writes DIR/softhsm2.conf (tokendir DIR/tokens), initialises a token labelled LABEL
# in the first free slot, and prints the absolute path of the SOFTHSM2_CONF file on
# stdout (nothing else goes to stdout). The PINs are taken from the command line
# because this is dev tooling; the signer daemon itself reads its PIN only from a
# file or a systemd credential. For anything but throwaway tokens, pass the PINs via
# the environment instead: PIN=- reads $SOFTHSM_PIN, SO_PIN=- reads $SOFTHSM_SO_PIN.
set -euo pipefail

if [[ $# -ne 4 ]]; then
    echo "usage: $0 DIR LABEL PIN SO_PIN" >&2
    exit 2
fi

dir=$1 label=$2 pin=$3 so_pin=$4
[[ $pin == - ]] && pin=${SOFTHSM_PIN:?SOFTHSM_PIN is not set}
[[ $so_pin == - ]] && so_pin=${SOFTHSM_SO_PIN:?SOFTHSM_SO_PIN is not set}

if [[ -z $label || ${#label} -gt 32 ]]; then
    echo "init-token.sh: token label must be 1..32 characters" >&2
    exit 2
fi
if [[ ${#pin} -lt 4 || ${#so_pin} -lt 4 ]]; then
    echo "init-token.sh: PIN and SO PIN must be at least 4 characters" >&2
    exit 2
fi
command -v softhsm2-util >/dev/null || {
    echo "init-token.sh: softhsm2-util not found (apt-get install softhsm2)" >&2
    exit 1
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
umask 077
mkdir -p "$dir/tokens"
conf="$dir/softhsm2.conf"
sed "s#@TOKENDIR@#$dir/tokens#" "$here/softhsm2.conf.template" >"$conf"

SOFTHSM2_CONF=$conf softhsm2-util --init-token --free \
    --label "$label" --pin "$pin" --so-pin "$so_pin" >&2

echo "$conf"
