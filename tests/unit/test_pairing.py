import random

import pytest

from inpo.judging.pairing import (
    Labelled,
    Pair,
    disjoint_pairs,
    label_pair,
    make_strategy,
    max_min,
    random_pair,
    round_robin,
    run_pairwise,
    tournament,
)


def play(strategy, pref):
    """Run one strategy with P(i > j) = pref(i, j); returns (selection, judge call sizes)."""
    calls = []

    def judge(queries):
        calls.append(len(queries))
        return [pref(i, j) for _, (i, j) in queries]

    (result,) = run_pairwise([strategy], judge)
    return result, calls


def by_rank(ranks):
    return lambda i, j: 1.0 if ranks[i] > ranks[j] else 0.0 if ranks[i] < ranks[j] else 0.5


def only(selection) -> Pair:
    (pair,) = selection.pairs
    return pair


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
        assert (only(r).first, only(r).second) == (ranks.index(7), ranks.index(0))


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
        assert only(result).first == star and result.dropped is None, trial


def test_a_tied_final_gives_no_pair():
    # Every match ties: brackets go to the first response, the final 0 vs 7 ties too.
    result, _ = play(tournament(8), lambda i, j: 0.5)
    assert result.pairs == () and result.dropped == "final check tied"


def test_final_check_can_drop_the_pair():
    # 0 beats 1, 2 beats 3; winners 0 vs 2 -> 0; losers 1 vs 3 -> 3 loses. Final: 3 beats 0.
    table = {(0, 1): 1.0, (2, 3): 1.0, (0, 2): 1.0, (1, 3): 1.0, (0, 3): 0.0}
    result, _ = play(tournament(4), lambda i, j: table[i, j])
    assert result.pairs == () and result.dropped == "final check lost"
    assert result.n_comparisons == 5


def test_odd_k_gives_byes():
    result, calls = play(tournament(5), by_rank([0, 1, 2, 3, 4]))
    assert (only(result).first, only(result).second) == (4, 0)
    assert len(calls) >= 3


def test_round_robin():
    ranks = [2, 0, 3, 1]
    result, calls = play(round_robin(4), by_rank(ranks))
    assert calls == [6]
    assert only(result) == Pair(2, 1, 1.0)
    result, _ = play(round_robin(4), lambda i, j: 0.5)
    assert result.dropped == "all responses tied"
    # rock-paper-scissors: every response wins once, nobody is best
    rps = {(0, 1): 0.0, (1, 2): 0.0, (0, 2): 1.0}
    result, _ = play(round_robin(3), lambda i, j: rps[i, j])
    assert result.dropped == "all responses tied"


def test_random_pair_is_one_seeded_match_and_keeps_the_oracles_p():
    result, calls = play(random_pair(8, random.Random(0)), lambda i, j: 0.3)
    a, b = random.Random(0).sample(range(8), 2)
    assert calls == [1] and only(result) == Pair(a, b, 0.3)


def test_disjoint_pairs_use_every_response_once():
    result, calls = play(disjoint_pairs(8, random.Random(5)), lambda i, j: 0.7)
    assert calls == [4] and result.n_comparisons == 4 and len(result.pairs) == 4
    used = [x for p in result.pairs for x in (p.first, p.second)]
    assert sorted(used) == list(range(8))
    assert all(p.p == 0.7 for p in result.pairs)
    again, _ = play(disjoint_pairs(8, random.Random(5)), lambda i, j: 0.7)
    assert again == result  # seeded
    odd, _ = play(disjoint_pairs(5, random.Random(1)), lambda i, j: 0.5)
    assert len(odd.pairs) == 2  # one response sits out


def test_max_min():
    assert max_min([0.1, 0.9, -2.0, 0.9]) == (1, 2)
    assert max_min([1.0, 1.0]) is None


def test_make_strategy_rejects_unknown():
    with pytest.raises(ValueError, match="max_min"):
        make_strategy("max_min", 4, random.Random(0))


def test_hard_label_orients_by_the_oracle_and_drops_ties():
    rng = random.Random(0)
    assert label_pair(Pair(3, 5, 0.9), "hard", rng) == Labelled(3, 5, 0.9, 1.0)
    assert label_pair(Pair(3, 5, 0.2), "hard", rng) == Labelled(5, 3, 0.8, 1.0)
    assert label_pair(Pair(3, 5, 0.5), "hard", rng) == "tie"


def test_soft_label_keeps_p_and_ties():
    rng = random.Random(0)
    assert label_pair(Pair(3, 5, 0.9), "soft", rng) == Labelled(3, 5, 0.9, 0.9)
    assert label_pair(Pair(3, 5, 0.25), "soft", rng) == Labelled(5, 3, 0.75, 0.75)
    assert label_pair(Pair(3, 5, 0.5), "soft", rng) == Labelled(3, 5, 0.5, 0.5)


def test_sampled_label_wins_with_the_oracles_probability():
    rng = random.Random(7)
    draws = [label_pair(Pair(0, 1, 0.8), "sample", rng) for _ in range(20_000)]
    wins = sum(d.chosen == 0 for d in draws) / len(draws)
    assert wins == pytest.approx(0.8, abs=0.01)  # 4.5 standard errors
    for d in draws:
        assert d.p_label == 1.0
        assert d.p_chosen == (0.8 if d.chosen == 0 else pytest.approx(0.2))
    # the same seed draws the same winners (a redone judge stage)
    again = [label_pair(Pair(0, 1, 0.8), "sample", random.Random(7)) for _ in range(1)]
    assert again[0] == draws[0]


def test_unknown_label():
    with pytest.raises(ValueError, match="pairing.label"):
        label_pair(Pair(0, 1, 0.7), "fuzzy", random.Random(0))


def test_round_robin_win_rates_are_leave_one_out_means():
    pref = {(0, 1): 0.9, (0, 2): 0.6, (1, 2): 0.2}
    sel, _ = play(round_robin(3), lambda i, j: pref[i, j])
    # response 0: mean(0.9, 0.6); 1: mean(0.1, 0.2); 2: mean(0.4, 0.8); no self-match
    assert sel.p_win == pytest.approx((0.75, 0.15, 0.6))
    assert only(sel) == Pair(0, 1, 0.9)


def test_one_opponent_strategies_rate_each_side_by_its_one_match():
    sel, _ = play(random_pair(4, random.Random(1)), lambda i, j: 0.7)
    a, b = only(sel).first, only(sel).second
    assert sel.p_win[a] == 0.7 and sel.p_win[b] == pytest.approx(0.3)
    assert sum(x is None for x in sel.p_win) == 2
    sel, _ = play(disjoint_pairs(4, random.Random(2)), lambda i, j: 0.8)
    for pair in sel.pairs:
        assert (sel.p_win[pair.first], sel.p_win[pair.second]) == pytest.approx((0.8, 0.2))


def test_tournament_rates_every_response_over_the_matches_it_played():
    ranks = [3, 0, 2, 1]  # response 0 best, 1 worst
    sel, _ = play(tournament(4), by_rank(ranks))
    assert only(sel) == Pair(0, 1, 1.0)
    # 0 beat 1 (round 1), 2 (winners' final) and 1 (final check): 1.0; 1 lost all three;
    # 2 beat 3, lost to 0: 0.5; 3 lost to 2, beat 1 (losers' final): 0.5
    assert sel.p_win == pytest.approx((1.0, 0.0, 0.5, 0.5))
