"""What a chat-model judge reads and how its verdict becomes P(A > B), shared by the
in-process `llm` judge (llm.py) and the `http` judge behind an OpenAI-compatible endpoint.

A judge prompt template holds {question}, {answer_a} and {answer_b}: a builtin one
(`builtin:NAME`, BUILTIN_TEMPLATES) or a user's text file. The judge answers with one of
oracle.choices (A, B and optionally a tie); P(A > B) = (p_A + p_tie/2) / (p_A + p_B + p_tie)
over the choice tokens' next-token probabilities. Their total (the verdict mass) says how
much the judge wanted to answer with a choice at all: a judge that would rather start with
another word gives a P that is mostly noise.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from inpo.data import Prompt
from inpo.judging.oracle import OracleError
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
    """Reads P(A > B) off each query's choice probabilities and keeps the verdict mass."""

    def __init__(self, choices: Sequence[str], where: str):
        self.choices, self.where = list(choices), where
        self.mass_sum, self.count = 0.0, 0

    def read(self, probs: Sequence[float]) -> float:
        self.mass_sum += sum(probs)
        self.count += 1
        return prob_from_choices(probs, self.where, self.choices)

    def totals(self) -> tuple[float, int]:
        return self.mass_sum, self.count
