"""Generator actors (one vLLM engine each) and the group that splits prompts among them."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import ray

from inpo.errors import InpoError
from inpo.models import dtype_name
from inpo.placement import ActorSlot, actor_options


class SyncError(InpoError):
    """A generator does not hold the weights the learner just saved."""


def default_memory_fraction(device: str, shared_gpu: bool) -> float:
    if device == "cpu":
        return 0.1  # of host memory, for the KV cache (0.92 fails on CPU hosts)
    return 0.35 if shared_gpu else 0.85


class Generator:
    """Thin Ray actor around one VLLMEngine."""

    def __init__(self, model_dir: str, engine_kwargs: dict[str, Any]):
        from inpo.rollout.vllm_engine import VLLMEngine

        self.engine = VLLMEngine(model_dir, **engine_kwargs)

    def generate(self, prompts: list[list[int]], seeds: list[int], **sampling) -> list[list[dict]]:
        out = self.engine.generate(prompts, seeds=seeds, **sampling)
        return [[asdict(s) for s in samples] for samples in out]

    def score(self, ids: list[int], prompt_len: int) -> float:
        return self.engine.score(ids, prompt_len)

    def reload(self, weights_dir: str) -> float:
        t0 = time.perf_counter()
        self.engine.reload(weights_dir)
        return time.perf_counter() - t0


class GeneratorGroup:
    def __init__(self, model_dir: str, cfg: dict[str, Any], device: str, slots: list[ActorSlot]):
        gc = cfg["generation"]
        shared = any(0 < s.num_gpus < 1 for s in slots)
        engine_kwargs = {
            "dtype": dtype_name(cfg["model"]["dtype"], device),
            "seed": cfg["run"]["seed"],
            "gpu_memory_utilization": gc["gpu_memory_utilization"]
            or default_memory_fraction(device, shared),
            "tensor_parallel_size": gc["tensor_parallel_size"],
            "enforce_eager": gc["enforce_eager"] or device == "cpu",
            "chunked_prefill": device != "cpu",
        }
        self.sync_timeout = gc["sync_timeout_s"]
        # bf16 kernels in vLLM and in the learner round differently; fp32 agrees to ~1e-6.
        bf16 = engine_kwargs["dtype"] == "bfloat16"
        self.tolerance = gc["sync_tolerance"] or (0.05 if bf16 else 1e-3)
        actor = ray.remote(Generator)
        self.actors = [
            actor.options(**actor_options(s)).remote(model_dir, engine_kwargs) for s in slots
        ]
        ray.get([a.__ray_ready__.remote() for a in self.actors])

    def generate(self, prompts: list[list[int]], seeds: list[int], **sampling) -> list[list[dict]]:
        """Samples for every prompt, in order; prompts are split evenly among generators."""
        k = len(self.actors)
        size = -(-len(prompts) // k)
        futures = [
            a.generate.remote(
                prompts[i * size : (i + 1) * size], seeds[i * size : (i + 1) * size], **sampling
            )
            for i, a in enumerate(self.actors)
            if prompts[i * size : (i + 1) * size]
        ]
        return [row for chunk in ray.get(futures) for row in chunk]

    def scores(self, ids: list[int], prompt_len: int) -> list[float]:
        return ray.get([a.score.remote(ids, prompt_len) for a in self.actors])

    def sync(self, weights_dir: str, probe: tuple[list[int], int], expected: float) -> dict:
        """Reload weights in every generator, then prove it: each generator's log-prob of
        the probe must match the learner's ``expected`` within the tolerance."""
        t0 = time.perf_counter()
        futures = [a.reload.remote(weights_dir) for a in self.actors]
        ready, pending = ray.wait(futures, num_returns=len(futures), timeout=self.sync_timeout)
        if pending:
            raise SyncError(
                f"weight sync from {weights_dir} timed out after {self.sync_timeout}s on "
                f"{len(pending)} of {len(futures)} generators (generation.sync_timeout_s)"
            )
        ray.get(ready)
        return self.verify(probe, expected, seconds=time.perf_counter() - t0)

    def verify(self, probe: tuple[list[int], int], expected: float, seconds: float = 0.0) -> dict:
        ids, prompt_len = probe
        n_tokens = len(ids) - prompt_len
        got = self.scores(ids, prompt_len)
        diffs = [abs(g - expected) / n_tokens for g in got]
        for i, d in enumerate(diffs):
            if d > self.tolerance:
                raise SyncError(
                    f"generator {i} does not hold the learner's weights: probe log-prob "
                    f"{got[i]:.6f} vs learner {expected:.6f} (mean per-token difference {d:.2e} "
                    f"> generation.sync_tolerance {self.tolerance:g})"
                )
        return {"sync_seconds": seconds, "sync_max_token_diff": max(diffs)}

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []


def probe_sequence(tokenizer) -> tuple[list[int], int]:
    """A fixed (ids, prompt_len) that generators and learner both score after a sync."""
    from inpo.data import prompt_token_ids

    prompt = prompt_token_ids(
        tokenizer, [{"role": "user", "content": "Probe: are the weights in sync?"}]
    )
    response = tokenizer("Yes, every layer matches the learner.", add_special_tokens=False)
    return prompt + response.input_ids, len(prompt)
