#!/usr/bin/env bash
# One machine, all its GPUs: Ray starts locally inside `inpo train`.
#   launch/single_node.sh configs/paper_pairpm.yaml [overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:?usage: launch/single_node.sh CONFIG [overrides...]}
shift
exec .venv/bin/inpo train "$CONFIG" "$@"
