"""`inpo answer`'s Arena-Hard files, read back the way the benchmark's own code reads them.

The loaders below re-implement the field access of lmarena/arena-hard-auto:
- v2.0 (the current release): utils/completion.py `load_model_answers` (rows by "uid",
  the file name is the model), gen_judgment.py `pairwise_judgment` (the answer text at
  messages[-1].content.answer, the model at "model"), show_result.py
  `get_model_style_metadata` + `print_leaderboard_with_style_features` (pandas, metadata
  by uid, each value an int or a dict summed; token_len first, then the three markdown
  counts);
- v0.1 (release of Sep 2024, commit 0489bf3): utils.py `load_model_answers` (rows by
  "question_id"), show_result.py `get_battles_from_judgment` with --style-control
  (conv_metadata by question_id under model_id) and its avg_tokens (choices[0].turns[0]
  .token_len), utils_math.py `construct_style_matrices` (int, else the sum of a dict).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from inpo.data import DataError
from inpo.durable import write_jsonl_atomic
from inpo.run.answer import format_answers, markdown_counts, read_benchmark, token_counter

ANSWER = (
    "# Plan\n\n1. one\n2. two\n- a\n  * b\n**bold** and __underlined__\n"
    "```\n# not a header\n- nor a list item\n```\n"
)
COUNTS = {
    "header_count": {"h1": 1, "h2": 0, "h3": 0, "h4": 0, "h5": 0, "h6": 0},
    "list_count": {"ordered": 2, "unordered": 2},
    "bold_count": {"**": 1, "__": 1},
}
ANSWERS = [
    {"response": ANSWER, "finish_reason": "stop", "token_ids": [1, 2], "token_len": 31},
    {"response": "Plain.", "finish_reason": "length", "token_ids": [3], "token_len": 2},
]


def write_questions(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_answers(tmp_path: Path, questions: Path, model: str) -> Path:
    kind, rows, prompts = read_benchmark(questions, "prompt")
    assert kind == "arena_hard"
    how, out = format_answers("arena_hard", rows, prompts, ANSWERS, model)
    path = tmp_path / "model_answer" / f"{model}.jsonl"
    path.parent.mkdir()
    write_jsonl_atomic(path, out)
    return path


def features(meta: dict) -> list[int]:
    """show_result's style features of one answer: an int, or the sum of a dict."""
    return [v if isinstance(v, int) else sum(v.values()) for v in meta.values()]


def test_markdown_counts_skip_code_blocks():
    assert markdown_counts(ANSWER) == COUNTS
    assert markdown_counts("no markdown") == {k: dict.fromkeys(v, 0) for k, v in COUNTS.items()}


def test_v2_answers_load_with_the_benchmarks_code(tmp_path):
    questions = write_questions(
        tmp_path / "question.jsonl",
        [
            {"uid": "u1", "category": "hard_prompt", "subcategory": "coding", "prompt": "Q1?"},
            # v2.0 re-packaged v0.1's questions with "cluster" instead of "subcategory"
            {"uid": "u2", "category": "arena-hard-v0.1", "cluster": "c", "prompt": "Q2?"},
        ],
    )
    path = write_answers(tmp_path, questions, "tiny-inpo")
    # utils/completion.py load_model_answers: {file name: {uid: row}}
    answers = {
        f.name[: -len(".jsonl")]: {
            (row := json.loads(line))["uid"]: row for line in f.read_text().splitlines()
        }
        for f in sorted(path.parent.glob("*.jsonl"))
    }
    # gen_judgment.py: the question by uid, the answer text and the model
    for uid, question in (("u1", "Q1?"), ("u2", "Q2?")):
        answer = answers["tiny-inpo"][uid]
        assert answer["model"] == "tiny-inpo" and answer["messages"][0]["content"] == question
    assert answers["tiny-inpo"]["u1"]["messages"][-1]["content"]["answer"] == ANSWER
    assert {"ans_id", "tstamp"} <= answers["tiny-inpo"]["u1"].keys()
    # show_result.py style control: pandas, metadata by uid under the first row's model
    df = pd.read_json(path, lines=True)
    style = {df.iloc[0]["model"]: df.set_index("uid")["metadata"].to_dict()}
    assert features(style["tiny-inpo"]["u1"]) == [31, 1, 4, 2]  # token_len first
    assert features(style["tiny-inpo"]["u2"]) == [2, 0, 0, 0]


