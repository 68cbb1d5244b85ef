#!/usr/bin/env bash
# Runs ZooKeeper from Debian's `zookeeper` package on loopback, without the
# service scripts: for `make zk`, `make cluster` and the integration tests.
#
#   scripts/zk.sh start DIR PORT
#       Standalone server on 127.0.0.1:PORT. Config DIR/zoo.cfg, data
#       DIR/data, pid DIR/zk.pid, log DIR/zk.log. Waits (30 s) for `imok`.
#       Already running (live pid in DIR/zk.pid): says so, exits 0.
#   scripts/zk.sh start-ensemble DIR C1,C2,C3 Q1,Q2,Q3 E1,E2,E3
#       Three members on 127.0.0.1 with client ports Ci, quorum ports Qi and
#       election ports Ei. Member i (1..3) lives in DIR/i (zoo.cfg, data/myid,
#       zk.pid, zk.log). Waits (30 s) until every member answers `imok` and
#       one reports `Mode: leader`, the others `Mode: follower`.
#   scripts/zk.sh start-member DIR I
#       (Re)starts member I of an ensemble made by start-ensemble, with its
#       existing config and data. Waits (30 s) for `imok`.
#   scripts/zk.sh stop-member DIR I
#       Stops member I of an ensemble (TERM, KILL after 5 s).
#   scripts/zk.sh stop DIR
#       Stops every server whose pid file is under DIR (TERM, KILL after
#       5 s). Exits 0 when nothing runs.
#
# Settings: tickTime=500 ms, so sessions may be as short as 1 s (the
# server's minimum is 2 * tickTime) and up to 60 s; initLimit=10 and
# syncLimit=5 ticks; the admin HTTP server is off; every four-letter
# command (ruok, srvr, ...) is allowed. The JVM heap is 256 MiB unless
# CASKADE_ZK_HEAP says otherwise (e.g. 2g for the controller simulation's
# 300,000 znodes, benches/controller_sim.rs).
set -euo pipefail

readonly JARS=/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar
readonly CONF=/etc/zookeeper/conf
readonly WAIT_S=30

die() {
  echo "zk.sh: $*" >&2
  exit 1
}

usage() {
  cat >&2 <<'EOF'
usage: scripts/zk.sh start DIR PORT
       scripts/zk.sh start-ensemble DIR C1,C2,C3 Q1,Q2,Q3 E1,E2,E3
       scripts/zk.sh start-member DIR I
       scripts/zk.sh stop-member DIR I
       scripts/zk.sh stop DIR
EOF
  exit 2
}

check_deps() {
  [ -f /usr/share/java/zookeeper.jar ] ||
    die "ZooKeeper is not installed (/usr/share/java/zookeeper.jar missing); run scripts/ensure-deps.sh"
  command -v java >/dev/null 2>&1 || die "java not found; run scripts/ensure-deps.sh"
  command -v nc >/dev/null 2>&1 || die "nc not found; run scripts/ensure-deps.sh"
}

check_port() {
  [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ] && [ "$1" -lt 65536 ] || die "bad port: '$1'"
}

# Absolute path of DIR, created if missing.
abs_dir() {
  mkdir -p "$1" || die "cannot create directory $1"
  (cd "$1" && pwd)
}

# Whether the pid in file $1 is a live process.
alive() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null || true)
  [[ "$pid" =~ ^[0-9]+$ ]] && pid_running "$pid"
}

# Answer of four-letter command $2 on port $1 (empty if none).
four() {
  echo "$2" | nc -q1 -w1 127.0.0.1 "$1" 2>/dev/null || true
}

# write_config MEMBER_DIR CLIENT_PORT [server lines...]
write_config() {
  local dir=$1 port=$2
  shift 2
  mkdir -p "$dir/data"
  {
    echo "tickTime=500"
    echo "initLimit=10"
    echo "syncLimit=5"
    echo "dataDir=$dir/data"
    echo "clientPort=$port"
    echo "clientPortAddress=127.0.0.1"
    echo "minSessionTimeout=1000"
    echo "maxSessionTimeout=60000"
    echo "maxClientCnxns=0"
    echo "admin.enableServer=false"
    echo "4lw.commands.whitelist=*"
    echo "preAllocSize=4096"
    echo "autopurge.purgeInterval=0"
    for line in "$@"; do echo "$line"; done
  } >"$dir/zoo.cfg"
}

# Launches the server configured in MEMBER_DIR/zoo.cfg in the background.
launch() {
  local dir=$1
  # Not `exec`'d through a shell that could be reaped with us: the server
  # outlives this script; its pid goes to zk.pid.
  nohup java -Xms32m -Xmx"${CASKADE_ZK_HEAP:-256m}" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dzookeeper.root.logger=INFO,CONSOLE \
    -Dzookeeper.log.dir="$dir" \
    -Dzookeeper.admin.enableServer=false \
    -cp "$JARS:$CONF" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg" \
    >>"$dir/zk.log" 2>&1 </dev/null &
  echo $! >"$dir/zk.pid"
}

