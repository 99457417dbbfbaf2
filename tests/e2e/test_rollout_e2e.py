"""Generators (real vLLM CPU engines in Ray actors) and verified weight sync."""

from __future__ import annotations

import os
import shutil
import signal

import pytest
from helpers import eos_is_not_end_of_turn, hf_logp, inpo_here, write_pairs
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from inpo.config import load_config
from inpo.data import probe_sequence, prompt_token_ids, tokenize_pairs
from inpo.errors import ActorError
from inpo.generation.generator import GeneratorGroup, SyncError
from inpo.generation.stage import request_seed
from inpo.learning.stage import cache_logps, start_learner
from inpo.plan.placement import plan_placement
from inpo.rows import read_pairs

PROMPTS = [
    [{"role": "user", "content": f"Tell me a story about the number {i}."}] for i in range(6)
]


def start(model, n, cfg):
    slots = plan_placement([], {"generator": (n, 1)}).slots["generator"]
    return GeneratorGroup(str(model), cfg, "cpu", slots)


@pytest.fixture(scope="module")
def two_generators(tiny_model, ray_cluster):
    group = start(tiny_model, 2, load_config())
    yield group
    group.shutdown()


def sample(group, tok, prompts, ids, max_tokens=120, seed=0, n=4):
    token_ids = [prompt_token_ids(tok, p) for p in prompts]
    seeds = [request_seed(seed, "test", i) for i in ids]
    return group.generate(token_ids, seeds, n=n, temperature=1.0, top_p=1.0, max_tokens=max_tokens)