def test_v01_answers_carry_conv_metadata_for_style_control(tmp_path):
    questions = write_questions(
        tmp_path / "question.jsonl",
        [
            {"question_id": "q1", "category": "arena-hard-v0.1", "turns": [{"content": "Q1?"}]},
            {"question_id": "q2", "category": "arena-hard-v0.1", "turns": [{"content": "Q2?"}]},
        ],
    )
    path = write_answers(tmp_path, questions, "tiny-inpo")
    # utils.py load_model_answers: {file name: {question_id: row}}
    rows = {r["question_id"]: r for r in map(json.loads, path.read_text().splitlines())}
    assert rows["q1"]["choices"][0]["turns"][0]["content"] == ANSWER
    avg_tokens = sum(r["choices"][0]["turns"][0]["token_len"] for r in rows.values()) / 2
    assert avg_tokens == (31 + 2) / 2
    # show_result.py --style-control: conv_metadata by question_id under model_id
    df = pd.read_json(path, lines=True)
    assert "conv_metadata" in df.columns
    metadata = {
        df.model_id[0]: df[["question_id", "conv_metadata"]]
        .set_index("question_id")
        .to_dict("index")
    }
    meta = metadata["tiny-inpo"]["q1"]["conv_metadata"]
    # utils_math.py construct_style_matrices: each element an int or a dict summed
    elements = ["token_len", "header_count", "list_count", "bold_count"]
    got = [meta[e] if type(meta[e]) is int else sum(meta[e].values()) for e in elements]
    assert got == [31, 1, 4, 2]


def test_arena_hard_question_files_are_checked_row_by_row(tmp_path):
    f = tmp_path / "question.jsonl"
    v2 = {"uid": "u1", "category": "hard_prompt", "prompt": "Q?"}
    write_questions(f, [v2, {"question_id": "q2", "turns": [{"content": "Q?"}]}])
    with pytest.raises(DataError, match=r"row 2: not an Arena-Hard v2.0 question as row 1"):
        read_benchmark(f, "prompt")
    write_questions(f, [v2, {"uid": "u2", "category": "math"}])
    with pytest.raises(DataError, match=r"row 2: field 'prompt': missing"):
        read_benchmark(f, "prompt")
    write_questions(f, [{"uid": "u2", "category": "math", "prompt": ["Q?"]}])
    with pytest.raises(DataError, match=r"row 1: field 'prompt': expected a string"):
        read_benchmark(f, "prompt")


def test_token_len_by_tiktoken_where_available_else_the_policy_tokenizer(monkeypatch):
    import requests
    import tiktoken

    from inpo.models.tiny import build_tokenizer

    tok = build_tokenizer()  # one token per character

    def offline(model):
        raise requests.ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "encoding_for_model", offline)
    count, how = token_counter(tok, "v2.0")
    assert count("hello") == 5 and how.startswith("the policy's tokenizer")
    assert "gpt-4o" in how

    class Encoding:
        name = "o200k_base"

        def encode(self, text, disallowed_special):
            assert disallowed_special == ()  # as the benchmark encodes
            return text.split()

    asked = []
    monkeypatch.setattr(tiktoken, "encoding_for_model", lambda m: asked.append(m) or Encoding())
    count, how = token_counter(tok, "v0.1")
    assert count("two words") == 2 and how == "tiktoken o200k_base, as Arena-Hard v0.1"
    assert asked == ["gpt-3.5-turbo"]
