"""The stage table (inpo.stages) is the one every consumer reads: each stage is sized by
the memory model, scheduled by colocation, run by one Trainer method and started by the
fleet from the same roles."""

from __future__ import annotations

import pytest

from inpo.config import load_config
from inpo.plan.colocate import transitions
from inpo.plan.memory import CONTEXT_BYTES, STAGES, GiB, estimate
from inpo.plan.placement import colocated_layout, role_demand
from inpo.run.trainer import Trainer
from inpo.stages import ALL, SETUP, Role, stages_of


@pytest.fixture(scope="module")
def colocated():
    counts = ["learner.num_ranks=null", "generation.num_generators=null", "oracle.num_actors=null"]
    cfg = load_config("configs/paper_pairpm.yaml", [*counts, "learner.global_batch_size=128"])
    cfg.run.colocate = True
    return estimate(colocated_layout(cfg, 8), [8], 80 * GiB)  # each GPU: one of each role


def test_every_stage_has_a_memory_entry_and_a_colocation_entry(colocated):
    assert STAGES == tuple(s.name for s in ALL)
    row = colocated.rows[0]
    assert sorted(a.role for a in row.actors) == ["generator", "judge", "learner"]
    for stage in ALL:
        phases = [
            sum(a.total(stage.name) for a in row.actors if a.role in phase)
            + CONTEXT_BYTES * sum(a.role not in phase for a in row.actors)
            for phase in stage.phases
        ]
        assert row.total(stage.name) == pytest.approx(max(phases))
        for phase in stage.phases:
            to_sleep, to_wake = transitions(phase, list(Role), asleep=set())
            assert set(to_sleep) == set(Role) - set(phase) and to_wake == []
            to_sleep, to_wake = transitions(phase, list(Role), asleep=set(Role))
            assert to_sleep == [] and set(to_wake) == set(phase)


def test_eval_generates_then_judges_so_each_engine_takes_most_of_a_colocated_gpu(colocated):
    row = colocated.rows[0]
    assert row.total("eval") == max(row.total("generate"), row.total("judge"))
    engines = [a for a in row.actors if a.role in ("generator", "judge")]
    assert all(a.total("eval") == pytest.approx(0.8 * 80 * GiB) for a in engines)
    assert row.peak()[1] <= 80 * GiB
    assert colocated.kv_tokens > 2 * 106_844  # what 0.35 of the GPU each held


def test_a_split_learner_holds_its_engine_while_others_work():
    cfg = load_config("configs/paper_pairpm.yaml")
    est = estimate(cfg, [8], 80 * GiB)
    learner = next(a for r in est.rows for a in r.actors if a.role == "learner")
    for stage in ALL:
        if Role.LEARNER not in stage.roles:
            assert learner.total(stage.name) == learner.total("save") > CONTEXT_BYTES


def test_each_stage_is_one_trainer_method_and_its_roles_are_placed():
    for t in (0, 1):
        for stage in stages_of(t):
            assert callable(getattr(Trainer, f"_{stage.name}")), stage.name
    assert stages_of(0) == SETUP
    cfg = load_config("configs/paper_pairpm.yaml")
    assert set(role_demand(cfg)) == {r for s in ALL for r in s.roles}
    assert set(role_demand(cfg, [Role.LEARNER])) == {"learner"}
    synthetic = load_config(None, ["oracle.backend=synthetic"])
    assert Role.JUDGE not in role_demand(synthetic)  # the judge runs in the driver
