#!/usr/bin/env bash
# GPU smoke test: the quickstart on one GPU with the CUDA `vllm` package, bf16,
# generators and learner placed on the GPU by Ray (they share it in fractions).
# Uses the current python if it already has inpo's GPU stack, else installs it.
#   launch/gpu_smoke.sh [overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import vllm, deepspeed, ray, torch; assert torch.cuda.is_available()" 2>/dev/null; then
  "$PY" -m venv .venv-gpu
  PY=.venv-gpu/bin/python
  "$PY" -m pip install -q -e '.[gpu,dev]'
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
RUN=${RUN_DIR:-runs/gpu_smoke}
rm -rf "$RUN"
export PYTHONUNBUFFERED=1
time "$PY" -m inpo.cli train run.dir="$RUN" run.device=cuda model.dtype=bfloat16 \
  learner.num_ranks=1 "$@"
"$PY" - "$RUN" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
last = rows[-1]
print(f"GPU smoke: {len(rows)} iterations, win vs ref {last['win_vs_ref']:.3f} "
      f"{last['win_vs_ref_ci']}, sync diff {last['sync_max_token_diff']:.2e}")
PY
