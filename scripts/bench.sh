#!/usr/bin/env bash
# `make bench`: builds release binaries and runs every benchmark on this machine
# (custody wrap, DKG, aux info, key resharing, presigning, signing latency, load,
# a soak of 10,000 payments sampling memory and connections),
# then prints one table of every figure beside the bare library's figure from the
# same run, the ratio, the target and the original system's figure
# (docs/BENCHMARKS.md).
#
# The figures go to target/bench/results.jsonl (one JSON object per figure), the
# table to target/bench/table.md, each benchmark's own report to
# target/bench/<name>.txt. BENCH_QUICK=1 runs every benchmark with small counts
# (checks the pipeline, figures not worth quoting).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CARGO=${CARGO:-cargo}
OUT=$ROOT/target/bench
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"
export BENCH_RESULTS=$RESULTS

if [ "${BENCH_QUICK:-0}" = 1 ]; then
  HSM_ITERS=50; DKG_RUNS=1; TX_RUNS=3; ECDSA_RUNS=1; BATCHES=20,40; UTXOS=100; PRESIGS=2; PAYMENTS=1; RESHARE_RUNS=1; SOAK=2000
else
  HSM_ITERS=500; DKG_RUNS=5; TX_RUNS=20; ECDSA_RUNS=3; BATCHES=100,1000; UTXOS=5000; PRESIGS=8; PAYMENTS=3; RESHARE_RUNS=5; SOAK=10000
fi

# BENCH_NO_BUILD=1 runs the release binaries already in target/release (e.g. built
# earlier while the machine was busy); the table's header then says so.
BUILT="$(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')"
if [ "${BENCH_NO_BUILD:-0}" = 1 ]; then
  BUILT="binaries built before this run (BENCH_NO_BUILD=1; $(date -u -r target/release/signer +%Y-%m-%dT%H:%MZ)), HEAD $BUILT"
else
  echo "== release build (signer without fault injection, benchmark binaries)"
  $CARGO build --release -p signer --bins
  $CARGO build --release -p cluster-tests --bin dkg-latency --bin aux-latency \
    --bin presign-rate --bin tx-latency --bin reshare-latency --bin bench-table
fi
BIN=$ROOT/target/release
# The benchmark binaries start their clusters with the release `signer` next to them.
export SIGNER_BIN=$BIN/signer

run() {
  local name=$1; shift
  echo "== $name: $*"
  local start=$SECONDS
  "$@" 2>"$OUT/$name.err" | tee "$OUT/$name.txt"
  echo "   ($name took $((SECONDS - start)) s)"
}

run wrap-latency env HSM_BENCH_ITERS=$HSM_ITERS $CARGO bench -q -p hsm --bench wrap_latency
run dkg-latency "$BIN/dkg-latency" --runs "$DKG_RUNS"
run aux-latency "$BIN/aux-latency" --nodes 5
run reshare-latency "$BIN/reshare-latency" --runs "$RESHARE_RUNS"
run presign-rate "$BIN/presign-rate" --count "$PRESIGS" --payments "$PAYMENTS"
run tx-latency "$BIN/tx-latency" --runs "$TX_RUNS" --ecdsa-runs "$ECDSA_RUNS" \
  --concurrent "$BATCHES" --utxos "$UTXOS" --soak "$SOAK"

{
  echo "make bench, $(date -u +%Y-%m-%dT%H:%MZ), $BUILT, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  "$BIN/bench-table" "$RESULTS"
} | tee "$OUT/table.md"
