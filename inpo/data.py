"""Reading and checking prompt and pair files, and turning them into token ids.

Rows follow TRL: a prompt is a string (used as is) or a list of chat messages
(the chat template is applied); a response is a string or a list of messages. A string
prompt is never wrapped in a chat template: it may be text already rendered with one, and
a template applied twice fails silently; a chat model's prompts are chat messages (the
builtin sets, RLHFlow's `context_messages`).
Pairs may carry the exact token ids they were sampled with (`prompt_ids`,
`chosen_ids`, `rejected_ids`); the online loop writes them so the learner
scores exactly the tokens vLLM produced, with no re-tokenisation drift.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inpo.config import ConfigError, DataConfig
from inpo.errors import InpoError
from inpo.prompts import ifeval_prompts, quickstart_prompts

Prompt = str | list[dict[str, str]]


class DataError(InpoError):
    """Bad input data; the message names file, row and field."""


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file (checked line by line) or of anything `datasets` can read."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    if path.suffix in (".jsonl", ".ndjson") or path.is_file() and path.suffix == "":
        rows = []
        with path.open() as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: row {n}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(
                        f"{path}: row {n}: expected a JSON object, got {type(row).__name__}"
                    )
                rows.append(row)
        return rows
    import datasets

    kind = {".json": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
    elif path.suffix in kind:
        ds = datasets.load_dataset(kind[path.suffix], data_files=str(path), split="train")
    else:
        raise DataError(
            f"{path}: unknown format '{path.suffix}' (use .jsonl, .json, .csv, .parquet)"
        )
    return [dict(r) for r in ds]


def check_text(path: Path, n: int, field: str, value: Any, *, messages_ok: bool = True) -> None:
    where = f"{path}: row {n}: field '{field}'"
    if value is None:
        raise DataError(f"{where}: missing")
    if isinstance(value, str):
        return
    if messages_ok and isinstance(value, list):
        for i, m in enumerate(value):
            if not (
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
            ):
                raise DataError(f"{where}: message {i} must be {{'role': str, 'content': str}}")
        if not value:
            raise DataError(f"{where}: empty message list")
        return
    raise DataError(f"{where}: expected a string or a list of chat messages, got {value!r:.60}")


def check_ids(path: Path, n: int, field: str, value: Any) -> None:
    if value is None:
        return
    if not (
        isinstance(value, list) and value and all(isinstance(t, int) and t >= 0 for t in value)
    ):
        raise DataError(f"{path}: row {n}: field '{field}': expected a non-empty list of token ids")


def load_prompts(path: str | Path, field: str = "prompt") -> list[Prompt]:
    path = Path(path)
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: no prompts (the file is empty)")
    for n, row in enumerate(rows, start=1):
        check_text(path, n, field, row.get(field))
    return [row[field] for row in rows]


def prompt_token_ids(tokenizer, prompt: Prompt) -> list[int]:
    """The one place a prompt becomes tokens, for generation and learning alike."""
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=True).input_ids
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def response_text(response: str | list[dict[str, str]]) -> str:
    if isinstance(response, str):
        return response
    return "".join(m["content"] for m in response if m["role"] == "assistant")


def end_of_turn_id(tokenizer) -> int:
    """The token that closes an assistant turn in the chat template (<|im_end|> in ChatML,
    <|eot_id|> in Llama 3), which is what a chat model emits when it stops; EOS if the
    template shows none."""
    mark = "\u2063inpo\u2063"
    if tokenizer.chat_template:
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": mark}],
                tokenize=False,
            )
        except Exception:  # a template that rejects this conversation shape
            text = ""
        if mark in text:
            tail = tokenizer(text.split(mark, 1)[1], add_special_tokens=False).input_ids
            if tail and tail[0] in tokenizer.all_special_ids:
                return tail[0]
    return tokenizer.eos_token_id


def response_token_ids(
    tokenizer, response: str | list[dict[str, str]], closing_id: int | None
) -> list[int]:
    """Tokens of a text response, closed with ``closing_id`` as a finished generation is
    (None for a response cut at the length limit, which has no closing token)."""
    ids = tokenizer(response_text(response), add_special_tokens=False).input_ids
    return ids + ([closing_id] if closing_id is not None else [])


@dataclass
class TokenizedPairs:
    """Token ids of every pair, in file order; the unit the learner consumes.

    ``p_label`` is the probability the loss gives to "chosen wins" (1 = hard label);
    ``p_win`` each side's estimated P(y > pi_t) (SPPO), NaN where the row has none."""

    prompt: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    p_label: list[float]
    p_win: list[tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        if self.p_win is None:
            self.p_win = [(math.nan, math.nan)] * len(self.prompt)

    def __len__(self) -> int:
        return len(self.prompt)

    def longest(self, i: int) -> int:
        return len(self.prompt[i]) + max(len(self.chosen[i]), len(self.rejected[i]))

    def num_tokens(self, i: int) -> int:
        return 2 * len(self.prompt[i]) + len(self.chosen[i]) + len(self.rejected[i])

    def subset(self, keep: list[int]) -> TokenizedPairs:
        return TokenizedPairs(
            *([col[i] for i in keep] for col in (self.prompt, self.chosen, self.rejected)),
            [self.p_label[i] for i in keep],
            [self.p_win[i] for i in keep],
        )


def tokenize_pairs(tokenizer, rows: list[dict[str, Any]]) -> TokenizedPairs:
    """Token ids of pair rows: the exact ids where the row has them, else the text
    tokenized as generation would have produced it (chat prompts through the template,
    responses closed by the end-of-turn token unless their finish reason is "length")."""
    out = TokenizedPairs([], [], [], [], [])
    eot, eos = end_of_turn_id(tokenizer), tokenizer.eos_token_id
    for row in rows:
        out.prompt.append(row.get("prompt_ids") or prompt_token_ids(tokenizer, row["prompt"]))
        closing = eos if isinstance(row["prompt"], str) else eot
        for side, col in (("chosen", out.chosen), ("rejected", out.rejected)):
            ids = row.get(f"{side}_ids")
            if not ids:
                cut = row.get(f"{side}_finish_reason") == "length"
                ids = response_token_ids(tokenizer, row[side], None if cut else closing)
            col.append(ids)
        out.p_label.append(float(row.get("p_label", 1.0)))
        out.p_win.append((row.get("chosen_p_win", math.nan), row.get("rejected_p_win", math.nan)))
    return out


def split_prompts(
    pool_size: int, eval_pool_size: int | None, eval_size: int, seed: int, selection: str
) -> tuple[list[int], list[int]]:
    """(train ids, eval ids) as indices into the prompt pool (eval ids index the separate
    eval pool when there is one).

    Held-out prompts are a seeded sample of the pool, taken before any training prompt is
    drawn; training prompts keep file order ("slice") or a seeded permutation ("sample",
    i.e. sampling without replacement).
    """
    rng = random.Random(f"{seed}/split")
    ids = list(range(pool_size))
    if eval_pool_size is not None:
        eval_ids = list(range(min(eval_size, eval_pool_size)))
        train = ids
    else:
        eval_ids = sorted(rng.sample(ids, min(eval_size, len(ids) - 1)))
        held = set(eval_ids)
        train = [i for i in ids if i not in held]
    if selection == "sample":
        rng.shuffle(train)
    return train, eval_ids


def iteration_prompts(train_ids: list[int], start: int, count: int) -> list[int]:
    """``count`` prompt ids from position ``start`` of the draw order, wrapping around an
    exhausted pool."""
    return [train_ids[(start + i) % len(train_ids)] for i in range(min(count, len(train_ids)))]


@dataclass
class PromptSets:
    """What a run draws: for each data.prompts file its prompts and the training ids it
    may draw (in draw order), and the held-out prompts."""

    pools: list[list[Prompt]]
    train_ids: list[list[int]]
    eval_pool: list[Prompt]
    eval_ids: list[int]

    def iteration(self, t: int, data: DataConfig) -> tuple[list[Prompt], list[int]]:
        """Iteration t's pool and prompt ids: the slice after the earlier iterations' of
        the one file, or the first slice of the t-th file."""
        count = data.prompts_for(t)
        if len(self.pools) == 1:
            start = sum(data.prompts_for(s) for s in range(1, t))
            return self.pools[0], iteration_prompts(self.train_ids[0], start, count)
        return self.pools[t - 1], iteration_prompts(self.train_ids[t - 1], 0, count)


def load_prompt_sets(data: DataConfig, iterations: int, seed: int) -> PromptSets:
    """The prompts of a run; the held-out ones come from data.eval_prompts, else from the
    first file. A run that would draw a training prompt twice, or fewer than it asks, is a
    ConfigError unless data.allow_reuse."""
    # Only the files the run's iterations draw from (a one-iteration trial needs one).
    pools = [prompts_from(f, data) for f in data.prompt_files[:iterations]]
    own_eval = prompts_from(data.eval_prompts, data) if data.eval_prompts else None
    own_size = None if own_eval is None else len(own_eval)
    splits = [
        split_prompts(len(pool), own_size, data.eval_size if i == 0 else 0, seed, data.selection)
        for i, pool in enumerate(pools)
    ]
    sets = PromptSets(
        pools,
        [train for train, _ in splits],
        pools[0] if own_eval is None else own_eval,
        splits[0][1],
    )
    if not data.allow_reuse:
        _check_supply(data, sets, iterations)
    return sets


def _check_supply(data: DataConfig, sets: PromptSets, iterations: int) -> None:
    per = data.prompts_per_iteration
    held = "" if data.eval_prompts else f" after {len(sets.eval_ids)} held out for eval"
    if len(sets.pools) == 1:
        need = sum(data.prompts_for(t) for t in range(1, iterations + 1))
        have = len(sets.train_ids[0])
        short = f"{iterations} iterations need {need}, data.prompts holds {have}{held}"
    else:
        t = next(
            (t for t in range(iterations) if len(sets.train_ids[t]) < data.prompts_for(t + 1)),
            None,
        )
        if t is None:
            return
        need, have = data.prompts_for(t + 1), len(sets.train_ids[t])
        short = f"iteration {t + 1} needs {need}, data.prompts[{t}] holds {have}"
        short += held if t == 0 else ""
    if have < need:
        raise ConfigError(
            f"config error: data.prompts_per_iteration = {per}: too few training prompts "
            f"({short}); add prompts, lower data.prompts_per_iteration or run.iterations, "
            f"or set data.allow_reuse=true to draw prompts again"
        )


def prompts_from(source: str, data: DataConfig) -> list[Prompt]:
    """The prompts one entry of data.prompts (or data.eval_prompts) names: a file (its
    data.prompt_field) or a builtin set (builtin:ifeval asks data.ifeval_kinds)."""
    if source == "builtin:quickstart":
        return quickstart_prompts()
    if source == "builtin:ifeval":
        return ifeval_prompts(data.ifeval_kinds)
    if source.startswith("builtin:"):
        raise DataError(
            f"data.prompts = {source!r}: unknown builtin (known: builtin:quickstart, "
            f"builtin:ifeval)"
        )
    return load_prompts(source, data.prompt_field)


def probe_sequence(tokenizer) -> tuple[list[int], int]:
    """A fixed (ids, prompt_len) that generators and learner both score after a sync.
    Chat models get it through their template, base models as plain text."""
    question = "Probe: are the weights in sync?"
    prompt = prompt_token_ids(
        tokenizer,
        [{"role": "user", "content": question}] if tokenizer.chat_template else question,
    )
    response = tokenizer(" Yes, every layer matches the learner.", add_special_tokens=False)
    return prompt + response.input_ids, len(prompt)
