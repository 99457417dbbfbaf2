"""Actor groups kept between the runs of one process: a sweep in a notebook, or the test
session, where starting a vLLM engine (~15 s on a CPU, most of it imports) and a
DeepSpeed process group (~10 s) would otherwise cost more than a tiny run's compute.

    with keep_actors():
        train("a.yaml")
        train("b.yaml")  # reuses a.yaml's generators and learner ranks where they match

A run (or `inpo learn`, `generate`, `answer`) hands back the generator and learner groups
it stopped cleanly (`stop`); the next takes one whose start arguments were the same (the
key) and sets it up for its config (`start_or_reuse`): learner ranks drop everything but
their process group, generators reload the run's first policy from its files (so the
fleet's probe check sees them as new). Only
groups outside a placement group are kept (on GPUs, the run's placement group is removed
with its actors), and at most one idle group per role, so idle ones never hold the CPUs a
run needs. Outside `keep_actors` nothing is kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from inpo.plan.actors import ActorGroup
from inpo.plan.placement import ActorSlot

G = TypeVar("G", bound=ActorGroup)

_POOL: ContextVar[ActorPool | None] = ContextVar("inpo_actor_pool", default=None)


class ActorPool:
    def __init__(self) -> None:
        self.idle: dict[str, tuple[Hashable, Any]] = {}  # role -> (key, group)
        self.reused = 0  # groups taken again (the tests check that reuse happens)

    def take(self, role: str, key: Hashable) -> Any | None:
        """The idle group of ``role`` started with ``key``, if it is still alive; else
        None, and any other idle group of the role is shut down to make room."""
        held = self.idle.pop(role, None)
        if held is None:
            return None
        held_key, group = held
        if held_key == key and _alive(group):
            self.reused += 1
            return group
        ActorGroup.shutdown(group)
        return None

    def give(self, role: str, key: Hashable, group: Any) -> None:
        old = self.idle.pop(role, None)
        if old is not None:
            ActorGroup.shutdown(old[1])
        self.idle[role] = (key, group)

    def actor_ids(self) -> set[str]:
        return {a._actor_id.hex() for _, g in self.idle.values() for a in g.actors}

    def close(self) -> None:
        for _, group in self.idle.values():
            ActorGroup.shutdown(group)
        self.idle.clear()


def _alive(group: Any) -> bool:
    import ray

    try:
        ray.get([a.__ray_ready__.remote() for a in group.actors], timeout=30)
        return True
    except Exception:
        return False


def current_pool() -> ActorPool | None:
    """The pool of the enclosing `keep_actors`, or None."""
    return _POOL.get()


@contextlib.contextmanager
def keep_actors() -> Iterator[ActorPool]:
    """Runs inside share their generator and learner groups (see the module's docstring);
    the idle ones are shut down on exit."""
    pool = ActorPool()
    token = _POOL.set(pool)
    try:
        yield pool
    finally:
        _POOL.reset(token)
        pool.close()


def start_or_reuse(
    role: str,
    key: Hashable,
    slots: list[ActorSlot],
    start: Callable[[], G],
    reuse: Callable[[G], None],
) -> G:
    """``start()`` a group of ``role``, or take the idle one of the enclosing `keep_actors`
    started with the same ``key`` and slot shapes and ``reuse`` it (set it up for this
    run). A group inside a placement group is never kept."""
    pool = current_pool()
    if pool is None or any(s.pg is not None for s in slots):
        return start()
    key = (key, tuple((s.num_cpus, s.num_gpus) for s in slots))
    group = pool.take(role, key)
    if group is not None:
        try:
            reuse(group)
        except BaseException:
            ActorGroup.shutdown(group)
            raise
    else:
        group = start()
    group.pool_key = (role, key)
    return group


def stop(group: ActorGroup) -> None:
    """A run is done with ``group``: back to the pool it came from (what the run left in
    its actors dropped first), else shut down."""
    pool, key = current_pool(), getattr(group, "pool_key", None)
    if pool is None or key is None:
        group.shutdown()
        return
    try:
        group.release()
        pool.give(*key, group)
    except BaseException:
        ActorGroup.shutdown(group)
        raise
