import random

import pytest

from inpo.pairing import (
    PairResult,
    make_strategy,
    max_min,
    random_pair,
    round_robin,
    run_pairwise,
    tournament,
)


def play(strategy, pref):
    """Run one strategy with P(i > j) = pref(i, j); returns (result, number of judge calls)."""
    calls = []

    def judge(queries):
        calls.append(len(queries))
        return [pref(i, j) for _, (i, j) in queries]

    (result,) = run_pairwise([strategy], judge)
    return result, calls


def by_rank(ranks):
    return lambda i, j: 1.0 if ranks[i] > ranks[j] else 0.0 if ranks[i] < ranks[j] else 0.5


@pytest.mark.parametrize("k,expected", [(2, 2), (4, 5), (8, 11), (16, 23)])
def test_tournament_uses_3k_over_2_minus_1_comparisons(k, expected):
    rng = random.Random(k)
    ranks = rng.sample(range(k), k)
    result, calls = play(tournament(k), by_rank(ranks))
    assert result.n_comparisons == expected == 3 * k // 2 - 1
    assert sum(calls) == expected


def test_tournament_k8_plays_in_four_batched_rounds_for_any_number_of_prompts():
    rng = random.Random(0)
    prefs = [rng.sample(range(8), 8) for _ in range(5)]
    calls = []

    def judge(queries):
        calls.append(len(queries))
        return [by_rank(prefs[p])(i, j) for p, (i, j) in queries]

    results = run_pairwise([tournament(8) for _ in prefs], judge)
    assert calls == [20, 20, 10, 5]  # 4 first-round, 2+2, 1+1, final; x5 prompts
    for ranks, r in zip(prefs, results, strict=True):
        assert r.chosen == ranks.index(7) and r.rejected == ranks.index(0)  # total order


def test_a_response_that_beats_every_other_is_always_chosen():
    rng = random.Random(1)
    for trial in range(300):
        k = rng.choice([2, 3, 4, 5, 6, 8, 12, 16])
        star = rng.randrange(k)
        table = {}
        for i in range(k):
            for j in range(i + 1, k):
                p = rng.random()
                table[i, j], table[j, i] = p, 1 - p
        for x in range(k):
            if x != star:
                p = rng.uniform(0.51, 1.0)
                table[star, x], table[x, star] = p, 1 - p
        result, _ = play(tournament(k), lambda i, j, t=table: t[i, j])
        assert result.chosen == star and result.dropped is None, trial


def test_ties_go_to_the_first_response():
    result, _ = play(tournament(8), lambda i, j: 0.5)
    assert (result.chosen, result.rejected, result.p_chosen) == (0, 7, 0.5)
    result, _ = play(random_pair(8, random.Random(3)), lambda i, j: 0.5)
    first = random.Random(3).sample(range(8), 2)[0]
    assert result.chosen == first


def test_final_check_can_drop_the_pair():
    # 0 beats 1, 2 beats 3; winners 0 vs 2 -> 0; losers 1 vs 3 -> 3 loses. Final: 3 beats 0.
    table = {(0, 1): 1.0, (2, 3): 1.0, (0, 2): 1.0, (1, 3): 1.0, (0, 3): 0.0}
    result, _ = play(tournament(4), lambda i, j: table[i, j])
    assert result.chosen is None and result.dropped == "final check lost"
    assert result.n_comparisons == 5


def test_odd_k_gives_byes():
    result, calls = play(tournament(5), by_rank([0, 1, 2, 3, 4]))
    assert (result.chosen, result.rejected) == (4, 0)
    assert len(calls) >= 3


def test_round_robin():
    ranks = [2, 0, 3, 1]
    result, calls = play(round_robin(4), by_rank(ranks))
    assert calls == [6]
    assert (result.chosen, result.rejected, result.p_chosen) == (2, 1, 1.0)
    result, _ = play(round_robin(4), lambda i, j: 0.5)
    assert result.dropped == "all responses tied"
    # rock-paper-scissors: every response wins once, nobody is best
    rps = {(0, 1): 0.0, (1, 2): 0.0, (0, 2): 1.0}
    result, _ = play(round_robin(3), lambda i, j: rps[i, j])
    assert result.dropped == "all responses tied"


def test_random_pair_orders_by_the_oracle():
    result, calls = play(random_pair(8, random.Random(0)), by_rank(list(range(8))))
    assert calls == [1] and result.chosen > result.rejected and result.p_chosen == 1.0


def test_max_min():
    assert max_min([0.1, 0.9, -2.0, 0.9]) == PairResult(1, 2, None, 0)
    assert max_min([1.0, 1.0]).dropped == "equal rewards"


def test_make_strategy_rejects_unknown():
    with pytest.raises(ValueError, match="max_min"):
        make_strategy("max_min", 4, random.Random(0))
