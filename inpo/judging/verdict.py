"""What a chat-model judge reads and how its verdict becomes P(A > B), shared by the
in-process `llm` judge (llm.py) and the `http` judge behind an OpenAI-compatible endpoint.

A judge prompt template holds {question}, {answer_a} and {answer_b}: a builtin one
(`builtin:NAME`, BUILTIN_TEMPLATES) or a user's text file. The judge answers with one of
oracle.choices (A, B and optionally a tie); P(A > B) = (p_A + p_tie/2) / (p_A + p_B + p_tie)
over the choice tokens' next-token probabilities. Their total (the verdict mass) says how
much the judge wanted to answer with a choice at all: a judge that would rather start with
another word gives a P that is mostly noise.

In reasoning mode (oracle.reasoning_tokens > 0) the judge writes first and its verdict is
read from the text (`VerdictReader`: oracle.verdict_pattern's group 'verdict' looked up in
oracle.verdict_values); P(A > B) is the mean over oracle.verdict_samples samples of the
ones that parsed, each query seeded from its own content (`verdict_seed`). Unparseable
samples are counted (`ParseCounts`), never read as ties; the verdict mass is then the share
of a query's samples that parsed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from inpo.config import OracleConfig
from inpo.data import Prompt
from inpo.judging.oracle import OracleError, ParseCounts
from inpo.judging.pairpm import render_context

PLACEHOLDERS = ("question", "answer_a", "answer_b")
_FIELD = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")

BUILTIN_TEMPLATES = {
    # The http judge's prompt since its first version.
    "pairwise": (
        "Below are a conversation and two candidate responses to its last turn. Decide which "
        "response is better: more helpful, more correct and clearer.\n\n"
        "[CONTEXT] {question}\n[RESPONSE A] {answer_a}\n[RESPONSE B] {answer_b}\n\n"
        "Which response is better? Answer with a single letter, A or B.\nAnswer:"
    ),
    # After MT-Bench's pairwise judge (Zheng et al. 2023), in our words, with the verdict
    # as the first token instead of after an explanation; C is its tie.
    "mtbench": (
        "You are a fair and careful judge. Compare the two assistant answers below to the "
        "user's question and decide which one serves the user better. Weigh helpfulness, "
        "relevance, accuracy, depth and clarity. The order in which the answers appear, "
        "their length and the assistants' names must not sway you.\n\n"
        "[User Question]\n{question}\n\n"
        "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
        "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]\n\n"
        'Reply with one letter only: "A" if assistant A is better, "B" if assistant B is '
        'better, "C" for a tie.'
    ),
    # For reasoning mode: after Arena-Hard's judge (Li et al. 2024), in our words: reason
    # first, then one of its five bracketed labels (oracle.verdict_pattern's default).
    "reasoned": (
        "Act as an impartial judge of two AI assistants' answers to the same user question. "
        "Judge which answer serves the user better: is it correct, helpful, relevant and "
        "clear? Do not let the order of the answers, their length or the assistants' names "
        "influence you.\n\n"
        "[User Question]\n{question}\n\n"
        "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
        "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]\n\n"
        "First explain briefly what each answer gets right and wrong. Then finish with "
        "exactly one verdict label: [[A>>B]] if A is much better, [[A>B]] if A is a little "
        "better, [[A=B]] if they are about as good, [[B>A]] if B is a little better, "
        "[[B>>A]] if B is much better."
    ),
}


def load_template(spec: str) -> str:
    """oracle.prompt_template's text: `builtin:NAME` or a file holding every placeholder."""
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN_TEMPLATES:
            raise OracleError(
                f"oracle.prompt_template = {spec}: no such builtin "
                f"(builtin:{', builtin:'.join(BUILTIN_TEMPLATES)})"
            )
        return BUILTIN_TEMPLATES[name]
    try:
        text = Path(spec).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise OracleError(f"oracle.prompt_template = {spec}: cannot read it: {e}") from None
    missing = [p for p in PLACEHOLDERS if "{" + p + "}" not in text]
    if missing:
        raise OracleError(
            f"oracle.prompt_template = {spec}: the file lacks the placeholder {{{missing[0]}}} "
            f"(a judge template holds {{question}}, {{answer_a}} and {{answer_b}})"
        )
    return text


