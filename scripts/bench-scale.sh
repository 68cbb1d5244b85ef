#!/usr/bin/env bash
# The controller at scale (issue 12): a three-node cluster with PARTITIONS
# partitions (default 1000), replication factor 3, measured for
#   0. baseline: the same three nodes with BASE_PARTITIONS (default 8)
#      partitions: threads, open files, RSS and idle CPU per node (IDLE_S,
#      default 10 s), and acks: all SET throughput (`caskade-cli bench`,
#      50 clients, BENCH_N requests, default 100000);
#   1. startup: launch of the three nodes until every partition has a
#      leader and a full ISR; then the same figures as the baseline, and
#      the throughput as a ratio to it;
#   2. controlled shutdown: SIGTERM on a node that is not the controller
#      (it leads ~PARTITIONS/3) while `caskade-cli load` writes with
#      acks: all; the node's own figure ("N of N leaderships moved in X
#      ms"), the time until the process exited, and the failed writes
#      (must be 0), then every acknowledged write verified;
#   3. controller failover: the node restarted, ISRs full again and
#      leaders back on their preferred replicas, then SIGKILL of the
#      controller; (a) kill -> new controller elected (the session
#      timeout, SESSION_MS), (b) elected -> the last partition led by the
#      killed node taken over ("leading at epoch" in the survivors' logs).
#
# Usage: scripts/bench-scale.sh            (PARTITIONS=1000 SESSION_MS=6000)
#        PARTITIONS=300 scripts/bench-scale.sh
# Needs release binaries (BIN_DIR, default ./target/release) and the
# Debian zookeeper package. Runs its own ZooKeeper on 127.0.0.1:2191 and
# nodes on 127.0.0.1:7391-7393 (replication 7491-7493), data and logs in
# ./data/bench-scale (wiped first). Everything it started is stopped at
# the end.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly PARTITIONS=${PARTITIONS:-1000}
readonly SESSION_MS=${SESSION_MS:-6000}
readonly LOAD_KEYS=${LOAD_KEYS:-60000}
readonly BIN_DIR=${BIN_DIR:-./target/release}
readonly SERVER=$BIN_DIR/caskade-server
readonly CLI=$BIN_DIR/caskade-cli
readonly DIR=./data/bench-scale
readonly ZK_PORT=2191
readonly NODES=(1 2 3)

[ -x "$SERVER" ] && [ -x "$CLI" ] || { echo "bench-scale.sh: build first: cargo build --release" >&2; exit 1; }

now() { date +%s.%N; }
ms_since() { python3 -c "import sys; print(round((float(sys.argv[2]) - float(sys.argv[1])) * 1000))" "$1" "$(now)"; }
addr() { echo "127.0.0.1:739$1"; }
log() { echo "$DIR/node$1.log"; }

cleanup() {
  for n in "${NODES[@]}"; do
    [ -f "$DIR/node$n.pid" ] && kill -KILL "$(cat "$DIR/node$n.pid")" 2>/dev/null || true
  done
  scripts/zk.sh stop "$DIR/zk" >/dev/null 2>&1 || true
}
trap cleanup EXIT

launch() {
  local n=$1
  CASKADE_PARTITIONS=${P:-$PARTITIONS} \
  CASKADE_CLUSTER_NAME=${NAME:-bench-scale} \
  CASKADE_CLUSTER_ZK_CONNECT=127.0.0.1:$ZK_PORT \
  CASKADE_CLUSTER_SESSION_TIMEOUT_MS=$SESSION_MS \
  CASKADE_CLUSTER_REPLICATION_LISTEN=127.0.0.1:749$n \
  CASKADE_LOG_LEVEL=info \
    nohup "$SERVER" --config "conf/cluster/node$n.yaml" --listen "$(addr "$n")" \
      --data-dir "${DATA:-$DIR}/node$n" </dev/null >>"$(log "$n")" 2>&1 &
  echo $! >"$DIR/node$n.pid"
  disown
}

# The cluster as JSON from the first node in "$@" that answers.
view() {
  local n
  for n in "$@"; do
    "$CLI" --addr "$(addr "$n")" --timeout-ms 5000 cluster --json 2>/dev/null && return 0
  done
  return 1
}

