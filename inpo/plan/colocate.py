"""Who is awake in each stage of a colocated run (run.colocate): every GPU holds a learner
rank, a generator and a judge engine, and each phase of a stage (`inpo.stages`: eval
generates, then judges) wakes the roles it uses and puts the others to sleep first, so
one vLLM engine at a time holds most of the GPU.

Sleep per role, and why:
- generators: vLLM sleep level 2 (weights and KV cache dropped) where they wake to load a
  new policy (the sync stage reloads in place and verifies it by tensor hash and probe
  log-prob); a wake that is not followed by a reload is followed by one anyway (the fleet
  forgets which weights they held), so a bad wake is always caught. Level 1 (weights in
  host memory) where eval puts them to sleep to judge: the next generate samples from the
  policy they hold, checked by the probe on wake.
- judge: vLLM sleep level 1 (weights kept in host memory): it is never re-synced, so its
  weights must come back exactly as they were.
- learner ranks: the DeepSpeed engine is released (weights, gradients, optimizer state),
  on every device. A learner sleeps only after save, and the next iteration builds its
  engine from the saved policy anyway; nothing is offloaded, so any optimizer works.
vLLM sleeps on CUDA only, so on CPU (run.simulate_gpus) the generators and judges stay as
they are and their schedule is recorded. Each stage appends a row to
run_dir/schedule.jsonl: per GPU, which actors were awake and asleep, whether the vLLM
sleeps were performed, whether each learner rank holds an engine (asked of the ranks),
and the memory of each GPU: on CUDA what was in use after the stage, on simulated GPUs
what inpo.plan.memory (`inpo plan`'s model) estimates for the awake actors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from inpo.config import InpoConfig
from inpo.plan.memory import CONTEXT_BYTES, estimate
from inpo.stages import Role, uses

SCHEDULE_FILE = "schedule.jsonl"


def sleep_level(role: str, stage: str) -> int:
    """vLLM's sleep level for ``role`` put to sleep in ``stage`` (a learner: 0, released).
    Generators put to sleep inside a stage that used them (eval's judging) hold the policy
    the next generate samples from: they keep their weights; elsewhere the next use loads
    a new policy."""
    if role == Role.GENERATOR:
        return 1 if role in uses(stage) else 2
    return 1 if role == Role.JUDGE else 0


def transitions(
    roles: Iterable[str], running: Iterable[str], asleep: set[str]
) -> tuple[list, list]:
    """(roles to put to sleep, roles to wake) before a phase that calls ``roles``, of the
    ``running`` ones: one phase of a stage (`inpo.stages`) at a time is awake."""
    used = set(roles)
    to_sleep = [r for r in running if r not in used and r not in asleep]
    to_wake = [r for r in running if r in used and r in asleep]
    return to_sleep, to_wake


def schedule_row(
    iteration: int,
    stage: str,
    records: list[dict[str, Any]],
    asleep: set[str],
    performed: bool,
    memory: dict[str, float] | None = None,
    learner_engines: dict[str, bool] | None = None,
) -> dict[str, Any]:
    """One schedule.jsonl row: per GPU (node/gpu id, as in placement.json), who was awake."""
    gpus: dict[str, dict[str, list[str]]] = {}
    for r in records:
        state = "asleep" if r["role"] in asleep else "awake"
        for g in r["gpus"]:
            where = gpus.setdefault(f"{r['node'][:8]}/{g}", {"awake": [], "asleep": []})
            where[state].append(f"{r['role']} {r['index']}")
    row = {"iteration": iteration, "stage": stage, "gpus": gpus, "performed": performed}
    if memory:
        row["gpu_memory_used"] = memory
    if learner_engines is not None:
        row["learner_engines"] = learner_engines
    return row


def estimated_memory(cfg: InpoConfig, row: dict[str, Any], gpu_bytes: float) -> dict[str, float]:
    """Simulated GPUs: each GPU's bytes in the row's stage by inpo.plan.memory's model for GPUs of
    ``gpu_bytes``: the whole share of each awake actor, the CUDA context of each sleeping
    one (what `inpo plan` sums per phase), keyed like the row."""
    nodes = Counter(gpu.split("/")[0] for gpu in row["gpus"])
    actors = {
        f"{a.role} {a.index}": a
        for r in estimate(cfg, list(nodes.values()), gpu_bytes).rows
        for a in r.actors
    }
    return {
        gpu: sum(actors[name].total(row["stage"]) for name in who["awake"])
        + CONTEXT_BYTES * len(who["asleep"])
        for gpu, who in row["gpus"].items()
    }


def awake_but_unused(row: dict[str, Any]) -> list[str]:
    """Actors a schedule row shows awake in a stage that does not use their role."""
    used = uses(row["stage"])
    return [
        f"{gpu}: {actor}"
        for gpu, who in row["gpus"].items()
        for actor in who["awake"]
        if actor.split()[0] not in used
    ]