def question_text(prompt: Prompt) -> str:
    """The question as the judge sees it: a single user turn as itself, a longer
    conversation turn by turn as the pair-PM judge renders it (system turns left out)."""
    if isinstance(prompt, str):
        return prompt
    turns = [m for m in prompt if m["role"] != "system"]
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    return render_context(prompt)


def render_prompt(template: str, prompt: Prompt, a: str, b: str) -> str:
    """The template filled in one pass: other braces stay as written, and a placeholder
    inside a response is never filled in again."""
    values = {"question": question_text(prompt), "answer_a": a, "answer_b": b}
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def prob_from_choices(probs: Sequence[float], where: str, choices: Sequence[str]) -> float:
    """P(A > B) from the choices' probabilities [p_A, p_B] or [p_A, p_B, p_tie]: a tie's
    mass splits evenly; the rest of the vocabulary does not count."""
    total = sum(probs)
    if total <= 0.0:
        raise OracleError(f"{where}: the judge gives no probability to any of {list(choices)}")
    tie = probs[2] if len(probs) > 2 else 0.0
    return (probs[0] + tie / 2.0) / total


class Verdicts:
    """Reads P(A > B) off each query's choice probabilities (`read`) or sampled verdict
    texts (`read_samples`) and keeps the verdict mass and the parse counts."""

    def __init__(
        self,
        choices: Sequence[str],
        where: str,
        reader: VerdictReader | None = None,
        max_unparseable: float = 1.0,
        keep_texts: bool = False,
    ):
        self.choices, self.where = list(choices), where
        self.mass_sum, self.count = 0.0, 0
        self.reader, self.max_unparseable = reader, max_unparseable
        self.counts = ParseCounts()
        self.kept: list[dict] | None = [] if keep_texts else None

    def read(self, probs: Sequence[float]) -> float:
        self.mass_sum += sum(probs)
        self.count += 1
        return prob_from_choices(probs, self.where, self.choices)

    def totals(self) -> tuple[float, int]:
        return self.mass_sum, self.count

    def read_samples(
        self,
        texts: Sequence[Sequence[str]],
        finish_reasons: Sequence[Sequence[str]],
        about: Sequence[dict] | None = None,
    ) -> list[float]:
        """P(A > B) per query from its sampled verdict texts: the mean over those that
        parse, 0.5 for a query with none (counted as empty). A batch whose share of
        unparseable samples exceeds max_unparseable is an error naming one of them."""
        if self.reader is None:
            raise OracleError(f"{self.where}: no verdict pattern to read sampled verdicts")
        batch = ParseCounts()
        out, example = [], None
        for i, (samples, reasons) in enumerate(zip(texts, finish_reasons, strict=True)):
            values = [self.reader.value(t) for t in samples]
            missed = [j for j, v in enumerate(values) if v is None]
            cut = sum(reasons[j] == "length" for j in missed)
            if missed and example is None:
                example = samples[missed[0]]
            mean = mean_verdict(values)
            batch = batch.plus((len(samples), len(missed), cut, int(mean is None)))
            self.mass_sum += (len(samples) - len(missed)) / len(samples) if samples else 0.0
            self.count += 1
            out.append(0.5 if mean is None else mean)
            if self.kept is not None:
                record = dict(about[i]) if about is not None else {}
                self.kept.append(
                    record
                    | {"texts": list(samples), "finish_reasons": list(reasons), "values": values}
                )
        self.counts = self.counts.plus(batch)
        if batch.samples and batch.unparsed / batch.samples > self.max_unparseable:
            raise OracleError(
                f"{self.where}: {batch.unparsed} of {batch.samples} sampled verdicts have no "
                f"verdict oracle.verdict_pattern reads ({batch.unparsed / batch.samples:.0%} > "
                f"oracle.max_unparseable_fraction = {self.max_unparseable}); {batch.cut} of "
                f"them stopped at oracle.reasoning_tokens; one of them ends "
                f"{(example or '')[-160:]!r}"
            )
        return out

    def take_kept(self) -> list[dict]:
        """The kept records since the last call (none unless asked to keep them)."""
        if self.kept is None:
            return []
        kept, self.kept = self.kept, []
        return kept