# Waits until every partition has a leader and a full ISR (and, with
# "preferred", is led by its first replica), asking nodes "$@".
wait_full() {
  local want=$1; shift
  local deadline=$((SECONDS + 300))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if view "$@" | python3 -c '
import json, sys
v = json.load(sys.stdin)
want, n = sys.argv[1], int(sys.argv[2])
ps = v["partitions"]
ok = len(ps) == n and all(p["leader"] and len(p["isr"]) == len(p["replicas"]) for p in ps)
if want == "preferred":
    ok = ok and all(p["leader"] == p["replicas"][0] for p in ps)
sys.exit(0 if ok else 1)' "$want" "${P:-$PARTITIONS}" 2>/dev/null; then
      return 0
    fi
    sleep 0.5
  done
  echo "bench-scale.sh: partitions not led with a full ISR after 300 s" >&2
  exit 1
}

controller_of() {
  view "$@" | python3 -c 'import json,sys; v=json.load(sys.stdin); print([n["id"] for n in v["nodes"] if n.get("controller")][0])'
}

leaders_of() {
  local id=$1; shift
  view "$@" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(sum(1 for p in v["partitions"] if p["leader"]==sys.argv[1]))' "$id"
}

rm -rf "$DIR"
mkdir -p "$DIR"
scripts/zk.sh start "$DIR/zk" "$ZK_PORT" >/dev/null
echo "== $PARTITIONS partitions, replication factor 3, 3 nodes, session timeout $SESSION_MS ms"

# Per node: threads, open files, RSS, and CPU used while idle for IDLE_S
# seconds (percent of one core, from /proc/PID/stat utime + stime).
costs() {
  local n pid
  declare -A before
  for n in "${NODES[@]}"; do
    pid=$(cat "$DIR/node$n.pid")
    before[$n]=$(awk '{print $14 + $15}' /proc/"$pid"/stat)
  done
  sleep "${IDLE_S:-10}"
  for n in "${NODES[@]}"; do
    pid=$(cat "$DIR/node$n.pid")
    local ticks=$(( $(awk '{print $14 + $15}' /proc/"$pid"/stat) - before[$n] ))
    echo "  node$n: threads $(ls /proc/"$pid"/task | wc -l), open files $(ls /proc/"$pid"/fd | wc -l), RSS $(awk '/VmRSS/ {print $2 " " $3}' /proc/"$pid"/status), idle CPU $(python3 -c "import sys; print(round(int(sys.argv[1]) * 100 / $(getconf CLK_TCK) / ${IDLE_S:-10}, 1))" "$ticks") % of a core"
  done
}

# acks: all SETs, 50 clients, BENCH_N requests of 100 bytes through node 1
# (the client routes each key to its leader); prints ops/s.
throughput() {
  "$CLI" --addr "$(addr 1)" --timeout-ms 10000 --acks all bench --op set --clients 50 \
    -n "${BENCH_N:-100000}" --value-size 100 --keyspace 100000 --json |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(r["ops_per_sec"]), r["errors"])'
}

# 0. The same three nodes with BASE_PARTITIONS (default 8) partitions, for
# the side-by-side figures (per-node cost and acks: all throughput).
P=${BASE_PARTITIONS:-8} NAME=bench-scale-base DATA=$DIR/base
export P NAME DATA
for n in "${NODES[@]}"; do launch "$n"; done
wait_full any 1 2 3
echo "baseline: ${P} partitions led with a full ISR; idle ${IDLE_S:-10} s:"
costs
read -r base_ops base_err <<<"$(throughput)"
echo "  acks: all set throughput, ${P} partitions: $base_ops ops/s ($base_err errors)"
for n in "${NODES[@]}"; do kill -KILL "$(cat "$DIR/node$n.pid")"; done
sleep 1
unset P NAME DATA

# 1. Startup.
t0=$(now)
for n in "${NODES[@]}"; do launch "$n"; done
wait_full any 1 2 3
echo "startup: every partition led with a full ISR after $(ms_since "$t0") ms; idle ${IDLE_S:-10} s:"
costs
read -r ops err <<<"$(throughput)"
echo "  acks: all set throughput, $PARTITIONS partitions: $ops ops/s ($err errors); $(python3 -c "import sys; print(round(int(sys.argv[1]) / int(sys.argv[2]), 2))" "$ops" "$base_ops")x the ${BASE_PARTITIONS:-8}-partition cluster"

