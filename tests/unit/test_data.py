"""Prompt splits, file loaders and tokenisation of pairs (inpo.data)."""

import json

import pytest
from pydantic import ValidationError

from inpo.data import (
    DataError,
    iteration_prompts,
    load_prompts,
    read_rows,
    split_prompts,
    tokenize_pairs,
)
from inpo.rows import read_pairs


def test_holdout_is_disjoint_and_slices_are_fresh():
    train, held = split_prompts(100, None, eval_size=10, seed=3, selection="slice")
    assert len(held) == 10 and not set(held) & set(train) and len(train) == 90
    assert train == sorted(train)  # slice mode keeps file order
    its = [iteration_prompts(train, start, 30) for start in (0, 30, 60)]
    assert sum(its, []) == train  # three fresh slices cover the pool exactly once
    assert iteration_prompts(train, 90, 30) == its[0]  # then wrap around
    assert split_prompts(100, None, 10, 3, "slice") == (train, held)
    assert split_prompts(100, None, 10, 4, "slice")[1] != held  # the seed matters


def test_sample_mode_permutes_without_replacement():
    train, held = split_prompts(50, None, eval_size=0, seed=0, selection="sample")
    assert held == [] and sorted(train) == list(range(50)) and train != sorted(train)


def test_separate_eval_file():
    train, held = split_prompts(20, 8, eval_size=5, seed=0, selection="slice")
    assert train == list(range(20)) and held == [0, 1, 2, 3, 4]


def test_read_rows_names_file_and_row(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": 1}\n\n[1, 2]\n')
    with pytest.raises(DataError, match=r"x.jsonl: row 3: expected a JSON object, got list"):
        read_rows(f)
    f.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match=r"x.jsonl: row 2: not valid JSON"):
        read_rows(f)
    with pytest.raises(DataError, match="does not exist"):
        read_rows(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="unknown format '.txt'"):
        (tmp_path / "p.txt").write_text("hi")
        read_rows(tmp_path / "p.txt")


def test_load_prompts_checks_every_row(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(
        json.dumps({"prompt": "hi"})
        + "\n"
        + json.dumps({"prompt": [{"role": "user", "content": "a"}, {"role": "user"}]})
        + "\n"
    )
    with pytest.raises(DataError, match=r"row 2: field 'prompt': message 1 must be"):
        load_prompts(f)
    f.write_text(json.dumps({"text": "hi"}) + "\n")
    assert load_prompts(f, "text") == ["hi"]
    with pytest.raises(DataError, match=r"row 1: field 'prompt': missing"):
        load_prompts(f)


@pytest.mark.parametrize(
    "row,needle",
    [
        ({"prompt": "p", "chosen": "a"}, "field 'rejected': missing"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "p_label": 1.5}, "field 'p_label'"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "p_label": "x"}, "field 'p_label'"),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "chosen_ids": [1, -2]},
            "field 'chosen_ids'",
        ),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "rejected_finish_reason": "abort"},
            "field 'rejected_finish_reason': 'abort'",
        ),
    ],
)
def test_load_pairs_names_the_bad_field(tmp_path, row, needle):
    f = tmp_path / "pairs.jsonl"
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    f.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"pairs.jsonl: row 2: {needle}"):
        read_pairs(f)


def _tokenizer():
    from inpo.models.tiny import build_tokenizer

    return build_tokenizer()


def test_text_pairs_end_with_the_end_of_turn_token_unless_cut():
    tok = _tokenizer()
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    chat = [{"role": "user", "content": "hi"}]
    rows = [
        {"prompt": chat, "chosen": "ab", "rejected": "c", "rejected_finish_reason": "length"},
        {"prompt": "plain", "chosen": "ab", "rejected": "c", "p_label": 0.7},
    ]
    pairs = tokenize_pairs(tok, rows)
    ab, c = (
        tok("ab", add_special_tokens=False).input_ids,
        tok("c", add_special_tokens=False).input_ids,
    )
    assert pairs.chosen[0] == ab + [eot]
    assert pairs.rejected[0] == c  # cut at the length limit: no closing token
    assert pairs.chosen[1] == ab + [tok.eos_token_id]  # a plain prompt: the model's EOS
    assert pairs.p_label == [1.0, 0.7]
    ids_row = {
        "prompt": "p",
        "chosen": "x",
        "rejected": "y",
        "prompt_ids": [5, 6],
        "chosen_ids": [7],
        "rejected_ids": [8, 9],
    }
    exact = tokenize_pairs(tok, [ids_row])
    assert (exact.prompt[0], exact.chosen[0], exact.rejected[0]) == ([5, 6], [7], [8, 9])


def test_end_of_turn_is_read_from_the_chat_template():
    from inpo.data import end_of_turn_id

    tok = _tokenizer()
    # A Llama-3-style template whose turns end with a token that is not EOS.
    tok.add_special_tokens({"additional_special_tokens": ["<|eot_id|>"]})
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|eot_id|>{% endfor %}"
    )
    assert end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|eot_id|>") != tok.eos_token_id
    tok.chat_template = None
    assert end_of_turn_id(tok) == tok.eos_token_id


