#!/usr/bin/env bash
# A Ray cluster of GPU nodes. run_dir must be on a filesystem every node sees
# (policies and learner checkpoints are written by the ranks, read by the generators).
#
#   on the head node:     launch/ray_cluster.sh head [--block]
#   on every other node:  launch/ray_cluster.sh worker HEAD_IP[:PORT] [--block]
#   then, on the head:    launch/ray_cluster.sh wait NODES GPUS [TIMEOUT_S]
#                         launch/ray_cluster.sh train configs/paper_pairpm.yaml [overrides...]
#
# What `ray start` is given (launch/slurm.sbatch runs head and worker under srun):
#   --num-cpus  INPO_NUM_CPUS, else SLURM_CPUS_PER_TASK, else SLURM_CPUS_ON_NODE, else nproc
#   --num-gpus  INPO_NUM_GPUS, else SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE ("h100:8"
#               reads 8), else CUDA_VISIBLE_DEVICES / nvidia-smi, else 0
#   --node-ip-address  INPO_NODE_IP, else a routable address (never 127.x)
#   --port      RAY_PORT, else 20000 + 2 * (SLURM_JOB_ID mod 5000) in a Slurm job, else 6379
#   --temp-dir  INPO_RAY_TEMP_DIR, else /tmp/inpo-ray-SLURM_JOB_ID in a Slurm job
# Other subcommands print one of those: ip [TARGET], gpus, cpus, port.
# This file can be sourced (tests/unit/test_launch.py calls its functions).
set -euo pipefail
shopt -s inherit_errexit # a failing $(...) inside a function fails it too

die() {
  echo "error: $*" >&2
  exit 1
}

