"""Rollout throughput: our vLLM generator actor vs Hugging Face `generate`, and judge speed.

For each model size, the same prompts (chat-templated) get K samples of up to N new
tokens from (a) inpo's GeneratorGroup: one Ray actor holding a vLLM engine, seeded
per request, as `inpo train` runs it, and (b) `model.generate` in this process
(left-padded batch, sampling, same temperature). Throughput counts generated tokens
up to and including EOS; engine start-up and a warm-up call are not timed. Then the
pairpm oracle (a tiny causal-LM judge in a Ray actor, debiased) labels pairs and we
print judgments/s.

    .venv/bin/python bench/rollout.py [--sizes 512x6,768x12] [--prompts 64] [--k 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from inpo.config import load_config
from inpo.data import prompt_token_ids
from inpo.generation.stage import request_seed, start_generators
from inpo.models.tiny import build_tiny_model, count_parameters
from inpo.plan.cluster import start_ray


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Tell me about the number {i}."}] for i in range(n)]


def ours(cfg, model_dir: Path, ids: list[list[int]], k: int, new: int) -> tuple[int, float]:
    gen = start_generators(cfg, "cpu", str(model_dir))
    try:
        sampling = dict(n=k, temperature=1.0, top_p=1.0, max_tokens=new)
        gen.generate(ids[:2], [0, 1], **sampling)  # warm-up
        seeds = [request_seed(0, "bench", i) for i in range(len(ids))]
        t0 = time.perf_counter()
        out = gen.generate(ids, seeds, **sampling)
        seconds = time.perf_counter() - t0
    finally:
        gen.shutdown()
    return sum(len(s["token_ids"]) for row in out for s in row), seconds


def hf(model_dir: Path, tok, ids: list[list[int]], k: int, new: int) -> tuple[int, float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    width = max(map(len, ids))
    x = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in ids])
    mask = torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in ids])[:, None]
    kwargs = dict(
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=new,
        num_return_sequences=k,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    with torch.no_grad():
        model.generate(input_ids=x[:2], attention_mask=mask[:2].long(), **kwargs)  # warm-up
        t0 = time.perf_counter()
        out = model.generate(input_ids=x, attention_mask=mask.long(), **kwargs)
        seconds = time.perf_counter() - t0
    gen = out[:, width:]
    # Tokens up to and including the first EOS (padding after it is not work).
    is_eos = gen == tok.eos_token_id
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, gen.shape[1])
    return int(first.sum()), seconds


def judge_speed(cfg_overrides: list[str], judge_dir: Path, n_pairs: int) -> None:
    from inpo.judging.build import build_oracle

    cfg = load_config(None, ["oracle.backend=pairpm", f"oracle.model={judge_dir}", *cfg_overrides])
    oracle = build_oracle(cfg, "cpu")
    try:
        ps = [f"Question {i}?" for i in range(n_pairs)]
        a = [f"answer number {i} " * 3 for i in range(n_pairs)]
        b = [f"reply {i} " * 4 for i in range(n_pairs)]
        oracle.prob(ps[:4], a[:4], b[:4])  # warm-up
        t0 = time.perf_counter()
        oracle.prob(ps, a, b)
        seconds = time.perf_counter() - t0
    finally:
        oracle.close()
    print(
        f"\npairpm judge (tiny, debiased = 2 forward passes per pair, batch "
        f"{cfg.oracle.batch_size}): {n_pairs / seconds:.1f} judgments/s "
        f"({2 * n_pairs / seconds:.1f} judge queries/s)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512x6,768x12", help="hidden x layers, comma separated")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--judge-pairs", type=int, default=256)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    cfg = load_config(None, [])
    start_ray(cfg)
    root = Path(tempfile.mkdtemp(prefix="inpo-bench-rollout-"))
    print(
        f"{os.cpu_count()} CPU cores; {args.prompts} prompts x K={args.k} x "
        f"{args.new_tokens} new tokens, fp32, temperature 1.0"
    )
    print(f"{'model':>10}  {'ours tok/s':>11}  {'HF tok/s':>9}  {'ratio ours/HF':>13}")
    for size in args.sizes.split(","):
        hidden, layers = map(int, size.split("x"))
        model_dir = build_tiny_model(root / size, layers=layers, hidden=hidden)
        tok = AutoTokenizer.from_pretrained(model_dir)
        ids = [prompt_token_ids(tok, p) for p in prompts(args.prompts)]
        n_ours, s_ours = ours(cfg, model_dir, ids, args.k, args.new_tokens)
        n_hf, s_hf = hf(model_dir, tok, ids, args.k, args.new_tokens)
        params = count_parameters(model_dir) / 1e6
        r_ours, r_hf = n_ours / s_ours, n_hf / s_hf
        print(f"{params:>9.1f}M  {r_ours:>11.0f}  {r_hf:>9.0f}  {r_ours / r_hf:>12.2f}x")
    judge_speed([], build_tiny_model(root / "judge", layers=2, hidden=64), args.judge_pairs)


if __name__ == "__main__":
    main()
