#!/usr/bin/env bash
# Runs the local three-node cluster of conf/cluster/ in the background: for
# `make cluster`, `make cluster-stop` and `make demo-failover`. ZooKeeper
# must already run on 127.0.0.1:2181 (`make zk`); the binaries must be built
# (`make release`).
#
#   scripts/cluster.sh start
#       Starts node1..node3 (those not running yet), then waits until each
#       answers `caskade-cli ping` (START_TIMEOUT_S, default 30) and, for at
#       most ISR_TIMEOUT_S (default 60), until every partition has a leader
#       and a full ISR (every replica in sync: the nodes stopped first
#       left the ISRs and catch up from the last one); prints the cluster
#       table and how to connect and stop. After ISR_TIMEOUT_S it names the
#       partitions whose ISR is not full and exits 1 (the nodes keep
#       running).
#   scripts/cluster.sh start-node N
#       Starts node N (1..3) if it is not running and waits until it answers.
#   scripts/cluster.sh stop
#       Stops the nodes one at a time: SIGTERM (each makes a controlled
#       shutdown: the controller moves its leaderships to the others before
#       it exits, so no partition waits for a session timeout and no
#       acks: all write fails), then SIGKILL after STOP_TIMEOUT_S (15).
#   scripts/cluster.sh stop-node N
#       Stops node N the same way.
#   scripts/cluster.sh status
#       Prints `caskade-cli cluster` as seen from the first node that answers.
#
# Node N: config conf/cluster/nodeN.yaml, client port 738N, replication
# port 748N, data ./data/cluster/nodeN/, log (stdout and stderr, appended)
# ./data/cluster/nodeN.log, pid ./data/cluster/nodeN.pid. Paths are relative
# to the repository root, where the script runs. Binaries are taken from
# BIN_DIR (default ./target/release).
#
# TLS=1 (`make cluster TLS=1`): every node and the CLI speak TLS with the
# certificates of CERT_DIR (default conf/certs, made by `make certs`): node
# N runs with CASKADE_TLS_{CERT,KEY,CA} naming node-N.pem, node-N.key and
# ca.pem, and client certificates are required; the CLI calls here use
# CASKADE_CLI_TLS_{CA,CERT,KEY} (ca.pem, client.pem, client.key). See
# docs/SECURITY.md.
#
# ZK_AUTH=1 (`make cluster ZK_AUTH=1`): the nodes authenticate to ZooKeeper
# as digest user `caskade` with the password of $RUN_DIR/zk.password (made,
# random and 0600, when missing) and create every znode with the ACL
# digest:caskade ALL + world READ (CASKADE_CLUSTER_ZK_AUTH_{USER,PASSWORD_FILE};
# docs/SECURITY.md, "ZooKeeper ACLs"). A cluster root created earlier without
# it stays world-writable: each node logs the setAcl command that closes it.
#
# Errors are one line on stderr and exit 1: a port already taken (with who
# holds it when `ss` can tell), a node that exits during startup or does not
# answer in time (followed by the tail of its log).
set -euo pipefail

cd "$(dirname "$0")/.."

readonly BIN_DIR=${BIN_DIR:-./target/release}
readonly SERVER=$BIN_DIR/caskade-server
readonly CLI=$BIN_DIR/caskade-cli
readonly RUN_DIR=./data/cluster
readonly START_TIMEOUT_S=${START_TIMEOUT_S:-30}
readonly ISR_TIMEOUT_S=${ISR_TIMEOUT_S:-${LEADER_TIMEOUT_S:-60}}
readonly STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-15}
readonly NODES=(1 2 3)
readonly TLS=${TLS:-}
readonly CERT_DIR=${CERT_DIR:-conf/certs}
if [ -n "$TLS" ] && [ "$TLS" != 0 ]; then
  [ -f "$CERT_DIR/ca.pem" ] || { echo "cluster.sh: no $CERT_DIR/ca.pem: run \`make certs\` first" >&2; exit 1; }
  export CASKADE_CLI_TLS_CA=$CERT_DIR/ca.pem
  export CASKADE_CLI_TLS_CERT=$CERT_DIR/client.pem
  export CASKADE_CLI_TLS_KEY=$CERT_DIR/client.key
