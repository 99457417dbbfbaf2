"""Model judges (pairpm, reward) as Ray actors, one model each.

`OracleGroup` is an Oracle in the driver: it splits every batch evenly across its actors,
queries them concurrently and concatenates the answers in order. An OracleError a judge
raises in its actor is re-raised here as itself, without Ray's wrapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray

from inpo.config import OracleConfig
from inpo.data import Prompt
from inpo.errors import InpoError
from inpo.oracle.base import MODEL_BACKENDS, Oracle, OracleError
from inpo.placement import ActorSlot, actor_options


def judge_class(backend: str) -> type[Oracle]:
    if backend == "pairpm":
        from inpo.oracle.pairpm import PairPM

        return PairPM
    if backend == "reward":
        from inpo.oracle.reward import RewardModel

        return RewardModel
    raise OracleError(f"oracle.backend = {backend!r} is not a model backend {MODEL_BACKENDS}")


class OracleWorker:
    """Thin Ray actor around one model judge."""

    def load(self, oracle_cfg: dict[str, Any], device: str) -> None:
        # Not in __init__: Ray reports an error raised here as the exception itself, while
        # a failing __init__ only leaves a dead actor and a traceback in a string.
        oc = OracleConfig(**oracle_cfg)
        self.judge = judge_class(oc.backend)(oc.model, device, oc.batch_size, oc.max_length)

    def prob(self, prompts: list[Prompt], a: list[str], b: list[str]) -> list[float]:
        return self.judge.prob(prompts, a, b)

    def scores(self, prompts: list[Prompt], responses: list[str]) -> list[float]:
        return self.judge.scores(prompts, responses)


def _get(refs: list) -> list:
    """ray.get that re-raises a user-fixable error from an actor as itself, without Ray's
    wrapping (other errors keep it: its remote traceback is what one needs to debug)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, InpoError):
            raise e.cause from None
        raise
    except ray.exceptions.RayActorError as e:
        raise OracleError(f"an oracle actor died: {e}") from None


class OracleGroup(Oracle):
    def __init__(self, oracle_cfg: OracleConfig, device: str, slots: list[ActorSlot]):
        if not slots:
            raise OracleError("no placement slots for the oracle actors")
        self.backend = oracle_cfg.backend
        cls = judge_class(self.backend)
        self.position_biased = cls.position_biased
        self._has_scores = cls.scores is not Oracle.scores
        worker = ray.remote(OracleWorker)
        cfg = oracle_cfg.model_dump()
        self.actors = [worker.options(**actor_options(s)).remote() for s in slots]
        try:
            _get([a.load.remote(cfg, device) for a in self.actors])
        except BaseException:
            self.close()
            raise

    @property
    def has_scores(self) -> bool:
        return self._has_scores

    def _map(self, method: str, *columns: Sequence) -> list[float]:
        n = len(columns[0])
        if n == 0:
            return []
        size = -(-n // len(self.actors))
        futures = [
            getattr(actor, method).remote(*(list(c[lo : lo + size]) for c in columns))
            for actor, lo in zip(self.actors, range(0, n, size), strict=False)
        ]
        return [x for part in _get(futures) for x in part]

    def prob(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        return self._map("prob", prompts, a, b)

    def scores(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        if not self._has_scores:
            raise OracleError(f"oracle.backend = {self.backend} gives no pointwise scores")
        return self._map("scores", prompts, responses)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
