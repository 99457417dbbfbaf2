"""Stage: win rate of the new policy by the oracle, on held-out prompts.

Each iteration samples one response per held-out prompt from pi_{t+1} and asks
the oracle P(new > old) against pi_ref's and pi_t's responses to the same
prompts (pi_t's are the previous iteration's eval responses, so each policy is
sampled once). The win rate is the mean of P (ties count one half), with a 95%
normal-approximation interval over prompts.
"""

from __future__ import annotations

import math
from typing import Any

from inpo.config import InpoConfig
from inpo.judging.constraints import constraint_pass_rate
from inpo.judging.oracle import Oracle, check_probs
from inpo.rows import AnswerRow, GenerationRow


def win_rate(probs: list[float]) -> dict[str, float]:
    """Mean of P(new > old) and its 95% interval (normal approximation)."""
    n = len(probs)
    if n == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    mean = sum(probs) / n
    var = sum((p - mean) ** 2 for p in probs) / max(n - 1, 1)
    half = 1.96 * math.sqrt(var / n)
    return {
        "mean": mean,
        "ci_low": max(0.0, mean - half),
        "ci_high": min(1.0, mean + half),
        "n": n,
    }


def eval_rows(generation_rows: list[GenerationRow]) -> list[AnswerRow]:
    """One eval response per prompt, from generate rows sampled with n=1."""
    return [
        {
            "prompt_id": r["prompt_id"],
            "prompt": r["prompt"],
            "response": r["responses"][0],
            "response_ids": r["response_ids"][0],
        }
        for r in generation_rows
    ]


def compare(oracle: Oracle, new: list[AnswerRow], old: list[AnswerRow]) -> list[float]:
    """P(new response > old response) for each held-out prompt (rows aligned by prompt)."""
    for a, b in zip(new, old, strict=True):
        if a["prompt_id"] != b["prompt_id"]:
            raise ValueError(f"eval rows out of order: {a['prompt_id']} vs {b['prompt_id']}")
    probs = oracle.prob(
        [r["prompt"] for r in new], [r["response"] for r in new], [r["response"] for r in old]
    )
    return check_probs(probs, len(new), "oracle")


def judge_against(
    oracle: Oracle, cfg: InpoConfig, new: list[AnswerRow], old: dict[str, list[AnswerRow]]
) -> dict[str, Any]:
    """Win rates of ``new`` against each named set of ``old`` rows, with the response
    metrics of ``new``; each P is stored in its row (``p_vs_<name>``)."""
    info: dict[str, Any] = {}
    for name, rows in old.items():
        probs = compare(oracle, new, rows)
        for row, p in zip(new, probs, strict=True):
            row[f"p_vs_{name}"] = p
        w = win_rate(probs)
        info[f"win_vs_{name}"] = w["mean"]
        info[f"win_vs_{name}_ci"] = [w["ci_low"], w["ci_high"]]
    return {**info, **response_metrics(cfg, new)}


def mean_length(rows: list[dict]) -> float:
    """Mean response length in tokens."""
    return sum(len(r["response_ids"]) for r in rows) / max(len(rows), 1)


def response_metrics(cfg: InpoConfig, rows: list[dict]) -> dict[str, Any]:
    """What one policy's eval answers show on their own: mean length and, under the
    ifeval oracle, the instruction pass rate."""
    out: dict[str, Any] = {"mean_length": mean_length(rows)}
    if cfg.oracle.backend == "synthetic" and cfg.oracle.synthetic == "ifeval":
        prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
        out["pass_rate"] = constraint_pass_rate(prompts, responses)
    return out
