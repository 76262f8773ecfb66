#!/usr/bin/env bash
# An emulated multi-node Slurm cluster on one machine: every node is its own network
# namespace (own address, own hostname, own slurmd); the bridge and slurmctld live in
# a namespace of their own, the "login node", from which jobs are submitted.
#
#   bash scripts/rehearsal/cluster.sh up   [NODES]   # idempotent; NODES >= 2 (default 3)
#   bash scripts/rehearsal/cluster.sh down           # idempotent; removes everything up created
#   bash scripts/rehearsal/cluster.sh status
#   bash scripts/rehearsal/cluster.sh exec CMD...    # run CMD on the login node (sbatch, scontrol, python -m launch)
#   bash scripts/rehearsal/cluster.sh node-exec N CMD...  # run CMD inside node N's network namespace
#
# Why namespaces and not containers: slurmd, torchrun's c10d rendezvous and gloo then talk
# over real TCP between distinct addresses and hostnames, which is what breaks on a real
# cluster (the rendezvous host recognising itself, gloo binding the right interface), with
# nothing but iproute2 and the slurm-wlm that .ci/slurm/setup.sh installs. docs/rehearsal.md
# lists the pitfalls this script works around. Needs root.
#
# It coexists with the one-node CI Slurm (.ci/slurm/setup.sh): its own slurm.conf (SLURM_CONF),
# its own ports, spool, pid and log files; munged is shared (its socket is on the filesystem).
set -euo pipefail

NET_PREFIX=${REHEARSAL_NET_PREFIX:-10.213.7}          # one /24 made for this, removed on down
STATE_DIR=${REHEARSAL_STATE_DIR:-/var/tmp/teleflm-rehearsal}
CTLD_PORT=${REHEARSAL_CTLD_PORT:-6917}                # the CI Slurm uses 6817/6818
SLURMD_PORT=${REHEARSAL_SLURMD_PORT:-6918}
NODE_PREFIX=rhnode                                    # node hostnames: rhnode1, rhnode2, ...
NS_PREFIX=rh-                                         # namespaces: rh-ctl, rh-rhnode1, ...
CTL_NS=${NS_PREFIX}ctl
BRIDGE=rhbr0
HOSTS_TAG="# teleflm-rehearsal"
CONF=$STATE_DIR/slurm.conf
REPO_ROOT=$(cd "$(dirname "$0")/../.." && pwd)
log() { echo "[rehearsal/cluster] $*" >&2; }

node_ns() { echo "${NS_PREFIX}${NODE_PREFIX}$1"; }
node_addr() { echo "${NET_PREFIX}.$((10 + $1))"; }
in_ctl() { SLURM_CONF=$CONF nsenter --net="/var/run/netns/$CTL_NS" "$@"; }

require_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "[rehearsal/cluster] must run as root (network namespaces, slurmctld/slurmd)" >&2; exit 1
  fi
  command -v ip >/dev/null && command -v nsenter >/dev/null && command -v unshare >/dev/null || {
    echo "[rehearsal/cluster] needs ip (iproute2), nsenter and unshare (util-linux): run .ci/rehearsal/setup.sh" >&2; exit 1; }
}

node_count() { [ -s "$STATE_DIR/nodes" ] && cat "$STATE_DIR/nodes" || echo 0; }

# Node names and states as the rehearsal controller sees them; empty when it does not answer.
node_states() { in_ctl timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null || true; }

healthy() {
  local want=$1 states
  [ -e "/var/run/netns/$CTL_NS" ] || return 1
  [ "$(node_count)" = "$want" ] || return 1
  states=$(node_states)
  [ "$(echo "$states" | grep -cE ' (idle|mixed|allocated)')" = "$want" ]
}

remove_hosts_lines() {
  # Rewrite in place (not sed -i): /etc/hosts may be a bind mount that cannot be renamed over.
  if grep -q "$HOSTS_TAG" /etc/hosts 2>/dev/null; then
    local kept; kept=$(grep -v "$HOSTS_TAG" /etc/hosts)
    printf '%s\n' "$kept" > /etc/hosts
  fi
}

kill_pidfile() {
  local f=$1
  if [ -s "$f" ]; then
    local pid; pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  if [ -e "/var/run/netns/$CTL_NS" ] && [ -f "$CONF" ]; then
    in_ctl timeout 10 scancel --full --quiet --user=root 2>/dev/null || true
  fi
  for f in "$STATE_DIR"/run/slurmd-*.pid; do [ -e "$f" ] && kill_pidfile "$f"; done
  kill_pidfile "$STATE_DIR/run/slurmctld.pid"
  # Job steps started by the slurmds (slurmstepd and their torchrun/ranks) live in the node
  # namespaces; deleting a namespace does not end them, so end the processes in them first.
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${NS_PREFIX}" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null || true); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  remove_hosts_lines
  rm -rf "$STATE_DIR"
  log "down"
}

