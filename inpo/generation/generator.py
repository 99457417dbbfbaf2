"""Generator actors (one vLLM engine each) and the group that splits prompts among them.

Weights reach the generators one of two ways: reloaded from the policy directory the
learner saved (`sync`), or, right after a save in the same process, broadcast from
learner rank 0's memory over a weight-update group of their own (`sync_from`,
`inpo.engines.transfer`). Either way the sync is verified twice: each generator's worker
hashes the tensors it fed into the engine and the hash must equal the learner's hash of
the tensors it saved (so every generator got exactly the learner's bytes, whatever the
shared filesystem or the transfer did), and each generator's log-prob of a fixed probe
sequence must match the learner's within `generation.sync_tolerance` (so the engine
computes with them).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from inpo.config import InpoConfig
from inpo.data import end_of_turn_id
from inpo.engines.transfer import BUCKET_BYTES, TensorSpec
from inpo.engines.vllm import VLLMEngine, device_settings
from inpo.errors import ActorError, InpoError
from inpo.models import dtype_name
from inpo.plan.actors import Actor, ActorGroup
from inpo.plan.memory import max_model_len
from inpo.plan.placement import ActorSlot

if TYPE_CHECKING:
    from inpo.learning.group import LearnerGroup


def _failed(future: Any) -> bool:
    """Whether a finished Ray future holds an error."""
    import ray

    try:
        ray.get(future, timeout=0)
        return False
    except Exception:
        return True


class SyncError(InpoError):
    """A generator does not hold the weights the learner just saved."""


def stop_token_ids(model_dir: str) -> list[int]:
    """Every token that ends a response: the chat template's end of turn (<|eot_id|> for
    Llama 3, which is neither its tokenizer's EOS nor always in generation_config.json),
    the tokenizer's EOS and each EOS generation_config.json lists (an id or a list)."""
    import json
    from pathlib import Path

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = {end_of_turn_id(tok), tok.eos_token_id}
    gen_config = Path(model_dir) / "generation_config.json"
    if gen_config.exists():
        eos = json.loads(gen_config.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos])
    return sorted(i for i in ids if i is not None)


class Generator(Actor):
    """Thin Ray actor around one VLLMEngine."""

    def start(self, model_dir: str, engine_kwargs: dict[str, Any]) -> None:

        self.engine = VLLMEngine(model_dir, **engine_kwargs)

    def generate(self, prompts: list[list[int]], seeds: list[int], **sampling) -> list[list[dict]]:
        out = self.engine.generate(prompts, seeds=seeds, **sampling)
        return [[asdict(s) for s in samples] for samples in out]

    def score(self, ids: list[int], prompt_len: int) -> float:
        return self.engine.score(ids, prompt_len)

    def sleep(self, level: int) -> bool:
        return self.engine.sleep(level)

    def wake(self) -> bool:
        return self.engine.wake()

    def reload(self, weights_dir: str) -> tuple[float, str]:
        """(seconds, hash of the tensors the engine loaded)."""
        t0 = time.perf_counter()
        digest = self.engine.reload(weights_dir)
        return time.perf_counter() - t0, digest

    def weight_workers(self) -> int:
        return self.engine.workers()

    def join_weight_group(
        self, host: str, port: int, first_rank: int, world: int, timeout_s: float
    ) -> list[int]:
        return self.engine.join_weight_group(host, port, first_rank, world, timeout_s)

    def receive(self, specs: list[TensorSpec], limit: int) -> tuple[float, str]:
        """(seconds, hash of the tensors the engine loaded from the broadcast)."""
        t0 = time.perf_counter()
        digest = self.engine.receive(specs, limit)
        return time.perf_counter() - t0, digest


def engine_settings(
    model_dir: str, cfg: InpoConfig, device: str, slots: list[ActorSlot], probe_len: int = 0
) -> dict[str, Any]:
    """The VLLMEngine arguments of a generator of ``model_dir`` in one of ``slots``."""
    gc = cfg.generation
    shared = any(0 < s.num_gpus < 1 for s in slots)
    dtype = dtype_name(cfg.model.dtype, device)
    max_len = max_model_len(cfg, probe_len)
    sleep_mode = bool(cfg.run.colocate) and device == "cuda"
    engine_kwargs = device_settings(model_dir, device, dtype, max_len, shared, sleep_mode)
    if gc.gpu_memory_utilization is not None:  # the user's share: vLLM sizes the KV cache
        engine_kwargs |= {
            "gpu_memory_utilization": gc.gpu_memory_utilization,
            "kv_cache_bytes": None,
        }
    return engine_kwargs | {
        "seed": cfg.run.seed,
        # simulated GPUs: the generator reserves its TP GPUs and runs one CPU engine
        "tensor_parallel_size": gc.tensor_parallel_size if device == "cuda" else 1,
        "enforce_eager": gc.enforce_eager or device == "cpu",
        "stop_token_ids": stop_token_ids(model_dir),
        "sleep_mode": sleep_mode,
    }


