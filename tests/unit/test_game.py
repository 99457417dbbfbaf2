"""The exact class-level INPO game (inpo.algo.game): matrices, shares, the mirror-descent step,
the rest of the Nash family's steps, the regularized Nash policy and the game oracle.
Expected values are computed here by hand or with plain Python math, not with the
functions under test; each family step is also held to a numeric minimization of its own
loss (inpo.algo.loss.objective) over pairs drawn from pi_t."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from inpo.algo.game import (
    bradley_terry_matrix,
    check_matrix,
    class_shares,
    class_shares_from_token_probs,
    comal_reference,
    cyclic_matrix,
    exploitability,
    family_trajectory,
    fixed_point_residual,
    history_mixture,
    inpo_step,
    inpo_token_step,
    kl,
    mnpo_step,
    nash_equilibrium,
    online_dpo_step,
    online_ipo_step,
    pair_offsets,
    regularized_nash,
    response_class,
    sppo_step,
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


def kl_by_hand(p, q) -> float:
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
        return float(np.asarray(p) @ m @ star) - tau * kl_by_hand(p, REF)

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
    traj = family_trajectory("inpo", m, REF, 200, eta, tau, pi_0=[0.1, 0.1, 0.8])
    assert tv(traj[0], star) > 0.3
    assert tv(traj[-1], star) < 1e-9  # the last iterate, not an average


@pytest.mark.parametrize("w", [0.9, 1.0])
@pytest.mark.parametrize("eta", [0.5, 1.0, 2.0])
def test_unregularized_iterates_do_not_converge(w, eta):
    m = cyclic_matrix(3, w)
    traj = family_trajectory("inpo", m, REF, 200, eta, 0.0)
    assert min(tv(p, UNIFORM3) for p in traj) > 0.2
    assert min(exploitability(p, m) for p in traj) > 0.1
    # KL(Nash || pi_t) never decreases (Jensen, since the Nash has A x* = 0), so it spirals out
    kls = [kl_by_hand(UNIFORM3, p) for p in traj]
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


# --- the rest of the Nash family ----------------------------------------------------


def population_minimiser(cfg: dict, pi_t, m, logs: dict) -> np.ndarray:
    """The policy minimizing the expected `inpo.algo.loss.objective` (soft labels) over
    pairs of classes drawn from pi_t x pi_t, found numerically: L-BFGS over softmax
    logits. ``logs`` maps cache names ("ref", "pi_t", "pi_hist1", ...) to class log-probs.
    Same-class pairs are kept: they cost a constant in the pair losses, and carry the
    per-response targets of SPPO."""
    import torch

    from inpo.algo.loss import objective

    n = len(pi_t)
    ci, cj = (g.flatten() for g in torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"))
    s, mat = torch.tensor(pi_t, dtype=torch.float64), torch.tensor(m, dtype=torch.float64)
    cache = {}
    for name, logp in logs.items():
        lp = torch.tensor(logp, dtype=torch.float64)
        cache[f"{name}_chosen"], cache[f"{name}_rejected"] = lp[ci], lp[cj]
    wins = mat @ s
    theta = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [theta],
        max_iter=2000,
        tolerance_grad=1e-14,
        tolerance_change=1e-30,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        lp = torch.log_softmax(theta, 0)
        losses = objective(cfg, lp[ci], lp[cj], cache, mat[ci, cj], (wins[ci], wins[cj]))[0]
        total = (s[ci] * s[cj] * losses).sum()
        total.backward()
        return total

    for _ in range(3):
        opt.step(closure)
    return torch.softmax(theta, 0).detach().numpy()


PI_T = [0.5, 0.3, 0.2]
PI_OLD = [0.2, 0.2, 0.6]


def test_history_mixture():
    assert history_mixture([0.8, 0.2], 1) == [1.0]
    assert history_mixture([0.8, 0.2], 2) == pytest.approx([0.8, 0.2])
    assert history_mixture([0.8, 0.2], 5) == pytest.approx([0.8, 0.2])  # no more than named
    assert history_mixture([3, 1], 2) == pytest.approx([0.75, 0.25])
    assert history_mixture([0.5, 0.3, 0.2], 2) == pytest.approx([0.625, 0.375])
    for weights, available in [([], 1), ([-1.0, 2.0], 2), ([0.0, 1.0], 1), ([1.0], 0)]:
        with pytest.raises(ValueError):
            history_mixture(weights, available)


def test_mnpo_step_matches_hand_computation():
    m = [[0.5, 0.2, 0.7], [0.8, 0.5, 0.4], [0.3, 0.6, 0.5]]
    eta, tau = 0.8, 0.2  # tau/eta = 1/4; weights (3, 1) -> λ = (3/4, 1/4)
    wins = [0.45, 0.63, 0.43]  # P(y > pi_t), as in the INPO hand computation
    un = [
        REF[y] ** 0.25
        * PI_T[y] ** (0.75 * 0.75)
        * PI_OLD[y] ** (0.75 * 0.25)
        * math.exp(wins[y] / eta)
        for y in range(3)
    ]
    got = mnpo_step([PI_T, PI_OLD], REF, m, eta, tau, [3, 1])
    assert got.tolist() == pytest.approx([u / sum(un) for u in un], abs=1e-12)


def test_mnpo_step_with_one_weight_or_only_pi_t_is_inpo_step_exactly():
    m = cyclic_matrix(3, 0.9)
    inpo = inpo_step(PI_T, REF, m, 0.7, 0.2)
    assert np.array_equal(mnpo_step([PI_T, PI_OLD, REF], REF, m, 0.7, 0.2, [1.0]), inpo)
    assert np.array_equal(mnpo_step([PI_T], REF, m, 0.7, 0.2, [0.8, 0.2]), inpo)
    traj = family_trajectory("mnpo", m, REF, 1, 0.7, 0.2, history_weights=[0.8, 0.2])
    assert np.array_equal(traj[1], inpo_step(REF, REF, m, 0.7, 0.2))  # iteration 1: pi_1 only


@pytest.mark.parametrize("weights", [[0.8, 0.2], [1.0, 1.0], [0.2, 0.3, 0.5]])
def test_mnpo_converges_to_the_regularized_nash(weights):
    m, eta, tau = cyclic_matrix(3, 0.9), 1.0, 1 / 3
    star = regularized_nash(REF, m, tau)
    # pi*_tau with every history entry at it is a fixed point ...
    assert mnpo_step([star] * 3, REF, m, eta, tau, weights).tolist() == pytest.approx(
        star.tolist(), abs=1e-12
    )
    # ... and the last iterate gets there
    traj = family_trajectory("mnpo", m, REF, 300, eta, tau, history_weights=weights)
    assert tv(traj[-1], star) < 1e-9


def test_mnpo_step_is_the_minimiser_of_the_mnpo_loss():
    m, eta, tau = cyclic_matrix(3, 0.9), 1.0, 1 / 3
    cfg = {"type": "mnpo", "eta": eta, "tau": tau, "beta": 0.1, "history_weights": [0.7, 0.3]}
    logs = {"ref": np.log(REF), "pi_t": np.log(PI_T), "pi_hist1": np.log(PI_OLD)}
    got = population_minimiser(cfg, PI_T, m, logs)
    want = mnpo_step([PI_T, PI_OLD], REF, m, eta, tau, [0.7, 0.3])
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-7)
    inpo = population_minimiser({**cfg, "type": "inpo"}, PI_T, m, logs)
    assert inpo.tolist() == pytest.approx(inpo_step(PI_T, REF, m, eta, tau).tolist(), abs=1e-7)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_sppo_step_is_the_minimiser_of_the_sppo_loss(eta):
    m = cyclic_matrix(3, 0.9)
    cfg = {"type": "sppo", "eta": eta, "tau": 0.0, "beta": 0.1}
    got = population_minimiser(cfg, PI_T, m, {"pi_t": np.log(PI_T)})
    assert got.tolist() == pytest.approx(sppo_step(PI_T, m, eta).tolist(), abs=1e-7)


def test_sppo_step_against_its_idealised_step():
    """SPPO's loss lands next to INPO's step at tau = 0 (its idealised step), not on it:
    the gap comes from the normaliser and shrinks fast as eta grows (about 1/eta^3)."""
    m = cyclic_matrix(3, 0.9)
    gaps = [tv(sppo_step(PI_T, m, eta), inpo_step(PI_T, REF, m, eta, 0.0)) for eta in (2, 4)]
    assert 1e-6 < gaps[1] < gaps[0] / 3
    # the Nash equilibrium of a cyclic game is a fixed point of both
    assert sppo_step(UNIFORM3, cyclic_matrix(3, 1.0), 0.5).tolist() == pytest.approx(UNIFORM3)
    # small eta: no overflow; the class that beats pi_t most takes the mass, while the
    # others keep pi_t e^g (0.5 e^-20 for class 0), far above the idealised step's e^-80
    tiny = sppo_step(PI_T, m, 0.002)
    assert np.all(np.isfinite(tiny)) and tiny.sum() == pytest.approx(1.0)
    assert tiny[0] == pytest.approx(0.5 * math.exp(-20), rel=1e-6) and tiny[1] > 1 - 1e-8
    assert sppo_step([0.0, 0.5, 0.5], m, 1.0)[0] == 0.0  # an unsampled class stays out


@pytest.mark.parametrize("beta", [0.2, 1 / 3, 1.0])
def test_online_ipo_step_closed_form_is_the_minimiser(beta):
    m = cyclic_matrix(3, 0.9)
    un = [REF[y] * math.exp(sum(m[y][k] * PI_T[k] for k in range(3)) / beta) for y in range(3)]
    got = online_ipo_step(PI_T, REF, m, beta)
    assert got.tolist() == pytest.approx([u / sum(un) for u in un], abs=1e-12)
    cfg = {"type": "ipo", "eta": 1.0, "tau": 0.0, "beta": beta}
    numeric = population_minimiser(cfg, PI_T, m, {"ref": np.log(REF), "pi_t": np.log(PI_T)})
    assert numeric.tolist() == pytest.approx(got.tolist(), abs=1e-7)
    # the same through the generic least squares over pairs
    f = pair_offsets(np.outer(PI_T, PI_T), m, "square", 0.5 / beta)
    assert (REF * np.exp(f) / (REF * np.exp(f)).sum()).tolist() == pytest.approx(got.tolist())
    # INPO at tau -> eta, and pi*_beta is its fixed point
    near = inpo_step(PI_T, REF, m, beta, beta * (1 - 1e-12))
    assert near.tolist() == pytest.approx(got.tolist(), abs=1e-9)
    star = regularized_nash(REF, m, beta)
    assert online_ipo_step(star, REF, m, beta).tolist() == pytest.approx(star.tolist(), abs=1e-12)


@pytest.mark.parametrize("beta", [1 / 3, 1.0])
def test_online_dpo_step_is_the_minimiser(beta):
    m = cyclic_matrix(3, 0.9)
    cfg = {"type": "dpo", "eta": 1.0, "tau": 0.0, "beta": beta}
    numeric = population_minimiser(cfg, PI_T, m, {"ref": np.log(REF), "pi_t": np.log(PI_T)})
    got = online_dpo_step(PI_T, REF, m, beta)
    assert numeric.tolist() == pytest.approx(got.tolist(), abs=1e-7)
    # a Bradley-Terry game is fitted exactly, whatever pi_t: pi_ref exp(score / beta)
    scores = [0.0, 0.4, 1.5]
    un = [r * math.exp(x / beta) for r, x in zip(REF, scores, strict=True)]
    got = online_dpo_step(PI_T, REF, bradley_terry_matrix(scores), beta)
    assert got.tolist() == pytest.approx([u / sum(un) for u in un], abs=1e-10)


def test_pair_offsets_rejects():
    ones = np.full((2, 2), 0.25)
    with pytest.raises(ValueError, match="every pair"):  # class 0 always wins: no minimum
        pair_offsets(ones, [[0.5, 1.0], [0.0, 0.5]], "logistic", 1.0)
    with pytest.raises(ValueError, match="loss"):
        pair_offsets(ones, [[0.5, 0.7], [0.3, 0.5]], "hinge", 1.0)
    with pytest.raises(ValueError):
        pair_offsets(ones, [[0.5, 0.7, 0.1]], "square", 1.0)


def test_comal_reference_schedule():
    # comal.sh: 24 iterations, reference reset every 12: iterations 1-12 use pi_1 (SFT),
    # 13-24 use pi_13 (the policy after iteration 12)
    assert [comal_reference(t, 12) for t in range(1, 25)] == [1] * 12 + [13] * 12
    assert [comal_reference(t, 3) for t in range(1, 8)] == [1, 1, 1, 4, 4, 4, 7]
    assert [comal_reference(t, 1) for t in range(1, 4)] == [1, 2, 3]
    with pytest.raises(ValueError):
        comal_reference(0, 3)


def test_comal_trajectory_resets_the_reference():
    m, eta, tau, k = cyclic_matrix(3, 0.9), 1.0, 1 / 3, 3
    comal = family_trajectory("comal", m, REF, 6, eta, tau, reset_every=k)
    inpo = family_trajectory("inpo", m, REF, 6, eta, tau)
    for t in range(k + 1):  # pi_1 .. pi_4: INPO's, against pi_1
        assert np.array_equal(comal[t], inpo[t])
    new_ref = comal[k]  # pi_4, the reference of iterations 4-6
    for t in range(k, 6):
        assert np.array_equal(comal[t + 1], inpo_step(comal[t], new_ref, m, eta, tau))
    # iteration 4 starts at its own reference: the step is pi_4 exp(M pi_4 / eta)
    un = new_ref * np.exp(m @ new_ref / eta)
    assert comal[k + 1].tolist() == pytest.approx((un / un.sum()).tolist(), abs=1e-12)


def test_family_trajectory_rejects_and_defaults():
    m = cyclic_matrix(3, 0.9)
    for method, kw in [("kto", {}), ("mnpo", {}), ("comal", {})]:
        with pytest.raises(ValueError):
            family_trajectory(method, m, REF, 2, 1.0, 0.3, **kw)
    # online ipo's beta defaults to tau: its fixed point is INPO's pi*_tau
    ipo = family_trajectory("ipo", m, REF, 40, 1.0, 1 / 3)
    assert tv(ipo[-1], regularized_nash(REF, m, 1 / 3)) < 1e-9
    assert len(ipo) == 41 and np.array_equal(ipo[0], REF)


def test_bradley_terry_matrix():
    m = bradley_terry_matrix([0.0, 1.0, 2.0])
    s = 1 / (1 + math.exp(-1.0))
    assert m[1][0] == pytest.approx(s) and m[0][1] == pytest.approx(1 - s)
    assert m[2][0] == pytest.approx(1 / (1 + math.exp(-2.0)))
    check_matrix(m)
    assert nash_equilibrium(m).tolist() == pytest.approx([0.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        bradley_terry_matrix([0.0, math.inf])


def test_kl():
    assert kl(REF, UNIFORM3) == pytest.approx(kl_by_hand(REF, UNIFORM3))
    assert kl(REF, REF) == 0.0
    assert kl(UNIFORM3, [0.5, 0.5, 0.0]) == math.inf
    assert kl([0.5, 0.5, 0.0], UNIFORM3) == pytest.approx(math.log(1.5))
