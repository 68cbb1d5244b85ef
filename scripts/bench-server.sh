#!/usr/bin/env bash
# Benchmarks a release standalone server with `caskade-cli bench`, as
# reported in docs/BENCHMARKS.md ("Server (issue 3)"): for each fsync policy,
# ping, set and get with 100 B values, 1 and 50 clients. Client and server
# run on this machine and share its cores. Prints one JSON object per run,
# with the policy added, on stdout.
#
# Usage: scripts/bench-server.sh [policy ...]   (default: always every_ms never)
# Env: N1 (requests with 1 client, default 20000), N50 (with 50, default 200000),
#      DATA (data directory root, default ./data/bench; must be on a real disk),
#      CONNECTIONS (HTTP/2 connections the 50 clients share; default: one each),
#      BIN_DIR (binaries; default: the release directory of cargo's target dir).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin caskade-server -p caskade -p caskade-cli >&2
# The build's real output directory (CARGO_TARGET_DIR, .cargo/config, or
# ./target), as cargo itself resolves it.
BIN_DIR=${BIN_DIR:-$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/release}
N1=${N1:-20000}
N50=${N50:-200000}
DATA=${DATA:-./data/bench}
policies=("$@")
[ ${#policies[@]} -eq 0 ] && policies=(always every_ms never)

for policy in "${policies[@]}"; do
  case $policy in
    every_ms) fsync='{every_ms: 1000}' ;;
    *) fsync=$policy ;;
  esac
  rm -rf "$DATA/$policy"
  mkdir -p "$DATA"
  out=$(mktemp)
  CASKADE_STORAGE_FSYNC=$fsync "$BIN_DIR/caskade-server" \
    --data-dir "$DATA/$policy" --listen 127.0.0.1:0 --log-level warn >"$out" 2>&2 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  for _ in $(seq 100); do grep -q '^listening on ' "$out" && break; sleep 0.1; done
  addr=$(sed -n 's/^listening on //p' "$out")
  [ -n "$addr" ] || { echo "server did not start" >&2; exit 1; }
  for clients in 1 50; do
    n=$([ "$clients" = 1 ] && echo "$N1" || echo "$N50")
    conns=()
    [ "$clients" != 1 ] && [ -n "${CONNECTIONS:-}" ] && conns=(--connections "$CONNECTIONS")
    # set before get, so gets find their keys (keyspace 100000)
    for op in ping set get; do
      "$BIN_DIR/caskade-cli" --addr "$addr" bench --op "$op" --clients "$clients" \
        --requests "$n" --value-size 100 --keyspace 100000 "${conns[@]}" --json \
        | sed "s/^{/{\"fsync\":\"$policy\",/"
    done
  done
  kill -TERM "$pid"; wait "$pid" || true
  trap - EXIT
  rm -f "$out"
done
