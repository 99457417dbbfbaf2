"""One group of Ray actors for every role (generators, judges, learner ranks).

A role's actors are started in their placement slots, set up with one call (so a
failure surfaces as an exception, not as a dead actor), called all at once or with
the work split evenly in order, and killed together. Any failure inside an actor
reaches the driver as one line naming the role, the actor and the root cause; the
full traceback stays in the actor's log under Ray's session directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray

from inpo.errors import ActorError, InpoError, message_line
from inpo.plan.placement import ActorSlot, actor_options

#: set on a cluster, Ray leaves every GPU of a node visible to every actor
NOSET_CUDA = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"


def visible_devices(gpus: list[int], environ: Mapping[str, str]) -> str | None:
    """CUDA_VISIBLE_DEVICES for an actor Ray assigned ``gpus``, where Ray did not set it
    (NOSET_CUDA): its own GPUs, so that device 0 (what every engine uses) is the one Ray
    gave it, as without the variable. None: leave the environment as it is."""
    if not gpus or not environ.get(NOSET_CUDA):
        return None
    return ",".join(str(g) for g in gpus)


class Actor:
    """What every inpo actor answers besides its role's methods (asked only of actors;
    LearnerRank also runs in plain processes)."""

    def placed(self, threads: int) -> dict[str, Any]:
        """Use the ``threads`` CPU threads this actor reserved; report where Ray put it."""
        import torch

        torch.set_num_threads(threads)
        gpus = [int(g) for g in ray.get_gpu_ids()]
        if (visible := visible_devices(gpus, os.environ)) is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible  # before any CUDA context exists
        return {"node": ray.get_runtime_context().get_node_id(), "gpus": gpus, "pid": os.getpid()}

    def gpu_memory_used(self) -> dict[str, float]:
        """Bytes in use on this actor's GPU (every process on it), keyed like
        schedule.jsonl: the start of the node id / the GPU id."""
        import torch

        if not torch.cuda.is_available():
            return {}
        free, total = torch.cuda.mem_get_info()
        node = ray.get_runtime_context().get_node_id()[:8]
        return {f"{node}/{g}": float(total - free) for g in ray.get_gpu_ids()[:1]}


def root_cause(e: BaseException) -> str:
    """The innermost exception's message, on one line."""
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    text = message_line(str(e))
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def death_cause(e: BaseException) -> str:
    """Why an actor died, on one line: the exception that ended its constructor (the last
    line of the traceback Ray quotes), else Ray's first line (a crash, an OOM kill)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if "creation task" in lines[0] and len(lines) > 1:
        return message_line("\n".join(lines[1:]))
    return lines[0]


#: how long a new actor may wait for its placement bundle (the group is reserved already,
#: so only a lost node makes it wait)
PLACE_TIMEOUT_S = 300.0


class ActorGroup:
    """``cls`` (an `Actor`) instances as Ray actors, one per slot, built with
    ``init_args(index)`` (keep constructors light: an error there only leaves a dead
    actor); the heavy part goes in the method ``setup``, called on every actor with
    ``setup_args`` right after."""

    def __init__(
        self,
        role: str,
        cls: type,
        slots: list[ActorSlot],
        *,
        init_args: Callable[[int], tuple] = lambda index: (),
        setup: str | None = None,
        setup_args: tuple = (),
        env: dict[str, str] | None = None,
    ):
        if not slots:
            raise ActorError(f"no placement slots for the {role} actors")
        self.role, self.slots = role, slots
        remote = ray.remote(cls)
        self.actors = [
            remote.options(**actor_options(s, env)).remote(*init_args(i))
            for i, s in enumerate(slots)
        ]
        try:
            refs = [a.placed.remote(s.num_cpus) for a, s in zip(self.actors, slots, strict=True)]
            _, pending = ray.wait(refs, num_returns=len(refs), timeout=PLACE_TIMEOUT_S)
            if pending:  # their bundle's node is gone (the placement group is rescheduling)
                raise ActorError(
                    f"{len(pending)} of {len(refs)} {role} actors were not placed within "
                    f"{PLACE_TIMEOUT_S:g} s: the GPUs and CPUs of their placement bundles are "
                    "not free (a node left the cluster?); `ray status` shows what is missing",
                    f"{slots[0].role} {slots[0].index}",
                )
            where = self.get(refs)
            #: one placement.json record per actor (inpo.run.fleet)
            self.placement = [
                {"role": s.role, "index": s.index, **w, "gpu_fraction": s.num_gpus}
                for s, w in zip(slots, where, strict=True)
            ]
            if setup is not None:
                self.call(setup, *setup_args)
        except BaseException:
            self.shutdown()
            raise

    def get(self, refs: list) -> list:
        """ray.get of one future per actor (in actor order), failures as one line, the
        first as soon as it happens (not after the peers it leaves waiting in a
        collective)."""
        try:
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                ray.get(ready)
            return ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(e.cause, BaseException) else e
            if isinstance(cause, InpoError):
                raise cause from None
            who, actor = self._who(refs)
            raise ActorError(f"{who} failed: {root_cause(cause)}", actor) from None
        except ray.exceptions.RayActorError as e:
            who, actor = self._who(refs)
            raise ActorError(f"{who} died: {death_cause(e)}", actor, died=True) from None

    def _who(self, refs: list) -> tuple[str, str]:
        """(this group's name for the failed actor, its placement.json "role index")."""
        # Ray does not say which future failed; the first that ended badly is it (its peers
        # may still be waiting).
        for i, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.GetTimeoutError:
                continue
            except Exception:
                slot = self.slots[i]
                return f"{self.role} {i}", f"{slot.role} {slot.index}"
        return self.role, self.slots[0].role

    def call(self, method: str, *args: Any, **kwargs: Any) -> list:
        """The same call on every actor; their answers in actor order."""
        return self.get([getattr(a, method).remote(*args, **kwargs) for a in self.actors])

    def map(self, method: str, *columns: Sequence, **kwargs: Any) -> list:
        """Split equal-length ``columns`` evenly across the actors (in order), call
        ``method`` on each part and concatenate the answers in order."""
        n = len(columns[0])
        if n == 0:
            return []
        size = -(-n // len(self.actors))
        futures = [
            getattr(actor, method).remote(*(list(c[lo : lo + size]) for c in columns), **kwargs)
            for actor, lo in zip(self.actors, range(0, n, size), strict=False)
        ]
        return [x for part in self.get(futures) for x in part]

    def release(self) -> None:
        """Drop what a run left in the actors (before they serve another, `inpo.plan.pool`)."""

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
