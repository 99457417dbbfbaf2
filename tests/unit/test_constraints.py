"""The builtin instruction-following preference: each constraint kind on hand-written
responses, the prompt generator's round trip and determinism, and oracle values by hand."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from inpo.judging.constraints import (
    PARTIAL_WEIGHT,
    Constraint,
    ConstraintPreference,
    constraint_pass_rate,
    constraint_score,
    parse_constraint,
    pass_rates_by_kind,
    sentences,
    words,
)
from inpo.judging.oracle import OracleError
from inpo.prompts import DEFAULT_KINDS, KINDS, _tasks, constraint_prompts


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def degrees(c: Constraint, cases: dict[str, float]) -> None:
    for response, want in cases.items():
        assert c.degree(response) == pytest.approx(want), response
        assert c.check(response) == (want == 1.0), response


def test_words_and_sentences():
    assert words("Hello, world! It's a well-known fact (really).") == [
        "Hello",
        "world",
        "It's",
        "a",
        "well-known",
        "fact",
        "really",
    ]
    assert words("  ** -- ...") == []
    assert sentences("It is 3.5 km deep. Really?! Yes\n- a list item") == [
        "It is 3.5 km deep.",
        "Really?!",
        "Yes",
        "- a list item",
    ]


def test_max_words():
    c = Constraint("max_words", n=10)
    degrees(
        c,
        {
            "The sea is wide, deep and blue.": 1.0,  # 7 words, commas are not words
            " ".join(["word"] * 10) + ".  \n": 1.0,  # exactly at the limit, trailing space
            " ".join(["word"] * 20): 0.5,
            # cut at the token limit mid-sentence: still too long
            "The sea is a vast body of salt water that covers most of": 10 / 13,
            "": 0.0,  # an empty answer does not trivially obey a limit
            "   \n ": 0.0,
        },
    )


def test_lowercase():
    c = Constraint("lowercase")
    degrees(
        c,
        {
            "the sea is calm today.   ": 1.0,
            "it's 5 o'clock, and the café is open!": 1.0,
            "I like the sea.": 10 / 11,  # the uppercase 'I' alone breaks it
            "The Sea": 4 / 6,
            "SHOUTING": 0.0,
            "42": 0.0,  # no letters written at all
            "": 0.0,
        },
    )


def test_no_commas():
    c = Constraint("no_commas")
    degrees(
        c,
        {
            "The sea is wide and deep.\n": 1.0,
            "The sea is wide, deep, and blue": 1 / 3,
            "one，two": 0.5,  # full-width comma
            "   ": 0.0,
        },
    )


def test_keyword():
    c = Constraint("keyword", word="water")
    degrees(
        c,
        {
            "Water is everywhere.": 1.0,  # case does not matter
            "It is full of water!": 1.0,  # punctuation attached
            "The sea is full of 'water'": 1.0,
            "The waters are deep.": 0.5,  # an inflected form is close, not the word
            "It lies underwater.": 0.0,
            "The sea is blue.": 0.0,
            "": 0.0,
        },
    )


def test_forbidden_word():
    c = Constraint("forbidden_word", word="sea")
    degrees(
        c,
        {
            "The ocean is wide and deep.  ": 1.0,
            "It is a season of seaside fun.": 1.0,  # other words that start with it are fine
            "The Sea is wide.": 0.5,  # any case
            "The sea's waves, the seas.": 1 / 3,  # possessive and plural count
            "Sea, sea, SEA!": 0.25,
            "": 0.0,  # saying nothing is not how to avoid a word
        },
    )
    city = Constraint("forbidden_word", word="city")
    assert city.degree("Cities never sleep.") == 0.5
    assert city.degree("A citizen walks.") == 1.0


def test_start_word():
    c = Constraint("start_word", word="Yes")
    degrees(
        c,
        {
            "Yes, the sea is wide.": 1.0,
            "  yes it is": 1.0,  # leading whitespace, other case
            "**Yes**, of course.": 1.0,  # markdown is not a word
            '"Yes!" she said.': 1.0,
            "Well, yes.": 0.5,
            "I think so, yes": 1 / 4,
            "Yesterday was fine.": 0.0,  # not the word
            "No.": 0.0,
            "": 0.0,
        },
    )


def test_one_sentence():
    c = Constraint("one_sentence")
    degrees(
        c,
        {
            "The sea is big.": 1.0,
            "  The sea is 3.5 km deep!  \n": 1.0,  # a decimal point does not end it
            'He said "hello."': 1.0,
            "The sea is big. It is blue.": 0.5,
            "Hello! How are you? Fine.": 1 / 3,
            "The sea is big\nand blue.": 0.5,  # a line break ends a segment
            "The sea is a vast body of salt water that": 0.5,  # cut off: not finished
            "...": 0.0,
        },
    )


def test_constraint_validation():
    with pytest.raises(ValueError, match="unknown"):
        Constraint("uppercase")
    with pytest.raises(ValueError, match="n >= 1"):
        Constraint("max_words")
    with pytest.raises(ValueError, match="single word"):
        Constraint("keyword", word="two words")


# --- parsing and the prompt generator -------------------------------------------------


def test_parse_every_instruction_and_string_prompts():
    assert parse_constraint("Describe the sea. Answer in at most 12 words.") == Constraint(
        "max_words", n=12
    )
    assert parse_constraint("Describe rain.  Include the word 'Umbrella' in your answer.") == (
        Constraint("keyword", word="Umbrella")
    )
    chat = [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "Hi. Do not use any commas in your answer."},
    ]
    assert parse_constraint(chat) == Constraint("no_commas")  # the user turn, not the system
    turns = [
        {"role": "user", "content": "Describe the sea. Answer in one sentence."},
        {"role": "assistant", "content": "The sea is big."},
        {"role": "user", "content": "Now rain. Answer in at most 9 words."},
    ]
    assert parse_constraint(turns) == Constraint("max_words", n=9)  # the latest request
    assert parse_constraint("Describe the sea.") is None
    assert parse_constraint([{"role": "assistant", "content": "Answer in one sentence."}]) is None
    with pytest.raises(OracleError, match="2 constraints"):
        parse_constraint("Hi. Answer in one sentence. Answer in at most 9 words.")
    for c in [
        Constraint("max_words", n=8),
        Constraint("lowercase"),
        Constraint("no_commas"),
        Constraint("keyword", word="banana"),
        Constraint("forbidden_word", word="sea"),
        Constraint("start_word", word="Honestly"),
        Constraint("one_sentence"),
    ]:
        assert parse_constraint(f"Describe the sea. {c.instruction()}") == c


def test_every_generated_prompt_parses_to_its_constraint():
    tasks = {t.text for t in _tasks()}
    # every kind, and the most prompts it can make: each task with each kind once
    prompts = constraint_prompts(len(tasks) * len(KINDS), kinds=KINDS)
    texts = [p[0]["content"] for p in prompts]
    assert len(set(texts)) == len(texts) == len(tasks) * len(KINDS)
    seen = Counter()
    for p, text in zip(prompts, texts, strict=True):
        assert len(p) == 1 and p[0]["role"] == "user"
        c = parse_constraint(p)
        assert c is not None and parse_constraint(text) == c
        # the prompt is exactly a known task, a space and the instruction of that constraint
        task, sep, rest = text.partition(" " + c.instruction())
        assert sep and rest == "" and task in tasks, text
        seen[c.kind] += 1
    assert seen == {k: len(tasks) for k in KINDS}
    with pytest.raises(ValueError, match="must lie in"):
        constraint_prompts(len(tasks) * len(KINDS) + 1, kinds=KINDS)
    with pytest.raises(ValueError, match="must lie in"):
        constraint_prompts(len(tasks) * len(DEFAULT_KINDS) + 1)
    with pytest.raises(ValueError, match="choose from"):
        constraint_prompts(4, kinds=["uppercase"])
    # a forbidden word is the task's own subject, which a model says by habit
    for p in constraint_prompts(kinds=["forbidden_word"])[:50]:
        c = parse_constraint(p)
        assert c.word in p[0]["content"].lower().replace(c.instruction().lower(), "")


def test_generator_is_deterministic_balanced_and_large_enough():
    default = constraint_prompts()
    assert len({p[0]["content"] for p in default}) >= 400
    assert constraint_prompts(64, seed=3) == constraint_prompts(64, seed=3)
    assert constraint_prompts(64, seed=3) != constraint_prompts(64, seed=4)
    # a prefix of a longer list: train and held-out slices of one call never overlap
    assert constraint_prompts(128, seed=3)[:64] == constraint_prompts(64, seed=3)
    assert "lowercase" not in DEFAULT_KINDS and set(DEFAULT_KINDS) < set(KINDS)
    kinds = Counter(parse_constraint(p).kind for p in constraint_prompts(60, seed=1))
    assert kinds == {k: 10 for k in DEFAULT_KINDS}
    only = constraint_prompts(20, seed=1, kinds=["lowercase", "no_commas"])
    assert Counter(parse_constraint(p).kind for p in only) == {"lowercase": 10, "no_commas": 10}
    words_asked = {parse_constraint(p).n for p in default} - {0}
    assert min(words_asked) >= 8 and max(words_asked) <= 20


# --- the oracle -----------------------------------------------------------------------

WORDS10 = "Describe the sea. Answer in at most 10 words."
WATER = "Describe rain. Include the word 'water' in your answer."


def test_scores_and_probabilities_by_hand():
    oracle = ConstraintPreference(sharpness=4.0)
    assert oracle.has_scores and not oracle.position_biased
    short, long_ = "The sea is wide.", " ".join(["word"] * 20)
    wet, dry, wetish = "Rain is water.", "Rain is cold.", "Rain fills the waters."
    prompts = [WORDS10, WORDS10, WATER, WATER, WATER]
    scores = oracle.scores(prompts, [short, long_, wet, dry, wetish])
    assert scores == [1.0, PARTIAL_WEIGHT * 0.5, 1.0, 0.0, PARTIAL_WEIGHT * 0.5]
    probs = oracle.prob(
        [WORDS10, WORDS10, WATER, WATER, WATER],
        [short, long_, wet, wetish, dry],
        [long_, short, dry, dry, dry],
    )
    assert probs == pytest.approx([sig(3.0), sig(-3.0), sig(4.0), sig(1.0), 0.5])
    # equal degree is exactly 0.5: no tie-breaker on length or anything else
    assert oracle.prob([WORDS10, WATER], ["Short.", "water"], ["Sea is wide here.", "Water!"]) == [
        0.5,
        0.5,
    ]
    # any success beats any near miss clearly: 11 words against a limit of 10
    [p] = oracle.prob([WORDS10], ["a b c"], [" ".join(["w"] * 11)])
    assert p == pytest.approx(sig(4.0 * (1.0 - PARTIAL_WEIGHT * 10 / 11)))
    assert p > 0.85
    assert constraint_score("Hi. Do not use any commas in your answer.", "a, b") == 0.25


def test_prompt_without_constraint_is_an_error():
    oracle = ConstraintPreference(sharpness=4.0)
    prompt = [{"role": "user", "content": "Write one line about the sea, please, " + "x" * 80}]
    with pytest.raises(OracleError, match="'Write one line about the sea, please, x+' carries no"):
        oracle.prob([prompt], ["a"], ["b"])
    with pytest.raises(OracleError, match="carries no constraint"):
        oracle.scores(["Describe the sea."], ["a"])
    with pytest.raises(OracleError, match="carries no constraint"):
        constraint_pass_rate([WORDS10, "Describe the sea."], ["a", "b"])


def test_pass_rates():
    prompts = [WORDS10, WORDS10, WATER, WATER, "Hi. Answer in one sentence."]
    responses = ["Short.", " ".join(["w"] * 11), "Water.", "Rain.", "One. Two."]
    assert constraint_pass_rate(prompts, responses) == pytest.approx(2 / 5)
    assert pass_rates_by_kind(prompts, responses) == {
        "max_words": 0.5,
        "keyword": 0.5,
        "one_sentence": 0.0,
    }
    assert list(pass_rates_by_kind(prompts, responses)) == ["max_words", "keyword", "one_sentence"]
    with pytest.raises(ValueError):
        constraint_pass_rate([], [])