write_conf() {
  local n=$1 host mem_mb
  host=$(hostname)
  mem_mb=${REHEARSAL_NODE_MEM_MB:-16000}
  mkdir -p "$STATE_DIR"/{ctld,spool,run,log}
  {
    echo "# Written by scripts/rehearsal/cluster.sh: an emulated ${n}-node cluster (docs/rehearsal.md)."
    echo "ClusterName=rehearsal"
    # slurmctld refuses a SlurmctldHost that is not this machine's hostname; the address is the bridge's.
    echo "SlurmctldHost=${host}(${NET_PREFIX}.1)"
    echo "SlurmctldPort=${CTLD_PORT}"
    echo "SlurmdPort=${SLURMD_PORT}"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "StateSaveLocation=$STATE_DIR/ctld"
    echo "SlurmdSpoolDir=$STATE_DIR/spool/%n"      # %n: every node its own spool, pid and log
    echo "SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid"
    echo "SlurmdPidFile=$STATE_DIR/run/slurmd-%n.pid"
    echo "SlurmctldLogFile=$STATE_DIR/log/slurmctld.log"
    echo "SlurmdLogFile=$STATE_DIR/log/slurmd-%n.log"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_CPU"
    echo "SchedulerType=sched/backfill"
    echo "MpiDefault=none"
    echo "ReturnToService=2"
    echo "JobRequeue=1"
    echo "KillWait=5"
    echo "MinJobAge=600"
    echo "SchedulerParameters=sched_interval=2"
    echo "InactiveLimit=0"
    echo "Waittime=0"
    # Node failure detection, fast enough for a rehearsal (a real site uses the defaults).
    echo "SlurmdTimeout=30"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    # Every node has the whole machine's CPUs; the configured ones win over what slurmd detects.
    echo "SlurmdParameters=config_overrides"
    for i in $(seq "$n"); do
      echo "NodeName=${NODE_PREFIX}${i} NodeAddr=$(node_addr "$i") CPUs=2 RealMemory=${mem_mb} State=UNKNOWN"
    done
    echo "PartitionName=rehearsal Nodes=${NODE_PREFIX}[1-${n}] Default=YES MaxTime=INFINITE State=UP"
  } > "$CONF"
}

up() {
  local n=${1:-3} start
  start=$(date +%s)
  [ "$n" -ge 2 ] 2>/dev/null || { echo "[rehearsal/cluster] NODES must be an integer >= 2, got '$n'" >&2; exit 2; }
  if healthy "$n"; then log "already up: $n nodes"; return 0; fi
  down >/dev/null 2>&1 || true
  # Slurm and munge: the CI script installs slurm-wlm and starts munged (idempotent; also starts the
  # one-node CI Slurm, which runs alongside on its own ports).
  # Before our daemons start: setup.sh decides "running" by process name (pgrep -x slurmctld).
  bash "$REPO_ROOT/.ci/slurm/setup.sh" >&2
  write_conf "$n"
  echo "$n" > "$STATE_DIR/nodes"

  # The login namespace: a bridge holding the controller's address.
  ip netns add "$CTL_NS"
  ip -n "$CTL_NS" link set lo up
  ip -n "$CTL_NS" link add "$BRIDGE" type bridge
  ip -n "$CTL_NS" addr add "${NET_PREFIX}.1/24" dev "$BRIDGE"
  ip -n "$CTL_NS" link set "$BRIDGE" up
  : > "$STATE_DIR/hosts"
  for i in $(seq "$n"); do
    local ns; ns=$(node_ns "$i")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # One veth pair per node: eth0 inside the node, the other end enslaved to the bridge.
    ip link add "rhv$i" netns "$CTL_NS" type veth peer name eth0 netns "$ns"
    ip -n "$CTL_NS" link set "rhv$i" master "$BRIDGE" up
    ip -n "$ns" addr add "$(node_addr "$i")/24" dev eth0
    ip -n "$ns" link set eth0 up
    echo "$(node_addr "$i") ${NODE_PREFIX}${i} $HOSTS_TAG" >> "$STATE_DIR/hosts"
  done
  remove_hosts_lines
  cat "$STATE_DIR/hosts" >> /etc/hosts

  # slurmctld in the login namespace (keeps this machine's hostname: SlurmctldHost must match it).
  in_ctl /usr/sbin/slurmctld -i -f "$CONF"
  # One slurmd per node. nsenter --net, not `ip netns exec`: the latter remounts /sys and slurmd
  # then finds no cgroup filesystem. unshare --uts + hostname: torchrun's c10d agent on the first
  # node must see its own name as the rendezvous endpoint, or nobody hosts the store.
  for i in $(seq "$n"); do
    SLURM_CONF=$CONF nsenter --net="/var/run/netns/$(node_ns "$i")" unshare --uts \
      sh -c "hostname ${NODE_PREFIX}${i}; exec /usr/sbin/slurmd -f '$CONF' -N ${NODE_PREFIX}${i}"
  done
  for _ in $(seq 150); do healthy "$n" && break; sleep 0.2; done
  if ! healthy "$n"; then
    in_ctl scontrol update NodeName="${NODE_PREFIX}[1-${n}]" State=RESUME >/dev/null 2>&1 || true
    for _ in $(seq 50); do healthy "$n" && break; sleep 0.2; done
  fi
  if ! healthy "$n"; then
    echo "[rehearsal/cluster] nodes did not come up: $(node_states | tr '\n' ' ')" >&2
    tail -n 20 "$STATE_DIR"/log/*.log >&2 || true
    exit 1
  fi
  log "up: $n nodes ($(node_states | tr '\n' ' ')) in $(( $(date +%s) - start )) s; SLURM_CONF=$CONF"
}

status() {
  [ -f "$CONF" ] || { echo "down"; return 1; }
  node_states
}

case "${1:-}" in
  up) require_root; up "${2:-3}" ;;
  down) require_root; down ;;
  status) status ;;
  exec) shift; in_ctl "$@" ;;
  node-exec) shift; i=$1; shift; SLURM_CONF=$CONF nsenter --net="/var/run/netns/$(node_ns "$i")" "$@" ;;
  conf) echo "$CONF" ;;
  *) echo "usage: $0 up [NODES] | down | status | exec CMD... | node-exec N CMD... | conf" >&2; exit 2 ;;
esac
