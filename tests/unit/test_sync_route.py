"""Which way `Fleet.hold` brings a policy to the generators: in memory only right after the
learner saved it in this process; files for a resumed run, restarted generators and the
user's policies (actor groups faked: no Ray)."""

from __future__ import annotations

import pytest

from inpo.config import load_config
from inpo.faults import Faults
from inpo.run import fleet as fleet_module
from inpo.run.fleet import Fleet
from inpo.stages import Role

PROBE = ([1, 2, 3, 4], 2)


class FakeGenerators:
    def __init__(self, policy: str):
        self.placement: list = []
        self.loads = [("start", policy)]

    def scores(self, ids, prompt_len):
        return [-1.0]

    def verify(self, probe, expected, seconds=0.0):
        return {"sync_seconds": seconds, "sync_max_token_diff": 0.0}

    def sync(self, target, probe, expected, digest=None):
        self.loads.append(("files", target))
        return self.verify(probe, expected) | {"sync_via": "files"}

    def sync_from(self, learner, probe, expected, digest):
        assert learner.outgoing_digest() == digest
        self.loads.append(("memory", digest))
        learner.kept = None  # sent: rank 0 drops it
        return self.verify(probe, expected) | {"sync_via": "memory"}

    def shutdown(self):
        pass


class FakeLearner:
    placement: list = []

    def __init__(self, kept: str | None):
        self.kept = kept

    def outgoing_digest(self):
        return self.kept


class FakePlan:
    slots: dict = {Role.GENERATOR: [], Role.LEARNER: []}


@pytest.fixture
def make_fleet(tmp_path, monkeypatch):
    started: list[FakeGenerators] = []

    def start_generators(cfg, device, policy, slots, probe_len):
        started.append(FakeGenerators(policy))
        return started[-1]

    monkeypatch.setattr(fleet_module, "start_generators", start_generators)

    def make(*overrides: str, learner: FakeLearner | None = None) -> Fleet:
        fleet = Fleet(load_config(None, list(overrides)), tmp_path, "cpu", PROBE, Faults())
        fleet.plan = FakePlan()
        if learner is not None:
            fleet.groups[Role.LEARNER] = learner
        return fleet

    make.started = started
    return make


def test_the_sync_after_a_save_goes_in_memory_and_only_once(make_fleet):
    learner = FakeLearner(kept="h2")
    fleet = make_fleet(learner=learner)
    assert fleet.hold("pi_1")["sync_via"] == "files"  # the user's: generators start from it
    assert fleet.hold("iter_1/policy", -2.0, "h2")["sync_via"] == "memory"
    assert fleet.hold("iter_1/policy", -2.0, "h2")["sync_via"] == "held"  # eval, generate
    (gens,) = make_fleet.started
    assert gens.loads == [("start", "pi_1"), ("memory", "h2")]


def test_a_resumed_run_and_another_policy_in_memory_load_files(make_fleet):
    # resumed after the save: no learner yet
    fleet = make_fleet()
    fleet.groups[Role.GENERATOR] = FakeGenerators("pi_1")
    fleet.gen_policy = "pi_1"
    assert fleet.hold("iter_1/policy", -2.0, "h2")["sync_via"] == "files"
    # the learner holds another policy (not this one's hash)
    fleet = make_fleet(learner=FakeLearner(kept="other"))
    fleet.groups[Role.GENERATOR] = FakeGenerators("pi_1")
    fleet.gen_policy = "pi_1"
    assert fleet.hold("iter_1/policy", -2.0, "h2")["sync_via"] == "files"
    # switched off
    fleet = make_fleet("generation.sync_in_memory=false", learner=FakeLearner(kept="h2"))
    fleet.groups[Role.GENERATOR] = FakeGenerators("pi_1")
    fleet.gen_policy = "pi_1"
    assert fleet.hold("iter_1/policy", -2.0, "h2")["sync_via"] == "files"


def test_restarted_generators_start_from_the_saved_directory(make_fleet):
    fleet = make_fleet(learner=FakeLearner(kept="h2"))
    # the generators died in the sync stage: the redone stage starts new ones from the
    # policy directory, and the learner's copy is not sent
    assert fleet.hold("iter_1/policy", -2.0, "h2")["sync_via"] == "files"
    (gens,) = make_fleet.started
    assert gens.loads == [("start", "iter_1/policy")]
