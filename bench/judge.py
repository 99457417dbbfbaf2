"""Judge throughput: the vLLM judge engine vs the Hugging Face judge, on the same queries.

SmolLM2-135M-Instruct stands in for the judges: as the pair-PM judge (the two choice
tokens' log-probs) and, with a seeded one-label head, as a reward model (vLLM's pooling
runner). The queries are exactly a tournament's: every oracle call `inpo judge` makes for
P prompts x K responses (30-250 words each), debiased (both orders), recorded once and
replayed on each engine in this process, all cores. The Hugging Face judge runs at each
batch size given and its best is the baseline; vLLM runs with prefix caching on and off.
Engine start-up is not timed. Prints judgments/s (one judgment = one P of one ordered
query), the ratios and the largest |P difference| to the Hugging Face judge.

    .venv/bin/python bench/judge.py [--prompts 4] [--k 8] [--hf-batches 4,16]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import torch

from inpo.judge import select_pairs
from inpo.models.smollm2 import ensure_smollm2
from inpo.oracle import Debiased, Oracle
from inpo.oracle.pairpm import PairPM
from inpo.oracle.reward import RewardModel
from inpo.prompts import constraint_prompts

WORDS = "the a sea river blue deep old city light we they is was never always quiet".split()


class Recorder(Oracle):
    """Answers from a hash of the texts and keeps every call, to replay the tournament."""

    def __init__(self):
        self.calls: list[tuple[list, list, list]] = []

    def prob(self, prompts, a, b):
        self.calls.append((list(prompts), list(a), list(b)))
        return [random.Random(f"{x}|{y}").random() for x, y in zip(a, b, strict=True)]


def tournament_calls(n_prompts: int, k: int) -> list[tuple[list, list, list]]:
    rng = random.Random(0)
    rows = [
        {
            "prompt_id": i,
            "prompt": p,
            "responses": [
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 250))) for _ in range(k)
            ],
        }
        for i, p in enumerate(constraint_prompts(n_prompts))
    ]
    rec = Recorder()
    select_pairs(rows, Debiased(rec), "tournament", 0, desc=None)
    return rec.calls


def timed(judge, calls) -> tuple[float, list[float]]:
    judge.prob(*(c[:2] for c in calls[0]))  # warm-up
    t0 = time.perf_counter()
    out = [p for c in calls for p in judge.prob(*c)]
    return time.perf_counter() - t0, out


def row(name: str, n: int, seconds: float, base: float | None, p, ref) -> None:
    ratio = f"{base / seconds:5.2f}x" if base else "  1.00x"
    diff = max(abs(x - y) for x, y in zip(p, ref, strict=True))
    print(f"  {name:<28} {n / seconds:8.2f} judgments/s  {ratio}  max|dP| {diff:.1e}", flush=True)


def compare(cls, model_dir: str, calls, hf_batches: list[int]) -> None:
    n = sum(len(c[0]) for c in calls)
    best, ref = None, None
    for bs in hf_batches:
        seconds, p = timed(cls(model_dir, "cpu", bs, 2048, engine="hf"), calls)
        ref = ref or p
        print(f"  {'hf batch ' + str(bs):<28} {n / seconds:8.2f} judgments/s", flush=True)
        best = min(best or seconds, seconds)
    for caching in (True, False):
        judge = cls(model_dir, "cpu", 1, 2048, engine="vllm", prefix_caching=caching)
        seconds, p = timed(judge, calls)
        row(f"vllm prefix caching {'on' if caching else 'off'}", n, seconds, best, p, ref)
        del judge


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--hf-batches", default="4,16")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    smollm2 = str(ensure_smollm2())
    calls = tournament_calls(args.prompts, args.k)
    words = sum(len(x.split()) for c in calls for x in c[1] + c[2]) / sum(len(c[1]) for c in calls)
    print(
        f"{len(calls)} oracle calls, {sum(len(c[0]) for c in calls)} ordered queries "
        f"({args.prompts} prompts x K={args.k}, tournament, both orders; "
        f"{words:.0f} words per response), {os.cpu_count()} cores, float32"
    )
    hf_batches = [int(x) for x in args.hf_batches.split(",")]
    print("pair-PM judge (SmolLM2-135M-Instruct):")
    compare(PairPM, smollm2, calls, hf_batches)
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.manual_seed(0)
        rm = AutoModelForSequenceClassification.from_pretrained(
            smollm2, num_labels=1, dtype=torch.float32
        )
        rm.save_pretrained(Path(tmp))
        AutoTokenizer.from_pretrained(smollm2).save_pretrained(Path(tmp))
        del rm
        print("reward judge (SmolLM2-135M-Instruct + a seeded head; one query = two rewards):")
        compare(RewardModel, tmp, calls, hf_batches)


if __name__ == "__main__":
    main()
