"""The learner with real Ray actors and real DeepSpeed (CPU, gloo) on a tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import hf_logp, inpo_cli, inpo_here, write_pairs
from safetensors.torch import load_file

from inpo.config import load_config
from inpo.plan.pool import stop

LEARN_ARGS = [
    "learner.lr=3e-3",
    "learner.epochs=3",
    "learner.global_batch_size=16",
    "learner.micro_batch_size=4",
    "loss.eta=0.25",
    "learner.num_ranks=2",
    "learner.heldout_fraction=0",  # every pair trains: the step counts below
]


def run_learn(pairs: Path, policy: Path, out: Path, *overrides: str, crash_at: str = "", join=""):
    """`inpo learn` in-process on the session's cluster; with ``crash_at``, in a process of
    its own (on the cluster at ``join``) that SIGKILLs itself there."""
    args = ["--pairs", str(pairs), "--policy", str(policy), "--out", str(out), *overrides]
    if not crash_at:
        return inpo_here("learn", *args)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "INPO_CRASH_AT": crash_at}
    return inpo_cli("learn", *args, f"run.ray_address={join}", env=env)


@pytest.fixture(scope="module")
def learned(tmp_path_factory, tiny_model, ray_cluster):
    """`inpo learn` under ZeRO-2 and ZeRO-3, 2 ranks each."""
    root = tmp_path_factory.mktemp("learn")
    pairs = write_pairs(root / "pairs.jsonl", 64)
    outs = {}
    for stage in (2, 3):
        out = root / f"zero{stage}"
        r = run_learn(pairs, tiny_model, out, *LEARN_ARGS, f"deepspeed.zero_stage={stage}")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "learned 12 steps (3 epochs) on 64 pairs; training excess 4 -> " in r.stdout
        outs[stage] = out
    return outs


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "learn_metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage", [2, 3])
def test_learn_reduces_loss_and_moves_margin_to_target(learned, stage):
    rows = _metrics(learned[stage])
    assert [r["step"] for r in rows] == list(range(1, 13))
    first, last = rows[0], rows[-3:]
    # pi_t = pi_ref at the start: the first margin is exactly the (zero) IPO margin, so
    # |h - target| is the target 1/(2 eta) = 2 and the loss its square (hard labels).
    assert abs(first["margin"]) < 1e-4
    assert first["margin_error"] == pytest.approx(2.0, abs=1e-4)
    assert first["loss"] == pytest.approx(4.0, abs=1e-3)
    assert sum(r["loss"] for r in last) / 3 < 0.5 * first["loss"]
    assert sum(r["margin_error"] for r in last) / 3 < 0.5 * first["margin_error"]


def test_zero2_and_zero3_agree(learned):
    a = load_file(str(learned[2] / "policy" / "model.safetensors"))
    b = load_file(str(learned[3] / "policy" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-4, rtol=1e-3)


def test_saved_policy_loads_in_transformers_and_vllm(learned, tiny_model, ray_session):
    from transformers import AutoTokenizer

    from inpo.data import probe_sequence
    from inpo.generation.generator import GeneratorGroup
    from inpo.plan.placement import plan_placement

    tok = AutoTokenizer.from_pretrained(learned[2] / "policy")
    probe = probe_sequence(tok)
    cfg = load_config()
    slots = plan_placement([], {"generator": (1, 1)}).slots["generator"]
    gen = GeneratorGroup(str(learned[2] / "policy"), cfg, "cpu", slots)
    try:
        for stage in (2, 3):
            policy = learned[stage] / "policy"
            if stage == 3:
                gen.sync(str(policy), probe, hf_logp(policy, *probe))
            want = hf_logp(policy, *probe)
            got = gen.scores(*probe)[0]
            assert got == pytest.approx(want, abs=1e-4)
        assert hf_logp(tiny_model, *probe) != pytest.approx(want, abs=1e-2)  # it did learn
    finally:
        gen.shutdown()


def test_bad_pairs_file_stops_before_training(tmp_path, tiny_model, ray_session):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 20)
    lines = pairs.read_text().splitlines()
    row = json.loads(lines[6])
    row["rejected"] = 42
    lines[6] = json.dumps(row)
    pairs.write_text("\n".join(lines) + "\n")
    r = run_learn(pairs, tiny_model, tmp_path / "out")
    assert r.returncode == 1
    assert f"{pairs}: row 7: field 'rejected'" in r.stderr
    assert not (tmp_path / "out").exists()
    good = write_pairs(tmp_path / "good.jsonl", 20)
    r = run_learn(good, tmp_path / "missing", tmp_path / "out")
    assert r.returncode == 1 and "model.policy" in r.stderr and "missing" in r.stderr


def _train_in_process(cfg_overrides, pairs_path, policy, out, on_step=None, after=None):
    """Cache, train and save as `inpo learn` does; ``after(group, pairs)`` runs last."""
    from transformers import AutoTokenizer

    from inpo.data import probe_sequence, tokenize_pairs
    from inpo.learning.stage import cache_logps, export_policy, start_learner, train_policy
    from inpo.rows import read_pairs

    cfg = load_config(None, cfg_overrides)
    tok = AutoTokenizer.from_pretrained(policy)
    pairs = tokenize_pairs(tok, read_pairs(pairs_path))
    group = start_learner(cfg, "cpu")
    try:
        group.set_data(pairs, tok.pad_token_id)
        cache = cache_logps(group, pairs, str(policy), str(policy), out / "logps.safetensors")
        rows, _ = train_policy(cfg, group, pairs, cache, str(policy), out, on_step=on_step)
        export_policy(cfg, group, pairs, str(policy), out, probe_sequence(tok), True)
        if after is not None:
            after(group, pairs)
        return rows
    finally:
        stop(group)


BASE = [
    "learner.lr=1e-3",
    "learner.epochs=2",
    "learner.global_batch_size=16",
    "learner.micro_batch_size=4",
    "learner.heldout_fraction=0",
    "run.seed=7",
]


def test_one_rank_and_two_ranks_end_with_same_weights(tmp_path, tiny_model, ray_session):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 40, seed=3)
    runs = [
        _train_in_process(
            BASE + [f"learner.num_ranks={ranks}"], pairs, tiny_model, tmp_path / f"r{ranks}"
        )
        for ranks in (1, 2)
    ]
    # Adam hides a scaled gradient; the global grad norm and the loss do not.
    for one, two in zip(*runs, strict=True):
        for key in ("loss", "grad_norm", "margin"):
            assert one[key] == pytest.approx(two[key], rel=1e-4, abs=1e-5), (key, one, two)
    a = load_file(str(tmp_path / "r1" / "policy" / "model.safetensors"))
    b = load_file(str(tmp_path / "r2" / "policy" / "model.safetensors"))
    for k in a:  # Adam moves every weight by about lr per step; allow 10% of one step
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=0)
    ref = load_file(str(tiny_model / "model.safetensors"))
    assert any((a[k] - ref[k]).abs().max() > 1e-3 for k in a)


class Crash(Exception):
    pass


@pytest.mark.parametrize("epochs", ["2", "auto"])
def test_resume_from_step_checkpoint_matches_uninterrupted(
    tmp_path, tiny_model, ray_session, epochs
):
    """With held-out pairs (and learner.epochs = auto, whose stop reads the held-out excess
    after each epoch from the kept rows): the resumed run ends with the same weights."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", 80, seed=5)  # 20 held out, 3 steps/epoch
    cfg = BASE + [
        "learner.checkpoint_every=2",
        "learner.num_ranks=2",
        "learner.heldout_fraction=0.25",
        f"learner.epochs={epochs}",
        "learner.max_epochs=3",
    ]
    _train_in_process(cfg, pairs, tiny_model, tmp_path / "full")

    def crash_at_3(m):
        if m["step"] == 3:
            raise Crash

    with pytest.raises(Crash):
        _train_in_process(cfg, pairs, tiny_model, tmp_path / "cut", on_step=crash_at_3)
    assert (tmp_path / "cut" / "checkpoints" / "step_000002").is_dir()
    assert not (tmp_path / "cut" / "policy").exists()
    rows = _train_in_process(cfg, pairs, tiny_model, tmp_path / "cut")
    whole = _metrics(tmp_path / "full")
    assert [r["step"] for r in rows] == list(range(1, len(whole) + 1))  # 1-2 kept, 3- redone
    evals = [r.get("heldout_excess") for r in rows]
    if epochs == "auto":  # the held-out excess after each epoch, in its last step's row
        assert [e is not None for e in evals] == [s % 3 == 0 for s in range(1, len(rows) + 1)]
        assert evals[2] == pytest.approx(whole[2]["heldout_excess"], rel=1e-6)
    else:
        assert len(rows) == 6 and evals == [None] * 6
    a = load_file(str(tmp_path / "full" / "policy" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "policy" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def test_zero3_then_a_frozen_model_scores_like_transformers(tmp_path, tiny_model, ray_session):
    """Iteration 2 of a ZeRO-3 run: after the engine is built, the frozen pi_t (the saved
    policy) must load whole, and score the pairs as plain transformers does."""
    pairs_path = write_pairs(tmp_path / "pairs.jsonl", 16, seed=2)
    scored = {}

    def score_saved_policy(group, pairs):
        saved = str(tmp_path / "out" / "policy")
        scored["logps"] = group.compute_logps(len(pairs), "frozen", saved)
        scored["pairs"] = pairs

    cfg = BASE + ["learner.num_ranks=2", "deepspeed.zero_stage=3", "learner.epochs=1"]
    _train_in_process(cfg, pairs_path, tiny_model, tmp_path / "out", after=score_saved_policy)
    pairs = scored["pairs"]
    for i in (0, 7, 15):
        ids = pairs.prompt[i] + pairs.chosen[i]
        want = hf_logp(tmp_path / "out" / "policy", ids, len(pairs.prompt[i]))
        assert scored["logps"][i, 0].item() == pytest.approx(want, abs=1e-4)


def test_dropout_is_off_so_the_first_margin_is_zero(tmp_path, ray_session):
    """A model whose config has dropout: pi = pi_t = pi_ref at the first step, so h = 0
    exactly and the loss is (1/(2 eta))^2, with 2 ranks and ZeRO-2."""
    from inpo.models.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "dropout_model", attention_dropout=0.5)
    pairs_path = write_pairs(tmp_path / "pairs.jsonl", 16, seed=4)
    rows = _train_in_process(
        BASE + ["learner.num_ranks=2", "learner.epochs=1", "loss.eta=0.25"],
        pairs_path,
        model,
        tmp_path / "out",
    )
    assert abs(rows[0]["margin"]) < 1e-5 and rows[0]["loss"] == pytest.approx(4.0, abs=1e-4)
    saved = json.loads((tmp_path / "out" / "policy" / "config.json").read_text())
    assert saved["attention_dropout"] == 0.5  # the user's config is saved as it was


def test_autocast_trains_in_bf16_and_saves_and_probes_fp32_weights(
    tmp_path, tiny_model, ray_session
):
    """learner.autocast = bfloat16 under ZeRO-3 with 2 ranks: the forwards run in bf16
    (pi_t's cached log-probs are not the fp32 ones), the weights and the saved policy stay
    fp32, it learns, and the weight-sync probe scores the weights as saved."""
    from transformers import AutoTokenizer

    from inpo.data import probe_sequence

    pairs_path = write_pairs(tmp_path / "pairs.jsonl", 32, seed=5)
    probe = probe_sequence(AutoTokenizer.from_pretrained(tiny_model))
    got = {}

    def after(group, pairs):
        got["probe"] = group.probe_logp(*probe)
        got["pairs"] = pairs

    out = tmp_path / "out"
    overrides = ["learner.num_ranks=2", "deepspeed.zero_stage=3", "learner.autocast=bfloat16"]
    rows = _train_in_process(BASE + overrides, pairs_path, tiny_model, out, after=after)
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    saved = load_file(str(out / "policy" / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}
    assert got["probe"] == pytest.approx(hf_logp(out / "policy", *probe), abs=1e-4)
    pi_t = load_file(str(out / "logps.safetensors"))["pi_t_chosen"]
    pairs = got["pairs"]
    fp32 = [
        hf_logp(tiny_model, pairs.prompt[i] + pairs.chosen[i], len(pairs.prompt[i])) for i in (0, 1)
    ]
    diffs = [abs(pi_t[i].item() - fp32[i]) for i in (0, 1)]
    assert max(diffs) > 1e-3 and max(diffs) < 0.1 * abs(fp32[0]), diffs


def test_learn_refuses_stale_state_and_drops_pairs_that_do_not_fit(
    tmp_path, tiny_model, tiny_tied_model, ray_session
):
    """A rerun of `inpo learn` into the same --out with another policy and other pairs:
    the log-prob cache and the step checkpoints of the first run are not reused; pairs
    longer than learner.max_length are dropped and counted, never cut."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", 32, seed=6)
    out = tmp_path / "out"
    args = [*LEARN_ARGS, "learner.epochs=1", "learner.checkpoint_every=1"]
    r = run_learn(pairs, tiny_model, out, *args, crash_at="learn.step2", join=ray_session)
    assert r.returncode == -9 and (out / "checkpoints" / "step_000001").is_dir()

    longer = tmp_path / "longer.jsonl"
    rows = [json.loads(x) for x in pairs.read_text().splitlines()]
    rows += [{"prompt": "p" * 150, "chosen": "a" * 60, "rejected": "b"}] * 3
    longer.write_text("".join(json.dumps(x) + "\n" for x in rows))
    r = run_learn(longer, tiny_tied_model, out, *args, "learner.max_length=200")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{longer}: dropped 3 of 35 pairs longer than learner.max_length = 200" in r.stdout
    # the 32 pairs that fit are the first run's; the models and the max length are not
    assert "logps.safetensors: computed for other inputs (pi_t, pi_ref); recomputing" in r.stdout
    assert (
        "checkpoints: step checkpoints of other inputs (logps, learner); starting from step 0"
        in (r.stdout)
    )
    assert [m["step"] for m in _metrics(out)] == [1, 2]  # 32 pairs / 16: all redone
    assert not (out / "checkpoints").exists()


def test_lora_learn_zero2_saves_a_peft_adapter_and_the_merged_policy(
    tmp_path, tiny_model, ray_session
):
    """model.lora.r > 0: only the adapter trains; pi_t and pi_ref come from the training
    model itself (no frozen copy); the policy directory holds the merged weights and, in
    adapter/, the adapter in peft format on the base model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    pairs = write_pairs(tmp_path / "pairs.jsonl", 32, seed=8)
    out = tmp_path / "out"
    r = run_learn(pairs, tiny_model, out, *LEARN_ARGS, "model.lora.r=8", "learner.epochs=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "logps pi_t" in r.stderr and "logps pi_ref" not in r.stderr  # one pass, no copy
    rows = _metrics(out)
    assert abs(rows[0]["margin"]) < 1e-5  # pi = pi_t = pi_ref: a new adapter changes nothing
    assert rows[-1]["margin_error"] < 0.5 * rows[0]["margin_error"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, str(out / "policy" / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "policy", dtype=torch.float32).eval()
    x = torch.randint(3, 90, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(peft(input_ids=x).logits, merged(input_ids=x).logits)
    # the base weights did not move: everything learned is in the adapter
    plain = load_file(str(tiny_model / "model.safetensors"))
    saved = load_file(str(out / "policy" / "model.safetensors"))
    assert torch.equal(plain["model.embed_tokens.weight"], saved["model.embed_tokens.weight"])
    assert not torch.equal(
        plain["model.layers.0.self_attn.q_proj.weight"],
        saved["model.layers.0.self_attn.q_proj.weight"],
    )


@pytest.mark.parametrize(
    "setting",
    [
        ["deepspeed.zero_stage=3"],
        ["deepspeed.zero_stage=3", "model.lora.r=4"],
        ["deepspeed.zero_stage=2", "deepspeed.offload_optimizer=true"],
    ],
    ids=["zero3", "zero3-lora", "zero2-offload"],
)
def test_a_colocated_learners_sleep_releases_its_engine_and_the_next_iteration_trains(
    setting, tmp_path, tiny_model, ray_session
):
    """What a colocated learner does between iterations, on the ranks themselves: after
    save every rank releases its engine (the sleep), holds none while the vLLM engines
    work, and the next iteration builds one from the saved policy and trains. Under ZeRO-3
    with LoRA or an offloaded optimizer DeepSpeed's offload_states, the sleep this
    replaces, fails (issue 34)."""
    from transformers import AutoTokenizer

    from inpo.data import probe_sequence, tokenize_pairs
    from inpo.learning.stage import cache_logps, export_policy, start_learner, train_policy
    from inpo.rows import read_pairs

    cfg = load_config(None, [*BASE, "learner.num_ranks=2", "learner.epochs=1", *setting])
    tok = AutoTokenizer.from_pretrained(tiny_model)
    pairs = tokenize_pairs(tok, read_pairs(write_pairs(tmp_path / "pairs.jsonl", 32, seed=5)))
    group = start_learner(cfg, "cpu")
    try:
        group.set_data(pairs, tok.pad_token_id)
        policy = str(tiny_model)
        for t in (1, 2):
            out = tmp_path / f"iter_{t}"
            cache = cache_logps(group, pairs, policy, str(tiny_model), out / "logps.safetensors")
            rows, _ = train_policy(cfg, group, pairs, cache, policy, out)
            export_policy(cfg, group, pairs, policy, out, probe_sequence(tok), True)
            assert group.call("holds_engine") == [True, True]
            assert group.call("sleep", 0) == [True, True]  # released, not offloaded
            assert group.call("holds_engine") == [False, False]
            assert group.call("wake") == [False, False]  # built again when next used
            assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
            policy = str(out / "policy")
        assert rows[0]["margin"] != 0  # iteration 2 started from iteration 1's policy
    finally:
        stop(group)
