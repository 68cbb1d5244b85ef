# Shared by the benchmark scripts that start their own servers on loopback
# (bench-vs-redis.sh, bench-cluster.sh). Source it once WORK (the run's
# work directory) is set and log() is defined. It provides:
#   PIDS       every process the script starts, pid by name; all of them are
#              killed (SIGKILL) and reaped on exit, also on Ctrl-C or failure,
#              with the ZooKeeper of WORK/zk stopped and WORK removed unless
#              KEEP=1 or the run failed;
#   free_port  sets PORT to a TCP port nothing listens on and that this run
#              has not handed out yet, below the kernel's ephemeral range, so
#              no outgoing connection takes it before the server binds it.
#              Call it in the script's own shell (`free_port; x=$PORT`), not
#              in `$(...)`: a subshell would forget the ports handed out.

declare -A PIDS=()

cleanup() {
  local status=$? name
  trap - EXIT INT TERM
  for name in "${!PIDS[@]}"; do kill -KILL "${PIDS[$name]}" 2>/dev/null || true; done
  for name in "${!PIDS[@]}"; do wait "${PIDS[$name]}" 2>/dev/null || true; done
  scripts/zk.sh stop "$WORK/zk" >/dev/null 2>&1 || true
  if [ "${KEEP:-}" = 1 ] || [ "$status" -ne 0 ]; then
    log "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -A USED_PORTS=()
EPHEMERAL_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
readonly EPHEMERAL_LOW
free_port() {
  local p
  while :; do
    p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
    [ -z "${USED_PORTS[$p]:-}" ] || continue
    nc -z 127.0.0.1 "$p" >/dev/null 2>&1 && continue
    USED_PORTS[$p]=1
    PORT=$p
    return
  done
}
