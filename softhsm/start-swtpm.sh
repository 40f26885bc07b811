#!/usr/bin/env bash
# Start a throwaway swtpm (TPM 2.0) on loopback for dev and tests.
#
# usage: softhsm/start-swtpm.sh STATE_DIR [PORT]
#
# Starts `swtpm socket --tpm2` in the background with its state in STATE_DIR, the
# command channel on 127.0.0.1:PORT and the control channel on PORT+1 (the layout
# the tss2 `swtpm:` TCTI expects). Without PORT a free port pair is chosen.
# Prints two lines on stdout: the TCTI string and the swtpm pid
#   swtpm:host=127.0.0.1,port=PORT
#   PID
# Stop it with: kill PID
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 STATE_DIR [PORT]" >&2
    exit 2
fi
state=$1
port=${2:-}
command -v swtpm >/dev/null || {
    echo "start-swtpm.sh: swtpm not found (apt-get install swtpm swtpm-tools)" >&2
    exit 1
}
mkdir -p "$state"

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

if [[ -z $port ]]; then
    for _ in $(seq 1 50); do
        p=$((20000 + RANDOM % 30000))
        if port_free "$p" && port_free "$((p + 1))"; then
            port=$p
            break
        fi
    done
    [[ -n $port ]] || { echo "start-swtpm.sh: no free port pair found" >&2; exit 1; }
fi

swtpm socket --tpm2 \
    --tpmstate "dir=$state" \
    --server "type=tcp,port=$port,bindaddr=127.0.0.1" \
    --ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" \
    --flags not-need-init,startup-clear \
    --log "file=$state/swtpm.log" \
    --pid "file=$state/swtpm.pid" &
pid=$!

for _ in $(seq 1 100); do
    if ! port_free "$port"; then
        echo "swtpm:host=127.0.0.1,port=$port"
        echo "$pid"
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "start-swtpm.sh: swtpm exited; see $state/swtpm.log" >&2
        exit 1
    fi
    sleep 0.05
done
kill "$pid" 2>/dev/null || true
echo "start-swtpm.sh: swtpm did not start listening on port $port" >&2
exit 1
