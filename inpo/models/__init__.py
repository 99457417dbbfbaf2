"""Model directories: builtin models (a tiny random one, SmolLM2-135M-Instruct, both
offline), checks on user-given paths, dtypes and weight hashes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from inpo.durable import write_atomic
from inpo.errors import InpoError
from inpo.models.smollm2 import ensure_smollm2
from inpo.models.tiny import build_tiny_model


def dtype_name(dtype: str, device: str) -> str:
    """model.dtype resolved for a device: auto = bfloat16 on GPU, float32 on CPU."""
    if dtype == "auto":
        return "bfloat16" if device == "cuda" else "float32"
    return dtype


def autocasts(autocast: str, dtype: str, device: str) -> bool:
    """Whether learner.autocast is in effect: bf16 products over weights of another dtype
    (weights already in bf16 have nothing to autocast)."""
    return autocast == "bfloat16" and dtype_name(dtype, device) != "bfloat16"


def torch_dtype(dtype: str, device: str):
    """model.dtype as a torch dtype for a device."""
    import torch

    return getattr(torch, dtype_name(dtype, device))


def tensor_digest(tensor) -> str:
    """sha256 of a tensor's raw bytes (dtype and layout as stored)."""
    import torch

    return hashlib.sha256(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()


def saved_tensors(weights_dir: str | Path) -> Iterator[tuple[str, Any]]:
    """(name, tensor) of every tensor in a directory's safetensors files, file by file in
    name order, one tensor in memory at a time."""
    from safetensors import safe_open

    for f in sorted(Path(weights_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            for name in sf.keys():
                yield name, sf.get_tensor(name)


def weights_digest(tensor_digests: Iterable[tuple[str, str]]) -> str:
    """One hash of (tensor name, tensor_digest) pairs, independent of their order (shards,
    iteration order)."""
    lines = sorted(f"{name} {digest}" for name, digest in tensor_digests)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


#: what transformers writes into a saved tokenizer_config.json from how the tokenizer was
#: loaded: a policy the learner saved carries them, its base model does not
TOKENIZER_LOAD_FLAGS = ("is_local", "local_files_only")


def model_signature(model_dir: str | Path) -> str:
    """sha256 of a model directory without its weights (config, tokenizer, chat template):
    two directories with the same signature build the same engine, up to the weights. A
    saved policy signs as its base model: inpo's marker files (inpo_*.json) and the
    tokenizer's load flags are left out."""
    h = hashlib.sha256()
    for f in sorted(Path(model_dir).iterdir()):
        weights = f.name.endswith((".safetensors", ".bin", ".pt", ".index.json"))
        if not f.is_file() or weights or f.name.startswith("inpo_"):
            continue
        data = f.read_bytes()
        if f.name == "tokenizer_config.json":
            fields = json.loads(data)
            for key in TOKENIZER_LOAD_FLAGS:
                fields.pop(key, None)
            data = json.dumps(fields, sort_keys=True).encode()
        h.update(f"{f.name}\0{len(data)}\0".encode() + data)
    return h.hexdigest()


def require_model_dir(path: str | Path, field: str) -> Path:
    """A usable Hugging Face directory, or an error naming the config field."""
    p = Path(path)
    if not (p / "config.json").is_file():
        why = "does not exist" if not p.exists() else "has no config.json"
        raise InpoError(f"{field} = {str(path)!r}: not a Hugging Face model directory ({why})")
    return p


TINY = "builtin:tiny"
SMOLLM2 = "builtin:smollm2"


def resolve_model(spec: str, field: str, run_dir: Path, tiny: dict | None = None) -> Path:
    """The Hugging Face directory ``spec`` names: a path, 'builtin:tiny' (built once under
    run_dir/base_model with the ``tiny`` shape) or 'builtin:smollm2' (converted once into
    the user cache)."""
    if spec == TINY:
        base = run_dir / "base_model"
        if not (base / "config.json").exists():
            write_atomic(base, lambda tmp: build_tiny_model(tmp, **(tiny or {})))
        return base
    if spec == SMOLLM2:
        return ensure_smollm2()
    if spec.startswith("builtin:"):
        raise InpoError(f"{field} = {spec!r}: unknown builtin (use {TINY} or {SMOLLM2})")
    return require_model_dir(spec, field)
