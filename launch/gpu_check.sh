#!/usr/bin/env bash
# GPU check of the learner path on a bare GPU host (torch, transformers, peft; no vLLM, no
# Ray, no network): installs DeepSpeed and its dependencies from a carried wheels folder,
# then runs bench/gpu_learner.py (1 rank, bf16, ZeRO-2 and ZeRO-3, full and LoRA), which
# prints tokens/s, the measured peak memory and `inpo plan`'s estimate side by side.
#   launch/gpu_check.sh [--wheels DIR] [bench/gpu_learner.py args...]   (default DIR: wheels)
#   launch/gpu_check.sh build-wheels [DIR]    on a machine with an index: fill DIR (~14 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DS_VERSION=0.19.8
if [ "${1:-}" = build-wheels ]; then
  DIR=${2:-wheels}
  mkdir -p "$DIR"
  # DeepSpeed is a source tarball on PyPI: build it into a pure-python wheel (no ops
  # prebuilt; the learner's torch AdamW needs none). Its build imports torch.
  "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR" "deepspeed==$DS_VERSION"
  # DeepSpeed's requirements a torch + transformers + peft host may lack (numpy, packaging,
  # tqdm, psutil come with those; psutil is carried for hosts without accelerate). The
  # compiled ones for every CPython the host might run.
  for v in 3.10 3.11 3.12 3.13; do
    "$PY" -m pip download -q --only-binary=:all: --no-deps --python-version "$v" \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux_2_28_x86_64 -d "$DIR" \
      pydantic-core==2.50.5 msgpack==1.2.4 ninja==1.13.2 psutil==7.2.2
  done
  "$PY" -m pip download -q --only-binary=:all: --no-deps -d "$DIR" hjson==3.1.0 \
    py-cpuinfo==9.0.0 pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions==4.16.0 einops==0.8.2
  du -sh "$DIR"
  exit 0
fi
WHEELS=wheels
if [ "${1:-}" = --wheels ]; then WHEELS=$2; shift 2; fi
if ! "$PY" -c "import deepspeed" 2>/dev/null; then
  if ! ls "$WHEELS"/deepspeed-*.whl >/dev/null 2>&1; then
    echo "no deepspeed-*.whl in $WHEELS/: build it with '$0 build-wheels $WHEELS'" >&2
    exit 1
  fi
  # pydantic and pyyaml: inpo's config; every other requirement of DeepSpeed's is in the
  # folder or already installed with torch and transformers.
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" deepspeed pydantic pyyaml
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec "$PY" -W ignore bench/gpu_learner.py "$@"
