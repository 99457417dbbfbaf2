"""Model directories: the offline tiny builder and checks on user-given paths."""

from __future__ import annotations

from pathlib import Path

from inpo.errors import InpoError


def dtype_name(dtype: str, device: str) -> str:
    """model.dtype resolved for a device: auto = bfloat16 on GPU, float32 on CPU."""
    if dtype == "auto":
        return "bfloat16" if device == "cuda" else "float32"
    return dtype


def require_model_dir(path: str | Path, field: str) -> Path:
    """A usable Hugging Face directory, or an error naming the config field."""
    p = Path(path)
    if not (p / "config.json").is_file():
        why = "does not exist" if not p.exists() else "has no config.json"
        raise InpoError(f"{field} = {str(path)!r}: not a Hugging Face model directory ({why})")
    return p
