"""The iteration table, win rates (inpo.report, inpo.evaluate) and the placement planner."""

import pytest

from inpo.evaluate import win_rate
from inpo.placement import PlacementError, plan_placement
from inpo.report import table


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
            "loss_first_epoch": 4.0,
            "loss_last_epoch": 0.5,
            "win_vs_ref": 0.7,
            "win_vs_ref_ci": [0.6, 0.8],
            "generate_seconds": 2.0,
        }
    ]
    lines = table(rows).splitlines()
    assert lines[0].split()[0] == "iter" and len(lines) == 3
    assert "0.700 [0.600, 0.800]" in lines[2] and "4 > 0.5" in lines[2]
    assert lines[2].split()[-1] == "2"  # seconds summed over stages


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


def test_actor_errors_come_down_to_their_root_cause():
    from inpo.actors import death_cause, root_cause

    try:
        try:
            raise OSError("disk full")
        except OSError as inner:
            raise RuntimeError(
                "Engine core initialization failed.\nSee root cause above"
            ) from inner
    except RuntimeError as e:
        assert root_cause(e) == "OSError: disk full"
    created = Exception(
        "The actor died because of an error raised in its creation task, ray::X.__init__()\n"
        '  File "x.py", line 3, in <module>\n'
        "ImportError: cannot import name 'y' from 'z'\n"
    )
    assert death_cause(created) == "ImportError: cannot import name 'y' from 'z'"
    assert death_cause(Exception("The actor was killed: out of memory\nmore")) == (
        "The actor was killed: out of memory"
    )