# 2. Controlled shutdown of a node that is not the controller, SHUTDOWNS
# times (default 3), each followed by a restart and full ISRs with leaders
# back on their preferred replicas.
ctrl=$(controller_of 1 2 3)
for run in $(seq 1 "${SHUTDOWNS:-3}"); do
  victim=""
  for n in "${NODES[@]}"; do
    [ "node-$n" != "$ctrl" ] && [ "$n" != "${last_victim:-}" ] && { victim=$n; break; }
  done
  last_victim=$victim
  other=1; [ "$victim" = 1 ] && other=2
  led=$(leaders_of "node-$victim" 1 2 3)
  echo "controlled shutdown $run: node-$victim (leads $led partitions; controller $ctrl) under acks: all load"
  "$CLI" --addr "$(addr "$other")" --timeout-ms 10000 load --keys "$LOAD_KEYS" --clients 16 \
    --acks all --prefix "cs$run:" --record "$DIR/acked$run.tsv" --allow-errors \
    >"$DIR/load$run.out" 2>"$DIR/load$run.err" &
  load_pid=$!
  sleep 1.5
  pid=$(cat "$DIR/node$victim.pid")
  t1=$(now)
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
  echo "  SIGTERM -> process exited: $(ms_since "$t1") ms"
  # The figure means something only if the load spans the shutdown.
  if kill -0 "$load_pid" 2>/dev/null; then
    echo "  the load was still writing when the process exited"
  else
    echo "  WARNING: the load ended before the node exited: raise LOAD_KEYS"
  fi
  grep -h "controlled shutdown: writes settled\|controlled shutdown:.*leaderships moved" "$(log "$victim")" \
    | tail -2 | cut -c29- | sed 's/^/  node log: /'
  wait "$load_pid" || true
  echo "  load: $(cat "$DIR/load$run.out") $(grep -h '(error)' "$DIR/load$run.err" || echo '(0 writes failed)')"
  "$CLI" --addr "$(addr "$other")" verify --record "$DIR/acked$run.tsv" | tail -1 | sed 's/^/  /'
  launch "$victim"
  wait_full preferred 1 2 3
done

# 3. Controller failover.
ctrl=$(controller_of 1 2 3)
cn=${ctrl#node-}
led=$(leaders_of "$ctrl" 1 2 3)
survivors=()
for n in "${NODES[@]}"; do [ "$n" != "$cn" ] && survivors+=("$n"); done
echo "controller failover: SIGKILL of $ctrl (leads $led partitions)"
t2=$(now)
kill -KILL "$(cat "$DIR/node$cn.pid")"
wait_full_led() {
  local deadline=$((SECONDS + 120))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if view "${survivors[@]}" | python3 -c '
import json, sys
v = json.load(sys.stdin)
sys.exit(0 if all(p["leader"] and p["leader"] != sys.argv[1] for p in v["partitions"]) else 1)' "$ctrl" 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  echo "bench-scale.sh: partitions still led by $ctrl after 120 s" >&2
  exit 1
}
wait_full_led
python3 - "$t2" "${survivors[@]/#/$DIR/node}" <<'EOF'
import sys, datetime
t_kill = float(sys.argv[1])
def ts(line):
    return datetime.datetime.strptime(line[:26] + "Z", "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()
elected, leading = None, []
for base in sys.argv[2:]:
    for line in open(base + ".log", errors="replace"):
        if not line[:4].isdigit():
            continue
        t = ts(line)
        if t < t_kill:
            continue
        if "elected controller" in line:
            elected = t if elected is None else min(elected, t)
        if "leading at epoch" in line:
            leading.append(t)
if elected is None:
    print("  no controller elected?"); sys.exit(1)
print(f"  (a) SIGKILL -> new controller elected: {round((elected - t_kill) * 1000)} ms")
after = [t for t in leading if t >= elected]
print(f"  (b) elected -> last of {len(after)} partitions led again: {round((max(after) - elected) * 1000)} ms")
EOF
