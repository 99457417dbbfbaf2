"""Where each actor runs: a pure plan from the cluster's free resources, then one Ray
placement group that reserves it before any actor starts.

On GPUs (real, or Ray's logical GPUs under run.simulate_gpus) every generator, judge and
learner rank gets a bundle of its own when the cluster has enough free GPUs: one GPU, or a
tensor-parallel generator's GPUs in one bundle (so on one node). The generator holds all of
them itself and vLLM runs its tensor-parallel workers as local processes, never as Ray
actors inside the group (`inpo.generation.generator`). With fewer free GPUs than actors
(one GPU, the smoke test) there is one bundle per GPU and actors of one GPU each share
them in fractions: learner ranks first, one per GPU (two NCCL ranks cannot share a
device), then the others on the least crowded GPUs. Every actor asks Ray for the CPU
threads it uses, and uses that many.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from inpo.config import MODEL_BACKENDS, ConfigError, InpoConfig
from inpo.errors import InpoError, message_line
from inpo.stages import Role


class PlacementError(InpoError):
    pass


@dataclass(frozen=True)
class Node:
    name: str  # for messages: address and the start of Ray's node id
    gpus: float  # free
    cpus: float  # free


@dataclass(frozen=True)
class ActorSlot:
    role: str
    index: int
    num_gpus: float  # what the actor asks Ray for (a fraction when GPUs are shared)
    num_cpus: int  # CPU threads it reserves and uses
    bundle: int | None = None  # index into Plan.bundles; None: no placement group (CPU)
    pg: Any = None  # the Ray placement group once reserved


@dataclass
class Plan:
    slots: dict[str, list[ActorSlot]]
    bundles: list[dict[str, float]] = field(default_factory=list)
    sharing: list[str] = field(default_factory=list)  # which actors share which GPU


#: Bundles are rounded down to Ray's resource precision, so k shares never exceed 1.0.
_PRECISION = 10_000


def _share(k: int) -> float:
    return (_PRECISION // k) / _PRECISION


def plan_placement(
    nodes: list[Node],
    demand: dict[str, tuple[int, int]],
    host_cores: int | None = None,
    colocate: bool = False,
) -> Plan:
    """demand: role -> (actors, GPUs per actor). ``nodes`` are the cluster's nodes with
    their free resources; no GPU anywhere plans for CPU, where every actor of a role gets
    host_cores / actors threads (roles take turns, so they need not split the host).
    ``colocate``: one bundle per GPU shared by a learner rank, a generator and a judge
    (run.colocate), even where the cluster could give each its own."""
    gpu_nodes = [n for n in nodes if n.gpus >= 1]
    if not gpu_nodes:
        cores = host_cores or os.cpu_count() or 1
        return Plan(
            {
                role: [ActorSlot(role, i, 0.0, max(1, cores // n)) for i in range(n)]
                for role, (n, _) in demand.items()
            }
        )
    free = sum(int(n.gpus) for n in gpu_nodes)
    per_gpu = max(1, min(int(n.cpus // n.gpus) for n in gpu_nodes))
    need = sum(n * g for n, g in demand.values())
    if need <= free and not colocate:
        plan = _dedicated(demand, per_gpu)
    else:
        plan = _shared(demand, free, per_gpu)
    _check_fit(plan, nodes, demand)
    return plan


def colocated_layout(cfg: InpoConfig, gpus: int) -> InpoConfig:
    """The config with run.colocate decided (unset: on when actors are placed on ``gpus``
    > 0 GPUs and generators are not tensor-parallel) and, when colocated, the unset actor
    counts filling the GPUs: one learner rank, one generator and one judge per GPU.
    Explicit counts above that are refused with one line."""

    tp = cfg.generation.tensor_parallel_size
    # unset: on where actors are placed on GPUs, except for tensor-parallel generators
    colocate = cfg.run.colocate if cfg.run.colocate is not None else gpus > 0 and tp == 1
    out = cfg.model_copy(deep=True)
    out.run.colocate = colocate
    if not colocate:
        return out
    if gpus == 0:
        raise ConfigError(
            "run.colocate = true: the actors are not placed on GPUs (a CUDA cluster, or "
            "run.simulate_gpus with logical ones)"
        )
    if tp > 1:
        raise ConfigError(
            f"run.colocate with generation.tensor_parallel_size = {tp}: a tensor-parallel "
            "engine cannot share its GPUs with learner ranks yet; set run.colocate=false"
        )
    fields = (
        (out.learner, "num_ranks", "learner"),
        (out.generation, "num_generators", "generator"),
        (out.oracle, "num_actors", "judge"),
    )
    for section, name, role in fields:
        n = getattr(section, name)
        if n is not None and n > gpus:
            key = f"{type(section).__name__.removesuffix('Config').lower()}.{name}"
            raise ConfigError(
                f"{key} = {n}: the colocated layout of {gpus} GPUs holds at most one {role} per "
                "GPU; lower it or set run.colocate=false"
            )
        try:
            setattr(section, name, gpus if n is None else n)
        except ValueError as e:  # learner.global_batch_size no longer divides
            raise ConfigError(f"run.colocate on {gpus} GPUs: {message_line(str(e))}") from None
    return out


def _dedicated(demand: dict[str, tuple[int, int]], per_gpu: int) -> Plan:
    slots: dict[str, list[ActorSlot]] = {role: [] for role in demand}
    bundles = []
    for role, (n, g) in demand.items():
        for i in range(n):
            slots[role].append(ActorSlot(role, i, float(g), g * per_gpu, bundle=len(bundles)))
            bundles.append({"GPU": float(g), "CPU": float(g * per_gpu)})
    return Plan(slots, bundles)


def _shared(demand: dict[str, tuple[int, int]], gpus: int, per_gpu: int) -> Plan:
    if any(g > 1 for n, g in demand.values() if n):
        raise PlacementError(
            f"the job needs {sum(n * g for n, g in demand.values())} GPUs ({_describe(demand)}) "
            f"but the cluster has {gpus} free; multi-GPU actors cannot share GPUs"
        )
    ranks = demand.get("learner", (0, 1))[0]
    if ranks > gpus:
        raise PlacementError(
            f"learner.num_ranks = {ranks} needs {ranks} GPUs, one per rank (two NCCL ranks "
            f"cannot share a GPU), but the cluster has {gpus} free"
        )
    on_gpu: list[list[tuple[str, int]]] = [[] for _ in range(gpus)]
    for i in range(ranks):
        on_gpu[i].append(("learner", i))
    for role, (n, _) in demand.items():
        if role == "learner":
            continue
        for i in range(n):
            # least crowded GPU; among those, the one without a learner rank
            k = min(range(gpus), key=lambda j: (len(on_gpu[j]), j < ranks, j))
            on_gpu[k].append((role, i))
    slots: dict[str, list[ActorSlot]] = {role: [] for role in demand}
    bundles, sharing = [], []
    for actors in on_gpu:
        if not actors:
            continue
        threads = max(1, per_gpu // len(actors))
        for role, i in actors:
            slots[role].append(ActorSlot(role, i, _share(len(actors)), threads, len(bundles)))
        if len(actors) > 1:
            names = " + ".join(f"{r} {i}" for r, i in actors)
            sharing.append(f"GPU bundle {len(bundles)}: {names}")
        bundles.append({"GPU": 1.0, "CPU": float(threads * len(actors))})
    for role in slots:
        slots[role].sort(key=lambda s: s.index)
    return Plan(slots, bundles, sharing)


def _describe(demand: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{role} {n}x{g}" for role, (n, g) in demand.items() if n)


def free_text(nodes: list[Node]) -> str:
    """'node A 4 GPUs 32 CPUs, node B 2 GPUs 16 CPUs'"""
    return ", ".join(f"node {n.name} {n.gpus:g} GPUs {n.cpus:g} CPUs" for n in nodes)


def needs_message(plan: Plan, nodes: list[Node], demand: dict[str, tuple[int, int]]) -> str:
    """'needs 8 GPUs in bundles of 2, 2, 1, ...; the cluster has 6 free: node A 4, node B 2'"""
    sizes = sorted((b["GPU"] for b in plan.bundles), reverse=True)
    cpus = sum(b["CPU"] for b in plan.bundles)
    return (
        f"the job ({_describe(demand)}) needs {sum(sizes):g} GPUs in bundles of "
        f"{', '.join(f'{s:g}' for s in sizes)} and {cpus:g} CPUs; the cluster has "
        f"{sum(n.gpus for n in nodes):g} GPUs free: {free_text(nodes)}"
    )


def _check_fit(plan: Plan, nodes: list[Node], demand: dict[str, tuple[int, int]]) -> None:
    """First-fit of the biggest bundles first into the nodes' free GPUs and CPUs."""
    free = [[n.gpus, n.cpus] for n in nodes]
    for b in sorted(plan.bundles, key=lambda b: (-b["GPU"], -b["CPU"])):
        k = next((k for k, (g, c) in enumerate(free) if g >= b["GPU"] and c >= b["CPU"]), None)
        if k is None:
            raise PlacementError(needs_message(plan, nodes, demand))
        free[k][0] -= b["GPU"]
        free[k][1] -= b["CPU"]


