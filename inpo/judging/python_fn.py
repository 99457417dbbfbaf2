"""A user's Python function as the oracle: oracle.callable = "package.module:function".

It is called as fn(prompts, responses_a, responses_b) with three lists of equal length
(prompts exactly as in the data: strings or chat messages) and must return one
P(a[i] > b[i]) in [0, 1] per pair. It is treated as position-biased, so with
oracle.debias it is asked in both orders.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from inpo.data import Prompt
from inpo.judging.oracle import Oracle, OracleError, check_probs


def load_callable(spec: str) -> Callable:
    """The object named by "package.module:attr" (attr may be dotted), checked callable."""
    module_name, sep, attr = spec.partition(":")
    where = f"oracle.callable = {spec!r}"
    if not sep or not module_name or not attr:
        raise OracleError(f"{where}: expected the form 'package.module:function'")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # the user's module may fail to import in any way
        raise OracleError(f"{where}: cannot import {module_name}: {e!r}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise OracleError(f"{where}: {module_name} has no attribute {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise OracleError(f"{where}: {attr} is a {type(obj).__name__}, not callable")
    return obj


class PythonOracle(Oracle):
    position_biased = True

    def __init__(self, spec: str):
        self.spec = spec
        self.fn = load_callable(spec)

    def prob(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> list[float]:
        try:
            out = self.fn(list(prompts), list(a), list(b))
        except Exception as e:
            raise OracleError(f"oracle.callable {self.spec} raised {e!r}") from e
        return check_probs(out, len(prompts), f"oracle.callable {self.spec}")
