"""The learner as a group of Ray actors, one DeepSpeed rank each (OpenRLHF style).

The driver calls coarse methods on all ranks at once and gets rank 0's answer.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from inpo.algo.loss import CACHE_KEYS, history_keys
from inpo.config import InpoConfig
from inpo.data import TokenizedPairs
from inpo.learning.rank import LearnerRank
from inpo.models import autocasts, dtype_name
from inpo.plan.actors import ActorGroup
from inpo.plan.placement import ActorSlot


class LearnerGroup(ActorGroup):
    def __init__(self, cfg: InpoConfig, device: str, slots: list[ActorSlot]):
        world = cfg.learner.ranks
        if len(slots) != world:
            raise ValueError(f"{len(slots)} placement slots for {world} learner ranks")
        self.device = device
        #: the weight-update group rank 0 last joined with generators (GeneratorGroup.link)
        self.weight_link: str | None = None
        self._configure(cfg)
        env = {"DS_ACCELERATOR": "cpu"} if device == "cpu" else {}
        super().__init__(
            "learner rank",
            LearnerRank,
            slots,
            init_args=lambda rank: (rank, world, cfg, device),
            env=env,
        )
        addr, port = self.get([self.actors[0].address.remote()])[0]
        self.call("init_distributed", addr, port)

    def _configure(self, cfg: InpoConfig) -> None:
        self.cfg = cfg
        self.dtype = dtype_name(cfg.model.dtype, self.device)
        self.autocast = autocasts(cfg.learner.autocast, cfg.model.dtype, self.device)

    def configure(self, cfg: InpoConfig) -> None:
        """Serve a run of ``cfg`` (a group kept between runs, `inpo.run.pool`)."""
        self._configure(cfg)
        self.call("configure", cfg)

    def set_data(self, pairs: TokenizedPairs, pad_id: int) -> None:
        import ray

        self.call("set_data", ray.put(pairs), pad_id)

    def set_cache(self, cache: dict[str, torch.Tensor]) -> None:
        import ray

        self.call("set_cache", ray.put(cache))

    def compute_logps(
        self,
        num_pairs: int,
        source: str,
        model_dir: str | None = None,
        desc: str = "logps",
        ids: list[int] | None = None,
    ) -> torch.Tensor:
        """[num_pairs, 2] chosen/rejected log-probs under ``source`` (LearnerRank.logps):
        "engine" (the training model as it is: pi_t before the first step), "base" (the
        LoRA base: pi_ref) or "frozen" (a copy of the model at ``model_dir`` loaded on every
        rank, then dropped). With ``ids`` only those pairs are scored (the other rows: 0)."""
        out = torch.zeros(num_pairs, 2)
        total = num_pairs if ids is None else len(ids)
        if source == "frozen":
            share = max(self.call("load_frozen", model_dir))
        else:
            share = -(-total // len(self.actors))
        chunk = 8 * self.cfg.learner.logps_batch_size
        with tqdm(total=total, desc=desc, unit="pair", dynamic_ncols=True) as bar:
            for lo in range(0, share, chunk):
                for indices, logps in self.call("logps", lo, lo + chunk, source, ids):
                    out[indices] = logps
                    bar.update(len(indices))
        if source == "frozen":
            self.call("drop_frozen")
        return out

    def build_engine(self, policy_dir: str, total_steps: int) -> None:
        self.call("build_engine", policy_dir, total_steps)

    def train_step(self, step: int) -> dict[str, float]:
        return self.call("train_step", step)[0]

    def save_checkpoint(self, path: str, step: int) -> None:
        self.call("save_checkpoint", path, step)

    def load_checkpoint(self, path: str) -> int:
        return self.call("load_checkpoint", path)[0]

    def save_policy(self, out_dir: str, keep: bool = False) -> str:
        """Write the policy; returns the hash of the tensors written (models.weights_digest).
        With ``keep`` rank 0 holds it for an in-memory sync (GeneratorGroup.sync_from)."""
        return self.call("save_policy", out_dir, keep)[0]

    def outgoing_digest(self) -> str | None:
        """The hash of the policy rank 0 holds for an in-memory sync, or None."""
        return self.get([self.actors[0].outgoing_digest.remote()])[0]

    def probe_logp(self, ids: list[int], prompt_len: int) -> float:
        return self.call("probe_logp", ids, prompt_len)[0]

    def release(self) -> None:
        """Drop the engine and its optimizer state (before a frozen copy is loaded)."""
        self.call("release")

    def shutdown(self) -> None:
        try:
            if self.actors:
                self.release()
        finally:
            super().shutdown()


def cache_from_logps(ref: torch.Tensor, pi_t: torch.Tensor, *history: torch.Tensor) -> dict:
    """The cached columns the loss reads, from [N, 2] chosen/rejected log-probs of pi_ref,
    pi_t and (MNPO) the past iterates pi_{t-1}, pi_{t-2}, ..."""
    cols = {k: c for k, c in zip(CACHE_KEYS, (*ref.T, *pi_t.T), strict=True)}
    for j, logps in enumerate(history, 1):
        cols |= dict(zip(history_keys(j), logps.T, strict=True))
    return {k: c.contiguous() for k, c in cols.items()}