def test_k_samples_stop_at_eos_or_max_tokens(two_generators, tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    out = sample(two_generators, tok, PROMPTS, range(6))
    assert len(out) == 6 and all(len(samples) == 4 for samples in out)
    reasons = {s["finish_reason"] for samples in out for s in samples}
    assert reasons == {"stop", "length"}  # a random tiny model emits EOS about 1 in 98 tokens
    for s in (s for samples in out for s in samples):
        if s["finish_reason"] == "length":
            assert len(s["token_ids"]) == 120
        else:
            assert s["token_ids"][-1] == tok.eos_token_id and len(s["token_ids"]) <= 120
    # each sample's log-prob is the one transformers gives its tokens
    for p, samples in zip(PROMPTS, out, strict=True):
        ids = prompt_token_ids(tok, p)
        for s in samples[:2]:
            want = hf_logp(tiny_model, ids + s["token_ids"], len(ids))
            assert s["logp"] == pytest.approx(want, abs=1e-3)


def test_generation_stops_at_the_end_of_turn_that_is_not_eos(tiny_model, ray_session, tmp_path):
    """A chat template whose turns end with a token that is neither the tokenizer's EOS nor
    in generation_config.json (Llama 3's <|eot_id|>): generation stops there."""
    model = eos_is_not_end_of_turn(shutil.copytree(tiny_model, tmp_path / "model"))
    tok = AutoTokenizer.from_pretrained(model)
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn != tok.eos_token_id
    group = start(model, 1, load_config())
    try:
        out = sample(group, tok, PROMPTS, range(6))
    finally:
        group.shutdown()
    samples = [s for x in out for s in x]
    stops = {end_of_turn, tok.eos_token_id}
    for s in samples:
        assert not stops & set(s["token_ids"][:-1])  # nothing runs on past a stop token
        assert (s["finish_reason"] == "stop") == (s["token_ids"][-1] in stops)
    assert any(s["token_ids"][-1] == end_of_turn for s in samples)


def test_same_seed_same_samples_whatever_the_batch_or_generator(two_generators, tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    full = sample(two_generators, tok, PROMPTS, range(6), max_tokens=16)
    again = sample(two_generators, tok, PROMPTS, range(6), max_tokens=16)
    assert full == again
    # prompts 3..5 were served by generator 1; alone they are split 2/1 across generators
    tail = sample(two_generators, tok, PROMPTS[3:], range(3, 6), max_tokens=16)
    assert [[s["token_ids"] for s in x] for x in tail] == [
        [s["token_ids"] for s in x] for x in full[3:]
    ]
    other = sample(two_generators, tok, PROMPTS, range(6), max_tokens=16, seed=1)
    assert other != full


def _train_one_step(cfg, model, out, pairs_path, total_steps=1, keep=False):
    """(learner, tokenizer, hash of the saved tensors) after one step from ``model`` (of
    a schedule of ``total_steps``); with ``keep`` rank 0 holds the policy for a sync."""
    tok = AutoTokenizer.from_pretrained(model)
    pairs = tokenize_pairs(tok, read_pairs(pairs_path))
    learner = start_learner(cfg, "cpu")
    learner.set_data(pairs, tok.pad_token_id)
    learner.set_cache(cache_logps(learner, pairs, str(model), str(model), out / "logps"))
    learner.build_engine(str(model), total_steps=total_steps)
    learner.train_step(0)
    digest = learner.save_policy(str(out / "policy"), keep=keep)
    return learner, tok, digest


@pytest.mark.parametrize("tied", [False, True])
def test_train_sync_verify_and_catch_a_sabotaged_sync(
    tied, two_generators, tiny_model, tiny_tied_model, tmp_path, ray_session
):
    model = tiny_tied_model if tied else tiny_model
    cfg = load_config(
        None, ["learner.lr=1e-2", "learner.global_batch_size=8", "learner.heldout_fraction=0"]
    )
    learner, tok, digest = _train_one_step(
        cfg, model, tmp_path, write_pairs(tmp_path / "p.jsonl", 8)
    )
    try:
        group = start(model, 1, cfg) if tied else two_generators
        probe = probe_sequence(tok)
        before = group.scores(*probe)
        expected = learner.probe_logp(*probe)
        assert abs(expected - before[0]) > 1e-2  # one step moved the probe
        # Sabotage first, while the generator still holds pi_t: a wrong head, then
        # (after a good sync) the old weights.
        broken = tmp_path / "broken"
        shutil.copytree(tmp_path / "policy", broken)
        state = load_file(str(broken / "model.safetensors"))
        if tied:  # what a naive save does: no explicit lm_head, vLLM keeps its old head
            del state["lm_head.weight"]
        else:
            state["lm_head.weight"] = state["lm_head.weight"] * 1.5
        save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(SyncError, match="generation.sync_tolerance"):
            group.sync(str(broken), probe, expected)
        with pytest.raises(SyncError, match="loaded other weights than the learner saved"):
            group.sync(str(broken), probe, expected, digest)

        info = group.sync(str(tmp_path / "policy"), probe, expected, digest)
        assert info["sync_max_token_diff"] < 1e-4 and info["sync_seconds"] > 0

        with pytest.raises(SyncError, match=r"generator 0 does not hold the learner's weights"):
            group.sync(str(model), probe, expected)
        group.sync(str(tmp_path / "policy"), probe, expected)  # and back in sync
        if tied:
            group.shutdown()
    finally:
        learner.shutdown()


@pytest.mark.parametrize("tied", [False, True])
def test_a_sync_in_memory_loads_what_the_file_sync_loads_and_is_checked_alike(
    tied, two_generators, tiny_model, tiny_tied_model, tmp_path, ray_session
):
    """Learner rank 0 broadcasts the policy it just saved (generation.sync_in_memory): the
    generators hash exactly the tensors the file sync loads (the learner's hash of the
    saved policy; tied: with the explicit lm_head) and score the probe bit for bit alike.
    Sent once per save. Weights other than the saved ones (a later step's, sent in their
    place) are caught by the hash, and by the probe when the hash is theirs."""
    model = tiny_tied_model if tied else tiny_model
    cfg = load_config(
        None, ["learner.lr=1e-2", "learner.global_batch_size=8", "learner.heldout_fraction=0"]
    )
    learner, tok, digest = _train_one_step(
        cfg, model, tmp_path, write_pairs(tmp_path / "p.jsonl", 8), total_steps=2, keep=True
    )
    group = start(model, 1, cfg) if tied else two_generators
    try:
        probe = probe_sequence(tok)
        expected = learner.probe_logp(*probe)
        names = {s.name for s in learner.get([learner.actors[0].outgoing_specs.remote()])[0]}
        assert names == set(load_file(str(tmp_path / "policy" / "model.safetensors")))
        assert "lm_head.weight" in names  # tied: the explicit copy, as in the files
        # pi_t as a reload needs it to go back there (tied: with an explicit lm_head), and
        # its probe log-prob under transformers
        base = shutil.copytree(model, tmp_path / "base")
        state = load_file(str(base / "model.safetensors"))
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"].clone())
        save_file(state, str(base / "model.safetensors"), metadata={"format": "pt"})
        at_base = hf_logp(model, *probe)
        group.sync(str(base), probe, at_base)  # whatever an earlier test left
        files = group.sync(str(tmp_path / "policy"), probe, expected, digest)
        by_files = group.scores(*probe)
        group.sync(str(base), probe, at_base)

        assert learner.outgoing_digest() == digest
        memory = group.sync_from(learner, probe, expected, digest)  # hash checked inside
        assert (files["sync_via"], memory["sync_via"]) == ("files", "memory")
        assert group.scores(*probe) == by_files
        assert memory["sync_max_token_diff"] < 1e-4
        assert learner.outgoing_digest() is None  # one sync per save: nothing kept

        learner.train_step(1)
        later = learner.call("gather_policy")[0]
        with pytest.raises(SyncError, match="loaded other weights than the learner sent"):
            group.sync_from(learner, probe, expected, digest)
        learner.call("gather_policy")
        with pytest.raises(SyncError, match="generation.sync_tolerance"):
            group.sync_from(learner, probe, expected, later)
        group.sync(str(base), probe, at_base)  # leave the fixture on its model
        if tied:  # a generator of its own to kill: a dead one is named, rank 0 not stuck
            learner.call("gather_policy")
            os.kill(group.placement[0]["pid"], signal.SIGKILL)
            with pytest.raises(ActorError, match="generator 0 died"):
                group.sync_from(learner, probe, expected, later)
            assert learner.outgoing_digest() is None  # its broadcast ended: dropped
    finally:
        if tied:
            group.shutdown()
        learner.shutdown()


def test_a_reload_that_changed_nothing_is_caught_even_for_a_tiny_update(
    two_generators, tiny_model, tmp_path, ray_session
):
    """An update far below the probe tolerance: only the tensor hash can tell the stale
    weights (the directory the generators already hold) from the learner's."""
    cfg = load_config(
        None, ["learner.lr=1e-7", "learner.global_batch_size=8", "learner.heldout_fraction=0"]
    )
    learner, tok, digest = _train_one_step(
        cfg, tiny_model, tmp_path, write_pairs(tmp_path / "p.jsonl", 8)
    )
    try:
        probe = probe_sequence(tok)
        expected = learner.probe_logp(*probe)
        two_generators.sync(str(tiny_model), probe, expected)  # the probe alone cannot tell
        with pytest.raises(SyncError, match="generator 0 loaded other weights"):
            two_generators.sync(str(tiny_model), probe, expected, digest)
        two_generators.sync(str(tmp_path / "policy"), probe, expected, digest)
        two_generators.sync(str(tiny_model), probe, expected)  # leave the fixture as it was
    finally:
        learner.shutdown()


def test_generate_and_judge_commands(tmp_path, tiny_model, ray_session):
    """`inpo generate` then `inpo judge`, as a user runs them (parsing included)."""
    import json

    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": p} for p in PROMPTS] + [{"prompt": "x" * 400}]  # last one too long
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gens, pairs = tmp_path / "generations.jsonl", tmp_path / "pairs.jsonl"

    def cli(*args):
        r = inpo_here(*args)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout

    out = cli(
        "generate",
        "--prompts",
        str(prompts),
        "--policy",
        str(tiny_model),
        "--out",
        str(gens),
        "generation.num_samples=4",
        "generation.max_new_tokens=12",
    )
    assert "skipped 1 prompts over data.max_prompt_tokens" in out
    got = [json.loads(line) for line in gens.read_text().splitlines()]
    assert [g["prompt_id"] for g in got] == list(range(6))
    assert {"prompt", "responses", "finish_reasons", "logps"} <= got[0].keys()
    assert all(len(g["responses"]) == len(g["logps"]) == 4 for g in got)
    out = cli("judge", "--generations", str(gens), "--out", str(pairs))
    summary = json.loads((tmp_path / "pairs_summary.json").read_text())
    kept = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert summary["prompts"] == 6 and summary["pairs"] == len(kept) > 0
    assert len(kept) + sum(summary["dropped"].values()) == 6  # tournament: one pair a prompt
    from collections import Counter

    from inpo.judging.stage import describe_dropped

    assert describe_dropped(6, len(kept), Counter(summary["dropped"])) in out
    # The labels are the vowels oracle's own P, recomputed here (soft labels by default).
    from inpo.judging.synthetic import VOWEL_SCALE, sigmoid, vowel_score

    for p in kept:
        want = sigmoid(4.0 * VOWEL_SCALE * (vowel_score(p["chosen"]) - vowel_score(p["rejected"])))
        assert p["p_chosen"] == pytest.approx(want, abs=1e-12) and p["p_label"] == p["p_chosen"]
        assert p["n_comparisons"] == 5  # K = 4: 3K/2 - 1


def test_an_engine_that_cannot_start_is_one_line(tmp_path, tiny_model, ray_session):
    """vLLM's own reason (here: no room for a KV cache) reaches the user, named by actor,
    instead of "Engine core initialization failed. See root cause above"."""
    import json

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    args = ["--prompts", str(prompts), "--policy", str(tiny_model), "--out", str(tmp_path / "g")]
    r = inpo_here("generate", *args, "generation.gpu_memory_utilization=0.0001")
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: generator 0 failed: ValueError: "), last
    assert "kv cache" in last.lower() and "See root cause above" not in last


def test_a_prompt_budget_beyond_the_models_context_is_one_line(tmp_path, tiny_model, ray_session):
    """vLLM refuses a max_model_len past the model's context in a pydantic check whose
    message ends with a link: the line the user sees is the check itself, with both
    numbers (2000 + 8 tokens asked, 1024 the tiny model's context)."""
    import json

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    args = ["--prompts", str(prompts), "--policy", str(tiny_model), "--out", str(tmp_path / "a")]
    r = inpo_here("answer", *args, "data.max_prompt_tokens=2000", "generation.max_new_tokens=8")
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: generator 0 failed: "), last
    assert "max_model_len (2008)" in last and "1024" in last and "pydantic.dev" not in last, last


def test_answer_writes_the_files_alpaca_eval_and_arena_hard_read(tmp_path, tiny_model, ray_session):
    import json

    alpaca = tmp_path / "alpaca_eval.json"
    alpaca.write_text(
        json.dumps([{"instruction": f"Say {i}.", "dataset": "helpful_base"} for i in range(3)])
    )
    arena = tmp_path / "question.jsonl"
    arena.write_text(
        "".join(
            json.dumps({"question_id": f"q{i}", "category": "x", "turns": [{"content": f"Q{i}?"}]})
            + "\n"
            for i in range(2)
        )
    )

    def answer(prompts, out, *extra):
        args = ["--policy", str(tiny_model), "--prompts", str(prompts), "--out", str(out)]
        r = inpo_here("answer", *args, "--name", "tiny-inpo", "generation.max_new_tokens=8", *extra)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout

    out = tmp_path / "tiny-inpo.json"
    assert "wrote 3 alpaca_eval answers of tiny-inpo" in answer(alpaca, out)
    rows = json.loads(out.read_text())
    assert [r["instruction"] for r in rows] == ["Say 0.", "Say 1.", "Say 2."]
    assert {r["generator"] for r in rows} == {"tiny-inpo"}
    assert all(r["dataset"] == "helpful_base" and isinstance(r["output"], str) for r in rows)
    out = tmp_path / "model_answer" / "tiny-inpo.jsonl"
    # no tiktoken encoding offline: the policy's (one token per character) counts
    assert "token_len by the policy's tokenizer" in answer(arena, out)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == ["q0", "q1"]
    turn = rows[0]["choices"][0]["turns"][0]
    assert rows[0]["model_id"] == "tiny-inpo" and turn["token_len"] == len(turn["content"])
    assert rows[0]["conv_metadata"]["token_len"] == turn["token_len"] <= 8
    assert isinstance(turn["content"], str) and rows[0]["answer_id"] != rows[1]["answer_id"]
    # Arena-Hard v2.0 questions get v2.0 answers (tests/unit/test_answer.py reads them back)
    arena.write_text(
        json.dumps({"uid": "u0", "category": "hard_prompt", "subcategory": "x", "prompt": "Q?"})
        + "\n"
    )
    answer(arena, out)
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert row["uid"] == "u0" and row["model"] == "tiny-inpo"
    text = row["messages"][-1]["content"]["answer"]
    assert row["messages"][0] == {"role": "user", "content": "Q?"}
    assert row["metadata"]["token_len"] == len(text) <= 8
