"""A builtin verifiable instruction-following preference, in the spirit of IFEval.

Every prompt is an everyday task followed by one checkable constraint in plain English
("Describe the sea. Do not use any commas in your answer."; the prompt set and the
templates are data, in `inpo.prompts`). The oracle reads the constraint back from the
prompt text with regexes of those templates and prefers the response that satisfies it
(or comes closer to it):

    P(a > b) = sigmoid(sharpness * (score(a) - score(b)))

where score is 1 for a satisfied constraint and PARTIAL_WEIGHT * degree (< 0.5) for a
violated one, so that any success beats any near miss while partial credit still orders
the failures. Equal scores give exactly 0.5: there is no tie-breaker.

Kinds (`KINDS`): max_words, lowercase, no_commas, keyword, forbidden_word, start_word,
one_sentence; the prompt set leaves lowercase out by default (`inpo.prompts.DEFAULT_KINDS`).
An empty response (no word at all) satisfies nothing: otherwise stopping at once would
trivially obey "no commas" or "at most N words".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from inpo.data import Prompt
from inpo.judging.oracle import Oracle, OracleError
from inpo.judging.synthetic import sigmoid
from inpo.prompts import KINDS, TEMPLATES

#: Weight of partial credit: a violated constraint scores at most this, a satisfied one 1.
PARTIAL_WEIGHT = 0.5


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{n\}", r"(\d+)").replace(r"\{word\}", r"([A-Za-z]+)")
    # Whitespace-tolerant, so hand-typed prompts with doubled spaces still parse.
    return re.compile(pattern.replace(r"\ ", r"\s+"), re.IGNORECASE)


_WORD_KINDS = ("keyword", "forbidden_word", "start_word")
_PATTERNS = {kind: _template_regex(t) for kind, t in TEMPLATES.items()}

# A word: letters/digits, with inner apostrophes or hyphens ("don't", "well-known").
_WORD = re.compile(r"\w+(?:['’-]\w+)*")
_COMMAS = ",，"  # ASCII and full-width
# A sentence ends at . ! or ? (possibly closed by a quote, bracket or markdown *),
# followed by whitespace; a line break also ends one (lists, headings).
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'”’)*])\s+|\n+")
_TERMINATED = re.compile(r"[.!?][\"'”’)*]*$")


def _base(word: str) -> str:
    """Lowercased, without a possessive 's: "Sea's" counts as "sea"."""
    w = word.lower()
    for suffix in ("'s", "’s"):
        w = w.removesuffix(suffix)
    return w


def _forms(word: str) -> set[str]:
    """A word and its regular plurals."""
    forms = {word, word + "s", word + "es"}
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    return forms


def words(text: str) -> list[str]:
    """The words of ``text``; punctuation attached to a word is not part of it."""
    return _WORD.findall(text)


def sentences(text: str) -> list[str]:
    """Sentence-like segments of ``text`` that contain at least one word."""
    return [s for s in _SENTENCE_BREAK.split(text.strip()) if _WORD.search(s)]


