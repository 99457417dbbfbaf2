"""The placement planner (pure): bundles, shares, threads and the errors of a job that
does not fit."""

import pytest

from inpo.plan.placement import Node, PlacementError, plan_placement

PAPER = {"learner": (4, 1), "generator": (2, 1), "judge": (2, 1)}


def gpus_of(plan, role):
    return [plan.bundles[s.bundle]["GPU"] for s in plan.slots[role]]


def test_dedicated_one_bundle_per_actor_tp_generators_whole():
    nodes = [Node("a", 4, 16), Node("b", 4, 16)]
    plan = plan_placement(nodes, {"learner": (4, 1), "generator": (2, 2)})
    assert len(plan.bundles) == 6 and not plan.sharing
    assert gpus_of(plan, "generator") == [2.0, 2.0]
    assert [s.num_gpus for s in plan.slots["generator"]] == [2.0, 2.0]
    # 16 CPUs over 4 GPUs per node: 4 threads a GPU, reserved in the bundle
    assert [s.num_cpus for s in plan.slots["learner"]] == [4] * 4
    assert [s.num_cpus for s in plan.slots["generator"]] == [8, 8]
    assert {b["CPU"] for b in plan.bundles} == {4.0, 8.0}
    assert len({s.bundle for slots in plan.slots.values() for s in slots}) == 6


def test_shared_gpus_never_put_two_learner_ranks_on_one():
    # the reproduction: 2 GPUs, 2 generators + 2 learner ranks (Ray best-fit put the ranks
    # on one GPU when each asked for 0.5)
    plan = plan_placement([Node("a", 2, 8)], {"generator": (2, 1), "learner": (2, 1)})
    ranks = [s.bundle for s in plan.slots["learner"]]
    assert len(set(ranks)) == 2
    per_bundle = {}
    for slots in plan.slots.values():
        for s in slots:
            per_bundle[s.bundle] = per_bundle.get(s.bundle, 0) + s.num_gpus
    assert all(v <= 1.0 for v in per_bundle.values())
    assert len(plan.bundles) == 2 and all(b["GPU"] == 1.0 for b in plan.bundles)
    assert len(plan.sharing) == 2 and "learner 0" in plan.sharing[0]
    # 4 CPUs a GPU split between its 2 actors
    assert {s.num_cpus for slots in plan.slots.values() for s in slots} == {2}


def test_shared_three_roles_on_one_gpu_in_thirds():
    plan = plan_placement(
        [Node("a", 1, 6)], {"learner": (1, 1), "generator": (1, 1), "judge": (1, 1)}
    )
    shares = [s.num_gpus for slots in plan.slots.values() for s in slots]
    assert shares == [0.3333] * 3 and sum(shares) <= 1.0
    assert plan.sharing == ["GPU bundle 0: learner 0 + generator 0 + judge 0"]


def test_shared_fills_gpus_without_a_learner_first():
    plan = plan_placement(
        [Node("a", 3, 12)], {"learner": (1, 1), "generator": (2, 1), "judge": (1, 1)}
    )
    learner = plan.slots["learner"][0].bundle
    gens = [s.bundle for s in plan.slots["generator"]]
    assert learner not in gens and len(set(gens)) == 2


def test_refuses_what_cannot_fit_with_what_is_missing():
    with pytest.raises(PlacementError, match=r"bundles of 4, 1.*node c 2 GPUs"):
        plan_placement(
            [Node("a", 2, 8), Node("b", 2, 8), Node("c", 2, 8)],
            {"generator": (1, 4), "learner": (1, 1)},
        )
    with pytest.raises(PlacementError, match="multi-GPU actors cannot share"):
        plan_placement([Node("a", 1, 4)], {"generator": (1, 2), "learner": (1, 1)})
    with pytest.raises(PlacementError, match="learner.num_ranks = 4 needs 4 GPUs"):
        plan_placement([Node("a", 2, 8)], {"learner": (4, 1), "generator": (1, 1)})


def test_counts_free_gpus_not_total():
    # 8 GPUs in all but 3 taken: the paper layout (8 actors) must share, not hang
    plan = plan_placement([Node("a", 5, 40)], PAPER)
    assert len(plan.bundles) == 5 and plan.sharing


def test_paper_layout_on_two_nodes_of_four():
    nodes = [Node("a", 4, 8), Node("b", 4, 8)]
    plan = plan_placement(nodes, PAPER)
    assert len(plan.bundles) == 8 and all(b == {"GPU": 1.0, "CPU": 2.0} for b in plan.bundles)


def test_cpu_threads_split_the_host_per_role():
    plan = plan_placement([], {"learner": (2, 1), "generator": (1, 1)}, host_cores=8)
    assert [s.num_cpus for s in plan.slots["learner"]] == [4, 4]
    assert [s.num_cpus for s in plan.slots["generator"]] == [8]
    assert all(s.bundle is None and s.num_gpus == 0 for v in plan.slots.values() for s in v)
    assert plan.bundles == []


