"""Stage: the oracle labels each prompt's K responses and pairing keeps one pair.

Output rows are TRL preference rows {"prompt", "chosen", "rejected"} plus
"p_chosen" (the oracle's P(chosen > rejected)), "n_comparisons", "prompt_id"
and the exact token ids the learner will score.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from inpo.config import InpoConfig
from inpo.data import DataError, read_rows, write_jsonl_atomic
from inpo.errors import InpoError
from inpo.faults import crash_point
from inpo.oracle.base import MODEL_BACKENDS, Oracle, check_probs
from inpo.pairing import PairResult, make_strategy, max_min, run_pairwise

GENERATION_FIELDS = ("prompt_id", "prompt", "responses")


def load_generations(path: Path) -> list[dict[str, Any]]:
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: no generations (the file is empty)")
    for n, row in enumerate(rows, start=1):
        for field in GENERATION_FIELDS:
            if field not in row:
                raise DataError(f"{path}: row {n}: field '{field}': missing")
        resp = row["responses"]
        if not (
            isinstance(resp, list) and len(resp) >= 2 and all(isinstance(r, str) for r in resp)
        ):
            raise DataError(f"{path}: row {n}: field 'responses': need a list of >= 2 strings")
    return rows


def _pair_seed(seed: int, prompt_id: Any) -> random.Random:
    return random.Random(f"{seed}/pair/{prompt_id}")


def select_pairs(
    rows: list[dict[str, Any]], oracle: Oracle, strategy: str, seed: int, desc: str = "judge"
) -> list[PairResult]:
    """One PairResult per generation row; oracle calls are batched per round."""
    if strategy == "max_min" and not oracle.has_scores:
        raise InpoError(
            "pairing.strategy=max_min needs pointwise scores, which this oracle backend does "
            "not give; use tournament"
        )
    bar = tqdm(desc=desc, unit="query", dynamic_ncols=True)

    def ask(prompts, a, b) -> list[float]:
        probs = check_probs(oracle.prob(prompts, a, b), len(prompts), "oracle")
        bar.update(len(prompts))
        crash_point("judge")
        return probs

    try:
        if strategy == "max_min":
            flat = [(r["prompt"], resp) for r in rows for resp in r["responses"]]
            scores = oracle.scores([p for p, _ in flat], [s for _, s in flat])
            bar.update(len(flat))
            results, pos = [], 0
            for r in rows:
                k = len(r["responses"])
                results.append(max_min(scores[pos : pos + k]))
                pos += k
            kept = [(i, res) for i, res in enumerate(results) if res.dropped is None]
            probs = (
                ask(
                    [rows[i]["prompt"] for i, _ in kept],
                    [rows[i]["responses"][res.chosen] for i, res in kept],
                    [rows[i]["responses"][res.rejected] for i, res in kept],
                )
                if kept
                else []
            )
            for (i, res), p in zip(kept, probs, strict=True):
                results[i] = PairResult(res.chosen, res.rejected, p, 1)
            return results

        def judge(queries):
            return ask(
                [rows[idx]["prompt"] for idx, _ in queries],
                [rows[idx]["responses"][i] for idx, (i, _) in queries],
                [rows[idx]["responses"][j] for idx, (_, j) in queries],
            )

        strategies = [
            make_strategy(strategy, len(r["responses"]), _pair_seed(seed, r["prompt_id"]))
            for r in rows
        ]
        return run_pairwise(strategies, judge)
    finally:
        bar.close()


def pair_rows(rows: list[dict[str, Any]], results: list[PairResult]) -> tuple[list[dict], Counter]:
    """TRL rows for the kept pairs, and the count of dropped prompts by reason."""
    out, dropped = [], Counter()
    for row, res in zip(rows, results, strict=True):
        reason = res.dropped
        if reason is None and row["responses"][res.chosen] == row["responses"][res.rejected]:
            reason = "identical responses"
        if reason is not None:
            dropped[reason] += 1
            continue
        pair = {
            "prompt_id": row["prompt_id"],
            "prompt": row["prompt"],
            "chosen": row["responses"][res.chosen],
            "rejected": row["responses"][res.rejected],
            "p_chosen": res.p_chosen,
            "n_comparisons": res.n_comparisons,
        }
        if "response_ids" in row and "prompt_ids" in row:
            pair["prompt_ids"] = row["prompt_ids"]
            pair["chosen_ids"] = row["response_ids"][res.chosen]
            pair["rejected_ids"] = row["response_ids"][res.rejected]
        out.append(pair)
    return out, dropped


def describe_dropped(total: int, kept: int, dropped: Counter) -> str:
    why = ", ".join(f"{n} {reason}" for reason, n in dropped.most_common())
    return f"kept {kept} of {total} prompts" + (f"; dropped {total - kept}: {why}" if why else "")


def judge_file(cfg: InpoConfig, generations: Path, out: Path) -> None:
    """`inpo judge`: label a generations file and write pairs."""
    from inpo.oracle import build_oracle

    rows = load_generations(generations)
    device = "cpu"
    if cfg.oracle.backend in MODEL_BACKENDS:
        from inpo.cluster import start_ray

        device = start_ray(cfg)
    oracle = build_oracle(cfg, device)
    try:
        results = select_pairs(rows, oracle, cfg.pairing.strategy, cfg.run.seed)
    finally:
        oracle.close()
    pairs, dropped = pair_rows(rows, results)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out, pairs)
    print(describe_dropped(len(rows), len(pairs), dropped) + f"; pairs in {out}")
    summary = {"prompts": len(rows), "pairs": len(pairs), "dropped": dict(dropped)}
    out.with_name(out.stem + "_summary.json").write_text(json.dumps(summary, indent=1))
