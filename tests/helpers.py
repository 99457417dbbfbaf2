"""Helpers the tests import (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path


def write_pairs(path: Path, n: int, seed: int = 0, chat: bool = True) -> Path:
    """Pairs where the chosen response is vowels and the rejected one consonants."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            text = f"Write something, number {i}."
            prompt = [{"role": "user", "content": text}] if chat else text
            chosen = "".join(rng.choice("aeiou ") for _ in range(rng.randint(4, 12)))
            rejected = "".join(rng.choice("xzqkvbd") for _ in range(rng.randint(4, 12)))
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    return path


def hf_logp(model_dir: Path, ids: list[int], prompt_len: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from inpo.loss import sequence_logps

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    mask = torch.zeros(1, len(ids) - 1, dtype=torch.long)
    mask[0, prompt_len - 1 :] = 1
    with torch.no_grad():
        logits = model(input_ids=x).logits
    return sequence_logps(logits[:, :-1], x[:, 1:], mask).item()
