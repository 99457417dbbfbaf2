"""`inpo answer`: a policy's answers to a benchmark's prompts, in the files the benchmark
reads (what the paper's AlpacaEval 2.0 and Arena-Hard numbers are computed from).

Input rows are recognised by their fields:
    AlpacaEval   {"instruction", "dataset"?, ...}         (alpaca_eval.json)
    Arena-Hard   {"question_id", "turns": [{"content"}]}   (question.jsonl, v0.1)
    plain        {<data.prompt_field>: str | chat messages}
Outputs, by --format (default: the benchmark the input comes from):
    alpaca_eval  a JSON list of {"instruction", "output", "generator", "dataset"}
                 (alpaca_eval --model_outputs FILE)
    arena_hard   JSONL of {"question_id", "answer_id", "model_id", "tstamp",
                 "choices": [{"index": 0, "turns": [{"content", "token_len"}]}]}
                 (data/arena-hard-v0.1/model_answer/<model_id>.jsonl)
    jsonl        JSONL of {"prompt", "response", "finish_reason", "token_ids"}
Answers are sampled with eval.temperature and eval.max_new_tokens (or
generation.max_new_tokens), one per prompt, seeded per prompt.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from inpo.config import InpoConfig
from inpo.data import DataError, Prompt, read_rows
from inpo.durable import write_jsonl_atomic, write_text_atomic

FORMATS = ("alpaca_eval", "arena_hard", "jsonl")


def read_benchmark(path: Path, prompt_field: str) -> tuple[str, list[dict], list[Prompt]]:
    """(the benchmark the rows come from, the rows, one prompt per row)."""
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: no prompts (the file is empty)")
    first = rows[0]
    kind = (
        "alpaca_eval" if "instruction" in first else "arena_hard" if "turns" in first else "jsonl"
    )
    prompts: list[Prompt] = []
    for n, row in enumerate(rows, start=1):
        try:
            if kind == "alpaca_eval":
                prompts.append([{"role": "user", "content": row["instruction"]}])
            elif kind == "arena_hard":
                prompts.append([{"role": "user", "content": row["turns"][0]["content"]}])
            else:
                prompts.append(row[prompt_field])
        except (KeyError, IndexError, TypeError):
            field = {"alpaca_eval": "instruction", "arena_hard": "turns[0].content"}.get(
                kind, prompt_field
            )
            raise DataError(f"{path}: row {n}: field '{field}': missing") from None
    return kind, rows, prompts


def format_answers(
    fmt: str, rows: list[dict], prompts: list[Prompt], answers: list[dict], model_name: str
) -> tuple[str, list[dict]] | tuple[str, str]:
    """("jsonl", rows) or ("json", text) of the answers in the format ``fmt``."""
    if fmt == "alpaca_eval":
        out = [
            {
                "instruction": row["instruction"],
                "output": a["response"],
                "generator": model_name,
                "dataset": row.get("dataset", "inpo"),
            }
            for row, a in zip(rows, answers, strict=True)
        ]
        return "json", json.dumps(out, indent=1, ensure_ascii=False)
    if fmt == "arena_hard":
        now = time.time()
        out = []
        for row, a in zip(rows, answers, strict=True):
            qid = row["question_id"]
            answer_id = hashlib.sha256(f"{model_name}/{qid}".encode()).hexdigest()[:22]
            turn = {"content": a["response"], "token_len": len(a["token_ids"])}
            out.append(
                {
                    "question_id": qid,
                    "answer_id": answer_id,
                    "model_id": model_name,
                    "choices": [{"index": 0, "turns": [turn]}],
                    "tstamp": now,
                }
            )
        return "jsonl", out
    return "jsonl", [{"prompt": p, **a} for p, a in zip(prompts, answers, strict=True)]


def answer_file(
    cfg: InpoConfig, prompts_path: Path, out: Path, fmt: str | None, model_name: str | None
) -> None:
    from transformers import AutoTokenizer

    from inpo.cluster import start_ray
    from inpo.generate import generate_rows, request_seed, start_generators, tokenize_prompts
    from inpo.models import resolve_model

    kind, rows, prompts = read_benchmark(prompts_path, cfg.data.prompt_field)
    fmt = fmt or kind
    if fmt != "jsonl" and fmt != kind:
        raise DataError(f"{prompts_path}: {kind} prompts cannot be written as {fmt} answers")
    policy = str(resolve_model(cfg.model.policy, "--policy", out.parent))
    name = model_name or Path(policy).name
    tokenizer = AutoTokenizer.from_pretrained(policy)
    kept, token_ids = tokenize_prompts(
        tokenizer, prompts, cfg.data.max_prompt_tokens, source=str(prompts_path)
    )
    if len(kept) < len(prompts):
        raise DataError(
            f"{prompts_path}: {len(prompts) - len(kept)} prompts are longer than "
            f"data.max_prompt_tokens = {cfg.data.max_prompt_tokens}; raise it (a benchmark "
            "needs every answer)"
        )
    generators = start_generators(cfg, start_ray(cfg), policy)
    try:
        generated = generate_rows(
            generators,
            prompts,
            list(range(len(prompts))),
            token_ids,
            seeds=[request_seed(cfg.run.seed, "answer", i) for i in range(len(prompts))],
            n=1,
            temperature=cfg.eval.temperature,
            top_p=cfg.generation.top_p,
            max_tokens=cfg.eval.max_new_tokens or cfg.generation.max_new_tokens,
            desc="answer",
        )
    finally:
        generators.shutdown()
    answers = [
        {
            "response": g["responses"][0],
            "finish_reason": g["finish_reasons"][0],
            "token_ids": g["response_ids"][0],
        }
        for g in generated
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    how, content = format_answers(fmt, rows, prompts, answers, name)
    if how == "json":
        write_text_atomic(out, content)
    else:
        write_jsonl_atomic(out, content)
    cut = sum(a["finish_reason"] == "length" for a in answers)
    print(
        f"wrote {len(answers)} {fmt} answers of {name} to {out}"
        + (f"; {cut} stopped at the length limit" if cut else "")
    )
