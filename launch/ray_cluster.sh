#!/usr/bin/env bash
# A Ray cluster of GPU nodes. run_dir must be on a filesystem every node sees
# (policies and learner checkpoints are written by the ranks, read by the generators).
#
#   on the head node:     launch/ray_cluster.sh head
#   on every other node:  launch/ray_cluster.sh worker HEAD_IP
#   then, on the head:    launch/ray_cluster.sh train configs/paper_pairpm.yaml [overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${RAY_PORT:-6379}
case "${1:-}" in
  head)   .venv/bin/ray start --head --port="$PORT" --disable-usage-stats ;;
  worker) .venv/bin/ray start --address="${2:?HEAD_IP}:$PORT" --disable-usage-stats ;;
  train)  shift; CONFIG=${1:?CONFIG}; shift
          exec .venv/bin/inpo train "$CONFIG" run.ray_address=auto "$@" ;;
  stop)   .venv/bin/ray stop ;;
  *) echo "usage: $0 head | worker HEAD_IP | train CONFIG [overrides] | stop" >&2; exit 2 ;;
esac
