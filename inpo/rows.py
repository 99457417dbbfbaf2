"""The rows stages hand each other through files: one type per file, each field documented
once here, and one reader per type (checking every row, errors naming file, row and field) and one
atomic writer for all. Other keys a user's file carries pass through untouched.

    generations.jsonl   GenerationRow   generate -> judge (`inpo generate` -> `inpo judge`)
    pairs.jsonl         PairRow         judge -> logps, learn, save (`inpo judge` -> `inpo learn`)
    eval*.jsonl         AnswerRow       eval_ref, eval_init, eval: one response per prompt
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

from inpo.data import DataError, Prompt, check_ids, check_text, read_rows
from inpo.durable import write_jsonl_atomic

FINISH_REASONS = ("stop", "length")


class GenerationRow(TypedDict, total=False):
    prompt_id: int  # the prompt's index in its pool (the training pool, or the eval pool)
    prompt: Prompt  # a string, or chat messages [{role, content}]
    responses: list[str]  # the K samples, decoded
    finish_reasons: list[str]  # per response: "stop" (end of turn or EOS) or "length" (cut)
    logps: list[float]  # per response: summed log-prob under the engine that sampled it
    prompt_ids: list[int]  # the prompt's tokens, as the engine saw them
    response_ids: list[list[int]]  # per response: its tokens, as sampled


class PairRow(TypedDict, total=False):
    prompt_id: int
    prompt: Prompt
    chosen: str  # y_w
    rejected: str  # y_l
    p_chosen: float  # the oracle's P(chosen > rejected) (debiased when asked)
    p_label: float  # the label the loss trains on: P(y_w > y_l) as pairing.label sets it
    n_comparisons: int  # oracle calls the prompt's selection took
    chosen_p_win: float  # the response's estimated P(y > pi_t) (SPPO's target)
    rejected_p_win: float
    chosen_finish_reason: str  # "stop" or "length": a cut response gets no end-of-turn token
    rejected_finish_reason: str
    prompt_ids: list[int]  # exact token ids, so the learner scores what vLLM sampled
    chosen_ids: list[int]
    rejected_ids: list[int]


class AnswerRow(TypedDict, total=False):
    prompt_id: int  # index in the eval pool
    prompt: Prompt
    response: str  # one sample per held-out prompt
    response_ids: list[int]
    p_vs_ref: float  # the oracle's P(this > pi_ref's answer), once judged
    p_vs_prev: float  # P(this > the previous policy's answer), once judged


def read_generations(path: Path) -> list[GenerationRow]:
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: no generations (the file is empty)")
    for n, row in enumerate(rows, start=1):
        for field in ("prompt_id", "prompt", "responses"):
            if field not in row:
                raise DataError(f"{path}: row {n}: field '{field}': missing")
        check_text(path, n, "prompt", row["prompt"])
        resp = row["responses"]
        if not (
            isinstance(resp, list) and len(resp) >= 2 and all(isinstance(r, str) for r in resp)
        ):
            raise DataError(f"{path}: row {n}: field 'responses': need a list of >= 2 strings")
        for field in ("finish_reasons", "logps", "response_ids"):
            if field in row and not (isinstance(row[field], list) and len(row[field]) == len(resp)):
                raise DataError(
                    f"{path}: row {n}: field '{field}': need a list of {len(resp)} (one per "
                    "response)"
                )
    return rows  # type: ignore[return-value]


def read_pairs(path: str | Path) -> list[PairRow]:
    """TRL preference rows {prompt, chosen, rejected}, and inpo's fields, every row
    checked before use."""
    path = Path(path)
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: no pairs (the file is empty)")
    for n, row in enumerate(rows, start=1):
        for field in ("prompt", "chosen", "rejected"):
            check_text(path, n, field, row.get(field))
        for field in ("prompt_ids", "chosen_ids", "rejected_ids"):
            check_ids(path, n, field, row.get(field))
        for field in ("p_label", "chosen_p_win", "rejected_p_win"):
            p = row.get(field, 1.0)
            if not (isinstance(p, int | float) and not isinstance(p, bool) and 0.0 <= p <= 1.0):
                raise DataError(
                    f"{path}: row {n}: field '{field}': {p!r} is not a number in [0, 1]"
                )
        for field in ("chosen_finish_reason", "rejected_finish_reason"):
            if row.get(field, "stop") not in FINISH_REASONS:
                raise DataError(
                    f"{path}: row {n}: field '{field}': {row[field]!r} (use 'stop' or 'length')"
                )
    return rows  # type: ignore[return-value]


def read_answers(path: Path) -> list[AnswerRow]:
    rows = read_rows(path)
    for n, row in enumerate(rows, start=1):
        for field in ("prompt_id", "prompt", "response"):
            if field not in row:
                raise DataError(f"{path}: row {n}: field '{field}': missing")
    return rows  # type: ignore[return-value]


def write_rows(
    path: Path, rows: Sequence[GenerationRow] | Sequence[PairRow] | Sequence[AnswerRow]
) -> None:
    """Any of the three, atomically (a crash leaves the old file or the new one)."""
    write_jsonl_atomic(path, rows)
