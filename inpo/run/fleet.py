"""The actors of a run: one placement for every role, each group started when a stage first
needs it, and which weights the generators hold.

The Trainer asks for roles (`ensure`) and for the generators to hold a policy (`hold`,
with the probe log-prob and weights hash the learner recorded for it, when it saved it);
everything about starting, placing and tearing down actors lives here. Every start
rewrites run_dir/placement.json: one object per running actor with its role, index,
Ray node id, the GPU ids Ray assigned (read inside the actor) and the GPU fraction it
asked for.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from inpo.config import InpoConfig
from inpo.durable import append_jsonl, write_json_atomic
from inpo.errors import ActorError, InpoError
from inpo.faults import Faults, record_fault
from inpo.generation.stage import start_generators
from inpo.judging.build import build_oracle
from inpo.learning.stage import start_learner
from inpo.plan.actors import ActorGroup
from inpo.plan.colocate import (
    SCHEDULE_FILE,
    estimated_memory,
    schedule_row,
    sleep_level,
    transitions,
)
from inpo.plan.memory import check_memory
from inpo.plan.placement import PlacementError, Plan, cluster_nodes, lost_bundles, plan_for, release
from inpo.plan.pool import stop
from inpo.stages import Role

PLACEMENT_FILE = "placement.json"
#: what schedule.jsonl's estimate assumes each simulated GPU holds (`inpo plan`'s default)
SIMULATED_GPU_BYTES = 80 * (1 << 30)


class Fleet:
    def __init__(
        self,
        cfg: InpoConfig,
        run_dir: Path,
        device: str,
        probe: tuple[list[int], int],
        faults: Faults,
    ):
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        self.probe = probe
        self.plan: Plan | None = None
        self.groups: dict[Role, Any] = {}  # the running ones
        self.gen_policy: str | None = None  # the directory the generators' weights are from
        self.probes: dict[str, float] = {}  # user policies: probe log-prob a generator gave
        self.restarts = 0
        self.asleep: set[str] = set()  # roles put to sleep (run.colocate)
        self.slept = False  # whether an engine really slept (CUDA), for schedule.jsonl
        self.stage = ""  # the stage running
        self.failures: set[tuple[int, str, str]] = set()  # (iteration, stage, cause) seen
        faults.killer = self.kill  # kill points name actors this fleet started

    @property
    def generators(self):
        return self.groups.get(Role.GENERATOR)

    @property
    def oracle(self):
        return self.groups.get(Role.JUDGE)

    @property
    def learner(self):
        return self.groups.get(Role.LEARNER)

    def ensure(self, roles: Iterable[Role], policy: str | None = None) -> None:
        """Start the groups of ``roles`` that are not running; new generators load
        ``policy`` (the one the calling stage needs). Colocated, the running groups of
        other roles go to sleep first and those of ``roles`` wake (`inpo.plan.colocate`)."""
        roles = list(roles)
        self._sleep_all_but(roles)
        if self.plan is None:  # one plan for every role, so GPUs are never handed out twice
            if self.cfg.run.ray_address:
                check_run_dir(self.run_dir)
            if self.device == "cuda":
                gpus = [int(n.gpus) for n in cluster_nodes() if n.gpus >= 1]
                check_memory(self.cfg, gpus, gpu_memory())
            self.plan = plan_for(self.cfg, self.device)
        slots = self.plan.slots
        new = [r for r in Role if r in roles and r not in self.groups]
        for role in new:
            if role == Role.LEARNER:
                group = start_learner(self.cfg, self.device, slots=slots[role])
            elif role == Role.JUDGE:
                group = build_oracle(self.cfg, self.device, slots=slots.get(role))
            else:
                group = start_generators(
                    self.cfg, self.device, policy, slots[role], len(self.probe[0])
                )
                self.gen_policy = policy
            self.groups[role] = group
        if new:
            self.write_placement()
        self._wake(roles)

    def hold(
        self, target: str, expected_probe: float | None = None, expected_hash: str | None = None
    ) -> dict[str, Any]:
        """Make the generators hold ``target`` and prove it; returns the sync metrics, with
        ``sync_via``: how the weights came (memory, files, or held: they had them already).

        A policy this run saved is checked against the tensor hash and probe log-prob the
        learner recorded (``expected_*``): sent from learner rank 0's memory when it still
        holds that policy (the save just before, in this process:
        generation.sync_in_memory), else reloaded in place from its directory. A user's
        policy (pi_ref, pi_1) is never loaded onto a learner rank to score the probe: the
        generators start from it, their own probe log-prob becomes its expected value
        (every generator must agree), and a later reload of it is checked against that."""
        known = expected_probe is not None
        if not known and target not in self.probes and self.gen_policy != target:
            self._stop(Role.GENERATOR)  # nothing to check a reload against: start anew
        started = Role.GENERATOR not in self.groups
        self.ensure([Role.GENERATOR], policy=target)
        if not known and target not in self.probes:
            self.probes[target] = self.generators.scores(*self.probe)[0]
        expected = expected_probe if known else self.probes[target]
        if self.gen_policy == target:
            info = self.generators.verify(self.probe, expected)
            return info | {"sync_via": "files" if started else "held"}
        if known and expected_hash is not None and self._learner_holds(expected_hash):
            info = self.generators.sync_from(self.learner, self.probe, expected, expected_hash)
        else:
            info = self.generators.sync(target, self.probe, expected, expected_hash)
        self.gen_policy = target
        return info

    def _learner_holds(self, digest: str) -> bool:
        """Whether learner rank 0 holds the policy of hash ``digest`` in memory for a sync."""
        if not self.cfg.generation.sync_in_memory or self.learner is None:
            return False
        return self.learner.outgoing_digest() == digest

    def records(self) -> list[dict[str, Any]]:
        groups = (self.generators, getattr(self.oracle, "inner", self.oracle), self.learner)
        return [r for g in groups for r in getattr(g, "placement", [])]

    def write_placement(self) -> None:
        write_json_atomic(self.run_dir / PLACEMENT_FILE, self.records())

    def group(self, role: str):
        """The running actor group of a role (placement.json's name), or None."""
        group = self.groups.get(Role(role))
        group = getattr(group, "inner", group)  # the debiased judge's actors
        return group if getattr(group, "actors", None) else None

    def enter(self, stage: str) -> None:
        """A stage begins (its phases call `ensure`): the one sleep levels depend on."""
        self.stage = stage

    def _running(self) -> list[Role]:
        return [role for role in Role if self.group(role) is not None]

    def _sleep_all_but(self, roles: list[Role]) -> None:
        if not self.cfg.run.colocate:
            return
        for role in transitions(roles, self._running(), self.asleep)[0]:
            level = sleep_level(role, self.stage)
            released = self.group(role).call("sleep", level)
            self.slept |= role != Role.LEARNER and any(released)  # a vLLM sleep (CUDA)
            self.asleep.add(role)
            if role == Role.GENERATOR and level == 2:
                self.gen_policy = None  # the weights are dropped: reload before use

    def _wake(self, roles: list[Role]) -> None:
        if not self.cfg.run.colocate:
            return
        for role in transitions(roles, self._running(), self.asleep)[1]:
            self.group(role).call("wake")
            self.asleep.discard(role)

    def leave(self, iteration: int, stage: str) -> None:
        """After a stage of a colocated run: its schedule.jsonl row."""
        if not self.cfg.run.colocate:
            return
        memory: dict[str, float] = {}
        if self.device == "cuda":
            for role in self._running():
                for used in self.group(role).call("gpu_memory_used"):
                    memory.update(used)
        engines = None
        if self.learner is not None:  # asked of the ranks, not taken from the schedule
            held = self.learner.call("holds_engine")
            engines = {f"learner {i}": h for i, h in enumerate(held)}
        row = schedule_row(
            iteration, stage, self.records(), self.asleep, self.slept, memory, engines
        )
        if self.device != "cuda":
            try:
                row["gpu_memory_estimated"] = estimated_memory(self.cfg, row, SIMULATED_GPU_BYTES)
            except InpoError:  # a model inpo.plan.memory cannot size: the row goes without
                pass
        append_jsonl(self.run_dir / SCHEDULE_FILE, [row])

    def kill(self, actor: str) -> None:
        """SIGKILL the process of ``actor`` ("role:index"; fault injection)."""
        role, _, index = actor.partition(":")
        pid = next(
            r["pid"] for r in self.records() if (r["role"], r["index"]) == (role, int(index))
        )
        os.kill(pid, signal.SIGKILL)

    def until_done(
        self, iteration: int, stage: str, fn: Callable[[], dict | None], restarted: Callable
    ) -> dict:
        """``fn()`` (a stage); after an actor failure, `recover` (``restarted(role)`` is
        told) and ``fn()`` again: stages are deterministic, so a redone one gives the same
        output. The info says how many restarts it took."""
        restarts = 0
        while True:
            t0 = time.perf_counter()
            try:
                info = fn() or {}
                return info | ({"restarts": restarts} if restarts else {})
            except ActorError as e:
                restarted(self.recover(e, iteration, stage, time.perf_counter() - t0))
                restarts += 1

    def recover(self, e: ActorError, iteration: int, stage: str, seconds_lost: float) -> str:
        """After an actor failed in a stage: tear down its group, so that the redone stage
        starts it again in its placement, and return the role; or, past run.max_restarts or
        at the same failure twice in this stage, record the stop and raise ``e``. One
        console line and one faults.jsonl row either way."""
        role = e.actor.split()[0] if e.actor else ""
        key = (iteration, stage, str(e))
        lost = e.died and lost_bundles(self.plan, self.cfg.run.placement_timeout_s)
        stop = (
            bool(lost)
            or role not in set(Role)
            or self.restarts >= self.cfg.run.max_restarts
            or key in self.failures
        )
        self.failures.add(key)
        record_fault(
            self.run_dir,
            iteration=iteration,
            stage=stage,
            actor=e.actor,
            cause=f"{e}; {lost}" if lost else str(e),
            action="stopped" if stop else "restarted",
            seconds_lost=round(seconds_lost, 3),
        )
        where = f"iteration {iteration}, stage {stage}" if iteration else f"setup, stage {stage}"
        if stop:
            print(f"[fault] {where}: {e}; stopping (resume with inpo train --resume)", flush=True)
            if lost:
                raise PlacementError(lost) from e
            raise e
        self.restarts += 1
        backoff = 2.0 ** (self.restarts - 1)
        print(
            f"[fault] {where}: {e}; restarting the {role} actors in {backoff:.0f}s and redoing "
            f"the stage (restart {self.restarts} of run.max_restarts={self.cfg.run.max_restarts})",
            flush=True,
        )
        self._stop(Role(role), failed=True)
        time.sleep(backoff)
        return role

    def _stop(self, role: Role, failed: bool = False) -> None:
        """Tear down a role's group; a ``failed`` one is killed outright (a dead actor cannot
        answer, and its peers may hang in a collective waiting for it)."""
        group = self.groups.pop(role, None)
        self.asleep.discard(role)  # new ones wake
        if group is not None and failed:
            ActorGroup.shutdown(getattr(group, "inner", group))
        elif group is not None:
            group.close() if role == Role.JUDGE else stop(group)

    def shutdown(self) -> None:
        try:
            for role in (Role.GENERATOR, Role.LEARNER, Role.JUDGE):
                self._stop(role)
        finally:
            release(self.plan)
            self.plan = None


def check_run_dir(run_dir: Path) -> None:
    """Every node of the cluster must see the run directory (ranks write the policy on
    their node, the driver renames it on its own): a marker the driver writes is read back
    by a task on each node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / ".node_check"
    token = uuid.uuid4().hex
    marker.write_text(token)
    read = ray.remote(num_cpus=0)(_text_of)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    seen = ray.get(
        [
            read.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(marker.resolve()))
            for n in nodes
        ]
    )
    marker.unlink()
    blind = [
        f"{n['NodeManagerAddress']}/{n['NodeID'][:6]}"
        for n, s in zip(nodes, seen, strict=True)
        if s != token
    ]
    if blind:
        raise InpoError(
            f"run.dir = {str(run_dir)!r} is not visible from node(s) {', '.join(blind)}: put "
            "the run directory on a filesystem every node mounts at the same path"
        )


def _text_of(path: str) -> str | None:
    p = Path(path)
    return p.read_text() if p.is_file() else None


def gpu_memory() -> float:
    """Bytes of one of the cluster's GPUs, read on a GPU (the driver may have none)."""
    import ray

    def total() -> float:
        import torch

        return float(torch.cuda.get_device_properties(0).total_memory)

    return ray.get(ray.remote(num_gpus=1, num_cpus=0)(total).remote())
