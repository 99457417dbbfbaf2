"""The actor pool's rules (`inpo.run.pool`), on stand-in groups: a group is taken again only
with its key and while alive, at most one idle group per role, and nothing outside
`keep_actors`."""

from __future__ import annotations

import pytest

from inpo.plan import pool as pool_module
from inpo.plan.pool import ActorPool, current_pool, keep_actors


class Group:
    def __init__(self) -> None:
        self.actors: list = []  # ActorGroup.shutdown kills these (none here)
        self.shut = False


@pytest.fixture
def alive(monkeypatch):
    state = {"alive": True}
    monkeypatch.setattr(pool_module, "_alive", lambda group: state["alive"])
    return state


def test_a_group_is_taken_again_only_with_its_key(alive):
    pool, g = ActorPool(), Group()
    pool.give("generator", ("a",), g)
    assert pool.take("generator", ("b",)) is None  # and g is dropped to make room
    assert pool.idle == {}
    pool.give("generator", ("a",), g)
    assert pool.take("learner", ("a",)) is None
    assert pool.take("generator", ("a",)) is g
    assert pool.take("generator", ("a",)) is None  # taken: not idle any more
    assert pool.reused == 1


def test_a_dead_group_is_not_taken(alive):
    pool, g = ActorPool(), Group()
    pool.give("learner", ("k",), g)
    alive["alive"] = False
    assert pool.take("learner", ("k",)) is None
    assert pool.reused == 0


def test_one_idle_group_per_role(alive):
    pool, first, second = ActorPool(), Group(), Group()
    pool.give("generator", ("a",), first)
    pool.give("generator", ("b",), second)
    assert pool.take("generator", ("a",)) is None
    pool.give("generator", ("b",), second)
    assert pool.take("generator", ("b",)) is second


def test_keep_actors_scopes_the_pool():
    outer = current_pool()  # the suite's own pool, when the e2e tests run in this session
    with keep_actors() as pool:
        assert current_pool() is pool and pool is not outer
        pool.give("generator", ("a",), Group())
    assert current_pool() is outer
    assert pool.idle == {}  # shut down on exit


def test_a_model_signature_ignores_the_weights_only(tiny_model, tmp_path):
    import shutil

    from inpo.models import model_signature

    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    (copy / "model.safetensors").write_bytes(b"other weights")
    assert model_signature(copy) == model_signature(tiny_model)
    config = (copy / "config.json").read_text()
    (copy / "config.json").write_text(
        config.replace('"num_hidden_layers": 2', '"num_hidden_layers": 3')
    )
    assert model_signature(copy) != model_signature(tiny_model)


def test_a_policy_the_learner_saved_signs_as_its_base_model(tiny_model, tmp_path):
    """A run that starts its generators at a later policy (a resumed run at its sync)
    takes the idle ones of an earlier run of the base model: the saved directory differs
    only by the tokenizer's load flags and inpo's marker file."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from inpo.learning.rank import write_hf_policy
    from inpo.models import model_signature

    tensors = load_file(str(tiny_model / "model.safetensors"))
    out = tmp_path / "policy"
    write_hf_policy(tensors, AutoConfig.from_pretrained(tiny_model), str(tiny_model), out)
    assert (tiny_model / "inpo_tiny.json").exists() and not (out / "inpo_tiny.json").exists()
    assert model_signature(out) == model_signature(tiny_model)
    chat = (out / "chat_template.jinja").read_text()
    (out / "chat_template.jinja").write_text(chat.replace("<|im_end|>", "<|end|>"))
    assert model_signature(out) != model_signature(tiny_model)
