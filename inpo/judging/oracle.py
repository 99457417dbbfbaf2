"""The oracle interface: P(a > b | x) for a batch of (prompt, a, b) triples.

A backend implements `prob`; backends that score responses one at a time
(reward models, transitive synthetic preferences) also implement `scores`,
which the max_min pairing strategy needs. `Debiased` wraps a position-biased
pairwise judge: it asks both orders and averages P(a > b) with 1 - P(b > a).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from inpo.data import Prompt
from inpo.errors import InpoError


class OracleError(InpoError):
    """The oracle failed or answered something that is not a probability."""


class ParseCounts(NamedTuple):
    """What a reasoning judge's sampled verdicts came to: samples drawn, those with no
    verdict the pattern reads (unparsed), those of them stopped by the token limit (cut),
    and queries with no parseable sample at all (empty: P = 0.5)."""

    samples: int = 0
    unparsed: int = 0
    cut: int = 0
    empty: int = 0

    def plus(self, other: Sequence[int]) -> ParseCounts:
        return ParseCounts(*(x + y for x, y in zip(self, other, strict=True)))

    def minus(self, other: Sequence[int]) -> ParseCounts:
        return ParseCounts(*(x - y for x, y in zip(self, other, strict=True)))


class Oracle:
    #: Whether the judge may prefer a slot (A or B) regardless of content.
    position_biased: bool = False

    def prob(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        """P(a[i] > b[i] | prompts[i]) for every i, each in [0, 1]."""
        raise NotImplementedError

    def scores(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """A scalar score per (prompt, response); only for pointwise backends."""
        raise OracleError(f"oracle backend {type(self).__name__} gives no pointwise scores")

    @property
    def has_scores(self) -> bool:
        return type(self).scores is not Oracle.scores

    def truncated(self) -> int:
        """Judge inputs cut to oracle.max_length so far (model judges; 0 for the others)."""
        return 0

    def verdicts(self) -> tuple[float, int]:
        """(summed verdict mass, verdicts) so far: judges that read P off choice tokens
        (llm, http) add each query's total choice probability; (0.0, 0) for the others."""
        return 0.0, 0

    def parse_counts(self) -> ParseCounts:
        """Sampled verdicts so far and how many did not parse (reasoning judges; zeros for
        the others)."""
        return ParseCounts()

    def judgements(self) -> list[dict]:
        """The raw verdict texts kept since the last call (reasoning judges asked to keep
        them), each {"question", "a", "b", "seed", "texts", "finish_reasons", "values"}."""
        return []

    def verdict_mass(self) -> float | None:
        """Mean probability the judge gave its choice tokens so far; None if it has none."""
        total, n = self.verdicts()
        return total / n if n else None

    def close(self) -> None:
        pass


class Debiased(Oracle):
    """Ask a position-biased judge in both orders and average."""

    def __init__(self, inner: Oracle):
        self.inner = inner

    def prob(self, prompts, a, b):
        n = len(prompts)
        both = self.inner.prob(list(prompts) * 2, list(a) + list(b), list(b) + list(a))
        return [(both[i] + 1.0 - both[n + i]) / 2.0 for i in range(n)]

    def scores(self, prompts, responses):
        return self.inner.scores(prompts, responses)

    @property
    def has_scores(self) -> bool:
        return self.inner.has_scores

    def truncated(self) -> int:
        return self.inner.truncated()

    def verdicts(self) -> tuple[float, int]:
        return self.inner.verdicts()

    def parse_counts(self) -> ParseCounts:
        return self.inner.parse_counts()

    def judgements(self) -> list[dict]:
        return self.inner.judgements()

    def close(self) -> None:
        self.inner.close()


def check_probs(values: Any, n: int, source: str) -> list[float]:
    """Validate a backend's answer: n finite numbers in [0, 1], else a clear error."""
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as e:
        raise OracleError(f"{source} returned {values!r:.80}: not a sequence of numbers") from e
    if len(out) != n:
        raise OracleError(f"{source} returned {len(out)} probabilities for {n} pairs")
    for i, p in enumerate(out):
        if not 0.0 <= p <= 1.0:  # also rejects NaN
            raise OracleError(f"{source} returned P(a > b) = {p} for pair {i}: not in [0, 1]")
    return out
