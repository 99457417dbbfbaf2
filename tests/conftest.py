"""Shared, expensive fixtures: tiny models and one Ray cluster per test session (helpers
that tests import live in helpers.py).

The session's cluster is its own (`address="local"`, never one that `ray start` left
running on the machine); every test that is not about processes or clusters runs on it,
in-process, and must leave no actor and no placement group behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import start_session_ray

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# what `inpo train` gives a local cluster on 2 cores (8), and room for the pool's idle groups
SESSION_CPUS = 12


# Module fixtures that run or start something expensive: under `pytest -n` (make test) the
# tests that share one run on one worker, so it is built once. The `cluster` tests, which
# start Ray clusters of their own, run one after another on one worker too: Ray gives a
# new node 30 s to register, which two starts at once on a loaded 2-core host can miss.
SHARED = ("full_run", "paper_pairpm_whole", "learned", "two_generators")


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups
def pytest_collection_modifyitems(config, items):
    """Where a test lives says what it is: everything under tests/e2e/ is `e2e`."""
    xdist = config.pluginmanager.hasplugin("xdist")
    for item in items:
        if "e2e" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.e2e)
        shared = [name for name in SHARED if name in getattr(item, "fixturenames", ())]
        if item.get_closest_marker("cluster"):
            shared = ["cluster"]
        if shared and xdist:
            item.add_marker(pytest.mark.xdist_group(shared[0]))


@pytest.fixture(scope="session", autouse=True)
def xdist_groups_hold(request):
    """A group xdist did not take would build each shared run once per worker and start
    two clusters at once, silently (pytest 9 with xdist 3.8 did): every test errors."""
    if getattr(request.config.option, "loadgroup", False):
        marked = [i.nodeid for i in request.session.items if i.get_closest_marker("xdist_group")]
        lost = [n for n in marked if "@" not in n.rsplit("]", 1)[-1]]
        if lost:
            pytest.fail(f"pytest-xdist did not group {lost[0]} ({len(lost)} such tests)")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from inpo.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", layers=2, hidden=64)


@pytest.fixture(scope="session")
def tiny_tied_model(tmp_path_factory) -> Path:
    from inpo.models.tiny import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny_tied",
        layers=2,
        hidden=64,
        tied_embeddings=True,
        seed=1,
    )


@pytest.fixture(scope="session")
def actor_pool():
    """The generator and learner groups in-process runs keep for the next one
    (`inpo.run.pool`): most runs of the suite start the same engines."""
    from inpo.plan.pool import keep_actors

    with keep_actors() as pool:
        yield pool


@pytest.fixture(scope="session")
def ray_cluster(actor_pool):
    """The session's Ray cluster; yields its address. Module-scoped fixtures use this one."""
    import ray

    yield start_session_ray(SESSION_CPUS)
    actor_pool.close()
    ray.shutdown()


def leftovers(pool) -> list[str]:
    """Live actors (but the pool's idle ones) and placement groups of the session's
    cluster."""
    import ray
    from ray._private import state

    kept = pool.actor_ids()
    alive = [
        f"actor {a['ActorClassName']} ({a['ActorID'][:8]})"
        for a in state.actors().values()
        if a["State"] != "DEAD" and a["ActorID"] not in kept
    ]
    groups = [
        f"placement group {g['name'] or g['placement_group_id'][:8]}"
        for g in ray.util.placement_group_table().values()
        if g["state"] != "REMOVED"
    ]
    return alive + groups


@pytest.fixture
def ray_session(ray_cluster, actor_pool):
    """The session's Ray cluster (its address) for one test, which must leave no actor and
    no placement group of its own behind (a module fixture's stay, and the pool's)."""
    before = set(leftovers(actor_pool))
    yield ray_cluster
    deadline = time.monotonic() + 30  # a killed actor is marked dead asynchronously
    while (left := sorted(set(leftovers(actor_pool)) - before)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"left on the session's Ray cluster: {left}"
