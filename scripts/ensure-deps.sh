#!/usr/bin/env bash
# Installs what `make test` and the cluster scripts need and the machine
# lacks: ZooKeeper, netcat, jq (the failover demo reads the cluster
# table as JSON), iproute2 and iptables (the torture scenarios' network
# partitions), libfaketime (the clock-skew scenario), redis-tools and
# redis-server (the RESP tests run redis-cli and redis-benchmark against
# caskade and a real Redis), python3 and python3-venv (the Python `redis`
# package tests) from Debian's packages. Runs `apt-get update` only when
# something must be installed. Idempotent and quiet when everything is
# present.
set -euo pipefail

missing=()
[ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
command -v nc >/dev/null 2>&1 || missing+=(netcat-openbsd)
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
command -v jq >/dev/null 2>&1 || missing+=(jq)
# The torture scenarios' network partitions: namespaces, veth pairs, iptables.
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
# The torture scenario clock-skew runs one node under libfaketime (the file
# tests/torture/skew.rs preloads, in the multiarch directory of this
# machine's architecture); without it the scenario only says it is skipped.
compgen -G "/usr/lib/$(uname -m)-linux-*/faketime/libfaketimeMT.so.1" >/dev/null || missing+=(libfaketime)
# The RESP tests compare caskade with a real Redis through its own clients.
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# tests/resp/resp_python.rs makes a venv for the Python `redis` package.
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "ensure-deps: installing ${missing[*]} from Debian's packages"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "ensure-deps: done"
