"""The exact class-level INPO game (inpo.algo.game): matrices, shares, the mirror-descent step,
the regularized Nash policy and the game oracle. Expected values are computed here by hand
or with plain Python math, not with the functions under test."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from inpo.algo.game import (
    check_matrix,
    class_shares,
    class_shares_from_token_probs,
    cyclic_matrix,
    exploitability,
    fixed_point_residual,
    inpo_step,
    inpo_token_step,
    inpo_trajectory,
    nash_equilibrium,
    regularized_nash,
    response_class,
    token_class_shares,
    tv,
)
from inpo.judging.oracle import Oracle
from inpo.judging.synthetic import GameOracle

REF = [0.6, 0.3, 0.1]
UNIFORM3 = [1 / 3, 1 / 3, 1 / 3]


def random_matrix(n: int, rng: random.Random) -> list[list[float]]:
    m = [[0.5] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            m[i][j] = rng.random()
            m[j][i] = 1.0 - m[i][j]
    return m


def kl(p, q) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


# --- matrices -----------------------------------------------------------------------


def test_cyclic_matrix_three_classes():
    # class i+1 beats class i: paper (1) beats rock (0), scissors (2) paper, rock scissors
    expected = [[0.5, 0.1, 0.9], [0.9, 0.5, 0.1], [0.1, 0.9, 0.5]]
    assert cyclic_matrix(3, 0.9) == pytest.approx(np.array(expected), abs=1e-15)
    rps = cyclic_matrix(3, 1.0)
    assert rps[1][0] == 1.0 and rps[2][1] == 1.0 and rps[0][2] == 1.0
    assert rps[0][1] == 0.0 and rps[1][2] == 0.0 and rps[2][0] == 0.0


def test_cyclic_matrix_five_classes():
    # each class beats the two before it (mod 5) and loses to the two after it
    expected = [
        [0.5, 0.2, 0.2, 0.8, 0.8],
        [0.8, 0.5, 0.2, 0.2, 0.8],
        [0.8, 0.8, 0.5, 0.2, 0.2],
        [0.2, 0.8, 0.8, 0.5, 0.2],
        [0.2, 0.2, 0.8, 0.8, 0.5],
    ]
    assert cyclic_matrix(5, 0.8) == pytest.approx(np.array(expected), abs=1e-15)


@pytest.mark.parametrize("n, win", [(4, 0.9), (2, 1.0), (0, 0.9), (3, 0.4), (3, 1.1)])
def test_cyclic_matrix_rejects(n, win):
    with pytest.raises(ValueError):
        cyclic_matrix(n, win)


def test_check_matrix_accepts_and_returns_array():
    m = check_matrix([[0.5, 0.3], [0.7, 0.5]])
    assert isinstance(m, np.ndarray) and m.shape == (2, 2)


@pytest.mark.parametrize(
    "m, needle",
    [
        ([[0.5, 0.5, 0.5]], "shape"),
        ([[0.5, 1.2], [-0.2, 0.5]], "M[0][1]"),
        ([[0.5, 0.3], [0.6, 0.5]], "M[0][1]"),
        ([[0.5, 0.3], [0.7, 0.4]], "M[1][1]"),
        ([[0.5, float("nan")], [0.5, 0.5]], "M[0][1]"),
    ],
)
def test_check_matrix_names_the_offending_entry(m, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        check_matrix(m)


# --- classes and shares -------------------------------------------------------------


def test_response_class_is_first_character_mod_n():
    assert response_class("", 3) == 0
    assert response_class("apple", 3) == 97 % 3 == 1
    assert response_class(" apple", 3) == 32 % 3 == 2  # leading space counts
    assert response_class("b", 5) == 98 % 5


def test_class_shares_counts():
    # classes mod 3: "a" -> 1, "b" -> 2, "c" -> 0, "" -> 0
    shares = class_shares(["a", "abc", "b", "c", ""], 3)
    assert shares.tolist() == pytest.approx([0.4, 0.4, 0.2])
    with pytest.raises(ValueError):
        class_shares([], 3)


def test_class_shares_from_token_probs():
    probs = {"a": 0.5, "b": 0.2, "c": 0.1, "": 0.2}
    assert class_shares_from_token_probs(probs, 3).tolist() == pytest.approx([0.3, 0.5, 0.2])
    # pairs keep two tokens with the same text apart; a truncated distribution is normalised
    pairs = [("a", 0.2), ("a", 0.2), ("b", 0.1)]
    assert class_shares_from_token_probs(pairs, 3).tolist() == pytest.approx([0.0, 0.8, 0.2])
    with pytest.raises(ValueError):
        class_shares_from_token_probs({"a": -0.1, "b": 1.1}, 3)
    with pytest.raises(ValueError):
        class_shares_from_token_probs({"a": 0.0}, 3)


# --- the INPO step ------------------------------------------------------------------


def test_inpo_step_matches_hand_computation():
    m = [[0.5, 0.2, 0.7], [0.8, 0.5, 0.4], [0.3, 0.6, 0.5]]
    pi_t, pi_ref, eta, tau = [0.5, 0.3, 0.2], [0.2, 0.5, 0.3], 0.8, 0.2
    # P(y > pi_t) by hand: row y of M dotted with pi_t
    wins = [0.25 + 0.06 + 0.14, 0.40 + 0.15 + 0.08, 0.15 + 0.18 + 0.10]  # .45, .63, .43
    a = tau / eta
    un = [pi_t[y] ** (1 - a) * pi_ref[y] ** a * math.exp(wins[y] / eta) for y in range(3)]
    expected = [u / sum(un) for u in un]
    got = inpo_step(pi_t, pi_ref, m, eta, tau)
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    # a transposed M (using P(pi_t > y)) would move the other way: class 1 must gain most
    assert got[1] / pi_t[1] > got[0] / pi_t[0] and got[1] / pi_t[1] > got[2] / pi_t[2]


def test_inpo_step_on_cyclic_game_by_hand():
    pi_t, eta, tau = [0.5, 0.3, 0.2], 1.0, 1 / 3
    # w = 0.9: P(0 > pi) = .5*.5 + .1*.3 + .9*.2 etc.
    wins = [0.25 + 0.03 + 0.18, 0.45 + 0.15 + 0.02, 0.05 + 0.27 + 0.10]
    un = [pi_t[y] ** (2 / 3) * REF[y] ** (1 / 3) * math.exp(wins[y] / eta) for y in range(3)]
    got = inpo_step(pi_t, REF, cyclic_matrix(3, 0.9), eta, tau)
    assert got.tolist() == pytest.approx([u / sum(un) for u in un], abs=1e-12)


@pytest.mark.parametrize("eta", [0.005, 0.1, 1.0, 10.0])
def test_uniform_is_a_fixed_point_of_rps_without_regularization(eta):
    got = inpo_step(UNIFORM3, REF, cyclic_matrix(3, 1.0), eta, 0.0)
    assert got.tolist() == pytest.approx(UNIFORM3, abs=1e-14)  # pi_ref plays no part at tau=0


def test_class_level_step_equals_response_level_step_along_inpo():
    # 7 responses in 3 classes, P depends on classes only. Starting from pi_ref, every
    # iterate is pi_ref times a per-class factor, so stepping every response and summing by
    # class equals stepping the class shares, at every iteration.
    rng = random.Random(1)
    m = random_matrix(3, rng)
    classes = [0, 0, 1, 2, 2, 2, 1]
    ref = [rng.random() for _ in classes]
    ref = [x / sum(ref) for x in ref]
    big = [[m[a][b] for b in classes] for a in classes]
    eta, tau = 0.7, 0.2

    def shares(p):
        return [sum(x for x, c in zip(p, classes, strict=True) if c == k) for k in range(3)]

    fine, coarse = ref, shares(ref)
    for _ in range(5):
        fine = inpo_step(fine, ref, big, eta, tau)
        coarse = inpo_step(coarse, shares(ref), m, eta, tau)
        assert shares(fine) == pytest.approx(coarse.tolist(), abs=1e-12)


def test_class_level_step_needs_a_class_constant_ratio_to_ref():
    # With tau > 0 the geometric mixture pi_t^(1-tau/eta) pi_ref^(tau/eta) does not factor
    # through class shares when pi_t / pi_ref varies within a class (so the class-level
    # dynamics describes a policy only while that ratio is constant within classes).
    m = cyclic_matrix(3, 0.9).tolist()
    classes = [0, 0, 1, 2]
    big = [[m[a][b] for b in classes] for a in classes]
    pi, ref = [0.45, 0.05, 0.3, 0.2], [0.05, 0.45, 0.3, 0.2]  # same class shares
    fine = inpo_step(pi, ref, big, 1.0, 0.5)
    coarse = inpo_step([0.5, 0.3, 0.2], [0.5, 0.3, 0.2], m, 1.0, 0.5)
    assert abs((fine[0] + fine[1]) - coarse[0]) > 0.05
    # at tau = 0 the step only multiplies by exp(P(y > pi_t) / eta): it always factors
    fine = inpo_step(pi, ref, big, 1.0, 0.0)
    coarse = inpo_step([0.5, 0.3, 0.2], [0.5, 0.3, 0.2], m, 1.0, 0.0)
    assert fine[0] + fine[1] == pytest.approx(coarse[0], abs=1e-12)


def test_inpo_step_is_stable_for_small_eta():
    got = inpo_step([0.5, 0.3, 0.2], REF, cyclic_matrix(3, 1.0), 0.005, 0.001)
    assert np.all(np.isfinite(got)) and got.sum() == pytest.approx(1.0)
    # exp(P(y > pi)/eta) dominates: class 1 (beats the 0.5 on class 0) takes almost all
    assert got[1] > 1 - 1e-10


def test_inpo_step_keeps_zeros():
    m = cyclic_matrix(3, 0.9)
    assert inpo_step([0.0, 0.5, 0.5], UNIFORM3, m, 1.0, 0.3)[0] == 0.0
    assert inpo_step(UNIFORM3, [0.0, 0.5, 0.5], m, 1.0, 0.3)[0] == 0.0
    assert inpo_step(UNIFORM3, [0.0, 0.5, 0.5], m, 1.0, 0.0)[0] > 0.0  # tau = 0 ignores ref


@pytest.mark.parametrize(
    "pi, eta, tau",
    [
        ([0.5, 0.5, 0.0], 1.0, 1.0),
        ([0.5, 0.5, 0.0], 1.0, -0.1),
        ([0.5, 0.5, 0.0], 0.0, 0.0),
        ([0.5, 0.6, 0.0], 1.0, 0.1),
        ([0.5, 0.5], 1.0, 0.1),
        ([1.5, -0.5, 0.0], 1.0, 0.1),
    ],
)
def test_inpo_step_rejects(pi, eta, tau):
    with pytest.raises(ValueError):
        inpo_step(pi, UNIFORM3, cyclic_matrix(3, 0.9), eta, tau)


def test_token_class_shares():
    probs = [0.1, 0.2, 0.3, 0.4]
    assert token_class_shares(probs, [0, 0, 2, 1], 3).tolist() == pytest.approx([0.3, 0.4, 0.3])
    rows = token_class_shares([probs, [0.0, 0.0, 0.5, 0.5]], [0, 0, 2, 1], 3)
    assert rows == pytest.approx(np.array([[0.3, 0.4, 0.3], [0.0, 0.5, 0.5]]))
    with pytest.raises(ValueError):
        token_class_shares(probs, [0, 0, 3, 1], 3)
    with pytest.raises(ValueError):
        token_class_shares(probs, [0, 0, 1], 3)


def test_inpo_token_step_matches_hand_computation():
    # 4 tokens in classes 0, 0, 1, 2 with a ratio to pi_ref that varies within class 0
    pi_t, ref, classes = [0.2, 0.3, 0.4, 0.1], [0.25, 0.25, 0.25, 0.25], [0, 0, 1, 2]
    eta, tau = 1.0, 0.5
    # class shares of pi_t: .5, .4, .1; P(c > pi_t) = row c of the 0.9 cycle dotted with them
    wins = [0.25 + 0.04 + 0.09, 0.45 + 0.20 + 0.01, 0.05 + 0.36 + 0.05]  # .38, .66, .46
    un = [math.sqrt(pi_t[y] * ref[y]) * math.exp(wins[c] / eta) for y, c in enumerate(classes)]
    expected = [u / sum(un) for u in un]
    got = inpo_token_step(pi_t, ref, classes, cyclic_matrix(3, 0.9), eta, tau)
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    # one row per prompt: each row is stepped on its own
    rows = inpo_token_step([pi_t, ref], [ref, ref], classes, cyclic_matrix(3, 0.9), eta, tau)
    assert rows[0].tolist() == pytest.approx(expected, abs=1e-12)
    assert rows[1].tolist() == pytest.approx(
        inpo_token_step(ref, ref, classes, cyclic_matrix(3, 0.9), eta, tau).tolist(), abs=1e-15
    )


def test_inpo_token_step_is_the_response_level_step():
    # the same step as inpo_step over tokens with the class matrix expanded to tokens, and
    # its class shares differ from the class-level step when the ratio to pi_ref varies
    rng = random.Random(3)
    m = random_matrix(3, rng)
    classes = [0, 2, 1, 0, 2, 2, 1]
    big = [[m[a][b] for b in classes] for a in classes]
    pi, ref = ([rng.random() for _ in classes] for _ in range(2))
    pi, ref = [x / sum(pi) for x in pi], [x / sum(ref) for x in ref]
    got = inpo_token_step(pi, ref, classes, m, 0.6, 0.25)
    assert got.tolist() == pytest.approx(inpo_step(pi, ref, big, 0.6, 0.25).tolist(), abs=1e-12)
    coarse = inpo_step(
        token_class_shares(pi, classes, 3), token_class_shares(ref, classes, 3), m, 0.6, 0.25
    )
    assert tv(token_class_shares(got, classes, 3), coarse) > 1e-3


def test_inpo_token_step_keeps_zeros_and_rejects():
    m, classes = cyclic_matrix(3, 0.9), [0, 1, 2, 2]
    assert inpo_token_step([0.0, 0.5, 0.3, 0.2], [0.25] * 4, classes, m, 1.0, 0.3)[0] == 0.0
    assert inpo_token_step([0.25] * 4, [0.0, 0.5, 0.3, 0.2], classes, m, 1.0, 0.3)[0] == 0.0
    assert inpo_token_step([0.25] * 4, [0.0, 0.5, 0.3, 0.2], classes, m, 1.0, 0.0)[0] > 0.0
    for pi, ref, eta, tau in [
        ([0.25] * 4, [0.25] * 4, 1.0, 1.0),  # tau >= eta
        ([0.25] * 4, [0.25] * 4, 0.0, 0.0),  # eta = 0
        ([0.3] * 4, [0.25] * 4, 1.0, 0.1),  # does not sum to 1
        ([0.25] * 4, [0.5, 0.5], 1.0, 0.1),  # shapes differ
        ([0.5, 0.5, 0.5, -0.5], [0.25] * 4, 1.0, 0.1),  # negative
    ]:
        with pytest.raises(ValueError):
            inpo_token_step(pi, ref, classes, m, eta, tau)


# --- regularized Nash ---------------------------------------------------------------


@pytest.mark.parametrize("w", [0.9, 1.0])
@pytest.mark.parametrize("tau", [0.05, 0.1, 1 / 3, 1.0, 5.0])
def test_regularized_nash_is_the_fixed_point(w, tau):
    m = cyclic_matrix(3, w).tolist()
    pi = regularized_nash(REF, m, tau).tolist()
    assert sum(pi) == pytest.approx(1.0, abs=1e-14)
    un = [REF[y] * math.exp(sum(m[y][j] * pi[j] for j in range(3)) / tau) for y in range(3)]
    assert max(abs(pi[y] - un[y] / sum(un)) for y in range(3)) < 1e-9
    assert fixed_point_residual(pi, REF, m, tau) < 1e-9
    # non-trivial: pi* is neither pi_ref nor uniform
    assert tv(pi, REF) > 0.01 and tv(pi, UNIFORM3) > 0.001


def test_regularized_nash_best_responds_to_itself():
    # pi* maximises P(pi > pi*) - tau KL(pi || pi_ref): the symmetric equilibrium
    m, tau = cyclic_matrix(3, 0.9), 0.2
    star = regularized_nash(REF, m, tau)

    def value(p):
        return float(np.asarray(p) @ m @ star) - tau * kl(p, REF)

    rng = random.Random(0)
    for _ in range(200):
        x = [rng.random() for _ in range(3)]
        p = [0.9 * s + 0.1 * v / sum(x) for s, v in zip(star, x, strict=True)]
        assert value(p) <= value(star) + 1e-12


def test_regularized_nash_on_random_games():
    rng = random.Random(3)
    for _ in range(50):
        n = rng.randint(2, 6)
        m = random_matrix(n, rng)
        ref = [rng.random() + 0.01 for _ in range(n)]
        ref = [x / sum(ref) for x in ref]
        tau = 10 ** rng.uniform(-2, 0.5)
        pi = regularized_nash(ref, m, tau)
        assert fixed_point_residual(pi, ref, m, tau) * tau < 1e-10


def test_regularized_nash_limits_and_support():
    m = cyclic_matrix(3, 0.9)
    assert tv(regularized_nash(REF, m, 1e3), REF) < 1e-3  # strong pull: pi_ref
    assert tv(regularized_nash(REF, m, 1e-3), UNIFORM3) < 5e-3  # weak pull: the Nash
    star = regularized_nash([0.5, 0.5, 0.0], m, 0.1)
    assert star[2] == 0.0 and star.sum() == pytest.approx(1.0)
    # on {0, 1} class 1 beats class 0 with 0.9: pi* = ref * exp(M pi / tau) restricted
    p1 = star[1]
    assert p1 / star[0] == pytest.approx(
        math.exp((0.9 * star[0] + 0.5 * p1 - 0.5 * star[0] - 0.1 * p1) / 0.1)
    )


def test_tau_zero_gives_the_nash_equilibrium():
    assert regularized_nash(REF, cyclic_matrix(3, 0.9), 0.0).tolist() == pytest.approx(UNIFORM3)
    assert nash_equilibrium(cyclic_matrix(5, 0.7)).tolist() == pytest.approx([0.2] * 5)
    transitive = [[0.5, 0.6, 0.9], [0.4, 0.5, 0.8], [0.1, 0.2, 0.5]]
    assert nash_equilibrium(transitive).tolist() == pytest.approx([1.0, 0.0, 0.0])
    # weighted rps: A = M - 1/2 has entries a=.1 (1 beats 0), b=.3 (2 beats 1), c=.4
    # (0 beats 2); A x = 0 gives x ∝ (b, c, a)
    m = [[0.5, 0.4, 0.9], [0.6, 0.5, 0.2], [0.1, 0.8, 0.5]]
    assert nash_equilibrium(m).tolist() == pytest.approx([0.375, 0.5, 0.125])
    rng = random.Random(5)
    for _ in range(50):
        m = random_matrix(rng.randint(2, 7), rng)
        assert exploitability(nash_equilibrium(m), m) < 1e-9


# --- dynamics -----------------------------------------------------------------------


@pytest.mark.parametrize("w", [0.9, 1.0])
@pytest.mark.parametrize("eta", [0.5, 1.0, 2.0])
def test_regularized_iterates_converge_to_regularized_nash(w, eta):
    m, tau = cyclic_matrix(3, w), eta / 3
    star = regularized_nash(REF, m, tau)
    traj = inpo_trajectory([0.1, 0.1, 0.8], REF, m, eta, tau, 200)
    assert tv(traj[0], star) > 0.3
    assert tv(traj[-1], star) < 1e-9  # the last iterate, not an average


@pytest.mark.parametrize("w", [0.9, 1.0])
@pytest.mark.parametrize("eta", [0.5, 1.0, 2.0])
def test_unregularized_iterates_do_not_converge(w, eta):
    m = cyclic_matrix(3, w)
    traj = inpo_trajectory(REF, REF, m, eta, 0.0, 200)
    assert min(tv(p, UNIFORM3) for p in traj) > 0.2
    assert min(exploitability(p, m) for p in traj) > 0.1
    # KL(Nash || pi_t) never decreases (Jensen, since the Nash has A x* = 0), so it spirals out
    kls = [kl(UNIFORM3, p) for p in traj]
    assert all(b >= a - 1e-12 for a, b in zip(kls, kls[1:], strict=False))
    assert kls[-1] > kls[0] + 0.1


# --- exploitability, tv -------------------------------------------------------------


def test_exploitability():
    rps = cyclic_matrix(3, 1.0)
    assert exploitability(UNIFORM3, rps) == pytest.approx(0.0, abs=1e-15)
    assert exploitability([1.0, 0.0, 0.0], rps) == pytest.approx(0.5)
    assert exploitability([1.0, 0.0, 0.0], cyclic_matrix(3, 0.9)) == pytest.approx(0.4)
    # best response to (.6, .3, .1) on w=.9 is class 1: .9*.6 + .5*.3 + .1*.1 = .7
    assert exploitability(REF, cyclic_matrix(3, 0.9)) == pytest.approx(0.2)


def test_tv():
    assert tv([0.6, 0.3, 0.1], [0.2, 0.3, 0.5]) == pytest.approx(0.4)
    assert tv(UNIFORM3, UNIFORM3) == 0.0
    with pytest.raises(ValueError):
        tv([0.5, 0.5], UNIFORM3)


# --- oracle -------------------------------------------------------------------------


def test_game_oracle():
    m = cyclic_matrix(3, 0.9)
    oracle = GameOracle(m)
    assert isinstance(oracle, Oracle)
    assert oracle.position_biased is False and not oracle.has_scores
    # classes mod 3: "c" -> 0, "a" -> 1, "b" -> 2, "" -> 0
    a = ["a", "c", "b", "", "apple"]
    b = ["c", "a", "a", "c", "avocado"]
    assert oracle.prob(["p"] * 5, a, b) == pytest.approx([0.9, 0.1, 0.9, 0.5, 0.5])
    with pytest.raises(ValueError):
        oracle.prob(["p"], ["a"], ["b", "c"])
    with pytest.raises(ValueError):
        GameOracle([[0.5, 0.3], [0.3, 0.5]])
