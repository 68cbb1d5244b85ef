#!/usr/bin/env bash
# caskade against Redis over RESP, side by side in one run (issue 11,
# docs/BENCHMARKS.md "caskade vs Redis over RESP"). Self-contained: builds
# release, starts every server it measures on loopback, on free ports, in a
# temporary directory on disk, and kills all of them on exit (trap), also on
# Ctrl-C or failure.
#
# Standalone, for each durability pair (Redis AOF `appendfsync everysec`
# against caskade `fsync: {every_ms: 1000}`, then `always` against
# `always`), a fresh Debian redis-server (appendonly yes, no RDB snapshots)
# and a fresh caskade-server (RESP listener, 8 partitions, acks all) get
# the same
#     redis-benchmark -t set,get -n 200000 -c 50 -d 100 -r 100000 [-P 16] --csv
# without and with -P 16, Redis first, then caskade.
#
# Cluster, for each durability pair in CLUSTER_POLICIES: three caskade
# nodes (ZooKeeper from scripts/zk.sh; replication_factor 3, min_insync 2,
# default_acks all) against a Redis master with one replica (a second
# redis-server with --replicaof). redis-benchmark cannot send WAIT, so both
# get `caskade-cli resp-bench` (cli/src/resp_bench.rs), the same client
# for both: 50 connections, each sending its SETs and then `WAIT 1 0` in one
# write per round trip (Redis' nearest equivalent of `acks: all`: the
# master answers WAIT once one replica has acknowledged every earlier write
# of the connection), then GETs. caskade's connections are spread over the
# three nodes' RESP listeners (a node forwards keys it does not lead);
# Redis' all go to the master.
#
# Output: progress on stderr; a markdown table on stdout: test, pipeline,
# durability, Redis ops/s, caskade ops/s, caskade/Redis, and for each side
# the server CPU per request (utime + stime from /proc/PID/stat of the
# server processes: redis-server, or the master and the replica; the
# caskade node, or all three) and how busy the machine was during the
# test (/proc/stat, all cores; 100% = both cores saturated). Server CPU
# per request moves much less with the machine's load than ops/s do. Each
# test is its own client run (redis-benchmark -t set, then -t get), so the
# CPU figures cover one test each. The raw outputs and logs stay in the
# work directory with KEEP=1 (or on failure).
#
# ROUNDS=R (default 1) runs every line R times, the two systems taking
# turns to go first (round 1 Redis first, round 2 caskade first, ...), and
# the table gives the medians: of each system's ops/s, CPU and busy
# figures, and of the per-round caskade/Redis ratios (each round's pair ran
# minutes apart at most). On this 2-core VM a pipelined line of 200,000
# requests lasts under a second and moves by up to 40 % from run to run
# (docs/BENCHMARKS.md, run 8), so one round can put it on either side of
# 1.0x.
#
# Env: N (200000), CLIENTS (50), ROUNDS (1), POLICIES ("everysec always";
#      "" skips the standalone part),
#      CLUSTER_POLICIES ("everysec"; "" skips the cluster), CLUSTER_RF (3),
#      WORKERS (runtime.worker_threads of every caskade node, standalone
#      and cluster; unset: the default, one per core),
#      SKIP_BUILD=1,
#      KEEP=1, TMPDIR (work directory's parent; must be on a real disk).
set -euo pipefail

cd "$(dirname "$0")/.."

readonly N=${N:-200000}
readonly CLIENTS=${CLIENTS:-50}
readonly ROUNDS=${ROUNDS:-1}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive integer, not '$ROUNDS'" >&2; exit 2; }
# The round being run (file names and the results' last column).
ROUND=1
readonly POLICIES=${POLICIES-"everysec always"}
readonly CLUSTER_POLICIES=${CLUSTER_POLICIES-"everysec"}
# Copies of each partition in the cluster (min_insync is the same, so with
# `acks: all` every write is on CLUSTER_RF nodes before it is answered):
# 3 (default) is the issue's layout; 2 holds as many copies as Redis'
# master and one replica.
readonly CLUSTER_RF=${CLUSTER_RF:-3}
readonly PARTITIONS=8
readonly KEYSPACE=100000
readonly VALUE_SIZE=100

