"""Model judges (pairpm, reward, llm) as Ray actors, one model each.

`OracleGroup` is an Oracle in the driver: it splits every batch evenly across its actors,
queries them concurrently and concatenates the answers in order. An OracleError a judge
raises in its actor is re-raised here as itself; any other failure as one line naming the
judge and the root cause (`inpo.plan.actors`).
"""

from __future__ import annotations

from collections.abc import Sequence

from inpo.config import MODEL_BACKENDS, OracleConfig
from inpo.data import Prompt
from inpo.judging.llm import LLMJudge
from inpo.judging.oracle import Oracle, OracleError, ParseCounts
from inpo.judging.pairpm import PairPM
from inpo.judging.reward import RewardModel
from inpo.judging.verdict import Verdicting
from inpo.plan.actors import Actor, ActorGroup
from inpo.plan.placement import ActorSlot


def judge_class(backend: str) -> type[Oracle]:
    if backend == "pairpm":
        return PairPM
    if backend == "reward":
        return RewardModel
    if backend == "llm":
        return LLMJudge
    raise OracleError(f"oracle.backend = {backend!r} is not a model backend {MODEL_BACKENDS}")


class OracleWorker(Actor):
    """Thin Ray actor around one model judge."""

    def load(
        self, oc: OracleConfig, device: str, shared_gpu: bool, sleep_mode: bool, options: dict
    ) -> None:
        self.judge = judge_class(oc.backend)(
            oc.model,
            device,
            oc.batch_size,
            oc.max_length,
            engine=oc.engine,
            shared_gpu=shared_gpu,
            sleep_mode=sleep_mode,
            **options,
        )

    def sleep(self, level: int) -> bool:
        return self.judge.sleep()

    def wake(self) -> bool:
        return self.judge.wake()

    def prob(self, prompts: list[Prompt], a: list[str], b: list[str]) -> list[float]:
        return self.judge.prob(prompts, a, b)

    def scores(self, prompts: list[Prompt], responses: list[str]) -> list[float]:
        return self.judge.scores(prompts, responses)

    def truncated(self) -> int:
        return self.judge.truncated()

    def verdicts(self) -> tuple[float, int]:
        return self.judge.verdicts()

    def parse_counts(self) -> ParseCounts:
        return self.judge.parse_counts()

    def judgements(self) -> list[dict]:
        return self.judge.judgements()


def judge_options(oc: OracleConfig, seed: int = 0, keep_texts: bool = False) -> dict:
    """What the model judge takes beyond the model: the llm judge's `Verdicting`."""
    return {"verdicting": Verdicting.of(oc, seed, keep_texts)} if oc.backend == "llm" else {}


class OracleGroup(ActorGroup, Oracle):
    """Judge actors as one Oracle: every batch is split evenly across them, in order."""

    def __init__(
        self,
        oracle_cfg: OracleConfig,
        device: str,
        slots: list[ActorSlot],
        sleep_mode: bool,
        options: dict | None = None,
    ):
        self.backend = oracle_cfg.backend
        cls = judge_class(self.backend)
        self.position_biased = cls.position_biased
        self._has_scores = cls.scores is not Oracle.scores
        shared = any(0 < s.num_gpus < 1 for s in slots)
        super().__init__(
            "judge",
            OracleWorker,
            slots,
            setup="load",
            setup_args=(
                oracle_cfg,
                device,
                shared,
                sleep_mode,
                judge_options(oracle_cfg) if options is None else options,
            ),
        )

    @property
    def has_scores(self) -> bool:
        return self._has_scores

    def prob(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        return self.map("prob", prompts, a, b)

    def scores(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        if not self._has_scores:
            raise OracleError(f"oracle.backend = {self.backend} gives no pointwise scores")
        return self.map("scores", prompts, responses)

    def truncated(self) -> int:
        return sum(self.call("truncated"))

    def verdicts(self) -> tuple[float, int]:
        totals = self.call("verdicts")
        return sum(t[0] for t in totals), sum(t[1] for t in totals)

    def parse_counts(self) -> ParseCounts:
        total = ParseCounts()
        for counts in self.call("parse_counts"):
            total = total.plus(counts)
        return total

    def judgements(self) -> list[dict]:
        return [j for kept in self.call("judgements") for j in kept]

    def close(self) -> None:
        self.shutdown()
