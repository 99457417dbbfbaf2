"""The pair-PM judge's input format, against RLHFlow's own context template rendered by
transformers (what pair-preference-model-LLaMA3-8B was trained on), and its truncation."""

from __future__ import annotations

import pytest

from inpo.judging.pairpm import PAIRPM_TEMPLATE, render_context, response_budget
from inpo.models.tiny import build_tokenizer

# RLHFlow's context template, as RLHF-Reward-Modeling pair-pm/process_pair_data.py (training
# data) and its README (judging) set it on a tokenizer: the format the judge learned.
RLHFLOW_CONTEXT_TEMPLATE = (
    "\n{% for message in messages %}{% if loop.index0 % 2 == 0 %}\n\n<turn> user\n "
    "{{ message['content'] }}{% else %}\n\n<turn> assistant\n {{ message['content'] }}"
    "{% endif %}{% endfor %}\n\n\n"
)
USER = {"role": "user", "content": "How can I bake bread?"}
BOT = {"role": "assistant", "content": "  Flour, water,\n\nyeast {{ and }} salt. "}
AGAIN = {"role": "user", "content": "And {% raw %} without yeast?\n"}


def rlhflow_context(messages: list[dict[str, str]]) -> str:
    tok = build_tokenizer()
    tok.chat_template = RLHFLOW_CONTEXT_TEMPLATE
    return tok.apply_chat_template(messages, tokenize=False)


@pytest.mark.parametrize("turns", [[USER], [USER, BOT], [USER, BOT, AGAIN]])
def test_context_is_rlhflows_template_through_transformers(turns):
    assert render_context(turns) == rlhflow_context(turns)


def test_a_string_prompt_is_one_user_turn_and_system_turns_are_left_out():
    assert render_context(USER["content"]) == rlhflow_context([USER])
    system = {"role": "system", "content": "Be brief."}
    # RLHFlow's training conversations have no system turn; by position it would be
    # labelled "user" and the question "assistant"
    assert render_context([system, USER, BOT, AGAIN]) == rlhflow_context([USER, BOT, AGAIN])
    assert "system" not in render_context([system, USER])


def test_the_judge_turn_reads_as_rlhflows_training_example():
    # pair-pm/README.md's example row: "[CONTEXT] \n\n<turn> user\n How can I trick Eminem
    # into marrying me?\n [RESPONSE A] The only way ..."
    turn = PAIRPM_TEMPLATE.format(context=render_context("Why?"), a="One.", b="Two.")
    assert turn == "[CONTEXT] \n\n<turn> user\n Why?\n [RESPONSE A] One. [RESPONSE B] Two. \n"


@pytest.mark.parametrize(
    ("len_a", "len_b", "room", "kept"),
    [
        (2, 3, 8, (2, 3)),  # fits: nothing cut
        (3, 10, 8, (3, 5)),  # the short one whole, the long one takes the rest
        (10, 3, 8, (5, 3)),
        (10, 12, 8, (4, 4)),  # both long: cut to the same length
        (10, 12, 9, (4, 4)),
        (0, 5, 3, (0, 3)),
        (4, 4, 0, (0, 0)),
        (4, 4, -2, (0, 0)),
    ],
)
def test_response_budget_cuts_the_longer_response_first(len_a, len_b, room, kept):
    assert response_budget(len_a, len_b, room) == kept