@dataclass(frozen=True)
class Verdicting:
    """How the llm and http judges ask for a verdict and read it: the prompt template and
    the choice tokens; in reasoning mode (reasoning_tokens > 0) ``samples`` seeded texts
    per query at ``temperature`` (seeds from ``seed``, the run's), read by ``pattern`` and
    ``values``, with at most ``max_unparseable`` of a batch unread (``keep_texts``: keep
    every text for `judgements`)."""

    template: str = BUILTIN_TEMPLATES["pairwise"]
    choices: tuple[str, ...] = ("A", "B")
    reasoning_tokens: int = 0
    pattern: str | None = None
    values: Mapping[str, float] | None = None
    samples: int = 1
    temperature: float = 1.0
    max_unparseable: float = 1.0
    seed: int = 0
    keep_texts: bool = False

    @classmethod
    def of(cls, oc: OracleConfig, seed: int = 0, keep_texts: bool = False) -> Verdicting:
        """From the oracle's config; the template file is read here, in the driver: a bad
        file fails before any actor starts, and actors on other nodes need not see it."""
        asked = cls(load_template(oc.template_spec), tuple(oc.choices))
        if not oc.reasoning_tokens:
            return asked
        return replace(
            asked,
            reasoning_tokens=oc.reasoning_tokens,
            pattern=oc.verdict_pattern,
            values=dict(oc.verdict_values),
            samples=oc.verdict_samples,
            temperature=oc.verdict_temperature,
            max_unparseable=oc.max_unparseable_fraction,
            seed=seed,
            keep_texts=keep_texts,
        )


class ReadsVerdicts:
    """The Oracle methods of a judge whose P is read by a `Verdicts` (``self.tally``): the
    llm and http judges."""

    tally: Verdicts
    verdicting: Verdicting

    def read_verdicts(self, verdicting: Verdicting, where: str) -> None:
        v = self.verdicting = verdicting
        reader = VerdictReader.of(v.pattern, v.values) if v.reasoning_tokens else None
        self.tally = Verdicts(v.choices, where, reader, v.max_unparseable, v.keep_texts)

    def verdicts(self) -> tuple[float, int]:
        return self.tally.totals()

    def parse_counts(self) -> ParseCounts:
        return self.tally.counts

    def judgements(self) -> list[dict]:
        return self.tally.take_kept()


def verdict_seed(run_seed: int, prompt: Prompt, a: str, b: str) -> int:
    """The sampling seed of one reasoning-mode query, from its content alone: the same
    question and responses in the same order get the same samples, whatever batch or
    actor they land in (a redone stage gives the same labels); the other order its own."""
    key = json.dumps([run_seed, "judge", prompt, a, b], sort_keys=True)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") & 0x7FFFFFFF


def verdict_records(
    prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str], seeds: Sequence[int]
) -> list[dict]:
    """What a kept judgement says it judged (`Verdicts` adds the texts)."""
    return [
        {"question": question_text(p), "a": x, "b": y, "seed": s}
        for p, x, y, s in zip(prompts, a, b, seeds, strict=True)
    ]


class VerdictReader:
    """A verdict label out of a judge's text: the pattern's group 'verdict', whitespace
    removed, looked up in ``values`` (P(A > B) per label). No match, a label not in
    ``values`` or two different labels (as Arena-Hard reads its judges) is unparseable."""

    def __init__(self, pattern: str, values: Mapping[str, float]):
        self.pattern = re.compile(pattern)
        if "verdict" not in self.pattern.groupindex:
            raise OracleError(f"oracle.verdict_pattern = {pattern!r}: no group 'verdict'")
        self.values = {"".join(k.split()): float(v) for k, v in values.items()}

    @classmethod
    def of(cls, pattern: str | None, values: Mapping[str, float] | None) -> VerdictReader:
        if pattern is None or not values:
            raise OracleError("reasoning mode needs oracle.verdict_pattern and verdict_values")
        return cls(pattern, values)

    def label(self, text: str) -> str | None:
        found = {
            "".join(m.group("verdict").split())
            for m in self.pattern.finditer(text)
            if m.group("verdict")
        }
        return found.pop() if len(found) == 1 else None

    def value(self, text: str) -> float | None:
        """P(A > B) the text's verdict stands for, or None when it has none."""
        label = self.label(text)
        return None if label is None else self.values.get(label)


def mean_verdict(values: Sequence[float | None]) -> float | None:
    """The mean of the parsed samples' P; None when none parsed."""
    parsed = [v for v in values if v is not None]
    return sum(parsed) / len(parsed) if parsed else None
