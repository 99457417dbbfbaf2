#!/usr/bin/env bash
# A real Slurm of two nodes, n1 and n2, on this one host (Debian's slurm-wlm 22.05 and
# munge), for tests/e2e/test_slurm_e2e.py: two slurmd of their own ports, each node with
# the host's CPUs and 4 GPUs of type h100 as GRES on empty device files, so a job sees
# SLURM_GPUS_PER_NODE=h100:4 as on a GPU cluster and Ray gets them as logical GPUs.
# Run as root (munged and both slurmd run as root here).
#   tests/slurm_local.sh [start]   install what is missing (apt-get), write the config,
#                                  start munged (if none answers), slurmctld, 2 slurmd
#   tests/slurm_local.sh status    sinfo
#   tests/slurm_local.sh stop      cancel the cluster's jobs, stop what start started
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by inpo tests/slurm_local.sh"
STATE=/var/lib/inpo-slurm
LOGS=/var/log/inpo-slurm
PIDS=/run/inpo-slurm
GPUS=4
NODES=(n1 n2)

die() {
  echo "error: $*" >&2
  exit 1
}

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  command -v apt-get >/dev/null || die "no slurmctld/munged and no apt-get: install Slurm and munge"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
}

write_config() {
  # Never overwrite a real cluster's configuration.
  if [[ -f $CONF ]] && ! grep -qxF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; not touching it"
  fi
  local host cpus mem port=17001 node
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) / 2))
  mkdir -p /etc/slurm "$STATE/slurmctld" "$LOGS" "$PIDS"
  for ((i = 0; i < GPUS; i++)); do
    touch "/dev/inpo-fakegpu$i" # GRES needs a File=; a count-only line registers no GPU
  done
  {
    echo "$MARK"
    cat <<EOF
ClusterName=inpolocal
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
GresTypes=gpu
KillWait=15
MinJobAge=600
StateSaveLocation=$STATE/slurmctld
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdSpoolDir=$STATE/slurmd-%n
SlurmdPidFile=$PIDS/slurmd-%n.pid
SlurmdLogFile=$LOGS/slurmd-%n.log
EOF
    for node in "${NODES[@]}"; do
      echo "NodeName=$node NodeHostname=$host NodeAddr=127.0.0.1 Port=$port CPUs=$cpus" \
        "RealMemory=$mem Gres=gpu:h100:$GPUS State=UNKNOWN"
      port=$((port + 1))
    done
    echo "PartitionName=inpo Nodes=$(
      IFS=,
      echo "${NODES[*]}"
    ) Default=YES MaxTime=INFINITE State=UP"
  } >"$CONF.new"
  mv "$CONF.new" "$CONF"
  echo "$MARK" >/etc/slurm/gres.conf
  echo "NodeName=n[1-${#NODES[@]}] Name=gpu Type=h100 File=/dev/inpo-fakegpu[0-$((GPUS - 1))]" \
    >>/etc/slurm/gres.conf
}

munge_ok() {
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}

running() { # PIDFILE
  [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

start() {
  [[ $(id -u) -eq 0 ]] || die "run as root (munged and slurmd run as root here)"
  install
  write_config
  if ! munge_ok; then
    [[ -s /etc/munge/munge.key ]] || {
      head -c 1024 /dev/urandom >/etc/munge/munge.key
      chown munge:munge /etc/munge/munge.key
      chmod 400 /etc/munge/munge.key
    }
    mkdir -p /run/munge
    munged --force
    touch "$PIDS/munged.ours"
    sleep 1
    munge_ok || die "munged does not answer"
  fi
  running "$PIDS/slurmctld.pid" || slurmctld
  local node deadline=$((SECONDS + 60))
  for node in "${NODES[@]}"; do
    mkdir -p "$STATE/slurmd-$node"
    running "$PIDS/slurmd-$node.pid" || slurmd -N "$node"
  done
  until [[ $(sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 == "idle"' | wc -l) -ge ${#NODES[@]} ]]; do
    ((SECONDS < deadline)) || {
      sinfo -N -o '%N %t %E' >&2 || true
      die "the nodes are not idle after 60 s (logs: $LOGS)"
    }
    # a node drained by an earlier, stopped cluster comes back
    scontrol update NodeName="$(
      IFS=,
      echo "${NODES[*]}"
    )" State=RESUME >/dev/null 2>&1 || true
    sleep 1
  done
  sinfo -N -o '%N %t %c %G'
}

stop_pid() { # PIDFILE
  local pid deadline=$((SECONDS + 30))
  running "$1" || return 0
  pid=$(cat "$1")
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
    sleep 0.5
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  rm -f "$1"
}

stop() {
  local node
  if running "$PIDS/slurmctld.pid"; then
    scancel --partition=inpo 2>/dev/null || true
    local deadline=$((SECONDS + 60)) # let the jobs' processes end under their slurmd
    while [[ -n $(squeue -h -p inpo 2>/dev/null) ]] && ((SECONDS < deadline)); do
      sleep 1
    done
  fi
  for node in "${NODES[@]}"; do
    stop_pid "$PIDS/slurmd-$node.pid"
  done
  stop_pid "$PIDS/slurmctld.pid"
  if [[ -f $PIDS/munged.ours ]]; then
    stop_pid /run/munge/munged.pid
    rm -f "$PIDS/munged.ours"
  fi
  echo "local Slurm stopped"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) sinfo -N -o '%N %t %c %G' ;;
  *)
    echo "usage: $0 [start | stop | status]" >&2
    exit 2
    ;;
esac
