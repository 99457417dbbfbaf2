"""`inpo answer`: a policy's answers to a benchmark's prompts, in the files the benchmark
reads (what the paper's AlpacaEval 2.0 and Arena-Hard numbers are computed from).

Input rows are recognised by their fields:
    AlpacaEval        {"instruction", "dataset"?, ...}          (alpaca_eval.json)
    Arena-Hard v2.0   {"uid", "category", "prompt", ...}        (question.jsonl of the
                      current release, which re-packaged v0.1's questions this way too)
    Arena-Hard v0.1   {"question_id", "turns": [{"content"}]}   (the original question.jsonl)
    plain             {<data.prompt_field>: str | chat messages}
Outputs, by --format (default: the benchmark the input comes from; Arena-Hard answers in
the version of the questions):
    alpaca_eval  a JSON list of {"instruction", "output", "generator", "dataset"}
                 (alpaca_eval --model_outputs FILE)
    arena_hard   v2.0: JSONL of {"uid", "ans_id", "model", "messages": [user turn,
                 {"role": "assistant", "content": {"answer"}}], "tstamp", "metadata":
                 {"token_len", "header_count", "list_count", "bold_count"}}
                 v0.1: JSONL of {"question_id", "answer_id", "model_id", "tstamp",
                 "choices": [{"index": 0, "turns": [{"content", "token_len"}]}],
                 "conv_metadata": {"token_len", "header_count", "list_count", "bold_count"}}
                 (data/<bench>/model_answer/<model>.jsonl; the metadata is what
                 show_result.py's style control reads)
    jsonl        JSONL of {"prompt", "response", "finish_reason", "token_ids"}
Answers are sampled with eval.temperature and eval.max_new_tokens (or
generation.max_new_tokens), one per prompt, seeded per prompt. Arena-Hard counts
token_len with tiktoken (gpt-4o's encoding in v2.0, gpt-3.5-turbo's in v0.1); tiktoken
downloads encodings on first use, so without its cache the policy's tokenizer counts, and
`inpo answer` says which did.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from inpo.config import InpoConfig
from inpo.data import DataError, Prompt, read_rows
from inpo.durable import write_jsonl_atomic, write_text_atomic
from inpo.generation.stage import sample, start_generators, tokenize_prompts
from inpo.models import resolve_model
from inpo.plan.cluster import start_ray
from inpo.plan.pool import stop

FORMATS = ("alpaca_eval", "arena_hard", "jsonl")

#: The model whose tiktoken encoding Arena-Hard counts token_len with (v2.0: gen_answer.py
#: and utils/add_markdown_info.py; v0.1: add_markdown_info.py of that release).
TIKTOKEN_MODEL = {"v2.0": "gpt-4o", "v0.1": "gpt-3.5-turbo"}
_PROMPT_FIELD = {"alpaca_eval": "instruction", "v2.0": "prompt", "v0.1": "turns[0].content"}


def arena_hard_version(row: dict) -> str | None:
    """The Arena-Hard release a question row comes from: "v2.0" ({uid, category, ...}),
    "v0.1" ({question_id, turns}) or None."""
    if "uid" in row and "category" in row:
        return "v2.0"
    if "question_id" in row and "turns" in row:
        return "v0.1"
    return None


def read_benchmark(path: Path, prompt_field: str) -> tuple[str, list[dict], list[Prompt]]:
    """(the benchmark the rows come from, the rows, one prompt per row)."""
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: no prompts (the file is empty)")
    first = rows[0]
    version = arena_hard_version(first)
    kind = "alpaca_eval" if "instruction" in first else "arena_hard" if version else "jsonl"
    if kind == "jsonl":
        prompts = []
        for n, row in enumerate(rows, start=1):
            if prompt_field not in row:
                raise DataError(f"{path}: row {n}: field '{prompt_field}': missing")
            prompts.append(row[prompt_field])
        return kind, rows, prompts
    field = _PROMPT_FIELD[version if kind == "arena_hard" else kind]
    questions: list[Prompt] = []
    for n, row in enumerate(rows, start=1):
        if kind == "arena_hard" and arena_hard_version(row) != version:
            raise DataError(
                f"{path}: row {n}: not an Arena-Hard {version} question as row 1 is (v2.0 rows "
                "have 'uid' and 'category', v0.1 rows 'question_id' and 'turns')"
            )
        try:
            text = row["turns"][0]["content"] if field.startswith("turns") else row[field]
        except (KeyError, IndexError, TypeError):
            raise DataError(f"{path}: row {n}: field '{field}': missing") from None
        if not isinstance(text, str):
            raise DataError(
                f"{path}: row {n}: field '{field}': expected a string, got {text!r:.60}"
            )
        questions.append([{"role": "user", "content": text}])
    return kind, rows, questions


def markdown_counts(text: str) -> dict[str, dict[str, int]]:
    """The markdown elements Arena-Hard's style control counts in an answer, as its
    utils/add_markdown_info.py does: the insides of ``` blocks are removed first (each
    inside wherever it occurs; the fences stay), then headers by level, ordered and
    unordered list items and bold spans."""
    for inside in re.findall(r"```([^`]*)```", text):
        text = text.replace(inside, "")

    def lines(pattern: str) -> int:
        return len(re.findall(pattern, text, re.MULTILINE))

    return {
        "header_count": {f"h{k}": lines(rf"^#{{{k}}}\s") for k in range(1, 7)},
        "list_count": {"ordered": lines(r"^\s*\d+\.\s"), "unordered": lines(r"^\s*[-*+]\s")},
        "bold_count": {
            "**": len(re.findall(r"\*\*[^*\n]+\*\*", text)),
            "__": len(re.findall(r"__[^_\n]+__", text)),
        },
    }


def token_counter(tokenizer, version: str) -> tuple[Callable[[str], int], str]:
    """(count the tokens of a text, what counts): tiktoken's encoding as the benchmark
    counts, where it is available offline (tiktoken downloads it on first use and caches
    it), else the policy's ``tokenizer``."""
    try:
        import tiktoken

        encoding = tiktoken.encoding_for_model(TIKTOKEN_MODEL[version])
    except (ImportError, OSError, ValueError) as e:
        return (
            lambda text: len(tokenizer(text, add_special_tokens=False).input_ids),
            f"the policy's tokenizer (tiktoken's encoding for {TIKTOKEN_MODEL[version]}, "
            f"which Arena-Hard {version} counts with, is not available: {type(e).__name__})",
        )
    return lambda text: len(encoding.encode(text, disallowed_special=())), (
        f"tiktoken {encoding.name}, as Arena-Hard {version}"
    )


def _answer_id(model_name: str, question_id: str) -> str:
    return hashlib.sha256(f"{model_name}/{question_id}".encode()).hexdigest()[:22]


def _arena_hard_row(row: dict, prompt: Prompt, answer: dict, model_name: str, now: float):
    """One answer row in the release of its question row; answer["token_len"] counted as
    that release counts."""
    text = answer["response"]
    meta = {"token_len": answer["token_len"], **markdown_counts(text)}
    if arena_hard_version(row) == "v2.0":
        return {
            "uid": row["uid"],
            "ans_id": _answer_id(model_name, row["uid"]),
            "model": model_name,
            "messages": [*prompt, {"role": "assistant", "content": {"answer": text}}],
            "tstamp": now,
            "metadata": meta,
        }
    qid = row["question_id"]
    turn = {"content": text, "token_len": answer["token_len"]}
    return {
        "question_id": qid,
        "answer_id": _answer_id(model_name, qid),
        "model_id": model_name,
        "choices": [{"index": 0, "turns": [turn]}],
        "tstamp": now,
        "conv_metadata": meta,
    }


def format_answers(
    fmt: str, rows: list[dict], prompts: list[Prompt], answers: list[dict], model_name: str
) -> tuple[str, list[dict]] | tuple[str, str]:
    """("jsonl", rows) or ("json", text) of the answers in the format ``fmt``; Arena-Hard
    answers need "token_len" (`token_counter`)."""
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
        return "jsonl", [
            _arena_hard_row(row, p, a, model_name, now)
            for row, p, a in zip(rows, prompts, answers, strict=True)
        ]
    return "jsonl", [{"prompt": p, **a} for p, a in zip(prompts, answers, strict=True)]


def answer_file(
    cfg: InpoConfig, prompts_path: Path, out: Path, fmt: str | None, model_name: str | None
) -> None:
    from transformers import AutoTokenizer

    kind, rows, prompts = read_benchmark(prompts_path, cfg.data.prompt_field)
    fmt = fmt or kind
    if fmt != "jsonl" and fmt != kind:
        raise DataError(f"{prompts_path}: {kind} prompts cannot be written as {fmt} answers")
    policy = str(resolve_model(cfg.model.policy, "--policy", out.parent))
    name = model_name or Path(policy).name
    tokenizer = AutoTokenizer.from_pretrained(policy)
    kept, _ = tokenize_prompts(
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
        max_tokens = cfg.eval.max_new_tokens or cfg.generation.max_new_tokens
        ids = list(range(len(prompts)))
        generated = sample(
            generators,
            cfg,
            tokenizer,
            prompts,
            ids,
            "answer",
            1,
            cfg.eval.temperature,
            max_tokens,
        )
    finally:
        stop(generators)
    answers = [
        {
            "response": g["responses"][0],
            "finish_reason": g["finish_reasons"][0],
            "token_ids": g["response_ids"][0],
        }
        for g in generated
    ]
    note = ""
    if fmt == "arena_hard":
        count, counted_by = token_counter(tokenizer, arena_hard_version(rows[0]))
        for a in answers:
            a["token_len"] = count(a["response"])
        note = f"; token_len by {counted_by}"
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
        + note
    )
