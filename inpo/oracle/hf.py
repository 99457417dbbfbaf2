"""What the two model judges (pairpm, reward) share: loading, batching, left padding.

Both read the model's output at the LAST position of each sequence, so batches are padded
on the left: the last position is then the last real token of every row, which lets the
causal judge compute logits for that position only (a 128K vocabulary times 2048
positions times a batch would not fit in memory otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from inpo.oracle.base import OracleError


def load_judge(model_dir: str, device: str, *, reward: bool) -> tuple[Any, Any]:
    """(tokenizer, model) of a judge in eval mode on ``device``: bf16 on GPU, fp32 on CPU."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from inpo.models import torch_dtype

    if model_dir.startswith(("/", ".")) and not Path(model_dir).is_dir():
        # Else transformers takes it for a malformed hub id and says so, confusingly.
        raise OracleError(f"oracle.model = {model_dir}: no such directory")
    cls = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = cls.from_pretrained(model_dir, dtype=torch_dtype("auto", device))
    except (OSError, ValueError) as e:
        raise OracleError(f"oracle.model = {model_dir}: cannot load the judge: {e}") from e
    if tok.pad_token_id is None:
        # Only fills the left padding, which the attention mask hides: outputs are read by
        # position (the last one), never by looking for the last non-pad id.
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    return tok, model.to(device).eval()


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering range(n)."""
    for lo in range(0, n, size):
        yield slice(lo, min(lo + size, n))


def forward_last(model, seqs: Sequence[list[int]], pad_id: int, **kwargs):
    """The model's output for a left-padded batch of token id lists (inference mode)."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    # Positions count real tokens only, so a padded row sees what it would see alone.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        return model(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            position_ids=positions.to(model.device),
            use_cache=False,  # one forward: a KV cache would only hold memory
            **kwargs,
        )
