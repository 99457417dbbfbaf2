"""Stage: the oracle judges each prompt's K responses; pairing keeps and labels pairs.

Output rows are TRL preference rows {"prompt", "chosen", "rejected"} plus
"p_chosen" (the oracle's P(chosen > rejected)), "p_label" (the probability the
loss gives to "chosen wins": 1 for hard and sampled labels, P for soft ones),
"n_comparisons" (of the prompt), "chosen_p_win" and "rejected_p_win" (each response's
estimated P(y > pi_t), `inpo.judging.pairing`), "prompt_id", the finish reasons and the
exact token ids the learner will score.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from inpo.config import MODEL_BACKENDS, InpoConfig
from inpo.durable import append_jsonl, finished_chunks, write_jsonl_atomic
from inpo.errors import InpoError
from inpo.faults import NO_FAULTS, Faults
from inpo.judging.build import build_oracle
from inpo.judging.oracle import Oracle, ParseCounts, check_probs
from inpo.judging.pairing import (
    Labelled,
    Match,
    Pair,
    Selection,
    label_pair,
    make_strategy,
    max_min,
    run_pairwise,
    win_rates,
)
from inpo.plan.cluster import start_ray
from inpo.rows import GenerationRow, PairRow, read_generations, write_rows


def _rng(seed: int, what: str, prompt_id: Any) -> random.Random:
    return random.Random(f"{seed}/{what}/{prompt_id}")


def select_pairs(
    rows: list[GenerationRow],
    oracle: Oracle,
    strategy: str,
    seed: int,
    desc: str = "judge",
    faults: Faults = NO_FAULTS,
) -> list[Selection]:
    """One Selection per generation row; oracle calls are batched per round."""
    if strategy == "max_min" and not oracle.has_scores:
        raise InpoError(
            "pairing.strategy=max_min needs pointwise scores, which this oracle backend does "
            "not give; use tournament"
        )
    bar = tqdm(desc=desc, unit="query", dynamic_ncols=True)

    def ask(queries: list[tuple[int, Match]]) -> list[float]:
        prompts = [rows[idx]["prompt"] for idx, _ in queries]
        a = [rows[idx]["responses"][i] for idx, (i, _) in queries]
        b = [rows[idx]["responses"][j] for idx, (_, j) in queries]
        probs = check_probs(oracle.prob(prompts, a, b), len(prompts), "oracle") if a else []
        bar.update(len(prompts))
        faults.point("judge")
        return probs

    try:
        if strategy != "max_min":
            strategies = [
                make_strategy(strategy, len(r["responses"]), _rng(seed, "pair", r["prompt_id"]))
                for r in rows
            ]
            return run_pairwise(strategies, ask)
        flat = [(r["prompt"], resp) for r in rows for resp in r["responses"]]
        scores = oracle.scores([p for p, _ in flat], [s for _, s in flat])
        bar.update(len(flat))
        extremes, pos = [], 0
        for r in rows:
            extremes.append(max_min(scores[pos : pos + len(r["responses"])]))
            pos += len(r["responses"])
        kept = [(idx, m) for idx, m in enumerate(extremes) if m is not None]
        probs = dict(zip((idx for idx, _ in kept), ask(kept), strict=True))
        return [
            Selection(
                (Pair(*m, probs[idx]),),
                1,
                p_win=win_rates(len(rows[idx]["responses"]), [(m, probs[idx])]),
            )
            if m is not None
            else Selection((), 0, dropped="equal rewards")
            for idx, m in enumerate(extremes)
        ]
    finally:
        bar.close()


def select_in_chunks(
    rows: list[GenerationRow],
    oracle: Oracle,
    cfg: InpoConfig,
    partial: Path,
    desc: str,
    faults: Faults = NO_FAULTS,
) -> tuple[list[Selection], int]:
    """`select_pairs` over chunks of oracle.chunk_prompts rows (a prompt's pairs do not
    depend on the others'): each finished chunk's selections are appended to ``partial``
    durably, and those it already holds for these rows are kept. Returns (selections, rows
    kept)."""
    strategy, seed, chunk_prompts = cfg.pairing.strategy, cfg.run.seed, cfg.oracle.chunk_prompts
    done = finished_chunks(partial, [r["prompt_id"] for r in rows])
    selections = [
        Selection(
            tuple(Pair(**p) for p in d["pairs"]),
            d["n_comparisons"],
            d["dropped"],
            tuple(d["p_win"]) if d.get("p_win") is not None else None,
        )
        for d in done
    ]
    for lo in range(len(done), len(rows), chunk_prompts):
        part = rows[lo : lo + chunk_prompts]
        new = select_pairs(part, oracle, strategy, seed, desc=desc, faults=faults)
        append_jsonl(
            partial,
            [{"prompt_id": r["prompt_id"], **asdict(s)} for r, s in zip(part, new, strict=True)],
        )
        selections += new
    return selections, len(done)


def pair_rows(
    rows: list[GenerationRow], selections: list[Selection], label: str, seed: int
) -> tuple[list[PairRow], Counter]:
    """TRL rows for the kept, labelled pairs, and the count of what was dropped by reason
    (a prompt with no pair, or a single pair)."""
    out, dropped = [], Counter()
    for row, sel in zip(rows, selections, strict=True):
        if sel.dropped is not None:
            dropped[sel.dropped] += 1
            continue
        rng = _rng(seed, "label", row["prompt_id"])
        for pair in sel.pairs:
            res = label_pair(pair, label, rng)
            if not isinstance(res, str) and (
                row["responses"][res.chosen] == row["responses"][res.rejected]
            ):
                res = "identical responses"
            if isinstance(res, str):
                dropped[res] += 1
                continue
            out.append(_pair_row(row, res, sel))
    return out, dropped


def _pair_row(row: GenerationRow, res: Labelled, sel: Selection) -> PairRow:
    pair: PairRow = {
        "prompt_id": row["prompt_id"],
        "prompt": row["prompt"],
        "chosen": row["responses"][res.chosen],
        "rejected": row["responses"][res.rejected],
        "p_chosen": res.p_chosen,
        "p_label": res.p_label,
        "n_comparisons": sel.n_comparisons,
    }
    if sel.p_win is not None:  # SPPO's targets; the pair's own comparison counts in each
        pair["chosen_p_win"] = sel.p_win[res.chosen]
        pair["rejected_p_win"] = sel.p_win[res.rejected]
    if "finish_reasons" in row:
        pair["chosen_finish_reason"] = row["finish_reasons"][res.chosen]
        pair["rejected_finish_reason"] = row["finish_reasons"][res.rejected]
    if "response_ids" in row and "prompt_ids" in row:
        pair["prompt_ids"] = row["prompt_ids"]
        pair["chosen_ids"] = row["response_ids"][res.chosen]
        pair["rejected_ids"] = row["response_ids"][res.rejected]
    return pair


def describe_dropped(prompts: int, kept: int, dropped: Counter) -> str:
    why = ", ".join(f"{n} {reason}" for reason, n in dropped.most_common())
    return f"kept {kept} pairs from {prompts} prompts" + (f"; dropped: {why}" if why else "")


def parse_info(counts: ParseCounts) -> dict[str, int]:
    """A reasoning judge's parse counts as stage info (nothing for other judges)."""
    if not counts.samples:
        return {}
    return {
        "verdict_samples": counts.samples,
        "unparsed_verdicts": counts.unparsed,
        "unparsed_cut": counts.cut,
        "no_verdict": counts.empty,
    }


def describe_parse(counts: ParseCounts) -> str:
    if not counts.samples:
        return ""
    return (
        f"; {counts.unparsed} of {counts.samples} sampled verdicts unparseable ({counts.cut} "
        f"cut at oracle.reasoning_tokens), {counts.empty} queries with none (P = 0.5)"
    )


def judge_file(cfg: InpoConfig, generations: Path, out: Path) -> None:
    """`inpo judge`: label a generations file and write pairs; a reasoning judge's sampled
    texts go to <out>_verdicts.jsonl."""

    rows = read_generations(generations)
    device = "cpu"
    if cfg.oracle.backend in MODEL_BACKENDS:
        device = start_ray(cfg)
    reasoning = cfg.oracle.reasoning_tokens > 0
    oracle = build_oracle(cfg, device, keep_texts=reasoning)
    try:
        selections = select_pairs(rows, oracle, cfg.pairing.strategy, cfg.run.seed)
        truncated = oracle.truncated()
        mass = oracle.verdict_mass()
        counts = oracle.parse_counts()
        judged = oracle.judgements()
    finally:
        oracle.close()
    pairs, dropped = pair_rows(rows, selections, cfg.pairing.label, cfg.run.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(out, pairs)
    if reasoning:
        write_jsonl_atomic(out.with_name(out.stem + "_verdicts.jsonl"), judged)
    cut = f"; {truncated} judge inputs cut to oracle.max_length" if truncated else ""
    what = "share of samples with a verdict" if reasoning else "verdict tokens' mean probability"
    said = "" if mass is None else f"; {what} {mass:.3f}"
    print(
        describe_dropped(len(rows), len(pairs), dropped)
        + f"{cut}{said}{describe_parse(counts)}; pairs in {out}"
    )
    summary = (
        {
            "prompts": len(rows),
            "pairs": len(pairs),
            "dropped": dict(dropped),
            "truncated": truncated,
        }
        | ({} if mass is None else {"verdict_mass": mass})
        | parse_info(counts)
    )
    out.with_name(out.stem + "_summary.json").write_text(json.dumps(summary, indent=1))
