#!/usr/bin/env bash
# Cluster benchmark of issue 4, as reported in docs/BENCHMARKS.md
# ("Cluster (issue 4)"). Self-contained: builds release, starts a throwaway
# ZooKeeper on a free port (scripts/zk.sh) and every server it measures in a
# temporary directory on disk, and stops all of them on exit (trap), also
# on Ctrl-C or failure.
#
# For each fsync policy (POLICIES), in one run and side by side:
#   - a standalone `caskade-server` (no cluster section; same partitions and
#     fsync policy): bench set (acks all, which standalone satisfies
#     locally), then get;
#   - three cluster nodes on loopback (free ports, session_timeout_ms 2000,
#     replication_factor 3, min_insync 2, otherwise conf/cluster/'s
#     values): bench set acks leader, set acks all, then get.
#   Both run ROUNDS times, alternating which goes first. Every bench is
#     caskade-cli --addr ADDR bench --op OP [--acks A] --clients 50 \
#       --requests N --value-size 100 --keyspace 100000 --json
#   Gets run after the set passes of the same round, over the same
#   keyspace (most keys exist; a get of an absent one answers nil).
# Then, on a fresh cluster (fsync FAILOVER_FSYNC), TRIALS failover trials:
#   find the leader of partition (trial mod PARTITIONS) with
#   `caskade-cli cluster --json`, run
#     caskade-cli --addr SURVIVOR --timeout-ms 1000 probe --partition P \
#       --kill-pid LEADER_PID --acks all --via forward --json
#   (SIGKILLs the leader, times the first write acknowledged after it),
#   restart the killed node and wait until every ISR is full and every
#   partition is led by its preferred replica again. CLIENT_TRIALS more
#   trials use `--via client` (the routing client, with its retry backoff).
#
# Output: progress on stderr; raw JSON lines and the node logs under the
# work directory (kept with KEEP=1); summary tables (markdown) on stdout.
#
# Env: N (requests per bench, default 200000), CLIENTS (50), ROUNDS (3),
#      POLICIES ("every_ms always": every_ms means {every_ms: 1000}),
#      PARTITIONS (8), TRIALS (5), CLIENT_TRIALS (3), FAILOVER_FSYNC
#      (every_ms), SESSION_TIMEOUT_MS (2000), SKIP_BUILD=1, KEEP=1,
#      TMPDIR (work directory's parent; must be on a real disk).
set -euo pipefail

cd "$(dirname "$0")/.."

readonly N=${N:-200000}
readonly CLIENTS=${CLIENTS:-50}
readonly ROUNDS=${ROUNDS:-3}
readonly POLICIES=${POLICIES:-"every_ms always"}
readonly PARTITIONS=${PARTITIONS:-8}
readonly TRIALS=${TRIALS:-5}
readonly CLIENT_TRIALS=${CLIENT_TRIALS:-3}
readonly FAILOVER_FSYNC=${FAILOVER_FSYNC:-every_ms}
readonly SESSION_TIMEOUT_MS=${SESSION_TIMEOUT_MS:-2000}
readonly KEYSPACE=100000
readonly VALUE_SIZE=100
readonly BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-./target}/release}
readonly SERVER=$BIN_DIR/caskade-server
readonly CLI=$BIN_DIR/caskade-cli

log() { echo "bench-cluster: $*" >&2; }
die() {
  echo "bench-cluster: FAILED: $*" >&2
  exit 1
}

command -v jq >/dev/null 2>&1 || die "jq is needed: apt-get install jq"

if [ "${SKIP_BUILD:-}" != 1 ]; then
  log "building release"
  cargo build --release -p caskade -p caskade-cli --bins >&2
fi
[ -x "$SERVER" ] && [ -x "$CLI" ] || die "$SERVER or $CLI missing"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/caskade-bench-cluster.XXXXXX")
readonly WORK
RESULTS=$WORK/results.jsonl
FAILOVERS=$WORK/failover.jsonl
: >"$RESULTS"
: >"$FAILOVERS"

# Every server we start (PIDS: standalone, node1..3 per cluster), clean-up
# on exit and free_port.
. scripts/lib-bench.sh

fsync_yaml() {
  case $1 in
    every_ms) echo '{every_ms: 1000}' ;;
    always | never) echo "$1" ;;
    *) die "unknown fsync policy '$1' (every_ms, always, never)" ;;
  esac
}

# start_server NAME CONFIG LOG: launches caskade-server, records its pid.
start_server() {
  "$SERVER" --config "$2" </dev/null >>"$3" 2>&1 &
  PIDS[$1]=$!
}

