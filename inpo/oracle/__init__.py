"""Preference oracles P(a > b | x): the interface (base.py) and its backends.

- synthetic: builtin preferences over the response text (synthetic.py), in the driver;
- pairpm: a pairwise preference model (pairpm.py) and reward: a Bradley-Terry reward model
  (reward.py), each in Ray actors (actor.py);
- http: an LLM judge behind an OpenAI-compatible endpoint (http.py), in the driver;
- python: a user's function "package.module:function" (python_fn.py), in the driver.

Pairwise judges that may prefer a slot (pairpm, http, python) are asked in both orders
when oracle.debias is set; reward and synthetic preferences are symmetric already.
Backends are imported on use, so importing this package pulls in neither torch nor Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from inpo.config import InpoConfig
from inpo.oracle.base import MODEL_BACKENDS, Debiased, Oracle, OracleError, check_probs

if TYPE_CHECKING:
    from inpo.placement import ActorSlot

__all__ = ["Debiased", "Oracle", "OracleError", "build_oracle", "check_probs"]


def build_oracle(cfg: InpoConfig, device: str, slots: list[ActorSlot] | None = None) -> Oracle:
    """The oracle cfg.oracle describes. Model backends start cfg.oracle.num_actors Ray
    actors (Ray must be initialised) in ``slots``, by default planned for the oracle
    alone; pass slots from a joint plan when generators or learner share the GPUs."""
    oc = cfg.oracle
    oracle: Oracle
    if oc.backend in MODEL_BACKENDS:
        from inpo.oracle.actor import OracleGroup
        from inpo.placement import plan_for

        if slots is None:
            slots = plan_for(cfg, device, {"judge": (oc.num_actors or 1, 1)}).slots["judge"]
        oracle = OracleGroup(oc, device, slots, bool(cfg.run.colocate) and device == "cuda")
    elif oc.backend == "synthetic":
        from inpo.oracle.synthetic import synthetic_oracle

        oracle = synthetic_oracle(oc)
    elif oc.backend == "http":
        from inpo.oracle.http import HttpJudge

        oracle = HttpJudge(
            oc.url,
            oc.http_model,
            api_key_env=oc.api_key_env,
            timeout_s=oc.timeout_s,
            retries=oc.retries,
            batch_size=oc.batch_size,
        )
    elif oc.backend == "python":
        from inpo.oracle.python_fn import PythonOracle

        oracle = PythonOracle(oc.callable)
    else:
        raise OracleError(f"oracle.backend = {oc.backend!r}: unknown")
    return Debiased(oracle) if oc.debias and oracle.position_biased else oracle
