"""The learner with real Ray actors and real DeepSpeed (CPU, gloo) on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import hf_logprob, write_pairs
from safetensors.torch import load_file

from inpo.config import load_config

pytestmark = pytest.mark.e2e

LEARN_ARGS = [
    "learner.lr=3e-3",
    "learner.epochs=3",
    "learner.global_batch_size=16",
    "learner.micro_batch_size=4",
    "loss.eta=0.25",
    "learner.num_ranks=2",
]


def run_learn(pairs: Path, policy: Path, out: Path, *overrides: str):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "inpo.cli",
            "learn",
            "--pairs",
            str(pairs),
            "--policy",
            str(policy),
            "--out",
            str(out),
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture(scope="module")
def learned(tmp_path_factory, tiny_model):
    """`inpo learn` under ZeRO-2 and ZeRO-3, 2 ranks each."""
    root = tmp_path_factory.mktemp("learn")
    pairs = write_pairs(root / "pairs.jsonl", 64)
    outs = {}
    for stage in (2, 3):
        out = root / f"zero{stage}"
        r = run_learn(pairs, tiny_model, out, *LEARN_ARGS, f"deepspeed.zero_stage={stage}")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "learned 12 steps on 64 pairs" in r.stdout
        outs[stage] = out
    return outs


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "learn_metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage", [2, 3])
def test_learn_reduces_loss_and_moves_margin_to_target(learned, stage):
    rows = _metrics(learned[stage])
    assert [r["step"] for r in rows] == list(range(1, 13))
    target = rows[0]["margin_target"]
    assert target == pytest.approx(2.0)
    first, last = rows[0], rows[-3:]
    assert sum(r["loss"] for r in last) / 3 < 0.5 * first["loss"]
    assert abs(sum(r["margin"] for r in last) / 3 - target) < 0.5 * abs(first["margin"] - target)
    # pi_t = pi_ref at the start: the first margin is exactly the (zero) IPO margin.
    assert abs(first["margin"]) < 1e-4


def test_zero2_and_zero3_agree(learned):
    a = load_file(str(learned[2] / "policy" / "model.safetensors"))
    b = load_file(str(learned[3] / "policy" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-4, rtol=1e-3)


def test_saved_policy_loads_in_transformers_and_vllm(learned, tiny_model, ray_session):
    from transformers import AutoTokenizer

    from inpo.placement import plan_placement
    from inpo.rollout.generator import GeneratorGroup, probe_sequence

    tok = AutoTokenizer.from_pretrained(learned[2] / "policy")
    probe = probe_sequence(tok)
    cfg = load_config().model_dump(mode="json")
    slots = plan_placement([], {"generator": (1, 1)})["generator"]
    gen = GeneratorGroup(str(learned[2] / "policy"), cfg, "cpu", slots)
    try:
        for stage in (2, 3):
            policy = learned[stage] / "policy"
            if stage == 3:
                gen.sync(str(policy), probe, hf_logprob(policy, *probe))
            want = hf_logprob(policy, *probe)
            got = gen.scores(*probe)[0]
            assert got == pytest.approx(want, abs=1e-4)
        assert hf_logprob(tiny_model, *probe) != pytest.approx(want, abs=1e-2)  # it did learn
    finally:
        gen.shutdown()


def test_bad_pairs_file_stops_before_training(tmp_path, tiny_model):
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


def _train_in_process(cfg_overrides, pairs_path, policy, out, on_step=None):
    from transformers import AutoTokenizer

    from inpo.data import load_pairs, tokenize_pairs
    from inpo.learn import cache_logprobs, export_policy, start_learner, train_policy
    from inpo.rollout.generator import probe_sequence

    cfg = load_config(None, cfg_overrides)
    tok = AutoTokenizer.from_pretrained(policy)
    pairs = tokenize_pairs(tok, load_pairs(pairs_path))
    group = start_learner(cfg, "cpu")
    try:
        group.set_data(pairs, tok.pad_token_id)
        cache = cache_logprobs(group, pairs, str(policy), str(policy), out / "logps.safetensors")
        rows = train_policy(cfg, group, len(pairs), cache, str(policy), out, on_step=on_step)
        export_policy(cfg, group, len(pairs), str(policy), out, probe_sequence(tok), True)
        return rows
    finally:
        group.shutdown()


BASE = [
    "learner.lr=1e-3",
    "learner.epochs=2",
    "learner.global_batch_size=16",
    "learner.micro_batch_size=4",
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


def test_resume_from_step_checkpoint_matches_uninterrupted(tmp_path, tiny_model, ray_session):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 40, seed=5)
    cfg = BASE + ["learner.checkpoint_every=2", "learner.num_ranks=2"]
    _train_in_process(cfg, pairs, tiny_model, tmp_path / "full")

    def crash_at_3(m):
        if m["step"] == 3:
            raise Crash

    with pytest.raises(Crash):
        _train_in_process(cfg, pairs, tiny_model, tmp_path / "cut", on_step=crash_at_3)
    assert (tmp_path / "cut" / "checkpoints" / "step_000002").is_dir()
    assert not (tmp_path / "cut" / "policy").exists()
    rows = _train_in_process(cfg, pairs, tiny_model, tmp_path / "cut")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # steps 1-2 kept, 3-4 recomputed
    a = load_file(str(tmp_path / "full" / "policy" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "policy" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
