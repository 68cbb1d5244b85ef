#!/usr/bin/env bash
# `make demo-failover`: kills the leader of a partition with SIGKILL while
# the cluster holds acknowledged writes (and takes new ones), and checks
# that not one acknowledged write is lost.
#
#   1. Starts `make cluster` unless a node already answers.
#   2. Writes KEYS keys with acks=all (`caskade-cli load --record`), each
#      acknowledged write recorded in ./data/demo/acked-before.tsv; every
#      one must succeed. Shows the cluster table.
#   3. Finds the leader of partition 0 (`caskade-cli cluster --json`), starts
#      a second writer in the background (acks=all, failures allowed, the
#      acknowledged ones recorded in ./data/demo/acked-during.tsv) and
#      SIGKILLs that leader's process (./data/cluster/nodeN.pid).
#   4. Waits (FAILOVER_TIMEOUT_S) until no partition is without a leader or
#      led by the dead node, shows how long it took and the controller's
#      election lines (`chosen over` in its log).
#   5. Verifies every recorded write on a surviving node (`caskade-cli
#      verify`): exact value, committed.
#   6. Restarts the killed node, waits (CATCHUP_TIMEOUT_S) until it is back
#      in the ISR of every partition it replicates, shows its truncation and
#      catch-up log lines (`truncat`), verifies again through it, and prints
#      the table.
#
# Exit status: 0 when every acknowledged write survived and the node
# rejoined; 1 otherwise, with the reason on the last line.
# Needs jq (Debian package `jq`) to read the JSON table.
set -euo pipefail

cd "$(dirname "$0")/.."

readonly BIN_DIR=${BIN_DIR:-./target/release}
readonly CLI=$BIN_DIR/caskade-cli
readonly RUN_DIR=./data/cluster
readonly DEMO_DIR=./data/demo
readonly KEYS=${KEYS:-2000}
readonly DURING_KEYS=${DURING_KEYS:-20000}
readonly FAILOVER_TIMEOUT_S=${FAILOVER_TIMEOUT_S:-60}
readonly CATCHUP_TIMEOUT_S=${CATCHUP_TIMEOUT_S:-60}
readonly NODES=(1 2 3)

failures=()

die() {
  echo "demo-failover: FAILED: $*" >&2
  exit 1
}

step() {
  printf '\n== %s\n' "$*"
}

client_addr() { echo "127.0.0.1:738$1"; }