class GeneratorGroup(ActorGroup):
    def __init__(
        self,
        model_dir: str,
        cfg: InpoConfig,
        device: str,
        slots: list[ActorSlot],
        probe_len: int = 0,
        engine_kwargs: dict[str, Any] | None = None,
    ):
        engine_kwargs = engine_kwargs or engine_settings(model_dir, cfg, device, slots, probe_len)
        self.bf16 = engine_kwargs["dtype"] == "bfloat16"
        #: the weight-update group the workers last joined with a learner (`link`)
        self.weight_link: str | None = None
        self.configure(cfg)
        super().__init__(
            "generator", Generator, slots, setup="start", setup_args=(model_dir, engine_kwargs)
        )

    def configure(self, cfg: InpoConfig) -> None:
        """The sync settings of a run of ``cfg`` (a group kept between runs also reloads
        its first policy, `inpo.run.pool`)."""
        self.sync_timeout = cfg.generation.sync_timeout_s
        # bf16 kernels in vLLM and in the learner round differently; fp32 agrees to ~1e-6.
        self.tolerance = cfg.generation.sync_tolerance or (0.05 if self.bf16 else 1e-3)

    def generate(self, prompts: list[list[int]], seeds: list[int], **sampling) -> list[list[dict]]:
        """Samples for every prompt, in order; prompts are split evenly among generators."""
        return self.map("generate", prompts, seeds, **sampling)

    def scores(self, ids: list[int], prompt_len: int) -> list[float]:
        return self.call("score", ids, prompt_len)

    def sync(
        self,
        weights_dir: str,
        probe: tuple[list[int], int],
        expected: float,
        digest: str | None = None,
    ) -> dict:
        """Reload weights in every generator, then prove it: each generator must have
        loaded tensors whose hash is the learner's ``digest`` (when given), and its
        log-prob of the probe must match the learner's ``expected`` within the tolerance."""
        t0 = time.perf_counter()
        futures = [a.reload.remote(weights_dir) for a in self.actors]
        self._wait(futures, f"from {weights_dir}", lambda: self.get(futures))
        answers = self.get(futures)
        if digest is not None:
            self._check(
                answers,
                digest,
                f"saved in {weights_dir}",
                "a stale copy on a shared filesystem, or another directory",
            )
        info = self.verify(probe, expected, seconds=time.perf_counter() - t0)
        return info | {"sync_via": "files"}

    def link(self, learner: LearnerGroup) -> None:
        """The weight-update group between learner rank 0 and every generator's vLLM
        workers (`inpo.engines.transfer`), unless the two last joined one together: built
        once per pair of groups, so again after either is restarted."""
        if self.weight_link is not None and self.weight_link == learner.weight_link:
            return
        workers = self.call("weight_workers")
        sender = learner.actors[0]
        host, port = learner.get([sender.open_weight_port.remote()])[0]
        world = 1 + sum(workers)
        firsts = [1 + sum(workers[:i]) for i in range(len(workers))]
        timeout = self.sync_timeout
        joined = sender.join_weight_group.remote(host, port, world, timeout)
        joins = [
            a.join_weight_group.remote(host, port, first, world, timeout)
            for a, first in zip(self.actors, firsts, strict=True)
        ]
        self._answers(learner, joined, joins, "(joining the weight-update group)")
        self.weight_link = learner.weight_link = uuid.uuid4().hex

    def sync_from(
        self,
        learner: LearnerGroup,
        probe: tuple[list[int], int],
        expected: float,
        digest: str,
    ) -> dict:
        """`sync` in memory: learner rank 0 broadcasts the policy it kept when it saved it
        (hash ``digest``) over the weight-update group, each generator's workers feed it to
        the engine as a reload from files would, and the same two checks follow."""
        t0 = time.perf_counter()
        self.link(learner)
        sender = learner.actors[0]
        specs = learner.get([sender.outgoing_specs.remote()])[0]
        send = sender.send_policy.remote(BUCKET_BYTES)
        receives = [a.receive.remote(specs, BUCKET_BYTES) for a in self.actors]
        answers = self._answers(learner, send, receives, "in memory")
        self._check(answers, digest, "sent", "a broken transfer")
        info = self.verify(probe, expected, seconds=time.perf_counter() - t0)
        return info | {"sync_via": "memory"}

    def _answers(self, learner: LearnerGroup, own: Any, futures: list, what: str) -> list:
        """The generators' answers (``futures``, one each) to a collective with learner
        rank 0 (its future ``own``), within generation.sync_timeout_s; a failure is raised
        as soon as it happens (`_blame`)."""
        self._wait([own, *futures], what, lambda: self._blame(learner, own, futures))
        learner.get([own])
        return self.get(futures)

    def _blame(self, learner: LearnerGroup, own: Any, futures: list) -> None:
        """Raise the error behind a failed collective: learner rank 0's when its process
        died, else the first failed generator's (any dead peer fails rank 0's broadcast
        too), else rank 0's own."""
        import ray

        ray.wait([own, *futures], num_returns=1 + len(futures), timeout=5)  # the peers'
        own_error = None
        if ray.wait([own], timeout=0)[0]:
            try:
                learner.get([own])
            except ActorError as e:
                if e.died:
                    raise e from None
                own_error = e
        done = ray.wait(futures, num_returns=len(futures), timeout=0)[0]
        if any(_failed(f) for f in done):
            self.get(futures)  # raises the first, naming the generator
        if own_error is not None:
            raise own_error

    def _wait(self, futures: list, what: str, on_failure: Callable[[], None]) -> None:
        """Wait for ``futures`` at most generation.sync_timeout_s; at the first failure,
        ``on_failure()`` raises it (naming the actor)."""
        import ray

        deadline = time.monotonic() + self.sync_timeout
        pending = list(futures)
        while pending:
            left = max(0.0, deadline - time.monotonic())
            ready, pending = ray.wait(pending, num_returns=1, timeout=left)
            if not ready:
                raise SyncError(
                    f"weight sync {what} timed out after {self.sync_timeout}s on "
                    f"{len(pending)} of {len(futures)} actors (generation.sync_timeout_s)"
                )
            if _failed(ready[0]):
                on_failure()
                ray.get(ready)  # raises, whatever on_failure did

    def _check(self, answers: list[tuple[float, str]], digest: str, how: str, why: str) -> None:
        for i, (_, got) in enumerate(answers):
            if got != digest:
                raise SyncError(
                    f"generator {i} loaded other weights than the learner {how}: tensor hash "
                    f"{got[:12]} vs learner {digest[:12]} ({why})"
                )

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