# A GPU count from Slurm's forms: "8", "h100:8", "gpu:h100:8", "h100:4,a100:2" (a sum),
# "gpu:h100:8(IDX:0-7)".
parse_gpus() {
  local spec=$1 total=0 item n
  while [[ $spec == *"("*")"* ]]; do # drop "(IDX:...)", which may hold commas
    spec=${spec%%(*}${spec#*)}
  done
  local IFS=,
  for item in $spec; do
    n=${item##*:}
    [[ $n =~ ^[0-9]+$ ]] || {
      echo "error: cannot read a GPU count from '$1'" >&2
      return 1
    }
    total=$((total + 10#$n))
  done
  echo "$total"
}

# GPUs of this node. SLURM_GPUS_ON_NODE is the node's own count; SLURM_GPUS_PER_NODE is
# what the job asked for, which may carry a type ("h100:8").
gpu_count() {
  if [[ -n ${INPO_NUM_GPUS:-} ]]; then
    parse_gpus "$INPO_NUM_GPUS"
  elif [[ -n ${SLURM_GPUS_ON_NODE:-} ]]; then
    parse_gpus "$SLURM_GPUS_ON_NODE"
  elif [[ -n ${SLURM_GPUS_PER_NODE:-} ]]; then
    parse_gpus "$SLURM_GPUS_PER_NODE"
  elif [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
    local IFS=,
    # shellcheck disable=SC2086 # split on commas
    set -- $CUDA_VISIBLE_DEVICES
    echo $#
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else
    echo 0
  fi
}

# CPUs this node gives Ray: the job step's share, not every core of the host (Ray would
# otherwise count CPUs the step is not allowed to use and the planner over-subscribe them).
cpu_count() {
  local n=${INPO_NUM_CPUS:-${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-}}}
  [[ -n $n ]] || n=$(nproc)
  echo "$n"
}

is_loopback() {
  [[ $1 == 127.* || $1 == ::1 || $1 == 169.254.* || $1 == fe80:* ]]
}

# An address other nodes reach this one at. `hostname --ip-address` gives 127.0.1.1 on
# Debian-style /etc/hosts, which Ray would then advertise to every other node.
#   node_ip TARGET: the source address of the route to TARGET (a worker, toward the head)
#   node_ip:        what the host name resolves to, else the default route's source, else
#                   the first non-loopback address of `hostname -I`
node_ip() {
  local target=${1:-} ip=""
  if [[ -n ${INPO_NODE_IP:-} ]]; then
    echo "$INPO_NODE_IP"
    return
  fi
  if [[ -n $target ]]; then
    ip=$(ip -o route get "$target" 2>/dev/null | sed -n 's/.* src \([^ ]*\).*/\1/p' | head -n1) || true
  fi
  if [[ -z $ip ]] || is_loopback "$ip"; then
    ip=$(getent ahostsv4 "$(hostname)" 2>/dev/null | awk '$1 !~ /^127\./ {print $1; exit}') || true
  fi
  if [[ -z $ip ]]; then
    ip=$(ip -o route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([^ ]*\).*/\1/p' | head -n1) || true
  fi
  if [[ -z $ip ]] || is_loopback "$ip"; then
    ip=""
    local a
    for a in $(hostname -I 2>/dev/null || true); do
      if ! is_loopback "$a"; then
        ip=$a
        break
      fi
    done
  fi
  [[ -n $ip ]] || die "no routable address found for $(hostname); set INPO_NODE_IP"
  echo "$ip"
}

# The GCS port, and the Ray client server's one above it: from the job id, so two jobs
# that share a node do not both take Ray's default 6379; 20000-29999 lies between Ray's
# worker ports (10002-19999) and Linux's ephemeral ones (32768 and up).
ray_port() {
  if [[ -n ${RAY_PORT:-} ]]; then
    echo "$RAY_PORT"
  elif [[ -n ${SLURM_JOB_ID:-} ]]; then
    echo $((20000 + 2 * (SLURM_JOB_ID % 5000)))
  else
    echo 6379
  fi
}

# Ray's temp dir (sessions, logs, sockets), per job: short, since socket paths must stay
# under 108 bytes.
ray_temp_dir() {
  if [[ -n ${INPO_RAY_TEMP_DIR:-} ]]; then
    echo "$INPO_RAY_TEMP_DIR"
  elif [[ -n ${SLURM_JOB_ID:-} ]]; then
    echo "/tmp/inpo-ray-$SLURM_JOB_ID"
  fi
}

# A port free on this node now (Ray's fixed defaults for the dashboard agent and the
# dashboard are taken by any other Ray node on the host).
free_port() {
  "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

# Wait until TCP HOST:PORT accepts a connection (a worker started before its head).
wait_tcp() {
  local host=$1 port=$2 timeout=$3 start=$SECONDS
  until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
    ((SECONDS - start < timeout)) || die "the Ray head at $host:$port did not answer in ${timeout}s"
    sleep 1
  done
}

# `ray start` arguments shared by head and worker nodes (one a line). Each value is
# assigned on its own, so that a failure stops the script (set -e).
common_args() {
  local ip=$1 cpus gpus agent temp
  cpus=$(cpu_count)
  gpus=$(gpu_count)
  agent=$(free_port)
  temp=$(ray_temp_dir)
  printf '%s\n' "--num-cpus=$cpus" "--num-gpus=$gpus" "--node-ip-address=$ip" \
    "--dashboard-agent-listen-port=$agent" "--disable-usage-stats"
  [[ -z $temp ]] || printf '%s\n' "--temp-dir=$temp"
}

# The dashboard's port is free, too: `ray start` does not look past its default (8265)
# when another head on the node holds it.
head_args() {
  local port ip dashboard
  port=$(ray_port)
  ip=$(node_ip)
  dashboard=$(free_port)
  printf '%s\n' "--head" "--port=$port" "--ray-client-server-port=$((port + 1))" \
    "--dashboard-port=$dashboard"
  common_args "$ip"
}

worker_args() {
  local head=$1 host port ip
  host=${head%:*}
  port=$(ray_port)
  [[ $head != *:* ]] || port=${head##*:}
  ip=$(node_ip "$host")
  printf '%s\n' "--address=$host:$port"
  common_args "$ip"
}

# Wait until NODES nodes and GPUS GPUs have joined the cluster at ADDRESS (the head's GCS);
# any PID given (the `srun` of a node's `ray start`) that ends first fails it at once.
wait_nodes() {
  local address=$1 nodes=$2 gpus=$3 timeout=${4:-300}
  shift 3
  [[ $# -eq 0 ]] || shift
  "$VENV/bin/python" - "$address" "$nodes" "$gpus" "$timeout" "$@" <<'EOF'
import os, socket, sys, time

address, nodes, gpus, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
pids = [int(p) for p in sys.argv[5:]]
t0 = time.monotonic()
host, port = address.rsplit(":", 1)


def ended():
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return pid
        except FileNotFoundError:
            return pid
    return None


def check(have_nodes, have_gpus):
    waited = time.monotonic() - t0
    now = f"{have_nodes} of {nodes} nodes, {have_gpus:g} of {gpus:g} GPUs after {waited:.0f}s"
    if have_nodes >= nodes and have_gpus >= gpus:
        print(f"ray cluster at {address}: {now}", flush=True)
        sys.exit(0)
    pid = ended()
    if pid is not None:
        sys.exit(f"error: a node's `ray start` (pid {pid}) ended before the Ray cluster at "
                 f"{address} was whole: {now}; see its lines above")
    if waited > timeout:
        sys.exit(f"error: the Ray cluster at {address} has {now} (timeout {timeout:g}s, "
                 "INPO_RAY_JOIN_TIMEOUT): the missing nodes' `ray start` lines above say why")
    return now


while True:  # the head's GCS first: importing Ray takes seconds
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        break
    except OSError:
        check(0, 0)
        time.sleep(1)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
import ray  # noqa: E402

while True:
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        break
    except Exception:  # the head's raylet registers after its GCS is up
        check(0, 0)
        time.sleep(2)
last = 0.0
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    now = check(len(alive), sum(n["Resources"].get("GPU", 0) for n in alive))
    if time.monotonic() - last > 30:
        print(f"waiting for the Ray cluster at {address}: {now}", flush=True)
        last = time.monotonic()
    time.sleep(1)
EOF
}

main() {
  cd "$(dirname "$0")/.."
  VENV=${VENV:-.venv}
  local cmd=${1:-} text args
  [[ $# -eq 0 ]] || shift
  case "$cmd" in
    head)
      text=$(head_args)
      mapfile -t args <<<"$text"
      exec "$VENV/bin/ray" start "${args[@]}" "$@"
      ;;
    worker)
      local head=${1:?usage: $0 worker HEAD_IP[:PORT] [ray start args]} port
      shift
      port=$(ray_port)
      [[ $head != *:* ]] || port=${head##*:}
      wait_tcp "${head%:*}" "$port" "${INPO_RAY_JOIN_TIMEOUT:-300}"
      text=$(worker_args "$head")
      mapfile -t args <<<"$text"
      exec "$VENV/bin/ray" start "${args[@]}" "$@"
      ;;
    wait)
      local nodes=${1:?usage: $0 wait NODES GPUS [TIMEOUT_S [PID...]]} gpus=${2:?GPUS}
      shift 2
      wait_nodes "${RAY_ADDRESS:-$(node_ip):$(ray_port)}" "$nodes" "$gpus" "$@"
      ;;
    train) # on the head: the address `head` started it at (Ray's "auto" misses a --temp-dir)
      local config=${1:?usage: $0 train CONFIG [overrides...]} address
      shift
      address=${RAY_ADDRESS:-$(node_ip):$(ray_port)}
      exec "$VENV/bin/inpo" train "$config" "run.ray_address=$address" "$@"
      ;;
    ip) node_ip "$@" ;;
    gpus) gpu_count ;;
    cpus) cpu_count ;;
    port) ray_port ;;
    stop) "$VENV/bin/ray" stop ;; # every Ray node of this user on the machine
    *)
      echo "usage: $0 head | worker HEAD_IP[:PORT] | wait NODES GPUS [TIMEOUT_S] |" \
        "train CONFIG [overrides] | ip [TARGET] | gpus | cpus | port | stop" >&2
      exit 2
      ;;
  esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
