#!/usr/bin/env bash
# Fuzzes a live node's REST API against its own OpenAPI contract with schemathesis
# (docs/API.md, "Fuzzing the API"). Starts a throwaway 3-node dev cluster, makes one
# key of each type, runs schemathesis as admin with every check, checks that the
# run did not destroy the cluster, and tears the cluster down. Exits non-zero on any
# 5xx, contract violation or broken invariant.
#
#   scripts/fuzz-api.sh                  bounded run of make test (FUZZ_EXAMPLES=50)
#   FUZZ_EXAMPLES=200 scripts/fuzz-api.sh  the longer run of `make test-fuzz`
#
# Environment: FUZZ_EXAMPLES (test cases per operation and phase), FUZZ_SEED (replay
# a run), FUZZ_WORKERS (default 1: with two, CPython 3.11.7's ast.parse, which
# hypothesis calls from both threads, fails now and then), FUZZ_KEEP=1 (keep the
# cluster directory and logs), SIGNER_BIN (default target/debug/signer), FUZZ_VENV
# (default target/venv-fuzz, made by scripts/install-deps.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
EXAMPLES=${FUZZ_EXAMPLES:-50}
WORKERS=${FUZZ_WORKERS:-1}
SIGNER=${SIGNER_BIN:-$ROOT/target/debug/signer}
VENV=${FUZZ_VENV:-$ROOT/target/venv-fuzz}
ST=$VENV/bin/schemathesis
PY=$VENV/bin/python

die() {
  echo "fuzz-api: $*" >&2
  exit 2
}

[ -x "$ST" ] || die "schemathesis not found at $ST; run scripts/install-deps.sh (make deps)"
"$ST" --version >/dev/null || die "schemathesis at $ST does not run"
[ -x "$SIGNER" ] || die "signer binary not found at $SIGNER; run cargo build -p signer --bins"
command -v curl >/dev/null || die "curl is needed"

WORK=$(mktemp -d /tmp/signer-fuzz-XXXXXX)
CLUSTER=$WORK/cluster
cleanup() {
  "$SIGNER" cluster down --dir "$CLUSTER" >/dev/null 2>&1 || true
  if [ "${FUZZ_KEEP:-0}" = 1 ]; then
    echo "fuzz-api: kept $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

echo "fuzz-api: starting a 3-node dev cluster in $CLUSTER"
# Every request without a valid token spends the client address's budget
# (api.unauthenticated_rate_limit_per_min, 120 by default; tests/api.rs covers it).
# schemathesis sends such requests on purpose (missing or invalid token probes of
# each operation); a spent budget would answer 429 where the contract says 401.
SIGNER__API__UNAUTHENTICATED_RATE_LIMIT_PER_MIN=1000000 \
  "$SIGNER" cluster up --nodes 3 --threshold 2 --dir "$CLUSTER" --detach \
  --prime-pool-target 0 --insecure-test-primes "$ROOT/protocol/fixtures/test-primes" \
  >"$WORK/cluster-up.log" 2>&1 || {
  cat "$WORK/cluster-up.log" >&2
  die "cluster up failed"
}
CF=$CLUSTER/cluster.json

field() { "$PY" -c "import json,sys; c=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$CF" "$1"; }
URL=$(field "c['nodes'][0]['api_url']")
CA=$(field "c['ca_cert']")
ADMIN=$(field "c['admin_token']")
NODES=$(field "' '.join(n['api_url'] for n in c['nodes'])")

api() { curl -sS --cacert "$CA" -H "Authorization: Bearer $1" "${@:2}"; }

for _ in $(seq 1 60); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CA" "$URL/ready")" = 200 ] && break
  sleep 1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CA" "$URL/ready")" = 200 ] ||
  die "node-1 not ready after 60 s"

# A key of each type, so the key, address and payment operations reach past
# "unknown key" (schemathesis links GET /api/v1/keys to them).
for protocol in taproot ecdsa; do
  "$SIGNER" dkg start --cluster "$CF" --protocol "$protocol" --threshold 2 --wait \
    --retry-secs 30 >>"$WORK/dkg.log" 2>&1 || {
    cat "$WORK/dkg.log" >&2
    die "DKG ($protocol) failed"
  }
done

