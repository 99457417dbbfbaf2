"""The time of one iteration on a named GPU, split vs colocated layouts (`inpo plan`).

From FLOP counts and stated efficiencies, each printed with the result: a phase's FLOPs
over (its GPUs x the GPU's dense bf16 peak x the phase's efficiency). Phases run one after
another (the loop is sequential), so in a split layout each phase has only its own role's
GPUs and the others wait; colocated, every GPU runs every phase, plus the sleep / wake
moves between phases.
"""

from __future__ import annotations

from dataclasses import dataclass

from inpo.config import InpoConfig

#: dense bf16 FLOP/s (no sparsity), from the vendors' data sheets
PEAK_FLOPS = {"h100": 989e12, "h200": 989e12, "a100": 312e12, "l40s": 362e12}
#: model FLOP utilization by phase: decode is memory-bound, prefill and training are not
EFFICIENCY = {"generate": 0.17, "judge": 0.40, "learn": 0.40}
HOST_LINK_BYTES_PER_S = 25e9  # PCIe 5 x16, one direction, per GPU, for sleep / wake moves


@dataclass(frozen=True)
class Layout:
    name: str
    gpus: dict[str, int]  # phase -> GPUs running it
    moves_s: float  # sleep/wake seconds per iteration


def phase_flops(cfg: InpoConfig, policy_params: int, judge_params: int | None) -> dict:
    """FLOPs of the largest iteration's phases; the token counts assume full-length prompts
    and responses (data.max_prompt_tokens, generation.max_new_tokens)."""
    prompts = max(cfg.data.prompts_for(t) for t in range(1, cfg.run.iterations + 1))
    k = cfg.generation.num_samples
    lp, lr = cfg.data.max_prompt_tokens, cfg.generation.max_new_tokens
    gen = 2 * policy_params * prompts * (lp + k * lr)
    strategy = cfg.pairing.strategy
    per_prompt = {"tournament": 3 * k // 2 - 1, "round_robin": k * (k - 1) // 2}.get(
        strategy, k // 2
    )
    orders = (
        2 if cfg.oracle.debias and cfg.oracle.backend in ("pairpm", "llm", "http", "python") else 1
    )
    if cfg.oracle.backend == "reward":
        judge = 2 * (judge_params or 0) * prompts * k * (lp + lr)  # one reward per response
    elif judge_params:
        judge = 2 * judge_params * prompts * per_prompt * orders * (lp + 2 * lr)
    else:
        judge = 0.0
    pairs = prompts * (k // 2 if strategy == "disjoint" else 1)
    tokens = pairs * 2 * min(cfg.learner.max_length, lp + lr)
    epochs = cfg.learner.epoch_cap
    # log pi_ref and log pi_t (forwards), then forward + backward per epoch
    learn = 2 * 2 * policy_params * tokens + 6 * policy_params * tokens * epochs
    return {"generate": gen, "judge": judge, "learn": learn}


def layouts(cfg: InpoConfig, gpus: int, policy_bytes: float, judge_bytes: float) -> list[Layout]:
    """The config's own split (its learner / generator / judge counts) and colocated on all
    ``gpus``. Colocated moves per iteration: the generators drop their weights and reload
    the new policy (sleep level 2), the judge's weights go to host memory and back (level
    1), the learner's weights, gradients and Adam state (~8x the bf16 weights with ZeRO,
    divided over its ranks) go out and back."""
    ranks = cfg.learner.num_ranks or 1
    gens = (cfg.generation.num_generators or 1) * cfg.generation.tensor_parallel_size
    judges = cfg.oracle.num_actors or 1
    split = Layout(
        f"split ({ranks} learner, {gens} generator, {judges} judge GPUs)",
        {"generate": gens, "judge": judges, "learn": ranks},
        0.0,
    )
    link = HOST_LINK_BYTES_PER_S
    moves = (policy_bytes + 2 * judge_bytes + 2 * 8 * policy_bytes / gpus) / link
    colocated = Layout(
        f"colocated (every GPU: learner rank + generator + judge, {gpus} of each)",
        dict.fromkeys(("generate", "judge", "learn"), gpus),
        moves,
    )
    return [split, colocated]


def iteration_seconds(flops: dict, layout: Layout, gpu: str) -> dict[str, float]:
    peak = PEAK_FLOPS[gpu]
    out = {p: f / (layout.gpus[p] * peak * EFFICIENCY[p]) if f else 0.0 for p, f in flops.items()}
    out["sleep/wake"] = layout.moves_s
    out["total"] = sum(out.values())
    return out


def format_times(
    cfg: InpoConfig, gpus: int, gpu: str, policy_params: int, judge_params: int | None
) -> str:
    width = 2  # bf16 on GPUs
    flops = phase_flops(cfg, policy_params, judge_params)
    rows = layouts(cfg, gpus, policy_params * width, (judge_params or 0) * width)
    head = f"{'layout':<70}" + "".join(f"{p:>11}" for p in (*flops, "sleep/wake", "total"))
    lines = [f"iteration time on {gpus} x {gpu.upper()}, hours", head, "-" * len(head)]
    for lay in rows:
        t = iteration_seconds(flops, lay, gpu)
        lines.append(f"{lay.name:<70}" + "".join(f"{v / 3600:>11.2f}" for v in t.values()))
    total = [iteration_seconds(flops, lay, gpu)["total"] for lay in rows]
    lines.append(
        f"colocated / split: {total[1] / total[0]:.2f} of the time; the colocated sleep/wake "
        f"moves take {rows[1].moves_s:.0f} s per iteration"
    )
    lines += [
        "time assumptions:",
        f"  - {gpu.upper()} dense bf16 peak {PEAK_FLOPS[gpu] / 1e12:g} TFLOP/s; efficiency "
        + ", ".join(f"{p} {e:.0%}" for p, e in EFFICIENCY.items())
        + " (decode is memory-bound)",
        f"  - every prompt {cfg.data.max_prompt_tokens} tokens and every response "
        f"{cfg.generation.max_new_tokens} (the limits: an upper bound); 2 x parameters FLOPs "
        "per token forward, 6 x for forward + backward",
        f"  - judge: {cfg.pairing.strategy} comparisons per prompt, both orders when "
        "oracle.debias, each a prefill of the prompt and two responses",
        f"  - learn: log pi_ref and log pi_t of every pair, then {cfg.learner.epoch_cap} "
        "epoch(s) of forward + backward",
        f"  - colocated moves at {HOST_LINK_BYTES_PER_S / 1e9:g} GB/s per GPU to host memory: "
        "the generator reloads the new policy, the judge's weights out and back, the "
        "learner's weights, gradients and Adam state (8 x bf16 weights / GPUs) out and back",
    ]
    return "\n".join(lines)