fi

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

readonly ZK_AUTH=${ZK_AUTH:-}
if [ -n "$ZK_AUTH" ] && [ "$ZK_AUTH" != 0 ]; then
  mkdir -p "$RUN_DIR"
  if [ ! -s "$RUN_DIR/zk.password" ]; then
    (umask 077 && head -c 24 /dev/urandom | base64 >"$RUN_DIR/zk.password") ||
      die "cannot write $RUN_DIR/zk.password"
  fi
  export CASKADE_CLUSTER_ZK_AUTH_USER=caskade
  export CASKADE_CLUSTER_ZK_AUTH_PASSWORD_FILE=$RUN_DIR/zk.password
fi

usage() {
  cat >&2 <<'EOF'
usage: scripts/cluster.sh start | stop | status
       scripts/cluster.sh start-node N | stop-node N     (N = 1, 2 or 3)
EOF
  exit 2
}

client_addr() { echo "127.0.0.1:738$1"; }
repl_addr() { echo "127.0.0.1:748$1"; }
pid_file() { echo "$RUN_DIR/node$1.pid"; }
log_file() { echo "$RUN_DIR/node$1.log"; }

check_node() {
  [[ "$1" =~ ^[123]$ ]] || die "no node '$1': the cluster has nodes 1, 2 and 3"
}

# The pid of node $1 if it runs (a live caskade-server with that pid file).
running_pid() {
  local file pid
  file=$(pid_file "$1")
  [ -f "$file" ] || return 1
  pid=$(cat "$file" 2>/dev/null || true)
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # A recycled pid belongs to another program: not ours to signal.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q caskade-server || return 1
  echo "$pid"
}

# Whether something listens on 127.0.0.1:$1.
port_taken() {
  nc -z 127.0.0.1 "$1" >/dev/null 2>&1
}

# Fails if port $1 (described by $2) is taken.
check_port_free() {
  local holder=""
  port_taken "$1" || return 0
  if command -v ss >/dev/null 2>&1; then
    holder=$(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'users:(([^)]*))' | head -n1 || true)
  fi
  die "port $1 ($2) is already in use${holder:+ by $holder}; stop what listens there, or \`make cluster-stop\`"
}

log_tail() {
  echo "--- last lines of $(log_file "$1") ---" >&2
  tail -n 20 "$(log_file "$1")" >&2 || true
  echo "---" >&2
}

# Launches node $1 in the background unless it runs.
launch() {
  local n=$1 pid
  if pid=$(running_pid "$n"); then
    echo "node$n already running (pid $pid)"
    return 0
  fi
  [ -x "$SERVER" ] || die "$SERVER not found: run \`make release\` first"
  check_port_free "738$n" "node$n client"
  check_port_free "748$n" "node$n replication"
  mkdir -p "$RUN_DIR"
  echo "=== $(date '+%F %T') cluster.sh: starting node$n ===" >>"$(log_file "$n")"
  if [ -n "${CASKADE_CLI_TLS_CA:-}" ]; then
    CASKADE_TLS_CERT=$CERT_DIR/node-$n.pem CASKADE_TLS_KEY=$CERT_DIR/node-$n.key \
      CASKADE_TLS_CA=$CERT_DIR/ca.pem CASKADE_TLS_REQUIRE_CLIENT_CERT=true \
      nohup "$SERVER" --config "conf/cluster/node$n.yaml" </dev/null >>"$(log_file "$n")" 2>&1 &
  else
    nohup "$SERVER" --config "conf/cluster/node$n.yaml" </dev/null >>"$(log_file "$n")" 2>&1 &
  fi
  echo $! >"$(pid_file "$n")"
  echo "node$n starting (pid $!), client $(client_addr "$n"), replication $(repl_addr "$n"), log $(log_file "$n")"
}

