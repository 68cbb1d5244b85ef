#!/usr/bin/env bash
# Cost of TLS and authentication (issue 13), side by side: four standalone
# caskade-server processes of one build on loopback, all up for the whole
# run, differing only in security:
#   plain     no TLS, no users
#   tls       TLS on the client listener (server certificate of a local CA)
#   tls+auth  TLS and one user (every request carries `authorization: Basic`)
#   auth      one user, no TLS
# The same `caskade-cli bench` (set then get; 1 and 50 clients, one
# connection each; 100 B values, 100 000 keys) runs against each, the four
# interleaved within every round and their order rotated by round, so a
# change of machine load hits all four alike. `fsync: {every_ms: 1000}`.
# Then the cost of a new connection: K one-shot `caskade-cli ping` runs in
# a row per configuration (a new process, TCP connection, TLS handshake and
# first authenticated request each; `bench` has no new-connection-per-request
# mode), wall time per run and server CPU time per connection.
# Prints one JSON line per bench run, the server CPU time (utime+stime,
# /proc) per request it served, then a Markdown table with medians and
# ratios to plain.
# Usage: scripts/bench-tls.sh SERVER CLI [CERTS_BIN]
# Env: ROUNDS (default 3), N (requests per bench run, default 20000),
#      N1 (requests per run with 1 client, default N/4), K (pings, default 100),
#      DATA (default ./data/bench-tls).
set -euo pipefail
SERVER=$1; CLI=$2
CERTS_BIN=${3:-$(dirname "$SERVER")/caskade-certs}
ROUNDS=${ROUNDS:-3}; N=${N:-20000}; N1=${N1:-$((N / 4))}; K=${K:-100}
DATA=${DATA:-./data/bench-tls}
CONFIGS=(plain tls tls+auth auth)
rm -rf "$DATA"; mkdir -p "$DATA"
"$CERTS_BIN" --out "$DATA/certs" --nodes node-1 --clients client >/dev/null
HASH=$(echo bench-pw | "$CLI" hash-password)
TLS_YAML="tls: {cert: $DATA/certs/node-1.pem, key: $DATA/certs/node-1.key, ca: $DATA/certs/ca.pem}"
AUTH_YAML="auth: {users: [{name: bench, password_hash: '$HASH', permissions: [read, write]}]}"
declare -A PID ADDR
cleanup() { for c in "${CONFIGS[@]}"; do [ -n "${PID[$c]:-}" ] && kill -TERM "${PID[$c]}" 2>/dev/null; done; wait 2>/dev/null || true; }
trap cleanup EXIT
for c in "${CONFIGS[@]}"; do
  d="$DATA/${c/+/-}"; mkdir -p "$d"
  { echo "node_id: node-1"
    case $c in tls|tls+auth) echo "$TLS_YAML";; esac
    case $c in auth|tls+auth) echo "$AUTH_YAML";; esac
  } >"$d/server.yaml"
  CASKADE_STORAGE_FSYNC='{every_ms: 1000}' "$SERVER" --config "$d/server.yaml" \
    --data-dir "$d/data" --listen 127.0.0.1:0 --log-level warn >"$d/out" 2>"$d/log" &
  PID[$c]=$!
  for _ in $(seq 100); do grep -q '^listening on ' "$d/out" && break; sleep 0.1; done
  ADDR[$c]=$(sed -n 's/^listening on //p' "$d/out")
  [ -n "${ADDR[$c]}" ] || { echo "server $c did not start: $(cat "$d/log")" >&2; exit 1; }
done
# The CLI's flags and environment for configuration $1.
cli() {
  local c=$1; shift
  local args=(--addr "${ADDR[$c]}")
  case $c in tls|tls+auth) args+=(--tls-ca "$DATA/certs/ca.pem");; esac
  case $c in
    auth|tls+auth) CASKADE_USER=bench CASKADE_PASSWORD=bench-pw "$CLI" "${args[@]}" "$@";;
    *) env -u CASKADE_USER -u CASKADE_PASSWORD "$CLI" "${args[@]}" "$@";;
  esac
}
# Every configuration answers before anything is measured.
for c in "${CONFIGS[@]}"; do cli "$c" ping >/dev/null; done
RESULTS="$DATA/results.jsonl"; : >"$RESULTS"
for r in $(seq "$ROUNDS"); do
  # Rotate the order: round 1 plain first, round 2 tls first, ...
  order=("${CONFIGS[@]:$(((r - 1) % 4))}" "${CONFIGS[@]:0:$(((r - 1) % 4))}")
  for clients in 1 50; do
    n=$N; [ "$clients" = 1 ] && n=$N1
    for op in set get; do
      for c in "${order[@]}"; do
        cli "$c" bench --op $op --clients "$clients" --requests "$n" --value-size 100 \
          --keyspace 100000 --json </dev/null | sed "s/^{/{\"config\":\"$c\",\"round\":$r,/" |
          tee -a "$RESULTS"
      done
    done
  done
