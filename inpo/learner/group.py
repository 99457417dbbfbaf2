"""The learner as a group of Ray actors, one DeepSpeed rank each (OpenRLHF style).

The driver calls coarse methods on all ranks at once and gets rank 0's answer.
"""

from __future__ import annotations

from typing import Any

import ray
import torch
from tqdm import tqdm

from inpo.data import TokenizedPairs
from inpo.learner.rank import CACHE_KEYS, LearnerRank
from inpo.placement import ActorSlot, actor_options


class LearnerGroup:
    def __init__(self, cfg: dict[str, Any], device: str, slots: list[ActorSlot]):
        world = cfg["learner"]["num_ranks"]
        if len(slots) != world:
            raise ValueError(f"{len(slots)} placement slots for {world} learner ranks")
        self.logprob_batch = cfg["learner"]["logprob_batch_size"]
        env = {"DS_ACCELERATOR": "cpu"} if device == "cpu" else {}
        actor = ray.remote(LearnerRank)
        self.ranks = [
            actor.options(**actor_options(slot, env)).remote(r, world, cfg, device)
            for r, slot in enumerate(slots)
        ]
        addr, port = ray.get(self.ranks[0].address.remote())
        self._all("init_distributed", addr, port)

    def _all(self, method: str, *args, **kwargs) -> list:
        return ray.get([getattr(r, method).remote(*args, **kwargs) for r in self.ranks])

    def set_data(self, pairs: TokenizedPairs, pad_id: int) -> None:
        self._all("set_data", ray.put(pairs), pad_id)

    def set_cache(self, cache: dict[str, torch.Tensor]) -> None:
        self._all("set_cache", ray.put(cache))

    def compute_logps(self, model_dir: str, num_pairs: int, desc: str = "logps") -> torch.Tensor:
        """[num_pairs, 2] chosen/rejected log-probs under the frozen model at model_dir."""
        out = torch.zeros(num_pairs, 2)
        share = max(self._all("load_frozen", model_dir))
        chunk = 8 * self.logprob_batch
        with tqdm(total=num_pairs, desc=desc, unit="pair", dynamic_ncols=True) as bar:
            for lo in range(0, share, chunk):
                for indices, logps in self._all("frozen_logps", lo, lo + chunk):
                    out[indices] = logps
                    bar.update(len(indices))
        self._all("drop_frozen")
        return out

    def build_engine(self, policy_dir: str, total_steps: int) -> None:
        self._all("build_engine", policy_dir, total_steps)

    def train_step(self, step: int) -> dict[str, float]:
        return self._all("train_step", step)[0]

    def save_checkpoint(self, path: str, step: int) -> None:
        self._all("save_checkpoint", path, step)

    def load_checkpoint(self, path: str) -> int:
        return self._all("load_checkpoint", path)[0]

    def save_policy(self, out_dir: str) -> None:
        self._all("save_policy", out_dir)

    def probe_logprob(self, ids: list[int], prompt_len: int) -> float:
        return self._all("probe_logprob", ids, prompt_len)[0]

    def probe_logprob_dir(self, model_dir: str, ids: list[int], prompt_len: int) -> float:
        return ray.get(self.ranks[0].probe_logprob_dir.remote(model_dir, ids, prompt_len))

    def shutdown(self) -> None:
        try:
            self._all("release")
        finally:
            for r in self.ranks:
                ray.kill(r)
            self.ranks = []


def cache_from_logps(ref: torch.Tensor, prev: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four cached columns the INPO loss reads, from [N, 2] ref and pi_t log-probs."""
    cols = (ref[:, 0], ref[:, 1], prev[:, 0], prev[:, 1])
    return {k: c.contiguous() for k, c in zip(CACHE_KEYS, cols, strict=True)}
