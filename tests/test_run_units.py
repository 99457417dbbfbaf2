"""Pure pieces of the online loop: prompt splits, run state, win rates, report, placement."""

import json

import pytest

from inpo.config import load_config
from inpo.evaluate import win_rate
from inpo.pipeline import iteration_prompts, split_prompts
from inpo.placement import PlacementError, plan_placement
from inpo.report import table
from inpo.state import RunState


def test_holdout_is_disjoint_and_slices_are_fresh():
    cfg = load_config(None, ["data.eval_size=10", "run.seed=3"])
    train, held = split_prompts(cfg, list(range(100)), None)
    assert len(held) == 10 and not set(held) & set(train) and len(train) == 90
    assert train == sorted(train)  # slice mode keeps file order
    its = [iteration_prompts(train, 30, t) for t in (1, 2, 3)]
    assert sum(its, []) == train  # three fresh slices cover the pool exactly once
    assert iteration_prompts(train, 30, 4) == its[0]  # then wrap around
    again, held2 = split_prompts(cfg, list(range(100)), None)
    assert (again, held2) == (train, held)


def test_sample_mode_permutes_without_replacement():
    cfg = load_config(None, ["data.eval_size=0", "data.selection=sample"])
    train, held = split_prompts(cfg, list(range(50)), None)
    assert held == [] and sorted(train) == list(range(50)) and train != sorted(train)


def test_separate_eval_file():
    cfg = load_config(None, ["data.eval_size=5"])
    train, held = split_prompts(cfg, list(range(20)), list(range(8)))
    assert train == list(range(20)) and held == [0, 1, 2, 3, 4]


def test_run_state_roundtrip_and_atomic(tmp_path):
    s = RunState(tmp_path / "state.json")
    s.start(1, "generate")
    assert json.loads((tmp_path / "state.json").read_text())["running"]["stage"] == "generate"
    s.finish(1, "generate", {"prompts": 3})
    s2 = RunState.load(tmp_path / "state.json")
    assert s2.is_done(1, "generate") and not s2.is_done(1, "judge")
    assert s2.info(1, "generate") == {"prompts": 3} and s2.data["running"] is None
    assert not (tmp_path / "state.json.tmp").exists()


def test_win_rate_interval():
    r = win_rate([1.0] * 30 + [0.0] * 10)
    assert r["mean"] == pytest.approx(0.75)
    assert r["ci_low"] < 0.75 < r["ci_high"] and r["ci_low"] > 0.5
    assert win_rate([0.5] * 9)["ci_low"] == pytest.approx(0.5)
    assert win_rate([])["n"] == 0


def test_table_formats_rows():
    rows = [
        {
            "iteration": 1,
            "pairs": 10,
            "loss_last": 0.5,
            "margin_last": 1.2,
            "win_vs_ref": 0.7,
            "win_vs_ref_ci": [0.6, 0.8],
            "generate_seconds": 2.0,
        }
    ]
    text = table(rows)
    assert "0.700 [0.600, 0.800]" in text and text.splitlines()[0].split()[0] == "iter"


def test_placement_dedicated_gpus_across_nodes():
    plan = plan_placement([4, 4], {"learner": (4, 1), "generator": (2, 2), "oracle": (0, 1)})
    gens = plan["generator"]
    assert all(s.num_gpus == 2.0 for s in gens)
    used = {}
    for slots in plan.values():
        for s in slots:
            used[s.node] = used.get(s.node, 0) + s.num_gpus
    assert used == {0: 4.0, 1: 4.0}
    assert plan["oracle"] == []


def test_placement_shares_one_gpu():
    plan = plan_placement([1], {"learner": (1, 1), "generator": (1, 1), "oracle": (1, 1)})
    assert [s.num_gpus for slots in plan.values() for s in slots] == [pytest.approx(1 / 3)] * 3
    assert {s.node for slots in plan.values() for s in slots} == {0}


def test_placement_refuses_impossible_tp():
    with pytest.raises(PlacementError, match="4 GPUs on one node"):
        plan_placement([2, 2, 2], {"generator": (1, 4), "learner": (1, 1)})
    with pytest.raises(PlacementError, match="cannot share"):
        plan_placement([1], {"generator": (1, 2), "learner": (1, 1)})


def test_placement_on_cpu():
    plan = plan_placement([], {"learner": (2, 1), "generator": (1, 1)})
    assert all(s.node is None and s.num_gpus == 0 for slots in plan.values() for s in slots)
