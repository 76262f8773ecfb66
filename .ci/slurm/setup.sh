#!/usr/bin/env bash
# Install and start a real one-node Slurm (Debian's slurm-wlm) on this machine.
#
# Why: tests/launch/test_slurm.py submits, preempts and requeues a real job; a mock
# would not catch sbatch syntax, srun environment or requeue semantics.
# Idempotent: packages are installed once, the config is rewritten only when it
# changes, daemons are started only when `sinfo` does not answer. Needs root.
set -euo pipefail
start=$(date +%s)
log() { echo "[ci/slurm] $*"; }

if [ "$(id -u)" != 0 ]; then
  echo "[ci/slurm] must run as root (installs packages, starts slurmctld/slurmd)" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
fi

# munge: a key, then the daemon (it authenticates every Slurm RPC).
if [ ! -s /etc/munge/munge.key ]; then
  log "creating munge key"
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
if ! munge -n >/dev/null 2>&1; then
  log "starting munged"
  if id munge >/dev/null 2>&1; then
    su -s /bin/sh munge -c "/usr/sbin/munged --force" || /usr/sbin/munged --force
  else
    /usr/sbin/munged --force
  fi
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
fi

# One node, named localhost, with this machine's CPUs and most of its memory.
cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)   # GNU nproc honours OMP_NUM_THREADS (make exports 1)
mem_mb=$(awk '/MemTotal/ {print int($2/1024*0.9)}' /proc/meminfo)
conf_dir=/etc/slurm
mkdir -p "$conf_dir" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
new_conf=$(cat <<CONF
# Written by .ci/slurm/setup.sh: a one-node Slurm for tests.
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
# Fast turnaround for tests: short kill wait, quick scheduling passes.
KillWait=5
MinJobAge=600
SchedulerParameters=sched_interval=2
InactiveLimit=0
Waittime=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
)
running() { pgrep -x "$1" >/dev/null 2>&1; }
conf_changed=0
if [ ! -f "$conf_dir/slurm.conf" ] || [ "$(cat "$conf_dir/slurm.conf")" != "$new_conf" ]; then
  printf '%s\n' "$new_conf" > "$conf_dir/slurm.conf"
  conf_changed=1
fi

if [ "$conf_changed" = 1 ]; then
  # A changed config needs fresh daemons (their PIDs from the pid files only).
  for pidf in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid; do
    [ -s "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null || true
  done
  # slurmctld saves its state before exiting: wait for both to be gone, or the start below
  # sees the old one still running, skips it, and is left with no controller at all
  for _ in $(seq 100); do running slurmctld || running slurmd || break; sleep 0.1; done
fi
if ! running slurmctld; then log "starting slurmctld"; /usr/sbin/slurmctld -i; fi
if ! running slurmd; then log "starting slurmd"; /usr/sbin/slurmd -N localhost; fi

for _ in $(seq 100); do
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
  case "$state" in idle*|mixed*|allocated*) break ;; esac
  if [ "$state" = "down" ] || [ "$state" = "drained" ] || [ "$state" = "down*" ]; then
    scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
  fi
  sleep 0.2
done
state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
case "$state" in
  idle*|mixed*|allocated*) ;;
  *) echo "[ci/slurm] node did not come up (state: '${state:-no answer}'); see /var/log/slurm/*.log" >&2
     tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
     exit 1 ;;
esac
log "ready: $(sinfo -h -o '%P %D %T %c CPUs') in $(( $(date +%s) - start )) s"