@dataclass(frozen=True)
class Constraint:
    """One checkable constraint: ``n`` for max_words, ``word`` for keyword, forbidden_word
    and start_word."""

    kind: str
    n: int = 0
    word: str = ""

    def __post_init__(self) -> None:
        if self.kind not in TEMPLATES:
            raise ValueError(f"constraint kind {self.kind!r}: unknown (known: {', '.join(KINDS)})")
        if self.kind == "max_words" and self.n < 1:
            raise ValueError(f"max_words needs n >= 1, got {self.n}")
        if self.kind in _WORD_KINDS and not re.fullmatch(r"[A-Za-z]+", self.word):
            raise ValueError(f"{self.kind} needs a single word of letters, got {self.word!r}")

    def instruction(self) -> str:
        """The sentence a prompt carries; `parse_constraint` reads it back."""
        return TEMPLATES[self.kind].format(n=self.n, word=self.word)

    def check(self, response: str) -> bool:
        return self.degree(response) == 1.0

    def degree(self, response: str) -> float:
        """How far ``response`` satisfies the constraint: 1 iff satisfied, else in [0, 1)."""
        text = response.strip()
        ws = words(text)
        if not ws:
            return 0.0
        if self.kind == "max_words":
            # A response cut at the token limit counts as written: too long is too long.
            return min(1.0, self.n / len(ws))
        if self.kind == "lowercase":
            cased = [c for c in text if c.islower() or c.isupper()]
            if not cased:
                return 0.0  # digits or symbols only: no lowercase letters were written
            return sum(c.islower() for c in cased) / len(cased)
        if self.kind == "no_commas":
            return 1.0 / (1.0 + sum(text.count(c) for c in _COMMAS))
        target = self.word.lower()
        lowered = [_base(w) for w in ws]
        if self.kind == "keyword":
            if target in lowered:
                return 1.0
            # An inflected form ("waves" for "wave") is close but not the word asked for.
            return 0.5 if any(w.startswith(target) for w in lowered) else 0.0
        if self.kind == "forbidden_word":
            # Its plural is the same word to a reader: "seas" breaks "do not use 'sea'".
            return 1.0 / (1.0 + sum(w in _forms(target) for w in lowered))
        if self.kind == "start_word":
            # Case-insensitive, and leading quotes or markdown (**Yes**) do not count as words.
            # Credit decays with how late the word first appears: "Well, yes" gets 1/2.
            if target not in lowered:
                return 0.0
            return 1.0 / (1.0 + lowered.index(target))
        if self.kind == "one_sentence":
            parts = sentences(text)
            if len(parts) == 1:
                # One sentence cut off at the token limit is not a finished sentence.
                return 1.0 if _TERMINATED.search(parts[0]) else 0.5
            return 1.0 / len(parts)
        raise AssertionError(self.kind)


def prompt_text(prompt: Prompt) -> str:
    """The text the constraint is read from: a string prompt, or the last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def parse_constraint(prompt: Prompt) -> Constraint | None:
    """The constraint a prompt carries, None if it has none; OracleError if several differ."""
    text = prompt_text(prompt)
    found = set()
    for kind, pattern in _PATTERNS.items():
        for m in pattern.finditer(text):
            if kind == "max_words":
                found.add(Constraint(kind, n=int(m.group(1))))
            elif kind in _WORD_KINDS:
                found.add(Constraint(kind, word=m.group(1)))
            else:
                found.add(Constraint(kind))
    if len(found) > 1:
        raise OracleError(f"prompt {text[:60]!r} carries {len(found)} constraints; expected one")
    return found.pop() if found else None


def _require(prompt: Prompt) -> Constraint:
    c = parse_constraint(prompt)
    if c is None:
        # A silent 0.5 would train on nothing; say which prompt is not a constraint prompt.
        raise OracleError(
            f"prompt {prompt_text(prompt)[:60]!r} carries no constraint the 'constraints' "
            f"oracle knows (use data.prompts=builtin:ifeval, or inpo.prompts.constraint_prompts)"
        )
    return c


def constraint_score(prompt: Prompt, response: str) -> float:
    """1 if the prompt's constraint is satisfied, else PARTIAL_WEIGHT * degree."""
    c = _require(prompt)
    d = c.degree(response)
    return 1.0 if d == 1.0 else PARTIAL_WEIGHT * d


class ConstraintPreference(Oracle):
    """P(a > b) = sigmoid(sharpness * (score(a) - score(b))), score from `constraint_score`."""

    position_biased = False

    def __init__(self, sharpness: float):
        self.sharpness = sharpness

    def scores(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        return [constraint_score(p, r) for p, r in zip(prompts, responses, strict=True)]

    def prob(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        sa, sb = self.scores(prompts, a), self.scores(prompts, b)
        return [sigmoid(self.sharpness * (x - y)) for x, y in zip(sa, sb, strict=True)]


def pass_rates_by_kind(prompts: Sequence[Prompt], responses: Sequence[str]) -> dict[str, float]:
    """Share of satisfied constraints per kind, for the kinds present (in `KINDS` order)."""
    passed: dict[str, list[bool]] = {}
    for p, r in zip(prompts, responses, strict=True):
        c = _require(p)
        passed.setdefault(c.kind, []).append(c.check(r))
    return {k: sum(passed[k]) / len(passed[k]) for k in KINDS if k in passed}


def constraint_pass_rate(prompts: Sequence[Prompt], responses: Sequence[str]) -> float:
    """Share of (prompt, response) pairs whose constraint is satisfied."""
    if len(prompts) == 0:
        raise ValueError("constraint_pass_rate of no responses")
    ok = [_require(p).check(r) for p, r in zip(prompts, responses, strict=True)]
    return sum(ok) / len(ok)
