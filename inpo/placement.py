"""Where each actor runs: a pure plan from the cluster shape, then Ray options.

On GPUs every generator, judge and learner rank gets GPUs of its own when the
cluster has enough; a generator with tensor parallelism keeps its GPUs on one
node. When there are fewer GPUs than actors (one GPU, the smoke test), actors
of one GPU each share the GPUs in equal fractions. On CPU every actor asks for
one logical CPU and all of them share the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inpo.errors import InpoError


class PlacementError(InpoError):
    pass


@dataclass(frozen=True)
class ActorSlot:
    role: str
    index: int
    node: int | None  # index into the sorted node list; None on CPU
    num_gpus: float  # what the actor asks Ray for (a fraction when GPUs are shared)


def plan_placement(
    gpus_per_node: list[int], demand: dict[str, tuple[int, int]]
) -> dict[str, list[ActorSlot]]:
    """demand: role -> (actors, GPUs per actor), in priority order."""
    if sum(gpus_per_node) == 0:
        return {
            role: [ActorSlot(role, i, None, 0.0) for i in range(n)]
            for role, (n, _) in demand.items()
        }
    need = sum(n * g for n, g in demand.values())
    if need <= sum(gpus_per_node):
        return _dedicated(gpus_per_node, demand)
    if any(g > 1 for n, g in demand.values() if n):
        raise PlacementError(
            f"the job needs {need} GPUs ({_describe(demand)}) but the cluster has "
            f"{sum(gpus_per_node)} ({gpus_per_node} per node); multi-GPU actors cannot share"
        )
    return _shared(gpus_per_node, demand)


def _describe(demand: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{role} {n}x{g}" for role, (n, g) in demand.items() if n)


def _dedicated(gpus_per_node, demand):
    free = list(gpus_per_node)
    plan: dict[str, list[ActorSlot]] = {}
    # Biggest actors first so tensor-parallel groups find a whole node's worth.
    order = sorted(
        ((role, i, g) for role, (n, g) in demand.items() for i in range(n)),
        key=lambda t: -t[2],
    )
    for role, i, g in order:
        node = next((k for k, f in enumerate(free) if f >= g), None)
        if node is None:
            raise PlacementError(
                f"{role} {i} needs {g} GPUs on one node; free per node: {free} "
                f"(cluster {gpus_per_node}, demand {_describe(demand)})"
            )
        free[node] -= g
        plan.setdefault(role, []).append(ActorSlot(role, i, node, float(g)))
    return {role: sorted(plan.get(role, []), key=lambda s: s.index) for role in demand}


def _shared(gpus_per_node, demand):
    gpus = [node for node, n in enumerate(gpus_per_node) for _ in range(n)]
    actors = [(role, i) for role, (n, _) in demand.items() for i in range(n)]
    per_gpu = -(-len(actors) // len(gpus))
    plan: dict[str, list[ActorSlot]] = {role: [] for role in demand}
    for k, (role, i) in enumerate(actors):
        plan[role].append(ActorSlot(role, i, gpus[k % len(gpus)], 1.0 / per_gpu))
    return plan


# --- Ray side -----------------------------------------------------------------


def cluster_nodes() -> list[dict[str, Any]]:
    """Alive Ray nodes in a fixed order (the order plan_placement's indices refer to)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return sorted(nodes, key=lambda n: (n["NodeManagerAddress"], n["NodeID"]))


def cluster_gpus() -> list[int]:
    return [int(n["Resources"].get("GPU", 0)) for n in cluster_nodes()]


def plan_for(device: str, demand: dict[str, tuple[int, int]]) -> dict[str, list[ActorSlot]]:
    """plan_placement over the Ray cluster's GPUs (none when running on CPU)."""
    return plan_placement(cluster_gpus() if device == "cuda" else [], demand)


def actor_options(slot: ActorSlot, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Ray .options() for an actor in ``slot``."""
    opts: dict[str, Any] = {"num_cpus": 1, "num_gpus": slot.num_gpus}
    if env:
        opts["runtime_env"] = {"env_vars": env}
    if slot.node is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node_id = cluster_nodes()[slot.node]["NodeID"]
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
    return opts