# Waits until node $1 answers ping; fails with its log tail otherwise.
wait_up() {
  local n=$1 deadline=$((SECONDS + START_TIMEOUT_S))
  while ! "$CLI" --addr "$(client_addr "$n")" --timeout-ms 1000 ping >/dev/null 2>&1; do
    if ! running_pid "$n" >/dev/null; then
      rm -f "$(pid_file "$n")"
      echo "cluster.sh: node$n exited during startup" >&2
      log_tail "$n"
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "cluster.sh: node$n does not answer on $(client_addr "$n") after ${START_TIMEOUT_S} s (still running, pid $(running_pid "$n"))" >&2
      log_tail "$n"
      exit 1
    fi
    sleep 0.2
  done
  echo "node$n up on $(client_addr "$n")"
}

# The cluster table from the first node that answers.
table() {
  local n
  for n in "${NODES[@]}"; do
    if "$CLI" --addr "$(client_addr "$n")" --timeout-ms 2000 cluster 2>/dev/null; then
      return 0
    fi
  done
  echo "cluster.sh: no node answers" >&2
  return 1
}

# Waits (bounded) until every partition row of the table has a leader and
# as many ISR members as replicas. On timeout, names the partitions that
# are not there yet and exits 1.
wait_full_isr() {
  local deadline=$((SECONDS + ISR_TIMEOUT_S)) out="" short=""
  while :; do
    if out=$(table 2>/dev/null); then
      # Columns: PARTITION LEADER EPOCH REPLICAS ISR ...
      short=$(awk 'NR > 2 && NF >= 5 {
          nr = split($4, r, ","); ni = ($5 == "-") ? 0 : split($5, i, ",")
          if ($2 == "-" || ni < nr) { printf "%spartition %s (leader %s, ISR %s of replicas %s)", sep, $1, $2, $5, $4; sep = "; " }
        }' <<<"$out")
      if [ -z "$short" ] && [ "$(awk 'NR > 2 && NF >= 5' <<<"$out" | wc -l)" -gt 0 ]; then
        return 0
      fi
    else
      short="(no node answers)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "cluster.sh: after ${ISR_TIMEOUT_S} s, these partitions still lack a leader or a full ISR: $short" >&2
      echo "cluster.sh: the nodes keep running; losing a node now may take those partitions offline. See $RUN_DIR/node*.log" >&2
      exit 1
    fi
    sleep 0.5
  done
}

# Stops node $1: TERM, then KILL after STOP_TIMEOUT_S.
stop_node() {
  local n=$1 pid deadline
  if ! pid=$(running_pid "$n"); then
    rm -f "$(pid_file "$n")"
    echo "node$n not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT_S))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "node$n did not exit ${STOP_TIMEOUT_S} s after SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
  rm -f "$(pid_file "$n")"
  echo "node$n stopped (pid $pid)"
}

[ $# -ge 1 ] || usage
case "$1" in
  start)
    [ $# -eq 1 ] || usage
    [ -x "$CLI" ] || die "$CLI not found: run \`make release\` first"
    for n in "${NODES[@]}"; do launch "$n"; done
    for n in "${NODES[@]}"; do wait_up "$n"; done
    started=$SECONDS
    wait_full_isr
    echo "every partition has a leader and a full ISR ($((SECONDS - started)) s)"
    echo
    table
    cat <<EOF

Connect: $CLI --addr 127.0.0.1:7381   (or 7382, 7383)
Table:   $CLI --addr 127.0.0.1:7381 cluster
Logs:    $RUN_DIR/node{1,2,3}.log
Stop:    make cluster-stop
EOF
    ;;
  start-node)
    [ $# -eq 2 ] || usage
    check_node "$2"
    [ -x "$CLI" ] || die "$CLI not found: run \`make release\` first"
    launch "$2"
    wait_up "$2"
    ;;
  stop)
    [ $# -eq 1 ] || usage
    for n in "${NODES[@]}"; do stop_node "$n"; done
    ;;
  stop-node)
    [ $# -eq 2 ] || usage
    check_node "$2"
    stop_node "$2"
    ;;
  status)
    [ $# -eq 1 ] || usage
    table
    ;;
  *) usage ;;
esac
