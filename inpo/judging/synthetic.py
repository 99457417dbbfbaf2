"""Builtin synthetic preferences over response text: fast, deterministic, pure Python.

- vowels (transitive): the share of vowels in the response is its score.
- length (transitive): the closer to 16 characters, the better.
- rps (cyclic): rock-paper-scissors on the first letter. No score explains it, and
  its Nash equilibrium is known (uniform over the three classes), so experiments can
  measure how far a policy is from it (`rps_nash_distance`).

The prompt is ignored: these preferences judge the response alone.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

from inpo.algo.game import ArrayLike, check_matrix, response_class
from inpo.data import Prompt
from inpo.judging.oracle import Oracle

VOWELS = frozenset("aeiouAEIOU")
TARGET_LENGTH = 16
# A vowel share lies in [0, 1] and samples of one policy differ by a few hundredths, so
# the difference is stretched by 10: with sharpness 4, a 0.05 lead already gives P = 0.88.
VOWEL_SCALE = 10.0

RPS_CLASSES = ("rock", "paper", "scissors")
NONE_CLASS = "none"
#: The unique Nash equilibrium of the rps preference: uniform over the three classes and
#: never "none" (which loses to every class).
RPS_NASH = {"rock": 1 / 3, "paper": 1 / 3, "scissors": 1 / 3, NONE_CLASS: 0.0}


def vowel_score(text: str) -> float:
    return sum(c in VOWELS for c in text) / len(text) if text else 0.0


def length_score(text: str) -> float:
    return -abs(len(text) - TARGET_LENGTH) / TARGET_LENGTH


def sigmoid(x: float) -> float:
    # Two branches so that exp never overflows for large |x|.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class ScorePreference(Oracle):
    """A transitive preference: P(a > b) = sigmoid(scale * (score(a) - score(b)))."""

    def __init__(self, score: Callable[[str], float], scale: float):
        self.score = score
        self.scale = scale

    def scores(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        return [self.score(r) for r in responses]

    def prob(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        return [
            sigmoid(self.scale * (self.score(x) - self.score(y))) for x, y in zip(a, b, strict=True)
        ]


def rps_class(text: str) -> str:
    """rock/paper/scissors from the first non-whitespace character of ``text``: a lowercase
    letter maps by (ord(c) - ord('a')) % 3; anything else, or nothing, is "none"."""
    head = text.lstrip()[:1]
    if "a" <= head <= "z":
        return RPS_CLASSES[(ord(head) - ord("a")) % 3]
    return NONE_CLASS


def rps_prob(a: str, b: str) -> float:
    """1 if a's class beats b's, 0 if it loses, 0.5 if they are the same class."""
    ca, cb = rps_class(a), rps_class(b)
    if ca == cb:
        return 0.5
    if cb == NONE_CLASS:
        return 1.0
    if ca == NONE_CLASS:
        return 0.0
    # paper beats rock, scissors beats paper, rock beats scissors
    return 1.0 if (RPS_CLASSES.index(ca) - RPS_CLASSES.index(cb)) % 3 == 1 else 0.0


def rps_distribution(responses: Sequence[str]) -> dict[str, float]:
    """Share of each class (the three and "none") among ``responses``."""
    counts = Counter(rps_class(r) for r in responses)
    n = max(len(responses), 1)
    return {c: counts[c] / n for c in RPS_NASH}


def rps_nash_distance(responses: Sequence[str]) -> float:
    """Total variation distance between the responses' class shares and the equilibrium:
    0 at the Nash equilibrium, 1 when every response is "none"."""
    shares = rps_distribution(responses)
    return 0.5 * sum(abs(shares[c] - RPS_NASH[c]) for c in RPS_NASH)


class RockPaperScissors(Oracle):
    """A cyclic (non-transitive) preference: no scores, only pairwise outcomes."""

    def prob(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        return [rps_prob(x, y) for x, y in zip(a, b, strict=True)]


class GameOracle(Oracle):
    """The class-level game as a preference oracle over response text:
    P(a > b) = M[class(a)][class(b)], prompts ignored. Symmetric in the two slots by
    construction (M + M^T = 1), hence not position-biased; it has no pointwise scores
    (a cyclic game has none that explain it)."""

    position_biased = False

    def __init__(self, m: ArrayLike | Sequence[Sequence[float]]):
        self.m = check_matrix(m)
        self.n = self.m.shape[0]

    def prob(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        n = self.n
        return [
            float(self.m[response_class(x, n), response_class(y, n)])
            for x, y in zip(a, b, strict=True)
        ]
