#!/usr/bin/env bash
# Cost of authentication (issue 13): one caskade-server build, standalone,
# with no users (auth off) and with one user (auth on: every gRPC request
# carries `authorization: Basic ...`, checked against the per-user cache of
# the verified password; the first request of the run pays one argon2
# verification). set then get, 50 clients, 100 B values, 100 000 keys,
# `fsync: {every_ms: 1000}`; ROUNDS rounds, alternating which goes first.
# One JSON line per run (the `bench --json` fields plus `auth`), and per
# server one line with its CPU time (utime+stime, /proc) per request served:
# precise even when other processes load the cores.
# Usage: scripts/bench-auth.sh SERVER CLI
# Env: ROUNDS (default 3), N (requests per run, default 100000), DATA.
set -euo pipefail
SERVER=$1; CLI=$2
ROUNDS=${ROUNDS:-3}; N=${N:-100000}
DATA=${DATA:-./data/bench-auth}
mkdir -p "$DATA"
HASH=$(echo bench-pw | "$CLI" hash-password)
printf 'auth:\n  users:\n    - {name: bench, password_hash: %s, permissions: [read, write]}\n' \
  "'$HASH'" >"$DATA/on.yaml"
: >"$DATA/off.yaml"
run() { # off | on
  local label=$1 out pid addr
  rm -rf "$DATA/$label"
  out=$(mktemp)
  CASKADE_STORAGE_FSYNC='{every_ms: 1000}' \
    "$SERVER" --config "$DATA/$label.yaml" --data-dir "$DATA/$label" --listen 127.0.0.1:0 \
    --log-level warn >"$out" 2>/dev/null &
  pid=$!
  for _ in $(seq 100); do grep -q '^listening on ' "$out" && break; sleep 0.1; done
  addr=$(sed -n 's/^listening on //p' "$out")
  for op in set get; do
    if [ "$label" = on ]; then
      CASKADE_USER=bench CASKADE_PASSWORD=bench-pw "$CLI" --addr "$addr" bench --op $op \
        --clients 50 --requests "$N" --value-size 100 --keyspace 100000 --json
    else
      env -u CASKADE_USER -u CASKADE_PASSWORD "$CLI" --addr "$addr" bench --op $op \
        --clients 50 --requests "$N" --value-size 100 --keyspace 100000 --json
    fi | sed "s/^{/{\"auth\":\"$label\",/"
  done
  local tck; tck=$(getconf CLK_TCK)
  awk -v n="$((2 * N))" -v t="$tck" -v l="$label" \
    '{printf "{\"auth\":\"%s\",\"server_cpu_us_per_request\":%.1f}\n", l, ($14+$15)/t*1e6/n}' \
    "/proc/$pid/stat"
  kill -TERM $pid; wait $pid || true; rm -f "$out"
}
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then run off; run on; else run on; run off; fi
done