# Waits until port $2 answers imok; on timeout prints the log tail of
# member dir $1 and fails.
wait_imok() {
  local dir=$1 port=$2 deadline=$((SECONDS + WAIT_S))
  while [ "$(four "$port" ruok)" != "imok" ]; do
    if ! alive "$dir/zk.pid"; then
      echo "zk.sh: ZooKeeper in $dir exited during startup; log tail:" >&2
      tail -n 30 "$dir/zk.log" >&2 || true
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "zk.sh: ZooKeeper on 127.0.0.1:$port did not answer imok within ${WAIT_S}s; log tail ($dir/zk.log):" >&2
      tail -n 30 "$dir/zk.log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}

# Stops the process in pid file $1: TERM, then KILL after 5 s.
# pid_running PID: the process exists and is not a zombie. The JVM is
# started in the background by a shell that exits, so once it dies it may
# stay a zombie until init reaps it (1-2 s here); it then holds no port or
# file.
pid_running() {
  kill -0 "$1" 2>/dev/null && [ "$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]
}

stop_pidfile() {
  local file=$1 pid
  pid=$(cat "$file" 2>/dev/null || true)
  if [[ "$pid" =~ ^[0-9]+$ ]] && pid_running "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      pid_running "$pid" || break
      sleep 0.1
    done
    if pid_running "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 50); do
        pid_running "$pid" || break
        sleep 0.1
      done
    fi
    echo "zk.sh: stopped pid $pid ($file)"
  fi
  rm -f "$file"
}

# Checks that "a,b,c" is exactly three ports.
check_three_ports() {
  local parts p
  IFS=, read -r -a parts <<<"$1"
  [ "${#parts[@]}" -eq 3 ] || die "expected three comma-separated ports, got '$1'"
  for p in "${parts[@]}"; do check_port "$p"; done
}

cmd_start() {
  [ $# -eq 2 ] || usage
  check_deps
  check_port "$2"
  local dir port=$2
  dir=$(abs_dir "$1")
  if alive "$dir/zk.pid"; then
    echo "zk.sh: ZooKeeper already running in $dir (pid $(cat "$dir/zk.pid"))"
    exit 0
  fi
  if [ "$(four "$port" ruok)" = "imok" ]; then
    die "port $port already serves another ZooKeeper (not started from $dir)"
  fi
  write_config "$dir" "$port"
  launch "$dir"
  wait_imok "$dir" "$port"
  echo "zk.sh: ZooKeeper on 127.0.0.1:$port (pid $(cat "$dir/zk.pid"), dir $dir)"
}

cmd_start_ensemble() {
  [ $# -eq 4 ] || usage
  check_deps
  local dir c q e i
  dir=$(abs_dir "$1")
  check_three_ports "$2"
  check_three_ports "$3"
  check_three_ports "$4"
  IFS=, read -r -a c <<<"$2"
  IFS=, read -r -a q <<<"$3"
  IFS=, read -r -a e <<<"$4"
  local servers=()
  for i in 1 2 3; do
    servers+=("server.$i=127.0.0.1:${q[$((i - 1))]}:${e[$((i - 1))]}")
  done
  for i in 1 2 3; do
    local m="$dir/$i"
    if alive "$m/zk.pid"; then
      echo "zk.sh: member $i already running in $m (pid $(cat "$m/zk.pid"))"
      continue
    fi
    mkdir -p "$m/data"
    write_config "$m" "${c[$((i - 1))]}" "${servers[@]}"
    echo "$i" >"$m/data/myid"
    launch "$m"
  done
  for i in 1 2 3; do
    wait_imok "$dir/$i" "${c[$((i - 1))]}"
  done
  # A member answers imok before the quorum has formed; wait for the roles.
  local deadline=$((SECONDS + WAIT_S))
  while :; do
    local leaders=0 followers=0 mode
    for i in 1 2 3; do
      mode=$(four "${c[$((i - 1))]}" srvr | sed -n 's/^Mode: //p')
      [ "$mode" = leader ] && leaders=$((leaders + 1))
      [ "$mode" = follower ] && followers=$((followers + 1))
    done
    if [ "$leaders" -eq 1 ] && [ "$followers" -eq 2 ]; then
      break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "zk.sh: ensemble in $dir formed no quorum within ${WAIT_S}s; log tails:" >&2
      for i in 1 2 3; do
        echo "--- member $i" >&2
        tail -n 15 "$dir/$i/zk.log" >&2 || true
      done
      exit 1
    fi
    sleep 0.2
  done
  echo "zk.sh: ensemble on 127.0.0.1:${c[0]},127.0.0.1:${c[1]},127.0.0.1:${c[2]} (dir $dir)"
}

# Client port of the member in MEMBER_DIR, from its zoo.cfg.
member_port() {
  sed -n 's/^clientPort=//p' "$1/zoo.cfg"
}

cmd_start_member() {
  [ $# -eq 2 ] || usage
  check_deps
  local dir="$1/$2"
  [ -f "$dir/zoo.cfg" ] || die "no ensemble member $2 in $1 (missing $dir/zoo.cfg)"
  if alive "$dir/zk.pid"; then
    echo "zk.sh: member $2 already running in $dir (pid $(cat "$dir/zk.pid"))"
    exit 0
  fi
  launch "$dir"
  wait_imok "$dir" "$(member_port "$dir")"
  echo "zk.sh: member $2 on 127.0.0.1:$(member_port "$dir") (pid $(cat "$dir/zk.pid"))"
}

cmd_stop_member() {
  [ $# -eq 2 ] || usage
  [ -f "$1/$2/zk.pid" ] || exit 0
  stop_pidfile "$1/$2/zk.pid"
}

cmd_stop() {
  [ $# -eq 1 ] || usage
  [ -d "$1" ] || exit 0
  local f
  while IFS= read -r f; do
    stop_pidfile "$f"
  done < <(find "$1" -name zk.pid -type f 2>/dev/null)
}

[ $# -ge 1 ] || usage
sub=$1
shift
case "$sub" in
start) cmd_start "$@" ;;
start-ensemble) cmd_start_ensemble "$@" ;;
start-member) cmd_start_member "$@" ;;
stop-member) cmd_stop_member "$@" ;;
stop) cmd_stop "$@" ;;
*) usage ;;
esac