def test_benchmark_prompt_files_and_answer_formats(tmp_path):
    from inpo.run.answer import format_answers, read_benchmark

    f = tmp_path / "question.jsonl"
    f.write_text(json.dumps({"question_id": "a1", "turns": [{"content": "Why?"}]}) + "\n")
    kind, rows, prompts = read_benchmark(f, "prompt")
    assert kind == "arena_hard" and prompts == [[{"role": "user", "content": "Why?"}]]
    answers = [{"response": "Because.", "finish_reason": "stop", "token_ids": [5, 6, 7]}]
    how, plain = format_answers("jsonl", rows, prompts, answers, "m")
    assert how == "jsonl" and plain == [{"prompt": prompts[0], **answers[0]}]
    how, text = format_answers("alpaca_eval", [{"instruction": "Why?"}], prompts, answers, "m")
    assert json.loads(text) == [
        {"instruction": "Why?", "output": "Because.", "generator": "m", "dataset": "inpo"}
    ]
    f.write_text(json.dumps({"question_id": "a1", "turns": []}) + "\n")
    with pytest.raises(DataError, match=r"row 1: field 'turns\[0\].content': missing"):
        read_benchmark(f, "prompt")


def _prompt_file(path, n, tag, field="context_messages"):
    rows = [{field: [{"role": "user", "content": f"{tag} {i}"}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _data(**fields):
    from inpo.config import DataConfig

    return DataConfig(prompt_field="context_messages", **fields)


def _texts(pool, ids):
    return [pool[i][0]["content"] for i in ids]


def test_iteration_t_draws_from_the_t_th_file_and_eval_from_the_first(tmp_path):
    from inpo.data import load_prompt_sets

    files = [_prompt_file(tmp_path / f"iter{t}.jsonl", 12, f"iter{t}") for t in (1, 2, 3)]
    data = _data(prompts=files, prompts_per_iteration=8, eval_size=4)
    sets = load_prompt_sets(data, iterations=3, seed=0)
    assert len(sets.eval_ids) == 4 and sets.eval_pool is sets.pools[0]
    held = set(_texts(sets.eval_pool, sets.eval_ids))
    for t in (1, 2, 3):
        pool, ids = sets.iteration(t, data)
        texts = _texts(pool, ids)
        assert len(set(texts)) == 8 and all(x.startswith(f"iter{t} ") for x in texts)
        assert not held & set(texts)
    # 12 - 4 held out = 8 in the first file; the others keep all 12
    assert [len(ids) for ids in sets.train_ids] == [8, 12, 12]
    # a separate eval file: held-out prompts from it, the first file trains in full
    own = _prompt_file(tmp_path / "eval.jsonl", 6, "eval")
    data = data.model_copy(update={"eval_prompts": own})
    sets = load_prompt_sets(data, iterations=3, seed=0)
    assert _texts(sets.eval_pool, sets.eval_ids) == [f"eval {i}" for i in range(4)]
    assert [len(ids) for ids in sets.train_ids] == [12, 12, 12]
    # a shorter run reads only the files it draws from
    later = [*files[:2], str(tmp_path / "not_downloaded_yet.jsonl")]
    data = _data(prompts=later, prompts_per_iteration=8, eval_size=4)
    sets = load_prompt_sets(data, iterations=2, seed=0)
    assert _texts(*sets.iteration(2, data)) == [f"iter2 {i}" for i in range(8)]


def test_one_file_slices_are_fresh_across_iterations(tmp_path):
    from inpo.data import load_prompt_sets

    one = _prompt_file(tmp_path / "all.jsonl", 40, "p")
    data = _data(prompts=one, prompts_per_iteration=12, eval_size=4)
    sets = load_prompt_sets(data, 3, 0)
    drawn = [_texts(*sets.iteration(t, data)) for t in (1, 2, 3)]
    assert len(set(sum(drawn, []))) == 36


def test_a_list_of_counts_gives_each_iteration_its_own_fresh_slice(tmp_path):
    """data.prompts_per_iteration = [8, 12]: iteration 1 draws 8, iterations 2 and 3 the
    last count, 12; the slices follow each other, and the supply check sums them."""
    from inpo.config import ConfigError
    from inpo.data import load_prompt_sets

    one = _prompt_file(tmp_path / "all.jsonl", 36, "p")
    data = _data(prompts=one, prompts_per_iteration=[8, 12], eval_size=4)
    sets = load_prompt_sets(data, 3, 0)
    drawn = [_texts(*sets.iteration(t, data)) for t in (1, 2, 3)]
    assert [len(d) for d in drawn] == [8, 12, 12]
    assert sum(drawn, []) == _texts(sets.pools[0], sets.train_ids[0])  # all 32, in order
    with pytest.raises(ConfigError, match="4 iterations need 44, data.prompts holds 32"):
        load_prompt_sets(data, 4, 0)
    files = [_prompt_file(tmp_path / f"iter{t}.jsonl", 10, f"iter{t}") for t in (1, 2)]
    data = _data(prompts=files, prompts_per_iteration=[6, 11], eval_size=4)
    with pytest.raises(ConfigError, match=r"iteration 2 needs 11, data.prompts\[1\] holds 10"):
        load_prompt_sets(data, 2, 0)
    for bad in ([8, 0], []):
        with pytest.raises(ValidationError, match="prompts_per_iteration"):
            _data(prompts=one, prompts_per_iteration=bad)


def test_a_run_that_would_draw_a_prompt_twice_is_refused(tmp_path):
    """3 x 20 prompts with 4 held out: iteration 3 would re-draw 4 of iteration 1's."""
    from inpo.config import ConfigError
    from inpo.data import load_prompt_sets

    one = _prompt_file(tmp_path / "all.jsonl", 60, "p")
    data = _data(prompts=one, prompts_per_iteration=20, eval_size=4)
    with pytest.raises(ConfigError) as e:
        load_prompt_sets(data, iterations=3, seed=0)
    msg = str(e.value)
    assert msg.startswith("config error: data.prompts_per_iteration = 20:") and "\n" not in msg
    assert "need 60" in msg and "holds 56 after 4 held out" in msg
    assert "data.allow_reuse" in msg
    load_prompt_sets(data, iterations=2, seed=0)  # 40 of 56: no prompt twice
    # asked for by name: the slices wrap around, as before
    sets = load_prompt_sets(data.model_copy(update={"allow_reuse": True}), 3, 0)
    drawn = [_texts(*sets.iteration(t, data)) for t in (1, 2, 3)]
    assert len(set(sum(drawn, []))) == 56
    # per-iteration files: each must hold a whole iteration; the first also gives eval
    files = [_prompt_file(tmp_path / f"iter{t}.jsonl", 20, f"iter{t}") for t in (1, 2, 3)]
    with pytest.raises(ConfigError, match=r"iteration 1 needs 20, data.prompts\[0\] holds 16"):
        load_prompt_sets(_data(prompts=files, prompts_per_iteration=20, eval_size=4), 3, 0)
    short = [*files[:2], _prompt_file(tmp_path / "short.jsonl", 19, "s")]
    with pytest.raises(ConfigError, match=r"iteration 3 needs 20, data.prompts\[2\] holds 19"):
        load_prompt_sets(_data(prompts=short, prompts_per_iteration=20, eval_size=0), 3, 0)
    load_prompt_sets(_data(prompts=short, prompts_per_iteration=20, eval_size=0), 2, 0)


def test_chat_message_prompts_go_through_the_chat_template(tmp_path):
    from inpo.data import load_prompt_sets, prompt_token_ids

    tok = _tokenizer()
    f = _prompt_file(tmp_path / "iter1.jsonl", 3, "hello")
    sets = load_prompt_sets(_data(prompts=[f], prompts_per_iteration=3, eval_size=0), 1, 0)
    prompt = sets.pools[0][0]
    text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert prompt_token_ids(tok, prompt) == tok(text, add_special_tokens=False).input_ids
    assert "<|im_start|>assistant" in text  # the assistant turn is opened for generation


def test_the_data_side_never_imports_the_oracle():
    """Prompts are data (inpo.data, inpo.prompts); the oracle imports them, never the
    reverse, so loading the builtin ifeval set pulls in no oracle module."""
    import subprocess
    import sys

    code = (
        "import sys, inpo.config, inpo.data, inpo.prompts\n"
        "inpo.data.prompts_from('builtin:ifeval', inpo.config.DataConfig())\n"
        "print(sorted(m for m in sys.modules if m.startswith('inpo.judging.build')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_builtin_ifeval_asks_the_kinds_of_data_ifeval_kinds():
    from collections import Counter

    from inpo.config import ConfigError, load_config
    from inpo.data import load_prompt_sets
    from inpo.judging.constraints import parse_constraint

    kinds = ["start_word", "max_words", "one_sentence"]
    cfg = load_config(
        None, ["data.prompts=builtin:ifeval", f"data.ifeval_kinds=[{','.join(kinds)}]"]
    )
    sets = load_prompt_sets(cfg.data, iterations=3, seed=0)
    drawn = Counter(parse_constraint(p).kind for p in sets.pools[0][:300])  # the kinds take turns
    assert set(drawn) == set(kinds) and max(drawn.values()) - min(drawn.values()) <= 1
    assert {parse_constraint(p).kind for p in sets.pools[0]} == set(kinds)
    assert len(sets.pools[0]) == 1200 and len(set(map(str, sets.pools[0]))) == 1200
    # one kind holds one prompt per task: every distinct one, no repeat
    one = load_config(None, ["data.prompts=builtin:ifeval", "data.ifeval_kinds=[no_commas]"])
    pool = load_prompt_sets(one.data, iterations=1, seed=0).pools[0]
    assert len(pool) == len(set(map(str, pool))) == 440
    for bad in ("[keyword,keyword]", "[]", "[uppercase]"):
        with pytest.raises(ConfigError, match="data.ifeval_kinds"):
            load_config(None, [f"data.ifeval_kinds={bad}"])