# wait_ping ADDR NAME: until ADDR answers ping (30 s).
wait_ping() {
  local deadline=$((SECONDS + 30))
  until "$CLI" --addr "$1" --timeout-ms 1000 ping >/dev/null 2>&1; do
    kill -0 "${PIDS[$2]}" 2>/dev/null || die "$2 exited during startup; see $WORK"
    [ "$SECONDS" -lt "$deadline" ] || die "$2 does not answer on $1 after 30 s"
    sleep 0.1
  done
}

stop_server() {
  local pid=${PIDS[$1]:-}
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "PIDS[$1]"
}

# --- standalone ------------------------------------------------------------

# start_standalone POLICY: sets SA_ADDR.
start_standalone() {
  local dir=$WORK/standalone-$1
  mkdir -p "$dir"
  free_port
  SA_ADDR=127.0.0.1:$PORT
  cat >"$dir/server.yaml" <<EOF
node_id: standalone
listen: $SA_ADDR
data_dir: $dir/data
partitions: $PARTITIONS
log_level: info
engine: bitcask
default_acks: all
storage:
  fsync: $(fsync_yaml "$1")
EOF
  start_server standalone "$dir/server.yaml" "$dir/server.log"
  wait_ping "$SA_ADDR" standalone
  log "standalone ($1) on $SA_ADDR, pid ${PIDS[standalone]}"
}

# --- cluster ---------------------------------------------------------------

declare -a NODE_ADDR=() NODE_CONF=() NODE_LOG=()

# cluster_json [node numbers...]: the merged view from the first that answers.
cluster_json() {
  local n
  for n in "${@:-1 2 3}"; do
    if "$CLI" --addr "${NODE_ADDR[$n]}" --timeout-ms 2000 cluster --json 2>/dev/null; then
      return 0
    fi
  done
  return 1
}

# Node number of node id node-N.
node_num() { echo "${1#node-}"; }

