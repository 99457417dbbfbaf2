"""Reading and checking prompt and pair files, and turning them into token ids.

Rows follow TRL: a prompt is a string (used as is) or a list of chat messages
(the chat template is applied); a response is a string or a list of messages.
Pairs may carry the exact token ids they were sampled with (`prompt_ids`,
`chosen_ids`, `rejected_ids`); the online loop writes them so the learner
scores exactly the tokens vLLM produced, with no re-tokenisation drift.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inpo.errors import InpoError

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


def _check_text(path: Path, n: int, field: str, value: Any, *, messages_ok: bool = True) -> None:
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


def _check_ids(path: Path, n: int, field: str, value: Any) -> None:
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
        _check_text(path, n, field, row.get(field))
    return [row[field] for row in rows]


def load_pairs(path: str | Path) -> list[dict[str, Any]]:
    """TRL preference rows {prompt, chosen, rejected}, every row checked before use."""
    path = Path(path)
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: no pairs (the file is empty)")
    for n, row in enumerate(rows, start=1):
        for field in ("prompt", "chosen", "rejected"):
            _check_text(path, n, field, row.get(field))
        for field in ("prompt_ids", "chosen_ids", "rejected_ids"):
            _check_ids(path, n, field, row.get(field))
    return rows


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


def response_token_ids(tokenizer, response: str | list[dict[str, str]]) -> list[int]:
    """Tokens of a text response, closed with EOS as a finished generation would be."""
    ids = tokenizer(response_text(response), add_special_tokens=False).input_ids
    return ids + [tokenizer.eos_token_id]


@dataclass
class TokenizedPairs:
    """Token ids of every pair, in file order; the unit the learner consumes."""

    prompt: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompt)

    def num_tokens(self, i: int) -> int:
        return 2 * len(self.prompt[i]) + len(self.chosen[i]) + len(self.rejected[i])


def tokenize_pairs(tokenizer, rows: list[dict[str, Any]]) -> TokenizedPairs:
    out = TokenizedPairs([], [], [])
    for row in rows:
        out.prompt.append(row.get("prompt_ids") or prompt_token_ids(tokenizer, row["prompt"]))
        out.chosen.append(row.get("chosen_ids") or response_token_ids(tokenizer, row["chosen"]))
        out.rejected.append(
            row.get("rejected_ids") or response_token_ids(tokenizer, row["rejected"])
        )
    return out


def write_jsonl_atomic(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write all rows or nothing: a crash leaves no half file under the final name."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)


_TOPICS = (
    "the sea",
    "a cat",
    "rain",
    "music",
    "a city",
    "bread",
    "the moon",
    "a garden",
    "trains",
    "winter",
    "a library",
    "coffee",
    "mountains",
    "a river",
    "friendship",
    "the sun",
)
_ASKS = (
    "Write one line about {}.",
    "Describe {} in a few words.",
    "Say something kind about {}.",
    "Give a short phrase on {}.",
    "What comes to mind with {}?",
    "Name a feeling about {}.",
    "Invent a title about {}.",
    "Whisper a secret about {}.",
)


def builtin_prompts(name: str) -> list[Prompt]:
    """Prompts generated in code (no download), for the quickstart and tests."""
    if name != "builtin:quickstart":
        raise DataError(f"data.prompts = {name!r}: unknown builtin (known: builtin:quickstart)")
    return [
        [{"role": "user", "content": f"{ask.format(topic)} (#{i})"}]
        for i in range(4)
        for topic in _TOPICS
        for ask in _ASKS
    ]
