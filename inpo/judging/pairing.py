"""Choosing preference pairs from K responses, and labelling them: pure functions.

Selection. A pairwise strategy is a generator that yields a round of matches
(i, j) and receives P(response i > response j) for each; `run_pairwise` plays
the strategies of many prompts in lockstep so every round is one batched oracle
call. Inside a strategy a tie (P = 0.5) goes to the first response of a match.

    tournament   the paper's: K/2 first-round matches; winners play a
                 single-elimination bracket (-> y_w), losers a bracket of
                 losers (-> y_l); a final y_w vs y_l keeps the pair only if y_w
                 wins (a tied final gives no pair). 3K/2 - 1 comparisons for K a
                 power of two (odd brackets give a bye to their last entrant).
    round_robin  all K(K-1)/2 matches; most wins vs fewest wins.
    random       two distinct responses, one match (pairs drawn from pi_t, as the
                 theory's estimator wants).
    disjoint     K/2 disjoint random pairs: every response in one pair, K/2 matches.
    max_min      pointwise scores (reward models): highest vs lowest.

Win rates. Each strategy also estimates, for every response it compared, P(y > pi_t): the
mean of P(y > y') over the responses y' it was compared with (SPPO's target, `p_win`).
round_robin's is the leave-one-out mean over the prompt's other K - 1 samples (no
self-comparison: against itself a response ties, which would pull every estimate toward
1/2 by 1/K); random, disjoint and max_min compare a response with one sample (unbiased,
noisy); the tournament's later rounds pit winners against winners and losers against
losers, so its mean is biased toward 1/2 for both ends.

Labelling (`label_pair`), for a selected pair (a, b) with P = P(a > b):

    hard    the winner is the side with P > 1/2, trained toward the full margin;
            a tie (P = 1/2) is dropped (trained as a full-margin pair it is noise).
    sample  the paper's lambda_P: the winner is drawn with probability P (seeded per
            prompt, so a redone stage draws the same winners).
    soft    the pair keeps P and the loss takes the expectation over the draw
            (same minimizer as sample, lower variance; a tie's target margin is 0).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

Match = tuple[int, int]
LABELS = ("soft", "sample", "hard")


@dataclass(frozen=True)
class Pair:
    """Two responses of one prompt and the oracle's P(first > second)."""

    first: int
    second: int
    p: float


@dataclass(frozen=True)
class Selection:
    """What a strategy kept for one prompt."""

    pairs: tuple[Pair, ...]
    n_comparisons: int
    dropped: str | None = None  # why no pair was kept
    p_win: tuple[float | None, ...] | None = None  # per response: P(y > pi_t), if compared


Strategy = Generator[list[Match], list[float], Selection]


@dataclass(frozen=True)
class Labelled:
    chosen: int
    rejected: int
    p_chosen: float  # the oracle's P(chosen > rejected)
    p_label: float  # the probability the loss gives to "chosen wins"


def win_rates(k: int, played: list[tuple[Match, float]]) -> tuple[float | None, ...]:
    """Each response's mean P(y > y') over the matches it played (None: it played none)."""
    total, count = [0.0] * k, [0] * k
    for (i, j), p in played:
        total[i], count[i] = total[i] + p, count[i] + 1
        total[j], count[j] = total[j] + 1.0 - p, count[j] + 1
    return tuple(t / c if c else None for t, c in zip(total, count, strict=True))


def _first_wins(p: float) -> bool:
    return p >= 0.5


def _bracket_round(entrants: list[int]) -> tuple[list[Match], list[int]]:
    """Matches of one bracket round, and the entrant with a bye (if any)."""
    matches = [(entrants[i], entrants[i + 1]) for i in range(0, len(entrants) - 1, 2)]
    return matches, entrants[len(matches) * 2 :]


def tournament(k: int) -> Strategy:
    if k < 2:
        raise ValueError(f"tournament needs K >= 2 responses, got {k}")
    first, bye = _bracket_round(list(range(k)))
    probs = yield first
    played = list(zip(first, probs, strict=True))
    winners = [a if _first_wins(p) else b for (a, b), p in played] + bye
    losers = [b if _first_wins(p) else a for (a, b), p in played]
    while len(winners) > 1 or len(losers) > 1:
        w_matches, w_bye = _bracket_round(winners)
        l_matches, l_bye = _bracket_round(losers)
        probs = yield w_matches + l_matches
        played += zip(w_matches + l_matches, probs, strict=True)
        w_probs, l_probs = probs[: len(w_matches)], probs[len(w_matches) :]
        winners = [a if _first_wins(p) else b for (a, b), p in zip(w_matches, w_probs, strict=True)]
        losers = [b if _first_wins(p) else a for (a, b), p in zip(l_matches, l_probs, strict=True)]
        winners += w_bye
        losers += l_bye
    y_w, y_l = winners[0], losers[0]
    (p,) = yield [(y_w, y_l)]
    played.append(((y_w, y_l), p))
    n, rates = len(played), win_rates(k, played)
    if p == 0.5:
        return Selection((), n, dropped="final check tied", p_win=rates)
    if p < 0.5:
        return Selection((), n, dropped="final check lost", p_win=rates)
    return Selection((Pair(y_w, y_l, p),), n, p_win=rates)