# wait_healthy: every node up, every partition led by its preferred
# replica, every ISR holding all three replicas (60 s).
wait_healthy() {
  local deadline=$((SECONDS + 60)) json bad
  while :; do
    if json=$(cluster_json 1 2 3); then
      bad=$(jq '([.nodes[] | select(.status != "up")] | length)
                + ([.partitions[] | select(.leader == null or .leader != .replicas[0]
                                            or (.isr | length) != 3)] | length)' <<<"$json")
      if [ "$(jq '.partitions | length' <<<"$json")" -eq "$PARTITIONS" ] && [ "$bad" -eq 0 ]; then
        return 0
      fi
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$json" >&2
      die "cluster not healthy after 60 s (nodes down, leaders missing or not preferred, or ISR not full)"
    fi
    sleep 0.25
  done
}

# start_cluster POLICY TAG: three fresh nodes in WORK/cluster-TAG.
start_cluster() {
  local policy=$1 tag=$2 dir=$WORK/cluster-$2 n zk_port
  mkdir -p "$dir"
  if [ ! -f "$WORK/zk/zk.pid" ]; then
    free_port
    zk_port=$PORT
    scripts/zk.sh start "$WORK/zk" "$zk_port" >&2
    ZK_CONNECT=127.0.0.1:$zk_port
  fi
  for n in 1 2 3; do
    free_port
    NODE_ADDR[n]=127.0.0.1:$PORT
    free_port
    local repl_port=$PORT
    NODE_CONF[n]=$dir/node$n.yaml
    NODE_LOG[n]=$dir/node$n.log
    cat >"${NODE_CONF[n]}" <<EOF
node_id: node-$n
listen: ${NODE_ADDR[n]}
data_dir: $dir/node$n
partitions: $PARTITIONS
log_level: info
engine: bitcask
default_acks: all
default_consistency: leader
storage:
  fsync: $(fsync_yaml "$policy")
cluster:
  name: bench-$tag
  zk_connect: $ZK_CONNECT
  session_timeout_ms: $SESSION_TIMEOUT_MS
  replication_listen: 127.0.0.1:$repl_port
  replication_factor: 3
  min_insync: 2
  replica_lag_ms: 10000
  unclean_leader_election: false
  preferred_leader_rebalance: true
  fetch_max_wait_ms: 500
  fetch_max_bytes: 1048576
EOF
  done
  for n in 1 2 3; do start_server "node$n" "${NODE_CONF[n]}" "${NODE_LOG[n]}"; done
  for n in 1 2 3; do wait_ping "${NODE_ADDR[n]}" "node$n"; done
  wait_healthy
  log "cluster $tag ($policy) on ${NODE_ADDR[1]}, ${NODE_ADDR[2]}, ${NODE_ADDR[3]} (ZooKeeper $ZK_CONNECT)"
}

stop_cluster() {
  local n
  for n in 1 2 3; do stop_server "node$n"; done
}

# --- benches ---------------------------------------------------------------

# bench POLICY ROUND SYSTEM ADDR OP [ACKS]: one run, appended to RESULTS.
bench() {
  local policy=$1 round=$2 system=$3 addr=$4 op=$5 acks=${6:-} out
  local args=(--op "$op" --clients "$CLIENTS" --requests "$N" --value-size "$VALUE_SIZE"
    --keyspace "$KEYSPACE" --json)
  [ -n "$acks" ] && args+=(--acks "$acks")
  local names=() cpu0 cpu1 client_cpu timing
  if [ "$system" = standalone ]; then names=(standalone); else names=(node1 node2 node3); fi
  log "round $round, $policy, $system: bench ${args[*]}"
  cpu0=$(cpu_ticks "${names[@]}")
  timing=$WORK/time.out
  out=$( { TIMEFORMAT='%U %S'; time "$CLI" --addr "$addr" --timeout-ms 10000 bench "${args[@]}" 2>&1; } 2>"$timing") ||
    die "bench failed ($system $op $acks): $out"
  cpu1=$(cpu_ticks "${names[@]}")
  client_cpu=$(awk '{printf "%.3f", $1 + $2}' "$timing")
  jq -c --arg p "$policy" --argjson r "$round" --arg s "$system" \
    --argjson sc "$(((cpu1 - cpu0) * 10))" --argjson cc "$client_cpu" \
    '{fsync: $p, round: $r, system: $s} + .
     + {server_cpu_us_per_op: ($sc * 1000 / .requests), client_cpu_us_per_op: ($cc * 1e6 / .requests)}' \
    <<<"$out" >>"$RESULTS"
  tail -n1 "$RESULTS" | jq -r '"  \(.ops_per_sec | floor) ops/s, p50 \(.p50_us) us, p99 \(.p99_us) us, errors \(.errors), CPU/op: servers \(.server_cpu_us_per_op | floor) us, client \(.client_cpu_us_per_op | floor) us"' >&2
}

# cpu_ticks NAME...: user + system CPU of those servers, in clock ticks
# (1/100 s: CLK_TCK is 100 on Linux).
cpu_ticks() {
  local name total=0 t
  for name in "$@"; do
    t=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/${PIDS[$name]}/stat")
    total=$((total + t))
  done
  echo "$total"
}

standalone_pass() {
  bench "$1" "$2" standalone "$SA_ADDR" set
  bench "$1" "$2" standalone "$SA_ADDR" get
}

cluster_pass() {
  bench "$1" "$2" cluster "${NODE_ADDR[1]}" set leader
  bench "$1" "$2" cluster "${NODE_ADDR[1]}" set all
  bench "$1" "$2" cluster "${NODE_ADDR[1]}" get
}

# --- failover --------------------------------------------------------------

# failover_trial TRIAL VIA
failover_trial() {
  local trial=$1 via=$2 p json leader victim survivor controller pid out new_leader
  p=$(((trial - 1) % PARTITIONS))
  wait_healthy
  json=$(cluster_json 1 2 3) || die "no node answers"
  leader=$(jq -r --argjson p "$p" '.partitions[] | select(.id == $p) | .leader' <<<"$json")
  controller=$(jq -r '.controller // "-"' <<<"$json")
  victim=$(node_num "$leader")
  survivor=$((victim % 3 + 1))
  pid=${PIDS[node$victim]}
  log "failover trial $trial ($via): partition $p led by $leader (pid $pid, controller $controller); probing through node$survivor"
  out=$("$CLI" --addr "${NODE_ADDR[survivor]}" --timeout-ms 1000 probe --partition "$p" \
    --kill-pid "$pid" --acks all --via "$via" --json) || die "probe failed: $out"
  wait "$pid" 2>/dev/null || true
  unset "PIDS[node$victim]"
  json=$(cluster_json "$survivor") || die "node$survivor does not answer"
  new_leader=$(jq -r --argjson p "$p" '.partitions[] | select(.id == $p) | .leader // "-"' <<<"$json")
  jq -c --argjson t "$trial" --arg v "$leader" --arg c "$controller" --arg nl "$new_leader" \
    '{trial: $t, victim: $v, victim_was_controller: ($v == $c), new_leader: $nl} + .' \
    <<<"$out" >>"$FAILOVERS"
  jq -r '"  unavailable \(.unavailable_ms | . * 10 | floor / 10) ms, \(.failed_writes) failed writes \(.errors)"' \
    <<<"$out" >&2
  echo "=== restart after failover trial $trial ===" >>"${NODE_LOG[victim]}"
  start_server "node$victim" "${NODE_CONF[victim]}" "${NODE_LOG[victim]}"
  wait_ping "${NODE_ADDR[victim]}" "node$victim"
}

# --- summary ---------------------------------------------------------------

summary() {
  local defs='
    def fs: if . == "every_ms" then "`every_ms: 1000`" else "`\(.)`" end;
    def f2: (. * 100 | round) as $x
      | "\($x / 100 | floor).\($x % 100 | tostring | if length < 2 then "0" + . else . end)";
    def f1: (. * 10 | round) as $x | "\($x / 10 | floor).\($x % 10)";
    def mean: add / length;
    def acks: if .op == "get" then "-" else .acks end;
    def base($all): . as $r | $all | map(select(.fsync == $r.fsync and .round == $r.round
                      and .system == "standalone" and .op == $r.op)) | first;
  '
  echo
  echo "### Every run ($CLIENTS clients, $VALUE_SIZE B values, $N requests per run, keyspace $KEYSPACE, $PARTITIONS partitions)"
  echo
  echo "| fsync | round | system | op | acks | ops/s | p50 µs | p99 µs | p999 µs | errors | × standalone | server CPU µs/op | client CPU µs/op |"
  echo "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  jq -rs "$defs"'
    . as $all | .[]
    | "| \(.fsync | fs) | \(.round) | \(.system) | \(.op) | \(acks) | \(.ops_per_sec | round) | \(.p50_us) | \(.p99_us) | \(.p999_us) | \(.errors) | \(.ops_per_sec / (base($all).ops_per_sec) | f2) | \(.server_cpu_us_per_op | round) | \(.client_cpu_us_per_op | round) |"
  ' "$RESULTS"
  echo
  echo "### Mean over rounds"
  echo
  echo "| fsync | system | op | acks | ops/s (mean) | min–max | p50 µs | p99 µs | × standalone | server CPU µs/op | client CPU µs/op |"
  echo "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|"
  jq -rs "$defs"'
    . as $all
    | map(. + {ratio: (.ops_per_sec / (base($all).ops_per_sec))})
    | group_by([.fsync, .system, .op, .acks])
    | sort_by((.[0].fsync != "every_ms"), (.[0].system != "standalone"), (.[0].op != "set"), (.[0].acks != "leader"))
    | .[]
    | "| \(.[0].fsync | fs) | \(.[0].system) | \(.[0].op) | \(.[0] | acks) | \(map(.ops_per_sec) | mean | round) | \(map(.ops_per_sec) | min | round)–\(map(.ops_per_sec) | max | round) | \(map(.p50_us) | mean | round) | \(map(.p99_us) | mean | round) | \(map(.ratio) | mean | f2) | \(map(.server_cpu_us_per_op) | mean | round) | \(map(.client_cpu_us_per_op) | mean | round) |"
  ' "$RESULTS"
  if [ -s "$FAILOVERS" ]; then
    echo
    echo "### Failover (SIGKILL of a partition leader -> first acks=all write acknowledged after it; session_timeout_ms $SESSION_TIMEOUT_MS)"
    echo
    echo "| trial | via | partition | killed | was controller | new leader | unavailable ms | failed writes | errors |"
    echo "|---:|---|---:|---|---|---|---:|---:|---|"
    jq -r "$defs"'"| \(.trial) | \(.via) | \(.partition) | \(.victim) | \(if .victim_was_controller then "yes" else "no" end) | \(.new_leader) | \(.unavailable_ms | f1) | \(.failed_writes) | \(.errors | to_entries | map("\(.key) \(.value)") | join(", ")) |"' "$FAILOVERS"
    echo
    echo "| via | trials | min ms | median ms | max ms |"
    echo "|---|---:|---:|---:|---:|"
    jq -rs "$defs"'group_by(.via)[] | (map(.unavailable_ms) | sort) as $t
      | "| \(.[0].via) | \($t | length) | \($t[0] | f1) | \($t[(($t | length) - 1) / 2 | floor] | f1) | \($t[-1] | f1) |"' "$FAILOVERS"
  fi
}

# --- main ------------------------------------------------------------------

log "work directory $WORK; N=$N, clients $CLIENTS, rounds $ROUNDS, policies: $POLICIES"
for policy in $POLICIES; do
  start_standalone "$policy"
  start_cluster "$policy" "$policy"
  for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then
      standalone_pass "$policy" "$round"
      cluster_pass "$policy" "$round"
    else
      cluster_pass "$policy" "$round"
      standalone_pass "$policy" "$round"
    fi
  done
  stop_server standalone
  stop_cluster
done

if [ $((TRIALS + CLIENT_TRIALS)) -gt 0 ]; then
  start_cluster "$FAILOVER_FSYNC" failover
  # Some data in every partition, so a restarted node has a log to recover
  # and catch up on.
  "$CLI" --addr "${NODE_ADDR[1]}" bench --op set --acks all --clients "$CLIENTS" --requests 20000 \
    --value-size "$VALUE_SIZE" --keyspace "$KEYSPACE" --json >/dev/null || die "preload failed"
  for t in $(seq "$TRIALS"); do failover_trial "$t" forward; done
  for t in $(seq "$CLIENT_TRIALS"); do failover_trial $((TRIALS + t)) client; done
  wait_healthy
  stop_cluster
fi
summary