# The fuzzer's own admin token, with a rate limit it will not reach; the cluster's
# admin token stays untouched for the checks below.
TOKEN=$(api "$ADMIN" -H 'Content-Type: application/json' \
  -d '{"name": "schemathesis", "role": "admin", "rate_limit_per_min": 1000000}' \
  "$URL/api/v1/tokens" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["token"])')
[ -n "$TOKEN" ] || die "cannot create the fuzzing token"

ceremonies() {
  local d a
  d=$(api "$ADMIN" "$URL/api/v1/dkg/status" | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)["ceremonies"]))')
  a=$(api "$ADMIN" "$URL/api/v1/aux-info/status" | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)["ceremonies"]))')
  echo "$d/$a"
}
BEFORE=$(ceremonies)

SEED_ARGS=()
[ -n "${FUZZ_SEED:-}" ] && SEED_ARGS=(--seed "$FUZZ_SEED")
schemathesis() {
  # In the work directory: schemathesis keeps its example database (.hypothesis)
  # in the current directory.
  (cd "$WORK" && "$ST" --no-color --config-file "$ROOT/scripts/schemathesis.toml" run \
    "$URL/api/v1/openapi.json" --url "$URL" --tls-verify "$CA" \
    -H "Authorization: Bearer $TOKEN" --checks all --workers "$WORKERS" \
    --request-timeout 30 --wait-for-schema 30 "${SEED_ARGS[@]}" "$@")
}

status=0
echo
echo "fuzz-api: run 1 of 3: every operation but the excluded ones, all phases," \
  "$EXAMPLES examples per operation"
# Excluded here (docs/API.md): DELETE /api/v1/tokens/{id} (run 3), POST
# /api/v1/dkg/start, POST /api/v1/aux-info/start and POST /api/v1/keys/{id}/reshare
# (run 2, invalid input only).
schemathesis --max-examples "$EXAMPLES" \
  --exclude-path '/api/v1/tokens/{id}' \
  --exclude-path /api/v1/dkg/start --exclude-path /api/v1/aux-info/start \
  --exclude-path '/api/v1/keys/{id}/reshare' || status=1

echo
echo "fuzz-api: run 2 of 3: ceremony starts with invalid input only (no ceremony may start)"
schemathesis --max-examples "$EXAMPLES" --mode negative --phases coverage,fuzzing \
  --include-path /api/v1/dkg/start --include-path /api/v1/aux-info/start \
  --include-path '/api/v1/keys/{id}/reshare' || status=1

echo
echo "fuzz-api: run 3 of 3: token revocation without the stateful phase, and this contract"
# schemathesis leaves out the operation that serves the schema unless it is named.
schemathesis --max-examples "$EXAMPLES" --phases examples,coverage,fuzzing \
  --include-operation-id revoke_token --include-operation-id openapi || status=1

echo
echo "fuzz-api: checking the cluster after the runs"
AFTER=$(ceremonies)
if [ "$AFTER" != "$BEFORE" ]; then
  echo "fuzz-api: FAILED: ceremonies (dkg/aux) went from $BEFORE to $AFTER: the fuzzer started one" >&2
  status=1
fi
if [ "$(api "$TOKEN" -o /dev/null -w '%{http_code}' "$URL/api/v1/whoami")" != 200 ]; then
  echo "fuzz-api: FAILED: the fuzzing token no longer works" >&2
  status=1
fi
for u in $NODES; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CA" "$u/ready")
  if [ "$code" != 200 ]; then
    echo "fuzz-api: FAILED: $u/ready answers $code after the runs" >&2
    status=1
  fi
done
if grep -l 'panicked' "$CLUSTER"/nodes/*/*.log >/dev/null 2>&1; then
  echo "fuzz-api: FAILED: a node panicked:" >&2
  grep -h 'panicked' "$CLUSTER"/nodes/*/*.log | head -5 >&2
  status=1
fi
if [ "$status" != 0 ]; then
  echo "fuzz-api: errors in the node logs (last 10):" >&2
  grep -h '"level":"ERROR"' "$CLUSTER"/nodes/*/*.log 2>/dev/null | tail -10 >&2 || true
  echo "fuzz-api: FAILED (rerun with FUZZ_KEEP=1 to keep the logs; schemathesis printed its seed)" >&2
  exit 1
fi
echo "fuzz-api: passed"