# Node number of node id $1 (node-N -> N).
node_num() {
  local n=${1#node-}
  [[ "$n" =~ ^[123]$ ]] || die "unexpected node id '$1' (expected node-1, node-2 or node-3)"
  echo "$n"
}

# `caskade-cli cluster --json` from the first of the nodes $@ that answers.
cluster_json() {
  local n
  for n in "$@"; do
    if "$CLI" --addr "$(client_addr "$n")" --timeout-ms 2000 cluster --json 2>/dev/null; then
      return 0
    fi
  done
  return 1
}

# The table from the first of the nodes $@ that answers.
cluster_table() {
  local n
  for n in "$@"; do
    if "$CLI" --addr "$(client_addr "$n")" --timeout-ms 2000 cluster 2>/dev/null; then
      return 0
    fi
  done
  echo "(no node answers)"
}

# Lines of file $1 after line $2 matching regex $3 (case-insensitive).
new_lines_matching() {
  tail -n "+$(($2 + 1))" "$1" 2>/dev/null | grep -i -- "$3" || true
}

line_count() {
  if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi
}

command -v jq >/dev/null 2>&1 || die "jq is needed to read \`caskade-cli cluster --json\`: apt-get install jq"

# 1. A running cluster.
up=0
for n in "${NODES[@]}"; do
  if "$CLI" --addr "$(client_addr "$n")" --timeout-ms 1000 ping >/dev/null 2>&1; then up=1; fi
done
if [ "$up" -eq 0 ]; then
  step "No node answers: starting the cluster (make cluster)"
  make --no-print-directory cluster
fi
[ -x "$CLI" ] || die "$CLI not found: run \`make release\` first"
json=$(cluster_json "${NODES[@]}") || die "no node of the cluster answers"
[ "$(jq -r '.mode' <<<"$json")" = cluster ] ||
  die "the nodes run standalone, not as a cluster (mode $(jq -r '.mode' <<<"$json"))"
down=$(jq -r '[.nodes[] | select(.status != "up") | .id] | join(", ")' <<<"$json")
[ -z "$down" ] || die "nodes down before the demo: $down; restart them with \`make cluster\`"

mkdir -p "$DEMO_DIR"
run_id=$(date +%s)
before=$DEMO_DIR/acked-before.tsv
during=$DEMO_DIR/acked-during.tsv
rm -f "$before" "$during"

# 2. Acknowledged writes.
step "Writing $KEYS keys with acks=all through node1"
"$CLI" --addr "$(client_addr 1)" load --keys "$KEYS" --prefix "demo:$run_id:before:" \
  --acks all --record "$before" ||
  die "writes failed with every node up: the cluster is not healthy"
cluster_table "${NODES[@]}"

# 3. Kill the leader of partition 0 while a second writer runs.
json=$(cluster_json "${NODES[@]}") || die "no node answers"
leader=$(jq -r '.partitions[] | select(.id == 0) | .leader // empty' <<<"$json")
[ -n "$leader" ] || die "partition 0 has no leader"
old_epoch=$(jq -r '.partitions[] | select(.id == 0) | .epoch' <<<"$json")
victim=$(node_num "$leader")
survivors=()
for n in "${NODES[@]}"; do
  [ "$n" = "$victim" ] || survivors+=("$n")
done
pid=$(cat "$RUN_DIR/node$victim.pid" 2>/dev/null || true)
if ! [[ "$pid" =~ ^[0-9]+$ ]] || ! kill -0 "$pid" 2>/dev/null; then
  die "no live pid for node$victim in $RUN_DIR/node$victim.pid (was the cluster started with make cluster?)"
fi
declare -A log_mark
for n in "${NODES[@]}"; do
  log_mark[$n]=$(line_count "$RUN_DIR/node$n.log")
done

step "Partition 0 is led by $leader (epoch $old_epoch); writing $DURING_KEYS more keys through node${survivors[0]} and killing $leader (pid $pid) with SIGKILL"
"$CLI" --addr "$(client_addr "${survivors[0]}")" load --keys "$DURING_KEYS" \
  --prefix "demo:$run_id:during:" --acks all --record "$during" --allow-errors \
  >"$DEMO_DIR/during.out" 2>&1 &
writer=$!
sleep 1
kill -KILL "$pid"
killed_at=$SECONDS

# 4. The election.
step "Waiting for new leaders (at most ${FAILOVER_TIMEOUT_S} s)"
while :; do
  if json=$(cluster_json "${survivors[@]}"); then
    orphans=$(jq --arg dead "$leader" \
      '[.partitions[] | select(.leader == null or .leader == $dead)] | length' <<<"$json")
    [ "$orphans" -eq 0 ] && break
  fi
  [ $((SECONDS - killed_at)) -lt "$FAILOVER_TIMEOUT_S" ] ||
    die "partitions still without a live leader ${FAILOVER_TIMEOUT_S} s after the kill"
  sleep 0.2
done
new_leader=$(jq -r '.partitions[] | select(.id == 0) | .leader' <<<"$json")
new_epoch=$(jq -r '.partitions[] | select(.id == 0) | .epoch' <<<"$json")
echo "partition 0: $leader (epoch $old_epoch) -> $new_leader (epoch $new_epoch), every partition led again about $((SECONDS - killed_at)) s after the kill"
[ "$new_epoch" -gt "$old_epoch" ] || failures+=("partition 0's leader epoch did not increase ($old_epoch -> $new_epoch)")
controller=$(jq -r '.controller // empty' <<<"$json")
if [ -n "$controller" ]; then
  c=$(node_num "$controller")
  echo "controller $controller ($RUN_DIR/node$c.log):"
  election=$(new_lines_matching "$RUN_DIR/node$c.log" "${log_mark[$c]}" "chosen over")
  if [ -n "$election" ]; then
    echo "$election"
  else
    echo "  (no 'chosen over' line logged since the kill)"
  fi
else
  echo "(no controller reported)"
fi

wait "$writer" || true
echo "writer during the failover: $(tr '\n' ' ' <"$DEMO_DIR/during.out")"

# 5. Nothing acknowledged is lost.
step "Verifying every acknowledged write on node${survivors[0]}"
for record in "$before" "$during"; do
  "$CLI" --addr "$(client_addr "${survivors[0]}")" verify --record "$record" ||
    failures+=("acknowledged writes missing or wrong after the failover ($record)")
done

# 6. The old leader comes back as a follower and catches up.
step "Restarting node$victim"
mark=$(line_count "$RUN_DIR/node$victim.log")
scripts/cluster.sh start-node "$victim"
step "Waiting for $leader to rejoin the ISR of its partitions (at most ${CATCHUP_TIMEOUT_S} s)"
restarted_at=$SECONDS
while :; do
  if json=$(cluster_json "${NODES[@]}"); then
    missing=$(jq --arg id "$leader" \
      '[.partitions[] | select((.replicas | index($id)) and ((.isr | index($id)) | not))] | length' \
      <<<"$json")
    [ "$missing" -eq 0 ] && break
  fi
  if [ $((SECONDS - restarted_at)) -ge "$CATCHUP_TIMEOUT_S" ]; then
    failures+=("$leader not back in the ISR of every partition after ${CATCHUP_TIMEOUT_S} s")
    break
  fi
  sleep 0.5
done
echo "$leader log since its restart, truncation and catch-up:"
catchup=$(new_lines_matching "$RUN_DIR/node$victim.log" "$mark" "truncat")
if [ -n "$catchup" ]; then echo "$catchup"; else echo "  (no 'truncat' line logged)"; fi

step "Verifying every acknowledged write again, through node$victim"
for record in "$before" "$during"; do
  "$CLI" --addr "$(client_addr "$victim")" verify --record "$record" ||
    failures+=("acknowledged writes missing or wrong after $leader rejoined ($record)")
done
cluster_table "${NODES[@]}"

if [ ${#failures[@]} -gt 0 ]; then
  for f in "${failures[@]}"; do echo "demo-failover: $f" >&2; done
  die "${#failures[@]} check(s) failed"
fi
acked=$(($(line_count "$before") + $(line_count "$during")))
echo
echo "demo-failover: OK: all $acked acknowledged writes survived the SIGKILL of $leader, and it rejoined the ISR"
