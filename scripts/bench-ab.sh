#!/usr/bin/env bash
# Side-by-side A/B of two caskade-server builds in one run, one client
# binary for both: set then get, 50 clients, 100 B values, 100 000 keys,
# under every_ms: 1000 and always; ROUNDS rounds, alternating which build
# goes first. One JSON line per run (the `bench --json` fields plus build
# and fsync). Usage: scripts/bench-ab.sh OLD_SERVER NEW_SERVER CLI
# Env: ROUNDS (default 2), N (requests per run, default 100000), DATA.
set -euo pipefail
OLD=$1; NEW=$2; CLI=$3
ROUNDS=${ROUNDS:-2}; N=${N:-100000}
DATA=${DATA:-./data/bench-ab}
run() { # label bin policy
  local label=$1 bin=$2 policy=$3 fsync out pid addr
  case $policy in every_ms) fsync='{every_ms: 1000}' ;; *) fsync=$policy ;; esac
  rm -rf "$DATA/$label-$policy"; mkdir -p "$DATA"
  out=$(mktemp)
  CASKADE_STORAGE_FSYNC=$fsync "$bin" --data-dir "$DATA/$label-$policy" --listen 127.0.0.1:0 --log-level warn >"$out" 2>/dev/null &
  pid=$!
  for _ in $(seq 100); do grep -q '^listening on ' "$out" && break; sleep 0.1; done
  addr=$(sed -n 's/^listening on //p' "$out")
  for op in set get; do
    "$CLI" --addr "$addr" bench --op $op --clients 50 --requests "$N" --value-size 100 --keyspace 100000 --json \
      | sed "s/^{/{\"build\":\"$label\",\"fsync\":\"$policy\",/"
  done
  kill -TERM $pid; wait $pid || true; rm -f "$out"
}
for r in $(seq "$ROUNDS"); do
  for policy in every_ms always; do
    if [ $((r % 2)) = 1 ]; then run old "$OLD" $policy; run new "$NEW" $policy
    else run new "$NEW" $policy; run old "$OLD" $policy; fi
  done
done
