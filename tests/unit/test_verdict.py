"""The chat-model judges' shared parts (verdict.py): judge prompt templates, P(A > B) from
the choice tokens' probabilities, the verdict mass, and the llm judge's single-token check."""

from __future__ import annotations

import pytest

from inpo.config import InpoConfig
from inpo.judging.actor import judge_options
from inpo.judging.llm import choice_token_id
from inpo.judging.oracle import Debiased, Oracle, OracleError
from inpo.judging.verdict import (
    BUILTIN_TEMPLATES,
    Verdicts,
    load_template,
    prob_from_choices,
    question_text,
    render_prompt,
)
from inpo.models.tiny import build_tokenizer


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_builtin_templates_hold_every_placeholder(name):
    text = load_template(f"builtin:{name}")
    assert all("{" + p + "}" in text for p in ("question", "answer_a", "answer_b"))


def test_unknown_builtin_names_the_ones_there_are():
    with pytest.raises(OracleError, match="builtin:nope: no such builtin \\(builtin:pairwise"):
        load_template("builtin:nope")


def test_a_template_file_missing_a_placeholder_is_one_line_naming_both(tmp_path):
    path = tmp_path / "judge.txt"
    path.write_text("Q: {question}\nA: {answer_a}\nWhich? {answer_c}")
    with pytest.raises(OracleError) as err:
        load_template(str(path))
    assert str(err.value) == (
        f"oracle.prompt_template = {path}: the file lacks the placeholder {{answer_b}} (a judge "
        "template holds {question}, {answer_a} and {answer_b})"
    )
    assert "\n" not in str(err.value)
    with pytest.raises(OracleError, match=f"{tmp_path / 'none.txt'}: cannot read it"):
        load_template(str(tmp_path / "none.txt"))


def test_a_user_template_is_filled_once_and_other_braces_stay(tmp_path):
    path = tmp_path / "judge.txt"
    path.write_text('{"q": "{question}"} {answer_a} | {answer_b} {not_a_field}')
    text = load_template(str(path))
    # a placeholder inside a response is text, not a field to fill again
    assert render_prompt(text, "Why?", "{answer_b}", "two") == (
        '{"q": "Why?"} {answer_b} | two {not_a_field}'
    )


def test_the_question_is_a_single_user_turn_itself_and_a_conversation_turn_by_turn():
    system = {"role": "system", "content": "Be brief."}
    user = {"role": "user", "content": "Name a fruit."}
    assert question_text("Name a fruit.") == question_text([system, user]) == "Name a fruit."
    chat = [user, {"role": "assistant", "content": "Apple."}, {"role": "user", "content": "And?"}]
    assert question_text(chat) == (
        "\n\n<turn> user\n Name a fruit.\n<turn> assistant\n Apple.\n<turn> user\n And?\n"
    )


def test_http_keeps_its_prompt():
    rendered = render_prompt(BUILTIN_TEMPLATES["pairwise"], "hi", "yes", "no")
    assert rendered.endswith(
        "[CONTEXT] hi\n[RESPONSE A] yes\n[RESPONSE B] no\n\n"
        "Which response is better? Answer with a single letter, A or B.\nAnswer:"
    )


@pytest.mark.parametrize(
    ("probs", "p"),
    [
        ([0.3, 0.1], 0.75),  # the rest of the vocabulary does not count
        ([0.6, 0.0], 1.0),
        ([0.0, 0.2], 0.0),
        ([0.2, 0.2, 0.6], 0.5),  # a tie's mass splits evenly
        ([0.4, 0.1, 0.5], 0.65),
        ([0.0, 0.0, 0.3], 0.5),
    ],
)
def test_p_from_choice_probabilities(probs, p):
    assert prob_from_choices(probs, "judge", ["A", "B", "C"][: len(probs)]) == pytest.approx(p)


def test_no_mass_on_any_choice_is_an_error():
    with pytest.raises(OracleError, match=r"judge: the judge gives no probability to any of"):
        prob_from_choices([0.0, 0.0], "judge", ["A", "B"])


class Fixed(Oracle):
    """Answers with fixed choice probabilities [p_A, p_B] per call, in slot order."""

    position_biased = True

    def __init__(self, probs):
        self.tally = Verdicts(["A", "B"], "fixed")
        self.probs = probs

    def prob(self, prompts, a, b):
        return [self.tally.read(self.probs[x < y]) for x, y in zip(a, b, strict=True)]

    def verdicts(self):
        return self.tally.totals()


def test_verdict_mass_is_the_mean_choice_probability_over_both_orders():
    assert Fixed([]).verdict_mass() is None
    judge = Debiased(Fixed({False: [0.6, 0.2], True: [0.1, 0.1]}))
    assert judge.prob(["q"], ["a"], ["b"]) == [pytest.approx((0.5 + 1 - 0.75) / 2)]
    assert judge.verdicts() == (pytest.approx(1.0), 2)
    assert judge.verdict_mass() == pytest.approx(0.5)


def test_choices_must_be_single_tokens_after_the_prefix():
    tok = build_tokenizer()  # one token per character
    prefix = tok.apply_chat_template(
        [{"role": "user", "content": "Which?"}], tokenize=False, add_generation_prompt=True
    )
    assert choice_token_id(tok, prefix, "A", "oracle.model = m") == tok.convert_tokens_to_ids("A")
    with pytest.raises(OracleError) as err:
        choice_token_id(tok, prefix, "Yes", "oracle.model = m")
    assert str(err.value) == (
        "oracle.model = m: oracle.choices 'Yes' is not one token after the judge prompt; the "
        f"judge tokenizer ends the prompt with it as ['Y', 'e', 's'] (ids {tok.encode('Yes')})"
    )


@pytest.mark.parametrize("choices", [["A"], ["A", "B", "C", "D"], ["A", "A"], ["A", ""]])
def test_config_refuses_choices_that_cannot_be_a_verdict(choices):
    with pytest.raises(ValueError, match="oracle.choices"):
        InpoConfig.model_validate({"oracle": {"choices": choices}})


def test_llm_backend_needs_a_model_and_reads_its_template_in_the_driver(tmp_path):
    with pytest.raises(ValueError, match="oracle.model = None: required by oracle.backend=llm"):
        InpoConfig.model_validate({"oracle": {"backend": "llm"}})
    bad = tmp_path / "t.txt"
    bad.write_text("{question} {answer_a}")
    oc = InpoConfig.model_validate(
        {"oracle": {"backend": "llm", "model": "m", "prompt_template": str(bad)}}
    ).oracle
    with pytest.raises(OracleError, match="lacks the placeholder \\{answer_b\\}"):
        judge_options(oc)
    oc.prompt_template = "builtin:mtbench"
    oc.choices = ["A", "B", "C"]
    assert judge_options(oc) == {
        "template": BUILTIN_TEMPLATES["mtbench"],
        "choices": ["A", "B", "C"],
    }
