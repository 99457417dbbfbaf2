"""The judge stage's pure parts: select_pairs (every strategy, max_min included), pair_rows
(labels, drops, fields) and read_generations; and learn.complete_checkpoints."""

from collections import Counter

import pytest

from inpo.data import DataError
from inpo.errors import InpoError
from inpo.judging.oracle import Oracle
from inpo.judging.stage import describe_dropped, pair_rows, select_pairs
from inpo.judging.synthetic import ScorePreference
from inpo.rows import read_generations


class ByLength(ScorePreference):
    """A transitive judge with scores: longer wins, P = sigmoid(len(a) - len(b))."""

    def __init__(self):
        super().__init__(lambda s: float(len(s)), 1.0)
        self.calls = []

    def prob(self, prompts, a, b):
        self.calls.append(len(prompts))
        return super().prob(prompts, a, b)


def rows(*responses_per_prompt):
    return [
        {
            "prompt_id": i,
            "prompt": f"q{i}",
            "responses": list(r),
            "finish_reasons": ["stop"] * (len(r) - 1) + ["length"],
            "prompt_ids": [1, 2],
            "response_ids": [[10 + j] * len(x) for j, x in enumerate(r)],
        }
        for i, r in enumerate(responses_per_prompt)
    ]


def test_max_min_takes_the_extremes_and_asks_the_oracle_once():
    oracle = ByLength()
    data = rows(["aa", "a", "aaaa", "aaa"], ["x", "y"])
    sel = select_pairs(data, oracle, "max_min", seed=0)
    (pair,) = sel[0].pairs
    assert (pair.first, pair.second) == (2, 1)
    assert pair.p == pytest.approx(
        ScorePreference(lambda s: float(len(s)), 1.0).prob(["q0"], ["aaaa"], ["a"])[0]
    )
    assert sel[1].pairs == () and sel[1].dropped == "equal rewards"
    assert oracle.calls == [1]  # only the kept prompt's final match is judged


def test_max_min_needs_scores():
    class NoScores(Oracle):
        def prob(self, prompts, a, b):
            return [0.5] * len(a)

    with pytest.raises(InpoError, match="max_min needs pointwise scores"):
        select_pairs(rows(["a", "b"]), NoScores(), "max_min", seed=0)


def test_pair_rows_labels_and_keeps_the_token_ids_and_finish_reasons():
    data = rows(["aaaa", "a", "aa", "aaa"])
    sel = select_pairs(data, ByLength(), "disjoint", seed=3)
    soft, dropped = pair_rows(data, sel, "soft", seed=3)
    assert len(soft) == 2 and not dropped
    for p in soft:
        assert len(p["chosen"]) > len(p["rejected"])  # oriented by the oracle
        assert p["p_label"] == p["p_chosen"] > 0.5
        i = data[0]["responses"].index(p["chosen"])
        assert p["chosen_ids"] == data[0]["response_ids"][i]
        assert p["chosen_finish_reason"] == data[0]["finish_reasons"][i]
        assert p["n_comparisons"] == 2
    hard, _ = pair_rows(data, sel, "hard", seed=3)
    assert [p["p_label"] for p in hard] == [1.0, 1.0]
    assert [p["chosen"] for p in hard] == [p["chosen"] for p in soft]


def test_pair_rows_drops_ties_for_hard_labels_and_identical_texts_always():
    data = rows(["same", "same"], ["ab", "cd"])
    sel = select_pairs(data, ByLength(), "random", seed=0)
    pairs, dropped = pair_rows(data, sel, "hard", seed=0)
    assert pairs == [] and dropped == Counter({"tie": 2})  # identical texts tie too
    pairs, dropped = pair_rows(data, sel, "soft", seed=0)
    assert len(pairs) == 1 and pairs[0]["p_label"] == 0.5  # a tie trains toward h = 0
    assert dropped == Counter({"identical responses": 1})
    assert describe_dropped(2, 1, dropped) == (
        "kept 1 pairs from 2 prompts; dropped: 1 identical responses"
    )


def test_sampled_labels_are_seeded_per_prompt():
    data = rows(*[["aaa", "aa"]] * 40)
    sel = select_pairs(data, ByLength(), "random", seed=0)
    a, _ = pair_rows(data, sel, "sample", seed=0)
    b, _ = pair_rows(data, sel, "sample", seed=0)
    c, _ = pair_rows(data, sel, "sample", seed=1)
    assert a == b and a != c
    wins = sum(p["chosen"] == "aaa" for p in a) / len(a)
    assert 0.5 < wins < 0.95  # P(aaa > aa) = sigmoid(1) = 0.73
    assert all(p["p_label"] == 1.0 for p in a)
    # each response keeps its own win rate whichever side the draw put it on
    for p in a:
        longer = p["chosen"] == "aaa"
        assert p["chosen_p_win"] == pytest.approx(0.731 if longer else 0.269, abs=1e-3)
        assert p["chosen_p_win"] + p["rejected_p_win"] == pytest.approx(1.0)


def test_pair_rows_carry_each_responses_win_rate_through_a_resumed_judge(tmp_path):
    from inpo.config import InpoConfig
    from inpo.judging.stage import select_in_chunks

    data = rows(["aaaa", "a", "aa", "aaa"], ["bb", "b", "bbb"])
    cfg = InpoConfig.model_validate({"pairing": {"strategy": "round_robin"}})
    sel, kept = select_in_chunks(data, ByLength(), cfg, tmp_path / "part.jsonl", "judge")
    again, kept_again = select_in_chunks(data, ByLength(), cfg, tmp_path / "part.jsonl", "j")
    assert (kept, kept_again) == (0, 2) and again == sel  # read back from the partial file
    (best,), _ = pair_rows(data[:1], sel[:1], "soft", seed=0)
    assert (best["chosen"], best["rejected"]) == ("aaaa", "a")
    sigmoid = ByLength().prob
    expected = sum(sigmoid(["q"] * 3, ["aaaa"] * 3, ["a", "aa", "aaa"])) / 3
    assert best["chosen_p_win"] == pytest.approx(expected)


def test_read_generations_names_the_bad_row(tmp_path):
    f = tmp_path / "g.jsonl"
    f.write_text('{"prompt_id": 0, "prompt": "p", "responses": ["a", "b"]}\n{"prompt_id": 1}\n')
    with pytest.raises(DataError, match=r"g.jsonl: row 2: field 'prompt': missing"):
        read_generations(f)
    f.write_text('{"prompt_id": 0, "prompt": "p", "responses": ["a"]}\n')
    with pytest.raises(DataError, match="need a list of >= 2 strings"):
        read_generations(f)
    f.write_text('{"prompt_id": 0, "prompt": "p", "responses": ["a", "b"], "logps": [0.1]}\n')
    with pytest.raises(DataError, match=r"row 1: field 'logps': need a list of 2 \(one per"):
        read_generations(f)


def test_complete_checkpoints_ignores_unfinished_ones(tmp_path):
    from inpo.learning.stage import complete_checkpoints

    for name in ("step_000004", "step_000012", "step_000008", "step_000016.tmp", "inputs.json"):
        (tmp_path / name).mkdir() if not name.endswith(".json") else (tmp_path / name).touch()
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [4, 8, 12]
    assert complete_checkpoints(tmp_path / "missing") == []