def test_num_gpus_sizes_only_the_local_cluster():
    from inpo.config import ConfigError, load_config

    assert load_config(None, ["run.num_gpus=2", "run.simulate_gpus=true"]).run.num_gpus == 2
    with pytest.raises(ConfigError, match="run.num_gpus = 2: sizes the local Ray cluster"):
        load_config(None, ["run.num_gpus=2", "run.ray_address=127.0.0.1:6379"])


# --- colocation -----------------------------------------------------------------------


def colocated(gpus: int, **sections):
    from inpo.config import InpoConfig
    from inpo.plan.placement import colocated_layout

    judge = {"backend": "pairpm", "model": "/judge"}
    cfg = InpoConfig.model_validate({"oracle": judge, **sections})
    return colocated_layout(cfg, gpus)


def test_colocated_counts_fill_the_gpus_and_each_gpu_holds_one_of_each():
    from inpo.plan.placement import role_demand

    cfg = colocated(4, learner={"global_batch_size": 8, "micro_batch_size": 2})
    assert cfg.run.colocate is True
    assert (cfg.learner.num_ranks, cfg.generation.num_generators, cfg.oracle.num_actors) == (4,) * 3
    plan = plan_placement([Node("a", 4, 16)], role_demand(cfg), colocate=True)
    assert len(plan.bundles) == 4 and all(b["GPU"] == 1.0 for b in plan.bundles)
    for role in ("learner", "generator", "judge"):
        assert sorted(s.bundle for s in plan.slots[role]) == [0, 1, 2, 3], role
        assert all(s.num_gpus == 0.3333 for s in plan.slots[role])
    # without run.colocate the same counts get 12 GPUs of their own where they exist
    plan = plan_placement([Node("a", 12, 48)], role_demand(cfg))
    assert len(plan.bundles) == 12 and not plan.sharing


def test_colocate_defaults_and_refusals():
    from inpo.config import ConfigError

    off = colocated(0)
    assert off.run.colocate is False and off.learner.num_ranks is None and off.learner.ranks == 1
    assert colocated(2, learner={"num_ranks": 1}).learner.num_ranks == 1  # fewer is fine
    with pytest.raises(ConfigError, match="learner.num_ranks = 4: the colocated layout of 2 GPUs"):
        colocated(2, learner={"num_ranks": 4})
    with pytest.raises(ConfigError, match="tensor_parallel_size = 2"):
        colocated(4, generation={"tensor_parallel_size": 2}, run={"colocate": True})
    assert colocated(4, generation={"tensor_parallel_size": 2}).run.colocate is False
    with pytest.raises(ConfigError, match="global_batch_size = 16: must be a multiple"):
        colocated(3, learner={"global_batch_size": 16, "micro_batch_size": 4})
    with pytest.raises(ConfigError, match="not placed on GPUs"):
        colocated(0, run={"colocate": True})
    assert colocated(2, run={"colocate": False}).learner.num_ranks is None


def test_the_schedule_wakes_what_a_stage_uses():
    from inpo.plan.colocate import awake_but_unused, schedule_row, sleep_level, transitions

    running = ["generator", "judge", "learner"]
    assert transitions(["judge"], running, set()) == (["generator", "learner"], [])
    assert transitions(["learner"], running, {"generator", "learner"}) == (["judge"], ["learner"])
    # eval's two phases: generate with the judge asleep, then judge with the generator asleep
    assert transitions(["generator"], running, {"generator", "judge"}) == (
        ["learner"],
        ["generator"],
    )
    assert transitions(["judge"], running, {"judge", "learner"}) == (["generator"], ["judge"])
    # put to sleep to judge eval's answers, generators keep the policy the next generate uses
    assert [sleep_level("generator", s) for s in ("judge", "eval", "eval_init")] == [2, 1, 1]
    assert (sleep_level("judge", "logps"), sleep_level("learner", "sync")) == (1, 0)
    records = [
        {"role": role, "index": 0, "node": "abcdef0123", "gpus": [0]}
        for role in ("learner", "generator", "judge")
    ]
    row = schedule_row(1, "learn", records, {"generator", "judge"}, performed=False)
    assert row["gpus"] == {
        "abcdef01/0": {"awake": ["learner 0"], "asleep": ["generator 0", "judge 0"]}
    }
    assert awake_but_unused(row) == []
    assert awake_but_unused(schedule_row(1, "learn", records, set(), False)) == [
        "abcdef01/0: generator 0",
        "abcdef01/0: judge 0",
    ]


def test_simulated_gpus_record_the_estimated_memory_of_the_awake_actors():
    from inpo.config import InpoConfig
    from inpo.plan.colocate import estimated_memory, schedule_row
    from inpo.plan.memory import CONTEXT_BYTES, GiB, estimate
    from inpo.plan.placement import colocated_layout

    cfg = colocated_layout(InpoConfig.model_validate({}), 2)  # synthetic oracle: no judge
    records = [
        {"role": role, "index": i, "node": "abcdef0123", "gpus": [i]}
        for role in ("learner", "generator")
        for i in (0, 1)
    ]
    actors = {(a.role, a.index): a for r in estimate(cfg, [2], 80 * GiB).rows for a in r.actors}
    learn = estimated_memory(cfg, schedule_row(1, "learn", records, {"generator"}, False), 80 * GiB)
    gen = estimated_memory(cfg, schedule_row(1, "generate", records, {"learner"}, False), 80 * GiB)
    for i in (0, 1):
        key = f"abcdef01/{i}"
        assert learn[key] == actors["learner", i].total("learn") + CONTEXT_BYTES
        assert gen[key] == actors["generator", i].total("generate") + CONTEXT_BYTES
        assert gen[key] > 0.3 * 80 * GiB > learn[key]  # vLLM's share vs a tiny model's ranks


