"""Judge throughput: the vLLM judge engine vs the Hugging Face judge, on the same queries.

SmolLM2-135M-Instruct stands in for the judges: as the pair-PM judge (the two choice
tokens' log-probs) and, with a seeded one-label head, as a reward model (vLLM's pooling
runner). The queries are exactly a tournament's: every oracle call `inpo judge` makes for
P prompts x K responses (30-250 words each), debiased (both orders), recorded once and
replayed on each engine in this process, all cores. The Hugging Face judge runs at each
batch size given and its best is the baseline; vLLM runs with prefix caching on and off.
Engine start-up is not timed; each engine's time is the best of --repeats replays of the
whole tournament (vLLM's prefix cache emptied before each, as a judge stage starts). Prints
judgments/s (one judgment = one P of one ordered query), the ratios, the largest |P
difference| to the Hugging Face judge, and the share of the input tokens a prefix cache
of vLLM's 32-token blocks need not compute: on a CPU both engines run the same fp32
matrix products (the profile: 77% of vLLM's time in them, at torch's own fp32 GFLOP/s), so
that share, not the engine, sets most of vLLM's gain. --question-words lengthens every
question by that many words (the paper's prompts are longer than these one-line tasks).

    .venv/bin/python bench/judge.py [--prompts 4] [--k 8] [--hf-batches 4,16] [--repeats 3]
                                    [--question-words 0] [--judges pairpm,reward]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import torch

from inpo.judging.model_judge import CPU_BLOCK as BLOCK
from inpo.judging.model_judge import query_order
from inpo.judging.oracle import Debiased, Oracle
from inpo.judging.pairpm import PairPM
from inpo.judging.reward import RewardModel
from inpo.judging.stage import select_pairs
from inpo.models.smollm2 import ensure_smollm2
from inpo.prompts import constraint_prompts

WORDS = "the a sea river blue deep old city light we they is was never always quiet".split()


class Recorder(Oracle):
    """Answers from a hash of the texts and keeps every call, to replay the tournament."""

    def __init__(self):
        self.calls: list[tuple[list, list, list]] = []

    def prob(self, prompts, a, b):
        self.calls.append((list(prompts), list(a), list(b)))
        return [random.Random(f"{x}|{y}").random() for x, y in zip(a, b, strict=True)]


def lengthened(prompt, words: int, rng: random.Random):
    """The prompt with ``words`` more words of context in its (last) user turn."""
    if not words:
        return prompt
    extra = " Context: " + " ".join(rng.choice(WORDS) for _ in range(words))
    if isinstance(prompt, str):
        return prompt + extra
    return prompt[:-1] + [{**prompt[-1], "content": prompt[-1]["content"] + extra}]


def tournament_calls(
    n_prompts: int, k: int, question_words: int = 0
) -> list[tuple[list, list, list]]:
    rng, words_rng = random.Random(0), random.Random(1)  # the same responses at any length
    rows = [
        {
            "prompt_id": i,
            "prompt": lengthened(p, question_words, words_rng),
            "responses": [
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 250))) for _ in range(k)
            ],
        }
        for i, p in enumerate(constraint_prompts(n_prompts))
    ]
    rec = Recorder()
    select_pairs(rows, Debiased(rec), "tournament", 0, desc=None)
    return rec.calls


def timed(judge, calls, repeats: int) -> tuple[float, list[float]]:
    """The best of ``repeats`` replays (seconds) and the P's of the last."""
    judge.prob(*(c[:2] for c in calls[0]))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if judge.engine == "vllm":
            judge.vllm.llm.reset_prefix_cache()
        t0 = time.perf_counter()
        out = [p for c in calls for p in judge.prob(*c)]
        best = min(best, time.perf_counter() - t0)
    return best, out


def cacheable_share(judge, calls, block: int = BLOCK) -> float:
    """The share of the judge's input tokens that earlier queries' whole blocks cover, in
    the order vLLM computes them (a cache that never evicts; vLLM always computes a
    query's last token)."""
    seen: set[tuple[int, ...]] = set()
    total = cached = 0
    outputs = judge.outputs

    def record(seqs):
        nonlocal total, cached
        for i in query_order(seqs, "vllm"):
            s = seqs[i]
            hit = 0
            while hit + block < len(s) and tuple(s[: hit + block]) in seen:
                hit += block
            seen.update(tuple(s[:j]) for j in range(block, len(s) + 1, block))
            total, cached = total + len(s), cached + hit
        return [[0.5, 0.5] for _ in seqs]  # an answer of the right shape; not timed

    judge.outputs = record
    try:
        for c in calls:
            judge.prob(*c)
    finally:
        judge.outputs = outputs
    return cached / total


def row(name: str, n: int, seconds: float, base: float | None, p, ref) -> None:
    ratio = f"{base / seconds:5.2f}x" if base else "  1.00x"
    diff = max(abs(x - y) for x, y in zip(p, ref, strict=True))
    print(f"  {name:<28} {n / seconds:8.2f} judgments/s  {ratio}  max|dP| {diff:.1e}", flush=True)


def compare(cls, model_dir: str, calls, hf_batches: list[int], repeats: int) -> None:
    n = sum(len(c[0]) for c in calls)
    best, ref = None, None
    for bs in hf_batches:
        judge = cls(model_dir, "cpu", bs, 2048, engine="hf")
        seconds, p = timed(judge, calls, repeats)
        ref = ref or p
        print(f"  {'hf batch ' + str(bs):<28} {n / seconds:8.2f} judgments/s", flush=True)
        best = min(best or seconds, seconds)
    share = cacheable_share(judge, calls)
    print(
        f"  input tokens a prefix cache skips: {share:.0%} (Hugging Face computes "
        f"{1 / (1 - share):.2f}x the tokens)"
    )
    for caching in (True, False):
        judge = cls(model_dir, "cpu", 1, 2048, engine="vllm", prefix_caching=caching)
        seconds, p = timed(judge, calls, repeats)
        row(f"vllm prefix caching {'on' if caching else 'off'}", n, seconds, best, p, ref)
        del judge


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--hf-batches", default="4,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--question-words", type=int, default=0)
    ap.add_argument("--judges", default="pairpm,reward")
    args = ap.parse_args()
    judges = args.judges.split(",")
    torch.set_num_threads(os.cpu_count() or 1)
    smollm2 = str(ensure_smollm2())
    calls = tournament_calls(args.prompts, args.k, args.question_words)
    responses = [x for c in calls for x in c[1] + c[2]]
    words = sum(len(x.split()) for x in responses) / len(responses)
    print(
        f"{len(calls)} oracle calls, {sum(len(c[0]) for c in calls)} ordered queries "
        f"({args.prompts} prompts x K={args.k}, tournament, both orders; "
        f"{words:.0f} words per response, questions +{args.question_words} words), "
        f"{os.cpu_count()} cores, float32, best of {args.repeats}"
    )
    hf_batches = [int(x) for x in args.hf_batches.split(",")]
    if "pairpm" in judges:
        print("pair-PM judge (SmolLM2-135M-Instruct):")
        compare(PairPM, smollm2, calls, hf_batches, args.repeats)
    if "reward" not in judges:
        return
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
        compare(RewardModel, tmp, calls, hf_batches, args.repeats)


if __name__ == "__main__":
    main()
