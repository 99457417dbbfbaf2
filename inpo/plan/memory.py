"""How much GPU memory a run takes, per GPU and per stage, before any actor starts.

Pure arithmetic over a model's shape (its config.json, or a published shape shipped here
for the paper's models) and the run's layout (`inpo.plan.placement.plan_placement`): weights,
gradients, optimizer state, activations, vLLM's reservation and the judge, summed over what
is resident on each GPU in each stage. Split, every actor's persistent memory counts in
every stage; colocated, a stage counts its largest phase (`inpo.stages`): the awake
actors whole, the sleeping ones their context. Memory an actor only uses while working
(activations, logits, the judge's KV cache) counts in its own stages. `inpo plan` prints the
estimate with every assumption; `check_memory` refuses a layout whose estimate exceeds the
GPUs' memory (run.check_memory=false skips it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from inpo.config import InpoConfig
from inpo.errors import InpoError
from inpo.models import SMOLLM2, TINY
from inpo.models.tiny import build_tiny_model
from inpo.plan.placement import Node, Plan, plan_placement, role_demand
from inpo.stages import ALL, BY_NAME, Role, uses

GiB = 1 << 30
#: every stage of a run, setup's included: each is sized
STAGES = tuple(s.name for s in ALL)

# --- assumptions (each one is printed by `inpo plan`) --------------------------
#: Adam with bf16 mixed precision: fp32 master copy + m + v; in fp32 training the parameter
#: itself is the master, so m + v only.
ADAM_BYTES = {2: 12, 4: 8}
#: Bytes per element of the [rows, seq, vocab] logits in training and scoring: the logits in
#: the compute dtype, their fp32 copy (inpo.algo.loss.sequence_logps) and one fp32 tensor of the
#: same size (logsumexp's exp, or the logits' gradient in backward).
LOGIT_FP32_BYTES = 8
#: Each learner rank and judge process: CUDA context, NCCL buffers, allocator slack.
CONTEXT_BYTES = 1 * GiB
#: Write bandwidth of the run directory's filesystem, for checkpoint times.
DISK_BYTES_PER_S = 1e9
#: Sequences of a vLLM batch the KV cache should hold at the run's longest (a warning below).
MIN_KV_SEQUENCES = 1

#: `inpo.generation.generator` reads this for the default generation.gpu_memory_utilization.
#: "shared": engines awake together on one GPU; "colocated": they take turns (one phase of
#: a stage awake at a time, the others asleep), leaving room for the sleepers' contexts.
VLLM_FRACTION = {"own": 0.85, "shared": 0.35, "colocated": 0.8}


def default_memory_fraction(shared_gpu: bool, sleeps: bool = False) -> float:
    """Of a GPU's memory, for vLLM's weights and KV cache; ``sleeps``: the engines sharing
    the GPU sleep while the others work (run.colocate)."""
    if not shared_gpu:
        return VLLM_FRACTION["own"]
    return VLLM_FRACTION["colocated" if sleeps else "shared"]


@dataclass(frozen=True)
class Shape:
    """A Llama/Qwen2-style decoder: what its parameter count and memory depend on."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False
    qkv_bias: bool = False  # Qwen2 (and Llama with attention_bias)
    score_head: int = 0  # outputs of a classification head instead of the LM head (reward model)
    name: str = ""

    @classmethod
    def from_config(cls, c: dict, name: str = "") -> Shape:
        """From a transformers config.json (its text_config for multimodal wrappers)."""
        c = c.get("text_config", c)
        heads = c["num_attention_heads"]
        classifier = any(
            a.endswith("ForSequenceClassification") for a in c.get("architectures") or []
        )
        return cls(
            hidden=c["hidden_size"],
            layers=c["num_hidden_layers"],
            intermediate=c["intermediate_size"],
            heads=heads,
            kv_heads=c.get("num_key_value_heads") or heads,
            head_dim=c.get("head_dim") or c["hidden_size"] // heads,
            vocab=c["vocab_size"],
            tied=bool(c.get("tie_word_embeddings", False)),
            qkv_bias=c.get("model_type") == "qwen2" or bool(c.get("attention_bias", False)),
            score_head=len(c.get("id2label") or {0: 0}) if classifier else 0,
            name=name,
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of every linear layer of one decoder layer, by module name."""
        q, kv, h, i = (
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.hidden,
            self.intermediate,
        )
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def layer_params(self) -> int:
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0
        return sum(a * b for a, b in self.linears().values()) + bias + 2 * self.hidden  # 2 norms

    def head_params(self) -> int:
        if self.score_head:
            return self.hidden * self.score_head
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def params(self) -> int:
        """Embedding + layers + final norm + LM head (untied) or score head."""
        embed = self.vocab * self.hidden
        return embed + self.layers * self.layer_params() + self.hidden + self.head_params()

    def largest_module(self) -> int:
        """Parameters of the largest module ZeRO-3 gathers whole: a layer, embedding or head."""
        return max(self.layer_params(), self.vocab * self.hidden, self.head_params())

    def kv_bytes_per_token(self, width: int) -> int:
        """KV cache bytes of one token: keys and values of every layer's KV heads."""
        return 2 * self.layers * self.kv_heads * self.head_dim * width

    def lora_params(self, r: int, targets: str | list[str]) -> int:
        """Adapter parameters: r * (in + out) for every targeted linear of every layer."""
        linears = self.linears()
        names = list(linears) if targets == "all-linear" else list(targets)
        unknown = [n for n in names if n not in linears]
        if unknown:
            raise InpoError(
                f"model.lora.target_modules = {targets!r}: {', '.join(unknown)} is not a linear "
                f"layer of a Llama/Qwen2 decoder ({', '.join(linears)})"
            )
        return self.layers * sum(r * sum(linears[n]) for n in names)

    def train_activation_bytes(self, tokens: int, width: int, checkpointing: bool) -> int:
        """Activations kept for backward over all layers, for ``tokens`` = rows x sequence.

        Per layer and token, without checkpointing (the counting of Korthikanti et al. 2022,
        "Reducing Activation Recomputation", adapted to Llama: SDPA attention stores no
        seq x seq scores, dropout is off, so no masks; a gated MLP): the inputs of the two
        norms (2h), of q/k/v (h), q, k and v (h + 2 kv), the attention output (h), the MLP
        input (h) and gate, up, silu(gate) and their product (4 intermediate). With
        checkpointing, each layer's input (h) plus one layer recomputed in backward."""
        kv = self.kv_heads * self.head_dim
        layer = tokens * width * (6 * self.hidden + 2 * kv + 4 * self.intermediate)
        if checkpointing:
            return self.layers * tokens * width * self.hidden + layer
        return self.layers * layer

    def inference_activation_bytes(self, tokens: int, width: int) -> int:
        """The largest set of tensors alive at once in a forward without grad: the residual
        stream, its normed copy, the attention output and one more hidden-sized tensor, and
        the MLP's gate, up and their product."""
        return tokens * width * (4 * self.hidden + 3 * self.intermediate)


LLAMA3_8B = Shape(4096, 32, 14336, 32, 8, 128, 128256, name="LLaMA-3-8B")
#: Published shapes of the models the paper configs name (their weights are not needed to
#: plan): the policy and pair-PM are LLaMA-3-8B; the FsfairX reward model is LLaMA-3-8B
#: with a one-output score head instead of the LM head.
SHIPPED = {
    "RLHFlow/LLaMA3-SFT": LLAMA3_8B,
    "meta-llama/Meta-Llama-3-8B": LLAMA3_8B,
    "meta-llama/Meta-Llama-3-8B-Instruct": LLAMA3_8B,
    "RLHFlow/pair-preference-model-LLaMA3-8B": LLAMA3_8B,
    "sfairXC/FsfairX-LLaMA3-RM-v0.1": replace(LLAMA3_8B, score_head=1, name="LLaMA-3-8B RM"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": Shape(
        576, 30, 1536, 9, 3, 64, 49152, tied=True, name="SmolLM2-135M"
    ),
}


def shipped_shape(spec: str) -> Shape | None:
    """A shipped shape by Hugging Face id or by a path's last component (case-insensitive)."""

    if spec == SMOLLM2:
        spec = "HuggingFaceTB/SmolLM2-135M-Instruct"
    base = Path(spec.rstrip("/")).name.lower()
    for hf_id, shape in SHIPPED.items():
        if spec.lower() == hf_id.lower() or base == hf_id.split("/")[1].lower():
            return replace(shape, name=f"{shape.name} (shipped shape of {hf_id})")
    return None


def model_shape(spec: str, field_name: str, tiny: dict | None = None) -> Shape:
    """The shape of the model ``spec`` names: a directory's config.json, else a shipped
    shape; 'builtin:tiny' is built (tiny, in a temporary directory) to read its config."""

    if spec == TINY:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            config = json.loads((build_tiny_model(tmp, **(tiny or {})) / "config.json").read_text())
        return Shape.from_config(config, name="builtin tiny")
    config_file = Path(spec) / "config.json"
    if config_file.is_file():
        return Shape.from_config(json.loads(config_file.read_text()), name=spec)
    shape = shipped_shape(spec)
    if shape is None:
        known = ", ".join(SHIPPED)
        raise InpoError(
            f"{field_name} = {spec!r}: no config.json there and no shipped shape of that name "
            f"({known}); point it at a model directory"
        )
    return shape


# --- the estimate ----------------------------------------------------------------

Parts = list[tuple[str, float]]  # (component, bytes)


def sum_parts(parts: Iterable[tuple[str, float]]) -> float:
    return sum(b for _, b in parts)


@dataclass
class ActorMemory:
    role: str
    index: int
    gpus: int  # GPUs it spans (tensor parallel); the figures are per GPU
    persistent: Parts  # resident in every stage
    working: dict[str, Parts] = field(default_factory=dict)  # extra, in the stages it works
    cpu: dict[str, float] = field(default_factory=dict)  # host RAM by stage (offload, gather)

    def parts(self, stage: str) -> Parts:
        return self.persistent + self.working.get(stage, [])

    def total(self, stage: str) -> float:
        return sum_parts(self.parts(stage))


@dataclass
class GpuRow:
    label: str  # "GPU 0" or "GPU 4-5"
    node: int
    actors: list[ActorMemory]
    colocated: bool = False  # actors a stage does not use sleep: only their context stays

    def total(self, stage: str) -> float:
        """Bytes in ``stage``; colocated, its largest phase: the actors of the phase's
        roles whole, the sleeping ones their context."""
        if not self.colocated:
            return sum(a.total(stage) for a in self.actors)
        return max(
            sum(a.total(stage) if a.role in phase else CONTEXT_BYTES for a in self.actors)
            for phase in BY_NAME[stage].phases
        )

    def peak(self) -> tuple[str, float]:
        return max(((s, self.total(s)) for s in STAGES), key=lambda x: x[1])


@dataclass
class Estimate:
    gpu_bytes: float
    nodes_gpus: list[int]
    rows: list[GpuRow]
    cpu_by_node: list[dict[str, float]]
    checkpoint: Parts  # one step checkpoint, by component
    policy_bytes: float  # one iteration's policy directory
    shapes: dict[str, tuple[Shape, int]]  # role -> (shape, parameters)
    assumptions: list[str]
    warnings: list[str]
    disk_bytes_per_s: float
    kv_tokens: float  # what one generator's KV cache holds
    max_model_len: int

    def worst(self) -> tuple[GpuRow, str, float]:
        row = max(self.rows, key=lambda r: r.peak()[1])
        return (row, *row.peak())


def _learner(
    cfg: InpoConfig, shape: Shape, width: int, world: int, frozen_ref: int
) -> tuple[Parts, dict[str, Parts], float]:
    """(persistent parts, working parts by stage, host RAM) of one learner rank;
    ``frozen_ref``: parameters of the frozen pi_ref copy it loads (0: none). ZeRO-3
    gathers modules whole as it runs them; DeepSpeed's default stage3_max_live_parameters
    allows more, the estimate counts the largest module."""
    lc, zero = cfg.learner, cfg.deepspeed.zero_stage
    p = shape.params
    lora = cfg.model.lora
    trainable = shape.lora_params(lora.r, lora.target_modules) if lora.r else p
    adam = ADAM_BYTES[width] * trainable
    weights = (p * width) / (world if zero == 3 else 1)
    if lora.r:  # the adapter's own weights (partitioned with the rest under ZeRO-3)
        weights += trainable * width / (world if zero == 3 else 1)
    grads = trainable * width / (world if zero >= 2 else 1)
    optimizer = adam / (world if zero >= 1 else 1)
    gathered = shape.largest_module() * width if zero == 3 else 0
    seq = min(lc.max_length, cfg.data.max_prompt_tokens + cfg.generation.max_new_tokens)
    train_tokens = 2 * lc.micro_batch_size * seq  # chosen and rejected rows
    score_tokens = 2 * lc.logps_batch_size * seq
    logit = width + LOGIT_FP32_BYTES
    engine = [("weights", weights)]
    if cfg.deepspeed.offload_optimizer:
        cpu_opt = optimizer
    else:
        cpu_opt = 0.0
        engine.append(("optimizer", optimizer))
    scoring = [
        ("activations (no grad)", shape.inference_activation_bytes(score_tokens, width)),
        ("logits", score_tokens * shape.vocab * logit),
    ]
    if gathered:
        scoring.append(("ZeRO-3 gathered module", gathered))
    logps = engine + scoring
    if frozen_ref:  # the engine is released before the frozen pi_ref loads (inpo.learning.stage)
        ref = [("frozen pi_ref", frozen_ref * width)] + scoring[:2]
        logps = max(logps, ref, key=sum_parts)
    train_act = shape.train_activation_bytes(train_tokens, width, lc.gradient_checkpointing)
    learn = engine + [("gradients", grads)]
    learn += [("activations", train_act), ("logits", train_tokens * shape.vocab * logit)]
    if gathered:
        learn.append(("ZeRO-3 gathered module", gathered))
    held = engine + [("gradients", grads)]  # the engine stays up across iterations
    return (
        [("CUDA context", CONTEXT_BYTES)],
        {s: {"logps": logps, "learn": learn}.get(s, held) for s in STAGES},
        cpu_opt,
    )


def _judge_seq(cfg: InpoConfig) -> int:
    """The longest judge input: prompt + both responses (pair-PM, llm) or one (reward model),
    cut at oracle.max_length (chat template tokens are not counted)."""
    responses = 1 if cfg.oracle.backend == "reward" else 2
    longest = cfg.data.max_prompt_tokens + responses * cfg.generation.max_new_tokens
    return min(cfg.oracle.max_length, longest)


def _judge(cfg: InpoConfig, shape: Shape) -> tuple[Parts, Parts]:
    """Weights (bf16 on GPU, whatever model.dtype is), and in the judge stage a full batch
    of the longest input: its activations (one forward, no KV cache)."""
    width = 2
    tokens = cfg.oracle.batch_size * _judge_seq(cfg)
    return [("CUDA context", CONTEXT_BYTES), ("weights", shape.params * width)], [
        ("activations (no grad)", shape.inference_activation_bytes(tokens, width)),
    ]


def max_model_len(cfg: InpoConfig, probe_len: int = 0) -> int:
    """The longest sequence a run asks of vLLM: the longest prompt plus the longest
    response (generation or eval), or the sync probe. vLLM would otherwise reserve KV
    cache for the model's whole context (8192 tokens for SmolLM2, 128K for Llama 3) and
    may not start."""
    longest_response = max(cfg.generation.max_new_tokens, cfg.eval.max_new_tokens or 0)
    return max(cfg.data.max_prompt_tokens + longest_response, probe_len + 1)  # + 1 sampled


def estimate(
    cfg: InpoConfig,
    nodes_gpus: list[int],
    gpu_bytes: float,
    shapes: dict[str, Shape] | None = None,
    disk_bytes_per_s: float = DISK_BYTES_PER_S,
) -> Estimate:
    """The memory of ``cfg``'s layout on nodes with ``nodes_gpus`` GPUs of ``gpu_bytes``
    each. ``shapes`` (policy, reference, judge) default to the config's models."""
    shapes = dict(shapes or {})
    tiny = {
        "layers": cfg.model.tiny_layers,
        "hidden": cfg.model.tiny_hidden,
        "tied_embeddings": cfg.model.tiny_tied_embeddings,
    }
    if "policy" not in shapes:
        shapes["policy"] = model_shape(cfg.model.policy, "model.policy", tiny)
    if "reference" not in shapes:
        ref = cfg.model.reference
        shapes["reference"] = model_shape(ref, "model.reference", tiny) if ref else shapes["policy"]
    demand = role_demand(cfg)
    if "judge" in demand and "judge" not in shapes:
        judge = model_shape(cfg.oracle.model or "", "oracle.model")
        if cfg.oracle.backend == "reward" and not judge.score_head:
            judge = replace(judge, score_head=1)  # AutoModelForSequenceClassification's head
        shapes["judge"] = judge
    policy = shapes["policy"]
    width = 4 if cfg.model.dtype == "float32" else 2  # auto = bfloat16 on GPU
    world = cfg.learner.ranks
    if sum(nodes_gpus) < 1:
        raise InpoError(f"memory estimate: needs at least one GPU, got nodes of {nodes_gpus}")
    nodes = [Node(f"node{i}", g, 8.0 * g) for i, g in enumerate(nodes_gpus)]
    colocated = bool(cfg.run.colocate)
    plan = plan_placement(nodes, demand, colocate=colocated)
    frozen = not cfg.model.lora.r and (
        cfg.run.iterations > 1 or cfg.model.reference not in (None, cfg.model.policy)
    )
    frozen_ref = shapes["reference"].params if frozen else 0
    gen_shared = any(0 < s.num_gpus < 1 for s in plan.slots["generator"])
    fraction = cfg.generation.gpu_memory_utilization or default_memory_fraction(
        gen_shared, colocated
    )
    tp = cfg.generation.tensor_parallel_size
    gen_weights = policy.params * width / tp
    kv_room = fraction * gpu_bytes - gen_weights
    kv_token = policy.kv_bytes_per_token(width) / tp
    warnings = []
    if kv_room < MIN_KV_SEQUENCES * max_model_len(cfg) * kv_token:
        warnings.append(
            f"generator: vLLM's share of a GPU (generation.gpu_memory_utilization = "
            f"{fraction:g} of {_gib(gpu_bytes)}) leaves {_gib(kv_room)} for KV cache after "
            f"{_gib(gen_weights)} of weights per GPU; one sequence of {max_model_len(cfg)} "
            f"tokens needs {_gib(max_model_len(cfg) * kv_token)}"
        )
    actors: dict[tuple[str, int], ActorMemory] = {}
    for slot in plan.slots["generator"]:
        reserve = [("vLLM weights", gen_weights), ("vLLM KV cache + runtime", kv_room)]
        actors["generator", slot.index] = ActorMemory("generator", slot.index, tp, reserve)
    for slot in plan.slots.get("judge", []):
        if cfg.oracle.engine == "hf":
            persistent, working = _judge(cfg, shapes["judge"])
        else:  # a vLLM engine takes its share of the GPU whole, as a generator does
            judge_weights = shapes["judge"].params * 2
            share = default_memory_fraction(0 < slot.num_gpus < 1, colocated) * gpu_bytes
            persistent = [
                ("vLLM weights", judge_weights),
                ("vLLM KV cache + runtime", share - judge_weights),
            ]
            working = []
        judging = {s.name: working for s in ALL if Role.JUDGE in s.roles}
        actors["judge", slot.index] = ActorMemory("judge", slot.index, 1, persistent, judging)
    for slot in plan.slots["learner"]:
        persistent, working, cpu_opt = _learner(cfg, policy, width, world, frozen_ref)
        cpu = dict.fromkeys(STAGES, cpu_opt)
        if slot.index == 0:  # rank 0 gathers the whole policy on the host to write it
            cpu["save"] += policy.params * width
        actors["learner", slot.index] = ActorMemory(
            "learner", slot.index, 1, persistent, working, cpu
        )
    rows = _rows(plan, nodes_gpus, actors)
    for row in rows:
        row.colocated = colocated
    cpu_by_node = [dict.fromkeys(STAGES, 0.0) for _ in nodes_gpus]
    for row in rows:
        for a in row.actors:
            for stage, b in a.cpu.items():
                cpu_by_node[row.node][stage] += b
    lora = cfg.model.lora
    if lora.r:
        adapter = policy.lora_params(lora.r, lora.target_modules)
        checkpoint = [
            ("adapter", adapter * width),
            ("adapter optimizer", adapter * ADAM_BYTES[width]),
        ]
    else:
        checkpoint = [
            ("weights", policy.params * width),
            ("optimizer", policy.params * ADAM_BYTES[width]),
        ]
    params = {role: (s, s.params) for role, s in shapes.items()}
    return Estimate(
        gpu_bytes=gpu_bytes,
        nodes_gpus=list(nodes_gpus),
        rows=rows,
        cpu_by_node=cpu_by_node,
        checkpoint=checkpoint,
        policy_bytes=policy.params * width,
        shapes=params,
        assumptions=_assumptions(cfg, width, fraction, frozen, disk_bytes_per_s),
        warnings=warnings,
        disk_bytes_per_s=disk_bytes_per_s,
        kv_tokens=max(0.0, kv_room) / kv_token,
        max_model_len=max_model_len(cfg),
    )


def _rows(plan: Plan, nodes_gpus: list[int], actors: dict) -> list[GpuRow]:
    """One row per bundle, numbered by GPU; bundles go to nodes first-fit, biggest first,
    as the placement planner checks them."""
    free = list(nodes_gpus)
    node_of = {}
    for b in sorted(range(len(plan.bundles)), key=lambda b: -plan.bundles[b]["GPU"]):
        n = next(k for k, f in enumerate(free) if f >= plan.bundles[b]["GPU"])
        free[n] -= plan.bundles[b]["GPU"]
        node_of[b] = n
    on_bundle: dict[int, list[ActorMemory]] = {b: [] for b in range(len(plan.bundles))}
    for role, slots in plan.slots.items():
        for s in slots:
            on_bundle[s.bundle].append(actors[role, s.index])
    rows, gpu = [], 0
    for b, members in on_bundle.items():
        n = int(plan.bundles[b]["GPU"])
        label = f"GPU {gpu}" if n == 1 else f"GPU {gpu}-{gpu + n - 1}"
        rows.append(GpuRow(label, node_of[b], members))
        gpu += n
    return rows


def _assumptions(
    cfg: InpoConfig, width: int, fraction: float, frozen_ref: bool, disk: float
) -> list[str]:
    lc, dc = cfg.learner, cfg.deepspeed
    dtype = "float32" if width == 4 else "bfloat16"
    seq = min(lc.max_length, cfg.data.max_prompt_tokens + cfg.generation.max_new_tokens)
    return [
        f"compute dtype {dtype} ({width} bytes); Adam state {ADAM_BYTES[width]} bytes per "
        "trainable parameter ("
        + ("fp32 master + m + v" if width == 2 else "m + v; the fp32 weights are the master")
        + f"), gradients {width}",
        f"ZeRO-{dc.zero_stage} over {lc.ranks} rank(s): optimizer state partitioned from "
        "stage 1, gradients from 2, weights from 3"
        + ("; optimizer state offloaded to host RAM" if dc.offload_optimizer else ""),
        f"learner sequences: {seq} tokens (min of learner.max_length and prompt + response), "
        f"2 x learner.micro_batch_size = {2 * lc.micro_batch_size} rows per micro batch, "
        f"2 x learner.logps_batch_size = {2 * lc.logps_batch_size} rows per scoring batch",
        "activations per layer and token, no checkpointing: width x (6 hidden + 2 kv_heads x "
        "head_dim + 4 intermediate) (Korthikanti et al. 2022 for a gated-MLP Llama, SDPA "
        "attention, no dropout); with learner.gradient_checkpointing "
        f"(= {lc.gradient_checkpointing}): width x hidden per layer + one layer recomputed",
        f"logits: rows x seq x vocab x ({width} + {LOGIT_FP32_BYTES}) bytes (the logits, their "
        "fp32 copy, one fp32 tensor of that size in logsumexp or backward)",
        "no-grad forward (scoring, judge): width x (4 hidden + 3 intermediate) per token alive "
        "at once; ZeRO-3 gathers the largest module (a layer, the embedding or the LM head)",
        f"each learner rank and judge process: {_gib(CONTEXT_BYTES)} of CUDA context, NCCL "
        "buffers and allocator slack",
        f"vLLM reserves generation.gpu_memory_utilization = {fraction:g} of each of its GPUs "
        "whole (weights / tensor_parallel_size + KV cache + its runtime); default "
        f"{VLLM_FRACTION['own']} on a GPU of its own, {VLLM_FRACTION['shared']} shared, "
        f"{VLLM_FRACTION['colocated']} colocated (the engines take turns)",
        f"judge (oracle.engine=hf): bf16 weights; a batch of oracle.batch_size = "
        f"{cfg.oracle.batch_size} inputs of {_judge_seq(cfg)} tokens (prompt + response(s), at "
        "most oracle.max_length) with no KV cache (one forward)"
        if cfg.oracle.engine == "hf"
        else "judge on vLLM (oracle.engine unset or vllm): the vLLM share of its GPU whole, "
        "bf16 weights + KV cache",
        "frozen pi_ref on every rank in the logps stage (full fine-tuning from iteration 2), "
        "after the engine is released"
        if frozen_ref
        else "no frozen pi_ref copy (LoRA: the adapter off; or one iteration from pi_ref)",
        "run.colocate: in each stage the actors it does not use sleep and keep only their "
        f"{_gib(CONTEXT_BYTES)} of context (vLLM sleep; a learner releases its engine)"
        if cfg.run.colocate
        else "nothing sleeps: every actor holds its memory in every stage; a learner rank "
        "keeps its engine (weights, gradients, optimizer) across iterations; PyTorch's "
        "caching allocator may hold more than these figures",
        f"step checkpoint: weights in {dtype} + Adam state (adapter only under LoRA), written "
        f"at {disk / 1e9:g} GB/s; host RAM: rank 0 gathers the whole policy to save it",
    ]


def _gib(b: float) -> str:
    return f"{b / GiB:.1f} GiB"


def format_estimate(est: Estimate, cfg: InpoConfig) -> str:
    """The table `inpo plan` prints: GPUs x stages, the largest entry's components, host RAM,
    checkpoints and every assumption."""
    nodes = ", ".join(f"{g}" for g in est.nodes_gpus)
    lines = [
        f"GPUs: {sum(est.nodes_gpus)} x {_gib(est.gpu_bytes)} (GPUs per node: {nodes})",
    ]
    for role, (shape, n) in est.shapes.items():
        lines.append(f"{role}: {shape.name or 'model'}, {n:,} parameters")
    lines += ["", "GPU memory, GiB (per GPU of a tensor-parallel group)", *gpu_table(est)]
    row, stage, total = est.worst()
    lines.append("")
    lines.append(f"largest: {row.label} in {stage}, {_gib(total)} of {_gib(est.gpu_bytes)}")
    lines.append("components at each role's peak, GiB:")
    peaks: dict[str, tuple[float, ActorMemory, str]] = {}
    for r in est.rows:
        for a in r.actors:
            s, b = max(((s, a.total(s)) for s in STAGES if a.role in uses(s)), key=lambda x: x[1])
            if a.role not in peaks or b > peaks[a.role][0]:
                peaks[a.role] = (b, a, s)
    for b, a, s in peaks.values():
        parts = ", ".join(f"{name} {v / GiB:.1f}" for name, v in a.parts(s) if v)
        lines.append(f"  {a.role} {a.index} in {s}: {parts} = {b / GiB:.1f}")
    lines.append(
        f"  vLLM KV cache: {est.kv_tokens:,.0f} tokens per generator, "
        f"{est.kv_tokens / est.max_model_len:.0f} sequences of {est.max_model_len}"
    )
    if any(any(c.values()) for c in est.cpu_by_node):
        for i, c in enumerate(est.cpu_by_node):
            used = ", ".join(f"{s} {c[s] / GiB:.1f}" for s in STAGES if c[s])
            lines.append(f"host RAM, node {i} (GiB): {used or 'none counted'}")
    ckpt = sum_parts(est.checkpoint)
    keep = cfg.learner.keep_checkpoints
    disk = est.disk_bytes_per_s
    lines.append(
        f"step checkpoint: {_gib(ckpt)} ("
        + " + ".join(f"{n} {_gib(b)}" for n, b in est.checkpoint)
        + f"), {ckpt / disk:.0f} s to write; every {cfg.learner.checkpoint_every} steps, "
        f"{keep} kept: {_gib(keep * ckpt)}; each iteration's policy: {_gib(est.policy_bytes)}"
    )
    lines += [f"warning: {w}" for w in est.warnings]
    lines += ["", "assumptions:"] + [f"  - {a}" for a in est.assumptions]
    return "\n".join(lines)


def gpu_table(est: Estimate) -> list[str]:
    """GPUs x stages: what each GPU holds and its memory in every stage, GiB."""
    head = f"{'GPU':<10}{'holds':<36}" + "".join(f"{s:>10}" for s in STAGES) + f"{'peak':>10}"
    lines = [head, "-" * len(head)]
    for row in est.rows:
        holds = " + ".join(f"{a.role} {a.index}" for a in row.actors)
        cells = "".join(f"{row.total(s) / GiB:>10.1f}" for s in STAGES)
        over = " over" if row.peak()[1] > est.gpu_bytes else ""
        lines.append(f"{row.label:<10}{holds:<36}{cells}{row.peak()[1] / GiB:>10.1f}{over}")
    return lines


def check_memory(cfg: InpoConfig, nodes_gpus: list[int], gpu_memory_bytes: float) -> None:
    """Refuse (one line) a layout whose estimated peak on some GPU exceeds its memory, or
    whose vLLM share holds no KV cache for one sequence; run.check_memory=false skips it."""
    if not cfg.run.check_memory:
        return
    est = estimate(cfg, nodes_gpus, gpu_memory_bytes)
    row, stage, total = est.worst()
    if total > gpu_memory_bytes:
        holds = " + ".join(f"{a.role} {a.index}" for a in row.actors)
        biggest = max(row.actors, key=lambda a: a.total(stage))
        parts = ", ".join(f"{n} {_gib(b)}" for n, b in biggest.parts(stage) if b)
        raise InpoError(
            f"memory estimate: {row.label} ({holds}) needs {_gib(total)} in the {stage} stage, "
            f"more than its {_gib(gpu_memory_bytes)} ({biggest.role} {biggest.index}: {parts}); "
            "see `inpo plan`, or set run.check_memory=false to start anyway"
        )
    if est.warnings:
        raise InpoError(
            f"memory estimate: {est.warnings[0]}; see `inpo plan`, or set "
            "run.check_memory=false to start anyway"
        )