done
TCK=$(getconf CLK_TCK)
SERVED=$((ROUNDS * 2 * (N + N1)))
for c in "${CONFIGS[@]}"; do
  awk -v n="$SERVED" -v t="$TCK" -v c="$c" \
    '{printf "{\"config\":\"%s\",\"server_cpu_us_per_request\":%.1f}\n", c, ($14+$15)/t*1e6/n}' \
    "/proc/${PID[$c]}/stat" | tee -a "$RESULTS"
done
# New connections: K one-shot pings per configuration, interleaved in
# blocks of 10; wall time per run, and the server's CPU time per
# connection (TLS handshake, credential check, HTTP/2 set-up, one Ping).
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
declare -A CONN_NS CONN_TICKS
# (CPU over the whole phase: the ticks are 10 ms; idle servers in between
# spend next to nothing.)
for c in "${CONFIGS[@]}"; do CONN_NS[$c]=0; CONN_TICKS[$c]=$(cpu_ticks "${PID[$c]}"); done
for _ in $(seq $((K / 10))); do
  for c in "${CONFIGS[@]}"; do
    t0=$(date +%s%N)
    for _ in $(seq 10); do cli "$c" ping >/dev/null; done
    CONN_NS[$c]=$((CONN_NS[$c] + $(date +%s%N) - t0))
  done
done
for c in "${CONFIGS[@]}"; do CONN_TICKS[$c]=$(($(cpu_ticks "${PID[$c]}") - CONN_TICKS[$c])); done
for c in "${CONFIGS[@]}"; do
  awk -v ns="${CONN_NS[$c]}" -v ticks="${CONN_TICKS[$c]}" -v t="$TCK" -v k="$(((K / 10) * 10))" -v c="$c" \
    'BEGIN {printf "{\"config\":\"%s\",\"one_shot_ping_ms\":%.2f,\"server_cpu_us_per_connection\":%.0f}\n", c, ns/k/1e6, ticks/t*1e6/k}' |
    tee -a "$RESULTS"
done
python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
configs = ["plain", "tls", "tls+auth", "auth"]
def med(xs): return statistics.median(xs) if xs else float("nan")
print()
print("| measure | " + " | ".join(configs) + " | " + " | ".join(f"{c}/plain" for c in configs[1:]) + " |")
print("|---|" + "---|" * (2 * len(configs) - 1))
for clients in (1, 50):
    for op in ("set", "get"):
        for field, label, scale in (("ops_per_sec", "k ops/s", 1e-3), ("p50_us", "p50 µs", 1)):
            vals = {c: med([r[field] for r in rows if r.get("config") == c and r.get("op") == op
                            and r.get("clients") == clients]) for c in configs}
            errs = sum(r.get("errors", 0) for r in rows if r.get("op") == op and r.get("clients") == clients)
            assert errs == 0, f"{errs} errors in {op} {clients}"
            print(f"| {op}, {clients} client{'s' if clients > 1 else ''}, {label} (median) | "
                  + " | ".join(f"{vals[c] * scale:.1f}" for c in configs) + " | "
                  + " | ".join(f"{vals[c] / vals['plain']:.2f}x" for c in configs[1:]) + " |")
for field, label in (("server_cpu_us_per_request", "server CPU per request, µs"),
                     ("one_shot_ping_ms", "one-shot `ping` (new process + connection), ms"),
                     ("server_cpu_us_per_connection", "server CPU per new connection + `Ping`, µs")):
    vals = {c: next(r[field] for r in rows if r.get("config") == c and field in r) for c in configs}
    print(f"| {label} | " + " | ".join(f"{vals[c]:.2f}" if field == "one_shot_ping_ms" else f"{vals[c]:.1f}" for c in configs)
          + " | " + " | ".join(f"{vals[c] / vals['plain']:.2f}x" for c in configs[1:]) + " |")
EOF