def round_robin(k: int) -> Strategy:
    matches = [(i, j) for i in range(k) for j in range(i + 1, k)]
    probs = yield matches
    p_of = {}
    wins = [0.0] * k
    for (i, j), p in zip(matches, probs, strict=True):
        p_of[i, j], p_of[j, i] = p, 1.0 - p
        credit = 0.5 if p == 0.5 else float(p > 0.5)
        wins[i] += credit
        wins[j] += 1.0 - credit
    best = max(range(k), key=lambda i: (wins[i], -i))
    worst = min(range(k), key=lambda i: (wins[i], i))
    rates = win_rates(k, list(zip(matches, probs, strict=True)))
    if wins[best] == wins[worst]:
        return Selection((), len(matches), dropped="all responses tied", p_win=rates)
    return Selection((Pair(best, worst, p_of[best, worst]),), len(matches), p_win=rates)


def random_pair(k: int, rng: _random.Random) -> Strategy:
    a, b = rng.sample(range(k), 2)
    (p,) = yield [(a, b)]
    return Selection((Pair(a, b, p),), 1, p_win=win_rates(k, [((a, b), p)]))


def disjoint_pairs(k: int, rng: _random.Random) -> Strategy:
    order = list(range(k))
    rng.shuffle(order)
    matches = [(order[i], order[i + 1]) for i in range(0, k - 1, 2)]
    probs = yield matches
    played = list(zip(matches, probs, strict=True))
    pairs = tuple(Pair(a, b, p) for (a, b), p in played)
    return Selection(pairs, k // 2, p_win=win_rates(k, played))


def max_min(scores: Sequence[float]) -> Match | None:
    """(highest, lowest) score (first on ties), or None when the extremes are equal. The
    caller asks the oracle for P of the returned match."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    if scores[best] == scores[worst]:
        return None
    return best, worst


PAIRWISE = {
    "tournament": lambda k, rng: tournament(k),
    "round_robin": lambda k, rng: round_robin(k),
    "random": random_pair,
    "disjoint": disjoint_pairs,
}


def make_strategy(name: str, k: int, rng: _random.Random) -> Strategy:
    if name not in PAIRWISE:
        raise ValueError(f"pairing.strategy={name!r} is not a pairwise strategy")
    return PAIRWISE[name](k, rng)


def label_pair(pair: Pair, label: str, rng: _random.Random) -> Labelled | str:
    """The labelled pair, or the reason it is dropped (see the module docstring)."""
    a, b, p = pair.first, pair.second, pair.p
    if label == "sample":
        if rng.random() < p:
            return Labelled(a, b, p, 1.0)
        return Labelled(b, a, 1.0 - p, 1.0)
    if label == "hard" and p == 0.5:
        return "tie"
    if label not in ("hard", "soft"):
        raise ValueError(f"pairing.label={label!r}: unknown (use one of {LABELS})")
    chosen, rejected, p_chosen = (a, b, p) if p >= 0.5 else (b, a, 1.0 - p)
    return Labelled(chosen, rejected, p_chosen, p_chosen if label == "soft" else 1.0)


def run_pairwise(
    strategies: list[Strategy], judge: Callable[[list[tuple[int, Match]]], list[float]]
) -> list[Selection]:
    """Play every strategy to the end; each round of all prompts is one judge call.

    ``judge`` gets (prompt index, (i, j)) for every match of the round and
    returns P(i > j) for each, in order.
    """
    results: list[Selection | None] = [None] * len(strategies)
    pending: dict[int, list[Match]] = {}
    for idx, s in enumerate(strategies):
        pending[idx] = next(s)
    while pending:
        queries = [(idx, m) for idx, matches in pending.items() for m in matches]
        probs = judge(queries)
        if len(probs) != len(queries):
            raise ValueError(f"judge answered {len(probs)} of {len(queries)} matches")
        nxt: dict[int, list[Match]] = {}
        pos = 0
        for idx, matches in pending.items():
            answer = list(probs[pos : pos + len(matches)])
            pos += len(matches)
            try:
                nxt[idx] = strategies[idx].send(answer)
            except StopIteration as stop:
                results[idx] = stop.value
        pending = nxt
    return results  # type: ignore[return-value]
