"""Picking one (chosen, rejected) pair from K responses: pure functions.

A pairwise strategy is a generator that yields a round of matches (i, j) and
receives P(response i > response j) for each; `run_pairwise` plays the
strategies of many prompts in lockstep so every round is one batched oracle
call. A tie (P = 0.5) goes to the first response of the match.

    tournament   the paper's: K/2 first-round matches; winners play a
                 single-elimination bracket (-> y_w), losers a bracket of
                 losers (-> y_l); a final y_w vs y_l keeps the pair only if y_w
                 wins. 3K/2 - 1 comparisons for K a power of two (odd brackets
                 give a bye to their last entrant).
    round_robin  all K(K-1)/2 matches; most wins vs fewest wins.
    random       two distinct responses, one match.
    max_min      pointwise scores (reward models): highest vs lowest.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

Match = tuple[int, int]
Strategy = Generator[list[Match], list[float], "PairResult"]


@dataclass(frozen=True)
class PairResult:
    chosen: int | None
    rejected: int | None
    p_chosen: float | None  # the oracle's P(chosen > rejected)
    n_comparisons: int
    dropped: str | None = None  # why no pair was kept


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
    n = len(first)
    winners = [a if _first_wins(p) else b for (a, b), p in zip(first, probs, strict=True)] + bye
    losers = [b if _first_wins(p) else a for (a, b), p in zip(first, probs, strict=True)]
    while len(winners) > 1 or len(losers) > 1:
        w_matches, w_bye = _bracket_round(winners)
        l_matches, l_bye = _bracket_round(losers)
        probs = yield w_matches + l_matches
        n += len(w_matches) + len(l_matches)
        w_probs, l_probs = probs[: len(w_matches)], probs[len(w_matches) :]
        winners = [a if _first_wins(p) else b for (a, b), p in zip(w_matches, w_probs, strict=True)]
        losers = [b if _first_wins(p) else a for (a, b), p in zip(l_matches, l_probs, strict=True)]
        winners += w_bye
        losers += l_bye
    y_w, y_l = winners[0], losers[0]
    (p,) = yield [(y_w, y_l)]
    n += 1
    if not _first_wins(p):
        return PairResult(None, None, p, n, dropped="final check lost")
    return PairResult(y_w, y_l, p, n)


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
    if wins[best] == wins[worst]:
        return PairResult(None, None, None, len(matches), dropped="all responses tied")
    p = p_of[best, worst]
    if not _first_wins(p):
        return PairResult(None, None, p, len(matches), dropped="most wins lost to fewest wins")
    return PairResult(best, worst, p, len(matches))


def random_pair(k: int, rng: _random.Random) -> Strategy:
    a, b = rng.sample(range(k), 2)
    (p,) = yield [(a, b)]
    if _first_wins(p):
        return PairResult(a, b, p, 1)
    return PairResult(b, a, 1.0 - p, 1)


def max_min(scores: Sequence[float]) -> PairResult:
    """Highest vs lowest score (first on ties); equal extremes give no pair."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    if scores[best] == scores[worst]:
        return PairResult(None, None, None, 0, dropped="equal rewards")
    return PairResult(best, worst, None, 0)


def make_strategy(name: str, k: int, rng: _random.Random) -> Strategy:
    if name == "tournament":
        return tournament(k)
    if name == "round_robin":
        return round_robin(k)
    if name == "random":
        return random_pair(k, rng)
    raise ValueError(f"pairing.strategy={name!r} is not a pairwise strategy")


def run_pairwise(
    strategies: list[Strategy], judge: Callable[[list[tuple[int, Match]]], list[float]]
) -> list[PairResult]:
    """Play every strategy to the end; each round of all prompts is one judge call.

    ``judge`` gets (prompt index, (i, j)) for every match of the round and
    returns P(i > j) for each, in order.
    """
    results: list[PairResult | None] = [None] * len(strategies)
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
