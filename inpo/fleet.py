"""The actors of a run: one placement for every role, each group started when a stage first
needs it, and which weights the generators hold.

The Trainer asks for roles (`ensure`) and for the generators to hold a policy (`hold`);
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inpo import faults
from inpo.colocate import (
    SCHEDULE_FILE,
    SLEEP_LEVEL,
    estimated_memory,
    schedule_row,
    transitions,
)
from inpo.config import InpoConfig
from inpo.durable import append_jsonl, write_json_atomic
from inpo.errors import ActorError, InpoError
from inpo.memory import check_memory, role_demand
from inpo.placement import PlacementError, Plan, cluster_nodes, lost_bundles, plan_for, release

PLACEMENT_FILE = "placement.json"
#: what schedule.jsonl's estimate assumes each simulated GPU holds (`inpo plan`'s default)
SIMULATED_GPU_BYTES = 80 * (1 << 30)
#: placement.json's role -> the Fleet attribute holding that role's group
GROUP_OF = {"generator": "generators", "judge": "oracle", "learner": "learner"}
#: the probe log-prob and weights hash a policy directory is known to give, if known
Known = Callable[[str], "tuple[float, str] | None"]


class Fleet:
    def __init__(
        self,
        cfg: InpoConfig,
        run_dir: Path,
        device: str,
        probe: tuple[list[int], int],
        known: Known,
    ):
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        self.probe, self.known = probe, known
        self.plan: Plan | None = None
        self.generators = None
        self.oracle = None
        self.learner = None
        self.gen_policy: str | None = None  # the directory the generators' weights are from
        self.probes: dict[str, float] = {}  # user policies: probe log-prob a generator gave
        self.restarts = 0
        self.asleep: set[str] = set()  # roles put to sleep (run.colocate)
        self.slept = False  # whether an engine really slept (CUDA), for schedule.jsonl
        self.failures: set[tuple[int, str, str]] = set()  # (iteration, stage, cause) seen
        faults.killer = self.kill

    def ensure(self, roles: tuple[str, ...], policy: str | None = None) -> None:
        """Start the groups of ``roles`` that are not running; new generators load
        ``policy`` (the one the calling stage needs)."""
        from inpo.generate import start_generators
        from inpo.learn import start_learner
        from inpo.oracle import build_oracle

        if self.plan is None:  # one plan for every role, so GPUs are never handed out twice
            if self.cfg.run.ray_address:
                check_run_dir(self.run_dir)
            if self.device == "cuda":
                gpus = [int(n.gpus) for n in cluster_nodes() if n.gpus >= 1]
                check_memory(self.cfg, gpus, gpu_memory())
            self.plan = plan_for(self.cfg, self.device, role_demand(self.cfg))
        slots = self.plan.slots
        started = False
        if "learner" in roles and self.learner is None:
            self.learner = start_learner(self.cfg, self.device, slots=slots["learner"])
            started = True
        if "oracle" in roles and self.oracle is None:
            self.oracle = build_oracle(self.cfg, self.device, slots=slots.get("judge"))
            started = True
        if "generators" in roles and self.generators is None:
            self.generators = start_generators(
                self.cfg, self.device, policy, slots["generator"], len(self.probe[0])
            )
            self.gen_policy = policy
            started = True
        if started:
            self.write_placement()

    def hold(self, target: str) -> dict[str, Any]:
        """Make the generators hold ``target`` and prove it; returns the sync metrics.

        A policy this run saved is reloaded in place and checked against the learner's
        tensor hash and probe log-prob. A user's policy (pi_ref, pi_1) is never loaded onto
        a learner rank to score the probe: the generators start from it, their own probe
        log-prob becomes its expected value (every generator must agree), and a later
        reload of it is checked against that."""
        known = self.known(target)
        if known is None and target not in self.probes and self.gen_policy != target:
            self._stop("generators")  # nothing to check a reload against: start anew
        self.ensure(("generators",), policy=target)
        if known is None and target not in self.probes:
            self.probes[target] = self.generators.scores(*self.probe)[0]
        expected, digest = known if known is not None else (self.probes[target], None)
        if self.gen_policy == target:
            return self.generators.verify(self.probe, expected)
        info = self.generators.sync(target, self.probe, expected, digest)
        self.gen_policy = target
        return info

    def records(self) -> list[dict[str, Any]]:
        groups = (self.generators, getattr(self.oracle, "inner", self.oracle), self.learner)
        return [r for g in groups for r in getattr(g, "placement", [])]

    def write_placement(self) -> None:
        write_json_atomic(self.run_dir / PLACEMENT_FILE, self.records())

    def group(self, role: str):
        """The running actor group of a role (placement.json's name), or None."""
        group = getattr(self, GROUP_OF[role])
        group = getattr(group, "inner", group)  # the debiased judge's actors
        return group if getattr(group, "actors", None) else None

    def enter(self, stage: str) -> None:
        """Before a stage of a colocated run: the running roles it does not use go to
        sleep, the ones it uses wake (`inpo.colocate`)."""
        if not self.cfg.run.colocate:
            return
        running = [role for role in GROUP_OF if self.group(role) is not None]
        to_sleep, to_wake = transitions(stage, running, self.asleep)
        for role in to_sleep:
            self.slept |= any(self.group(role).call("sleep", SLEEP_LEVEL[role]))
            self.asleep.add(role)
            if role == "generator":
                self.gen_policy = None  # level 2 drops the weights: reload before use
        for role in to_wake:
            self.group(role).call("wake")
            self.asleep.discard(role)

    def leave(self, iteration: int, stage: str) -> None:
        """After a stage of a colocated run: its schedule.jsonl row."""
        if not self.cfg.run.colocate:
            return
        memory: dict[str, float] = {}
        if self.device == "cuda":
            for role in GROUP_OF:
                if self.group(role) is not None:
                    for used in self.group(role).call("gpu_memory_used"):
                        memory.update(used)
        row = schedule_row(iteration, stage, self.records(), self.asleep, self.slept, memory)
        if self.device != "cuda":
            try:
                row["gpu_memory_estimated"] = estimated_memory(self.cfg, row, SIMULATED_GPU_BYTES)
            except InpoError:  # a model inpo.memory cannot size: the row goes without
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
            or role not in GROUP_OF
            or self.restarts >= self.cfg.run.max_restarts
            or key in self.failures
        )
        self.failures.add(key)
        faults.record_fault(
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
        self._stop(GROUP_OF[role], failed=True)
        time.sleep(backoff)
        return role

    def _stop(self, role: str, failed: bool = False) -> None:
        """Tear down a role's group; a ``failed`` one is killed outright (a dead actor cannot
        answer, and its peers may hang in a collective waiting for it)."""
        from inpo.actors import ActorGroup

        group = getattr(self, role)
        self.asleep -= {r for r, attr in GROUP_OF.items() if attr == role}  # new ones wake
        if group is not None and failed:
            ActorGroup.shutdown(getattr(group, "inner", group))
        elif group is not None:
            group.close() if role == "oracle" else group.shutdown()
        setattr(self, role, None)

    def shutdown(self) -> None:
        try:
            for role in ("generators", "learner", "oracle"):
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
