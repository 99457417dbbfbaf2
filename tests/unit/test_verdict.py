"""The chat-model judges' shared parts (verdict.py): judge prompt templates, P(A > B) from
the choice tokens' probabilities, the verdict mass, the llm judge's single-token check, and
reasoning mode's verdicts read from text (labels, counts, seeds, config checks)."""

from __future__ import annotations

import pytest

from inpo.config import InpoConfig
from inpo.judging.actor import judge_options
from inpo.judging.llm import choice_token_id
from inpo.judging.oracle import Debiased, Oracle, OracleError, ParseCounts
from inpo.judging.verdict import (
    BUILTIN_TEMPLATES,
    Verdicting,
    VerdictReader,
    Verdicts,
    load_template,
    prob_from_choices,
    question_text,
    render_prompt,
    verdict_seed,
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
    # no reasoning: nothing of the sampling settings travels
    assert judge_options(oc) == {
        "verdicting": Verdicting(BUILTIN_TEMPLATES["mtbench"], ("A", "B", "C"))
    }


# --- reasoning mode: verdicts read from sampled text -------------------------------------

ARENA = InpoConfig().oracle  # the default pattern and values


def reader() -> VerdictReader:
    return VerdictReader(ARENA.verdict_pattern, ARENA.verdict_values)


@pytest.mark.parametrize(
    ("text", "p"),
    [
        ("A is right, B is wrong. My final verdict is [[A>>B]].", 1.0),
        ("Both fine, A a bit clearer. [[A>B]]", 0.75),
        ("[[ A = B ]]", 0.5),  # whitespace inside the brackets is ignored
        ("verdict: [[B>A]]\n", 0.25),
        ("[[B >> A]]", 0.0),
        ("Final: [[A>B]]. Again: [[A>B]]", 0.75),  # one label said twice is one verdict
        ("A is better.", None),  # no label
        ("[A>B]", None),  # single brackets are not the format
        ("Either [[A>B]] or [[B>A]]", None),  # two different labels, as Arena-Hard reads it
        ("[[A=>B]]", None),  # matched by the pattern, not a label it knows
        ("I think [[A>", None),  # cut before the label closed
    ],
)
def test_the_arena_hard_labels_and_what_is_unparseable(text, p):
    assert reader().value(text) == p


def test_a_user_pattern_and_values():
    r = VerdictReader(r"Winner: (?P<verdict>A|B|tie)", {"A": 0.9, "B": 0.1, "tie": 0.5})
    assert [r.value(t) for t in ("Winner: A", "Winner: tie", "Winner: C", "")] == [
        0.9,
        0.5,
        None,
        None,
    ]


def test_sampled_verdicts_average_what_parses_and_count_the_rest():
    tally = Verdicts(["A", "B"], "judge", reader(), max_unparseable=1.0, keep_texts=True)
    texts = [
        ["[[A>>B]]", "[[A>B]]"],  # 0.875
        ["[[B>A]]", "no idea, the answers"],  # the unparseable one is left out: 0.25
        ["hmm", "A is better because"],  # none: P = 0.5, counted as empty
    ]
    reasons = [["stop", "stop"], ["stop", "length"], ["stop", "length"]]
    about = [{"question": "q", "a": "x", "b": str(i), "seed": i} for i in range(3)]
    assert tally.read_samples(texts, reasons, about) == [0.875, 0.25, 0.5]
    assert tally.counts == ParseCounts(samples=6, unparsed=3, cut=2, empty=1)
    assert tally.totals() == (pytest.approx(1.5), 3)  # the share of samples that parsed
    kept = tally.take_kept()
    assert [k["values"] for k in kept] == [[1.0, 0.75], [0.25, None], [None, None]]
    assert kept[1] == about[1] | {
        "texts": texts[1],
        "finish_reasons": reasons[1],
        "values": [0.25, None],
    }
    assert tally.take_kept() == []  # handed out once


def test_too_many_unparseable_samples_in_a_call_is_one_line():
    tally = Verdicts(["A", "B"], "oracle.model = m", reader(), max_unparseable=0.5)
    assert tally.read_samples([["[[A>B]]", "no"]], [["stop", "length"]]) == [0.75]  # 50%
    with pytest.raises(OracleError) as err:
        tally.read_samples([["[[A>B]]", "no", "A wins, so"]], [["stop", "stop", "length"]])
    assert str(err.value) == (
        "oracle.model = m: 2 of 3 sampled verdicts have no verdict oracle.verdict_pattern "
        "reads (67% > oracle.max_unparseable_fraction = 0.5); 1 of them stopped at "
        "oracle.reasoning_tokens; one of them ends 'no'"
    )
    assert tally.counts == ParseCounts(5, 3, 2, 0)  # the failed call still counts


def test_parse_counts_add_up_across_actors_and_pass_through_debiasing():
    assert ParseCounts(4, 1, 1, 0).plus(ParseCounts(2, 2, 0, 1)) == (6, 3, 1, 1)
    assert ParseCounts(6, 3, 1, 1).minus(ParseCounts(4, 1, 1, 0)) == (2, 2, 0, 1)
    assert Debiased(Fixed([])).parse_counts() == ParseCounts()


def test_the_seed_is_the_querys_content_and_order_and_the_run_seed():
    s = verdict_seed(0, "Why?", "yes", "no")
    assert s == verdict_seed(0, "Why?", "yes", "no")  # a redone stage samples the same
    assert 0 <= s < 2**31  # vLLM adds a sample's index to it
    others = {
        verdict_seed(0, "Why?", "no", "yes"),  # the other order is its own query
        verdict_seed(1, "Why?", "yes", "no"),
        verdict_seed(0, [{"role": "user", "content": "Why?"}], "yes", "no"),
        verdict_seed(0, "Why", "?yes", "no"),  # no ambiguity at the seams
    }
    assert s not in others and len(others) == 4


def test_reasoning_mode_picks_its_template_and_sends_its_options():
    oc = InpoConfig.model_validate(
        {"oracle": {"backend": "llm", "model": "m", "reasoning_tokens": 64, "verdict_samples": 3}}
    ).oracle
    assert oc.template_spec == "builtin:reasoned"
    assert "[[A>>B]]" in BUILTIN_TEMPLATES["reasoned"]
    v = judge_options(oc, seed=7, keep_texts=True)["verdicting"]
    assert v.template == BUILTIN_TEMPLATES["reasoned"]
    assert (v.reasoning_tokens, v.samples, v.seed, v.keep_texts) == (64, 3, 7, True)
    assert (v.pattern, dict(v.values)) == (oc.verdict_pattern, oc.verdict_values)
    assert (v.temperature, v.max_unparseable) == (oc.verdict_temperature, 0.5)
    oc.prompt_template = "builtin:mtbench"  # an explicit template wins
    assert judge_options(oc)["verdicting"].template == BUILTIN_TEMPLATES["mtbench"]
    assert InpoConfig().oracle.template_spec == "builtin:pairwise"


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"verdict_pattern": r"\[\[(A|B)\]\]"}, "has no named group 'verdict'"),
        ({"verdict_pattern": r"(?P<verdict>A"}, "not a regular expression"),
        ({"verdict_values": {"A>B": 1.5}}, r"oracle.verdict_values: \{'A>B': 1.5\} not in"),
        ({"verdict_samples": 2, "verdict_temperature": 0}, "greedy samples are all the same"),
        ({"backend": "pairpm"}, "only llm and http judges write a verdict"),
        ({"max_unparseable_fraction": 1.5}, "max_unparseable_fraction"),
    ],
)
def test_config_refuses_a_reasoning_judge_it_cannot_read(fields, match):
    oracle = {"backend": "llm", "model": "m", "reasoning_tokens": 32} | fields
    with pytest.raises(ValueError, match=match):
        InpoConfig.model_validate({"oracle": oracle})
