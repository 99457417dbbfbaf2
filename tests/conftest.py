"""Shared, expensive fixtures: one tiny model, one Ray cluster per test session."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from inpo.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", layers=2, hidden=64)


@pytest.fixture(scope="session")
def tiny_tied_model(tmp_path_factory) -> Path:
    from inpo.models.tiny import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny_tied",
        layers=2,
        hidden=64,
        tied_embeddings=True,
        seed=1,
    )


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from inpo.cluster import QUIET_ENV

    os.environ.update({k: v for k, v in QUIET_ENV.items() if k not in os.environ})
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": dict(QUIET_ENV)},
    )
    yield
    ray.shutdown()


def hf_logprob(model_dir: Path, ids: list[int], prompt_len: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from inpo.loss import sequence_logprobs

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    mask = torch.zeros(1, len(ids) - 1, dtype=torch.long)
    mask[0, prompt_len - 1 :] = 1
    with torch.no_grad():
        logits = model(input_ids=x).logits
    return sequence_logprobs(logits[:, :-1], x[:, 1:], mask).item()
