#!/usr/bin/env bash
# Metrics cost (issue 12): one caskade-server build, standalone, with the
# Prometheus endpoint off, and on with a scraper (`curl /metrics` every
# 100 ms, one curl on a kept-alive connection) running through the whole load; set then get, 50 clients, 100 B
# values, 100 000 keys, `fsync: {every_ms: 1000}`; ROUNDS rounds,
# alternating which goes first. One JSON line per run (the `bench --json`
# fields plus `metrics`), and per "on" run one line with the scrapes done
# and their mean time. Usage: scripts/bench-metrics.sh SERVER CLI
# Env: ROUNDS (default 3), N (requests per run, default 100000), DATA.
set -euo pipefail
SERVER=$1; CLI=$2
ROUNDS=${ROUNDS:-3}; N=${N:-100000}
DATA=${DATA:-./data/bench-metrics}
run() { # off | on
  local label=$1 out pid addr maddr scraper times listen=""
  [ "$label" = on ] && listen=127.0.0.1:0
  rm -rf "$DATA/$label"; mkdir -p "$DATA"
  out=$(mktemp); times=$(mktemp)
  CASKADE_METRICS_LISTEN=$listen CASKADE_STORAGE_FSYNC='{every_ms: 1000}' \
    "$SERVER" --data-dir "$DATA/$label" --listen 127.0.0.1:0 --log-level warn >"$out" 2>/dev/null &
  pid=$!
  for _ in $(seq 100); do grep -q '^listening on ' "$out" && break; sleep 0.1; done
  addr=$(sed -n 's/^listening on //p' "$out")
  scraper=""
  if [ "$label" = on ]; then
    maddr=$(sed -n 's/^metrics on //p' "$out")
    # One curl, one kept-alive connection, 10 scrapes/s (as Prometheus
    # keeps its connections); each scrape's time on stderr.
    curl -s --rate 10/s -w '%{stderr}%{time_total}\n' "http://$maddr/metrics?[1-1000000]" \
      >/dev/null 2>>"$times" &
    scraper=$!
  fi
  for op in set get; do
    "$CLI" --addr "$addr" bench --op $op --clients 50 --requests "$N" --value-size 100 --keyspace 100000 --json \
      | sed "s/^{/{\"metrics\":\"$label\",/"
  done
  if [ -n "$scraper" ]; then
    kill "$scraper"; wait "$scraper" 2>/dev/null || true
    awk '{s+=$1; n++} END {printf "{\"scrapes\":%d,\"mean_scrape_ms\":%.2f}\n", n, 1000*s/n}' "$times"
  fi
  kill -TERM $pid; wait $pid || true; rm -f "$out" "$times"
}
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then run off; run on; else run on; run off; fi
done