log() { echo "bench-vs-redis: $*" >&2; }
die() {
  echo "bench-vs-redis: FAILED: $*" >&2
  exit 1
}

for tool in redis-server redis-benchmark redis-cli jq nc; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (scripts/ensure-deps.sh installs redis-server, redis-tools, jq)"
done

# The build's real output directory (CARGO_TARGET_DIR, .cargo/config, or
# ./target), as cargo itself resolves it.
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
readonly BIN_DIR=${BIN_DIR:-$TARGET_DIR/release}
readonly SERVER=$BIN_DIR/caskade-server
readonly CLI=$BIN_DIR/caskade-cli

if [ "${SKIP_BUILD:-}" != 1 ]; then
  log "building release"
  cargo build --release -p caskade -p caskade-cli --bins >&2
fi
[ -x "$SERVER" ] && [ -x "$CLI" ] || die "$SERVER or $CLI missing"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/caskade-vs-redis.XXXXXX")
readonly WORK
RESULTS=$WORK/results.tsv
: >"$RESULTS"

# Process bookkeeping, clean-up on exit and free_port.
. scripts/lib-bench.sh

stop() {
  local pid=${PIDS[$1]:-}
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "PIDS[$1]"
}

# wait_resp NAME PORT: until PORT answers PING (30 s).
wait_resp() {
  local deadline=$((SECONDS + 30))
  until [ "$(redis-cli -h 127.0.0.1 -p "$2" ping 2>/dev/null)" = PONG ]; do
    kill -0 "${PIDS[$1]}" 2>/dev/null || die "$1 exited during startup; see $WORK"
    [ "$SECONDS" -lt "$deadline" ] || die "$1 does not answer PING on port $2 after 30 s"
    sleep 0.1
  done
}

# caskade's name of a durability: everysec -> every_ms, always -> always.
caskade_fsync() {
  case $1 in
    everysec) echo '{every_ms: 1000}' ;;
    always) echo always ;;
    *) die "unknown durability '$1' (everysec, always)" ;;
  esac
}