# --- Ray side -----------------------------------------------------------------


def cluster_nodes() -> list[Node]:
    """Alive Ray nodes with their free GPUs and CPUs, in a fixed order."""
    import ray
    from ray._private.state import available_resources_per_node

    free = available_resources_per_node()
    out = []
    for n in sorted(ray.nodes(), key=lambda n: (n["NodeManagerAddress"], n["NodeID"])):
        if not n.get("Alive"):
            continue
        res = free.get(n["NodeID"], {})
        name = f"{n['NodeManagerAddress']}/{n['NodeID'][:6]}"
        out.append(Node(name, float(res.get("GPU", 0.0)), float(res.get("CPU", 0.0))))
    return out


def on_gpus(cfg: InpoConfig, device: str) -> bool:
    """Whether actors are placed on GPUs: a CUDA run, or a simulated one."""
    return device == "cuda" or cfg.run.simulate_gpus


def role_demand(cfg: InpoConfig, roles: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
    """role -> (actors, GPUs per actor) of a run (of ``roles`` only, if given), as the
    placement planner takes it. The judge role takes GPUs only for a model backend."""
    demand = {
        Role.LEARNER: (cfg.learner.ranks, 1),
        Role.GENERATOR: (cfg.generation.num_generators or 1, cfg.generation.tensor_parallel_size),
    }
    if cfg.oracle.backend in MODEL_BACKENDS:
        demand[Role.JUDGE] = (cfg.oracle.num_actors or 1, 1)
    wanted = set(demand if roles is None else roles)
    return {str(r): d for r, d in demand.items() if r in wanted}


def plan_for(cfg: InpoConfig, device: str, roles: Iterable[str] | None = None) -> Plan:
    """`reserve` the actors of ``roles`` (default: all) for a config and its device."""
    gpus = on_gpus(cfg, device)
    colocate = cfg.run.colocate if cfg.run.colocate is not None else gpus
    return reserve(role_demand(cfg, roles), gpus, cfg.run.placement_timeout_s, colocate=colocate)


def laid_out(cfg: InpoConfig, device: str) -> InpoConfig:
    """`colocated_layout` for the running cluster's GPUs (none when computing on CPU)."""
    gpus = sum(int(n.gpus) for n in cluster_nodes()) if on_gpus(cfg, device) else 0
    return colocated_layout(cfg, gpus)


def reserve(
    demand: dict[str, tuple[int, int]],
    on_gpus: bool,
    timeout_s: float,
    name: str = "inpo",
    colocate: bool = False,
) -> Plan:
    """Plan over the cluster's free resources and reserve the plan's bundles in one
    placement group; a plan that does not fit in ``timeout_s`` is an error saying what is
    missing, not a hang. On CPU nothing is reserved."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    nodes = cluster_nodes() if on_gpus else []
    plan = plan_placement(nodes, demand, colocate=colocate)
    if not plan.bundles:
        return plan
    pg = placement_group(plan.bundles, strategy="PACK", name=name)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise PlacementError(
            f"{needs_message(plan, cluster_nodes(), demand)}; not reserved within "
            f"run.placement_timeout_s = {timeout_s:g}"
        )
    if plan.sharing:
        why = "colocated" if colocate else "fewer free GPUs than actors"
        print(f"{why}, sharing: " + "; ".join(plan.sharing))
    plan.slots = {r: [replace(s, pg=pg) for s in slots] for r, slots in plan.slots.items()}
    return plan


def lost_bundles(plan: Plan | None, timeout_s: float) -> str | None:
    """After an actor died: Ray places again the bundles of a node that left the cluster,
    where they fit. Wait up to ``timeout_s`` for that; None once every bundle has a live
    node, else one line naming what is missing."""
    import ray
    from ray.util.placement_group import placement_group_table

    pgs = placement_groups(plan)
    if not pgs:  # on CPU nothing is reserved
        return None
    deadline = time.monotonic() + timeout_s
    while True:
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        lost = []
        for pg in pgs:
            where = placement_group_table(pg)["bundles_to_node_id"]  # "" while unplaced
            lost += [b for i, b in enumerate(pg.bundle_specs) if where.get(i) not in alive]
        if not lost or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if not lost:
        return None
    gpus, cpus = sum(b.get("GPU", 0) for b in lost), sum(b.get("CPU", 0) for b in lost)
    return (
        f"a node left the cluster: {len(lost)} placement bundle(s) of this run, {gpus:g} GPUs "
        f"and {cpus:g} CPUs, are missing and were not placed again within "
        f"run.placement_timeout_s = {timeout_s:g} (free now: {free_text(cluster_nodes())}); "
        "resume the run with inpo train --resume once the cluster has them"
    )


def placement_groups(plan: Plan | None) -> list:
    """The placement groups a plan's slots hold, each once (none on CPU)."""
    pgs = {id(s.pg): s.pg for slots in (plan.slots.values() if plan else []) for s in slots}
    return [pg for pg in pgs.values() if pg is not None]


def release(plan: Plan | None) -> None:
    pgs = placement_groups(plan)
    if pgs:
        from ray.util.placement_group import remove_placement_group

        for pg in pgs:
            remove_placement_group(pg)


def actor_options(slot: ActorSlot, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Ray .options() for an actor in ``slot``: its bundle, GPUs and threads."""
    env = {**(env or {}), "OMP_NUM_THREADS": str(slot.num_cpus)}
    opts: dict[str, Any] = {
        "num_cpus": slot.num_cpus,
        "num_gpus": slot.num_gpus,
        "runtime_env": {"env_vars": env},
    }
    if slot.pg is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            slot.pg, placement_group_bundle_index=slot.bundle
        )
    return opts
