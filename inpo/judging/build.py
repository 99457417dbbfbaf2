"""The oracle a config names, P(a > b | x): the interface is oracle.py; the backends:

- synthetic: builtin preferences over the response text (synthetic.py), in the driver;
- pairpm: a pairwise preference model (pairpm.py), reward: a Bradley-Terry reward model
  (reward.py) and llm: any chat model as a pairwise judge (llm.py), each in Ray actors
  (actor.py);
- http: an LLM judge behind an OpenAI-compatible endpoint (http.py), in the driver (its
  prompt templates and verdict reading are the llm judge's, verdict.py);
- python: a user's function "package.module:function" (python_fn.py), in the driver.

Pairwise judges that may prefer a slot (pairpm, llm, http, python) are asked in both orders
when oracle.debias is set; reward and synthetic preferences are symmetric already.
The model backends' actors are imported on use: importing this module pulls in neither
torch nor Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from inpo.algo.game import cyclic_matrix
from inpo.config import MODEL_BACKENDS, InpoConfig, OracleConfig
from inpo.judging.actor import OracleGroup, judge_options
from inpo.judging.constraints import ConstraintPreference
from inpo.judging.http import HttpJudge
from inpo.judging.oracle import Debiased, Oracle, OracleError
from inpo.judging.python_fn import PythonOracle
from inpo.judging.synthetic import (
    VOWEL_SCALE,
    GameOracle,
    RockPaperScissors,
    ScorePreference,
    length_score,
    vowel_score,
)
from inpo.judging.verdict import Verdicting
from inpo.plan.placement import plan_for
from inpo.stages import Role

if TYPE_CHECKING:
    from inpo.plan.placement import ActorSlot


def build_oracle(
    cfg: InpoConfig,
    device: str,
    slots: list[ActorSlot] | None = None,
    keep_texts: bool = False,
) -> Oracle:
    """The oracle cfg.oracle describes. Model backends start cfg.oracle.num_actors Ray
    actors (Ray must be initialised) in ``slots``, by default planned for the oracle
    alone; pass slots from a joint plan when generators or learner share the GPUs.
    ``keep_texts``: a reasoning judge keeps its sampled texts for `Oracle.judgements`."""
    oc = cfg.oracle
    oracle: Oracle
    if oc.backend in MODEL_BACKENDS:
        if slots is None:
            slots = plan_for(cfg, device, [Role.JUDGE]).slots[Role.JUDGE]
        colocated = bool(cfg.run.colocate) and device == "cuda"
        options = judge_options(oc, cfg.run.seed, keep_texts)
        oracle = OracleGroup(oc, device, slots, colocated, options)
    elif oc.backend == "synthetic":
        oracle = synthetic_oracle(oc)
    elif oc.backend == "http":
        oracle = HttpJudge(
            oc.url,
            oc.http_model,
            api_key_env=oc.api_key_env,
            timeout_s=oc.timeout_s,
            retries=oc.retries,
            batch_size=oc.batch_size,
            verdicting=Verdicting.of(oc, cfg.run.seed, keep_texts),
        )
    elif oc.backend == "python":
        oracle = PythonOracle(oc.callable)
    else:
        raise OracleError(f"oracle.backend = {oc.backend!r}: unknown")
    return Debiased(oracle) if oc.debias and oracle.position_biased else oracle


def synthetic_oracle(oc: OracleConfig) -> Oracle:
    """The builtin preference named by oracle.synthetic."""
    kind = oc.synthetic
    if kind == "vowels":
        return ScorePreference(vowel_score, oc.sharpness * VOWEL_SCALE)
    if kind == "length":
        return ScorePreference(length_score, oc.sharpness)
    if kind == "rps":
        return RockPaperScissors()
    if kind == "cyclic":
        try:
            m = oc.game_matrix or cyclic_matrix(oc.game_classes, oc.game_win)
            return GameOracle(m)
        except ValueError as e:
            raise OracleError(f"oracle.game_*: {e}") from None
    if kind == "ifeval":
        return ConstraintPreference(oc.sharpness)
    raise OracleError(f"oracle.synthetic = {kind!r}: unknown")