# cpu_ticks PID...: utime + stime of the processes, in clock ticks.
cpu_ticks() {
  local p total=0
  for p in "$@"; do
    # Fields after "pid (comm) ": utime and stime are the 12th and 13th.
    total=$((total + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}

# machine_ticks: "busy total" clock ticks of all cores since boot.
machine_ticks() {
  awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat
}

# measured NAME... -- CMD...: runs CMD and sets CPU_US (server CPU of the
# processes NAME... per request, over N requests, in microseconds) and
# BUSY (percent of all cores busy meanwhile).
measured() {
  local pids=() before m0 m1 status=0
  while [ "$1" != -- ]; do pids+=("${PIDS[$1]}"); shift; done
  shift
  before=$(cpu_ticks "${pids[@]}")
  read -r -a m0 <<<"$(machine_ticks)"
  "$@" || status=$?
  read -r -a m1 <<<"$(machine_ticks)"
  CPU_US=$(awk -v t="$(($(cpu_ticks "${pids[@]}") - before))" -v hz="$(getconf CLK_TCK)" -v n="$N" \
    'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  BUSY=$(awk -v b="$((m1[0] - m0[0]))" -v t="$((m1[1] - m0[1]))" 'BEGIN {printf "%.0f", (t > 0 ? 100 * b / t : 0)}')
  return "$status"
}

# start_redis NAME POLICY [MASTER_PORT]: sets PORT_OF[NAME].
declare -A PORT_OF=()
start_redis() {
  local name=$1 policy=$2 dir=$WORK/$1 port
  mkdir -p "$dir"
  free_port
  port=$PORT
  local extra=()
  [ -n "${3:-}" ] && extra=(--replicaof 127.0.0.1 "$3")
  redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize no \
    --appendonly yes --appendfsync "$policy" --save '' --protected-mode no \
    --logfile "$dir/redis.log" "${extra[@]}" </dev/null >/dev/null 2>&1 &
  PIDS[$name]=$!
  PORT_OF[$name]=$port
  wait_resp "$name" "$port"
  log "$name: redis-server (appendfsync $policy${3:+, replica of $3}) on 127.0.0.1:$port, pid ${PIDS[$name]}"
}

# caskade_yaml NAME POLICY RESP_PORT GRPC_PORT: a node's config on stdout;
# the cluster section comes from CLUSTER_YAML when set.
caskade_yaml() {
  cat <<EOF
node_id: $1
listen: 127.0.0.1:$4
data_dir: $WORK/$1/data
partitions: $PARTITIONS
log_level: warn
engine: bitcask
default_acks: all
default_consistency: leader
storage:
  fsync: $(caskade_fsync "$2")
resp:
  listen: 127.0.0.1:$3
EOF
  [ -z "${WORKERS:-}" ] || printf 'runtime:\n  worker_threads: %s\n' "$WORKERS"
  [ -z "${CLUSTER_YAML:-}" ] || printf '%s\n' "$CLUSTER_YAML"
}

# start_caskade NAME POLICY: sets PORT_OF[NAME] (its RESP port).
start_caskade() {
  local name=$1 dir=$WORK/$1 port
  mkdir -p "$dir"
  free_port
  port=$PORT
  free_port
  caskade_yaml "$name" "$2" "$port" "$PORT" >"$dir/server.yaml"
  "$SERVER" --config "$dir/server.yaml" </dev/null >>"$dir/server.log" 2>&1 &
  PIDS[$name]=$!
  PORT_OF[$name]=$port
}

# redis_benchmark SYSTEM POLICY PIPELINE PORT: one redis-benchmark run per
# test (set, then get), one TSV line per test into RESULTS.
redis_benchmark() {
  local system=$1 policy=$2 pipeline=$3 port=$4 out test rps
  for test in SET GET; do
    local args=(-h 127.0.0.1 -p "$port" -t "${test,,}" -n "$N" -c "$CLIENTS" -d "$VALUE_SIZE" -r "$KEYSPACE")
    [ "$pipeline" -gt 1 ] && args+=(-P "$pipeline")
    out=$WORK/$system-$policy-P$pipeline-$test-r$ROUND.out
    log "$system ($policy): redis-benchmark ${args[*]:2}"
    measured "$system" -- redis-benchmark "${args[@]}" --csv >"$out" 2>&1 ||
      die "redis-benchmark failed against $system: $(tail -3 "$out")"
    if grep -qi 'error' "$out"; then
      die "redis-benchmark saw errors from $system: $(grep -i -m3 error "$out")"
    fi
    rps=$(awk -F'","' -v t="\"$test" '$1 == t {print $2}' "$out")
    [ -n "$rps" ] || die "no $test line in $out"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' standalone "$test" "$pipeline" "$policy" "$system=$rps=$CPU_US=$BUSY" "$ROUND" >>"$RESULTS"
    log "  $test: $rps ops/s, server CPU $CPU_US us/request, machine $BUSY% busy"
  done
}

# resp_bench SYSTEM POLICY OP PIPELINE WAIT PORT...: one caskade-cli
# resp-bench run, one TSV line into RESULTS. The server CPU counted is that
# of the processes named in SERVERS.
resp_bench() {
  local system=$1 policy=$2 op=$3 pipeline=$4 wait=$5 out p
  shift 5
  local args=(--op "$op" -c "$CLIENTS" -n "$N" -d "$VALUE_SIZE" -r "$KEYSPACE" -P "$pipeline" --wait-replicas "$wait")
  for p in "$@"; do args+=(--addr "127.0.0.1:$p"); done
  out=$WORK/cluster-$system-$policy-$op-P$pipeline-r$ROUND.json
  log "$system cluster ($policy): caskade-cli resp-bench ${args[*]}"
  # shellcheck disable=SC2086 # SERVERS is a list of names
  measured $SERVERS -- "$CLI" resp-bench "${args[@]}" >"$out" 2>"$out.err" ||
    die "resp-bench failed against $system: $(cat "$out.err")"
  local rps label
  rps=$(jq -r '.ops_per_sec' "$out")
  label=$(echo "$op" | tr a-z A-Z)
  [ "$wait" -gt 0 ] && label="$label+WAIT $wait 0"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "cluster RF $CLUSTER_RF" "$label" "$pipeline" "$policy" "$system=$rps=$CPU_US=$BUSY" "$ROUND" >>"$RESULTS"
  log "  $(jq -r '"\(.ops_per_sec | floor) ops/s, p50 \(.p50_us) us, p99 \(.p99_us) us, errors \(.errors)"' "$out"), server CPU $CPU_US us/request, machine $BUSY% busy"
}

# --- standalone ------------------------------------------------------------

for policy in $POLICIES; do
  start_redis redis "$policy"
  start_caskade caskade "$policy"
  wait_resp caskade "${PORT_OF[caskade]}"
  log "caskade: caskade-server (fsync $(caskade_fsync "$policy")) RESP on 127.0.0.1:${PORT_OF[caskade]}, pid ${PIDS[caskade]}"
  for pipeline in 1 16; do
    for ROUND in $(seq "$ROUNDS"); do
      if [ $((ROUND % 2)) = 1 ]; then
        redis_benchmark redis "$policy" "$pipeline" "${PORT_OF[redis]}"
        redis_benchmark caskade "$policy" "$pipeline" "${PORT_OF[caskade]}"
      else
        redis_benchmark caskade "$policy" "$pipeline" "${PORT_OF[caskade]}"
        redis_benchmark redis "$policy" "$pipeline" "${PORT_OF[redis]}"
      fi
    done
  done
  stop redis
  stop caskade
  rm -rf "$WORK/redis" "$WORK/caskade"
done

# --- cluster ---------------------------------------------------------------

# wait_cluster_healthy: every partition has a leader and a full ISR (60 s).
wait_cluster_healthy() {
  local deadline=$((SECONDS + 60)) json="" n addr
  while :; do
    for n in 1 2 3; do
      addr=$(sed -n 's/^listen: //p' "$WORK/node$n/server.yaml")
      json=$("$CLI" --addr "$addr" --timeout-ms 2000 cluster --json 2>/dev/null) && break
    done
    if [ -n "$json" ] && [ "$(jq "[.partitions[] | select(.leader != null and (.isr | length) == $CLUSTER_RF)] | length" <<<"$json")" -eq "$PARTITIONS" ]; then
      return 0
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "cluster not healthy after 60 s: $json"
    sleep 0.25
  done
}

# wait_replica_linked: the Redis replica is connected and in sync (30 s).
wait_replica_linked() {
  local deadline=$((SECONDS + 30))
  until redis-cli -p "${PORT_OF[redis-replica]}" info replication | grep -q '^master_link_status:up' &&
    redis-cli -p "${PORT_OF[redis-master]}" info replication | grep -q '^connected_slaves:1'; do
    [ "$SECONDS" -lt "$deadline" ] || die "the Redis replica is not linked after 30 s"
    sleep 0.1
  done
}

for policy in $CLUSTER_POLICIES; do
  if [ ! -f "$WORK/zk/zk.pid" ]; then
    free_port
    zk_port=$PORT
    scripts/zk.sh start "$WORK/zk" "$zk_port" >&2
  fi
  for n in 1 2 3; do
    free_port
    CLUSTER_YAML="cluster:
  name: vs-redis-$policy
  zk_connect: 127.0.0.1:$zk_port
  session_timeout_ms: 6000
  replication_listen: 127.0.0.1:$PORT
  replication_factor: $CLUSTER_RF
  min_insync: $((CLUSTER_RF < 2 ? 1 : 2))" start_caskade "node$n" "$policy"
  done
  for n in 1 2 3; do wait_resp "node$n" "${PORT_OF[node$n]}"; done
  wait_cluster_healthy
  log "caskade cluster ($policy): RESP on ${PORT_OF[node1]}, ${PORT_OF[node2]}, ${PORT_OF[node3]}"
  start_redis redis-master "$policy"
  start_redis redis-replica "$policy" "${PORT_OF[redis-master]}"
  wait_replica_linked
  nodes=("${PORT_OF[node1]}" "${PORT_OF[node2]}" "${PORT_OF[node3]}")
  for pipeline in 1 16; do
    for op in set get; do
      wait=0
      [ "$op" = set ] && wait=1
      for ROUND in $(seq "$ROUNDS"); do
        if [ $((ROUND % 2)) = 1 ]; then
          SERVERS="redis-master redis-replica" resp_bench redis "$policy" "$op" "$pipeline" "$wait" "${PORT_OF[redis-master]}"
          SERVERS="node1 node2 node3" resp_bench caskade "$policy" "$op" "$pipeline" "$wait" "${nodes[@]}"
        else
          SERVERS="node1 node2 node3" resp_bench caskade "$policy" "$op" "$pipeline" "$wait" "${nodes[@]}"
          SERVERS="redis-master redis-replica" resp_bench redis "$policy" "$op" "$pipeline" "$wait" "${PORT_OF[redis-master]}"
        fi
      done
    done
  done
  for name in redis-master redis-replica node1 node2 node3; do stop "$name"; done
  rm -rf "$WORK/redis-master" "$WORK/redis-replica" "$WORK"/node?
done

# --- table -----------------------------------------------------------------

echo
[ "$ROUNDS" -gt 1 ] && echo "Medians of $ROUNDS rounds (caskade/Redis: the median of the rounds' ratios)."
echo "| setup | test | pipeline | durability | Redis ops/s | caskade ops/s | caskade/Redis | server CPU µs/req, Redis | server CPU µs/req, caskade | machine busy, Redis / caskade |"
echo "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"
awk -F'\t' '
  # median(list): the median of the numbers in list, a space-separated
  # string (the mean of the middle two for an even count).
  function median(list,   a, m, i, j, t) {
    m = split(list, a, " ")
    for (i = 2; i <= m; i++) {
      t = a[i] + 0
      for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]
      a[j + 1] = t
    }
    return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
  }
  { key = $1 "\t" $2 "\t" $3 "\t" $4
    split($5, kv, "=")
    if (!(key in seen)) { seen[key] = 1; order[++n] = key }
    val[key, kv[1]] = val[key, kv[1]] " " kv[2]
    cpu[key, kv[1]] = cpu[key, kv[1]] " " kv[3]
    busy[key, kv[1]] = busy[key, kv[1]] " " kv[4]
    one[key, kv[1], $6] = kv[2]; rounds[key] = rounds[key] " " $6 }
  END {
    for (i = 1; i <= n; i++) {
      k = order[i]
      split(k, f, "\t")
      # Per-round ratios, each round once.
      ratios = ""; delete done
      m = split(rounds[k], rs, " ")
      for (j = 1; j <= m; j++) {
        if (rs[j] in done) continue
        done[rs[j]] = 1
        r = one[k, "redis", rs[j]]; c = one[k, "caskade", rs[j]]
        if (r > 0) ratios = ratios " " c / r
      }
      dur = f[4] == "everysec" ? "everysec / every_ms: 1000" : "always / always"
      printf "| %s | %s | %s | %s | %.0f | %.0f | %.2fx | %s | %s | %s%% / %s%% |\n", f[1], f[2], (f[3] == 1 ? "none" : "-P " f[3]), dur, median(val[k, "redis"]), median(val[k, "caskade"]), (ratios == "" ? 0 : median(ratios)), median(cpu[k, "redis"]), median(cpu[k, "caskade"]), median(busy[k, "redis"]), median(busy[k, "caskade"])
    }
  }' "$RESULTS"