def test_an_engine_at_another_release_line_is_named_before_ray_starts():
    from inpo.errors import InpoError
    from inpo.plan.cluster import SUPPORTED, check_versions, installed_versions

    assert {k: v.rsplit(".", 1)[0] for k, v in installed_versions().items()} == SUPPORTED
    check_versions({"deepspeed": "0.19.8", "vllm": "0.32.0"})
    check_versions({"deepspeed": "0.19.8", "vllm": None})  # `inpo learn` needs no vLLM
    with pytest.raises(InpoError, match=r"^vllm 0.34.0 is installed; .* vllm 0.32.x"):
        check_versions({"deepspeed": "0.19.8", "vllm": "0.34.0"})
    with pytest.raises(InpoError, match="deepspeed 0.190.1"):
        check_versions({"deepspeed": "0.190.1", "vllm": "0.32.0"})


def test_with_ray_leaving_every_gpu_visible_an_actor_still_sees_its_own_as_device_0():
    from inpo.plan.actors import NOSET_CUDA, visible_devices

    assert visible_devices([3], {NOSET_CUDA: "1"}) == "3"
    assert visible_devices([4, 5], {NOSET_CUDA: "1"}) == "4,5"  # a tensor-parallel engine
    assert visible_devices([3], {}) is None  # Ray set CUDA_VISIBLE_DEVICES itself
    assert visible_devices([], {NOSET_CUDA: "1"}) is None  # a CPU actor


def test_model_dtype_auto_is_decided_by_what_the_gpus_compute_in():
    from inpo.config import InpoConfig
    from inpo.plan.cluster import resolve_device

    def never() -> bool:
        raise AssertionError("asked a GPU on a CPU cluster")

    cfg = InpoConfig()
    assert resolve_device(cfg, 0, never) == "cpu" and cfg.model.dtype == "auto"
    simulated = InpoConfig.model_validate({"run": {"simulate_gpus": True}})
    assert resolve_device(simulated, 8, never) == "cpu" and simulated.model.dtype == "auto"
    for bf16, dtype in ((True, "bfloat16"), (False, "float32")):  # A100 / V100, T4
        cfg = InpoConfig()
        assert resolve_device(cfg, 4, lambda b=bf16: b) == "cuda" and cfg.model.dtype == dtype
    chosen = InpoConfig.model_validate({"model": {"dtype": "float32"}})
    assert resolve_device(chosen, 4, never) == "cuda" and chosen.model.dtype == "float32"


def test_learner_autocast_auto_is_bf16_only_where_the_device_computes_in_it(capsys):
    from inpo.config import InpoConfig
    from inpo.plan.cluster import cpu_has_bf16, resolve_device

    assert not cpu_has_bf16("processor : 0\nflags : fpu sse avx avx2 fma\n")  # AVX2 EPYC
    assert cpu_has_bf16("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")  # Genoa
    assert cpu_has_bf16("flags : fpu avx2 amx_bf16 amx_tile\n")  # Sapphire Rapids

    def cfg(**learner) -> InpoConfig:
        return InpoConfig.model_validate({"learner": learner})

    def never() -> bool:
        raise AssertionError("asked the other device")

    for device_bf16, want in ((True, "bfloat16"), (False, "off")):
        on_cpu, on_gpu = cfg(autocast="auto"), cfg(autocast="auto")
        assert resolve_device(on_cpu, 0, never, lambda b=device_bf16: b) == "cpu"
        assert resolve_device(on_gpu, 4, lambda b=device_bf16: b, never) == "cuda"
        assert on_cpu.learner.autocast == on_gpu.learner.autocast == want
    out = capsys.readouterr().out
    assert "learner.autocast = auto: this CPU has no bfloat16 instructions" in out
    assert "learner.autocast = auto: the GPUs have no bfloat16 (before Ampere)" in out
    # asked for explicitly: kept, with one line saying what it costs on this CPU
    explicit = cfg(autocast="bfloat16")
    assert resolve_device(explicit, 0, never, lambda: False) == "cpu"
    assert explicit.learner.autocast == "bfloat16"
    out = capsys.readouterr().out.strip()
    assert out.startswith("warning: learner.autocast = bfloat16 but this CPU has no bfloat16")
    assert out.endswith("(set learner.autocast to auto)")
    weights = InpoConfig.model_validate({"model": {"dtype": "bfloat16"}})
    resolve_device(weights, 0, never, lambda: False)
    assert "model.dtype = bfloat16" in capsys.readouterr().out
    resolve_device(cfg(autocast="bfloat16"), 0, never, lambda: True)
    assert capsys.readouterr().out == ""
