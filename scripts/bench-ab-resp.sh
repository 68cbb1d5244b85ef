#!/usr/bin/env bash
# A/B of two caskade-server builds over RESP, in one run: both servers are
# up at once (fresh data directories under /tmp, free loopback ports, 8
# partitions unless PARTS says otherwise), their keys are preloaded with
# SETs, then each round runs the same redis-benchmark against each build,
# alternating which goes first. One line per run:
#     BUILD TEST OPS_PER_SEC SERVER_CPU_US_PER_REQUEST
# (server CPU = utime + stime of the server process, /proc/PID/stat), so
# the two builds are compared side by side, never against another day's
# figure. Kills both servers on exit.
#
# Usage: scripts/bench-ab-resp.sh OLD_SERVER NEW_SERVER POLICY PIPELINE ROUNDS [TESTS]
#   POLICY: every_ms (every_ms: 1000) or always; TESTS: "set get" (default)
# Env: N (requests per run, 200000), PARTS (partitions, 8), XTRA (more
#      server YAML, appended to the config).
set -euo pipefail
[ $# -ge 5 ] || { sed -n '2,15p' "$0" >&2; exit 2; }
OLD=$1; NEW=$2; POLICY=$3; P=$4; ROUNDS=$5; TESTS=${6:-"set get"}
N=${N:-200000}
command -v redis-benchmark >/dev/null || { echo "redis-benchmark missing: make deps" >&2; exit 2; }
case $POLICY in
  every_ms) F='{every_ms: 1000}' ;;
  always) F=always ;;
  *) echo "unknown POLICY '$POLICY' (every_ms, always)" >&2; exit 2 ;;
esac
W=$(mktemp -d /tmp/bench-ab-resp.XXXXXX)
declare -A PID PORT
cleanup() {
  for b in "${!PID[@]}"; do kill "${PID[$b]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
for b in old new; do
  bin=$OLD; [ $b = new ] && bin=$NEW
  mkdir -p "$W/$b"; rp=$(free_port); gp=$(free_port)
  cat >"$W/$b/server.yaml" <<YAML
node_id: $b
listen: 127.0.0.1:$gp
data_dir: $W/$b/data
partitions: ${PARTS:-8}
log_level: warn
storage:
  fsync: $F
resp:
  listen: 127.0.0.1:$rp
${XTRA:-}
YAML
  "$bin" --config "$W/$b/server.yaml" >"$W/$b/log" 2>&1 </dev/null &
  PID[$b]=$!; PORT[$b]=$rp
done
for b in old new; do
  for _ in $(seq 100); do
    [ "$(redis-cli -p "${PORT[$b]}" ping 2>/dev/null)" = PONG ] && break
    kill -0 "${PID[$b]}" 2>/dev/null || { cat "$W/$b/log" >&2; exit 1; }
    sleep 0.1
  done
  # Every key of the keyspace exists, so GETs find values.
  redis-benchmark -p "${PORT[$b]}" -t set -n 300000 -c 50 -d 100 -r 100000 -P 16 -q >/dev/null 2>&1
done
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
hz=$(getconf CLK_TCK)
for r in $(seq "$ROUNDS"); do
  order="old new"; [ $((r % 2)) = 0 ] && order="new old"
  for t in $TESTS; do
    for b in $order; do
      t0=$(ticks "${PID[$b]}")
      rps=$(redis-benchmark -p "${PORT[$b]}" -t "$t" -n "$N" -c 50 -d 100 -r 100000 -P "$P" --csv 2>/dev/null |
        awk -F'","' 'NR == 2 {print $2}')
      t1=$(ticks "${PID[$b]}")
      awk -v b=$b -v t="$t" -v r="$rps" -v d=$((t1 - t0)) -v hz="$hz" -v n="$N" \
        'BEGIN {printf "%s %s %s %.2f\n", b, t, r, d / hz * 1e6 / n}'
    done
  done
done
